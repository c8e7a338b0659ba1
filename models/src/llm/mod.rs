//! Decoder LLMs from GGUF files, end to end: the graph ([`crate::decoder`]), the tokenizer
//! and chat template the file carries ([`tokenizer`], [`template`]), choosing tokens
//! ([`sampling`]) and the generation loop over a sequence's KV cache ([`Llm::generate`]).

pub mod grade;
pub mod sampling;
pub mod scheduler;
pub mod template;
pub mod tokenizer;
pub mod visual;

use crate::decoder::{DecoderBatch, DecoderConfig, SampleRow, decoder_graph_with};
use crate::session::{AnySession, AnyState, Device, wait};
use anyhow::{Context, Result, bail};
use sampling::{Sampler, SamplingParams, top_logits};
use std::path::Path;
use std::time::Duration;
// std's Instant panics in the browser; this one reads `performance.now()` there.
use tandem_runtime::weights::Gguf;
use tandem_runtime::{DType, Op, Outputs};
pub use template::{ChatTemplate, Message};
pub use tokenizer::LlmTokenizer;
use web_time::Instant;

/// Longest prompt piece run at once: a long prompt is prefilled in chunks of this many
/// tokens, so the activations of one run stay bounded whatever the prompt's length.
const PREFILL_CHUNK: usize = 512;

/// A visual adapter to load with a decoder, and its image encoder's folded checkpoint.
pub type VisualParts<'a> = (&'a visual::VisualAdapter, &'a tandem_runtime::weights::torch::StateDict);

/// A decoder loaded onto a device, with its tokenizer and chat template.
pub struct Llm {
    pub config: DecoderConfig,
    pub tokenizer: LlmTokenizer,
    template: Option<ChatTemplate>,
    session: AnySession,
    /// The picture side of a visual adapter, when one is loaded.
    visual: Option<visual::VisualEncoder>,
    /// The KV cache's element type: see [`kv_cache_dtype`].
    kv_cache: DType,
}

/// The KV cache's element type on `device`: f16 where the backend has kernels that store and
/// read an f16 cache (the CPU, CUDA and wgpu: half the memory per token of context, as
/// llama.cpp keeps it by default), f32 elsewhere and on the CPU's exact path, which stays the
/// f32 reference.
pub fn kv_cache_dtype(device: &Device) -> DType {
    use tandem_runtime::ops::{Attention, KvWrite};
    if device.cpu_options().is_some_and(|o| !o.quantized_activations) {
        return DType::F32;
    }
    let attention =
        Op::Attention(Attention { num_heads: 1, num_kv_heads: 1, scale: 1.0, causal: true, bf16_products: false });
    let f16_cache = device.supports_dtypes(&Op::KvWrite(KvWrite), &[DType::F16, DType::F32, DType::U32])
        && device.supports_dtypes(&attention, &[DType::F32, DType::F16, DType::F16, DType::U32]);
    if f16_cache { DType::F16 } else { DType::F32 }
}

/// KV caches on the device for one or more sequences ("slots", each of up to `capacity`
/// tokens, side by side in one state so that they run as one batch), and the ids each holds.
pub struct KvCache {
    state: AnyState,
    cached: Vec<Vec<u32>>,
    capacity: usize,
    /// Whether each slot's visual rows hold a picture (with a visual adapter).
    pictures: Vec<bool>,
}

impl KvCache {
    /// Ids whose keys and values slot `slot` holds, in order.
    pub fn cached(&self, slot: usize) -> &[u32] {
        &self.cached[slot]
    }
    pub fn slots(&self) -> usize {
        self.cached.len()
    }
    /// Most tokens a slot holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Whether slot `slot` sees a picture.
    pub fn has_picture(&self, slot: usize) -> bool {
        self.pictures[slot]
    }
    /// Forgets everything in `slot` after its first `len` ids (the cache rows past them are
    /// simply overwritten by what comes next).
    pub fn truncate(&mut self, slot: usize, len: usize) {
        self.cached[slot].truncate(len);
    }
    /// Device bytes of the caches.
    pub fn cache_bytes(&self) -> usize {
        self.state.bytes()
    }
}

/// What a run of [`Llm::step_batch`] gives per slot (None and empty for slots that did not
/// run).
pub struct StepOutput {
    /// The next token, chosen on the device.
    pub next: Vec<Option<u32>>,
    /// The logits after the slot's last new token, when they were asked for.
    pub logits: Vec<Vec<f32>>,
    /// The final-normed hidden state of the slot's last new token, when asked for.
    pub hidden: Vec<Vec<f32>>,
}

