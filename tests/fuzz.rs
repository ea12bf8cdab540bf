//! Bounded fuzzing of every reader of untrusted input (issue 15): the weights loader, the `.npy`
//! reader, the `joints.mat` reader, the COCO and MPII JSON loaders, and image decoding followed
//! by estimation with arbitrary person boxes. Each target starts from a corpus seeded from
//! `tests/fixtures` (plus small files written here), mutates it (bit flips, interesting
//! integers, truncation, duplication, insertion, splicing; JSON also structurally: numbers turned
//! negative, huge, fractional or into strings, keys deleted, arrays emptied) and requires every
//! input to give `Ok` or an `Err`, never a panic. Inputs that once crashed live in
//! `tests/fixtures/fuzz-regressions/` and run first.
//!
//! Bounded for CI (a few seconds per target); run longer with, e.g.,
//! `WGPOSE_FUZZ_ITERS=100000 WGPOSE_FUZZ_SEED=7 cargo test --release --test fuzz -- --nocapture`.
//! A crashing input is written to `target/fuzz-crashes/<target>-<seed>-<iteration>` to be kept.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use wgpose::rng::Rng;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn iterations(default: usize) -> usize {
    std::env::var("WGPOSE_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("WGPOSE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgpose-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const INTERESTING: [u32; 10] = [0, 1, 2, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF];

/// One random mutation (or a few stacked) of `input`, splicing from `corpus` sometimes.
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(6)] as u8;
            }
            2 if len >= 4 => {
                let i = rng.below(len - 3);
                let x = INTERESTING[rng.below(INTERESTING.len())];
                let bytes = if rng.below(2) == 0 { x.to_le_bytes() } else { x.to_be_bytes() };
                v[i..i + 4].copy_from_slice(&bytes);
            }
            3 => v.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            5 => {
                let at = rng.below(len + 1);
                let extra: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.below(256) as u8).collect();
                v.splice(at..at, extra);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                v.drain(a..b);
            }
            _ => {}
        }
    }
    v
}

/// A structural mutation of a JSON document: one random value is replaced by something a
/// careless or hostile file could hold there.
fn mutate_json(rng: &mut Rng, doc: &serde_json::Value) -> serde_json::Value {
    fn walk(rng: &mut Rng, v: &mut serde_json::Value, depth: usize) {
        use serde_json::{json, Value};
        let descend = depth < 6 && rng.below(4) != 0;
        match v {
            Value::Object(m) if descend && !m.is_empty() => {
                let keys: Vec<String> = m.keys().cloned().collect();
                let k = &keys[rng.below(keys.len())];
                if rng.below(8) == 0 {
                    m.remove(k);
                } else {
                    walk(rng, m.get_mut(k).unwrap(), depth + 1);
                }
            }
            Value::Array(a) if descend && !a.is_empty() => {
                let i = rng.below(a.len());
                match rng.below(10) {
                    0 => a.truncate(i),
                    1 => {
                        let dup = a[i].clone();
                        a.push(dup);
                    }
                    _ => walk(rng, &mut a[i], depth + 1),
                }
            }
            _ => {
                *v = match rng.below(10) {
                    0 => json!(-1),
                    1 => json!(-1e30),
                    2 => json!(1e300),
                    3 => json!(0),
                    4 => json!(0.5),
                    5 => json!(u64::MAX),
                    6 => json!("17"),
                    7 => Value::Null,
                    8 => json!([]),
                    _ => json!({}),
                };
            }
        }
    }
    let mut d = doc.clone();
    walk(rng, &mut d, 0);
    d
}

