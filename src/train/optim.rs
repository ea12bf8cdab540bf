//! Optimisers (Adam, RMSprop) and the step learning-rate schedule.
//!
//! State is keyed by parameter name (the names of [`crate::weights::named_params`]), so it
//! survives graph clones and is independent of node order. Parameters without a gradient in the
//! [`Gradients`] map (and batch-norm running statistics, which never have one) are left alone.
//!
//! Weight decay applies to convolution weights only (names ending in `.weight`): biases,
//! batch-norm `gamma`/`beta`, channel-affine `scale`/`shift` and soft gates `alpha` are not
//! decayed (the usual practice; decaying gates or BN scales shrinks the function, not the
//! complexity).

use std::collections::HashMap;

use super::Gradients;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::weights::named_params_mut;

/// Whether weight decay applies to the parameter called `name`.
pub fn decays(name: &str) -> bool {
    name.ends_with(".weight")
}

/// Step schedule: `lr * gamma^floor(epoch / step)` (`step == 0` means constant).
pub fn step_lr(lr: f32, gamma: f32, step: usize, epoch: usize) -> f32 {
    if step == 0 {
        return lr;
    }
    lr * gamma.powi((epoch / step) as i32)
}

#[derive(Clone, Debug)]
struct AdamState {
    m: Vec<f32>,
    v: Vec<f32>,
    t: u64,
}

/// Adam with bias correction (PyTorch's `Adam`); with `weight_decay > 0` the decay is decoupled
/// (AdamW: `p -= lr * weight_decay * p` before the Adam update).
#[derive(Clone, Debug)]
pub struct Adam {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    state: HashMap<String, AdamState>,
}

impl Default for Adam {
    fn default() -> Self {
        Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, state: HashMap::new() }
    }
}

impl Adam {
    pub fn new(weight_decay: f32) -> Self {
        Adam { weight_decay, ..Default::default() }
    }
}

/// RMSprop as PyTorch's (`alpha = 0.99`, `eps = 1e-8` added outside the square root, no
/// momentum, not centred). Weight decay is classic L2 (`g += weight_decay * p`), as in PyTorch.
#[derive(Clone, Debug)]
pub struct RmsProp {
    pub alpha: f32,
    pub eps: f32,
    pub weight_decay: f32,
    state: HashMap<String, Vec<f32>>,
}

impl Default for RmsProp {
    fn default() -> Self {
        RmsProp { alpha: 0.99, eps: 1e-8, weight_decay: 0.0, state: HashMap::new() }
    }
}

impl RmsProp {
    pub fn new(weight_decay: f32) -> Self {
        RmsProp { weight_decay, ..Default::default() }
    }
}

#[derive(Clone, Debug)]
pub enum Optimizer {
    Adam(Adam),
    RmsProp(RmsProp),
}

impl Optimizer {
    pub fn adam(weight_decay: f32) -> Self {
        Optimizer::Adam(Adam::new(weight_decay))
    }

    pub fn rmsprop(weight_decay: f32) -> Self {
        Optimizer::RmsProp(RmsProp::new(weight_decay))
    }

    /// One update of every parameter that has a gradient, with learning rate `lr`.
    pub fn apply(&mut self, graph: &mut Graph, grads: &Gradients, lr: f32) -> Result<()> {
        for (name, p) in named_params_mut(graph) {
            let Some(g) = grads.params.get(&name) else {
                continue;
            };
            if g.data.len() != p.data.len() {
                return Err(Error::Input(format!(
                    "gradient of `{name}` has {} values, the parameter {}",
                    g.data.len(),
                    p.data.len()
                )));
            }
            let wd = if decays(&name) { self.weight_decay() } else { 0.0 };
            match self {
                Optimizer::Adam(a) => {
                    let st = a.state.entry(name).or_insert_with(|| AdamState {
                        m: vec![0.0; g.data.len()],
                        v: vec![0.0; g.data.len()],
                        t: 0,
                    });
                    st.t += 1;
                    let bc1 = 1.0 - (a.beta1 as f64).powi(st.t as i32);
                    let bc2 = 1.0 - (a.beta2 as f64).powi(st.t as i32);
                    let step = (lr as f64 / bc1) as f32;
                    let bc2s = bc2.sqrt() as f32;
                    for (((p, &g), m), v) in p.data.iter_mut().zip(&g.data).zip(st.m.iter_mut()).zip(st.v.iter_mut()) {
                        if wd != 0.0 {
                            *p -= lr * wd * *p;
                        }
                        *m = a.beta1 * *m + (1.0 - a.beta1) * g;
                        *v = a.beta2 * *v + (1.0 - a.beta2) * g * g;
                        *p -= step * *m / (v.sqrt() / bc2s + a.eps);
                    }
                }
                Optimizer::RmsProp(r) => {
                    let sq = r.state.entry(name).or_insert_with(|| vec![0.0; g.data.len()]);
                    for ((p, &g), s) in p.data.iter_mut().zip(&g.data).zip(sq.iter_mut()) {
                        let g = g + wd * *p;
                        *s = r.alpha * *s + (1.0 - r.alpha) * g * g;
                        *p -= lr * g / (s.sqrt() + r.eps);
                    }
                }
            }
        }
        Ok(())
    }

    fn weight_decay(&self) -> f32 {
        match self {
            Optimizer::Adam(a) => a.weight_decay,
            Optimizer::RmsProp(r) => r.weight_decay,
        }
    }
}
