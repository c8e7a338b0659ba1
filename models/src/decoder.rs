//! Decoder LLMs from GGUF files as tandem graphs: `llama` (SmolLM2) and `qwen2` (Qwen2.5),
//! sized from the file's metadata, never from constants.
//!
//! The graph runs any mix of prefill and decode in one run over packed sequences, each with
//! its KV cache rows in a caller-owned [`tandem_runtime::State`] (two states per layer,
//! `l{i}.k` and `l{i}.v`, `[kv_rows, kv_heads · head_dim]`):
//! - inputs `ids` u32 `[tokens]`, `positions` u32 `[tokens]` (each token's position in its
//!   sequence), `table` u32 `[seqs, 4]` (new rows, kv rows: see `ops::attention`) and `last`
//!   u32 `[seqs]` (the row whose logits each sequence wants), then the sampling inputs of
//!   `ops::sample`: `sampling` f32 `[seqs, 5]`, `seen` u32 `[seqs, seen]`, `keys` u32
//!   `[seqs, 2]` ([`DecoderBatch`] packs all seven);
//! - outputs `logits` f32 `[seqs, vocab]` and `next` u32 `[seqs]`, each sequence's next token
//!   chosen on the device (a decode step reads back only `next`), and `hidden` f32
//!   `[seqs, d_model]`, the final-normed hidden state of each sequence's `last` row (LLM
//!   embeddings).
//!
//! Weights stay as the file stores them (Q4_1, Q8_0, Q4_K, …): matmul and gather dequantize
//! inside the kernel. llama-arch files store the q and k rows permuted for interleaved RoPE
//! pairs, which is the layout used for them here; qwen2 uses the half-split layout.

use anyhow::{Context, Result, bail};
use tandem_runtime::ops::attention::StepBatch;
use tandem_runtime::ops::{
    Activation, Attention, BinaryKind, KvWrite, MatMul, Rope, RopeLayout, UnaryKind, rope, sample,
};
use tandem_runtime::weights::Gguf;
use tandem_runtime::{DType, Dim, Graph, HostTensor, Op, TensorType, ValueId};

/// What a decoder graph is built from: the file's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub arch: String,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub context: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Leading dims of each head that RoPE turns.
    pub rope_dims: usize,
    /// Linear RoPE scaling (`rope.scaling.factor` with type `linear`), 1 for none.
    pub rope_scale: f32,
    pub rope_layout: RopeLayout,
}

impl DecoderConfig {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.architecture()?.to_string();
        let rope_layout = match arch.as_str() {
            "llama" => RopeLayout::Interleaved,
            "qwen2" => RopeLayout::Half,
            other => bail!("{}: architecture '{other}' is not supported (llama, qwen2)", g.path().display()),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| -> Result<usize> { Ok(g.get_u64(&key(k))? as usize) };
        let d_model = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        let kv_heads =
            if g.get(&key("attention.head_count_kv")).is_some() { u("attention.head_count_kv")? } else { heads };
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !d_model.is_multiple_of(heads) {
            bail!("{arch}: {heads} heads, {kv_heads} kv heads and width {d_model} do not fit together");
        }
        let head_dim = d_model / heads;
        let rope_dims =
            if g.get(&key("rope.dimension_count")).is_some() { u("rope.dimension_count")? } else { head_dim };
        let rope_base =
            if g.get(&key("rope.freq_base")).is_some() { g.get_f32(&key("rope.freq_base"))? } else { 10000.0 };
        let rope_scale =
            match g.get(&key("rope.scaling.type")).map(|_| g.get_str(&key("rope.scaling.type"))).transpose()? {
                None | Some("none") => 1.0,
                Some("linear") => g.get_f32(&key("rope.scaling.factor"))?,
                Some(other) => bail!("{arch}: RoPE scaling '{other}' is not supported (none, linear)"),
            };
        let vocab = g.tensor_info("token_embd.weight")?.shape()[0];
        Ok(DecoderConfig {
            layers: u("block_count")?,
            d_model,
            heads,
            kv_heads,
            head_dim,
            ffn: u("feed_forward_length")?,
            vocab,
            context: u("context_length")?,
            rms_eps: g.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base,
            rope_dims,
            rope_scale,
            rope_layout,
            arch,
        })
    }

    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// A graph being built with the weights it declares, read from the file as they are added.
pub(crate) struct Builder<'a> {
    file: &'a Gguf,
    pub graph: Graph,
    pub weights: Vec<HostTensor>,
}

