//! The element-wise loops of the executor and of the backward pass (channel affines, adds,
//! ReLU masks, batch-norm gradients), each compiled for the CPU's widest vectors
//! (`vectorised!`: AVX-512F, AVX2, else the baseline).
//!
//! Why: written inline in the parallel loops' closures they were compiled for the crate's
//! x86-64 baseline, SSE2 (four lanes). Moved here, LDCRN's training step was 2.4% faster on an
//! AVX-512 Xeon (284 -> 278 ms, session 43); the hourglass and fasterpose-r18-s32 were level,
//! although the whole crate built with `-C target-cpu=x86-64-v4` made the hourglass ~6% faster:
//! the rest of that bound lies in loops not moved here. The closures themselves cannot be
//! widened from the loop helpers: LLVM does not inline them into a `target_feature` wrapper.
//!
//! Every function computes the same values bit for bit at any width: each output is a fixed
//! expression of its inputs (Rust never contracts `a * b + c` into a fused multiply-add), and
//! nothing is summed across lanes.

use crate::graph::Act;

use super::ops::act_in_place;

vectorised! {
/// `d = act(a * x + b)` (`d` and `x` of one length).
pub(crate) fn affine(d: &mut [f32], x: &[f32], a: f32, b: f32, act: Act) => affine_with
}

#[inline(always)]
fn affine_with(d: &mut [f32], x: &[f32], a: f32, b: f32, act: Act) {
    d.iter_mut().zip(x).for_each(|(d, &s)| *d = a * s + b);
    act_in_place(d, act);
}

vectorised! {
/// `d = act(d)`.
pub(crate) fn activate(d: &mut [f32], act: Act) => act_in_place
}

vectorised! {
/// `d = a * s + x` (the gated residual add; `a = 1` is the plain add `s + x`).
pub(crate) fn gated_add(d: &mut [f32], s: &[f32], x: &[f32], a: f32) => gated_add_with
}

#[inline(always)]
fn gated_add_with(d: &mut [f32], s: &[f32], x: &[f32], a: f32) {
    d.iter_mut().zip(s.iter().zip(x)).for_each(|(d, (s, x))| *d = a * s + x);
}

vectorised! {
/// `d = a + b`.
pub(crate) fn add(d: &mut [f32], a: &[f32], b: &[f32]) => add_with
}

#[inline(always)]
fn add_with(d: &mut [f32], a: &[f32], b: &[f32]) {
    d.iter_mut().zip(a.iter().zip(b)).for_each(|(d, (a, b))| *d = a + b);
}

vectorised! {
/// `d += s`.
pub(crate) fn add_assign(d: &mut [f32], s: &[f32]) => add_assign_with
}

#[inline(always)]
fn add_assign_with(d: &mut [f32], s: &[f32]) {
    d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
}

vectorised! {
/// `d *= k`.
pub(crate) fn scale(d: &mut [f32], k: f32) => scale_with
}

#[inline(always)]
fn scale_with(d: &mut [f32], k: f32) {
    d.iter_mut().for_each(|d| *d *= k);
}

vectorised! {
/// The ReLU's backward step given its output: `d = y > 0 ? d : 0`.
pub(crate) fn relu_mask(d: &mut [f32], y: &[f32]) => relu_mask_with
}

#[inline(always)]
fn relu_mask_with(d: &mut [f32], y: &[f32]) {
    d.iter_mut().zip(y).for_each(|(d, &y)| *d = if y > 0.0 { *d } else { 0.0 });
}

vectorised! {
/// The ReLU's backward step given its input before a channel affine: `d = a * x + b > 0 ? d : 0`
/// (the forward pass's exact arithmetic, so the same mask).
pub(crate) fn affine_relu_mask(d: &mut [f32], x: &[f32], a: f32, b: f32) => affine_relu_mask_with
}

