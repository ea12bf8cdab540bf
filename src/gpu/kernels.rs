//! The WGSL kernel families and how a graph node becomes dispatches of them.
//!
//! Every kernel shares one bind group layout: the activation arena (read-write storage), the
//! parameter buffer (read-only storage) and a per-dispatch uniform block. Keeping activations in
//! one buffer is what lets a producer write straight into a concat's channel slice, and keeps every
//! kernel within WebGPU's default limit of 8 storage buffers per stage.

use crate::error::{Error, Result};
use crate::graph::memory::{MemoryPlan, View};
use crate::graph::{Act, Graph, NodeId, Op, Residual};

use super::uniforms::{
    conv_mode::{CONV_ACCUMULATE, CONV_EPILOGUE},
    ew_flags::{EW_HAS_S, EW_HAS_SB, EW_HAS_T, EW_HAS_X1},
    res_mode::{RES_ADD, RES_GATE_CONV, RES_GATE_RESIDUAL, RES_NONE},
    ConvParams, EwParams, PoolParams, ResampleParams, Uniforms,
};

/// WGSL shared by the graph kernels (the arena and parameter bindings, `param`, `activate`);
/// prepended to each of their files at compile time.
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");
/// `conv2d.wgsl` after the common prelude: every convolution entry point.
pub const CONV2D_WGSL: &str =
    concat!(include_str!("../../shaders/common.wgsl"), include_str!("../../shaders/conv2d.wgsl"));
/// conv2d.wgsl plus `conv2d_subgroup.wgsl` (the tiled, 3x3 and 1x1 kernels sharing weight loads
/// across a subgroup), for devices with the `subgroups` feature: a module of its own. Browsers require
/// the WGSL `enable subgroups;` directive, which naga (wgpu's native shader compiler, version
/// 30) still refuses as unsupported; natively the device feature alone enables the builtins.
#[cfg(not(target_arch = "wasm32"))]
pub const CONV2D_SUBGROUP_WGSL: &str = concat!(
    include_str!("../../shaders/common.wgsl"),
    include_str!("../../shaders/conv2d.wgsl"),
    include_str!("../../shaders/conv2d_subgroup.wgsl")
);
/// conv2d.wgsl plus `conv2d_subgroup.wgsl`, after the `enable subgroups;` browsers require.
#[cfg(target_arch = "wasm32")]
pub const CONV2D_SUBGROUP_WGSL: &str = concat!(
    "enable subgroups;\n",
    include_str!("../../shaders/common.wgsl"),
    include_str!("../../shaders/conv2d.wgsl"),
    include_str!("../../shaders/conv2d_subgroup.wgsl")
);
/// `elementwise.wgsl` after the common prelude: activations, affines, adds, concat copies.
pub const ELEMENTWISE_WGSL: &str =
    concat!(include_str!("../../shaders/common.wgsl"), include_str!("../../shaders/elementwise.wgsl"));
/// `pool.wgsl` after the common prelude: max pooling.
pub const POOL_WGSL: &str = concat!(include_str!("../../shaders/common.wgsl"), include_str!("../../shaders/pool.wgsl"));
/// `resample.wgsl` after the common prelude: upsampling and pixel shuffle.
pub const RESAMPLE_WGSL: &str =
    concat!(include_str!("../../shaders/common.wgsl"), include_str!("../../shaders/resample.wgsl"));

/// Every shader file with its full source (after prepending common.wgsl) and entry points, for
/// validation tests and pipeline creation. common.wgsl is listed too: it validates on its own.
pub const SHADERS: &[(&str, &str, &[&str])] = &[
    ("common.wgsl", COMMON_WGSL, &[]),
    ("conv2d.wgsl", CONV2D_WGSL, &["conv2d_tiled", "conv2d_3x3", "conv2d_1x1", "conv2d_direct"]),
    ("conv2d_subgroup.wgsl", CONV2D_SUBGROUP_WGSL, &["conv2d_tiled_sg", "conv2d_3x3_sg", "conv2d_1x1_sg"]),
    ("elementwise.wgsl", ELEMENTWISE_WGSL, &["elementwise"]),
    ("pool.wgsl", POOL_WGSL, &["max_pool"]),
    ("resample.wgsl", RESAMPLE_WGSL, &["upsample_nearest", "upsample_bilinear", "pixel_shuffle"]),
    ("preprocess.wgsl", include_str!("../../shaders/preprocess.wgsl"), &["preprocess"]),
];

