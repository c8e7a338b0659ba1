//! LoRA adapters in PEFT's format on the real all-MiniLM-L6-v2: tandem's unmerged (fused
//! `LoraMatMul`) and merged forms against PEFT's, and against each other.
//!
//! The adapter (rank 4, alpha 8, on every layer's query, value and intermediate dense, with
//! seeded random A and B) and PEFT's embeddings are made by
//! `tests/reference/make_minilm_lora_reference.py`; the test needs only the model in the cache
//! (`tandem fetch minilm`) and skips, saying so, when it is not there.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tandem_models::lora::{LoraAdapter, LoraMode};
use tandem_models::registry::known_model;
use tandem_models::{BackendChoice, Embedder, fetch};

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    unmerged: Vec<f32>,
    merged: Vec<f32>,
    base: Vec<f32>,
}

/// Largest component difference allowed against PEFT: the MiniLM parity test sees 4.6e-7
/// without an adapter; the reference is rounded to 7 digits.
const TOLERANCE: f32 = 2e-6;

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

fn adapter_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/minilm_lora")
}

fn reference() -> Reference {
    serde_json::from_str(&std::fs::read_to_string(adapter_dir().join("embeddings.json")).unwrap()).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn embed(dir: &Path, mode: LoraMode, backend: BackendChoice, texts: &[&str]) -> Vec<Vec<f32>> {
    Embedder::load_with_adapter(dir, &adapter_dir(), mode, backend).unwrap().embed(texts).unwrap()
}

fn check(backend: BackendChoice, modes: &[LoraMode]) {
    let Some(dir) = cached_minilm() else { return };
    let reference = reference();
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    for &mode in modes {
        let got = embed(&dir, mode, backend, &texts);
        for (case, got) in reference.cases.iter().zip(&got) {
            let want = if mode == LoraMode::Merged { &case.merged } else { &case.unmerged };
            let diff = max_diff(got, want);
            println!("{backend:?} {mode:?} {:?}: max |diff| {diff:.2e}", case.text);
            assert!(diff <= TOLERANCE, "{backend:?} {mode:?} {:?}: max |diff| {diff:.2e}", case.text);
            // The adapter changes the embedding far beyond the tolerance: the test would see
            // an adapter that was not applied.
            assert!(max_diff(got, &case.base) > 100.0 * TOLERANCE, "{:?}: the adapter had no effect", case.text);
        }
    }
}

#[test]
fn unmerged_and_merged_match_peft_on_cpu() {
    check(BackendChoice::Cpu, &[LoraMode::Unmerged, LoraMode::Merged]);
}

/// The fused op's WGSL on lavapipe.
#[test]
fn unmerged_matches_peft_on_wgpu() {
    check(BackendChoice::Wgpu, &[LoraMode::Unmerged]);
}

#[test]
fn merged_equals_unmerged() {
    let Some(dir) = cached_minilm() else { return };
    let texts = ["red running shoes", "a", "organic cotton crew-neck t-shirt, women's, heather grey, medium"];
    let unmerged = embed(&dir, LoraMode::Unmerged, BackendChoice::Cpu, &texts);
    let merged = embed(&dir, LoraMode::Merged, BackendChoice::Cpu, &texts);
    for (u, m) in unmerged.iter().zip(&merged) {
        assert!(max_diff(u, m) <= 1e-6, "merged and unmerged differ by {:.2e}", max_diff(u, m));
    }
    // The unmerged graph runs the fused op; the merged one is the base graph.
    let unmerged = Embedder::load_with_adapter(&dir, &adapter_dir(), LoraMode::Unmerged, BackendChoice::Cpu).unwrap();
    let ops = |e: &Embedder| e.graph().nodes.iter().filter(|n| n.op.kind().name() == "lora_matmul").count();
    assert_eq!(ops(&unmerged), 18, "6 layers × query, value, intermediate");
    let merged = Embedder::load_with_adapter(&dir, &adapter_dir(), LoraMode::Merged, BackendChoice::Cpu).unwrap();
    assert_eq!(ops(&merged), 0);
}

#[test]
fn bad_adapters_are_refused_naming_what_is_wrong() {
    let Some(dir) = cached_minilm() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let copy = |config: &str| {
        std::fs::write(tmp.path().join("adapter_config.json"), config).unwrap();
        std::fs::copy(adapter_dir().join("adapter_model.safetensors"), tmp.path().join("adapter_model.safetensors"))
            .unwrap();
    };
    let load = || {
        Embedder::load_with_adapter(&dir, tmp.path(), LoraMode::Unmerged, BackendChoice::Cpu)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    };
    assert!(load().contains("adapter_config.json"), "{}", load());
    copy(r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true}"#);
    assert!(load().contains("use_dora"), "{}", load());
    // A rank that disagrees with the tensors.
    copy(r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 8}"#);
    assert!(load().contains("expected [8, in]"), "{}", load());
    copy("not json");
    assert!(load().contains("adapter_config.json"), "{}", load());
    // An adapter for another model: its modules are not in the base.
    let config = std::fs::read_to_string(adapter_dir().join("adapter_config.json")).unwrap();
    copy(&config);
    let adapter = LoraAdapter::load(tmp.path()).unwrap();
    assert_eq!(adapter.modules.len(), 18);
    assert_eq!(adapter.scale, 2.0);
    let renamed: Vec<(String, tandem_runtime::HostTensor)> = adapter
        .modules
        .iter()
        .flat_map(|(m, t)| {
            let m = m.replace("encoder.layer", "decoder.block");
            [(format!("{m}.lora_A.weight"), t.a.clone()), (format!("{m}.lora_B.weight"), t.b.clone())]
        })
        .collect();
    tandem_runtime::graph::Weights::write(&tmp.path().join("adapter_model.safetensors"), &renamed).unwrap();
    assert!(load().contains("no tensor 'decoder.block.0"), "{}", load());
}
