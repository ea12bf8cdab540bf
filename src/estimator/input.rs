//! What [`Estimator::estimate`](super::Estimator::estimate) takes: a picture (any decoded image,
//! with the factor from its pixels to the coordinates the caller works in) and the people's
//! boxes, or none.

use std::borrow::Cow;

use crate::image_io::LoadedImage;
use crate::pipeline::crop::ImageRef;

/// A decoded image and the scale from its pixels to the caller's coordinates. Boxes passed to
/// [`Estimator::estimate`](super::Estimator::estimate) and the keypoints it returns are in the
/// caller's coordinates: for a [`LoadedImage`] (a photo possibly downscaled to
/// [`WORK_SIDE`](crate::image_io::WORK_SIDE)) those are the original file's pixels; for a frame
/// or an [`image::RgbImage`] they are its own pixels.
#[derive(Clone, Copy, Debug)]
pub struct Picture<'a> {
    /// The pixels the network sees.
    pub pixels: ImageRef<'a>,
    /// Caller coordinates per pixel of `pixels` (`original / working` for a downscaled photo).
    pub scale: f32,
}

impl<'a> Picture<'a> {
    /// `pixels` at scale 1 (coordinates are its pixels).
    pub fn new(pixels: ImageRef<'a>) -> Self {
        Picture { pixels, scale: 1.0 }
    }

    /// The whole picture as a box, in the caller's coordinates.
    pub fn full_box(&self) -> [f32; 4] {
        [0.0, 0.0, self.pixels.width as f32 * self.scale, self.pixels.height as f32 * self.scale]
    }
}

impl<'a> From<&'a LoadedImage> for Picture<'a> {
    fn from(img: &'a LoadedImage) -> Self {
        Picture { pixels: ImageRef::from(&img.rgb), scale: img.scale }
    }
}

impl<'a> From<ImageRef<'a>> for Picture<'a> {
    fn from(pixels: ImageRef<'a>) -> Self {
        Picture::new(pixels)
    }
}

impl<'a> From<&ImageRef<'a>> for Picture<'a> {
    fn from(pixels: &ImageRef<'a>) -> Self {
        Picture::new(*pixels)
    }
}

impl<'a> From<&'a image::RgbImage> for Picture<'a> {
    fn from(img: &'a image::RgbImage) -> Self {
        Picture::new(ImageRef::from(img))
    }
}

impl<'a> From<&'a image::RgbaImage> for Picture<'a> {
    fn from(img: &'a image::RgbaImage) -> Self {
        Picture::new(ImageRef::from(img))
    }
}

/// Where the people are: boxes `[x, y, w, h]` in the picture's coordinates, or `Auto` when no
/// box is known.
#[derive(Clone, Debug, PartialEq)]
pub enum Boxes<'a> {
    /// No box known: the estimator's person detector finds the people (several poses, highest
    /// detection score first, none in a picture without people). An estimator without a
    /// detector ([`EstimatorOptions::find_people`](crate::EstimatorOptions) off) takes the whole
    /// picture as one person's box.
    Auto,
    /// One pose per box, in this order (none for an empty list).
    Given(Cow<'a, [[f32; 4]]>),
}

impl<'a> From<&'a [[f32; 4]]> for Boxes<'a> {
    fn from(b: &'a [[f32; 4]]) -> Self {
        Boxes::Given(Cow::Borrowed(b))
    }
}

impl<'a, const N: usize> From<&'a [[f32; 4]; N]> for Boxes<'a> {
    fn from(b: &'a [[f32; 4]; N]) -> Self {
        Boxes::Given(Cow::Borrowed(b))
    }
}

impl<'a> From<&'a Vec<[f32; 4]>> for Boxes<'a> {
    fn from(b: &'a Vec<[f32; 4]>) -> Self {
        Boxes::Given(Cow::Borrowed(b))
    }
}

impl From<Vec<[f32; 4]>> for Boxes<'_> {
    fn from(b: Vec<[f32; 4]>) -> Self {
        Boxes::Given(Cow::Owned(b))
    }
}

impl From<[f32; 4]> for Boxes<'_> {
    fn from(b: [f32; 4]) -> Self {
        Boxes::Given(Cow::Owned(vec![b]))
    }
}

/// `Some(box)`: that box; `None`: [`Boxes::Auto`].
impl From<Option<[f32; 4]>> for Boxes<'_> {
    fn from(b: Option<[f32; 4]>) -> Self {
        b.map_or(Boxes::Auto, Boxes::from)
    }
}
