//! The WGSL kernel families and how a graph node becomes dispatches of them.
//!
//! Every kernel shares one bind group layout: the activation arena (read-write storage), the
//! parameter buffer (read-only storage) and a per-dispatch uniform block. Keeping activations in
//! one buffer is what lets a producer write straight into a concat's channel slice, and keeps every
//! kernel within WebGPU's default limit of 8 storage buffers per stage.

use crate::error::{Error, Result};
use crate::graph::memory::{MemoryPlan, View};
use crate::graph::{Act, Graph, NodeId, Op, Residual};

pub const CONV2D_WGSL: &str = include_str!("../../shaders/conv2d.wgsl");
pub const ELEMENTWISE_WGSL: &str = include_str!("../../shaders/elementwise.wgsl");
pub const POOL_WGSL: &str = include_str!("../../shaders/pool.wgsl");
pub const RESAMPLE_WGSL: &str = include_str!("../../shaders/resample.wgsl");

/// Every (file, entry point) pair, for validation tests and pipeline creation.
pub const SHADERS: &[(&str, &str, &[&str])] = &[
    ("conv2d.wgsl", CONV2D_WGSL, &["conv2d_tiled", "conv2d_3x3", "conv2d_1x1", "conv2d_direct"]),
    ("elementwise.wgsl", ELEMENTWISE_WGSL, &["elementwise"]),
    ("pool.wgsl", POOL_WGSL, &["max_pool"]),
    ("resample.wgsl", RESAMPLE_WGSL, &["upsample_nearest", "upsample_bilinear", "pixel_shuffle"]),
    ("preprocess.wgsl", include_str!("../../shaders/preprocess.wgsl"), &["preprocess"]),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    ConvTiled,
    Conv3x3,
    Conv1x1,
    ConvDirect,
    Elementwise,
    MaxPool,
    UpsampleNearest,
    UpsampleBilinear,
    PixelShuffle,
}

impl Kernel {
    pub const ALL: [Kernel; 9] = [
        Kernel::ConvTiled,
        Kernel::Conv3x3,
        Kernel::Conv1x1,
        Kernel::ConvDirect,
        Kernel::Elementwise,
        Kernel::MaxPool,
        Kernel::UpsampleNearest,
        Kernel::UpsampleBilinear,
        Kernel::PixelShuffle,
    ];

    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Kernel::ConvTiled => (CONV2D_WGSL, "conv2d_tiled"),
            Kernel::Conv3x3 => (CONV2D_WGSL, "conv2d_3x3"),
            Kernel::Conv1x1 => (CONV2D_WGSL, "conv2d_1x1"),
            Kernel::ConvDirect => (CONV2D_WGSL, "conv2d_direct"),
            Kernel::Elementwise => (ELEMENTWISE_WGSL, "elementwise"),
            Kernel::MaxPool => (POOL_WGSL, "max_pool"),
            Kernel::UpsampleNearest => (RESAMPLE_WGSL, "upsample_nearest"),
            Kernel::UpsampleBilinear => (RESAMPLE_WGSL, "upsample_bilinear"),
            Kernel::PixelShuffle => (RESAMPLE_WGSL, "pixel_shuffle"),
        }
    }
}

/// Uniform block of one dispatch: 40 u32, interpreted by the kernel's params struct.
pub type Uniform = [u32; 40];

/// Size of the uniform weight window the tiled convolution reads (WebGPU's default
/// `maxUniformBufferBindingSize`), in f32.
pub const WINDOW_FLOATS: usize = 16384;

#[derive(Clone, Debug)]
pub struct Dispatch {
    pub node: NodeId,
    pub kernel: Kernel,
    pub uniform: Uniform,
    pub workgroups: [u32; 3],
    /// Offset in f32 of the 64 KiB uniform window of the parameter buffer this dispatch reads.
    pub window: u32,
}

/// Parameters of all nodes packed into one buffer; offsets in f32 elements, aligned to 4 so
/// kernels can read vec4s.
#[derive(Default)]
pub struct ParamPack {
    pub data: Vec<f32>,
}

impl ParamPack {
    fn push(&mut self, v: &[f32]) -> u32 {
        while self.data.len() % 4 != 0 {
            self.data.push(0.0);
        }
        let off = self.data.len();
        self.data.extend_from_slice(v);
        off as u32
    }

    /// Pushes a uniform-window block, aligned to 256 bytes (WebGPU's uniform offset alignment).
    fn push_window(&mut self, v: &[f32]) -> u32 {
        while self.data.len() % 64 != 0 {
            self.data.push(0.0);
        }
        self.push(v)
    }

    /// Pads the end so a full 64 KiB window can be bound at any pushed offset.
    pub fn finish(&mut self) {
        self.data.resize(self.data.len() + WINDOW_FLOATS, 0.0);
    }
}

