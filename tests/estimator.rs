//! The image-to-keypoints pipeline: GPU and CPU agree, every image layout loads, bad input is
//! an error. (Weights are a calibrated random initialisation until trained weights ship, so
//! these tests check plumbing and geometry, not accuracy.)

mod common;

use std::path::PathBuf;

use wgpose::estimator::{Estimator, EstimatorOptions};
use wgpose::image_io::load_rgb;
use wgpose::models::config;
use wgpose::pipeline::crop::ImageRef;

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/sample.jpg")
}

fn small_model() -> wgpose::models::ModelConfig {
    let c = config("sghg-1x64-lsp").unwrap();
    c.with_input([3, 64, 64])
}

#[test]
fn gpu_and_cpu_estimators_agree() {
    let Some(ctx) = common::gpu() else { return };
    let img = load_rgb(&sample()).unwrap();
    let image = ImageRef::from(&img.rgb);
    let cfg = small_model();
    for flip in [false, true] {
        let opts = EstimatorOptions { flip_test: flip, ..Default::default() };
        let mut gpu = Estimator::new(&cfg, None, Some(&ctx), opts).unwrap();
        let mut cpu = Estimator::new(&cfg, None, None, opts).unwrap();
        let boxes = [[250.0, 40.0, 250.0, 360.0], [0.0, 0.0, 640.0, 425.0]];
        let a = gpu.estimate_batch(&image, &boxes).unwrap();
        let b = cpu.estimate_batch(&image, &boxes).unwrap();
        assert_eq!(a.len(), 2);
        for (pa, pb) in a.iter().zip(&b) {
            // Near-ties between heatmap maxima can legitimately flip under different rounding,
            // so require agreement within one heatmap pixel for nearly every joint.
            let px = pa.bbox[2].max(pa.bbox[3]) * 1.25 / 16.0;
            let close = pa
                .keypoints
                .iter()
                .zip(&pb.keypoints)
                .filter(|(k, l)| (k.x - l.x).abs() <= px && (k.y - l.y).abs() <= px && (k.score - l.score).abs() < 1e-2)
                .count();
            assert!(close >= 12, "flip {flip}: only {close}/14 joints agree: {:?} vs {:?}", pa.keypoints, pb.keypoints);
        }
    }
}

#[test]
fn async_estimation_matches_blocking() {
    let img = load_rgb(&sample()).unwrap();
    let image = ImageRef::from(&img.rgb);
    let boxes = [[250.0, 40.0, 250.0, 360.0], [10.0, 20.0, 200.0, 300.0]];
    let ctx = common::gpu();
    // The CPU, then the GPU when there is one.
    for ctx in [None, ctx.as_ref()] {
        let mut est = Estimator::new(&small_model(), None, ctx, EstimatorOptions::default()).unwrap();
        let a = est.estimate_batch(&image, &boxes).unwrap();
        let b = pollster::block_on(est.estimate_batch_async(&image, &boxes)).unwrap();
        assert_eq!(a.len(), 2);
        for (pa, pb) in a.iter().zip(&b) {
            for (k, l) in pa.keypoints.iter().zip(&pb.keypoints) {
                assert_eq!((k.x, k.y, k.score), (l.x, l.y, l.score), "on gpu: {}", est.on_gpu());
            }
        }
    }
}

