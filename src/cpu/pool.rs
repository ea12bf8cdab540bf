//! Max pooling, with or without the winning indices (the training forward pass keeps them for
//! the backward pass). Parallel over `(n, c)` planes.
//!
//! A window's maximum is separable: each input row is first reduced over the window's columns
//! (`kw` taps per output column), then each output is the maximum of `kh` such row results.
//! Strided taps are made contiguous by splitting each input row into its `stride` phases
//! (`row[j * stride + r]`), so both passes are plain loops over output columns that LLVM
//! vectorises (`max`/compare-select), instead of `kh * kw` strided scalar comparisons per
//! output, whose branches mispredict half the time on real activations. The compare-selects
//! are `select_unpredictable`: as plain `if`s LLVM compiled the indexed ones into branches.
//!
//! Semantics (PyTorch's): padded positions never win; the winner is the first maximum in window
//! order (rows, then columns); NaN propagates, and its index is the window's first NaN. A plane
//! that holds a NaN takes the exact scalar loop, which spells these rules out.

use std::hint::select_unpredictable;

use rayon::prelude::*;

use super::ops::{planes_per_task, valid_range};
use crate::tensor::Tensor;

/// Pool geometry: input `h x w`, output `oh x ow`, kernel, stride, padding (rows, columns).
#[derive(Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
}

impl Geometry {
    /// Input rows `[lo, hi)` of output row `oy`'s window, clipped to the input (never empty:
    /// shape inference allows a padding of at most half the kernel).
    fn rows(&self, oy: usize) -> (usize, usize) {
        let start = oy * self.stride[0];
        (
            (start.max(self.padding[0]) - self.padding[0]).min(self.h),
            (start + self.kernel[0] - self.padding[0]).min(self.h),
        )
    }

    /// The same for output column `ox`.
    fn cols(&self, ox: usize) -> (usize, usize) {
        let start = ox * self.stride[1];
        (
            (start.max(self.padding[1]) - self.padding[1]).min(self.w),
            (start + self.kernel[1] - self.padding[1]).min(self.w),
        )
    }
}

/// What every row of every plane shares: each column tap's output range and where it reads
/// in the row's phases, and each output column's first input column.
struct Plan {
    /// Per tap `kx` with any valid output: `(x0, x1, phase offset)`: outputs `x0..x1` read
    /// `phases[offset + (ox - x0)]`.
    taps: Vec<(usize, usize, usize)>,
    /// Per output column, the first input column of its window.
    first_col: Vec<usize>,
    /// Per output row, its window's input rows `[lo, hi)`.
    rows: Vec<(usize, usize)>,
    /// Length of one phase in the phases buffer.
    phase_len: usize,
}

impl Plan {
    fn new(g: &Geometry) -> Plan {
        let sx = g.stride[1];
        let phase_len = g.w.div_ceil(sx);
        let taps = (0..g.kernel[1])
            .filter_map(|kx| {
                let (x0, x1) = valid_range(g.w, g.ow, sx, kx, g.padding[1]);
                // Column of output ox for this tap: ox * sx + kx - pad = (ox + q) * sx + r.
                let off = kx as isize - g.padding[1] as isize;
                let (r, q) = (off.rem_euclid(sx as isize) as usize, off.div_euclid(sx as isize));
                (x0 < x1).then(|| (x0, x1, r * phase_len + (x0 as isize + q) as usize))
            })
            .collect();
        Plan {
            taps,
            first_col: (0..g.ow).map(|ox| g.cols(ox).0).collect(),
            rows: (0..g.oh).map(|oy| g.rows(oy)).collect(),
            phase_len,
        }
    }
}

/// Per-task buffers: the phases of one input row and the row reductions of a whole plane.
#[derive(Default)]
struct Scratch {
    phases: Vec<f32>,
    row_max: Vec<f32>,
    /// Winning input columns as f32 (exact below 2^24): selects between two f32 vectors
    /// vectorise where f32/u32 mixes did not.
    row_arg: Vec<f32>,
    /// The output row's winning flat indices, as f32.
    out_arg: Vec<f32>,
}

