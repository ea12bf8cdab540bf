//! The weight gradient of a 3x3, stride-1, padding-1 convolution in the Winograd F(2x2, 3x3)
//! domain (Lavin and Gray 2016, as the forward pass in [`super::winograd`]):
//!
//! `Y = A^T [U . V] A` per 2x2 output tile, `U = G g G^T`, `V = B^T d B`, so
//! `dU = sum over tiles of (A dY A^T) . V` (one matrix product per position of the 4x4 tile,
//! `cout x tiles` times `tiles x cin`) and `dg = G^T dU G`.
//!
//! Why: the direct weight gradient (`super::weight_grad`) runs at 55-70 GFLOP/s on one AVX-512
//! thread whatever the map size (`examples/conv_grad_profile`): its tiles of 4 output channels x 3
//! taps load 7 vectors per 12 multiply-adds. Here the work is 16 products of depth `tiles` through
//! the matrix-product kernels, with 4 instead of 9 multiply-adds per output pixel and channel
//! pair; the transforms only add and subtract.
//!
//! Two drivers: [`accumulate`] adds a few items' gradient to a thread's partial dW (blocks of
//! tiles within L2), [`batch`] takes a whole batch on the pool when the maps are small and the
//! channels many (see [`batch_fits`]).
//!
//! Positions are numbered `4 i + j`, `i` the tile's row transform, `j` its column transform.

use super::conv::zero_padded_pixel_major_to;
use super::gemm::{matmul, Mat, MatMut, Parallelism};

/// Positions of the 4x4 transformed tile.
const POSITIONS: usize = 16;

/// Input and output channels from which this path is taken. Below, the 16 products are too
/// thin for the product kernels' tiles: one AVX-512 thread, batch 16, ms for the direct path ->
/// this one (`examples/conv_grad_profile`): 16 -> 16 at 64x64 4.7 -> 7.2, 16 -> 32 at 64x64
/// 9.2 -> 11.1, 32 -> 16 at 64x64 9.5 -> 9.0 (with the AVX2 kernel 10.8 -> 11.9), 64 -> 32 at
/// 64x64 41.1 -> 22.1 (AVX2 37.6 -> 28.2), 32 -> 32 at 32x32 4.2 -> 2.8 (4.6 -> 4.0), 64 -> 64
/// at 32x32 12.3 -> 7.8 (18.2 -> 10.7), 128 -> 128 at 16x16 13.3 -> 6.6 (18.9 -> 9.5).
const MIN_IN_CHANNELS: usize = 32;
const MIN_OUT_CHANNELS: usize = 32;

/// Transformed values (inputs and output gradients) per block of tiles: within L2.
const BLOCK_VALUES: usize = 256 << 10;

/// The fewest tiles in a block (its products' depth), even past [`BLOCK_VALUES`]. Each block's
/// 16 products read and write all of dU (4 MiB for 256 -> 256 channels), so shallow blocks are
/// bound by that traffic: ResNet-18's 256-channel layers at 8x8 have 16 tiles per item, which
/// blocks of one item each made products of depth 16. Blocks across items, batch 16, weight
/// gradient alone, paired in one process (session 39, Zen 4): 10.1-16.1 -> 8.8-10.9 ms on two
/// threads, 14.8-18.1 -> 13.7-17.0 on one.
const MIN_BLOCK_TILES: usize = 64;

/// Tiles per block for `cin -> cout` channels: as many as [`BLOCK_VALUES`] holds, at least
/// [`MIN_BLOCK_TILES`].
fn block_tiles(cin: usize, cout: usize) -> usize {
    let fit = BLOCK_VALUES / (POSITIONS * (cin + cout));
    fit.max(MIN_BLOCK_TILES)
}

/// Whether output maps `[oh, ow]` have enough tiles per item for [`accumulate`] (a convolution
/// that [`fits_kernel`]): at least 8x8 (16 tiles).
pub(crate) fn maps_fit_items([oh, ow]: [usize; 2]) -> bool {
    oh >= 8 && ow >= 8
}

