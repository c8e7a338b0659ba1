//! One loaded version of one plugin: its compiled component, a pool of warm
//! instances, and the call paths (one item, or a batch of items for one
//! query) with limits, error classification and the failure policy.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap};

use crate::config::{FailurePolicy, PluginSpec, Tables};
use crate::host::bindings::tandem::rules::batch::{Batch, PackedItem};
use crate::host::bindings::tandem::rules::types::{Outcome, Verdict as WitVerdict};
use crate::host::bindings::{RulePlugin, RulePluginPre};
use crate::host::bindings_v0_1::{RulePlugin as RulePluginV0_1, RulePluginPre as RulePluginPreV0_1};
use crate::host::{GuestState, Host, LogRate};
use crate::load::{self, LoadError, World};
use crate::report::{CallError, CallErrorKind, LogLine, RuleReport, Verdict};
use crate::{Input, Item, ModelView, Query};

/// Longest reason accepted from a rule, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Most tags accepted from one call.
pub const MAX_TAGS: usize = 16;
/// Longest tag accepted, in bytes.
pub const MAX_TAG_BYTES: usize = 64;
/// Most items [`Plugin::check_many`] passes to a guest in one call. Larger
/// sets are split: this bounds the memory a batch needs in the guest and the
/// work redone when a batch fails and its items are checked one by one.
pub const MAX_BATCH_ITEMS: usize = 256;

/// One item to judge against a query in [`Plugin::check_many`]: the item and
/// the model's view of it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub item: Item,
    pub model: ModelView,
}

/// A plugin ready to serve checks. Shareable across threads: each call takes
/// a warm instance from the pool (or makes one) and gives it back if healthy.
pub struct Plugin {
    /// Held, not used: the host's epoch thread is what makes deadlines fire,
    /// and it runs until the last clone of the host is gone. A plugin must be
    /// bounded whoever else drops their handle to the host.
    _host: Host,
    name: Arc<str>,
    spec: PluginSpec,
    tables: Tables,
    pre: Pre,
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
    /// Items checked, one per report (a batch of n items counts n).
    pub calls: u64,
    /// Reports with an error.
    pub failures: u64,
    pub instantiations: u64,
}

/// The pre-linked component, by the world version it was built for.
enum Pre {
    V0_1(RulePluginPreV0_1<GuestState>),
    V0_2(RulePluginPre<GuestState>),
}

/// An instance's exports, by world version.
enum Exports {
    V0_1(RulePluginV0_1),
    V0_2(RulePlugin),
}

struct Warm {
    store: Store<GuestState>,
    exports: Exports,
    /// Kept between batches so that packing one reuses the previous one's
    /// buffers instead of allocating.
    batch: Batch,
}

impl Warm {
    fn check(&mut self, input: &Input) -> wasmtime::Result<Outcome> {
        match &self.exports {
            Exports::V0_1(e) => e.tandem_rules_rule().call_check(&mut self.store, input),
            Exports::V0_2(e) => e.tandem_rules_rule().call_check(&mut self.store, input),
        }
    }

    /// What the guest logged since the last call, and how many messages the
    /// limits dropped.
    fn take_logs(&mut self) -> (Vec<LogLine>, u32) {
        let state = self.store.data_mut();
        (std::mem::take(&mut state.logs), std::mem::take(&mut state.logs_dropped))
    }

