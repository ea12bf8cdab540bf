//! Gradient checks of the training engine against central finite differences, loss and target
//! checks, optimiser checks, an overfitting test and a throughput measurement (ignored).
//!
//! Finite differences: the scalar checked is `L = sum_k <out_k, R_k>` (random fixed `R_k`). The
//! engine's gradient (f32 forward on the CPU kernels through `forward_train`, then `backward`) is
//! compared with central differences `(L(p + h) - L(p - h)) / 2h`, `h = 1e-6`, of a small
//! double-precision re-implementation of every operator's forward pass that lives only in this
//! file (`f64ref`; batch norms in training mode use batch statistics there too). The reference is
//! first checked against the engine's forward outputs (max error <= 1e-4 x max |output|).
//! A coordinate passes when `|analytic - numeric| <= RTOL * max(|analytic|, |numeric|) + ATOL *
//! scale` with `RTOL = 2e-3`, `ATOL = 1e-4` and `scale = max(1, max |analytic|)` over the tensor
//! being checked (the absolute part absorbs the f32 rounding of the engine). With `h = 1e-6` a
//! ReLU kink or max-pool tie is crossed only by a value within ~1e-6 of it, so even the whole
//! network (hundreds of thousands of ReLUs) checks exactly; the per-operator tests still keep
//! ReLU inputs at `|x| >= 0.1` and max-pool inputs distinct multiples of 0.05.

use wgpose::autodiff::{self, BnMode, Optimizer};
use wgpose::graph::{Act, ConvSpec, Graph, GraphBuilder, Op};
use wgpose::rng::Rng;
use wgpose::weights::named_params_mut;
use wgpose::Tensor;

const H: f64 = 1e-6;
const RTOL: f64 = 2e-3;
const ATOL: f64 = 1e-4;

fn rand_tensor(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor { shape: shape.to_vec(), data: (0..n).map(|_| rng.normal()).collect() }
}

/// A minimal double-precision re-implementation of every operator's forward pass, only for the
/// finite differences (plain loops, parallel over output planes).
mod f64ref {
    use std::collections::HashMap;

    use rayon::prelude::*;
    use wgpose::autodiff::BnMode;
    use wgpose::graph::{Act, Graph, Op};

    pub type Params = HashMap<String, Vec<f64>>;

    pub fn params(g: &Graph) -> Params {
        wgpose::weights::named_params(g)
            .into_iter()
            .map(|(n, t)| (n, t.data.iter().map(|&v| v as f64).collect()))
            .collect()
    }

    #[derive(Clone)]
    pub struct T {
        pub s: [usize; 4],
        pub d: Vec<f64>,
    }

    fn act(v: f64, a: Act) -> f64 {
        match a {
            Act::None => v,
            Act::Relu => v.max(0.0),
            Act::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        }
    }

