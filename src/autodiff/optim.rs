//! Optimisers (Adam, RMSprop) and the step learning-rate schedule.
//!
//! State is keyed by parameter name (the names of [`crate::weights::named_params`]), so it
//! survives graph clones and is independent of node order. Parameters without a gradient in the
//! [`Gradients`] map (and batch-norm running statistics, which never have one) are left alone.
//!
//! Weight decay applies to convolution weights only
//! ([`ParamKind::decays`](crate::graph::ParamKind::decays)): biases, batch-norm `gamma`/`beta`,
//! channel-affine `scale`/`shift` and soft gates `alpha` are not decayed (the usual practice;
//! decaying gates or BN scales shrinks the function, not the complexity).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::Gradients;
use crate::error::{Error, Result};
use crate::graph::{param_name, Graph};
use crate::weights::write_safetensors;

/// Step schedule: `lr * gamma^floor(epoch / step)` (`step == 0` means constant).
pub fn step_lr(lr: f32, gamma: f32, step: usize, epoch: usize) -> f32 {
    if step == 0 {
        return lr;
    }
    lr * gamma.powi((epoch / step) as i32)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Which update rule an [`Optimizer`] applies.
pub enum Kind {
    /// Adam (PyTorch's `Adam`, decoupled weight decay).
    Adam,
    /// RMSprop (PyTorch's `RMSprop`, L2 weight decay).
    RmsProp,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Adam => "adam",
            Kind::RmsProp => "rmsprop",
        }
    }
}

/// Adam (PyTorch's, with bias correction and decoupled weight decay) or RMSprop (`alpha = 0.99`,
/// `eps = 1e-8`, L2 decay), weight decay on convolution weights only (see
/// [`ParamKind::decays`](crate::graph::ParamKind::decays)). The state is public and can be saved
/// with [`Optimizer::save`] (checkpoints, `--resume`).
///
/// State file: safetensors with `adam.m.<param>`, `adam.v.<param>` (Adam) or
/// `rmsprop.sq.<param>` (RMSprop) tensors and metadata `optimizer`, `adam_step`, `beta1`,
/// `beta2`, `alpha`, `eps`, `weight_decay`.
#[derive(Clone, Debug)]
pub struct Optimizer {
    /// The update rule.
    pub kind: Kind,
    /// Adam's first-moment decay (0.9).
    pub beta1: f32,
    /// Adam's second-moment decay (0.999).
    pub beta2: f32,
    /// RMSprop's mean-square decay (0.99).
    pub alpha: f32,
    /// Added to the denominator of both rules (1e-8).
    pub eps: f32,
    /// Weight decay on convolution weights (0: none).
    pub weight_decay: f32,
    /// Adam's step count (bias correction).
    pub t: u64,
    /// Adam: first moment; RMSprop: mean square.
    pub m: HashMap<String, Vec<f32>>,
    /// Adam: second moment (unused by RMSprop).
    pub v: HashMap<String, Vec<f32>>,
}

impl Optimizer {
    /// Adam with PyTorch's defaults and this weight decay.
    pub fn adam(weight_decay: f32) -> Self {
        Self::new(Kind::Adam, weight_decay)
    }

    /// RMSprop with PyTorch's defaults (`alpha` 0.99) and this weight decay.
    pub fn rmsprop(weight_decay: f32) -> Self {
        Self::new(Kind::RmsProp, weight_decay)
    }

