//! `tandem inspect` on each kind of model file, readable and `--json`, and on bad files (one
//! `error:` line, exit code 1).

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use tandem_runtime::graph::{Weights, write_graph_file};
use tandem_runtime::weights::gguf::{self, MetaArray, MetaValue};
use tandem_runtime::{DType, Graph, HostTensor, TensorData, TensorType};

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem")).args(args).output().expect("run tandem")
}

fn ok_json(file: &Path) -> Value {
    let out = tandem(&["inspect", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ok_text(file: &Path) -> String {
    let out = tandem(&["inspect", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn assert_error(file: &Path, needles: &[&str]) {
    let out = tandem(&["inspect", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} not in {}", lines[0]);
    }
}

fn q4_k(rows: usize) -> HostTensor {
    let bytes: Vec<u8> = (0..rows * 144).map(|i| (i % 200) as u8).collect();
    HostTensor::new(vec![rows, 256], TensorData::from_bytes(DType::Q4_K, &bytes).unwrap()).unwrap()
}

#[test]
fn gguf_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let vocab: Vec<String> = (0..1000).map(|i| format!("tok{i}")).collect();
    let metadata = vec![
        ("general.architecture".to_string(), MetaValue::String("llama".into())),
        ("llama.block_count".to_string(), MetaValue::U32(2)),
        ("tokenizer.ggml.tokens".to_string(), MetaValue::Array(MetaArray::String(vocab))),
        ("small".to_string(), MetaValue::Array(MetaArray::I32(vec![1, 2]))),
    ];
    let tensors = vec![
        ("blk.0.attn_q.weight".to_string(), q4_k(3)),
        ("output_norm.weight".to_string(), HostTensor::f32(vec![4], vec![1.0; 4]).unwrap()),
    ];
    std::fs::write(&path, gguf::to_bytes(&metadata, &tensors, 32).unwrap()).unwrap();

    let j = ok_json(&path);
    assert_eq!(
        (j["format"].as_str(), j["version"].as_u64(), j["architecture"].as_str()),
        (Some("gguf"), Some(3), Some("llama"))
    );
    assert_eq!(j["metadata"]["llama.block_count"], 2);
    assert_eq!(j["metadata"]["tokenizer.ggml.tokens"], serde_json::json!({"array": "string", "len": 1000}));
    assert_eq!(j["metadata"]["small"], serde_json::json!([1, 2]));
    assert_eq!(
        j["tensors"][0],
        serde_json::json!({"name": "blk.0.attn_q.weight", "dtype": "q4_k", "shape": [3, 256], "bytes": 432})
    );
    assert_eq!(j["total"], serde_json::json!({"tensors": 2, "bytes": 448}));

    let text = ok_text(&path);
    assert!(text.contains("architecture: llama"), "{text}");
    assert!(text.contains("tokenizer.ggml.tokens = [string × 1000]"), "{text}");
    assert!(!text.contains("tok999"), "the vocabulary is abbreviated");
    assert!(text.contains("blk.0.attn_q.weight  q4_k    [3, 256]  432 bytes"), "{text}");
    assert!(text.contains("total: 2 tensors, 448 bytes"), "{text}");

    // Truncated in the data section, and not a model file at all.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    assert_error(&path, &["m.gguf", "tensor 'output_norm.weight' spans"]);
    std::fs::write(&path, b"hello, world, this is text").unwrap();
    assert_error(&path, &["m.gguf: not a GGUF, safetensors, tandem graph or legacy torch file"]);
    assert_error(&dir.path().join("missing.gguf"), &["missing.gguf"]);
}

#[test]
fn safetensors_and_graph_files() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    let tensors =
        vec![("w".to_string(), q4_k(2)), ("b".to_string(), HostTensor::f32(vec![2, 3], vec![0.0; 6]).unwrap())];
    Weights::write(&weights, &tensors).unwrap();
    let j = ok_json(&weights);
    assert_eq!(j["format"], "safetensors");
    let names: Vec<&str> = j["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["b", "w"]);
    assert_eq!(j["tensors"][1], serde_json::json!({"name": "w", "dtype": "q4_k", "shape": [2, 256], "bytes": 288}));
    assert_eq!(j["total"]["bytes"], 288 + 24);

    let mut g = Graph::new("tiny");
    let w = g.weight("w", TensorType::fixed(DType::Q4_K, &[2, 256]));
    g.output(w, "y");
    let graph = dir.path().join("g.tgraph");
    write_graph_file(&g, &graph).unwrap();
    let text = ok_text(&graph);
    assert!(text.contains("tandem graph") && text.contains("name: tiny"), "{text}");
    // The weight is also the output, which names the value.
    assert!(text.contains("y  q4_k    [2, 256]  288 bytes"), "{text}");

    let bytes = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &bytes[..bytes.len() - 3]).unwrap();
    assert_error(&graph, &["g.tgraph", "truncated or corrupt"]);
}

/// The real MobileNetV2 checkpoint, when it is in the cache.
#[test]
fn legacy_torch_checkpoint() {
    let Ok(dir) = tandem_models::registry::known_model("mobilenetv2").and_then(tandem_models::fetch::model_dir) else {
        return;
    };
    let path = dir.join("mobilenet_v2-b0353104.pth");
    if !path.is_file() {
        eprintln!("skipped: {} is not in the cache", path.display());
        return;
    }
    let j = ok_json(&path);
    assert_eq!(j["format"], "legacy torch checkpoint");
    assert_eq!(
        j["tensors"][0],
        serde_json::json!({"name": "features.0.0.weight", "dtype": "f32", "shape": [32, 3, 3, 3], "bytes": 3456})
    );
}
