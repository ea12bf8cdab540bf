//! `wgpose eval`: a model over a dataset, with per-joint and mean metrics and throughput.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use wgpose::data::{box_from_keypoints, coco, lsp, mpii, parse_range, Annotation};
use wgpose::detector::{PeopleOptions, PersonDetector};
use wgpose::estimator::{Estimator, EstimatorOptions, Pose};
use wgpose::image_io::load_rgb;
use wgpose::metrics::{self, PckNorm};
use wgpose::pipeline::crop::ImageRef;
use wgpose::pipeline::detect::{box_ap, DetectConfig, Detection};
use wgpose::skeleton::Skeleton;
use wgpose::{Error, Result};

use super::predict::resolve_model;
use super::{open_estimator, DeviceArg};
use wgpose::models::DEFAULT_MODEL;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Lsp,
    Coco,
    Mpii,
}

/// Where the person boxes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BoxSource {
    /// The dataset's ground truth (LSP: the labelled joints' box enlarged by 25%).
    Gt,
    /// The person detector on the whole image, top-scoring person (LSP only): the "in the wild"
    /// number. An image where nothing is detected counts every joint as missed.
    Detected,
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long, value_enum)]
    format: Format,
    /// Dataset folder: LSP `joints.mat` + `images/`; COCO `annotations/person_keypoints_val2017.json`
    /// + `val2017/` (or one .json beside its images); MPII one HRNet-layout .json beside its images.
    #[arg(long)]
    root: PathBuf,
    /// LSP image numbers, inclusive: `9001..10000`.
    #[arg(long)]
    range: Option<String>,
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Write predictions: LSP/MPII `{"file.jpg": [[x, y, score], ...]}` in the dataset's joint
    /// order and original pixels; COCO a standard results file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    flip: bool,
    /// `auto`: the GPU unless the adapter is a software one (then the CPU executor, which is
    /// faster there); the choice and its reason are printed.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Evaluate at most this many people (quick checks).
    #[arg(long)]
    limit: Option<usize>,
    /// Run the network at this input size, HxW (e.g. 128x128), instead of the size its weights
    /// were trained at (their model card's): each side a multiple of the config's size multiple
    /// (`wgpose models`). Smaller is faster, and accuracy is best near the trained size.
    #[arg(long)]
    size: Option<String>,
    /// Where each person's box comes from: the dataset's ground truth, or the person detector on
    /// the whole image (LSP only).
    #[arg(long, value_enum, default_value_t = BoxSource::Gt)]
    boxes: BoxSource,
    /// With ground-truth boxes: move each box's centre by up to this fraction of its width and
    /// height on each axis and scale it by a factor in [1 - F, 1 + F], uniformly at random
    /// (seeded per person by `--jitter-seed`): how the pose model copes with a detector's
    /// loose, shifted boxes, measured without the detector's misses. 0: the exact boxes.
    #[arg(long, default_value_t = 0.0)]
    box_jitter: f32,
    /// Seed of `--box-jitter`.
    #[arg(long, default_value_t = 1)]
    jitter_seed: u64,
    /// Person detector for `--boxes detected`: a config name or a weights file.
    #[arg(long, default_value = wgpose::models::DEFAULT_DETECTOR)]
    detector: String,
    /// With `--boxes detected`: re-crop this many times on the box of the predicted keypoints
    /// (the library's default, `PeopleOptions::refine_passes`, is 1).
    #[arg(long, default_value_t = 1)]
    refine: usize,
    /// Keypoints at least this confident frame the re-crop (0: all of them, the library's
    /// default).
    #[arg(long, default_value_t = 0.0)]
    refine_threshold: f32,
    /// With `--boxes detected`: who counts as a person (an image where nobody qualifies counts
    /// every joint as missed).
    #[command(flatten)]
    people: super::PeopleArgs,
}

