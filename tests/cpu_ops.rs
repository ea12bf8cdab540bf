//! CPU executor tests: the fast path against the reference on every operator with awkward
//! shapes and every epilogue, hand-computed cases for the reference itself, fused graphs on the
//! fast path against unfused graphs on the reference, and bad inputs.
//!
//! Tolerance everywhere (unless stated): max |fast - ref| <= 1e-4 * (1 + max |ref|). The fast
//! path accumulates in f32 in a different order than the reference (f64), so a few ulps of the
//! largest magnitude are expected; 1e-4 relative to the output scale leaves a wide margin
//! while still catching any indexing mistake (which produces O(1) errors).

use wgpose::cpu;
use wgpose::graph::passes::optimize_for_inference;
use wgpose::graph::{Act, BatchNorm, Conv2d, ConvSpec, Epilogue, Graph, GraphBuilder, NodeId, Op, Residual};
use wgpose::rng::Rng;
use wgpose::{Error, Tensor};

const TOL: f32 = 1e-4;

/// Max-pool geometries (kernel, stride, padding) the pool tests cover: square and not, stride
/// below, equal to and above the kernel, with and without padding.
const POOLS: [([usize; 2], [usize; 2], [usize; 2]); 8] = [
    ([2, 2], [2, 2], [0, 0]),
    ([3, 3], [2, 2], [1, 1]),
    ([3, 3], [1, 1], [1, 1]),
    ([1, 1], [1, 1], [0, 0]),
    ([3, 2], [1, 2], [1, 0]),
    ([5, 5], [3, 3], [2, 2]),
    ([2, 3], [2, 1], [1, 1]),
    ([2, 2], [3, 3], [1, 0]),
];

fn rand_tensor(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape.to_vec(), rng.vec(n, -1.0, 1.0)).unwrap()
}

fn vec1(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Tensor {
    Tensor::new(vec![n], rng.vec(n, lo, hi)).unwrap()
}

/// Asserts `got` matches `want` (shape exactly, values within the tolerance above).
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = (0f32, 0usize);
    for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
        let d = (a - b).abs();
        assert!(!d.is_nan(), "{what}: NaN at {i} (got {a}, want {b})");
        if d > worst.0 {
            worst = (d, i);
        }
    }
    let tol = TOL * (1.0 + scale);
    assert!(
        worst.0 <= tol,
        "{what}: max abs diff {} at element {} (got {}, want {}), tolerance {tol}",
        worst.0,
        worst.1,
        got.data[worst.1],
        want.data[worst.1]
    );
}

/// Fresh fast-path buffers filled with NaN for the rest of this test binary
/// (`cpu::poison_fresh_buffers`): an operator that leaves part of its output unwritten then
/// fails the comparison instead of passing on whatever the allocator returned.
fn poison_unwritten_outputs() {
    cpu::poison_fresh_buffers(true);
}

/// Fast `eval_op` against reference `eval_op`.
fn check_op(what: &str, op: &Op, inputs: &[&Tensor]) -> Tensor {
    poison_unwritten_outputs();
    let want = cpu::reference::eval_op(what, op, inputs).unwrap_or_else(|e| panic!("{what}: reference: {e}"));
    let got = cpu::eval_op(what, op, inputs).unwrap_or_else(|e| panic!("{what}: fast: {e}"));
    assert_close(what, &got, &want);
    want
}

#[derive(Clone, Copy, Debug)]
struct ConvCase {
    n: usize,
    cin: usize,
    hw: [usize; 2],
    cout: usize,
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    groups: usize,
    bias: bool,
}

impl ConvCase {
    fn new(n: usize, cin: usize, hw: [usize; 2], cout: usize, k: usize) -> Self {
        ConvCase {
            n,
            cin,
            hw,
            cout,
            k: [k, k],
            stride: [1, 1],
            pad: [k / 2, k / 2],
            dil: [1, 1],
            groups: 1,
            bias: true,
        }
    }
    fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    fn pad(mut self, p: usize) -> Self {
        self.pad = [p, p];
        self
    }
    fn dil(mut self, d: usize) -> Self {
        self.dil = [d, d];
        self
    }
    fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    fn conv(&self, rng: &mut Rng, epilogue: Epilogue) -> Conv2d {
        let cin_g = self.cin / self.groups;
        Conv2d {
            weight: rand_tensor(rng, &[self.cout, cin_g, self.k[0], self.k[1]]),
            bias: self.bias.then(|| vec1(rng, self.cout, -0.5, 0.5)),
            stride: self.stride,
            padding: self.pad,
            dilation: self.dil,
            groups: self.groups,
            epilogue,
        }
    }
    fn input(&self, rng: &mut Rng) -> Tensor {
        rand_tensor(rng, &[self.n, self.cin, self.hw[0], self.hw[1]])
    }
}

