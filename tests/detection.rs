//! The person detector's parts: letterbox geometry, target construction, decoding (peaks,
//! sub-pixel centre, sizes, NMS, the cap on people), box AP, and its loss's gradient.

use wgpose::autodiff::detection_loss;
use wgpose::pipeline::detect::{box_ap, box_iou, decode_detections, letterbox, nms, DetectConfig, Detection};
use wgpose::rng::Rng;
use wgpose::training::detection::{boxes_to_input, detection_targets, DetectShape};
use wgpose::Tensor;

fn shape() -> DetectShape {
    DetectShape { input_w: 128, input_h: 128, map_w: 32, map_h: 32 }
}

#[test]
fn letterbox_fits_the_longer_side_and_centres_the_image() {
    let c = letterbox(300, 150, 128, 128).unwrap();
    // The image's corners land on the input's left/right edges, vertically centred.
    let (x0, y0) = c.map_to_input(0.0, 0.0);
    let (x1, y1) = c.map_to_input(300.0, 150.0);
    assert!((x0 - 0.0).abs() < 1e-3 && (x1 - 128.0).abs() < 1e-3, "{x0} {x1}");
    assert!((y0 - 32.0).abs() < 1e-3 && (y1 - 96.0).abs() < 1e-3, "{y0} {y1}");
    assert!(letterbox(0, 10, 128, 128).is_err());
}

/// Targets treated as the network's probabilities decode back to the boxes they were built from.
#[test]
fn targets_decode_back_to_their_boxes_through_the_letterbox() {
    let s = shape();
    let mut rng = Rng::new(5);
    for trial in 0..20 {
        let (iw, ih) = (200 + rng.below(400), 150 + rng.below(400));
        let crop = letterbox(iw, ih, s.input_w, s.input_h).unwrap();
        // One to three people of sensible sizes, far enough apart not to merge.
        let n = 1 + trial % 3;
        let mut boxes = Vec::new();
        for k in 0..n {
            let w = (0.15 + 0.15 * rng.uniform()) * iw as f32;
            let h = (0.3 + 0.3 * rng.uniform()) * ih as f32;
            let x = (k as f32 + 0.1) * iw as f32 / n as f32;
            let y = rng.uniform() * (ih as f32 - h);
            boxes.push([x, y, w, h]);
        }
        let t = detection_targets(&boxes_to_input(&boxes, &crop), &s);
        let maps = &t.data[..3 * 32 * 32];
        let dets = decode_detections(maps, 32, 32, &crop, &DetectConfig::default()).unwrap();
        assert_eq!(dets.len(), boxes.len(), "trial {trial}: {dets:?} vs {boxes:?}");
        for b in &boxes {
            let best = dets.iter().map(|d| box_iou(d.bbox, *b)).fold(0.0, f32::max);
            assert!(best > 0.9, "trial {trial}: box {b:?} best IoU {best} among {dets:?}");
        }
    }
}

#[test]
fn maps_without_peaks_or_with_nan_give_no_people() {
    let crop = letterbox(100, 100, 128, 128).unwrap();
    let zero = vec![0.0f32; 3 * 32 * 32];
    assert!(decode_detections(&zero, 32, 32, &crop, &DetectConfig::default()).unwrap().is_empty());
    let nan = vec![f32::NAN; 3 * 32 * 32];
    assert!(decode_detections(&nan, 32, 32, &crop, &DetectConfig::default()).unwrap().is_empty());
    assert!(decode_detections(&zero[..10], 32, 32, &crop, &DetectConfig::default()).is_err());
    let bad = DetectConfig { score_threshold: f32::NAN, ..Default::default() };
    assert!(decode_detections(&zero, 32, 32, &crop, &bad).is_err());
}

#[test]
fn many_people_are_capped_highest_score_first() {
    let crop = letterbox(128, 128, 128, 128).unwrap();
    // 25 separated peaks with distinct heights.
    let mut maps = vec![0.0f32; 3 * 32 * 32];
    let mut k = 0;
    for gy in 0..5 {
        for gx in 0..5 {
            let p = (3 + 6 * gy) * 32 + 3 + 6 * gx;
            maps[p] = 0.3 + 0.02 * k as f32;
            maps[1024 + p] = 0.05;
            maps[2048 + p] = 0.08;
            k += 1;
        }
    }
    let cfg = DetectConfig { max_people: 7, ..Default::default() };
    let dets = decode_detections(&maps, 32, 32, &crop, &cfg).unwrap();
    assert_eq!(dets.len(), 7);
    assert!(dets.windows(2).all(|w| w[0].score >= w[1].score));
    assert!((dets[0].score - (0.3 + 0.02 * 24.0)).abs() < 1e-6);
}

