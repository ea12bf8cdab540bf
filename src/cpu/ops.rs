//! Fast CPU kernels of every operator but convolution, parallelised (`parallel`) over `(n, c)`
//! planes. Inputs are assumed validated (shapes consistent with the operator), as done by
//! `cpu::run` / `cpu::eval_op`.

use super::parallel;
use crate::graph::Act;
use crate::tensor::Tensor;

/// Smallest number of elements worth a parallel task.
const MIN_TASK_ELEMS: usize = 1 << 14;

/// Planes per task so that each task has at least `MIN_TASK_ELEMS` elements.
pub(crate) fn planes_per_task(plane: usize) -> usize {
    MIN_TASK_ELEMS.div_ceil(plane.max(1)).max(1)
}

fn dims(t: &Tensor) -> [usize; 4] {
    [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]
}

/// An NCHW operand given as the channel concatenation of its parts (one part: a plain tensor),
/// read plane by plane: a concatenation whose readers all take their operand this way is never
/// written out (`super::run_timed`).
pub(crate) struct Planes<'a> {
    parts: &'a [&'a Tensor],
    /// Per channel of the concatenation: (part, channel in that part).
    index: Vec<(usize, usize)>,
}

impl<'a> Planes<'a> {
    /// The concatenation of `parts` (at least one, all `[n, _, h, w]` alike: validated graphs).
    pub(crate) fn new(parts: &'a [&'a Tensor]) -> Self {
        assert!(!parts.is_empty(), "Planes: no parts");
        let index = parts.iter().enumerate().flat_map(|(k, t)| (0..t.shape[1]).map(move |c| (k, c))).collect();
        Planes { parts, index }
    }

    /// `[n, c, h, w]` of the concatenation.
    pub(crate) fn dims(&self) -> [usize; 4] {
        let [n, _, h, w] = dims(self.parts[0]);
        [n, self.index.len(), h, w]
    }

    /// Plane `ch` of batch item `b`.
    pub(crate) fn plane(&self, b: usize, ch: usize) -> &'a [f32] {
        let (k, c) = self.index[ch];
        let t = self.parts[k];
        let hw = t.shape[2] * t.shape[3];
        let p = b * t.shape[1] + c;
        &t.data[p * hw..(p + 1) * hw]
    }

    /// The tensor itself when there is one part (paths that read the input in place need it).
    pub(crate) fn whole(&self) -> Option<&'a Tensor> {
        (self.parts.len() == 1).then(|| self.parts[0])
    }
}

/// Applies an activation in place to a slice (one loop per activation so each vectorises).
#[inline(always)]
pub(crate) fn act_in_place(v: &mut [f32], act: Act) {
    match act {
        Act::None => {}
        Act::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        Act::Sigmoid => v.iter_mut().for_each(|x| *x = sigmoid(*x)),
    }
}

/// `1 / (1 + exp(-x))`, with `exp` computed inline so that loops over it vectorise: libm's
/// `expf` is a call per value (FasterPose's sigmoid head, 14 x 32 x 32 values, took 0.037-0.043
/// ms in the default model on an AVX-512 Xeon, ONNX Runtime's 0.012; the loop alone 0.031 ms
/// with `expf`, 0.0145 with this at the crate's SSE2 baseline).
///
/// Cephes' `expf` scheme: `2^n e^r` with `n = round(t / ln 2)` (rounded by adding and
/// subtracting 1.5 * 2^23, which needs no rounding instruction), `r = t - n ln 2` in two parts,
/// `e^r` a degree-7 polynomial (`1 + r + r^2 p(r)`), `2^n` built in the exponent bits. `t = -x`
/// is clamped to [-87.3, 88] (`2^n` stays a normal float; the sigmoid is already 1 or below
/// 1e-38 there); NaN passes through. Within 2e-7 of the f64 sigmoid, relative (the unit test
/// below).
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let t = (-x).clamp(-87.3, 88.0);
    let m = t * std::f32::consts::LOG2_E + ROUND;
    let n = m - ROUND;
    let r = t - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    // `n` is also in the low bits of `m`: `2^n` from them without a float-to-int conversion (a
    // saturating `as i32` kept the loop scalar: 0.028 ms per 14,336 values against 0.0145).
    let two_n = f32::from_bits(m.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    let e = (p * r * r + r + 1.0) * two_n;
    1.0 / (1.0 + e)
}