    fn taps(o: usize, f: usize, len: usize) -> (usize, usize, f64) {
        let src = ((o as f64 + 0.5) / f as f64 - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(len - 1);
        (i0, (i0 + 1).min(len - 1), src - i0 as f64)
    }

    /// The graph outputs.
    pub fn forward(g: &Graph, p: &Params, inputs: &[T], mode: BnMode) -> Vec<T> {
        let mut vals: Vec<T> = Vec::new();
        let mut next_input = 0;
        for node in &g.nodes {
            let xs: Vec<&T> = node.inputs.iter().map(|&i| &vals[i]).collect();
            let pr = |k: &str| &p[&format!("{}.{k}", node.name)];
            let out = match &node.op {
                Op::Input { .. } => {
                    next_input += 1;
                    inputs[next_input - 1].clone()
                }
                Op::Conv2d(c) => {
                    let x = xs[0];
                    let [n, cin, h, w] = x.s;
                    let cout = c.cout();
                    let [kh, kw] = c.kernel();
                    let [oh, ow] = c.out_hw(h, w).unwrap();
                    let (cin_g, cout_g) = (cin / c.groups, cout / c.groups);
                    let wt = pr("weight");
                    let bias = c.bias.as_ref().map(|_| pr("bias"));
                    let mut d = vec![0.0; n * cout * oh * ow];
                    d.par_chunks_mut(oh * ow).enumerate().for_each(|(pl, y)| {
                        let (b, co) = (pl / cout, pl % cout);
                        let gi = co / cout_g;
                        for ci in 0..cin_g {
                            let xp = &x.d[(b * cin + gi * cin_g + ci) * h * w..][..h * w];
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let wv = wt[((co * cin_g + ci) * kh + ky) * kw + kx];
                                    for oy in 0..oh {
                                        let iy =
                                            (oy * c.stride[0] + ky * c.dilation[0]) as isize - c.padding[0] as isize;
                                        if iy < 0 || iy >= h as isize {
                                            continue;
                                        }
                                        for ox in 0..ow {
                                            let ix = (ox * c.stride[1] + kx * c.dilation[1]) as isize
                                                - c.padding[1] as isize;
                                            if ix < 0 || ix >= w as isize {
                                                continue;
                                            }
                                            y[oy * ow + ox] += wv * xp[iy as usize * w + ix as usize];
                                        }
                                    }
                                }
                            }
                        }
                        if let Some(bv) = bias {
                            y.iter_mut().for_each(|v| *v += bv[co]);
                        }
                    });
                    T { s: [n, cout, oh, ow], d }
                }
                Op::BatchNorm(bn) => {
                    let x = xs[0];
                    let [n, c, h, w] = x.s;
                    let hw = h * w;
                    let (mean, var): (Vec<f64>, Vec<f64>) = if mode == BnMode::Train {
                        (0..c)
                            .map(|ch| {
                                let vals =
                                    || (0..n).flat_map(move |b| x.d[(b * c + ch) * hw..(b * c + ch + 1) * hw].iter());
                                let m = vals().sum::<f64>() / (n * hw) as f64;
                                let v = vals().map(|v| (v - m).powi(2)).sum::<f64>() / (n * hw) as f64;
                                (m, v)
                            })
                            .unzip()
                    } else {
                        (pr("running_mean").clone(), pr("running_var").clone())
                    };
                    let (ga, be) = (pr("gamma"), pr("beta"));
                    let eps = bn.eps as f64;
                    let d =
                        x.d.iter()
                            .enumerate()
                            .map(|(i, &v)| {
                                let ch = (i / hw) % c;
                                ga[ch] * (v - mean[ch]) / (var[ch] + eps).sqrt() + be[ch]
                            })
                            .collect();
                    T { s: x.s, d }
                }
                Op::ChannelAffine { act: a, .. } => {
                    let x = xs[0];
                    let hw = x.s[2] * x.s[3];
                    let (sc, sh) = (pr("scale"), pr("shift"));
                    let d =
                        x.d.iter()
                            .enumerate()
                            .map(|(i, &v)| {
                                let ch = (i / hw) % x.s[1];
                                act(sc[ch] * v + sh[ch], *a)
                            })
                            .collect();
                    T { s: x.s, d }
                }
                Op::Activation(a) => T { s: xs[0].s, d: xs[0].d.iter().map(|&v| act(v, *a)).collect() },
                Op::MaxPool { kernel, stride, padding } => {
                    let x = xs[0];
                    let [n, c, h, w] = x.s;
                    let oh = (h + 2 * padding[0] - kernel[0]) / stride[0] + 1;
                    let ow = (w + 2 * padding[1] - kernel[1]) / stride[1] + 1;
                    let mut d = vec![f64::NEG_INFINITY; n * c * oh * ow];
                    for pl in 0..n * c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                for ky in 0..kernel[0] {
                                    for kx in 0..kernel[1] {
                                        let iy = (oy * stride[0] + ky) as isize - padding[0] as isize;
                                        let ix = (ox * stride[1] + kx) as isize - padding[1] as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                            continue;
                                        }
                                        let v = x.d[pl * h * w + iy as usize * w + ix as usize];
                                        let m = &mut d[(pl * oh + oy) * ow + ox];
                                        *m = m.max(v);
                                    }
                                }
                            }
                        }
                    }
                    T { s: [n, c, oh, ow], d }
                }
                Op::UpsampleNearest { factor: f } => {
                    let x = xs[0];
                    let [n, c, h, w] = x.s;
                    let (oh, ow) = (h * f, w * f);
                    let mut d = vec![0.0; n * c * oh * ow];
                    for pl in 0..n * c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                d[(pl * oh + oy) * ow + ox] = x.d[(pl * h + oy / f) * w + ox / f];
                            }
                        }
                    }
                    T { s: [n, c, oh, ow], d }
                }
                Op::UpsampleBilinear { factor: f } => {
                    let x = xs[0];
                    let [n, c, h, w] = x.s;
                    let (oh, ow) = (h * f, w * f);
                    let mut d = vec![0.0; n * c * oh * ow];
                    for pl in 0..n * c {
                        let s = &x.d[pl * h * w..(pl + 1) * h * w];
                        for oy in 0..oh {
                            let (y0, y1, ly) = taps(oy, *f, h);
                            for ox in 0..ow {
                                let (x0, x1, lx) = taps(ox, *f, w);
                                let top = (1.0 - lx) * s[y0 * w + x0] + lx * s[y0 * w + x1];
                                let bot = (1.0 - lx) * s[y1 * w + x0] + lx * s[y1 * w + x1];
                                d[(pl * oh + oy) * ow + ox] = (1.0 - ly) * top + ly * bot;
                            }
                        }
                    }
                    T { s: [n, c, oh, ow], d }
                }
                Op::Concat => {
                    let [n, _, h, w] = xs[0].s;
                    let c: usize = xs.iter().map(|t| t.s[1]).sum();
                    let mut d = Vec::with_capacity(n * c * h * w);
                    for b in 0..n {
                        for t in &xs {
                            let ci = t.s[1] * h * w;
                            d.extend_from_slice(&t.d[b * ci..(b + 1) * ci]);
                        }
                    }
                    T { s: [n, c, h, w], d }
                }
                Op::Add => T { s: xs[0].s, d: xs[0].d.iter().zip(&xs[1].d).map(|(a, b)| a + b).collect() },
                Op::GatedAdd { .. } => {
                    let al = pr("alpha");
                    let [_, c, h, w] = xs[1].s;
                    let d = xs[0]
                        .d
                        .iter()
                        .zip(&xs[1].d)
                        .enumerate()
                        .map(|(i, (s, x))| al[(i / (h * w)) % c] * s + x)
                        .collect();
                    T { s: xs[1].s, d }
                }
                Op::PixelShuffle { factor: r } => {
                    let x = xs[0];
                    let [n, c, h, w] = x.s;
                    let co = c / (r * r);
                    let mut d = vec![0.0; x.d.len()];
                    for b in 0..n {
                        for ch in 0..co {
                            for i in 0..h * r {
                                for j in 0..w * r {
                                    let src = ((b * c + ch * r * r + (i % r) * r + j % r) * h + i / r) * w + j / r;
                                    d[((b * co + ch) * h * r + i) * w * r + j] = x.d[src];
                                }
                            }
                        }
                    }
                    T { s: [n, co, h * r, w * r], d }
                }
            };
            vals.push(out);
        }
        g.outputs.iter().map(|&o| vals[o].clone()).collect()
    }
}

fn to64(t: &Tensor) -> f64ref::T {
    f64ref::T { s: t.nchw().unwrap(), d: t.data.iter().map(|&v| v as f64).collect() }
}

/// `L = sum_k <out_k, R_k>` in f64 with the f64 reference.
fn probe_loss(graph: &Graph, p: &f64ref::Params, inputs: &[f64ref::T], mode: BnMode, r: &[Tensor]) -> f64 {
    f64ref::forward(graph, p, inputs, mode)
        .iter()
        .zip(r)
        .map(|(o, r)| o.d.iter().zip(&r.data).map(|(&a, &b)| a * b as f64).sum::<f64>())
        .sum()
}

fn close(a: f64, n: f64, scale: f64) -> bool {
    (a - n).abs() <= RTOL * a.abs().max(n.abs()) + ATOL * scale
}

