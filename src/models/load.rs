//! Getting a runnable graph for a named config: with given weights, the shipped weights of that
//! config (from [`models_dir`], else compiled in by the `bundled-weights` feature), or a seeded
//! random initialisation; the caller is told which.

use std::path::{Path, PathBuf};

use super::ModelConfig;
use crate::error::Result;
use crate::graph::Graph;
use crate::weights::{load_bytes_into, load_into, read_card_bytes, ModelCard};

/// Where a model's weights came from.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightsSource {
    /// A file the caller named.
    File(PathBuf),
    /// The trained weights shipped in `models/`.
    Shipped(PathBuf),
    /// A file handed over in memory (fetched from a URL in the browser), by its label.
    Bytes(String),
    /// The f16 weights of this config compiled in by the `bundled-weights` feature (crate
    /// `wgpose-weights`), by config name: used when [`models_dir`] has no file for it.
    Bundled(String),
    /// No weights exist: seeded random initialisation, batch norms calibrated on a seeded random
    /// input (the network's output is meaningless).
    RandomInit {
        /// The seed of the initialisation and of the calibration input.
        seed: u64,
    },
}

impl std::fmt::Display for WeightsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightsSource::File(p) => write!(f, "weights from {}", p.display()),
            WeightsSource::Shipped(p) => write!(f, "shipped weights {}", p.display()),
            WeightsSource::Bytes(label) => write!(f, "weights from {label}"),
            WeightsSource::Bundled(name) => write!(f, "bundled f16 weights of {name} (crate wgpose-weights)"),
            WeightsSource::RandomInit { seed } => {
                write!(f, "no trained weights for this config: random initialisation (seed {seed}, batch norms calibrated), outputs are meaningless")
            }
        }
    }
}

impl ModelConfig {
    /// This configuration with the input size and joint count a model card records (each only
    /// when the card has it): the network the card's weights were trained as.
    pub fn with_card(self, card: &ModelCard) -> ModelConfig {
        let cfg = match card.input {
            Some(input) => self.with_input(input),
            None => self,
        };
        match card.joints {
            Some(j) => cfg.with_joints(j),
            None => cfg,
        }
    }

    /// The configuration a weights file was trained for: the one its model card names, with the
    /// card's input size and joint count.
    pub fn from_weights_file(path: &Path) -> Result<ModelConfig> {
        let card = crate::weights::read_card(path)?;
        Ok(super::config(&card.config)?.with_card(&card))
    }
}

