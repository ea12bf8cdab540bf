//! The training engine: reverse-mode automatic differentiation over the graph IR, losses,
//! Gaussian targets and optimisers. The training loop around it (data, augmentation,
//! checkpoints, the `wgpose train` session) is [`crate::training`].
//!
//! - [`forward_train`] runs the graph with the CPU executor's kernels (nothing is defined twice)
//!   and keeps on a [`Tape`] everything the backward pass needs: every node's output, the batch
//!   statistics of batch norms in training mode (and the updated running statistics, momentum
//!   0.1 and unbiased variance as in PyTorch), and the argmax of every max pool.
//! - [`backward()`] walks the nodes in reverse topological order and returns [`Gradients`], keyed
//!   by the parameter names of [`crate::weights::named_params`] (`<node>.weight`, `.bias`,
//!   `.gamma`, `.beta`, `.alpha`, `.scale`, `.shift`), plus the gradients of the graph inputs.
//!   Running statistics are not parameters and get no gradient.
//!
//! Training graphs must be as built (convolutions with the default epilogue): graphs rewritten
//! by the inference fusion passes are refused.

pub mod backward;
mod conv_backward;
pub(crate) mod loss;
pub(crate) mod optim;
mod strided;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cpu;
use crate::error::{Error, Result};
use crate::graph::{param_name, Act, Epilogue, Graph, NodeId, Op, ParamKind};
use crate::tensor::Tensor;

pub use loss::{
    argmax_keypoints, detection_loss, gaussian_heatmaps, match_limb_swaps, mse_loss, rce_loss, stack_batch,
    strip_final_sigmoid,
};
pub use optim::{step_lr, Kind as OptimizerKind, Optimizer};

/// PyTorch's default batch-norm momentum for the running statistics.
pub(crate) const BN_MOMENTUM: f32 = 0.1;

/// How batch norms behave in [`forward_train`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    /// Normalise with the statistics of the batch (biased variance); the tape carries updated
    /// running statistics (`running = 0.9 running + 0.1 batch`, unbiased variance).
    Train,
    /// Normalise with the running statistics (a fixed per-channel affine).
    Eval,
}

/// Statistics a batch norm used in the forward pass.
#[derive(Clone, Debug)]
pub struct BnStats {
    /// Per-channel mean used to normalise.
    pub mean: Vec<f32>,
    /// Per-channel `1 / sqrt(var + eps)` used to normalise.
    pub inv_std: Vec<f32>,
    /// Whether they are batch statistics (depend on the input) or running ones.
    pub batch: bool,
}

/// Updated running statistics of one batch norm after a training-mode forward pass.
#[derive(Clone, Debug)]
pub struct RunningUpdate {
    /// The batch norm's node.
    pub node: NodeId,
    /// New running mean `[c]`.
    pub mean: Tensor,
    /// New running variance `[c]` (from the unbiased batch variance).
    pub var: Tensor,
}

/// What [`backward()`] needs from the forward pass.
pub struct Tape {
    /// Every node's output (index = node id), except for a node whose only consumer is an
    /// activation it was fused with (a batch norm, add or convolution feeding a ReLU, not a
    /// graph output): its entry keeps the shape with no data, and the activation's entry holds
    /// the result. Backward steps of those nodes never read their own output.
    pub values: Vec<Tensor>,
    /// Per batch-norm node, the statistics it normalised with.
    pub bn: Vec<Option<BnStats>>,
    /// Per max-pool node, the flat in-plane index of the winning input of every output.
    pub argmax: Vec<Option<Vec<u32>>>,
    /// Running statistics to write back (training mode only; see [`Tape::apply_running_stats`]).
    pub running: Vec<RunningUpdate>,
    /// Whether batch norms ran in training or evaluation mode.
    pub mode: BnMode,
}

impl Tape {
    /// The graph outputs, in order.
    pub fn outputs(&self, graph: &Graph) -> Vec<Tensor> {
        graph.outputs.iter().map(|&o| self.values[o].clone()).collect()
    }

    /// Writes the updated running statistics into the graph's batch norms (training mode only;
    /// a no-op after an eval-mode pass).
    pub fn apply_running_stats(&self, graph: &mut Graph) {
        for u in &self.running {
            if let Op::BatchNorm(bn) = &mut graph.nodes[u.node].op {
                bn.mean = u.mean.clone();
                bn.var = u.var.clone();
            }
        }
    }
}

