//! Whole networks end to end: the optimised graph on the GPU (lavapipe in CI) against the
//! unoptimised graph on the CPU executor, for every family at a small input size.
//!
//! Batch norms get random statistics first, so folding them into convolutions is exercised (a
//! freshly initialised network has identity batch norms, which would hide folding bugs).
//! Tolerance: max |gpu - cpu| <= 1e-3 * (1 + max |cpu|) over every output; deep networks
//! accumulate f32 reordering differences over dozens of layers.

mod common;

use common::{assert_close, gpu, random_inputs};
use wgpose::gpu::GpuModel;
use wgpose::graph::Op;
use wgpose::rng::Rng;

fn randomise_norms(g: &mut wgpose::graph::Graph, seed: u64) {
    let mut rng = Rng::new(seed);
    for node in &mut g.nodes {
        if let Op::BatchNorm(bn) = &mut node.op {
            for v in bn.gamma.data.iter_mut() {
                *v = rng.range(0.6, 1.2);
            }
            for v in bn.beta.data.iter_mut() {
                *v = rng.range(-0.1, 0.1);
            }
            for v in bn.mean.data.iter_mut() {
                *v = rng.range(-0.1, 0.1);
            }
            for v in bn.var.data.iter_mut() {
                *v = rng.range(0.8, 1.5);
            }
        }
    }
}

fn check_model(name: &str, hw: usize, batch: usize) {
    let Some(ctx) = gpu() else { return };
    let cfg = wgpose::models::config(name).unwrap();
    let cfg = cfg.with_input([cfg.input[0], hw, hw]);
    let mut g = cfg.build(3).unwrap();
    randomise_norms(&mut g, 5);
    let inputs = random_inputs(&g, batch, 11);
    let want = wgpose::cpu::run(&g, &inputs).unwrap();
    let mut m = GpuModel::compile(&ctx, &g, batch).unwrap();
    let got = m.run(&inputs).unwrap();
    assert_eq!(got.len(), want.len());
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("{name} output {k}"), a, b, 1e-3);
    }
}

#[test]
fn soft_gated_hourglass_gpu_matches_cpu() {
    check_model("sghg-1x64-lsp", 64, 2);
}

#[test]
fn fasterpose_gpu_matches_cpu() {
    check_model("fasterpose-r18-s16-lsp", 64, 1);
}

#[test]
fn simplebaseline_gpu_matches_cpu() {
    check_model("simplebaseline-r18-lsp", 64, 1);
}

#[test]
fn ldcrn_gpu_matches_cpu() {
    check_model("ldcrn-w16-lsp", 64, 1);
}
