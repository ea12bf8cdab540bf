//! Fast CPU convolution.
//!
//! - General case: per batch item and group, `out[cout_g, oh*ow] = W[cout_g, K] x B[K, oh*ow]`
//!   with `K = cin_g*kh*kw` through `super::gemm::matmul`, where `B` is the im2col matrix. The output is
//!   processed in tiles of whole output rows so the im2col buffer stays small (and is reused
//!   across calls), and the epilogue runs on each tile right after its GEMM, while it is still in
//!   cache.
//! - 1x1, stride 1, unpadded: no im2col, the input slice already is `B`.
//! - Depthwise (`cin_g == 1`, `cout == groups`): a direct loop, parallel over `(n, c)` planes,
//!   with the epilogue applied to each plane in the same task.
//!
//! The epilogue is `y = post_act( act(conv + bias) (+) residual )`.

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::{matmul, Mat, MatMut, Parallelism};
use super::ops::{act_in_place, planes_per_task, valid_range};
use crate::graph::{Act, Conv2d, Residual};
use crate::tensor::Tensor;

/// Budget of the im2col tile in elements (4 MiB of f32): the best of 64K..4M elements measured on
/// a 2-core Zen 5 (1 MiB L2 per core) for 3x3, 7x7 stride-2 and 1x1 convolutions.
const TILE_ELEMS: usize = 1 << 20;

thread_local! {
    /// im2col buffer, reused across calls on the same thread.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Convolution with its fused epilogue. `x` is `[n, cin, h, w]`, `residual` (present exactly
/// when the epilogue has one) has the output shape `out`. Inputs are assumed validated.
pub fn conv2d(x: &Tensor, residual: Option<&Tensor>, c: &Conv2d, out: [usize; 4]) -> Tensor {
    let mut y = vec![0.0f32; out.iter().product()];
    let ep = EpilogueRef::new(c, residual);
    if c.cin_per_group() == 1 && c.cout() == c.groups {
        depthwise(x, c, out, &ep, &mut y);
    } else {
        gemm_conv(x, c, out, &ep, &mut y);
    }
    Tensor { shape: out.to_vec(), data: y }
}

/// The epilogue with its per-channel parameters borrowed.
struct EpilogueRef<'a> {
    bias: Option<&'a [f32]>,
    act: Act,
    /// (kind, gate, residual tensor data)
    residual: Option<(&'a Residual, &'a [f32])>,
    post_act: Act,
}

impl<'a> EpilogueRef<'a> {
    fn new(c: &'a Conv2d, residual: Option<&'a Tensor>) -> Self {
        EpilogueRef {
            bias: c.bias.as_ref().map(|b| &b.data[..]),
            act: c.epilogue.act,
            residual: c.epilogue.residual.as_ref().zip(residual.map(|r| &r.data[..])),
            post_act: c.epilogue.post_act,
        }
    }

    fn is_identity(&self) -> bool {
        self.bias.is_none() && self.act == Act::None && self.residual.is_none() && self.post_act == Act::None
    }

    /// Applies the epilogue to `v`, a run of channel `o`'s outputs that starts at element
    /// `offset` of the whole output tensor.
    fn apply(&self, v: &mut [f32], o: usize, offset: usize) {
        if let Some(b) = self.bias {
            let b = b[o];
            v.iter_mut().for_each(|x| *x += b);
        }
        act_in_place(v, self.act);
        if let Some((kind, r)) = self.residual {
            let r = &r[offset..offset + v.len()];
            match kind {
                Residual::Add => v.iter_mut().zip(r).for_each(|(x, r)| *x += r),
                Residual::GateResidual(a) => {
                    let a = a.data[o];
                    v.iter_mut().zip(r).for_each(|(x, r)| *x += a * r);
                }
                Residual::GateConv(a) => {
                    let a = a.data[o];
                    v.iter_mut().zip(r).for_each(|(x, r)| *x = a * *x + r);
                }
            }
        }
        act_in_place(v, self.post_act);
    }
}

