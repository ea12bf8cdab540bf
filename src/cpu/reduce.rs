//! The two sums batch norm and the per-channel gradients need over one plane:
//!
//! `centered_sums(a, ca, b, cb) = (sum (a - ca), sum (a - ca) * (b - cb))`
//!
//! - batch-norm statistics: `a = b = x`, `ca = cb = shift` (sum and sum of squares, shifted);
//! - batch-norm backward: `a = dz`, `ca = 0`, `b = x`, `cb = mean` (`dbeta`, `dgamma / inv_std`);
//! - channel affine and gated add backward: `ca = cb = 0` (a plain dot product).
//!
//! Why a kernel: the batch-norm input gradient subtracts these sums from each other, so every
//! term is added in f64 (f32 partial sums over blocks of 256 values, tried first, moved the
//! hourglass's batch-norm parameter gradients by 0.3% under cancellation and failed its gradient
//! check), and LLVM does not vectorise an f32 -> f64 running sum: the scalar loop took about 1 ns
//! per value, 4-9 ms for a 16 MB activation where a vector read takes 0.6, and was 7% of the
//! hourglass's training step (`perf`, one thread). The vector bodies compute each term in f32, as
//! the scalar loop does, and widen it into independent f64 accumulators.

use super::gemm::Kernel;

/// `(sum (a - ca), sum (a - ca) * (b - cb))` over `a` and `b` (equal lengths), in f64.
pub fn centered_sums(a: &[f32], ca: f32, b: &[f32], cb: f32, kernel: Kernel) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "centered_sums: lengths differ");
    #[cfg(target_arch = "x86_64")]
    match kernel {
        // SAFETY: the kernel was detected on (or narrowed from) a CPU with these features.
        Kernel::Avx512 => return unsafe { centered_sums_avx512(a, ca, b, cb) },
        Kernel::Avx2 | Kernel::Avx2Narrow => return unsafe { centered_sums_avx2(a, ca, b, cb) },
        _ => {}
    }
    let _ = kernel;
    centered_sums_portable(a, ca, b, cb)
}

/// Eight independent f64 lanes (no chain of dependent additions), each term computed in f32.
fn centered_sums_portable(a: &[f32], ca: f32, b: &[f32], cb: f32) -> (f64, f64) {
    const LANES: usize = 8;
    let (mut p, mut q) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (va, vb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (&x, &y) in va.remainder().iter().zip(vb.remainder()) {
        let d = x - ca;
        p[0] += d as f64;
        q[0] += (d * (y - cb)) as f64;
    }
    for (xa, xb) in va.zip(vb) {
        for l in 0..LANES {
            let d = xa[l] - ca;
            p[l] += d as f64;
            q[l] += (d * (xb[l] - cb)) as f64;
        }
    }
    (p.iter().sum(), q.iter().sum())
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn centered_sums_avx512(a: &[f32], ca: f32, b: &[f32], cb: f32) -> (f64, f64) {
    use std::arch::x86_64::*;
    let (vca, vcb) = (_mm512_set1_ps(ca), _mm512_set1_ps(cb));
    // Four f64 accumulators per sum (the low and high halves of two vectors): additions in
    // flight on independent chains.
    let mut p = [_mm512_setzero_pd(); 4];
    let mut q = [_mm512_setzero_pd(); 4];
    let (n, pa, pb) = (a.len(), a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i < n {
        let mut step = |j: usize, m: __mmask16| {
            // SAFETY: the mask covers lanes below `n - i - 16 j` only; the others are not read.
            let (x, y) =
                unsafe { (_mm512_maskz_loadu_ps(m, pa.add(i + 16 * j)), _mm512_maskz_loadu_ps(m, pb.add(i + 16 * j))) };
            // Masked-off lanes of `d`, hence of `e`, are 0: they add nothing to either sum.
            let d = _mm512_maskz_sub_ps(m, x, vca);
            let e = _mm512_mul_ps(d, _mm512_sub_ps(y, vcb));
            let (dl, dh) = halves_avx512(d);
            let (el, eh) = halves_avx512(e);
            p[2 * j] = _mm512_add_pd(p[2 * j], dl);
            p[2 * j + 1] = _mm512_add_pd(p[2 * j + 1], dh);
            q[2 * j] = _mm512_add_pd(q[2 * j], el);
            q[2 * j + 1] = _mm512_add_pd(q[2 * j + 1], eh);
        };
        let left = n - i;
        if left >= 32 {
            step(0, 0xffff);
            step(1, 0xffff);
            i += 32;
        } else {
            step(0, if left >= 16 { 0xffff } else { (1u16 << left) - 1 });
            i += 16;
        }
    }
    let sum =
        |v: [__m512d; 4]| _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(v[0], v[1]), _mm512_add_pd(v[2], v[3])));
    (sum(p), sum(q))
}

/// The low and high 8 lanes of `v`, widened to f64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn halves_avx512(v: std::arch::x86_64::__m512) -> (std::arch::x86_64::__m512d, std::arch::x86_64::__m512d) {
    use std::arch::x86_64::*;
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    (_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(hi))
}

