//! The configuration of a training run ([`TrainConfig`]): one struct for the library and the
//! `wgpose train` command line. Its clap derives sit behind the `cli` feature (default), so a
//! crate user can leave clap out; [`TrainConfig::new`] gives the command line's defaults, and a
//! test checks that the two agree.

use std::path::PathBuf;

/// Dataset format of `--root`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum DataFormat {
    /// LSP / LSP-extended (`joints.mat` + `images/`).
    Lsp,
}

/// Training loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LossArg {
    /// Heatmap MSE (summed over hourglass stacks: intermediate supervision).
    Mse,
    /// Regressive cross-entropy on logits (FasterPose): the final sigmoid is stripped.
    Rce,
}

/// A network input size for training: `N` (square) or `HxW`, as on the command line
/// (`--size 160`, `--size 192x128`). Each side must be a multiple of the model's size multiple
/// (the hourglass: 64); the crop around each person is widened or heightened to its aspect ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputSize {
    /// Height, pixels.
    pub h: usize,
    /// Width, pixels.
    pub w: usize,
}

impl std::str::FromStr for InputSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let side = |t: &str| t.trim().parse::<usize>().ok().filter(|&v| v > 0);
        let parsed = match s.split_once(['x', 'X']) {
            Some((h, w)) => side(h).zip(side(w)).map(|(h, w)| InputSize { h, w }),
            None => side(s).map(|n| InputSize { h: n, w: n }),
        };
        parsed.ok_or_else(|| format!("size `{s}` is not N or HxW with sides of at least 1 (e.g. 160 or 192x128)"))
    }
}

impl std::fmt::Display for InputSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.h, self.w)
    }
}

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ScheduleArg {
    /// `--lr` multiplied by `--lr-gamma` every `--lr-step` epochs.
    Step,
    /// Cosine decay per step from `--lr` to `--lr-min` over the whole run (`--epochs`).
    Cosine,
}

/// Optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum OptimArg {
    /// Adam (PyTorch's, bias correction, decoupled weight decay).
    Adam,
    /// RMSprop (`alpha = 0.99`, `eps = 1e-8`, L2 decay).
    Rmsprop,
}

