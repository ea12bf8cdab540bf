//! Max pooling, with or without the winning indices (the training forward pass keeps them for
//! the backward pass). Parallel over `(n, c)` planes.
//!
//! A window's maximum is separable. Without indices (inference), each output row first takes
//! the element-wise maximum of its window's `kh` input rows (contiguous, vectorised), then
//! reduces that one row over each output column's `kw` taps. With indices (training), each input
//! row is first reduced over the columns (keeping the winning column), then each output is the
//! maximum of `kh` such row results, so ties resolve in window order. Strided taps are made
//! contiguous by splitting a row into its `stride` phases (`row[j * stride + r]`), so every pass
//! is a plain loop over output columns; the indexed ones use branch-free compare-selects
//! (`select_unpredictable`: as plain `if`s LLVM compiled them into branches, which mispredict
//! half the time on real activations), instead of `kh * kw` strided comparisons per output.
//! Rows first took 40% off the inference pool of ResNet's stem (3x3, stride 2, 64 planes of
//! 64x64: 0.33 -> 0.20 ms on one Zen 1 thread, planes in a loop).
//!
//! Semantics (PyTorch's): padded positions never win; the winner is the first maximum in window
//! order (rows, then columns); NaN propagates, and its index is the window's first NaN. A plane
//! that holds a NaN takes the exact scalar loop, which spells these rules out.

use std::hint::select_unpredictable;

use rayon::prelude::*;

use super::parallel;

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
    /// Input positions `[lo, hi)` along `axis` (0: rows, 1: columns) of output position `o`'s
    /// window, clipped to the input (never empty: shape inference allows a padding of at most
    /// half the kernel).
    fn window(&self, axis: usize, o: usize) -> (usize, usize) {
        let (len, pad) = ([self.h, self.w][axis], self.padding[axis]);
        let start = o * self.stride[axis];
        (start.saturating_sub(pad).min(len), (start + self.kernel[axis] - pad).min(len))
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
            first_col: (0..g.ow).map(|ox| g.window(1, ox).0).collect(),
            rows: (0..g.oh).map(|oy| g.window(0, oy)).collect(),
            phase_len,
        }
    }
}

/// Per-task buffers: the phases of one input row and the row reductions of a whole plane.
#[derive(Default)]
struct Scratch {
    phases: Vec<f32>,
    row_max: Vec<f32>,
    /// The winning input column of each `row_max` value.
    row_arg: Vec<u32>,
}

/// Max pooling of `x` into shape `out`. Inputs are assumed validated (as `cpu::eval_op` does).
pub(crate) fn max_pool(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    out: [usize; 4],
) -> Tensor {
    let (g, plan) = geometry(x, kernel, stride, padding, out);
    // Every output is written (by `rows_first_plane` or `exact_plane`).
    let mut y = super::buffer::overwritten(out.iter().product());
    let plane = g.h * g.w;
    parallel::for_each_chunk_mut_with(
        &mut y,
        g.oh * g.ow,
        planes_per_task(g.oh * g.ow),
        Scratch::default,
        |scratch, p, d| inference_plane(&g, &plan, &x.data[p * plane..(p + 1) * plane], d, scratch),
    );
    Tensor { shape: out.to_vec(), data: y }
}

/// One plane without indices: the NaN check, then [`rows_first_plane`] (or [`exact_plane`]),
/// compiled for the CPU's vectors: at the crate's SSE2 baseline ResNet's stem pool (64 planes of
/// 80 x 64) took about 3x ONNX Runtime's time on one thread of an AVX-512 Xeon (session 34).
fn inference_plane(g: &Geometry, plan: &Plan, s: &[f32], d: &mut [f32], scratch: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    match super::gemm::Kernel::detect() {
        // SAFETY: the kernel implies the CPU's features (`Kernel::detect`); both kinds of CPU
        // have AVX2 for the stride-2 planes.
        super::gemm::Kernel::Avx512 | super::gemm::Kernel::Avx2 if unsafe { stride2::plane(g, plan, s, d) } => return,
        super::gemm::Kernel::Avx512 => return unsafe { inference_plane_avx512(g, plan, s, d, scratch) },
        super::gemm::Kernel::Avx2 => return unsafe { inference_plane_avx2(g, plan, s, d, scratch) },
        _ => {}
    }
    inference_plane_body(g, plan, s, d, scratch)
}

