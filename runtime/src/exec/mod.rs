//! Plans a graph for concrete shapes and runs it on a backend.
//!
//! A plan fixes every value's shape and assigns each value a buffer slot by liveness: a slot
//! is reused once every value in it has been read for the last time, and a node's outputs
//! never share a slot with its inputs. Reshapes are views (they share their input's slot);
//! ops that write a state in place (`kv_write`) output the state's own buffer. A plan covers
//! only the nodes the requested outputs need (and every state write). Plans are cached per
//! signature (input shapes, state shapes, requested outputs), so a decoder's steps, whose
//! shapes do not change as its cache fills, reuse one plan; buffers are pooled across runs.

use crate::backend::{Arg, Backend, OutArg};
use crate::error::{Error, Result};
use crate::graph::{Bindings, Dim, Graph, ValueId, Weights, bind_symbols, load_weights};
use crate::ops::{Op, attention};
use crate::tensor::{DType, HostTensor};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Where a value lives during a run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Loc {
    Weight(usize),
    Slot(usize),
    State(usize),
}

#[derive(Debug)]
struct Step {
    node: usize,
    outputs: Vec<Loc>,
}

/// The schedule for one signature.
#[derive(Debug)]
pub struct Plan {
    shapes: Vec<(DType, Vec<usize>)>,
    loc: Vec<Option<Loc>>,
    slot_bytes: Vec<usize>,
    steps: Vec<Step>,
    /// The graph outputs this plan reads back, in the order asked for.
    reads: Vec<ValueId>,
}

impl Plan {
    /// Bytes of intermediate buffers this plan needs (after reuse).
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes.iter().sum()
    }
    pub fn slot_count(&self) -> usize {
        self.slot_bytes.len()
    }
    /// Nodes this plan dispatches (views excluded).
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }
}

/// The smallest buffer any backend is asked for (wgpu cannot bind empty buffers).
const MIN_BUFFER_BYTES: usize = 16;

/// Set (to anything) to print each step's dispatch time to stderr: `step <µs> <op> <input
/// shapes>`, one line per node per run. On the CPU that is the op's time; on GPU backends
/// only the time to record it. `benches/step_times.py` turns the lines into medians per
/// step. Read once per process.
pub const STEP_TIMES_ENV: &str = "TANDEM_STEP_TIMES";

fn step_times() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(STEP_TIMES_ENV).is_some())
}

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

/// The nodes needed for `wanted`: those they depend on, and every node that writes a state
/// (its effect outlives the run).
fn needed_nodes(graph: &Graph, wanted: &[ValueId]) -> Vec<bool> {
    let mut live = vec![false; graph.values.len()];
    for &o in wanted {
        live[o.index()] = true;
    }
    let mut needed = vec![false; graph.nodes.len()];
    for (n, node) in graph.nodes.iter().enumerate().rev() {
        if node.op.in_place_input().is_some() || node.outputs.iter().any(|o| live[o.index()]) {
            needed[n] = true;
            for &i in &node.inputs {
                live[i.index()] = true;
            }
        }
    }
    needed
}

