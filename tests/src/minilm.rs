//! all-MiniLM-L6-v2 on any backend, for the CUDA parity test and the GPU check binary: load
//! the model folder, embed packed batches, compare with the sentence-transformers reference.
//!
//! Where things come from (environment first, so that a bundle on another machine can point
//! at its own copies):
//! - the model folder: `$TANDEM_MINILM_DIR`, else the model cache (`tandem fetch minilm`);
//! - the reference: `$TANDEM_MINILM_REFERENCE`, else tests/reference/minilm_embeddings.json.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tandem_models::bert;
use tandem_models::tokenizer::{PackedBatch, TextTokenizer};
use tandem_runtime::backend::Backend;
use tandem_runtime::graph::Weights;
use tandem_runtime::{Graph, HostTensor, Session};

/// Per-text floor on the cosine to the reference (float64).
pub const MIN_COSINE: f64 = 0.9999;

#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub max_seq_length: usize,
    pub dim: usize,
    pub inputs: Vec<ReferenceInput>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReferenceInput {
    pub text: String,
    pub tokens: usize,
    pub embedding: Vec<f32>,
}

pub fn model_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TANDEM_MINILM_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let model = tandem_models::registry::known_model("minilm").map_err(|e| e.to_string())?;
    let dir = tandem_models::fetch::model_dir(model).map_err(|e| e.to_string())?;
    if tandem_models::fetch::is_complete(&dir, model) {
        Ok(dir)
    } else {
        Err(format!(
            "MiniLM is not in the cache at {} (run `tandem fetch minilm`, or set TANDEM_MINILM_DIR)",
            dir.display()
        ))
    }
}

pub fn reference_path() -> PathBuf {
    match std::env::var_os("TANDEM_MINILM_REFERENCE").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/minilm_embeddings.json"),
    }
}

pub fn load_reference(path: &Path) -> Result<Reference, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The model's graph, weights and tokenizer.
pub struct MiniLm {
    pub graph: Graph,
    pub weights: Weights,
    pub tokenizer: TextTokenizer,
    pub dim: usize,
}

impl MiniLm {
    pub fn load(dir: &Path) -> Result<MiniLm, String> {
        let model = bert::load_dir(dir).map_err(|e| e.to_string())?;
        let tokenizer =
            TextTokenizer::from_file(&model.tokenizer_path, model.head.max_seq_length).map_err(|e| e.to_string())?;
        Ok(MiniLm { graph: model.graph, weights: model.weights, tokenizer, dim: model.config.hidden_size })
    }

    pub fn session<B: Backend>(&self, backend: B) -> Result<Session<B>, String> {
        Session::from_weights_file(backend, self.graph.clone(), &self.weights).map_err(|e| e.to_string())
    }

    /// The texts tokenized and packed into one batch.
    pub fn batch(&self, texts: &[&str]) -> Result<PackedBatch, String> {
        let tokenized = self.tokenizer.tokenize(texts).map_err(|e| e.to_string())?;
        Ok(PackedBatch::pack(&tokenized))
    }

    /// The graph's inputs for `batch`, in the graph's order.
    pub fn inputs(&self, batch: &PackedBatch) -> Result<Vec<HostTensor>, String> {
        self.graph
            .inputs
            .iter()
            .map(|&id| {
                let name = &self.graph.value(id).name;
                batch.input(name).ok_or_else(|| format!("the MiniLM graph takes an input '{name}' no batch provides"))
            })
            .collect()
    }

    /// One embedding per text of `batch`.
    pub fn embed<B: Backend>(&self, session: &Session<B>, batch: &PackedBatch) -> Result<Vec<Vec<f32>>, String> {
        let out = session.run_blocking(&self.inputs(batch)?).map_err(|e| e.to_string())?;
        let first = out.first().ok_or("the graph produced no output")?;
        let values = first.to_f32();
        if first.shape != [batch.len(), self.dim] {
            return Err(format!("embeddings of shape {:?}, expected [{}, {}]", first.shape, batch.len(), self.dim));
        }
        Ok(values.chunks_exact(self.dim.max(1)).map(<[f32]>::to_vec).collect())
    }
}

/// `seqs` sequences of exactly `len` tokens ([CLS] ids [SEP] with ids drawn from the
/// vocabulary), for throughput runs of a fixed shape.
pub fn synthetic_batch(seqs: usize, len: usize, seed: u64) -> PackedBatch {
    let mut state = seed | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut batch = PackedBatch::default();
    for _ in 0..seqs {
        let start = batch.input_ids.len() as u32;
        batch.segments.extend([start, len as u32]);
        for i in 0..len {
            // 101 [CLS], 102 [SEP]; ordinary word pieces are 1996..30521 in this vocabulary.
            let id = if i == 0 {
                101
            } else if i + 1 == len {
                102
            } else {
                1996 + (next() % 28_000) as u32
            };
            batch.input_ids.push(id);
        }
        batch.token_type_ids.extend(std::iter::repeat_n(0, len));
        batch.position_ids.extend(0..len as u32);
    }
    batch
}

/// Per-text cosines of `got` to the reference, after checking token counts.
pub fn cosines(reference: &Reference, batch: &PackedBatch, got: &[Vec<f32>]) -> Result<Vec<f64>, String> {
    if got.len() != reference.inputs.len() {
        return Err(format!("{} embeddings for {} reference texts", got.len(), reference.inputs.len()));
    }
    reference
        .inputs
        .iter()
        .zip(got)
        .enumerate()
        .map(|(i, (r, g))| {
            let tokens = batch.segments[2 * i + 1] as usize;
            if tokens != r.tokens {
                return Err(format!("{:?}: {tokens} tokens, the reference has {}", r.text, r.tokens));
            }
            Ok(f64::from(tandem_models::cosine(g, &r.embedding)))
        })
        .collect()
}