fn conv_cases() -> Vec<ConvCase> {
    let c = ConvCase::new;
    let mut v = vec![
        c(1, 3, [17, 23], 5, 3),
        c(2, 6, [17, 23], 10, 3).stride(2),
        c(1, 5, [16, 15], 7, 3).stride(2),
        c(2, 5, [17, 23], 6, 3).dil(2).pad(2),
        c(1, 5, [13, 11], 6, 3).dil(2).pad(0),
        c(1, 4, [9, 10], 3, 3).pad(0),
        c(1, 4, [9, 10], 3, 3).pad(3),
        c(1, 3, [33, 29], 8, 7).stride(2).pad(3),
        c(2, 3, [20, 21], 5, 7).pad(3),
        c(1, 4, [12, 12], 6, 5).pad(1),
        // 1x1: the direct (no im2col) path, and strided / padded 1x1 through im2col.
        c(2, 7, [17, 23], 9, 1),
        c(1, 7, [17, 23], 9, 1).stride(2),
        c(1, 7, [8, 9], 9, 1).pad(1),
        // 1x1 with several panels of output channels (its input gathered pixel-major, in
        // blocks): channel counts that are not multiples of 8, stride 2, groups, several blocks.
        c(2, 13, [17, 23], 37, 1),
        c(1, 20, [15, 17], 33, 1).stride(2),
        c(1, 24, [9, 9], 40, 1).groups(2),
        c(1, 64, [33, 35], 48, 1),
        // Groups, depthwise, and depthwise with a channel multiplier (GEMM path).
        c(2, 6, [17, 23], 10, 3).groups(2),
        c(1, 6, [11, 13], 4, 1).groups(2),
        c(2, 7, [17, 23], 7, 3).groups(7),
        c(1, 7, [17, 23], 7, 3).groups(7).stride(2),
        c(1, 5, [17, 23], 5, 3).groups(5).dil(2).pad(2),
        c(1, 5, [19, 18], 5, 7).groups(5).stride(2).pad(3),
        c(1, 5, [9, 8], 5, 3).groups(5).pad(0),
        c(1, 3, [10, 11], 6, 3).groups(3),
        // Large enough for several column panels and task groups of the product; the same at
        // stride 2 (packed im2col panels) and with 13 output channels (a partial row panel).
        c(1, 64, [40, 44], 8, 3),
        c(1, 64, [40, 44], 13, 3).stride(2),
        c(2, 33, [37, 70], 13, 3),
        // Winograd F(2x2, 3x3) (3x3, stride 1, padding 1, 32-256 channels with AVX-512, 32-128
        // otherwise, maps of at least 16 tiles of 2x2): odd and even maps (partial tiles on the
        // right and bottom), rows of fewer tiles than the kernel's rows (items across rows),
        // channel counts that are not multiples of the kernels' tiles, batch 2, the widest layers.
        c(1, 32, [17, 15], 40, 3),
        c(2, 48, [16, 16], 64, 3),
        c(1, 64, [33, 35], 33, 3),
        c(1, 37, [7, 9], 32, 3),
        c(1, 128, [40, 7], 128, 3),
        c(1, 96, [130, 3], 100, 3),
        c(1, 256, [8, 8], 256, 3),
        c(1, 200, [9, 7], 224, 3),
        // Batches on small maps (at most 256 output pixels) as one product over all items'
        // pixels: padded as planes and pixel-major, strided, dilated, in place (1x1), and
        // below Winograd's 16 tiles.
        c(3, 40, [9, 7], 48, 3).stride(2),
        c(2, 64, [8, 8], 96, 3).stride(2),
        c(2, 48, [7, 9], 32, 1),
        c(4, 64, [4, 5], 64, 3),
        c(2, 32, [9, 9], 33, 3).dil(2).pad(2),
        c(2, 33, [16, 16], 40, 3),
    ];
    let mut nb = c(1, 5, [10, 9], 4, 3);
    nb.bias = false;
    v.push(nb);
    let mut asym = c(2, 4, [11, 14], 5, 1);
    asym.k = [1, 3];
    asym.pad = [0, 1];
    asym.stride = [1, 2];
    v.push(asym);
    let mut asym2 = c(1, 4, [11, 14], 5, 1);
    asym2.k = [5, 2];
    asym2.pad = [2, 1];
    asym2.stride = [2, 1];
    asym2.dil = [1, 3];
    v.push(asym2);
    v
}

#[test]
fn conv_fast_matches_reference() {
    let mut rng = Rng::new(1);
    for case in conv_cases() {
        let conv = case.conv(&mut rng, Epilogue::default());
        let x = case.input(&mut rng);
        check_op(&format!("{case:?}"), &Op::Conv2d(conv), &[&x]);
    }
}

fn all_epilogues(rng: &mut Rng, cout: usize) -> Vec<Epilogue> {
    let acts = [Act::None, Act::Relu, Act::Sigmoid];
    let mut v = Vec::new();
    for act in acts {
        for post_act in acts {
            for r in 0..4 {
                let residual = match r {
                    0 => None,
                    1 => Some(Residual::Add),
                    2 => Some(Residual::GateResidual(vec1(rng, cout, -1.5, 1.5))),
                    _ => Some(Residual::GateConv(vec1(rng, cout, -1.5, 1.5))),
                };
                v.push(Epilogue { act, residual, post_act });
            }
        }
    }
    v
}

#[test]
fn conv_epilogues_match_reference() {
    let mut rng = Rng::new(2);
    let cases = [
        ConvCase::new(2, 6, [9, 11], 5, 3).stride(2),   // packed im2col panels
        ConvCase::new(2, 6, [9, 11], 5, 3),             // stride 1: padded input read in place
        ConvCase::new(2, 6, [9, 11], 10, 1),            // direct 1x1
        ConvCase::new(1, 6, [13, 11], 10, 3).groups(2), // grouped
        ConvCase::new(2, 7, [9, 11], 7, 3).groups(7),   // depthwise
        ConvCase::new(1, 64, [40, 44], 8, 3),           // many column panels
        ConvCase::new(2, 32, [17, 13], 40, 3),          // Winograd, odd map
        ConvCase::new(3, 40, [6, 7], 36, 3),            // a batch folded into one product
        ConvCase::new(1, 8, [17, 19], 72, 3).stride(2), // indirect, bias + activation in the tile
        ConvCase::new(1, 16, [9, 11], 72, 1),           // pointwise gathered, the same
        ConvCase::new(1, 40, [11, 37], 48, 3),          // Winograd: 16 + 16 + 8 channels, 16-pixel runs and a tail
        ConvCase::new(2, 32, [26, 23], 40, 3),          // Winograd F(4x4, 3x3): partial tiles on both edges
        ConvCase::new(1, 48, [24, 37], 36, 3),          // F(4x4, 3x3): a partial panel, 32-pixel runs and a tail
    ];
    for case in cases {
        for ep in all_epilogues(&mut rng, case.cout) {
            let conv = case.conv(&mut rng, ep.clone());
            let x = case.input(&mut rng);
            let [oh, ow] = conv.out_hw(case.hw[0], case.hw[1]).unwrap();
            let r = rand_tensor(&mut rng, &[case.n, case.cout, oh, ow]);
            let what = format!(
                "{case:?} {:?} {:?} {:?}",
                ep.act,
                ep.residual.as_ref().map(std::mem::discriminant),
                ep.post_act
            );
            if ep.residual.is_some() {
                check_op(&what, &Op::Conv2d(conv), &[&x, &r]);
            } else {
                check_op(&what, &Op::Conv2d(conv), &[&x]);
            }
        }
    }
}

/// Winograd layers with fewer tile groups than a multiple of the threads split each group's
/// output channels between tasks (`cpu::winograd`): ResNet's 256-channel layers on the 10x8 maps
/// of a 160x128 input (three groups of 8 tiles on AVX-512), the head's 256 -> 224, a 64-channel
/// map of five groups, and a residual epilogue whose reads follow the split; and 128 channels on
/// a map of 12 groups, in two blocks of groups whose transformed inputs share L2 (the last group
/// short); and two layers on F(4x4, 3x3)'s tiles (64 channels at 32x32: 64 tiles; 128 -> 96 at
/// 25x24: 42 tiles, the last row of tiles cut). On pools of 2 and 3 threads, whatever this
/// machine has.
#[test]
fn winograd_channel_split_matches_reference() {
    let mut rng = Rng::new(21);
    let cases = [
        ConvCase::new(1, 256, [10, 8], 256, 3),
        ConvCase::new(1, 256, [10, 8], 224, 3),
        ConvCase::new(1, 64, [12, 13], 72, 3),
        ConvCase::new(2, 128, [10, 8], 128, 3),
        ConvCase::new(1, 128, [18, 20], 128, 3),
        ConvCase::new(1, 64, [32, 32], 64, 3),
        ConvCase::new(1, 128, [25, 24], 96, 3),
    ];
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            for case in cases {
                let ep = Epilogue { act: Act::Relu, residual: Some(Residual::Add), post_act: Act::Relu };
                let conv = case.conv(&mut rng, ep);
                let x = case.input(&mut rng);
                let r = rand_tensor(&mut rng, &[case.n, case.cout, case.hw[0], case.hw[1]]);
                check_op(&format!("{case:?} on {threads} threads"), &Op::Conv2d(conv), &[&x, &r]);
                let conv = case.conv(&mut rng, Epilogue::default());
                check_op(&format!("{case:?} on {threads} threads, no epilogue"), &Op::Conv2d(conv), &[&x]);
            }
        });
    }
}

