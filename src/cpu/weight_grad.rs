//! The weight gradient of a stride-1 convolution computed directly from a zero-padded copy of
//! its input, without an im2col matrix:
//!
//! `dW[o][p] = sum over output pixels q of dY[o][q] * X_padded[offsets[p] + row(q) * pitch + col(q)]`
//!
//! Why: the im2col route writes and reads `cin * kh * kw * oh * ow` values per batch item to
//! feed a product whose other side has only `cout` rows. With LDCRN's 8-channel dense-block
//! convolutions (or the hourglass's 16- and 32-channel ones) that traffic, not arithmetic, set
//! the pace: their backward pass took 5-10x their forward time (`docs/cpu-speed-log.md`).
//! Here each tile of 4 output channels x 3 taps keeps 12 vector accumulators over a whole image,
//! reading dY rows and shifted input rows straight from L1/L2; every loaded value feeds 3 or 4
//! multiply-adds.
//!
//! One generic body, vectorised by LLVM along 8 output pixels: with AVX2 + FMA on x86-64
//! (picked at run time), NEON on aarch64, SIMD128 in the browser build, as `gemm` does; with
//! AVX-512, rows that leave less than 8 pixels over take a 16-pixel version in intrinsics.

use super::gemm::Kernel;

/// Output pixels per vector step: rows narrower than this run only the scalar tail.
pub(crate) const L: usize = 8;
/// Output channels per tile.
const TO: usize = 4;
/// Taps (im2col rows: input channel, ky, kx) per tile.
const TP: usize = 3;

/// The geometry of one batch item's weight gradient (one group).
#[derive(Clone, Copy)]
pub(crate) struct DwGeometry<'a> {
    /// `dY` of the group: `cout_g` planes of `oh * ow`.
    pub dy: &'a [f32],
    pub cout_g: usize,
    pub oh: usize,
    pub ow: usize,
    /// The group's input copied into its zero padding (`conv::padded_source`), rows `pitch`
    /// apart; output pixel `(y, x)` of tap `p` reads `padded[offsets[p] + y * pitch + x]`.
    pub padded: &'a [f32],
    pub pitch: usize,
    pub offsets: &'a [usize],
    /// Batch items summed into the one gradient: item `b` reads `dy` from `b * dy_item` and
    /// `padded` from `b * padded_item` onwards. Small images take several items per pass, so
    /// each tile's accumulators are reduced once per pass instead of once per item.
    pub items: usize,
    pub dy_item: usize,
    pub padded_item: usize,
}

#[cfg(test)]
impl<'a> DwGeometry<'a> {
    /// One batch item.
    pub(crate) fn single(
        dy: &'a [f32],
        [cout_g, oh, ow]: [usize; 3],
        padded: &'a [f32],
        pitch: usize,
        offsets: &'a [usize],
    ) -> Self {
        DwGeometry { dy, cout_g, oh, ow, padded, pitch, offsets, items: 1, dy_item: 0, padded_item: 0 }
    }
}

