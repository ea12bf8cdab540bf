//! Graph passes for inference: batch-norm folding and epilogue fusion. Each pass returns a new
//! graph that computes the same outputs (tests check fused == unfused on random graphs).
//!
//! Concat-without-copies and buffer reuse are decided by the memory planner (`memory.rs`), which
//! runs on the graph these passes produce. [`input_affines`] is an analysis both executors run
//! on that graph: which batch norms a convolution applies to its input as it reads it.

use super::{Act, Conv2d, Graph, Node, NodeId, Op, Residual};
use crate::tensor::Tensor;

/// All inference passes in order: fold batch norms, fuse activations, fuse residual and gated
/// adds, then fuse the activations that follow those adds.
///
/// The passes index nodes by id and assume consistent shapes, so a graph that fails shape
/// inference (built by hand with a bad edge or a parameter of the wrong size) is returned
/// unchanged: the executor that runs it then reports the error.
pub fn optimize_for_inference(g: &Graph) -> Graph {
    if g.shapes(1).is_err() {
        return g.clone();
    }
    let g = fold_batch_norm(g);
    let g = fuse_activations(&g);
    let g = fuse_residual_adds(&g);
    fuse_activations(&g)
}

/// For every convolution that `can_absorb` (given the convolution and the affine's activation)
/// whose first input is a channel affine read by nothing else and not a graph output, that
/// affine's id: the executor skips the affine and the convolution reads the affine's input,
/// applying the affine (and its activation) to each value as it loads it. Padding stays zero,
/// as in the normalised tensor. These are the pre-activation batch norm + ReLU pairs that
/// cannot be folded into weights because the un-normalised tensor is read elsewhere too (the
/// soft-gated hourglass's residual branches: 51 of them). Each executor says which
/// convolutions its kernels can do it in (`cpu::conv::copies_input`,
/// `gpu::kernels`); the graph itself is not changed, so training and export never see it.
pub fn input_affines(graph: &Graph, can_absorb: impl Fn(&Conv2d, Act) -> bool) -> Vec<Option<NodeId>> {
    let mut readers = vec![0usize; graph.nodes.len()];
    graph.nodes.iter().flat_map(|n| &n.inputs).for_each(|&i| readers[i] += 1);
    graph
        .nodes
        .iter()
        .map(|node| match (&node.op, node.inputs.first()) {
            (Op::Conv2d(c), Some(&a)) => match &graph.nodes[a].op {
                Op::ChannelAffine { act, .. }
                    if readers[a] == 1 && !graph.outputs.contains(&a) && can_absorb(c, *act) =>
                {
                    Some(a)
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A node whose output is read only by `consumer` and is not a graph output.
fn single_consumer(g: &Graph, consumers: &[Vec<NodeId>], id: NodeId) -> Option<NodeId> {
    match consumers[id][..] {
        [c] if !g.outputs.contains(&id) && g.nodes[c].inputs.iter().filter(|&&i| i == id).count() == 1 => Some(c),
        _ => None,
    }
}

/// Rebuilds a graph from a list of (old id, node with old input ids); `alias[old]` says which old
/// node's result stands for an old node that was absorbed.
fn rebuild(g: &Graph, emitted: Vec<(NodeId, Node)>, alias: &[NodeId]) -> Graph {
    let mut map: Vec<Option<NodeId>> = vec![None; g.nodes.len()];
    let mut out = Graph::new();
    for (old, mut node) in emitted {
        for i in node.inputs.iter_mut() {
            *i = map[alias[*i]].expect("passes keep topological order");
        }
        let id = out.nodes.len();
        out.nodes.push(node);
        map[old] = Some(id);
    }
    out.outputs = g.outputs.iter().map(|&o| map[alias[o]].expect("outputs survive passes")).collect();
    out
}

/// Folds each batch norm that directly follows a convolution (its only reader) into that
/// convolution's weights and bias; the remaining ones become per-channel affine nodes.
pub(crate) fn fold_batch_norm(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let mut alias: Vec<NodeId> = (0..g.nodes.len()).collect();
    let mut folded_into: Vec<Option<NodeId>> = vec![None; g.nodes.len()];
    for (id, node) in g.nodes.iter().enumerate() {
        if let (Op::BatchNorm(_), [p]) = (&node.op, &node.inputs[..]) {
            if let Op::Conv2d(c) = &g.nodes[*p].op {
                if c.epilogue == Default::default() && single_consumer(g, &consumers, *p) == Some(id) {
                    folded_into[*p] = Some(id);
                    alias[id] = *p;
                }
            }
        }
    }
    let mut emitted = Vec::new();
    for (id, node) in g.nodes.iter().enumerate() {
        match (&node.op, folded_into[id]) {
            (Op::Conv2d(c), Some(bn_id)) => {
                let Op::BatchNorm(bn) = &g.nodes[bn_id].op else { unreachable!() };
                let (scale, shift) = bn.scale_shift();
                let mut c = c.clone();
                let per_out = c.weight.numel() / c.cout();
                for (i, w) in c.weight.data.iter_mut().enumerate() {
                    *w *= scale[i / per_out];
                }
                let bias: Vec<f32> =
                    (0..c.cout()).map(|o| c.bias.as_ref().map_or(0.0, |b| b.data[o]) * scale[o] + shift[o]).collect();
                c.bias = Some(Tensor { shape: vec![c.cout()], data: bias });
                emitted.push((id, Node { name: node.name.clone(), op: Op::Conv2d(c), inputs: node.inputs.clone() }));
            }
            (Op::BatchNorm(_), _) if alias[id] != id => {}
            (Op::BatchNorm(bn), _) => {
                let (scale, shift) = bn.scale_shift();
                let n = scale.len();
                let op = Op::ChannelAffine {
                    scale: Tensor { shape: vec![n], data: scale },
                    shift: Tensor { shape: vec![n], data: shift },
                    act: Act::None,
                };
                emitted.push((id, Node { name: node.name.clone(), op, inputs: node.inputs.clone() }));
            }
            _ => emitted.push((id, node.clone())),
        }
    }
    rebuild(g, emitted, &alias)
}

/// Moves each ReLU / sigmoid into the epilogue of the convolution or affine node that feeds it,
/// also through a pixel shuffle read by nothing else (a shuffle only moves values, so an
/// element-wise activation after it can run before it): FasterPose's head (convolution, shuffle,
/// sigmoid) then skips a pass over its output. (Its separate sigmoid node took 0.04 ms of the
/// default model's 3.4 on two threads of an AVX-512 Xeon, ONNX Runtime's 0.013; the whole
/// model's change with this pass was below that machine's timing noise.)
pub(crate) fn fuse_activations(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let mut alias: Vec<NodeId> = (0..g.nodes.len()).collect();
    let mut nodes: Vec<Node> = g.nodes.clone();
    for id in 0..g.nodes.len() {
        let Op::Activation(act) = g.nodes[id].op else { continue };
        let p = g.nodes[id].inputs[0];
        let p = alias[p];
        if single_consumer(g, &consumers, g.nodes[id].inputs[0]) != Some(id) {
            continue;
        }
        // The node that takes the activation: `p`, or the one a pixel shuffle `p` reads.
        let into = match &g.nodes[p].op {
            Op::PixelShuffle { .. } if single_consumer(g, &consumers, g.nodes[p].inputs[0]) == Some(p) => {
                alias[g.nodes[p].inputs[0]]
            }
            _ => p,
        };
        let absorbed = match &mut nodes[into].op {
            Op::Conv2d(c) if c.epilogue.residual.is_none() && c.epilogue.act == Act::None => {
                c.epilogue.act = act;
                true
            }
            Op::Conv2d(c) if c.epilogue.residual.is_some() && c.epilogue.post_act == Act::None => {
                c.epilogue.post_act = act;
                true
            }
            Op::ChannelAffine { act: a @ Act::None, .. } => {
                *a = act;
                true
            }
            _ => false,
        };
        if absorbed {
            alias[id] = p;
        }
    }
    let emitted = nodes.into_iter().enumerate().filter(|(id, _)| alias[*id] == *id).collect();
    rebuild(g, emitted, &alias)
}

/// Moves each `Add` / `GatedAdd` into the epilogue of a convolution producing one of its inputs,
/// so the sum is written once instead of read back. The fused convolution takes the add's place
/// in the order, since it now also needs the other operand.
pub(crate) fn fuse_residual_adds(g: &Graph) -> Graph {
    let consumers = g.consumers();
    let mut alias: Vec<NodeId> = (0..g.nodes.len()).collect();
    let mut replaced: Vec<Option<Node>> = vec![None; g.nodes.len()];
    let fusable = |id: NodeId, add: NodeId, alias: &[NodeId]| {
        alias[id] == id
            && single_consumer(g, &consumers, id) == Some(add)
            && matches!(&g.nodes[id].op, Op::Conv2d(c) if c.epilogue.residual.is_none() && c.epilogue.post_act == Act::None)
    };
    for (id, node) in g.nodes.iter().enumerate() {
        let (a, b) = match node.inputs[..] {
            [a, b] if a != b => (a, b),
            _ => continue,
        };
        // Prefer the later producer: its other operand is then surely computed already.
        let choice = match &node.op {
            Op::Add => {
                [(b, a), (a, b)].into_iter().find(|&(c, _)| fusable(c, id, &alias)).map(|(c, r)| (c, r, Residual::Add))
            }
            Op::GatedAdd { alpha } => {
                if fusable(b, id, &alias) {
                    Some((b, a, Residual::GateResidual(alpha.clone())))
                } else if fusable(a, id, &alias) {
                    Some((a, b, Residual::GateConv(alpha.clone())))
                } else {
                    None
                }
            }
            _ => None,
        };
        let Some((conv_id, r, residual)) = choice else { continue };
        let conv = &g.nodes[conv_id];
        let Op::Conv2d(mut c) = conv.op.clone() else { unreachable!() };
        c.epilogue.residual = Some(residual);
        replaced[id] = Some(Node { name: conv.name.clone(), op: Op::Conv2d(c), inputs: vec![conv.inputs[0], r] });
        alias[conv_id] = id;
    }
    let emitted = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(id, _)| alias[*id] == *id)
        .map(|(id, n)| (id, replaced[id].take().unwrap_or_else(|| n.clone())))
        .collect();
    rebuild(g, emitted, &alias)
}
