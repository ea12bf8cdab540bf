//! The WebGPU engine: an `ImageBitmap` goes to a texture by `copyExternalImageToTexture`, the
//! texture to a storage buffer (rows 256-byte aligned), and the library's preprocessing kernel
//! crops and normalises it into the network's input in the same submission order. The person
//! detector, when attached, reads the same buffer (its letterbox cut by the same kernel).

use wasm_bindgen::JsValue;
use wgpose::estimator::{Boxes, Estimator, EstimatorOptions};
use wgpose::gpu::{GpuContext, GpuModel, NodeTime};
use wgpose::models::{config_for_weights, ModelConfig};
use wgpose::pipeline::preprocess_gpu::FrameLayout;
use wgpose::{Tracked, Tracker};

use crate::errors::{js_error, typed};
use crate::poses::Found;
use crate::{detector_from_bytes, precise_now_ms, Stages};

/// The frame's texture and buffer, kept while the source size does not change.
struct FrameTarget {
    width: u32,
    height: u32,
    texture: wgpu::Texture,
    buffer: wgpu::Buffer,
    bytes_per_row: u32,
}

pub struct GpuEngine {
    ctx: GpuContext,
    est: Estimator,
    frame: Option<FrameTarget>,
}

// wgpu 30's WebGPU backend does not map the standard `subgroups` feature (gfx-rs/wgpu#10146),
// so it can neither see nor request it. While our device is requested, this wrapper around
// `GPUAdapter.prototype.requestDevice` adds the feature when the adapter offers it, and removes
// itself on its first call. Should other code on the page request a device during our
// `requestAdapter` await, that device gets the (optional, harmless) feature instead and ours
// reports none, so our kernels stay the plain ones: never a kernel the device cannot run.
#[wasm_bindgen::prelude::wasm_bindgen(inline_js = r#"
let original = null;
let added = false;
export function wrap_request_device() {
  added = false;
  if (typeof GPUAdapter === "undefined" || original) return;
  original = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = function (desc = {}) {
    GPUAdapter.prototype.requestDevice = original;
    original = null;
    if (this.features.has("subgroups")) {
      added = true;
      desc = { ...desc, requiredFeatures: [...(desc.requiredFeatures || []), "subgroups"] };
    }
    return GPUAdapter.prototype.requestDevice.call(this, desc);
  };
}
export function unwrap_request_device() {
  if (original) {
    GPUAdapter.prototype.requestDevice = original;
    original = null;
  }
  return added;
}
"#)]
extern "C" {
    fn wrap_request_device();
    fn unwrap_request_device() -> bool;
}

/// Opens the browser's WebGPU adapter and device, with the `subgroups` feature when the adapter
/// offers it. On a software adapter (SwiftShader) with subgroups of at least 4 invocations the
/// convolutions then share weight loads across a subgroup (`GpuContext::subgroup_kernels`; as
/// natively, GPUs keep the plain kernels, which were not measured against them).
pub async fn open_device() -> Result<GpuContext, JsValue> {
    wrap_request_device();
    let ctx = GpuContext::new_async().await;
    let subgroups = unwrap_request_device();
    let mut ctx = ctx.map_err(js_error)?;
    ctx.subgroup_kernels = subgroups && ctx.adapter_info.subgroup_min_size >= 4 && ctx.is_software();
    Ok(ctx)
}

/// The adapter's description; browsers often leave it empty (www/wgpose.js then asks
/// `GPUAdapter.info` for vendor and architecture).
pub fn adapter_name(ctx: &GpuContext) -> String {
    let info = &ctx.adapter_info;
    match (info.name.is_empty(), info.device_type == wgpu::DeviceType::Cpu) {
        (false, _) => info.name.clone(),
        (true, true) => "fallback adapter".to_string(),
        (true, false) => String::new(),
    }
}

