// steelseg mask editor: one binary bitmap per class over an image, drawn on a canvas with zoom and pan.
// Brush writes 1, eraser 0 (never anti-aliased); a stroke covers every pixel whose centre lies within the
// brush radius of the pointer's path (segments between pointer events are filled, so fast strokes leave
// no gaps); undo / redo per stroke, for the current image only. One transform maps image pixels to the
// canvas's CSS pixels: screen = offset + image * scale; drawing and display both use it, and the canvas
// backing store is CSS size x devicePixelRatio, so it is exact at any device pixel ratio.
"use strict";
(() => {

const COLORS = [[230,159,0],[86,180,233],[0,158,115],[213,94,0],[204,121,167],[0,114,178],[240,228,66],[120,120,120]];

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

function encodeRLE(mask, w, h) {
  const out = [];
  let start = -1;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const p = x * h + y, on = mask[y * w + x] === 1;
      if (on && start < 0) start = p;
      if (!on && start >= 0) { out.push(start + 1, p - start); start = -1; }
    }
  }
  if (start >= 0) out.push(start + 1, w * h - start);
  return out.join(" ");
}

function fnv1a(mask) {  // a hash of a bitmap, for tests and for "did this class change"
  let h = 0x811c9dc5;
  for (let i = 0; i < mask.length; i++) { h ^= mask[i]; h = Math.imul(h, 0x01000193) >>> 0; }
  return h.toString(16).padStart(8, "0");
}

class MaskEditor {
  constructor(canvas, onChange) {
    this.canvas = canvas;
    this.onChange = onChange || (() => {});
    this.img = null; this.w = 0; this.h = 0;
    this.masks = []; this.shown = []; this.current = 0;
    this.radius = 4; this.opacity = 0.45; this.tool = "brush";
    this.view = { scale: 1, ox: 0, oy: 0 };
    this.undoStack = []; this.redoStack = [];
    this.stroke = null; this.pan = null; this.lastStroke = null; this.spaceDown = false;
    this.overlay = document.createElement("canvas");
    this.bind();
  }

  // ---- the image and its bitmaps ----------------------------------------------------------------
  load(img, masks) {
    this.img = img; this.w = img.naturalWidth; this.h = img.naturalHeight;
    this.masks = masks.map((m) => Uint8Array.from(m));
    this.shown = masks.map(() => true);
    this.undoStack = []; this.redoStack = []; this.lastStroke = null;
    this.overlay.width = this.w; this.overlay.height = this.h;
    this.fit();
  }

  rle(c) { return encodeRLE(this.masks[c], this.w, this.h); }
  hash(c) { return fnv1a(this.masks[c]); }
  area(c) { let n = 0; const m = this.masks[c]; for (let i = 0; i < m.length; i++) n += m[i]; return n; }
  setIndices(c) { const out = []; const m = this.masks[c]; for (let i = 0; i < m.length; i++) if (m[i]) out.push(i); return out; }
  allBinary() { return this.masks.every((m) => m.every((v) => v === 0 || v === 1)); }

  // ---- the one transform: image pixels <-> the canvas's CSS pixels -------------------------------
  cssSize() { const r = this.canvas.getBoundingClientRect(); return [r.width, r.height]; }
  toImage(clientX, clientY) {
    const r = this.canvas.getBoundingClientRect();
    return [(clientX - r.left - this.view.ox) / this.view.scale, (clientY - r.top - this.view.oy) / this.view.scale];
  }
  toScreen(x, y) {  // image coordinates -> viewport (client) coordinates
    const r = this.canvas.getBoundingClientRect();
    return [r.left + this.view.ox + x * this.view.scale, r.top + this.view.oy + y * this.view.scale];
  }

  fit() {  // fit to width; the view is as tall as the fitted image, at most 70% of the window
    const parent = this.canvas.parentElement.getBoundingClientRect().width || this.w;
    const cssW = Math.min(parent, Math.max(this.w, 1) * 4);
    const scale = cssW / this.w;
    const cssH = Math.min(this.h * scale, window.innerHeight * 0.7);
    this.canvas.style.width = `${cssW}px`; this.canvas.style.height = `${cssH}px`;
    this.view = { scale, ox: 0, oy: 0 };
    this.render();
  }

  zoomAt(clientX, clientY, factor) {
    const r = this.canvas.getBoundingClientRect();
    const cx = clientX - r.left, cy = clientY - r.top;
    const [x, y] = this.toImage(clientX, clientY);
    const scale = Math.min(64, Math.max(0.05, this.view.scale * factor));
    this.view = { scale, ox: cx - x * scale, oy: cy - y * scale };  // the pixel under the cursor stays put
    this.render();
  }

  // ---- display ----------------------------------------------------------------------------------
  paintOverlay() {
    const { w, h } = this, ctx = this.overlay.getContext("2d");
    const data = ctx.createImageData(w, h), d = data.data;
    const fill = Math.round(255 * this.opacity);
    this.masks.forEach((m, c) => {
      if (!this.shown[c]) return;
      const col = COLORS[c % COLORS.length];
      for (let p = 0; p < m.length; p++) {
        if (!m[p]) continue;
        const x = p % w;
        const edge = (x > 0 && !m[p - 1]) || (x < w - 1 && !m[p + 1]) || (p >= w && !m[p - w]) || (p + w < m.length && !m[p + w]);
        d[4 * p] = col[0]; d[4 * p + 1] = col[1]; d[4 * p + 2] = col[2];
        d[4 * p + 3] = edge ? Math.max(fill, 230) : fill;
      }
    });
    ctx.putImageData(data, 0, 0);
  }

