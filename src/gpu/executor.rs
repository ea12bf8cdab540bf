//! The wgpu executor: a graph compiled once into pipelines, bind groups and buffers; one
//! inference records one command buffer.

use std::collections::HashMap;
use std::ops::Range;

use wgpu::util::DeviceExt;

use super::context::GpuContext;
use super::kernels::{gpu_input_affines, kernels_of, lower, reads_with_input_affines, Dispatch, Kernel, ParamPack};
use super::readback::{read_buffer, read_buffer_async};
use crate::error::{Error, Result};
use crate::graph::memory::{plan_with_reads, MemoryPlan};
use crate::graph::passes::optimize_for_inference;
use crate::graph::{Graph, NodeId, Op};
use crate::tensor::Tensor;

/// Uniform slots are spaced by WebGPU's default `minUniformBufferOffsetAlignment`.
const UNIFORM_STRIDE: u64 = 256;
const UNIFORM_BYTES: u64 = super::uniforms::Uniforms::MAX_BYTES as u64;
const _: () = assert!(UNIFORM_BYTES <= UNIFORM_STRIDE);
const WINDOW_BYTES: u64 = (super::kernels::WINDOW_FLOATS * 4) as u64;
/// WebGPU caps a query set at 4096 queries; two per timed dispatch.
const QUERIES_PER_SET: usize = 4096;

/// GPU time of one node (summed over its dispatches) from the timestamp queries.
#[derive(Clone, Debug)]
pub struct NodeTime {
    /// The node's id in the executed graph.
    pub node: NodeId,
    /// The node's name.
    pub name: String,
    /// The operator's kind ([`crate::graph::Op::kind`]).
    pub kind: &'static str,
    /// Start of the node's first dispatch, relative to the first dispatch of the run.
    pub start_ns: f64,
    /// GPU time of the node's dispatches, nanoseconds.
    pub ns: f64,
    /// Floating-point operations of the node (a multiply-add counts two).
    pub flops: u64,
    /// Bytes of activations and parameters the node moves, no cache reuse assumed (0 for a
    /// concatenation done in place).
    pub bytes: u64,
}

/// A graph compiled for one batch size on one device. It owns (a clone of) its
/// [`GpuContext`], so it can be stored anywhere.
pub struct GpuModel {
    ctx: GpuContext,
    /// The optimised graph actually executed.
    pub graph: Graph,
    /// Where every node's output lives in the activation arena.
    pub plan: MemoryPlan,
    /// The batch size it was compiled for.
    pub batch: usize,
    dispatches: Vec<Dispatch>,
    pipelines: HashMap<Kernel, wgpu::ComputePipeline>,
    bind_groups: Vec<wgpu::BindGroup>,
    arena: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// (node, byte offset in the arena, byte length, byte offset in staging) per graph output.
    outputs: Vec<(NodeId, u64, u64, u64)>,
    /// Size of the packed parameter buffer on the device, bytes.
    pub param_bytes: usize,
    /// How many channel affines the convolutions reading them apply as they load their input
    /// (no dispatch of their own; see [`GpuContext::fuse_input_affines`]).
    pub fused_input_affines: usize,
}

fn bytes_of(t: &[f32]) -> &[u8] {
    bytemuck::cast_slice(t)
}

impl GpuModel {
    /// Optimises the graph for inference (batch-norm folding, epilogue fusion), plans memory and
    /// builds everything a run needs, for a fixed batch size.
    pub fn compile(ctx: &GpuContext, graph: &Graph, batch: usize) -> Result<Self> {
        // The passes assume a well-formed graph (they index by node id); check it first.
        graph.validate()?;
        Self::compile_with(ctx, &optimize_for_inference(graph), batch)
    }

