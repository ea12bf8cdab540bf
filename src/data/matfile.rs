//! A small reader for MATLAB level-5 MAT-files (the format `save` wrote up to v7, and
//! `scipy.io.savemat` writes): enough to read the `joints` arrays of LSP and LSP-extended.
//!
//! Supported: the 128-byte header with either endianness, top-level `miMATRIX` elements plain or
//! wrapped in `miCOMPRESSED` (zlib), the numeric classes (double, single, int8..uint64, logical)
//! with any storage type MATLAB uses to shrink them (e.g. a double array stored as `miUINT8`),
//! small-data-element tags, and array names. Only the real part is returned. Variables of other
//! classes (char, cell, struct, sparse, objects) are skipped without error. HDF5-based v7.3 files
//! and v4 files are rejected with a message saying so.
//!
//! Every malformed input (truncated, bad tag, wrong sizes, sizes larger than the file, a zlib
//! stream that inflates beyond what zlib can produce from its input) is an [`Error::Format`]
//! naming the file; nothing panics and no allocation is sized by a claim the bytes cannot back.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// One numeric variable: its dimensions and its real part as `f64`, column-major (first index
/// fastest), exactly as MATLAB stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct MatArray {
    /// MATLAB dimensions (at least two).
    pub dims: Vec<usize>,
    /// The values, column-major.
    pub data: Vec<f64>,
    /// The MATLAB class the values had (`"double"`, `"single"`, `"int16"`, `"logical"`, ...).
    pub class: &'static str,
}

impl MatArray {
    /// The element at a full index (one entry per dimension), column-major.
    pub fn get(&self, index: &[usize]) -> Option<f64> {
        if index.len() != self.dims.len() {
            return None;
        }
        let mut offset = 0usize;
        let mut stride = 1usize;
        for (&i, &d) in index.iter().zip(&self.dims) {
            if i >= d {
                return None;
            }
            offset += i * stride;
            stride *= d;
        }
        self.data.get(offset).copied()
    }
}

/// Largest decompressed size accepted for one `miCOMPRESSED` element (1 GiB).
const MAX_INFLATED: usize = 1 << 30;
/// zlib cannot expand data by more than about 1032:1; anything beyond is not a real stream.
const MAX_INFLATE_RATIO: usize = 1100;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;
const MI_UTF32: u32 = 18;

/// Reads every numeric variable of a MAT-file.
pub fn read_mat(path: &Path) -> Result<HashMap<String, MatArray>> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    parse_mat(&bytes, &path.display().to_string())
}

/// Parses MAT-file bytes; `name` is used in error messages (normally the file path).
pub fn parse_mat(bytes: &[u8], name: &str) -> Result<HashMap<String, MatArray>> {
    Parser { name, big: false }.file(bytes)
}

struct Parser<'a> {
    name: &'a str,
    big: bool,
}

/// A parsed data-element tag.
struct Tag {
    ty: u32,
    /// Byte count of the data.
    n: usize,
    /// Offset of the data.
    start: usize,
    /// Offset of the next element (after padding for plain elements).
    next: usize,
}