  render() {
    if (!this.img) return;
    const dpr = window.devicePixelRatio || 1, [cssW, cssH] = this.cssSize();
    const bw = Math.round(cssW * dpr), bh = Math.round(cssH * dpr);
    if (this.canvas.width !== bw || this.canvas.height !== bh) { this.canvas.width = bw; this.canvas.height = bh; }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#37474f"; ctx.fillRect(0, 0, bw, bh);
    ctx.imageSmoothingEnabled = false;  // zoomed pixels stay square: the reviewer sees what is stored
    const s = dpr * this.view.scale;
    ctx.setTransform(s, 0, 0, s, dpr * this.view.ox, dpr * this.view.oy);
    ctx.drawImage(this.img, 0, 0);
    this.paintOverlay();
    ctx.drawImage(this.overlay, 0, 0);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    this.canvas.dataset.drawn = "1";
  }

  // ---- strokes ----------------------------------------------------------------------------------
  // every pixel whose centre is within `radius` of the segment a-b gets `value`; changes are recorded
  segment(ax, ay, bx, by, value) {
    const m = this.masks[this.current], r = this.radius, rr = r * r, st = this.stroke;
    const x0 = Math.max(0, Math.floor(Math.min(ax, bx) - r)), x1 = Math.min(this.w - 1, Math.ceil(Math.max(ax, bx) + r));
    const y0 = Math.max(0, Math.floor(Math.min(ay, by) - r)), y1 = Math.min(this.h - 1, Math.ceil(Math.max(ay, by) + r));
    const dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const px = x + 0.5, py = y + 0.5;
        const t = len2 > 0 ? Math.min(1, Math.max(0, ((px - ax) * dx + (py - ay) * dy) / len2)) : 0;
        const qx = ax + t * dx - px, qy = ay + t * dy - py;
        if (qx * qx + qy * qy > rr) continue;
        const p = y * this.w + x;
        if (m[p] === value) continue;
        if (!st.before.has(p)) st.before.set(p, m[p]);
        m[p] = value;
      }
    }
  }

  begin(clientX, clientY) {
    const [x, y] = this.toImage(clientX, clientY);
    this.stroke = { c: this.current, value: this.tool === "eraser" ? 0 : 1, before: new Map(), points: [[x, y]] };
    this.segment(x, y, x, y, this.stroke.value);
    this.render();
  }

  extend(clientX, clientY) {
    const st = this.stroke, [x, y] = this.toImage(clientX, clientY), [px, py] = st.points[st.points.length - 1];
    st.points.push([x, y]);
    this.segment(px, py, x, y, st.value);
  }

  end() {
    const st = this.stroke;
    this.stroke = null;
    if (!st) return;
    this.lastStroke = { c: st.c, value: st.value, radius: this.radius, points: st.points };
    if (!st.before.size) return;
    const idx = Int32Array.from(st.before.keys()), before = Uint8Array.from(st.before.values());
    this.push({ c: st.c, idx, before, after: new Uint8Array(idx.length).fill(st.value) });
  }

  // replace a whole class's bitmap as one undoable step (the verdict buttons: restore, clear)
  replaceClass(c, mask) {
    const m = this.masks[c], idx = [];
    for (let p = 0; p < m.length; p++) if (m[p] !== mask[p]) idx.push(p);
    if (!idx.length) return;
    const i32 = Int32Array.from(idx);
    this.push({ c, idx: i32, before: Uint8Array.from(idx, (p) => m[p]), after: Uint8Array.from(idx, (p) => mask[p]) });
    for (const p of idx) m[p] = mask[p];
    this.render();
  }

  push(step) { this.undoStack.push(step); this.redoStack = []; this.onChange(step.c); }

  apply(step, which) {
    const m = this.masks[step.c], vals = step[which];
    for (let i = 0; i < step.idx.length; i++) m[step.idx[i]] = vals[i];
    this.render();
    this.onChange(step.c);
  }

  undo() { const s = this.undoStack.pop(); if (s) { this.redoStack.push(s); this.apply(s, "before"); } }
  redo() { const s = this.redoStack.pop(); if (s) { this.undoStack.push(s); this.apply(s, "after"); } }

  // ---- pointer and wheel ------------------------------------------------------------------------
  bind() {
    const cv = this.canvas;
    cv.addEventListener("contextmenu", (e) => e.preventDefault());
    cv.addEventListener("pointerdown", (e) => {
      if (!this.img) return;
      cv.setPointerCapture(e.pointerId);
      if (e.button === 1 || e.button === 2 || this.spaceDown || this.tool === "pan") {
        this.pan = { x: e.clientX, y: e.clientY, ox: this.view.ox, oy: this.view.oy };
      } else if (e.button === 0) {
        this.begin(e.clientX, e.clientY);
      }
      e.preventDefault();
    });
    cv.addEventListener("pointermove", (e) => {
      if (this.pan) {
        this.view.ox = this.pan.ox + e.clientX - this.pan.x; this.view.oy = this.pan.oy + e.clientY - this.pan.y;
        this.render();
      } else if (this.stroke) {
        const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
        for (const ev of (events.length ? events : [e])) this.extend(ev.clientX, ev.clientY);
        this.render();
      }
    });
    const stop = () => { this.pan = null; this.end(); };
    cv.addEventListener("pointerup", stop);
    cv.addEventListener("pointercancel", stop);
    cv.addEventListener("wheel", (e) => {
      if (!this.img) return;
      e.preventDefault();
      this.zoomAt(e.clientX, e.clientY, Math.exp(-e.deltaY * 0.0015));
    }, { passive: false });
    window.addEventListener("resize", () => this.img && this.render());
  }
}

window.SteelsegEditor = { MaskEditor, decodeRLE, encodeRLE, fnv1a, COLORS };
})();
