//! Every WGSL kernel against the plain-Rust reference (`cpu::reference`) on random inputs with
//! awkward shapes: sizes that are not multiples of the workgroup or tile sizes, channels not a
//! multiple of 4, groups, depthwise, stride 2 on odd sizes, dilation, batch > 1.
//!
//! Tolerance: |gpu - ref| <= 1e-4 * (1 + max |ref|). The GPU sums in f32 in a different order
//! than the reference, so exact equality is not expected; 1e-4 is ~1000 ulps at the scale of
//! the outputs, far below any indexing or padding bug.

mod common;

use common::{assert_close, gpu, random_tensor};
use wgpose::gpu::{GpuContext, GpuModel};
use wgpose::graph::{Act, BatchNorm, Conv2d, Epilogue, Graph, Op, Residual};
use wgpose::rng::Rng;
use wgpose::Tensor;

const TOL: f32 = 1e-4;

fn vec_param(rng: &mut Rng, c: usize, lo: f32, hi: f32) -> Tensor {
    Tensor::new(vec![c], rng.vec(c, lo, hi)).unwrap()
}

/// Graph with one input per shape in `inputs` and one node of `op` reading them all.
fn single_op(inputs: &[[usize; 4]], op: Op) -> Graph {
    let mut g = Graph::new();
    let ids: Vec<usize> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| g.push(format!("in{i}"), Op::Input { chw: [s[1], s[2], s[3]] }, vec![]).unwrap())
        .collect();
    let y = g.push("op", op, ids).unwrap();
    g.outputs = vec![y];
    g
}

