// Shared by the graph kernels: prepended to conv2d.wgsl, elementwise.wgsl, pool.wgsl and
// resample.wgsl when they are loaded (src/gpu/kernels.rs), and validated on its own too.
//
// Every kernel binds the activation arena (read-write storage) and the parameter buffer
// (read-only storage) here, and its own uniform block at binding 2: a struct mirrored by a
// `#[repr(C)]` struct of the same name in src/gpu/uniforms.rs (tests/shaders.rs compares their
// layouts).

@group(0) @binding(0) var<storage, read_write> arena: array<f32>;
@group(0) @binding(1) var<storage, read> params: array<vec4<f32>>;

// Activation codes (`Act::code` in src/graph/op.rs).
const ACT_NONE: u32 = 0u;
const ACT_RELU: u32 = 1u;
const ACT_SIGMOID: u32 = 2u;

// Parameter `i` (in f32) of the parameter buffer.
fn param(i: u32) -> f32 {
    return params[i >> 2u][i & 3u];
}

fn activate(v: f32, a: u32) -> f32 {
    if (a == ACT_RELU) {
        return max(v, 0.0);
    }
    if (a == ACT_SIGMOID) {
        return 1.0 / (1.0 + exp(-v));
    }
    return v;
}

