//! Metrics on hand-made cases and against numbers computed by pycocotools 2.0.11 (numpy 2.4):
//! PCK / PCKh, OKS, and COCO keypoint AP/AR. `scripts/coco_eval_check.py` runs the wider
//! comparison with pycocotools on the coco-mini and coco-fixtures data.

use std::path::{Path, PathBuf};

use wgpose::data::coco::{CocoAnnotation, CocoCategory, CocoImage};
use wgpose::data::{load_coco, read_coco_results, Annotation, CocoDataset, CocoResult, Extra};
use wgpose::metrics::{coco_keypoint_eval, coco_sigmas, oks, oks_annotation, pck, pckh, PckNorm};
use wgpose::skeleton::{LSP14, MPII16};
use wgpose::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// An LSP person with left shoulder (9) at (0, 0) and right hip (2) at (30, 40): torso = 50.
fn lsp_person() -> Annotation {
    let mut kps: Vec<[f32; 3]> = (0..14).map(|j| [100.0 + 7.0 * j as f32, 50.0 + 3.0 * j as f32, 2.0]).collect();
    kps[9] = [0.0, 0.0, 2.0];
    kps[2] = [30.0, 40.0, 1.0];
    Annotation {
        image: PathBuf::from("im00001.jpg"),
        keypoints: kps,
        bbox: Some([0.0, 0.0, 100.0, 60.0]),
        skeleton: &LSP14,
        id: "im00001".into(),
        extra: Extra::Lsp { number: 1 },
    }
}

fn exact(a: &Annotation) -> Vec<[f32; 2]> {
    a.keypoints.iter().map(|k| [k[0], k[1]]).collect()
}

#[test]
fn pck_torso_exact_prediction_is_100_percent() {
    let g = vec![lsp_person(), lsp_person()];
    let p: Vec<Vec<[f32; 2]>> = g.iter().map(exact).collect();
    let r = pck(&p, &g, 0.2, PckNorm::Torso).unwrap();
    assert_eq!(r.mean, 1.0);
    assert_eq!(r.total, vec![2; 14]);
    assert!(r.per_joint.iter().all(|&v| v == Some(1.0)));
    assert_eq!((r.persons, r.skipped), (2, 0));
    // Predictions with a score column are accepted too.
    let p3: Vec<Vec<[f32; 3]>> = g.iter().map(|a| a.keypoints.clone()).collect();
    assert_eq!(pck(&p3, &g, 0.2, PckNorm::Torso).unwrap().mean, 1.0);
}

#[test]
fn pck_threshold_is_inclusive_and_alpha_torso_plus_eps_fails() {
    let g = vec![lsp_person()];
    // alpha * torso = 0.2 * 50 = 10 px.
    let mut p = exact(&g[0]);
    p[0][0] += 10.0;
    let r = pck(&[p.clone()], &g, 0.2, PckNorm::Torso).unwrap();
    assert_eq!(r.correct[0], 1, "a shift of exactly alpha * torso is within");
    p[0][0] += 0.001;
    let r = pck(&[p.clone()], &g, 0.2, PckNorm::Torso).unwrap();
    assert_eq!((r.correct[0], r.total[0]), (0, 1));
    assert_eq!(r.per_joint[0], Some(0.0));
    assert!((r.mean - 13.0 / 14.0).abs() < 1e-12);
    // Diagonal shift: (6, 8) is 10 px, in; (6, 8.01) is out.
    let mut p = exact(&g[0]);
    p[5][0] += 6.0;
    p[5][1] += 8.0;
    assert_eq!(pck(&[p.clone()], &g, 0.2, PckNorm::Torso).unwrap().correct[5], 1);
    p[5][1] += 0.01;
    assert_eq!(pck(&[p], &g, 0.2, PckNorm::Torso).unwrap().correct[5], 0);
}

