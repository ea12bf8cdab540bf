// wgpose in the browser: the JavaScript API over the wasm module (wgpose_web.js, made by
// wasm-bindgen). Promises, plain objects, typed errors:
//
//   import * as wgpose from "./wgpose.js";
//   const est = await wgpose.createEstimator({ model: "fasterpose-r18-s16-lsp",
//                                              weightsUrl: "models/fasterpose-r18-s16-lsp.safetensors" });
//   // The shipped person detector (models/person-detector-r18w32.safetensors) is fetched too;
//   // `detector: false` skips it, `detectorUrl: URL` takes another one.
//   const people = await est.estimatePoses(videoOrImage);   // no box: everyone the detector finds
//   // [{ score, box: [x, y, w, h], keypoints: [{ x, y, score, name }], detection: { score, box } }]
//   // in source pixels, highest detection score first; [] when nobody (without a detector: one
//   // pose on the whole source, no `detection`)
//   const poses = await est.estimatePoses(videoOrImage, { box: [x, y, w, h], flipHorizontal: false });
//   const t = await est.track(videoFrame);   // one person through a video: null when nobody, else
//   // { step: "found" (detector: new track, restart smoothing) | "followed" (previous keypoints' box), pose }
//   est.resetTrack();                        // the next track() runs the detector
//   est.backend  // "webgpu" or "cpu";  est.adapter, est.fallbackReason, est.detector, est.detectorNote,
//   est.wasm     // "relaxed-simd" (the CPU fallback's matrix tile with fused multiply-adds) or "simd128"
//   est.subgroups // true when the WebGPU convolutions share weight loads across subgroups
//   est.creation  // [[stage, ms], ...]: where createEstimator's time went
//   await est.profile(); est.dispose();
//
// `createEstimator({ ..., worker: true })` runs the estimator in a module Web Worker
// (wgpose-worker.js, next to this file), with the same methods and fields: each frame is copied
// into an ImageBitmap on the page and transferred, so the network, the decoding and the CPU
// fallback's compute never block the page's main thread. `est.worker` says which mode runs.
//
// Every rejection is a WgposeError whose `code` says what went wrong: "weights" (the weights URL
// failed or is not a valid weights file for the model), "decode" (the image could not be decoded),
// "input" (bad box, zero-size source), "gpu", "device-lost", "no-adapter", "too-large",
// "disposed", "busy", "graph".

import init, { createEstimator as createWasm } from "./wgpose_web.js";

export class WgposeError extends Error {
  constructor(code, message, cause) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "WgposeError";
    this.code = code;
  }
}

const CODES = {
  WeightsError: "weights",
  WeightsMismatch: "weights",
  InputError: "input",
  TooLargeError: "too-large",
  NoAdapterError: "no-adapter",
  GpuError: "gpu",
  DeviceLostError: "device-lost",
  GraphError: "graph",
  BusyError: "busy",
  DisposedError: "disposed",
};

function wrap(e) {
  if (e instanceof WgposeError) return e;
  const code = (e && CODES[e.name]) || "internal";
  const message = e && e.message ? e.message : String(e);
  return new WgposeError(code, message, e);
}

let ready = null;
/** Which wasm module runs: "relaxed-simd", "simd128", or the `wasmUrl` given. */
let wasmModule = "";

/**
 * Whether this browser validates WebAssembly relaxed SIMD (Chrome 114+): a one-function module
 * holding an `i8x16.relaxed_swizzle`. The CPU fallback then loads the build whose matrix-product
 * tile uses `f32x4.relaxed_madd` (one FMA per multiply-add where the CPU has FMA).
 */
export function relaxedSimdSupported() {
  const probe = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 15, 1, 13, 0,
                                65, 1, 253, 15, 65, 2, 253, 15, 253, 128, 2, 11]);
  try {
    return WebAssembly.validate(probe);
  } catch {
    return false;
  }
}

/**
 * Loads and instantiates the wasm module once. `wasmUrl` defaults to the relaxed-SIMD build next
 * to this file where the browser supports it, else the SIMD128 build.
 */
