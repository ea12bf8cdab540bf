//! Pose metrics: PCK normalised by torso, person box or head (PCKh), COCO's object keypoint
//! similarity (OKS), and COCO keypoint AP/AR computed the way pycocotools' `COCOeval` with
//! `iouType='keypoints'` computes them (checked against it by `scripts/coco_eval_check.py`).
//!
//! PCK counts only ground-truth joints with `v > 0`. A joint is correct when the prediction lies
//! within `alpha * size` of it (distance `<= alpha * size`, as HRNet's PCKh code). Sizes:
//! - [`PckNorm::Torso`]: distance between the ground-truth left shoulder and right hip (the LSP
//!   convention of this project's issue); people without both joints labelled are skipped;
//! - [`PckNorm::Box`]: `max(w, h)` of the annotation's person box (for LSP that is the labelled
//!   joints' box enlarged by 25%, for MPII HRNet's box, for COCO the annotated box);
//! - [`PckNorm::Head`]: the MPII head size (see [`crate::data::mpii`]).
//!
//! The reported `mean` is over all counted joints (total correct / total labelled), which is how
//! MPII's table weights joints. MPII's official "Mean" also leaves out pelvis and thorax:
//! `result.mean_excluding(&[6, 7])`.
//!
//! One module per metric: [`pck`](mod@pck) (PCK, PCKh), [`oks`](mod@oks) (object keypoint similarity) and
//! `coco_eval` (COCO keypoint AP/AR); everything is re-exported here, so `metrics::pck(...)`
//! and the other paths keep working.

pub(crate) mod coco_eval;
pub mod oks;
pub mod pck;

pub use coco_eval::{coco_keypoint_eval, CocoKeypointStats};
pub use oks::{coco_sigmas, oks, oks_annotation};
pub use pck::{norm_size, pck, pckh, PckNorm, PckResult};
