//! Soft logic: t-norm families, the elementwise connectives and EBRM's aggregate. The CPU
//! reference of ops `soft_logic` and `aggregate`; kernels `shaders/softlogic.wgsl` and
//! `cuda/softlogic.cu` mirror the params structs and the formulas below.
//!
//! Every kernel-facing function takes a `#[repr(C)]` params struct plus flat slices, does no
//! allocation that depends on its inputs beyond the output, and treats out-of-range or
//! non-finite inputs the way the GPU kernels do (clamp or skip), never by panicking.
//!
//! # Connectives
//!
//! Truth values live in [0, 1]. Every family uses the standard negation `NOT a = 1 − a`, and
//! its OR is the De Morgan dual of its AND, `OR(a, b) = 1 − AND(1 − a, 1 − b)`:
//!
//! | family      | AND(a, b)          | OR(a, b)         |
//! |-------------|--------------------|------------------|
//! | product     | a·b                | a + b − a·b      |
//! | Goedel      | min(a, b)          | max(a, b)        |
//! | Lukasiewicz | max(0, a + b − 1)  | min(1, a + b)    |
//!
//! # The aggregate
//!
//! Inputs, for `items` items of at most `entities` entities each, and `kinds` entity kinds:
//! `qe` f32 `[items, entities]` (query-entity scores), `mask` u32 `[items, entities]`
//! (non-zero: the entity exists), `kind` u32 `[items, entities]`, `weight` f32 `[kinds]`,
//! `essential` u32 `[kinds]` (non-zero: entities of this kind may veto). Outputs: `score` f32
//! `[items]` and `contribution` f32 `[items, entities]`.
//!
//! For one item, with `clamp01` mapping NaN to 0, over its present entities `e` (mask set and
//! kind < kinds), `q_e = clamp01(qe)`, `w_e = clamp01(weight[kind])`:
//!
//! ```text
//! essential e:  t_e = 1 − w_e·(1 − q_e)        importance-weighted truth
//! optional e:   o_e = w_e·q_e                   weighted support
//! E = AND over essential t_e    (1 when there is none)
//! O = OR  over optional  o_e    (0 when there is none)
//! score = E · ((1 − λ) + λ·O)                   λ = clamp01(params.optional_weight)
//! contribution_e = ½·[(S(all) − S(all without e)) + (S({e}) − S({}))]
//! ```
//!
//! where `S(set)` is the score computed from that subset of the item's entities, so
//! `S({}) = 1 − λ`. The contribution is the mean of the entity's effect when added last
//! (leave-one-out) and when added first (alone): the Shapley value were there two entities.
//! Leave-one-out alone misses redundant causes (two vetoing entities each leave the score at
//! 0 when removed, so both would get 0); the solo term catches them.
//!
//! Why this shape:
//! - Veto: an essential entity with weight 1 and QE 0 gives t_e = 0, so E = 0 and the item
//!   scores 0 in every family (a brand conflict sinks the item). A weight below 1 bounds how
//!   far one essential entity can pull the score down (to 1 − w at worst, before the family's
//!   AND combines it with the others).
//! - Optional entities only add: OR is monotone and O enters with a non-negative factor, so
//!   adding an optional entity, or raising its QE, never lowers the score. They move the score
//!   within [E·(1 − λ), E].
//! - The outer product is plain multiplication in every family, not the family's AND: it is
//!   a gate that keeps E's veto and scales the optional bonus. Lukasiewicz's AND there would
//!   zero every item whose E is below λ, however well its optional entities match.
//! - Contributions say which entity decided: an essential entity that holds the item back is
//!   negative, an optional entity that supports it positive, a perfectly matched essential
//!   entity 0. Under Goedel the weakest essential entity is the only one with a leave-one-out
//!   part, so it has the largest magnitude: the one that decided.

use super::{arity, dtype_is, float, rank_is, same_dim};
use crate::graph::TensorType;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

/// A t-norm family.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Logic {
    Product = 0,
    Goedel = 1,
    Lukasiewicz = 2,
}

impl Logic {
    pub const ALL: &'static [Logic] = &[Logic::Product, Logic::Goedel, Logic::Lukasiewicz];

    pub fn code(self) -> u32 {
        self as u32
    }

