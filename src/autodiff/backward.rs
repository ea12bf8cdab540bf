//! Backward kernels of every operator of the IR (the forward passes are the CPU executor's),
//! the convolution's in `super::conv_backward` (re-exported here).
//!
//! All kernels take the upstream gradient `dy` (shape of the node's output) plus whatever the
//! forward pass left on the tape, and return gradients with respect to the inputs and the
//! parameters, parallelised with rayon over `(n, c)` planes or channels.

use crate::cpu::{elementwise, parallel};

pub use super::conv_backward::{conv2d_backward, ConvGrads};
use crate::cpu::gemm::Kernel;
use crate::cpu::ops::{bilinear_taps, planes_per_task};
use crate::cpu::reduce::centered_sums;
use crate::graph::Act;
use crate::tensor::Tensor;

fn dims(t: &Tensor) -> [usize; 4] {
    [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]
}

fn like(t: &Tensor, data: Vec<f32>) -> Tensor {
    Tensor { shape: t.shape.clone(), data }
}

/// Per-channel `(sum dy, sum dy * x)` over batch and space.
fn channel_dots(dy: &Tensor, x: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let [n, c, h, w] = dims(dy);
    let hw = h * w;
    let kernel = Kernel::detect();
    let r: Vec<(f32, f32)> = parallel::map_tasks(c, |ch| {
        let (mut a, mut b) = (0.0f64, 0.0f64);
        for bi in 0..n {
            let off = (bi * c + ch) * hw;
            let (p, q) = centered_sums(&dy.data[off..off + hw], 0.0, &x.data[off..off + hw], 0.0, kernel);
            a += p;
            b += q;
        }
        (a as f32, b as f32)
    });
    r.into_iter().unzip()
}

