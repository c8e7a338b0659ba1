//! Price band: the query bounds the price ("under $50", entity price-max=50)
//! and the item is outside the band. Slightly outside (within the tolerance,
//! 20% unless the `price-band` table sets `tolerance`) demotes; far outside
//! vetoes. Items without a price, or priced in another currency than the
//! query's `currency` entity, are kept: there is nothing sound to compare.

use tandem_rules_sdk::*;

struct PriceBand;

const DEFAULT_TOLERANCE: f64 = 0.2;
const DEMOTION: f32 = 0.6;

#[derive(Default)]
struct Band {
    min: Option<f64>,
    max: Option<f64>,
}

/// Reads "under 50", "below $50", "less than 50", "over 100", "above 100",
/// "more than 100" and "between 20 and 40" from the query text.
fn band_from_text(text: &str) -> Band {
    let words: Vec<String> = normalize(text).split(' ').map(str::to_string).collect();
    let mut band = Band::default();
    let amount = |i: usize| words.get(i).and_then(|w| parse_amount(w));
    for i in 0..words.len() {
        match words[i].as_str() {
            "under" | "below" | "max" => band.max = amount(i + 1).or(band.max),
            "over" | "above" | "min" => band.min = amount(i + 1).or(band.min),
            "less" | "more" if words.get(i + 1).is_some_and(|w| w == "than") => {
                if words[i] == "less" {
                    band.max = amount(i + 2).or(band.max);
                } else {
                    band.min = amount(i + 2).or(band.min);
                }
            }
            "between" if words.get(i + 2).is_some_and(|w| w == "and") => {
                if let (Some(lo), Some(hi)) = (amount(i + 1), amount(i + 3)) {
                    band = Band { min: Some(lo.min(hi)), max: Some(lo.max(hi)) };
                }
            }
            _ => {}
        }
    }
    band
}

impl Rule for PriceBand {
    fn check(input: &Input) -> Outcome {
        let Some(price) = &input.item.price else {
            return Outcome::keep();
        };
        if let Some(currency) = input.query.entity("currency")
            && !currency.eq_ignore_ascii_case(&price.currency)
        {
            return Outcome::keep().tag("price-currency-differs");
        }
        let mut band = band_from_text(&input.query.text);
        // Extracted entities are more reliable than the text patterns.
        if let Some(max) = input.query.entity("price-max").and_then(parse_amount) {
            band.max = Some(max);
        }
        if let Some(min) = input.query.entity("price-min").and_then(parse_amount) {
            band.min = Some(min);
        }
        let tolerance = lookup("price-band", "tolerance")
            .and_then(|t| t.trim().parse::<f64>().ok())
            .filter(|t| t.is_finite() && *t >= 0.0)
            .unwrap_or(DEFAULT_TOLERANCE);
        let amount = price.amount;
        let currency = &price.currency;
        if let Some(max) = band.max.filter(|max| amount > *max) {
            let what = format!("price {amount:.2} {currency} is above the requested maximum {max:.2}");
            return if amount <= max * (1.0 + tolerance) {
                Outcome::demote(DEMOTION, what).tag("price-above-band")
            } else {
                Outcome::veto(what).tag("price-above-band")
            };
        }
        if let Some(min) = band.min.filter(|min| amount < *min) {
            let what = format!("price {amount:.2} {currency} is below the requested minimum {min:.2}");
            return if amount >= min * (1.0 - tolerance) {
                Outcome::demote(DEMOTION, what).tag("price-below-band")
            } else {
                Outcome::veto(what).tag("price-below-band")
            };
        }
        Outcome::keep()
    }
}

export_rule!(PriceBand);
