//! The wgpu executor: WGSL kernels in `shaders/`, dispatched from a compiled graph.

mod context;
mod executor;
pub mod kernels;
mod pipelines;
pub mod readback;
pub(crate) mod setup;
pub mod uniforms;

pub use context::{is_software_adapter, GpuContext, NO_ADAPTER_HELP};
pub use executor::{GpuModel, NodeTime};
