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

use anyhow::Result;
use std::path::{Path, PathBuf};
use tandem_models::lora::AdapterSpec;

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
    /// The flags as the models crate takes them (`Embedder::load_adapted`).
    pub fn spec(&self) -> Option<AdapterSpec> {
        self.adapter.clone().map(|dir| AdapterSpec::new(dir, self.merge_adapter))
    }
}

/// `--model NAME|PATH`: a known text encoder by name or a model folder or file, else the
/// default (minilm); known models are fetched on first use.
pub fn model_or_default(model: Option<&Path>) -> Result<PathBuf> {
    tandem_models::fetch::encoder_path(model)
}