/// Runs `g` on the GPU against the reference, once with the plain kernels and, on a device
/// with subgroups of at least 4 invocations, once more with the subgroup kernels.
fn check(ctx: &GpuContext, what: &str, g: &Graph, batch: usize, seed: u64) {
    let inputs = common::random_inputs(g, batch, seed);
    let want = wgpose::cpu::reference::run(g, &inputs).unwrap();
    for subgroups in [false, true] {
        if subgroups && !ctx.subgroup_kernels {
            continue;
        }
        let what = format!("{what} (subgroup kernels: {subgroups})");
        let mut ctx = ctx.clone();
        ctx.subgroup_kernels = subgroups;
        let mut m = GpuModel::compile_with(&ctx, g, batch).unwrap_or_else(|e| panic!("{what}: {e}"));
        let got = m.run(&inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
        for (a, b) in got.iter().zip(&want) {
            assert_close(&what, a, b, TOL);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_op(
    rng: &mut Rng,
    cin: usize,
    cout: usize,
    k: [usize; 2],
    stride: usize,
    pad: usize,
    dil: usize,
    groups: usize,
    bias: bool,
) -> Conv2d {
    let cin_g = cin / groups;
    Conv2d {
        weight: random_tensor(rng, &[cout, cin_g, k[0], k[1]]),
        bias: bias.then(|| vec_param(rng, cout, -0.5, 0.5)),
        stride: [stride, stride],
        padding: [pad, pad],
        dilation: [dil, dil],
        groups,
        epilogue: Epilogue::default(),
    }
}

#[test]
fn conv2d_matches_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(1);
    // (input NCHW, cout, kernel, stride, pad, dilation, groups, bias)
    #[allow(clippy::type_complexity)] // a case table, its fields named in the line above
    let cases: &[([usize; 4], usize, [usize; 2], usize, usize, usize, usize, bool)] = &[
        ([1, 3, 17, 23], 5, [3, 3], 1, 1, 1, 1, true),
        ([2, 6, 9, 11], 12, [3, 3], 2, 1, 1, 2, false),
        ([1, 8, 13, 13], 8, [3, 3], 1, 1, 1, 8, true),   // depthwise
        ([2, 6, 10, 7], 6, [3, 3], 2, 1, 1, 6, false),   // depthwise, stride 2
        ([1, 3, 33, 31], 16, [7, 7], 2, 3, 1, 1, true),  // stem
        ([2, 5, 21, 30], 20, [7, 7], 2, 3, 1, 1, false), // stem: 15 wide, two channel blocks
        ([1, 4, 13, 17], 16, [7, 7], 2, 0, 1, 1, true),  // 7x7 stride 2, no padding
        ([1, 24, 15, 15], 16, [7, 7], 2, 3, 1, 1, true), // 7x7 stride 2 over 2 input chunks
        ([1, 3, 12, 14], 16, [5, 5], 2, 2, 1, 1, true),  // 5x5 stride 2
        ([1, 4, 9, 10], 18, [2, 2], 2, 1, 1, 1, false),  // even kernel, stride 2
        ([1, 4, 9, 11], 16, [1, 3], 2, 1, 1, 1, true),   // 1x3 stride 2 with padding
        ([1, 6, 7, 9], 16, [1, 1], 2, 1, 1, 1, true),    // 1x1 stride 2 with padding
        ([1, 10, 7, 9], 9, [1, 1], 1, 0, 1, 1, true),
        ([1, 5, 12, 10], 7, [3, 3], 1, 2, 2, 1, true), // dilation 2
        ([2, 4, 6, 6], 4, [5, 5], 1, 0, 1, 1, true),
        ([1, 4, 9, 8], 6, [1, 3], 1, 0, 1, 2, true),      // non-square kernel
        ([1, 12, 5, 5], 3, [3, 3], 2, 0, 1, 3, true),     // groups with 1 output per group
        ([1, 16, 19, 21], 33, [3, 3], 1, 1, 1, 1, true),  // cout not a multiple of 8
        ([1, 130, 9, 10], 40, [3, 3], 1, 1, 1, 1, true),  // weights split over 2 input chunks
        ([2, 1100, 3, 5], 20, [1, 1], 1, 0, 1, 1, false), // 1x1 split over 2 input chunks
        ([1, 64, 6, 7], 80, [3, 3], 2, 1, 1, 2, true),    // groups on the tiled path, several blocks
        ([1, 2, 40, 3], 16, [3, 3], 1, 1, 1, 1, true),    // narrower than one pixel tile
        ([1, 7, 5, 13], 17, [3, 3], 1, 1, 1, 1, true),    // 13 = three pixel tiles + 1
        ([2, 9, 4, 16], 20, [3, 3], 1, 0, 1, 1, false),   // no padding: 14 wide
        ([1, 5, 13, 19], 20, [3, 3], 2, 1, 1, 1, true),   // 3x3 stride 2 on odd sizes: 10 wide
        ([2, 3, 8, 11], 16, [3, 3], 2, 0, 1, 1, false),   // 3x3 stride 2, no padding
        ([1, 130, 7, 9], 24, [3, 3], 2, 1, 1, 1, true),   // 3x3 stride 2 over 2 input chunks
        ([1, 10, 9, 11], 12, [1, 1], 2, 0, 1, 1, true),   // 1x1 stride 2 on odd sizes (downsample)
        ([2, 1100, 5, 7], 20, [1, 1], 2, 0, 1, 1, false), // 1x1 stride 2 over 2 input chunks
        ([1, 6, 10, 13], 9, [1, 1], 3, 0, 1, 1, true),    // 1x1 stride 3
    ];
    for (i, &(s, cout, k, st, p, d, g, bias)) in cases.iter().enumerate() {
        let op = Op::Conv2d(conv_op(&mut rng, s[1], cout, k, st, p, d, g, bias));
        check(&ctx, &format!("conv case {i} {s:?}"), &single_op(&[s], op), s[0], i as u64);
    }
}

#[test]
fn conv2d_epilogues_match_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(2);
    let s = [2, 5, 11, 13];
    let out = [2, 10, 11, 13];
    let acts = [Act::None, Act::Relu, Act::Sigmoid];
    let mut case = 0;
    for &act in &acts {
        for res in 0..4 {
            for &post in &acts {
                if res == 0 && post != Act::None {
                    continue;
                }
                let mut c = conv_op(&mut rng, 5, 10, [3, 3], 1, 1, 1, 1, true);
                c.epilogue = Epilogue {
                    act,
                    residual: match res {
                        0 => None,
                        1 => Some(Residual::Add),
                        2 => Some(Residual::GateResidual(vec_param(&mut rng, 10, -1.0, 1.0))),
                        _ => Some(Residual::GateConv(vec_param(&mut rng, 10, -1.0, 1.0))),
                    },
                    post_act: post,
                };
                let ins: Vec<[usize; 4]> = if res == 0 { vec![s] } else { vec![s, out] };
                check(&ctx, &format!("epilogue {act:?} {res} {post:?}"), &single_op(&ins, Op::Conv2d(c)), 2, case);
                // Depthwise path with the same epilogue.
                case += 1;
            }
        }
    }
}

#[test]
fn elementwise_ops_match_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(3);
    let s = [2, 7, 9, 13];
    let c = s[1];
    let bn = BatchNorm {
        gamma: vec_param(&mut rng, c, 0.5, 1.5),
        beta: vec_param(&mut rng, c, -0.5, 0.5),
        mean: vec_param(&mut rng, c, -0.5, 0.5),
        var: vec_param(&mut rng, c, 0.5, 2.0),
        eps: 1e-5,
    };
    let ops = vec![
        ("batch_norm", vec![s], Op::BatchNorm(bn)),
        (
            "affine_relu",
            vec![s],
            Op::ChannelAffine {
                scale: vec_param(&mut rng, c, -2.0, 2.0),
                shift: vec_param(&mut rng, c, -1.0, 1.0),
                act: Act::Relu,
            },
        ),
        ("relu", vec![s], Op::Activation(Act::Relu)),
        ("sigmoid", vec![s], Op::Activation(Act::Sigmoid)),
        ("add", vec![s, s], Op::Add),
        ("gated_add", vec![s, s], Op::GatedAdd { alpha: vec_param(&mut rng, c, -1.0, 1.0) }),
        ("concat_copies", vec![s, [2, 3, 9, 13], [2, 1, 9, 13]], Op::Concat),
        ("big_relu", vec![[1, 3, 301, 307]], Op::Activation(Act::Relu)), // more than 256 x 1024 elements
    ];
    for (i, (name, ins, op)) in ops.into_iter().enumerate() {
        check(&ctx, name, &single_op(&ins, op), ins[0][0], 100 + i as u64);
    }
}

#[test]
fn pooling_and_resampling_match_reference() {
    let Some(ctx) = gpu() else { return };
    let cases = vec![
        ("max_pool_3s2p1", [1, 5, 17, 23], Op::MaxPool { kernel: [3, 3], stride: [2, 2], padding: [1, 1] }),
        ("max_pool_2s2_odd", [2, 3, 9, 11], Op::MaxPool { kernel: [2, 2], stride: [2, 2], padding: [0, 0] }),
        ("max_pool_3s1p1", [1, 4, 6, 5], Op::MaxPool { kernel: [3, 3], stride: [1, 1], padding: [1, 1] }),
        ("nearest_x2", [1, 3, 5, 7], Op::UpsampleNearest { factor: 2 }),
        ("nearest_x3", [2, 2, 4, 3], Op::UpsampleNearest { factor: 3 }),
        ("bilinear_x2", [2, 3, 5, 7], Op::UpsampleBilinear { factor: 2 }),
        ("bilinear_x4", [1, 2, 3, 6], Op::UpsampleBilinear { factor: 4 }),
        ("pixel_shuffle_2", [1, 12, 5, 7], Op::PixelShuffle { factor: 2 }),
        ("pixel_shuffle_3", [2, 18, 3, 4], Op::PixelShuffle { factor: 3 }),
    ];
    for (i, (name, s, op)) in cases.into_iter().enumerate() {
        check(&ctx, name, &single_op(&[s], op), s[0], 200 + i as u64);
    }
}

/// A channel affine (an unfoldable batch norm, with or without its ReLU) read only by a
/// convolution is applied by the convolution as it loads its input, on every tiled kernel
/// (3x3, 1x1 at strides 1 and 2, the generic one, input chunks split over two weight windows):
/// checked against the reference, with the affine counted as fused. Padding must stay zero
/// after the affine (the shifts are nonzero, so a padding that went through it would show).
#[test]
fn input_affines_fused_into_convolutions_match_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(4);
    // (input NCHW, cout, kernel, stride, pad, groups, affine activation)
    #[allow(clippy::type_complexity)] // a case table, its fields named in the line above
    let cases: &[([usize; 4], usize, [usize; 2], usize, usize, usize, Act)] = &[
        ([2, 5, 11, 13], 10, [3, 3], 1, 1, 1, Act::Relu),
        ([1, 7, 9, 6], 17, [3, 3], 1, 1, 1, Act::None),
        ([1, 6, 13, 11], 16, [3, 3], 2, 1, 1, Act::Relu), // generic kernel, stride 2
        ([2, 9, 7, 9], 12, [1, 1], 1, 0, 1, Act::Relu),
        ([1, 10, 9, 11], 20, [1, 1], 2, 0, 1, Act::None),
        ([1, 6, 7, 9], 16, [1, 1], 1, 1, 1, Act::Relu), // 1x1 with padding: generic kernel
        ([1, 130, 7, 9], 24, [3, 3], 1, 1, 1, Act::Relu), // two input chunks
        ([1, 64, 6, 7], 80, [3, 3], 1, 1, 2, Act::Relu), // groups
        ([1, 3, 33, 31], 16, [7, 7], 2, 3, 1, Act::None),
    ];
    for (i, &(s, cout, k, st, p, groups, act)) in cases.iter().enumerate() {
        let mut g = Graph::new();
        let x = g.push("x", Op::Input { chw: [s[1], s[2], s[3]] }, vec![]).unwrap();
        let affine = Op::ChannelAffine {
            scale: vec_param(&mut rng, s[1], -2.0, 2.0),
            shift: vec_param(&mut rng, s[1], 0.2, 1.0),
            act,
        };
        let a = g.push("bn", affine, vec![x]).unwrap();
        let conv = conv_op(&mut rng, s[1], cout, k, st, p, 1, groups, true);
        let y = g.push("conv", Op::Conv2d(conv), vec![a]).unwrap();
        g.outputs = vec![y];
        let what = format!("input affine case {i} {s:?}");
        check(&ctx, &what, &g, s[0], 300 + i as u64);
        let m = GpuModel::compile_with(&ctx, &g, s[0]).unwrap();
        assert_eq!(m.fused_input_affines, 1, "{what}");
    }
}