/// The two stride-2 pools of the shipped networks (2x2 without padding, the hourglass's; 3x3
/// with one pixel of padding, ResNet's stem) in one pass per output row with AVX2: 8 outputs
/// from the window rows' maximum over 16 (or 16 + 2) columns, split into even and odd columns by
/// two shuffles. The row-by-row passes of [`rows_first_plane`] (a copy, a maximum per extra row,
/// the phases, the column pass, each a short loop over one row) took 2.5-4.7x ONNX Runtime's
/// time on these pools on one Zen 3 thread (session 36). Same order of comparisons as
/// `rows_first_plane` (rows first, then columns, ties keep the earlier value), so the same bits.
#[cfg(target_arch = "x86_64")]
mod stride2 {
    use super::{has_nan, Geometry, Plan};
    use std::arch::x86_64::*;

    /// Pools one plane and returns true, or returns false with `d` untouched: another geometry,
    /// or a NaN in the plane (the caller's exact path then decides).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn plane(g: &Geometry, plan: &Plan, s: &[f32], d: &mut [f32]) -> bool {
        let (w, ow) = (g.w, g.ow);
        let three = match (g.kernel, g.stride, g.padding) {
            ([2, 2], [2, 2], [0, 0]) if ow == w / 2 => false,
            ([3, 3], [2, 2], [1, 1]) if ow == w.div_ceil(2) => true,
            _ => return false,
        };
        if s.len() < g.h * w || d.len() < g.oh * ow || has_nan(&s[..g.h * w]) {
            return false;
        }
        for (oy, &(y0, y1)) in plan.rows.iter().enumerate() {
            let rows = &s[y0 * w..y1 * w];
            let out = &mut d[oy * ow..(oy + 1) * ow];
            // SAFETY (the `column_max` calls): AVX2 (this function's contract); x + 8 <= w by
            // the loop conditions (2x + 16 <= w, in the 3x3 case through `last`; ow <= (w + 1) / 2).
            if !three {
                // out[x] = max(col(2x), col(2x + 1)).
                let mut x = 0;
                while x + 8 <= ow {
                    let (e, o) = even_odd(column_max(rows, w, 2 * x), column_max(rows, w, 2 * x + 8));
                    store(out, x, _mm256_max_ps(o, e));
                    x += 8;
                }
                for (x, o) in out.iter_mut().enumerate().skip(x) {
                    *o = window_max(rows, w, 2 * x, 2 * x + 2);
                }
            } else {
                // out[x] = max(col(2x - 1), col(2x), col(2x + 1)), clipped to the row.
                out[0] = window_max(rows, w, 0, 2.min(w));
                // Outputs x..x + 8 from columns 2x - 2..2x + 16, for x from 1 in steps of 8 and
                // then once more at the last x that fits, overlapping the previous step (the
                // same values again): on 64-wide rows 7 of 32 outputs were left to the scalar
                // tail (ResNet's stem pool, 64 planes of 64x64: 0.115 -> 0.080 ms, session 37).
                let last = ow.saturating_sub(8).min(w.saturating_sub(16) / 2);
                let mut x = 1;
                while x <= last {
                    let (e, o) = even_odd(column_max(rows, w, 2 * x), column_max(rows, w, 2 * x + 8));
                    // Odd columns of the pairs from 2x - 2: columns 2x - 1, 2x + 1, ...
                    let (_, p) = even_odd(column_max(rows, w, 2 * x - 2), column_max(rows, w, 2 * x + 6));
                    store(out, x, _mm256_max_ps(o, _mm256_max_ps(e, p)));
                    x = if x == last { x + 8 } else { (x + 8).min(last) };
                }
                for (x, o) in out.iter_mut().enumerate().skip(x) {
                    *o = window_max(rows, w, 2 * x - 1, (2 * x + 2).min(w));
                }
            }
        }
        true
    }

    /// The maximum of the window of `rows` (each `w` long) over columns `lo..hi` (not empty):
    /// each column's maximum over the rows, then over the columns, in order, ties keeping the
    /// earlier value (as the vector path).
    #[inline(always)]
    fn window_max(rows: &[f32], w: usize, lo: usize, hi: usize) -> f32 {
        let max = |a: f32, b: f32| if b > a { b } else { a };
        let col = |x: usize| rows.chunks_exact(w).skip(1).fold(rows[x], |m, r| max(m, r[x]));
        (lo + 1..hi).fold(col(lo), |m, x| max(m, col(x)))
    }

    /// The maximum over the rows of `rows` (each `w` long) at columns `x..x + 8`, rows in order,
    /// ties keeping the earlier row's value.
    ///
    /// # Safety
    /// AVX2; `x + 8 <= w`.
    #[inline(always)]
    unsafe fn column_max(rows: &[f32], w: usize, x: usize) -> __m256 {
        assert!(x + 8 <= w && rows.len() >= w && rows.len().is_multiple_of(w));
        // SAFETY: inside every row (asserted); AVX2 (contract).
        unsafe {
            let mut m = _mm256_loadu_ps(rows.as_ptr().add(x));
            for r in 1..rows.len() / w {
                m = _mm256_max_ps(_mm256_loadu_ps(rows.as_ptr().add(r * w + x)), m);
            }
            m
        }
    }

    /// The even and the odd lanes of the 16 values `a`, `b`, each in order.
    #[inline(always)]
    unsafe fn even_odd(a: __m256, b: __m256) -> (__m256, __m256) {
        // Within each 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6]; then the 64-bit quarters
        // reordered to [a0 a2 a4 a6 b0 b2 b4 b6].
        // SAFETY: AVX2 (the caller's contract).
        unsafe {
            let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
            (
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e))),
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o))),
            )
        }
    }

    #[inline(always)]
    unsafe fn store(out: &mut [f32], x: usize, v: __m256) {
        assert!(x + 8 <= out.len());
        // SAFETY: in bounds (asserted); AVX2 (the caller's contract).
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(x), v) }
    }
}