#[inline(always)]
fn affine_relu_mask_with(d: &mut [f32], x: &[f32], a: f32, b: f32) {
    d.iter_mut().zip(x).for_each(|(d, &v)| *d = if a * v + b > 0.0 { *d } else { 0.0 });
}

vectorised! {
/// Batch norm's input gradient in training mode, per plane of one channel:
/// `d = k * (m * d - sum_dz - xhat * sum_dz_xhat)` with `xhat = (x - mean) * inv_std`.
pub(crate) fn batch_norm_input_grad(d: &mut [f32], x: &[f32], k: f32, m: f32, sums: [f32; 2], mean: f32, inv_std: f32) => batch_norm_input_grad_with
}

#[inline(always)]
fn batch_norm_input_grad_with(d: &mut [f32], x: &[f32], k: f32, m: f32, sums: [f32; 2], mean: f32, inv_std: f32) {
    let [sb, sg] = sums;
    for (d, &v) in d.iter_mut().zip(x) {
        let xhat = (v - mean) * inv_std;
        *d = k * (m * *d - sb - xhat * sg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Each function against its plain loop, bit for bit, on lengths around the vector widths
    /// (0, 1, 7, 15, 16, 17, 33, 100); the plain loops are the expressions the callers used
    /// before, compiled for the baseline.
    #[test]
    fn every_function_matches_its_plain_loop_exactly() {
        let mut rng = Rng::new(11);
        for n in [0usize, 1, 7, 15, 16, 17, 33, 100] {
            let x = rng.vec(n, -2.0, 2.0);
            let y = rng.vec(n, -2.0, 2.0);
            let d0 = rng.vec(n, -2.0, 2.0);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let check = |got: &[f32], want: Vec<f32>, what: &str| assert_eq!(bits(got), bits(&want), "{what} n={n}");

            for act in [Act::None, Act::Relu, Act::Sigmoid] {
                let mut d = d0.clone();
                affine(&mut d, &x, 0.7, -0.3, act);
                let mut want: Vec<f32> = x.iter().map(|&s| 0.7 * s + -0.3).collect();
                act_in_place(&mut want, act);
                check(&d, want.clone(), "affine");
                let mut d = x.clone();
                activate(&mut d, act);
                let mut want = x.clone();
                act_in_place(&mut want, act);
                check(&d, want, "activate");
            }
            let mut d = d0.clone();
            gated_add(&mut d, &x, &y, 0.3);
            check(&d, x.iter().zip(&y).map(|(s, x)| 0.3 * s + x).collect(), "gated_add");
            let mut d = d0.clone();
            add(&mut d, &x, &y);
            check(&d, x.iter().zip(&y).map(|(a, b)| a + b).collect(), "add");
            let mut d = d0.clone();
            add_assign(&mut d, &x);
            check(&d, d0.iter().zip(&x).map(|(d, s)| d + s).collect(), "add_assign");
            let mut d = d0.clone();
            scale(&mut d, 1.7);
            check(&d, d0.iter().map(|d| d * 1.7).collect(), "scale");
            let mut d = d0.clone();
            relu_mask(&mut d, &y);
            check(&d, d0.iter().zip(&y).map(|(&d, &y)| if y > 0.0 { d } else { 0.0 }).collect(), "relu_mask");
            let mut d = d0.clone();
            affine_relu_mask(&mut d, &x, 0.9, 0.1);
            let want = d0.iter().zip(&x).map(|(&d, &v)| if 0.9 * v + 0.1 > 0.0 { d } else { 0.0 }).collect();
            check(&d, want, "affine_relu_mask");
            let mut d = d0.clone();
            batch_norm_input_grad(&mut d, &x, 0.25, 48.0, [0.5, -1.5], 0.1, 1.3);
            let want = d0.iter().zip(&x).map(|(&d, &v)| 0.25 * (48.0 * d - 0.5 - ((v - 0.1) * 1.3) * -1.5)).collect();
            check(&d, want, "batch_norm_input_grad");
        }
    }
}
