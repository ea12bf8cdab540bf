//! `wgpose average-weights --out OUT IN1 IN2 ...`: the uniform average of weight files of one
//! network, a "model soup" (`wgpose::weights::average`).

use std::path::{Path, PathBuf};

use clap::Args;
use wgpose::Result;

#[derive(Args)]
pub struct AverageArgs {
    /// The file to write (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Two or more weights files of the same config (e.g. fine-tunes from the same weights).
    #[arg(required = true, num_args = 2..)]
    inputs: Vec<PathBuf>,
}

pub fn run(a: AverageArgs) -> Result<()> {
    let inputs: Vec<&Path> = a.inputs.iter().map(PathBuf::as_path).collect();
    let (graph, card) = wgpose::weights::average::average_files(&inputs)?;
    wgpose::weights::save(&a.out, &graph, &card)?;
    let crops = card.extra.get("train_crops_total").map_or("unknown (the inputs do not share a start)", String::as_str);
    println!("{}: `{}`, the average of {} files, {crops} crops in all", a.out.display(), card.config, inputs.len());
    Ok(())
}