export function load(wasmUrl) {
  if (!ready) {
    const relaxed = !wasmUrl && relaxedSimdSupported();
    const url = wasmUrl || new URL(relaxed ? "./wgpose_web_relaxed_bg.wasm" : "./wgpose_web_bg.wasm", import.meta.url);
    wasmModule = wasmUrl ? String(wasmUrl) : relaxed ? "relaxed-simd" : "simd128";
    ready = init({ module_or_path: url }).catch((e) => {
      ready = null;
      throw new WgposeError("internal", `could not load the wasm module: ${e.message || e}`, e);
    });
  }
  return ready;
}

const CACHE_NAME = "wgpose-weights-v1";

/**
 * The weights file's bytes: from the Cache API when this URL was fetched before (so a page works
 * offline after the first visit), else from the network, cached only when it parses as a weights
 * file for the model (the caller validates and calls `forget` otherwise).
 */
async function fetchWeights(url, useCache) {
  const cache = useCache && typeof caches !== "undefined" ? await caches.open(CACHE_NAME).catch(() => null) : null;
  let response = cache ? await cache.match(url).catch(() => undefined) : undefined;
  const fromCache = !!response;
  if (!response) {
    try {
      response = await fetch(url);
    } catch (e) {
      throw new WgposeError("weights", `fetching ${url} failed: ${e.message || e}`, e);
    }
    if (!response.ok) {
      throw new WgposeError("weights", `fetching ${url}: HTTP ${response.status} ${response.statusText}`.trim());
    }
  }
  const copy = !fromCache && cache ? response.clone() : null;
  const bytes = new Uint8Array(await response.arrayBuffer());
  return {
    bytes,
    fromCache,
    keep: async () => { if (copy) await cache.put(url, copy).catch(() => {}); },
    forget: async () => { if (fromCache) await cache.delete(url).catch(() => {}); },
  };
}

/** Drops every cached weights file. */
export async function clearWeightsCache() {
  if (typeof caches !== "undefined") await caches.delete(CACHE_NAME);
}

function isVideo(s) { return typeof HTMLVideoElement !== "undefined" && s instanceof HTMLVideoElement; }
function isImage(s) { return typeof HTMLImageElement !== "undefined" && s instanceof HTMLImageElement; }

/** Width and height of any accepted source, in its pixels. */
function sourceSize(source) {
  if (isVideo(source)) return [source.videoWidth, source.videoHeight];
  if (isImage(source)) return [source.naturalWidth, source.naturalHeight];
  if (source && typeof source.width === "number") return [source.width, source.height];
  throw new WgposeError("input", "the source must be an HTMLVideoElement, HTMLImageElement, HTMLCanvasElement, " +
    "OffscreenCanvas, ImageBitmap or ImageData");
}

async function checkedSource(source) {
  if (isImage(source) && !source.complete) {
    await source.decode().catch((e) => { throw new WgposeError("decode", `the image did not decode: ${e.message || e}`, e); });
  }
  if (isImage(source) && source.complete && source.naturalWidth === 0) {
    throw new WgposeError("decode", `the image ${source.currentSrc || source.src || ""} failed to decode`.replace("  ", " "));
  }
  const [w, h] = sourceSize(source);
  if (!(w > 0 && h > 0)) {
    throw new WgposeError("input", `the source is ${w}x${h} pixels` +
      (isVideo(source) ? " (a video before its first frame: wait for 'loadeddata')" : ""));
  }
  return [w, h];
}

