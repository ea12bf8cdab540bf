//! wgpose in the browser: the library's estimator behind wasm-bindgen, driven by `www/wgpose.js`
//! (which turns any image source into an `ImageBitmap` or RGBA pixels, fetches and caches the
//! weights, and wraps errors into `WgposeError`).
//!
//! On WebGPU the frame goes to the GPU by `copyExternalImageToTexture`, is copied into a storage
//! buffer and cropped/normalised by the library's preprocessing kernel; only the heatmaps come
//! back, through an awaited `mapAsync`. Without WebGPU the CPU executor compiled to wasm runs the
//! same optimised graph on the RGBA pixels (single thread: rayon falls back to the current one).
//!
//! With person-detector weights the estimator finds the people itself (`Boxes::Auto`: an empty
//! box list) and follows one through a video (`wgpose::Tracker`, one per estimator).

mod errors;
mod gpu;
mod poses;

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wgpose::estimator::{Estimator, EstimatorOptions};
use wgpose::gpu::GpuContext;
use wgpose::models::{config, config_for_weights, Family, ModelConfig};
use wgpose::pipeline::crop::{ImageRef, PixelFormat};
use wgpose::pipeline::detect::DetectConfig;
use wgpose::{PersonDetector, Tracker, TrackerOptions};

use poses::Found;

pub use errors::js_error;

/// Which executor an estimator runs on.
enum Engine {
    Gpu(gpu::GpuEngine),
    Cpu(Estimator),
}

