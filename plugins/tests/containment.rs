//! Attacks on the host itself rather than on the guest's own budget: a guest
//! that spends its time in host calls, one that logs huge lines, one whose
//! results alias one huge string, one that lies about its batch, one whose
//! allocator lies. Each runs through `check` (one item) and `check_many` (a
//! batch), and must cost the host bounded time and memory.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{fixture, typical_input};
use tandem_plugins::{
    CallErrorKind, Candidate, Host, Input, MAX_LOG_BYTES, MAX_LOGS_PER_CALL, Plugin, PluginSpec, RuleReport, Verdict,
};

/// Generous for a shared 2-core machine; the limits themselves are 50 ms per item.
const BOUND: Duration = Duration::from_secs(10);

fn spec(relative: &str) -> PluginSpec {
    let name = Path::new(relative).file_stem().unwrap().to_string_lossy().into_owned();
    PluginSpec::new(name, fixture(relative))
}

fn load(host: &Host, spec: &PluginSpec) -> Plugin {
    Plugin::load(host, spec, Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn candidates(n: usize) -> Vec<Candidate> {
    let input = typical_input();
    (0..n)
        .map(|i| {
            let mut c = Candidate { item: input.item.clone(), model: input.model.clone() };
            c.item.id = format!("sku-{i}");
            c
        })
        .collect()
}

/// Runs `f` on another thread and fails the test if it takes longer than
/// [`BOUND`], instead of hanging the test run when a guest is not stopped.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || tx.send(f()));
    match rx.recv_timeout(BOUND) {
        Ok(value) => value,
        Err(_) => panic!("{what} still running after {:?}: the guest was not stopped", start.elapsed()),
    }
}

fn assert_failed(report: &RuleReport, kind: CallErrorKind, needle: &str) {
    let error = report.error.as_ref().unwrap_or_else(|| panic!("expected {kind:?}, got {report:?}"));
    assert_eq!(error.kind, kind, "{error}");
    assert!(error.message.contains(needle), "{needle:?} not in {:?}", error.message);
    assert_eq!(report.verdict, Verdict::Keep, "fail-open");
}

#[test]
fn a_host_call_loop_stops_at_the_deadline_after_the_host_is_dropped() {
    // What `tandem relevance --rules` did: load with a host, then drop the host.
    let plugin = load(&Host::new().unwrap(), &spec("hostile/host-call-loop.wasm"));
    let plugin = std::sync::Arc::new(plugin);
    let p = plugin.clone();
    let (report, elapsed) = bounded("check", move || {
        let start = Instant::now();
        (p.check(&typical_input()), start.elapsed())
    });
    // Each iteration burns little fuel: only the 50 ms deadline stops it soon.
    assert_failed(&report, CallErrorKind::Deadline, "50 ms");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");

    let p = plugin.clone();
    let reports = bounded("check_many", move || p.check_many(&typical_input().query, &candidates(3)));
    assert_eq!(reports.len(), 3);
    reports.iter().for_each(|r| assert_failed(r, CallErrorKind::Deadline, "50 ms"));
}

#[test]
fn huge_log_lines_are_kept_at_their_cut_length() {
    let host = Host::new().unwrap();
    let mut s = spec("hostile/huge-log-lines.wasm");
    // Room to build a 14 MiB line: what is under test is the host's memory.
    s.limits.fuel = 2_000_000_000;
    s.limits.deadline_ms = 5_000;
    let plugin = load(&host, &s);
    let cut = MAX_LOG_BYTES + '…'.len_utf8();
    let held =
        |reports: &[RuleReport]| -> usize { reports.iter().flat_map(|r| &r.logs).map(|l| l.message.capacity()).sum() };

    let report = plugin.check(&typical_input());
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.logs.len(), MAX_LOGS_PER_CALL);
    assert_eq!(report.logs_dropped, 20 - MAX_LOGS_PER_CALL as u32);
    for line in &report.logs {
        assert_eq!(line.message.len(), cut);
        // The allocation, not just the length: a truncated 14 MiB String
        // would still hold 14 MiB.
        assert!(line.message.capacity() <= cut, "a kept line holds {} bytes", line.message.capacity());
    }

    // 42 items in one batch: every report is kept to the end of the batch.
    let reports = plugin.check_many(&typical_input().query, &candidates(42));
    assert!(reports.iter().all(|r| r.error.is_none()));
    let kept = reports.iter().map(|r| r.logs.len()).sum::<usize>();
    assert!(kept >= 1, "the batch kept no log line at all");
    assert!(held(&reports) <= kept * cut, "{} bytes held by {kept} log lines", held(&reports));
}

#[test]
fn results_aliasing_one_huge_string_hit_the_copy_limit() {
    let host = Host::new().unwrap();
    let plugin = load(&host, &spec("hostile/aliased-output.wasm"));
    // One item (a batch of one): one 8 MiB reason fits the copy limit, and
    // is then refused as too long.
    let report = plugin.check(&typical_input());
    assert_failed(&report, CallErrorKind::BadOutput, "reason is 8388608 bytes");

    // Four vetoes whose reasons are the same 8 MiB: 32 MiB to copy out of a
    // 8 MiB guest, so the batch fails as a whole; each item is then checked
    // alone with `check`, which returns 15 tags aliasing the same 8 MiB.
    let reports = plugin.check_many(&typical_input().query, &candidates(4));
    assert_eq!(reports.len(), 4);
    for r in &reports {
        assert_failed(r, CallErrorKind::ResourceCap, "copied more than");
    }
}

#[test]
fn a_miscounted_batch_is_checked_item_by_item() {
    let host = Host::new().unwrap();
    let plugin = load(&host, &spec("hostile/batch-miscount.wasm"));
    let mut items = candidates(5);
    items[1].item.title = "please veto this".into();
    items[3].item.title = "veto".into();
    let reports = plugin.check_many(&typical_input().query, &items);
    let verdicts: Vec<&str> = reports.iter().map(|r| r.verdict.kind()).collect();
    assert_eq!(verdicts, ["keep", "veto", "keep", "veto", "keep"]);
    assert!(reports.iter().all(|r| r.error.is_none()), "{reports:?}");
    assert_eq!(plugin.stats().failures, 0);

    // A batch of one (how `check` calls a 0.2 guest) is re-checked with `check` too.
    let input = Input { query: typical_input().query, item: items[3].item.clone(), model: items[3].model.clone() };
    let report = plugin.check(&input);
    assert_eq!(report.verdict.kind(), "veto");
    assert!(report.error.is_none(), "{report:?}");
}

#[test]
fn an_allocator_returning_wild_pointers_is_a_trap() {
    let host = Host::new().unwrap();
    let plugin = load(&host, &spec("hostile/bad-realloc.wasm"));
    let report = plugin.check(&typical_input());
    assert_failed(&report, CallErrorKind::Trap, "realloc");
    let reports = plugin.check_many(&typical_input().query, &candidates(3));
    reports.iter().for_each(|r| assert_failed(r, CallErrorKind::Trap, "realloc"));
}
