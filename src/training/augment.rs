//! Training augmentation: one annotated person -> network input, Gaussian targets and joint
//! weights.
//!
//! The crop follows evaluation's framing (`wgpose eval --format lsp`): the LSP box (labelled
//! joints enlarged by 25%, [`box_from_keypoints`]) cut with crop padding 1.0, here multiplied by a
//! random scale (a scale above 1 shows more context, so the person looks smaller), rotated and
//! optionally mirrored. Keypoints go through the very [`CropTransform`] the pixels are warped
//! with, so they cannot disagree; after a mirror the joints also swap left and right
//! ([`Skeleton::flip_permutation`]). Heatmap coordinates are input coordinates divided by the
//! stride (continuous, pixel-centre convention of [`crate::pipeline::crop`] and
//! `autodiff::loss`). Joints that are unlabelled or land outside the heatmap get an empty
//! target and weight 0.
//!
//! Colour jitter acts on the sampled RGB in [0, 1] before ImageNet normalisation: brightness
//! (multiply), contrast (blend with the crop's mean grey) and saturation (blend with the pixel's
//! grey), each by a factor drawn from `[1 - c, 1 + c]`, applied in a random order, then clamped.

use image::RgbImage;

use crate::autodiff::gaussian_heatmaps;
use crate::data::{box_from_keypoints, LSP_BOX_ENLARGE};
use crate::error::{Error, Result};
use crate::pipeline::crop::{CropConfig, CropTransform, ImageRef, Normalization};
use crate::rng::Rng;
use crate::skeleton::Skeleton;
use crate::tensor::Tensor;

/// Default rotation range of the pose crops, in degrees (`wgpose train --rotation`).
pub const DEFAULT_ROTATION_DEG: f32 = 30.0;
/// Default scale jitter of the pose crops: scale uniform in `1 -+ this` (`--scale-jitter`).
pub const DEFAULT_SCALE_JITTER: f32 = 0.25;

/// Ranges the random augmentation draws from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Rotation uniform in `[-rotation_deg, rotation_deg]`.
    pub rotation_deg: f32,
    /// Crop scale uniform in `[scale.0, scale.1]` (multiplies the crop padding).
    pub scale: (f32, f32),
    /// Probability of a horizontal mirror.
    pub flip_prob: f32,
    /// Brightness / contrast / saturation factors uniform in `[1 - c, 1 + c]`.
    pub color: f32,
    /// Box jitter: the crop centre moves by up to this fraction of the box's width / height
    /// on each axis (a detector's boxes are loose and shifted; the pose network must cope).
    pub shift: f32,
    /// Probability of a half-body crop (upper or lower body joints only, as in HRNet), drawn
    /// only for people with at least 8 labelled joints.
    pub half_body_prob: f32,
    /// Probability of an occluder: a rectangle of 10-40% of the crop's width and height, at a
    /// random place, painted one random colour over the input (coarse dropout). Its joints stay
    /// supervised: the network learns to place what it cannot see.
    pub occlusion_prob: f32,
}

impl Default for AugmentConfig {
    /// +-30 degrees, scale 0.75-1.25, flip p = 0.5, colour +-20%.
    fn default() -> Self {
        AugmentConfig {
            rotation_deg: DEFAULT_ROTATION_DEG,
            scale: (1.0 - DEFAULT_SCALE_JITTER, 1.0 + DEFAULT_SCALE_JITTER),
            flip_prob: 0.5,
            color: 0.2,
            shift: 0.0,
            half_body_prob: 0.0,
            occlusion_prob: 0.0,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all (validation framing).
    pub(crate) fn none() -> Self {
        AugmentConfig {
            rotation_deg: 0.0,
            scale: (1.0, 1.0),
            flip_prob: 0.0,
            color: 0.0,
            shift: 0.0,
            half_body_prob: 0.0,
            occlusion_prob: 0.0,
        }
    }

    /// Words for the model card.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!(
            "rotation +-{} deg, scale {}-{}, flip {}, colour +-{}%",
            self.rotation_deg,
            self.scale.0,
            self.scale.1,
            self.flip_prob,
            (self.color * 100.0).round()
        );
        if self.shift > 0.0 {
            s += &format!(", box shift +-{}", self.shift);
        }
        if self.half_body_prob > 0.0 {
            s += &format!(", half body {}", self.half_body_prob);
        }
        if self.occlusion_prob > 0.0 {
            s += &format!(", occlusion {}", self.occlusion_prob);
        }
        s
    }
}