/// Gradients of a scalar loss.
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    /// By parameter name (every trainable parameter of the graph is present; parameters the
    /// loss does not depend on get zeros).
    pub params: BTreeMap<String, Tensor>,
    /// Per graph input (in the order of `Graph::inputs`); empty after [`train_step`], which
    /// does not compute them.
    pub inputs: Vec<Tensor>,
}

impl Gradients {
    /// The gradient of the parameter named `name` (`<node>.<kind>`), if it has one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.params.get(name)
    }

    /// Global L2 norm of all parameter gradients.
    pub fn norm(&self) -> f64 {
        self.params.values().flat_map(|t| t.data.iter()).map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt()
    }

    /// Multiplies every parameter gradient by `s` (e.g. for clipping).
    pub fn scale(&mut self, s: f32) {
        for t in self.params.values_mut() {
            t.data.iter_mut().for_each(|v| *v *= s);
        }
    }
}

fn check_trainable(graph: &Graph) -> Result<()> {
    for n in &graph.nodes {
        if let Op::Conv2d(c) = &n.op {
            if c.epilogue != Epilogue::default() || n.inputs.len() != 1 {
                return Err(Error::Graph(format!(
                    "node `{}`: training supports convolutions without a fused epilogue only \
                     (train the unfused graph, then run the inference passes)",
                    n.name
                )));
            }
        }
    }
    Ok(())
}

/// Runs the graph for training, keeping what [`backward()`] needs. `inputs` as for
/// [`cpu::run`].
pub fn forward_train(graph: &Graph, inputs: &[Tensor], bn_mode: BnMode) -> Result<Tape> {
    forward_train_timed(graph, inputs, bn_mode, None)
}

/// [`forward_train`] that also returns the wall time of every node (index = node id), for the
/// per-layer training tables of `examples/train_profile.rs`.
pub fn forward_train_profiled(graph: &Graph, inputs: &[Tensor], bn_mode: BnMode) -> Result<(Tape, Vec<Duration>)> {
    let mut times = vec![Duration::ZERO; graph.nodes.len()];
    let tape = forward_train_timed(graph, inputs, bn_mode, Some(&mut times))?;
    Ok((tape, times))
}

fn forward_train_timed(
    graph: &Graph,
    inputs: &[Tensor],
    bn_mode: BnMode,
    mut times: Option<&mut Vec<Duration>>,
) -> Result<Tape> {
    check_trainable(graph)?;
    // Validates inputs and shapes exactly like the executor.
    let prepared = cpu::prepare(graph, inputs)?;
    let n = graph.nodes.len();
    let mut values: Vec<Tensor> = Vec::with_capacity(n);
    let mut bn = vec![None; n];
    let mut argmax = vec![None; n];
    let mut running = Vec::new();
    let fused = fused_activations(graph);
    // Activation outputs computed by their producer (see `fused_activations`).
    let mut ready: Vec<Option<Tensor>> = vec![None; n];
    for (id, node) in graph.nodes.iter().enumerate() {
        let args: Vec<&Tensor> = node.inputs.iter().map(|&i| &values[i]).collect();
        let start = times.is_some().then(Instant::now);
        let v = if let Some(fused_output) = ready[id].take() {
            fused_output
        } else {
            match &node.op {
                Op::Input { .. } => inputs[prepared.input_index[id]].clone(),
                Op::BatchNorm(b) => {
                    let x = args[0];
                    let c = b.gamma.numel();
                    let (mean, var) = if bn_mode == BnMode::Train {
                        let (mean, var) = batch_stats(x);
                        let m = (x.numel() / c) as f32;
                        let unbiased = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
                        let rm = (0..c).map(|i| (1.0 - BN_MOMENTUM) * b.mean.data[i] + BN_MOMENTUM * mean[i]).collect();
                        let rv = (0..c)
                            .map(|i| (1.0 - BN_MOMENTUM) * b.var.data[i] + BN_MOMENTUM * var[i] * unbiased)
                            .collect();
                        running.push(RunningUpdate {
                            node: id,
                            mean: Tensor { shape: vec![c], data: rm },
                            var: Tensor { shape: vec![c], data: rv },
                        });
                        (mean, var)
                    } else {
                        (b.mean.data.clone(), b.var.data.clone())
                    };
                    let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + b.eps).sqrt()).collect();
                    let (scale, shift) = backward::bn_scale_shift(&b.gamma.data, &b.beta.data, &mean, &inv_std);
                    // The executor's batch-norm kernel is this channel affine.
                    let op = Op::ChannelAffine {
                        scale: Tensor { shape: vec![c], data: scale },
                        shift: Tensor { shape: vec![c], data: shift },
                        act: fused[id].map_or(Act::None, |(_, act)| act),
                    };
                    let y = cpu::eval_op_for_training(&node.name, &op, &args)?;
                    bn[id] = Some(BnStats { mean, inv_std, batch: bn_mode == BnMode::Train });
                    y
                }
                Op::MaxPool { kernel, stride, padding } => {
                    let (y, am) =
                        cpu::pool::max_pool_with_argmax(args[0], *kernel, *stride, *padding, prepared.shapes[id]);
                    argmax[id] = Some(am);
                    y
                }
                op => {
                    let mut y = cpu::eval_op_for_training(&node.name, op, &args)?;
                    if let Some((_, act)) = fused[id] {
                        cpu::parallel::for_each_chunk_mut(&mut y.data, 1 << 14, 1, |_, d| {
                            cpu::elementwise::activate(d, act)
                        });
                    }
                    y
                }
            }
        };
        // A fused node keeps only its shape; the activation's entry holds the result.
        let v = match fused[id] {
            Some((consumer, _)) => {
                let shape = v.shape.clone();
                ready[consumer] = Some(v);
                Tensor { shape, data: Vec::new() }
            }
            None => v,
        };
        if let (Some(t), Some(s)) = (times.as_deref_mut(), start) {
            t[id] = s.elapsed();
        }
        values.push(v);
    }
    Ok(Tape { values, bn, argmax, running, mode: bn_mode })
}

