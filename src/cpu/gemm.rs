//! wgpose's own f32 matrix product, the inner loop of every CPU convolution (forward and
//! backward).
//!
//! Layout, after the BLIS/MLAS scheme, reduced to what convolutions need:
//! - the destination is cut into tiles of `MR` rows x `NR` columns; one register-resident
//!   micro-kernel computes a whole tile over the full depth `k` (no partial sums written back);
//! - the right operand is packed once per column panel (`k x NR`, contiguous, zero-padded), so
//!   the micro-kernel streams it with two vector loads per depth step;
//! - the left operand (a convolution's weights) is **not** repacked: the micro-kernel broadcasts
//!   its `MR` values per depth step straight from the caller's strided matrix, so weights are
//!   never copied per call (the `gemm` crate used before repacked them on every call);
//! - the micro-kernel is one generic Rust function compiled several times with different
//!   `#[target_feature]`s (AVX-512, AVX2+FMA) and tile shapes; LLVM turns its fixed-size arrays
//!   into registers (checked with `objdump`: one `vfmadd231ps` per accumulator register per depth step,
//!   no spills). aarch64 (NEON and FMA are baseline) and wasm32 use the same function with their
//!   own tile shape: one code base for every CPU. The one exception is the browser build with
//!   WebAssembly relaxed SIMD: Rust has no portable way to ask wasm for a fused multiply-add
//!   (`mul_add` is a libm call there), so that build's tile is written with
//!   `f32x4_relaxed_madd` (`tile_kernel_relaxed`), about 1.3x faster in Chromium (web/build.sh).
//!
//! The kernel is picked at run time from the CPU's features. `WGPOSE_CPU_KERNEL=avx2` or
//! `=portable` forces a narrower one (never a wider one than the CPU has), which is how the AVX2
//! path is measured on an AVX-512 machine.
//!
//! Every matrix is a slice with its shape and strides; the furthest element each one can touch
//! is checked against its slice before any raw-pointer access, so callers stay safe code.

use std::cell::RefCell;
use std::sync::OnceLock;

use super::parallel;

/// How a product may use threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// On the calling thread only (e.g. inside an outer parallel loop).
    None,
    /// Split over the threads of the run (`parallel`), aiming at this many.
    Rayon(usize),
}

/// A read-only strided f32 matrix: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    /// The values (at least one past the furthest element the shape and strides reach).
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance in `data` between consecutive rows.
    pub row_stride: usize,
    /// Distance in `data` between consecutive columns.
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

    fn t(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// A writable strided f32 matrix, laid out like [`Mat`].
pub struct MatMut<'a> {
    /// The values (at least one past the furthest element the shape and strides reach).
    pub data: &'a mut [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance in `data` between consecutive rows.
    pub row_stride: usize,
    /// Distance in `data` between consecutive columns.
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

/// The micro-kernel family a product runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// x86-64 with AVX-512F: 8 x 32 tiles (16 zmm accumulators).
    Avx512,
    /// x86-64 with AVX2 and FMA: 6 x 16 tiles (12 ymm accumulators).
    Avx2,
    /// x86-64 with AVX2 and FMA, 8 x 8 tiles (8 ymm accumulators, one per row): the indirect
    /// convolution's kernel for layers of at most 8 output channels (LDCRN's), where 16-wide
    /// tiles would compute as many zero columns as real ones. Never picked by [`Kernel::detect`].
    Avx2Narrow,
    /// Any CPU (aarch64 NEON, and wasm32 SIMD128 in the browser build, through LLVM's vectoriser):
    /// 8 x 8 tiles on aarch64, 6 x 8 elsewhere (see `PORTABLE_MR`).
    Portable,
}

impl Kernel {
    /// The widest kernel this CPU runs, narrowed by `WGPOSE_CPU_KERNEL` (`avx2`, `portable`).
    pub fn detect() -> Kernel {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let best = Kernel::best_supported();
            match std::env::var("WGPOSE_CPU_KERNEL").as_deref() {
                Ok("portable") => Kernel::Portable,
                Ok("avx2") if best != Kernel::Portable => Kernel::Avx2,
                _ => best,
            }
        })
    }

    fn best_supported() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            // (The AVX-512 tile also uses FMA, and its store AVX2 transposes: every AVX-512 CPU
            // has both, but a virtual machine may mask features one by one.)
            if avx2 && is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            if avx2 {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Every kernel this CPU can run (for tests).
    pub fn supported() -> Vec<Kernel> {
        let best = Kernel::best_supported();
        [Kernel::Avx512, Kernel::Avx2, Kernel::Avx2Narrow, Kernel::Portable]
            .into_iter()
            .filter(|k| match best {
                Kernel::Avx512 => true,
                Kernel::Avx2 | Kernel::Avx2Narrow => *k != Kernel::Avx512,
                Kernel::Portable => *k == Kernel::Portable,
            })
            .collect()
    }

    /// Tile rows and columns.
    pub(crate) fn shape(self) -> (usize, usize) {
        match self {
            Kernel::Avx512 => (AVX512_MR, 32),
            Kernel::Avx2 => (6, 16),
            Kernel::Avx2Narrow => (8, 8),
            Kernel::Portable => (PORTABLE_MR, 8),
        }
    }

    /// A short name for tables (`avx512`, `avx2`, `portable`).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Avx2Narrow => "avx2-narrow",
            Kernel::Portable => "portable",
        }
    }
}