/// The channel affine a batch norm computes with its statistics: `scale = gamma * inv_std`,
/// `shift = beta - mean * scale`. The forward pass and [`batch_norm_backward`]'s ReLU mask both
/// take it from here, so the mask is recomputed with the forward pass's exact arithmetic.
pub fn bn_scale_shift(gamma: &[f32], beta: &[f32], mean: &[f32], inv_std: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(inv_std).map(|(g, s)| g * s).collect();
    let shift = beta.iter().zip(mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    (scale, shift)
}

/// Batch norm backward, computed in place in `dy` (no new tensor). `mean`/`inv_std` are the
/// statistics used in the forward pass (batch statistics in training mode, running ones in eval
/// mode); `batch_stats` says whether they depend on `x` (training mode). Returns
/// `(dx, dgamma, dbeta)`.
///
/// `relu = Some((scale, shift))` ([`bn_scale_shift`]) when the forward pass applied a ReLU to the
/// batch norm's output and `dy` is the gradient of that ReLU's output: the ReLU's backward step
/// is then done here, its mask `scale * x + shift > 0` recomputed from `x`, instead of in a
/// separate pass over the stored output (the same values: the forward pass computed the output
/// as `max(scale * x + shift, 0)`).
pub fn batch_norm_backward(
    x: &Tensor,
    dy: Tensor,
    gamma: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    batch_stats: bool,
    relu: Option<(&[f32], &[f32])>,
) -> (Tensor, Vec<f32>, Vec<f32>) {
    let [n, c, h, w] = dims(x);
    let hw = h * w;
    let m = (n * hw) as f32;
    let Tensor { shape, data: mut dx } = dy;
    // Per plane: the ReLU's mask applied in place (dz, the gradient of the batch norm's output),
    // then, while the plane is in cache, its two sums (dz and dz * xhat, `cpu::reduce`). A mask
    // inside the summing loop kept LLVM from vectorising it (3x slower than two passes).
    let kernel = Kernel::detect();
    let sums: Vec<(f64, f64)> = parallel::map_chunks_mut(&mut dx, hw, planes_per_task(hw), |p, d| {
        let ch = p % c;
        let s = &x.data[p * hw..(p + 1) * hw];
        if let Some((a, b)) = relu {
            elementwise::affine_relu_mask(d, s, a[ch], b[ch]);
        }
        // sum dz * xhat = inv_std * sum dz * (x - mean).
        let (sb, sg) = centered_sums(d, 0.0, s, mean[ch], kernel);
        (sb, sg * inv_std[ch] as f64)
    });
    // dbeta = sum dz, dgamma = sum dz * xhat, summed over the batch in item order.
    let (mut dbeta, mut dgamma) = (vec![0.0f32; c], vec![0.0f32; c]);
    for ch in 0..c {
        let (mut sb, mut sg) = (0.0f64, 0.0f64);
        for item in 0..n {
            let (u, v) = sums[item * c + ch];
            sb += u;
            sg += v;
        }
        (dbeta[ch], dgamma[ch]) = (sb as f32, sg as f32);
    }
    parallel::for_each_chunk_mut(&mut dx, hw, planes_per_task(hw), |p, d| {
        let ch = p % c;
        let (g, mu, is) = (gamma[ch], mean[ch], inv_std[ch]);
        let s = &x.data[p * hw..(p + 1) * hw];
        if batch_stats {
            elementwise::batch_norm_input_grad(d, s, g * is / m, m, [dbeta[ch], dgamma[ch]], mu, is);
        } else {
            elementwise::scale(d, g * is);
        }
    });
    (Tensor { shape, data: dx }, dgamma, dbeta)
}

/// Gradient through an activation given its output `y`.
pub fn activation_backward(y: &Tensor, dy: &Tensor, act: Act) -> Tensor {
    activation_backward_owned(y, dy.clone(), act)
}

/// [`activation_backward`] computed in place in the upstream gradient (no copy of `dy`).
pub fn activation_backward_owned(y: &Tensor, dy: Tensor, act: Act) -> Tensor {
    let Tensor { shape, data: mut d } = dy;
    match act {
        Act::None => {}
        Act::Relu => parallel::for_each_chunk_mut(&mut d, 1 << 14, 1, |i, d| {
            elementwise::relu_mask(d, &y.data[i << 14..][..d.len()])
        }),
        Act::Sigmoid => parallel::for_each_chunk_mut(&mut d, 1 << 14, 1, |i, d| {
            let y = &y.data[i << 14..][..d.len()];
            d.iter_mut().zip(y).for_each(|(d, &y)| *d *= y * (1.0 - y))
        }),
    }
    Tensor { shape, data: d }
}

/// `y = act(scale * x + shift)`: returns `(dx, dscale, dshift)` given the forward input and
/// output.
pub fn channel_affine_backward(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    scale: &[f32],
    act: Act,
) -> (Tensor, Vec<f32>, Vec<f32>) {
    let dz = if act == Act::None { dy.clone() } else { activation_backward(y, dy, act) };
    let (dshift, dscale) = channel_dots(&dz, x);
    let [_, c, h, w] = dims(x);
    let hw = h * w;
    let mut dx = dz.data;
    parallel::for_each_chunk_mut(&mut dx, hw, 1, |p, d| elementwise::scale(d, scale[p % c]));
    (like(x, dx), dscale, dshift)
}

/// Max pool backward: each output gradient goes to the input element that won (`argmax`, the
/// flat in-plane indices [`forward_train`](super::forward_train) keeps in `Tape::argmax`);
/// every other input gets zero.
pub fn max_pool_backward(x: &Tensor, dy: &Tensor, argmax: &[u32]) -> Tensor {
    let [_, _, h, w] = dims(x);
    let [_, _, oh, ow] = dims(dy);
    // Each plane zeroed by its task (in cache, on every thread) instead of one serial `memset`
    // of the whole gradient first (16 MB for the hourglass's stem pool in a batch of 16).
    let mut dx = crate::cpu::buffer::overwritten(x.data.len());
    let ohw = oh * ow;
    parallel::for_each_chunk_mut(&mut dx, h * w, planes_per_task(ohw), |p, d| {
        let (g, ix) = (&dy.data[p * ohw..(p + 1) * ohw], &argmax[p * ohw..(p + 1) * ohw]);
        d.fill(0.0);
        for (&gv, &i) in g.iter().zip(ix) {
            d[i as usize] += gv;
        }
    });
    like(x, dx)
}

/// Gradient of nearest upsampling by `f`: each input cell gets the sum of the gradients of
/// its `f x f` output cells.
pub fn upsample_nearest_backward(x: &Tensor, dy: &Tensor, f: usize) -> Tensor {
    let [_, _, h, w] = dims(x);
    let ow = w * f;
    let mut dx = crate::cpu::buffer::overwritten(x.data.len());
    let ohw = h * f * ow;
    parallel::for_each_chunk_mut(&mut dx, h * w, planes_per_task(ohw), |p, d| {
        let g = &dy.data[p * ohw..(p + 1) * ohw];
        {
            d.fill(0.0); // per plane, as in `max_pool_backward`
            for (oy, grow) in g.chunks_exact(ow).enumerate() {
                let drow = &mut d[(oy / f) * w..(oy / f + 1) * w];
                for (dv, gs) in drow.iter_mut().zip(grow.chunks_exact(f)) {
                    *dv += gs.iter().sum::<f32>();
                }
            }
        }
    });
    like(x, dx)
}

/// Gradient of bilinear upsampling by `f` (half-pixel centres, `align_corners = false`):
/// each output gradient is spread over its four source taps with the forward weights.
pub fn upsample_bilinear_backward(x: &Tensor, dy: &Tensor, f: usize) -> Tensor {
    let [_, _, h, w] = dims(x);
    let (oh, ow) = (h * f, w * f);
    let xt: Vec<(usize, usize, f32)> = (0..ow).map(|o| bilinear_taps(o, f, w)).collect();
    let yt: Vec<(usize, usize, f32)> = (0..oh).map(|o| bilinear_taps(o, f, h)).collect();
    let mut dx = crate::cpu::buffer::overwritten(x.data.len());
    let ohw = oh * ow;
    parallel::for_each_chunk_mut(&mut dx, h * w, planes_per_task(ohw), |p, d| {
        let g = &dy.data[p * ohw..(p + 1) * ohw];
        {
            d.fill(0.0); // per plane, as in `max_pool_backward`
            for (grow, &(y0, y1, ly)) in g.chunks_exact(ow).zip(&yt) {
                for (&gv, &(x0, x1, lx)) in grow.iter().zip(&xt) {
                    let top = (1.0 - ly) * gv;
                    let bot = ly * gv;
                    d[y0 * w + x0] += (1.0 - lx) * top;
                    d[y0 * w + x1] += lx * top;
                    d[y1 * w + x0] += (1.0 - lx) * bot;
                    d[y1 * w + x1] += lx * bot;
                }
            }
        }
    });
    like(x, dx)
}

/// Splits the gradient of a concatenation into one gradient per input (channel counts `cs`).
pub fn concat_backward(dy: &Tensor, cs: &[usize]) -> Vec<Tensor> {
    let [n, c, h, w] = dims(dy);
    let hw = h * w;
    let mut off = 0;
    cs.iter()
        .map(|&ci| {
            let mut d = crate::cpu::buffer::overwritten(n * ci * hw);
            parallel::for_each_chunk_mut(&mut d, ci * hw, 1, |b, dst| {
                let s = (b * c + off) * hw;
                dst.copy_from_slice(&dy.data[s..s + ci * hw]);
            });
            off += ci;
            Tensor { shape: vec![n, ci, h, w], data: d }
        })
        .collect()
}

/// `y = alpha * skip + x`: returns `(dskip, dalpha)` (dx is dy itself).
pub fn gated_add_backward(skip: &Tensor, dy: &Tensor, alpha: &[f32]) -> (Tensor, Vec<f32>) {
    let [n, c, h, w] = dims(dy);
    let hw = h * w;
    let kernel = Kernel::detect();
    // Per plane, the dot product with the skip input and then `ds = alpha * dy` while the plane
    // of `dy` is still in cache (one pass over `dy` from memory instead of two); the planes'
    // dots are added per channel in item order, in f64, as `channel_dots` adds them.
    let mut ds = crate::cpu::buffer::overwritten(dy.data.len());
    let dots: Vec<f64> = parallel::map_chunks_mut(&mut ds, hw, planes_per_task(hw), |p, d| {
        let (g, x) = (&dy.data[p * hw..(p + 1) * hw], &skip.data[p * hw..(p + 1) * hw]);
        let (_, dot) = centered_sums(g, 0.0, x, 0.0, kernel);
        let a = alpha[p % c];
        d.iter_mut().zip(g).for_each(|(d, &g)| *d = g * a);
        dot
    });
    let dalpha = (0..c).map(|ch| (0..n).map(|b| dots[b * c + ch]).sum::<f64>() as f32).collect();
    (like(skip, ds), dalpha)
}

/// Inverse permutation of the CRD pixel shuffle.
pub fn pixel_shuffle_backward(x: &Tensor, dy: &Tensor, r: usize) -> Tensor {
    let [_, _, h, w] = dims(x);
    let ow = w * r;
    let (ohw, hw) = (h * r * ow, h * w);
    let mut dx = crate::cpu::buffer::overwritten(x.data.len());
    // Input plane q = (b, ch*r*r + di*r + dj) reads output plane p = q / (r*r).
    parallel::for_each_chunk_mut(&mut dx, hw, planes_per_task(hw), |q, d| {
        let p = q / (r * r);
        let (di, dj) = ((q % (r * r)) / r, q % r);
        let g = &dy.data[p * ohw..(p + 1) * ohw];
        for i in 0..h {
            let grow = &g[(i * r + di) * ow..(i * r + di + 1) * ow];
            for j in 0..w {
                d[i * w + j] = grow[j * r + dj];
            }
        }
    });
    like(x, dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A batch norm's backward step with the ReLU's mask applied inside it gives exactly (bit
    /// for bit) what the separate ReLU backward pass followed by the plain batch-norm backward
    /// step gives, in training and evaluation mode; the input has values whose affine image is
    /// exactly 0 (the ReLU's kink), NaN-free. Planes of 13 x 7 (not a multiple of the 8 lanes).
    #[test]
    fn batch_norm_backward_with_relu_equals_the_two_separate_passes() {
        let mut rng = Rng::new(77);
        let (n, c, h, w) = (3, 5, 13, 7);
        let mut x = Tensor { shape: vec![n, c, h, w], data: rng.vec(n * c * h * w, -2.0, 2.0) };
        let gamma = rng.vec(c, -1.5, 1.5);
        let beta = rng.vec(c, -0.5, 0.5);
        let mean = rng.vec(c, -0.3, 0.3);
        let inv_std: Vec<f32> = rng.vec(c, 0.5, 2.0);
        let (scale, shift) = bn_scale_shift(&gamma, &beta, &mean, &inv_std);
        // Put a few inputs exactly on the kink: scale * x + shift == 0 in f32 (x = 0, shift = 0).
        let mut shift = shift;
        shift[2] = 0.0;
        for i in (0..x.data.len()).step_by(17) {
            x.data[i] = 0.0;
        }
        let y = {
            let mut y = x.clone();
            for (p, d) in y.data.chunks_mut(h * w).enumerate() {
                let ch = p % c;
                d.iter_mut().for_each(|v| *v = (scale[ch] * *v + shift[ch]).max(0.0));
            }
            y
        };
        let dy = Tensor { shape: x.shape.clone(), data: rng.vec(x.data.len(), -1.0, 1.0) };
        for batch in [true, false] {
            let dz = activation_backward(&y, &dy, Act::Relu);
            let two = batch_norm_backward(&x, dz, &gamma, &mean, &inv_std, batch, None);
            let one = batch_norm_backward(&x, dy.clone(), &gamma, &mean, &inv_std, batch, Some((&scale, &shift)));
            assert_eq!(one.0.shape, two.0.shape);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one.0.data), bits(&two.0.data), "dx, batch statistics: {batch}");
            assert_eq!(bits(&one.1), bits(&two.1), "dgamma, batch statistics: {batch}");
            assert_eq!(bits(&one.2), bits(&two.2), "dbeta, batch statistics: {batch}");
        }
    }
}
