//! A training run: `wgpose train` end to end (data, loop, validation, logging, checkpoints,
//! resume, curve, final weights).
//!
//! # Outputs (all in `--out`)
//!
//! - `train_log.csv`: `epoch,step,loss,lr,val_pck,images_per_s,elapsed_s`. A row every
//!   `--log-every` steps (loss averaged over those steps, `val_pck` empty) and one per epoch end
//!   (loss averaged over the epoch, `val_pck` = PCK@0.2 torso on the validation people, empty
//!   without validation). `epoch` is 1-based; `step` counts optimiser steps over the whole run;
//!   `images_per_s` is training throughput (augmentation overlapped, validation excluded);
//!   `elapsed_s` is training wall time including earlier sessions of a resumed run.
//! - `checkpoint-eNNN.safetensors` after epoch NNN: weights (running statistics included) with a
//!   model card whose `epochs` is the number of completed epochs and whose extra keys hold
//!   `train_step`, `train_seed`, `train_loss`, `train_optimizer`, `train_batch`, `train_lr` and
//!   `heatmap_sigma` (the target Gaussians' sigma, which decoding reads);
//!   beside it `checkpoint-eNNN.optim.safetensors` with the optimiser state
//!   ([`super::optim`]).
//! - `curve.png`: loss per logged step and validation PCK per epoch (`training::plot`).
//! - `<model>.safetensors`: the final weights with the full card (data, epochs, wall time,
//!   validation PCK, GFLOPs), loadable by `--model <file>` of the other commands.
//! - With `--ema DECAY`: `<model>.ema.safetensors` and `checkpoint-eNNN.ema.safetensors`, the
//!   moving average of the weights ([`super::ema`]), validated after each epoch beside them.
//!
//! # Resume
//!
//! `--resume checkpoint-eNNN.safetensors` loads the weights (and running statistics), the
//! optimiser state from the `.optim.safetensors` beside it (a fresh optimiser, with a warning,
//! when that file is missing), the step counter and the elapsed time, and continues with epoch
//! NNN + 1 up to `--epochs` (a total, not a count of further epochs); with `--ema`, the average
//! continues from the `.ema.safetensors` beside the checkpoint. Epoch orders and
//! augmentations depend only on `(seed, epoch, position)`, so a resumed run draws the same
//! batches the uninterrupted run would have (same `--seed`, `--batch`, `--limit`). Rows of an
//! existing `train_log.csv` in `--out` from epochs after NNN are dropped, the rest is kept and
//! appended to.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::augment::{make_sample, AugmentConfig, AugmentParams, SampleShape};
pub use super::config::{DataFormat, LossArg, OptimArg, ScheduleArg, TrainConfig};
use super::dataset::{BatchSource, ImageCache, Loader, TrainSet};
use super::detection::{images_with_boxes, DetectAugment, DetectShape, DetectValSet, DetectionSet};
use super::distill::Teacher;
use super::ema::WeightAverage;
use super::optim::{Kind, Optim};
use super::plot::write_curve;
use crate::autodiff::{
    detection_loss, match_limb_swaps, mse_loss, rce_loss, stack_batch, step_lr, strip_final_sigmoid, train_step, BnMode,
};
use crate::cpu;
pub use crate::data::parse_range;
use crate::data::{lsp, Annotation};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::metrics::{pck, PckNorm};
use crate::models::{self, Family, ModelConfig};
use crate::pipeline::decode::{decode, DecodeConfig, HeatmapKind};
use crate::skeleton::Skeleton;
use crate::tensor::Tensor;
use crate::weights::{self, ModelCard};

/// The learning rate of optimiser step `step` (0-based) in epoch `epoch` of a run of
/// `total_steps` steps.
pub fn schedule_lr(a: &TrainConfig, epoch: usize, step: u64, total_steps: u64) -> f32 {
    let base = match a.schedule {
        ScheduleArg::Step => step_lr(a.lr, a.lr_gamma, a.lr_step, epoch),
        ScheduleArg::Cosine => {
            let t = (step as f64 / total_steps.max(1) as f64).min(1.0);
            (a.lr_min as f64 + 0.5 * (a.lr - a.lr_min) as f64 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
        }
    };
    if step < a.warmup {
        base * (step + 1) as f32 / a.warmup as f32
    } else {
        base
    }
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// The weights file written at the end (with its model card).
    pub final_weights: PathBuf,
    /// `--ema`'s average of the weights, written beside them.
    pub ema_weights: Option<PathBuf>,
    /// What `val_pck` holds: `PCK@0.2` (pose) or `box AP@0.5` (detector).
    pub val_metric: &'static str,
    /// Epochs completed, resumed ones included.
    pub epochs_done: usize,
    /// Optimiser steps completed, resumed ones included.
    pub steps: u64,
    /// Mean loss of the last epoch.
    pub last_loss: f64,
    /// The last validation score, when the run validates.
    pub val_pck: Option<f64>,
    /// Training speed over the last logged window.
    pub images_per_s: f64,
    /// Training wall time, earlier sessions of a resumed run included.
    pub wall_time_s: f64,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source: e }
}

/// One row of `train_log.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRow {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Optimiser steps so far.
    pub step: u64,
    /// Mean loss over the logged window (or the epoch, on an epoch's row).
    pub loss: f64,
    /// Learning rate of the last step.
    pub lr: f32,
    /// Validation score, on an epoch's last row.
    pub val_pck: Option<f64>,
    /// Training speed over the window.
    pub images_per_s: f64,
    /// Training wall time so far.
    pub elapsed_s: f64,
}

