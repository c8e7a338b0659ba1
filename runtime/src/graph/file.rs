//! The graph file format, and loading a graph's weights.
//!
//! A graph file is `MAGIC (8 bytes) | version (u32 LE) | payload length (u64 LE) | payload`,
//! the payload being bincode 2 of [`DiskGraph`]. Nodes are stored with their op's *name* next
//! to its encoded params, so that a file from a newer build fails with "unknown op 'x' at node
//! 'y'" rather than a decoding error. Weights live beside the graph in a safetensors file
//! (read by [`crate::weights::Weights`]; quantized weights are stored as described there).

use super::{Graph, Node, TensorType, Value, ValueId};
use crate::error::{Error, Result};
use crate::ops::{Op, OpKind};
use crate::tensor::HostTensor;
pub use crate::weights::Weights;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const GRAPH_MAGIC: &[u8; 8] = b"TNDMGRPH";
/// 2: graphs declare states. 3: conv2d carries its clamp ([`crate::ops::Conv2d::clamp`]).
/// 4: attention carries `bf16_products` ([`crate::ops::Attention::bf16_products`]).
pub const GRAPH_FILE_VERSION: u32 = 4;
/// Version 2 and 3 files still load: their conv2d params (version 2) end before the clamp,
/// read as none, and their attention params before `bf16_products`, read as false.
const OLDEST_READABLE_VERSION: u32 = 2;
/// Graph files hold structure only (weights are elsewhere), so this is generous.
const MAX_GRAPH_FILE_BYTES: u64 = 64 << 20;
const HEADER_BYTES: usize = 8 + 4 + 8;

#[derive(Serialize, Deserialize)]
struct DiskGraph {
    name: String,
    values: Vec<Value>,
    nodes: Vec<DiskNode>,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
    weights: Vec<ValueId>,
    states: Vec<ValueId>,
    metadata: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct DiskNode {
    name: String,
    op: String,
    params: Vec<u8>,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_GRAPH_FILE_BYTES as usize }>()
}

