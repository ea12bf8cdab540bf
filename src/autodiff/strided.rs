//! Gradients of strided convolutions by phase decomposition.
//!
//! With stride `(sy, sx)` and padding `(py, px)`, input row `iy` is reached only by the taps
//! `ky` with `ky mod sy == (iy + py) mod sy`: the input splits into `sy * sx` phases, and phase
//! `(fy, fx)` sees a sub-kernel of `ceil((kh - fy) / sy) x ceil((kw - fx) / sx)` taps at stride 1.
//! So
//! - the input gradient of each phase is a stride-1 "full" convolution of dY with that phase's
//!   taps, flipped and with the channels swapped, run by the forward convolution (`cpu::conv`:
//!   packed weights, batch folding on small maps, its threads), then interleaved into every
//!   `sy`-th row and `sx`-th column of dX;
//! - the weight gradient of layers of at most 32 output channels is one `cpu::weight_grad` pass
//!   over all taps, its source every input plane split into its phases, so that each tap reads
//!   its phase at stride 1 (wider layers keep `super::conv_backward`'s im2col product).
//!
//! Why: the general path (`dW = dY * im2col(X)^T`, `dX = col2im(W^T * dY)`) ran the stride-2
//! 3x3 layers of LDCRN's shapes at 14-40 GFLOP/s against 28-90 for their forward passes
//! (`examples/conv_grad_profile`, one pinned thread of an AVX-512 Xeon, session 29): col2im
//! scatters one value at a time, and the products of narrow layers are short.
//!
//! With the phases (batch 16, one pinned thread): 16 -> 16 channels at 32x32, dW 1.3-1.4 -> 0.5
//! ms and dX 1.0-1.1 -> 0.8-0.9; ResNet-18's 256 -> 512 at 8x8, dX 19.4-20.3 -> 14.6; LDCRN's
//! 20 stride-2 layers in a training step, backward 66.0-67.6 -> 57.2-57.9 ms. On two threads no
//! change was measurable.
//!
//! Wide layers on small maps (ResNet-18's stride-2 layers, 64 or more output channels) keep
//! the general path's input gradient, which is faster there ([`product_is_cheaper`]).
//!
//! `WGPOSE_CPU_STRIDED=im2col` turns the decomposition off (A/Bs).

use crate::cpu::parallel;

use crate::cpu::ops::{planes_per_task, Planes};
use crate::cpu::weight_grad::DwGeometry;
use crate::graph::{Conv2d, Epilogue};
use crate::tensor::Tensor;

/// Whether `c`'s gradients are computed by phases: a strided, undilated convolution of one
/// group (depthwise ones have their own direct loops) whose product path is not the cheaper
/// ([`product_is_cheaper`]), unless `WGPOSE_CPU_STRIDED=im2col`.
pub(super) fn applies(c: &Conv2d, out_hw: [usize; 2]) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("WGPOSE_CPU_STRIDED").as_deref() == Ok("im2col"));
    !off && c.stride != [1, 1] && c.dilation == [1, 1] && c.groups == 1 && !product_is_cheaper(c, out_hw)
}

/// Bytes of one item's im2col columns up to which [`product_is_cheaper`] holds: about what
/// stays in a core's L2 beside the product's other operands.
const PRODUCT_MAX_COLUMN_BYTES: usize = 640 << 10;

/// Whether the general path (`dX = col2im(W^T * dY)`, one product per item, items split
/// between the threads) beats the phases for `c`'s input gradient: at least 64 output channels
/// (the product's depth) and one item's columns within [`PRODUCT_MAX_COLUMN_BYTES`], so col2im
/// adds into cache; on one thread also at least 64 input channels and 64 output pixels.
///
/// The phases were made for LDCRN's narrow layers; on ResNet-18's stride-2 layers they split a
/// deep product into four shallow ones. `examples/conv_grad_profile`, batch 16, a Zen 4
/// (session 38), dX in ms, phases against product, three alternated runs (input side given):
/// two threads, 64 -> 128 at 32x32 4.8-5.4 / 3.9-4.0 (one run 11.3), 128 -> 256 at 16x16
/// 6.8-7.6 / 3.4-4.7, 256 -> 512 at 8x8 9.3-9.9 / 7.1-7.3, the 1x1 stride-2 ones 1.1-1.6 /
/// 0.4-0.7; one thread 8.9-12.8 / 8.2-8.7, 9.8-10.7 / 7.6-8.5, 16.1-16.8 / 12.9-17.2. Past the
/// column budget the phases won on two threads (64 -> 128 at 36x36, 746 KiB of columns:
/// 8.9-9.2 / 11.4-11.7). In whole steps (`examples/train_profile MODEL 16`, five alternated
/// runs): fasterpose-r18-s32's stride-2 layers' backward on two threads 5.7-6.1 -> 4.1-5.4 ms
/// (1x1) and 32.1-33.4 -> 27.0-29.5 ms (3x3), about 2% of the step; the default model's 3x3
/// ones on one thread 37.0-38.1 -> 34.7-36.2 ms.
fn product_is_cheaper(c: &Conv2d, [oh, ow]: [usize; 2]) -> bool {
    let [kh, kw] = c.kernel();
    let deep = c.cout() >= 64 && c.cin_per_group() * kh * kw * oh * ow * 4 <= PRODUCT_MAX_COLUMN_BYTES;
    // One thread: the phases fold the batch into one product per phase and stay level or ahead
    // on narrow inputs and tiny maps (LDCRN's 16/32 -> 64 layers at 8x8 took 0.3-0.6 ms more
    // each by products); with threads, they split four small products between them.
    deep && (rayon::current_num_threads() > 1 || (c.cin_per_group() >= 64 && oh * ow >= 64))
}

