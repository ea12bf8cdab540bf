//! The per-dispatch uniform blocks of the WGSL kernels, as `#[repr(C)]` structs mirrored field by
//! field by a WGSL struct of the same name (`shaders/*.wgsl`). `tests/shaders.rs` reflects the
//! WGSL structs with naga and checks that every member has the name, offset and size of the Rust
//! field ([`UniformBlock::FIELDS`]), so the two cannot drift apart silently.
//!
//! Also here: the small codes and sizes both sides must agree on ([`ew_flags`], [`res_mode`],
//! [`conv_mode`], workgroup sizes), each a WGSL `const` of the same name checked by the same
//! test.

use bytemuck::{Pod, Zeroable};

/// One field of a uniform block: name, byte offset, byte size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's (and the WGSL member's) name.
    pub name: &'static str,
    /// Byte offset in the block.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// A uniform block shared with the WGSL struct called [`WGSL_NAME`](Self::WGSL_NAME).
pub trait UniformBlock: Pod {
    /// Name of the mirroring WGSL struct (the Rust struct's name).
    const WGSL_NAME: &'static str;
    /// Every field in declaration order.
    const FIELDS: &'static [Field];
}

/// Declares a `#[repr(C)]` Pod struct and its [`UniformBlock`] field list in one go.
macro_rules! uniform_block {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
        pub struct $name {
            // Fields without a doc comment are named after the WGSL member they mirror (sizes,
            // strides, offsets in f32 elements); the shader documents them.
            $($(#[$fmeta])* #[allow(missing_docs)] pub $field: $ty,)*
        }

        impl UniformBlock for $name {
            const WGSL_NAME: &'static str = stringify!($name);
            const FIELDS: &'static [Field] = &[$(Field {
                name: stringify!($field),
                offset: std::mem::offset_of!($name, $field),
                size: std::mem::size_of::<$ty>(),
            },)*];
        }
    };
}

uniform_block! {
    /// `ConvParams` of conv2d.wgsl: one convolution dispatch (all four entry points).
    pub struct ConvParams {
        pub n: u32,
        pub cin: u32,
        pub h: u32,
        pub w: u32,
        pub cout: u32,
        pub oh: u32,
        pub ow: u32,
        pub kh: u32,
        pub kw: u32,
        pub sh: u32,
        pub sw: u32,
        pub ph: u32,
        pub pw: u32,
        pub dh: u32,
        pub dw: u32,
        pub groups: u32,
        pub cin_g: u32,
        pub cout_g: u32,
        /// Unused (keeps the offsets of the fields after it).
        pub co_pad: u32,
        /// Input view: offset in the arena and batch stride, in f32.
        pub x_off: u32,
        pub x_bs: u32,
        /// Output view.
        pub y_off: u32,
        pub y_bs: u32,
        /// Residual view (second input), when `res_mode != 0`.
        pub r_off: u32,
        pub r_bs: u32,
        /// Offsets in the parameter buffer (f32): weights (direct kernel), bias, soft gate.
        pub w_off: u32,
        pub b_off: u32,
        pub g_off: u32,
        /// [`crate::graph::Act::code`] before and after the residual.
        pub act: u32,
        /// One of [`res_mode`].
        pub res_mode: u32,
        pub post_act: u32,
        pub has_bias: u32,
        /// First input channel and channel count of this dispatch's chunk.
        pub ci0: u32,
        pub ci_n: u32,
        /// First 16-channel output block, group.
        pub cb0: u32,
        pub g0: u32,
        /// Bits of [`conv_mode`].
        pub mode: u32,
        /// Where this dispatch starts in the whole grid (a grid beyond the device's
        /// workgroups-per-dimension limit is split over several dispatches): `x0` in
        /// invocations, `y0` and `z0` in workgroups.
        pub x0: u32,
        pub y0: u32,
        pub z0: u32,
    }
}

uniform_block! {
    /// `EwParams` of elementwise.wgsl: `y = act(s[c] * x0 + t[c] + sb[c] * x1)`.
    pub struct EwParams {
        pub n: u32,
        pub c: u32,
        pub hw: u32,
        pub act: u32,
        pub x0_off: u32,
        pub x0_bs: u32,
        pub x1_off: u32,
        pub x1_bs: u32,
        pub y_off: u32,
        pub y_bs: u32,
        /// Offsets in the parameter buffer of `s`, `t` and `sb`.
        pub s_off: u32,
        pub t_off: u32,
        pub sb_off: u32,
        /// Bits of [`ew_flags`].
        pub flags: u32,
        /// Workgroups per grid row (the grid is 2-D).
        pub row: u32,
        pub pad0: u32,
    }
}