/// The input affine's input must stay alive until the convolution that absorbed the affine has
/// run, even when another node runs in between (the memory plan takes its lifetimes from what
/// the kernels read, not from the graph's edges). An affine read twice is not absorbed.
#[test]
fn input_affine_lifetimes_and_shared_affines() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(5);
    let s = [1, 8, 9, 11];
    let affine = |rng: &mut Rng| Op::ChannelAffine {
        scale: vec_param(rng, 8, 0.5, 2.0),
        shift: vec_param(rng, 8, -1.0, 1.0),
        act: Act::Relu,
    };
    // x -> bn -> (relu of another input, free to take x's memory if x died at bn) -> conv(bn) + it
    let mut g = Graph::new();
    let x = g.push("x", Op::Input { chw: [8, 9, 11] }, vec![]).unwrap();
    let x2 = g.push("x2", Op::Input { chw: [8, 9, 11] }, vec![]).unwrap();
    let a = g.push("bn", affine(&mut rng), vec![x]).unwrap();
    let b = g.push("relu", Op::Activation(Act::Sigmoid), vec![x2]).unwrap();
    let b2 = g.push("relu2", Op::Activation(Act::Relu), vec![b]).unwrap();
    let mut conv = conv_op(&mut rng, 8, 8, [3, 3], 1, 1, 1, 1, true);
    conv.epilogue.residual = Some(Residual::Add);
    let y = g.push("conv", Op::Conv2d(conv), vec![a, b2]).unwrap();
    g.outputs = vec![y];
    check(&ctx, "affine with a node between it and its convolution", &g, 1, 400);
    assert_eq!(GpuModel::compile_with(&ctx, &g, 1).unwrap().fused_input_affines, 1);

    // An affine read by a convolution and also a graph output stays a pass of its own.
    let mut g = Graph::new();
    let x = g.push("x", Op::Input { chw: [s[1], s[2], s[3]] }, vec![]).unwrap();
    let a = g.push("bn", affine(&mut rng), vec![x]).unwrap();
    let y = g.push("conv", Op::Conv2d(conv_op(&mut rng, 8, 16, [3, 3], 1, 1, 1, 1, false)), vec![a]).unwrap();
    g.outputs = vec![y, a];
    check(&ctx, "affine also an output", &g, 1, 401);
    assert_eq!(GpuModel::compile_with(&ctx, &g, 1).unwrap().fused_input_affines, 0);

    // Turned off on the context: same outputs, nothing fused.
    let mut off = ctx.clone();
    off.fuse_input_affines = false;
    let mut g = Graph::new();
    let x = g.push("x", Op::Input { chw: [s[1], s[2], s[3]] }, vec![]).unwrap();
    let a = g.push("bn", affine(&mut rng), vec![x]).unwrap();
    let y = g.push("conv", Op::Conv2d(conv_op(&mut rng, 8, 16, [3, 3], 1, 1, 1, 1, false)), vec![a]).unwrap();
    g.outputs = vec![y];
    check(&off, "fusion off", &g, 1, 402);
    assert_eq!(GpuModel::compile_with(&off, &g, 1).unwrap().fused_input_affines, 0);
}