/// One phase: input rows `iy` with `(iy + py) mod sy == fy` (and columns alike), reached by the
/// taps `fy + sy * a` for `a < jh` (and `fx + sx * b` for `b < jw`).
#[derive(Clone, Copy)]
struct Phase {
    fy: usize,
    fx: usize,
    jh: usize,
    jw: usize,
}

fn phases(c: &Conv2d) -> Vec<Phase> {
    let ([kh, kw], [sy, sx]) = (c.kernel(), c.stride);
    let taps = |k: usize, f: usize, s: usize| k.saturating_sub(f).div_ceil(s);
    (0..sy).flat_map(|fy| (0..sx).map(move |fx| Phase { fy, fx, jh: taps(kh, fy, sy), jw: taps(kw, fx, sx) })).collect()
}

/// The first index `i >= 0` of phase `f` (`(i + pad) mod s == f`) and its position in the
/// phase's own grid, `(i + pad - f) / s`.
fn phase_start(pad: usize, f: usize, s: usize) -> (usize, usize) {
    let i0 = (f + s - pad % s) % s;
    (i0, (i0 + pad - f) / s)
}

fn dims(t: &Tensor) -> [usize; 4] {
    [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]
}

/// `dL/dx` (`[n, cin, h, w]`, the forward input's shape) of convolution `c` given `dy`.
pub(super) fn input_gradient(dy: &Tensor, c: &Conv2d, [n, cin, h, w]: [usize; 4]) -> Vec<f32> {
    let [_, cout, oh, ow] = dims(dy);
    let ([sy, sx], [py, px]) = (c.stride, c.padding);
    let phases = phases(c);
    let weights = flipped_phase_weights(c, &phases);
    // Z_phase[b, ci, U, V] = dX[b, ci, sy * U + fy - py, sx * V + fx - px]: a "full"
    // correlation of dY (padding jh - 1, jw - 1) with the phase's taps flipped.
    let zs: Vec<Option<Tensor>> = phases
        .iter()
        .zip(weights)
        .map(|(&Phase { jh, jw, .. }, wt)| {
            if jh == 0 || jw == 0 {
                return None;
            }
            let sub = Conv2d {
                weight: Tensor { shape: vec![cin, cout, jh, jw], data: wt },
                bias: None,
                stride: [1, 1],
                padding: [jh - 1, jw - 1],
                dilation: [1, 1],
                groups: 1,
                epilogue: Epilogue::default(),
            };
            let out = [n, cin, oh + jh - 1, ow + jw - 1];
            Some(crate::cpu::conv::conv2d_for_training(&Planes::new(&[dy]), None, &sub, out))
        })
        .collect();
    // One pass over dX: each row takes its phase's rows of Z, `sx` interleaved runs.
    let mut dx = crate::cpu::buffer::overwritten(n * cin * h * w);
    let hw = (h * w).max(1);
    parallel::for_each_chunk_mut(&mut dx, hw, planes_per_task(hw), |plane, out| {
        for (iy, row) in out.chunks_exact_mut(w.max(1)).enumerate().take(h) {
            let fy = (iy + py) % sy;
            let u = (iy + py - fy) / sy;
            for fx in 0..sx {
                let p = phases[fy * sx + fx];
                let (ix0, v0) = phase_start(px, fx, sx);
                let z = match &zs[fy * sx + fx] {
                    Some(z) if u < oh + p.jh - 1 => {
                        let zw = ow + p.jw - 1;
                        Some(&z.data[(plane * (oh + p.jh - 1) + u) * zw..][..zw])
                    }
                    _ => None,
                };
                let Some(run) = row.get_mut(ix0..) else { continue };
                let mut outs = run.iter_mut().step_by(sx);
                // Z first: `zip` takes from its first iterator first, so no output is skipped
                // when Z runs out.
                for (&v, o) in z.and_then(|z| z.get(v0..)).unwrap_or(&[]).iter().zip(&mut outs) {
                    *o = v;
                }
                outs.for_each(|o| *o = 0.0);
            }
        }
    });
    dx
}

