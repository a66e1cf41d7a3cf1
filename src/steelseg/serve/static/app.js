// steelseg review page: upload -> /v1/predict -> masks over the image -> verdicts -> /v1/feedback.
"use strict";
// Okabe-Ito, the same fixed class colours as steelseg.viz.CLASS_COLORS
const COLORS = [[230,159,0],[86,180,233],[0,158,115],[213,94,0],[204,121,167],[0,114,178],[240,228,66],[120,120,120]];
const $ = (id) => document.getElementById(id);
let state = { file: null, img: null, result: null, shown: [] };

function headers() {
  const key = $("apikey").value.trim();
  localStorage.setItem("steelseg-api-key", key);
  return key ? { "X-API-Key": key } : {};
}

async function loadModel() {
  try {
    const r = await fetch("/v1/model", { headers: headers() });
    const m = await r.json();
    $("bundle").textContent = r.ok ? `bundle ${m.bundle} (${m.backend}, ${m.classes.length} classes)` : m.error;
  } catch (e) { $("bundle").textContent = "model info unavailable"; }
}

// Kaggle RLE: 1-indexed, column-major "start length" pairs
function decodeRLE(rle, w, h) {
  const mask = new Uint8Array(w * h);
  if (!rle) return mask;
  const v = rle.trim().split(/\s+/).map(Number);
  for (let i = 0; i < v.length; i += 2) {
    for (let p = v[i] - 1, end = p + v[i + 1]; p < end; p++) mask[(p % h) * w + Math.floor(p / h)] = 1;
  }
  return mask;
}

function draw() {
  const { img, result, shown } = state;
  const c = $("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const w = c.width, h = c.height;
  const data = ctx.getImageData(0, 0, w, h);
  result.classes.forEach((cls, i) => {
    if (!shown[i] || !cls.present) return;
    const m = decodeRLE(cls.rle, w, h), col = COLORS[i % COLORS.length];
    for (let p = 0; p < m.length; p++) {
      if (!m[p]) continue;
      const edge = (p % w > 0 && !m[p - 1]) || (p % w < w - 1 && !m[p + 1]) || (p >= w && !m[p - w]) || (p + w < m.length && !m[p + w]);
      const a = edge ? 1.0 : 0.4;
      for (let k = 0; k < 3; k++) data.data[4 * p + k] = Math.round((1 - a) * data.data[4 * p + k] + a * col[k]);
    }
  });
  ctx.putImageData(data, 0, 0);
  c.dataset.drawn = "1";
}

function legend() {
  const body = $("legend").querySelector("tbody");
  body.innerHTML = "";
  state.result.classes.forEach((cls, i) => {
    const col = COLORS[i % COLORS.length];
    const tr = document.createElement("tr");
    tr.dataset.cls = cls.name;
    const opts = cls.present ? ["right", "wrong"] : ["absent", "missed"];
    tr.innerHTML = `<td><input type="checkbox" ${state.shown[i] ? "checked" : ""} aria-label="show ${cls.name}"></td>
      <td><span class="swatch" style="background: rgb(${col})"></span>${cls.name}</td>
      <td>${cls.present ? "yes" : "no"}</td><td>${cls.score === null ? "-" : cls.score.toFixed(3)}</td>
      <td>${cls.area}</td>
      <td>${opts.map((o, k) => `<label><input type="radio" name="v${i}" value="${o}" ${k === 0 ? "checked" : ""}> ${o}</label>`).join(" ")}</td>`;
    tr.querySelector("input[type=checkbox]").addEventListener("change", (e) => { state.shown[i] = e.target.checked; draw(); });
    body.appendChild(tr);
  });
}

async function predict(file) {
  state.file = file;
  $("status").textContent = `predicting ${file.name} ...`;
  $("status").className = "muted";
  const form = new FormData();
  form.append("file", file);
  const r = await fetch("/v1/predict", { method: "POST", body: form, headers: headers() });
  const body = await r.json();
  if (!r.ok) { $("status").textContent = body.error; $("status").className = "error"; return; }
  state.result = body;
  state.shown = body.classes.map(() => true);
  const url = URL.createObjectURL(file);
  state.img = new Image();
  state.img.onload = () => {
    $("view").hidden = false;
    legend(); draw();
    const found = body.classes.filter((c) => c.present).map((c) => c.name);
    $("status").textContent = `${file.name}: ${found.length ? "found " + found.join(", ") : "no defect found"} ` +
      `(${body.image.width}x${body.image.height}, ${body.timings_ms.predict} ms)`;
    $("download").href = URL.createObjectURL(new Blob([JSON.stringify(body, null, 2)], { type: "application/json" }));
  };
  state.img.onerror = () => {
    $("status").textContent = `${file.name}: predicted, but this browser cannot display the format (TIFF?); ` +
      "the JSON download has the masks";
    $("download").href = URL.createObjectURL(new Blob([JSON.stringify(body, null, 2)], { type: "application/json" }));
  };
  state.img.src = url;
}

async function sendFeedback() {
  const verdicts = {};
  state.result.classes.forEach((cls, i) => {
    verdicts[cls.name] = document.querySelector(`input[name=v${i}]:checked`).value;
  });
  const form = new FormData();
  form.append("file", state.file);
  form.append("verdicts", JSON.stringify(verdicts));
  const r = await fetch("/v1/feedback", { method: "POST", body: form, headers: headers() });
  const body = await r.json();
  $("feedback-status").textContent = r.ok ? `thank you: stored in ${body.stored} as ${body.image_id}` : body.error;
  $("feedback-status").className = r.ok ? "muted" : "error";
}

$("apikey").value = localStorage.getItem("steelseg-api-key") || "";
$("apikey").addEventListener("change", loadModel);
$("file").addEventListener("change", (e) => e.target.files[0] && predict(e.target.files[0]));
$("send").addEventListener("click", sendFeedback);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) predict(e.dataTransfer.files[0]); });
loadModel();
