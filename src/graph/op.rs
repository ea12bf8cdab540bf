//! Operators of the graph IR and their attributes.

use crate::tensor::Tensor;

/// Elementwise activation applied in an epilogue or as a node of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Act {
    #[default]
    /// Identity.
    None,
    /// `max(v, 0)`.
    Relu,
    /// `1 / (1 + exp(-v))`.
    Sigmoid,
}

impl Act {
    /// The activation of one value (the CPU executor's definition).
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Act::None => v,
            Act::Relu => v.max(0.0),
            Act::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        }
    }

    /// Code shared with the WGSL kernels (0 none, 1 relu, 2 sigmoid).
    pub fn code(self) -> u32 {
        match self {
            Act::None => 0,
            Act::Relu => 1,
            Act::Sigmoid => 2,
        }
    }
}

/// How a fused residual enters a convolution's epilogue (the residual is the conv's second input).
#[derive(Clone, Debug, PartialEq)]
pub enum Residual {
    /// `conv + r`
    Add,
    /// `conv + alpha (.) r` (soft gate on the skip)
    GateResidual(Tensor),
    /// `alpha (.) conv + r` (soft gate on a projected skip produced by this conv)
    GateConv(Tensor),
}

/// What a convolution does after the sum of products:
/// `y = post_act( act(conv + bias) (+) residual )`.
/// Filled in by the fusion pass; a freshly built graph has the default (nothing).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Epilogue {
    /// Activation of `conv + bias`, before the residual.
    pub act: Act,
    /// The fused residual, if any.
    pub residual: Option<Residual>,
    /// Activation after the residual is added.
    pub post_act: Act,
}

#[derive(Clone, Debug, PartialEq)]
/// A 2-D convolution (cross-correlation, as PyTorch's `Conv2d`) and its fused epilogue.
pub struct Conv2d {
    /// `[cout, cin / groups, kh, kw]`
    pub weight: Tensor,
    /// `[cout]`
    pub bias: Option<Tensor>,
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Zero padding on each side `[ph, pw]`.
    pub padding: [usize; 2],
    /// Dilation `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Channel groups (`groups == cout` and one input channel per group: depthwise).
    pub groups: usize,
    /// What follows the sum of products (see [`Epilogue`]).
    pub epilogue: Epilogue,
}

impl Conv2d {
    /// Output channels.
    pub fn cout(&self) -> usize {
        self.weight.shape[0]
    }
    /// Input channels per group (`cin / groups`).
    pub fn cin_per_group(&self) -> usize {
        self.weight.shape[1]
    }
    /// Kernel size `[kh, kw]`.
    pub fn kernel(&self) -> [usize; 2] {
        [self.weight.shape[2], self.weight.shape[3]]
    }
    /// Output spatial size for an input of `h x w`, or None when the kernel does not fit.
    pub fn out_hw(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let [kh, kw] = self.kernel();
        let eh = self.dilation[0] * (kh - 1) + 1;
        let ew = self.dilation[1] * (kw - 1) + 1;
        let ph = h + 2 * self.padding[0];
        let pw = w + 2 * self.padding[1];
        if ph < eh || pw < ew {
            return None;
        }
        Some([(ph - eh) / self.stride[0] + 1, (pw - ew) / self.stride[1] + 1])
    }
}

/// Batch normalisation with its learned affine and running statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// Learned scale `[c]`.
    pub gamma: Tensor,
    /// Learned shift `[c]`.
    pub beta: Tensor,
    /// Running mean `[c]` (used at inference).
    pub mean: Tensor,
    /// Running variance `[c]` (used at inference).
    pub var: Tensor,
    /// Added to the variance before the square root.
    pub eps: f32,
}

impl BatchNorm {
    /// Inference-time form `y = scale * x + shift`.
    pub(crate) fn scale_shift(&self) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> =
            (0..self.gamma.numel()).map(|c| self.gamma.data[c] / (self.var.data[c] + self.eps).sqrt()).collect();
        let shift = (0..self.gamma.numel()).map(|c| self.beta.data[c] - self.mean.data[c] * scale[c]).collect();
        (scale, shift)
    }
}

