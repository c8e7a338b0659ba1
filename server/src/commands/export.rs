//! `tandem export [--model NAME|DIR] -o FILE`

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A sentence-transformers model folder, an E5S1 file, or a name (minilm,
    /// multilingual-e5-small) [default: minilm, fetched on first use].
    #[arg(long, value_name = "NAME|DIR")]
    model: Option<PathBuf>,
    /// The graph file to write; its weights go to FILE's stem + `.safetensors` and its
    /// tokenizer to stem + `.tokenizer.json`, beside it.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let model_dir = super::model_or_default(args.model.as_deref())?;
    let exported = tandem_models::export::export(&model_dir, &args.output)?;
    for file in [&exported.graph, &exported.weights, &exported.tokenizer] {
        println!("{}", file.display());
    }
    Ok(())
}
