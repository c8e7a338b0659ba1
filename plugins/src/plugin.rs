//! One loaded version of one plugin: its compiled component, a pool of warm
//! instances, and the call path with limits, error classification and the
//! failure policy.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap};

use crate::Input;
use crate::config::{FailurePolicy, PluginSpec, Tables};
use crate::host::bindings::tandem::rules::types::{Outcome, Verdict as WitVerdict};
use crate::host::bindings::{RulePlugin, RulePluginPre};
use crate::host::{GuestState, Host, LogRate};
use crate::load::{self, LoadError};
use crate::report::{CallError, CallErrorKind, RuleReport, Verdict};

/// Longest reason accepted from a rule, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Most tags accepted from one call.
pub const MAX_TAGS: usize = 16;
/// Longest tag accepted, in bytes.
pub const MAX_TAG_BYTES: usize = 64;

/// A plugin ready to serve checks. Shareable across threads: each call takes
/// a warm instance from the pool (or makes one) and gives it back if healthy.
pub struct Plugin {
    name: Arc<str>,
    spec: PluginSpec,
    tables: Tables,
    pre: RulePluginPre<GuestState>,
    digest: [u8; 32],
    world_version: String,
    rate: Arc<LogRate>,
    idle: Mutex<Vec<Warm>>,
    stats: Stats,
}

/// Counters since this version of the plugin was loaded.
#[derive(Debug, Default)]
struct Stats {
    calls: AtomicU64,
    failures: AtomicU64,
    instantiations: AtomicU64,
}

/// A snapshot of [`Plugin`] counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PluginStats {
    pub calls: u64,
    pub failures: u64,
    pub instantiations: u64,
}

struct Warm {
    store: Store<GuestState>,
    bindings: RulePlugin,
}

impl Plugin {
    /// Reads, validates, compiles and test-instantiates the plugin `spec`
    /// names. Nothing of the guest runs except its start-up code, under the
    /// same limits as a call.
    pub fn load(host: &Host, spec: &PluginSpec, tables: Tables) -> Result<Plugin, LoadError> {
        let (bytes, digest) = load::read(&spec.path)?;
        Self::from_bytes(host, spec, tables, &bytes, digest)
    }

    pub(crate) fn from_bytes(
        host: &Host,
        spec: &PluginSpec,
        tables: Tables,
        bytes: &[u8],
        digest: [u8; 32],
    ) -> Result<Plugin, LoadError> {
        let path = spec.path.as_path();
        load::check_header(path, bytes)?;
        let fuel = spec.limits.fuel > 0;
        let flavor = host.flavor(fuel);
        let component = host
            .compile(fuel, digest, bytes)
            .map_err(|e| LoadError::Compile { path: path.to_owned(), message: format!("{e:#}") })?;
        let world_version = load::check_world(path, &flavor.engine, &component)?;
        let instantiate_err =
            |e: wasmtime::Error| LoadError::Instantiate { path: path.to_owned(), message: format!("{e:#}") };
        let pre = flavor.linker.instantiate_pre(&component).map_err(instantiate_err)?;
        let pre = RulePluginPre::new(pre).map_err(instantiate_err)?;
        let plugin = Plugin {
            name: spec.name.as_str().into(),
            spec: spec.clone(),
            tables,
            pre,
            digest,
            world_version,
            rate: Arc::new(LogRate::new()),
            idle: Mutex::new(Vec::new()),
            stats: Stats::default(),
        };
        // One instance up front: start-up code that traps, loops or needs
        // more memory than the cap fails the load, not the first call.
        let warm =
            plugin.instantiate().map_err(|e| LoadError::Instantiate { path: path.to_owned(), message: e.message })?;
        plugin.give_back(warm);
        Ok(plugin)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    pub fn path(&self) -> &Path {
        &self.spec.path
    }

    /// SHA-256 of the component file this version was loaded from.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The tandem:rules version the guest was built against (0.1.x).
    pub fn world_version(&self) -> &str {
        &self.world_version
    }

    pub fn stats(&self) -> PluginStats {
        PluginStats {
            calls: self.stats.calls.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
            instantiations: self.stats.instantiations.load(Ordering::Relaxed),
        }
    }

    /// Runs the rule on one query-item pair. Never panics and never returns
    /// an error: a failing guest yields the failure policy's verdict with
    /// `error` set, and its instance is discarded.
    pub fn check(&self, input: &Input) -> RuleReport {
        let start = Instant::now();
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut warm = match self.take() {
            Ok(w) => w,
            Err(e) => return self.failed(e, start, None, Vec::new(), 0),
        };
        self.arm(&mut warm.store);
        let result = warm.bindings.tandem_rules_rule().call_check(&mut warm.store, input);
        let fuel = self.fuel_used(&warm.store);
        let state = warm.store.data_mut();
        let logs = std::mem::take(&mut state.logs);
        let logs_dropped = std::mem::take(&mut state.logs_dropped);
        let outcome = match result {
            Ok(outcome) => validate(outcome),
            Err(e) => Err(classify(&e, warm.store.data_mut().limiter.hit.take(), &self.spec)),
        };
        match outcome {
            Ok((verdict, tags)) => {
                self.give_back(warm);
                RuleReport {
                    plugin: self.name.clone(),
                    verdict,
                    tags,
                    fuel,
                    elapsed: start.elapsed(),
                    error: None,
                    logs,
                    logs_dropped,
                }
            }
            // A trapped instance may be in any state: drop it; the next call
            // gets a fresh one. Bad output came from a healthy instance, but
            // one that misbehaves once is not trusted again either.
            Err(e) => self.failed(e, start, fuel, logs, logs_dropped),
        }
    }

    fn failed(
        &self,
        error: CallError,
        start: Instant,
        fuel: Option<u64>,
        logs: Vec<crate::report::LogLine>,
        logs_dropped: u32,
    ) -> RuleReport {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let verdict = match self.spec.failure {
            FailurePolicy::Open => Verdict::Keep,
            FailurePolicy::Closed => {
                Verdict::Veto { reason: format!("rule {} failed (fail-closed): {error}", self.name) }
            }
        };
        RuleReport {
            plugin: self.name.clone(),
            verdict,
            tags: Vec::new(),
            fuel,
            elapsed: start.elapsed(),
            error: Some(error),
            logs,
            logs_dropped,
        }
    }

    /// Sets this call's fuel budget and deadline.
    fn arm(&self, store: &mut Store<GuestState>) {
        let limits = &self.spec.limits;
        if limits.fuel > 0 {
            // Only fails on an engine without fuel, which fuel > 0 rules out.
            let _ = store.set_fuel(limits.fuel);
        }
        store.set_epoch_deadline(Host::deadline_ticks(Duration::from_millis(limits.deadline_ms)));
    }

    fn fuel_used(&self, store: &Store<GuestState>) -> Option<u64> {
        let budget = self.spec.limits.fuel;
        (budget > 0).then(|| budget.saturating_sub(store.get_fuel().unwrap_or(0)))
    }

    fn take(&self) -> Result<Warm, CallError> {
        let warm = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        match warm {
            Some(w) => Ok(w),
            None => self.instantiate(),
        }
    }

    fn give_back(&self, warm: Warm) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.spec.limits.pool_size.max(1) {
            idle.push(warm);
        }
    }