/// The header line of `train_log.csv`.
pub(crate) const CSV_HEADER: &str = "epoch,step,loss,lr,val_pck,images_per_s,elapsed_s";

impl LogRow {
    fn to_csv(&self) -> String {
        format!(
            "{},{},{:.6},{},{},{:.2},{:.1}",
            self.epoch,
            self.step,
            self.loss,
            self.lr,
            self.val_pck.map_or(String::new(), |p| format!("{p:.4}")),
            self.images_per_s,
            self.elapsed_s
        )
    }

    fn parse(line: &str) -> Option<LogRow> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 7 {
            return None;
        }
        Some(LogRow {
            epoch: f[0].parse().ok()?,
            step: f[1].parse().ok()?,
            loss: f[2].parse().ok()?,
            lr: f[3].parse().ok()?,
            val_pck: if f[4].is_empty() { None } else { Some(f[4].parse().ok()?) },
            images_per_s: f[5].parse().ok()?,
            elapsed_s: f[6].parse().ok()?,
        })
    }
}

/// Reads a `train_log.csv` (rows that do not parse are skipped).
pub fn read_log(path: &Path) -> Result<Vec<LogRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    Ok(text.lines().skip(1).filter_map(LogRow::parse).collect())
}

struct Log {
    path: PathBuf,
    rows: Vec<LogRow>,
}

impl Log {
    fn open(out: &Path, keep_until_epoch: Option<usize>) -> Result<Log> {
        let path = out.join("train_log.csv");
        let rows = match keep_until_epoch {
            Some(e) if path.is_file() => read_log(&path)?.into_iter().filter(|r| r.epoch <= e).collect(),
            _ => Vec::new(),
        };
        let mut text = format!("{CSV_HEADER}\n");
        for r in &rows {
            let _ = writeln!(text, "{}", r.to_csv());
        }
        std::fs::write(&path, text).map_err(|e| io_err(&path, e))?;
        Ok(Log { path, rows })
    }

    fn push(&mut self, row: LogRow) -> Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(|e| io_err(&self.path, e))?;
        writeln!(f, "{}", row.to_csv()).map_err(|e| io_err(&self.path, e))?;
        self.rows.push(row);
        Ok(())
    }

    fn plot(&self, path: &Path) -> Result<()> {
        let losses: Vec<(f64, f64)> =
            self.rows.iter().filter(|r| r.val_pck.is_none()).map(|r| (r.step as f64, r.loss)).collect();
        let pcks: Vec<(f64, f64)> = self.rows.iter().filter_map(|r| r.val_pck.map(|p| (r.step as f64, p))).collect();
        write_curve(path, &losses, &pcks)
    }
}

/// What a run validates with after each epoch: pose PCK ([`ValSet`]) or detector box AP
/// ([`DetectValSet`]). The score lands in the log's `val_pck` column and the card's metrics.
pub(crate) trait Validator {
    /// The score in [0, 1] of `graph` (`logits`: outputs are pre-sigmoid; `sigmoid`: they are
    /// probabilities already).
    fn score(&self, graph: &Graph, batch: usize, logits: bool, sigmoid: bool) -> Result<f64>;
    /// How many samples it scores.
    fn len(&self) -> usize;
    /// What the score is, e.g. `PCK@0.2`.
    fn metric(&self) -> &'static str;
    /// What a sample is, e.g. `people`.
    fn unit(&self) -> &'static str;
}

impl Validator for ValSet {
    fn score(&self, graph: &Graph, batch: usize, logits: bool, sigmoid: bool) -> Result<f64> {
        self.pck(graph, batch, logits, sigmoid)
    }
    fn len(&self) -> usize {
        self.people.len()
    }
    fn metric(&self) -> &'static str {
        "PCK@0.2"
    }
    fn unit(&self) -> &'static str {
        "people"
    }
}

impl Validator for DetectValSet {
    fn score(&self, graph: &Graph, batch: usize, logits: bool, _sigmoid: bool) -> Result<f64> {
        Ok(self.metrics(graph, batch, logits)?.ap)
    }
    fn len(&self) -> usize {
        self.images.len()
    }
    fn metric(&self) -> &'static str {
        "box AP@0.5"
    }
    fn unit(&self) -> &'static str {
        "images"
    }
}

/// Validation people with their (unaugmented) crops' images cached.
pub(crate) struct ValSet {
    /// The validation people.
    pub people: Vec<Annotation>,
    /// Crop and heatmap geometry of the network.
    pub shape: SampleShape,
    cache: ImageCache,
}

impl ValSet {
    /// At most `limit` people, evenly spaced over `people` (those with a labelled joint).
    pub(crate) fn new(people: Vec<Annotation>, shape: SampleShape, limit: Option<usize>) -> Self {
        let people: Vec<Annotation> = people.into_iter().filter(|a| a.num_labelled() > 0).collect();
        let n = limit.unwrap_or(usize::MAX).min(people.len());
        let picked =
            if n == people.len() { people } else { (0..n).map(|i| people[i * people.len() / n].clone()).collect() };
        ValSet { people: picked, shape, cache: ImageCache::new(usize::MAX) }
    }