/// Per-channel mean and biased variance over batch and space, in one pass: sums of `v - s`
/// and `(v - s)^2` (`cpu::reduce`, f64 across blocks), shifted by the channel's first value `s`
/// so that the variance does not cancel when the mean is large against the spread.
fn batch_stats(x: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let hw = h * w;
    let m = (n * hw) as f64;
    let kernel = cpu::gemm::Kernel::detect();
    cpu::parallel::map_tasks(c, |ch| {
        let shift = x.data[ch * hw];
        let (s1, s2) = (0..n).fold((0.0f64, 0.0f64), |(a, b), item| {
            let p = &x.data[(item * c + ch) * hw..(item * c + ch + 1) * hw];
            let (da, db) = cpu::reduce::centered_sums(p, shift, p, shift, kernel);
            (a + da, b + db)
        });
        let d = s1 / m;
        // Rounding can leave a tiny negative; NaN stays NaN (`f64::max` would turn it into 0).
        let var = s2 / m - d * d;
        let var = if var < 0.0 { 0.0 } else { var };
        ((shift as f64 + d) as f32, var as f32)
    })
    .into_iter()
    .unzip()
}

/// For each node whose output only feeds one activation (and is not a graph output), that
/// activation's node and kind, when the node's own backward step does not read its output
/// (batch norm, add, convolution): the forward pass then applies the activation in the same
/// pass and keeps one tensor instead of two.
fn fused_activations(graph: &Graph) -> Vec<Option<(NodeId, Act)>> {
    let consumers = graph.consumers();
    (0..graph.nodes.len())
        .map(|id| {
            let producer = matches!(graph.nodes[id].op, Op::BatchNorm(_) | Op::Add | Op::Conv2d(_));
            match consumers[id][..] {
                [c] if producer && !graph.outputs.contains(&id) => match graph.nodes[c].op {
                    Op::Activation(act) => Some((c, act)),
                    _ => None,
                },
                _ => None,
            }
        })
        .collect()
}

/// [`accumulate`] of a borrowed gradient: copied only when it is the node's first.
fn accumulate_ref(grads: &mut [Option<Tensor>], id: NodeId, g: &Tensor) {
    match &mut grads[id] {
        None => grads[id] = Some(g.clone()),
        Some(t) => add_in_place(&mut t.data, &g.data),
    }
}

fn add_in_place(d: &mut [f32], s: &[f32]) {
    cpu::parallel::for_each_chunk_mut(d, 1 << 14, 1, |i, d| {
        let len = d.len();
        cpu::elementwise::add_assign(d, &s[i << 14..][..len])
    });
}

fn accumulate(grads: &mut [Option<Tensor>], id: NodeId, g: Tensor) {
    match &mut grads[id] {
        None => grads[id] = Some(g),
        Some(t) => add_in_place(&mut t.data, &g.data),
    }
}

/// Reverse pass: `output_grads` holds `dL/d output` for every graph output (same shapes as the
/// outputs on the tape). Returns the gradient of every trainable parameter and of every input.
pub fn backward(graph: &Graph, tape: &Tape, output_grads: &[Tensor]) -> Result<Gradients> {
    backward_timed(graph, tape, output_grads, true, None)
}