#[test]
fn pck_counts_only_labelled_joints_and_skips_people_without_a_size() {
    let mut a = lsp_person();
    a.keypoints[4] = [0.0, 0.0, 0.0];
    let mut p = exact(&a);
    p[4] = [1e6, -1e6];
    let mut b = lsp_person();
    b.keypoints[2] = [0.0, 0.0, 0.0]; // no right hip: no torso
    let pb = vec![[0.0f32; 2]; 14];
    let r = pck(&[p, pb], &[a, b], 0.2, PckNorm::Torso).unwrap();
    assert_eq!((r.persons, r.skipped), (1, 1));
    assert_eq!(r.total[4], 0);
    assert_eq!(r.per_joint[4], None);
    assert_eq!(r.mean, 1.0);
    assert_eq!(r.total.iter().sum::<usize>(), 13);
    // Non-finite predictions are wrong, not errors.
    let a = lsp_person();
    let mut p = exact(&a);
    p[3] = [f32::NAN, 0.0];
    let r = pck(&[p], &[a], 0.2, PckNorm::Torso).unwrap();
    assert_eq!(r.correct[3], 0);
}

#[test]
fn pck_errors() {
    let g = vec![lsp_person()];
    let p = vec![exact(&g[0])];
    assert!(matches!(pck(&p, &[], 0.2, PckNorm::Torso), Err(Error::Input(_))));
    assert!(matches!(pck(&[vec![[0.0f32; 2]; 13]], &g, 0.2, PckNorm::Torso), Err(Error::Input(_))));
    assert!(matches!(pck(&p, &g, 0.0, PckNorm::Torso), Err(Error::Input(_))));
    assert!(matches!(pck(&p, &g, f64::NAN, PckNorm::Torso), Err(Error::Input(_))));
    // LSP has no head size: everyone skipped, nothing to count.
    assert!(matches!(pck(&p, &g, 0.5, PckNorm::Head), Err(Error::Input(_))));
    let empty: Vec<Vec<[f32; 2]>> = Vec::new();
    assert!(matches!(pck(&empty, &[], 0.2, PckNorm::Torso), Err(Error::Input(_))));
}

#[test]
fn pck_box_uses_the_larger_box_side() {
    let g = vec![lsp_person()]; // box 100 x 60
    let mut p = exact(&g[0]);
    p[7][1] += 10.0;
    p[8][1] += 10.5;
    let r = pck(&[p], &g, 0.1, PckNorm::Box).unwrap();
    assert_eq!((r.correct[7], r.correct[8]), (1, 0));
}

#[test]
fn pckh_with_mpii_head_size() {
    let kps: Vec<[f32; 3]> = (0..16).map(|j| [10.0 * j as f32, 5.0 * j as f32, 2.0]).collect();
    let g = vec![Annotation {
        image: PathBuf::from("a.jpg"),
        keypoints: kps,
        bbox: None,
        skeleton: &MPII16,
        id: "a.jpg#0".into(),
        extra: Extra::Mpii { center: [0.0, 0.0], scale: 1.0, head_size: Some(20.0) },
    }];
    let mut p = exact(&g[0]);
    p[6][0] += 10.0; // pelvis: exactly 0.5 * head, in
    p[7][0] += 10.5; // thorax: out
    p[10][1] -= 11.0; // right wrist: out
    let r = pckh(&[p], &g, 0.5).unwrap();
    assert_eq!((r.correct[6], r.correct[7], r.correct[10]), (1, 0, 0));
    assert!((r.mean - 14.0 / 16.0).abs() < 1e-12);
    // MPII's "Mean" leaves out pelvis and thorax.
    assert!((r.mean_excluding(&[6, 7]).unwrap() - 13.0 / 14.0).abs() < 1e-12);
    assert_eq!(r.mean_over(&[6, 7]), Some(0.5));
}

// ---------------------------------------------------------------------------------------------
// OKS

#[test]
fn oks_of_a_perfect_prediction_is_one() {
    let dir = fixtures().join("coco");
    let ds = load_coco(&dir.join("test_coco.json"), &dir).unwrap();
    for a in ds.persons() {
        let pred: Vec<[f32; 3]> = a.keypoints.iter().map(|k| [k[0], k[1], 1.0]).collect();
        assert_eq!(oks_annotation(&pred, &a).unwrap(), 1.0);
        let mut off = pred.clone();
        off[0][0] += 5.0;
        let o = oks_annotation(&off, &a).unwrap();
        assert!(o < 1.0 && o > 0.5, "{o}");
    }
    assert!(oks_annotation(&[[0.0; 3]; 14], &ds.persons()[0]).is_err());
}

