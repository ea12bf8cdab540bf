//! Dataset loaders: the MAT-file reader (including corrupt files), LSP / LSP-extended, COCO and
//! MPII on the fixtures in `tests/fixtures/` (small copies of real files), plus checks on the full
//! data in `../shared/data` when it is there.
//!
//! Known values were printed from the real files with scipy/json (`scipy.io.loadmat`).

use std::io::Write;
use std::path::{Path, PathBuf};

use wgpose::data::lsp::{detect_layout, Layout, Visibility};
use wgpose::data::matfile::{parse_mat, read_mat};
use wgpose::data::{
    box_from_center_scale, box_from_keypoints, load_coco, load_lsp, load_mpii, mpii_box, read_coco_results,
    write_coco_results, CocoResult, Extra,
};
use wgpose::rng::Rng;
use wgpose::skeleton::{COCO17, LSP14, MPII16};
use wgpose::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn shared(sub: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(sub);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not present", p.display());
        None
    }
}

/// A fresh scratch directory for this test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgpose-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn close(a: f32, b: f64) -> bool {
    (a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs())
}

fn assert_format_err<T: std::fmt::Debug>(r: wgpose::Result<T>, path: &Path) {
    match r {
        Err(Error::Format { path: p, .. }) => assert_eq!(p, path.display().to_string()),
        other => panic!("expected a format error naming {}, got {other:?}", path.display()),
    }
}

/// A MAT-file with one double variable, written the way MATLAB does: a miMATRIX element,
/// optionally zlib-compressed in a miCOMPRESSED element.
fn mat_bytes(name: &str, dims: &[i32], data: &[f64], compress: bool) -> Vec<u8> {
    fn el(ty: u32, payload: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
    }
    let mut m = Vec::new();
    el(6, &[6u32.to_le_bytes(), 0u32.to_le_bytes()].concat(), &mut m);
    el(5, &dims.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<u8>>(), &mut m);
    el(1, name.as_bytes(), &mut m);
    el(9, &data.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<u8>>(), &mut m);
    let mut matrix = Vec::new();
    el(14, &m, &mut matrix);
    let mut f = format!("{:<116}", "MATLAB 5.0 MAT-file, written by wgpose tests").into_bytes();
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&0x0100u16.to_le_bytes());
    f.extend_from_slice(b"IM");
    if compress {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&matrix).unwrap();
        let z = z.finish().unwrap();
        f.extend_from_slice(&15u32.to_le_bytes());
        f.extend_from_slice(&(z.len() as u32).to_le_bytes());
        f.extend_from_slice(&z);
    } else {
        f.extend_from_slice(&matrix);
    }
    f
}

// ---------------------------------------------------------------------------------------------
// MAT-file reader

#[test]
fn matfile_reads_compressed_lspet_fixture() {
    // tests/fixtures/lspet/joints.mat: the first 12 people of LSPET's joints.mat, re-saved by
    // scipy.io.savemat(do_compression=True) (one miCOMPRESSED element).
    let v = read_mat(&fixtures().join("lspet/joints.mat")).unwrap();
    let j = &v["joints"];
    assert_eq!(j.dims, vec![14, 3, 12]);
    assert_eq!(j.class, "double");
    // joints[1, :, 0] (R-knee of image 1) and joints[0, :, 0] (R-ankle, not labelled).
    assert_eq!(j.get(&[1, 0, 0]), Some(26.030943518527007));
    assert_eq!(j.get(&[1, 1, 0]), Some(86.41022512126052));
    assert_eq!(j.get(&[1, 2, 0]), Some(1.0));
    assert_eq!(j.get(&[0, 1, 0]), Some(-26.109114520084145));
    assert_eq!(j.get(&[0, 2, 0]), Some(0.0));
    // Image 11, head top.
    assert_eq!(j.get(&[13, 0, 10]), Some(116.74757281553399));
    assert_eq!(j.get(&[13, 1, 10]), Some(76.6747572815534));
}

#[test]
fn matfile_reads_uncompressed_file_and_skips_other_classes() {
    // tests/fixtures/lsp/joints.mat: scipy.io.savemat(do_compression=False) with a 3x14x2 double
    // `joints`, a 2x3 int16 `other` = arange(6).reshape(2, 3) and a char array `label`.
    let v = read_mat(&fixtures().join("lsp/joints.mat")).unwrap();
    assert_eq!(v["joints"].dims, vec![3, 14, 2]);
    assert_eq!(v["joints"].get(&[0, 0, 0]), Some(75.7106374089376));
    assert_eq!(v["joints"].get(&[1, 13, 1]), Some(72.8));
    let o = &v["other"];
    assert_eq!((o.dims.clone(), o.class), (vec![2, 3], "int16"));
    assert_eq!(o.data, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]); // column-major
    assert!(!v.contains_key("label"));
}