/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn centered_sums_avx2(a: &[f32], ca: f32, b: &[f32], cb: f32) -> (f64, f64) {
    use std::arch::x86_64::*;
    let (vca, vcb) = (_mm256_set1_ps(ca), _mm256_set1_ps(cb));
    let mut p = [_mm256_setzero_pd(); 4];
    let mut q = [_mm256_setzero_pd(); 4];
    let (n, pa, pb) = (a.len(), a.as_ptr(), b.as_ptr());
    let full = n / 16 * 16;
    let mut i = 0;
    while i < full {
        for j in 0..2 {
            // SAFETY: `i + 8 j + 8 <= full <= n`, the length of both slices.
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j))) };
            let d = _mm256_sub_ps(x, vca);
            let e = _mm256_mul_ps(d, _mm256_sub_ps(y, vcb));
            let (dl, dh) = halves_avx2(d);
            let (el, eh) = halves_avx2(e);
            p[2 * j] = _mm256_add_pd(p[2 * j], dl);
            p[2 * j + 1] = _mm256_add_pd(p[2 * j + 1], dh);
            q[2 * j] = _mm256_add_pd(q[2 * j], el);
            q[2 * j + 1] = _mm256_add_pd(q[2 * j + 1], eh);
        }
        i += 16;
    }
    let mut lanes = [[0.0f64; 4]; 8];
    for j in 0..4 {
        // SAFETY: each destination holds 4 f64.
        unsafe {
            _mm256_storeu_pd(lanes[j].as_mut_ptr(), p[j]);
            _mm256_storeu_pd(lanes[4 + j].as_mut_ptr(), q[j]);
        }
    }
    let (tp, tq) = centered_sums_portable(&a[full..], ca, &b[full..], cb);
    (lanes[..4].iter().flatten().sum::<f64>() + tp, lanes[4..].iter().flatten().sum::<f64>() + tq)
}

/// The low and high 4 lanes of `v`, widened to f64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn halves_avx2(v: std::arch::x86_64::__m256) -> (std::arch::x86_64::__m256d, std::arch::x86_64::__m256d) {
    use std::arch::x86_64::*;
    (_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Every kernel this CPU runs against an f64 sum, on lengths around the vector widths, values
    /// with a large common offset (the case the shift is for) and terms of both signs. Tolerance:
    /// 2.5e-7 of the sum of magnitudes for the dot (each term rounded to f32 twice, then added in
    /// f64), f64 rounding for the sum.
    #[test]
    fn centered_sums_match_an_f64_sum_on_every_kernel() {
        let mut rng = Rng::new(17);
        let kernels = Kernel::supported();
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 255, 256, 257, 1000, 4099] {
            let a: Vec<f32> = rng.vec(len, 99.0, 101.0);
            let b: Vec<f32> = rng.vec(len, -3.0, 5.0);
            let (ca, cb) = (100.0f32, 0.5f32);
            let (mut ep, mut eq, mut mp, mut mq) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for (&x, &y) in a.iter().zip(&b) {
                let d = (x - ca) as f64;
                ep += d;
                eq += d * (y - cb) as f64;
                mp += d.abs();
                mq += (d * (y - cb) as f64).abs();
            }
            for &k in &kernels {
                let (p, q) = centered_sums(&a, ca, &b, cb, k);
                // `a - ca` is exact here (Sterbenz), so only f64 additions round the sum.
                assert!((p - ep).abs() <= 1e-12 * mp + 1e-12, "{k:?} len {len}: sum {p} vs {ep}");
                assert!((q - eq).abs() <= 2.5e-7 * mq + 1e-12, "{k:?} len {len}: dot {q} vs {eq}");
            }
        }
    }

    #[test]
    fn centered_sums_propagate_nan() {
        for k in Kernel::supported() {
            let mut a = vec![1.0f32; 300];
            a[263] = f32::NAN;
            let (p, q) = centered_sums(&a, 0.0, &a, 0.0, k);
            assert!(p.is_nan() && q.is_nan(), "{k:?}");
        }
    }
}