    fn instantiate(&self) -> Result<Warm, CallError> {
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let state = GuestState::new(&self.spec.limits, self.tables.clone(), self.rate.clone());
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // Start-up code runs under the same budget as a call.
        self.arm(&mut store);
        match self.pre.instantiate(&mut store) {
            Ok(bindings) => Ok(Warm { store, bindings }),
            Err(e) => {
                let mut err = classify(&e, store.data_mut().limiter.hit.take(), &self.spec);
                if err.kind == CallErrorKind::Trap {
                    err.kind = CallErrorKind::Instantiate;
                }
                Err(err)
            }
        }
    }
}

/// Turns a wasmtime error into a kind and a message an operator can act on.
fn classify(error: &wasmtime::Error, cap_hit: Option<String>, spec: &PluginSpec) -> CallError {
    if let Some(message) = cap_hit {
        return CallError { kind: CallErrorKind::ResourceCap, message };
    }
    let (kind, message) = match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => {
            (CallErrorKind::OutOfFuel, format!("used up its fuel budget of {} units", spec.limits.fuel))
        }
        Some(Trap::Interrupt) => {
            (CallErrorKind::Deadline, format!("ran past its deadline of {} ms", spec.limits.deadline_ms))
        }
        Some(Trap::StackOverflow) => (CallErrorKind::StackOverflow, "overflowed the wasm stack".to_string()),
        Some(Trap::UnreachableCodeReached) => {
            (CallErrorKind::Trap, "wasm trap: `unreachable` executed (a panic, in a Rust guest)".to_string())
        }
        Some(trap) => (CallErrorKind::Trap, trap.to_string()),
        None => (CallErrorKind::Trap, format!("{error:#}")),
    };
    CallError { kind, message }
}

/// Enforces the output caps and the demotion range. By the time this runs,
/// wasmtime has already copied the outcome out of the guest; that copy is
/// bounded by the guest's memory cap (the strings lived there), so the caps
/// here decide what is passed on, not what the host can be made to allocate.
fn validate(outcome: Outcome) -> Result<(Verdict, Vec<String>), CallError> {
    let bad = |message: String| CallError { kind: CallErrorKind::BadOutput, message };
    let check_reason = |reason: &str| {
        if reason.len() > MAX_REASON_BYTES {
            Err(bad(format!("reason is {} bytes; the cap is {MAX_REASON_BYTES}", reason.len())))
        } else {
            Ok(())
        }
    };
    if outcome.tags.len() > MAX_TAGS {
        return Err(bad(format!("{} tags; the cap is {MAX_TAGS}", outcome.tags.len())));
    }
    if let Some(t) = outcome.tags.iter().find(|t| t.len() > MAX_TAG_BYTES) {
        return Err(bad(format!("a tag is {} bytes; the cap is {MAX_TAG_BYTES}", t.len())));
    }
    let verdict = match outcome.verdict {
        WitVerdict::Keep => Verdict::Keep,
        WitVerdict::Demote(d) => {
            check_reason(&d.reason)?;
            // NaN fails this test too.
            if !(d.factor > 0.0 && d.factor <= 1.0) {
                return Err(bad(format!("demotion factor {} is outside (0, 1]", d.factor)));
            }
            Verdict::Demote { factor: d.factor, reason: d.reason }
        }
        WitVerdict::Veto(reason) => {
            check_reason(&reason)?;
            Verdict::Veto { reason }
        }
    };
    Ok((verdict, outcome.tags))
}
