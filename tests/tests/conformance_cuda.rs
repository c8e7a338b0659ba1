//! The CUDA backend against the CPU reference on a real GPU: the op cases every backend runs,
//! the cases at the kernels' internal limits, the f16 builds, and errors for what the kernels
//! cannot do. Without a GPU (or driver, or NVRTC) every test prints the reason and returns:
//! CI has no GPU, and checks the kernels there through NVRTC (cuda_ptx) and the CPU
//! emulation (cuda_emulated). scripts/gpu-check.sh runs this file on a GPU machine, with
//! `TANDEM_REQUIRE_CUDA=1`, which turns a skip into a failure.

#![cfg(feature = "cuda")]

use std::sync::OnceLock;
use tandem_runtime::backend::Backend;
use tandem_runtime::backend::cuda::{CudaBackend, cuda_available};
use tandem_runtime::ops::Attention;
use tandem_runtime::{DType, Graph, HostTensor, Op, Session, TensorType};
use tandem_tests::gpu::{check_cases, check_f16, limit_cases};
use tandem_tests::{check_backend, missing_ops, seed};

/// One device for the whole test binary; clones share it and its compiled kernels.
fn backend() -> Option<CudaBackend> {
    static BACKEND: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    let made = BACKEND.get_or_init(|| {
        // No driver, NVRTC or device: skip. Anything failing past that is a real failure.
        if let Err(e) = cuda_available() {
            if std::env::var("TANDEM_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("TANDEM_REQUIRE_CUDA=1 but CUDA is not available: {e}");
            }
            println!("skipping the CUDA tests: {e}");
            return Err(e);
        }
        let b = CudaBackend::new(0).unwrap_or_else(|e| panic!("{e}"));
        let start = std::time::Instant::now();
        let builds = b.warm_up().unwrap_or_else(|e| panic!("{e}"));
        println!("{}: {builds} kernel builds ready in {:.2?}", b.device_description(), start.elapsed());
        Ok(b)
    });
    made.as_ref().ok().cloned()
}

fn report(what: &str, seed: u64, failures: &[String]) {
    for f in failures {
        println!("FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} {what} differ from the CPU (seed {seed}, replay with TANDEM_TEST_SEED)",
        failures.len()
    );
}

#[test]
fn every_op_matches_the_cpu() {
    let Some(backend) = backend() else { return };
    let seed = seed();
    println!("CUDA conformance on {}, seed {seed}", backend.device_description());
    report("op cases", seed, &check_backend(|| backend.clone(), seed));
}

#[test]
fn cuda_has_every_op() {
    let Some(backend) = backend() else { return };
    assert_eq!(missing_ops(&backend), Vec::<&str>::new(), "ops without a CUDA kernel");
}

#[test]
fn kernel_limits_match_the_cpu() {
    let Some(backend) = backend() else { return };
    let seed = seed();
    report("limit cases", seed, &check_cases(|| backend.clone(), &limit_cases(seed)));
}

#[test]
fn f16_matmul_and_attention_match_the_cpu() {
    let Some(backend) = backend() else { return };
    if backend.compute_capability() < 80 {
        println!("skipping the f16 builds: sm_{} has no mma.sync m16n8k16", backend.compute_capability());
        return;
    }
    let seed = seed();
    report("f16 cases", seed, &check_f16(&backend, seed));
}

#[test]
fn a_head_dim_beyond_the_kernel_is_an_error_not_a_crash() {
    let Some(backend) = backend() else { return };
    let (tokens, d) = (4, 256);
    let mut g = Graph::new("wide_heads");
    let q = g.input("q", TensorType::fixed(DType::F32, &[tokens, d]));
    let seg = g.input("segments", TensorType::fixed(DType::U32, &[1, 2]));
    let op =
        Op::Attention(Attention { num_heads: 1, num_kv_heads: 1, scale: 0.1, causal: false, bf16_products: false });
    let out = g.node1("attn", op, &[q, q, q, seg]).unwrap();
    g.output(out, "out");
    let session = Session::new(backend.clone(), g, &[]).unwrap();
    let inputs = [
        HostTensor::f32(vec![tokens, d], vec![0.5; tokens * d]).unwrap(),
        HostTensor::u32(vec![1, 2], vec![0, tokens as u32]).unwrap(),
    ];
    let err = session.run_blocking(&inputs).unwrap_err().to_string();
    assert!(err.contains("head dim 256") && err.contains("node 'attn'"), "{err}");
    // The device is still usable afterwards.
    assert!(backend.synchronize().is_ok());
    assert_eq!(backend.name(), "cuda");
}

#[test]
fn tiny_decoder_with_a_kv_cache_matches_the_f64_reference() {
    let Some(backend) = backend() else { return };
    let seed = seed();
    let report = tandem_tests::decoder::check_decoder(backend, seed, 20, 2e-3)
        .unwrap_or_else(|e| panic!("seed {seed} (replay with TANDEM_TEST_SEED): {e}"));
    println!("CUDA: {report:?}");
    assert_eq!(report.plans_after_first_decode, 0, "decode steps must reuse the first decode step's plan");
}
