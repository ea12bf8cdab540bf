//! Person crops: the affine transform from a box in the image to the network input, and the CPU
//! warp that samples the crop and normalises it into an NCHW tensor.
//!
//! # Coordinates
//!
//! Every coordinate in this module (image, network input, heatmap) is *continuous*: pixel `i`
//! covers `[i, i + 1)` and its centre is at `i + 0.5`. A box `[x, y, w, h]` covers
//! `[x, x + w) x [y, y + h)`, so the box `[0, 0, W, H]` is exactly the whole `W x H` image.
//! Under this convention resizing is a pure scale (no `±0.5` terms), a horizontal flip of a
//! `W`-wide frame is `x -> W - x`, and heatmap coordinates at stride `s` become input coordinates
//! by multiplying by `s`. To get index coordinates (first pixel centre at 0, as some datasets
//! annotate), subtract 0.5.
//!
//! A [`CropTransform`] maps image coordinates to input coordinates of an `out_w x out_h` frame;
//! the warp evaluates, for every output pixel centre `(u + 0.5, v + 0.5)`, the image at the
//! inverse-mapped point by bilinear interpolation between the four nearest pixel centres, with
//! pixels outside the image taken as black (`0` before normalisation, i.e. `-mean / std` after).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Per-channel normalisation applied after sampling: `(v / 255 - mean) / std`, RGB order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// Per-channel mean of [0, 1] values, RGB.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (finite, non-zero), RGB.
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet statistics on RGB in [0, 1]: what every network of this crate is trained with.
    pub const IMAGENET: Normalization = Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };

    fn check(&self) -> Result<()> {
        if self.mean.iter().chain(&self.std).any(|v| !v.is_finite()) || self.std.contains(&0.0) {
            return Err(Error::Input(format!(
                "normalisation needs finite means and finite non-zero stds, got {self:?}"
            )));
        }
        Ok(())
    }

    /// Normalised value of a channel `c` sample already scaled to [0, 1].
    #[inline]
    fn apply(&self, c: usize, v: f32) -> f32 {
        (v - self.mean[c]) / self.std[c]
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Self::IMAGENET
    }
}

/// How a crop is cut around a box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropConfig {
    /// The box, after being widened or heightened to the output aspect ratio, is enlarged by
    /// this factor about its centre (1.25 in SimpleBaseline / HRNet).
    pub padding: f32,
    /// Rotation of the crop content in degrees, counter-clockwise as seen on screen (training
    /// augmentation; 0 at inference).
    pub rotation_deg: f32,
    /// Mirror the output horizontally (flip test, augmentation): output `x -> out_w - x`.
    pub flip: bool,
}

impl Default for CropConfig {
    fn default() -> Self {
        CropConfig { padding: 1.25, rotation_deg: 0.0, flip: false }
    }
}

impl CropConfig {
    /// This configuration with another `padding`.
    pub fn with_padding(mut self, padding: f32) -> Self {
        self.padding = padding;
        self
    }
    /// This configuration with a rotation of `degrees` (counter-clockwise on screen).
    pub fn with_rotation(mut self, degrees: f32) -> Self {
        self.rotation_deg = degrees;
        self
    }
    /// This configuration, mirrored or not.
    pub fn with_flip(mut self, flip: bool) -> Self {
        self.flip = flip;
        self
    }
}

/// 2x3 affine matrix `[[a, b, c], [d, e, f]]`: `(x, y) -> (a x + b y + c, d x + e y + f)`.
pub(crate) type Affine = [[f64; 3]; 2];

fn apply(m: &Affine, x: f64, y: f64) -> (f64, f64) {
    (m[0][0] * x + m[0][1] * y + m[0][2], m[1][0] * x + m[1][1] * y + m[1][2])
}

/// The image -> network-input transform of one crop, with its inverse.
///
/// Both matrices are kept in f64: the inverse is computed analytically from the forward one, so
/// mapping an output pixel centre to the image and back reproduces it to f64 rounding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropTransform {
    forward: Affine,
    inverse: Affine,
    out_w: usize,
    out_h: usize,
}