impl<'a> Builder<'a> {
    pub fn new(file: &'a Gguf, name: &str) -> Self {
        Builder { file, graph: Graph::new(name), weights: Vec::new() }
    }

    /// A weight that does not come from the file.
    pub fn constant(&mut self, name: &str, tensor: HostTensor) -> ValueId {
        let id = self.graph.weight(name, TensorType::fixed(tensor.dtype(), &tensor.shape));
        self.weights.push(tensor);
        id
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.tensor_info(name).is_ok()
    }

    /// The file's tensor `name`, as stored (quantized or not), as a graph weight.
    pub fn weight(&mut self, name: &str) -> Result<ValueId> {
        let t = self.file.tensor(name).with_context(|| format!("{}: tensor '{name}'", self.file.path().display()))?;
        let id = self.graph.weight(name, TensorType::fixed(t.dtype(), &t.shape));
        self.weights.push(t);
        Ok(id)
    }

    /// `x · Wᵀ (+ b)` for the file's `{name}.weight` (and `{name}.bias` when it has one:
    /// qwen2's q, k and v).
    pub fn linear(&mut self, name: &str, x: ValueId) -> Result<ValueId> {
        self.linear_with(name, x, Activation::None)
    }

    /// [`Self::linear`] with `activation` applied as the product is written.
    pub fn linear_with(&mut self, name: &str, x: ValueId, activation: Activation) -> Result<ValueId> {
        let mut inputs = vec![x, self.weight(&format!("{name}.weight"))?];
        if self.has(&format!("{name}.bias")) {
            inputs.push(self.weight(&format!("{name}.bias"))?);
        }
        Ok(self.graph.node1(name, Op::MatMul(MatMul { trans_b: true, activation }), &inputs)?)
    }

    pub fn node(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        Ok(self.graph.node1(name, op, inputs)?)
    }
}

/// The decoder side of a layer-wise visual adapter ([`crate::llm::visual`]): the layers it
/// enters and each one's gate (`[heads]` f32, before its tanh).
#[derive(Debug, Clone)]
pub struct VisualGates {
    pub layers: Vec<(usize, HostTensor)>,
}

/// The decoder graph and its weights (in `graph.weights` order), read from `file`.
pub fn decoder_graph(file: &Gguf) -> Result<(DecoderConfig, Graph, Vec<HostTensor>)> {
    decoder_graph_with(file, None, DType::F32)
}

