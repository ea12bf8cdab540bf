//! `wgpose convert-weights --f16 IN OUT`: a weights file stored in half precision (see
//! `wgpose::weights::half` for the rule that keeps a tensor in F32).

use std::path::PathBuf;

use clap::Args;
use wgpose::weights::half::convert_file_to_f16;
use wgpose::{Error, Result};

#[derive(Args)]
pub struct ConvertArgs {
    /// Store tensors as F16 (the only conversion there is; required so the command says what it does).
    #[arg(long)]
    f16: bool,
    /// The weights file to read (.safetensors, F32 or F16 tensors).
    input: PathBuf,
    /// The file to write (replaced atomically if it exists).
    output: PathBuf,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    if !a.f16 {
        return Err(Error::Input("convert-weights needs --f16 (the one conversion it performs)".into()));
    }
    let r = convert_file_to_f16(&a.input, &a.output)?;
    println!(
        "{} -> {}: {} of {} tensors F16, {} -> {} bytes",
        a.input.display(),
        a.output.display(),
        r.f16,
        r.tensors,
        r.bytes_in,
        r.bytes_out
    );
    if r.kept_f32.is_empty() {
        println!("  no tensor stayed F32");
    }
    for k in &r.kept_f32 {
        println!(
            "  kept F32: {} (largest |value| {}, f16 rounding error {} > 2^-11 x largest)",
            k.name, k.largest, k.max_error
        );
    }
    Ok(())
}
