//! `tandem rules check PLUGIN.wasm --cases cases.jsonl`: runs a plugin on
//! each case and prints one JSON line per case (verdict, reason, fuel, time)
//! and a summary line.
//!
//! A cases file holds one JSON object per line; blank lines and lines
//! starting with `#` or `//` are skipped:
//!
//! ```text
//! {"tables": {"brand-aliases": {"apple inc": "apple"}}}
//! {"name": "alias", "query": {"text": "apple phone", "entities": [{"kind": "brand", "value": "Apple"}]},
//!  "item": {"id": "1", "title": "iPhone 15", "attributes": {"brand": "Apple Inc"}}, "expect": "keep"}
//! ```
//!
//! A `tables` line sets the lookup tables the plugin sees from then on. A case
//! has `query` (`text`, `entities`), `item` (`id`, `title`, `attributes` as a
//! name-to-value object, `category_path`, `price` as `{amount, currency}`),
//! optionally `model` (`score`, default 1, and `entity_scores`), `name`, and
//! `expect` ("keep", "demote" or "veto"); a case whose verdict differs from
//! `expect` counts as failed in the summary.
//!
//! With [`CheckOptions::batch`], consecutive cases with the same query are
//! checked together through [`Plugin::check_many`] (one `check-batch` call
//! for a 0.2.x guest); each case's fuel and time are then its share of its
//! batch's.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::config::{FailurePolicy, Limits, PluginSpec, Tables};
use crate::{
    Attribute, Candidate, Entity, EntityScore, Host, Input, Item, ModelView, Plugin, Price, Query, RuleReport,
};

/// Cases longer than this (bytes per line) are refused.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// How `rules check` runs the plugin.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    pub limits: Limits,
    pub failure: FailurePolicy,
    /// Check consecutive cases with the same query in one `check_many`.
    pub batch: bool,
}

/// Totals over a cases file.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub cases: usize,
    pub keep: usize,
    pub demote: usize,
    pub veto: usize,
    /// Calls that failed (trap, fuel, deadline, bad output); their verdict
    /// is the failure policy's.
    pub errors: usize,
    /// Cases with an `expect`, and how many of those matched.
    pub expected: usize,
    pub passed: usize,
    pub failed: usize,
    pub fuel_total: u64,
    pub time_us_mean: f64,
    pub time_us_max: f64,
}

impl Summary {
    /// True when no call failed and every expectation held.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.errors == 0
    }
}

/// Runs `plugin` on every case of `cases` with default limits, fail-open.
pub fn rules_check(plugin: &Path, cases: &Path, out: &mut impl Write) -> anyhow::Result<Summary> {
    rules_check_with(plugin, cases, &CheckOptions::default(), out)
}

pub fn rules_check_with(
    plugin: &Path,
    cases: &Path,
    options: &CheckOptions,
    out: &mut impl Write,
) -> anyhow::Result<Summary> {
    let host = Host::new().map_err(|e| anyhow::anyhow!("cannot start the plugin host: {e}"))?;
    let file = std::fs::File::open(cases).with_context(|| format!("cannot open cases file {}", cases.display()))?;
    let mut reader = BufReader::new(file);
    let mut spec = PluginSpec::new(plugin_name(plugin), plugin);
    spec.limits = options.limits.clone();
    spec.failure = options.failure;
    let mut run = Run {
        host,
        spec,
        tables: Arc::new(HashMap::new()),
        loaded: None,
        batch: options.batch,
        summary: Summary::default(),
        time_total: 0.0,
    };
    // Cases read but not yet run: in batch mode, those sharing one query.
    let mut pending: Vec<(usize, Case)> = Vec::new();
    let mut line = String::new();
    for number in 1.. {
        line.clear();
        let n = (&mut reader).take(MAX_LINE_BYTES + 1).read_line(&mut line)?;
        if n == 0 {
            break;
        }
        let at = || format!("{}:{number}", cases.display());
        if n as u64 > MAX_LINE_BYTES {
            bail!("{}: line longer than {MAX_LINE_BYTES} bytes", at());
        }
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') || text.starts_with("//") {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(text).with_context(at)?;
        if let Some(t) = value.get("tables") {
            let t: HashMap<String, HashMap<String, String>> =
                serde_json::from_value(t.clone()).with_context(|| format!("{}: tables", at()))?;
            // Cases before this line run with the tables before it.
            run.cases(&mut pending, out)?;
            run.set_tables(t);
            continue;
        }
        let case: Case = serde_json::from_value(value).with_context(at)?;
        let same_query = pending.last().is_some_and(|(_, last)| last.query == case.query);
        if !(options.batch && same_query) {
            run.cases(&mut pending, out)?;
        }
        pending.push((number, case));
    }
    run.cases(&mut pending, out)?;
    let Run { mut summary, time_total, .. } = run;
    if summary.cases > 0 {
        summary.time_us_mean = round_ns(time_total / summary.cases as f64);
    }
    #[derive(Serialize)]
    struct SummaryLine<'a> {
        summary: &'a Summary,
    }
    serde_json::to_writer(&mut *out, &SummaryLine { summary: &summary })?;
    writeln!(out)?;
    Ok(summary)
}

