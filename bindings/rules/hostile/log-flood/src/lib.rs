//! Hostile guest: logs a million long messages, then keeps the item. The host's
//! rate limit must drop the excess; fuel bounds the time spent trying.
use tandem_rules_sdk::*;

struct Chatty;

impl Rule for Chatty {
    fn check(_input: &Input) -> Outcome {
        let message = "spam ".repeat(10_000);
        for _ in 0..1_000_000 {
            log(Level::Info, &message);
        }
        Outcome::keep()
    }
}

export_rule!(Chatty);
