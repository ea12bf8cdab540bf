//! Fast CPU convolution, in one of two strategies ([`ConvStrategy`], picked per layer), except
//! for the 3x3, stride-1, padding-1 layers of 32 to 256 channels (128 without AVX-512) on maps
//! of at least 8x8, which run as Winograd F(2x2, 3x3), or F(4x4, 3x3) on large maps at
//! inference (`super::winograd`; `WGPOSE_CPU_WINOGRAD=0` turns Winograd off,
//! `WGPOSE_CPU_WINOGRAD_F4=0` the larger tiles).
//!
//! **Indirect** (the default, except for layers of fewer than 32 output channels per group
//! with the AVX-512 kernel, and training's backward pass on AVX-512): any convolution that is not
//! depthwise, per batch item and group, as `out^T = im2col^T x W^T` in tiles of output pixels x
//! output channels (`super::indirect`): the input, copied into its zero padding when the
//! convolution pads, is read in place through each pixel's receptive-field corner and each tap's
//! offset, and the weights come packed (once per `super::PackedGraph`, else per call). On x86-64
//! with AVX2, padded convolutions with at least 64 input channels copy their input pixel-major
//! (channels of a pixel contiguous, depth ordered tap then channel), and 1x1 convolutions with
//! more than one panel of output channels gather blocks of pixels pixel-major
//! (`super::indirect::conv_pointwise`): a tile's depth steps then read contiguous runs.
//!
//! **Matrix product** (`gemm`; with the AVX-512 kernel, narrow layers and the backward pass):
//!
//! - General case: per batch item and group, `out[cout_g, oh*ow] = W[cout_g, K] x B[K, oh*ow]`
//!   with `K = cin_g*kh*kw`, through `super::gemm::matmul_panels`. `B` is the im2col matrix, but
//!   it is never written out: the product packs it panel by panel (`K x NR` values) straight
//!   from the input (`ConvPanels`), and the weights are read in place. The epilogue runs on
//!   each finished run of an output row, while it is still in cache.
//! - Stride 1 (3x3, dilated, ...): the input is copied once into its zero padding, and the
//!   product reads `B` in place from it (`matmul_offsets`: row `(ci, ky, kx)` of a column panel
//!   is a run of the padded input), so nothing is packed at all.
//! - 1x1, stride 1, unpadded: the input already is `B` (a plain matrix source).
//! - Depthwise (`cin_g == 1`, `cout == groups`): a direct loop, parallel over `(n, c)` planes,
//!   with the epilogue applied to each plane in the same task.
//!
//! [`im2col`] (the whole matrix) remains for the training backward pass.
//!
//! The epilogue is `y = post_act( act(conv + bias) (+) residual )`.

use super::parallel;

use super::gemm::{matmul_offsets, matmul_panels, offsets_slack, Epilogue, Kernel, Mat, MatMut, Panels, Parallelism};
use super::indirect::{conv_indirect, conv_pointwise, PackedWeights, TileEpilogue};
use super::ops::{planes_per_task, sigmoid, valid_range, Planes};
use crate::graph::{Act, Conv2d, Residual};
use crate::tensor::Tensor;

/// How convolutions that are not depthwise run on the CPU: the one dispatcher's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvStrategy {
    /// `Y^T = im2col^T * W^T` over MR-pixel x NR-channel tiles with prepacked weights
    /// (`super::indirect`).
    Indirect,
    /// `Y = W * im2col` over channel x pixel tiles, the im2col matrix read in place (stride 1)
    /// or packed per panel (`super::gemm`).
    Gemm,
}

impl ConvStrategy {
    /// The strategy of training's backward pass: `WGPOSE_CPU_CONV=indirect` or `=gemm` if set;
    /// otherwise indirect, measured faster with the AVX2 and the portable kernels
    /// (`docs/cpu-speed-log.md`), except with the AVX-512 kernel, where the backward pass has only been
    /// timed as matrix products. The forward pass picks by layer ([`ConvStrategy::for_conv`]).
    pub fn detect() -> ConvStrategy {
        match Self::forced() {
            Some(s) => s,
            None if Kernel::detect() == Kernel::Avx512 => ConvStrategy::Gemm,
            None => ConvStrategy::Indirect,
        }
    }

    /// The strategy `WGPOSE_CPU_CONV` forces, if any.
    fn forced() -> Option<ConvStrategy> {
        static FORCED: std::sync::OnceLock<Option<ConvStrategy>> = std::sync::OnceLock::new();
        *FORCED.get_or_init(|| match std::env::var("WGPOSE_CPU_CONV").as_deref() {
            Ok("indirect") => Some(ConvStrategy::Indirect),
            Ok("gemm") => Some(ConvStrategy::Gemm),
            _ => None,
        })
    }

    /// The strategy of convolution `c` in the forward pass: `WGPOSE_CPU_CONV`'s if set, otherwise
    /// indirect (on AVX-512 since session 23, where it was 1.0-1.2x faster on the ResNet and
    /// hourglass models), except that with the AVX-512
    /// kernel, layers of fewer than 32 output channels per group run as matrix products: the
    /// indirect path would give them a narrower AVX2 tile (its 32-channel panels would be half
    /// zeros), where the product puts the pixels along the 32-wide vectors. LDCRN (layers of 8
    /// and 16 channels), one thread of an AVX-512 Xeon, session 23 (`scripts/compare_cpu.py`):
    /// all indirect 11.7 ms, all matrix products 10.6-10.8 ms, by layer 10.0 ms.
    pub(crate) fn for_conv(c: &Conv2d) -> ConvStrategy {
        match Self::forced() {
            Some(s) => s,
            None if Kernel::detect() == Kernel::Avx512 && c.cout() / c.groups < 32 => ConvStrategy::Gemm,
            None => ConvStrategy::Indirect,
        }
    }
}

/// Whether convolution `c` runs through prepacked weights (what `super::PackedGraph` packs).
pub(crate) fn uses_packed_weights(c: &Conv2d) -> bool {
    !is_depthwise(c) && (ConvStrategy::for_conv(c) == ConvStrategy::Indirect || super::winograd::applies(c))
}

fn is_depthwise(c: &Conv2d) -> bool {
    c.cin_per_group() == 1 && c.cout() == c.groups
}

/// `act(scale[c] * x + shift[c])` on a convolution's input channels, applied while the input is
/// copied into its zero padding: a channel affine (a pre-activation batch norm + ReLU) that only
/// feeds this convolution costs no pass and no tensor of its own (`super::PackedGraph` finds
/// them). The padding stays zero, as it is after a separate affine.
#[derive(Clone, Copy)]
pub(crate) struct InputAffine<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub act: Act,
}

impl InputAffine<'_> {
    /// Channels `c0..` of this affine (a group's input channels).
    fn channels_from(self, c0: usize) -> Self {
        InputAffine { scale: &self.scale[c0..], shift: &self.shift[c0..], act: self.act }
    }
}

/// Whether `c` copies its whole input (into a zero padding, or gathered pixel-major), so that it
/// can apply an [`InputAffine`] and gather a concatenation's parts ([`Planes`]) on the way at no
/// extra cost: a padded convolution that is not depthwise, on the indirect path or at stride 1,
/// and the pointwise ones [`gathers_pixels`] picks.
pub(crate) fn copies_input(c: &Conv2d) -> bool {
    let indirect = ConvStrategy::for_conv(c) == ConvStrategy::Indirect;
    !is_depthwise(c) && ((c.padding != [0, 0] && (indirect || c.stride == [1, 1])) || gathers_pixels(c))
}

/// Whether `c` runs as a pointwise convolution with its input gathered pixel-major a block at a
/// time ([`conv_pointwise`]): a 1x1 convolution without padding (any stride) on the indirect
/// path, with more than one panel of output channels, where the CPU has vector transposes
/// ([`has_vector_transposes`]). Read in place, its input is read once per panel, from another
/// plane at every depth step; with one panel, in place costs less (the hourglass's 128 -> 16
/// heatmap layer: 0.33 ms in place, 0.39-0.43 gathered, one Zen 3 thread).
fn gathers_pixels(c: &Conv2d) -> bool {
    let cout_g = c.cout() / c.groups;
    ConvStrategy::for_conv(c) == ConvStrategy::Indirect
        && !is_depthwise(c)
        && c.kernel() == [1, 1]
        && c.padding == [0, 0]
        && cout_g > super::indirect::kernel_for(Kernel::detect(), cout_g).shape().1
        && has_vector_transposes()
}