/// `tile[MR x NR] = A[MR x k] * B`, element `(i, p)` of `A` read by `a_at(i, p)`, row `p` of
/// `B` the `NR` values at `b_row(p)`. Written to be vectorised along `NR` with `acc` kept in
/// registers; `a_at` is a strided matrix (`a[i * ars + p * acs]`) or, for the indirect
/// convolution, one input pointer per tile row plus the depth's offset.
///
/// # Safety
/// `a_at(i, p)` must be a valid read for `i < MR`, `p < k`, every `b_row(p)` readable for `NR`
/// values, `tile` writable for `MR * NR` values.
#[inline(always)]
#[cfg_attr(all(target_arch = "wasm32", target_feature = "relaxed-simd"), allow(dead_code))]
unsafe fn tile_kernel<const MR: usize, const NR: usize, const FMA: bool>(
    k: usize,
    a_at: impl Fn(usize, usize) -> f32,
    b_row: impl Fn(usize) -> *const f32,
    tile: *mut f32,
) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..k {
        // SAFETY: per the contract above (an `[f32; NR]` only needs f32 alignment).
        let bv: [f32; NR] = unsafe { *(b_row(p) as *const [f32; NR]) };
        for (i, row) in acc.iter_mut().enumerate() {
            let av = a_at(i, p);
            for j in 0..NR {
                // `mul_add` is one instruction where FMA is enabled, a libm call elsewhere.
                row[j] = if FMA { av.mul_add(bv[j], row[j]) } else { av * bv[j] + row[j] };
            }
        }
    }
    // SAFETY: per the contract above.
    unsafe { *(tile as *mut [[f32; NR]; MR]) = acc };
}

/// A kernel over a packed panel: `(k, a, ars, acs, panel, tile)`, row `p` at `panel + p * NR`.
type TileFn = unsafe fn(usize, *const f32, usize, usize, *const f32, *mut f32);
/// A kernel over rows found by offset: `(k, a, ars, acs, base, offsets, tile)`, row `p` at
/// `base + offsets[p]` (the implicit im2col of a stride-1 convolution, see [`matmul_offsets`]).
type TileOffFn = unsafe fn(usize, *const f32, usize, usize, *const f32, *const usize, *mut f32);
/// The indirect convolution's kernel (`super::indirect`): `(k, src, pix, offsets, panel, tile)`,
/// `A` element `(i, p)` at `src + pix[i] + offsets[p]` (output pixel `i`, im2col row `p`), row
/// `p` of the packed weights at `panel + p * NR`.
pub(crate) type TileIndFn = unsafe fn(usize, *const f32, *const usize, *const usize, *const f32, *mut f32);