/// One draw of the augmentation parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentParams {
    /// Rotation of the crop content, degrees.
    pub rotation_deg: f32,
    /// Factor on the crop padding (above 1: the person looks smaller).
    pub scale: f32,
    /// Mirror the crop horizontally (left/right joints swapped).
    pub flip: bool,
    /// Brightness factor (1: unchanged).
    pub brightness: f32,
    /// Contrast factor (1: unchanged).
    pub contrast: f32,
    /// Saturation factor (1: unchanged).
    pub saturation: f32,
    /// Order of the three colour operations (a permutation of 0, 1, 2).
    pub color_order: [u8; 3],
    /// Crop centre shift as fractions of the box's width and height.
    pub shift: [f32; 2],
    /// Half-body crop: `None`, or `Some(true)` upper body / `Some(false)` lower body.
    pub half_body: Option<bool>,
    /// An occluding rectangle painted over the input, if any.
    pub occluder: Option<Occluder>,
}

/// A flat-coloured rectangle over the network input ([`AugmentConfig::occlusion_prob`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Occluder {
    /// Left, top, width, height as fractions of the input's width and height.
    pub rect: [f32; 4],
    /// RGB in [0, 1] (before normalisation).
    pub colour: [f32; 3],
}

impl Occluder {
    /// Paints the rectangle on CHW RGB in [0, 1] of `w x h`.
    pub(crate) fn paint(&self, data: &mut [f32], w: usize, h: usize) {
        let [l, t, rw, rh] = self.rect;
        let x0 = ((l * w as f32).round().max(0.0) as usize).min(w);
        let y0 = ((t * h as f32).round().max(0.0) as usize).min(h);
        let x1 = (((l + rw) * w as f32).round().max(0.0) as usize).clamp(x0, w);
        let y1 = (((t + rh) * h as f32).round().max(0.0) as usize).clamp(y0, h);
        for (c, &v) in self.colour.iter().enumerate() {
            for y in y0..y1 {
                data[c * w * h + y * w + x0..c * w * h + y * w + x1].fill(v);
            }
        }
    }
}

impl AugmentParams {
    /// The identity: evaluation framing.
    pub fn identity() -> Self {
        AugmentParams {
            rotation_deg: 0.0,
            scale: 1.0,
            flip: false,
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
            color_order: [0, 1, 2],
            shift: [0.0, 0.0],
            half_body: None,
            occluder: None,
        }
    }

    /// Draws parameters from `cfg` (a fixed number of draws, so the stream stays aligned).
    pub fn draw(rng: &mut Rng, cfg: &AugmentConfig) -> Self {
        let rot = rng.range(-1.0, 1.0) * cfg.rotation_deg;
        let scale = rng.range(cfg.scale.0, cfg.scale.1);
        let flip = rng.uniform() < cfg.flip_prob;
        let mut f = || 1.0 + rng.range(-1.0, 1.0) * cfg.color;
        let (brightness, contrast, saturation) = (f(), f(), f());
        let mut order = [0u8, 1, 2];
        for i in (1..3).rev() {
            let j = rng.below(i + 1);
            order.swap(i, j);
        }
        // Draws added later come last, and only when enabled, so that a configuration without
        // them keeps the exact stream (and batches) it had before they existed.
        let shift = if cfg.shift > 0.0 {
            [rng.range(-1.0, 1.0) * cfg.shift, rng.range(-1.0, 1.0) * cfg.shift]
        } else {
            [0.0, 0.0]
        };
        let half_body = if cfg.half_body_prob > 0.0 {
            let hb = rng.uniform();
            let upper = rng.uniform() < 0.5;
            (hb < cfg.half_body_prob).then_some(upper)
        } else {
            None
        };
        let occluder = if cfg.occlusion_prob > 0.0 {
            let on = rng.uniform() < cfg.occlusion_prob;
            let (rw, rh) = (rng.range(0.1, 0.4), rng.range(0.1, 0.4));
            let (l, t) = (rng.range(0.0, 1.0 - rw), rng.range(0.0, 1.0 - rh));
            let colour = [rng.uniform(), rng.uniform(), rng.uniform()];
            on.then_some(Occluder { rect: [l, t, rw, rh], colour })
        } else {
            None
        };
        AugmentParams {
            rotation_deg: rot,
            scale,
            flip,
            brightness,
            contrast,
            saturation,
            color_order: order,
            shift,
            half_body,
            occluder,
        }
    }
}