/// `c`'s weights packed for the path it takes on output maps of `out_hw` (any size if unknown):
/// transformed for the Winograd path (`super::winograd::takes`), else for the indirect kernel.
pub(crate) fn pack_weights(c: &Conv2d, out_hw: Option<[usize; 2]>) -> PackedWeights {
    if super::winograd::takes(c, out_hw) {
        return super::winograd::pack_weights(c, super::winograd::variant_for(c, out_hw));
    }
    pack_weights_for(c, super::indirect::kernel_for(Kernel::detect(), c.cout() / c.groups))
}

/// `c`'s weights packed for `kernel`'s tiles, in the depth order `c`'s input is read in.
fn pack_weights_for(c: &Conv2d, kernel: Kernel) -> PackedWeights {
    let [kh, kw] = c.kernel();
    let (cout_g, cin_g) = (c.cout() / c.groups, c.cin_per_group());
    let k = cin_g * kh * kw;
    if !reads_pixel_major_padding(c) {
        return PackedWeights::new(kernel, &c.weight.data, c.groups, cout_g, k);
    }
    // Depth in the padded copy's order: tap (ky, kx), then input channel.
    let taps = kh * kw;
    let w = &c.weight.data;
    PackedWeights::tap_major(kernel, c.groups, cout_g, [cin_g, taps], |g, o| &w[(g * cout_g + o) * k..][..k])
}

/// Whether `c`, on the indirect path, reads its input from a pixel-major zero-padded copy
/// ([`zero_padded_pixel_major`]) with its depth ordered tap, then input channel: padded
/// convolutions that are not depthwise, with at least [`PIXEL_MAJOR_MIN_CHANNELS`] input
/// channels per group (the others copy planes, [`zero_padded`]). A tile's depth steps then read
/// each of its pixels' values as one contiguous run per tap instead of one cache line per channel
/// plane and kernel row: the kernel alone, on a 3x3, 64 -> 64 layer at 32x32 (ResNet-18's
/// layer1), ran at 95.5 GFLOP/s instead of 87.3 on one Zen 3 thread.
fn reads_pixel_major_padding(c: &Conv2d) -> bool {
    !is_depthwise(c) && c.padding != [0, 0] && c.cin_per_group() >= PIXEL_MAJOR_MIN_CHANNELS && has_vector_transposes()
}

/// Whether [`transpose_runs`] has vector transposes on this CPU (x86-64 with AVX2). Elsewhere
/// (aarch64, the browser's wasm build) pixel-major copies would be scalar scatters, measured
/// nowhere: those targets keep reading planes.
fn has_vector_transposes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Input channels per group from which a padded convolution reads its input pixel-major. With
/// 16 or 32 the runs are one or two cache lines per tap and the planes did better (the soft-gated
/// hourglass's 32 -> 16 and 16 -> 16 layers took 5-20% longer pixel-major); whole models on one
/// Zen 3 thread (`examples/cpu_profile`, two runs each): from 64 channels 7.99-8.08 / 10.38 /
/// 11.38-11.39 ms (hourglass, LDCRN, default model), from 16 channels 8.17-8.68 / 10.55-10.76 /
/// 11.47-11.50, from 1 channel 8.19-9.20 / 10.58-10.69 / 11.42-11.97, never 8.02-8.10 / 10.48 /
/// 11.84-12.14.
const PIXEL_MAJOR_MIN_CHANNELS: usize = 64;

/// Convolution with its fused epilogue. `x` is `[n, cin, h, w]` (in several parts, or with
/// `input`, an affine applied to it first, only where [`copies_input_to_padding`]: panics
/// otherwise, a caller's bug), `residual` (present exactly when the epilogue has one) has the
/// output shape `out`; `packed`, `c`'s weights as [`pack_weights`] gives them when the caller
/// keeps them (packed here otherwise). Inputs are assumed validated.
pub(crate) fn conv2d(
    x: &Planes,
    residual: Option<&Tensor>,
    c: &Conv2d,
    out: [usize; 4],
    packed: Option<&PackedWeights>,
    input: Option<InputAffine>,
) -> Tensor {
    conv2d_with(x, residual, c, out, packed, input, TileChoice::BySize)
}

/// [`conv2d`] for training (the forward pass and the input gradients of `crate::autodiff`):
/// Winograd layers stay on F(2x2, 3x3)'s tiles ([`TileChoice::Small`]).
pub(crate) fn conv2d_for_training(x: &Planes, residual: Option<&Tensor>, c: &Conv2d, out: [usize; 4]) -> Tensor {
    conv2d_with(x, residual, c, out, None, None, TileChoice::Small)
}

/// The [`conv2d`] of either kind, `tiles` choosing the Winograd tiles.
fn conv2d_with(
    x: &Planes,
    residual: Option<&Tensor>,
    c: &Conv2d,
    out: [usize; 4],
    packed: Option<&PackedWeights>,
    input: Option<InputAffine>,
    tiles: TileChoice,
) -> Tensor {
    assert!(
        (input.is_none() && x.whole().is_some()) || copies_input(c),
        "conv2d: this convolution reads its input in place"
    );
    // Depthwise accumulates into zeros; the other two paths store every output value.
    let n = out.iter().product();
    let mut y = if is_depthwise(c) { vec![0.0f32; n] } else { super::buffer::overwritten(n) };
    let ep = EpilogueRef::new(c, residual);
    if is_depthwise(c) {
        depthwise(x.whole().expect("checked above"), c, out, &ep, &mut y);
    } else if super::winograd::chosen(c, packed, [out[2], out[3]]) {
        super::winograd::conv2d(x, c, out, &ep, &mut y, packed, input, tiles);
    } else if ConvStrategy::for_conv(c) == ConvStrategy::Indirect {
        indirect_conv(x, c, out, &ep, &mut y, packed, input);
    } else {
        gemm_conv(x, c, out, &ep, &mut y, input);
    }
    Tensor { shape: out.to_vec(), data: y }
}

pub(crate) use super::winograd::TileChoice;

/// The epilogue with its per-channel parameters borrowed.
pub(super) struct EpilogueRef<'a> {
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

    pub(super) fn is_identity(&self) -> bool {
        self.bias.is_none() && self.act == Act::None && self.residual.is_none() && self.post_act == Act::None
    }

    /// Applies the epilogue to `v`, a run of channel `o`'s outputs that starts at element
    /// `offset` of the whole output tensor.
    ///
    /// Compiled for the CPU's vectors (AVX-512, AVX2, or the crate's baseline), with the bias
    /// and the activation that follows it in one pass, and the residual and the activation after
    /// it in another: at the SSE2 baseline, one pass per step, this took 7% of the default
    /// model's time on one thread of an AVX-512 Xeon (`perf`, session 34).
    pub(super) fn apply(&self, v: &mut [f32], o: usize, offset: usize) {
        let bias = self.bias.map(|b| b[o]);
        let residual = self.residual_step(v.len(), o, offset);
        #[cfg(target_arch = "x86_64")]
        match Kernel::detect() {
            // SAFETY: the kernel implies the CPU's features (`Kernel::detect`).
            Kernel::Avx512 => return unsafe { epilogue_avx512(v, bias, self.act, residual, self.post_act) },
            Kernel::Avx2 | Kernel::Avx2Narrow => {
                return unsafe { epilogue_avx2(v, bias, self.act, residual, self.post_act) }
            }
            Kernel::Portable => {}
        }
        epilogue_steps(v, bias, self.act, residual, self.post_act)
    }

    /// The part of the epilogue [`conv_indirect`] applies to each tile before storing it (the
    /// bias and the first activation) for the output channels of group `g` (`cout_g` each).
    pub(super) fn tile_part(&self, g: usize, cout_g: usize) -> TileEpilogue<'a> {
        TileEpilogue { bias: self.bias.map(|b| &b[g * cout_g..(g + 1) * cout_g]), act: self.act }
    }

    /// Whether the epilogue after [`EpilogueRef::tile_part`] does nothing.
    pub(super) fn rest_is_identity(&self) -> bool {
        self.residual.is_none() && self.post_act == Act::None
    }

    /// The epilogue after [`EpilogueRef::tile_part`] (the residual, then the second
    /// activation), as [`EpilogueRef::apply`] takes its arguments.
    pub(super) fn apply_rest(&self, v: &mut [f32], o: usize, offset: usize) {
        let residual = self.residual_step(v.len(), o, offset);
        #[cfg(target_arch = "x86_64")]
        match Kernel::detect() {
            // SAFETY: the kernel implies the CPU's features (`Kernel::detect`).
            Kernel::Avx512 => return unsafe { epilogue_avx512(v, None, Act::None, residual, self.post_act) },
            Kernel::Avx2 | Kernel::Avx2Narrow => {
                return unsafe { epilogue_avx2(v, None, Act::None, residual, self.post_act) }
            }
            Kernel::Portable => {}
        }
        residual_steps(v, residual, self.post_act)
    }

    /// Channel `o`'s residual step over the `len` values from `offset`, if any.
    fn residual_step(&self, len: usize, o: usize, offset: usize) -> Option<(ResidualStep, &'a [f32])> {
        self.residual.map(|(kind, r)| {
            let r = &r[offset..offset + len];
            match kind {
                Residual::Add => (ResidualStep::Add, r),
                Residual::GateResidual(a) => (ResidualStep::ScaleResidual(a.data[o]), r),
                Residual::GateConv(a) => (ResidualStep::ScaleConv(a.data[o]), r),
            }
        })
    }
}

