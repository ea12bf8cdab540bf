//! Memory planning: where each activation lives in one arena of f32.
//!
//! Two ideas, both decided here so that neither the models nor the executors deal with them:
//! - concat without copies: a concat's inputs are written by their producers straight into
//!   channel slices of the concat's buffer ("groups" of nodes that share one allocation);
//! - reuse by liveness: groups whose lifetimes do not overlap share memory (greedy by size,
//!   largest first, lowest fitting offset), and the arena size is the peak activation memory.

use super::{Graph, NodeId, Op};
use crate::error::{Error, Result};

/// Where a tensor lives: element `(n, c, h, w)` of a node's `[N, C, H, W]` output is at
/// `offset + n * batch_stride + (c * H + h) * W + w` in the arena. A slice of a concat has the
/// concat's batch stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Element offset of sample 0 in the arena (f32 elements).
    pub offset: usize,
    /// Elements from one sample to the next.
    pub batch_stride: usize,
}

#[derive(Clone, Debug)]
/// Where every node's output lives in one f32 arena for a given batch size; outputs whose
/// lifetimes do not overlap share memory, and concatenation inputs are written in place.
pub struct MemoryPlan {
    /// Each node's output shape `[n, c, h, w]`.
    pub shapes: Vec<[usize; 4]>,
    /// Each node's place in the arena.
    pub views: Vec<View>,
    /// For every node, the node whose allocation it lives in and its channel offset there.
    pub root: Vec<(NodeId, usize)>,
    /// Lifetime of each allocation root as (first node that writes it, last node that reads it),
    /// inclusive; graph inputs start at 0 and graph outputs end at `nodes.len()`.
    pub lifetime: Vec<(usize, usize)>,
    /// Arena size in elements: the peak activation memory.
    pub arena_len: usize,
    /// What the activations would take without reuse or aliasing, in elements.
    pub unplanned_len: usize,
}

/// Offsets are aligned to 64 elements (256 bytes), the strictest storage alignment WebGPU asks.
const ALIGN: usize = 64;

impl MemoryPlan {
    /// True when concat node `id` has nothing to copy for input position `k`: the input already
    /// lies where the concat's channels `c_off..` are (its producer wrote it there).
    pub fn concat_input_in_place(&self, g: &Graph, id: NodeId, k: usize) -> bool {
        let inputs = &g.nodes[id].inputs;
        let input = inputs[k];
        let first = inputs.iter().position(|&i| i == input) == Some(k);
        let c_off: usize = inputs[..k].iter().map(|&i| self.shapes[i][1]).sum();
        let (root, at) = self.root[id];
        first && self.root[input] == (root, at + c_off)
    }

    /// Size of the arena in bytes.
    pub fn peak_bytes(&self) -> usize {
        self.arena_len * 4
    }
}

/// Where a concatenation of `inputs` already lies in one piece: when every input is placed in the
/// same concatenation, in order and back to back (channel offsets `off, off + c0, ...`), that
/// concatenation and `off`.
fn contiguous_slot(
    inputs: &[NodeId],
    parent: &[Option<(NodeId, usize)>],
    shapes: &[[usize; 4]],
) -> Option<(NodeId, usize)> {
    let (p, start) = parent[*inputs.first()?]?;
    let mut off = start;
    for &i in inputs {
        if parent[i] != Some((p, off)) {
            return None;
        }
        off += shapes[i][1];
    }
    Some((p, start))
}

/// Plans the arena of `g` at batch size `batch`; errors when the graph is invalid or its
/// shapes do not fit.
pub fn plan(g: &Graph, batch: usize) -> Result<MemoryPlan> {
    let reads: Vec<Vec<NodeId>> = g.nodes.iter().map(|n| n.inputs.clone()).collect();
    plan_with_reads(g, batch, &reads)
}

