//! The transforms of Winograd F(4x4, 3x3) (Lavin and Gray, CVPR 2016; interpolation points 0,
//! 1, -1, 2, -2 and infinity): 4x4 output tiles from 6x6 input windows, 36 products per tile
//! and channel pair instead of 144 (2.25 per output against F(2x2, 3x3)'s 4).
//!
//! `B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]`,
//! `G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]`,
//! `A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]`.
//! The factors (up to 8 in `A`, 5 in `B`) cost precision in f32 (about 20 times F(2x2, 3x3)'s
//! largest error on 64-channel layers), which is why only inference takes these tiles
//! (`super::TileChoice`); they are taken on large maps only, for speed (`super::variant_for`).
//! The kernel transform runs in f64.

use super::{Geometry, MAX_OUTPUTS, MAX_POSITIONS, MAX_TILE};

/// Positions of the transformed 6x6 domain (one matrix product each).
pub(super) const POSITIONS: usize = 36;

/// `G g G^T` for a 3x3 kernel `g` (row-major), computed in f64 and rounded once.
pub(super) fn transform_kernel(g: &[f32]) -> [f32; POSITIONS] {
    let col = |a: f64, b: f64, c: f64| -> [f64; 6] {
        [
            a / 4.0,
            -(a + b + c) / 6.0,
            -(a - b + c) / 6.0,
            a / 24.0 + b / 12.0 + c / 6.0,
            a / 24.0 - b / 12.0 + c / 6.0,
            c,
        ]
    };
    let g = |i: usize| f64::from(g[i]);
    // gg[j][i] = (G g)[i][j], then u[i][k] = ((G g) G^T)[i][k].
    let gg: [[f64; 6]; 3] = std::array::from_fn(|j| col(g(j), g(3 + j), g(6 + j)));
    let mut u = [0.0f32; POSITIONS];
    for i in 0..6 {
        for (k, v) in col(gg[0][i], gg[1][i], gg[2][i]).into_iter().enumerate() {
            u[6 * i + k] = v as f32;
        }
    }
    u
}