/// What to train and how: the options of `wgpose train` (the CLI parses them with clap when
/// the `cli` feature is on; library users build one with [`TrainConfig::new`] and set fields).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct TrainConfig {
    /// Named configuration (`wgpose models`), e.g. `sghg-1x64-lsp`.
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: String,
    /// Dataset format.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = DataFormat::Lsp))]
    pub format: DataFormat,
    /// Dataset folder (`joints.mat` + `images/`).
    #[cfg_attr(feature = "cli", arg(long))]
    pub root: PathBuf,
    /// Training image numbers, inclusive.
    #[cfg_attr(feature = "cli", arg(long, default_value = "1..8000"))]
    pub range: String,
    /// Validation image numbers, inclusive (`none`: no validation).
    #[cfg_attr(feature = "cli", arg(long, default_value = "8001..9000"))]
    pub val: String,
    /// Total number of epochs (a resumed run continues up to this).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub epochs: usize,
    /// Images per optimiser step.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub batch: usize,
    /// Learning rate (the peak, after any warm-up).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1e-3))]
    pub lr: f32,
    /// Multiply the learning rate by `--lr-gamma` every this many epochs (0: constant).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub lr_step: usize,
    /// Factor of the step schedule.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.1))]
    pub lr_gamma: f32,
    /// Weight decay, on convolution weights only (decoupled for Adam, L2 for RMSprop).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.0))]
    pub weight_decay: f32,
    /// Default: `rce` for sigmoid-output models (FasterPose), `mse` otherwise.
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub loss: Option<LossArg>,
    /// Optimiser.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = OptimArg::Adam))]
    pub optim: OptimArg,
    /// Output folder: checkpoints, `train_log.csv`, `curve.png`, final weights.
    #[cfg_attr(feature = "cli", arg(long, default_value = "train-out"))]
    pub out: PathBuf,
    /// Checkpoint to continue from (`checkpoint-eNNN.safetensors`).
    #[cfg_attr(feature = "cli", arg(long))]
    pub resume: Option<PathBuf>,
    /// Warm start: initial weights (e.g. the shipped `models/<config>.safetensors`) for a new
    /// run with a fresh optimiser and schedule; the card counts their training crops too.
    #[cfg_attr(feature = "cli", arg(long, conflicts_with = "resume"))]
    pub init: Option<PathBuf>,
    /// Training crops behind `--init` when its card does not say (older cards count
    /// `epochs x train_limit`, wrong for runs whose per-epoch limit changed).
    #[cfg_attr(feature = "cli", arg(long, requires = "init"))]
    pub init_crops: Option<u64>,
    /// Learning-rate schedule.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = ScheduleArg::Step))]
    pub schedule: ScheduleArg,
    /// Final learning rate of the cosine schedule.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.0))]
    pub lr_min: f32,
    /// Linear learning-rate warm-up over this many steps (both schedules).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub warmup: u64,
    /// Box jitter: the crop centre moves by up to this fraction of the box size per axis.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.0))]
    pub shift: f32,
    /// Probability of a half-body crop (people with >= 8 labelled joints).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.0))]
    pub half_body: f32,
    /// Probability of painting an occluding rectangle over the crop (coarse dropout).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.0))]
    pub occlusion: f32,
    /// Rotation augmentation: uniform in +-this many degrees (pose networks, 0 to 180).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::augment::DEFAULT_ROTATION_DEG))]
    pub rotation: f32,
    /// Scale augmentation: the crop's size is multiplied by a factor uniform in
    /// `[1 - F, 1 + F]` (pose networks, 0 to 0.9).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = super::augment::DEFAULT_SCALE_JITTER, value_name = "F"))]
    pub scale_jitter: f32,
    /// Images per epoch (a seeded random subset, different each epoch).
    #[cfg_attr(feature = "cli", arg(long))]
    pub limit: Option<usize>,
    /// Validate on this many people (evenly spaced over the validation range).
    #[cfg_attr(feature = "cli", arg(long))]
    pub val_limit: Option<usize>,
    /// Seed of the initialisation, the data order and the augmentation.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Knowledge distillation: a trained pose network's weights file whose heatmaps on each
    /// training crop are blended into the targets (`training::distill`).
    #[cfg_attr(feature = "cli", arg(long))]
    pub teacher: Option<PathBuf>,
    /// The teacher's share of each target, 0 to 1 (with `--teacher`).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0.5, requires = "teacher"))]
    pub teacher_weight: f32,
    /// Left/right label mistakes: per item and limb group (legs, arms), train on the labels as
    /// given or left/right-swapped, whichever the network's output matches better
    /// (`autodiff::match_limb_swaps`; LSPET's crowd-sourced labels swap a few per cent). Measured
    /// on the hourglass: 0.25 PCK points below the same run without it (models/README).
    #[cfg_attr(feature = "cli", arg(long))]
    pub match_limb_swaps: bool,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999; in (0, 1)),
    /// written as `<model>.ema.safetensors` beside the trained weights (`training::ema`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DECAY"))]
    pub ema: Option<f32>,
    /// Input size, `N` (square) or `HxW` (each side a multiple of the model's size multiple,
    /// e.g. `192x128` for the hourglass); default: the config's.
    #[cfg_attr(feature = "cli", arg(long))]
    pub size: Option<InputSize>,
    /// Gaussian sigma in heatmap pixels (above 0, at most 64).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = crate::pipeline::decode::DEFAULT_SIGMA))]
    pub sigma: f32,
    /// Loader threads building augmented batches ahead of the training step.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub workers: usize,
    /// Batches each loader thread may build ahead.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 2))]
    pub prefetch: usize,
    /// Decoded-image cache budget in MB.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3072))]
    pub cache_mb: usize,
    /// Log a CSV row (and refresh the progress line) every this many steps.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub log_every: usize,
    /// Turn augmentation off (debugging).
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_augment: bool,
    /// No progress line on stderr (the command line's; the library reports every step to its
    /// callback either way).
    #[cfg_attr(feature = "cli", arg(long))]
    pub quiet: bool,
    /// Write into an `--out` folder that already holds a run (its files are overwritten).
    #[cfg_attr(feature = "cli", arg(long))]
    pub force: bool,
    /// Person detector only: extra training images from a COCO keypoints file,
    /// `ANNOTATIONS.json:IMAGE_DIR` (every non-crowd person boxed; repeatable).
    #[cfg_attr(feature = "cli", arg(long, value_name = "JSON:DIR"))]
    pub extra_coco: Vec<String>,
    /// Each `--extra-coco` image appears this many times per pass over the data (a few dozen
    /// COCO images next to 8000 LSPET ones are otherwise rarely drawn).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub extra_repeat: usize,
}

