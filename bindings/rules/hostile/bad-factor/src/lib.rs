//! Hostile guest: demotes by an invalid factor (NaN, then 5, then -1). The
//! host must reject the verdict rather than apply it.
use std::sync::atomic::{AtomicU32, Ordering};
use tandem_rules_sdk::*;

struct Inflate;

static CALLS: AtomicU32 = AtomicU32::new(0);

impl Rule for Inflate {
    fn check(_input: &Input) -> Outcome {
        let factor = match CALLS.fetch_add(1, Ordering::Relaxed) % 3 {
            0 => f32::NAN,
            1 => 5.0,
            _ => -1.0,
        };
        Outcome::demote(factor, "boost me")
    }
}

export_rule!(Inflate);
