//! The seed networks, written once as graph builders.
//!
//! Three families, each with a handful of named configurations ([`configs`], [`config`]):
//!
//! - `soft_gated_hourglass`: Bulat, Kossaifi, Tzimiropoulos, Pantic, "Toward fast and accurate
//!   human pose estimation via soft-gated skip connections" (FG 2020);
//! - `fasterpose`: Dai et al., "FasterPose: A Faster Simple Baseline for Human Pose Estimation"
//!   (2021), with the SimpleBaseline high-resolution head (Xiao et al., ECCV 2018) on the same
//!   backbone for comparison;
//! - `ldcrn`: Yang, Qin, Zhang, "Lightweight densely connected residual network for human pose
//!   estimation" (J. Real-Time Image Processing, 2020).
//!
//! Every graph has a single input node `input` of `[c, h, w]` and produces heatmaps at stride 4
//! of the input, `[n, joints, h / 4, w / 4]`: one per stack for the hourglass (in order, the last
//! is the prediction), one for the others.
//!
//! Parameter counts follow PyTorch (batch-norm running statistics are not parameters). The
//! graph's FLOP count ([`Graph::flops`]) counts a multiply-add as two operations; papers in this
//! field usually quote multiply-accumulates as "FLOPs", so [`conv_macs`] gives the number to
//! compare with them.

pub(crate) mod fasterpose;
pub(crate) mod ldcrn;
pub(crate) mod load;
pub(crate) mod person_detector;
pub(crate) mod soft_gated_hourglass;

use crate::error::{Error, Result};
use crate::graph::{Graph, Op};

pub use fasterpose::{Backbone, FasterPoseArch, Head};
pub use ldcrn::LdcrnArch;
pub use load::{
    at_trained_input, bundled_weights, calibrate_batch_norms, config_for_weights, load_model, load_model_bytes,
    models_dir, shipped_weights_path, WeightsSource,
};
pub use person_detector::{DEFAULT_DETECTOR, DETECTOR_CHANNELS};
pub use soft_gated_hourglass::HourglassArch;

/// Network family of a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Stacked hourglasses with soft-gated skips (`soft_gated_hourglass`).
    SoftGatedHourglass,
    /// FasterPose or SimpleBaseline heads on a ResNet backbone (`fasterpose`).
    FasterPose,
    /// The densely connected residual network (`ldcrn`).
    Ldcrn,
    /// Not a pose network: `person_detector` (its "joints" are its output maps).
    PersonDetector,
}

impl Family {
    /// The family's name as printed by `wgpose models` and stored in model cards.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::SoftGatedHourglass => "soft-gated-hourglass",
            Family::FasterPose => "fasterpose",
            Family::Ldcrn => "ldcrn",
            Family::PersonDetector => "person-detector",
        }
    }
}

/// Family-specific architecture hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arch {
    /// Soft-gated hourglass hyper-parameters.
    Hourglass(HourglassArch),
    /// FasterPose / SimpleBaseline hyper-parameters.
    FasterPose(FasterPoseArch),
    /// LDCRN hyper-parameters.
    Ldcrn(LdcrnArch),
}

/// A named network configuration: everything needed to build its graph. A small plain value
/// (`Copy`), so `cfg.with_input([cfg.input[0], h, w])` works.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    /// The configuration's name (`fasterpose-r18-s16-lsp`), its key in [`configs`].
    pub name: &'static str,
    /// The network family.
    pub family: Family,
    /// `[c, h, w]` of the input image.
    pub input: [usize; 3],
    /// Number of heatmaps (17 COCO, 16 MPII, 14 LSP).
    pub joints: usize,
    /// Parameters (millions) the paper reports for this configuration, when it does.
    pub paper_params: Option<f64>,
    /// GFLOPs the paper reports (as the paper counts them, usually multiply-adds).
    pub paper_gflops: Option<f64>,
    /// Where the paper numbers come from and how this graph differs.
    pub note: &'static str,
    /// The family's hyper-parameters (depth, width, head).
    pub arch: Arch,
}

const COCO: usize = 17;
const MPII: usize = 16;
const LSP: usize = 14;

/// The default model of `wgpose predict`, `wgpose eval` and the demo: the shipped weights with the
/// best validation accuracy for their cost (see `models/README.md`).
pub const DEFAULT_MODEL: &str = "fasterpose-r18-s16-lsp";

/// Every named configuration.
pub fn configs() -> Vec<ModelConfig> {
    let mut v = soft_gated_hourglass::configs();
    v.extend(fasterpose::configs());
    v.extend(ldcrn::configs());
    v.extend(person_detector::configs());
    v
}

/// The configuration called `name`.
pub fn config(name: &str) -> Result<ModelConfig> {
    let all = configs();
    if let Some(c) = all.iter().find(|c| c.name == name) {
        return Ok(*c);
    }
    let names: Vec<&str> = all.iter().map(|c| c.name).collect();
    Err(Error::Input(format!("unknown model `{name}`; known models: {}", names.join(", "))))
}

