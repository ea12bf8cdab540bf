//! Backward step of the convolution (`super::backward` has every other operator's).
//!
//! dW = dY * im2col(X)^T and dX = col2im(W^T * dY) through `cpu::gemm`, except where something
//! cheaper exists: stride-1 input gradients are a convolution of dY with the flipped kernel
//! (through the Winograd path where it applies, as one product over the batch on small maps),
//! narrow stride-1 layers take their weight gradient straight from the padded input
//! (`cpu::weight_grad`), 3x3 ones from 32 channels in the Winograd domain
//! (`cpu::winograd_grad`), strided ones split into their stride-1 phases (`super::strided`);
//! depthwise convolutions use direct loops. Batch items run in parallel where the per-item
//! products are too small to split.

use crate::cpu::parallel;

use crate::cpu::conv::{im2col, padded_source, ConvStrategy};
use crate::cpu::gemm::{matmul, matmul_offsets, Kernel, Mat, MatMut, Parallelism};
use crate::cpu::indirect::{conv_indirect, kernel_for, PackedWeights, TileEpilogue};
use crate::cpu::ops::{planes_per_task, valid_range, Planes};
use crate::cpu::reduce::centered_sums;
use crate::cpu::weight_grad::{self, DwGeometry};
use crate::graph::{Conv2d, Epilogue};
use crate::tensor::Tensor;

fn dims(t: &Tensor) -> [usize; 4] {
    [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]
}

fn like(t: &Tensor, data: Vec<f32>) -> Tensor {
    Tensor { shape: t.shape.clone(), data }
}

/// Gradients of a convolution.
pub struct ConvGrads {
    /// `dL/dx` (None when not requested).
    pub dx: Option<Tensor>,
    /// `dL/dweight`, shape of the weight.
    pub dw: Tensor,
    /// `dL/dbias` when the convolution has a bias.
    pub db: Option<Tensor>,
}

/// Backward of a convolution without epilogue. `x` is the forward input, `dy` the gradient of
/// the output.
pub fn conv2d_backward(x: &Tensor, dy: &Tensor, c: &Conv2d, need_dx: bool) -> ConvGrads {
    let db = c.bias.as_ref().map(|b| {
        let [n, cout, oh, ow] = dims(dy);
        let ohw = oh * ow;
        let data: Vec<f32> = parallel::map_tasks(cout, |o| {
            let kernel = Kernel::detect();
            let mut s = 0.0f64;
            for b in 0..n {
                let p = &dy.data[(b * cout + o) * ohw..(b * cout + o + 1) * ohw];
                // (The kernel's second sum, of squares here, costs nothing in a pass bound by
                // memory.)
                s += centered_sums(p, 0.0, p, 0.0, kernel).0;
            }
            s as f32
        });
        Tensor { shape: b.shape.clone(), data }
    });
    let (dx, dw) = if c.cin_per_group() == 1 && c.cout() == c.groups {
        depthwise_backward(x, dy, c, need_dx)
    } else if super::strided::applies(c, [dims(dy)[2], dims(dy)[3]]) {
        let dx = need_dx.then(|| super::strided::input_gradient(dy, c, dims(x)));
        let dw = match super::strided::weight_gradient(x, dy, c) {
            Some(dw) => dw,
            None => gemm_conv_backward(x, dy, c, false, ConvStrategy::detect()).1,
        };
        (dx, dw)
    } else {
        gemm_conv_backward(x, dy, c, need_dx, ConvStrategy::detect())
    };
    ConvGrads { dx: dx.map(|d| like(x, d)), dw: Tensor { shape: c.weight.shape.clone(), data: dw }, db }
}

fn parallelism() -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

