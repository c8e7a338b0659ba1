//! The CPU backend is the reference for every other backend, so its fast paths (gemm,
//! threads, strided views) are checked here against plain loops written from the op's
//! definition. The reference is `CpuBackend::exact()` (f32 products also with quantized
//! weights); the 8-bit-activation path of `CpuBackend::new()` has its own checks in
//! runtime/tests/qdot.rs.

use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::ops::elementwise::gelu;
use tandem_runtime::ops::{Activation, Connective, Logic, Op, OpKind};
use tandem_runtime::{HostTensor, TensorData};
use tandem_tests::{Case, Tolerance, cases, compare, run_case, seed};

#[test]
fn every_op_has_conformance_cases() {
    let cases = cases(1);
    for kind in OpKind::ALL {
        assert!(cases.iter().any(|c| c.op.kind() == *kind), "no conformance case for op '{}'", kind.name());
    }
}

fn naive_matmul(case: &tandem_tests::Case, trans_b: bool, act: Activation) -> Vec<f32> {
    let (a, b) = (&case.inputs[0], &case.inputs[1]);
    let (av, bv) = (a.to_f32(), b.to_f32());
    let bias = case.inputs.get(2).map(|t| t.to_f32());
    let r = a.shape.len();
    let (m, k) = (a.shape[r - 2], a.shape[r - 1]);
    let n = if trans_b { b.shape[b.shape.len() - 2] } else { b.shape[b.shape.len() - 1] };
    let batch: usize = a.shape[..r - 2].iter().product();
    let b_stride = if b.shape.len() > 2 { k * n } else { 0 };
    let mut out = vec![0.0; batch * m * n];
    for t in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    let bval = if trans_b { bv[t * b_stride + j * k + p] } else { bv[t * b_stride + p * n + j] };
                    acc += av[t * m * k + i * k + p] as f64 * bval as f64;
                }
                let x = acc as f32 + bias.as_ref().map_or(0.0, |b| b[j]);
                out[t * m * n + i * n + j] = activate(act, x);
            }
        }
    }
    out
}

/// Attention as the op's doc states it, in f64 loops: a `[seqs, 2]` table pairs a sequence's
/// rows with themselves, a `[seqs, 4]` one (q_start, q_len, kv_start, kv_len) puts the queries
/// at the last q_len of the kv rows (clamped to the tensor).
fn naive_attention(case: &tandem_tests::Case, heads: usize, kv_heads: usize, scale: f32, causal: bool) -> Vec<f32> {
    let (q, k, v) = (case.inputs[0].to_f32(), case.inputs[1].to_f32(), case.inputs[2].to_f32());
    let table = case.inputs[3].as_u32().unwrap();
    let cols = case.inputs[3].shape[1];
    let (tokens, qw) = (case.inputs[0].shape[0], case.inputs[0].shape[1]);
    let kv_tokens = case.inputs[1].shape[0];
    let d = qw / heads;
    let kw = kv_heads * d;
    let mut out = vec![0.0f32; tokens * qw];
    for row in table.chunks(cols) {
        let (start, len) = (row[0] as usize, row[1] as usize);
        let (kv_start, kv_len) = if cols == 4 { (row[2] as usize, row[3] as usize) } else { (start, len) };
        let past = kv_len.saturating_sub(len);
        let kv_avail = kv_len.min(kv_tokens.saturating_sub(kv_start));
        for h in 0..heads {
            let kh = h / (heads / kv_heads);
            for i in 0..len {
                let visible = if causal { (past + i + 1).min(kv_avail) } else { kv_avail };
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        (0..d)
                            .map(|c| {
                                q[(start + i) * qw + h * d + c] as f64 * k[(kv_start + j) * kw + kh * d + c] as f64
                            })
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for c in 0..d {
                    let acc: f64 =
                        (0..visible).map(|j| exps[j] / sum * v[(kv_start + j) * kw + kh * d + c] as f64).sum();
                    out[(start + i) * qw + h * d + c] = acc as f32;
                }
            }
        }
    }
    out
}

