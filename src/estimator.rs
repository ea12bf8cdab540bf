//! The library's front door: an image (and optionally person boxes) in, keypoints in image
//! coordinates out.
//!
//! On the GPU one call records one command buffer: the RGBA frame is uploaded once, the crop
//! warp + resize + normalisation kernel writes straight into the network's input, the network
//! runs, and only the heatmaps come back (K x H/4 x W/4 floats per crop, a few tens of KB, so
//! decoding them on the CPU costs less than another kernel and readback would save). On the CPU
//! the same steps run with the CPU warp and executor.
//!
//! A live loop on the CPU executor (a webcam at 30 fps) idles between frames: call
//! [`crate::pin_cpu_threads`] once before the first frame (its documentation has the
//! measurements; the desktop demo and `examples/frames_loop.rs` do).

mod device;
mod input;
mod people;

use std::collections::HashMap;
use std::path::Path;

pub use device::{Device, DeviceChoice};
pub use input::{Boxes, Picture};

use crate::detector::{PeopleOptions, PersonDetector, DEFAULT_DETECTOR};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuModel};
use crate::graph::passes::optimize_for_inference;
use crate::graph::Graph;
use crate::models::{
    at_trained_input, config, config as config_of, load_model, load_model_bytes, ModelConfig, WeightsSource,
};
use crate::pipeline::crop::{warp_batch, CropConfig, CropTransform, ImageRef, Normalization};
use crate::pipeline::decode::{average_flipped, decode, DecodeConfig, HeatmapKind, Keypoint, Refinement};
use crate::pipeline::preprocess_gpu::GpuPreprocess;
use crate::skeleton::Skeleton;
use crate::tensor::Tensor;

/// Options of an [`Estimator`].
#[derive(Clone, Copy, Debug)]
pub struct EstimatorOptions {
    /// Average with the horizontally mirrored crop (left/right swapped): slower, more accurate.
    pub flip_test: bool,
    /// How heatmaps become keypoints (DARK refinement with sigma 2 by default). The heatmap kind
    /// is set from the network's output when the estimator is built, and DARK's sigma from the
    /// weights' card (see `decode_sigma_from_weights`).
    pub decode: DecodeConfig,
    /// When the weights' model card records the sigma of the Gaussians they were trained on
    /// ([`crate::weights::HEATMAP_SIGMA_KEY`]), DARK refinement uses it instead of `decode`'s
    /// (DARK models each peak as that Gaussian). On by default; off keeps `decode` as given.
    pub decode_sigma_from_weights: bool,
    /// Crop padding around the person box (1.25 = 25% margin).
    pub padding: f32,
    /// Seed of the random initialisation (see `random_weights`).
    pub seed: u64,
    /// Accept a configuration without trained weights (none given, none shipped) as a seeded
    /// random initialisation, for benchmarks and tests: its keypoints are meaningless. Off (the
    /// default), building such an estimator is an error that says where weights were looked for.
    pub random_weights: bool,
    /// Attach the shipped person detector ([`DEFAULT_DETECTOR`], on the same device) when the
    /// estimator is built from files, so that [`Boxes::Auto`] finds the people. Off, or for
    /// an estimator built from bytes without [`Estimator::set_detector`], `Boxes::Auto` is the
    /// whole picture as one person's box.
    pub find_people: bool,
    /// How detections become people (refinement passes, duplicate removal).
    pub people: PeopleOptions,
    /// Run the network at this input `[height, width]` instead of the size its weights were
    /// trained at (their model card's; the config's when there is no card). The networks are
    /// fully convolutional, so weights run at any size that is a multiple of
    /// [`ModelConfig::size_multiple`] (from that multiple up to [`MAX_INPUT_SIDE`] on each side);
    /// accuracy is best near the trained size, and time grows with the pixel count. `None` (the
    /// default): the trained size.
    pub input_size: Option<[usize; 2]>,
}

/// The largest input side [`EstimatorOptions::input_size`] accepts: a person crop larger than
/// this only costs time (the shipped networks were trained at 128 to 192 pixels).
pub const MAX_INPUT_SIDE: usize = 1024;