/// The affine a convolution pipeline applies to each input value as it loads it (the
/// pipeline-overridable `IN_AFFINE` of conv2d.wgsl): a channel affine the convolution absorbed
/// (see [`crate::graph::passes::input_affines`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum InputAffine {
    None = 0,
    Affine = 1,
    AffineRelu = 2,
}

impl InputAffine {
    /// The pipeline variant for an absorbed affine with activation `act`, if the kernels have
    /// one.
    fn for_act(act: Act) -> Option<InputAffine> {
        match act {
            Act::None => Some(InputAffine::Affine),
            Act::Relu => Some(InputAffine::AffineRelu),
            Act::Sigmoid => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    ConvTiled(InputAffine),
    Conv3x3(InputAffine),
    Conv1x1(InputAffine),
    /// `ConvTiled`, `Conv3x3` and `Conv1x1` with weight loads shared across a subgroup of at
    /// least 4 invocations (same dispatches and weight windows).
    ConvTiledSubgroup(InputAffine),
    Conv3x3Subgroup(InputAffine),
    Conv1x1Subgroup(InputAffine),
    ConvDirect,
    Elementwise,
    MaxPool,
    UpsampleNearest,
    UpsampleBilinear,
    PixelShuffle,
}

impl Kernel {
    pub(crate) fn source(self) -> (&'static str, &'static str) {
        match self {
            Kernel::ConvTiled(_) => (CONV2D_WGSL, "conv2d_tiled"),
            Kernel::Conv3x3(_) => (CONV2D_WGSL, "conv2d_3x3"),
            Kernel::ConvTiledSubgroup(_) => (CONV2D_SUBGROUP_WGSL, "conv2d_tiled_sg"),
            Kernel::Conv3x3Subgroup(_) => (CONV2D_SUBGROUP_WGSL, "conv2d_3x3_sg"),
            Kernel::Conv1x1Subgroup(_) => (CONV2D_SUBGROUP_WGSL, "conv2d_1x1_sg"),
            Kernel::Conv1x1(_) => (CONV2D_WGSL, "conv2d_1x1"),
            Kernel::ConvDirect => (CONV2D_WGSL, "conv2d_direct"),
            Kernel::Elementwise => (ELEMENTWISE_WGSL, "elementwise"),
            Kernel::MaxPool => (POOL_WGSL, "max_pool"),
            Kernel::UpsampleNearest => (RESAMPLE_WGSL, "upsample_nearest"),
            Kernel::UpsampleBilinear => (RESAMPLE_WGSL, "upsample_bilinear"),
            Kernel::PixelShuffle => (RESAMPLE_WGSL, "pixel_shuffle"),
        }
    }

    /// The input affine of a tiled convolution kernel (None for every other kernel).
    pub(crate) fn input_affine(self) -> Option<InputAffine> {
        match self {
            Kernel::ConvTiled(a)
            | Kernel::Conv3x3(a)
            | Kernel::Conv1x1(a)
            | Kernel::ConvTiledSubgroup(a)
            | Kernel::Conv3x3Subgroup(a)
            | Kernel::Conv1x1Subgroup(a) => Some(a),
            _ => None,
        }
    }

    /// The pipeline-overridable constants its pipeline is created with.
    pub(crate) fn constants(self) -> Vec<(&'static str, f64)> {
        match self.input_affine() {
            Some(a) if a != InputAffine::None => vec![("IN_AFFINE", a as u32 as f64)],
            _ => Vec::new(),
        }
    }

    /// The same kernel applying input affine `a` (tiled convolutions only).
    fn with_input_affine(self, a: InputAffine) -> Kernel {
        match self {
            Kernel::ConvTiled(_) => Kernel::ConvTiled(a),
            Kernel::Conv3x3(_) => Kernel::Conv3x3(a),
            Kernel::Conv1x1(_) => Kernel::Conv1x1(a),
            Kernel::ConvTiledSubgroup(_) => Kernel::ConvTiledSubgroup(a),
            Kernel::Conv3x3Subgroup(_) => Kernel::Conv3x3Subgroup(a),
            Kernel::Conv1x1Subgroup(_) => Kernel::Conv1x1Subgroup(a),
            k => k,
        }
    }
}

/// Size of the uniform weight window the tiled convolution reads (WebGPU's default
/// `maxUniformBufferBindingSize`), in f32.
pub(crate) const WINDOW_FLOATS: usize = 16384;

#[derive(Clone, Debug)]
pub(crate) struct Dispatch {
    pub node: NodeId,
    pub kernel: Kernel,
    pub uniform: Uniforms,
    pub workgroups: [u32; 3],
    /// Offset in f32 of the 64 KiB uniform window of the parameter buffer this dispatch reads.
    pub window: u32,
}

/// Parameters of all nodes packed into one buffer; offsets in f32 elements, aligned to 4 so
/// kernels can read vec4s.
#[derive(Default)]
pub(crate) struct ParamPack {
    pub data: Vec<f32>,
}

impl ParamPack {
    fn push(&mut self, v: &[f32]) -> u32 {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0.0);
        }
        let off = self.data.len();
        self.data.extend_from_slice(v);
        off as u32
    }

