//! Hostile guest: panics (a wasm `unreachable` trap) on every item, except
//! those whose id starts with "ok-" (so that a batch test can mix the two).
use tandem_rules_sdk::*;

struct Boom;

impl Rule for Boom {
    fn check(input: &Input) -> Outcome {
        if input.item.id.starts_with("ok-") {
            return Outcome::keep();
        }
        panic!("rule bug on item {}", input.item.id)
    }
}

export_rule!(Boom);
