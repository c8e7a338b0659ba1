//! `tandem export`: a model (a sentence-transformers folder, or an E5S1 file) → a graph file
//! that runs without its builder.
//!
//! `-o NAME.tgraph` writes three files side by side: the graph `NAME.tgraph`, the weights it
//! declares `NAME.safetensors` (block-quantized ones, E5's Q4_0, stay blocks) and the
//! tokenizer `NAME.tokenizer.json` (E5's, built from the pieces inside its file, written out).
//! The graph's metadata names the two others (plain file names, looked up beside the graph)
//! and the model's prompts ("query: " / "passage: " for E5).

use crate::bert;
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use tandem_runtime::Graph;
use tandem_runtime::graph::{Weights, load_weights, write_graph_file};

/// Graph metadata: the weights file beside the graph.
pub const META_WEIGHTS_FILE: &str = "weights_file";
/// Graph metadata: the tokenizer.json beside the graph.
pub const META_TOKENIZER_FILE: &str = "tokenizer_file";

/// Where an exported tokenizer comes from: a model folder's `tokenizer.json`, or one built
/// from a model file.
enum TokenizerSource {
    File(PathBuf),
    Json(String),
}

/// The files `export` wrote.
#[derive(Debug)]
pub struct Exported {
    pub graph: PathBuf,
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
}

/// Exports the sentence-transformers BERT model in `model_dir` (or the E5S1 file it names)
/// to `graph_path` and its siblings.
pub fn export(model_dir: &Path, graph_path: &Path) -> Result<Exported> {
    let stem = graph_path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("{}: not a usable file name for a graph", graph_path.display()))?;
    if matches!(graph_path.extension().and_then(|e| e.to_str()), Some("safetensors" | "json")) {
        bail!(
            "{}: the graph file needs another extension (its weights go to {stem}.safetensors)",
            graph_path.display()
        );
    }
    let (mut graph, weights, tokenizer) = if crate::e5::is_e5s1(model_dir) {
        let model = crate::e5::load(model_dir)?;
        let mut graph = model.graph;
        model.tokenizer.prompts().write_metadata(&mut graph.metadata);
        (graph, model.weights, TokenizerSource::Json(model.tokenizer.to_json()?))
    } else {
        let model = bert::load_dir(model_dir)?;
        (model.graph, model.weights, TokenizerSource::File(model.tokenizer_path))
    };
    let weights_name = format!("{stem}.safetensors");
    let tokenizer_name = format!("{stem}.tokenizer.json");
    let dir = graph_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let exported = Exported {
        graph: graph_path.to_path_buf(),
        weights: dir.join(&weights_name),
        tokenizer: dir.join(&tokenizer_name),
    };

    let tensors = load_weights(&graph, &weights)?;
    let named: Vec<(String, _)> = graph.weights.iter().map(|&id| graph.value(id).name.clone()).zip(tensors).collect();
    Weights::write(&exported.weights, &named)?;
    match tokenizer {
        TokenizerSource::File(path) => std::fs::copy(&path, &exported.tokenizer)
            .map(drop)
            .with_context(|| format!("cannot copy {} to {}", path.display(), exported.tokenizer.display()))?,
        TokenizerSource::Json(json) => std::fs::write(&exported.tokenizer, json)
            .with_context(|| format!("cannot write {}", exported.tokenizer.display()))?,
    }
    graph.metadata.insert(META_WEIGHTS_FILE.into(), weights_name);
    graph.metadata.insert(META_TOKENIZER_FILE.into(), tokenizer_name);
    write_graph_file(&graph, graph_path)?;
    Ok(exported)
}

/// The file named by metadata `key` of a graph read from `graph_path` (default
/// `<stem>.<default_suffix>`), which must be a plain name: a graph file must not point
/// outside its folder.
pub fn sibling_file(graph_path: &Path, graph: &Graph, key: &str, default_suffix: &str) -> Result<PathBuf> {
    let name = match graph.metadata.get(key) {
        Some(name) => name.clone(),
        None => {
            let stem = graph_path.file_stem().and_then(|s| s.to_str()).unwrap_or("graph");
            format!("{stem}.{default_suffix}")
        }
    };
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', ':', '\0']);
    if !plain {
        bail!("{}: metadata '{key}' = '{name}' is not a plain file name", graph_path.display());
    }
    let dir = graph_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(dir.join(name))
}
