//! Plans a graph for concrete input shapes and runs it on a backend.
//!
//! A plan fixes every value's shape and assigns each value a buffer slot by liveness: a slot
//! is reused once every value in it has been read for the last time, and a node's outputs
//! never share a slot with its inputs. Reshapes are views (they share their input's slot).
//! Plans are cached per input-shape signature; buffers are pooled across runs.

use crate::backend::{Arg, Backend, OutArg};
use crate::error::{Error, Result};
use crate::graph::{Graph, Weights, bind_symbols, load_weights};
use crate::ops::Op;
use crate::tensor::{DType, HostTensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Where a value lives during a run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Loc {
    Weight(usize),
    Slot(usize),
}

#[derive(Debug)]
struct Step {
    node: usize,
    outputs: Vec<usize>,
}

/// The schedule for one input-shape signature.
#[derive(Debug)]
pub struct Plan {
    shapes: Vec<(DType, Vec<usize>)>,
    loc: Vec<Option<Loc>>,
    slot_bytes: Vec<usize>,
    steps: Vec<Step>,
}

impl Plan {
    /// Bytes of intermediate buffers this plan needs (after reuse).
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes.iter().sum()
    }
    pub fn slot_count(&self) -> usize {
        self.slot_bytes.len()
    }
}

/// The smallest buffer any backend is asked for (wgpu cannot bind empty buffers).
const MIN_BUFFER_BYTES: usize = 16;

fn bytes_of(dtype: DType, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1, |acc: usize, &d| acc.checked_mul(d))
        .and_then(|n| dtype.bytes_for(n))
        .map(|b| b.max(MIN_BUFFER_BYTES))
        .ok_or_else(|| Error::input(format!("a tensor of shape {shape:?} is too large to address")))
}

/// Slots and their sizes while planning; a slot is free when no live value is in it.
#[derive(Default)]
struct SlotAllocator {
    bytes: Vec<usize>,
    refs: Vec<usize>,
    free: Vec<usize>,
}

impl SlotAllocator {
    /// Best fit among free slots; else grow the largest free one; else a new slot.
    fn take(&mut self, bytes: usize) -> usize {
        let fit =
            self.free.iter().enumerate().filter(|&(_, &s)| self.bytes[s] >= bytes).min_by_key(|&(_, &s)| self.bytes[s]);
        let chosen = fit.or_else(|| self.free.iter().enumerate().max_by_key(|&(_, &s)| self.bytes[s])).map(|(i, _)| i);
        let s = match chosen {
            Some(i) => self.free.swap_remove(i),
            None => {
                self.bytes.push(0);
                self.refs.push(0);
                self.bytes.len() - 1
            }
        };
        self.bytes[s] = self.bytes[s].max(bytes);
        self.refs[s] = 1;
        s
    }

    fn release(&mut self, s: usize) {
        self.refs[s] -= 1;
        if self.refs[s] == 0 {
            self.free.push(s);
        }
    }
}

