//! Business-rule plugins after the EBRM model (feature `rules`; tandem-plugins' wasmtime host
//! never reaches the browser build): each ranked item becomes a plugin candidate (the item,
//! the model's score and per-entity QE scores) against the query and its entities, every
//! plugin gives its verdict, and each ranking line gains `rules` (one entry per plugin) and
//! `final_score` (the model's score times the demotion factors; 0 when a plugin vetoes).
//!
//! `tandem relevance --rules` and `tandem serve`'s `/relevance` both go through here, so the
//! plugins see the same input and the lines carry the same fields whichever runs them.

use crate::entities::Item;
use crate::pipeline::{Ranking, ScoredItem};
use serde_json::{Value, json};
use tandem_plugins::{Attribute, Candidate, Entity, EntityScore, ModelView, Price, Query, RuleReport, Verdict};

/// The plugins' view of the query: its text and entities.
pub fn plugin_query(ranking: &Ranking) -> Query {
    let query = &ranking.query;
    Query {
        text: query.text.clone(),
        entities: query
            .entities
            .iter()
            .map(|e| Entity { kind: e.kind.name().to_string(), value: e.value.clone() })
            .collect(),
    }
}

/// The plugins' view of each ranked item, in the ranking's (input) order; `items` are the
/// items the ranking was made of.
pub fn candidates(ranking: &Ranking, items: &[Item]) -> Vec<Candidate> {
    ranking.items.iter().map(|scored| candidate(&items[scored.index], scored)).collect()
}

/// One ranked item: the item's `category` attribute becomes its category path; the price has
/// no currency in EBRM's items, so it goes with an empty one.
fn candidate(item: &Item, scored: &ScoredItem) -> Candidate {
    Candidate {
        item: tandem_plugins::Item {
            id: scored.id.clone().unwrap_or_else(|| scored.index.to_string()),
            title: item.title.clone(),
            attributes: item
                .attributes
                .iter()
                .filter(|(name, _)| name.as_str() != "category")
                .map(|(name, value)| Attribute { name: name.clone(), value: value.clone() })
                .collect(),
            category_path: item
                .attributes
                .get("category")
                .map(|c| c.split('>').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
                .unwrap_or_default(),
            price: item.price.map(|amount| Price { amount, currency: String::new() }),
        },
        model: ModelView {
            score: scored.score,
            entity_scores: scored
                .entities
                .iter()
                .map(|e| EntityScore {
                    kind: e.entity.kind.name().to_string(),
                    value: e.entity.value.clone(),
                    score: e.qe,
                })
                .collect(),
        },
    }
}

/// Adds `rules` and `final_score` to each of `lines` (`cli::ranking_lines`' output, in the
/// ranking's order) from `reports[i]`, item i's reports, one per plugin.
pub fn annotate(ranking: &Ranking, reports: &[Vec<RuleReport>], lines: &mut [Value]) {
    for ((scored, item_reports), line) in ranking.items.iter().zip(reports).zip(lines) {
        line["rules"] = rules_json(item_reports);
        line["final_score"] = json!(scored.score * tandem_plugins::combine(item_reports).factor);
    }
}

/// Each plugin's verdict on one item: plugin, verdict, reason, demotion factor, tags and the
/// error when the plugin failed (its failure policy's verdict then applies).
fn rules_json(reports: &[RuleReport]) -> Value {
    reports
        .iter()
        .map(|r| {
            json!({
                "plugin": &*r.plugin,
                "verdict": r.verdict.kind(),
                "reason": r.verdict.reason(),
                "factor": match r.verdict {
                    Verdict::Demote { factor, .. } => Some(factor),
                    _ => None,
                },
                "tags": r.tags,
                "error": r.error.as_ref().map(|e| e.to_string()),
            })
        })
        .collect()
}
