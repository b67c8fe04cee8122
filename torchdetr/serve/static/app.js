// DETR explorer: upload an image, draw its detections, show the transformer's attention.
// Plain browser JavaScript (no build step, no libraries). Talks to the API of the same server:
//   GET  /v1/model                                   → name, classes, palette, threshold, attention support
//   POST /v1/attention?threshold=0                   → every query's detection and decoder cross-attention map
//   POST /v1/attention?points=x,y&decoder=false      → encoder self-attention at a clicked pixel
//   POST /v1/detect?threshold=0                      → detections only (servers running an ONNX model)
// Detections are fetched once with threshold 0; the slider filters them here, without a new request.
"use strict";

const PAD_SCALE_LIMIT = 4;        // small images are enlarged at most this much to fill the stage
const DIM_ALPHA = 0.45;           // darkening of the image under a heatmap
const LINE_WIDTH = 2;             // CSS pixels
const LABEL_FONT_PX = 12;         // CSS pixels
const MARKER_RADIUS = 7;          // CSS pixels, the clicked-point marker
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

const $ = (id) => document.getElementById(id);
const state = {
  model: null,          // GET /v1/model
  file: null,           // the File being explored
  image: null,          // HTMLImageElement of it (EXIF-upright, as the server sees it)
  result: null,         // the first answer: {image, detections (all queries), ...}
  threshold: 0.7,
  hover: null,          // query previewed by hovering
  pinned: null,         // {kind: "decoder", query} or {kind: "encoder", x, y, map}
  scale: 1,             // canvas pixels per image pixel
  labels: [],           // label chips drawn on the canvas: {query, x, y, w, h} in canvas pixels
  apiKey: sessionStorage.getItem("detr-api-key") || "",
  pointRequest: 0,      // id of the latest encoder request (older answers are dropped)
};

// ------------------------------------------------------------------ API
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.apiKey) headers["Authorization"] = "Bearer " + state.apiKey;
  const response = await fetch(path, Object.assign({}, options, {headers}));
  if (response.status === 401) {
    $("apikey-form").hidden = false;
    throw new Error("This server needs an API key: enter it at the top right.");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    throw new Error(`${response.status}: ${detail}`);
  }
  return response.json();
}

function postImage(path) {
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  return api(path, {method: "POST", body: form});
}

// ------------------------------------------------------------------ status
function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function busy(text) {
  $("busy").hidden = !text;
  if (text) $("busy-text").textContent = text;
}

// ------------------------------------------------------------------ model
async function loadModel() {
  try {
    state.model = await api("/v1/model");
  } catch (err) {
    $("model-info").textContent = "model unavailable";
    showError(err.message);
    return;
  }
  const m = state.model;
  const info = $("model-info");
  info.textContent = "";
  const name = document.createElement("b");
  name.textContent = (m.name || "model").split(/[\\/]/).pop();
  name.title = m.name;
  info.append(name);
  for (const text of [m.runtime, m.device, m.precision, `${m.classes.length} classes`]) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = text;
    info.append(chip);
  }
  setThreshold(m.threshold);
  if (!m.attention) $("view-text").textContent = "This server runs an exported model: no attention maps.";
}

function colorOf(label) {
  const palette = (state.model && state.model.palette) || ["#4f46e5"];
  return palette[label % palette.length];
}

// ------------------------------------------------------------------ image
async function openFile(file) {
  if (!file) return;
  showError("");
  if (file.type && !file.type.startsWith("image/")) {
    showError(`${file.name}: not an image (${file.type})`);
    return;
  }
  state.file = file;
  state.result = null;
  state.pinned = null;
  state.hover = null;
  const image = new Image();
  image.decoding = "async";
  image.src = URL.createObjectURL(file);
  try {
    await image.decode();
  } catch (_) {
    image.removeAttribute("src");  // the browser cannot show it; the server may still read it (e.g. TIFF)
  }
  if (state.image && state.image.src) URL.revokeObjectURL(state.image.src);
  state.image = image;
  $("dropzone").hidden = true;
  $("canvases").hidden = false;
  $("change-image").hidden = false;
  busy("Detecting…");
  try {
    const attention = state.model && state.model.attention;
    state.result = await postImage(attention ? "/v1/attention?threshold=0" : "/v1/detect?threshold=0");
  } catch (err) {
    showError(err.message);
    state.result = null;
  } finally {
    busy("");
  }
  const size = state.result ? state.result.image : {width: image.naturalWidth, height: image.naturalHeight};
  $("image-info").textContent = `${file.name || "pasted image"} · ${size.width} × ${size.height} px`;
  $("hint").hidden = !(state.result && state.model && state.model.attention);
  $("stage").classList.toggle("has-hint", !$("hint").hidden);
  $("download").disabled = !state.result;
  layout();
}

