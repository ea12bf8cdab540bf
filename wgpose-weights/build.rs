//! Compiles the weights files named in `bundle.txt` into the library (`include_bytes!` of
//! `models/<config>.safetensors`), through a generated `bundle.rs` in `OUT_DIR`.
//!
//! In the wgpose repository the files are generated (scripts/bundle-weights.sh), not committed:
//! there a missing file is left out of the bundle (wgpose then reports that no weights were
//! found). Anywhere else (a package from crates.io) a missing file is an error, so a package
//! without its weights cannot build, starting with `cargo publish`'s own verification build.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&dir);
    println!("cargo:rerun-if-changed=bundle.txt");
    println!("cargo:rerun-if-changed=models");
    let list = std::fs::read_to_string(dir.join("bundle.txt")).expect("bundle.txt lists the bundled configs");
    let configs: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let in_repository = dir.join("../models/README.md").is_file() && dir.join("../Cargo.toml").is_file();
    let mut code = String::new();
    code.push_str("/// The configs this crate is meant to hold (`bundle.txt`).\n");
    code.push_str("pub const CONFIGS: &[&str] = &[");
    for c in &configs {
        write!(code, "{c:?}, ").unwrap();
    }
    code.push_str("];\n\n/// `(config, bytes of its f16 safetensors file)` for each file compiled in.\n");
    code.push_str("pub static FILES: &[(&str, &[u8])] = &[\n");
    for c in &configs {
        let path = dir.join("models").join(format!("{c}.safetensors"));
        if path.is_file() {
            println!("cargo:rerun-if-changed={}", path.display());
            let path = path.to_str().expect("the package path is UTF-8");
            writeln!(code, "    ({c:?}, include_bytes!({path:?})),").unwrap();
        } else if !in_repository {
            panic!(
                "{} is missing: this wgpose-weights package was made without running \
                 scripts/bundle-weights.sh first",
                path.display()
            );
        }
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("bundle.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