/// Each phase's weights for its input gradient, `[cin, cout, jh, jw]`:
/// `W'[ci][co][a][b] = W[co][ci][fy + sy * (jh - 1 - a)][fx + sx * (jw - 1 - b)]`. One pass over
/// the weights, in parallel over input channels, every kernel read once for all phases: one
/// pass per phase, each reading a value per cache line (a kernel of a 512 -> 256 layer lies
/// 9 KiB from the next output channel's), took as long as the phases' products.
fn flipped_phase_weights(c: &Conv2d, phases: &[Phase]) -> Vec<Vec<f32>> {
    let ([cout, cin, kh, kw], [sy, sx]) = ([c.cout(), c.cin_per_group(), c.kernel()[0], c.kernel()[1]], c.stride);
    let mut out: Vec<Vec<f32>> = phases.iter().map(|p| vec![0.0f32; cin * cout * p.jh * p.jw]).collect();
    let mut rows: Vec<Vec<&mut [f32]>> = (0..cin).map(|_| Vec::with_capacity(phases.len())).collect();
    for (p, w) in phases.iter().zip(out.iter_mut()) {
        let per_row = (cout * p.jh * p.jw).max(1);
        for (ci, r) in w.chunks_exact_mut(per_row).enumerate() {
            rows[ci].push(r);
        }
        if p.jh * p.jw == 0 {
            rows.iter_mut().for_each(|r| r.push(&mut []));
        }
    }
    parallel::for_each_chunk_mut(&mut rows, 1, 1, |ci, dst| {
        let dst = &mut dst[0];
        for co in 0..cout {
            let kernel = &c.weight.data[(co * cin + ci) * kh * kw..][..kh * kw];
            for (p, d) in phases.iter().zip(dst.iter_mut()) {
                let (jh, jw) = (p.jh, p.jw);
                for a in 0..jh {
                    for b in 0..jw {
                        let (ky, kx) = (p.fy + sy * (jh - 1 - a), p.fx + sx * (jw - 1 - b));
                        d[(co * jh + a) * jw + b] = kernel[ky * kw + kx];
                    }
                }
            }
        }
    });
    out
}

/// `dL/dW` (`c`'s weight shape, row-major) of convolution `c` given its input `x` and `dy`,
/// when the layer is narrow enough for `cpu::weight_grad` (`conv_backward::narrow_weight_grad`:
/// at most 32 output channels, rows of at least its vector width); None otherwise, and wider
/// layers keep the im2col product. That split was chosen on a first version that ran one
/// stride-1 weight gradient per phase (four products of a quarter of the depth each): on
/// wider layers it lost to the product (64 -> 128 channels at 32x32, 13.4 -> 18.6 ms; 256 -> 512
/// at 8x8, 12.8 -> 15.8 ms; one unpinned thread, batch 16), and the one-pass version here was
/// only measured on narrow layers. `WGPOSE_CPU_DW` does not reach this choice.
pub(super) fn weight_gradient(x: &Tensor, dy: &Tensor, c: &Conv2d) -> Option<Vec<f32>> {
    let [_, cout, _, ow] = dims(dy);
    super::conv_backward::narrow_weight_grad(cout, ow).then(|| phase_weight_gradient(x, dy, c))
}

