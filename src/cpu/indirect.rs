//! Indirect convolution: the product `Y^T = im2col(x)^T * W^T`, tiled as `MR` output pixels x
//! `NR` output channels, with the im2col matrix read in place through two offset lists.
//!
//! Element `(q, p)` of `im2col(x)^T` (output pixel `q`, depth `p = (ci*kh + ky)*kw + kx`) is
//! `src[pix[q] + offsets[p]]`, where `src` is the (zero-padded, when the convolution pads) input,
//! `pix[q]` the top-left corner of pixel `q`'s receptive field and `offsets[p]` the tap's
//! distance from it. Any stride, padding and dilation fit that form, so one path serves every
//! convolution that is not depthwise; the kernel broadcasts `MR` input values per depth step
//! (neighbouring pixels: usually one cache line) and streams the weights.
//!
//! Why this orientation, and not `Y = W * im2col(x)` as in `super::gemm::matmul_offsets`: there
//! the columns (pixels) of a tile must be consecutive in the padded input, so each output row
//! computes its padding columns too (a 10-wide padded row for an 8-wide output: 96 columns for
//! 64 on 8x8 maps), and each depth step loads `NR` values at an arbitrary, unaligned offset. Here
//! the pixels are listed one by one (no wasted columns) and the `NR`-wide operand is the weights,
//! packed once per prepared graph ([`PackedWeights`], `super::PackedGraph`) into aligned panels,
//! as ONNX Runtime and XNNPACK prepack theirs. The cost moves to the stores: a tile's `MR` values
//! per channel are a short run of an output row.

use super::parallel;

use super::gemm::{threads_for, tile_ind_fn, DstPtr, Epilogue, Kernel, Parallelism, AVX512_MR, PORTABLE_MR};
use super::ops::sigmoid;
use crate::graph::Act;

/// A convolution's weights (`[groups * cout_g, k]` row-major, `k = cin_g*kh*kw`) packed for the
/// indirect kernel: per group, `ceil(cout_g / NR)` panels of `k` rows of `NR` values (channel
/// `c0 + j` at depth `p` in row `p`, column `j`), zero beyond `cout_g`.
#[derive(Clone, Debug)]
pub struct PackedWeights {
    kernel: Kernel,
    groups: usize,
    cout_g: usize,
    k: usize,
    data: AlignedF32,
}

/// `f32` values in 64-byte aligned storage: the weight panels' rows are 32 to 128 bytes, so
/// every vector load of the kernels stays inside one cache line (a misaligned 64-byte load
/// touches two). On an AVX-512 Xeon the 8 x 32 kernel ran at 131-137 GFLOP/s from a plain
/// `Vec` and at 140-151 from aligned panels (3x3 layers of ResNet-18's shapes, one thread,
/// session 23).
#[derive(Clone, Debug)]
struct AlignedF32 {
    blocks: Vec<Block>,
    len: usize,
}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Block([f32; 16]);

impl AlignedF32 {
    /// `len` values for a caller that writes all of them before reading any (the contract of
    /// `super::buffer`, whose NaN poison applies here too).
    #[allow(clippy::uninit_vec)] // as `super::buffer::overwritten`
    fn overwritten(len: usize) -> Self {
        let blocks = len.div_ceil(16);
        if super::buffer::poisoned() {
            return AlignedF32 { blocks: vec![Block([f32::NAN; 16]); blocks], len };
        }
        let mut v = Vec::with_capacity(blocks);
        // SAFETY: the capacity is `blocks`; a block is 16 f32, which have no invalid bit
        // patterns, and the caller writes every value before it is read (see above).
        unsafe { v.set_len(blocks) };
        AlignedF32 { blocks: v, len }
    }

    fn as_slice(&self) -> &[f32] {
        // SAFETY: `blocks` holds at least `len` contiguous f32 values (`Block` is a `repr(C)`
        // array of 16 with no padding).
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr() as *const f32, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr() as *mut f32, self.len) }
    }
}

impl PackedWeights {
    /// Packs `weights` for `kernel`'s tile width.
    ///
    /// Panics when `weights` does not hold `groups * cout_g * k` values (a caller's bug: shapes
    /// come from validated graphs).
    pub fn new(kernel: Kernel, weights: &[f32], groups: usize, cout_g: usize, k: usize) -> Self {
        assert_eq!(weights.len(), groups * cout_g * k, "packed weights: shape mismatch");
        Self::tap_major(kernel, groups, cout_g, [k, 1], |g, c| &weights[(g * cout_g + c) * k..][..k])
    }