/// Awkward activation shapes shared by the elementwise and resampling tests.
const SHAPES: [[usize; 4]; 5] = [[1, 3, 17, 23], [2, 5, 7, 9], [1, 1, 1, 1], [2, 6, 1, 13], [1, 33, 4, 4]];

#[test]
fn elementwise_ops_match_reference() {
    let mut rng = Rng::new(3);
    for s in SHAPES {
        let c = s[1];
        let x = rand_tensor(&mut rng, &s);
        let y = rand_tensor(&mut rng, &s);
        let bn = BatchNorm {
            gamma: vec1(&mut rng, c, 0.5, 1.5),
            beta: vec1(&mut rng, c, -0.5, 0.5),
            mean: vec1(&mut rng, c, -0.5, 0.5),
            var: vec1(&mut rng, c, 0.1, 2.0),
            eps: 1e-5,
        };
        check_op(&format!("batch_norm {s:?}"), &Op::BatchNorm(bn), &[&x]);
        for act in [Act::None, Act::Relu, Act::Sigmoid] {
            let op =
                Op::ChannelAffine { scale: vec1(&mut rng, c, -2.0, 2.0), shift: vec1(&mut rng, c, -1.0, 1.0), act };
            check_op(&format!("channel_affine {act:?} {s:?}"), &op, &[&x]);
            check_op(&format!("activation {act:?} {s:?}"), &Op::Activation(act), &[&x]);
        }
        check_op(&format!("add {s:?}"), &Op::Add, &[&x, &y]);
        let alpha = vec1(&mut rng, c, -1.5, 1.5);
        check_op(&format!("gated_add {s:?}"), &Op::GatedAdd { alpha }, &[&x, &y]);
    }
}

#[test]
fn pooling_and_resampling_match_reference() {
    let mut rng = Rng::new(4);
    for s in SHAPES {
        let x = rand_tensor(&mut rng, &s);
        for f in [1, 2, 3, 4] {
            check_op(&format!("upsample_nearest x{f} {s:?}"), &Op::UpsampleNearest { factor: f }, &[&x]);
            check_op(&format!("upsample_bilinear x{f} {s:?}"), &Op::UpsampleBilinear { factor: f }, &[&x]);
        }
        for (kernel, stride, padding) in POOLS {
            if s[2] + 2 * padding[0] < kernel[0] || s[3] + 2 * padding[1] < kernel[1] {
                continue;
            }
            let op = Op::MaxPool { kernel, stride, padding };
            check_op(&format!("max_pool {kernel:?} {stride:?} {padding:?} {s:?}"), &op, &[&x]);
        }
    }
}

/// The stride-2 pools of the shipped networks (2x2, and 3x3 with padding 1) on rows long
/// enough for their vector path (8 outputs from 16 columns), with odd and even widths, ties
/// (values from a small set, signed zeros among them), and planes holding NaN (which must
/// propagate): the same values as the reference, NaN where it has NaN.
#[test]
fn stride2_pools_on_wide_rows_match_reference() {
    poison_unwritten_outputs();
    let mut rng = Rng::new(40);
    let levels = [-1.0f32, -0.0, 0.0, 0.25, 0.5, 2.0];
    for shape in [[1, 3, 9, 64], [1, 2, 7, 47], [2, 2, 6, 33], [1, 1, 3, 18], [1, 2, 4, 17], [1, 1, 5, 16]] {
        let n: usize = shape.iter().product();
        let mut data: Vec<f32> = (0..n).map(|_| levels[rng.below(6)]).collect();
        // A NaN in the second plane (when there is one): its outputs take the exact path.
        if n > shape[2] * shape[3] {
            data[shape[2] * shape[3] + 7] = f32::NAN;
        }
        let x = Tensor::new(shape.to_vec(), data).unwrap();
        for (kernel, padding) in [([2, 2], [0, 0]), ([3, 3], [1, 1])] {
            let op = Op::MaxPool { kernel, stride: [2, 2], padding };
            let what = format!("max_pool {kernel:?} {shape:?}");
            let want = cpu::reference::eval_op(&what, &op, &[&x]).unwrap();
            let got = cpu::eval_op(&what, &op, &[&x]).unwrap();
            assert_eq!(got.shape, want.shape, "{what}");
            for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{what}: {a} at {i}, reference {b}");
            }
        }
    }
}

#[test]
fn concat_and_pixel_shuffle_match_reference() {
    let mut rng = Rng::new(5);
    for [n, _, h, w] in SHAPES {
        let a = rand_tensor(&mut rng, &[n, 3, h, w]);
        let b = rand_tensor(&mut rng, &[n, 1, h, w]);
        let c = rand_tensor(&mut rng, &[n, 6, h, w]);
        let out = check_op("concat3", &Op::Concat, &[&a, &b, &c]);
        assert_eq!(out.shape, vec![n, 10, h, w]);
        check_op("concat1", &Op::Concat, &[&b]);
        check_op("concat_repeated", &Op::Concat, &[&a, &a]);
        for r in [1, 2, 3] {
            let x = rand_tensor(&mut rng, &[n, 5 * r * r, h, w]);
            check_op(&format!("pixel_shuffle x{r}"), &Op::PixelShuffle { factor: r }, &[&x]);
        }
    }
}

// ---- Hand-computed cases: the reference checked against known numbers, not against itself.

fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec()).unwrap()
}

fn conv_op(weight: Tensor, bias: Option<Tensor>, stride: usize, pad: usize, epilogue: Epilogue) -> Op {
    Op::Conv2d(Conv2d {
        weight,
        bias,
        stride: [stride, stride],
        padding: [pad, pad],
        dilation: [1, 1],
        groups: 1,
        epilogue,
    })
}

/// Evaluates on both paths, checks both against `want` exactly up to 1e-6.
fn check_known(what: &str, op: &Op, inputs: &[&Tensor], want: &Tensor) {
    for (path, got) in [
        ("reference", cpu::reference::eval_op(what, op, inputs).unwrap()),
        ("fast", cpu::eval_op(what, op, inputs).unwrap()),
    ] {
        assert_eq!(got.shape, want.shape, "{what} ({path}): shape");
        for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
            assert!((a - b).abs() <= 1e-6, "{what} ({path}): element {i} is {a}, expected {b}");
        }
    }
}