    /// The family of a kernel code; unknown codes fall back to product (as a kernel would).
    pub fn from_code(code: u32) -> Logic {
        match code {
            1 => Logic::Goedel,
            2 => Logic::Lukasiewicz,
            _ => Logic::Product,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Logic::Product => "product",
            Logic::Goedel => "goedel",
            Logic::Lukasiewicz => "lukasiewicz",
        }
    }

    /// Accepts the names above plus common spellings ("godel", "gödel", "min", "luk").
    pub fn from_name(name: &str) -> Option<Logic> {
        match name.trim().to_lowercase().as_str() {
            "product" | "prod" => Some(Logic::Product),
            "goedel" | "godel" | "gödel" | "min" | "minmax" => Some(Logic::Goedel),
            "lukasiewicz" | "łukasiewicz" | "luk" => Some(Logic::Lukasiewicz),
            _ => None,
        }
    }

    #[inline]
    pub fn and(self, a: f32, b: f32) -> f32 {
        let (a, b) = (clamp01(a), clamp01(b));
        match self {
            Logic::Product => a * b,
            Logic::Goedel => a.min(b),
            Logic::Lukasiewicz => (a + b - 1.0).max(0.0),
        }
    }

    #[inline]
    pub fn or(self, a: f32, b: f32) -> f32 {
        let (a, b) = (clamp01(a), clamp01(b));
        match self {
            Logic::Product => a + b - a * b,
            Logic::Goedel => a.max(b),
            Logic::Lukasiewicz => (a + b).min(1.0),
        }
    }

    /// Standard negation, the same in every family.
    #[inline]
    pub fn not(self, a: f32) -> f32 {
        1.0 - clamp01(a)
    }
}

impl std::fmt::Display for Logic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// [0, 1] with NaN mapped to 0: a score that cannot be computed supports nothing.
#[inline]
pub fn clamp01(x: f32) -> f32 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// Which connective the elementwise op applies.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connective {
    And = 0,
    Or = 1,
    /// Unary: reads `a` only.
    Not = 2,
}

impl Connective {
    pub const ALL: &'static [Connective] = &[Connective::And, Connective::Or, Connective::Not];

    pub fn code(self) -> u32 {
        self as u32
    }

    /// How many truth-value inputs the connective reads.
    pub fn arity(self) -> usize {
        if self == Connective::Not { 1 } else { 2 }
    }
}

impl SoftLogicParams {
    pub fn new(len: usize, logic: Logic, connective: Connective) -> Self {
        SoftLogicParams { len: len as u32, logic: logic.code(), connective: connective.code(), _pad: 0 }
    }
}

/// Shape rules of `soft_logic`: f32 truth values, AND and OR over two inputs of one shape
/// (no broadcasting: truth values pair up one to one), NOT over one.
pub(crate) fn infer_soft_logic(connective: Connective, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    let n = connective.arity();
    arity(inputs, n, n)?;
    float(&inputs[0], "a")?;
    if let Some(b) = inputs.get(1) {
        float(b, "b")?;
        if b.shape != inputs[0].shape {
            return Err(format!("a and b must have the same shape, are {} and {b}", inputs[0]));
        }
    }
    Ok(vec![inputs[0].clone()])
}

/// Shape rules of `aggregate`: qe f32, mask and kind u32, all `[items, entities]`; weight f32
/// and essential u32, both `[kinds]`. Outputs score f32 `[items]` and contribution f32
/// `[items, entities]`.
pub(crate) fn infer_aggregate(inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    let [qe, mask, kind, weight, essential] = inputs else {
        return Err(format!("takes 5 inputs (qe, mask, kind, weight, essential), got {}", inputs.len()));
    };
    float(qe, "qe")?;
    rank_is(qe, 2, "qe")?;
    for (t, what) in [(mask, "mask"), (kind, "kind")] {
        dtype_is(t, DType::U32, what)?;
        if t.shape != qe.shape {
            return Err(format!("{what} must have the shape of qe ({qe}), is {t}"));
        }
    }
    float(weight, "weight")?;
    rank_is(weight, 1, "weight")?;
    dtype_is(essential, DType::U32, "essential")?;
    rank_is(essential, 1, "essential")?;
    same_dim(&weight.shape[0], &essential.shape[0], "weight and essential must have one entry per kind")?;
    Ok(vec![TensorType::new(DType::F32, vec![qe.shape[0].clone()]), qe.clone()])
}

