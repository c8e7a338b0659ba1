//! Business-rule plugins applied after the EBRM model (`tandem relevance --rules`): each
//! ranked item becomes a plugin [`Input`] (the query and its entities, the item, the model's
//! score and per-entity QE scores), every plugin gives its verdict, and the output line gains
//! `rules` (one entry per plugin) and `final_score` (the model score times the demotion
//! factors; 0 when any plugin vetoes). Plugins run fail-open with default limits.
//!
//! `tandem serve`'s `/relevance` builds the same plugin input and output with
//! [`plugin_query`], [`candidates`] and [`rules_json`]. Each plugin sees all of a ranking's
//! items in one batch (`check_many`: one guest call per batch for 0.2 guests).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tandem_ebrm::Item as EbrmItem;
use tandem_ebrm::pipeline::{Ranking, ScoredItem};
use tandem_plugins::{
    Attribute, Candidate, Entity, EntityScore, Host, Item, ModelView, Plugin, PluginSpec, Price, Query, RuleReport,
};

/// The plugins named on the command line, loaded once.
pub struct Rules {
    plugins: Vec<Plugin>,
}

impl Rules {
    pub fn load(paths: &[PathBuf]) -> Result<Rules> {
        let host = Host::new().map_err(|e| anyhow::anyhow!("cannot start the plugin host: {e}"))?;
        let plugins = paths
            .iter()
            .map(|path| {
                let name = plugin_name(path);
                Plugin::load(&host, &PluginSpec::new(name, path), Default::default())
                    .with_context(|| format!("cannot load rule plugin {}", path.display()))
            })
            .collect::<Result<_>>()?;
        Ok(Rules { plugins })
    }

    /// Adds `rules` and `final_score` to each of `lines` (`ranking_lines`' output, input order).
    pub fn annotate(&self, ranking: &Ranking, items: &[EbrmItem], lines: &mut [serde_json::Value]) {
        let query = plugin_query(ranking);
        let candidates = candidates(ranking, items);
        let per_plugin: Vec<Vec<RuleReport>> = self.plugins.iter().map(|p| p.check_many(&query, &candidates)).collect();
        for (i, line) in lines.iter_mut().enumerate() {
            let reports: Vec<RuleReport> = per_plugin.iter().map(|r| r[i].clone()).collect();
            line["rules"] = rules_json(&reports);
            line["final_score"] = serde_json::json!(ranking.items[i].score * tandem_plugins::combine(&reports).factor);
        }
    }
}

/// Each plugin's verdict on one item: plugin, verdict, reason, demotion factor, tags and the
/// error when the plugin failed (its failure policy's verdict then applies).
pub fn rules_json(reports: &[RuleReport]) -> serde_json::Value {
    reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "plugin": &*r.plugin,
                "verdict": r.verdict.kind(),
                "reason": r.verdict.reason(),
                "factor": match r.verdict {
                    tandem_plugins::Verdict::Demote { factor, .. } => Some(factor),
                    _ => None,
                },
                "tags": r.tags,
                "error": r.error.as_ref().map(|e| e.to_string()),
            })
        })
        .collect()
}

fn plugin_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into())
}

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

/// The plugins' view of each ranked item, in the ranking's (input) order.
pub fn candidates(ranking: &Ranking, items: &[EbrmItem]) -> Vec<Candidate> {
    ranking.items.iter().map(|scored| candidate(&items[scored.index], scored)).collect()
}

/// One ranked item: the item's `category` attribute becomes its category path; the price has
/// no currency in EBRM's items, so it goes with an empty one.
fn candidate(item: &EbrmItem, scored: &ScoredItem) -> Candidate {
    Candidate {
        item: Item {
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
