//! A plain owned f32 tensor: parameters, inputs and outputs of the executors.

use crate::error::{Error, Result};

/// Dense row-major f32 tensor. Activations are always 4-D NCHW; parameters have their own
/// shapes (conv weights `[cout, cin/groups, kh, kw]`, per-channel vectors `[c]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first (`[n, c, h, w]` for activations).
    pub shape: Vec<usize>,
    /// The values in row-major order; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor, checking that `data` has exactly the number of elements `shape` implies.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = checked_numel(&shape)?;
        if n != data.len() {
            return Err(Error::Input(format!("tensor of shape {shape:?} needs {n} values, got {}", data.len())));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros (no overflow check: for shapes the caller built).
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }

    /// A tensor with every value `v` (no overflow check: for shapes the caller built).
    pub fn filled(shape: Vec<usize>, v: f32) -> Self {
        let n = shape.iter().product();
        Tensor { shape, data: vec![v; n] }
    }

    /// Number of values (`data.len()`).
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The shape as NCHW; errors when the tensor is not 4-D.
    pub fn nchw(&self) -> Result<[usize; 4]> {
        match self.shape[..] {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(Error::Input(format!("expected a 4-D NCHW tensor, got shape {:?}", self.shape))),
        }
    }

    /// Index of the first non-finite value, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        // Blocks tested by a fold without early exit, which vectorises (`position` over the
        // whole tensor ran one value per cycle: every CPU inference validates its input), then
        // the position inside the one block that has one.
        const BLOCK: usize = 1024;
        self.data.chunks(BLOCK).enumerate().find_map(|(b, c)| {
            if c.iter().fold(false, |bad, v| bad | !v.is_finite()) {
                c.iter().position(|v| !v.is_finite()).map(|i| b * BLOCK + i)
            } else {
                None
            }
        })
    }
}

/// Product of dimensions, refusing overflow (an absurd shape must be an error, not a wrap).
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::TooLarge(format!("shape {shape:?} has more elements than fit in memory")))
}

/// Largest absolute difference between two slices, and the largest relative one
/// (|a-b| / max(1, |b|)); used by tests and parity checks.
pub fn max_abs_rel_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    let mut abs = 0f32;
    let mut rel = 0f32;
    for (&x, &y) in a.iter().zip(b) {
        let d = (x - y).abs();
        abs = abs.max(d);
        rel = rel.max(d / y.abs().max(1.0));
    }
    if a.len() != b.len() {
        return (f32::INFINITY, f32::INFINITY);
    }
    (abs, rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first NaN or infinity wherever it falls: first and last element, on both sides of a
    /// block boundary, several in one block, none; an empty tensor has none.
    #[test]
    fn first_non_finite_finds_the_first() {
        let n = 3 * 1024 + 17;
        let clean = Tensor { shape: vec![n], data: (0..n).map(|i| i as f32 - 1000.0).collect() };
        assert_eq!(clean.first_non_finite(), None);
        assert_eq!(Tensor { shape: vec![0], data: vec![] }.first_non_finite(), None);
        for (at, bad) in
            [(0, f32::NAN), (1023, f32::INFINITY), (1024, f32::NEG_INFINITY), (n - 1, f32::NAN), (2500, f32::NAN)]
        {
            let mut t = clean.clone();
            t.data[at] = bad;
            // A later one in the same block and one in a later block change nothing.
            if at + 3 < n {
                t.data[at + 3] = f32::NAN;
            }
            if at + 1500 < n {
                t.data[at + 1500] = f32::INFINITY;
            }
            assert_eq!(t.first_non_finite(), Some(at), "{bad} at {at}");
        }
    }
}