/// The body of [`Op::params`] and [`Op::params_mut`] (`ref` or `ref mut` bindings), so the list
/// is written once.
macro_rules! param_list {
    ($op:expr, $($r:tt)+) => {
        match $op {
            Op::Conv2d(Conv2d { $($r)+ weight, $($r)+ bias, epilogue: Epilogue { $($r)+ residual, .. }, .. }) => {
                let mut v = vec![(ParamKind::Weight, weight)];
                if let Some(b) = bias {
                    v.push((ParamKind::Bias, b));
                }
                if let Some(Residual::GateResidual(a) | Residual::GateConv(a)) = residual {
                    v.push((ParamKind::SoftGate, a));
                }
                v
            }
            Op::BatchNorm(BatchNorm { $($r)+ gamma, $($r)+ beta, $($r)+ mean, $($r)+ var, .. }) => vec![
                (ParamKind::BnGamma, gamma),
                (ParamKind::BnBeta, beta),
                (ParamKind::BnRunningMean, mean),
                (ParamKind::BnRunningVar, var),
            ],
            Op::ChannelAffine { $($r)+ scale, $($r)+ shift, .. } => {
                vec![(ParamKind::AffineScale, scale), (ParamKind::AffineShift, shift)]
            }
            Op::GatedAdd { $($r)+ alpha } => vec![(ParamKind::SoftGate, alpha)],
            Op::Input { .. }
            | Op::Activation(_)
            | Op::MaxPool { .. }
            | Op::UpsampleNearest { .. }
            | Op::UpsampleBilinear { .. }
            | Op::Concat
            | Op::Add
            | Op::PixelShuffle { .. } => Vec::new(),
        }
    };
}

/// The operators of the IR. Every node produces one NCHW tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A graph input of `[c, h, w]`; the batch size is chosen at execution.
    Input {
        /// Channels, height and width of one sample.
        chw: [usize; 3],
    },
    /// 2-D convolution; inputs `[x]`, or `[x, residual]` once an add has been fused.
    Conv2d(Conv2d),
    /// Batch normalisation (inference uses the running statistics).
    BatchNorm(BatchNorm),
    /// `y = act(scale[c] * x + shift[c])`: a batch norm that could not be folded into a conv,
    /// with the following activation fused in.
    ChannelAffine {
        /// Per-channel factor `[c]`.
        scale: Tensor,
        /// Per-channel offset `[c]`.
        shift: Tensor,
        /// Activation applied after the affine.
        act: Act,
    },
    /// ReLU or sigmoid on its own.
    Activation(Act),
    /// Max pooling; padded positions never win (PyTorch semantics).
    MaxPool {
        /// Window `[kh, kw]`.
        kernel: [usize; 2],
        /// Stride `[sh, sw]`.
        stride: [usize; 2],
        /// Padding on each side `[ph, pw]` (padded positions count as minus infinity).
        padding: [usize; 2],
    },
    /// Nearest-neighbour upsampling by an integer factor.
    UpsampleNearest {
        /// Output size over input size, on both axes.
        factor: usize,
    },
    /// Bilinear upsampling by an integer factor, half-pixel centres (align_corners = false).
    UpsampleBilinear {
        /// Output size over input size, on both axes.
        factor: usize,
    },
    /// Channel concatenation of all inputs (same N, H, W).
    Concat,
    /// `y = a + b`
    Add,
    /// `y = alpha (.) skip + x`, inputs `[skip, x]`, alpha per channel: the soft gate.
    GatedAdd {
        /// The gate `[c]`, learned.
        alpha: Tensor,
    },
    /// Depth to space: `[n, c*r*r, h, w] -> [n, c, h*r, w*r]` (PyTorch / ONNX "CRD" order).
    PixelShuffle {
        /// `r`: the spatial upscaling factor (input channels divide by `r * r`).
        factor: usize,
    },
}

