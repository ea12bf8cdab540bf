// 2-D convolution as an implicit GEMM, with the fused epilogue
//   y = post_act( act(conv + bias) (+) residual )
// Every activation lives in one arena buffer (the memory planner decides offsets, so concat
// inputs are written straight into their slice), parameters in one read-only buffer.
//
// conv2d_tiled: each invocation computes TM = 16 output channels x TN = 4 consecutive pixels of
// one output row in registers. Why it looks the way it does (measured on lavapipe, where
// invocations are SIMD lanes of a CPU core):
// - a storage-buffer load costs a scalar loop over the lanes, but a uniform-buffer load at a
//   uniform offset is one scalar load and a broadcast. So the weights are read from a 64 KiB
//   uniform window of the parameter buffer (`wts`), at offsets that depend only on the
//   workgroup and loop counters; only activations go through storage loads.
// - activations are the expensive loads, so each one feeds as many FMAs as possible: 16 output
//   channels per load, and for 3x3 stride-1 kernels the TN + 2 inputs of a kernel row are
//   loaded once and reused by the three taps (6 loads instead of 12).
// - no control flow in the main loops: lavapipe executes both sides of every `if` under a
//   lane mask, so padding is handled with selects, and the 3x3 case is its own entry point.
// - naga's loop bounding is turned off for these modules (see executor.rs): with it, NIR
//   cannot unroll the tile loops and the accumulators live in memory.
// A convolution whose weights exceed one window is split over input-channel chunks (several
// dispatches, the later ones accumulating into the output; the last applies the epilogue), and
// over blocks of output channels.
//
// Input affine: a pipeline can also apply a per-channel affine (+ ReLU) to every input value as
// it loads it: a pre-activation batch norm that cannot be folded into weights (its input is read
// elsewhere too) then costs no pass over memory of its own (src/graph/passes.rs,
// `input_affines`). Padding stays 0, as in the normalised tensor.
//
// conv2d_direct: one output channel x TD pixels per invocation, for convolutions with few output
// channels per group (depthwise), where channel tiles would be mostly padding.
//
// common.wgsl (bindings 0 and 1, `param`, `activate`) is prepended to this file.

struct ConvParams {
    n: u32, cin: u32, h: u32, w: u32,
    cout: u32, oh: u32, ow: u32, kh: u32,
    kw: u32, sh: u32, sw: u32, ph: u32,
    pw: u32, dh: u32, dw: u32, groups: u32,
    cin_g: u32, cout_g: u32, co_pad: u32, x_off: u32,
    x_bs: u32, y_off: u32, y_bs: u32, r_off: u32,
    r_bs: u32, w_off: u32, b_off: u32, g_off: u32,
    act: u32, res_mode: u32, post_act: u32, has_bias: u32,
    // Input channels of this dispatch's chunk, first output-channel block, group, and whether
    // to add to what earlier chunks wrote (1) / apply the epilogue (2).
    ci0: u32, ci_n: u32, cb0: u32, g0: u32,
    // Where this dispatch starts in the whole grid: a grid larger than the device's
    // workgroups-per-dimension limit is split over several dispatches (kernels.rs). `x0` counts
    // invocations, `y0` and `z0` workgroups.
    mode: u32, x0: u32, y0: u32, z0: u32,
}

@group(0) @binding(2) var<uniform> p: ConvParams;
@group(0) @binding(3) var<uniform> wts: array<vec4<f32>, 4096>;

// Tile and workgroup sizes; src/gpu/kernels.rs has constants of the same names (CONV_TM,
// CONV_TN, CONV_TD for TM, TN, TD), checked by tests/shaders.rs.
const TN: u32 = 4u;
// Workgroups of 8: small late layers (8x8 pixels) still spread over several workgroups, and so
// over every CPU thread of a software driver; on GPUs 8 is a fraction of a wave but these
// kernels are bound by loads there too.
const CONV_TILED_WG: u32 = 8u;
const CONV_DIRECT_WG: u32 = 64u;
const TM: u32 = 16u;
const TD: u32 = 4u;