fn check_box(bbox: [f32; 4]) -> Result<()> {
    if bbox.iter().any(|v| !v.is_finite()) {
        return Err(Error::Input(format!("person box {bbox:?} holds a non-finite value")));
    }
    if bbox[2] <= 0.0 || bbox[3] <= 0.0 {
        return Err(Error::Input(format!("person box {bbox:?} has zero or negative size")));
    }
    Ok(())
}

/// How much larger than the image's longest side a person box may be.
pub const MAX_BOX_TO_IMAGE: f32 = 4.0;

/// Checks a box `[x, y, w, h]` against a `img_w x img_h` image: finite, positive size, and
/// overlapping the image by a positive area. The crop itself is defined for any finite box of
/// positive size (a crop outside the image is all padding); this is the check for callers that
/// would rather skip such boxes. Boxes more than [`MAX_BOX_TO_IMAGE`] times the image's longest
/// side are refused too.
pub fn validate_box(bbox: [f32; 4], img_w: usize, img_h: usize) -> Result<()> {
    check_box(bbox)?;
    let [x, y, w, h] = bbox;
    let (iw, ih) = (img_w as f32, img_h as f32);
    if x >= iw || y >= ih || x + w <= 0.0 || y + h <= 0.0 {
        return Err(Error::Input(format!("person box {bbox:?} lies entirely outside the {img_w}x{img_h} image")));
    }
    // A box far larger than the image (1e20 pixels) would put the whole image inside a few
    // pixels of the crop and map keypoints to absurd coordinates; no person box is that big.
    let limit = MAX_BOX_TO_IMAGE * iw.max(ih);
    if w > limit || h > limit {
        return Err(Error::Input(format!(
            "person box {bbox:?} is more than {MAX_BOX_TO_IMAGE}x the {img_w}x{img_h} image's longest side"
        )));
    }
    Ok(())
}

impl CropTransform {
    /// The crop of box `[x, y, w, h]` (image coordinates, see the module docs) resized to
    /// `out_w x out_h`: the box is first extended to the output aspect ratio about its centre
    /// (the shorter side grows), then enlarged by `cfg.padding`, rotated and flipped as asked.
    /// Errors on a non-finite box or one of zero or negative size.
    pub fn from_box(bbox: [f32; 4], out_w: usize, out_h: usize, cfg: &CropConfig) -> Result<Self> {
        check_box(bbox)?;
        let [x, y, w, h] = bbox;
        Self::from_center_size([x + 0.5 * w, y + 0.5 * h], [w, h], out_w, out_h, cfg)
    }

    /// [`from_box`](Self::from_box) after [`validate_box`]: also errors when the box does not
    /// overlap the image.
    pub fn from_box_in_image(
        bbox: [f32; 4],
        img_w: usize,
        img_h: usize,
        out_w: usize,
        out_h: usize,
        cfg: &CropConfig,
    ) -> Result<Self> {
        validate_box(bbox, img_w, img_h)?;
        Self::from_box(bbox, out_w, out_h, cfg)
    }

    /// The crop centred on `center` of a region `size = [w, h]` image pixels, with the same
    /// aspect fix, padding, rotation and flip as [`from_box`](Self::from_box). (HRNet's
    /// "scale" is `size / 200`.)
    pub(crate) fn from_center_size(
        center: [f32; 2],
        size: [f32; 2],
        out_w: usize,
        out_h: usize,
        cfg: &CropConfig,
    ) -> Result<Self> {
        if center.iter().chain(&size).any(|v| !v.is_finite()) {
            return Err(Error::Input(format!("crop centre {center:?} / size {size:?} holds a non-finite value")));
        }
        if size[0] <= 0.0 || size[1] <= 0.0 {
            return Err(Error::Input(format!("crop size {size:?} is zero or negative")));
        }
        if !(cfg.padding.is_finite() && cfg.padding > 0.0 && cfg.rotation_deg.is_finite()) {
            return Err(Error::Input(format!("crop padding must be positive and rotation finite, got {cfg:?}")));
        }
        check_out(out_w, out_h)?;
        let aspect = out_w as f64 / out_h as f64;
        // Width of the region once the shorter side has grown to the output aspect ratio and
        // the padding is applied; the height is `w / aspect`.
        let w = (size[0] as f64).max(size[1] as f64 * aspect) * cfg.padding as f64;
        let s = out_w as f64 / w;
        let (sin, cos) = (cfg.rotation_deg as f64).to_radians().sin_cos();
        let fx = if cfg.flip { -1.0 } else { 1.0 };
        // u = F * s * R * (p - c) + (out_w / 2, out_h / 2), with R rotating counter-clockwise on
        // screen (y points down) and F = diag(fx, 1).
        let (a, b) = (fx * s * cos, fx * s * sin);
        let (d, e) = (-s * sin, s * cos);
        let (cx, cy) = (center[0] as f64, center[1] as f64);
        let forward = [[a, b, 0.5 * out_w as f64 - a * cx - b * cy], [d, e, 0.5 * out_h as f64 - d * cx - e * cy]];
        Self::from_matrix(forward, out_w, out_h)
    }

