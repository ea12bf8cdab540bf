//! Training data for the person detector (`models::person_detector`): whole images
//! with their people's boxes, augmented by zoom, translation, rotation, mirroring and colour,
//! turned into the detector's input and its targets.
//!
//! # Targets
//!
//! `[4, h, w]` at the detector's output resolution (stride 4):
//! - channel 0: a Gaussian at each box centre (heatmap coordinates, the pipeline's pixel-centre
//!   convention), sigma `0.12 * sqrt(box w * box h)` in heatmap pixels clamped to `[1, 4]`
//!   (bigger people get wider peaks, as CenterNet's radius rule does), maximum where people
//!   overlap;
//! - channels 1, 2: the box width / input width and height / input height of the person whose
//!   Gaussian is strongest there, clamped to `[0, 1]`;
//! - channel 3: where the size channels are supervised: 1 where that Gaussian is at least 0.5
//!   (the few cells around each centre), else 0.
//!
//! # Augmentation
//!
//! The evaluation view is [`crate::pipeline::detect::letterbox`]: the image centred in a square
//! whose side is the image's longer side. Training draws that square's side times a log-uniform
//! zoom in `[zoom.0, zoom.1]` (below 1 zooms in, people look bigger), moves its centre by up to
//! `shift` of the side on each axis, rotates by up to `rotation_deg`, mirrors with probability
//! `flip_prob` and jitters colour like the pose training (`augment::color_jitter`). A
//! fraction `identity_prob` of samples keeps the exact evaluation view (colour and mirror only).
//! Boxes map through the same transform (their corners' bounds); a person whose box centre
//! leaves the input is not a target.

use std::path::PathBuf;

use image::RgbImage;

use super::augment::{color_jitter, AugmentParams};
use super::dataset::{mix_seed, Batch, BatchSource, ImageCache};
use crate::autodiff::stack_batch;
use crate::error::{Error, Result};
use crate::pipeline::crop::{warp_into, CropConfig, CropTransform, ImageRef, Normalization};
use crate::pipeline::detect::letterbox;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Target channels: centre, width, height, size mask.
pub(crate) const TARGET_CHANNELS: usize = 4;

/// One training image and the boxes `[x, y, w, h]` of its people (image pixels).
#[derive(Clone, Debug)]
pub struct DetectionImage {
    /// The image file.
    pub image: PathBuf,
    /// Its people's boxes `[x, y, w, h]`, pixels.
    pub boxes: Vec<[f32; 4]>,
}

/// Ranges the detector's augmentation draws from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DetectAugment {
    pub zoom: (f32, f32),
    pub shift: f32,
    pub rotation_deg: f32,
    pub flip_prob: f32,
    pub color: f32,
    pub identity_prob: f32,
}

impl Default for DetectAugment {
    /// Zoom 0.5-1.6 (log-uniform), shift +-0.25, rotation +-15 deg, flip 0.5, colour +-30%,
    /// 20% of samples in the evaluation view.
    fn default() -> Self {
        DetectAugment {
            zoom: (0.5, 1.6),
            shift: 0.25,
            rotation_deg: 15.0,
            flip_prob: 0.5,
            color: 0.3,
            identity_prob: 0.2,
        }
    }
}

impl DetectAugment {
    /// No augmentation: the evaluation view.
    pub(crate) fn none() -> Self {
        DetectAugment {
            zoom: (1.0, 1.0),
            shift: 0.0,
            rotation_deg: 0.0,
            flip_prob: 0.0,
            color: 0.0,
            identity_prob: 1.0,
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "zoom {}-{}, shift +-{}, rotation +-{} deg, flip {}, colour +-{}%, {}% unaugmented views",
            self.zoom.0,
            self.zoom.1,
            self.shift,
            self.rotation_deg,
            self.flip_prob,
            (self.color * 100.0).round(),
            (self.identity_prob * 100.0).round()
        )
    }
}

/// Input and output geometry of the detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectShape {
    /// Network input width, pixels.
    pub input_w: usize,
    /// Network input height, pixels.
    pub input_h: usize,
    /// Output map width (input width over the stride).
    pub map_w: usize,
    /// Output map height.
    pub map_h: usize,
}