/// The folder of shipped weights: `$WGPOSE_MODELS` if set, else `models/` of this source tree.
pub fn models_dir() -> PathBuf {
    std::env::var_os("WGPOSE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// `models/<name>.safetensors`, whether or not it exists.
pub fn shipped_weights_path(name: &str) -> PathBuf {
    models_dir().join(format!("{name}.safetensors"))
}

/// The f16 safetensors file of config `name` compiled in by the `bundled-weights` feature (crate
/// `wgpose-weights`: the default pose model, the person detector and the hourglass), if this
/// build has it; always `None` without the feature.
pub fn bundled_weights(name: &str) -> Option<&'static [u8]> {
    #[cfg(feature = "bundled-weights")]
    return wgpose_weights::get(name);
    #[cfg(not(feature = "bundled-weights"))]
    {
        let _ = name;
        None
    }
}

/// `cfg` at the input size its trained weights were made for. When `cfg` still has its named
/// configuration's input size and the weights [`load_model`] would read for it (`weights`, else
/// the shipped file, else the bundled copy) carry a model card with another one, that size
/// (and the card's joint count); otherwise `cfg` unchanged. The shipped hourglass and LDCRN
/// were trained at 192x128 and 160x160 while their configurations say 128x128: without this, a
/// caller naming them (`Estimator::from_name`, `wgpose predict --model NAME`) cropped people at
/// 128x128 for weights that expect more pixels. A caller who set another size keeps it.
pub fn at_trained_input(cfg: &ModelConfig, weights: Option<&Path>) -> Result<ModelConfig> {
    if super::config(cfg.name).map(|named| named.input != cfg.input).unwrap_or(true) {
        return Ok(*cfg);
    }
    let card = match weights {
        Some(p) => Some(crate::weights::read_card(p)?),
        None => {
            let p = shipped_weights_path(cfg.name);
            if p.is_file() {
                Some(crate::weights::read_card(&p)?)
            } else {
                bundled_weights(cfg.name)
                    .map(|bytes| read_card_bytes(bytes, &format!("bundled weights of {}", cfg.name)))
                    .transpose()?
            }
        }
    };
    Ok(match card.filter(|c| c.config == cfg.name) {
        Some(card) => cfg.with_card(&card),
        None => *cfg,
    })
}

/// Builds `cfg` and fills in weights, looking in this order: `weights` if given, else the shipped
/// file [`shipped_weights_path`] (in `$WGPOSE_MODELS`, else the source tree's `models/`) if
/// present, else the [`bundled_weights`] of the config, else a random initialisation from `seed`.
/// Returns the card when weights were loaded.
pub fn load_model(
    cfg: &ModelConfig,
    weights: Option<&Path>,
    seed: u64,
) -> Result<(Graph, WeightsSource, Option<ModelCard>)> {
    let mut graph = cfg.build(seed)?;
    let (source, path) = match weights {
        Some(p) => (WeightsSource::File(p.to_path_buf()), Some(p.to_path_buf())),
        None => {
            let p = shipped_weights_path(cfg.name);
            if p.is_file() {
                (WeightsSource::Shipped(p.clone()), Some(p))
            } else if bundled_weights(cfg.name).is_some() {
                (WeightsSource::Bundled(cfg.name.to_string()), None)
            } else {
                (WeightsSource::RandomInit { seed }, None)
            }
        }
    };
    let bundled = match &source {
        WeightsSource::Bundled(name) => bundled_weights(name),
        _ => None,
    };
    let card = match (path, bundled) {
        (Some(p), _) => Some(load_into(&p, &mut graph)?),
        (None, Some(bytes)) => Some(load_bytes_into(bytes, &format!("bundled weights of {}", cfg.name), &mut graph)?),
        (None, None) => {
            let [c, h, w] = cfg.input;
            let mut rng = crate::rng::Rng::new(seed ^ 0xCA11);
            let x = crate::Tensor::new(vec![2, c, h, w], rng.vec(2 * c * h * w, -1.0, 1.0))?;
            calibrate_batch_norms(&mut graph, &[x])?;
            None
        }
    };
    Ok((graph, source, card))
}

/// Sets every batch norm's running mean and variance to the statistics of its input when the
/// network runs on `inputs` (a data-dependent initialisation, as in LSUV). A freshly
/// initialised network has identity batch norms and its activations grow with depth until most
/// sigmoid outputs saturate; calibrated, it behaves like a trained one numerically, which is what
/// parity checks and benchmarks of untrained networks need.
pub fn calibrate_batch_norms(graph: &mut Graph, inputs: &[crate::Tensor]) -> Result<()> {
    use crate::graph::Op;
    let ids = graph.inputs();
    if ids.len() != inputs.len() {
        return Err(crate::Error::Input(format!("the graph takes {} input(s), got {}", ids.len(), inputs.len())));
    }
    let mut values: Vec<Option<crate::Tensor>> = vec![None; graph.nodes.len()];
    for (&id, t) in ids.iter().zip(inputs) {
        values[id] = Some(t.clone());
    }
    for id in 0..graph.nodes.len() {
        if values[id].is_some() {
            continue;
        }
        let x_ids = graph.nodes[id].inputs.clone();
        if let Op::BatchNorm(bn) = &mut graph.nodes[id].op {
            let x =
                values[x_ids[0]].as_ref().ok_or_else(|| crate::Error::Graph("input evaluated out of order".into()))?;
            let [n, c, h, w] = x.nchw()?;
            let count = (n * h * w) as f64;
            let mut var = vec![0f64; c];
            for (ch, var_ch) in var.iter_mut().enumerate() {
                let (mut s, mut s2) = (0f64, 0f64);
                for b in 0..n {
                    for &v in &x.data[(b * c + ch) * h * w..][..h * w] {
                        s += v as f64;
                        s2 += (v as f64) * (v as f64);
                    }
                }
                let mean = s / count;
                bn.mean.data[ch] = mean as f32;
                *var_ch = (s2 / count - mean * mean).max(0.0);
            }
            // Near-constant channels (dead ReLUs of a random network) would otherwise be scaled
            // up by 1/sqrt(eps) and amplify rounding noise; floor them at 1% of the layer's mean.
            let floor = 0.01 * var.iter().sum::<f64>() / c.max(1) as f64;
            for (dst, v) in bn.var.data[..c].iter_mut().zip(&var) {
                *dst = v.max(floor).max(1e-6) as f32;
            }
        }
        let node = &graph.nodes[id];
        let xs: Vec<&crate::Tensor> = node
            .inputs
            .iter()
            .map(|&i| values[i].as_ref().ok_or_else(|| crate::Error::Graph("input evaluated out of order".into())))
            .collect::<Result<_>>()?;
        values[id] = Some(crate::cpu::eval_op(&node.name, &node.op, &xs)?);
    }
    Ok(())
}

/// The config a weights file (in memory; `label` names it in errors) belongs to, by its model
/// card: the named config with the card's input size and joint count, as `wgpose predict
/// --model FILE` resolves it.
pub fn config_for_weights(bytes: &[u8], label: &str) -> Result<ModelConfig> {
    let card = read_card_bytes(bytes, label)?;
    Ok(super::config(&card.config)?.with_card(&card))
}

/// Builds `cfg` and loads the weights file `bytes` (already in memory; `label` names it in
/// errors) with the same checks as [`load_model`] applies to a file.
pub fn load_model_bytes(cfg: &ModelConfig, bytes: &[u8], label: &str) -> Result<(Graph, ModelCard)> {
    let mut graph = cfg.build(0)?;
    let card = load_bytes_into(bytes, label, &mut graph)?;
    Ok((graph, card))
}