/// The kernels (packed, offsets, indirect) around a tile function `$kernel` (the generic
/// [`tile_kernel`] at one shape, or a hand-written one) for tiles `$mr x $nr` and target features;
/// the `@` form gives the offsets kernel (whose `B` rows are not one contiguous run) its own.
macro_rules! tile_kernels {
    ($packed:ident, $offsets:ident, $indirect:ident, $mr:expr, $nr:expr, $kernel:expr $(, $feat:literal)?) => {
        tile_kernels!(@ $packed, $offsets, $indirect, $mr, $nr, $kernel, $kernel $(, $feat)?);
    };
    (@ $packed:ident, $offsets:ident, $indirect:ident, $mr:expr, $nr:expr, $kernel:expr, $off_kernel:expr $(, $feat:literal)?) => {
        $(#[target_feature(enable = $feat)])?
        unsafe fn $packed(k: usize, a: *const f32, ars: usize, acs: usize, b: *const f32, tile: *mut f32) {
            // SAFETY: forwarded contract.
            unsafe { $kernel(k, |i, p| *a.add(i * ars + p * acs), |p| b.add(p * $nr), tile) }
        }
        $(#[target_feature(enable = $feat)])?
        unsafe fn $offsets(
            k: usize,
            a: *const f32,
            ars: usize,
            acs: usize,
            base: *const f32,
            offs: *const usize,
            tile: *mut f32,
        ) {
            // SAFETY: forwarded contract.
            unsafe { $off_kernel(k, |i, p| *a.add(i * ars + p * acs), |p| base.add(*offs.add(p)), tile) }
        }
        $(#[target_feature(enable = $feat)])?
        unsafe fn $indirect(
            k: usize,
            src: *const f32,
            pix: *const usize,
            offs: *const usize,
            b: *const f32,
            tile: *mut f32,
        ) {
            // One pointer per tile row (output pixel), so each step costs one offset load.
            let rows: [*const f32; $mr] = std::array::from_fn(|i| unsafe { src.add(*pix.add(i)) });
            // SAFETY: forwarded contract.
            unsafe { $kernel(k, |i, p| *rows[i].add(*offs.add(p)), |p| b.add(p * $nr), tile) }
        }
    };
}

/// The 8 x 32 AVX-512 tile written with intrinsics: 16 zmm accumulators, two weight vectors, one
/// broadcast. The generic [`tile_kernel`] at this shape is vectorised well where `A` is read by
/// stride, but with the indirect convolution's eight row pointers LLVM's cost model for AVX-512
/// turned the eight `A` reads into a gather and vectorised across the rows: 5.7 GFLOP/s instead
/// of 100+ (session 23, `bench ops` on an AVX-512 Xeon). With `PF > 0`, `B` must be one
/// contiguous run of rows (`b_row(p) = b + 32 p`: packed panels) and each step prefetches row
/// `p + PF`: a layer's weights come from L3 or memory on every inference (ResNet-18's 8x8
/// layers hold 2.4 MB each), and the first pixel tile of each panel waited on them. The kernel
/// alone, one thread, caches flushed before each call: 256 -> 256 channels at 8x8 108-119
/// GFLOP/s without, 132-144 with 8-32 rows ahead (149 with 24); with warm caches 151-157
/// without, 159-165 with. The default model, one thread: 8.2-8.5 -> 7.5-7.8 ms.
///
/// # Safety
/// As [`tile_kernel`] with `NR = 32`; the caller must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_kernel_avx512<const MR: usize, const PF: usize>(
    k: usize,
    a_at: impl Fn(usize, usize) -> f32,
    b_row: impl Fn(usize) -> *const f32,
    tile: *mut f32,
) {
    use std::arch::x86_64::{
        _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps, _mm_prefetch,
        _MM_HINT_T0,
    };
    // SAFETY: the caller has AVX-512F (this is only inlined into `avx512f` functions); reads and
    // writes per the contract above (unaligned loads and stores).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..k {
            let b = b_row(p);
            if PF > 0 {
                // `B` row `p + PF` (two cache lines; past the panel's end, the next panel's
                // first rows: prefetches never fault, and `wrapping_add` keeps this defined).
                let ahead = b.wrapping_add(32 * PF) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(ahead);
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            }
            let (b0, b1) = (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16)));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(a_at(i, p));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(tile.add(i * 32), row[0]);
            _mm512_storeu_ps(tile.add(i * 32 + 16), row[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
tile_kernels!(
    @ tile_avx512,
    tile_off_avx512,
    tile_ind_avx512,
    AVX512_MR,
    32,
    tile_kernel_avx512::<AVX512_MR, PREFETCH_ROWS>,
    tile_kernel_avx512::<AVX512_MR, 0>,
    "avx512f,fma"
);
/// Rows of the AVX-512 tile. The indirect kernel alone (3x3 layers of ResNet-18's shapes, one
/// thread of an AVX-512 Xeon, session 23): 8 rows 133-151 GFLOP/s, 10 rows 141-159 (but 8x8
/// maps waste 6 of 70 rows), 12 rows 72-86 and 14 rows 75-79 (the row pointers spill).
pub(crate) const AVX512_MR: usize = 8;
/// Rows of `B` the AVX-512 kernel prefetches ahead on packed panels (see `tile_kernel_avx512`).
const PREFETCH_ROWS: usize = 24;
#[cfg(target_arch = "x86_64")]
tile_kernels!(tile_avx2, tile_off_avx2, tile_ind_avx2, 6, 16, tile_kernel::<6, 16, true>, "avx2,fma");
#[cfg(target_arch = "x86_64")]
tile_kernels!(tile_avx2n, tile_off_avx2n, tile_ind_avx2n, 8, 8, tile_kernel::<8, 8, true>, "avx2,fma");
// aarch64 always has FMA; elsewhere (x86 without AVX2, wasm32) `mul_add` would be a call.
#[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
tile_kernels!(
    tile_portable,
    tile_off_portable,
    tile_ind_portable,
    PORTABLE_MR,
    8,
    tile_kernel::<PORTABLE_MR, 8, { cfg!(target_arch = "aarch64") }>
);

/// The `PORTABLE_MR` x 8 tile with wasm's relaxed-SIMD multiply-add (`f32x4.relaxed_madd`), which engines
/// lower to one FMA instruction where the CPU has one (a multiply and an add otherwise): the
/// browser build made with `+relaxed-simd` (web/build.sh), loaded where the browser validates it.
///
/// # Safety
/// As [`tile_kernel`] with `MR = PORTABLE_MR`, `NR = 8`.
#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
#[inline(always)]
unsafe fn tile_kernel_relaxed(
    k: usize,
    a_at: impl Fn(usize, usize) -> f32,
    b_row: impl Fn(usize) -> *const f32,
    tile: *mut f32,
) {
    use core::arch::wasm32::{f32x4_relaxed_madd, f32x4_splat, v128, v128_load, v128_store};
    let mut acc = [[f32x4_splat(0.0); 2]; PORTABLE_MR];
    for p in 0..k {
        // SAFETY: per the contract (wasm loads and stores need no alignment).
        let (b0, b1) = unsafe {
            let b = b_row(p);
            (v128_load(b as *const v128), v128_load(b.add(4) as *const v128))
        };
        for (i, row) in acc.iter_mut().enumerate() {
            let av = f32x4_splat(a_at(i, p));
            row[0] = f32x4_relaxed_madd(av, b0, row[0]);
            row[1] = f32x4_relaxed_madd(av, b1, row[1]);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: per the contract.
        unsafe {
            v128_store(tile.add(i * 8) as *mut v128, row[0]);
            v128_store(tile.add(i * 8 + 4) as *mut v128, row[1]);
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
tile_kernels!(tile_portable, tile_off_portable, tile_ind_portable, PORTABLE_MR, 8, tile_kernel_relaxed);

/// Rows of the portable tile: 8 on aarch64 (32 vector registers: 16 accumulators + 3), else 6:
/// wasm engines map v128 values onto the 16 xmm registers of an x86-64 host, as SSE does, and
/// 12 accumulators + 2 weight vectors + 1 broadcast fit where 8 rows spill.
pub(crate) const PORTABLE_MR: usize = if cfg!(target_arch = "aarch64") { 8 } else { 6 };

fn tile_fn(kernel: Kernel) -> TileFn {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => tile_avx512,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => tile_avx2,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Narrow => tile_avx2n,
        _ => tile_portable,
    }
}

/// The indirect-convolution kernel of `kernel` (`super::indirect`).
pub(crate) fn tile_ind_fn(kernel: Kernel) -> TileIndFn {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => tile_ind_avx512,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => tile_ind_avx2,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Narrow => tile_ind_avx2n,
        _ => tile_ind_portable,
    }
}

fn tile_off_fn(kernel: Kernel) -> TileOffFn {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => tile_off_avx512,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => tile_off_avx2,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Narrow => tile_off_avx2n,
        _ => tile_off_portable,
    }
}

thread_local! {
    /// Packed right-operand panel and tile buffer, reused across calls on the same thread.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The destination's base pointer, shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
pub(crate) struct DstPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint elements (distinct tiles) and the destination outlives the
// parallel loop that uses this pointer.
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

impl DstPtr {
    /// Through a method, so closures capture the `Sync` wrapper, not its raw-pointer field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst = lhs * rhs`, or `dst += lhs * rhs` when `accumulate`.
///
/// Panics when the shapes do not chain or a matrix reaches past its slice: both are bugs of
/// the caller (shapes come from validated graphs), never a consequence of user input.
pub fn matmul(dst: MatMut<'_>, lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool, par: Parallelism) {
    matmul_with(Kernel::detect(), dst, lhs, rhs, accumulate, par)
}

/// [`matmul`] with an explicit kernel (tests and benchmarks compare them).
pub fn matmul_with(kernel: Kernel, dst: MatMut<'_>, lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool, par: Parallelism) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert!(lhs.rows == m && rhs.rows == k && rhs.cols == n, "matmul shapes do not chain");
    assert!(extent(m, n, dst.row_stride, dst.col_stride) <= dst.data.len(), "matmul dst out of bounds");
    assert!(extent(m, k, lhs.row_stride, lhs.col_stride) <= lhs.data.len(), "matmul lhs out of bounds");
    assert!(extent(k, n, rhs.row_stride, rhs.col_stride) <= rhs.data.len(), "matmul rhs out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst.data[r * dst.row_stride + c * dst.col_stride] = 0.0;
                }
            }
        }
        return;
    }
    // The kernel vectorises along the destination's columns: when those are strided and its
    // rows are contiguous (a column-major destination), compute the transposed product instead.
    let (dst_rs, dst_cs, lhs, rhs) = if dst.col_stride != 1 && dst.row_stride == 1 {
        (dst.col_stride, dst.row_stride, rhs.t(), lhs.t())
    } else {
        (dst.row_stride, dst.col_stride, lhs, rhs)
    };
    let dst = MatMut { data: dst.data, rows: lhs.rows, cols: rhs.cols, row_stride: dst_rs, col_stride: dst_cs };
    product(kernel, dst, lhs, &rhs, accumulate, par, None);
}

/// A right operand the product packs panel by panel: a strided matrix, or the im2col matrix of
/// a convolution read straight from its input (`super::conv`), which is never materialised.
pub trait Panels: Sync {
    /// Rows (the product's depth).
    fn depth(&self) -> usize;
    /// Columns.
    fn width(&self) -> usize;
    /// Writes columns `c0..c1` as `depth()` rows of `nr` values into `panel`, zero beyond `c1`.
    fn pack(&self, c0: usize, c1: usize, nr: usize, panel: &mut [f32]);
}

impl Panels for Mat<'_> {
    fn depth(&self) -> usize {
        self.rows
    }
    fn width(&self) -> usize {
        self.cols
    }
    fn pack(&self, c0: usize, c1: usize, nr: usize, panel: &mut [f32]) {
        pack_panel(self, c0, c1, nr, panel)
    }
}

/// Called on each finished run of a destination row, while it is in cache: `(row, first
/// column, values)`. Only for destinations with contiguous rows.
pub type Epilogue<'a> = &'a (dyn Fn(usize, usize, &mut [f32]) + Sync);

/// `dst = lhs * rhs (+ dst)`, then `epilogue` on every written row run, with `rhs` packed from
/// any [`Panels`] source. Shapes are checked as in [`matmul`].
pub fn matmul_panels(
    dst: MatMut<'_>,
    lhs: Mat<'_>,
    rhs: &dyn Panels,
    accumulate: bool,
    par: Parallelism,
    epilogue: Option<Epilogue<'_>>,
) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert!(lhs.rows == m && rhs.depth() == k && rhs.width() == n, "matmul shapes do not chain");
    assert!(extent(m, n, dst.row_stride, dst.col_stride) <= dst.data.len(), "matmul dst out of bounds");
    assert!(extent(m, k, lhs.row_stride, lhs.col_stride) <= lhs.data.len(), "matmul lhs out of bounds");
    assert!(epilogue.is_none() || dst.col_stride == 1, "an epilogue needs contiguous destination rows");
    if m == 0 || n == 0 {
        return;
    }
    product(Kernel::detect(), dst, lhs, rhs, accumulate, par, epilogue)
}

/// The tiled product; shapes and extents are checked by the callers, `m, n >= 1`.
fn product(
    kernel: Kernel,
    dst: MatMut<'_>,
    lhs: Mat<'_>,
    rhs: &dyn Panels,
    accumulate: bool,
    par: Parallelism,
    epilogue: Option<Epilogue<'_>>,
) {
    let (m, n, k) = (lhs.rows, rhs.width(), lhs.cols);
    let (mr, nr) = kernel.shape();
    let tile = tile_fn(kernel);
    let tail = tail_copy(&lhs, mr);
    let row_panels = m.div_ceil(mr);
    let col_panels = n.div_ceil(nr);
    let threads = threads_for(par, m * n * k);
    let dst = Dst { ptr: DstPtr(dst.data.as_mut_ptr()), rs: dst.row_stride, cs: dst.col_stride, accumulate, epilogue };
    // Computes tile `ip` of the column panel at `c0..c1` over depths `p0..p1` and stores it
    // (accumulating onto what an earlier depth block stored; the epilogue after the last one).
    let run_tile = |ip: usize, c0: usize, c1: usize, [p0, p1]: [usize; 2], panel: &[f32], tile_buf: &mut [f32]| {
        let r0 = ip * mr;
        let rows = mr.min(m - r0);
        // SAFETY: a full panel reads rows r0..r0+mr <= m of `lhs` over depths p0..p1 <= k,
        // inside its slice (extent checked by the callers); the tail copy is `mr x k`
        // row-major. The panel holds k * nr values, the tile mr * nr.
        unsafe {
            let b = panel.as_ptr().add(p0 * nr);
            if rows == mr {
                let a = lhs.data.as_ptr().add(r0 * lhs.row_stride + p0 * lhs.col_stride);
                tile(p1 - p0, a, lhs.row_stride, lhs.col_stride, b, tile_buf.as_mut_ptr());
            } else {
                tile(p1 - p0, tail.as_ptr().add(p0), k, 1, b, tile_buf.as_mut_ptr());
            }
        }
        dst.store(tile_buf, nr, r0, rows, c0, c1, p0 > 0, p1 == k);
    };

    if threads > 1 && col_panels < 4 * threads && k * col_panels * nr <= PACK_ALL_ELEMS {
        // Few, narrow columns (late layers: 4x4 to 16x16 pixels): pack the whole right operand
        // once, then split the rows, so each weight row is read from memory once.
        let mut packed = vec![0.0f32; k * col_panels * nr];
        parallel::for_each_chunk_mut(&mut packed, k * nr, 1, |jp, panel| {
            rhs.pack(jp * nr, ((jp + 1) * nr).min(n), nr, panel);
        });
        let per_task = row_panels.div_ceil(4 * threads).max(1);
        parallel::for_each_task(row_panels.div_ceil(per_task), |t| {
            let mut tile_buf = vec![0.0f32; mr * nr];
            for ip in t * per_task..((t + 1) * per_task).min(row_panels) {
                for (jp, panel) in packed.chunks_exact(k * nr).enumerate() {
                    run_tile(ip, jp * nr, ((jp + 1) * nr).min(n), [0, k], panel, &mut tile_buf);
                }
            }
        });
        return;
    }

    // Otherwise tasks of up to GROUP column panels (times row blocks when there are few
    // panels): the task packs its panels, then for each depth block and row panel runs every
    // panel, so the row panel's block of the left operand (MR x KC) is reused from L1 and the
    // left operand is streamed once per group instead of once per panel.
    let split = TaskSplit::new(threads, col_panels, row_panels);
    let task = |t: usize| {
        let (jps, ips) = split.task(t);
        let np = jps.len();
        PANEL.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < np * k * nr + mr * nr {
                buf.resize(np * k * nr + mr * nr, 0.0);
            }
            let (panels, tile_buf) = buf.split_at_mut(np * k * nr);
            for (panel, jp) in panels.chunks_exact_mut(k * nr).zip(jps.clone()) {
                rhs.pack(jp * nr, ((jp + 1) * nr).min(n), nr, panel);
            }
            for p0 in (0..k).step_by(KC) {
                for ip in ips.clone() {
                    for (panel, jp) in panels.chunks_exact(k * nr).zip(jps.clone()) {
                        let (c0, c1) = (jp * nr, ((jp + 1) * nr).min(n));
                        run_tile(ip, c0, c1, [p0, (p0 + KC).min(k)], panel, &mut tile_buf[..mr * nr]);
                    }
                }
            }
        });
    };
    split.run(task);
}