#[test]
fn matfile_own_writer_round_trips_both_ways() {
    let data: Vec<f64> = (0..14 * 3 * 2).map(|i| i as f64 * 0.5 - 3.0).collect();
    for compress in [false, true] {
        let v = parse_mat(&mat_bytes("joints", &[14, 3, 2], &data, compress), "x.mat").unwrap();
        assert_eq!(v["joints"].dims, vec![14, 3, 2]);
        assert_eq!(v["joints"].data, data);
    }
}

#[test]
fn matfile_missing_file_is_io_error_naming_it() {
    let p = fixtures().join("nope/joints.mat");
    match read_mat(&p) {
        Err(Error::Io { path, .. }) => assert_eq!(path, p.display().to_string()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn matfile_rejects_non_mat_and_v73() {
    assert!(matches!(parse_mat(b"hello", "a.mat"), Err(Error::Format { .. })));
    let mut f = mat_bytes("x", &[1, 1], &[1.0], false);
    f[124..126].copy_from_slice(&0x0200u16.to_le_bytes());
    let e = parse_mat(&f, "a.mat").unwrap_err().to_string();
    assert!(e.contains("a.mat") && e.contains("7.3"), "{e}");
}

#[test]
fn matfile_huge_claimed_sizes_are_errors_not_allocations() {
    let good = mat_bytes("joints", &[14, 3, 1], &[1.0; 42], false);
    // Top-level element claims 4 GB.
    let mut f = good.clone();
    f[132..136].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    assert!(matches!(parse_mat(&f, "a.mat"), Err(Error::Format { .. })));
    // Dimensions claim 2^31 x 2^31 x 1 elements (overflow-free check against the data).
    let huge = mat_bytes("joints", &[i32::MAX, i32::MAX, 1], &[1.0; 42], false);
    assert!(matches!(parse_mat(&huge, "a.mat"), Err(Error::Format { .. })));
    // Negative dimension.
    let neg = mat_bytes("joints", &[-14, 3, 1], &[1.0; 42], false);
    assert!(matches!(parse_mat(&neg, "a.mat"), Err(Error::Format { .. })));
    // Dimensions that do not match the data.
    let wrong = mat_bytes("joints", &[14, 3, 2], &[1.0; 42], true);
    let e = parse_mat(&wrong, "a.mat").unwrap_err().to_string();
    assert!(e.contains("84") && e.contains("42"), "{e}");
    // A compressed element whose inner tag claims far more than the stream holds.
    let mut inner = Vec::new();
    inner.extend_from_slice(&14u32.to_le_bytes());
    inner.extend_from_slice(&0xFFFF_0000u32.to_le_bytes());
    inner.extend_from_slice(&[0; 64]);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&inner).unwrap();
    let z = z.finish().unwrap();
    let mut f = good[..128].to_vec();
    f.extend_from_slice(&15u32.to_le_bytes());
    f.extend_from_slice(&(z.len() as u32).to_le_bytes());
    f.extend_from_slice(&z);
    assert!(matches!(parse_mat(&f, "a.mat"), Err(Error::Format { .. })));
    // 8 MB of zeros compressed: inflates, then is rejected as not a matrix element.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 8 << 20]).unwrap();
    let z = z.finish().unwrap();
    let mut f = good[..128].to_vec();
    f.extend_from_slice(&15u32.to_le_bytes());
    f.extend_from_slice(&(z.len() as u32).to_le_bytes());
    f.extend_from_slice(&z);
    assert!(matches!(parse_mat(&f, "a.mat"), Err(Error::Format { .. })));
}

/// Truncations and random byte flips of real files: Ok or a format error naming the file,
/// never a panic.
#[test]
fn matfile_fuzz_truncations_and_flips() {
    let own = mat_bytes("joints", &[14, 3, 2], &[7.0; 84], false);
    let files: Vec<(String, Vec<u8>)> = vec![
        ("lspet.mat".into(), std::fs::read(fixtures().join("lspet/joints.mat")).unwrap()),
        ("lsp.mat".into(), std::fs::read(fixtures().join("lsp/joints.mat")).unwrap()),
        ("own.mat".into(), own),
    ];
    let mut rng = Rng::new(2024);
    for (name, bytes) in &files {
        let full = parse_mat(bytes, name).unwrap();
        for n in 0..bytes.len() {
            match parse_mat(&bytes[..n], name) {
                // A cut between two variables leaves a valid file with the ones before it.
                Ok(v) => assert!(
                    n >= 128 && v.iter().all(|(k, a)| full.get(k) == Some(a)),
                    "{name} cut at {n} parsed to something else"
                ),
                Err(Error::Format { path, .. }) => assert_eq!(&path, name),
                Err(e) => panic!("{name} cut at {n}: {e:?}"),
            }
        }
        // The real data ends with the file: cutting into it must fail.
        if name != "lsp.mat" {
            for n in 129..bytes.len() {
                assert!(parse_mat(&bytes[..n], name).is_err(), "{name} cut at {n} parsed");
            }
        }
        for _ in 0..3000 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            // Sometimes also write a random 32-bit value (sizes, types, dims).
            if rng.below(2) == 0 {
                let i = rng.below(b.len() - 4);
                b[i..i + 4].copy_from_slice(&(rng.next_u64() as u32).to_le_bytes());
            }
            match parse_mat(&b, name) {
                Ok(_) => {}
                Err(Error::Format { path, .. }) => assert_eq!(&path, name),
                Err(e) => panic!("{name}: unexpected error kind {e:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LSP / LSP-extended

#[test]
fn lspet_fixture_loads_with_lspet_convention() {
    let root = fixtures().join("lspet");
    assert_eq!(detect_layout(&root).unwrap(), (Layout::JointsFirst, 12));
    let set = load_lsp(&root, None, Visibility::Auto).unwrap();
    // Labels for 12 images, only im00001..im00003 are in the fixture.
    assert_eq!(set.annotations.len(), 3);
    assert_eq!(set.missing.len(), 9);
    assert_eq!(set.missing[0], root.join("images/im00004.jpg"));
    let a = &set.annotations[0];
    assert_eq!(a.id, "im00001");
    assert_eq!(a.image, root.join("images/im00001.jpg"));
    assert_eq!(a.skeleton, &LSP14);
    assert_eq!(a.extra, Extra::Lsp { number: 1 });
    assert_eq!(a.keypoints.len(), 14);
    // R-ankle of image 1 has flag 0 and y = -26.1: not labelled, zeroed.
    assert_eq!(a.keypoints[0], [0.0, 0.0, 0.0]);
    let k = a.keypoints[1];
    assert!(close(k[0], 26.030943518527007) && close(k[1], 86.41022512126052) && k[2] == 2.0, "{k:?}");
    assert_eq!(a.num_labelled(), 13);
    // Image 3: right arm (joints 6-8) not labelled.
    let c = &set.annotations[2];
    assert_eq!((c.keypoints[6][2], c.keypoints[7][2], c.keypoints[8][2], c.keypoints[9][2]), (0.0, 0.0, 0.0, 2.0));
    assert!(close(c.keypoints[0][0], 149.3138939081821) && close(c.keypoints[0][1], 195.50574921539373));
    // The box: labelled joints' extent, enlarged by 25% about its centre.
    let b = a.bbox.unwrap();
    let lab: Vec<_> = a.keypoints.iter().filter(|k| k[2] > 0.0).collect();
    let (x0, x1) = lab.iter().fold((f32::MAX, f32::MIN), |(l, h), k| (l.min(k[0]), h.max(k[0])));
    let (y0, y1) = lab.iter().fold((f32::MAX, f32::MIN), |(l, h), k| (l.min(k[1]), h.max(k[1])));
    assert!((b[2] - 1.25 * (x1 - x0)).abs() < 1e-3 && (b[3] - 1.25 * (y1 - y0)).abs() < 1e-3);
    assert!((b[0] + b[2] / 2.0 - (x0 + x1) / 2.0).abs() < 1e-3 && (b[1] + b[3] / 2.0 - (y0 + y1) / 2.0).abs() < 1e-3);
}

#[test]
fn lsp_range_selection_and_missing_images() {
    let root = fixtures().join("lspet");
    let set = load_lsp(&root, Some(2..=5), Visibility::Auto).unwrap();
    assert_eq!(set.annotations.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["im00002", "im00003"]);
    assert_eq!(set.missing, vec![root.join("images/im00004.jpg"), root.join("images/im00005.jpg")]);
    let one = load_lsp(&root, Some(3..=3), Visibility::Auto).unwrap();
    assert_eq!((one.annotations.len(), one.missing.len()), (1, 0));
    // Outside the labels, empty, or starting at 0 (numbers are 1-based): errors naming the file.
    #[allow(clippy::reversed_empty_ranges)]
    for r in [0..=3, 10..=13, 5..=4] {
        match load_lsp(&root, Some(r.clone()), Visibility::Auto) {
            Err(Error::Input(m)) => assert!(m.contains("joints.mat"), "{m}"),
            other => panic!("{r:?}: {other:?}"),
        }
    }
}

#[test]
fn lsp_fixture_detected_as_lsp_occluded_convention() {
    // 3 x 14 x 2 with flags 0 = visible, 1 = occluded (person 1 ankles, person 2 head top).
    let root = fixtures().join("lsp");
    assert_eq!(detect_layout(&root).unwrap(), (Layout::CoordsFirst, 2));
    let set = load_lsp(&root, None, Visibility::Auto).unwrap();
    assert!(set.missing.is_empty());
    assert_eq!(set.annotations.len(), 2);
    let a = &set.annotations[0];
    assert_eq!(a.image, root.join("images/im0001.jpg")); // LSP's 4-digit names
    assert_eq!(a.id, "im0001");
    assert_eq!(a.num_labelled(), 14);
    assert_eq!(a.keypoints[0][2], 1.0);
    assert_eq!(a.keypoints[5][2], 1.0);
    assert!(a.keypoints[1..5].iter().all(|k| k[2] == 2.0));
    assert!(close(a.keypoints[0][0], 75.7106374089376) && close(a.keypoints[0][1], 49.49394239849751));
    let b = &set.annotations[1];
    assert_eq!(b.keypoints[13][2], 1.0);
    assert!(close(b.keypoints[13][0], 84.11764705882352) && close(b.keypoints[13][1], 72.8));
    // Forcing the LSP-extended meaning: flag 1 -> visible, 0 -> unlabelled.
    let forced = load_lsp(&root, None, Visibility::Lspet).unwrap();
    let a = &forced.annotations[0];
    assert_eq!(a.num_labelled(), 2);
    assert_eq!((a.keypoints[0][2], a.keypoints[5][2], a.keypoints[1]), (2.0, 2.0, [0.0, 0.0, 0.0]));
    // And the other way round on LSP-extended: flag 0 -> visible with its junk coordinates.
    let forced = load_lsp(&fixtures().join("lspet"), Some(1..=1), Visibility::Lsp).unwrap();
    let k = forced.annotations[0].keypoints[0];
    assert!(k[2] == 2.0 && close(k[1], -26.109114520084145), "{k:?}");
    assert_eq!(forced.annotations[0].keypoints[1][2], 1.0);
}

#[test]
fn lsp_bad_files_are_errors_naming_the_file() {
    let d = scratch("lspbad");
    let mat = d.join("joints.mat");
    // No joints.mat at all.
    match load_lsp(&d, None, Visibility::Auto) {
        Err(Error::Io { path, .. }) => assert_eq!(path, mat.display().to_string()),
        other => panic!("{other:?}"),
    }
    // Wrong layout.
    std::fs::write(&mat, mat_bytes("joints", &[14, 2, 3], &[1.0; 84], true)).unwrap();
    assert_format_err(load_lsp(&d, None, Visibility::Auto), &mat);
    // No `joints` variable.
    std::fs::write(&mat, mat_bytes("poses", &[14, 3, 2], &[1.0; 84], true)).unwrap();
    assert_format_err(load_lsp(&d, None, Visibility::Auto), &mat);
    // A flag that is neither 0 nor 1.
    let mut data = vec![1.0; 84];
    data[14 * 2 + 3] = 0.5;
    std::fs::write(&mat, mat_bytes("joints", &[14, 3, 2], &data, true)).unwrap();
    assert_format_err(load_lsp(&d, None, Visibility::Auto), &mat);
    // Garbage.
    std::fs::write(&mat, b"not a mat file at all").unwrap();
    assert_format_err(load_lsp(&d, None, Visibility::Auto), &mat);
    // A single person is stored 14 x 3 (MATLAB drops the trailing 1): still loads.
    let one: Vec<f64> = (0..42).map(|i| if i < 28 { 5.0 } else { 1.0 }).collect();
    std::fs::write(&mat, mat_bytes("joints", &[14, 3], &one, false)).unwrap();
    let s = load_lsp(&d, None, Visibility::Auto).unwrap();
    assert_eq!((s.annotations.len(), s.missing.len()), (0, 1));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn lspet_real_file_and_missing_test_images() {
    let Some(root) = shared("lspet") else { return };
    assert_eq!(detect_layout(&root).unwrap(), (Layout::JointsFirst, 10000));
    // Whole-array checksums from scipy: math.fsum(j.flatten('F')) and the sum of v * (i % 97).
    let j = &read_mat(&root.join("joints.mat")).unwrap()["joints"];
    let sum: f64 = j.data.iter().sum();
    let weighted: f64 = j.data.iter().enumerate().map(|(i, v)| v * (i % 97) as f64).sum();
    assert!((sum - 30598262.165915985).abs() < 1e-6, "{sum}");
    assert!((weighted - 1465901991.3305035).abs() < 1e-4, "{weighted}");
    let set = load_lsp(&root, Some(8999..=9002), Visibility::Auto).unwrap();
    assert_eq!(set.annotations.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["im08999", "im09000"]);
    assert_eq!(set.missing, vec![root.join("images/im09001.jpg"), root.join("images/im09002.jpg")]);
    let k = set.annotations[1].keypoints[13];
    assert!(close(k[0], 281.4928422906934) && close(k[1], 93.51395098621008) && k[2] == 2.0);
    // LSP-extended's images 9001-10000 were never distributed: all labels, no images.
    let test = load_lsp(&root, Some(9001..=10000), Visibility::Auto).unwrap();
    assert_eq!((test.annotations.len(), test.missing.len()), (0, 1000));
    let all = load_lsp(&root, None, Visibility::Auto).unwrap();
    assert_eq!((all.annotations.len(), all.missing.len()), (9000, 1000));
    // Unlabelled joints (flag 0, often negative coordinates) are visibility 0 everywhere.
    assert!(all.annotations.iter().flat_map(|a| &a.keypoints).all(|k| k[2] == 2.0 || *k == [0.0, 0.0, 0.0]));
    let unlabelled = all.annotations.iter().flat_map(|a| &a.keypoints).filter(|k| k[2] == 0.0).count();
    assert!(unlabelled > 10_000, "{unlabelled}");
}

// ---------------------------------------------------------------------------------------------
// COCO

#[test]
fn coco_fixture_loads_all_and_lists_persons_on_present_images() {
    let dir = fixtures().join("coco");
    let json = dir.join("test_coco.json");
    let ds = load_coco(&json, &dir).unwrap();
    assert_eq!((ds.images.len(), ds.annotations.len(), ds.categories.len()), (4, 14, 1));
    assert_eq!(ds.categories[0].keypoints.len(), 17);
    // Only 000000040083.jpg is in the fixture.
    assert_eq!(ds.missing_images.len(), 3);
    assert!(ds.image(40083).unwrap().exists && !ds.image(785).unwrap().exists);
    let p = ds.persons();
    // Image 40083 has 198196 (14 kps), 230195 (15 kps) and 1202706 (0 kps, left out).
    assert_eq!(p.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["198196", "230195"]);
    let a = &p[0];
    assert_eq!(a.skeleton, &COCO17);
    assert_eq!(a.image, dir.join("000000040083.jpg"));
    assert_eq!(&a.keypoints[..3], &[[99.0, 144.0, 2.0], [104.0, 141.0, 2.0], [96.0, 137.0, 2.0]]);
    assert_eq!(a.num_labelled(), 14);
    assert_eq!(a.bbox, Some([38.08, 110.95, 174.71, 174.71]));
    assert_eq!(
        a.extra,
        Extra::Coco { image_id: 40083, ann_id: 198196, area: 11025.219, iscrowd: false, num_keypoints: 14 }
    );
    assert_eq!(a.coco_image_id(), Some(40083));
    // The evaluator's view keeps everything, including the person without keypoints.
    let z = ds.annotations.iter().find(|a| a.id == 1202706).unwrap();
    assert_eq!((z.num_keypoints, z.iscrowd, z.keypoints.len()), (0, false, 51));
}

#[test]
fn coco_bad_json_is_an_error_naming_the_file() {
    let d = scratch("cocobad");
    let p = d.join("bad.json");
    for text in [
        "{",
        "[]",
        r#"{"images": [{"id": 1}]}"#,
        r#"{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]}"#,
        r#"{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, 3],
            "area": 1.0, "bbox": [0, 0, 1, 1]}]}"#,
        r#"{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2],
            "area": 1.0, "bbox": [0, 0, 1, 1]}]}"#,
        r#"{"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "area": 1.0}]}"#,
    ] {
        std::fs::write(&p, text).unwrap();
        match load_coco(&p, &d) {
            Err(Error::Format { path, msg }) => assert_eq!(path, p.display().to_string(), "{msg}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    match load_coco(&d.join("none.json"), &d) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("none.json")),
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn coco_results_round_trip() {
    let d = scratch("cocores");
    let p = d.join("res.json");
    let kps: Vec<[f32; 3]> = (0..17).map(|j| [j as f32 * 1.5, 100.0 - j as f32, 0.25 + j as f32 / 40.0]).collect();
    let res = vec![CocoResult::new(785, &kps, 0.9), CocoResult::new(40083, &kps[..], 0.125)];
    write_coco_results(&p, &res).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.starts_with(r#"[{"image_id":785,"category_id":1,"keypoints":[0.0,100.0,0.25,"#), "{text}");
    assert!(!text.contains("bbox"));
    assert_eq!(read_coco_results(&p).unwrap(), res);
    let mut bad = res.clone();
    bad[1].score = f64::NAN;
    assert!(matches!(write_coco_results(&p, &bad), Err(Error::Input(_))));
    std::fs::write(&p, r#"[{"image_id": 1, "category_id": 1, "keypoints": [1, 2], "score": 1}]"#).unwrap();
    assert_format_err(read_coco_results(&p), &p);
    std::fs::write(&p, r#"{"image_id": 1}"#).unwrap();
    assert_format_err(read_coco_results(&p), &p);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn coco_mini_loads() {
    let Some(root) = shared("coco-mini") else {
        return;
    };
    let ds = load_coco(&root.join("annotations/person_keypoints_val2017.json"), &root.join("val2017")).unwrap();
    assert_eq!((ds.images.len(), ds.annotations.len()), (32, 93));
    assert!(ds.missing_images.is_empty());
    assert_eq!(ds.persons().len(), 68); // the README's "68 people with keypoints"
    let ds = load_coco(&root.join("annotations/person_keypoints_train2017.json"), &root.join("train2017")).unwrap();
    assert_eq!(ds.persons().len(), 86);
}

// ---------------------------------------------------------------------------------------------
// MPII

#[test]
fn mpii_fixture_loads_hrnet_layout() {
    let dir = fixtures().join("mpii");
    let set = load_mpii(&dir.join("test_mpii.json"), &dir).unwrap();
    // 5 people in 5 images; only 052475643.jpg (entry 1) is in the fixture.
    assert_eq!(set.annotations.len(), 1);
    assert_eq!(set.missing.len(), 4);
    let a = &set.annotations[0];
    assert_eq!(a.id, "052475643.jpg#1");
    assert_eq!(a.skeleton, &MPII16);
    assert_eq!(a.num_labelled(), 16);
    // Joints are converted to 0-based: [317, 412] in the file.
    assert_eq!(a.keypoints[0], [316.0, 411.0, 2.0]);
    // Head size = |head_top - upper_neck| = |(347.0055, 105.8949) - (329.9945, 162.1051)|.
    let h = a.head_size().unwrap() as f64;
    let want = ((347.0055f64 - 329.9945).powi(2) + (105.8949f64 - 162.1051).powi(2)).sqrt();
    assert!((h - want).abs() < 1e-3, "{h} vs {want}");
    // HRNet box: centre (316, 220) moved down by 15 * scale, scale x 1.25, minus 1 (0-based).
    let s = 1.761835f32;
    let b = a.bbox.unwrap();
    let side = s * 1.25 * 200.0;
    assert!((b[2] - side).abs() < 1e-3 && (b[3] - side).abs() < 1e-3);
    assert!((b[0] - (315.0 - side / 2.0)).abs() < 1e-3);
    assert!((b[1] - (220.0 + 15.0 * s - 1.0 - side / 2.0)).abs() < 1e-3);
    assert_eq!(a.extra, Extra::Mpii { center: [316.0, 220.0], scale: s, head_size: a.head_size() });
}

#[test]
fn mpii_unlabelled_joints_headbox_and_bad_json() {
    let dir = fixtures().join("mpii");
    let d = scratch("mpii");
    let p = d.join("m.json");
    let mut joints: Vec<[f64; 2]> = (0..16).map(|j| [100.0 + j as f64, 200.0 + 2.0 * j as f64]).collect();
    joints[0] = [-1.0, -1.0];
    let mut vis = vec![1; 16];
    vis[0] = 0;
    let entry = |extra: &str| {
        format!(
            r#"{{"image": "052475643.jpg", "center": [300.0, 250.0], "scale": 2.0, "joints": {}, "joints_vis": {}{extra}}}"#,
            serde_json::to_string(&joints).unwrap(),
            serde_json::to_string(&vis).unwrap()
        )
    };
    std::fs::write(&p, format!("[{}, {}]", entry(""), entry(r#", "headbox": [10, 20, 40, 60]"#))).unwrap();
    let set = load_mpii(&p, &dir).unwrap();
    assert_eq!(set.annotations.len(), 2);
    let a = &set.annotations[0];
    assert_eq!(a.keypoints[0], [0.0, 0.0, 0.0]);
    assert_eq!(a.keypoints[1], [100.0, 201.0, 2.0]);
    // Fallback head size: |joint 9 - joint 8| = |(1, 2)|.
    assert!((a.head_size().unwrap() - 5.0f32.sqrt()).abs() < 1e-4);
    // With a head box: 0.6 x its diagonal (30, 40) = 30.
    assert!((set.annotations[1].head_size().unwrap() - 30.0).abs() < 1e-4);
    // The test split has no joints: all unlabelled, no head size.
    std::fs::write(&p, r#"[{"image": "052475643.jpg", "center": [300.0, 250.0], "scale": 2.0}]"#).unwrap();
    let t = load_mpii(&p, &dir).unwrap();
    assert_eq!((t.annotations[0].num_labelled(), t.annotations[0].head_size()), (0, None));
    // Bad files.
    for text in [
        "[{",
        r#"{"image": "a.jpg"}"#,
        r#"[{"image": "a.jpg", "center": [1, 2], "scale": 1, "joints": [[1, 2]], "joints_vis": [1]}]"#,
        r#"[{"image": "a.jpg", "center": [1], "scale": 1}]"#,
    ] {
        std::fs::write(&p, text).unwrap();
        assert_format_err(load_mpii(&p, &dir), &p);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn mpii_mini_loads_all() {
    let Some(root) = shared("mpii-mini") else {
        return;
    };
    let set = load_mpii(&root.join("test_mpii.json"), &root).unwrap();
    assert_eq!((set.annotations.len(), set.missing.len()), (5, 0));
    // Entries 2 and 3 have both ankles unlabelled.
    assert_eq!(set.annotations[2].num_labelled(), 14);
    assert!(set.annotations.iter().all(|a| a.head_size().is_some()));
}

// ---------------------------------------------------------------------------------------------
// Person boxes

#[test]
fn person_box_rules() {
    let k = [[10.0, 20.0, 2.0], [30.0, 60.0, 1.0], [500.0, 500.0, 0.0]];
    assert_eq!(box_from_keypoints(&k, 1.0), Some([10.0, 20.0, 20.0, 40.0]));
    assert_eq!(box_from_keypoints(&k, 1.25), Some([7.5, 15.0, 25.0, 50.0]));
    assert_eq!(box_from_keypoints(&k[2..], 1.25), None); // nothing labelled
    assert_eq!(box_from_keypoints(&[[5.0, 5.0, 2.0]], 1.25), None); // a single point
    assert_eq!(
        box_from_keypoints(&[[f32::NAN, 5.0, 2.0], [1.0, 1.0, 2.0], [3.0, 1.0, 2.0]], 1.0),
        Some([1.0, 1.0, 2.0, 0.0])
    );
    assert_eq!(box_from_center_scale([100.0, 100.0], 1.0), [0.0, 0.0, 200.0, 200.0]);
    assert_eq!(mpii_box([-1.0, -1.0], 1.0), None);
    let b = mpii_box([101.0, 89.0], 0.8).unwrap();
    assert!(b.iter().zip([0.0, 0.0, 200.0, 200.0]).all(|(x, y)| (x - y).abs() < 1e-4), "{b:?}");
}