#[inline(always)]
fn inference_plane_body(g: &Geometry, plan: &Plan, s: &[f32], d: &mut [f32], scratch: &mut Scratch) {
    if !rows_first_plane(g, plan, s, d, scratch) {
        exact_plane(g, s, d, None);
    }
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn inference_plane_avx512(g: &Geometry, plan: &Plan, s: &[f32], d: &mut [f32], scratch: &mut Scratch) {
    inference_plane_body(g, plan, s, d, scratch)
}

/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn inference_plane_avx2(g: &Geometry, plan: &Plan, s: &[f32], d: &mut [f32], scratch: &mut Scratch) {
    inference_plane_body(g, plan, s, d, scratch)
}

/// Max pooling of `x` into shape `out` and, for each output element, the flat in-plane index
/// (`iy * w + ix`) of the input element that won. Inputs are assumed validated.
pub(crate) fn max_pool_with_argmax(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    out: [usize; 4],
) -> (Tensor, Vec<u32>) {
    let (g, plan) = geometry(x, kernel, stride, padding, out);
    let mut y = vec![0.0f32; out.iter().product()];
    let mut idx = vec![0u32; y.len()];
    y.par_chunks_mut(g.oh * g.ow)
        .zip(idx.par_chunks_mut(g.oh * g.ow))
        .zip(x.data.par_chunks(g.h * g.w))
        .with_min_len(planes_per_task(g.oh * g.ow))
        .for_each_init(Scratch::default, |scratch, ((d, ix), s)| {
            if (kernel, stride, padding) == ([2, 2], [2, 2], [0, 0]) {
                if !pairs_plane(&g, s, d, ix) {
                    exact_plane(&g, s, d, Some(ix));
                }
            } else if has_nan(s) {
                exact_plane(&g, s, d, Some(ix));
            } else {
                separable_plane(&g, &plan, s, d, ix, scratch);
            }
        });
    (Tensor { shape: out.to_vec(), data: y }, idx)
}

fn geometry(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    out: [usize; 4],
) -> (Geometry, Plan) {
    let g = Geometry { h: x.shape[2], w: x.shape[3], oh: out[2], ow: out[3], kernel, stride, padding };
    let plan = Plan::new(&g);
    (g, plan)
}

/// Whether `s` holds a NaN: a fold without early exit per block vectorises (`any` does not, and
/// cost more than the pooling itself).
#[inline(always)]
fn has_nan(s: &[f32]) -> bool {
    s.chunks(256).any(|c| c.iter().fold(false, |acc, v| acc | v.is_nan()))
}

/// One NaN-free plane with the winners' indices (training), columns first (see the module
/// comment).
fn separable_plane(g: &Geometry, plan: &Plan, s: &[f32], d: &mut [f32], ix: &mut [u32], scratch: &mut Scratch) {
    let Geometry { h, w, ow, stride, .. } = *g;
    let (sx, phase_len) = (stride[1], plan.phase_len);
    scratch.phases.resize(sx * phase_len, 0.0);
    scratch.row_max.resize(h * ow, 0.0);
    scratch.row_arg.resize(h * ow, 0);
    // Pass 1: every input row reduced over each output column's window.
    for iy in 0..h {
        let row = &s[iy * w..(iy + 1) * w];
        split_phases(row, sx, phase_len, &mut scratch.phases);
        let m = &mut scratch.row_max[iy * ow..(iy + 1) * ow];
        let a = &mut scratch.row_arg[iy * ow..(iy + 1) * ow];
        // Start from each window's first column, so every output has a real element.
        for (ox, &c) in plan.first_col.iter().enumerate() {
            m[ox] = row[c];
            a[ox] = c as u32;
        }
        for &(x0, x1, at) in &plan.taps {
            let n = x1 - x0;
            let (m, src, a) = (&mut m[x0..x1], &scratch.phases[at..at + n], &mut a[x0..x1]);
            // Input column of output x0 for this tap.
            let (c0, step) = (((at / phase_len) + (at % phase_len) * sx) as u32, sx as u32);
            for i in 0..n {
                let v = src[i];
                let col = c0 + i as u32 * step;
                let gt = v > m[i];
                m[i] = select_unpredictable(gt, v, m[i]);
                a[i] = select_unpredictable(gt, col, a[i]);
            }
        }
    }
    // Pass 2: each output row is the maximum of its window's row results.
    for (oy, &(y0, y1)) in plan.rows.iter().enumerate() {
        let drow = &mut d[oy * ow..(oy + 1) * ow];
        drow.copy_from_slice(&scratch.row_max[y0 * ow..(y0 + 1) * ow]);
        let irow = &mut ix[oy * ow..(oy + 1) * ow];
        let w0 = (y0 * w) as u32;
        for (i, &c) in irow.iter_mut().zip(&scratch.row_arg[y0 * ow..(y0 + 1) * ow]) {
            *i = w0 + c;
        }
        for iy in y0 + 1..y1 {
            let wy = (iy * w) as u32;
            let (m, a) = (&scratch.row_max[iy * ow..(iy + 1) * ow], &scratch.row_arg[iy * ow..(iy + 1) * ow]);
            for i in 0..ow {
                let gt = m[i] > drow[i];
                drow[i] = select_unpredictable(gt, m[i], drow[i]);
                irow[i] = select_unpredictable(gt, wy + a[i], irow[i]);
            }
        }
    }
}

/// One plane of the 2x2, stride-2 pool with the winners' indices (the hourglass's pools), or
/// false, with the plane unfinished, when a window holds a NaN (the caller then takes
/// [`exact_plane`]; the check rides along instead of a pass of its own). Each output straight
/// from its two row pairs, compare-selects in window order, no phase copies or row results (the
/// general path's four passes over each row). In a training batch of 16 the hourglass's five
/// pools took 5.6-5.7 ms forward through the general path, 3.2-3.5 this way, on two threads of an
/// AVX-512 Xeon (`examples/train_profile`).
fn pairs_plane(g: &Geometry, s: &[f32], d: &mut [f32], ix: &mut [u32]) -> bool {
    let Geometry { w, ow, .. } = *g;
    let mut nan = false;
    for (oy, (drow, irow)) in d.chunks_exact_mut(ow).zip(ix.chunks_exact_mut(ow)).enumerate() {
        // Unpadded 2x2 windows at stride 2 never pass the last row or column.
        let (y0, y1) = (2 * oy * w, (2 * oy + 1) * w);
        let (r0, r1) = (&s[y0..y0 + 2 * ow], &s[y1..y1 + 2 * ow]);
        let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
        for (ox, ((o, i), (a, b))) in drow.iter_mut().zip(irow.iter_mut()).zip(pairs).enumerate() {
            nan |= a[0].is_nan() | a[1].is_nan() | b[0].is_nan() | b[1].is_nan();
            let c = (2 * ox) as u32;
            let (mut m, mut at) = (a[0], y0 as u32 + c);
            let gt = a[1] > m;
            (m, at) = (select_unpredictable(gt, a[1], m), select_unpredictable(gt, at + 1, at));
            let gt = b[0] > m;
            (m, at) = (select_unpredictable(gt, b[0], m), select_unpredictable(gt, y1 as u32 + c, at));
            let gt = b[1] > m;
            (*o, *i) = (select_unpredictable(gt, b[1], m), select_unpredictable(gt, y1 as u32 + c + 1, at));
        }
    }
    !nan
}

/// `row` split into its `sx` phases (`phases[r * phase_len + j] = row[j * sx + r]`).
#[inline(always)]
fn split_phases(row: &[f32], sx: usize, phase_len: usize, phases: &mut [f32]) {
    let w = row.len();
    if sx == 1 {
        phases[..w].copy_from_slice(row);
    } else if sx == 2 {
        // The common case, as pairs (LLVM turns this into vector shuffles).
        let (even, odd) = phases.split_at_mut(phase_len);
        for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
            *e = pair[0];
            *o = pair[1];
        }
        if w % 2 == 1 {
            even[w / 2] = row[w - 1];
        }
    } else {
        for r in 0..sx.min(w) {
            let phase = &mut phases[r * phase_len..(r + 1) * phase_len];
            for (p, &v) in phase.iter_mut().zip(row[r..].iter().step_by(sx)) {
                *p = v;
            }
        }
    }
}

