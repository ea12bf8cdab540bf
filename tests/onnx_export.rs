//! ONNX export tests: every operator on its own (awkward shapes, groups, depthwise, stride,
//! dilation), every fused convolution epilogue, and the small model configurations before and
//! after `optimize_for_inference`, each exported, loaded back in tract and run against
//! `wgpose::cpu::run` on the same random input.
//!
//! Tolerance: max |tract - wgpose| / (1 + max |wgpose|) <= 1e-4 for every output. Both
//! executors accumulate in f32 in different orders, so a few ulps of the output scale are
//! expected; an indexing or attribute mistake produces O(1) errors.
//!
//! Loading a model in tract is also the well-formedness test of the protobuf encoding (tract
//! parses it with prost from `onnx.proto`); `file_round_trip` additionally reads the exported
//! file's `ModelProto` fields back.
//!
//! Tract limitation (tract-onnx 0.22): its `Resize` in `linear` mode with
//! `coordinate_transformation_mode = half_pixel` does not clamp the source coordinate at the
//! low edge, so for the first `f / 2` output rows / columns it extrapolates
//! (`1.25 x0 - 0.25 x1` for factor 2) where the ONNX reference implementation, onnxruntime and
//! PyTorch (`align_corners = False`) all clamp (`x0`). The export follows the ONNX
//! specification; see `bilinear_upsample` below for how that op, and `ldcrn` (which contains
//! bilinear upsampling), are checked.

use std::io::Cursor;

use tract_onnx::pb;
use tract_onnx::prelude::{tvec, Framework, InferenceModelExt};
use wgpose::graph::passes::optimize_for_inference;
use wgpose::graph::{Act, BatchNorm, Conv2d, ConvSpec, Epilogue, Graph, GraphBuilder, Op, Residual};
use wgpose::rng::Rng;
use wgpose::{cpu, onnx, Tensor};

const TOL: f32 = 1e-4;

fn rand_tensor(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape.to_vec(), rng.vec(n, -1.0, 1.0)).unwrap()
}

fn vec1(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Tensor {
    Tensor::new(vec![n], rng.vec(n, lo, hi)).unwrap()
}

/// Loads ONNX bytes in tract, optimises, runs on `inputs`, returns the outputs as wgpose tensors.
fn run_tract(bytes: &[u8], inputs: &[Tensor]) -> Vec<Tensor> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut Cursor::new(bytes))
        .unwrap_or_else(|e| panic!("tract cannot load the exported model: {e:?}"))
        .into_optimized()
        .unwrap_or_else(|e| panic!("tract cannot optimise the exported model: {e:?}"))
        .into_runnable()
        .unwrap();
    let ins =
        inputs.iter().map(|t| tract_onnx::prelude::Tensor::from_shape(&t.shape, &t.data).unwrap().into()).collect();
    let outs = model.run(ins).unwrap_or_else(|e| panic!("tract run failed: {e:?}"));
    outs.iter()
        .map(|o| {
            let v = o.to_array_view::<f32>().unwrap();
            Tensor::new(v.shape().to_vec(), v.iter().copied().collect()).unwrap()
        })
        .collect()
}

/// max |got - want| / (1 + max |want|)
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.shape, want.shape, "shape");
    let scale = 1.0 + want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = 0f32;
    for (a, b) in got.data.iter().zip(&want.data) {
        let d = (a - b).abs();
        assert!(!d.is_nan(), "NaN ({a} vs {b})");
        worst = worst.max(d);
    }
    worst / scale
}

/// Exports `graph`, runs it in tract and in `cpu::run` on random inputs of batch `n`, asserts the
/// outputs agree. `fixed_batch` exports with the batch fixed instead of symbolic.
fn check_graph(what: &str, graph: &Graph, n: usize, fixed_batch: bool, seed: u64) -> f32 {
    let mut rng = Rng::new(seed);
    let inputs: Vec<Tensor> = graph
        .inputs()
        .iter()
        .map(|&i| match graph.nodes[i].op {
            Op::Input { chw: [c, h, w] } => rand_tensor(&mut rng, &[n, c, h, w]),
            _ => unreachable!(),
        })
        .collect();
    let bytes = onnx::export(graph, fixed_batch.then_some(n)).unwrap_or_else(|e| panic!("{what}: export: {e}"));
    let want = cpu::run(graph, &inputs).unwrap_or_else(|e| panic!("{what}: cpu::run: {e}"));
    let got = run_tract(&bytes, &inputs);
    assert_eq!(got.len(), want.len(), "{what}: number of outputs");
    let mut worst = 0f32;
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = rel_err(g, w);
        assert!(e <= TOL, "{what}: output {k}: relative error {e:e} > {TOL:e}");
        worst = worst.max(e);
    }
    worst
}

