//! The relevance pipeline: query → its constraints; each item → one check per constraint
//! plus the similarity prior → soft-logic aggregate → score, grade and what decided.
//!
//! # QE scores
//!
//! A QE score is the probability that the item satisfies the query's constraint of one kind
//! ([`crate::constraints`]): brand, model number, quantities, pack count, size, color,
//! material, audience, required features and the product type, each checked by rule against
//! the item's title and attributes (agreement ≈ 0.95, contradiction ≈ 0.05, silence 0.5 or
//! a kind-specific lean). Kinds the query does not constrain are not checked, so an item's
//! spec tokens ("GDDR6X", "192-Bit") never vote. One more QE, the *similarity prior*, is the
//! encoder's cosine of the query and the item's text (title and attributes), calibrated
//! (`qe = σ(a·cos + b)`, [`Calibration`]) and cached under (model, normalised query,
//! `similarity`, normalised item text); only misses are encoded, in one batch per request.
//!
//! # From QE scores to the item score
//!
//! Every check and the prior are essential entities of the aggregate ([`crate::logic`]),
//! with per-kind weights ([`Config::kinds`]): a clear conflict of a weight-1 kind vetoes,
//! silence costs half the weight, and the prior (weight 0.6) orders what the checks cannot
//! tell apart. Interventions and other logic families re-aggregate the same QE scores.
//!
//! The aggregate runs as the runtime's `aggregate` op on the engine's device ([`Aggregator`]):
//! the encoder's, when it says ([`TextEncoder::device`]), else the CPU backend.
//!
//! # Grades (ESCI-like)
//!
//! - Exact: score ≥ `grades.exact`.
//! - Complement: the product-type check found the queried type only as what the item is
//!   made for ("Case for iPhone 15") or a part named after it ("Tumbler Lid").
//! - Substitute: the product type matches (QE ≥ `grades.same_category`), or the query names
//!   no type and the score is at least `grades.related_category`.
//! - Irrelevant otherwise.
//!
//! # Item-side work
//!
//! Checks are rules over the item's text, cheap enough to run per request; the prior's
//! cosines are cached per (query, item text), which is where warm requests get their speed.

use crate::cache::{CacheStats, LruQeCache, QeCache, QeKey};
use crate::calibrate::Calibration;
use crate::constraints::{ACCESSORY, ItemView, QueryConstraints, check_item};
use crate::encoder::{PairScorer, TextEncoder, TextRole, encode_checked};
use crate::entities::taxonomy::{self, EmbeddedTaxonomy, KeywordTaxonomy};
use crate::entities::{Entity, EntityKind, Extractor, Item, Source};
use crate::logic::{AggregateCells, AggregateInputs, AggregateParams, Aggregated, Aggregator, Logic, aggregate_cpu};
use crate::text::{MAX_QUERY_BYTES, normalize, truncate};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tandem_models::{Device, cosine};

/// Most items one call ranks.
pub const MAX_ITEMS: usize = 10_000;
/// Entries of the query-analysis, title-category and item-view maps; they are emptied when
/// full.
const SIDE_CACHE_ENTRIES: usize = 50_000;
/// Item vectors kept (about 1.5 KB each for a 384-d encoder: 30 MB).
const VECTOR_CACHE_ENTRIES: usize = 20_000;

/// Weight and essential flag of one entity kind, used when the query constrains the kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KindConfig {
    pub weight: f32,
    pub essential: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradeThresholds {
    pub exact: f32,
    pub same_category: f32,
    /// Category QE from which a non-substitute is a related product (an accessory).
    pub related_category: f32,
    pub support: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub logic: Logic,
    /// λ of the aggregate.
    pub optional_weight: f32,
    /// Per [`EntityKind`] index.
    pub kinds: [KindConfig; EntityKind::COUNT],
    pub free_weight: f32,
    pub missing_qe: f32,
    /// Least cosine between the query and its nearest taxonomy path for the query to get a
    /// category (embedding search; the keyword fallback needs one shared leaf word).
    pub query_category_min: f32,
    pub grades: GradeThresholds,
    pub calibration: Calibration,
}

impl Default for Config {
    fn default() -> Self {
        let k = |weight, essential| KindConfig { weight, essential };
        Config {
            logic: Logic::Product,
            // Nothing is optional now (every check is essential), so λ would only scale scores.
            optional_weight: 0.0,
            // Every check is essential: a clear conflict vetoes in proportion to its weight,
            // silence (QE 0.5) costs half of it. The similarity prior is essential with a
            // smaller weight, so it orders items the checks cannot tell apart.
            kinds: [
                k(1.0, true),  // brand
                k(0.9, true),  // category: the product type
                k(1.0, true),  // model
                k(0.8, true),  // color
                k(0.7, true),  // material
                k(0.9, true),  // size and quantities
                k(0.5, false), // other
                k(0.8, true),  // count
                k(0.9, true),  // audience
                k(0.9, true),  // feature
                k(0.6, true),  // similarity
            ],
            free_weight: 0.5,
            missing_qe: 0.5,
            query_category_min: 0.35,
            grades: GradeThresholds { exact: 0.35, same_category: 0.5, related_category: 0.1, support: 0.5 },
            calibration: Calibration::generic(),
        }
    }
}

impl Config {
    /// Defaults with the calibration fitted for `model_id` where one is known.
    pub fn for_model(model_id: &str) -> Config {
        Config { calibration: Calibration::for_model(model_id), ..Config::default() }
    }

    /// (weight, essential) table of the aggregate: kind id `2·kind + constrained`.
    fn kind_table(&self) -> (Vec<f32>, Vec<u32>) {
        let mut weight = Vec::with_capacity(2 * EntityKind::COUNT);
        let mut essential = Vec::with_capacity(2 * EntityKind::COUNT);
        for k in &self.kinds {
            weight.extend([self.free_weight, k.weight]);
            essential.extend([0, u32::from(k.essential)]);
        }
        (weight, essential)
    }
}

/// How categories are found for titles and queries.
pub enum CategorySearch {
    /// Nearest taxonomy path in the encoder's embedding space, the embeddings built on first
    /// use and cached under the folder, if given.
    Embedding { cache_dir: Option<PathBuf> },
    /// Shared words, no model involved.
    Keywords,
}

/// The query as the pipeline understood it.
#[derive(Debug, Clone, Serialize)]
pub struct QueryAnalysis {
    pub text: String,
    pub normalized: String,
    pub entities: Vec<Entity>,
    /// Similarity of the query to its category (cosine, or keyword score).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category_similarity: Option<f32>,
    #[serde(skip)]
    embedding: Vec<f32>,
    /// What the query asks of an item, by kind.
    #[serde(skip)]
    pub constraints: QueryConstraints,
}

