//! Half-precision weights: the f16 <-> f32 bit conversions against exhaustive and by-hand
//! references, and `convert_file_to_f16` (and the `wgpose convert-weights --f16` command) round
//! trips on a small model, including the tensors the rule keeps in F32.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use wgpose::graph::Graph;
use wgpose::models::config;
use wgpose::rng::Rng;
use wgpose::weights::half::{convert_bytes_to_f16, convert_file_to_f16, f16_bits_to_f32, f32_to_f16_bits};
use wgpose::weights::{load_into, named_params, named_params_mut, read_card, save, ModelCard};
use wgpose::Error;

mod common;
use common::TempDir;

/// Every finite f16 widens to an f32 that narrows back to the same bits (so widening is exact
/// and narrowing returns representable values unchanged); infinities and NaN keep their class.
#[test]
fn every_f16_round_trips_through_f32() {
    for h in 0..=u16::MAX {
        let w = f16_bits_to_f32(h);
        if h & 0x7c00 == 0x7c00 && h & 0x3ff != 0 {
            assert!(w.is_nan(), "{h:#06x} is a NaN");
            assert!(f16_bits_to_f32(f32_to_f16_bits(w)).is_nan());
        } else {
            assert_eq!(f32_to_f16_bits(w), h, "{h:#06x} widened to {w:e}");
        }
    }
}

/// Narrowing picks the nearest f16 (ties to the even one) for random f32 values across the
/// whole f16 range, subnormals included, checked against the neighbouring f16 values in f64.
#[test]
fn narrowing_rounds_to_nearest_even() {
    let mut rng = Rng::new(11);
    for i in 0..200_000 {
        // Exponents from 2^-27 to 2^14 with random mantissas and signs (values up to 2^15; the
        // overflow to infinity above 65520 is checked by hand below).
        let exp = 100 + (rng.next_u64() % 42) as u32;
        let bits = (rng.next_u64() as u32 & 0x8000_0000) | (exp << 23) | (rng.next_u64() as u32 & 0x7f_ffff);
        let x = f32::from_bits(bits);
        let h = f32_to_f16_bits(x);
        let err = (f16_bits_to_f32(h) as f64 - x as f64).abs();
        for n in [h.wrapping_sub(1), h.wrapping_add(1)] {
            // Neighbours of the same sign (the magnitude is monotonic in the low 15 bits).
            if (n ^ h) & 0x8000 != 0 || n & 0x7c00 == 0x7c00 {
                continue;
            }
            let other = (f16_bits_to_f32(n) as f64 - x as f64).abs();
            assert!(err <= other, "case {i}: {x:e} -> {h:#06x} (error {err:e}) but {n:#06x} is nearer");
            if err == other {
                assert_eq!(h & 1, 0, "case {i}: {x:e} is a tie and {h:#06x} is odd");
            }
        }
    }
    // By hand: the range edges, ties and underflow.
    let cases: [(f32, u16); 10] = [
        (65504.0, 0x7bff),
        (65519.0, 0x7bff),
        (65520.0, 0x7c00), // halfway to 2^16: ties to even, which is infinity
        (-1e6, 0xfc00),
        (1.0 + 2f32.powi(-11), 0x3c00),            // tie between 1 and 1+2^-10: even is 1
        (1.0 + 3.0 * 2f32.powi(-11), 0x3c02),      // tie: even is 1+2^-9
        (2f32.powi(-24), 0x0001),                  // smallest subnormal
        (2f32.powi(-25), 0x0000),                  // half of it: tie to even (zero)
        (2f32.powi(-25) * 1.0001, 0x0001),         // just above half: rounds up
        (2f32.powi(-14) - 2f32.powi(-25), 0x0400), // tie: even is the smallest normal
    ];
    for (x, want) in cases {
        assert_eq!(f32_to_f16_bits(x), want, "{x:e}");
    }
    assert_eq!(f32_to_f16_bits(-0.0), 0x8000);
    assert_eq!(f32_to_f16_bits(f32::INFINITY), 0x7c00);
    assert!(f16_bits_to_f32(f32_to_f16_bits(f32::NAN)).is_nan());
}

fn small_model() -> (Graph, ModelCard) {
    let cfg = config("ldcrn-w16-lsp").unwrap();
    let mut g = cfg.build(3).unwrap();
    let mut rng = Rng::new(5);
    for (name, t) in named_params_mut(&mut g) {
        let (lo, hi) = if name.ends_with("running_var") { (0.5, 1.5) } else { (-0.5, 0.5) };
        for v in &mut t.data {
            *v = rng.range(lo, hi);
        }
    }
    let card = ModelCard { training_data: "f16 test".into(), ..ModelCard::for_model(&cfg, &g) };
    (g, card)
}