/// The crop of one augmented view of a `img_w x img_h` image.
pub(crate) fn augmented_view(
    img_w: usize,
    img_h: usize,
    shape: &DetectShape,
    rng: &mut Rng,
    aug: &DetectAugment,
) -> Result<(CropTransform, AugmentParams)> {
    let identity = rng.uniform() < aug.identity_prob;
    let lz = rng.range(aug.zoom.0.ln(), aug.zoom.1.ln());
    let (sx, sy) = (rng.range(-1.0, 1.0), rng.range(-1.0, 1.0));
    let rot = rng.range(-1.0, 1.0) * aug.rotation_deg;
    let flip = rng.uniform() < aug.flip_prob;
    let mut c = || 1.0 + rng.range(-1.0, 1.0) * aug.color;
    let (brightness, contrast, saturation) = (c(), c(), c());
    let params = AugmentParams { flip, brightness, contrast, saturation, ..AugmentParams::identity() };
    if identity {
        let base = letterbox(img_w, img_h, shape.input_w, shape.input_h)?;
        if !flip {
            return Ok((base, params));
        }
        let cfg = CropConfig::default().with_padding(1.0).with_flip(true);
        let crop = CropTransform::from_box([0.0, 0.0, img_w as f32, img_h as f32], shape.input_w, shape.input_h, &cfg)?;
        return Ok((crop, params));
    }
    let side = img_w.max(img_h) as f32 * lz.exp();
    let centre = [img_w as f32 / 2.0 + sx * aug.shift * side, img_h as f32 / 2.0 + sy * aug.shift * side];
    let cfg = CropConfig::default().with_padding(1.0).with_rotation(rot).with_flip(flip);
    let crop = CropTransform::from_center_size(centre, [side, side], shape.input_w, shape.input_h, &cfg)?;
    Ok((crop, params))
}

/// Targets `[4, map_h, map_w]` (see the module docs) for boxes already in input pixels.
pub fn detection_targets(boxes_in: &[[f32; 4]], shape: &DetectShape) -> Tensor {
    let (w, h) = (shape.map_w, shape.map_h);
    let sx = shape.input_w as f32 / w as f32;
    let sy = shape.input_h as f32 / h as f32;
    let plane = w * h;
    let mut t = Tensor::zeros(vec![TARGET_CHANNELS, h, w]);
    for b in boxes_in {
        let (cx, cy) = ((b[0] + b[2] / 2.0) / sx, (b[1] + b[3] / 2.0) / sy);
        if !(cx >= 0.0 && cy >= 0.0 && cx < w as f32 && cy < h as f32) || b[2] <= 0.0 || b[3] <= 0.0 {
            continue;
        }
        let sigma = (0.12 * ((b[2] / sx) * (b[3] / sy)).sqrt()).clamp(1.0, 4.0);
        let s2 = 2.0 * sigma * sigma;
        let fw = (b[2] / shape.input_w as f32).clamp(0.0, 1.0);
        let fh = (b[3] / shape.input_h as f32).clamp(0.0, 1.0);
        for i in 0..h {
            let dy = i as f32 + 0.5 - cy;
            for j in 0..w {
                let dx = j as f32 + 0.5 - cx;
                let g = (-(dx * dx + dy * dy) / s2).exp();
                let p = i * w + j;
                if g > t.data[p] {
                    t.data[p] = g;
                    if g >= 0.5 {
                        t.data[plane + p] = fw;
                        t.data[2 * plane + p] = fh;
                        t.data[3 * plane + p] = 1.0;
                    }
                }
            }
        }
    }
    t
}

/// Boxes `[x, y, w, h]` in image pixels -> the input's pixels through `crop` (bounds of the
/// mapped corners).
pub fn boxes_to_input(boxes: &[[f32; 4]], crop: &CropTransform) -> Vec<[f32; 4]> {
    boxes
        .iter()
        .map(|b| {
            let pts = [
                crop.map_to_input(b[0], b[1]),
                crop.map_to_input(b[0] + b[2], b[1]),
                crop.map_to_input(b[0], b[1] + b[3]),
                crop.map_to_input(b[0] + b[2], b[1] + b[3]),
            ];
            let x0 = pts.iter().map(|p| p.0).fold(f32::INFINITY, f32::min);
            let x1 = pts.iter().map(|p| p.0).fold(f32::NEG_INFINITY, f32::max);
            let y0 = pts.iter().map(|p| p.1).fold(f32::INFINITY, f32::min);
            let y1 = pts.iter().map(|p| p.1).fold(f32::NEG_INFINITY, f32::max);
            [x0, y0, x1 - x0, y1 - y0]
        })
        .collect()
}