    /// Packs the weight rows `row(g, c)` (group `g`, output channel `c`; `cin * taps` values,
    /// input channel major: value `ci * taps + t`) with the depth reordered tap-major, packed
    /// depth `t * cin + ci`, the order a pixel-major input copy is read in (`super::conv`).
    /// `taps == 1` keeps the rows' order.
    ///
    /// One pass, panels in parallel, without zeroing first (every value is written): a
    /// training step packs every layer's weights again (9.4 MB for one of ResNet-18's
    /// 512-channel layers), and serially, with a zeroed allocation and a reordered copy before
    /// the packing, that took longer than the layer's forward product on two threads (7.4 ms
    /// against 4.3, session 26).
    pub(crate) fn tap_major<'a>(
        kernel: Kernel,
        groups: usize,
        cout_g: usize,
        [cin, taps]: [usize; 2],
        row: impl Fn(usize, usize) -> &'a [f32] + Sync,
    ) -> Self {
        let nr = kernel.shape().1;
        Self::from_panels(kernel, groups, cout_g, cin * taps, |g, c0, panel| {
            let rows: Vec<&[f32]> = (c0..cout_g.min(c0 + nr)).map(|c| row(g, c)).collect();
            // Input channels in blocks, so that the rows' values read for a block (a few cache
            // lines per row) stay in L1 while all taps are written.
            for ci0 in (0..cin).step_by(TAP_MAJOR_BLOCK) {
                for t in 0..taps {
                    for ci in ci0..cin.min(ci0 + TAP_MAJOR_BLOCK) {
                        let out = &mut panel[(t * cin + ci) * nr..][..nr];
                        let sp = ci * taps + t;
                        for (v, r) in out.iter_mut().zip(&rows) {
                            *v = r[sp];
                        }
                        out[rows.len()..].fill(0.0);
                    }
                }
            }
        })
    }

    /// Packs weights panel by panel, in parallel: `fill(g, c0, panel)` writes every value of
    /// the panel of group `g` that starts at output channel `c0` (`k` rows of `NR` values,
    /// zeros in the columns past `cout_g`). The storage is not zeroed first.
    pub(crate) fn from_panels(
        kernel: Kernel,
        groups: usize,
        cout_g: usize,
        k: usize,
        fill: impl Fn(usize, usize, &mut [f32]) + Sync,
    ) -> Self {
        let nr = kernel.shape().1;
        let panels = cout_g.div_ceil(nr);
        let mut data = AlignedF32::overwritten(groups * panels * k * nr);
        let panel_len = (k * nr).max(1);
        parallel::for_each_chunk_mut(data.as_mut_slice(), panel_len, (1usize << 15).div_ceil(panel_len), |i, panel| {
            fill(i / panels, (i % panels) * nr, panel)
        });
        PackedWeights { kernel, groups, cout_g, k, data }
    }

    /// The kernel these panels were packed for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Whether these are the panels of a `groups x cout_g x k` weight tensor.
    pub fn fits(&self, groups: usize, cout_g: usize, k: usize) -> bool {
        (self.groups, self.cout_g, self.k) == (groups, cout_g, k)
    }

    /// Panel `jp` of group `g`: `k` rows of `NR` values (for kernels that call the tile
    /// function themselves, as `super::winograd` does).
    pub(crate) fn panel(&self, g: usize, jp: usize) -> &[f32] {
        let nr = self.kernel.shape().1;
        &self.group(g)[jp * self.k * nr..(jp + 1) * self.k * nr]
    }

    fn group(&self, g: usize) -> &[f32] {
        let data = self.data.as_slice();
        let len = data.len() / self.groups;
        &data[g * len..(g + 1) * len]
    }
}

/// The kernel for a layer of `cout_g` output channels per group on a CPU whose widest kernel
/// is `widest`: the 8 x 8 AVX2 tile for at most 8 channels (a 6 x 16 tile would compute as
/// many zero columns as real ones; with this tile LDCRN's 8-channel 3x3 layers ran at 47-50
/// GFLOP/s on one Zen 3 thread, against 42-44 on the matrix-product path); with AVX-512, also
/// the 6 x 16 AVX2 tile for 9 to 16 channels (half of a 32-wide panel would be zeros; the
/// forward pass sends such layers to the matrix product anyway, `ConvStrategy::for_conv`); else
/// `widest`. (A 12 x 8 tile, 1.8x faster in isolation, compiled with its row pointers and
/// accumulators spilled to the stack.)
pub fn kernel_for(widest: Kernel, cout_g: usize) -> Kernel {
    match widest {
        Kernel::Avx2 | Kernel::Avx512 if cout_g <= 8 => Kernel::Avx2Narrow,
        Kernel::Avx512 if cout_g <= 16 => Kernel::Avx2,
        _ => widest,
    }
}

