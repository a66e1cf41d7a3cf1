// steelseg review page: an image (uploaded, or the next one of the review queue) -> /v1/predict -> the masks
// in the editor (editor.js) -> the reviewer keeps, rejects, corrects or draws each class -> /v1/feedback
// with the final masks as Kaggle RLE.
"use strict";
const { MaskEditor, decodeRLE, COLORS } = window.SteelsegEditor;
const $ = (id) => document.getElementById(id);
const state = { file: null, result: null, model: [], modelHash: [], flagMissed: [], queue: [], qpos: -1, info: null };
const editor = new MaskEditor($("canvas"), () => legend());
window.__editor = editor;  // test hook: bitmaps, transform, last stroke
window.__review = state;

function headers() {
  const key = $("apikey").value.trim();
  localStorage.setItem("steelseg-api-key", key);
  return key ? { "X-API-Key": key } : {};
}

function say(id, text, error) { $(id).textContent = text; $(id).className = error ? "error" : "muted"; }

async function loadModel() {
  try {
    const r = await fetch("/v1/model", { headers: headers() });
    const m = await r.json();
    state.info = r.ok ? m : null;
    $("bundle").textContent = r.ok ? `bundle ${m.bundle} (${m.backend}, ${m.classes.length} classes)` : m.error;
    if (r.ok && m.queue) { $("queue").hidden = false; await loadQueue(false); }
  } catch (e) { $("bundle").textContent = "model info unavailable"; }
}

// ---- verdicts: set from the edits, and the buttons that set the edits -----------------------------
function verdict(c) {
  const cls = state.result.classes[c], empty = editor.area(c) === 0;
  if (cls.present) return editor.hash(c) === state.modelHash[c] ? "right" : empty ? "wrong" : "corrected";
  return empty ? (state.flagMissed[c] ? "missed" : "absent") : "missed";
}

function choose(c, v) {
  const zeros = new Uint8Array(editor.w * editor.h);
  if (v === "right") editor.replaceClass(c, state.model[c]);
  if (v === "wrong" || v === "absent") { state.flagMissed[c] = false; editor.replaceClass(c, zeros); }
  if (v === "missed") state.flagMissed[c] = true;
  legend();
}

// Every cell is built with DOM calls and textContent: a class name, a file name or a reason from the server
// reaches the page as text, never as markup (issue #38).
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "attrs") for (const [a, x] of Object.entries(v)) node.setAttribute(a, x);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function verdictCell(c) {
  const cls = state.result.classes[c], v = verdict(c);
  const opts = cls.present ? ["right", "wrong", "corrected"] : ["absent", "missed"];
  const drawn = v === "missed" && editor.area(c) > 0 ? " (drawn)" : v === "missed" ? " (not drawn: needs masks)" : "";
  const td = el("td");
  opts.forEach((o, i) => {
    const input = el("input", { type: "radio", name: `v${c}`, value: o, checked: o === v,
                                disabled: o === "corrected" && v !== "corrected" });
    if (i) td.append(" ");
    td.append(el("label", {}, input, ` ${o}`));
  });
  td.append(el("span", { className: "muted", text: drawn, dataset: { verdict: v } }));
  return td;
}

function legend() {
  if (!state.result) return;
  const body = $("legend").querySelector("tbody");
  body.replaceChildren();
  state.result.classes.forEach((cls, c) => {
    const tr = document.createElement("tr");
    tr.dataset.cls = cls.name;
    tr.className = c === editor.current ? "current" : "";
    const show = el("input", { type: "checkbox", checked: !!editor.shown[c], attrs: { "aria-label": `show ${cls.name}` } });
    const swatch = el("span", { className: "swatch" });
    swatch.style.background = `rgb(${COLORS[c % COLORS.length]})`;
    tr.append(el("td", {}, show),
      el("td", { className: "pickcls" }, el("kbd", { text: String(c + 1) }), " ", swatch, cls.name),
      el("td", { text: cls.present ? "yes" : "no" }), el("td", { text: cls.score === null ? "-" : cls.score.toFixed(3) }),
      el("td", { text: String(cls.area) }), el("td", { className: "area-now", text: String(editor.area(c)) }), verdictCell(c));
    tr.querySelector("input[type=checkbox]").addEventListener("change", (e) => { editor.shown[c] = e.target.checked; editor.render(); });
    tr.querySelector(".pickcls").addEventListener("click", () => selectClass(c));
    tr.querySelectorAll("input[type=radio]").forEach((r) => r.addEventListener("change", () => choose(c, r.value)));
    body.appendChild(tr);
  });
  $("undo").disabled = !editor.undoStack.length; $("redo").disabled = !editor.redoStack.length;
}