/// `m = max(m, v)` element-wise (no NaN reaches here).
#[inline(always)]
fn max_into(m: &mut [f32], v: &[f32]) {
    for (m, &v) in m.iter_mut().zip(v) {
        *m = if v > *m { v } else { *m };
    }
}

/// One plane without indices (inference), or false, with the plane unfinished, when a window
/// holds a NaN (the caller then takes [`exact_plane`]): rows first, so the column pass runs once
/// per output row instead of once per input row, and the row pass is a contiguous
/// element-wise maximum (vectorised; with a stride of 2 this halves the work of the
/// column-first order `separable_plane` keeps for its indices).
#[inline(always)]
fn rows_first_plane(g: &Geometry, plan: &Plan, s: &[f32], d: &mut [f32], scratch: &mut Scratch) -> bool {
    let Geometry { w, ow, stride, .. } = *g;
    let (sx, phase_len) = (stride[1], plan.phase_len);
    scratch.phases.resize(sx * phase_len, 0.0);
    scratch.row_max.resize(w, 0.0);
    // Input rows below this one have been checked for NaN.
    let mut checked = 0;
    for (oy, &(y0, y1)) in plan.rows.iter().enumerate() {
        // Each input row once, just before the window reads it (in cache); the plane then
        // needs no pass of its own for the check.
        for iy in checked.max(y0)..y1 {
            if has_nan(&s[iy * w..(iy + 1) * w]) {
                return false;
            }
        }
        checked = checked.max(y1);
        let v = &mut scratch.row_max[..w];
        v.copy_from_slice(&s[y0 * w..(y0 + 1) * w]);
        for iy in y0 + 1..y1 {
            max_into(v, &s[iy * w..(iy + 1) * w]);
        }
        let drow = &mut d[oy * ow..(oy + 1) * ow];
        if pairs_row(g, v, drow, &mut scratch.phases) {
            continue;
        }
        split_phases(v, sx, phase_len, &mut scratch.phases);
        for (o, &c) in drow.iter_mut().zip(&plan.first_col) {
            *o = v[c];
        }
        for &(x0, x1, at) in &plan.taps {
            max_into(&mut drow[x0..x1], &scratch.phases[at..at + (x1 - x0)]);
        }
    }
    true
}

