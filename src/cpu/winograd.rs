//! Winograd F(2x2, 3x3) convolution: 3x3, stride-1, padding-1 layers with 2.25x fewer
//! multiplications than the direct paths of `super::conv`.
//!
//! Each 2x2 block of output pixels (a *tile*) depends on a 4x4 window `d` of the zero-padded
//! input. With the transforms of Lavin and Gray (CVPR 2016), `V = B^T d B` per window and input
//! channel and `U = G g G^T` per 3x3 kernel `g`, the tile is `A^T (sum_ci U[co, ci] . V[ci]) A`:
//! per position `xi` of the 4x4 transformed domain, one matrix product
//! `M[xi] (tiles x cout) = V[xi] (tiles x cin) x U[xi] (cin x cout)`, 16 multiplications per tile
//! and channel pair instead of 36. The transforms only add (and halve, for `U`, once per packed
//! graph), so the results stay within a few ulps of the direct sum (`tests/cpu_ops.rs` holds
//! them to the same tolerance as every other path).
//!
//! Layout and order, per batch item:
//! 1. the input is copied pixel-major into a zero border rounded up to whole tiles
//!    (`super::conv::zero_padded_pixel_major_to`, which also applies a fused input affine);
//! 2. the tiles go in *items* of `MR` tiles (the kernel's tile rows: 8 on AVX-512), and the
//!    items in *blocks* (one item each unless `U` outgrows L2, `item_blocks`), the parallel
//!    tasks (split further by panels of output channels when there are too few blocks to share
//!    the threads evenly, `panel_parts`). Per item of its block, a task's input transform writes
//!    `V[xi][tile][ci]` (channels contiguous: its vector loops run along them, 16 x 8 x cin
//!    values, in L1/L2);
//! 3. per panel of `NR` output channels, then per item of the block (so that the panel is read
//!    from memory once per block), the 16 products are 16 calls of the indirect
//!    convolution's tile kernel (`super::gemm::tile_ind_fn`), `U` prepacked in its aligned
//!    panels (one "group" per `xi`, `super::indirect::PackedWeights`), into 16 tiles in L1;
//! 4. the output transform runs on those tiles (vectorised along the channels), and the 2x2
//!    outputs of 8 tiles go out as 16-pixel runs of each channel's rows through 8 x 8 transposes
//!    (AVX2), then the epilogue on each run.
//!
//! A first version that ran each product over a block of 48 tiles (`super::indirect::
//! conv_indirect`, its channel-major stores) and the transforms as separate passes over the
//! block was no faster than the direct path on 64-channel layers: the transformed inputs and
//! products (4x the activations each) went through L2 and its stores' transposes cost as much
//! as the products saved.
//!
//! F(4x4, 3x3) (`f4`: 4x4 output tiles from 6x6 windows, 36 products per tile, 2.25 per
//! output instead of 4) runs the same way on maps of at least 32 such tiles and up to 128
//! channels ([`variant_for`]), for inference only ([`TileChoice`]): its larger factors round more
//! in f32, within the executor's tolerance against the reference but not within the gradient
//! checks' once batch norms normalise the errors. Single layers, batch 16, two threads of a
//! Zen 4, paired medians (session 40): 64 -> 64 channels at 32x32 4.45 -> 3.69 ms, 32 at 64x64
//! 5.72 -> 4.22, 128 at 32x32 14.6 -> 9.0, 128 at 24x24 14.0 -> 10.6; 64 at 16x16 (16 tiles)
//! 1.39 -> 1.54 and 128 at 16x16 even, hence the 32-tile threshold. The input transform is
//! written with explicit arrays: with `std::array::from_fn` in its loop it stayed a function call
//! per value and took 39% of a layer's time.

use super::parallel;

use super::buffer::reused;
use super::conv::{for_each_item, zero_padded_pixel_major_to, EpilogueRef, InputAffine};
use super::gemm::{threads_for, tile_ind_fn, DstPtr, Kernel, Parallelism};
use super::indirect::{finish_rows, kernel_for, PackedWeights};
use super::ops::Planes;
use crate::graph::Conv2d;

mod f4;

/// Positions of F(2x2, 3x3)'s transformed 4x4 domain (one matrix product each).
const POSITIONS: usize = 16;

/// Positions and outputs per tile of the largest variant (F(4x4, 3x3)).
const MAX_POSITIONS: usize = f4::POSITIONS;
const MAX_OUTPUTS: usize = 16;

/// The tile size: F(2x2, 3x3) or F(4x4, 3x3) (`f4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    F2,
    F4,
}

impl Variant {
    /// Output tile side.
    fn side(self) -> usize {
        match self {
            Variant::F2 => 2,
            Variant::F4 => 4,
        }
    }

    /// Positions of the transformed domain: products per tile.
    fn positions(self) -> usize {
        match self {
            Variant::F2 => POSITIONS,
            Variant::F4 => f4::POSITIONS,
        }
    }

