//! Shape inference, and the parameter, FLOP and memory-traffic counts that follow from shapes.

use super::{Graph, Op};
use crate::error::{Error, Result};
use crate::tensor::checked_numel;

/// Largest activation tensor accepted (elements). Far above any pose network at sane sizes, and
/// below what would overflow the u32 offsets the kernels use.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 30;

/// Per-node facts for one batch size.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStats {
    /// Output shape `[n, c, h, w]`.
    pub shape: [usize; 4],
    /// Learnable parameters of the node.
    pub params: usize,
    /// Multiply and add counted as two operations.
    pub flops: u64,
    /// Bytes of activations read and written plus parameters read, assuming no cache reuse.
    pub bytes: u64,
}

impl Graph {
    /// Output shape of every node for batch size `batch`.
    pub fn shapes(&self, batch: usize) -> Result<Vec<[usize; 4]>> {
        self.validate()?;
        if batch == 0 {
            return Err(Error::Input("batch size must be at least 1".into()));
        }
        let mut shapes: Vec<[usize; 4]> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let ins: Vec<[usize; 4]> = node.inputs.iter().map(|&i| shapes[i]).collect();
            let s = infer(&node.name, &node.op, &ins, batch)?;
            if s.contains(&0) {
                return Err(Error::shape(&node.name, format!("produces an empty tensor {s:?}")));
            }
            let n = checked_numel(&s)?;
            if n > MAX_TENSOR_ELEMENTS {
                return Err(Error::TooLarge(format!(
                    "node `{}` would produce {s:?} = {n} elements (limit {MAX_TENSOR_ELEMENTS})",
                    node.name
                )));
            }
            shapes.push(s);
        }
        Ok(shapes)
    }

    /// Shapes, parameters, FLOPs and bytes moved per node.
    pub fn stats(&self, batch: usize) -> Result<Vec<NodeStats>> {
        let shapes = self.shapes(batch)?;
        Ok(self
            .nodes
            .iter()
            .enumerate()
            .map(|(id, node)| {
                let s = shapes[id];
                let out = (s[0] * s[1] * s[2] * s[3]) as u64;
                let ins: u64 = node.inputs.iter().map(|&i| shapes[i].iter().product::<usize>() as u64).sum();
                let params = node.op.param_count();
                let flops = match &node.op {
                    Op::Conv2d(c) => {
                        let [kh, kw] = c.kernel();
                        let macs = out * (c.cin_per_group() * kh * kw) as u64;
                        let extra = if c.epilogue.residual.is_some() { out } else { 0 };
                        2 * macs + if c.bias.is_some() { out } else { 0 } + extra
                    }
                    Op::MaxPool { kernel, .. } => out * (kernel[0] * kernel[1]) as u64,
                    Op::UpsampleBilinear { .. } => out * 7,
                    Op::BatchNorm(_) | Op::ChannelAffine { .. } | Op::GatedAdd { .. } => 2 * out,
                    Op::Add | Op::Activation(_) => out,
                    _ => 0,
                };
                let moved = match &node.op {
                    Op::Input { .. } | Op::Concat => 0,
                    _ => ins + out + params as u64,
                };
                NodeStats { shape: s, params, flops, bytes: 4 * moved }
            })
            .collect())
    }

    /// Total FLOPs of one inference at batch `batch`.
    pub fn flops(&self, batch: usize) -> Result<u64> {
        Ok(self.stats(batch)?.iter().map(|s| s.flops).sum())
    }
}

fn expect_inputs(name: &str, ins: &[[usize; 4]], n: usize) -> Result<()> {
    if ins.len() != n {
        return Err(Error::shape(name, format!("expects {n} input(s), got {}", ins.len())));
    }
    Ok(())
}

fn expect_channels(name: &str, what: &str, t: &crate::tensor::Tensor, c: usize) -> Result<()> {
    if t.shape != [c] {
        return Err(Error::shape(name, format!("{what} has shape {:?}, expected [{c}]", t.shape)));
    }
    Ok(())
}

/// Output shape of `op` on inputs of shapes `ins`, after checking that every per-channel
/// parameter ([`ParamKind::per_channel`](super::ParamKind::per_channel)) has one value per output channel.
fn infer(name: &str, op: &Op, ins: &[[usize; 4]], batch: usize) -> Result<[usize; 4]> {
    let out = infer_output(name, op, ins, batch)?;
    for (kind, t) in op.params() {
        if kind.per_channel() {
            expect_channels(name, kind.name(), t, out[1])?;
        }
    }
    Ok(out)
}

