//! `check_many`: many items for one query. A 0.2.x guest gets them in one
//! `check-batch` call; the reports must be those one `check` per item gives,
//! and a failing batch must fail only the items that fail alone.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fixture, typical_input};
use tandem_plugins::config::Tables;
use tandem_plugins::{
    Attribute, CallErrorKind, Candidate, Config, Entity, EntityScore, FailurePolicy, Host, Input, MAX_BATCH_ITEMS,
    Plugin, PluginSpec, Price, RuleReport, RuleSet, Verdict, combine,
};

/// Generous for a shared 2-core machine.
const BOUND: Duration = Duration::from_secs(10);

fn aliases() -> Tables {
    Arc::new([("brand-aliases".to_string(), [("apple inc".to_string(), "apple".to_string())].into())].into())
}

fn load(host: &Host, relative: &str, edit: impl FnOnce(&mut PluginSpec)) -> Plugin {
    let name = Path::new(relative).file_stem().unwrap().to_string_lossy().into_owned();
    let mut spec = PluginSpec::new(name, fixture(relative));
    spec.tables = vec!["brand-aliases".into()];
    edit(&mut spec);
    Plugin::load(host, &spec, aliases()).unwrap_or_else(|e| panic!("{e}"))
}

fn candidate(input: &Input) -> Candidate {
    Candidate { item: input.item.clone(), model: input.model.clone() }
}

/// Items that between them make every example rule keep, demote and veto,
/// with lists of different lengths (so that reused buffers must shrink and
/// grow) and with and without a price.
fn mixed_candidates() -> Vec<Candidate> {
    let base = typical_input();
    let attr = |name: &str, value: &str| Attribute { name: name.into(), value: value.into() };
    let mut items = Vec::new();
    for i in 0..12 {
        let mut c = candidate(&base);
        c.item.id = format!("sku-{i}");
        match i % 6 {
            0 => {}
            1 => {
                c.item.title = "Samsung Galaxy S24".into();
                c.item.attributes = vec![attr("brand", "Samsung")];
                c.item.category_path = vec!["Electronics".into()];
            }
            2 => {
                c.item.title = "Apple iPhone 14 64GB".into();
                c.item.attributes = vec![attr("brand", "Apple Inc"), attr("model", "iPhone 14")];
                c.item.price = None;
            }
            3 => {
                c.item.title = "Leather case for iPhone 15".into();
                c.item.category_path = vec!["Accessories".into(), "Phone Cases".into()];
                c.item.price = Some(Price { amount: 12.5, currency: "USD".into() });
                c.model.entity_scores = vec![EntityScore { kind: "brand".into(), value: "apple".into(), score: 0.2 }];
            }
            4 => {
                c.item.attributes.clear();
                c.item.category_path.clear();
                c.item.price = Some(Price { amount: 25_000.0, currency: "EUR".into() });
            }
            _ => {
                c.item.title = String::new();
                c.model.score = 0.1;
            }
        }
        items.push(c);
    }
    items
}

/// What matters of a report for comparing a batched one with a single one.
fn gist(report: &RuleReport) -> (Verdict, Vec<String>, Option<CallErrorKind>) {
    (report.verdict.clone(), report.tags.clone(), report.error.as_ref().map(|e| e.kind))
}

#[test]
fn batched_reports_match_single_checks() {
    let host = Host::new().unwrap();
    let mut base = typical_input();
    base.query.entities.push(Entity { kind: "price-max".into(), value: "900".into() });
    base.query.entities.push(Entity { kind: "category".into(), value: "mobile phones".into() });
    let candidates = mixed_candidates();
    for rule in ["brand-conflict", "category-mismatch", "model-number", "price-band"] {
        let plugin = load(&host, &format!("rules/{rule}.wasm"), |_| {});
        assert_eq!(plugin.world_version(), "0.2.0");
        assert!(plugin.batches());
        let batched = plugin.check_many(&base.query, &candidates);
        assert_eq!(batched.len(), candidates.len());
        let mut kinds = std::collections::BTreeSet::new();
        for (c, report) in candidates.iter().zip(&batched) {
            let single =
                plugin.check(&Input { query: base.query.clone(), item: c.item.clone(), model: c.model.clone() });
            assert_eq!(gist(report), gist(&single), "{rule}, item {}", c.item.id);
            assert!(report.error.is_none(), "{rule}: {report:?}");
            assert_eq!(&*report.plugin, rule);
            assert!(report.fuel.is_some_and(|f| f > 0), "{rule}: each item gets a share of the fuel");
            kinds.insert(report.verdict.kind());
        }
        assert!(kinds.len() >= 2, "{rule}: the items should not all get the same verdict ({kinds:?})");
        // Healthy batches reuse their instance.
        assert_eq!(plugin.stats().instantiations, 1, "{rule}");
        assert_eq!(plugin.stats().calls, 2 * candidates.len() as u64);
    }
}

