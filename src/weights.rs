//! Weights on disk: every parameter and statistic of a [`Graph`] as a
//! [safetensors](https://huggingface.co/docs/safetensors) file, with a [`ModelCard`] in the
//! header's `__metadata__`.
//!
//! Tensor names are `<node name>.<parameter>` (see [`named_params`]), F32 as [`save`] writes
//! them (F16 is read too, widened exactly: see [`half`]), little-endian, row-major, with the
//! shapes the graph holds (conv weights `[cout, cin / groups, kh, kw]`,
//! per-channel vectors `[c]`). The file is a plain safetensors file, so Python's
//! `safetensors.torch.load_file` / `safe_open` read it as is.
//!
//! Saving is atomic (temporary file in the same directory, `fsync`, rename). Loading checks the
//! whole file before touching the graph: every tensor the graph needs must be present, F32 or
//! F16, of the exact shape, finite, and the file may hold nothing else; on any error the graph is left
//! as it was. No file content makes the reader panic.
//!
//! Save the graph in the form it was built (before [`optimize_for_inference`]): that is the form
//! whose names are stable across versions, and optimising after loading gives the same fused
//! graph. A fused graph can be saved and loaded too, but only into a graph fused the same way.
//!
//! [`optimize_for_inference`]: crate::graph::passes::optimize_for_inference

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::error::{Error, Result};
use crate::graph::{param_name, Graph};
use crate::models::ModelConfig;
use crate::tensor::Tensor;

pub mod average;
pub mod half;

/// The input normalisation of ImageNet-pretrained backbones, in the card's notation.
pub const IMAGENET_NORMALISATION: &str = "mean=0.485,0.456,0.406;std=0.229,0.224,0.225";

/// Same limit as the safetensors crate: a header beyond this is not a weights file.
const MAX_HEADER_BYTES: u64 = 100_000_000;

// ---------------------------------------------------------------------------------------------
// Parameter names
// ---------------------------------------------------------------------------------------------

/// Every learnable parameter and statistic of a graph, by stable name `<node>.<suffix>`
/// ([`param_name`]): `<node>.weight`, `<node>.bias` (convolutions), `<node>.gamma`,
/// `<node>.beta`, `<node>.running_mean`, `<node>.running_var` (batch norms), `<node>.alpha`
/// (gated adds, or a gate fused into a convolution), `<node>.scale`, `<node>.shift` (channel
/// affines). In node order, and within a node in the order of [`Op::params`](crate::graph::Op::params), which is where
/// the list lives ([`ParamKind::name`](crate::graph::ParamKind::name) gives the suffixes).
pub fn named_params(graph: &Graph) -> Vec<(String, &Tensor)> {
    graph.params().into_iter().map(|(node, kind, t)| (param_name(node, kind), t)).collect()
}

/// [`named_params`] with mutable access (same names, same order).
pub fn named_params_mut(graph: &mut Graph) -> Vec<(String, &mut Tensor)> {
    graph.params_mut().into_iter().map(|(node, kind, t)| (param_name(node, kind), t)).collect()
}

/// The first name that occurs twice, if any.
fn first_duplicate<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = BTreeSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}

// ---------------------------------------------------------------------------------------------
// Model card
// ---------------------------------------------------------------------------------------------

