//! Category mismatch: the query asks for a category that is nowhere on the
//! item's taxonomy path ("running shoes" vs Electronics > Audio > Headphones).
//!
//! The query category matches when its head noun (the last word: "running
//! shoes" -> "shoe") is a word of the path. Words are compared singularised,
//! and the operator's `category-aliases` table maps shopper words to taxonomy
//! words ("sneakers" -> "shoes"). When the
//! model's own QE score for the category is high the rule trusts the model:
//! the taxonomy may simply be coarser than the query.

use tandem_rules_sdk::*;

struct CategoryMismatch;

const ALIASES: &str = "category-aliases";
/// QE score at or above which the model's judgement of the category wins.
const MODEL_TRUST: f32 = 0.8;
const DEMOTION: f32 = 0.3;

/// "phones" -> "phone", "boxes" -> "box"; crude, but taxonomy names are plain.
fn singular(word: &str) -> &str {
    if let Some(stem) = word.strip_suffix("es").filter(|s| s.ends_with(['x', 's', 'z']) || s.ends_with("ch")) {
        stem
    } else if word.len() > 3 && !word.ends_with("ss") {
        word.strip_suffix('s').unwrap_or(word)
    } else {
        word
    }
}

fn category_words(text: &str) -> Vec<String> {
    let name = normalize(text);
    let name = lookup(ALIASES, &name).map(|a| normalize(&a)).unwrap_or(name);
    name.split(' ').filter(|w| !w.is_empty()).map(|w| singular(w).to_string()).collect()
}

impl Rule for CategoryMismatch {
    fn check(input: &Input) -> Outcome {
        let path = &input.item.category_path;
        if path.is_empty() {
            return Outcome::keep();
        }
        let path_words: Vec<String> = path.iter().flat_map(|segment| category_words(segment)).collect();
        for wanted in input.query.entities("category") {
            let Some(head) = category_words(wanted).pop() else { continue };
            if path_words.contains(&head) {
                continue;
            }
            if input.model.entity_score("category", wanted).is_some_and(|s| s >= MODEL_TRUST) {
                return Outcome::keep().tag("category-model-override");
            }
            return Outcome::demote(
                DEMOTION,
                format!("category mismatch: query wants {wanted}, item is in {}", path.join(" > ")),
            )
            .tag("category-mismatch");
        }
        Outcome::keep()
    }
}

export_rule!(CategoryMismatch);
