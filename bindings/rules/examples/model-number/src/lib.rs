//! Model-number mismatch: "iphone 15" against an "Apple iPhone 14" item.
//!
//! A model reference is a product-line word followed by one or more words
//! that contain a digit ("iphone 15", "galaxy s23", "wh 1000xm5"). When the
//! item mentions the query's product line but never with the query's number,
//! the item is another model and is vetoed.

use std::collections::BTreeMap;
use tandem_rules_sdk::*;

struct ModelNumber;

/// Product line -> one run of numbers per mention of the line in `text`
/// ("iPhone 14/15" normalises to "iphone 14 15": one mention, both numbers).
fn model_refs(text: &str) -> BTreeMap<String, Vec<Vec<String>>> {
    let words: Vec<String> = normalize(text).split(' ').map(str::to_string).collect();
    let mut refs: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for (i, line) in words.iter().enumerate() {
        if line.len() < 2 || !line.chars().all(char::is_alphabetic) {
            continue;
        }
        let numbers: Vec<String> =
            words[i + 1..].iter().take_while(|w| w.chars().any(|c| c.is_ascii_digit())).cloned().collect();
        if !numbers.is_empty() {
            refs.entry(line.clone()).or_default().push(numbers);
        }
    }
    refs
}

impl Rule for ModelNumber {
    fn check(input: &Input) -> Outcome {
        // Prefer the extractor's model entities; fall back to the raw text.
        let mut query_text: Vec<&str> = input.query.entities("model").collect();
        if query_text.is_empty() {
            query_text.push(&input.query.text);
        }
        let mut item_text = input.item.title.clone();
        if let Some(model) = input.item.attribute("model") {
            item_text.push(' ');
            item_text.push_str(model);
        }
        let item_refs = model_refs(&item_text);
        for text in query_text {
            for (line, mentions) in model_refs(text) {
                let Some(item_mentions) = item_refs.get(&line) else { continue };
                // The query's model is the first number after the line: in
                // "iphone 15 128gb" the 128gb is storage, not the model.
                let wanted = &mentions[0][0];
                if item_mentions.iter().any(|run| run.contains(wanted)) {
                    continue;
                }
                let mut seen: Vec<&str> = item_mentions.iter().map(|run| run[0].as_str()).collect();
                seen.dedup();
                return Outcome::veto(format!(
                    "model number mismatch: query wants {line} {wanted}, item is {line} {}",
                    seen.join("/")
                ))
                .tag("model-number-mismatch");
            }
        }
        Outcome::keep()
    }
}

export_rule!(ModelNumber);