fn first_json(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
    let mut jsons: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    jsons.sort();
    jsons.into_iter().next().ok_or_else(|| Error::Input(format!("no annotation .json in {}", dir.display())))
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.device == DeviceArg::Both {
        return Err(Error::Input("--device both is for benchmarks; eval runs on one device: gpu or cpu".into()));
    }
    if a.limit == Some(0) {
        return Err(Error::Input("--limit must be at least 1".into()));
    }
    let range = a.range.as_deref().map(parse_range).transpose()?;
    let input_size = a.size.as_deref().map(super::profile::parse_size).transpose()?;
    // People to evaluate, and the crop padding that matches each benchmark's box rule.
    let (people, missing, padding, coco_gt) = match a.format {
        Format::Lsp => {
            let set = lsp::load_lsp(&a.root, range, lsp::Visibility::Auto)?;
            (set.annotations, set.missing, 1.0, None)
        }
        Format::Mpii => {
            let json = first_json(&a.root)?;
            let dir = if a.root.join("images").is_dir() { a.root.join("images") } else { a.root.clone() };
            let set = mpii::load_mpii(&json, &dir)?;
            (set.annotations, set.missing, 1.25, None)
        }
        Format::Coco => {
            let (json, dir) = if a.root.join("annotations/person_keypoints_val2017.json").is_file() {
                (a.root.join("annotations/person_keypoints_val2017.json"), a.root.join("val2017"))
            } else {
                (first_json(&a.root)?, a.root.clone())
            };
            let ds = coco::load_coco(&json, &dir)?;
            let missing = ds.missing_images.clone();
            let persons = ds.persons();
            if persons.is_empty() {
                return Err(Error::Input(format!(
                    "no people to evaluate in {}: {}",
                    json.display(),
                    ds.persons_summary()
                )));
            }
            (persons, missing, 1.25, Some(ds))
        }
    };
    if !missing.is_empty() {
        eprintln!("warning: {} labelled image(s) are not on disk (first: {})", missing.len(), missing[0].display());
    }
    let people: Vec<Annotation> = people.into_iter().take(a.limit.unwrap_or(usize::MAX)).collect();
    if people.is_empty() {
        return Err(Error::Input("no people to evaluate".into()));
    }
    let dataset_skeleton: &'static Skeleton = people[0].skeleton;
    if a.boxes == BoxSource::Detected && a.format != Format::Lsp {
        return Err(Error::Input("--boxes detected is implemented for --format lsp (one person per image)".into()));
    }
    let detected = a.boxes == BoxSource::Detected;
    if !(0.0..0.5).contains(&a.box_jitter) {
        return Err(Error::Input(format!("--box-jitter {} must be in [0, 0.5)", a.box_jitter)));
    }
    if detected && a.box_jitter > 0.0 {
        return Err(Error::Input("--box-jitter moves ground-truth boxes; --boxes detected has its own".into()));
    }
    if detected {
        if !(0.0..=1.0).contains(&a.refine_threshold) {
            return Err(Error::Input(format!("--refine-threshold {} must be in [0, 1]", a.refine_threshold)));
        }
        a.people.check()?;
    }
    let mut det_found: Vec<Vec<Detection>> = Vec::new();
    let mut det_gt: Vec<Vec<[f32; 4]>> = Vec::new();
    let (cfg, weights) = resolve_model(&a.model)?;
    // Detected boxes go through the library's own pipeline (`Estimator::people`: tight boxes,
    // the default crop padding, refinement on the keypoints), so this number is what users get.
    let people_opts = a.people.apply(PeopleOptions {
        refine_passes: a.refine,
        refine_threshold: a.refine_threshold,
        ..Default::default()
    });
    let opts = if detected {
        EstimatorOptions { flip_test: a.flip, find_people: false, people: people_opts, ..Default::default() }
    } else {
        EstimatorOptions { flip_test: a.flip, padding, find_people: false, ..Default::default() }
    };
    let opts = EstimatorOptions { input_size, ..opts };
    let mut est = open_estimator(&cfg, weights.as_deref(), a.device, opts)?;
    let [_, in_h, in_w] = est.config.input;
    eprintln!("model {} at {in_h}x{in_w}: {}; {}", cfg.name, est.weights, est.device_choice());
    let pipeline_detect = DetectConfig { score_threshold: a.people.det_threshold, ..Default::default() };
    if detected {
        let (dcfg, dweights) = resolve_model(&a.detector)?;
        let d = PersonDetector::with_gpu(&dcfg, dweights.as_deref(), est.gpu_context(), pipeline_detect)?;
        eprintln!("detector {}: {}", dcfg.name, d.weights);
        est.set_detector(Some(d))?;
    }
    // Model joints -> dataset joints by name; dataset joints the model lacks count as misses.
    let mapping = est.skeleton.mapping_to(dataset_skeleton);
    let unmapped: Vec<&str> =
        mapping.iter().zip(dataset_skeleton.joints).filter(|(m, _)| m.is_none()).map(|(_, j)| *j).collect();
    if !unmapped.is_empty() {
        eprintln!(
            "warning: {} predicts {} joints, the dataset labels {}: {} of them ({}) have no prediction and count as misses",
            cfg.name,
            est.skeleton.joints.len(),
            dataset_skeleton.joints.len(),
            unmapped.len(),
            unmapped.join(", ")
        );
    }

    let t0 = Instant::now();
    let mut preds: Vec<Vec<[f32; 3]>> = Vec::new();
    let mut gts: Vec<Annotation> = Vec::new();
    let mut unreadable: Vec<(PathBuf, String)> = Vec::new();
    let mut cache: Option<(PathBuf, wgpose::image_io::LoadedImage)> = None;
    for (i, gt) in people.iter().enumerate() {
        let bbox = match a.format {
            Format::Lsp => box_from_keypoints(&gt.keypoints, 1.25),
            _ => gt.bbox,
        };
        let Some(bbox) = bbox else {
            unreadable.push((gt.image.clone(), "no person box (no labelled joint)".into()));
            continue;
        };
        let bbox = jittered(bbox, a.box_jitter, a.jitter_seed, i);
        if cache.as_ref().is_none_or(|(p, _)| *p != gt.image) {
            match load_rgb(&gt.image) {
                Ok(img) => cache = Some((gt.image.clone(), img)),
                Err(e) => {
                    unreadable.push((gt.image.clone(), e.to_string()));
                    cache = None;
                    continue;
                }
            }
        }
        let Some((_, img)) = cache.as_ref() else { continue };
        let found = if detected { detect_and_estimate(&mut est, img, pipeline_detect).map(Some) } else { Ok(None) };
        let pose = match found {
            Err(e) => {
                unreadable.push((gt.image.clone(), e.to_string()));
                continue;
            }
            Ok(Some((dets, pose))) => {
                det_found.push(dets);
                det_gt.push(vec![bbox]);
                match pose {
                    Some(p) => p,
                    None => {
                        // Nobody detected: every joint of this person is a miss.
                        preds.push(vec![[f32::NAN, f32::NAN, 0.0]; mapping.len()]);
                        gts.push(gt.clone());
                        continue;
                    }
                }
            }
            // Box and keypoints in the original image's pixels (the estimator applies the scale).
            Ok(None) => match est.estimate(img, bbox) {
                Ok(mut poses) if !poses.is_empty() => poses.remove(0),
                Ok(_) => {
                    unreadable.push((gt.image.clone(), "no pose".into()));
                    continue;
                }
                Err(e) => {
                    unreadable.push((gt.image.clone(), e.to_string()));
                    continue;
                }
            },
        };
        let kps: Vec<[f32; 3]> = mapping
            .iter()
            .map(|m| {
                m.map_or([f32::NAN, f32::NAN, 0.0], |j| {
                    let k = pose.keypoints[j];
                    [k.x, k.y, k.score]
                })
            })
            .collect();
        preds.push(kps);
        gts.push(gt.clone());
        if (i + 1) % 50 == 0 || i + 1 == people.len() {
            let el = t0.elapsed().as_secs_f64();
            eprint!("\r[{}/{}] {:.1} people/s", i + 1, people.len(), (i + 1) as f64 / el);
        }
    }
    eprintln!();
    let elapsed = t0.elapsed().as_secs_f64();
    for (p, why) in &unreadable {
        // Reading and decoding errors name the file already.
        let named = why.contains(&p.display().to_string());
        eprintln!("skipped {}", if named { why.clone() } else { format!("{}: {why}", p.display()) });
    }
    println!(
        "{} people evaluated in {:.1} s ({:.2} people/s), {} skipped",
        gts.len(),
        elapsed,
        gts.len() as f64 / elapsed,
        unreadable.len()
    );
    if gts.is_empty() {
        return Err(Error::Input("no image could be evaluated".into()));
    }
    if a.box_jitter > 0.0 {
        println!(
            "ground-truth boxes jittered: centre +-{0} of the box size per axis, size x[{1}, {2}] (seed {3})",
            a.box_jitter,
            1.0 - a.box_jitter,
            1.0 + a.box_jitter,
            a.jitter_seed
        );
    }
    if detected {
        let m = box_ap(&det_found, &det_gt, 0.5)?;
        let undetected = det_found.iter().filter(|d| d.is_empty()).count();
        println!(
            "person boxes (IoU 0.5): AP {:.1}, recall {:.1} ({} people, {} detections, {} images with none); \
             pose on the top detection",
            100.0 * m.ap,
            100.0 * m.recall,
            m.gt,
            m.detections,
            undetected
        );
    }
    match a.format {
        Format::Lsp | Format::Mpii => {
            let results = if a.format == Format::Lsp {
                vec![
                    ("PCK@0.2 (torso)", metrics::pck(&preds, &gts, 0.2, PckNorm::Torso)?),
                    ("PCK@0.2 (box)", metrics::pck(&preds, &gts, 0.2, PckNorm::Box)?),
                ]
            } else {
                vec![("PCKh@0.5", metrics::pckh(&preds, &gts, 0.5)?)]
            };
            print!("{:<16}", "joint");
            for (name, _) in &results {
                print!(" {name:>16}");
            }
            println!();
            for (j, joint) in dataset_skeleton.joints.iter().enumerate() {
                print!("{joint:<16}");
                for (_, r) in &results {
                    print!(" {:>16}", r.per_joint[j].map_or("-".into(), |v| format!("{:.1}", 100.0 * v)));
                }
                println!();
            }
            print!("{:<16}", "mean");
            for (_, r) in &results {
                print!(" {:>16.1}", 100.0 * r.mean);
            }
            println!();
            if let Some(out) = &a.json {
                let mut m = serde_json::Map::new();
                for (gt, p) in gts.iter().zip(&preds) {
                    let name = gt.image.file_name().map_or_else(|| gt.id.clone(), |n| n.to_string_lossy().into_owned());
                    m.insert(
                        name,
                        serde_json::json!(p
                            .iter()
                            .map(|k| k.map(|v| if v.is_finite() { v } else { -1.0 }))
                            .collect::<Vec<_>>()),
                    );
                }
                let text = serde_json::to_string(&m).map_err(|e| Error::Input(e.to_string()))?;
                std::fs::write(out, text).map_err(|e| Error::Io { path: out.display().to_string(), source: e })?;
            }
        }
        Format::Coco => {
            let ds = coco_gt.ok_or_else(|| Error::Input("COCO ground truth missing".into()))?;
            let results: Vec<coco::CocoResult> = gts
                .iter()
                .zip(&preds)
                .filter_map(|(gt, p)| {
                    let score = p.iter().map(|k| k[2]).sum::<f32>() / p.len().max(1) as f32;
                    let kp: Vec<[f32; 3]> =
                        p.iter().map(|k| if k[0].is_finite() { *k } else { [0.0, 0.0, 0.0] }).collect();
                    gt.coco_image_id().map(|id| coco::CocoResult::new(id, &kp, score))
                })
                .collect();
            let stats = metrics::coco_keypoint_eval(&ds, &results)?;
            for (name, v) in metrics::CocoKeypointStats::NAMES.iter().zip(stats.as_array()) {
                println!("{name:<5} {:.3}", v);
            }
            if let Some(out) = &a.json {
                coco::write_coco_results(out, &results)?;
            }
        }
    }
    Ok(())
}