/// Compares the engine's gradients of `L = sum_k <out_k, R_k>` (random `R_k`) with central
/// differences of the f64 reference, on up to `per_tensor` random coordinates of every
/// trainable parameter tensor (or of `max_params` random tensors) and of every input.
/// Returns (coordinates checked, failures as text).
fn grad_check(
    graph: &Graph,
    inputs: &[Tensor],
    mode: BnMode,
    per_tensor: usize,
    max_params: Option<usize>,
    seed: u64,
) -> (usize, Vec<String>) {
    let mut rng = Rng::new(seed);
    let tape = autodiff::forward_train(graph, inputs, mode).unwrap();
    let r: Vec<Tensor> = graph.outputs.iter().map(|&o| rand_tensor(&mut rng, &tape.values[o].shape)).collect();
    let grads = autodiff::backward(graph, &tape, &r).unwrap();
    // The reference agrees with the engine's forward pass.
    let p0 = f64ref::params(graph);
    let x64: Vec<f64ref::T> = inputs.iter().map(to64).collect();
    for (o, &id) in f64ref::forward(graph, &p0, &x64, mode).iter().zip(&graph.outputs) {
        let v = &tape.values[id].data;
        let scale = o.d.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let err = o.d.iter().zip(v).fold(0.0f64, |m, (a, &b)| m.max((a - b as f64).abs()));
        assert!(err <= 1e-4 * scale, "f64 reference and CPU forward differ by {err}");
    }
    let mut fails = Vec::new();
    let mut checked = 0;
    let mut names: Vec<String> = grads.params.keys().cloned().collect();
    if let Some(m) = max_params {
        let mut picked = Vec::new();
        while picked.len() < m.min(names.len()) {
            let i = rng.below(names.len());
            picked.push(names.remove(i));
        }
        names = picked;
    }
    let pick = |rng: &mut Rng, n: usize| -> Vec<usize> {
        if n <= per_tensor {
            (0..n).collect()
        } else {
            (0..per_tensor).map(|_| rng.below(n)).collect()
        }
    };
    for name in &names {
        let g = &grads.params[name];
        let scale = g.data.iter().fold(1.0f64, |m, &v| m.max(v.abs() as f64));
        for i in pick(&mut rng, g.data.len()) {
            let mut p = p0.clone();
            p.get_mut(name).unwrap()[i] += H;
            let lp = probe_loss(graph, &p, &x64, mode, &r);
            p.get_mut(name).unwrap()[i] -= 2.0 * H;
            let lm = probe_loss(graph, &p, &x64, mode, &r);
            let numeric = (lp - lm) / (2.0 * H);
            let a = g.data[i] as f64;
            checked += 1;
            if !close(a, numeric, scale) {
                fails.push(format!("{name}[{i}]: analytic {a:.6} numeric {numeric:.6}"));
            }
        }
    }
    for (k, gi) in grads.inputs.iter().enumerate() {
        let scale = gi.data.iter().fold(1.0f64, |m, &v| m.max(v.abs() as f64));
        for i in pick(&mut rng, gi.data.len()) {
            let mut xs = x64.clone();
            xs[k].d[i] += H;
            let lp = probe_loss(graph, &p0, &xs, mode, &r);
            xs[k].d[i] -= 2.0 * H;
            let lm = probe_loss(graph, &p0, &xs, mode, &r);
            let numeric = (lp - lm) / (2.0 * H);
            let a = gi.data[i] as f64;
            checked += 1;
            if !close(a, numeric, scale) {
                fails.push(format!("input{k}[{i}]: analytic {a:.6} numeric {numeric:.6}"));
            }
        }
    }
    (checked, fails)
}

fn assert_grads(what: &str, graph: &Graph, inputs: &[Tensor], mode: BnMode) {
    // Fast-path buffers that must be overwritten start as NaN (`cpu::poison_fresh_buffers`).
    wgpose::cpu::poison_fresh_buffers(true);
    let (n, fails) = grad_check(graph, inputs, mode, 400, None, 7);
    assert!(n > 0, "{what}: nothing checked");
    assert!(fails.is_empty(), "{what}: {} of {n} coordinates differ:\n{}", fails.len(), fails.join("\n"));
}

/// Random input in `[-1, 1]` with `|x| >= 0.1` (away from ReLU's kink).
fn away_from_zero(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor {
        shape: shape.to_vec(),
        data: (0..n)
            .map(|_| {
                let v = rng.range(0.1, 1.0);
                if rng.uniform() < 0.5 {
                    -v
                } else {
                    v
                }
            })
            .collect(),
    }
}

/// Distinct values `0.05 * perm(i)` minus an offset: no ties closer than 0.05.
fn distinct(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i + 1));
    }
    Tensor { shape: shape.to_vec(), data: p.iter().map(|&v| 0.05 * v as f32 - 0.025 * n as f32).collect() }
}

fn one_conv(input: [usize; 4], spec: ConvSpec, seed: u64) -> (Graph, Vec<Tensor>) {
    let mut b = GraphBuilder::new(seed);
    b.random_norm_stats = true;
    let x = b.input("x", [input[1], input[2], input[3]]).unwrap();
    let y = b.conv("conv", x, spec).unwrap();
    let g = b.finish(vec![y]).unwrap();
    let mut rng = Rng::new(seed + 1);
    (g, vec![rand_tensor(&mut rng, &input)])
}

#[test]
fn conv_gradients() {
    let cases: Vec<(&str, [usize; 4], ConvSpec)> = vec![
        ("3x3 pad 1", [2, 4, 6, 7], ConvSpec::new(5, 3).padding(1)),
        ("3x3 pad 0", [2, 4, 6, 7], ConvSpec::new(3, 3)),
        // Rows of 8+ output pixels: the weight gradient from the padded input (`cpu::weight_grad`),
        // one full vector and a tail per row.
        ("3x3 pad 1 wide rows", [2, 3, 4, 11], ConvSpec::new(5, 3).padding(1)),
        ("3x3 groups 2", [2, 4, 6, 7], ConvSpec::new(6, 3).padding(1).groups(2)),
        ("3x3 depthwise", [2, 4, 6, 7], ConvSpec::new(4, 3).padding(1).groups(4)),
        ("5x5 depthwise stride 2 dil 2", [2, 3, 9, 8], ConvSpec::new(3, 5).padding(2).stride(2).dilation(2).groups(3)),
        ("3x3 stride 2", [2, 3, 7, 8], ConvSpec::new(4, 3).padding(1).stride(2)),
        // Strided convolutions go by phases (`autodiff::strided`; its unit test also covers a
        // 2 x 1 stride): stride 3, an even kernel, a stride above the kernel (phases without
        // taps), and output rows of 9 pixels (the weight gradient from the phase-split input).
        ("3x3 stride 3", [2, 3, 8, 7], ConvSpec::new(4, 3).padding(1).stride(3)),
        ("2x2 stride 2", [2, 3, 7, 6], ConvSpec::new(4, 2).stride(2)),
        ("1x1 stride 3 pad 1", [2, 3, 5, 7], ConvSpec::new(2, 1).padding(1).stride(3)),
        ("3x3 stride 2 wide rows", [2, 3, 4, 18], ConvSpec::new(4, 3).padding(1).stride(2)),
        ("3x3 dilation 2", [2, 3, 7, 8], ConvSpec::new(4, 3).padding(2).dilation(2)),
        ("3x3 dilation 2 pad 0", [1, 3, 7, 8], ConvSpec::new(2, 3).dilation(2)),
        // Stride-1 input gradients run as a flipped-kernel convolution over padding
        // (k - 1) * dilation - padding; a padding beyond that takes the im2col / col2im path.
        ("3x3 pad 3", [1, 2, 5, 6], ConvSpec::new(3, 3).padding(3)),
        ("5x5 pad 2 groups 2", [2, 4, 7, 9], ConvSpec::new(6, 5).padding(2).groups(2)),
        ("1x1", [2, 5, 4, 3], ConvSpec::new(3, 1)),
        ("1x1 no bias", [2, 5, 4, 3], ConvSpec::new(3, 1).no_bias()),
        ("1x1 stride 2", [2, 5, 5, 4], ConvSpec::new(3, 1).stride(2)),
        ("1x1 pad 1", [1, 3, 3, 4], ConvSpec::new(2, 1).padding(1)),
        ("7x7 stride 2 pad 3", [2, 3, 9, 10], ConvSpec::new(4, 7).stride(2).padding(3)),
        ("7x7 pad 0", [1, 2, 8, 7], ConvSpec::new(2, 7)),
        // Five items: small maps put several side by side in each weight-gradient product
        // (`dw_by_product_items`), in chunks of 3 + 2 on two threads and 5 on one.
        ("3x3 pad 1 batch 5", [5, 3, 4, 5], ConvSpec::new(4, 3).padding(1)),
        ("3x3 groups 2 batch 5", [5, 4, 5, 4], ConvSpec::new(6, 3).padding(1).groups(2)),
        ("1x1 batch 5", [5, 5, 3, 4], ConvSpec::new(3, 1)),
        ("3x3 stride 2 batch 5", [5, 3, 7, 6], ConvSpec::new(4, 3).padding(1).stride(2)),
        // 64 output channels on small maps: the input gradient of strided layers by the product
        // and col2im instead of phases (`autodiff::strided::product_is_cheaper`).
        ("3x3 stride 2, 64 outputs", [2, 3, 7, 6], ConvSpec::new(64, 3).padding(1).stride(2)),
        ("1x1 stride 2, 64 outputs", [3, 5, 5, 4], ConvSpec::new(64, 1).stride(2)),
        // Small maps in a batch: the stride-1 input gradient of all items as one product, the
        // flipped weights packed straight from the weights; 35 input channels make two panels
        // of 32 (AVX-512) or more, the last one partial; 20 output channels, two blocks of the
        // weight gradient's transpose (16 rows each), the last one partial.
        ("3x3 pad 1 batch 3, 35 -> 20 channels", [3, 35, 3, 4], ConvSpec::new(20, 3).padding(1)),
        ("5x5 pad 2 dilation 1 batch 2", [2, 3, 5, 4], ConvSpec::new(2, 5).padding(2)),
        // 32 and 33 channels on a 9x10 map: the input gradient as a forward Winograd convolution
        // with the flipped weights (`cpu::winograd`; partial tiles on both edges).
        (
            "3x3 pad 1 batch 2, 32 -> 33 channels, Winograd input gradient",
            [2, 32, 9, 10],
            ConvSpec::new(33, 3).padding(1),
        ),
        // 4x4 maps (too few tiles per item for the Winograd weight gradient item by item): the
        // weight gradient as one Winograd product per position over the batch's tiles
        // (`cpu::winograd_grad::batch`), as ResNet-18's last stage at 128x128.
        ("3x3 pad 1 batch 3, 32 -> 36 channels, 4x4 maps", [3, 32, 4, 4], ConvSpec::new(36, 3).padding(1)),
    ];
    for (k, (what, shape, spec)) in cases.into_iter().enumerate() {
        let (g, x) = one_conv(shape, spec, 100 + k as u64);
        assert_grads(what, &g, &x, BnMode::Eval);
    }
}