/// [`decoder_graph`] with a visual adapter's gated attention in the layers it names. The
/// graph then also has the input `vis_table` u32 `[seqs, 4]` (each sequence's new rows and
/// its visual rows: see [`DecoderBatch::visual_table`]) and per adapted layer the states
/// `l{i}.vk` and `l{i}.vv` (`[vis_rows, kv_width]`), which hold each picture's visual keys
/// and values, written once per picture. In those layers every query also attends to its
/// sequence's visual rows in a softmax of its own (no positions, not causal), and that result,
/// scaled per head by tanh(gate), is added to the text attention's before the output
/// projection: all gates 0 leaves the base decoder's numbers as they were.
///
/// `kv_cache` is the KV states' element type: f32, or f16 (half the memory; each key and
/// value rounded once when stored, as llama.cpp's default cache does).
pub fn decoder_graph_with(
    file: &Gguf,
    visual: Option<&VisualGates>,
    kv_cache: DType,
) -> Result<(DecoderConfig, Graph, Vec<HostTensor>)> {
    if !matches!(kv_cache, DType::F32 | DType::F16) {
        bail!("a KV cache is f32 or f16, not {kv_cache}");
    }
    let c = DecoderConfig::from_gguf(file)?;
    let mut b = Builder::new(file, &format!("{}-decoder", c.arch));
    let tokens = || Dim::sym("tokens");
    let seqs = || Dim::sym("seqs");
    let ids = b.graph.input("ids", TensorType::new(DType::U32, vec![tokens()]));
    let positions = b.graph.input("positions", TensorType::new(DType::U32, vec![tokens()]));
    let table = b.graph.input("table", TensorType::new(DType::U32, vec![seqs(), Dim::Fixed(4)]));
    let last = b.graph.input("last", TensorType::new(DType::U32, vec![seqs()]));
    let sampling =
        b.graph.input("sampling", TensorType::new(DType::F32, vec![seqs(), Dim::Fixed(sample::SETTINGS as u64)]));
    let seen = b.graph.input("seen", TensorType::new(DType::U32, vec![seqs(), Dim::sym("seen")]));
    let keys = b.graph.input("keys", TensorType::new(DType::U32, vec![seqs(), Dim::Fixed(2)]));
    let vis_table =
        visual.map(|_| b.graph.input("vis_table", TensorType::new(DType::U32, vec![seqs(), Dim::Fixed(4)])));

    let embedding = b.weight("token_embd.weight")?;
    let freqs = rope::inv_freq(c.rope_base, c.rope_dims, c.rope_scale);
    let inv_freq = b.graph.weight("rope.inv_freq", TensorType::fixed(DType::F32, &[freqs.len()]));
    b.weights.push(HostTensor::f32(vec![freqs.len()], freqs)?);

    let rope_op = Op::Rope(Rope { head_dim: c.head_dim as u32, rot_dims: c.rope_dims as u32, layout: c.rope_layout });
    let attention_params = Attention {
        num_heads: c.heads as u32,
        num_kv_heads: c.kv_heads as u32,
        scale: 1.0 / (c.head_dim as f32).sqrt(),
        causal: true,
        bf16_products: false,
    };
    let attention = Op::Attention(attention_params);
    let rms = Op::RmsNorm { eps: c.rms_eps };
    let mut x = b.node("embed", Op::Gather, &[embedding, ids])?;
    for l in 0..c.layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        let cache = || TensorType::new(kv_cache, vec![Dim::sym("kv_rows"), Dim::Fixed(c.kv_width() as u64)]);
        let k_cache = b.graph.state(&format!("l{l}.k"), cache());
        let v_cache = b.graph.state(&format!("l{l}.v"), cache());
        let norm = b.weight(&n("attn_norm.weight"))?;
        let h = b.node(&n("attn_norm"), rms.clone(), &[x, norm])?;
        let q = b.linear(&n("attn_q"), h)?;
        let k = b.linear(&n("attn_k"), h)?;
        let v = b.linear(&n("attn_v"), h)?;
        let q = b.node(&n("q_rope"), rope_op.clone(), &[q, positions, inv_freq])?;
        let k = b.node(&n("k_rope"), rope_op.clone(), &[k, positions, inv_freq])?;
        let k_all = b.node(&n("k_write"), Op::KvWrite(KvWrite), &[k_cache, k, table])?;
        let v_all = b.node(&n("v_write"), Op::KvWrite(KvWrite), &[v_cache, v, table])?;
        let mut a = b.node(&n("attn"), attention.clone(), &[q, k_all, v_all, table])?;
        let gate = visual.and_then(|v| v.layers.iter().find(|(at, _)| *at == l));
        if let (Some((_, gate)), Some(vis_table)) = (gate, vis_table) {
            let visual_rows =
                || TensorType::new(DType::F32, vec![Dim::sym("vis_rows"), Dim::Fixed(c.kv_width() as u64)]);
            let vk = b.graph.state(&format!("l{l}.vk"), visual_rows());
            let vv = b.graph.state(&format!("l{l}.vv"), visual_rows());
            let seen = Op::Attention(Attention { causal: false, ..attention_params });
            let av = b.node(&n("attn_visual"), seen, &[q, vk, vv, vis_table])?;
            let g = b.constant(&format!("adapter.{l}.gate"), gate.clone());
            let g = b.node(&n("visual_gate_tanh"), Op::Unary(UnaryKind::Tanh), &[g])?;
            let g = b.node(&n("visual_gate"), Op::Reshape(vec![Dim::Fixed(c.heads as u64), Dim::Fixed(1)]), &[g])?;
            let per_head = vec![tokens(), Dim::Fixed(c.heads as u64), Dim::Fixed(c.head_dim as u64)];
            let av = b.node(&n("attn_visual_heads"), Op::Reshape(per_head), &[av])?;
            let av = b.node(&n("attn_visual_gated"), Op::Binary(BinaryKind::Mul), &[av, g])?;
            let flat = vec![tokens(), Dim::Fixed((c.heads * c.head_dim) as u64)];
            let av = b.node(&n("attn_visual_flat"), Op::Reshape(flat), &[av])?;
            a = b.node(&n("attn_with_visual"), Op::Binary(BinaryKind::Add), &[a, av])?;
        }
        let o = b.linear(&n("attn_output"), a)?;
        x = b.node(&n("attn_residual"), Op::Binary(BinaryKind::Add), &[x, o])?;
        let norm = b.weight(&n("ffn_norm.weight"))?;
        let h = b.node(&n("ffn_norm"), rms.clone(), &[x, norm])?;
        // SwiGLU: the gate's SiLU runs in its product's epilogue.
        let gate = b.linear_with(&n("ffn_gate"), h, Activation::Silu)?;
        let up = b.linear(&n("ffn_up"), h)?;
        let f = b.node(&n("ffn_swiglu"), Op::Binary(BinaryKind::Mul), &[gate, up])?;
        let f = b.linear(&n("ffn_down"), f)?;
        x = b.node(&n("ffn_residual"), Op::Binary(BinaryKind::Add), &[x, f])?;
    }
    let x_last = b.node("last_rows", Op::Gather, &[x, last])?;
    let norm = b.weight("output_norm.weight")?;
    let h = b.node("output_norm", rms, &[x_last, norm])?;
    // The last hidden state (after the final norm, as transformers' `last_hidden_state`):
    // LLM embeddings.
    b.graph.output(h, "hidden");
    // Tied embeddings (SmolLM2) when the file has no separate output matrix.
    let head = if b.has("output.weight") { b.weight("output.weight")? } else { embedding };
    let logits = b.node("output", Op::MatMul(MatMul { trans_b: true, activation: Activation::None }), &[h, head])?;
    b.graph.output(logits, "logits");
    let next = b.node("sample", Op::Sample, &[logits, sampling, seen, keys])?;
    b.graph.output(next, "next");
    b.graph.validate()?;
    Ok((c, b.graph, b.weights))
}

