//! Evaluation: a query-item set labelled the Amazon ESCI way, built from the real
//! vocabularies ([`generate`]), and the metrics EBRM is judged by.
//!
//! - nDCG over each query's whole item list with ESCI gains (Exact 1, Substitute 0.1,
//!   Complement 0.01, Irrelevant 0) and the usual `1 / log2(rank + 1)` discount, averaged
//!   over queries.
//! - Pairwise accuracy: over every (exact, non-exact) pair of items of a query, the share
//!   where the exact item scores strictly higher.
//!
//! Ties are broken pessimistically (an item tied with a better-labelled one ranks above it),
//! so a scorer cannot gain from giving many items the same score.

pub mod generate;
pub mod hand;

use crate::cache::{CacheStats, LruQeCache, QeCache};
use crate::calibrate::{Calibration, Sample};
use crate::encoder::TextEncoder;
use crate::entities::{EntityKind, Item, Source};
use crate::logic::Logic;
use crate::pipeline::{Config, Ebrm, Grade, GradeThresholds, Ranking};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// How an item relates to its query in the generated set: the structure its label follows
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// Same brand and category (and model, color where the query names them): Exact.
    Exact,
    /// Another brand of the same product: Substitute.
    BrandConflict,
    /// Same brand, another model number: Substitute.
    ModelConflict,
    /// Same product in another color or material: Substitute.
    AttributeMismatch,
    /// An accessory for the queried product: Complement.
    Accessory,
    /// Same brand, another kind of product: Irrelevant.
    CategoryConflict,
    /// Another brand and another kind of product: Irrelevant.
    Unrelated,
}

impl Relation {
    pub fn grade(self) -> Grade {
        match self {
            Relation::Exact => Grade::Exact,
            Relation::BrandConflict | Relation::ModelConflict | Relation::AttributeMismatch => Grade::Substitute,
            Relation::Accessory => Grade::Complement,
            Relation::CategoryConflict | Relation::Unrelated => Grade::Irrelevant,
        }
    }
}

/// One labelled query-item pair, a line of the set's JSON-lines file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub query_id: usize,
    pub query: String,
    pub item: Item,
    /// "E", "S", "C" or "I".
    pub label: String,
    pub relation: Relation,
    /// Entity kinds where the item disagrees with the query.
    pub conflicts: Vec<EntityKind>,
}

impl Pair {
    pub fn grade(&self) -> Grade {
        Grade::from_letter(&self.label).unwrap_or(Grade::Irrelevant)
    }
}

/// A query with its labelled items.
#[derive(Debug, Clone)]
pub struct Query {
    pub id: usize,
    pub text: String,
    pub pairs: Vec<Pair>,
}

impl Query {
    pub fn items(&self) -> Vec<Item> {
        self.pairs.iter().map(|p| p.item.clone()).collect()
    }
    pub fn gains(&self) -> Vec<f64> {
        self.pairs.iter().map(|p| p.grade().gain()).collect()
    }
}

pub fn read_pairs(path: &Path) -> Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), n + 1)))
        .collect()
}

pub fn group(pairs: Vec<Pair>) -> Vec<Query> {
    let mut by_id: BTreeMap<usize, Query> = BTreeMap::new();
    for p in pairs {
        by_id
            .entry(p.query_id)
            .or_insert_with(|| Query { id: p.query_id, text: p.query.clone(), pairs: Vec::new() })
            .pairs
            .push(p);
    }
    by_id.into_values().collect()
}

/// Indices from the highest score down; ties put the lower gain first.
fn ranked(scores: &[f32], gains: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(gains[a].total_cmp(&gains[b])));
    order
}

pub fn ndcg(scores: &[f32], gains: &[f64]) -> f64 {
    let dcg = |order: &[usize]| -> f64 {
        order.iter().enumerate().map(|(rank, &i)| gains[i] / ((rank + 2) as f64).log2()).sum()
    };
    let mut ideal: Vec<usize> = (0..gains.len()).collect();
    ideal.sort_by(|&a, &b| gains[b].total_cmp(&gains[a]));
    let best = dcg(&ideal);
    if best == 0.0 { 1.0 } else { dcg(&ranked(scores, gains)) / best }
}

/// (pairs won, pairs) over (exact, non-exact) pairs.
pub fn pairwise(scores: &[f32], grades: &[Grade]) -> (usize, usize) {
    let (mut won, mut total) = (0, 0);
    for (i, gi) in grades.iter().enumerate() {
        if *gi != Grade::Exact {
            continue;
        }
        for (j, gj) in grades.iter().enumerate() {
            if *gj != Grade::Exact {
                total += 1;
                won += usize::from(scores[i] > scores[j]);
            }
        }
    }
    (won, total)
}