/// How a residual joins a convolution's output `x` (`r` the residual's value).
#[derive(Clone, Copy)]
enum ResidualStep {
    /// `x + r`.
    Add,
    /// `x + a r` (the soft gate on the residual branch).
    ScaleResidual(f32),
    /// `a x + r` (the soft gate on the convolution branch).
    ScaleConv(f32),
}

/// `post_act(act(v + bias) (+) residual)`, in two passes over `v`.
#[inline(always)]
fn epilogue_steps(v: &mut [f32], bias: Option<f32>, act: Act, residual: Option<(ResidualStep, &[f32])>, post_act: Act) {
    match (bias, act) {
        (None, Act::None) => {}
        (Some(b), Act::None) => v.iter_mut().for_each(|x| *x += b),
        (b, Act::Relu) => {
            let b = b.unwrap_or(0.0);
            v.iter_mut().for_each(|x| *x = (*x + b).max(0.0));
        }
        (b, Act::Sigmoid) => {
            let b = b.unwrap_or(0.0);
            v.iter_mut().for_each(|x| *x = sigmoid(*x + b));
        }
    }
    residual_steps(v, residual, post_act);
}

/// `post_act(v (+) residual)`.
#[inline(always)]
fn residual_steps(v: &mut [f32], residual: Option<(ResidualStep, &[f32])>, post_act: Act) {
    let Some((step, r)) = residual else {
        return act_steps(v, post_act);
    };
    // Each combination its own loop, so that each one vectorises; a ReLU after the residual
    // rides along in the same pass.
    match (step, post_act) {
        (ResidualStep::Add, Act::Relu) => v.iter_mut().zip(r).for_each(|(x, &r)| *x = (*x + r).max(0.0)),
        (ResidualStep::ScaleResidual(a), Act::Relu) => {
            v.iter_mut().zip(r).for_each(|(x, &r)| *x = (*x + a * r).max(0.0))
        }
        (ResidualStep::ScaleConv(a), Act::Relu) => v.iter_mut().zip(r).for_each(|(x, &r)| *x = (a * *x + r).max(0.0)),
        (ResidualStep::Add, _) => v.iter_mut().zip(r).for_each(|(x, &r)| *x += r),
        (ResidualStep::ScaleResidual(a), _) => v.iter_mut().zip(r).for_each(|(x, &r)| *x += a * r),
        (ResidualStep::ScaleConv(a), _) => v.iter_mut().zip(r).for_each(|(x, &r)| *x = a * *x + r),
    }
    if post_act != Act::Relu {
        act_steps(v, post_act);
    }
}

/// `act` on every value of `v`, inlined into the caller's target features.
#[inline(always)]
fn act_steps(v: &mut [f32], act: Act) {
    match act {
        Act::None => {}
        Act::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        Act::Sigmoid => v.iter_mut().for_each(|x| *x = sigmoid(*x)),
    }
}

/// [`epilogue_steps`] compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn epilogue_avx512(v: &mut [f32], bias: Option<f32>, act: Act, r: Option<(ResidualStep, &[f32])>, post: Act) {
    epilogue_steps(v, bias, act, r, post)
}

/// [`epilogue_steps`] compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn epilogue_avx2(v: &mut [f32], bias: Option<f32>, act: Act, r: Option<(ResidualStep, &[f32])>, post: Act) {
    epilogue_steps(v, bias, act, r, post)
}

fn gemm_conv(x: &Planes, c: &Conv2d, out: [usize; 4], ep: &EpilogueRef, y: &mut [f32], input: Option<InputAffine>) {
    let [n, cin, h, w] = x.dims();
    let [_, cout, oh, ow] = out;
    let (ohw, hw) = (oh * ow, h * w);
    let groups = c.groups;
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let [kh, kw] = c.kernel();
    let k = cin_g * kh * kw;
    let direct = kh == 1 && kw == 1 && c.stride == [1, 1] && c.padding == [0, 0];
    assert!(
        (input.is_none() && x.whole().is_some()) || (c.stride == [1, 1] && !direct),
        "gemm_conv: an input affine or parts need the padded copy"
    );
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let item = |b: usize, yb: &mut [f32], par: Parallelism| {
        for g in 0..groups {
            // In place (one part, checked above) unless it is copied into its padding.
            let xg = || &x.whole().expect("one part").data[(b * cin + g * cin_g) * hw..][..cin_g * hw];
            let wg = &c.weight.data[g * cout_g * k..(g + 1) * cout_g * k];
            let y0 = (b * cout + g * cout_g) * ohw;
            let yt = &mut yb[g * cout_g * ohw..(g + 1) * cout_g * ohw];
            // The epilogue runs on each finished run of an output row while it is in cache.
            let epilogue =
                |row: usize, col0: usize, v: &mut [f32]| ep.apply(v, g * cout_g + row, y0 + row * ohw + col0);
            let epilogue: Option<Epilogue> = if ep.is_identity() { None } else { Some(&epilogue) };
            let dst = MatMut::rows(yt, cout_g, ohw, ohw);
            let lhs = Mat::rows(wg, cout_g, k, k);
            if direct {
                matmul_panels(dst, lhs, &Mat::rows(xg(), cin_g, ohw, hw), false, par, epilogue);
            } else if c.stride == [1, 1] {
                let input = input.map(|a| a.channels_from(g * cin_g));
                let (padded, offsets, pitch) = padded_input(|ci| x.plane(b, g * cin_g + ci), [cin_g, h, w], c, input);
                matmul_offsets(dst, lhs, &padded, &offsets, [pitch, ow], par, epilogue);
            } else {
                let src = ConvPanels::new(xg(), [cin_g, h, w], c, [oh, ow]);
                matmul_panels(dst, lhs, &src, false, par, epilogue);
            }
        }
    };
    for_each_item(&mut y[..n * cout * ohw], n, cout * ohw, par, item);
}

/// `item(b, y_b, par)` for every batch item `b` and its output `y_b` (`per_item` values each).
/// With `par` parallel, a batch of at least one item per thread is split by items, each item on
/// one thread: one item's product split over the threads left narrow layers (the hourglass's
/// 16-channel ones at 32x32 to 64x64, batch 16) little faster on two threads than on one.
/// Otherwise items run in turn, each with `par`.
pub(super) fn for_each_item(
    y: &mut [f32],
    n: usize,
    per_item: usize,
    par: Parallelism,
    item: impl Fn(usize, &mut [f32], Parallelism) + Sync,
) {
    let threads = rayon::current_num_threads();
    if per_item == 0 {
        return;
    }
    if matches!(par, Parallelism::Rayon(_)) && threads > 1 && n >= threads {
        parallel::for_each_chunk_mut(y, per_item, 1, |b, yb| item(b, yb, Parallelism::None));
    } else {
        for (b, yb) in y.chunks_mut(per_item).enumerate() {
            item(b, yb, par);
        }
    }
}

