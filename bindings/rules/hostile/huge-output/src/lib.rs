//! Hostile guest: answers with megabytes (a 4 MiB reason and 100,000 tags).
//! The host must cap what it accepts instead of passing it on.
use tandem_rules_sdk::*;

struct Flood;

impl Rule for Flood {
    fn check(_input: &Input) -> Outcome {
        let mut outcome = Outcome::veto("x".repeat(4 << 20));
        outcome.tags = (0..100_000).map(|i| format!("tag-{i}")).collect();
        outcome
    }
}

export_rule!(Flood);