fn gemm_conv_backward(
    x: &Tensor,
    dy: &Tensor,
    c: &Conv2d,
    need_dx: bool,
    strategy: ConvStrategy,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let [n, cin, h, w] = dims(x);
    if need_dx {
        if let Some(flipped) = winograd_input_gradient(c, [h, w]) {
            let dx = crate::cpu::conv::conv2d_for_training(&Planes::new(&[dy]), None, &flipped, [n, cin, h, w]);
            let (_, dw) = gemm_conv_backward(x, dy, c, false, strategy);
            return (Some(dx.data), dw);
        }
    }
    if need_dx && folds_input_gradient(c, n, h * w) {
        let dx = folded_input_gradient(x, dy, c);
        let (_, dw) = gemm_conv_backward(x, dy, c, false, strategy);
        return (Some(dx), dw);
    }
    let cout = dims(dy)[1];
    if !need_dx && weight_grad_by_winograd_batch(c, [n, cin, h, w], cout) {
        // Few tiles and many channels: the whole batch at once, in parallel inside.
        return (None, crate::cpu::winograd_grad::batch(&x.data, &dy.data, [n, cin, h, w], cout));
    }
    let k = (cin / c.groups) * c.kernel()[0] * c.kernel()[1];
    // Stride-1 input gradients (a convolution of dY) and 1x1 ones (a product) store every
    // value; only col2im accumulates into zeros. Zeroing a batch's dX serially cost the second
    // thread its wait (see `cpu::buffer`).
    let direct = c.kernel() == [1, 1] && c.stride == [1, 1] && c.padding == [0, 0];
    let mut dx = match (need_dx, direct || transposed_padding(c).is_some()) {
        (false, _) => Vec::new(),
        (true, true) => crate::cpu::buffer::overwritten(x.data.len()),
        (true, false) => vec![0.0f32; x.data.len()],
    };
    let threads = rayon::current_num_threads();
    let per_item = |b0: usize, dxs: &mut [f32], par: Parallelism| -> Vec<f32> {
        // Gradients of batch items b0.. (as many as `dxs` holds, or all remaining when dx is
        // not needed), into a private dW.
        let items = if need_dx { dxs.len() / (cin * h * w) } else { n - b0 };
        let mut dw = vec![0.0f32; cout * k];
        dw_from_padded_items(x, dy, c, b0..b0 + items, &mut dw);
        dw_winograd_items(x, dy, c, b0..b0 + items, &mut dw);
        let mut ws = Workspace::default();
        dw_by_product_items(x, dy, c, b0..b0 + items, &mut dw, &mut ws, par);
        if need_dx {
            for (b, dxb) in dxs.chunks_exact_mut(cin * h * w).enumerate() {
                item_backward(x, dy, c, b0 + b, dxb, &mut ws, par, strategy);
            }
        }
        dw
    };
    let dw = if threads > 1 && n > 1 {
        // Batch items in parallel, one single-threaded GEMM stream per chunk (better than
        // splitting the small per-item GEMMs), partial dW reduced at the end.
        let chunk = n.div_ceil(threads);
        let parts: Vec<Vec<f32>> = if need_dx {
            parallel::map_chunks_mut(&mut dx, chunk * cin * h * w, 1, |i, d| per_item(i * chunk, d, Parallelism::None))
        } else {
            parallel::map_tasks(n.div_ceil(chunk), |i| {
                let mut dw = vec![0.0f32; cout * k];
                let items = i * chunk..((i + 1) * chunk).min(n);
                dw_from_padded_items(x, dy, c, items.clone(), &mut dw);
                dw_winograd_items(x, dy, c, items.clone(), &mut dw);
                dw_by_product_items(x, dy, c, items, &mut dw, &mut Workspace::default(), Parallelism::None);
                dw
            })
        };
        let mut it = parts.into_iter();
        let mut dw = it.next().unwrap_or_else(|| vec![0.0; cout * k]);
        for p in it {
            dw.iter_mut().zip(&p).for_each(|(d, s)| *d += s);
        }
        dw
    } else {
        per_item(0, &mut dx, parallelism())
    };
    (need_dx.then_some(dx), rows_from_columns(&dw, cout / c.groups, k))
}

/// The convolution whose forward pass is `c`'s input gradient, when that forward pass takes the
/// Winograd path (`cpu::winograd`): a 3x3 "same" convolution's input gradient is the 3x3 "same"
/// convolution of dY with the flipped, transposed weights (`[cin, cout, 3, 3]`), so it gets the
/// same 2.25x fewer multiplications as the forward pass, and the forward pass's split of the
/// batch over threads.
fn winograd_input_gradient(c: &Conv2d, [h, w]: [usize; 2]) -> Option<Conv2d> {
    // The flipped convolution has the same map size and the channel counts swapped.
    if !crate::cpu::winograd::takes(c, Some([h, w])) {
        return None;
    }
    let [kh, kw] = c.kernel();
    Some(Conv2d {
        weight: Tensor { shape: vec![c.cin_per_group(), c.cout(), kh, kw], data: flipped_weights(c, c.cout()) },
        bias: None,
        stride: [1, 1],
        padding: transposed_padding(c)?,
        dilation: c.dilation,
        groups: 1,
        epilogue: Epilogue::default(),
    })
}

/// Input maps up to which a stride-1 input gradient runs as one product over the whole
/// batch ([`folded_input_gradient`]) instead of one per item: as in the forward pass
/// (`cpu::conv`'s fold), a product per item streams all of the layer's weights for a few pixel
/// tiles (9.4 MB per item of 16 pixels on ResNet-18's 512-channel 4x4 layers).
const FOLD_MAX_PIXELS: usize = 256;

/// Whether [`gemm_conv_backward`] computes `c`'s input gradient with [`folded_input_gradient`]
/// (whatever the strategy: with the AVX-512 kernel the per-item path runs matrix products,
/// which stream the weights per item just the same).
fn folds_input_gradient(c: &Conv2d, n: usize, hw: usize) -> bool {
    n > 1 && c.groups == 1 && hw <= FOLD_MAX_PIXELS && transposed_padding(c).is_some()
}