/// What a run reads back besides each slot's next token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    pub logits: bool,
    pub hidden: bool,
}

/// What to generate after a prompt.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep going past end-of-generation tokens (for timing, and for references that
    /// generate a fixed number of tokens).
    pub ignore_eos: bool,
    /// How many of the best `(id, logit)` at the first generated position to report.
    pub top_logits: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// It generated an end-of-generation token (which is in the ids, not in the text).
    EndOfGeneration,
    /// It reached `max_tokens`.
    Length,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::EndOfGeneration => "eog",
            Finish::Length => "length",
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: Finish,
    pub first_top: Vec<(u32, f32)>,
    /// The prompt's run (up to the first token's logits).
    pub prefill: Duration,
    /// The runs after the first token's, one per further token.
    pub decode: Duration,
    pub decode_steps: usize,
}

impl Llm {
    /// The GGUF file `model` names: a path, else a known decoder (fetched on first use).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn resolve(model: &str) -> Result<std::path::PathBuf> {
        let path = std::path::PathBuf::from(model);
        if path.is_file() || model.ends_with(".gguf") || model.contains(std::path::MAIN_SEPARATOR) {
            return Ok(path);
        }
        let known = crate::registry::known_model(model)?;
        if known.file_name().is_none_or(|f| !f.ends_with(".gguf")) {
            bail!("model '{model}' is not a decoder (a GGUF file); try smollm2 or qwen2.5-coder-0.5b");
        }
        crate::fetch::ensure(known)
    }

    /// Opens `model` (a known name or a GGUF path) on `backend`. On the CPU, `exact` gives
    /// f32 products instead of 8-bit activations; `auto` falls back to the CPU when the GPU
    /// found lacks kernels for the file's weight types.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(model: &str, backend: crate::BackendChoice, exact: bool) -> Result<Llm> {
        Self::open_with_adapter(model, backend, exact, None)
    }

    /// [`Llm::open`] with the visual adapter in folder `adapter`, when given (its encoder
    /// fetched on first use).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_with_adapter(
        model: &str,
        backend: crate::BackendChoice,
        exact: bool,
        adapter: Option<&Path>,
    ) -> Result<Llm> {
        use crate::BackendChoice;
        use tandem_runtime::backend::cpu::CpuOptions;
        let visual = match adapter {
            None => None,
            Some(dir) => {
                let adapter = visual::VisualAdapter::load(dir)?;
                let encoder_dir = crate::fetch::ensure(crate::registry::known_model("mobilenetv2")?)?;
                Some((adapter, crate::vision::load_mobilenet_v2_folded(&encoder_dir)?))
            }
        };
        let visual = visual.as_ref().map(|(adapter, encoder)| (adapter, encoder));
        let path = Self::resolve(model)?;
        let device = Device::open_blocking(backend)?;
        let cpu_device = || Device::cpu_with(CpuOptions { quantized_activations: !exact, ..CpuOptions::default() });
        let device = if device.backend_name() == "cpu" { cpu_device() } else { device };
        match Llm::load_with_adapter(&path, &device, visual) {
            Err(e) if backend == BackendChoice::Auto && device.backend_name() != "cpu" => {
                eprintln!("{}: {e:#}; using the CPU", device.backend_name());
                Llm::load_with_adapter(&path, &cpu_device(), visual)
            }
            other => other,
        }
        .with_context(|| path.display().to_string())
    }

    /// Loads a GGUF decoder onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with_adapter(path, device, None)
    }

    /// Loads a GGUF decoder onto `device` with a visual adapter and its encoder's folded
    /// checkpoint.
    pub fn load_with_adapter(path: &Path, device: &Device, adapter: Option<VisualParts<'_>>) -> Result<Self> {
        Self::from_gguf(Gguf::open(path)?, path, device, adapter)
    }

    /// Loads a GGUF decoder from its bytes (the browser, which has no files); `name` names
    /// it in errors.
    pub fn from_bytes(name: &str, bytes: Vec<u8>, device: &Device, adapter: Option<VisualParts<'_>>) -> Result<Self> {
        let name = Path::new(name);
        Self::from_gguf(Gguf::from_bytes(name, bytes)?, name, device, adapter)
    }

    /// Takes the file to drop it (its map, or its bytes in the browser) once the weights are
    /// copied out, before they go to the device: loading then peaks at about two copies of the
    /// weights, not three.
    fn from_gguf(gguf: Gguf, path: &Path, device: &Device, adapter: Option<VisualParts<'_>>) -> Result<Self> {
        let file = &gguf;
        let tokenizer = LlmTokenizer::from_gguf(file)?;
        let template = match file.get("tokenizer.chat_template") {
            None => None,
            Some(_) => {
                let source = file.get_str("tokenizer.chat_template")?;
                Some(ChatTemplate::new(source, tokenizer.bos_text(), tokenizer.eos_text())?)
            }
        };
        let config = DecoderConfig::from_gguf(file)?;
        let (gates, visual) = match adapter {
            None => (None, None),
            Some((adapter, encoder)) => {
                let layers = adapter.check(file, &config).context("adapter")?;
                let encoder = visual::VisualEncoder::new(adapter, &layers, encoder, file, &config, device)?;
                (Some(adapter.gates(&layers)?), Some(encoder))
            }
        };
        let kv_cache = kv_cache_dtype(device);
        let (config, graph, weights) = decoder_graph_with(file, gates.as_ref(), kv_cache)?;
        if tokenizer.vocab_size() != config.vocab {
            bail!(
                "{}: the tokenizer has {} tokens but the embedding has {} rows",
                path.display(),
                tokenizer.vocab_size(),
                config.vocab
            );
        }
        drop(gguf);
        let session = AnySession::on_tensors(device, graph, weights)?;
        Ok(Llm { config, tokenizer, template, session, visual, kv_cache })
    }

    pub fn backend_name(&self) -> &'static str {
        self.session.backend_name()
    }

    /// The prompt text of a conversation, through the file's chat template, with the
    /// assistant's turn opened.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String> {
        match &self.template {
            Some(t) => t.render(messages, true),
            None => bail!("the model file has no chat template (tokenizer.chat_template): use a raw prompt"),
        }
    }

    /// KV-cache bytes per token of context (keys and values of every layer).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.config.layers * self.kv_cache.bytes_for(2 * self.config.kv_width()).expect("f16 or f32: any count")
    }

    /// The KV cache's element type (f16 or f32).
    pub fn kv_cache_dtype(&self) -> DType {
        self.kv_cache
    }

    /// An empty cache of one sequence with room for `capacity` tokens (at most the model's
    /// context).
    pub fn new_sequence(&self, capacity: usize) -> Result<KvCache> {
        self.new_cache(1, capacity)
    }

    /// Empty caches for `slots` sequences of up to `capacity` tokens each.
    pub fn new_cache(&self, slots: usize, capacity: usize) -> Result<KvCache> {
        if capacity == 0 || capacity > self.config.context {
            bail!("a sequence of {capacity} tokens does not fit the model's context of {}", self.config.context);
        }
        if slots == 0 {
            bail!("a cache needs at least one sequence slot");
        }
        let rows = slots.checked_mul(capacity).ok_or_else(|| anyhow::anyhow!("{slots} × {capacity} rows overflow"))?;
        let visual_rows = slots * self.visual.as_ref().map_or(0, |v| v.tokens);
        let state = self.session.new_state(&[("kv_rows", rows), ("vis_rows", visual_rows)])?;
        Ok(KvCache { state, cached: vec![Vec::new(); slots], capacity, pictures: vec![false; slots] })
    }

    /// Whether a visual adapter is loaded (so that [`Llm::show_picture`] works).
    pub fn sees_pictures(&self) -> bool {
        self.visual.is_some()
    }

    /// Gives slot `slot` a photo (PNG or JPEG bytes) to see: its visual keys and values are
    /// computed once and kept in the cache's state. The slot's cached tokens are forgotten,
    /// since with a picture they would have other keys and values.
    pub fn show_picture(&self, cache: &mut KvCache, slot: usize, photo: &[u8]) -> Result<()> {
        self.session.blocking(|| wait(self.show_picture_async(cache, slot, photo)))
    }

    /// [`Llm::show_picture`] for callers that await (the browser).
    pub async fn show_picture_async(&self, cache: &mut KvCache, slot: usize, photo: &[u8]) -> Result<()> {
        let Some(visual) = &self.visual else {
            bail!("this model has no visual adapter: it cannot see pictures");
        };
        if slot >= cache.slots() {
            bail!("slot {slot} of a cache of {} slots", cache.slots());
        }
        let pixels = crate::vision::preprocess::imagenet_input(photo).map_err(anyhow::Error::new)?;
        let keys_and_values = visual.keys_and_values(pixels).await?;
        cache.cached[slot].clear();
        cache.pictures[slot] = false;
        for (&l, (k, v)) in visual.layers.iter().zip(&keys_and_values) {
            let first = slot * visual.tokens;
            self.session.write_state_rows(&mut cache.state, &format!("l{l}.vk"), first, k).await?;
            self.session.write_state_rows(&mut cache.state, &format!("l{l}.vv"), first, v).await?;
        }
        cache.pictures[slot] = true;
        Ok(())
    }

    /// Takes slot `slot`'s picture away (and its cached tokens, computed with it).
    pub fn hide_picture(&self, cache: &mut KvCache, slot: usize) {
        if cache.pictures[slot] {
            cache.cached[slot].clear();
            cache.pictures[slot] = false;
        }
    }

    /// Gives slot `to` the first `len` cached tokens of slot `from` (a shared prompt prefix
    /// computed once): their keys and values are copied on the device, and whatever `to`
    /// held is forgotten.
    pub fn copy_prefix(&self, cache: &mut KvCache, from: usize, to: usize, len: usize) -> Result<()> {
        if from >= cache.slots() || to >= cache.slots() || from == to {
            bail!("cannot copy slot {from} to slot {to} of a cache of {} slots", cache.slots());
        }
        if len > cache.cached[from].len() {
            bail!("slot {from} holds {} tokens, not {len}", cache.cached[from].len());
        }
        if cache.pictures[from] || cache.pictures[to] {
            bail!("a prefix seen with a picture is not shared (its keys and values depend on the picture)");
        }
        let capacity = cache.capacity;
        self.session.copy_state_rows(&mut cache.state, "kv_rows", from * capacity, to * capacity, len)?;
        cache.cached[to] = cache.cached[from][..len].to_vec();
        Ok(())
    }

    /// Runs `ids` after what slot 0 of `cache` holds and returns the logits after the last.
    pub fn feed(&self, cache: &mut KvCache, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            bail!("nothing to run: no new tokens");
        }
        let mut feeds = vec![Vec::new(); cache.slots()];
        feeds[0] = ids.to_vec();
        Ok(self.feed_batch(cache, &feeds)?.swap_remove(0))
    }

    /// Runs each slot's new ids (`feeds[slot]`, empty for a slot with nothing new) after what
    /// it holds, all slots in the same runs, and returns the logits after each slot's last
    /// new id (empty for a slot with nothing new). Long prompts go in chunks.
    pub fn feed_batch(&self, cache: &mut KvCache, feeds: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let rows = vec![SampleRow::greedy(); feeds.len()];
        Ok(self.step_batch(cache, feeds, &rows, true)?.logits)
    }

    /// [`Llm::feed_batch`] that also picks each slot's next token on the device by its
    /// sampling row, and reads back the logits only when `want_logits`.
    pub fn step_batch(
        &self,
        cache: &mut KvCache,
        feeds: &[Vec<u32>],
        rows: &[SampleRow],
        want_logits: bool,
    ) -> Result<StepOutput> {
        self.step_batch_reading(cache, feeds, rows, Reads { logits: want_logits, hidden: false })
    }

    /// [`Llm::step_batch`] reading back what `reads` asks for besides the next tokens.
    pub fn step_batch_reading(
        &self,
        cache: &mut KvCache,
        feeds: &[Vec<u32>],
        rows: &[SampleRow],
        reads: Reads,
    ) -> Result<StepOutput> {
        self.session.blocking(|| wait(self.step_batch_reading_async(cache, feeds, rows, reads)))
    }

    /// [`Llm::step_batch_reading`] for callers that await (the browser).
    pub async fn step_batch_reading_async(
        &self,
        cache: &mut KvCache,
        feeds: &[Vec<u32>],
        rows: &[SampleRow],
        reads: Reads,
    ) -> Result<StepOutput> {
        if feeds.len() != cache.slots() || rows.len() != cache.slots() {
            bail!("{} feeds and {} sampling rows for a cache of {} slots", feeds.len(), rows.len(), cache.slots());
        }
        for (slot, ids) in feeds.iter().enumerate() {
            if cache.cached[slot].len() + ids.len() > cache.capacity {
                bail!(
                    "{} tokens after {} cached do not fit the sequence's {} (the context is {})",
                    ids.len(),
                    cache.cached[slot].len(),
                    cache.capacity,
                    self.config.context
                );
            }
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab) {
                bail!("token id {bad} is past the vocabulary of {}", self.config.vocab);
            }
        }
        let vocab = self.config.vocab;
        let mut output = StepOutput {
            next: vec![None; feeds.len()],
            logits: vec![Vec::new(); feeds.len()],
            hidden: vec![Vec::new(); feeds.len()],
        };
        let mut done = vec![0usize; feeds.len()];
        let mut outputs = vec!["next"];
        if reads.logits {
            outputs.push("logits");
        }
        if reads.hidden {
            outputs.push("hidden");
        }
        // Each run takes up to PREFILL_CHUNK more tokens of every slot that has some left.
        loop {
            let mut batch = DecoderBatch::default();
            let mut in_batch = Vec::new();
            for (slot, ids) in feeds.iter().enumerate() {
                let chunk = &ids[done[slot]..(done[slot] + PREFILL_CHUNK).min(ids.len())];
                if chunk.is_empty() {
                    continue;
                }
                batch.push(slot * cache.capacity, cache.cached[slot].len(), chunk, rows[slot].clone());
                cache.cached[slot].extend_from_slice(chunk);
                done[slot] += chunk.len();
                in_batch.push(slot);
            }
            if in_batch.is_empty() {
                return Ok(output);
            }
            let mut inputs = batch.tensors()?;
            if let Some(v) = &self.visual {
                let rows: Vec<(usize, usize)> = in_batch
                    .iter()
                    .map(|&slot| (slot * v.tokens, if cache.pictures[slot] { v.tokens } else { 0 }))
                    .collect();
                inputs.push(batch.visual_table(&rows)?);
            }
            let mut out = self.session.run_with(&inputs, &mut cache.state, Outputs::Named(&outputs)).await?.into_iter();
            let next = out.next().expect("next was asked for");
            let next = next.as_u32().ok_or_else(|| anyhow::anyhow!("the sampler's output is not u32"))?;
            for (&id, &slot) in next.iter().zip(&in_batch) {
                output.next[slot] = Some(id);
            }
            if reads.logits {
                let logits = out.next().expect("logits were asked for");
                for (row, &slot) in logits.to_f32().chunks_exact(vocab).zip(&in_batch) {
                    output.logits[slot] = row.to_vec();
                }
            }
            if reads.hidden {
                let hidden = out.next().expect("hidden was asked for");
                for (row, &slot) in hidden.to_f32().chunks_exact(self.config.d_model).zip(&in_batch) {
                    output.hidden[slot] = row.to_vec();
                }
            }
        }
    }

    /// Generates after `request.prompt_ids` in slot 0 of `seq` (which may already hold a
    /// prefix of the prompt: only the rest is run), calling `on_text` with each piece of text as it
    /// completes.
    pub fn generate(
        &self,
        seq: &mut KvCache,
        request: &GenerateRequest,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<Generation> {
        let mut decoding = Decoding::start(self, seq, request)?;
        while !decoding.is_finished() {
            let piece = decoding.step(seq)?;
            if !piece.is_empty() {
                on_text(&piece)?;
            }
        }
        Ok(decoding.into_generation())
    }
}

