//! Soft logic: t-norm families and the EBRM aggregate. They live in the runtime as the op
//! family `soft_logic` / `aggregate` (`tandem_runtime::ops::softlogic`, where the formula is
//! documented and tested), so that the same aggregate runs on the CPU, through wgpu and on
//! CUDA. This module re-exports what EBRM's callers use and runs the aggregate as a graph on
//! a device ([`Aggregator`]).

use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tandem_models::{AnySession, Device};
use tandem_runtime::backend::cpu::CpuOptions;
use tandem_runtime::ops::Op;
use tandem_runtime::{DType, Dim, Graph, HostTensor, TensorType};

pub use tandem_runtime::ops::softlogic::{
    AggregateInputs, AggregateParams, Connective, Logic, SoftLogicParams, aggregate_cpu, clamp01, soft_logic_cpu,
};

/// The aggregate's inputs, owned ([`AggregateInputs`] borrows them).
#[derive(Debug, Clone, Default)]
pub struct AggregateCells {
    pub qe: Vec<f32>,
    pub mask: Vec<u32>,
    pub kind: Vec<u32>,
    pub weight: Vec<f32>,
    pub essential: Vec<u32>,
}

impl AggregateCells {
    pub fn inputs(&self) -> AggregateInputs<'_> {
        AggregateInputs {
            qe: &self.qe,
            mask: &self.mask,
            kind: &self.kind,
            weight: &self.weight,
            essential: &self.essential,
        }
    }
}

/// The aggregate's outputs: one score per item, one contribution per (item, entity) cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregated {
    pub score: Vec<f32>,
    pub contribution: Vec<f32>,
}

/// EBRM's aggregate as a one-node graph of the runtime's `aggregate` op, run on a device: the
/// one its encoder runs on (a server GPU for long item lists, WebGPU in the page), else the
/// CPU. Its shapes are symbolic, so one graph serves every request.
pub struct Aggregator {
    device: Device,
    /// One session per family and λ: they are attributes of the op, so of the graph. Few
    /// ever exist (three families, one λ per configuration).
    sessions: Mutex<HashMap<(Logic, u32), Arc<AnySession>>>,
}

/// Sessions kept at most; beyond it they are dropped (remaking one costs a graph and a plan).
const MAX_SESSIONS: usize = 32;

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aggregator({})", self.backend_name())
    }
}

impl Aggregator {
    /// The aggregate on `device`.
    pub fn on(device: &Device) -> Aggregator {
        Aggregator { device: device.clone(), sessions: Mutex::default() }
    }

    /// The aggregate on the CPU backend, one for the process: engines without a device of
    /// their own share its sessions.
    pub fn cpu() -> Arc<Aggregator> {
        static CPU: OnceLock<Arc<Aggregator>> = OnceLock::new();
        CPU.get_or_init(|| Arc::new(Aggregator::on(&Device::cpu_with(CpuOptions::default())))).clone()
    }

    /// "cpu", "wgpu" or "cuda".
    pub fn backend_name(&self) -> &'static str {
        self.device.backend_name()
    }

    /// Scores `items` items of `entities` entity cells each (`x` row-major, formula in
    /// `tandem_runtime::ops::softlogic`) on the device. Natively only where the device is a
    /// GPU: in a browser its answer has to be awaited ([`Aggregator::run_async`]).
    pub fn run(
        &self,
        logic: Logic,
        optional_weight: f32,
        items: usize,
        entities: usize,
        x: AggregateInputs<'_>,
    ) -> Result<Aggregated> {
        let Some(inputs) = self.inputs(items, entities, &x)? else {
            return Ok(Aggregated { score: Vec::new(), contribution: Vec::new() });
        };
        let outputs = self.session(logic, optional_weight)?.run_blocking(&inputs);
        self.outputs(outputs, items, entities)
    }

    /// [`Aggregator::run`], awaiting the device: what a page's WebGPU needs.
    pub async fn run_async(
        &self,
        logic: Logic,
        optional_weight: f32,
        items: usize,
        entities: usize,
        x: AggregateInputs<'_>,
    ) -> Result<Aggregated> {
        let Some(inputs) = self.inputs(items, entities, &x)? else {
            return Ok(Aggregated { score: Vec::new(), contribution: Vec::new() });
        };
        let outputs = self.session(logic, optional_weight)?.run(&inputs).await;
        self.outputs(outputs, items, entities)
    }

    /// The graph's inputs, checked against the sizes; None when there are no items.
    fn inputs(&self, items: usize, entities: usize, x: &AggregateInputs<'_>) -> Result<Option<[HostTensor; 5]>> {
        let cells = items.checked_mul(entities).ok_or_else(|| anyhow!("{items} × {entities} cells overflow"))?;
        for (what, len) in [("qe", x.qe.len()), ("mask", x.mask.len()), ("kind", x.kind.len())] {
            if len != cells {
                bail!("aggregate: {what} has {len} values for {items} items × {entities} entities");
            }
        }
        if x.weight.len() != x.essential.len() {
            bail!(
                "aggregate: {} weights for {} essential flags (one each per kind)",
                x.weight.len(),
                x.essential.len()
            );
        }
        if items == 0 {
            return Ok(None);
        }
        Ok(Some([
            HostTensor::f32(vec![items, entities], x.qe.to_vec())?,
            HostTensor::u32(vec![items, entities], x.mask.to_vec())?,
            HostTensor::u32(vec![items, entities], x.kind.to_vec())?,
            HostTensor::f32(vec![x.weight.len()], x.weight.to_vec())?,
            HostTensor::u32(vec![x.essential.len()], x.essential.to_vec())?,
        ]))
    }

    /// Score and contribution from the graph's outputs, checked against the sizes.
    fn outputs(&self, outputs: Result<Vec<HostTensor>>, items: usize, entities: usize) -> Result<Aggregated> {
        let outputs = outputs.with_context(|| format!("the aggregate failed on {}", self.backend_name()))?;
        let [score, contribution] = outputs.as_slice() else {
            bail!("the aggregate graph gave {} outputs, expected score and contribution", outputs.len());
        };
        if score.shape != [items] || contribution.shape != [items, entities] {
            bail!("the aggregate gave shapes {:?} and {:?} for {items} × {entities}", score.shape, contribution.shape);
        }
        Ok(Aggregated { score: score.to_f32(), contribution: contribution.to_f32() })
    }

    fn session(&self, logic: Logic, optional_weight: f32) -> Result<Arc<AnySession>> {
        let key = (logic, optional_weight.to_bits());
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get(&key) {
            return Ok(s.clone());
        }
        let session =
            Arc::new(AnySession::on_tensors(&self.device, aggregate_graph(logic, optional_weight)?, Vec::new())?);
        if sessions.len() >= MAX_SESSIONS {
            sessions.clear();
        }
        sessions.insert(key, session.clone());
        Ok(session)
    }
}

