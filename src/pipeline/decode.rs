//! Heatmaps to keypoints: per-joint argmax with sub-pixel refinement (the classic quarter-pixel
//! step, or DARK), and the flip test.
//!
//! # Coordinates
//!
//! Keypoints come out in *continuous heatmap coordinates* (see [`crop`](super::crop)): heatmap
//! pixel `(i, j)` covers `[i, i + 1) x [j, j + 1)`, so a peak exactly on that pixel is at
//! `(i + 0.5, j + 0.5)`. [`CropTransform::map_heatmap_to_image`] with the network's stride (4)
//! turns them into image coordinates; [`Keypoint::to_image`] does it for a keypoint. For this to
//! be unbiased, training targets must use the same convention: a joint at input coordinate `p`
//! gets its Gaussian centred at heatmap coordinate `p / stride`, i.e. at index `p / stride - 0.5`.
//!
//! # Confidence
//!
//! The score is the heatmap's maximum value clamped into [0, 1]. For sigmoid heatmaps it is the
//! peak probability already; for linear heatmaps (trained against unit-peak Gaussians with MSE)
//! the raw maximum approximates the same thing but can leave the range, so it is clamped.
//!
//! # Non-finite values
//!
//! A map holding NaN or an infinity decodes to a defined result instead of an error, so one bad
//! joint does not drop a whole person: score 0 at the map centre `(W / 2, H / 2)`.
//!
//! # DARK on sigmoid heatmaps
//!
//! DARK (Zhang et al., CVPR 2020) assumes the heatmap is a Gaussian, so its log is a quadratic
//! whose Newton step from the argmax lands on the true peak. A sigmoid head trained with a
//! cross-entropy loss against Gaussian targets (FasterPose's RCE loss is binary cross-entropy
//! with Gaussian soft labels) is minimised by probabilities *equal* to the targets, so the
//! probability map is the Gaussian and DARK is applied to it exactly as to a linear heatmap
//! (smooth, log, Taylor). The logit `log p - log(1 - p)` is not quadratic: near a peak close to 1
//! the `log(1 - p)` term dominates and diverges, sharpening the peak arbitrarily and making
//! the second derivatives meaningless. What differs for sigmoid maps is only that the values are
//! already in (0, 1), so the log's floor never bites on a sane peak.

use super::crop::CropTransform;
use crate::error::{Error, Result};
use crate::skeleton::Skeleton;
use crate::tensor::Tensor;

/// A decoded joint: position (heatmap or image coordinates, depending on the stage) and
/// confidence in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Keypoint {
    /// Horizontal position (pixels of the image or heatmap, see the type's docs).
    pub x: f32,
    /// Vertical position, same units as `x`.
    pub y: f32,
    /// Confidence in [0, 1]: the heatmap's peak value clamped (a probability for sigmoid
    /// heatmaps, an approximation of one for linear heatmaps); 0 for a map with non-finite values.
    pub score: f32,
}

impl Keypoint {
    /// This heatmap-coordinate keypoint in image coordinates, for a heatmap `stride` input
    /// pixels per heatmap pixel, through the crop the input was cut with.
    pub fn to_image(self, crop: &CropTransform, stride: f32) -> Keypoint {
        let (x, y) = crop.map_heatmap_to_image(self.x, self.y, stride);
        Keypoint { x, y, score: self.score }
    }
}

/// What the network's heatmaps are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeatmapKind {
    /// Linear outputs regressed onto Gaussians (MSE): hourglass, SimpleBaseline, LDCRN.
    Linear,
    /// Probabilities after a sigmoid (FasterPose's low-resolution head).
    Sigmoid,
}

