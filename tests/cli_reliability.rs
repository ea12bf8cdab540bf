//! Issue 15: every case an adversarial run found, run through the built `wgpose` binary (the
//! behaviour is the command line's), plus the library checks behind them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use wgpose::models::config;
use wgpose::weights::{named_params_mut, save, ModelCard};

mod common;
use common::TempDir;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sample() -> PathBuf {
    root().join("assets/sample.jpg")
}

fn wgpose(args: &[&str]) -> Output {
    wgpose_with_stdout(args, Stdio::piped())
}

fn wgpose_with_stdout(args: &[&str], stdout: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgpose"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the command failed with exit status 1 (an error, not a panic's 101) and that its
/// stderr mentions every one of `needles`.
#[track_caller]
fn assert_fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1; stderr:\n{err}");
    assert!(!err.contains("panicked"), "panic:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`:\n{err}");
    }
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(o.status.success(), "exit {:?}; stderr:\n{}", o.status.code(), stderr(o));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_json(p: &Path) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Whether lavapipe (or a GPU) is there; without it GPU cases are skipped unless
/// `WGPOSE_REQUIRE_GPU=1`.
fn have_gpu() -> bool {
    match wgpose::gpu::GpuContext::new() {
        Ok(_) => true,
        Err(e) => {
            assert_ne!(std::env::var("WGPOSE_REQUIRE_GPU").as_deref(), Ok("1"), "WGPOSE_REQUIRE_GPU=1 but: {e}");
            eprintln!("skipping the GPU half: {e}");
            false
        }
    }
}

// 1. Unwritable stdout.

#[test]
fn a_full_stdout_is_an_error_not_a_panic() {
    let lsp = root().join("tests/fixtures/lspet");
    let cases: Vec<Vec<&str>> = vec![
        vec!["models", "--json"],
        vec!["models"],
        vec!["predict", "--device", "cpu"],
        vec!["eval", "--format", "lsp", "--root", s(&lsp), "--device", "cpu", "--limit", "1"],
    ];
    for args in cases {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = wgpose_with_stdout(&args, Stdio::from(full));
        assert_fails_with(&o, &["cannot write to standard output"]);
    }
}

// 2. JPEG completeness from the stream's structure.

/// `bytes` with a comment segment holding FF D9 (as EXIF thumbnails do) right after SOI.
fn with_comment_holding_eoi(bytes: &[u8]) -> Vec<u8> {
    let body: Vec<u8> = b"thumbnail \xFF\xD9 ends here".to_vec();
    let len = (body.len() + 2) as u16;
    let mut v = bytes[..2].to_vec();
    v.extend_from_slice(&[0xFF, 0xFE]);
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&body);
    v.extend_from_slice(&bytes[2..]);
    v
}