/// Kernel params of the elementwise soft-logic op, mirrored in `shaders/softlogic.wgsl` and
/// `cuda/params.cuh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SoftLogicParams {
    pub len: u32,
    pub logic: u32,
    pub connective: u32,
    pub _pad: u32,
}

/// `out[i] = a[i] ∘ b[i]` for the connective in `p` (`b` is ignored by NOT). Processes
/// `min(p.len, a.len(), b.len(), out.len())` elements (b's length does not limit NOT).
pub fn soft_logic_cpu(p: &SoftLogicParams, a: &[f32], b: &[f32], out: &mut [f32]) {
    let logic = Logic::from_code(p.logic);
    let n = (p.len as usize).min(a.len()).min(out.len());
    match p.connective {
        1 => out.iter_mut().zip(a).zip(b).take(n).for_each(|((o, &x), &y)| *o = logic.or(x, y)),
        2 => out.iter_mut().zip(a).take(n).for_each(|(o, &x)| *o = logic.not(x)),
        _ => out.iter_mut().zip(a).zip(b).take(n).for_each(|((o, &x), &y)| *o = logic.and(x, y)),
    }
}

/// Kernel params of the aggregate op, mirrored in `shaders/softlogic.wgsl` and
/// `cuda/params.cuh` (32 bytes, 16-aligned as a WGSL uniform requires).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AggregateParams {
    pub items: u32,
    pub entities: u32,
    pub kinds: u32,
    pub logic: u32,
    /// λ: how much of the score the optional entities decide.
    pub optional_weight: f32,
    pub _pad: [u32; 3],
}

impl AggregateParams {
    pub fn new(items: usize, entities: usize, kinds: usize, logic: Logic, optional_weight: f32) -> Self {
        AggregateParams {
            items: items as u32,
            entities: entities as u32,
            kinds: kinds as u32,
            logic: logic.code(),
            optional_weight,
            _pad: [0; 3],
        }
    }
}

/// The aggregate's inputs for one call; slices are row-major `[items, entities]` and `[kinds]`.
#[derive(Debug, Clone, Copy)]
pub struct AggregateInputs<'a> {
    pub qe: &'a [f32],
    pub mask: &'a [u32],
    pub kind: &'a [u32],
    pub weight: &'a [f32],
    pub essential: &'a [u32],
}

/// The aggregate, CPU reference (formula in the module docs). Rows the inputs are too short
/// for count as having no entities; outputs beyond their lengths are not written.
pub fn aggregate_cpu(p: &AggregateParams, x: AggregateInputs<'_>, score: &mut [f32], contribution: &mut [f32]) {
    let logic = Logic::from_code(p.logic);
    let lambda = clamp01(p.optional_weight);
    let entities = p.entities as usize;
    let kinds = (p.kinds as usize).min(x.weight.len()).min(x.essential.len());
    for item in 0..(p.items as usize).min(score.len()) {
        let row = item * entities..(item + 1) * entities;
        let at = |e: usize| -> Option<Term> {
            let i = row.start + e;
            let (&m, &k, &q) = (x.mask.get(i)?, x.kind.get(i)?, x.qe.get(i)?);
            let k = k as usize;
            (m != 0 && k < kinds).then(|| Term::new(q, x.weight[k], x.essential[k] != 0))
        };
        score[item] = item_score(logic, lambda, (0..entities).filter_map(at));
        let empty = item_score(logic, lambda, std::iter::empty());
        for e in 0..entities {
            let Some(out) = contribution.get_mut(row.start + e) else { break };
            *out = match at(e) {
                Some(term) => {
                    let last =
                        score[item] - item_score(logic, lambda, (0..entities).filter(|&o| o != e).filter_map(at));
                    let first = item_score(logic, lambda, std::iter::once(term)) - empty;
                    0.5 * (last + first)
                }
                None => 0.0,
            };
        }
    }
}

/// One present entity's part in the formula.
#[derive(Debug, Clone, Copy)]
enum Term {
    Essential(f32),
    Optional(f32),
}

