//! `tandem embed [--backend cpu|wgpu|auto] [--model NAME|PATH | --graph FILE] [--precision f32|bf16] [--query]
//! [TEXT...]`
//!
//! Without TEXT, reads JSON lines from stdin (each a JSON string or `{"text": ...}`). Prints
//! one JSON line per input: `{"text": ..., "tokens": n, "embedding": [...]}`. Texts are
//! embedded as passages (the texts searched), `--query` as search queries: the same for most
//! models, a different prompt for E5 ("passage: ", "query: ").

use anyhow::{Context, Result, anyhow, bail};
use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;
use tandem_models::{BackendChoice, Embedder, Precision, TextRole};

#[derive(clap::Args)]
pub struct Args {
    /// cpu, wgpu or auto (a GPU when there is one, else the CPU).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// A known text encoder (minilm, multilingual-e5-small; fetched on first use), a
    /// sentence-transformers model folder or an E5S1 file [default: minilm].
    #[arg(long, value_name = "NAME|PATH", conflicts_with = "graph")]
    model: Option<PathBuf>,
    /// A graph file written by `tandem export`.
    #[arg(long, value_name = "FILE")]
    graph: Option<PathBuf>,
    #[command(flatten)]
    adapter: super::AdapterArgs,
    /// The linear layers' precision: f32 (the reference) or bf16 (half the weight memory; on a
    /// CPU with AVX-512 BF16 the products run in bf16, 1.5–1.9× as fast).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Embed the texts as search queries rather than as the texts searched (E5 prompts them
    /// "query: " rather than "passage: ").
    #[arg(long)]
    query: bool,
    /// Texts to embed; none: read JSON lines from stdin.
    texts: Vec<String>,
}

/// Stdin lines embedded per batch: enough to batch well, few enough to stream.
const LINES_PER_BATCH: usize = 64;
/// A longer stdin line is refused rather than read into memory whole.
const MAX_LINE_BYTES: usize = 1 << 20;

pub fn run(args: Args) -> Result<()> {
    // Parsed first, so that a typo fails before any model is loaded.
    let backend: BackendChoice = args.backend.parse()?;
    if args.graph.is_some() && args.adapter.adapter.is_some() {
        bail!("--adapter applies to a model folder (--model), not to an exported --graph");
    }
    if args.graph.is_some() && args.precision != Precision::F32 {
        bail!("--precision applies to a model folder (--model); an exported --graph runs as it was exported");
    }
    let embedder = match &args.graph {
        Some(graph) => Embedder::from_graph_file(graph, backend)?,
        None => {
            let dir = super::model_or_default(args.model.as_deref())?;
            Embedder::load_adapted(&dir, args.adapter.spec().as_ref(), backend, args.precision)?.0
        }
    };
    let role = if args.query { TextRole::Query } else { TextRole::Passage };
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = if args.texts.is_empty() {
        embed_stdin(&embedder, role, &mut out)
    } else {
        embed_batch(&embedder, &args.texts, role, &mut out)
    };
    match written.and_then(|()| out.flush().map_err(anyhow::Error::from)) {
        // The reader went away (`| head`): not an error of ours.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn embed_stdin(embedder: &Embedder, role: TextRole, out: &mut impl Write) -> Result<()> {
    let mut input = io::stdin().lock();
    let mut batch: Vec<String> = Vec::new();
    let mut line_number = 0;
    while let Some(line) = read_line(&mut input, line_number + 1)? {
        line_number += 1;
        if line.trim().is_empty() {
            continue;
        }
        batch.push(parse_line(&line).with_context(|| format!("stdin line {line_number}"))?);
        if batch.len() == LINES_PER_BATCH {
            embed_batch(embedder, &batch, role, out)?;
            batch.clear();
        }
    }
    embed_batch(embedder, &batch, role, out)
}

/// The next line without its newline, at most `MAX_LINE_BYTES`; `None` at the end.
fn read_line(input: &mut impl BufRead, line_number: usize) -> Result<Option<String>> {
    let mut bytes = Vec::new();
    input
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut bytes)
        .with_context(|| format!("cannot read stdin line {line_number}"))?;
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    } else if bytes.len() > MAX_LINE_BYTES {
        bail!("stdin line {line_number} is longer than {MAX_LINE_BYTES} bytes");
    }
    String::from_utf8(bytes).map(Some).map_err(|_| anyhow!("stdin line {line_number} is not UTF-8"))
}

/// A JSON string, or an object with a string field `text`.
fn parse_line(line: &str) -> Result<String> {
    match serde_json::from_str(line).map_err(|e| anyhow!("not JSON: {e}"))? {
        serde_json::Value::String(text) => Ok(text),
        serde_json::Value::Object(mut fields) => match fields.remove("text") {
            Some(serde_json::Value::String(text)) => Ok(text),
            _ => bail!("expected a string field \"text\""),
        },
        _ => bail!("expected a JSON string or {{\"text\": ...}}"),
    }
}

fn embed_batch(embedder: &Embedder, texts: &[String], role: TextRole, out: &mut impl Write) -> Result<()> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for (text, embedding) in texts.iter().zip(embedder.embed_with_counts_as(&refs, role)?) {
        let line = OutputLine { text, tokens: embedding.tokens, embedding: &embedding.vector };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    }
    Ok(())
}

/// One line of output; a struct so that fields keep this order and floats print as f32.
#[derive(serde::Serialize)]
struct OutputLine<'a> {
    text: &'a str,
    /// Tokens the model saw (after truncation), special tokens included.
    tokens: usize,
    embedding: &'a [f32],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_lines_are_strings_or_text_objects() {
        assert_eq!(parse_line(r#""red shoes""#).unwrap(), "red shoes");
        assert_eq!(parse_line(r#"{"text": "blue", "id": 3}"#).unwrap(), "blue");
        assert!(parse_line(r#"{"txt": "blue"}"#).is_err());
        assert!(parse_line("42").is_err());
        assert!(parse_line("red shoes").is_err());
    }

    #[test]
    fn long_lines_are_refused() {
        let mut input = io::Cursor::new(vec![b'a'; MAX_LINE_BYTES + 10]);
        assert!(read_line(&mut input, 1).unwrap_err().to_string().contains("longer than"));
        let mut input = io::Cursor::new(b"one\ntwo".to_vec());
        assert_eq!(read_line(&mut input, 1).unwrap().as_deref(), Some("one"));
        assert_eq!(read_line(&mut input, 2).unwrap().as_deref(), Some("two"));
        assert_eq!(read_line(&mut input, 3).unwrap(), None);
    }
}