    /// Any invertible image -> input affine transform for an `out_w x out_h` output.
    pub(crate) fn from_matrix(forward: Affine, out_w: usize, out_h: usize) -> Result<Self> {
        check_out(out_w, out_h)?;
        let [[a, b, c], [d, e, f]] = forward;
        let det = a * e - b * d;
        let inverse = [[e / det, -b / det, (b * f - e * c) / det], [-d / det, a / det, (d * c - a * f) / det]];
        if forward.iter().chain(&inverse).flatten().any(|v| !v.is_finite()) || det == 0.0 {
            return Err(Error::Input(format!("crop transform {forward:?} is not finite and invertible")));
        }
        Ok(CropTransform { forward, inverse, out_w, out_h })
    }

    /// Image -> input matrix.
    pub fn forward(&self) -> Affine {
        self.forward
    }

    /// Input -> image matrix.
    pub fn inverse(&self) -> Affine {
        self.inverse
    }

    /// The `(out_w, out_h)` the crop was built for.
    pub(crate) fn out_size(&self) -> (usize, usize) {
        (self.out_w, self.out_h)
    }

    /// Input pixels per image pixel (the square root of the determinant; the same along both
    /// axes for crops built from boxes).
    pub fn scale(&self) -> f64 {
        let [[a, b, _], [d, e, _]] = self.forward;
        (a * e - b * d).abs().sqrt()
    }

    /// Image -> input coordinates.
    pub fn map_to_input(&self, x: f32, y: f32) -> (f32, f32) {
        let (u, v) = apply(&self.forward, x as f64, y as f64);
        (u as f32, v as f32)
    }

    /// Input -> image coordinates (both continuous, see the module docs).
    pub fn map_to_image(&self, x: f32, y: f32) -> (f32, f32) {
        let (u, v) = apply(&self.inverse, x as f64, y as f64);
        (u as f32, v as f32)
    }

    /// Heatmap -> image coordinates, for a heatmap with `stride` input pixels per heatmap pixel
    /// (4 for every network here; `input_w / heatmap_w` in general). Heatmap coordinates are
    /// continuous too, so this is `map_to_image(stride * x, stride * y)`.
    pub fn map_heatmap_to_image(&self, x: f32, y: f32, stride: f32) -> (f32, f32) {
        let (u, v) = apply(&self.inverse, stride as f64 * x as f64, stride as f64 * y as f64);
        (u as f32, v as f32)
    }

    /// The inverse as six f32, row-major: what the warp kernels evaluate.
    pub(crate) fn inverse_f32(&self) -> [f32; 6] {
        let [[a, b, c], [d, e, f]] = self.inverse;
        [a as f32, b as f32, c as f32, d as f32, e as f32, f as f32]
    }