/// What a weights file is: stored as strings in the safetensors `__metadata__`.
///
/// Every field is optional (a file written by another tool may carry no card at all); empty
/// strings and `None` are simply not written. Keys (all values are strings):
///
/// | field            | key              | example                                          |
/// |------------------|------------------|--------------------------------------------------|
/// | `config`         | `config`         | `sghg-1x64-lsp`                                  |
/// | `family`         | `family`         | `soft-gated-hourglass`                           |
/// | `input`          | `input`          | `3x128x128` (`c x h x w`)                        |
/// | `joints`         | `joints`         | `14`                                             |
/// | `joint_format`   | `joint_format`   | `lsp14`                                          |
/// | `normalisation`  | `normalisation`  | `mean=0.485,0.456,0.406;std=0.229,0.224,0.225`   |
/// | `training_data`  | `training_data`  | free text                                        |
/// | `epochs`         | `epochs`         | `40`                                             |
/// | `wall_time_s`    | `wall_time_s`    | `5123.5` (seconds of training)                   |
/// | `metrics`        | `metrics`        | free text, e.g. `val_pck@0.2=0.71`               |
/// | `gflops`         | `gflops`         | `1.93` (see [`ModelCard::for_model`])            |
/// | `params`         | `params`         | `1234567`                                        |
/// | `wgpose_version` | `wgpose_version` | `0.1.0`                                          |
///
/// Any other key lands in `extra` (and `extra` may not use the keys above).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelCard {
    /// Name of the [`ModelConfig`] the weights belong to.
    pub config: String,
    /// [`crate::models::Family::as_str`] of that config.
    pub family: String,
    /// `[c, h, w]` of the input the network was trained on.
    pub input: Option<[usize; 3]>,
    /// Number of keypoints (heatmap channels) the network outputs.
    pub joints: Option<usize>,
    /// Joint order and meaning, e.g. `lsp14`, `mpii16`, `coco17`.
    pub joint_format: String,
    /// How pixels are normalised before the network (see [`IMAGENET_NORMALISATION`]).
    pub normalisation: String,
    /// What the weights were trained on: dataset, image range, crops, recipe (free text).
    pub training_data: String,
    /// Completed epochs of the `wgpose train` run that wrote the file (a warm-started run counts
    /// its own; the cumulative crop count is in `extra["train_crops_total"]`).
    pub epochs: Option<usize>,
    /// Training wall time in seconds.
    pub wall_time_s: Option<f64>,
    /// Free text, e.g. `val_pck@0.2=0.71;val_loss=0.0012`.
    pub metrics: String,
    /// GFLOPs of one inference at batch 1 on `input`.
    pub gflops: Option<f64>,
    /// Learnable parameters (PyTorch's count).
    pub params: Option<u64>,
    /// Version of wgpose that wrote the file.
    pub wgpose_version: String,
    /// Anything else, by key.
    pub extra: BTreeMap<String, String>,
}

/// The metadata keys of [`ModelCard`]'s named fields.
pub const CARD_KEYS: [&str; 13] = [
    "config",
    "family",
    "input",
    "joints",
    "joint_format",
    "normalisation",
    "training_data",
    "epochs",
    "wall_time_s",
    "metrics",
    "gflops",
    "params",
    "wgpose_version",
];

/// Model-card key (in [`ModelCard::extra`]) of the standard deviation, in heatmap pixels, of the
/// Gaussians the network was trained to output (`wgpose train --sigma`; when absent,
/// [`crate::pipeline::decode::DEFAULT_SIGMA`], the trainer's default before the key existed). DARK decoding reads it
/// ([`crate::EstimatorOptions::decode_sigma_from_weights`]).
pub const HEATMAP_SIGMA_KEY: &str = "heatmap_sigma";

/// Conventional name of a joint set of `k` joints.
pub fn joint_format_for(k: usize) -> String {
    match k {
        14 => "lsp14".into(),
        16 => "mpii16".into(),
        17 => "coco17".into(),
        k => format!("custom{k}"),
    }
}

impl ModelCard {
    /// The card of `graph` built from `cfg`: config, family, input, joints, joint format (from
    /// the joint count), ImageNet normalisation, GFLOPs ([`Graph::flops`] at batch 1, a
    /// multiply-add counted as two operations), parameter count and this wgpose version. The
    /// training fields are left for the caller.
    pub fn for_model(cfg: &ModelConfig, graph: &Graph) -> ModelCard {
        ModelCard {
            config: cfg.name.to_string(),
            family: cfg.family.as_str().to_string(),
            input: Some(cfg.input),
            joints: Some(cfg.joints),
            joint_format: joint_format_for(cfg.joints),
            normalisation: IMAGENET_NORMALISATION.to_string(),
            gflops: graph.flops(1).ok().map(|f| f as f64 / 1e9),
            params: Some(graph.param_count() as u64),
            wgpose_version: env!("CARGO_PKG_VERSION").to_string(),
            ..ModelCard::default()
        }
    }

