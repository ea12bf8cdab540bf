//! CPU executor: the reference every GPU kernel is tested against, the engine training will run
//! on, and the fallback when no GPU adapter exists.
//!
//! Two implementations of every operator live here:
//! - [`reference`](mod@reference): plain, single-threaded, obviously-correct loops (f64 accumulation), the
//!   ground truth of the tests;
//! - the fast path ([`run`], [`run_all`], [`eval_op`]): convolutions as matrix products (`gemm`: wgpose's own tiled kernels, im2col packed on the fly)
//!   with the epilogue fused, depthwise convolutions as direct loops, and every other operator
//!   parallelised over `(n, c)` planes.
//!
//! A [`PackedGraph`] (what the `Estimator`, the detector and the benches run) also plans two
//! things the GPU's memory plan does with buffers: a channel affine read only by a padded
//! convolution is applied while that convolution copies its input into the padding, and a
//! concatenation whose readers all take operands in parts (`ops::Planes`) is never written
//! out. Both only skip work: every value computed is the same, bit for bit.
//!
//! A run on the fast path (and a training step) enters rayon's pool once and keeps the other
//! workers polling for work until it ends (`threads`), rather than waking the pool for every
//! operator: LDCRN's ~300 small operators made that hand-off cost more than a second core gave.
//! Its parallel loops go to those workers without rayon's `join` (`parallel`), whose waiting
//! threads yield their CPU to any other program for a whole time slice.
//!
//! The reference and the fast path share the validation in this module, so they accept and
//! refuse exactly the same inputs, and neither panics on bad data: wrong input counts, shapes,
//! non-finite inputs and malformed parameters are all `Err`.

/// `fn $name(args)` that runs `$body` (a function marked `#[inline(always)]`) compiled for the
/// CPU's widest vectors: copies with AVX-512F and with AVX2 enabled, picked by `Kernel::detect`
/// (the AVX-512 and AVX2 kernels), else the crate's baseline. For element-wise loops that the
/// compiler vectorises by itself once the features are enabled.
macro_rules! vectorised {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:path) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                match $crate::cpu::gemm::Kernel::detect() {
                    // SAFETY: the kernel implies the CPU's features (`Kernel::detect`).
                    $crate::cpu::gemm::Kernel::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::cpu::gemm::Kernel::Avx2 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            $body($($arg),*)
        }
    };
}

pub(crate) mod buffer;
pub(crate) mod conv;
pub(crate) mod elementwise;
pub mod gemm;
pub mod indirect;
pub(crate) mod ops;
pub(crate) mod parallel;
pub(crate) mod pool;
pub(crate) mod reduce;
pub mod reference;
pub(crate) mod threads;
pub(crate) mod weight_grad;
pub(crate) mod winograd;
pub(crate) mod winograd_grad;

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op};
use crate::tensor::{checked_numel, Tensor};

#[doc(hidden)]
pub use buffer::{poison_fresh_buffers, release_spare_buffers};
pub use threads::pin_cpu_threads;

/// Runs the graph on the fast path and returns the graph outputs in order.
///
/// `inputs` holds one NCHW tensor per `Op::Input` node, in node order; all must share the same
/// batch size `N >= 1` and have the node's `[c, h, w]`. Intermediate tensors are dropped after
/// their last use.
pub fn run(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    run_timed(graph, None, inputs, None)
}

/// What a [`PackedGraph`] adds to a run: each convolution's packed weights (by node id), the
/// channel affine each convolution applies to its input (see [`input_affines`]), and the
/// concatenations never written out (see [`virtual_concats`]).
struct RunPlan<'a> {
    packed: &'a [Option<indirect::PackedWeights>],
    input_affine: &'a [Option<NodeId>],
    virtual_concat: &'a [bool],
}

/// [`run`], also returning each node's wall time (index = node id; zero for inputs): the CPU
/// side of `wgpose profile`.
pub fn run_profiled(graph: &Graph, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<std::time::Duration>)> {
    let mut times = vec![std::time::Duration::ZERO; graph.nodes.len()];
    let out = run_timed(graph, None, inputs, Some(&mut times))?;
    Ok((out, times))
}