/// qe, mask, kind `[items, entities]`, weight and essential `[kinds]` → score `[items]`,
/// contribution `[items, entities]`.
fn aggregate_graph(logic: Logic, optional_weight: f32) -> Result<Graph> {
    let mut g = Graph::new("ebrm_aggregate");
    let cells = || vec![Dim::sym("items"), Dim::sym("entities")];
    let qe = g.input("qe", TensorType::new(DType::F32, cells()));
    let mask = g.input("mask", TensorType::new(DType::U32, cells()));
    let kind = g.input("kind", TensorType::new(DType::U32, cells()));
    let weight = g.input("weight", TensorType::new(DType::F32, vec![Dim::sym("kinds")]));
    let essential = g.input("essential", TensorType::new(DType::U32, vec![Dim::sym("kinds")]));
    let out = g.node("aggregate", Op::Aggregate { logic, optional_weight }, &[qe, mask, kind, weight, essential])?;
    g.output(out[0], "score");
    g.output(out[1], "contribution");
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl AggregateCells {
        /// Deterministic awkward inputs: QE and weights outside [0, 1] and NaN, absent
        /// cells, kinds out of range.
        fn awkward(items: usize, entities: usize, kinds: usize) -> AggregateCells {
            let cells = items * entities;
            // Mostly high QE, so that Lukasiewicz over a dozen entities does not zero every row.
            let qe = (0..cells)
                .map(|i| match i % 23 {
                    5 => f32::NAN,
                    9 => -0.05,
                    _ => 0.55 + (i * 37 % 113) as f32 / 200.0,
                })
                .collect();
            AggregateCells {
                qe,
                mask: (0..cells).map(|i| u32::from(i % 7 != 3)).collect(),
                kind: (0..cells).map(|i| (i * 5 % (kinds + 1)) as u32).collect(),
                weight: (0..kinds).map(|k| 0.2 + 0.35 * k as f32).collect(),
                essential: (0..kinds).map(|k| u32::from(k % 3 != 1)).collect(),
            }
        }
    }

    /// The graph on `device` gives what the CPU function gives, for every family.
    fn check_against_reference(device: &Device) {
        let aggregator = Aggregator::on(device);
        for &(items, entities, kinds) in &[(1, 1, 1), (7, 5, 4), (129, 13, 6), (3, 0, 2)] {
            let cells = AggregateCells::awkward(items, entities, kinds);
            let x = cells.inputs();
            for &logic in Logic::ALL {
                let got = aggregator.run(logic, 0.3, items, entities, x).unwrap();
                let p = AggregateParams::new(items, entities, kinds, logic, 0.3);
                let (mut score, mut contribution) = (vec![0.0; items], vec![0.0; items * entities]);
                aggregate_cpu(&p, x, &mut score, &mut contribution);
                let close =
                    |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
                let on = aggregator.backend_name();
                assert!(
                    close(&got.score, &score),
                    "{on} {logic} {items}x{entities}: scores {:?} vs {score:?}",
                    got.score
                );
                assert!(close(&got.contribution, &contribution), "{on} {logic} {items}x{entities}: contributions");
                assert!(
                    score.iter().any(|&s| s > 0.0) || entities == 0,
                    "inputs that score something: {logic} {items}x{entities} {score:?}"
                );
            }
        }
    }

    #[test]
    fn the_cpu_graph_equals_the_cpu_function() {
        check_against_reference(&Device::cpu_with(CpuOptions::default()));
    }

    #[test]
    fn the_wgpu_graph_equals_the_cpu_function() {
        match Device::open_blocking(tandem_models::BackendChoice::Wgpu) {
            Ok(device) => check_against_reference(&device),
            Err(e) => eprintln!("skipped: no wgpu adapter ({e:#})"),
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let a = Aggregator::cpu();
        let x = AggregateInputs { qe: &[0.5; 3], mask: &[1; 4], kind: &[0; 4], weight: &[1.0], essential: &[1] };
        let e = a.run(Logic::Product, 0.3, 2, 2, x).unwrap_err().to_string();
        assert!(e.contains("qe has 3 values for 2 items × 2 entities"), "{e}");
        let x = AggregateInputs { qe: &[0.5; 4], mask: &[1; 4], kind: &[0; 4], weight: &[1.0, 0.5], essential: &[1] };
        assert!(a.run(Logic::Product, 0.3, 2, 2, x).unwrap_err().to_string().contains("2 weights for 1"));
        let none = AggregateInputs { qe: &[], mask: &[], kind: &[], weight: &[1.0], essential: &[1] };
        assert!(a.run(Logic::Product, 0.3, 0, 4, none).unwrap().score.is_empty());
    }
}
