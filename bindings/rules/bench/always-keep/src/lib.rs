//! Bench fixture: does nothing, so its cost is the host's per-call overhead
//! (passing the input in, the verdict out, resetting fuel and deadline).
use tandem_rules_sdk::*;

struct AlwaysKeep;

impl Rule for AlwaysKeep {
    fn check(_input: &Input) -> Outcome {
        Outcome::keep()
    }
}

export_rule!(AlwaysKeep);