/// A graph prepared for repeated runs on the CPU executor: the weights of every convolution
/// that reads packed panels (`conv::ConvStrategy::Indirect`) are packed once, on the first run,
/// as ONNX Runtime prepacks at session creation, instead of on every call. Running it gives
/// exactly what [`run`] gives on the same graph; the graph cannot change behind the packed
/// copies (it is only lent out immutably).
pub struct PackedGraph {
    graph: Graph,
    packed: std::sync::OnceLock<Vec<Option<indirect::PackedWeights>>>,
    input_affine: Vec<Option<NodeId>>,
    virtual_concat: Vec<bool>,
}

impl PackedGraph {
    /// Takes `graph` (run [`crate::graph::passes::optimize_for_inference`] first: it folds batch
    /// norms into the weights). Nothing is packed until the first run, so a graph that only ever
    /// runs on the GPU costs no second copy of its weights.
    pub fn new(graph: Graph) -> PackedGraph {
        let input_affine = input_affines(&graph);
        let virtual_concat = virtual_concats(&graph);
        PackedGraph { graph, packed: std::sync::OnceLock::new(), input_affine, virtual_concat }
    }

    /// How many channel affines the runs skip because the convolution reading them applies them
    /// to its input (see `input_affines`).
    pub fn fused_input_affines(&self) -> usize {
        self.input_affine.iter().flatten().count()
    }

    /// How many concatenations the runs never write out (see `virtual_concats`).
    pub fn virtual_concats(&self) -> usize {
        self.virtual_concat.iter().filter(|&&v| v).count()
    }

    fn plan(&self) -> RunPlan<'_> {
        RunPlan { packed: self.packed(), input_affine: &self.input_affine, virtual_concat: &self.virtual_concat }
    }

    /// The graph as given.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The packed weights, packed on the first run for the map sizes the graph's inputs fix
    /// (which decide whether a convolution takes the Winograd path).
    fn packed(&self) -> &[Option<indirect::PackedWeights>] {
        self.packed.get_or_init(|| {
            // Shapes unknown (a malformed graph the run will refuse): packed for any size.
            let shapes = self.graph.shapes(1).ok();
            self.graph
                .nodes
                .iter()
                .enumerate()
                .map(|(id, n)| match &n.op {
                    Op::Conv2d(c) if conv::uses_packed_weights(c) => {
                        let out_hw = shapes.as_ref().map(|s| [s[id][2], s[id][3]]);
                        Some(conv::pack_weights(c, out_hw))
                    }
                    _ => None,
                })
                .collect()
        })
    }

    /// [`run`] on the graph, with the packed weights.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        run_timed(&self.graph, Some(self.plan()), inputs, None)
    }

    /// [`run_profiled`] on the graph, with the packed weights.
    pub fn run_profiled(&self, inputs: &[Tensor]) -> Result<(Vec<Tensor>, Vec<std::time::Duration>)> {
        let mut times = vec![std::time::Duration::ZERO; self.graph.nodes.len()];
        let out = run_timed(&self.graph, Some(self.plan()), inputs, Some(&mut times))?;
        Ok((out, times))
    }
}

/// The channel affines the runs skip because the convolution reading them applies them while
/// copying its input (into a padding, or gathered pixel-major) ([`conv::copies_input`]); see
/// [`crate::graph::passes::input_affines`]. In the soft-gated hourglass every pre-activation
/// batch norm + ReLU is one (51 nodes).
fn input_affines(graph: &Graph) -> Vec<Option<NodeId>> {
    crate::graph::passes::input_affines(graph, |c, _| conv::copies_input(c))
}

/// The concatenations whose readers all take their operand as parts ([`ops::Planes`]): channel
/// affines, gated adds, and convolutions that copy their input anyway, into a padding or
/// gathered pixel-major ([`conv::copies_input`], directly or through an input affine they
/// apply). Not graph outputs. The run skips them and hands their readers the parts. In the
/// hourglass, each block's concatenation of its three convolutions feeds only the gated
/// residual add, and each level's merge of the skip and upsampled branches only its 1x1
/// convolution; in LDCRN's dense blocks, a 3x3 convolution and a batch norm + ReLU read each one.
fn virtual_concats(graph: &Graph) -> Vec<bool> {
    let mut ok: Vec<bool> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(id, n)| matches!(n.op, Op::Concat) && !graph.outputs.contains(&id))
        .collect();
    for node in &graph.nodes {
        for (k, &i) in node.inputs.iter().enumerate() {
            if !ok[i] {
                continue;
            }
            let takes_parts = match &node.op {
                // (An affine a convolution absorbed is read through that convolution's padded
                // copy, which takes parts as well.)
                Op::ChannelAffine { .. } | Op::BatchNorm(_) | Op::GatedAdd { .. } => true,
                Op::Conv2d(c) => k == 0 && conv::copies_input(c),
                _ => false,
            };
            ok[i] = takes_parts;
        }
    }
    ok
}

