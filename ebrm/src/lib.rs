//! tandem-ebrm: entity-based relevance.
//!
//! EBRM decomposes query-item relevance into query-entity (QE) problems: an item is split into
//! entities (brand, category, model number, color, material, size, other attributes), each
//! entity is scored against the query by a text encoder, QE scores are cached (they repeat
//! across items and requests), and a soft-logic formula aggregates them into the item's
//! score. The aggregate says which entity decided, and an intervention (override one QE
//! score, drop an entity) re-aggregates without encoding anything.
//!
//! - [`logic`]: t-norm families and the aggregate: the runtime's op, run on a device.
//! - [`entities`]: items, queries and entity extraction (NSI brands, rules, taxonomy).
//! - [`vocab`]: the name-suggestion-index brand list and its fetch.
//! - [`cache`]: the bounded QE cache.
//! - [`calibrate`]: cosine → QE score.
//! - [`pipeline`]: the engine, rankings, grades, explanations and interventions.
//! - [`eval`]: the generated ESCI-labelled set and its metrics.
//! - [`cli`]: `tandem relevance`.
//! - `rules` (feature `rules`): business-rule plugins applied to a ranking, for the CLI and the
//!   server alike.

pub mod cache;
pub mod calibrate;
pub mod cli;
pub mod constraints;
pub mod encoder;
pub mod entities;
pub mod eval;
pub mod logic;
pub mod pipeline;
#[cfg(feature = "rules")]
pub mod rules;
pub mod text;
pub mod vocab;

pub use cache::{CacheStats, LruQeCache, QeCache, QeKey};
pub use encoder::{NgramEncoder, PairScorer, TextEncoder};
pub use entities::{Entity, EntityKind, Extractor, Item};
pub use logic::{Aggregator, Logic};
pub use pipeline::{CategorySearch, Config, Ebrm, Grade, Intervention, Ranking};