fn gemm_conv(x: &Tensor, c: &Conv2d, out: [usize; 4], ep: &EpilogueRef, y: &mut [f32]) {
    let [n, cin, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [_, cout, oh, ow] = out;
    let (ohw, hw) = (oh * ow, h * w);
    let groups = c.groups;
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let [kh, kw] = c.kernel();
    let k = cin_g * kh * kw;
    let direct = kh == 1 && kw == 1 && c.stride == [1, 1] && c.padding == [0, 0];
    // Output rows per tile (for the direct 1x1 case, tiles only keep the epilogue in cache).
    let rows = (TILE_ELEMS / (k * ow).max(1)).clamp(1, oh);
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };

    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if !direct && scratch.len() < k * rows * ow {
            scratch.resize(k * rows * ow, 0.0);
        }
        for b in 0..n {
            for g in 0..groups {
                let xg = &x.data[(b * cin + g * cin_g) * hw..(b * cin + (g + 1) * cin_g) * hw];
                let wg = &c.weight.data[g * cout_g * k..(g + 1) * cout_g * k];
                let y0 = (b * cout + g * cout_g) * ohw;
                for oy0 in (0..oh).step_by(rows) {
                    let oy1 = (oy0 + rows).min(oh);
                    let cols = (oy1 - oy0) * ow;
                    let (rhs, rhs_rs): (&[f32], usize) = if direct {
                        (&xg[oy0 * ow..], hw)
                    } else {
                        let buf = &mut scratch[..k * cols];
                        im2col(xg, [cin_g, h, w], c, [oy0, oy1], ow, buf);
                        (buf, cols)
                    };
                    let yt = &mut y[y0..y0 + cout_g * ohw];
                    matmul(
                        MatMut::rows(&mut yt[oy0 * ow..], cout_g, cols, ohw),
                        Mat::rows(wg, cout_g, k, k),
                        Mat::rows(rhs, k, cols, rhs_rs),
                        false,
                        par,
                    );
                    if !ep.is_identity() {
                        let c0 = oy0 * ow;
                        yt.par_chunks_mut(ohw).with_min_len(planes_per_task(cols)).enumerate().for_each(
                            |(i, plane)| {
                                ep.apply(&mut plane[c0..c0 + cols], g * cout_g + i, y0 + i * ohw + c0);
                            },
                        );
                    }
                }
            }
        }
    });
}

/// Writes the im2col matrix of output rows `[oy0, oy1)` into `buf`: row `(ci*kh + ky)*kw + kx`,
/// column `(oy - oy0)*ow + ox` holds `x[ci, oy*sy + ky*dy - py, ox*sx + kx*dx - px]`, or 0 in
/// the padding. `x` is one group of one batch item, `[cin_g, h, w]`.
///
/// One task fills the `kw` rows of one `(ci, ky)`: they read the same input rows, so with a
/// horizontal stride each input row is split once into its `sx` phases, after which every row
/// segment is a contiguous copy.
pub fn im2col(x: &[f32], [_, h, w]: [usize; 3], c: &Conv2d, [oy0, oy1]: [usize; 2], ow: usize, buf: &mut [f32]) {
    let [kh, kw] = c.kernel();
    let [sy, sx] = c.stride;
    let [py, px] = c.padding;
    let [dy, dx] = c.dilation;
    let cols = (oy1 - oy0) * ow;
    // Length of one phase, and for each kx: valid output range, phase, and shift in the phase
    // (`ix = ox*sx + kx*dx - px = (ox + shift)*sx + phase`).
    let pl = w.div_ceil(sx);
    let taps: Vec<(usize, usize, usize, isize)> = (0..kw)
        .map(|kx| {
            let (x0, x1) = valid_range(w, ow, sx, kx * dx, px);
            let off = (kx * dx) as isize - px as isize;
            (x0, x1, off.rem_euclid(sx as isize) as usize, off.div_euclid(sx as isize))
        })
        .collect();
    let block_len = kw * cols;
    buf.par_chunks_mut(block_len).with_min_len(planes_per_task(block_len)).enumerate().for_each(|(r, block)| {
        let (ci, ky) = (r / kh, r % kh);
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        let mut phases = vec![0.0f32; if sx > 1 { sx * pl } else { 0 }];
        for (t, oy) in (oy0..oy1).enumerate() {
            let iy = oy * sy + ky * dy;
            if iy < py || iy - py >= h {
                for kx in 0..kw {
                    block[kx * cols + t * ow..kx * cols + (t + 1) * ow].fill(0.0);
                }
                continue;
            }
            let src = &plane[(iy - py) * w..(iy - py + 1) * w];
            let src: &[f32] = if sx == 1 {
                src
            } else {
                for ph in 0..sx.min(w) {
                    for (d, s) in phases[ph * pl..(ph + 1) * pl].iter_mut().zip(src[ph..].iter().step_by(sx)) {
                        *d = *s;
                    }
                }
                &phases
            };
            for (kx, &(x0, x1, ph, shift)) in taps.iter().enumerate() {
                let seg = &mut block[kx * cols + t * ow..kx * cols + (t + 1) * ow];
                seg[..x0].fill(0.0);
                seg[x1..].fill(0.0);
                if x0 < x1 {
                    let start = ph * pl + (x0 as isize + shift) as usize;
                    seg[x0..x1].copy_from_slice(&src[start..start + (x1 - x0)]);
                }
            }
        }
    });
}