#[test]
fn keypoints_land_inside_the_crop_and_boxes_are_checked() {
    let img = load_rgb(&sample()).unwrap();
    let image = ImageRef::from(&img.rgb);
    let mut est = Estimator::new(&small_model(), None, None, EstimatorOptions::default()).unwrap();
    let b = [300.0, 50.0, 100.0, 200.0];
    let pose = est.estimate(&image, Some(b)).unwrap();
    // The crop covers the box enlarged by 25% and made square-aspect; every keypoint is inside.
    let (cx, cy, half) = (350.0, 150.0, 125.0);
    for k in &pose.keypoints {
        assert!((k.x - cx).abs() <= half + 1.0 && (k.y - cy).abs() <= half + 1.0, "{k:?}");
        assert!(k.score.is_finite());
    }
    for bad in [[0.0, 0.0, 0.0, 10.0], [f32::NAN, 0.0, 5.0, 5.0], [5000.0, 5000.0, 10.0, 10.0]] {
        assert!(est.estimate(&image, Some(bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn every_image_layout_loads_and_bad_files_are_errors() {
    let dir = std::env::temp_dir().join(format!("wgpose-est-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gray = image::GrayImage::from_fn(37, 23, |x, y| image::Luma([(x * 7 + y) as u8]));
    gray.save(dir.join("gray.png")).unwrap();
    let rgba = image::RgbaImage::from_fn(20, 30, |x, y| image::Rgba([x as u8, y as u8, 9, 100]));
    rgba.save(dir.join("rgba.png")).unwrap();
    let deep = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(16, 12, |x, _| {
        image::Rgb([x as u16 * 4000, 0, 65535])
    });
    image::DynamicImage::ImageRgb16(deep).save(dir.join("deep.png")).unwrap();
    for f in ["gray.png", "rgba.png", "deep.png"] {
        let img = load_rgb(&dir.join(f)).unwrap();
        assert!(img.rgb.width() > 0);
    }
    let bytes = std::fs::read(sample()).unwrap();
    std::fs::write(dir.join("truncated.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(dir.join("garbage.jpg"), b"definitely not a jpeg").unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    for f in ["truncated.jpg", "garbage.jpg", "empty.png", "missing.png"] {
        assert!(load_rgb(&dir.join(f)).is_err(), "{f}");
    }
    assert!(load_rgb(&dir).is_err());
    // A huge image is downscaled to the working size, with the scale to map back.
    let big = image::RgbImage::new(5000, 100);
    big.save(dir.join("big.png")).unwrap();
    let img = load_rgb(&dir.join("big.png")).unwrap();
    assert_eq!(img.rgb.width(), wgpose::image_io::WORK_SIDE);
    assert!((img.scale - 5000.0 / 2048.0).abs() < 1e-3);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cmyk_jpeg_and_exif_orientation() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
    // 40x20, left half red, right half blue, saved as CMYK by Pillow.
    let img = load_rgb(&dir.join("cmyk.jpg")).unwrap();
    assert_eq!((img.rgb.width(), img.rgb.height()), (40, 20));
    let (l, r) = (img.rgb.get_pixel(5, 10), img.rgb.get_pixel(35, 10));
    assert!(l[0] > 150 && l[2] < 100, "left {l:?}");
    assert!(r[2] > 150 && r[0] < 100, "right {r:?}");
    // The same picture stored unrotated with EXIF orientation 6 (display rotated 90 degrees
    // clockwise): loads as 20x40 with red on top.
    let img = load_rgb(&dir.join("exif_rot6.jpg")).unwrap();
    assert_eq!((img.rgb.width(), img.rgb.height()), (20, 40));
    let (top, bottom) = (img.rgb.get_pixel(10, 5), img.rgb.get_pixel(10, 35));
    assert!(top[0] > 150 && top[2] < 100, "top {top:?}");
    assert!(bottom[2] > 150 && bottom[0] < 100, "bottom {bottom:?}");
}

#[test]
fn a_frame_already_on_the_gpu_gives_the_same_poses() {
    let Some(ctx) = common::gpu() else { return };
    use wgpu::util::DeviceExt;
    let img = load_rgb(&sample()).unwrap();
    let rgba = image::DynamicImage::ImageRgb8(img.rgb.clone()).to_rgba8();
    let (w, h) = (rgba.width(), rgba.height());
    // Rows padded to 256 bytes, as a texture copied to a buffer would be.
    let pitch = (w * 4).div_ceil(256) * 256;
    let mut bytes = vec![0u8; (pitch * h) as usize];
    for y in 0..h as usize {
        bytes[y * pitch as usize..][..w as usize * 4]
            .copy_from_slice(&rgba.as_raw()[y * w as usize * 4..][..w as usize * 4]);
    }
    let buf = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: &bytes,
        usage: wgpu::BufferUsages::STORAGE,
    });
    let frame = wgpose::pipeline::preprocess_gpu::FrameLayout {
        width: w,
        height: h,
        row_stride: pitch / 4,
        offset: 0,
        bgra: false,
    };
    let mut est = Estimator::new(&small_model(), None, Some(&ctx), EstimatorOptions::default()).unwrap();
    let boxes = [[250.0, 40.0, 250.0, 360.0]];
    let a = est.estimate_gpu_frame(&buf, &frame, &boxes).unwrap();
    let b = est.estimate_batch(&ImageRef::from(&img.rgb), &boxes).unwrap();
    for (k, l) in a[0].keypoints.iter().zip(&b[0].keypoints) {
        assert!(
            (k.x - l.x).abs() < 1e-3 && (k.y - l.y).abs() < 1e-3 && (k.score - l.score).abs() < 1e-5,
            "{k:?} vs {l:?}"
        );
    }
    let cpu = Estimator::new(&small_model(), None, None, EstimatorOptions::default());
    assert!(cpu.unwrap().estimate_gpu_frame(&buf, &frame, &boxes).is_err());
}