    /// PCK@0.2 (torso) of `graph` on the validation people: network on the evaluation crop, the
    /// last output decoded (DARK), keypoints mapped back to image pixels. `logits` says the
    /// outputs are pre-sigmoid (an RCE-trained graph); `sigmoid` that they are probabilities.
    pub(crate) fn pck(&self, graph: &Graph, batch: usize, logits: bool, sigmoid: bool) -> Result<f64> {
        let kind = if logits || sigmoid { HeatmapKind::Sigmoid } else { HeatmapKind::Linear };
        let dcfg = DecodeConfig::dark(kind, self.shape.sigma);
        let mut preds: Vec<Vec<[f32; 3]>> = Vec::with_capacity(self.people.len());
        for chunk in self.people.chunks(batch.max(1)) {
            let mut inputs = Vec::new();
            let mut crops = Vec::new();
            for a in chunk {
                let img = self.cache.get(&a.image)?;
                let s = make_sample(&img, &a.keypoints, a.skeleton, &self.shape, &AugmentParams::identity())?;
                inputs.push(s.input);
                crops.push(s.crop);
            }
            let x = stack_batch(&inputs)?;
            let outs = cpu::run(graph, std::slice::from_ref(&x))?;
            let mut hm = outs.into_iter().last().ok_or_else(|| Error::Graph("the graph has no output".into()))?;
            if logits {
                hm.data.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
            }
            let stride = self.shape.input_w as f32 / hm.shape[3] as f32;
            for (kps, crop) in decode(&hm, &dcfg)?.into_iter().zip(&crops) {
                preds.push(
                    kps.into_iter()
                        .map(|k| {
                            let k = k.to_image(crop, stride);
                            [k.x, k.y, k.score]
                        })
                        .collect(),
                );
            }
        }
        Ok(pck(&preds, &self.people, 0.2, PckNorm::Torso)?.mean)
    }
}

fn optim_path(ckpt: &Path) -> PathBuf {
    let stem = ckpt.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    ckpt.with_file_name(format!("{stem}.optim.safetensors"))
}

/// Where `--ema`'s average of a checkpoint or final weights file is written.
fn ema_path(weights: &Path) -> PathBuf {
    let stem = weights.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    weights.with_file_name(format!("{stem}.ema.safetensors"))
}

/// The model card of `--ema`'s average: the trained weights' card with the average's decay,
/// update count and validation score.
fn ema_card(card: &ModelCard, avg: &WeightAverage, key: &str, loss: f64, score: Option<f64>) -> ModelCard {
    let mut c = card.clone();
    c.metrics = metrics_text(key, loss, score);
    c.training_data += &format!("; exponential moving average of the weights, decay {}", avg.decay());
    c.extra.insert("ema_decay".into(), avg.decay().to_string());
    c.extra.insert("ema_updates".into(), avg.updates().to_string());
    c
}

/// The model configuration a run trains (with `--size`).
pub(crate) fn model_config(a: &TrainConfig) -> Result<ModelConfig> {
    let cfg = models::config(&a.model)?;
    Ok(match a.size {
        Some(s) => cfg.with_input([cfg.input[0], s.h, s.w]),
        None => cfg,
    })
}

