//! The config, and hot reload: a valid new file is swapped in atomically; an
//! invalid one leaves the old version serving and is reported.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime};

use common::{fixture, typical_input};
use tandem_plugins::{Config, FailurePolicy, Host, ReloadEvent, RuleSet, Verdict};

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-plugins-reload-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces `path` the way a deploy would (write aside, rename over), with a
/// distinct modification time so the change is visible however coarse the
/// file system's clock.
fn replace(path: &Path, bytes: &[u8]) {
    static BUMP: AtomicU64 = AtomicU64::new(1);
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, bytes).unwrap();
    let when = SystemTime::now() + Duration::from_secs(BUMP.fetch_add(1, Ordering::Relaxed));
    std::fs::File::options().write(true).open(&aside).unwrap().set_modified(when).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn component(relative: &str) -> Vec<u8> {
    std::fs::read(fixture(relative)).unwrap()
}

/// A config with one plugin, `rule`, whose file starts as brand-conflict.
fn setup(name: &str) -> (PathBuf, Config) {
    let dir = tempdir(name);
    replace(&dir.join("rule.wasm"), &component("rules/brand-conflict.wasm"));
    let toml = r#"
        poll_ms = 10

        [tables.brand-aliases]
        "apple inc" = "apple"

        [[plugin]]
        name = "rule"
        path = "rule.wasm"
        fuel = 1_000_000
        deadline_ms = 100
        failure = "closed"
        tables = ["brand-aliases"]
    "#;
    std::fs::write(dir.join("plugins.toml"), toml).unwrap();
    let config = Config::from_file(&dir.join("plugins.toml")).unwrap();
    (dir, config)
}

/// Brand-conflict keeps the typical input; model-number vetoes it once the
/// item is an iPhone 14.
fn iphone_14() -> tandem_plugins::Input {
    let mut input = typical_input();
    input.item.title = "Apple iPhone 14 128GB".into();
    input.item.attributes.retain(|a| a.name == "brand");
    input.query.entities.retain(|e| e.kind == "brand");
    input
}

fn verdict(set: &RuleSet) -> Verdict {
    let reports = set.check(&iphone_14());
    assert_eq!(reports.len(), 1);
    assert!(reports[0].error.is_none(), "{:?}", reports[0]);
    reports[0].verdict.clone()
}

#[test]
fn config_reads_limits_policy_and_tables() {
    let (dir, config) = setup("config");
    let spec = &config.plugins[0];
    assert_eq!(spec.path, dir.join("rule.wasm"));
    assert_eq!(spec.limits.fuel, 1_000_000);
    assert_eq!(spec.limits.deadline_ms, 100);
    assert_eq!(spec.limits.memory_bytes, 16 << 20, "unset limits take their defaults");
    assert_eq!(spec.failure, FailurePolicy::Closed);
    assert_eq!(config.tables_for(spec)["brand-aliases"]["apple inc"], "apple");

    let bad = |toml: &str| {
        std::fs::write(dir.join("bad.toml"), toml).unwrap();
        Config::from_file(&dir.join("bad.toml")).unwrap_err().to_string()
    };
    let e = bad("[[plugin]]\nname = \"a\"\npath = \"a.wasm\"\nfuell = 5\n");
    assert!(e.contains("fuell"), "a misspelt limit is an error: {e}");
    let e = bad("[[plugin]]\nname = \"a\"\npath = \"a.wasm\"\ntables = [\"nope\"]\n");
    assert!(e.contains("table `nope`"), "{e}");
    let e = bad("[[plugin]]\nname = \"a\"\npath = \"a.wasm\"\n[[plugin]]\nname = \"a\"\npath = \"b.wasm\"\n");
    assert!(e.contains("name used twice"), "{e}");
    let e = bad("[[plugin]]\nname = \"a\"\npath = \"a.wasm\"\nfailure = \"maybe\"\n");
    assert!(e.contains("maybe"), "{e}");
}

