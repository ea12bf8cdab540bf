//! The library's front door: an image (and optionally person boxes) in, keypoints in image
//! coordinates out.
//!
//! On the GPU one call records one command buffer: the RGBA frame is uploaded once, the crop
//! warp + resize + normalisation kernel writes straight into the network's input, the network
//! runs, and only the heatmaps come back (K x H/4 x W/4 floats per crop, a few tens of KB, so
//! decoding them on the CPU costs less than another kernel and readback would save). On the CPU
//! the same steps run with the CPU warp and executor.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuModel};
use crate::graph::passes::optimize_for_inference;
use crate::graph::Graph;
use crate::models::{load_model, load_model_bytes, ModelConfig, WeightsSource};
use crate::pipeline::crop::{warp_batch, CropConfig, CropTransform, ImageRef, Normalization};
use crate::pipeline::decode::{average_flipped, decode, DecodeConfig, HeatmapKind, Keypoint};
use crate::pipeline::preprocess_gpu::GpuPreprocess;
use crate::skeleton::Skeleton;
use crate::tensor::Tensor;

/// Options of an [`Estimator`].
#[derive(Clone, Copy, Debug)]
pub struct EstimatorOptions {
    /// Average with the horizontally mirrored crop (left/right swapped): slower, more accurate.
    pub flip_test: bool,
    pub decode: DecodeConfig,
    /// Crop padding around the person box (1.25 = 25% margin).
    pub padding: f32,
    pub seed: u64,
}

impl Default for EstimatorOptions {
    fn default() -> Self {
        EstimatorOptions {
            flip_test: false,
            decode: DecodeConfig::dark(HeatmapKind::Linear, 2.0),
            padding: 1.25,
            seed: 0,
        }
    }
}

/// One person's keypoints.
#[derive(Clone, Debug)]
pub struct Pose {
    /// In original image pixels, in the skeleton's joint order.
    pub keypoints: Vec<Keypoint>,
    pub skeleton: &'static Skeleton,
    /// The person box the crop was taken from, `[x, y, w, h]`.
    pub bbox: [f32; 4],
    /// Mean keypoint confidence.
    pub score: f32,
}

enum Backend {
    Gpu { ctx: GpuContext, pre: GpuPreprocess, models: HashMap<usize, GpuModel> },
    Cpu,
}

pub struct Estimator {
    pub config: ModelConfig,
    pub weights: WeightsSource,
    pub skeleton: &'static Skeleton,
    /// The inference-optimised graph (also what the CPU backend runs).
    graph: Graph,
    backend: Backend,
    opts: EstimatorOptions,
}

impl Estimator {
    /// Builds the estimator for `config` with `weights` (else the shipped weights, else a random
    /// initialisation: see [`Estimator::weights`]), on the GPU when `ctx` is given.
    pub fn new(
        config: &ModelConfig,
        weights: Option<&Path>,
        ctx: Option<&GpuContext>,
        opts: EstimatorOptions,
    ) -> Result<Self> {
        let skeleton = Skeleton::for_joints(config.joints).ok_or_else(|| {
            Error::Input(format!(
                "{} predicts {} joints, not a known skeleton (14, 16, 17)",
                config.name, config.joints
            ))
        })?;
        let (graph, weights, _card) = load_model(config, weights, opts.seed)?;
        Self::from_loaded(config, skeleton, graph, weights, ctx, opts)
    }

    /// Like [`new`](Self::new) with the weights file already in memory (fetched from a URL in
    /// the browser; `label` names it in errors and in [`Estimator::weights`]), checked as
    /// strictly as a file.
    pub fn from_weights_bytes(
        config: &ModelConfig,
        bytes: &[u8],
        label: &str,
        ctx: Option<&GpuContext>,
        opts: EstimatorOptions,
    ) -> Result<Self> {
        let skeleton = Skeleton::for_joints(config.joints).ok_or_else(|| {
            Error::Input(format!(
                "{} predicts {} joints, not a known skeleton (14, 16, 17)",
                config.name, config.joints
            ))
        })?;
        let (graph, _card) = load_model_bytes(config, bytes, label)?;
        Self::from_loaded(config, skeleton, graph, WeightsSource::Bytes(label.to_string()), ctx, opts)
    }

