//! BERT encoders (sentence-transformers layout) as a tandem graph.
//!
//! Reads a model folder: `config.json` (HF `BertModel`), `model.safetensors` (names with or
//! without a `bert.` prefix), and the sentence-transformers files that say how to turn token
//! states into one embedding: `modules.json`, the pooling config it points to and
//! `sentence_bert_config.json`. Every config size is checked against the weights before a
//! byte of weights is read.
//!
//! The graph takes packed sequences (see `tandem_runtime::ops`):
//! inputs `input_ids`, `token_type_ids`, `position_ids` u32 `[tokens]` and `segments` u32
//! `[seqs, 2]`; output `embeddings` f32 `[seqs, hidden]`.
//! Metadata (what a pipeline needs, see the `META_*` keys): architecture, model name,
//! max_seq_length, pooling, normalize, hidden size.

use crate::lora::{LoraAdapter, LoraMode};
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tandem_runtime::graph::Weights;
use tandem_runtime::ops::{Activation, Attention, BinaryKind, LoraMatMul, MatMul, PoolKind, UnaryKind};
use tandem_runtime::{DType, Dim, Graph, Op, TensorType, ValueId};

pub const META_ARCHITECTURE: &str = "architecture";
pub const META_MODEL: &str = "model";
/// Most tokens of one text, special tokens included; longer texts are truncated.
pub const META_MAX_SEQ_LENGTH: &str = "max_seq_length";
pub const META_POOLING: &str = "pooling";
pub const META_NORMALIZE: &str = "normalize";
pub const META_HIDDEN_SIZE: &str = "hidden_size";

/// JSON config files are small; bound them anyway.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Sizes past these are not a BERT we can mean (and keep shape arithmetic far from overflow).
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1024;

/// The fields of HF's `config.json` a `BertModel` graph needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_hidden_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Checks the sizes (bounded, consistent) and what the graph supports; errors name `path`.
    pub(crate) fn check(&self, path: &Path) -> Result<()> {
        let at = path.display();
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if value == 0 || value > MAX_DIM {
                bail!("{at}: {field} is {value}, expected 1 to {MAX_DIM}");
            }
        }
        if self.num_hidden_layers == 0 || self.num_hidden_layers > MAX_LAYERS {
            bail!("{at}: num_hidden_layers is {}, expected 1 to {MAX_LAYERS}", self.num_hidden_layers);
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "{at}: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.hidden_act != "gelu" {
            bail!("{at}: hidden_act '{}' is not supported (only \"gelu\", the erf form)", self.hidden_act);
        }
        if let Some(kind) = &self.position_embedding_type
            && kind != "absolute"
        {
            bail!("{at}: position_embedding_type '{kind}' is not supported (only \"absolute\")");
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            bail!("{at}: layer_norm_eps {} is not a non-negative number", self.layer_norm_eps);
        }
        Ok(())
    }
}

/// How token states become one embedding (sentence-transformers' modules after the encoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentenceHead {
    pub pooling: PoolKind,
    pub normalize: bool,
    /// Most tokens per text (special tokens included), at most `max_position_embeddings`.
    pub max_seq_length: usize,
}

impl SentenceHead {
    /// What sentence-transformers' all-MiniLM-L6-v2 folder says: mean pooling, then L2
    /// normalization, at most 256 tokens.
    pub const MINILM: SentenceHead = SentenceHead { pooling: PoolKind::Mean, normalize: true, max_seq_length: 256 };
}

pub fn pooling_name(kind: PoolKind) -> &'static str {
    match kind {
        PoolKind::Mean => "mean",
        PoolKind::First => "cls",
        PoolKind::Max => "max",
    }
}

/// A BERT model folder turned into a graph, with the weights file it reads.
pub struct BertModel {
    pub graph: Graph,
    pub weights: Weights,
    pub config: BertConfig,
    pub head: SentenceHead,
    pub tokenizer_path: PathBuf,
}

/// Builds the embedding graph of the sentence-transformers BERT model in `dir`.
pub fn load_dir(dir: &Path) -> Result<BertModel> {
    load_dir_with_adapter(dir, None)
}