#[test]
fn known_conv_3x3() {
    let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    // Sobel-like kernel, zero padding 1: worked out by hand.
    let sobel = t(&[1, 1, 3, 3], &[1., 0., -1., 2., 0., -2., 1., 0., -1.]);
    let op = conv_op(sobel.clone(), None, 1, 1, Epilogue::default());
    check_known("sobel", &op, &[&x], &t(&[1, 1, 3, 3], &[-9., -6., 9., -20., -8., 20., -21., -6., 21.]));
    // Same with bias 10 and ReLU: max(0, v + 10).
    let ep = Epilogue { act: Act::Relu, ..Default::default() };
    let op = conv_op(sobel.clone(), Some(t(&[1], &[10.])), 1, 1, ep);
    check_known("sobel+bias+relu", &op, &[&x], &t(&[1, 1, 3, 3], &[1., 4., 19., 0., 2., 30., 0., 4., 31.]));
    // Residual add then ReLU: relu(conv + r) with r = 5 everywhere.
    let ep = Epilogue { residual: Some(Residual::Add), post_act: Act::Relu, ..Default::default() };
    let r = Tensor::filled(vec![1, 1, 3, 3], 5.0);
    let op = conv_op(sobel.clone(), None, 1, 1, ep);
    check_known("sobel+residual+relu", &op, &[&x, &r], &t(&[1, 1, 3, 3], &[0., 0., 14., 0., 0., 25., 0., 0., 26.]));
    // Gated conv: 0.5 * conv + r.
    let ep = Epilogue { residual: Some(Residual::GateConv(t(&[1], &[0.5]))), ..Default::default() };
    let op = conv_op(sobel, None, 1, 1, ep);
    check_known("sobel gate", &op, &[&x, &r], &t(&[1, 1, 3, 3], &[0.5, 2., 9.5, -5., 1., 15., -5.5, 2., 15.5]));
    // Laplacian, stride 2, padding 1: outputs at input positions (0,0), (0,2), (2,0), (2,2).
    let lap = t(&[1, 1, 3, 3], &[0., 1., 0., 1., -4., 1., 0., 1., 0.]);
    let op = conv_op(lap, None, 2, 1, Epilogue::default());
    check_known("laplacian s2", &op, &[&x], &t(&[1, 1, 2, 2], &[2., -4., -16., -22.]));
    // Dilation 2, no padding, all-ones 3x3 kernel on x[i][j] = 5i + j (5x5): the single output
    // sums x at rows and columns {0, 2, 4}: 3*5*(0+2+4) + 3*(0+2+4) = 108.
    let x5 = t(&[1, 1, 5, 5], &(0..25).map(|v| v as f32).collect::<Vec<_>>());
    let mut dil = Conv2d {
        weight: Tensor::filled(vec![1, 1, 3, 3], 1.0),
        bias: None,
        stride: [1, 1],
        padding: [0, 0],
        dilation: [2, 2],
        groups: 1,
        epilogue: Epilogue::default(),
    };
    check_known("dilation 2", &Op::Conv2d(dil.clone()), &[&x5], &t(&[1, 1, 1, 1], &[108.]));
    // Same with padding 2: output (0,0) sums x at rows/cols {0, 2} = 0+2+10+12 = 24.
    dil.padding = [2, 2];
    let out = cpu::reference::eval_op("dil pad", &Op::Conv2d(dil), &[&x5]).unwrap();
    assert_eq!(out.shape, vec![1, 1, 5, 5]);
    assert_eq!(out.data[0], 24.0);
    // Groups: each output channel sees only its own group's input channel.
    let g2 = Op::Conv2d(Conv2d {
        weight: t(&[4, 1, 1, 1], &[3., 5., 7., 11.]),
        bias: Some(t(&[4], &[0., 0., 0., 1.])),
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        groups: 2,
        epilogue: Epilogue::default(),
    });
    check_known("groups 2", &g2, &[&t(&[1, 2, 1, 1], &[1., 2.])], &t(&[1, 4, 1, 1], &[3., 5., 14., 23.]));
    // Two input channels to one output, 1x1: 2*a - b.
    let x2 = t(&[1, 2, 1, 2], &[1., 2., 10., 20.]);
    let op = conv_op(t(&[1, 2, 1, 1], &[2., -1.]), None, 1, 0, Epilogue::default());
    check_known("1x1 mix", &op, &[&x2], &t(&[1, 1, 1, 2], &[-8., -16.]));
}

#[test]
fn known_pixel_shuffle_arange() {
    let x = t(&[1, 4, 2, 2], &(0..16).map(|v| v as f32).collect::<Vec<_>>());
    let want = t(&[1, 1, 4, 4], &[0., 4., 1., 5., 8., 12., 9., 13., 2., 6., 3., 7., 10., 14., 11., 15.]);
    check_known("pixel_shuffle", &Op::PixelShuffle { factor: 2 }, &[&x], &want);
}

#[test]
fn known_bilinear_matches_pytorch() {
    // torch.nn.functional.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)
    let x = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    #[rustfmt::skip]
    let want = t(&[1, 1, 4, 4], &[
        1.0, 1.25, 1.75, 2.0,
        1.5, 1.75, 2.25, 2.5,
        2.5, 2.75, 3.25, 3.5,
        3.0, 3.25, 3.75, 4.0,
    ]);
    check_known("bilinear x2", &Op::UpsampleBilinear { factor: 2 }, &[&x], &want);
    // A 1x1 image stays constant at any factor.
    let one = t(&[1, 1, 1, 1], &[7.]);
    check_known("bilinear 1x1", &Op::UpsampleBilinear { factor: 3 }, &[&one], &Tensor::filled(vec![1, 1, 3, 3], 7.));
}

#[test]
fn known_small_ops() {
    let x = t(&[1, 1, 2, 2], &[1., 2., 3., 4.]);
    check_known(
        "nearest x2",
        &Op::UpsampleNearest { factor: 2 },
        &[&x],
        &t(&[1, 1, 4, 4], &[1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]),
    );
    // Padded positions never win: all-negative input, a zero pad would otherwise be the max.
    let neg = t(&[1, 1, 2, 2], &[-1., -2., -3., -4.]);
    let pool = Op::MaxPool { kernel: [3, 3], stride: [1, 1], padding: [1, 1] };
    check_known("max_pool negative", &pool, &[&neg], &Tensor::filled(vec![1, 1, 2, 2], -1.));
    let x4 = t(&[1, 1, 4, 4], &(0..16).map(|v| ((v * 7) % 16) as f32).collect::<Vec<_>>());
    // x4 = [[0,7,14,5],[12,3,10,1],[8,15,6,13],[4,11,2,9]]
    let pool = Op::MaxPool { kernel: [2, 2], stride: [2, 2], padding: [0, 0] };
    check_known("max_pool 2x2", &pool, &[&x4], &t(&[1, 1, 2, 2], &[12., 14., 15., 13.]));
    let bn =
        BatchNorm { gamma: t(&[1], &[2.]), beta: t(&[1], &[1.]), mean: t(&[1], &[2.]), var: t(&[1], &[3.]), eps: 1.0 };
    // (x - 2) / 2 * 2 + 1 = x - 1
    check_known("batch_norm", &Op::BatchNorm(bn), &[&x], &t(&[1, 1, 2, 2], &[0., 1., 2., 3.]));
    let y = t(&[1, 2, 1, 1], &[1., 2.]);
    let z = t(&[1, 2, 1, 1], &[10., 20.]);
    check_known("gated_add", &Op::GatedAdd { alpha: t(&[2], &[0.5, -1.]) }, &[&y, &z], &t(&[1, 2, 1, 1], &[10.5, 18.]));
    check_known("concat", &Op::Concat, &[&z, &y], &t(&[1, 4, 1, 1], &[10., 20., 1., 2.]));
    check_known("sigmoid", &Op::Activation(Act::Sigmoid), &[&t(&[1, 1, 1, 1], &[0.])], &t(&[1, 1, 1, 1], &[0.5]));
}

