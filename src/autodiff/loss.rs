//! Heatmap losses, Gaussian targets and argmax decoding.
//!
//! Coordinate convention (used by [`gaussian_heatmaps`] and [`argmax_keypoints`]): keypoint
//! coordinates are in heatmap pixels, pixel column `j` covers `[j, j+1)` and its centre is at
//! `x = j + 0.5` (likewise rows). A keypoint at `(x, y) = (3.5, 2.5)` therefore peaks exactly at
//! pixel `(row 2, col 3)` with value 1, and decoding the argmax pixel `(i, j)` returns
//! `(j + 0.5, i + 0.5)`. (To convert from image pixels with the same convention, divide by the
//! stride: `x_hm = x_img / 4`.)
//!
//! Both losses take the graph outputs (one `[N, K, H, W]` tensor per stack, intermediate
//! supervision: the per-stack losses are summed), one target `[N, K, H, W]` shared by all
//! stacks, and per-joint weights `[N * K]` (0 for invisible / missing joints, 1 otherwise; any
//! non-negative value works). Each is a weighted mean over all `N*K*H*W` elements, i.e. the
//! denominator does not depend on how many joints are visible (as PyTorch's
//! `MSELoss(reduction='mean')` applied to `w * pred` and `w * target` in the usual
//! `JointsMSELoss`, without its extra factor 0.5).

use crate::error::{Error, Result};
use crate::graph::{Act, Graph, Op};
use crate::tensor::Tensor;

fn check(outputs: &[&Tensor], target: &Tensor, weights: &[f32]) -> Result<[usize; 4]> {
    let s = target.nchw()?;
    if outputs.is_empty() {
        return Err(Error::Input("a loss needs at least one output".into()));
    }
    for (k, o) in outputs.iter().enumerate() {
        if o.shape != target.shape {
            return Err(Error::Input(format!("output {k} has shape {:?}, the target {:?}", o.shape, target.shape)));
        }
    }
    if weights.len() != s[0] * s[1] {
        return Err(Error::Input(format!("expected {} joint weights (N*K), got {}", s[0] * s[1], weights.len())));
    }
    Ok(s)
}

/// Weighted heatmap MSE summed over stacks:
/// `L = sum_stacks sum_{n,k,p} w[n,k] (pred - target)^2 / (N K H W)`.
/// Returns the loss and `dL/d output` for each output.
pub fn mse_loss(outputs: &[&Tensor], target: &Tensor, weights: &[f32]) -> Result<(f32, Vec<Tensor>)> {
    let [n, k, h, w] = check(outputs, target, weights)?;
    let hw = h * w;
    let denom = (n * k * hw) as f64;
    let mut total = 0.0f64;
    let mut grads = Vec::with_capacity(outputs.len());
    for o in outputs {
        let mut g = vec![0.0f32; o.data.len()];
        for (p, wt) in weights.iter().enumerate() {
            let r = p * hw..(p + 1) * hw;
            let mut s = 0.0f64;
            for ((d, &y), &t) in g[r.clone()].iter_mut().zip(&o.data[r.clone()]).zip(&target.data[r]) {
                let e = y - t;
                s += (e as f64) * (e as f64);
                *d = (2.0 * *wt as f64 * e as f64 / denom) as f32;
            }
            total += *wt as f64 * s;
        }
        grads.push(Tensor { shape: o.shape.clone(), data: g });
    }
    Ok(((total / denom) as f32, grads))
}