    fn take_cap_hit(&mut self) -> Option<String> {
        self.store.data_mut().limiter.hit.take()
    }
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
        let (world_version, world) = load::check_world(path, &flavor.engine, &component)?;
        let instantiate_err =
            |e: wasmtime::Error| LoadError::Instantiate { path: path.to_owned(), message: format!("{e:#}") };
        let pre = flavor.linker.instantiate_pre(&component).map_err(instantiate_err)?;
        let pre = match world {
            World::V0_1 => Pre::V0_1(RulePluginPreV0_1::new(pre).map_err(instantiate_err)?),
            World::V0_2 => Pre::V0_2(RulePluginPre::new(pre).map_err(instantiate_err)?),
        };
        let plugin = Plugin {
            _host: host.clone(),
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

    /// The tandem:rules version the guest was built against (0.1.x or 0.2.x).
    pub fn world_version(&self) -> &str {
        &self.world_version
    }

    /// True when the guest exports `check-batch` (world 0.2.x), so that
    /// [`Plugin::check_many`] passes many items per call.
    pub fn batches(&self) -> bool {
        matches!(self.pre, Pre::V0_2(_))
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
    ///
    /// A 0.2.x guest gets the pair as a batch of one: the batch's flat
    /// encoding costs the guest 5 allocations instead of one per string and
    /// list (~25 for a typical item), which makes even one item cheaper than
    /// `check`; the limits, the checks on the outcome and the report are the
    /// same.
    pub fn check(&self, input: &Input) -> RuleReport {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        match self.pre {
            Pre::V0_2(_) => {
                let mut reports = Vec::with_capacity(1);
                self.check_batch(&input.query, &[(&input.item, &input.model)], &mut reports);
                reports.pop().expect("check_batch reports every item")
            }
            Pre::V0_1(_) => self.check_one(input),
        }
    }

    /// Runs the rule on every candidate against `query`: one report per
    /// candidate, in order, each as [`Plugin::check`] would give it (never
    /// panics, failures yield the failure policy's verdict).
    ///
    /// A 0.2.x guest gets up to [`MAX_BATCH_ITEMS`] candidates per call
    /// (`check-batch`), which pays the fixed cost of a call and the query's
    /// strings once per batch. The batch runs under n times the per-call fuel
    /// and deadline, n its number of items; each report carries an even share
    /// (n-th, rounded down) of the batch's fuel and time, and the first one
    /// its log lines. If a batch of several items fails (trap, fuel, deadline,
    /// cap), or a batch of any size returns a wrong number of outcomes, its
    /// instance is discarded and its items are checked again one by one with
    /// `check`, so only the items that fail alone get the failure policy: a
    /// guest that fails on everything costs up to twice its n calls' limits. An outcome the host refuses (too large, bad factor) fails only
    /// its item. A 0.1.x guest is called once per candidate.
    pub fn check_many(&self, query: &Query, candidates: &[Candidate]) -> Vec<RuleReport> {
        self.stats.calls.fetch_add(candidates.len() as u64, Ordering::Relaxed);
        let mut reports = Vec::with_capacity(candidates.len());
        for chunk in candidates.chunks(MAX_BATCH_ITEMS) {
            let items: Vec<(&Item, &ModelView)> = chunk.iter().map(|c| (&c.item, &c.model)).collect();
            match self.pre {
                Pre::V0_2(_) => self.check_batch(query, &items, &mut reports),
                Pre::V0_1(_) => self.check_each(query, &items, &mut reports),
            }
        }
        reports
    }

    /// One `check` call per item.
    fn check_each(&self, query: &Query, items: &[(&Item, &ModelView)], reports: &mut Vec<RuleReport>) {
        let Some((item, model)) = items.first() else { return };
        let mut input = Input { query: query.clone(), item: (*item).clone(), model: (*model).clone() };
        for (i, (item, model)) in items.iter().enumerate() {
            if i > 0 {
                input.item = (*item).clone();
                input.model = (*model).clone();
            }
            reports.push(self.check_one(&input));
        }
    }

    /// One `check-batch` call for all of `items` (at most
    /// [`MAX_BATCH_ITEMS`]); if it fails, [`Self::check_each`] on them.
    fn check_batch(&self, query: &Query, items: &[(&Item, &ModelView)], reports: &mut Vec<RuleReport>) {
        let start = Instant::now();
        let n = items.len();
        let mut warm = match self.take() {
            Ok(w) => w,
            Err(e) => {
                reports.extend(items.iter().map(|_| self.failed(e.clone(), start.elapsed(), None, Vec::new(), 0)));
                return;
            }
        };
        let Exports::V0_2(exports) = &warm.exports else { unreachable!("only 0.2.x guests get batches") };
        if pack(&mut warm.batch, query, items).is_none() {
            // Over 4 GiB of text, past what u32 offsets address; never in practice.
            self.give_back(warm);
            return self.check_each(query, items, reports);
        }
        self.arm(&mut warm.store, n);
        let result = exports.tandem_rules_rule().call_check_batch(&mut warm.store, &warm.batch);
        let fuel = self.fuel_used(&warm.store, n);
        let (logs, logs_dropped) = warm.take_logs();
        // From here on, an early return drops the instance: after a trap it
        // may be in any state, and one that misbehaved is not trusted again.
        let outcomes = match result {
            Ok(outcomes) if outcomes.len() == n => outcomes,
            // No outcome can be matched to its item: find out item by item,
            // with `check`, even for a batch of one (which is how `Plugin::check`
            // calls a 0.2 guest), since `check` may well be honest.
            Ok(_) => {
                drop(warm);
                return self.check_each(query, items, reports);
            }
            // A batch of one failed on its only item.
            Err(e) if n == 1 => {
                let error = classify(&e, warm.take_cap_hit(), &self.spec);
                reports.push(self.failed(error, start.elapsed(), fuel, logs, logs_dropped));
                return;
            }
            // Find out which items fail by checking each alone.
            Err(_) => {
                drop(warm);
                return self.check_each(query, items, reports);
            }
        };
        let share = Share::of(fuel, start.elapsed(), n);
        let mut logs = Some((logs, logs_dropped));
        let mut healthy = true;
        for outcome in outcomes {
            let (logs, logs_dropped) = logs.take().unwrap_or_default();
            reports.push(match validate(outcome) {
                Ok((verdict, tags)) => self.report(verdict, tags, share.fuel, share.elapsed, logs, logs_dropped),
                Err(e) => {
                    healthy = false;
                    self.failed(e, share.elapsed, share.fuel, logs, logs_dropped)
                }
            });
        }
        if healthy {
            self.give_back(warm);
        }
    }

    /// [`Plugin::check`] without counting the call.
    fn check_one(&self, input: &Input) -> RuleReport {
        let start = Instant::now();
        let mut warm = match self.take() {
            Ok(w) => w,
            Err(e) => return self.failed(e, start.elapsed(), None, Vec::new(), 0),
        };
        self.arm(&mut warm.store, 1);
        let result = warm.check(input);
        let fuel = self.fuel_used(&warm.store, 1);
        let (logs, logs_dropped) = warm.take_logs();
        let outcome = match result {
            Ok(outcome) => validate(outcome),
            Err(e) => Err(classify(&e, warm.take_cap_hit(), &self.spec)),
        };
        match outcome {
            Ok((verdict, tags)) => {
                self.give_back(warm);
                self.report(verdict, tags, fuel, start.elapsed(), logs, logs_dropped)
            }
            // A trapped instance may be in any state: drop it; the next call
            // gets a fresh one. Bad output came from a healthy instance, but
            // one that misbehaves once is not trusted again either.
            Err(e) => self.failed(e, start.elapsed(), fuel, logs, logs_dropped),
        }
    }

    fn report(
        &self,
        verdict: Verdict,
        tags: Vec<String>,
        fuel: Option<u64>,
        elapsed: Duration,
        logs: Vec<LogLine>,
        logs_dropped: u32,
    ) -> RuleReport {
        RuleReport { plugin: self.name.clone(), verdict, tags, fuel, elapsed, error: None, logs, logs_dropped }
    }

    fn failed(
        &self,
        error: CallError,
        elapsed: Duration,
        fuel: Option<u64>,
        logs: Vec<LogLine>,
        logs_dropped: u32,
    ) -> RuleReport {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let verdict = match self.spec.failure {
            FailurePolicy::Open => Verdict::Keep,
            FailurePolicy::Closed => {
                Verdict::Veto { reason: format!("rule {} failed (fail-closed): {error}", self.name) }
            }
        };
        let mut report = self.report(verdict, Vec::new(), fuel, elapsed, logs, logs_dropped);
        report.error = Some(error);
        report
    }

    /// Sets the fuel budget and deadline of a call judging `items` items:
    /// the per-call limits times `items`.
    fn arm(&self, store: &mut Store<GuestState>, items: usize) {
        let limits = &self.spec.limits;
        let items = items as u64;
        if limits.fuel > 0 {
            // Only fails on an engine without fuel, which fuel > 0 rules out.
            let _ = store.set_fuel(limits.fuel.saturating_mul(items));
        }
        let deadline = Duration::from_millis(limits.deadline_ms.saturating_mul(items));
        store.set_epoch_deadline(Host::deadline_ticks(deadline));
    }

    fn fuel_used(&self, store: &Store<GuestState>, items: usize) -> Option<u64> {
        let budget = self.spec.limits.fuel.saturating_mul(items as u64);
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
        let mut store = Store::new(self.pre_engine(), state);
        store.limiter(|s| &mut s.limiter);
        // What wasmtime may copy out of the guest in one call (a host call's
        // arguments, or an export's results): never more than the guest can
        // hold. Its default, 128 MiB, lets a guest make the host allocate
        // many times its own memory by returning the same string n times.
        store.set_hostcall_fuel(self.spec.limits.memory_bytes);
        // Start-up code runs under the same budget as a call.
        self.arm(&mut store, 1);
        let exports = match &self.pre {
            Pre::V0_1(pre) => pre.instantiate(&mut store).map(Exports::V0_1),
            Pre::V0_2(pre) => pre.instantiate(&mut store).map(Exports::V0_2),
        };
        match exports {
            Ok(exports) => Ok(Warm { store, exports, batch: empty_batch() }),
            Err(e) => {
                let mut err = classify(&e, store.data_mut().limiter.hit.take(), &self.spec);
                if err.kind == CallErrorKind::Trap {
                    err.kind = CallErrorKind::Instantiate;
                }
                Err(err)
            }
        }
    }

    fn pre_engine(&self) -> &wasmtime::Engine {
        match &self.pre {
            Pre::V0_1(pre) => pre.engine(),
            Pre::V0_2(pre) => pre.engine(),
        }
    }
}

/// One item's share of a batch's fuel and time.
struct Share {
    fuel: Option<u64>,
    elapsed: Duration,
}

impl Share {
    fn of(fuel: Option<u64>, elapsed: Duration, items: usize) -> Share {
        let items = items.max(1);
        Share { fuel: fuel.map(|f| f / items as u64), elapsed: elapsed / u32::try_from(items).unwrap_or(u32::MAX) }
    }
}

fn empty_batch() -> Batch {
    Batch { text: String::new(), ends: Vec::new(), query_entities: 0, items: Vec::new(), entity_scores: Vec::new() }
}

/// Packs `query` and `items` into `batch` in the order the WIT's `batch`
/// interface documents, reusing its buffers. `None` when the text or a list
/// outgrows a `u32`.
fn pack(batch: &mut Batch, query: &Query, items: &[(&Item, &ModelView)]) -> Option<()> {
    let Batch { text, ends, query_entities, items: packed_items, entity_scores } = batch;
    text.clear();
    ends.clear();
    packed_items.clear();
    entity_scores.clear();
    // `as u32` cannot wrap unnoticed: every end is at most the final length,
    // which is checked below.
    let mut push = |s: &str| {
        text.push_str(s);
        ends.push(text.len() as u32);
    };
    push(&query.text);
    for e in &query.entities {
        push(&e.kind);
        push(&e.value);
    }
    *query_entities = u32::try_from(query.entities.len()).ok()?;
    for &(item, model) in items {
        push(&item.id);
        push(&item.title);
        for a in &item.attributes {
            push(&a.name);
            push(&a.value);
        }
        item.category_path.iter().for_each(|segment| push(segment));
        if let Some(price) = &item.price {
            push(&price.currency);
        }
        for s in &model.entity_scores {
            push(&s.kind);
            push(&s.value);
            entity_scores.push(s.score);
        }
        packed_items.push(PackedItem {
            attributes: u32::try_from(item.attributes.len()).ok()?,
            category_segments: u32::try_from(item.category_path.len()).ok()?,
            entity_scores: u32::try_from(model.entity_scores.len()).ok()?,
            price: item.price.as_ref().map(|p| p.amount),
            score: model.score,
        });
    }
    u32::try_from(text.len()).ok()?;
    Some(())
}

/// Turns a wasmtime error into a kind and a message an operator can act on.
fn classify(error: &wasmtime::Error, cap_hit: Option<String>, spec: &PluginSpec) -> CallError {
    if let Some(message) = cap_hit {
        return CallError { kind: CallErrorKind::ResourceCap, message };
    }
    // wasmtime's error type for this is private; its message is the only handle.
    if error.chain().any(|e| e.to_string().contains("fuel allocated for hostcalls has been exhausted")) {
        let message = format!(
            "copied more than its memory cap of {} bytes out of the guest in one call",
            spec.limits.memory_bytes
        );
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
/// bounded by the store's hostcall fuel (the memory cap, set in
/// `instantiate`), so the caps here decide what is passed on, not what the
/// host can be made to allocate.
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
