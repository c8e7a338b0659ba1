//! The CPU backend is the reference for every other backend, so its fast paths (gemm,
//! threads, strided views) are checked here against plain loops written from the op's
//! definition.

use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::ops::elementwise::gelu;
use tandem_runtime::ops::{Activation, Op, OpKind};
use tandem_tests::{Tolerance, cases, compare, run_case, seed};

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
                out[t * m * n + i * n + j] = match act {
                    Activation::None => x,
                    Activation::Gelu => gelu(x),
                    Activation::Relu => x.max(0.0),
                };
            }
        }
    }
    out
}

fn naive_attention(case: &tandem_tests::Case, heads: usize, kv_heads: usize, scale: f32, causal: bool) -> Vec<f32> {
    let (q, k, v) = (case.inputs[0].to_f32(), case.inputs[1].to_f32(), case.inputs[2].to_f32());
    let seg: Vec<u32> = match &case.inputs[3].data {
        tandem_runtime::TensorData::U32(s) => s.clone(),
        _ => unreachable!(),
    };
    let (tokens, qw) = (case.inputs[0].shape[0], case.inputs[0].shape[1]);
    let d = qw / heads;
    let kw = kv_heads * d;
    let mut out = vec![0.0f32; tokens * qw];
    for s in seg.chunks(2) {
        let (start, len) = (s[0] as usize, s[1] as usize);
        for h in 0..heads {
            let kh = h / (heads / kv_heads);
            for i in 0..len {
                let visible = if causal { i + 1 } else { len };
                let scores: Vec<f64> = (0..visible)
                    .map(|j| {
                        (0..d)
                            .map(|c| q[(start + i) * qw + h * d + c] as f64 * k[(start + j) * kw + kh * d + c] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for c in 0..d {
                    let acc: f64 = (0..visible).map(|j| exps[j] / sum * v[(start + j) * kw + kh * d + c] as f64).sum();
                    out[(start + i) * qw + h * d + c] = acc as f32;
                }
            }
        }
    }
    out
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
            _ => continue,
        };
        let got = run_case(CpuBackend::new(), &case).unwrap().remove(0);
        let want = tandem_runtime::HostTensor::f32(got.shape.clone(), want).unwrap();
        compare(&got, &want, Tolerance::new(1e-4, 1e-4)).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        checked += 1;
    }
    assert!(checked > 40, "only {checked} cases checked");
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