/// [`weight_gradient`] by phases, whatever the layer's width: one `cpu::weight_grad` pass
/// over all taps, its source each input plane split into its `sy * sx` phases
/// ([`split_phases`]), so that tap `(ky, kx)` reads phase `(ky mod sy, kx mod sx)` at stride 1
/// from row `ky / sy`, column `kx / sx`. Batch items split over the threads, each with its own
/// gradient, summed at the end (as `backward` does for stride 1).
fn phase_weight_gradient(x: &Tensor, dy: &Tensor, c: &Conv2d) -> Vec<f32> {
    let [n, cin, h, w] = dims(x);
    let [_, cout, oh, ow] = dims(dy);
    let ([kh, kw], [sy, sx]) = (c.kernel(), c.stride);
    let k = cin * kh * kw;
    // Phase (0, 0) has the most taps; every phase plane gets its size.
    let [ph, pw] = [oh + kh.div_ceil(sy) - 1, ow + kw.div_ceil(sx) - 1];
    let (phases, plane) = (sy * sx, ph * pw);
    let offsets: Vec<usize> = (0..cin)
        .flat_map(|ci| {
            (0..kh * kw).map(move |t| {
                let (ky, kx) = (t / kw, t % kw);
                ((ci * phases + (ky % sy) * sx + kx % sx) * ph + ky / sy) * pw + kx / sx
            })
        })
        .collect();
    let split_item = cin * phases * plane;
    let pass = (super::conv_backward::DW_PASS_BYTES / (4 * (split_item + cout * oh * ow)).max(1)).max(1);
    let kernel = crate::cpu::gemm::Kernel::detect();
    let items_grad = |b0: usize, b1: usize| -> Vec<f32> {
        let mut dwt = vec![0.0f32; cout * k];
        let mut split = Vec::new();
        for p0 in (b0..b1).step_by(pass) {
            let items = pass.min(b1 - p0);
            split.resize(items * split_item, 0.0);
            split_phases(&x.data[p0 * cin * h * w..][..items * cin * h * w], [h, w], c, [ph, pw], &mut split);
            let geo = DwGeometry {
                dy: &dy.data[p0 * cout * oh * ow..],
                cout_g: cout,
                oh,
                ow,
                padded: &split,
                pitch: pw,
                offsets: &offsets,
                items,
                dy_item: cout * oh * ow,
                padded_item: split_item,
            };
            crate::cpu::weight_grad::accumulate(&geo, &mut dwt, kernel);
        }
        dwt
    };
    let chunk = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let parts: Vec<Vec<f32>> =
        parallel::map_tasks(n.div_ceil(chunk), |i| items_grad(i * chunk, n.min((i + 1) * chunk)));
    let mut it = parts.into_iter();
    let mut dwt = it.next().unwrap_or_else(|| vec![0.0; cout * k]);
    for p in it {
        dwt.iter_mut().zip(&p).for_each(|(d, s)| *d += s);
    }
    super::conv_backward::rows_from_columns(&dwt, cout, k)
}

/// Every plane of `xs` (planes of `h x w`) as its `sy * sx` phases, one after the other, each
/// `ph x pw`: phase `(fy, fx)`'s value `(u, v)` is the input at row `sy * u + fy - py`, column
/// `sx * v + fx - px`, zero outside the input (the convolution's padding, and beyond).
fn split_phases(xs: &[f32], [h, w]: [usize; 2], c: &Conv2d, [ph, pw]: [usize; 2], out: &mut [f32]) {
    let ([sy, sx], [py, px]) = (c.stride, c.padding);
    let per_plane = sy * sx * ph * pw;
    for (src, dst) in xs.chunks_exact((h * w).max(1)).zip(out.chunks_exact_mut(per_plane.max(1))) {
        for (f, phase) in dst.chunks_exact_mut((ph * pw).max(1)).enumerate() {
            let (fy, fx) = (f / sx, f % sx);
            // Columns v0..v1 read the input (from column ix0), the others are padding.
            let (ix0, v0) = phase_start(px, fx, sx);
            let v1 = pw.min(v0 + w.saturating_sub(ix0).div_ceil(sx));
            for (u, row) in phase.chunks_exact_mut(pw.max(1)).enumerate() {
                match (sy * u + fy).checked_sub(py).filter(|&iy| iy < h && v0 < v1) {
                    Some(iy) => {
                        row[..v0].fill(0.0);
                        copy_every(&src[iy * w + ix0..(iy + 1) * w], sx, &mut row[v0..v1]);
                        row[v1..].fill(0.0);
                    }
                    None => row.fill(0.0),
                }
            }
        }
    }
}

