//! FasterPose (Dai et al. 2021) and, on the same backbone, the SimpleBaseline head (Xiao, Wu,
//! Wei, ECCV 2018).
//!
//! Backbone: a ResNet (basic blocks for the 18/34 layouts, bottlenecks with the stride on the
//! 3x3 convolution for 50), stem `conv 7x7 s2 + BN + ReLU + max pool 3x3 s2 pad 1`, stopped after
//! the stage that reaches the configured output stride (8: layer2, 16: layer3, 32: layer4).
//! Node names follow torchvision (`backbone.layer2.0.conv1`, `backbone.layer2.0.downsample.conv`).
//!
//! Heads:
//! - [`Head::LowRes`] (FasterPose): one `k x k` convolution from the low-resolution features to
//!   `K * r * r` channels and a pixel shuffle by `r = stride / 4`, giving heatmaps at stride 4,
//!   then a sigmoid (the network output is the sigmoid heatmap; FasterPose trains it with its
//!   regressive cross-entropy loss).
//! - [`Head::SimpleBaseline`]: `log2(stride / 4)` stages of nearest x2 upsampling + 3x3 conv +
//!   BN + ReLU, then a 1x1 conv to K linear heatmaps. SimpleBaseline uses 4x4 stride-2
//!   transposed convolutions; upsample + 3x3 conv gives the same output size with a similar
//!   receptive-field growth, needs no transposed-convolution kernel, and has 9/16 of the weights
//!   but 9/4 of the multiply-adds per stage.

use super::{Arch, Family, ModelConfig, COCO, LSP};
use crate::error::{Error, Result};
use crate::graph::{ConvSpec, Graph, GraphBuilder, NodeId};

/// ResNet layout of the backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backbone {
    /// Basic blocks, `[2, 2, 2, 2]`.
    ResNet18,
    /// Basic blocks, `[3, 4, 6, 3]`.
    ResNet34,
    /// Bottleneck blocks, `[3, 4, 6, 3]`.
    ResNet50,
}

impl Backbone {
    /// Blocks in layer1..layer4.
    pub(crate) fn layers(self) -> [usize; 4] {
        match self {
            Backbone::ResNet18 => [2, 2, 2, 2],
            Backbone::ResNet34 | Backbone::ResNet50 => [3, 4, 6, 3],
        }
    }
    pub(crate) fn bottleneck(self) -> bool {
        matches!(self, Backbone::ResNet50)
    }
}

