//! Hostile guest: imports a host function the rule world does not have. The
//! host must refuse to load it, naming the import.
wit_bindgen::generate!({ path: ["../../wit/0.1.0", "wit"], world: "hostile:unknown-import/plugin", generate_all });

use exports::tandem::rules::rule::Guest;
use tandem::rules::types::{Input, Outcome, Verdict};

struct Phone;

impl Guest for Phone {
    fn check(input: Input) -> Outcome {
        let handle = hostile::unknown_import::socket::connect(&input.item.id);
        Outcome { verdict: Verdict::Veto(format!("connected {handle}")), tags: Vec::new() }
    }
}

export!(Phone);