#[test]
fn nms_keeps_the_best_of_overlapping_boxes() {
    let d = |x: f32, s: f32| Detection { bbox: [x, 0.0, 10.0, 10.0], score: s };
    let kept = nms(vec![d(0.0, 0.5), d(1.0, 0.9), d(30.0, 0.4)], 0.5, 10);
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].score, 0.9);
    assert_eq!(kept[1].score, 0.4);
    assert!((box_iou([0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 10.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
    assert_eq!(box_iou([0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 1.0, 1.0]), 0.0);
}

#[test]
fn box_ap_on_hand_computed_cases() {
    let g = [0.0, 0.0, 10.0, 10.0];
    let hit = |s: f32| Detection { bbox: g, score: s };
    let miss = |s: f32| Detection { bbox: [50.0, 50.0, 10.0, 10.0], score: s };
    // Perfect: AP 1, recall 1.
    let m = box_ap(&[vec![hit(0.9)], vec![hit(0.8)]], &[vec![g], vec![g]], 0.5).unwrap();
    assert!((m.ap - 1.0).abs() < 1e-12 && (m.recall - 1.0).abs() < 1e-12);
    // A false positive ranked first: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> AP = 0.5*2/3 + 0.5*2/3.
    let m = box_ap(&[vec![miss(0.95), hit(0.9)], vec![hit(0.8)]], &[vec![g], vec![g]], 0.5).unwrap();
    assert!((m.ap - 2.0 / 3.0).abs() < 1e-9, "{m:?}");
    // A duplicate is a false positive; a missed person lowers recall.
    let m = box_ap(&[vec![hit(0.9), hit(0.85)], vec![]], &[vec![g], vec![g]], 0.5).unwrap();
    assert!((m.recall - 0.5).abs() < 1e-12 && (m.ap - 0.5).abs() < 1e-12, "{m:?}");
    assert!(box_ap(&[vec![]], &[], 0.5).is_err());
}

/// The loss's gradient against central differences in f64 on random logits and targets.
#[test]
fn detection_loss_gradient_matches_finite_differences() {
    let s = DetectShape { input_w: 24, input_h: 20, map_w: 6, map_h: 5 };
    let mut rng = Rng::new(9);
    let t1 = detection_targets(&[[3.0, 2.0, 10.0, 14.0]], &s);
    let t2 = detection_targets(&[[12.0, 4.0, 8.0, 12.0], [1.0, 1.0, 6.0, 6.0]], &s);
    let target = Tensor { shape: vec![2, 4, 5, 6], data: [t1.data, t2.data].concat() };
    assert!(target.data[3 * 30..4 * 30].contains(&1.0), "some size cell is supervised");
    let z = Tensor { shape: vec![2, 3, 5, 6], data: (0..180).map(|_| rng.range(-3.0, 3.0)).collect() };
    let (_, g) = detection_loss(&z, &target).unwrap();
    let h = 1e-2f32;
    let mut worst = 0.0f64;
    for i in (0..180).step_by(7) {
        let mut zp = z.clone();
        zp.data[i] += h;
        let mut zm = z.clone();
        zm.data[i] -= h;
        let fd = (detection_loss(&zp, &target).unwrap().0 as f64 - detection_loss(&zm, &target).unwrap().0 as f64)
            / (2.0 * h as f64);
        worst = worst.max((fd - g.data[i] as f64).abs());
    }
    // f32 loss values of ~0.5 differenced over 2e-2: a few 1e-6 of rounding.
    assert!(worst < 2e-5, "worst |fd - analytic| = {worst}");
    assert!(detection_loss(&z, &Tensor::zeros(vec![2, 3, 5, 6])).is_err());
}

/// COCO people become detector boxes: the LSP box of their joints when at least 4 are labelled
/// (as LSPET's boxes are made), COCO's own box otherwise; images missing on disk are skipped.
#[test]
fn coco_people_become_detection_boxes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coco");
    let ds = wgpose::data::coco::load_coco(&dir.join("test_coco.json"), &dir).unwrap();
    let images = wgpose::training::detection::coco_detection_images(&ds);
    // Only 000000040083.jpg of the file's four images is in the fixtures; it has 3 people.
    assert_eq!(images.len(), 1);
    assert!(images[0].image.ends_with("000000040083.jpg"));
    assert_eq!(images[0].boxes.len(), 3);
    for a in ds.annotations.iter().filter(|a| a.image_id == 40083) {
        let kps: Vec<[f32; 3]> = a.keypoints.chunks_exact(3).map(|k| [k[0] as f32, k[1] as f32, k[2] as f32]).collect();
        let want = if a.num_keypoints >= 4 {
            wgpose::data::box_from_keypoints(&kps, wgpose::data::LSP_BOX_ENLARGE).unwrap()
        } else {
            a.bbox.map(|v| v as f32)
        };
        assert!(images[0].boxes.contains(&want), "annotation {}: {want:?} not in {:?}", a.id, images[0].boxes);
    }
}
