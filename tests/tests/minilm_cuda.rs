//! MiniLM parity on CUDA: all-MiniLM-L6-v2's embeddings of the reference texts, all in one
//! packed batch on the GPU, against sentence-transformers (cosine >= 0.9999 per text) and
//! against the CPU backend on the same weights. Skips, saying why, without a GPU or without
//! the model, or fails instead with TANDEM_REQUIRE_CUDA=1. Where the model and the reference
//! come from: tandem_tests::minilm.

#![cfg(feature = "cuda")]

use tandem_runtime::backend::Backend;
use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::backend::cuda::{CudaBackend, cuda_available};
use tandem_tests::minilm::{self, MIN_COSINE, MiniLm};

#[test]
fn minilm_on_cuda_matches_sentence_transformers_and_the_cpu() {
    // TANDEM_REQUIRE_CUDA=1 (the GPU bundle sets it) turns a skip into a failure.
    let skip = |why: String| {
        if std::env::var("TANDEM_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
            panic!("TANDEM_REQUIRE_CUDA=1 but MiniLM on CUDA cannot run: {why}");
        }
        println!("skipping MiniLM on CUDA: {why}");
    };
    if let Err(e) = cuda_available() {
        return skip(e);
    }
    let dir = match minilm::model_dir() {
        Ok(d) => d,
        Err(e) => return skip(e),
    };
    let reference = minilm::load_reference(&minilm::reference_path()).unwrap();
    let model = MiniLm::load(&dir).unwrap();
    assert_eq!(model.dim, reference.dim);
    let texts: Vec<&str> = reference.inputs.iter().map(|r| r.text.as_str()).collect();
    let batch = model.batch(&texts).unwrap();

    let cuda = model.session(CudaBackend::new(0).unwrap()).unwrap();
    let got = model.embed(&cuda, &batch).unwrap();
    let cpu = model.embed(&model.session(CpuBackend::new()).unwrap(), &batch).unwrap();

    let to_reference = minilm::cosines(&reference, &batch, &got).unwrap();
    let mut failures = Vec::new();
    for ((r, c), (g, w)) in reference.inputs.iter().zip(&to_reference).zip(got.iter().zip(&cpu)) {
        let to_cpu = f64::from(tandem_models::cosine(g, w));
        if *c < MIN_COSINE || to_cpu < MIN_COSINE {
            failures.push(format!("{:?}: cosine {c:.7} to the reference, {to_cpu:.7} to the CPU", r.text));
        }
    }
    let worst = to_reference.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "MiniLM on {}: {} texts, {} tokens, worst cosine to the reference {worst:.7}",
        cuda.backend().device_description(),
        batch.len(),
        batch.tokens()
    );
    assert!(failures.is_empty(), "{} texts below {MIN_COSINE}:\n{}", failures.len(), failures.join("\n"));
}
