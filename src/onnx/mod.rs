//! ONNX export of any [`Graph`], fused or not, as a standard opset-17 model (IR version 8) that
//! onnxruntime, tract and other runtimes load without custom operators.
//!
//! The protobuf encoding is written by hand (the private `proto` module): only the subset of
//! `onnx.proto` the exporter needs (ModelProto, GraphProto, NodeProto, AttributeProto,
//! TensorProto with `raw_data`, ValueInfoProto).
//!
//! # Operator mapping
//!
//! - `Input`: a graph input `[N, c, h, w]`.
//! - `Conv2d`: `Conv` (`kernel_shape`, `strides`, `pads` = [top, left, bottom, right],
//!   `dilations`, `group`), followed by the fused epilogue expanded back into nodes:
//!   `Relu` / `Sigmoid` for `act`; then for the residual `Add(conv, r)` (`Residual::Add`),
//!   `Add(conv, Mul(r, alpha))` (`GateResidual`) or `Add(Mul(conv, alpha), r)` (`GateConv`);
//!   then `Relu` / `Sigmoid` for `post_act`.
//! - `BatchNorm`: `BatchNormalization` (inference form, `epsilon`).
//! - `ChannelAffine`: `Mul` + `Add` with `[1, C, 1, 1]` initializers, then `Relu` / `Sigmoid`.
//! - `Activation`: `Relu` / `Sigmoid` (`Identity` for `Act::None`).
//! - `MaxPool`: `MaxPool` (`kernel_shape`, `strides`, `pads`; ONNX pads never win either).
//! - `UpsampleNearest`: `Resize(X, "", scales = [1, 1, f, f])` with `mode = nearest`,
//!   `coordinate_transformation_mode = asymmetric`, `nearest_mode = floor`.
//! - `UpsampleBilinear`: `Resize(X, "", scales = [1, 1, f, f])` with `mode = linear`,
//!   `coordinate_transformation_mode = half_pixel` (PyTorch `align_corners = False`; tract 0.22
//!   does not clamp the source coordinate at the low edge as the specification and onnxruntime
//!   do, see `tests/onnx_export.rs`).
//! - `Concat`: `Concat(axis = 1)`.
//! - `Add`: `Add`.
//! - `GatedAdd`: `Add(Mul(skip, alpha), x)`.
//! - `PixelShuffle`: `DepthToSpace(blocksize = r, mode = CRD)`.
//!
//! # Naming
//!
//! - Names are the graph's node names, *sanitised*: every character outside ASCII letters,
//!   digits and `_ . - / :` becomes `_`, an empty name becomes `node<id>`. When two tensors
//!   would get the same name, the later one gets `_1`, `_2`, ... appended.
//! - The graph input is called `input` when the graph has exactly one input node (every model
//!   in [`crate::models`]); with several, each is called after its (sanitised) node name.
//! - Each graph output is called after its output node's (sanitised) name. When an output node is
//!   also an input, or is listed twice in `graph.outputs`, the extra output is an `Identity` of
//!   it named `<name>_1` etc. [`input_names`] and [`output_names`] return the names an export
//!   uses.
//! - Every other node's output tensor carries its node's name. A node that expands to several
//!   ONNX nodes names the intermediate tensors `<name>.conv`, `<name>.act`, `<name>.gate`,
//!   `<name>.mul`, `<name>.add`; the last node of the chain produces `<name>`.
//!   Each ONNX node is named after the tensor it produces.
//! - Initializers are `<name>.weight`, `<name>.bias` (conv), `<name>.gamma`, `<name>.beta`,
//!   `<name>.running_mean`, `<name>.running_var` (batch norm), `<name>.scale`, `<name>.shift`
//!   (channel affine), `<name>.alpha` (gates) and `<name>.scales` (Resize scales).
//!
//! The batch dimension is the symbolic `N` ([`BATCH_DIM_PARAM`]) when `batch` is `None`, else
//! fixed; channel and spatial dimensions are fixed by the graph's input nodes.

mod proto;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::graph::{Act, Graph, NodeId, Op, ParamKind, Residual};
use crate::tensor::Tensor;
use proto::Msg;

/// ONNX IR version written into the model.
pub const IR_VERSION: i64 = 8;
/// Version of the default ("ai.onnx") operator set the model imports.
pub const OPSET_VERSION: i64 = 17;
/// Symbolic name of the batch dimension when no fixed batch is requested.
pub const BATCH_DIM_PARAM: &str = "N";
/// Name of the graph input when the graph has a single input node.
pub const INPUT_NAME: &str = "input";

