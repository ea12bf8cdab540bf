//! `wgpose predict`: keypoints for the people in images, as JSON and/or a skeleton overlay.

use std::path::{Path, PathBuf};

use clap::Args;
use wgpose::detector::{PeopleOptions, PersonDetector};
use wgpose::image_io::load_rgb;
use wgpose::models::{config, ModelConfig};
use wgpose::pipeline::crop::validate_box;
use wgpose::pipeline::detect::{DetectConfig, Detection};
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
    /// Person box `x,y,w,h` in image pixels: skips detection and estimates that one person.
    #[arg(long)]
    bbox: Option<String>,
    /// The person detector (a config name or a weights file) that finds the people when no
    /// `--bbox` is given.
    #[arg(long, default_value = wgpose::models::DEFAULT_DETECTOR)]
    detector: String,
    /// No detection: the whole image is the person box (the behaviour before the detector).
    #[arg(long, conflicts_with = "bbox")]
    no_detect: bool,
    /// At most this many people per image (highest detection scores first).
    #[arg(long, default_value_t = 10)]
    max_people: usize,
    #[command(flatten)]
    people: super::PeopleArgs,
    /// Write JSON: `{"file.jpg": [[x, y, score], ...]}` holds the top-scoring person of every
    /// image (in the model's joint order, original pixels; `[]` when nobody was found), and
    /// `"people": {"file.jpg": [{"score", "box": [x, y, w, h], "detection_box", "pose_score",
    /// "keypoints"}, ...]}` every person found, highest detection score first (`box` is the crop
    /// the pose came from, `detection_box` the detector's tight box, null with --bbox).
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
    /// Run the network at this input size, HxW (e.g. 128x128), instead of the size its weights
    /// were trained at (their model card's): each side a multiple of the config's size multiple
    /// (`wgpose models`). Smaller is faster, and accuracy is best near the trained size.
    #[arg(long)]
    size: Option<String>,
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
    if p.is_dir() {
        return Err(Error::Input(format!(
            "--model {model} is a directory; give a config name (see `wgpose models`) or a .safetensors file"
        )));
    }
    if model.ends_with(".safetensors") || p.is_file() {
        let card = wgpose::weights::read_card(p)?;
        if card.config.trim().is_empty() {
            return Err(Error::Format {
                path: p.display().to_string(),
                msg: "no model card (its metadata names no `config`), so the network it belongs to is unknown; \
                      run it with `wgpose run --model NAME --weights FILE`"
                    .into(),
            });
        }
        if card.epochs == Some(0) {
            eprintln!("warning: {model} was trained for 0 epochs: its weights are a random initialisation");
        }
        let cfg = config(&card.config)?.with_card(&card);
        return Ok((cfg, Some(p.to_path_buf())));
    }
    Ok((config(model)?, None))
}

/// Checks every argument before a model is loaded or an image decoded.
fn validate(a: &PredictArgs) -> Result<()> {
    if !(a.threshold.is_finite() && (0.0..=1.0).contains(&a.threshold)) {
        return Err(Error::Input(format!("--threshold {} must be a number from 0 to 1", a.threshold)));
    }
    if a.device == DeviceArg::Both {
        return Err(Error::Input("--device both is for benchmarks; predict runs on one device: gpu or cpu".into()));
    }
    let several = a.images.len() > 1;
    if let Some(out) = &a.overlay {
        if !several && out.is_dir() {
            return Err(Error::Input(format!(
                "--overlay {} is a directory; with one image it names the PNG to write",
                out.display()
            )));
        }
        if several && out.exists() && !out.is_dir() {
            return Err(Error::Input(format!(
                "--overlay {} is a file; with several images it names a directory",
                out.display()
            )));
        }
    }
    if let Some(json) = a.json.as_ref().filter(|p| p.is_dir()) {
        return Err(Error::Input(format!("--json {} is a directory", json.display())));
    }
    // Results never replace an input or a picture: `predict --json photo.jpg` (the image
    // forgotten, so the bundled sample is the input) would otherwise turn photo.jpg into JSON.
    let inputs = input_images(a);
    for (flag, out) in [("--json", &a.json), ("--overlay", &a.overlay)] {
        let Some(out) = out else { continue };
        if inputs.iter().any(|i| same_file(i, out)) {
            return Err(Error::Input(format!(
                "{flag} {} is one of the input images; name a new file for the output",
                out.display()
            )));
        }
        if flag == "--json" && is_picture(out) {
            return Err(Error::Input(format!(
                "--json {} is a JPEG or PNG image; refusing to overwrite it with JSON (images to \
                 read come first: `wgpose predict IMAGE --json OUT.json`)",
                out.display()
            )));
        }
    }
    if a.json.is_some() && a.images.iter().any(|p| p.as_os_str() == "people") {
        return Err(Error::Input("an input named `people` would collide with the JSON's `people` key".into()));
    }
    DetectConfig { score_threshold: a.people.det_threshold, max_people: a.max_people, ..Default::default() }.check()?;
    a.people.check()?;
    Ok(())
}