impl Default for EstimatorOptions {
    fn default() -> Self {
        EstimatorOptions {
            flip_test: false,
            decode: DecodeConfig::default(),
            decode_sigma_from_weights: true,
            padding: 1.25,
            seed: 0,
            random_weights: false,
            find_people: true,
            people: PeopleOptions::default(),
            input_size: None,
        }
    }
}

/// One person's keypoints.
#[derive(Clone, Debug)]
pub struct Pose {
    /// In the picture's coordinates (see [`Picture`]), in the skeleton's joint order.
    pub keypoints: Vec<Keypoint>,
    /// Joint names, limbs and left/right pairs of `keypoints`.
    pub skeleton: &'static Skeleton,
    /// The person box the crop was taken from, `[x, y, w, h]`, in the picture's coordinates.
    pub bbox: [f32; 4],
    /// Mean keypoint confidence.
    pub score: f32,
}

#[allow(clippy::large_enum_variant)] // one value per estimator: boxing the GPU variant buys nothing
enum Backend {
    Gpu { ctx: GpuContext, pre: GpuPreprocess, models: HashMap<usize, GpuModel> },
    Cpu,
}

/// A pose network ready to run on pictures, on the GPU or the CPU executor.
///
/// ```no_run
/// use wgpose::{Device, Estimator};
///
/// let mut est = Estimator::from_name("fasterpose-r18-s16-lsp", Device::Auto)?;
/// eprintln!("running on the {}", est.device_choice());
/// let photo = wgpose::image_io::load_rgb("person.jpg".as_ref())?;
/// // No box: the shipped person detector finds everyone (highest score first).
/// for pose in est.estimate(&photo, wgpose::Boxes::Auto)? {
///     for (name, k) in pose.skeleton.joints.iter().zip(&pose.keypoints) {
///         println!("{name}: ({:.0}, {:.0}) score {:.2}", k.x, k.y, k.score);
///     }
/// }
/// // One person box [x, y, w, h] in the photo's pixels.
/// let poses = est.estimate(&photo, &[[120.0, 40.0, 200.0, 420.0]])?;
/// # Ok::<(), wgpose::Error>(())
/// ```
pub struct Estimator {
    /// The network's configuration.
    pub config: ModelConfig,
    /// Where the weights came from (a file, the shipped weights, or a random initialisation).
    pub weights: WeightsSource,
    /// The joints the network predicts, in output order.
    pub skeleton: &'static Skeleton,
    /// The inference-optimised graph, with the CPU executor's packed weights (packed on the
    /// first CPU run).
    graph: crate::cpu::PackedGraph,
    backend: Backend,
    opts: EstimatorOptions,
    choice: DeviceChoice,
    /// Finds the people for [`Boxes::Auto`] (see [`EstimatorOptions::find_people`]).
    detector: Option<PersonDetector>,
}

impl Estimator {
    /// The named configuration (see [`crate::models::configs`]) with its shipped weights,
    /// default options, on `device`. A configuration without shipped weights is an error (see
    /// [`EstimatorOptions::random_weights`]).
    pub fn from_name(name: &str, device: Device) -> Result<Self> {
        Self::with_options(&config(name)?, None, device, EstimatorOptions::default())
    }

    /// The network stored in a `.safetensors` weights file written by wgpose (its model card
    /// names the configuration), default options, on `device`.
    pub fn from_file(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        let path = path.as_ref();
        Self::with_options(&ModelConfig::from_weights_file(path)?, Some(path), device, EstimatorOptions::default())
    }

    /// The general constructor: `config` with `weights` (else the shipped weights, else a random
    /// initialisation), `opts`, on `device`.
    pub fn with_options(
        config: &ModelConfig,
        weights: Option<&Path>,
        device: Device,
        opts: EstimatorOptions,
    ) -> Result<Self> {
        let (ctx, choice) = device.open()?;
        let mut est = Self::new(config, weights, ctx.as_ref(), opts)?;
        est.choice = choice;
        Ok(est)
    }

