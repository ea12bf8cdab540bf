//! The training session around the engine: augmentation geometry, reproducible batches, the
//! threaded loader, saveable optimiser state, and `wgpose train` end to end (with resume) on the
//! LSP-extended fixtures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use image::{Rgb, RgbImage};
use wgpose::autodiff::{trainable_params, Gradients, Optimizer};
use wgpose::data::lsp::{load_lsp, Visibility};
use wgpose::rng::Rng;
use wgpose::skeleton::LSP14;
use wgpose::training::dataset::{Loader, TrainSet};
use wgpose::training::optim::{Kind, Optim};
use wgpose::training::session::{epoch_batches, read_log, TrainConfig};
use wgpose::training::{make_sample, AugmentConfig, AugmentParams, Occluder, SampleShape};
use wgpose::Tensor;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lspet")
}

fn shape128() -> SampleShape {
    SampleShape { input_w: 128, input_h: 128, heatmap_w: 32, heatmap_h: 32, joints: 14, sigma: 2.0 }
}

/// A standing person's 14 joints in a 220 x 180 image (continuous coordinates).
fn person() -> Vec<[f32; 3]> {
    let p = [
        (80.5, 150.5),  // right ankle
        (82.5, 120.5),  // right knee
        (85.5, 95.5),   // right hip
        (105.5, 95.5),  // left hip
        (110.5, 122.5), // left knee
        (112.5, 152.5), // left ankle
        (60.5, 80.5),   // right wrist
        (70.5, 62.5),   // right elbow
        (82.5, 45.5),   // right shoulder
        (108.5, 45.5),  // left shoulder
        (125.5, 60.5),  // left elbow
        (135.5, 75.5),  // left wrist
        (95.5, 40.5),   // neck
        (96.5, 20.5),   // head top
    ];
    p.iter().map(|&(x, y)| [x, y, 2.0]).collect()
}

/// Black image with a white 5x5 dot centred on joint `j`.
fn dot_image(kps: &[[f32; 3]], j: usize) -> RgbImage {
    let mut img = RgbImage::new(220, 180);
    let (cx, cy) = (kps[j][0].floor() as i32, kps[j][1].floor() as i32);
    for y in cy - 2..=cy + 2 {
        for x in cx - 2..=cx + 2 {
            img.put_pixel(x as u32, y as u32, Rgb([255, 255, 255]));
        }
    }
    img
}

/// `(x, y)` of the argmax of a `w x h` plane, as a continuous pixel centre.
fn argmax(plane: &[f32], w: usize) -> (f32, f32) {
    let (i, _) = plane.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    ((i % w) as f32 + 0.5, (i / w) as f32 + 0.5)
}

#[test]
fn augmented_targets_land_on_the_warped_joint() {
    let kps = person();
    let shape = shape128();
    let perm = LSP14.flip_permutation();
    let mut rng = Rng::new(7);
    let mut flips = 0;
    for trial in 0..24 {
        // Joints spread over the body, including ones near the crop border.
        let j = [0, 5, 6, 11, 13, 12, 8, 3][trial % 8];
        let img = dot_image(&kps, j);
        let mut p = AugmentParams::draw(&mut rng, &AugmentConfig::default());
        p.flip = trial % 2 == 1;
        flips += p.flip as usize;
        let s = make_sample(&img, &kps, &LSP14, &shape, &p).unwrap();
        // Brightest input pixel (sum over channels; normalisation is monotone per channel).
        let plane = 128 * 128;
        let lum: Vec<f32> =
            (0..plane).map(|i| s.input.data[i] + s.input.data[plane + i] + s.input.data[2 * plane + i]).collect();
        let (dx, dy) = argmax(&lum, 128);
        let (hx, hy) = (dx / 4.0, dy / 4.0);
        // After a flip the joint is called by its mirrored name.
        let jj = if p.flip { perm[j] } else { j };
        assert_eq!(s.weights[jj], 1.0, "trial {trial}: joint {jj} should be supervised");
        let t = &s.target.data[jj * 32 * 32..(jj + 1) * 32 * 32];
        let (tx, ty) = argmax(t, 32);
        assert!(
            (tx - hx).abs() <= 1.0 && (ty - hy).abs() <= 1.0,
            "trial {trial} ({p:?}): target peak ({tx}, {ty}) vs warped dot ({hx}, {hy}) in heatmap px"
        );
        let k = s.keypoints_hm[jj];
        assert!(
            (k[0] - hx).abs() <= 0.75 && (k[1] - hy).abs() <= 0.75,
            "trial {trial}: keypoint ({}, {}) vs dot ({hx}, {hy})",
            k[0],
            k[1]
        );
    }
    assert_eq!(flips, 12);
}

