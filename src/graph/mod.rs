//! The graph IR: every network is described once as a `Graph`, and every executor runs it.
//!
//! Nodes are kept in topological order (a node's inputs always have smaller ids), each node
//! produces one NCHW f32 tensor, and parameters live inside the operators that use them.

pub(crate) mod builder;
pub mod memory;
mod op;
pub mod passes;
mod shape;

pub use builder::{ConvSpec, GraphBuilder};
pub use op::{param_name, Act, BatchNorm, Conv2d, Epilogue, Op, ParamKind, Residual};
pub use shape::{NodeStats, MAX_TENSOR_ELEMENTS};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

#[derive(Clone, Debug, PartialEq)]
/// One operator application: `op` applied to the outputs of `inputs`.
pub struct Node {
    /// Stable, readable name (`stack0.hg.down1.block.conv2`); parameter names derive from it.
    pub name: String,
    /// The operator and its parameters.
    pub op: Op,
    /// The nodes whose outputs feed `op`, in the operator's input order (all smaller ids).
    pub inputs: Vec<NodeId>,
}

#[derive(Clone, Debug, Default, PartialEq)]
/// A network: nodes in topological order and the ids of its outputs.
pub struct Graph {
    /// The nodes; a node's id is its index here.
    pub nodes: Vec<Node>,
    /// The tensors a run returns, in order.
    pub outputs: Vec<NodeId>,
}

impl Graph {
    /// An empty graph (no nodes, no outputs).
    pub fn new() -> Self {
        Graph::default()
    }

    /// Ids of the input nodes, in order of creation.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.nodes.iter().enumerate().filter(|(_, n)| matches!(n.op, Op::Input { .. })).map(|(i, _)| i).collect()
    }

    /// Appends a node; its inputs must already exist (this keeps the order topological).
    pub fn push(&mut self, name: impl Into<String>, op: Op, inputs: Vec<NodeId>) -> Result<NodeId> {
        let name = name.into();
        let id = self.nodes.len();
        if let Some(&bad) = inputs.iter().find(|&&i| i >= id) {
            return Err(Error::Graph(format!("node `{name}` refers to node {bad}, which does not exist yet")));
        }
        self.nodes.push(Node { name, op, inputs });
        Ok(id)
    }

    /// For each node, the nodes that read its output (graph outputs are not listed).
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut c = vec![Vec::new(); self.nodes.len()];
        for (id, n) in self.nodes.iter().enumerate() {
            for &i in &n.inputs {
                if !c[i].contains(&id) {
                    c[i].push(id);
                }
            }
        }
        c
    }

    /// Structural checks: topological order, at least one output, outputs in range.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.outputs.is_empty() {
            return Err(Error::Graph("the graph has no outputs".into()));
        }
        for (id, n) in self.nodes.iter().enumerate() {
            if n.inputs.iter().any(|&i| i >= id) {
                return Err(Error::Graph(format!("node `{}` is not in topological order", n.name)));
            }
        }
        if let Some(&o) = self.outputs.iter().find(|&&o| o >= self.nodes.len()) {
            return Err(Error::Graph(format!("output {o} does not exist")));
        }
        Ok(())
    }

    /// The id of the node called `name`, if any.
    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Total learnable parameters.
    pub fn param_count(&self) -> usize {
        self.nodes.iter().map(|n| n.op.param_count()).sum()
    }

    /// Every parameter and statistic of the graph as `(node name, kind, tensor)`: the nodes in
    /// order, each node's parameters in the order of [`Op::params`].
    pub fn params(&self) -> Vec<(&str, ParamKind, &Tensor)> {
        self.nodes.iter().flat_map(|n| n.op.params().into_iter().map(move |(k, t)| (n.name.as_str(), k, t))).collect()
    }

    /// [`Graph::params`] with mutable access to the tensors (same order).
    pub fn params_mut(&mut self) -> Vec<(&str, ParamKind, &mut Tensor)> {
        self.nodes
            .iter_mut()
            .flat_map(|n| {
                let Node { name, op, .. } = n;
                let name = name.as_str();
                op.params_mut().into_iter().map(move |(k, t)| (name, k, t))
            })
            .collect()
    }
}