impl Term {
    fn new(qe: f32, weight: f32, essential: bool) -> Term {
        let (q, w) = (clamp01(qe), clamp01(weight));
        if essential { Term::Essential(1.0 - w * (1.0 - q)) } else { Term::Optional(w * q) }
    }
}

fn item_score(logic: Logic, lambda: f32, terms: impl Iterator<Item = Term>) -> f32 {
    let (mut ess, mut opt) = (1.0f32, 0.0f32);
    for t in terms {
        match t {
            Term::Essential(t) => ess = logic.and(ess, t),
            Term::Optional(o) => opt = logic.or(opt, o),
        }
    }
    ess * ((1.0 - lambda) + lambda * opt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: [f32; 6] = [0.0, 0.1, 0.35, 0.5, 0.9, 1.0];

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn connectives_are_t_norms_with_dual_conorms() {
        for &l in Logic::ALL {
            for a in GRID {
                assert!(close(l.and(a, 1.0), a), "{l}: 1 is AND's identity");
                assert!(close(l.and(a, 0.0), 0.0), "{l}: 0 absorbs AND");
                assert!(close(l.or(a, 0.0), a), "{l}: 0 is OR's identity");
                assert!(close(l.not(l.not(a)), a));
                for b in GRID {
                    assert!(close(l.and(a, b), l.and(b, a)), "{l}: AND commutes");
                    assert!(close(l.or(a, b), 1.0 - l.and(1.0 - a, 1.0 - b)), "{l}: De Morgan");
                    assert!(l.and(a, b) <= a.min(b) + 1e-6, "{l}: AND is below min");
                    for c in GRID {
                        assert!(close(l.and(l.and(a, b), c), l.and(a, l.and(b, c))), "{l}: AND associates");
                        if b <= c {
                            assert!(l.and(a, b) <= l.and(a, c) + 1e-6, "{l}: AND is monotone");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn families_agree_on_crisp_values_and_differ_between() {
        for &l in Logic::ALL {
            for a in [0.0, 1.0] {
                for b in [0.0, 1.0] {
                    assert_eq!(l.and(a, b), f32::from(a == 1.0 && b == 1.0));
                    assert_eq!(l.or(a, b), f32::from(a == 1.0 || b == 1.0));
                }
            }
        }
        assert!(close(Logic::Product.and(0.6, 0.7), 0.42));
        assert!(close(Logic::Goedel.and(0.6, 0.7), 0.6));
        assert!(close(Logic::Lukasiewicz.and(0.6, 0.7), 0.3));
        assert!(close(Logic::Lukasiewicz.or(0.6, 0.7), 1.0));
    }

    #[test]
    fn connectives_clamp_and_map_nan_to_false() {
        for &l in Logic::ALL {
            assert_eq!(l.and(f32::NAN, 1.0), 0.0);
            assert_eq!(l.or(f32::NAN, 0.0), 0.0);
            assert_eq!(l.and(7.0, 1.0), 1.0);
            assert_eq!(l.or(-3.0, 0.0), 0.0);
        }
    }

    #[test]
    fn elementwise_op_follows_the_connective() {
        let a = [0.2, 0.9, 1.0];
        let b = [0.5, 0.5, 0.0];
        let mut out = [0.0; 3];
        let p = |connective: Connective| SoftLogicParams {
            len: 3,
            logic: Logic::Goedel.code(),
            connective: connective as u32,
            _pad: 0,
        };
        soft_logic_cpu(&p(Connective::And), &a, &b, &mut out);
        assert_eq!(out, [0.2, 0.5, 0.0]);
        soft_logic_cpu(&p(Connective::Or), &a, &b, &mut out);
        assert_eq!(out, [0.5, 0.9, 1.0]);
        soft_logic_cpu(&p(Connective::Not), &a, &[], &mut out);
        assert!(out.iter().zip([0.8, 0.1, 0.0]).all(|(&o, e)| close(o, e)));
        // A length beyond the slices reads nothing out of bounds.
        soft_logic_cpu(&SoftLogicParams { len: 99, ..p(Connective::And) }, &a, &b[..1], &mut out);
    }

    /// Kind 0: essential weight 1; kind 1: essential weight 0.5; kind 2: optional weight 1.
    const WEIGHT: [f32; 3] = [1.0, 0.5, 1.0];
    const ESSENTIAL: [u32; 3] = [1, 1, 0];

    fn aggregate(logic: Logic, lambda: f32, rows: &[&[(f32, u32)]]) -> (Vec<f32>, Vec<f32>) {
        let entities = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut qe = vec![0.0; rows.len() * entities];
        let mut mask = vec![0; rows.len() * entities];
        let mut kind = vec![0; rows.len() * entities];
        for (i, row) in rows.iter().enumerate() {
            for (e, &(q, k)) in row.iter().enumerate() {
                (qe[i * entities + e], mask[i * entities + e], kind[i * entities + e]) = (q, 1, k);
            }
        }
        let p = AggregateParams::new(rows.len(), entities, WEIGHT.len(), logic, lambda);
        let mut score = vec![-1.0; rows.len()];
        let mut contribution = vec![-1.0; rows.len() * entities];
        let inputs = AggregateInputs { qe: &qe, mask: &mask, kind: &kind, weight: &WEIGHT, essential: &ESSENTIAL };
        aggregate_cpu(&p, inputs, &mut score, &mut contribution);
        (score, contribution)
    }

    #[test]
    fn a_full_weight_essential_conflict_vetoes_in_every_family() {
        for &l in Logic::ALL {
            let (s, c) = aggregate(l, 0.3, &[&[(0.0, 0), (1.0, 1), (1.0, 2)]]);
            assert_eq!(s[0], 0.0, "{l}");
            assert!(c[0] < 0.0, "{l}: the vetoing entity decided: {c:?}");
        }
    }

    #[test]
    fn a_half_weight_essential_entity_can_at_most_halve() {
        let (s, _) = aggregate(Logic::Goedel, 0.0, &[&[(0.0, 1)]]);
        assert!(close(s[0], 0.5));
    }

    #[test]
    fn formula_values_per_family() {
        // Essentials t = 0.8 (kind 0, q 0.8) and t = 1 − 0.5·(1 − 0.4) = 0.7 (kind 1, q 0.4);
        // optional o = 0.5; λ = 0.2.
        let row: &[(f32, u32)] = &[(0.8, 0), (0.4, 1), (0.5, 2)];
        let gate = 0.8 + 0.2 * 0.5;
        for (l, e) in [(Logic::Product, 0.56), (Logic::Goedel, 0.7), (Logic::Lukasiewicz, 0.5)] {
            let (s, c) = aggregate(l, 0.2, &[row]);
            assert!(close(s[0], e * gate), "{l}: {} vs {}", s[0], e * gate);
            // The optional entity: removing it drops O to 0; alone it scores 0.8 + 0.2·0.5.
            let last = e * gate - e * 0.8;
            let first = 0.2 * 0.5;
            assert!(close(c[2], 0.5 * (last + first)), "{l}");
        }
        // Under Goedel the weakest essential entity has the largest effect.
        let (_, c) = aggregate(Logic::Goedel, 0.2, &[row]);
        assert!(c[1] < c[0] && c[0] < 0.0, "{c:?}");
        // Alone: t − 1 times the empty gate 0.8; last: 0 for the non-minimum.
        assert!(close(c[0], 0.5 * (0.8 - 1.0) * 0.8));
    }

    #[test]
    fn two_vetoes_both_decide() {
        for &l in Logic::ALL {
            let (s, c) = aggregate(l, 0.2, &[&[(0.0, 0), (0.0, 0), (1.0, 0)]]);
            assert_eq!(s[0], 0.0);
            assert!(c[0] < -0.3 && c[1] < -0.3 && close(c[0], c[1]), "{l}: {c:?}");
            assert_eq!(c[2], 0.0, "{l}: a perfect match changes nothing");
        }
    }

    #[test]
    fn optional_entities_only_add() {
        for &l in Logic::ALL {
            let base: &[(f32, u32)] = &[(0.9, 0), (0.3, 2)];
            let (s0, c0) = aggregate(l, 0.4, &[base]);
            assert!(c0[1] >= 0.0, "{l}");
            for q in GRID {
                let (s1, _) = aggregate(l, 0.4, &[&[(0.9, 0), (0.3, 2), (q, 2)]]);
                assert!(s1[0] >= s0[0] - 1e-6, "{l}: adding an optional entity with QE {q} lowered the score");
            }
        }
    }

    #[test]
    fn empty_rows_masked_and_unknown_kinds() {
        for &l in Logic::ALL {
            let (s, _) = aggregate(l, 0.25, &[&[], &[(0.7, 2)]]);
            assert!(close(s[0], 0.75), "no entities: E = 1, O = 0");
            assert!(close(s[1], 0.75 + 0.25 * 0.7));
        }
        // Kind 9 is out of range and mask 0 hides the second entity: both are ignored.
        let p = AggregateParams::new(1, 2, 3, Logic::Product, 0.0);
        let (mut score, mut contribution) = ([0.0], [7.0; 2]);
        let inputs =
            AggregateInputs { qe: &[0.0, 0.0], mask: &[1, 0], kind: &[9, 0], weight: &WEIGHT, essential: &ESSENTIAL };
        aggregate_cpu(&p, inputs, &mut score, &mut contribution);
        assert_eq!((score[0], contribution), (1.0, [0.0, 0.0]));
    }

    #[test]
    fn short_or_bad_inputs_do_not_panic() {
        let p = AggregateParams::new(4, 3, 3, Logic::Lukasiewicz, f32::NAN);
        let (mut score, mut contribution) = ([9.0; 4], [9.0; 5]);
        let inputs = AggregateInputs {
            qe: &[f32::NAN, f32::INFINITY, -1.0, 0.5],
            mask: &[1, 1, 1, 1, 1],
            kind: &[0, 1, 2],
            weight: &[f32::NAN, 2.0],
            essential: &ESSENTIAL,
        };
        aggregate_cpu(&p, inputs, &mut score, &mut contribution);
        assert!(score.iter().all(|s| (0.0..=1.0).contains(s)), "{score:?}");
    }

    #[test]
    fn shape_rules_name_the_operand_at_fault() {
        let f = |s: &[usize]| TensorType::fixed(DType::F32, s);
        let u = |s: &[usize]| TensorType::fixed(DType::U32, s);
        assert_eq!(infer_soft_logic(Connective::Or, &[f(&[2, 3]), f(&[2, 3])]).unwrap(), vec![f(&[2, 3])]);
        assert!(infer_soft_logic(Connective::And, &[f(&[2, 3]), f(&[3])]).unwrap_err().contains("same shape"));
        assert!(infer_soft_logic(Connective::Not, &[f(&[2]), f(&[2])]).unwrap_err().contains("takes 1"));
        assert!(infer_soft_logic(Connective::And, &[u(&[2]), f(&[2])]).unwrap_err().contains("a must be f32"));
        let ok = [f(&[4, 3]), u(&[4, 3]), u(&[4, 3]), f(&[5]), u(&[5])];
        assert_eq!(infer_aggregate(&ok).unwrap(), vec![f(&[4]), f(&[4, 3])]);
        let mut bad = ok.clone();
        bad[2] = u(&[4, 2]);
        assert!(infer_aggregate(&bad).unwrap_err().contains("kind must have the shape of qe"));
        bad = ok.clone();
        bad[1] = f(&[4, 3]);
        assert!(infer_aggregate(&bad).unwrap_err().contains("mask must be u32"));
        bad = ok.clone();
        bad[4] = u(&[6]);
        assert!(infer_aggregate(&bad).unwrap_err().contains("one entry per kind"));
    }

    #[test]
    fn params_are_pod_and_sixteen_byte_sized() {
        assert_eq!(std::mem::size_of::<AggregateParams>(), 32);
        assert_eq!(std::mem::size_of::<SoftLogicParams>(), 16);
        let p = AggregateParams::new(2, 3, 4, Logic::Goedel, 0.5);
        let bytes = bytemuck::bytes_of(&p);
        assert_eq!(bytemuck::pod_read_unaligned::<AggregateParams>(bytes), p);
        for &l in Logic::ALL {
            assert_eq!(Logic::from_code(l.code()), l);
            assert_eq!(Logic::from_name(l.name()), Some(l));
        }
        assert_eq!(Logic::from_name("Gödel"), Some(Logic::Goedel));
        assert_eq!(Logic::from_name("fuzzy"), None);
    }
}