#[test]
fn flip_mirrors_and_swaps_left_and_right() {
    let kps = person();
    let shape = shape128();
    let img = RgbImage::new(220, 180);
    let mut p = AugmentParams::identity();
    p.rotation_deg = 12.0;
    p.scale = 1.1;
    let a = make_sample(&img, &kps, &LSP14, &shape, &p).unwrap();
    p.flip = true;
    let b = make_sample(&img, &kps, &LSP14, &shape, &p).unwrap();
    let perm = LSP14.flip_permutation();
    for (j, &pj) in perm.iter().enumerate() {
        let (ka, kb) = (a.keypoints_hm[j], b.keypoints_hm[pj]);
        assert!((kb[0] - (32.0 - ka[0])).abs() < 1e-3, "joint {j}: {ka:?} vs {kb:?}");
        assert!((kb[1] - ka[1]).abs() < 1e-3, "joint {j}: {ka:?} vs {kb:?}");
    }
    // The left ankle of the flipped sample is where the mirrored right ankle was.
    assert!(b.keypoints_hm[5][0] > 16.0 || a.keypoints_hm[0][0] < 16.0);
}

#[test]
fn unlabelled_and_outside_joints_get_no_weight() {
    let mut kps = person();
    kps[6] = [0.0, 0.0, 0.0]; // unlabelled
    kps[11] = [400.0, 75.5, 2.0]; // far outside any crop of the rest (box grows, but fine)
    let shape = shape128();
    let img = RgbImage::new(220, 180);
    // Small scale so that the far wrist, even though it widens the box, may fall out; check the
    // invariant instead: weight 1 iff the mapped joint is inside the heatmap.
    let mut p = AugmentParams::identity();
    p.scale = 0.75;
    let s = make_sample(&img, &kps, &LSP14, &shape, &p).unwrap();
    assert_eq!(s.weights[6], 0.0);
    assert!(s.target.data[6 * 1024..7 * 1024].iter().all(|&v| v == 0.0));
    for (j, k) in s.keypoints_hm.iter().enumerate() {
        let inside = k[0] >= 0.0 && k[1] >= 0.0 && k[0] < 32.0 && k[1] < 32.0;
        let labelled = j != 6;
        assert_eq!(s.weights[j] == 1.0, inside && labelled, "joint {j} at {k:?}");
    }
    // A joint pushed outside by the crop: shrink the crop around the body so the head leaves it.
    let mut kps2 = person();
    kps2[13] = [96.5, -300.0, 2.0];
    let s2 = make_sample(&img, &kps2, &LSP14, &shape, &AugmentParams::identity()).unwrap();
    for (j, k) in s2.keypoints_hm.iter().enumerate() {
        let inside = k[0] >= 0.0 && k[1] >= 0.0 && k[0] < 32.0 && k[1] < 32.0;
        assert_eq!(s2.weights[j] == 1.0, inside, "joint {j} at {k:?}");
    }
}

fn fixture_set() -> TrainSet {
    let set = load_lsp(&fixtures(), None, Visibility::Auto).unwrap();
    let shape = SampleShape { input_w: 64, input_h: 64, heatmap_w: 16, heatmap_h: 16, joints: 14, sigma: 1.5 };
    TrainSet::new(set.annotations, shape, AugmentConfig::default(), 64 << 20)
}