impl GpuEngine {
    /// Builds the estimator on the WebGPU device `ctx` (from [`open_device`]), with the person
    /// detector of `detector` (weights bytes and label) on the same device when given.
    pub async fn open(
        ctx: GpuContext,
        cfg: &ModelConfig,
        weights: &[u8],
        label: &str,
        opts: EstimatorOptions,
        detector: Option<(&[u8], &str)>,
    ) -> Result<GpuEngine, JsValue> {
        // Ask for every pipeline both networks need before the weights are checked and packed:
        // the browser's GPU process compiles them meanwhile (the slow part of a first inference
        // on a software adapter). Only shapes matter, so seeded initialisations serve.
        let det_cfg = detector.map(|(bytes, det_label)| config_for_weights(bytes, det_label)).transpose();
        let det_cfg = det_cfg.map_err(js_error)?;
        for c in std::iter::once(cfg).chain(det_cfg.as_ref()) {
            let graph = c.build(0).map_err(js_error)?;
            GpuModel::precompile(&ctx, &graph).map_err(js_error)?;
        }
        let est = Estimator::from_weights_bytes(cfg, weights, label, Some(&ctx), opts).map_err(js_error);
        let est = est.and_then(|mut est| {
            if let Some((bytes, det_label)) = detector {
                let det = detector_from_bytes(bytes, det_label, est.gpu_context())?;
                est.set_detector(Some(det)).map_err(js_error)?;
            }
            Ok(est)
        });
        match est {
            Ok(est) => Ok(GpuEngine { ctx, est, frame: None }),
            Err(e) => {
                ctx.device.destroy();
                Err(e)
            }
        }
    }

    /// Whether the kernels share weight loads across subgroups.
    pub fn subgroup_kernels(&self) -> bool {
        self.ctx.subgroup_kernels
    }

    /// The attached person detector's config name ("" without one).
    pub fn detector_name(&self) -> String {
        self.est.detector().map(|d| d.config.name.to_string()).unwrap_or_default()
    }

    /// The adapter's description; browsers often leave it empty (www/wgpose.js then asks
    /// `GPUAdapter.info` for vendor and architecture).
    pub fn adapter_name(&self) -> String {
        adapter_name(&self.ctx)
    }

    fn frame_target(&mut self, width: u32, height: u32) -> &FrameTarget {
        let reuse = matches!(&self.frame, Some(f) if f.width == width && f.height == height);
        if !reuse {
            let device = &self.ctx.device;
            let texture = device.create_texture(&wgpu::TextureDescriptor {
                label: Some("wgpose.web.frame"),
                size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::Rgba8Unorm,
                // copyExternalImageToTexture needs RENDER_ATTACHMENT as well as COPY_DST.
                usage: wgpu::TextureUsages::COPY_DST
                    | wgpu::TextureUsages::COPY_SRC
                    | wgpu::TextureUsages::RENDER_ATTACHMENT,
                view_formats: &[],
            });
            let bytes_per_row =
                (4 * width).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpose.web.frame_buffer"),
                size: bytes_per_row as u64 * height as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            if let Some(old) = self.frame.take() {
                old.texture.destroy();
                old.buffer.destroy();
            }
            self.frame = Some(FrameTarget { width, height, texture, buffer, bytes_per_row });
        }
        self.frame.as_ref().expect("set above")
    }

