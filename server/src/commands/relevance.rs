//! `tandem relevance --query "..." --items items.jsonl [--logic ...]`: entity-based relevance
//! of items to a query, one JSON line per item with its score, grade and deciding entities.

use super::model_dir_or_default;
use anyhow::{Result, anyhow};
use std::path::PathBuf;
use tandem_ebrm::Logic;
use tandem_ebrm::cli::{RelevanceArgs, relevance_cli};
use tandem_ebrm::encoder::ModelEncoder;
use tandem_models::BackendChoice;

#[derive(clap::Args)]
pub struct Args {
    /// The search query.
    #[arg(long)]
    query: String,
    /// Items as JSON lines ({"id", "title", "attributes", "category", "price"}); "-" for stdin.
    #[arg(long)]
    items: PathBuf,
    /// How QE scores combine: product, goedel or lukasiewicz.
    #[arg(long, default_value = "product")]
    logic: String,
    /// Print every entity of every item, not only the deciding ones.
    #[arg(long)]
    all_entities: bool,
    /// The encoder model folder (default: minilm, fetched on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
}

pub fn run(args: Args) -> Result<()> {
    let logic = Logic::from_name(&args.logic)
        .ok_or_else(|| anyhow!("unknown logic '{}' (valid: product, goedel, lukasiewicz)", args.logic))?;
    let encoder = ModelEncoder::load(&model_dir_or_default(args.model.as_deref())?, args.backend, "minilm")?;
    let cli_args = RelevanceArgs {
        query: args.query,
        items: args.items,
        logic,
        cache_dir: tandem_models::fetch::cache_root()?,
        all_entities: args.all_entities,
    };
    relevance_cli(encoder, &cli_args, &mut std::io::stdout().lock())
}
