//! Parity with sentence-transformers on the real all-MiniLM-L6-v2, on the CPU and wgpu.
//!
//! The reference (`tests/reference/minilm_embeddings.json`) is made by
//! `tests/reference/make_minilm_reference.py`; this test needs only the model in the cache
//! (`tandem fetch minilm`) and skips, saying so, when it is not there.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tandem_models::registry::known_model;
use tandem_models::{BackendChoice, Embedder, Precision, cosine, fetch};

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    dim: usize,
    inputs: Vec<ReferenceInput>,
}

#[derive(Deserialize)]
struct ReferenceInput {
    text: String,
    tokens: usize,
    untruncated_tokens: usize,
    embedding: Vec<f32>,
}

/// Per-input floor, in float64 cosine.
const MIN_COSINE: f64 = 0.9999;

/// The floor with the linear layers in bf16 (`--precision bf16`): weights rounded to 8
/// significant bits, and on a CPU with AVX-512 BF16 the activations too.
const MIN_COSINE_BF16: f64 = 0.999;

fn cached_minilm() -> Option<PathBuf> {
    let model = known_model("minilm").unwrap();
    let dir = fetch::model_dir(model).ok()?;
    if fetch::is_complete(&dir, model) {
        Some(dir)
    } else {
        eprintln!("skipped: minilm is not in the cache at {} (run `tandem fetch minilm`)", dir.display());
        None
    }
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/minilm_embeddings.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn minilm_matches_sentence_transformers_on_cpu() {
    check_parity(BackendChoice::Cpu, Precision::F32, MIN_COSINE);
}

/// bf16 products where the CPU has AVX-512 BF16 (else bf16 weights widened to f32: the
/// device line printed says which ISA ran).
#[test]
fn minilm_in_bf16_stays_close_to_sentence_transformers_on_cpu() {
    check_parity(BackendChoice::Cpu, Precision::Bf16, MIN_COSINE_BF16);
}

/// On lavapipe (CI's Vulkan on the CPU) this takes tens of seconds: it is the same graph and
/// the same WGSL a real GPU or a browser runs.
#[test]
fn minilm_matches_sentence_transformers_on_wgpu() {
    check_parity(BackendChoice::Wgpu, Precision::F32, MIN_COSINE);
}

fn check_parity(backend: BackendChoice, precision: Precision, min_cosine: f64) {
    let Some(dir) = cached_minilm() else { return };
    let reference = reference();
    assert!(reference.inputs.len() >= 48);
    let (embedder, variant) = Embedder::load_adapted(&dir, None, backend, precision).unwrap();
    assert_eq!(variant, if precision == Precision::F32 { "" } else { "+bf16" }, "the model id's suffix");
    assert_eq!(embedder.max_tokens(), reference.max_seq_length, "truncation limit (sentence_bert_config.json)");
    assert_eq!(embedder.dim(), reference.dim);

    // All inputs in one packed batch, long and short together.
    let texts: Vec<&str> = reference.inputs.iter().map(|r| r.text.as_str()).collect();
    let got = embedder.embed_with_counts(&texts).unwrap();
    let mut worst = (f64::INFINITY, "");
    let mut max_abs_diff = 0.0f32;
    let mut failures = Vec::new();
    for (r, g) in reference.inputs.iter().zip(&got) {
        assert_eq!(g.tokens, r.tokens, "tokens of {:?}", r.text);
        // The server's single pass (its limit check, then the same ids to embed) agrees.
        let counted = embedder.tokenize_counted(&r.text).unwrap();
        assert_eq!(counted.untruncated, r.untruncated_tokens, "untruncated tokens of {:?}", r.text);
        assert_eq!(counted.tokens.len(), r.tokens, "tokens of {:?}", r.text);
        let c = f64::from(cosine(&g.vector, &r.embedding));
        max_abs_diff = g.vector.iter().zip(&r.embedding).map(|(a, b)| (a - b).abs()).fold(max_abs_diff, f32::max);
        if c < worst.0 {
            worst = (c, &r.text);
        }
        if c < min_cosine {
            failures.push(format!("{:?}: cosine {c:.7}", r.text));
        }
    }
    let shown: String = worst.1.chars().take(60).collect();
    println!(
        "{backend:?} {precision} ({}): min cosine vs sentence-transformers over {} inputs: {:.9} (1 - min = {:.1e}, \
         at {shown:?}); max |difference| of a component: {max_abs_diff:.1e}",
        embedder.device().description(),
        got.len(),
        worst.0,
        1.0 - worst.0
    );
    assert!(failures.is_empty(), "below {min_cosine}: {failures:#?}");

    // Packing must not leak between texts: each alone gives what it gave in the batch (in
    // bf16 too: with the weights' AMX tiles kept, a text alone takes the tiles as the batch
    // does, and each row's sums run in one order in any product).
    let same = 0.999_999;
    for (i, text) in texts.iter().enumerate().step_by(7) {
        let alone = embedder.embed(&[text]).unwrap().remove(0);
        let c = f64::from(cosine(&alone, &got[i].vector));
        assert!(c > same, "{text:?} alone vs in a batch: cosine {c}");
    }
}

/// The truncation finding: tokenizer.json says 128, sentence-transformers uses 256.
#[test]
fn minilm_truncates_at_sentence_transformers_max_seq_length() {
    let Some(dir) = cached_minilm() else { return };
    let tokenizer_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(tokenizer_json["truncation"]["max_length"], 128);
    let reference = reference();
    assert!(reference.inputs.iter().any(|r| r.tokens > 128 && r.tokens < 256), "an input between the two limits");
    assert!(reference.inputs.iter().any(|r| r.untruncated_tokens > 256 && r.tokens == 256));
}
