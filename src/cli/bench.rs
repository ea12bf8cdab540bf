//! `wgpose bench ops|models|train`.

use clap::{Args, ValueEnum};
use wgpose::bench::{bench_ops, bench_train, gemm_peak_gflops, BenchRow, TrainBenchRow, PEAK_GEMM_N};
use wgpose::Result;

use super::{open_gpu, DeviceArg};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// Single layers: 3x3, 1x1, 7x7/2, depthwise convs, pixel shuffle, max pools, nearest upsampling.
    Ops,
    /// Whole networks: latency, first-call latency, GFLOP/s and memory per config.
    Models,
    /// CPU training step (forward + backward + optimiser) per trainable config: images/s and
    /// GFLOP/s next to the measured GEMM peak.
    Train,
    /// Per frame on whole pictures: the person detector, the pose network on one box, and both
    /// together (`Boxes::Auto`: detector, every person, one refinement pass), per executor.
    Pipeline,
}

#[derive(Args)]
pub struct BenchArgs {
    suite: Suite,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Timed repetitions per measurement (median reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Both)]
    device: DeviceArg,
    /// Only the cases (ops or model names) that contain this text.
    #[arg(long)]
    filter: Option<String>,
    /// Input size HxW for `models` and `train`, overriding each config's own (e.g. 128x128).
    #[arg(long)]
    size: Option<String>,
    /// `models`: idle milliseconds before each timed run, as a live loop idles between frames
    /// (33 at 30 fps): the CPU pool and caches are cold when each run starts.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    /// Images per run (default: 1 for `models`, 16 for `train`).
    #[arg(long)]
    batch: Option<usize>,
    /// `pipeline`: the pose model (config name or weights file).
    #[arg(long, default_value = wgpose::models::DEFAULT_MODEL)]
    model: String,
    /// `pipeline`: the pictures (default: the bundled sample and the LSPET test fixtures).
    #[arg(long, num_args = 1..)]
    images: Vec<std::path::PathBuf>,
}

/// Batch of `bench train` when `--batch` is not given (the `wgpose train` default).
const TRAIN_BATCH: usize = 16;

pub fn run(a: BenchArgs) -> Result<()> {
    if a.suite == Suite::Train {
        return run_train(&a);
    }
    let ctx = open_gpu(a.device)?;
    if let Some(c) = &ctx {
        if !a.json {
            println!("GPU: {}   CPU threads: {}", c.describe(), rayon::current_num_threads());
        }
    }
    let print = |r: &BenchRow| {
        if a.json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            println!(
                "{:<30} {:<4} {:>10.3} ms {:>8.2} GFLOP/s {:>7.2} GB/s   (wall {:.3} ms)",
                r.op, r.device, r.ms, r.gflops, r.gb_s, r.wall_ms
            );
        }
    };
    match a.suite {
        Suite::Models => {
            let size = a.size.as_deref().map(super::profile::parse_size).transpose()?;
            if !a.json {
                println!(
                    "{:<24} {:<4} {:>14} {:>10} {:>11} {:>8} {:>10} {:>9}",
                    "model", "dev", "input", "ms", "first ms", "GFLOP/s", "act. MiB", "par. MiB"
                );
            }
            for cfg in wgpose::models::configs() {
                if a.filter.as_deref().is_some_and(|f| !cfg.name.contains(f)) {
                    continue;
                }
                let cfg = match size {
                    Some([h, w]) => cfg.with_input([cfg.input[0], h, w]),
                    None => cfg,
                };
                let rows = wgpose::bench::bench_model_paced(
                    ctx.as_ref(),
                    &cfg,
                    a.batch.unwrap_or(1),
                    a.reps.max(1),
                    !matches!(a.device, DeviceArg::Gpu | DeviceArg::Auto),
                    std::time::Duration::from_millis(a.gap_ms),
                )?;
                for r in rows {
                    if a.json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        println!(
                            "{:<24} {:<4} {:>14} {:>10.1} {:>11.1} {:>8.2} {:>10.1} {:>9.1}",
                            r.model,
                            r.device,
                            format!("{}x{}x{}x{}", r.input[0], r.input[1], r.input[2], r.input[3]),
                            r.ms,
                            r.first_ms,
                            r.gflops,
                            r.activation_mib,
                            r.param_mib
                        );
                    }
                }
            }
        }
        Suite::Ops => {
            bench_ops(
                ctx.as_ref(),
                a.reps.max(1),
                a.filter.as_deref(),
                !matches!(a.device, DeviceArg::Gpu | DeviceArg::Auto),
                print,
            )?;
        }
        Suite::Pipeline => run_pipeline(&a, ctx.as_ref())?,
        // Handled before any GPU is opened.
        Suite::Train => return run_train(&a),
    }
    Ok(())
}

