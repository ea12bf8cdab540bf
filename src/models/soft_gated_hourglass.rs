//! Soft-gated stacked hourglass (Bulat, Kossaifi, Tzimiropoulos, Pantic, FG 2020).
//!
//! Residual block `C_in -> C` (the hierarchical, parallel, multi-scale block of Bulat &
//! Tzimiropoulos with a soft gate on the skip):
//!
//! ```text
//! a = conv3x3(relu(bn(x)))        C/2 channels
//! b = conv3x3(relu(bn(a)))        C/4
//! c = conv3x3(relu(bn(b)))        C/4
//! out = concat(a, b, c) + alpha (.) skip,   skip = x, or conv1x1(relu(bn(x))) when C_in != C
//! ```
//!
//! `alpha` is a learnable per-channel gate, initialised so that a block starts near identity:
//! we choose 1.0, which makes every block a plain residual block at step 0 (identity skip plus
//! the residual branch), so the stacked network trains from scratch like the original hourglass
//! and the gates then learn how much of each skip channel to keep. The block convolutions have
//! no bias (as in the authors' face-alignment code: every path into them ends in a batch norm).
//!
//! Hourglass of depth `d` (the hybrid HourGlass / U-Net of the paper): at each level the input
//! goes through a skip block at the current resolution and, after a 2x2 max pool, through a
//! block, the next level (or a block at the bottom) and another block; the result is upsampled
//! (nearest, x2) and fused with the skip branch by concatenation and a 1x1 convolution
//! `2C -> C` instead of the original sum. The fusing 1x1 convolution is linear (with bias):
//! blocks are pre-activation, so the next block normalises and rectifies it.
//!
//! Stem: 7x7 stride-2 convolution to 64 + BN + ReLU, a block to `M = min(128, C)`, a 2x2 max
//! pool, then blocks `M -> M` and `M -> C` (as in Newell et al.; `stem_pool_first` moves the pool
//! before the first block). Per stack: hourglass, a block, a 1x1 conv + BN +
//! ReLU, and a 1x1 conv to the K heatmaps; between stacks the features and the heatmaps are
//! each projected by a 1x1 conv and added back to the stack input.

use super::{blocks, Arch, Family, ModelConfig, LSP, MPII};
use crate::error::{Error, Result};
use crate::graph::{ConvSpec, Graph, GraphBuilder, NodeId};

/// Hyper-parameters of a soft-gated stacked hourglass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HourglassArch {
    /// Number of stacked hourglasses (one heatmap output each).
    pub stacks: usize,
    /// Feature width `C` inside the hourglasses.
    pub channels: usize,
    /// Number of 2x downsamplings inside each hourglass (4 in the paper).
    pub depth: usize,
    /// Residual blocks at each position of the hourglass (skip, down, up, bottom); 1 in the paper.
    pub blocks: usize,
    /// Width of the 7x7 stem convolution.
    pub stem_width: usize,
    /// Initial value of every soft gate.
    pub gate_init: f32,
    /// Soft gates on the skips (the paper's block); false gives the plain identity skip
    /// `concat(a, b, c) + skip` of the original hourglass block, for the ablation: the network
    /// loses only the per-channel gates (`C` parameters per block).
    pub gated: bool,
    /// Max-pool right after the 7x7 convolution, so the first stem block runs at stride 4
    /// instead of 2 (false in every named config: the brief's / Newell's stem). Saves ~0.9 GMACs
    /// at 256x256 for C >= 128, which is about the gap between our and the paper's FLOPs.
    pub stem_pool_first: bool,
    /// A sigmoid on every stack's heatmaps, for training with RCE (FasterPose's binary
    /// cross-entropy against the Gaussian targets) instead of MSE; the next stack still reads the
    /// linear heatmaps. It adds no parameters, so weights load either way.
    pub sigmoid_heatmaps: bool,
}

impl HourglassArch {
    pub(crate) fn new(stacks: usize, channels: usize) -> Self {
        HourglassArch {
            stacks,
            channels,
            depth: 4,
            blocks: 1,
            stem_width: 64,
            gate_init: 1.0,
            gated: true,
            stem_pool_first: false,
            sigmoid_heatmaps: false,
        }
    }

    /// The gate every block gets: `Some(gate_init)`, or None for the identity skip.
    fn gate(&self) -> Option<f32> {
        self.gated.then_some(self.gate_init)
    }

