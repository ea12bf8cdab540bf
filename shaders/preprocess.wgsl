// Person-crop preprocessing: affine warp + bilinear resize + normalisation of an 8-bit RGBA (or
// BGRA) frame into the f32 NCHW input of a network, for a batch of crops in one dispatch.
// Matches `pipeline::crop::warp_into` (the CPU reference) to f32 rounding.
//
// Conventions (see src/pipeline/crop.rs): continuous coordinates, pixel i covers [i, i + 1).
// Output pixel (x, y) of crop n samples the frame at inv_n * (x + 0.5, y + 0.5), bilinearly
// between the four nearest pixel centres; taps outside the frame are black (0), so far outside
// the output is -mean / std.
//
// The frame is one u32 per pixel (unpack4x8unorm: red in the low byte), rows `src_stride` words
// apart from word `src_off`: a camera frame uploaded as is, or a texture copied to a buffer
// (whose rows are padded to 256 bytes). One invocation per output pixel writes its 3 channels.
// Branch-free apart from the bounds check at the top: taps are loaded at clamped indices and
// weighted by 0 when outside (lavapipe runs both sides of an `if` anyway). No loops.

struct PreprocessParams {
    src_w: u32, src_h: u32, src_stride: u32, src_off: u32,
    out_w: u32, out_h: u32, n: u32, dst_off: u32,
    dst_bs: u32, bgra: u32, pad0: u32, pad1: u32,
    mean: vec4<f32>,
    stdev: vec4<f32>,
    // Two rows (a, b, c, _), (d, e, f, _) of the output -> frame matrix per crop.
    crops: array<vec4<f32>, 128>,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: PreprocessParams;

// Tap (x, y) as RGB in [0, 1] times its weight, zero outside the frame.
fn tap(x: i32, y: i32, wgt: f32) -> vec3<f32> {
    let inside = x >= 0 && y >= 0 && x < i32(p.src_w) && y < i32(p.src_h);
    let cx = u32(clamp(x, 0, i32(p.src_w) - 1));
    let cy = u32(clamp(y, 0, i32(p.src_h) - 1));
    let c = unpack4x8unorm(src[p.src_off + cy * p.src_stride + cx]);
    let rgb = select(c.xyz, c.zyx, p.bgra != 0u);
    return rgb * select(0.0, wgt, inside);
}

@compute @workgroup_size(8, 8, 1)
fn preprocess(@builtin(global_invocation_id) gid: vec3<u32>) {
    let x = gid.x;
    let y = gid.y;
    let n = gid.z;
    if (x >= p.out_w || y >= p.out_h || n >= p.n) {
        return;
    }
    let r0 = p.crops[2u * n];
    let r1 = p.crops[2u * n + 1u];
    let u = f32(x) + 0.5;
    let v = f32(y) + 0.5;
    // Sample position in index space (pixel centres at integers), clamped so that the integer
    // conversion stays in range; beyond the clamp every tap is outside anyway.
    let sx = clamp(r0.x * u + r0.y * v + r0.z - 0.5, -2.0, f32(p.src_w) + 1.0);
    let sy = clamp(r1.x * u + r1.y * v + r1.z - 0.5, -2.0, f32(p.src_h) + 1.0);
    let x0f = floor(sx);
    let y0f = floor(sy);
    let fx = sx - x0f;
    let fy = sy - y0f;
    let x0 = i32(x0f);
    let y0 = i32(y0f);
    let acc = tap(x0, y0, (1.0 - fx) * (1.0 - fy))
        + tap(x0 + 1, y0, fx * (1.0 - fy))
        + tap(x0, y0 + 1, (1.0 - fx) * fy)
        + tap(x0 + 1, y0 + 1, fx * fy);
    let norm = (acc - p.mean.xyz) / p.stdev.xyz;
    let plane = p.out_w * p.out_h;
    let at = p.dst_off + n * p.dst_bs + y * p.out_w + x;
    dst[at] = norm.x;
    dst[at + plane] = norm.y;
    dst[at + 2u * plane] = norm.z;
}