// The input affine this pipeline applies (`InputAffine` in src/gpu/kernels.rs): 0 none,
// 1 `s * x + t`, 2 `max(s * x + t, 0)`, with (s, t) of each input channel of the dispatch's chunk
// in the first `ci_n` vec4s of the weight window. Pipeline-overridable, so a pipeline without it
// compiles to the kernel without it. conv2d_direct ignores it (never chosen for it).
override IN_AFFINE: u32 = 0u;
const IN_AFFINE_RELU: u32 = 2u;

// Where this dispatch's weights start in the window, in vec4s: after the input affine's.
fn weights_start() -> u32 {
    return select(0u, p.ci_n, IN_AFFINE != 0u);
}

// (s, t) of input channel `ci` of the chunk.
fn in_affine(ci: u32) -> vec2<f32> {
    if (IN_AFFINE == 0u) {
        return vec2<f32>(1.0, 0.0);
    }
    return wts[ci].xy;
}

// One loaded input value after the input affine.
fn affine_x(v: f32, a: vec2<f32>) -> f32 {
    if (IN_AFFINE == 0u) {
        return v;
    }
    let y = fma(v, a.x, a.y);
    if (IN_AFFINE == IN_AFFINE_RELU) {
        return max(y, 0.0);
    }
    return y;
}

// `res_mode` and `mode` values (src/gpu/uniforms.rs).
const RES_NONE: u32 = 0u;
const RES_ADD: u32 = 1u;
const RES_GATE_RESIDUAL: u32 = 2u;
const RES_GATE_CONV: u32 = 3u;
const CONV_ACCUMULATE: u32 = 1u;
const CONV_EPILOGUE: u32 = 2u;

// Applies bias, activations and the residual to one accumulated value and stores it.
fn epilogue(acc: f32, n: u32, c: u32, pix: u32) {
    let ohw = p.oh * p.ow;
    var v = acc;
    if (p.has_bias != 0u) {
        v += param(p.b_off + c);
    }
    v = activate(v, p.act);
    if (p.res_mode != RES_NONE) {
        let r = arena[p.r_off + n * p.r_bs + c * ohw + pix];
        if (p.res_mode == RES_ADD) {
            v += r;
        } else if (p.res_mode == RES_GATE_RESIDUAL) {
            v += param(p.g_off + c) * r;
        } else {
            v = param(p.g_off + c) * v + r;
        }
    }
    v = activate(v, p.post_act);
    arena[p.y_off + n * p.y_bs + c * ohw + pix] = v;
}

// Stores one partial or final sum, honouring the chunking mode.
fn finish(sum: f32, n: u32, c: u32, pix: u32) {
    var v = sum;
    let at = p.y_off + n * p.y_bs + c * p.oh * p.ow + pix;
    if ((p.mode & CONV_ACCUMULATE) != 0u) {
        v += arena[at];
    }
    if ((p.mode & CONV_EPILOGUE) != 0u) {
        epilogue(v, n, c, pix);
    } else {
        arena[at] = v;
    }
}

// Reads one input value after the input affine `a`, or 0 in the padding. Branch-free: lavapipe
// runs both sides of every `if` under a lane mask, so selects are cheaper than control flow.
fn load_x(base: u32, iy: i32, ix: i32, a: vec2<f32>) -> f32 {
    let inside = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
    return select(0.0, affine_x(arena[select(0u, base + u32(iy) * p.w + u32(ix), inside)], a), inside);
}

// The TN + 2 inputs of one kernel row under a 4-pixel tile of a 3x3 stride-1 convolution,
// starting at input column `ix0`: loaded once, shared by the row's three taps.
struct Row6 {
    x0: f32,
    x1: f32,
    x2: f32,
    x3: f32,
    x4: f32,
    x5: f32,
}

fn load_row6(base: u32, iy: i32, ix0: i32, a: vec2<f32>) -> Row6 {
    return Row6(load_x(base, iy, ix0, a), load_x(base, iy, ix0 + 1, a), load_x(base, iy, ix0 + 2, a),
                load_x(base, iy, ix0 + 3, a), load_x(base, iy, ix0 + 4, a), load_x(base, iy, ix0 + 5, a));
}

