//! MPII Human Pose in the JSON layout HRNet and mmpose use: a list of
//! `{image, center: [x, y], scale, joints: [[x, y]] * 16, joints_vis: [16]}`, one entry per person
//! (`joints`/`joints_vis` may be absent, as in the test split).
//!
//! Coordinates: MPII's are MATLAB 1-based; like HRNet and mmpose, joints are converted to 0-based
//! pixels (minus 1). `joints_vis` 1 means labelled (MPII's `is_visible` is not in this layout) and
//! becomes COCO visibility 2; 0 (unlabelled, stored as `[-1, -1]`) becomes 0.
//!
//! Box: [`mpii_box`], HRNet's crop (centre moved down by 15 * scale, scale
//! x 1.25, side = scale * 200).
//!
//! Head size for PCKh. The official evaluation (and HRNet's, which reads the official
//! `gt_valid.mat`) uses `SC_BIAS * ||head box diagonal||` with `SC_BIAS = 0.6` (a factor meant to
//! turn the head rectangle's diagonal into the length of the head segment). This JSON has no head
//! box, so we use the head segment itself: `||head_top - upper_neck||` (factor 1.0), which is
//! how the MPII benchmark paper (Andriluka et al., CVPR 2014) defines PCKh ("50% of the head
//! segment length"). Both points are in every labelled MPII person. The two are not identical:
//! the box diagonal depends on head orientation, so PCKh figures from this fallback are close to,
//! but not exactly, the official numbers. If an entry carries a `headbox: [x1, y1, x2, y2]` (an
//! extension some converters add), the official `0.6 * diagonal` is used instead.

use std::path::Path;

use serde::Deserialize;

use super::{mpii_box, Annotation, AnnotationSet, Extra, V_MISSING, V_VISIBLE};
use crate::skeleton::MPII16;
use crate::{Error, Result};

/// The official evaluation's factor from head-box diagonal to head size.
pub(crate) const SC_BIAS: f32 = 0.6;

#[derive(Deserialize)]
struct RawEntry {
    image: String,
    center: [f64; 2],
    scale: f64,
    #[serde(default)]
    joints: Option<Vec<[f64; 2]>>,
    #[serde(default)]
    joints_vis: Option<Vec<f64>>,
    #[serde(default)]
    headbox: Option<[f64; 4]>,
}

/// Loads an HRNet-layout MPII JSON; images are `image_dir/image`.
pub fn load_mpii(json: &Path, image_dir: &Path) -> Result<AnnotationSet> {
    let name = json.display().to_string();
    let ferr = |msg: String| Error::Format { path: name.clone(), msg };
    let bytes = std::fs::read(json).map_err(|e| Error::Io { path: name.clone(), source: e })?;
    let raw: Vec<RawEntry> = serde_json::from_slice(&bytes).map_err(|e| ferr(format!("invalid MPII JSON: {e}")))?;
    let k = MPII16.len();
    let (neck, top) = (MPII16.index("upper_neck").unwrap_or(8), MPII16.index("head_top").unwrap_or(9));
    let mut set = AnnotationSet::default();
    let mut missing_seen = std::collections::HashSet::new();
    for (idx, e) in raw.into_iter().enumerate() {
        let at = |m: &str| ferr(format!("entry {idx} ({}): {m}", e.image));
        let joints = e.joints.unwrap_or_else(|| vec![[-1.0, -1.0]; k]);
        let vis = e.joints_vis.unwrap_or_else(|| vec![0.0; k]);
        if joints.len() != k || vis.len() != k {
            return Err(at(&format!("{} joints and {} joints_vis, expected {k}", joints.len(), vis.len())));
        }
        if !(e.scale.is_finite() && e.center.iter().all(|v| v.is_finite())) {
            return Err(at("non-finite centre or scale"));
        }
        let keypoints: Vec<[f32; 3]> = joints
            .iter()
            .zip(&vis)
            .map(|(p, &v)| {
                if v > 0.0 && p[0].is_finite() && p[1].is_finite() {
                    [(p[0] - 1.0) as f32, (p[1] - 1.0) as f32, V_VISIBLE]
                } else {
                    [0.0, 0.0, V_MISSING]
                }
            })
            .collect();
        let head_size = match e.headbox {
            Some(b) => Some(SC_BIAS * ((b[2] - b[0]).powi(2) + (b[3] - b[1]).powi(2)).sqrt() as f32),
            None if keypoints[neck][2] > 0.0 && keypoints[top][2] > 0.0 => {
                let (a, b) = (keypoints[neck], keypoints[top]);
                Some(((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt())
            }
            None => None,
        }
        .filter(|&h| h > 0.0);
        let center = [e.center[0] as f32, e.center[1] as f32];
        let scale = e.scale as f32;
        let image = image_dir.join(&e.image);
        if !image.is_file() {
            if missing_seen.insert(image.clone()) {
                set.missing.push(image);
            }
            continue;
        }
        set.annotations.push(Annotation {
            image,
            bbox: mpii_box(center, scale),
            keypoints,
            skeleton: &MPII16,
            id: format!("{}#{idx}", e.image),
            extra: Extra::Mpii { center, scale, head_size },
        });
    }
    Ok(set)
}