/// `B^T d` for a 6-vector `d`.
#[inline(always)]
fn input_rows(d: [f32; 6]) -> [f32; 6] {
    let (d0, d1, d2, d3, d4, d5) = (d[0], d[1], d[2], d[3], d[4], d[5]);
    [
        4.0 * d0 - 5.0 * d2 + d4,
        -4.0 * (d1 + d2) + d3 + d4,
        4.0 * (d1 - d2) - d3 + d4,
        2.0 * (d3 - d1) - d2 + d4,
        2.0 * (d1 - d3) - d2 + d4,
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// `A^T m` for a 6-vector `m`.
#[inline(always)]
fn output_rows(m: [f32; 6]) -> [f32; 4] {
    let (a, b) = (m[1] + m[2], m[1] - m[2]);
    let (c, d) = (m[3] + m[4], m[3] - m[4]);
    [m[0] + a + c, b + 2.0 * d, a + 4.0 * c, b + 8.0 * d + m[5]]
}

vectorised! {
/// `V[xi][i][ci] = (B^T d B)[xi]` for the `count` tiles `t0 + i` (flattened), `d` the 6x6
/// window of channel `ci` at the tile's corner in the pixel-major padded input; `mr * cin`
/// values per position (as `super::transform_inputs` for 2x2 tiles).
pub(super) fn transform_inputs(g: &Geometry, padded: &[f32], t0: usize, count: usize, v: &mut [f32]) => transform_inputs_with
}

#[inline(always)]
fn transform_inputs_with(g: &Geometry, padded: &[f32], t0: usize, count: usize, v: &mut [f32]) {
    let (cin, wp) = (g.cin, g.wp);
    let stride = g.mr * cin;
    assert!(count <= g.mr && v.len() >= POSITIONS * stride, "winograd f4: V too short");
    // (B^T d) one column at a time, whole runs of channels per step (vectorised along them):
    // tmp[(r * 6 + c) * cin..] is row r of column c.
    let mut tmp = crate::cpu::buffer::overwritten(POSITIONS * cin);
    for i in 0..count {
        let (ty, tx) = ((t0 + i) / g.tw, (t0 + i) % g.tw);
        let corner = (4 * ty * wp + 4 * tx) * cin;
        // The window's last pixel ends inside the padded map (rounded up to whole tiles).
        assert!(corner + (5 * wp + 6) * cin <= padded.len(), "winograd f4: window out of bounds");
        let src = padded[corner..].as_ptr();
        let t = tmp.as_mut_ptr();
        let dst = v[i * cin..].as_mut_ptr();
        for c in 0..6 {
            // SAFETY: window pixel (r, c) of the tile's channels is the run of cin values at
            // (r * wp + c) * cin from the corner, inside `padded` (asserted above); tmp holds
            // 36 runs of cin.
            unsafe {
                let rows: [*const f32; 6] = std::array::from_fn(|r| src.add((r * wp + c) * cin));
                input_runs(rows, std::array::from_fn(|r| t.add((r * 6 + c) * cin)), cin);
            }
        }
        for r in 0..6 {
            // SAFETY: tmp's runs (above); position 6 r + c of this tile goes to
            // (6 r + c) * stride + i * cin .. + cin <= v.len() (asserted above).
            unsafe {
                let cols: [*const f32; 6] = std::array::from_fn(|c| t.add((r * 6 + c) * cin) as *const f32);
                input_runs(cols, std::array::from_fn(|c| dst.add((6 * r + c) * stride)), cin);
            }
        }
    }
    crate::cpu::buffer::recycle(tmp);
}

/// `out[k][ci] = (B^T d)[k]` with `d[j] = src[j][ci]`, for `ci < len`.
///
/// # Safety
/// Each `src[j]` must be readable and each `out[k]` writable for `len` values, the outputs
/// disjoint from each other and from the inputs.
#[inline(always)]
unsafe fn input_runs(src: [*const f32; 6], out: [*mut f32; 6], len: usize) {
    for ci in 0..len {
        // SAFETY: forwarded contract.
        unsafe {
            // (Explicit arrays: `std::array::from_fn` here stayed a call per value.)
            let d =
                [*src[0].add(ci), *src[1].add(ci), *src[2].add(ci), *src[3].add(ci), *src[4].add(ci), *src[5].add(ci)];
            let r = input_rows(d);
            for k in 0..6 {
                *out[k].add(ci) = r[k];
            }
        }
    }
}

vectorised! {
/// `o[k][q] = (A^T m A)[k]` for every value `q < len` of the tiles (`m[xi][q]`): the 16 outputs
/// (row-major) of each Winograd tile and channel.
pub(super) fn output_transform(m: &[[f32; MAX_TILE]; MAX_POSITIONS], o: &mut [[f32; MAX_TILE]; MAX_OUTPUTS], len: usize) => output_transform_with
}

#[inline(always)]
fn output_transform_with(m: &[[f32; MAX_TILE]; MAX_POSITIONS], o: &mut [[f32; MAX_TILE]; MAX_OUTPUTS], len: usize) {
    for q in 0..len.min(MAX_TILE) {
        // Columns: cols[c][k] = (A^T m)[k][c]. (Explicit arrays: `std::array::from_fn` in this
        // loop stayed a call per value.)
        let mut cols = [[0.0f32; 4]; 6];
        for (c, col) in cols.iter_mut().enumerate() {
            *col = output_rows([m[c][q], m[6 + c][q], m[12 + c][q], m[18 + c][q], m[24 + c][q], m[30 + c][q]]);
        }
        for k in 0..4 {
            let out = output_rows([cols[0][k], cols[1][k], cols[2][k], cols[3][k], cols[4][k], cols[5][k]]);
            o[4 * k][q] = out[0];
            o[4 * k + 1][q] = out[1];
            o[4 * k + 2][q] = out[2];
            o[4 * k + 3][q] = out[3];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tile through the three transforms against the direct 3x3 correlation, in f64 for
    /// the reference: the matrices above are the right ones (a wrong sign or factor gives an
    /// error of the order of the outputs). Random windows and kernels in [-1, 1]; tolerance
    /// 1e-5 (f32 transforms of single products).
    #[test]
    fn one_tile_matches_the_correlation() {
        let mut rng = crate::rng::Rng::new(7);
        for _ in 0..50 {
            let d = rng.vec(36, -1.0, 1.0);
            let g = rng.vec(9, -1.0, 1.0);
            let u = transform_kernel(&g);
            let cols: [[f32; 6]; 6] = std::array::from_fn(|c| input_rows(std::array::from_fn(|r| d[6 * r + c])));
            let mut vv = [0.0f32; 36];
            for r in 0..6 {
                let out = input_rows(std::array::from_fn(|c| cols[c][r]));
                vv[6 * r..6 * r + 6].copy_from_slice(&out);
            }
            let mut m = [[0.0f32; MAX_TILE]; MAX_POSITIONS];
            for xi in 0..POSITIONS {
                m[xi][0] = u[xi] * vv[xi];
            }
            let mut o = [[0.0f32; MAX_TILE]; MAX_OUTPUTS];
            output_transform_with(&m, &mut o, 1);
            for y in 0..4 {
                for x in 0..4 {
                    let want: f64 = (0..9).map(|t| f64::from(g[t]) * f64::from(d[(y + t / 3) * 6 + x + t % 3])).sum();
                    let got = f64::from(o[4 * y + x][0]);
                    assert!((got - want).abs() < 1e-5, "output ({y}, {x}): {got} vs {want}");
                }
            }
        }
    }
}