fn run_timed(
    graph: &Graph,
    run_plan: Option<RunPlan<'_>>,
    inputs: &[Tensor],
    times: Option<&mut Vec<std::time::Duration>>,
) -> Result<Vec<Tensor>> {
    // One inference on a pool worker, the other workers kept looking for work (`threads`).
    threads::run_with_busy_pool(|| run_on_this_thread(graph, run_plan, inputs, times))
}

fn run_on_this_thread(
    graph: &Graph,
    run_plan: Option<RunPlan<'_>>,
    inputs: &[Tensor],
    mut times: Option<&mut Vec<std::time::Duration>>,
) -> Result<Vec<Tensor>> {
    let plan = prepare(graph, inputs)?;
    let fused: &[Option<NodeId>] = run_plan.as_ref().map_or(&[], |p| p.input_affine);
    let fused_into = |id: usize| fused.get(id).copied().flatten();
    // The inputs each node reads in this run: a convolution that applies its input's affine
    // reads the affine's input, and the absorbed affine reads (and computes) nothing.
    let mut reads: Vec<Vec<NodeId>> = graph.nodes.iter().map(|n| n.inputs.clone()).collect();
    let mut absorbed = vec![false; graph.nodes.len()];
    for id in 0..graph.nodes.len() {
        if let Some(a) = fused_into(id) {
            reads[id][0] = graph.nodes[a].inputs[0];
            reads[a].clear();
            absorbed[a] = true;
        }
    }
    // A virtual concatenation's readers read its parts instead: `parts[id][k]` is how many
    // entries of `reads[id]` make up operand k.
    let is_virtual = |id: usize| run_plan.as_ref().is_some_and(|p| p.virtual_concat[id]);
    let mut parts: Vec<Vec<usize>> = reads.iter().map(|r| vec![1; r.len()]).collect();
    for id in 0..graph.nodes.len() {
        if reads[id].iter().any(|&i| is_virtual(i)) {
            let (mut flat, mut counts) = (Vec::new(), Vec::new());
            for &i in &reads[id] {
                let operand = if is_virtual(i) { &graph.nodes[i].inputs[..] } else { std::slice::from_ref(&i) };
                flat.extend_from_slice(operand);
                counts.push(operand.len());
            }
            (reads[id], parts[id]) = (flat, counts);
        }
    }
    for id in 0..graph.nodes.len() {
        if is_virtual(id) {
            reads[id].clear();
            absorbed[id] = true;
        }
    }
    // The nodes in the order they run: one at a time in graph order, or, on more than one
    // thread, in groups of mutually independent nodes run side by side (`side_by_side`).
    let groups: Vec<Vec<NodeId>> = if times.is_none() && side_by_side() {
        let work: Vec<usize> = graph.nodes.iter().zip(&plan.shapes).map(|(n, s)| node_work(&n.op, *s)).collect();
        independent_groups(&reads, &absorbed, &work)
    } else {
        (0..graph.nodes.len()).filter(|&id| !absorbed[id]).map(|id| vec![id]).collect()
    };
    let last_use = last_uses(graph, &reads, &groups);
    let mut values: Vec<Option<Cow<'_, Tensor>>> = vec![None; graph.nodes.len()];
    let eval_node = |id: NodeId, values: &[Option<Cow<'_, Tensor>>]| -> Tensor {
        let node = &graph.nodes[id];
        let args: Vec<&Tensor> = reads[id].iter().map(|&i| available(values, i)).collect();
        let pack = run_plan.as_ref().and_then(|p| p.packed[id].as_ref());
        let input = fused_into(id).map(|a| match &graph.nodes[a].op {
            Op::ChannelAffine { scale, shift, act } => {
                conv::InputAffine { scale: &scale.data, shift: &shift.data, act: *act }
            }
            _ => unreachable!("input_affines only fuses channel affines"),
        });
        eval_packed(&node.op, &args, &parts[id], plan.shapes[id], pack, input)
    };
    for (g, group) in groups.iter().enumerate() {
        if let [id] = group[..] {
            let v = if let Op::Input { .. } = graph.nodes[id].op {
                Cow::Borrowed(&inputs[plan.input_index[id]])
            } else {
                let start = times.is_some().then(std::time::Instant::now);
                let v = eval_node(id, &values);
                if let (Some(t), Some(s)) = (times.as_deref_mut(), start) {
                    t[id] = s.elapsed();
                }
                Cow::Owned(v)
            };
            values[id] = Some(v);
        } else {
            // Inputs are never grouped (`independent_groups`).
            // One task per node; each node's own loops run on its task's thread.
            let mut computed: Vec<Option<Tensor>> = group.iter().map(|_| None).collect();
            {
                let values = &values;
                parallel::for_each_chunk_mut(&mut computed, 1, 1, |k, slot| {
                    slot[0] = Some(eval_node(group[k], values))
                });
            }
            for (&id, v) in group.iter().zip(computed) {
                values[id] = v.map(Cow::Owned);
            }
        }
        // Values past their last reader go back to the spare buffers (`buffer::recycle`).
        for &id in group {
            for &i in &reads[id] {
                if last_use[i] == g {
                    recycle_value(values[i].take());
                }
            }
        }
        for &id in group {
            if last_use[id] == g {
                // Nobody reads it and it is not an output.
                recycle_value(values[id].take());
            }
        }
    }
    // Move each output out (clone only an output listed again later, or a graph input).
    let mut outputs = Vec::with_capacity(graph.outputs.len());
    for (k, &o) in graph.outputs.iter().enumerate() {
        let t = if graph.outputs[k + 1..].contains(&o) {
            available(&values, o).clone()
        } else {
            values[o].take().expect("outputs are kept").into_owned()
        };
        outputs.push(t);
    }
    Ok(outputs)
}

