//! The geometric and decoding parts of the pipeline: crops and their inverse, the CPU warp and
//! its GPU twin, heatmap decoding (argmax + quarter offset, DARK), the flip test, One Euro.

mod common;

use wgpose::pipeline::crop::{
    validate_box, warp_batch, warp_rgb, CropConfig, CropTransform, ImageRef, Normalization, PixelFormat,
};
use wgpose::pipeline::decode::{
    average_flipped, average_flipped_shifted, decode, decode_map, DecodeConfig, HeatmapKind, Keypoint, Refinement,
};
use wgpose::pipeline::preprocess_gpu::{FrameLayout, GpuPreprocess, OutputLayout};
use wgpose::pipeline::smoothing::{OneEuroConfig, OneEuroFilter, PoseSmoother};
use wgpose::rng::Rng;
use wgpose::skeleton::COCO17;
use wgpose::{Error, Tensor};

const IMAGENET: Normalization = Normalization::IMAGENET;

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| (rng.next_u64() & 0xff) as u8).collect()
}

fn norm(c: usize, byte: u8) -> f32 {
    (byte as f32 / 255.0 - IMAGENET.mean[c]) / IMAGENET.std[c]
}

// ---------------------------------------------------------------------------------------------
// Crops

#[test]
fn crop_inverse_maps_output_pixel_centres_back() {
    let cfgs = [
        CropConfig::default(),
        CropConfig::default().with_rotation(33.0),
        CropConfig::default().with_flip(true),
        CropConfig::default().with_rotation(-121.5).with_flip(true).with_padding(1.6),
    ];
    for cfg in &cfgs {
        for bbox in [[12.3f32, 40.7, 55.1, 130.9], [-20.0, -5.0, 300.0, 80.0], [600.0, 300.0, 3.5, 2.25]] {
            let (ow, oh) = (48, 64);
            let t = CropTransform::from_box(bbox, ow, oh, cfg).unwrap();
            // The f64 matrices are exact inverses.
            let (f, i) = (t.forward(), t.inverse());
            let prod = [
                [
                    f[0][0] * i[0][0] + f[0][1] * i[1][0],
                    f[0][0] * i[0][1] + f[0][1] * i[1][1],
                    f[0][0] * i[0][2] + f[0][1] * i[1][2] + f[0][2],
                ],
                [
                    f[1][0] * i[0][0] + f[1][1] * i[1][0],
                    f[1][0] * i[0][1] + f[1][1] * i[1][1],
                    f[1][0] * i[0][2] + f[1][1] * i[1][2] + f[1][2],
                ],
            ];
            let id = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
            for r in 0..2 {
                for c in 0..3 {
                    assert!((prod[r][c] - id[r][c]).abs() < 1e-9, "{cfg:?} {bbox:?}: {prod:?}");
                }
            }
            // Every output pixel centre goes to the image and comes back.
            for v in 0..oh {
                for u in 0..ow {
                    let (cx, cy) = (u as f32 + 0.5, v as f32 + 0.5);
                    let (x, y) = t.map_to_image(cx, cy);
                    let (bx, by) = t.map_to_input(x, y);
                    assert!(
                        (bx - cx).abs() < 1e-3 && (by - cy).abs() < 1e-3,
                        "{cfg:?} {bbox:?}: ({cx}, {cy}) -> ({bx}, {by})"
                    );
                }
            }
            // The box centre is the output centre.
            let (ux, uy) = t.map_to_input(bbox[0] + bbox[2] / 2.0, bbox[1] + bbox[3] / 2.0);
            assert!((ux - ow as f32 / 2.0).abs() < 1e-3 && (uy - oh as f32 / 2.0).abs() < 1e-3);
        }
    }
}

