// The webcam demo: camera (or an image) in, skeleton drawn over it, with mirror mode, One Euro
// smoothing, tracking (the person detector finds someone, then the crop follows their keypoints:
// `est.track()`), a confidence threshold, a model picker and timings.
// `?source=URL` uses that image instead of the camera (headless screenshots); `?backend=...`
// and `?model=...` preselect the pickers.

import { createEstimator } from "./wgpose.js";
import { OneEuroPose } from "./oneeuro.js";

const $ = (id) => document.getElementById(id);
const q = new URLSearchParams(location.search);
const view = $("view");
const g = view.getContext("2d");
const video = $("video");

let est = null;
let source = null; // the element frames come from (video or image)
let running = false;
let smoother = new OneEuroPose();
let frameTimes = [];
let building = null;

for (const id of ["threshold", "minCutoff", "beta"]) {
  const input = $(id);
  const show = () => { $(id + "Out").textContent = Number(input.value).toFixed(id === "beta" ? 3 : 2); };
  input.addEventListener("input", show);
  show();
}
if (q.get("model")) $("model").value = q.get("model");
if (q.get("backend")) $("backendPick").value = q.get("backend");
if (q.get("mirror") === "0") $("mirror").checked = false;
if (q.get("worker") === "1") $("worker").checked = true;

function showError(e) {
  const el = $("error");
  el.hidden = !e;
  el.textContent = e ? `${e.code ? e.code + ": " : ""}${e.message || e}` : "";
}

async function buildEstimator() {
  const model = $("model").value;
  const backend = $("backendPick").value;
  $("backend").textContent = `loading ${model}…`;
  $("backend").className = "badge";
  if (est) { est.dispose(); est = null; }
  try {
    est = await createEstimator({ model, weightsUrl: `models/${model}.safetensors`, backend,
                                  worker: $("worker").checked });
  } catch (e) {
    $("backend").textContent = "no estimator";
    showError(e);
    return;
  }
  showError(null);
  $("backend").textContent = (est.backend === "webgpu" ? `WebGPU: ${est.adapter}` : `CPU (wasm ${est.wasm}, 1 thread)`) +
    (est.worker ? " in a Web Worker" : "");
  $("backend").className = `badge ${est.backend}`;
  const why = est.backend === "cpu"
    ? (est.fallbackReason || "") : (est.weightsFromCache ? "weights from the cache" : "weights fetched");
  $("why").textContent = [why, est.detector ? `detector ${est.detector}` : est.detectorNote].filter((t) => t).join(" · ");
  smoother = new OneEuroPose();
}

function rebuild() {
  building = buildEstimator().then(() => { building = null; });
  return building;
}
$("model").addEventListener("change", rebuild);
$("backendPick").addEventListener("change", rebuild);
$("worker").addEventListener("change", rebuild);

function drawPose(pose, w, h, mirror) {
  const thr = Number($("threshold").value);
  const kps = pose.keypoints;
  const X = (x) => (mirror ? w - x : x);
  g.lineWidth = Math.max(2, w / 200);
  g.strokeStyle = "#3ee07a";
  for (const [a, b] of est.model.limbs) {
    if (kps[a].score < thr || kps[b].score < thr) continue;
    g.beginPath();
    g.moveTo(X(kps[a].x), kps[a].y);
    g.lineTo(X(kps[b].x), kps[b].y);
    g.stroke();
  }
  for (const k of kps) {
    if (k.score < thr) continue;
    g.fillStyle = k.name.startsWith("left") ? "#ffb020" : k.name.startsWith("right") ? "#20b0ff" : "#ffffff";
    g.beginPath();
    g.arc(X(k.x), k.y, Math.max(3, w / 160), 0, 2 * Math.PI);
    g.fill();
  }
  // The box the crop was cut from (the detector's person, refined, or the followed keypoints').
  const [bx, by, bw, bh] = pose.box;
  g.strokeStyle = "rgba(255,255,255,0.35)";
  g.lineWidth = 1;
  g.strokeRect(mirror ? w - bx - bw : bx, by, bw, bh);
}

function showStages(stages, total, call) {
  const rows = stages.map(([n, ms]) => `<tr><td>${n}</td><td>${ms.toFixed(1)} ms</td></tr>`);
  rows.push(`<tr><td>${call}</td><td>${total.toFixed(1)} ms</td></tr>`);
  $("stages").innerHTML = rows.join("");
}

/**
 * This frame's poses. Following: the tracked person (`est.track`: the detector when nobody is
 * tracked, else the previous keypoints' box), smoothed over time, the smoothing restarted on
 * every new track. Not following: everyone the detector finds, every frame, unsmoothed.
 */
