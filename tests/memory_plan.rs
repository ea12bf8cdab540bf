//! The memory planner never lets two live tensors share memory, concat inputs land in their
//! slice, and reuse actually saves memory on deep graphs.

mod common;

use wgpose::graph::memory::plan;
use wgpose::graph::passes::optimize_for_inference;
use wgpose::graph::{Graph, Op};

fn check_plan(g: &Graph, batch: usize) {
    let p = plan(g, batch).unwrap();
    let n = g.nodes.len();
    let numel = |s: [usize; 4]| s[0] * s[1] * s[2] * s[3];
    // Every node's whole footprint (first to last element it touches) must be inside the arena.
    for i in 0..n {
        let [bn, c, h, w] = p.shapes[i];
        let v = p.views[i];
        let end = v.offset + (bn - 1) * v.batch_stride + c * h * w;
        assert!(end <= p.arena_len, "node {i} overruns the arena");
        assert!(v.batch_stride >= c * h * w);
    }
    // Roots with overlapping lifetimes occupy disjoint address ranges.
    let roots: Vec<usize> = (0..n).filter(|&i| p.root[i].0 == i).collect();
    for (ai, &a) in roots.iter().enumerate() {
        for &b in &roots[ai + 1..] {
            let (la, lb) = (p.lifetime[a], p.lifetime[b]);
            if la.0 <= lb.1 && lb.0 <= la.1 {
                let ra = p.views[a].offset..p.views[a].offset + numel(p.shapes[a]);
                let rb = p.views[b].offset..p.views[b].offset + numel(p.shapes[b]);
                assert!(
                    ra.end <= rb.start || rb.end <= ra.start,
                    "live tensors `{}` {la:?} and `{}` {lb:?} overlap: {ra:?} vs {rb:?}",
                    g.nodes[a].name,
                    g.nodes[b].name
                );
            }
        }
    }
    // A node's lifetime lies within its root's.
    for i in 0..n {
        let r = p.root[i].0;
        assert!(p.lifetime[r].0 <= i.max(if matches!(g.nodes[i].op, Op::Input { .. }) { 0 } else { i }));
        for (j, node) in g.nodes.iter().enumerate() {
            if node.inputs.contains(&i) {
                assert!(
                    p.lifetime[r].1 >= j,
                    "`{}` read by `{}` after its memory is freed",
                    g.nodes[i].name,
                    node.name
                );
            }
        }
    }
}

#[test]
fn no_two_live_tensors_share_memory_on_random_graphs() {
    for seed in 0..200 {
        let g = common::random_graph(seed);
        check_plan(&g, 1);
        check_plan(&g, 3);
        check_plan(&optimize_for_inference(&g), 2);
    }
}

#[test]
fn concat_inputs_are_written_in_place() {
    let mut b = wgpose::graph::GraphBuilder::new(1);
    let x = b.input("input", [3, 8, 8]).unwrap();
    let a = b.conv("a", x, wgpose::graph::ConvSpec::new(4, 3)).unwrap();
    let c = b.conv("c", a, wgpose::graph::ConvSpec::new(5, 3)).unwrap();
    let cat = b.concat("cat", &[a, c]).unwrap();
    let y = b.conv("y", cat, wgpose::graph::ConvSpec::new(2, 1)).unwrap();
    let g = b.finish(vec![y]).unwrap();
    let p = plan(&g, 2).unwrap();
    assert_eq!(p.root[a], (cat, 0));
    assert_eq!(p.root[c], (cat, 4));
    assert_eq!(p.views[c].offset, p.views[cat].offset + 4 * 64);
    assert_eq!(p.views[c].batch_stride, 9 * 64);
    assert!(p.concat_input_in_place(&g, cat, 0) && p.concat_input_in_place(&g, cat, 1));
    // The graph input cannot be aliased (the caller uploads it), so it is copied.
    let mut b = wgpose::graph::GraphBuilder::new(1);
    let x = b.input("input", [3, 8, 8]).unwrap();
    let a = b.conv("a", x, wgpose::graph::ConvSpec::new(4, 3)).unwrap();
    let cat = b.concat("cat", &[x, a]).unwrap();
    let g = b.finish(vec![cat]).unwrap();
    let p = plan(&g, 1).unwrap();
    assert!(!p.concat_input_in_place(&g, cat, 0) && p.concat_input_in_place(&g, cat, 1));
}

#[test]
fn reuse_saves_memory_on_a_deep_chain() {
    let mut b = wgpose::graph::GraphBuilder::new(1);
    let mut x = b.input("input", [8, 32, 32]).unwrap();
    for i in 0..20 {
        x = b.conv(&format!("c{i}"), x, wgpose::graph::ConvSpec::new(8, 3)).unwrap();
    }
    let g = b.finish(vec![x]).unwrap();
    let p = plan(&g, 1).unwrap();
    // A chain needs two live buffers (input and output of the current conv).
    assert_eq!(p.arena_len, 2 * 8 * 32 * 32);
    assert_eq!(p.unplanned_len, 21 * 8 * 32 * 32);
}

/// A dense block (LDCRN): each layer reads the concatenation of the block input and every
/// earlier layer, and the block outputs the concatenation of all. Every one of those
/// concatenations is a channel prefix of the last, so nothing is copied: the last one holds
/// every input and the earlier ones are views of its prefixes. A concatenation in another
/// order is not a prefix and copies.
#[test]
fn dense_block_concatenations_are_prefix_views() {
    let mut b = wgpose::graph::GraphBuilder::new(1);
    let x = b.input("input", [3, 8, 8]).unwrap();
    let x = b.conv("stem", x, wgpose::graph::ConvSpec::new(6, 3)).unwrap();
    let mut feats = vec![x];
    let mut cats = Vec::new();
    for i in 0..4 {
        let input = if i == 0 { x } else { b.concat(&format!("cat{i}"), &feats).unwrap() };
        if i > 0 {
            cats.push(input);
        }
        let y = b.conv(&format!("layer{i}"), input, wgpose::graph::ConvSpec::new(2, 3)).unwrap();
        feats.push(y);
    }
    let out = b.concat("out", &feats).unwrap();
    let swapped = b.concat("swapped", &[feats[1], feats[0]]).unwrap();
    let y = b.conv("head", out, wgpose::graph::ConvSpec::new(2, 1)).unwrap();
    let z = b.conv("head2", swapped, wgpose::graph::ConvSpec::new(2, 1)).unwrap();
    let g = b.finish(vec![y, z]).unwrap();
    check_plan(&g, 2);
    let p = plan(&g, 2).unwrap();
    for &c in cats.iter().chain([&out]) {
        assert_eq!(p.root[c].0, p.root[out].0, "`{}`", g.nodes[c].name);
        assert_eq!(p.views[c], wgpose::graph::memory::View { offset: p.views[out].offset, ..p.views[out] });
        for k in 0..g.nodes[c].inputs.len() {
            assert!(p.concat_input_in_place(&g, c, k), "`{}` input {k}", g.nodes[c].name);
        }
    }
    assert!(!p.concat_input_in_place(&g, swapped, 0) && !p.concat_input_in_place(&g, swapped, 1));
}
