//! Subcommands of the `wgpose` binary. Library code stays in the library; this only parses
//! arguments, picks a device and prints.

// `println!` / `print!` of every subcommand go through `write_stdout`: std's versions panic when
// stdout cannot be written (`wgpose models > /dev/full`), a command-line tool reports it instead.
// Defined before the `mod` lines so their textual scope covers the subcommands and shadows std's.
macro_rules! println {
    () => { $crate::cli::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*)) };
}

mod average;
mod bench;
mod convert;
mod eval;
mod models;
mod predict;
mod profile;
mod run;
mod soak;
mod train;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::Path;

use wgpose::gpu::GpuContext;
use wgpose::{Device, Error, Estimator, EstimatorOptions, ModelConfig, Result};

#[derive(Parser)]
#[command(name = "wgpose", version, about = "Human pose estimation networks as WGSL compute shaders")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run: boxing `Train` buys nothing
enum Command {
    /// Benchmarks: `ops` (single layers), `models` (whole networks), `train` (CPU training step).
    Bench(bench::BenchArgs),
    /// Per-layer GPU time of a model from timestamp queries, as a table and optionally a Chrome trace.
    Profile(profile::ProfileArgs),
    /// Named network configurations with parameters and GFLOPs beside the papers' figures.
    Models(models::ModelsArgs),
    /// Keypoints of the person in each image: printed, as JSON, and/or drawn on the image.
    Predict(predict::PredictArgs),
    /// Runs a model over a dataset (LSP, COCO, MPII) and prints per-joint and mean metrics.
    Eval(eval::EvalArgs),
    /// Runs the raw network on an NCHW float32 .npy tensor and writes the heatmaps as .npy.
    Run(run::RunArgs),
    /// Writes a model as ONNX (opset 17) with its weights.
    Export(run::ExportArgs),
    /// Rewrites a weights file in half precision (F16), keeping F32 where f16 would overflow or lose precision.
    ConvertWeights(convert::ConvertArgs),
    /// Writes the uniform average of weight files of one network (a model soup of fine-tunes).
    AverageWeights(average::AverageArgs),
    /// Trains a model on the CPU (LSP-extended): checkpoints, CSV log, curve PNG, final weights.
    Train(wgpose::training::TrainConfig),
    /// Thousands of frames through the Estimator on each executor, resident memory at intervals.
    Soak(soak::SoakArgs),
    /// Prints the GPU adapter wgpu finds.
    Info,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The GPU unless the adapter is a software one (lavapipe, SwiftShader, WARP), where the CPU
    /// executor is faster (`predict` and `eval`; the other commands take it as `gpu`).
    Auto,
    Gpu,
    Cpu,
    /// Both executors (benchmarks only).
    Both,
}

/// Opens the GPU for a command that wants it; `None` with a notice on stderr when there is no
/// adapter and the CPU can stand in.
/// The estimator of `predict` and `eval`: `auto` lets the library choose (the caller prints
/// why); `gpu` without an adapter falls back to the CPU with a notice, as `open_gpu` does.
pub fn open_estimator(
    cfg: &ModelConfig,
    weights: Option<&Path>,
    device: DeviceArg,
    opts: EstimatorOptions,
) -> Result<Estimator> {
    let device = match device {
        DeviceArg::Auto => Device::Auto,
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Gpu | DeviceArg::Both => Device::Gpu,
    };
    // The command line announces a random initialisation (the weights' source is printed with
    // "outputs are meaningless") instead of refusing it.
    let opts = EstimatorOptions { random_weights: true, ..opts };
    match Estimator::with_options(cfg, weights, device, opts) {
        Err(Error::NoAdapter(e)) => {
            eprintln!("warning: {e}\nwarning: continuing on the CPU executor");
            Estimator::with_options(cfg, weights, Device::Cpu, opts)
        }
        r => r,
    }
}

pub fn open_gpu(device: DeviceArg) -> Result<Option<GpuContext>> {
    if device == DeviceArg::Cpu {
        return Ok(None);
    }
    match GpuContext::new() {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            eprintln!("warning: {e}\nwarning: continuing on the CPU executor");
            Ok(None)
        }
    }
}

/// Writes to stdout; when that fails (a full disk, a closed descriptor) says so and exits with
/// status 1 instead of panicking. A closed pipe never gets here: SIGPIPE ends the process first
/// (see main.rs).
pub fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        stdout_failed(e);
    }
}

/// Flushes what `print!` left in stdout's buffer, with the same error handling.
pub fn flush_stdout() {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().flush() {
        stdout_failed(e);
    }
}

fn stdout_failed(e: std::io::Error) -> ! {
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(a) => bench::run(a),
        Command::Profile(a) => profile::run(a),
        Command::Models(a) => models::run(a),
        Command::Run(a) => run::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Export(a) => run::export(a),
        Command::ConvertWeights(a) => convert::run(a),
        Command::AverageWeights(a) => average::run(a),
        Command::Train(a) => train::run(a),
        Command::Soak(a) => soak::run(a),
        Command::Info => {
            let ctx = GpuContext::new()?;
            println!("adapter: {}", ctx.describe());
            println!("timestamp queries: {}", ctx.timestamps);
            let l = ctx.device.limits();
            println!("max storage binding: {} MiB", l.max_storage_buffer_binding_size >> 20);
            let (_, choice) = Device::Auto.choose(ctx.clone());
            println!("--device auto (the default of predict and eval) runs on the {choice}");
            Ok(())
        }
    }
}

/// The CPU's model name (Linux `/proc/cpuinfo`), to print beside timings: absolute times mean
/// nothing without it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The flags that turn detector candidates into people, shared by `predict` and
/// `eval --boxes detected` (see `wgpose::detector::PeopleOptions`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct PeopleArgs {
    /// Minimum detection score of a candidate person.
    #[arg(long, default_value_t = 0.1)]
    pub det_threshold: f32,
    /// A candidate scoring below --sure-score is a person only if its pose's mean keypoint
    /// score reaches this (0 keeps every candidate).
    #[arg(long, default_value_t = 0.3)]
    pub min_pose_score: f32,
    /// Detection score from which a candidate is a person whatever its pose's score.
    #[arg(long, default_value_t = 0.4)]
    pub sure_score: f32,
}

impl PeopleArgs {
    /// The pose-score rule in [0, 1] (the detection threshold is checked by `DetectConfig`).
    pub fn check(&self) -> wgpose::Result<()> {
        for (name, v) in [("--min-pose-score", self.min_pose_score), ("--sure-score", self.sure_score)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(wgpose::Error::Input(format!("{name} {v} must be in [0, 1]")));
            }
        }
        Ok(())
    }

    /// `base` with this rule.
    pub fn apply(&self, base: wgpose::detector::PeopleOptions) -> wgpose::detector::PeopleOptions {
        wgpose::detector::PeopleOptions { min_pose_score: self.min_pose_score, sure_score: self.sure_score, ..base }
    }
}