    pub(super) fn validate(&self) -> Result<()> {
        if self.stacks == 0 || self.depth == 0 || self.blocks == 0 || self.stem_width == 0 {
            return Err(Error::Input(format!(
                "hourglass stacks, depth, blocks and stem width must be at least 1: {self:?}"
            )));
        }
        if self.channels < 4 {
            return Err(Error::Input(format!("hourglass width must be at least 4, got {}", self.channels)));
        }
        if self.depth > 8 {
            return Err(Error::Input(format!("hourglass depth {} is too deep (at most 8)", self.depth)));
        }
        Ok(())
    }
}

fn hg(
    name: &'static str,
    stacks: usize,
    channels: usize,
    input: usize,
    joints: usize,
    paper: Option<(f64, f64)>,
    note: &'static str,
) -> ModelConfig {
    ModelConfig {
        name,
        family: Family::SoftGatedHourglass,
        input: [3, input, input],
        joints,
        paper_params: paper.map(|p| p.0),
        paper_gflops: paper.map(|p| p.1),
        note,
        arch: Arch::Hourglass(HourglassArch::new(stacks, channels)),
    }
}

pub(super) fn configs() -> Vec<ModelConfig> {
    vec![
        hg(
            "sghg-1x64",
            1,
            64,
            256,
            MPII,
            Some((0.5, 0.8)),
            "Smallest budget of the paper's Table III (0.5M / 0.8 GFLOPs at 256x256); the paper does not \
             give its stacks x width here, 1 stack x 64 channels lands on the parameter budget (0.48M). \
             Paper GFLOPs are multiply-adds: ours 1.15 GMACs, of which 0.42 is the stem block running at \
             stride 2 (0.84 GMACs with stem_pool_first).",
        ),
        hg(
            "sghg-2x128",
            2,
            128,
            256,
            MPII,
            Some((3.4, 4.27)),
            "Paper Table I, 2 stacks x 128 channels (3.4M / 4.27 GFLOPs at 256x256); ours 3.46M. Paper \
             GFLOPs count multiply-adds: ours 5.25 GMACs (+23%), the excess being our stem's first block \
             at stride 2 (1.19 GMACs; Newell's and the authors' face-alignment stem); with stem_pool_first \
             it is 4.35 GMACs, so the paper's stem is probably lighter.",
        ),
        hg(
            "sghg-4x144",
            4,
            144,
            256,
            MPII,
            Some((8.5, 9.9)),
            "Paper Table I, 4 stacks x 144 channels (8.5M / 9.9 GFLOPs at 256x256); ours 8.37M and 10.18 \
             GMACs (paper GFLOPs count multiply-adds; ours are half our FLOPs). Same stem caveat as \
             sghg-2x128: 9.29 GMACs with stem_pool_first.",
        ),
        hg(
            "sghg-4x256",
            4,
            256,
            256,
            MPII,
            None,
            "Wide 4 x 256 variant (original hourglass width) with the paper's blocks and concat fusion; no \
             paper numbers for it.",
        ),
        hg(
            "sghg-1x64-lsp",
            1,
            64,
            128,
            LSP,
            None,
            "Small CPU-trainable variant of sghg-1x64: 128x128 input, LSP 14 joints, 32x32 heatmaps.",
        ),
        ModelConfig {
            name: "hg-identity-1x64-lsp",
            note: "Ablation of sghg-1x64-lsp: the same network with the plain identity skip (no soft gates); \
                   it has 1,088 fewer parameters (the gates), 0.2% of the total.",
            arch: Arch::Hourglass(HourglassArch { gated: false, ..HourglassArch::new(1, 64) }),
            ..hg("", 1, 64, 128, LSP, None, "")
        },
        ModelConfig {
            name: "sghg-1x64-rce-lsp",
            note: "sghg-1x64-lsp with a sigmoid on its heatmaps, trained with RCE (FasterPose's loss) instead of \
                   MSE; the same parameters, so the weights of either load into the other.",
            arch: Arch::Hourglass(HourglassArch { sigmoid_heatmaps: true, ..HourglassArch::new(1, 64) }),
            ..hg("", 1, 64, 128, LSP, None, "")
        },
    ]
}