/// Mean nDCG and pairwise accuracy of one scorer over queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub ndcg: f64,
    pub pairwise: f64,
    pub queries: usize,
    pub pairs: usize,
}

pub fn metrics<'a>(runs: impl IntoIterator<Item = (&'a Query, Vec<f32>)>) -> Metrics {
    graded_metrics(runs.into_iter().map(|(q, scores)| (q.pairs.iter().map(Pair::grade).collect(), scores)))
}

/// [`metrics`] over (labels, scores) per query.
pub fn graded_metrics(runs: impl IntoIterator<Item = (Vec<Grade>, Vec<f32>)>) -> Metrics {
    let (mut ndcg_sum, mut won, mut total, mut queries, mut pairs) = (0.0, 0, 0, 0, 0);
    for (grades, scores) in runs {
        let gains: Vec<f64> = grades.iter().map(|g| g.gain()).collect();
        ndcg_sum += ndcg(&scores, &gains);
        let (w, t) = pairwise(&scores, &grades);
        (won, total, queries, pairs) = (won + w, total + t, queries + 1, pairs + grades.len());
    }
    Metrics {
        ndcg: if queries == 0 { 0.0 } else { ndcg_sum / queries as f64 },
        pairwise: if total == 0 { 0.0 } else { won as f64 / total as f64 },
        queries,
        pairs,
    }
}

/// Labelled QE samples from rankings of training queries: a constrained entity is a match
/// unless the generator recorded a conflict of its kind; a free entity is labelled by whether
/// its item is exact.
pub fn calibration_samples(queries: &[&Query], rankings: &[&Ranking]) -> Vec<Sample> {
    let mut out = Vec::new();
    for (q, r) in queries.iter().zip(rankings) {
        for (pair, item) in q.pairs.iter().zip(&r.items) {
            for e in &item.entities {
                let Some(cosine) = e.cosine else { continue };
                if e.entity.source == Source::Missing {
                    continue;
                }
                // The similarity prior is right when its item is exact; other cosines (none in
                // the ranking now) when the generator recorded no conflict of their kind.
                let label = if e.entity.kind == EntityKind::Similarity || !e.constrained {
                    pair.grade() == Grade::Exact
                } else {
                    !pair.conflicts.contains(&e.entity.kind)
                };
                out.push(Sample { kind: e.entity.kind, constrained: e.constrained, cosine, label });
            }
        }
    }
    out
}

/// Grade thresholds that maximise grade accuracy over the given rankings (grid search in
/// steps of 0.05; `support` stays as configured).
pub fn fit_grades(queries: &[&Query], rankings: &[Ranking]) -> GradeThresholds {
    let Some(first) = rankings.first() else { return Config::default().grades };
    let base = first.config.clone();
    let grid: Vec<f32> = (1..20).map(|i| i as f32 * 0.05).collect();
    let mut best = (usize::MAX, base.grades);
    let items: Vec<(&Pair, &crate::pipeline::ScoredItem)> =
        queries.iter().zip(rankings).flat_map(|(q, r)| q.pairs.iter().zip(&r.items)).collect();
    for &exact in &grid {
        for &same_category in &grid {
            for &related_category in grid.iter().filter(|&&r| r <= same_category) {
                let grades = GradeThresholds { exact, same_category, related_category, ..base.grades };
                let config = Config { grades, ..base.clone() };
                let wrong = items.iter().filter(|(p, i)| crate::pipeline::grade(i, &config) != p.grade()).count();
                if wrong < best.0 {
                    best = (wrong, grades);
                }
            }
        }
    }
    best.1
}

/// Everything one evaluation run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub encoder: String,
    pub train_queries: usize,
    pub test_queries: usize,
    pub test_pairs: usize,
    /// Metrics on the held-out queries: "cosine" and one entry per logic family.
    pub test: BTreeMap<String, Metrics>,
    /// The same on the training queries, for reference.
    pub train: BTreeMap<String, Metrics>,
    /// Share of held-out items whose grade equals the label, per logic family.
    pub grade_accuracy: BTreeMap<String, f64>,
    /// Grade thresholds fitted on the training queries, per logic family.
    pub grade_thresholds: BTreeMap<String, GradeThresholds>,
    /// Held-out "label->grade" counts, per logic family.
    pub grade_confusion: BTreeMap<String, BTreeMap<String, usize>>,
    pub calibration: Calibration,
    pub cache: CacheStats,
}

