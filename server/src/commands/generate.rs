//! `tandem generate --model NAME|FILE.gguf [options] PROMPT`: text from a GGUF decoder,
//! streamed to stdout as it is generated, or one JSON object with the ids, the text, why it
//! stopped, the best first-position logits and the speed (`--json`).
//!
//! `tandem chat --model …`: the same model in an interactive loop; the conversation goes
//! through the chat template each turn and the cached prefix is reused.

use anyhow::{Result, bail};
use std::io::{BufRead, Write};
use tandem_models::BackendChoice;
use tandem_models::llm::sampling::SamplingParams;
use tandem_models::llm::{GenerateRequest, Llm, Message};

/// Tokens generated when `--max-tokens` is not given (fewer when the context ends first).
const DEFAULT_MAX_TOKENS: usize = 256;

/// The model and where it runs; shared by `generate` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A known model (smollm2, qwen2.5-coder-0.5b; fetched on first use) or a GGUF file.
    #[arg(long, value_name = "NAME|FILE.gguf")]
    model: String,
    /// cpu, wgpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// On the CPU, f32 products with the weights dequantized and an f32 KV cache
    /// (transformers' numbers, slower) instead of 8-bit activations, integer dot products and
    /// an f16 cache (llama.cpp's way). GPUs always compute in f32, over an f16 cache.
    #[arg(long)]
    exact: bool,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Llm> {
        self.load_with(None)
    }

    /// The model with a visual adapter folder, when given.
    fn load_with(&self, adapter: Option<&std::path::Path>) -> Result<Llm> {
        let llm = Llm::open_with_adapter(&self.model, self.backend, self.exact, adapter)?;
        eprintln!(
            "model: {} ({} layers, width {}, context {}) on {}",
            self.model,
            llm.config.layers,
            llm.config.d_model,
            llm.config.context,
            llm.backend_name()
        );
        Ok(llm)
    }
}

/// How tokens are chosen; shared by `generate` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate [default: 256, or what the context leaves].
    #[arg(long)]
    max_tokens: Option<usize>,
    /// 0 is greedy (the default).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample from the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample from the most likely tokens whose probability reaches p (1: all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than min-p × the best one's probability.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalty on tokens already seen (1: none).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed of the sampler (the same seed gives the same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
}

impl SamplingArgs {
    fn params(&self) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        };
        p.check()?;
        Ok(p)
    }
}

/// What one completion prints; shared by `generate` and `describe`.
#[derive(clap::Args)]
pub struct OutputArgs {
    /// With --json: the K best [id, logit] at the first generated position.
    #[arg(long, value_name = "K", default_value_t = 0)]
    top_logits: usize,
    /// Keep the prompt's last tokens when it does not fit the context with --max-tokens
    /// (else that is an error).
    #[arg(long)]
    truncate: bool,
    /// One JSON object instead of streamed text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Tokenize the prompt as it is (special tokens parsed) instead of as one user message
    /// through the chat template.
    #[arg(long)]
    raw: bool,
    /// A system message before the prompt (instead of the template's default one).
    #[arg(long, conflicts_with = "raw")]
    system: Option<String>,
    /// The prompt.
    prompt: String,
}

pub fn run(args: Args) -> Result<()> {
    args.sampling.params()?;
    args.output.check()?;
    let llm = args.model.load()?;
    let text =
        if args.raw { args.prompt.clone() } else { llm.chat_prompt(&user_turn(args.system.as_deref(), &args.prompt))? };
    complete(&llm, &text, None, &args.sampling, &args.output)
}

/// `tandem describe IMAGE --model smollm2 --adapter DIR [--prompt TEXT]`: what a decoder
/// with a visual adapter says about a photo. The prompt is one user message through the
/// chat template, as without a picture; the picture enters through the adapter.
#[derive(clap::Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// The visual adapter's folder (adapter_config.json + adapter.safetensors).
    #[arg(long, value_name = "DIR")]
    adapter: std::path::PathBuf,
    /// What to ask about the photo.
    #[arg(long, default_value = "Describe this product.")]
    prompt: String,
    /// A system message before the prompt (instead of the template's default one).
    #[arg(long)]
    system: Option<String>,
    /// The photo (PNG or JPEG).
    image: std::path::PathBuf,
}

pub fn run_describe(args: DescribeArgs) -> Result<()> {
    args.sampling.params()?;
    args.output.check()?;
    let photo = std::fs::read(&args.image).map_err(|e| anyhow::anyhow!("{}: {e}", args.image.display()))?;
    // A bad photo is found before the models load.
    tandem_models::vision::decode::decode_rgb8(&photo).map_err(|e| anyhow::anyhow!("{}: {e}", args.image.display()))?;
    let llm = args.model.load_with(Some(&args.adapter))?;
    let text = llm.chat_prompt(&user_turn(args.system.as_deref(), &args.prompt))?;
    complete(&llm, &text, Some(&photo), &args.sampling, &args.output)
}

/// One user message, after a system message when one is given.
fn user_turn(system: Option<&str>, prompt: &str) -> Vec<Message> {
    let system = system.map(|s| Message::new("system", s));
    system.into_iter().chain([Message::new("user", prompt)]).collect()
}