#[test]
fn valid_file_is_swapped_in_and_invalid_one_keeps_the_old() {
    let (dir, config) = setup("swap");
    let path = dir.join("rule.wasm");
    let set = RuleSet::new(Host::new().unwrap(), &config).unwrap();
    assert_eq!(verdict(&set), Verdict::Keep);
    assert!(set.poll().is_empty(), "nothing changed yet");
    let first_sha = set.status()[0].sha256.clone();

    // A valid new version serves from the next call on.
    replace(&path, &component("rules/model-number.wasm"));
    let events = set.poll();
    assert!(matches!(&events[..], [ReloadEvent::Reloaded { plugin, .. }] if plugin == "rule"), "{events:?}");
    assert!(matches!(verdict(&set), Verdict::Veto { reason } if reason.contains("iphone 15")));
    let status = &set.status()[0];
    assert_eq!(status.reloads, 1);
    assert_ne!(status.sha256, first_sha);
    assert!(status.last_error.is_none());

    // Invalid files, one after another: each is reported once, the old one serves.
    for (bytes, expected) in [
        (b"garbage".to_vec(), "not WebAssembly"),
        (component("hostile/other-version.wasm"), "tandem:rules@0.2.0"),
        (component("hostile/wasi-import.wasm"), "no WASI"),
        (component("hostile/core-module.wasm"), "core wasm module"),
    ] {
        replace(&path, &bytes);
        let events = set.poll();
        let [ReloadEvent::Rejected { error, .. }] = &events[..] else { panic!("{events:?}") };
        assert!(error.contains(expected) && error.contains("still serving"), "{error}");
        assert!(set.poll().is_empty(), "a bad file is reported once");
        assert!(matches!(verdict(&set), Verdict::Veto { .. }), "the previous version still serves");
        let status = &set.status()[0];
        assert!(status.last_error.as_deref().is_some_and(|e| e.contains(expected)));
        assert_eq!(status.reloads, 1);
    }

    // The file vanishes: reported, still serving.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(&set.poll()[..], [ReloadEvent::Rejected { error, .. }] if error.contains("cannot read")));
    assert!(matches!(verdict(&set), Verdict::Veto { .. }));

    // A good file again clears the error.
    replace(&path, &component("rules/brand-conflict.wasm"));
    assert!(matches!(&set.poll()[..], [ReloadEvent::Reloaded { .. }]));
    assert_eq!(verdict(&set), Verdict::Keep);
    let status = &set.status()[0];
    assert_eq!((status.reloads, status.last_error.as_deref()), (2, None));
    assert_eq!(status.sha256, first_sha);
}

#[test]
fn same_bytes_do_not_reload() {
    let (dir, config) = setup("touch");
    let set = RuleSet::new(Host::new().unwrap(), &config).unwrap();
    replace(&dir.join("rule.wasm"), &component("rules/brand-conflict.wasm"));
    assert!(set.poll().is_empty());
    assert_eq!(set.status()[0].reloads, 0);
}

#[test]
fn watcher_reloads_while_calls_continue() {
    let (dir, config) = setup("watch");
    let path = dir.join("rule.wasm");
    let set = Arc::new(RuleSet::new(Host::new().unwrap(), &config).unwrap());
    let (tx, rx) = mpsc::channel();
    let watcher = set.watch(Duration::from_millis(config.poll_ms), move |e| {
        let _ = tx.send(e.clone());
    });
    let watcher = watcher.unwrap();

    // Callers never see an error or a torn state while versions swap.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (set, stop) = (set.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut calls = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for report in set.check(&iphone_14()) {
                    assert!(report.error.is_none(), "{report:?}");
                }
                calls += 1;
            }
            calls
        })
    };
    for round in 0..3 {
        let (file, kind) =
            if round % 2 == 0 { ("rules/model-number.wasm", "veto") } else { ("rules/brand-conflict.wasm", "keep") };
        replace(&path, &component(file));
        let event = rx.recv_timeout(Duration::from_secs(10)).expect("the watcher notices the new file");
        assert!(matches!(event, ReloadEvent::Reloaded { .. }), "{event:?}");
        assert_eq!(verdict(&set).kind(), kind);
    }
    replace(&path, b"\0asm broken");
    let event = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(&event, ReloadEvent::Rejected { error, .. } if error.contains("does not compile")), "{event:?}");
    stop.store(true, Ordering::Relaxed);
    assert!(caller.join().unwrap() > 0);
    drop(watcher);
    assert_eq!(set.status()[0].reloads, 3);
}
