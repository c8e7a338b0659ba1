//! PNG and JPEG decoding (what `tandem classify` and the server's image paths take from
//! outside), with the decoder limits tandem sets.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tandem_models::vision::decode::decode_rgb8(data);
});