/// Checks every argument before anything is built, loaded or written: a bad value should cost
/// a second, not an epoch (or silently train something else than asked).
pub(crate) fn validate(a: &TrainConfig) -> Result<()> {
    let bad = |msg: String| Err(Error::Input(msg));
    let positive = |name: &str, v: f32| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            bad(format!("--{name} {v} must be a finite number above 0"))
        }
    };
    let fraction = |name: &str, v: f32, below_one: bool| {
        if v.is_finite() && v >= 0.0 && (v < 1.0 || (!below_one && v == 1.0)) {
            Ok(())
        } else {
            bad(format!("--{name} {v} must be a number from 0 to {}", if below_one { "below 1" } else { "1" }))
        }
    };
    for (name, v) in [("epochs", a.epochs), ("batch", a.batch), ("workers", a.workers)] {
        if v == 0 {
            return bad(format!("--{name} must be at least 1"));
        }
    }
    for (name, v) in [("prefetch", a.prefetch), ("log-every", a.log_every)] {
        if v == 0 {
            return bad(format!("--{name} must be at least 1"));
        }
    }
    for (name, v) in [("limit", a.limit), ("val-limit", a.val_limit)] {
        if v == Some(0) {
            return bad(format!("--{name} must be at least 1"));
        }
    }
    positive("lr", a.lr)?;
    positive("lr-gamma", a.lr_gamma)?;
    positive("sigma", a.sigma)?;
    if a.sigma > 64.0 {
        // The cards record it (`heatmap_sigma`), and decoding refuses sigmas above 64 pixels.
        return bad(format!("--sigma {} is beyond 64 heatmap pixels", a.sigma));
    }
    if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
        return bad(format!("--weight-decay {} must be a finite number, 0 or above", a.weight_decay));
    }
    if !(a.lr_min.is_finite() && a.lr_min >= 0.0 && a.lr_min <= a.lr) {
        return bad(format!("--lr-min {} must be a finite number from 0 to --lr ({})", a.lr_min, a.lr));
    }
    fraction("shift", a.shift, true)?;
    let default_geometry =
        (a.rotation, a.scale_jitter) == (super::augment::DEFAULT_ROTATION_DEG, super::augment::DEFAULT_SCALE_JITTER);
    if !default_geometry && models::config(&a.model).is_ok_and(|c| c.family == Family::PersonDetector) {
        return bad(
            "--rotation and --scale-jitter set the pose crops' augmentation; the person detector has its own".into()
        );
    }
    if !a.extra_coco.is_empty() && !models::config(&a.model).is_ok_and(|c| c.family == Family::PersonDetector) {
        return bad("--extra-coco adds person boxes: it trains the person detector only".into());
    }
    if a.match_limb_swaps {
        let cfg = model_config(a)?;
        if cfg.family == Family::PersonDetector || Skeleton::for_joints(cfg.joints).is_none() {
            return bad(format!("--match-limb-swaps matches left/right joint labels; {} has none", cfg.name));
        }
    }
    if let Some(d) = a.ema {
        if !(d > 0.0 && d < 1.0) {
            return bad(format!("--ema must lie strictly between 0 and 1 (got {d})"));
        }
    }
    if a.extra_repeat == 0 {
        return bad("--extra-repeat must be at least 1".into());
    }
    fraction("half-body", a.half_body, false)?;
    fraction("teacher-weight", a.teacher_weight, false)?;
    fraction("occlusion", a.occlusion, false)?;
    if !(a.rotation.is_finite() && (0.0..=180.0).contains(&a.rotation)) {
        return bad(format!("--rotation {} must be a number of degrees from 0 to 180", a.rotation));
    }
    if !(a.scale_jitter.is_finite() && (0.0..=0.9).contains(&a.scale_jitter)) {
        return bad(format!("--scale-jitter {} must be a number from 0 to 0.9", a.scale_jitter));
    }
    if let Some(f) = a.teacher.as_ref().filter(|f| !f.is_file()) {
        return bad(format!("--teacher {}: no such file", f.display()));
    }
    let cfg = model_config(a)?;
    let DataFormat::Lsp = a.format;
    if cfg.family != Family::PersonDetector && cfg.joints != 14 {
        return bad(format!(
            "{} predicts {} joints but LSP data labels 14; train an `-lsp` config (see `wgpose models`)",
            cfg.name, cfg.joints
        ));
    }
    parse_range(&a.range)?;
    if !a.val.eq_ignore_ascii_case("none") {
        let r = parse_range(&a.val)?;
        let vs = lsp::load_lsp(&a.root, Some(r.clone()), lsp::Visibility::Auto)?;
        if vs.annotations.is_empty() {
            return bad(format!(
                "--val {}..{}: no labelled image of that range is in {} ({} missing); use `--val none` for no validation",
                r.start(),
                r.end(),
                a.root.join("images").display(),
                vs.missing.len()
            ));
        }
    }
    for (name, f) in [("--resume", &a.resume), ("--init", &a.init)] {
        if let Some(f) = f.as_ref().filter(|f| !f.is_file()) {
            return bad(format!("{name} {}: no such file", f.display()));
        }
    }
    if a.resume.is_none() && !a.force && holds_a_run(&a.out) {
        return bad(format!(
            "--out {} already holds a training run; continue it with --resume CHECKPOINT, \
             overwrite it with --force, or choose another --out",
            a.out.display()
        ));
    }
    Ok(())
}

/// Whether `dir` holds what a run writes (its log or any weights file).
fn holds_a_run(dir: &Path) -> bool {
    dir.join("train_log.csv").exists()
        || std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        })
}

/// The detection images of `--extra-coco JSON:DIR`.
fn extra_coco_images(spec: &str) -> Result<Vec<super::detection::DetectionImage>> {
    let (json, dir) = spec
        .rsplit_once(':')
        .ok_or_else(|| Error::Input(format!("--extra-coco `{spec}`: expected ANNOTATIONS.json:IMAGE_DIR")))?;
    let ds = crate::data::coco::load_coco(Path::new(json), Path::new(dir))?;
    let images = super::detection::coco_detection_images(&ds);
    if images.is_empty() {
        return Err(Error::Input(format!("--extra-coco `{spec}`: no image on disk with a person")));
    }
    Ok(images)
}

/// Runs a training session.
/// What a training run reports while it runs, through [`run`]'s callback (the `wgpose train`
/// command prints them: messages and epoch lines on stderr, steps as one refreshed line).
#[derive(Clone, Debug, PartialEq)]
pub enum TrainEvent {
    /// A one-line message: what is trained on what, warm start or resume, warnings, the final
    /// weights file.
    Message(String),
    /// A logged step (every `log_every` steps and at the end of an epoch): the mean loss over
    /// the steps since the last one, the learning rate and the training speed.
    Step {
        /// Epoch (from 1) and the run's epoch count.
        epoch: usize,
        /// The run's epoch count.
        epochs: usize,
        /// Batch within the epoch (from 1) and the epoch's batch count.
        batch: usize,
        /// The epoch's batch count.
        batches: usize,
        /// Optimiser steps so far.
        step: u64,
        /// Mean loss since the last logged step.
        loss: f64,
        /// Learning rate of this step.
        lr: f32,
        /// Training speed over the window.
        images_per_s: f64,
    },
    /// An epoch ended: its mean loss, and the validation score when the run validates.
    Epoch {
        /// The epoch that ended (from 1).
        epoch: usize,
        /// Its mean loss.
        loss: f64,
        /// The validation score, when the run validates.
        val: Option<ValScore>,
    },
}

