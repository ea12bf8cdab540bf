//! The `wgpose-weights` crate (f16 copies of some shipped models, compiled in by the
//! `bundled-weights` feature) against the repository's `models/`: the f16 conversion of every
//! bundled config loads into its config and fits crates.io's 10 MB limit; the generated copies
//! in `wgpose-weights/models/` (not committed: `scripts/bundle-weights.sh`) are that conversion
//! of the current weights; and with the feature, they are the last place a config's weights
//! are looked for.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors};
use wgpose::models::{config, load_model_bytes};
use wgpose::weights::half::convert_bytes_to_f16;

/// crates.io refuses a `.crate` above 10 MB; a margin for the crate's sources and the tar format.
const CRATES_IO_LIMIT: usize = 10_000_000;
const MARGIN: usize = 200_000;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The configs of `wgpose-weights/bundle.txt`.
fn bundled_configs() -> Vec<String> {
    let list = std::fs::read_to_string(repo().join("wgpose-weights/bundle.txt")).unwrap();
    list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

fn generated_copy(config: &str) -> PathBuf {
    repo().join("wgpose-weights/models").join(format!("{config}.safetensors"))
}

type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// Tensors (dtype, shape, bytes) and metadata of a safetensors file: its content, whatever the
/// order the writer gave the header's keys (a HashMap's in the safetensors crate).
fn content(bytes: &[u8]) -> (Tensors, HashMap<String, String>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let tensors =
        st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn gzip_size(bytes: &[u8]) -> usize {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap().len()
}

#[test]
fn bundle_is_the_f16_conversion_of_current_models_and_fits_crates_io() {
    let configs = bundled_configs();
    assert!(!configs.is_empty(), "wgpose-weights/bundle.txt lists no config");
    let (mut total, mut stale, mut absent) = (0usize, Vec::new(), Vec::new());
    for name in &configs {
        let src = repo().join("models").join(format!("{name}.safetensors"));
        let f32_bytes = std::fs::read(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let (f16_bytes, report) = convert_bytes_to_f16(&f32_bytes, &src.display().to_string()).unwrap();
        // The conversion loads into the config it names, with the card of the f32 file.
        let cfg = config(name).unwrap();
        let (_, card) = load_model_bytes(&cfg, &f16_bytes, name).unwrap();
        assert_eq!(card, wgpose::weights::read_card(&src).unwrap(), "{name}: the card changed");
        let gz = gzip_size(&f16_bytes);
        total += gz;
        let kept: Vec<&str> = report.kept_f32.iter().map(|k| k.name.as_str()).collect();
        eprintln!("{name}: f16 {} bytes, gzip -9 {gz} bytes, kept F32: {kept:?}", f16_bytes.len());
        match std::fs::read(generated_copy(name)) {
            Ok(copy) => {
                if content(&copy) != content(&f16_bytes) {
                    stale.push(name.clone());
                }
            }
            Err(_) => absent.push(name.clone()),
        }
    }
    eprintln!("bundle compressed: {total} bytes (crates.io limit {CRATES_IO_LIMIT})");
    assert!(
        total + MARGIN <= CRATES_IO_LIMIT,
        "the f16 bundle compresses to {total} bytes: with the crate's sources it would not fit crates.io's \
         limit; move a config out of wgpose-weights/bundle.txt (or split the crate)"
    );
    assert!(
        stale.is_empty(),
        "wgpose-weights/models/ is stale for {stale:?} (models/ was retrained): regenerate with \
         `bash scripts/bundle-weights.sh`"
    );
    if !absent.is_empty() {
        // A fresh clone: the copies are generated before packaging, not committed.
        eprintln!("not generated (bash scripts/bundle-weights.sh): {absent:?}; nothing to compare");
    }
}

/// With the feature, a config whose file is in neither `$WGPOSE_MODELS` nor the source tree gets
/// the compiled-in copy (exactly the generated file's weights); a file in `$WGPOSE_MODELS` still
/// wins. The only test here that sets the variable.
#[cfg(feature = "bundled-weights")]
#[test]
fn bundled_weights_are_the_last_fallback() {
    use wgpose::models::{bundled_weights, load_model, WeightsSource};
    use wgpose::weights::named_params;
    let empty = std::env::temp_dir().join(format!("wgpose-no-models-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    std::env::set_var("WGPOSE_MODELS", &empty);
    for name in bundled_configs() {
        let cfg = config(&name).unwrap();
        let Some(bytes) = bundled_weights(&name) else {
            assert!(!generated_copy(&name).exists(), "{name}: generated but not compiled in");
            eprintln!("{name}: not generated (bash scripts/bundle-weights.sh), so not bundled");
            assert!(matches!(load_model(&cfg, None, 0).unwrap().1, WeightsSource::RandomInit { .. }));
            continue;
        };
        assert_eq!(bytes, std::fs::read(generated_copy(&name)).unwrap().as_slice(), "{name}: stale build");
        let (graph, source, card) = load_model(&cfg, None, 0).unwrap();
        assert_eq!(source, WeightsSource::Bundled(name.clone()));
        assert_eq!(card.unwrap().config, name);
        let (from_file, _) = load_model_bytes(&cfg, bytes, &name).unwrap();
        let same = named_params(&graph).iter().zip(named_params(&from_file)).all(|((_, a), (_, b))| a.data == b.data);
        assert!(same, "{name}: the bundled load differs from loading the file");
    }
    // A file in $WGPOSE_MODELS comes first.
    std::env::set_var("WGPOSE_MODELS", repo().join("models"));
    let name = &bundled_configs()[0];
    let (_, source, _) = load_model(&config(name).unwrap(), None, 0).unwrap();
    assert!(matches!(source, WeightsSource::Shipped(_)), "{source:?}");
    let _ = std::fs::remove_dir_all(&empty);
}
