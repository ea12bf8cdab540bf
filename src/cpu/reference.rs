//! The reference executor: every operator as plain, single-threaded loops that follow the
//! definitions literally (convolutions accumulate in f64). Slow on purpose; it is the ground
//! truth the fast path and the GPU kernels are compared against.

use crate::error::Result;
use crate::graph::{Act, BatchNorm, Conv2d, Graph, Op, Residual};
use crate::tensor::Tensor;

/// Runs the graph with the reference loops; returns the graph outputs in order. Same inputs,
/// checks and errors as [`crate::cpu::run`].
pub fn run(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut all = run_all(graph, inputs)?;
    let mut out = Vec::with_capacity(graph.outputs.len());
    for &o in &graph.outputs {
        // An output listed twice is cloned for its later positions.
        let t = if graph.outputs.iter().filter(|&&x| x == o).count() > 1 {
            all[o].clone()
        } else {
            std::mem::replace(&mut all[o], Tensor { shape: Vec::new(), data: Vec::new() })
        };
        out.push(t);
    }
    Ok(out)
}

/// Runs the graph with the reference loops and returns every node's output (index = node id).
pub fn run_all(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    super::run_all_with(graph, inputs, eval)
}

/// One operator on explicit input tensors: returns the node's output. `name` only labels
/// errors; shapes and parameters are checked, values are not.
pub fn eval_op(name: &str, op: &Op, inputs: &[&Tensor]) -> Result<Tensor> {
    super::eval_op_with(name, op, inputs, eval)
}

fn eval(op: &Op, x: &[&Tensor], out: [usize; 4]) -> Tensor {
    match op {
        Op::Input { .. } => unreachable!("input nodes are not evaluated"),
        Op::Conv2d(c) => conv2d(x[0], x.get(1).copied(), c, out),
        Op::BatchNorm(bn) => batch_norm(x[0], bn),
        Op::ChannelAffine { scale, shift, act } => channel_affine(x[0], &scale.data, &shift.data, *act),
        Op::Activation(act) => map(x[0], |_, v| act.apply(v)),
        Op::MaxPool { kernel, stride, padding } => max_pool(x[0], *kernel, *stride, *padding, out),
        Op::UpsampleNearest { factor } => upsample_nearest(x[0], *factor),
        Op::UpsampleBilinear { factor } => upsample_bilinear(x[0], *factor),
        Op::Concat => concat(x, out),
        Op::Add => add(x[0], x[1], |_| 1.0),
        Op::GatedAdd { alpha } => add(x[0], x[1], |c| alpha.data[c]),
        Op::PixelShuffle { factor } => pixel_shuffle(x[0], *factor),
    }
}

fn dims(t: &Tensor) -> [usize; 4] {
    [t.shape[0], t.shape[1], t.shape[2], t.shape[3]]
}

fn at(t: &Tensor, n: usize, c: usize, h: usize, w: usize) -> f32 {
    let [_, cc, hh, ww] = dims(t);
    t.data[((n * cc + c) * hh + h) * ww + w]
}

/// Applies `f(channel, value)` to every element.
fn map(x: &Tensor, f: impl Fn(usize, f32) -> f32) -> Tensor {
    let [_, c, h, w] = dims(x);
    let data = x.data.iter().enumerate().map(|(i, &v)| f(i / (h * w) % c, v)).collect();
    Tensor { shape: x.shape.clone(), data }
}

/// `y = post_act( act(conv + bias) (+) residual )`, zero padding, groups, stride, dilation.
pub fn conv2d(x: &Tensor, residual: Option<&Tensor>, c: &Conv2d, out: [usize; 4]) -> Tensor {
    let [n, _, h, w] = dims(x);
    let [_, cout, oh, ow] = out;
    let cin_g = c.cin_per_group();
    let cout_g = cout / c.groups;
    let [kh, kw] = c.kernel();
    let mut y = Tensor::zeros(out.to_vec());
    for b in 0..n {
        for o in 0..cout {
            let g = o / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = c.bias.as_ref().map_or(0.0, |bias| bias.data[o] as f64);
                    for ci in 0..cin_g {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize - c.padding[0] as isize;
                                let ix = (ox * c.stride[1] + kx * c.dilation[1]) as isize - c.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let wv = c.weight.data[((o * cin_g + ci) * kh + ky) * kw + kx];
                                let xv = at(x, b, g * cin_g + ci, iy as usize, ix as usize);
                                acc += wv as f64 * xv as f64;
                            }
                        }
                    }
                    let mut v = c.epilogue.act.apply(acc as f32);
                    if let Some(r) = residual {
                        let rv = at(r, b, o, oy, ox);
                        v = match c.epilogue.residual.as_ref().expect("checked by shape inference") {
                            Residual::Add => v + rv,
                            Residual::GateResidual(a) => v + a.data[o] * rv,
                            Residual::GateConv(a) => a.data[o] * v + rv,
                        };
                    }
                    v = c.epilogue.post_act.apply(v);
                    y.data[((b * cout + o) * oh + oy) * ow + ox] = v;
                }
            }
        }
    }
    y
}