/// Accumulates the group's weight gradient into `dwt`, column-major (`dwt[p * cout_g + o]`, the
/// layout `autodiff::conv_backward` keeps dW in). Panics if a read would leave `dy` or `padded`
/// (a caller's bug, checked once up front).
pub(crate) fn accumulate(g: &DwGeometry, dwt: &mut [f32], kernel: Kernel) {
    let k = g.offsets.len();
    assert!(dwt.len() >= k * g.cout_g, "weight gradient: dW too small");
    if g.oh == 0 || g.ow == 0 || g.items == 0 {
        return;
    }
    let (dy_last, pad_last) = ((g.items - 1) * g.dy_item, (g.items - 1) * g.padded_item);
    assert!(g.dy.len() >= dy_last + g.cout_g * g.oh * g.ow, "weight gradient: dY too small");
    let last = (g.oh - 1) * g.pitch + g.ow - 1;
    let max_off = g.offsets.iter().copied().max().unwrap_or(0);
    assert!(pad_last + max_off + last < g.padded.len(), "weight gradient: padded input too small");
    // 16 lanes only where they leave fewer than 8 pixels of a row to the scalar tail (rows of 16,
    // 32, 64, 20...); rows of 8, 10, 24 or 40 keep 8 lanes. (A half step of 8 lanes inside the
    // 16-lane loop made LLVM keep the accumulators on the stack: 30% slower LDCRN steps.)
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512 && g.ow % 16 < L {
        // SAFETY: `Kernel::Avx512` is only detected on CPUs with AVX-512F (and AVX2 + FMA);
        // bounds were checked above.
        unsafe { accumulate_avx512(g, dwt) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if kernel != Kernel::Portable {
        // SAFETY: every non-portable kernel is only detected on CPUs with AVX2 and FMA
        // (AVX-512 machines have both); bounds were checked above.
        unsafe { accumulate_avx2(g, dwt) };
        return;
    }
    let _ = kernel;
    // SAFETY: bounds checked above.
    unsafe { accumulate_all::<{ cfg!(target_arch = "aarch64") }, false>(g, dwt) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_avx2(g: &DwGeometry, dwt: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe { accumulate_all::<true, false>(g, dwt) }
}

/// 16 pixels per vector step. Why: at 8 the inner loop issues 7 loads for 12 multiply-adds
/// of 8 lanes, and the per-row set-up is paid every 4 steps on 32-pixel rows; one zmm load
/// feeds twice the work (session 43, `perf` on LDCRN's training step: this kernel was 13% of it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn accumulate_avx512(g: &DwGeometry, dwt: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe { accumulate_all::<true, true>(g, dwt) }
}

/// Every tile of `TO x TP` (smaller at the edges).
///
/// # Safety
/// `accumulate`'s bounds check must have passed.
#[inline(always)]
unsafe fn accumulate_all<const FMA: bool, const WIDE: bool>(g: &DwGeometry, dwt: &mut [f32]) {
    let k = g.offsets.len();
    let mut o0 = 0;
    while o0 < g.cout_g {
        let to = TO.min(g.cout_g - o0);
        let mut p0 = 0;
        while p0 < k {
            let tp = TP.min(k - p0);
            // SAFETY: forwarded contract; tiles stay inside `cout_g x k`.
            unsafe {
                match (to, tp) {
                    (4, 3) => tile_any::<4, 3, FMA, WIDE>(g, o0, p0, dwt),
                    (4, 2) => tile_any::<4, 2, FMA, WIDE>(g, o0, p0, dwt),
                    (4, _) => tile_any::<4, 1, FMA, WIDE>(g, o0, p0, dwt),
                    (3, 3) => tile_any::<3, 3, FMA, WIDE>(g, o0, p0, dwt),
                    (3, 2) => tile_any::<3, 2, FMA, WIDE>(g, o0, p0, dwt),
                    (3, _) => tile_any::<3, 1, FMA, WIDE>(g, o0, p0, dwt),
                    (2, 3) => tile_any::<2, 3, FMA, WIDE>(g, o0, p0, dwt),
                    (2, 2) => tile_any::<2, 2, FMA, WIDE>(g, o0, p0, dwt),
                    (2, _) => tile_any::<2, 1, FMA, WIDE>(g, o0, p0, dwt),
                    (_, 3) => tile_any::<1, 3, FMA, WIDE>(g, o0, p0, dwt),
                    (_, 2) => tile_any::<1, 2, FMA, WIDE>(g, o0, p0, dwt),
                    _ => tile_any::<1, 1, FMA, WIDE>(g, o0, p0, dwt),
                }
            }
            p0 += tp;
        }
        o0 += to;
    }
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    // `mul_add` is one instruction where FMA is enabled, a libm call elsewhere.
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// [`tile`], or [`tile_avx512`] when `WIDE` (only inlined into `accumulate_avx512`).
///
/// # Safety
/// As [`tile`]; with `WIDE`, the CPU has AVX-512F.
#[inline(always)]
unsafe fn tile_any<const O: usize, const P: usize, const FMA: bool, const WIDE: bool>(
    g: &DwGeometry,
    o0: usize,
    p0: usize,
    dwt: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: forwarded contract.
        return unsafe { tile_avx512::<O, P>(g, o0, p0, dwt) };
    }
    // SAFETY: forwarded contract.
    unsafe { tile::<O, P, FMA>(g, o0, p0, dwt) }
}

/// Output channels `o0..o0 + O` x taps `p0..p0 + P` over the whole image.
///
/// # Safety
/// `accumulate`'s bounds check must have passed and the tile lie inside `cout_g x k`.
#[inline(always)]
unsafe fn tile<const O: usize, const P: usize, const FMA: bool>(g: &DwGeometry, o0: usize, p0: usize, dwt: &mut [f32]) {
    let ohw = g.oh * g.ow;
    let full = g.ow / L * L;
    let dy = g.dy.as_ptr();
    let x = g.padded.as_ptr();
    let offs: [usize; P] = std::array::from_fn(|t| g.offsets[p0 + t]);
    let mut acc = [[[0.0f32; L]; P]; O];
    let mut tail = [[0.0f32; P]; O];
    for (b, y) in (0..g.items).flat_map(|b| (0..g.oh).map(move |y| (b, y))) {
        // SAFETY (every read below): `b < items`, `y < oh`, `c + L <= full <= ow` or `c < ow`,
        // and the check in `accumulate` covers the largest offset at the last item's last pixel.
        let drow = unsafe { dy.add(b * g.dy_item + o0 * ohw + y * g.ow) };
        let xrow = unsafe { x.add(b * g.padded_item + y * g.pitch) };
        let mut c = 0;
        while c < full {
            let xv: [[f32; L]; P] = std::array::from_fn(|t| unsafe { *(xrow.add(offs[t] + c) as *const [f32; L]) });
            for (o, acc_o) in acc.iter_mut().enumerate() {
                let d: [f32; L] = unsafe { *(drow.add(o * ohw + c) as *const [f32; L]) };
                for (t, a) in acc_o.iter_mut().enumerate() {
                    for l in 0..L {
                        a[l] = madd::<FMA>(d[l], xv[t][l], a[l]);
                    }
                }
            }
            c += L;
        }
        for c in full..g.ow {
            for (o, tail_o) in tail.iter_mut().enumerate() {
                let d = unsafe { *drow.add(o * ohw + c) };
                for (t, a) in tail_o.iter_mut().enumerate() {
                    *a = madd::<FMA>(d, unsafe { *xrow.add(offs[t] + c) }, *a);
                }
            }
        }
    }
    for o in 0..O {
        for t in 0..P {
            let s: f32 = acc[o][t].iter().sum::<f32>() + tail[o][t];
            dwt[(p0 + t) * g.cout_g + o0 + o] += s;
        }
    }
}

/// [`tile`] 16 pixels per step with AVX-512 intrinsics. (The generic body at 16 lanes made LLVM
/// keep the accumulators on the stack: LDCRN's training step 5-30% slower than at 8.)
///
/// # Safety
/// As [`tile`]; the CPU has AVX-512F (only inlined into `accumulate_avx512`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_avx512<const O: usize, const P: usize>(g: &DwGeometry, o0: usize, p0: usize, dwt: &mut [f32]) {
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps, _mm512_setzero_ps};
    const W: usize = 16;
    let ohw = g.oh * g.ow;
    let full = g.ow / W * W;
    let dy = g.dy.as_ptr();
    let x = g.padded.as_ptr();
    let offs: [usize; P] = std::array::from_fn(|t| g.offsets[p0 + t]);
    // SAFETY: reads as in `tile` (`c + W <= full <= ow`, or `c < ow` in the tail); the caller
    // has AVX-512F.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); P]; O];
        let mut tail = [[0.0f32; P]; O];
        for (b, y) in (0..g.items).flat_map(|b| (0..g.oh).map(move |y| (b, y))) {
            let drow = dy.add(b * g.dy_item + o0 * ohw + y * g.ow);
            let xrow = x.add(b * g.padded_item + y * g.pitch);
            let mut c = 0;
            while c < full {
                let xv: [_; P] = std::array::from_fn(|t| _mm512_loadu_ps(xrow.add(offs[t] + c)));
                for (o, acc_o) in acc.iter_mut().enumerate() {
                    let d = _mm512_loadu_ps(drow.add(o * ohw + c));
                    for (t, a) in acc_o.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(d, xv[t], *a);
                    }
                }
                c += W;
            }
            for c in full..g.ow {
                for (o, tail_o) in tail.iter_mut().enumerate() {
                    let d = *drow.add(o * ohw + c);
                    for (t, a) in tail_o.iter_mut().enumerate() {
                        *a = d.mul_add(*xrow.add(offs[t] + c), *a);
                    }
                }
            }
        }
        for o in 0..O {
            for t in 0..P {
                dwt[(p0 + t) * g.cout_g + o0 + o] += _mm512_reduce_add_ps(acc[o][t]) + tail[o][t];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Several batch items in one call (strided `dy` and padded input, as
    /// `autodiff::conv_backward` lays out a pass) give the sum of the single-item calls, within
    /// 1e-5 (f32 sums in another order); on every kernel this CPU runs. 3 items of 5 output
    /// channels, 2 input channels of 6 x 13 (rows not a multiple of the 8 lanes), padding 1.
    #[test]
    fn several_items_sum_like_one_at_a_time() {
        let mut rng = Rng::new(9);
        let (items, cout, cin, h, w) = (3, 5, 2, 6, 13);
        let (oh, ow) = (h, w);
        let x = rng.vec(items * cin * h * w, -1.0, 1.0);
        let dy = rng.vec(items * cout * oh * ow, -1.0, 1.0);
        let (padded, offsets, pitch) =
            super::super::conv::padded_source(&x, [items * cin, h, w], [3, 3], [1, 1], [1, 1]);
        let plane = (h + 2) * (w + 2);
        let k = cin * 9;
        for kernel in Kernel::supported() {
            let mut want = vec![0.0f32; k * cout];
            for b in 0..items {
                let geo = DwGeometry::single(
                    &dy[b * cout * oh * ow..],
                    [cout, oh, ow],
                    &padded[b * cin * plane..],
                    pitch,
                    &offsets[..k],
                );
                accumulate(&geo, &mut want, kernel);
            }
            let geo = DwGeometry {
                items,
                dy_item: cout * oh * ow,
                padded_item: cin * plane,
                ..DwGeometry::single(&dy, [cout, oh, ow], &padded, pitch, &offsets[..k])
            };
            let mut got = vec![0.0f32; k * cout];
            accumulate(&geo, &mut got, kernel);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() < 1e-5, "{kernel:?} at {i}: {g} vs {w}");
            }
        }
    }

    /// Against the definition in f64, on shapes whose channels, taps and row widths leave
    /// every kind of edge tile (5 output channels, 2 input channels x 2x3 taps, rows of 11, 3,
    /// 16, 17, 27 and 8 pixels: both lane widths under AVX-512), with padding and dilation, on every kernel this CPU runs.
    #[test]
    fn matches_the_definition() {
        let mut rng = Rng::new(3);
        for &(cout, cin, [kh, kw], [h, w], pad, dil) in &[
            (5usize, 2usize, [2usize, 3usize], [7usize, 11usize], [1usize, 1usize], [1usize, 1usize]),
            (8, 3, [3, 3], [4, 3], [1, 1], [1, 1]),
            (4, 6, [3, 3], [9, 16], [2, 2], [2, 2]),
            (1, 1, [1, 1], [5, 5], [0, 0], [1, 1]),
            (9, 4, [3, 3], [17, 19], [1, 0], [1, 1]),
            // Rows of 27 and 8 pixels keep 8 lanes under AVX-512; rows of 16 and 17 (above) take 16.
            (6, 2, [3, 3], [5, 27], [1, 1], [1, 1]),
            (3, 2, [3, 3], [4, 8], [1, 1], [1, 1]),
        ] {
            let oh = h + 2 * pad[0] - dil[0] * (kh - 1);
            let ow = w + 2 * pad[1] - dil[1] * (kw - 1);
            let x = rng.vec(cin * h * w, -1.0, 1.0);
            let dy = rng.vec(cout * oh * ow, -1.0, 1.0);
            let (padded, offsets, pitch) = super::super::conv::padded_source(&x, [cin, h, w], [kh, kw], pad, dil);
            let k = cin * kh * kw;
            let mut want = vec![0.0f64; k * cout];
            for o in 0..cout {
                for ci in 0..cin {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let p = (ci * kh + ky) * kw + kx;
                            for y in 0..oh {
                                for xo in 0..ow {
                                    let iy = (y + ky * dil[0]) as isize - pad[0] as isize;
                                    let ix = (xo + kx * dil[1]) as isize - pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    want[p * cout + o] += dy[(o * oh + y) * ow + xo] as f64
                                        * x[(ci * h + iy as usize) * w + ix as usize] as f64;
                                }
                            }
                        }
                    }
                }
            }
            for kernel in Kernel::supported() {
                let geo = DwGeometry::single(&dy, [cout, oh, ow], &padded, pitch, &offsets);
                let mut got = vec![0.5f32; k * cout];
                accumulate(&geo, &mut got, kernel);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    // Accumulated onto 0.5; sums of up to ~300 products of values in [-1, 1].
                    assert!(
                        (*g as f64 - 0.5 - w).abs() < 1e-4,
                        "{kernel:?} {cout}x{cin}x{kh}x{kw} at {i}: {g} vs {}",
                        w + 0.5
                    );
                }
            }
        }
    }
}