fn unary(op: Op, x: Tensor) -> (Graph, Vec<Tensor>) {
    let [_, c, h, w] = x.nchw().unwrap();
    let mut g = Graph::new();
    let i = g.push("x", Op::Input { chw: [c, h, w] }, vec![]).unwrap();
    let y = g.push("op", op, vec![i]).unwrap();
    g.outputs = vec![y];
    (g, vec![x])
}

#[test]
fn batch_norm_gradients() {
    let mut rng = Rng::new(3);
    for mode in [BnMode::Train, BnMode::Eval] {
        let c = 3;
        let op = Op::BatchNorm(wgpose::graph::BatchNorm {
            gamma: Tensor::new(vec![c], rng.vec(c, 0.5, 1.5)).unwrap(),
            beta: Tensor::new(vec![c], rng.vec(c, -0.5, 0.5)).unwrap(),
            mean: Tensor::new(vec![c], rng.vec(c, -0.5, 0.5)).unwrap(),
            var: Tensor::new(vec![c], rng.vec(c, 0.5, 1.5)).unwrap(),
            eps: 1e-5,
        });
        let x = rand_tensor(&mut rng, &[3, c, 4, 5]);
        let (g, xs) = unary(op, x);
        assert_grads(&format!("batch norm {mode:?}"), &g, &xs, mode);
    }
}

#[test]
fn batch_norm_running_stats_follow_pytorch() {
    let mut rng = Rng::new(4);
    let c = 2;
    let op = Op::BatchNorm(wgpose::graph::BatchNorm {
        gamma: Tensor::filled(vec![c], 1.0),
        beta: Tensor::zeros(vec![c]),
        mean: Tensor::new(vec![c], vec![0.5, -0.5]).unwrap(),
        var: Tensor::new(vec![c], vec![2.0, 0.5]).unwrap(),
        eps: 1e-5,
    });
    let x = rand_tensor(&mut rng, &[2, c, 3, 3]);
    let (mut g, xs) = unary(op, x.clone());
    let tape = autodiff::forward_train(&g, &xs, BnMode::Train).unwrap();
    tape.apply_running_stats(&mut g);
    let Op::BatchNorm(bn) = &g.nodes[1].op else { panic!() };
    for ch in 0..c {
        let vals: Vec<f64> =
            (0..2).flat_map(|b| x.data[(b * c + ch) * 9..(b * c + ch + 1) * 9].to_vec()).map(|v| v as f64).collect();
        let m = vals.iter().sum::<f64>() / 18.0;
        let var_u = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 17.0;
        let old_m = [0.5, -0.5][ch];
        let old_v = [2.0, 0.5][ch];
        assert!((bn.mean.data[ch] as f64 - (0.9 * old_m + 0.1 * m)).abs() < 1e-5);
        assert!((bn.var.data[ch] as f64 - (0.9 * old_v + 0.1 * var_u)).abs() < 1e-5);
        // Outputs are normalised with the biased batch variance.
        let y = &tape.values[1].data;
        let ys: Vec<f64> =
            (0..2).flat_map(|b| y[(b * c + ch) * 9..(b * c + ch + 1) * 9].to_vec()).map(|v| v as f64).collect();
        let ym = ys.iter().sum::<f64>() / 18.0;
        let yv = ys.iter().map(|v| (v - ym).powi(2)).sum::<f64>() / 18.0;
        assert!(ym.abs() < 1e-5 && (yv - 1.0).abs() < 1e-3, "mean {ym} var {yv}");
    }
}

#[test]
fn elementwise_gradients() {
    let mut rng = Rng::new(5);
    let x = away_from_zero(&mut rng, &[2, 3, 4, 5]);
    let (g, xs) = unary(Op::Activation(Act::Relu), x);
    assert_grads("relu", &g, &xs, BnMode::Eval);
    let x = rand_tensor(&mut rng, &[2, 3, 4, 5]);
    let (g, xs) = unary(Op::Activation(Act::Sigmoid), x);
    assert_grads("sigmoid", &g, &xs, BnMode::Eval);
    for act in [Act::None, Act::Relu, Act::Sigmoid] {
        let op = Op::ChannelAffine {
            scale: Tensor::new(vec![3], rng.vec(3, 0.5, 1.5)).unwrap(),
            shift: Tensor::new(vec![3], vec![0.0; 3]).unwrap(),
            act,
        };
        // Shift 0 and scale > 0: the affine output keeps |.| >= 0.05 away from the kink.
        let x = away_from_zero(&mut rng, &[2, 3, 4, 5]);
        let (g, xs) = unary(op, x);
        assert_grads(&format!("channel affine {act:?}"), &g, &xs, BnMode::Eval);
    }
}

