//! The seed networks: every named configuration builds, infers shapes, produces stride-4
//! heatmaps, uses stable dotted node names and lands near the paper's parameter counts.

use std::collections::HashSet;

use wgpose::graph::passes::optimize_for_inference;
use wgpose::graph::Op;
use wgpose::models::{config, configs, conv_macs, Arch, Family, HourglassArch, ModelConfig};
use wgpose::rng::Rng;
use wgpose::{Error, Tensor};

/// Relative band around the paper's parameter count that each config must land in.
const PARAM_BAND: f64 = 0.25;

fn built() -> Vec<(ModelConfig, wgpose::graph::Graph)> {
    configs()
        .into_iter()
        .map(|c| {
            let g = c.build(0).unwrap_or_else(|e| panic!("{} does not build: {e}", c.name));
            (c, g)
        })
        .collect()
}

#[test]
fn config_names_are_unique_and_resolve() {
    let all = configs();
    assert!(all.len() >= 10);
    let mut seen = HashSet::new();
    for c in &all {
        assert!(seen.insert(c.name), "duplicate config name {}", c.name);
        assert_eq!(config(c.name).unwrap(), *c);
        let fam_ok = matches!(
            (&c.family, &c.arch),
            (Family::SoftGatedHourglass, Arch::Hourglass(_))
                | (Family::FasterPose, Arch::FasterPose(_))
                | (Family::Ldcrn, Arch::Ldcrn(_))
                | (Family::PersonDetector, Arch::FasterPose(_))
        );
        assert!(fam_ok, "{}: family and arch disagree", c.name);
        assert!(!c.note.is_empty(), "{}: empty note", c.name);
    }
    for name in [
        "sghg-2x128",
        "sghg-4x144",
        "sghg-4x256",
        "fasterpose-r18-s32",
        "simplebaseline-r18",
        "ldcrn-w32",
        "ldcrn-w16-lsp",
    ] {
        assert!(seen.contains(name), "missing config {name}");
    }
}

#[test]
fn unknown_config_is_an_input_error_listing_the_names() {
    match config("nope") {
        Err(Error::Input(msg)) => {
            assert!(msg.contains("nope"), "{msg}");
            for c in configs() {
                assert!(msg.contains(c.name), "{msg} does not list {}", c.name);
            }
        }
        other => panic!("expected Error::Input, got {other:?}"),
    }
}

#[test]
fn every_config_builds_with_stride_4_heatmaps_at_batch_1_and_2() {
    for (c, g) in built() {
        let inputs = g.inputs();
        assert_eq!(inputs.len(), 1, "{}", c.name);
        assert_eq!(g.nodes[inputs[0]].name, "input", "{}", c.name);
        assert_eq!(g.nodes[inputs[0]].op, Op::Input { chw: c.input }, "{}", c.name);
        assert_eq!(c.input[0], 3, "{}", c.name);
        assert_eq!(g.outputs.len(), c.num_outputs(), "{}", c.name);
        if c.family != Family::SoftGatedHourglass {
            assert_eq!(g.outputs.len(), 1, "{}", c.name);
        }
        let [k, h, w] = c.heatmap_shape();
        assert_eq!([h * 4, w * 4], [c.input[1], c.input[2]], "{}", c.name);
        for n in [1, 2] {
            let shapes = g.shapes(n).unwrap();
            for &o in &g.outputs {
                assert_eq!(shapes[o], [n, k, h, w], "{} output {}", c.name, g.nodes[o].name);
            }
        }
        // The last node producing each output is what the family promises.
        let last = &g.nodes[*g.outputs.last().unwrap()];
        if c.sigmoid_output() {
            assert_eq!(last.op.kind(), "sigmoid", "{}", c.name);
        } else {
            assert_eq!(last.op.kind(), "conv2d", "{}", c.name);
        }
    }
}

