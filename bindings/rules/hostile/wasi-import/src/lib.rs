//! Hostile guest: imports WASI (to read the host's environment). The host
//! provides no WASI, so loading must fail with an error naming the import.
wit_bindgen::generate!({ path: ["../../wit/0.1.0", "wit"], world: "hostile:wasi-import/plugin", generate_all });

use exports::tandem::rules::rule::Guest;
use tandem::rules::types::{Input, Outcome, Verdict};

struct Snoop;

impl Guest for Snoop {
    fn check(_input: Input) -> Outcome {
        let env = wasi::cli::environment::get_environment();
        Outcome { verdict: Verdict::Veto(format!("saw {} environment variables", env.len())), tags: Vec::new() }
    }
}

export!(Snoop);