    /// Pushes a uniform-window block, aligned to 256 bytes (WebGPU's uniform offset alignment).
    fn push_window(&mut self, v: &[f32]) -> u32 {
        while !self.data.len().is_multiple_of(64) {
            self.data.push(0.0);
        }
        self.push(v)
    }

    /// Pads the end so a full 64 KiB window can be bound at any pushed offset.
    pub(crate) fn finish(&mut self) {
        self.data.resize(self.data.len() + WINDOW_FLOATS, 0.0);
    }
}

// Tile sizes and workgroup sizes; conv2d.wgsl declares the same names (tests/shaders.rs checks
// the values and the entry points' workgroup sizes).
/// Conv tiles cover 16 output channels per invocation (`TM` in conv2d.wgsl)...
pub const CONV_TM: usize = 16;
/// ... and 4 pixels of one output row (`TN`).
pub const CONV_TN: usize = 4;
/// The direct (depthwise) kernel computes 4 pixels per invocation (`TD`).
pub const CONV_TD: usize = 4;
/// Workgroup size of the direct convolution.
pub const CONV_DIRECT_WG: usize = 64;
/// Workgroup size of the tiled convolutions (`conv2d_tiled`, `conv2d_3x3`, `conv2d_1x1`).
pub const CONV_TILED_WG: usize = 8;
/// Workgroup size of the one-element-per-invocation kernels.
pub const FLAT_WG: usize = 256;

fn u(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooLarge(format!("{v} does not fit the kernels' 32-bit indices")))
}

/// A 3-D grid for `total` elements at 256 per workgroup with at most `max` workgroups per
/// dimension; returns (workgroups, row length). The kernels fold the grid back into one index
/// (x wraps at `row`, y at the dispatched y extent), so any tensor the 32-bit indices can address
/// fits whatever the device's per-dimension limit.
fn flat_grid(total: usize, max: usize) -> Result<([u32; 3], u32)> {
    let wgs = total.div_ceil(FLAT_WG).max(1);
    let row = wgs.min(max);
    let rows = wgs.div_ceil(row);
    let ny = rows.min(max);
    let nz = rows.div_ceil(ny);
    if nz > max {
        return Err(Error::TooLarge(format!("{total} elements need more than {max}^3 workgroups")));
    }
    Ok(([u(row)?, u(ny)?, u(nz)?], u(row)?))
}

