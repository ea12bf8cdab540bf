//! Weights on disk: safetensors round trips for every family, the model card, named errors for
//! every way a file can be wrong, and no panic on corrupted files.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use wgpose::graph::passes::optimize_for_inference;
use wgpose::graph::Graph;
use wgpose::models::{config, configs};
use wgpose::rng::Rng;
use wgpose::weights::{load_into, named_params, named_params_mut, read_card, save, ModelCard};
use wgpose::{Error, Tensor};

mod common;
use common::TempDir;

const SMALL: [&str; 3] = ["sghg-1x64-lsp", "fasterpose-r18-s16-lsp", "ldcrn-w16-lsp"];

/// Every parameter and statistic drawn at random, so no tensor keeps its initial value
/// (batch norms start as identities, which would hide a statistic that is not saved).
fn randomise(g: &mut Graph, seed: u64) {
    let mut rng = Rng::new(seed);
    for (name, t) in named_params_mut(g) {
        let (lo, hi) = if name.ends_with("running_var") { (0.5, 1.5) } else { (-0.5, 0.5) };
        for v in &mut t.data {
            *v = rng.range(lo, hi);
        }
    }
}

fn snapshot(g: &Graph) -> Vec<(String, Tensor)> {
    named_params(g).into_iter().map(|(n, t)| (n, t.clone())).collect()
}

fn input_for(name: &str, seed: u64) -> Tensor {
    let cfg = config(name).unwrap();
    let [c, h, w] = cfg.input;
    let mut rng = Rng::new(seed);
    Tensor::new(vec![1, c, h, w], rng.vec(c * h * w, -1.0, 1.0)).unwrap()
}

fn card_for(name: &str, g: &Graph) -> ModelCard {
    ModelCard::for_model(&config(name).unwrap(), g)
}

// ---------------------------------------------------------------------------------------------
// Hand-written safetensors files, for the error cases.
// ---------------------------------------------------------------------------------------------

struct Raw {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn raw_of(g: &Graph) -> Vec<Raw> {
    named_params(g)
        .into_iter()
        .map(|(name, t)| Raw {
            name,
            dtype: "F32",
            shape: t.shape.clone(),
            bytes: t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
        .collect()
}

/// Serialises `tensors` by hand (8-byte LE header length, JSON header, data), so tests can
/// write files the library would never write.
fn encode(tensors: &[Raw], meta: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !meta.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(meta).unwrap());
    }
    let mut off = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [off, off + t.bytes.len()]}),
        );
        off += t.bytes.len();
    }
    let h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    for t in tensors {
        out.extend(&t.bytes);
    }
    out
}

fn small_graph() -> Graph {
    config("ldcrn-w16-lsp").unwrap().build(1).unwrap()
}