/// The rule on a model: an out-of-range variance and an all-tiny tensor stay F32 (bit for bit),
/// every other tensor becomes F16 and loads as the f16 rounding of its values; the card is kept;
/// converting the converted file again changes nothing.
#[test]
fn conversion_round_trip_keeps_what_f16_cannot_hold() {
    let dir = TempDir::new("convert");
    let (mut g, card) = small_model();
    let names: Vec<String> = named_params(&g).into_iter().map(|(n, _)| n).collect();
    let var = names.iter().find(|n| n.ends_with("running_var")).unwrap().clone();
    let tiny = names.iter().find(|n| n.ends_with(".weight")).unwrap().clone();
    // A small value next to large ones in the same tensor may go subnormal: that is allowed.
    let mixed = names.iter().filter(|n| n.ends_with(".weight")).nth(1).unwrap().clone();
    for (name, t) in named_params_mut(&mut g) {
        if name == var {
            t.data[0] = 188_095.0;
        } else if name == tiny {
            for (i, v) in t.data.iter_mut().enumerate() {
                *v = 1e-6 * (1.0 + i as f32 / 1000.0);
            }
        } else if name == mixed {
            t.data[0] = 3e-7;
        }
    }
    let f32_path = dir.join("model.safetensors");
    let f16_path = dir.join("model-f16.safetensors");
    save(&f32_path, &g, &card).unwrap();
    let report = convert_file_to_f16(&f32_path, &f16_path).unwrap();
    let kept: Vec<&str> = report.kept_f32.iter().map(|k| k.name.as_str()).collect();
    let mut want_kept = vec![var.as_str(), tiny.as_str()];
    want_kept.sort_unstable();
    assert_eq!(kept, want_kept);
    assert_eq!(report.tensors, names.len());
    assert_eq!(report.f16, names.len() - 2);
    assert!(report.kept_f32[kept.iter().position(|k| *k == var).unwrap()].max_error.is_infinite());
    assert_eq!(report.bytes_out, std::fs::metadata(&f16_path).unwrap().len() as usize);
    assert!(report.bytes_out < report.bytes_in * 6 / 10, "{report:?}");

    assert_eq!(read_card(&f16_path).unwrap(), card);
    let mut loaded = config("ldcrn-w16-lsp").unwrap().build(9).unwrap();
    load_into(&f16_path, &mut loaded).unwrap();
    for ((name, orig), (_, got)) in named_params(&g).into_iter().zip(named_params(&loaded)) {
        let want: Vec<u32> = if name == var || name == tiny {
            orig.data.iter().map(|v| v.to_bits()).collect()
        } else {
            orig.data.iter().map(|&v| f16_bits_to_f32(f32_to_f16_bits(v)).to_bits()).collect()
        };
        let got: Vec<u32> = got.data.iter().map(|v| v.to_bits()).collect();
        assert!(got == want, "{name}: loaded values are not the rule's rounding of the saved ones");
    }
    let bytes = std::fs::read(&f16_path).unwrap();
    let dtypes = |b: &[u8]| -> HashMap<String, (Dtype, Vec<u8>)> {
        SafeTensors::deserialize(b)
            .unwrap()
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, (v.dtype(), v.data().to_vec())))
            .collect()
    };
    assert_eq!(dtypes(&bytes)[&var].0, Dtype::F32);
    assert_eq!(dtypes(&bytes)[&mixed].0, Dtype::F16);
    let (again, report2) = convert_bytes_to_f16(&bytes, "f16 file").unwrap();
    assert_eq!(dtypes(&again), dtypes(&bytes), "converting twice changed the tensors");
    assert_eq!(report2.kept_f32.len(), 2);
}

/// Inputs the converter refuses: another dtype and a non-finite value (named), an empty or
/// missing file.
#[test]
fn conversion_refuses_what_it_cannot_convert() {
    let dir = TempDir::new("refuse");
    let i64_bytes = vec![0u8; 8 * 3];
    let f32_bytes: Vec<u8> = [1.0f32, f32::NAN, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let cases = [("ints", Dtype::I64, &i64_bytes, "I64"), ("nan", Dtype::F32, &f32_bytes, "NaN")];
    for (name, dtype, data, needle) in cases {
        let view = TensorView::new(dtype, vec![3], data).unwrap();
        let bytes = safetensors::serialize([(name, view)], None).unwrap();
        match convert_bytes_to_f16(&bytes, "input") {
            Err(Error::Format { msg, .. }) => assert!(msg.contains(name) && msg.contains(needle), "{msg}"),
            other => panic!("{name}: expected a format error, got {other:?}"),
        }
    }
    assert!(matches!(convert_bytes_to_f16(&[], "empty"), Err(Error::Format { .. })));
    let missing = dir.join("missing.safetensors");
    assert!(matches!(convert_file_to_f16(&missing, &dir.join("out.safetensors")), Err(Error::Io { .. })));
}

/// The command line: converts, names the tensor it kept in F32, refuses to run without --f16.
#[test]
fn convert_weights_command() {
    let dir = TempDir::new("cli");
    let (mut g, card) = small_model();
    let var = named_params(&g).into_iter().map(|(n, _)| n).find(|n| n.ends_with("running_var")).unwrap();
    for (name, t) in named_params_mut(&mut g) {
        if name == var {
            t.data[1] = 70_000.0;
        }
    }
    let input = dir.join("in.safetensors");
    let output = dir.join("out.safetensors");
    save(&input, &g, &card).unwrap();
    let bin = env!("CARGO_BIN_EXE_wgpose");
    let out =
        std::process::Command::new(bin).args(["convert-weights", "--f16"]).arg(&input).arg(&output).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("kept F32: {var}")), "{stdout}");
    let mut loaded = config("ldcrn-w16-lsp").unwrap().build(0).unwrap();
    assert_eq!(load_into(&output, &mut loaded).unwrap(), card);
    let out = std::process::Command::new(bin).arg("convert-weights").arg(&input).arg(&output).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--f16"));
}