impl OutputArgs {
    fn check(&self) -> Result<()> {
        if self.top_logits > 1000 {
            bail!("--top-logits is at most 1000, not {}", self.top_logits);
        }
        Ok(())
    }
}

/// Generates after `text` (seeing `picture` when given) and prints as `out` says.
fn complete(
    llm: &Llm,
    text: &str,
    picture: Option<&[u8]>,
    sampling_args: &SamplingArgs,
    out: &OutputArgs,
) -> Result<()> {
    let sampling = sampling_args.params()?;
    let mut prompt_ids = llm.tokenizer.encode(text)?;
    let context = llm.config.context;
    let max_tokens = match sampling_args.max_tokens {
        Some(n) => n,
        None => DEFAULT_MAX_TOKENS.min(context.saturating_sub(prompt_ids.len())).max(1),
    };
    if max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    if max_tokens >= context {
        bail!("--max-tokens {max_tokens} leaves no room for the prompt in the model's context of {context}");
    }
    if prompt_ids.len() + max_tokens > context {
        if !out.truncate {
            bail!(
                "the prompt is {} tokens; with --max-tokens {max_tokens} it needs {} positions, over the model's \
                 context of {context} (pass --truncate to keep its last {} tokens)",
                prompt_ids.len(),
                prompt_ids.len() + max_tokens,
                context - max_tokens
            );
        }
        prompt_ids.drain(..prompt_ids.len() + max_tokens - context);
    }
    let request = GenerateRequest {
        prompt_ids,
        max_tokens,
        sampling,
        ignore_eos: sampling_args.ignore_eos,
        top_logits: out.top_logits,
    };
    let mut seq = llm.new_sequence(request.prompt_ids.len() + max_tokens)?;
    // The picture's run (encoder, adapters, visual keys and values), once per sequence.
    let started = std::time::Instant::now();
    if let Some(photo) = picture {
        llm.show_picture(&mut seq, 0, photo)?;
    }
    let picture_ms = picture.map(|_| started.elapsed().as_secs_f64() * 1e3);
    let mut stdout = std::io::stdout().lock();
    let streaming = !out.json;
    let generation = llm.generate(&mut seq, &request, &mut |piece| {
        if streaming {
            stdout.write_all(piece.as_bytes())?;
            stdout.flush()?;
        }
        Ok(())
    })?;
    let per_second = |n: usize, t: std::time::Duration| {
        if t.is_zero() { serde_json::Value::Null } else { (n as f64 / t.as_secs_f64()).into() }
    };
    if out.json {
        let mut line = serde_json::json!({
            "prompt_ids": request.prompt_ids,
            "ids": generation.ids,
            "text": generation.text,
            "finish": generation.finish.name(),
            "first_top": generation.first_top,
            "prefill_tokens_per_s": per_second(request.prompt_ids.len(), generation.prefill),
            "decode_tokens_per_s": per_second(generation.decode_steps, generation.decode),
            "backend": llm.backend_name(),
            "kv_cache_bytes": seq.cache_bytes(),
            "kv_cache_dtype": llm.kv_cache_dtype().to_string(),
            "kv_cache_bytes_per_token": llm.kv_bytes_per_token(),
        });
        if let Some(ms) = picture_ms {
            line["picture_ms"] = ms.into();
        }
        serde_json::to_writer(&mut stdout, &line)?;
    }
    writeln!(stdout)?;
    eprintln!(
        "{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s ({})",
        request.prompt_ids.len(),
        per_second(request.prompt_ids.len(), generation.prefill).as_f64().unwrap_or(0.0),
        generation.ids.len(),
        per_second(generation.decode_steps, generation.decode).as_f64().unwrap_or(0.0),
        generation.finish.name()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A system message (instead of the template's default one).
    #[arg(long)]
    system: Option<String>,
    /// Tokens of conversation the KV cache holds (at most the model's context).
    #[arg(long, default_value_t = 4096)]
    context: usize,
}

/// Reads a user turn per line from stdin and streams each answer; an empty line or end of
/// input ends the chat.
pub fn run_chat(args: ChatArgs) -> Result<()> {
    let sampling = args.sampling.params()?;
    let llm = args.model.load()?;
    let capacity = args.context.min(llm.config.context);
    let mut seq = llm.new_sequence(capacity)?;
    let mut messages: Vec<Message> = args.system.iter().map(|s| Message::new("system", s)).collect();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!("chat: one message per line; an empty line ends it");
    for (turn, line) in stdin.lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            break;
        }
        messages.push(Message::new("user", &line));
        let prompt_ids = llm.tokenizer.encode(&llm.chat_prompt(&messages)?)?;
        let room = capacity.saturating_sub(prompt_ids.len());
        if room < 2 {
            bail!("the conversation ({} tokens) has filled the chat's context of {capacity}", prompt_ids.len());
        }
        let max_tokens = args.sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).min(room);
        let request = GenerateRequest {
            prompt_ids,
            max_tokens,
            sampling: SamplingParams { seed: sampling.seed.wrapping_add(turn as u64), ..sampling },
            ignore_eos: false,
            top_logits: 0,
        };
        let generation = llm.generate(&mut seq, &request, &mut |piece| {
            stdout.write_all(piece.as_bytes())?;
            stdout.flush()?;
            Ok(())
        })?;
        writeln!(stdout)?;
        messages.push(Message::new("assistant", &generation.text));
    }
    Ok(())
}