/// [`load_dir`] with a LoRA adapter applied, merged into the weights or run unmerged.
pub fn load_dir_with_adapter(dir: &Path, adapter: Option<(&LoraAdapter, LoraMode)>) -> Result<BertModel> {
    if !dir.is_dir() {
        bail!("{}: no such model directory", dir.display());
    }
    let config_path = dir.join("config.json");
    let config: BertConfig = read_json(&config_path)?;
    config.check(&config_path)?;
    let head = read_sentence_head(dir, &config)?;
    let weights_path = dir.join("model.safetensors");
    let mut weights = Weights::open(&weights_path)?;
    let mut name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bert".into());
    let mut lora_scale = None;
    if let Some((adapter, mode)) = adapter {
        weights = adapter.apply(&weights, weight_prefix(&weights)?, mode)?;
        lora_scale = (mode == LoraMode::Unmerged).then_some(adapter.scale);
        let adapter_name = adapter.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name = format!("{name}+{adapter_name}");
    }
    let graph = build_graph(&name, &config, &head, &weights, &config_path, lora_scale)?;
    Ok(BertModel { graph, weights, config, head, tokenizer_path: dir.join("tokenizer.json") })
}

/// Builds the embedding graph from files already in memory (a browser's downloads): HF's
/// `config.json` and `model.safetensors`. The sentence-transformers files that say how to pool
/// are not read: `head` spells it out (all-MiniLM-L6-v2: mean pooling, normalized, 256
/// tokens). `head.max_seq_length` is capped at the position table, as [`load_dir`] caps it.
/// `name` names the model in the graph and in errors; the returned `tokenizer_path` is
/// `name/tokenizer.json`, a name only.
pub fn from_bytes(name: &str, config_json: &[u8], weights: Vec<u8>, head: SentenceHead) -> Result<BertModel> {
    let config_path = Path::new(name).join("config.json");
    let at = config_path.display();
    if config_json.len() as u64 > MAX_CONFIG_BYTES {
        bail!("{at}: {} bytes is over the limit of {MAX_CONFIG_BYTES} for a config file", config_json.len());
    }
    let config: BertConfig = serde_json::from_slice(config_json).map_err(|e| anyhow!("{at}: {e}"))?;
    config.check(&config_path)?;
    let max_seq_length = head.max_seq_length.min(config.max_position_embeddings);
    if max_seq_length < 3 {
        bail!("{at}: max_seq_length {max_seq_length} leaves no room for text");
    }
    let head = SentenceHead { max_seq_length, ..head };
    let weights = Weights::from_bytes(&Path::new(name).join("model.safetensors"), weights)?;
    let graph = build_graph(name, &config, &head, &weights, &config_path, None)?;
    Ok(BertModel { graph, weights, config, head, tokenizer_path: Path::new(name).join("tokenizer.json") })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > MAX_CONFIG_BYTES {
        bail!("{}: {len} bytes is over the limit of {MAX_CONFIG_BYTES} for a config file", path.display());
    }
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// Reads modules.json, the pooling config and sentence_bert_config.json. A folder without
/// modules.json is a plain HF model: mean pooling, no normalization (sentence-transformers'
/// own default for such folders).
fn read_sentence_head(dir: &Path, config: &BertConfig) -> Result<SentenceHead> {
    let mut head = SentenceHead { pooling: PoolKind::Mean, normalize: false, max_seq_length: 0 };
    let modules_path = dir.join("modules.json");
    if modules_path.exists() {
        let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
        for module in &modules {
            match module.kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" => {}
                "Pooling" => head.pooling = read_pooling(dir, &module.path, &modules_path)?,
                "Normalize" => head.normalize = true,
                _ => bail!("{}: module '{}' is not supported", modules_path.display(), module.kind),
            }
        }
    }
    let st_config_path = dir.join("sentence_bert_config.json");
    let max_seq_length =
        if st_config_path.exists() { read_json::<SentenceBertConfig>(&st_config_path)?.max_seq_length } else { None };
    // sentence-transformers caps the tokenizer at the position table, as we must.
    head.max_seq_length = max_seq_length.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
    if head.max_seq_length < 3 {
        bail!("{}: max_seq_length {} leaves no room for text", st_config_path.display(), head.max_seq_length);
    }
    Ok(head)
}