/// Plans `graph` for inputs and states of these shapes, reading back `wanted` (graph
/// outputs).
pub fn plan(
    graph: &Graph,
    input_shapes: &[(DType, Vec<usize>)],
    state_shapes: &[Vec<usize>],
    bindings: &Bindings,
    wanted: &[ValueId],
) -> Result<Plan> {
    let n = graph.values.len();
    let mut shapes: Vec<Option<(DType, Vec<usize>)>> = vec![None; n];
    let mut loc: Vec<Option<Loc>> = vec![None; n];
    let needed = needed_nodes(graph, wanted);
    let mut uses = vec![0usize; n];
    for (node, _) in graph.nodes.iter().zip(&needed).filter(|(_, needed)| **needed) {
        for &i in &node.inputs {
            uses[i.index()] += 1;
        }
    }
    for &o in wanted {
        uses[o.index()] += 1; // outputs read back stay live to the end
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
    for (i, (&s, shape)) in graph.states.iter().zip(state_shapes).enumerate() {
        shapes[s.index()] = Some((graph.value(s).ty.dtype, shape.clone()));
        loc[s.index()] = Some(Loc::State(i));
    }
    for (&id, (dtype, shape)) in graph.inputs.iter().zip(input_shapes) {
        let s = slots.take(bytes_of(*dtype, shape)?);
        shapes[id.index()] = Some((*dtype, shape.clone()));
        loc[id.index()] = Some(Loc::Slot(s));
    }
    let mut steps = Vec::new();
    for (ni, node) in graph.nodes.iter().enumerate().filter(|&(ni, _)| needed[ni]) {
        let in_shapes: Vec<(DType, &[usize])> = node
            .inputs
            .iter()
            .map(|&i| shapes[i.index()].as_ref().map(|(d, s)| (*d, s.as_slice())).expect("validated graph"))
            .collect();
        let out_shapes = node
            .op
            .output_shapes(&in_shapes, bindings)
            .map_err(|e| Error::input(format!("node '{}' ({}): {e}", node.name, node.op.kind().name())))?;
        // Views and in-place writes put their output where their input is.
        let aliased = match node.op {
            Op::Reshape(_) => Some(0),
            _ => node.op.in_place_input(),
        };
        if let Some(from) = aliased {
            let (from, to) = (node.inputs[from], node.outputs[0]);
            let from_n: usize = shapes[from.index()].as_ref().expect("planned").1.iter().product();
            let to_n: usize = out_shapes[0].1.iter().product();
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
            if !matches!(node.op, Op::Reshape(_)) {
                steps.push(Step { node: ni, outputs: vec![loc[to.index()].expect("planned")] });
            }
        } else {
            let mut outs = Vec::new();
            for (&o, (dtype, shape)) in node.outputs.iter().zip(&out_shapes) {
                let s = slots.take(bytes_of(*dtype, shape)?);
                loc[o.index()] = Some(Loc::Slot(s));
                outs.push(Loc::Slot(s));
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
        reads: wanted.to_vec(),
    })
}

/// Which graph outputs a run reads back; the others are not computed at all unless a
/// requested one needs them, and nothing else leaves the device.
#[derive(Debug, Clone, Copy)]
pub enum Outputs<'a> {
    All,
    /// By name, in this order.
    Named(&'a [&'a str]),
}

/// Values that live on the backend's device between runs: one buffer per state the graph
/// declares (a decoder's KV caches), with the sizes chosen when it was made. Owned by the
/// caller, one per sequence or per batch of sequences, and passed to each run by `&mut`, so
/// two runs never write one state at once. Contents start unspecified (the ops' tables say
/// which rows are valid).
pub struct State<B: Backend> {
    buffers: Vec<Option<B::Buffer>>,
    shapes: Vec<Vec<usize>>,
    bindings: Bindings,
    bytes: usize,
}

impl<B: Backend> State<B> {
    /// Concrete shapes, in the order of `graph.states`.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }
    /// Device bytes this state holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PlanKey {
    inputs: Vec<Vec<usize>>,
    states: Vec<Vec<usize>>,
    outputs: Vec<ValueId>,
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
    plans: Mutex<HashMap<PlanKey, Arc<Plan>>>,
    plans_made: AtomicUsize,
    pool: Mutex<Vec<(usize, B::Buffer)>>,
}

impl<B: Backend> Session<B> {
    /// Validates the graph, checks the backend has every op it uses, uploads the weights.
    pub fn new(backend: B, graph: Graph, weights: &[HostTensor]) -> Result<Self> {
        Self::with_weights(backend, graph, weights.len(), weights.iter())
    }

    /// [`Session::new`] that frees each host weight as soon as it is on the backend, so that
    /// loading holds the backend's copy and at most one host tensor beside the rest of the
    /// host copies, never two full copies of a large model.
    pub fn new_owned(backend: B, graph: Graph, weights: Vec<HostTensor>) -> Result<Self> {
        Self::with_weights(backend, graph, weights.len(), weights.into_iter())
    }