    /// Whether the crop's output frame sees any of a `img_w x img_h` image; a crop for which
    /// this is false warps to pure padding.
    pub fn overlaps_image(&self, img_w: usize, img_h: usize) -> bool {
        let (ow, oh) = (self.out_w as f64, self.out_h as f64);
        let corners = [(0.0, 0.0), (ow, 0.0), (0.0, oh), (ow, oh)].map(|(u, v)| apply(&self.inverse, u, v));
        // Separating-axis test between the image rectangle and the crop's parallelogram: the
        // image's axes, then the parallelogram's edge normals.
        let (iw, ih) = (img_w as f64, img_h as f64);
        let xs = corners.map(|c| c.0);
        let ys = corners.map(|c| c.1);
        let min = |v: [f64; 4]| v.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = |v: [f64; 4]| v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if max(xs) <= 0.0 || min(xs) >= iw || max(ys) <= 0.0 || min(ys) >= ih {
            return false;
        }
        let img = [(0.0, 0.0), (iw, 0.0), (0.0, ih), (iw, ih)];
        for (p, q) in [(corners[0], corners[1]), (corners[0], corners[2])] {
            let n = (-(q.1 - p.1), q.0 - p.0);
            let proj = |c: (f64, f64)| c.0 * n.0 + c.1 * n.1;
            let (a, b) = (min(corners.map(proj)), max(corners.map(proj)));
            let (c, d) = (min(img.map(proj)), max(img.map(proj)));
            if b <= c || d <= a {
                return false;
            }
        }
        true
    }
}

fn check_out(out_w: usize, out_h: usize) -> Result<()> {
    if out_w == 0 || out_h == 0 {
        return Err(Error::Input(format!("crop output size {out_w}x{out_h} is empty")));
    }
    Ok(())
}

/// Memory layout of 8-bit pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Red, green, blue: 3 bytes per pixel.
    Rgb8,
    /// Red, green, blue, alpha: 4 bytes per pixel (alpha ignored).
    Rgba8,
    /// Blue, green, red, alpha: common for camera frames and swapchain textures.
    Bgra8,
}

impl PixelFormat {
    pub(crate) fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb8 => 3,
            PixelFormat::Rgba8 | PixelFormat::Bgra8 => 4,
        }
    }

    /// Byte offsets of red, green and blue within a pixel.
    fn rgb_offsets(self) -> [usize; 3] {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Rgba8 => [0, 1, 2],
            PixelFormat::Bgra8 => [2, 1, 0],
        }
    }
}

/// A borrowed 8-bit image: rows of `width` pixels, `stride` bytes apart.
#[derive(Clone, Copy, Debug)]
pub struct ImageRef<'a> {
    /// The pixel bytes, row after row.
    pub data: &'a [u8],
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes from one row to the next (`width * bytes_per_pixel` when tightly packed).
    pub stride: usize,
    /// Byte layout of a pixel.
    pub format: PixelFormat,
}

impl<'a> ImageRef<'a> {
    /// A tightly packed image; errors when `data` is too short or the image is empty.
    pub fn new(data: &'a [u8], width: usize, height: usize, format: PixelFormat) -> Result<Self> {
        let stride = width
            .checked_mul(format.bytes_per_pixel())
            .ok_or_else(|| Error::TooLarge(format!("image width {width}")))?;
        Self::with_stride(data, width, height, stride, format)
    }

    /// An image whose rows are `stride` bytes apart (padded rows, e.g. GPU readbacks); errors
    /// when it is empty, `stride` is shorter than a row or `data` shorter than the image.
    pub fn with_stride(
        data: &'a [u8],
        width: usize,
        height: usize,
        stride: usize,
        format: PixelFormat,
    ) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::Input(format!("image of size {width}x{height} is empty")));
        }
        let row = width * format.bytes_per_pixel();
        let need = stride.checked_mul(height - 1).and_then(|v| v.checked_add(row));
        if stride < row || need.is_none_or(|n| data.len() < n) {
            return Err(Error::Input(format!(
                "a {width}x{height} {format:?} image with a row stride of {stride} bytes needs {} bytes, got {}",
                need.map_or("too many".to_string(), |n| n.to_string()),
                data.len()
            )));
        }
        Ok(ImageRef { data, width, height, stride, format })
    }

    /// A tightly packed RGB8 image (see [`ImageRef::new`] for the errors).
    pub fn rgb(data: &'a [u8], width: usize, height: usize) -> Result<Self> {
        Self::new(data, width, height, PixelFormat::Rgb8)
    }

    /// A tightly packed RGBA8 image (see [`ImageRef::new`] for the errors).
    pub fn rgba(data: &'a [u8], width: usize, height: usize) -> Result<Self> {
        Self::new(data, width, height, PixelFormat::Rgba8)
    }
}

