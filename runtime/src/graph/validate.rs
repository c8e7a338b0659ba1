//! Structural validation of a graph (run on every load) and binding of symbolic dims to the
//! sizes of actual inputs.

use super::{Dim, Graph, ValueId};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use std::collections::HashMap;

/// Sizes of the symbolic dims, bound from the inputs of one run.
pub type Bindings = HashMap<String, usize>;

/// Upper bounds that keep a hostile graph from making us allocate without limit.
const MAX_VALUES: usize = 1 << 20;
const MAX_RANK: usize = 8;

#[derive(Clone, Copy, PartialEq)]
enum Producer {
    None,
    Input,
    Weight,
    State,
    Node(usize),
}

impl Graph {
    /// Checks that the graph is well formed: every value produced once and before use, every
    /// node's declared outputs equal to what its op infers from its inputs, outputs present.
    /// Errors name the node or value at fault.
    pub fn validate(&self) -> Result<()> {
        if self.values.len() > MAX_VALUES {
            return Err(Error::graph(format!("{} values is over the limit of {MAX_VALUES}", self.values.len())));
        }
        let mut producer = vec![Producer::None; self.values.len()];
        let check_id = |id: ValueId, what: &str| -> Result<()> {
            if id.index() >= self.values.len() {
                return Err(Error::graph(format!("{what} refers to value #{} which does not exist", id.0)));
            }
            Ok(())
        };
        for v in &self.values {
            if v.ty.rank() > MAX_RANK {
                return Err(Error::graph(format!("value '{}' has rank {} (at most {MAX_RANK})", v.name, v.ty.rank())));
            }
        }
        for (list, kind, what) in [
            (&self.inputs, Producer::Input, "graph input"),
            (&self.weights, Producer::Weight, "weight"),
            (&self.states, Producer::State, "state"),
        ] {
            for &id in list.iter() {
                check_id(id, what)?;
                if producer[id.index()] != Producer::None {
                    return Err(Error::graph(format!("value '{}' is produced more than once", self.value(id).name)));
                }
                producer[id.index()] = kind;
            }
        }
        // Which node writes each state in place: nobody else may read the state before or
        // after that write except through the writer's output, so the order is explicit.
        let mut writer: HashMap<ValueId, usize> = HashMap::new();
        for (n, node) in self.nodes.iter().enumerate() {
            if let Some(i) = node.op.in_place_input() {
                let at = format!("node '{}' ({})", node.name, node.op.kind().name());
                let Some(&target) = node.inputs.get(i) else { continue };
                check_id(target, &at)?;
                if !self.states.contains(&target) {
                    return Err(Error::graph(format!(
                        "{at}: writes input '{}' in place, which is not a graph state",
                        self.value(target).name
                    )));
                }
                if let Some(other) = writer.insert(target, n) {
                    return Err(Error::graph(format!(
                        "{at}: state '{}' is already written by node '{}'",
                        self.value(target).name,
                        self.nodes[other].name
                    )));
                }
            }
        }
        for (n, node) in self.nodes.iter().enumerate() {
            let at = format!("node '{}' ({})", node.name, node.op.kind().name());
            for (i, id) in node.inputs.iter().enumerate() {
                if let Some(&w) = writer.get(id)
                    && (w != n || node.op.in_place_input() != Some(i))
                {
                    return Err(Error::graph(format!(
                        "{at}: reads state '{}', which node '{}' writes in place: read that node's output instead",
                        self.value(*id).name,
                        self.nodes[w].name
                    )));
                }
            }
            for &id in &node.inputs {
                check_id(id, &at)?;
                if producer[id.index()] == Producer::None {
                    return Err(Error::graph(format!(
                        "{at}: input '{}' is dangling (no graph input, weight or earlier node produces it)",
                        self.value(id).name
                    )));
                }
            }
            for &id in &node.outputs {
                check_id(id, &at)?;
                if producer[id.index()] != Producer::None {
                    return Err(Error::graph(format!(
                        "{at}: output '{}' is produced more than once",
                        self.value(id).name
                    )));
                }
                producer[id.index()] = Producer::Node(n);
            }
            let in_types: Vec<_> = node.inputs.iter().map(|&i| self.value(i).ty.clone()).collect();
            let inferred = node.op.infer(&in_types).map_err(|e| Error::graph(format!("{at}: {e}")))?;
            if inferred.len() != node.outputs.len() {
                return Err(Error::graph(format!(
                    "{at}: has {} outputs but the op produces {}",
                    node.outputs.len(),
                    inferred.len()
                )));
            }
            for (ty, &id) in inferred.iter().zip(&node.outputs) {
                let declared = &self.value(id).ty;
                if ty != declared {
                    return Err(Error::graph(format!(
                        "{at}: output '{}' is declared {declared} but the op produces {ty}",
                        self.value(id).name
                    )));
                }
            }
        }
        if self.outputs.is_empty() {
            return Err(Error::graph("the graph has no outputs"));
        }
        for &id in &self.outputs {
            check_id(id, "graph output")?;
            if producer[id.index()] == Producer::None {
                return Err(Error::graph(format!("graph output '{}' is never produced", self.value(id).name)));
            }
        }
        Ok(())
    }
}

/// Binds the graph's symbolic input dims to the sizes of `inputs` (given in the order of
/// `graph.inputs`), checking count, dtype, rank and fixed dims on the way.
pub fn bind_symbols(graph: &Graph, inputs: &[HostTensor]) -> Result<Bindings> {
    if inputs.len() != graph.inputs.len() {
        let names: Vec<&str> = graph.inputs.iter().map(|&i| graph.value(i).name.as_str()).collect();
        return Err(Error::input(format!(
            "the graph takes {} inputs ({}) but {} were given",
            names.len(),
            names.join(", "),
            inputs.len()
        )));
    }
    let mut bindings = Bindings::new();
    for (&id, tensor) in graph.inputs.iter().zip(inputs) {
        let value = graph.value(id);
        if tensor.dtype() != value.ty.dtype {
            return Err(Error::input(format!(
                "input '{}' must be {} but is {}",
                value.name,
                value.ty.dtype,
                tensor.dtype()
            )));
        }
        if tensor.shape.len() != value.ty.rank() {
            return Err(Error::input(format!(
                "input '{}' must have shape {} but has {:?}",
                value.name, value.ty, tensor.shape
            )));
        }
        for (dim, &size) in value.ty.shape.iter().zip(&tensor.shape) {
            match dim {
                Dim::Fixed(n) if *n as usize != size => {
                    return Err(Error::input(format!(
                        "input '{}' must have shape {} but has {:?}",
                        value.name, value.ty, tensor.shape
                    )));
                }
                Dim::Fixed(_) => {}
                Dim::Sym(s) => match bindings.get(s) {
                    Some(&bound) if bound != size => {
                        return Err(Error::input(format!(
                            "input '{}': dim '{s}' is {size} here but {bound} in an earlier input",
                            value.name
                        )));
                    }
                    _ => {
                        bindings.insert(s.clone(), size);
                    }
                },
            }
        }
    }
    Ok(bindings)
}