    fn with_weights<T: std::borrow::Borrow<HostTensor>>(
        backend: B,
        graph: Graph,
        count: usize,
        weights: impl Iterator<Item = T>,
    ) -> Result<Self> {
        graph.validate()?;
        for node in &graph.nodes {
            let what = || format!("op '{}' (node '{}')", node.op.kind().name(), node.name);
            if !backend.supports(node.op.kind()) {
                return Err(Error::backend(backend.name(), format!("{} is not implemented", what())));
            }
            let dtypes: Vec<DType> = node.inputs.iter().map(|&i| graph.value(i).ty.dtype).collect();
            if !backend.supports_dtypes(&node.op, &dtypes) {
                let names: Vec<&str> = dtypes.iter().map(|d| d.name()).collect();
                return Err(Error::backend(
                    backend.name(),
                    format!("{} on inputs of dtype {} is not implemented", what(), names.join(", ")),
                ));
            }
        }
        if count != graph.weights.len() {
            return Err(Error::graph(format!("the graph declares {} weights, {count} given", graph.weights.len())));
        }
        let weights = graph
            .weights
            .iter()
            .zip(weights)
            .map(|(&id, t)| {
                let t = t.borrow();
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
        Ok(Session {
            backend,
            graph,
            weights,
            plans: Mutex::new(HashMap::new()),
            plans_made: AtomicUsize::new(0),
            pool: Mutex::new(Vec::new()),
        })
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

    /// How many plans this session has made so far (a plan per new signature; a decoder's
    /// steps after the first make none).
    pub fn plans_made(&self) -> usize {
        self.plans_made.load(Ordering::Relaxed)
    }

    /// A state for this graph, with its symbolic dims sized by `sizes` (name, size), e.g.
    /// `[("kv_rows", slots × capacity)]`.
    pub fn new_state(&self, sizes: &[(&str, usize)]) -> Result<State<B>> {
        let bindings: Bindings = sizes.iter().map(|&(k, v)| (k.to_string(), v)).collect();
        let mut shapes = Vec::with_capacity(self.graph.states.len());
        for &id in &self.graph.states {
            let value = self.graph.value(id);
            let shape = value
                .ty
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => Ok(*n as usize),
                    Dim::Sym(s) => bindings
                        .get(s)
                        .copied()
                        .ok_or_else(|| Error::input(format!("state '{}' needs the size of '{s}'", value.name))),
                })
                .collect::<Result<Vec<usize>>>()?;
            shapes.push(shape);
        }
        let mut bytes = 0;
        let mut buffers = Vec::with_capacity(shapes.len());
        for (&id, shape) in self.graph.states.iter().zip(&shapes) {
            let size = bytes_of(self.graph.value(id).ty.dtype, shape)?;
            buffers.push(Some(self.backend.alloc(size)?));
            bytes += size;
        }
        Ok(State { buffers, shapes, bindings, bytes })
    }

    /// Overwrites state `name` with `tensor` (same dtype and shape).
    pub async fn write_state(&self, state: &mut State<B>, name: &str, tensor: &HostTensor) -> Result<()> {
        let i = self.state_index(name)?;
        if tensor.shape != state.shapes[i] {
            return Err(Error::input(format!("state '{name}' is {:?}, not {:?}", state.shapes[i], tensor.shape)));
        }
        self.write_state_rows(state, name, 0, tensor).await
    }

    /// Overwrites rows `first..first + n` of the leading dimension of state `name` with
    /// `tensor` (`[n, …]`, the state's dtype and trailing dims): what one sequence of a
    /// batch's state gets, computed elsewhere (a picture's visual keys and values).
    pub async fn write_state_rows(
        &self,
        state: &mut State<B>,
        name: &str,
        first: usize,
        tensor: &HostTensor,
    ) -> Result<()> {
        let i = self.state_index(name)?;
        let value = self.graph.value(self.graph.states[i]);
        let shape = &state.shapes[i];
        let fits = tensor.shape.len() == shape.len()
            && tensor.shape.get(1..) == shape.get(1..)
            && tensor.shape.first().zip(shape.first()).is_some_and(|(&n, &total)| first.saturating_add(n) <= total);
        if tensor.dtype() != value.ty.dtype || !fits {
            return Err(Error::input(format!(
                "state '{name}' is {} {shape:?}: cannot write {} {:?} at row {first}",
                value.ty.dtype,
                tensor.dtype(),
                tensor.shape
            )));
        }
        let row: usize = shape.get(1..).unwrap_or(&[]).iter().product();
        let at = value.ty.dtype.bytes_for(row * first).ok_or_else(|| Error::input("row offset too large"))?;
        // GPU writes move whole 4-byte words: a part of a state must start and end on one.
        let whole = first == 0 && tensor.shape == *shape;
        if !whole && (!at.is_multiple_of(4) || !tensor.data.as_bytes().len().is_multiple_of(4)) {
            return Err(Error::input(format!("state '{name}': rows {first}.. do not start and end on 4-byte words")));
        }
        let mut rec = self.backend.begin()?;
        let buf = state.buffers[i].as_mut().expect("state buffers are present between runs");
        self.backend.write(&mut rec, buf, at, tensor)?;
        self.backend.finish(rec, &[]).await.map(|_| ())
    }

    fn state_index(&self, name: &str) -> Result<usize> {
        self.graph
            .states
            .iter()
            .position(|&s| self.graph.value(s).name == name)
            .ok_or_else(|| Error::input(format!("the graph has no state '{name}'")))
    }

    /// Copies rows `from..from + rows` of the leading dimension of every state whose leading
    /// dimension is the symbol `dim` to the rows starting at `to` (a KV-cache prefix computed
    /// once for one sequence, given to another: `"kv_rows"`, not a picture's visual rows).
    pub fn copy_state_rows(&self, state: &mut State<B>, dim: &str, from: usize, to: usize, rows: usize) -> Result<()> {
        for (i, &id) in self.graph.states.iter().enumerate() {
            if self.graph.value(id).ty.shape.first() != Some(&Dim::Sym(dim.to_string())) {
                continue;
            }
            let shape = &state.shapes[i];
            let name = &self.graph.value(id).name;
            let total = shape.first().copied().unwrap_or(1);
            if from.max(to).checked_add(rows).is_none_or(|end| end > total) || from.abs_diff(to) < rows {
                return Err(Error::input(format!(
                    "state '{name}': cannot copy rows {from}..{} to {to}.. of {total} rows",
                    from.saturating_add(rows)
                )));
            }
            let row: usize = shape.get(1..).unwrap_or(&[]).iter().product();
            let row_bytes =
                self.graph.value(id).ty.dtype.bytes_for(row).ok_or_else(|| Error::input("row too large"))?;
            let buf = state.buffers[i].as_mut().expect("state buffers are present between runs");
            self.backend.copy_within(buf, from * row_bytes, to * row_bytes, rows * row_bytes)?;
        }
        Ok(())
    }

    /// The plan for these inputs, states and outputs (cached).
    fn plan_for(&self, inputs: &[HostTensor], state: Option<&State<B>>, wanted: Vec<ValueId>) -> Result<Arc<Plan>> {
        let mut bindings = bind_symbols(&self.graph, inputs)?;
        let states: Vec<Vec<usize>> = match state {
            Some(s) => {
                for (name, &size) in &s.bindings {
                    match bindings.get(name) {
                        Some(&bound) if bound != size => {
                            return Err(Error::input(format!(
                                "dim '{name}' is {bound} in the inputs but {size} in the state"
                            )));
                        }
                        _ => {
                            bindings.insert(name.clone(), size);
                        }
                    }
                }
                s.shapes.clone()
            }
            None => Vec::new(),
        };
        let key = PlanKey { inputs: inputs.iter().map(|t| t.shape.clone()).collect(), states, outputs: wanted };
        if let Some(p) = self.plans.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let shapes: Vec<(DType, Vec<usize>)> = inputs.iter().map(|t| (t.dtype(), t.shape.clone())).collect();
        let p = Arc::new(plan(&self.graph, &shapes, &key.states, &bindings, &key.outputs)?);
        self.plans_made.fetch_add(1, Ordering::Relaxed);
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

    fn wanted_outputs(&self, outputs: Outputs<'_>) -> Result<Vec<ValueId>> {
        match outputs {
            Outputs::All => Ok(self.graph.outputs.clone()),
            Outputs::Named(names) => names
                .iter()
                .map(|name| {
                    self.graph.outputs.iter().copied().find(|&o| self.graph.value(o).name == *name).ok_or_else(|| {
                        let known: Vec<&str> =
                            self.graph.outputs.iter().map(|&o| self.graph.value(o).name.as_str()).collect();
                        Error::input(format!("the graph has no output '{name}' (it has {})", known.join(", ")))
                    })
                })
                .collect(),
        }
    }

    /// Runs the graph: inputs in the order of `graph.inputs`, outputs in the order of
    /// `graph.outputs`. For graphs without states.
    pub async fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        self.run_with(inputs, None, Outputs::All).await
    }

    /// Runs the graph with its state (required when the graph declares states), reading back
    /// only `outputs`.
    pub async fn run_with(
        &self,
        inputs: &[HostTensor],
        mut state: Option<&mut State<B>>,
        outputs: Outputs<'_>,
    ) -> Result<Vec<HostTensor>> {
        match &state {
            None if !self.graph.states.is_empty() => {
                return Err(Error::input(format!(
                    "the graph declares {} states: run it with a State (Session::new_state)",
                    self.graph.states.len()
                )));
            }
            Some(s)
                if s.shapes.len() != self.graph.states.len()
                    || self
                        .graph
                        .states
                        .iter()
                        .zip(&s.shapes)
                        .any(|(&v, shape)| !self.graph.value(v).ty.matches(shape)) =>
            {
                return Err(Error::input(
                    "the state was made for another graph (its states differ in number or shape)",
                ));
            }
            _ => {}
        }
        let wanted = self.wanted_outputs(outputs)?;
        let plan = self.plan_for(inputs, state.as_deref(), wanted)?;
        self.check_state_writes(&plan, inputs)?;
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
        let mut no_state = Vec::new();
        let states = match state.as_mut() {
            Some(s) => &mut s.buffers,
            None => &mut no_state,
        };
        let result = self.record_and_finish(&plan, inputs, &mut slots, states).await;
        self.return_buffers(slots.into_iter().flatten());
        result
    }

    /// In-place writes whose table is a graph input are checked on the host before anything
    /// runs: a table that points past the state is the caller's bug, and GPU kernels cannot
    /// report it (they skip such rows).
    fn check_state_writes(&self, plan: &Plan, inputs: &[HostTensor]) -> Result<()> {
        for step in &plan.steps {
            let node = &self.graph.nodes[step.node];
            let Op::KvWrite(_) = node.op else { continue };
            let table_id = node.inputs[2];
            let Some(pos) = self.graph.inputs.iter().position(|&i| i == table_id) else { continue };
            let rows = plan.shapes[node.inputs[1].index()].1[0];
            let cache_rows = plan.shapes[node.inputs[0].index()].1[0];
            attention::check_kv_table(inputs[pos].as_u32().unwrap_or(&[]), rows, cache_rows).map_err(|e| {
                Error::input(format!(
                    "node '{}' (kv_write), table '{}': {e}",
                    node.name,
                    self.graph.value(table_id).name
                ))
            })?;
        }
        Ok(())
    }

    async fn record_and_finish(
        &self,
        plan: &Plan,
        inputs: &[HostTensor],
        slots: &mut [Option<(usize, B::Buffer)>],
        states: &mut [Option<B::Buffer>],
    ) -> Result<Vec<HostTensor>> {
        let mut rec = self.backend.begin()?;
        for (&id, tensor) in self.graph.inputs.iter().zip(inputs) {
            let Some(Loc::Slot(s)) = plan.loc[id.index()] else { unreachable!("inputs live in slots") };
            let buf = &mut slots[s].as_mut().expect("slot present").1;
            self.backend.write(&mut rec, buf, 0, tensor)?;
        }
        for step in &plan.steps {
            let node = &self.graph.nodes[step.node];
            let in_place = node.op.in_place_input();
            // Outputs are taken out of their homes for the dispatch (no output is an input).
            let mut taken: Vec<(usize, B::Buffer)> = step
                .outputs
                .iter()
                .map(|&l| match l {
                    Loc::Slot(s) => slots[s].take().expect("output slot is not an input slot"),
                    Loc::State(s) => (0, states[s].take().expect("state written once per node")),
                    Loc::Weight(_) => unreachable!("weights are never written"),
                })
                .collect();
            let result = {
                let args: Vec<Arg<'_, B::Buffer>> = node
                    .inputs
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| Some(i) != in_place)
                    .map(|(_, &i)| {
                        let (dtype, shape) = &plan.shapes[i.index()];
                        Arg { buf: buffer(plan, i, &self.weights, slots, states), dtype: *dtype, shape }
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
                let started = step_times().then(std::time::Instant::now);
                let dispatched = self.backend.dispatch(&mut rec, &node.op, &args, &mut outs);
                if let Some(started) = started {
                    let shapes: Vec<_> = node.inputs.iter().map(|i| &plan.shapes[i.index()].1).collect();
                    let micros = started.elapsed().as_secs_f64() * 1e6;
                    eprintln!("step {micros:.1} {} {shapes:?}", node.op.kind().name());
                }
                dispatched
            };
            for (&l, (capacity, b)) in step.outputs.iter().zip(taken) {
                match l {
                    Loc::Slot(s) => slots[s] = Some((capacity, b)),
                    Loc::State(s) => states[s] = Some(b),
                    Loc::Weight(_) => unreachable!(),
                }
            }
            result.map_err(|e| match e {
                Error::Backend { backend, message } => {
                    Error::Backend { backend, message: format!("node '{}': {message}", node.name) }
                }
                other => other,
            })?;
        }
        let reads: Vec<Arg<'_, B::Buffer>> = plan
            .reads
            .iter()
            .map(|&o| {
                let (dtype, shape) = &plan.shapes[o.index()];
                Arg { buf: buffer(plan, o, &self.weights, slots, states), dtype: *dtype, shape }
            })
            .collect();
        self.backend.finish(rec, &reads).await
    }

    /// `run` for callers without an executor.
    pub fn run_blocking(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        pollster::block_on(self.run(inputs))
    }

    /// `run_with` for callers without an executor.
    pub fn run_with_blocking(
        &self,
        inputs: &[HostTensor],
        state: Option<&mut State<B>>,
        outputs: Outputs<'_>,
    ) -> Result<Vec<HostTensor>> {
        pollster::block_on(self.run_with(inputs, state, outputs))
    }

    /// `write_state` for callers without an executor.
    pub fn write_state_blocking(&self, state: &mut State<B>, name: &str, tensor: &HostTensor) -> Result<()> {
        pollster::block_on(self.write_state(state, name, tensor))
    }

    /// `write_state_rows` for callers without an executor.
    pub fn write_state_rows_blocking(
        &self,
        state: &mut State<B>,
        name: &str,
        first: usize,
        tensor: &HostTensor,
    ) -> Result<()> {
        pollster::block_on(self.write_state_rows(state, name, first, tensor))
    }
}

/// The buffer a planned value lives in.
fn buffer<'a, B>(
    plan: &Plan,
    id: ValueId,
    weights: &'a [B],
    slots: &'a [Option<(usize, B)>],
    states: &'a [Option<B>],
) -> &'a B {
    match plan.loc[id.index()].expect("planned") {
        Loc::Weight(w) => &weights[w],
        Loc::Slot(s) => &slots[s].as_ref().expect("slot present").1,
        Loc::State(s) => states[s].as_ref().expect("state present"),
    }
}