/// The pooling mode from a sentence-transformers Pooling config: `pooling_mode` (6.x), else
/// the `pooling_mode_*_token(s)` flags of older versions (as 6.x reads them).
fn read_pooling(dir: &Path, folder: &str, modules_path: &Path) -> Result<PoolKind> {
    if folder.split('/').any(|p| p == ".." || p.is_empty()) || folder.starts_with('/') || folder.contains('\\') {
        bail!("{}: pooling path '{folder}' is not a folder inside the model", modules_path.display());
    }
    let path = dir.join(folder).join("config.json");
    let config: serde_json::Map<String, serde_json::Value> = read_json(&path)?;
    let mut modes: Vec<String> = match config.get("pooling_mode") {
        Some(serde_json::Value::String(mode)) => vec![mode.clone()],
        Some(serde_json::Value::Array(list)) => list.iter().map(|m| m.as_str().unwrap_or("?").to_string()).collect(),
        Some(other) => bail!("{}: pooling_mode {other} is not a mode name", path.display()),
        None => Vec::new(),
    };
    if !config.contains_key("pooling_mode") {
        for (key, value) in &config {
            if let Some(flag) = key.strip_prefix("pooling_mode_")
                && value.as_bool() == Some(true)
            {
                modes.push(flag.trim_end_matches("_tokens").trim_end_matches("_token").to_string());
            }
        }
    }
    match modes.as_slice() {
        [mode] => match mode.as_str() {
            "mean" => Ok(PoolKind::Mean),
            "cls" => Ok(PoolKind::First),
            "max" => Ok(PoolKind::Max),
            other => bail!("{}: pooling mode '{other}' is not supported (mean, cls or max)", path.display()),
        },
        [] => bail!("{}: no pooling mode is set", path.display()),
        many => bail!("{}: several pooling modes ({}) are not supported", path.display(), many.join(", ")),
    }
}

/// Declares weights after checking each against the file: present, and of the shape the
/// config implies. Errors name both files and the tensor.
struct WeightChecker<'a> {
    weights: &'a Weights,
    prefix: &'static str,
    config_path: &'a Path,
    /// The scale of an unmerged LoRA adapter whose A and B sit beside the base weights.
    lora_scale: Option<f32>,
}

impl WeightChecker<'_> {
    fn declare(&self, g: &mut Graph, name: &str, shape: &[usize]) -> Result<ValueId> {
        let full = format!("{}{name}", self.prefix);
        let file = self.weights.path().display();
        let actual =
            self.weights.shape(&full).ok_or_else(|| anyhow!("{file}: tensor '{full}' is missing (a BERT needs it)"))?;
        if actual != shape {
            bail!(
                "{} disagrees with {file}: tensor '{full}' is {actual:?} but the config implies {shape:?}",
                self.config_path.display()
            );
        }
        // A block-quantized weight is declared as stored: matmul and gather read the blocks.
        let dtype = self.weights.quantized(&full).unwrap_or(DType::F32);
        Ok(g.weight(&full, TensorType::fixed(dtype, shape)))
    }

    fn has(&self, name: &str) -> bool {
        self.weights.shape(&format!("{}{name}", self.prefix)).is_some()
    }

    /// LayerNorm (gamma, beta) under `at`: `weight`/`bias`, or old checkpoints' `gamma`/`beta`.
    fn layer_norm(&self, g: &mut Graph, at: &str, width: usize) -> Result<(ValueId, ValueId)> {
        let (scale, shift) = if self.has(&format!("{at}.gamma")) { ("gamma", "beta") } else { ("weight", "bias") };
        Ok((self.declare(g, &format!("{at}.{scale}"), &[width])?, self.declare(g, &format!("{at}.{shift}"), &[width])?))
    }

    /// A `Linear` layer (`weight` `[out, in]`, `bias` `[out]`) under `at` applied to `x`,
    /// with the activation fused: a `MatMul`, or a `LoraMatMul` where an unmerged adapter
    /// left `lora_A`/`lora_B` beside the weight.
    fn dense(
        &self,
        g: &mut Graph,
        node: &str,
        x: ValueId,
        at: &str,
        shape: [usize; 2],
        act: Activation,
    ) -> Result<ValueId> {
        let [inputs, outputs] = shape;
        let weight = self.declare(g, &format!("{at}.weight"), &[outputs, inputs])?;
        let bias = self.declare(g, &format!("{at}.bias"), &[outputs])?;
        let lora_a = format!("{}{at}.lora_A.weight", self.prefix);
        match (self.lora_scale, self.weights.shape(&lora_a)) {
            (Some(scale), Some(a_shape)) => {
                let rank = a_shape.first().copied().unwrap_or(0);
                let a = self.declare(g, &format!("{at}.lora_A.weight"), &[rank, inputs])?;
                let b = self.declare(g, &format!("{at}.lora_B.weight"), &[outputs, rank])?;
                let op = Op::LoraMatMul(LoraMatMul { scale, activation: act });
                Ok(g.node1(node, op, &[x, weight, a, b, bias])?)
            }
            _ => Ok(g.node1(node, Op::MatMul(MatMul { trans_b: true, activation: act }), &[x, weight, bias])?),
        }
    }
}

