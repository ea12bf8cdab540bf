//! A small builder that the network definitions (and tests) use to emit graphs with seeded
//! initial weights.

use super::{Act, BatchNorm, Conv2d, Graph, NodeId, Op};
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Convolution hyper-parameters; `ConvSpec::new(cout, k)` gives stride 1, "same" padding for odd
/// kernels, no dilation, one group, with bias.
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec {
    /// Output channels.
    pub cout: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Zero padding on each side `[ph, pw]`.
    pub padding: [usize; 2],
    /// Dilation `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Channel groups (`cin` and `cout` must divide by it; `cin` groups is depthwise).
    pub groups: usize,
    /// Whether the convolution has a bias (off before a batch norm).
    pub bias: bool,
    /// Standard deviation of the normal initial weights; None: Kaiming (fan-in).
    pub init_std: Option<f32>,
}

impl ConvSpec {
    /// `cout` output channels, a `k x k` kernel, stride 1, padding `k / 2`, one group, a bias.
    pub fn new(cout: usize, k: usize) -> Self {
        ConvSpec {
            cout,
            kernel: [k, k],
            stride: [1, 1],
            padding: [k / 2, k / 2],
            dilation: [1, 1],
            groups: 1,
            bias: true,
            init_std: None,
        }
    }
    /// The same stride along both axes.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    /// The same zero padding on both axes.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    /// The same dilation along both axes.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    /// Grouped (or, with `g` = input channels, depthwise) convolution.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    /// Normal initialisation with this standard deviation instead of Kaiming's.
    pub(crate) fn init_std(mut self, std: f32) -> Self {
        self.init_std = Some(std);
        self
    }
    /// No bias (for a convolution followed by a batch norm).
    pub fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }
}

/// Emits nodes into a graph, initialising parameters from a seeded generator.
pub struct GraphBuilder {
    /// The graph built so far (outputs are set by [`GraphBuilder::finish`]).
    pub graph: Graph,
    /// The generator every initial weight is drawn from, seeded by [`GraphBuilder::new`].
    pub rng: Rng,
    channels: Vec<usize>,
    /// When set, batch-norm statistics and affine parameters are random instead of identity, so
    /// tests exercise them.
    pub random_norm_stats: bool,
}