// The register tile is four `Col`s, one per output pixel, each 16 output channels (TM). Every
// loop over the tile's pixels and channels is written out by hand: a driver that does not
// unroll loops (SwiftShader's Subzero, behind Chromium's software WebGPU) would otherwise keep
// the tile in memory and index it per lane, which made these kernels 3x slower there. Drivers
// that unroll (lavapipe, GPU compilers) see the same code after their own unrolling.
struct Col {
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
}

// The 16 weights of one tap: window layout [block][k in chunk][TM / 4] vec4s.
fn weights(wi: u32) -> Col {
    return Col(wts[wi], wts[wi + 1u], wts[wi + 2u], wts[wi + 3u]);
}

fn col_fma(c: Col, w: Col, x: f32) -> Col {
    let xv = vec4<f32>(x);
    return Col(fma(w.v0, xv, c.v0), fma(w.v1, xv, c.v1), fma(w.v2, xv, c.v2), fma(w.v3, xv, c.v3));
}

// The 4 output channels i4 * 4 .. i4 * 4 + 3 of a column; a select chain, not an index into
// the struct (which a driver without unrolling would put in memory).
fn col_part(c: Col, i4: u32) -> vec4<f32> {
    return select(select(select(c.v0, c.v1, i4 == 1u), c.v2, i4 == 2u), c.v3, i4 == 3u);
}

// Stores one pixel's column of the tile unless the pixel is past the row's (or image's) end.
// A loop, so the epilogue is compiled once per call site, not once per channel.
fn store_col(c: Col, ok: bool, n: u32, g: u32, cb: u32, pix: u32) {
    if (!ok) {
        return;
    }
    let c0 = g * p.cout_g + cb * TM;
    for (var i = 0u; i < TM; i++) {
        if (cb * TM + i >= p.cout_g) {
            break;
        }
        finish(col_part(c, i / 4u)[i % 4u], n, c0 + i, pix);
    }
}

// Stores a 4-pixel tile starting at output pixel `pix`, of which `left` pixels exist.
fn store_cols4(c0: Col, c1: Col, c2: Col, c3: Col, n: u32, g: u32, cb: u32, pix: u32, left: u32) {
    for (var j = 0u; j < TN; j++) {
        var c: Col;
        switch j {
            case 0u: { c = c0; }
            case 1u: { c = c1; }
            case 2u: { c = c2; }
            default: { c = c3; }
        }
        store_col(c, j < left, n, g, cb, pix + j);
    }
}

// Any kernel size, stride, dilation and groups.
@compute @workgroup_size(CONV_TILED_WG)
fn conv2d_tiled(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tiles_x = (p.ow + TN - 1u) / TN;
    let tile = gid.x + p.x0;
    // Whole SIMD groups past the end leave at once; lavapipe ends a loop when no lane is active.
    if (tile >= tiles_x * p.oh) {
        return;
    }
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
                let w = weights(wi);
                wi += 4u;
                let ix = ix0 + i32(kx * p.dw);
                c0 = col_fma(c0, w, load_x(base, iy, ix, a));
                c1 = col_fma(c1, w, load_x(base, iy, ix + sw, a));
                c2 = col_fma(c2, w, load_x(base, iy, ix + 2 * sw, a));
                c3 = col_fma(c3, w, load_x(base, iy, ix + 3 * sw, a));
            }
        }
    }
    store_cols4(c0, c1, c2, c3, n, p.g0, p.cb0 + cb, oy * p.ow + ox0, p.ow - ox0);
}

