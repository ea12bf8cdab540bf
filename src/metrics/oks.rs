//! Object keypoint similarity (OKS) as pycocotools computes it, and the NumPy arithmetic it
//! needs to match pycocotools to the last digits.

use crate::data::Annotation;
use crate::skeleton::COCO17;
use crate::{Error, Result};

/// COCO's per-keypoint sigmas as pycocotools defines them (`array([.26, ...]) / 10.0`), in f64
/// so results match it to the last digits.
pub fn coco_sigmas() -> [f64; 17] {
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
        .map(|s| s / 10.0)
}

/// OKS between a detection and a ground truth, flat `[x, y, v] * K` each, as pycocotools'
/// `computeOks`: `mean over labelled joints of exp(-d^2 / (2 * area * (2 sigma)^2))`; when the
/// ground truth has no labelled joint, distances are measured to its box enlarged to three times
/// its size and all joints are averaged.
pub fn oks(dt: &[f64], gt: &[f64], gt_bbox: [f64; 4], gt_area: f64, sigmas: &[f64]) -> Result<f64> {
    let k = sigmas.len();
    if k == 0 || dt.len() != 3 * k || gt.len() != 3 * k {
        return Err(Error::Input(format!(
            "OKS needs 3 x {k} values, got {} (detection) and {} (ground truth)",
            dt.len(),
            gt.len()
        )));
    }
    Ok(oks_unchecked(dt, gt, gt_bbox, gt_area, sigmas))
}

pub(super) fn oks_unchecked(dt: &[f64], gt: &[f64], bb: [f64; 4], area: f64, sigmas: &[f64]) -> f64 {
    let k = sigmas.len();
    let k1 = (0..k).filter(|&j| gt[3 * j + 2] > 0.0).count();
    let (x0, x1) = (bb[0] - bb[2], bb[0] + bb[2] * 2.0);
    let (y0, y1) = (bb[1] - bb[3], bb[1] + bb[3] * 2.0);
    let mut terms = Vec::with_capacity(k);
    for j in 0..k {
        if k1 > 0 && gt[3 * j + 2] <= 0.0 {
            continue;
        }
        let (xd, yd) = (dt[3 * j], dt[3 * j + 1]);
        let (dx, dy) = if k1 > 0 {
            (xd - gt[3 * j], yd - gt[3 * j + 1])
        } else {
            (np_max(0.0, x0 - xd) + np_max(0.0, xd - x1), np_max(0.0, y0 - yd) + np_max(0.0, yd - y1))
        };
        let var = (sigmas[j] * 2.0) * (sigmas[j] * 2.0);
        let e = (dx * dx + dy * dy) / var / (area + f64::EPSILON) / 2.0;
        terms.push((-e).exp());
    }
    pairwise_sum(&terms) / terms.len() as f64
}

/// `np.max((a, b), axis=0)`: NaN-propagating maximum.
fn np_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// NumPy's pairwise summation (what `np.sum` and `np.mean` use on float64 arrays).
pub(super) fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = -0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// OKS of a `[x, y, score]` prediction against a COCO person annotation (needs its area and box).
pub fn oks_annotation(pred: &[[f32; 3]], gt: &Annotation) -> Result<f64> {
    if gt.skeleton.len() != COCO17.len() {
        return Err(Error::Input(format!("OKS needs a COCO17 person, {} is {}", gt.id, gt.skeleton.name)));
    }
    let (Some(area), Some(bbox)) = (gt.area(), gt.bbox) else {
        return Err(Error::Input(format!("OKS needs the area and box of {}", gt.id)));
    };
    let dt: Vec<f64> = pred.iter().flat_map(|k| k.map(|v| v as f64)).collect();
    let g: Vec<f64> = gt.keypoints.iter().flat_map(|k| k.map(|v| v as f64)).collect();
    oks(&dt, &g, bbox.map(|v| v as f64), area as f64, &coco_sigmas())
}