impl GraphBuilder {
    /// An empty graph whose weights will be drawn from a generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        GraphBuilder { graph: Graph::new(), rng: Rng::new(seed), channels: Vec::new(), random_norm_stats: false }
    }

    /// Channel count of a node's output (tracked while building so layers can size themselves).
    pub fn channels(&self, id: NodeId) -> usize {
        self.channels[id]
    }

    fn push(&mut self, name: &str, op: Op, inputs: Vec<NodeId>, c: usize) -> Result<NodeId> {
        let id = self.graph.push(name, op, inputs)?;
        self.channels.push(c);
        Ok(id)
    }

    /// A graph input of `chw = [c, h, w]` (the batch size is picked when the graph runs).
    pub fn input(&mut self, name: &str, chw: [usize; 3]) -> Result<NodeId> {
        self.push(name, Op::Input { chw }, vec![], chw[0])
    }

    /// Convolution with Kaiming-normal weights (fan-in, unless the spec sets `init_std`) and zero
    /// bias.
    pub fn conv(&mut self, name: &str, x: NodeId, s: ConvSpec) -> Result<NodeId> {
        let cin = self.channels[x];
        let cin_g = cin / s.groups.max(1);
        let fan_in = (cin_g * s.kernel[0] * s.kernel[1]).max(1);
        let std = s.init_std.unwrap_or((2.0 / fan_in as f32).sqrt());
        let n = s.cout * cin_g * s.kernel[0] * s.kernel[1];
        let w: Vec<f32> = (0..n).map(|_| self.rng.normal() * std).collect();
        let bias = if s.bias {
            let b = if self.random_norm_stats { self.rng.vec(s.cout, -0.1, 0.1) } else { vec![0.0; s.cout] };
            Some(Tensor { shape: vec![s.cout], data: b })
        } else {
            None
        };
        let op = Op::Conv2d(Conv2d {
            weight: Tensor { shape: vec![s.cout, cin_g, s.kernel[0], s.kernel[1]], data: w },
            bias,
            stride: s.stride,
            padding: s.padding,
            dilation: s.dilation,
            groups: s.groups,
            epilogue: Default::default(),
        });
        self.push(name, op, vec![x], s.cout)
    }

    /// Batch normalisation of `x`: identity statistics (gamma 1, beta 0, mean 0, var 1, eps 1e-5),
    /// or random ones when `random_norm_stats` is set.
    pub fn batch_norm(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        let c = self.channels[x];
        let bn = if self.random_norm_stats {
            BatchNorm {
                gamma: Tensor { shape: vec![c], data: self.rng.vec(c, 0.5, 1.5) },
                beta: Tensor { shape: vec![c], data: self.rng.vec(c, -0.2, 0.2) },
                mean: Tensor { shape: vec![c], data: self.rng.vec(c, -0.2, 0.2) },
                var: Tensor { shape: vec![c], data: self.rng.vec(c, 0.5, 1.5) },
                eps: 1e-5,
            }
        } else {
            BatchNorm {
                gamma: Tensor::filled(vec![c], 1.0),
                beta: Tensor::zeros(vec![c]),
                mean: Tensor::zeros(vec![c]),
                var: Tensor::filled(vec![c], 1.0),
                eps: 1e-5,
            }
        };
        self.push(name, Op::BatchNorm(bn), vec![x], c)
    }

    /// ReLU of `x`.
    pub fn relu(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        let c = self.channels[x];
        self.push(name, Op::Activation(Act::Relu), vec![x], c)
    }

    /// Logistic sigmoid of `x`.
    pub fn sigmoid(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        let c = self.channels[x];
        self.push(name, Op::Activation(Act::Sigmoid), vec![x], c)
    }

    /// `k x k` max pooling with the same stride and padding on both axes (padding never wins).
    pub fn max_pool(&mut self, name: &str, x: NodeId, k: usize, stride: usize, pad: usize) -> Result<NodeId> {
        let c = self.channels[x];
        self.push(name, Op::MaxPool { kernel: [k, k], stride: [stride, stride], padding: [pad, pad] }, vec![x], c)
    }

    /// Nearest-neighbour upsampling by an integer `factor`.
    pub fn upsample_nearest(&mut self, name: &str, x: NodeId, factor: usize) -> Result<NodeId> {
        let c = self.channels[x];
        self.push(name, Op::UpsampleNearest { factor }, vec![x], c)
    }

    /// Bilinear upsampling by an integer `factor` (half-pixel centres, `align_corners = false`).
    pub fn upsample_bilinear(&mut self, name: &str, x: NodeId, factor: usize) -> Result<NodeId> {
        let c = self.channels[x];
        self.push(name, Op::UpsampleBilinear { factor }, vec![x], c)
    }

    /// Channel concatenation of `xs` (same batch and spatial size), in order.
    pub fn concat(&mut self, name: &str, xs: &[NodeId]) -> Result<NodeId> {
        let c = xs.iter().map(|&x| self.channels[x]).sum();
        self.push(name, Op::Concat, xs.to_vec(), c)
    }

    /// Elementwise `a + b` (same shape).
    pub fn add(&mut self, name: &str, a: NodeId, b: NodeId) -> Result<NodeId> {
        let c = self.channels[a];
        self.push(name, Op::Add, vec![a, b], c)
    }

    /// `alpha (.) skip + x` with alpha initialised to `init` (or random when testing).
    pub fn gated_add(&mut self, name: &str, skip: NodeId, x: NodeId, init: f32) -> Result<NodeId> {
        let c = self.channels[x];
        let data = if self.random_norm_stats { self.rng.vec(c, 0.2, 1.2) } else { vec![init; c] };
        self.push(name, Op::GatedAdd { alpha: Tensor { shape: vec![c], data } }, vec![skip, x], c)
    }

    /// Depth to space: `[n, c*r*r, h, w] -> [n, c, h*r, w*r]` with `r = factor`.
    pub fn pixel_shuffle(&mut self, name: &str, x: NodeId, factor: usize) -> Result<NodeId> {
        let c = self.channels[x] / (factor * factor).max(1);
        self.push(name, Op::PixelShuffle { factor }, vec![x], c)
    }

    /// Finishes the graph with the given outputs and checks every shape at batch 1.
    pub fn finish(mut self, outputs: Vec<NodeId>) -> Result<Graph> {
        self.graph.outputs = outputs;
        self.graph.shapes(1)?;
        Ok(self.graph)
    }
}
