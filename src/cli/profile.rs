//! `wgpose profile --model NAME`: per-layer GPU time from timestamp queries.

use std::io::Write;

use clap::Args;
use wgpose::gpu::{GpuContext, GpuModel, NodeTime};
use wgpose::rng::Rng;
use wgpose::{Error, Result, Tensor};

#[derive(Args)]
pub struct ProfileArgs {
    /// Model config name (see `wgpose models`).
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Input size HxW overriding the config's (e.g. 128x128), to keep runs short on lavapipe.
    #[arg(long)]
    size: Option<String>,
    /// Profiled runs; the per-node median is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Sort rows by time (slowest first) instead of execution order.
    #[arg(long)]
    sort: bool,
    /// Write a Chrome trace (chrome://tracing, Perfetto) of one run.
    #[arg(long)]
    trace: Option<String>,
}

pub fn parse_size(s: &str) -> Result<[usize; 2]> {
    let bad = || Error::Input(format!("size `{s}` is not HxW (e.g. 128x128)"));
    let (h, w) = s.split_once('x').ok_or_else(bad)?;
    let h: usize = h.trim().parse().map_err(|_| bad())?;
    let w: usize = w.trim().parse().map_err(|_| bad())?;
    if h == 0 || w == 0 || h > 8192 || w > 8192 {
        return Err(Error::Input(format!("size {h}x{w} must be between 1 and 8192 on each side")));
    }
    Ok([h, w])
}

pub fn run(a: ProfileArgs) -> Result<()> {
    let mut cfg = wgpose::models::config(&a.model)?;
    if let Some(s) = &a.size {
        let [h, w] = parse_size(s)?;
        cfg = cfg.with_input([cfg.input[0], h, w]);
    }
    let graph = cfg.build(0)?;
    let ctx = GpuContext::new()?;
    // Profiling times the GPU's kernels, so unlike `run` there is no CPU fallback: say what fits.
    let mut model = GpuModel::compile(&ctx, &graph, a.batch).map_err(|e| match e {
        Error::TooLarge(why) => Error::TooLarge(format!(
            "{why} ({}); profile a smaller --size (per-layer costs scale with the pixel count), or use \
             `wgpose run`, which runs such inputs on the CPU executor",
            ctx.describe()
        )),
        other => other,
    })?;
    let shapes = graph.shapes(a.batch)?;
    let mut rng = Rng::new(1);
    let inputs: Vec<Tensor> = graph
        .inputs()
        .iter()
        .map(|&i| {
            let s = shapes[i];
            Tensor::new(s.to_vec(), rng.vec(s.iter().product(), -1.0, 1.0))
        })
        .collect::<Result<_>>()?;
    model.run(&inputs)?; // warm-up: pipeline creation and first-touch costs stay out of the table
    let mut runs: Vec<Vec<NodeTime>> = Vec::new();
    for _ in 0..a.reps.max(1) {
        runs.push(model.profile(&inputs)?.1);
    }
    let mut rows = runs[0].clone();
    for (k, r) in rows.iter_mut().enumerate() {
        r.ns = wgpose::bench::median(runs.iter().map(|run| run[k].ns).collect());
    }
    let total: f64 = rows.iter().map(|r| r.ns).sum();
    let flops: u64 = rows.iter().map(|r| r.flops).sum();
    println!(
        "{} on {}: {} nodes after fusion, {} dispatches, input {:?}, batch {}",
        cfg.name,
        ctx.describe(),
        model.graph.nodes.len(),
        model.dispatch_count(),
        cfg.input,
        a.batch
    );
    println!(
        "GPU time {:.3} ms, {:.2} GFLOP, {:.2} GFLOP/s; activations {:.1} MiB (without reuse {:.1} MiB), parameters {:.1} MiB",
        total / 1e6,
        flops as f64 / 1e9,
        flops as f64 / total,
        model.plan.peak_bytes() as f64 / 1048576.0,
        (model.plan.unplanned_len * 4) as f64 / 1048576.0,
        model.param_bytes as f64 / 1048576.0
    );
    let mut table = rows.clone();
    if a.sort {
        table.sort_by(|x, y| y.ns.total_cmp(&x.ns));
    }
    println!(
        "{:<44} {:<17} {:>9} {:>6} {:>8} {:>9} {:>7}",
        "layer", "kind", "ms", "share", "GFLOP/s", "MB moved", "GB/s"
    );
    for r in &table {
        println!(
            "{:<44} {:<17} {:>9.3} {:>5.1}% {:>8.2} {:>9.2} {:>7.2}",
            truncate(&r.name, 44),
            r.kind,
            r.ns / 1e6,
            100.0 * r.ns / total,
            r.flops as f64 / r.ns,
            r.bytes as f64 / 1e6,
            r.bytes as f64 / r.ns
        );
    }
    if let Some(path) = &a.trace {
        write_trace(path, &runs[runs.len() - 1])?;
        println!("wrote Chrome trace {path}");
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s.chars().rev().take(n - 1).collect::<Vec<_>>().into_iter().rev().collect();
        format!("…{tail}")
    }
}

/// Chrome trace event format: one complete ("X") event per node, microseconds.
fn write_trace(path: &str, rows: &[NodeTime]) -> Result<()> {
    let events: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name, "cat": r.kind, "ph": "X", "pid": 1, "tid": 1,
                "ts": r.start_ns / 1e3, "dur": r.ns / 1e3,
                "args": { "gflops": r.flops as f64 / 1e9, "bytes": r.bytes }
            })
        })
        .collect();
    let io = |e| Error::Io { path: path.to_string(), source: e };
    let mut f = std::fs::File::create(path).map_err(io)?;
    let text = serde_json::to_string_pretty(&serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" }))
        .map_err(|e| Error::Input(e.to_string()))?;
    f.write_all(text.as_bytes()).map_err(io)?;
    Ok(())
}