/// The case below was evaluated with pycocotools 2.0.11: a ground truth with 4 labelled joints
/// (nose, eyes, occluded left shoulder; area 5000, bbox [80, 30, 60, 90]) and one without
/// keypoints (area 1200, bbox [300, 200, 30, 40]); `COCOeval.ious[(1, 1)]` printed
/// [[0.50929331472784711, 4.2237715342392336e-119], [7.6213302451099582e-120, 0.076926706041872114]].
fn oks_case() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut g = vec![0.0; 51];
    g[..9].copy_from_slice(&[100.0, 50.0, 2.0, 104.0, 46.0, 2.0, 96.0, 46.0, 2.0]);
    g[15..18].copy_from_slice(&[120.0, 80.0, 1.0]);
    let mut d1 = Vec::new();
    for j in 0..17 {
        let (x, y) = match j {
            0..=2 => (g[3 * j] + 3.0, g[3 * j + 1] - 4.0),
            5 => (125.0, 80.0),
            _ => (110.0 + j as f64, 60.0 + j as f64),
        };
        d1.extend_from_slice(&[x, y, 0.9]);
    }
    let d2: Vec<f64> = (0..17).flat_map(|j| [250.0 + 5.0 * j as f64, 190.0 + 20.0 * j as f64, 0.5]).collect();
    (g, d1, d2)
}

#[test]
fn oks_matches_pycocotools_including_the_no_keypoint_box_rule() {
    let (g, d1, d2) = oks_case();
    let s = coco_sigmas();
    let g2 = vec![0.0; 51];
    let (b1, b2) = ([80.0, 30.0, 60.0, 90.0], [300.0, 200.0, 30.0, 40.0]);
    let rel = |a: f64, b: f64| (a - b).abs() <= 1e-14 * b.abs();
    assert!(rel(oks(&d1, &g, b1, 5000.0, &s).unwrap(), 0.5092933147278471));
    assert!(rel(oks(&d2, &g, b1, 5000.0, &s).unwrap(), 7.621330245109958e-120));
    assert!(rel(oks(&d1, &g2, b2, 1200.0, &s).unwrap(), 4.2237715342392336e-119));
    assert!(rel(oks(&d2, &g2, b2, 1200.0, &s).unwrap(), 0.07692670604187211));
    assert!(oks(&d1[..50], &g, b1, 5000.0, &s).is_err());
}

