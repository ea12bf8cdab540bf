//! The two sums batch norm and the per-channel gradients need over one plane:
//!
//! `centered_sums(a, ca, b, cb) = (sum (a - ca), sum (a - ca) * (b - cb))`
//!
//! - batch-norm statistics: `a = b = x`, `ca = cb = shift` (sum and sum of squares, shifted);
//! - batch-norm backward: `a = dz`, `ca = 0`, `b = x`, `cb = mean` (`dbeta`, `dgamma / inv_std`);
//! - channel affine and gated add backward: `ca = cb = 0` (a plain dot product).
//!
//! Why a kernel: the batch-norm input gradient subtracts these sums from each other, so they are
//! kept in f64, and LLVM does not vectorise an f32 -> f64 running sum (nor, in our attempts, an
//! f32 lane array with two accumulators: it paired the two sums into 2-wide vectors). The scalar
//! loop took about 1 ns per value, a 16 MB plane set 4-9 ms where a vector read takes 0.6, and
//! was 7% of the hourglass's training step (`perf`, one thread). The vector bodies sum in f32
//! lanes over blocks of [`BLOCK`] values (each lane adds at most 16 of them, so the f32 rounding
//! stays near 1e-6 of the block's sum) and move each block's lanes into f64 accumulators.

use super::gemm::Kernel;

/// Values per f32 block before its lanes go into the f64 sums.
const BLOCK: usize = 256;

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

/// Eight independent f64 lanes: no chain of dependent additions, no f32 rounding.
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
/// The CPU must have AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn centered_sums_avx512(a: &[f32], ca: f32, b: &[f32], cb: f32) -> (f64, f64) {
    use std::arch::x86_64::*;
    let (vca, vcb) = (_mm512_set1_ps(ca), _mm512_set1_ps(cb));
    let (mut p, mut q) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (n, pa, pb) = (ab.len(), ab.as_ptr(), bb.as_ptr());
        let (mut u0, mut v0, mut u1, mut v1) =
            (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: `i + 32 <= n`, the length of both blocks.
            let (x0, y0, x1, y1) = unsafe {
                (
                    _mm512_loadu_ps(pa.add(i)),
                    _mm512_loadu_ps(pb.add(i)),
                    _mm512_loadu_ps(pa.add(i + 16)),
                    _mm512_loadu_ps(pb.add(i + 16)),
                )
            };
            let (d0, d1) = (_mm512_sub_ps(x0, vca), _mm512_sub_ps(x1, vca));
            u0 = _mm512_add_ps(u0, d0);
            u1 = _mm512_add_ps(u1, d1);
            v0 = _mm512_fmadd_ps(d0, _mm512_sub_ps(y0, vcb), v0);
            v1 = _mm512_fmadd_ps(d1, _mm512_sub_ps(y1, vcb), v1);
            i += 32;
        }
        while i < n {
            let left = n - i;
            let m: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
            // SAFETY: the mask covers lanes below `n - i` only; masked-off lanes are not read.
            let (x, y) = unsafe { (_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i))) };
            // Masked-off lanes of `d` are 0, so they add nothing to either sum.
            let d = _mm512_maskz_sub_ps(m, x, vca);
            u0 = _mm512_add_ps(u0, d);
            v0 = _mm512_fmadd_ps(d, _mm512_sub_ps(y, vcb), v0);
            i += 16;
        }
        p = _mm512_add_pd(p, widen_avx512(_mm512_add_ps(u0, u1)));
        q = _mm512_add_pd(q, widen_avx512(_mm512_add_ps(v0, v1)));
    }
    (_mm512_reduce_add_pd(p), _mm512_reduce_add_pd(q))
}

/// The 16 f32 lanes of `v` summed pairwise into 8 f64 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn widen_avx512(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512d {
    use std::arch::x86_64::*;
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(hi))
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn centered_sums_avx2(a: &[f32], ca: f32, b: &[f32], cb: f32) -> (f64, f64) {
    use std::arch::x86_64::*;
    let (vca, vcb) = (_mm256_set1_ps(ca), _mm256_set1_ps(cb));
    let (mut p, mut q) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let (mut tail_p, mut tail_q) = (0.0f64, 0.0f64);
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (n, pa, pb) = (ab.len(), ab.as_ptr(), bb.as_ptr());
        let (mut u0, mut v0, mut u1, mut v1) =
            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: `i + 16 <= n`, the length of both blocks.
            let (x0, y0, x1, y1) = unsafe {
                (
                    _mm256_loadu_ps(pa.add(i)),
                    _mm256_loadu_ps(pb.add(i)),
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                )
            };
            let (d0, d1) = (_mm256_sub_ps(x0, vca), _mm256_sub_ps(x1, vca));
            u0 = _mm256_add_ps(u0, d0);
            u1 = _mm256_add_ps(u1, d1);
            v0 = _mm256_fmadd_ps(d0, _mm256_sub_ps(y0, vcb), v0);
            v1 = _mm256_fmadd_ps(d1, _mm256_sub_ps(y1, vcb), v1);
            i += 16;
        }
        p = _mm256_add_pd(p, widen_avx2(_mm256_add_ps(u0, u1)));
        q = _mm256_add_pd(q, widen_avx2(_mm256_add_ps(v0, v1)));
        for (&x, &y) in ab[i..].iter().zip(&bb[i..]) {
            let d = x - ca;
            tail_p += d as f64;
            tail_q += (d * (y - cb)) as f64;
        }
    }
    let mut lanes = [[0.0f64; 4]; 2];
    // SAFETY: each destination holds 4 f64.
    unsafe {
        _mm256_storeu_pd(lanes[0].as_mut_ptr(), p);
        _mm256_storeu_pd(lanes[1].as_mut_ptr(), q);
    }
    (lanes[0].iter().sum::<f64>() + tail_p, lanes[1].iter().sum::<f64>() + tail_q)
}

/// The 8 f32 lanes of `v` summed pairwise into 4 f64 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn widen_avx2(v: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256d {
    use std::arch::x86_64::*;
    _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Every kernel this CPU runs against an f64 sum, on lengths around the vector widths and the
    /// block, values with a large common offset (the case the shift is for). Tolerance: 1e-6 of
    /// the sum of magnitudes (f32 lanes over at most 16 values per block).
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
                assert!((p - ep).abs() <= 1e-6 * mp + 1e-12, "{k:?} len {len}: sum {p} vs {ep}");
                assert!((q - eq).abs() <= 1e-6 * mq + 1e-12, "{k:?} len {len}: dot {q} vs {eq}");
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