/// Any convolution that is not depthwise through [`conv_indirect`]: the input, zero-padded when
/// the convolution pads, is read in place through each output pixel's corner and each tap's
/// offset; nothing is packed but the weights (once, by the caller that keeps them).
fn indirect_conv(
    x: &Planes,
    c: &Conv2d,
    out: [usize; 4],
    ep: &EpilogueRef,
    y: &mut [f32],
    packed: Option<&PackedWeights>,
    input: Option<InputAffine>,
) {
    let [n, cin, h, w] = x.dims();
    let [_, cout, oh, ow] = out;
    let (ohw, hw, groups) = (oh * ow, h * w, c.groups);
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let [kh, kw] = c.kernel();
    let k = cin_g * kh * kw;
    let owned;
    let packed = match packed {
        Some(p) if p.fits(groups, cout_g, k) => p,
        _ => {
            owned = pack_weights_for(c, super::indirect::kernel_for(Kernel::detect(), cout_g));
            &owned
        }
    };
    let ([sy, sx], [py, px], [dy, dx]) = (c.stride, c.padding, c.dilation);
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    if gathers_pixels(c) {
        for b in 0..n {
            for g in 0..groups {
                let input = input.map(|a| a.channels_from(g * cin_g));
                let gather = |q0: usize, out: &mut [f32]| {
                    gather_pixels(|ci| x.plane(b, g * cin_g + ci), cin_g, [sy, sx], [w, ow], input, q0, out)
                };
                let y0 = (b * cout + g * cout_g) * ohw;
                let epilogue =
                    |row: usize, col0: usize, v: &mut [f32]| ep.apply_rest(v, g * cout_g + row, y0 + row * ohw + col0);
                let epilogue: Option<Epilogue> = if ep.rest_is_identity() { None } else { Some(&epilogue) };
                let finish = ep.tile_part(g, cout_g);
                conv_pointwise(&mut y[y0..y0 + cout_g * ohw], ohw, packed, g, ohw, &gather, par, finish, epilogue);
            }
        }
        return;
    }
    let pads = py > 0 || px > 0;
    assert!(
        (input.is_none() && x.whole().is_some()) || pads,
        "indirect_conv: an input affine or parts need the padded copy"
    );
    let pm = reads_pixel_major_padding(c);
    // Padded: pixel-major, depth (ky, kx, ci), as the weights were packed; else planes in place.
    let (offsets, pix): (Vec<usize>, Vec<usize>) = if pm {
        let wp = w + 2 * px;
        let offsets = (0..kh * kw)
            .flat_map(|t| (0..cin_g).map(move |ci| ((t / kw) * dy * wp + (t % kw) * dx) * cin_g + ci))
            .collect();
        (offsets, (0..ohw).map(|q| ((q / ow) * sy * wp + (q % ow) * sx) * cin_g).collect())
    } else {
        let pitch = if pads { w + 2 * px } else { w };
        let plane = if pads { (h + 2 * py) * pitch } else { hw };
        let offsets = tap_offsets(cin_g, [kh, kw], [dy, dx], plane, pitch);
        (offsets, (0..ohw).map(|q| (q / ow) * sy * pitch + (q % ow) * sx).collect())
    };
    if n > 1 && groups == 1 && ohw <= FOLD_MAX_PIXELS {
        let geometry = FoldGeometry { pads, pm, pad: [py, px] };
        return indirect_conv_folded(x, out, ep, y, packed, input, &geometry, &pix, &offsets);
    }
    let item = |b: usize, yb: &mut [f32], par: Parallelism| {
        for g in 0..groups {
            let input = input.map(|a| a.channels_from(g * cin_g));
            let padded = pads.then(|| {
                if pm {
                    zero_padded_pixel_major(|ci| x.plane(b, g * cin_g + ci), [cin_g, h, w], [py, px], input)
                } else {
                    zero_padded(|ci| x.plane(b, g * cin_g + ci), [cin_g, h, w], [py, px], input)
                }
            });
            let y0 = (b * cout + g * cout_g) * ohw;
            let epilogue =
                |row: usize, col0: usize, v: &mut [f32]| ep.apply_rest(v, g * cout_g + row, y0 + row * ohw + col0);
            let epilogue: Option<Epilogue> = if ep.rest_is_identity() { None } else { Some(&epilogue) };
            // In place (one part, checked above) unless it was copied into its padding.
            let src = match &padded {
                Some(p) => &p[..],
                None => &x.whole().expect("one part").data[(b * cin + g * cin_g) * hw..][..cin_g * hw],
            };
            let yg = &mut yb[g * cout_g * ohw..(g + 1) * cout_g * ohw];
            conv_indirect(yg, ohw, packed, g, src, &pix, &offsets, par, ep.tile_part(g, cout_g), epilogue);
            if let Some(p) = padded {
                super::buffer::recycle(p);
            }
        }
    };
    for_each_item(&mut y[..n * cout * ohw], n, cout * ohw, par, item);
}

/// Output maps up to which [`indirect_conv`] folds a batch into one product over all items'
/// pixels: on small maps a product per item streams all of the layer's weights for a few pixel
/// tiles (ResNet-18's 512-channel 3x3 layers at 4x4 in a training batch of 16: 9.4 MB per item,
/// 16 pixels).
const FOLD_MAX_PIXELS: usize = 256;

/// How [`indirect_conv_folded`] reads the input: copied into its padding (pixel-major or as
/// planes) or in place, and the padding.
struct FoldGeometry {
    pads: bool,
    pm: bool,
    pad: [usize; 2],
}

/// [`indirect_conv`] of a batch (one group) as one product: every item's input side by side
/// (its padded copy, or the input in place), the items' pixel corners `pix` offset by their
/// item, the product into a `[cout, n * ohw]` buffer, then each `(item, channel)` row copied to
/// its place with the epilogue.
#[allow(clippy::too_many_arguments)]
fn indirect_conv_folded(
    x: &Planes,
    out: [usize; 4],
    ep: &EpilogueRef,
    y: &mut [f32],
    packed: &PackedWeights,
    input: Option<InputAffine>,
    geometry: &FoldGeometry,
    pix: &[usize],
    offsets: &[usize],
) {
    let [n, cin, h, w] = x.dims();
    let [_, cout, oh, ow] = out;
    let ohw = oh * ow;
    let FoldGeometry { pads, pm, pad: [py, px] } = *geometry;
    let owned;
    let (src, item_len): (&[f32], usize) = if pads {
        let item = (h + 2 * py) * (w + 2 * px) * cin;
        let mut all = super::buffer::overwritten(n * item);
        for (b, dst) in all.chunks_exact_mut(item).enumerate() {
            if pm {
                let dims = [h + 2 * py, w + 2 * px];
                fill_zero_padded_pixel_major(dst, |ci| x.plane(b, ci), [cin, h, w], [py, px], dims, input);
            } else {
                fill_zero_padded(dst, |ci| x.plane(b, ci), [cin, h, w], [py, px], input);
            }
        }
        owned = all;
        (&owned[..], item)
    } else {
        (&x.whole().expect("one part, unpadded").data[..], cin * h * w)
    };
    let pix_all: Vec<usize> = (0..n).flat_map(|b| pix.iter().map(move |&p| b * item_len + p)).collect();
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let mut folded = super::buffer::overwritten(cout * n * ohw);
    conv_indirect(&mut folded, n * ohw, packed, 0, src, &pix_all, offsets, par, TileEpilogue::NONE, None);
    let place = |bc: usize, run: &mut [f32]| {
        let (b, c) = (bc / cout, bc % cout);
        run.copy_from_slice(&folded[(c * n + b) * ohw..][..ohw]);
        if !ep.is_identity() {
            ep.apply(run, c, bc * ohw);
        }
    };
    if threads > 1 && n * cout * ohw >= 1 << 14 {
        parallel::for_each_chunk_mut(&mut y[..n * cout * ohw], ohw, 1, place);
    } else {
        y[..n * cout * ohw].chunks_mut(ohw).enumerate().for_each(|(bc, run)| place(bc, run));
    }
}

/// Output pixels `q0..` of a pointwise convolution's input channels `plane(0..k)`, pixel-major
/// (`out[i * k + ci]`, as many pixels as `out` holds), through `input` when given.
fn gather_pixels<'a>(
    plane: impl Fn(usize) -> &'a [f32],
    k: usize,
    [sy, sx]: [usize; 2],
    [w, ow]: [usize; 2],
    input: Option<InputAffine>,
    q0: usize,
    out: &mut [f32],
) {
    if k == 0 {
        return;
    }
    let n = out.len() / k;
    let unit = sy == 1 && sx == 1;
    let src: Vec<usize> =
        if unit { Vec::new() } else { (q0..q0 + n).map(|q| (q / ow) * sy * w + (q % ow) * sx).collect() };
    if unit {
        interleave_planes(|ci| &plane(ci)[q0..q0 + n], k, out);
    } else {
        // Eight channels at a time: eight read streams, one 32-byte run written per pixel.
        const CH: usize = 8;
        for ci0 in (0..k).step_by(CH) {
            let m = CH.min(k - ci0);
            let planes: [&[f32]; CH] = std::array::from_fn(|j| plane(ci0 + j.min(m - 1)));
            for (row, &s) in out.chunks_exact_mut(k).zip(&src) {
                for (j, v) in row[ci0..ci0 + m].iter_mut().enumerate() {
                    *v = planes[j][s];
                }
            }
        }
    }
    apply_to_pixels(input, out, k);
}

