//! Hostile guest: recurses without end. Stopped by the wasm stack limit.
use tandem_rules_sdk::*;

struct Deep;

#[inline(never)]
#[allow(unconditional_recursion, reason = "the point of this guest")]
fn descend(depth: u64, pad: [u64; 4]) -> u64 {
    // Using the result after the call prevents a tail call / loop rewrite.
    let next = std::hint::black_box([pad[0] + 1, pad[1], pad[2], pad[3]]);
    descend(depth + 1, next).wrapping_add(std::hint::black_box(depth))
}

impl Rule for Deep {
    fn check(input: &Input) -> Outcome {
        let depth = descend(input.item.title.len() as u64, [0; 4]);
        Outcome::veto(format!("unreachable {depth}"))
    }
}

export_rule!(Deep);