    /// Like [`Estimator::with_options`] on a device opened elsewhere (a renderer's, to share it):
    /// `device` decides whether the network runs on `ctx` or on the CPU executor
    /// ([`Device::choose`]).
    pub fn with_context(
        config: &ModelConfig,
        weights: Option<&Path>,
        ctx: &GpuContext,
        device: Device,
        opts: EstimatorOptions,
    ) -> Result<Self> {
        let (ctx, choice) = device.choose(ctx.clone());
        let mut est = Self::new(config, weights, ctx.as_ref(), opts)?;
        est.choice = choice;
        Ok(est)
    }

    /// Builds the estimator for `config` with `weights` (else the shipped weights, else a random
    /// initialisation: see [`Estimator::weights`]), on the GPU when `ctx` is given.
    pub fn new(
        config: &ModelConfig,
        weights: Option<&Path>,
        ctx: Option<&GpuContext>,
        opts: EstimatorOptions,
    ) -> Result<Self> {
        // The input size the weights were trained at (the shipped hourglass's 192x128, LDCRN's
        // 160x160), unless the caller chose one (in the options, or as a config of another size).
        let config = &match opts.input_size {
            Some(size) => sized(config, size)?,
            None => at_trained_input(config, weights)?,
        };
        let skeleton = skeleton_of(config)?;
        let (graph, weights, card) = load_model(config, weights, opts.seed)?;
        if matches!(weights, WeightsSource::RandomInit { .. }) && !opts.random_weights {
            return Err(Error::Input(format!(
                "no trained weights for `{}`: none given and {} does not exist (pass a weights file, set \
                 WGPOSE_MODELS to the folder that holds them, build wgpose with its `bundled-weights` feature \
                 (default pose model, detector and hourglass), or set EstimatorOptions::random_weights for a \
                 seeded random initialisation, whose keypoints are meaningless)",
                config.name,
                crate::models::shipped_weights_path(config.name).display()
            )));
        }
        let mut est = Self::from_loaded(config, skeleton, graph, weights, card.as_ref(), ctx, opts)?;
        if opts.find_people {
            let det_cfg = config_of(DEFAULT_DETECTOR)?;
            let det = PersonDetector::with_gpu(&det_cfg, None, ctx, Default::default()).map_err(|e| match e {
                Error::Input(m) => Error::Input(format!(
                    "{m} (the estimator attaches it to find people; set EstimatorOptions::find_people = false \
                     to use the whole picture instead)"
                )),
                other => other,
            })?;
            est.detector = Some(det);
        }
        Ok(est)
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
        let config = &match opts.input_size {
            Some(size) => sized(config, size)?,
            None => *config,
        };
        let skeleton = skeleton_of(config)?;
        let (graph, card) = load_model_bytes(config, bytes, label)?;
        Self::from_loaded(config, skeleton, graph, WeightsSource::Bytes(label.to_string()), Some(&card), ctx, opts)
    }

    fn from_loaded(
        config: &ModelConfig,
        skeleton: &'static Skeleton,
        graph: Graph,
        weights: WeightsSource,
        card: Option<&crate::weights::ModelCard>,
        ctx: Option<&GpuContext>,
        mut opts: EstimatorOptions,
    ) -> Result<Self> {
        opts.decode.kind = if config.sigmoid_output() { HeatmapKind::Sigmoid } else { HeatmapKind::Linear };
        if let (true, Refinement::Dark { .. }, Some(card)) =
            (opts.decode_sigma_from_weights, opts.decode.refinement, card)
        {
            if let Some(sigma) = card.heatmap_sigma()? {
                opts.decode.refinement = Refinement::Dark { sigma };
            }
        }
        let graph = crate::cpu::PackedGraph::new(optimize_for_inference(&graph));
        let backend = match ctx {
            Some(ctx) => Backend::Gpu {
                ctx: ctx.clone(),
                pre: GpuPreprocess::with_normalization(ctx, Normalization::IMAGENET)?,
                models: HashMap::new(),
            },
            None => Backend::Cpu,
        };
        let choice = DeviceChoice::given(ctx);
        Ok(Estimator { config: *config, weights, skeleton, graph, backend, opts, choice, detector: None })
    }