/// Writes a finished tile (`buf[i * NR + j]`: pixel `i`, channel `j`) to its place in the
/// output: channel `j`'s first `rows` pixels at `dst + j * row_stride`, for `channels` channels.
type StoreFn = unsafe fn(&[f32; MAX_TILE], *mut f32, usize, usize, usize);

/// The tile store of `kernel`'s `MR x NR` tiles, with the shape known at compile time: whole
/// tiles' pixel loops unrolled, no bounds checks (the store is the main per-tile cost besides
/// the kernel on layers of shallow depth).
fn store_fn(kernel: Kernel) -> StoreFn {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if AVX512_MR == 8 => store_tile_by_transposes::<32>,
        Kernel::Avx512 => store_tile::<AVX512_MR, 32>,
        Kernel::Avx2 => store_tile::<6, 16>,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Narrow => store_tile_by_transposes::<8>,
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2Narrow => store_tile::<8, 8>,
        Kernel::Portable => store_tile::<PORTABLE_MR, 8>,
    }
}

/// # Safety
/// `dst + j * row_stride + i` must be writable for `j < channels <= NR`, `i < rows <= MR`.
unsafe fn store_tile<const MR: usize, const NR: usize>(
    buf: &[f32; MAX_TILE],
    dst: *mut f32,
    row_stride: usize,
    channels: usize,
    rows: usize,
) {
    const { assert!(MR * NR <= MAX_TILE) };
    let channels = channels.min(NR);
    if rows == MR {
        for j in 0..channels {
            let run: [f32; MR] = std::array::from_fn(|i| buf[i * NR + j]);
            // SAFETY: per the contract (rows == MR).
            unsafe { (dst.add(j * row_stride) as *mut [f32; MR]).write_unaligned(run) };
        }
    } else {
        for j in 0..channels {
            for i in 0..rows.min(MR) {
                // SAFETY: per the contract.
                unsafe { dst.add(j * row_stride + i).write(buf[i * NR + j]) };
            }
        }
    }
}

/// [`store_tile`] for 8-row tiles of kernels that imply AVX2 (the AVX-512 and the narrow AVX2
/// ones): a full tile's channels go out eight at a time through 8 x 8 transposes in registers
/// instead of one strided gather per channel. One thread of an AVX-512 Xeon, three alternated
/// rounds of `wgpose bench models` (session 23): hourglass 5.8-5.9 -> 5.5 ms, LDCRN 8.0 ->
/// 7.6-7.8, the default model 8.6-8.9 -> 8.2-8.4.
///
/// # Safety
/// As [`store_tile`] with `MR = 8`; the CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
unsafe fn store_tile_by_transposes<const NR: usize>(
    buf: &[f32; MAX_TILE],
    dst: *mut f32,
    row_stride: usize,
    channels: usize,
    rows: usize,
) {
    const { assert!(8 * NR <= MAX_TILE && NR.is_multiple_of(8)) };
    let channels = channels.min(NR);
    if rows != 8 {
        // SAFETY: forwarded contract.
        return unsafe { store_tile::<8, NR>(buf, dst, row_stride, channels, rows) };
    }
    let whole = channels / 8 * 8;
    for j0 in (0..whole).step_by(8) {
        let src: [*const f32; 8] = std::array::from_fn(|i| buf[i * NR + j0..].as_ptr());
        // SAFETY: AVX2 per the contract; rows i < 8 of buf hold NR >= j0 + 8 values from
        // i * NR; channels j0..j0 + 8 < channels of the 8 pixels are writable per the contract.
        unsafe { crate::cpu::conv::transpose_8x8_avx2(src, dst.add(j0 * row_stride), row_stride) };
    }
    for j in whole..channels {
        let run: [f32; 8] = std::array::from_fn(|i| buf[i * NR + j]);
        // SAFETY: per the contract (rows == 8).
        unsafe { (dst.add(j * row_stride) as *mut [f32; 8]).write_unaligned(run) };
    }
}

/// Input channels [`PackedWeights::tap_major`] reorders at a time.
const TAP_MAJOR_BLOCK: usize = 16;