#[test]
fn crop_geometry_follows_the_pixel_centre_convention() {
    // A box the size of the output with no padding: output pixel i is image pixel x0 + i.
    let t =
        CropTransform::from_box([10.0, 20.0, 64.0, 48.0], 64, 48, &CropConfig::default().with_padding(1.0)).unwrap();
    assert_eq!(t.map_to_image(0.5, 0.5), (10.5, 20.5));
    assert_eq!(t.map_to_image(64.0, 48.0), (74.0, 68.0));
    // Scale 2: output centre 0.5 is image 10.25.
    let t =
        CropTransform::from_box([10.0, 20.0, 32.0, 24.0], 64, 48, &CropConfig::default().with_padding(1.0)).unwrap();
    assert_eq!(t.map_to_image(0.5, 0.5), (10.25, 20.25));
    assert!((t.scale() - 2.0).abs() < 1e-12);
    // Aspect: a 10x40 box into 48x64 (w/h = 0.75) becomes 30x40, then 37.5x50 with padding 1.25.
    let t = CropTransform::from_box([0.0, 0.0, 10.0, 40.0], 48, 64, &CropConfig::default()).unwrap();
    assert!((t.scale() - 48.0 / 37.5).abs() < 1e-9);
    let (x, y) = t.map_to_image(0.0, 0.0);
    assert!((x - (5.0 - 18.75)).abs() < 1e-4 && (y - (20.0 - 25.0)).abs() < 1e-4, "({x}, {y})");
    // A wide box grows in height instead.
    let t = CropTransform::from_box([0.0, 0.0, 60.0, 10.0], 48, 64, &CropConfig::default().with_padding(1.0)).unwrap();
    assert!((t.scale() - 48.0 / 60.0).abs() < 1e-9);
    // Heatmap coordinates at stride 4 are input coordinates / 4: box 48x64 -> 192x256 input
    // (4 input pixels per image pixel), so heatmap coordinates are image offsets.
    let t =
        CropTransform::from_box([100.0, 50.0, 48.0, 64.0], 192, 256, &CropConfig::default().with_padding(1.0)).unwrap();
    assert_eq!(t.map_heatmap_to_image(0.5, 0.5, 4.0), (100.5, 50.5));
    let kp = Keypoint { x: 12.25, y: 3.75, score: 0.7 }.to_image(&t, 4.0);
    assert_eq!(kp, Keypoint { x: 112.25, y: 53.75, score: 0.7 });
}

#[test]
fn flip_crop_mirrors_input_coordinates() {
    let plain =
        CropTransform::from_box([30.0, 12.0, 40.0, 90.0], 48, 64, &CropConfig::default().with_rotation(10.0)).unwrap();
    let flip = CropTransform::from_box(
        [30.0, 12.0, 40.0, 90.0],
        48,
        64,
        &CropConfig::default().with_rotation(10.0).with_flip(true),
    )
    .unwrap();
    for (x, y) in [(31.0f32, 15.0f32), (55.5, 60.25), (90.0, 0.0)] {
        let (u, v) = plain.map_to_input(x, y);
        let (fu, fv) = flip.map_to_input(x, y);
        assert!((fu - (48.0 - u)).abs() < 1e-4 && (fv - v).abs() < 1e-4);
    }
}

#[test]
fn bad_boxes_are_errors() {
    let cfg = CropConfig::default();
    for bbox in
        [[f32::NAN, 0.0, 10.0, 10.0], [0.0, 0.0, f32::INFINITY, 10.0], [0.0, 0.0, 0.0, 10.0], [0.0, 0.0, 10.0, -1.0]]
    {
        assert!(matches!(CropTransform::from_box(bbox, 48, 64, &cfg), Err(Error::Input(_))), "{bbox:?}");
    }
    assert!(matches!(CropTransform::from_box([0.0, 0.0, 10.0, 10.0], 0, 64, &cfg), Err(Error::Input(_))));
    assert!(matches!(
        CropTransform::from_box([0.0, 0.0, 10.0, 10.0], 48, 64, &cfg.with_padding(0.0)),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        CropTransform::from_box([0.0, 0.0, 10.0, 10.0], 48, 64, &cfg.with_rotation(f32::NAN)),
        Err(Error::Input(_))
    ));
    // Entirely outside a 100x80 image: an error for the checked constructor...
    for bbox in [[100.0, 10.0, 20.0, 20.0], [-30.0, 10.0, 30.0, 20.0], [10.0, 80.0, 5.0, 5.0], [10.0, -9.0, 5.0, 9.0]] {
        assert!(matches!(validate_box(bbox, 100, 80), Err(Error::Input(_))), "{bbox:?}");
        assert!(CropTransform::from_box_in_image(bbox, 100, 80, 48, 64, &cfg).is_err());
    }
    validate_box([99.0, 79.0, 20.0, 20.0], 100, 80).unwrap();
    // ...and a defined all-padding warp for the plain one.
    let img = vec![200u8; 100 * 80 * 3];
    let image = ImageRef::rgb(&img, 100, 80).unwrap();
    let t = CropTransform::from_box([400.0, 10.0, 20.0, 20.0], 12, 16, &cfg).unwrap();
    assert!(!t.overlaps_image(100, 80));
    let out = warp_rgb(&image, &t, 12, 16).unwrap();
    for c in 0..3 {
        let pad = -IMAGENET.mean[c] / IMAGENET.std[c];
        assert!(out.data[c * 192..(c + 1) * 192].iter().all(|&v| (v - pad).abs() < 1e-6));
    }
    let inside = CropTransform::from_box([90.0, 70.0, 20.0, 20.0], 12, 16, &cfg).unwrap();
    assert!(inside.overlaps_image(100, 80));
    // Wrong output size, short buffers.
    assert!(matches!(warp_rgb(&image, &t, 16, 12), Err(Error::Input(_))));
    assert!(matches!(ImageRef::rgb(&img[1..], 100, 80), Err(Error::Input(_))));
    assert!(matches!(ImageRef::rgba(&img, 100, 80), Err(Error::Input(_))));
}