/// `out[i] = src[i * step]` for every `i` of `out` (`src` long enough). Stride 2 as pairs, which
/// the compiler turns into vector shuffles (`step_by` compiled to one scalar load per value).
fn copy_every(src: &[f32], step: usize, out: &mut [f32]) {
    if step == 2 {
        let pairs = src.chunks_exact(2);
        let (n, last) = (pairs.len(), pairs.remainder().first().copied());
        out.iter_mut().zip(pairs).for_each(|(o, p)| *o = p[0]);
        if let (Some(o), Some(v)) = (out.get_mut(n), last) {
            *o = v;
        }
    } else {
        out.iter_mut().zip(src.iter().step_by(step)).for_each(|(o, &v)| *o = v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// dX and dW of `c` by the definition, in f64: every (output, tap) pair visited once.
    fn reference(x: &Tensor, dy: &Tensor, c: &Conv2d) -> (Vec<f64>, Vec<f64>) {
        let ([n, cin, h, w], [_, cout, oh, ow]) = (dims(x), dims(dy));
        let ([kh, kw], [sy, sx], [py, px]) = (c.kernel(), c.stride, c.padding);
        let (mut dx, mut dw) = (vec![0.0f64; x.data.len()], vec![0.0f64; c.weight.data.len()]);
        for b in 0..n {
            for co in 0..cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let g = dy.data[((b * cout + co) * oh + oy) * ow + ox] as f64;
                        for ci in 0..cin {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let (iy, ix) =
                                        ((oy * sy + ky) as isize - py as isize, (ox * sx + kx) as isize - px as isize);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xi = ((b * cin + ci) * h + iy as usize) * w + ix as usize;
                                    let wi = ((co * cin + ci) * kh + ky) * kw + kx;
                                    dx[xi] += c.weight.data[wi] as f64 * g;
                                    dw[wi] += x.data[xi] as f64 * g;
                                }
                            }
                        }
                    }
                }
            }
        }
        (dx, dw)
    }

    /// Both gradients against [`reference`] on random data, for strides 2 and 3 (and 2 x 1),
    /// kernels 1 to 7 (even ones too), padding 0 to 3, phases without taps (stride above the
    /// kernel), maps and channel counts that are not multiples of any tile (8, 16, 32), small
    /// maps in a batch (the folded forward products) and rows wide enough for the padded
    /// weight gradient. Tolerance: 2e-5 of the largest reference value, or absolute 2e-5.
    #[test]
    fn phases_match_the_definition() {
        // (n, cin, cout, [h, w], [kh, kw], [sy, sx], [py, px])
        let cases = [
            (2, 5, 7, [9, 11], [3, 3], [2, 2], [1, 1]),
            (3, 35, 20, [13, 10], [3, 3], [2, 2], [1, 1]),
            (2, 4, 6, [10, 9], [5, 5], [2, 2], [2, 2]),
            (2, 3, 4, [11, 12], [7, 7], [2, 2], [3, 3]),
            (1, 6, 5, [10, 10], [1, 1], [2, 2], [0, 0]),
            (2, 4, 3, [12, 11], [3, 3], [3, 3], [1, 1]),
            (2, 4, 3, [9, 9], [2, 2], [2, 2], [0, 0]),
            (2, 3, 5, [8, 9], [3, 3], [2, 1], [1, 1]),
            (2, 3, 2, [7, 7], [1, 1], [3, 3], [1, 1]),
            (2, 3, 4, [5, 6], [3, 3], [2, 2], [0, 0]),
            (3, 64, 40, [7, 6], [3, 3], [2, 2], [1, 1]),
            (2, 8, 16, [34, 35], [3, 3], [2, 2], [1, 1]),
        ];
        // Unwritten values of fresh buffers show as NaN (`cpu::buffer`).
        crate::cpu::buffer::poison_fresh_buffers(true);
        let mut rng = Rng::new(29);
        for (i, &(n, cin, cout, [h, w], [kh, kw], stride, padding)) in cases.iter().enumerate() {
            let c = Conv2d {
                weight: Tensor { shape: vec![cout, cin, kh, kw], data: rng.vec(cout * cin * kh * kw, -1.0, 1.0) },
                bias: None,
                stride,
                padding,
                dilation: [1, 1],
                groups: 1,
                epilogue: Epilogue::default(),
            };
            let [oh, ow] = c.out_hw(h, w).expect("the kernel fits");
            let x = Tensor { shape: vec![n, cin, h, w], data: rng.vec(n * cin * h * w, -1.0, 1.0) };
            let dy = Tensor { shape: vec![n, cout, oh, ow], data: rng.vec(n * cout * oh * ow, -1.0, 1.0) };
            let (want_dx, want_dw) = reference(&x, &dy, &c);
            let got_dx = input_gradient(&dy, &c, [n, cin, h, w]);
            let got_dw = phase_weight_gradient(&x, &dy, &c);
            for (what, got, want) in [("dX", &got_dx, &want_dx), ("dW", &got_dw, &want_dw)] {
                assert_eq!(got.len(), want.len(), "case {i} {what}: length");
                let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                for (j, (&g, &r)) in got.iter().zip(want.iter()).enumerate() {
                    assert!((g as f64 - r).abs() <= 2e-5 * scale, "case {i} {what}[{j}]: {g} against {r}");
                }
            }
        }
    }
}