// ------------------------------------------------------------------ layout and drawing
function imageSize() {
  if (state.result) return state.result.image;
  return {width: state.image.naturalWidth || 1, height: state.image.naturalHeight || 1};
}

function layout() {
  if (!state.image) return;
  const stage = $("stage").getBoundingClientRect();
  const margin = 24;
  const hintSpace = $("hint").hidden ? 0 : 40;  // the hint line sits under the image
  const size = imageSize();
  const fit = Math.min((stage.width - 2 * margin) / size.width, (stage.height - 2 * margin - hintSpace) / size.height);
  const cssScale = Math.max(0.01, Math.min(fit, PAD_SCALE_LIMIT));
  const cssWidth = Math.round(size.width * cssScale);
  const cssHeight = Math.round(size.height * cssScale);
  const ratio = window.devicePixelRatio || 1;
  for (const canvas of document.querySelectorAll(".canvases canvas")) {
    canvas.width = Math.round(cssWidth * ratio);
    canvas.height = Math.round(cssHeight * ratio);
    canvas.style.width = cssWidth + "px";
    canvas.style.height = cssHeight + "px";
  }
  state.scale = $("image-canvas").width / size.width;
  drawImage();
  renderList();
  render();
}

function drawImage() {
  const canvas = $("image-canvas");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#2a2f3a";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (state.image.naturalWidth) {
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  }
}

function visibleDetections() {
  if (!state.result) return [];
  return state.result.detections.filter((d) => d.score > state.threshold);
}

function activeQuery() {
  if (state.hover !== null) return state.hover;
  return state.pinned && state.pinned.kind === "decoder" ? state.pinned.query : null;
}

// heatmap, boxes and the highlighted list entry (the list itself is rebuilt only when it changes: renderList)
function render() {
  if (!state.image) return;
  drawHeatmap();
  drawBoxes();
  markActive();
  renderView();
}

function markActive() {
  const active = activeQuery();
  for (const item of document.querySelectorAll(".det")) {
    item.classList.toggle("active", Number(item.dataset.query) === active);
  }
}

function viridis(t) {
  const x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}

function currentMap() {
  const query = activeQuery();
  if (query !== null && state.result) {
    const detection = state.result.detections.find((d) => d.query === query);
    return detection && detection.decoder ? detection.decoder : null;
  }
  return state.pinned && state.pinned.kind === "encoder" ? state.pinned.map : null;
}

function drawHeatmap() {
  const canvas = $("heat-canvas");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const map = currentMap();
  const query = activeQuery();
  // what the heatmap shows, for scripts and tests: "decoder:QUERY", "encoder:X,Y" or ""
  canvas.dataset.map = !map ? "" : query !== null ? `decoder:${query}`
    : `encoder:${state.pinned.x.toFixed(1)},${state.pinned.y.toFixed(1)}`;
  if (!map) return;
  const [h, w] = map.shape;
  // colours and opacity from the map's minimum (transparent) to its maximum (opaque yellow), as imshow scales
  let low = Infinity, high = -Infinity;
  for (const row of map.values) for (const v of row) { low = Math.min(low, v); high = Math.max(high, v); }
  const grid = document.createElement("canvas");
  grid.width = w;
  grid.height = h;
  const gctx = grid.getContext("2d");
  const pixels = gctx.createImageData(w, h);
  const opacity = parseFloat($("opacity").value);
  for (let i = 0; i < h; i++) {
    for (let j = 0; j < w; j++) {
      const t = high > low ? (map.values[i][j] - low) / (high - low) : 0;
      const [r, g, b] = viridis(t);
      const k = 4 * (i * w + j);
      pixels.data[k] = r;
      pixels.data[k + 1] = g;
      pixels.data[k + 2] = b;
      pixels.data[k + 3] = Math.round(255 * opacity * t);
    }
  }
  gctx.putImageData(pixels, 0, 0);
  ctx.fillStyle = `rgba(10, 12, 18, ${DIM_ALPHA})`;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const [x1, y1, x2, y2] = map.extent;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(grid, x1 * state.scale, y1 * state.scale, (x2 - x1) * state.scale, (y2 - y1) * state.scale);
}