    /// `kind` with the defaults above, empty state (step 0).
    pub fn new(kind: Kind, weight_decay: f32) -> Self {
        Optimizer {
            kind,
            beta1: 0.9,
            beta2: 0.999,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay,
            t: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// One update of every parameter that has a gradient.
    pub fn apply(&mut self, graph: &mut Graph, grads: &Gradients, lr: f32) -> Result<()> {
        self.t += 1;
        let t = self.t;
        for (node, kind, p) in graph.params_mut() {
            let name = param_name(node, kind);
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
            let wd = if kind.decays() { self.weight_decay } else { 0.0 };
            let n = g.data.len();
            match self.kind {
                Kind::Adam => {
                    let m = self.m.entry(name.clone()).or_insert_with(|| vec![0.0; n]);
                    let v = self.v.entry(name).or_insert_with(|| vec![0.0; n]);
                    let bc1 = 1.0 - (self.beta1 as f64).powi(t as i32);
                    let bc2 = 1.0 - (self.beta2 as f64).powi(t as i32);
                    let step = (lr as f64 / bc1) as f32;
                    let bc2s = bc2.sqrt() as f32;
                    let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
                    for (((p, &g), m), v) in p.data.iter_mut().zip(&g.data).zip(m.iter_mut()).zip(v.iter_mut()) {
                        if wd != 0.0 {
                            *p -= lr * wd * *p;
                        }
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        *p -= step * *m / (v.sqrt() / bc2s + eps);
                    }
                }
                Kind::RmsProp => {
                    let sq = self.m.entry(name).or_insert_with(|| vec![0.0; n]);
                    for ((p, &g), s) in p.data.iter_mut().zip(&g.data).zip(sq.iter_mut()) {
                        let g = g + wd * *p;
                        *s = self.alpha * *s + (1.0 - self.alpha) * g * g;
                        *p -= lr * g / (s.sqrt() + self.eps);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the state (see the module docs).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert("optimizer".to_string(), self.kind.as_str().to_string());
        meta.insert("adam_step".to_string(), self.t.to_string());
        meta.insert("beta1".to_string(), self.beta1.to_string());
        meta.insert("beta2".to_string(), self.beta2.to_string());
        meta.insert("alpha".to_string(), self.alpha.to_string());
        meta.insert("eps".to_string(), self.eps.to_string());
        meta.insert("weight_decay".to_string(), self.weight_decay.to_string());
        let mut tensors: Vec<(String, &[f32])> = Vec::new();
        match self.kind {
            Kind::Adam => {
                tensors.extend(self.m.iter().map(|(k, m)| (format!("adam.m.{k}"), m.as_slice())));
                tensors.extend(self.v.iter().map(|(k, v)| (format!("adam.v.{k}"), v.as_slice())));
            }
            Kind::RmsProp => tensors.extend(self.m.iter().map(|(k, s)| (format!("rmsprop.sq.{k}"), s.as_slice()))),
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let views = tensors.iter().map(|(name, data)| (name.as_str(), vec![data.len()], *data));
        write_safetensors(path, views, meta, "the optimiser state")
    }

    /// Reads a state written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<Optimizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
        let fmt = |msg: String| Error::Format { path: path.display().to_string(), msg };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fmt(format!("invalid safetensors: {e}")))?;
        let meta: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
        let get = |k: &str| meta.get(k).ok_or_else(|| fmt(format!("optimiser state lacks `{k}`")));
        let num = |k: &str| -> Result<f32> {
            get(k)?.parse::<f32>().map_err(|_| fmt(format!("bad `{k}` in the optimiser state")))
        };
        let kind = match get("optimizer")?.as_str() {
            "adam" => Kind::Adam,
            "rmsprop" => Kind::RmsProp,
            o => return Err(fmt(format!("unknown optimiser `{o}`"))),
        };
        let mut o = Optimizer::new(kind, num("weight_decay")?);
        o.beta1 = num("beta1")?;
        o.beta2 = num("beta2")?;
        o.alpha = num("alpha")?;
        o.eps = num("eps")?;
        o.t = get("adam_step")?.parse().map_err(|_| fmt("bad `adam_step`".into()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| fmt(format!("invalid safetensors: {e}")))?;
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(fmt(format!("`{name}` is not F32")));
            }
            let data: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if let Some(k) = name.strip_prefix("adam.m.") {
                o.m.insert(k.to_string(), data);
            } else if let Some(k) = name.strip_prefix("adam.v.") {
                o.v.insert(k.to_string(), data);
            } else if let Some(k) = name.strip_prefix("rmsprop.sq.") {
                o.m.insert(k.to_string(), data);
            } else {
                return Err(fmt(format!("unexpected tensor `{name}`")));
            }
        }
        Ok(o)
    }
}
