//! `tandem relevance --query "..." --items items.jsonl [--logic ...]`: entity-based relevance
//! of items to a query, one JSON line per item with its score, grade and deciding entities.
//! `--rules a.wasm,b.wasm` then runs business-rule plugins on each item (see `rules_apply`).

use super::model_dir_or_default;
use anyhow::{Result, anyhow};
use std::io::Write;
use std::path::PathBuf;
use tandem_ebrm::Logic;
use tandem_ebrm::PairScorer;
use tandem_ebrm::cli::{RelevanceArgs, rank_cli_with, ranking_lines};
use tandem_ebrm::encoder::{CrossEncoder, ModelEncoder};
use tandem_models::{BackendChoice, Embedder};

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
    #[command(flatten)]
    adapter: super::AdapterArgs,
    /// A cross-encoder folder (BertForSequenceClassification) that scores the query-item
    /// similarity prior, with qe = sigmoid(logit); the constraint checks stay rules.
    #[arg(long, value_name = "DIR")]
    qe_model: Option<PathBuf>,
    /// Rule plugins (WebAssembly components, comma-separated) applied after the model, fail-open:
    /// each line gains `rules` (every plugin's verdict) and `final_score`.
    #[arg(long, value_delimiter = ',')]
    rules: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let logic = Logic::from_name(&args.logic)
        .ok_or_else(|| anyhow!("unknown logic '{}' (valid: product, goedel, lukasiewicz)", args.logic))?;
    let (embedder, adapter_id) = Embedder::load_adapted(
        &model_dir_or_default(args.model.as_deref())?,
        args.adapter.spec().as_ref(),
        args.backend,
    )?;
    // The id keys the QE cache and the taxonomy embeddings: an adapter makes another model.
    let encoder = ModelEncoder::new(embedder, format!("minilm{adapter_id}"));
    let cli_args = RelevanceArgs {
        query: args.query,
        items: args.items,
        logic,
        cache_dir: tandem_models::fetch::cache_root()?,
        all_entities: args.all_entities,
    };
    let qe_model: Option<Box<dyn PairScorer>> = match &args.qe_model {
        Some(dir) => Some(Box::new(CrossEncoder::load(dir, args.backend, format!("cross:{}", dir.display()))?)),
        None => None,
    };
    // Load the plugins before ranking, so a bad plugin fails fast.
    let rules = if args.rules.is_empty() { None } else { Some(super::rules_apply::Rules::load(&args.rules)?) };
    let (items, ranking) = rank_cli_with(encoder, qe_model, &cli_args)?;
    let mut lines = ranking_lines(&ranking, cli_args.all_entities)?;
    if let Some(rules) = rules {
        rules.annotate(&ranking, &items, &mut lines);
    }
    let out = &mut std::io::stdout().lock();
    for line in &lines {
        serde_json::to_writer(&mut *out, line)?;
        writeln!(out)?;
    }
    Ok(())
}
