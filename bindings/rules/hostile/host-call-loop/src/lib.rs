//! Hostile guest: loops forever on host calls with a 1 MiB argument. Each
//! iteration burns little fuel but real host time, so only the wall-clock
//! deadline stops it soon; it must stop whoever holds the host handle.
use tandem_rules_sdk::*;

struct HostCallLoop;

impl Rule for HostCallLoop {
    fn check(_input: &Input) -> Outcome {
        let key = "k".repeat(1 << 20);
        loop {
            std::hint::black_box(lookup("brand-aliases", &key));
        }
    }
}

export_rule!(HostCallLoop);
