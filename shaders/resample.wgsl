// Resolution changes over NCHW views: nearest and bilinear upsampling by an integer factor and
// pixel shuffle (depth to space, PyTorch / ONNX "CRD" channel order). One output element per
// invocation; `c` is the output channel count. common.wgsl (bindings 0 and 1) is prepended.

struct ResampleParams {
    n: u32, c: u32, h: u32, w: u32,
    oh: u32, ow: u32, factor: u32, row: u32,
    x_off: u32, x_bs: u32, y_off: u32, y_bs: u32,
    pad0: u32, pad1: u32, pad2: u32, pad3: u32,
}

@group(0) @binding(2) var<uniform> p: ResampleParams;

struct Out {
    valid: bool,
    n: u32,
    c: u32,
    y: u32,
    x: u32,
    r: u32,
}

// x wraps at `row` workgroups, y at the device's per-dimension limit (see kernels.rs).
fn locate(li: u32, wid: vec3<u32>, nwg: vec3<u32>) -> Out {
    let i = ((wid.z * nwg.y + wid.y) * p.row + wid.x) * 256u + li;
    let per_n = p.c * p.oh * p.ow;
    var o: Out;
    o.valid = i < p.n * per_n;
    o.n = i / per_n;
    o.r = i % per_n;
    o.c = o.r / (p.oh * p.ow);
    o.y = (o.r / p.ow) % p.oh;
    o.x = o.r % p.ow;
    return o;
}

fn load(n: u32, c: u32, y: u32, x: u32) -> f32 {
    return arena[p.x_off + n * p.x_bs + (c * p.h + y) * p.w + x];
}

@compute @workgroup_size(256)
fn upsample_nearest(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let o = locate(li, wid, nwg);
    if (!o.valid) {
        return;
    }
    arena[p.y_off + o.n * p.y_bs + o.r] = load(o.n, o.c, o.y / p.factor, o.x / p.factor);
}

// Half-pixel centres: source = (dst + 0.5) / factor - 0.5, clamped at 0, as PyTorch with
// align_corners = false and ONNX Resize (linear, half_pixel).
@compute @workgroup_size(256)
fn upsample_bilinear(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let o = locate(li, wid, nwg);
    if (!o.valid) {
        return;
    }
    let inv = 1.0 / f32(p.factor);
    let sy = max((f32(o.y) + 0.5) * inv - 0.5, 0.0);
    let sx = max((f32(o.x) + 0.5) * inv - 0.5, 0.0);
    let y0 = min(u32(sy), p.h - 1u);
    let x0 = min(u32(sx), p.w - 1u);
    let y1 = min(y0 + 1u, p.h - 1u);
    let x1 = min(x0 + 1u, p.w - 1u);
    let fy = sy - f32(y0);
    let fx = sx - f32(x0);
    let top = mix(load(o.n, o.c, y0, x0), load(o.n, o.c, y0, x1), fx);
    let bottom = mix(load(o.n, o.c, y1, x0), load(o.n, o.c, y1, x1), fx);
    arena[p.y_off + o.n * p.y_bs + o.r] = mix(top, bottom, fy);
}

@compute @workgroup_size(256)
fn pixel_shuffle(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let o = locate(li, wid, nwg);
    if (!o.valid) {
        return;
    }
    let f = p.factor;
    let ci = (o.c * f + o.y % f) * f + o.x % f;
    arena[p.y_off + o.n * p.y_bs + o.r] = load(o.n, ci, o.y / f, o.x / f);
}