/// A validation score at the end of an epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct ValScore {
    /// What was measured (`PCK@0.2`, `box AP@0.5`).
    pub metric: &'static str,
    /// Its value in [0, 1].
    pub value: f64,
    /// How many people or images it was measured on.
    pub count: usize,
    /// `people` or `images`.
    pub unit: &'static str,
    /// Wall time of the validation.
    pub seconds: f64,
}

/// Trains as `a` says and reports progress to `progress`; returns where the weights went and
/// the last numbers. Nothing is printed: the caller decides (see `wgpose train`).
pub fn run(a: &TrainConfig, progress: &mut dyn FnMut(&TrainEvent)) -> Result<TrainSummary> {
    validate(a)?;
    let t_start = Instant::now();
    let cfg = model_config(a)?;
    let [_, hm_h, hm_w] = cfg.heatmap_shape();
    let shape = SampleShape {
        input_w: cfg.input[2],
        input_h: cfg.input[1],
        heatmap_w: hm_w,
        heatmap_h: hm_h,
        joints: cfg.joints,
        sigma: a.sigma,
    };
    // The person detector trains on its own targets and loss (centre + size cross-entropy on
    // logits); the pose networks on heatmaps with MSE or RCE.
    let detector = cfg.family == Family::PersonDetector;
    let val_key = if detector { "val_box_ap@0.5" } else { "val_pck@0.2" };
    if detector && a.loss == Some(LossArg::Mse) {
        return Err(Error::Input(format!("{} trains with its detection loss; --loss mse does not apply", cfg.name)));
    }
    let loss_kind = a.loss.unwrap_or(if cfg.sigmoid_output() { LossArg::Rce } else { LossArg::Mse });
    let mut graph = cfg.build(a.seed)?;
    let mut logits = false;
    if loss_kind == LossArg::Rce {
        let (g, n) = strip_final_sigmoid(&graph);
        if n == 0 {
            progress(&TrainEvent::Message(format!(
                "warning: {} has no final sigmoid; RCE treats its outputs as logits",
                cfg.name
            )));
        }
        graph = g;
        logits = true;
    }
    if graph.outputs.len() != cfg.num_outputs() {
        progress(&TrainEvent::Message(format!(
            "note: {} outputs, config says {}",
            graph.outputs.len(),
            cfg.num_outputs()
        )));
    }
    // The limb groups `--match-limb-swaps` matches, from the joint layout (`validate` checked
    // that the model is a pose network with one).
    let limb_groups = if a.match_limb_swaps { Skeleton::for_joints(cfg.joints).map(|s| s.limb_groups) } else { None };
    // The teacher is checked before anything is written.
    let (teacher, teacher_desc) = match &a.teacher {
        Some(p) => {
            let t = Teacher::load(p, &cfg)?;
            let [_, h, w] = cfg.input;
            let d = format!(
                "; distilled from {} ({}, run at {h}x{w}), teacher weight {}",
                t.name,
                p.display(),
                a.teacher_weight
            );
            (Some(t), d)
        }
        None => (None, String::new()),
    };
    std::fs::create_dir_all(&a.out).map_err(|e| io_err(&a.out, e))?;

    // Resume.
    let kind = match a.optim {
        OptimArg::Adam => Kind::Adam,
        OptimArg::Rmsprop => Kind::RmsProp,
    };
    let mut optim = Optim::new(kind, a.weight_decay);
    let (mut epoch0, mut step, mut prior_s) = (0usize, 0u64, 0.0f64);
    // Crops seen by the weights before this run (warm start), for the card.
    let mut prior_crops = 0u64;
    let mut init_desc = String::new();
    if let Some(w) = &a.init {
        let card = weights::load_into(w, &mut graph)?;
        prior_crops = a
            .init_crops
            .or_else(|| card.extra.get("train_crops_total").and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| {
                let per = card.extra.get("train_limit").and_then(|s| s.parse::<u64>().ok()).unwrap_or(8000);
                per * card.epochs.unwrap_or(0) as u64
            });
        prior_s = card.wall_time_s.unwrap_or(0.0);
        init_desc = format!("; warm start from {} ({} crops before)", w.display(), prior_crops);
        progress(&TrainEvent::Message(format!(
            "warm start from {} ({prior_crops} crops, {:.0} s of training before)",
            w.display(),
            prior_s
        )));
    }
    if let Some(ck) = &a.resume {
        let card = weights::load_into(ck, &mut graph)?;
        epoch0 = card.epochs.unwrap_or(0);
        step = card.extra.get("train_step").and_then(|s| s.parse().ok()).unwrap_or(0);
        prior_s = card.wall_time_s.unwrap_or(0.0);
        prior_crops = card.extra.get("train_prior_crops").and_then(|s| s.parse().ok()).unwrap_or(0);
        if let Some(d) = card.extra.get("train_init") {
            init_desc = format!("; warm start from {d} ({prior_crops} crops before)");
        }
        let op = optim_path(ck);
        if op.is_file() {
            optim = Optim::load(&op)?;
            if optim.kind != kind {
                return Err(Error::Input(format!(
                    "{} holds {} state but --optim is {}",
                    op.display(),
                    optim.kind.as_str(),
                    kind.as_str()
                )));
            }
            optim.weight_decay = a.weight_decay;
        } else {
            progress(&TrainEvent::Message(format!("warning: {} not found: the optimiser restarts", op.display())));
        }
        progress(&TrainEvent::Message(format!("resuming from {} after epoch {epoch0} (step {step})", ck.display())));
    }

    // The weight average starts from the weights training starts from (or continues the one
    // saved beside the checkpoint).
    let mut ema = match a.ema {
        None => None,
        Some(d) => {
            let mut avg = WeightAverage::new(&graph, d, step)?;
            if let Some(ck) = &a.resume {
                let p = ema_path(ck);
                if p.is_file() {
                    let card = weights::load_into(&p, avg.graph_mut())?;
                    let n = card.extra.get("ema_updates").and_then(|s| s.parse().ok()).unwrap_or(step);
                    avg = WeightAverage::new(avg.graph(), d, n)?;
                } else {
                    progress(&TrainEvent::Message(format!(
                        "warning: {} not found: the weight average restarts from the checkpoint's weights",
                        p.display()
                    )));
                }
            }
            Some(avg)
        }
    };

    // Data.
    let DataFormat::Lsp = a.format;
    let range = parse_range(&a.range)?;
    let set = lsp::load_lsp(&a.root, Some(range.clone()), lsp::Visibility::Auto)?;
    if !set.missing.is_empty() {
        progress(&TrainEvent::Message(format!("warning: {} training image(s) missing", set.missing.len())));
    }
    let augment = if a.no_augment {
        AugmentConfig::none()
    } else {
        AugmentConfig {
            shift: a.shift,
            half_body_prob: a.half_body,
            occlusion_prob: a.occlusion,
            rotation_deg: a.rotation,
            scale: (1.0 - a.scale_jitter, 1.0 + a.scale_jitter),
            ..AugmentConfig::default()
        }
    };
    let val_people = if a.val.eq_ignore_ascii_case("none") {
        None
    } else {
        let r = parse_range(&a.val)?;
        Some((r.clone(), lsp::load_lsp(&a.root, Some(r), lsp::Visibility::Auto)?.annotations))
    };
    let mut extra_desc = String::new();
    #[allow(clippy::type_complexity)] // spelled out for the trait-object coercions; the bindings name the parts
    let (train, val, val_desc, aug_desc): (Arc<dyn BatchSource>, Option<Box<dyn Validator>>, String, String) =
        if detector {
            let dshape = DetectShape { input_w: shape.input_w, input_h: shape.input_h, map_w: hm_w, map_h: hm_h };
            let daug = if a.no_augment { DetectAugment::none() } else { DetectAugment::default() };
            let mut images = images_with_boxes(&set.annotations);
            for spec in &a.extra_coco {
                let extra = extra_coco_images(spec)?;
                extra_desc += &format!(
                    " + {} COCO images x{} ({} people) from {spec}",
                    extra.len(),
                    a.extra_repeat,
                    extra.iter().map(|i| i.boxes.len()).sum::<usize>()
                );
                for _ in 0..a.extra_repeat {
                    images.extend(extra.iter().cloned());
                }
            }
            let set = DetectionSet::new(images, dshape, daug, a.cache_mb << 20);
            let (val, desc) = match val_people {
                None => (None, "no validation".to_string()),
                Some((r, people)) => {
                    let v = DetectValSet::new(images_with_boxes(&people), dshape, a.val_limit);
                    let desc = format!("val {}..{} ({} images, box AP@0.5)", r.start(), r.end(), v.images.len());
                    (Some(Box::new(v) as Box<dyn Validator>).filter(|v| v.len() > 0), desc)
                }
            };
            let aug_desc = daug.describe();
            (Arc::new(set), val, desc, aug_desc)
        } else {
            let set = TrainSet::new(set.annotations, shape, augment, a.cache_mb << 20);
            let (val, desc) = match val_people {
                None => (None, "no validation".to_string()),
                Some((r, people)) => {
                    let v = ValSet::new(people, shape, a.val_limit);
                    let desc = format!("val {}..{} ({} people)", r.start(), r.end(), v.people.len());
                    (Some(Box::new(v) as Box<dyn Validator>).filter(|v| v.len() > 0), desc)
                }
            };
            (Arc::new(set), val, desc, augment.describe())
        };
    if train.is_empty() {
        return Err(Error::Input("no training people".into()));
    }
    let per_epoch = a.limit.unwrap_or(usize::MAX).min(train.len());
    let training_data = format!(
        "LSPET images {}..{}{extra_desc} ({} {}, {} per epoch), {val_desc}; augmentation: {}; schedule: {}{init_desc}{teacher_desc}",
        range.start(),
        range.end(),
        train.len(),
        if detector { "whole images" } else { "people" },
        per_epoch,
        if a.no_augment { "none".to_string() } else { aug_desc },
        match a.schedule {
            ScheduleArg::Step => format!("lr {} x{} every {} epochs", a.lr, a.lr_gamma, a.lr_step),
            ScheduleArg::Cosine => format!("cosine {} -> {}", a.lr, a.lr_min),
        } + &if a.warmup > 0 { format!(", warm-up {} steps", a.warmup) } else { String::new() }
            + if limb_groups.is_some() { "; limb labels matched left/right to the network" } else { "" }
    );
    let batches_per_epoch = if per_epoch < a.batch.max(1) { 1 } else { per_epoch / a.batch.max(1) } as u64;
    let total_steps = batches_per_epoch * a.epochs as u64;
    progress(&TrainEvent::Message(format!(
        "training {} ({}x{} HxW, {} params) with {} / {} on {training_data}",
        cfg.name,
        shape.input_h,
        shape.input_w,
        graph.param_count(),
        match loss_kind {
            LossArg::Mse => "MSE",
            LossArg::Rce => "RCE",
        },
        kind.as_str()
    )));

    let mut log = Log::open(&a.out, a.resume.as_ref().map(|_| epoch0))?;
    let curve = a.out.join("curve.png");
    // A resumed run that has no epoch left still reports the checkpoint's numbers.
    let prev = log.rows.iter().rev().find(|r| r.epoch == epoch0 && r.val_pck.is_some());
    let mut last_loss = prev.map_or(f64::NAN, |r| r.loss);
    let mut val_pck = prev.and_then(|r| r.val_pck);
    let mut ips = prev.map_or(0.0, |r| r.images_per_s);
    let mut train_s = 0.0f64;
    let mut ema_val = None;
    for epoch in epoch0..a.epochs {
        let mut lr = schedule_lr(a, epoch, step, total_steps);
        let order = train.epoch_order(a.seed, epoch, a.limit);
        let loader = Loader::start(train.clone(), a.seed, epoch, order, a.batch, a.workers, a.prefetch);
        let nb = loader.len();
        let t_epoch = Instant::now();
        let (mut sum, mut cnt, mut win_sum, mut win_cnt, mut imgs) = (0.0f64, 0usize, 0.0f64, 0usize, 0usize);
        // Limb groups `--match-limb-swaps` trained swapped this epoch.
        let mut swapped = 0usize;
        for (bi, b) in loader.enumerate() {
            let mut b = b?;
            if let Some(t) = &teacher {
                t.blend_into(&mut b, a.teacher_weight)?;
            }
            lr = schedule_lr(a, epoch, step, total_steps);
            let n = b.indices.len();
            let (loss, grads, tape) = train_step(&graph, std::slice::from_ref(&b.input), BnMode::Train, |outs| {
                let last = outs.last().ok_or_else(|| Error::Graph("the graph has no output".into()))?;
                if detector {
                    return detection_loss(last, &b.target).map(|(l, g)| (l, vec![g]));
                }
                let matched;
                let (target, weights) = match limb_groups {
                    Some(groups) => {
                        let (mut t, mut w) = (b.target.clone(), b.weights.clone());
                        swapped += match_limb_swaps(last, &mut t, &mut w, groups)?;
                        matched = (t, w);
                        (&matched.0, &matched.1[..])
                    }
                    None => (&b.target, &b.weights[..]),
                };
                match loss_kind {
                    LossArg::Mse => mse_loss(outs, target, weights),
                    LossArg::Rce => rce_loss(outs, target, weights),
                }
            })?;
            if !loss.is_finite() {
                return Err(Error::Input(format!(
                    "the loss became {loss} at step {} (epoch {}); try a lower --lr",
                    step + 1,
                    epoch + 1
                )));
            }
            tape.apply_running_stats(&mut graph);
            drop(tape);
            optim.apply(&mut graph, &grads, lr)?;
            if let Some(avg) = &mut ema {
                avg.update(&graph)?;
            }
            step += 1;
            imgs += n;
            sum += loss as f64;
            cnt += 1;
            win_sum += loss as f64;
            win_cnt += 1;
            let el = t_epoch.elapsed().as_secs_f64();
            ips = imgs as f64 / el.max(1e-9);
            if win_cnt >= a.log_every.max(1) || bi + 1 == nb {
                log.push(LogRow {
                    epoch: epoch + 1,
                    step,
                    loss: win_sum / win_cnt as f64,
                    lr,
                    val_pck: None,
                    images_per_s: ips,
                    elapsed_s: prior_s + train_s + el,
                })?;
                progress(&TrainEvent::Step {
                    epoch: epoch + 1,
                    epochs: a.epochs,
                    batch: bi + 1,
                    batches: nb,
                    step,
                    loss: win_sum / win_cnt as f64,
                    lr,
                    images_per_s: ips,
                });
                win_sum = 0.0;
                win_cnt = 0;
            }
        }
        train_s += t_epoch.elapsed().as_secs_f64();
        last_loss = sum / cnt.max(1) as f64;
        let score = match &val {
            Some(v) => {
                let t = Instant::now();
                let p = v.score(&graph, a.batch, logits, cfg.sigmoid_output() && !logits)?;
                Some(ValScore {
                    metric: v.metric(),
                    value: p,
                    count: v.len(),
                    unit: v.unit(),
                    seconds: t.elapsed().as_secs_f64(),
                })
            }
            None => None,
        };
        val_pck = score.as_ref().map(|v| v.value);
        if let (Some(v), Some(avg)) = (&val, &ema) {
            let p = v.score(avg.graph(), a.batch, logits, cfg.sigmoid_output() && !logits)?;
            ema_val = Some(p);
            progress(&TrainEvent::Message(format!(
                "epoch {}: the weight average (decay {}) scores {} {:.2}% ({} {})",
                epoch + 1,
                avg.decay(),
                v.metric(),
                100.0 * p,
                v.len(),
                v.unit()
            )));
        }
        if let Some(groups) = limb_groups {
            let share = 100.0 * swapped as f64 / (imgs * groups.len()).max(1) as f64;
            progress(&TrainEvent::Message(format!(
                "epoch {}: {swapped} limb groups ({share:.2}%) trained on their left/right-swapped labels",
                epoch + 1
            )));
        }
        progress(&TrainEvent::Epoch { epoch: epoch + 1, loss: last_loss, val: score });
        log.push(LogRow {
            epoch: epoch + 1,
            step,
            loss: last_loss,
            lr,
            val_pck,
            images_per_s: ips,
            elapsed_s: prior_s + train_s,
        })?;
        // Checkpoint.
        let mut card = ModelCard::for_model(&cfg, &graph);
        card.training_data = training_data.clone();
        card.epochs = Some(epoch + 1);
        card.wall_time_s = Some(prior_s + train_s);
        card.metrics = metrics_text(val_key, last_loss, val_pck);
        let ex = &mut card.extra;
        ex.insert("train_step".into(), step.to_string());
        ex.insert("train_seed".into(), a.seed.to_string());
        ex.insert(weights::HEATMAP_SIGMA_KEY.into(), a.sigma.to_string());
        ex.insert(
            "train_loss".into(),
            match loss_kind {
                LossArg::Mse => "mse",
                LossArg::Rce => "rce",
            }
            .into(),
        );
        ex.insert("train_optimizer".into(), kind.as_str().into());
        ex.insert("train_batch".into(), a.batch.to_string());
        ex.insert("train_lr".into(), lr.to_string());
        if let Some(l) = a.limit {
            ex.insert("train_limit".into(), l.to_string());
        }
        ex.insert("train_prior_crops".into(), prior_crops.to_string());
        ex.insert("train_crops_total".into(), (prior_crops + step * a.batch as u64).to_string());
        if let Some(w) = &a.init {
            ex.insert("train_init".into(), w.display().to_string());
        }
        let ck = a.out.join(format!("checkpoint-e{:03}.safetensors", epoch + 1));
        weights::save(&ck, &graph, &card)?;
        optim.save(&optim_path(&ck))?;
        if let Some(avg) = &ema {
            weights::save(&ema_path(&ck), avg.graph(), &ema_card(&card, avg, val_key, last_loss, ema_val))?;
        }
        log.plot(&curve)?;
    }
    // Final weights.
    let wall = prior_s + train_s;
    let mut card = ModelCard::for_model(&cfg, &graph);
    card.training_data = training_data;
    card.epochs = Some(a.epochs.max(epoch0));
    card.wall_time_s = Some(wall);
    card.metrics = metrics_text(val_key, last_loss, val_pck);
    card.extra.insert(
        "train_loss".into(),
        match loss_kind {
            LossArg::Mse => "mse",
            LossArg::Rce => "rce",
        }
        .into(),
    );
    card.extra.insert("train_optimizer".into(), kind.as_str().into());
    card.extra.insert("train_batch".into(), a.batch.to_string());
    card.extra.insert("train_seed".into(), a.seed.to_string());
    card.extra.insert(weights::HEATMAP_SIGMA_KEY.into(), a.sigma.to_string());
    card.extra.insert("train_step".into(), step.to_string());
    card.extra.insert("train_prior_crops".into(), prior_crops.to_string());
    card.extra.insert("train_crops_total".into(), (prior_crops + step * a.batch as u64).to_string());
    if let Some(w) = &a.init {
        card.extra.insert("train_init".into(), w.display().to_string());
    }
    let final_path = a.out.join(format!("{}.safetensors", cfg.name));
    weights::save(&final_path, &graph, &card)?;
    let ema_weights = match &ema {
        Some(avg) => {
            let p = ema_path(&final_path);
            weights::save(&p, avg.graph(), &ema_card(&card, avg, val_key, last_loss, ema_val))?;
            progress(&TrainEvent::Message(format!("wrote {} (the weight average)", p.display())));
            Some(p)
        }
        None => None,
    };
    log.plot(&curve)?;
    progress(&TrainEvent::Message(format!(
        "wrote {} ({} epochs, {step} steps, {:.0} s training, {:.0} s this session)",
        final_path.display(),
        card.epochs.unwrap_or(0),
        wall,
        t_start.elapsed().as_secs_f64()
    )));
    Ok(TrainSummary {
        final_weights: final_path,
        ema_weights,
        val_metric: if detector { "box AP@0.5" } else { "PCK@0.2" },
        epochs_done: a.epochs.max(epoch0),
        steps: step,
        last_loss,
        val_pck,
        images_per_s: ips,
        wall_time_s: wall,
    })
}

fn metrics_text(key: &str, loss: f64, score: Option<f64>) -> String {
    let mut s = String::new();
    if let Some(p) = score {
        let _ = write!(s, "{key}={p:.4};");
    }
    if loss.is_finite() {
        let _ = write!(s, "train_loss={loss:.6}");
    }
    s
}

/// Convenience for tests and tools: the batches of one epoch built synchronously (no threads).
pub fn epoch_batches(
    set: &TrainSet,
    seed: u64,
    epoch: usize,
    limit: Option<usize>,
    batch: usize,
) -> Result<Vec<(Tensor, Tensor)>> {
    let order = set.epoch_order(seed, epoch, limit);
    let n = if order.len() < batch { 1 } else { order.len() / batch };
    (0..n)
        .map(|b| {
            let r = b * batch..((b + 1) * batch).min(order.len());
            set.batch_of(seed, epoch, &order, r).map(|b| (b.input, b.target))
        })
        .collect()
}