#[test]
fn a_truncated_jpeg_with_eoi_bytes_in_a_comment_is_refused() {
    let d = TempDir::new("trunc");
    let bytes = with_comment_holding_eoi(&std::fs::read(sample()).unwrap());
    // The whole file is within 4 KiB of the comment: the old tail check saw FF D9 and accepted it.
    let cut = &bytes[..3000];
    assert!(cut.windows(2).any(|w| w == [0xFF, 0xD9]));
    std::fs::write(d.join("cut.jpg"), cut).unwrap();
    let o = wgpose(&["predict", s(&d.join("cut.jpg")), "--device", "cpu"]);
    assert_fails_with(&o, &["truncated JPEG"]);
    // Cut in the middle of the compressed data, too.
    std::fs::write(d.join("half.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(wgpose::image_io::load_rgb(&d.join("half.jpg")).is_err());
    // The complete file with the comment still loads.
    std::fs::write(d.join("whole.jpg"), &bytes).unwrap();
    wgpose::image_io::load_rgb(&d.join("whole.jpg")).unwrap();
}

#[test]
fn a_jpeg_followed_by_more_than_4_kib_of_data_loads_like_the_plain_file() {
    let d = TempDir::new("motion");
    let mut bytes = std::fs::read(sample()).unwrap();
    // A motion photo: the video follows the JPEG's end-of-image marker.
    let mut rng = wgpose::rng::Rng::new(3);
    bytes.extend((0..20_000).map(|_| (rng.below(255)) as u8));
    std::fs::write(d.join("motion.jpg"), &bytes).unwrap();
    let plain = wgpose::image_io::load_rgb(&sample()).unwrap();
    let motion = wgpose::image_io::load_rgb(&d.join("motion.jpg")).unwrap();
    assert_eq!(plain.rgb, motion.rgb);
    let o = wgpose(&["predict", s(&d.join("motion.jpg")), "--device", "cpu", "--json", s(&d.join("m.json"))]);
    assert_ok(&o);
}

#[test]
fn eval_skips_a_damaged_jpeg_instead_of_scoring_it() {
    let d = TempDir::new("evaljpeg");
    let lsp = root().join("tests/fixtures/lspet");
    std::fs::create_dir_all(d.join("images")).unwrap();
    std::fs::copy(lsp.join("joints.mat"), d.join("joints.mat")).unwrap();
    for f in ["im00002.jpg", "im00003.jpg"] {
        std::fs::copy(lsp.join("images").join(f), d.join("images").join(f)).unwrap();
    }
    let bytes = with_comment_holding_eoi(&std::fs::read(lsp.join("images/im00001.jpg")).unwrap());
    std::fs::write(d.join("images/im00001.jpg"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    let o = wgpose(&["eval", "--format", "lsp", "--root", s(d.path()), "--range", "1..3", "--device", "cpu"]);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(err.contains("skipped") && err.contains("truncated JPEG"), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 people evaluated"));
}

// 3. Boxes are validated against the image before any executor sees them.

#[test]
fn absurd_boxes_are_refused_the_same_way_on_both_executors() {
    let d = TempDir::new("bbox");
    let mut devices = vec!["cpu"];
    if have_gpu() {
        devices.push("gpu");
    }
    for dev in devices {
        for bbox in ["0,0,1e20,1e20", "-3e38,-3e38,3.4e38,3.4e38", "700,0,10,10", "0,0,0,5"] {
            let json = d.join(&format!("{dev}.json"));
            let o = wgpose(&["predict", s(&sample()), &format!("--bbox={bbox}"), "--device", dev, "--json", s(&json)]);
            assert_fails_with(&o, &["box"]);
            assert!(!json.exists(), "{dev} {bbox}: --json written although nothing succeeded");
        }
    }
}

// 4. `train` validates every argument before the first step.

/// A tiny training run on the LSPET fixture; a flag in `extra` replaces the default one.
fn train_cmd<'a>(out: &'a str, root: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let defaults = [
        ("--model", "sghg-1x64-lsp"),
        ("--root", root),
        ("--range", "1..2"),
        ("--val", "3..3"),
        ("--size", "64"),
        ("--batch", "2"),
        ("--limit", "2"),
        ("--epochs", "1"),
        ("--out", out),
    ];
    let mut v = vec!["train", "--quiet"];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            v.extend([flag, value]);
        }
    }
    v.extend_from_slice(extra);
    v
}

#[test]
fn train_refuses_bad_arguments_before_the_first_step() {
    let d = TempDir::new("trainargs");
    let fixtures = root().join("tests/fixtures/lspet");
    let out = d.join("run");
    let cases: &[(&[&str], &str)] = &[
        (&["--batch", "0"], "--batch"),
        (&["--epochs", "0"], "--epochs"),
        (&["--lr", "NaN"], "--lr"),
        (&["--lr", "inf"], "--lr"),
        (&["--lr", "0"], "--lr"),
        (&["--lr-gamma", "NaN"], "--lr-gamma"),
        (&["--sigma", "0"], "--sigma"),
        (&["--sigma", "100"], "--sigma"),
        (&["--lr-min", "1"], "--lr-min"),
        (&["--shift=-0.5"], "--shift"),
        (&["--half-body", "2"], "--half-body"),
        (&["--occlusion", "1.5"], "--occlusion"),
        (&["--rotation", "200"], "--rotation"),
        (&["--rotation=-5"], "--rotation"),
        (&["--scale-jitter", "1"], "--scale-jitter"),
        (&["--scale-jitter", "NaN"], "--scale-jitter"),
        (&["--model", "person-detector-r18w32", "--rotation", "10"], "the person detector has its own"),
        (&["--warmup", "5", "--workers", "0"], "--workers"),
        (&["--val", "5..12"], "no labelled image"),
        (&["--val", "5000..5010"], "outside the labelled images"),
        (&["--model", "fasterpose-r18-s16"], "17 joints"),
        (&["--init", "/nonexistent.safetensors"], "no such file"),
        (&["--teacher", "/nonexistent.safetensors"], "no such file"),
        (&["--teacher", "models/person-detector-r18w32.safetensors"], "distillation is for pose networks"),
        // The hourglass runs at multiples of 64 only: it cannot teach at 48x48.
        (
            &["--model", "fasterpose-r18-s16-lsp", "--size", "48", "--teacher", "models/sghg-1x64-lsp.safetensors"],
            "the student fasterpose-r18-s16-lsp takes",
        ),
        (&["--teacher", "models/sghg-1x64-lsp.safetensors", "--teacher-weight", "1.5"], "--teacher-weight"),
    ];
    for (extra, needle) in cases {
        let o = wgpose(&train_cmd(s(&out), s(&fixtures), extra));
        assert_fails_with(&o, &[needle]);
        assert!(!out.exists(), "{extra:?}: --out was created before validation failed");
    }
}

#[test]
fn train_does_not_overwrite_a_run_unless_forced() {
    let d = TempDir::new("trainforce");
    let fixtures = root().join("tests/fixtures/lspet");
    let out = d.join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("train_log.csv"), "epoch,step\n").unwrap();
    let o = wgpose(&train_cmd(s(&out), s(&fixtures), &[]));
    assert_fails_with(&o, &["already holds a training run", "--force"]);
    assert_eq!(std::fs::read_to_string(out.join("train_log.csv")).unwrap(), "epoch,step\n");
    let o = wgpose(&train_cmd(s(&out), s(&fixtures), &["--force"]));
    assert_ok(&o);
    assert_ne!(std::fs::read_to_string(out.join("train_log.csv")).unwrap(), "epoch,step\n");
}

// 5. Several inputs: every result is kept, and one failure makes the exit status non-zero.

#[test]
fn predict_keeps_every_result_and_fails_when_one_input_failed() {
    let d = TempDir::new("many");
    std::fs::create_dir_all(d.join("a")).unwrap();
    std::fs::create_dir_all(d.join("b")).unwrap();
    std::fs::copy(sample(), d.join("a/x.jpg")).unwrap();
    std::fs::copy(sample(), d.join("b/x.jpg")).unwrap();
    image::open(sample()).unwrap().save(d.join("a/x.png")).unwrap();
    std::fs::write(d.join("broken.jpg"), b"not an image at all").unwrap();
    let inputs = [d.join("a/x.jpg"), d.join("b/x.jpg"), d.join("a/x.png"), d.join("broken.jpg")];
    let (json, overlays) = (d.join("out.json"), d.join("overlays"));
    let mut args = vec!["predict", "--device", "cpu", "--json", s(&json), "--overlay", s(&overlays)];
    args.extend(inputs.iter().map(|p| s(p)));
    let o = wgpose(&args);
    assert_fails_with(&o, &["1 of the 4 image(s) failed", "broken.jpg"]);
    let m = read_json(&json);
    // One key per image that worked, plus `people` (everyone found, per image).
    assert_eq!(m.len(), 4, "{m:?}");
    let people = m["people"].as_object().expect("a `people` object");
    assert_eq!(people.len(), 3, "{people:?}");
    for p in &inputs[..3] {
        assert!(m.contains_key(s(p)), "{} missing from {m:?}", p.display());
        assert!(people.contains_key(s(p)), "{} missing from {people:?}", p.display());
    }
    assert_eq!(std::fs::read_dir(&overlays).unwrap().count(), 3, "overlays overwrote each other");
}

// 6. Negative batch-norm variances.

#[test]
fn weights_with_a_negative_running_variance_are_refused() {
    let d = TempDir::new("negvar");
    let cfg = config("sghg-1x64-lsp").unwrap();
    let mut g = cfg.build(1).unwrap();
    let mut hit = None;
    for (name, t) in named_params_mut(&mut g) {
        if name.ends_with(".running_var") {
            t.data[0] = -0.5;
            hit = Some(name);
            break;
        }
    }
    let name = hit.expect("the model has a batch norm");
    let file = d.join("negvar.safetensors");
    save(&file, &g, &ModelCard::for_model(&cfg, &g)).unwrap();
    let o = wgpose(&["predict", s(&sample()), "--model", s(&file), "--device", "cpu"]);
    assert_fails_with(&o, &[&name, "negative variance"]);
}

// 7. COCO evaluation.

fn coco_case(d: &TempDir, tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = d.join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let src = root().join("tests/fixtures/coco");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("test_coco.json")).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(dir.join("test_coco.json"), v.to_string()).unwrap();
    std::fs::copy(src.join("000000040083.jpg"), dir.join("000000040083.jpg")).unwrap();
    dir
}

