//! Finding the people in a whole image: the trained person detector
//! (`models::person_detector`) run on the image's letterbox view and decoded into
//! person boxes ([`crate::pipeline::detect`]).
//!
//! The boxes it returns are *tight* person boxes: the detector predicts LSP pose boxes (the
//! labelled joints' extent enlarged by 25%), and [`PersonDetector::detect`] shrinks them by that
//! 25% again, so they mean what a user-given `--bbox` means and the estimator's usual crop
//! padding (1.25) reproduces exactly the crop the pose networks were trained on.
//! [`PersonDetector::detect_lsp_boxes`] gives the unshrunk boxes (LSP evaluation pads by 1.0).

use std::path::Path;

use crate::data::LSP_BOX_ENLARGE;
use crate::error::{Error, Result};
use crate::estimator::{packed_rgba, upload_frame, Estimator, Pose};
use crate::gpu::{GpuContext, GpuModel};
use crate::graph::passes::optimize_for_inference;
use crate::graph::Graph;
use crate::models::{load_model, load_model_bytes, Family, ModelConfig, WeightsSource};
use crate::pipeline::crop::{warp_batch, CropTransform, ImageRef, Normalization};
use crate::pipeline::detect::{box_iou, decode_detection_batch, letterbox, DetectConfig, Detection};
use crate::pipeline::preprocess_gpu::{FrameLayout, GpuPreprocess, OutputLayout};
use crate::tensor::Tensor;

/// The detector the estimator attaches by default ([`crate::EstimatorOptions::find_people`]).
pub const DEFAULT_DETECTOR: &str = "person-detector-r18w32";

/// A loaded person detector, on the GPU (the frame's letterbox cut by the preprocessing kernel
/// straight into the network's input, one command buffer) or the CPU executor.
pub struct PersonDetector {
    /// The detector network's configuration.
    pub config: ModelConfig,
    /// Where its weights came from.
    pub weights: WeightsSource,
    /// How its output maps become boxes (peak threshold, NMS, at most how many).
    pub detect: DetectConfig,
    graph: crate::cpu::PackedGraph,
    gpu: Option<(GpuContext, GpuPreprocess, GpuModel)>,
}

impl std::fmt::Debug for PersonDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonDetector")
            .field("config", &self.config.name)
            .field("weights", &self.weights.to_string())
            .field("detect", &self.detect)
            .field("on_gpu", &self.on_gpu())
            .finish()
    }
}

impl PersonDetector {
    /// The detector `config` with `weights` (else its shipped weights). Unlike the pose
    /// networks there is no random-initialisation fallback: an untrained detector's boxes are
    /// garbage, so missing weights are an error.
    pub fn new(config: &ModelConfig, weights: Option<&Path>, detect: DetectConfig) -> Result<Self> {
        Self::with_gpu(config, weights, None, detect)
    }

    /// [`PersonDetector::new`] on the GPU of `ctx` when given.
    pub fn with_gpu(
        config: &ModelConfig,
        weights: Option<&Path>,
        ctx: Option<&GpuContext>,
        detect: DetectConfig,
    ) -> Result<Self> {
        check_detector(config, &detect)?;
        let (graph, weights, _) = load_model(config, weights, 0)?;
        if let WeightsSource::RandomInit { .. } = weights {
            return Err(Error::Input(format!(
                "no weights for the person detector {} (expected {}); give a weights file or a box, or build \
                 wgpose with its `bundled-weights` feature",
                config.name,
                crate::models::shipped_weights_path(config.name).display()
            )));
        }
        Self::from_loaded(config, graph, weights, ctx, detect)
    }

    /// [`PersonDetector::with_gpu`] with the weights file already in memory (fetched from a URL
    /// in the browser; `label` names it in errors), checked as strictly as a file.
    pub fn from_weights_bytes(
        config: &ModelConfig,
        bytes: &[u8],
        label: &str,
        ctx: Option<&GpuContext>,
        detect: DetectConfig,
    ) -> Result<Self> {
        check_detector(config, &detect)?;
        let (graph, _) = load_model_bytes(config, bytes, label)?;
        Self::from_loaded(config, graph, WeightsSource::Bytes(label.to_string()), ctx, detect)
    }