    /// The variant packed weights were packed for (by their number of positions).
    fn of_packed(p: &PackedWeights, cout: usize, cin: usize) -> Option<Variant> {
        [Variant::F2, Variant::F4].into_iter().find(|v| p.fits(v.positions(), cout, cin))
    }
}

/// Which Winograd tiles a convolution may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TileChoice {
    /// F(4x4, 3x3) where the maps are large enough ([`variant_for`]), else F(2x2, 3x3): inference.
    BySize,
    /// F(2x2, 3x3) only: training. F(4x4, 3x3)'s larger factors round more in f32 (on random
    /// 64-channel layers at 32x32, a largest error of 2.5e-5 against 1.2e-6 for F(2x2, 3x3),
    /// outputs up to 3.6; session 40), within the executor's tolerance against the reference
    /// but enough, through the batch norms' normalisation, to move 5 of 62 coordinates of the
    /// soft-gated hourglass's f64 gradient check (`tests/autodiff.rs`) past its 2e-3.
    Small,
}

/// The variant a layer `c` takes on output maps `out_hw` (F(2x2, 3x3) when unknown): F(4x4, 3x3)
/// where the maps hold at least [`F4_MIN_TILES`] 4x4 tiles and the channels are at most
/// [`F4_MAX_CHANNELS`], with `WGPOSE_CPU_WINOGRAD_F4` not `0`.
pub(crate) fn variant_for(c: &Conv2d, out_hw: Option<[usize; 2]>) -> Variant {
    let large = out_hw.is_some_and(|[h, w]| h.div_ceil(4) * w.div_ceil(4) >= F4_MIN_TILES);
    if large && f4_enabled() && c.cin_per_group() <= F4_MAX_CHANNELS && c.cout() <= F4_MAX_CHANNELS {
        Variant::F4
    } else {
        Variant::F2
    }
}

/// 4x4 tiles per map from which F(4x4, 3x3) is taken: 24x24 maps and larger.
const F4_MIN_TILES: usize = 32;

/// Channels up to which F(4x4, 3x3) is taken (its transformed weights are 2.25 times
/// F(2x2, 3x3)'s).
const F4_MAX_CHANNELS: usize = 128;

/// Channel range of the layers this path takes: below 32 output channels the wide tiles are
/// half empty. With the AVX-512 kernel up to 256: ResNet-18's 256-channel 3x3 layers at 8x8
/// (4 MiB of transformed weights each, streamed once per item) went from 0.61-0.62 to 0.50-0.60
/// ms on one thread of an AVX-512 Xeon, and the four of them plus the head's 256 -> 224 layer
/// from 1.50-1.58 to 1.04-1.14 ms on two (session 25, `examples/cpu_profile`); 512 is untested.
/// With the 6 x 16 AVX2 kernel the same layers first took 3-12% longer than direct (`U` read
/// once per item of 6 tiles); since the items go in blocks that read each panel of `U` once
/// (`item_blocks`, session 35) they take 0.70-0.75 of the direct time on one Zen 3 thread, and
/// the default model 0.89-0.92 of its time at 160 x 128 on one thread and 0.92-0.96 on two
/// (session 36, alternated in one process), so AVX2 takes up to 256 too. The portable kernel
/// (NEON on aarch64; nothing measured there) keeps 128.
const MIN_CHANNELS: usize = 32;
fn max_channels() -> usize {
    match Kernel::detect() {
        Kernel::Avx512 | Kernel::Avx2 => 256,
        _ => 128,
    }
}

/// Whether `c` runs through this path: a 3x3 convolution, stride 1, dilation 1, padding 1, one
/// group, within the channel range above, unless `WGPOSE_CPU_WINOGRAD=0` turns the path off (for
/// comparisons).
pub(crate) fn applies(c: &Conv2d) -> bool {
    let channels = MIN_CHANNELS..=max_channels();
    c.kernel() == [3, 3]
        && c.stride == [1, 1]
        && c.dilation == [1, 1]
        && c.padding == [1, 1]
        && c.groups == 1
        && channels.contains(&c.cin_per_group())
        && channels.contains(&c.cout())
        && enabled()
}

/// Output maps from which the path is taken: 16 tiles (8 x 8 pixels, see above). On smaller
/// maps there are fewer tiles than one group of the kernel's rows (8 on AVX-512).
const MIN_TILES: usize = 16;

/// Whether `c` takes this path on output maps of `out_hw` (on any size if unknown: callers that
/// pack before they know the size).
pub(crate) fn takes(c: &Conv2d, out_hw: Option<[usize; 2]>) -> bool {
    applies(c) && out_hw.is_none_or(|[h, w]| h.div_ceil(2) * w.div_ceil(2) >= MIN_TILES)
}

