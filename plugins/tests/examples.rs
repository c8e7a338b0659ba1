//! The example rules give the expected verdicts through `rules check`.

mod common;

use common::{example_cases, fixture};
use tandem_plugins::cli::{CheckOptions, rules_check, rules_check_with};

fn check_example(name: &str) {
    let batched = CheckOptions { batch: true, ..Default::default() };
    for options in [CheckOptions::default(), batched] {
        check_example_with(name, &options);
    }
}

fn check_example_with(name: &str, options: &CheckOptions) {
    let plugin = fixture(&format!("rules/{name}.wasm"));
    let mut out = Vec::new();
    let summary = rules_check_with(&plugin, &example_cases(name), options, &mut out).expect("rules check runs");
    let text = String::from_utf8(out).expect("utf-8 output");
    assert!(summary.cases >= 8, "{name}: only {} cases", summary.cases);
    assert_eq!(summary.expected, summary.cases, "{name}: every case states its expected verdict");
    assert_eq!(summary.errors, 0, "{name}: no call may fail:\n{text}");
    assert!(summary.ok(), "{name}: {} of {} cases gave another verdict:\n{text}", summary.failed, summary.cases);
    // One line per case plus the summary, each a JSON object.
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("each output line is JSON")).collect();
    assert_eq!(lines.len(), summary.cases + 1);
    for line in &lines[..summary.cases] {
        assert!(line["verdict"].is_string() && line["fuel"].is_u64() && line["time_us"].is_f64(), "{line}");
        if line["verdict"] != "keep" {
            assert!(line["reason"].as_str().is_some_and(|r| !r.is_empty()), "a non-keep verdict says why: {line}");
        }
    }
    assert!(lines[summary.cases]["summary"]["passed"] == summary.cases);
}

#[test]
fn brand_conflict() {
    check_example("brand-conflict");
}

#[test]
fn category_mismatch() {
    check_example("category-mismatch");
}

#[test]
fn model_number() {
    check_example("model-number");
}

#[test]
fn price_band() {
    check_example("price-band");
}

#[test]
fn reasons_name_the_conflict() {
    let plugin = fixture("rules/model-number.wasm");
    let mut out = Vec::new();
    rules_check(&plugin, &example_cases("model-number"), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["verdict"], "veto");
    assert_eq!(first["reason"], "model number mismatch: query wants iphone 15, item is iphone 14");
    assert_eq!(first["tags"][0], "model-number-mismatch");
}
