//! Whole networks, batch 1, at their configured input size: the three shipped pose configs on
//! the CPU executor (after the inference passes, as `wgpose bench models` runs it) and, when an
//! adapter opens, on the GPU (wall time of a blocking run: upload, dispatches, readback). Weights
//! are seeded random ones (`wgpose::bench::model_case`); speed does not depend on their values.
//!
//! `cargo bench --bench models [-- --quick] [-- FILTER]`

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use wgpose::bench::model_case;
use wgpose::gpu::GpuModel;
use wgpose::graph::passes::optimize_for_inference;

/// The configs whose trained weights ship in `models/` (the person detector is benchmarked by
/// `wgpose bench pipeline`).
const SHIPPED: [&str; 3] = ["fasterpose-r18-s16-lsp", "sghg-1x64-lsp", "ldcrn-w16-lsp"];

fn models(c: &mut Criterion) {
    let gpu = common::gpu();
    for name in SHIPPED {
        let cfg = wgpose::models::config(name).unwrap();
        let (g, x) = model_case(&cfg, 1).unwrap();
        let [ch, h, w] = cfg.input;
        let id = format!("{name}/1x{ch}x{h}x{w}");
        let fused = optimize_for_inference(&g);
        c.bench_function(&format!("cpu/{id}"), |b| b.iter(|| wgpose::cpu::run(&fused, &x).unwrap()));
        if let Some(ctx) = &gpu {
            let mut m = GpuModel::compile(ctx, &g, 1).unwrap();
            c.bench_function(&format!("gpu/{id}"), |b| b.iter(|| m.run(&x).unwrap()));
        }
    }
}

criterion_group! { name = benches; config = common::criterion(); targets = models }
criterion_main!(benches);