/// A finished value's buffer kept for a later operator's output (only values this run computed:
/// borrowed ones are the caller's inputs).
fn recycle_value(v: Option<Cow<'_, Tensor>>) {
    if let Some(Cow::Owned(t)) = v {
        buffer::recycle(t.data);
    }
}

/// Same as [`run`] but returns every node's output (index = node id); used by tests and
/// training.
pub fn run_all(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    run_all_with(graph, inputs, eval_unchecked)
}

/// [`eval_op`] as training evaluates it (`crate::autodiff`'s forward pass): convolutions on the
/// Winograd tiles of `conv::TileChoice::Small`.
pub(crate) fn eval_op_for_training(name: &str, op: &Op, inputs: &[&Tensor]) -> Result<Tensor> {
    eval_op_with(name, op, inputs, |op, x, out| match op {
        Op::Conv2d(c) => conv::conv2d_for_training(&ops::Planes::new(&x[..1]), x.get(1).copied(), c, out),
        _ => eval_unchecked(op, x, out),
    })
}

/// Evaluates one operator on explicit input tensors with the fast kernels and returns the
/// node's output. `name` only labels errors. Shapes and parameters are checked like in [`run`];
/// values are not (non-finite values propagate).
pub fn eval_op(name: &str, op: &Op, inputs: &[&Tensor]) -> Result<Tensor> {
    eval_op_with(name, op, inputs, eval_unchecked)
}

/// Evaluator of a validated, non-input operator with a known output shape: the fast path's or
/// the reference's.
type Eval = fn(&Op, &[&Tensor], [usize; 4]) -> Tensor;

/// Every node's output with `eval`, keeping them all (shared by both implementations).
fn run_all_with(graph: &Graph, inputs: &[Tensor], eval: Eval) -> Result<Vec<Tensor>> {
    let plan = prepare(graph, inputs)?;
    let mut values: Vec<Tensor> = Vec::with_capacity(graph.nodes.len());
    for (id, node) in graph.nodes.iter().enumerate() {
        let v = if let Op::Input { .. } = node.op {
            inputs[plan.input_index[id]].clone()
        } else {
            let args: Vec<&Tensor> = node.inputs.iter().map(|&i| &values[i]).collect();
            eval(&node.op, &args, plan.shapes[id])
        };
        values.push(v);
    }
    Ok(values)
}

fn eval_op_with(name: &str, op: &Op, inputs: &[&Tensor], eval: Eval) -> Result<Tensor> {
    let shape = check_op(name, op, inputs)?;
    if let Op::Input { .. } = op {
        return Ok(inputs[0].clone());
    }
    Ok(eval(op, inputs, shape))
}