// 3x3, stride 1, dilation 1 (most layers): the TN + 2 inputs of a kernel row are loaded once
// and shared by the three taps, 6 loads instead of 12.
@compute @workgroup_size(CONV_TILED_WG)
fn conv2d_3x3(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tiles_x = (p.ow + TN - 1u) / TN;
    let tile = gid.x + p.x0;
    if (tile >= tiles_x * p.oh) {
        return;
    }
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
            var w = weights(wi);
            c0 = col_fma(c0, w, r.x0);
            c1 = col_fma(c1, w, r.x1);
            c2 = col_fma(c2, w, r.x2);
            c3 = col_fma(c3, w, r.x3);
            w = weights(wi + 4u);
            c0 = col_fma(c0, w, r.x1);
            c1 = col_fma(c1, w, r.x2);
            c2 = col_fma(c2, w, r.x3);
            c3 = col_fma(c3, w, r.x4);
            w = weights(wi + 8u);
            c0 = col_fma(c0, w, r.x2);
            c1 = col_fma(c1, w, r.x3);
            c2 = col_fma(c2, w, r.x4);
            c3 = col_fma(c3, w, r.x5);
            wi += 12u;
        }
    }
    store_cols4(c0, c1, c2, c3, n, p.g0, p.cb0 + cb, oy * p.ow + ox0, p.ow - ox0);
}

// 1x1, no padding, any stride: a plain GEMM over flattened output pixels; no bounds arithmetic
// at all (the last tile re-reads clamped pixels and stores only the real ones). A stride is
// only in where the four input offsets point, computed once per invocation.
@compute @workgroup_size(CONV_TILED_WG)
fn conv2d_1x1(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let ohw = p.oh * p.ow;
    let pix0 = (gid.x + p.x0) * TN;
    if (pix0 >= ohw) {
        return;
    }
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
        let w = weights(wi);
        wi += 4u;
        c0 = col_fma(c0, w, affine_x(arena[base + i0], a));
        c1 = col_fma(c1, w, affine_x(arena[base + i1], a));
        c2 = col_fma(c2, w, affine_x(arena[base + i2], a));
        c3 = col_fma(c3, w, affine_x(arena[base + i3], a));
    }
    // Flattened pixels are rows of width `ow` for the store.
    store_cols4(c0, c1, c2, c3, n, p.g0, p.cb0 + cb, pix0, ohw - pix0);
}

// Where output pixel `pix` (flattened) of a 1x1 convolution without padding reads its input,
// within one input channel.
fn in_1x1(pix: u32) -> u32 {
    return (pix / p.ow) * p.sh * p.w + (pix % p.ow) * p.sw;
}

// Weights for conv2d_direct keep the original [cout][cin_g][kh][kw] layout.
@compute @workgroup_size(CONV_DIRECT_WG)
fn conv2d_direct(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let ohw = p.oh * p.ow;
    let pix0 = (gid.x + p.x0) * TD;
    if (pix0 >= ohw) {
        return;
    }
    let c = wid.y + p.y0;
    let g = c / p.cout_g;
    let n = wid.z + p.z0;
    var iy0: array<i32, 4>;
    var ix0: array<i32, 4>;
    for (var j = 0u; j < TD; j++) {
        let pix = min(pix0 + j, ohw - 1u);
        iy0[j] = i32((pix / p.ow) * p.sh) - i32(p.ph);
        ix0[j] = i32((pix % p.ow) * p.sw) - i32(p.pw);
    }
    var acc: vec4<f32>;
    var wi = p.w_off + c * p.cin_g * p.kh * p.kw;
    let h = i32(p.h);
    let w = i32(p.w);
    for (var ci = 0u; ci < p.cin_g; ci++) {
        let x_base = p.x_off + n * p.x_bs + (g * p.cin_g + ci) * p.h * p.w;
        for (var ky = 0u; ky < p.kh; ky++) {
            for (var kx = 0u; kx < p.kw; kx++) {
                let wv = param(wi);
                wi += 1u;
                var xv: vec4<f32>;
                for (var j = 0u; j < TD; j++) {
                    let iy = iy0[j] + i32(ky * p.dh);
                    let ix = ix0[j] + i32(kx * p.dw);
                    let inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                    let idx = select(0u, x_base + u32(iy * w + ix), inside);
                    xv[j] = select(0.0, arena[idx], inside);
                }
                acc = fma(vec4<f32>(wv), xv, acc);
            }
        }
    }
    for (var j = 0u; j < TD; j++) {
        let pix = pix0 + j;
        if (pix >= ohw) {
            break;
        }
        epilogue(acc[j], n, c, pix);
    }
}
