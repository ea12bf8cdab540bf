//! Forward, weight-gradient and input-gradient times of single convolutions on the CPU, the
//! three parts of a training step's convolution work:
//! `cargo run --release --example conv_grad_profile`.
//!
//! Batch 16, seeded random data, median of 4 runs each; GFLOP/s counts a multiply-add as 2.
//! dX is the difference between a backward pass with and without the input gradient.
//! `RAYON_NUM_THREADS` sets the threads; `WGPOSE_CPU_DW=padded|im2col` forces the weight
//! gradient's method (`autodiff::backward`). The shapes are the hourglass's, LDCRN's and
//! fasterpose's typical layers, or `SHAPES="cin,cout,side,kernel,stride;..."` (e.g.
//! `SHAPES="512,512,4,3,1"` for ResNet-18's last layers).

use std::time::Instant;

use wgpose::autodiff::backward::conv2d_backward;
use wgpose::graph::{Conv2d, Epilogue, Op};
use wgpose::rng::Rng;
use wgpose::Tensor;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng::new(1);
    let n = 16;
    // (cin, cout, input side, kernel, stride)
    let default_shapes = [
        (64usize, 32usize, 64usize, 3usize, 1usize),
        (32, 16, 64, 3, 1),
        (64, 32, 32, 3, 1),
        (32, 32, 32, 3, 1),
        (32, 32, 16, 3, 1),
        (32, 32, 8, 3, 1),
        (16, 16, 32, 3, 1),
        (64, 64, 32, 3, 1),
        (128, 128, 16, 3, 1),
        (64, 128, 32, 3, 2),
    ];
    let shapes: Vec<(usize, usize, usize, usize, usize)> = match std::env::var("SHAPES") {
        Ok(list) => list
            .split(';')
            .map(|s| {
                let v: Vec<usize> = s.split(',').map(|d| d.trim().parse()).collect::<Result<_, _>>()?;
                match v[..] {
                    [a, b, c, d, e] => Ok((a, b, c, d, e)),
                    _ => Err(format!("SHAPES: `{s}` is not cin,cout,side,kernel,stride").into()),
                }
            })
            .collect::<Result<_, Box<dyn std::error::Error>>>()?,
        Err(_) => default_shapes.to_vec(),
    };
    for &(cin, cout, side, k, stride) in &shapes {
        let c = Conv2d {
            weight: Tensor::new(vec![cout, cin, k, k], rng.vec(cout * cin * k * k, -0.1, 0.1))?,
            bias: None,
            stride: [stride, stride],
            padding: [k / 2, k / 2],
            dilation: [1, 1],
            groups: 1,
            epilogue: Epilogue::default(),
        };
        let x = Tensor::new(vec![n, cin, side, side], rng.vec(n * cin * side * side, -1.0, 1.0))?;
        let [oh, ow] = c.out_hw(side, side).ok_or("the kernel does not fit")?;
        let dy = Tensor::new(vec![n, cout, oh, ow], rng.vec(n * cout * oh * ow, -1.0, 1.0))?;
        let op = Op::Conv2d(c.clone());
        let gflop = 2.0 * (n * cout * oh * ow * cin * k * k) as f64 / 1e9;
        let (mut fwd, mut both, mut dw) = (vec![], vec![], vec![]);
        for _ in 0..4 {
            let t = Instant::now();
            std::hint::black_box(wgpose::cpu::eval_op("conv", &op, &[&x])?);
            fwd.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            std::hint::black_box(conv2d_backward(&x, &dy, &c, true));
            both.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            std::hint::black_box(conv2d_backward(&x, &dy, &c, false));
            dw.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (f, b, w) = (median(fwd), median(both), median(dw));
        let rate = |ms: f64| gflop / ms * 1e3;
        println!(
            "{cin:>3} -> {cout:<3} {k}x{k}/{stride} at {side}x{side}: forward {f:6.1} ms ({:4.1} GFLOP/s)  \
             dW {w:6.1} ms ({:4.1})  dX {:6.1} ms ({:4.1})",
            rate(f),
            rate(w),
            b - w,
            rate(b - w)
        );
    }
    Ok(())
}
