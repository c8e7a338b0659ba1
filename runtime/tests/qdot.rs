//! The integer-dot matmul (`ops::qdot`, activations quantized to 8 bits) on every weight type
//! it takes, at awkward shapes (m rows 1, 3, 7, 33 spanning partial row tiles; n 1, 7, 129
//! spanning the thread chunks; k from one block up): against an f64 product of the
//! dequantized weights, within the error the activations' quantization can make (at most
//! half a quantization step per activation: Σ|w|·d/2), and every SIMD level this CPU has
//! against the portable one, within f32 reordering (the integer sums are the same).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_runtime::backend::cpu::{CpuBackend, CpuOptions};
use tandem_runtime::ops::isa::CpuIsa;
use tandem_runtime::ops::qdot::{self, BlockMatrix};
use tandem_runtime::ops::{Activation, MatMul};
use tandem_runtime::weights::quant::dequantize;
use tandem_runtime::{DType, Graph, HostTensor, Op, Session, TensorData, TensorType};

const TYPES: [DType; 7] = [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q4_K, DType::Q5_K, DType::Q6_K];

/// Random blocks: random quant bytes, with each block's f16 scales (and mins) set so that the
/// values stay below about 1, as real weights do.
fn random_blocks(rng: &mut StdRng, dtype: DType, rows: usize, k: usize) -> Vec<u8> {
    let scale = match dtype {
        DType::Q8_0 => 0.008,
        DType::Q4_K | DType::Q5_K => 0.0005,
        DType::Q6_K => 0.00025,
        _ => 0.06,
    };
    let layout = dtype.block();
    let mut bytes: Vec<u8> = (0..rows * k / layout.values * layout.bytes).map(|_| rng.random()).collect();
    let halves: &[usize] = match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => &[0],
        DType::Q4_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        other => panic!("no random blocks for {other}"),
    };
    for block in bytes.chunks_exact_mut(layout.bytes) {
        for &at in halves {
            let h = half::f16::from_f32(rng.random_range(-scale..scale));
            block[at..at + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    bytes
}

/// Activations in [-1, 1], one row all zero (a zero scale) and one with an outlier (a coarse
/// scale for its block), where the shape has room.
fn activations(rng: &mut StdRng, m: usize, k: usize) -> Vec<f32> {
    let mut a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    if m >= 3 {
        a[k..2 * k].fill(0.0);
        a[2 * k + k / 2] = 40.0;
    }
    a
}

/// The largest error 8-bit activations can make in each output: Σ_j |w_j| · d_j / 2, with d_j
/// the scale of the activation block of j (`max|a| / 127` over `block` values).
fn quantization_bound(w: &[f32], a: &[f32], block: usize) -> f64 {
    w.chunks(block)
        .zip(a.chunks(block))
        .map(|(w, a)| {
            let d = a.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64 / 127.0;
            w.iter().map(|w| w.abs() as f64).sum::<f64>() * d / 2.0
        })
        .sum()
}

fn product(isa: CpuIsa, dtype: DType, w: &[u8], n: usize, k: usize, a: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * n];
    qdot::matmul(isa, BlockMatrix { dtype, bytes: w, rows: n, cols: k }, a, m, &mut out).unwrap();
    out
}

fn ks(dtype: DType) -> &'static [usize] {
    if dtype.block().values == 256 { &[256, 768] } else { &[32, 96, 256, 768] }
}