#[test]
fn coco_evaluation_names_what_is_wrong_with_the_annotations() {
    let d = TempDir::new("coco");
    let eval = |dir: &Path, model: &str| {
        wgpose(&["eval", "--format", "coco", "--root", s(dir), "--model", model, "--device", "cpu", "--limit", "1"])
    };
    let neg = coco_case(&d, "neg", |v| v["annotations"][1]["area"] = serde_json::json!(-5.0));
    assert_fails_with(&eval(&neg, "fasterpose-r18-s16-lsp"), &["annotation 198196", "negative area"]);
    let none = coco_case(&d, "none", |v| {
        v.as_object_mut().unwrap().remove("annotations");
    });
    assert_fails_with(&eval(&none, "fasterpose-r18-s16-lsp"), &["no `annotations`"]);
    let unknown = coco_case(&d, "unknown", |v| v["annotations"][0]["image_id"] = serde_json::json!(123456789));
    assert_fails_with(&eval(&unknown, "fasterpose-r18-s16-lsp"), &["image_id 123456789 is not in `images`"]);
    let cat = coco_case(&d, "cat", |v| {
        for a in v["annotations"].as_array_mut().unwrap() {
            a["category_id"] = serde_json::json!(2);
        }
    });
    assert_fails_with(
        &eval(&cat, "fasterpose-r18-s16-lsp"),
        &["no people to evaluate", "14 not of the person category"],
    );
    // A 14-joint LSP model against COCO's 17 joints runs, but says so.
    let ok = coco_case(&d, "ok", |_| {});
    let o = eval(&ok, "fasterpose-r18-s16-lsp");
    assert_ok(&o);
    assert!(stderr(&o).contains("predicts 14 joints, the dataset labels 17"), "{}", stderr(&o));
}