#[test]
fn hourglass_outputs_one_heatmap_per_stack_in_order() {
    for c in configs().into_iter().filter(|c| c.family == Family::SoftGatedHourglass) {
        let Arch::Hourglass(a) = &c.arch else { unreachable!() };
        let g = c.build(1).unwrap();
        assert_eq!(g.outputs.len(), a.stacks, "{}", c.name);
        for (s, &o) in g.outputs.iter().enumerate() {
            let last = if a.sigmoid_heatmaps { "sigmoid" } else { "heatmap" };
            assert_eq!(g.nodes[o].name, format!("stack{s}.{last}"), "{}", c.name);
        }
        assert!(g.outputs.windows(2).all(|w| w[0] < w[1]));
        // One soft gate per residual block, initialised to 1 (none in the identity-skip ablation).
        let gates: Vec<_> = g.nodes.iter().filter(|n| matches!(n.op, Op::GatedAdd { .. })).collect();
        assert_eq!(gates.is_empty(), !a.gated, "{}", c.name);
        for n in gates {
            let Op::GatedAdd { alpha } = &n.op else { unreachable!() };
            assert!(alpha.data.iter().all(|&v| v == 1.0), "{}", n.name);
            assert!(n.name.ends_with(".gate"), "{}", n.name);
        }
    }
}

#[test]
fn identity_skip_ablation_differs_from_the_soft_gated_net_only_by_its_gates() {
    let gated = config("sghg-1x64-lsp").unwrap().build(1).unwrap();
    let plain = config("hg-identity-1x64-lsp").unwrap().build(1).unwrap();
    let gates: Vec<_> = gated.nodes.iter().filter(|n| matches!(n.op, Op::GatedAdd { .. })).collect();
    let adds: Vec<_> = plain.nodes.iter().filter(|n| n.name.ends_with(".add")).collect();
    assert_eq!(gates.len(), adds.len());
    for (g, a) in gates.iter().zip(&adds) {
        assert!(matches!(a.op, Op::Add));
        assert_eq!(g.name.trim_end_matches(".gate"), a.name.trim_end_matches(".add"));
    }
    let gate_params: usize =
        gates.iter().map(|n| if let Op::GatedAdd { alpha } = &n.op { alpha.data.len() } else { 0 }).sum();
    assert_eq!(gated.param_count(), plain.param_count() + gate_params);
    assert_eq!(gated.nodes.len(), plain.nodes.len());
}

/// The RCE hourglass is the MSE one with a sigmoid on its heatmaps: the same parameters (so
/// each one's weights load into the other), and on the same weights its output is exactly the
/// sigmoid of the MSE network's.
#[test]
fn rce_hourglass_is_the_mse_one_with_sigmoid_heatmaps() {
    let cfg = config("sghg-1x64-rce-lsp").unwrap().with_input([3, 64, 64]);
    assert!(cfg.sigmoid_output() && !config("sghg-1x64-lsp").unwrap().sigmoid_output());
    let mse = config("sghg-1x64-lsp").unwrap().with_input([3, 64, 64]).build(5).unwrap();
    let rce = cfg.build(5).unwrap();
    assert_eq!(mse.param_count(), rce.param_count());
    assert_eq!(rce.nodes.len(), mse.nodes.len() + 1);
    assert!(matches!(rce.nodes[rce.outputs[0]].op, Op::Activation(wgpose::graph::Act::Sigmoid)));
    let mut rng = Rng::new(3);
    let x = Tensor { shape: vec![1, 3, 64, 64], data: (0..3 * 64 * 64).map(|_| 2.0 * rng.uniform() - 1.0).collect() };
    let a = wgpose::cpu::run(&mse, std::slice::from_ref(&x)).unwrap();
    let b = wgpose::cpu::run(&rce, &[x]).unwrap();
    for (z, p) in a[0].data.iter().zip(&b[0].data) {
        let want = 1.0 / (1.0 + (-z).exp());
        assert!((p - want).abs() <= 1e-6, "sigmoid({z}) = {want}, the RCE hourglass gave {p}");
    }
}

#[test]
fn node_names_are_unique_dotted_paths() {
    for (c, g) in built() {
        let mut seen = HashSet::new();
        for n in &g.nodes {
            assert!(seen.insert(n.name.as_str()), "{}: duplicate node name {}", c.name, n.name);
            if n.name == "input" {
                continue;
            }
            assert!(n.name.contains('.'), "{}: node name `{}` is not a dotted path", c.name, n.name);
            for seg in n.name.split('.') {
                assert!(
                    !seg.is_empty()
                        && seg.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'),
                    "{}: bad segment `{seg}` in `{}`",
                    c.name,
                    n.name
                );
            }
        }
    }
}

#[test]
fn convs_followed_only_by_batch_norm_have_no_bias() {
    for (c, g) in built() {
        let consumers = g.consumers();
        for (id, n) in g.nodes.iter().enumerate() {
            let Op::Conv2d(conv) = &n.op else { continue };
            let to_bn =
                !consumers[id].is_empty() && consumers[id].iter().all(|&k| matches!(g.nodes[k].op, Op::BatchNorm(_)));
            if to_bn {
                assert!(conv.bias.is_none(), "{}: `{}` feeds a batch norm but has a bias", c.name, n.name);
            }
        }
    }
}

