//! The weight files shipped in `models/` work end to end on real people: every
//! `models/*.safetensors` is resolved to its config through its model card, loaded, and run over
//! 20 LSP-extended validation people (`tests/fixtures/lspet-val`, images 8001..8020, never
//! trained on) the way `wgpose eval --format lsp` runs: crop from the LSP box of the
//! ground-truth joints (labelled joints' box enlarged by 25%, no further padding), one person per
//! call, CPU executor, PCK@0.2 normalised by torso and by box. The shipped weights must clearly
//! beat a seeded random initialisation of the same config. When a GPU adapter exists the GPU
//! executor must find the same keypoints.
//!
//! `cargo test --release --test shipped_weights -- --nocapture` prints the numbers per model.

mod common;

use std::path::{Path, PathBuf};

use wgpose::data::{box_from_keypoints, Annotation, Extra, LSP_BOX_ENLARGE};
use wgpose::detector::PersonDetector;
use wgpose::estimator::{Estimator, EstimatorOptions};
use wgpose::gpu::GpuContext;
use wgpose::image_io::{load_rgb, LoadedImage};
use wgpose::metrics::{pck, PckNorm};
use wgpose::models::{calibrate_batch_norms, config, Family, ModelConfig, WeightsSource};
use wgpose::pipeline::crop::ImageRef;
use wgpose::pipeline::detect::{box_ap, DetectConfig, Detection};
use wgpose::skeleton::LSP14;
use wgpose::weights::{read_card, ModelCard};

/// Acceptance thresholds, in PCK points (percent). The numbers per model measured when this test
/// was written are in `models/README.md` (its table gives each file's PCK@0.2 on the full
/// 1000-person validation split 8001..9000); on these 20 people `sghg-1x64-lsp` scored torso
/// 18.9% / box 51.6% against 2.1% / 16.9% for its random initialisation, CPU and GPU alike. The
/// bounds are deliberately loose so that a broken file, loader or pipeline trips them, not a
/// retrained model.
const MIN_SHIPPED_BOX_PCK: f64 = 25.0;
const MIN_MARGIN_OVER_RANDOM: f64 = 15.0;
/// GPU keypoints must lie within this fraction of the person box size (`max(w, h)` of the LSP
/// box) of the CPU keypoints, for joints the CPU is at least `CONFIDENT` sure of.
const GPU_TOLERANCE: f32 = 0.01;
const CONFIDENT: f32 = 0.2;
/// GPU and CPU PCK may differ by at most this many points.
const GPU_PCK_TOLERANCE: f64 = 2.0;
/// Seed of the random initialisation (the estimator's default, as `wgpose eval` uses it).
const RANDOM_SEED: u64 = 0;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One fixture person with their image.
struct Person {
    gt: Annotation,
    image: LoadedImage,
}