#[test]
fn large_sets_are_split_and_empty_sets_are_fine() {
    let host = Host::new().unwrap();
    let plugin = load(&host, "bench/always-keep.wasm", |_| {});
    let input = typical_input();
    assert!(plugin.check_many(&input.query, &[]).is_empty());
    let many = vec![candidate(&input); 2 * MAX_BATCH_ITEMS + 3];
    let reports = plugin.check_many(&input.query, &many);
    assert_eq!(reports.len(), many.len());
    assert!(reports.iter().all(|r| r.error.is_none() && r.verdict == Verdict::Keep));
}

#[test]
fn a_batch_gets_n_times_the_fuel_of_a_call() {
    let host = Host::new().unwrap();
    // Enough fuel for one brand-conflict item, far from enough for two.
    let probe = load(&host, "rules/brand-conflict.wasm", |_| {});
    let input = typical_input();
    let one = probe.check(&input).fuel.unwrap();
    let plugin = load(&host, "rules/brand-conflict.wasm", |s| s.limits.fuel = one * 3 / 2);
    let candidates = vec![candidate(&input); 8];
    let reports = plugin.check_many(&input.query, &candidates);
    assert!(reports.iter().all(|r| r.error.is_none()), "{reports:?}");
    let total: u64 = reports.iter().map(|r| r.fuel.unwrap()).sum();
    assert!(total <= 8 * (one * 3 / 2), "fuel {total} over the batch budget");
}

#[test]
fn a_failing_item_fails_alone() {
    let host = Host::new().unwrap();
    for policy in [FailurePolicy::Open, FailurePolicy::Closed] {
        let plugin = load(&host, "hostile/trap.wasm", |s| s.failure = policy);
        let input = typical_input();
        let ids = ["ok-1", "sku-2", "ok-3", "ok-4", "sku-5"];
        let candidates: Vec<Candidate> = ids
            .iter()
            .map(|id| {
                let mut c = candidate(&input);
                c.item.id = id.to_string();
                c
            })
            .collect();
        let reports = plugin.check_many(&input.query, &candidates);
        assert_eq!(reports.len(), ids.len());
        for (id, report) in ids.iter().zip(&reports) {
            if id.starts_with("ok-") {
                assert!(report.error.is_none(), "{id}: {report:?}");
                assert_eq!(report.verdict, Verdict::Keep);
            } else {
                assert_eq!(report.error.as_ref().map(|e| e.kind), Some(CallErrorKind::Trap), "{id}");
                assert_eq!(report.verdict.kind(), if policy == FailurePolicy::Open { "keep" } else { "veto" });
            }
        }
        assert_eq!(plugin.stats().failures, 2);
        assert_eq!(plugin.stats().calls, ids.len() as u64);
    }
}

/// Runs a hostile plugin on a batch twice; every item must fail with `kind`
/// under the failure policy, in bounded time, and the plugin keep serving.
fn contained(plugin: &Plugin, kind: CallErrorKind) {
    let input = typical_input();
    let candidates = vec![candidate(&input); 3];
    for _ in 0..2 {
        let start = Instant::now();
        let reports = plugin.check_many(&input.query, &candidates);
        assert!(start.elapsed() < BOUND, "{}: batch took {:?}", plugin.name(), start.elapsed());
        assert_eq!(reports.len(), candidates.len());
        for report in &reports {
            let error = report.error.as_ref().unwrap_or_else(|| panic!("{}: {report:?}", plugin.name()));
            assert_eq!(error.kind, kind, "{}: {error}", plugin.name());
            assert_eq!(report.verdict, Verdict::Keep);
        }
    }
}