/// How a product's column panels (in groups of up to [`GROUP`]) and row panels (in blocks, when
/// there are too few groups to keep every thread busy) become tasks. Groups are small enough for
/// eight per thread: LDCRN's 8-channel convolutions have one row panel and ~34 column panels at
/// 32x32, which two groups per thread split 3 : 2 between two threads (they ran slower on two
/// threads than on one); eight per thread took LDCRN from 6.7 to 5.9 ms on two threads of an
/// AVX-512 Xeon (session 24), the other networks 1-2% faster.
struct TaskSplit {
    threads: usize,
    col_panels: usize,
    row_panels: usize,
    per_group: usize,
    row_blocks: usize,
    panels_per_block: usize,
}

impl TaskSplit {
    fn new(threads: usize, col_panels: usize, row_panels: usize) -> Self {
        let groups = col_panels.div_ceil(GROUP.min(col_panels.div_ceil(threads * 8).max(1)));
        let per_group = col_panels.div_ceil(groups);
        let groups = col_panels.div_ceil(per_group);
        let row_blocks =
            if threads > 1 && groups < 4 * threads { (4 * threads).div_ceil(groups).min(row_panels) } else { 1 };
        let panels_per_block = row_panels.div_ceil(row_blocks);
        let row_blocks = row_panels.div_ceil(panels_per_block);
        TaskSplit { threads, col_panels, row_panels, per_group, row_blocks, panels_per_block }
    }