/// The detector's input `[3, H, W]` (ImageNet-normalised, colour-jittered) and targets for one
/// view of `image`.
pub(crate) fn detection_sample(
    image: &RgbImage,
    boxes: &[[f32; 4]],
    crop: &CropTransform,
    params: &AugmentParams,
    shape: &DetectShape,
) -> Result<(Tensor, Tensor)> {
    let (w, h) = (shape.input_w, shape.input_h);
    let mut data = vec![0f32; 3 * w * h];
    let unit = Normalization { mean: [0.0; 3], std: [1.0; 3] };
    warp_into(&ImageRef::from(image), crop, w, h, &unit, &mut data)?;
    color_jitter(&mut data, w * h, params);
    let norm = Normalization::IMAGENET;
    for c in 0..3 {
        for v in &mut data[c * w * h..(c + 1) * w * h] {
            *v = (*v - norm.mean[c]) / norm.std[c];
        }
    }
    let target = detection_targets(&boxes_to_input(boxes, crop), shape);
    Ok((Tensor { shape: vec![3, h, w], data }, target))
}

/// Whole images to train the detector on.
pub(crate) struct DetectionSet {
    pub images: Vec<DetectionImage>,
    pub shape: DetectShape,
    pub augment: DetectAugment,
    pub cache: ImageCache,
}

impl DetectionSet {
    pub(crate) fn new(
        images: Vec<DetectionImage>,
        shape: DetectShape,
        augment: DetectAugment,
        cache_bytes: usize,
    ) -> Self {
        DetectionSet { images, shape, augment, cache: ImageCache::new(cache_bytes) }
    }
}

impl BatchSource for DetectionSet {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn batch(&self, seed: u64, epoch: usize, order: &[usize], positions: std::ops::Range<usize>) -> Result<Batch> {
        let mut inputs = Vec::with_capacity(positions.len());
        let mut targets = Vec::with_capacity(positions.len());
        let mut indices = Vec::new();
        for pos in positions {
            let idx = *order.get(pos).ok_or_else(|| Error::Input(format!("batch position {pos} out of range")))?;
            let item = &self.images[idx];
            let img = self.cache.get(&item.image)?;
            let mut rng = Rng::new(mix_seed(&[seed, epoch as u64, pos as u64, 0xDE7]));
            let (crop, p) =
                augmented_view(img.width() as usize, img.height() as usize, &self.shape, &mut rng, &self.augment)?;
            let (x, t) = detection_sample(&img, &item.boxes, &crop, &p, &self.shape)?;
            inputs.push(x);
            targets.push(t);
            indices.push(idx);
        }
        let n = inputs.len();
        Ok(Batch { input: stack_batch(&inputs)?, target: stack_batch(&targets)?, weights: vec![1.0; n * 3], indices })
    }
}

/// One [`DetectionImage`] per image file, holding the boxes of all its people that have one
/// (LSPET has one annotated person per image; COCO several).
pub(crate) fn images_with_boxes(people: &[crate::data::Annotation]) -> Vec<DetectionImage> {
    let mut out: Vec<DetectionImage> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for a in people {
        let Some(b) = a.bbox else { continue };
        let i = *index.entry(a.image.clone()).or_insert_with(|| {
            out.push(DetectionImage { image: a.image.clone(), boxes: Vec::new() });
            out.len() - 1
        });
        out[i].boxes.push(b);
    }
    out
}

/// Labelled joints from which a COCO person's box is their joints' LSP box (as LSPET's boxes are
/// made); fewer, and COCO's own person box stands in.
const COCO_MIN_JOINTS_FOR_BOX: usize = 4;