/// Whether a convolution with `cin` -> `cout` channels, `kernel`, `stride`, `padding`,
/// `dilation` and `groups` is one these transforms compute: 3x3, stride 1, padding 1, dilation
/// 1, one group, at least [`MIN_IN_CHANNELS`] and [`MIN_OUT_CHANNELS`]. [`batch`] takes it on
/// any map size where [`batch_fits`] (its product runs over the whole batch's tiles);
/// [`accumulate`] where [`maps_fit_items`].
pub(crate) fn fits_kernel(
    [cin, cout]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> bool {
    kernel == [3, 3]
        && stride == [1, 1]
        && padding == [1, 1]
        && dilation == [1, 1]
        && groups == 1
        && cin >= MIN_IN_CHANNELS
        && cout >= MIN_OUT_CHANNELS
}

/// Adds the weight gradient of `items` batch items to `dwt`, column-major (`dwt[p * cout + o]`,
/// `p = (ci * 3 + ky) * 3 + kx`, the layout `autodiff::conv_backward` keeps dW in). `x` holds the
/// items' inputs `[items, cin, h, w]`, `dy` their output gradients `[items, cout, h, w]`.
pub(crate) fn accumulate(x: &[f32], dy: &[f32], [items, cin, h, w]: [usize; 4], cout: usize, dwt: &mut [f32]) {
    assert!(x.len() >= items * cin * h * w && dy.len() >= items * cout * h * w, "winograd_grad: inputs too short");
    assert!(dwt.len() >= cin * 9 * cout, "winograd_grad: dW too small");
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    if items == 0 || th == 0 || tw == 0 || cin == 0 || cout == 0 {
        return;
    }
    // Tiles are gathered across items into blocks of `cap`, each block one product per
    // position: every product reads and writes all of dU (`cout x cin`), so its depth (the
    // block's tiles) must be large enough that the product, not that traffic, sets the time.
    let cap = block_tiles(cin, cout).min(items * th * tw);
    let mut du = vec![0.0f32; POSITIONS * cout * cin];
    // Transformed values, one slice per position, tile-major within: `v[pos][t * cin + ci]`,
    // `m[pos][t * cout + o]`, so that both sides of each product are read along their rows
    // (channels) when the product kernels pack them.
    let (mut v_values, mut m_values) = (vec![0.0f32; POSITIONS * cap * cin], vec![0.0f32; POSITIONS * cap * cout]);
    let mut v: Vec<&mut [f32]> = v_values.chunks_mut(cap * cin).collect();
    let mut m: Vec<&mut [f32]> = m_values.chunks_mut(cap * cout).collect();
    let mut tmp = vec![0.0f32; POSITIONS * cin.max(cout)];
    let mut filled = 0;
    let flush = |du: &mut [f32], v: &[&mut [f32]], m: &[&mut [f32]], filled: usize| {
        for pos in 0..POSITIONS {
            matmul(
                MatMut::rows(&mut du[pos * cout * cin..][..cout * cin], cout, cin, cin),
                Mat::transposed(&m[pos][..filled * cout], cout, filled, cout),
                Mat::rows(&v[pos][..filled * cin], filled, cin, cin),
                true,
                Parallelism::None,
            );
        }
    };
    for b in 0..items {
        let maps = ItemMaps::new(x, dy, b, [cin, h, w], cout);
        for t in 0..th * tw {
            maps.transform(t, &mut tmp, &mut v, &mut m, filled);
            filled += 1;
            if filled == cap {
                flush(&mut du, &v, &m, filled);
                filled = 0;
            }
        }
    }
    if filled > 0 {
        flush(&mut du, &v, &m, filled);
    }
    for o in 0..cout {
        for ci in 0..cin {
            let g = kernel_gradient(|pos| du[(pos * cout + o) * cin + ci]);
            for (tap, value) in g.into_iter().enumerate() {
                dwt[(ci * 9 + tap) * cout + o] += value;
            }
        }
    }
}

/// Values up to which [`batch`] takes a whole batch at once, dU included (48 MiB).
const BATCH_MAX_VALUES: usize = 12 << 20;

/// Whether [`batch`] takes a batch of `items` inputs `[cin, h, w]` and `cout` output channels:
/// when dU is large against the transformed tiles (at most four times fewer values than dU, in
/// all the batch's tiles: few tiles, many channels), and all of them fit in
/// [`BATCH_MAX_VALUES`]. Batch 16, weight gradient alone, ms of [`accumulate`] on each thread's
/// items -> [`batch`], medians paired in one process on a Zen 4 (session 39), two threads (one):
/// 256 -> 256 channels at 8x8 6.4-6.6 -> 4.2 (11.5-11.7 -> 8.6-9.6), at 10x8 8.2-8.9 -> 5.4
/// (11.8-12.0 -> 10.6-10.7), 128 -> 128 at 8x8 1.43 -> 1.06 (2.57 -> 2.67-2.87, the one loss
/// taken). With more tile values than that (measured before the ratio test existed) it gained less
/// or lost, [`accumulate`]'s blocks staying in L2: 128 at 12x8 2.1 -> 1.8 (3.5 -> 3.8), 128 at
/// 16x16 4.5 -> 5.3 (8.9 -> 12.0), 64 at 32x32 5.1 -> 8.5 (9.6 -> 17.2).
pub(crate) fn batch_fits([items, cin, h, w]: [usize; 4], cout: usize) -> bool {
    let tiles = items * h.div_ceil(2) * w.div_ceil(2);
    let transformed = POSITIONS * tiles * (cin + cout);
    transformed <= 4 * POSITIONS * cin * cout && transformed + POSITIONS * cin * cout <= BATCH_MAX_VALUES
}

/// The weight gradient of a whole batch, in the weight's layout (`[cout, cin, 3, 3]`), on
/// rayon's pool: the items' tiles transformed side by side, then one product per position over
/// every tile of the batch (16 tasks), then dU back to dW by output channel. Where the maps are
/// small and the channels many (ResNet-18's 256 channels at 8x8: 16 tiles per item), the
/// threads of [`accumulate`] each kept a dU of their own (4 MiB there), wrote it once per block
/// and summed them at the end; here dU is written once and split, and no partial sums remain.
/// `x` holds the inputs `[items, cin, h, w]`, `dy` the output gradients `[items, cout, h, w]`.
pub(crate) fn batch(x: &[f32], dy: &[f32], [items, cin, h, w]: [usize; 4], cout: usize) -> Vec<f32> {
    assert!(x.len() >= items * cin * h * w && dy.len() >= items * cout * h * w, "winograd_grad: inputs too short");
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let per_item = th * tw;
    let tiles = items * per_item;
    if tiles == 0 || cin == 0 || cout == 0 {
        return vec![0.0; cout * cin * 9];
    }
    let mut v_values = super::buffer::overwritten(POSITIONS * tiles * cin);
    let mut m_values = super::buffer::overwritten(POSITIONS * tiles * cout);
    let (v_pieces, m_pieces) =
        (by_item(&mut v_values, items, per_item * cin), by_item(&mut m_values, items, per_item * cout));
    let mut pieces: Vec<_> = v_pieces.into_iter().zip(m_pieces).collect();
    super::parallel::for_each_chunk_mut(&mut pieces, 1, 1, |b, piece| {
        let (v, m) = &mut piece[0];
        let maps = ItemMaps::new(x, dy, b, [cin, h, w], cout);
        let mut tmp = vec![0.0f32; POSITIONS * cin.max(cout)];
        for t in 0..per_item {
            maps.transform(t, &mut tmp, v, m, t);
        }
    });
    let mut du = super::buffer::overwritten(POSITIONS * cout * cin);
    super::parallel::for_each_chunk_mut(&mut du, cout * cin, 1, |pos, du| {
        matmul(
            MatMut::rows(du, cout, cin, cin),
            Mat::transposed(&m_values[pos * tiles * cout..][..tiles * cout], cout, tiles, cout),
            Mat::rows(&v_values[pos * tiles * cin..][..tiles * cin], tiles, cin, cin),
            false,
            Parallelism::None,
        );
    });
    let mut dw = super::buffer::overwritten(cout * cin * 9);
    super::parallel::for_each_chunk_mut(&mut dw, cin * 9, 1, |o, row| {
        for (ci, taps) in row.chunks_exact_mut(9).enumerate() {
            taps.copy_from_slice(&kernel_gradient(|pos| du[(pos * cout + o) * cin + ci]));
        }
    });
    dw
}

/// Item b's share of every position's slice of `values` (`POSITIONS` slices of `items` runs of
/// `run` values): `pieces[b][pos]`, disjoint, so that the items' transforms run in parallel.
fn by_item(values: &mut [f32], items: usize, run: usize) -> Vec<Vec<&mut [f32]>> {
    let mut pieces: Vec<Vec<&mut [f32]>> = (0..items).map(|_| Vec::with_capacity(POSITIONS)).collect();
    for slice in values.chunks_mut(items * run) {
        for (b, piece) in slice.chunks_mut(run).enumerate() {
            pieces[b].push(piece);
        }
    }
    pieces
}

/// `dg = G^T dU G` for one (output, input) channel pair, `du(pos)` its transformed gradient at
/// each position; the nine taps row by row. `G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]`:
/// `G^T u` for a 4-vector `u` is `[u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3]`.
#[inline(always)]
fn kernel_gradient(du: impl Fn(usize) -> f32) -> [f32; 9] {
    let gt = |u: [f32; 4]| [u[0] + 0.5 * (u[1] + u[2]), 0.5 * (u[1] - u[2]), 0.5 * (u[1] + u[2]) + u[3]];
    // Over j for each i (G on the right), then over i (G^T on the left).
    let half: [[f32; 3]; 4] = std::array::from_fn(|i| gt(std::array::from_fn(|j| du(4 * i + j))));
    let mut g = [0.0f32; 9];
    for kx in 0..3 {
        let col = gt(std::array::from_fn(|i| half[i][kx]));
        for (ky, value) in col.into_iter().enumerate() {
            g[ky * 3 + kx] = value;
        }
    }
    g
}

/// One item's maps for the tile transforms: pixel-major copies (channels innermost) of its input
/// with the padding of 1 and of its output gradient padded to whole tiles, zero outside the maps.
struct ItemMaps {
    xp: Vec<f32>,
    gp: Vec<f32>,
    tw: usize,
    cin: usize,
    cout: usize,
}

impl ItemMaps {
    /// Item `b` of `x` (`[.., cin, h, w]`) and `dy` (`[.., cout, h, w]`).
    fn new(x: &[f32], dy: &[f32], b: usize, [cin, h, w]: [usize; 3], cout: usize) -> Self {
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let xp = zero_padded_pixel_major_to(
            |ci| &x[(b * cin + ci) * h * w..][..h * w],
            [cin, h, w],
            [1, 1],
            [2 * th + 2, 2 * tw + 2],
            None,
        );
        let gp = zero_padded_pixel_major_to(
            |o| &dy[(b * cout + o) * h * w..][..h * w],
            [cout, h, w],
            [0, 0],
            [2 * th, 2 * tw],
            None,
        );
        ItemMaps { xp, gp, tw, cin, cout }
    }

    /// Transforms tile `t` (row-major over the item's tiles) into slot `slot` of every
    /// position's slice of `v` (inputs) and `m` (output gradients); `tmp` is scratch.
    fn transform(&self, t: usize, tmp: &mut [f32], v: &mut [&mut [f32]], m: &mut [&mut [f32]], slot: usize) {
        let (tw, cin, cout) = (self.tw, self.cin, self.cout);
        let (ty, tx) = (t / tw, t % tw);
        let (wp, gw) = (2 * tw + 2, 2 * tw);
        let window = |i: usize, j: usize| &self.xp[((2 * ty + i) * wp + 2 * tx + j) * cin..][..cin];
        input_tile(window, &mut tmp[..POSITIONS * cin], v, slot);
        let grad = |i: usize, j: usize| &self.gp[((2 * ty + i) * gw + 2 * tx + j) * cout..][..cout];
        gradient_tile(grad, &mut tmp[..POSITIONS * cout], m, slot);
    }
}

/// `V = B^T d B` of one tile, every channel at once: `window(i, j)` is the 4x4 window's pixel
/// (row `i`, column `j`) as a run of channels; position `pos` goes to `dst[pos][t * c..]`.
/// `B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`.
fn input_tile<'a>(window: impl Fn(usize, usize) -> &'a [f32], tmp: &mut [f32], dst: &mut [&mut [f32]], t: usize) {
    let c = tmp.len() / POSITIONS;
    let at = |pos: usize| (pos * c)..(pos + 1) * c;
    let out = |_pos: usize| t * c..(t + 1) * c;
    // tmp[4 i + j] = row i of B^T applied down column j.
    for j in 0..4 {
        let (d0, d1, d2, d3) = (window(0, j), window(1, j), window(2, j), window(3, j));
        combine(&mut tmp[at(j)], d0, d2, -1.0);
        combine(&mut tmp[at(4 + j)], d1, d2, 1.0);
        combine(&mut tmp[at(8 + j)], d2, d1, -1.0);
        combine(&mut tmp[at(12 + j)], d1, d3, -1.0);
    }
    for i in 0..4 {
        let row = |j: usize| &tmp[at(4 * i + j)];
        combine(&mut dst[4 * i][out(4 * i)], row(0), row(2), -1.0);
        combine(&mut dst[4 * i + 1][out(4 * i + 1)], row(1), row(2), 1.0);
        combine(&mut dst[4 * i + 2][out(4 * i + 2)], row(2), row(1), -1.0);
        combine(&mut dst[4 * i + 3][out(4 * i + 3)], row(1), row(3), -1.0);
    }
}

