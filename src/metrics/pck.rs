//! PCK and PCKh: a joint is correct when the prediction lies within `alpha * size` of the
//! ground truth (see the [module docs](super) for the sizes).

use crate::data::Annotation;
use crate::{Error, Result};

/// What PCK distances are divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PckNorm {
    /// Ground-truth left shoulder to right hip.
    Torso,
    /// `max(w, h)` of the annotation's person box.
    Box,
    /// MPII head size (PCKh).
    Head,
}

/// PCK per joint and overall.
#[derive(Debug, Clone, PartialEq)]
pub struct PckResult {
    /// The threshold factor: correct when the distance is at most `alpha * size`.
    pub alpha: f64,
    /// What `size` is.
    pub norm: PckNorm,
    /// Correct predictions per joint.
    pub correct: Vec<usize>,
    /// Labelled ground-truth joints per joint (of people with a normalising size).
    pub total: Vec<usize>,
    /// `correct / total` per joint; None for joints never labelled.
    pub per_joint: Vec<Option<f64>>,
    /// Total correct over total labelled.
    pub mean: f64,
    /// People counted.
    pub persons: usize,
    /// People left out because their normalising size is undefined or zero.
    pub skipped: usize,
}

impl PckResult {
    /// Total correct over total labelled for the given joints (None if none is labelled).
    pub fn mean_over(&self, joints: &[usize]) -> Option<f64> {
        let (c, t) = joints
            .iter()
            .filter(|&&j| j < self.total.len())
            .fold((0usize, 0usize), |(c, t), &j| (c + self.correct[j], t + self.total[j]));
        (t > 0).then(|| c as f64 / t as f64)
    }

    /// The mean leaving out some joints (MPII: pelvis and thorax, `&[6, 7]`).
    pub fn mean_excluding(&self, joints: &[usize]) -> Option<f64> {
        let keep: Vec<usize> = (0..self.total.len()).filter(|j| !joints.contains(j)).collect();
        self.mean_over(&keep)
    }
}

/// The normalising size of one ground-truth person, if defined and positive.
pub fn norm_size(gt: &Annotation, norm: PckNorm) -> Option<f64> {
    let s = match norm {
        PckNorm::Torso => gt.joint_distance("left_shoulder", "right_hip")?,
        PckNorm::Box => gt.bbox.map(|b| b[2].max(b[3]))?,
        PckNorm::Head => gt.head_size()?,
    };
    (s.is_finite() && s > 0.0).then_some(s as f64)
}

/// PCK@`alpha`. `preds[i]` holds one `[x, y, ...]` per joint of `gts[i]` (extra components such
/// as a score are ignored). A non-finite prediction counts as wrong. Errors when the lists do not
/// correspond or when no joint can be counted.
pub fn pck<const N: usize, P: AsRef<[[f32; N]]>>(
    preds: &[P],
    gts: &[Annotation],
    alpha: f64,
    norm: PckNorm,
) -> Result<PckResult> {
    if N < 2 {
        return Err(Error::Input(format!("PCK needs predictions with x and y, got {N} values per joint")));
    }
    if preds.len() != gts.len() {
        return Err(Error::Input(format!("{} predictions for {} ground-truth people", preds.len(), gts.len())));
    }
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(Error::Input(format!("PCK threshold alpha = {alpha} must be positive")));
    }
    let k = gts.first().map_or(0, |g| g.keypoints.len());
    let mut r = PckResult {
        alpha,
        norm,
        correct: vec![0; k],
        total: vec![0; k],
        per_joint: vec![None; k],
        mean: 0.0,
        persons: 0,
        skipped: 0,
    };
    for (i, (p, g)) in preds.iter().zip(gts).enumerate() {
        let p = p.as_ref();
        if g.keypoints.len() != k {
            return Err(Error::Input(format!(
                "person {i} ({}) has {} joints, the first has {k}",
                g.id,
                g.keypoints.len()
            )));
        }
        if p.len() != k {
            return Err(Error::Input(format!("prediction {i} has {} joints, ground truth {} has {k}", p.len(), g.id)));
        }
        let Some(size) = norm_size(g, norm) else {
            r.skipped += 1;
            continue;
        };
        r.persons += 1;
        let thr = alpha * size;
        for (j, (q, t)) in p.iter().zip(&g.keypoints).enumerate() {
            if t[2] <= 0.0 {
                continue;
            }
            r.total[j] += 1;
            let (dx, dy) = (q[0] as f64 - t[0] as f64, q[1] as f64 - t[1] as f64);
            if (dx * dx + dy * dy).sqrt() <= thr {
                r.correct[j] += 1;
            }
        }
    }
    let (c, t): (usize, usize) = (r.correct.iter().sum(), r.total.iter().sum());
    if t == 0 {
        return Err(Error::Input(format!(
            "PCK: no labelled joint to count ({} people, {} without a {norm:?} size)",
            gts.len(),
            r.skipped
        )));
    }
    r.mean = c as f64 / t as f64;
    r.per_joint = r.correct.iter().zip(&r.total).map(|(&c, &t)| (t > 0).then(|| c as f64 / t as f64)).collect();
    Ok(r)
}

/// PCKh@`alpha` (0.5 for the MPII benchmark).
pub fn pckh<const N: usize, P: AsRef<[[f32; N]]>>(preds: &[P], gts: &[Annotation], alpha: f64) -> Result<PckResult> {
    pck(preds, gts, alpha, PckNorm::Head)
}