/// The backward pass of [`train_step`] (no input gradients) that also returns the wall time of
/// every node's backward step (index = node id; gradient accumulation into a node's inputs is
/// counted with the node).
pub fn backward_profiled(graph: &Graph, tape: &Tape, output_grads: &[Tensor]) -> Result<(Gradients, Vec<Duration>)> {
    let mut times = vec![Duration::ZERO; graph.nodes.len()];
    let g = backward_timed(graph, tape, output_grads, false, Some(&mut times))?;
    Ok((g, times))
}

fn backward_timed(
    graph: &Graph,
    tape: &Tape,
    output_grads: &[Tensor],
    input_grads: bool,
    mut times: Option<&mut Vec<Duration>>,
) -> Result<Gradients> {
    if tape.values.len() != graph.nodes.len() {
        return Err(Error::Input("the tape was recorded on a different graph".into()));
    }
    if output_grads.len() != graph.outputs.len() {
        return Err(Error::Input(format!(
            "the graph has {} output(s), got {} output gradient(s)",
            graph.outputs.len(),
            output_grads.len()
        )));
    }
    let mut grads: Vec<Option<Tensor>> = vec![None; graph.nodes.len()];
    for (k, (&o, g)) in graph.outputs.iter().zip(output_grads).enumerate() {
        if g.shape != tape.values[o].shape || g.data.len() != tape.values[o].data.len() {
            return Err(Error::Input(format!(
                "gradient of output {k} has shape {:?}, the output has {:?}",
                g.shape, tape.values[o].shape
            )));
        }
        accumulate(&mut grads, o, g.clone());
    }
    let mut params: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut put = |name: &str, kind: ParamKind, shape: &[usize], data: Vec<f32>| {
        params.insert(param_name(name, kind), Tensor { shape: shape.to_vec(), data });
    };
    let mut found_input_grads: BTreeMap<NodeId, Tensor> = BTreeMap::new();
    // A ReLU the forward pass fused into its batch norm hands its gradient on unmasked; the
    // batch norm's backward step applies the mask (one pass over the tensors instead of two).
    let fused = fused_activations(graph);
    let mut relu_after_bn = vec![false; graph.nodes.len()];
    for id in (0..graph.nodes.len()).rev() {
        let node = &graph.nodes[id];
        let Some(dy) = grads[id].take() else {
            continue;
        };
        let start = times.is_some().then(Instant::now);
        let xs: Vec<&Tensor> = node.inputs.iter().map(|&i| &tape.values[i]).collect();
        let y = &tape.values[id];
        // A convolution reading a graph input (the image) computes its dx only when input
        // gradients are asked for: training never uses them, and for a strided first layer it
        // costs as much as the layer's forward pass.
        match &node.op {
            Op::Input { .. } => {
                found_input_grads.insert(id, dy);
            }
            Op::Conv2d(c) => {
                let need_dx = input_grads || !matches!(graph.nodes[node.inputs[0]].op, Op::Input { .. });
                let g = backward::conv2d_backward(xs[0], &dy, c, need_dx);
                put(&node.name, ParamKind::Weight, &c.weight.shape, g.dw.data);
                if let Some(db) = g.db {
                    put(&node.name, ParamKind::Bias, &db.shape, db.data);
                }
                if let Some(dx) = g.dx {
                    accumulate(&mut grads, node.inputs[0], dx);
                }
            }
            Op::BatchNorm(b) => {
                let st = tape.bn[id].as_ref().ok_or_else(|| Error::Input("tape lacks batch-norm statistics".into()))?;
                let affine = relu_after_bn[id]
                    .then(|| backward::bn_scale_shift(&b.gamma.data, &b.beta.data, &st.mean, &st.inv_std));
                let relu = affine.as_ref().map(|(a, b)| (&a[..], &b[..]));
                let (dx, dgamma, dbeta) =
                    backward::batch_norm_backward(xs[0], dy, &b.gamma.data, &st.mean, &st.inv_std, st.batch, relu);
                put(&node.name, ParamKind::BnGamma, &b.gamma.shape, dgamma);
                put(&node.name, ParamKind::BnBeta, &b.beta.shape, dbeta);
                accumulate(&mut grads, node.inputs[0], dx);
            }
            Op::ChannelAffine { scale, shift, act } => {
                let (dx, dscale, dshift) = backward::channel_affine_backward(xs[0], y, &dy, &scale.data, *act);
                put(&node.name, ParamKind::AffineScale, &scale.shape, dscale);
                put(&node.name, ParamKind::AffineShift, &shift.shape, dshift);
                accumulate(&mut grads, node.inputs[0], dx);
            }
            Op::Activation(act) => {
                let p = node.inputs[0];
                if *act == Act::Relu
                    && fused[p] == Some((id, Act::Relu))
                    && matches!(graph.nodes[p].op, Op::BatchNorm(_))
                {
                    relu_after_bn[p] = true;
                    accumulate(&mut grads, p, dy);
                } else {
                    let dx = backward::activation_backward_owned(y, dy, *act);
                    accumulate(&mut grads, p, dx);
                }
            }
            Op::MaxPool { .. } => {
                let am = tape.argmax[id].as_ref().ok_or_else(|| Error::Input("tape lacks max-pool indices".into()))?;
                let dx = backward::max_pool_backward(xs[0], &dy, am);
                accumulate(&mut grads, node.inputs[0], dx);
            }
            Op::UpsampleNearest { factor } => {
                let dx = backward::upsample_nearest_backward(xs[0], &dy, *factor);
                accumulate(&mut grads, node.inputs[0], dx);
            }
            Op::UpsampleBilinear { factor } => {
                let dx = backward::upsample_bilinear_backward(xs[0], &dy, *factor);
                accumulate(&mut grads, node.inputs[0], dx);
            }
            Op::Concat => {
                let cs: Vec<usize> = xs.iter().map(|t| t.shape[1]).collect();
                for (&i, dx) in node.inputs.iter().zip(backward::concat_backward(&dy, &cs)) {
                    accumulate(&mut grads, i, dx);
                }
            }
            Op::Add => {
                accumulate_ref(&mut grads, node.inputs[1], &dy);
                accumulate(&mut grads, node.inputs[0], dy);
            }
            Op::GatedAdd { alpha } => {
                let (dskip, dalpha) = backward::gated_add_backward(xs[0], &dy, &alpha.data);
                put(&node.name, ParamKind::SoftGate, &alpha.shape, dalpha);
                accumulate(&mut grads, node.inputs[0], dskip);
                accumulate(&mut grads, node.inputs[1], dy);
            }
            Op::PixelShuffle { factor } => {
                let dx = backward::pixel_shuffle_backward(xs[0], &dy, *factor);
                accumulate(&mut grads, node.inputs[0], dx);
            }
        }
        if let (Some(t), Some(s)) = (times.as_deref_mut(), start) {
            t[id] = s.elapsed();
        }
    }
    // Parameters the loss does not reach get zero gradients, so the map is complete.
    for (name, t) in trainable_params(graph) {
        params.entry(name).or_insert_with(|| Tensor::zeros(t.shape.clone()));
    }
    let inputs = if input_grads {
        let mut found = found_input_grads;
        graph
            .inputs()
            .into_iter()
            .map(|i| found.remove(&i).unwrap_or_else(|| Tensor::zeros(tape.values[i].shape.clone())))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Gradients { params, inputs })
}