    /// The card as safetensors metadata. Named fields win over `extra` entries with the same key
    /// ([`save`] refuses such a card).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let mut m = self.extra.clone();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                m.insert(k.to_string(), v);
            } else {
                m.remove(k);
            }
        };
        put("config", Some(self.config.clone()));
        put("family", Some(self.family.clone()));
        put("input", self.input.map(|[c, h, w]| format!("{c}x{h}x{w}")));
        put("joints", self.joints.map(|j| j.to_string()));
        put("joint_format", Some(self.joint_format.clone()));
        put("normalisation", Some(self.normalisation.clone()));
        put("training_data", Some(self.training_data.clone()));
        put("epochs", self.epochs.map(|e| e.to_string()));
        // `Display` of f64 is the shortest string that parses back to the same value.
        put("wall_time_s", self.wall_time_s.map(|t| t.to_string()));
        put("metrics", Some(self.metrics.clone()));
        put("gflops", self.gflops.map(|g| g.to_string()));
        put("params", self.params.map(|p| p.to_string()));
        put("wgpose_version", Some(self.wgpose_version.clone()));
        m
    }

    /// Reads a card back from metadata; unknown keys go to `extra`. A known key whose value does
    /// not parse (e.g. `joints=abc`) is an [`Error::Input`] naming the key.
    pub fn from_metadata(map: &BTreeMap<String, String>) -> Result<ModelCard> {
        card_from_metadata(map).map_err(Error::Input)
    }

    /// The training Gaussians' sigma recorded under [`HEATMAP_SIGMA_KEY`], if any; a value that
    /// is not a number in (0, 64] is an [`Error::Input`].
    pub fn heatmap_sigma(&self) -> Result<Option<f32>> {
        let Some(v) = self.extra.get(HEATMAP_SIGMA_KEY) else { return Ok(None) };
        match v.trim().parse::<f32>() {
            Ok(s) if s.is_finite() && s > 0.0 && s <= 64.0 => Ok(Some(s)),
            _ => Err(Error::Input(format!("model card: `{HEATMAP_SIGMA_KEY}` = {v:?} is not a sigma in (0, 64]"))),
        }
    }

    /// Checks that `extra` does not shadow a named field.
    pub fn validate(&self) -> Result<()> {
        match self.extra.keys().find(|k| CARD_KEYS.contains(&k.as_str())) {
            Some(k) => Err(Error::Input(format!(
                "model card: extra key `{k}` is reserved for the named field of the same name"
            ))),
            None => Ok(()),
        }
    }
}

fn card_from_metadata(map: &BTreeMap<String, String>) -> std::result::Result<ModelCard, String> {
    fn num<T: std::str::FromStr>(key: &str, v: &str) -> std::result::Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        v.trim().parse().map_err(|e| format!("model card: `{key}` = {v:?} is not a valid number ({e})"))
    }
    let mut card = ModelCard::default();
    for (k, v) in map {
        match k.as_str() {
            "config" => card.config = v.clone(),
            "family" => card.family = v.clone(),
            "input" => {
                let dims: Vec<&str> = v.split('x').collect();
                let parsed: std::result::Result<Vec<usize>, _> =
                    dims.iter().map(|d| d.trim().parse::<usize>()).collect();
                match parsed.as_deref() {
                    Ok(&[c, h, w]) => card.input = Some([c, h, w]),
                    _ => return Err(format!("model card: `input` = {v:?} is not of the form CxHxW (e.g. 3x128x128)")),
                }
            }
            "joints" => card.joints = Some(num(k, v)?),
            "joint_format" => card.joint_format = v.clone(),
            "normalisation" => card.normalisation = v.clone(),
            "training_data" => card.training_data = v.clone(),
            "epochs" => card.epochs = Some(num(k, v)?),
            "wall_time_s" => card.wall_time_s = Some(num(k, v)?),
            "metrics" => card.metrics = v.clone(),
            "gflops" => card.gflops = Some(num(k, v)?),
            "params" => card.params = Some(num(k, v)?),
            "wgpose_version" => card.wgpose_version = v.clone(),
            _ => {
                card.extra.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(card)
}

// ---------------------------------------------------------------------------------------------
// Saving
// ---------------------------------------------------------------------------------------------

/// An f32 tensor as a safetensors F32 view (borrowed bytes on little-endian targets).
struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(self.data))
        } else {
            Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes f32 tensors `(name, shape, values)` and string metadata as a safetensors file,
/// atomically (see [`save`]): the one safetensors writer, shared by weight files and the
/// optimiser state. `what` names the content in errors. Shapes must match the value counts.
pub(crate) fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, Vec<usize>, &'a [f32])>,
    metadata: HashMap<String, String>,
    what: &str,
) -> Result<()> {
    let views = tensors.into_iter().map(|(name, shape, data)| (name, F32View { shape, data }));
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Format {
        path: path.display().to_string(),
        msg: format!("cannot serialise {what}: {e}"),
    })?;
    write_atomic(path, &bytes)
}

