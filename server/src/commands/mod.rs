//! One module per subcommand.

pub mod embed;
pub mod export;
pub mod fetch;
pub mod relevance;
pub mod rules;
pub mod rules_apply;

use anyhow::Result;
use std::path::{Path, PathBuf};
use tandem_models::registry::{DEFAULT_EMBED_MODEL, known_model};

/// `--model DIR` if given, else the default model's cache folder, fetched on first use.
pub fn model_dir_or_default(model: Option<&Path>) -> Result<PathBuf> {
    match model {
        Some(dir) => Ok(dir.to_path_buf()),
        None => tandem_models::fetch::ensure(known_model(DEFAULT_EMBED_MODEL)?),
    }
}