/// A dense block whose concatenations are views of the last one's prefixes (the memory plan,
/// `dense_block_concatenations_are_prefix_views` in tests/memory_plan.rs), with a batch norm +
/// ReLU before each layer's convolution (absorbed into it) and batch 2 (the views' batch stride
/// is the whole block's): against the reference.
#[test]
fn dense_block_with_prefix_views_matches_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(6);
    let mut g = Graph::new();
    let x = g.push("x", Op::Input { chw: [5, 9, 11] }, vec![]).unwrap();
    let x = g.push("stem", Op::Conv2d(conv_op(&mut rng, 5, 6, [3, 3], 1, 1, 1, 1, true)), vec![x]).unwrap();
    let mut feats = vec![x];
    let mut c = 6;
    for i in 0..3 {
        let input = if i == 0 { x } else { g.push(format!("cat{i}"), Op::Concat, feats.clone()).unwrap() };
        let bn = Op::ChannelAffine {
            scale: vec_param(&mut rng, c, 0.5, 2.0),
            shift: vec_param(&mut rng, c, -1.0, 1.0),
            act: Act::Relu,
        };
        let a = g.push(format!("bn{i}"), bn, vec![input]).unwrap();
        let side =
            g.push(format!("side{i}"), Op::Conv2d(conv_op(&mut rng, c, 3, [1, 1], 1, 0, 1, 1, false)), vec![input]);
        let y = g
            .push(format!("layer{i}"), Op::Conv2d(conv_op(&mut rng, c, 3, [3, 3], 1, 1, 1, 1, true)), vec![a])
            .unwrap();
        let y = g.push(format!("add{i}"), Op::Add, vec![y, side.unwrap()]).unwrap();
        feats.push(y);
        c += 3;
    }
    let out = g.push("out", Op::Concat, feats).unwrap();
    let y = g.push("head", Op::Conv2d(conv_op(&mut rng, c, 4, [1, 1], 1, 0, 1, 1, true)), vec![out]).unwrap();
    g.outputs = vec![y];
    check(&ctx, "dense block", &g, 2, 500);
    let p = wgpose::graph::memory::plan(&g, 2).unwrap();
    assert!((0..3).all(|k| p.concat_input_in_place(&g, out, k)));
}
