//! Compatibility fixture (not hostile): a rule built against tandem:rules@0.1.1.
//! Its wit/world.wit is the published world with only the version changed (a
//! host test checks that), and a 0.1.0 host must accept it: same minor version.
wit_bindgen::generate!({ path: "wit", world: "tandem:rules/rule-plugin@0.1.1" });

use exports::tandem::rules::rule::Guest;
use tandem::rules::types::{Input, Outcome, Verdict};

struct Newer;

impl Guest for Newer {
    fn check(input: Input) -> Outcome {
        tandem::rules::host::log(tandem::rules::host::Level::Info, "hello from 0.1.1");
        let verdict = match tandem::rules::host::lookup("verdicts", &input.item.id) {
            Some(reason) => Verdict::Veto(reason),
            None => Verdict::Keep,
        };
        Outcome { verdict, tags: vec!["v0.1.1".to_string()] }
    }
}

export!(Newer);
