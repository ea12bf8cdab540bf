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
        self.data.iter().position(|v| !v.is_finite())
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