    /// The column panels and row panels of task `t`.
    fn task(&self, t: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (gi, rb) = (t / self.row_blocks, t % self.row_blocks);
        (
            gi * self.per_group..((gi + 1) * self.per_group).min(self.col_panels),
            rb * self.panels_per_block..((rb + 1) * self.panels_per_block).min(self.row_panels),
        )
    }

    /// Runs every task, in parallel (`parallel`) when there are several threads and tasks.
    fn run(&self, task: impl Fn(usize) + Sync + Send) {
        let tasks = self.col_panels.div_ceil(self.per_group) * self.row_blocks;
        if self.threads > 1 && tasks > 1 {
            parallel::for_each_task(tasks, task);
        } else {
            (0..tasks).for_each(task);
        }
    }
}

/// Threads for a product of `macs` multiply-adds: one below [`SERIAL_MACS`], where waking the
/// pool costs more than the product (LDCRN runs ~180 convolutions per frame, many of a few
/// hundred thousand multiply-adds).
pub(crate) fn threads_for(par: Parallelism, macs: usize) -> usize {
    match par {
        Parallelism::Rayon(t) if macs >= SERIAL_MACS => t.max(1),
        _ => 1,
    }
}

/// Column panels per task on the column-panel path (their depth blocks, 8 x 32 KiB, sit in L2).
const GROUP: usize = 8;