#[test]
fn pooling_and_resampling_gradients() {
    let mut rng = Rng::new(6);
    for (kernel, stride, padding, shape) in [
        ([2, 2], [2, 2], [0, 0], [2, 3, 6, 8]),
        ([3, 3], [2, 2], [1, 1], [2, 2, 7, 6]),
        ([3, 2], [1, 2], [1, 0], [1, 2, 5, 6]),
    ] {
        let x = distinct(&mut rng, &shape);
        let (g, xs) = unary(Op::MaxPool { kernel, stride, padding }, x);
        assert_grads(&format!("max pool {kernel:?} {stride:?} {padding:?}"), &g, &xs, BnMode::Eval);
    }
    for f in [2, 3] {
        let x = rand_tensor(&mut rng, &[2, 2, 3, 4]);
        let (g, xs) = unary(Op::UpsampleNearest { factor: f }, x);
        assert_grads(&format!("nearest x{f}"), &g, &xs, BnMode::Eval);
        let x = rand_tensor(&mut rng, &[2, 2, 3, 4]);
        let (g, xs) = unary(Op::UpsampleBilinear { factor: f }, x);
        assert_grads(&format!("bilinear x{f}"), &g, &xs, BnMode::Eval);
    }
    let x = rand_tensor(&mut rng, &[2, 8, 3, 2]);
    let (g, xs) = unary(Op::PixelShuffle { factor: 2 }, x);
    assert_grads("pixel shuffle", &g, &xs, BnMode::Eval);
    let x = rand_tensor(&mut rng, &[1, 9, 2, 3]);
    let (g, xs) = unary(Op::PixelShuffle { factor: 3 }, x);
    assert_grads("pixel shuffle x3", &g, &xs, BnMode::Eval);
}

#[test]
fn multi_input_gradients() {
    let mut rng = Rng::new(8);
    // concat of three inputs of different widths
    let mut g = Graph::new();
    let a = g.push("a", Op::Input { chw: [2, 3, 4] }, vec![]).unwrap();
    let b = g.push("b", Op::Input { chw: [1, 3, 4] }, vec![]).unwrap();
    let c = g.push("c", Op::Input { chw: [3, 3, 4] }, vec![]).unwrap();
    let y = g.push("cat", Op::Concat, vec![a, b, c]).unwrap();
    g.outputs = vec![y];
    let xs = vec![
        rand_tensor(&mut rng, &[2, 2, 3, 4]),
        rand_tensor(&mut rng, &[2, 1, 3, 4]),
        rand_tensor(&mut rng, &[2, 3, 3, 4]),
    ];
    assert_grads("concat", &g, &xs, BnMode::Eval);
    // add and gated add (with alpha gradient), plus fan-out (an input read twice) and two outputs
    let mut g = Graph::new();
    let a = g.push("a", Op::Input { chw: [3, 4, 4] }, vec![]).unwrap();
    let b = g.push("b", Op::Input { chw: [3, 4, 4] }, vec![]).unwrap();
    let s = g.push("add", Op::Add, vec![a, b]).unwrap();
    let alpha = Tensor::new(vec![3], rng.vec(3, 0.2, 1.2)).unwrap();
    let ga = g.push("gate", Op::GatedAdd { alpha }, vec![a, s]).unwrap();
    g.outputs = vec![ga, s];
    let xs = vec![rand_tensor(&mut rng, &[2, 3, 4, 4]), rand_tensor(&mut rng, &[2, 3, 4, 4])];
    assert_grads("add / gated add", &g, &xs, BnMode::Eval);
}

/// Every operator in one graph (fan-out, two outputs).
fn small_network() -> (Graph, Vec<Tensor>) {
    let mut b = GraphBuilder::new(11);
    b.random_norm_stats = true;
    let x = b.input("x", [3, 8, 8]).unwrap();
    let c1 = b.conv("c1", x, ConvSpec::new(8, 3).padding(1)).unwrap();
    let n1 = b.batch_norm("bn1", c1).unwrap();
    let r1 = b.relu("r1", n1).unwrap();
    let p = b.max_pool("pool", r1, 2, 2, 0).unwrap();
    let dw = b.conv("dw", p, ConvSpec::new(8, 3).padding(1).groups(8)).unwrap();
    let g2 = b.conv("g2", dw, ConvSpec::new(8, 3).padding(2).dilation(2).groups(2)).unwrap();
    let ga = b.gated_add("gate", p, g2, 0.7).unwrap();
    let up = b.upsample_bilinear("up", ga, 2).unwrap();
    let un = b.upsample_nearest("un", ga, 2).unwrap();
    let cat = b.concat("cat", &[up, un, r1]).unwrap();
    let f = b.conv("fuse", cat, ConvSpec::new(8, 1)).unwrap();
    let ad = b.add("add", f, r1).unwrap();
    let ps = b.pixel_shuffle("ps", ad, 2).unwrap();
    let s = b.conv("s2", ps, ConvSpec::new(4, 3).stride(2).padding(1)).unwrap();
    let o = b.sigmoid("sig", s).unwrap();
    let g = b.finish(vec![o, f]).unwrap();
    let mut rng = Rng::new(12);
    let xs = vec![rand_tensor(&mut rng, &[2, 3, 8, 8])];
    (g, xs)
}

#[test]
fn small_network_gradients() {
    let (g, xs) = small_network();
    let (n, fails) = grad_check(&g, &xs, BnMode::Train, 12, None, 13);
    assert!(fails.is_empty(), "{} of {n} coordinates differ:\n{}", fails.len(), fails.join("\n"));
    let (n, fails) = grad_check(&g, &xs, BnMode::Eval, 12, None, 14);
    assert!(fails.is_empty(), "eval: {} of {n} coordinates differ:\n{}", fails.len(), fails.join("\n"));
}

fn hourglass() -> (Graph, Vec<Tensor>) {
    // sghg-1x64-lsp; depth 4 needs sides that are multiples of 64 (32x32 is refused), batch 2.
    let cfg = wgpose::models::config("sghg-1x64-lsp").unwrap().with_input([3, 64, 64]);
    let mut g = cfg.build(21).unwrap();
    // Random (non-identity) gates and BN affines so their gradients are generic.
    let mut rng = Rng::new(22);
    for (name, t) in named_params_mut(&mut g) {
        if name.ends_with(".alpha") || name.ends_with(".gamma") {
            t.data.iter_mut().for_each(|v| *v = rng.range(0.5, 1.5));
        } else if name.ends_with(".beta") || name.ends_with(".bias") {
            t.data.iter_mut().for_each(|v| *v = rng.range(-0.2, 0.2));
        }
    }
    let xs = vec![rand_tensor(&mut rng, &[2, 3, 64, 64])];
    (g, xs)
}

