//! LSP (Johnson and Everingham, BMVC 2010) and LSP-extended (CVPR 2011): `root/joints.mat` and
//! `root/images/imNNNNN.jpg`.
//!
//! The two releases store `joints` differently, and their third row means opposite things:
//!
//! | release | layout of `joints` | flag = 1 means | flag = 0 means | images |
//! | --- | --- | --- | --- | --- |
//! | LSP | 3 x 14 x 2000 | occluded (still labelled) | visible | `im0001.jpg` (4 digits) |
//! | LSP-extended | 14 x 3 x 10000 | visible | not labelled (x, y are junk, often < 0) | `im00001.jpg` (5 digits) |
//!
//! [`Visibility::Auto`] picks the meaning from the layout; [`Visibility::Lsp`] and
//! [`Visibility::Lspet`] force one (for re-saved files whose layout was changed). Flags other than
//! 0 and 1 are a format error (a sign of a wrong layout or override). Mapped to COCO values:
//! LSP flag 0 -> 2, flag 1 -> 1; LSP-extended flag 1 -> 2, flag 0 -> 0 with x = y = 0. A joint
//! flagged labelled keeps its coordinates even when slightly negative (LSP-extended has six
//! visible joints a fraction of a pixel outside the image); non-finite coordinates become 0.
//!
//! Image numbers are 1-based; a range selects them inclusively (`9001..=10000`). Images are looked
//! up with the release's digit count first and the other one second. Labels whose image is not
//! on disk are not returned as annotations; their paths are listed in
//! [`AnnotationSet::missing`] (LSP-extended's images 9001-10000 were never distributed).

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::matfile::read_mat;
use super::{box_from_keypoints, Annotation, AnnotationSet, Extra, LSP_BOX_ENLARGE, V_MISSING, V_OCCLUDED, V_VISIBLE};
use crate::skeleton::LSP14;
use crate::{Error, Result};

/// What the third row of `joints` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Visibility {
    /// From the layout: 3 x 14 x N is LSP, 14 x 3 x N is LSP-extended.
    #[default]
    Auto,
    /// Original LSP: 1 = occluded, 0 = visible; every joint is labelled.
    Lsp,
    /// LSP-extended: 1 = visible, 0 = not labelled.
    Lspet,
}

/// How `joints` is laid out in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 3 x 14 x N (original LSP).
    CoordsFirst,
    /// 14 x 3 x N (LSP-extended).
    JointsFirst,
}

/// Loads LSP or LSP-extended from `root` (`joints.mat` and `images/`). `range` selects 1-based
/// image numbers (None: all labels in the file); it must lie within the labels the file has.
pub fn load_lsp(root: &Path, range: Option<RangeInclusive<usize>>, convention: Visibility) -> Result<AnnotationSet> {
    let mat_path = root.join("joints.mat");
    let name = mat_path.display().to_string();
    let ferr = |msg: String| Error::Format { path: name.clone(), msg };
    let vars = read_mat(&mat_path)?;
    let joints = vars.get("joints").ok_or_else(|| ferr("no variable `joints`".into()))?;
    let (layout, n) = layout_of(&joints.dims).ok_or_else(|| {
        ferr(format!("`joints` is {:?}; expected 3 x 14 x N (LSP) or 14 x 3 x N (LSP-extended)", joints.dims))
    })?;
    let convention = match (convention, layout) {
        (Visibility::Auto, Layout::CoordsFirst) => Visibility::Lsp,
        (Visibility::Auto, Layout::JointsFirst) => Visibility::Lspet,
        (c, _) => c,
    };
    let range = range.unwrap_or(1..=n);
    let (first, last) = (*range.start(), *range.end());
    if first == 0 || first > last || last > n {
        return Err(Error::Input(format!(
            "{name}: image range {first}..={last} is empty or outside the labelled images 1..={n}"
        )));
    }
    let at = |j: usize, c: usize, i: usize| match layout {
        Layout::CoordsFirst => joints.data[c + 3 * (j + 14 * i)],
        Layout::JointsFirst => joints.data[j + 14 * (c + 3 * i)],
    };
    let (digits, other) = match layout {
        Layout::CoordsFirst => (4, 5),
        Layout::JointsFirst => (5, 4),
    };
    let mut set = AnnotationSet::default();
    for number in first..=last {
        let i = number - 1;
        let mut kps = Vec::with_capacity(14);
        for j in 0..14 {
            let (x, y, flag) = (at(j, 0, i), at(j, 1, i), at(j, 2, i));
            if flag != 0.0 && flag != 1.0 {
                return Err(ferr(format!("image {number}, joint {j}: visibility flag {flag} is not 0 or 1")));
            }
            let v = match (convention, flag == 1.0) {
                (Visibility::Lspet, true) => V_VISIBLE,
                (Visibility::Lspet, false) => V_MISSING,
                (_, true) => V_OCCLUDED,
                (_, false) => V_VISIBLE,
            };
            kps.push(if v == V_MISSING || !x.is_finite() || !y.is_finite() {
                [0.0, 0.0, V_MISSING]
            } else {
                [x as f32, y as f32, v]
            });
        }
        let image = image_path(root, number, digits, other);
        if !image.is_file() {
            set.missing.push(image);
            continue;
        }
        set.annotations.push(Annotation {
            id: format!("im{number:0digits$}"),
            bbox: box_from_keypoints(&kps, LSP_BOX_ENLARGE),
            image,
            keypoints: kps,
            skeleton: &LSP14,
            extra: Extra::Lsp { number },
        });
    }
    Ok(set)
}

/// `root/images/im{number}.jpg` with `digits` digits, or `other` digits when only that exists.
fn image_path(root: &Path, number: usize, digits: usize, other: usize) -> PathBuf {
    let dir = root.join("images");
    let p = dir.join(format!("im{number:0digits$}.jpg"));
    if p.is_file() {
        return p;
    }
    let q = dir.join(format!("im{number:0other$}.jpg"));
    if q.is_file() {
        q
    } else {
        p
    }
}

/// The layout of `joints` and the number of people in an LSP-style `root/joints.mat`.
pub fn detect_layout(root: &Path) -> Result<(Layout, usize)> {
    let mat_path = root.join("joints.mat");
    let vars = read_mat(&mat_path)?;
    let ferr = |msg: String| Error::Format { path: mat_path.display().to_string(), msg };
    let joints = vars.get("joints").ok_or_else(|| ferr("no variable `joints`".into()))?;
    layout_of(&joints.dims)
        .ok_or_else(|| ferr(format!("`joints` is {:?}; expected 3 x 14 x N or 14 x 3 x N", joints.dims)))
}

/// MATLAB drops trailing singleton dimensions: a single person is 14 x 3 or 3 x 14.
fn layout_of(dims: &[usize]) -> Option<(Layout, usize)> {
    match dims {
        [3, 14] => Some((Layout::CoordsFirst, 1)),
        [14, 3] => Some((Layout::JointsFirst, 1)),
        [3, 14, n] => Some((Layout::CoordsFirst, *n)),
        [14, 3, n] => Some((Layout::JointsFirst, *n)),
        _ => None,
    }
}
