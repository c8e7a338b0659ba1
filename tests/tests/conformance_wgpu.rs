//! The wgpu backend against the CPU reference: every op case, op coverage, and a multi-node
//! graph (buffer reuse, one submission per run, weights).
//!
//! CI has no GPU but has Mesa's lavapipe, so a missing adapter fails these tests unless
//! `TANDEM_ALLOW_NO_GPU_ADAPTER=1` says that skipping is fine on this machine.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;
use tandem_runtime::backend::Backend;
use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::backend::wgpu::{AdapterPreference, MAX_HEAD_DIM, WgpuBackend};
use tandem_runtime::ops::{Activation, Attention, BinaryKind, MatMul, PoolKind, UnaryKind};
use tandem_runtime::{DType, Dim, Error, Graph, HostTensor, Op, Session, TensorType};
use tandem_tests::{Case, Tolerance, check_backend, compare, missing_ops, run_case, seed, tolerance};

/// One device for the whole test binary: opening one and compiling pipelines is the slow
/// part on lavapipe, and clones share both.
fn backend() -> Option<WgpuBackend> {
    static BACKEND: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    match BACKEND.get_or_init(|| WgpuBackend::new_blocking().map_err(|e| e.to_string())) {
        Ok(b) => Some(b.clone()),
        Err(e) if std::env::var("TANDEM_ALLOW_NO_GPU_ADAPTER").is_ok_and(|v| v == "1") => {
            eprintln!("skipping: no wgpu adapter ({e}) and TANDEM_ALLOW_NO_GPU_ADAPTER=1");
            None
        }
        Err(e) => panic!(
            "no wgpu adapter: {e}\nInstall Mesa's lavapipe (mesa-vulkan-drivers), or set \
             TANDEM_ALLOW_NO_GPU_ADAPTER=1 to skip the wgpu tests on this machine."
        ),
    }
}

#[test]
fn every_op_matches_the_cpu() {
    let Some(backend) = backend() else { return };
    let seed = seed();
    println!("wgpu conformance on {}, seed {seed} (replay with TANDEM_TEST_SEED={seed})", backend.device_description());
    let failures = check_backend(|| backend.clone(), seed);
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(failures.is_empty(), "{} op cases differ from the CPU (seed {seed})", failures.len());
}

#[test]
fn wgpu_has_every_op() {
    let Some(backend) = backend() else { return };
    assert_eq!(missing_ops(&backend), Vec::<&str>::new(), "ops without a wgpu kernel");
}

fn random(rng: &mut StdRng, shape: &[usize], scale: f32) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::f32(shape.to_vec(), (0..n).map(|_| rng.random_range(-scale..scale)).collect()).unwrap()
}

/// A small encoder layer over packed sequences: matmul → GELU → layer norm → q/k/v →
/// attention → residual → mean pool → L2 normalize, with weights and symbolic token and
/// sequence counts.
fn encoder_graph(rng: &mut StdRng) -> (Graph, Vec<HostTensor>) {
    let (d, heads) = (64usize, 4u32);
    let mut g = Graph::new("encoder");
    let x = g.input("x", TensorType::new(DType::F32, vec![Dim::sym("tokens"), Dim::Fixed(d as u64)]));
    let seg = g.input("segments", TensorType::new(DType::U32, vec![Dim::sym("seqs"), Dim::Fixed(2)]));
    let mut weights = Vec::new();
    let mut weight = |g: &mut Graph, name: &str, shape: &[usize], scale: f32| {
        weights.push(random(rng, shape, scale));
        g.weight(name, TensorType::fixed(DType::F32, shape))
    };
    let w0 = weight(&mut g, "w0", &[d, d], 0.2);
    let b0 = weight(&mut g, "b0", &[d], 0.1);
    let gamma = weight(&mut g, "gamma", &[d], 1.0);
    let beta = weight(&mut g, "beta", &[d], 0.1);
    let wq = weight(&mut g, "wq", &[d, d], 0.2);
    let wk = weight(&mut g, "wk", &[d, d], 0.2);
    let wv = weight(&mut g, "wv", &[d, d], 0.2);
    let plain = Op::MatMul(MatMul { trans_b: false, activation: Activation::None });
    let linear = Op::MatMul(MatMul { trans_b: true, activation: Activation::None });
    let h = g.node1("dense", plain, &[x, w0, b0]).unwrap();
    let h = g.node1("gelu", Op::Unary(UnaryKind::Gelu), &[h]).unwrap();
    let n = g.node1("norm", Op::LayerNorm { eps: 1e-12 }, &[h, gamma, beta]).unwrap();
    let q = g.node1("q", linear.clone(), &[n, wq]).unwrap();
    let k = g.node1("k", linear.clone(), &[n, wk]).unwrap();
    let v = g.node1("v", linear, &[n, wv]).unwrap();
    let attn =
        Attention { num_heads: heads, num_kv_heads: heads, scale: 1.0 / 4.0, causal: false, bf16_products: false };
    let a = g.node1("attention", Op::Attention(attn), &[q, k, v, seg]).unwrap();
    let r = g.node1("residual", Op::Binary(BinaryKind::Add), &[a, n]).unwrap();
    let p = g.node1("pool", Op::Pool(PoolKind::Mean), &[r, seg]).unwrap();
    let e = g.node1("normalize", Op::L2Normalize { eps: 1e-12 }, &[p]).unwrap();
    g.output(e, "embedding");
    g.output(r, "hidden");
    (g, weights)
}