/// The stride-1 input gradient of a whole batch (one group) as one indirect convolution of
/// the padded dY with the flipped weights: every item's pixels in one product, `[cin, n * hw]`,
/// then each `(item, channel)` row copied to its place.
fn folded_input_gradient(x: &Tensor, dy: &Tensor, c: &Conv2d) -> Vec<f32> {
    let [n, cin, h, w] = dims(x);
    let [_, cout, oh, ow] = dims(dy);
    let hw = h * w;
    let [kh, kw] = c.kernel();
    let kk = cout * kh * kw;
    let pad = transposed_padding(c).expect("checked by folds_input_gradient");
    let packed = packed_flipped_weights(c);
    // Every item's dY planes padded one after the other; item b's taps start b * cout planes in.
    let (padded, offsets, pitch) = padded_source(&dy.data, [n * cout, oh, ow], [kh, kw], pad, c.dilation);
    let item = cout * (oh + 2 * pad[0]) * pitch;
    let pix: Vec<usize> = (0..n * hw).map(|q| (q / hw) * item + (q % hw / w) * pitch + q % w).collect();
    let mut folded = crate::cpu::buffer::overwritten(cin * n * hw);
    conv_indirect(
        &mut folded,
        n * hw,
        &packed,
        0,
        &padded,
        &pix,
        &offsets[..kk],
        parallelism(),
        TileEpilogue::NONE,
        None,
    );
    let mut dx = crate::cpu::buffer::overwritten(n * cin * hw);
    parallel::for_each_chunk_mut(&mut dx, hw, planes_per_task(hw), |bc, run| {
        let (b, ci) = (bc / cin, bc % cin);
        run.copy_from_slice(&folded[(ci * n + b) * hw..][..hw]);
    });
    dx
}

/// [`flipped_weights`] (one group) packed for the indirect kernel, straight from the weights:
/// for each output channel, the panel's input channels' kernels are one contiguous run of the
/// weights, so the flip and the packing are one pass in cache (flipping first, then packing,
/// read the weights one value per cache line).
fn packed_flipped_weights(c: &Conv2d) -> PackedWeights {
    let [kh, kw] = c.kernel();
    let (cout, cin, taps) = (c.cout(), c.cin_per_group(), kh * kw);
    let kernel = kernel_for(Kernel::detect(), cin);
    let nr = kernel.shape().1;
    PackedWeights::from_panels(kernel, 1, cin, cout * taps, |_, ci0, panel| {
        let cols = nr.min(cin - ci0);
        for co in 0..cout {
            let run = &c.weight.data[(co * cin + ci0) * taps..][..cols * taps];
            let rows = &mut panel[co * taps * nr..][..taps * nr];
            for (j, kernel) in run.chunks_exact(taps).enumerate() {
                for (t, &v) in kernel.iter().rev().enumerate() {
                    rows[t * nr + j] = v;
                }
            }
            if cols < nr {
                rows.chunks_exact_mut(nr).for_each(|r| r[cols..].fill(0.0));
            }
        }
    })
}

/// The weight gradient from the layout the GEMMs accumulate it in (per group, `cout_g x k`
/// column-major: element `(o, kk)` at `kk * cout_g + o`) to the weight's row-major layout.
///
/// A transpose, done [`TRANSPOSE_ROWS`] output rows at a time: each step reads one short
/// contiguous run of a source row and appends one value to each of those output rows. Row by
/// row, each value read from a different source row (`cout_g * 4` bytes apart: 2 KiB for
/// ResNet-18's 512-channel layers) missed the cache: 23% of the samples of a `perf` run of
/// `examples/conv_grad_profile` on a 512-channel 4x4 layer (session 26).
pub(super) fn rows_from_columns(dwt: &[f32], cout_g: usize, k: usize) -> Vec<f32> {
    let mut dw = vec![0.0f32; dwt.len()];
    let (group, block) = ((cout_g * k).max(1), (TRANSPOSE_ROWS * k).max(1));
    parallel::for_each_chunk_mut(&mut dw, group, planes_per_task(group), |gi, dg| {
        let src = &dwt[gi * group..][..dg.len()];
        parallel::for_each_chunk_mut(dg, block, planes_per_task(block), |i, d| {
            let (o0, rows) = (i * TRANSPOSE_ROWS, d.len() / k);
            for kk in 0..k {
                for (r, &v) in src[kk * cout_g + o0..][..rows].iter().enumerate() {
                    d[r * k + kk] = v;
                }
            }
        });
    });
    dw
}

/// Output rows [`rows_from_columns`] fills together: 16 values, one cache line, per source run.
const TRANSPOSE_ROWS: usize = 16;

#[derive(Default)]
struct Workspace {
    col: Vec<f32>,
    dcol: Vec<f32>,
    /// Several items' im2col matrices side by side (`k x items*ohw`) and their output gradients
    /// (`cout_g x items*ohw`), for [`dw_by_product_items`].
    stacked_col: Vec<f32>,
    stacked_dy: Vec<f32>,
    /// The flipped, transposed weights of the stride-1 input gradient (see `item_backward`),
    /// built once per workspace.
    flipped: Vec<f32>,
    /// `flipped` packed for the indirect convolution (`ConvStrategy::Indirect`), once per
    /// workspace.
    flipped_packed: Option<PackedWeights>,
}