/// Fast evaluation of a non-input operator whose inputs and parameters have been validated and
/// whose output shape is `out`.
fn eval_unchecked(op: &Op, x: &[&Tensor], out: [usize; 4]) -> Tensor {
    eval_packed(op, x, &vec![1; x.len()], out, None, None)
}

/// [`eval_unchecked`] with a convolution's prepacked weights when the caller keeps them, the
/// affine it applies to its input when the run fused one into it, and operands in parts:
/// operand k is the concatenation of the next `parts[k]` tensors of `args` (only where
/// [`virtual_concats`] allows it; one each elsewhere).
fn eval_packed(
    op: &Op,
    args: &[&Tensor],
    parts: &[usize],
    out: [usize; 4],
    packed: Option<&indirect::PackedWeights>,
    input: Option<conv::InputAffine>,
) -> Tensor {
    let mut operands = Vec::with_capacity(parts.len());
    let mut rest = args;
    for &n in parts {
        let (operand, tail) = rest.split_at(n);
        operands.push(operand);
        rest = tail;
    }
    let x: Vec<&Tensor> = operands.iter().map(|o| o[0]).collect();
    let planes = |k: usize| ops::Planes::new(operands[k]);
    if !matches!(op, Op::Conv2d(_) | Op::BatchNorm(_) | Op::ChannelAffine { .. } | Op::GatedAdd { .. }) {
        assert!(parts.iter().all(|&n| n == 1), "eval: {} takes no operand in parts", op.kind());
    }
    match op {
        Op::Input { .. } => unreachable!("input nodes are not evaluated"),
        Op::Conv2d(c) => {
            assert!(parts.get(1).is_none_or(|&n| n == 1), "eval: a residual in parts");
            conv::conv2d(&planes(0), x.get(1).copied(), c, out, packed, input)
        }
        Op::BatchNorm(bn) => {
            let (scale, shift) = bn.scale_shift();
            ops::channel_affine(&planes(0), &scale, &shift, crate::graph::Act::None)
        }
        Op::ChannelAffine { scale, shift, act } => ops::channel_affine(&planes(0), &scale.data, &shift.data, *act),
        Op::Activation(act) => ops::activation(x[0], *act),
        Op::MaxPool { kernel, stride, padding } => pool::max_pool(x[0], *kernel, *stride, *padding, out),
        Op::UpsampleNearest { factor } => ops::upsample_nearest(x[0], *factor),
        Op::UpsampleBilinear { factor } => ops::upsample_bilinear(x[0], *factor),
        Op::Concat => ops::concat(&x, out),
        Op::Add => ops::add(x[0], x[1]),
        Op::GatedAdd { alpha } => ops::gated_add(&planes(0), &planes(1), &alpha.data),
        Op::PixelShuffle { factor } => ops::pixel_shuffle(x[0], *factor),
    }
}

fn available<'a>(values: &'a [Option<Cow<'_, Tensor>>], id: NodeId) -> &'a Tensor {
    values[id].as_deref().expect("a node's inputs are computed before it and kept until their last use")
}

/// For every node, the index in `groups` of the last group that reads it; graph outputs get
/// `usize::MAX`, nodes nobody reads their own group's index.
fn last_uses(graph: &Graph, reads: &[Vec<NodeId>], groups: &[Vec<NodeId>]) -> Vec<usize> {
    let mut last = vec![0; graph.nodes.len()];
    for (g, group) in groups.iter().enumerate() {
        for &id in group {
            last[id] = last[id].max(g);
            for &i in &reads[id] {
                last[i] = last[i].max(g);
            }
        }
    }
    for &o in &graph.outputs {
        last[o] = usize::MAX;
    }
    last
}

/// Whether independent nodes run side by side (on more than one thread, unless
/// `WGPOSE_CPU_SIDE_BY_SIDE=0`): 236 of LDCRN's 311 nodes take under 50 us, too little to split
/// between two threads (together they took as long on two threads as on one), but its
/// resolution branches do not depend on each other. Two threads of a Zen 3, timed alternately in
/// one process: LDCRN 0.84-0.86 of its time at 128 x 128 and 0.93 at 160 x 160; the default
/// model and the hourglass 0.99-1.01 (session 36).
fn side_by_side() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    rayon::current_num_threads() > 1
        && *ON.get_or_init(|| !matches!(std::env::var("WGPOSE_CPU_SIDE_BY_SIDE").as_deref(), Ok("0" | "off")))
}