// ---- Graphs: fused on the fast path equals unfused on the reference.

/// Builds a random small network from typical blocks. Returns the graph and its input shapes.
fn random_graph(seed: u64) -> (Graph, Vec<[usize; 3]>) {
    let mut rng = Rng::new(seed ^ 0xabcdef);
    let mut b = GraphBuilder::new(seed);
    b.random_norm_stats = true;
    let c0 = 1 + rng.below(4);
    let (h0, w0) = (12 + rng.below(10), 12 + rng.below(10));
    let x = b.input("x", [c0, h0, w0]).unwrap();
    let mut input_shapes = vec![[c0, h0, w0]];
    // Nodes available as operands: (id, [c, h, w]).
    let mut avail: Vec<(NodeId, [usize; 3])> = vec![(x, [c0, h0, w0])];
    if rng.below(3) == 0 {
        let c1 = 1 + rng.below(3);
        let x2 = b.input("x2", [c1, h0, w0]).unwrap();
        input_shapes.push([c1, h0, w0]);
        let cat = b.concat("in_cat", &[x, x2]).unwrap();
        avail.push((cat, [c0 + c1, h0, w0]));
    }
    let mut extra_outputs = Vec::new();
    let steps = 4 + rng.below(5);
    for s in 0..steps {
        let (cur, [c, h, w]) = *avail.last().unwrap();
        let name = |part: &str| format!("b{s}.{part}");
        let next: (NodeId, [usize; 3]) = match rng.below(10) {
            0 => {
                // conv - bn - relu, maybe strided
                let cout = 2 + rng.below(9);
                let k = [1, 3, 3, 5][rng.below(4)];
                let stride = if h >= 8 && w >= 8 && rng.below(2) == 0 { 2 } else { 1 };
                let y = b.conv(&name("conv"), cur, ConvSpec::new(cout, k).stride(stride)).unwrap();
                let y = b.batch_norm(&name("bn"), y).unwrap();
                let y = if rng.below(4) > 0 { b.relu(&name("relu"), y).unwrap() } else { y };
                (y, [cout, (h - 1) / stride + 1, (w - 1) / stride + 1])
            }
            1 | 2 => {
                // basic residual block, plain or gated skip
                let y = b.conv(&name("conv1"), cur, ConvSpec::new(c, 3).no_bias()).unwrap();
                let y = b.batch_norm(&name("bn1"), y).unwrap();
                let y = b.relu(&name("relu1"), y).unwrap();
                let y = b.conv(&name("conv2"), y, ConvSpec::new(c, 3).no_bias()).unwrap();
                let y = b.batch_norm(&name("bn2"), y).unwrap();
                let sum = match rng.below(3) {
                    0 => b.add(&name("add"), cur, y).unwrap(),
                    1 => b.gated_add(&name("gate"), cur, y, 0.5).unwrap(),
                    _ => b.gated_add(&name("gate"), y, cur, 0.5).unwrap(),
                };
                let out = if rng.below(3) > 0 { b.relu(&name("relu2"), sum).unwrap() } else { sum };
                (out, [c, h, w])
            }
            3 => {
                // bottleneck with a projected (1x1 conv) skip
                let cout = 2 + rng.below(7);
                let skip = b.conv(&name("proj"), cur, ConvSpec::new(cout, 1)).unwrap();
                let skip = b.batch_norm(&name("proj_bn"), skip).unwrap();
                let y = b.conv(&name("conv"), cur, ConvSpec::new(cout, 3)).unwrap();
                let y = b.relu(&name("relu"), y).unwrap();
                let sum = b.add(&name("add"), skip, y).unwrap();
                (b.relu(&name("relu2"), sum).unwrap(), [cout, h, w])
            }
            4 if h >= 4 && w >= 4 => {
                if rng.below(2) == 0 {
                    (b.max_pool(&name("pool"), cur, 2, 2, 0).unwrap(), [c, h / 2, w / 2])
                } else {
                    (b.max_pool(&name("pool"), cur, 3, 2, 1).unwrap(), [c, (h - 1) / 2 + 1, (w - 1) / 2 + 1])
                }
            }
            5 if h <= 24 && w <= 24 => {
                let y = if rng.below(2) == 0 {
                    b.upsample_bilinear(&name("up"), cur, 2).unwrap()
                } else {
                    b.upsample_nearest(&name("up"), cur, 2).unwrap()
                };
                (y, [c, 2 * h, 2 * w])
            }
            6 => {
                // depthwise separable
                let y = b.conv(&name("dw"), cur, ConvSpec::new(c, 3).groups(c)).unwrap();
                let y = b.batch_norm(&name("dw_bn"), y).unwrap();
                let y = b.relu(&name("dw_relu"), y).unwrap();
                let cout = 2 + rng.below(6);
                let y = b.conv(&name("pw"), y, ConvSpec::new(cout, 1)).unwrap();
                (y, [cout, h, w])
            }
            7 => {
                // concat with an earlier node of the same size, then a lone batch norm + sigmoid
                let same: Vec<_> = avail.iter().filter(|(_, s)| s[1] == h && s[2] == w).copied().collect();
                let (other, [oc, _, _]) = same[rng.below(same.len())];
                let y = b.concat(&name("cat"), &[cur, other]).unwrap();
                let y = b.batch_norm(&name("bn"), y).unwrap();
                let y = if rng.below(2) == 0 { b.sigmoid(&name("sig"), y).unwrap() } else { y };
                (y, [c + oc, h, w])
            }
            8 => {
                // pre-activation (batch norm + ReLU, then padded convolutions, as in the
                // hourglass and LDCRN), of the current node or of its concatenation with an
                // earlier one
                let same: Vec<_> = avail.iter().filter(|(_, s)| s[1] == h && s[2] == w).copied().collect();
                let src = if rng.below(2) == 0 {
                    cur
                } else {
                    let (other, _) = same[rng.below(same.len())];
                    b.concat(&name("pre_cat"), &[cur, other]).unwrap()
                };
                let y = b.batch_norm(&name("pre_bn"), src).unwrap();
                let y = b.relu(&name("pre_relu"), y).unwrap();
                let cout = 2 + rng.below(7);
                match rng.below(4) {
                    0 if c >= 2 => {
                        // hourglass block: two chained convolutions, concatenated, added to
                        // the block input through a gate
                        let c1 = c / 2;
                        let a = b.conv(&name("pre_a"), y, ConvSpec::new(c1, 3)).unwrap();
                        let a_act = b.batch_norm(&name("pre_a_bn"), a).unwrap();
                        let a_act = b.relu(&name("pre_a_relu"), a_act).unwrap();
                        let a2 = b.conv(&name("pre_a2"), a_act, ConvSpec::new(c - c1, 3)).unwrap();
                        let cat = b.concat(&name("pre_cat2"), &[a, a2]).unwrap();
                        (b.gated_add(&name("pre_gate"), cur, cat, 0.5).unwrap(), [c, h, w])
                    }
                    1 => {
                        // dense block: a padded convolution reads the input too; half the
                        // time wide enough that the 1x1 convolution gathers its input
                        // pixel-major (more than one panel of output channels)
                        let cout = if rng.below(2) == 0 { 17 + rng.below(20) } else { cout };
                        let side = b.conv(&name("pre_side"), src, ConvSpec::new(cout, 3)).unwrap();
                        let conv = b.conv(&name("pre_conv"), y, ConvSpec::new(cout, 1)).unwrap();
                        (b.add(&name("pre_add"), side, conv).unwrap(), [cout, h, w])
                    }
                    _ => {
                        let stride = if h >= 8 && w >= 8 && rng.below(3) == 0 { 2 } else { 1 };
                        let conv = b.conv(&name("pre_conv"), y, ConvSpec::new(cout, 3).stride(stride)).unwrap();
                        if stride == 1 && rng.below(3) == 0 {
                            // the activations read twice: not fused
                            let other = b.conv(&name("pre_conv2"), y, ConvSpec::new(cout, 3)).unwrap();
                            (b.add(&name("pre_add"), conv, other).unwrap(), [cout, h, w])
                        } else {
                            (conv, [cout, (h - 1) / stride + 1, (w - 1) / stride + 1])
                        }
                    }
                }
            }
            _ => {
                // sub-pixel upsampling
                let y = b.conv(&name("ps_conv"), cur, ConvSpec::new(4 * c, 3)).unwrap();
                if h <= 24 && w <= 24 {
                    (b.pixel_shuffle(&name("ps"), y, 2).unwrap(), [c, 2 * h, 2 * w])
                } else {
                    (y, [4 * c, h, w])
                }
            }
        };
        if rng.below(5) == 0 {
            extra_outputs.push(next.0);
        }
        avail.push(next);
    }
    let (last, [c, _, _]) = *avail.last().unwrap();
    // Every third graph ends as FasterPose's head: convolution, pixel shuffle, sigmoid (which
    // the passes move into the convolution's epilogue).
    let head = if seed.is_multiple_of(3) {
        let head = b.conv("head", last, ConvSpec::new(8, 1)).unwrap();
        b.pixel_shuffle("head_shuffle", head, 2).unwrap()
    } else {
        b.conv("head", last, ConvSpec::new(c.min(3), 1)).unwrap()
    };
    let head = b.sigmoid("head_sig", head).unwrap();
    let mut outputs = vec![head];
    outputs.extend(extra_outputs);
    (b.finish(outputs).unwrap(), input_shapes)
}

