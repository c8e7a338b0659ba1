//! Host for tandem rule plugins: business-rule relevance checks written in
//! any language that compiles to a WebAssembly component of the
//! `tandem:rules@0.2.0` world (bindings/rules/wit/world.wit) or of its
//! predecessor 0.1.x (bindings/rules/wit/0.1.0/world.wit).
//!
//! Plugins are untrusted. They get no WASI (no files, network, clock or
//! randomness), only a rate-limited log and read-only lookup tables. Every
//! call runs under a fuel budget, an epoch deadline and a memory cap; a
//! failing call yields the plugin's failure-policy verdict and its instance
//! is replaced, and the host keeps serving.
//!
//! - [`Plugin`]: one loaded plugin; `check` runs it on a query-item pair,
//!   `check_many` on many items for one query (batched for 0.2.x guests).
//! - [`RuleSet`]: the plugins of a [`Config`], hot-reloaded from their files.
//! - [`cli::rules_check`]: `tandem rules check PLUGIN.wasm --cases cases.jsonl`.

pub mod cli;
pub mod config;
mod host;
mod load;
mod plugin;
pub mod report;
mod ruleset;

pub use config::{Config, FailurePolicy, Limits, PluginSpec};
pub use host::{Host, MAX_LOG_BYTES, MAX_LOGS_PER_CALL};
pub use load::{LoadError, MAX_PLUGIN_BYTES, WORLD_VERSION};
pub use plugin::{Candidate, MAX_BATCH_ITEMS, MAX_REASON_BYTES, MAX_TAG_BYTES, MAX_TAGS, Plugin, PluginStats};
pub use report::{CallError, CallErrorKind, Combined, LogLine, RuleReport, Verdict, combine};
pub use ruleset::{PluginStatus, ReloadEvent, RuleSet, Watcher};

/// The input types of the rule world, as generated from the WIT.
pub use host::bindings::tandem::rules::types::{Attribute, Entity, EntityScore, Input, Item, ModelView, Price, Query};