/// The state of one `rules_check`: the plugin as loaded for the current
/// tables, and the totals so far.
struct Run {
    host: Host,
    spec: PluginSpec,
    tables: Tables,
    /// Loaded at the first case after a change of tables.
    loaded: Option<Plugin>,
    batch: bool,
    summary: Summary,
    time_total: f64,
}

impl Run {
    fn set_tables(&mut self, tables: HashMap<String, HashMap<String, String>>) {
        self.spec.tables = tables.keys().cloned().collect();
        self.tables = Arc::new(tables);
        self.loaded = None;
    }

    /// Runs `pending` (all with one query in batch mode), prints a line for
    /// each and counts them.
    fn cases(&mut self, pending: &mut Vec<(usize, Case)>, out: &mut impl Write) -> anyhow::Result<()> {
        let Some((_, first)) = pending.first() else { return Ok(()) };
        let plugin = match &mut self.loaded {
            Some(plugin) => plugin,
            empty => empty.insert(Plugin::load(&self.host, &self.spec, self.tables.clone())?),
        };
        let reports: Vec<RuleReport> = if self.batch {
            let candidates: Vec<Candidate> = pending.iter().map(|(_, case)| case.candidate()).collect();
            plugin.check_many(&first.query.to_query(), &candidates)
        } else {
            pending.iter().map(|(_, case)| plugin.check(&case.input())).collect()
        };
        for ((number, case), report) in pending.drain(..).zip(&reports) {
            self.count(&case, report);
            let name = case.name.clone().unwrap_or_else(|| format!("line {number}"));
            let pass = passed(&case, report);
            let row = CaseRow { case: name, line: number, report, expect: case.expect.as_deref(), pass };
            serde_json::to_writer(&mut *out, &row)?;
            writeln!(out)?;
        }
        Ok(())
    }

    fn count(&mut self, case: &Case, report: &RuleReport) {
        let summary = &mut self.summary;
        let time_us = report.elapsed.as_secs_f64() * 1e6;
        let pass = passed(case, report);
        summary.cases += 1;
        match report.verdict.kind() {
            "keep" => summary.keep += 1,
            "demote" => summary.demote += 1,
            _ => summary.veto += 1,
        }
        summary.errors += usize::from(report.error.is_some());
        summary.expected += usize::from(pass.is_some());
        summary.passed += usize::from(pass == Some(true));
        summary.failed += usize::from(pass == Some(false));
        summary.fuel_total += report.fuel.unwrap_or(0);
        self.time_total += time_us;
        summary.time_us_max = round_ns(summary.time_us_max.max(time_us));
    }
}

/// Whether the case's `expect` held; `None` without one. A failed call never
/// passes: its verdict is the policy's, not the rule's.
fn passed(case: &Case, report: &RuleReport) -> Option<bool> {
    case.expect.as_ref().map(|e| report.error.is_none() && e.eq_ignore_ascii_case(report.verdict.kind()))
}

/// Microseconds to three decimals: nanosecond resolution, no float noise.
fn round_ns(us: f64) -> f64 {
    (us * 1e3).round() / 1e3
}

fn plugin_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into())
}

#[derive(Serialize)]
struct CaseRow<'a> {
    case: String,
    line: usize,
    #[serde(flatten)]
    report: &'a RuleReport,
    expect: Option<&'a str>,
    pass: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: Option<String>,
    query: CaseQuery,
    item: CaseItem,
    #[serde(default)]
    model: CaseModel,
    expect: Option<String>,
}

#[derive(Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct CaseQuery {
    text: String,
    #[serde(default)]
    entities: Vec<CaseEntity>,
}

#[derive(Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct CaseEntity {
    kind: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseItem {
    id: String,
    title: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    category_path: Vec<String>,
    price: Option<CasePrice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasePrice {
    amount: f64,
    currency: String,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CaseModel {
    score: f32,
    entity_scores: Vec<CaseEntityScore>,
}

impl Default for CaseModel {
    /// Rules run on items the model kept, so a case without a model view
    /// stands for a confident one.
    fn default() -> Self {
        CaseModel { score: 1.0, entity_scores: Vec::new() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseEntityScore {
    kind: String,
    value: String,
    score: f32,
}

impl Case {
    fn input(&self) -> Input {
        let Candidate { item, model } = self.candidate();
        Input { query: self.query.to_query(), item, model }
    }

    fn candidate(&self) -> Candidate {
        let i = &self.item;
        Candidate {
            item: Item {
                id: i.id.clone(),
                title: i.title.clone(),
                attributes: i
                    .attributes
                    .iter()
                    .map(|(name, value)| Attribute { name: name.clone(), value: value.clone() })
                    .collect(),
                category_path: i.category_path.clone(),
                price: i.price.as_ref().map(|p| Price { amount: p.amount, currency: p.currency.clone() }),
            },
            model: ModelView {
                score: self.model.score,
                entity_scores: self
                    .model
                    .entity_scores
                    .iter()
                    .map(|s| EntityScore { kind: s.kind.clone(), value: s.value.clone(), score: s.score })
                    .collect(),
            },
        }
    }
}

impl CaseQuery {
    fn to_query(&self) -> Query {
        Query {
            text: self.text.clone(),
            entities: self.entities.iter().map(|e| Entity { kind: e.kind.clone(), value: e.value.clone() }).collect(),
        }
    }
}