fn segments(lengths: &[u32]) -> HostTensor {
    let mut start = 0;
    let spans: Vec<u32> = lengths
        .iter()
        .flat_map(|&l| {
            start += l;
            [start - l, l]
        })
        .collect();
    HostTensor::u32(vec![lengths.len(), 2], spans).unwrap()
}

#[test]
fn a_multi_node_graph_matches_the_cpu() {
    let Some(backend) = backend() else { return };
    let seed = seed();
    println!("seed {seed}");
    let rng = &mut StdRng::seed_from_u64(seed);
    let (graph, weights) = encoder_graph(rng);
    let gpu = Session::new(backend, graph.clone(), &weights).unwrap();
    let cpu = Session::new(CpuBackend::exact(), graph, &weights).unwrap();
    // Two batch shapes, the first run twice: plans are cached and buffers come back from
    // the pool holding the previous run's data.
    let batches = [vec![5u32, 17, 1], vec![40, 3], vec![5, 17, 1]];
    for lengths in &batches {
        let tokens = lengths.iter().sum::<u32>() as usize;
        let inputs = vec![random(rng, &[tokens, 64], 1.0), segments(lengths)];
        let want = cpu.run_blocking(&inputs).unwrap();
        let got = gpu.run_blocking(&inputs).unwrap();
        for (name, (g, w)) in ["embedding", "hidden"].iter().zip(got.iter().zip(&want)) {
            compare(g, w, Tolerance::new(1e-4, 1e-3))
                .unwrap_or_else(|e| panic!("{name}, sequence lengths {lengths:?}: {e}"));
        }
    }
}

#[test]
fn unsupported_shapes_are_errors_not_panics() {
    let Some(backend) = backend() else { return };
    let d = MAX_HEAD_DIM + 8;
    let mut g = Graph::new("wide heads");
    let q = g.input("q", TensorType::fixed(DType::F32, &[3, d]));
    let seg = g.input("segments", TensorType::fixed(DType::U32, &[1, 2]));
    let attn = Attention { num_heads: 1, num_kv_heads: 1, scale: 1.0, causal: false, bf16_products: false };
    let a = g.node1("attention", Op::Attention(attn), &[q, q, q, seg]).unwrap();
    g.output(a, "out");
    let session = Session::new(backend, g, &[]).unwrap();
    let inputs = [HostTensor::f32(vec![3, d], vec![0.5; 3 * d]).unwrap(), segments(&[3])];
    match session.run_blocking(&inputs) {
        Err(Error::Backend { backend: "wgpu", message }) => assert!(message.contains("head dim"), "{message}"),
        other => panic!("expected a wgpu backend error, got {other:?}"),
    }
}

/// Runs extra cases on wgpu and the CPU; returns one line per failure.
fn check_cases(backend: &WgpuBackend, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let want = run_case(CpuBackend::exact(), &case).expect("the CPU runs every case");
        match run_case(backend.clone(), &case) {
            Err(e) => failures.push(format!("{}: {e}", case.name)),
            Ok(got) => {
                for (g, w) in got.iter().zip(&want) {
                    if let Err(e) = compare(g, w, tolerance(case.op.kind())) {
                        failures.push(format!("{}: {e}", case.name));
                    }
                }
            }
        }
    }
    failures
}