/// A stride-1 convolution's input gradient is a stride-1 convolution of dY with the kernel
/// flipped and its channels swapped, over padding `(k - 1) * dilation - padding`, when that is
/// not negative. Returns that padding.
fn transposed_padding(c: &Conv2d) -> Option<[usize; 2]> {
    let [kh, kw] = c.kernel();
    let direct = kh == 1 && kw == 1 && c.padding == [0, 0];
    let py = ((kh - 1) * c.dilation[0]).checked_sub(c.padding[0])?;
    let px = ((kw - 1) * c.dilation[1]).checked_sub(c.padding[1])?;
    (c.stride == [1, 1] && !direct).then_some([py, px])
}

/// `W'[g][ci][(co*kh + ky)*kw + kx] = W[g*cout_g + co][ci][kh-1-ky][kw-1-kx]`.
fn flipped_weights(c: &Conv2d, cout: usize) -> Vec<f32> {
    let [kh, kw] = c.kernel();
    let groups = c.groups;
    let cout_g = cout / groups;
    let cin_g = c.weight.shape[1];
    let kk = cout_g * kh * kw;
    let mut f = vec![0.0f32; groups * cin_g * kk];
    // Row by row of the result (group g, input channel ci), in parallel: a training step
    // flips every layer's weights again.
    parallel::for_each_chunk_mut(&mut f, kk.max(1), planes_per_task(kk), |row, f| {
        let (g, ci) = (row / cin_g, row % cin_g);
        for co in 0..cout_g {
            for ky in 0..kh {
                for kx in 0..kw {
                    let src = (((g * cout_g + co) * cin_g + ci) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx);
                    f[(co * kh + ky) * kw + kx] = c.weight.data[src];
                }
            }
        }
    });
    f
}

/// Output channels per group up to which a stride-1 convolution's weight gradient is computed
/// from a padded copy of the input (`cpu::weight_grad`) instead of im2col and a product.
const DW_FROM_PADDED_MAX_COUT: usize = 32;

/// Whether `c`'s weight gradient is computed from a padded copy of the input
/// ([`dw_from_padded_items`]): `WGPOSE_CPU_DW=padded` for every stride-1 convolution (but 1x1
/// ones without padding, which need no im2col), `=im2col` for none (tests and A/Bs run both),
/// else up to [`DW_FROM_PADDED_MAX_COUT`] output channels per group on rows of at least
/// `weight_grad::L` output pixels (its vector width; narrower rows run its scalar tail), unless
/// the Winograd domain takes it ([`weight_grad_by_winograd`]).
fn weight_grad_without_im2col(c: &Conv2d, cout_g: usize, [oh, ow]: [usize; 2]) -> bool {
    // 1x1 convolutions without padding need no im2col: their product reads the input directly.
    let direct = c.kernel() == [1, 1] && c.padding == [0, 0];
    c.stride == [1, 1]
        && !direct
        && forced_weight_grad().unwrap_or(narrow_weight_grad(cout_g, ow) && !weight_grad_by_winograd(c, [oh, ow]))
}

/// Whether a layer of `cout_g` output channels per group and output rows of `ow` pixels is
/// narrow enough for the weight gradient from the padded input (`cpu::weight_grad`), when its
/// stride and kernel allow it: up to [`DW_FROM_PADDED_MAX_COUT`] channels on rows of at least
/// `weight_grad::L` pixels (its vector width; narrower rows run its scalar tail).
pub(super) fn narrow_weight_grad(cout_g: usize, ow: usize) -> bool {
    cout_g <= DW_FROM_PADDED_MAX_COUT && ow >= weight_grad::L
}

/// `WGPOSE_CPU_DW`: `padded` -> Some(true), `im2col` -> Some(false) (and no Winograd either way).
fn forced_weight_grad() -> Option<bool> {
    static CHOICE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("WGPOSE_CPU_DW").as_deref() {
        Ok("padded") => Some(true),
        Ok("im2col") => Some(false),
        _ => None,
    })
}

/// Whether `c` is a convolution whose weight gradient the Winograd domain computes
/// (`cpu::winograd_grad::fits_kernel`), unless `WGPOSE_CPU_DW` forces one of the other two ways
/// or `WGPOSE_CPU_WINOGRAD=0` turns Winograd off.
fn winograd_weight_grad_kernel(c: &Conv2d) -> bool {
    forced_weight_grad().is_none()
        && crate::cpu::winograd::enabled()
        && crate::cpu::winograd_grad::fits_kernel(
            [c.cin_per_group() * c.groups, c.cout()],
            c.kernel(),
            c.stride,
            c.padding,
            c.dilation,
            c.groups,
        )
}