/// The dispatches of one convolution covering a `grid` of workgroups of `wg_size` invocations
/// (along x) with at most `max` workgroups per dimension: one when it fits, else one per block of
/// the grid, each with its start in `ConvParams::x0` (invocations), `y0` and `z0` (workgroups).
fn split_grid(
    node: NodeId,
    kernel: Kernel,
    params: ConvParams,
    window: u32,
    grid: [usize; 3],
    wg_size: usize,
    max: usize,
) -> Result<Vec<Dispatch>> {
    let grid = grid.map(|g| g.max(1));
    let mut out = Vec::new();
    for z0 in (0..grid[2]).step_by(max) {
        for y0 in (0..grid[1]).step_by(max) {
            for x0 in (0..grid[0]).step_by(max) {
                let uniform = Uniforms::Conv(ConvParams { x0: u(x0 * wg_size)?, y0: u(y0)?, z0: u(z0)?, ..params });
                let workgroups =
                    [u((grid[0] - x0).min(max))?, u((grid[1] - y0).min(max))?, u((grid[2] - z0).min(max))?];
                out.push(Dispatch { node, kernel, uniform, workgroups, window });
            }
        }
    }
    Ok(out)
}

/// Elementwise `y = act(s*x0 + t + sb*x1)` over a `[n, c, h*w]` region.
#[allow(clippy::too_many_arguments)]
fn elementwise(
    max: usize,
    node: NodeId,
    shape: [usize; 4],
    x0: View,
    x1: Option<View>,
    y: View,
    s: Option<u32>,
    t: Option<u32>,
    sb: Option<u32>,
    act: Act,
) -> Result<Dispatch> {
    let [n, c, h, w] = shape;
    let (workgroups, row) = flat_grid(n * c * h * w, max)?;
    let flag = |on: bool, bit: u32| if on { bit } else { 0 };
    let flags = flag(s.is_some(), EW_HAS_S)
        | flag(t.is_some(), EW_HAS_T)
        | flag(x1.is_some(), EW_HAS_X1)
        | flag(sb.is_some(), EW_HAS_SB);
    let x1 = x1.unwrap_or(View { offset: 0, batch_stride: 0 });
    let un = EwParams {
        n: u(n)?,
        c: u(c)?,
        hw: u(h * w)?,
        act: act.code(),
        x0_off: u(x0.offset)?,
        x0_bs: u(x0.batch_stride)?,
        x1_off: u(x1.offset)?,
        x1_bs: u(x1.batch_stride)?,
        y_off: u(y.offset)?,
        y_bs: u(y.batch_stride)?,
        s_off: s.unwrap_or(0),
        t_off: t.unwrap_or(0),
        sb_off: sb.unwrap_or(0),
        flags,
        row,
        pad0: 0,
    };
    Ok(Dispatch { node, kernel: Kernel::Elementwise, uniform: Uniforms::Elementwise(un), workgroups, window: 0 })
}

#[allow(clippy::too_many_arguments)] // a kernel helper: one argument per dispatch parameter
fn resample(
    max: usize,
    node: NodeId,
    kernel: Kernel,
    ins: [usize; 4],
    out: [usize; 4],
    x: View,
    y: View,
    factor: usize,
) -> Result<Dispatch> {
    let (workgroups, row) = flat_grid(out.iter().product(), max)?;
    let un = ResampleParams {
        n: u(out[0])?,
        c: u(out[1])?,
        h: u(ins[2])?,
        w: u(ins[3])?,
        oh: u(out[2])?,
        ow: u(out[3])?,
        factor: u(factor)?,
        row,
        x_off: u(x.offset)?,
        x_bs: u(x.batch_stride)?,
        y_off: u(y.offset)?,
        y_bs: u(y.batch_stride)?,
        pad0: 0,
        pad1: 0,
        pad2: 0,
        pad3: 0,
    };
    Ok(Dispatch { node, kernel, uniform: Uniforms::Resample(un), workgroups, window: 0 })
}

