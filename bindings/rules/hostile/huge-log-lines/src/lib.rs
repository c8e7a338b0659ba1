//! Hostile guest: logs 14 MiB lines (its memory cap is 16 MiB), as many as a
//! call may keep and more, then keeps the item. The host must keep each
//! line at its cut length, not pin 14 MiB per kept line.
use tandem_rules_sdk::*;

struct HugeLines;

impl Rule for HugeLines {
    fn check(_input: &Input) -> Outcome {
        let line = "x".repeat(14 << 20);
        for _ in 0..20 {
            log(Level::Warn, &line);
        }
        Outcome::keep()
    }
}

export_rule!(HugeLines);