    /// Compiles the pipelines that [`compile`](Self::compile) will need for `graph` on `ctx`,
    /// without its weights, buffers or bind groups; returns how many the graph uses. Pipelines
    /// are cached per device (every clone of `ctx`), so this lets their compilation (the slow
    /// part of a first inference on software drivers, done by the driver or, in a browser, by
    /// its GPU process) start before the weights have arrived. A random initialisation of the
    /// model (`ModelConfig::build`) is enough: only its shapes matter.
    pub fn precompile(ctx: &GpuContext, graph: &Graph) -> Result<usize> {
        graph.validate()?;
        let g = optimize_for_inference(graph);
        let shapes = g.shapes(1)?;
        ctx.scoped("compiling the kernels", || {
            let kernels = kernels_of(&g, &shapes, ctx.subgroup_kernels, ctx.fuse_input_affines);
            Ok(ctx.pipelines.get(&ctx.device, kernels).1.len())
        })
    }

    /// Like `compile`, but runs the graph exactly as given (no passes).
    pub fn compile_with(ctx: &GpuContext, graph: &Graph, batch: usize) -> Result<Self> {
        Self::compile_with_grid_limit(ctx, graph, batch, u32::MAX)
    }

    /// [`compile_with`](Self::compile_with) with at most `max_workgroups` workgroups per grid
    /// dimension (and never more than the device allows). Grids beyond the limit are folded or
    /// split over several dispatches; a low limit lets tests exercise that on small tensors.
    pub fn compile_with_grid_limit(ctx: &GpuContext, graph: &Graph, batch: usize, max_workgroups: u32) -> Result<Self> {
        ctx.scoped("compiling the graph", || Self::build(ctx, graph.clone(), batch, max_workgroups))
    }

    /// [`GpuModel::compile_with`] that awaits the error scopes instead of blocking (browsers).
    pub async fn compile_with_async(ctx: &GpuContext, graph: &Graph, batch: usize) -> Result<Self> {
        ctx.scoped_async("compiling the graph", || Self::build(ctx, graph.clone(), batch, u32::MAX)).await
    }