/// Whether convolution `c` on output maps `out_hw` runs through this path: as its weights were
/// packed when they were (`packed`), else by [`takes`].
pub(crate) fn chosen(c: &Conv2d, packed: Option<&PackedWeights>, out_hw: [usize; 2]) -> bool {
    match packed {
        Some(p) => applies(c) && Variant::of_packed(p, c.cout(), c.cin_per_group()).is_some(),
        None => takes(c, Some(out_hw)),
    }
}

/// `WGPOSE_CPU_WINOGRAD_F4=0` (or `off`) keeps every layer of this path on F(2x2, 3x3) (for
/// comparisons).
fn f4_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("WGPOSE_CPU_WINOGRAD_F4").as_deref(), Ok("0" | "off")))
}

/// `WGPOSE_CPU_WINOGRAD=0` (or `off`) turns the Winograd paths off: this forward path, the input
/// gradients that reuse it and the weight gradient (`super::winograd_grad`).
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("WGPOSE_CPU_WINOGRAD").as_deref(), Ok("0" | "off")))
}

/// `c`'s kernels transformed for `variant` (`U = G g G^T`) and packed for the indirect kernel:
/// group `xi` holds the `cout x cin` matrix of position `xi`.
pub(crate) fn pack_weights(c: &Conv2d, variant: Variant) -> PackedWeights {
    let (cout, cin) = (c.cout(), c.cin_per_group());
    let positions = variant.positions();
    // Output channel by output channel (in parallel: a training step transforms every layer
    // again), as `[cout][position][cin]`, then packed with the positions as groups.
    let mut u = vec![0.0f32; positions * cout * cin];
    let per_channel = (positions * cin).max(1);
    let per_filter = (9 * cin).max(1);
    parallel::for_each_chunk_mut(&mut u, per_channel, 1, |o, u| {
        let g = &c.weight.data[o * per_filter..(o + 1) * per_filter];
        for (ci, g) in g.chunks_exact(9).enumerate() {
            let mut put = |xi: usize, v: f32| u[xi * cin + ci] = v;
            match variant {
                Variant::F2 => transform_kernel(g).into_iter().enumerate().for_each(|(xi, v)| put(xi, v)),
                Variant::F4 => f4::transform_kernel(g).into_iter().enumerate().for_each(|(xi, v)| put(xi, v)),
            }
        }
    });
    PackedWeights::tap_major(kernel_for(Kernel::detect(), cout), positions, cout, [cin, 1], |xi, co| {
        &u[(co * positions + xi) * cin..][..cin]
    })
}

/// `G g G^T` for a 3x3 kernel `g` (row-major), `G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]`.
fn transform_kernel(g: &[f32]) -> [f32; POSITIONS] {
    let rows = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let cols: [[f32; 4]; 3] = std::array::from_fn(|j| rows(g[j], g[3 + j], g[6 + j]));
    let mut u = [0.0; POSITIONS];
    for i in 0..4 {
        let r = rows(cols[0][i], cols[1][i], cols[2][i]);
        u[4 * i..4 * i + 4].copy_from_slice(&r);
    }
    u
}