/// kv_write as its doc states it: new row q_start + i lands at cache row
/// kv_start + (kv_len − q_len) + i.
fn naive_kv_write(case: &tandem_tests::Case) -> Vec<f32> {
    let mut cache = case.inputs[0].to_f32();
    let new = case.inputs[1].to_f32();
    let width = case.inputs[0].shape[1];
    let f16_cache = case.inputs[0].dtype() == tandem_runtime::tensor::DType::F16;
    for row in case.inputs[2].as_u32().unwrap().chunks(4) {
        let [q_start, q_len, kv_start, kv_len] = [row[0], row[1], row[2], row[3]].map(|x| x as usize);
        for i in 0..q_len {
            let dst = kv_start + kv_len - q_len + i;
            for (c, &x) in cache[dst * width..][..width].iter_mut().zip(&new[(q_start + i) * width..][..width]) {
                // An f16 cache holds each value rounded to nearest.
                *c = if f16_cache { half::f16::from_f32(x).to_f32() } else { x };
            }
        }
    }
    cache
}

#[test]
fn cpu_matmul_and_attention_match_plain_loops() {
    let seed = seed();
    println!("seed {seed}");
    let mut checked = 0;
    for case in cases(seed) {
        let want = match &case.op {
            Op::MatMul(m) => naive_matmul(&case, m.trans_b, m.activation),
            Op::Attention(a) => {
                naive_attention(&case, a.num_heads as usize, a.num_kv_heads as usize, a.scale, a.causal)
            }
            Op::KvWrite(_) => naive_kv_write(&case),
            _ => continue,
        };
        let got = run_case(CpuBackend::exact(), &case).unwrap().remove(0);
        // (An f16 cache is compared as the f32 values it holds.)
        let got = tandem_runtime::HostTensor::f32(got.shape.clone(), got.to_f32()).unwrap();
        let want = tandem_runtime::HostTensor::f32(got.shape.clone(), want).unwrap();
        compare(&got, &want, Tolerance::new(1e-4, 1e-4)).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        checked += 1;
    }
    assert!(checked > 40, "only {checked} cases checked");
}

fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::None => x,
        Activation::Gelu => gelu(x),
        Activation::Relu => x.max(0.0),
        Activation::Silu => (x as f64 / (1.0 + (-x as f64).exp())) as f32,
    }
}

/// PEFT's LoRA linear layer in f64: x · Wᵀ + bias + scale · (x · Aᵀ) · Bᵀ, then act.
fn naive_lora(case: &Case, scale: f32, act: Activation) -> Vec<f32> {
    let [x, w, a, b] = [0, 1, 2, 3].map(|i| case.inputs[i].to_f32());
    let bias = case.inputs.get(4).map(|t| t.to_f32());
    let (n, k, r) = (case.inputs[1].shape[0], case.inputs[1].shape[1], case.inputs[2].shape[0]);
    let rows = x.len() / k.max(1);
    let mut out = vec![0.0; rows * n];
    for i in 0..rows {
        let t: Vec<f64> = (0..r).map(|j| (0..k).map(|p| x[i * k + p] as f64 * a[j * k + p] as f64).sum()).collect();
        for c in 0..n {
            let main: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[c * k + p] as f64).sum();
            let low_rank: f64 = (0..r).map(|j| t[j] * b[c * r + j] as f64).sum();
            let y = main + bias.as_ref().map_or(0.0, |b| b[c] as f64) + scale as f64 * low_rank;
            out[i * n + c] = activate(act, y as f32);
        }
    }
    out
}

