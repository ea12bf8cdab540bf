// The tiled convolutions for adapters whose subgroups hold at least 4 invocations (SwiftShader's
// hold 4): the same tiles and loops as conv2d.wgsl, but the 16 weights of a tap are loaded by 4
// invocations, one vec4 each, and handed to the others by `subgroupBroadcast`. Why: a driver that cannot prove a load
// uniform across its lanes (SwiftShader's JIT cannot) loads it lane by lane, so the weights, 16
// floats per tap per invocation, were most of the loads; a broadcast is one SIMD shuffle.
//
// Appended to conv2d.wgsl (after common.wgsl and `enable subgroups;`) in a module of its own,
// compiled only on devices with the `subgroups` feature (src/gpu/kernels.rs).

// The 16 weights of the tap at `wi`: invocation l of each group of 4 loads vec4 l, and every
// invocation takes the four from the group's first four (`lane` is the subgroup invocation id).
fn weights_sg(wi: u32, lane: u32) -> Col {
    let v = wts[wi + (lane & 3u)];
    return Col(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u),
               subgroupBroadcast(v, 3u));
}

// conv2d_tiled (any kernel, stride, dilation, groups) with `weights_sg`.
@compute @workgroup_size(CONV_TILED_WG)
fn conv2d_tiled_sg(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let tiles_x = (p.ow + TN - 1u) / TN;
    let n_tiles = tiles_x * p.oh;
    // No early return (see conv2d_3x3_sg).
    let tile = min(gid.x + p.x0, n_tiles - 1u);
    let oy = tile / tiles_x;
    let ox0 = (tile % tiles_x) * TN;
    let n = wid.z + p.z0;
    let cb = wid.y + p.y0;
    let iy0 = i32(oy * p.sh) - i32(p.ph);
    let ix0 = i32(ox0 * p.sw) - i32(p.pw);
    let sw = i32(p.sw);
    var c0: Col;
    var c1: Col;
    var c2: Col;
    var c3: Col;
    var wi = weights_start() + cb * p.ci_n * p.kh * p.kw * 4u;
    let ch0 = p.x_off + n * p.x_bs + (p.g0 * p.cin_g + p.ci0) * p.h * p.w;
    for (var ci = 0u; ci < p.ci_n; ci++) {
        let base = ch0 + ci * p.h * p.w;
        let a = in_affine(ci);
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = iy0 + i32(ky * p.dh);
            for (var kx = 0u; kx < p.kw; kx++) {
                let w = weights_sg(wi, lane);
                wi += 4u;
                let ix = ix0 + i32(kx * p.dw);
                c0 = col_fma(c0, w, load_x(base, iy, ix, a));
                c1 = col_fma(c1, w, load_x(base, iy, ix + sw, a));
                c2 = col_fma(c2, w, load_x(base, iy, ix + 2 * sw, a));
                c3 = col_fma(c3, w, load_x(base, iy, ix + 3 * sw, a));
            }
        }
    }
    let left = select(0u, p.ow - ox0, gid.x + p.x0 < n_tiles);
    store_cols4(c0, c1, c2, c3, n, p.g0, p.cb0 + cb, oy * p.ow + ox0, left);
}

// conv2d_1x1 (any stride) with `weights_sg`.
@compute @workgroup_size(CONV_TILED_WG)
fn conv2d_1x1_sg(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let ohw = p.oh * p.ow;
    let n_tiles = (ohw + TN - 1u) / TN;
    // No early return (see conv2d_3x3_sg).
    let pix0 = min(gid.x + p.x0, n_tiles - 1u) * TN;
    let n = wid.z + p.z0;
    let cb = wid.y + p.y0;
    var c0: Col;
    var c1: Col;
    var c2: Col;
    var c3: Col;
    var wi = weights_start() + cb * p.ci_n * 4u;
    let hw = p.h * p.w;
    let ch0 = p.x_off + n * p.x_bs + (p.g0 * p.cin_g + p.ci0) * hw;
    let i0 = in_1x1(pix0);
    let i1 = in_1x1(min(pix0 + 1u, ohw - 1u));
    let i2 = in_1x1(min(pix0 + 2u, ohw - 1u));
    let i3 = in_1x1(min(pix0 + 3u, ohw - 1u));
    for (var ci = 0u; ci < p.ci_n; ci++) {
        let base = ch0 + ci * hw;
        let a = in_affine(ci);
        let w = weights_sg(wi, lane);
        wi += 4u;
        c0 = col_fma(c0, w, affine_x(arena[base + i0], a));
        c1 = col_fma(c1, w, affine_x(arena[base + i1], a));
        c2 = col_fma(c2, w, affine_x(arena[base + i2], a));
        c3 = col_fma(c3, w, affine_x(arena[base + i3], a));
    }
    let left = select(0u, ohw - pix0, gid.x + p.x0 < n_tiles);
    store_cols4(c0, c1, c2, c3, n, p.g0, p.cb0 + cb, pix0, left);
}

@compute @workgroup_size(CONV_TILED_WG)
fn conv2d_3x3_sg(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let tiles_x = (p.ow + TN - 1u) / TN;
    let n_tiles = tiles_x * p.oh;
    // No early return: every invocation of a subgroup has to reach the broadcasts, so one past
    // the end computes the last tile again and stores nothing.
    let tile = min(gid.x + p.x0, n_tiles - 1u);
    let oy = tile / tiles_x;
    let ox0 = (tile % tiles_x) * TN;
    let n = wid.z + p.z0;
    let cb = wid.y + p.y0;
    let iy0 = i32(oy) - i32(p.ph);
    let ix0 = i32(ox0) - i32(p.pw);
    var c0: Col;
    var c1: Col;
    var c2: Col;
    var c3: Col;
    var wi = weights_start() + cb * p.ci_n * 9u * 4u;
    let ch0 = p.x_off + n * p.x_bs + (p.g0 * p.cin_g + p.ci0) * p.h * p.w;
    for (var ci = 0u; ci < p.ci_n; ci++) {
        let base = ch0 + ci * p.h * p.w;
        let a = in_affine(ci);
        for (var ky = 0u; ky < 3u; ky++) {
            let iy = iy0 + i32(ky);
            let r = load_row6(base, iy, ix0, a);
            var w = weights_sg(wi, lane);
            c0 = col_fma(c0, w, r.x0);
            c1 = col_fma(c1, w, r.x1);
            c2 = col_fma(c2, w, r.x2);
            c3 = col_fma(c3, w, r.x3);
            w = weights_sg(wi + 4u, lane);
            c0 = col_fma(c0, w, r.x1);
            c1 = col_fma(c1, w, r.x2);
            c2 = col_fma(c2, w, r.x3);
            c3 = col_fma(c3, w, r.x4);
            w = weights_sg(wi + 8u, lane);
            c0 = col_fma(c0, w, r.x2);
            c1 = col_fma(c1, w, r.x3);
            c2 = col_fma(c2, w, r.x4);
            c3 = col_fma(c3, w, r.x5);
            wi += 12u;
        }
    }
    let left = select(0u, p.ow - ox0, gid.x + p.x0 < n_tiles);
    store_cols4(c0, c1, c2, c3, n, p.g0, p.cb0 + cb, oy * p.ow + ox0, left);
}