/// What the network trains on for one person.
#[derive(Clone, Debug)]
pub struct Sample {
    /// `[3, H, W]`, ImageNet-normalised.
    pub input: Tensor,
    /// `[K, h, w]` Gaussian targets.
    pub target: Tensor,
    /// Per joint: 1 supervised, 0 not.
    pub weights: Vec<f32>,
    /// Keypoints in heatmap coordinates after augmentation (`v = 0` for unsupervised joints),
    /// in the output joint order (left/right swapped after a flip).
    pub keypoints_hm: Vec<[f32; 3]>,
    /// The image -> input transform used.
    pub crop: CropTransform,
}

/// Geometry of the network's input and heatmaps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleShape {
    /// Network input width, pixels.
    pub input_w: usize,
    /// Network input height, pixels.
    pub input_h: usize,
    /// Heatmap width (input width over the network's stride).
    pub heatmap_w: usize,
    /// Heatmap height.
    pub heatmap_h: usize,
    /// Number of heatmaps (joints).
    pub joints: usize,
    /// Gaussian sigma in heatmap pixels.
    pub sigma: f32,
}

impl SampleShape {
    /// Input stride (input pixels per heatmap pixel).
    pub(crate) fn stride(&self) -> f32 {
        self.input_w as f32 / self.heatmap_w as f32
    }
}

/// The evaluation crop of a person (LSP box, padding `scale`, rotation and flip as given).
pub fn person_crop(
    keypoints: &[[f32; 3]],
    shape: &SampleShape,
    rotation_deg: f32,
    scale: f32,
    flip: bool,
) -> Result<CropTransform> {
    person_crop_jittered(keypoints, shape, rotation_deg, scale, flip, [0.0, 0.0])
}

/// [`person_crop`] with the box centre moved by `shift` (fractions of the box's size).
pub fn person_crop_jittered(
    keypoints: &[[f32; 3]],
    shape: &SampleShape,
    rotation_deg: f32,
    scale: f32,
    flip: bool,
    shift: [f32; 2],
) -> Result<CropTransform> {
    let bbox = box_from_keypoints(keypoints, LSP_BOX_ENLARGE)
        .ok_or_else(|| Error::Input("no labelled joint: cannot form the person box".into()))?;
    // A person whose joints all coincide yields a zero-size box; give it one pixel.
    let (w, h) = (bbox[2].max(1.0), bbox[3].max(1.0));
    let bbox = [bbox[0] + shift[0] * w, bbox[1] + shift[1] * h, w, h];
    let cfg = CropConfig::default().with_padding(scale).with_rotation(rotation_deg).with_flip(flip);
    CropTransform::from_box(bbox, shape.input_w, shape.input_h, &cfg)
}

/// Warps, jitters and normalises one person and builds its targets.
pub fn make_sample(
    image: &RgbImage,
    keypoints: &[[f32; 3]],
    skeleton: &Skeleton,
    shape: &SampleShape,
    p: &AugmentParams,
) -> Result<Sample> {
    let box_kps = match p.half_body {
        Some(upper) => half_body_keypoints(keypoints, skeleton, upper),
        None => None,
    };
    let crop =
        person_crop_jittered(box_kps.as_deref().unwrap_or(keypoints), shape, p.rotation_deg, p.scale, p.flip, p.shift)?;
    let (w, h) = (shape.input_w, shape.input_h);
    let mut data = vec![0f32; 3 * w * h];
    let unit = Normalization { mean: [0.0; 3], std: [1.0; 3] };
    crate::pipeline::crop::warp_into(&ImageRef::from(image), &crop, w, h, &unit, &mut data)?;
    color_jitter(&mut data, w * h, p);
    if let Some(o) = &p.occluder {
        o.paint(&mut data, w, h);
    }
    let norm = Normalization::IMAGENET;
    for c in 0..3 {
        for v in &mut data[c * w * h..(c + 1) * w * h] {
            *v = (*v - norm.mean[c]) / norm.std[c];
        }
    }
    let kps = map_keypoints(keypoints, skeleton, &crop, shape, p.flip);
    let (target, weights) = gaussian_heatmaps(&kps, shape.joints, shape.heatmap_h, shape.heatmap_w, shape.sigma);
    Ok(Sample { input: Tensor { shape: vec![3, h, w], data }, target, weights, keypoints_hm: kps, crop })
}