/// Conv tiles cover 16 output channels per invocation...
const CONV_TM: usize = 16;
/// ... and 4 pixels of one output row; 64 invocations per workgroup.
const CONV_TN: usize = 4;
/// The direct (depthwise) kernel computes 4 pixels per invocation.
const CONV_TD: usize = 4;
const CONV_WG: usize = 64;
/// Workgroup size of the tiled convolutions (CONV_WG in conv2d.wgsl).
const CONV_TILED_WG: usize = 8;
/// Workgroup size of the one-element-per-invocation kernels.
const FLAT_WG: usize = 256;

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

/// The dispatches covering a `grid` of workgroups of `wg_size` invocations (along x) with at most
/// `max` workgroups per dimension: one when it fits, else one per block of the grid, each with
/// its start in uniform slots 37..39 (`x0` in invocations, `y0`, `z0` in workgroups; see
/// conv2d.wgsl).
fn split_grid(base: Dispatch, grid: [usize; 3], wg_size: usize, max: usize) -> Result<Vec<Dispatch>> {
    let grid = grid.map(|g| g.max(1));
    let mut out = Vec::new();
    for z0 in (0..grid[2]).step_by(max) {
        for y0 in (0..grid[1]).step_by(max) {
            for x0 in (0..grid[0]).step_by(max) {
                let mut d = base.clone();
                d.uniform[37..40].copy_from_slice(&[u(x0 * wg_size)?, u(y0)?, u(z0)?]);
                d.workgroups = [u((grid[0] - x0).min(max))?, u((grid[1] - y0).min(max))?, u((grid[2] - z0).min(max))?];
                out.push(d);
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
    let flags = s.map_or(0, |_| 1) | t.map_or(0, |_| 2) | x1.map_or(0, |_| 4) | sb.map_or(0, |_| 8);
    let x1 = x1.unwrap_or(View { offset: 0, batch_stride: 0 });
    let mut un = [0u32; 40];
    un[..16].copy_from_slice(&[
        u(n)?,
        u(c)?,
        u(h * w)?,
        act.code(),
        u(x0.offset)?,
        u(x0.batch_stride)?,
        u(x1.offset)?,
        u(x1.batch_stride)?,
        u(y.offset)?,
        u(y.batch_stride)?,
        s.unwrap_or(0),
        t.unwrap_or(0),
        sb.unwrap_or(0),
        flags,
        row,
        0,
    ]);
    Ok(Dispatch { node, kernel: Kernel::Elementwise, uniform: un, workgroups, window: 0 })
}

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
    let mut un = [0u32; 40];
    un[..12].copy_from_slice(&[
        u(out[0])?,
        u(out[1])?,
        u(ins[2])?,
        u(ins[3])?,
        u(out[2])?,
        u(out[3])?,
        u(factor)?,
        row,
        u(x.offset)?,
        u(x.batch_stride)?,
        u(y.offset)?,
        u(y.batch_stride)?,
    ]);
    Ok(Dispatch { node, kernel, uniform: un, workgroups, window: 0 })
}

/// Turns every node of `g` into dispatches, packing parameters as it goes. `max_workgroups` is
/// the device's limit per grid dimension (`max_compute_workgroups_per_dimension`); larger grids
/// are folded into more dimensions or split over several dispatches.
pub fn lower(g: &Graph, plan: &MemoryPlan, pack: &mut ParamPack, max_workgroups: u32) -> Result<Vec<Dispatch>> {
    let max = (max_workgroups as usize).max(1);
    let mut out = Vec::new();
    for (id, node) in g.nodes.iter().enumerate() {
        let shape = plan.shapes[id];
        let y = plan.views[id];
        let ins: Vec<[usize; 4]> = node.inputs.iter().map(|&i| plan.shapes[i]).collect();
        let xv: Vec<View> = node.inputs.iter().map(|&i| plan.views[i]).collect();
        match &node.op {
            Op::Input { .. } => {}
            Op::Conv2d(c) => out.extend(conv(id, c, ins[0], shape, &xv, y, pack, max)?),
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
                let mut un = [0u32; 40];
                un[..17].copy_from_slice(&[
                    u(shape[0])?,
                    u(shape[1])?,
                    u(i[2])?,
                    u(i[3])?,
                    u(shape[2])?,
                    u(shape[3])?,
                    u(kernel[0])?,
                    u(kernel[1])?,
                    u(stride[0])?,
                    u(stride[1])?,
                    u(padding[0])?,
                    u(padding[1])?,
                    u(xv[0].offset)?,
                    u(xv[0].batch_stride)?,
                    u(y.offset)?,
                    u(y.batch_stride)?,
                    row,
                ]);
                out.push(Dispatch { node: id, kernel: Kernel::MaxPool, uniform: un, workgroups, window: 0 });
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

fn conv(
    id: NodeId,
    c: &crate::graph::Conv2d,
    ins: [usize; 4],
    out: [usize; 4],
    xv: &[View],
    y: View,
    pack: &mut ParamPack,
    max: usize,
) -> Result<Vec<Dispatch>> {
    let [n, cin, h, w] = ins;
    let [_, cout, oh, ow] = out;
    let [kh, kw] = c.kernel();
    let kk = kh * kw;
    let g = c.groups;
    let cin_g = c.cin_per_group();
    let cout_g = cout / g;
    // Few output channels per group (depthwise), or a kernel too large for one weight window:
    // one channel per invocation, weights from the storage buffer.
    let direct = cout_g < 8 || kk * CONV_TM > WINDOW_FLOATS;
    let b_off = c.bias.as_ref().map_or(0, |b| pack.push(&b.data));
    let (res_mode, g_off) = match &c.epilogue.residual {
        None => (0, 0),
        Some(Residual::Add) => (1, 0),
        Some(Residual::GateResidual(a)) => (2, pack.push(&a.data)),
        Some(Residual::GateConv(a)) => (3, pack.push(&a.data)),
    };
    let w_off = if direct { pack.push(&c.weight.data) } else { 0 };
    let r = xv.get(1).copied().unwrap_or(View { offset: 0, batch_stride: 0 });
    let e = &c.epilogue;
    let mut base: Uniform = [0; 40];
    base[..32].copy_from_slice(&[
        u(n)?,
        u(cin)?,
        u(h)?,
        u(w)?,
        u(cout)?,
        u(oh)?,
        u(ow)?,
        u(kh)?,
        u(kw)?,
        u(c.stride[0])?,
        u(c.stride[1])?,
        u(c.padding[0])?,
        u(c.padding[1])?,
        u(c.dilation[0])?,
        u(c.dilation[1])?,
        u(g)?,
        u(cin_g)?,
        u(cout_g)?,
        0,
        u(xv[0].offset)?,
        u(xv[0].batch_stride)?,
        u(y.offset)?,
        u(y.batch_stride)?,
        u(r.offset)?,
        u(r.batch_stride)?,
        w_off,
        b_off,
        g_off,
        e.act.code(),
        res_mode,
        e.post_act.code(),
        c.bias.is_some() as u32,
    ]);
    if direct {
        let mut un = base;
        un[32..36].copy_from_slice(&[0, u(cin_g)?, 0, 0]);
        un[36] = 2;
        let tiles = (oh * ow).div_ceil(CONV_TD).div_ceil(CONV_WG);
        let d = Dispatch { node: id, kernel: Kernel::ConvDirect, uniform: un, workgroups: [0; 3], window: 0 };
        return split_grid(d, [tiles, cout, n], CONV_WG, max);
    }
    // Split input channels into chunks whose 16-channel weight block fits one window, and
    // group as many output-channel blocks per dispatch as the window holds.
    let max_ci = (WINDOW_FLOATS / (kk * CONV_TM)).max(1);
    let n_chunks = cin_g.div_ceil(max_ci);
    let cpc = cin_g.div_ceil(n_chunks);
    let n_blocks = cout_g.div_ceil(CONV_TM);
    let tiles = (ow.div_ceil(CONV_TN) * oh).div_ceil(CONV_TILED_WG);
    let is_3x3 = kh == 3 && kw == 3 && c.stride == [1, 1] && c.dilation == [1, 1];
    let is_1x1 = kh == 1 && kw == 1 && c.stride == [1, 1] && c.padding == [0, 0];
    let kernel = if is_3x3 {
        Kernel::Conv3x3
    } else if is_1x1 {
        Kernel::Conv1x1
    } else {
        Kernel::ConvTiled
    };
    let tiles = if is_1x1 { (oh * ow).div_ceil(CONV_TN).div_ceil(CONV_TILED_WG) } else { tiles };
    let mut dispatches = Vec::new();
    for gi in 0..g {
        for chunk in 0..n_chunks {
            let ci0 = chunk * cpc;
            let ci_n = cpc.min(cin_g - ci0);
            let block = ci_n * kk * CONV_TM;
            let per_window = (WINDOW_FLOATS / block).max(1);
            let mut cb0 = 0;
            while cb0 < n_blocks {
                let m = per_window.min(n_blocks - cb0);
                let mut win = vec![0f32; m * block];
                for b in 0..m {
                    for i in 0..CONV_TM {
                        let co = (cb0 + b) * CONV_TM + i;
                        if co >= cout_g {
                            break;
                        }
                        let src = &c.weight.data[((gi * cout_g + co) * cin_g + ci0) * kk..][..ci_n * kk];
                        for (k, &v) in src.iter().enumerate() {
                            win[(b * ci_n * kk + k) * CONV_TM + i] = v;
                        }
                    }
                }
                let window = pack.push_window(&win);
                let mut un = base;
                let mode = u32::from(chunk > 0) | if chunk + 1 == n_chunks { 2 } else { 0 };
                un[32..37].copy_from_slice(&[u(ci0)?, u(ci_n)?, u(cb0)?, u(gi)?, mode]);
                let d = Dispatch { node: id, kernel, uniform: un, workgroups: [0; 3], window };
                dispatches.extend(split_grid(d, [tiles, m, n], CONV_TILED_WG, max)?);
                cb0 += m;
            }
        }
    }
    Ok(dispatches)
}