/// `A dY A^T` of one 2x2 tile, every channel at once (`grad(i, j)` the tile's output pixel as a
/// run of channels; destinations as for [`input_tile`]), `A = [1 0; 1 1; 1 -1; 0 -1]`.
fn gradient_tile<'a>(grad: impl Fn(usize, usize) -> &'a [f32], tmp: &mut [f32], dst: &mut [&mut [f32]], t: usize) {
    let c = tmp.len() / POSITIONS;
    let at = |pos: usize| (pos * c)..(pos + 1) * c;
    let out = |_pos: usize| t * c..(t + 1) * c;
    // tmp[4 i + j], j < 2: row i of A applied down column j: g0, g0 + g1, g0 - g1, -g1.
    for j in 0..2 {
        let (g0, g1) = (grad(0, j), grad(1, j));
        tmp[at(j)].copy_from_slice(g0);
        combine(&mut tmp[at(4 + j)], g0, g1, 1.0);
        combine(&mut tmp[at(8 + j)], g0, g1, -1.0);
        combine(&mut tmp[at(12 + j)], g1, g1, -2.0);
    }
    for i in 0..4 {
        let (a, b) = (&tmp[at(4 * i)], &tmp[at(4 * i + 1)]);
        dst[4 * i][out(4 * i)].copy_from_slice(a);
        combine(&mut dst[4 * i + 1][out(4 * i + 1)], a, b, 1.0);
        combine(&mut dst[4 * i + 2][out(4 * i + 2)], a, b, -1.0);
        combine(&mut dst[4 * i + 3][out(4 * i + 3)], b, b, -2.0);
    }
}