/// Runs `target` on the regression cases, the corpus, then `iters` mutants; panics (failing the
/// test) with the reproduction details when any input panics.
fn fuzz(
    name: &str,
    corpus: Vec<Vec<u8>>,
    iters: usize,
    mut mutant: impl FnMut(&mut Rng, &[Vec<u8>]) -> Vec<u8>,
    target: impl Fn(&[u8]),
) {
    let regressions = root().join("tests/fixtures/fuzz-regressions").join(name);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&regressions) {
        for e in rd.flatten().filter(|e| e.path().extension().is_none_or(|x| x != "md")) {
            cases.push((e.path().display().to_string(), std::fs::read(e.path()).unwrap()));
        }
    }
    cases.extend(corpus.iter().enumerate().map(|(i, c)| (format!("corpus {i}"), c.clone())));
    let seed = seed();
    let mut rng = Rng::new(seed ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let check = |what: &str, input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            let dir = root().join("target/fuzz-crashes");
            std::fs::create_dir_all(&dir).ok();
            let file = dir.join(format!("{name}-{seed}-{}", what.replace(' ', "_")));
            std::fs::write(&file, input).ok();
            panic!("fuzz target `{name}` panicked on {what} (input saved to {})", file.display());
        }
    };
    for (what, input) in &cases {
        check(what, input);
    }
    for i in 0..iters {
        let input = mutant(&mut rng, &corpus);
        check(&format!("iteration {i}"), &input);
    }
    eprintln!("fuzz {name}: {} seeds + {iters} mutants, seed {seed}, no panic", cases.len());
}

fn byte_mutant(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let base = &corpus[rng.below(corpus.len())];
    mutate(rng, base, corpus)
}

fn json_mutant(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let base = &corpus[rng.below(corpus.len())];
    // Mostly structural (reaches the loaders' checks), sometimes raw bytes (reaches the parser).
    if rng.below(4) == 0 {
        return mutate(rng, base, corpus);
    }
    let doc: serde_json::Value = serde_json::from_slice(base).unwrap();
    let mut d = doc;
    for _ in 0..1 + rng.below(3) {
        d = mutate_json(rng, &d);
    }
    serde_json::to_vec(&d).unwrap()
}

/// A tiny network with every parameter kind the loader checks (conv weight and bias, batch norm
/// statistics).
fn tiny_graph() -> wgpose::graph::Graph {
    let cfg = wgpose::models::config("sghg-1x64-lsp").unwrap().with_input([3, 64, 64]);
    cfg.build(3).unwrap()
}