/// Overlay file names for several images: `stem.png`, unless two inputs share a stem
/// (`a/x.jpg` and `b/x.jpg`, or `x.jpg` and `x.png`), then the path as given with its separators
/// and dots turned into `_` so no overlay overwrites another.
fn overlay_names(images: &[PathBuf]) -> Vec<PathBuf> {
    let stem = |p: &Path| p.file_stem().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut counts = std::collections::HashMap::new();
    for p in images {
        *counts.entry(stem(p)).or_insert(0usize) += 1;
    }
    images
        .iter()
        .map(|p| {
            let s = stem(p);
            if counts[&s] == 1 {
                PathBuf::from(s).with_extension("png")
            } else {
                let flat: String = p
                    .display()
                    .to_string()
                    .chars()
                    .map(|c| if c.is_alphanumeric() || c == '-' { c } else { '_' })
                    .collect();
                PathBuf::from(format!("{flat}.png"))
            }
        })
        .collect()
}

/// An image error names its file already when it comes from reading or decoding it.
fn describe_failure(path: &Path, e: &Error) -> String {
    match e {
        Error::Io { .. } | Error::Format { .. } => e.to_string(),
        _ => format!("{}: {e}", path.display()),
    }
}

/// The images to read: the arguments, or the bundled sample when there are none.
fn input_images(a: &PredictArgs) -> Vec<PathBuf> {
    if a.images.is_empty() {
        vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.jpg")]
    } else {
        a.images.clone()
    }
}

/// Whether two paths name the same existing file (symbolic links and `..` resolved).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether `p` is an existing file that starts like a JPEG or a PNG.
fn is_picture(p: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    let Ok(mut f) = std::fs::File::open(p) else { return false };
    match f.read(&mut head) {
        Ok(n) => head[..n].starts_with(&[0xFF, 0xD8, 0xFF]) || head[..n].starts_with(b"\x89PNG\r\n\x1a\n"),
        Err(_) => false,
    }
}