/// One entity of a ranked item, with everything the explanation needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredEntity {
    #[serde(flatten)]
    pub entity: Entity,
    /// The query names this kind.
    pub constrained: bool,
    pub essential: bool,
    /// The encoder's raw cosine (absent for stand-ins of missing kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine: Option<f32>,
    pub qe: f32,
    /// Score with this entity minus score without it.
    pub contribution: f32,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub overridden: bool,
    /// What the item said about this constraint ("item: 16.9 fl oz").
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub evidence: String,
    /// The item's own value of this kind, where the check found one ("adidas").
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub item_value: Option<String>,
}

impl ScoredEntity {
    /// Whether an intervention's normalised `value` names this entity: its value or the
    /// item's.
    fn names(&self, value: &str) -> bool {
        normalize(&self.entity.value) == value || self.item_value.as_deref().is_some_and(|v| normalize(v) == value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Grade {
    Exact,
    Substitute,
    Complement,
    Irrelevant,
}

impl Grade {
    /// ESCI gain for nDCG.
    pub fn gain(self) -> f64 {
        match self {
            Grade::Exact => 1.0,
            Grade::Substitute => 0.1,
            Grade::Complement => 0.01,
            Grade::Irrelevant => 0.0,
        }
    }

    pub fn letter(self) -> char {
        match self {
            Grade::Exact => 'E',
            Grade::Substitute => 'S',
            Grade::Complement => 'C',
            Grade::Irrelevant => 'I',
        }
    }

    pub fn from_letter(s: &str) -> Option<Grade> {
        match s.trim().to_ascii_uppercase().as_str() {
            "E" | "EXACT" => Some(Grade::Exact),
            "S" | "SUBSTITUTE" => Some(Grade::Substitute),
            "C" | "COMPLEMENT" => Some(Grade::Complement),
            "I" | "IRRELEVANT" => Some(Grade::Irrelevant),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredItem {
    /// Position in the input.
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub title: String,
    pub score: f32,
    pub grade: Grade,
    pub entities: Vec<ScoredEntity>,
    /// Indices into `entities` of those that decided, most decisive first.
    pub deciding: Vec<usize>,
}

impl ScoredItem {
    /// One line per deciding entity: "brand 'Adidas': qe 0.03, vetoed (−0.71)".
    pub fn explanation(&self) -> Vec<String> {
        self.deciding
            .iter()
            .map(|&i| {
                let e = &self.entities[i];
                // Below a hundredth of the score range an effect is noise, not a decision.
                // A check that agrees (QE ≥ 0.9) still costs its small doubt; it matched.
                let effect = if e.contribution < -0.01 && e.qe < 0.9 {
                    if e.essential && e.qe < 0.2 { "vetoed" } else { "held back" }
                } else if e.contribution > 0.01 {
                    "added"
                } else {
                    "matched"
                };
                let source = if e.entity.source == Source::Missing { " (item lacks it)" } else { "" };
                let evidence = if e.evidence.is_empty() { String::new() } else { format!("; {}", e.evidence) };
                format!(
                    "{} '{}'{source}: qe {:.2}, {effect} ({:+.3}){evidence}",
                    e.entity.kind.name(),
                    e.entity.value,
                    e.qe,
                    e.contribution
                )
            })
            .collect()
    }
}

/// A change to QE scores, applied by [`Ranking::intervene`] without encoding anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intervention {
    /// Sets the QE score of entities of `kind` whose value (the query's) or item value (what
    /// the item said: "adidas" for the query's brand "nike") normalises to `value`, in item
    /// `item` (all items when absent).
    SetQe { item: Option<usize>, kind: EntityKind, value: String, qe: f32 },
    /// Removes entities of `kind` (only those whose value or item value normalises to `value`,
    /// if given).
    Drop { item: Option<usize>, kind: EntityKind, value: Option<String> },
}

/// The result of one request: every item scored, in input order, plus what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Ranking {
    pub query: QueryAnalysis,
    pub items: Vec<ScoredItem>,
    #[serde(skip)]
    pub config: Config,
    /// Texts this request encoded (0 when every QE score, title category and the query's
    /// analysis were cached).
    pub encoded_texts: usize,
    /// Where re-aggregations (other families, interventions) run: the engine's device.
    #[serde(skip)]
    aggregator: Arc<Aggregator>,
    /// The backend the scores were last aggregated on.
    #[serde(skip)]
    aggregated_on: &'static str,
}

impl Ranking {
    /// Item indices from the highest score down (ties keep input order).
    pub fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.sort_by(|&a, &b| self.items[b].score.total_cmp(&self.items[a].score));
        order
    }

    pub fn scores(&self) -> Vec<f32> {
        self.items.iter().map(|i| i.score).collect()
    }

    /// The same QE scores aggregated with another logic family.
    pub fn with_logic(&self, logic: Logic) -> Ranking {
        let mut r = self.clone();
        r.config.logic = logic;
        r.reaggregate();
        r
    }

    /// The same raw cosines under another configuration: calibrated again (overridden QE
    /// scores stay), stand-ins of missing kinds set to its `missing_qe`, and re-aggregated.
    /// Which kinds get stand-ins was decided when ranking and does not change.
    pub fn with_config(&self, config: &Config) -> Ranking {
        let mut r = self.clone();
        r.config = config.clone();
        for e in r.items.iter_mut().flat_map(|i| &mut i.entities).filter(|e| !e.overridden) {
            match e.cosine {
                Some(c) => e.qe = config.calibration.apply(e.entity.kind, e.constrained, c),
                None if e.entity.source == Source::Missing => e.qe = config.missing_qe,
                None => {}
            }
        }
        r.reaggregate();
        r
    }

    pub fn with_calibration(&self, calibration: &Calibration) -> Ranking {
        self.with_config(&Config { calibration: calibration.clone(), ..self.config.clone() })
    }

    /// Applies the interventions in order and re-aggregates; nothing is re-encoded.
    pub fn intervene(&self, interventions: &[Intervention]) -> Ranking {
        let mut r = self.clone();
        for iv in interventions {
            for item in &mut r.items {
                let applies = |target: &Option<usize>| target.is_none_or(|t| t == item.index);
                match iv {
                    Intervention::SetQe { item: target, kind, value, qe } if applies(target) => {
                        let value = normalize(value);
                        for e in item.entities.iter_mut().filter(|e| e.entity.kind == *kind && e.names(&value)) {
                            e.qe = crate::logic::clamp01(*qe);
                            e.overridden = true;
                        }
                    }
                    Intervention::Drop { item: target, kind, value } if applies(target) => {
                        let value = value.as_deref().map(normalize);
                        item.entities.retain(|e| e.entity.kind != *kind || value.as_ref().is_some_and(|v| !e.names(v)));
                    }
                    _ => {}
                }
            }
        }
        r.reaggregate();
        r
    }

    /// The backend the scores were last aggregated on ("cpu", "wgpu", "cuda").
    pub fn aggregated_on(&self) -> &'static str {
        self.aggregated_on
    }

    /// [`Ranking::with_logic`] awaiting the device, as a page's WebGPU needs; an error where
    /// the device fails (no CPU fallback: the page would rather say so).
    pub async fn with_logic_async(&self, logic: Logic) -> Result<Ranking> {
        let mut r = self.clone();
        r.config.logic = logic;
        r.aggregate_async().await?;
        Ok(r)
    }

    /// Aggregates on the engine's device, awaiting it.
    async fn aggregate_async(&mut self) -> Result<()> {
        let table = AggregateTable::gather(&self.items, &self.config);
        let out = table.run_async(&self.aggregator).await?;
        table.scatter(&mut self.items, &self.config, out);
        self.aggregated_on = self.aggregator.backend_name();
        Ok(())
    }

    /// Aggregates again on the engine's device. These methods cannot fail (callers chain
    /// them), so when the device does (a GPU lost after the request was ranked), the CPU
    /// reference computes the same formula, and [`Ranking::aggregated_on`] and stderr say so.
    fn reaggregate(&mut self) {
        let table = AggregateTable::gather(&self.items, &self.config);
        let out = match table.run(&self.aggregator) {
            Ok(out) => {
                self.aggregated_on = self.aggregator.backend_name();
                out
            }
            Err(e) => {
                eprintln!("warning: {e:#}; aggregated with the CPU reference instead");
                self.aggregated_on = "cpu";
                table.run_cpu()
            }
        };
        table.scatter(&mut self.items, &self.config, out);
    }

    /// Scores, contributions, grades and deciding entities from the items' QE scores, the
    /// aggregate run by the engine's device.
    fn aggregate(&mut self) -> Result<()> {
        let table = AggregateTable::gather(&self.items, &self.config);
        let out = table.run(&self.aggregator)?;
        table.scatter(&mut self.items, &self.config, out);
        self.aggregated_on = self.aggregator.backend_name();
        Ok(())
    }
}

/// The aggregate's inputs gathered from the items' entities, in the op's layout: one row per
/// item, as wide as the item with the most entities (the rest masked out).
struct AggregateTable {
    params: AggregateParams,
    cells: AggregateCells,
}

impl AggregateTable {
    fn gather(items: &[ScoredItem], config: &Config) -> AggregateTable {
        let (weight, essential) = config.kind_table();
        let width = items.iter().map(|i| i.entities.len()).max().unwrap_or(0);
        let n = items.len() * width;
        let (mut qe, mut mask, mut kind) = (vec![0.0f32; n], vec![0u32; n], vec![0u32; n]);
        for (i, item) in items.iter().enumerate() {
            for (j, e) in item.entities.iter().enumerate() {
                let at = i * width + j;
                qe[at] = e.qe;
                mask[at] = 1;
                kind[at] = 2 * e.entity.kind.index() as u32 + u32::from(e.constrained);
            }
        }
        let params = AggregateParams::new(items.len(), width, weight.len(), config.logic, config.optional_weight);
        AggregateTable { params, cells: AggregateCells { qe, mask, kind, weight, essential } }
    }

    fn inputs(&self) -> AggregateInputs<'_> {
        self.cells.inputs()
    }

    fn items(&self) -> usize {
        self.params.items as usize
    }

    fn width(&self) -> usize {
        self.params.entities as usize
    }

    fn run(&self, aggregator: &Aggregator) -> Result<Aggregated> {
        let p = &self.params;
        aggregator.run(Logic::from_code(p.logic), p.optional_weight, self.items(), self.width(), self.inputs())
    }

    async fn run_async(&self, aggregator: &Aggregator) -> Result<Aggregated> {
        let p = &self.params;
        aggregator
            .run_async(Logic::from_code(p.logic), p.optional_weight, self.items(), self.width(), self.inputs())
            .await
    }

    /// The CPU reference, for when the device fails.
    fn run_cpu(&self) -> Aggregated {
        let mut out = Aggregated { score: vec![0.0; self.items()], contribution: vec![0.0; self.cells.qe.len()] };
        aggregate_cpu(&self.params, self.inputs(), &mut out.score, &mut out.contribution);
        out
    }

    fn scatter(&self, items: &mut [ScoredItem], config: &Config, out: Aggregated) {
        let width = self.width();
        for (i, item) in items.iter_mut().enumerate() {
            item.score = out.score[i];
            for (j, e) in item.entities.iter_mut().enumerate() {
                e.contribution = out.contribution[i * width + j];
                e.essential = self.cells.essential[self.cells.kind[i * width + j] as usize] != 0;
            }
            item.grade = grade(item, config);
            item.deciding = deciding(item);
        }
    }
}

pub(crate) fn grade(item: &ScoredItem, config: &Config) -> Grade {
    let g = &config.grades;
    if item.score >= g.exact {
        return Grade::Exact;
    }
    let product = item.entities.iter().find(|e| e.entity.kind == EntityKind::Category).map(|e| e.qe);
    match product {
        Some(t) if t <= ACCESSORY => Grade::Complement,
        Some(t) if t >= g.same_category => Grade::Substitute,
        None if item.score >= g.related_category => Grade::Substitute,
        _ => Grade::Irrelevant,
    }
}

/// Up to three entities with the largest effect; when nothing moved the score (every
/// essential entity matched perfectly), the constrained entities that matched.
fn deciding(item: &ScoredItem) -> Vec<usize> {
    let mut idx: Vec<usize> =
        (0..item.entities.len()).filter(|&i| item.entities[i].contribution.abs() > 1e-4).collect();
    idx.sort_by(|&a, &b| item.entities[b].contribution.abs().total_cmp(&item.entities[a].contribution.abs()));
    if idx.is_empty() {
        idx =
            (0..item.entities.len()).filter(|&i| item.entities[i].constrained && item.entities[i].qe >= 0.5).collect();
    }
    idx.truncate(3);
    idx
}

/// A bounded map emptied when full: enough for side caches whose misses only cost time.
struct BoundedMap<V> {
    map: Mutex<HashMap<String, V>>,
    cap: usize,
}

impl<V: Clone> BoundedMap<V> {
    fn new(cap: usize) -> Self {
        BoundedMap { map: Mutex::new(HashMap::new()), cap }
    }
    fn get(&self, key: &str) -> Option<V> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }
    fn clear(&self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    fn put(&self, key: String, value: V) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.cap {
            map.clear();
        }
        map.insert(key, value);
    }
}