/// [`plan`] for an executor that does not read every node's inputs as the graph says:
/// `reads[id]` is what node `id` actually reads (a convolution that applies its input's affine
/// itself reads the affine's input, and the skipped affine reads nothing; see
/// [`super::passes::input_affines`]). Lifetimes follow `reads`; concatenations must read their
/// inputs as the graph says (their slices are planned from the graph).
pub fn plan_with_reads(g: &Graph, batch: usize, reads: &[Vec<NodeId>]) -> Result<MemoryPlan> {
    if reads.len() != g.nodes.len() || reads.iter().flatten().any(|&i| i >= g.nodes.len()) {
        return Err(Error::Graph("the read lists do not match the graph".into()));
    }
    let shapes = g.shapes(batch)?;
    let n = g.nodes.len();
    // parent[i] = (concat node, channel offset) when i is written into a concat's slice.
    // Concatenations with more inputs claim them first (then later ones): a dense block's
    // concatenations (the block input and ever more layer outputs, LDCRN) are channel prefixes
    // of its last, longest one, so that one holds every input and each earlier one becomes a
    // view of its prefix instead of a copy.
    let mut parent: Vec<Option<(NodeId, usize)>> = vec![None; n];
    let mut concats: Vec<NodeId> = (0..n).filter(|&id| matches!(g.nodes[id].op, Op::Concat)).collect();
    concats.sort_by_key(|&id| std::cmp::Reverse((g.nodes[id].inputs.len(), id)));
    for id in concats {
        let node = &g.nodes[id];
        if parent[id].is_none() && !g.outputs.contains(&id) {
            if let Some(slot) = contiguous_slot(&node.inputs, &parent, &shapes) {
                parent[id] = Some(slot);
                continue;
            }
        }
        let mut off = 0;
        for (k, &i) in node.inputs.iter().enumerate() {
            let repeated = node.inputs[..k].contains(&i);
            let ok = !repeated
                && parent[i].is_none()
                && !matches!(g.nodes[i].op, Op::Input { .. })
                && !g.outputs.contains(&i);
            if ok {
                parent[i] = Some((id, off));
            }
            off += shapes[i][1];
        }
    }
    let root: Vec<(NodeId, usize)> = (0..n)
        .map(|mut i| {
            let mut off = 0;
            while let Some((p, o)) = parent[i] {
                off += o;
                i = p;
            }
            (i, off)
        })
        .collect();

    // Lifetimes per root.
    let mut lifetime: Vec<(usize, usize)> = (0..n).map(|i| (i, i)).collect();
    for (id, node) in g.nodes.iter().enumerate() {
        let r = root[id].0;
        let start = if matches!(node.op, Op::Input { .. }) { 0 } else { id };
        lifetime[r].0 = lifetime[r].0.min(start);
        lifetime[r].1 = lifetime[r].1.max(id);
        for &i in &reads[id] {
            let ri = root[i].0;
            lifetime[ri].1 = lifetime[ri].1.max(id);
        }
    }
    for &o in &g.outputs {
        lifetime[root[o].0].1 = n;
    }

    let numel = |s: [usize; 4]| s[0] * s[1] * s[2] * s[3];
    let mut roots: Vec<NodeId> = (0..n).filter(|&i| root[i].0 == i).collect();
    roots.sort_by_key(|&r| std::cmp::Reverse(numel(shapes[r])));
    let mut placed: Vec<(NodeId, usize, usize)> = Vec::new(); // (root, offset, len)
    let mut offset_of = vec![0usize; n];
    let mut arena_len = 0usize;
    for &r in &roots {
        let len = numel(shapes[r]);
        let (s, e) = lifetime[r];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&(o, _, _)| lifetime[o].0 <= e && s <= lifetime[o].1)
            .map(|&(_, off, l)| (off, off + l))
            .collect();
        busy.sort();
        let mut candidate = 0usize;
        for (b0, b1) in busy {
            if candidate + len <= b0 {
                break;
            }
            candidate = candidate.max(b1.div_ceil(ALIGN) * ALIGN);
        }
        offset_of[r] = candidate;
        placed.push((r, candidate, len));
        arena_len = arena_len.max(candidate + len);
    }
    if arena_len > u32::MAX as usize / 2 {
        return Err(Error::TooLarge(format!(
            "activations need {} MiB, more than the kernels can address",
            (arena_len * 4) >> 20
        )));
    }
    let views = (0..n)
        .map(|i| {
            let (r, c_off) = root[i];
            let [_, rc, h, w] = shapes[r];
            View { offset: offset_of[r] + c_off * h * w, batch_stride: rc * h * w }
        })
        .collect();
    let unplanned_len = shapes.iter().map(|&s| numel(s)).sum();
    Ok(MemoryPlan { shapes, views, root, lifetime, arena_len, unplanned_len })
}