    fn from_loaded(
        config: &ModelConfig,
        graph: Graph,
        weights: WeightsSource,
        ctx: Option<&GpuContext>,
        detect: DetectConfig,
    ) -> Result<Self> {
        let graph = optimize_for_inference(&graph);
        let gpu = match ctx {
            Some(ctx) => Some((
                ctx.clone(),
                GpuPreprocess::with_normalization(ctx, Normalization::IMAGENET)?,
                GpuModel::compile_with(ctx, &graph, 1)?,
            )),
            None => None,
        };
        Ok(PersonDetector { config: *config, weights, detect, graph: crate::cpu::PackedGraph::new(graph), gpu })
    }

    /// True when the detector runs on the GPU.
    pub fn on_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    /// The inference graph (for executors other than the CPU).
    pub fn graph(&self) -> &Graph {
        self.graph.graph()
    }

    /// The letterbox crop of a `w x h` image for this detector's input.
    pub fn crop_for(&self, w: usize, h: usize) -> Result<CropTransform> {
        letterbox(w, h, self.config.input[2], self.config.input[1])
    }

    /// Detector maps `[1, 3, h, w]` of `image` and the letterbox crop they were computed on.
    pub fn maps(&mut self, image: &ImageRef) -> Result<(Tensor, CropTransform)> {
        let crop = self.crop_for(image.width, image.height)?;
        let [_, in_h, in_w] = self.config.input;
        let outs = match &mut self.gpu {
            None => {
                let x = warp_batch(image, &[crop], in_w, in_h, &Normalization::IMAGENET)?;
                self.graph.run(&[x])?
            }
            Some((ctx, pre, model)) => {
                let src = upload_frame(ctx, &packed_rgba(image))?;
                let (w, h) = (image.width as u32, image.height as u32);
                model.run_with_prelude(|enc, arena, offset| {
                    pre.encode(enc, &src, w, h, &[crop], arena, offset, in_w as u32, in_h as u32)
                })?
            }
        };
        let maps = outs.into_iter().last().ok_or_else(|| Error::Graph("the detector produced no output".into()))?;
        Ok((maps, crop))
    }

    /// Detector maps of a frame already on the GPU (see
    /// [`crate::estimator::Estimator::estimate_gpu_frame`]); GPU detectors only.
    pub fn maps_gpu_frame(&mut self, src: &wgpu::Buffer, frame: &FrameLayout) -> Result<(Tensor, CropTransform)> {
        let crop = self.crop_for(frame.width as usize, frame.height as usize)?;
        let [_, in_h, in_w] = self.config.input;
        let Some((_, pre, model)) = &mut self.gpu else {
            return Err(Error::Input("maps_gpu_frame needs a detector created with a GPU context".into()));
        };
        let outs = model.run_with_prelude(|enc, arena, offset| {
            let out = OutputLayout::packed(in_w as u32, in_h as u32, offset);
            pre.encode_layout(enc, src, frame, &[crop], arena, &out)
        })?;
        let maps = outs.into_iter().last().ok_or_else(|| Error::Graph("the detector produced no output".into()))?;
        Ok((maps, crop))
    }

    /// [`PersonDetector::maps_gpu_frame`] awaiting the readback instead of blocking (the
    /// browser's path).
    pub async fn maps_gpu_frame_async(
        &mut self,
        src: &wgpu::Buffer,
        frame: &FrameLayout,
    ) -> Result<(Tensor, CropTransform)> {
        let crop = self.crop_for(frame.width as usize, frame.height as usize)?;
        let [_, in_h, in_w] = self.config.input;
        let Some((_, pre, model)) = &mut self.gpu else {
            return Err(Error::Input("maps_gpu_frame_async needs a detector created with a GPU context".into()));
        };
        let outs = model
            .run_with_prelude_async(|enc, arena, offset| {
                let out = OutputLayout::packed(in_w as u32, in_h as u32, offset);
                pre.encode_layout(enc, src, frame, &[crop], arena, &out)
            })
            .await?;
        let maps = outs.into_iter().last().ok_or_else(|| Error::Graph("the detector produced no output".into()))?;
        Ok((maps, crop))
    }

