//! The front door finds the people itself: `Boxes::Auto` runs the shipped person detector
//! (attached by default), crops every person, refines on the keypoints' box, on the CPU
//! executor and on the GPU (one upload, detector and crops from the same buffer), blocking and
//! awaited; a picture without people gives no poses.

mod common;

use std::path::PathBuf;

use wgpose::detector::PersonDetector;
use wgpose::image_io::{load_rgb, LoadedImage};
use wgpose::models::{config, DEFAULT_MODEL};
use wgpose::pipeline::preprocess_gpu::FrameLayout;
use wgpose::pipeline::ImageRef;
use wgpose::{Boxes, Device, Estimator, EstimatorOptions, Picture};

fn fixture(name: &str) -> LoadedImage {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lspet-val/images").join(name);
    load_rgb(&p).unwrap()
}

/// Three validation people (never trained on) the shipped detector finds on the CPU.
const IMAGES: [&str; 3] = ["im08001.jpg", "im08002.jpg", "im08003.jpg"];
/// GPU vs CPU boxes and keypoints: within this fraction of the image's longer side (the two
/// executors round differently; a refined box moves with the keypoints it came from).
const GPU_TOLERANCE: f32 = 0.02;

fn cpu_estimator() -> Estimator {
    Estimator::from_name(DEFAULT_MODEL, Device::Cpu).unwrap()
}

#[test]
fn auto_finds_people_highest_score_first_and_matches_people() {
    let mut est = cpu_estimator();
    assert!(est.detector().is_some(), "the shipped detector is attached by default");
    let mut found = 0;
    for name in IMAGES {
        let img = fixture(name);
        let people = est.people(&img).unwrap();
        let poses = est.estimate(&img, Boxes::Auto).unwrap();
        assert_eq!(people.len(), poses.len(), "{name}");
        let [w, h] = img.original_size.map(|v| v as f32);
        for (p, q) in people.iter().zip(&poses) {
            assert_eq!(p.pose.bbox, q.bbox, "{name}: estimate(Auto) is people()'s poses");
            assert_eq!(p.pose.keypoints.len(), 14);
            let [x, y, bw, bh] = p.pose.bbox;
            assert!(x >= -1.0 && y >= -1.0 && x + bw <= w + 1.0 && y + bh <= h + 1.0, "{name}: box {:?}", p.pose.bbox);
            assert!(p.detection.score >= est.detector().unwrap().detect.score_threshold);
        }
        assert!(people.windows(2).all(|p| p[0].detection.score >= p[1].detection.score), "{name}: order");
        found += usize::from(!people.is_empty());
    }
    assert!(found >= 2, "people found in only {found} of {} images", IMAGES.len());
}

#[test]
fn a_picture_without_people_gives_no_poses() {
    let mut est = cpu_estimator();
    for value in [0u8, 128, 255] {
        let blank = image::RgbImage::from_pixel(320, 240, image::Rgb([value, value, value]));
        assert!(est.estimate(&blank, Boxes::Auto).unwrap().is_empty(), "grey level {value}");
    }
}

#[test]
fn picture_scale_applies_to_detected_people() {
    let mut est = cpu_estimator();
    let img = fixture(IMAGES[0]);
    let pixels = ImageRef::from(&img.rgb);
    let one = est.people(Picture { pixels, scale: 1.0 }).unwrap();
    let two = est.people(Picture { pixels, scale: 2.0 }).unwrap();
    assert!(!one.is_empty());
    assert_eq!(one.len(), two.len());
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(b.pose.bbox, a.pose.bbox.map(|v| v * 2.0));
        assert_eq!(b.detection.bbox, a.detection.bbox.map(|v| v * 2.0));
        assert_eq!(b.pose.keypoints[0].x, 2.0 * a.pose.keypoints[0].x);
    }
    assert!(est.people(Picture { pixels, scale: f32::INFINITY }).is_err());
}

#[test]
fn without_a_detector_auto_is_the_whole_picture() {
    let opts = EstimatorOptions { find_people: false, ..Default::default() };
    let mut est = Estimator::with_options(&config(DEFAULT_MODEL).unwrap(), None, Device::Cpu, opts).unwrap();
    assert!(est.detector().is_none());
    let img = fixture(IMAGES[0]);
    let poses = est.estimate(&img, Boxes::Auto).unwrap();
    assert_eq!(poses.len(), 1);
    let [w, h] = img.original_size.map(|v| v as f32);
    assert_eq!(poses[0].bbox, [0.0, 0.0, w, h]);
    assert!(est.people(&img).is_err(), "people() needs a detector");
    // Attaching one turns detection on; one on another executor is refused.
    let det_cfg = config(wgpose::detector::DEFAULT_DETECTOR).unwrap();
    let det = PersonDetector::new(&det_cfg, None, Default::default()).unwrap();
    assert!(est.set_detector(Some(det)).unwrap().is_none());
    assert!(!est.people(&img).unwrap().is_empty());
    assert!(est.set_detector(None).unwrap().is_some());
    if let Some(ctx) = common::gpu() {
        let gpu_det = PersonDetector::with_gpu(&det_cfg, None, Some(&ctx), Default::default()).unwrap();
        let err = est.set_detector(Some(gpu_det)).unwrap_err().to_string();
        assert!(err.contains("same device"), "{err}");
    }
}