impl Parser<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Format { path: self.name.to_string(), msg: msg.into() }
    }

    fn u16_at(&self, b: &[u8], at: usize) -> Option<u16> {
        let s: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big { u16::from_be_bytes(s) } else { u16::from_le_bytes(s) })
    }

    fn u32_at(&self, b: &[u8], at: usize) -> Option<u32> {
        let s: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big { u32::from_be_bytes(s) } else { u32::from_le_bytes(s) })
    }

    fn file(&mut self, b: &[u8]) -> Result<HashMap<String, MatArray>> {
        if b.len() < 128 {
            return Err(self.err(format!("{} bytes: too short for a MAT-file header (128 bytes)", b.len())));
        }
        self.big =
            match &b[126..128] {
                b"IM" => false,
                b"MI" => true,
                _ => return Err(self.err(
                    "not a MATLAB 5 MAT-file (no endianness indicator at byte 126; MATLAB v4 files are not supported)",
                )),
            };
        let version = self.u16_at(b, 124).unwrap_or(0);
        if version == 0x0200 {
            return Err(self.err("MATLAB v7.3 (HDF5) MAT-files are not supported; save with -v7 or -v6"));
        }
        if version != 0x0100 {
            return Err(self.err(format!("unsupported MAT-file version 0x{version:04x}")));
        }
        let mut vars = HashMap::new();
        self.elements(b, 128, true, &mut vars)?;
        Ok(vars)
    }

    /// Reads the tag at `pos` of `b`; `top` elements are not padded (compressed ones never are).
    fn tag(&self, b: &[u8], pos: usize, top: bool) -> Result<Tag> {
        let w = self.u32_at(b, pos).ok_or_else(|| self.err(format!("truncated element tag at byte {pos}")))?;
        if w >> 16 != 0 {
            // Small data element: type and size packed in 4 bytes, data in the next 4.
            let n = (w >> 16) as usize;
            if n > 4 {
                return Err(self.err(format!("bad small element tag at byte {pos} ({n} bytes)")));
            }
            if pos + 8 > b.len() {
                return Err(self.err(format!("truncated small element at byte {pos}")));
            }
            return Ok(Tag { ty: w & 0xffff, n, start: pos + 4, next: pos + 8 });
        }
        let n =
            self.u32_at(b, pos + 4).ok_or_else(|| self.err(format!("truncated element tag at byte {pos}")))? as usize;
        let start = pos + 8;
        let avail = b.len() - start.min(b.len());
        if n > avail {
            return Err(self.err(format!(
                "element at byte {pos} claims {n} bytes but only {avail} remain (truncated or corrupt)"
            )));
        }
        let end = start + n;
        let next = if top || w == MI_COMPRESSED { end } else { (end + 7) & !7 };
        Ok(Tag { ty: w, n, start, next: next.min(b.len()) })
    }

    fn elements(&self, b: &[u8], mut pos: usize, top: bool, vars: &mut HashMap<String, MatArray>) -> Result<()> {
        while pos < b.len() {
            let t = self.tag(b, pos, top)?;
            let data = &b[t.start..t.start + t.n];
            match t.ty {
                MI_COMPRESSED if top => {
                    let inflated = self.inflate(data, pos)?;
                    self.elements(&inflated, 0, false, vars)?;
                }
                MI_MATRIX => {
                    if let Some((name, arr)) = self.matrix(data, pos)? {
                        vars.insert(name, arr);
                    }
                }
                ty => {
                    return Err(self.err(format!(
                        "unexpected element type {ty} at byte {pos} (expected miMATRIX or miCOMPRESSED)"
                    )))
                }
            }
            if t.next <= pos {
                return Err(self.err(format!("element at byte {pos} does not advance")));
            }
            pos = t.next;
        }
        Ok(())
    }

    /// Inflates a compressed element's stream: reads the inner tag first and then only the bytes it
    /// claims, so memory grows with data that is really there, never with a claimed size alone.
    fn inflate(&self, data: &[u8], pos: usize) -> Result<Vec<u8>> {
        let err = |m: String| self.err(format!("compressed element at byte {pos}: {m}"));
        let limit = MAX_INFLATED.min(data.len().saturating_mul(MAX_INFLATE_RATIO).saturating_add(4096));
        let mut dec = flate2::read::ZlibDecoder::new(data);
        let mut head = [0u8; 8];
        dec.read_exact(&mut head).map_err(|e| err(e.to_string()))?;
        let w = self.u32_at(&head, 0).unwrap_or(0);
        let n = self.u32_at(&head, 4).unwrap_or(0) as usize;
        let total = if w >> 16 != 0 { 8 } else { 8 + n };
        if total > limit {
            return Err(err(format!(
                "inner element claims {n} bytes, more than {limit} (the most {} compressed bytes can hold)",
                data.len()
            )));
        }
        let mut out = Vec::with_capacity(total.min(data.len().saturating_mul(8)).max(8));
        out.extend_from_slice(&head);
        dec.take((total - 8) as u64).read_to_end(&mut out).map_err(|e| err(e.to_string()))?;
        if out.len() < total {
            return Err(err(format!("inner element claims {n} bytes but the stream holds {}", out.len() - 8)));
        }
        Ok(out)
    }

    /// Parses one miMATRIX body. Returns None for classes that are not numeric arrays.
    fn matrix(&self, b: &[u8], pos: usize) -> Result<Option<(String, MatArray)>> {
        if b.is_empty() {
            return Ok(None); // an empty matrix element (used inside cells)
        }
        let at = |what: &str| format!("{what} of the array at byte {pos}");
        // Array flags.
        let flags = self.tag(b, 0, false)?;
        if flags.ty != MI_UINT32 || flags.n != 8 {
            return Err(self.err(format!(
                "{}: expected miUINT32 x 2, got type {} with {} bytes",
                at("flags"),
                flags.ty,
                flags.n
            )));
        }
        let f0 = self.u32_at(b, flags.start).ok_or_else(|| self.err(at("truncated flags")))?;
        let class_id = f0 & 0xff;
        let logical = f0 & 0x0200 != 0;
        let class = match class_id {
            6 => "double",
            7 => "single",
            8 => "int8",
            9 if logical => "logical",
            9 => "uint8",
            10 => "int16",
            11 => "uint16",
            12 => "int32",
            13 => "uint32",
            14 => "int64",
            15 => "uint64",
            1..=5 | 16..=18 => return Ok(None), // cell, struct, object, char, sparse, function, opaque
            c => return Err(self.err(format!("{}: unknown array class {c}", at("flags")))),
        };
        // Dimensions.
        let dt = self.tag(b, flags.next, false)?;
        if dt.ty != MI_INT32 || dt.n % 4 != 0 || dt.n == 0 {
            return Err(self.err(format!(
                "{}: expected miINT32 values, got type {} with {} bytes",
                at("dimensions"),
                dt.ty,
                dt.n
            )));
        }
        let mut dims = Vec::with_capacity(dt.n / 4);
        for i in 0..dt.n / 4 {
            let d = self.u32_at(b, dt.start + 4 * i).ok_or_else(|| self.err(at("truncated dimensions")))? as i32;
            if d < 0 {
                return Err(self.err(format!("{}: negative dimension {d}", at("dimensions"))));
            }
            dims.push(d as usize);
        }
        let count = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| self.err(format!("{}: {dims:?} overflows", at("dimensions"))))?;
        // Name.
        let nt = self.tag(b, dt.next, false)?;
        if nt.ty != MI_INT8 && nt.ty != MI_UINT8 && nt.ty != MI_UTF8 {
            return Err(self.err(format!("{}: expected miINT8 text, got type {}", at("name"), nt.ty)));
        }
        let name = String::from_utf8_lossy(&b[nt.start..nt.start + nt.n]).into_owned();
        // Real part.
        if nt.next >= b.len() {
            if count == 0 {
                return Ok(Some((name, MatArray { dims, data: Vec::new(), class })));
            }
            return Err(self.err(format!("variable `{name}`: missing real part")));
        }
        let rt = self.tag(b, nt.next, false)?;
        let raw = &b[rt.start..rt.start + rt.n];
        let data = self.numbers(rt.ty, raw).map_err(|m| self.err(format!("variable `{name}`: {m}")))?;
        if data.len() != count {
            return Err(self.err(format!(
                "variable `{name}`: dimensions {dims:?} need {count} values but the real part holds {}",
                data.len()
            )));
        }
        Ok(Some((name, MatArray { dims, data, class })))
    }

    fn numbers(&self, ty: u32, raw: &[u8]) -> std::result::Result<Vec<f64>, String> {
        let size = match ty {
            MI_INT8 | MI_UINT8 | MI_UTF8 => 1,
            MI_INT16 | MI_UINT16 | MI_UTF16 => 2,
            MI_INT32 | MI_UINT32 | MI_SINGLE | MI_UTF32 => 4,
            MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
            t => return Err(format!("real part has non-numeric type {t}")),
        };
        if !raw.len().is_multiple_of(size) {
            return Err(format!("real part of {} bytes is not a multiple of {size}", raw.len()));
        }
        let big = self.big;
        let chunks = raw.chunks_exact(size);
        let v: Vec<f64> = match ty {
            MI_INT8 => chunks.map(|c| c[0] as i8 as f64).collect(),
            MI_UINT8 | MI_UTF8 => chunks.map(|c| c[0] as f64).collect(),
            MI_INT16 => chunks
                .map(|c| fix2(c, big, |a| i16::from_le_bytes(a) as f64, |a| i16::from_be_bytes(a) as f64))
                .collect(),
            MI_UINT16 | MI_UTF16 => chunks
                .map(|c| fix2(c, big, |a| u16::from_le_bytes(a) as f64, |a| u16::from_be_bytes(a) as f64))
                .collect(),
            MI_INT32 => chunks
                .map(|c| fix4(c, big, |a| i32::from_le_bytes(a) as f64, |a| i32::from_be_bytes(a) as f64))
                .collect(),
            MI_UINT32 | MI_UTF32 => chunks
                .map(|c| fix4(c, big, |a| u32::from_le_bytes(a) as f64, |a| u32::from_be_bytes(a) as f64))
                .collect(),
            MI_SINGLE => chunks
                .map(|c| fix4(c, big, |a| f32::from_le_bytes(a) as f64, |a| f32::from_be_bytes(a) as f64))
                .collect(),
            MI_DOUBLE => chunks.map(|c| fix8(c, big, f64::from_le_bytes, f64::from_be_bytes)).collect(),
            MI_INT64 => chunks
                .map(|c| fix8(c, big, |a| i64::from_le_bytes(a) as f64, |a| i64::from_be_bytes(a) as f64))
                .collect(),
            _ => chunks
                .map(|c| fix8(c, big, |a| u64::from_le_bytes(a) as f64, |a| u64::from_be_bytes(a) as f64))
                .collect(),
        };
        Ok(v)
    }
}

