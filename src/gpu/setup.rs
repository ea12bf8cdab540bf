//! Compute-pipeline setup shared by the graph executor and the preprocessing kernel: one bind
//! group layout of buffer bindings, its pipeline layout, and pipelines from it.

use wgpu::BufferBindingType;

/// Storage binding (read-only or read-write).
pub(crate) const fn storage(read_only: bool) -> BufferBindingType {
    BufferBindingType::Storage { read_only }
}

/// Uniform binding.
pub(crate) const UNIFORM: BufferBindingType = BufferBindingType::Uniform;

/// A bind group layout for group 0 and the pipeline layout made of it.
pub(crate) struct Layouts {
    pub group: wgpu::BindGroupLayout,
    pub pipeline: wgpu::PipelineLayout,
}

/// Layouts for buffer bindings `0, 1, ...` of the given types, visible to compute shaders,
/// labelled `<label>.layout` and `<label>.pipeline_layout`.
pub(crate) fn layouts(device: &wgpu::Device, label: &str, bindings: &[BufferBindingType]) -> Layouts {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .enumerate()
        .map(|(binding, &ty)| wgpu::BindGroupLayoutEntry {
            binding: binding as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        })
        .collect();
    let group = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&format!("{label}.layout")),
        entries: &entries,
    });
    let pipeline = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&format!("{label}.pipeline_layout")),
        bind_group_layouts: &[Some(&group)],
        immediate_size: 0,
    });
    Layouts { group, pipeline }
}

/// The compute pipeline of `entry` in `module`, labelled after the entry point, with values for
/// the module's pipeline-overridable constants (`override` in WGSL; the others keep their
/// defaults).
pub(crate) fn compute_pipeline(
    device: &wgpu::Device,
    layouts: &Layouts,
    module: &wgpu::ShaderModule,
    entry: &str,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(&layouts.pipeline),
        module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
        cache: None,
    })
}