    /// Whether the network runs on the GPU (else on the CPU executor).
    pub fn on_gpu(&self) -> bool {
        matches!(self.backend, Backend::Gpu { .. })
    }

    /// The executor this estimator runs on and why (for `Device::Auto`: the adapter found and
    /// the rule applied).
    /// The GPU context the network runs on, if it runs on one (to put more work on the same
    /// device, e.g. the person detector).
    pub fn gpu_context(&self) -> Option<&GpuContext> {
        match &self.backend {
            Backend::Gpu { ctx, .. } => Some(ctx),
            Backend::Cpu => None,
        }
    }

    /// Which executor runs the network, and why (see [`Device`]).
    pub fn device_choice(&self) -> &DeviceChoice {
        &self.choice
    }

    /// The options it was built with (decoding as adjusted to the network's output).
    pub fn options(&self) -> &EstimatorOptions {
        &self.opts
    }

    /// The people's poses in `image`: one [`Pose`] per box of `boxes` (in that order), or for
    /// [`Boxes::Auto`] everyone the person detector finds, highest detection score first (none
    /// in a picture without people; see [`Estimator::people`] for the detections themselves).
    /// Without a detector, `Boxes::Auto` is the whole picture as one person's box.
    ///
    /// `image` is anything that converts to a [`Picture`]: a
    /// [`LoadedImage`](crate::image_io::LoadedImage) from
    /// [`load_rgb`](crate::image_io::load_rgb) (boxes and keypoints are then in the original
    /// file's pixels, whatever the working size), an [`image::RgbImage`], or an [`ImageRef`] to
    /// a camera frame. `boxes` converts from `&[[x, y, w, h]]`, one `[x, y, w, h]`, or an
    /// `Option` of one.
    pub fn estimate<'a, 'b>(
        &mut self,
        image: impl Into<Picture<'a>>,
        boxes: impl Into<Boxes<'b>>,
    ) -> Result<Vec<Pose>> {
        let picture = image.into();
        let boxes = boxes.into();
        if boxes == Boxes::Auto && self.detector.is_some() {
            return Ok(self.people(picture)?.into_iter().map(|p| p.pose).collect());
        }
        let (given, work) = to_working(&picture, boxes)?;
        let poses = self.estimate_batch(&picture.pixels, &work)?;
        Ok(to_caller(poses, &picture, &given))
    }

    /// [`Estimator::estimate`] without blocking the thread (see
    /// [`Estimator::estimate_batch_async`]).
    pub async fn estimate_async<'a, 'b>(
        &mut self,
        image: impl Into<Picture<'a>>,
        boxes: impl Into<Boxes<'b>>,
    ) -> Result<Vec<Pose>> {
        let picture = image.into();
        let boxes = boxes.into();
        if boxes == Boxes::Auto && self.detector.is_some() {
            return Ok(self.people_async(picture).await?.into_iter().map(|p| p.pose).collect());
        }
        let (given, work) = to_working(&picture, boxes)?;
        let poses = self.estimate_batch_async(&picture.pixels, &work).await?;
        Ok(to_caller(poses, &picture, &given))
    }