/** The source as an ImageBitmap with the decoded pixel values untouched. */
async function toBitmap(source) {
  if (typeof ImageBitmap !== "undefined" && source instanceof ImageBitmap) return { bitmap: source, owned: false };
  try {
    const bitmap = await createImageBitmap(source, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    return { bitmap, owned: true };
  } catch (e) {
    throw new WgposeError("decode", `the source could not be read: ${e.message || e}`, e);
  }
}

let scratch = null;
/** The source's RGBA pixels (the browser's own drawImage/getImageData, no JS pixel loop). */
async function toRgba(source, w, h) {
  if (typeof ImageData !== "undefined" && source instanceof ImageData) return source.data;
  const { bitmap, owned } = await toBitmap(source);
  try {
    if (!scratch || scratch.width !== w || scratch.height !== h) {
      scratch = new OffscreenCanvas(w, h);
    }
    const g = scratch.getContext("2d", { willReadFrequently: true });
    g.clearRect(0, 0, w, h);
    g.drawImage(bitmap, 0, 0);
    return g.getImageData(0, 0, w, h).data;
  } finally {
    if (owned) bitmap.close();
  }
}

/** Mirrors the x coordinates of a pose (x -> width - x) in place. */
function flipPose(p, w) {
  const flipBox = (b) => [w - b[0] - b[2], b[1], b[2], b[3]];
  for (const k of p.keypoints) k.x = w - k.x;
  p.box = flipBox(p.box);
  if (p.detection) p.detection.box = flipBox(p.detection.box);
}

class Estimator {
  constructor(inner, model, weightsFromCache, detectorNote) {
    this._inner = inner;
    /** "webgpu" or "cpu". */
    this.backend = inner.backend;
    /** The WebGPU adapter's name ("" on the CPU). */
    this.adapter = inner.adapter;
    /** True when the WebGPU kernels share weight loads across subgroups (the adapter's `subgroups`). */
    this.subgroups = inner.subgroups;
    /** Why the CPU runs although WebGPU was allowed ("" otherwise). */
    this.fallbackReason = inner.fallbackReason;
    /** { name, input: [c, h, w], joints: [names], limbs: [[a, b]] } */
    this.model = model;
    this.weightsFromCache = weightsFromCache;
    /** The person detector's config name, or "" (no detector: no box means the whole source). */
    this.detector = inner.detector;
    /** Why there is no detector when the shipped one was asked for ("" otherwise). */
    this.detectorNote = detectorNote;
    /** The wasm module that runs: "relaxed-simd" or "simd128" (or the `wasmUrl` given). */
    this.wasm = wasmModule;
    /** Milliseconds of the creation's stages, [[name, ms], ...] (createEstimator fills in the first). */
    this.creation = JSON.parse(inner.creation);
    this._disposed = false;
  }

  /** Runs `onBitmap(bitmap)` on WebGPU or `onRgba(pixels, w, h)` on the CPU; the JSON result, parsed. */
  async _run(source, onBitmap, onRgba) {
    if (this._disposed) throw new WgposeError("disposed", "this estimator was disposed");
    const [w, h] = await checkedSource(source);
    let json;
    try {
      if (this.backend === "webgpu") {
        const { bitmap, owned } = await toBitmap(source);
        try {
          json = await onBitmap(bitmap);
        } finally {
          if (owned) bitmap.close();
        }
      } else {
        const rgba = await toRgba(source, w, h);
        json = onRgba(new Uint8Array(rgba.buffer, rgba.byteOffset, rgba.byteLength), w, h);
      }
    } catch (e) {
      throw wrap(e);
    }
    return { result: JSON.parse(json), width: w };
  }

  /**
   * Poses in `source` (video, image, canvas, ImageBitmap, ImageData). `box` ([x, y, w, h] in
   * source pixels, or an array of them) says where the people are; without one the person
   * detector finds everyone (highest detection score first, each pose with `detection:
   * { score, box }`; [] when nobody), or, without a detector, the whole source is one box.
   * `flipHorizontal` mirrors the returned x coordinates (x -> width - x), for a mirrored display.
   */
  async estimatePoses(source, { box, boxes, flipHorizontal = false } = {}) {
    const list = boxes || (box ? (Array.isArray(box[0]) ? box : [box]) : []);
    const flat = new Float32Array(list.flat());
    const { result: poses, width } = await this._run(source,
      (bitmap) => this._inner.estimateBitmap(bitmap, flat),
      (rgba, w, h) => this._inner.estimateRgba(rgba, w, h, flat));
    if (flipHorizontal) for (const p of poses) flipPose(p, width);
    return poses;
  }

  /**
   * Follows one person through the frames of a video: the detector runs when nobody is tracked
   * (the first frame, a lost track), otherwise the crop follows the previous frame's keypoints.
   * Resolves to null when nobody is found, else `{ step, pose }`: `step` is "found" (a new
   * track: restart any smoothing over time) or "followed". A source of another size starts a
   * new track. Without a detector a new track is the whole source.
   */
  async track(source, { flipHorizontal = false } = {}) {
    const { result: t, width } = await this._run(source,
      (bitmap) => this._inner.trackBitmap(bitmap),
      (rgba, w, h) => this._inner.trackRgba(rgba, w, h));
    if (t && flipHorizontal) flipPose(t.pose, width);
    return t;
  }

  /** Forgets the tracked person: the next track() runs the detector. */
  resetTrack() {
    if (this._disposed) return;
    try {
      this._inner.resetTrack();
    } catch (e) {
      throw wrap(e);
    }
  }

  /** { stages: [[name, ms]], timestamps: bool, layers: [{ name, kind, ms, flops }] | null } */
  async profile() {
    if (this._disposed) throw new WgposeError("disposed", "this estimator was disposed");
    try {
      return JSON.parse(await this._inner.profile());
    } catch (e) {
      throw wrap(e);
    }
  }

  /** Frees the model (and the WebGPU device). */
  dispose() {
    if (this._disposed) return;
    try {
      this._inner.dispose();
      this._inner.free();
    } catch (e) {
      throw wrap(e);
    }
    this._disposed = true;
  }
}

/** The shipped person detector, next to the pose models. */
export const DEFAULT_DETECTOR_URL = "models/person-detector-r18w32.safetensors";

/**
 * Fetches (or takes from the cache) the weights at `weightsUrl`, checks them as strictly as the
 * desktop does, and builds the estimator. `model` (optional) must match the weights' model card.
 * `backend`: "auto" (default: WebGPU when a hardware adapter opens; on a software adapter such as
 * SwiftShader, or without WebGPU, the CPU, with the reason in `est.fallbackReason`), "webgpu" or "cpu".
 * `detector`: true (default) fetches the person detector at `detectorUrl` (default: the shipped
 * one, DEFAULT_DETECTOR_URL) and attaches it on the same backend; false: no detector. When the
 * default URL cannot be fetched the estimator works without one and says why in
 * `est.detectorNote`; a `detectorUrl` given explicitly must work (else a "weights" error).
 * `worker`: true runs the estimator in a Web Worker (see the top of this file).
 * (`defaultDetectorUrl` is internal: the page's default detector URL, passed to the worker.)
 */
export async function createEstimator({ model = "", weightsUrl, backend = "auto", cache = true, wasmUrl,
                                        detector = true, detectorUrl, worker = false,
                                        defaultDetectorUrl = DEFAULT_DETECTOR_URL } = {}) {
  if (worker) {
    return WorkerEstimator.create({ model, weightsUrl, backend, cache, wasmUrl, detector, detectorUrl });
  }
  if (!weightsUrl) {
    if (!model) throw new WgposeError("input", "createEstimator needs weightsUrl (or a model name: models/NAME.safetensors)");
    weightsUrl = `models/${model}.safetensors`;
  }
  const base = typeof document !== "undefined" ? document.baseURI : globalThis.location.href;
  const url = new URL(weightsUrl, base).href;
  let detectorNote = "";
  // The wasm module, the weights and the detector's weights load at the same time.
  const fetchDetector = async () => {
    if (!detector) return null;
    const dUrl = new URL(detectorUrl || defaultDetectorUrl, base).href;
    try {
      const d = await fetchWeights(dUrl, cache);
      d.label = detectorUrl || DEFAULT_DETECTOR_URL;
      return d;
    } catch (e) {
      if (detectorUrl) throw e;
      detectorNote = `no person detector (${e.message}): no box means the whole source`;
      return null;
    }
  };
  const t0 = performance.now();
  const [, w, d] = await Promise.all([load(wasmUrl), fetchWeights(url, cache), fetchDetector()]);
  const loadMs = performance.now() - t0;
  let inner;
  try {
    inner = await createWasm(model, w.bytes, weightsUrl, backend, d ? d.bytes : new Uint8Array(0), d ? d.label : "");
  } catch (e) {
    await w.forget();
    if (d) await d.forget();
    throw wrap(e);
  }
  await w.keep();
  if (d) await d.keep();
  const est = new Estimator(inner, JSON.parse(inner.model), w.fromCache, detectorNote);
  est.creation.unshift(["load the wasm module and the weights", loadMs]);
  if (est.backend === "webgpu") est.adapter = await describeAdapter(est.adapter);
  return est;
}

/**
 * The estimator of `createEstimator({ worker: true })`: the same API, the work in a Web Worker.
 * Calls are answered in the order they are made.
 */
class WorkerEstimator {
  static async create(options) {
    if (typeof Worker === "undefined") throw new WgposeError("input", "this context has no Web Workers");
    // URLs resolve against the page, not against the worker's script.
    const base = typeof document !== "undefined" ? document.baseURI : globalThis.location.href;
    const abs = (u) => (u ? new URL(u, base).href : u);
    const opts = { ...options, weightsUrl: abs(options.weightsUrl || (options.model ? `models/${options.model}.safetensors` : "")),
                   detectorUrl: abs(options.detectorUrl), wasmUrl: abs(options.wasmUrl) };
    if (options.detector && !options.detectorUrl) opts.defaultDetectorUrl = abs(DEFAULT_DETECTOR_URL);
    let worker;
    try {
      worker = new Worker(new URL("./wgpose-worker.js", import.meta.url), { type: "module" });
    } catch (e) {
      throw new WgposeError("internal", `could not start the worker: ${e.message || e}`, e);
    }
    const est = new WorkerEstimator(worker);
    try {
      Object.assign(est, await est._call("create", opts));
    } catch (e) {
      est._terminate(e);
      throw e;
    }
    return est;
  }

  constructor(worker) {
    this._worker = worker;
    this._pending = new Map();
    this._next = 0;
    this._disposed = false;
    /** True: the estimator runs in a Web Worker. */
    this.worker = true;
    worker.onmessage = (event) => {
      const { id, ok, error } = event.data;
      const p = this._pending.get(id);
      if (!p) return;
      this._pending.delete(id);
      if (error) p.reject(new WgposeError(error.code, error.message));
      else p.resolve(ok);
    };
    // The worker script failed to load or threw outside a call: every pending call fails.
    worker.onerror = (event) => {
      event.preventDefault();
      this._terminate(new WgposeError("internal", `the worker failed: ${event.message || "could not load wgpose-worker.js"}`));
    };
  }

  _call(op, args, transfer = []) {
    if (this._disposed) return Promise.reject(new WgposeError("disposed", "this estimator was disposed"));
    const id = this._next++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      this._worker.postMessage({ id, op, args }, transfer);
    });
  }

  _terminate(error) {
    this._disposed = true;
    this._worker.terminate();
    for (const p of this._pending.values()) p.reject(error);
    this._pending.clear();
  }

  /** A copy of the source's pixels as an ImageBitmap to transfer (the caller's source stays usable). */
  async _frame(source) {
    if (this._disposed) throw new WgposeError("disposed", "this estimator was disposed");
    await checkedSource(source);
    const { bitmap, owned } = await toBitmap(source);
    if (owned) return bitmap;
    try {
      return await createImageBitmap(bitmap, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    } catch (e) {
      throw new WgposeError("decode", `the source could not be read: ${e.message || e}`, e);
    }
  }

  /** As Estimator.estimatePoses, in the worker. */
  async estimatePoses(source, options = {}) {
    const bitmap = await this._frame(source);
    return this._call("estimatePoses", [bitmap, options], [bitmap]);
  }

  /** As Estimator.track, in the worker. */
  async track(source, options = {}) {
    const bitmap = await this._frame(source);
    return this._call("track", [bitmap, options], [bitmap]);
  }

  /** As Estimator.resetTrack: the next track() (sent after this call) runs the detector. */
  resetTrack() {
    if (this._disposed) return;
    this._call("resetTrack", []).catch(() => {});
  }

  /** As Estimator.profile, in the worker. */
  profile() {
    return this._call("profile", []);
  }

  /** Frees the model in the worker, then ends the worker. */
  dispose() {
    if (this._disposed) return;
    const done = this._call("dispose", []);
    this._disposed = true;
    done.catch(() => {}).finally(() => this._worker.terminate());
  }
}

/** wgpu reads only GPUAdapterInfo.description, which browsers often leave empty. */
async function describeAdapter(name) {
  try {
    const adapter = await navigator.gpu.requestAdapter();
    const i = adapter && adapter.info;
    const parts = i ? [i.vendor, i.architecture, i.device, i.description].filter((p) => p) : [];
    const fromInfo = [...new Set(parts)].join(" ");
    return [name, fromInfo].filter((p) => p).join(": ") || "unnamed WebGPU adapter";
  } catch {
    return name || "unnamed WebGPU adapter";
  }
}

/** Whether this browser exposes WebGPU at all (an adapter may still be refused). */
export function hasWebGPU() {
  return typeof navigator !== "undefined" && !!navigator.gpu;
}