/// Direct depthwise convolution, one task per group of `(n, c)` planes, epilogue included.
fn depthwise(x: &Tensor, c: &Conv2d, out: [usize; 4], ep: &EpilogueRef, y: &mut [f32]) {
    let [_, ch, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [_, _, oh, ow] = out;
    let [kh, kw] = c.kernel();
    let geom = DwGeom {
        h,
        w,
        ow,
        kh,
        kw,
        stride: c.stride,
        pad: c.padding,
        dil: c.dilation,
        xr: (0..kw).map(|kx| valid_range(w, ow, c.stride[1], kx * c.dilation[1], c.padding[1])).collect(),
    };
    #[cfg(target_arch = "x86_64")]
    let avx2 = is_x86_feature_detected!("avx2");
    y.par_chunks_mut(oh * ow)
        .zip(x.data.par_chunks(h * w))
        .with_min_len(planes_per_task(oh * ow * kh * kw / 4))
        .enumerate()
        .for_each(|(p, (d, s))| {
            let o = p % ch;
            let wk = &c.weight.data[o * kh * kw..(o + 1) * kh * kw];
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU supports AVX2 (checked above).
                unsafe { depthwise_plane_avx2(&geom, d, s, wk) };
                ep.apply(d, o, p * oh * ow);
                return;
            }
            depthwise_plane(&geom, d, s, wk);
            ep.apply(d, o, p * oh * ow);
        });
}

/// Geometry of a depthwise convolution; `xr[kx]` is the valid output column range of tap `kx`.
struct DwGeom {
    h: usize,
    w: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    xr: Vec<(usize, usize)>,
}

/// The same loops compiled with AVX2 enabled (the crate's baseline target is SSE2 only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_plane_avx2(g: &DwGeom, d: &mut [f32], s: &[f32], wk: &[f32]) {
    depthwise_plane(g, d, s, wk)
}

/// Accumulates one output plane `d` (zero on entry) from input plane `s` and the `kh x kw`
/// kernel `wk`.
#[inline(always)]
fn depthwise_plane(g: &DwGeom, d: &mut [f32], s: &[f32], wk: &[f32]) {
    let DwGeom { h, w, ow, kh, kw, .. } = *g;
    let ([sy, sx], [py, px], [dy, dx]) = (g.stride, g.pad, g.dil);
    for (oy, drow) in d.chunks_exact_mut(ow).enumerate() {
        for ky in 0..kh {
            let iy = oy * sy + ky * dy;
            if iy < py || iy - py >= h {
                continue;
            }
            let srow = &s[(iy - py) * w..(iy - py + 1) * w];
            for (kx, &(x0, x1)) in g.xr.iter().enumerate() {
                if x0 >= x1 {
                    continue;
                }
                let wv = wk[ky * kw + kx];
                let ix0 = x0 * sx + kx * dx - px;
                if sx == 1 {
                    for (d, s) in drow[x0..x1].iter_mut().zip(&srow[ix0..ix0 + (x1 - x0)]) {
                        *d += wv * s;
                    }
                } else {
                    for (d, s) in drow[x0..x1].iter_mut().zip(srow[ix0..].iter().step_by(sx)) {
                        *d += wv * s;
                    }
                }
            }
        }
    }
}