/// A graph of one node `op` applied to inputs of the given `[c, h, w]` shapes.
fn single(name: &str, op: Op, ins: &[[usize; 3]]) -> Graph {
    let mut g = Graph::new();
    let ids: Vec<usize> =
        ins.iter().enumerate().map(|(k, &chw)| g.push(format!("in{k}"), Op::Input { chw }, vec![]).unwrap()).collect();
    let y = g.push(name, op, ids).unwrap();
    g.outputs = vec![y];
    g.shapes(1).unwrap();
    g
}

fn check_single(what: &str, op: Op, ins: &[[usize; 3]], seed: u64) {
    let g = single(what, op, ins);
    // Symbolic batch run at batch 2, and a fixed batch of 1.
    check_graph(what, &g, 2, false, seed);
    check_graph(what, &g, 1, true, seed + 1);
}

struct ConvCase {
    cin: usize,
    cout: usize,
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    groups: usize,
    bias: bool,
}

fn conv_op(rng: &mut Rng, c: &ConvCase) -> Op {
    let cin_g = c.cin / c.groups;
    let std = (2.0 / (cin_g * c.k[0] * c.k[1]) as f32).sqrt();
    let w: Vec<f32> = (0..c.cout * cin_g * c.k[0] * c.k[1]).map(|_| rng.normal() * std).collect();
    Op::Conv2d(Conv2d {
        weight: Tensor::new(vec![c.cout, cin_g, c.k[0], c.k[1]], w).unwrap(),
        bias: c.bias.then(|| vec1(rng, c.cout, -0.5, 0.5)),
        stride: c.stride,
        padding: c.pad,
        dilation: c.dil,
        groups: c.groups,
        epilogue: Epilogue::default(),
    })
}

#[test]
fn conv_variants() {
    let mut rng = Rng::new(1);
    let base = ConvCase { cin: 3, cout: 5, k: [3, 3], stride: [1, 1], pad: [1, 1], dil: [1, 1], groups: 1, bias: true };
    let cases = [
        ("conv3x3", ConvCase { ..base }),
        ("conv3x3.nobias", ConvCase { bias: false, ..base }),
        ("conv1x1", ConvCase { k: [1, 1], pad: [0, 0], cout: 7, ..base }),
        ("conv3x3.stride2", ConvCase { stride: [2, 2], ..base }),
        ("conv3x3.dilation2", ConvCase { dil: [2, 2], pad: [2, 2], ..base }),
        ("conv.k1x3.rect", ConvCase { k: [1, 3], pad: [0, 1], stride: [1, 2], ..base }),
        ("conv.k5.pad0", ConvCase { k: [5, 5], pad: [0, 0], ..base }),
        ("conv.k4.stride2.pad1", ConvCase { k: [4, 4], stride: [2, 2], pad: [1, 1], ..base }),
        ("conv.groups3", ConvCase { cin: 6, cout: 9, groups: 3, ..base }),
        ("conv.depthwise", ConvCase { cin: 6, cout: 6, groups: 6, ..base }),
        (
            "conv.depthwise.stride2.dil2",
            ConvCase { cin: 4, cout: 4, groups: 4, stride: [2, 2], dil: [2, 2], pad: [2, 2], ..base },
        ),
        ("conv.depthwise.multiplier2", ConvCase { cin: 4, cout: 8, groups: 4, bias: false, ..base }),
    ];
    for (k, (name, c)) in cases.iter().enumerate() {
        let op = conv_op(&mut rng, c);
        check_single(name, op, &[[c.cin, 17, 23]], 100 + k as u64);
    }
}