/// Turns every node of `g` into dispatches, packing parameters as it goes. `max_workgroups` is
/// the device's limit per grid dimension (`max_compute_workgroups_per_dimension`); larger grids
/// are folded into more dimensions or split over several dispatches. `absorbed[id]` is the
/// channel affine convolution `id` applies to its input ([`gpu_input_affines`]): that affine
/// dispatches nothing and the convolution reads the affine's input.
pub(crate) fn lower(
    g: &Graph,
    plan: &MemoryPlan,
    pack: &mut ParamPack,
    max_workgroups: u32,
    subgroups: bool,
    absorbed: &[Option<NodeId>],
) -> Result<Vec<Dispatch>> {
    let max = (max_workgroups as usize).max(1);
    let reads = reads_with_input_affines(g, absorbed);
    let mut skipped = vec![false; g.nodes.len()];
    absorbed.iter().flatten().for_each(|&a| skipped[a] = true);
    let mut out = Vec::new();
    for (id, node) in g.nodes.iter().enumerate() {
        if skipped[id] {
            continue;
        }
        let shape = plan.shapes[id];
        let y = plan.views[id];
        let ins: Vec<[usize; 4]> = reads[id].iter().map(|&i| plan.shapes[i]).collect();
        let xv: Vec<View> = reads[id].iter().map(|&i| plan.views[i]).collect();
        match &node.op {
            Op::Input { .. } => {}
            Op::Conv2d(c) => {
                let affine = absorbed.get(id).copied().flatten().map(|a| match &g.nodes[a].op {
                    Op::ChannelAffine { scale, shift, act } => Ok((&scale.data[..], &shift.data[..], *act)),
                    _ => Err(Error::Graph(format!("node {a} is not a channel affine"))),
                });
                let affine = affine.transpose()?;
                out.extend(conv(id, c, ins[0], shape, &xv, y, pack, max, subgroups, affine)?)
            }
            Op::BatchNorm(bn) => {
                let (scale, shift) = bn.scale_shift();
                let (s, t) = (pack.push(&scale), pack.push(&shift));
                out.push(elementwise(max, id, shape, xv[0], None, y, Some(s), Some(t), None, Act::None)?);
            }
            Op::ChannelAffine { scale, shift, act } => {
                let (s, t) = (pack.push(&scale.data), pack.push(&shift.data));
                out.push(elementwise(max, id, shape, xv[0], None, y, Some(s), Some(t), None, *act)?);
            }
            Op::Activation(act) => out.push(elementwise(max, id, shape, xv[0], None, y, None, None, None, *act)?),
            Op::Add => out.push(elementwise(max, id, shape, xv[0], Some(xv[1]), y, None, None, None, Act::None)?),
            Op::GatedAdd { alpha } => {
                let s = pack.push(&alpha.data);
                out.push(elementwise(max, id, shape, xv[0], Some(xv[1]), y, Some(s), None, None, Act::None)?);
            }
            Op::Concat => {
                let mut c_off = 0;
                for (k, &s) in ins.iter().enumerate() {
                    if !plan.concat_input_in_place(g, id, k) {
                        let slice = View { offset: y.offset + c_off * s[2] * s[3], batch_stride: y.batch_stride };
                        out.push(elementwise(max, id, s, xv[k], None, slice, None, None, None, Act::None)?);
                    }
                    c_off += s[1];
                }
            }
            Op::MaxPool { kernel, stride, padding } => {
                let (workgroups, row) = flat_grid(shape.iter().product(), max)?;
                let i = ins[0];
                let un = PoolParams {
                    n: u(shape[0])?,
                    c: u(shape[1])?,
                    h: u(i[2])?,
                    w: u(i[3])?,
                    oh: u(shape[2])?,
                    ow: u(shape[3])?,
                    kh: u(kernel[0])?,
                    kw: u(kernel[1])?,
                    sh: u(stride[0])?,
                    sw: u(stride[1])?,
                    ph: u(padding[0])?,
                    pw: u(padding[1])?,
                    x_off: u(xv[0].offset)?,
                    x_bs: u(xv[0].batch_stride)?,
                    y_off: u(y.offset)?,
                    y_bs: u(y.batch_stride)?,
                    row,
                    pad0: 0,
                    pad1: 0,
                    pad2: 0,
                };
                let uniform = Uniforms::Pool(un);
                out.push(Dispatch { node: id, kernel: Kernel::MaxPool, uniform, workgroups, window: 0 });
            }
            Op::UpsampleNearest { factor } => {
                out.push(resample(max, id, Kernel::UpsampleNearest, ins[0], shape, xv[0], y, *factor)?)
            }
            Op::UpsampleBilinear { factor } => {
                out.push(resample(max, id, Kernel::UpsampleBilinear, ins[0], shape, xv[0], y, *factor)?)
            }
            Op::PixelShuffle { factor } => {
                out.push(resample(max, id, Kernel::PixelShuffle, ins[0], shape, xv[0], y, *factor)?)
            }
        }
    }
    Ok(out)
}