/// The column pass of the two common stride-2 windows straight from pairs of the row's values,
/// without splitting it into phases: 2 wide without padding (the hourglass's pool) and 3 wide
/// with one column of padding (ResNet's stem pool). Returns false for any other geometry.
/// ResNet-18's stem pool (64 planes of 64x64) took 0.25-0.39 ms on one Zen 3 thread through
/// the phases, ONNX Runtime's 0.04.
#[inline(always)]
fn pairs_row(g: &Geometry, v: &[f32], d: &mut [f32], phases: &mut [f32]) -> bool {
    let max = |a: f32, b: f32| if b > a { b } else { a };
    match (g.kernel[1], g.stride[1], g.padding[1]) {
        (2, 2, 0) => {
            // Output x: columns 2x, 2x + 1 (the last clipped to 2x when w is odd).
            for (o, p) in d.iter_mut().zip(v.chunks_exact(2)) {
                *o = max(p[0], p[1]);
            }
            if g.ow > g.w / 2 {
                d[g.ow - 1] = v[g.w - 1];
            }
            true
        }
        (3, 2, 1) => {
            // Output x: columns 2x - 1, 2x, 2x + 1, clipped; in window order, so ties keep the first.
            // From the row's even and odd columns (`e[x] = v[2x]`, `o[x] = v[2x + 1]`), so that
            // the loop reads three contiguous runs and vectorises (over `windows(3).step_by(2)`
            // it stayed scalar: 40% of the stem pool's time, session 34).
            let full = g.w / 2;
            let half = g.w.div_ceil(2);
            split_phases(v, 2, half, phases);
            let (e, o) = phases[..2 * half].split_at(half);
            if full > 0 {
                d[0] = max(e[0], o[0]);
                let (o_prev, o_next) = (&o[..full - 1], &o[1..full]);
                for (((d, &a), &b), &c) in d[1..full].iter_mut().zip(o_prev).zip(&e[1..full]).zip(o_next) {
                    *d = max(max(a, b), c);
                }
            }
            if g.ow > full {
                // w odd: the last window is columns w - 2, w - 1 (or column 0 alone when w = 1).
                d[g.ow - 1] = if g.w >= 2 { max(v[g.w - 2], v[g.w - 1]) } else { v[0] };
            }
            true
        }
        _ => false,
    }
}