#[test]
fn fuzz_weights_loader() {
    let dir = scratch("weights");
    let g = tiny_graph();
    let cfg = wgpose::models::config("sghg-1x64-lsp").unwrap();
    let file = dir.join("seed.safetensors");
    wgpose::weights::save(&file, &g, &wgpose::weights::ModelCard::for_model(&cfg, &g)).unwrap();
    let corpus = vec![std::fs::read(&file).unwrap()];
    let probe = dir.join("probe.safetensors");
    // Mutations stay near the header (the first few KiB), where the structure is.
    let mutant = |rng: &mut Rng, corpus: &[Vec<u8>]| {
        let base = &corpus[0];
        let head = base.len().min(4096 + rng.below(4096));
        let mut v = mutate(rng, &base[..head], corpus);
        if rng.below(4) != 0 {
            v.extend_from_slice(&base[head..]);
        }
        v
    };
    fuzz("weights", corpus, iterations(150), mutant, |bytes| {
        std::fs::write(&probe, bytes).unwrap();
        let mut g = g.clone();
        let _ = wgpose::weights::load_into(&probe, &mut g);
        let _ = wgpose::weights::read_card(&probe);
    });
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fuzz_npy_reader() {
    let mut rng = Rng::new(4);
    let corpus: Vec<Vec<u8>> = [vec![1, 3, 5, 7], vec![2, 2], vec![6]]
        .into_iter()
        .map(|shape: Vec<usize>| {
            let n = shape.iter().product();
            wgpose::npy::to_bytes(&wgpose::Tensor::new(shape, rng.vec(n, -2.0, 2.0)).unwrap())
        })
        .collect();
    fuzz("npy", corpus, iterations(3000), byte_mutant, |bytes| {
        if let Ok(t) = wgpose::npy::parse(Path::new("fuzz.npy"), bytes) {
            assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        }
    });
}

#[test]
fn fuzz_joints_mat_reader() {
    let corpus: Vec<Vec<u8>> = ["tests/fixtures/lsp/joints.mat", "tests/fixtures/lspet/joints.mat"]
        .iter()
        .map(|p| std::fs::read(root().join(p)).unwrap())
        .collect();
    fuzz("joints-mat", corpus, iterations(3000), byte_mutant, |bytes| {
        let _ = wgpose::data::matfile::parse_mat(bytes, "fuzz.mat");
    });
}

#[test]
fn fuzz_coco_and_mpii_loaders() {
    let dir = scratch("json");
    for (name, fixture, is_coco) in [
        ("coco-json", "tests/fixtures/coco/test_coco.json", true),
        ("mpii-json", "tests/fixtures/mpii/test_mpii.json", false),
    ] {
        let corpus = vec![std::fs::read(root().join(fixture)).unwrap()];
        let images = root().join(fixture).parent().unwrap().to_path_buf();
        let probe = dir.join(format!("{name}.json"));
        fuzz(name, corpus, iterations(400), json_mutant, |bytes| {
            std::fs::write(&probe, bytes).unwrap();
            if is_coco {
                if let Ok(ds) = wgpose::data::coco::load_coco(&probe, &images) {
                    let _ = ds.persons();
                    let _ = ds.persons_summary();
                    let _ = wgpose::metrics::coco_keypoint_eval(&ds, &[]);
                }
            } else {
                let _ = wgpose::data::mpii::load_mpii(&probe, &images);
            }
        });
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fuzz_image_decoding_with_boxes() {
    let mut corpus: Vec<Vec<u8>> = ["tests/fixtures/images/cmyk.jpg", "tests/fixtures/images/exif_rot6.jpg"]
        .iter()
        .chain(&["tests/fixtures/lspet/images/im00001.jpg", "tests/fixtures/lspet/images/im00002.jpg"])
        .map(|p| std::fs::read(root().join(p)).unwrap())
        .collect();
    let mut png = Vec::new();
    image::RgbaImage::from_fn(19, 7, |x, y| image::Rgba([x as u8 * 13, y as u8 * 30, 7, 200]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    corpus.push(png);
    let cfg = wgpose::models::config("sghg-1x64-lsp").unwrap().with_input([3, 64, 64]);
    let est = std::cell::RefCell::new(
        wgpose::estimator::Estimator::new(
            &cfg,
            None,
            None,
            wgpose::estimator::EstimatorOptions { random_weights: true, ..Default::default() },
        )
        .unwrap(),
    );
    let boxes = std::cell::RefCell::new(Rng::new(seed()));
    let known_bad = std::fs::read(root().join("tests/fixtures/fuzz-regressions/image/truncated-eoi-in-comment.jpg"));
    assert!(wgpose::image_io::decode_rgb(&known_bad.unwrap()).is_err(), "the truncated JPEG regression decodes again");
    fuzz("image", corpus, iterations(300), byte_mutant, |bytes| {
        let Ok(img) = wgpose::image_io::decode_rgb(bytes) else { return };
        let (w, h) = (img.rgb.width() as f32, img.rgb.height() as f32);
        let mut r = boxes.borrow_mut();
        let pick = |r: &mut Rng, scale: f32| match r.below(6) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => -3e38,
            3 => 3.4e38,
            _ => (r.uniform() * 1.5 - 0.25) * scale,
        };
        let b = [pick(&mut r, w), pick(&mut r, h), pick(&mut r, w), pick(&mut r, h)];
        let mut est = est.borrow_mut();
        let image = wgpose::pipeline::crop::ImageRef::from(&img.rgb);
        for bbox in [None, Some(b)] {
            for pose in est.estimate(image, bbox).unwrap_or_default() {
                for k in &pose.keypoints {
                    assert!(k.x >= 0.0 && k.x <= w && k.y >= 0.0 && k.y <= h, "keypoint {k:?} outside {w}x{h}");
                    assert!(k.score.is_finite());
                }
            }
        }
    });
}