/// The kernel a convolution with `cout` output channels runs on (`subgroups`: the device runs
/// the subgroup variants, see [`crate::gpu::GpuContext::subgroup_kernels`]).
fn conv_kernel(c: &crate::graph::Conv2d, cout: usize, subgroups: bool) -> Kernel {
    let [kh, kw] = c.kernel();
    // Few output channels per group (depthwise), or a kernel too large for one weight window:
    // one channel per invocation, weights from the storage buffer.
    let none = InputAffine::None;
    if cout / c.groups < 8 || kh * kw * CONV_TM > WINDOW_FLOATS {
        Kernel::ConvDirect
    } else if kh == 3 && kw == 3 && c.stride == [1, 1] && c.dilation == [1, 1] {
        [Kernel::Conv3x3(none), Kernel::Conv3x3Subgroup(none)][subgroups as usize]
    } else if kh == 1 && kw == 1 && c.padding == [0, 0] {
        // Any stride: the ResNet downsampling shortcuts (1x1, stride 2) ran 4-6x faster here
        // than on the generic kernel on SwiftShader (README, session 11).
        [Kernel::Conv1x1(none), Kernel::Conv1x1Subgroup(none)][subgroups as usize]
    } else {
        [Kernel::ConvTiled(none), Kernel::ConvTiledSubgroup(none)][subgroups as usize]
    }
}

/// The channel affines the GPU run skips because the convolution reading them applies them as
/// it loads its input (every tiled kernel can, for an affine without activation or with ReLU;
/// see [`crate::graph::passes::input_affines`]). Empty when `fuse` is off.
pub(crate) fn gpu_input_affines(g: &Graph, subgroups: bool, fuse: bool) -> Vec<Option<NodeId>> {
    if !fuse {
        return vec![None; g.nodes.len()];
    }
    crate::graph::passes::input_affines(g, |c, act| {
        let [kh, kw] = c.kernel();
        // (The affine takes one vec4 per input channel of the weight window.)
        conv_kernel(c, c.cout(), subgroups) != Kernel::ConvDirect
            && kh * kw * CONV_TM + 4 <= WINDOW_FLOATS
            && InputAffine::for_act(act).is_some()
    })
}

/// What each node reads in a run where the convolutions apply the affines in `absorbed`
/// (from [`gpu_input_affines`]) themselves: the affine's input instead of the affine, and the
/// skipped affine nothing. The memory plan takes its lifetimes from it.
pub(crate) fn reads_with_input_affines(g: &Graph, absorbed: &[Option<NodeId>]) -> Vec<Vec<NodeId>> {
    let mut reads: Vec<Vec<NodeId>> = g.nodes.iter().map(|n| n.inputs.clone()).collect();
    for (id, a) in absorbed.iter().enumerate() {
        if let Some(a) = *a {
            reads[id][0] = g.nodes[a].inputs[0];
            reads[a].clear();
        }
    }
    reads
}