#[test]
fn hourglass_gradients() {
    // sghg-1x64-lsp at 64x64, batch 2, batch norms in training mode: 30 random parameter tensors
    // x 2 coordinates + 4 input coordinates, against the f64 reference.
    let (g, xs) = hourglass();
    let (n, fails) = grad_check(&g, &xs, BnMode::Train, 2, Some(30), 23);
    eprintln!("hourglass: {n} coordinates checked, {} outside tolerance:\n{}", fails.len(), fails.join("\n"));
    assert!(fails.is_empty(), "{} of {n} coordinates differ", fails.len());
}

#[test]
fn losses_match_finite_differences() {
    let mut rng = Rng::new(31);
    let shape = [2, 3, 4, 5];
    let target = Tensor { shape: shape.to_vec(), data: rng.vec(120, 0.0, 1.0) };
    let weights = vec![1.0, 0.0, 1.0, 1.0, 0.5, 0.0];
    let outs = [rand_tensor(&mut rng, &shape), rand_tensor(&mut rng, &shape)];
    for rce in [false, true] {
        let f = |o: &[Tensor]| {
            let refs: Vec<&Tensor> = o.iter().collect();
            if rce {
                autodiff::rce_loss(&refs, &target, &weights).unwrap()
            } else {
                autodiff::mse_loss(&refs, &target, &weights).unwrap()
            }
        };
        let (l, g) = f(&outs);
        assert!(l.is_finite() && l > 0.0);
        for k in 0..2 {
            for i in 0..120 {
                let mut o = outs.clone();
                o[k].data[i] += 1e-2;
                let lp = f(&o).0 as f64;
                o[k].data[i] -= 2e-2;
                let lm = f(&o).0 as f64;
                let num = (lp - lm) / 2e-2;
                let a = g[k].data[i] as f64;
                assert!((a - num).abs() <= 1e-2 * a.abs() + 2e-5, "rce={rce} {k}/{i}: {a} vs {num}");
            }
            // Zero-weight joints get zero gradient.
            assert!(g[k].data[20..40].iter().all(|&v| v == 0.0));
        }
    }
    // MSE value by hand.
    let (l, _) = autodiff::mse_loss(&[&outs[0]], &target, &weights).unwrap();
    let mut s = 0.0f64;
    for (i, (&y, &t)) in outs[0].data.iter().zip(&target.data).enumerate() {
        s += weights[i / 20] as f64 * ((y - t) as f64).powi(2);
    }
    assert!((l as f64 - s / 120.0).abs() < 1e-5);
    // RCE is stable for huge logits and equals BCE(sigmoid(z), y) for moderate ones.
    let big = Tensor { shape: vec![1, 1, 1, 2], data: vec![1e4, -1e4] };
    let t = Tensor { shape: vec![1, 1, 1, 2], data: vec![1.0, 0.0] };
    let (l, g) = autodiff::rce_loss(&[&big], &t, &[1.0]).unwrap();
    assert!(l.abs() < 1e-6 && g[0].data.iter().all(|v| v.abs() < 1e-6));
    let z = Tensor { shape: vec![1, 1, 1, 1], data: vec![0.3] };
    let y = Tensor { shape: vec![1, 1, 1, 1], data: vec![0.7] };
    let (l, _) = autodiff::rce_loss(&[&z], &y, &[1.0]).unwrap();
    let p = 1.0 / (1.0 + (-0.3f64).exp());
    let bce = -(0.7 * p.ln() + 0.3 * (1.0 - p).ln());
    assert!((l as f64 - bce).abs() < 1e-6);
}

/// `match_limb_swaps` swaps a limb group's target maps and weights exactly when the predicted
/// peaks are clearly mirrored against the labelled ones, per item and per group; the margin
/// keeps near-coincident joints and unlabelled pairs out, and logits decide as heatmaps do.
#[test]
fn limb_swaps_follow_clearly_mirrored_predictions() {
    let (k, h, w) = (6, 24, 16);
    // Joints 0-3 in two groups of one and two pairs; joints 4 and 5 unpaired.
    let groups: &[&[(usize, usize)]] = &[&[(0, 1)], &[(2, 3), (5, 4)]];
    // Labelled peaks (heatmap pixels, v = 1), joint j at LABELS[j].
    const LABELS: [[f32; 2]; 6] = [[3.5, 4.5], [12.5, 5.5], [2.5, 18.5], [13.5, 19.5], [4.5, 11.5], [11.5, 12.5]];
    let maps = |peaks: &[[f32; 2]], vis: &[f32]| {
        let kps: Vec<[f32; 3]> = peaks.iter().zip(vis).map(|(p, &v)| [p[0], p[1], v]).collect();
        autodiff::gaussian_heatmaps(&kps, k, h, w, 1.5)
    };
    let ones = [1.0; 6];
    let mirror = |pairs: &[(usize, usize)], peaks: &mut [[f32; 2]]| pairs.iter().for_each(|&(a, b)| peaks.swap(a, b));
    // (predicted peaks, visibility of the labels, groups that must be swapped)
    #[allow(clippy::type_complexity)] // a case table, its fields named in the line above
    let mut cases: Vec<(Vec<[f32; 2]>, [f32; 6], Vec<usize>)> = Vec::new();
    cases.push((LABELS.to_vec(), ones, vec![])); // as labelled
    let mut p = LABELS.to_vec();
    mirror(groups[0], &mut p);
    cases.push((p, ones, vec![0])); // the first group mirrored
    let mut p = LABELS.to_vec();
    mirror(groups[1], &mut p);
    p[2][0] += 1.0; // off by a pixel: still clearly mirrored
    cases.push((p, ones, vec![1]));
    // Joint 2 unlabelled (its target map is zeros, peaking at the corner): pair (2, 3) has no
    // say, even with its predictions placed where it would look mirrored; pair (5, 4) matches.
    let mut p = LABELS.to_vec();
    (p[2], p[3]) = (LABELS[3], [0.5, 0.5]);
    cases.push((p, [1.0, 1.0, 0.0, 1.0, 1.0, 1.0], vec![]));
    let mut p = LABELS.to_vec();
    (p[0], p[1]) = ([8.5, 4.5], [7.5, 5.5]);
    cases.push((p, ones, vec![])); // both wrong, the mirrored reading closer but not by half
    let mut close = LABELS.to_vec();
    close[1] = [4.5, 5.5]; // joints 0 and 1 labelled a pixel apart
    let mut p = close.clone();
    mirror(groups[0], &mut p);
    cases.push((p, ones, vec![])); // mirrored, but within the margin
    let n = cases.len();
    let mut target = Tensor { shape: vec![n, k, h, w], data: Vec::new() };
    let mut weights = Vec::new();
    let mut pred = Tensor { shape: vec![n, k, h, w], data: Vec::new() };
    for (i, (peaks, vis, _)) in cases.iter().enumerate() {
        let labels = if i == n - 1 { &close[..] } else { &LABELS[..] };
        let (t, wt) = maps(labels, vis);
        target.data.extend(t.data);
        weights.extend(wt);
        pred.data.extend(maps(peaks, &ones).0.data.iter().map(|v| 0.8 * v + 0.1));
    }
    let logits = Tensor { shape: pred.shape.clone(), data: pred.data.iter().map(|&v| (v / (1.0 - v)).ln()).collect() };
    let hw = h * w;
    let map = |t: &Tensor, i: usize, j: usize| t.data[(i * k + j) * hw..][..hw].to_vec();
    for p in [&pred, &logits] {
        let (mut t, mut wt) = (target.clone(), weights.clone());
        let swapped = autodiff::match_limb_swaps(p, &mut t, &mut wt, groups).unwrap();
        assert_eq!(swapped, 2);
        for (i, (_, _, swap)) in cases.iter().enumerate() {
            let mut from: Vec<usize> = (0..k).collect();
            for &g in swap {
                groups[g].iter().for_each(|&(a, b)| from.swap(a, b));
            }
            for j in 0..k {
                assert_eq!(map(&t, i, j), map(&target, i, from[j]), "case {i} joint {j}");
                assert_eq!(wt[i * k + j], weights[i * k + from[j]], "case {i} weight of joint {j}");
            }
        }
        // Matched again, the swapped labels are what the prediction shows: nothing moves.
        let (mut t2, mut w2) = (t.clone(), wt.clone());
        assert_eq!(autodiff::match_limb_swaps(p, &mut t2, &mut w2, groups).unwrap(), 0);
        assert_eq!((t2, w2), (t, wt));
    }
    // Pairs outside the joints, and mismatched shapes, are errors.
    let (mut t, mut wt) = (target.clone(), weights.clone());
    assert!(autodiff::match_limb_swaps(&pred, &mut t, &mut wt, &[&[(0, 6)]]).is_err());
    assert!(autodiff::match_limb_swaps(&pred, &mut t, &mut wt[..5].to_vec(), groups).is_err());
}