/// A generation in progress, one model run per [`Decoding::step`]: the caller owns the loop,
/// so that it can stream each piece as it likes, stop early, or await between steps (a
/// browser page must, to stay responsive). [`Llm::generate`] is the plain loop.
pub struct Decoding<'a> {
    llm: &'a Llm,
    sampler: Sampler,
    max_tokens: usize,
    ignore_eos: bool,
    top_logits: usize,
    /// What the next run feeds each slot (only slot 0 is used) and how it samples.
    feeds: Vec<Vec<u32>>,
    rows: Vec<SampleRow>,
    text_stream: tokenizer::TextStream<'a>,
    ids: Vec<u32>,
    text: String,
    finish: Option<Finish>,
    first_top: Vec<(u32, f32)>,
    started: Instant,
    prefill: Duration,
    decode_started: Option<Instant>,
    decode_steps: usize,
}

impl<'a> Decoding<'a> {
    /// Checks the request against `seq`'s room and prepares the prompt's run (reusing the
    /// prefix `seq` already holds, but always running at least the prompt's last token).
    pub fn start(llm: &'a Llm, seq: &mut KvCache, request: &GenerateRequest) -> Result<Self> {
        let prompt = &request.prompt_ids;
        if prompt.is_empty() {
            bail!("the prompt is empty");
        }
        if request.max_tokens == 0 {
            bail!("max tokens must be at least 1");
        }
        // Tokens the cache must hold: the prompt and every generated token but the last.
        let needed = prompt.len() + request.max_tokens - 1;
        if needed > seq.capacity {
            bail!(
                "the prompt ({} tokens) and {} new tokens need {} positions, more than the {} there are \
                 (the model's context is {})",
                prompt.len(),
                request.max_tokens,
                needed + 1,
                seq.capacity,
                llm.config.context
            );
        }
        let mut sampler = Sampler::new(request.sampling)?;
        sampler.observe(prompt);
        let shared = seq.cached[0].iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        seq.truncate(0, shared);
        let mut feeds = vec![Vec::new(); seq.slots()];
        let mut rows = vec![SampleRow::greedy(); seq.slots()];
        feeds[0] = prompt[shared..].to_vec();
        rows[0] = sampler.next_row();
        Ok(Decoding {
            llm,
            sampler,
            max_tokens: request.max_tokens,
            ignore_eos: request.ignore_eos,
            top_logits: request.top_logits,
            feeds,
            rows,
            text_stream: llm.tokenizer.stream(),
            ids: Vec::new(),
            text: String::new(),
            finish: None,
            first_top: Vec::new(),
            started: Instant::now(),
            prefill: Duration::ZERO,
            decode_started: None,
            decode_steps: 0,
        })
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Ids generated so far (with the end-of-generation token once it came).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Runs the model once and returns the text the new token completes (often empty inside
    /// a multi-byte character, and empty for the end-of-generation token).
    pub fn step(&mut self, seq: &mut KvCache) -> Result<String> {
        self.check_running()?;
        let out = self.llm.step_batch(seq, &self.feeds, &self.rows, self.wants_logits())?;
        self.take(out)
    }

    /// [`Decoding::step`] for callers that await (the browser).
    pub async fn step_async(&mut self, seq: &mut KvCache) -> Result<String> {
        self.check_running()?;
        let reads = Reads { logits: self.wants_logits(), hidden: false };
        let out = self.llm.step_batch_reading_async(seq, &self.feeds, &self.rows, reads).await?;
        self.take(out)
    }

    /// The finished generation (or what there is of it, when the caller stopped early: its
    /// finish is then `Length`).
    pub fn into_generation(self) -> Generation {
        let decode = self.decode_started.map_or(Duration::ZERO, |t| t.elapsed());
        Generation {
            ids: self.ids,
            text: self.text,
            finish: self.finish.unwrap_or(Finish::Length),
            first_top: self.first_top,
            prefill: self.prefill,
            decode,
            decode_steps: self.decode_steps,
        }
    }

    fn check_running(&self) -> Result<()> {
        if self.finish.is_some() {
            bail!("the generation has finished");
        }
        Ok(())
    }

    /// Only the prompt's run reads logits, and only when the top ones are asked for.
    fn wants_logits(&self) -> bool {
        self.ids.is_empty() && self.top_logits > 0
    }

    /// Takes the run's token: records it, decides whether to stop, prepares the next run.
    fn take(&mut self, out: StepOutput) -> Result<String> {
        if self.ids.is_empty() {
            self.prefill = self.started.elapsed();
            self.first_top = top_logits(&out.logits[0], self.top_logits);
            self.decode_started = Some(Instant::now());
        } else {
            self.decode_steps += 1;
        }
        let id = out.next[0].expect("slot 0 ran");
        self.ids.push(id);
        self.sampler.observe(&[id]);
        if !self.ignore_eos && self.llm.tokenizer.is_end_of_generation(id) {
            self.finish = Some(Finish::EndOfGeneration);
            return Ok(String::new());
        }
        let piece = self.text_stream.push(id)?;
        self.text.push_str(&piece);
        if self.ids.len() == self.max_tokens {
            self.finish = Some(Finish::Length);
        } else {
            self.feeds[0] = vec![id];
            self.rows[0] = self.sampler.next_row();
        }
        Ok(piece)
    }
}