/// Depth block of the column-panel path: 256 x 32 packed values are 32 KiB, inside L1.
const KC: usize = 256;

/// Products below this many multiply-adds run on the calling thread.
const SERIAL_MACS: usize = 1 << 19;

/// Largest right operand (in values) packed whole for narrow products: 1 MiB, well inside L2.
const PACK_ALL_ELEMS: usize = 1 << 18;

/// Where tiles go: the destination with its strides, overwrite or accumulate, the epilogue.
struct Dst<'a> {
    ptr: DstPtr,
    rs: usize,
    cs: usize,
    accumulate: bool,
    epilogue: Option<Epilogue<'a>>,
}

impl Dst<'_> {
    /// Stores rows `0..rows`, columns `0..c1 - c0` of a tile (rows `nr` apart) at `(r0, c0)`,
    /// added to the destination when the caller accumulates or `partial` (a later depth block),
    /// then runs the epilogue when `last` (the final depth block).
    #[allow(clippy::too_many_arguments)]
    fn store(&self, tile: &[f32], nr: usize, r0: usize, rows: usize, c0: usize, c1: usize, partial: bool, last: bool) {
        let add = self.accumulate || partial;
        for i in 0..rows {
            let src = &tile[i * nr..i * nr + (c1 - c0)];
            let base = (r0 + i) * self.rs + c0 * self.cs;
            if self.cs == 1 {
                // SAFETY: columns c0..c1 of row r0 + i, contiguous, inside the destination
                // (extent checked by the callers); no other task writes this tile.
                let run = unsafe { std::slice::from_raw_parts_mut(self.ptr.get().add(base), c1 - c0) };
                if add {
                    run.iter_mut().zip(src).for_each(|(d, v)| *d += v);
                } else {
                    run.copy_from_slice(src);
                }
                if let (Some(ep), true) = (self.epilogue, last) {
                    ep(r0 + i, c0, run);
                }
                continue;
            }
            for (j, &v) in src.iter().enumerate() {
                // SAFETY: (r0 + i, c0 + j) is inside the destination (extent checked by the
                // callers); no other task writes this tile.
                unsafe {
                    let d = self.ptr.get().add(base + j * self.cs);
                    *d = if add { *d + v } else { v };
                }
            }
            // (No epilogue here: `matmul_panels` only takes one for contiguous rows.)
        }
    }
}

/// The last row panel of `lhs`, when partial, as a zero-padded `mr x k` row-major copy (so
/// the kernel never reads past the left operand); empty when `mr` divides the rows. Full
/// panels read the caller's matrix in place.
fn tail_copy(lhs: &Mat<'_>, mr: usize) -> Vec<f32> {
    let (m, k) = (lhs.rows, lhs.cols);
    let full = m / mr;
    if full * mr == m {
        return Vec::new();
    }
    let mut t = vec![0.0f32; mr * k];
    for i in 0..m - full * mr {
        let r = full * mr + i;
        for p in 0..k {
            t[i * k + p] = lhs.data[r * lhs.row_stride + p * lhs.col_stride];
        }
    }
    t
}