#[test]
fn same_seed_same_batches_and_the_loader_agrees() {
    let set = fixture_set();
    assert!(set.len() >= 3, "fixtures hold {} people", set.len());
    let a = epoch_batches(&set, 42, 0, None, 1).unwrap();
    let b = epoch_batches(&set, 42, 0, None, 1).unwrap();
    assert_eq!(a.len(), set.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0.data, y.0.data);
        assert_eq!(x.1.data, y.1.data);
    }
    let c = epoch_batches(&set, 43, 0, None, 1).unwrap();
    assert!(a.iter().zip(&c).any(|(x, y)| x.0.data != y.0.data), "another seed, other batches");
    let d = epoch_batches(&set, 42, 1, None, 1).unwrap();
    assert!(a.iter().zip(&d).any(|(x, y)| x.0.data != y.0.data), "another epoch, other batches");
    // Threaded loader with two workers: same batches, same order.
    let set = Arc::new(set);
    let order = set.epoch_order(42, 0, None);
    let got: Vec<_> = Loader::start(set.clone(), 42, 0, order, 1, 2, 1).map(|b| b.unwrap()).collect();
    assert_eq!(got.len(), a.len());
    for (x, y) in got.iter().zip(&a) {
        assert_eq!(x.input.data, y.0.data);
        assert_eq!(x.target.data, y.1.data);
    }
    // An early drop of the loader does not hang.
    let order = set.epoch_order(42, 0, None);
    let mut l = Loader::start(set, 42, 0, order, 1, 2, 1);
    let _ = l.next();
    drop(l);
}