/// Left/right label mistakes, matched to the network: for each item and each limb group
/// (`groups`, e.g. [`crate::skeleton::Skeleton::limb_groups`]), the group's left and right
/// target maps and weights are swapped when the prediction `pred` (`[N, K, H, W]`, the last
/// stack's output, heatmaps or logits) is clearly mirrored against the labels. Over the group's
/// pairs `(a, b)` with both joints labelled (weight above 0), with `p` the argmax of a
/// predicted map and `t` of a target map (heatmap pixels):
/// `d_given = sum |p_a - t_a| + |p_b - t_b|`, `d_swapped = sum |p_a - t_b| + |p_b - t_a|`;
/// the group is swapped when `d_swapped < d_given / 2` and `d_given` averages at least
/// `H / 12` per joint (about a quarter of the torso on LSP crops: near-coincident left and
/// right joints never decide). The criterion of `scripts/lsp_label_swaps.py`, which flagged
/// 3.2% of LSPET's training groups with the default model as the judge. Returns how many groups
/// were swapped.
///
/// Why: LSPET's crowd-sourced labels swap left and right on a few per cent of people (mostly
/// front views labelled as back views). Trained as given, the network is pulled towards both
/// sides of such a person; trained on the mirrored reading it keeps its own, which is also what
/// happens where the network is the one that is wrong (about half of a checked sample of that
/// script's flags). Measured in session 28 (models/README, recipe log): an hourglass restart
/// with it scored 0.25 points below the same restart without it, so it is off by default.
pub fn match_limb_swaps(
    pred: &Tensor,
    target: &mut Tensor,
    weights: &mut [f32],
    groups: &[&[(usize, usize)]],
) -> Result<usize> {
    let [n, k, h, w] = check(&[pred], target, weights)?;
    if let Some(&(a, b)) = groups.iter().flat_map(|g| g.iter()).find(|&&(a, b)| a >= k || b >= k || a == b) {
        return Err(Error::Input(format!("limb pair ({a}, {b}) does not fit {k} joints")));
    }
    let hw = h * w;
    // Argmax of a map as (x, y); the first maximum on ties, NaN never wins.
    let peak = |m: &[f32]| {
        let i = m.iter().enumerate().fold(0, |best, (i, &v)| if v > m[best] { i } else { best });
        [(i % w) as f32, (i / w) as f32]
    };
    let dist = |p: [f32; 2], q: [f32; 2]| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
    let min_error = h as f32 / 12.0;
    let mut swapped = 0;
    for i in 0..n {
        let map = |t: &Tensor, j: usize| peak(&t.data[(i * k + j) * hw..][..hw]);
        for group in groups {
            let (mut given, mut mirrored, mut joints) = (0.0f32, 0.0f32, 0usize);
            for &(a, b) in group.iter() {
                if weights[i * k + a] > 0.0 && weights[i * k + b] > 0.0 {
                    let (pa, pb, ta, tb) = (map(pred, a), map(pred, b), map(target, a), map(target, b));
                    given += dist(pa, ta) + dist(pb, tb);
                    mirrored += dist(pa, tb) + dist(pb, ta);
                    joints += 2;
                }
            }
            if joints > 0 && mirrored < given / 2.0 && given >= min_error * joints as f32 {
                for &(a, b) in group.iter() {
                    let (lo, hi) = ((i * k + a.min(b)) * hw, (i * k + a.max(b)) * hw);
                    let (left, right) = target.data.split_at_mut(hi);
                    left[lo..lo + hw].swap_with_slice(&mut right[..hw]);
                    weights.swap(i * k + a, i * k + b);
                }
                swapped += 1;
            }
        }
    }
    Ok(swapped)
}

