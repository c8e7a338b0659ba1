//! The operator's plugin configuration (TOML):
//!
//! ```toml
//! poll_ms = 500                 # hot-reload poll interval
//!
//! [tables.brand-aliases]        # read-only lookup tables
//! "apple inc" = "apple"
//!
//! [[plugin]]
//! name = "brand-conflict"
//! path = "rules/brand-conflict.wasm"   # relative to this file
//! fuel = 5_000_000              # per call (n times that for a batch of n); 0 = off (epoch only)
//! deadline_ms = 20              # per call (n times that for a batch of n), wall clock
//! memory_bytes = 16_777_216
//! max_instances = 10            # core instances per store
//! max_tables = 4
//! max_table_elements = 10_000
//! max_memories = 2
//! failure = "open"              # or "closed": veto when the plugin fails
//! tables = ["brand-aliases"]    # the tables this plugin may read
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

/// What the verdict is when a plugin fails (traps, runs out of fuel or time,
/// returns bad output).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Keep the model's verdict: a broken rule changes nothing.
    #[default]
    Open,
    /// Veto the item: a broken rule must not let anything through.
    Closed,
}

/// Per-plugin sandbox limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per call (roughly one unit per wasm instruction). 0 turns fuel
    /// accounting off for this plugin; the epoch deadline still applies. A
    /// batch of n items gets n times this, shared by its items.
    pub fuel: u64,
    /// Wall-clock budget per call, enforced by epoch interruption. A batch of
    /// n items gets n times this.
    pub deadline_ms: u64,
    /// Cap on the linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Cap on core instances per store (a component holds several).
    pub max_instances: usize,
    pub max_tables: usize,
    pub max_table_elements: usize,
    pub max_memories: usize,
    /// Healthy instances kept for reuse. More concurrent callers than this
    /// instantiate extra instances, which are dropped after their call.
    pub pool_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000,
            deadline_ms: 50,
            memory_bytes: 16 << 20,
            max_instances: 10,
            max_tables: 4,
            max_table_elements: 10_000,
            max_memories: 2,
            pool_size: 4,
        }
    }
}

/// One plugin entry of the config.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "RawPluginSpec")]
pub struct PluginSpec {
    pub name: String,
    pub path: PathBuf,
    pub limits: Limits,
    pub failure: FailurePolicy,
    /// Names of the config's tables this plugin may read through `lookup`.
    pub tables: Vec<String>,
}

/// The flat TOML form of [`PluginSpec`]. serde cannot combine `flatten` with
/// `deny_unknown_fields`, and a misspelt limit must be an error, not a default.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPluginSpec {
    name: String,
    path: PathBuf,
    fuel: u64,
    deadline_ms: u64,
    memory_bytes: usize,
    max_instances: usize,
    max_tables: usize,
    max_table_elements: usize,
    max_memories: usize,
    pool_size: usize,
    failure: FailurePolicy,
    tables: Vec<String>,
}

impl Default for RawPluginSpec {
    fn default() -> Self {
        let spec = PluginSpec::new("", "");
        let l = spec.limits;
        RawPluginSpec {
            name: spec.name,
            path: spec.path,
            fuel: l.fuel,
            deadline_ms: l.deadline_ms,
            memory_bytes: l.memory_bytes,
            max_instances: l.max_instances,
            max_tables: l.max_tables,
            max_table_elements: l.max_table_elements,
            max_memories: l.max_memories,
            pool_size: l.pool_size,
            failure: spec.failure,
            tables: spec.tables,
        }
    }
}

impl From<RawPluginSpec> for PluginSpec {
    fn from(r: RawPluginSpec) -> Self {
        PluginSpec {
            name: r.name,
            path: r.path,
            limits: Limits {
                fuel: r.fuel,
                deadline_ms: r.deadline_ms,
                memory_bytes: r.memory_bytes,
                max_instances: r.max_instances,
                max_tables: r.max_tables,
                max_table_elements: r.max_table_elements,
                max_memories: r.max_memories,
                pool_size: r.pool_size,
            },
            failure: r.failure,
            tables: r.tables,
        }
    }
}

impl PluginSpec {
    /// A spec with default limits, fail-open, no tables.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        PluginSpec {
            name: name.into(),
            path: path.into(),
            limits: Limits::default(),
            failure: FailurePolicy::Open,
            tables: Vec::new(),
        }
    }
}

pub type Table = HashMap<String, String>;

/// Read-only tables, shared by every instance of the plugins allowed to read them.
pub type Tables = Arc<HashMap<String, Table>>;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How often the hot-reload watcher looks at the plugin files.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    #[serde(default)]
    pub tables: BTreeMap<String, Table>,
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginSpec>,
}

fn default_poll_ms() -> u64 {
    500
}

/// A config file that is larger than this is refused rather than parsed.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read plugin config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("plugin config {path} is {size} bytes; the limit is {MAX_CONFIG_BYTES}")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("plugin config {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("plugin config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML config; plugin paths are resolved against its folder.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read { path: path.to_owned(), source };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_owned(), size });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let mut config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for plugin in &mut config.plugins {
            if plugin.path.is_relative() {
                plugin.path = base.join(&plugin.path);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: unique names, known tables, sane limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for p in &self.plugins {
            let bad = |what: &str| Err(ConfigError::Invalid(format!("plugin `{}`: {what}", p.name)));
            if p.name.is_empty() {
                return Err(ConfigError::Invalid("a plugin has an empty name".into()));
            }
            if p.path.as_os_str().is_empty() {
                return bad("no path");
            }
            if !names.insert(p.name.as_str()) {
                return bad("name used twice");
            }
            if let Some(t) = p.tables.iter().find(|t| !self.tables.contains_key(*t)) {
                return bad(&format!("table `{t}` is not defined under [tables]"));
            }
            let l = &p.limits;
            if l.deadline_ms == 0 {
                return bad("deadline_ms must be at least 1");
            }
            if l.memory_bytes < 64 << 10 {
                return bad("memory_bytes must be at least one wasm page (65536)");
            }
            if l.max_instances == 0 || l.max_memories == 0 {
                return bad("max_instances and max_memories must be at least 1");
            }
        }
        if self.poll_ms == 0 {
            return Err(ConfigError::Invalid("poll_ms must be at least 1".into()));
        }
        Ok(())
    }

    /// The tables `spec` may read.
    pub fn tables_for(&self, spec: &PluginSpec) -> Tables {
        Arc::new(spec.tables.iter().filter_map(|t| Some((t.clone(), self.tables.get(t)?.clone()))).collect())
    }
}
