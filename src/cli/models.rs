//! `wgpose models`: every named configuration with its size and cost beside the paper's figures.

use clap::Args;
use wgpose::models::{configs, conv_macs, Family};
use wgpose::Result;

#[derive(Args)]
pub struct ModelsArgs {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ModelsArgs) -> Result<()> {
    if !a.json {
        println!(
            "{:<24} {:<21} {:>11} {:>3} {:>8} {:>7} {:>7} {:>11} {:>11}",
            "name", "family", "input", "K", "params", "GFLOPs", "GMACs", "paper par.", "paper GMACs"
        );
    }
    for cfg in configs() {
        let g = cfg.build(0)?;
        let params = g.param_count();
        let flops = g.flops(1)?;
        let macs = conv_macs(&g, 1)?;
        // The hourglass papers quote costs at 256x256; show ours there too.
        let macs_256 = if cfg.family == Family::SoftGatedHourglass && cfg.input[1] != 256 {
            Some(conv_macs(&cfg.with_input([3, 256, 256]).build(0)?, 1)?)
        } else {
            None
        };
        if a.json {
            let v = serde_json::json!({
                "name": cfg.name, "family": cfg.family.as_str(),
                "input": [1, cfg.input[0], cfg.input[1], cfg.input[2]],
                "joints": cfg.joints, "params": params, "gflops": flops as f64 / 1e9,
                "gmacs": macs as f64 / 1e9, "gmacs_at_256": macs_256.map(|m| m as f64 / 1e9),
                "paper_params_m": cfg.paper_params, "paper_gmacs": cfg.paper_gflops,
            });
            println!("{v}");
        } else {
            let paper = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.2}{unit}"));
            let input = format!("{}x{}x{}", cfg.input[0], cfg.input[1], cfg.input[2]);
            let gmacs = match macs_256 {
                Some(m) => format!("{:.2} ({:.2} @256)", macs as f64 / 1e9, m as f64 / 1e9),
                None => format!("{:.2}", macs as f64 / 1e9),
            };
            println!(
                "{:<24} {:<21} {:>11} {:>3} {:>7.2}M {:>7.2} {:>7} {:>11} {:>11}",
                cfg.name,
                cfg.family.as_str(),
                input,
                cfg.joints,
                params as f64 / 1e6,
                flops as f64 / 1e9,
                gmacs,
                paper(cfg.paper_params, "M"),
                paper(cfg.paper_gflops, "")
            );
        }
    }
    if !a.json {
        println!("\nGFLOPs count a multiply-add as 2 operations (plus norms and activations); the papers quote");
        println!("multiply-accumulates, so compare their figures with the GMACs column. Notes per config: README.");
    }
    Ok(())
}