/// One plane by the definition: every window scanned in order, the first NaN or else the first
/// maximum winning.
fn exact_plane(g: &Geometry, s: &[f32], d: &mut [f32], mut ix: Option<&mut [u32]>) {
    for oy in 0..g.oh {
        let (y0, y1) = g.window(0, oy);
        for ox in 0..g.ow {
            let (x0, x1) = g.window(1, ox);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The first maximum of each window in window order (rows, then columns), the first NaN if
    /// there is one; padded positions never win. Returns (value, flat in-plane index).
    fn pool_by_definition(
        plane: &[f32],
        [h, w]: [usize; 2],
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
        [oy, ox]: [usize; 2],
    ) -> (f32, usize) {
        let mut best: Option<(f32, usize)> = None;
        for ky in 0..k[0] {
            for kx in 0..k[1] {
                let (iy, ix) = ((oy * s[0] + ky) as isize - p[0] as isize, (ox * s[1] + kx) as isize - p[1] as isize);
                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                    continue;
                }
                let i = iy as usize * w + ix as usize;
                let v = plane[i];
                best = match best {
                    None => Some((v, i)),
                    Some((m, _)) if v > m || (v.is_nan() && !m.is_nan()) => Some((v, i)),
                    keep => keep,
                };
            }
        }
        best.expect("every window holds an input element")
    }

    #[test]
    fn max_pool_with_indices_matches_definition() {
        let mut rng = Rng::new(17);
        let pools = [
            ([2, 2], [2, 2], [0, 0]),
            ([3, 3], [2, 2], [1, 1]),
            ([3, 3], [1, 1], [1, 1]),
            ([3, 2], [1, 2], [1, 0]),
            ([5, 5], [3, 3], [2, 2]),
            ([2, 3], [2, 1], [1, 1]),
            ([2, 2], [3, 3], [1, 0]),
        ];
        // Wide rows too, even and odd, for the vector bodies of the row and column passes.
        for shape in [[2, 3, 7, 9], [1, 2, 8, 8], [1, 1, 5, 13], [3, 1, 11, 6], [1, 3, 9, 70], [2, 2, 13, 67]] {
            let [n, c, h, w] = shape;
            // Few distinct values (ties everywhere), -inf, and one plane with NaNs.
            let mut data: Vec<f32> = (0..n * c * h * w).map(|_| (rng.below(5) as f32) - 2.0).collect();
            data[3] = f32::NEG_INFINITY;
            let last = (n * c - 1) * h * w;
            data[last + 4] = f32::NAN;
            data[last + 5] = f32::NAN;
            // A NaN in a later row of another plane: found after that plane's first output rows.
            data[(h / 2) * w + w / 2] = f32::NAN;
            let x = Tensor::new(shape.to_vec(), data).unwrap();
            for (kernel, stride, padding) in pools {
                let (ph, pw) = (h + 2 * padding[0], w + 2 * padding[1]);
                if ph < kernel[0] || pw < kernel[1] || 2 * padding[0] > kernel[0] || 2 * padding[1] > kernel[1] {
                    continue;
                }
                let (oh, ow) = ((ph - kernel[0]) / stride[0] + 1, (pw - kernel[1]) / stride[1] + 1);
                let out = [n, c, oh, ow];
                let plain = max_pool(&x, kernel, stride, padding, out);
                let (y, idx) = max_pool_with_argmax(&x, kernel, stride, padding, out);
                let what = format!("{shape:?} pool {kernel:?}/{stride:?} pad {padding:?}");
                for plane in 0..n * c {
                    let src = &x.data[plane * h * w..(plane + 1) * h * w];
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let o = plane * oh * ow + oy * ow + ox;
                            let (v, i) = pool_by_definition(src, [h, w], kernel, stride, padding, [oy, ox]);
                            let same = |a: f32| a == v || (a.is_nan() && v.is_nan());
                            assert!(
                                same(y.data[o]) && same(plain.data[o]),
                                "{what}: value at {o}: {} / {} vs {v}",
                                y.data[o],
                                plain.data[o]
                            );
                            assert_eq!(idx[o] as usize, i, "{what}: index at plane {plane} ({oy}, {ox})");
                        }
                    }
                }
            }
        }
    }
}