    fn from_loaded(
        config: &ModelConfig,
        skeleton: &'static Skeleton,
        graph: Graph,
        weights: WeightsSource,
        ctx: Option<&GpuContext>,
        mut opts: EstimatorOptions,
    ) -> Result<Self> {
        opts.decode.kind = if config.sigmoid_output() { HeatmapKind::Sigmoid } else { HeatmapKind::Linear };
        let graph = optimize_for_inference(&graph);
        let backend = match ctx {
            Some(ctx) => Backend::Gpu {
                ctx: ctx.clone(),
                pre: GpuPreprocess::with_normalization(ctx, Normalization::IMAGENET)?,
                models: HashMap::new(),
            },
            None => Backend::Cpu,
        };
        Ok(Estimator { config: *config, weights, skeleton, graph, backend, opts })
    }

    pub fn on_gpu(&self) -> bool {
        matches!(self.backend, Backend::Gpu { .. })
    }

    /// Keypoints of the person in `bbox` (`[x, y, w, h]`, default: the whole image).
    pub fn estimate(&mut self, image: &ImageRef, bbox: Option<[f32; 4]>) -> Result<Pose> {
        let b = bbox.unwrap_or([0.0, 0.0, image.width as f32, image.height as f32]);
        self.estimate_batch(image, &[b]).map(|mut v| v.remove(0))
    }