function drawBoxes() {
  const canvas = $("box-canvas");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const ratio = window.devicePixelRatio || 1;
  const active = activeQuery();
  const focusing = active !== null || (state.pinned && state.pinned.kind === "encoder");
  ctx.font = `600 ${LABEL_FONT_PX * ratio}px system-ui, sans-serif`;
  ctx.textBaseline = "middle";
  state.labels = [];
  // lowest scores first, so the most confident boxes and labels end on top; the active one above all
  const order = visibleDetections().slice().reverse();
  order.sort((a, b) => (a.query === active) - (b.query === active));
  for (const d of order) {
    const [x1, y1, x2, y2] = d.box.map((v) => v * state.scale);
    const color = colorOf(d.label);
    const isActive = d.query === active;
    ctx.globalAlpha = focusing && !isActive ? 0.35 : 1;
    ctx.lineWidth = (isActive ? 2 * LINE_WIDTH : LINE_WIDTH) * ratio;
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.name} ${d.score.toFixed(2)}`;
    const padX = 5 * ratio;
    const chipH = (LABEL_FONT_PX + 6) * ratio;
    const chipW = ctx.measureText(text).width + 2 * padX;
    const chipX = Math.min(Math.max(0, x1 - ctx.lineWidth / 2), canvas.width - chipW);
    const chipY = y1 - chipH >= 0 ? y1 - chipH : Math.min(y1, canvas.height - chipH);
    ctx.fillStyle = color;
    ctx.fillRect(chipX, chipY, chipW, chipH);
    ctx.fillStyle = readableOn(color);
    ctx.fillText(text, chipX + padX, chipY + chipH / 2 + ratio / 2);
    state.labels.push({query: d.query, x: chipX, y: chipY, w: chipW, h: chipH});
  }
  ctx.globalAlpha = 1;
  if (state.pinned && state.pinned.kind === "encoder") {
    const x = state.pinned.x * state.scale;
    const y = state.pinned.y * state.scale;
    const r = MARKER_RADIUS * ratio;
    ctx.lineWidth = 3 * ratio;
    ctx.strokeStyle = "rgba(0, 0, 0, 0.7)";
    ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.stroke();
    ctx.lineWidth = 1.5 * ratio;
    ctx.strokeStyle = "#ff3b5c";
    ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.stroke();
    ctx.fillStyle = "#ff3b5c";
    ctx.beginPath(); ctx.arc(x, y, 2 * ratio, 0, 2 * Math.PI); ctx.fill();
  }
}

function readableOn(hex) {
  const n = parseInt(hex.slice(1), 16);
  const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  const lum = 0.2126 * channel((n >> 16) & 255) + 0.7152 * channel((n >> 8) & 255) + 0.0722 * channel(n & 255);
  return lum > 0.179 ? "#000" : "#fff";
}

function renderList() {
  const list = $("detections");
  list.textContent = "";
  const shown = visibleDetections();
  const total = state.result ? state.result.detections.length : 0;
  $("count").textContent = state.result ? `${shown.length} of ${total} queries above ${state.threshold.toFixed(2)}` : "—";
  if (!shown.length) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = state.result ? "No detection above the threshold: move the slider left."
      : "Drop or choose an image to see what the model finds.";
    list.append(empty);
  }
  for (const d of shown) {
    const item = document.createElement("li");
    item.className = "det";
    item.dataset.query = d.query;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colorOf(d.label);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = d.name;
    name.title = `query ${d.query} · box ${d.box.map((v) => v.toFixed(1)).join(", ")}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = d.score.toFixed(3);
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * d.score).toFixed(1)}%`;
    fill.style.background = colorOf(d.label);
    bar.append(fill);
    item.append(swatch, name, score, bar);
    item.addEventListener("mouseenter", () => preview(d.query));
    item.addEventListener("mouseleave", () => preview(null));
    item.addEventListener("click", () => pinDetection(d.query));
    list.append(item);
  }
}

function renderView() {
  const text = $("view-text");
  const query = activeQuery();
  $("clear").disabled = !state.pinned;
  if (state.model && !state.model.attention) return;
  text.textContent = "";
  if (query !== null && state.result) {
    const d = state.result.detections.find((x) => x.query === query);
    const b = document.createElement("b");
    b.textContent = `${d.name} ${d.score.toFixed(2)}`;
    text.append("Decoder cross-attention of query ", String(query), " (", b, "): where it looked to find the object.");
  } else if (state.pinned && state.pinned.kind === "encoder") {
    const b = document.createElement("b");
    b.textContent = `(${Math.round(state.pinned.x)}, ${Math.round(state.pinned.y)})`;
    text.append("Encoder self-attention at ", b, ": how much every position attends to this point.");
  } else {
    text.textContent = state.result ? "Hover or click a detection, or click a pixel of the image." : "Nothing selected.";
  }
}

// ------------------------------------------------------------------ interaction
function preview(query) {
  state.hover = query;
  render();
}

function pinDetection(query) {
  state.pinned = state.pinned && state.pinned.kind === "decoder" && state.pinned.query === query
    ? null : {kind: "decoder", query};
  state.hover = null;
  render();
}

function canvasPoint(event) {
  const canvas = $("box-canvas");
  const rect = canvas.getBoundingClientRect();
  const cx = (event.clientX - rect.left) * (canvas.width / rect.width);
  const cy = (event.clientY - rect.top) * (canvas.height / rect.height);
  return {cx, cy, x: cx / state.scale, y: cy / state.scale};
}

function labelAt(cx, cy) {
  // the last drawn label is on top
  for (let i = state.labels.length - 1; i >= 0; i--) {
    const l = state.labels[i];
    if (cx >= l.x && cx <= l.x + l.w && cy >= l.y && cy <= l.y + l.h) return l.query;
  }
  return null;
}

async function showEncoderAt(x, y) {
  const size = imageSize();
  if (x < 0 || y < 0 || x >= size.width || y >= size.height) return;
  const request = ++state.pointRequest;
  state.pinned = {kind: "encoder", x, y, map: null};
  state.hover = null;
  render();
  busy("Encoder attention…");
  try {
    const answer = await postImage(`/v1/attention?decoder=false&threshold=0.99&points=${x.toFixed(1)},${y.toFixed(1)}`);
    if (request !== state.pointRequest || !state.pinned || state.pinned.kind !== "encoder") return;
    state.pinned.map = answer.points[0].encoder;
    showError("");
  } catch (err) {
    showError(err.message);
  } finally {
    if (request === state.pointRequest) busy("");
  }
  render();
}

function onCanvasClick(event) {
  if (!state.result || !(state.model && state.model.attention)) return;
  const p = canvasPoint(event);
  const query = labelAt(p.cx, p.cy);
  if (query !== null) pinDetection(query);
  else showEncoderAt(p.x, p.y);
}

function onCanvasMove(event) {
  if (!state.result) return;
  const p = canvasPoint(event);
  const query = labelAt(p.cx, p.cy);
  $("box-canvas").style.cursor = query !== null ? "pointer" : "crosshair";
  if (query !== state.hover) preview(query);
}

function setThreshold(value) {
  state.threshold = Math.max(0, Math.min(0.99, Number(value)));
  $("threshold").value = state.threshold;
  $("threshold-value").textContent = state.threshold.toFixed(2);
  const pinnedGone = state.pinned && state.pinned.kind === "decoder"
    && !visibleDetections().some((d) => d.query === state.pinned.query);
  if (pinnedGone) state.pinned = null;
  renderList();
  render();
}

function clearSelection() {
  state.pinned = null;
  state.hover = null;
  state.pointRequest++;
  render();
}

function downloadJson() {
  if (!state.result) return;
  const detections = visibleDetections().map(({box, score, label, name, query}) => ({box, score, label, name, query}));
  const payload = {image: state.result.image, model: state.result.model, threshold: state.threshold, detections};
  const blob = new Blob([JSON.stringify(payload, null, 2)], {type: "application/json"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = (state.file.name || "image").replace(/\.[^.]*$/, "") + ".detections.json";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function setUp() {
  for (const id of ["file", "file2"]) {
    $(id).addEventListener("change", (event) => { openFile(event.target.files[0]); event.target.value = ""; });
  }
  const stage = $("stage");
  stage.addEventListener("dragover", (event) => { event.preventDefault(); stage.classList.add("dragging"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
  stage.addEventListener("drop", (event) => {
    event.preventDefault();
    stage.classList.remove("dragging");
    openFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData || {items: []}).items].find((i) => i.type.startsWith("image/"));
    if (item) openFile(item.getAsFile());
  });
  $("threshold").addEventListener("input", (event) => setThreshold(event.target.value));
  $("opacity").addEventListener("input", () => render());
  $("clear").addEventListener("click", clearSelection);
  $("download").addEventListener("click", downloadJson);
  $("box-canvas").addEventListener("click", onCanvasClick);
  $("box-canvas").addEventListener("mousemove", onCanvasMove);
  $("box-canvas").addEventListener("mouseleave", () => { if (state.hover !== null) preview(null); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") clearSelection(); });
  window.addEventListener("resize", layout);
  $("apikey-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = $("apikey").value.trim();
    sessionStorage.setItem("detr-api-key", state.apiKey);
    $("apikey-form").hidden = true;
    showError("");
    loadModel().then(() => { if (state.file) openFile(state.file); });
  });
  loadModel();
}

setUp();