fn infer_output(name: &str, op: &Op, ins: &[[usize; 4]], batch: usize) -> Result<[usize; 4]> {
    match op {
        Op::Input { chw } => {
            expect_inputs(name, ins, 0)?;
            Ok([batch, chw[0], chw[1], chw[2]])
        }
        Op::Conv2d(c) => {
            if ins.is_empty() || ins.len() > 2 {
                return Err(Error::shape(name, format!("conv2d takes 1 or 2 inputs, got {}", ins.len())));
            }
            if ins.len() == 2 && c.epilogue.residual.is_none() {
                return Err(Error::shape(name, "a second input needs a residual epilogue"));
            }
            if ins.len() == 1 && c.epilogue.residual.is_some() {
                return Err(Error::shape(name, "a residual epilogue needs a second input"));
            }
            let [n, cin, h, w] = ins[0];
            if c.weight.shape.len() != 4 {
                return Err(Error::shape(name, format!("weight must be 4-D, got {:?}", c.weight.shape)));
            }
            let [kh, kw] = c.kernel();
            if c.groups == 0 || kh == 0 || kw == 0 || c.cout() == 0 {
                return Err(Error::shape(name, "zero groups, kernel size or output channels"));
            }
            if c.stride.contains(&0) || c.dilation.contains(&0) {
                return Err(Error::shape(name, "stride and dilation must be at least 1"));
            }
            if cin % c.groups != 0 || c.cout() % c.groups != 0 {
                return Err(Error::shape(
                    name,
                    format!("{cin} input / {} output channels do not divide into {} groups", c.cout(), c.groups),
                ));
            }
            if cin / c.groups != c.cin_per_group() {
                return Err(Error::shape(
                    name,
                    format!(
                        "input has {cin} channels but weight {:?} with {} groups expects {}",
                        c.weight.shape,
                        c.groups,
                        c.cin_per_group() * c.groups
                    ),
                ));
            }
            let [oh, ow] = c
                .out_hw(h, w)
                .ok_or_else(|| Error::shape(name, format!("kernel {kh}x{kw} does not fit input {h}x{w}")))?;
            let out = [n, c.cout(), oh, ow];
            if c.epilogue.residual.is_some() && ins[1] != out {
                return Err(Error::shape(name, format!("residual {:?} does not match output {out:?}", ins[1])));
            }
            Ok(out)
        }
        Op::BatchNorm(_) | Op::ChannelAffine { .. } | Op::Activation(_) => {
            expect_inputs(name, ins, 1)?;
            Ok(ins[0])
        }
        Op::MaxPool { kernel, stride, padding } => {
            expect_inputs(name, ins, 1)?;
            let [n, c, h, w] = ins[0];
            if kernel.contains(&0) || stride.contains(&0) {
                return Err(Error::shape(name, "pool kernel and stride must be at least 1"));
            }
            if 2 * padding[0] > kernel[0] || 2 * padding[1] > kernel[1] {
                return Err(Error::shape(name, "pool padding must be at most half the kernel"));
            }
            let (ph, pw) = (h + 2 * padding[0], w + 2 * padding[1]);
            if ph < kernel[0] || pw < kernel[1] {
                return Err(Error::shape(name, format!("pool kernel {kernel:?} does not fit input {h}x{w}")));
            }
            Ok([n, c, (ph - kernel[0]) / stride[0] + 1, (pw - kernel[1]) / stride[1] + 1])
        }
        Op::UpsampleNearest { factor } | Op::UpsampleBilinear { factor } => {
            expect_inputs(name, ins, 1)?;
            if *factor == 0 {
                return Err(Error::shape(name, "upsampling factor must be at least 1"));
            }
            let [n, c, h, w] = ins[0];
            let oh = h.checked_mul(*factor);
            let ow = w.checked_mul(*factor);
            match (oh, ow) {
                (Some(oh), Some(ow)) => Ok([n, c, oh, ow]),
                _ => Err(Error::TooLarge(format!("node `{name}`: upsampled size overflows"))),
            }
        }
        Op::Concat => {
            if ins.is_empty() {
                return Err(Error::shape(name, "concat needs at least one input"));
            }
            let [n, _, h, w] = ins[0];
            let mut c = 0;
            for s in ins {
                if s[0] != n || s[2] != h || s[3] != w {
                    return Err(Error::shape(name, format!("cannot concat {s:?} with {:?}", ins[0])));
                }
                c += s[1];
            }
            Ok([n, c, h, w])
        }
        Op::Add | Op::GatedAdd { .. } => {
            expect_inputs(name, ins, 2)?;
            if ins[0] != ins[1] {
                return Err(Error::shape(name, format!("cannot add {:?} and {:?}", ins[0], ins[1])));
            }
            Ok(ins[0])
        }
        Op::PixelShuffle { factor } => {
            expect_inputs(name, ins, 1)?;
            let [n, c, h, w] = ins[0];
            let rr = factor * factor;
            if *factor == 0 || c % rr != 0 {
                return Err(Error::shape(name, format!("{c} channels are not divisible by {factor}^2")));
            }
            Ok([n, c / rr, h * factor, w * factor])
        }
    }
}