    /// Keypoints for several people of one image: all crops go through the network in one batch.
    pub fn estimate_batch(&mut self, image: &ImageRef, boxes: &[[f32; 4]]) -> Result<Vec<Pose>> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let crops = self.crops_for(boxes, image.width, image.height)?;
        let heatmaps = self.heatmaps(image, &crops)?;
        self.poses_from(&heatmaps, &crops, boxes)
    }

    /// [`Estimator::estimate_batch`] without blocking the thread: on the GPU the heatmaps'
    /// readback is awaited (the browser build's path; natively prefer the blocking form, see
    /// [`GpuModel::run_async`]). On the CPU it runs to completion on the first poll.
    pub async fn estimate_batch_async(&mut self, image: &ImageRef<'_>, boxes: &[[f32; 4]]) -> Result<Vec<Pose>> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let crops = self.crops_for(boxes, image.width, image.height)?;
        let heatmaps = self.heatmaps_async(image, &crops).await?;
        self.poses_from(&heatmaps, &crops, boxes)
    }

    /// [`Estimator::estimate_gpu_frame`] awaiting the readback instead of blocking (the browser
    /// build's path: a frame copied from an `ImageBitmap` into a storage buffer).
    pub async fn estimate_gpu_frame_async(
        &mut self,
        src: &wgpu::Buffer,
        frame: &crate::pipeline::preprocess_gpu::FrameLayout,
        boxes: &[[f32; 4]],
    ) -> Result<Vec<Pose>> {
        let Backend::Gpu { .. } = self.backend else {
            return Err(Error::Input("estimate_gpu_frame_async needs an estimator created with a GPU context".into()));
        };
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let crops = self.crops_for(boxes, frame.width as usize, frame.height as usize)?;
        let heatmaps = self
            .gpu_heatmaps_async(&crops, |pre, enc, arena, offset, out_w, out_h| {
                let out = crate::pipeline::preprocess_gpu::OutputLayout::packed(out_w, out_h, offset);
                pre.encode_layout(enc, src, frame, &crops, arena, &out)
            })
            .await?;
        self.poses_from(&heatmaps, &crops, boxes)
    }

    /// Like [`estimate_batch`](Self::estimate_batch) for a frame that is already on the GPU: a
    /// storage buffer of one u32 per pixel laid out as `frame` (for instance a camera texture
    /// copied with `copy_texture_to_buffer`, rows 256-byte aligned). Nothing goes through the
    /// CPU but the heatmaps. GPU estimators only.
    pub fn estimate_gpu_frame(
        &mut self,
        src: &wgpu::Buffer,
        frame: &crate::pipeline::preprocess_gpu::FrameLayout,
        boxes: &[[f32; 4]],
    ) -> Result<Vec<Pose>> {
        let Backend::Gpu { .. } = self.backend else {
            return Err(Error::Input("estimate_gpu_frame needs an estimator created with a GPU context".into()));
        };
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let (w, h) = (frame.width as usize, frame.height as usize);
        let crops = self.crops_for(boxes, w, h)?;
        let heatmaps = self.gpu_heatmaps(&crops, |pre, enc, arena, offset, out_w, out_h| {
            let out = crate::pipeline::preprocess_gpu::OutputLayout::packed(out_w, out_h, offset);
            pre.encode_layout(enc, src, frame, &crops, arena, &out)
        })?;
        self.poses_from(&heatmaps, &crops, boxes)
    }

    fn crops_for(&self, boxes: &[[f32; 4]], img_w: usize, img_h: usize) -> Result<Vec<CropTransform>> {
        let [_, in_h, in_w] = self.config.input;
        let cfg = CropConfig::default().with_padding(self.opts.padding);
        let mut crops = Vec::new();
        for b in boxes {
            crops.push(CropTransform::from_box_in_image(*b, img_w, img_h, in_w, in_h, &cfg)?);
            if self.opts.flip_test {
                crops.push(CropTransform::from_box_in_image(*b, img_w, img_h, in_w, in_h, &cfg.with_flip(true))?);
            }
        }
        Ok(crops)
    }

    fn poses_from(&self, heatmaps: &Tensor, crops: &[CropTransform], boxes: &[[f32; 4]]) -> Result<Vec<Pose>> {
        let [n, k, h, w] = heatmaps.nchw()?;
        let per = if self.opts.flip_test { 2 } else { 1 };
        if n != boxes.len() * per {
            return Err(Error::Graph(format!("{n} heatmaps for {} crops", boxes.len() * per)));
        }
        let stride = self.config.input[2] as f32 / w as f32;
        let plane = k * h * w;
        let take =
            |j: usize| Tensor { shape: vec![1, k, h, w], data: heatmaps.data[j * plane..(j + 1) * plane].to_vec() };
        let mut poses = Vec::with_capacity(boxes.len());
        for (i, b) in boxes.iter().enumerate() {
            let first = i * per;
            let maps = if self.opts.flip_test {
                average_flipped(&take(first), &take(first + 1), self.skeleton)?
            } else {
                take(first)
            };
            let kps = decode(&maps, &self.opts.decode)?.remove(0);
            let keypoints: Vec<Keypoint> = kps.into_iter().map(|kp| kp.to_image(&crops[first], stride)).collect();
            let score = keypoints.iter().map(|k| k.score).sum::<f32>() / keypoints.len().max(1) as f32;
            poses.push(Pose { keypoints, skeleton: self.skeleton, bbox: *b, score });
        }
        Ok(poses)
    }

    /// The preprocessing kernel and the network compiled for `batch` crops (compiled on first
    /// use of each batch size, then cached).
    fn gpu_model(&mut self, batch: usize) -> Result<(&GpuPreprocess, &mut GpuModel)> {
        let Backend::Gpu { ctx, pre, models } = &mut self.backend else {
            return Err(Error::Input("not a GPU estimator".into()));
        };
        if !models.contains_key(&batch) {
            models.insert(batch, GpuModel::compile_with(ctx, &self.graph, batch)?);
        }
        let model = models.get_mut(&batch).ok_or_else(|| Error::Gpu("model cache".into()))?;
        Ok((pre, model))
    }

    /// Runs the GPU network on crops written into its input by `prelude`.
    fn gpu_heatmaps(&mut self, crops: &[CropTransform], prelude: impl Prelude) -> Result<Tensor> {
        let [_, in_h, in_w] = self.config.input;
        let (pre, model) = self.gpu_model(crops.len())?;
        let outputs =
            model.run_with_prelude(|enc, arena, offset| prelude(pre, enc, arena, offset, in_w as u32, in_h as u32))?;
        last_output(outputs)
    }

    /// [`Estimator::gpu_heatmaps`] awaiting the readback instead of blocking.
    async fn gpu_heatmaps_async(&mut self, crops: &[CropTransform], prelude: impl Prelude) -> Result<Tensor> {
        let [_, in_h, in_w] = self.config.input;
        let (pre, model) = self.gpu_model(crops.len())?;
        let outputs = model
            .run_with_prelude_async(|enc, arena, offset| prelude(pre, enc, arena, offset, in_w as u32, in_h as u32))
            .await?;
        last_output(outputs)
    }

    /// Per-node GPU time of one inference of the network alone (timestamp queries), for the
    /// demo's layer panel; None on the CPU or without timestamp support.
    pub fn profile_network(&mut self, batch: usize) -> Result<Option<Vec<crate::gpu::NodeTime>>> {
        match &self.backend {
            Backend::Gpu { ctx, .. } if ctx.timestamps => {}
            _ => return Ok(None),
        }
        let [c, h, w] = self.config.input;
        let (_, model) = self.gpu_model(batch)?;
        let x = Tensor::zeros(vec![batch, c, h, w]);
        Ok(Some(model.profile(&[x])?.1))
    }

    /// [`Estimator::profile_network`] awaiting the readbacks instead of blocking.
    pub async fn profile_network_async(&mut self, batch: usize) -> Result<Option<Vec<crate::gpu::NodeTime>>> {
        match &self.backend {
            Backend::Gpu { ctx, .. } if ctx.timestamps => {}
            _ => return Ok(None),
        }
        let [c, h, w] = self.config.input;
        let (_, model) = self.gpu_model(batch)?;
        let x = Tensor::zeros(vec![batch, c, h, w]);
        Ok(Some(model.profile_async(&[x]).await?.1))
    }

    fn check_rgb(&self) -> Result<()> {
        let c = self.config.input[0];
        if c != 3 {
            return Err(Error::Input(format!("{} takes {c} channels; the image pipeline feeds RGB", self.config.name)));
        }
        Ok(())
    }

    /// The last stack's heatmaps for every crop, `[crops, K, H/4, W/4]`, on the CPU.
    fn cpu_heatmaps(&self, image: &ImageRef, crops: &[CropTransform]) -> Result<Tensor> {
        let [_, in_h, in_w] = self.config.input;
        let x = warp_batch(image, crops, in_w, in_h, &Normalization::IMAGENET)?;
        last_output(crate::cpu::run(&self.graph, &[x])?)
    }

    /// The last stack's heatmaps for every crop, `[crops, K, H/4, W/4]`.
    fn heatmaps(&mut self, image: &ImageRef, crops: &[CropTransform]) -> Result<Tensor> {
        self.check_rgb()?;
        let Backend::Gpu { ctx, .. } = &self.backend else { return self.cpu_heatmaps(image, crops) };
        let (w, h) = (image.width as u32, image.height as u32);
        let src = upload_frame(ctx, &packed_rgba(image))?;
        self.gpu_heatmaps(crops, |pre, enc, arena, offset, ow, oh| {
            pre.encode(enc, &src, w, h, crops, arena, offset, ow, oh)
        })
    }

    /// [`Estimator::heatmaps`] awaiting the GPU readback instead of blocking.
    async fn heatmaps_async(&mut self, image: &ImageRef<'_>, crops: &[CropTransform]) -> Result<Tensor> {
        self.check_rgb()?;
        let Backend::Gpu { ctx, .. } = &self.backend else { return self.cpu_heatmaps(image, crops) };
        let (w, h) = (image.width as u32, image.height as u32);
        let src = upload_frame(ctx, &packed_rgba(image))?;
        self.gpu_heatmaps_async(crops, |pre, enc, arena, offset, ow, oh| {
            pre.encode(enc, &src, w, h, crops, arena, offset, ow, oh)
        })
        .await
    }
}

