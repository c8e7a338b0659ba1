//! Every tensor of the two real GGUF files dequantizes exactly as gguf-py's
//! `quants.dequantize` does: the sha256 of each tensor's little-endian f32 values, its GGUF
//! type and row-major shape are in tests/reference/gguf_dequant_<model>.json, made by
//! tests/reference/make_gguf_dequant_reference.py. The files live in the model cache (where
//! `tandem fetch smollm2` / `tandem fetch qwen2.5-coder-0.5b` put them); without them the test
//! says so and skips.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use tandem_models::fetch::cache_root;
use tandem_runtime::weights::Gguf;

#[derive(serde::Deserialize)]
struct Reference {
    file: String,
    file_sha256: String,
    tensors: BTreeMap<String, Expected>,
}

#[derive(serde::Deserialize)]
struct Expected {
    #[serde(rename = "type")]
    ty: String,
    shape: Vec<usize>,
    sha256: String,
}

fn digest(values: &[f32]) -> String {
    let mut h = Sha256::new();
    values.iter().for_each(|v| h.update(v.to_le_bytes()));
    format!("{:x}", h.finalize())
}

fn check(model: &str) {
    let json = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/reference/gguf_dequant_{model}.json"));
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let path = cache_root().unwrap().join("models").join(model).join(&reference.file);
    if !path.is_file() {
        eprintln!("skipped: {} is not in the cache (run `tandem fetch {model}`)", path.display());
        return;
    }
    let file = Gguf::open(&path).unwrap();
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    let mut expected_names: Vec<&str> = reference.tensors.keys().map(String::as_str).collect();
    let mut sorted = names.clone();
    sorted.sort();
    expected_names.sort();
    assert_eq!(
        sorted, expected_names,
        "{model}: the tensor lists differ (file sha256 should be {})",
        reference.file_sha256
    );
    for info in file.tensors() {
        let expected = &reference.tensors[&info.name];
        assert!(
            info.dtype.name().eq_ignore_ascii_case(&expected.ty),
            "{}: {} vs {}",
            info.name,
            info.dtype,
            expected.ty
        );
        assert_eq!(info.shape(), expected.shape, "{}", info.name);
        let values = file.tensor_f32(&info.name).unwrap();
        assert_eq!(
            digest(values.as_f32().unwrap()),
            expected.sha256,
            "{model}: tensor '{}' differs from gguf-py",
            info.name
        );
    }
    eprintln!("{model}: {} tensors equal gguf-py's bit for bit", names.len());
}

#[test]
fn smollm2_dequantizes_as_gguf_py() {
    check("smollm2");
}

#[test]
fn qwen2_5_coder_dequantizes_as_gguf_py() {
    check("qwen2.5-coder-0.5b");
}