#[test]
fn batch_norm_and_affine() {
    let mut rng = Rng::new(2);
    let c = 5;
    let bn = BatchNorm {
        gamma: vec1(&mut rng, c, 0.5, 1.5),
        beta: vec1(&mut rng, c, -0.2, 0.2),
        mean: vec1(&mut rng, c, -0.2, 0.2),
        var: vec1(&mut rng, c, 0.5, 1.5),
        eps: 1e-3,
    };
    check_single("bn", Op::BatchNorm(bn), &[[c, 17, 23]], 200);
    for (k, act) in [Act::None, Act::Relu, Act::Sigmoid].into_iter().enumerate() {
        let op = Op::ChannelAffine { scale: vec1(&mut rng, c, -1.5, 1.5), shift: vec1(&mut rng, c, -0.5, 0.5), act };
        check_single(&format!("affine.{act:?}"), op, &[[c, 17, 23]], 210 + k as u64);
    }
}

#[test]
fn activations() {
    for (k, act) in [Act::Relu, Act::Sigmoid, Act::None].into_iter().enumerate() {
        check_single(&format!("act.{act:?}"), Op::Activation(act), &[[3, 17, 23]], 300 + k as u64);
    }
}

#[test]
fn max_pool() {
    let cases =
        [([3, 3], [2, 2], [1, 1]), ([2, 2], [2, 2], [0, 0]), ([3, 3], [1, 1], [1, 1]), ([3, 2], [2, 1], [1, 0])];
    for (k, (kernel, stride, padding)) in cases.into_iter().enumerate() {
        let op = Op::MaxPool { kernel, stride, padding };
        check_single(&format!("pool{k}"), op, &[[3, 17, 23]], 400 + k as u64);
    }
}

#[test]
fn nearest_upsample() {
    for (k, f) in [1, 2, 3, 4].into_iter().enumerate() {
        check_single(&format!("up_nearest{f}"), Op::UpsampleNearest { factor: f }, &[[3, 17, 23]], 500 + k as u64);
    }
}

/// Bilinear upsampling, checked in tract with the export's exact `Resize`; the first `f / 2`
/// rows and columns are excluded from the comparison because of the tract limitation described
/// in the module docs, and the test asserts the difference there is exactly tract's
/// extrapolation (so the exclusion cannot hide anything else, and the test notices when tract is
/// fixed). onnxruntime, which clamps as the specification says, matches everywhere:
/// `scripts/onnx_parity.py` on a model with bilinear upsampling (see `dump_for_onnxruntime`).
#[test]
fn bilinear_upsample() {
    for (k, f) in [1usize, 2, 3, 4].into_iter().enumerate() {
        let what = format!("up_bilinear{f}");
        let g = single(&what, Op::UpsampleBilinear { factor: f }, &[[3, 17, 23]]);
        let mut rng = Rng::new(600 + k as u64);
        let x = rand_tensor(&mut rng, &[2, 3, 17, 23]);
        let want = cpu::run(&g, std::slice::from_ref(&x)).unwrap().remove(0);
        let got = run_tract(&onnx::export(&g, None).unwrap(), std::slice::from_ref(&x)).remove(0);
        assert_eq!(got.shape, want.shape);
        // What tract computes near the low edge: no clamp of the source coordinate.
        let unclamped = |o: usize, len: usize| {
            let src = (o as f32 + 0.5) / f as f32 - 0.5;
            let i0 = (src.max(0.0) as usize).min(len - 1);
            (i0, (i0 + 1).min(len - 1), src - i0 as f32)
        };
        let [n, c, h, w] = [2, 3, 17, 23];
        let (oh, ow) = (h * f, w * f);
        let edge = f / 2;
        let mut interior = 0f32;
        let mut edge_vs_tract_model = 0f32;
        for b in 0..n {
            for ch in 0..c {
                let at = |y: usize, xx: usize| x.data[((b * c + ch) * h + y) * w + xx];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let i = ((b * c + ch) * oh + oy) * ow + ox;
                        let d = (got.data[i] - want.data[i]).abs();
                        if oy >= edge && ox >= edge {
                            interior = interior.max(d);
                        } else {
                            let (y0, y1, ly) = unclamped(oy, h);
                            let (x0, x1, lx) = unclamped(ox, w);
                            let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
                            let bot = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
                            let model = (1.0 - ly) * top + ly * bot;
                            edge_vs_tract_model = edge_vs_tract_model.max((got.data[i] - model).abs());
                        }
                    }
                }
            }
        }
        let scale = 1.0 + want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(interior / scale <= TOL, "{what}: interior relative error {:e}", interior / scale);
        assert!(
            edge_vs_tract_model / scale <= TOL,
            "{what}: tract's low-edge rows no longer extrapolate ({:e}); tract may have been fixed, \
             compare the whole tensor",
            edge_vs_tract_model / scale
        );
    }
}