#[test]
fn hostile_batches_are_contained() {
    let host = Host::new().unwrap();
    contained(&load(&host, "hostile/loop.wasm", |_| {}), CallErrorKind::OutOfFuel);
    let no_fuel = |s: &mut PluginSpec| {
        s.limits.fuel = 0;
        s.limits.deadline_ms = 20;
    };
    contained(&load(&host, "hostile/loop.wasm", no_fuel), CallErrorKind::Deadline);
    contained(&load(&host, "hostile/memory-growth.wasm", |_| {}), CallErrorKind::ResourceCap);
    contained(&load(&host, "hostile/recursion.wasm", |_| {}), CallErrorKind::StackOverflow);
    contained(&load(&host, "hostile/trap.wasm", |_| {}), CallErrorKind::Trap);
    contained(&load(&host, "hostile/bad-factor.wasm", |_| {}), CallErrorKind::BadOutput);
    let roomy = |s: &mut PluginSpec| {
        s.limits.fuel = 500_000_000;
        s.limits.deadline_ms = 2_000;
    };
    contained(&load(&host, "hostile/huge-output.wasm", roomy), CallErrorKind::BadOutput);
    // And a good plugin next to them still answers right.
    let good = load(&host, "rules/brand-conflict.wasm", |_| {});
    let input = typical_input();
    let mut other = candidate(&input);
    other.item.attributes = vec![Attribute { name: "brand".into(), value: "Samsung".into() }];
    let reports = good.check_many(&input.query, &[candidate(&input), other]);
    assert_eq!(reports[0].verdict, Verdict::Keep);
    assert_eq!(reports[1].verdict.kind(), "veto");
}

#[test]
fn a_0_1_guest_is_called_once_per_item() {
    let host = Host::new().unwrap();
    let mut spec = PluginSpec::new("patch-version", fixture("compat/patch-version.wasm"));
    spec.tables = vec!["verdicts".into()];
    let tables = Arc::new([("verdicts".to_string(), [("sku-2".to_string(), "listed".to_string())].into())].into());
    let plugin = Plugin::load(&host, &spec, tables).unwrap();
    assert_eq!(plugin.world_version(), "0.1.1");
    assert!(!plugin.batches());
    let input = typical_input();
    let candidates: Vec<Candidate> = (1..=3)
        .map(|i| {
            let mut c = candidate(&input);
            c.item.id = format!("sku-{i}");
            c
        })
        .collect();
    let reports = plugin.check_many(&input.query, &candidates);
    let verdicts: Vec<&str> = reports.iter().map(|r| r.verdict.kind()).collect();
    assert_eq!(verdicts, ["keep", "veto", "keep"]);
    assert!(reports.iter().all(|r| r.logs.len() == 1), "each call logs once");
}

#[test]
fn a_rule_set_checks_many_items_per_plugin() {
    let dir = std::env::temp_dir().join(format!("tandem-plugins-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "[tables.brand-aliases]\n\"apple inc\" = \"apple\"\n\n\
         [[plugin]]\nname = \"brand\"\npath = \"{}\"\ntables = [\"brand-aliases\"]\n\n\
         [[plugin]]\nname = \"model\"\npath = \"{}\"\nfailure = \"closed\"\n",
        fixture("rules/brand-conflict.wasm").display(),
        fixture("rules/model-number.wasm").display(),
    );
    let path = dir.join("rules.toml");
    std::fs::write(&path, config).unwrap();
    let set = RuleSet::new(Host::new().unwrap(), &Config::from_file(&path).unwrap()).unwrap();
    let input = typical_input();
    let mut samsung = candidate(&input);
    samsung.item.attributes = vec![Attribute { name: "brand".into(), value: "Samsung".into() }];
    let reports = set.check_many(&input.query, &[candidate(&input), samsung]);
    assert_eq!(reports.len(), 2);
    let plugins: Vec<&str> = reports[0].iter().map(|r| &*r.plugin).collect();
    assert_eq!(plugins, ["brand", "model"]);
    assert_eq!(combine(&reports[0]).factor, 1.0);
    assert_eq!(combine(&reports[1]).vetoed_by, [Arc::from("brand")]);
    let _ = std::fs::remove_dir_all(&dir);
}
