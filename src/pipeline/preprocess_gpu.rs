//! The crop warp of [`crop`](super::crop) on the GPU (`shaders/preprocess.wgsl`): an 8-bit RGBA
//! or BGRA frame in a storage buffer goes straight to the f32 NCHW input of a network, for a
//! batch of crops in one dispatch, so a camera frame is uploaded once and never comes back.
//!
//! The result matches [`warp_batch`](super::crop::warp_batch) to f32 rounding of the sample
//! positions and weights (measured below 1e-4 after normalisation; see tests/pipeline_ops.rs).

use wgpu::util::DeviceExt;

use super::crop::{CropTransform, Normalization};
use crate::error::{Error, Result};
use crate::gpu::setup::{self, storage, UNIFORM};
use crate::gpu::uniforms::PreprocessParams;
use crate::gpu::GpuContext;
use crate::tensor::Tensor;

/// The WGSL source (also listed in `gpu::kernels::SHADERS` for validation).
pub const PREPROCESS_WGSL: &str = include_str!("../../shaders/preprocess.wgsl");

/// Crops per dispatch: the size of the transform array in the shader's uniform block.
pub use crate::gpu::uniforms::MAX_CROPS_PER_DISPATCH;
const WG: u32 = 8;
const MAX_GRID: u32 = 65535;

/// Where the frame lives in the source buffer: one u32 per pixel (red in the low byte for RGBA,
/// blue for BGRA), row `y` starting at word `offset + y * row_stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Words (pixels) from one row to the next: `width` when packed, `bytes_per_row / 4` for a
    /// texture copied to a buffer.
    pub row_stride: u32,
    /// First word of the frame.
    pub offset: u32,
    /// Bytes are B, G, R, A rather than R, G, B, A.
    pub bgra: bool,
}

impl FrameLayout {
    /// A tightly packed RGBA frame at the start of the buffer.
    pub fn rgba(width: u32, height: u32) -> Self {
        FrameLayout { width, height, row_stride: width, offset: 0, bgra: false }
    }
}

/// Where the crops go in the destination buffer: crop `n`, channel `c`, pixel `(x, y)` at element
/// `offset + n * batch_stride + (c * out_h + y) * out_w + x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLayout {
    /// Crop width in pixels.
    pub out_w: u32,
    /// Crop height in pixels.
    pub out_h: u32,
    /// First f32 element.
    pub offset: u64,
    /// Elements from one crop to the next (`3 * out_w * out_h` when packed).
    pub batch_stride: u64,
}

impl OutputLayout {
    pub(crate) fn packed(out_w: u32, out_h: u32, offset: u64) -> Self {
        OutputLayout { out_w, out_h, offset, batch_stride: 3 * out_w as u64 * out_h as u64 }
    }
}

/// The compiled preprocessing kernel.
pub struct GpuPreprocess {
    device: wgpu::Device,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    norm: Normalization,
}

fn u32_of(v: u64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooLarge(format!("{what} ({v}) does not fit the kernel's 32-bit indices")))
}