#[test]
fn fused_graph_on_fast_path_equals_unfused_on_reference() {
    poison_unwritten_outputs();
    let (mut fused_nodes, mut input_affines, mut virtual_concats) = (0, 0, 0);
    for seed in 0..24 {
        let (g, in_shapes) = random_graph(seed);
        let fused = optimize_for_inference(&g);
        fused_nodes += g.nodes.len() - fused.nodes.len();
        let mut rng = Rng::new(100 + seed);
        let batch = 1 + (seed as usize % 2);
        let inputs: Vec<Tensor> = in_shapes.iter().map(|s| rand_tensor(&mut rng, &[batch, s[0], s[1], s[2]])).collect();
        // The reference's every node once (the plain reference is the slow part of this test,
        // 150 s under qemu-aarch64 when it also ran `reference::run`), its outputs picked from
        // them; `reference::run` itself must agree, checked on a few seeds.
        let ref_all = cpu::reference::run_all(&g, &inputs).unwrap();
        let want: Vec<Tensor> = g.outputs.iter().map(|&o| ref_all[o].clone()).collect();
        if seed < 3 {
            assert_eq!(
                cpu::reference::run(&g, &inputs).unwrap(),
                want,
                "seed {seed}: reference run and run_all differ"
            );
        }
        let got = cpu::run(&fused, &inputs).unwrap();
        assert_eq!(got.len(), want.len());
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_close(&format!("seed {seed} output {k}"), a, b);
        }
        // As the Estimator runs it: packed weights, channel affines applied by the convolution
        // that reads them.
        let packed = cpu::PackedGraph::new(fused.clone());
        input_affines += packed.fused_input_affines();
        virtual_concats += packed.virtual_concats();
        // Skipping nodes changes no value: the same bits as the plain run of the fused graph.
        for _ in 0..2 {
            assert_eq!(packed.run(&inputs).unwrap(), got, "seed {seed}: the packed graph's run differs");
        }
        // The unfused graph on the fast path, and run_all vs run, agree too.
        let fast_unfused = cpu::run(&g, &inputs).unwrap();
        let all = cpu::run_all(&g, &inputs).unwrap();
        assert_eq!(all.len(), g.nodes.len());
        for (k, &o) in g.outputs.iter().enumerate() {
            assert_close(&format!("seed {seed} unfused output {k}"), &fast_unfused[k], &want[k]);
            assert_eq!(all[o], fast_unfused[k], "seed {seed}: run_all and run differ on output {k}");
        }
        for (id, (a, b)) in all.iter().zip(&ref_all).enumerate() {
            assert_close(&format!("seed {seed} node {id} `{}`", g.nodes[id].name), a, b);
        }
    }
    assert!(fused_nodes > 24, "the passes should have fused many nodes, fused {fused_nodes}");
    assert!(input_affines >= 3, "few convolutions applied their input's affine: {input_affines}");
    assert!(virtual_concats >= 3, "few concatenations were read in parts: {virtual_concats}");
}

#[test]
fn outputs_may_be_inputs_and_repeat() {
    let mut b = GraphBuilder::new(9);
    let x = b.input("x", [2, 5, 6]).unwrap();
    let y = b.relu("r", x).unwrap();
    let g = b.finish(vec![y, x, y]).unwrap();
    let inp = rand_tensor(&mut Rng::new(1), &[1, 2, 5, 6]);
    for out in [
        cpu::run(&g, std::slice::from_ref(&inp)).unwrap(),
        cpu::reference::run(&g, std::slice::from_ref(&inp)).unwrap(),
    ] {
        assert_eq!(out.len(), 3);
        assert_eq!(out[1], inp);
        assert_eq!(out[0], out[2]);
        assert!(out[0].data.iter().all(|&v| v >= 0.0));
    }
}