/// The fixture people: `joints.json` holds `{"joints": {"im08001.jpg": [[x, y, v] x 14]}}` in
/// LSP-14 order and original pixels, as `wgpose::data::lsp::load_lsp` returned them.
fn fixture_people() -> Vec<Person> {
    let root = manifest().join("tests/fixtures/lspet-val");
    let text = std::fs::read_to_string(root.join("joints.json")).expect("read tests/fixtures/lspet-val/joints.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("parse joints.json");
    let joints = doc["joints"].as_object().expect("joints.json: `joints` is an object");
    let mut people = Vec::new();
    for (name, kps) in joints {
        let keypoints: Vec<[f32; 3]> =
            serde_json::from_value(kps.clone()).unwrap_or_else(|e| panic!("joints.json: {name}: {e}"));
        assert_eq!(keypoints.len(), LSP14.len(), "joints.json: {name}");
        let number: usize = name
            .trim_start_matches("im")
            .trim_end_matches(".jpg")
            .parse()
            .unwrap_or_else(|e| panic!("joints.json: {name} is not imNNNNN.jpg: {e}"));
        let path = root.join("images").join(name);
        let image = load_rgb(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let gt = Annotation {
            id: name.trim_end_matches(".jpg").to_string(),
            bbox: box_from_keypoints(&keypoints, LSP_BOX_ENLARGE),
            image: path,
            keypoints,
            skeleton: &LSP14,
            extra: Extra::Lsp { number },
        };
        people.push(Person { gt, image });
    }
    assert!(people.len() >= 12, "only {} fixture people", people.len());
    people
}

/// Every `models/*.safetensors` (or `$WGPOSE_MODELS/*.safetensors`, to check another copy of
/// the weights), sorted.
fn shipped_files() -> Vec<PathBuf> {
    let dir = wgpose::models::models_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("read models/").path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    files
}

/// The config a weights file belongs to, from its model card (as `wgpose eval --model FILE`
/// resolves it: the card's config, with its input size and joint count).
fn config_of(path: &Path) -> Result<(ModelConfig, ModelCard), String> {
    let card = read_card(path).map_err(|e| format!("cannot read the model card: {e}"))?;
    let mut cfg = config(&card.config).map_err(|e| format!("model card names config `{}`: {e}", card.config))?;
    if let Some(input) = card.input {
        cfg = cfg.with_input(input);
    }
    if let Some(j) = card.joints {
        cfg = cfg.with_joints(j);
    }
    Ok((cfg, card))
}

/// Writes what `load_model` builds when a config has no weights (the config's seeded
/// initialisation, batch norms calibrated on a seeded random input) to a file, so the estimator
/// can load it whether or not `models/` has weights for the config.
fn random_init_file(cfg: &ModelConfig, dir: &Path) -> Result<PathBuf, String> {
    let mut graph = cfg.build(RANDOM_SEED).map_err(|e| format!("build {}: {e}", cfg.name))?;
    let [c, h, w] = cfg.input;
    let mut rng = wgpose::rng::Rng::new(RANDOM_SEED ^ 0xCA11);
    let x = wgpose::Tensor::new(vec![2, c, h, w], rng.vec(2 * c * h * w, -1.0, 1.0)).map_err(|e| e.to_string())?;
    calibrate_batch_norms(&mut graph, &[x]).map_err(|e| format!("calibrate {}: {e}", cfg.name))?;
    let path = dir.join(format!("{}-random-{RANDOM_SEED}.safetensors", cfg.name));
    wgpose::weights::save(&path, &graph, &ModelCard::for_model(cfg, &graph)).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Keypoints `[x, y, score]` per person in LSP-14 order and original pixels (joints the model
/// lacks are NaN), as `wgpose eval` collects them.
fn predict(est: &mut Estimator, people: &[Person]) -> Result<Vec<Vec<[f32; 3]>>, String> {
    let mapping = est.skeleton.mapping_to(&LSP14);
    let mut out = Vec::with_capacity(people.len());
    for p in people {
        let bbox = box_from_keypoints(&p.gt.keypoints, LSP_BOX_ENLARGE)
            .ok_or_else(|| format!("{}: no person box", p.gt.id))?;
        // The front door takes the loaded image whole: box and keypoints in original pixels.
        let pose = est
            .estimate(&p.image, bbox)
            .map_err(|e| format!("{}: {e}", p.gt.id))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{}: no pose", p.gt.id))?;
        out.push(
            mapping
                .iter()
                .map(|m| {
                    m.map_or([f32::NAN, f32::NAN, 0.0], |j| {
                        let k = pose.keypoints[j];
                        [k.x, k.y, k.score]
                    })
                })
                .collect(),
        );
    }
    Ok(out)
}

/// Mean PCK@0.2 in percent, normalised by torso and by box.
fn pck_both(preds: &[Vec<[f32; 3]>], people: &[Person]) -> Result<(f64, f64), String> {
    let gts: Vec<Annotation> = people.iter().map(|p| p.gt.clone()).collect();
    let torso = pck(preds, &gts, 0.2, PckNorm::Torso).map_err(|e| e.to_string())?;
    let boxed = pck(preds, &gts, 0.2, PckNorm::Box).map_err(|e| e.to_string())?;
    Ok((100.0 * torso.mean, 100.0 * boxed.mean))
}

fn estimator(cfg: &ModelConfig, weights: &Path, ctx: Option<&GpuContext>) -> Result<Estimator, String> {
    let opts = EstimatorOptions { padding: 1.0, seed: RANDOM_SEED, find_people: false, ..Default::default() };
    let est = Estimator::new(cfg, Some(weights), ctx, opts).map_err(|e| format!("cannot load: {e}"))?;
    if est.weights != WeightsSource::File(weights.to_path_buf()) {
        return Err(format!("loaded {} instead of the file", est.weights));
    }
    Ok(est)
}

/// The shipped person detector must find most fixture people (box IoU >= 0.5 with the LSP box
/// of their joints; 69% recall on the 300-image validation sample when it was trained, so 40%
/// on 20 images leaves room for sampling noise, not for a broken file), the whole pipeline
/// (detector + default pose model on the top detection) must find their joints, and the GPU
/// must find the same boxes as the CPU.
const MIN_DETECTOR_RECALL: f64 = 0.4;
const MIN_DETECTED_BOX_PCK: f64 = 25.0;
/// GPU and CPU detection boxes: corners within this fraction of the image's longer side.
const GPU_BOX_TOLERANCE: f32 = 0.01;

fn detections_of(det: &mut PersonDetector, people: &[Person]) -> Result<Vec<Vec<Detection>>, String> {
    people
        .iter()
        .map(|p| {
            let s = p.image.scale;
            det.detect_lsp_boxes(&ImageRef::from(&p.image.rgb))
                .map(|v| v.into_iter().map(|d| Detection { bbox: d.bbox.map(|x| x * s), score: d.score }).collect())
                .map_err(|e| format!("{}: {e}", p.gt.id))
        })
        .collect()
}

#[allow(clippy::neg_cmp_op_on_partial_ord)] // the negated comparisons reject NaN too
fn check_detector(path: &Path, cfg: &ModelConfig, people: &[Person], ctx: Option<&GpuContext>) -> Result<(), String> {
    let dc = DetectConfig { score_threshold: 0.05, ..Default::default() };
    let mut det = PersonDetector::new(cfg, Some(path), dc).map_err(|e| format!("cannot load: {e}"))?;
    let cpu = detections_of(&mut det, people)?;
    let gts: Vec<Vec<[f32; 4]>> = people.iter().map(|p| vec![p.gt.bbox.expect("fixture box")]).collect();
    let m = box_ap(&cpu, &gts, 0.5).map_err(|e| e.to_string())?;
    // The whole pipeline on the top detection, as `wgpose eval --boxes detected` runs it.
    let pose_path = wgpose::models::shipped_weights_path(wgpose::models::DEFAULT_MODEL);
    let (pose_cfg, _) = config_of(&pose_path)?;
    let mut est = estimator(&pose_cfg, &pose_path, None)?;
    let mapping = est.skeleton.mapping_to(&LSP14);
    let mut preds = Vec::new();
    for (p, d) in people.iter().zip(&cpu) {
        let kps = match d.first() {
            None => vec![[f32::NAN, f32::NAN, 0.0]; LSP14.len()],
            Some(top) => {
                // Detections are in original pixels, as the front door takes boxes.
                let pose = est
                    .estimate(&p.image, top.bbox)
                    .map_err(|e| format!("{}: {e}", p.gt.id))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| format!("{}: no pose", p.gt.id))?;
                mapping
                    .iter()
                    .map(|m| {
                        m.map_or([f32::NAN, f32::NAN, 0.0], |j| {
                            let k = pose.keypoints[j];
                            [k.x, k.y, k.score]
                        })
                    })
                    .collect()
            }
        };
        preds.push(kps);
    }
    let (torso, boxed) = pck_both(&preds, people)?;
    eprintln!(
        "{}: {} images, box AP@0.5 {:.1}% recall {:.1}%; {} on the top detection: PCK@0.2 torso {torso:.1}% box {boxed:.1}%",
        path.display(),
        people.len(),
        100.0 * m.ap,
        100.0 * m.recall,
        pose_cfg.name
    );
    let mut problems = Vec::new();
    if m.recall < MIN_DETECTOR_RECALL {
        problems.push(format!("recall {:.1}% < {}%", 100.0 * m.recall, 100.0 * MIN_DETECTOR_RECALL));
    }
    if boxed < MIN_DETECTED_BOX_PCK {
        problems.push(format!("box PCK@0.2 on detected boxes {boxed:.1}% < {MIN_DETECTED_BOX_PCK}%"));
    }
    if let Some(ctx) = ctx {
        let mut gdet = PersonDetector::with_gpu(cfg, Some(path), Some(ctx), dc).map_err(|e| format!("GPU: {e}"))?;
        if !gdet.on_gpu() {
            return Err("the GPU detector is not on the GPU".into());
        }
        let gpu = detections_of(&mut gdet, people)?;
        for ((p, c), g) in people.iter().zip(&cpu).zip(&gpu) {
            // Compare the confident detections (weak peaks near the threshold may flip).
            let strong = |v: &Vec<Detection>| v.iter().filter(|d| d.score >= 0.3).copied().collect::<Vec<_>>();
            let (c, g) = (strong(c), strong(g));
            let side = p.image.original_size[0].max(p.image.original_size[1]) as f32;
            if c.len() != g.len() {
                problems.push(format!("{}: {} CPU vs {} GPU detections", p.gt.id, c.len(), g.len()));
                continue;
            }
            for (a, b) in c.iter().zip(&g) {
                let d = a.bbox.iter().zip(&b.bbox).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / side;
                if !(d <= GPU_BOX_TOLERANCE) {
                    problems.push(format!("{}: GPU box {:?} vs CPU {:?}", p.gt.id, b.bbox, a.bbox));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Checks one shipped file; Err describes what failed (the caller adds the file name).
#[allow(clippy::neg_cmp_op_on_partial_ord)] // the negated comparisons reject NaN too
fn check_file(path: &Path, people: &[Person], ctx: Option<&GpuContext>, tmp: &Path) -> Result<(), String> {
    let (cfg, card) = config_of(path)?;
    if cfg.family == Family::PersonDetector {
        return check_detector(path, &cfg, people, ctx);
    }
    let mut shipped = estimator(&cfg, path, None)?;
    let cpu = predict(&mut shipped, people)?;
    let (torso, boxed) = pck_both(&cpu, people)?;

    let random_path = random_init_file(&cfg, tmp)?;
    let mut random = estimator(&cfg, &random_path, None)?;
    let random_preds = predict(&mut random, people)?;
    let _ = std::fs::remove_file(&random_path);
    let (r_torso, r_box) = pck_both(&random_preds, people)?;

    eprintln!(
        "{}: config {} ({}x{}), {} people, PCK@0.2 torso {torso:.1}% box {boxed:.1}% | random init (seed {RANDOM_SEED}) \
         torso {r_torso:.1}% box {r_box:.1}% | card metrics: {}",
        path.display(),
        cfg.name,
        cfg.input[1],
        cfg.input[2],
        people.len(),
        if card.metrics.is_empty() { "-" } else { &card.metrics }
    );
    let mut problems = Vec::new();
    if boxed < MIN_SHIPPED_BOX_PCK {
        problems.push(format!("box PCK@0.2 {boxed:.1}% < {MIN_SHIPPED_BOX_PCK}%"));
    }
    if boxed < r_box + MIN_MARGIN_OVER_RANDOM {
        problems.push(format!(
            "box PCK@0.2 {boxed:.1}% is not {MIN_MARGIN_OVER_RANDOM} points above the random initialisation's {r_box:.1}%"
        ));
    }

    if let Some(ctx) = ctx {
        let mut gpu_est = estimator(&cfg, path, Some(ctx))?;
        if !gpu_est.on_gpu() {
            return Err("the GPU estimator is not on the GPU".into());
        }
        let gpu = predict(&mut gpu_est, people)?;
        let (g_torso, g_box) = pck_both(&gpu, people)?;
        // Largest GPU-CPU distance over confident joints, as a fraction of the person box size.
        let mut worst = (0f32, String::new());
        let mut compared = 0;
        for ((p, c), g) in people.iter().zip(&cpu).zip(&gpu) {
            let size = p.gt.bbox.map_or(f32::NAN, |b| b[2].max(b[3]));
            for (j, (kc, kg)) in c.iter().zip(g).enumerate() {
                if !(kc[2] >= CONFIDENT) {
                    continue;
                }
                compared += 1;
                let d = ((kc[0] - kg[0]).powi(2) + (kc[1] - kg[1]).powi(2)).sqrt() / size;
                // A NaN distance (a non-finite GPU keypoint) is the worst and stays so.
                if !worst.0.is_nan() && !(d <= worst.0) {
                    worst = (
                        d,
                        format!(
                            "{} {}: CPU ({:.2}, {:.2}) score {:.3}, GPU ({:.2}, {:.2}) score {:.3}",
                            p.gt.id, LSP14.joints[j], kc[0], kc[1], kc[2], kg[0], kg[1], kg[2]
                        ),
                    );
                }
            }
        }
        eprintln!(
            "  GPU: PCK@0.2 torso {g_torso:.1}% box {g_box:.1}%; over {compared} joints with CPU score >= {CONFIDENT}, \
             largest GPU-CPU distance {:.4}% of the box ({})",
            100.0 * worst.0,
            worst.1
        );
        if !(worst.0 <= GPU_TOLERANCE) {
            problems.push(format!(
                "GPU keypoint {:.2}% of the box away from the CPU's (tolerance {}%): {}",
                100.0 * worst.0,
                100.0 * GPU_TOLERANCE,
                worst.1
            ));
        }
        for (what, g, c) in [("torso", g_torso, torso), ("box", g_box, boxed)] {
            if (g - c).abs() > GPU_PCK_TOLERANCE {
                problems.push(format!("GPU {what} PCK {g:.1}% vs CPU {c:.1}%"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[test]
fn shipped_weights_find_real_people_on_cpu_and_gpu() {
    let files = shipped_files();
    assert!(!files.is_empty(), "no .safetensors file in {}", wgpose::models::models_dir().display());
    let people = fixture_people();
    let ctx = common::gpu();
    let tmp = std::env::temp_dir().join(format!("wgpose-shipped-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("create a temporary folder");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| check_file(f, &people, ctx.as_ref(), &tmp).err().map(|e| format!("{}: {e}", f.display())))
        .collect();
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        failures.is_empty(),
        "{} of {} shipped weight file(s) failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
