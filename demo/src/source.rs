//! Frame sources: a folder of images played as a looping video, one still image, or a webcam
//! (`camera` feature). Every source hands out RGBA8 frames; none of them panics on a missing
//! device or file, they return errors the window shows.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::RgbaImage;

/// What the user asked for on the command line or in the source picker.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// Images of a folder, sorted by file name, looping.
    Folder(PathBuf),
    /// One image, shown forever.
    Image(PathBuf),
    /// A webcam: device index and requested resolution.
    Camera { index: u32, width: u32, height: u32 },
}

impl FromStr for SourceSpec {
    type Err = String;

    /// `folder:DIR`, `image:FILE`, `camera`, `camera:N` or `camera:N:WxH`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(dir) = s.strip_prefix("folder:") {
            return Ok(SourceSpec::Folder(PathBuf::from(dir)));
        }
        if let Some(file) = s.strip_prefix("image:") {
            return Ok(SourceSpec::Image(PathBuf::from(file)));
        }
        if s == "camera" {
            return Ok(SourceSpec::Camera { index: 0, width: 640, height: 480 });
        }
        if let Some(rest) = s.strip_prefix("camera:") {
            let mut parts = rest.split(':');
            let index = parts.next().unwrap_or("0").parse::<u32>().map_err(|_| format!("bad camera index in `{s}`"))?;
            let (width, height) = match parts.next() {
                None => (640, 480),
                Some(res) => {
                    let (w, h) = res.split_once('x').ok_or_else(|| format!("bad resolution in `{s}` (want WxH)"))?;
                    (
                        w.parse().map_err(|_| format!("bad width in `{s}`"))?,
                        h.parse().map_err(|_| format!("bad height in `{s}`"))?,
                    )
                }
            };
            return Ok(SourceSpec::Camera { index, width, height });
        }
        Err(format!("unknown source `{s}`: use folder:DIR, image:FILE, camera, camera:N or camera:N:WxH"))
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Folder(d) => write!(f, "folder:{}", d.display()),
            SourceSpec::Image(p) => write!(f, "image:{}", p.display()),
            SourceSpec::Camera { index, width, height } => write!(f, "camera:{index}:{width}x{height}"),
        }
    }
}

/// One captured frame.
pub struct Frame {
    pub rgba: RgbaImage,
    /// File name (folder and image sources) or camera description.
    pub label: String,
    /// The file it came from, when it came from one.
    pub path: Option<PathBuf>,
}

pub enum Source {
    Folder {
        files: Vec<PathBuf>,
        next: usize,
    },
    Image {
        frame: Frame,
        sent: bool,
        /// Hand the image out on every call (headless runs count frames), not once.
        repeat: bool,
    },
    #[cfg(feature = "camera")]
    Camera(crate::camera::CameraSource),
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// The images of `dir` (jpg, jpeg, png), sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read folder {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("folder {} holds no images (.jpg, .jpeg, .png)", dir.display()));
    }
    Ok(files)
}

fn load_rgba(path: &Path) -> Result<RgbaImage, String> {
    let loaded = wgpose::image_io::load_rgb(path).map_err(|e| e.to_string())?;
    Ok(image::DynamicImage::ImageRgb8(loaded.rgb).to_rgba8())
}

impl Source {
    /// Opens `spec`; a folder is listed now and its images decoded one per frame.
    pub fn open(spec: &SourceSpec) -> Result<Source, String> {
        match spec {
            SourceSpec::Folder(dir) => Ok(Source::Folder { files: list_images(dir)?, next: 0 }),
            SourceSpec::Image(path) => {
                let rgba = load_rgba(path)?;
                let label = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                Ok(Source::Image { frame: Frame { rgba, label, path: Some(path.clone()) }, sent: false, repeat: false })
            }
            #[cfg(feature = "camera")]
            SourceSpec::Camera { index, width, height } => {
                Ok(Source::Camera(crate::camera::CameraSource::open(*index, *width, *height)?))
            }
            #[cfg(not(feature = "camera"))]
            SourceSpec::Camera { .. } => Err("this demo was built without webcam support: rebuild with \
                `cargo run --release -p wgpose-demo --features camera`"
                .into()),
        }
    }

    /// The next frame; `Ok(None)` when there is nothing new (a still image already shown, a
    /// camera frame not yet arrived).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        match self {
            Source::Folder { files, next } => {
                let path = files[*next % files.len()].clone();
                *next = (*next + 1) % files.len();
                let rgba = load_rgba(&path)?;
                let label = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                Ok(Some(Frame { rgba, label, path: Some(path) }))
            }
            Source::Image { frame, sent, repeat } => {
                if *sent && !*repeat {
                    return Ok(None);
                }
                *sent = true;
                Ok(Some(Frame { rgba: frame.rgba.clone(), label: frame.label.clone(), path: frame.path.clone() }))
            }
            #[cfg(feature = "camera")]
            Source::Camera(c) => c.next_frame(),
        }
    }

    /// Makes a still image count as a new frame on every call.
    pub fn set_repeat(&mut self, on: bool) {
        if let Source::Image { repeat, .. } = self {
            *repeat = on;
        }
    }

    /// Shows a still image again (after a model switch).
    pub fn rewind(&mut self) {
        if let Source::Image { sent, .. } = self {
            *sent = false;
        }
    }

    /// Whether the source produces new frames over time (a still image does not).
    pub fn is_live(&self) -> bool {
        !matches!(self, Source::Image { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("folder:a/b".parse::<SourceSpec>().unwrap(), SourceSpec::Folder("a/b".into()));
        assert_eq!("image:x.jpg".parse::<SourceSpec>().unwrap(), SourceSpec::Image("x.jpg".into()));
        assert_eq!("camera".parse::<SourceSpec>().unwrap(), SourceSpec::Camera { index: 0, width: 640, height: 480 });
        assert_eq!(
            "camera:1:1280x720".parse::<SourceSpec>().unwrap(),
            SourceSpec::Camera { index: 1, width: 1280, height: 720 }
        );
        assert!("camera:x".parse::<SourceSpec>().is_err());
        assert!("video:a.mp4".parse::<SourceSpec>().is_err());
    }

    #[test]
    fn folder_errors_are_messages() {
        assert!(list_images(Path::new("/definitely/not/here")).unwrap_err().contains("cannot read folder"));
        let empty = std::env::temp_dir().join(format!("wgpose-demo-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(list_images(&empty).unwrap_err().contains("no images"));
        let _ = std::fs::remove_dir(&empty);
    }
}