/// The soft-gated residual block `cin -> cout`, nodes under `p`.
fn block(b: &mut GraphBuilder, p: &str, x: NodeId, cout: usize, gate: Option<f32>) -> Result<NodeId> {
    let cin = b.channels(x);
    let (c1, c2) = (cout / 2, cout / 4);
    let c3 = cout - c1 - c2;
    let a = blocks::bn_relu_conv(b, &format!("{p}.c1"), x, ConvSpec::new(c1, 3).no_bias())?;
    let bb = blocks::bn_relu_conv(b, &format!("{p}.c2"), a, ConvSpec::new(c2, 3).no_bias())?;
    let c = blocks::bn_relu_conv(b, &format!("{p}.c3"), bb, ConvSpec::new(c3, 3).no_bias())?;
    let cat = b.concat(&format!("{p}.cat"), &[a, bb, c])?;
    let skip = if cin == cout {
        x
    } else {
        blocks::bn_relu_conv(b, &format!("{p}.proj"), x, ConvSpec::new(cout, 1).no_bias())?
    };
    match gate {
        Some(alpha) => b.gated_add(&format!("{p}.gate"), skip, cat, alpha),
        None => b.add(&format!("{p}.add"), skip, cat),
    }
}

/// `n` blocks in sequence: `<p>` when n == 1, else `<p>0`, `<p>1`, ...
fn blocks_seq(
    b: &mut GraphBuilder,
    p: &str,
    mut x: NodeId,
    cout: usize,
    n: usize,
    gate: Option<f32>,
) -> Result<NodeId> {
    for i in 0..n.max(1) {
        let name = if n <= 1 { p.to_string() } else { format!("{p}{i}") };
        x = block(b, &name, x, cout, gate)?;
    }
    Ok(x)
}

/// One level of the hourglass (`level` = remaining depth), nodes under `<p>.d<level>`.
fn hourglass(b: &mut GraphBuilder, p: &str, x: NodeId, level: usize, a: &HourglassArch) -> Result<NodeId> {
    let c = a.channels;
    let q = format!("{p}.d{level}");
    let skip = blocks_seq(b, &format!("{q}.skip"), x, c, a.blocks, a.gate())?;
    let low = b.max_pool(&format!("{q}.pool"), x, 2, 2, 0)?;
    let low = blocks_seq(b, &format!("{q}.down"), low, c, a.blocks, a.gate())?;
    let low = if level > 1 {
        hourglass(b, p, low, level - 1, a)?
    } else {
        blocks_seq(b, &format!("{q}.bottom"), low, c, a.blocks, a.gate())?
    };
    let low = blocks_seq(b, &format!("{q}.up"), low, c, a.blocks, a.gate())?;
    let up = b.upsample_nearest(&format!("{q}.upsample"), low, 2)?;
    let cat = b.concat(&format!("{q}.merge.cat"), &[up, skip])?;
    b.conv(&format!("{q}.merge.conv"), cat, ConvSpec::new(c, 1))
}

pub(super) fn build(a: &HourglassArch, input: [usize; 3], joints: usize, seed: u64) -> Result<Graph> {
    a.validate()?;
    let mut b = GraphBuilder::new(seed);
    let c = a.channels;
    let g = a.gate();
    let x = b.input("input", input)?;
    let x = blocks::conv_bn(&mut b, "stem.conv1", x, ConvSpec::new(a.stem_width, 7).stride(2), true)?;
    let mid = c.min(128);
    let x = if a.stem_pool_first {
        let x = b.max_pool("stem.pool", x, 2, 2, 0)?;
        block(&mut b, "stem.block1", x, mid, g)?
    } else {
        let x = block(&mut b, "stem.block1", x, mid, g)?;
        b.max_pool("stem.pool", x, 2, 2, 0)?
    };
    let x = block(&mut b, "stem.block2", x, mid, g)?;
    let mut x = block(&mut b, "stem.block3", x, c, g)?;

    let mut outputs = Vec::with_capacity(a.stacks);
    for s in 0..a.stacks {
        let p = format!("stack{s}");
        let y = hourglass(&mut b, &format!("{p}.hg"), x, a.depth, a)?;
        let y = blocks_seq(&mut b, &format!("{p}.block"), y, c, a.blocks, g)?;
        let y = blocks::conv_bn(&mut b, &format!("{p}.lin"), y, ConvSpec::new(c, 1), true)?;
        let heat = b.conv(&format!("{p}.heatmap"), y, ConvSpec::new(joints, 1))?;
        outputs.push(if a.sigmoid_heatmaps { b.sigmoid(&format!("{p}.sigmoid"), heat)? } else { heat });
        if s + 1 < a.stacks {
            let f = b.conv(&format!("{p}.remap_feat"), y, ConvSpec::new(c, 1))?;
            let h = b.conv(&format!("{p}.remap_heat"), heat, ConvSpec::new(c, 1))?;
            let sum = b.add(&format!("{p}.merge_feat"), x, f)?;
            x = b.add(&format!("{p}.merge_heat"), sum, h)?;
        }
    }
    b.finish(outputs)
}
