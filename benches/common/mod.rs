//! What both criterion benchmarks share: the GPU context and criterion's settings.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;
use wgpose::gpu::GpuContext;

/// The GPU context, or `None` (with a note) when no adapter opens; the GPU benchmarks are then
/// left out and the CPU ones still run.
pub fn gpu() -> Option<GpuContext> {
    match GpuContext::new() {
        Ok(ctx) => {
            let kind = if ctx.is_software() { "software adapter" } else { "GPU" };
            eprintln!("GPU benchmarks on {} ({kind}, {:?})", ctx.adapter_info.name, ctx.adapter_info.backend);
            Some(ctx)
        }
        Err(e) => {
            eprintln!("no GPU adapter, GPU benchmarks left out: {e}");
            None
        }
    }
}

/// Few samples and short windows: a whole model on lavapipe takes tens of milliseconds per run
/// and the project's machine has two cores. `cargo bench -- --quick` shortens it further.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}