impl TrainConfig {
    /// A run of `model` on the LSP-format dataset at `root` with every other option at the
    /// command line's default (`wgpose train --help`; a test keeps the two equal).
    pub fn new(model: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        TrainConfig {
            model: model.into(),
            format: DataFormat::Lsp,
            root: root.into(),
            range: "1..8000".into(),
            val: "8001..9000".into(),
            epochs: 10,
            batch: 16,
            lr: 1e-3,
            lr_step: 0,
            lr_gamma: 0.1,
            weight_decay: 0.0,
            loss: None,
            optim: OptimArg::Adam,
            out: PathBuf::from("train-out"),
            resume: None,
            init: None,
            init_crops: None,
            schedule: ScheduleArg::Step,
            lr_min: 0.0,
            warmup: 0,
            shift: 0.0,
            half_body: 0.0,
            occlusion: 0.0,
            rotation: super::augment::DEFAULT_ROTATION_DEG,
            scale_jitter: super::augment::DEFAULT_SCALE_JITTER,
            limit: None,
            val_limit: None,
            seed: 0,
            teacher: None,
            teacher_weight: 0.5,
            match_limb_swaps: false,
            ema: None,
            size: None,
            sigma: crate::pipeline::decode::DEFAULT_SIGMA,
            workers: 1,
            prefetch: 2,
            cache_mb: 3072,
            log_every: 10,
            no_augment: false,
            quiet: false,
            force: false,
            extra_coco: Vec::new(),
            extra_repeat: 1,
        }
    }
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: TrainConfig,
    }

    /// `TrainConfig::new` and the command line's defaults are the same values.
    #[test]
    fn new_matches_the_command_line_defaults() {
        let parsed = Cli::try_parse_from(["wgpose-train", "--model", "sghg-1x64-lsp", "--root", "data/lsp"]).unwrap();
        assert_eq!(parsed.config, TrainConfig::new("sghg-1x64-lsp", "data/lsp"));
    }

    /// `--size` takes `N` (square) and `HxW`; anything else, or a zero side, is refused when
    /// the arguments are parsed.
    #[test]
    fn sizes_parse_square_and_hxw() {
        let size = |v: &str| {
            Cli::try_parse_from(["wgpose-train", "--model", "sghg-1x64-lsp", "--root", "r", "--size", v])
                .map(|c| c.config.size)
        };
        assert_eq!(size("160").unwrap(), Some(InputSize { h: 160, w: 160 }));
        assert_eq!(size("192x128").unwrap(), Some(InputSize { h: 192, w: 128 }));
        assert_eq!(InputSize { h: 192, w: 128 }.to_string(), "192x128");
        for bad in ["0", "192x0", "x128", "192x", "abc", "-64", "1.5"] {
            assert!(size(bad).is_err(), "{bad}");
        }
    }
}
