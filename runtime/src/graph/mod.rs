//! The IR: a graph is data. Values are SSA (each produced once: by a graph input, a named
//! weight or one node output) and carry a dtype and a shape whose dims are fixed or symbolic
//! (`tokens`, `seqs`, ...). Nodes name an op with its params. Builders emit a `Graph`;
//! executing it never needs the builder.

mod file;
mod validate;

pub use file::{GRAPH_FILE_VERSION, GRAPH_MAGIC, Weights, load_weights, read_graph_file, write_graph_file};
pub use validate::{Bindings, bind_symbols};

use crate::ops::Op;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One dimension of a value's shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dim {
    Fixed(u64),
    /// A size known only when inputs arrive, named so that equal names are equal sizes.
    Sym(String),
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }
    pub fn fixed(&self) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n as u64)
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// Dtype and shape of a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Vec<Dim>) -> Self {
        TensorType { dtype, shape }
    }
    /// A type whose dims are all fixed.
    pub fn fixed(dtype: DType, shape: &[usize]) -> Self {
        TensorType { dtype, shape: shape.iter().map(|&d| Dim::from(d)).collect() }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// The concrete shape, when every dim is fixed.
    pub fn concrete(&self) -> Option<Vec<usize>> {
        self.shape.iter().map(|d| d.fixed().map(|n| n as usize)).collect()
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype, dims.join(", "))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Value {
    /// Graph inputs and outputs are addressed by name; a weight's name is its tensor name in
    /// the weights file.
    pub name: String,
    pub ty: TensorType,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    pub weights: Vec<ValueId>,
    /// Values that live on the device between runs (a decoder's KV cache), owned by the
    /// caller as a [`crate::exec::State`] and written in place by ops such as `kv_write`. Their
    /// symbolic dims are bound when the state is made, not by the inputs of a run.
    pub states: Vec<ValueId>,
    /// Free-form facts a pipeline needs to use the graph (pooling, max tokens, ...).
    pub metadata: BTreeMap<String, String>,
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Graph { name: name.to_string(), ..Default::default() }
    }

    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }

    fn add_value(&mut self, name: String, ty: TensorType) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value { name, ty });
        id
    }

    pub fn input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let id = self.add_value(name.to_string(), ty);
        self.inputs.push(id);
        id
    }

    pub fn weight(&mut self, name: &str, ty: TensorType) -> ValueId {
        let id = self.add_value(name.to_string(), ty);
        self.weights.push(id);
        id
    }

    /// Declares a state value (see [`Graph::states`]).
    pub fn state(&mut self, name: &str, ty: TensorType) -> ValueId {
        let id = self.add_value(name.to_string(), ty);
        self.states.push(id);
        id
    }

    /// Appends a node, inferring its output types from the op's shape rules.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> crate::Result<Vec<ValueId>> {
        let in_types: Vec<TensorType> = inputs.iter().map(|&i| self.value(i).ty.clone()).collect();
        let out_types = op
            .infer(&in_types)
            .map_err(|e| crate::Error::graph(format!("node '{name}' ({}): {e}", op.kind().name())))?;
        let outputs: Vec<ValueId> =
            out_types.into_iter().enumerate().map(|(i, ty)| self.add_value(format!("{name}:{i}"), ty)).collect();
        self.nodes.push(Node { name: name.to_string(), op, inputs: inputs.to_vec(), outputs: outputs.clone() });
        Ok(outputs)
    }

    /// `node` for ops with one output.
    pub fn node1(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> crate::Result<ValueId> {
        Ok(self.node(name, op, inputs)?[0])
    }

    pub fn output(&mut self, id: ValueId, name: &str) {
        self.values[id.index()].name = name.to_string();
        self.outputs.push(id);
    }

    pub fn input_named(&self, name: &str) -> Option<ValueId> {
        self.inputs.iter().copied().find(|&i| self.value(i).name == name)
    }

    /// Declares every f32 weight whose only use is as the `[N, K]` weight of a `MatMul` (a
    /// linear layer's, by f32 activations) as stored in `dtype` (bf16 or f16) instead: loading
    /// converts it ([`file::load_weights`]), the products read it as stored, and on the CPU a
    /// bf16 one is multiplied in bf16 where the CPU can. Weights with other uses (a tied
    /// embedding table, a norm's scale) stay f32. Returns how many weights changed; the types
    /// of every other value stay as they were (such a product's output is f32).
    pub fn store_linear_weights_as(&mut self, dtype: DType) -> usize {
        let mut as_linear_weight = vec![false; self.values.len()];
        let mut otherwise = vec![false; self.values.len()];
        for node in &self.nodes {
            let linear = matches!(&node.op, Op::MatMul(m) if m.trans_b)
                && node.inputs.len() >= 2
                && self.value(node.inputs[0]).ty.dtype == DType::F32;
            for (i, &input) in node.inputs.iter().enumerate() {
                if linear && i == 1 {
                    as_linear_weight[input.index()] = true;
                } else {
                    otherwise[input.index()] = true;
                }
            }
        }
        for &output in &self.outputs {
            otherwise[output.index()] = true;
        }
        let mut changed = 0;
        for &w in &self.weights {
            let ty = &mut self.values[w.index()].ty;
            if as_linear_weight[w.index()] && !otherwise[w.index()] && ty.dtype == DType::F32 && ty.rank() == 2 {
                ty.dtype = dtype;
                changed += 1;
            }
        }
        changed
    }

    /// Lets every attention node multiply in bf16 where the backend can
    /// ([`crate::ops::Attention::bf16_products`]); how many changed.
    pub fn allow_bf16_attention(&mut self) -> usize {
        let mut changed = 0;
        for node in &mut self.nodes {
            if let Op::Attention(a) = &mut node.op
                && !a.bf16_products
            {
                a.bf16_products = true;
                changed += 1;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::{Activation, MatMul};

    #[test]
    fn only_weights_used_as_linear_weights_change_dtype() {
        let mut g = Graph::new("t");
        let ids = g.input("ids", TensorType::new(DType::U32, vec![Dim::sym("tokens")]));
        let table = g.weight("table", TensorType::fixed(DType::F32, &[10, 4]));
        let dense = g.weight("dense", TensorType::fixed(DType::F32, &[4, 4]));
        let bias = g.weight("bias", TensorType::fixed(DType::F32, &[4]));
        let x = g.node1("embed", Op::Gather, &[table, ids]).unwrap();
        let linear = Op::MatMul(MatMul { trans_b: true, activation: Activation::None });
        let y = g.node1("dense", linear.clone(), &[x, dense, bias]).unwrap();
        // A tied output layer: the embedding table is a product's weight too, and stays f32.
        let logits = g.node1("tied", linear, &[y, table]).unwrap();
        g.output(logits, "logits");
        assert_eq!(g.store_linear_weights_as(DType::BF16), 1);
        assert_eq!(g.value(dense).ty.dtype, DType::BF16);
        assert_eq!(g.value(table).ty.dtype, DType::F32);
        assert_eq!(g.value(bias).ty.dtype, DType::F32);
        g.validate().unwrap();
    }
}