// ---- Bad inputs: always Err, never a panic.

fn small_graph() -> Graph {
    let mut b = GraphBuilder::new(3);
    let x = b.input("image", [3, 8, 9]).unwrap();
    let y = b.conv("conv", x, ConvSpec::new(4, 3)).unwrap();
    let z = b.input("extra", [4, 8, 9]).unwrap();
    let s = b.add("add", y, z).unwrap();
    b.finish(vec![s]).unwrap()
}

type Runner = fn(&Graph, &[Tensor]) -> wgpose::Result<Vec<Tensor>>;
type OpEval = fn(&str, &Op, &[&Tensor]) -> wgpose::Result<Tensor>;

fn runners() -> [(&'static str, Runner); 4] {
    [
        ("run", cpu::run),
        ("run_all", cpu::run_all),
        ("reference::run", cpu::reference::run),
        ("reference::run_all", cpu::reference::run_all),
    ]
}

#[test]
fn bad_inputs_are_errors() {
    let g = small_graph();
    let mut rng = Rng::new(7);
    let good = [rand_tensor(&mut rng, &[2, 3, 8, 9]), rand_tensor(&mut rng, &[2, 4, 8, 9])];
    for (name, run) in runners() {
        assert!(run(&g, &good).is_ok(), "{name}: good inputs");
        let expect_input_err = |what: &str, r: wgpose::Result<Vec<Tensor>>, mention: &str| match r {
            Err(Error::Input(msg)) => {
                assert!(msg.contains(mention), "{name} {what}: message `{msg}` lacks `{mention}`")
            }
            other => panic!("{name} {what}: expected Error::Input, got {other:?}"),
        };
        expect_input_err("no inputs", run(&g, &[]), "2 input");
        expect_input_err("one input", run(&g, &good[..1]), "2 input");
        let three = [good[0].clone(), good[1].clone(), good[1].clone()];
        expect_input_err("three inputs", run(&g, &three), "2 input");
        expect_input_err("swapped", run(&g, &[good[1].clone(), good[0].clone()]), "image");
        let wrong_w = [rand_tensor(&mut rng, &[2, 3, 8, 8]), good[1].clone()];
        expect_input_err("wrong width", run(&g, &wrong_w), "image");
        let three_d = [rand_tensor(&mut rng, &[3, 8, 9]), good[1].clone()];
        expect_input_err("3-D", run(&g, &three_d), "image");
        let batch0 = [Tensor::new(vec![0, 3, 8, 9], vec![]).unwrap(), Tensor::new(vec![0, 4, 8, 9], vec![]).unwrap()];
        expect_input_err("batch 0", run(&g, &batch0), "image");
        let mixed = [good[0].clone(), rand_tensor(&mut rng, &[1, 4, 8, 9])];
        expect_input_err("mixed batch", run(&g, &mixed), "extra");
        let short = [good[0].clone(), Tensor { shape: vec![2, 4, 8, 9], data: vec![0.0; 10] }];
        expect_input_err("short data", run(&g, &short), "extra");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = good[1].clone();
            x.data[77] = bad;
            expect_input_err("non-finite", run(&g, &[good[0].clone(), x]), "extra");
        }
    }
    // Malformed graphs and parameters.
    let mut no_out = g.clone();
    no_out.outputs.clear();
    let mut bad_weight = g.clone();
    if let Op::Conv2d(c) = &mut bad_weight.nodes[1].op {
        c.weight.data.pop();
    }
    let mut bad_channels = g.clone();
    if let Op::Conv2d(c) = &mut bad_channels.nodes[1].op {
        c.weight = Tensor::zeros(vec![4, 2, 3, 3]);
    }
    for (name, run) in runners() {
        assert!(run(&no_out, &good).is_err(), "{name}: no outputs");
        assert!(run(&bad_weight, &good).is_err(), "{name}: short weight");
        assert!(run(&bad_channels, &good).is_err(), "{name}: weight channels");
    }
}

#[test]
fn eval_op_bad_inputs_are_errors() {
    let mut rng = Rng::new(8);
    let x = rand_tensor(&mut rng, &[1, 4, 5, 5]);
    let conv = ConvCase::new(1, 4, [5, 5], 3, 3).conv(&mut rng, Epilogue::default());
    let op = Op::Conv2d(conv.clone());
    let eval: [(&str, OpEval); 2] = [("fast", cpu::eval_op), ("reference", cpu::reference::eval_op)];
    for (name, eval) in eval {
        assert!(eval("c", &op, &[&x]).is_ok(), "{name}");
        let wrong_c = rand_tensor(&mut rng, &[1, 3, 5, 5]);
        assert!(matches!(eval("c", &op, &[&wrong_c]), Err(Error::Shape { .. })), "{name}: channels");
        assert!(eval("c", &op, &[]).is_err(), "{name}: no input");
        assert!(eval("c", &op, &[&x, &x]).is_err(), "{name}: residual without epilogue");
        let flat = Tensor::zeros(vec![100]);
        assert!(eval("c", &op, &[&flat]).is_err(), "{name}: 1-D input");
        let lying = Tensor { shape: vec![1, 4, 5, 5], data: vec![0.0; 3] };
        assert!(eval("c", &op, &[&lying]).is_err(), "{name}: short data");
        let tiny = rand_tensor(&mut rng, &[1, 4, 1, 1]);
        let mut nopad = conv.clone();
        nopad.padding = [0, 0];
        assert!(eval("c", &Op::Conv2d(nopad), &[&tiny]).is_err(), "{name}: kernel larger than input");
        let y = rand_tensor(&mut rng, &[2, 4, 5, 5]);
        assert!(eval("a", &Op::Add, &[&x, &y]).is_err(), "{name}: add with different batch");
        let z = rand_tensor(&mut rng, &[1, 4, 5, 6]);
        assert!(eval("a", &Op::Concat, &[&x, &z]).is_err(), "{name}: concat different width");
        assert!(eval("p", &Op::PixelShuffle { factor: 3 }, &[&x]).is_err(), "{name}: pixel shuffle channels");
        let alpha = Tensor::zeros(vec![3]);
        assert!(eval("g", &Op::GatedAdd { alpha }, &[&x, &x]).is_err(), "{name}: gate size");
        let pool = Op::MaxPool { kernel: [7, 7], stride: [1, 1], padding: [0, 0] };
        assert!(eval("m", &pool, &[&x]).is_err(), "{name}: pool larger than input");
        assert!(eval("i", &Op::Input { chw: [4, 5, 5] }, &[&x]).is_ok(), "{name}: input op");
        assert!(eval("i", &Op::Input { chw: [4, 5, 6] }, &[&x]).is_err(), "{name}: input op shape");
    }
}