/// `act(scale[c] * x + shift[c])` (also batch norm, through `BatchNorm::scale_shift`).
pub(crate) fn channel_affine(x: &Planes, scale: &[f32], shift: &[f32], act: Act) -> Tensor {
    let [n, c, h, w] = x.dims();
    let hw = h * w;
    let mut y = super::buffer::overwritten(n * c * hw);
    parallel::for_each_chunk_mut(&mut y, hw, planes_per_task(hw), |p, d| {
        super::elementwise::affine(d, x.plane(p / c, p % c), scale[p % c], shift[p % c], act);
    });
    Tensor { shape: vec![n, c, h, w], data: y }
}

pub(crate) fn activation(x: &Tensor, act: Act) -> Tensor {
    let mut y = x.data.clone();
    if act != Act::None {
        parallel::for_each_chunk_mut(&mut y, MIN_TASK_ELEMS, 1, |_, d| super::elementwise::activate(d, act));
    }
    Tensor { shape: x.shape.clone(), data: y }
}

/// Range of output positions `o` whose input position `o * stride + k - pad` lies in `[0, len)`,
/// where `k` is the tap's offset (`ky * dilation`); clipped to `[0, out_len)`.
pub(crate) fn valid_range(len: usize, out_len: usize, stride: usize, k: usize, pad: usize) -> (usize, usize) {
    // o * stride + k >= pad
    let lo = if pad > k { (pad - k).div_ceil(stride) } else { 0 };
    // o * stride + k - pad <= len - 1
    let hi = if len + pad > k { ((len - 1 + pad - k) / stride + 1).min(out_len) } else { 0 };
    (lo.min(hi), hi)
}

pub(crate) fn upsample_nearest(x: &Tensor, f: usize) -> Tensor {
    let [n, c, h, w] = dims(x);
    let (oh, ow) = (h * f, w * f);
    let mut y = super::buffer::overwritten(n * c * oh * ow);
    parallel::for_each_chunk_mut(&mut y, oh * ow, planes_per_task(oh * ow), |p, d| {
        let s = &x.data[p * h * w..(p + 1) * h * w];
        {
            for (i, block) in d.chunks_exact_mut(f * ow).enumerate() {
                let (first, rest) = block.split_at_mut(ow);
                let src = &s[i * w..(i + 1) * w];
                if f == 2 {
                    // The common factor as pairs, which vectorise (`fill` on each two-value
                    // run did not: 0.46 ms for 128 planes of 32x32 on one Zen 3 thread).
                    for (o, &v) in first.chunks_exact_mut(2).zip(src) {
                        o[0] = v;
                        o[1] = v;
                    }
                } else {
                    for (o, &v) in first.chunks_exact_mut(f).zip(src) {
                        o.fill(v);
                    }
                }
                for r in rest.chunks_exact_mut(ow) {
                    r.copy_from_slice(first);
                }
            }
        }
    });
    Tensor { shape: vec![n, c, oh, ow], data: y }
}

