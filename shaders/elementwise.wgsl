// Per-element kernels over NCHW views in the arena:
//   y = act( s[c] * x0 + t[c] + sb[c] * x1 )
// with each of s, t, x1 and sb optional. This one kernel covers a batch norm that could not be
// folded (affine + activation), a lone ReLU / sigmoid, the residual add, the soft-gated add
// (s = alpha on the skip) and the channel-slice copy a concat needs when an input could not be
// written in place. common.wgsl (bindings 0 and 1, `param`, `activate`) is prepended.

struct EwParams {
    n: u32, c: u32, hw: u32, act: u32,
    x0_off: u32, x0_bs: u32, x1_off: u32, x1_bs: u32,
    y_off: u32, y_bs: u32, s_off: u32, t_off: u32,
    sb_off: u32, flags: u32, row: u32, pad0: u32,
}

// `flags` bits (src/gpu/uniforms.rs).
const EW_HAS_S: u32 = 1u;
const EW_HAS_T: u32 = 2u;
const EW_HAS_X1: u32 = 4u;
const EW_HAS_SB: u32 = 8u;

@group(0) @binding(2) var<uniform> p: EwParams;

// The grid is 3-D (x wraps at `row` workgroups, y at the device's per-dimension limit) so
// tensors above 65535 * 256 elements fit.
@compute @workgroup_size(256)
fn elementwise(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = ((wid.z * nwg.y + wid.y) * p.row + wid.x) * 256u + li;
    let chw = p.c * p.hw;
    if (i >= p.n * chw) {
        return;
    }
    let n = i / chw;
    let r = i % chw;
    let c = r / p.hw;
    var v = arena[p.x0_off + n * p.x0_bs + r];
    if ((p.flags & EW_HAS_S) != 0u) {
        v *= param(p.s_off + c);
    }
    if ((p.flags & EW_HAS_T) != 0u) {
        v += param(p.t_off + c);
    }
    if ((p.flags & EW_HAS_X1) != 0u) {
        var b = arena[p.x1_off + n * p.x1_bs + r];
        if ((p.flags & EW_HAS_SB) != 0u) {
            b *= param(p.sb_off + c);
        }
        v += b;
    }
    arena[p.y_off + n * p.y_bs + r] = activate(v, p.act);
}