/// A `PackedGraph` packs a 3x3 layer for the Winograd path on maps of at least 16 tiles (17x23
/// here; F(4x4, 3x3)'s tiles from 32 of them, 26x23) and for the direct path below (6x7), with a
/// fused input affine (the batch norm + ReLU before it), a residual and batch 2: against the
/// reference on the same graph.
#[test]
fn packed_graph_packs_for_the_map_size() {
    poison_unwritten_outputs();
    let mut rng = Rng::new(6);
    for [h, w] in [[17, 23], [26, 23], [6, 7]] {
        let mut b = GraphBuilder::new(5);
        b.random_norm_stats = true;
        let x = b.input("x", [40, h, w]).unwrap();
        let n = b.batch_norm("bn", x).unwrap();
        let r = b.relu("relu", n).unwrap();
        let c = b.conv("conv", r, ConvSpec::new(40, 3)).unwrap();
        let s = b.conv("skip", x, ConvSpec::new(40, 1)).unwrap();
        let y = b.add("add", c, s).unwrap();
        let graph = optimize_for_inference(&b.finish(vec![y]).unwrap());
        let packed = cpu::PackedGraph::new(graph.clone());
        assert_eq!(packed.fused_input_affines(), 1, "the affine is applied in the padding copy");
        for batch in [1, 2, 1] {
            let x = rand_tensor(&mut rng, &[batch, 40, h, w]);
            let want = cpu::reference::run(&graph, std::slice::from_ref(&x)).unwrap();
            let got = packed.run(std::slice::from_ref(&x)).unwrap();
            assert_close(&format!("{h}x{w}, batch {batch}"), &got[0], &want[0]);
        }
    }
}

// ---- Speed (release only): cargo test --release --test cpu_ops -- --ignored --nocapture

/// Times one convolution (+ ReLU) as the `Estimator` runs it: a one-layer `cpu::PackedGraph`,
/// weights packed once before the timed runs.
fn bench_conv(label: &str, case: ConvCase) {
    let ConvCase { n, cin, hw: [hw, _], cout, k: [k, _], groups, stride, pad, .. } = case;
    let mut rng = Rng::new(11);
    let mut b = GraphBuilder::new(11);
    let x = b.input("x", [cin, hw, hw]).unwrap();
    let spec = ConvSpec::new(cout, k).stride(stride[0]).padding(pad[0]).groups(groups);
    let y = b.conv("conv", x, spec).unwrap();
    let y = b.relu("relu", y).unwrap();
    let graph = optimize_for_inference(&b.finish(vec![y]).unwrap());
    let packed = cpu::PackedGraph::new(graph);
    let x = case.input(&mut rng);
    let inputs = [x];
    let [oh, ow] = [(hw + 2 * pad[0] - k) / stride[0] + 1; 2];
    let flops = 2.0 * (n * cout * oh * ow * (cin / groups) * k * k) as f64;
    for _ in 0..3 {
        packed.run(&inputs).unwrap();
    }
    let mut times = Vec::new();
    let start = std::time::Instant::now();
    while times.len() < 10 || (start.elapsed().as_secs_f64() < 2.0 && times.len() < 200) {
        let t0 = std::time::Instant::now();
        std::hint::black_box(packed.run(&inputs).unwrap());
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (best, med) = (times[0], times[times.len() / 2]);
    println!(
        "{label:<34} {:>7.3} ms median, {:>7.3} ms best: {:>6.1} GFLOP/s median, {:>6.1} best",
        med * 1e3,
        best * 1e3,
        flops / med / 1e9,
        flops / best / 1e9
    );
}

#[test]
#[ignore]
fn conv_speed() {
    println!("rayon threads: {}", rayon::current_num_threads());
    bench_conv("3x3 64->64 @64x64", ConvCase::new(1, 64, [64, 64], 64, 3));
    bench_conv("3x3 64->64 @32x32", ConvCase::new(1, 64, [32, 32], 64, 3));
    bench_conv("3x3 128->128 @16x16", ConvCase::new(1, 128, [16, 16], 128, 3));
    bench_conv("3x3 128->128 @8x8", ConvCase::new(1, 128, [8, 8], 128, 3));
    bench_conv("3x3 256->256 @8x8", ConvCase::new(1, 256, [8, 8], 256, 3));
    bench_conv("1x1 128->128 @64x64", ConvCase::new(1, 128, [64, 64], 128, 1));
    bench_conv("7x7 s2 3->64 @256x256", ConvCase::new(1, 3, [256, 256], 64, 7).stride(2));
    bench_conv("3x3 256->256 @16x16", ConvCase::new(1, 256, [16, 16], 256, 3));
    bench_conv("3x3 64->64 @128x128 batch 2", ConvCase::new(2, 64, [128, 128], 64, 3));
    bench_conv("3x3 depthwise 128 @64x64", ConvCase::new(1, 128, [64, 64], 128, 3).groups(128));
}

/// `optimize_for_inference` is public and takes any graph: a hand-built one with a batch norm
/// of the wrong width after a convolution (which the folding pass would index out of range), or
/// an edge to a later node, must come back as an error from the executor, not a panic.
#[test]
fn passes_leave_malformed_graphs_to_the_executor_error() {
    let mut rng = Rng::new(7);
    let mut g = Graph::new();
    let x = g.push("in", Op::Input { chw: [2, 5, 5] }, vec![]).unwrap();
    let c = g.push("conv", conv_op(rand_tensor(&mut rng, &[4, 2, 3, 3]), None, 1, 1, Epilogue::default()), vec![x]);
    let c = c.unwrap();
    let bn = BatchNorm {
        gamma: vec1(&mut rng, 4, 0.5, 1.5),
        beta: vec1(&mut rng, 4, -0.5, 0.5),
        mean: vec1(&mut rng, 4, -0.5, 0.5),
        var: vec1(&mut rng, 4, 0.5, 1.5),
        eps: 1e-5,
    };
    let b = g.push("bn", Op::BatchNorm(bn), vec![c]).unwrap();
    g.outputs = vec![b];
    let input = rand_tensor(&mut rng, &[1, 2, 5, 5]);
    assert!(cpu::run(&optimize_for_inference(&g), std::slice::from_ref(&input)).is_ok());

    let mut narrow = g.clone();
    let Op::BatchNorm(bn) = &mut narrow.nodes[b].op else { unreachable!() };
    bn.gamma = vec1(&mut rng, 2, 0.5, 1.5);
    bn.beta = vec1(&mut rng, 2, -0.5, 0.5);
    bn.mean = vec1(&mut rng, 2, -0.5, 0.5);
    bn.var = vec1(&mut rng, 2, 0.5, 1.5);
    let mut forward = g.clone();
    forward.nodes[c].inputs = vec![b];
    for (what, bad) in [("batch norm of 2 channels after 4", narrow), ("edge to a later node", forward)] {
        let opt = optimize_for_inference(&bad);
        assert_eq!(opt, bad, "{what}: the passes should leave it unchanged");
        assert!(cpu::run(&opt, std::slice::from_ref(&input)).is_err(), "{what}: should be an error");
    }
}
