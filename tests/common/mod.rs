//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use wgpose::gpu::GpuContext;
use wgpose::rng::Rng;
use wgpose::Tensor;

/// The GPU context for tests. Without an adapter the GPU tests are skipped with a message, unless
/// `WGPOSE_REQUIRE_GPU=1` (set by CI, which installs lavapipe), where a missing adapter fails.
pub fn gpu() -> Option<GpuContext> {
    match GpuContext::new() {
        Ok(c) => Some(c),
        Err(e) => {
            if std::env::var("WGPOSE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("WGPOSE_REQUIRE_GPU=1 but: {e}");
            }
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

pub fn random_tensor(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape.to_vec(), rng.vec(n, -1.0, 1.0)).unwrap()
}

/// Asserts `got` matches `want` within `tol * (1 + max |want|)` elementwise.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let scale = 1.0 + want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = (0f32, 0usize);
    for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
        let d = (a - b).abs();
        assert!(d.is_finite() || (a.is_nan() && b.is_nan()), "{what}: non-finite at {i}: {a} vs {b}");
        if d > worst.0 {
            worst = (d, i);
        }
    }
    assert!(
        worst.0 <= tol * scale,
        "{what}: max abs diff {} at {} (got {}, want {}), tolerance {}",
        worst.0,
        worst.1,
        got.data[worst.1],
        want.data[worst.1],
        tol * scale
    );
}

use wgpose::graph::{ConvSpec, Graph, GraphBuilder, NodeId};

/// A random small graph over every operator, with random batch-norm statistics so folding is
/// exercised. Shapes are awkward on purpose (odd sizes, channels not a multiple of 4).
pub fn random_graph(seed: u64) -> Graph {
    let mut b = GraphBuilder::new(seed);
    b.random_norm_stats = true;
    let mut rng = Rng::new(seed.wrapping_mul(31) + 7);
    let h = 9 + rng.below(8);
    let w = 9 + rng.below(8);
    let x = b.input("input", [3, h, w]).unwrap();
    // (node, c, h, w)
    let mut live: Vec<(NodeId, usize, usize, usize)> = vec![(x, 3, h, w)];
    let steps = 6 + rng.below(8);
    for s in 0..steps {
        let pick = live[live.len() - 1 - rng.below(live.len().min(3))];
        let (id, c, ph, pw) = pick;
        let name = format!("n{s}");
        let next = match rng.below(10) {
            0 | 1 => {
                let k = [1, 3, 3, 5][rng.below(4)];
                let cout = 2 + rng.below(11);
                let conv = b.conv(&format!("{name}.conv"), id, ConvSpec::new(cout, k).no_bias()).unwrap();
                let bn = b.batch_norm(&format!("{name}.bn"), conv).unwrap();
                let out = if rng.below(2) == 0 { b.relu(&format!("{name}.relu"), bn).unwrap() } else { bn };
                (out, cout, ph, pw)
            }
            2 => {
                let g = if c % 2 == 0 { 2 } else { 1 };
                let cout = g * (1 + rng.below(6));
                let stride = 1 + rng.below(2);
                let spec = ConvSpec::new(cout, 3).stride(stride).groups(g);
                let out = b.conv(&format!("{name}.conv"), id, spec).unwrap();
                (out, cout, (ph - 1) / stride + 1, (pw - 1) / stride + 1)
            }
            3 => {
                let out = b.conv(&format!("{name}.dw"), id, ConvSpec::new(c, 3).groups(c)).unwrap();
                let out = b.relu(&format!("{name}.relu"), out).unwrap();
                (out, c, ph, pw)
            }
            4 if ph >= 4 && pw >= 4 => {
                let out = b.max_pool(&format!("{name}.pool"), id, 3, 2, 1).unwrap();
                (out, c, (ph - 1) / 2 + 1, (pw - 1) / 2 + 1)
            }
            5 if ph * pw < 400 => {
                if rng.below(2) == 0 {
                    (b.upsample_nearest(&format!("{name}.up"), id, 2).unwrap(), c, ph * 2, pw * 2)
                } else {
                    (b.upsample_bilinear(&format!("{name}.up"), id, 2).unwrap(), c, ph * 2, pw * 2)
                }
            }
            6 => {
                let same: Vec<_> = live.iter().filter(|e| e.1 == c && e.2 == ph && e.3 == pw && e.0 != id).collect();
                if let Some(&&(o, ..)) = same.last() {
                    let out = if rng.below(2) == 0 {
                        b.add(&format!("{name}.add"), o, id).unwrap()
                    } else {
                        b.gated_add(&format!("{name}.gate"), o, id, 0.5).unwrap()
                    };
                    (out, c, ph, pw)
                } else {
                    // A residual block: conv + skip, then relu (fusable chain).
                    let conv = b.conv(&format!("{name}.conv"), id, ConvSpec::new(c, 3)).unwrap();
                    let sum = b.add(&format!("{name}.add"), conv, id).unwrap();
                    (b.relu(&format!("{name}.relu"), sum).unwrap(), c, ph, pw)
                }
            }
            7 => {
                let same: Vec<_> = live.iter().filter(|e| e.2 == ph && e.3 == pw).map(|e| (e.0, e.1)).collect();
                let a = b.conv(&format!("{name}.a"), id, ConvSpec::new(2 + rng.below(5), 3)).unwrap();
                let (o, oc) = same[rng.below(same.len())];
                let ca = b.channels(a);
                let out = b.concat(&format!("{name}.cat"), &[a, o]).unwrap();
                (out, ca + oc, ph, pw)
            }
            8 if c % 4 == 0 => (b.pixel_shuffle(&format!("{name}.ps"), id, 2).unwrap(), c / 4, ph * 2, pw * 2),
            8 => (b.sigmoid(&format!("{name}.sig"), id).unwrap(), c, ph, pw),
            _ => {
                let bn = b.batch_norm(&format!("{name}.bn"), id).unwrap();
                (b.relu(&format!("{name}.relu"), bn).unwrap(), c, ph, pw)
            }
        };
        live.push(next);
    }
    let last = live.last().unwrap().0;
    let other = live[1 + rng.below(live.len() - 1)].0;
    let outputs = if other != last { vec![last, other] } else { vec![last] };
    b.finish(outputs).unwrap()
}

/// Random inputs for every input node of `g` at batch `n`.
pub fn random_inputs(g: &Graph, n: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    let shapes = g.shapes(n).unwrap();
    g.inputs().iter().map(|&i| random_tensor(&mut rng, &shapes[i])).collect()
}

/// A fresh directory under the system temp dir (`wgpose-test-<tag>-<pid>`), removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("wgpose-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn join(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