/// Writes `bytes`, loads them into a fresh graph, expects `Error::Format` whose message
/// contains every needle; checks the graph was left untouched.
fn expect_format(dir: &TempDir, file: &str, bytes: &[u8], needles: &[&str]) -> String {
    let p = dir.join(file);
    std::fs::write(&p, bytes).unwrap();
    let mut g = config("ldcrn-w16-lsp").unwrap().build(7).unwrap();
    let before = snapshot(&g);
    let err = load_into(&p, &mut g).expect_err(&format!("{file}: loading must fail"));
    let msg = match &err {
        Error::Format { path, msg } => {
            assert!(path.contains(file), "{file}: error path `{path}` does not name the file");
            msg.clone()
        }
        other => panic!("{file}: expected a Format error, got {other:?}"),
    };
    for n in needles {
        assert!(msg.contains(n), "{file}: message `{msg}` does not mention `{n}`");
    }
    assert_eq!(snapshot(&g), before, "{file}: a failed load modified the graph");
    let full = err.to_string();
    eprintln!("{full}");
    assert!(full.contains(file), "{file}: Display `{full}` does not name the file");
    msg
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn round_trip_each_family() {
    let dir = TempDir::new("roundtrip");
    for name in SMALL {
        let cfg = config(name).unwrap();
        let mut g1 = cfg.build(1).unwrap();
        randomise(&mut g1, 11);
        let card = card_for(name, &g1);
        let path = dir.join(&format!("{name}.safetensors"));
        save(&path, &g1, &card).unwrap();

        let mut g2 = cfg.build(2).unwrap();
        randomise(&mut g2, 22);
        let p1 = snapshot(&g1);
        assert_ne!(snapshot(&g2), p1, "{name}: the two graphs must start different");
        let got_card = load_into(&path, &mut g2).unwrap();
        assert_eq!(got_card, card, "{name}: card");

        let p2 = snapshot(&g2);
        assert_eq!(p1.len(), p2.len());
        for ((n1, t1), (n2, t2)) in p1.iter().zip(&p2) {
            assert_eq!(n1, n2);
            assert_eq!(t1.shape, t2.shape, "{name}: {n1} shape");
            assert!(
                t1.data.iter().zip(&t2.data).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: {n1} differs after the round trip"
            );
        }
        assert_eq!(g1, g2, "{name}: graphs differ after loading");

        let x = input_for(name, 3);
        let y1 = wgpose::cpu::run(&g1, std::slice::from_ref(&x)).unwrap();
        let y2 = wgpose::cpu::run(&g2, std::slice::from_ref(&x)).unwrap();
        assert_eq!(y1.len(), cfg.num_outputs());
        assert_eq!(y1, y2, "{name}: CPU outputs differ");
        assert!(y1.iter().all(|t| t.first_non_finite().is_none()));
    }
}

#[test]
fn fused_graph_round_trip_covers_gates_and_affines() {
    // The optimised graph has conv biases from folded batch norms, channel affines and gates
    // fused into convolutions: all of them must be saved and loaded under stable names.
    let dir = TempDir::new("fused");
    for name in SMALL {
        let cfg = config(name).unwrap();
        let mut g1 = cfg.build(1).unwrap();
        randomise(&mut g1, 5);
        let f1 = optimize_for_inference(&g1);
        let path = dir.join(&format!("{name}-fused.safetensors"));
        save(&path, &f1, &card_for(name, &f1)).unwrap();
        let mut f2 = optimize_for_inference(&cfg.build(2).unwrap());
        load_into(&path, &mut f2).unwrap();
        assert_eq!(f1, f2, "{name}: fused graphs differ after loading");

        // A fused file does not fit the unfused graph, and the error says what is off.
        let mut plain = cfg.build(3).unwrap();
        match load_into(&path, &mut plain) {
            Err(Error::Format { msg, .. }) => assert!(msg.contains("missing"), "{msg}"),
            other => panic!("{name}: expected a Format error, got {other:?}"),
        }
    }
    // Between them the fused forms hold every kind of parameter: gates (fused into a conv or a
    // gated add), channel affines, folded conv biases.
    let mut suffixes = HashSet::new();
    for name in SMALL {
        let f = optimize_for_inference(&config(name).unwrap().build(0).unwrap());
        for (n, _) in named_params(&f) {
            suffixes.insert(n.rsplit('.').next().unwrap().to_string());
        }
    }
    for s in ["weight", "bias", "alpha", "scale", "shift"] {
        assert!(suffixes.contains(s), "no fused small graph has a `.{s}` tensor");
    }
}

#[test]
fn card_round_trip() {
    let dir = TempDir::new("card");
    let g = small_graph();
    let mut card = card_for("ldcrn-w16-lsp", &g);
    assert_eq!(card.config, "ldcrn-w16-lsp");
    assert_eq!(card.family, "ldcrn");
    assert_eq!(card.input, Some([3, 128, 128]));
    assert_eq!(card.joints, Some(14));
    assert_eq!(card.joint_format, "lsp14");
    assert_eq!(card.params, Some(g.param_count() as u64));
    assert_eq!(card.wgpose_version, env!("CARGO_PKG_VERSION"));
    assert!(card.gflops.unwrap() > 0.0);
    card.training_data = "LSP train 1000 + LSPET 10000, flip + rotate ±30°".into();
    card.epochs = Some(40);
    card.wall_time_s = Some(5123.25);
    card.metrics = "val_pck@0.2=0.71;val_loss=0.0012".into();
    card.gflops = Some(0.1 + 0.2); // not exactly representable in short decimal: must round trip
    card.extra.insert("git_commit".into(), "abc123".into());
    card.extra.insert("notes".into(), "ünïcode, \"quotes\" and\nnewlines".into());

    let meta = card.to_metadata();
    assert_eq!(meta["input"], "3x128x128");
    assert_eq!(meta["joints"], "14");
    assert_eq!(meta["normalisation"], "mean=0.485,0.456,0.406;std=0.229,0.224,0.225");
    assert_eq!(ModelCard::from_metadata(&meta).unwrap(), card);

    let path = dir.join("card.safetensors");
    save(&path, &g, &card).unwrap();
    assert_eq!(read_card(&path).unwrap(), card);
    let mut g2 = config("ldcrn-w16-lsp").unwrap().build(9).unwrap();
    assert_eq!(load_into(&path, &mut g2).unwrap(), card);

    // An empty card writes no metadata keys and reads back empty.
    save(&path, &g, &ModelCard::default()).unwrap();
    assert_eq!(read_card(&path).unwrap(), ModelCard::default());

    // A file with no `__metadata__` at all (e.g. written by another tool) loads with an empty card.
    std::fs::write(&path, encode(&raw_of(&g), &BTreeMap::new())).unwrap();
    assert_eq!(load_into(&path, &mut g2).unwrap(), ModelCard::default());
    assert_eq!(g2, g);

    // Unparseable known keys are named.
    let mut bad = BTreeMap::new();
    bad.insert("joints".to_string(), "fourteen".to_string());
    match ModelCard::from_metadata(&bad) {
        Err(Error::Input(m)) => assert!(m.contains("joints"), "{m}"),
        other => panic!("expected an Input error, got {other:?}"),
    }
    std::fs::write(&path, encode(&raw_of(&g), &bad)).unwrap();
    match read_card(&path) {
        Err(Error::Format { msg, .. }) => assert!(msg.contains("joints"), "{msg}"),
        other => panic!("expected a Format error, got {other:?}"),
    }
    let mut bad = BTreeMap::new();
    bad.insert("input".to_string(), "3x128".to_string());
    assert!(ModelCard::from_metadata(&bad).is_err());

    // `extra` may not shadow a named field.
    let mut shadow = ModelCard::default();
    shadow.extra.insert("config".into(), "x".into());
    assert!(matches!(save(&path, &g, &shadow), Err(Error::Input(m)) if m.contains("config")));
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

#[test]
fn names_are_unique_and_follow_the_scheme() {
    for cfg in configs() {
        let g = cfg.build(0).unwrap();
        for (form, g) in [("built", g.clone()), ("fused", optimize_for_inference(&g))] {
            let params = named_params(&g);
            let mut seen = HashSet::new();
            for (n, _) in &params {
                assert!(seen.insert(n.clone()), "{} ({form}): duplicate parameter name {n}", cfg.name);
                let suffix = n.rsplit('.').next().unwrap();
                assert!(
                    ["weight", "bias", "gamma", "beta", "running_mean", "running_var", "alpha", "scale", "shift"]
                        .contains(&suffix),
                    "{}: unexpected parameter name {n}",
                    cfg.name
                );
                let node = &n[..n.len() - suffix.len() - 1];
                assert!(g.node_by_name(node).is_some(), "{n}: no node `{node}`");
            }
            // Every stored tensor is accounted for in the parameter count or is a statistic.
            let learnable: usize = params
                .iter()
                .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
                .map(|(_, t)| t.numel())
                .sum();
            assert_eq!(learnable, g.param_count(), "{} ({form})", cfg.name);
            // named_params_mut gives the same names in the same order.
            let mut g2 = g.clone();
            let mut_names: Vec<String> = named_params_mut(&mut g2).into_iter().map(|(n, _)| n).collect();
            let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(mut_names, names);
        }
    }
}

/// A snapshot of each small config's parameter names (the first ten, the first gate, the last
/// three and the count): renaming a node renames its tensors and breaks every saved weights file,
/// so it must be noticed here.
#[test]
fn names_are_stable() {
    /// (config, first ten names, first gate, last three names, count)
    type Snapshot = (&'static str, &'static [&'static str], &'static str, &'static [&'static str], usize);
    let expect: [Snapshot; 3] = [
        (
            "sghg-1x64-lsp",
            &[
                "stem.conv1.conv.weight",
                "stem.conv1.bn.gamma",
                "stem.conv1.bn.beta",
                "stem.conv1.bn.running_mean",
                "stem.conv1.bn.running_var",
                "stem.block1.c1.bn.gamma",
                "stem.block1.c1.bn.beta",
                "stem.block1.c1.bn.running_mean",
                "stem.block1.c1.bn.running_var",
                "stem.block1.c1.conv.weight",
            ],
            "stem.block1.gate.alpha",
            &["stack0.lin.bn.running_var", "stack0.heatmap.weight", "stack0.heatmap.bias"],
            292,
        ),
        (
            "fasterpose-r18-s16-lsp",
            &[
                "backbone.conv1.weight",
                "backbone.bn1.gamma",
                "backbone.bn1.beta",
                "backbone.bn1.running_mean",
                "backbone.bn1.running_var",
                "backbone.layer1.0.conv1.weight",
                "backbone.layer1.0.bn1.gamma",
                "backbone.layer1.0.bn1.beta",
                "backbone.layer1.0.bn1.running_mean",
                "backbone.layer1.0.bn1.running_var",
            ],
            "",
            &["backbone.layer3.1.bn2.running_var", "head.conv.weight", "head.conv.bias"],
            77,
        ),
        (
            "ldcrn-w16-lsp",
            &[
                "stem.conv1.conv.weight",
                "stem.conv1.bn.gamma",
                "stem.conv1.bn.beta",
                "stem.conv1.bn.running_mean",
                "stem.conv1.bn.running_var",
                "stem.conv2.conv.weight",
                "stem.conv2.bn.gamma",
                "stem.conv2.bn.beta",
                "stem.conv2.bn.running_mean",
                "stem.conv2.bn.running_var",
            ],
            "",
            &["fusion.lat0.bias", "head.final.weight", "head.final.bias"],
            880,
        ),
    ];
    let mut report = String::new();
    for (name, first, gate, last, count) in expect {
        let g = config(name).unwrap().build(0).unwrap();
        let names: Vec<String> = named_params(&g).into_iter().map(|(n, _)| n).collect();
        let got_first: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
        let got_gate = names.iter().find(|n| n.ends_with(".alpha")).map_or("", String::as_str);
        let got_last: Vec<&str> = names[names.len().saturating_sub(3)..].iter().map(String::as_str).collect();
        if got_first != first || got_gate != gate || got_last != last || names.len() != count {
            report += &format!("        ({name:?}, &{got_first:?}, {got_gate:?}, &{got_last:?}, {}),\n", names.len());
        }
    }
    assert!(report.is_empty(), "parameter names changed; now:\n{report}");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_and_extra_tensors_are_named() {
    let dir = TempDir::new("missing");
    let g = small_graph();
    let raw = raw_of(&g);
    let meta = BTreeMap::new();

    let victim = raw[3].name.clone();
    let fewer: Vec<Raw> = raw_of(&g).into_iter().filter(|t| t.name != victim).collect();
    expect_format(&dir, "missing.safetensors", &encode(&fewer, &meta), &["missing", &victim]);

    let mut more = raw_of(&g);
    more.push(Raw { name: "head.bogus.weight".into(), dtype: "F32", shape: vec![2], bytes: vec![0; 8] });
    expect_format(&dir, "extra.safetensors", &encode(&more, &meta), &["not used", "head.bogus.weight"]);

    // A file from another config: both lists, and the card's config as a hint.
    let other = config("sghg-1x64-lsp").unwrap().build(0).unwrap();
    let p = dir.join("other.safetensors");
    save(&p, &other, &card_for("sghg-1x64-lsp", &other)).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    expect_format(&dir, "other-config.safetensors", &bytes, &["missing", "not used", "sghg-1x64-lsp"]);
}

#[test]
fn shape_mismatch_names_tensor_and_both_shapes() {
    let dir = TempDir::new("shape");
    let g = small_graph();
    let mut raw = raw_of(&g);
    let i = raw.iter().position(|t| t.shape.len() == 4 && t.shape[0] > 1).unwrap();
    let want = raw[i].shape.clone();
    let numel: usize = want.iter().product();
    raw[i].shape = vec![numel]; // same byte count, wrong shape
    let name = raw[i].name.clone();
    expect_format(
        &dir,
        "shape.safetensors",
        &encode(&raw, &BTreeMap::new()),
        &[&name, &format!("{:?}", want), &format!("[{numel}]")],
    );
}

/// F16 is the one other dtype the loader reads (widened exactly, see `f16_tensors_load_widened`);
/// every other dtype is refused by name, never converted.
#[test]
fn wrong_dtypes_are_named_not_converted() {
    let dir = TempDir::new("dtype");
    let g = small_graph();
    for (dtype, width) in [("BF16", 2), ("F64", 8), ("I64", 8), ("I32", 4), ("U8", 1)] {
        let mut raw = raw_of(&g);
        let numel = raw[0].bytes.len() / 4;
        raw[0].dtype = dtype;
        raw[0].bytes = vec![0; numel * width];
        let name = raw[0].name.clone();
        expect_format(
            &dir,
            &format!("{dtype}.safetensors"),
            &encode(&raw, &BTreeMap::new()),
            &[&name, dtype, "F32 or F16"],
        );
    }
    let mut raw = raw_of(&g);
    raw[0].dtype = "F17";
    let name = raw[0].name.clone();
    expect_format(&dir, "unknown-dtype.safetensors", &encode(&raw, &BTreeMap::new()), &[&name, "F17"]);
}

/// A file whose tensors are all F16 (bits drawn at random among the finite ones, so subnormals,
/// zeros of both signs and the extremes occur) loads with exactly the widened values.
#[test]
fn f16_tensors_load_widened() {
    let dir = TempDir::new("f16");
    let g = small_graph();
    let mut rng = Rng::new(16);
    let mut raw = raw_of(&g);
    let mut want: Vec<Vec<f32>> = Vec::new();
    for t in &mut raw {
        let numel = t.bytes.len() / 4;
        let bits: Vec<u16> = (0..numel)
            .map(|_| loop {
                let h = rng.next_u64() as u16;
                // Finite (exponent not all ones); variances non-negative (the loader refuses < 0).
                if h & 0x7c00 != 0x7c00 && !(t.name.ends_with("running_var") && h & 0x8000 != 0) {
                    break h;
                }
            })
            .collect();
        want.push(bits.iter().map(|&h| wgpose::weights::half::f16_bits_to_f32(h)).collect());
        t.dtype = "F16";
        t.bytes = bits.iter().flat_map(|h| h.to_le_bytes()).collect();
    }
    let p = dir.join("all-f16.safetensors");
    std::fs::write(&p, encode(&raw, &BTreeMap::new())).unwrap();
    let mut loaded = config("ldcrn-w16-lsp").unwrap().build(7).unwrap();
    load_into(&p, &mut loaded).unwrap();
    for ((name, t), w) in named_params(&loaded).into_iter().zip(&want) {
        let same = t.data.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name}: loaded values differ from the widened f16 values");
    }
    // Spot values whose f32 form is known by hand: 1, -2, the largest finite, the smallest
    // subnormal (2^-24), the smallest normal (2^-14), -0.
    for (h, v) in
        [(0x3c00u16, 1.0f32), (0xc000, -2.0), (0x7bff, 65504.0), (0x0001, 2f32.powi(-24)), (0x0400, 2f32.powi(-14))]
    {
        assert_eq!(wgpose::weights::half::f16_bits_to_f32(h), v, "bits {h:#06x}");
    }
    assert_eq!(wgpose::weights::half::f16_bits_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
}

/// An F16 tensor whose bytes do not fit its shape (4 bytes per element, as if F32 data were
/// labelled F16; or one byte short) is a format error naming the tensor, the dtype and the sizes.
#[test]
fn mislabelled_or_truncated_f16_is_named() {
    let dir = TempDir::new("f16-bad");
    let g = small_graph();
    let mut raw = raw_of(&g);
    raw[0].dtype = "F16";
    let name = raw[0].name.clone();
    let len = raw[0].bytes.len().to_string();
    expect_format(&dir, "f32-labelled-f16.safetensors", &encode(&raw, &BTreeMap::new()), &[&name, "F16", &len]);
    let numel = raw[0].bytes.len() / 4;
    raw[0].bytes = vec![0; numel * 2 - 1];
    let short = (numel * 2 - 1).to_string();
    expect_format(&dir, "short-f16.safetensors", &encode(&raw, &BTreeMap::new()), &[&name, "F16", &short]);
    // Non-finite F16 values are refused like non-finite F32 ones.
    raw[0].bytes = [0x7c00u16].iter().cycle().take(numel).flat_map(|h| h.to_le_bytes()).collect();
    expect_format(&dir, "inf-f16.safetensors", &encode(&raw, &BTreeMap::new()), &[&name, "inf"]);
}

#[test]
fn non_finite_values_are_named_with_their_index() {
    let dir = TempDir::new("nan");
    let g = small_graph();
    for (what, v) in [("NaN", f32::NAN), ("inf", f32::INFINITY), ("-inf", f32::NEG_INFINITY)] {
        let mut raw = raw_of(&g);
        let k = raw.len() / 2;
        raw[k].bytes[4 * 3..4 * 4].copy_from_slice(&v.to_le_bytes());
        let name = raw[k].name.clone();
        expect_format(&dir, &format!("{what}.safetensors"), &encode(&raw, &BTreeMap::new()), &[&name, what, "index 3"]);
    }
    // And save refuses to write what load would refuse to read.
    let mut g = small_graph();
    let (name, t) = named_params_mut(&mut g).into_iter().nth(2).unwrap();
    t.data[5] = f32::NAN;
    let p = dir.join("refused.safetensors");
    match save(&p, &g, &ModelCard::default()) {
        Err(Error::Input(m)) => assert!(m.contains(&name) && m.contains("index 5"), "{m}"),
        other => panic!("expected an Input error, got {other:?}"),
    }
    assert!(!p.exists(), "a refused save must not leave a file");
}

#[test]
fn corrupted_and_truncated_files_are_format_errors() {
    let dir = TempDir::new("corrupt");
    let g = small_graph();
    let raw = raw_of(&g);
    let good = encode(&raw, &BTreeMap::new());
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;

    expect_format(&dir, "empty.safetensors", &[], &["empty"]);
    expect_format(&dir, "short.safetensors", &good[..5], &["too short"]);

    // Header length beyond the file.
    let mut b = good.clone();
    b[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
    expect_format(&dir, "header-len.safetensors", &b, &["header length", "beyond the end"]);
    let mut b = good.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_format(&dir, "header-max.safetensors", &b, &["header length"]);

    // Truncated in the header and in the data.
    expect_format(&dir, "cut-header.safetensors", &good[..8 + n / 2], &["header length"]);
    let last = raw.last().unwrap().name.clone();
    expect_format(&dir, "cut-data.safetensors", &good[..good.len() - 3], &[&last, "truncated"]);
    // Trailing garbage.
    let mut b = good.clone();
    b.extend([1, 2, 3, 4]);
    expect_format(&dir, "trailing.safetensors", &b, &["data section"]);

    // Bad JSON and a header that is JSON but not an object.
    let mut b = good.clone();
    b[8] = b'[';
    expect_format(&dir, "bad-json.safetensors", &b, &["JSON"]);
    let mut b = good.clone();
    b[8 + 5] = 0xff;
    expect_format(&dir, "bad-utf8.safetensors", &b, &["UTF-8"]);
    let h = b"[1, 2, 3]";
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    expect_format(&dir, "not-object.safetensors", &b, &["not a JSON object"]);

    // Data offsets out of range, reversed, or not matching the shape.
    let name = raw[1].name.clone();
    for (file, offsets) in [
        ("offsets-beyond.safetensors", serde_json::json!([0, 1u64 << 62])),
        ("offsets-reversed.safetensors", serde_json::json!([8, 4])),
        ("offsets-size.safetensors", serde_json::json!([0, 4])),
        ("offsets-bad.safetensors", serde_json::json!("zero")),
    ] {
        let header_text = std::str::from_utf8(&good[8..8 + n]).unwrap();
        let mut header: serde_json::Value = serde_json::from_str(header_text).unwrap();
        header[&name]["data_offsets"] = offsets;
        let h = serde_json::to_vec(&header).unwrap();
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend(h);
        b.extend(&good[8 + n..]);
        expect_format(&dir, file, &b, &[&name]);
    }
    // A shape that overflows when multiplied out.
    let header_text = std::str::from_utf8(&good[8..8 + n]).unwrap();
    let mut header: serde_json::Value = serde_json::from_str(header_text).unwrap();
    header[&name]["shape"] = serde_json::json!([u64::MAX, u64::MAX]);
    let h = serde_json::to_vec(&header).unwrap();
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend(&good[8 + n..]);
    expect_format(&dir, "shape-overflow.safetensors", &b, &[&name]);

    // Two tensors claiming the same bytes.
    let mut header: serde_json::Value = serde_json::from_str(header_text).unwrap();
    let other = raw[0].name.clone();
    header[&name]["data_offsets"] = header[&other]["data_offsets"].clone();
    header[&name]["shape"] = header[&other]["shape"].clone();
    let h = serde_json::to_vec(&header).unwrap();
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend(&good[8 + n..]);
    expect_format(&dir, "overlap.safetensors", &b, &[]);
}

#[test]
fn unreadable_paths_are_io_errors() {
    let dir = TempDir::new("io");
    let mut g = small_graph();
    match load_into(dir.path(), &mut g) {
        Err(Error::Io { path, source }) => {
            assert!(path.contains("wgpose-test-io"));
            assert_eq!(source.kind(), std::io::ErrorKind::IsADirectory);
        }
        other => panic!("expected an Io error for a directory, got {other:?}"),
    }
    assert!(matches!(read_card(dir.path()), Err(Error::Io { .. })));
    let missing = dir.join("nope.safetensors");
    match load_into(&missing, &mut g) {
        Err(Error::Io { path, source }) => {
            assert!(path.contains("nope.safetensors"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an Io error for a missing file, got {other:?}"),
    }
    // Saving onto a directory, or into a directory that does not exist.
    assert!(matches!(save(dir.path(), &g, &ModelCard::default()), Err(Error::Io { .. })));
    let p = dir.join("no/such/dir/w.safetensors");
    match save(&p, &g, &ModelCard::default()) {
        Err(Error::Io { path, .. }) => assert!(path.contains("w.safetensors")),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn save_is_atomic_and_overwrites() {
    let dir = TempDir::new("atomic");
    let mut g = small_graph();
    let p = dir.join("w.safetensors");
    save(&p, &g, &ModelCard::default()).unwrap();
    randomise(&mut g, 3);
    let mut card = card_for("ldcrn-w16-lsp", &g);
    card.epochs = Some(2);
    save(&p, &g, &card).unwrap();
    let mut g2 = small_graph();
    assert_eq!(load_into(&p, &mut g2).unwrap(), card);
    assert_eq!(g2, g);
    // No temporary file is left behind.
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["w.safetensors".to_string()]);
    // A relative path without a directory part works too.
    let cwd_file = Path::new("wgpose-weights-relative-test.safetensors");
    save(cwd_file, &g, &card).unwrap();
    assert_eq!(read_card(cwd_file).unwrap(), card);
    std::fs::remove_file(cwd_file).unwrap();
}

/// Random byte flips and truncations of a valid file: loading may succeed (a flipped mantissa
/// bit is still a valid weight) but must never panic, and every truncation is an error.
#[test]
fn fuzzed_files_never_panic() {
    let dir = TempDir::new("fuzz");
    let g = small_graph();
    let mut card = card_for("ldcrn-w16-lsp", &g);
    card.metrics = "val_pck@0.2=0.5".into();
    let p = dir.join("good.safetensors");
    save(&p, &g, &card).unwrap();
    let good = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut rng = Rng::new(2024);
    let fuzz = dir.join("fuzz.safetensors");
    let mut errors = 0;
    let trials = 400;
    for trial in 0..trials {
        let mut b = good.clone();
        let truncate = trial % 4 == 0;
        if truncate {
            b.truncate(rng.below(good.len()));
        } else {
            // Mostly hit the length prefix and the header, where structure lives.
            let flips = 1 + rng.below(4);
            for _ in 0..flips {
                let at = if rng.uniform() < 0.8 { rng.below(8 + n) } else { rng.below(b.len()) };
                b[at] ^= 1 << rng.below(8);
            }
        }
        std::fs::write(&fuzz, &b).unwrap();
        let mut g2 = config("ldcrn-w16-lsp").unwrap().build(5).unwrap();
        let before = snapshot(&g2);
        let r = load_into(&fuzz, &mut g2);
        let c = read_card(&fuzz);
        if truncate {
            assert!(r.is_err(), "trial {trial}: a file truncated to {} bytes loaded", b.len());
        }
        match r {
            Ok(_) => assert!(c.is_ok()),
            Err(e) => {
                errors += 1;
                assert!(matches!(e, Error::Format { .. }), "trial {trial}: {e:?}");
                assert_eq!(snapshot(&g2), before, "trial {trial}: a failed load modified the graph");
            }
        }
    }
    assert!(errors > trials / 4, "only {errors} of {trials} corruptions were detected");
    // Pure noise.
    for len in [1usize, 7, 8, 9, 64, 4096] {
        let b: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        std::fs::write(&fuzz, &b).unwrap();
        let mut g2 = small_graph();
        assert!(matches!(load_into(&fuzz, &mut g2), Err(Error::Format { .. })), "noise of {len} bytes");
    }
}

// ---------------------------------------------------------------------------------------------
// Files in memory (the browser build fetches them)
// ---------------------------------------------------------------------------------------------

#[test]
fn bytes_load_exactly_like_files() {
    use wgpose::models::config_for_weights;
    use wgpose::weights::{load_bytes_into, read_card_bytes};
    let dir = TempDir::new("bytes");
    let cfg = config("ldcrn-w16-lsp").unwrap();
    let mut g1 = cfg.build(1).unwrap();
    randomise(&mut g1, 5);
    let card = card_for("ldcrn-w16-lsp", &g1);
    let path = dir.join("w.safetensors");
    save(&path, &g1, &card).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let mut from_file = cfg.build(2).unwrap();
    let mut from_bytes = cfg.build(3).unwrap();
    assert_eq!(load_into(&path, &mut from_file).unwrap(), card);
    assert_eq!(load_bytes_into(&bytes, "https://example.test/w.safetensors", &mut from_bytes).unwrap(), card);
    assert_eq!(snapshot(&from_bytes), snapshot(&from_file));
    assert_eq!(read_card_bytes(&bytes, "w").unwrap(), card);
    let resolved = config_for_weights(&bytes, "w").unwrap();
    assert_eq!((resolved.name, resolved.input, resolved.joints), (cfg.name, cfg.input, cfg.joints));

    // Empty, truncated and garbage buffers: Format errors naming the label, graph untouched.
    let mut g = cfg.build(9).unwrap();
    let before = snapshot(&g);
    for (what, data) in [("empty", &bytes[..0]), ("truncated", &bytes[..bytes.len() / 2]), ("garbage", &b"<html>"[..])]
    {
        match load_bytes_into(data, "the-label", &mut g) {
            Err(Error::Format { path, msg }) => {
                assert_eq!(path, "the-label", "{what}");
                assert!(!msg.is_empty(), "{what}");
            }
            other => panic!("{what}: expected a Format error, got {other:?}"),
        }
        assert!(matches!(read_card_bytes(data, "the-label"), Err(Error::Format { .. })), "{what}: card");
    }
    assert_eq!(snapshot(&g), before, "a failed load modified the graph");
    // Another config's file is refused with the tensors named.
    let mut other = config("sghg-1x64-lsp").unwrap().build(1).unwrap();
    assert!(matches!(load_bytes_into(&bytes, "w", &mut other), Err(Error::Format { .. })));
}

/// `wgpose average-weights`: the written file holds the mean of its inputs (all three
/// families, within f32 rounding) and loads back; one input, a missing file and two different
/// networks are errors with a non-zero exit and a message, and write nothing.
#[test]
fn average_weights_command_writes_the_mean_and_refuses_bad_inputs() {
    let dir = TempDir::new("average-weights");
    let bin = env!("CARGO_BIN_EXE_wgpose");
    let run =
        |args: &[&std::ffi::OsStr]| std::process::Command::new(bin).arg("average-weights").args(args).output().unwrap();
    let mut files = Vec::new();
    for name in SMALL {
        let cfg = config(name).unwrap();
        let mut graphs = Vec::new();
        for seed in [1u64, 2] {
            let mut g = cfg.build(0).unwrap();
            randomise(&mut g, seed);
            let mut card = ModelCard::for_model(&cfg, &g);
            card.training_data = format!("seed {seed}");
            let path = dir.path().join(format!("{name}-{seed}.safetensors"));
            save(&path, &g, &card).unwrap();
            graphs.push((path, g));
        }
        let out = dir.path().join(format!("{name}-soup.safetensors"));
        let o = run(&[graphs[0].0.as_os_str(), graphs[1].0.as_os_str()]);
        assert!(!o.status.success(), "no --out must be refused");
        let o = std::process::Command::new(bin)
            .arg("average-weights")
            .arg("--out")
            .arg(&out)
            .arg(&graphs[0].0)
            .arg(&graphs[1].0)
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let mut back = cfg.build(0).unwrap();
        let card = load_into(&out, &mut back).unwrap();
        assert!(card.training_data.starts_with("uniform average of 2 weight files"), "{}", card.training_data);
        for (((n, m), (_, a)), (_, b)) in
            named_params(&back).iter().zip(named_params(&graphs[0].1)).zip(named_params(&graphs[1].1))
        {
            for ((&m, &a), &b) in m.data.iter().zip(&a.data).zip(&b.data) {
                let want = (a as f64 + b as f64) / 2.0;
                assert!((m as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3), "{name} {n}: {m} vs {want}");
            }
        }
        files.push(graphs.remove(0).0);
    }
    let out = dir.path().join("refused.safetensors");
    let missing = dir.path().join("missing.safetensors");
    for (inputs, says) in [
        (vec![files[0].clone()], "2 values required"),
        (vec![files[0].clone(), missing.clone()], "missing.safetensors"),
        (vec![files[0].clone(), files[1].clone()], "cannot average different networks"),
    ] {
        let o = std::process::Command::new(bin)
            .arg("average-weights")
            .arg("--out")
            .arg(&out)
            .args(&inputs)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{inputs:?}: {err}");
        assert!(!out.exists(), "{inputs:?}: nothing may be written");
    }
}