/// Whether `c`'s weight gradient on output maps `[oh, ow]` is computed in the Winograd domain
/// item by item (`cpu::winograd_grad::accumulate`): [`winograd_weight_grad_kernel`] on maps
/// with enough tiles per item.
fn weight_grad_by_winograd(c: &Conv2d, out_hw: [usize; 2]) -> bool {
    winograd_weight_grad_kernel(c) && crate::cpu::winograd_grad::maps_fit_items(out_hw)
}

/// Whether `c`'s weight gradient over a whole batch of inputs `[n, cin, h, w]` (`cout` output
/// channels) is one Winograd product per position (`cpu::winograd_grad::batch`):
/// [`winograd_weight_grad_kernel`] on any map size, where the batch fits
/// (`cpu::winograd_grad::batch_fits`: few tiles, many channels). Item by item, maps under 8x8
/// have too few tiles; across the batch they have enough. ResNet-18's 512-channel layers on
/// 4x4 maps (the last stage at 128x128), weight gradient alone, batch 16, two threads, medians
/// of 15 paired in one process (session 40, Zen 4): 11.4 ms by products of im2col -> 7.0 ms
/// here; 256 channels at 4x4 2.6 -> 1.8, 512 at 6x6 20.7 -> 10.4.
fn weight_grad_by_winograd_batch(c: &Conv2d, [n, cin, h, w]: [usize; 4], cout: usize) -> bool {
    winograd_weight_grad_kernel(c) && crate::cpu::winograd_grad::batch_fits([n, cin, h, w], cout)
}

/// The weight gradient of batch items `range` (accumulated, column-major) when
/// [`weight_grad_by_winograd`] holds for `c` (else nothing).
fn dw_winograd_items(x: &Tensor, dy: &Tensor, c: &Conv2d, range: std::ops::Range<usize>, dw: &mut [f32]) {
    let [_, cin, h, w] = dims(x);
    let [_, cout, oh, ow] = dims(dy);
    if range.is_empty() || !weight_grad_by_winograd(c, [oh, ow]) {
        return;
    }
    let items = range.len();
    crate::cpu::winograd_grad::accumulate(
        &x.data[range.start * cin * h * w..][..items * cin * h * w],
        &dy.data[range.start * cout * oh * ow..][..items * cout * oh * ow],
        [items, cin, h, w],
        cout,
        dw,
    );
}

/// Bytes of padded input and output gradient one pass of [`dw_from_padded_items`] may span:
/// within L2, so each tile's passes over the items read from cache.
pub(super) const DW_PASS_BYTES: usize = 256 << 10;

/// The weight gradient of batch items `range` (accumulated, per group column-major) when
/// [`weight_grad_without_im2col`] holds for `c` (else nothing: `item_backward` computes it).
/// Items go through `weight_grad` several at a time, as many as fit in [`DW_PASS_BYTES`]: on
/// small images (LDCRN's and the hourglass's 16x16 to 4x4 layers) one item per call left each
/// tile reducing its accumulators and re-padding the input for a few hundred pixels of work,
/// and ran at a quarter to half of the large layers' rate.
fn dw_from_padded_items(x: &Tensor, dy: &Tensor, c: &Conv2d, range: std::ops::Range<usize>, dw: &mut [f32]) {
    let [_, cin, h, w] = dims(x);
    let [_, cout, oh, ow] = dims(dy);
    let groups = c.groups;
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let [kh, kw] = c.kernel();
    let k = cin_g * kh * kw;
    if !weight_grad_without_im2col(c, cout_g, [oh, ow]) {
        return;
    }
    let plane = (h + 2 * c.padding[0]) * (w + 2 * c.padding[1]);
    let per_item = 4 * (cin * plane + cout * oh * ow);
    let pass = (DW_PASS_BYTES / per_item.max(1)).max(1);
    let kernel = Kernel::detect();
    let mut b0 = range.start;
    while b0 < range.end {
        let items = pass.min(range.end - b0);
        // All channels of the pass's items, padded plane after plane: item `b`'s group `g`
        // starts `b * cin + g * cin_g` planes in.
        let xs = &x.data[b0 * cin * h * w..(b0 + items) * cin * h * w];
        let (padded, offsets, pitch) = padded_source(xs, [items * cin, h, w], [kh, kw], c.padding, c.dilation);
        for g in 0..groups {
            let geo = DwGeometry {
                dy: &dy.data[(b0 * cout + g * cout_g) * oh * ow..],
                cout_g,
                oh,
                ow,
                padded: &padded[g * cin_g * plane..],
                pitch,
                offsets: &offsets[..k],
                items,
                dy_item: cout * oh * ow,
                padded_item: cin * plane,
            };
            weight_grad::accumulate(&geo, &mut dw[g * cout_g * k..(g + 1) * cout_g * k], kernel);
        }
        b0 += items;
    }
}

