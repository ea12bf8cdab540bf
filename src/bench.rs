//! Benchmarks behind `wgpose bench`: a fixed set of layers on both executors. Times are medians
//! of repeated runs; GPU times come from timestamp queries (kernel time only) when the adapter
//! has them, otherwise from the wall clock around a blocking run.

use std::time::Instant;

use crate::error::Result;
use crate::gpu::{GpuContext, GpuModel};
use crate::graph::{Act, Conv2d, Epilogue, Graph, Op};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// One measured row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub op: String,
    pub device: String,
    pub ms: f64,
    pub gflops: f64,
    /// Activation and parameter bytes read and written, per second (memory-bound ops).
    pub gb_s: f64,
    /// Wall time of a whole blocking run (upload, dispatches, readback), for the GPU.
    pub wall_ms: f64,
}

/// The layers `wgpose bench ops` measures: (name, input NCHW, op).
pub fn op_cases() -> Vec<(&'static str, [usize; 4], Op)> {
    let mut rng = Rng::new(42);
    let mut conv = |cin: usize, cout: usize, k: usize, stride: usize, groups: usize, act: Act| {
        let n = cout * (cin / groups) * k * k;
        Op::Conv2d(Conv2d {
            weight: Tensor { shape: vec![cout, cin / groups, k, k], data: rng.vec(n, -0.1, 0.1) },
            bias: Some(Tensor { shape: vec![cout], data: rng.vec(cout, -0.1, 0.1) }),
            stride: [stride, stride],
            padding: [k / 2, k / 2],
            dilation: [1, 1],
            groups,
            epilogue: Epilogue { act, ..Default::default() },
        })
    };
    vec![
        ("conv3x3 64->64 @64x64 +relu", [1, 64, 64, 64], conv(64, 64, 3, 1, 1, Act::Relu)),
        ("conv1x1 128->128 @64x64", [1, 128, 64, 64], conv(128, 128, 1, 1, 1, Act::None)),
        ("conv7x7/2 3->64 @256x256", [1, 3, 256, 256], conv(3, 64, 7, 2, 1, Act::Relu)),
        ("depthwise3x3 128 @64x64", [1, 128, 64, 64], conv(128, 128, 3, 1, 128, Act::None)),
        ("pixel_shuffle x2 64 @64x64", [1, 64, 64, 64], Op::PixelShuffle { factor: 2 }),
        (
            "max_pool 3x3/2 64 @128x128",
            [1, 64, 128, 128],
            Op::MaxPool { kernel: [3, 3], stride: [2, 2], padding: [1, 1] },
        ),
    ]
}

pub fn single_op_graph(input: [usize; 4], op: Op) -> Result<Graph> {
    let mut g = Graph::new();
    let x = g.push("input", Op::Input { chw: [input[1], input[2], input[3]] }, vec![])?;
    let y = g.push("op", op, vec![x])?;
    g.outputs = vec![y];
    g.shapes(input[0])?;
    Ok(g)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Median wall-clock milliseconds of `f` over `reps` runs after one warm-up.
pub fn time_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}

/// GPU measurement of a graph: (kernel ms from timestamps or NaN, wall ms).
pub fn gpu_graph_ms(ctx: &GpuContext, g: &Graph, batch: usize, inputs: &[Tensor], reps: usize) -> Result<(f64, f64)> {
    let mut m = GpuModel::compile(ctx, g, batch)?;
    let wall = time_ms(reps, || m.run(inputs).map(|_| ()))?;
    let kernel = if ctx.timestamps {
        let mut t = Vec::new();
        for _ in 0..reps.max(1) {
            let (_, times) = m.profile(inputs)?;
            t.push(times.iter().map(|n| n.ns).sum::<f64>() / 1e6);
        }
        median(t)
    } else {
        f64::NAN
    };
    Ok((kernel, wall))
}