impl ModelConfig {
    /// Builds the graph with weights drawn from `seed` (Kaiming-normal convolutions, identity
    /// batch norms, gates at their documented initial value).
    pub fn build(&self, seed: u64) -> Result<Graph> {
        self.check()?;
        match &self.arch {
            Arch::Hourglass(a) => soft_gated_hourglass::build(a, self.input, self.joints, seed),
            Arch::FasterPose(a) => fasterpose::build(a, self.input, self.joints, seed),
            Arch::Ldcrn(a) => ldcrn::build(a, self.input, self.joints, seed),
        }
    }

    /// The same network predicting `k` heatmaps.
    pub fn with_joints(mut self, k: usize) -> Self {
        self.joints = k;
        self
    }

    /// The same network on inputs of `[c, h, w]` (`h` and `w` must be multiples of
    /// [`ModelConfig::size_multiple`]).
    pub fn with_input(mut self, chw: [usize; 3]) -> Self {
        self.input = chw;
        self
    }

    /// Input height and width must be multiples of this so every down- and upsampling is exact
    /// and the heatmaps come out at exactly a quarter of the input.
    pub fn size_multiple(&self) -> usize {
        match &self.arch {
            Arch::Hourglass(a) => 4 << a.depth.min(8),
            Arch::FasterPose(a) => a.stride,
            Arch::Ldcrn(_) => 32,
        }
    }

    /// Number of heatmap outputs (stacks for the hourglass, 1 otherwise).
    pub fn num_outputs(&self) -> usize {
        match &self.arch {
            Arch::Hourglass(a) => a.stacks,
            _ => 1,
        }
    }

    /// `[joints, h / 4, w / 4]` of each heatmap output.
    pub fn heatmap_shape(&self) -> [usize; 3] {
        [self.joints, self.input[1] / 4, self.input[2] / 4]
    }

    /// Whether the outputs have already gone through a sigmoid (FasterPose's LR head, the
    /// hourglass's `sigmoid_heatmaps` variant; trained with a cross-entropy style loss) rather
    /// than being linear heatmaps (MSE-style targets).
    pub fn sigmoid_output(&self) -> bool {
        match &self.arch {
            Arch::FasterPose(a) => matches!(a.head, Head::LowRes { .. }),
            Arch::Hourglass(a) => a.sigmoid_heatmaps,
            Arch::Ldcrn(_) => false,
        }
    }

    fn check(&self) -> Result<()> {
        match &self.arch {
            Arch::Hourglass(a) => a.validate()?,
            Arch::FasterPose(a) => a.validate()?,
            Arch::Ldcrn(a) => a.validate()?,
        }
        let [c, h, w] = self.input;
        let m = self.size_multiple();
        if c == 0 {
            return Err(Error::Input(format!("model `{}`: the input needs at least one channel", self.name)));
        }
        if self.joints == 0 {
            return Err(Error::Input(format!("model `{}`: needs at least one joint", self.name)));
        }
        if h == 0 || w == 0 || h % m != 0 || w % m != 0 {
            return Err(Error::Input(format!(
                "model `{}`: input {h}x{w} must be a non-zero multiple of {m} in both dimensions",
                self.name
            )));
        }
        Ok(())
    }
}

/// Multiply-accumulates of all convolutions at batch `batch`: the number papers call "FLOPs".
pub fn conv_macs(graph: &Graph, batch: usize) -> Result<u64> {
    let shapes = graph.shapes(batch)?;
    Ok(graph
        .nodes
        .iter()
        .zip(&shapes)
        .map(|(n, s)| match &n.op {
            Op::Conv2d(c) => {
                let [kh, kw] = c.kernel();
                s.iter().product::<usize>() as u64 * (c.cin_per_group() * kh * kw) as u64
            }
            _ => 0,
        })
        .sum())
}

/// Shared building blocks.
pub(crate) mod blocks {
    use crate::error::Result;
    use crate::graph::{ConvSpec, GraphBuilder, NodeId};

    /// `conv (no bias) -> batch_norm [-> relu]`, named `<p>.conv`, `<p>.bn`, `<p>.relu`.
    pub(crate) fn conv_bn(b: &mut GraphBuilder, p: &str, x: NodeId, spec: ConvSpec, relu: bool) -> Result<NodeId> {
        let y = b.conv(&format!("{p}.conv"), x, spec.no_bias())?;
        let y = b.batch_norm(&format!("{p}.bn"), y)?;
        if relu {
            b.relu(&format!("{p}.relu"), y)
        } else {
            Ok(y)
        }
    }

    /// Pre-activation `batch_norm -> relu -> conv`, named `<p>.bn`, `<p>.relu`, `<p>.conv`.
    pub(crate) fn bn_relu_conv(b: &mut GraphBuilder, p: &str, x: NodeId, spec: ConvSpec) -> Result<NodeId> {
        let y = b.batch_norm(&format!("{p}.bn"), x)?;
        let y = b.relu(&format!("{p}.relu"), y)?;
        b.conv(&format!("{p}.conv"), y, spec)
    }
}
