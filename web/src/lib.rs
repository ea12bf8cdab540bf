//! wgpose in the browser: the library's estimator behind wasm-bindgen, driven by `www/wgpose.js`
//! (which turns any image source into an `ImageBitmap` or RGBA pixels, fetches and caches the
//! weights, and wraps errors into `WgposeError`).
//!
//! On WebGPU the frame goes to the GPU by `copyExternalImageToTexture`, is copied into a storage
//! buffer and cropped/normalised by the library's preprocessing kernel; only the heatmaps come
//! back, through an awaited `mapAsync`. Without WebGPU the CPU executor compiled to wasm runs the
//! same optimised graph on the RGBA pixels (single thread: rayon falls back to the current one).

mod errors;
mod gpu;
mod poses;

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wgpose::estimator::{Estimator, EstimatorOptions};
use wgpose::models::{config, config_for_weights, ModelConfig};
use wgpose::pipeline::crop::{ImageRef, PixelFormat};

pub use errors::js_error;

/// Which executor an estimator runs on.
enum Engine {
    Gpu(gpu::GpuEngine),
    Cpu(Estimator),
}

struct State {
    engine: Option<Engine>,
    /// Milliseconds of the last call's stages, as `[name, ms]`.
    stages: Vec<(&'static str, f64)>,
}

/// One loaded model on one backend. JavaScript sees it through `www/wgpose.js`.
#[wasm_bindgen]
pub struct WasmEstimator {
    state: Rc<RefCell<State>>,
    config: ModelConfig,
    backend: String,
    adapter: String,
    fallback_reason: String,
}

/// Builds an estimator for the weights file `weights` (bytes of a safetensors file with its
/// model card; `label` names it in errors). `model`, when not empty, must be the card's config.
/// `backend` is `"webgpu"`, `"cpu"` or `"auto"` (WebGPU when an adapter opens, else the CPU).
#[wasm_bindgen(js_name = createEstimator)]
pub async fn create_estimator(
    model: String,
    weights: Vec<u8>,
    label: String,
    backend: String,
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
    let opts = EstimatorOptions::default();
    let (engine, adapter, fallback_reason) = match backend.as_str() {
        "cpu" => (None, String::new(), "the CPU backend was asked for".to_string()),
        "webgpu" | "auto" => match gpu::GpuEngine::open(&cfg, &weights, &label, opts).await {
            Ok(g) => {
                let name = g.adapter_name();
                (Some(Engine::Gpu(g)), name, String::new())
            }
            Err(e) if backend == "auto" => {
                (None, String::new(), format!("WebGPU unavailable: {}", errors::message(&e)))
            }
            Err(e) => return Err(e),
        },
        other => {
            return Err(errors::typed("InputError", &format!("backend `{other}`: expected webgpu, cpu or auto")));
        }
    };
    let (engine, backend) = match engine {
        Some(e) => (e, "webgpu"),
        None => {
            let est = Estimator::from_weights_bytes(&cfg, &weights, &label, None, opts).map_err(js_error)?;
            (Engine::Cpu(est), "cpu")
        }
    };
    Ok(WasmEstimator {
        state: Rc::new(RefCell::new(State { engine: Some(engine), stages: Vec::new() })),
        config: cfg,
        backend: backend.to_string(),
        adapter,
        fallback_reason,
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

fn parse_boxes(boxes: &[f32], width: u32, height: u32) -> Result<Vec<[f32; 4]>, JsValue> {
    if width == 0 || height == 0 {
        return Err(errors::typed(
            "InputError",
            &format!("the source is {width}x{height} pixels (a video before its first frame?)"),
        ));
    }
    if boxes.is_empty() {
        return Ok(vec![[0.0, 0.0, width as f32, height as f32]]);
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
    Ok(out)
}

#[wasm_bindgen]
impl WasmEstimator {
    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
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

    /// The config's name, input `[c, h, w]`, joint names and skeleton edges, as JSON.
    #[wasm_bindgen(getter)]
    pub fn model(&self) -> String {
        poses::model_json(&self.config)
    }

    /// Keypoints for `boxes` (flat `[x, y, w, h, ...]`, empty: the whole image) in RGBA pixels
    /// `width x height` (rows packed), on either backend; JSON `[{score, box, keypoints}]`.
    #[wasm_bindgen(js_name = estimateRgba)]
    pub fn estimate_rgba(&self, rgba: &[u8], width: u32, height: u32, boxes: &[f32]) -> Result<String, JsValue> {
        let boxes = parse_boxes(boxes, width, height)?;
        let (w, h) = (width as usize, height as usize);
        if rgba.len() != 4 * w * h {
            return Err(errors::typed(
                "InputError",
                &format!("{} bytes of RGBA for a {width}x{height} image ({} expected)", rgba.len(), 4 * w * h),
            ));
        }
        let mut state = self.state.try_borrow_mut().map_err(|_| busy())?;
        let t0 = precise_now_ms();
        let img = ImageRef { data: rgba, width: w, height: h, stride: 4 * w, format: PixelFormat::Rgba8 };
        let result = match state.engine.as_mut().ok_or_else(disposed)? {
            Engine::Cpu(est) => est.estimate_batch(&img, &boxes).map_err(js_error)?,
            Engine::Gpu(_) => {
                return Err(errors::typed("InputError", "a WebGPU estimator takes an ImageBitmap (estimateBitmap)"))
            }
        };
        state.stages = vec![("cpu inference", precise_now_ms() - t0)];
        Ok(poses::poses_json(&result))
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
            let engine = match st.engine.as_mut().ok_or_else(disposed)? {
                Engine::Gpu(g) => g,
                Engine::Cpu(_) => {
                    return Err(errors::typed("InputError", "a CPU estimator takes RGBA pixels (estimateRgba)"));
                }
            };
            let (result, stages) = engine.estimate(&bitmap, &boxes).await?;
            st.stages = stages;
            Ok(JsValue::from_str(&poses::poses_json(&result)))
        })
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
