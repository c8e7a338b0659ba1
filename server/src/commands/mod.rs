//! One module per subcommand.

pub mod classify;
pub mod embed;
pub mod export;
pub mod fetch;
pub mod generate;
pub mod grade;
pub mod inspect;
pub mod relevance;
pub mod rules;
pub mod rules_apply;

use anyhow::Result;
use std::path::{Path, PathBuf};
use tandem_models::lora::LoraMode;
use tandem_models::registry::{DEFAULT_EMBED_MODEL, known_model};
use tandem_models::{BackendChoice, Embedder};

/// A PEFT LoRA adapter on top of the model.
#[derive(clap::Args, Debug, Clone)]
pub struct AdapterArgs {
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Fold the adapter into the weights at load instead of running the fused LoRA op.
    #[arg(long, requires = "adapter")]
    pub merge_adapter: bool,
}

impl AdapterArgs {
    /// The model in `dir` with the adapter, if any; and a model id suffix naming the adapter.
    pub fn load(&self, dir: &Path, backend: BackendChoice) -> Result<(Embedder, String)> {
        let Some(adapter) = &self.adapter else { return Ok((Embedder::load(dir, backend)?, String::new())) };
        let mode = if self.merge_adapter { LoraMode::Merged } else { LoraMode::Unmerged };
        let loaded = tandem_models::lora::LoraAdapter::load(adapter)?;
        let embedder = Embedder::load_with_adapter(dir, adapter, mode, backend)?;
        Ok((embedder, format!("+lora-{}", loaded.fingerprint)))
    }
}

/// `--model DIR` if given, else the default model's cache folder, fetched on first use.
pub fn model_dir_or_default(model: Option<&Path>) -> Result<PathBuf> {
    match model {
        Some(dir) => Ok(dir.to_path_buf()),
        None => tandem_models::fetch::ensure(known_model(DEFAULT_EMBED_MODEL)?),
    }
}