/// Regressive cross-entropy (FasterPose): binary cross-entropy with continuous targets
/// `y in [0, 1]`, computed from logits `z` in the stable form
/// `max(z, 0) - z y + log(1 + exp(-|z|))`, weighted per joint, averaged over `N K H W` and summed
/// over stacks. The gradient is `w (sigmoid(z) - y) / (N K H W)`. The network must expose
/// logits: see [`strip_final_sigmoid`].
pub fn rce_loss(logits: &[&Tensor], target: &Tensor, weights: &[f32]) -> Result<(f32, Vec<Tensor>)> {
    let [n, k, h, w] = check(logits, target, weights)?;
    let hw = h * w;
    let denom = (n * k * hw) as f64;
    let mut total = 0.0f64;
    let mut grads = Vec::with_capacity(logits.len());
    for o in logits {
        let mut g = vec![0.0f32; o.data.len()];
        for (p, wt) in weights.iter().enumerate() {
            let r = p * hw..(p + 1) * hw;
            let mut s = 0.0f64;
            for ((d, &z), &y) in g[r.clone()].iter_mut().zip(&o.data[r.clone()]).zip(&target.data[r]) {
                let (z, y) = (z as f64, y as f64);
                s += z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
                let sig = 1.0 / (1.0 + (-z).exp());
                *d = (*wt as f64 * (sig - y) / denom) as f32;
            }
            total += *wt as f64 * s;
        }
        grads.push(Tensor { shape: o.shape.clone(), data: g });
    }
    Ok(((total / denom) as f32, grads))
}

/// The person detector's loss on logits `[N, 3, H, W]` (centre, width, height) against targets
/// `[N, 4, H, W]` (centre Gaussian, width, height, size mask; see
/// [`crate::training::detection`]): binary cross-entropy with soft targets (as [`rce_loss`]) on
/// the centre map at every cell, plus the same cross-entropy on the two size maps where the
/// mask is 1, both summed and divided by `N H W` (so a person's size cells weigh as much as its
/// centre cells; CenterNet weighs size by 0.1 against a focal loss normalised per object, which
/// puts the two at a similar ratio). Returns the loss and `dL/d logits`.
pub fn detection_loss(logits: &Tensor, target: &Tensor) -> Result<(f32, Tensor)> {
    let [n, c, h, w] = logits.nchw()?;
    let t = target.nchw()?;
    if c != 3 || t != [n, 4, h, w] {
        return Err(Error::Input(format!(
            "detection loss needs logits [N, 3, H, W] and targets [N, 4, H, W], got {:?} and {:?}",
            logits.shape, target.shape
        )));
    }
    let hw = h * w;
    let denom = (n * hw) as f64;
    let mut g = vec![0.0f32; logits.data.len()];
    let mut total = 0.0f64;
    let bce = |z: f64, y: f64| z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
    for b in 0..n {
        let z = &logits.data[b * 3 * hw..(b + 1) * 3 * hw];
        let y = &target.data[b * 4 * hw..(b + 1) * 4 * hw];
        let gz = &mut g[b * 3 * hw..(b + 1) * 3 * hw];
        let mask = &y[3 * hw..];
        for ch in 0..3 {
            for p in 0..hw {
                let m = if ch == 0 { 1.0 } else { mask[p] as f64 };
                if m == 0.0 {
                    continue;
                }
                let (zz, yy) = (z[ch * hw + p] as f64, y[ch * hw + p] as f64);
                total += m * bce(zz, yy);
                let sig = 1.0 / (1.0 + (-zz).exp());
                gz[ch * hw + p] = (m * (sig - yy) / denom) as f32;
            }
        }
    }
    Ok(((total / denom) as f32, Tensor { shape: logits.shape.clone(), data: g }))
}

/// The same graph with every output that is a sigmoid node (`Op::Activation(Sigmoid)`, or a
/// `ChannelAffine` whose fused activation is a sigmoid) replaced by its pre-activation, so the
/// outputs are logits for [`rce_loss`]. For an affine, the sigmoid is removed from the node itself
/// (the node then outputs `scale x + shift`). A sigmoid node that is no longer an output stays in
/// the graph (it is still evaluated, but nothing reads it and it gets no gradient). Returns the
/// new graph and how many outputs were changed; outputs without a final sigmoid are left as
/// they are. Inference later applies `sigmoid` to the logits (or uses the original graph with the
/// trained weights: parameter names are unchanged).
pub fn strip_final_sigmoid(graph: &Graph) -> (Graph, usize) {
    let mut g = graph.clone();
    let mut changed = 0;
    for k in 0..g.outputs.len() {
        let o = g.outputs[k];
        match &mut g.nodes[o].op {
            Op::Activation(Act::Sigmoid) => {
                g.outputs[k] = g.nodes[o].inputs[0];
                changed += 1;
            }
            Op::ChannelAffine { act, .. } if *act == Act::Sigmoid => {
                *act = Act::None;
                changed += 1;
            }
            _ => {}
        }
    }
    (g, changed)
}