/// Sub-pixel refinement after the argmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Refinement {
    /// The argmax pixel's centre.
    None,
    /// A quarter pixel towards the higher neighbour along each axis (Newell et al.; HRNet).
    Quarter,
    /// DARK with the training Gaussian's sigma, in heatmap pixels (2 for 64x48 maps).
    Dark {
        /// Standard deviation of the training Gaussians, in heatmap pixels.
        sigma: f32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
/// How heatmaps are decoded: what they are and how the argmax is refined.
pub struct DecodeConfig {
    /// What the heatmaps are (recorded from the network's output; both kinds decode alike, see
    /// the module docs).
    pub kind: HeatmapKind,
    /// Sub-pixel refinement after the argmax.
    pub refinement: Refinement,
}

impl DecodeConfig {
    /// Quarter-pixel refinement.
    pub fn quarter(kind: HeatmapKind) -> Self {
        DecodeConfig { kind, refinement: Refinement::Quarter }
    }

    /// DARK refinement with the training Gaussian's `sigma` in heatmap pixels (must be positive).
    pub fn dark(kind: HeatmapKind, sigma: f32) -> Self {
        DecodeConfig { kind, refinement: Refinement::Dark { sigma } }
    }

    fn check(&self) -> Result<()> {
        if let Refinement::Dark { sigma } = self.refinement {
            if !(sigma.is_finite() && sigma > 0.0 && sigma <= 64.0) {
                return Err(Error::Input(format!("DARK sigma must be in (0, 64], got {sigma}")));
            }
        }
        Ok(())
    }
}

/// The training Gaussians' sigma, in heatmap pixels, unless said otherwise: `wgpose train
/// --sigma`'s default, and what DARK assumes for weights whose card records none.
pub const DEFAULT_SIGMA: f32 = 2.0;

impl Default for DecodeConfig {
    /// Linear heatmaps, DARK with [`DEFAULT_SIGMA`].
    fn default() -> Self {
        DecodeConfig::dark(HeatmapKind::Linear, DEFAULT_SIGMA)
    }
}

/// Decodes `[N, K, H, W]` heatmaps into `N` lists of `K` keypoints in heatmap coordinates.
pub fn decode(heatmaps: &Tensor, cfg: &DecodeConfig) -> Result<Vec<Vec<Keypoint>>> {
    cfg.check()?;
    let [n, k, h, w] = heatmaps.nchw()?;
    if h == 0 || w == 0 {
        return Err(Error::Input(format!("heatmaps of shape {:?} are empty", heatmaps.shape)));
    }
    let plane = h * w;
    Ok((0..n)
        .map(|b| (0..k).map(|j| decode_unchecked(&heatmaps.data[(b * k + j) * plane..][..plane], w, h, cfg)).collect())
        .collect())
}

/// Decodes one `h x w` map (row-major).
pub fn decode_map(map: &[f32], w: usize, h: usize, cfg: &DecodeConfig) -> Result<Keypoint> {
    cfg.check()?;
    if w == 0 || h == 0 || map.len() != w * h {
        return Err(Error::Input(format!("a {w}x{h} heatmap needs {} values, got {}", w * h, map.len())));
    }
    Ok(decode_unchecked(map, w, h, cfg))
}

fn decode_unchecked(map: &[f32], w: usize, h: usize, cfg: &DecodeConfig) -> Keypoint {
    if map.iter().any(|v| !v.is_finite()) {
        return Keypoint { x: 0.5 * w as f32, y: 0.5 * h as f32, score: 0.0 };
    }
    // First maximum in row-major order (a constant map decodes to pixel (0, 0)).
    let mut best = 0;
    for (i, &v) in map.iter().enumerate() {
        if v > map[best] {
            best = i;
        }
    }
    let (px, py) = (best % w, best / w);
    let score = map[best].clamp(0.0, 1.0);
    let at = |x: usize, y: usize| map[y * w + x] as f64;
    let quarter = |lo: f64, hi: f64| 0.25 * (hi - lo).signum() * ((hi != lo) as u8 as f64);
    let x_ok = px > 0 && px + 1 < w;
    let y_ok = py > 0 && py + 1 < h;
    let qx = if x_ok { quarter(at(px - 1, py), at(px + 1, py)) } else { 0.0 };
    let qy = if y_ok { quarter(at(px, py - 1), at(px, py + 1)) } else { 0.0 };
    let (dx, dy) = match cfg.refinement {
        Refinement::None => (0.0, 0.0),
        Refinement::Quarter => (qx, qy),
        Refinement::Dark { sigma } => {
            let (dx, dy) = dark_step(map, w, h, px, py, sigma as f64);
            (dx.unwrap_or(qx), dy.unwrap_or(qy))
        }
    };
    Keypoint { x: (px as f64 + 0.5 + dx) as f32, y: (py as f64 + 0.5 + dy) as f32, score }
}

/// DARK's Newton step from the argmax `(px, py)` on the log of the Gaussian-smoothed map, per
/// axis; `None` for an axis where it is not usable (then the caller falls back to the quarter
/// step).
///
/// - Smoothing uses a normalised Gaussian of the training sigma truncated at 3 sigma, and
///   shortened (symmetrically) near the border so that it never reads outside the map: any
///   padding invents values and biases peaks near the border (for a sigma-2 Gaussian 3 px from
///   the border, zero padding pushes the estimate 0.07 px inwards and edge replication 0.18 px
///   outwards; 0.27 and 0.70 px at 2 px), whereas a symmetric kernel keeps a symmetric peak
///   where it is. Near the
///   border the smoothing is therefore weaker. Only the 3x3 neighbourhood of the argmax is
///   smoothed: the step needs nothing else.
/// - The log is floored at 1e-3 of the smoothed centre value (negative or zero values of linear
///   heatmaps have no log); a non-positive centre gives no step.
/// - Derivatives are central differences with unit step. With both axes inside the map, the 2-D
///   step `-H^-1 g` is taken when the Hessian is negative definite (`dxx < 0`, `det > 1e-12`)
///   and the step is under one pixel along each axis: otherwise (a saddle, a flat or a
///   non-invertible Hessian, or a step that leaves the argmax's neighbourhood) each axis falls
///   back to its own 1-D Newton step `-g / dxx` under the same conditions. An axis where the
///   argmax lies on the border has no central difference and gets no step.
fn dark_step(map: &[f32], w: usize, h: usize, px: usize, py: usize, sigma: f64) -> (Option<f64>, Option<f64>) {
    let x_ok = px > 0 && px + 1 < w;
    let y_ok = py > 0 && py + 1 < h;
    let r = (3.0 * sigma).ceil().max(1.0) as usize;
    // Kernel radius per axis: as large as the training sigma asks, but no larger than keeps
    // every tap of the 3x3 neighbourhood's blur inside the map. (A border axis is not refined,
    // so it is not blurred.)
    let rx = if x_ok { r.min(px - 1).min(w - 2 - px) } else { 0 };
    let ry = if y_ok { r.min(py - 1).min(h - 2 - py) } else { 0 };
    let kernel = |r: usize| {
        let k: Vec<f64> =
            (0..=2 * r).map(|i| i as f64 - r as f64).map(|d| (-d * d / (2.0 * sigma * sigma)).exp()).collect();
        let sum: f64 = k.iter().sum();
        k.into_iter().map(|v| v / sum).collect::<Vec<f64>>()
    };
    let (kx, ky) = (kernel(rx), kernel(ry));
    // Clamping only matters on border axes, where the neighbours are never used.
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    // Horizontal pass on the rows the vertical pass needs, at columns px-1..=px+1.
    let mut hpass = vec![[0f64; 3]; 3 + 2 * ry];
    for (ri, row) in hpass.iter_mut().enumerate() {
        let y = clamp(py as isize - 1 - ry as isize + ri as isize, h);
        for (ci, out) in row.iter_mut().enumerate() {
            let x0 = px as isize - 1 + ci as isize - rx as isize;
            *out = kx.iter().enumerate().map(|(k, g)| g * map[y * w + clamp(x0 + k as isize, w)] as f64).sum();
        }
    }
    let mut b = [[0f64; 3]; 3];
    for (yi, brow) in b.iter_mut().enumerate() {
        for (ci, out) in brow.iter_mut().enumerate() {
            *out = ky.iter().enumerate().map(|(k, g)| g * hpass[yi + k][ci]).sum();
        }
    }
    let centre = b[1][1];
    if centre.is_nan() || centre <= 0.0 {
        return (None, None);
    }
    let floor = centre * 1e-3;
    let l = b.map(|row| row.map(|v| v.max(floor).ln()));
    let gx = 0.5 * (l[1][2] - l[1][0]);
    let gy = 0.5 * (l[2][1] - l[0][1]);
    let dxx = l[1][2] - 2.0 * l[1][1] + l[1][0];
    let dyy = l[2][1] - 2.0 * l[1][1] + l[0][1];
    let dxy = 0.25 * (l[2][2] - l[0][2] - l[2][0] + l[0][0]);
    let usable = |d: f64| d.is_finite() && d.abs() <= 1.0;
    if x_ok && y_ok {
        let det = dxx * dyy - dxy * dxy;
        if dxx < 0.0 && det > 1e-12 {
            let dx = -(dyy * gx - dxy * gy) / det;
            let dy = -(dxx * gy - dxy * gx) / det;
            if usable(dx) && usable(dy) {
                return (Some(dx), Some(dy));
            }
        }
    }
    let step_1d = |ok: bool, g: f64, d2: f64| {
        if ok && d2 < -1e-12 {
            Some(-g / d2).filter(|&d| usable(d))
        } else {
            None
        }
    };
    let dx = step_1d(x_ok, gx, dxx);
    let dy = step_1d(y_ok, gy, dyy);
    // On a border axis the caller's quarter step is 0 too: say so explicitly.
    (if x_ok { dx } else { Some(0.0) }, if y_ok { dy } else { Some(0.0) })
}

/// The flip test: averages `heatmaps` (of the crop) with `flipped` (of the horizontally flipped
/// crop, e.g. [`CropConfig::flip`](super::crop::CropConfig)), after mirroring the latter back
/// and swapping left/right channels with the skeleton's flip permutation. Both `[N, K, H, W]`
/// with `K == skeleton.len()`.
///
/// No shift is applied. The well-known one-pixel shift (HRNet shifts the mirrored maps one
/// column right) compensates for the index convention (targets at index `i / s` for input pixel
/// index `i`, stride `s`): flipping a `W`-wide input maps index `i` to `W - 1 - i`, whose target
/// `(W - 1 - i) / s`, mirrored back with `j -> W / s - 1 - j`, lands at `i / s - (s - 1) / s`:
/// 0.75 heatmap pixel to the left at stride 4 (the one-column shift leaves 0.25 to the right,
/// which averaging halves). In the continuous
/// convention used here (targets at `p / stride`), flipping the crop maps `x -> W - x`, the
/// heatmap coordinate `x / s -> W / s - x / s`, and mirroring the heatmap columns
/// (`j -> W/s - 1 - j`, continuous `x -> W/s - x`) inverts it exactly. Networks trained under
/// the index convention should use [`average_flipped_shifted`] with a shift of 1.
pub fn average_flipped(heatmaps: &Tensor, flipped: &Tensor, skeleton: &Skeleton) -> Result<Tensor> {
    average_flipped_shifted(heatmaps, flipped, skeleton, 0)
}

/// [`average_flipped`] with the mirrored maps shifted `shift` columns to the right (negative:
/// left) before averaging, replicating the edge column: 1 reproduces HRNet / SimpleBaseline's
/// flip test for networks trained with index-convention targets.
pub fn average_flipped_shifted(
    heatmaps: &Tensor,
    flipped: &Tensor,
    skeleton: &Skeleton,
    shift: isize,
) -> Result<Tensor> {
    let [n, k, h, w] = heatmaps.nchw()?;
    if flipped.shape != heatmaps.shape {
        return Err(Error::Input(format!(
            "flipped heatmaps have shape {:?}, the unflipped ones {:?}",
            flipped.shape, heatmaps.shape
        )));
    }
    if k != skeleton.len() {
        return Err(Error::Input(format!(
            "{k} heatmap channels for the {}-joint skeleton {}",
            skeleton.len(),
            skeleton.name
        )));
    }
    let perm = skeleton.flip_permutation();
    let mut out = heatmaps.clone();
    let plane = h * w;
    for b in 0..n {
        for (j, &pj) in perm.iter().enumerate() {
            let dst = &mut out.data[(b * k + j) * plane..][..plane];
            let src = &flipped.data[(b * k + pj) * plane..][..plane];
            for y in 0..h {
                for x in 0..w {
                    // Mirrored map at column m is src column w-1-m; shifted: column x reads m = x - shift.
                    let m = (x as isize - shift).clamp(0, w as isize - 1) as usize;
                    let v = &mut dst[y * w + x];
                    *v = 0.5 * (*v + src[y * w + (w - 1 - m)]);
                }
            }
        }
    }
    Ok(out)
}