#[test]
fn gaussian_targets_and_decoding() {
    let kps = [[3.5, 2.5, 1.0], [0.0, 0.0, 0.0], [7.2, 5.9, 2.0], [-40.0, 3.0, 1.0]];
    let (t, w) = autodiff::gaussian_heatmaps(&kps, 5, 6, 8, 1.5);
    assert_eq!(t.shape, vec![5, 6, 8]);
    assert_eq!(w, vec![1.0, 0.0, 1.0, 0.0, 0.0]);
    // Peak 1 at pixel (row 2, col 3) for (3.5, 2.5).
    assert!((t.data[2 * 8 + 3] - 1.0).abs() < 1e-6);
    assert!(t.data[48..96].iter().all(|&v| v == 0.0));
    // Symmetric around the centre.
    assert!((t.data[2 * 8 + 2] - t.data[2 * 8 + 4]).abs() < 1e-6);
    let batch = autodiff::stack_batch(&[t]).unwrap();
    let dec = autodiff::argmax_keypoints(&batch).unwrap();
    assert_eq!(dec[0][0][..2], [3.5, 2.5]);
    assert_eq!(dec[0][2][..2], [7.5, 5.5]);
}

#[test]
fn strip_sigmoid_exposes_logits() {
    let mut b = GraphBuilder::new(1);
    let x = b.input("x", [2, 4, 4]).unwrap();
    let c = b.conv("c", x, ConvSpec::new(3, 1)).unwrap();
    let s = b.sigmoid("s", c).unwrap();
    let g = b.finish(vec![s]).unwrap();
    let (lg, n) = autodiff::strip_final_sigmoid(&g);
    assert_eq!(n, 1);
    let mut rng = Rng::new(2);
    let xs = vec![rand_tensor(&mut rng, &[1, 2, 4, 4])];
    let p = wgpose::cpu::run(&g, &xs).unwrap();
    let z = wgpose::cpu::run(&lg, &xs).unwrap();
    for (p, z) in p[0].data.iter().zip(&z[0].data) {
        assert!((p - 1.0 / (1.0 + (-z).exp())).abs() < 1e-6);
    }
}

#[test]
fn optimisers() {
    // Minimise sum((w - 3)^2) on a 1x1 conv weight / bias; bias must not be decayed.
    let mut b = GraphBuilder::new(1);
    let x = b.input("x", [1, 1, 1]).unwrap();
    let c = b.conv("c", x, ConvSpec::new(1, 1)).unwrap();
    let g0 = b.finish(vec![c]).unwrap();
    for opt in [Optimizer::adam(0.0), Optimizer::rmsprop(0.0)] {
        let mut g = g0.clone();
        let mut opt = opt;
        for step in 0..400 {
            let mut grads = autodiff::Gradients::default();
            for (name, t) in wgpose::weights::named_params(&g) {
                let d: Vec<f32> = t.data.iter().map(|v| 2.0 * (v - 3.0)).collect();
                grads.params.insert(name, Tensor::new(t.shape.clone(), d).unwrap());
            }
            opt.apply(&mut g, &grads, autodiff::step_lr(0.1, 0.5, 150, step)).unwrap();
        }
        for (name, t) in wgpose::weights::named_params(&g) {
            assert!((t.data[0] - 3.0).abs() < 0.05, "{name}: {}", t.data[0]);
        }
    }
    // First Adam step moves every coordinate by ~lr (bias correction), decoupled decay on
    // weights only.
    let mut g = g0.clone();
    let w0 = wgpose::weights::named_params(&g)[0].1.data[0];
    let mut grads = autodiff::Gradients::default();
    grads.params.insert("c.weight".into(), Tensor::new(vec![1, 1, 1, 1], vec![0.3]).unwrap());
    grads.params.insert("c.bias".into(), Tensor::new(vec![1], vec![-5.0]).unwrap());
    let mut opt = Optimizer::adam(0.1);
    opt.apply(&mut g, &grads, 0.01).unwrap();
    let p = wgpose::weights::named_params(&g);
    let expect_w = w0 - 0.01 * 0.1 * w0 - 0.01;
    assert!((p[0].1.data[0] - expect_w).abs() < 1e-5, "{} vs {expect_w}", p[0].1.data[0]);
    assert!((p[1].1.data[0] - 0.01).abs() < 1e-5);
    assert_eq!(autodiff::step_lr(1.0, 0.1, 10, 25), 0.1f32 * 0.1);
}

