//! One frame of the pipeline: capture, upload to the shared texture and buffer, the tracker
//! (person detector or follow crop) and the pose network on that buffer, smoothing, timings.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eframe::egui;
use wgpose::pipeline::FrameLayout;

use super::DemoApp;
use crate::source::SourceSpec;

/// The frame on the GPU: a texture egui samples for display and a storage buffer the estimator
/// reads, filled from the texture by a GPU copy.
pub(super) struct GpuFrame {
    pub(super) texture: wgpu::Texture,
    pub(super) buffer: wgpu::Buffer,
    pub(super) tex_id: egui::TextureId,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) bytes_per_row: u32,
}

/// Exponential moving averages of stage times, milliseconds.
#[derive(Default)]
pub(super) struct Timings {
    pub(super) capture: f64,
    pub(super) upload: f64,
    pub(super) estimate: f64,
    pub(super) post: f64,
    pub(super) draw: f64,
    pub(super) frame: f64,
}

pub(super) fn ema(slot: &mut f64, ms: f64) {
    *slot = if *slot == 0.0 { ms } else { *slot * 0.9 + ms * 0.1 };
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl DemoApp {
    /// Makes sure the GPU frame has the right size (a new texture and buffer otherwise).
    pub(super) fn ensure_frame(&mut self, width: u32, height: u32) {
        if self.frame.as_ref().is_some_and(|f| f.width == width && f.height == height) {
            return;
        }
        let device = &self.render_state.device;
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("demo frame"),
            size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            // Unorm, not UnormSrgb: egui-wgpu's shader takes texture values as sRGB-encoded already
            // (an Srgb view would be decoded to linear and shown too dark).
            format: wgpu::TextureFormat::Rgba8Unorm,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let bytes_per_row =
            (width * 4).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("demo frame for the estimator"),
            size: bytes_per_row as u64 * height as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        let mut renderer = self.render_state.renderer.write();
        let tex_id = match &self.frame {
            Some(old) => {
                renderer.update_egui_texture_from_wgpu_texture(device, &view, wgpu::FilterMode::Linear, old.tex_id);
                old.tex_id
            }
            None => renderer.register_native_texture(device, &view, wgpu::FilterMode::Linear),
        };
        self.frame = Some(GpuFrame { texture, buffer, tex_id, width, height, bytes_per_row });
    }

    /// Capture, upload, estimate, smooth, follow: one frame of the pipeline.
    pub(super) fn step(&mut self, now: Instant) {
        let Some(source) = &mut self.source else { return };
        if self.estimator.is_none() {
            return;
        }
        if let Some(h) = &self.headless {
            if self.frames_processed >= h.frames {
                return;
            }
        } else if matches!(self.source_spec, Some(SourceSpec::Folder(_))) && self.playback_fps > 0.0 {
            if let Some(t) = self.last_advance {
                if now.duration_since(t).as_secs_f32() < 1.0 / self.playback_fps {
                    return;
                }
            }
        }
        let t0 = Instant::now();
        let frame = match source.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                // A camera unplugged, an unreadable file: say so, keep the window alive.
                self.source_error = Some(e);
                self.source = None;
                return;
            }
        };
        let t1 = Instant::now();
        let (w, h) = frame.rgba.dimensions();
        if self.frame.as_ref().is_some_and(|f| (f.width, f.height) != (w, h)) {
            // A folder of differently sized images: the previous box means nothing here.
            self.tracking.reset();
        }
        self.ensure_frame(w, h);
        let gf = self.frame.as_ref().expect("frame allocated");
        let queue = &self.render_state.queue;
        queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &gf.texture,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            frame.rgba.as_raw(),
            wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(w * 4), rows_per_image: Some(h) },
            wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
        );
        let on_gpu = self.estimator.as_ref().is_some_and(|e| e.on_gpu());
        if on_gpu {
            let mut enc = self
                .render_state
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("frame to buffer") });
            enc.copy_texture_to_buffer(
                wgpu::TexelCopyTextureInfo {
                    texture: &gf.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d::ZERO,
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::TexelCopyBufferInfo {
                    buffer: &gf.buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: 0,
                        bytes_per_row: Some(gf.bytes_per_row),
                        rows_per_image: Some(h),
                    },
                },
                wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
            );
            queue.submit([enc.finish()]);
        }
        let t2 = Instant::now();

        let layout = FrameLayout { width: w, height: h, row_stride: gf.bytes_per_row / 4, offset: 0, bgra: false };
        let est = self.estimator.as_mut().expect("estimator");
        // On the GPU the estimator reads the buffer the texture was copied into; on the CPU
        // executor (Device::Auto on a software adapter) the frame as decoded.
        let result = if on_gpu {
            self.tracking.track_gpu_frame(est, &gf.buffer, &layout)
        } else {
            self.tracking.track(est, &frame.rgba)
        };
        let t3 = Instant::now();
        match result {
            Ok(tracked) => self.tracking.show(tracked, now.duration_since(self.start).as_secs_f64()),
            Err(e) => {
                self.pipeline_error = Some(format!("estimation failed: {e}"));
                if self.headless.is_some() {
                    *self.exit_error.lock().unwrap() = Some(format!("estimation failed: {e}"));
                }
                self.source = None;
                return;
            }
        }
        self.pipeline_error = None;
        self.finish_frame(frame.label, frame.path, now, [t0, t1, t2, t3, Instant::now()]);
    }

    /// Timings and counters of a processed frame (`t`: start, captured, uploaded, estimated,
    /// post-processed).
    pub(super) fn finish_frame(&mut self, label: String, path: Option<PathBuf>, now: Instant, t: [Instant; 5]) {
        ema(&mut self.timings.capture, ms(t[1] - t[0]));
        ema(&mut self.timings.upload, ms(t[2] - t[1]));
        ema(&mut self.timings.estimate, ms(t[3] - t[2]));
        ema(&mut self.timings.post, ms(t[4] - t[3]));
        ema(&mut self.timings.frame, ms(t[4] - t[0]));
        self.frame_label = label;
        self.frame_path = path;
        self.frames_processed += 1;
        self.fps_count += 1;
        self.last_advance = Some(now);
        self.report_memory();
    }
}