/// `dst = a + s * b` elementwise (`s` is 1, -1 or -2: exact).
#[inline(always)]
fn combine(dst: &mut [f32], a: &[f32], b: &[f32], s: f32) {
    for (d, (&a, &b)) in dst.iter_mut().zip(a.iter().zip(b)) {
        *d = a + s * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The weight gradient by its definition in f64 (zero padding 1), column-major as
    /// [`accumulate`] keeps it: `want[(ci * 9 + tap) * cout + o]`.
    fn definition(x: &[f32], dy: &[f32], [items, cin, h, w]: [usize; 4], cout: usize) -> Vec<f64> {
        let mut want = vec![0.0f64; cin * 9 * cout];
        for b in 0..items {
            for o in 0..cout {
                for ci in 0..cin {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let mut s = 0.0f64;
                            for y in 0..h {
                                for xo in 0..w {
                                    let (iy, ix) = (y as isize + ky as isize - 1, xo as isize + kx as isize - 1);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    s += dy[((b * cout + o) * h + y) * w + xo] as f64
                                        * x[((b * cin + ci) * h + iy as usize) * w + ix as usize] as f64;
                                }
                            }
                            want[((ci * 3 + ky) * 3 + kx) * cout + o] += s;
                        }
                    }
                }
            }
        }
        want
    }

    /// Against the definition in f64, onto a non-zero dW, on maps with odd and even sides
    /// (partial tiles on the right and bottom), several items, channel counts off the product
    /// kernels' tiles. Tolerance 1e-4 relative to the largest gradient (sums of up to ~1000
    /// products of values in [-1, 1]; the transforms add at most 4 terms each way).
    #[test]
    fn matches_the_definition() {
        let mut rng = Rng::new(41);
        // The last case spans blocks of 64 tiles (`MIN_BLOCK_TILES`) over items of 25: the
        // first block ends inside the third item.
        let cases = [(1, 32, 16, 8, 8), (2, 17, 19, 9, 11), (3, 20, 33, 12, 10), (1, 40, 3, 3, 5), (5, 40, 300, 10, 9)];
        for &(items, cin, cout, h, w) in &cases {
            let x = rng.vec(items * cin * h * w, -1.0, 1.0);
            let dy = rng.vec(items * cout * h * w, -1.0, 1.0);
            let want = definition(&x, &dy, [items, cin, h, w], cout);
            let mut got = vec![0.25f32; cin * 9 * cout];
            accumulate(&x, &dy, [items, cin, h, w], cout, &mut got);
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - 0.25 - w).abs() <= 1e-4 * scale,
                    "{items}x{cin}->{cout} {h}x{w} at {i}: {} vs {w}",
                    *g as f64 - 0.25
                );
            }
        }
    }

    /// [`batch`] against the definition, same tolerance, in the weight's layout; with the
    /// buffers poisoned (NaN), so that a value it leaves unwritten fails. The cases take it
    /// (`batch_fits`) but the second, which checks that the function stands on its own.
    #[test]
    fn batch_matches_the_definition() {
        let mut rng = Rng::new(43);
        // Maps under 8x8 (which only this path takes): 4x4 as ResNet-18's last stage at
        // 128x128, and sides of 1 to 3 (partial and single tiles).
        let cases = [
            (2, 32, 33, 9, 10, true),
            (3, 40, 36, 8, 8, true),
            (1, 5, 7, 7, 9, false),
            (4, 64, 48, 5, 6, true),
            (6, 48, 40, 4, 4, true),
            (3, 36, 33, 2, 3, true),
            (5, 32, 40, 1, 5, true),
        ];
        for &(items, cin, cout, h, w, fits) in &cases {
            assert_eq!(batch_fits([items, cin, h, w], cout), fits, "{items}x{cin}->{cout} {h}x{w}");
            let x = rng.vec(items * cin * h * w, -1.0, 1.0);
            let dy = rng.vec(items * cout * h * w, -1.0, 1.0);
            let want = definition(&x, &dy, [items, cin, h, w], cout);
            crate::cpu::buffer::poison_fresh_buffers(true);
            let got = batch(&x, &dy, [items, cin, h, w], cout);
            crate::cpu::buffer::poison_fresh_buffers(false);
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for o in 0..cout {
                for ci in 0..cin {
                    for tap in 0..9 {
                        let (g, w) = (got[(o * cin + ci) * 9 + tap] as f64, want[(ci * 9 + tap) * cout + o]);
                        assert!(
                            (g - w).abs() <= 1e-4 * scale,
                            "{items}x{cin}->{cout} {h}x{w} ({o}, {ci}, {tap}): {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