async function posesOf(frame, isVideo, t0) {
  if (!$("follow").checked) {
    const poses = await est.estimatePoses(frame);
    const what = !est.detector ? "whole frame (no detector)"
      : poses.length === 0 ? "nobody found" : `${poses.length} found by the detector`;
    return { poses, what, call: "estimatePoses" };
  }
  // A still image is looked at afresh each time (a new track), a video followed.
  if (!isVideo) est.resetTrack();
  const t = await est.track(frame);
  if (!t) return { poses: [], what: "nobody found", call: "track" };
  if (t.step === "found") smoother = new OneEuroPose();
  let pose = t.pose;
  if ($("smooth").checked && isVideo) {
    pose = smoother.filter(pose, t0 / 1000, Number($("minCutoff").value), Number($("beta").value));
  }
  const what = t.step === "found"
    ? (est.detector ? "found by the detector (new track)" : "new track (whole frame, no detector)")
    : "followed (crop on the last keypoints)";
  return { poses: [pose], what, call: "track" };
}

async function step() {
  if (!est || building) return;
  const isVideo = source instanceof HTMLVideoElement;
  const w = isVideo ? source.videoWidth : source.naturalWidth;
  const h = isVideo ? source.videoHeight : source.naturalHeight;
  if (!w || !h) return; // no frame yet
  if (view.width !== w || view.height !== h) { view.width = w; view.height = h; }
  const mirror = $("mirror").checked;
  const t0 = performance.now();
  let found;
  try {
    found = await posesOf(source, isVideo, t0);
  } catch (e) {
    showError(e);
    est.resetTrack();
    return;
  }
  const total = performance.now() - t0;
  showError(null);
  g.save();
  if (mirror) { g.translate(w, 0); g.scale(-1, 1); }
  g.drawImage(source, 0, 0, w, h);
  g.restore();
  for (const pose of found.poses) drawPose(pose, w, h, mirror);
  $("trackState").textContent = found.what;
  frameTimes.push(performance.now());
  frameTimes = frameTimes.filter((t) => t > performance.now() - 2000);
  const fps = frameTimes.length > 1 ? (frameTimes.length - 1) / ((frameTimes.at(-1) - frameTimes[0]) / 1000) : 0;
  $("fps").textContent = `${fps.toFixed(1)} FPS · ${est.backend}`;
  const prof = await est.profile().catch(() => null);
  if (prof) showStages(prof.stages, total, found.call);
}

async function loop() {
  if (running) return;
  running = true;
  while (running) {
    await step();
    if (!(source instanceof HTMLVideoElement)) break; // a still image: once
    await new Promise((r) => requestAnimationFrame(r));
  }
  running = false;
}

async function useImage(url) {
  running = false;
  const img = new Image();
  img.src = url;
  try {
    await img.decode();
  } catch {
    showError(new Error(`the image ${url} could not be decoded`));
    return;
  }
  source = img;
  if (building) await building;
  await loop();
  if (q.get("profile") === "1") await showLayers();
  document.title = "wgpose: ready";
}

async function useCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError(new Error("no camera API in this browser: pick an image"));
    return;
  }
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    await video.play();
  } catch (e) {
    showError(new Error(`no camera (${e.name}): pick an image instead`));
    return;
  }
  source = video;
  if (est) est.resetTrack();
  smoother = new OneEuroPose();
  if (building) await building;
  await loop();
}

$("camera").addEventListener("click", useCamera);
$("file").addEventListener("change", (ev) => {
  const f = ev.target.files[0];
  if (f) useImage(URL.createObjectURL(f));
});
for (const id of ["mirror", "threshold", "follow"]) {
  $(id).addEventListener("input", () => { if (source && !(source instanceof HTMLVideoElement)) loop(); });
}

async function showLayers() {
  if (!est) return;
  const p = await est.profile().catch((e) => { showError(e); return null; });
  if (!p) return;
  const c = $("layers");
  const lg = c.getContext("2d");
  lg.clearRect(0, 0, c.width, c.height);
  if (!p.layers) {
    $("layersNote").textContent = est.backend === "cpu"
      ? "per-layer GPU times: only on WebGPU"
      : "per-layer GPU times: this adapter offers no timestamp queries";
    return;
  }
  const layers = p.layers.slice().sort((a, b) => b.ms - a.ms).slice(0, 12);
  const max = Math.max(...layers.map((l) => l.ms), 1e-6);
  const rowH = c.height / layers.length;
  lg.font = "10px system-ui";
  layers.forEach((l, i) => {
    lg.fillStyle = "#3ee07a";
    lg.fillRect(120, i * rowH + 2, (c.width - 170) * (l.ms / max), rowH - 4);
    lg.fillStyle = "#e6e6e6";
    lg.fillText(l.name.slice(0, 20), 2, i * rowH + rowH * 0.7);
    lg.fillText(`${l.ms.toFixed(2)}`, c.width - 45, i * rowH + rowH * 0.7);
  });
  const total = p.layers.reduce((s, l) => s + l.ms, 0);
  $("layersNote").textContent = `${p.layers.length} layers, ${total.toFixed(1)} ms GPU in all (12 slowest shown)`;
}
$("profile").addEventListener("click", showLayers);

await rebuild();
const start = q.get("source");
if (start) {
  await useImage(start);
} else if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
  await useCamera();
} else {
  showError(new Error("no camera API: pick an image"));
}
