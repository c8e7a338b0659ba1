//! Hostile guest: panics (a wasm `unreachable` trap) on every call.
use tandem_rules_sdk::*;

struct Boom;

impl Rule for Boom {
    fn check(input: &Input) -> Outcome {
        panic!("rule bug on item {}", input.item.id)
    }
}

export_rule!(Boom);
