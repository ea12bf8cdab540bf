//! Single layers (3x3 conv, 1x1 conv, depthwise 3x3, pixel shuffle) on the CPU executor and, when
//! an adapter opens, on the GPU: the cases of `wgpose bench ops` (`wgpose::bench::op_cases`), run
//! by criterion. GPU inputs are a quarter of the CPU ones in area (half the height and width) so
//! that lavapipe stays quick; GPU times are the wall time of a blocking run (upload, dispatch,
//! readback), not the kernel time `wgpose bench ops` reads from timestamp queries.
//!
//! `cargo bench --bench layers [-- --quick] [-- FILTER]`

mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use wgpose::bench::{op_cases, op_input, single_op_graph};
use wgpose::gpu::GpuModel;

/// The `wgpose bench ops` cases this benchmark runs, by the start of their name.
const LAYERS: [&str; 4] = ["conv3x3", "conv1x1", "depthwise3x3", "pixel_shuffle"];

/// `conv3x3 64->64 @64x64 +relu` for input `[1, 64, 64, 64]` becomes `conv3x3 64->64 +relu/1x64x64x64`.
fn id(name: &str, input: [usize; 4]) -> String {
    let without_size: Vec<&str> = name.split(' ').filter(|w| !w.starts_with('@')).collect();
    format!("{}/{}", without_size.join(" "), input.map(|d| d.to_string()).join("x"))
}

fn layers(c: &mut Criterion) {
    let gpu = common::gpu();
    let cases = op_cases().into_iter().filter(|(name, _, _)| LAYERS.iter().any(|l| name.starts_with(l)));
    for (name, input, op) in cases {
        let g = single_op_graph(input, op.clone()).unwrap();
        let x = vec![op_input(input).unwrap()];
        c.bench_function(&format!("cpu/{}", id(name, input)), |b| b.iter(|| wgpose::cpu::run(&g, &x).unwrap()));
        if let Some(ctx) = &gpu {
            let small = [input[0], input[1], input[2] / 2, input[3] / 2];
            let g = single_op_graph(small, op).unwrap();
            let x = vec![op_input(small).unwrap()];
            let mut m = GpuModel::compile(ctx, &g, small[0]).unwrap();
            c.bench_function(&format!("gpu/{}", id(name, small)), |b| b.iter(|| m.run(&x).unwrap()));
        }
    }
}

criterion_group! { name = benches; config = common::criterion(); targets = layers }
criterion_main!(benches);
