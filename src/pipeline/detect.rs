//! Person detection around the detector network (`models::person_detector`): the whole
//! image letterboxed into the detector's input, its three maps decoded into person boxes
//! (centre peaks, sub-pixel refined, sizes read at the peak), non-maximum suppression, and the
//! box metrics (recall and average precision at an IoU threshold).
//!
//! Boxes are `[x, y, w, h]` in image pixels, in the pose crop's convention (LSP boxes: the
//! labelled joints' extent enlarged by 25%), so a detection can be handed to the pose
//! estimator as it is.

use super::crop::{CropConfig, CropTransform};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A detected person.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// `[x, y, w, h]` in image pixels.
    pub bbox: [f32; 4],
    /// Centre-heatmap peak value in `[0, 1]`.
    pub score: f32,
}

/// How detections are picked from the maps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectConfig {
    /// Minimum centre-peak value of a detection.
    pub score_threshold: f32,
    /// Boxes overlapping a higher-scoring one by more than this IoU are dropped.
    pub nms_iou: f32,
    /// At most this many people per image (highest scores first).
    pub max_people: usize,
}

impl Default for DetectConfig {
    /// Threshold 0.1, NMS IoU 0.5, at most 10 people. Detections below 0.4 must also have a
    /// confident pose to count as people ([`crate::detector::PeopleOptions::sure_score`]).
    fn default() -> Self {
        DetectConfig { score_threshold: 0.1, nms_iou: 0.5, max_people: 10 }
    }
}

impl DetectConfig {
    /// Errors ([`Error::Input`]) when the threshold is outside [0, 1], the IoU outside (0, 1] or
    /// `max_people` outside 1..=1000.
    pub fn check(&self) -> Result<()> {
        if !(self.score_threshold.is_finite() && (0.0..=1.0).contains(&self.score_threshold)) {
            return Err(Error::Input(format!("detection threshold must be in [0, 1], got {}", self.score_threshold)));
        }
        if !(self.nms_iou.is_finite() && self.nms_iou > 0.0 && self.nms_iou <= 1.0) {
            return Err(Error::Input(format!("NMS IoU must be in (0, 1], got {}", self.nms_iou)));
        }
        if self.max_people == 0 || self.max_people > 1000 {
            return Err(Error::Input(format!("max people must be in 1..=1000, got {}", self.max_people)));
        }
        Ok(())
    }
}

/// The detector's view of a whole `img_w x img_h` image: the image centred in an
/// `in_w x in_h` input, scaled to fit (the longer side fills the input), the rest padding.
pub fn letterbox(img_w: usize, img_h: usize, in_w: usize, in_h: usize) -> Result<CropTransform> {
    if img_w == 0 || img_h == 0 {
        return Err(Error::Input(format!("cannot detect people in an empty {img_w}x{img_h} image")));
    }
    let cfg = CropConfig::default().with_padding(1.0);
    CropTransform::from_box([0.0, 0.0, img_w as f32, img_h as f32], in_w, in_h, &cfg)
}

/// Intersection over union of two `[x, y, w, h]` boxes (0 for empty boxes).
pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let ih = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let inter = iw * ih;
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy non-maximum suppression: highest score first, dropping boxes that overlap a kept one
/// by more than `iou`; at most `max` kept.
pub fn nms(mut dets: Vec<Detection>, iou: f32, max: usize) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if kept.len() >= max {
            break;
        }
        if kept.iter().all(|k| box_iou(k.bbox, d.bbox) <= iou) {
            kept.push(d);
        }
    }
    kept
}

/// Bilinear sample of an `h x w` map at continuous coordinates (pixel centres at `i + 0.5`),
/// clamped at the border.
fn bilinear(map: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    let fx = (x - 0.5).clamp(0.0, (w - 1) as f32);
    let fy = (y - 0.5).clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
    let v = |xx: usize, yy: usize| map[yy * w + xx];
    (1.0 - ty) * ((1.0 - tx) * v(x0, y0) + tx * v(x1, y0)) + ty * ((1.0 - tx) * v(x0, y1) + tx * v(x1, y1))
}

/// Sub-pixel offset of a peak along one axis from its two neighbours (vertex of the parabola
/// through the three log-values, limited to half a pixel).
fn parabola_offset(left: f32, centre: f32, right: f32) -> f32 {
    let l = left.max(1e-6).ln();
    let c = centre.max(1e-6).ln();
    let r = right.max(1e-6).ln();
    let den = l - 2.0 * c + r;
    if den < -1e-6 {
        (0.5 * (l - r) / den).clamp(-0.5, 0.5)
    } else {
        0.0
    }
}