// 9. Smaller things.

#[test]
fn image_errors_name_the_file_once_and_say_what_the_file_is() {
    let d = TempDir::new("names");
    std::fs::write(d.join("empty.jpg"), b"").unwrap();
    std::fs::write(d.join("text.jpg"), b"hello, I am a text file").unwrap();
    for (f, why) in [("empty.jpg", "empty file"), ("text.jpg", "not a JPEG or PNG image")] {
        let p = d.join(f);
        let o = wgpose(&["predict", s(&p), "--device", "cpu"]);
        assert_fails_with(&o, &[why]);
        let err = stderr(&o);
        assert!(!err.contains("truncated"), "{err}");
        assert_eq!(err.matches(s(&p)).count(), 1, "path not printed exactly once:\n{err}");
    }
}

#[test]
fn model_arguments_that_are_not_models_are_explained() {
    let d = TempDir::new("models");
    // Weights without metadata: a valid safetensors file with no model card.
    let t = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4]).unwrap();
    let bytes = safetensors::serialize([("x", t)], None).unwrap();
    std::fs::write(d.join("bare.safetensors"), bytes).unwrap();
    let o = wgpose(&["predict", s(&sample()), "--model", s(&d.join("bare.safetensors")), "--device", "cpu"]);
    assert_fails_with(&o, &["no model card"]);
    assert!(!stderr(&o).contains("unknown model ``"));
    let o = wgpose(&["predict", s(&sample()), "--model", s(d.path()), "--device", "cpu"]);
    assert_fails_with(&o, &["is a directory"]);
}