function selectClass(c) {
  if (!state.result || c >= state.result.classes.length) return;
  editor.current = c;
  $("current-class").textContent = state.result.classes[c].name;
  legend();
}

// ---- predict an image and open it in the editor ------------------------------------------------
async function predict(file) {
  state.file = file;
  say("status", `predicting ${file.name} ...`);
  const form = new FormData();
  form.append("file", file);
  const r = await fetch("/v1/predict", { method: "POST", body: form, headers: headers() });
  const body = await r.json();
  if (!r.ok) { say("status", body.error, true); return; }
  const img = new Image();
  img.onload = () => open(file, body, img);
  img.onerror = () => say("status", `${file.name}: predicted, but this browser cannot display the format (TIFF?); ` +
    "the JSON download has the masks", true);
  img.src = URL.createObjectURL(file);
  $("download").href = URL.createObjectURL(new Blob([JSON.stringify(body, null, 2)], { type: "application/json" }));
}

function open(file, body, img) {
  const { width: w, height: h } = body.image;
  state.result = body;
  state.model = body.classes.map((cls) => decodeRLE(cls.present ? cls.rle : "", w, h));
  state.modelHash = state.model.map((m) => window.SteelsegEditor.fnv1a(m));
  state.flagMissed = body.classes.map(() => false);
  $("view").hidden = false;
  editor.load(img, state.model);
  selectClass(Math.min(editor.current, body.classes.length - 1));
  const found = body.classes.filter((c) => c.present).map((c) => c.name);
  say("status", `${file.name}: ${found.length ? "found " + found.join(", ") : "no defect found"} ` +
    `(${w}x${h}, ${body.timings_ms.predict} ms)`);
}

// ---- send -----------------------------------------------------------------------------------------
async function sendFeedback() {
  if (!state.result) return;
  const verdicts = {}, masks = {};
  state.result.classes.forEach((cls, c) => { verdicts[cls.name] = verdict(c); masks[cls.name] = editor.rle(c); });
  const form = new FormData();
  form.append("file", state.file);
  form.append("verdicts", JSON.stringify(verdicts));
  form.append("masks", JSON.stringify({ width: editor.w, height: editor.h, masks }));
  const reviewer = $("reviewer").value.trim();
  localStorage.setItem("steelseg-reviewer", reviewer);
  if (reviewer) form.append("reviewer", reviewer);
  const r = await fetch("/v1/feedback", { method: "POST", body: form, headers: headers() });
  const body = await r.json();
  say("feedback-status", r.ok ? `${state.file.name}: stored in ${body.stored} as ${body.image_id}${body.replaced ? " (replaced the earlier review)" : ""}` +
    (body.reason ? `: ${body.reason}` : "") : body.error, !r.ok);
  if (r.ok && state.qpos >= 0) await loadQueue(true);
}

// ---- the review queue -----------------------------------------------------------------------------
async function loadQueue(openCurrent) {
  const r = await fetch("/v1/queue", { headers: headers() });
  const body = await r.json();
  if (!r.ok) { say("queue-status", body.error, true); return; }
  state.queue = body.items;
  const list = $("queue-list").querySelector("tbody");
  list.replaceChildren();
  body.items.forEach((it, i) => {
    const tr = document.createElement("tr");
    tr.dataset.id = it.id;
    tr.append(el("td", { text: String(it.position) }), el("td", { text: it.name }), el("td", { text: it.score.toFixed(3) }),
      el("td", { text: it.random ? "random" : "" }), el("td", { text: it.reason }));
    tr.addEventListener("click", () => openItem(i));
    list.appendChild(tr);
  });
  say("queue-status", `${body.items.length} to review, ${body.sent} sent` + (body.pending ? `, ${body.pending} still being scored` : "") +
    (body.unreadable.length ? `; unreadable: ${body.unreadable.join("; ")}` : ""));
  if (body.pending) setTimeout(() => loadQueue(false), 1500);
  if (openCurrent && body.items.length) await openItem(Math.min(Math.max(state.qpos, 0), body.items.length - 1));
  else if (!body.items.length) state.qpos = -1;
}

