//! The typed parameter list (`Op::params`, `ParamKind`) is the one source the weight files,
//! shape checks, autodiff and the optimiser read: names, order, trainability and weight decay
//! all follow from it.

use wgpose::autodiff::{self, Gradients, Optimizer};
use wgpose::graph::{param_name, Act, BatchNorm, Conv2d, Epilogue, Graph, Op, ParamKind, Residual};
use wgpose::rng::Rng;
use wgpose::weights::{named_params, named_params_mut};
use wgpose::{Error, Tensor};

fn vec_t(rng: &mut Rng, c: usize) -> Tensor {
    Tensor { shape: vec![c], data: (0..c).map(|_| rng.range(0.5, 1.5)).collect() }
}

fn conv(rng: &mut Rng, cin: usize, cout: usize, bias: bool, residual: Option<Residual>) -> Op {
    let n = cout * cin * 9;
    Op::Conv2d(Conv2d {
        weight: Tensor { shape: vec![cout, cin, 3, 3], data: (0..n).map(|_| rng.normal()).collect() },
        bias: bias.then(|| vec_t(rng, cout)),
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
        groups: 1,
        epilogue: Epilogue { residual, ..Epilogue::default() },
    })
}

/// One node of every operator that has parameters (and a fused gated conv).
fn graph_with_every_param_kind() -> Graph {
    let mut rng = Rng::new(7);
    let mut g = Graph::new();
    let x = g.push("x", Op::Input { chw: [3, 6, 5] }, vec![]).unwrap();
    let c1 = g.push("c1", conv(&mut rng, 3, 4, true, None), vec![x]).unwrap();
    let bn = BatchNorm {
        gamma: vec_t(&mut rng, 4),
        beta: vec_t(&mut rng, 4),
        mean: vec_t(&mut rng, 4),
        var: vec_t(&mut rng, 4),
        eps: 1e-5,
    };
    let b = g.push("bn", Op::BatchNorm(bn), vec![c1]).unwrap();
    let affine = Op::ChannelAffine { scale: vec_t(&mut rng, 4), shift: vec_t(&mut rng, 4), act: Act::Relu };
    let a = g.push("affine", affine, vec![b]).unwrap();
    let ga = g.push("gate", Op::GatedAdd { alpha: vec_t(&mut rng, 4) }, vec![a, b]).unwrap();
    let gate = vec_t(&mut rng, 4);
    let fused = conv(&mut rng, 4, 4, false, Some(Residual::GateResidual(gate)));
    let f = g.push("fused", fused, vec![ga, a]).unwrap();
    g.outputs = vec![f];
    g
}

#[test]
fn every_kind_has_its_own_name() {
    let mut names: Vec<&str> = ParamKind::ALL.iter().map(|k| k.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), ParamKind::ALL.len());
    // The names the committed weight files use.
    assert_eq!(ParamKind::SoftGate.name(), "alpha");
    assert_eq!(ParamKind::BnRunningVar.name(), "running_var");
    assert_eq!(param_name("stem.block1.gate", ParamKind::SoftGate), "stem.block1.gate.alpha");
}

#[test]
fn weights_training_and_counts_follow_the_typed_list() {
    let g = graph_with_every_param_kind();
    let typed = g.params();
    let kinds: Vec<(&str, ParamKind)> = typed.iter().map(|(n, k, _)| (*n, *k)).collect();
    use ParamKind::*;
    assert_eq!(
        kinds,
        [
            ("c1", Weight),
            ("c1", Bias),
            ("bn", BnGamma),
            ("bn", BnBeta),
            ("bn", BnRunningMean),
            ("bn", BnRunningVar),
            ("affine", AffineScale),
            ("affine", AffineShift),
            ("gate", SoftGate),
            ("fused", Weight),
            ("fused", SoftGate),
        ]
    );
    // Weight-file names are exactly `<node>.<kind name>`, same tensors, same order.
    let named = named_params(&g);
    assert_eq!(named.len(), typed.len());
    for ((name, t), (node, kind, u)) in named.iter().zip(&typed) {
        assert_eq!(*name, param_name(node, *kind));
        assert!(std::ptr::eq(*t, *u));
    }
    // Training sees everything but the running statistics.
    let trainable: Vec<String> = autodiff::trainable_params(&g).into_iter().map(|(n, _)| n).collect();
    let want: Vec<String> = typed.iter().filter(|(_, k, _)| k.trainable()).map(|(n, k, _)| param_name(n, *k)).collect();
    assert_eq!(trainable, want);
    assert!(!trainable.iter().any(|n| n.ends_with("running_mean") || n.ends_with("running_var")));
    let count: usize = typed.iter().filter(|(_, k, _)| k.trainable()).map(|(_, _, t)| t.numel()).sum();
    assert_eq!(g.param_count(), count);
}

#[test]
fn optimiser_decays_convolution_weights_only() {
    let mut g = graph_with_every_param_kind();
    // The fused conv is not trainable as a graph node, but the optimiser works on any graph.
    let before: Vec<(String, Tensor)> = named_params(&g).into_iter().map(|(n, t)| (n, t.clone())).collect();
    // Zero gradients: Adam's step is 0, so only the decoupled decay moves anything.
    let grads = Gradients {
        params: autodiff::trainable_params(&g).into_iter().map(|(n, t)| (n, Tensor::zeros(t.shape.clone()))).collect(),
        inputs: vec![],
    };
    Optimizer::adam(0.5).apply(&mut g, &grads, 0.1).unwrap();
    let mut decayed = Vec::new();
    for ((name, old), (_, new)) in before.iter().zip(named_params_mut(&mut g)) {
        if old.data != new.data {
            decayed.push(name.clone());
        }
    }
    assert_eq!(decayed, ["c1.weight", "fused.weight"]);
}

#[test]
fn per_channel_parameters_of_the_wrong_length_are_refused_by_name() {
    for kind in ParamKind::ALL.into_iter().filter(|k| k.per_channel()) {
        let mut g = graph_with_every_param_kind();
        let (node, _, t) = g.params_mut().into_iter().find(|(_, k, _)| *k == kind).unwrap();
        let node = node.to_string();
        *t = Tensor::zeros(vec![5]);
        match g.shapes(1) {
            Err(Error::Shape { node: n, msg }) => {
                assert_eq!(n, node, "{kind:?}");
                assert!(msg.contains(kind.name()) && msg.contains("expected [4]"), "{kind:?}: {msg}");
            }
            other => panic!("{kind:?}: {other:?}"),
        }
    }
}

#[test]
fn a_parameter_whose_values_do_not_match_its_shape_is_refused_by_the_executor() {
    for kind in ParamKind::ALL {
        let mut g = graph_with_every_param_kind();
        let Some((_, _, t)) = g.params_mut().into_iter().find(|(_, k, _)| *k == kind) else {
            panic!("{kind:?} missing from the test graph");
        };
        t.data.pop();
        let x = Tensor::zeros(vec![1, 3, 6, 5]);
        let err = wgpose::cpu::run(&g, &[x]).unwrap_err().to_string();
        assert!(err.contains(kind.name()), "{kind:?}: {err}");
    }
}