/// `dst = lhs * B`, where row `p`, column `q` of `B` is `src[q + offsets[p]]` and `B`'s
/// columns are rows of `pitch` values of which the first `width` are kept: destination column
/// `oy * width + ox` is `B`'s column `oy * pitch + ox`. This is the im2col matrix of a stride-1
/// convolution over a zero-padded input (`pitch` its padded width, `width` the output width,
/// `offsets[(ci*kh + ky)*kw + kx] = ci*plane + ky*dy*pitch + kx*dx`), read in place: every
/// row of a column panel is `NR` consecutive values of `src`, so nothing is packed. Columns
/// `ox >= width` are computed and dropped (2 of 66 for a padded 64-wide 3x3 convolution).
/// `src` needs `NR` values of slack past the last column's furthest offset
/// ([`offsets_slack`]). `epilogue` runs on every stored run of a destination row.
#[allow(clippy::too_many_arguments)]
pub fn matmul_offsets(
    dst: MatMut<'_>,
    lhs: Mat<'_>,
    src: &[f32],
    offsets: &[usize],
    [pitch, width]: [usize; 2],
    par: Parallelism,
    epilogue: Option<Epilogue<'_>>,
) {
    let (m, k) = (dst.rows, lhs.cols);
    assert!(lhs.rows == m && offsets.len() == k, "matmul shapes do not chain");
    assert!(width >= 1 && width <= pitch && dst.cols.is_multiple_of(width), "matmul_offsets: bad column layout");
    assert!(dst.col_stride == 1, "matmul_offsets writes contiguous destination rows");
    assert!(extent(m, dst.cols, dst.row_stride, 1) <= dst.data.len(), "matmul dst out of bounds");
    assert!(extent(m, k, lhs.row_stride, lhs.col_stride) <= lhs.data.len(), "matmul lhs out of bounds");
    if m == 0 || dst.cols == 0 || k == 0 {
        assert!(k > 0 || m == 0 || dst.cols == 0, "matmul_offsets needs a non-empty depth");
        return;
    }
    let kernel = Kernel::detect();
    let (mr, nr) = kernel.shape();
    let nq = (dst.cols / width - 1) * pitch + width;
    let col_panels = nq.div_ceil(nr);
    let max_off = offsets.iter().copied().max().unwrap_or(0);
    assert!(max_off + col_panels * nr <= src.len(), "matmul_offsets: source out of bounds");
    let tile = tile_off_fn(kernel);
    let tail = tail_copy(&lhs, mr);
    let row_panels = m.div_ceil(mr);
    let split = TaskSplit::new(threads_for(par, m * nq * k), col_panels, row_panels);
    let (ptr, rs) = (DstPtr(dst.data.as_mut_ptr()), dst.row_stride);
    let task = |t: usize| {
        let (jps, ips) = split.task(t);
        let mut tile_buf = vec![0.0f32; mr * nr];
        for ip in ips {
            let r0 = ip * mr;
            let rows = mr.min(m - r0);
            for jp in jps.clone() {
                let q0 = jp * nr;
                // SAFETY: lhs rows r0..r0+mr (or the mr x k tail copy) over k columns are inside
                // their slices; row p of the panel reads src[q0 + offsets[p] ..][..nr], inside
                // `src` by the assert on `max_off`; the tile holds mr * nr values.
                unsafe {
                    let b = src.as_ptr().add(q0);
                    if rows == mr {
                        let a = lhs.data.as_ptr().add(r0 * lhs.row_stride);
                        tile(k, a, lhs.row_stride, lhs.col_stride, b, offsets.as_ptr(), tile_buf.as_mut_ptr());
                    } else {
                        tile(k, tail.as_ptr(), k, 1, b, offsets.as_ptr(), tile_buf.as_mut_ptr());
                    }
                }
                let q1 = (q0 + nr).min(nq);
                for i in 0..rows {
                    let vals = &tile_buf[i * nr..];
                    let mut q = q0;
                    while q < q1 {
                        let (oy, ox) = (q / pitch, q % pitch);
                        if ox >= width {
                            q += pitch - ox;
                            continue;
                        }
                        let end = q1.min(q + width - ox);
                        let col = oy * width + ox;
                        // SAFETY: row r0 + i < m, columns col..col + (end - q) <= dst.cols
                        // (inside the destination by the extent assert); destination columns
                        // map one-to-one to kept columns q, and this tile's belong to this task.
                        let run =
                            unsafe { std::slice::from_raw_parts_mut(ptr.get().add((r0 + i) * rs + col), end - q) };
                        run.copy_from_slice(&vals[q - q0..end - q0]);
                        if let Some(ep) = epilogue {
                            ep(r0 + i, col, run);
                        }
                        q = end;
                    }
                }
            }
        }
    };
    split.run(task);
}

/// Values of slack [`matmul_offsets`] needs past `src`'s furthest offset plus its last column.
pub fn offsets_slack() -> usize {
    Kernel::detect().shape().1
}