/// The EBRM engine: an encoder, the extractors and the caches. Cheap to share behind an
/// `Arc`; every method takes `&self`.
pub struct Ebrm<E> {
    encoder: E,
    extractor: Extractor,
    search: CategorySearch,
    embedded: OnceLock<EmbeddedTaxonomy>,
    keywords: OnceLock<KeywordTaxonomy>,
    cache: Arc<dyn QeCache>,
    queries: BoundedMap<Arc<QueryAnalysis>>,
    title_categories: BoundedMap<Option<(String, f32)>>,
    /// Items as the checks read them, keyed by title and attributes: index-time work.
    item_views: BoundedMap<Arc<ItemView>>,
    /// Vectors of item texts (the prior's item side), which no query changes.
    item_vectors: BoundedMap<Arc<Vec<f32>>>,
    encoded: AtomicU64,
    config: Config,
    /// A cross-encoder scoring QE pairs directly; None: cosines of the encoder's vectors.
    pair_scorer: Option<Box<dyn PairScorer>>,
    /// The aggregate on the engine's device.
    aggregator: Arc<Aggregator>,
}

impl<E: TextEncoder> Ebrm<E> {
    /// An engine with a default in-process QE cache and the defaults of [`Config::for_model`],
    /// aggregating on the encoder's device (the CPU when the encoder names none).
    pub fn new(encoder: E, extractor: Extractor, search: CategorySearch) -> Ebrm<E> {
        let config = Config::for_model(encoder.id());
        let aggregator = encoder.device().map_or_else(Aggregator::cpu, |d| Arc::new(Aggregator::on(d)));
        Ebrm {
            encoder,
            extractor,
            search,
            embedded: OnceLock::new(),
            keywords: OnceLock::new(),
            cache: Arc::new(LruQeCache::default()),
            queries: BoundedMap::new(SIDE_CACHE_ENTRIES),
            title_categories: BoundedMap::new(SIDE_CACHE_ENTRIES),
            item_views: BoundedMap::new(SIDE_CACHE_ENTRIES),
            item_vectors: BoundedMap::new(VECTOR_CACHE_ENTRIES),
            encoded: AtomicU64::new(0),
            config,
            pair_scorer: None,
            aggregator,
        }
    }