/// What the shared cases leave out but the kernels must handle: grids past 65535
/// workgroups (folded into two dimensions), the largest head dim, grouped-query heads,
/// short segments sharing one query block, gaps, and a model-sized matmul.
#[test]
fn kernel_edge_cases_match_the_cpu() {
    let Some(backend) = backend() else { return };
    let seed = seed();
    println!("seed {seed}");
    let rng = &mut StdRng::seed_from_u64(seed);
    let mut cases = Vec::new();
    let mut add = |name: &str, op: Op, inputs: Vec<HostTensor>| cases.push(Case { name: name.into(), op, inputs });

    // 70 000 rows: one workgroup per row, more than 65535 of them.
    add("softmax_70000_rows", Op::Softmax, vec![random(rng, &[70_000, 3], 4.0)]);
    // 256 × 65535 + 1000 elements: more than 65535 workgroups of 256.
    add("relu_16.8M", Op::Unary(UnaryKind::Relu), vec![random(rng, &[256 * 65_535 + 1000], 1.0)]);
    add("cast_odd_f16_large", Op::Cast(DType::F16), vec![random(rng, &[300_001], 1000.0)]);

    let attention = |heads, kv_heads, causal| {
        Op::Attention(Attention {
            num_heads: heads,
            num_kv_heads: kv_heads,
            scale: 0.125,
            causal,
            bf16_products: false,
        })
    };
    // Segments of 1-3 tokens, several per block of 8 queries; tokens 9 and 20.. in none.
    let short = HostTensor::u32(vec![6, 2], vec![0, 2, 2, 1, 3, 3, 6, 3, 10, 1, 11, 9]).unwrap();
    for causal in [false, true] {
        add(
            &format!("attention_short_segments_causal{causal}"),
            attention(8, 2, causal),
            vec![
                random(rng, &[23, 8 * 16], 2.0),
                random(rng, &[23, 2 * 16], 2.0),
                random(rng, &[23, 2 * 16], 1.0),
                short.clone(),
            ],
        );
    }
    add(
        "attention_d128_gqa",
        attention(4, 1, true),
        vec![
            random(rng, &[300, 4 * 128], 1.0),
            random(rng, &[300, 128], 1.0),
            random(rng, &[300, 128], 1.0),
            segments(&[37, 263]),
        ],
    );
    // MiniLM's feed-forward layer for one 128-token sequence.
    add(
        "matmul_128x384x1536_gelu",
        Op::MatMul(MatMul { trans_b: true, activation: Activation::Gelu }),
        vec![random(rng, &[128, 384], 1.0), random(rng, &[1536, 384], 0.05), random(rng, &[1536], 0.1)],
    );
    // Batched products with a batched b (attention-style), and a single row (decoding).
    add(
        "matmul_batched_12x65x32x65",
        Op::MatMul(MatMul { trans_b: false, activation: Activation::None }),
        vec![random(rng, &[12, 65, 32], 1.0), random(rng, &[12, 32, 65], 1.0)],
    );
    add(
        "matmul_1x576x1000",
        Op::MatMul(MatMul { trans_b: true, activation: Activation::Relu }),
        vec![random(rng, &[1, 576], 1.0), random(rng, &[1000, 576], 0.1)],
    );

    // A stored-weight matvec over 600 000 weight rows: 75 000 workgroups of 8 outputs, folded
    // into two grid dimensions; and SmolLM2's output layer (Q8_0 embeddings, tied).
    let linear = Op::MatMul(MatMul { trans_b: true, activation: Activation::None });
    let wide = tandem_tests::random_weight(rng, DType::Q8_0, 600_000, 32);
    let lm_head = tandem_tests::random_weight(rng, DType::Q8_0, 49_152, 576);
    add("matvec_q8_0_1x32x600000", linear.clone(), vec![random(rng, &[1, 32], 1.0), wide]);
    add("matvec_q8_0_1x576x49152", linear, vec![random(rng, &[1, 576], 1.0), lm_head]);

    let failures = check_cases(&backend, cases);
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(failures.is_empty(), "{} edge cases differ from the CPU (seed {seed})", failures.len());
}

/// `--backend auto` asks for a real GPU only: lavapipe must never be picked, and not having
/// a GPU is an error to fall back on, not a panic.
#[test]
fn hardware_only_never_picks_a_software_adapter() {
    if backend().is_none() {
        return;
    }
    match WgpuBackend::new_with_blocking(AdapterPreference::HardwareOnly) {
        Ok(b) => assert!(!b.is_software(), "picked {}", b.device_description()),
        Err(e) => {
            println!("no hardware adapter: {e}");
            assert!(matches!(e, Error::Backend { backend: "wgpu", .. }), "{e:?}");
        }
    }
}

#[test]
fn dtypes_without_a_kernel_are_refused_by_name() {
    let Some(backend) = backend() else { return };
    let (graph, weights, _) = tandem_tests::f16_linear_graph(1, 2, 64, 3);
    let err = Session::new(backend, graph, &weights).err().expect("wgpu has no f16 matmul").to_string();
    assert!(err.contains("op 'matmul' (node 'linear') on inputs of dtype f16, f16 is not implemented"), "{err}");
}