fn non_finite_msg(name: &str, shape: &[usize], data: &[f32], i: usize) -> String {
    let what = if data[i].is_nan() { "NaN".to_string() } else { format!("{}", data[i]) };
    format!("tensor `{name}` has {what} at index {i} (element {:?} of shape {shape:?})", unravel(i, shape))
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

/// Writes every parameter of `graph` ([`named_params`]) and `card` to `path` as safetensors.
///
/// The write is atomic: the bytes go to a temporary file next to `path`, are synced, and the
/// temporary file is renamed over `path`, so a crash leaves either the old file or the new one.
/// Refuses ([`Error::Input`]) a non-finite parameter (the file could not be loaded back) or a
/// card whose `extra` shadows a named field; duplicate parameter names are an [`Error::Graph`].
pub fn save(path: &Path, graph: &Graph, card: &ModelCard) -> Result<()> {
    card.validate()?;
    let params = named_params(graph);
    if let Some(d) = first_duplicate(params.iter().map(|(n, _)| n.as_str())) {
        return Err(Error::Graph(format!("two parameters are both named `{d}`; node names must be unique")));
    }
    for (name, t) in &params {
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(Error::Input(format!(
                "parameter `{name}` has shape {:?} but {} values",
                t.shape,
                t.data.len()
            )));
        }
        if let Some(i) = t.first_non_finite() {
            return Err(Error::Input(format!(
                "refusing to save {}: {}",
                path.display(),
                non_finite_msg(name, &t.shape, &t.data, i)
            )));
        }
    }
    let meta: HashMap<String, String> = card.to_metadata().into_iter().collect();
    let tensors = params.iter().map(|(n, t)| (n.as_str(), t.shape.clone(), t.data.as_slice()));
    write_safetensors(path, tensors, meta, "the weights")
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |source: io::Error| Error::Io { path: path.display().to_string(), source };
    if path.is_dir() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory; expected the path of a .safetensors file",
        )));
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| io_err(io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name")))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp: PathBuf = dir.join(format!(
        ".{}.{}-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| -> io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    // Make the rename itself durable (best effort: not every platform can open a directory).
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let io_err = |source: io::Error| Error::Io { path: path.display().to_string(), source };
    let meta = fs::metadata(path).map_err(io_err)?;
    if meta.is_dir() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory; expected a .safetensors file",
        )));
    }
    let bytes = fs::read(path).map_err(io_err)?;
    if bytes.is_empty() {
        return Err(Error::Format {
            path: path.display().to_string(),
            msg: "empty file (0 bytes); expected a safetensors weights file".into(),
        });
    }
    Ok(bytes)
}

/// A parsed, fully validated safetensors file.
struct Parsed<'a> {
    tensors: SafeTensors<'a>,
    metadata: BTreeMap<String, String>,
}