#[test]
fn params_are_near_the_papers() {
    for (c, g) in built() {
        let Some(paper) = c.paper_params else {
            continue;
        };
        let ours = g.param_count() as f64 / 1e6;
        let rel = (ours - paper).abs() / paper;
        assert!(rel <= PARAM_BAND, "{}: {ours:.2}M params vs paper {paper}M ({:.0}% off)", c.name, rel * 100.0);
    }
}

#[test]
fn paper_budgets_are_ordered() {
    let p = |n: &str| config(n).unwrap().build(0).unwrap().param_count();
    assert!(p("sghg-1x64") < p("sghg-2x128"));
    assert!(p("sghg-2x128") < p("sghg-4x144"));
    assert!(p("sghg-4x144") < p("sghg-4x256"));
    // FasterPose's point: the low-resolution head is far cheaper than the high-resolution one.
    let f = |n: &str| config(n).unwrap().build(0).unwrap().flops(1).unwrap();
    assert!(f("fasterpose-r18-s32") < f("simplebaseline-r18"));
    assert!(f("fasterpose-r50-s32") < f("simplebaseline-r50"));
}

#[test]
fn with_joints_and_with_input_rebuild_and_bad_sizes_are_refused() {
    for c in configs() {
        let m = c.size_multiple();
        let d = c.with_joints(5).with_input([3, 2 * m, 3 * m]);
        let g = d.build(3).unwrap();
        let shapes = g.shapes(1).unwrap();
        for &o in &g.outputs {
            assert_eq!(shapes[o], [1, 5, 2 * m / 4, 3 * m / 4], "{}", c.name);
        }
        assert!(matches!(c.with_input([3, m + 4, m]).build(0), Err(Error::Input(_))), "{}", c.name);
        assert!(matches!(c.with_input([0, m, m]).build(0), Err(Error::Input(_))), "{}", c.name);
        assert!(matches!(c.with_joints(0).build(0), Err(Error::Input(_))), "{}", c.name);
    }
}

#[test]
fn builds_are_reproducible_from_the_seed() {
    let c = config("ldcrn-w16-lsp").unwrap();
    assert_eq!(c.build(7).unwrap(), c.build(7).unwrap());
    assert_ne!(c.build(7).unwrap(), c.build(8).unwrap());
}

#[test]
fn inference_passes_fold_every_conv_batch_norm() {
    for (c, g) in built() {
        let o = optimize_for_inference(&g);
        assert_eq!(o.outputs.len(), g.outputs.len());
        // Batch norms that survive are only the pre-activation ones (not after a conv).
        for n in &o.nodes {
            assert!(!matches!(n.op, Op::BatchNorm(_)), "{}: `{}` not folded", c.name, n.name);
        }
        assert_eq!(o.shapes(2).unwrap().len(), o.nodes.len());
        for (&a, &b) in g.outputs.iter().zip(&o.outputs) {
            assert_eq!(g.shapes(1).unwrap()[a], o.shapes(1).unwrap()[b], "{}", c.name);
        }
    }
}

/// The small CPU-trainable configs run end to end on the CPU executor, before and after the
/// inference passes, with the same results.
#[test]
fn small_configs_run_on_the_cpu() {
    // Unwritten fast-path outputs come out as NaN (`cpu::poison_fresh_buffers`) and fail below.
    wgpose::cpu::poison_fresh_buffers(true);
    for name in ["sghg-1x64-lsp", "fasterpose-r18-s16-lsp", "ldcrn-w16-lsp"] {
        let c = config(name).unwrap();
        let g = c.build(11).unwrap();
        let [ch, h, w] = c.input;
        let mut rng = Rng::new(5);
        let x = Tensor::new(vec![1, ch, h, w], rng.vec(ch * h * w, -1.0, 1.0)).unwrap();
        let out = wgpose::cpu::run(&g, std::slice::from_ref(&x)).unwrap();
        let fused = wgpose::cpu::run(&optimize_for_inference(&g), &[x]).unwrap();
        assert_eq!(out.len(), c.num_outputs());
        for (a, b) in out.iter().zip(&fused) {
            assert_eq!(a.shape, vec![1, c.joints, h / 4, w / 4], "{name}");
            assert!(a.first_non_finite().is_none(), "{name}: non-finite output");
            if c.sigmoid_output() {
                assert!(a.data.iter().all(|&v| (0.0..=1.0).contains(&v)), "{name}");
            }
            let scale = a.data.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let diff = a.data.iter().zip(&b.data).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(diff <= 1e-3 * scale, "{name}: fused differs by {diff} (scale {scale})");
        }
    }
}