fn clamp01(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// The t-norm families' AND and OR, in f64, from their textbook definitions.
fn t_and(logic: Logic, a: f64, b: f64) -> f64 {
    let (a, b) = (clamp01(a), clamp01(b));
    match logic {
        Logic::Product => a * b,
        Logic::Goedel => a.min(b),
        Logic::Lukasiewicz => (a + b - 1.0).max(0.0),
    }
}

fn t_or(logic: Logic, a: f64, b: f64) -> f64 {
    1.0 - t_and(logic, 1.0 - clamp01(a), 1.0 - clamp01(b))
}

fn naive_soft_logic(case: &Case, connective: Connective, logic: Logic) -> Vec<f32> {
    let a = case.inputs[0].to_f32();
    let b = case.inputs.get(1).map(|t| t.to_f32());
    (0..a.len())
        .map(|i| {
            let x = a[i] as f64;
            let y = b.as_ref().map_or(0.0, |b| b[i] as f64);
            (match connective {
                Connective::And => t_and(logic, x, y),
                Connective::Or => t_or(logic, x, y),
                Connective::Not => 1.0 - clamp01(x),
            }) as f32
        })
        .collect()
}

fn words(t: &HostTensor) -> Vec<u32> {
    match &t.data {
        TensorData::U32(v) => v.clone(),
        _ => panic!("expected u32"),
    }
}

/// The aggregate in f64, straight from its definition: the entities as a list of terms,
/// S(set) over explicit subsets of it.
fn naive_aggregate(case: &Case, logic: Logic, optional_weight: f32) -> (Vec<f32>, Vec<f32>) {
    let (qe, weight) = (case.inputs[0].to_f32(), case.inputs[3].to_f32());
    let (mask, kind, essential) = (words(&case.inputs[1]), words(&case.inputs[2]), words(&case.inputs[4]));
    let (items, entities) = (case.inputs[0].shape[0], case.inputs[0].shape[1]);
    let lambda = clamp01(optional_weight as f64);
    // (entity, essential, term value) of one item's present entities.
    let score = |terms: &[(usize, bool, f64)]| {
        let e = terms.iter().filter(|t| t.1).fold(1.0, |acc, t| t_and(logic, acc, t.2));
        let o = terms.iter().filter(|t| !t.1).fold(0.0, |acc, t| t_or(logic, acc, t.2));
        e * ((1.0 - lambda) + lambda * o)
    };
    let (mut scores, mut contributions) = (Vec::new(), vec![0.0f32; items * entities]);
    for item in 0..items {
        let terms: Vec<(usize, bool, f64)> = (0..entities)
            .filter_map(|e| {
                let i = item * entities + e;
                let k = kind[i] as usize;
                if mask[i] == 0 || k >= weight.len() {
                    return None;
                }
                let (q, w) = (clamp01(qe[i] as f64), clamp01(weight[k] as f64));
                let ess = essential[k] != 0;
                Some((e, ess, if ess { 1.0 - w * (1.0 - q) } else { w * q }))
            })
            .collect();
        let all = score(&terms);
        scores.push(all as f32);
        for (at, term) in terms.iter().enumerate() {
            let without: Vec<_> = terms.iter().enumerate().filter(|&(o, _)| o != at).map(|(_, t)| *t).collect();
            let last = all - score(&without);
            let first = score(&[*term]) - score(&[]);
            contributions[item * entities + term.0] = (0.5 * (last + first)) as f32;
        }
    }
    (scores, contributions)
}

#[test]
fn cpu_lora_and_soft_logic_match_plain_loops() {
    let seed = seed();
    println!("seed {seed}");
    let mut checked = 0;
    for case in cases(seed) {
        let (want, tol) = match &case.op {
            Op::LoraMatMul(l) => (vec![naive_lora(&case, l.scale, l.activation)], Tolerance::new(1e-4, 1e-4)),
            Op::SoftLogic { connective, logic } => {
                (vec![naive_soft_logic(&case, *connective, *logic)], Tolerance::new(1e-6, 1e-6))
            }
            Op::Aggregate { logic, optional_weight } => {
                let (s, c) = naive_aggregate(&case, *logic, *optional_weight);
                (vec![s, c], Tolerance::new(1e-5, 1e-5))
            }
            _ => continue,
        };
        let got = run_case(CpuBackend::exact(), &case).unwrap();
        assert_eq!(got.len(), want.len(), "{}", case.name);
        for (g, w) in got.iter().zip(want) {
            let w = HostTensor::f32(g.shape.clone(), w).unwrap();
            compare(g, &w, tol).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        }
        checked += 1;
    }
    assert!(checked >= 45, "only {checked} cases checked");
}

/// Kinds of the hand-computed cases: 0 essential with weight 1 (a brand), 1 optional with
/// weight 1 (a color), 2 essential with weight 0.5.
fn aggregate_case(logic: Logic, lambda: f32, rows: &[&[(f32, u32, bool)]]) -> (Vec<f32>, Vec<f32>) {
    let entities = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let (mut qe, mut mask, mut kind) =
        (vec![0.0; rows.len() * entities], vec![0; rows.len() * entities], vec![0; rows.len() * entities]);
    for (i, row) in rows.iter().enumerate() {
        for (e, &(q, k, present)) in row.iter().enumerate() {
            (qe[i * entities + e], kind[i * entities + e], mask[i * entities + e]) = (q, k, u32::from(present));
        }
    }
    let shape = vec![rows.len(), entities];
    let case = Case {
        name: "aggregate_by_hand".into(),
        op: Op::Aggregate { logic, optional_weight: lambda },
        inputs: vec![
            HostTensor::f32(shape.clone(), qe).unwrap(),
            HostTensor::u32(shape.clone(), mask).unwrap(),
            HostTensor::u32(shape, kind).unwrap(),
            HostTensor::f32(vec![3], vec![1.0, 1.0, 0.5]).unwrap(),
            HostTensor::u32(vec![3], vec![1, 0, 1]).unwrap(),
        ],
    };
    let out = run_case(CpuBackend::exact(), &case).unwrap();
    (out[0].to_f32(), out[1].to_f32())
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6), "got {got:?}, want {want:?}");
}

