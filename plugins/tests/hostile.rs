//! Hostile guests are contained: each yields a clear load error or the
//! failure policy's verdict within a bounded time, and the host keeps
//! answering, for the same plugin and for others.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fixture, typical_input};
use tandem_plugins::{CallErrorKind, FailurePolicy, Host, LoadError, Plugin, PluginSpec, RuleReport, Verdict};

/// Generous for a shared 2-core machine; the limits themselves are 50 ms.
const BOUND: Duration = Duration::from_secs(5);

fn spec(relative: &str) -> PluginSpec {
    let path = fixture(relative);
    let name = Path::new(relative).file_stem().unwrap().to_string_lossy().into_owned();
    PluginSpec::new(name, path)
}

fn load(host: &Host, spec: &PluginSpec) -> Plugin {
    Plugin::load(host, spec, Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn load_err(host: &Host, relative: &str) -> LoadError {
    let start = Instant::now();
    let err = match Plugin::load(host, &spec(relative), Default::default()) {
        Ok(_) => panic!("{relative} must not load"),
        Err(e) => e,
    };
    assert!(start.elapsed() < BOUND, "{relative}: rejecting took {:?}", start.elapsed());
    err
}

/// Calls a hostile plugin twice (the second call gets a fresh instance) and
/// checks each call fails with `kind`, in bounded time, under the policy.
fn contained(plugin: &Plugin, kind: CallErrorKind) -> RuleReport {
    let mut last = None;
    for _ in 0..2 {
        let start = Instant::now();
        let report = plugin.check(&typical_input());
        let elapsed = start.elapsed();
        assert!(elapsed < BOUND, "{}: call took {elapsed:?}", plugin.name());
        let error =
            report.error.as_ref().unwrap_or_else(|| panic!("{}: expected {kind:?}, got {report:?}", plugin.name()));
        assert_eq!(error.kind, kind, "{}: {error}", plugin.name());
        assert!(!error.message.is_empty());
        match plugin.spec().failure {
            FailurePolicy::Open => assert_eq!(report.verdict, Verdict::Keep),
            FailurePolicy::Closed => assert!(matches!(report.verdict, Verdict::Veto { .. })),
        }
        last = Some(report);
    }
    last.unwrap()
}

/// A healthy plugin still gives the right verdict.
fn healthy_still_serves(host: &Host) {
    let good = load(host, &spec("rules/model-number.wasm"));
    let mut input = typical_input();
    input.item.title = "Apple iPhone 14".into();
    input.item.attributes.clear();
    input.query.entities.clear();
    let report = good.check(&input);
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.verdict.kind(), "veto");
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let host = Host::new().unwrap();
    let plugin = load(&host, &spec("hostile/loop.wasm"));
    let report = contained(&plugin, CallErrorKind::OutOfFuel);
    assert_eq!(report.fuel, Some(plugin.spec().limits.fuel));
    assert!(report.error.unwrap().message.contains("fuel budget"));
    healthy_still_serves(&host);
}

#[test]
fn infinite_loop_without_fuel_hits_the_deadline() {
    let host = Host::new().unwrap();
    let mut s = spec("hostile/loop.wasm");
    s.limits.fuel = 0;
    s.limits.deadline_ms = 20;
    let plugin = load(&host, &s);
    let start = Instant::now();
    let report = contained(&plugin, CallErrorKind::Deadline);
    assert_eq!(report.fuel, None);
    assert!(report.error.unwrap().message.contains("20 ms"));
    // Two calls at 20 ms each (plus one tick): well under a second.
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    healthy_still_serves(&host);
}

#[test]
fn memory_growth_hits_the_cap() {
    let host = Host::new().unwrap();
    let plugin = load(&host, &spec("hostile/memory-growth.wasm"));
    let report = contained(&plugin, CallErrorKind::ResourceCap);
    assert!(report.error.unwrap().message.contains("memory cap of 16777216 bytes"));
    // One at load, used and dropped by the first call; a fresh one for the second.
    assert_eq!(plugin.stats().instantiations, 2, "each failed call's instance is replaced");
    healthy_still_serves(&host);
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let host = Host::new().unwrap();
    let plugin = load(&host, &spec("hostile/recursion.wasm"));
    contained(&plugin, CallErrorKind::StackOverflow);
    healthy_still_serves(&host);
}

#[test]
fn huge_output_is_refused() {
    let host = Host::new().unwrap();
    // Enough budget to build the output: the cap on it must be what stops it.
    let mut s = spec("hostile/huge-output.wasm");
    s.limits.fuel = 500_000_000;
    s.limits.deadline_ms = 2_000;
    let plugin = load(&host, &s);
    let report = contained(&plugin, CallErrorKind::BadOutput);
    let message = report.error.unwrap().message;
    assert!(message.contains("cap is"), "{message}");
    assert!(report.tags.is_empty());
    healthy_still_serves(&host);
}

#[test]
fn trap_yields_the_policy_verdict() {
    let host = Host::new().unwrap();
    let open = load(&host, &spec("hostile/trap.wasm"));
    let report = contained(&open, CallErrorKind::Trap);
    assert!(report.error.unwrap().message.contains("unreachable"));

    let mut closed = spec("hostile/trap.wasm");
    closed.failure = FailurePolicy::Closed;
    let closed = load(&host, &closed);
    let report = contained(&closed, CallErrorKind::Trap);
    let Verdict::Veto { reason } = report.verdict else { unreachable!() };
    assert!(reason.contains("unreachable") && reason.contains("fail-closed"), "{reason}");
    healthy_still_serves(&host);
}

#[test]
fn log_flood_is_rate_limited() {
    let host = Host::new().unwrap();
    let plugin = load(&host, &spec("hostile/log-flood.wasm"));
    let start = Instant::now();
    let report = plugin.check(&typical_input());
    assert!(start.elapsed() < BOUND);
    // A million messages do not fit the budget; what got through is capped.
    let kind = report.error.as_ref().map(|e| e.kind);
    assert!(matches!(kind, Some(CallErrorKind::OutOfFuel | CallErrorKind::Deadline)), "{report:?}");
    assert!(report.logs.len() <= 8, "{} log lines kept", report.logs.len());
    assert!(report.logs.iter().all(|l| l.message.len() <= 512 + '…'.len_utf8()));
    assert!(report.logs_dropped > 0);
    healthy_still_serves(&host);
}

#[test]
fn invalid_demotion_factors_are_refused() {
    let host = Host::new().unwrap();
    let plugin = load(&host, &spec("hostile/bad-factor.wasm"));
    for _ in 0..3 {
        let report = plugin.check(&typical_input());
        let error = report.error.expect("a demotion outside (0, 1] is refused");
        assert_eq!(error.kind, CallErrorKind::BadOutput);
        assert!(error.message.contains("outside (0, 1]"), "{}", error.message);
        assert_eq!(report.verdict, Verdict::Keep);
    }
}

#[test]
fn wasi_import_is_rejected_by_name() {
    let host = Host::new().unwrap();
    let err = load_err(&host, "hostile/wasi-import.wasm");
    assert!(matches!(err, LoadError::ForbiddenImport { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("wasi:cli/environment@0.2.0") && message.contains("no WASI"), "{message}");
    healthy_still_serves(&host);
}

#[test]
fn unknown_import_is_rejected_by_name() {
    let host = Host::new().unwrap();
    let err = load_err(&host, "hostile/unknown-import.wasm");
    let message = err.to_string();
    assert!(matches!(err, LoadError::ForbiddenImport { .. }), "{message}");
    assert!(message.contains("hostile:unknown-import/socket"), "{message}");
    healthy_still_serves(&host);
}

#[test]
fn other_world_version_is_rejected_naming_it() {
    let host = Host::new().unwrap();
    let err = load_err(&host, "hostile/other-version.wasm");
    let message = err.to_string();
    assert!(matches!(&err, LoadError::WorldVersion { found, .. } if found == "0.3.0"), "{message}");
    assert!(message.contains("tandem:rules@0.3.0") && message.contains("0.2.x and 0.1.x"), "{message}");
    healthy_still_serves(&host);
}

#[test]
fn not_wasm_and_core_modules_are_rejected() {
    let host = Host::new().unwrap();
    assert!(matches!(load_err(&host, "hostile/not-wasm.wasm"), LoadError::NotWasm { .. }));
    let err = load_err(&host, "hostile/core-module.wasm");
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("wasm-tools component new"));

    // A truncated component gets past the header but not the compiler.
    let dir = tempdir();
    let bytes = std::fs::read(fixture("rules/price-band.wasm")).unwrap();
    let truncated = dir.join("truncated.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Plugin::load(&host, &PluginSpec::new("truncated", &truncated), Default::default()).err().unwrap();
    assert!(matches!(err, LoadError::Compile { .. }), "{err}");
    assert!(err.to_string().contains("truncated.wasm"));

    let missing = dir.join("missing.wasm");
    let err = Plugin::load(&host, &PluginSpec::new("missing", &missing), Default::default()).err().unwrap();
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
    healthy_still_serves(&host);
}

#[test]
fn same_minor_version_is_accepted() {
    let host = Host::new().unwrap();
    let mut s = spec("compat/patch-version.wasm");
    s.tables = vec!["verdicts".into()];
    let tables = Arc::new([("verdicts".to_string(), [("sku-123456".to_string(), "listed".to_string())].into())].into());
    let plugin = Plugin::load(&host, &s, tables).unwrap();
    assert_eq!(plugin.world_version(), "0.1.1");
    let report = plugin.check(&typical_input());
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.verdict, Verdict::Veto { reason: "listed".into() });
    assert_eq!(report.tags, ["v0.1.1"]);
    assert_eq!(report.logs[0].message, "hello from 0.1.1");
}

#[test]
fn compat_fixture_is_the_published_world_at_0_1_1() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bindings/rules");
    let published = std::fs::read_to_string(root.join("wit/0.1.0/world.wit")).unwrap();
    let copy = std::fs::read_to_string(root.join("compat/patch-version/wit/world.wit")).unwrap();
    assert_eq!(copy, published.replace("@0.1.0", "@0.1.1"), "regenerate the compat WIT from wit/0.1.0/world.wit");
}

#[test]
fn a_looping_plugin_does_not_block_others() {
    let host = Host::new().unwrap();
    let mut s = spec("hostile/loop.wasm");
    s.limits.fuel = 0;
    s.limits.deadline_ms = 300;
    let hostile = Arc::new(load(&host, &s));
    let good = load(&host, &spec("rules/brand-conflict.wasm"));
    let spinner = {
        let hostile = hostile.clone();
        std::thread::spawn(move || hostile.check(&typical_input()))
    };
    for _ in 0..200 {
        let report = good.check(&typical_input());
        assert!(report.error.is_none());
        assert_eq!(report.verdict, Verdict::Keep);
    }
    let report = spinner.join().unwrap();
    assert_eq!(report.error.unwrap().kind, CallErrorKind::Deadline);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tandem-plugins-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