pub fn write_graph_file(graph: &Graph, path: &Path) -> Result<()> {
    let bytes = encode_graph(graph).map_err(|message| Error::file(path, message))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn encode_graph(graph: &Graph) -> std::result::Result<Vec<u8>, String> {
    let nodes = graph
        .nodes
        .iter()
        .map(|n| {
            let params = bincode::serde::encode_to_vec(&n.op, bincode_config())
                .map_err(|e| format!("cannot encode node '{}': {e}", n.name))?;
            Ok(DiskNode {
                name: n.name.clone(),
                op: n.op.kind().name().to_string(),
                params,
                inputs: n.inputs.clone(),
                outputs: n.outputs.clone(),
            })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let disk = DiskGraph {
        name: graph.name.clone(),
        values: graph.values.clone(),
        nodes,
        inputs: graph.inputs.clone(),
        outputs: graph.outputs.clone(),
        weights: graph.weights.clone(),
        states: graph.states.clone(),
        metadata: graph.metadata.clone(),
    };
    with_header(GRAPH_FILE_VERSION, &disk)
}

fn with_header(version: u32, disk: &DiskGraph) -> std::result::Result<Vec<u8>, String> {
    let payload =
        bincode::serde::encode_to_vec(disk, bincode_config()).map_err(|e| format!("cannot encode graph: {e}"))?;
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(GRAPH_MAGIC);
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Reads and validates a graph file. Every failure names the file and the fault.
pub fn read_graph_file(path: &Path) -> Result<Graph> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_GRAPH_FILE_BYTES {
        return Err(Error::file(
            path,
            format!("{} bytes is over the graph file limit of {MAX_GRAPH_FILE_BYTES}", meta.len()),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_graph(&bytes).map_err(|message| Error::file(path, message))
}

fn decode_graph(bytes: &[u8]) -> std::result::Result<Graph, String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != GRAPH_MAGIC {
        return Err("not a tandem graph file (bad magic bytes)".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if !(OLDEST_READABLE_VERSION..=GRAPH_FILE_VERSION).contains(&version) {
        return Err(format!(
            "graph file version {version}; this build reads versions {OLDEST_READABLE_VERSION} to {GRAPH_FILE_VERSION}"
        ));
    }
    let declared = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
    let payload = &bytes[HEADER_BYTES..];
    if declared != payload.len() as u64 {
        return Err(format!(
            "header says the payload is {declared} bytes but {} follow (truncated or corrupt)",
            payload.len()
        ));
    }
    let (disk, used): (DiskGraph, usize) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|e| format!("corrupt graph payload: {e}"))?;
    if used != payload.len() {
        return Err(format!("corrupt graph payload: {} trailing bytes", payload.len() - used));
    }
    let nodes = disk
        .nodes
        .into_iter()
        .map(|n| {
            let kind = OpKind::from_name(&n.op).ok_or_else(|| format!("node '{}': unknown op '{}'", n.name, n.op))?;
            let mut params = n.params;
            if version < 3 && kind == OpKind::Conv2d {
                // Version 2's conv2d ended before its clamp, the last field: bincode writes
                // an absent option as one zero byte.
                params.push(0);
            }
            if version < 4 && kind == OpKind::Attention {
                // Versions 2 and 3's attention ended before `bf16_products`, the last field:
                // bincode writes false as one zero byte.
                params.push(0);
            }
            let (op, _): (Op, usize) = bincode::serde::decode_from_slice(&params, bincode_config())
                .map_err(|e| format!("node '{}': corrupt params for op '{}': {e}", n.name, n.op))?;
            if op.kind() != kind {
                return Err(format!("node '{}': params are for op '{}', not '{}'", n.name, op.kind().name(), n.op));
            }
            Ok(Node { name: n.name, op, inputs: n.inputs, outputs: n.outputs })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let graph = Graph {
        name: disk.name,
        values: disk.values,
        nodes,
        inputs: disk.inputs,
        outputs: disk.outputs,
        weights: disk.weights,
        states: disk.states,
        metadata: disk.metadata,
    };
    graph.validate().map_err(|e| e.to_string())?;
    Ok(graph)
}

/// Loads the weights a graph declares from `file`, checking presence, dtype and shape of each.
/// Returns them in the order of `graph.weights`.
pub fn load_weights(graph: &Graph, file: &Weights) -> Result<Vec<HostTensor>> {
    graph
        .weights
        .iter()
        .map(|&id| {
            let value = graph.value(id);
            let expected = value
                .ty
                .concrete()
                .ok_or_else(|| Error::graph(format!("weight '{}' has symbolic shape {}", value.name, value.ty)))?;
            let shape = file
                .shape(&value.name)
                .ok_or_else(|| Error::file(file.path(), format!("weight '{}' is missing", value.name)))?;
            if shape != expected {
                return Err(Error::file(
                    file.path(),
                    format!("weight '{}' has shape {shape:?} but the graph expects {expected:?}", value.name),
                ));
            }
            file.tensor(&value.name, value.ty.dtype)
        })
        .collect()
}

impl TensorType {
    /// Whether a tensor of this concrete shape fits the type.
    pub fn matches(&self, shape: &[usize]) -> bool {
        self.shape.len() == shape.len()
            && self.shape.iter().zip(shape).all(|(d, &s)| d.fixed().is_none_or(|n| n as usize == s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Dim;
    use crate::ops::{Attention, Conv2d};
    use crate::tensor::DType;

    /// A version 2 file (conv2d without its clamp) reads as the same graph with no clamp.
    #[test]
    fn a_version_2_convolution_reads_without_a_clamp() {
        let mut g = Graph::new("v2");
        let x = g.input("x", TensorType::new(DType::F32, [1, 3, 5, 5].map(Dim::Fixed).to_vec()));
        let w = g.weight("w", TensorType::fixed(DType::F32, &[4, 3, 3, 3]));
        let conv = Conv2d { stride: [1, 1], padding: [1, 1], groups: 1, clamp: None };
        let y = g.node1("conv", Op::Conv2d(conv), &[x, w]).unwrap();
        g.output(y, "y");
        let current = encode_graph(&g).unwrap();
        let (mut disk, _): (DiskGraph, usize) =
            bincode::serde::decode_from_slice(&current[HEADER_BYTES..], bincode_config()).unwrap();
        assert_eq!(disk.nodes[0].params.pop(), Some(0), "the clamp's none is the last byte");
        let v2 = with_header(2, &disk).unwrap();
        assert_eq!(decode_graph(&v2).unwrap(), g);
        // And a version-2 node cut any shorter is still an error that names it.
        disk.nodes[0].params.pop();
        let err = decode_graph(&with_header(2, &disk).unwrap()).unwrap_err();
        assert!(err.contains("node 'conv': corrupt params"), "{err}");
        assert!(decode_graph(&with_header(1, &disk).unwrap()).unwrap_err().contains("versions 2 to 4"));
    }

    /// A version 3 file (attention without `bf16_products`) reads as the same graph, f32
    /// products.
    #[test]
    fn a_version_3_attention_reads_with_f32_products() {
        let mut g = Graph::new("v3");
        let rows = TensorType::new(DType::F32, vec![Dim::sym("tokens"), Dim::Fixed(8)]);
        let q = g.input("q", rows);
        let table = g.input("table", TensorType::new(DType::U32, vec![Dim::sym("seqs"), Dim::Fixed(2)]));
        let op = Attention { num_heads: 2, num_kv_heads: 2, scale: 0.5, causal: false, bf16_products: false };
        let y = g.node1("attention", Op::Attention(op), &[q, q, q, table]).unwrap();
        g.output(y, "y");
        let current = encode_graph(&g).unwrap();
        let (mut disk, _): (DiskGraph, usize) =
            bincode::serde::decode_from_slice(&current[HEADER_BYTES..], bincode_config()).unwrap();
        assert_eq!(disk.nodes[0].params.pop(), Some(0), "bf16_products' false is the last byte");
        assert_eq!(decode_graph(&with_header(3, &disk).unwrap()).unwrap(), g);
    }
}
