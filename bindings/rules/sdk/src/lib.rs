//! Guest SDK for tandem rule plugins.
//!
//! A rule is a type implementing [`Rule`] plus one [`export_rule!`] line:
//!
//! ```ignore
//! use tandem_rules_sdk::*;
//!
//! struct NoRefurbished;
//!
//! impl Rule for NoRefurbished {
//!     fn check(input: &Input) -> Outcome {
//!         if normalize(&input.item.title).contains("refurbished") {
//!             Outcome::demote(0.5, "refurbished item").tag("refurbished")
//!         } else {
//!             Outcome::keep()
//!         }
//!     }
//! }
//!
//! export_rule!(NoRefurbished);
//! ```
//!
//! Build with `cargo build --release --target wasm32-unknown-unknown`, then
//! `wasm-tools component new` turns the core module into a component.

/// Bindings generated from `bindings/rules/wit/world.wit`. Most rules only need
/// the re-exports at the crate root.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "rule-plugin",
        pub_export_macro: true,
        export_macro_name: "export_rule_plugin",
        default_bindings_module: "tandem_rules_sdk::bindings",
    });
}

pub use bindings::tandem::rules::host::Level;
pub use bindings::tandem::rules::types::{
    Attribute, Demotion, Entity, EntityScore, Input, Item, ModelView, Outcome, Price, Query, Verdict,
};

/// A relevance rule. `check` is called once per query-item pair; it may keep
/// state in statics (an instance lives across many calls) but must not rely
/// on the order of calls.
pub trait Rule {
    fn check(input: &Input) -> Outcome;
}

/// Exports a [`Rule`] implementation as the component's `tandem:rules/rule`.
#[macro_export]
macro_rules! export_rule {
    ($rule:ty) => {
        const _: () = {
            struct __TandemRuleExport;

            impl $crate::bindings::exports::tandem::rules::rule::Guest for __TandemRuleExport {
                fn check(input: $crate::Input) -> $crate::Outcome {
                    <$rule as $crate::Rule>::check(&input)
                }
            }

    $crate::bindings::export_rule_plugin!(__TandemRuleExport with_types_in $crate::bindings);
        };
    };
}

impl Outcome {
    /// No objection.
    pub fn keep() -> Self {
        Outcome { verdict: Verdict::Keep, tags: Vec::new() }
    }

    /// Multiply the model score by `factor` (the host accepts (0, 1]).
    pub fn demote(factor: f32, reason: impl Into<String>) -> Self {
        Outcome { verdict: Verdict::Demote(Demotion { factor, reason: reason.into() }), tags: Vec::new() }
    }

    /// Remove the item.
    pub fn veto(reason: impl Into<String>) -> Self {
        Outcome { verdict: Verdict::Veto(reason.into()), tags: Vec::new() }
    }

    /// Adds an analytics tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

impl Query {
    /// Values of the query entities of `kind` (compared case-insensitively).
    pub fn entities<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entities.iter().filter(move |e| e.kind.eq_ignore_ascii_case(kind)).map(|e| e.value.as_str())
    }

    /// The first query entity of `kind`.
    pub fn entity(&self, kind: &str) -> Option<&str> {
        self.entities.iter().find(|e| e.kind.eq_ignore_ascii_case(kind)).map(|e| e.value.as_str())
    }
}

impl Item {
    /// The first attribute called `name` (compared case-insensitively).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|a| a.name.eq_ignore_ascii_case(name)).map(|a| a.value.as_str())
    }
}

impl ModelView {
    /// The model's QE score for the query entity `kind`/`value`, if it gave one.
    pub fn entity_score(&self, kind: &str, value: &str) -> Option<f32> {
        self.entity_scores
            .iter()
            .find(|s| s.kind.eq_ignore_ascii_case(kind) && s.value.eq_ignore_ascii_case(value))
            .map(|s| s.score)
    }
}

/// Looks `key` up in the operator-configured table `table`.
pub fn lookup(table: &str, key: &str) -> Option<String> {
    bindings::tandem::rules::host::lookup(table, key)
}

/// Logs through the host (rate limited there; excess messages are dropped).
pub fn log(level: Level, message: &str) {
    bindings::tandem::rules::host::log(level, message)
}

/// Lowercases and reduces every run of non-alphanumeric characters to one
/// space, so "Apple, Inc." and "apple inc" compare equal.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in words(text) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// Splits `text` into its alphanumeric words, keeping case.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty())
}

/// Parses a number such as "49.99", "$50" or "1,299" (currency signs and
/// thousands separators ignored).
pub fn parse_amount(text: &str) -> Option<f64> {
    let cleaned: String = text.chars().filter(|c| c.is_ascii_digit() || *c == '.').collect();
    cleaned.parse().ok().filter(|v: &f64| v.is_finite())
}