/// `(x - mean) / sqrt(var + eps) * gamma + beta`, computed from the definition (not through
/// `BatchNorm::scale_shift`, so that the fast path's use of it is checked).
pub fn batch_norm(x: &Tensor, bn: &BatchNorm) -> Tensor {
    map(x, |c, v| {
        let norm = (v as f64 - bn.mean.data[c] as f64) / (bn.var.data[c] as f64 + bn.eps as f64).sqrt();
        (norm * bn.gamma.data[c] as f64 + bn.beta.data[c] as f64) as f32
    })
}

/// `act(scale[c] * x + shift[c])`
pub fn channel_affine(x: &Tensor, scale: &[f32], shift: &[f32], act: Act) -> Tensor {
    map(x, |c, v| act.apply(scale[c] * v + shift[c]))
}

/// Max over the window's positions inside the input; padded positions never win.
pub fn max_pool(x: &Tensor, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], out: [usize; 4]) -> Tensor {
    let [n, c, h, w] = dims(x);
    let [_, _, oh, ow] = out;
    let mut y = Tensor::zeros(out.to_vec());
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = f32::NEG_INFINITY;
                    for ky in 0..kernel[0] {
                        for kx in 0..kernel[1] {
                            let iy = (oy * stride[0] + ky) as isize - padding[0] as isize;
                            let ix = (ox * stride[1] + kx) as isize - padding[1] as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let v = at(x, b, ch, iy as usize, ix as usize);
                            if v > m || v.is_nan() {
                                m = v;
                            }
                        }
                    }
                    y.data[((b * c + ch) * oh + oy) * ow + ox] = m;
                }
            }
        }
    }
    y
}

/// Nearest-neighbour upsampling of an NCHW tensor by `f` on both axes.
pub fn upsample_nearest(x: &Tensor, f: usize) -> Tensor {
    let [n, c, h, w] = dims(x);
    let mut y = Tensor::zeros(vec![n, c, h * f, w * f]);
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..h * f {
                for ox in 0..w * f {
                    y.data[((b * c + ch) * h * f + oy) * w * f + ox] = at(x, b, ch, oy / f, ox / f);
                }
            }
        }
    }
    y
}

/// Source index and weight of the second tap for output `o` of an axis upsampled by `f` from
/// `len` samples: half-pixel centres, the source coordinate clamped at 0, the second tap clamped
/// to the last sample (PyTorch `align_corners=False`).
fn bilinear_taps(o: usize, f: usize, len: usize) -> (usize, usize, f32) {
    let src = ((o as f32 + 0.5) / f as f32 - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(len - 1);
    let i1 = (i0 + 1).min(len - 1);
    (i0, i1, src - i0 as f32)
}

/// Bilinear upsampling of an NCHW tensor by `f` (half-pixel centres, PyTorch's
/// `align_corners = false`).
pub fn upsample_bilinear(x: &Tensor, f: usize) -> Tensor {
    let [n, c, h, w] = dims(x);
    let mut y = Tensor::zeros(vec![n, c, h * f, w * f]);
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..h * f {
                let (y0, y1, ly) = bilinear_taps(oy, f, h);
                for ox in 0..w * f {
                    let (x0, x1, lx) = bilinear_taps(ox, f, w);
                    let top = (1.0 - lx) * at(x, b, ch, y0, x0) + lx * at(x, b, ch, y0, x1);
                    let bot = (1.0 - lx) * at(x, b, ch, y1, x0) + lx * at(x, b, ch, y1, x1);
                    y.data[((b * c + ch) * h * f + oy) * w * f + ox] = (1.0 - ly) * top + ly * bot;
                }
            }
        }
    }
    y
}

/// Channel concatenation of NCHW tensors into an `out = [n, c, h, w]` tensor (`c` the sum of
/// their channels).
pub fn concat(xs: &[&Tensor], out: [usize; 4]) -> Tensor {
    let [n, c, h, w] = out;
    let mut y = Tensor::zeros(out.to_vec());
    for b in 0..n {
        let mut c0 = 0;
        for x in xs {
            let xc = x.shape[1];
            for ch in 0..xc {
                for i in 0..h {
                    for j in 0..w {
                        y.data[((b * c + c0 + ch) * h + i) * w + j] = at(x, b, ch, i, j);
                    }
                }
            }
            c0 += xc;
        }
    }
    y
}

/// `gate(c) * a + b` (plain add with a gate of 1, gated add with `alpha`).
fn add(a: &Tensor, b: &Tensor, gate: impl Fn(usize) -> f32) -> Tensor {
    let [_, c, h, w] = dims(a);
    let data = a.data.iter().zip(&b.data).enumerate().map(|(i, (&s, &x))| gate(i / (h * w) % c) * s + x).collect();
    Tensor { shape: a.shape.clone(), data }
}

/// `out[n, c, h*r + i, w*r + j] = in[n, c*r*r + i*r + j, h, w]`
pub fn pixel_shuffle(x: &Tensor, r: usize) -> Tensor {
    let [n, c, h, w] = dims(x);
    let co = c / (r * r);
    let mut y = Tensor::zeros(vec![n, co, h * r, w * r]);
    for b in 0..n {
        for ch in 0..co {
            for i in 0..h {
                for di in 0..r {
                    for j in 0..w {
                        for dj in 0..r {
                            let v = at(x, b, ch * r * r + di * r + dj, i, j);
                            y.data[((b * co + ch) * h * r + i * r + di) * w * r + j * r + dj] = v;
                        }
                    }
                }
            }
        }
    }
    y
}