uniform_block! {
    /// `PoolParams` of pool.wgsl.
    pub struct PoolParams {
        pub n: u32,
        pub c: u32,
        pub h: u32,
        pub w: u32,
        pub oh: u32,
        pub ow: u32,
        pub kh: u32,
        pub kw: u32,
        pub sh: u32,
        pub sw: u32,
        pub ph: u32,
        pub pw: u32,
        pub x_off: u32,
        pub x_bs: u32,
        pub y_off: u32,
        pub y_bs: u32,
        pub row: u32,
        pub pad0: u32,
        pub pad1: u32,
        pub pad2: u32,
    }
}

uniform_block! {
    /// `ResampleParams` of resample.wgsl (`c` is the output channel count).
    pub struct ResampleParams {
        pub n: u32,
        pub c: u32,
        pub h: u32,
        pub w: u32,
        pub oh: u32,
        pub ow: u32,
        pub factor: u32,
        pub row: u32,
        pub x_off: u32,
        pub x_bs: u32,
        pub y_off: u32,
        pub y_bs: u32,
        pub pad0: u32,
        pub pad1: u32,
        pub pad2: u32,
        pub pad3: u32,
    }
}

/// Crops per preprocessing dispatch: the length of [`PreprocessParams::crops`] in 2-row pairs.
pub const MAX_CROPS_PER_DISPATCH: usize = 64;

uniform_block! {
    /// `PreprocessParams` of preprocess.wgsl: a batch of crop warps from one frame.
    pub struct PreprocessParams {
        pub src_w: u32,
        pub src_h: u32,
        pub src_stride: u32,
        pub src_off: u32,
        pub out_w: u32,
        pub out_h: u32,
        pub n: u32,
        pub dst_off: u32,
        pub dst_bs: u32,
        pub bgra: u32,
        pub pad0: u32,
        pub pad1: u32,
        /// RGB mean and std (the 4th lane is unused; std's is 1 so nothing divides by 0).
        pub mean: [f32; 4],
        pub stdev: [f32; 4],
        /// Two rows `(a, b, c, _)`, `(d, e, f, _)` of the output -> frame matrix per crop.
        pub crops: [[f32; 4]; 2 * MAX_CROPS_PER_DISPATCH],
    }
}

/// The uniform block of one graph-kernel dispatch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Uniforms {
    /// A convolution chunk (`conv2d.wgsl`).
    Conv(ConvParams),
    /// An elementwise, affine or add dispatch.
    Elementwise(EwParams),
    /// A max pool.
    Pool(PoolParams),
    /// An upsampling or pixel shuffle.
    Resample(ResampleParams),
}

impl Uniforms {
    /// The largest block: every dispatch binds this many bytes of its uniform slot.
    pub const MAX_BYTES: usize = max(
        max(std::mem::size_of::<ConvParams>(), std::mem::size_of::<EwParams>()),
        max(std::mem::size_of::<PoolParams>(), std::mem::size_of::<ResampleParams>()),
    );

    /// The block's bytes, as uploaded into the dispatch's uniform slot.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Uniforms::Conv(u) => bytemuck::bytes_of(u),
            Uniforms::Elementwise(u) => bytemuck::bytes_of(u),
            Uniforms::Pool(u) => bytemuck::bytes_of(u),
            Uniforms::Resample(u) => bytemuck::bytes_of(u),
        }
    }
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// `EwParams::flags` bits: which optional terms the elementwise kernel applies.
pub mod ew_flags {
    /// `s[c] * x0`
    pub const EW_HAS_S: u32 = 1;
    /// `+ t[c]`
    pub const EW_HAS_T: u32 = 2;
    /// `+ x1`
    pub const EW_HAS_X1: u32 = 4;
    /// `x1` scaled by `sb[c]`
    pub const EW_HAS_SB: u32 = 8;
}

/// `ConvParams::res_mode`: how the residual enters the epilogue.
pub mod res_mode {
    /// No residual.
    pub const RES_NONE: u32 = 0;
    /// `v + r`
    pub const RES_ADD: u32 = 1;
    /// `v + gate[c] * r`
    pub const RES_GATE_RESIDUAL: u32 = 2;
    /// `gate[c] * v + r`
    pub const RES_GATE_CONV: u32 = 3;
}

/// `ConvParams::mode` bits of a chunked convolution.
pub mod conv_mode {
    /// Add to what earlier input-channel chunks wrote.
    pub const CONV_ACCUMULATE: u32 = 1;
    /// Last chunk: apply the epilogue.
    pub const CONV_EPILOGUE: u32 = 2;
}