/// Splits queries into train (even ids) and test (odd ids), ranks every query once, fits
/// the calibration on train and reports both splits for every logic family and for plain
/// query-title cosine.
pub fn evaluate<E: TextEncoder>(engine: &Ebrm<E>, queries: &[Query]) -> Result<Report> {
    if queries.is_empty() {
        bail!("no queries to evaluate");
    }
    let mut rankings = Vec::with_capacity(queries.len());
    let mut baseline = Vec::with_capacity(queries.len());
    for (n, q) in queries.iter().enumerate() {
        let items = q.items();
        rankings.push(engine.rank(&q.text, &items).with_context(|| format!("query {} '{}'", q.id, q.text))?);
        baseline.push(engine.cosine_baseline(&q.text, &items, false)?);
        if (n + 1) % 25 == 0 {
            eprintln!("ranked {}/{} queries", n + 1, queries.len());
        }
    }
    let is_train = |q: &Query| q.id.is_multiple_of(2);
    let train: Vec<usize> = (0..queries.len()).filter(|&i| is_train(&queries[i])).collect();
    let test: Vec<usize> = (0..queries.len()).filter(|&i| !is_train(&queries[i])).collect();
    let samples = calibration_samples(
        &train.iter().map(|&i| &queries[i]).collect::<Vec<_>>(),
        &train.iter().map(|&i| &rankings[i]).collect::<Vec<_>>(),
    );
    let calibration = Calibration::fit(&samples, &engine.config().calibration);
    let calibrated: Vec<Ranking> = rankings.iter().map(|r| r.with_calibration(&calibration)).collect();
    // Grade thresholds, fitted on the training queries, per logic family.
    let mut thresholds = BTreeMap::new();
    for &logic in Logic::ALL {
        let train_rankings: Vec<Ranking> = train.iter().map(|&i| calibrated[i].with_logic(logic)).collect();
        thresholds.insert(logic, fit_grades(&train.iter().map(|&i| &queries[i]).collect::<Vec<_>>(), &train_rankings));
    }

    let report_split = |split: &[usize]| -> BTreeMap<String, Metrics> {
        let mut m = BTreeMap::new();
        m.insert("cosine".to_string(), metrics(split.iter().map(|&i| (&queries[i], baseline[i].clone()))));
        for &logic in Logic::ALL {
            let runs = split.iter().map(|&i| (&queries[i], calibrated[i].with_logic(logic).scores()));
            m.insert(logic.name().to_string(), metrics(runs));
        }
        m
    };
    let mut grade_accuracy = BTreeMap::new();
    let mut grade_confusion = BTreeMap::new();
    for &logic in Logic::ALL {
        let (mut right, mut all) = (0, 0);
        let mut confusion: BTreeMap<String, usize> = BTreeMap::new();
        for &i in &test {
            let config = Config { logic, grades: thresholds[&logic], ..calibrated[i].config.clone() };
            let r = calibrated[i].with_config(&config);
            for (pair, item) in queries[i].pairs.iter().zip(&r.items) {
                right += usize::from(item.grade == pair.grade());
                all += 1;
                *confusion.entry(format!("{}->{}", pair.grade().letter(), item.grade.letter())).or_default() += 1;
            }
        }
        grade_accuracy.insert(logic.name().to_string(), right as f64 / all.max(1) as f64);
        grade_confusion.insert(logic.name().to_string(), confusion);
    }
    Ok(Report {
        encoder: engine.encoder().id().to_string(),
        train_queries: train.len(),
        test_queries: test.len(),
        test_pairs: test.iter().map(|&i| queries[i].pairs.len()).sum(),
        test: report_split(&test),
        train: report_split(&train),
        grade_accuracy,
        grade_thresholds: thresholds.iter().map(|(l, t)| (l.name().to_string(), *t)).collect(),
        grade_confusion,
        calibration,
        cache: engine.cache_stats(),
    })
}

/// A fresh cache big enough for a whole evaluation.
pub fn eval_cache() -> Arc<dyn QeCache> {
    Arc::new(LruQeCache::new(1_000_000, 512 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndcg_with_esci_gains() {
        let gains = [1.0, 0.1, 0.0];
        assert!((ndcg(&[0.9, 0.5, 0.1], &gains) - 1.0).abs() < 1e-12);
        let swapped = ndcg(&[0.1, 0.5, 0.9], &gains);
        assert!(swapped < 0.6, "{swapped}");
        // Ties rank the worse item first.
        assert!(ndcg(&[0.5, 0.5, 0.5], &gains) < 1.0);
        assert_eq!(ndcg(&[0.1], &[0.0]), 1.0);
    }

    #[test]
    fn pairwise_counts_strict_wins() {
        let g = [Grade::Exact, Grade::Substitute, Grade::Irrelevant, Grade::Exact];
        assert_eq!(pairwise(&[0.9, 0.5, 0.95, 0.5], &g), (1, 4));
    }

    #[test]
    fn relations_have_esci_labels() {
        assert_eq!(Relation::Accessory.grade(), Grade::Complement);
        assert_eq!(Relation::BrandConflict.grade(), Grade::Substitute);
        assert_eq!(Relation::Unrelated.grade(), Grade::Irrelevant);
    }
}