/// Checks the layout of a safetensors file with messages that name what is wrong (and the
/// tensor it concerns), then hands it to the safetensors crate. Every size is checked against
/// the file before any arithmetic that could overflow, so no content can make this panic.
fn parse(bytes: &[u8]) -> std::result::Result<Parsed<'_>, String> {
    let len = bytes.len();
    let Some(prefix) = bytes.get(..8) else {
        return Err(format!(
            "only {len} bytes: too short for a safetensors file (8-byte header length, JSON header, data)"
        ));
    };
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(prefix);
    let n = u64::from_le_bytes(n8);
    let after = (len - 8) as u64;
    if n > after {
        return Err(format!(
            "header length {n} goes beyond the end of the file ({after} bytes follow the length \
             prefix): truncated or not a safetensors file"
        ));
    }
    if n > MAX_HEADER_BYTES {
        return Err(format!("header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit"));
    }
    let n = n as usize;
    let header = &bytes[8..8 + n];
    let data_len = (len - 8 - n) as u64;
    let text = std::str::from_utf8(header).map_err(|e| format!("header is not valid UTF-8: {e}"))?;
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let serde_json::Value::Object(entries) = json else {
        return Err("header is not a JSON object".into());
    };
    let mut covered: u64 = 0;
    for (name, v) in &entries {
        if name == "__metadata__" {
            let serde_json::Value::Object(m) = v else {
                return Err("`__metadata__` is not an object of strings".into());
            };
            if let Some((k, v)) = m.iter().find(|(_, v)| !v.is_string()) {
                return Err(format!("`__metadata__` entry `{k}` is {v}, not a string"));
            }
            continue;
        }
        let bad = |what: &str| format!("tensor `{name}`: {what}");
        let serde_json::Value::Object(info) = v else {
            return Err(bad("entry is not an object"));
        };
        let dtype_str =
            info.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("missing or non-string `dtype`"))?;
        let dtype: Dtype = serde_json::from_value(serde_json::Value::String(dtype_str.into()))
            .map_err(|_| bad(&format!("unknown dtype `{dtype_str}`")))?;
        let shape: Vec<u64> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| bad("`shape` is missing or not an array of non-negative integers"))?;
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad("`data_offsets` is missing or not two non-negative integers"))?;
        let (b, e) = (offsets[0], offsets[1]);
        if b > e {
            return Err(bad(&format!("data_offsets [{b}, {e}] end before they begin: file corrupted")));
        }
        if e > data_len {
            return Err(bad(&format!(
                "data_offsets [{b}, {e}] lie outside the {data_len}-byte data section: file \
                 truncated or corrupted"
            )));
        }
        let bytes_needed = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|numel| numel.checked_mul(dtype.bitsize() as u64))
            .map(|bits| bits.div_ceil(8));
        if bytes_needed != Some(e - b) {
            return Err(bad(&format!(
                "shape {shape:?} of {dtype:?} does not match the {} bytes of data_offsets [{b}, {e}]",
                e - b
            )));
        }
        // Cannot overflow: every span is at most the file size and the header bounds the count.
        covered = covered.saturating_add(e - b);
    }
    if covered != data_len {
        return Err(format!(
            "the tensors cover {covered} bytes but the data section has {data_len}: overlapping \
             tensors, a gap, or trailing bytes"
        ));
    }
    // Offsets are now all in range; the crate checks they tile the data section exactly.
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format!("invalid safetensors file: {e}"))?;
    let metadata: BTreeMap<String, String> = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| format!("invalid safetensors file: {e}"))?;
    Ok(Parsed { tensors, metadata })
}