/// Heatmap head on the backbone features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// FasterPose: `kernel x kernel` conv to `K r^2` channels, pixel shuffle by `r`, sigmoid.
    LowRes {
        /// Side of the head convolution's kernel.
        kernel: usize,
    },
    /// SimpleBaseline: (upsample x2 + 3x3 conv `width` + BN + ReLU) until stride 4, 1x1 conv to K.
    SimpleBaseline {
        /// Channels of the upsampling convolutions.
        width: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
/// Hyper-parameters of a FasterPose / SimpleBaseline network.
pub struct FasterPoseArch {
    /// The ResNet layout.
    pub backbone: Backbone,
    /// Output stride of the backbone features: 8, 16 or 32.
    pub stride: usize,
    /// The heatmap head.
    pub head: Head,
    /// Width of the stem and layer1 (64 in ResNets); later stages double it.
    pub base_width: usize,
}

impl FasterPoseArch {
    pub(super) fn validate(&self) -> Result<()> {
        if ![8, 16, 32].contains(&self.stride) {
            return Err(Error::Input(format!("backbone output stride must be 8, 16 or 32, got {}", self.stride)));
        }
        if self.base_width == 0 {
            return Err(Error::Input("backbone base width must be at least 1".into()));
        }
        match self.head {
            Head::LowRes { kernel } if kernel % 2 == 0 => {
                Err(Error::Input(format!("low-resolution head kernel must be odd, got {kernel}")))
            }
            Head::SimpleBaseline { width: 0 } => {
                Err(Error::Input("SimpleBaseline head width must be at least 1".into()))
            }
            _ => Ok(()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fp(
    name: &'static str,
    backbone: Backbone,
    stride: usize,
    head: Head,
    input: [usize; 2],
    joints: usize,
    paper: Option<(f64, f64)>,
    note: &'static str,
) -> ModelConfig {
    ModelConfig {
        name,
        family: Family::FasterPose,
        input: [3, input[0], input[1]],
        joints,
        paper_params: paper.map(|p| p.0),
        paper_gflops: paper.map(|p| p.1),
        note,
        arch: Arch::FasterPose(FasterPoseArch { backbone, stride, head, base_width: 64 }),
    }
}

const LR1: Head = Head::LowRes { kernel: 1 };
const LR3: Head = Head::LowRes { kernel: 3 };
const SB: Head = Head::SimpleBaseline { width: 256 };
const COCO_IN: [usize; 2] = [256, 192];
const LSP_IN: [usize; 2] = [128, 128];

const NOTE_LR32: &str = "FasterPose low-resolution head on stride-32 features: 1x1 conv to K*64 channels + pixel \
     shuffle x8 + sigmoid. A 1x1 kernel keeps the head small (a 3x3 one would have 9x the head weights, more than \
     the whole SimpleBaseline head); the paper gives no per-configuration counts we could check. The abstract claims \
     58% fewer FLOPs than SimpleBaseline: at 256x192 ours are 3.62 vs 8.58 GFLOPs on ResNet-18 (-58%) and 8.26 vs \
     14.42 on ResNet-50 (-43%).";
const NOTE_LR16: &str = "FasterPose low-resolution head on stride-16 features (ResNet stopped after layer3): 3x3 \
     conv to K*16 channels + pixel shuffle x4 + sigmoid. No per-configuration paper counts.";
const NOTE_SB: &str = "SimpleBaseline head for comparison: three (nearest x2 upsample + 3x3 conv 256 + BN + ReLU) \
     stages instead of 4x4 transposed convs, then 1x1 conv to K linear heatmaps.";

pub(super) fn configs() -> Vec<ModelConfig> {
    use Backbone::*;
    vec![
        fp("fasterpose-r18-s32", ResNet18, 32, LR1, COCO_IN, COCO, None, NOTE_LR32),
        fp("fasterpose-r18-s16", ResNet18, 16, LR3, COCO_IN, COCO, None, NOTE_LR16),
        fp("fasterpose-r50-s32", ResNet50, 32, LR1, COCO_IN, COCO, None, NOTE_LR32),
        fp("simplebaseline-r18", ResNet18, 32, SB, COCO_IN, COCO, None, NOTE_SB),
        fp(
            "simplebaseline-r50",
            ResNet50,
            32,
            SB,
            COCO_IN,
            COCO,
            Some((34.0, 8.9)),
            "SimpleBaseline ResNet-50 at 256x192 (Xiao et al. 2018: 34.0M params, 8.9 GFLOPs). Ours: 29.4M, \
             because each 4x4 transposed conv becomes upsample + 3x3 conv (first stage 2048*256*16 = 8.4M \
             weights -> 4.7M); 7.19 GMACs (backbone 4.0, head 3.2: a 3x3 conv at the upsampled size costs \
             9/4 of a 4x4 stride-2 transposed conv counted per input pixel).",
        ),
        fp(
            "fasterpose-r18-s32-lsp",
            ResNet18,
            32,
            LR1,
            LSP_IN,
            LSP,
            None,
            "CPU-trainable: ResNet-18 at 128x128, LSP 14 joints, 4x4 stride-32 features, 1x1 conv + pixel \
             shuffle x8 + sigmoid to 32x32 heatmaps.",
        ),
        fp(
            "fasterpose-r18-s16-lsp",
            ResNet18,
            16,
            LR3,
            LSP_IN,
            LSP,
            None,
            "CPU-trainable: ResNet-18 up to layer3 at 128x128, LSP 14 joints, 3x3 conv + pixel shuffle x4 + \
             sigmoid to 32x32 heatmaps.",
        ),
        fp(
            "simplebaseline-r18-lsp",
            ResNet18,
            32,
            SB,
            LSP_IN,
            LSP,
            None,
            "CPU-trainable SimpleBaseline comparison: ResNet-18 at 128x128, LSP 14 joints, upsample+conv head.",
        ),
    ]
}

/// Basic block (`conv3x3 s - BN - ReLU - conv3x3 - BN (+ identity / projection) - ReLU`).
fn basic_block(b: &mut GraphBuilder, p: &str, x: NodeId, width: usize, stride: usize) -> Result<NodeId> {
    let cin = b.channels(x);
    let y = b.conv(&format!("{p}.conv1"), x, ConvSpec::new(width, 3).stride(stride).no_bias())?;
    let y = b.batch_norm(&format!("{p}.bn1"), y)?;
    let y = b.relu(&format!("{p}.relu1"), y)?;
    let y = b.conv(&format!("{p}.conv2"), y, ConvSpec::new(width, 3).no_bias())?;
    let y = b.batch_norm(&format!("{p}.bn2"), y)?;
    let id = shortcut(b, p, x, cin, width, stride)?;
    let s = b.add(&format!("{p}.add"), id, y)?;
    b.relu(&format!("{p}.relu2"), s)
}

/// Bottleneck (torchvision v1.5: the stride sits on the 3x3 convolution), expansion 4.
fn bottleneck(b: &mut GraphBuilder, p: &str, x: NodeId, width: usize, stride: usize) -> Result<NodeId> {
    let cin = b.channels(x);
    let out = 4 * width;
    let y = b.conv(&format!("{p}.conv1"), x, ConvSpec::new(width, 1).no_bias())?;
    let y = b.batch_norm(&format!("{p}.bn1"), y)?;
    let y = b.relu(&format!("{p}.relu1"), y)?;
    let y = b.conv(&format!("{p}.conv2"), y, ConvSpec::new(width, 3).stride(stride).no_bias())?;
    let y = b.batch_norm(&format!("{p}.bn2"), y)?;
    let y = b.relu(&format!("{p}.relu2"), y)?;
    let y = b.conv(&format!("{p}.conv3"), y, ConvSpec::new(out, 1).no_bias())?;
    let y = b.batch_norm(&format!("{p}.bn3"), y)?;
    let id = shortcut(b, p, x, cin, out, stride)?;
    let s = b.add(&format!("{p}.add"), id, y)?;
    b.relu(&format!("{p}.relu3"), s)
}

fn shortcut(b: &mut GraphBuilder, p: &str, x: NodeId, cin: usize, cout: usize, stride: usize) -> Result<NodeId> {
    if cin == cout && stride == 1 {
        return Ok(x);
    }
    let y = b.conv(&format!("{p}.downsample.conv"), x, ConvSpec::new(cout, 1).stride(stride).no_bias())?;
    b.batch_norm(&format!("{p}.downsample.bn"), y)
}

/// ResNet up to the stage reaching `a.stride`; returns the last features.
fn backbone(b: &mut GraphBuilder, x: NodeId, a: &FasterPoseArch) -> Result<NodeId> {
    let w = a.base_width;
    let x = b.conv("backbone.conv1", x, ConvSpec::new(w, 7).stride(2).no_bias())?;
    let x = b.batch_norm("backbone.bn1", x)?;
    let x = b.relu("backbone.relu", x)?;
    let mut x = b.max_pool("backbone.maxpool", x, 3, 2, 1)?;
    let stages = a.stride.trailing_zeros() as usize - 1; // 8 -> 2, 16 -> 3, 32 -> 4
    for (l, &n) in a.backbone.layers().iter().enumerate().take(stages) {
        let width = w << l;
        for i in 0..n {
            let stride = if l > 0 && i == 0 { 2 } else { 1 };
            let p = format!("backbone.layer{}.{i}", l + 1);
            x = if a.backbone.bottleneck() {
                bottleneck(b, &p, x, width, stride)?
            } else {
                basic_block(b, &p, x, width, stride)?
            };
        }
    }
    Ok(x)
}

pub(super) fn build(a: &FasterPoseArch, input: [usize; 3], joints: usize, seed: u64) -> Result<Graph> {
    a.validate()?;
    let mut b = GraphBuilder::new(seed);
    let x = b.input("input", input)?;
    let f = backbone(&mut b, x, a)?;
    let r = a.stride / 4;
    let out = match a.head {
        Head::LowRes { kernel } => {
            let y = b.conv("head.conv", f, ConvSpec::new(joints * r * r, kernel))?;
            let y = b.pixel_shuffle("head.shuffle", y, r)?;
            b.sigmoid("head.sigmoid", y)?
        }
        Head::SimpleBaseline { width } => {
            let mut y = f;
            for i in 0..r.trailing_zeros() as usize {
                let p = format!("head.up{i}");
                y = b.upsample_nearest(&format!("{p}.upsample"), y, 2)?;
                y = b.conv(&format!("{p}.conv"), y, ConvSpec::new(width, 3).no_bias())?;
                y = b.batch_norm(&format!("{p}.bn"), y)?;
                y = b.relu(&format!("{p}.relu"), y)?;
            }
            b.conv("head.final", y, ConvSpec::new(joints, 1))?
        }
    };
    b.finish(vec![out])
}
