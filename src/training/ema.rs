//! An exponential moving average of the weights over the training steps (`wgpose train --ema
//! DECAY`), the "EMA" or Polyak average many pose trainers keep beside the weights they train:
//! after every optimiser step `avg = d * avg + (1 - d) * w` for every parameter and batch-norm
//! running statistic. The average is a second copy of the graph, saved as an ordinary weights
//! file (`<model>.ema.safetensors`, and `checkpoint-eNNN.ema.safetensors` beside each checkpoint
//! so that `--resume` continues it), so `eval`, `predict` and `average-weights` take it as is.
//!
//! The decay ramps up as `d_n = min(d, (1 + n) / (10 + n))` over the first updates `n` (as timm's
//! and YOLO's trainers do), so that an average started from a random initialisation forgets it
//! within a few dozen steps instead of a few thousand.

use crate::error::{Error, Result};
use crate::graph::Graph;

/// The weight average of a training run: a graph with the same nodes as the trained one.
#[derive(Clone, Debug)]
pub struct WeightAverage {
    decay: f32,
    updates: u64,
    graph: Graph,
}

impl WeightAverage {
    /// Starts the average at `graph`'s current weights (`updates` already made, for a resumed
    /// run). `decay` must lie in (0, 1).
    pub fn new(graph: &Graph, decay: f32, updates: u64) -> Result<Self> {
        if !(decay > 0.0 && decay < 1.0) {
            return Err(Error::Input(format!("--ema must lie strictly between 0 and 1 (got {decay})")));
        }
        Ok(WeightAverage { decay, updates, graph: graph.clone() })
    }

    /// The decay the next update uses (the ramp of the module docs).
    pub fn current_decay(&self) -> f32 {
        let n = self.updates as f64;
        (self.decay as f64).min((1.0 + n) / (10.0 + n)) as f32
    }

    /// Folds `trained`'s weights into the average. The two graphs must hold the same parameters
    /// in the same order and shapes (the average was cloned from the trained graph).
    pub fn update(&mut self, trained: &Graph) -> Result<()> {
        let d = self.current_decay();
        let src = trained.params();
        let mut dst = self.graph.params_mut();
        if src.len() != dst.len() {
            return Err(Error::Graph(format!(
                "weight average: {} parameters in the trained graph, {} in the average",
                src.len(),
                dst.len()
            )));
        }
        for ((name, kind, w), (aname, akind, a)) in src.iter().zip(dst.iter_mut()) {
            if name != aname || kind != akind || w.shape != a.shape {
                return Err(Error::Graph(format!(
                    "weight average: `{name}.{}` {:?} does not match `{aname}.{}` {:?}",
                    kind.name(),
                    w.shape,
                    akind.name(),
                    a.shape
                )));
            }
            for (a, &w) in a.data.iter_mut().zip(&w.data) {
                *a = d * *a + (1.0 - d) * w;
            }
        }
        self.updates += 1;
        Ok(())
    }

    /// Updates folded in so far (including those of the run it resumed).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The configured decay (the ramp's ceiling).
    pub fn decay(&self) -> f32 {
        self.decay
    }

    /// The averaged network.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The averaged network, for loading a saved average into it.
    pub fn graph_mut(&mut self) -> &mut Graph {
        &mut self.graph
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models;

    fn weights(g: &Graph) -> Vec<f32> {
        g.params().iter().flat_map(|(_, _, t)| t.data.clone()).collect()
    }

    /// Each update moves every parameter (and running statistic) by `(1 - d_n)` of its distance
    /// to the trained value, with the ramped decay; the reference is computed here in f64.
    #[test]
    fn update_follows_the_ramped_decay() {
        let g0 = models::config("sghg-1x64-lsp").unwrap().build(1).unwrap();
        let mut avg = WeightAverage::new(&g0, 0.9, 0).unwrap();
        let mut reference: Vec<f64> = weights(&g0).iter().map(|&v| v as f64).collect();
        let mut rng = crate::rng::Rng::new(7);
        for step in 0..40u64 {
            // A "trained" graph: the start plus noise of a different size at every step.
            let mut g = g0.clone();
            for (_, _, t) in g.params_mut() {
                t.data.iter_mut().for_each(|v| *v += rng.range(-1.0, 1.0) * (1.0 + step as f32));
            }
            let d = (0.9f64).min((1.0 + step as f64) / (10.0 + step as f64));
            assert!((avg.current_decay() as f64 - d).abs() < 1e-6, "step {step}");
            avg.update(&g).unwrap();
            for (r, &w) in reference.iter_mut().zip(&weights(&g)) {
                *r = d * *r + (1.0 - d) * w as f64;
            }
        }
        assert_eq!(avg.updates(), 40);
        let got = weights(avg.graph());
        assert_eq!(got.len(), reference.len());
        // f32 against f64 over 40 updates of values up to ~40: relative 1e-5.
        let worst =
            got.iter().zip(&reference).map(|(&g, &r)| (g as f64 - r).abs() / (1.0 + r.abs())).fold(0.0, f64::max);
        assert!(worst < 1e-5, "worst relative deviation {worst}");
        // Running statistics are averaged too (they are in `params`).
        assert!(avg.graph().params().iter().any(|(_, k, _)| !k.trainable()));
    }

    /// A resumed average starts past the ramp; decays outside (0, 1) and a graph of another
    /// network are refused with errors, not panics.
    #[test]
    fn bad_decays_and_other_networks_are_refused() {
        let g = models::config("sghg-1x64-lsp").unwrap().build(1).unwrap();
        assert_eq!(WeightAverage::new(&g, 0.999, 1_000_000).unwrap().current_decay(), 0.999);
        for d in [0.0, 1.0, -0.5, 2.0, f32::NAN] {
            assert!(WeightAverage::new(&g, d, 0).is_err(), "{d}");
        }
        let other = models::config("ldcrn-w16-lsp").unwrap().build(1).unwrap();
        let mut avg = WeightAverage::new(&g, 0.99, 0).unwrap();
        assert!(avg.update(&other).is_err());
    }
}