    /// People in a frame already on the GPU as tight boxes, highest score first.
    pub fn detect_gpu_frame(&mut self, src: &wgpu::Buffer, frame: &FrameLayout) -> Result<Vec<Detection>> {
        let (maps, crop) = self.maps_gpu_frame(src, frame)?;
        Ok(self.decode_lsp(&maps, &crop)?.into_iter().map(tight).collect())
    }

    /// [`PersonDetector::detect_gpu_frame`] awaiting the readback instead of blocking.
    pub async fn detect_gpu_frame_async(&mut self, src: &wgpu::Buffer, frame: &FrameLayout) -> Result<Vec<Detection>> {
        let (maps, crop) = self.maps_gpu_frame_async(src, frame).await?;
        Ok(self.decode_lsp(&maps, &crop)?.into_iter().map(tight).collect())
    }

    /// People in `image` as LSP pose boxes, highest score first.
    pub fn detect_lsp_boxes(&mut self, image: &ImageRef) -> Result<Vec<Detection>> {
        let (maps, crop) = self.maps(image)?;
        self.decode_lsp(&maps, &crop)
    }

    /// Decodes `[1, 3, h, w]` maps into LSP pose boxes.
    pub fn decode_lsp(&self, maps: &Tensor, crop: &CropTransform) -> Result<Vec<Detection>> {
        Ok(decode_detection_batch(maps, std::slice::from_ref(crop), &self.detect)?.remove(0))
    }

    /// People in `image` as tight boxes (see the module docs), highest score first.
    pub fn detect(&mut self, image: &ImageRef) -> Result<Vec<Detection>> {
        Ok(self.detect_lsp_boxes(image)?.into_iter().map(tight).collect())
    }
}

/// The config must be a person detector and the detection settings sane, before any loading.
fn check_detector(config: &ModelConfig, detect: &DetectConfig) -> Result<()> {
    if config.family != Family::PersonDetector {
        return Err(Error::Input(format!("{} is not a person detector", config.name)));
    }
    detect.check()
}

/// An LSP pose box shrunk back to the joints' extent (inverse of the 25% enlargement).
pub(crate) fn tight(d: Detection) -> Detection {
    let [x, y, w, h] = d.bbox;
    let (cx, cy) = (x + w / 2.0, y + h / 2.0);
    let (w, h) = (w / LSP_BOX_ENLARGE, h / LSP_BOX_ENLARGE);
    Detection { bbox: [cx - w / 2.0, cy - h / 2.0, w, h], score: d.score }
}

/// One person found in a whole image.
#[derive(Clone, Debug)]
pub struct Person {
    /// Keypoints from the final crop; `pose.bbox` is the box that crop was cut from.
    pub pose: Pose,
    /// The detector's box (tight, see the module docs) and score.
    pub detection: Detection,
}

/// How [`Estimator::people`](crate::Estimator::people) goes from detections to poses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeopleOptions {
    /// Re-crop each person on the box of their keypoints this many times (the keypoints frame
    /// a person better than the detector's box; one pass is worth about 3 PCK points on LSPET
    /// validation, a second nothing more: see the README).
    pub refine_passes: usize,
    /// Keypoints scoring at least this frame the re-crop. 0 (all of them) measured best: 51.5%
    /// against 49.7% with 0.3 (PCK@0.2 torso, 300 LSPET validation people); a low-scoring joint
    /// is more often a hard one than a wrong one.
    pub refine_threshold: f32,
    /// After refinement, a person whose box overlaps a higher-scoring one's by more than this
    /// IoU is the same person found twice, and is dropped.
    pub duplicate_iou: f32,
    /// A detection scoring below `sure_score` is kept only when its pose's mean keypoint score
    /// reaches `min_pose_score`: the detector alone mistakes railings, trees and wall corners
    /// for people at scores where it also finds real people, and the pose network tells them
    /// apart (see the README's "Finding people" for the measurements).
    pub min_pose_score: f32,
    /// See `min_pose_score`.
    pub sure_score: f32,
}