/// How one sequence's next token is chosen on the device (a row of `ops::sample`'s inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    /// temperature, top_k, top_p, min_p, repetition_penalty.
    pub settings: [f32; sample::SETTINGS],
    /// Ids the repetition penalty applies to, sorted and unique.
    pub seen: Vec<u32>,
    pub key: [u32; 2],
}

impl SampleRow {
    /// The largest logit (lowest id on ties), no penalty.
    pub fn greedy() -> Self {
        SampleRow { settings: [0.0, 0.0, 1.0, 0.0, 1.0], seen: Vec::new(), key: [0, 0] }
    }
}

/// One run of a decoder graph: the sequences' new tokens packed as [`StepBatch`] does, and
/// each one's sampling row.
#[derive(Debug, Clone, Default)]
pub struct DecoderBatch {
    pub step: StepBatch,
    rows: Vec<SampleRow>,
}

/// No id: the padding of `seen` rows.
const NO_ID: u32 = u32::MAX;

impl DecoderBatch {
    /// Adds a sequence whose cache slot starts at row `kv_start` and holds `cached` rows,
    /// with `tokens` new (at least one), choosing its next token by `row`.
    pub fn push(&mut self, kv_start: usize, cached: usize, tokens: &[u32], row: SampleRow) {
        self.step.push(kv_start, cached, tokens);
        self.rows.push(row);
    }

    pub fn seqs(&self) -> usize {
        self.rows.len()
    }

    /// The `vis_table` input of a graph with a visual adapter: for each sequence (in push
    /// order) its new rows, and `visual[s]` = (first row, rows) of its picture's visual keys
    /// and values (0 rows: no picture, and the visual attention adds nothing).
    pub fn visual_table(&self, visual: &[(usize, usize)]) -> Result<HostTensor> {
        if visual.len() != self.seqs() {
            bail!("{} visual rows for {} sequences", visual.len(), self.seqs());
        }
        let table = self
            .step
            .table
            .chunks_exact(4)
            .zip(visual)
            .flat_map(|(row, &(start, len))| [row[0], row[1], start as u32, len as u32])
            .collect();
        Ok(HostTensor::u32(vec![self.seqs(), 4], table)?)
    }

    /// The graph's inputs, in order. `seen` rows are padded to a power-of-two width (at
    /// least 16) so that a growing output reuses a few plans rather than making one a step.
    pub fn tensors(&self) -> Result<Vec<HostTensor>> {
        let seqs = self.seqs();
        let widest = self.rows.iter().map(|r| r.seen.len()).max().unwrap_or(0);
        let width = widest.next_power_of_two().max(16);
        let mut seen = vec![NO_ID; seqs * width];
        for (row, dst) in self.rows.iter().zip(seen.chunks_exact_mut(width)) {
            dst[..row.seen.len()].copy_from_slice(&row.seen);
        }
        let mut inputs = self.step.tensors()?.to_vec();
        inputs
            .push(HostTensor::f32(vec![seqs, sample::SETTINGS], self.rows.iter().flat_map(|r| r.settings).collect())?);
        inputs.push(HostTensor::u32(vec![seqs, width], seen)?);
        inputs.push(HostTensor::u32(vec![seqs, 2], self.rows.iter().flat_map(|r| r.key).collect())?);
        Ok(inputs)
    }
}