pub fn run(a: PredictArgs) -> Result<()> {
    validate(&a)?;
    let images = input_images(&a);
    let bbox = a.bbox.as_deref().map(parse_bbox).transpose()?;
    let (cfg, weights) = resolve_model(&a.model)?;
    // The detector is attached below, from --detector with this command's thresholds.
    let people = a.people.apply(PeopleOptions::default());
    let input_size = a.size.as_deref().map(super::profile::parse_size).transpose()?;
    let opts = EstimatorOptions { flip_test: a.flip, find_people: false, people, input_size, ..Default::default() };
    let mut est = open_estimator(&cfg, weights.as_deref(), a.device, opts)?;
    let [_, in_h, in_w] = est.config.input;
    eprintln!("model {} at {in_h}x{in_w}: {}; {}", cfg.name, est.weights, est.device_choice());
    if bbox.is_none() && !a.no_detect {
        let (dcfg, dweights) = resolve_model(&a.detector)?;
        let dc =
            DetectConfig { score_threshold: a.people.det_threshold, max_people: a.max_people, ..Default::default() };
        // The detector runs where the pose network runs.
        match PersonDetector::with_gpu(&dcfg, dweights.as_deref(), est.gpu_context(), dc) {
            Ok(d) => {
                eprintln!("detector {}: {}", dcfg.name, d.weights);
                est.set_detector(Some(d))?;
            }
            // No shipped detector (a crate user without models/): say so and keep working.
            Err(e) if dweights.is_none() => {
                eprintln!("warning: {e}; estimating one person on the whole image");
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(dir) = a.overlay.as_ref().filter(|_| images.len() > 1) {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
    }
    let overlay_files = overlay_names(&images);
    // Keyed by the path as given, so two inputs with the same file name keep both results.
    let mut json = serde_json::Map::new();
    let mut people_json = serde_json::Map::new();
    let mut failed = 0;
    for (path, overlay_file) in images.iter().zip(&overlay_files) {
        let result = predict_one(&mut est, path, bbox);
        match result {
            Ok((people, mut img, scale)) => {
                let name = path.display().to_string();
                let kps_of =
                    |pose: &Pose| -> Vec<[f32; 3]> { pose.keypoints.iter().map(|k| [k.x, k.y, k.score]).collect() };
                if a.json.is_none() {
                    println!("{name}: {} {}", people.len(), if people.len() == 1 { "person" } else { "people" });
                    for (i, (pose, det)) in people.iter().enumerate() {
                        let b = pose.bbox;
                        println!(
                            "  person {}: detection {}, pose score {:.3}, box {:.0},{:.0},{:.0},{:.0}",
                            i + 1,
                            det.map_or("-".to_string(), |d| format!("{:.3}", d.score)),
                            pose.score,
                            b[0],
                            b[1],
                            b[2],
                            b[3]
                        );
                        for (j, k) in kps_of(pose).iter().enumerate() {
                            println!("    {:<16} {:>8.1} {:>8.1}  {:.3}", pose.skeleton.joints[j], k[0], k[1], k[2]);
                        }
                    }
                }
                json.insert(
                    name.clone(),
                    serde_json::json!(people.first().map(|(p, _)| kps_of(p)).unwrap_or_default()),
                );
                people_json.insert(
                    name,
                    serde_json::json!(people
                        .iter()
                        .map(|(pose, det)| serde_json::json!({
                            "score": det.map_or(pose.score, |d| d.score),
                            "box": pose.bbox,
                            "detection_box": det.map(|d| d.bbox),
                            "pose_score": pose.score,
                            "keypoints": kps_of(pose),
                        }))
                        .collect::<Vec<_>>()),
                );
                if let Some(out) = &a.overlay {
                    let target = if images.len() > 1 { out.join(overlay_file) } else { out.clone() };
                    // Drawn on the working image (at most WORK_SIDE pixels on its longest side).
                    for (pose, _) in &people {
                        let on_canvas: Vec<[f32; 3]> =
                            kps_of(pose).iter().map(|k| [k[0] / scale, k[1] / scale, k[2]]).collect();
                        wgpose::overlay::draw_skeleton(&mut img, pose.skeleton, &on_canvas, a.threshold);
                    }
                    match img.save(&target) {
                        Ok(()) => eprintln!("wrote {}", target.display()),
                        Err(e) => {
                            failed += 1;
                            eprintln!("error: {}: {e}", target.display());
                        }
                    }
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}", describe_failure(path, &e));
            }
        }
    }
    if !json.is_empty() {
        json.insert("people".into(), serde_json::Value::Object(people_json));
    }
    if let Some(out) = a.json.as_ref().filter(|_| !json.is_empty()) {
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Input(e.to_string()))?;
        std::fs::write(out, text).map_err(|e| Error::Io { path: out.display().to_string(), source: e })?;
        eprintln!("wrote {}", out.display());
    }
    if failed > 0 {
        return Err(Error::Input(format!("{failed} of the {} image(s) failed (see above)", images.len())));
    }
    Ok(())
}

/// The people in original-image pixels (with their detections when the detector found them),
/// highest score first; the working image (EXIF-rotated, at most `WORK_SIDE` pixels) to draw
/// on; and the `original / working` scale.
type Found = (Vec<(Pose, Option<Detection>)>, image::RgbImage, f32);

fn predict_one(est: &mut Estimator, path: &Path, bbox: Option<[f32; 4]>) -> Result<Found> {
    let img = load_rgb(path)?;
    if let Some(b) = bbox {
        // Checked in original pixels, before any executor sees the box.
        let [w, h] = img.original_size;
        validate_box(b, w as usize, h as usize)?;
    }
    let people: Vec<(Pose, Option<Detection>)> = if bbox.is_none() && est.detector().is_some() {
        est.people(&img)?.into_iter().map(|p| (p.pose, Some(p.detection))).collect()
    } else {
        // A given box, or no detector: the whole image.
        est.estimate(&img, bbox)?.into_iter().map(|p| (p, None)).collect()
    };
    Ok((people, img.rgb, img.scale))
}
