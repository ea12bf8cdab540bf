//! The graph kernels' pipelines, compiled once per device and shared by every model on it.
//!
//! Compiling a pipeline is the slow part of a first inference on software drivers (SwiftShader's
//! JIT, LLVM in lavapipe): the pose network and the person detector use the same kernel
//! families, so the second model on a device should not compile them again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::kernels::Kernel;
use super::setup::{self, storage, Layouts, UNIFORM};

/// What the cache holds once the first model is compiled on the device.
struct Compiled {
    layouts: Layouts,
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    pipelines: HashMap<Kernel, wgpu::ComputePipeline>,
}

/// The cache, one per [`super::GpuContext`] (its clones share it).
#[derive(Clone, Default)]
pub(crate) struct PipelineCache(Arc<Mutex<Option<Compiled>>>);

impl std::fmt::Debug for PipelineCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().ok().and_then(|c| c.as_ref().map(|c| c.pipelines.len())).unwrap_or(0);
        write!(f, "PipelineCache({n} pipelines)")
    }
}

impl PipelineCache {
    /// The graph kernels' bind group layout and a pipeline for each of `kernels`, compiling the
    /// ones this device has not compiled yet.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        kernels: impl IntoIterator<Item = Kernel>,
    ) -> (wgpu::BindGroupLayout, HashMap<Kernel, wgpu::ComputePipeline>) {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let compiled = guard.get_or_insert_with(|| Compiled {
            layouts: setup::layouts(device, "wgpose", &[storage(false), storage(true), UNIFORM, UNIFORM]),
            modules: HashMap::new(),
            pipelines: HashMap::new(),
        });
        let mut out = HashMap::new();
        for kernel in kernels {
            if out.contains_key(&kernel) {
                continue;
            }
            if !compiled.pipelines.contains_key(&kernel) {
                let (src, entry) = kernel.source();
                let module = compiled.modules.entry(src).or_insert_with(|| trusted_module(device, src, entry));
                let pipeline = setup::compute_pipeline(device, &compiled.layouts, module, entry, &kernel.constants());
                compiled.pipelines.insert(kernel, pipeline);
            }
            out.insert(kernel, compiled.pipelines[&kernel].clone());
        }
        (compiled.layouts.group.clone(), out)
    }

    /// How many pipelines this device has compiled.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().map(|c| c.as_ref().map_or(0, |c| c.pipelines.len())).unwrap_or(0)
    }
}

fn trusted_module(device: &wgpu::Device, src: &'static str, label: &str) -> wgpu::ShaderModule {
    let desc = wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(src.into()) };
    // SAFETY: loop bounding guards against loops that never end. Every loop in shaders/ is a
    // counted `for` over a bound taken from a uniform or a constant, so it always ends; bounds
    // checks on memory accesses stay on. Without the extra counters NIR unrolls the inner tile
    // loops and keeps the accumulators in registers: 2.6x faster on lavapipe in a
    // micro-benchmark.
    unsafe {
        device.create_shader_module_trusted(
            desc,
            wgpu::ShaderRuntimeChecks { force_loop_bounding: false, ..wgpu::ShaderRuntimeChecks::checked() },
        )
    }
}