#[test]
fn aggregate_by_hand_veto() {
    // Brand QE 0 (essential, weight 1) vetoes: E = 0 whatever the color does. λ = 0.3, so
    // S({}) = 0.7 and S({color}) = 0.7 + 0.3·1 = 1. Brand: last 0 − 1, first 0 − 0.7, mean
    // −0.85. Color: last 0 − 0, first 1 − 0.7, mean 0.15.
    for &logic in Logic::ALL {
        let (score, contribution) = aggregate_case(logic, 0.3, &[&[(0.0, 0, true), (1.0, 1, true)]]);
        assert_close(&score, &[0.0]);
        assert_close(&contribution, &[-0.85, 0.15]);
    }
}

#[test]
fn aggregate_by_hand_optional_only() {
    // Two colors, QE 0.6 and 0.5, λ = 0.4, no essential entity (E = 1).
    // Product: O = 0.6 + 0.5 − 0.3 = 0.8, score 0.6 + 0.4·0.8 = 0.92.
    //   first: 0.4·0.6 = 0.24 and 0.4·0.5 = 0.2; last: 0.92 − 0.8 = 0.12 and 0.92 − 0.84 = 0.08.
    // Goedel: O = 0.6, score 0.84; last 0.84 − 0.8 = 0.04 and 0; first as above.
    // Lukasiewicz: O = min(1, 1.1) = 1, score 1; last 1 − 0.8 = 0.2 and 1 − 0.84 = 0.16.
    let row: &[(f32, u32, bool)] = &[(0.6, 1, true), (0.5, 1, true)];
    for (logic, score, contribution) in [
        (Logic::Product, 0.92, [0.18, 0.14]),
        (Logic::Goedel, 0.84, [0.14, 0.1]),
        (Logic::Lukasiewicz, 1.0, [0.22, 0.18]),
    ] {
        let (s, c) = aggregate_case(logic, 0.4, &[row]);
        assert_close(&s, &[score]);
        assert_close(&c, &contribution);
    }
}