/// The convolution through this path (see the module notes), on the tiles `tiles` allows;
/// `packed` is used when it holds `c`'s transformed weights for such tiles ([`pack_weights`]),
/// else they are transformed here.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv2d(
    x: &Planes,
    c: &Conv2d,
    out: [usize; 4],
    ep: &EpilogueRef,
    y: &mut [f32],
    packed: Option<&PackedWeights>,
    input: Option<InputAffine>,
    tiles: TileChoice,
) {
    let [n, cin, h, w] = x.dims();
    let [_, cout, oh, ow] = out;
    assert!([oh, ow] == [h, w] && applies(c), "winograd::conv2d: not a 3x3 'same' convolution");
    assert!(y.len() >= n * cout * oh * ow, "winograd::conv2d: output too short");
    let owned;
    let prepacked = packed.and_then(|p| Some((p, Variant::of_packed(p, cout, cin)?)));
    let (packed, variant) = match prepacked {
        Some((p, variant)) if tiles == TileChoice::BySize || variant == Variant::F2 => (p, variant),
        _ => {
            let variant = match tiles {
                TileChoice::BySize => variant_for(c, Some([oh, ow])),
                TileChoice::Small => Variant::F2,
            };
            owned = pack_weights(c, variant);
            (&owned, variant)
        }
    };
    let kernel = packed.kernel();
    let (mr, nr) = kernel.shape();
    let (side, positions) = (variant.side(), variant.positions());
    let (th, tw) = (h.div_ceil(side), w.div_ceil(side));
    let g = Geometry { cin, cout, oh, ow, tw, wp: side * tw + 2, mr, nr, side, positions };
    // Items of `mr` tiles (the kernel's rows) in flattened order `ty * tw + tx`, across rows:
    // on maps of fewer than `mr` tiles per row, row-aligned items would leave kernel rows empty
    // and stream all of `U` once more per item.
    let tiles = th * tw;
    let items = tiles.div_ceil(mr);
    // The depth offsets of a transformed window's channels, the same for every product.
    let offsets: Vec<usize> = (0..cin).collect();
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let tasks = threads_for(par, th * tw * positions * cin * cout);
    // Small layers run on the calling thread (`threads_for`).
    let par = if tasks > 1 { par } else { Parallelism::None };
    let panels = cout.div_ceil(nr);
    let batch_item = |b: usize, yb: &mut [f32], par: Parallelism| {
        let padded =
            zero_padded_pixel_major_to(|ci| x.plane(b, ci), [cin, h, w], [1, 1], [side * th + 2, side * tw + 2], input);
        let y0 = b * cout * oh * ow;
        let dst = DstPtr(yb.as_mut_ptr());
        // Blocks of items whose transformed inputs sit in L2 together, so that each panel of `U`
        // is read once per block and not once per item (see `item_blocks`).
        let threads = match par {
            Parallelism::Rayon(threads) => threads,
            Parallelism::None => 1,
        };
        let v_item = positions * mr * cin;
        let (blocks, per_block) = item_blocks(items, v_item, positions * cin * cout, threads);
        let parts = panel_parts(blocks, threads, panels);
        // Task `t`: the items of block `t / parts`, the output channels of its part `t % parts`.
        let task = |t: usize| {
            let block = (t / parts) * per_block..((t / parts + 1) * per_block).min(items);
            let part = t % parts;
            let jp = part * panels / parts..(part + 1) * panels / parts;
            SCRATCH.with(|s| {
                let mut v = s.take();
                let buf = reused(&mut v, block.len() * v_item);
                for (k, item) in block.clone().enumerate() {
                    let (t0, count) = (item * mr, mr.min(tiles - item * mr));
                    transform_inputs(&g, &padded, t0, count, &mut buf[k * v_item..(k + 1) * v_item]);
                }
                // SAFETY: this task's outputs (the channels of panels `jp` at the pixels of
                // the block's tiles) are its own (tasks split the items, then the panels)
                // and inside the batch item's output `yb` (`y` was asserted long enough above).
                unsafe { products_and_outputs(&g, packed, buf, &offsets, (block, tiles), jp, dst.get(), y0, ep) };
                s.set(v);
            });
        };
        let tasks = blocks * parts;
        if matches!(par, Parallelism::Rayon(_)) && tasks > 1 {
            parallel::for_each_task(tasks, task);
        } else {
            (0..tasks).for_each(task);
        }
        super::buffer::recycle(padded);
    };
    // A batch of at least one item per thread is split by items (`conv::for_each_item`): on
    // small maps one item has too few tile groups to share (training on two threads, batch 16:
    // 32 -> 32 channels at 32x32 took 2.1 ms against 1.3 for the direct path,
    // `examples/conv_grad_profile`).
    for_each_item(&mut y[..n * cout * oh * ow], n, cout * oh * ow, par, batch_item);
}

/// Transformed inputs per block of items, at most (values; 512 KiB): with a panel of `U` (16 x
/// cin x nr values, 512 KiB at 256 input channels and the AVX-512 tile) they stay in a 2 MiB L2.
const BLOCK_VALUES: usize = 1 << 17;

/// Transformed weights (values; 512 KiB) that stay in L2 from one item to the next: layers
/// with no more are not blocked, so that their items remain as many tasks to balance between
/// the threads (the hourglass's 64 -> 32 layers on 24 x 16 maps became one task in blocks).
const SMALL_U_VALUES: usize = 1 << 17;

/// How the `items` (of `v_item` transformed values each) go into blocks: `(blocks, items per
/// block)`, the last block possibly shorter. Each task reads its panels of `U` once per block;
/// with one item per block, ResNet's 256-channel layers on 10 x 8 maps (three items, 4 MiB of
/// `U`) read 12 MiB of weights from L3 each. Only layers with more than [`SMALL_U_VALUES`] of
/// `U` (`u_values`) are blocked. More than one block: a multiple of `threads`, so that the
/// blocks share the threads evenly.
fn item_blocks(items: usize, v_item: usize, u_values: usize, threads: usize) -> (usize, usize) {
    if items == 0 {
        return (0, 1);
    }
    if u_values <= SMALL_U_VALUES {
        return (items, 1);
    }
    let per_block = (BLOCK_VALUES / v_item.max(1)).clamp(1, items);
    let mut blocks = items.div_ceil(per_block);
    if blocks > 1 && threads > 1 {
        blocks = blocks.div_ceil(threads) * threads;
    }
    let per_block = items.div_ceil(blocks.min(items));
    (items.div_ceil(per_block), per_block)
}