impl GpuPreprocess {
    /// Compiles the kernel with ImageNet normalisation.
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        Self::with_normalization(ctx, Normalization::IMAGENET)
    }

    pub(crate) fn with_normalization(ctx: &GpuContext, norm: Normalization) -> Result<Self> {
        if norm.mean.iter().chain(&norm.std).any(|v| !v.is_finite()) || norm.std.contains(&0.0) {
            return Err(Error::Input(format!(
                "normalisation needs finite means and finite non-zero stds, got {norm:?}"
            )));
        }
        ctx.scoped("compiling the preprocessing kernel", || {
            let device = &ctx.device;
            let layouts = setup::layouts(device, "wgpose.preprocess", &[storage(true), storage(false), UNIFORM]);
            // No loops in this shader, so the default (checked) module is as fast as a trusted one.
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("preprocess.wgsl"),
                source: wgpu::ShaderSource::Wgsl(PREPROCESS_WGSL.into()),
            });
            let pipeline = setup::compute_pipeline(device, &layouts, &module, "preprocess", &[]);
            Ok(GpuPreprocess { device: device.clone(), pipeline, layout: layouts.group, norm })
        })
    }

    /// The normalisation the kernel applies.
    pub fn normalization(&self) -> Normalization {
        self.norm
    }

    /// Records the warp of `crops` from a packed RGBA frame (`src_w x src_h` u32 words at the
    /// start of `src`) into `dst` at f32 element `dst_offset_elements`, crops packed one after
    /// the other as `[crops.len(), 3, out_h, out_w]`. Both buffers need `STORAGE` usage.
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        src_w: u32,
        src_h: u32,
        crops: &[CropTransform],
        dst: &wgpu::Buffer,
        dst_offset_elements: u64,
        out_w: u32,
        out_h: u32,
    ) -> Result<()> {
        self.encode_layout(
            encoder,
            src,
            &FrameLayout::rgba(src_w, src_h),
            crops,
            dst,
            &OutputLayout::packed(out_w, out_h, dst_offset_elements),
        )
    }

    /// [`encode`](Self::encode) with explicit source and destination layouts (row pitch, BGRA,
    /// batch stride). Creates one small uniform buffer and bind group per 64 crops; records one
    /// compute pass. Errors (before recording anything) when a buffer is too small or lacks
    /// `STORAGE` usage, or a crop was built for another output size.
    pub fn encode_layout(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        frame: &FrameLayout,
        crops: &[CropTransform],
        dst: &wgpu::Buffer,
        out: &OutputLayout,
    ) -> Result<()> {
        if crops.is_empty() {
            return Ok(());
        }
        let (ow, oh) = (out.out_w, out.out_h);
        if ow == 0 || oh == 0 {
            return Err(Error::Input(format!("crop output size {ow}x{oh} is empty")));
        }
        if ow.div_ceil(WG) > MAX_GRID || oh.div_ceil(WG) > MAX_GRID {
            return Err(Error::TooLarge(format!("crop output size {ow}x{oh}")));
        }
        for c in crops {
            if c.out_size() != (ow as usize, oh as usize) {
                let (cw, ch) = c.out_size();
                return Err(Error::Input(format!("crop built for a {cw}x{ch} output, warped to {ow}x{oh}")));
            }
        }
        if frame.width == 0 || frame.height == 0 || frame.row_stride < frame.width {
            return Err(Error::Input(format!("frame layout {frame:?} is empty or its rows overlap")));
        }
        for (buf, what) in [(src, "source frame"), (dst, "destination")] {
            if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(Error::Input(format!("the {what} buffer needs STORAGE usage, has {:?}", buf.usage())));
            }
        }
        let src_words = frame.offset as u64 + frame.row_stride as u64 * (frame.height as u64 - 1) + frame.width as u64;
        u32_of(src_words, "source frame words")?;
        if src_words * 4 > src.size() {
            return Err(Error::Input(format!(
                "frame {frame:?} needs a {} byte buffer, got {}",
                src_words * 4,
                src.size()
            )));
        }
        let plane = ow as u64 * oh as u64;
        if out.batch_stride < 3 * plane {
            return Err(Error::Input(format!("batch stride {} is under 3 * {ow} * {oh}", out.batch_stride)));
        }
        let dst_elems = out.offset + (crops.len() as u64 - 1) * out.batch_stride + 3 * plane;
        u32_of(dst_elems, "destination elements")?;
        if dst_elems * 4 > dst.size() {
            return Err(Error::Input(format!(
                "{} crops of {ow}x{oh} at element {} need a {} byte destination, got {}",
                crops.len(),
                out.offset,
                dst_elems * 4,
                dst.size()
            )));
        }
        // Bind only the ranges used (the destination may be a large activation arena).
        let src_binding = wgpu::BufferBinding { buffer: src, offset: 0, size: wgpu::BufferSize::new(src_words * 4) };
        let dst_binding = wgpu::BufferBinding { buffer: dst, offset: 0, size: wgpu::BufferSize::new(dst_elems * 4) };

        let mut groups = Vec::new();
        for (k, chunk) in crops.chunks(MAX_CROPS_PER_DISPATCH).enumerate() {
            let dst_off = out.offset + (k * MAX_CROPS_PER_DISPATCH) as u64 * out.batch_stride;
            let [m0, m1, m2] = self.norm.mean;
            let [s0, s1, s2] = self.norm.std;
            let mut params = PreprocessParams {
                src_w: frame.width,
                src_h: frame.height,
                src_stride: frame.row_stride,
                src_off: frame.offset,
                out_w: ow,
                out_h: oh,
                n: chunk.len() as u32,
                dst_off: u32_of(dst_off, "destination offset")?,
                dst_bs: u32_of(out.batch_stride, "batch stride")?,
                bgra: frame.bgra as u32,
                pad0: 0,
                pad1: 0,
                mean: [m0, m1, m2, 0.0],
                stdev: [s0, s1, s2, 1.0],
                crops: [[0.0; 4]; 2 * MAX_CROPS_PER_DISPATCH],
            };
            for (i, crop) in chunk.iter().enumerate() {
                let m = crop.inverse_f32();
                params.crops[2 * i] = [m[0], m[1], m[2], 0.0];
                params.crops[2 * i + 1] = [m[3], m[4], m[5], 0.0];
            }
            let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("wgpose.preprocess.params"),
                contents: bytemuck::bytes_of(&params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
            let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("wgpose.preprocess"),
                layout: &self.layout,
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(src_binding.clone()) },
                    wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::Buffer(dst_binding.clone()) },
                    wgpu::BindGroupEntry { binding: 2, resource: uniform.as_entire_binding() },
                ],
            });
            groups.push((group, chunk.len() as u32));
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpose.preprocess"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        for (group, n) in &groups {
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(ow.div_ceil(WG), oh.div_ceil(WG), *n);
        }
        Ok(())
    }

    /// Uploads a packed RGBA frame (`w * h * 4` bytes), warps `crops` and reads back the
    /// `[crops.len(), 3, out_h, out_w]` tensor. For tests and one-off use; a live pipeline keeps
    /// the result on the GPU with [`encode`](Self::encode).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        ctx: &GpuContext,
        rgba: &[u8],
        w: u32,
        h: u32,
        crops: &[CropTransform],
        out_w: u32,
        out_h: u32,
    ) -> Result<Tensor> {
        let need = w as u64 * h as u64 * 4;
        if w == 0 || h == 0 || rgba.len() as u64 != need {
            return Err(Error::Input(format!("a {w}x{h} RGBA frame needs {need} bytes, got {}", rgba.len())));
        }
        let shape = vec![crops.len(), 3, out_h as usize, out_w as usize];
        let len = crate::tensor::checked_numel(&shape)?;
        if len == 0 {
            return Ok(Tensor { shape, data: Vec::new() });
        }
        ctx.scoped("preprocessing crops", || {
            let device = &ctx.device;
            let src = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("wgpose.preprocess.frame"),
                contents: rgba,
                usage: wgpu::BufferUsages::STORAGE,
            });
            let bytes = len as u64 * 4;
            let dst = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpose.preprocess.out"),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpose.preprocess.readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc =
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpose.preprocess") });
            self.encode(&mut enc, &src, w, h, crops, &dst, 0, out_w, out_h)?;
            enc.copy_buffer_to_buffer(&dst, 0, &staging, 0, bytes);
            ctx.queue.submit([enc.finish()]);
            #[allow(clippy::single_range_in_vec_init)] // a slice of one range (the readback takes several)
            let data = crate::gpu::readback::read_buffer::<f32>(device, &staging, &[0..bytes])?.remove(0);
            Ok(Tensor { shape: shape.clone(), data })
        })
    }
}