/// The keypoints a half-body crop is framed on: the upper-body (head, neck, shoulders, elbows,
/// wrists) or lower-body (hips, knees, ankles) joints, with the others unlabelled. `None` when
/// fewer than 8 joints are labelled or the chosen half has fewer than 2 (HRNet's rule), or the
/// skeleton does not name its joints that way. Targets keep every joint: those outside the
/// crop get weight 0 through `map_keypoints`.
pub fn half_body_keypoints(keypoints: &[[f32; 3]], skeleton: &Skeleton, upper: bool) -> Option<Vec<[f32; 3]>> {
    let labelled = keypoints.iter().filter(|k| k[2] > 0.0).count();
    if labelled < 8 || skeleton.joints.len() != keypoints.len() {
        return None;
    }
    let is_lower = |name: &str| ["hip", "knee", "ankle"].iter().any(|p| name.contains(p));
    let kept: Vec<[f32; 3]> = keypoints
        .iter()
        .zip(skeleton.joints.iter())
        .map(|(k, name)| if is_lower(name) != upper { *k } else { [k[0], k[1], 0.0] })
        .collect();
    (kept.iter().filter(|k| k[2] > 0.0).count() >= 2).then_some(kept)
}

/// Dataset keypoints (image pixels) -> heatmap coordinates through `crop`, with the left/right
/// swap when `flipped`; joints unlabelled or outside the heatmap come out with `v = 0`.
pub(crate) fn map_keypoints(
    keypoints: &[[f32; 3]],
    skeleton: &Skeleton,
    crop: &CropTransform,
    shape: &SampleShape,
    flipped: bool,
) -> Vec<[f32; 3]> {
    let stride = shape.stride();
    let mapped: Vec<[f32; 3]> = keypoints
        .iter()
        .map(|&[x, y, v]| {
            if !(v > 0.0 && x.is_finite() && y.is_finite()) {
                return [0.0, 0.0, 0.0];
            }
            let (u, t) = crop.map_to_input(x, y);
            let (hx, hy) = (u / stride, t / stride);
            let inside = hx >= 0.0 && hy >= 0.0 && hx < shape.heatmap_w as f32 && hy < shape.heatmap_h as f32;
            [hx, hy, if inside { v } else { 0.0 }]
        })
        .collect();
    if !flipped {
        return mapped;
    }
    // After the mirror, the person's left side is where its right side was: the joint that
    // ends up named `j` is the one that was `perm[j]`.
    let perm = skeleton.flip_permutation();
    (0..mapped.len()).map(|j| mapped[*perm.get(j).unwrap_or(&j)]).collect()
}

/// Brightness, contrast and saturation on CHW RGB in [0, 1], clamped back into [0, 1].
pub(crate) fn color_jitter(data: &mut [f32], plane: usize, p: &AugmentParams) {
    if p.brightness == 1.0 && p.contrast == 1.0 && p.saturation == 1.0 {
        return;
    }
    let gray = |r: f32, g: f32, b: f32| 0.299 * r + 0.587 * g + 0.114 * b;
    for &op in &p.color_order {
        match op {
            0 => data.iter_mut().for_each(|v| *v = (*v * p.brightness).clamp(0.0, 1.0)),
            1 => {
                let mean = (0..plane).map(|i| gray(data[i], data[plane + i], data[2 * plane + i]) as f64).sum::<f64>()
                    as f32
                    / plane.max(1) as f32;
                data.iter_mut().for_each(|v| *v = (mean + p.contrast * (*v - mean)).clamp(0.0, 1.0));
            }
            _ => {
                for i in 0..plane {
                    let g = gray(data[i], data[plane + i], data[2 * plane + i]);
                    for c in 0..3 {
                        let v = &mut data[c * plane + i];
                        *v = (g + p.saturation * (*v - g)).clamp(0.0, 1.0);
                    }
                }
            }
        }
    }
}