/// Largest model accepted: protobuf messages are limited to 2 GiB, and external data files are
/// not supported by this exporter.
const MAX_MODEL_BYTES: usize = (1 << 31) - (1 << 20);

// ONNX schema constants (onnx.proto).
const ELEM_FLOAT: i64 = 1;
const ATTR_FLOAT: i64 = 1;
const ATTR_INT: i64 = 2;
const ATTR_STRING: i64 = 3;
const ATTR_INTS: i64 = 7;

/// Serialises `graph` as an ONNX `ModelProto` (see the module docs for the operator mapping and
/// naming). `batch` fixes the batch dimension; `None` leaves it symbolic (`N`).
pub fn export(graph: &Graph, batch: Option<usize>) -> Result<Vec<u8>> {
    let shapes = graph.shapes(batch.unwrap_or(1))?;
    let params: usize = graph.nodes.iter().map(|n| param_bytes(&n.op)).sum();
    if params > MAX_MODEL_BYTES {
        return Err(Error::TooLarge(format!(
            "the graph has {params} bytes of parameters; ONNX protobuf files are limited to 2 GiB \
             and external data is not supported"
        )));
    }
    let mut names = Names::plan(graph);
    let mut g = GraphWriter { nodes: Vec::new(), inits: Vec::new() };
    let mut inputs = Vec::new();

    for (id, node) in graph.nodes.iter().enumerate() {
        let x: Vec<String> = node.inputs.iter().map(|&i| names.value[i].clone()).collect();
        let base = names.value[id].clone();
        let mut chain = Chain::new(&base);
        // Every parameter becomes an initializer `<name>.<suffix>`, in the order of `Op::params`.
        let mut inits: HashMap<ParamKind, String> = HashMap::new();
        for (kind, t) in node.op.params() {
            inits.insert(kind, g.init(&mut names, &base, kind.name(), t, &initializer_dims(kind, t))?);
        }
        let p = |kind: ParamKind| Arg::Name(inits[&kind].clone());
        match &node.op {
            Op::Input { .. } => {
                inputs.push(value_info(&base, shapes[id], batch));
                continue;
            }
            Op::Conv2d(c) => {
                let mut conv_in = vec![Arg::name(&x[0]), p(ParamKind::Weight)];
                if c.bias.is_some() {
                    conv_in.push(p(ParamKind::Bias));
                }
                let [kh, kw] = c.kernel();
                let [ph, pw] = c.padding;
                chain.step(
                    "Conv",
                    ".conv",
                    conv_in,
                    vec![
                        ints("kernel_shape", &[kh, kw]),
                        ints("strides", &c.stride),
                        ints("pads", &[ph, pw, ph, pw]),
                        ints("dilations", &c.dilation),
                        int("group", c.groups as i64),
                    ],
                );
                chain.act(c.epilogue.act, ".act");
                match &c.epilogue.residual {
                    None => {}
                    Some(Residual::Add) => chain.step("Add", ".add", vec![Arg::Prev, Arg::name(&x[1])], vec![]),
                    Some(Residual::GateResidual(_)) => {
                        let a = inits[&ParamKind::SoftGate].clone();
                        // The gated residual is its own little branch, named `<name>.gate`.
                        let gate = names.fresh(format!("{base}.gate"));
                        g.node("Mul", &gate, vec![x[1].clone(), a], vec![]);
                        chain.step("Add", ".add", vec![Arg::Prev, Arg::Name(gate)], vec![]);
                    }
                    Some(Residual::GateConv(_)) => {
                        chain.step("Mul", ".gate", vec![Arg::Prev, p(ParamKind::SoftGate)], vec![]);
                        chain.step("Add", ".add", vec![Arg::Prev, Arg::name(&x[1])], vec![]);
                    }
                }
                chain.act(c.epilogue.post_act, ".post");
            }
            Op::BatchNorm(bn) => {
                let args = vec![
                    Arg::name(&x[0]),
                    p(ParamKind::BnGamma),
                    p(ParamKind::BnBeta),
                    p(ParamKind::BnRunningMean),
                    p(ParamKind::BnRunningVar),
                ];
                chain.step("BatchNormalization", ".bn", args, vec![float("epsilon", bn.eps)]);
            }
            Op::ChannelAffine { act, .. } => {
                chain.step("Mul", ".mul", vec![Arg::name(&x[0]), p(ParamKind::AffineScale)], vec![]);
                chain.step("Add", ".add", vec![Arg::Prev, p(ParamKind::AffineShift)], vec![]);
                chain.act(*act, ".act");
            }
            Op::Activation(act) => {
                chain.step(act_op(*act).unwrap_or("Identity"), ".act", vec![Arg::name(&x[0])], vec![]);
            }
            Op::MaxPool { kernel, stride, padding } => {
                let [ph, pw] = *padding;
                chain.step(
                    "MaxPool",
                    ".pool",
                    vec![Arg::name(&x[0])],
                    vec![ints("kernel_shape", kernel), ints("strides", stride), ints("pads", &[ph, pw, ph, pw])],
                );
            }
            Op::UpsampleNearest { factor } | Op::UpsampleBilinear { factor } => {
                let f = *factor as f32;
                let scales = Tensor { shape: vec![4], data: vec![1.0, 1.0, f, f] };
                let s = g.init(&mut names, &base, "scales", &scales, &[4])?;
                let attrs = if matches!(node.op, Op::UpsampleNearest { .. }) {
                    vec![
                        string("mode", "nearest"),
                        string("coordinate_transformation_mode", "asymmetric"),
                        string("nearest_mode", "floor"),
                    ]
                } else {
                    vec![string("mode", "linear"), string("coordinate_transformation_mode", "half_pixel")]
                };
                // Inputs X, roi (absent: the empty name), scales.
                chain.step("Resize", ".resize", vec![Arg::name(&x[0]), Arg::name(""), Arg::Name(s)], attrs);
            }
            Op::Concat => {
                chain.step("Concat", ".concat", x.iter().map(|n| Arg::name(n)).collect(), vec![int("axis", 1)]);
            }
            Op::Add => chain.step("Add", ".add", vec![Arg::name(&x[0]), Arg::name(&x[1])], vec![]),
            Op::GatedAdd { .. } => {
                chain.step("Mul", ".gate", vec![Arg::name(&x[0]), p(ParamKind::SoftGate)], vec![]);
                chain.step("Add", ".add", vec![Arg::Prev, Arg::name(&x[1])], vec![]);
            }
            Op::PixelShuffle { factor } => {
                chain.step(
                    "DepthToSpace",
                    ".d2s",
                    vec![Arg::name(&x[0])],
                    vec![int("blocksize", *factor as i64), string("mode", "CRD")],
                );
            }
        }
        chain.emit(&mut g, &mut names);
    }

    let mut outputs = Vec::new();
    for (k, &o) in graph.outputs.iter().enumerate() {
        let out = &names.outputs[k];
        if *out != names.value[o] {
            g.node("Identity", out, vec![names.value[o].clone()], vec![]);
        }
        outputs.push(value_info(out, shapes[o], batch));
    }

    let mut gp = Msg::new();
    for n in &g.nodes {
        gp.message(1, n);
    }
    gp.string(2, "wgpose");
    for t in &g.inits {
        gp.message(5, t);
    }
    for v in &inputs {
        gp.message(11, v);
    }
    for v in &outputs {
        gp.message(12, v);
    }

    let mut opset = Msg::new();
    opset.string(1, "").int(2, OPSET_VERSION);
    let mut model = Msg::new();
    model
        .int(1, IR_VERSION)
        .string(2, "wgpose")
        .string(3, env!("CARGO_PKG_VERSION"))
        .message(8, &opset)
        .message(7, &gp);
    if model.len() > i32::MAX as usize {
        return Err(Error::TooLarge(format!(
            "the ONNX model would be {} bytes, over the 2 GiB protobuf limit",
            model.len()
        )));
    }
    Ok(model.into_bytes())
}