#[test]
fn gpu_people_match_the_cpu_blocking_awaited_and_from_a_gpu_frame() {
    let Some(ctx) = common::gpu() else { return };
    let cfg = config(DEFAULT_MODEL).unwrap();
    let mut gpu = Estimator::with_context(&cfg, None, &ctx, Device::Gpu, EstimatorOptions::default()).unwrap();
    assert!(gpu.on_gpu() && gpu.detector().is_some_and(|d| d.on_gpu()));
    let mut cpu = cpu_estimator();
    let img = fixture(IMAGES[0]);
    let side = img.original_size[0].max(img.original_size[1]) as f32;
    let want = cpu.people(&img).unwrap();
    let got = gpu.people(&img).unwrap();
    let awaited = pollster::block_on(gpu.people_async(&img)).unwrap();
    // The same picture as a frame already on the GPU (working pixels, scale 1 here).
    assert_eq!(img.scale, 1.0);
    let rgba: Vec<u8> = img.rgb.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    let buffer = wgpu::util::DeviceExt::create_buffer_init(
        &ctx.device,
        &wgpu::util::BufferInitDescriptor { label: None, contents: &rgba, usage: wgpu::BufferUsages::STORAGE },
    );
    let layout = FrameLayout::rgba(img.rgb.width(), img.rgb.height());
    let framed = gpu.estimate_gpu_frame(&buffer, &layout, Boxes::Auto).unwrap();
    let framed_async = pollster::block_on(gpu.estimate_gpu_frame_async(&buffer, &layout, Boxes::Auto)).unwrap();
    assert!(!want.is_empty());
    for (what, poses) in [
        ("blocking", got.iter().map(|p| p.pose.clone()).collect::<Vec<_>>()),
        ("awaited", awaited.iter().map(|p| p.pose.clone()).collect()),
        ("gpu frame", framed),
        ("gpu frame awaited", framed_async),
    ] {
        assert_eq!(poses.len(), want.len(), "{what}: number of people");
        for (g, c) in poses.iter().zip(&want) {
            let d = g.bbox.iter().zip(&c.pose.bbox).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / side;
            assert!(d <= GPU_TOLERANCE, "{what}: GPU box {:?} vs CPU {:?}", g.bbox, c.pose.bbox);
            let close = g
                .keypoints
                .iter()
                .zip(&c.pose.keypoints)
                .filter(|(a, b)| (a.x - b.x).abs().max((a.y - b.y).abs()) <= GPU_TOLERANCE * side)
                .count();
            assert!(close >= 12, "{what}: only {close} of 14 joints agree");
        }
    }
}

#[test]
fn tracker_detects_first_then_follows_and_loses_blank_frames() {
    use wgpose::{TrackStep, Tracker, TrackerOptions};
    let mut est = cpu_estimator();
    let img = fixture(IMAGES[0]);
    // Threshold 0: any pose is trusted, so the second frame must follow the first.
    let mut tracker = Tracker::new(TrackerOptions { follow_threshold: 0.0, follow: true }).unwrap();
    let first = tracker.track(&mut est, &img).unwrap().expect("a person");
    assert_eq!(first.step, TrackStep::Found);
    let det = first.detection.expect("a found step carries its detection");
    assert_eq!(det, est.people(&img).unwrap()[0].detection);
    assert_eq!(first.pose.bbox, est.estimate(&img, Boxes::Auto).unwrap()[0].bbox, "the top detected person");
    let follow = tracker.follow_box().expect("following");
    let second = tracker.track(&mut est, &img).unwrap().expect("a person");
    assert_eq!(second.step, TrackStep::Followed);
    assert!(second.detection.is_none());
    assert_eq!(second.pose.bbox, follow, "cropped at the previous frame's keypoint box");
    // A frame of another size starts over.
    let small = image::imageops::thumbnail(&img.rgb, img.rgb.width() / 2, img.rgb.height() / 2);
    assert_eq!(tracker.track(&mut est, &small).unwrap().map(|t| t.step), Some(TrackStep::Found));
    // Never trusted: every frame is a detection.
    let mut never = Tracker::new(TrackerOptions { follow_threshold: 1.0, follow: true }).unwrap();
    for _ in 0..2 {
        assert_eq!(never.track(&mut est, &img).unwrap().map(|t| t.step), Some(TrackStep::Found));
        assert_eq!(never.follow_box(), None);
    }
    // The person leaves: a blank frame of the same size loses the track and finds nobody.
    let mut tracker = Tracker::new(TrackerOptions::default()).unwrap();
    tracker.track(&mut est, &img).unwrap().expect("a person");
    let blank = image::RgbImage::from_pixel(img.rgb.width(), img.rgb.height(), image::Rgb([128, 128, 128]));
    assert!(tracker.track(&mut est, &blank).unwrap().is_none());
    assert_eq!(tracker.follow_box(), None);
    assert!(Tracker::new(TrackerOptions { follow_threshold: f32::NAN, follow: true }).is_err());
}