/// dX (written) of batch item `b` (dW: [`dw_from_padded_items`], [`dw_winograd_items`] or
/// [`dw_by_product_items`]).
#[allow(clippy::too_many_arguments)]
fn item_backward(
    x: &Tensor,
    dy: &Tensor,
    c: &Conv2d,
    b: usize,
    dxb: &mut [f32],
    ws: &mut Workspace,
    par: Parallelism,
    strategy: ConvStrategy,
) {
    let [_, cin, h, w] = dims(x);
    let [_, cout, oh, ow] = dims(dy);
    let (ohw, hw) = (oh * ow, h * w);
    let groups = c.groups;
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let [kh, kw] = c.kernel();
    let k = cin_g * kh * kw;
    let direct = kh == 1 && kw == 1 && c.stride == [1, 1] && c.padding == [0, 0];
    let transposed = transposed_padding(c);
    if !direct && transposed.is_none() {
        ws.dcol.resize(k * ohw, 0.0);
    }
    if transposed.is_some() && ws.flipped.is_empty() {
        ws.flipped = flipped_weights(c, cout);
    }
    for g in 0..groups {
        let ys = (b * cout + g * cout_g) * ohw;
        let dyg = &dy.data[ys..ys + cout_g * ohw];
        let wg = &c.weight.data[g * cout_g * k..(g + 1) * cout_g * k];
        let dxg = &mut dxb[g * cin_g * hw..(g + 1) * cin_g * hw];
        if let Some(pad) = transposed {
            // Stride 1: dX_g = (flipped W_g) conv dY_g, read in place from a padded copy of
            // dY_g, instead of a k x ohw dcol matrix and col2im.
            let kk = cout_g * kh * kw;
            let (padded, offsets, pitch) = padded_source(dyg, [cout_g, oh, ow], [kh, kw], pad, c.dilation);
            if strategy == ConvStrategy::Indirect {
                // As the forward pass runs it: pixel-major tiles, the flipped weights packed.
                let flipped = &ws.flipped;
                let packed = ws.flipped_packed.get_or_insert_with(|| {
                    PackedWeights::new(kernel_for(Kernel::detect(), cin_g), flipped, groups, cin_g, kk)
                });
                let pix: Vec<usize> = (0..hw).map(|q| (q / w) * pitch + q % w).collect();
                conv_indirect(dxg, hw, packed, g, &padded, &pix, &offsets, par, TileEpilogue::NONE, None);
                continue;
            }
            matmul_offsets(
                MatMut::rows(dxg, cin_g, hw, hw),
                Mat::rows(&ws.flipped[g * cin_g * kk..(g + 1) * cin_g * kk], cin_g, kk, kk),
                &padded,
                &offsets,
                [pitch, w],
                par,
                None,
            );
            continue;
        }
        // dcol[k, ohw] = W_g^T[k, cout_g] * dY_g[cout_g, ohw]
        let dst: &mut [f32] = if direct { dxg } else { &mut ws.dcol[..k * ohw] };
        matmul(
            MatMut::rows(dst, k, ohw, ohw),
            Mat::transposed(wg, k, cout_g, k),
            Mat::rows(dyg, cout_g, ohw, ohw),
            false,
            par,
        );
        if !direct {
            col2im(&ws.dcol[..k * ohw], [cin_g, h, w], c, [oh, ow], dxg);
        }
    }
}

/// dW_g (column-major, accumulated) through im2col and a matrix product.
#[allow(clippy::too_many_arguments)]
fn dw_by_product(
    xg: &[f32],
    dyg: &[f32],
    c: &Conv2d,
    [cin_g, cout_g, h, w]: [usize; 4],
    [oh, ow]: [usize; 2],
    direct: bool,
    dwg: &mut [f32],
    col: &mut [f32],
    par: Parallelism,
) {
    let [kh, kw] = c.kernel();
    let (k, ohw) = (cin_g * kh * kw, oh * ow);
    let colref: &[f32] = if direct {
        xg
    } else {
        im2col(xg, [cin_g, h, w], c, [0, oh], ow, &mut col[..k * ohw]);
        &col[..k * ohw]
    };
    // dW_g[cout_g, k] += dY_g[cout_g, ohw] * col[k, ohw]^T, into a column-major dW_g:
    // `matmul` computes a column-major destination as the transposed product, whose left
    // operand, the im2col matrix, it then reads in place (row-major) and whose right one,
    // the smaller dY_g, it packs (packing the im2col matrix was 15% of a batch-16
    // hourglass step with the `gemm` crate used before).
    matmul(
        MatMut { data: dwg, rows: cout_g, cols: k, row_stride: 1, col_stride: cout_g },
        Mat::rows(dyg, cout_g, ohw, ohw),
        Mat::transposed(colref, ohw, k, ohw),
        true,
        par,
    );
}

/// Depth of the weight gradient's products, in output pixels: batch items whose maps are
/// smaller go through [`dw_by_product_items`] several at a time.
const DW_PRODUCT_DEPTH: usize = 512;

