//! Per-layer times of a model on the CPU executor (the CPU side of `wgpose profile`):
//! `cargo run --release --example cpu_profile -- fasterpose-r18-s16-lsp`.
//!
//! Runs the inference graph (fused as `Estimator` runs it) on seeded random weights and input,
//! 5 warm-up runs and 25 timed ones, and prints the time per operator kind and the slowest
//! nodes. `RAYON_NUM_THREADS` sets the threads, `WGPOSE_CPU_KERNEL=avx2` / `portable` narrows
//! the matrix-product kernel, `TOP=N` prints the N slowest nodes (12 by default), `WEIGHTS=FILE`
//! runs a weights file instead of the seeded random weights (LDCRN timed the same both ways),
//! `SIZE=HxW` another input size, `RUNS=N` N timed runs instead of 25 (for `perf record`).

use std::collections::BTreeMap;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "fasterpose-r18-s16-lsp".into());
    let mut cfg = wgpose::models::config(&name)?;
    // SIZE=HxW: another input size (the ONNX peer `wgpose export --size` writes), e.g. the
    // 128x128 that `scripts/compare_cpu.py` times every model at.
    if let Ok(size) = std::env::var("SIZE") {
        let (h, w) = size.split_once('x').ok_or("SIZE must be HxW")?;
        cfg = cfg.with_input([3, h.parse()?, w.parse()?]);
    }
    let (graph, inputs) = wgpose::bench::model_case(&cfg, 1)?;
    let graph = match std::env::var_os("WEIGHTS") {
        Some(p) => wgpose::models::load_model(&cfg, Some(std::path::Path::new(&p)), 0)?.0,
        None => graph,
    };
    let prepared = wgpose::cpu::PackedGraph::new(wgpose::graph::passes::optimize_for_inference(&graph));
    let graph = prepared.graph();
    // RUNS=N timed runs (25 by default): more for `perf record`, so setup is a small share.
    let timed = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(25usize).max(1);
    let warm = 5;
    let mut ms = vec![0.0f64; graph.nodes.len()];
    for run in 0..warm + timed {
        let (_, times) = prepared.run_profiled(&inputs)?;
        if run >= warm {
            ms.iter_mut().zip(&times).for_each(|(m, t)| *m += t.as_secs_f64() * 1e3 / timed as f64);
        }
    }
    let stats = graph.stats(inputs[0].shape[0])?;
    let kind = |op: &wgpose::graph::Op| op.kind().to_string();
    println!(
        "{name}: {:.2} ms in {} nodes, input {:?}, {} thread(s), kernel {}",
        ms.iter().sum::<f64>(),
        graph.nodes.len(),
        inputs[0].shape,
        rayon::current_num_threads(),
        wgpose::cpu::gemm::Kernel::detect().name()
    );
    println!(
        "  (not run: {} channel affines applied in a convolution's padding copy, {} concatenations read in parts)",
        prepared.fused_input_affines(),
        prepared.virtual_concats()
    );
    let mut kinds: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (node, t) in graph.nodes.iter().zip(&ms) {
        let e = kinds.entry(kind(&node.op)).or_default();
        e.0 += t;
        e.1 += 1;
    }
    for (k, (t, count)) in &kinds {
        println!("  {k:18} {t:8.3} ms  {count:4} nodes");
    }
    let mut order: Vec<usize> = (0..graph.nodes.len()).collect();
    order.sort_by(|&a, &b| ms[b].total_cmp(&ms[a]));
    println!("slowest nodes (GFLOP/s: multiply-add = 2 operations):");
    let top = std::env::var("TOP").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    for &i in order.iter().take(top) {
        let s = &stats[i];
        // Nodes the run skips (absorbed affines, concatenations read in parts) take no time.
        let gflops = if ms[i] > 0.0 { format!("{:7.1}", s.flops as f64 / (ms[i] * 1e6)) } else { "      -".into() };
        println!("  {:8.3} ms {gflops} GFLOP/s  {:?}  {}", ms[i], s.shape, graph.nodes[i].name);
    }
    Ok(())
}