/// Max pooling of `x` into shape `out`.
pub fn max_pool(x: &Tensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], out: [usize; 4]) -> Tensor {
    pool(x, kernel, stride, padding, out, false).0
}

/// Max pooling of `x` into shape `out` and, for each output element, the flat in-plane index
/// (`iy * w + ix`) of the input element that won.
pub fn max_pool_with_argmax(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    out: [usize; 4],
) -> (Tensor, Vec<u32>) {
    let (y, idx) = pool(x, kernel, stride, padding, out, true);
    (y, idx)
}

fn pool(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    out: [usize; 4],
    with_index: bool,
) -> (Tensor, Vec<u32>) {
    let [h, w] = [x.shape[2], x.shape[3]];
    let [_, _, oh, ow] = out;
    let g = Geometry { h, w, oh, ow, kernel, stride, padding };
    let plan = Plan::new(&g);
    let mut y = vec![0.0f32; out.iter().product()];
    // Without indices, a one-element-per-plane dummy keeps the zip below uniform.
    let mut idx = vec![0u32; if with_index { y.len() } else { y.len() / (oh * ow).max(1) }];
    let idx_plane = if with_index { oh * ow } else { 1 };
    y.par_chunks_mut(oh * ow)
        .zip(idx.par_chunks_mut(idx_plane))
        .zip(x.data.par_chunks(h * w))
        .with_min_len(planes_per_task(oh * ow))
        .for_each_init(Scratch::default, |scratch, ((d, ix), s)| {
            let ix = if with_index { Some(ix) } else { None };
            // f32 column indices are exact below 2^24 elements per plane.
            if has_nan(s) || (with_index && h * w >= 1 << 24) {
                exact_plane(&g, s, d, ix);
            } else if let Some(ix) = ix {
                separable_plane::<true>(&g, &plan, s, d, ix, scratch);
            } else {
                separable_plane::<false>(&g, &plan, s, d, &mut [], scratch);
            }
        });
    if !with_index {
        idx = Vec::new();
    }
    (Tensor { shape: out.to_vec(), data: y }, idx)
}

/// Whether `s` holds a NaN: a fold without early exit per block vectorises (`any` does not, and
/// cost more than the pooling itself).
fn has_nan(s: &[f32]) -> bool {
    s.chunks(256).any(|c| c.iter().fold(false, |acc, v| acc | v.is_nan()))
}