/// Packs columns `c0..c1` of `b` (`k x n`) as `k` rows of `nr` values, zero beyond `c1`.
fn pack_panel(b: &Mat<'_>, c0: usize, c1: usize, nr: usize, panel: &mut [f32]) {
    let w = c1 - c0;
    if b.col_stride == 1 {
        for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
            let s = p * b.row_stride + c0;
            row[..w].copy_from_slice(&b.data[s..s + w]);
            row[w..].fill(0.0);
        }
    } else if b.row_stride == 1 {
        // Contiguous source columns (a transposed operand): eight columns at a time through
        // 8 x 8 vector transposes where the CPU has them (`conv::transpose_runs`), the rest one
        // value at a time. One value at a time (a store every `nr` values) the packing of dY^T
        // for the weight gradients of 32-channel 1x1 layers took longer than their products.
        let k = panel.len() / nr;
        if k == 0 {
            return;
        }
        let col = |j: usize| &b.data[(c0 + j) * b.col_stride..][..k];
        let mut j0 = 0;
        while j0 + 8 <= w {
            let runs: [&[f32]; 8] = std::array::from_fn(|j| col(j0 + j));
            let done = super::conv::transpose_runs(&runs, &mut panel[j0..], nr);
            for (j, run) in runs.iter().enumerate() {
                for (p, &v) in run.iter().enumerate().skip(done) {
                    panel[p * nr + j0 + j] = v;
                }
            }
            j0 += 8;
        }
        for j in j0..w {
            for (p, &v) in col(j).iter().enumerate() {
                panel[p * nr + j] = v;
            }
        }
        panel.chunks_exact_mut(nr).for_each(|row| row[w..].fill(0.0));
    } else {
        // Strided columns and rows: walk each source column.
        for j in 0..nr {
            if j < w {
                let col = (c0 + j) * b.col_stride;
                for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                    row[j] = b.data[col + p * b.row_stride];
                }
            } else {
                panel.chunks_exact_mut(nr).for_each(|row| row[j] = 0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn naive(a: &Mat, b: &Mat) -> Vec<f64> {
        let mut c = vec![0.0f64; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                c[i * b.cols + j] = (0..a.cols)
                    .map(|p| {
                        a.data[i * a.row_stride + p * a.col_stride] as f64
                            * b.data[p * b.row_stride + j * b.col_stride] as f64
                    })
                    .sum();
            }
        }
        c
    }

    /// Every kernel this CPU runs, against an f64 triple loop, on shapes that are not multiples
    /// of any tile (and smaller than one), with row-major, transposed and column-major operands,
    /// overwrite and accumulate, one thread and several. Tolerance: 1e-4 relative to the sum of
    /// |products| (f32 accumulation over up to 300 terms).
    #[test]
    fn every_kernel_matches_the_naive_product() {
        let mut rng = Rng::new(3);
        for kernel in Kernel::supported() {
            for &(m, n, k) in &[(1, 1, 1), (5, 7, 3), (13, 33, 29), (25, 70, 300), (12, 32, 8), (40, 3, 17)] {
                for layout in 0..4 {
                    let a_data = rng.vec(m * k + 3, -1.0, 1.0);
                    let b_data = rng.vec(k * n + 3, -1.0, 1.0);
                    let a =
                        if layout & 1 == 0 { Mat::rows(&a_data, m, k, k) } else { Mat::transposed(&a_data, m, k, m) };
                    let b =
                        if layout & 2 == 0 { Mat::rows(&b_data, k, n, n) } else { Mat::transposed(&b_data, k, n, k) };
                    let want = naive(&a, &b);
                    let scale: Vec<f64> = (0..m * n)
                        .map(|ij| {
                            let (i, j) = (ij / n, ij % n);
                            (0..k)
                                .map(|p| {
                                    (a.data[i * a.row_stride + p * a.col_stride] as f64
                                        * b.data[p * b.row_stride + j * b.col_stride] as f64)
                                        .abs()
                                })
                                .sum::<f64>()
                                .max(1e-3)
                        })
                        .collect();
                    for (col_major, accumulate, par) in [
                        (false, false, Parallelism::None),
                        (true, true, Parallelism::Rayon(3)),
                        (false, true, Parallelism::Rayon(2)),
                    ] {
                        let (rs, cs, len) = if col_major { (1, m + 1, (m + 1) * n) } else { (n + 2, 1, m * (n + 2)) };
                        let mut c = vec![0.5f32; len];
                        matmul_with(
                            kernel,
                            MatMut { data: &mut c, rows: m, cols: n, row_stride: rs, col_stride: cs },
                            a,
                            b,
                            accumulate,
                            par,
                        );
                        for i in 0..m {
                            for j in 0..n {
                                let got = c[i * rs + j * cs] as f64 - if accumulate { 0.5 } else { 0.0 };
                                let err = (got - want[i * n + j]).abs() / scale[i * n + j];
                                assert!(
                                    err < 1e-4,
                                    "{kernel:?} {m}x{n}x{k} layout {layout} col-major {col_major}: ({i}, {j}) {got} vs {}",
                                    want[i * n + j]
                                );
                            }
                        }
                        if !col_major {
                            for i in 0..m {
                                assert_eq!(&c[i * rs + n..i * rs + n + 2], &[0.5, 0.5], "padding untouched");
                            }
                        }
                    }
                }
            }
        }
    }

    /// `matmul_offsets` against the same product with `B` written out, on a 3x3 convolution's
    /// layout (pitch 13, width 11, 9 rows), rows that are not a multiple of any tile, on one
    /// thread and (large enough to be split) two.
    #[test]
    fn offsets_product_matches_the_written_out_one() {
        let mut rng = Rng::new(5);
        let (cin, hp, pitch, width, rows_out, m) = (16, 11, 13, 11, 9, 41);
        let plane = hp * pitch;
        let src = rng.vec(cin * plane + offsets_slack(), -1.0, 1.0);
        let offsets: Vec<usize> = (0..cin * 9).map(|p| (p / 9) * plane + (p % 9 / 3) * pitch + p % 3).collect();
        let k = offsets.len();
        let n = rows_out * width;
        let mut b = vec![0.0f32; k * n];
        for (p, off) in offsets.iter().enumerate() {
            for col in 0..n {
                b[p * n + col] = src[off + (col / width) * pitch + col % width];
            }
        }
        let a = rng.vec(m * k, -1.0, 1.0);
        for par in [Parallelism::None, Parallelism::Rayon(2)] {
            let mut want = vec![0.0f32; m * n];
            matmul(MatMut::rows(&mut want, m, n, n), Mat::rows(&a, m, k, k), Mat::rows(&b, k, n, n), false, par);
            let mut got = vec![7.0f32; m * n];
            let doubled = |_: usize, _: usize, v: &mut [f32]| v.iter_mut().for_each(|x| *x *= 2.0);
            matmul_offsets(
                MatMut::rows(&mut got, m, n, n),
                Mat::rows(&a, m, k, k),
                &src,
                &offsets,
                [pitch, width],
                par,
                Some(&doubled),
            );
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - 2.0 * w).abs() < 1e-4, "{par:?} element {i}: {g} vs {}", 2.0 * w);
            }
        }
    }

    #[test]
    fn zero_depth_overwrites_with_zeros() {
        let mut c = vec![1.0f32; 6];
        matmul(
            MatMut::rows(&mut c, 2, 3, 3),
            Mat::rows(&[], 2, 0, 0),
            Mat::rows(&[], 0, 3, 3),
            false,
            Parallelism::None,
        );
        assert_eq!(c, vec![0.0; 6]);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_matrix_past_its_slice_is_refused() {
        let a = vec![0.0f32; 5];
        let mut c = vec![0.0f32; 4];
        matmul(MatMut::rows(&mut c, 2, 2, 2), Mat::rows(&a, 2, 3, 3), Mat::rows(&a, 3, 2, 2), false, Parallelism::None);
    }
}
