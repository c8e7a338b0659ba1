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
    for line in CaseLines::new(&mut reader, cases.display().to_string()) {
        match line? {
            (_, CaseLine::Tables(t)) => {
                // Cases before this line run with the tables before it.
                run.cases(&mut pending, out)?;
                run.set_tables(t);
            }
            (number, CaseLine::Case(case)) => {
                let same_query = pending.last().is_some_and(|(_, last)| last.query == case.query);
                if !(options.batch && same_query) {
                    run.cases(&mut pending, out)?;
                }
                pending.push((number, *case));
            }
        }
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

/// One line of a cases file that is not blank or a comment.
pub enum CaseLine {
    /// `{"tables": {...}}`: the lookup tables for the cases that follow.
    Tables(HashMap<String, HashMap<String, String>>),
    Case(Box<Case>),
}

/// The lines of a cases file, each with its line number, parsed; blank and comment lines
/// skipped. An error names the file and line, and ends the iteration.
pub struct CaseLines<R> {
    reader: R,
    name: String,
    number: usize,
    failed: bool,
}

impl<R: BufRead> CaseLines<R> {
    /// `name` (the file's path) prefixes the errors.
    pub fn new(reader: R, name: String) -> Self {
        CaseLines { reader, name, number: 0, failed: false }
    }

    fn next_line(&mut self) -> anyhow::Result<Option<(usize, CaseLine)>> {
        let mut line = Vec::new();
        loop {
            line.clear();
            self.number += 1;
            let at = format!("{}:{}", self.name, self.number);
            let n =
                (&mut self.reader).take(MAX_LINE_BYTES + 1).read_until(b'\n', &mut line).with_context(|| at.clone())?;
            if n == 0 {
                return Ok(None);
            }
            if n as u64 > MAX_LINE_BYTES {
                bail!("{at}: line longer than {MAX_LINE_BYTES} bytes");
            }
            let text = std::str::from_utf8(&line).map_err(|e| anyhow::anyhow!("{at}: not UTF-8 ({e})"))?;
            if let Some(parsed) = parse_case_line(text).with_context(|| at.clone())? {
                return Ok(Some((self.number, parsed)));
            }
        }
    }
}

impl<R: BufRead> Iterator for CaseLines<R> {
    type Item = anyhow::Result<(usize, CaseLine)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_line().transpose();
        self.failed = matches!(next, Some(Err(_)));
        next
    }
}

/// One line of a cases file: `None` when it is blank or a comment (`#`, `//`).
pub fn parse_case_line(line: &str) -> anyhow::Result<Option<CaseLine>> {
    let text = line.trim();
    if text.is_empty() || text.starts_with('#') || text.starts_with("//") {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(text)?;
    if let Some(t) = value.get("tables") {
        let t = serde_json::from_value(t.clone()).context("tables")?;
        return Ok(Some(CaseLine::Tables(t)));
    }
    let case: Case = serde_json::from_value(value)?;
    if let Some(expect) = &case.expect
        && !["keep", "demote", "veto"].iter().any(|v| v.eq_ignore_ascii_case(expect))
    {
        bail!("expect: \"keep\", \"demote\" or \"veto\", not {expect:?}");
    }
    Ok(Some(CaseLine::Case(Box::new(case))))
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

/// A test case: a query, an item and the model's view, and the verdict expected.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
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
    /// The plugin's input for this case.
    pub fn input(&self) -> Input {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(text: &[u8]) -> anyhow::Result<Vec<(usize, CaseLine)>> {
        CaseLines::new(text, "cases.jsonl".into()).collect()
    }

    #[test]
    fn case_lines_skip_blanks_and_comments_and_keep_line_numbers() {
        let text = br#"# a comment

{"tables": {"brand-aliases": {"apple inc": "apple"}}}
// another
{"query": {"text": "apple phone"}, "item": {"id": "1", "title": "iPhone 15"}, "expect": "Keep"}
"#;
        let lines = parse_all(text).unwrap();
        assert_eq!(lines.len(), 2);
        assert!(matches!(&lines[0], (3, CaseLine::Tables(t)) if t["brand-aliases"]["apple inc"] == "apple"));
        let (5, CaseLine::Case(case)) = &lines[1] else { panic!("line 5 is a case") };
        assert_eq!(case.input().item.title, "iPhone 15");
        assert_eq!(case.input().model.score, 1.0);
    }

    #[test]
    fn bad_lines_name_the_file_the_line_and_the_fault() {
        let case = r#"{"query": {"text": "q"}, "item": {"id": "1", "title": "t"}"#;
        let (bad_expect, unknown) = (format!("{case}, \"expect\": \"kept\"}}"), format!("{case}, \"extra\": 1}}"));
        let cases: &[(&[u8], &str)] = &[
            (b"{\"query\": 1}\n", "cases.jsonl:1: invalid type: integer `1`"),
            (b"\n{\"tables\": {\"t\": [1]}}", "cases.jsonl:2: tables: invalid type: sequence"),
            (bad_expect.as_bytes(), "expect: \"keep\", \"demote\" or \"veto\", not \"kept\""),
            (unknown.as_bytes(), "unknown field `extra`"),
            (b"{\"query\": \"\xff\"}", "cases.jsonl:1: not UTF-8"),
        ];
        for (text, message) in cases {
            let err = parse_all(text).err().unwrap_or_else(|| panic!("{} parsed", String::from_utf8_lossy(text)));
            assert!(format!("{err:#}").contains(message), "{}: {err:#}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_reading_on() {
        let mut text = vec![b' '; MAX_LINE_BYTES as usize + 10];
        text.push(b'\n');
        let mut lines = CaseLines::new(text.as_slice(), "big.jsonl".into());
        let err = lines.next().unwrap().err().unwrap();
        assert!(err.to_string().contains("big.jsonl:1: line longer than"), "{err}");
        assert!(lines.next().is_none(), "iteration ends at the first error");
    }
}