/// `out[i * k + ci] = run(ci)[i]` for every channel `ci < k` and pixel `i` (the runs all of one
/// length): pixel-major rows of `k` channels from channel planes. With AVX-512, 16 channels at a
/// time through 16 x 16 transposes of whole 16-pixel runs ([`transpose_runs16`]), the rest eight
/// at a time ([`interleave_channels`]). The 8 x 8 AVX2 transposes alone took 0.25-0.36 ns per
/// value (one thread of an AVX-512 Xeon, warm caches, session 35), the 16 x 16 ones 1.4-1.9x
/// less: 32 channels at 96 x 64 66 -> 35 us, 64 at 40 x 32 21 -> 14, 128 at 20 x 16 12.3 -> 7.6.
fn interleave_planes<'a>(run: impl Fn(usize) -> &'a [f32], k: usize, out: &mut [f32]) {
    let mut ci0 = 0;
    #[cfg(target_arch = "x86_64")]
    if Kernel::detect() == Kernel::Avx512 {
        while ci0 + 16 <= k {
            let runs: [&[f32]; 16] = std::array::from_fn(|j| run(ci0 + j));
            let done = transpose_runs16(&runs, &mut out[ci0..], k);
            if done < runs[0].len() {
                for half in [0, 8] {
                    let tail = std::array::from_fn(|j| &runs[half + j][done..]);
                    interleave_channels(tail, 8, &mut out[done * k + ci0 + half..], k);
                }
            }
            ci0 += 16;
        }
    }
    while ci0 < k {
        let m = 8.min(k - ci0);
        interleave_channels(std::array::from_fn(|j| run(ci0 + j.min(m - 1))), m, &mut out[ci0..], k);
        ci0 += 8;
    }
}

/// `out[i * stride + j] = runs[j][i]` for the sixteen runs (all at least as long as the first)
/// and their first pixels `i` in whole groups of sixteen, by AVX-512 16 x 16 transposes; returns
/// how many pixels it wrote (0 without AVX-512F).
fn transpose_runs16(runs: &[&[f32]; 16], out: &mut [f32], stride: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        let n = runs[0].len() / 16 * 16;
        assert!(runs.iter().all(|r| r.len() >= n) && (n == 0 || (n - 1) * stride + 16 <= out.len()));
        // SAFETY: AVX-512F is present (checked); every run holds pixels 0..n and `out` rows
        // 0..n hold 16 values at stride `stride` (asserted above).
        unsafe { transpose_runs16_avx512(runs, n, out.as_mut_ptr(), stride) };
        return n;
    }
    let _ = (runs, out, stride);
    0
}

/// [`transpose_runs16`] on pixels `0..n` (a multiple of 16).
///
/// # Safety
/// AVX-512F must be available; every run readable for `n` values, `out` writable at
/// `i * stride + j` for `i < n`, `j < 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_runs16_avx512(runs: &[&[f32]; 16], n: usize, out: *mut f32, stride: usize) {
    use std::arch::x86_64::*;
    for i0 in (0..n).step_by(16) {
        // SAFETY: per the contract, rows j hold pixels i0..i0 + 16 and `out` rows i0..i0 + 16
        // hold 16 values from i * stride.
        unsafe {
            let r: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(runs[j].as_ptr().add(i0)));
            // Rows 2k and 2k + 1 interleaved (32-bit), then pairs of those (64-bit): w[4k + q]
            // holds, in its 128-bit lane L, rows 4k..4k + 4 at pixel 4L + q.
            let t: [__m512; 16] = std::array::from_fn(|m| {
                let (a, b) = (r[m & !1], r[m | 1]);
                if m % 2 == 0 {
                    _mm512_unpacklo_ps(a, b)
                } else {
                    _mm512_unpackhi_ps(a, b)
                }
            });
            let w: [__m512; 16] = std::array::from_fn(|m| {
                let (k, q) = (m / 4, m % 4);
                let (a, b) = (_mm512_castps_pd(t[4 * k + q / 2]), _mm512_castps_pd(t[4 * k + 2 + q / 2]));
                _mm512_castpd_ps(if q % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
            });
            // Lane L of the four groups k side by side: pixel 4L + q, rows 0..16.
            for q in 0..4 {
                let (a, b, c, d) = (w[q], w[4 + q], w[8 + q], w[12 + q]);
                let (ab_lo, ab_hi) = (_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
                let (cd_lo, cd_hi) = (_mm512_shuffle_f32x4::<0x44>(c, d), _mm512_shuffle_f32x4::<0xEE>(c, d));
                let px = |l: usize| out.add((i0 + 4 * l + q) * stride);
                _mm512_storeu_ps(px(0), _mm512_shuffle_f32x4::<0x88>(ab_lo, cd_lo));
                _mm512_storeu_ps(px(1), _mm512_shuffle_f32x4::<0xDD>(ab_lo, cd_lo));
                _mm512_storeu_ps(px(2), _mm512_shuffle_f32x4::<0x88>(ab_hi, cd_hi));
                _mm512_storeu_ps(px(3), _mm512_shuffle_f32x4::<0xDD>(ab_hi, cd_hi));
            }
        }
    }
}

/// `out[i * stride + j] = runs[j][i]` for the first `m` runs (all of one length) and every
/// pixel `i`: whole groups of eight pixels by vector transposes when all eight runs count
/// ([`transpose_runs`]), the rest one value at a time.
fn interleave_channels(runs: [&[f32]; 8], m: usize, out: &mut [f32], stride: usize) {
    let done = if m == 8 { transpose_runs(&runs, out, stride) } else { 0 };
    for (i, px) in out.chunks_mut(stride).enumerate().take(runs[0].len()).skip(done) {
        for (j, v) in px[..m].iter_mut().enumerate() {
            *v = runs[j][i];
        }
    }
}

/// `act(scale[ci] * v + shift[ci])` on every pixel's `k` channels of a pixel-major `out`,
/// compiled for the CPU's vectors: at the crate's SSE2 baseline, with the activation applied
/// by a call per pixel, it added 60-90% to the hourglass stem's padded copies (32 channels at
/// 96 x 64: 94 -> 151-178 us, one thread of an AVX-512 Xeon, session 35), and the hourglass
/// applies 51 of these affines per frame. Bit-identical on every path (a multiply and an add,
/// never fused).
fn apply_to_pixels(input: Option<InputAffine>, out: &mut [f32], k: usize) {
    let Some(a) = input else { return };
    #[cfg(target_arch = "x86_64")]
    match Kernel::detect() {
        // SAFETY: the kernel implies the CPU's features (`Kernel::detect`).
        Kernel::Avx512 => return unsafe { apply_to_pixels_avx512(a, out, k) },
        Kernel::Avx2 | Kernel::Avx2Narrow => return unsafe { apply_to_pixels_avx2(a, out, k) },
        Kernel::Portable => {}
    }
    apply_to_pixels_body(a, out, k)
}