    /// Copies `bitmap` into the frame buffer (awaiting the GPU's validation of the copy); the
    /// buffer, its layout and the milliseconds it took.
    async fn upload(&mut self, bitmap: &web_sys::ImageBitmap) -> Result<(wgpu::Buffer, FrameLayout, f64), JsValue> {
        let (width, height) = (bitmap.width(), bitmap.height());
        let max = self.ctx.device.limits().max_texture_dimension_2d;
        if width > max || height > max {
            return Err(typed(
                "TooLargeError",
                &format!("a {width}x{height} frame exceeds this device's {max} pixels"),
            ));
        }
        let t0 = precise_now_ms();
        let ctx = self.ctx.clone();
        let target = self.frame_target(width, height);
        let (texture, buffer, bytes_per_row) = (target.texture.clone(), target.buffer.clone(), target.bytes_per_row);
        ctx.scoped_async("copying the frame to the GPU", || {
            let size = wgpu::Extent3d { width, height, depth_or_array_layers: 1 };
            ctx.queue.copy_external_image_to_texture(
                &wgpu::CopyExternalImageSourceInfo {
                    source: wgpu::ExternalImageSource::ImageBitmap(bitmap.clone()),
                    origin: wgpu::Origin2d::ZERO,
                    flip_y: false,
                },
                wgpu::CopyExternalImageDestInfo {
                    texture: &texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d::ZERO,
                    aspect: wgpu::TextureAspect::All,
                    color_space: wgpu::PredefinedColorSpace::Srgb,
                    premultiplied_alpha: false,
                },
                size,
            );
            let mut enc =
                ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpose.web.frame") });
            enc.copy_texture_to_buffer(
                texture.as_image_copy(),
                wgpu::TexelCopyBufferInfo {
                    buffer: &buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: 0,
                        bytes_per_row: Some(bytes_per_row),
                        rows_per_image: Some(height),
                    },
                },
                size,
            );
            ctx.queue.submit([enc.finish()]);
            Ok(())
        })
        .await
        .map_err(js_error)?;
        let layout = FrameLayout { width, height, row_stride: bytes_per_row / 4, offset: 0, bgra: false };
        Ok((buffer, layout, precise_now_ms() - t0))
    }

    /// Poses for `boxes` in `bitmap` (None: `Boxes::Auto`, the detected people with their
    /// detections, or the whole frame without a detector), and the stage times.
    pub async fn estimate(
        &mut self,
        bitmap: &web_sys::ImageBitmap,
        boxes: Option<&[[f32; 4]]>,
    ) -> Result<(Vec<Found>, Stages), JsValue> {
        let (buffer, layout, upload_ms) = self.upload(bitmap).await?;
        let t1 = precise_now_ms();
        let found: Vec<Found> = match boxes {
            None if self.est.detector().is_some() => {
                let people = self.est.people_gpu_frame_async(&buffer, &layout).await.map_err(js_error)?;
                people.into_iter().map(|p| (p.pose, Some(p.detection))).collect()
            }
            None => {
                let poses = self.est.estimate_gpu_frame_async(&buffer, &layout, Boxes::Auto).await.map_err(js_error)?;
                poses.into_iter().map(|p| (p, None)).collect()
            }
            Some(b) => {
                let poses = self.est.estimate_gpu_frame_async(&buffer, &layout, b).await.map_err(js_error)?;
                poses.into_iter().map(|p| (p, None)).collect()
            }
        };
        let name = if boxes.is_none() && self.est.detector().is_some() {
            "detector + pose (gpu, readbacks, decode)"
        } else {
            "gpu inference + readback + decode"
        };
        Ok((found, vec![("upload", upload_ms), (name, precise_now_ms() - t1)]))
    }

    /// One step of `tracker` on `bitmap` (the detector when nobody is tracked, the follow crop
    /// otherwise), and the stage times.
    pub async fn track(
        &mut self,
        tracker: &mut Tracker,
        bitmap: &web_sys::ImageBitmap,
    ) -> Result<(Option<Tracked>, Stages), JsValue> {
        let (buffer, layout, upload_ms) = self.upload(bitmap).await?;
        let t1 = precise_now_ms();
        let tracked = tracker.track_gpu_frame_async(&mut self.est, &buffer, &layout).await.map_err(js_error)?;
        Ok((tracked, vec![("upload", upload_ms), ("track (gpu, readbacks, decode)", precise_now_ms() - t1)]))
    }

    /// Per-layer GPU times of one inference of the network alone (None when the adapter offers
    /// no timestamp queries).
    pub async fn profile_layers(&mut self) -> Result<Option<Vec<NodeTime>>, JsValue> {
        self.est.profile_network_async(1).await.map_err(js_error)
    }

    pub fn destroy(self) {
        if let Some(f) = &self.frame {
            f.texture.destroy();
            f.buffer.destroy();
        }
        drop(self.est);
        self.ctx.device.destroy();
    }
}
