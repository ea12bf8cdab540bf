//! Pose datasets in their original file formats: LSP and LSP-extended (`joints.mat`), COCO person
//! keypoints (JSON) and MPII in the HRNet JSON layout, all loaded into one [`Annotation`] type.
//!
//! Conventions shared by every loader:
//! - keypoints are `[x, y, v]` in image pixels with COCO's visibility values: `0` missing or
//!   unlabelled (its x and y are set to 0 and must not be used), `1` labelled but occluded,
//!   `2` labelled and visible. Metrics only count joints with `v > 0`.
//! - coordinates are kept as the file stores them, except MPII, which follows HRNet/mmpose and
//!   converts MATLAB's 1-based pixels to 0-based (subtracts 1).
//! - a person box `[x, y, w, h]` follows each benchmark's rule: LSP the box of the labelled joints
//!   enlarged by 25% ([`box_from_keypoints`] with [`LSP_BOX_ENLARGE`]), MPII the HRNet box from
//!   centre and scale ([`mpii_box`]), COCO the annotated `bbox` as given.
//! - loaders return annotations only for images present on disk, and list the image files that
//!   are labelled but absent (LSP-extended ships labels for 10000 images but only 9000 images).

use std::ops::RangeInclusive;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::skeleton::Skeleton;

pub mod coco;
pub mod lsp;
pub mod matfile;
pub mod mpii;

pub use coco::{load_coco, read_coco_results, write_coco_results, CocoDataset, CocoResult};
pub use lsp::load_lsp;
pub use mpii::load_mpii;

/// An image range `A..B` (or `A..=B`), 1-based and inclusive, as `wgpose eval --range` and
/// `wgpose-train --range` / `--val` read it.
pub fn parse_range(s: &str) -> Result<RangeInclusive<usize>> {
    let bad = || Error::Input(format!("range `{s}` is not A..B"));
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let a: usize = a.trim().parse().map_err(|_| bad())?;
    let b: usize = b.trim().trim_start_matches('=').parse().map_err(|_| bad())?;
    if a == 0 || b < a {
        return Err(Error::Input(format!("range `{s}` must satisfy 1 <= A <= B")));
    }
    Ok(a..=b)
}

/// Visibility value of a missing or unlabelled joint.
pub(crate) const V_MISSING: f32 = 0.0;
/// Visibility value of a joint that is labelled but occluded.
pub(crate) const V_OCCLUDED: f32 = 1.0;
/// Visibility value of a labelled, visible joint.
pub(crate) const V_VISIBLE: f32 = 2.0;

/// LSP's person box: the box of the labelled joints enlarged by 25% about its centre.
pub const LSP_BOX_ENLARGE: f32 = 1.25;
/// HRNet's pixel standard: an MPII `scale` of 1 is a 200-pixel person height.
pub(crate) const PIXEL_STD: f32 = 200.0;

/// One annotated person.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// The image file.
    pub image: PathBuf,
    /// `[x, y, v]` per joint of `skeleton`, visibility as in the module docs.
    pub keypoints: Vec<[f32; 3]>,
    /// Person box `[x, y, w, h]` by the dataset's rule; None when it cannot be formed.
    pub bbox: Option<[f32; 4]>,
    /// The joint order of `keypoints`.
    pub skeleton: &'static Skeleton,
    /// A unique name: `im00042` (LSP), the annotation id (COCO), `image.jpg#index` (MPII).
    pub id: String,
    /// What only some datasets have.
    pub extra: Extra,
}

/// Dataset-specific fields of an [`Annotation`].
#[derive(Debug, Clone, PartialEq)]
pub enum Extra {
    /// LSP / LSP-extended: the 1-based image number.
    Lsp {
        /// The 1-based image number (`im00042` is 42).
        number: usize,
    },
    /// COCO: what OKS and the results file need.
    Coco {
        /// The image's id.
        image_id: u64,
        /// The annotation's id.
        ann_id: u64,
        /// Segmentation area in square pixels (OKS's scale).
        area: f32,
        /// A crowd region (never a training person).
        iscrowd: bool,
        /// Labelled keypoints, as the file states.
        num_keypoints: u32,
    },
    /// MPII: centre and scale as in the file (1-based, not adjusted), and the PCKh head size in
    /// pixels when it can be formed (see [`mpii`]).
    Mpii {
        /// Person centre `[x, y]` in pixels, as in the file.
        center: [f32; 2],
        /// Person scale: box height over 200 pixels, as in the file.
        scale: f32,
        /// The PCKh head size in pixels, when the head box exists.
        head_size: Option<f32>,
    },
}