    /// Keypoints for several people of one image, boxes and keypoints in `image`'s own pixels:
    /// all crops go through the network in one batch. [`Estimator::estimate`] is the same with
    /// the picture's scale applied.
    pub fn estimate_batch(&mut self, image: &ImageRef, boxes: &[[f32; 4]]) -> Result<Vec<Pose>> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let crops = self.crops_for(boxes, image.width, image.height)?;
        let heatmaps = self.heatmaps(image, &crops)?;
        self.poses_from(&heatmaps, &crops, boxes, [image.width, image.height])
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
        self.poses_from(&heatmaps, &crops, boxes, [image.width, image.height])
    }

    /// [`Estimator::estimate_gpu_frame`] awaiting the readback instead of blocking (the browser
    /// build's path: a frame copied from an `ImageBitmap` into a storage buffer).
    pub async fn estimate_gpu_frame_async<'b>(
        &mut self,
        src: &wgpu::Buffer,
        frame: &crate::pipeline::preprocess_gpu::FrameLayout,
        boxes: impl Into<Boxes<'b>>,
    ) -> Result<Vec<Pose>> {
        let Backend::Gpu { .. } = self.backend else {
            return Err(Error::Input("estimate_gpu_frame_async needs an estimator created with a GPU context".into()));
        };
        let boxes = match boxes.into() {
            Boxes::Auto if self.detector.is_some() => {
                return Ok(self.people_gpu_frame_async(src, frame).await?.into_iter().map(|p| p.pose).collect())
            }
            Boxes::Auto => std::borrow::Cow::Owned(vec![[0.0, 0.0, frame.width as f32, frame.height as f32]]),
            Boxes::Given(b) => b,
        };
        self.gpu_frame_poses_async(src, frame, &boxes).await
    }

    /// Poses for given boxes of a GPU frame, awaiting the readback.
    async fn gpu_frame_poses_async(
        &mut self,
        src: &wgpu::Buffer,
        frame: &crate::pipeline::preprocess_gpu::FrameLayout,
        boxes: &[[f32; 4]],
    ) -> Result<Vec<Pose>> {
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
        self.poses_from(&heatmaps, &crops, boxes, [frame.width as usize, frame.height as usize])
    }

    /// Like [`estimate_batch`](Self::estimate_batch) for a frame that is already on the GPU: a
    /// storage buffer of one u32 per pixel laid out as `frame` (for instance a camera texture
    /// copied with `copy_texture_to_buffer`, rows 256-byte aligned). Nothing goes through the
    /// CPU but the heatmaps. GPU estimators only. [`Boxes::Auto`] runs the person detector on
    /// the same buffer (see [`Estimator::estimate`]).
    pub fn estimate_gpu_frame<'b>(
        &mut self,
        src: &wgpu::Buffer,
        frame: &crate::pipeline::preprocess_gpu::FrameLayout,
        boxes: impl Into<Boxes<'b>>,
    ) -> Result<Vec<Pose>> {
        let Backend::Gpu { .. } = self.backend else {
            return Err(Error::Input("estimate_gpu_frame needs an estimator created with a GPU context".into()));
        };
        let boxes = match boxes.into() {
            Boxes::Auto if self.detector.is_some() => {
                return Ok(self.people_gpu_frame(src, frame)?.into_iter().map(|p| p.pose).collect())
            }
            Boxes::Auto => std::borrow::Cow::Owned(vec![[0.0, 0.0, frame.width as f32, frame.height as f32]]),
            Boxes::Given(b) => b,
        };
        let boxes = &boxes[..];
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let (w, h) = (frame.width as usize, frame.height as usize);
        let crops = self.crops_for(boxes, w, h)?;
        let heatmaps = self.gpu_heatmaps(&crops, |pre, enc, arena, offset, out_w, out_h| {
            let out = crate::pipeline::preprocess_gpu::OutputLayout::packed(out_w, out_h, offset);
            pre.encode_layout(enc, src, frame, &crops, arena, &out)
        })?;
        self.poses_from(&heatmaps, &crops, boxes, [w, h])
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

    fn poses_from(
        &self,
        heatmaps: &Tensor,
        crops: &[CropTransform],
        boxes: &[[f32; 4]],
        image_size: [usize; 2],
    ) -> Result<Vec<Pose>> {
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
            let keypoints: Vec<Keypoint> =
                kps.into_iter().map(|kp| inside_image(kp.to_image(&crops[first], stride), image_size)).collect();
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
        if let std::collections::hash_map::Entry::Vacant(e) = models.entry(batch) {
            e.insert(GpuModel::compile_with(ctx, self.graph.graph(), batch)?);
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
        last_output(self.graph.run(&[x])?)
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

/// `config` at the input `[h, w]` of [`EstimatorOptions::input_size`], or an error that says
/// which sizes fit.
fn sized(config: &ModelConfig, [h, w]: [usize; 2]) -> Result<ModelConfig> {
    let m = config.size_multiple();
    let fits = |v: usize| v >= m && v <= MAX_INPUT_SIDE && v.is_multiple_of(m);
    if !(fits(h) && fits(w)) {
        return Err(Error::Input(format!(
            "input size {h}x{w} does not fit `{}`: each side must be a multiple of {m} from {m} to {MAX_INPUT_SIDE}",
            config.name
        )));
    }
    Ok(config.with_input([config.input[0], h, w]))
}

/// The joint layout of a pose network's output, or an error for a config that is not one.
fn skeleton_of(config: &ModelConfig) -> Result<&'static Skeleton> {
    Skeleton::for_joints(config.joints).ok_or_else(|| {
        Error::Input(format!("{} predicts {} joints, not a known skeleton (14, 16, 17)", config.name, config.joints))
    })
}

/// The boxes in the caller's coordinates (`Auto`: the whole picture) and in working pixels.
#[allow(clippy::type_complexity)] // (caller's boxes, working-pixel boxes), as documented above
fn to_working(picture: &Picture, boxes: Boxes) -> Result<(Vec<[f32; 4]>, Vec<[f32; 4]>)> {
    let s = picture.scale;
    if !(s.is_finite() && s > 0.0) {
        return Err(Error::Input(format!("a picture's scale must be finite and positive, got {s}")));
    }
    Ok(match boxes {
        Boxes::Auto => {
            let (w, h) = (picture.pixels.width as f32, picture.pixels.height as f32);
            (vec![picture.full_box()], vec![[0.0, 0.0, w, h]])
        }
        Boxes::Given(b) => {
            let work = b.iter().map(|b| b.map(|v| v / s)).collect();
            (b.into_owned(), work)
        }
    })
}

/// Poses found in working pixels, mapped to the caller's coordinates with the caller's boxes.
fn to_caller(mut poses: Vec<Pose>, picture: &Picture, given: &[[f32; 4]]) -> Vec<Pose> {
    let s = picture.scale;
    for (pose, b) in poses.iter_mut().zip(given) {
        for k in &mut pose.keypoints {
            k.x *= s;
            k.y *= s;
        }
        pose.bbox = *b;
    }
    poses
}

/// Records the preprocessing of the crops into the network input: (kernel, encoder, arena,
/// element offset of the input, input width, input height).
trait Prelude: FnOnce(&GpuPreprocess, &mut wgpu::CommandEncoder, &wgpu::Buffer, u64, u32, u32) -> Result<()> {}
impl<F: FnOnce(&GpuPreprocess, &mut wgpu::CommandEncoder, &wgpu::Buffer, u64, u32, u32) -> Result<()>> Prelude for F {}

fn last_output(outputs: Vec<Tensor>) -> Result<Tensor> {
    outputs.into_iter().last().ok_or_else(|| Error::Graph("the model produced no output".into()))
}

/// A keypoint that decoded outside the image (the crop of a thin or off-centre box reaches far
/// beyond it) is moved to the nearest point of the image and its score set to 0: the network
/// did not see the person there, and a coordinate thousands of pixels away helps no caller.
fn inside_image(k: Keypoint, [w, h]: [usize; 2]) -> Keypoint {
    let (w, h) = (w as f32, h as f32);
    if (0.0..=w).contains(&k.x) && (0.0..=h).contains(&k.y) {
        return k;
    }
    Keypoint { x: k.x.clamp(0.0, w), y: k.y.clamp(0.0, h), score: 0.0 }
}

/// The image as tightly packed RGBA8, the layout the preprocessing kernel reads (one u32 per
/// pixel). Camera frames that already are RGBA skip the conversion.
pub(crate) fn packed_rgba<'a>(image: &ImageRef<'a>) -> std::borrow::Cow<'a, [u8]> {
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

pub(crate) fn upload_frame(ctx: &GpuContext, rgba: &[u8]) -> Result<wgpu::Buffer> {
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
