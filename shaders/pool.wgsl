// Max pooling over an NCHW view; positions in the padding never win (PyTorch semantics), and
// the planner guarantees padding <= kernel / 2 so every window holds a real value.
// common.wgsl (bindings 0 and 1) is prepended.

struct PoolParams {
    n: u32, c: u32, h: u32, w: u32,
    oh: u32, ow: u32, kh: u32, kw: u32,
    sh: u32, sw: u32, ph: u32, pw: u32,
    x_off: u32, x_bs: u32, y_off: u32, y_bs: u32,
    row: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(2) var<uniform> p: PoolParams;

@compute @workgroup_size(256)
fn max_pool(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = ((wid.z * nwg.y + wid.y) * p.row + wid.x) * 256u + li;
    let per_n = p.c * p.oh * p.ow;
    if (i >= p.n * per_n) {
        return;
    }
    let n = i / per_n;
    let r = i % per_n;
    let c = r / (p.oh * p.ow);
    let oy = (r / p.ow) % p.oh;
    let ox = r % p.ow;
    let base = p.x_off + n * p.x_bs + c * p.h * p.w;
    var m = -3.402823e38;
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = i32(oy * p.sh + ky) - i32(p.ph);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = i32(ox * p.sw + kx) - i32(p.pw);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            m = max(m, arena[base + u32(iy) * p.w + u32(ix)]);
        }
    }
    arena[p.y_off + n * p.y_bs + r] = m;
}