impl<'a> From<&'a image::RgbImage> for ImageRef<'a> {
    fn from(img: &'a image::RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        ImageRef { data: img.as_raw(), width: w, height: h, stride: 3 * w, format: PixelFormat::Rgb8 }
    }
}

impl<'a> From<&'a image::RgbaImage> for ImageRef<'a> {
    fn from(img: &'a image::RgbaImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        ImageRef { data: img.as_raw(), width: w, height: h, stride: 4 * w, format: PixelFormat::Rgba8 }
    }
}

/// The crop warped to `out_w x out_h` and normalised with ImageNet statistics: `[1, 3, out_h,
/// out_w]`. See [`warp_batch`].
pub fn warp_rgb(image: &ImageRef, crop: &CropTransform, out_w: usize, out_h: usize) -> Result<Tensor> {
    warp_batch(image, std::slice::from_ref(crop), out_w, out_h, &Normalization::IMAGENET)
}

/// Every crop warped into one `[crops.len(), 3, out_h, out_w]` tensor. Errors when a crop was
/// built for another output size (that would silently cut a different region).
pub fn warp_batch(
    image: &ImageRef,
    crops: &[CropTransform],
    out_w: usize,
    out_h: usize,
    norm: &Normalization,
) -> Result<Tensor> {
    norm.check()?;
    check_out(out_w, out_h)?;
    let per = 3 * out_w * out_h;
    let mut data = vec![0f32; crops.len() * per];
    for (crop, out) in crops.iter().zip(data.chunks_exact_mut(per)) {
        warp_into(image, crop, out_w, out_h, norm, out)?;
    }
    Ok(Tensor { shape: vec![crops.len(), 3, out_h, out_w], data })
}

/// One crop into `out` (`3 * out_h * out_w` values, CHW).
pub(crate) fn warp_into(
    image: &ImageRef,
    crop: &CropTransform,
    out_w: usize,
    out_h: usize,
    norm: &Normalization,
    out: &mut [f32],
) -> Result<()> {
    if crop.out_size() != (out_w, out_h) {
        return Err(Error::Input(format!(
            "crop built for a {}x{} output, warped to {out_w}x{out_h}",
            crop.out_w, crop.out_h
        )));
    }
    if out.len() != 3 * out_w * out_h {
        return Err(Error::Input(format!("warp output needs {} values, got {}", 3 * out_w * out_h, out.len())));
    }
    let m = crop.inverse_f32();
    let (w, h) = (image.width as i64, image.height as i64);
    let bpp = image.format.bytes_per_pixel();
    let offs = image.format.rgb_offsets();
    let plane = out_w * out_h;
    for v in 0..out_h {
        let vc = v as f32 + 0.5;
        for u in 0..out_w {
            let uc = u as f32 + 0.5;
            // Same arithmetic as shaders/preprocess.wgsl, so both agree to f32 rounding.
            let [sx, sy] = sample_pos(&m, uc, vc, image.width as f32, image.height as f32);
            let (x0f, y0f) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0f, sy - y0f);
            let (x0, y0) = (x0f as i64, y0f as i64);
            let mut acc = [0f32; 3];
            for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
                for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                    let (x, y) = (x0 + dx, y0 + dy);
                    if x < 0 || y < 0 || x >= w || y >= h {
                        continue;
                    }
                    let at = y as usize * image.stride + x as usize * bpp;
                    let wgt = wx * wy;
                    for c in 0..3 {
                        acc[c] += wgt * (image.data[at + offs[c]] as f32 / 255.0);
                    }
                }
            }
            for c in 0..3 {
                out[c * plane + v * out_w + u] = norm.apply(c, acc[c]);
            }
        }
    }
    Ok(())
}

/// Image sample position of output point `(u, v)` in index space (pixel centres at integers),
/// clamped to `[-2, size + 1]`: beyond that every bilinear tap is outside the image anyway, and
/// the clamp keeps the integer conversion in range.
#[inline]
fn sample_pos(m: &[f32; 6], u: f32, v: f32, w: f32, h: f32) -> [f32; 2] {
    let x = m[0] * u + m[1] * v + m[2] - 0.5;
    let y = m[3] * u + m[4] * v + m[5] - 0.5;
    [x.clamp(-2.0, w + 1.0), y.clamp(-2.0, h + 1.0)]
}
