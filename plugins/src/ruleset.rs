//! The configured plugins, served together and hot-reloaded: a changed file
//! is validated off the call path and swapped in atomically; a file that does
//! not validate leaves the old version serving and is reported.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::config::{Config, PluginSpec, Tables};
use crate::host::Host;
use crate::load::{self, LoadError};
use crate::plugin::{Plugin, PluginStats};
use crate::report::RuleReport;
use crate::{Candidate, Input, Query};

pub struct RuleSet {
    host: Host,
    entries: Vec<Entry>,
}

struct Entry {
    spec: PluginSpec,
    tables: Tables,
    /// Calls clone the Arc and run on it, so a swap never waits for them and
    /// in-flight calls finish on the version they started with.
    current: RwLock<Arc<Plugin>>,
    watch: Mutex<WatchState>,
}

/// Modification time and length: a cheap test for "the file changed".
type Fingerprint = Option<(SystemTime, u64)>;

struct WatchState {
    /// The file as last looked at (whether or not it validated), so a bad
    /// file is reported once, not on every poll.
    seen: Fingerprint,
    loaded_at: SystemTime,
    reloads: u64,
    last_error: Option<(SystemTime, String)>,
}

/// What a reload poll did to one plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadEvent {
    /// A new version validated and now serves.
    Reloaded { plugin: String, sha256: String },
    /// The file changed but did not validate (or vanished); the old version
    /// keeps serving.
    Rejected { plugin: String, error: String },
}

/// The state of one plugin, for an operator's status page.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub path: PathBuf,
    /// SHA-256 of the version serving now.
    pub sha256: String,
    pub world_version: String,
    pub loaded_at: SystemTime,
    /// Successful hot reloads since start.
    pub reloads: u64,
    /// The last rejected reload, if it has not been superseded by a good one.
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// Counters of the version serving now.
    pub stats: PluginStats,
}

impl RuleSet {
    /// Loads every plugin of `config`; any that fails to load fails the whole
    /// set, naming the file (a typo at start-up should stop the operator).
    pub fn new(host: Host, config: &Config) -> Result<RuleSet, LoadError> {
        let mut entries = Vec::with_capacity(config.plugins.len());
        for spec in &config.plugins {
            let tables = config.tables_for(spec);
            let seen = fingerprint(spec);
            let plugin = Plugin::load(&host, spec, tables.clone())?;
            entries.push(Entry {
                spec: spec.clone(),
                tables,
                current: RwLock::new(Arc::new(plugin)),
                watch: Mutex::new(WatchState { seen, loaded_at: SystemTime::now(), reloads: 0, last_error: None }),
            });
        }
        Ok(RuleSet { host, entries })
    }

    /// Runs every plugin, in config order, on one query-item pair.
    pub fn check(&self, input: &Input) -> Vec<RuleReport> {
        self.entries.iter().map(|e| e.current().check(input)).collect()
    }

    /// Runs every plugin, in config order, on each candidate against one
    /// query: `reports[i]` holds candidate i's reports, one per plugin, ready
    /// for [`crate::combine`]. Each plugin sees all candidates in one
    /// [`Plugin::check_many`].
    pub fn check_many(&self, query: &Query, candidates: &[Candidate]) -> Vec<Vec<RuleReport>> {
        let mut reports: Vec<Vec<RuleReport>> =
            candidates.iter().map(|_| Vec::with_capacity(self.entries.len())).collect();
        for entry in &self.entries {
            for (item_reports, report) in reports.iter_mut().zip(entry.current().check_many(query, candidates)) {
                item_reports.push(report);
            }
        }
        reports
    }

    /// The version of plugin `name` serving now.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.entries.iter().find(|e| e.spec.name == name).map(Entry::current)
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        self.entries
            .iter()
            .map(|e| {
                let plugin = e.current();
                let w = e.watch.lock().unwrap_or_else(PoisonError::into_inner);
                PluginStatus {
                    name: e.spec.name.clone(),
                    path: e.spec.path.clone(),
                    sha256: hex(&plugin.digest()),
                    world_version: plugin.world_version().to_string(),
                    loaded_at: w.loaded_at,
                    reloads: w.reloads,
                    last_error: w.last_error.as_ref().map(|(_, m)| m.clone()),
                    last_error_at: w.last_error.as_ref().map(|(t, _)| *t),
                    stats: plugin.stats(),
                }
            })
            .collect()
    }

    /// Looks at every plugin file once and reloads the changed ones.
    pub fn poll(&self) -> Vec<ReloadEvent> {
        self.entries.iter().filter_map(|e| self.poll_entry(e)).collect()
    }

    fn poll_entry(&self, entry: &Entry) -> Option<ReloadEvent> {
        let now = fingerprint(&entry.spec);
        let mut watch = entry.watch.lock().unwrap_or_else(PoisonError::into_inner);
        if now == watch.seen {
            return None;
        }
        watch.seen = now;
        let name = entry.spec.name.clone();
        let loaded = load::read(&entry.spec.path).and_then(|(bytes, digest)| {
            if digest == entry.current().digest() {
                return Ok(None); // touched, or rewritten with the same bytes
            }
            Plugin::from_bytes(&self.host, &entry.spec, entry.tables.clone(), &bytes, digest).map(Some)
        });
        match loaded {
            Ok(None) => None,
            Ok(Some(plugin)) => {
                let sha256 = hex(&plugin.digest());
                *entry.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(plugin);
                watch.loaded_at = SystemTime::now();
                watch.reloads += 1;
                watch.last_error = None;
                Some(ReloadEvent::Reloaded { plugin: name, sha256 })
            }
            Err(e) => {
                let error = format!("{e}; still serving the previous version");
                watch.last_error = Some((SystemTime::now(), error.clone()));
                Some(ReloadEvent::Rejected { plugin: name, error })
            }
        }
    }

    /// Starts a thread that polls every `interval` and passes each event to
    /// `on_event` (e.g. to log it). The thread stops when the [`Watcher`] is
    /// dropped or the set is.
    pub fn watch(
        self: &Arc<Self>,
        interval: Duration,
        on_event: impl Fn(&ReloadEvent) + Send + 'static,
    ) -> std::io::Result<Watcher> {
        let set: Weak<RuleSet> = Arc::downgrade(self);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("tandem-rules-reload".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::park_timeout(interval);
                let Some(set) = set.upgrade() else { break };
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                set.poll().iter().for_each(&on_event);
            }
        })?;
        Ok(Watcher { stop, thread: Some(thread) })
    }
}

impl Entry {
    fn current(&self) -> Arc<Plugin> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Stops the reload thread when dropped.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn fingerprint(spec: &PluginSpec) -> Fingerprint {
    let meta = std::fs::metadata(&spec.path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
