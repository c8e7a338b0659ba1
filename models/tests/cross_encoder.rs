//! A cross-encoder (BertForSequenceClassification) against transformers: pair tokenization,
//! the encoder, the pooler and the classifier. No trained cross-encoder is reachable from
//! here, so the model is a tiny seeded random one with a tiny vocabulary, made with its
//! reference logits by `tests/reference/make_cross_encoder_reference.py`.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tandem_models::{BackendChoice, Embedder};

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    query: String,
    document: String,
    logit: f32,
}

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/tiny_cross_encoder")
}

fn check(backend: BackendChoice) {
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("scores.json")).unwrap()).unwrap();
    let model = Embedder::load_cross_encoder(&model_dir(), backend).unwrap();
    assert_eq!(model.dim(), 1, "one logit per pair");
    let pairs: Vec<(&str, &str)> = reference.cases.iter().map(|c| (c.query.as_str(), c.document.as_str())).collect();
    // All pairs in one packed batch, and one by one: packing must not change a score.
    let together = model.score_pairs(&pairs).unwrap();
    for (case, got) in reference.cases.iter().zip(&together) {
        let alone = model.score_pairs(&[(case.query.as_str(), case.document.as_str())]).unwrap();
        println!("{backend:?} {:?}: {} vs {}", case.query, got[0], case.logit);
        assert!(
            (got[0] - case.logit).abs() < 1e-4,
            "{:?} / {:?}: {} vs {}",
            case.query,
            case.document,
            got[0],
            case.logit
        );
        assert!((alone[0][0] - got[0]).abs() < 1e-5);
    }
}

#[test]
fn cross_encoder_matches_transformers_on_cpu() {
    check(BackendChoice::Cpu);
}

#[test]
fn cross_encoder_matches_transformers_on_wgpu() {
    check(BackendChoice::Wgpu);
}

#[test]
fn a_bi_encoder_folder_is_not_a_cross_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(model_dir().join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replace("BertForSequenceClassification", "BertModel"))
        .unwrap();
    let err = Embedder::load_cross_encoder(dir.path(), BackendChoice::Cpu).err().unwrap();
    assert!(format!("{err:#}").contains("BertForSequenceClassification"), "{err:#}");
}