/// The kernels `lower` turns the nodes of `g` into (output shapes `shapes`), without packing
/// any parameters: what to compile ahead of the weights.
pub(crate) fn kernels_of(g: &Graph, shapes: &[[usize; 4]], subgroups: bool, fuse_affines: bool) -> Vec<Kernel> {
    let absorbed = gpu_input_affines(g, subgroups, fuse_affines);
    let mut skipped = vec![false; g.nodes.len()];
    absorbed.iter().flatten().for_each(|&a| skipped[a] = true);
    let mut out = Vec::new();
    for (id, node) in g.nodes.iter().enumerate() {
        if skipped[id] {
            continue;
        }
        let kernel = match &node.op {
            Op::Input { .. } => continue,
            Op::Conv2d(c) => {
                let k = conv_kernel(c, shapes[id][1], subgroups);
                match absorbed[id].map(|a| &g.nodes[a].op) {
                    Some(Op::ChannelAffine { act, .. }) => {
                        k.with_input_affine(InputAffine::for_act(*act).unwrap_or(InputAffine::None))
                    }
                    _ => k,
                }
            }
            Op::BatchNorm(_)
            | Op::ChannelAffine { .. }
            | Op::Activation(_)
            | Op::Add
            | Op::GatedAdd { .. }
            // A concat whose inputs are all written in place dispatches nothing; compiling the
            // elementwise pipeline for it anyway costs one small pipeline at most.
            | Op::Concat => Kernel::Elementwise,
            Op::MaxPool { .. } => Kernel::MaxPool,
            Op::UpsampleNearest { .. } => Kernel::UpsampleNearest,
            Op::UpsampleBilinear { .. } => Kernel::UpsampleBilinear,
            Op::PixelShuffle { .. } => Kernel::PixelShuffle,
        };
        if !out.contains(&kernel) {
            out.push(kernel);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)] // a kernel helper: one argument per dispatch parameter
fn conv(
    id: NodeId,
    c: &crate::graph::Conv2d,
    ins: [usize; 4],
    out: [usize; 4],
    xv: &[View],
    y: View,
    pack: &mut ParamPack,
    max: usize,
    subgroups: bool,
    affine: Option<(&[f32], &[f32], Act)>,
) -> Result<Vec<Dispatch>> {
    let [n, cin, h, w] = ins;
    let [_, cout, oh, ow] = out;
    let [kh, kw] = c.kernel();
    let kk = kh * kw;
    let g = c.groups;
    let cin_g = c.cin_per_group();
    let cout_g = cout / g;
    let direct = conv_kernel(c, cout, subgroups) == Kernel::ConvDirect;
    if direct && affine.is_some() {
        return Err(Error::Graph("the direct convolution kernel cannot apply an input affine".into()));
    }
    let b_off = c.bias.as_ref().map_or(0, |b| pack.push(&b.data));
    let (res_mode, g_off) = match &c.epilogue.residual {
        None => (RES_NONE, 0),
        Some(Residual::Add) => (RES_ADD, 0),
        Some(Residual::GateResidual(a)) => (RES_GATE_RESIDUAL, pack.push(&a.data)),
        Some(Residual::GateConv(a)) => (RES_GATE_CONV, pack.push(&a.data)),
    };
    let w_off = if direct { pack.push(&c.weight.data) } else { 0 };
    let r = xv.get(1).copied().unwrap_or(View { offset: 0, batch_stride: 0 });
    let e = &c.epilogue;
    let base = ConvParams {
        n: u(n)?,
        cin: u(cin)?,
        h: u(h)?,
        w: u(w)?,
        cout: u(cout)?,
        oh: u(oh)?,
        ow: u(ow)?,
        kh: u(kh)?,
        kw: u(kw)?,
        sh: u(c.stride[0])?,
        sw: u(c.stride[1])?,
        ph: u(c.padding[0])?,
        pw: u(c.padding[1])?,
        dh: u(c.dilation[0])?,
        dw: u(c.dilation[1])?,
        groups: u(g)?,
        cin_g: u(cin_g)?,
        cout_g: u(cout_g)?,
        co_pad: 0,
        x_off: u(xv[0].offset)?,
        x_bs: u(xv[0].batch_stride)?,
        y_off: u(y.offset)?,
        y_bs: u(y.batch_stride)?,
        r_off: u(r.offset)?,
        r_bs: u(r.batch_stride)?,
        w_off,
        b_off,
        g_off,
        act: e.act.code(),
        res_mode,
        post_act: e.post_act.code(),
        has_bias: c.bias.is_some() as u32,
        ci0: 0,
        ci_n: 0,
        cb0: 0,
        g0: 0,
        mode: 0,
        x0: 0,
        y0: 0,
        z0: 0,
    };
    if direct {
        let un = ConvParams { ci_n: u(cin_g)?, mode: CONV_EPILOGUE, ..base };
        let tiles = (oh * ow).div_ceil(CONV_TD).div_ceil(CONV_DIRECT_WG);
        return split_grid(id, Kernel::ConvDirect, un, 0, [tiles, cout, n], CONV_DIRECT_WG, max);
    }
    // An absorbed input affine: (s, t) of each input channel of a dispatch's chunk as one vec4
    // at the start of its window, before the weight blocks.
    let (kernel, aff_floats) = match affine {
        None => (conv_kernel(c, cout, subgroups), 0),
        Some((_, _, act)) => {
            let a = InputAffine::for_act(act)
                .ok_or_else(|| Error::Graph(format!("the convolution kernels cannot apply a {act:?} input affine")))?;
            (conv_kernel(c, cout, subgroups).with_input_affine(a), 4)
        }
    };
    if let Some((scale, shift, _)) = affine {
        if scale.len() != cin || shift.len() != cin {
            return Err(Error::Graph(format!(
                "an input affine of {} channels before a {cin}-channel convolution",
                scale.len()
            )));
        }
    }
    // Split input channels into chunks whose 16-channel weight block (and input affine) fits
    // one window, and group as many output-channel blocks per dispatch as the window holds.
    let max_ci = (WINDOW_FLOATS / (kk * CONV_TM + aff_floats)).max(1);
    let n_chunks = cin_g.div_ceil(max_ci);
    let cpc = cin_g.div_ceil(n_chunks);
    let n_blocks = cout_g.div_ceil(CONV_TM);
    let tiles = if matches!(kernel, Kernel::Conv1x1(_) | Kernel::Conv1x1Subgroup(_)) {
        (oh * ow).div_ceil(CONV_TN).div_ceil(CONV_TILED_WG)
    } else {
        (ow.div_ceil(CONV_TN) * oh).div_ceil(CONV_TILED_WG)
    };
    let mut dispatches = Vec::new();
    for gi in 0..g {
        for chunk in 0..n_chunks {
            let ci0 = chunk * cpc;
            let ci_n = cpc.min(cin_g - ci0);
            let block = ci_n * kk * CONV_TM;
            let head = ci_n * aff_floats;
            let per_window = ((WINDOW_FLOATS - head) / block).max(1);
            let mut cb0 = 0;
            while cb0 < n_blocks {
                let m = per_window.min(n_blocks - cb0);
                let mut win = vec![0f32; head + m * block];
                if let Some((scale, shift, _)) = affine {
                    for k in 0..ci_n {
                        let ch = gi * cin_g + ci0 + k;
                        win[4 * k] = scale[ch];
                        win[4 * k + 1] = shift[ch];
                    }
                }
                for b in 0..m {
                    for i in 0..CONV_TM {
                        let co = (cb0 + b) * CONV_TM + i;
                        if co >= cout_g {
                            break;
                        }
                        let src = &c.weight.data[((gi * cout_g + co) * cin_g + ci0) * kk..][..ci_n * kk];
                        for (k, &v) in src.iter().enumerate() {
                            win[head + (b * ci_n * kk + k) * CONV_TM + i] = v;
                        }
                    }
                }
                let window = pack.push_window(&win);
                let mode =
                    if chunk > 0 { CONV_ACCUMULATE } else { 0 } | if chunk + 1 == n_chunks { CONV_EPILOGUE } else { 0 };
                let un = ConvParams { ci0: u(ci0)?, ci_n: u(ci_n)?, cb0: u(cb0)?, g0: u(gi)?, mode, ..base };
                dispatches.extend(split_grid(id, kernel, un, window, [tiles, m, n], CONV_TILED_WG, max)?);
                cb0 += m;
            }
        }
    }
    Ok(dispatches)
}