#[test]
fn every_type_matches_the_dequantized_product_within_the_activation_rounding() {
    let mut rng = StdRng::seed_from_u64(7);
    for dtype in TYPES {
        let act_block = if dtype.block().values == 256 { 256 } else { 32 };
        let mut worst_of_bound = 0.0f64;
        let mut worst_of_norms = 0.0f64;
        for &k in ks(dtype) {
            for n in [1, 7, 129] {
                for m in [1, 3, 7, 33] {
                    let wq = random_blocks(&mut rng, dtype, n, k);
                    let mut w = vec![0.0f32; n * k];
                    dequantize(dtype, &wq, &mut w).unwrap();
                    let a = activations(&mut rng, m, k);
                    let got = product(CpuIsa::Scalar, dtype, &wq, n, k, &a, m);
                    for r in 0..m {
                        for c in 0..n {
                            let (wr, ar) = (&w[c * k..][..k], &a[r * k..][..k]);
                            let want: f64 = wr.iter().zip(ar).map(|(&w, &a)| w as f64 * a as f64).sum();
                            let abs: f64 = wr.iter().zip(ar).map(|(&w, &a)| (w as f64 * a as f64).abs()).sum();
                            let bound = quantization_bound(wr, ar, act_block) * 1.001 + 1e-6 * abs + 1e-9;
                            let err = (got[r * n + c] as f64 - want).abs();
                            assert!(
                                err <= bound,
                                "{dtype} m{m} n{n} k{k} [{r}, {c}]: {} vs {want} (error {err:e}, bound {bound:e})",
                                got[r * n + c]
                            );
                            worst_of_bound = worst_of_bound.max(err / bound);
                            let norms = (wr.iter().map(|x| (*x as f64).powi(2)).sum::<f64>()
                                * ar.iter().map(|x| (*x as f64).powi(2)).sum::<f64>())
                            .sqrt();
                            if norms > 0.0 {
                                worst_of_norms = worst_of_norms.max(err / norms);
                            }
                        }
                    }
                }
            }
        }
        println!("{dtype}: worst error {:.2} of the rounding bound, {worst_of_norms:.1e} of |w|·|a|", worst_of_bound);
    }
}