impl Op {
    /// A short lowercase name of the operator (`conv2d`, `depthwise_conv2d`, `max_pool`...), used
    /// in profiles, benchmarks and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv2d(c) if c.groups > 1 && c.groups == c.cout() && c.cin_per_group() == 1 => "depthwise_conv2d",
            Op::Conv2d(_) => "conv2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::ChannelAffine { .. } => "channel_affine",
            Op::Activation(Act::Sigmoid) => "sigmoid",
            Op::Activation(_) => "relu",
            Op::MaxPool { .. } => "max_pool",
            Op::UpsampleNearest { .. } => "upsample_nearest",
            Op::UpsampleBilinear { .. } => "upsample_bilinear",
            Op::Concat => "concat",
            Op::Add => "add",
            Op::GatedAdd { .. } => "gated_add",
            Op::PixelShuffle { .. } => "pixel_shuffle",
        }
    }

    /// The operator's parameters and statistics, in their stable order: the one list that
    /// weight files, ONNX initializers, the executors' checks, autodiff and the optimiser all
    /// read. Each tensor carries its own shape.
    pub fn params(&self) -> Vec<(ParamKind, &Tensor)> {
        param_list!(*self, ref)
    }

    /// [`Op::params`] with mutable access (same kinds, same order).
    pub fn params_mut(&mut self) -> Vec<(ParamKind, &mut Tensor)> {
        param_list!(*self, ref mut)
    }

    /// Learnable parameters (PyTorch's count: running statistics are not parameters).
    pub fn param_count(&self) -> usize {
        self.params().iter().filter(|(k, _)| k.trainable()).map(|(_, t)| t.numel()).sum()
    }
}

/// What one parameter tensor of an operator is. [`ParamKind::name`] is the suffix of its stable
/// name `<node>.<suffix>` in weight files, ONNX initializers and gradient maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamKind {
    /// Convolution weight `[cout, cin / groups, kh, kw]`.
    Weight,
    /// Convolution bias `[cout]`.
    Bias,
    /// Batch-norm scale `[c]`.
    BnGamma,
    /// Batch-norm shift `[c]`.
    BnBeta,
    /// Batch-norm running mean `[c]` (a statistic, not trained).
    BnRunningMean,
    /// Batch-norm running variance `[c]` (a statistic, not trained).
    BnRunningVar,
    /// Channel-affine scale `[c]`.
    AffineScale,
    /// Channel-affine shift `[c]`.
    AffineShift,
    /// Soft gate `alpha` `[c]` of a gated add, or of a gate fused into a convolution.
    SoftGate,
}

impl ParamKind {
    /// Every kind, in the order of the variants.
    pub const ALL: [ParamKind; 9] = [
        ParamKind::Weight,
        ParamKind::Bias,
        ParamKind::BnGamma,
        ParamKind::BnBeta,
        ParamKind::BnRunningMean,
        ParamKind::BnRunningVar,
        ParamKind::AffineScale,
        ParamKind::AffineShift,
        ParamKind::SoftGate,
    ];

    /// Suffix of the parameter's stable name (the tensor names of the weight files).
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::Weight => "weight",
            ParamKind::Bias => "bias",
            ParamKind::BnGamma => "gamma",
            ParamKind::BnBeta => "beta",
            ParamKind::BnRunningMean => "running_mean",
            ParamKind::BnRunningVar => "running_var",
            ParamKind::AffineScale => "scale",
            ParamKind::AffineShift => "shift",
            ParamKind::SoftGate => "alpha",
        }
    }

    /// Whether training updates it (running statistics are updated by the forward pass instead).
    pub fn trainable(self) -> bool {
        !matches!(self, ParamKind::BnRunningMean | ParamKind::BnRunningVar)
    }

    /// Whether weight decay applies: convolution weights only (decaying biases, gates or
    /// batch-norm scales shrinks the function, not its complexity).
    pub fn decays(self) -> bool {
        self == ParamKind::Weight
    }

    /// Whether it is a per-channel vector `[c]` over the operator's output channels (everything
    /// but convolution weights).
    pub fn per_channel(self) -> bool {
        self != ParamKind::Weight
    }
}

/// The stable name `<node>.<suffix>` of a parameter: the one place these names are built.
pub fn param_name(node: &str, kind: ParamKind) -> String {
    format!("{node}.{}", kind.name())
}