#[test]
fn predict_options_are_checked_before_inference() {
    let d = TempDir::new("opts");
    // --overlay naming a directory for one image fails before the model is even loaded.
    let o = wgpose(&["predict", s(&sample()), "--overlay", s(d.path()), "--device", "cpu"]);
    assert_fails_with(&o, &["--overlay", "is a directory"]);
    assert!(!stderr(&o).contains("model "), "{}", stderr(&o));
    for t in ["NaN", "-1", "inf", "1.5"] {
        let o = wgpose(&["predict", s(&sample()), &format!("--threshold={t}"), "--device", "cpu"]);
        assert_fails_with(&o, &["--threshold"]);
    }
    let o = wgpose(&["predict", s(&sample()), "--device", "both"]);
    assert_fails_with(&o, &["--device both"]);
    // The image forgotten (the bundled sample becomes the input) and the photo named as the JSON
    // output: refused, the photo untouched; the same for an input named as the output.
    let photo = d.join("photo.jpg");
    std::fs::copy(sample(), &photo).unwrap();
    let before = std::fs::read(&photo).unwrap();
    let o = wgpose(&["predict", "--json", s(&photo), "--device", "cpu"]);
    assert_fails_with(&o, &["--json", "JPEG or PNG image", "refusing"]);
    let o = wgpose(&["predict", "--json", s(&sample()), "--device", "cpu"]);
    assert_fails_with(&o, &["--json", "one of the input images"]);
    let o = wgpose(&["predict", s(&photo), "--overlay", s(&photo), "--device", "cpu"]);
    assert_fails_with(&o, &["--overlay", "one of the input images"]);
    assert_eq!(std::fs::read(&photo).unwrap(), before, "the photo was modified");
    let o = wgpose(&["run", "--model", "sghg-1x64-lsp", "--input", "x.npy", "--output", "y.npy", "--device", "both"]);
    assert_fails_with(&o, &["--device both"]);
}

#[test]
fn keypoints_stay_inside_a_very_thin_image() {
    let d = TempDir::new("thin");
    let img = image::RgbImage::from_fn(5000, 3, |x, y| image::Rgb([(x % 251) as u8, (y * 80) as u8, 128]));
    img.save(d.join("thin.png")).unwrap();
    let json = d.join("thin.json");
    let o = wgpose(&["predict", s(&d.join("thin.png")), "--device", "cpu", "--json", s(&json)]);
    assert_ok(&o);
    let m = read_json(&json);
    let kps = m.values().next().unwrap().as_array().unwrap();
    for k in kps {
        let (x, y, score) = (k[0].as_f64().unwrap(), k[1].as_f64().unwrap(), k[2].as_f64().unwrap());
        assert!((0.0..=5000.0).contains(&x) && (0.0..=3.0).contains(&y), "keypoint {k:?} outside the 5000x3 image");
        assert!((0.0..=1.0).contains(&score));
    }
}

// Soak: a short run of `wgpose soak` on the CPU executor. Memory after warm-up must stay within
// 64 MiB (the long run in the README grows by a few MiB at most); this is a memory bound only.
#[test]
fn a_short_soak_keeps_memory_flat() {
    let o = wgpose(&["soak", "--frames", "150", "--every", "50", "--device", "cpu", "--margin-mib", "64"]);
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("RSS").count(), 3, "{out}");
    assert!(out.contains("largest growth after warm-up"), "{out}");
}

/// Issue 15, item 8: an input whose activations exceed the device's storage binding runs on
/// the CPU executor with `run`; `profile` (which times GPU kernels) refuses it before any work,
/// saying what fits.
#[test]
fn an_input_too_large_for_the_device_is_explained_by_profile() {
    if !have_gpu() {
        return;
    }
    // 8192x8192: a 5 GiB arena, beyond any device (bindings are sized in u32).
    let o = wgpose(&["profile", "--model", "fasterpose-r18-s16-lsp", "--size", "8192x8192"]);
    assert_fails_with(&o, &["binds at most", "profile a smaller --size", "wgpose run"]);
}

/// `eval --box-jitter` moves and scales the ground-truth boxes (so the predictions change, and
/// the same seed gives the same ones); out-of-range values and a jitter of detected boxes are
/// refused.
#[test]
fn eval_box_jitter_moves_the_boxes_reproducibly() {
    let root = root().join("tests/fixtures/lspet");
    let dir = TempDir::new("jitter");
    let base = ["eval", "--format", "lsp", "--root", s(&root), "--range", "1..3", "--device", "cpu"];
    let run = |extra: &[&str], name: &str| {
        let json = dir.path().join(name);
        let o = wgpose(&[&base[..], &["--json", s(&json)], extra].concat());
        assert_ok(&o);
        (String::from_utf8_lossy(&o.stdout).to_string(), std::fs::read_to_string(&json).unwrap())
    };
    let (_, exact) = run(&[], "exact.json");
    let (out, jit) = run(&["--box-jitter", "0.2"], "jit.json");
    let (_, again) = run(&["--box-jitter", "0.2"], "again.json");
    let (_, other) = run(&["--box-jitter", "0.2", "--jitter-seed", "2"], "other.json");
    assert!(out.contains("ground-truth boxes jittered: centre +-0.2"), "{out}");
    assert_ne!(exact, jit, "jittered boxes gave the exact boxes' predictions");
    assert_eq!(jit, again, "the same seed must give the same boxes");
    assert_ne!(jit, other, "another seed must give other boxes");
    for bad in ["0.5", "-0.1", "NaN"] {
        let flag = format!("--box-jitter={bad}");
        let o = wgpose(&[&base[..], &[flag.as_str()]].concat());
        assert_fails_with(&o, &["--box-jitter", "[0, 0.5)"]);
    }
    let o = wgpose(&[&base[..], &["--box-jitter", "0.1", "--boxes", "detected"]].concat());
    assert_fails_with(&o, &["--box-jitter moves ground-truth boxes"]);
}