#[test]
fn aggregate_by_hand_empty_mask() {
    // No present entity (masked out, or of a kind beyond the table): E = 1, O = 0, so the
    // score is 1 − λ and nothing contributes. Also a row of a half-weight essential entity
    // with QE 0: t = 1 − 0.5 = 0.5, score 0.5·0.75.
    for &logic in Logic::ALL {
        let (score, contribution) =
            aggregate_case(logic, 0.25, &[&[(0.0, 0, false), (0.9, 7, true)], &[(0.0, 2, true), (0.3, 0, false)]]);
        assert_close(&score, &[0.75, 0.375]);
        // Half-weight entity: last 0.375 − 0.75, first 0.375 − 0.75, mean −0.375.
        assert_close(&contribution, &[0.0, 0.0, -0.375, 0.0]);
    }
}

#[test]
fn gelu_uses_an_accurate_erf() {
    // Reference values of 0.5·x·(1 + erf(x/√2)) computed in f64.
    for (x, want) in
        [(-3.0f32, -0.004049694), (-1.0, -0.15865525), (0.5, 0.34573123), (1.0, 0.8413447), (2.5, 2.4844758)]
    {
        assert!((gelu(x) - want).abs() < 2e-6, "gelu({x}) = {}, want {want}", gelu(x));
    }
}

fn naive_conv2d(case: &Case, c2: &tandem_runtime::ops::Conv2d) -> Vec<f32> {
    let (x, w) = (case.inputs[0].to_f32(), case.inputs[1].to_f32());
    let bias = case.inputs.get(2).map(|t| t.to_f32());
    let residual = case.inputs.get(3).map(|t| t.to_f32());
    let [n, c, h, wd] = [0, 1, 2, 3].map(|i| case.inputs[0].shape[i]);
    let [o, cg, kh, kw] = [0, 1, 2, 3].map(|i| case.inputs[1].shape[i]);
    let [sh, sw] = c2.stride.map(|s| s as usize);
    let [ph, pw] = c2.padding.map(|p| p as isize);
    let g = c2.groups as usize;
    let (oh, ow) = ((h + 2 * ph as usize - kh) / sh + 1, (wd + 2 * pw as usize - kw) / sw + 1);
    assert_eq!(cg * g, c);
    let mut out = Vec::with_capacity(n * o * oh * ow);
    for b in 0..n {
        for oc in 0..o {
            let group = oc / (o / g);
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.as_ref().map_or(0.0, |b| b[oc] as f64);
                    for ci in 0..cg {
                        let ic = group * cg + ci;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky) as isize - ph;
                                let ix = (ox * sw + kx) as isize - pw;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((b * c + ic) * h + iy as usize) * wd + ix as usize] as f64;
                                acc += xv * w[((oc * cg + ci) * kh + ky) * kw + kx] as f64;
                            }
                        }
                    }
                    if let Some(r) = &residual {
                        acc += r[out.len()] as f64;
                    }
                    let v = acc as f32;
                    out.push(c2.clamp.map_or(v, |[lo, hi]| if v.is_nan() { v } else { v.max(lo).min(hi) }));
                }
            }
        }
    }
    out
}

#[test]
fn cpu_conv2d_clamp_and_global_avg_pool_match_plain_loops() {
    let seed = seed();
    println!("seed {seed}");
    let mut checked = 0;
    for case in cases(seed) {
        let (want, tol) = match &case.op {
            // f64 sums rounded once: the CPU's f32 sums (gemm for 1x1) are a few ulps off.
            Op::Conv2d(c2) => (naive_conv2d(&case, c2), Tolerance::new(2e-5, 1e-4)),
            Op::Clamp { min, max } => {
                let x = case.inputs[0].to_f32();
                let want = x.iter().map(|&v| if v.is_nan() { v } else { v.max(*min).min(*max) }).collect();
                (want, Tolerance::EXACT)
            }
            Op::GlobalAvgPool => {
                let x = case.inputs[0].to_f32();
                let s = &case.inputs[0].shape;
                let hw = s[2] * s[3];
                let want =
                    x.chunks(hw).map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32).collect();
                (want, Tolerance::new(1e-6, 1e-5))
            }
            _ => continue,
        };
        let got = run_case(CpuBackend::exact(), &case).unwrap();
        let w = HostTensor::f32(got[0].shape.clone(), want).unwrap();
        compare(&got[0], &w, tol).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} cases checked");
}