/// `bbox` (`[x, y, w, h]`) with its centre moved by up to `f` of its size per axis and its size
/// scaled by a factor in `[1 - f, 1 + f]`, drawn from a generator seeded by `(seed, person)` so
/// every run and every model sees the same boxes.
fn jittered(bbox: [f32; 4], f: f32, seed: u64, person: usize) -> [f32; 4] {
    if f == 0.0 {
        return bbox;
    }
    let mut rng = wgpose::rng::Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ person as u64);
    let [x, y, w, h] = bbox;
    let (cx, cy) = (x + 0.5 * w + rng.range(-f, f) * w, y + 0.5 * h + rng.range(-f, f) * h);
    let s = 1.0 + rng.range(-f, f);
    let (w, h) = (w * s, h * s);
    [cx - 0.5 * w, cy - 0.5 * h, w, h]
}

/// `--boxes detected` on one image: every detection down to score 0.05 as LSP boxes in original
/// pixels (for box AP, which integrates over scores), and the top person's pose from
/// [`Estimator::people`] at the pipeline's own threshold (None when nobody reaches it).
fn detect_and_estimate(
    est: &mut Estimator,
    img: &wgpose::image_io::LoadedImage,
    pipeline: DetectConfig,
) -> Result<(Vec<Detection>, Option<Pose>)> {
    let s = img.scale;
    let det = est.detector_mut().ok_or_else(|| Error::Input("no detector attached".into()))?;
    det.detect = DetectConfig { score_threshold: 0.05, ..pipeline };
    let all = det.detect_lsp_boxes(&ImageRef::from(&img.rgb));
    det.detect = pipeline;
    let all: Vec<Detection> = all?.iter().map(|t| Detection { bbox: t.bbox.map(|v| v * s), score: t.score }).collect();
    let top = est.people(img)?.into_iter().next().map(|p| p.pose);
    Ok((all, top))
}