impl Default for PeopleOptions {
    fn default() -> Self {
        PeopleOptions {
            refine_passes: 1,
            refine_threshold: 0.0,
            duplicate_iou: 0.6,
            min_pose_score: 0.3,
            sure_score: 0.4,
        }
    }
}

/// The tight box of the keypoints scoring at least `threshold` (finite ones), or None when
/// fewer than two distinct points qualify.
pub(crate) fn keypoint_box(pose: &Pose, threshold: f32) -> Option<[f32; 4]> {
    let kps: Vec<[f32; 3]> =
        pose.keypoints.iter().map(|k| [k.x, k.y, if k.score >= threshold { 1.0 } else { 0.0 }]).collect();
    crate::data::box_from_keypoints(&kps, 1.0).map(|b| [b[0], b[1], b[2].max(1.0), b[3].max(1.0)])
}

/// The boxes of the next refinement pass: each pose's keypoint box (its previous box when the
/// keypoints give none), or None when no pose gave one (nothing to refine).
pub(crate) fn refined_boxes(poses: &[Pose], boxes: &[[f32; 4]], threshold: f32) -> Option<Vec<[f32; 4]>> {
    let refined: Vec<Option<[f32; 4]>> = poses.iter().map(|p| keypoint_box(p, threshold)).collect();
    if refined.iter().all(Option::is_none) {
        return None;
    }
    Some(refined.iter().zip(boxes).map(|(r, b)| r.unwrap_or(*b)).collect())
}

/// Pairs poses with their detections, dropping an unsure detection whose pose is not
/// confident either (see [`PeopleOptions::min_pose_score`]) and a person whose box overlaps a
/// higher-scoring one's by more than `duplicate_iou` (the same person found twice).
#[allow(clippy::neg_cmp_op_on_partial_ord)] // the negated comparisons reject NaN too
pub(crate) fn distinct_people(poses: Vec<Pose>, dets: Vec<Detection>, opts: &PeopleOptions) -> Vec<Person> {
    let mut people: Vec<Person> = Vec::new();
    for (pose, detection) in poses.into_iter().zip(dets) {
        if detection.score < opts.sure_score && !(pose.score >= opts.min_pose_score) {
            continue;
        }
        if people.iter().all(|p| box_iou(p.pose.bbox, pose.bbox) <= opts.duplicate_iou) {
            people.push(Person { pose, detection });
        }
    }
    people
}

/// Everyone in `image` after detection, with the pose step given (so frames on the GPU can use
/// [`Estimator::estimate_gpu_frame`]): each person's pose from their box (all crops in one
/// batch), refined on the keypoints' box `opts.refine_passes` times, duplicates dropped;
/// highest detection score first. No detections give an empty list.
pub(crate) fn people_from_detections(
    est: &mut Estimator,
    dets: Vec<Detection>,
    opts: &PeopleOptions,
    mut poses_for: impl FnMut(&mut Estimator, &[[f32; 4]]) -> Result<Vec<Pose>>,
) -> Result<Vec<Person>> {
    if dets.is_empty() {
        return Ok(Vec::new());
    }
    let mut boxes: Vec<[f32; 4]> = dets.iter().map(|d| d.bbox).collect();
    let mut poses = poses_for(est, &boxes)?;
    for _ in 0..opts.refine_passes {
        let Some(refined) = refined_boxes(&poses, &boxes, opts.refine_threshold) else { break };
        boxes = refined;
        poses = poses_for(est, &boxes)?;
    }
    Ok(distinct_people(poses, dets, opts))
}
