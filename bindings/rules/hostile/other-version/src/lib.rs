//! Hostile guest: targets tandem:rules@0.3.0, which the host does not speak.
wit_bindgen::generate!({ path: "wit", world: "tandem:rules/rule-plugin@0.3.0" });

use exports::tandem::rules::rule::Guest;

struct Future;

impl Guest for Future {
    fn check(query: String, title: String) -> u8 {
        (query.len() + title.len()) as u8
    }
}

export!(Future);
