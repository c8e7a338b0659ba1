//! The hand-labelled set `eval/esci-hand.jsonl`: real-marketplace-style queries and items
//! written and labelled by hand by the ESCI rules (E meets every constraint of the query; S
//! is the same kind of product missing one; C is used with it; I is unrelated, word-overlap
//! traps included), each label with a `why`. Nothing in it comes from the extractor's rules
//! or vocabulary. Queries carry a split (`dev`, tuned on; `held`, evaluated at the end only),
//! a language (`en`, `zh`, `mixed`), a retail area and the hard-case kinds they exercise.
//!
//! One JSON object per line: `{"query_id", "split", "lang", "area", "hard": [...], "query",
//! "items": [{"title", "brand", ..., "label", "why"}]}`; an item is read by
//! [`Item::from_value`], so it is exactly what `tandem relevance --items` reads.

use super::{Metrics, graded_metrics};
use crate::calibrate::{Calibration, Sample};
use crate::encoder::TextEncoder;
use crate::entities::{EntityKind, Item};
use crate::logic::Logic;
use crate::pipeline::{Ebrm, Grade};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct HandQuery {
    pub id: usize,
    pub split: String,
    pub lang: String,
    pub area: String,
    pub hard: Vec<String>,
    pub query: String,
    pub items: Vec<Item>,
    pub labels: Vec<Grade>,
    pub why: Vec<String>,
}

#[derive(Deserialize)]
struct Line {
    query_id: usize,
    split: String,
    lang: String,
    area: String,
    hard: Vec<String>,
    query: String,
    items: Vec<Value>,
}

/// Reads the set; every line must parse, every item carry a label and a `why`, and every
/// query have an exact item and a non-exact one (else pairwise accuracy is undefined).
pub fn read_hand(path: &Path) -> Result<Vec<HandQuery>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{} line {}", path.display(), n + 1);
        let line: Line = serde_json::from_str(l).with_context(at)?;
        let mut q = HandQuery {
            id: line.query_id,
            split: line.split,
            lang: line.lang,
            area: line.area,
            hard: line.hard,
            query: line.query,
            items: Vec::new(),
            labels: Vec::new(),
            why: Vec::new(),
        };
        for v in &line.items {
            q.items.push(Item::from_value(v).with_context(at)?);
            let label = v.get("label").and_then(Value::as_str).and_then(Grade::from_letter);
            let why = v.get("why").and_then(Value::as_str).unwrap_or("").trim().to_string();
            match label {
                Some(g) if !why.is_empty() => {
                    q.labels.push(g);
                    q.why.push(why);
                }
                _ => bail!("{}: every item needs a label (E, S, C, I) and a why", at()),
            }
        }
        if !q.labels.contains(&Grade::Exact) || q.labels.iter().all(|g| *g == Grade::Exact) {
            bail!("{}: a query needs an exact item and a non-exact one", at());
        }
        out.push(q);
    }
    Ok(out)
}

/// The scorers a report compares.
pub const SCORERS: &[&str] = &["cosine title", "cosine title+attrs", "ebrm product", "ebrm goedel", "ebrm lukasiewicz"];

/// Metrics per group ("all", "lang en", "hard units", ...) and scorer, and the worst
/// queries of the product logic, for reading.
#[derive(Debug, Clone, Serialize)]
pub struct HandReport {
    pub encoder: String,
    pub split: String,
    pub groups: BTreeMap<String, BTreeMap<String, Metrics>>,
    /// (query, nDCG of ebrm product, nDCG of cosine title+attrs), lowest first.
    pub worst: Vec<(String, f64, f64)>,
}

