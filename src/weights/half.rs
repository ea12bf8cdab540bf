//! Half-precision (IEEE 754 binary16) storage of weights files: the exact f16 -> f32 widening
//! the loader applies to F16 tensors, the round-to-nearest-even f32 -> f16 narrowing, and the
//! conversion of a whole weights file ([`convert_file_to_f16`], the `wgpose convert-weights
//! --f16` command).
//!
//! The conversion rule, per tensor: an F32 tensor is stored as F16 when the f16 rounding error
//! of every value is at most 2^-11 (half an f16 unit in the last place, relative) times the
//! tensor's largest magnitude; otherwise it stays F32. In practice a tensor stays F32 when one
//! of its values lies beyond the f16 range (|v| > 65504 rounds to infinity: an infinite error),
//! or when all its values are so small (below 2^-14, f16's subnormal range) that the largest of
//! them would keep fewer than 11 significant bits. Small values next to large ones in the same
//! tensor may become subnormal or zero: their absolute error (at most 2^-25) is then far below
//! the rounding error of the tensor's large values. Tensors already F16 are copied as they are;
//! no other dtype is accepted. The metadata (the model card) is kept unchanged.
//!
//! Measured on the shipped models (`models/README.md`, "Crate users"): f16 storage leaves the
//! fixture tests' numbers and the validation mean PCK unchanged (one detected-box figure moves
//! by 0.1 point).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, View};

use super::{parse, read_bytes, write_atomic};
use crate::error::{Error, Result};

/// The f32 value of the binary16 number with bits `h`; exact (every f16 value, subnormals,
/// infinities and NaN payloads included, is representable in f32).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // Subnormal: man * 2^-24. Shift the leading one up to the implicit-bit position.
            let shift = man.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((man << shift) & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// The binary16 bits of `x` rounded to the nearest f16 (ties to even), as IEEE 754 specifies:
/// values beyond the f16 range become infinities, values below half the smallest subnormal
/// become (signed) zero, NaN stays NaN.
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        // Infinity, or NaN (kept quiet and non-zero whatever its payload).
        return sign | 0x7c00 | if man != 0 { 0x200 | (man >> 13) as u16 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e <= 0 {
        // An f16 subnormal (or zero): the value in units of 2^-24 is m / 2^shift.
        let shift = (14 - e) as u32;
        if shift > 24 {
            return sign; // below half the smallest subnormal (2^-25): rounds to zero
        }
        let m = man | 0x80_0000;
        let (q, r, half) = (m >> shift, m & ((1 << shift) - 1), 1u32 << (shift - 1));
        let q = if r > half || (r == half && q & 1 == 1) { q + 1 } else { q };
        return sign | q as u16; // q == 0x400 is the smallest normal, correctly encoded
    }
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    let v = ((e as u32) << 10) | (man >> 13);
    let r = man & 0x1fff;
    // A carry out of the mantissa moves to the next exponent (and past the largest finite value
    // to infinity), which is the correct rounding.
    let v = if r > 0x1000 || (r == 0x1000 && v & 1 == 1) { v + 1 } else { v };
    sign | v as u16
}

/// `x` rounded to the nearest f16 and widened back: the value an F16 file would hold.
pub fn round_through_f16(x: f32) -> f32 {
    f16_bits_to_f32(f32_to_f16_bits(x))
}

/// A tensor [`convert_file_to_f16`] left in F32, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct KeptF32 {
    /// Tensor name.
    pub name: String,
    /// Its largest magnitude.
    pub largest: f32,
    /// The largest f16 rounding error among its values (infinite when a value overflows).
    pub max_error: f64,
}

/// What [`convert_file_to_f16`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct F16Conversion {
    /// Tensors in the file.
    pub tensors: usize,
    /// Tensors stored as F16 in the output (converted, or already F16 in the input).
    pub f16: usize,
    /// Tensors that stayed F32 under the rule of this module, by name.
    pub kept_f32: Vec<KeptF32>,
    /// Size of the input file in bytes.
    pub bytes_in: usize,
    /// Size of the output file in bytes.
    pub bytes_out: usize,
}

