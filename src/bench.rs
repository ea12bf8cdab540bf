//! Benchmarks behind `wgpose bench`: a fixed set of layers on both executors. Times are medians
//! of repeated runs; GPU times come from timestamp queries (kernel time only) when the adapter
//! has them, otherwise from the wall clock around a blocking run.

use std::time::Instant;

use crate::cpu::gemm::{matmul, Mat, MatMut, Parallelism};
use crate::error::Result;
use crate::gpu::{GpuContext, GpuModel};
use crate::graph::{Act, Conv2d, Epilogue, Graph, Op};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// One measured row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    /// The layer's name, from [`op_cases`].
    pub op: String,
    /// `cpu` or `gpu`.
    pub device: String,
    /// Median milliseconds: GPU kernel time from timestamp queries when the adapter has them, else
    /// the wall time.
    pub ms: f64,
    /// Floating-point operations per second at `ms` (multiply-add = 2), in billions.
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
        ("conv3x3/2 64->128 @64x64", [1, 64, 64, 64], conv(64, 128, 3, 2, 1, Act::None)),
        ("conv1x1/2 64->128 @64x64", [1, 64, 64, 64], conv(64, 128, 1, 2, 1, Act::None)),
        ("conv7x7/2 3->64 @256x256", [1, 3, 256, 256], conv(3, 64, 7, 2, 1, Act::Relu)),
        ("depthwise3x3 128 @64x64", [1, 128, 64, 64], conv(128, 128, 3, 1, 128, Act::None)),
        ("pixel_shuffle x2 64 @64x64", [1, 64, 64, 64], Op::PixelShuffle { factor: 2 }),
        (
            "max_pool 3x3/2 64 @128x128",
            [1, 64, 128, 128],
            Op::MaxPool { kernel: [3, 3], stride: [2, 2], padding: [1, 1] },
        ),
        (
            "max_pool 2x2/2 128 @64x64",
            [1, 128, 64, 64],
            Op::MaxPool { kernel: [2, 2], stride: [2, 2], padding: [0, 0] },
        ),
        ("upsample_nearest x2 128 @32x32", [1, 128, 32, 32], Op::UpsampleNearest { factor: 2 }),
    ]
}

/// The graph of one layer applied to an input of shape `input` (NCHW).
pub fn single_op_graph(input: [usize; 4], op: Op) -> Result<Graph> {
    let mut g = Graph::new();
    let x = g.push("input", Op::Input { chw: [input[1], input[2], input[3]] }, vec![])?;
    let y = g.push("op", op, vec![x])?;
    g.outputs = vec![y];
    g.shapes(input[0])?;
    Ok(g)
}

/// The seeded random input (values in -1..1) every layer benchmark feeds its layer.
pub fn op_input(input: [usize; 4]) -> Result<Tensor> {
    let mut rng = Rng::new(7);
    Tensor::new(input.to_vec(), rng.vec(input.iter().product(), -1.0, 1.0))
}

/// What a whole-model benchmark runs: the graph of `cfg` with seeded random weights (seed 0) and
/// seeded random inputs (values in -1..1) for a batch of `batch`.
pub fn model_case(cfg: &crate::models::ModelConfig, batch: usize) -> Result<(Graph, Vec<Tensor>)> {
    let g = cfg.build(0)?;
    let shapes = g.shapes(batch)?;
    let mut rng = Rng::new(3);
    let inputs: Vec<Tensor> = g
        .inputs()
        .iter()
        .map(|&i| Tensor::new(shapes[i].to_vec(), rng.vec(shapes[i].iter().product(), -1.0, 1.0)))
        .collect::<Result<_>>()?;
    Ok((g, inputs))
}

/// The median of `v` (the upper one for an even count); NaN when `v` is empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Median wall-clock milliseconds of `f` over `reps` runs after one warm-up.
pub fn time_ms(reps: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    time_ms_paced(reps, std::time::Duration::ZERO, f)
}

