//! The GGUF reader: header, metadata of every value type, tensor infos and the data
//! section, all bounded by the input's size; and every tensor dequantized.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = tandem_runtime::weights::Gguf::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) else { return };
    let names: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
    for name in names {
        let _ = file.tensor_f32(&name);
    }
});