/// A tensor of either dtype, as raw little-endian bytes, for the safetensors writer.
struct RawView {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for RawView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The F16 bytes of `values` if the rule of this module allows it, else what was kept and why.
fn narrow(name: &str, values: &[f32]) -> std::result::Result<Vec<u8>, KeptF32> {
    let mut largest = 0f32;
    let mut max_error = 0f64;
    let mut bytes = Vec::with_capacity(values.len() * 2);
    for &v in values {
        let h = f32_to_f16_bits(v);
        largest = largest.max(v.abs());
        max_error = max_error.max((f16_bits_to_f32(h) as f64 - v as f64).abs());
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    // NaN never gets here (checked by the caller); an overflow gives an infinite error.
    if max_error > largest as f64 * (2f64).powi(-11) {
        return Err(KeptF32 { name: name.to_string(), largest, max_error });
    }
    Ok(bytes)
}

/// [`convert_file_to_f16`] for a file in memory (`label` names it in errors): the bytes of the
/// converted file and the report. The input's layout is checked as by
/// [`load_into`](super::load_into); its tensors must be F32 or F16 and finite.
pub fn convert_bytes_to_f16(bytes: &[u8], label: &str) -> Result<(Vec<u8>, F16Conversion)> {
    let fmt = |msg: String| Error::Format { path: label.to_string(), msg };
    if bytes.is_empty() {
        return Err(fmt("empty file (0 bytes); expected a safetensors weights file".into()));
    }
    let parsed = parse(bytes).map_err(fmt)?;
    let mut report = F16Conversion { bytes_in: bytes.len(), ..F16Conversion::default() };
    let mut views: Vec<(String, RawView)> = Vec::new();
    // By name, so the report lists tensors in a stable order.
    let mut names = parsed.tensors.names();
    names.sort_unstable();
    for name in names {
        let view = parsed.tensors.tensor(name).map_err(|e| fmt(format!("tensor `{name}`: {e}")))?;
        let shape = view.shape().to_vec();
        let (dtype, out) = match view.dtype() {
            Dtype::F16 => (Dtype::F16, view.data().to_vec()),
            Dtype::F32 => {
                let values: Vec<f32> =
                    view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(fmt(format!("tensor `{name}` has the non-finite value {} at index {i}", values[i])));
                }
                match narrow(name, &values) {
                    Ok(half) => (Dtype::F16, half),
                    Err(kept) => {
                        report.kept_f32.push(kept);
                        (Dtype::F32, view.data().to_vec())
                    }
                }
            }
            other => {
                return Err(fmt(format!(
                    "tensor `{name}` has dtype {other:?}; only F32 and F16 tensors can be converted"
                )))
            }
        };
        report.tensors += 1;
        if dtype == Dtype::F16 {
            report.f16 += 1;
        }
        views.push((name.to_string(), RawView { dtype, shape, bytes: out }));
    }
    let metadata: HashMap<String, String> = parsed.metadata.into_iter().collect();
    let out = safetensors::serialize(views, Some(metadata))
        .map_err(|e| fmt(format!("cannot serialise the converted tensors: {e}")))?;
    report.bytes_out = out.len();
    Ok((out, report))
}

/// Writes `output`: the weights file `input` with every F32 tensor stored as F16 where the rule
/// of this module allows it (the others stay F32), the same tensor names and shapes, and the same
/// metadata (model card). The write is atomic, as [`save`](super::save)'s. The result loads with
/// [`load_into`](super::load_into) (F16 widened exactly to f32).
///
/// Errors: an unreadable `input` is [`Error::Io`]; a malformed file, a tensor of another dtype
/// or a non-finite value is [`Error::Format`] naming the tensor.
pub fn convert_file_to_f16(input: &Path, output: &Path) -> Result<F16Conversion> {
    let bytes = read_bytes(input)?;
    let (out, report) = convert_bytes_to_f16(&bytes, &input.display().to_string())?;
    write_atomic(output, &out)?;
    Ok(report)
}
