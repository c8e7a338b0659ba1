//! Dequantization equals gguf-py's (`gguf.quants.dequantize`) bit for bit on random blocks of
//! every supported type: every bit pattern of the quants, random finite f16 scales (subnormal,
//! negative and large ones included). The blocks and the sha256 of gguf-py's little-endian f32
//! output are in tests/reference/gguf_random_blocks.json, made by
//! tests/reference/make_gguf_dequant_reference.py.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use tandem_runtime::DType;
use tandem_runtime::weights::quant::{dequantize, dequantize_row};

#[derive(serde::Deserialize)]
struct Reference {
    types: BTreeMap<String, Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    bytes: String,
    values: usize,
    sha256: String,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn digest(values: &[f32]) -> String {
    let mut h = Sha256::new();
    values.iter().for_each(|v| h.update(v.to_le_bytes()));
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn random_blocks_match_gguf_py_bit_for_bit() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/gguf_random_blocks.json");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut seen = Vec::new();
    for (name, case) in &reference.types {
        let dtype = DType::from_name(name).unwrap_or_else(|| panic!("unknown type {name}"));
        let bytes = unhex(&case.bytes);
        let mut out = vec![0f32; case.values];
        dequantize(dtype, &bytes, &mut out).unwrap();
        assert_eq!(digest(&out), case.sha256, "{name}: tandem differs from gguf-py");
        // Row by row (two blocks a row) gives the same values.
        let k = 2 * dtype.block().values;
        let mut row = vec![0f32; k];
        for r in 0..case.values / k {
            dequantize_row(dtype, &bytes, r, k, &mut row).unwrap();
            assert_eq!(row.as_slice(), &out[r * k..(r + 1) * k], "{name} row {r}");
        }
        seen.push(dtype);
    }
    // Every float type a GGUF tensor can have here, except f32 (a copy).
    let expected: Vec<DType> = DType::ALL.into_iter().filter(|d| !matches!(d, DType::F32 | DType::U32)).collect();
    seen.sort_by_key(|d| d.code());
    assert_eq!(seen, expected);
}