#[test]
fn saveable_optimiser_matches_the_engine_and_round_trips() {
    let cfg = wgpose::models::config("sghg-1x64-lsp").unwrap().with_input([3, 64, 64]);
    for (kind, mut reference) in [(Kind::Adam, Optimizer::adam(1e-4)), (Kind::RmsProp, Optimizer::rmsprop(1e-4))] {
        let mut g1 = cfg.build(1).unwrap();
        let mut g2 = g1.clone();
        let mut ours = Optim::new(kind, 1e-4);
        let mut rng = Rng::new(3);
        let grads: Vec<Gradients> = (0..3)
            .map(|_| Gradients {
                params: trainable_params(&g1)
                    .into_iter()
                    .map(|(n, t)| (n, Tensor { shape: t.shape.clone(), data: rng.vec(t.data.len(), -1.0, 1.0) }))
                    .collect(),
                inputs: vec![],
            })
            .collect();
        for g in &grads[..2] {
            reference.apply(&mut g1, g, 1e-3).unwrap();
            ours.apply(&mut g2, g, 1e-3).unwrap();
        }
        // Save, reload, continue: still identical.
        let dir = tempdir("optim");
        let path = dir.join("o.safetensors");
        ours.save(&path).unwrap();
        let mut back = Optim::load(&path).unwrap();
        assert_eq!(back.t, 2);
        reference.apply(&mut g1, &grads[2], 1e-3).unwrap();
        back.apply(&mut g2, &grads[2], 1e-3).unwrap();
        for ((n, a), (_, b)) in wgpose::weights::named_params(&g1).into_iter().zip(wgpose::weights::named_params(&g2)) {
            assert_eq!(a.data, b.data, "{kind:?}: parameter {n} differs");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgpose-trainer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainConfig,
}

fn train_args(out: &Path, extra: &[&str]) -> TrainConfig {
    let root = fixtures();
    let mut v: Vec<String> = ["wgpose-train", "--model", "sghg-1x64-lsp", "--format", "lsp", "--root"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(root.display().to_string());
    for s in [
        "--range",
        "1..2",
        "--val",
        "3..3",
        "--size",
        "64",
        "--batch",
        "2",
        "--limit",
        "2",
        "--lr",
        "1e-3",
        "--seed",
        "5",
        "--log-every",
        "1",
        "--quiet",
        "--out",
    ] {
        v.push(s.to_string());
    }
    v.push(out.display().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    Cli::parse_from(v).args
}

#[test]
fn session_writes_everything_and_resume_continues() {
    let dir = tempdir("session");
    // Two epochs straight.
    let full = dir.join("full");
    let mut events = Vec::new();
    let s = wgpose::training::run(&train_args(&full, &["--epochs", "2"]), &mut |e| events.push(e.clone())).unwrap();
    assert_eq!(s.epochs_done, 2);
    // The callback hears the start, every logged step, both epochs with their validation
    // score, and the final file, in that order.
    use wgpose::training::TrainEvent;
    assert!(matches!(&events[0], TrainEvent::Message(m) if m.starts_with("training sghg-1x64-lsp")), "{events:?}");
    let steps: Vec<u64> =
        events.iter().filter_map(|e| if let TrainEvent::Step { step, .. } = e { Some(*step) } else { None }).collect();
    assert_eq!(steps, vec![1, 2], "{events:?}");
    let epochs: Vec<(usize, Option<f64>)> = events
        .iter()
        .filter_map(|e| {
            if let TrainEvent::Epoch { epoch, val, .. } = e {
                Some((*epoch, val.as_ref().map(|v| v.value)))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(epochs.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(epochs[1].1, s.val_pck, "the last epoch's score is the summary's");
    assert!(matches!(events.last(), Some(TrainEvent::Message(m)) if m.starts_with("wrote ")), "{events:?}");
    assert_eq!(s.steps, 2);
    assert!(s.last_loss.is_finite());
    assert!(s.val_pck.is_some());
    for f in [
        "train_log.csv",
        "curve.png",
        "checkpoint-e001.safetensors",
        "checkpoint-e001.optim.safetensors",
        "checkpoint-e002.safetensors",
        "sghg-1x64-lsp.safetensors",
    ] {
        assert!(full.join(f).is_file(), "{f} missing");
    }
    let png = image::open(full.join("curve.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);
    let log = read_log(&full.join("train_log.csv")).unwrap();
    assert_eq!(log.iter().filter(|r| r.val_pck.is_some()).count(), 2);
    assert_eq!(log.last().unwrap().epoch, 2);
    let card = wgpose::weights::read_card(&full.join("sghg-1x64-lsp.safetensors")).unwrap();
    assert_eq!(card.epochs, Some(2));
    assert_eq!(card.input, Some([3, 64, 64]));
    assert!(card.metrics.contains("val_pck@0.2="), "{}", card.metrics);
    assert!(card.training_data.contains("LSPET images 1..2"), "{}", card.training_data);
    assert!(card.gflops.unwrap() > 0.0 && card.wall_time_s.unwrap() > 0.0);
    // The target Gaussians' sigma (the default 2), which decoding reads back.
    assert_eq!(card.heatmap_sigma().unwrap(), Some(2.0));
    // The final weights load into a fresh graph of the same config.
    let cfg = wgpose::models::config("sghg-1x64-lsp").unwrap().with_input([3, 64, 64]);
    let mut g = cfg.build(0).unwrap();
    wgpose::weights::load_into(&full.join("sghg-1x64-lsp.safetensors"), &mut g).unwrap();

    // Stop after one epoch, then resume to two: the same weights as the straight run (same
    // batches, optimiser state and running statistics restored).
    let part = dir.join("part");
    wgpose::training::run(&train_args(&part, &["--epochs", "1"]), &mut |_| {}).unwrap();
    let ck = part.join("checkpoint-e001.safetensors");
    let s2 =
        wgpose::training::run(&train_args(&part, &["--epochs", "2", "--resume", ck.to_str().unwrap()]), &mut |_| {})
            .unwrap();
    assert_eq!(s2.steps, 2);
    let log2 = read_log(&part.join("train_log.csv")).unwrap();
    let epochs: Vec<usize> = log2.iter().filter(|r| r.val_pck.is_some()).map(|r| r.epoch).collect();
    assert_eq!(epochs, vec![1, 2]);
    let mut a = cfg.build(0).unwrap();
    let mut b = cfg.build(0).unwrap();
    wgpose::weights::load_into(&full.join("sghg-1x64-lsp.safetensors"), &mut a).unwrap();
    wgpose::weights::load_into(&part.join("sghg-1x64-lsp.safetensors"), &mut b).unwrap();
    let mut worst = 0f32;
    for ((n, x), (_, y)) in wgpose::weights::named_params(&a).into_iter().zip(wgpose::weights::named_params(&b)) {
        for (u, v) in x.data.iter().zip(&y.data) {
            let d = (u - v).abs() / (1.0 + u.abs());
            assert!(d < 1e-4, "{n}: {u} vs {v}");
            worst = worst.max(d);
        }
    }
    eprintln!("resumed vs straight: max rel diff {worst:e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--ema`: the average is written beside the final weights and each checkpoint, equals the
/// ramped average of the start, the epoch-1 and the final weights (one step per epoch here),
/// and a run resumed from the epoch-1 checkpoint continues it to the same file.
#[test]
fn weight_average_is_written_and_resume_continues_it() {
    let dir = tempdir("ema");
    let full = dir.join("full");
    let mut messages = Vec::new();
    let s = wgpose::training::run(&train_args(&full, &["--epochs", "2", "--ema", "0.5"]), &mut |e| {
        if let wgpose::training::TrainEvent::Message(m) = e {
            messages.push(m.clone());
        }
    })
    .unwrap();
    assert_eq!(s.steps, 2);
    // Each epoch reports the average's validation score as a percentage of the people scored.
    let scores: Vec<&String> =
        messages.iter().filter(|m| m.contains("the weight average (decay 0.5) scores")).collect();
    assert_eq!(scores.len(), 2, "{messages:?}");
    assert!(scores.iter().all(|m| m.contains("PCK@0.2 ") && m.ends_with("% (1 people)")), "{scores:?}");
    let ema_file = full.join("sghg-1x64-lsp.ema.safetensors");
    assert_eq!(s.ema_weights.as_deref(), Some(ema_file.as_path()));
    assert!(full.join("checkpoint-e001.ema.safetensors").is_file());
    let card = wgpose::weights::read_card(&ema_file).unwrap();
    assert_eq!(card.extra.get("ema_updates").map(String::as_str), Some("2"));
    assert!(card.metrics.contains("val_pck@0.2="), "{}", card.metrics);
    let cfg = wgpose::models::config("sghg-1x64-lsp").unwrap().with_input([3, 64, 64]);
    let load = |p: &Path| {
        let mut g = cfg.build(0).unwrap();
        wgpose::weights::load_into(p, &mut g).unwrap();
        wgpose::weights::named_params(&g).into_iter().map(|(n, t)| (n, t.data.clone())).collect::<Vec<_>>()
    };
    // The start: the seeded initialisation the run builds (`--seed 5`).
    let start: Vec<Vec<f32>> =
        wgpose::weights::named_params(&cfg.build(5).unwrap()).into_iter().map(|(_, t)| t.data.clone()).collect();
    let (w1, w2, avg) = (
        load(&full.join("checkpoint-e001.safetensors")),
        load(&full.join("sghg-1x64-lsp.safetensors")),
        load(&ema_file),
    );
    // The ramp: d_0 = min(0.5, 1/10), d_1 = min(0.5, 2/11).
    let (d0, d1) = (0.1f64, 2.0f64 / 11.0);
    let mut moved = false;
    for (i, (n, a)) in avg.iter().enumerate() {
        for (k, &a) in a.iter().enumerate() {
            let want = d1 * (d0 * start[i][k] as f64 + (1.0 - d0) * w1[i].1[k] as f64) + (1.0 - d1) * w2[i].1[k] as f64;
            assert!((a as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "{n}[{k}]: {a} vs {want}");
            moved |= (a - w2[i].1[k]).abs() > 1e-6;
        }
    }
    assert!(moved, "the average equals the final weights");

    let part = dir.join("part");
    wgpose::training::run(&train_args(&part, &["--epochs", "1", "--ema", "0.5"]), &mut |_| {}).unwrap();
    let ck = part.join("checkpoint-e001.safetensors");
    wgpose::training::run(
        &train_args(&part, &["--epochs", "2", "--ema", "0.5", "--resume", ck.to_str().unwrap()]),
        &mut |_| {},
    )
    .unwrap();
    for ((n, a), (_, b)) in avg.iter().zip(load(&part.join("sghg-1x64-lsp.ema.safetensors"))) {
        for (&u, &v) in a.iter().zip(&b) {
            assert!((u - v).abs() / (1.0 + u.abs()) < 1e-4, "{n}: {u} vs {v}");
        }
    }
    // A decay outside (0, 1) is refused before anything is written.
    let bad = dir.join("bad");
    assert!(wgpose::training::run(&train_args(&bad, &["--ema", "1"]), &mut |_| {}).is_err());
    assert!(!bad.join("train_log.csv").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cosine_schedule_warms_up_then_decays_to_the_floor() {
    use wgpose::training::session::schedule_lr;
    let a = Cli::parse_from([
        "t",
        "--model",
        "sghg-1x64-lsp",
        "--root",
        "x",
        "--lr",
        "1e-3",
        "--lr-min",
        "1e-5",
        "--schedule",
        "cosine",
        "--warmup",
        "10",
    ])
    .args;
    // Warm-up: linear from lr/10 at step 0 to the cosine value at step 9.
    assert!((schedule_lr(&a, 0, 0, 1000) - 1e-4).abs() < 1e-9);
    assert!(schedule_lr(&a, 0, 5, 1000) < schedule_lr(&a, 0, 9, 1000));
    // Half way: the mean of the two ends; at the end: the floor.
    assert!((schedule_lr(&a, 0, 500, 1000) - 5.05e-4).abs() < 1e-8);
    assert!((schedule_lr(&a, 3, 1000, 1000) - 1e-5).abs() < 1e-9);
    // Monotone after the warm-up.
    let lrs: Vec<f32> = (10..1000).map(|s| schedule_lr(&a, 0, s, 1000)).collect();
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
}

#[test]
fn box_shift_moves_the_crop_and_half_body_frames_one_half() {
    use wgpose::training::augment::{half_body_keypoints, person_crop, person_crop_jittered};
    let kps = person();
    let shape = shape128();
    let c0 = person_crop(&kps, &shape, 0.0, 1.0, false).unwrap();
    let c1 = person_crop_jittered(&kps, &shape, 0.0, 1.0, false, [0.1, -0.2]).unwrap();
    // The same image point moves left/down in the input when the box moves right/up.
    let (u0, v0) = c0.map_to_input(96.0, 90.0);
    let (u1, v1) = c1.map_to_input(96.0, 90.0);
    assert!(u1 < u0 - 1.0 && v1 > v0 + 1.0, "({u0}, {v0}) -> ({u1}, {v1})");
    // Upper half: arms, shoulders, neck, head only; lower: hips, knees, ankles only.
    let up = half_body_keypoints(&kps, &LSP14, true).unwrap();
    let low = half_body_keypoints(&kps, &LSP14, false).unwrap();
    for j in 0..14 {
        let lower_joint = j < 6;
        assert_eq!(up[j][2] > 0.0, !lower_joint, "joint {j}");
        assert_eq!(low[j][2] > 0.0, lower_joint, "joint {j}");
    }
    // Too few labelled joints: no half-body crop.
    let mut few = kps.clone();
    few.iter_mut().skip(7).for_each(|k| k[2] = 0.0);
    assert!(half_body_keypoints(&few, &LSP14, true).is_none());
}

/// The person detector trains through the same session as the pose networks (its own targets,
/// loss and box-AP validation): a 3-joint output must not be refused as "not an LSP model".
#[test]
fn person_detector_trains_and_validates_box_ap() {
    let dir = tempdir("detector");
    let coco = fixtures().join("../coco");
    let extra = format!("{}:{}", coco.join("test_coco.json").display(), coco.display());
    let mut a = train_args(&dir, &["--epochs", "1", "--extra-coco", &extra, "--extra-repeat", "2"]);
    a.model = "person-detector-r18w32".into();
    let s = wgpose::training::run(&a, &mut |_| {}).unwrap();
    assert_eq!(s.epochs_done, 1);
    assert!(s.last_loss.is_finite());
    assert!(s.val_pck.is_some_and(|ap| (0.0..=100.0).contains(&ap)), "{:?}", s.val_pck);
    let card = wgpose::weights::read_card(&dir.join("person-detector-r18w32.safetensors")).unwrap();
    assert!(card.metrics.contains("val_box_ap@0.5="), "{}", card.metrics);
    assert!(card.training_data.contains("+ 1 COCO images x2 (3 people)"), "{}", card.training_data);
    // COCO boxes are for the detector; a pose network refuses them before training.
    let pose = train_args(&dir.join("pose"), &["--extra-coco", &extra]);
    let err = wgpose::training::run(&pose, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("person detector only"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--teacher`: weight 0 trains exactly as without a teacher; a teacher at weight 0.5 changes
/// the targets (so the loss), and the card says who taught.
#[test]
fn distillation_blends_the_teachers_heatmaps_into_the_targets() {
    let dir = tempdir("distill");
    // The teacher: a two-epoch run of the same 64x64 config.
    let teacher_run = dir.join("teacher");
    wgpose::training::run(&train_args(&teacher_run, &["--epochs", "2"]), &mut |_| {}).unwrap();
    let teacher = teacher_run.join("sghg-1x64-lsp.safetensors");
    let t = teacher.to_str().unwrap();
    let plain = wgpose::training::run(&train_args(&dir.join("plain"), &["--epochs", "1"]), &mut |_| {}).unwrap();
    let zero = wgpose::training::run(
        &train_args(&dir.join("zero"), &["--epochs", "1", "--teacher", t, "--teacher-weight", "0"]),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(plain.last_loss, zero.last_loss, "teacher weight 0 must leave the targets alone");
    let half =
        wgpose::training::run(&train_args(&dir.join("half"), &["--epochs", "1", "--teacher", t]), &mut |_| {}).unwrap();
    assert!(half.last_loss.is_finite());
    assert_ne!(plain.last_loss, half.last_loss, "the teacher did not reach the targets");
    let card = wgpose::weights::read_card(&half.final_weights).unwrap();
    assert!(card.training_data.contains("distilled from sghg-1x64-lsp"), "{}", card.training_data);
    assert!(card.training_data.contains("run at 64x64"), "{}", card.training_data);
    // A teacher trained at another size (the shipped hourglass, 192x128) runs at the student's.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sghg-1x64-lsp.safetensors");
    let resized = wgpose::training::run(
        &train_args(&dir.join("resized"), &["--epochs", "1", "--teacher", shipped.to_str().unwrap()]),
        &mut |_| {},
    )
    .unwrap();
    assert!(resized.last_loss.is_finite());
    assert_ne!(resized.last_loss, half.last_loss, "another teacher gives other targets");
    let card = wgpose::weights::read_card(&resized.final_weights).unwrap();
    assert!(card.training_data.contains("run at 64x64"), "{}", card.training_data);
    let _ = std::fs::remove_dir_all(dir);
}

/// Occlusion: off, it draws nothing (older runs keep their batches); on, the rectangle is one
/// flat colour inside the crop, the rest of the input and every target are untouched.
#[test]
fn occluder_paints_a_flat_rectangle_and_leaves_the_targets() {
    let off = AugmentConfig::default();
    let on = AugmentConfig { occlusion_prob: 1.0, ..AugmentConfig::default() };
    let (mut r0, mut r1) = (Rng::new(3), Rng::new(3));
    let p0 = AugmentParams::draw(&mut r0, &off);
    assert!(p0.occluder.is_none());
    let p1 = AugmentParams::draw(&mut r1, &on);
    // The same draws up to the occluder's, which come last.
    assert_eq!(AugmentParams { occluder: None, ..p1 }, p0);
    let o = p1.occluder.expect("probability 1 draws an occluder");
    let [l, t, w, h] = o.rect;
    assert!(
        (0.1..=0.4).contains(&w) && (0.1..=0.4).contains(&h) && l >= 0.0 && t >= 0.0 && l + w <= 1.0 && t + h <= 1.0
    );

    let kps = person();
    let img = dot_image(&kps, 12);
    let shape = shape128();
    let plain = make_sample(&img, &kps, &LSP14, &shape, &AugmentParams::identity()).unwrap();
    let occ = Occluder { rect: [0.25, 0.5, 0.3, 0.2], colour: [1.0, 0.0, 0.5] };
    let covered =
        make_sample(&img, &kps, &LSP14, &shape, &AugmentParams { occluder: Some(occ), ..AugmentParams::identity() })
            .unwrap();
    assert_eq!(plain.target.data, covered.target.data);
    assert_eq!(plain.weights, covered.weights);
    let (x0, x1, y0, y1) = (32, 70, 64, 90); // 0.25..0.55 x 128, 0.5..0.7 x 128 (rounded)
    let plane = 128 * 128;
    let mut changed_outside = 0;
    for c in 0..3 {
        let inside_value = covered.input.data[c * plane + y0 * 128 + x0];
        for y in 0..128 {
            for x in 0..128 {
                let i = c * plane + y * 128 + x;
                if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
                    assert_eq!(covered.input.data[i], inside_value, "channel {c} at ({x}, {y}) is not flat");
                } else if covered.input.data[i] != plain.input.data[i] {
                    changed_outside += 1;
                }
            }
        }
    }
    assert_eq!(changed_outside, 0);
    // Red at 1.0, green at 0.0 after ImageNet normalisation.
    assert!((covered.input.data[y0 * 128 + x0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
    assert!((covered.input.data[plane + y0 * 128 + x0] - (0.0 - 0.456) / 0.224).abs() < 1e-5);
}

/// `--rotation` and `--scale-jitter` reach the crops: at their defaults the run is the default
/// run, set otherwise the batches (so the loss) change and the card records the ranges.
#[test]
fn rotation_and_scale_flags_set_the_augmentation() {
    let dir = tempdir("geometry");
    let plain = wgpose::training::run(&train_args(&dir.join("plain"), &["--epochs", "1"]), &mut |_| {}).unwrap();
    let same = wgpose::training::run(
        &train_args(&dir.join("same"), &["--epochs", "1", "--rotation", "30", "--scale-jitter", "0.25"]),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(plain.last_loss, same.last_loss, "the defaults must draw the default crops");
    let wide = wgpose::training::run(
        &train_args(&dir.join("wide"), &["--epochs", "1", "--rotation", "45", "--scale-jitter", "0.35"]),
        &mut |_| {},
    )
    .unwrap();
    assert_ne!(plain.last_loss, wide.last_loss, "wider ranges must change the crops");
    let card = wgpose::weights::read_card(&wide.final_weights).unwrap();
    assert!(card.training_data.contains("rotation +-45 deg, scale 0.65-1.35"), "{}", card.training_data);
    let _ = std::fs::remove_dir_all(dir);
}