#[test]
fn coco_ap_tiny_case_matches_pycocotools() {
    // Same case as above as a whole evaluation; pycocotools' stats were
    // [0.09999999999999999, 0.9999999999999999, 0.0, 0.09999999999999999, -1.0, 0.1, 1.0, 0.0, 0.1, -1.0].
    let (g, d1, d2) = oks_case();
    let ann = |id, kps: Vec<f64>, nk, area, bbox| CocoAnnotation {
        id,
        image_id: 1,
        category_id: 1,
        keypoints: kps,
        num_keypoints: nk,
        area,
        bbox,
        iscrowd: false,
    };
    let ds = CocoDataset {
        json: PathBuf::from("tiny.json"),
        image_dir: PathBuf::from("."),
        images: vec![CocoImage {
            id: 1,
            file_name: "a.jpg".into(),
            width: 640,
            height: 480,
            path: "a.jpg".into(),
            exists: false,
        }],
        annotations: vec![
            ann(1, g, 4, 5000.0, [80.0, 30.0, 60.0, 90.0]),
            ann(2, vec![0.0; 51], 0, 1200.0, [300.0, 200.0, 30.0, 40.0]),
        ],
        categories: vec![CocoCategory { id: 1, name: "person".into(), keypoints: vec![] }],
        missing_images: vec![],
    };
    let res = vec![
        CocoResult { image_id: 1, category_id: 1, keypoints: d1, score: 0.9, bbox: None },
        CocoResult { image_id: 1, category_id: 1, keypoints: d2, score: 0.8, bbox: None },
    ];
    let s = coco_keypoint_eval(&ds, &res).unwrap().as_array();
    let want = [0.09999999999999999, 0.9999999999999999, 0.0, 0.09999999999999999, -1.0, 0.1, 1.0, 0.0, 0.1, -1.0];
    for (i, (a, b)) in s.iter().zip(want).enumerate() {
        assert!((a - b).abs() < 1e-12, "stat {i}: {a} vs pycocotools {b}");
    }
    // Issue 15: a negative area used to give every metric -1 without an error.
    let mut bad = ds.clone();
    bad.annotations[0].area = -5000.0;
    let e = coco_keypoint_eval(&bad, &res).unwrap_err().to_string();
    assert!(e.contains("annotation 1") && e.contains("-5000"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// COCO AP

fn fixture_gt() -> CocoDataset {
    let dir = fixtures().join("coco");
    load_coco(&dir.join("test_coco.json"), &dir).unwrap()
}

#[test]
fn coco_ap_of_perfect_predictions_is_one() {
    let gt = fixture_gt();
    let res: Vec<CocoResult> = gt
        .annotations
        .iter()
        .filter(|a| !a.iscrowd && a.num_keypoints > 0)
        .map(|a| CocoResult {
            image_id: a.image_id,
            category_id: 1,
            keypoints: a.keypoints.chunks(3).flat_map(|k| [k[0], k[1], 1.0]).collect(),
            score: 1.0,
            bbox: None,
        })
        .collect();
    let s = coco_keypoint_eval(&gt, &res).unwrap();
    assert_eq!(s.as_array(), [1.0; 10]);
}

/// Results files made by `scripts/coco_eval_check.py` (sets `drop+fp` and `ignored+maxdets` on
/// coco-fixtures, seeds 7 and 17) and evaluated with pycocotools 2.0.11 / numpy 2.4.6:
/// `COCOeval(gt, gt.loadRes(file), 'keypoints')`, `.evaluate(); .accumulate(); .summarize()`,
/// `list(ev.stats)` pasted below.
#[test]
fn coco_ap_matches_pycocotools_on_fixture_results() {
    let gt = fixture_gt();
    let cases: [(&str, [f64; 10]); 2] = [
        (
            "results_drop_fp.json",
            [
                0.5427392739273929,
                0.8349834983498348,
                0.6036853685368536,
                0.3022937293729373,
                0.7842299229922992,
                0.6666666666666666,
                0.9166666666666666,
                0.75,
                0.4,
                0.8571428571428571,
            ],
        ),
        (
            "results_ignored_maxdets.json",
            [
                0.2841955031623564,
                0.4615384615384615,
                0.2604722010662605,
                0.23877101995913877,
                0.3703940982333528,
                0.7416666666666667,
                1.0,
                0.75,
                0.5,
                0.9142857142857143,
            ],
        ),
    ];
    for (file, want) in cases {
        let res = read_coco_results(&fixtures().join("coco").join(file)).unwrap();
        let got = coco_keypoint_eval(&gt, &res).unwrap().as_array();
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 1e-12, "{file} stat {i}: ours {a}, pycocotools {b}");
        }
    }
}

#[test]
fn coco_ap_edge_cases() {
    let gt = fixture_gt();
    // No detections: AP and AR 0 (pycocotools itself cannot load an empty results list).
    let s = coco_keypoint_eval(&gt, &[]).unwrap();
    assert_eq!((s.ap, s.ar, s.ap_large), (0.0, 0.0, 0.0));
    // A result for an image that is not in the ground truth (pycocotools asserts).
    let r = CocoResult { image_id: 12345, category_id: 1, keypoints: vec![1.0; 51], score: 0.5, bbox: None };
    assert!(matches!(coco_keypoint_eval(&gt, std::slice::from_ref(&r)), Err(Error::Input(_))));
    let mut short = r.clone();
    short.image_id = 785;
    short.keypoints.pop();
    assert!(matches!(coco_keypoint_eval(&gt, &[short]), Err(Error::Input(_))));
    let mut nan = r;
    nan.image_id = 785;
    nan.score = f64::NAN;
    assert!(matches!(coco_keypoint_eval(&gt, &[nan]), Err(Error::Input(_))));
}