/// Into how many parts (of whole panels of output channels) each block's products split, so
/// that `blocks * parts` tasks share `threads` evenly (`blocks`: those of [`item_blocks`]).
/// Why: on small maps a layer has only a few items of `mr` tiles, e.g. three on ResNet's 10 x 8
/// maps (the default model's 160 x 128 input), and two threads then take two items and one, the
/// time of two. Split in two, six tasks take the time of 1.5 items; each extra part transforms
/// its block's inputs once more, counted here as 3% of a block. (With `U` over 512 KiB those
/// three items are now one block, split in two parts: each thread reads half of `U` once.)
fn panel_parts(blocks: usize, threads: usize, panels: usize) -> usize {
    let time = |parts: usize| (blocks * parts).div_ceil(threads) as f64 / parts as f64 + 0.03 * (parts - 1) as f64;
    if threads <= 1 || blocks == 0 {
        return 1;
    }
    // `min_by` keeps the first of equal times: the fewest parts.
    (1..=panels.clamp(1, 4)).min_by(|&a, &b| time(a).total_cmp(&time(b))).unwrap_or(1)
}

thread_local! {
    /// A block's transformed inputs, kept per thread across items and calls (`buffer::reused`).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A layer's sizes: channels, output map, tiles per row, padded width (pixels), the kernel's
/// tile (`mr` Winograd tiles x `nr` output channels), and the variant's output tile side and
/// positions.
struct Geometry {
    cin: usize,
    cout: usize,
    oh: usize,
    ow: usize,
    tw: usize,
    wp: usize,
    mr: usize,
    nr: usize,
    side: usize,
    positions: usize,
}

/// The largest kernel tile (`MR * NR` values).
const MAX_TILE: usize = 8 * 32;

/// For the items `block` of `mr` tiles each (item `i`: tiles `i * mr..`, flattened index
/// `ty * tw + tx`, fewer in the last item of the `tiles`), whose transformed inputs are in `v`,
/// item after item (`V[xi][i][ci]`, `mr * cin` values per position): the 16 products per panel
/// of `nr` output channels in `panels`, the output transform, the stores into the output (`y`,
/// batch item's first value at offset `y0` of the whole tensor) and the epilogue on each stored
/// run.
///
/// # Safety
/// `y` must be writable at `(co * oh + oy) * ow + ox` for every channel of these panels and
/// output pixel of these tiles, and no other thread may access those elements meanwhile;
/// `offsets` must be `0..cin` (the depth offsets within one transformed window, built once per
/// call by [`conv2d`]).
#[allow(clippy::too_many_arguments)]
unsafe fn products_and_outputs(
    g: &Geometry,
    packed: &PackedWeights,
    v: &[f32],
    offsets: &[usize],
    (block, tiles): (std::ops::Range<usize>, usize),
    panels: std::ops::Range<usize>,
    y: *mut f32,
    y0: usize,
    ep: &EpilogueRef,
) {
    let (mr, nr, cin) = (g.mr, g.nr, g.cin);
    let v_item = g.positions * mr * cin;
    assert!(mr * nr <= MAX_TILE && block.end * mr < tiles + mr && v.len() >= block.len() * v_item);
    assert_eq!(offsets.len(), cin, "winograd: one offset per input channel");
    let tile = tile_ind_fn(packed.kernel());
    TILES.with_borrow_mut(|tiles_buf| {
        let Tiles { m, o, t } = &mut **tiles_buf;
        // Panels outside, items inside: a panel of `U` (16 x cin x nr values) is read from memory
        // once per block, the block's transformed inputs stay in L2 (`item_blocks`).
        for jp in panels.start..panels.end.min(g.cout.div_ceil(nr)) {
            for (k, item) in block.clone().enumerate() {
                let (t0, count) = (item * mr, mr.min(tiles - item * mr));
                // Rows past `count` repeat the last tile (valid reads, results dropped).
                let pix: [usize; 8] = std::array::from_fn(|i| i.min(count - 1) * cin);
                let v = &v[k * v_item..(k + 1) * v_item];
                for (xi, m) in m[..g.positions].iter_mut().enumerate() {
                    let panel = packed.panel(xi, jp);
                    // SAFETY: rows pix[i] + offsets[p] < mr * cin of position xi's slice of this
                    // item's `v`; the panel holds cin x nr values; m holds MAX_TILE >= mr * nr.
                    unsafe {
                        tile(
                            cin,
                            v[xi * mr * cin..].as_ptr(),
                            pix.as_ptr(),
                            offsets.as_ptr(),
                            panel.as_ptr(),
                            m.as_mut_ptr(),
                        )
                    };
                }
                match g.side {
                    4 => f4::output_transform(m, o, mr * nr),
                    _ => output_transform(m, o, mr * nr),
                }
                let channels = nr.min(g.cout - jp * nr);
                // SAFETY: forwarded contract; channels jp * nr .. + channels < cout.
                unsafe { store_outputs(g, &mut o[..], &mut t[..], t0, count, jp * nr, channels, y, y0, ep) };
            }
        }
    });
}

/// A task's tiles: the 16 products `m`, their output transform `o`, and `o` transposed for the
/// stores (`t`). Kept per thread: as zeroed locals they cost a 20 KiB `memset` per call of
/// [`products_and_outputs`], once per item on small blocks (1.4% of the hourglass's time on
/// one thread, session 36); every value read is written first in each use. Borrowed for the
/// whole of [`products_and_outputs`], which starts no parallel loop: a thread never takes other
/// work while it holds them (with nodes run side by side, `cpu::independent_groups`).
struct Tiles {
    m: [[f32; MAX_TILE]; MAX_POSITIONS],
    o: [[f32; MAX_TILE]; MAX_OUTPUTS],
    t: [[f32; MAX_TILE]; MAX_OUTPUTS],
}

thread_local! {
    static TILES: std::cell::RefCell<Box<Tiles>> = std::cell::RefCell::new(Box::new(Tiles {
        m: [[0.0; MAX_TILE]; MAX_POSITIONS],
        o: [[0.0; MAX_TILE]; MAX_OUTPUTS],
        t: [[0.0; MAX_TILE]; MAX_OUTPUTS],
    }));
}

vectorised! {
/// `o[k][q] = (A^T m A)[k]` for every value `q < len` of the tiles (`m[xi][q]`), `A^T = [1 1 1 0;
/// 0 1 -1 -1]`: the outputs (0, 0), (0, 1), (1, 0), (1, 1) of each Winograd tile and channel.
fn output_transform(m: &[[f32; MAX_TILE]; MAX_POSITIONS], o: &mut [[f32; MAX_TILE]; MAX_OUTPUTS], len: usize) => output_transform_with
}

#[inline(always)]
fn output_transform_with(m: &[[f32; MAX_TILE]; MAX_POSITIONS], o: &mut [[f32; MAX_TILE]; MAX_OUTPUTS], len: usize) {
    let [o0, o1, o2, o3, ..] = o;
    for q in 0..len.min(MAX_TILE) {
        let e = |xi: usize| m[xi][q];
        let s0 = [e(0) + e(4) + e(8), e(1) + e(5) + e(9), e(2) + e(6) + e(10), e(3) + e(7) + e(11)];
        let s1 = [e(4) - e(8) - e(12), e(5) - e(9) - e(13), e(6) - e(10) - e(14), e(7) - e(11) - e(15)];
        o0[q] = s0[0] + s0[1] + s0[2];
        o1[q] = s0[1] - s0[2] - s0[3];
        o2[q] = s1[0] + s1[1] + s1[2];
        o3[q] = s1[1] - s1[2] - s1[3];
    }
}

/// Writes the outputs `o[k][i * nr + j]` (`k = r * side + s`: row `r`, column `s` of the tile)
/// of tiles `t0 + i`, `i < count`, and channels `c0 + j`, `j < channels`, into `y`, the bias and
/// the first activation applied to `o` first (in place, along the channels), then runs the rest
/// of the epilogue on each channel's output-row runs (one per tile row and output row the tiles
/// cover). Applied per run, the whole epilogue took 5-7% of the default model's time on one
/// thread (`perf`, session 34): ResNet's 10 x 8 maps make runs of 8. `t` is scratch space for
/// the transposed tiles.
///
/// # Safety
/// As [`products_and_outputs`].
#[allow(clippy::too_many_arguments)]
unsafe fn store_outputs(
    g: &Geometry,
    o: &mut [[f32; MAX_TILE]],
    t: &mut [[f32; MAX_TILE]],
    t0: usize,
    count: usize,
    c0: usize,
    channels: usize,
    y: *mut f32,
    y0: usize,
    ep: &EpilogueRef,
) {
    let (nr, ow, side) = (g.nr, g.ow, g.side);
    let outputs = side * side;
    let (o, t) = (&mut o[..outputs], &mut t[..outputs]);
    // The bias and the first activation on the tiles' outputs, vectorised along the channels;
    // the residual and the activation after it on the stored runs (a few values each).
    let finish = ep.tile_part(0, g.cout);
    if !finish.is_identity() {
        let bias = finish.panel_bias(c0, nr);
        for ok in o.iter_mut() {
            finish_rows(Kernel::detect(), &mut ok[..count * nr], nr, &bias, finish.act);
        }
    }
    let o = &*o;
    // Channel-major runs of the (up to 8) tiles by 8 x 8 transposes, T[k][j * 8 + i]; with the
    // AVX2 kernel's 6 tiles, rows 6 and 7 hold stale values that no run reads. Scalar, each
    // value of a run was a strided read of `o` (6% of the hourglass's time on one Zen 3 thread,
    // session 36).
    let transposed = transposes_tiles(count, channels) && {
        transpose_tiles(o, t, nr, channels);
        true
    };
    // Segments of the tiles within one tile row: i0..i1, at tile row ty from column tx0.
    let mut i0 = 0;
    while i0 < count {
        let (ty, tx0) = ((t0 + i0) / g.tw, (t0 + i0) % g.tw);
        let i1 = count.min(i0 + g.tw - tx0);
        let rows = side.min(g.oh - side * ty);
        let (x0, x1) = (side * tx0, ow.min(side * (tx0 + i1 - i0)));
        for j in 0..channels {
            let co = c0 + j;
            for r in 0..rows {
                let offset = (co * g.oh + side * ty + r) * ow + x0;
                // SAFETY: per the contract, this run of channel co's output row is ours.
                let run = unsafe { std::slice::from_raw_parts_mut(y.add(offset), x1 - x0) };
                if transposed && side == 2 && run.len() == 16 {
                    // A whole group of 8 tiles (unrolled).
                    let (left, right) = (&t[2 * r][j * 8..j * 8 + 8], &t[2 * r + 1][j * 8..j * 8 + 8]);
                    for i in 0..8 {
                        run[2 * i] = left[i];
                        run[2 * i + 1] = right[i];
                    }
                } else if transposed && side == 4 && run.len() == 32 {
                    // A whole group of 8 tiles of F(4x4, 3x3).
                    let cols: [&[f32]; 4] = std::array::from_fn(|s| &t[4 * r + s][j * 8..j * 8 + 8]);
                    for i in 0..8 {
                        for s in 0..4 {
                            run[4 * i + s] = cols[s][i];
                        }
                    }
                } else if transposed {
                    // Tiles i0..i1 of the group, `side` values each; the last may be cut by
                    // the map's edge.
                    for (i, cell) in run.chunks_mut(side).enumerate() {
                        for (s, v) in cell.iter_mut().enumerate() {
                            *v = t[side * r + s][j * 8 + i0 + i];
                        }
                    }
                } else {
                    for (x, v) in run.iter_mut().enumerate() {
                        *v = o[side * r + x % side][(i0 + x / side) * nr + j];
                    }
                }
                if !ep.rest_is_identity() {
                    ep.apply_rest(run, co, y0 + offset);
                }
            }
        }
        i0 = i1;
    }
}

/// `t[k][j * 8 + i] = o[k][i * nr + j]` for every output `k` of `o`, 8 tiles `i` and `channels`
/// channels `j` (a multiple of 8), by 8 x 8 AVX2 transposes; only called where
/// [`transposes_tiles`] holds.
fn transpose_tiles(o: &[[f32; MAX_TILE]], t: &mut [[f32; MAX_TILE]], nr: usize, channels: usize) {
    assert!(channels <= nr && 8 * nr <= MAX_TILE && t.len() >= o.len(), "transpose_tiles: tile too large");
    #[cfg(target_arch = "x86_64")]
    {
        assert!(std::is_x86_feature_detected!("avx2"), "transpose_tiles: needs AVX2");
        for (k, t) in t.iter_mut().take(o.len()).enumerate() {
            for j0 in (0..channels / 8 * 8).step_by(8) {
                let rows: [*const f32; 8] = std::array::from_fn(|i| o[k][i * nr + j0..].as_ptr());
                // SAFETY: AVX2 (asserted); rows i < 8 hold nr >= j0 + 8 values from i * nr;
                // t[k] holds (j0 + 8) * 8 <= nr * 8 <= MAX_TILE values.
                unsafe { crate::cpu::conv::transpose_8x8_avx2(rows, t[j0 * 8..].as_mut_ptr(), 8) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (o, t);
        unreachable!("transpose_tiles: x86-64 only (transposes_tiles)");
    }
}

/// Whether [`store_outputs`] goes through 8 x 8 transposes: at most 8 tiles, whole groups of 8
/// channels, and a CPU with AVX2.
fn transposes_tiles(count: usize, channels: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        count <= 8 && channels.is_multiple_of(8) && std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (count, channels);
        false
    }
}

/// Dispatches to the tile side's input transform (`f4` for 4x4 tiles).
fn transform_inputs(g: &Geometry, padded: &[f32], t0: usize, count: usize, v: &mut [f32]) {
    if g.side == 4 {
        f4::transform_inputs(g, padded, t0, count, v)
    } else {
        transform_inputs_f2(g, padded, t0, count, v)
    }
}

vectorised! {
/// `V[xi][i][ci] = (B^T d B)[xi]` for the `count` tiles `t0 + i` (flattened), `d` the 4x4
/// window of channel `ci` at the tile's corner in the pixel-major padded input,
/// `B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`; `mr * cin` values per position.
fn transform_inputs_f2(g: &Geometry, padded: &[f32], t0: usize, count: usize, v: &mut [f32]) => transform_inputs_with
}

#[inline(always)]
fn transform_inputs_with(g: &Geometry, padded: &[f32], t0: usize, count: usize, v: &mut [f32]) {
    let (cin, wp) = (g.cin, g.wp);
    let stride = g.mr * cin;
    assert!(count <= g.mr && v.len() >= POSITIONS * stride, "winograd: V too short");
    for i in 0..count {
        let (ty, tx) = ((t0 + i) / g.tw, (t0 + i) % g.tw);
        let corner = (2 * ty * wp + 2 * tx) * cin;
        // The window's last pixel ends inside the padded map (rounded up to whole tiles).
        assert!(corner + (3 * wp + 4) * cin <= padded.len(), "winograd: window out of bounds");
        let src = padded[corner..].as_ptr();
        let dst = v[i * cin..].as_mut_ptr();
        for ci in 0..cin {
            // SAFETY: window pixel (r, c) of channel ci is at (r * wp + c) * cin + ci from the
            // corner, inside `padded` (asserted above); position xi's value goes to
            // xi * stride + i * cin + ci < v.len() (asserted above). Unchecked, so that the
            // loop over channels vectorises.
            unsafe {
                let d = |r: usize, c: usize| *src.add((r * wp + c) * cin + ci);
                // Columns: B^T d.
                let mut s = [0.0f32; 16];
                for c in 0..4 {
                    let (d0, d1, d2, d3) = (d(0, c), d(1, c), d(2, c), d(3, c));
                    s[c] = d0 - d2;
                    s[4 + c] = d1 + d2;
                    s[8 + c] = d2 - d1;
                    s[12 + c] = d1 - d3;
                }
                // Rows: (B^T d) B.
                for r in 0..4 {
                    let (a0, a1, a2, a3) = (s[4 * r], s[4 * r + 1], s[4 * r + 2], s[4 * r + 3]);
                    *dst.add((4 * r) * stride + ci) = a0 - a2;
                    *dst.add((4 * r + 1) * stride + ci) = a1 + a2;
                    *dst.add((4 * r + 2) * stride + ci) = a2 - a1;
                    *dst.add((4 * r + 3) * stride + ci) = a1 - a3;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{item_blocks, panel_parts, BLOCK_VALUES, SMALL_U_VALUES};

    #[test]
    fn item_blocks_cover_the_items_within_the_budget() {
        // ResNet's 256-channel layers on 10 x 8 maps: three items of 8 tiles, one block.
        let u = |cin: usize, cout: usize| 16 * cin * cout;
        assert_eq!(item_blocks(3, 16 * 8 * 256, u(256, 256), 2), (1, 3));
        // 41 items of 8 tiles x 128 channels, 8 to a block: six blocks on two threads, six on
        // three, one thread as it comes.
        assert_eq!(item_blocks(41, 16 * 8 * 128, u(128, 128), 2), (6, 7));
        assert_eq!(item_blocks(41, 16 * 8 * 128, u(128, 128), 3), (6, 7));
        assert_eq!(item_blocks(41, 16 * 8 * 128, u(128, 128), 1), (6, 7));
        assert_eq!(item_blocks(43, 16 * 8 * 128, u(128, 128), 2), (6, 8));
        // Small transformed weights: one item per block (the most tasks).
        assert_eq!(item_blocks(12, 16 * 8 * 64, u(64, 32), 2), (12, 1));
        for items in [1, 2, 7, 40, 41, 200] {
            for v_item in [1, 8192, 32768, BLOCK_VALUES + 1] {
                for threads in [1, 2, 3, 4] {
                    let (blocks, per_block) = item_blocks(items, v_item, SMALL_U_VALUES + 1, threads);
                    assert!(blocks * per_block >= items && (blocks - 1) * per_block < items);
                    assert!(per_block == 1 || per_block * v_item <= BLOCK_VALUES, "{items} {v_item} {threads}");
                }
            }
        }
        assert_eq!(item_blocks(0, 8192, SMALL_U_VALUES + 1, 2).0, 0);
    }

    #[test]
    fn panel_parts_balance_the_threads() {
        // Groups that already share the threads evenly, or one thread: no split.
        assert_eq!(panel_parts(2, 2, 16), 1);
        assert_eq!(panel_parts(40, 2, 16), 1);
        assert_eq!(panel_parts(3, 1, 16), 1);
        // Three groups on two threads (ResNet's 10x8 maps): two parts, the time of 1.5 groups.
        assert_eq!(panel_parts(3, 2, 16), 2);
        assert_eq!(panel_parts(5, 2, 8), 2);
        // Never more parts than panels.
        assert_eq!(panel_parts(3, 2, 1), 1);
        assert_eq!(panel_parts(1, 3, 2), 2);
    }
}
