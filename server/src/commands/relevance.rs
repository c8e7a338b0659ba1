//! `tandem relevance --query "..." --items items.jsonl [--logic ...]`: entity-based relevance
//! of items to a query, one JSON line per item with its score, grade and deciding entities.
//! `--rules a.wasm,b.wasm` then runs business-rule plugins on each item, fail-open with default
//! limits (`tandem_ebrm::rules`: the plugins' input and the `rules` and `final_score` fields,
//! as `/relevance` has them).

use super::model_or_default;
use anyhow::{Context, Result, anyhow};
use std::io::Write;
use std::path::{Path, PathBuf};
use tandem_ebrm::Logic;
use tandem_ebrm::PairScorer;
use tandem_ebrm::cli::{RelevanceArgs, rank_cli_with, ranking_lines};
use tandem_ebrm::encoder::{CrossEncoder, ModelEncoder};
use tandem_ebrm::pipeline::Ranking;
use tandem_ebrm::rules::{annotate, candidates, plugin_query};
use tandem_models::embed::model_id;
use tandem_models::{BackendChoice, Embedder, Precision};
use tandem_plugins::{Host, Plugin, PluginSpec, RuleReport};

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
    /// The encoder: a known text encoder (minilm, multilingual-e5-small; fetched on first
    /// use), a sentence-transformers folder or an E5S1 file [default: minilm].
    #[arg(long, value_name = "NAME|PATH")]
    model: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    #[command(flatten)]
    adapter: super::AdapterArgs,
    /// The linear layers' precision: f32 (the reference) or bf16 (half the weight memory; on a
    /// CPU with AVX-512 BF16 the products run in bf16, 1.5–1.9× as fast).
    #[arg(long, default_value = "f32")]
    precision: Precision,
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
    let model = model_or_default(args.model.as_deref())?;
    let (embedder, variant) =
        Embedder::load_adapted(&model, args.adapter.spec().as_ref(), args.backend, args.precision)?;
    // The id keys the QE cache and the taxonomy embeddings (and picks the calibration): an
    // adapter makes another model.
    let encoder = ModelEncoder::new(embedder, format!("{}{variant}", model_id(&model)));
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
    let rules = if args.rules.is_empty() { None } else { Some(Rules::load(&args.rules)?) };
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

/// The plugins named on the command line, loaded once. The host is dropped once they are
/// loaded: a plugin keeps what it needs of it.
struct Rules {
    plugins: Vec<Plugin>,
}

impl Rules {
    fn load(paths: &[PathBuf]) -> Result<Rules> {
        let host = Host::new().map_err(|e| anyhow!("cannot start the plugin host: {e}"))?;
        let plugins = paths
            .iter()
            .map(|path| {
                Plugin::load(&host, &PluginSpec::new(plugin_name(path), path), Default::default())
                    .with_context(|| format!("cannot load rule plugin {}", path.display()))
            })
            .collect::<Result<_>>()?;
        Ok(Rules { plugins })
    }

    /// Adds `rules` and `final_score` to each of `lines` (`ranking_lines`' output, input order).
    fn annotate(&self, ranking: &Ranking, items: &[tandem_ebrm::Item], lines: &mut [serde_json::Value]) {
        let query = plugin_query(ranking);
        let candidates = candidates(ranking, items);
        let per_plugin: Vec<Vec<RuleReport>> = self.plugins.iter().map(|p| p.check_many(&query, &candidates)).collect();
        let per_item: Vec<Vec<RuleReport>> =
            (0..candidates.len()).map(|i| per_plugin.iter().map(|reports| reports[i].clone()).collect()).collect();
        annotate(ranking, &per_item, lines);
    }
}

fn plugin_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into())
}