#[test]
fn concat_add_gated_add() {
    let mut rng = Rng::new(7);
    check_single("concat3", Op::Concat, &[[3, 17, 23], [1, 17, 23], [4, 17, 23]], 700);
    check_single("concat1", Op::Concat, &[[3, 17, 23]], 701);
    check_single("add", Op::Add, &[[5, 17, 23], [5, 17, 23]], 702);
    check_single("gated_add", Op::GatedAdd { alpha: vec1(&mut rng, 5, -1.0, 1.5) }, &[[5, 17, 23], [5, 17, 23]], 703);
}

#[test]
fn pixel_shuffle() {
    check_single("shuffle2", Op::PixelShuffle { factor: 2 }, &[[12, 17, 23]], 800);
    check_single("shuffle3", Op::PixelShuffle { factor: 3 }, &[[18, 7, 5]], 801);
    check_single("shuffle4", Op::PixelShuffle { factor: 4 }, &[[32, 5, 9]], 802);
    check_single("shuffle1", Op::PixelShuffle { factor: 1 }, &[[3, 5, 9]], 803);
}

/// Which `Add` / `GatedAdd` follows the convolution, and so which residual the fusion makes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Res {
    None,
    Add,
    /// conv is the gated add's `x`: `alpha (.) skip + conv`
    GateResidual,
    /// conv is the gated add's `skip`: `alpha (.) conv + x`
    GateConv,
}

/// `input -> conv -> bn -> act -> (add / gated add with a pooled input) -> post act`, built with
/// the graph builder (random batch-norm statistics and biases).
fn epilogue_graph(act: Act, res: Res, post: Act, seed: u64) -> Graph {
    let mut b = GraphBuilder::new(seed);
    b.random_norm_stats = true;
    let x = b.input("input", [4, 17, 23]).unwrap();
    // The other operand is not a convolution, so the fusion can only pick the conv.
    let other = b.max_pool("other", x, 3, 1, 1).unwrap();
    let mut y = b.conv("main", x, ConvSpec::new(4, 3).stride(1)).unwrap();
    y = b.batch_norm("main.bn", y).unwrap();
    y = match act {
        Act::None => y,
        Act::Relu => b.relu("main.relu", y).unwrap(),
        Act::Sigmoid => b.sigmoid("main.sigmoid", y).unwrap(),
    };
    y = match res {
        Res::None => y,
        Res::Add => b.add("add", y, other).unwrap(),
        Res::GateResidual => b.gated_add("gate", other, y, 0.7).unwrap(),
        Res::GateConv => b.gated_add("gate", y, other, 0.7).unwrap(),
    };
    y = match post {
        Act::None => y,
        Act::Relu => b.relu("post.relu", y).unwrap(),
        Act::Sigmoid => b.sigmoid("post.sigmoid", y).unwrap(),
    };
    b.finish(vec![y]).unwrap()
}

#[test]
fn every_fused_epilogue() {
    let acts = [Act::None, Act::Relu, Act::Sigmoid];
    let mut seed = 900;
    for act in acts {
        for res in [Res::None, Res::Add, Res::GateResidual, Res::GateConv] {
            for post in acts {
                seed += 1;
                let what = format!("epilogue act={act:?} res={res:?} post={post:?}");
                let g = epilogue_graph(act, res, post, seed);
                let fused = optimize_for_inference(&g);
                // The fusion did what this case is about: one conv carrying the epilogue.
                let convs: Vec<&Conv2d> =
                    fused.nodes.iter().filter_map(|n| if let Op::Conv2d(c) = &n.op { Some(c) } else { None }).collect();
                assert_eq!(convs.len(), 1, "{what}");
                let e = &convs[0].epilogue;
                // Without a residual, a lone post activation becomes the conv's activation and a
                // second one stays a node of its own.
                let want_act = if res == Res::None && act == Act::None { post } else { act };
                assert_eq!(e.act, want_act, "{what}: act");
                let got_res = match &e.residual {
                    None => Res::None,
                    Some(Residual::Add) => Res::Add,
                    Some(Residual::GateResidual(_)) => Res::GateResidual,
                    Some(Residual::GateConv(_)) => Res::GateConv,
                };
                assert_eq!(got_res, res, "{what}: residual");
                if res != Res::None {
                    assert_eq!(e.post_act, post, "{what}: post act");
                    assert_eq!(fused.nodes.len(), 3, "{what}: input, pool, fused conv");
                }
                check_graph(&format!("{what} (unfused)"), &g, 2, false, seed);
                check_graph(&format!("{what} (fused)"), &fused, 2, false, seed);
            }
        }
    }
}