#[test]
fn pixel_aligned_warp_copies_pixels_exactly() {
    let mut rng = Rng::new(3);
    let (w, h) = (37, 23);
    let img = random_bytes(&mut rng, w * h * 3);
    let image = ImageRef::rgb(&img, w, h).unwrap();
    let t = CropTransform::from_box([5.0, 3.0, 16.0, 12.0], 16, 12, &CropConfig::default().with_padding(1.0)).unwrap();
    let out = warp_rgb(&image, &t, 16, 12).unwrap();
    assert_eq!(out.shape, vec![1, 3, 12, 16]);
    for c in 0..3 {
        for y in 0..12 {
            for x in 0..16 {
                let want = norm(c, img[((y + 3) * w + x + 5) * 3 + c]);
                assert!((out.data[(c * 12 + y) * 16 + x] - want).abs() < 1e-6);
            }
        }
    }
    // The same through an `image::RgbImage` and as RGBA / BGRA.
    let rgb = image::RgbImage::from_raw(w as u32, h as u32, img.clone()).unwrap();
    assert_eq!(warp_rgb(&ImageRef::from(&rgb), &t, 16, 12).unwrap(), out);
    let rgba: Vec<u8> = img.chunks(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    assert_eq!(warp_rgb(&ImageRef::rgba(&rgba, w, h).unwrap(), &t, 16, 12).unwrap(), out);
    let bgra: Vec<u8> = img.chunks(3).flat_map(|p| [p[2], p[1], p[0], 255]).collect();
    assert_eq!(warp_rgb(&ImageRef::new(&bgra, w, h, PixelFormat::Bgra8).unwrap(), &t, 16, 12).unwrap(), out);
}

#[test]
fn warp_is_bilinear_between_pixel_centres() {
    // A horizontal ramp: byte = 10 * x. Scale 2 samples at x = 0.25, 0.75, ... (continuous),
    // i.e. index positions -0.25, 0.25, 0.75...; the first is half outside (zero padding).
    let (w, h) = (8, 4);
    let img: Vec<u8> = (0..w * h).flat_map(|i| [(10 * (i % w)) as u8; 3]).collect();
    let image = ImageRef::rgb(&img, w, h).unwrap();
    let t = CropTransform::from_box([0.0, 0.0, 8.0, 4.0], 16, 8, &CropConfig::default().with_padding(1.0)).unwrap();
    let out = warp_rgb(&image, &t, 16, 8).unwrap();
    let at = |x: usize| out.data[3 * 16 + x] * IMAGENET.std[0] + IMAGENET.mean[0];
    assert!((at(0) - 0.75 * 0.0 / 255.0).abs() < 1e-6); // 0.75 * pixel 0 + 0.25 * black
    assert!((at(1) - 2.5 / 255.0).abs() < 1e-6); // between 0 and 10 at a quarter
    assert!((at(2) - 7.5 / 255.0).abs() < 1e-6);
    assert!((at(15) - 0.75 * 70.0 / 255.0).abs() < 1e-6); // 0.75 * pixel 7 + 0.25 * black
}

#[test]
fn flipped_and_rotated_warps() {
    let mut rng = Rng::new(9);
    let (w, h) = (37, 23);
    let img = random_bytes(&mut rng, w * h * 3);
    let image = ImageRef::rgb(&img, w, h).unwrap();
    let bbox = [4.3, 2.1, 25.7, 17.2];
    let cfg = CropConfig::default().with_rotation(20.0);
    let (ow, oh) = (17, 13);
    let plain = warp_rgb(&image, &CropTransform::from_box(bbox, ow, oh, &cfg).unwrap(), ow, oh).unwrap();
    let flip = warp_rgb(&image, &CropTransform::from_box(bbox, ow, oh, &cfg.with_flip(true)).unwrap(), ow, oh).unwrap();
    // A flipped crop is the plain crop with mirrored columns (to f32 rounding).
    for c in 0..3 {
        for y in 0..oh {
            for x in 0..ow {
                let a = flip.data[(c * oh + y) * ow + x];
                let b = plain.data[(c * oh + y) * ow + ow - 1 - x];
                assert!((a - b).abs() < 1e-4, "{c} {y} {x}: {a} vs {b}");
            }
        }
    }
    // 90 degrees counter-clockwise on an 8x8 square: output (u, v) is image (7 - v, u).
    let img = random_bytes(&mut rng, 64 * 3);
    let image = ImageRef::rgb(&img, 8, 8).unwrap();
    let t = CropTransform::from_box(
        [0.0, 0.0, 8.0, 8.0],
        8,
        8,
        &CropConfig::default().with_padding(1.0).with_rotation(90.0),
    )
    .unwrap();
    let out = warp_rgb(&image, &t, 8, 8).unwrap();
    for v in 0..8 {
        for u in 0..8 {
            for c in 0..3 {
                let want = norm(c, img[(u * 8 + 7 - v) * 3 + c]);
                assert!((out.data[(c * 8 + v) * 8 + u] - want).abs() < 1e-4);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GPU preprocessing

fn test_crops(ow: usize, oh: usize) -> Vec<CropTransform> {
    let c = CropConfig::default();
    vec![
        CropTransform::from_box([4.3, 2.1, 25.7, 17.2], ow, oh, &c).unwrap(),
        CropTransform::from_box([10.0, 5.0, 12.0, 9.0], ow, oh, &c.with_rotation(30.0)).unwrap(),
        CropTransform::from_box([3.0, 1.5, 20.0, 18.0], ow, oh, &c.with_flip(true)).unwrap(),
        CropTransform::from_box([-8.0, 12.0, 20.0, 25.0], ow, oh, &c.with_rotation(-47.0).with_flip(true)).unwrap(),
        CropTransform::from_box([28.0, -6.0, 15.0, 14.0], ow, oh, &c.with_padding(1.6)).unwrap(),
        CropTransform::from_box([0.0, 0.0, 37.0, 23.0], ow, oh, &c.with_padding(1.0)).unwrap(),
        CropTransform::from_box([14.2, 9.7, 3.1, 2.3], ow, oh, &c).unwrap(),
        CropTransform::from_box([200.0, 200.0, 10.0, 10.0], ow, oh, &c).unwrap(),
    ]
}

#[test]
fn gpu_preprocess_matches_cpu_warp() {
    let Some(ctx) = common::gpu() else { return };
    let pre = GpuPreprocess::new(&ctx).unwrap();
    let mut rng = Rng::new(17);
    let (w, h) = (37, 23);
    let rgba = random_bytes(&mut rng, w * h * 4);
    let image = ImageRef::rgba(&rgba, w, h).unwrap();
    let (ow, oh) = (17, 13);
    let mut crops = test_crops(ow, oh);
    for i in 0..8 {
        let cfg = CropConfig::default().with_rotation(rng.range(-180.0, 180.0)).with_flip(i % 2 == 0);
        let bbox = [rng.range(-10.0, 35.0), rng.range(-10.0, 20.0), rng.range(1.0, 40.0), rng.range(1.0, 30.0)];
        crops.push(CropTransform::from_box(bbox, ow, oh, &cfg).unwrap());
    }
    let want = warp_batch(&image, &crops, ow, oh, &IMAGENET).unwrap();
    let got = pre.run(&ctx, &rgba, w as u32, h as u32, &crops, ow as u32, oh as u32).unwrap();
    assert_eq!(got.shape, want.shape);
    let worst = got.data.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("GPU vs CPU preprocess: max abs diff {worst:e} over {} values", got.data.len());
    assert!(worst <= 1e-4, "max abs diff {worst}");
    // No crops: an empty tensor.
    assert_eq!(pre.run(&ctx, &rgba, w as u32, h as u32, &[], ow as u32, oh as u32).unwrap().shape, vec![0, 3, oh, ow]);
}

#[test]
fn gpu_preprocess_layouts_and_chunks() {
    let Some(ctx) = common::gpu() else { return };
    let pre = GpuPreprocess::new(&ctx).unwrap();
    let mut rng = Rng::new(23);
    let (w, h) = (29, 11);
    let rgba = random_bytes(&mut rng, w * h * 4);
    let image = ImageRef::rgba(&rgba, w, h).unwrap();
    // 70 crops: two dispatches of at most 64.
    let (ow, oh) = (5, 3);
    let crops: Vec<CropTransform> = (0..70)
        .map(|i| {
            let bbox = [rng.range(-5.0, 25.0), rng.range(-5.0, 8.0), rng.range(2.0, 20.0), rng.range(2.0, 10.0)];
            CropTransform::from_box(bbox, ow, oh, &CropConfig::default().with_rotation(i as f32 * 7.0)).unwrap()
        })
        .collect();
    let want = warp_batch(&image, &crops, ow, oh, &IMAGENET).unwrap();
    // Source: BGRA, rows padded to 64 words, frame starting at word 7. Destination: offset 33,
    // batch stride 3 * 15 + 6, filled with a sentinel.
    let (stride, off) = (64usize, 7usize);
    let mut words = vec![0u32; off + stride * h];
    for y in 0..h {
        for x in 0..w {
            let p = &rgba[(y * w + x) * 4..][..4];
            words[off + y * stride + x] = u32::from_le_bytes([p[2], p[1], p[0], p[3]]);
        }
    }
    let (dst_off, bs) = (33u64, 51u64);
    let len = dst_off + bs * 70;
    use wgpu::util::DeviceExt;
    let src = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&words),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let dst = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&vec![-7.0f32; len as usize]),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: len * 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let frame =
        FrameLayout { width: w as u32, height: h as u32, row_stride: stride as u32, offset: off as u32, bgra: true };
    let out = OutputLayout { out_w: ow as u32, out_h: oh as u32, offset: dst_off, batch_stride: bs };
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    pre.encode_layout(&mut enc, &src, &frame, &crops, &dst, &out).unwrap();
    enc.copy_buffer_to_buffer(&dst, 0, &staging, 0, len * 4);
    ctx.queue.submit([enc.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |r| r.unwrap());
    ctx.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let data: Vec<f32> = bytemuck::pod_collect_to_vec(&staging.slice(..).get_mapped_range().unwrap());
    let per = 3 * ow * oh;
    for (i, &v) in data.iter().enumerate() {
        let rel = i as i64 - dst_off as i64;
        let (n, r) = (rel.div_euclid(bs as i64), rel.rem_euclid(bs as i64) as usize);
        if rel >= 0 && r < per {
            let e = want.data[n as usize * per + r];
            assert!((v - e).abs() <= 1e-4, "crop {n} element {r}: {v} vs {e}");
        } else {
            assert_eq!(v, -7.0, "element {i} outside the crops was written");
        }
    }

    // Misuse is an error before anything is recorded.
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let small = OutputLayout { offset: len - 10, ..out };
    assert!(matches!(pre.encode_layout(&mut enc, &src, &frame, &crops, &dst, &small), Err(Error::Input(_))));
    let tall = FrameLayout { height: 100, ..frame };
    assert!(matches!(pre.encode_layout(&mut enc, &src, &tall, &crops, &dst, &out), Err(Error::Input(_))));
    let other = OutputLayout { out_w: 6, ..out };
    assert!(matches!(pre.encode_layout(&mut enc, &src, &frame, &crops, &dst, &other), Err(Error::Input(_))));
    assert!(matches!(pre.encode_layout(&mut enc, &src, &frame, &crops, &staging, &out), Err(Error::Input(_))));
    assert!(pre.run(&ctx, &rgba[1..], w as u32, h as u32, &crops, ow as u32, oh as u32).is_err());
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// A unit-peak Gaussian centred at continuous `(cx, cy)`, sampled at pixel centres.
fn gaussian(w: usize, h: usize, cx: f32, cy: f32, sigma: f32, peak: f32) -> Vec<f32> {
    let mut m = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            m[y * w + x] = peak * (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp();
        }
    }
    m
}

#[test]
fn decode_gaussian_at_known_subpixel_position() {
    let (w, h) = (32, 24);
    let map = gaussian(w, h, 10.3, 7.8, 2.0, 1.0);
    let argmax =
        decode_map(&map, w, h, &DecodeConfig { kind: HeatmapKind::Linear, refinement: Refinement::None }).unwrap();
    assert_eq!((argmax.x, argmax.y), (10.5, 7.5));
    let q = decode_map(&map, w, h, &DecodeConfig::quarter(HeatmapKind::Linear)).unwrap();
    assert_eq!((q.x, q.y), (10.25, 7.75));
    let d = decode_map(&map, w, h, &DecodeConfig::dark(HeatmapKind::Linear, 2.0)).unwrap();
    assert!((d.x - 10.3).abs() < 0.05 && (d.y - 7.8).abs() < 0.05, "{d:?}");
    assert!((d.score - 1.0).abs() < 0.1);

    // Many random positions and amplitudes, linear and sigmoid maps.
    let mut rng = Rng::new(5);
    let (mut worst_q, mut worst_d) = (0f32, 0f32);
    for i in 0..200 {
        let (cx, cy) = (rng.range(3.0, 29.0), rng.range(3.0, 21.0));
        let sigma = [1.5f32, 2.0, 3.0][i % 3];
        let peak = rng.range(0.3, 1.0);
        let kind = if i % 2 == 0 { HeatmapKind::Linear } else { HeatmapKind::Sigmoid };
        let mut map = gaussian(w, h, cx, cy, sigma, peak);
        if kind == HeatmapKind::Linear {
            // Linear heatmaps dip below zero away from the peak.
            map.iter_mut().for_each(|v| *v -= 0.01);
        }
        let q = decode_map(&map, w, h, &DecodeConfig::quarter(kind)).unwrap();
        let d = decode_map(&map, w, h, &DecodeConfig::dark(kind, sigma)).unwrap();
        worst_q = worst_q.max((q.x - cx).abs()).max((q.y - cy).abs());
        worst_d = worst_d.max((d.x - cx).abs()).max((d.y - cy).abs());
        assert!((d.score - map.iter().cloned().fold(f32::MIN, f32::max).clamp(0.0, 1.0)).abs() < 1e-6);
    }
    eprintln!("worst error: quarter {worst_q}, DARK {worst_d}");
    assert!(worst_q <= 0.25 + 1e-4, "quarter {worst_q}");
    assert!(worst_d <= 0.05, "DARK {worst_d}");
}

#[test]
fn dark_near_the_border_is_unbiased() {
    // The smoothing never reads outside the map, so peaks close to it are not pulled either way.
    let (w, h) = (32, 24);
    for (cx, cy) in [(2.3f32, 10.2f32), (3.3, 2.6), (29.6, 21.7), (1.6, 22.4)] {
        let map = gaussian(w, h, cx, cy, 2.0, 1.0);
        let d = decode_map(&map, w, h, &DecodeConfig::dark(HeatmapKind::Linear, 2.0)).unwrap();
        assert!((d.x - cx).abs() < 0.05 && (d.y - cy).abs() < 0.05, "({cx}, {cy}): {d:?}");
    }
}

#[test]
fn decode_tensor_batches_and_maps_back_through_the_crop() {
    let (w, h) = (12, 16);
    let pos = [(3.3f32, 4.6f32), (8.9, 11.2), (6.0, 6.0)];
    let mut data = Vec::new();
    for &(x, y) in pos.iter().chain(pos.iter().rev()) {
        data.extend(gaussian(w, h, x, y, 2.0, 0.8));
    }
    let t = Tensor::new(vec![2, 3, h, w], data).unwrap();
    let kps = decode(&t, &DecodeConfig::default()).unwrap();
    assert_eq!(kps.len(), 2);
    for (j, &(x, y)) in pos.iter().enumerate() {
        for kp in [kps[0][j], kps[1][2 - j]] {
            assert!((kp.x - x).abs() < 0.05 && (kp.y - y).abs() < 0.05);
            assert!((kp.score - 0.8).abs() < 0.05);
        }
    }
    // Through a crop: the heatmap is 1/4 of a 48x64 input cut from box [20, 30, 30, 40].
    let crop = CropTransform::from_box([20.0, 30.0, 30.0, 40.0], 48, 64, &CropConfig::default()).unwrap();
    let img = kps[0][0].to_image(&crop, 4.0);
    let (ix, iy) = crop.map_to_image(4.0 * kps[0][0].x, 4.0 * kps[0][0].y);
    assert_eq!((img.x, img.y), (ix, iy));
    assert!(matches!(decode(&Tensor::zeros(vec![1, 2, 3]), &DecodeConfig::default()), Err(Error::Input(_))));
    assert!(matches!(decode(&t, &DecodeConfig::dark(HeatmapKind::Linear, 0.0)), Err(Error::Input(_))));
    assert!(matches!(decode_map(&[0.0; 5], 2, 3, &DecodeConfig::default()), Err(Error::Input(_))));
}

#[test]
fn decode_degenerate_maps() {
    let (w, h) = (32, 24);
    for cfg in [
        DecodeConfig::quarter(HeatmapKind::Linear),
        DecodeConfig::dark(HeatmapKind::Linear, 2.0),
        DecodeConfig::dark(HeatmapKind::Sigmoid, 2.0),
    ] {
        // Constant: the first pixel, score = the value clamped to [0, 1].
        for (v, score) in [(0.3f32, 0.3f32), (-0.2, 0.0), (1.7, 1.0), (0.0, 0.0)] {
            let kp = decode_map(&vec![v; w * h], w, h, &cfg).unwrap();
            assert_eq!(kp, Keypoint { x: 0.5, y: 0.5, score }, "{cfg:?} {v}");
        }
        // NaN anywhere: score 0 at the centre.
        let mut map = gaussian(w, h, 10.3, 7.8, 2.0, 1.0);
        map[100] = f32::NAN;
        assert_eq!(decode_map(&map, w, h, &cfg).unwrap(), Keypoint { x: 16.0, y: 12.0, score: 0.0 });
        map[100] = f32::INFINITY;
        assert_eq!(decode_map(&map, w, h, &cfg).unwrap().score, 0.0);
        // Maximum on the left border (peak just outside the map): x stays in the border pixel,
        // y is refined as usual.
        let map = gaussian(w, h, -0.4, 12.3, 2.0, 1.0);
        let kp = decode_map(&map, w, h, &cfg).unwrap();
        assert!((0.0..=1.0).contains(&kp.x), "{cfg:?} {kp:?}");
        assert!((kp.y - 12.3).abs() <= 0.25, "{cfg:?} {kp:?}");
        if let Refinement::Dark { .. } = cfg.refinement {
            assert!((kp.y - 12.3).abs() < 0.05, "{cfg:?} {kp:?}");
        }
        // Bottom-right corner.
        let map = gaussian(w, h, 31.8, 23.9, 2.0, 1.0);
        let kp = decode_map(&map, w, h, &cfg).unwrap();
        assert_eq!((kp.x, kp.y), (31.5, 23.5));
        // A plateau of two equal maxima: no quarter step, DARK lands between them.
        let mut map = vec![0f32; w * h];
        map[5 * w + 7] = 1.0;
        map[5 * w + 8] = 1.0;
        let kp = decode_map(&map, w, h, &cfg).unwrap();
        assert!(kp.x >= 7.5 && kp.x <= 8.5 && (kp.y - 5.5).abs() < 1e-3, "{cfg:?} {kp:?}");
    }
}

#[test]
fn flip_test_restores_a_symmetric_case() {
    let (w, h) = (48, 64);
    let k = COCO17.len();
    let perm = COCO17.flip_permutation();
    let mut rng = Rng::new(31);
    let pos: Vec<(f32, f32)> = (0..k).map(|_| (rng.range(4.0, 44.0), rng.range(4.0, 60.0))).collect();
    let mut plain = Vec::new();
    let mut flipped = vec![0f32; k * w * h];
    for (j, &(x, y)) in pos.iter().enumerate() {
        plain.extend(gaussian(w, h, x, y, 2.0, 1.0));
        // The flipped crop shows joint j mirrored (x -> W - x), labelled as its partner.
        flipped[perm[j] * w * h..][..w * h].copy_from_slice(&gaussian(w, h, w as f32 - x, y, 2.0, 1.0));
    }
    let plain = Tensor::new(vec![1, k, h, w], plain).unwrap();
    let flipped = Tensor::new(vec![1, k, h, w], flipped).unwrap();
    let avg = average_flipped(&plain, &flipped, &COCO17).unwrap();
    common::assert_close("flip average", &avg, &plain, 1e-6);
    let kps = decode(&avg, &DecodeConfig::default()).unwrap();
    for (kp, &(x, y)) in kps[0].iter().zip(&pos) {
        assert!((kp.x - x).abs() < 0.05 && (kp.y - y).abs() < 0.05);
    }
    // HRNet's shift moves the mirrored half one column right: the averaged peak moves ~half a pixel.
    let shifted = average_flipped_shifted(&plain, &flipped, &COCO17, 1).unwrap();
    let kps = decode(&shifted, &DecodeConfig::default()).unwrap();
    for (kp, &(x, _)) in kps[0].iter().zip(&pos) {
        assert!((kp.x - x - 0.5).abs() < 0.1, "{} vs {x}", kp.x);
    }
    // Shape and skeleton mismatches.
    assert!(average_flipped(&plain, &Tensor::zeros(vec![1, k, h, w - 1]), &COCO17).is_err());
    assert!(average_flipped(&plain, &flipped, &wgpose::skeleton::LSP14).is_err());
}

// ---------------------------------------------------------------------------------------------
// Smoothing

#[test]
fn one_euro_constant_input_stays_constant() {
    let mut f = OneEuroFilter::new(OneEuroConfig::new(1.0, 0.01)).unwrap();
    for i in 0..100 {
        assert_eq!(f.filter(i as f64 / 30.0, 123.25), 123.25);
    }
}

fn time_to_90_percent(beta: f32) -> f64 {
    let mut f = OneEuroFilter::new(OneEuroConfig::new(1.0, beta)).unwrap();
    for i in 0..300 {
        let t = i as f64 / 30.0;
        let x = if t < 1.0 { 0.0 } else { 100.0 };
        if f.filter(t, x) >= 90.0 {
            return t - 1.0;
        }
    }
    f64::INFINITY
}

#[test]
fn one_euro_step_lag_shrinks_with_beta() {
    let lags: Vec<f64> = [0.0f32, 0.001, 0.01, 0.1].iter().map(|&b| time_to_90_percent(b)).collect();
    eprintln!("time to 90% of a step: {lags:?}");
    assert!(lags[0].is_finite() && lags[0] > 0.2, "{lags:?}");
    assert!(lags.windows(2).all(|p| p[1] < p[0] || p[1] == 0.0), "{lags:?}");
    assert!(lags[3] < 0.05, "{lags:?}");
}

#[test]
fn one_euro_reduces_noise() {
    let mut rng = Rng::new(77);
    let mut f = OneEuroFilter::new(OneEuroConfig::new(1.0, 0.007)).unwrap();
    let (mut raw, mut out) = (Vec::new(), Vec::new());
    for i in 0..600 {
        let x = 50.0 + 2.0 * rng.normal();
        let y = f.filter(i as f64 / 30.0, x);
        if i >= 30 {
            raw.push(x);
            out.push(y);
        }
    }
    let var = |v: &[f32]| {
        let m = v.iter().sum::<f32>() / v.len() as f32;
        v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / v.len() as f32
    };
    let ratio = var(&out) / var(&raw);
    eprintln!("One Euro noise variance ratio: {ratio}");
    assert!(ratio < 0.3, "{ratio}");
}

#[test]
fn one_euro_reset_time_and_missing_joints() {
    let mut f = OneEuroFilter::new(OneEuroConfig::default()).unwrap();
    assert_eq!(f.filter(0.0, 10.0), 10.0);
    let a = f.filter(0.1, 20.0);
    assert!(a > 10.0 && a < 20.0);
    assert_eq!(f.filter(0.1, 50.0), a); // same timestamp: unchanged
    assert_eq!(f.filter(0.05, 30.0), 30.0); // time went back: restart
    assert!(f.filter(0.2, f32::NAN).is_nan()); // NaN passes through, state kept
    assert_eq!(f.last_time(), Some(0.05));
    f.reset();
    assert_eq!(f.filter(1.0, -4.0), -4.0);
    assert!(OneEuroFilter::new(OneEuroConfig::new(0.0, 0.0)).is_err());
    assert!(OneEuroFilter::new(OneEuroConfig::new(1.0, -1.0)).is_err());

    let mut s = PoseSmoother::new(2, OneEuroConfig::default()).unwrap();
    let kp = |x: f32, score: f32| Keypoint { x, y: x, score };
    s.smooth(0.0, &[kp(0.0, 0.9), kp(0.0, 0.9)]).unwrap();
    // Joint 1 goes missing: passed through untouched, its filter not updated.
    let out = s.smooth(0.1, &[kp(10.0, 0.9), kp(500.0, 0.05)]).unwrap();
    assert!(out[0].x > 0.0 && out[0].x < 10.0);
    assert_eq!(out[1], kp(500.0, 0.05));
    // Back after a short gap: filtered from its old state.
    let out = s.smooth(0.2, &[kp(10.0, 0.9), kp(10.0, 0.9)]).unwrap();
    assert!(out[1].x > 0.0 && out[1].x < 10.0);
    // Back after a long gap: restarts at the observation.
    s.smooth(0.3, &[kp(10.0, 0.9), kp(10.0, 0.1)]).unwrap();
    let out = s.smooth(2.0, &[kp(10.0, 0.9), kp(300.0, 0.9)]).unwrap();
    assert_eq!(out[1].x, 300.0);
    s.reset();
    assert_eq!(s.smooth(2.1, &[kp(-1.0, 0.9), kp(-2.0, 0.9)]).unwrap(), vec![kp(-1.0, 0.9), kp(-2.0, 0.9)]);
    assert!(s.smooth(2.2, &[kp(0.0, 1.0)]).is_err());
}