pub fn plan(graph: &Graph, input_shapes: &[(DType, Vec<usize>)], bindings: &crate::graph::Bindings) -> Result<Plan> {
    let n = graph.values.len();
    let mut shapes: Vec<Option<(DType, Vec<usize>)>> = vec![None; n];
    let mut loc: Vec<Option<Loc>> = vec![None; n];
    let mut uses = vec![0usize; n];
    for node in &graph.nodes {
        for &i in &node.inputs {
            uses[i.index()] += 1;
        }
    }
    for &o in &graph.outputs {
        uses[o.index()] += 1; // graph outputs stay live to the end
    }
    let mut slots = SlotAllocator::default();
    for (i, &w) in graph.weights.iter().enumerate() {
        let ty = &graph.value(w).ty;
        shapes[w.index()] = Some((
            ty.dtype,
            ty.concrete()
                .ok_or_else(|| Error::graph(format!("weight '{}' has a symbolic shape", graph.value(w).name)))?,
        ));
        loc[w.index()] = Some(Loc::Weight(i));
    }
    for (&id, (dtype, shape)) in graph.inputs.iter().zip(input_shapes) {
        let s = slots.take(bytes_of(*dtype, shape)?);
        shapes[id.index()] = Some((*dtype, shape.clone()));
        loc[id.index()] = Some(Loc::Slot(s));
    }
    let mut steps = Vec::new();
    for (ni, node) in graph.nodes.iter().enumerate() {
        let in_shapes: Vec<(DType, &[usize])> = node
            .inputs
            .iter()
            .map(|&i| shapes[i.index()].as_ref().map(|(d, s)| (*d, s.as_slice())).expect("validated graph"))
            .collect();
        let out_shapes = node
            .op
            .output_shapes(&in_shapes, bindings)
            .map_err(|e| Error::input(format!("node '{}' ({}): {e}", node.name, node.op.kind().name())))?;
        if let Op::Reshape(_) = node.op {
            let (from, to) = (node.inputs[0], node.outputs[0]);
            let (from_n, to_n): (usize, usize) = (in_shapes[0].1.iter().product(), out_shapes[0].1.iter().product());
            if from_n != to_n {
                return Err(Error::input(format!(
                    "node '{}' (reshape): {:?} has {from_n} elements, target {:?} has {to_n}",
                    node.name, in_shapes[0].1, out_shapes[0].1
                )));
            }
            loc[to.index()] = loc[from.index()];
            if let Some(Loc::Slot(s)) = loc[to.index()] {
                slots.refs[s] += 1;
            }
        } else {
            let mut outs = Vec::new();
            for (&o, (dtype, shape)) in node.outputs.iter().zip(&out_shapes) {
                let s = slots.take(bytes_of(*dtype, shape)?);
                loc[o.index()] = Some(Loc::Slot(s));
                outs.push(s);
            }
            steps.push(Step { node: ni, outputs: outs });
        }
        for (&o, out) in node.outputs.iter().zip(out_shapes) {
            shapes[o.index()] = Some(out);
        }
        // Release inputs read for the last time, and outputs nobody reads.
        let mut dead = Vec::new();
        for &i in &node.inputs {
            uses[i.index()] -= 1;
            if uses[i.index()] == 0 {
                dead.push(i);
            }
        }
        dead.extend(node.outputs.iter().copied().filter(|o| uses[o.index()] == 0));
        for v in dead {
            if let Some(Loc::Slot(s)) = loc[v.index()] {
                slots.release(s);
            }
        }
    }
    Ok(Plan {
        shapes: shapes.into_iter().map(|s| s.unwrap_or((DType::F32, vec![]))).collect(),
        loc,
        slot_bytes: slots.bytes,
        steps,
    })
}

/// Most plans a session keeps; a server sees a new token count per batch, so this is bounded.
const MAX_CACHED_PLANS: usize = 64;
/// Most idle buffers a session keeps for reuse.
const MAX_POOLED_BUFFERS: usize = 128;

/// A graph loaded onto a backend, ready to run. `run` takes `&self`: concurrent runs each
/// take their own buffers from the pool.
pub struct Session<B: Backend> {
    backend: B,
    graph: Graph,
    weights: Vec<B::Buffer>,
    plans: Mutex<HashMap<Vec<Vec<usize>>, Arc<Plan>>>,
    pool: Mutex<Vec<(usize, B::Buffer)>>,
}