#[inline(always)]
fn apply_to_pixels_body(a: InputAffine, out: &mut [f32], k: usize) {
    // The activation chosen once, outside the pixel loop (a generic, so each loop is compiled
    // with its activation inline and vectorises whole).
    #[inline(always)]
    fn each(a: InputAffine, out: &mut [f32], k: usize, act: impl Fn(f32) -> f32) {
        let (scale, shift) = (&a.scale[..k], &a.shift[..k]);
        for px in out.chunks_exact_mut(k) {
            px.iter_mut().zip(scale.iter().zip(shift)).for_each(|(v, (m, b))| *v = act(m * *v + b));
        }
    }
    match a.act {
        Act::None => each(a, out, k, |x| x),
        Act::Relu => each(a, out, k, |x| x.max(0.0)),
        Act::Sigmoid => each(a, out, k, sigmoid),
    }
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn apply_to_pixels_avx512(a: InputAffine, out: &mut [f32], k: usize) {
    apply_to_pixels_body(a, out, k)
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_to_pixels_avx2(a: InputAffine, out: &mut [f32], k: usize) {
    apply_to_pixels_body(a, out, k)
}

/// `out[i * stride + j] = runs[j][i]` for the first pixels `i` in whole groups of eight (all
/// eight runs equally long), by AVX2 8 x 8 transposes; returns how many pixels it wrote (0 without
/// AVX2).
pub(super) fn transpose_runs(runs: &[&[f32]; 8], out: &mut [f32], stride: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        let n = runs[0].len() / 8 * 8;
        assert!(runs.iter().all(|r| r.len() >= n) && (n == 0 || (n - 1) * stride + 8 <= out.len()));
        for i in (0..n).step_by(8) {
            // SAFETY: AVX2 is present (checked); every run holds pixels i..i + 8 and `out` rows
            // i..i + 8 hold 8 values at stride `stride` (asserted above).
            unsafe {
                transpose_8x8_avx2(
                    std::array::from_fn(|j| runs[j][i..].as_ptr()),
                    out[i * stride..].as_mut_ptr(),
                    stride,
                )
            };
        }
        return n;
    }
    let _ = (runs, out, stride);
    0
}

/// Eight runs of eight values (`rows[j][0..8]`) written transposed: `out[i * stride + j]`.
///
/// # Safety
/// AVX2 must be available; each `rows[j]` readable for 8 values, `out` writable at rows `0..8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn transpose_8x8_avx2(rows: [*const f32; 8], out: *mut f32, stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: per the contract.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(rows[j]));
        // Pairs of rows interleaved, then quads: u0 holds pixels 0 and 4 of channels 0..4, ...
        let (t0, t1) = (_mm256_unpacklo_ps(r[0], r[1]), _mm256_unpackhi_ps(r[0], r[1]));
        let (t2, t3) = (_mm256_unpacklo_ps(r[2], r[3]), _mm256_unpackhi_ps(r[2], r[3]));
        let (t4, t5) = (_mm256_unpacklo_ps(r[4], r[5]), _mm256_unpackhi_ps(r[4], r[5]));
        let (t6, t7) = (_mm256_unpacklo_ps(r[6], r[7]), _mm256_unpackhi_ps(r[6], r[7]));
        let u = [
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xEE>(t0, t2),
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xEE>(t1, t3),
        ];
        let v = [
            _mm256_shuffle_ps::<0x44>(t4, t6),
            _mm256_shuffle_ps::<0xEE>(t4, t6),
            _mm256_shuffle_ps::<0x44>(t5, t7),
            _mm256_shuffle_ps::<0xEE>(t5, t7),
        ];
        for i in 0..4 {
            _mm256_storeu_ps(out.add(i * stride), _mm256_permute2f128_ps::<0x20>(u[i], v[i]));
            _mm256_storeu_ps(out.add((i + 4) * stride), _mm256_permute2f128_ps::<0x31>(u[i], v[i]));
        }
    }
}

/// A stride-1 convolution's input (one group of one batch item, `[cin_g, h, w]`) copied into a
/// zero border of the convolution's padding, with the slack `matmul_offsets` reads past it;
/// the im2col row offsets `ci*plane + ky*dy*pitch + kx*dx`; and the padded width (`pitch`).
/// One copy of the input replaces the `kh*kw` times larger im2col matrix.
fn padded_input<'a>(
    plane: impl Fn(usize) -> &'a [f32] + Sync,
    dims: [usize; 3],
    c: &Conv2d,
    input: Option<InputAffine>,
) -> (Vec<f32>, Vec<usize>, usize) {
    padded_planes(plane, dims, c.kernel(), c.padding, c.dilation, input)
}

/// [`padded_input`] with the geometry spelled out (the training backward pass runs the
/// transposed convolution through it, with the kernel flipped and its own padding).
pub(crate) fn padded_source(
    x: &[f32],
    [cin_g, h, w]: [usize; 3],
    kernel: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> (Vec<f32>, Vec<usize>, usize) {
    padded_planes(|ci| &x[ci * h * w..(ci + 1) * h * w], [cin_g, h, w], kernel, padding, dilation, None)
}

fn padded_planes<'a>(
    plane: impl Fn(usize) -> &'a [f32] + Sync,
    [cin_g, h, w]: [usize; 3],
    [kh, kw]: [usize; 2],
    [py, px]: [usize; 2],
    [dy, dx]: [usize; 2],
    input: Option<InputAffine>,
) -> (Vec<f32>, Vec<usize>, usize) {
    let (hp, wp) = (h + 2 * py, w + 2 * px);
    let padded = zero_padded(plane, [cin_g, h, w], [py, px], input);
    (padded, tap_offsets(cin_g, [kh, kw], [dy, dx], hp * wp, wp), wp)
}

/// The `cin_g` planes `src_plane(ci)` (`h x w` each, through `input` when given) copied into a zero
/// border of `py` rows and `px` columns on each side, plus the slack `matmul_offsets` reads past
/// the last plane.
/// Parallel over planes when there are threads and enough values to share (from a caller
/// outside the pool, even one thread costs a hand-off per call).
fn zero_padded<'a>(
    src_plane: impl Fn(usize) -> &'a [f32] + Sync,
    [cin_g, h, w]: [usize; 3],
    [py, px]: [usize; 2],
    input: Option<InputAffine>,
) -> Vec<f32> {
    let plane = (h + 2 * py) * (w + 2 * px);
    let mut padded = super::buffer::overwritten(cin_g * plane + offsets_slack());
    padded[cin_g * plane..].fill(0.0);
    fill_zero_padded(&mut padded[..cin_g * plane], src_plane, [cin_g, h, w], [py, px], input);
    padded
}

/// [`zero_padded`] into `body` (exactly `cin_g` padded planes), without the slack.
fn fill_zero_padded<'a>(
    body: &mut [f32],
    src_plane: impl Fn(usize) -> &'a [f32] + Sync,
    [cin_g, h, w]: [usize; 3],
    [py, px]: [usize; 2],
    input: Option<InputAffine>,
) {
    let wp = w + 2 * px;
    let plane = (h + 2 * py) * wp;
    assert_eq!(body.len(), cin_g * plane, "fill_zero_padded: wrong size");
    let fill = |ci: usize, dst: &mut [f32]| {
        // The zero border: py rows above and below, px columns either side of each row.
        dst[..py * wp].fill(0.0);
        dst[(py + h) * wp..].fill(0.0);
        for row in dst[py * wp..(py + h) * wp].chunks_exact_mut(wp) {
            row[..px].fill(0.0);
            row[px + w..].fill(0.0);
        }
        let (src, affine) = (src_plane(ci), input.map(|a| (a.scale[ci], a.shift[ci], a.act)));
        for (y, s) in src.chunks_exact(w).enumerate() {
            let d = &mut dst[(y + py) * wp + px..][..w];
            match affine {
                None => d.copy_from_slice(s),
                Some((m, b, act)) => super::elementwise::affine(d, s, m, b, act),
            }
        }
    };
    if rayon::current_num_threads() > 1 && cin_g >= 2 * planes_per_task(plane) {
        parallel::for_each_chunk_mut(body, plane, planes_per_task(plane), fill);
    } else {
        body.chunks_mut(plane).enumerate().for_each(|(ci, d)| fill(ci, d));
    }
}

/// The `cin_g` planes `src_plane(ci)` (`h x w` each, through `input` when given) copied
/// pixel-major into a zero border of `py` rows and `px` columns on each side: value
/// `(ci, y, x)` at `((y + py) * (w + 2 px) + x + px) * cin_g + ci`. Whole groups of eight
/// channels and pixels go through vector transposes ([`transpose_runs`]); parallel over rows
/// when there are threads and enough values to share.
fn zero_padded_pixel_major<'a>(
    src_plane: impl Fn(usize) -> &'a [f32] + Sync,
    [cin_g, h, w]: [usize; 3],
    [py, px]: [usize; 2],
    input: Option<InputAffine>,
) -> Vec<f32> {
    zero_padded_pixel_major_to(src_plane, [cin_g, h, w], [py, px], [h + 2 * py, w + 2 * px], input)
}

/// [`zero_padded_pixel_major`] into a padded map of `hp x wp` pixels (at least `py + h` by
/// `px + w`): the zero border below and to the right is whatever remains (the Winograd path
/// rounds the map up to whole 2x2 tiles).
pub(super) fn zero_padded_pixel_major_to<'a>(
    src_plane: impl Fn(usize) -> &'a [f32] + Sync,
    [cin_g, h, w]: [usize; 3],
    [py, px]: [usize; 2],
    [hp, wp]: [usize; 2],
    input: Option<InputAffine>,
) -> Vec<f32> {
    let mut padded = super::buffer::overwritten(hp * wp * cin_g);
    fill_zero_padded_pixel_major(&mut padded, src_plane, [cin_g, h, w], [py, px], [hp, wp], input);
    padded
}

