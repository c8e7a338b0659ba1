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
//!
//! The component targets `tandem:rules@0.2.0` and exports both `check` and
//! `check-batch`; the SDK implements the batch by calling `Rule::check` once
//! per item, so a rule only ever sees one [`Input`].

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

pub use bindings::tandem::rules::batch::Batch;
use bindings::tandem::rules::batch::PackedItem;
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

                fn check_batch(batch: $crate::Batch) -> ::std::vec::Vec<$crate::Outcome> {
                    $crate::check_batch(&batch, <$rule as $crate::Rule>::check)
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

/// Runs `check` on every item of `batch`, in order. One [`Input`] is filled in
/// place for each item, reusing the strings and lists of the previous one, so
/// that unpacking an item costs copies rather than allocations.
pub fn check_batch(batch: &Batch, check: impl Fn(&Input) -> Outcome) -> Vec<Outcome> {
    let mut input = Input {
        query: Query { text: String::new(), entities: Vec::new() },
        item: Item {
            id: String::new(),
            title: String::new(),
            attributes: Vec::new(),
            category_path: Vec::new(),
            price: None,
        },
        model: ModelView { score: 0.0, entity_scores: Vec::new() },
    };
    let mut strings = Strings { text: &batch.text, ends: batch.ends.iter(), start: 0 };
    let mut scores = batch.entity_scores.iter().copied();
    let query = &mut input.query;
    strings.next_into(&mut query.text);
    fill_list(&mut query.entities, batch.query_entities, new_entity, |e| {
        strings.next_into(&mut e.kind);
        strings.next_into(&mut e.value);
    });
    batch
        .items
        .iter()
        .map(|packed| {
            unpack_item(packed, &mut strings, &mut scores, &mut input);
            check(&input)
        })
        .collect()
}

/// Reads the next item of a batch into `input.item` and `input.model`.
fn unpack_item(
    packed: &PackedItem,
    strings: &mut Strings<'_>,
    scores: &mut impl Iterator<Item = f32>,
    input: &mut Input,
) {
    let item = &mut input.item;
    strings.next_into(&mut item.id);
    strings.next_into(&mut item.title);
    fill_list(&mut item.attributes, packed.attributes, new_attribute, |a| {
        strings.next_into(&mut a.name);
        strings.next_into(&mut a.value);
    });
    fill_list(&mut item.category_path, packed.category_segments, String::new, |s| strings.next_into(s));
    match (packed.price, &mut item.price) {
        (Some(amount), Some(price)) => {
            price.amount = amount;
            strings.next_into(&mut price.currency);
        }
        (Some(amount), None) => item.price = Some(Price { amount, currency: strings.next().into() }),
        (None, price) => *price = None,
    }
    let model = &mut input.model;
    model.score = packed.score;
    fill_list(&mut model.entity_scores, packed.entity_scores, new_entity_score, |s| {
        strings.next_into(&mut s.kind);
        strings.next_into(&mut s.value);
        s.score = scores.next().unwrap_or_default();
    });
}

/// The strings of a batch, in order. Past the end, or at an offset that is
/// not a character boundary (which a correct host never sends), they read as
/// empty rather than trapping.
struct Strings<'a> {
    text: &'a str,
    ends: std::slice::Iter<'a, u32>,
    start: usize,
}

impl Strings<'_> {
    fn next(&mut self) -> &str {
        let Some(&end) = self.ends.next() else { return "" };
        let (start, end) = (self.start, end as usize);
        self.start = end;
        self.text.get(start..end).unwrap_or_default()
    }

    /// Overwrites `target` with the next string, keeping its allocation.
    fn next_into(&mut self, target: &mut String) {
        target.clear();
        target.push_str(self.next());
    }
}

/// Makes `list` `len` long and fills each element with `fill`, reusing the
/// elements (and their strings) already there.
fn fill_list<T>(list: &mut Vec<T>, len: u32, new: impl FnMut() -> T, mut fill: impl FnMut(&mut T)) {
    list.truncate(len as usize);
    list.resize_with(len as usize, new);
    list.iter_mut().for_each(&mut fill);
}

fn new_entity() -> Entity {
    Entity { kind: String::new(), value: String::new() }
}

fn new_attribute() -> Attribute {
    Attribute { name: String::new(), value: String::new() }
}

fn new_entity_score() -> EntityScore {
    EntityScore { kind: String::new(), value: String::new(), score: 0.0 }
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
