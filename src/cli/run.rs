//! `wgpose run` (raw network on an .npy tensor) and `wgpose export` (ONNX).

use std::path::PathBuf;

use clap::Args;
use wgpose::gpu::GpuModel;
use wgpose::models::{config, load_model, ModelConfig};
use wgpose::{Error, Result};

use super::{open_gpu, DeviceArg};

#[derive(Args)]
pub struct RunArgs {
    /// Model config name (see `wgpose models`).
    #[arg(long)]
    model: String,
    /// Weights (.safetensors); default: the shipped weights of the config, else random init.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// NCHW float32 .npy input; its H and W set the network's input size.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the last stack's heatmaps (.npy, NCHW float32).
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
    device: DeviceArg,
    /// Seed of the random initialisation when no weights exist.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct ExportArgs {
    #[arg(long)]
    model: String,
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Output .onnx file.
    #[arg(long)]
    onnx: PathBuf,
    /// Input size HxW (default: the size the weights were trained at, from their model card;
    /// the config's for a random initialisation).
    #[arg(long)]
    size: Option<String>,
    /// Fix the batch size in the file (default: a symbolic batch dimension `N`).
    #[arg(long)]
    batch: Option<usize>,
    /// Export the inference-optimised graph (batch norms folded, epilogues fused) instead of
    /// the graph as defined.
    #[arg(long)]
    optimized: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn sized(cfg: ModelConfig, size: Option<[usize; 2]>) -> ModelConfig {
    match size {
        Some([h, w]) => cfg.with_input([cfg.input[0], h, w]),
        None => cfg,
    }
}

pub fn run(a: RunArgs) -> Result<()> {
    if a.device == DeviceArg::Both {
        return Err(Error::Input("--device both is for benchmarks; run uses one device: gpu or cpu".into()));
    }
    let x = wgpose::npy::read(&a.input)?;
    let [n, c, h, w] = x.nchw()?;
    let cfg = config(&a.model)?;
    if c != cfg.input[0] {
        return Err(Error::Input(format!(
            "{} takes {} input channels, {} has {c}",
            cfg.name,
            cfg.input[0],
            a.input.display()
        )));
    }
    let cfg = sized(cfg, Some([h, w]));
    let (graph, source, _) = load_model(&cfg, a.weights.as_deref(), a.seed)?;
    eprintln!("{}: {source}", cfg.name);
    let ctx = open_gpu(a.device)?;
    // An input too large for the device's buffers still runs: on the CPU, with a notice.
    let gpu_model = match &ctx {
        Some(ctx) => match GpuModel::compile(ctx, &graph, n) {
            Ok(m) => Some((ctx, m)),
            Err(Error::TooLarge(why)) => {
                eprintln!("warning: too large for {}: {why}; running on the CPU executor", ctx.describe());
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    let outputs = match gpu_model {
        Some((ctx, mut model)) => {
            eprintln!("device: {}", ctx.describe());
            model.run(std::slice::from_ref(&x))?
        }
        None => {
            eprintln!("device: CPU executor");
            wgpose::cpu::run(&wgpose::graph::passes::optimize_for_inference(&graph), &[x])?
        }
    };
    let last = outputs.last().ok_or_else(|| Error::Graph("the model produced no output".into()))?;
    wgpose::npy::write(&a.output, last)?;
    eprintln!("wrote {} {:?}", a.output.display(), last.shape);
    Ok(())
}

pub fn export(a: ExportArgs) -> Result<()> {
    let size = a.size.as_deref().map(super::profile::parse_size).transpose()?;
    // Without --size the file takes the size the weights expect: the shipped hourglass was
    // trained at 192x128 and LDCRN at 160x160, not their configs' 128x128.
    let cfg = match size {
        Some(_) => sized(config(&a.model)?, size),
        None => wgpose::models::at_trained_input(&config(&a.model)?, a.weights.as_deref())?,
    };
    let (graph, source, _) = load_model(&cfg, a.weights.as_deref(), a.seed)?;
    eprintln!("{}: {source}", cfg.name);
    let graph = if a.optimized { wgpose::graph::passes::optimize_for_inference(&graph) } else { graph };
    wgpose::onnx::export_to_file(&graph, a.batch, &a.onnx)?;
    eprintln!(
        "wrote {} (input `{}` [{}, {}, {}, {}], outputs {:?})",
        a.onnx.display(),
        wgpose::onnx::input_names(&graph).join(", "),
        a.batch.map_or("N".to_string(), |b| b.to_string()),
        cfg.input[0],
        cfg.input[1],
        cfg.input[2],
        wgpose::onnx::output_names(&graph)
    );
    Ok(())
}
