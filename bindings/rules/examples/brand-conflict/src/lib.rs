//! Brand conflict: the query names a brand and the item is of another one.
//!
//! Brands are compared after normalisation and after mapping through the
//! operator's `brand-aliases` table (e.g. "apple inc" -> "apple",
//! "hp" -> "hewlett packard"), so spelling variants are not conflicts.

use tandem_rules_sdk::*;

struct BrandConflict;

const ALIASES: &str = "brand-aliases";

fn canonical(brand: &str) -> String {
    let name = normalize(brand);
    match lookup(ALIASES, &name) {
        Some(alias) => normalize(&alias),
        None => name,
    }
}

impl Rule for BrandConflict {
    fn check(input: &Input) -> Outcome {
        // Without an item brand there is nothing to conflict with.
        let Some(item_brand) = input.item.attribute("brand") else {
            return Outcome::keep();
        };
        let item_brand = canonical(item_brand);
        let wanted: Vec<String> = input.query.entities("brand").map(canonical).collect();
        if wanted.is_empty() || wanted.contains(&item_brand) {
            return Outcome::keep();
        }
        Outcome::veto(format!("brand conflict: query asks for {}, item is {}", wanted.join(" or "), item_brand))
            .tag("brand-conflict")
    }
}

export_rule!(BrandConflict);