/// Synthetic batch: noise images with a bright blob per joint (at the keypoint, in a channel
/// depending on the joint), and Gaussian targets.
fn synthetic(n: usize, k: usize, side: usize, seed: u64) -> (Tensor, Tensor, Vec<f32>, Vec<Vec<[f32; 3]>>) {
    let mut rng = Rng::new(seed);
    let hm = side / 4;
    let mut imgs = Vec::new();
    let mut tgts = Vec::new();
    let mut ws = Vec::new();
    let mut kps_all = Vec::new();
    for _ in 0..n {
        let kps: Vec<[f32; 3]> =
            (0..k).map(|_| [rng.below(hm) as f32 + 0.5, rng.below(hm) as f32 + 0.5, 1.0]).collect();
        let mut img = Tensor::zeros(vec![3, side, side]);
        for v in img.data.iter_mut() {
            *v = 0.1 * rng.normal();
        }
        for (j, kp) in kps.iter().enumerate() {
            let (cx, cy) = (kp[0] * 4.0, kp[1] * 4.0);
            let ch = j % 3;
            for i in 0..side {
                for jj in 0..side {
                    let d2 = (jj as f32 + 0.5 - cx).powi(2) + (i as f32 + 0.5 - cy).powi(2);
                    img.data[(ch * side + i) * side + jj] += (-d2 / 8.0).exp();
                }
            }
        }
        let (t, w) = autodiff::gaussian_heatmaps(&kps, k, hm, hm, 1.0);
        imgs.push(img);
        tgts.push(t);
        ws.extend(w);
        kps_all.push(kps);
    }
    (autodiff::stack_batch(&imgs).unwrap(), autodiff::stack_batch(&tgts).unwrap(), ws, kps_all)
}

#[test]
fn overfits_tiny_batch() {
    let cfg = wgpose::models::config("sghg-1x64-lsp").unwrap().with_input([3, 64, 64]);
    let mut g = cfg.build(5).unwrap();
    let k = cfg.joints;
    let (x, target, weights, kps) = synthetic(2, k, 64, 77);
    let mut opt = Optimizer::adam(0.0);
    let t0 = std::time::Instant::now();
    let mut first = None;
    let mut last = 0.0;
    let steps = 150;
    for step in 0..steps {
        let (loss, grads, tape) = autodiff::train_step(&g, std::slice::from_ref(&x), BnMode::Train, |o| {
            autodiff::mse_loss(o, &target, &weights)
        })
        .unwrap();
        tape.apply_running_stats(&mut g);
        opt.apply(&mut g, &grads, 2e-3).unwrap();
        first.get_or_insert(loss);
        last = loss;
        if step % 25 == 0 {
            eprintln!("step {step}: loss {loss:.6}");
        }
    }
    let first = first.unwrap();
    eprintln!("loss {first:.6} -> {last:.6} in {steps} steps, {:.1} s", t0.elapsed().as_secs_f64());
    assert!(last < first / 20.0, "loss fell only from {first} to {last}");
    // Decoded keypoints (training-mode forward, as trained) within one heatmap pixel.
    let tape = autodiff::forward_train(&g, std::slice::from_ref(&x), BnMode::Train).unwrap();
    let out = tape.outputs(&g).pop().unwrap();
    let dec = autodiff::argmax_keypoints(&out).unwrap();
    let mut bad = 0;
    for (d, t) in dec.iter().zip(&kps) {
        for (d, t) in d.iter().zip(t) {
            if (d[0] - t[0]).abs() > 1.0 || (d[1] - t[1]).abs() > 1.0 {
                bad += 1;
            }
        }
    }
    assert_eq!(bad, 0, "{bad} of {} keypoints are more than 1 px off", 2 * k);
}

#[test]
#[ignore]
fn training_throughput() {
    let cfg = wgpose::models::config("sghg-1x64-lsp").unwrap();
    let g = cfg.build(1).unwrap();
    let batch = 8;
    let [c, h, w] = cfg.input;
    let mut rng = Rng::new(1);
    let x = rand_tensor(&mut rng, &[batch, c, h, w]);
    let flops = g.flops(batch).unwrap() as f64 * 3.0;
    let run = || {
        let tape = autodiff::forward_train(&g, std::slice::from_ref(&x), BnMode::Train).unwrap();
        let dout: Vec<Tensor> = tape.outputs(&g).into_iter().map(|t| Tensor::filled(t.shape.clone(), 1e-3)).collect();
        let t1 = std::time::Instant::now();
        autodiff::backward(&g, &tape, &dout).unwrap();
        t1.elapsed().as_secs_f64()
    };
    run();
    let iters = 3;
    let t0 = std::time::Instant::now();
    let mut tb = 0.0;
    for _ in 0..iters {
        tb += run();
    }
    let dt = t0.elapsed().as_secs_f64() / iters as f64;
    println!(
        "sghg-1x64-lsp {h}x{w} batch {batch}: forward+backward {:.3} s/step (backward {:.3} s), {:.1} images/s, {:.1} GFLOP/s (3 x {:.2} GFLOP forward)",
        dt,
        tb / iters as f64,
        batch as f64 / dt,
        flops / dt / 1e9,
        flops / 3e9
    );
}

#[test]
fn api_contracts() {
    // Gradient names are exactly the trainable parameters (no running statistics).
    let (g, xs) = small_network();
    let tape = autodiff::forward_train(&g, &xs, BnMode::Train).unwrap();
    let outs = tape.outputs(&g);
    let grads = autodiff::backward(&g, &tape, &outs).unwrap();
    let names: Vec<String> = autodiff::trainable_params(&g).into_iter().map(|(n, _)| n).collect();
    let keys: Vec<String> = grads.params.keys().cloned().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(!names.iter().any(|n| n.contains("running")));
    for (n, t) in autodiff::trainable_params(&g) {
        assert_eq!(grads.params[&n].shape, t.shape, "{n}");
    }
    // Wrong number / shape of output gradients is an error, not a panic.
    assert!(autodiff::backward(&g, &tape, &outs[..1]).is_err());
    let mut bad = outs.clone();
    bad[0].shape[1] += 1;
    assert!(autodiff::backward(&g, &tape, &bad).is_err());
    // A convolution with a fused epilogue is refused.
    let mut fused = g.clone();
    for n in &mut fused.nodes {
        if let Op::Conv2d(c) = &mut n.op {
            c.epilogue.act = Act::Relu;
        }
    }
    assert!(autodiff::forward_train(&fused, &xs, BnMode::Train).is_err());
    // The conv backward without dx gives the same dW and bias gradient.
    let mut rng = Rng::new(9);
    for (shape, spec) in [
        ([3, 4, 6, 5], ConvSpec::new(6, 3).padding(1).groups(2)),
        ([1, 4, 6, 5], ConvSpec::new(3, 1)),
        ([2, 4, 6, 5], ConvSpec::new(4, 3).groups(4).stride(2)),
    ] {
        let (g, x) = one_conv(shape, spec, 5);
        let Op::Conv2d(c) = &g.nodes[1].op else { panic!() };
        let y = wgpose::cpu::run(&g, &x).unwrap();
        let dy = rand_tensor(&mut rng, &y[0].shape);
        let a = autodiff::backward::conv2d_backward(&x[0], &dy, c, true);
        let b = autodiff::backward::conv2d_backward(&x[0], &dy, c, false);
        assert!(b.dx.is_none());
        let (e, _) = wgpose::tensor::max_abs_rel_diff(&a.dw.data, &b.dw.data);
        assert!(e < 1e-4, "{e}");
        assert_eq!(a.db, b.db);
    }
}
