//! The one place wgpose calls the `gemm` crate. Its entry point takes raw pointers and strides;
//! here every matrix is a slice with its shape and strides, and the furthest element each
//! matrix can touch is checked against its slice before the call, so the convolution,
//! autodiff and benchmark code that multiplies matrices stays safe code.

pub use gemm::Parallelism;

/// A read-only strided f32 matrix: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    /// `rows x cols`, row-major with rows `row_stride` apart.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Mat { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// The transpose of a row-major `cols x rows` matrix with rows `stride` apart.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
        Mat { data, rows, cols, row_stride: 1, col_stride: stride }
    }
}

/// A writable strided f32 matrix, laid out like [`Mat`].
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatMut<'a> {
    /// `rows x cols`, row-major with rows `row_stride` apart.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        MatMut { data, rows, cols, row_stride, col_stride: 1 }
    }
}

/// One past the furthest element a `rows x cols` matrix with these strides touches.
fn extent(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// `dst = lhs * rhs`, or `dst += lhs * rhs` when `accumulate`.
///
/// Panics when the shapes do not chain or a matrix reaches past its slice: both are bugs of
/// the caller (shapes come from validated graphs), never a consequence of user input.
pub fn matmul(dst: MatMut<'_>, lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool, par: Parallelism) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert!(lhs.rows == m && rhs.rows == k && rhs.cols == n, "matmul shapes do not chain");
    assert!(extent(m, n, dst.row_stride, dst.col_stride) <= dst.data.len(), "matmul dst out of bounds");
    assert!(extent(m, k, lhs.row_stride, lhs.col_stride) <= lhs.data.len(), "matmul lhs out of bounds");
    assert!(extent(k, n, rhs.row_stride, rhs.col_stride) <= rhs.data.len(), "matmul rhs out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above keep every element the GEMM reads or writes inside its slice;
    // `dst` is a unique borrow, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.col_stride as isize,
            dst.row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain triple loop, with strided and transposed operands and accumulation.
    #[test]
    fn matches_the_naive_product() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect(); // m x k row-major
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // n x k row-major
        let mut c = vec![1.0f32; m * (n + 2)];
        matmul(
            MatMut::rows(&mut c, m, n, n + 2),
            Mat::rows(&a, m, k, k),
            Mat::transposed(&bt, k, n, k),
            true,
            Parallelism::None,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum::<f32>();
                assert!((c[i * (n + 2) + j] - want).abs() < 1e-5, "({i}, {j})");
            }
            assert_eq!(&c[i * (n + 2) + n..i * (n + 2) + n + 2], &[1.0, 1.0], "padding untouched");
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_matrix_past_its_slice_is_refused() {
        let a = vec![0.0f32; 5];
        let mut c = vec![0.0f32; 4];
        matmul(MatMut::rows(&mut c, 2, 2, 2), Mat::rows(&a, 2, 3, 3), Mat::rows(&a, 3, 2, 2), false, Parallelism::None);
    }
}