    fn build(ctx: &GpuContext, graph: Graph, batch: usize, max_workgroups: u32) -> Result<Self> {
        // Shapes first: the analysis below indexes nodes by id.
        graph.shapes(batch)?;
        let absorbed = gpu_input_affines(&graph, ctx.subgroup_kernels, ctx.fuse_input_affines);
        let plan = plan_with_reads(&graph, batch, &reads_with_input_affines(&graph, &absorbed))?;
        let mut pack = ParamPack::default();
        let max_workgroups = max_workgroups.min(ctx.device.limits().max_compute_workgroups_per_dimension);
        let dispatches = lower(&graph, &plan, &mut pack, max_workgroups, ctx.subgroup_kernels, &absorbed)?;
        let limits = ctx.device.limits();
        let arena_bytes = (plan.arena_len.max(64) * 4) as u64;
        let param_bytes = (pack.data.len().max(4) * 4) as u64;
        for (what, size) in [("activation arena", arena_bytes), ("parameters", param_bytes)] {
            if size > limits.max_storage_buffer_binding_size || size > limits.max_buffer_size {
                return Err(Error::TooLarge(format!(
                    "{what} need {} MiB; this device binds at most {} MiB",
                    size >> 20,
                    limits.max_storage_buffer_binding_size >> 20
                )));
            }
        }
        let device = &ctx.device;
        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpose.arena"),
            size: arena_bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        pack.finish();
        let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("wgpose.params"),
            contents: bytes_of(&pack.data),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
        });
        let mut uniform_bytes = vec![0u8; (dispatches.len().max(1) as u64 * UNIFORM_STRIDE) as usize];
        for (i, d) in dispatches.iter().enumerate() {
            let at = i * UNIFORM_STRIDE as usize;
            let block = d.uniform.as_bytes();
            uniform_bytes[at..at + block.len()].copy_from_slice(block);
        }
        let uniforms = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("wgpose.uniforms"),
            contents: &uniform_bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        });

        let (group_layout, pipelines) = ctx.pipelines.get(device, dispatches.iter().map(|d| d.kernel));
        let bind_groups = dispatches
            .iter()
            .enumerate()
            .map(|(i, d)| {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &group_layout,
                    entries: &[
                        wgpu::BindGroupEntry { binding: 0, resource: arena.as_entire_binding() },
                        wgpu::BindGroupEntry { binding: 1, resource: params.as_entire_binding() },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &uniforms,
                                offset: i as u64 * UNIFORM_STRIDE,
                                size: wgpu::BufferSize::new(UNIFORM_BYTES),
                            }),
                        },
                        wgpu::BindGroupEntry {
                            binding: 3,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &params,
                                offset: d.window as u64 * 4,
                                size: wgpu::BufferSize::new(WINDOW_BYTES),
                            }),
                        },
                    ],
                })
            })
            .collect();

        let mut outputs = Vec::new();
        let mut staging_len = 0u64;
        for &o in &graph.outputs {
            let s = plan.shapes[o];
            let len = (s.iter().product::<usize>() * 4) as u64;
            outputs.push((o, plan.views[o].offset as u64 * 4, len, staging_len));
            staging_len += len.div_ceil(256) * 256;
        }
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpose.readback"),
            size: staging_len.max(256),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuModel {
            ctx: ctx.clone(),
            graph,
            plan,
            batch,
            dispatches,
            pipelines,
            bind_groups,
            arena,
            staging,
            outputs,
            param_bytes: pack.data.len() * 4,
            fused_input_affines: absorbed.iter().flatten().count(),
        })
    }

    /// Number of compute dispatches one inference records.
    pub fn dispatch_count(&self) -> usize {
        self.dispatches.len()
    }

    fn check_inputs(&self, inputs: &[Tensor]) -> Result<()> {
        let ids = self.graph.inputs();
        if ids.len() != inputs.len() {
            return Err(Error::Input(format!("the graph takes {} input(s), got {}", ids.len(), inputs.len())));
        }
        for (&id, t) in ids.iter().zip(inputs) {
            let want = self.plan.shapes[id];
            if t.shape != want {
                return Err(Error::Input(format!(
                    "input `{}` must have shape {want:?} (this model was compiled for batch {}), got {:?}",
                    self.graph.nodes[id].name, self.batch, t.shape
                )));
            }
            if let Some(i) = t.first_non_finite() {
                return Err(Error::Input(format!(
                    "input `{}` holds a non-finite value ({}) at index {i}",
                    self.graph.nodes[id].name, t.data[i]
                )));
            }
        }
        Ok(())
    }

    /// Uploads inputs and records one command buffer: every dispatch, then the copies of the
    /// outputs to the readback buffer. With `timing`, each dispatch gets its own pass with
    /// begin/end timestamps.
    fn encode(&self, inputs: &[Tensor], timing: Option<&[wgpu::QuerySet]>) -> Result<wgpu::CommandBuffer> {
        self.check_inputs(inputs)?;
        for (&id, t) in self.graph.inputs().iter().zip(inputs) {
            self.ctx.queue.write_buffer(&self.arena, self.plan.views[id].offset as u64 * 4, bytes_of(&t.data));
        }
        let mut enc =
            self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpose.run") });
        self.record(&mut enc, timing);
        Ok(enc.finish())
    }

    /// Records every dispatch and the output copies into `enc`.
    fn record(&self, enc: &mut wgpu::CommandEncoder, timing: Option<&[wgpu::QuerySet]>) {
        match timing {
            None => {
                let mut pass = enc
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpose"), timestamp_writes: None });
                for (i, d) in self.dispatches.iter().enumerate() {
                    pass.set_pipeline(&self.pipelines[&d.kernel]);
                    pass.set_bind_group(0, &self.bind_groups[i], &[]);
                    pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
                }
            }
            Some(sets) => {
                for (i, d) in self.dispatches.iter().enumerate() {
                    let q = 2 * i;
                    let set = &sets[q / QUERIES_PER_SET];
                    let at = (q % QUERIES_PER_SET) as u32;
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(at),
                            end_of_pass_write_index: Some(at + 1),
                        }),
                    });
                    pass.set_pipeline(&self.pipelines[&d.kernel]);
                    pass.set_bind_group(0, &self.bind_groups[i], &[]);
                    pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
                }
            }
        }
        for &(_, src, len, dst) in &self.outputs {
            enc.copy_buffer_to_buffer(&self.arena, src, &self.staging, dst, len);
        }
    }

    /// The activation arena and the element offset of the first input's `[N, C, H, W]` block:
    /// where a producer on the GPU (the preprocessing kernel) writes the network input.
    pub(crate) fn input_target(&self) -> Result<(&wgpu::Buffer, u64)> {
        let id = *self.graph.inputs().first().ok_or_else(|| Error::Graph("the graph has no input".into()))?;
        Ok((&self.arena, self.plan.views[id].offset as u64))
    }

    /// The device this model runs on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Records `prelude` (which writes the network input into the arena at the given element
    /// offset) and every dispatch into one command buffer.
    fn encode_with_prelude(
        &self,
        prelude: impl FnOnce(&mut wgpu::CommandEncoder, &wgpu::Buffer, u64) -> Result<()>,
    ) -> Result<wgpu::CommandBuffer> {
        let (arena, offset) = self.input_target()?;
        let mut enc =
            self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpose.run") });
        prelude(&mut enc, arena, offset)?;
        self.record(&mut enc, None);
        Ok(enc.finish())
    }

    /// Runs one inference whose input is written on the GPU by `prelude` (recorded first, into
    /// the same command buffer: the frame never comes back to the CPU before the heatmaps).
    pub fn run_with_prelude(
        &mut self,
        prelude: impl FnOnce(&mut wgpu::CommandEncoder, &wgpu::Buffer, u64) -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        let cmd = self.ctx.scoped("recording the inference", || self.encode_with_prelude(prelude))?;
        self.submit_and_read(cmd)
    }

    /// [`GpuModel::run_with_prelude`] without blocking the thread (see [`GpuModel::run_async`]).
    pub async fn run_with_prelude_async(
        &mut self,
        prelude: impl FnOnce(&mut wgpu::CommandEncoder, &wgpu::Buffer, u64) -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        let cmd = self.ctx.scoped_async("recording the inference", || self.encode_with_prelude(prelude)).await?;
        self.submit_and_read_async(cmd).await
    }

    /// Byte ranges of the outputs in the readback buffer.
    fn output_ranges(&self) -> Vec<Range<u64>> {
        self.outputs.iter().map(|&(_, _, len, at)| at..at + len).collect()
    }

    fn tensors(&self, data: Vec<Vec<f32>>) -> Vec<Tensor> {
        self.outputs
            .iter()
            .zip(data)
            .map(|(&(id, ..), data)| Tensor { shape: self.plan.shapes[id].to_vec(), data })
            .collect()
    }

    fn submit_and_read(&self, cmd: wgpu::CommandBuffer) -> Result<Vec<Tensor>> {
        let data = self.ctx.scoped("running the inference", || {
            self.ctx.queue.submit([cmd]);
            read_buffer::<f32>(&self.ctx.device, &self.staging, &self.output_ranges())
        })?;
        Ok(self.tensors(data))
    }

    async fn submit_and_read_async(&self, cmd: wgpu::CommandBuffer) -> Result<Vec<Tensor>> {
        self.ctx
            .scoped_async("running the inference", || {
                self.ctx.queue.submit([cmd]);
                Ok(())
            })
            .await?;
        let data = read_buffer_async::<f32>(&self.ctx.device, &self.staging, &self.output_ranges()).await?;
        self.ctx.check_lost()?;
        Ok(self.tensors(data))
    }

    /// Runs one inference and blocks until the outputs are back on the CPU.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let cmd = self.ctx.scoped("recording the inference", || self.encode(inputs, None))?;
        self.submit_and_read(cmd)
    }

    /// Runs one inference without blocking the thread: the future resolves when the outputs are
    /// mapped. In browsers the event loop drives it; natively each poll of the future polls the
    /// device once, so prefer `run` there.
    pub async fn run_async(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let cmd = self.ctx.scoped_async("recording the inference", || self.encode(inputs, None)).await?;
        self.submit_and_read_async(cmd).await
    }

    /// Runs one inference with a timestamp around every dispatch and returns the outputs and
    /// the GPU time per node (in node order, nodes without dispatches left out).
    pub fn profile(&mut self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<NodeTime>)> {
        let (readback, n_queries) = self.profile_submit(inputs)?;
        let device = &self.ctx.device;
        let outputs = read_buffer::<f32>(device, &self.staging, &self.output_ranges())?;
        #[allow(clippy::single_range_in_vec_init)] // a slice of one range (the readback takes several)
        let ticks = read_buffer::<u64>(device, &readback, &[0..(n_queries * 8) as u64])?.remove(0);
        self.ctx.check_lost()?;
        self.profile_finish(outputs, ticks)
    }

    /// [`GpuModel::profile`] awaiting the readbacks instead of blocking (the browser build).
    pub async fn profile_async(&mut self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<NodeTime>)> {
        let (readback, n_queries) = self.profile_submit(inputs)?;
        let device = &self.ctx.device;
        let outputs = read_buffer_async::<f32>(device, &self.staging, &self.output_ranges()).await?;
        #[allow(clippy::single_range_in_vec_init)] // a slice of one range (the readback takes several)
        let ticks = read_buffer_async::<u64>(device, &readback, &[0..(n_queries * 8) as u64]).await?.remove(0);
        self.ctx.check_lost()?;
        self.profile_finish(outputs, ticks)
    }

    /// Records the timed inference and the timestamp resolve, submits them, and returns the
    /// buffer the ticks will be read from and the number of queries.
    fn profile_submit(&mut self, inputs: &[Tensor]) -> Result<(wgpu::Buffer, usize)> {
        if !self.ctx.timestamps {
            return Err(Error::Gpu(format!("{} does not offer timestamp queries", self.ctx.describe())));
        }
        let n_queries = 2 * self.dispatches.len();
        let device = &self.ctx.device;
        let sets: Vec<wgpu::QuerySet> = (0..n_queries.div_ceil(QUERIES_PER_SET))
            .map(|s| {
                device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("wgpose.timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: (n_queries - s * QUERIES_PER_SET).min(QUERIES_PER_SET) as u32,
                })
            })
            .collect();
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpose.timestamps.resolve"),
            size: (n_queries.max(1) * 8) as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpose.timestamps.readback"),
            size: (n_queries.max(1) * 8) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.ctx.scoped("profiling the inference", || {
            let cmd = self.encode(inputs, Some(&sets))?;
            let mut enc =
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpose.resolve") });
            for (s, set) in sets.iter().enumerate() {
                let count = (n_queries - s * QUERIES_PER_SET).min(QUERIES_PER_SET) as u32;
                enc.resolve_query_set(set, 0..count, &resolve, (s * QUERIES_PER_SET * 8) as u64);
            }
            enc.copy_buffer_to_buffer(&resolve, 0, &readback, 0, (n_queries * 8) as u64);
            self.ctx.queue.submit([cmd, enc.finish()]);
            Ok(())
        })?;
        Ok((readback, n_queries))
    }

    /// Outputs and per-node times from the read-back outputs and timestamp ticks.
    fn profile_finish(&self, outputs: Vec<Vec<f32>>, ticks: Vec<u64>) -> Result<(Vec<Tensor>, Vec<NodeTime>)> {
        let outputs = self.tensors(outputs);
        let period = self.ctx.queue.get_timestamp_period() as f64;
        let stats = self.graph.stats(self.batch)?;
        let mut per_node: Vec<Option<NodeTime>> = vec![None; self.graph.nodes.len()];
        let t0 = ticks.first().copied().unwrap_or(0);
        for (i, d) in self.dispatches.iter().enumerate() {
            let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            let start_ns = ticks[2 * i].saturating_sub(t0) as f64 * period;
            let node = &self.graph.nodes[d.node];
            let e = per_node[d.node].get_or_insert_with(|| NodeTime {
                node: d.node,
                name: node.name.clone(),
                kind: node.op.kind(),
                start_ns,
                ns: 0.0,
                flops: stats[d.node].flops,
                bytes: if matches!(node.op, Op::Concat) { 0 } else { stats[d.node].bytes },
            });
            e.ns += ns;
        }
        Ok((outputs, per_node.into_iter().flatten().collect()))
    }
}
