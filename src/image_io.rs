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
    /// The pixels the pipeline works on: the original, or its downscale to [`WORK_SIDE`].
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
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    decode_rgb(&bytes).map_err(|e| match e {
        Error::Input(m) => format_err(path, m),
        e => e,
    })
}

/// [`load_rgb`] for an encoded image already in memory; errors are `Error::Input` (no path).
pub fn decode_rgb(bytes: &[u8]) -> Result<LoadedImage> {
    if bytes.is_empty() {
        return Err(Error::Input("empty file (0 bytes), not an image".into()));
    }
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| matches!(f, image::ImageFormat::Jpeg | image::ImageFormat::Png))
        .ok_or_else(|| Error::Input("not a JPEG or PNG image (unrecognised content)".into()))?;
    if format == image::ImageFormat::Jpeg {
        check_jpeg_complete(bytes).map_err(Error::Input)?;
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(1 << 30);
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| Error::Input(format!("cannot decode: {e}")))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| Error::Input(format!("cannot decode: {e}")))?;
    img.apply_orientation(orientation);
    from_dynamic(img)
}

/// JPEG decoders fill a truncated file's missing rows with grey instead of failing, so the
/// stream's structure is walked the way a decoder reads it: every segment is skipped by its
/// length (an EXIF thumbnail or a comment may hold FF D9 bytes without ending anything), entropy-
/// coded data runs to the next real marker, and the image is complete only when an end-of-image
/// marker (FF D9) is reached that way. Whatever follows it (the video of a phone's motion
/// photo) is ignored, as decoders ignore it.
pub(crate) fn check_jpeg_complete(b: &[u8]) -> std::result::Result<(), String> {
    let truncated = |what: &str| Err(format!("truncated JPEG (the file ends {what}, before the end-of-image marker)"));
    if b.len() < 2 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err("not a JPEG (no start-of-image marker)".into());
    }
    let mut i = 2;
    loop {
        // Decoders skip stray bytes between segments; so does this walk.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else { return truncated("between segments") };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a length: SOI, TEM, restart markers, a stuffed zero.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
            return truncated("inside a segment header");
        };
        if len < 2 {
            return Err(format!("corrupt JPEG (segment FF {marker:02X} at byte {} has length {len})", i - 2));
        }
        if i + len > b.len() {
            return truncated(&format!("inside segment FF {marker:02X}"));
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data: FF 00 is a stuffed FF, FF D0..D7 a restart marker, FF FF fill;
            // any other FF xx is the next marker.
            loop {
                match b.get(i..i + 2) {
                    None => return truncated("inside the compressed image data"),
                    Some([0xFF, n]) if *n == 0x00 || (0xD0..=0xD7).contains(n) => i += 2,
                    Some([0xFF, 0xFF]) => i += 1,
                    Some([0xFF, _]) => break,
                    Some(_) => i += 1,
                }
            }
        }
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
