//! Loading photos for the pipeline: any common layout (grayscale, alpha, 16-bit, CMYK JPEG)
//! becomes RGB8, EXIF orientation is applied, and huge images are refused or downscaled before
//! they reach the GPU. Keypoints found on a downscaled image are mapped back with `scale`.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Images larger than this on either side are refused (a decoding bomb, not a photo).
pub const MAX_SIDE: u32 = 20_000;
/// Longest side the pipeline works at; larger images are downscaled first.
pub const WORK_SIDE: u32 = 2048;

/// An image ready for the pipeline.
pub struct LoadedImage {
    pub rgb: RgbImage,
    /// Original size (after EXIF rotation), in pixels.
    pub original_size: [u32; 2],
    /// `original / working`: multiply working-image coordinates by this to get original ones.
    pub scale: f32,
}

fn format_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Format { path: path.display().to_string(), msg: msg.to_string() }
}

/// Reads an image file, honouring EXIF orientation, and returns RGB8 at most `WORK_SIDE` on its
/// longest side.
pub fn load_rgb(path: &Path) -> Result<LoadedImage> {
    let reader = ImageReader::open(path)
        .map_err(|e| Error::Io { path: path.display().to_string(), source: e })?
        .with_guessed_format()
        .map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        check_jpeg_complete(path)?;
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(1 << 30);
    let mut decoder = {
        let mut r = reader;
        r.limits(limits);
        r.into_decoder().map_err(|e| format_err(path, format!("cannot decode: {e}")))?
    };
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| format_err(path, format!("cannot decode: {e}")))?;
    img.apply_orientation(orientation);
    from_dynamic(img).map_err(|e| match e {
        Error::Input(m) => format_err(path, m),
        e => e,
    })
}

/// JPEG decoders fill a truncated file's missing rows with grey instead of failing; a file
/// without an end-of-image marker (FF D9) near its end is reported as truncated instead.
fn check_jpeg_complete(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    if tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(format_err(path, "truncated JPEG (no end-of-image marker)"))
    }
}

/// Converts any decoded image to RGB8 (alpha dropped, 16-bit and float reduced) and downscales
/// it to `WORK_SIDE`.
pub fn from_dynamic(img: DynamicImage) -> Result<LoadedImage> {
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(Error::Input(format!("image has zero size {w}x{h}")));
    }
    let longest = w.max(h);
    let (img, scale) = if longest > WORK_SIDE {
        let s = WORK_SIDE as f32 / longest as f32;
        let nw = ((w as f32 * s).round() as u32).max(1);
        let nh = ((h as f32 * s).round() as u32).max(1);
        (img.resize_exact(nw, nh, image::imageops::FilterType::Triangle), w as f32 / nw as f32)
    } else {
        (img, 1.0)
    };
    Ok(LoadedImage { rgb: img.to_rgb8(), original_size: [w, h], scale })
}
