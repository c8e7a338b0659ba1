//! Hostile guest: never returns. Stopped by fuel or the epoch deadline.
use tandem_rules_sdk::*;

struct Spin;

impl Rule for Spin {
    fn check(input: &Input) -> Outcome {
        let mut n = input.item.title.len() as u64;
        loop {
            // black_box keeps the optimiser from proving the loop has no effect.
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export_rule!(Spin);