/// One NaN-free plane, separably (see the module comment). `ARG`: also write the indices.
fn separable_plane<const ARG: bool>(
    g: &Geometry,
    plan: &Plan,
    s: &[f32],
    d: &mut [f32],
    ix: &mut [u32],
    scratch: &mut Scratch,
) {
    let Geometry { h, w, ow, stride, .. } = *g;
    let (sx, phase_len) = (stride[1], plan.phase_len);
    scratch.phases.resize(sx * phase_len, 0.0);
    scratch.row_max.resize(h * ow, 0.0);
    if ARG {
        scratch.row_arg.resize(h * ow, 0.0);
        scratch.out_arg.resize(ow, 0.0);
    }
    // Pass 1: every input row reduced over each output column's window.
    for iy in 0..h {
        let row = &s[iy * w..(iy + 1) * w];
        if sx == 1 {
            scratch.phases[..w].copy_from_slice(row);
        } else if sx == 2 {
            // The common case, as pairs (LLVM turns this into vector shuffles).
            let (even, odd) = scratch.phases.split_at_mut(phase_len);
            for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
                *e = pair[0];
                *o = pair[1];
            }
            if w % 2 == 1 {
                even[w / 2] = row[w - 1];
            }
        } else {
            for r in 0..sx.min(w) {
                let phase = &mut scratch.phases[r * phase_len..(r + 1) * phase_len];
                for (p, &v) in phase.iter_mut().zip(row[r..].iter().step_by(sx)) {
                    *p = v;
                }
            }
        }
        let m = &mut scratch.row_max[iy * ow..(iy + 1) * ow];
        let a = if ARG { &mut scratch.row_arg[iy * ow..(iy + 1) * ow] } else { &mut [][..] };
        // Start from each window's first column, so every output has a real element.
        for (ox, &c) in plan.first_col.iter().enumerate() {
            m[ox] = row[c];
            if ARG {
                a[ox] = c as i32 as f32;
            }
        }
        for &(x0, x1, at) in &plan.taps {
            let n = x1 - x0;
            let (m, src) = (&mut m[x0..x1], &scratch.phases[at..at + n]);
            if ARG {
                let a = &mut a[x0..x1];
                // Input column of output x0 for this tap.
                // i32 arithmetic: usize -> f32 conversions are scalar and branchy on x86-64.
                let (c0, step) = (((at / phase_len) + (at % phase_len) * sx) as i32, sx as i32);
                for i in 0..n {
                    let v = src[i];
                    let col = (c0 + i as i32 * step) as f32;
                    let gt = v > m[i];
                    m[i] = select_unpredictable(gt, v, m[i]);
                    a[i] = select_unpredictable(gt, col, a[i]);
                }
            } else {
                for i in 0..n {
                    m[i] = select_unpredictable(src[i] > m[i], src[i], m[i]);
                }
            }
        }
    }
    // Pass 2: each output row is the maximum of its window's row results.
    for (oy, &(y0, y1)) in plan.rows.iter().enumerate() {
        let drow = &mut d[oy * ow..(oy + 1) * ow];
        drow.copy_from_slice(&scratch.row_max[y0 * ow..(y0 + 1) * ow]);
        if ARG {
            let irow = &mut scratch.out_arg[..ow];
            let w0 = (y0 * w) as i32 as f32;
            for (i, &c) in irow.iter_mut().zip(&scratch.row_arg[y0 * ow..(y0 + 1) * ow]) {
                *i = w0 + c;
            }
            for iy in y0 + 1..y1 {
                let wy = (iy * w) as i32 as f32;
                let (m, a) = (&scratch.row_max[iy * ow..(iy + 1) * ow], &scratch.row_arg[iy * ow..(iy + 1) * ow]);
                for i in 0..ow {
                    let gt = m[i] > drow[i];
                    drow[i] = select_unpredictable(gt, m[i], drow[i]);
                    irow[i] = select_unpredictable(gt, wy + a[i], irow[i]);
                }
            }
            for (o, &i) in ix[oy * ow..(oy + 1) * ow].iter_mut().zip(irow.iter()) {
                *o = i as i32 as u32;
            }
        } else {
            for iy in y0 + 1..y1 {
                let m = &scratch.row_max[iy * ow..(iy + 1) * ow];
                for i in 0..ow {
                    drow[i] = select_unpredictable(m[i] > drow[i], m[i], drow[i]);
                }
            }
        }
    }
}

/// One plane by the definition: every window scanned in order, the first NaN or else the first
/// maximum winning.
fn exact_plane(g: &Geometry, s: &[f32], d: &mut [f32], mut ix: Option<&mut [u32]>) {
    for oy in 0..g.oh {
        let (y0, y1) = g.rows(oy);
        for ox in 0..g.ow {
            let (x0, x1) = g.cols(ox);
            let mut best = y0 * g.w + x0;
            let mut m = s[best];
            for iy in y0..y1 {
                for (i, &v) in s[iy * g.w + x0..iy * g.w + x1].iter().enumerate() {
                    if v > m || (v.is_nan() && !m.is_nan()) {
                        m = v;
                        best = iy * g.w + x0 + i;
                    }
                }
            }
            d[oy * g.ow + ox] = m;
            if let Some(ix) = ix.as_deref_mut() {
                ix[oy * g.ow + ox] = best as u32;
            }
        }
    }
}