#[test]
fn every_simd_level_agrees_with_the_portable_kernels() {
    let mut rng = StdRng::seed_from_u64(11);
    let levels: Vec<CpuIsa> = CpuIsa::ALL[1..]
        .iter()
        .copied()
        .filter(|isa| {
            let ok = isa.supported();
            if !ok {
                println!("skipped: this CPU lacks {isa}");
            }
            ok
        })
        .collect();
    let mut worst = vec![0.0f64; levels.len()];
    for dtype in TYPES {
        for &k in ks(dtype) {
            for n in [1, 7, 129] {
                for m in [1, 3, 7, 33] {
                    let wq = random_blocks(&mut rng, dtype, n, k);
                    let mut w = vec![0.0f32; n * k];
                    dequantize(dtype, &wq, &mut w).unwrap();
                    let a = activations(&mut rng, m, k);
                    let want = product(CpuIsa::Scalar, dtype, &wq, n, k, &a, m);
                    for (&isa, worst) in levels.iter().zip(&mut worst) {
                        let got = product(isa, dtype, &wq, n, k, &a, m);
                        for r in 0..m {
                            for c in 0..n {
                                let (wr, ar) = (&w[c * k..][..k], &a[r * k..][..k]);
                                let abs: f64 = wr.iter().zip(ar).map(|(&w, &a)| (w as f64 * a as f64).abs()).sum();
                                let (g, s) = (got[r * n + c], want[r * n + c]);
                                if abs > 0.0 {
                                    *worst = worst.max((g as f64 - s as f64).abs() / abs);
                                }
                                assert!(
                                    (g as f64 - s as f64).abs() <= 1e-5 * abs + 1e-9,
                                    "{dtype} on {isa}, m{m} n{n} k{k} [{r}, {c}]: {g} vs scalar {s} (Σ|w·a| {abs})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    for (isa, worst) in levels.iter().zip(worst) {
        println!("{isa}: within {worst:.1e} of Σ|w·a| of the portable kernels");
    }
}

#[test]
fn bad_operands_are_refused() {
    let w = vec![0u8; 2 * 34];
    let a = vec![0.0f32; 32];
    let mut out = vec![0.0f32; 2];
    let run = |dtype, rows, cols, m, out: &mut [f32]| {
        qdot::matmul(CpuIsa::Scalar, BlockMatrix { dtype, bytes: &w, rows, cols }, &a, m, out)
    };
    assert!(run(DType::Q8_0, 2, 32, 1, &mut out).is_ok());
    assert!(run(DType::Q8_0, 3, 32, 1, &mut out).is_err(), "too few weight bytes");
    assert!(run(DType::Q8_0, 2, 16, 1, &mut out).is_err(), "not whole blocks");
    assert!(run(DType::F16, 2, 32, 1, &mut out).is_err(), "not a block type");
    assert!(run(DType::Q8_0, 2, 32, 2, &mut out).is_err(), "too few activations");
}

/// Through the CPU backend: bias and activation after the product, and the exact option
/// giving the dequantized product. (With only the portable kernels, the default path is the
/// f32 one too: `qdot::preferred`.)
#[test]
fn the_cpu_backend_runs_either_path() {
    let mut rng = StdRng::seed_from_u64(3);
    let (m, n, k) = (5, 70, 512);
    for dtype in TYPES {
        let wq = random_blocks(&mut rng, dtype, n, k);
        let mut w = vec![0.0f32; n * k];
        dequantize(dtype, &wq, &mut w).unwrap();
        let a = activations(&mut rng, m, k);
        let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut g = Graph::new("linear");
        let x = g.input("x", TensorType::fixed(DType::F32, &[m, k]));
        let wv = g.input("w", TensorType::fixed(dtype, &[n, k]));
        let bv = g.input("b", TensorType::fixed(DType::F32, &[n]));
        let y =
            g.node1("mm", Op::MatMul(MatMul { trans_b: true, activation: Activation::Relu }), &[x, wv, bv]).unwrap();
        g.output(y, "y");
        let inputs = [
            HostTensor::f32(vec![m, k], a.clone()).unwrap(),
            HostTensor::new(vec![n, k], TensorData::from_bytes(dtype, &wq).unwrap()).unwrap(),
            HostTensor::f32(vec![n], bias.clone()).unwrap(),
        ];
        let run = |backend: CpuBackend| {
            Session::new(backend, g.clone(), &[]).unwrap().run_blocking(&inputs).unwrap().remove(0).to_f32()
        };
        let fast = run(CpuBackend::new());
        let exact = run(CpuBackend::exact());
        assert_eq!(CpuBackend::new().options(), CpuOptions { quantized_activations: true, huge_pages: true });
        let mut worst_fast = 0.0f64;
        for r in 0..m {
            for c in 0..n {
                let (wr, ar) = (&w[c * k..][..k], &a[r * k..][..k]);
                let dot: f64 = wr.iter().zip(ar).map(|(&w, &a)| w as f64 * a as f64).sum();
                let want = (dot + bias[c] as f64).max(0.0);
                let abs: f64 = wr.iter().zip(ar).map(|(&w, &a)| (w as f64 * a as f64).abs()).sum();
                let e = (exact[r * n + c] as f64 - want).abs();
                assert!(e <= 1e-5 * abs + 1e-6, "{dtype} exact [{r}, {c}]: {} vs {want}", exact[r * n + c]);
                let f = (fast[r * n + c] as f64 - want).abs();
                let block = if dtype.block().values == 256 { 256 } else { 32 };
                let bound = quantization_bound(wr, ar, block) * 1.001 + 1e-5 * abs + 1e-6;
                assert!(f <= bound, "{dtype} fast [{r}, {c}]: {} vs {want} (bound {bound:e})", fast[r * n + c]);
                worst_fast = worst_fast.max(f);
            }
        }
        if CpuIsa::active() > CpuIsa::Scalar {
            assert!(fast.iter().zip(&exact).any(|(f, e)| f != e), "{dtype}: the fast path gave the exact values");
        }
        println!("{dtype}: fast path within {worst_fast:.1e} of the f64 product");
    }
}

/// A row's result does not depend on the other rows computed with it (how many, or where it
/// sits): a decoder's greedy text then does not depend on what else shares its batch.
#[test]
fn rows_come_out_the_same_whatever_the_batch() {
    let mut rng = StdRng::seed_from_u64(7);
    for isa in CpuIsa::ALL.into_iter().filter(|isa| isa.supported()).rev() {
        for dtype in TYPES {
            let (n, k) = (33, ks(dtype)[ks(dtype).len() - 1]);
            let w = random_blocks(&mut rng, dtype, n, k);
            let m = 17;
            let a = activations(&mut rng, m, k);
            let together = product(isa, dtype, &w, n, k, &a, m);
            for row in [0, 5, 16] {
                let alone = product(isa, dtype, &w, n, k, &a[row * k..(row + 1) * k], 1);
                assert_eq!(alone, together[row * n..(row + 1) * n], "{isa} {dtype}: row {row} of {m} differs alone");
            }
        }
    }
}