impl Annotation {
    /// Whether joint `j` is labelled (`v > 0`).
    pub(crate) fn is_labelled(&self, j: usize) -> bool {
        self.keypoints.get(j).is_some_and(|k| k[2] > 0.0)
    }

    /// Number of labelled joints.
    pub fn num_labelled(&self) -> usize {
        self.keypoints.iter().filter(|k| k[2] > 0.0).count()
    }

    /// The PCKh head size (MPII only).
    pub fn head_size(&self) -> Option<f32> {
        match self.extra {
            Extra::Mpii { head_size, .. } => head_size,
            _ => None,
        }
    }

    /// The segmentation area OKS normalises by (COCO only).
    pub(crate) fn area(&self) -> Option<f32> {
        match self.extra {
            Extra::Coco { area, .. } => Some(area),
            _ => None,
        }
    }

    /// The COCO image id, for writing results.
    pub fn coco_image_id(&self) -> Option<u64> {
        match self.extra {
            Extra::Coco { image_id, .. } => Some(image_id),
            _ => None,
        }
    }

    /// Distance between two labelled joints named `a` and `b`, if both exist and are labelled.
    pub(crate) fn joint_distance(&self, a: &str, b: &str) -> Option<f32> {
        let (i, j) = (self.skeleton.index(a)?, self.skeleton.index(b)?);
        if !self.is_labelled(i) || !self.is_labelled(j) {
            return None;
        }
        let (p, q) = (self.keypoints[i], self.keypoints[j]);
        Some(((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt())
    }
}

/// Annotations of images present on disk, and the labelled images that are not.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AnnotationSet {
    /// The people of the images that exist, in file order.
    pub annotations: Vec<Annotation>,
    /// Image files that have labels but do not exist (their annotations are left out).
    pub missing: Vec<PathBuf>,
}

/// The box of the labelled (`v > 0`, finite) joints, scaled by `enlarge` about its centre
/// (`1.25` for LSP's "enlarged by 25%"). None when no joint is labelled or the joints span no
/// extent (a single point), since such a box can neither crop nor normalise.
pub fn box_from_keypoints(kps: &[[f32; 3]], enlarge: f32) -> Option<[f32; 4]> {
    let mut lo = [f32::INFINITY; 2];
    let mut hi = [f32::NEG_INFINITY; 2];
    for k in kps.iter().filter(|k| k[2] > 0.0 && k[0].is_finite() && k[1].is_finite()) {
        for d in 0..2 {
            lo[d] = lo[d].min(k[d]);
            hi[d] = hi[d].max(k[d]);
        }
    }
    if lo[0] > hi[0] {
        return None;
    }
    let (w, h) = (hi[0] - lo[0], hi[1] - lo[1]);
    if w.max(h) <= 0.0 || !enlarge.is_finite() || enlarge <= 0.0 {
        return None;
    }
    let (cx, cy) = ((lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0);
    let (w, h) = (w * enlarge, h * enlarge);
    Some([cx - w / 2.0, cy - h / 2.0, w, h])
}

/// The square box of side `scale * 200` centred on `center` (HRNet's centre/scale convention).
pub fn box_from_center_scale(center: [f32; 2], scale: f32) -> [f32; 4] {
    let side = scale * PIXEL_STD;
    [center[0] - side / 2.0, center[1] - side / 2.0, side, side]
}

/// MPII's person box as HRNet crops it, from the file's centre and scale: the centre moved down
/// by `15 * scale` pixels, the scale enlarged by 1.25 "to avoid cropping limbs", then converted to
/// 0-based pixels; the box side is `1.25 * scale * 200`. None for HRNet's "no centre" marker
/// (`center[0] == -1`) or a non-positive scale.
pub fn mpii_box(center: [f32; 2], scale: f32) -> Option<[f32; 4]> {
    let finite = center[0].is_finite() && center[1].is_finite() && scale.is_finite();
    if !finite || center[0] == -1.0 || scale <= 0.0 {
        return None;
    }
    let c = [center[0] - 1.0, center[1] + 15.0 * scale - 1.0];
    Some(box_from_center_scale(c, scale * 1.25))
}