/// Nodes doing at most this much work (multiply-adds, or output values for other operators)
/// run side by side with their independent peers; larger ones run alone, their own work split
/// between the threads. With every independent group side by side, ResNet's downsampling 1x1
/// convolution ran beside the block's first 3x3 and the default model took 1-4% longer on two
/// threads of a Zen 3 (session 36), while LDCRN's nodes, most under 2M multiply-adds, gained.
const SIDE_BY_SIDE_WORK: usize = 1 << 22;

/// The work of one node producing `out`: multiply-adds for a convolution, output values for the
/// rest.
fn node_work(op: &Op, out: [usize; 4]) -> usize {
    let values = out.iter().product::<usize>();
    match op {
        Op::Conv2d(c) => values * c.cin_per_group() * c.kernel().iter().product::<usize>(),
        _ => values,
    }
}

/// The computed nodes (not `absorbed`) in the order they run, in groups of nodes that can run
/// side by side. By depth first (the longest chain of `reads` from an input, so a node's inputs
/// are all in earlier groups): within a depth, each node doing more than [`SIDE_BY_SIDE_WORK`]
/// (`work[id]`) is a group of its own, the rest one group together. Graph inputs come first,
/// one per group (they are not computed).
fn independent_groups(reads: &[Vec<NodeId>], absorbed: &[bool], work: &[usize]) -> Vec<Vec<NodeId>> {
    let mut depth = vec![0usize; reads.len()];
    let mut levels: Vec<Vec<NodeId>> = Vec::new();
    let mut groups = Vec::new();
    for id in 0..reads.len() {
        if absorbed[id] {
            continue;
        }
        if reads[id].is_empty() {
            groups.push(vec![id]);
            continue;
        }
        // Reads are of earlier nodes (the graph is in topological order).
        let d = reads[id].iter().map(|&i| depth[i] + 1).max().unwrap_or(1);
        depth[id] = d;
        if levels.len() < d {
            levels.resize(d, Vec::new());
        }
        levels[d - 1].push(id);
    }
    for level in levels {
        let (large, small): (Vec<NodeId>, Vec<NodeId>) =
            level.into_iter().partition(|&id| work[id] > SIDE_BY_SIDE_WORK);
        groups.extend(large.into_iter().map(|id| vec![id]));
        if !small.is_empty() {
            groups.push(small);
        }
    }
    groups
}

/// What both executors know after validating a run.
pub(crate) struct Prepared {
    /// Output shape of every node.
    pub shapes: Vec<[usize; 4]>,
    /// For an input node, its position in the `inputs` slice (unused for other nodes).
    pub input_index: Vec<usize>,
}

/// Validates graph, parameters and inputs of a run and infers every shape.
pub(crate) fn prepare(graph: &Graph, inputs: &[Tensor]) -> Result<Prepared> {
    graph.validate()?;
    let input_ids = graph.inputs();
    if inputs.len() != input_ids.len() {
        return Err(Error::Input(format!(
            "the graph has {} input(s) ({}), got {} tensor(s)",
            input_ids.len(),
            input_ids.iter().map(|&i| format!("`{}`", graph.nodes[i].name)).collect::<Vec<_>>().join(", "),
            inputs.len()
        )));
    }
    let mut batch = None;
    let mut input_index = vec![0; graph.nodes.len()];
    for (k, (&id, t)) in input_ids.iter().zip(inputs).enumerate() {
        let node = &graph.nodes[id];
        let Op::Input { chw } = node.op else { unreachable!() };
        check_tensor_len(&format!("input `{}`", node.name), t)?;
        let n = match t.shape[..] {
            [n, c, h, w] if [c, h, w] == chw && n >= 1 => n,
            _ => {
                return Err(Error::Input(format!(
                    "input `{}` has shape {:?}, expected [N, {}, {}, {}] with N >= 1",
                    node.name, t.shape, chw[0], chw[1], chw[2]
                )))
            }
        };
        if let Some(b) = batch {
            if b != n {
                return Err(Error::Input(format!(
                    "input `{}` has batch size {n}, but earlier inputs have {b}",
                    node.name
                )));
            }
        }
        batch = Some(n);
        if let Some(i) = t.first_non_finite() {
            return Err(Error::Input(format!(
                "input `{}` has a non-finite value ({}) at element {i}",
                node.name, t.data[i]
            )));
        }
        input_index[id] = k;
    }
    for node in &graph.nodes {
        check_params(&node.name, &node.op)?;
    }
    let shapes = graph.shapes(batch.unwrap_or(1))?;
    Ok(Prepared { shapes, input_index })
}