/// The prefix of the encoder's tensor names: `bert.` in a task checkpoint
/// (BertForSequenceClassification), none in a bare BertModel.
fn weight_prefix(weights: &Weights) -> Result<&'static str> {
    if weights.shape("bert.embeddings.word_embeddings.weight").is_some() {
        Ok("bert.")
    } else if weights.shape("embeddings.word_embeddings.weight").is_some() {
        Ok("")
    } else {
        bail!("{}: no tensor 'embeddings.word_embeddings.weight': not a BERT checkpoint", weights.path().display())
    }
}

/// Token embeddings and `num_hidden_layers` post-norm encoder layers over packed inputs:
/// declares the graph inputs and returns the last hidden states `[tokens, hidden]` and the
/// `segments` input.
fn encoder(g: &mut Graph, w: &WeightChecker, config: &BertConfig) -> Result<(ValueId, ValueId)> {
    let h = config.hidden_size;
    let eps = config.layer_norm_eps as f32;
    let plain = Activation::None;
    let add = Op::Binary(BinaryKind::Add);

    let tokens = || TensorType::new(DType::U32, vec![Dim::sym("tokens")]);
    let input_ids = g.input("input_ids", tokens());
    let token_type_ids = g.input("token_type_ids", tokens());
    let position_ids = g.input("position_ids", tokens());
    let segments = g.input("segments", TensorType::new(DType::U32, vec![Dim::sym("seqs"), Dim::Fixed(2)]));

    let word_table = w.declare(g, "embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
    let position_table = w.declare(g, "embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?;
    let type_table = w.declare(g, "embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?;
    let words = g.node1("embeddings.word", Op::Gather, &[word_table, input_ids])?;
    let positions = g.node1("embeddings.position", Op::Gather, &[position_table, position_ids])?;
    let types = g.node1("embeddings.token_type", Op::Gather, &[type_table, token_type_ids])?;
    let sum = g.node1("embeddings.add_position", add.clone(), &[words, positions])?;
    let sum = g.node1("embeddings.add_token_type", add.clone(), &[sum, types])?;
    let (gamma, beta) = w.layer_norm(g, "embeddings.LayerNorm", h)?;
    let mut x = g.node1("embeddings.norm", Op::LayerNorm { eps }, &[sum, gamma, beta])?;

    let heads = config.num_attention_heads as u32;
    let attention = Op::Attention(Attention {
        num_heads: heads,
        num_kv_heads: heads,
        scale: 1.0 / ((h / config.num_attention_heads) as f32).sqrt(),
        causal: false,
        bf16_products: false,
    });
    for layer in 0..config.num_hidden_layers {
        let at = format!("encoder.layer.{layer}");
        let node = |part: &str| format!("layer.{layer}.{part}");
        let project = |g: &mut Graph, part: &str| {
            w.dense(g, &node(part), x, &format!("{at}.attention.self.{part}"), [h, h], plain)
        };
        let q = project(g, "query")?;
        let k = project(g, "key")?;
        let v = project(g, "value")?;
        let context = g.node1(&node("attention"), attention.clone(), &[q, k, v, segments])?;
        let attended =
            w.dense(g, &node("attention_out"), context, &format!("{at}.attention.output.dense"), [h, h], plain)?;
        let residual = g.node1(&node("attention_residual"), add.clone(), &[attended, x])?;
        let (gamma, beta) = w.layer_norm(g, &format!("{at}.attention.output.LayerNorm"), h)?;
        let attention_out = g.node1(&node("attention_norm"), Op::LayerNorm { eps }, &[residual, gamma, beta])?;

        let wide = config.intermediate_size;
        let intermediate = w.dense(
            g,
            &node("intermediate"),
            attention_out,
            &format!("{at}.intermediate.dense"),
            [h, wide],
            Activation::Gelu,
        )?;
        let out = w.dense(g, &node("output"), intermediate, &format!("{at}.output.dense"), [wide, h], plain)?;
        let residual = g.node1(&node("output_residual"), add.clone(), &[out, attention_out])?;
        let (gamma, beta) = w.layer_norm(g, &format!("{at}.output.LayerNorm"), h)?;
        x = g.node1(&node("output_norm"), Op::LayerNorm { eps }, &[residual, gamma, beta])?;
    }

    Ok((x, segments))
}

/// Emits the graph: embeddings, `num_hidden_layers` post-norm encoder layers, pooling and the
/// optional normalization.
///
/// `lora_scale`: the weights hold an unmerged LoRA adapter ([`crate::lora`]) with this scale;
/// the layers it adapts become `LoraMatMul`.
pub fn build_graph(
    name: &str,
    config: &BertConfig,
    head: &SentenceHead,
    weights: &Weights,
    config_path: &Path,
    lora_scale: Option<f32>,
) -> Result<Graph> {
    let w = WeightChecker { weights, prefix: weight_prefix(weights)?, config_path, lora_scale };
    let mut g = Graph::new(name);
    let (x, segments) = encoder(&mut g, &w, config)?;
    let mut embeddings = g.node1("pool", Op::Pool(head.pooling), &[x, segments])?;
    if head.normalize {
        // sentence-transformers' Normalize is F.normalize: eps 1e-12.
        embeddings = g.node1("normalize", Op::L2Normalize { eps: 1e-12 }, &[embeddings])?;
    }
    g.output(embeddings, "embeddings");

    for (key, value) in [
        (META_ARCHITECTURE, "bert".to_string()),
        (META_MODEL, name.to_string()),
        (META_MAX_SEQ_LENGTH, head.max_seq_length.to_string()),
        (META_POOLING, pooling_name(head.pooling).to_string()),
        (META_NORMALIZE, head.normalize.to_string()),
        (META_HIDDEN_SIZE, config.hidden_size.to_string()),
    ] {
        g.metadata.insert(key.to_string(), value);
    }
    g.validate().map_err(|e| anyhow!("building the graph of {}: {e}", config_path.display()))?;
    Ok(g)
}

/// A `BertForSequenceClassification` folder (a cross-encoder) turned into a graph: the encoder,
/// then HF's head: the `[CLS]` state through the pooler (dense + tanh) and the classifier.
/// Output `logits` f32 `[seqs, num_labels]`, one row per (query, document) pair.
pub struct ClassifierModel {
    pub graph: Graph,
    pub weights: Weights,
    pub config: BertConfig,
    pub num_labels: usize,
    pub max_seq_length: usize,
    pub tokenizer_path: PathBuf,
}

#[derive(Deserialize)]
struct ClassifierFields {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    id2label: std::collections::BTreeMap<String, String>,
    num_labels: Option<usize>,
}

/// Most labels a classifier head may have (cross-encoders have one).
const MAX_LABELS: usize = 1024;

pub fn load_classifier_dir(dir: &Path) -> Result<ClassifierModel> {
    if !dir.is_dir() {
        bail!("{}: no such model directory", dir.display());
    }
    let config_path = dir.join("config.json");
    let config: BertConfig = read_json(&config_path)?;
    config.check(&config_path)?;
    let fields: ClassifierFields = read_json(&config_path)?;
    let at = config_path.display();
    if !fields.architectures.iter().any(|a| a == "BertForSequenceClassification") {
        bail!("{at}: architectures {:?} do not include BertForSequenceClassification", fields.architectures);
    }
    let num_labels = fields.num_labels.unwrap_or(fields.id2label.len().max(1));
    if num_labels == 0 || num_labels > MAX_LABELS {
        bail!("{at}: {num_labels} labels, expected 1 to {MAX_LABELS}");
    }
    let weights = Weights::open(&dir.join("model.safetensors"))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bert".into());
    let w = WeightChecker {
        weights: &weights,
        prefix: weight_prefix(&weights)?,
        config_path: &config_path,
        lora_scale: None,
    };
    let mut g = Graph::new(&name);
    let (x, segments) = encoder(&mut g, &w, &config)?;
    let h = config.hidden_size;
    let first = g.node1("pool", Op::Pool(PoolKind::First), &[x, segments])?;
    let pooled = w.dense(&mut g, "pooler", first, "pooler.dense", [h, h], Activation::None)?;
    let pooled = g.node1("pooler.tanh", Op::Unary(UnaryKind::Tanh), &[pooled])?;
    // The classifier sits beside the encoder, outside the `bert.` prefix.
    let head = WeightChecker { prefix: "", ..w };
    let logits = head.dense(&mut g, "classifier", pooled, "classifier", [h, num_labels], Activation::None)?;
    g.output(logits, "logits");
    let max_seq_length = config.max_position_embeddings.min(512);
    for (key, value) in [
        (META_ARCHITECTURE, "bert-classifier".to_string()),
        (META_MODEL, name.clone()),
        (META_MAX_SEQ_LENGTH, max_seq_length.to_string()),
        (META_HIDDEN_SIZE, h.to_string()),
    ] {
        g.metadata.insert(key.to_string(), value);
    }
    g.validate().map_err(|e| anyhow!("building the graph of {at}: {e}"))?;
    Ok(ClassifierModel {
        graph: g,
        weights,
        config,
        num_labels,
        max_seq_length,
        tokenizer_path: dir.join("tokenizer.json"),
    })
}