/// `cargo test --test models -- --nocapture table` prints params and FLOPs of every config.
#[test]
fn table() {
    println!();
    println!(
        "{:<24} {:>11} {:>4} {:>9} {:>8} {:>9} {:>8} {:>8} {:>10} {:>10}",
        "config", "input", "K", "params(M)", "paper", "GFLOPs", "GMACs", "paper", "GMACs@256", "nodes"
    );
    for (c, g) in built() {
        let params = g.param_count() as f64 / 1e6;
        let flops = g.flops(1).unwrap() as f64 / 1e9;
        let macs = conv_macs(&g, 1).unwrap() as f64 / 1e9;
        let at256 = if c.family == Family::SoftGatedHourglass {
            let g = c.with_input([3, 256, 256]).build(0).unwrap();
            format!("{:.2}", conv_macs(&g, 1).unwrap() as f64 / 1e9)
        } else {
            "-".into()
        };
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v}"));
        println!(
            "{:<24} {:>11} {:>4} {:>9.3} {:>8} {:>9.3} {:>8.3} {:>8} {:>10} {:>10}",
            c.name,
            format!("{}x{}", c.input[1], c.input[2]),
            c.joints,
            params,
            opt(c.paper_params),
            flops,
            macs,
            opt(c.paper_gflops),
            at256,
            g.nodes.len()
        );
    }
}

/// `cargo test --test models -- --nocapture breakdown` prints where parameters and
/// multiply-adds go (by the first two segments of the node names) for the configs the papers
/// report numbers for.
#[test]
fn breakdown() {
    for c in configs().into_iter().filter(|c| c.paper_params.is_some()) {
        let g = c.build(0).unwrap();
        let stats = g.stats(1).unwrap();
        let shapes = g.shapes(1).unwrap();
        let mut rows: Vec<(String, usize, u64)> = Vec::new();
        for (id, n) in g.nodes.iter().enumerate() {
            let key: String = n.name.split('.').take(2).collect::<Vec<_>>().join(".");
            let macs = match &n.op {
                Op::Conv2d(conv) => {
                    let [kh, kw] = conv.kernel();
                    shapes[id].iter().product::<usize>() as u64 * (conv.cin_per_group() * kh * kw) as u64
                }
                _ => 0,
            };
            match rows.iter_mut().find(|r| r.0 == key) {
                Some(r) => {
                    r.1 += stats[id].params;
                    r.2 += macs;
                }
                None => rows.push((key, stats[id].params, macs)),
            }
        }
        println!("\n{} ({}x{})", c.name, c.input[1], c.input[2]);
        for (k, p, m) in rows.into_iter().filter(|r| r.1 > 0) {
            println!("  {k:<28} {:>8.3}M params {:>8.3} GMACs", p as f64 / 1e6, m as f64 / 1e9);
        }
    }
}

#[test]
fn hourglass_stem_pool_first_is_cheaper_with_the_same_outputs() {
    for c in configs().into_iter().filter(|c| c.family == Family::SoftGatedHourglass) {
        let Arch::Hourglass(a) = &c.arch else { unreachable!() };
        let mut light = c;
        light.arch = Arch::Hourglass(HourglassArch { stem_pool_first: true, ..*a });
        let (g, l) = (c.build(0).unwrap(), light.build(0).unwrap());
        assert_eq!(g.param_count(), l.param_count(), "{}", c.name);
        let (gm, lm) = (conv_macs(&g, 1).unwrap(), conv_macs(&l, 1).unwrap());
        assert!(lm < gm, "{}", c.name);
        let (gs, ls) = (g.shapes(2).unwrap(), l.shapes(2).unwrap());
        for (&x, &y) in g.outputs.iter().zip(&l.outputs) {
            assert_eq!(gs[x], ls[y], "{}", c.name);
        }
        println!("{:<16} GMACs {:.3}, with stem_pool_first {:.3}", c.name, gm as f64 / 1e9, lm as f64 / 1e9);
    }
}