/// Checks one operator applied to explicit tensors and returns its output shape.
pub(crate) fn check_op(name: &str, op: &Op, inputs: &[&Tensor]) -> Result<[usize; 4]> {
    check_params(name, op)?;
    let mut shapes = Vec::with_capacity(inputs.len());
    for (k, t) in inputs.iter().enumerate() {
        check_tensor_len(&format!("input {k} of `{name}`"), t)?;
        let s = t
            .nchw()
            .map_err(|_| Error::Input(format!("input {k} of `{name}` must be 4-D NCHW, got shape {:?}", t.shape)))?;
        shapes.push(s);
    }
    if let Some(s) = shapes.iter().find(|s| s[0] != shapes[0][0]) {
        return Err(Error::shape(name, format!("inputs have different batch sizes ({} and {})", shapes[0][0], s[0])));
    }
    if let Op::Input { chw } = op {
        return match shapes[..] {
            [[n, c, h, w]] if [c, h, w] == *chw && n >= 1 => Ok([n, c, h, w]),
            _ => Err(Error::shape(
                name,
                format!("an input of [N, {chw:?}] needs exactly one such tensor, got {shapes:?}"),
            )),
        };
    }
    // Reuse the graph's shape inference on a one-operator graph.
    let mut g = Graph::new();
    for (k, s) in shapes.iter().enumerate() {
        g.push(format!("{name}.in{k}"), Op::Input { chw: [s[1], s[2], s[3]] }, vec![])?;
    }
    let id = g.push(name, op.clone(), (0..shapes.len()).collect())?;
    g.outputs = vec![id];
    let batch = shapes.first().map_or(1, |s| s[0]);
    Ok(g.shapes(batch)?[id])
}

fn check_tensor_len(what: &str, t: &Tensor) -> Result<()> {
    let n = checked_numel(&t.shape)?;
    if n != t.data.len() {
        return Err(Error::Input(format!(
            "{what} has shape {:?} ({n} values) but holds {} values",
            t.shape,
            t.data.len()
        )));
    }
    Ok(())
}

/// Every parameter tensor holds as many values as its shape says (the fields are public, so this
/// is not guaranteed by construction); shapes proper are checked by shape inference.
pub(crate) fn check_params(name: &str, op: &Op) -> Result<()> {
    for (kind, t) in op.params() {
        let n = checked_numel(&t.shape)?;
        if n != t.data.len() {
            return Err(Error::shape(
                name,
                format!("{} has shape {:?} but holds {} values", kind.name(), t.shape, t.data.len()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{independent_groups, SIDE_BY_SIDE_WORK};

    #[test]
    fn independent_groups_respect_reads_and_keep_large_nodes_alone() {
        // 0: input; 1, 2 and 5 read 0; 3 reads 1 and 2; 4 reads 3; 6 is absorbed (reads nothing).
        let reads = vec![vec![], vec![0], vec![0], vec![1, 2], vec![3], vec![0], vec![]];
        let absorbed = [false, false, false, false, false, false, true];
        let (small, large) = (1, SIDE_BY_SIDE_WORK + 1);
        let work = [0, large, small, small, small, small, small];
        let groups = independent_groups(&reads, &absorbed, &work);
        assert_eq!(groups, vec![vec![0], vec![1], vec![2, 5], vec![3], vec![4]]);
        // Every node once, after everything it reads.
        let mut at = [usize::MAX; 7];
        for (g, group) in groups.iter().enumerate() {
            for &id in group {
                assert_eq!(at[id], usize::MAX, "node {id} twice");
                at[id] = g;
            }
        }
        for (id, r) in reads.iter().enumerate().filter(|(id, _)| !absorbed[*id]) {
            assert!(r.iter().all(|&i| at[i] < at[id]), "node {id} runs before one of its inputs");
        }
        // All small: one group per depth.
        let groups = independent_groups(&reads, &absorbed, &[small; 7]);
        assert_eq!(groups, vec![vec![0], vec![1, 2, 5], vec![3], vec![4]]);
    }
}