/// Post activation straight after a plain conv activation (`post_act` without a residual can
/// only come from a hand-built epilogue), and the raw epilogue fields on a conv with a separate
/// residual input, built without the passes.
#[test]
fn hand_built_epilogues() {
    let mut rng = Rng::new(11);
    let c = ConvCase { cin: 3, cout: 6, k: [3, 3], stride: [2, 2], pad: [1, 1], dil: [1, 1], groups: 1, bias: true };
    let acts = [Act::None, Act::Relu, Act::Sigmoid];
    let mut seed = 1000;
    for act in acts {
        for post in acts {
            for res in 0..4 {
                seed += 1;
                let Op::Conv2d(mut conv) = conv_op(&mut rng, &c) else { unreachable!() };
                conv.epilogue = Epilogue {
                    act,
                    residual: match res {
                        0 => None,
                        1 => Some(Residual::Add),
                        2 => Some(Residual::GateResidual(vec1(&mut rng, 6, -1.0, 1.0))),
                        _ => Some(Residual::GateConv(vec1(&mut rng, 6, -1.0, 1.0))),
                    },
                    post_act: post,
                };
                let mut g = Graph::new();
                let x = g.push("x", Op::Input { chw: [3, 17, 23] }, vec![]).unwrap();
                let mut ins = vec![x];
                if res != 0 {
                    // The residual has the conv's output shape (stride 2: 9 x 12).
                    ins.push(g.push("r", Op::Input { chw: [6, 9, 12] }, vec![]).unwrap());
                }
                let y = g.push("y", Op::Conv2d(conv), ins).unwrap();
                g.outputs = vec![y];
                check_graph(&format!("hand epilogue act={act:?} res={res} post={post:?}"), &g, 2, false, seed);
            }
        }
    }
}

fn model_graph(name: &str) -> Graph {
    let cfg = wgpose::models::config(name).unwrap();
    let m = cfg.size_multiple().max(64);
    cfg.with_input([cfg.input[0], m, m]).build(5).unwrap()
}

#[test]
fn model_sghg() {
    let g = model_graph("sghg-1x64-lsp");
    let e1 = check_graph("sghg-1x64-lsp", &g, 1, false, 41);
    let e2 = check_graph("sghg-1x64-lsp (optimised)", &optimize_for_inference(&g), 2, true, 42);
    eprintln!("sghg-1x64-lsp: relative error {e1:e} unoptimised, {e2:e} optimised");
}

#[test]
fn model_fasterpose() {
    let g = model_graph("fasterpose-r18-s16-lsp");
    let e1 = check_graph("fasterpose-r18-s16-lsp", &g, 1, false, 43);
    let e2 = check_graph("fasterpose-r18-s16-lsp (optimised)", &optimize_for_inference(&g), 2, true, 44);
    eprintln!("fasterpose-r18-s16-lsp: relative error {e1:e} unoptimised, {e2:e} optimised");
}

/// ldcrn fuses its branches with bilinear upsampling, which tract gets wrong at the low edge (see
/// the module docs), so the tract comparison runs on a copy whose bilinear nodes are nearest
/// upsampling: every other operator and the whole structure still go through tract. The real
/// graph (bilinear included) is compared in onnxruntime by `dump_for_onnxruntime`.
#[test]
fn model_ldcrn() {
    let g = model_graph("ldcrn-w16-lsp");
    let bilinear = g.nodes.iter().filter(|n| matches!(n.op, Op::UpsampleBilinear { .. })).count();
    assert!(bilinear > 0, "ldcrn is expected to contain bilinear upsampling");
    let mut g_nearest = g.clone();
    for n in &mut g_nearest.nodes {
        if let Op::UpsampleBilinear { factor } = n.op {
            n.op = Op::UpsampleNearest { factor };
        }
    }
    let e1 = check_graph("ldcrn-w16-lsp (bilinear -> nearest)", &g_nearest, 1, false, 45);
    let e2 =
        check_graph("ldcrn-w16-lsp (bilinear -> nearest, optimised)", &optimize_for_inference(&g_nearest), 2, true, 46);
    eprintln!("ldcrn-w16-lsp (bilinear -> nearest): relative error {e1:e} unoptimised, {e2:e} optimised");
    // The real graph still loads and runs in tract, with the expected output shape.
    let x = rand_tensor(&mut Rng::new(47), &[1, 3, 64, 64]);
    let want = cpu::run(&g, std::slice::from_ref(&x)).unwrap();
    let got = run_tract(&onnx::export(&optimize_for_inference(&g), None).unwrap(), &[x]);
    assert_eq!(got[0].shape, want[0].shape);
}