/// `wgpose bench pipeline`: the detector's cost next to the pose network's, per executor.
fn run_pipeline(a: &BenchArgs, ctx: Option<&wgpose::gpu::GpuContext>) -> Result<()> {
    use wgpose::{Estimator, EstimatorOptions};
    let (cfg, weights) = super::predict::resolve_model(&a.model)?;
    let images = if a.images.is_empty() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut v = vec![root.join("assets/sample.jpg")];
        v.extend(
            ["im08001.jpg", "im08002.jpg", "im08003.jpg"].map(|f| root.join("tests/fixtures/lspet-val/images").join(f)),
        );
        v
    } else {
        a.images.clone()
    };
    let mut executors: Vec<Option<&wgpose::gpu::GpuContext>> = Vec::new();
    if a.device != DeviceArg::Gpu {
        executors.push(None);
    }
    if let Some(c) = ctx.filter(|_| a.device != DeviceArg::Cpu) {
        executors.push(Some(c));
    }
    if !a.json {
        println!("CPU: {}   threads: {}", super::cpu_model(), rayon::current_num_threads());
        println!(
            "{:<28} {:<4} {:>9} {:>6} {:>9} {:>12} {:>12} {:>10}",
            "image", "dev", "size", "people", "pose ms", "detector ms", "det / pose", "auto ms"
        );
    }
    for ex in executors {
        let mut est = Estimator::new(
            &cfg,
            weights.as_deref(),
            ex,
            EstimatorOptions { random_weights: true, ..Default::default() },
        )?;
        for path in &images {
            let img = wgpose::image_io::load_rgb(path)?;
            let r = wgpose::bench::bench_pipeline(&mut est, &img, a.reps.max(1))?;
            if a.json {
                let mut v = serde_json::to_value(&r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("file".into(), path.display().to_string().into());
                }
                println!("{v}");
            } else {
                let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                println!(
                    "{:<28} {:<4} {:>9} {:>6} {:>9.1} {:>12.1} {:>12.2} {:>10.1}",
                    name,
                    r.device,
                    format!("{}x{}", r.image[0], r.image[1]),
                    r.people,
                    r.pose_ms,
                    r.detector_ms,
                    r.detector_ms / r.pose_ms,
                    r.auto_ms
                );
            }
        }
    }
    if !a.json {
        println!("\npose = the pose network on one box (a followed frame); detector = the detector alone;");
        println!("auto = Boxes::Auto (detector, every person found, one refinement pass: a searching frame).");
        println!("Wall-clock medians of --reps runs after a warm-up, including upload and readback.");
    }
    Ok(())
}

/// `wgpose bench train`: CPU only, no GPU is opened.
fn run_train(a: &BenchArgs) -> Result<()> {
    if matches!(a.device, DeviceArg::Gpu | DeviceArg::Auto) {
        eprintln!("note: `bench train` measures the CPU training step; --device gpu is ignored");
    }
    let size = a.size.as_deref().map(super::profile::parse_size).transpose()?;
    let batch = a.batch.unwrap_or(TRAIN_BATCH);
    let threads = rayon::current_num_threads();
    let peak = gemm_peak_gflops(threads);
    let pct = |r: &TrainBenchRow| 100.0 * r.gflop_s / peak;
    if !a.json {
        println!(
            "CPU threads: {threads}   measured CPU peak (f32 GEMM {n}x{n}x{n}): {peak:.1} GFLOP/s",
            n = PEAK_GEMM_N
        );
        println!(
            "{:<24} {:>5} {:>9} {:>10} {:>13} {:>8} {:>10} {:>9} {:>7}",
            "model", "batch", "input", "params (M)", "fwd GFLOPs/img", "img/s", "ms/step", "GFLOP/s", "% peak"
        );
    }
    let rows = bench_train(a.filter.as_deref(), size, batch, a.reps.max(1), |r| {
        if a.json {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("gemm_peak_gflops".into(), peak.into());
                o.insert("pct_of_peak".into(), pct(r).into());
            }
            println!("{v}");
        } else {
            println!(
                "{:<24} {:>5} {:>9} {:>10.2} {:>13.3} {:>8.2} {:>10.1} {:>9.2} {:>6.1}%",
                r.model,
                r.batch,
                format!("{}x{}", r.input[1], r.input[2]),
                r.params as f64 / 1e6,
                r.fwd_gflops_per_image,
                r.images_per_s,
                r.ms_per_step,
                r.gflop_s,
                pct(r)
            );
        }
    })?;
    if !a.json {
        if rows.is_empty() {
            println!("(no trainable config matches the filter)");
        }
        println!(
            "\nStep = forward (batch-norm batch statistics) + loss (MSE; RCE on logits for sigmoid-output models) + backward"
        );
        println!("+ Adam update, on random inputs and Gaussian targets; median of --reps steps after 1 warm-up.");
        println!("Training FLOPs per image = 3 x forward FLOPs (convention: backward ~ 2x forward, gradient wrt input");
        println!(
            "+ gradient wrt weights); GFLOP/s = 3 x fwd GFLOPs/img x img/s; % peak is relative to the GEMM above."
        );
    }
    Ok(())
}