/// Exports `graph` (see [`export`]) and writes the model to `path`.
pub fn export_to_file(graph: &Graph, batch: Option<usize>, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let bytes = export(graph, batch)?;
    std::fs::write(path, bytes).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// The ONNX names of the graph inputs, in the order of [`Graph::inputs`].
pub fn input_names(graph: &Graph) -> Vec<String> {
    let names = Names::plan(graph);
    graph.inputs().into_iter().map(|i| names.value[i].clone()).collect()
}

/// The ONNX names of the graph outputs, in the order of `graph.outputs`.
pub fn output_names(graph: &Graph) -> Vec<String> {
    Names::plan(graph).outputs
}

/// Replaces characters outside `[A-Za-z0-9_./:-]` with `_`; `node<id>` for an empty name.
fn sanitize(name: &str, id: NodeId) -> String {
    if name.is_empty() {
        return format!("node{id}");
    }
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "_./:-".contains(c) { c } else { '_' }).collect()
}

/// Tensor names: one per node output, one per graph output, plus a set of every name in use so
/// intermediate tensors and initializers get unique names too.
struct Names {
    value: Vec<String>,
    outputs: Vec<String>,
    used: HashSet<String>,
}

impl Names {
    fn plan(graph: &Graph) -> Names {
        let mut names =
            Names { value: vec![String::new(); graph.nodes.len()], outputs: Vec::new(), used: HashSet::new() };
        let inputs = graph.inputs();
        for &i in &inputs {
            let want = if inputs.len() == 1 { INPUT_NAME.to_string() } else { sanitize(&graph.nodes[i].name, i) };
            names.value[i] = names.fresh(want);
        }
        // Outputs next, so they keep their node's name whenever possible.
        for &o in &graph.outputs {
            let want = sanitize(&graph.nodes[o].name, o);
            if names.value[o].is_empty() {
                names.value[o] = names.fresh(want);
                names.outputs.push(names.value[o].clone());
            } else {
                // An input, or a node already listed as an output: exported through an Identity.
                let fresh = names.fresh(want);
                names.outputs.push(fresh);
            }
        }
        for (id, node) in graph.nodes.iter().enumerate() {
            if names.value[id].is_empty() {
                names.value[id] = names.fresh(sanitize(&node.name, id));
            }
        }
        names
    }