/// Ranks each query of `split` ("dev", "held" or "all") once and reports every scorer.
pub fn hand_report<E: TextEncoder>(engine: &Ebrm<E>, queries: &[HandQuery], split: &str) -> Result<HandReport> {
    let chosen: Vec<&HandQuery> = queries.iter().filter(|q| split == "all" || q.split == split).collect();
    if chosen.is_empty() {
        bail!("no queries in split '{split}'");
    }
    // scores[query][scorer]
    let mut scores: Vec<Vec<Vec<f32>>> = Vec::new();
    for q in &chosen {
        let r = engine.rank(&q.query, &q.items).with_context(|| format!("query {} '{}'", q.id, q.query))?;
        let mut s =
            vec![engine.cosine_baseline(&q.query, &q.items, false)?, engine.cosine_baseline(&q.query, &q.items, true)?];
        for logic in [Logic::Product, Logic::Goedel, Logic::Lukasiewicz] {
            s.push(r.with_logic(logic).scores());
        }
        scores.push(s);
    }
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, q) in chosen.iter().enumerate() {
        groups.entry("all".into()).or_default().push(i);
        groups.entry(format!("lang {}", q.lang)).or_default().push(i);
        for h in &q.hard {
            groups.entry(format!("hard {h}")).or_default().push(i);
        }
    }
    let groups = groups
        .into_iter()
        .map(|(name, members)| {
            let per_scorer = SCORERS
                .iter()
                .enumerate()
                .map(|(s, scorer)| {
                    let runs = members.iter().map(|&i| (chosen[i].labels.clone(), scores[i][s].clone()));
                    (scorer.to_string(), graded_metrics(runs))
                })
                .collect();
            (name, per_scorer)
        })
        .collect();
    let mut worst: Vec<(String, f64, f64)> = chosen
        .iter()
        .zip(&scores)
        .map(|(q, s)| {
            let gains: Vec<f64> = q.labels.iter().map(|g| g.gain()).collect();
            (q.query.clone(), super::ndcg(&s[2], &gains), super::ndcg(&s[1], &gains))
        })
        .collect();
    worst.sort_by(|a, b| a.1.total_cmp(&b.1));
    worst.truncate(12);
    Ok(HandReport { encoder: engine.encoder().id().to_string(), split: split.to_string(), groups, worst })
}

/// Fits the similarity prior's calibration on `split` (dev, never held: what is fitted there
/// is tuned there): the probability that an item is exact given its query-item cosine, by
/// logistic regression over every (query, item) of the split. The other kinds keep the
/// generic constants (their QE comes from exact checks).
pub fn fit_similarity<E: TextEncoder>(engine: &Ebrm<E>, queries: &[HandQuery], split: &str) -> Result<Calibration> {
    if split != "dev" {
        bail!("the calibration is fitted on the dev split only, not on '{split}'");
    }
    let mut samples = Vec::new();
    for q in queries.iter().filter(|q| q.split == split) {
        let r = engine.rank(&q.query, &q.items).with_context(|| format!("query {} '{}'", q.id, q.query))?;
        for (item, label) in r.items.iter().zip(&q.labels) {
            let similarity = item.entities.iter().find(|e| e.entity.kind == EntityKind::Similarity);
            if let Some(cosine) = similarity.and_then(|e| e.cosine) {
                samples.push(Sample {
                    kind: EntityKind::Similarity,
                    constrained: true,
                    cosine,
                    label: *label == Grade::Exact,
                });
            }
        }
    }
    Ok(Calibration::fit(&samples, &Calibration::generic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_set_follows_the_brief() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/esci-hand.jsonl");
        let qs = read_hand(&path).unwrap();
        let dev: Vec<&HandQuery> = qs.iter().filter(|q| q.split == "dev").collect();
        assert!(dev.len() >= 60, "{} dev queries", dev.len());
        assert!(qs.iter().any(|q| q.split == "held"));
        let areas: std::collections::HashSet<&str> = qs.iter().map(|q| q.area.as_str()).collect();
        assert!(areas.len() >= 12, "{} areas", areas.len());
        for lang in ["en", "zh", "mixed"] {
            assert!(dev.iter().any(|q| q.lang == lang), "no {lang} dev query");
        }
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set.jsonl");
        let line = |items: &str| {
            format!(
                r#"{{"query_id": 1, "split": "dev", "lang": "en", "area": "a", "hard": [], "query": "q", "items": [{items}]}}"#
            )
        };
        let err = |text: String| {
            std::fs::write(&path, text).unwrap();
            format!("{:#}", read_hand(&path).unwrap_err())
        };
        assert!(err(line(r#"{"title": "t", "label": "E"}"#)).contains("line 1: every item needs a label"));
        assert!(err(line(r#"{"title": "t", "label": "E", "why": "w"}"#)).contains("an exact item and a non-exact"));
        assert!(err(line(r#"{"label": "E", "why": "w"}"#)).contains("no 'title'"));
        assert!(err("{".into()).contains("line 1"));
    }
}
