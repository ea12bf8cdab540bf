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
        let opts = EstimatorOptions { flip_test: flip, random_weights: true, ..Default::default() };
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
        let mut est =
            Estimator::new(&small_model(), None, ctx, EstimatorOptions { random_weights: true, ..Default::default() })
                .unwrap();
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
    let mut est =
        Estimator::new(&small_model(), None, None, EstimatorOptions { random_weights: true, ..Default::default() })
            .unwrap();
    let b = [300.0, 50.0, 100.0, 200.0];
    let pose = est.estimate(image, Some(b)).unwrap().remove(0);
    // The crop covers the box enlarged by 25% and made square-aspect; every keypoint is inside.
    let (cx, cy, half) = (350.0, 150.0, 125.0);
    for k in &pose.keypoints {
        assert!((k.x - cx).abs() <= half + 1.0 && (k.y - cy).abs() <= half + 1.0, "{k:?}");
        assert!(k.score.is_finite());
    }
    for bad in [[0.0, 0.0, 0.0, 10.0], [f32::NAN, 0.0, 5.0, 5.0], [5000.0, 5000.0, 10.0, 10.0]] {
        assert!(est.estimate(image, Some(bad)).is_err(), "{bad:?}");
    }
}

/// DARK decodes with the sigma the weights' card records (`heatmap_sigma`), unless the options
/// say to keep theirs; a card whose sigma is not a number is refused with its key named.
#[test]
fn decoding_uses_the_training_sigma_of_the_weights() {
    use wgpose::pipeline::decode::Refinement;
    let dir = std::env::temp_dir().join(format!("wgpose-est-sigma-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = small_model();
    let graph = cfg.build(3).unwrap();
    let file = |name: &str, sigma: Option<&str>| {
        let mut card = wgpose::weights::ModelCard::for_model(&cfg, &graph);
        if let Some(s) = sigma {
            card.extra.insert(wgpose::weights::HEATMAP_SIGMA_KEY.into(), s.into());
        }
        let path = dir.join(name);
        wgpose::weights::save(&path, &graph, &card).unwrap();
        path
    };
    let opts = EstimatorOptions { find_people: false, ..Default::default() };
    let sigma_of = |est: &Estimator| match est.options().decode.refinement {
        Refinement::Dark { sigma } => sigma,
        other => panic!("{other:?}"),
    };
    let narrow = file("narrow.safetensors", Some("1.5"));
    assert_eq!(sigma_of(&Estimator::new(&cfg, Some(&narrow), None, opts).unwrap()), 1.5);
    let keep = EstimatorOptions { decode_sigma_from_weights: false, ..opts };
    assert_eq!(sigma_of(&Estimator::new(&cfg, Some(&narrow), None, keep).unwrap()), 2.0);
    let bytes = std::fs::read(&narrow).unwrap();
    let from_bytes = Estimator::from_weights_bytes(&cfg, &bytes, "narrow", None, opts).unwrap();
    assert_eq!(sigma_of(&from_bytes), 1.5);
    let older = file("older.safetensors", None);
    assert_eq!(sigma_of(&Estimator::new(&cfg, Some(&older), None, opts).unwrap()), 2.0);
    for bad in ["wide", "0", "-1", "NaN", "100"] {
        let path = file("bad.safetensors", Some(bad));
        match Estimator::new(&cfg, Some(&path), None, opts) {
            Err(wgpose::Error::Input(m)) => assert!(m.contains("heatmap_sigma"), "{bad}: {m}"),
            Err(e) => panic!("{bad}: {e}"),
            Ok(_) => panic!("{bad}: accepted"),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
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
    let mut est = Estimator::new(
        &small_model(),
        None,
        Some(&ctx),
        EstimatorOptions { random_weights: true, ..Default::default() },
    )
    .unwrap();
    let boxes = [[250.0, 40.0, 250.0, 360.0]];
    let a = est.estimate_gpu_frame(&buf, &frame, &boxes).unwrap();
    let b = est.estimate_batch(&ImageRef::from(&img.rgb), &boxes).unwrap();
    for (k, l) in a[0].keypoints.iter().zip(&b[0].keypoints) {
        assert!(
            (k.x - l.x).abs() < 1e-3 && (k.y - l.y).abs() < 1e-3 && (k.score - l.score).abs() < 1e-5,
            "{k:?} vs {l:?}"
        );
    }
    let cpu =
        Estimator::new(&small_model(), None, None, EstimatorOptions { random_weights: true, ..Default::default() });
    assert!(cpu.unwrap().estimate_gpu_frame(&buf, &frame, &boxes).is_err());
}

#[test]
fn front_door_applies_the_picture_scale_and_auto_boxes() {
    use wgpose::{Boxes, Picture};
    let img = load_rgb(&sample()).unwrap();
    let pixels = ImageRef::from(&img.rgb);
    // Without a detector (`find_people: false`), no box means the whole picture; detection is
    // tested in tests/people.rs.
    let opts = EstimatorOptions { find_people: false, random_weights: true, ..Default::default() };
    let mut est = Estimator::new(&small_model(), None, None, opts).unwrap();
    let b = [250.0, 40.0, 250.0, 360.0];
    let want = est.estimate_batch(&pixels, &[b]).unwrap().remove(0);
    // The same pixels standing for a picture twice as large (a downscaled photo): the box is
    // given in the large picture's coordinates and the keypoints come back in them.
    let big = Picture { pixels, scale: 2.0 };
    let got = est.estimate(big, b.map(|v| v * 2.0)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bbox, b.map(|v| v * 2.0));
    for (k, l) in got[0].keypoints.iter().zip(&want.keypoints) {
        assert!((k.x - 2.0 * l.x).abs() < 1e-3 && (k.y - 2.0 * l.y).abs() < 1e-3 && k.score == l.score, "{k:?} {l:?}");
    }
    // No box: one pose for the whole picture, its box the whole picture.
    let whole = est.estimate(big, Boxes::Auto).unwrap();
    let (w, h) = (img.rgb.width() as f32, img.rgb.height() as f32);
    assert_eq!(whole.len(), 1);
    assert_eq!(whole[0].bbox, [0.0, 0.0, 2.0 * w, 2.0 * h]);
    let direct = est.estimate_batch(&pixels, &[[0.0, 0.0, w, h]]).unwrap().remove(0);
    assert_eq!(whole[0].keypoints[3].score, direct.keypoints[3].score);
    // A LoadedImage converts with its own scale (1 for this small photo); None means Auto.
    let a = est.estimate(&img, None).unwrap();
    assert_eq!(a[0].bbox, [0.0, 0.0, w, h]);
    // An empty list is no people; a bad scale is an error.
    assert!(est.estimate(&img, Vec::new()).unwrap().is_empty());
    assert!(est.estimate(Picture { pixels, scale: 0.0 }, b).is_err());
    assert!(est.estimate(Picture { pixels, scale: f32::NAN }, Boxes::Auto).is_err());
}

#[test]
fn device_choice_is_reported() {
    use wgpose::Device;
    let cfg = small_model();
    let open = |device| {
        Estimator::with_options(&cfg, None, device, EstimatorOptions { random_weights: true, ..Default::default() })
            .unwrap()
    };
    let cpu = open(Device::Cpu);
    assert!(!cpu.on_gpu() && !cpu.device_choice().gpu);
    assert!(cpu.device_choice().to_string().contains("CPU"), "{}", cpu.device_choice());
    let auto = open(Device::Auto);
    assert_eq!(auto.on_gpu(), auto.device_choice().gpu);
    eprintln!("Device::Auto here: {}", auto.device_choice());
    let Some(ctx) = common::gpu() else { return };
    // The rule: a software adapter goes to the CPU, a hardware one stays on the GPU; `Gpu`
    // always keeps the context.
    let (kept, why) = Device::Auto.choose(ctx.clone());
    assert_eq!(kept.is_some(), !ctx.is_software(), "{why}");
    assert_eq!(auto.on_gpu(), !ctx.is_software());
    assert!(Device::Gpu.choose(ctx.clone()).0.is_some());
    assert!(Device::Cpu.choose(ctx.clone()).0.is_none());
    let mut info = ctx.adapter_info.clone();
    info.device_type = wgpu::DeviceType::Cpu;
    assert!(wgpose::gpu::is_software_adapter(&info));
    info.device_type = wgpu::DeviceType::DiscreteGpu;
    info.name = "llvmpipe (LLVM 15.0.6, 256 bits)".into();
    assert!(wgpose::gpu::is_software_adapter(&info));
    info.name = "NVIDIA GeForce RTX 4090".into();
    assert!(!wgpose::gpu::is_software_adapter(&info));
    let on_ctx = Estimator::with_context(
        &cfg,
        None,
        &ctx,
        Device::Gpu,
        EstimatorOptions { random_weights: true, ..Default::default() },
    )
    .unwrap();
    assert!(on_ctx.on_gpu() && on_ctx.device_choice().gpu);
}

#[test]
fn from_name_and_from_file_load_the_shipped_weights() {
    use wgpose::models::{shipped_weights_path, WeightsSource};
    use wgpose::Device;
    let name = wgpose::models::DEFAULT_MODEL;
    let path = shipped_weights_path(name);
    if !path.is_file() {
        eprintln!("skipping: {} is not there", path.display());
        return;
    }
    let by_name = Estimator::from_name(name, Device::Cpu).unwrap();
    assert_eq!(by_name.weights, WeightsSource::Shipped(path.clone()));
    let by_file = Estimator::from_file(&path, Device::Cpu).unwrap();
    assert_eq!(by_file.weights, WeightsSource::File(path.clone()));
    assert_eq!(by_file.config.name, name);
    assert_eq!(by_file.config.input, by_name.config.input);
    assert!(Estimator::from_name("no-such-model", Device::Cpu).is_err());
    assert!(Estimator::from_file(sample(), Device::Cpu).is_err());
}

/// A configuration without trained weights is an error by default (a library user would
/// otherwise get meaningless keypoints without noticing), naming the file looked for and the
/// option; with `random_weights` it is a seeded random initialisation, and says so.
#[test]
fn a_config_without_weights_is_an_error_unless_random_weights_are_asked_for() {
    use wgpose::models::WeightsSource;
    // The identity-skip hourglass of the soft-gate ablation ships no weights.
    let cfg = config("hg-identity-1x64-lsp").unwrap().with_input([3, 64, 64]);
    assert!(!wgpose::models::shipped_weights_path(cfg.name).exists());
    let err = match Estimator::new(&cfg, None, None, EstimatorOptions::default()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a config without weights was accepted"),
    };
    assert!(err.contains("no trained weights") && err.contains("random_weights"), "{err}");
    assert!(err.contains(&format!("{}.safetensors", cfg.name)), "{err}");
    let opts = EstimatorOptions { random_weights: true, seed: 7, ..Default::default() };
    let est = Estimator::new(&cfg, None, None, opts).unwrap();
    assert_eq!(est.weights, WeightsSource::RandomInit { seed: 7 });
}

/// The shipped weights carry the input size they were trained at (the hourglass 192x128, LDCRN
/// 160x160): naming a config gets that size, as loading the file does, unless the caller set
/// another; and the estimator built by name gives the same keypoints as the one built from the
/// file (before session 20, by name cropped at the config's 128x128).
#[test]
fn named_configs_run_at_their_weights_input_size() {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut checked = 0;
    for entry in std::fs::read_dir(&models).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let from_file = wgpose::models::ModelConfig::from_weights_file(&path).unwrap();
        let named = config(from_file.name).unwrap();
        let resolved = wgpose::models::at_trained_input(&named, None).unwrap();
        assert_eq!(resolved.input, from_file.input, "{}", path.display());
        let custom = named.with_input([3, 64, 64]);
        assert_eq!(wgpose::models::at_trained_input(&custom, None).unwrap().input, [3, 64, 64]);
        checked += 1;
    }
    assert!(checked >= 3, "expected the shipped weights in {}", models.display());
    let hourglass = models.join("sghg-1x64-lsp.safetensors");
    assert_ne!(
        wgpose::models::ModelConfig::from_weights_file(&hourglass).unwrap().input,
        config("sghg-1x64-lsp").unwrap().input,
        "the shipped hourglass no longer differs from its config's size: this test checks nothing"
    );
    let img = load_rgb(&sample()).unwrap();
    let mut by_name = Estimator::from_name("sghg-1x64-lsp", wgpose::Device::Cpu).unwrap();
    let mut by_file = Estimator::from_file(&hourglass, wgpose::Device::Cpu).unwrap();
    let (a, b) = (by_name.estimate(&img, None).unwrap(), by_file.estimate(&img, None).unwrap());
    assert_eq!(a.len(), 1);
    for (p, q) in a[0].keypoints.iter().zip(&b[0].keypoints) {
        assert_eq!((p.x, p.y, p.score), (q.x, q.y, q.score));
    }
}

/// `EstimatorOptions::input_size` runs shipped weights at another size, even at the config's
/// own default size that the model card would otherwise replace (the hourglass ships at 192x128,
/// its config says 128x128); sizes that do not fit the network are refused before anything is
/// loaded, with the multiple in the message.
#[test]
fn input_size_option_overrides_the_trained_size() {
    let named = config("sghg-1x64-lsp").unwrap();
    let trained = wgpose::models::at_trained_input(&named, None).unwrap().input;
    let own = [named.input[1], named.input[2]];
    assert_ne!([trained[1], trained[2]], own, "the shipped hourglass runs at its config's size: nothing to override");
    let img = load_rgb(&sample()).unwrap();
    let mut keypoints = Vec::new();
    for size in [own, [256, 128]] {
        let opts = EstimatorOptions { input_size: Some(size), find_people: false, ..Default::default() };
        let mut est = Estimator::with_options(&named, None, wgpose::Device::Cpu, opts).unwrap();
        assert_eq!(est.config.input, [3, size[0], size[1]]);
        let poses = est.estimate(&img, None).unwrap();
        assert_eq!(poses.len(), 1);
        assert!(poses[0].keypoints.iter().all(|k| k.x.is_finite() && k.y.is_finite()));
        keypoints.push(poses[0].keypoints.clone());
    }
    assert_ne!(keypoints[0], keypoints[1], "two input sizes gave identical keypoints");
    for bad in [[100, 128], [0, 128], [2048, 128]] {
        let opts = EstimatorOptions { input_size: Some(bad), find_people: false, ..Default::default() };
        let err = match Estimator::with_options(&named, None, wgpose::Device::Cpu, opts) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("input size {bad:?} was accepted"),
        };
        assert!(err.contains("multiple of 64") && err.contains(&format!("{}x{}", bad[0], bad[1])), "{err}");
    }
}
