//! Grids beyond the device's workgroups-per-dimension limit (issue 15, item 8): the executor
//! folds flat kernels into 3-D grids and splits convolutions over several dispatches. The limit
//! is lowered (`GpuModel::compile_with_grid_limit`) so small, awkward shapes cross it on every
//! axis; results are compared with the plain-Rust reference at the per-kernel tolerance,
//! `1e-4 * (1 + max |ref|)` (2e-4 for whole graphs, whose fusion reorders a few operations).
//! One convolution whose real grid exceeds 65535 workgroups along x also runs.

mod common;

use common::{assert_close, gpu, random_graph, random_inputs, random_tensor};
use wgpose::gpu::GpuModel;
use wgpose::graph::{Act, Conv2d, Epilogue, Graph, Op};
use wgpose::rng::Rng;
use wgpose::Tensor;

fn conv(rng: &mut Rng, cin: usize, cout: usize, k: usize, stride: usize, groups: usize) -> Op {
    Op::Conv2d(Conv2d {
        weight: random_tensor(rng, &[cout, cin / groups, k, k]),
        bias: Some(Tensor::new(vec![cout], rng.vec(cout, -0.5, 0.5)).unwrap()),
        stride: [stride, stride],
        padding: [k / 2, k / 2],
        dilation: [1, 1],
        groups,
        epilogue: Epilogue { act: Act::Relu, ..Epilogue::default() },
    })
}

/// Input, then every convolution path (3x3, 1x1, tiled 5x5/2, depthwise direct with more output
/// channels than the limit), max pool, nearest upsample and an add: every kernel family.
fn every_kernel_graph(seed: u64) -> Graph {
    let mut rng = Rng::new(seed);
    let mut g = Graph::new();
    let x = g.push("in", Op::Input { chw: [5, 19, 23] }, vec![]).unwrap();
    let a = g.push("c3", conv(&mut rng, 5, 40, 3, 1, 1), vec![x]).unwrap();
    let b = g.push("c1", conv(&mut rng, 40, 36, 1, 1, 1), vec![a]).unwrap();
    let c = g.push("c5s2", conv(&mut rng, 36, 20, 5, 2, 1), vec![b]).unwrap();
    let d = g.push("dw", conv(&mut rng, 20, 20, 3, 1, 20), vec![c]).unwrap();
    let p = g.push("pool", Op::MaxPool { kernel: [3, 3], stride: [2, 2], padding: [1, 1] }, vec![d]).unwrap();
    let u = g.push("up", Op::UpsampleNearest { factor: 2 }, vec![p]).unwrap();
    let s = g.push("act", Op::Activation(Act::Sigmoid), vec![u]).unwrap();
    g.outputs = vec![b, s];
    g
}

fn check(ctx: &wgpose::gpu::GpuContext, g: &Graph, batch: usize, limit: u32, tol: f32, what: &str) {
    let inputs = random_inputs(g, batch, 10 + limit as u64);
    let want = wgpose::cpu::reference::run(g, &inputs).unwrap();
    let mut m =
        GpuModel::compile_with_grid_limit(ctx, g, batch, limit).unwrap_or_else(|e| panic!("{what} limit {limit}: {e}"));
    let got = m.run(&inputs).unwrap();
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("{what} batch {batch} limit {limit} output {k}"), a, b, tol);
    }
}

#[test]
fn grids_split_below_the_limit_match_the_reference() {
    let Some(ctx) = gpu() else { return };
    // Flat kernels fold into limit^3 workgroups of 256 (the biggest tensor here needs 6^3).
    let g = every_kernel_graph(1);
    for (batch, limit) in [(3, 6), (2, 7), (1, 9), (1, 64)] {
        let split = GpuModel::compile_with_grid_limit(&ctx, &g, batch, limit).unwrap().dispatch_count();
        let whole = GpuModel::compile_with(&ctx, &g, batch).unwrap().dispatch_count();
        if limit < 20 {
            assert!(split > whole, "limit {limit}: nothing was split ({split} dispatches)");
        }
        check(&ctx, &g, batch, limit, 1e-4, "every kernel");
    }
}

#[test]
fn convolutions_split_on_all_three_axes_match_the_reference() {
    let Some(ctx) = gpu() else { return };
    // Only convolutions (no flat kernel), so limits of 1 and 2 split pixel tiles (x), channel
    // blocks / depthwise channels (y) and the batch (z).
    let mut rng = Rng::new(2);
    let mut g = Graph::new();
    let x = g.push("in", Op::Input { chw: [2, 7, 9] }, vec![]).unwrap();
    let a = g.push("c3", conv(&mut rng, 2, 40, 3, 1, 1), vec![x]).unwrap();
    let b = g.push("dw", conv(&mut rng, 40, 40, 3, 2, 40), vec![a]).unwrap();
    let c = g.push("c1", conv(&mut rng, 40, 17, 1, 1, 1), vec![b]).unwrap();
    g.outputs = vec![a, c];
    for (batch, limit) in [(3, 1), (3, 2), (5, 3)] {
        check(&ctx, &g, batch, limit, 1e-4, "convolutions");
    }
}

#[test]
fn random_graphs_with_a_low_grid_limit_match_the_reference() {
    let Some(ctx) = gpu() else { return };
    for seed in 0..12 {
        let g = random_graph(seed);
        let batch = 1 + (seed as usize % 2);
        let inputs = random_inputs(&g, batch, seed + 500);
        let want = wgpose::cpu::reference::run(&g, &inputs).unwrap();
        let opt = wgpose::graph::passes::optimize_for_inference(&g);
        let limit = 8 + (seed as u32 % 4);
        let mut m = GpuModel::compile_with_grid_limit(&ctx, &opt, batch, limit)
            .unwrap_or_else(|e| panic!("seed {seed} limit {limit}: {e}"));
        let got = m.run(&inputs).unwrap();
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_close(&format!("seed {seed} limit {limit} output {k}"), a, b, 2e-4);
        }
    }
}

/// A 1 -> 8 channel 3x3 convolution on 1500x1500 pixels: 1500 * 375 / 8 = 70,313 workgroups
/// of pixel tiles, above the 65,535 a device allows along one axis (the error of issue 15), yet
/// only 9 + 72 MB, within lavapipe's 128 MiB storage binding.
#[test]
fn a_convolution_wider_than_65535_workgroups_runs() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(5);
    let mut g = Graph::new();
    let x = g.push("in", Op::Input { chw: [1, 1500, 1500] }, vec![]).unwrap();
    let y = g.push("c", conv(&mut rng, 1, 8, 3, 1, 1), vec![x]).unwrap();
    g.outputs = vec![y];
    let inputs = random_inputs(&g, 1, 3);
    let mut m = GpuModel::compile_with(&ctx, &g, 1).unwrap();
    assert!(m.dispatch_count() >= 2, "the 70k-workgroup grid should be split");
    let got = m.run(&inputs).unwrap();
    let want = wgpose::cpu::run(&g, &inputs).unwrap();
    assert_close("1500x1500 conv", &got[0], &want[0], 1e-4);
}