/// The trainable parameters of a graph by name: everything of
/// [`crate::weights::named_params`] except batch-norm running statistics
/// ([`ParamKind::trainable`]).
pub fn trainable_params(graph: &Graph) -> Vec<(String, &Tensor)> {
    graph.params().into_iter().filter(|(_, k, _)| k.trainable()).map(|(n, k, t)| (param_name(n, k), t)).collect()
}

/// Forward (training mode), loss and backward in one call: `loss_fn` maps the graph outputs to
/// `(loss, dL/d outputs)`. Returns the loss, the gradients of the parameters (not of the graph
/// inputs: `Gradients::inputs` is empty; [`backward()`] computes those) and the tape (whose
/// running statistics the caller may apply with [`Tape::apply_running_stats`]).
pub fn train_step<F>(graph: &Graph, inputs: &[Tensor], bn_mode: BnMode, loss_fn: F) -> Result<(f32, Gradients, Tape)>
where
    F: FnOnce(&[&Tensor]) -> Result<(f32, Vec<Tensor>)> + Send,
{
    // On a pool worker with the others polling, as an inference runs (`crate::cpu::threads`):
    // a step is about a thousand parallel operators.
    crate::cpu::threads::run_with_busy_pool(|| {
        let tape = forward_train(graph, inputs, bn_mode)?;
        let outs: Vec<&Tensor> = graph.outputs.iter().map(|&o| &tape.values[o]).collect();
        let (loss, dout) = loss_fn(&outs)?;
        let grads = backward_timed(graph, &tape, &dout, false, None)?;
        Ok((loss, grads, tape))
    })
}
