//! safetensors weights: the header, then every tensor read as f32 (the conversions the
//! loaders use).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tandem_runtime::DType;
use tandem_runtime::graph::Weights;

fuzz_target!(|data: &[u8]| {
    let Ok(weights) = Weights::from_bytes(Path::new("fuzz.safetensors"), data.to_vec()) else { return };
    for name in weights.names().to_vec() {
        let _ = weights.shape(&name);
        let _ = weights.tensor(&name, DType::F32);
    }
});