/// [`zero_padded_pixel_major_to`] into `padded` (exactly `hp * wp * cin_g` values).
pub(super) fn fill_zero_padded_pixel_major<'a>(
    padded: &mut [f32],
    src_plane: impl Fn(usize) -> &'a [f32] + Sync,
    [cin_g, h, w]: [usize; 3],
    [py, px]: [usize; 2],
    [hp, wp]: [usize; 2],
    input: Option<InputAffine>,
) {
    assert!(hp >= py + h && wp >= px + w, "zero_padded_pixel_major_to: the map does not fit");
    let row = wp * cin_g;
    assert_eq!(padded.len(), hp * row, "fill_zero_padded_pixel_major: wrong size");
    padded[..py * row].fill(0.0);
    padded[(py + h) * row..].fill(0.0);
    let planes: Vec<&[f32]> = (0..cin_g).map(&src_plane).collect();
    let fill = |y: usize, dst: &mut [f32]| {
        // dst: padded row y + py, zero for px pixels either side; its interior starts at pixel px.
        dst[..px * cin_g].fill(0.0);
        dst[(px + w) * cin_g..].fill(0.0);
        let interior = &mut dst[px * cin_g..(px + w) * cin_g];
        interleave_planes(|ci| &planes[ci][y * w..(y + 1) * w], cin_g, interior);
        apply_to_pixels(input, interior, cin_g);
    };
    let body = &mut padded[py * row..(py + h) * row];
    if cin_g > 0 && w > 0 {
        let rows_per_task = planes_per_task(row);
        if rayon::current_num_threads() > 1 && h >= 2 * rows_per_task {
            parallel::for_each_chunk_mut(body, row, rows_per_task, fill);
        } else {
            body.chunks_mut(row).enumerate().for_each(|(y, d)| fill(y, d));
        }
    }
}

/// The im2col row offsets `ci*plane + ky*dy*pitch + kx*dx`, row `(ci*kh + ky)*kw + kx`, of a
/// source with planes `plane` values apart and rows `pitch` apart.
fn tap_offsets(cin_g: usize, [kh, kw]: [usize; 2], [dy, dx]: [usize; 2], plane: usize, pitch: usize) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(cin_g * kh * kw);
    for ci in 0..cin_g {
        for ky in 0..kh {
            for kx in 0..kw {
                offsets.push(ci * plane + ky * dy * pitch + kx * dx);
            }
        }
    }
    offsets
}

/// The im2col matrix of one group of one batch item (`[cin_g, h, w]`), packed panel by panel
/// straight from the input: row `(ci*kh + ky)*kw + kx`, column `oy*ow + ox` holds
/// `x[ci, oy*sy + ky*dy - py, ox*sx + kx*dx - px]`, or 0 in the padding. The matrix (up to
/// `kh*kw` times the input) is never written out whole.
struct ConvPanels<'a> {
    x: &'a [f32],
    cin_g: usize,
    h: usize,
    w: usize,
    ow: usize,
    ohw: usize,
    kh: usize,
    sy: usize,
    sx: usize,
    py: usize,
    dy: usize,
    /// Per kx: valid output columns `[x0, x1)` and the input column offset `kx*dx - px`.
    taps: Vec<(usize, usize, isize)>,
}

impl<'a> ConvPanels<'a> {
    fn new(x: &'a [f32], [cin_g, h, w]: [usize; 3], c: &Conv2d, [oh, ow]: [usize; 2]) -> Self {
        let [kh, kw] = c.kernel();
        let taps = (0..kw)
            .map(|kx| {
                let (x0, x1) = valid_range(w, ow, c.stride[1], kx * c.dilation[1], c.padding[1]);
                (x0, x1, (kx * c.dilation[1]) as isize - c.padding[1] as isize)
            })
            .collect();
        ConvPanels {
            x,
            cin_g,
            h,
            w,
            ow,
            ohw: oh * ow,
            kh,
            sy: c.stride[0],
            sx: c.stride[1],
            py: c.padding[0],
            dy: c.dilation[0],
            taps,
        }
    }
}