/// Milliseconds of a call's stages, as `[name, ms]`.
pub(crate) type Stages = Vec<(&'static str, f64)>;

struct State {
    engine: Option<Engine>,
    stages: Stages,
    /// The person `trackRgba` / `trackBitmap` follow.
    tracker: Tracker,
}

/// One loaded model on one backend. JavaScript sees it through `www/wgpose.js`.
#[wasm_bindgen]
pub struct WasmEstimator {
    state: Rc<RefCell<State>>,
    config: ModelConfig,
    backend: String,
    adapter: String,
    fallback_reason: String,
    detector: String,
    /// Milliseconds of the creation's stages (opening the device, building the estimator).
    creation: Stages,
    subgroups: bool,
}

/// The person detector of a weights file's bytes (`label` names it in errors), on `ctx` when
/// given; a pose model's weights are refused as the wrong kind of file.
pub(crate) fn detector_from_bytes(
    bytes: &[u8],
    label: &str,
    ctx: Option<&GpuContext>,
) -> Result<PersonDetector, JsValue> {
    let cfg = config_for_weights(bytes, label).map_err(js_error)?;
    if cfg.family != Family::PersonDetector {
        return Err(errors::typed(
            "WeightsMismatch",
            &format!("{label}: the model card says `{}`, which is not a person detector", cfg.name),
        ));
    }
    PersonDetector::from_weights_bytes(&cfg, bytes, label, ctx, DetectConfig::default()).map_err(js_error)
}

/// Builds an estimator for the weights file `weights` (bytes of a safetensors file with its
/// model card; `label` names it in errors). `model`, when not empty, must be the card's config.
/// `backend` is `"webgpu"`, `"cpu"` or `"auto"` (WebGPU when a hardware adapter opens, else the
/// CPU, with the reason in `fallbackReason`).
/// `detector_weights` (empty: none) are a person detector's weights file, attached on the same
/// backend so that an empty box list finds the people.
#[wasm_bindgen(js_name = createEstimator)]
pub async fn create_estimator(
    model: String,
    weights: Vec<u8>,
    label: String,
    backend: String,
    detector_weights: Vec<u8>,
    detector_label: String,
) -> Result<WasmEstimator, JsValue> {
    let cfg = config_for_weights(&weights, &label).map_err(js_error)?;
    if !model.is_empty() && model != cfg.name {
        // Tell the caller which config the name means, if it is one.
        let known = config(&model).map_err(js_error)?;
        return Err(errors::typed(
            "WeightsMismatch",
            &format!("{label}: the weights' model card says `{}`, the page asked for `{}`", cfg.name, known.name),
        ));
    }
    // Built from bytes, the estimator attaches no detector by itself; `detector` is attached below.
    let opts = EstimatorOptions::default();
    let detector = (!detector_weights.is_empty()).then_some((&detector_weights[..], &detector_label[..]));
    let mut creation: Stages = Vec::new();
    let t0 = precise_now_ms();
    let mut open_ms = 0.0;
    let (engine, adapter, fallback_reason) = match backend.as_str() {
        "cpu" => (None, String::new(), "the CPU backend was asked for".to_string()),
        "webgpu" | "auto" => {
            let auto = backend == "auto";
            let device = gpu::open_device().await;
            open_ms = precise_now_ms() - t0;
            creation.push(("open the WebGPU device", open_ms));
            match device {
                Err(e) if auto => (None, String::new(), format!("WebGPU unavailable: {}", errors::message(&e))),
                Err(e) => return Err(e),
                // As natively (`Device::Auto`): a software adapter (SwiftShader, WARP) is the CPU
                // emulating a GPU, where wasm on the CPU is far faster (README, browser benchmark).
                Ok(ctx) if auto && ctx.is_software() => {
                    let name = gpu::adapter_name(&ctx);
                    ctx.device.destroy();
                    let reason = format!(
                        "the WebGPU adapter ({name}) is a software one (the CPU emulating a GPU), where the CPU \
                         backend runs the shipped networks tens of times faster; backend \"webgpu\" uses it anyway"
                    );
                    (None, String::new(), reason)
                }
                Ok(ctx) => match gpu::GpuEngine::open(ctx, &cfg, &weights, &label, opts, detector).await {
                    Ok(g) => {
                        let name = g.adapter_name();
                        (Some(g), name, String::new())
                    }
                    // A bad detector file is the caller's error on any backend, not a reason to fall back.
                    Err(e) if auto && errors::name(&e) != "WeightsError" && errors::name(&e) != "WeightsMismatch" => {
                        (None, String::new(), format!("WebGPU unavailable: {}", errors::message(&e)))
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        other => {
            return Err(errors::typed("InputError", &format!("backend `{other}`: expected webgpu, cpu or auto")));
        }
    };
    let t1 = precise_now_ms();
    let subgroups = engine.as_ref().is_some_and(|g| g.subgroup_kernels());
    let (engine, backend, detector) = match engine {
        Some(g) => {
            let name = g.detector_name();
            (Engine::Gpu(g), "webgpu", name)
        }
        None => {
            let mut est = Estimator::from_weights_bytes(&cfg, &weights, &label, None, opts).map_err(js_error)?;
            if let Some((bytes, det_label)) = detector {
                let det = detector_from_bytes(bytes, det_label, None)?;
                est.set_detector(Some(det)).map_err(js_error)?;
            }
            let name = est.detector().map(|d| d.config.name.to_string()).unwrap_or_default();
            (Engine::Cpu(est), "cpu", name)
        }
    };
    creation.push(match engine {
        // GpuEngine::open ran in the match above: weights checked, graph lowered, pipelines and
        // buffers created (the GPU compiles the pipelines in the background).
        Engine::Gpu(_) => ("build the estimator (weights, pipelines, uploads)", t1 - t0 - open_ms),
        Engine::Cpu(_) => ("build the estimator (weights, graph)", precise_now_ms() - t1),
    });
    let tracker = Tracker::new(TrackerOptions::default()).map_err(js_error)?;
    Ok(WasmEstimator {
        creation,
        subgroups,
        state: Rc::new(RefCell::new(State { engine: Some(engine), stages: Vec::new(), tracker })),
        config: cfg,
        backend: backend.to_string(),
        adapter,
        fallback_reason,
        detector,
    })
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// `performance.now()` where there is one (window or worker), else the coarse clock.
fn precise_now_ms() -> f64 {
    let perf = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("performance")).ok();
    perf.and_then(|p| {
        let now = js_sys::Reflect::get(&p, &JsValue::from_str("now")).ok()?;
        let f: js_sys::Function = now.dyn_into().ok()?;
        f.call0(&p).ok()?.as_f64()
    })
    .unwrap_or_else(now_ms)
}

/// Borrows the state for one call; a second call while one is in flight is refused rather than
/// interleaved.
fn busy() -> JsValue {
    errors::typed(
        "BusyError",
        "another call on this estimator is still running; await it first (or create a second estimator)",
    )
}

fn disposed() -> JsValue {
    errors::typed("DisposedError", "this estimator was disposed")
}

fn check_size(width: u32, height: u32) -> Result<(), JsValue> {
    if width == 0 || height == 0 {
        return Err(errors::typed(
            "InputError",
            &format!("the source is {width}x{height} pixels (a video before its first frame?)"),
        ));
    }
    Ok(())
}

/// The boxes of a flat `[x, y, w, h, ...]` list; None for an empty list (`Boxes::Auto`).
fn parse_boxes(boxes: &[f32], width: u32, height: u32) -> Result<Option<Vec<[f32; 4]>>, JsValue> {
    check_size(width, height)?;
    if boxes.is_empty() {
        return Ok(None);
    }
    if boxes.len() % 4 != 0 {
        return Err(errors::typed("InputError", "boxes must be [x, y, w, h] quadruples"));
    }
    let out: Vec<[f32; 4]> = boxes.chunks_exact(4).map(|b| [b[0], b[1], b[2], b[3]]).collect();
    for b in &out {
        if !b.iter().all(|v| v.is_finite()) || b[2] <= 0.0 || b[3] <= 0.0 {
            return Err(errors::typed("InputError", &format!("box {b:?} must be finite with w, h > 0")));
        }
    }
    Ok(Some(out))
}

/// Tightly packed RGBA pixels of a `width x height` image, checked.
fn rgba_image(rgba: &[u8], width: u32, height: u32) -> Result<ImageRef<'_>, JsValue> {
    check_size(width, height)?;
    let (w, h) = (width as usize, height as usize);
    if rgba.len() != 4 * w * h {
        return Err(errors::typed(
            "InputError",
            &format!("{} bytes of RGBA for a {width}x{height} image ({} expected)", rgba.len(), 4 * w * h),
        ));
    }
    Ok(ImageRef { data: rgba, width: w, height: h, stride: 4 * w, format: PixelFormat::Rgba8 })
}

/// Poses for `boxes` (None: `Boxes::Auto`) on the CPU executor.
fn cpu_estimate(est: &mut Estimator, img: &ImageRef, boxes: Option<&[[f32; 4]]>) -> Result<Vec<Found>, JsValue> {
    let found = match boxes {
        None if est.detector().is_some() => {
            est.people(img).map_err(js_error)?.into_iter().map(|p| (p.pose, Some(p.detection))).collect()
        }
        None => {
            let whole = [0.0, 0.0, img.width as f32, img.height as f32];
            est.estimate_batch(img, &[whole]).map_err(js_error)?.into_iter().map(|p| (p, None)).collect()
        }
        Some(b) => est.estimate_batch(img, b).map_err(js_error)?.into_iter().map(|p| (p, None)).collect(),
    };
    Ok(found)
}

fn cpu_only() -> JsValue {
    errors::typed("InputError", "a CPU estimator takes RGBA pixels (estimateRgba, trackRgba)")
}

fn gpu_only() -> JsValue {
    errors::typed("InputError", "a WebGPU estimator takes an ImageBitmap (estimateBitmap, trackBitmap)")
}

#[wasm_bindgen]
impl WasmEstimator {
    /// Milliseconds of the creation's stages, `[[name, ms], ...]` as JSON.
    #[wasm_bindgen(getter)]
    pub fn creation(&self) -> String {
        poses::stages_json(&self.creation)
    }

    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// Whether the WebGPU kernels share weight loads across subgroups (the adapter offers the
    /// `subgroups` feature with at least 4 invocations per subgroup); false on the CPU.
    #[wasm_bindgen(getter)]
    pub fn subgroups(&self) -> bool {
        self.subgroups
    }

    /// The WebGPU adapter's description (empty on the CPU).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }

    /// Why the CPU runs when WebGPU was not asked to be skipped (empty otherwise).
    #[wasm_bindgen(getter, js_name = fallbackReason)]
    pub fn fallback_reason(&self) -> String {
        self.fallback_reason.clone()
    }

    /// The attached person detector's config name ("" without one: an empty box list is then
    /// the whole image).
    #[wasm_bindgen(getter)]
    pub fn detector(&self) -> String {
        self.detector.clone()
    }

    /// The config's name, input `[c, h, w]`, joint names and skeleton edges, as JSON.
    #[wasm_bindgen(getter)]
    pub fn model(&self) -> String {
        poses::model_json(&self.config)
    }

    /// Keypoints for `boxes` (flat `[x, y, w, h, ...]`) in RGBA pixels `width x height` (rows
    /// packed), CPU backend; an empty list finds the people with the detector (the whole image
    /// without one). JSON `[{score, box, keypoints, detection?}]` (see `poses::pose_value`).
    #[wasm_bindgen(js_name = estimateRgba)]
    pub fn estimate_rgba(&self, rgba: &[u8], width: u32, height: u32, boxes: &[f32]) -> Result<String, JsValue> {
        let boxes = parse_boxes(boxes, width, height)?;
        let img = rgba_image(rgba, width, height)?;
        let mut state = self.state.try_borrow_mut().map_err(|_| busy())?;
        let t0 = precise_now_ms();
        let found = match state.engine.as_mut().ok_or_else(disposed)? {
            Engine::Cpu(est) => cpu_estimate(est, &img, boxes.as_deref())?,
            Engine::Gpu(_) => return Err(gpu_only()),
        };
        state.stages = vec![("cpu inference", precise_now_ms() - t0)];
        Ok(poses::poses_json(&found))
    }

    /// Keypoints for `boxes` in an `ImageBitmap` on the WebGPU backend (see `estimateRgba`); a
    /// promise of the JSON.
    #[wasm_bindgen(js_name = estimateBitmap)]
    pub fn estimate_bitmap(&self, bitmap: web_sys::ImageBitmap, boxes: Vec<f32>) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let boxes = parse_boxes(&boxes, bitmap.width(), bitmap.height())?;
            let mut guard = state.try_borrow_mut().map_err(|_| busy())?;
            let st: &mut State = &mut guard;
            let Engine::Gpu(engine) = st.engine.as_mut().ok_or_else(disposed)? else { return Err(cpu_only()) };
            let (found, stages) = engine.estimate(&bitmap, boxes.as_deref()).await?;
            st.stages = stages;
            Ok(JsValue::from_str(&poses::poses_json(&found)))
        })
    }

    /// Follows one person in RGBA pixels (CPU backend): the detector when nobody is tracked
    /// (first frame, lost track), the previous frame's keypoints' box otherwise. JSON `null`
    /// (nobody) or `{step: "found" | "followed", pose}`.
    #[wasm_bindgen(js_name = trackRgba)]
    pub fn track_rgba(&self, rgba: &[u8], width: u32, height: u32) -> Result<String, JsValue> {
        let img = rgba_image(rgba, width, height)?;
        let mut guard = self.state.try_borrow_mut().map_err(|_| busy())?;
        let st: &mut State = &mut guard;
        let t0 = precise_now_ms();
        let tracked = match st.engine.as_mut().ok_or_else(disposed)? {
            Engine::Cpu(est) => st.tracker.track(est, img).map_err(js_error)?,
            Engine::Gpu(_) => return Err(gpu_only()),
        };
        st.stages = vec![("cpu track", precise_now_ms() - t0)];
        Ok(poses::tracked_json(tracked.as_ref()))
    }

    /// `trackRgba` for an `ImageBitmap` on the WebGPU backend; a promise of the JSON.
    #[wasm_bindgen(js_name = trackBitmap)]
    pub fn track_bitmap(&self, bitmap: web_sys::ImageBitmap) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            check_size(bitmap.width(), bitmap.height())?;
            let mut guard = state.try_borrow_mut().map_err(|_| busy())?;
            let st: &mut State = &mut guard;
            let Engine::Gpu(engine) = st.engine.as_mut().ok_or_else(disposed)? else { return Err(cpu_only()) };
            let (tracked, stages) = engine.track(&mut st.tracker, &bitmap).await?;
            st.stages = stages;
            Ok(JsValue::from_str(&poses::tracked_json(tracked.as_ref())))
        })
    }

    /// Forgets the tracked person: the next `track` call runs the detector.
    #[wasm_bindgen(js_name = resetTrack)]
    pub fn reset_track(&self) -> Result<(), JsValue> {
        let mut state = self.state.try_borrow_mut().map_err(|_| busy())?;
        state.tracker.reset();
        Ok(())
    }

    /// Per-stage times of the last call and, on WebGPU with timestamp queries, the GPU time of
    /// every layer of one inference of the network alone; a promise of the JSON
    /// `{stages: [[name, ms]], layers: [{name, kind, ms, flops}] | null, timestamps: bool}`.
    pub fn profile(&self) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = state.try_borrow_mut().map_err(|_| busy())?;
            let st: &mut State = &mut guard;
            let stages = st.stages.clone();
            let layers = match st.engine.as_mut().ok_or_else(disposed)? {
                Engine::Gpu(g) => g.profile_layers().await?,
                Engine::Cpu(_) => None,
            };
            Ok(JsValue::from_str(&poses::profile_json(&stages, layers.as_deref())))
        })
    }

    /// Frees the model and, on WebGPU, destroys the device. Later calls reject with
    /// `DisposedError`.
    pub fn dispose(&self) -> Result<(), JsValue> {
        let mut state = self.state.try_borrow_mut().map_err(|_| busy())?;
        if let Some(Engine::Gpu(g)) = state.engine.take() {
            g.destroy();
        }
        Ok(())
    }
}