/// dW (accumulated, per group column-major) of batch items `range` through matrix products,
/// unless [`weight_grad_without_im2col`] holds (then [`dw_from_padded_items`] has done it).
///
/// Why several items per product: `dW_g += dY_g * col^T` has depth `oh * ow`, 64 pixels on
/// ResNet-18's 8x8 maps and 16 on 4x4, so one item per product read and wrote the whole
/// gradient (2.4 MB for a 256-channel 3x3 layer, 9.4 MB at 512) for a few FMAs per value: the
/// destination's read-modify-write took 8% of a two-thread training step of
/// fasterpose-r18-s32 (`perf`, session 24). Items are laid side by side along the depth
/// (`col` as `k x items*ohw`, `dY_g` as `cout_g x items*ohw`) up to [`DW_PRODUCT_DEPTH`]
/// pixels, so the gradient is read and written once per group of items.
fn dw_by_product_items(
    x: &Tensor,
    dy: &Tensor,
    c: &Conv2d,
    range: std::ops::Range<usize>,
    dw: &mut [f32],
    ws: &mut Workspace,
    par: Parallelism,
) {
    let [_, cin, h, w] = dims(x);
    let [_, cout, oh, ow] = dims(dy);
    let (ohw, hw, groups) = (oh * ow, h * w, c.groups);
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let [kh, kw] = c.kernel();
    let k = cin_g * kh * kw;
    if weight_grad_without_im2col(c, cout_g, [oh, ow])
        || weight_grad_by_winograd(c, [oh, ow])
        || range.is_empty()
        || ohw == 0
    {
        return;
    }
    let direct = kh == 1 && kw == 1 && c.stride == [1, 1] && c.padding == [0, 0];
    let per_product = (DW_PRODUCT_DEPTH / ohw).clamp(1, range.len());
    let items: Vec<usize> = range.collect();
    for group in items.chunks(per_product) {
        for g in 0..groups {
            let xg = |b: usize| &x.data[(b * cin + g * cin_g) * hw..][..cin_g * hw];
            let dyg = |b: usize| &dy.data[(b * cout + g * cout_g) * ohw..][..cout_g * ohw];
            let dwg = &mut dw[g * cout_g * k..(g + 1) * cout_g * k];
            if let [b] = group {
                // One item: its matrices in place, as they are.
                if !direct {
                    ws.col.resize(k * ohw, 0.0);
                }
                dw_by_product(xg(*b), dyg(*b), c, [cin_g, cout_g, h, w], [oh, ow], direct, dwg, &mut ws.col, par);
                continue;
            }
            let depth = group.len() * ohw;
            ws.stacked_col.resize(k * depth, 0.0);
            ws.stacked_dy.resize(cout_g * depth, 0.0);
            if !direct {
                ws.col.resize(k * ohw, 0.0);
            }
            for (i, &b) in group.iter().enumerate() {
                let col: &[f32] = if direct {
                    xg(b)
                } else {
                    im2col(xg(b), [cin_g, h, w], c, [0, oh], ow, &mut ws.col[..k * ohw]);
                    &ws.col[..k * ohw]
                };
                for (row, src) in ws.stacked_col.chunks_exact_mut(depth).zip(col.chunks_exact(ohw)) {
                    row[i * ohw..(i + 1) * ohw].copy_from_slice(src);
                }
                for (row, src) in ws.stacked_dy.chunks_exact_mut(depth).zip(dyg(b).chunks_exact(ohw)) {
                    row[i * ohw..(i + 1) * ohw].copy_from_slice(src);
                }
            }
            // As in `dw_by_product`: a column-major dW_g as the transposed product.
            matmul(
                MatMut { data: dwg, rows: cout_g, cols: k, row_stride: 1, col_stride: cout_g },
                Mat::rows(&ws.stacked_dy[..cout_g * depth], cout_g, depth, depth),
                Mat::transposed(&ws.stacked_col[..k * depth], depth, k, depth),
                true,
                par,
            );
        }
    }
}

/// Adjoint of `im2col` over the whole output: accumulates `dcol` (`[cin_g*kh*kw, oh*ow]`) into
/// `dx` (`[cin_g, h, w]`), one task per input channel.
fn col2im(dcol: &[f32], [_, h, w]: [usize; 3], c: &Conv2d, [oh, ow]: [usize; 2], dx: &mut [f32]) {
    let [kh, kw] = c.kernel();
    let [sy, sx] = c.stride;
    let [py, px] = c.padding;
    let [dly, dlx] = c.dilation;
    let ohw = oh * ow;
    parallel::for_each_chunk_mut(dx, h * w, 1, |ci, plane| {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &dcol[((ci * kh + ky) * kw + kx) * ohw..][..ohw];
                let (x0, x1) = valid_range(w, ow, sx, kx * dlx, px);
                if x0 >= x1 {
                    continue;
                }
                for oy in 0..oh {
                    let iy = oy * sy + ky * dly;
                    if iy < py || iy - py >= h {
                        continue;
                    }
                    let prow = &mut plane[(iy - py) * w..(iy - py + 1) * w];
                    let drow = &row[oy * ow..(oy + 1) * ow];
                    let ix0 = x0 * sx + kx * dlx - px;
                    if sx == 1 {
                        for (d, s) in prow[ix0..ix0 + (x1 - x0)].iter_mut().zip(&drow[x0..x1]) {
                            *d += s;
                        }
                    } else {
                        for (t, s) in drow[x0..x1].iter().enumerate() {
                            prow[ix0 + t * sx] += s;
                        }
                    }
                }
            }
        }
    });
}