/// An exported file can be read back: tract parses the `ModelProto`, whose fields are the
/// documented ones, and the model built from the file runs.
#[test]
fn file_round_trip() {
    let g = optimize_for_inference(&model_graph("sghg-1x64-lsp"));
    let dir = std::env::temp_dir().join(format!("wgpose-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sghg.onnx");
    onnx::export_to_file(&g, None, &path).unwrap();
    let proto: pb::ModelProto = tract_onnx::onnx().proto_model_for_path(&path).unwrap();
    assert_eq!(proto.ir_version, onnx::IR_VERSION);
    assert_eq!(proto.producer_name, "wgpose");
    assert_eq!(proto.opset_import.len(), 1);
    assert_eq!(proto.opset_import[0].domain, "");
    assert_eq!(proto.opset_import[0].version, onnx::OPSET_VERSION);
    let graph = proto.graph.as_ref().unwrap();
    assert_eq!(graph.input.len(), 1);
    assert_eq!(graph.input[0].name, "input");
    assert_eq!(onnx::input_names(&g), ["input"]);
    let out_names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let want_out: Vec<String> = g.outputs.iter().map(|&o| g.nodes[o].name.clone()).collect();
    assert_eq!(out_names, want_out);
    assert_eq!(onnx::output_names(&g), want_out);
    let dims = |vi: &pb::ValueInfoProto| -> Vec<String> {
        let Some(pb::type_proto::Value::TensorType(t)) = &vi.r#type.as_ref().unwrap().value else {
            panic!("{} is not a tensor", vi.name)
        };
        assert_eq!(t.elem_type, 1);
        t.shape
            .as_ref()
            .unwrap()
            .dim
            .iter()
            .map(|d| match d.value.as_ref().unwrap() {
                pb::tensor_shape_proto::dimension::Value::DimValue(v) => v.to_string(),
                pb::tensor_shape_proto::dimension::Value::DimParam(p) => p.clone(),
            })
            .collect()
    };
    assert_eq!(dims(&graph.input[0]), ["N", "3", "64", "64"]);
    assert_eq!(dims(&graph.output[0]), ["N", "14", "16", "16"]);
    // Initializers are named after their nodes; every conv weight is there.
    let inits: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    for n in &g.nodes {
        if let Op::Conv2d(c) = &n.op {
            assert!(inits.contains(format!("{}.weight", n.name).as_str()), "{}.weight", n.name);
            assert_eq!(c.bias.is_some(), inits.contains(format!("{}.bias", n.name).as_str()));
        }
    }
    for t in &graph.initializer {
        assert_eq!(t.data_type, 1);
        assert_eq!(t.raw_data.len(), 4 * t.dims.iter().product::<i64>() as usize, "{}", t.name);
    }
    // Nodes are named after the tensor they produce, and names are unique.
    let mut seen = std::collections::HashSet::new();
    for n in &graph.node {
        assert_eq!(n.output.len(), 1);
        assert_eq!(n.name, n.output[0]);
        assert!(seen.insert(n.name.clone()), "duplicate node {}", n.name);
    }
    // The model built from the file runs (at a batch the file did not fix).
    let model = tract_onnx::onnx().model_for_path(&path).unwrap().into_optimized().unwrap().into_runnable().unwrap();
    let x = rand_tensor(&mut Rng::new(3), &[3, 3, 64, 64]);
    let out = model.run(tvec!(tract_onnx::prelude::Tensor::from_shape(&x.shape, &x.data).unwrap().into())).unwrap();
    assert_eq!(out[0].shape(), [3, 14, 16, 16]);

    // A fixed batch is written as a dimension value.
    let bytes = onnx::export(&g, Some(4)).unwrap();
    let proto = tract_onnx::onnx().proto_model_for_read(&mut Cursor::new(&bytes)).unwrap();
    assert_eq!(dims(&proto.graph.as_ref().unwrap().input[0]), ["4", "3", "64", "64"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// Names that need sanitising, clashing names, an output that is an input, and a node listed
/// twice as an output.
#[test]
fn naming_edge_cases() {
    let mut g = Graph::new();
    let x = g.push("image in", Op::Input { chw: [2, 5, 7] }, vec![]).unwrap();
    let a = g.push("relu\"1", Op::Activation(Act::Relu), vec![x]).unwrap();
    let b = g.push("input", Op::Activation(Act::Sigmoid), vec![a]).unwrap();
    let c = g.push("", Op::Add, vec![a, b]).unwrap();
    g.outputs = vec![c, b, x, c];
    let ins = onnx::input_names(&g);
    let outs = onnx::output_names(&g);
    assert_eq!(ins, ["input"]);
    assert_eq!(outs, ["node3", "input_1", "image_in", "node3_1"]);
    let mut rng = Rng::new(9);
    let xin = rand_tensor(&mut rng, &[2, 2, 5, 7]);
    let want = cpu::run(&g, std::slice::from_ref(&xin)).unwrap();
    let got = run_tract(&onnx::export(&g, None).unwrap(), &[xin]);
    assert_eq!(got.len(), 4);
    for (k, (gt, w)) in got.iter().zip(&want).enumerate() {
        assert!(rel_err(gt, w) <= TOL, "output {k}");
    }
    // Two inputs: named after their nodes.
    let mut g = Graph::new();
    let p = g.push("left", Op::Input { chw: [2, 5, 7] }, vec![]).unwrap();
    let q = g.push("right/img", Op::Input { chw: [2, 5, 7] }, vec![]).unwrap();
    let s = g.push("sum", Op::Add, vec![p, q]).unwrap();
    g.outputs = vec![s];
    assert_eq!(onnx::input_names(&g), ["left", "right/img"]);
    check_graph("two inputs", &g, 1, false, 10);
}

#[test]
fn export_errors() {
    let g = model_graph("sghg-1x64-lsp");
    assert!(matches!(onnx::export(&g, Some(0)), Err(wgpose::Error::Input(_))));
    let bad = std::env::temp_dir().join("wgpose-no-such-dir").join("x").join("m.onnx");
    assert!(matches!(onnx::export_to_file(&g, None, &bad), Err(wgpose::Error::Io { .. })));
    // Parameter data that does not match its shape is refused rather than written.
    let mut broken = g.clone();
    let Some(Op::Conv2d(c)) = broken.nodes.iter_mut().map(|n| &mut n.op).find(|op| matches!(op, Op::Conv2d(_))) else {
        unreachable!()
    };
    c.weight.data.pop();
    assert!(onnx::export(&broken, None).is_err());
    let empty = Graph::new();
    assert!(onnx::export(&empty, None).is_err());
}

/// Writes `<dir>/<case>.onnx`, `<case>.input.npy` and `<case>.expected.npy` (the first output of
/// `cpu::run` on that input) for the three small models (unoptimised and optimised), single-op
/// graphs of the ops whose ONNX attributes matter most (bilinear and nearest `Resize`, padded
/// `MaxPool`, `DepthToSpace`, grouped / dilated `Conv`) and every fused epilogue, then runs
/// `scripts/onnx_parity.py` on each when python3 can import onnxruntime. This is where bilinear
/// upsampling is compared on the whole tensor (see the module docs). Opt-in:
/// `WGPOSE_ONNX_DUMP=/some/dir cargo test --release --test onnx_export -- --ignored dump`
/// (python3 on the PATH must have `pip install onnxruntime numpy`).
#[test]
#[ignore = "writes files and needs python3 with onnxruntime; see the doc comment"]
fn dump_for_onnxruntime() {
    let dir = std::path::PathBuf::from(
        std::env::var("WGPOSE_ONNX_DUMP")
            .unwrap_or_else(|_| std::env::temp_dir().join("wgpose-onnx-dump").display().to_string()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let have_ort = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);

    let mut cases: Vec<(String, Graph)> = Vec::new();
    for name in ["sghg-1x64-lsp", "fasterpose-r18-s16-lsp", "ldcrn-w16-lsp"] {
        let g = model_graph(name);
        cases.push((format!("{name}.opt"), optimize_for_inference(&g)));
        cases.push((name.to_string(), g));
    }
    for f in [2, 3, 4] {
        cases.push((format!("up_bilinear{f}"), single("up", Op::UpsampleBilinear { factor: f }, &[[3, 17, 23]])));
        cases.push((format!("up_nearest{f}"), single("up", Op::UpsampleNearest { factor: f }, &[[3, 17, 23]])));
    }
    let pool = Op::MaxPool { kernel: [3, 3], stride: [2, 2], padding: [1, 1] };
    cases.push(("pool3s2p1".into(), single("pool", pool, &[[3, 17, 23]])));
    cases.push(("shuffle3".into(), single("shuffle", Op::PixelShuffle { factor: 3 }, &[[18, 7, 5]])));
    let mut rng = Rng::new(77);
    let base = ConvCase { cin: 6, cout: 9, k: [3, 3], stride: [2, 2], pad: [2, 2], dil: [2, 2], groups: 3, bias: true };
    cases.push(("conv.groups3.s2.d2".into(), single("conv", conv_op(&mut rng, &base), &[[6, 17, 23]])));
    let dw = ConvCase { cout: 6, groups: 6, stride: [1, 1], dil: [1, 1], pad: [1, 1], ..base };
    cases.push(("conv.depthwise".into(), single("conv", conv_op(&mut rng, &dw), &[[6, 17, 23]])));
    let acts = [Act::None, Act::Relu, Act::Sigmoid];
    for act in acts {
        for res in [Res::None, Res::Add, Res::GateResidual, Res::GateConv] {
            for post in acts {
                let g = optimize_for_inference(&epilogue_graph(act, res, post, 5));
                cases.push((format!("epilogue.{act:?}.{res:?}.{post:?}"), g));
            }
        }
    }

    let mut failed = Vec::new();
    for (k, (stem, g)) in cases.iter().enumerate() {
        let Op::Input { chw: [c, h, w] } = g.nodes[g.inputs()[0]].op else { unreachable!() };
        let x = rand_tensor(&mut Rng::new(60 + k as u64), &[2, c, h, w]);
        let y = cpu::run(g, std::slice::from_ref(&x)).unwrap().remove(0);
        let model = dir.join(format!("{stem}.onnx"));
        onnx::export_to_file(g, None, &model).unwrap();
        write_npy(&dir.join(format!("{stem}.input.npy")), &x);
        write_npy(&dir.join(format!("{stem}.expected.npy")), &y);
        if have_ort {
            eprintln!("{stem}:");
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/onnx_parity.py");
            let status = std::process::Command::new("python3")
                .arg(script)
                .arg(&model)
                .arg(dir.join(format!("{stem}.input.npy")))
                .arg(dir.join(format!("{stem}.expected.npy")))
                .status()
                .unwrap();
            if !status.success() {
                failed.push(stem.clone());
            }
        }
    }
    assert!(failed.is_empty(), "onnx_parity.py failed on {failed:?}");
    if !have_ort {
        eprintln!("python3 cannot import onnxruntime + numpy: files written to {}, parity not run", dir.display());
    }
}

/// A little-endian f32 `.npy` (format 1.0) of `t`.
fn write_npy(path: &std::path::Path, t: &Tensor) {
    let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 { format!("({},)", shape[0]) } else { format!("({})", shape.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in &t.data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Every named configuration at its own input size exports (unoptimised and optimised) into a
/// model tract parses, storing at least every parameter.
#[test]
fn every_config_exports() {
    for cfg in wgpose::models::configs() {
        let g = cfg.build(1).unwrap();
        for (what, g) in [("", g.clone()), (" (optimised)", optimize_for_inference(&g))] {
            let bytes = onnx::export(&g, None).unwrap_or_else(|e| panic!("{}{what}: {e}", cfg.name));
            let proto = tract_onnx::onnx()
                .proto_model_for_read(&mut Cursor::new(&bytes))
                .unwrap_or_else(|e| panic!("{}{what}: tract cannot parse: {e:?}", cfg.name));
            let graph = proto.graph.unwrap();
            let stored: usize = graph.initializer.iter().map(|t| t.raw_data.len()).sum();
            // Parameters plus running statistics plus the 4-float Resize scales.
            assert!(stored >= 4 * g.param_count(), "{}{what}", cfg.name);
            assert_eq!(graph.output.len(), cfg.num_outputs(), "{}{what}", cfg.name);
            eprintln!("{}{what}: {} nodes, {} bytes", cfg.name, graph.node.len(), bytes.len());
        }
    }
}
