//! Reading and writing NumPy `.npy` files of little-endian float32 (`<f4`), C order: the
//! exchange format of `wgpose run` and the parity scripts. Anything else is a clear error.

use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::{checked_numel, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Refuse headers and tensors beyond sane sizes rather than allocating whatever a file claims.
const MAX_HEADER: usize = 1 << 16;

fn fmt_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format { path: path.display().to_string(), msg: msg.into() }
}

/// Reads a `.npy` file of `<f4` values in C order. Errors: [`Error::Io`] when the file
/// cannot be read, [`Error::Format`] when it is not such an array (other dtype, Fortran order,
/// truncated data, absurd header).
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    parse(path, &bytes)
}

/// [`read`] on bytes already in memory; `path` only names the source in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Tensor> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(fmt_err(path, "not a .npy file (bad magic)"));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        _ => return Err(fmt_err(path, format!("unsupported .npy version {major}"))),
    };
    if hlen > MAX_HEADER || start + hlen > bytes.len() {
        return Err(fmt_err(path, "truncated .npy header"));
    }
    let header = std::str::from_utf8(&bytes[start..start + hlen]).map_err(|_| fmt_err(path, "header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| fmt_err(path, "header has no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if descr != "<f4" && descr != "|f4" {
        return Err(fmt_err(path, format!("dtype {descr} is not float32 (<f4); convert with .astype(np.float32)")));
    }
    let fortran = dict_value(header, "fortran_order").ok_or_else(|| fmt_err(path, "header has no 'fortran_order'"))?;
    if fortran.trim() != "False" {
        return Err(fmt_err(path, "Fortran-ordered arrays are not supported; use np.ascontiguousarray"));
    }
    let shape_txt = dict_value(header, "shape").ok_or_else(|| fmt_err(path, "header has no 'shape'"))?;
    let inner = shape_txt.trim().trim_start_matches('(').trim_end_matches(')');
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| fmt_err(path, format!("bad shape {shape_txt}"))))
        .collect::<Result<_>>()?;
    let n = checked_numel(&shape)?;
    let data_bytes = &bytes[start + hlen..];
    if data_bytes.len() != n * 4 {
        return Err(fmt_err(
            path,
            format!("shape {shape:?} needs {} bytes of data, file has {}", n * 4, data_bytes.len()),
        ));
    }
    let data = data_bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Tensor::new(shape, data)
}

/// The text after `'key':` up to the next top-level comma (tuples kept whole).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// The tensor as a version-1.0 `.npy` file (`<f4`, C order, its shape).
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    let shape = match t.shape.len() {
        1 => format!("({},)", t.shape[0]),
        _ => format!("({})", t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts at a multiple of 64 bytes, newline-terminated (format spec).
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &t.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes [`to_bytes`] to `path` ([`Error::Io`] on failure).
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    std::fs::write(path, to_bytes(t)).map_err(|e| Error::Io { path: path.display().to_string(), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let p = Path::new("t.npy");
        let t = Tensor::new(vec![2, 3, 1, 2], (0..12).map(|i| i as f32 * 0.5).collect()).unwrap();
        let b = to_bytes(&t);
        assert_eq!((10 + u16::from_le_bytes([b[8], b[9]]) as usize) % 64, 0);
        assert_eq!(parse(p, &b).unwrap(), t);
        let v = Tensor::new(vec![5], vec![1.0; 5]).unwrap();
        assert_eq!(parse(p, &to_bytes(&v)).unwrap(), v);
        // Truncated data, bad magic, wrong dtype: errors, never panics.
        assert!(parse(p, &b[..b.len() - 3]).is_err());
        assert!(parse(p, b"hello world").is_err());
        let f8 = String::from_utf8_lossy(&b).replace("<f4", "<f8");
        assert!(parse(p, f8.as_bytes()).is_err());
        for cut in 0..b.len() {
            let _ = parse(p, &b[..cut]);
        }
    }
}
