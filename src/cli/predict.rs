//! `wgpose predict`: keypoints for the people in images, as JSON and/or a skeleton overlay.

use std::path::{Path, PathBuf};

use clap::Args;
use wgpose::image_io::load_rgb;
use wgpose::models::{config, ModelConfig};
use wgpose::{Error, Estimator, EstimatorOptions, Pose, Result};

use super::{open_estimator, DeviceArg};

use wgpose::models::DEFAULT_MODEL;

#[derive(Args)]
pub struct PredictArgs {
    /// Images (JPEG or PNG). Default: the bundled sample image.
    images: Vec<PathBuf>,
    /// A config name (see `wgpose models`) or a .safetensors weights file (its model card names
    /// the config).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Person box `x,y,w,h` in image pixels (default: the whole image).
    #[arg(long)]
    bbox: Option<String>,
    /// Write the keypoints of every image as JSON: `{"file.jpg": [[x, y, score], ...]}`.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the image with the skeleton drawn on it (PNG); a directory when several images.
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// `auto`: the GPU unless the adapter is a software one (then the CPU executor, which is
    /// faster there); the choice and its reason are printed.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Average with the mirrored image (flip test).
    #[arg(long)]
    flip: bool,
    /// Joints below this confidence are not drawn.
    #[arg(long, default_value_t = 0.2)]
    threshold: f32,
}

pub fn parse_bbox(s: &str) -> Result<[f32; 4]> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>().map_err(|_| Error::Input(format!("bbox `{s}` is not x,y,w,h"))))
        .collect::<Result<_>>()?;
    match v[..] {
        [x, y, w, h] if v.iter().all(|f| f.is_finite()) && w > 0.0 && h > 0.0 => Ok([x, y, w, h]),
        _ => Err(Error::Input(format!("bbox `{s}` must be four finite numbers x,y,w,h with w, h > 0"))),
    }
}

/// A config name, or a weights file whose card says which config it belongs to.
pub fn resolve_model(model: &str) -> Result<(ModelConfig, Option<PathBuf>)> {
    let p = Path::new(model);
    if model.ends_with(".safetensors") || p.is_file() {
        return Ok((ModelConfig::from_weights_file(p)?, Some(p.to_path_buf())));
    }
    Ok((config(model)?, None))
}

pub fn run(a: PredictArgs) -> Result<()> {
    let images = if a.images.is_empty() {
        vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.jpg")]
    } else {
        a.images.clone()
    };
    let bbox = a.bbox.as_deref().map(parse_bbox).transpose()?;
    let (cfg, weights) = resolve_model(&a.model)?;
    let opts = EstimatorOptions { flip_test: a.flip, ..Default::default() };
    let mut est = open_estimator(&cfg, weights.as_deref(), a.device, opts)?;
    eprintln!("model {}: {}; {}", cfg.name, est.weights, est.device_choice());
    if let Some(dir) = a.overlay.as_ref().filter(|_| images.len() > 1) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
    }
    let mut json = serde_json::Map::new();
    let mut failed = 0;
    for path in &images {
        let result = predict_one(&mut est, path, bbox);
        match result {
            Ok((pose, mut img, scale)) => {
                let kps: Vec<[f32; 3]> = pose.keypoints.iter().map(|k| [k.x, k.y, k.score]).collect();
                let name =
                    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
                if a.json.is_none() {
                    println!("{name}: score {:.3}", pose.score);
                    for (j, k) in kps.iter().enumerate() {
                        println!("  {:<16} {:>8.1} {:>8.1}  {:.3}", pose.skeleton.joints[j], k[0], k[1], k[2]);
                    }
                }
                json.insert(name.clone(), serde_json::json!(kps));
                if let Some(out) = &a.overlay {
                    let target =
                        if images.len() > 1 { out.join(Path::new(&name).with_extension("png")) } else { out.clone() };
                    // Drawn on the working image (at most WORK_SIDE pixels on its longest side).
                    let on_canvas: Vec<[f32; 3]> = kps.iter().map(|k| [k[0] / scale, k[1] / scale, k[2]]).collect();
                    wgpose::overlay::draw_skeleton(&mut img, pose.skeleton, &on_canvas, a.threshold);
                    img.save(&target)
                        .map_err(|e| Error::Format { path: target.display().to_string(), msg: e.to_string() })?;
                    eprintln!("wrote {}", target.display());
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e}", path.display());
            }
        }
    }
    if let Some(out) = &a.json {
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Input(e.to_string()))?;
        std::fs::write(out, text).map_err(|e| Error::Io { path: out.display().to_string(), source: e })?;
        eprintln!("wrote {}", out.display());
    }
    if failed == images.len() {
        return Err(Error::Input(format!("none of the {} image(s) could be processed", images.len())));
    }
    Ok(())
}

/// The pose in original-image pixels, the working image (EXIF-rotated, at most
/// `WORK_SIDE` pixels) to draw on, and `original / working` scale.
fn predict_one(est: &mut Estimator, path: &Path, bbox: Option<[f32; 4]>) -> Result<(Pose, image::RgbImage, f32)> {
    let img = load_rgb(path)?;
    // No --bbox: `Boxes::Auto`, today the whole image.
    let pose = est.estimate(&img, bbox)?.into_iter().next().ok_or_else(|| Error::Input("no person found".into()))?;
    Ok((pose, img.rgb, img.scale))
}
