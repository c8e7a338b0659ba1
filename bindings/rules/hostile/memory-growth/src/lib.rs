//! Hostile guest: allocates without end. Stopped by the store's memory cap.
use tandem_rules_sdk::*;

struct Hoard;

impl Rule for Hoard {
    fn check(_input: &Input) -> Outcome {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Reserved, not written: growth is cheap, so the cap is reached
            // long before the fuel runs out.
            let block = Vec::with_capacity(1 << 20);
            hoard.push(std::hint::black_box(block));
        }
    }
}

export_rule!(Hoard);
