//! The legacy (non-zip) torch checkpoint reader: a bounded pickle machine and the tensor
//! storages after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_runtime::weights::torch::{Limits, parse};

fuzz_target!(|data: &[u8]| {
    let _ = parse(data, &Limits::default());
});
