//! Per-layer times of one training step on the CPU (forward in training mode, then backward):
//! `cargo run --release --example train_profile -- fasterpose-r18-s16-lsp 16`.
//!
//! The step `wgpose train` performs, without the optimiser: the model's graph on seeded random
//! weights, its final sigmoid stripped (RCE) or not (MSE), a random batch, batch norms in
//! training mode. One warm-up step and 3 timed ones; prints the forward and backward time per
//! operator kind, the convolutions by kernel and stride with the rate each class computes at,
//! and the slowest nodes (`TOP=N`: the N slowest, 15 by default). `RAYON_NUM_THREADS` sets the
//! threads.
//!
//! The `wgpose` binary keeps freed memory in the process (`src/main.rs`, `keep_freed_memory`);
//! this example does not, so on glibc its large tensors page-fault on every step. For the
//! CLI's behaviour run it with
//! `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647`.

use std::collections::BTreeMap;

use wgpose::autodiff::{self, BnMode};
use wgpose::graph::Op;
use wgpose::rng::Rng;
use wgpose::Tensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "fasterpose-r18-s16-lsp".into());
    let batch: usize = args.next().map(|b| b.parse()).transpose()?.unwrap_or(16);
    let cfg = wgpose::models::config(&name)?;
    let rce = cfg.sigmoid_output();
    let mut graph = cfg.build(0)?;
    if rce {
        graph = autodiff::strip_final_sigmoid(&graph).0;
    }
    let shapes = graph.shapes(batch)?;
    let input = graph.inputs()[0];
    let out = graph.outputs[0];
    let mut rng = Rng::new(5);
    let xs = shapes[input];
    let x = Tensor::new(xs.to_vec(), rng.vec(xs.iter().product(), -1.0, 1.0))?;
    let ts = shapes[out];
    let target = Tensor::new(ts.to_vec(), rng.vec(ts.iter().product(), 0.0, 1.0))?;
    let joint_weights = vec![1.0f32; ts[0] * ts[1]];

    let (warm, timed) = (1, 3);
    let n = graph.nodes.len();
    let (mut fwd, mut bwd) = (vec![0.0f64; n], vec![0.0f64; n]);
    let mut loss_ms = 0.0;
    for step in 0..warm + timed {
        let (tape, tf) = autodiff::forward_train_profiled(&graph, std::slice::from_ref(&x), BnMode::Train)?;
        let t = std::time::Instant::now();
        let outs: Vec<&Tensor> = graph.outputs.iter().map(|&o| &tape.values[o]).collect();
        let (_, dout) = if rce {
            autodiff::rce_loss(&outs, &target, &joint_weights)?
        } else {
            autodiff::mse_loss(&outs, &target, &joint_weights)?
        };
        let l = t.elapsed().as_secs_f64() * 1e3;
        let (_, tb) = autodiff::backward_profiled(&graph, &tape, &dout)?;
        if step >= warm {
            let acc = |dst: &mut [f64], src: &[std::time::Duration]| {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s.as_secs_f64() * 1e3 / timed as f64)
            };
            acc(&mut fwd, &tf);
            acc(&mut bwd, &tb);
            loss_ms += l / timed as f64;
        }
    }
    // `Op::kind`, not the Debug text: that prints every weight (a fifth of this tool's run time
    // on fasterpose-r18-s32, outside the timed steps).
    let kind = |op: &Op| op.kind().to_string();
    let (f, b): (f64, f64) = (fwd.iter().sum(), bwd.iter().sum());
    println!(
        "{name}: batch {batch}, {} thread(s), kernel {}: forward {f:.1} ms, loss {loss_ms:.1} ms, backward {b:.1} ms \
         ({:.1} images/s without the optimiser)",
        rayon::current_num_threads(),
        wgpose::cpu::gemm::Kernel::detect().name(),
        batch as f64 / ((f + b + loss_ms) / 1e3)
    );
    let mut kinds: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let e = kinds.entry(kind(&node.op)).or_default();
        e.0 += fwd[i];
        e.1 += bwd[i];
        e.2 += 1;
    }
    println!("  {:18} {:>10} {:>10} {:>6}", "op", "fwd ms", "bwd ms", "nodes");
    for (k, (tf, tb, count)) in &kinds {
        println!("  {k:18} {tf:10.1} {tb:10.1} {count:6}");
    }
    // Convolutions by kernel and stride, with the rate each class computes at (the backward
    // pass counts dX and dW: twice the forward's multiply-adds).
    let mut classes: BTreeMap<String, (f64, f64, f64, usize)> = BTreeMap::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let Op::Conv2d(c) = &node.op else { continue };
        let [kh, kw] = c.kernel();
        let out = &shapes[i];
        let flops = 2.0 * (out.iter().product::<usize>() * c.cin_per_group() * kh * kw) as f64;
        let dw = if c.cin_per_group() == 1 && c.cout() == c.groups { " depthwise" } else { "" };
        let e = classes.entry(format!("{kh}x{kw} stride {}{dw}", c.stride[0])).or_default();
        e.0 += fwd[i];
        e.1 += bwd[i];
        e.2 += flops;
        e.3 += 1;
    }
    println!(
        "  {:24} {:>8} {:>8} {:>10} {:>10} {:>6}",
        "convolutions", "fwd ms", "bwd ms", "fwd GF/s", "bwd GF/s", "nodes"
    );
    for (k, (tf, tb, flops, count)) in &classes {
        let rate = |ms: f64, f: f64| if ms > 0.0 { f / ms / 1e6 } else { 0.0 };
        println!("  {k:24} {tf:8.1} {tb:8.1} {:10.1} {:10.1} {count:6}", rate(*tf, *flops), rate(*tb, 2.0 * flops));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| (fwd[b] + bwd[b]).total_cmp(&(fwd[a] + bwd[a])));
    println!("slowest nodes (fwd ms, bwd ms, output shape):");
    let top = std::env::var("TOP").ok().and_then(|t| t.parse().ok()).unwrap_or(15);
    for &i in order.iter().take(top) {
        println!("  {:8.1} {:8.1}  {:?}  {}", fwd[i], bwd[i], shapes[i], graph.nodes[i].name);
    }
    Ok(())
}