/// [`time_ms`] with the thread asleep for `gap` before each timed run, as a live loop idles
/// between frames: the CPU executor's pool, the caches and (on a virtual machine) the CPUs
/// themselves are cold when each run starts.
pub fn time_ms_paced(reps: usize, gap: std::time::Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
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
        let inputs = vec![op_input(input)?];
        if with_cpu {
            let packed = crate::cpu::PackedGraph::new(g.clone());
            let cpu_ms = time_ms(reps, || packed.run(&inputs).map(|_| ()))?;
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
    /// The config's name.
    pub model: String,
    /// `cpu` or `gpu`.
    pub device: String,
    /// NCHW of the input.
    pub input: [usize; 4],
    /// Median wall-clock latency of one blocking inference (upload, compute, readback).
    pub ms: f64,
    /// Compile plus first inference: what a user waits for on the first call.
    pub first_ms: f64,
    /// Floating-point operations per second at `ms` (multiply-add = 2), in billions.
    pub gflops: f64,
    /// Peak activation memory (GPU: the planned arena; CPU: the largest set of live tensors).
    pub activation_mib: f64,
    /// Parameter memory at 4 bytes per parameter.
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
        for (i, &l) in last[..=id].iter().enumerate() {
            if l == id {
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
    bench_model_paced(ctx, cfg, batch, reps, with_cpu, std::time::Duration::ZERO)
}

/// [`bench_model`] with `gap` of idle time before each timed run ([`time_ms_paced`]).
pub fn bench_model_paced(
    ctx: Option<&GpuContext>,
    cfg: &crate::models::ModelConfig,
    batch: usize,
    reps: usize,
    with_cpu: bool,
    gap: std::time::Duration,
) -> Result<Vec<ModelBenchRow>> {
    let (g, inputs) = model_case(cfg, batch)?;
    let flops = g.flops(batch)? as f64;
    let input = [batch, cfg.input[0], cfg.input[1], cfg.input[2]];
    let param_mib = g.param_count() as f64 * 4.0 / 1048576.0;
    let mut rows = Vec::new();
    if with_cpu {
        // As an `Estimator` runs it: fused, weights packed on the first call.
        let fused = crate::cpu::PackedGraph::new(crate::graph::passes::optimize_for_inference(&g));
        let t0 = Instant::now();
        fused.run(&inputs)?;
        let first_ms = t0.elapsed().as_secs_f64() * 1e3;
        let ms = time_ms_paced(reps, gap, || fused.run(&inputs).map(|_| ()))?;
        rows.push(ModelBenchRow {
            model: cfg.name.into(),
            device: "cpu".into(),
            input,
            ms,
            first_ms,
            gflops: flops / ms / 1e6,
            activation_mib: cpu_peak_activation_bytes(fused.graph(), batch)? as f64 / 1048576.0,
            param_mib,
        });
    }
    if let Some(ctx) = ctx {
        let t0 = Instant::now();
        let mut m = GpuModel::compile(ctx, &g, batch)?;
        m.run(&inputs)?;
        let first_ms = t0.elapsed().as_secs_f64() * 1e3;
        let ms = time_ms_paced(reps, gap, || m.run(&inputs).map(|_| ()))?;
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

/// Training FLOPs per image as a multiple of the forward FLOPs: the backward pass costs about
/// twice the forward (the gradient with respect to the input plus the one with respect to the
/// weights), so forward + backward is 3x forward.
pub const TRAIN_FLOPS_PER_FORWARD: f64 = 3.0;

/// One row of `wgpose bench train`: the CPU training step of one config.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainBenchRow {
    /// The config's name.
    pub model: String,
    /// Images per step.
    pub batch: usize,
    /// `[c, h, w]` of one input image.
    pub input: [usize; 3],
    /// Trainable parameters.
    pub params: usize,
    /// The loss of the step, as `wgpose train` picks it: `mse`, or `rce` on logits for
    /// sigmoid-output models.
    pub loss: String,
    /// Forward FLOPs per image of the training graph (multiply-add = 2).
    pub fwd_gflops_per_image: f64,
    /// [`TRAIN_FLOPS_PER_FORWARD`] x the forward FLOPs.
    pub train_gflops_per_image: f64,
    /// Training throughput: `batch` / `ms_per_step`.
    pub images_per_s: f64,
    /// Median wall time of one step (forward, loss, backward, optimiser update).
    pub ms_per_step: f64,
    /// Training FLOPs per second: `train_gflops_per_image * images_per_s`.
    pub gflop_s: f64,
    /// Rayon threads the executor ran on.
    pub threads: usize,
}

/// The configurations `wgpose bench train` measures by default: every config trained on LSP
/// (name ending in `-lsp`).
pub fn train_configs() -> Vec<crate::models::ModelConfig> {
    crate::models::configs().into_iter().filter(|c| c.name.ends_with("-lsp")).collect()
}

/// Benchmarks the CPU training step of every [`train_configs`] entry whose name contains
/// `filter`, with the input size overridden by `size` (`[h, w]`), at `batch` images per step,
/// reporting each row as it is measured. See [`bench_train_config`].
pub fn bench_train(
    filter: Option<&str>,
    size: Option<[usize; 2]>,
    batch: usize,
    reps: usize,
    mut report: impl FnMut(&TrainBenchRow),
) -> Result<Vec<TrainBenchRow>> {
    let mut rows = Vec::new();
    for cfg in train_configs() {
        if filter.is_some_and(|f| !cfg.name.contains(f)) {
            continue;
        }
        let cfg = match size {
            Some([h, w]) => cfg.with_input([cfg.input[0], h, w]),
            None => cfg,
        };
        let row = bench_train_config(&cfg, batch, reps)?;
        report(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Median time of the training step `wgpose train` performs, on random data: the graph built
/// from `cfg` (seed 0), its final sigmoid stripped and RCE as the loss for sigmoid-output models
/// (MSE otherwise), batch norms in training mode, running statistics written back, and an Adam
/// update (lr 1e-3, no weight decay). Inputs are uniform in [-1, 1) and targets are Gaussian
/// heatmaps (sigma 2) around random keypoints, about 10% of joints unlabelled (fixed seeds).
/// One warm-up step (which also allocates the optimiser state), then `reps` timed steps.
pub fn bench_train_config(cfg: &crate::models::ModelConfig, batch: usize, reps: usize) -> Result<TrainBenchRow> {
    use crate::autodiff::{gaussian_heatmaps, mse_loss, rce_loss, stack_batch, train_step, BnMode, Optimizer};
    use crate::error::Error;

    if batch == 0 {
        return Err(Error::Input("the training benchmark needs a batch of at least 1".into()));
    }
    let rce = cfg.sigmoid_output();
    let mut graph = cfg.build(0)?;
    if rce {
        graph = crate::autodiff::strip_final_sigmoid(&graph).0;
    }
    let shapes = graph.shapes(batch)?;
    let inputs = graph.inputs();
    let &[input_id] = inputs.as_slice() else {
        return Err(Error::Graph(format!("{}: expected one graph input, found {}", cfg.name, inputs.len())));
    };
    let &first_out =
        graph.outputs.first().ok_or_else(|| Error::Graph(format!("{}: the graph has no output", cfg.name)))?;
    let [_, k, h, w] = shapes[first_out];

    let mut rng = Rng::new(5);
    let xs = shapes[input_id];
    let x = Tensor::new(xs.to_vec(), rng.vec(xs.iter().product(), -1.0, 1.0))?;
    let mut targets = Vec::with_capacity(batch);
    let mut weights = Vec::with_capacity(batch * k);
    for _ in 0..batch {
        let kps: Vec<[f32; 3]> = (0..k)
            .map(|_| {
                let v = if rng.uniform() < 0.1 { 0.0 } else { 1.0 };
                [rng.range(0.0, w as f32), rng.range(0.0, h as f32), v]
            })
            .collect();
        let (t, wt) = gaussian_heatmaps(&kps, k, h, w, 2.0);
        targets.push(t);
        weights.extend(wt);
    }
    let target = stack_batch(&targets)?;

    let fwd_flops = graph.flops(batch)? as f64 / batch as f64;
    let params = graph.param_count();
    let mut optim = Optimizer::adam(0.0);
    let lr = 1e-3;
    let ms = time_ms(reps.max(1), || {
        let (loss, grads, tape) = train_step(&graph, std::slice::from_ref(&x), BnMode::Train, |outs| {
            if rce {
                rce_loss(outs, &target, &weights)
            } else {
                mse_loss(outs, &target, &weights)
            }
        })?;
        if !loss.is_finite() {
            return Err(Error::Input(format!("{}: the benchmark step's loss became {loss}", cfg.name)));
        }
        tape.apply_running_stats(&mut graph);
        drop(tape);
        optim.apply(&mut graph, &grads, lr)
    })?;
    let fwd_gflops_per_image = fwd_flops / 1e9;
    let train_gflops_per_image = TRAIN_FLOPS_PER_FORWARD * fwd_gflops_per_image;
    let images_per_s = batch as f64 / (ms / 1e3);
    Ok(TrainBenchRow {
        model: cfg.name.into(),
        batch,
        input: cfg.input,
        params,
        loss: if rce { "rce" } else { "mse" }.into(),
        fwd_gflops_per_image,
        train_gflops_per_image,
        images_per_s,
        ms_per_step: ms,
        gflop_s: train_gflops_per_image * images_per_s,
        threads: rayon::current_num_threads(),
    })
}

/// Side of the square f32 GEMM [`gemm_peak_gflops`] times.
pub const PEAK_GEMM_N: usize = 1024;

/// The measured CPU peak: GFLOP/s of a `1024 x 1024 x 1024` f32 GEMM (`2 n^3` FLOPs) through
/// `cpu::gemm::matmul` exactly as the CPU executor's convolutions call it (row-major, overwrite, rayon
/// parallelism over `threads_hint` threads, or single-threaded for 1; 0 means
/// `rayon::current_num_threads()`). Median of 5 runs after a warm-up.
pub fn gemm_peak_gflops(threads_hint: usize) -> f64 {
    const REPS: usize = 5;
    let n = PEAK_GEMM_N;
    let threads = if threads_hint == 0 { rayon::current_num_threads() } else { threads_hint };
    let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let mut rng = Rng::new(17);
    let a = rng.vec(n * n, -1.0, 1.0);
    let b = rng.vec(n * n, -1.0, 1.0);
    let mut c = vec![0.0f32; n * n];
    let mut run = || {
        matmul(MatMut::rows(&mut c, n, n, n), Mat::rows(&a, n, n, n), Mat::rows(&b, n, n, n), false, par);
    };
    run();
    let mut t = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let s = Instant::now();
        run();
        t.push(s.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / median(t) / 1e9
}

/// One row of `wgpose bench pipeline`: per-frame wall times of the stages a user runs on a
/// whole picture, on one executor.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PipelineBenchRow {
    /// `cpu` or `gpu`.
    pub device: String,
    /// `[w, h]` of the picture, in pixels.
    pub image: [usize; 2],
    /// People the detector found (the pose stages run on all of them).
    pub people: usize,
    /// The pose network on one given box (upload, crop, network, readback, decode): a followed
    /// frame of the tracker.
    pub pose_ms: f64,
    /// The detector alone (upload, letterbox, network, readback, peaks and boxes).
    pub detector_ms: f64,
    /// `Boxes::Auto`: detector, every person's pose, one refinement pass (a frame where the
    /// tracker searches).
    pub auto_ms: f64,
}

/// Times the detector, the pose network on one box and the whole `Boxes::Auto` pipeline on
/// `image` with `est` (which must have a detector attached), medians of `reps` runs after a
/// warm-up.
pub fn bench_pipeline(
    est: &mut crate::Estimator,
    image: &crate::image_io::LoadedImage,
    reps: usize,
) -> Result<PipelineBenchRow> {
    use crate::pipeline::crop::ImageRef;
    let pixels = ImageRef::from(&image.rgb);
    let people = est.estimate(image, crate::Boxes::Auto)?;
    let bbox = people.first().map_or_else(|| crate::Picture::from(image).full_box(), |p| p.bbox);
    let pose_ms = time_ms(reps, || est.estimate(image, bbox).map(|_| ()))?;
    let detector_ms = {
        let det = est
            .detector_mut()
            .ok_or_else(|| crate::Error::Input("bench pipeline needs an estimator with a person detector".into()))?;
        time_ms(reps, || det.detect(&pixels).map(|_| ()))?
    };
    let auto_ms = time_ms(reps, || est.estimate(image, crate::Boxes::Auto).map(|_| ()))?;
    Ok(PipelineBenchRow {
        device: if est.on_gpu() { "gpu" } else { "cpu" }.into(),
        image: [image.rgb.width() as usize, image.rgb.height() as usize],
        people: people.len(),
        pose_ms,
        detector_ms,
        auto_ms,
    })
}

/// Resident set size of this process in KiB (`VmRSS` of /proc/self/status; Linux only), for
/// the soaks (`wgpose soak`, the demo's `--memory-every`).
pub fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| crate::Error::Io { path: "/proc/self/status".into(), source: e })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| crate::Error::Format { path: "/proc/self/status".into(), msg: "no VmRSS line".into() })
}