/// Every image of a COCO file that exists on disk and has people, with a box per non-crowd
/// person in the detector's convention (the LSP box: labelled joints' extent enlarged 25%, or
/// the COCO box when fewer than 4 joints are labelled): extra multi-person examples, where an
/// LSPET image labels one person even when several are in it.
pub fn coco_detection_images(ds: &crate::data::coco::CocoDataset) -> Vec<DetectionImage> {
    use crate::data::coco::PERSON_CATEGORY;
    let mut out = Vec::new();
    for im in ds.images.iter().filter(|i| i.exists) {
        let boxes: Vec<[f32; 4]> = ds
            .annotations
            .iter()
            .filter(|a| a.image_id == im.id && a.category_id == PERSON_CATEGORY && !a.iscrowd)
            .filter_map(|a| {
                let kps: Vec<[f32; 3]> =
                    a.keypoints.chunks_exact(3).map(|k| [k[0] as f32, k[1] as f32, k[2] as f32]).collect();
                let labelled = kps.iter().filter(|k| k[2] > 0.0).count();
                let from_joints = (labelled >= COCO_MIN_JOINTS_FOR_BOX)
                    .then(|| crate::data::box_from_keypoints(&kps, crate::data::LSP_BOX_ENLARGE))
                    .flatten();
                let b = from_joints.unwrap_or(a.bbox.map(|v| v as f32));
                (b.iter().all(|v| v.is_finite()) && b[2] > 1.0 && b[3] > 1.0).then_some(b)
            })
            .collect();
        if !boxes.is_empty() {
            out.push(DetectionImage { image: im.path.clone(), boxes });
        }
    }
    out
}

/// Validation images for the detector: the evaluation view ([`letterbox`]), box recall and AP.
pub(crate) struct DetectValSet {
    pub images: Vec<DetectionImage>,
    pub shape: DetectShape,
    pub detect: crate::pipeline::detect::DetectConfig,
    cache: ImageCache,
}

impl DetectValSet {
    /// At most `limit` images, evenly spaced.
    pub(crate) fn new(images: Vec<DetectionImage>, shape: DetectShape, limit: Option<usize>) -> Self {
        let n = limit.unwrap_or(usize::MAX).min(images.len());
        let picked =
            if n == images.len() { images } else { (0..n).map(|i| images[i * images.len() / n].clone()).collect() };
        // A low threshold: AP integrates over every score.
        let detect = crate::pipeline::detect::DetectConfig { score_threshold: 0.05, ..Default::default() };
        DetectValSet { images: picked, shape, detect, cache: ImageCache::new(usize::MAX) }
    }

    /// Detections of `graph` on every validation image (`logits`: outputs are pre-sigmoid).
    pub(crate) fn detections(
        &self,
        graph: &crate::graph::Graph,
        batch: usize,
        logits: bool,
    ) -> Result<Vec<Vec<crate::pipeline::detect::Detection>>> {
        let mut all = Vec::with_capacity(self.images.len());
        for chunk in self.images.chunks(batch.max(1)) {
            let mut inputs = Vec::new();
            let mut crops = Vec::new();
            for item in chunk {
                let img = self.cache.get(&item.image)?;
                let crop =
                    letterbox(img.width() as usize, img.height() as usize, self.shape.input_w, self.shape.input_h)?;
                let (x, _) = detection_sample(&img, &[], &crop, &AugmentParams::identity(), &self.shape)?;
                inputs.push(x);
                crops.push(crop);
            }
            let outs = crate::cpu::run(graph, &[stack_batch(&inputs)?])?;
            let mut maps = outs.into_iter().last().ok_or_else(|| Error::Graph("the graph has no output".into()))?;
            if logits {
                maps.data.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
            }
            all.extend(crate::pipeline::detect::decode_detection_batch(&maps, &crops, &self.detect)?);
        }
        Ok(all)
    }

    /// Box AP and recall at IoU 0.5.
    pub(crate) fn metrics(
        &self,
        graph: &crate::graph::Graph,
        batch: usize,
        logits: bool,
    ) -> Result<crate::pipeline::detect::BoxMetrics> {
        let dets = self.detections(graph, batch, logits)?;
        let gts: Vec<Vec<[f32; 4]>> = self.images.iter().map(|i| i.boxes.clone()).collect();
        crate::pipeline::detect::box_ap(&dets, &gts, 0.5)
    }
}