impl<B: Backend> Session<B> {
    /// Validates the graph, checks the backend has every op it uses, uploads the weights.
    pub fn new(backend: B, graph: Graph, weights: &[HostTensor]) -> Result<Self> {
        graph.validate()?;
        if let Some(node) = graph.nodes.iter().find(|n| !backend.supports(n.op.kind())) {
            return Err(Error::backend(
                backend.name(),
                format!("op '{}' (node '{}') is not implemented", node.op.kind().name(), node.name),
            ));
        }
        if weights.len() != graph.weights.len() {
            return Err(Error::graph(format!(
                "the graph declares {} weights, {} given",
                graph.weights.len(),
                weights.len()
            )));
        }
        let weights = graph
            .weights
            .iter()
            .zip(weights)
            .map(|(&id, t)| {
                let v = graph.value(id);
                if t.dtype() != v.ty.dtype || !v.ty.matches(&t.shape) {
                    return Err(Error::graph(format!(
                        "weight '{}' is {} {:?} but the graph declares {}",
                        v.name,
                        t.dtype(),
                        t.shape,
                        v.ty
                    )));
                }
                backend.upload(t)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Session { backend, graph, weights, plans: Mutex::new(HashMap::new()), pool: Mutex::new(Vec::new()) })
    }

    /// `new` with weights read from a safetensors file.
    pub fn from_weights_file(backend: B, graph: Graph, weights: &Weights) -> Result<Self> {
        graph.validate()?;
        let tensors = load_weights(&graph, weights)?;
        Self::new(backend, graph, &tensors)
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The plan for these inputs (cached).
    pub fn plan_for(&self, inputs: &[HostTensor]) -> Result<Arc<Plan>> {
        let bindings = bind_symbols(&self.graph, inputs)?;
        let key: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
        if let Some(p) = self.plans.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let shapes: Vec<(DType, Vec<usize>)> = inputs.iter().map(|t| (t.dtype(), t.shape.clone())).collect();
        let p = Arc::new(plan(&self.graph, &shapes, &bindings)?);
        let mut plans = self.plans.lock().unwrap();
        if plans.len() >= MAX_CACHED_PLANS {
            plans.clear();
        }
        plans.insert(key, p.clone());
        Ok(p)
    }

    fn take_buffer(&self, bytes: usize) -> Result<(usize, B::Buffer)> {
        let mut pool = self.pool.lock().unwrap();
        let best = pool.iter().enumerate().filter(|(_, (cap, _))| *cap >= bytes).min_by_key(|(_, (cap, _))| *cap);
        if let Some((i, _)) = best {
            return Ok(pool.swap_remove(i));
        }
        drop(pool);
        Ok((bytes, self.backend.alloc(bytes)?))
    }

    fn return_buffers(&self, buffers: impl IntoIterator<Item = (usize, B::Buffer)>) {
        let mut pool = self.pool.lock().unwrap();
        pool.extend(buffers);
        if pool.len() > MAX_POOLED_BUFFERS {
            pool.sort_by_key(|(cap, _)| std::cmp::Reverse(*cap));
            pool.truncate(MAX_POOLED_BUFFERS);
        }
    }

    /// Runs the graph: inputs in the order of `graph.inputs`, outputs in the order of
    /// `graph.outputs`.
    pub async fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let plan = self.plan_for(inputs)?;
        let mut slots: Vec<Option<(usize, B::Buffer)>> = Vec::with_capacity(plan.slot_bytes.len());
        for &bytes in &plan.slot_bytes {
            match self.take_buffer(bytes) {
                Ok(b) => slots.push(Some(b)),
                Err(e) => {
                    self.return_buffers(slots.into_iter().flatten());
                    return Err(e);
                }
            }
        }
        let result = self.record_and_finish(&plan, inputs, &mut slots).await;
        self.return_buffers(slots.into_iter().flatten());
        result
    }

    async fn record_and_finish(
        &self,
        plan: &Plan,
        inputs: &[HostTensor],
        slots: &mut [Option<(usize, B::Buffer)>],
    ) -> Result<Vec<HostTensor>> {
        let mut rec = self.backend.begin()?;
        for (&id, tensor) in self.graph.inputs.iter().zip(inputs) {
            let Some(Loc::Slot(s)) = plan.loc[id.index()] else { unreachable!("inputs live in slots") };
            let buf = &mut slots[s].as_mut().expect("slot present").1;
            self.backend.write(&mut rec, buf, tensor)?;
        }
        for step in &plan.steps {
            let node = &self.graph.nodes[step.node];
            let mut taken: Vec<(usize, B::Buffer)> =
                step.outputs.iter().map(|&s| slots[s].take().expect("output slot is not an input slot")).collect();
            let result = {
                let args: Vec<Arg<'_, B::Buffer>> = node
                    .inputs
                    .iter()
                    .map(|&i| {
                        let (dtype, shape) = &plan.shapes[i.index()];
                        let buf = match plan.loc[i.index()].expect("planned") {
                            Loc::Weight(w) => &self.weights[w],
                            Loc::Slot(s) => &slots[s].as_ref().expect("input slot present").1,
                        };
                        Arg { buf, dtype: *dtype, shape }
                    })
                    .collect();
                let mut outs: Vec<OutArg<'_, B::Buffer>> = taken
                    .iter_mut()
                    .zip(&node.outputs)
                    .map(|((_, buf), &o)| {
                        let (dtype, shape) = &plan.shapes[o.index()];
                        OutArg { buf, dtype: *dtype, shape }
                    })
                    .collect();
                self.backend.dispatch(&mut rec, &node.op, &args, &mut outs)
            };
            for (&s, b) in step.outputs.iter().zip(taken) {
                slots[s] = Some(b);
            }
            result.map_err(|e| match e {
                Error::Backend { backend, message } => {
                    Error::Backend { backend, message: format!("node '{}': {message}", node.name) }
                }
                other => other,
            })?;
        }
        let reads: Vec<Arg<'_, B::Buffer>> = self
            .graph
            .outputs
            .iter()
            .map(|&o| {
                let (dtype, shape) = &plan.shapes[o.index()];
                let buf = match plan.loc[o.index()].expect("planned") {
                    Loc::Weight(w) => &self.weights[w],
                    Loc::Slot(s) => &slots[s].as_ref().expect("slot present").1,
                };
                Arg { buf, dtype: *dtype, shape }
            })
            .collect();
        self.backend.finish(rec, &reads).await
    }

    /// `run` for callers without an executor.
    pub fn run_blocking(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        pollster::block_on(self.run(inputs))
    }
}
