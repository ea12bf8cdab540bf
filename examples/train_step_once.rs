//! One CPU training step of a model config (batch from argv), for profilers (callgrind):
//! `cargo run --release --example train_step_once -- sghg-1x64-lsp 4`.

fn main() -> wgpose::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "sghg-1x64-lsp".into());
    let batch: usize = args.next().and_then(|b| b.parse().ok()).unwrap_or(4);
    let cfg = wgpose::models::config(&name)?;
    let row = wgpose::bench::bench_train_config(&cfg, batch, 1)?;
    println!("{} batch {}: {:.1} ms/step", row.model, row.batch, row.ms_per_step);
    Ok(())
}