fn list(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut s = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Loads the tensors of the safetensors file at `path` into `graph`, which must have been built
/// from the same configuration (and in the same form: unfused, or fused the same way), and
/// returns the file's model card.
///
/// Every tensor the graph needs must be present with exactly the graph's shape, dtype F32 or F16
/// (F16 is widened to f32 exactly, see [`half`]; no other dtype is converted) and finite values, and the file may hold no other tensor (that means a
/// config mismatch). Problems with the file's content are [`Error::Format`] naming the tensor;
/// an unreadable path (missing, a directory) is [`Error::Io`]. On error `graph` is unchanged.
pub fn load_into(path: &Path, graph: &mut Graph) -> Result<ModelCard> {
    let bytes = read_bytes(path)?;
    load_bytes_into(&bytes, &path.display().to_string(), graph)
}

/// [`load_into`] for a file already in memory (fetched from a URL in the browser); `label` names
/// it in errors. The same checks, the same errors; an empty buffer is an [`Error::Format`].
pub fn load_bytes_into(bytes: &[u8], label: &str, graph: &mut Graph) -> Result<ModelCard> {
    let fmt = |msg: String| Error::Format { path: label.to_string(), msg };
    if bytes.is_empty() {
        return Err(fmt("empty file (0 bytes); expected a safetensors weights file".into()));
    }
    let parsed = parse(bytes).map_err(fmt)?;
    let card = card_from_metadata(&parsed.metadata).map_err(fmt)?;

    let mut params = named_params_mut(graph);
    if let Some(d) = first_duplicate(params.iter().map(|(n, _)| n.as_str())) {
        return Err(Error::Graph(format!("two parameters are both named `{d}`; node names must be unique")));
    }
    let wanted: BTreeSet<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let mut in_file: Vec<&str> = parsed.tensors.names();
    in_file.sort_unstable();
    let file_set: BTreeSet<&str> = in_file.iter().copied().collect();
    let missing: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).filter(|n| !file_set.contains(n)).collect();
    let extra: Vec<&str> = in_file.iter().copied().filter(|n| !wanted.contains(n)).collect();
    if !missing.is_empty() || !extra.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("{} tensor(s) the graph needs are missing: {}", missing.len(), list(&missing)));
        }
        if !extra.is_empty() {
            parts.push(format!("{} tensor(s) in the file are not used by the graph: {}", extra.len(), list(&extra)));
        }
        let hint = match card.config.as_str() {
            "" => String::new(),
            c => format!(" (the file's card says config `{c}`)"),
        };
        return Err(fmt(format!(
            "{}; the file was saved from a different configuration or graph form{hint}",
            parts.join("; ")
        )));
    }

    // Decode and check everything before writing anything into the graph.
    let mut staged: Vec<Vec<f32>> = Vec::with_capacity(params.len());
    for (name, t) in &params {
        let view = parsed.tensors.tensor(name).map_err(|e| fmt(format!("tensor `{name}`: {e}")))?;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16) {
            return Err(fmt(format!(
                "tensor `{name}` has dtype {:?}; expected F32 or F16 (wgpose widens F16 exactly and converts \
                 no other dtype)",
                view.dtype()
            )));
        }
        if view.shape() != t.shape.as_slice() {
            return Err(fmt(format!(
                "tensor `{name}` has shape {:?} in the file; the graph expects {:?}",
                view.shape(),
                t.shape
            )));
        }
        // `parse` checked that the byte count is the element count times the dtype's width.
        let data: Vec<f32> = match view.dtype() {
            Dtype::F16 => {
                view.data().chunks_exact(2).map(|c| half::f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()
            }
            _ => view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        };
        if data.len() != t.data.len() {
            return Err(fmt(format!("tensor `{name}` has {} values; the graph expects {}", data.len(), t.data.len())));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(fmt(non_finite_msg(name, &t.shape, &data, i)));
        }
        // A variance below zero makes the batch norm's 1/sqrt(var + eps) NaN (or huge): garbage
        // out of every later layer, so it is as corrupt as a NaN.
        if name.ends_with(".running_var") {
            if let Some(i) = data.iter().position(|v| *v < 0.0) {
                return Err(fmt(format!(
                    "tensor `{name}` has the negative variance {} at index {i}; batch-norm variances are >= 0",
                    data[i]
                )));
            }
        }
        staged.push(data);
    }
    for ((_, t), data) in params.iter_mut().zip(staged) {
        t.data = data;
    }
    Ok(card)
}

/// The model card of the weights file at `path` (its header only is interpreted, but the file
/// layout is checked as by [`load_into`]).
pub fn read_card(path: &Path) -> Result<ModelCard> {
    let bytes = read_bytes(path)?;
    read_card_bytes(&bytes, &path.display().to_string())
}

/// [`read_card`] for a file already in memory; `label` names it in errors.
pub fn read_card_bytes(bytes: &[u8], label: &str) -> Result<ModelCard> {
    let fmt = |msg: String| Error::Format { path: label.to_string(), msg };
    if bytes.is_empty() {
        return Err(fmt("empty file (0 bytes); expected a safetensors weights file".into()));
    }
    let parsed = parse(bytes).map_err(fmt)?;
    card_from_metadata(&parsed.metadata).map_err(fmt)
}