/// Records the preprocessing of the crops into the network input: (kernel, encoder, arena,
/// element offset of the input, input width, input height).
trait Prelude: FnOnce(&GpuPreprocess, &mut wgpu::CommandEncoder, &wgpu::Buffer, u64, u32, u32) -> Result<()> {}
impl<F: FnOnce(&GpuPreprocess, &mut wgpu::CommandEncoder, &wgpu::Buffer, u64, u32, u32) -> Result<()>> Prelude for F {}

fn last_output(outputs: Vec<Tensor>) -> Result<Tensor> {
    outputs.into_iter().last().ok_or_else(|| Error::Graph("the model produced no output".into()))
}

/// The image as tightly packed RGBA8, the layout the preprocessing kernel reads (one u32 per
/// pixel). Camera frames that already are RGBA skip the conversion.
fn packed_rgba<'a>(image: &ImageRef<'a>) -> std::borrow::Cow<'a, [u8]> {
    use crate::pipeline::crop::PixelFormat;
    let (w, h) = (image.width, image.height);
    if image.format == PixelFormat::Rgba8 && image.stride == 4 * w {
        return std::borrow::Cow::Borrowed(&image.data[..4 * w * h]);
    }
    let bpp = image.format.bytes_per_pixel();
    let order = if image.format == PixelFormat::Bgra8 { [2, 1, 0] } else { [0, 1, 2] };
    let mut out = Vec::with_capacity(4 * w * h);
    for y in 0..h {
        let row = &image.data[y * image.stride..][..w * bpp];
        for px in row.chunks_exact(bpp) {
            out.extend_from_slice(&[px[order[0]], px[order[1]], px[order[2]], 255]);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn upload_frame(ctx: &GpuContext, rgba: &[u8]) -> Result<wgpu::Buffer> {
    use wgpu::util::DeviceExt;
    let max = ctx.device.limits().max_storage_buffer_binding_size as usize;
    if rgba.len() > max {
        return Err(Error::TooLarge(format!(
            "a {} MiB frame exceeds the device's {} MiB storage binding",
            rgba.len() >> 20,
            max >> 20
        )));
    }
    Ok(ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("wgpose.frame"),
        contents: rgba,
        usage: wgpu::BufferUsages::STORAGE,
    }))
}