/// Runs every op case on the CPU executor and, when `ctx` is given, on the GPU.
pub fn bench_ops(
    ctx: Option<&GpuContext>,
    reps: usize,
    filter: Option<&str>,
    with_cpu: bool,
    mut report: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for (name, input, op) in op_cases() {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let g = single_op_graph(input, op)?;
        let flops = g.flops(input[0])? as f64;
        let bytes: f64 = g.stats(input[0])?.iter().map(|s| s.bytes as f64).sum();
        let mut rng = Rng::new(7);
        let x = Tensor::new(input.to_vec(), rng.vec(input.iter().product(), -1.0, 1.0))?;
        let inputs = vec![x];
        if with_cpu {
            let cpu_ms = time_ms(reps, || crate::cpu::run(&g, &inputs).map(|_| ()))?;
            let row = BenchRow {
                op: name.into(),
                device: "cpu".into(),
                ms: cpu_ms,
                gflops: flops / cpu_ms / 1e6,
                gb_s: bytes / cpu_ms / 1e6,
                wall_ms: cpu_ms,
            };
            report(&row);
            rows.push(row);
        }
        if let Some(ctx) = ctx {
            let (kernel, wall) = gpu_graph_ms(ctx, &g, input[0], &inputs, reps)?;
            let ms = if kernel.is_finite() { kernel } else { wall };
            let row = BenchRow {
                op: name.into(),
                device: "gpu".into(),
                ms,
                gflops: flops / ms / 1e6,
                gb_s: bytes / ms / 1e6,
                wall_ms: wall,
            };
            report(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// One row of `wgpose bench models`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelBenchRow {
    pub model: String,
    pub device: String,
    pub input: [usize; 4],
    /// Median wall-clock latency of one blocking inference (upload, compute, readback).
    pub ms: f64,
    /// Compile plus first inference: what a user waits for on the first call.
    pub first_ms: f64,
    pub gflops: f64,
    /// Peak activation memory (GPU: the planned arena; CPU: the largest set of live tensors).
    pub activation_mib: f64,
    pub param_mib: f64,
}

/// Peak bytes of live tensors when nodes run in order and each tensor is freed after its last
/// reader, as the CPU executor does.
pub fn cpu_peak_activation_bytes(g: &Graph, batch: usize) -> Result<usize> {
    let shapes = g.shapes(batch)?;
    let mut last = vec![0usize; g.nodes.len()];
    for (id, n) in g.nodes.iter().enumerate() {
        last[id] = id;
        for &i in &n.inputs {
            last[i] = last[i].max(id);
        }
    }
    for &o in &g.outputs {
        last[o] = usize::MAX;
    }
    let size = |i: usize| shapes[i].iter().product::<usize>() * 4;
    let (mut live, mut peak) = (0usize, 0usize);
    for id in 0..g.nodes.len() {
        live += size(id);
        peak = peak.max(live);
        for i in 0..=id {
            if last[i] == id {
                live -= size(i);
            }
        }
    }
    Ok(peak)
}

/// Benchmarks one model config on the CPU executor and, with `ctx`, on the GPU.
pub fn bench_model(
    ctx: Option<&GpuContext>,
    cfg: &crate::models::ModelConfig,
    batch: usize,
    reps: usize,
    with_cpu: bool,
) -> Result<Vec<ModelBenchRow>> {
    let g = cfg.build(0)?;
    let flops = g.flops(batch)? as f64;
    let shapes = g.shapes(batch)?;
    let mut rng = Rng::new(3);
    let inputs: Vec<Tensor> = g
        .inputs()
        .iter()
        .map(|&i| Tensor::new(shapes[i].to_vec(), rng.vec(shapes[i].iter().product(), -1.0, 1.0)))
        .collect::<Result<_>>()?;
    let input = [batch, cfg.input[0], cfg.input[1], cfg.input[2]];
    let param_mib = g.param_count() as f64 * 4.0 / 1048576.0;
    let mut rows = Vec::new();
    if with_cpu {
        let fused = crate::graph::passes::optimize_for_inference(&g);
        let t0 = Instant::now();
        crate::cpu::run(&fused, &inputs)?;
        let first_ms = t0.elapsed().as_secs_f64() * 1e3;
        let ms = time_ms(reps, || crate::cpu::run(&fused, &inputs).map(|_| ()))?;
        rows.push(ModelBenchRow {
            model: cfg.name.into(),
            device: "cpu".into(),
            input,
            ms,
            first_ms,
            gflops: flops / ms / 1e6,
            activation_mib: cpu_peak_activation_bytes(&fused, batch)? as f64 / 1048576.0,
            param_mib,
        });
    }
    if let Some(ctx) = ctx {
        let t0 = Instant::now();
        let mut m = GpuModel::compile(ctx, &g, batch)?;
        m.run(&inputs)?;
        let first_ms = t0.elapsed().as_secs_f64() * 1e3;
        let ms = time_ms(reps, || m.run(&inputs).map(|_| ()))?;
        rows.push(ModelBenchRow {
            model: cfg.name.into(),
            device: "gpu".into(),
            input,
            ms,
            first_ms,
            gflops: flops / ms / 1e6,
            activation_mib: m.plan.peak_bytes() as f64 / 1048576.0,
            param_mib,
        });
    }
    Ok(rows)
}