/// The largest tile (`MR * NR`) and tile height of any kernel.
const MAX_TILE: usize = AVX512_MR * 32;
const MAX_ROWS: usize = 8;
/// The widest tile of any kernel (`NR`).
pub(crate) const MAX_NR: usize = 32;
const _: () = assert!(AVX512_MR <= MAX_ROWS && PORTABLE_MR <= MAX_ROWS);

/// `act(v + bias[c])` on every value of a finished tile before it is stored (the tile buffer
/// is still in L1): the part of a convolution's epilogue that needs no other tensor. The rest
/// (a residual, the activation after it) runs on the stored rows. Channel `c` is the group's
/// (`bias` holds at least `cout_g` values; the products panic otherwise).
#[derive(Clone, Copy, Default)]
pub struct TileEpilogue<'a> {
    /// Per output channel of the group, added first.
    pub bias: Option<&'a [f32]>,
    /// Applied after the bias.
    pub act: Act,
}

impl TileEpilogue<'_> {
    /// Nothing to do.
    pub const NONE: TileEpilogue<'static> = TileEpilogue { bias: None, act: Act::None };

    pub(crate) fn is_identity(&self) -> bool {
        self.bias.is_none() && self.act == Act::None
    }

    /// Channels `c0..c0 + nr` of the bias, zero past the group's last channel.
    pub(crate) fn panel_bias(&self, c0: usize, nr: usize) -> [f32; MAX_NR] {
        let mut b = [0.0f32; MAX_NR];
        if let Some(bias) = self.bias {
            let n = nr.min(bias.len().saturating_sub(c0));
            b[..n].copy_from_slice(&bias[c0..c0 + n]);
        }
        b
    }
}

/// `rows[i * nr + j] = act(rows[i * nr + j] + bias[j])` for every whole row of `nr` values,
/// compiled for the kernel's vectors (also the Winograd path's outputs, `super::winograd`).
pub(crate) fn finish_rows(kernel: Kernel, rows: &mut [f32], nr: usize, bias: &[f32; MAX_NR], act: Act) {
    #[cfg(target_arch = "x86_64")]
    match kernel {
        // SAFETY: the kernel implies the CPU's features (`Kernel::detect`, `kernel_for`).
        Kernel::Avx512 => return unsafe { finish_rows_avx512(rows, nr, bias, act) },
        Kernel::Avx2 | Kernel::Avx2Narrow => return unsafe { finish_rows_avx2(rows, nr, bias, act) },
        Kernel::Portable => {}
    }
    let _ = kernel;
    finish_rows_body(rows, nr, bias, act)
}