    /// `want`, or `want_1`, `want_2`, ... whichever is not taken yet; marks it taken.
    fn fresh(&mut self, want: String) -> String {
        let mut name = want.clone();
        let mut k = 1;
        while self.used.contains(&name) {
            name = format!("{want}_{k}");
            k += 1;
        }
        self.used.insert(name.clone());
        name
    }
}

/// One ONNX attribute.
enum Attr {
    Int(&'static str, i64),
    Float(&'static str, f32),
    Ints(&'static str, Vec<i64>),
    Str(&'static str, &'static str),
}

fn int(name: &'static str, v: i64) -> Attr {
    Attr::Int(name, v)
}
fn float(name: &'static str, v: f32) -> Attr {
    Attr::Float(name, v)
}
fn ints(name: &'static str, v: &[usize]) -> Attr {
    Attr::Ints(name, v.iter().map(|&x| x as i64).collect())
}
fn string(name: &'static str, v: &'static str) -> Attr {
    Attr::Str(name, v)
}

impl Attr {
    fn encode(&self) -> Msg {
        let mut m = Msg::new();
        match self {
            Attr::Int(n, v) => {
                m.string(1, n).int(20, ATTR_INT).int(3, *v);
            }
            Attr::Float(n, v) => {
                m.string(1, n).int(20, ATTR_FLOAT).float(2, *v);
            }
            Attr::Ints(n, v) => {
                m.string(1, n).int(20, ATTR_INTS);
                for x in v {
                    m.int(8, *x);
                }
            }
            Attr::Str(n, v) => {
                m.string(1, n).int(20, ATTR_STRING).string(4, v);
            }
        }
        m
    }
}

/// An input of a chain step: the previous step's output, or a named tensor.
enum Arg {
    Prev,
    Name(String),
}

impl Arg {
    fn name(s: &str) -> Arg {
        Arg::Name(s.to_string())
    }
}

struct Step {
    op: &'static str,
    suffix: &'static str,
    inputs: Vec<Arg>,
    attrs: Vec<Attr>,
}

/// The ONNX nodes one graph node expands to, in order; each reads the previous one's output
/// (`Arg::Prev`). The last produces the node's tensor, the others `<name><suffix>` tensors.
struct Chain {
    base: String,
    steps: Vec<Step>,
}

impl Chain {
    fn new(base: &str) -> Self {
        Chain { base: base.to_string(), steps: Vec::new() }
    }

    fn step(&mut self, op: &'static str, suffix: &'static str, inputs: Vec<Arg>, attrs: Vec<Attr>) {
        self.steps.push(Step { op, suffix, inputs, attrs });
    }

    fn act(&mut self, act: Act, suffix: &'static str) {
        if let Some(op) = act_op(act) {
            self.step(op, suffix, vec![Arg::Prev], vec![]);
        }
    }

    fn emit(self, g: &mut GraphWriter, names: &mut Names) {
        let last = self.steps.len().saturating_sub(1);
        let mut prev = String::new();
        for (i, s) in self.steps.into_iter().enumerate() {
            let out = if i == last { self.base.clone() } else { names.fresh(format!("{}{}", self.base, s.suffix)) };
            let inputs = s
                .inputs
                .into_iter()
                .map(|a| match a {
                    Arg::Prev => prev.clone(),
                    Arg::Name(n) => n,
                })
                .collect();
            g.node(s.op, &out, inputs, s.attrs);
            prev = out;
        }
    }
}

fn act_op(act: Act) -> Option<&'static str> {
    match act {
        Act::None => None,
        Act::Relu => Some("Relu"),
        Act::Sigmoid => Some("Sigmoid"),
    }
}

/// `[1, C, 1, 1]` for a per-channel vector, so it broadcasts against NCHW.
fn channel_dims(t: &Tensor) -> Vec<usize> {
    vec![1, t.numel(), 1, 1]
}

/// Dims of a parameter's initializer: per-channel vectors that meet NCHW tensors in `Mul` / `Add`
/// get `[1, C, 1, 1]`; the others (Conv and BatchNormalization inputs) keep their shape.
fn initializer_dims(kind: ParamKind, t: &Tensor) -> Vec<usize> {
    match kind {
        ParamKind::SoftGate | ParamKind::AffineScale | ParamKind::AffineShift => channel_dims(t),
        ParamKind::Weight
        | ParamKind::Bias
        | ParamKind::BnGamma
        | ParamKind::BnBeta
        | ParamKind::BnRunningMean
        | ParamKind::BnRunningVar => t.shape.clone(),
    }
}

fn param_bytes(op: &Op) -> usize {
    op.params().iter().map(|(_, t)| 4 * t.numel()).sum()
}

/// `ValueInfoProto` of an f32 NCHW tensor; the batch dimension symbolic unless `batch` is given.
fn value_info(name: &str, shape: [usize; 4], batch: Option<usize>) -> Msg {
    let mut dims = Msg::new();
    let mut d = Msg::new();
    match batch {
        Some(n) => d.int(1, n as i64),
        None => d.string(2, BATCH_DIM_PARAM),
    };
    dims.message(1, &d);
    for &v in &shape[1..] {
        let mut d = Msg::new();
        d.int(1, v as i64);
        dims.message(1, &d);
    }
    let mut tt = Msg::new();
    tt.int(1, ELEM_FLOAT).message(2, &dims);
    let mut ty = Msg::new();
    ty.message(1, &tt);
    let mut vi = Msg::new();
    vi.string(1, name).message(2, &ty);
    vi
}

/// Encoded nodes and initializers, in emission order (which is topological).
struct GraphWriter {
    nodes: Vec<Msg>,
    inits: Vec<Msg>,
}

impl GraphWriter {
    fn node(&mut self, op: &str, output: &str, inputs: Vec<String>, attrs: Vec<Attr>) {
        let mut m = Msg::new();
        for i in &inputs {
            m.string(1, i);
        }
        m.string(2, output).string(3, output).string(4, op);
        for a in &attrs {
            m.message(5, &a.encode());
        }
        self.nodes.push(m);
    }

    /// Adds the f32 initializer `<base>.<suffix>` with the given dims and returns its name.
    fn init(&mut self, names: &mut Names, base: &str, suffix: &str, t: &Tensor, dims: &[usize]) -> Result<String> {
        let want: usize = dims.iter().product();
        if t.data.len() != want || t.shape.iter().product::<usize>() != want {
            return Err(Error::Graph(format!(
                "parameter `{base}.{suffix}` has shape {:?} and {} values, expected {dims:?}",
                t.shape,
                t.data.len()
            )));
        }
        let name = names.fresh(format!("{base}.{suffix}"));
        let mut m = Msg::new();
        for &d in dims {
            m.int(1, d as i64);
        }
        m.int(2, ELEM_FLOAT).string(8, &name).f32_bytes(9, &t.data);
        self.inits.push(m);
        Ok(name)
    }
}
