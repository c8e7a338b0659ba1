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
/// 2: graphs declare states.
pub const GRAPH_FILE_VERSION: u32 = 2;
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
    let nodes = graph
        .nodes
        .iter()
        .map(|n| {
            let params = bincode::serde::encode_to_vec(&n.op, bincode_config())
                .map_err(|e| Error::file(path, format!("cannot encode node '{}': {e}", n.name)))?;
            Ok(DiskNode {
                name: n.name.clone(),
                op: n.op.kind().name().to_string(),
                params,
                inputs: n.inputs.clone(),
                outputs: n.outputs.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
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
    let payload = bincode::serde::encode_to_vec(&disk, bincode_config())
        .map_err(|e| Error::file(path, format!("cannot encode graph: {e}")))?;
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(GRAPH_MAGIC);
    bytes.extend_from_slice(&GRAPH_FILE_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
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
    if version != GRAPH_FILE_VERSION {
        return Err(format!("graph file version {version}; this build reads version {GRAPH_FILE_VERSION}"));
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
            let (op, _): (Op, usize) = bincode::serde::decode_from_slice(&n.params, bincode_config())
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