#[inline(always)]
fn finish_rows_body(rows: &mut [f32], nr: usize, bias: &[f32; MAX_NR], act: Act) {
    let bias = &bias[..nr];
    for row in rows.chunks_exact_mut(nr) {
        match act {
            Act::None => row.iter_mut().zip(bias).for_each(|(v, b)| *v += b),
            Act::Relu => row.iter_mut().zip(bias).for_each(|(v, b)| *v = (*v + b).max(0.0)),
            Act::Sigmoid => row.iter_mut().zip(bias).for_each(|(v, b)| *v = sigmoid(*v + b)),
        }
    }
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn finish_rows_avx512(rows: &mut [f32], nr: usize, bias: &[f32; MAX_NR], act: Act) {
    finish_rows_body(rows, nr, bias, act)
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn finish_rows_avx2(rows: &mut [f32], nr: usize, bias: &[f32; MAX_NR], act: Act) {
    finish_rows_body(rows, nr, bias, act)
}

/// `dst[c * row_stride + q] = finish(sum_p W[c, p] * src[pix[q] + offsets[p]])` for channels
/// `c < cout_g` of group `g` of `weights` and pixels `q < pix.len()`, `finish` the tile
/// epilogue, then `epilogue(c, q0, run)` on every stored run of a channel's row (`q0` its first
/// pixel).
///
/// Panics when a read or write would leave its slice, the weights do not fit or the bias is
/// short: bugs of the caller, never a consequence of user input.
#[allow(clippy::too_many_arguments)]
pub fn conv_indirect(
    dst: &mut [f32],
    row_stride: usize,
    weights: &PackedWeights,
    g: usize,
    src: &[f32],
    pix: &[usize],
    offsets: &[usize],
    par: Parallelism,
    finish: TileEpilogue<'_>,
    epilogue: Option<Epilogue<'_>>,
) {
    let (cout, k, npix) = (weights.cout_g, weights.k, pix.len());
    assert!(g < weights.groups && offsets.len() == k, "conv_indirect: weights do not fit");
    assert!(finish.bias.is_none_or(|b| b.len() >= cout), "conv_indirect: bias shorter than the channels");
    if cout == 0 || npix == 0 {
        return;
    }
    assert!((cout - 1) * row_stride + npix <= dst.len() && row_stride >= npix, "conv_indirect: dst out of bounds");
    if k == 0 {
        // An empty sum (no input channels): zeros, then the epilogue, as `gemm::matmul` does.
        for c in 0..cout {
            let run = &mut dst[c * row_stride..c * row_stride + npix];
            let b = finish.bias.map_or(0.0, |b| b[c]);
            run.fill(finish.act.apply(b));
            if let Some(ep) = epilogue {
                ep(c, 0, run);
            }
        }
        return;
    }
    let reach = pix.iter().max().copied().unwrap_or(0) + offsets.iter().max().copied().unwrap_or(0);
    assert!(reach < src.len(), "conv_indirect: source out of bounds");
    let kernel = weights.kernel;
    let (mr, nr) = kernel.shape();
    let tile = tile_ind_fn(kernel);
    let store = store_fn(kernel);
    let panels = weights.group(g);
    let (pix_tiles, col_panels) = (npix.div_ceil(mr), cout.div_ceil(nr));
    // Tiles in channel-panel-major order: a task's run of tiles mostly shares one weight panel
    // (k x NR, read from L1/L2) and walks neighbouring pixels.
    let tiles = pix_tiles * col_panels;
    let threads = threads_for(par, cout * npix * k);
    let tasks = if threads > 1 { (4 * threads).min(tiles) } else { 1 };
    let per_task = tiles.div_ceil(tasks);
    let dst = DstPtr(dst.as_mut_ptr());
    let task = |t: usize| {
        let mut buf = [0.0f32; MAX_TILE];
        let mut tail = [0usize; MAX_ROWS];
        let (first, end) = (t * per_task, ((t + 1) * per_task).min(tiles));
        // The task's tiles, one weight panel at a time: pixel tiles ip0..ip1 of panel jp.
        let mut id = first;
        while id < end {
            let (jp, ip0) = (id / pix_tiles, id % pix_tiles);
            let ip1 = pix_tiles.min(ip0 + end - id);
            let (c0, c1) = (jp * nr, cout.min(jp * nr + nr));
            let bias = finish.panel_bias(c0, nr);
            for ip in ip0..ip1 {
                let q0 = ip * mr;
                let rows = mr.min(npix - q0);
                let pix_ptr = if rows == mr {
                    pix[q0..].as_ptr()
                } else {
                    // The last, partial tile repeats its last pixel (valid reads, results dropped).
                    tail[..mr].iter_mut().enumerate().for_each(|(i, t)| *t = pix[q0 + i.min(rows - 1)]);
                    tail.as_ptr()
                };
                // SAFETY: every pix entry plus every offset is below src.len() (asserted above);
                // the panel holds k x nr values; buf holds mr * nr <= MAX_TILE values.
                unsafe {
                    tile(k, src.as_ptr(), pix_ptr, offsets.as_ptr(), panels[jp * k * nr..].as_ptr(), buf.as_mut_ptr())
                };
                if !finish.is_identity() {
                    finish_rows(kernel, &mut buf[..mr * nr], nr, &bias, finish.act);
                }
                // SAFETY: channels c0..c1 < cout, pixels q0..q0 + rows <= npix <= row_stride:
                // inside dst (asserted above); tiles are disjoint, this one is this task's.
                unsafe { store(&buf, dst.get().add(c0 * row_stride + q0), row_stride, c1 - c0, rows) };
            }
            // The epilogue once per channel over the segment's pixels (not per tile: a tile's
            // run is only MR values), while they are still in cache.
            if let Some(ep) = epilogue {
                let (q0, q1) = (ip0 * mr, npix.min(ip1 * mr));
                for c in c0..c1 {
                    // SAFETY: as above; these pixels' tiles were all computed by this task.
                    let run = unsafe { std::slice::from_raw_parts_mut(dst.get().add(c * row_stride + q0), q1 - q0) };
                    ep(c, q0, run);
                }
            }
            id += ip1 - ip0;
        }
    };
    if tasks > 1 {
        parallel::for_each_task(tasks, task);
    } else {
        task(0);
    }
}

/// A pointwise (1x1, unpadded) convolution's pixels gathered pixel-major: `(q0, out)` fills
/// `out[i * k + ci]` with input channel `ci` of output pixel `q0 + i` (`out.len() / k` pixels).
pub type GatherPixels<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);

/// Bytes of gathered input per block of [`conv_pointwise`]: a block and a weight panel stay in
/// L1/L2 while every panel goes over the block.
const POINTWISE_BLOCK_BYTES: usize = 64 * 1024;

/// Weights (values; 256 KiB) from which [`conv_pointwise`] on too few pixels for its threads
/// splits the weights between tasks instead of the pixels: with smaller pixel blocks every task
/// read all of them, and the 512 -> 896 head layer of `fasterpose-r18-s32` at 4 x 4 (1.8 MB)
/// took longer on two threads than on one: 0.39 against 0.32 ms with the AVX2 kernel on a Zen 4
/// (session 37); split in two, 0.17 on two threads. One part per thread: each part gathers its
/// block again.
const POINTWISE_SPLIT_WEIGHTS: usize = 1 << 16;

/// `dst[c * row_stride + q] = finish(sum_ci W[c, ci] * x[q, ci])` for channels `c < cout_g` of
/// group `g` and pixels `q < npix`, `x` read through `gather` a block of pixels at a time,
/// `finish` the tile epilogue, then `epilogue(c, q0, run)` on every run of a channel's row.
///
/// Why not [`conv_indirect`] with plane offsets: read in place from NCHW planes, each depth step
/// of a tile loads from another plane (another cache line, planes a power of two apart on most
/// maps), and a tile's `k` lines plus its weight panel overflow L1. Gathered pixel-major, a tile
/// reads `MR` contiguous runs of `k` values: the hourglass's 256 -> 128 merge layers at 64x64
/// went from 60 to 72 GFLOP/s on one Zen 3 thread (3x3 layers: 82-86), its 128 -> 128 ones from
/// 53 to 65.
///
/// Panics when a write would leave `dst`, the weights do not fit or the bias is short (callers'
/// bugs).
#[allow(clippy::too_many_arguments)]
pub fn conv_pointwise(
    dst: &mut [f32],
    row_stride: usize,
    weights: &PackedWeights,
    g: usize,
    npix: usize,
    gather: GatherPixels<'_>,
    par: Parallelism,
    finish: TileEpilogue<'_>,
    epilogue: Option<Epilogue<'_>>,
) {
    let (cout, k) = (weights.cout_g, weights.k);
    assert!(g < weights.groups, "conv_pointwise: weights do not fit");
    assert!(finish.bias.is_none_or(|b| b.len() >= cout), "conv_pointwise: bias shorter than the channels");
    if cout == 0 || npix == 0 {
        return;
    }
    assert!((cout - 1) * row_stride + npix <= dst.len() && row_stride >= npix, "conv_pointwise: dst out of bounds");
    let kernel = weights.kernel;
    let (mr, nr) = kernel.shape();
    let col_panels = cout.div_ceil(nr);
    let threads = threads_for(par, cout * npix * k.max(1));
    // Pixels per block: a multiple of MR within the byte budget. Too few blocks for the threads:
    // smaller blocks (two per thread), or, when the weights are the larger operand and at least
    // `POINTWISE_SPLIT_WEIGHTS`, the blocks' panels in parts (a task per thread).
    let mut block = (POINTWISE_BLOCK_BYTES / (4 * k.max(1))).clamp(mr, 32 * mr) / mr * mr;
    let mut parts = 1;
    if threads > 1 && npix.div_ceil(block) < 2 * threads {
        let blocks = npix.div_ceil(block);
        if cout > npix && col_panels > 1 && k * cout >= POINTWISE_SPLIT_WEIGHTS {
            block = npix.div_ceil(blocks).div_ceil(mr) * mr;
            parts = threads.div_ceil(blocks).min(col_panels);
        } else {
            block = block.min(npix.div_ceil(2 * threads).div_ceil(mr) * mr);
        }
    }
    let blocks = npix.div_ceil(block);
    let tile = tile_ind_fn(kernel);
    let store = store_fn(kernel);
    let panels = weights.group(g);
    let offsets: Vec<usize> = (0..k).collect();
    let dst = DstPtr(dst.as_mut_ptr());
    // Task `bi * parts + part`: block `bi`'s pixels (gathered once per part) times part `part`
    // of the panels.
    let run_block = |xs: &mut Vec<f32>, task: usize| {
        let (bi, part) = (task / parts, task % parts);
        let (q0, q1) = (bi * block, npix.min(bi * block + block));
        let n = q1 - q0;
        xs.resize(n * k, 0.0);
        gather(q0, &mut xs[..n * k]);
        let mut buf = [0.0f32; MAX_TILE];
        let mut rows_at = [0usize; MAX_ROWS];
        for jp in part * col_panels / parts..(part + 1) * col_panels / parts {
            let (c0, c1) = (jp * nr, cout.min(jp * nr + nr));
            let bias = finish.panel_bias(c0, nr);
            for t0 in (0..n).step_by(mr) {
                let rows = mr.min(n - t0);
                // A partial tile repeats its last pixel (valid reads, results dropped).
                rows_at[..mr].iter_mut().enumerate().for_each(|(i, r)| *r = (t0 + i.min(rows - 1)) * k);
                if k == 0 {
                    buf[..mr * nr].fill(0.0);
                } else {
                    // SAFETY: rows_at[i] + offsets[p] < n * k = xs.len() for i < mr, p < k; the
                    // panel holds k x nr values; buf holds mr * nr <= MAX_TILE values.
                    unsafe {
                        tile(
                            k,
                            xs.as_ptr(),
                            rows_at.as_ptr(),
                            offsets.as_ptr(),
                            panels[jp * k * nr..].as_ptr(),
                            buf.as_mut_ptr(),
                        )
                    };
                }
                if !finish.is_identity() {
                    finish_rows(kernel, &mut buf[..mr * nr], nr, &bias, finish.act);
                }
                // SAFETY: channels c0..c1 < cout, pixels q0 + t0 .. + rows <= npix <= row_stride:
                // inside dst (asserted above); blocks are disjoint, this one is this task's.
                unsafe { store(&buf, dst.get().add(c0 * row_stride + q0 + t0), row_stride, c1 - c0, rows) };
            }
            if let Some(ep) = epilogue {
                for c in c0..c1 {
                    // SAFETY: as above; this block's pixels of these channels were all computed here.
                    let run = unsafe { std::slice::from_raw_parts_mut(dst.get().add(c * row_stride + q0), n) };
                    ep(c, q0, run);
                }
            }
        }
    };
    if threads > 1 && blocks * parts > 1 {
        parallel::for_each_task(blocks * parts, |task| run_block(&mut Vec::new(), task));
    } else {
        let mut xs = Vec::new();
        (0..blocks * parts).for_each(|task| run_block(&mut xs, task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The tile epilogues the products are tested with: none, and bias + ReLU, bias + sigmoid,
    /// ReLU alone, each on one thread and on several.
    fn finishes(bias: &[f32]) -> Vec<(Parallelism, TileEpilogue<'_>)> {
        vec![
            (Parallelism::None, TileEpilogue::NONE),
            (Parallelism::Rayon(3), TileEpilogue::NONE),
            (Parallelism::None, TileEpilogue { bias: Some(bias), act: Act::Relu }),
            (Parallelism::Rayon(3), TileEpilogue { bias: Some(bias), act: Act::Sigmoid }),
            (Parallelism::Rayon(3), TileEpilogue { bias: None, act: Act::Relu }),
        ]
    }

    /// The expected `finish(sum of terms) + 1` (the tests' run epilogue adds one) in f64, and the
    /// scale its error is measured against: the sum of |terms| and |bias| (at least 1 after a
    /// sigmoid, whose f32 form is exact to 2e-7 relative, at least 1e-3 otherwise).
    fn finished(terms: impl Iterator<Item = f64> + Clone, c: usize, finish: TileEpilogue) -> (f64, f64) {
        let b = finish.bias.map_or(0.0, |b| b[c] as f64);
        let v = terms.clone().sum::<f64>() + b;
        let abs = terms.map(f64::abs).sum::<f64>() + b.abs();
        match finish.act {
            Act::None => (v + 1.0, abs.max(1e-3)),
            Act::Relu => (v.max(0.0) + 1.0, abs.max(1e-3)),
            Act::Sigmoid => (1.0 / (1.0 + (-v).exp()) + 1.0, abs.max(1.0)),
        }
    }

    /// Every kernel this CPU runs against an f64 sum of the definition, on pixel and channel
    /// counts that are not multiples of any tile (and smaller than one), two groups, one thread
    /// and several. Tolerance: 1e-4 relative to the sum of |products|.
    #[test]
    fn indirect_product_matches_the_definition() {
        let mut rng = Rng::new(11);
        for kernel in Kernel::supported() {
            for &(npix, cout_g, k) in &[(1, 1, 1), (5, 3, 0), (7, 5, 9), (13, 17, 27), (61, 33, 144), (100, 40, 300)] {
                let groups = 2;
                let src = rng.vec(500, -1.0, 1.0);
                let pix: Vec<usize> = (0..npix).map(|q| (q * 7) % 150).collect();
                let offsets: Vec<usize> = (0..k).map(|p| (p * 13) % 349).collect();
                let w = rng.vec(groups * cout_g * k, -1.0, 1.0);
                let packed = PackedWeights::new(kernel, &w, groups, cout_g, k);
                let bias = rng.vec(cout_g, -1.0, 1.0);
                for (par, finish) in finishes(&bias) {
                    for g in 0..groups {
                        let stride = npix + 3;
                        let mut dst = vec![9.0f32; cout_g * stride];
                        let plus_one = |_: usize, _: usize, v: &mut [f32]| v.iter_mut().for_each(|x| *x += 1.0);
                        conv_indirect(&mut dst, stride, &packed, g, &src, &pix, &offsets, par, finish, Some(&plus_one));
                        for c in 0..cout_g {
                            for q in 0..npix {
                                let terms = (0..k)
                                    .map(|p| w[(g * cout_g + c) * k + p] as f64 * src[pix[q] + offsets[p]] as f64);
                                let (want, scale) = finished(terms, c, finish);
                                let got = dst[c * stride + q] as f64;
                                assert!(
                                    (got - want).abs() / scale < 1e-4,
                                    "{kernel:?} {npix}x{cout_g}x{k} {par:?} {:?} group {g}: ({c}, {q}) {got} vs {want}",
                                    finish.act
                                );
                            }
                            assert_eq!(&dst[c * stride + npix..c * stride + stride], &[9.0; 3], "gap untouched");
                        }
                    }
                }
            }
        }
    }

    /// The pointwise product against an f64 sum of the definition: pixel counts that are not
    /// multiples of the tile (or of a block), 0 to 300 input channels, one thread and several,
    /// both groups. Tolerance as above.
    #[test]
    fn pointwise_product_matches_the_definition() {
        let mut rng = Rng::new(12);
        for kernel in Kernel::supported() {
            for &(npix, cout_g, k) in
                &[(1, 1, 1), (5, 3, 0), (7, 17, 9), (61, 33, 144), (700, 40, 300), (301, 20, 64), (17, 300, 230)]
            {
                let groups = 2;
                // Input pixel q, channel ci of group g at x[(g * npix + q) * k + ci].
                let x = rng.vec(groups * npix * k, -1.0, 1.0);
                let w = rng.vec(groups * cout_g * k, -1.0, 1.0);
                let packed = PackedWeights::new(kernel, &w, groups, cout_g, k);
                let bias = rng.vec(cout_g, -1.0, 1.0);
                for (par, finish) in finishes(&bias) {
                    for g in 0..groups {
                        let stride = npix + 2;
                        let mut dst = vec![9.0f32; cout_g * stride];
                        let gather = |q0: usize, out: &mut [f32]| {
                            out.copy_from_slice(&x[(g * npix + q0) * k..][..out.len()]);
                        };
                        let plus_one = |_: usize, _: usize, v: &mut [f32]| v.iter_mut().for_each(|x| *x += 1.0);
                        conv_pointwise(&mut dst, stride, &packed, g, npix, &gather, par, finish, Some(&plus_one));
                        for c in 0..cout_g {
                            for q in 0..npix {
                                let terms = (0..k)
                                    .map(|p| w[(g * cout_g + c) * k + p] as f64 * x[(g * npix + q) * k + p] as f64);
                                let (want, scale) = finished(terms, c, finish);
                                let got = dst[c * stride + q] as f64;
                                assert!(
                                    (got - want).abs() / scale < 1e-4,
                                    "{kernel:?} {npix}x{cout_g}x{k} {par:?} {:?} group {g}: ({c}, {q}) {got} vs {want}",
                                    finish.act
                                );
                            }
                            assert_eq!(&dst[c * stride + npix..c * stride + stride], &[9.0; 2], "gap untouched");
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "source out of bounds")]
    fn a_source_too_short_is_refused() {
        let packed = PackedWeights::new(Kernel::Portable, &[1.0; 4], 1, 2, 2);
        let mut dst = vec![0.0f32; 6];
        conv_indirect(
            &mut dst,
            3,
            &packed,
            0,
            &[0.0; 5],
            &[0, 1, 2],
            &[0, 3],
            Parallelism::None,
            TileEpilogue::NONE,
            None,
        );
    }
}