impl Panels for ConvPanels<'_> {
    fn depth(&self) -> usize {
        self.cin_g * self.kh * self.taps.len()
    }

    fn width(&self) -> usize {
        self.ohw
    }

    fn pack(&self, c0: usize, c1: usize, nr: usize, panel: &mut [f32]) {
        let (h, w, ow, kw) = (self.h, self.w, self.ow, self.taps.len());
        if c1 - c0 < nr {
            panel.chunks_exact_mut(nr).for_each(|row| row[c1 - c0..].fill(0.0));
        }
        // One segment per output row the panel's columns cross.
        let mut p = c0;
        while p < c1 {
            let (oy, ox0) = (p / ow, p % ow);
            let ox1 = ow.min(ox0 + (c1 - p));
            let j0 = p - c0;
            let len = ox1 - ox0;
            for ci in 0..self.cin_g {
                for ky in 0..self.kh {
                    let row0 = (ci * self.kh + ky) * kw;
                    let iy = oy * self.sy + ky * self.dy;
                    if iy < self.py || iy - self.py >= h {
                        for kx in 0..kw {
                            panel[(row0 + kx) * nr + j0..][..len].fill(0.0);
                        }
                        continue;
                    }
                    let src = &self.x[(ci * h + iy - self.py) * w..][..w];
                    for (kx, &(x0, x1, off)) in self.taps.iter().enumerate() {
                        let d = &mut panel[(row0 + kx) * nr + j0..][..len];
                        let (a, b) = (x0.clamp(ox0, ox1), x1.clamp(ox0, ox1));
                        // (Guarded: most runs have no border, and an empty fill is still a call.)
                        if a > ox0 {
                            d[..a - ox0].fill(0.0);
                        }
                        if b.max(a) < ox1 {
                            d[b.max(a) - ox0..].fill(0.0);
                        }
                        if a < b {
                            // ix = ox * sx + off lies in [0, w) for ox in [a, b) (valid_range).
                            let s0 = (a as isize * self.sx as isize + off) as usize;
                            let d = &mut d[a - ox0..b - ox0];
                            if self.sx == 1 {
                                d.copy_from_slice(&src[s0..s0 + (b - a)]);
                            } else {
                                d.iter_mut().zip(src[s0..].iter().step_by(self.sx)).for_each(|(d, s)| *d = *s);
                            }
                        }
                    }
                }
            }
            p += len;
        }
    }
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
    parallel::for_each_chunk_mut(buf, block_len, planes_per_task(block_len), |r, block| {
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
    parallel::for_each_chunk_mut(y, oh * ow, planes_per_task(oh * ow * kh * kw / 4), |p, d| {
        let s = &x.data[p * h * w..(p + 1) * h * w];
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Epilogue as ConvEpilogue;

    /// Channel planes to pixel-major rows against the definition, exactly: channel counts with
    /// and without whole groups of 16 and 8, runs with and without whole groups of 16 pixels
    /// (the AVX-512 transposes, their 8-wide tails, the scalar rest).
    #[test]
    fn interleave_planes_matches_definition() {
        for k in [1, 8, 13, 16, 40, 64] {
            for n in [1, 5, 16, 37, 64] {
                let planes: Vec<Vec<f32>> =
                    (0..k).map(|c| (0..n + 3).map(|i| (c * 1000 + i) as f32).collect()).collect();
                let mut out = vec![f32::NAN; n * k];
                interleave_planes(|c| &planes[c][2..2 + n], k, &mut out);
                for i in 0..n {
                    for c in 0..k {
                        assert_eq!(out[i * k + c], planes[c][2 + i], "k {k} n {n} pixel {i} channel {c}");
                    }
                }
            }
        }
    }

    /// The vectorised input affine against the definition, value by value (the same bits: one
    /// multiply and one add per value on every path), for each activation, channel counts that
    /// are not multiples of any vector width, and NaN passing through.
    #[test]
    fn apply_to_pixels_matches_definition() {
        for k in [1, 13, 32, 40] {
            let scale: Vec<f32> = (0..k).map(|c| 0.5 - 0.11 * c as f32).collect();
            let shift: Vec<f32> = (0..k).map(|c| 0.3 * c as f32 - 1.0).collect();
            for act in [Act::None, Act::Relu, Act::Sigmoid] {
                let mut x: Vec<f32> = (0..7 * k).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
                x[3] = f32::NAN;
                let want: Vec<f32> =
                    x.iter().enumerate().map(|(i, &v)| act.apply(scale[i % k] * v + shift[i % k])).collect();
                apply_to_pixels(Some(InputAffine { scale: &scale, shift: &shift, act }), &mut x, k);
                for (i, (a, b)) in x.iter().zip(&want).enumerate() {
                    let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
                    // The sigmoid: within 2e-7 relative of `Act::apply`'s (its own unit test).
                    let close = act == Act::Sigmoid && (a - b).abs() <= 2e-7 * b.abs().max(1e-30);
                    assert!(same || close, "k {k} {act:?} value {i}: {a} against {b}");
                }
            }
        }
    }
    use crate::rng::Rng;

    /// The pixel-major gather against plain indexing: unit stride (vector transposes for whole
    /// groups of eight channels and pixels, plain copies for the rest) and stride 2, channel
    /// and pixel counts that are not multiples of 8, with and without an input affine.
    #[test]
    fn gather_pixels_matches_indexing() {
        let mut rng = Rng::new(23);
        for &(k, h, w, s, q0, n) in &[
            (8, 4, 4, 1, 0, 16),
            (19, 5, 7, 1, 3, 29),
            (24, 9, 9, 1, 8, 40),
            (13, 9, 11, 2, 2, 20),
            (3, 2, 2, 1, 0, 4),
        ] {
            let x = rng.vec(k * h * w, -1.0, 1.0);
            let (oh, ow) = ((h - 1) / s + 1, (w - 1) / s + 1);
            let n = n.min(oh * ow - q0);
            let (scale, shift) = (rng.vec(k, -2.0, 2.0), rng.vec(k, -1.0, 1.0));
            for affine in [None, Some(InputAffine { scale: &scale, shift: &shift, act: Act::Relu })] {
                let mut out = vec![f32::NAN; n * k];
                gather_pixels(|ci| &x[ci * h * w..(ci + 1) * h * w], k, [s, s], [w, ow], affine, q0, &mut out);
                for i in 0..n {
                    let (oy, ox) = ((q0 + i) / ow, (q0 + i) % ow);
                    for ci in 0..k {
                        let v = x[ci * h * w + oy * s * w + ox * s];
                        let want = match affine {
                            None => v,
                            Some(a) => (a.scale[ci] * v + a.shift[ci]).max(0.0),
                        };
                        assert_eq!(out[i * k + ci], want, "k {k} {h}x{w} stride {s}: pixel {}, channel {ci}", q0 + i);
                    }
                }
            }
        }
    }

    /// Both strategies (the indirect one with the panels of every kernel this CPU runs, whatever
    /// `ConvStrategy::detect` picks here) against the reference convolution, on strides,
    /// paddings, dilations, groups and sizes that are not multiples of any tile, with a bias,
    /// an activation and a residual in the epilogue. Tolerance 1e-4 relative to the largest
    /// output (f32 sums of at most 300 products).
    #[test]
    fn both_strategies_match_the_reference() {
        let mut rng = Rng::new(21);
        // (cin, cout, groups, kernel, stride, padding, dilation, h, w)
        let cases = [
            (3, 5, 1, [3, 3], [1, 1], [1, 1], [1, 1], 7, 9),
            (3, 17, 1, [7, 7], [2, 2], [3, 3], [1, 1], 13, 11),
            (8, 33, 1, [1, 1], [1, 1], [0, 0], [1, 1], 5, 6),
            (8, 12, 1, [1, 1], [2, 2], [0, 0], [1, 1], 9, 7),
            (6, 10, 2, [3, 3], [1, 1], [2, 2], [2, 2], 8, 5),
            (16, 7, 1, [3, 3], [2, 2], [1, 1], [1, 1], 10, 10),
            (4, 9, 1, [3, 1], [1, 2], [1, 0], [1, 1], 6, 9),
            (2, 3, 1, [2, 2], [1, 1], [0, 0], [1, 1], 1 + 1, 2),
            // Pixel-major padded copies (at least 64 input channels per group): channel and
            // pixel counts that are not multiples of 8, groups, stride and dilation.
            (134, 20, 2, [3, 3], [1, 1], [1, 1], [1, 1], 9, 11),
            (64, 17, 1, [3, 3], [2, 1], [2, 2], [2, 2], 12, 10),
        ];
        for (i, &(cin, cout, groups, kernel, stride, padding, dilation, h, w)) in cases.iter().enumerate() {
            let cin_g = cin / groups;
            let std = (2.0 / (cin_g * kernel[0] * kernel[1]) as f32).sqrt();
            let c = Conv2d {
                weight: Tensor {
                    shape: vec![cout, cin_g, kernel[0], kernel[1]],
                    data: (0..cout * cin_g * kernel[0] * kernel[1]).map(|_| rng.normal() * std).collect(),
                },
                bias: Some(Tensor { shape: vec![cout], data: rng.vec(cout, -0.5, 0.5) }),
                stride,
                padding,
                dilation,
                groups,
                epilogue: ConvEpilogue { act: Act::Relu, residual: Some(Residual::Add), post_act: Act::None },
            };
            let n = 2;
            let x = Tensor { shape: vec![n, cin, h, w], data: rng.vec(n * cin * h * w, -1.0, 1.0) };
            let [oh, ow] = c.out_hw(h, w).expect("the kernel fits");
            let out = [n, cout, oh, ow];
            let r = Tensor { shape: out.to_vec(), data: rng.vec(out.iter().product(), -1.0, 1.0) };
            // Also with an input affine (scale, shift, ReLU per input channel) where the
            // convolution copies its input into a padding: against the reference convolution of
            // the affine's output.
            let (a_scale, a_shift) = (rng.vec(cin, 0.5, 1.5), rng.vec(cin, -0.5, 0.5));
            let affine = InputAffine { scale: &a_scale, shift: &a_shift, act: Act::Relu };
            let x_affine = Tensor {
                shape: x.shape.clone(),
                data: x
                    .data
                    .iter()
                    .enumerate()
                    .map(|(e, &v)| (a_scale[e / (h * w) % cin] * v + a_shift[e / (h * w) % cin]).max(0.0))
                    .collect(),
            };
            // And, where it pads, with the input in two parts (channels 0..1 and 1..cin, as a
            // concatenation the run never wrote out).
            let pads = padding != [0, 0];
            let channels = |lo: usize, hi: usize| Tensor {
                shape: vec![n, hi - lo, h, w],
                data: (0..n).flat_map(|b| x.data[(b * cin + lo) * h * w..(b * cin + hi) * h * w].to_vec()).collect(),
            };
            let (head, tail) = (channels(0, 1), channels(1, cin));
            let (whole, split) = ([&x], [&head, &tail]);
            let cases: [(Option<InputAffine>, &Tensor, &[&Tensor]); 4] = [
                (None, &x, &whole),
                (Some(affine), &x_affine, &whole),
                (None, &x, &split),
                (Some(affine), &x_affine, &split),
            ];
            for (input, x_ref, parts) in cases {
                if (input.is_some() || parts.len() > 1) && !pads {
                    continue;
                }
                let planes = Planes::new(parts);
                let want = super::super::reference::conv2d(x_ref, Some(&r), &c, out);
                let scale = want.data.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                let check = |what: &str, got: &[f32]| {
                    for (j, (g, w)) in got.iter().zip(&want.data).enumerate() {
                        assert!((g - w).abs() / scale < 1e-4, "case {i} {what}: element {j}: {g} vs {w}");
                    }
                };
                let with = format!(
                    "{}{}",
                    if input.is_some() { " with an input affine" } else { "" },
                    if parts.len() > 1 { " in parts" } else { "" }
                );
                let ep = EpilogueRef::new(&c, Some(&r));
                for kern in Kernel::supported() {
                    let packed = pack_weights_for(&c, kern);
                    let mut y = vec![f32::NAN; want.data.len()];
                    indirect_conv(&planes, &c, out, &ep, &mut y, Some(&packed), input);
                    check(&format!("indirect {kern:?}{with}"), &y);
                }
                if (input.is_none() && parts.len() == 1) || stride == [1, 1] {
                    let mut y = vec![f32::NAN; want.data.len()];
                    gemm_conv(&planes, &c, out, &ep, &mut y, input);
                    check(&format!("gemm{with}"), &y);
                }
            }
        }
    }
}