/// Detections of one image from the detector's `[3, h, w]` maps (probabilities: centre, width
/// and height as fractions of the input), through the crop `crop` the input was cut with
/// (usually [`letterbox`]).
#[allow(clippy::neg_cmp_op_on_partial_ord)] // the negated comparisons reject NaN too
pub fn decode_detections(
    maps: &[f32],
    h: usize,
    w: usize,
    crop: &CropTransform,
    cfg: &DetectConfig,
) -> Result<Vec<Detection>> {
    cfg.check()?;
    if h == 0 || w == 0 || maps.len() != 3 * h * w {
        return Err(Error::Input(format!("detector maps of {} values are not 3x{h}x{w}", maps.len())));
    }
    let (in_w, in_h) = crop.out_size();
    let stride_x = in_w as f32 / w as f32;
    let stride_y = in_h as f32 / h as f32;
    let plane = h * w;
    let (centre, sw, sh) = (&maps[..plane], &maps[plane..2 * plane], &maps[2 * plane..]);
    let at = |x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0.0
        } else {
            centre[y as usize * w + x as usize]
        }
    };
    let mut dets = Vec::new();
    for y in 0..h as isize {
        for x in 0..w as isize {
            let v = at(x, y);
            // NaN fails this test too: a broken map yields no detection rather than garbage.
            if !(v >= cfg.score_threshold) {
                continue;
            }
            // A peak: no 8-neighbour is larger (ties broken towards the first in scan order).
            let mut peak = true;
            'n: for dy in -1..=1isize {
                for dx in -1..=1isize {
                    if (dx, dy) == (0, 0) {
                        continue;
                    }
                    let u = at(x + dx, y + dy);
                    let before = dy < 0 || (dy == 0 && dx < 0);
                    if u > v || (before && u == v) {
                        peak = false;
                        break 'n;
                    }
                }
            }
            if !peak {
                continue;
            }
            let cx = x as f32 + 0.5 + parabola_offset(at(x - 1, y), v, at(x + 1, y));
            let cy = y as f32 + 0.5 + parabola_offset(at(x, y - 1), v, at(x, y + 1));
            let bw = bilinear(sw, w, h, cx, cy).clamp(0.0, 1.0) * in_w as f32;
            let bh = bilinear(sh, w, h, cx, cy).clamp(0.0, 1.0) * in_h as f32;
            if !(bw > 0.0 && bh > 0.0) {
                continue;
            }
            let (ix, iy) = (cx * stride_x, cy * stride_y);
            // The box's corners in the image (the crop may rotate: take the bounds).
            let corners = [
                crop.map_to_image(ix - bw / 2.0, iy - bh / 2.0),
                crop.map_to_image(ix + bw / 2.0, iy - bh / 2.0),
                crop.map_to_image(ix - bw / 2.0, iy + bh / 2.0),
                crop.map_to_image(ix + bw / 2.0, iy + bh / 2.0),
            ];
            let x0 = corners.iter().map(|c| c.0).fold(f32::INFINITY, f32::min);
            let x1 = corners.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
            let y0 = corners.iter().map(|c| c.1).fold(f32::INFINITY, f32::min);
            let y1 = corners.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
            dets.push(Detection { bbox: [x0, y0, x1 - x0, y1 - y0], score: v.min(1.0) });
        }
    }
    Ok(nms(dets, cfg.nms_iou, cfg.max_people))
}

/// [`decode_detections`] for every image of a `[N, 3, h, w]` batch, one crop per image.
pub(crate) fn decode_detection_batch(
    maps: &Tensor,
    crops: &[CropTransform],
    cfg: &DetectConfig,
) -> Result<Vec<Vec<Detection>>> {
    let [n, c, h, w] = maps.nchw()?;
    if c != 3 || n != crops.len() {
        return Err(Error::Input(format!(
            "detector output {:?} does not match {} image(s) of 3 maps",
            maps.shape,
            crops.len()
        )));
    }
    (0..n).map(|i| decode_detections(&maps.data[i * 3 * h * w..(i + 1) * 3 * h * w], h, w, &crops[i], cfg)).collect()
}

/// Box detection quality over a set of images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxMetrics {
    /// Average precision (area under the interpolated precision-recall curve, all points).
    pub ap: f64,
    /// Fraction of ground-truth boxes matched by some detection.
    pub recall: f64,
    /// Ground-truth boxes.
    pub gt: usize,
    /// Detections.
    pub detections: usize,
}

/// Recall and AP of `dets` against `gts` (per image) at IoU `iou` (PASCAL VOC style: every
/// detection, highest score first, matches the unmatched ground truth it overlaps most, if that
/// overlap reaches `iou`; duplicates are false positives).
pub fn box_ap(dets: &[Vec<Detection>], gts: &[Vec<[f32; 4]>], iou: f32) -> Result<BoxMetrics> {
    if dets.len() != gts.len() {
        return Err(Error::Input(format!("{} detection lists for {} images", dets.len(), gts.len())));
    }
    let n_gt: usize = gts.iter().map(Vec::len).sum();
    let mut all: Vec<(f32, usize, [f32; 4])> =
        dets.iter().enumerate().flat_map(|(i, d)| d.iter().map(move |d| (d.score, i, d.bbox))).collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut used: Vec<Vec<bool>> = gts.iter().map(|g| vec![false; g.len()]).collect();
    let mut tp = Vec::with_capacity(all.len());
    for &(_, i, b) in &all {
        let best = gts[i]
            .iter()
            .enumerate()
            .filter(|(j, _)| !used[i][*j])
            .map(|(j, g)| (j, box_iou(b, *g)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((j, o)) if o >= iou => {
                used[i][j] = true;
                tp.push(true);
            }
            _ => tp.push(false),
        }
    }
    let matched = tp.iter().filter(|&&t| t).count();
    // Precision-recall points, precision made monotone from the right, area by recall steps.
    let mut prec = Vec::with_capacity(tp.len());
    let mut rec = Vec::with_capacity(tp.len());
    let mut hits = 0usize;
    for (k, &t) in tp.iter().enumerate() {
        hits += t as usize;
        prec.push(hits as f64 / (k + 1) as f64);
        rec.push(if n_gt > 0 { hits as f64 / n_gt as f64 } else { 0.0 });
    }
    for k in (0..prec.len().saturating_sub(1)).rev() {
        prec[k] = prec[k].max(prec[k + 1]);
    }
    let mut ap = 0.0;
    let mut last_r = 0.0;
    for k in 0..prec.len() {
        if rec[k] > last_r {
            ap += (rec[k] - last_r) * prec[k];
            last_r = rec[k];
        }
    }
    Ok(BoxMetrics {
        ap,
        recall: if n_gt > 0 { matched as f64 / n_gt as f64 } else { 0.0 },
        gt: n_gt,
        detections: all.len(),
    })
}