/// Direct depthwise backward: per `(n, c)` plane, dx and a partial dw, reduced over the batch.
fn depthwise_backward(x: &Tensor, dy: &Tensor, c: &Conv2d, need_dx: bool) -> (Option<Vec<f32>>, Vec<f32>) {
    let [n, ch, h, w] = dims(x);
    let [_, _, oh, ow] = dims(dy);
    let [kh, kw] = c.kernel();
    let [sy, sx] = c.stride;
    let [py, px] = c.padding;
    let [dly, dlx] = c.dilation;
    let kk = kh * kw;
    let mut dx = vec![0.0f32; x.data.len()];
    let mut dwp = vec![0.0f32; n * ch * kk];
    parallel::for_each_chunk_pair_mut(&mut dx, h * w, &mut dwp, kk, 1, |p, dxp, dwq| {
        let o = p % ch;
        let wk = &c.weight.data[o * kk..(o + 1) * kk];
        let xp = &x.data[p * h * w..(p + 1) * h * w];
        let dyp = &dy.data[p * oh * ow..(p + 1) * oh * ow];
        for ky in 0..kh {
            for kx in 0..kw {
                let (x0, x1) = valid_range(w, ow, sx, kx * dlx, px);
                let wv = wk[ky * kw + kx];
                let mut acc = 0.0f32;
                for oy in 0..oh {
                    let iy = oy * sy + ky * dly;
                    if iy < py || iy - py >= h {
                        continue;
                    }
                    let r = (iy - py) * w;
                    for ox in x0..x1 {
                        let ix = ox * sx + kx * dlx - px;
                        let g = dyp[oy * ow + ox];
                        acc += g * xp[r + ix];
                        dxp[r + ix] += wv * g;
                    }
                }
                dwq[ky * kw + kx] = acc;
            }
        }
    });
    let mut dw = vec![0.0f32; ch * kk];
    for (p, part) in dwp.chunks(kk).enumerate() {
        let o = p % ch;
        for (d, s) in dw[o * kk..(o + 1) * kk].iter_mut().zip(part) {
            *d += s;
        }
    }
    (need_dx.then_some(dx), dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The input and weight gradients of both convolution strategies agree (the matrix-product
    /// one is checked against f64 finite differences in `tests/autodiff.rs`, on whichever
    /// strategy that CPU picks), on stride-1 layers with padding, dilation and groups, batch 3
    /// (items split over threads). Tolerance 1e-4 relative to the largest gradient.
    #[test]
    fn both_strategies_give_the_same_gradients() {
        let mut rng = Rng::new(31);
        // (cin, cout, groups, kernel, padding, dilation, h, w)
        for &(cin, cout, groups, kernel, padding, dilation, h, w) in &[
            (5, 7, 1, [3, 3], [1, 1], [1, 1], 9, 11),
            (6, 4, 2, [3, 3], [2, 2], [2, 2], 7, 6),
            (3, 20, 1, [5, 3], [2, 1], [1, 1], 8, 5),
            (16, 8, 1, [3, 3], [0, 0], [1, 1], 10, 10),
        ] {
            let cin_g = cin / groups;
            let c = Conv2d {
                weight: Tensor {
                    shape: vec![cout, cin_g, kernel[0], kernel[1]],
                    data: rng.vec(cout * cin_g * kernel[0] * kernel[1], -1.0, 1.0),
                },
                bias: None,
                stride: [1, 1],
                padding,
                dilation,
                groups,
                epilogue: Epilogue::default(),
            };
            let n = 3;
            let x = Tensor { shape: vec![n, cin, h, w], data: rng.vec(n * cin * h * w, -1.0, 1.0) };
            let [oh, ow] = c.out_hw(h, w).expect("the kernel fits");
            let dy = Tensor { shape: vec![n, cout, oh, ow], data: rng.vec(n * cout * oh * ow, -1.0, 1.0) };
            let (dx_a, dw_a) = gemm_conv_backward(&x, &dy, &c, true, ConvStrategy::Gemm);
            let (dx_b, dw_b) = gemm_conv_backward(&x, &dy, &c, true, ConvStrategy::Indirect);
            for (what, a, b) in [("dx", dx_a.expect("dx asked"), dx_b.expect("dx asked")), ("dw", dw_a, dw_b)] {
                let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                    assert!((u - v).abs() / scale < 1e-4, "{what} {cin}->{cout} g{groups}: element {i}: {u} vs {v}");
                }
            }
        }
    }
}