/// Taps of output `o` along an axis upsampled by `f` from `len` samples: half-pixel centres,
/// source coordinate clamped at 0 and second tap at the edge (PyTorch `align_corners=False`).
pub(crate) fn bilinear_taps(o: usize, f: usize, len: usize) -> (usize, usize, f32) {
    let src = ((o as f32 + 0.5) / f as f32 - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(len - 1);
    let i1 = (i0 + 1).min(len - 1);
    (i0, i1, src - i0 as f32)
}

pub(crate) fn upsample_bilinear(x: &Tensor, f: usize) -> Tensor {
    let [n, c, h, w] = dims(x);
    let (oh, ow) = (h * f, w * f);
    let xt: Vec<(usize, usize, f32)> = (0..ow).map(|o| bilinear_taps(o, f, w)).collect();
    let yt: Vec<(usize, usize, f32)> = (0..oh).map(|o| bilinear_taps(o, f, h)).collect();
    let mut y = super::buffer::overwritten(n * c * oh * ow);
    parallel::for_each_chunk_mut(&mut y, oh * ow, planes_per_task(oh * ow), |p, d| {
        let s = &x.data[p * h * w..(p + 1) * h * w];
        {
            for (drow, &(y0, y1, ly)) in d.chunks_exact_mut(ow).zip(&yt) {
                let r0 = &s[y0 * w..(y0 + 1) * w];
                let r1 = &s[y1 * w..(y1 + 1) * w];
                for (v, &(x0, x1, lx)) in drow.iter_mut().zip(&xt) {
                    let top = (1.0 - lx) * r0[x0] + lx * r0[x1];
                    let bot = (1.0 - lx) * r1[x0] + lx * r1[x1];
                    *v = (1.0 - ly) * top + ly * bot;
                }
            }
        }
    });
    Tensor { shape: vec![n, c, oh, ow], data: y }
}

/// Channel concatenation; `out` is the concatenated shape.
pub(crate) fn concat(xs: &[&Tensor], out: [usize; 4]) -> Tensor {
    let [_, c, h, w] = out;
    let hw = h * w;
    let x = Planes::new(xs);
    let mut y = super::buffer::overwritten(out.iter().product());
    parallel::for_each_chunk_mut(&mut y, hw, planes_per_task(hw), |p, d| {
        d.copy_from_slice(x.plane(p / c, p % c));
    });
    Tensor { shape: out.to_vec(), data: y }
}

pub(crate) fn add(a: &Tensor, b: &Tensor) -> Tensor {
    let mut y = super::buffer::overwritten(a.data.len());
    parallel::for_each_chunk_mut(&mut y, MIN_TASK_ELEMS, 1, |i, d| {
        let r = i * MIN_TASK_ELEMS..(i * MIN_TASK_ELEMS + d.len());
        super::elementwise::add(d, &a.data[r.clone()], &b.data[r]);
    });
    Tensor { shape: a.shape.clone(), data: y }
}

/// `alpha[c] * skip + x`
pub(crate) fn gated_add(skip: &Planes, x: &Planes, alpha: &[f32]) -> Tensor {
    let [n, c, h, w] = x.dims();
    let hw = h * w;
    let mut y = super::buffer::overwritten(n * c * hw);
    parallel::for_each_chunk_mut(&mut y, hw, planes_per_task(hw), |p, d| {
        super::elementwise::gated_add(d, skip.plane(p / c, p % c), x.plane(p / c, p % c), alpha[p % c]);
    });
    Tensor { shape: vec![n, c, h, w], data: y }
}

/// Depth to space, `out[n, c, h*r + i, w*r + j] = in[n, c*r*r + i*r + j, h, w]`.
pub(crate) fn pixel_shuffle(x: &Tensor, r: usize) -> Tensor {
    let [n, c, h, w] = dims(x);
    let co = c / (r * r);
    let (oh, ow) = (h * r, w * r);
    let mut y = super::buffer::overwritten(n * co * oh * ow);
    parallel::for_each_chunk_mut(&mut y, oh * ow, planes_per_task(oh * ow), |p, d| {
        // Output plane p = (b, ch) reads input planes (b, ch*r*r .. (ch+1)*r*r).
        let base = p * r * r;
        for i in 0..h {
            for di in 0..r {
                let drow = &mut d[(i * r + di) * ow..(i * r + di + 1) * ow];
                for dj in 0..r {
                    let plane = base + di * r + dj;
                    let srow = &x.data[(plane * h + i) * w..(plane * h + i + 1) * w];
                    for (j, &v) in srow.iter().enumerate() {
                        drow[j * r + dj] = v;
                    }
                }
            }
        }
    });
    Tensor { shape: vec![n, co, oh, ow], data: y }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inline sigmoid against the f64 definition on a dense sweep of [-100, 100] and the
    /// special values: relative error below 2e-7 (a couple of f32 ulps) down to 1e-37 (below
    /// that, where the clamp holds it, absolute), NaN kept.
    #[test]
    fn sigmoid_matches_the_definition() {
        let mut worst = 0.0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-4;
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            let got = sigmoid(x) as f64;
            worst = worst.max((got - want).abs() / want.max(1e-37 / 2e-7));
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(f32::INFINITY), 1.0);
        assert_eq!(sigmoid(f32::NEG_INFINITY), 1.0 / (1.0 + 88.0f32.exp()));
        assert!(sigmoid(-1e30) >= 0.0 && sigmoid(-1e30) < 1e-37 && sigmoid(1e30) == 1.0);
        assert!(sigmoid(f32::NAN).is_nan());
    }
}