/// `--size HxW` runs the network at another input size (printed on the model line) and changes
/// the predictions; a size the network cannot take, or one that is not HxW, is an error.
#[test]
fn eval_and_predict_take_an_input_size() {
    let lsp = root().join("tests/fixtures/lspet");
    let dir = TempDir::new("size");
    let base = ["eval", "--format", "lsp", "--root", s(&lsp), "--range", "1..3", "--device", "cpu"];
    let run = |extra: &[&str], name: &str| {
        let json = dir.path().join(name);
        let o = wgpose(&[&base[..], &["--json", s(&json)], extra].concat());
        assert_ok(&o);
        (stderr(&o), std::fs::read_to_string(&json).unwrap())
    };
    let (err, trained) = run(&[], "trained.json");
    assert!(err.contains("fasterpose-r18-s16-lsp at "), "{err}");
    let (err, other) = run(&["--size", "96x64"], "other.json");
    assert!(err.contains("fasterpose-r18-s16-lsp at 96x64"), "{err}");
    assert_ne!(trained, other, "another input size gave the same predictions");
    let o = wgpose(&[&base[..], &["--size", "100x64"]].concat());
    assert_fails_with(&o, &["100x64", "multiple of 16"]);
    let o = wgpose(&[&base[..], &["--size", "96"]].concat());
    assert_fails_with(&o, &["`96` is not HxW"]);
    let sample = root().join("assets/sample.jpg");
    let o = wgpose(&["predict", s(&sample), "--device", "cpu", "--no-detect", "--size", "96x64"]);
    assert_ok(&o);
    assert!(stderr(&o).contains("at 96x64"), "{}", stderr(&o));
}

/// `eval --boxes detected` runs the library's pipeline (detector, top person, one refinement)
/// and reports box AP next to PCK; bad pipeline options are refused before any work.
#[test]
fn eval_with_detected_boxes_reports_boxes_and_pck() {
    let root = root().join("tests/fixtures/lspet");
    let base =
        ["eval", "--format", "lsp", "--root", s(&root), "--range", "1..3", "--device", "cpu", "--boxes", "detected"];
    let o = wgpose(&base);
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("person boxes (IoU 0.5): AP"), "{out}");
    assert!(out.contains("PCK@0.2 (torso)"), "{out}");
    let o = wgpose(&[&base[..], &["--refine-threshold", "2"]].concat());
    assert_fails_with(&o, &["--refine-threshold 2"]);
}

/// `export` without `--size` writes the size the weights were trained at (the shipped hourglass:
/// 192x128, its config says 128x128), and `--size` still wins. Before session 24 the file was
/// always the config's size, so onnxruntime ran the hourglass at 128x128 in the browser benchmark
/// while wgpose ran it at 192x128.
#[test]
fn export_defaults_to_the_trained_input_size() {
    if !wgpose::models::shipped_weights_path("sghg-1x64-lsp").is_file() {
        eprintln!("skipping: no shipped sghg-1x64-lsp weights");
        return;
    }
    let dir = TempDir::new("export-size");
    let out = dir.join("m.onnx");
    let o = wgpose(&["export", "--model", "sghg-1x64-lsp", "--onnx", s(&out)]);
    assert_ok(&o);
    assert!(stderr(&o).contains("[N, 3, 192, 128]"), "{}", stderr(&o));
    let o = wgpose(&["export", "--model", "sghg-1x64-lsp", "--size", "128x128", "--onnx", s(&out)]);
    assert_ok(&o);
    assert!(stderr(&o).contains("[N, 3, 128, 128]"), "{}", stderr(&o));
}