    /// Aggregates on `device` instead: for an encoder without a device of its own (a table of
    /// vectors computed elsewhere) beside a session that has one. In a browser on WebGPU,
    /// rank with [`Ebrm::rank_async`] (`rank` cannot wait for the GPU there and fails).
    pub fn with_device(mut self, device: &Device) -> Self {
        self.aggregator = Arc::new(Aggregator::on(device));
        self
    }

    /// The backend the aggregate runs on.
    pub fn aggregates_on(&self) -> &'static str {
        self.aggregator.backend_name()
    }

    /// The similarity prior from a cross-encoder: (query, item text) is read by the model as
    /// one sequence and `qe = σ(logit)` (the calibration becomes [`Calibration::logit`]). The
    /// checks stay rules.
    pub fn with_pair_scorer(mut self, scorer: Box<dyn PairScorer>) -> Self {
        self.pair_scorer = Some(scorer);
        self.config.calibration = Calibration::logit();
        self
    }

    /// Category search over taxonomy embeddings already at hand (read from bytes where there
    /// is no disk cache, as in a browser) instead of building them with the encoder.
    pub fn with_embedded_taxonomy(self, taxonomy: EmbeddedTaxonomy) -> Self {
        // A fresh engine's cell is empty, so this always sets it.
        let _ = self.embedded.set(taxonomy);
        self
    }

    pub fn with_cache(mut self, cache: Arc<dyn QeCache>) -> Self {
        self.cache = cache;
        self
    }

    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn encoder(&self) -> &E {
        &self.encoder
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Empties the QE cache, and the query-analysis and title-category maps as asked
    /// (benches: all three make a first-ever request).
    pub fn clear_caches(&self, queries: bool, items: bool) {
        self.cache.clear();
        if queries {
            self.queries.clear();
        }
        if items {
            self.title_categories.clear();
            self.item_views.clear();
            self.item_vectors.clear();
        }
    }

    /// Loads what the first request would otherwise load: the taxonomy embeddings (built with
    /// the encoder and cached on disk the first time, which takes a while). A server calls
    /// this before it starts listening.
    pub fn prepare(&self) -> Result<()> {
        match &self.search {
            CategorySearch::Embedding { cache_dir } => self.embedded_taxonomy(cache_dir).map(|_| ()),
            CategorySearch::Keywords => {
                self.keywords.get_or_init(KeywordTaxonomy::new);
                Ok(())
            }
        }
    }

    /// Texts encoded since the engine was made.
    pub fn encoded_texts(&self) -> u64 {
        self.encoded.load(Ordering::Relaxed)
    }

    fn encode(&self, texts: &[&str], role: TextRole) -> Result<Vec<Vec<f32>>> {
        self.encoded.fetch_add(texts.len() as u64, Ordering::Relaxed);
        encode_checked(&self.encoder, texts, role)
    }

    fn embedded_taxonomy(&self, cache_dir: &Option<PathBuf>) -> Result<&EmbeddedTaxonomy> {
        if let Some(t) = self.embedded.get() {
            return Ok(t);
        }
        let t = EmbeddedTaxonomy::load_or_build(&self.encoder, cache_dir.as_deref())?;
        Ok(self.embedded.get_or_init(|| t))
    }

    /// Category of each text: (path, similarity), or None when the search finds nothing.
    /// `embeddings` are the texts' vectors when the search is by embedding.
    fn categories_of(&self, texts: &[&str], embeddings: &[Vec<f32>]) -> Result<Vec<Option<(String, f32)>>> {
        Ok(match &self.search {
            CategorySearch::Embedding { cache_dir } => {
                let t = self.embedded_taxonomy(cache_dir)?;
                embeddings.iter().map(|v| t.nearest(v).map(|(c, s)| (c.path.to_string(), s))).collect()
            }
            CategorySearch::Keywords => {
                let k = self.keywords.get_or_init(KeywordTaxonomy::new);
                texts.iter().map(|t| k.nearest(t).map(|(c, s)| (c.path.to_string(), s))).collect()
            }
        })
    }

    fn embeds_for_categories(&self) -> bool {
        matches!(self.search, CategorySearch::Embedding { .. })
    }

    /// The query's entities (cached by normalised query).
    pub fn analyze_query(&self, query: &str) -> Result<Arc<QueryAnalysis>> {
        let text = truncate(query.trim(), MAX_QUERY_BYTES);
        let normalized = normalize(text);
        if normalized.is_empty() {
            bail!("the query is empty");
        }
        if let Some(a) = self.queries.get(&normalized) {
            return Ok(a);
        }
        let embedding = self.encode(&[text], TextRole::Query)?.remove(0);
        let entities = self.extractor.from_text(text, Source::Query, false);
        let brands: Vec<String> =
            entities.iter().filter(|e| e.kind == EntityKind::Brand).map(|e| e.value.clone()).collect();
        let constraints = QueryConstraints::parse(text, &brands);
        let a = Arc::new(QueryAnalysis {
            text: text.to_string(),
            normalized: normalized.clone(),
            entities,
            category_similarity: None,
            embedding,
            constraints,
        });
        self.queries.put(normalized, a.clone());
        Ok(a)
    }

    /// Entities of each item, the category included (explicit, else found from the title).
    pub fn item_entities(&self, items: &[Item]) -> Result<Vec<Vec<Entity>>> {
        let mut out: Vec<Vec<Entity>> = items.iter().map(|i| self.extractor.item_entities(i)).collect();
        let mut todo: Vec<(usize, String)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.category() {
                Some(c) => {
                    // A valid taxonomy path keeps its canonical spelling; anything else is
                    // the item's own word and is kept as given (explicit wins).
                    let path = taxonomy::find_path(c).map_or_else(|| c.to_string(), |t| t.path.to_string());
                    out[i].push(Entity::new(EntityKind::Category, path, Source::Explicit));
                }
                None => match self.title_categories.get(&normalize(&item.title)) {
                    Some(found) => {
                        out[i].extend(found.map(|(p, _)| Entity::new(EntityKind::Category, p, Source::Title)))
                    }
                    None => todo.push((i, item.title.clone())),
                },
            }
        }
        if !todo.is_empty() {
            let mut unique: Vec<&str> = todo.iter().map(|(_, t)| t.as_str()).collect();
            unique.sort_unstable();
            unique.dedup();
            let embeddings =
                if self.embeds_for_categories() { self.encode(&unique, TextRole::Passage)? } else { Vec::new() };
            let found = self.categories_of(&unique, &embeddings)?;
            let by_title: HashMap<&str, Option<(String, f32)>> = unique.iter().copied().zip(found).collect();
            for (i, title) in &todo {
                let found = by_title.get(title.as_str()).cloned().flatten();
                self.title_categories.put(normalize(title), found.clone());
                out[*i].extend(found.map(|(p, _)| Entity::new(EntityKind::Category, p, Source::Title)));
            }
        }
        Ok(out)
    }

    /// Scores every item against the query: each query constraint checked against the item
    /// ([`crate::constraints`]), plus the calibrated query-item similarity, aggregated on the
    /// engine's device.
    pub fn rank(&self, query: &str, items: &[Item]) -> Result<Ranking> {
        let mut ranking = self.rank_unaggregated(query, items)?;
        ranking.aggregate()?;
        Ok(ranking)
    }

    /// [`Ebrm::rank`] awaiting the aggregate on the engine's device: how a page ranks on
    /// WebGPU, whose answers come through the event loop.
    pub async fn rank_async(&self, query: &str, items: &[Item]) -> Result<Ranking> {
        let mut ranking = self.rank_unaggregated(query, items)?;
        ranking.aggregate_async().await?;
        Ok(ranking)
    }

    /// Every item's entities with their QE scores, not yet aggregated (scores 0).
    fn rank_unaggregated(&self, query: &str, items: &[Item]) -> Result<Ranking> {
        if items.len() > MAX_ITEMS {
            bail!("{} items in one request, at most {MAX_ITEMS}", items.len());
        }
        let before = self.encoded_texts();
        let q = self.analyze_query(query)?;
        let config = &self.config;
        let item_brands = items
            .iter()
            .flat_map(|i| &i.attributes)
            .filter(|(k, _)| EntityKind::from_attribute(k) == Some(EntityKind::Brand))
            .map(|(_, v)| v.as_str());
        let more = q.constraints.with_brands_from(&q.text, item_brands);
        let constraints = more.as_ref().unwrap_or(&q.constraints);
        let mut scored: Vec<ScoredItem> = Vec::with_capacity(items.len());
        let mut sim_texts: Vec<String> = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let view = self.item_view(item);
            let mut list: Vec<ScoredEntity> = check_item(constraints, &view)
                .into_iter()
                .map(|c| ScoredEntity {
                    entity: Entity::new(c.kind, c.value, Source::Query),
                    constrained: true,
                    essential: false,
                    cosine: None,
                    qe: c.qe,
                    contribution: 0.0,
                    overridden: false,
                    evidence: c.evidence,
                    item_value: c.item_value,
                })
                .collect();
            let text = similarity_text(item);
            list.push(ScoredEntity {
                entity: Entity::new(EntityKind::Similarity, "query vs item", Source::Title),
                constrained: true,
                essential: false,
                cosine: None,
                qe: 0.0,
                contribution: 0.0,
                overridden: false,
                evidence: String::new(),
                item_value: None,
            });
            sim_texts.push(text);
            scored.push(ScoredItem {
                index,
                id: item.id.clone(),
                title: item.title.clone(),
                score: 0.0,
                grade: Grade::Irrelevant,
                entities: list,
                deciding: Vec::new(),
            });
        }

        // The similarity prior: look every (query, item text) up, score the misses in one batch.
        let model = self.pair_scorer.as_ref().map_or(self.encoder.id(), |s| s.id());
        let keys: Vec<QeKey> =
            sim_texts.iter().map(|t| QeKey::new(model, &q.normalized, EntityKind::Similarity, t)).collect();
        let mut raw: Vec<Option<f32>> = self.cache.get_many(&keys);
        let mut misses: Vec<usize> = (0..keys.len()).filter(|&k| raw[k].is_none()).collect();
        misses.sort_by(|&a, &b| keys[a].value.cmp(&keys[b].value));
        misses.dedup_by(|a, b| keys[*a].value == keys[*b].value);
        if !misses.is_empty() {
            let texts: Vec<&str> = misses.iter().map(|&k| sim_texts[k].as_str()).collect();
            let scores = match &self.pair_scorer {
                Some(scorer) => {
                    let pairs: Vec<(&str, &str)> = texts.iter().map(|t| (q.text.as_str(), *t)).collect();
                    self.encoded.fetch_add(pairs.len() as u64, Ordering::Relaxed);
                    let logits = scorer.score(&pairs)?;
                    if logits.len() != pairs.len() || logits.iter().any(|x| !x.is_finite()) {
                        bail!(
                            "QE model '{}' returned {} finite scores for {} pairs",
                            scorer.id(),
                            logits.len(),
                            pairs.len()
                        );
                    }
                    logits
                }
                None => self.item_vectors(&texts)?.iter().map(|v| cosine(&q.embedding, v)).collect(),
            };
            let fresh: HashMap<&str, f32> = texts.iter().copied().zip(scores.iter().copied()).collect();
            for (k, r) in raw.iter_mut().enumerate() {
                if r.is_none() {
                    *r = fresh.get(sim_texts[k].as_str()).copied();
                }
            }
            self.cache.put_many(misses.iter().map(|&k| (keys[k].clone(), fresh[sim_texts[k].as_str()])).collect());
        }
        for (item, r) in scored.iter_mut().zip(&raw) {
            if let Some(e) = item.entities.last_mut() {
                let c = r.unwrap_or(0.0);
                e.cosine = Some(c);
                e.qe = config.calibration.apply(EntityKind::Similarity, true, c);
            }
        }
        Ok(Ranking {
            query: (*q).clone(),
            items: scored,
            config: config.clone(),
            encoded_texts: (self.encoded_texts() - before) as usize,
            aggregator: self.aggregator.clone(),
            aggregated_on: "",
        })
    }

    /// Vectors of item texts: from the map where known, the rest encoded in one batch.
    fn item_vectors(&self, texts: &[&str]) -> Result<Vec<Arc<Vec<f32>>>> {
        let mut out: Vec<Option<Arc<Vec<f32>>>> = texts.iter().map(|t| self.item_vectors.get(t)).collect();
        let todo: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        if !todo.is_empty() {
            let batch: Vec<&str> = todo.iter().map(|&i| texts[i]).collect();
            for (&i, v) in todo.iter().zip(self.encode(&batch, TextRole::Passage)?) {
                let v = Arc::new(v);
                self.item_vectors.put(texts[i].to_string(), v.clone());
                out[i] = Some(v);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The item as the checks read it: its brand (attribute, else the first brand its title
    /// names) and its attributes. Kept in a bounded map, as an index would store it.
    fn item_view(&self, item: &Item) -> Arc<ItemView> {
        let mut key = normalize(&item.title);
        for (k, v) in &item.attributes {
            key.push_str(&format!("\u{1f}{k}\u{1f}{}", normalize(v)));
        }
        if let Some(v) = self.item_views.get(&key) {
            return v;
        }
        let brand = item
            .attributes
            .iter()
            .find(|(k, _)| EntityKind::from_attribute(k) == Some(EntityKind::Brand))
            .map(|(_, v)| v.clone())
            .or_else(|| self.extractor.first_brand(&item.title));
        let attrs: Vec<(&str, &str)> = item
            .attributes
            .iter()
            .filter(|(k, _)| EntityKind::from_attribute(k) != Some(EntityKind::Brand))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let view = Arc::new(ItemView::new(&item.title, brand.as_deref(), &attrs));
        self.item_views.put(key, view.clone());
        view
    }

    /// Plain query-item cosine: against the title, or against the title and attributes
    /// (the text the similarity prior reads).
    pub fn cosine_baseline(&self, query: &str, items: &[Item], with_attributes: bool) -> Result<Vec<f32>> {
        let item_texts: Vec<String> =
            items.iter().map(|i| if with_attributes { similarity_text(i) } else { i.title.clone() }).collect();
        let q = self.encode(&[query], TextRole::Query)?.remove(0);
        let texts: Vec<&str> = item_texts.iter().map(String::as_str).collect();
        Ok(self.encode(&texts, TextRole::Passage)?.iter().map(|t| cosine(&q, t)).collect())
    }
}

/// The text of an item the similarity prior reads: its title, then its attribute values
/// ("brand: Sony; color: Black") that the title does not already contain.
pub fn similarity_text(item: &Item) -> String {
    let title = item.title.to_lowercase();
    let mut text = item.title.clone();
    for (k, v) in &item.attributes {
        if !title.contains(&v.to_lowercase()) {
            text.push_str(&format!("; {k}: {v}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::NgramEncoder;
    use crate::vocab::{Brand, BrandList};

    fn extractor() -> Extractor {
        let brands = ["Nike", "Adidas", "Puma", "Sony", "Spigen"]
            .iter()
            .map(|n| Brand { name: n.to_string(), aliases: vec![], nsi: vec![] })
            .collect();
        Extractor::new(&BrandList { version: "t".into(), brands }).unwrap()
    }

    fn engine() -> Ebrm<NgramEncoder> {
        let x = extractor();
        Ebrm::new(NgramEncoder::default(), x, CategorySearch::Keywords)
    }

    /// A browser's engine: vectors come from a table that the caller fills between rounds
    /// (as an async GPU would), the taxonomy from a file's bytes. It must rank exactly as an
    /// engine that encodes directly, in a few rounds, and the error of a round must list the
    /// texts to encode.
    #[test]
    fn a_table_encoder_filled_between_rounds_ranks_like_direct_encoding() {
        use crate::encoder::{MissingTexts, TableEncoder};
        let dir = tempfile::tempdir().unwrap();
        let source = NgramEncoder::default();
        let search = CategorySearch::Embedding { cache_dir: Some(dir.path().to_path_buf()) };
        let direct = Ebrm::new(NgramEncoder::default(), extractor(), search);
        direct.prepare().unwrap();
        let bytes = std::fs::read(taxonomy::cache_file(dir.path(), source.id())).unwrap();
        let table = Ebrm::new(
            TableEncoder::new(source.id(), 10_000),
            extractor(),
            CategorySearch::Embedding { cache_dir: None },
        )
        .with_embedded_taxonomy(EmbeddedTaxonomy::from_bytes(&bytes).unwrap());
        let query = "red nike running shoes";
        let mut rounds = 0;
        let ranking = loop {
            match table.rank(query, &items()) {
                Ok(r) => break r,
                Err(e) => {
                    let missing = MissingTexts::in_error(&e).unwrap_or_else(|| panic!("{e:#}")).0.clone();
                    assert!(!missing.is_empty());
                    let texts: Vec<&str> = missing.iter().map(String::as_str).collect();
                    let vectors = source.encode(&texts).unwrap();
                    table.encoder().insert(missing, vectors);
                    rounds += 1;
                    assert!(rounds <= 8, "no progress after {rounds} rounds");
                }
            }
        };
        let want = direct.rank(query, &items()).unwrap();
        assert_eq!(ranking.scores(), want.scores());
        assert_eq!(ranking.order(), want.order());
        assert!((1..=8).contains(&rounds), "{rounds} rounds");
        // Warm: everything is cached or in the table now.
        assert!(table.rank(query, &items()).is_ok());
    }

    fn items() -> Vec<Item> {
        vec![
            Item::new("Nike Pegasus 40 running shoes red").with_id("exact"),
            Item::new("Adidas Ultraboost 22 running shoes red").with_id("brand-conflict"),
            Item::new("Nike Pegasus 40 running shoes blue").with_id("color"),
            Item::new("Spigen shoe laces for Nike Pegasus 40")
                .with_attribute("category", "Apparel & Accessories > Shoe Accessories > Shoelaces"),
        ]
    }

    /// A stand-in cross-encoder: a high logit when both sides share their last word ("brand:
    /// nike" / "brand: nike"), a low one otherwise; it records every pair it sees.
    struct LastWordScorer(Mutex<Vec<(String, String)>>);

    impl PairScorer for LastWordScorer {
        fn id(&self) -> &str {
            "last-word"
        }
        fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>> {
            let mut seen = self.0.lock().unwrap();
            Ok(pairs
                .iter()
                .map(|&(a, b)| {
                    seen.push((a.to_string(), b.to_string()));
                    if a.split_whitespace().last() == b.split_whitespace().last() { 6.0 } else { -6.0 }
                })
                .collect())
        }
    }

    #[test]
    fn a_cross_encoder_scores_the_similarity_prior() {
        let scorer = Arc::new(LastWordScorer(Mutex::new(Vec::new())));
        struct Shared(Arc<LastWordScorer>);
        impl PairScorer for Shared {
            fn id(&self) -> &str {
                self.0.id()
            }
            fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>> {
                self.0.score(pairs)
            }
        }
        let e = engine().with_pair_scorer(Box::new(Shared(scorer.clone())));
        let r = e.rank("nike running shoes red", &items()).unwrap();
        let prior = |i: usize| r.items[i].entities.iter().find(|e| e.entity.kind == EntityKind::Similarity).unwrap().qe;
        // σ(±6): the calibration is the plain sigmoid of the logit; "…red" ends like the query.
        assert!((prior(0) - 1.0 / (1.0 + (-6f32).exp())).abs() < 1e-6, "{:#?}", r.items[0]);
        assert!((prior(2) - 1.0 / (1.0 + 6f32.exp())).abs() < 1e-6, "{:#?}", r.items[2]);
        let pairs = scorer.0.lock().unwrap().clone();
        assert!(
            pairs.contains(&("nike running shoes red".into(), "Nike Pegasus 40 running shoes red".into())),
            "{pairs:?}"
        );
        // A second request is answered from the cache, under the scorer's id.
        let before = pairs.len();
        e.rank("nike running shoes red", &items()).unwrap();
        assert_eq!(scorer.0.lock().unwrap().len(), before);
    }

    #[test]
    fn ranks_the_exact_item_first_and_explains() {
        let e = engine();
        let r = e.rank("nike pegasus 40 running shoes red", &items()).unwrap();
        let order = r.order();
        assert_eq!(order[0], 0, "{:#?}", r.items);
        let conflict = &r.items[1];
        assert!(conflict.score < 0.1, "brand conflict vetoes: {}", conflict.score);
        let decided: Vec<EntityKind> = conflict.deciding.iter().map(|&i| conflict.entities[i].entity.kind).collect();
        assert!(decided.contains(&EntityKind::Brand), "{decided:?}");
        assert!(
            conflict.explanation().iter().any(|l| l.starts_with("brand 'nike': qe 0.05") && l.contains("item: adidas")),
            "{:?}",
            conflict.explanation()
        );
        // Another color is a conflict of the color check, and says what the item is.
        let color = r.items[2].entities.iter().find(|e| e.entity.kind == EntityKind::Color).unwrap();
        assert_eq!((color.qe, color.evidence.as_str()), (crate::constraints::CONFLICT, "item: blue"));
        assert!(r.items[0].score > r.items[2].score * 2.0, "color mismatch ranks well below exact");
        assert_eq!(r.items[0].grade, Grade::Exact);
        // Laces for the shoe: the product type is found only after "for", a complement.
        assert_eq!(r.items[3].grade, Grade::Complement, "{:#?}", r.items[3]);
    }

    #[test]
    fn kinds_the_query_does_not_constrain_are_not_checked() {
        let e = engine();
        let r = e.rank("running shoes", &items()).unwrap();
        for item in &r.items {
            let kinds: Vec<EntityKind> = item.entities.iter().map(|e| e.entity.kind).collect();
            assert_eq!(kinds, [EntityKind::Category, EntityKind::Similarity], "{item:#?}");
        }
        // Brand and color differ from item to item, and none of that costs anything.
        assert_eq!(r.items[0].entities[0].qe, r.items[1].entities[0].qe);
    }

    #[test]
    fn the_second_request_is_served_from_the_cache() {
        let e = engine();
        let first = e.rank("nike running shoes", &items()).unwrap();
        assert!(first.encoded_texts > 0);
        let misses = e.cache_stats().misses;
        let second = e.rank("Nike  RUNNING shoes", &items()).unwrap();
        assert_eq!(second.encoded_texts, 0);
        assert_eq!(e.cache_stats().misses, misses, "no new misses");
        assert_eq!(first.scores(), second.scores());
    }

    #[test]
    fn interventions_reaggregate_without_encoding() {
        let e = engine();
        let r = e.rank("nike running shoes", &items()).unwrap();
        let before = e.encoded_texts();
        let fixed = r.intervene(&[Intervention::SetQe {
            item: Some(1),
            kind: EntityKind::Brand,
            value: "nike".into(),
            qe: 1.0,
        }]);
        assert!(fixed.items[1].score > r.items[1].score * 2.0, "{} vs {}", fixed.items[1].score, r.items[1].score);
        assert!(fixed.items[1].entities.iter().any(|e| e.overridden));
        // The item's own value names the check too: "adidas" is what item 1 said.
        let by_item_value = r.intervene(&[Intervention::SetQe {
            item: None,
            kind: EntityKind::Brand,
            value: "Adidas".into(),
            qe: 1.0,
        }]);
        assert_eq!(by_item_value.items[1].score, fixed.items[1].score);
        assert_eq!(by_item_value.items[0].score, r.items[0].score, "item 0 said nike, not adidas");
        let dropped = r.intervene(&[Intervention::Drop { item: None, kind: EntityKind::Brand, value: None }]);
        assert!(dropped.items.iter().all(|i| i.entities.iter().all(|e| e.entity.kind != EntityKind::Brand)));
        assert!(dropped.items[1].score > r.items[1].score);
        assert_eq!(e.encoded_texts(), before);
        for &l in Logic::ALL {
            let other = r.with_logic(l);
            assert_eq!(other.items.len(), r.items.len());
            assert!(other.items[1].score <= other.items[0].score);
        }
    }

    /// The server shares one engine between request threads and hands rankings between them.
    #[test]
    fn engines_and_rankings_cross_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Ebrm<NgramEncoder>>();
        shared::<Ranking>();
    }

    /// Rankings, interventions and other families aggregated on the engine's device: the CPU
    /// by default, wgpu when asked, with the CPU's numbers either way.
    #[test]
    fn the_aggregate_runs_on_the_engine_device() {
        let cpu = engine();
        assert_eq!(cpu.aggregates_on(), "cpu");
        let device = match Device::open_blocking(tandem_models::BackendChoice::Wgpu) {
            Ok(d) => d,
            Err(e) => return eprintln!("skipped: no wgpu adapter ({e:#})"),
        };
        let gpu = engine().with_device(&device);
        assert_eq!(gpu.aggregates_on(), "wgpu");
        // Awkward sizes; 257 spills one item past the kernel's workgroup of 256.
        let many: Vec<Item> = (0..257).map(|i| items()[i % 4].clone()).collect();
        for n in [1, 7, 129, 257] {
            let (a, b) = (
                cpu.rank("nike running shoes", &many[..n]).unwrap(),
                gpu.rank("nike running shoes", &many[..n]).unwrap(),
            );
            let iv = [Intervention::SetQe { item: Some(0), kind: EntityKind::Brand, value: "nike".into(), qe: 0.0 }];
            let pairs = [(a.clone(), b.clone()), (a.intervene(&iv), b.intervene(&iv))]
                .into_iter()
                .chain(Logic::ALL.iter().map(|&l| (a.with_logic(l), b.with_logic(l))));
            for (a, b) in pairs {
                assert_eq!((a.aggregated_on(), b.aggregated_on()), ("cpu", "wgpu"));
                for (x, y) in a.items.iter().zip(&b.items) {
                    assert!((x.score - y.score).abs() < 1e-5, "{n} items: {} vs {}", x.score, y.score);
                    assert_eq!(x.grade, y.grade);
                    for (ex, ey) in x.entities.iter().zip(&y.entities) {
                        assert!((ex.contribution - ey.contribution).abs() < 1e-5);
                    }
                }
            }
        }
    }

    /// The awaited path a page takes: the same numbers as `rank`, aggregated on the same
    /// device, for every family.
    #[test]
    fn rank_async_awaits_the_same_aggregate() {
        let cpu = engine();
        let device = match Device::open_blocking(tandem_models::BackendChoice::Wgpu) {
            Ok(d) => d,
            Err(e) => return eprintln!("skipped: no wgpu adapter ({e:#})"),
        };
        let gpu = engine().with_device(&device);
        let many: Vec<Item> = (0..7).map(|i| items()[i % 4].clone()).collect();
        let expected = cpu.rank("nike running shoes", &many).unwrap();
        let awaited = pollster::block_on(gpu.rank_async("nike running shoes", &many)).unwrap();
        for &l in Logic::ALL {
            let (a, b) = (expected.with_logic(l), pollster::block_on(awaited.with_logic_async(l)).unwrap());
            assert_eq!((b.aggregated_on(), b.config.logic), ("wgpu", l));
            for (x, y) in a.items.iter().zip(&b.items) {
                assert!((x.score - y.score).abs() < 1e-5, "{l:?}: {} vs {}", x.score, y.score);
                assert_eq!((x.grade, &x.deciding), (y.grade, &y.deciding));
            }
        }
    }

    #[test]
    fn an_unbranded_item_is_uncertain_not_vetoed() {
        let e = engine();
        let r = e.rank("nike shoes", &[Item::new("running shoes"), Item::new("Adidas running shoes")]).unwrap();
        let brand = |i: usize| r.items[i].entities.iter().find(|e| e.entity.kind == EntityKind::Brand).unwrap().qe;
        assert_eq!(brand(0), crate::constraints::UNKNOWN);
        assert_eq!(brand(1), crate::constraints::CONFLICT);
        assert!(r.items[0].score > 3.0 * r.items[1].score);
    }

    #[test]
    fn bad_requests() {
        let e = engine();
        assert!(e.rank("   ", &items()).unwrap_err().to_string().contains("empty"));
        assert!(e.rank("x", &vec![Item::new("t"); MAX_ITEMS + 1]).is_err());
        let r = e.rank("shoes", &[]).unwrap();
        assert!(r.items.is_empty());
        let huge = "nike ".repeat(10_000);
        assert!(e.rank(&huge, &items()).is_ok());
    }

    #[test]
    fn grades_follow_the_documented_rules() {
        let e = engine();
        let r = e.rank("nike pegasus 40 running shoes", &items()).unwrap();
        assert_eq!(r.items[0].grade, Grade::Exact);
        // Brand conflict, same product type: a substitute.
        assert_eq!(r.items[1].grade, Grade::Substitute, "{:#?}", r.items[1]);
        assert_eq!(r.items[3].grade, Grade::Complement, "{:#?}", r.items[3]);
        let unrelated = e.rank("nike pegasus 40 running shoes", &[Item::new("Garden hose 50 ft")]).unwrap();
        assert_eq!(unrelated.items[0].grade, Grade::Irrelevant, "{:#?}", unrelated.items[0]);
    }
}