#[test]
fn clamp_keeps_nan_and_inverted_bounds_give_max() {
    let case = Case {
        name: "clamp_by_hand".into(),
        op: Op::Clamp { min: 0.0, max: 6.0 },
        inputs: vec![HostTensor::f32(vec![5], vec![-1.0, 3.0, 7.0, f32::NAN, f32::INFINITY]).unwrap()],
    };
    let got = run_case(CpuBackend::exact(), &case).unwrap()[0].to_f32();
    assert_eq!(&got[..3], &[0.0, 3.0, 6.0]);
    assert!(got[3].is_nan());
    assert_eq!(got[4], 6.0);
    let inverted = Case { op: Op::Clamp { min: 2.0, max: -2.0 }, ..case };
    assert_eq!(run_case(CpuBackend::exact(), &inverted).unwrap()[0].to_f32()[..3], [-2.0, -2.0, -2.0]);
}

#[test]
fn rms_norm_by_hand() {
    // Row [3, 4]: mean of squares 12.5, so y = x / sqrt(12.5 + eps) · gamma.
    let mut g = tandem_runtime::Graph::new("rms");
    let x = g.input("x", tandem_runtime::TensorType::fixed(tandem_runtime::DType::F32, &[1, 2]));
    let gamma = g.input("gamma", tandem_runtime::TensorType::fixed(tandem_runtime::DType::F32, &[2]));
    let y = g.node1("rms", Op::RmsNorm { eps: 0.5 }, &[x, gamma]).unwrap();
    g.output(y, "y");
    let session = tandem_runtime::Session::new(CpuBackend::exact(), g, &[]).unwrap();
    let inputs = [
        tandem_runtime::HostTensor::f32(vec![1, 2], vec![3.0, 4.0]).unwrap(),
        tandem_runtime::HostTensor::f32(vec![2], vec![1.0, 2.0]).unwrap(),
    ];
    let got = session.run_blocking(&inputs).unwrap().remove(0).to_f32();
    let inv = 1.0 / 13.0f32.sqrt();
    assert_eq!(got, [3.0 * inv, 8.0 * inv]);
}

/// RoPE as its doc states it, in f64: pair i of each head turns by position · inv_freq[i],
/// pairs (2i, 2i+1) or (i, i + rot/2), other dims unchanged.
fn naive_rope(case: &tandem_tests::Case, r: &tandem_runtime::ops::Rope) -> Vec<f32> {
    let x = case.inputs[0].to_f32();
    let positions = case.inputs[1].as_u32().unwrap();
    let inv_freq = case.inputs[2].to_f32();
    let (d, rot) = (r.head_dim as usize, r.rot_dims as usize);
    let mut out = x.clone();
    for (row, chunk) in out.chunks_mut(d).enumerate() {
        let pos = positions[row / (case.inputs[0].shape[1] / d)] as f64;
        for (i, &freq) in inv_freq.iter().enumerate().take(rot / 2) {
            let (a, b) = match r.layout {
                tandem_runtime::ops::RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                tandem_runtime::ops::RopeLayout::Half => (i, i + rot / 2),
            };
            // The angle as the op computes it (an f32 product), turned in f64.
            let theta = (pos as f32 * freq) as f64;
            let (xa, xb) = (x[row * d + a] as f64, x[row * d + b] as f64);
            chunk[a] = (xa * theta.cos() - xb * theta.sin()) as f32;
            chunk[b] = (xa * theta.sin() + xb * theta.cos()) as f32;
        }
    }
    out
}

#[test]
fn cpu_rope_matches_plain_loops() {
    let mut checked = 0;
    for case in cases(seed()) {
        let Op::Rope(r) = &case.op else { continue };
        let got = run_case(CpuBackend::exact(), &case).unwrap().remove(0);
        let want = tandem_runtime::HostTensor::f32(got.shape.clone(), naive_rope(&case, r)).unwrap();
        compare(&got, &want, Tolerance::new(1e-5, 1e-5)).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} rope cases");
}
