//! `wgpose bench ops`.

use clap::{Args, ValueEnum};
use wgpose::bench::{bench_ops, BenchRow};
use wgpose::Result;

use super::{open_gpu, DeviceArg};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// Single layers: 3x3, 1x1, 7x7/2, depthwise convs, pixel shuffle, max pool.
    Ops,
    /// Whole networks: latency, first-call latency, GFLOP/s and memory per config.
    Models,
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
    /// Input size HxW for `models`, overriding each config's own (e.g. 128x128).
    #[arg(long)]
    size: Option<String>,
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

pub fn run(a: BenchArgs) -> Result<()> {
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
                let rows =
                    wgpose::bench::bench_model(ctx.as_ref(), &cfg, a.batch, a.reps.max(1), a.device != DeviceArg::Gpu)?;
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
            bench_ops(ctx.as_ref(), a.reps.max(1), a.filter.as_deref(), a.device != DeviceArg::Gpu, print)?;
        }
    }
    Ok(())
}
