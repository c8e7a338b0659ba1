//! `tandem serve`'s JSON request bodies: the first line names the route (/embed, /rerank,
//! /relevance, /v1/chat/completions, ...), the rest is the body, checked as the route's
//! handler checks it before its model (`tandem::serve::fuzzing::check_body`). A refusal must
//! be a 4xx: a 5xx would blame the server for a client's body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::serve::fuzzing::{ROUTES, check_body};

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == b'\n') else { return };
    let Some(route) = std::str::from_utf8(&data[..split]).ok().and_then(|r| ROUTES.iter().find(|&&k| k == r)) else {
        return;
    };
    if let Err((status, message)) = check_body(route, &data[split + 1..]) {
        assert!((400..500).contains(&status), "{route}: {status} {message}");
    }
});