async function openItem(i) {
  if (i < 0 || i >= state.queue.length) return;
  const it = state.queue[i];
  state.qpos = i;
  $("queue-list").querySelectorAll("tbody tr").forEach((tr, k) => tr.classList.toggle("current", k === i));
  $("queue-reason").textContent = `${it.position}/${state.queue.length} ${it.name}: ${it.reason}`;
  const r = await fetch(`/v1/queue/${it.id}`, { headers: headers() });
  if (!r.ok) { say("queue-status", (await r.json()).error, true); return; }
  const blob = await r.blob();
  await predict(new File([blob], it.name, { type: blob.type || "application/octet-stream" }));
}

async function uploadToQueue(files) {
  const form = new FormData();
  for (const f of files) form.append("files", f);
  const r = await fetch("/v1/queue", { method: "POST", body: form, headers: headers() });
  const body = await r.json();
  say("queue-status", r.ok ? `added ${body.added.length} image(s)` : body.error, !r.ok);
  await loadQueue(state.qpos < 0);
}

// ---- controls and keys ----------------------------------------------------------------------------
function setTool(t) { editor.tool = t; ["brush", "eraser", "pan"].forEach((k) => $(`tool-${k}`).classList.toggle("on", k === t)); }

function setRadius(r) { editor.radius = Math.max(1, Math.min(60, r)); $("radius").value = editor.radius; $("radius-value").textContent = editor.radius; }

function onKey(e) {
  if (e.target.matches && e.target.matches("input[type=text], input[type=password], input:not([type])")) return;
  const k = e.key.toLowerCase();
  if ((e.ctrlKey || e.metaKey) && k === "z") { e.preventDefault(); e.shiftKey ? editor.redo() : editor.undo(); return; }
  if ((e.ctrlKey || e.metaKey) && k === "y") { e.preventDefault(); editor.redo(); return; }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (/^[1-9]$/.test(e.key)) selectClass(Number(e.key) - 1);
  else if (k === "b") setTool("brush");
  else if (k === "e") setTool("eraser");
  else if (k === "h") setTool("pan");
  else if (k === "f") editor.fit();
  else if (e.key === "[") setRadius(editor.radius - 1);
  else if (e.key === "]") setRadius(editor.radius + 1);
  else if (k === "n" || e.key === "ArrowRight") openItem(state.qpos + 1);
  else if (k === "p" || e.key === "ArrowLeft") openItem(state.qpos - 1);
  else if (k === "s") sendFeedback();
  else if (e.key === " ") { editor.spaceDown = true; e.preventDefault(); }
}

$("apikey").value = localStorage.getItem("steelseg-api-key") || "";
$("reviewer").value = localStorage.getItem("steelseg-reviewer") || "";
$("apikey").addEventListener("change", loadModel);
$("file").addEventListener("change", (e) => e.target.files[0] && predict(e.target.files[0]));
$("queue-file").addEventListener("change", (e) => e.target.files.length && uploadToQueue(e.target.files));
$("send").addEventListener("click", sendFeedback);
$("undo").addEventListener("click", () => editor.undo());
$("redo").addEventListener("click", () => editor.redo());
$("fit").addEventListener("click", () => editor.fit());
$("next").addEventListener("click", () => openItem(state.qpos + 1));
$("prev").addEventListener("click", () => openItem(state.qpos - 1));
["brush", "eraser", "pan"].forEach((t) => $(`tool-${t}`).addEventListener("click", () => setTool(t)));
$("radius").addEventListener("input", (e) => setRadius(Number(e.target.value)));
$("opacity").addEventListener("input", (e) => { editor.opacity = Number(e.target.value) / 100; editor.render(); });
document.addEventListener("keydown", onKey);
document.addEventListener("keyup", (e) => { if (e.key === " ") editor.spaceDown = false; });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) predict(e.dataTransfer.files[0]); });
setRadius(editor.radius);
loadModel();