fn fix2(c: &[u8], big: bool, le: impl Fn([u8; 2]) -> f64, be: impl Fn([u8; 2]) -> f64) -> f64 {
    let a = [c[0], c[1]];
    if big {
        be(a)
    } else {
        le(a)
    }
}

fn fix4(c: &[u8], big: bool, le: impl Fn([u8; 4]) -> f64, be: impl Fn([u8; 4]) -> f64) -> f64 {
    let a = [c[0], c[1], c[2], c[3]];
    if big {
        be(a)
    } else {
        le(a)
    }
}

fn fix8(c: &[u8], big: bool, le: impl Fn([u8; 8]) -> f64, be: impl Fn([u8; 8]) -> f64) -> f64 {
    let a = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
    if big {
        be(a)
    } else {
        le(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian v5 file with one uncompressed int16 variable and small-element name.
    fn tiny() -> Vec<u8> {
        tiny_endian(false)
    }

    /// A v5 file with one uncompressed int16 variable `a` (2 x 3) whose name is a small element.
    fn tiny_endian(big: bool) -> Vec<u8> {
        let w32 = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: i16| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut f = vec![b' '; 116];
        f[..10].copy_from_slice(b"MATLAB 5.0");
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&if big { 0x0100u16.to_be_bytes() } else { 0x0100u16.to_le_bytes() });
        f.extend_from_slice(if big { b"MI" } else { b"IM" });
        let mut m = Vec::new();
        for v in [MI_UINT32, 8, 10, 0, MI_INT32, 8, 2, 3, (1 << 16) | MI_INT8] {
            m.extend_from_slice(&w32(v)); // flags (int16 class), dims 2 x 3, small name tag
        }
        m.extend_from_slice(&[b'a', 0, 0, 0]);
        m.extend_from_slice(&w32(MI_INT16));
        m.extend_from_slice(&w32(12));
        for v in [1i16, -2, 3, -4, 5, -6] {
            m.extend_from_slice(&w16(v));
        }
        m.extend_from_slice(&[0; 4]);
        f.extend_from_slice(&w32(MI_MATRIX));
        f.extend_from_slice(&w32(m.len() as u32));
        f.extend_from_slice(&m);
        f
    }

    #[test]
    fn reads_big_endian() {
        let v = parse_mat(&tiny_endian(true), "t.mat").unwrap();
        assert_eq!(v["a"].dims, vec![2, 3]);
        assert_eq!(v["a"].data, vec![1.0, -2.0, 3.0, -4.0, 5.0, -6.0]);
    }

    #[test]
    fn reads_uncompressed_small_name_int16() {
        let v = parse_mat(&tiny(), "t.mat").unwrap();
        let a = &v["a"];
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, -2.0, 3.0, -4.0, 5.0, -6.0]);
        assert_eq!(a.class, "int16");
        assert_eq!(a.get(&[1, 2]), Some(-6.0));
        assert_eq!(a.get(&[2, 0]), None);
    }

    #[test]
    fn header_only_is_an_empty_file() {
        assert!(parse_mat(&tiny()[..128], "t.mat").unwrap().is_empty());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let f = tiny();
        for n in (0..f.len()).filter(|&n| n != 128) {
            let e = parse_mat(&f[..n], "t.mat");
            assert!(matches!(e, Err(Error::Format { .. })), "length {n}: {e:?}");
        }
    }
}