/// Gaussian target heatmaps `[K, H, W]` for one sample, and the per-joint weights.
///
/// `keypoints[k] = [x, y, v]` in heatmap pixels (see the module docs for the convention);
/// joint `k` is labelled when `v > 0` and both coordinates are finite. The target is
/// `exp(-((j + 0.5 - x)^2 + (i + 0.5 - y)^2) / (2 sigma^2))` (unnormalised, peak 1 at the
/// keypoint). Unlabelled joints, and labelled joints more than `3 sigma` outside the heatmap,
/// get an all-zero map and weight 0; others weight 1. Joints beyond `keypoints.len()` count as
/// unlabelled.
pub fn gaussian_heatmaps(keypoints: &[[f32; 3]], k: usize, h: usize, w: usize, sigma: f32) -> (Tensor, Vec<f32>) {
    let mut t = Tensor::zeros(vec![k, h, w]);
    let mut weights = vec![0.0f32; k];
    let s2 = 2.0 * sigma * sigma;
    let r = 3.0 * sigma;
    for (j, kp) in keypoints.iter().take(k).enumerate() {
        let [x, y, v] = *kp;
        if !(v > 0.0 && x.is_finite() && y.is_finite()) {
            continue;
        }
        if x < -r || y < -r || x > w as f32 + r || y > h as f32 + r {
            continue;
        }
        weights[j] = 1.0;
        let plane = &mut t.data[j * h * w..(j + 1) * h * w];
        for i in 0..h {
            let dy = i as f32 + 0.5 - y;
            for c in 0..w {
                let dx = c as f32 + 0.5 - x;
                plane[i * w + c] = (-(dx * dx + dy * dy) / s2).exp();
            }
        }
    }
    (t, weights)
}

/// Stacks per-sample tensors of equal shape `[..]` into a batch `[N, ..]`.
pub fn stack_batch(ts: &[Tensor]) -> Result<Tensor> {
    let first = ts.first().ok_or_else(|| Error::Input("cannot stack zero tensors".into()))?;
    if let Some(t) = ts.iter().find(|t| t.shape != first.shape) {
        return Err(Error::Input(format!("cannot stack tensors of shapes {:?} and {:?}", first.shape, t.shape)));
    }
    let mut shape = vec![ts.len()];
    shape.extend(&first.shape);
    let data = ts.iter().flat_map(|t| t.data.iter().copied()).collect();
    Ok(Tensor { shape, data })
}

/// Argmax decoding of `[N, K, H, W]` heatmaps: per sample and joint `[x, y, score]` with
/// `x = j + 0.5`, `y = i + 0.5` of the maximal pixel `(i, j)` (first one on ties).
pub fn argmax_keypoints(heatmaps: &Tensor) -> Result<Vec<Vec<[f32; 3]>>> {
    let [n, k, h, w] = heatmaps.nchw()?;
    let hw = h * w;
    Ok((0..n)
        .map(|b| {
            (0..k)
                .map(|j| {
                    let p = &heatmaps.data[(b * k + j) * hw..(b * k + j + 1) * hw];
                    let (mut bi, mut bv) = (0, f32::NEG_INFINITY);
                    for (i, &v) in p.iter().enumerate() {
                        if v > bv {
                            bi = i;
                            bv = v;
                        }
                    }
                    [(bi % w) as f32 + 0.5, (bi / w) as f32 + 0.5, bv]
                })
                .collect()
        })
        .collect())
}
