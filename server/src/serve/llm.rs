//! The decoder behind OpenAI's `POST /v1/chat/completions` and `POST /v1/completions`
//! (streamed as server-sent events or whole), `GET /v1/models`, and `POST /grade`.
//!
//! Requests become jobs of the [continuous-batching scheduler](tandem_models::llm::scheduler),
//! which runs on its own thread; handlers only parse, tokenize, submit and relay events. The
//! `n` choices of a request (and the items of a grading request) are submitted together, so
//! their common prompt prefix is computed once. A client that goes away closes its channel,
//! and its sequences leave the batch at the next step.

use super::api::Inputs;
use super::config::LlmConfig;
use super::errors::{ApiError, ErrorKind};
use super::metrics::{Metrics, ShedReason};
use super::routes::AppState;
use anyhow::{Context, Result};
use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tandem_models::BackendChoice;
use tandem_models::llm::grade::{GradeLabel, Grader, esci_labels, item_text};
use tandem_models::llm::sampling::SamplingParams;
use tandem_models::llm::scheduler::{Event, Finish, Job, Refused, Scheduler, SchedulerConfig, Sink, TokenLogprob};
use tandem_models::llm::{Llm, Message};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// Most choices (`n`) one request may ask for.
const MAX_CHOICES: usize = 16;
/// Most alternatives per token (`top_logprobs`), as OpenAI allows.
const MAX_TOP_LOGPROBS: usize = 20;
/// Tokens of a grading rationale.
const REASON_TOKENS: usize = 64;

pub struct LlmService {
    /// The model's name in requests and `/v1/models`.
    pub id: String,
    llm: Arc<Llm>,
    pub scheduler: Scheduler,
    /// ESCI labels with the default instructions, when the vocabulary tells them apart.
    grader: Option<Grader>,
    config: LlmConfig,
    created: u64,
    /// `llm.embed_token`'s id.
    embed_token: Option<u32>,
}

impl LlmService {
    /// Loads `config.model` and starts its scheduler thread.
    pub fn start(config: &LlmConfig) -> Result<(Arc<LlmService>, JoinHandle<()>)> {
        let model = config.model.as_deref().context("llm.model is not set")?;
        let backend: BackendChoice = config.backend.parse().context("llm.backend")?;
        let llm = Arc::new(Llm::open_with_adapter(model, backend, false, config.visual_adapter.as_deref())?);
        let slot_tokens =
            if config.slot_tokens == 0 { llm.config.context } else { config.slot_tokens.min(llm.config.context) };
        let scheduler_config = SchedulerConfig {
            slots: config.slots,
            slot_tokens,
            max_queue: config.max_queue,
            prefill_tokens: config.prefill_tokens,
        };
        let (scheduler, thread) = Scheduler::start(llm.clone(), scheduler_config)?;
        let grader = Grader::new(&llm, esci_labels(), None).ok();
        let id = std::path::Path::new(model)
            .file_stem()
            .filter(|_| model.ends_with(".gguf"))
            .map_or(model.to_string(), |s| s.to_string_lossy().into_owned());
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let embed_token = match &config.embed_token {
            None => None,
            Some(text) => match llm.tokenizer.encode(text)?.as_slice() {
                [id] => Some(*id),
                ids => anyhow::bail!("llm.embed_token {text:?} is {} tokens, not one", ids.len()),
            },
        };
        let service = LlmService { id, llm, scheduler, grader, config: config.clone(), created, embed_token };
        Ok((Arc::new(service), thread))
    }

    pub fn describe(&self) -> String {
        let c = self.scheduler.config();
        let pool = c.slots * c.slot_tokens * self.llm.kv_bytes_per_token();
        format!(
            "{} ({} layers, context {}) on {}; {} sequences of {} tokens (KV pool {} MiB)",
            self.id,
            self.llm.config.layers,
            self.llm.config.context,
            self.llm.backend_name(),
            c.slots,
            c.slot_tokens,
            pool >> 20
        )
    }

    pub fn info(&self) -> Value {
        let c = self.scheduler.config();
        json!({
            "model": self.id,
            "backend": self.llm.backend_name(),
            "context": self.llm.config.context,
            "slots": c.slots,
            "slot_tokens": c.slot_tokens,
            "max_queue": c.max_queue,
            "prefill_tokens": c.prefill_tokens,
        })
    }

    /// Prometheus lines of the scheduler's counters and gauges.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let s = self.scheduler.stats();
        let c = self.scheduler.config();
        let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
        let lines: [(&str, &str, &str, f64); 10] = [
            ("tandem_llm_steps_total", "counter", "Decoder steps run.", load(&s.steps) as f64),
            (
                "tandem_llm_sequence_steps_total",
                "counter",
                "Sum over steps of the sequences in each (÷ steps: mean batch occupancy).",
                load(&s.sequence_steps) as f64,
            ),
            (
                "tandem_llm_prompt_tokens_total",
                "counter",
                "Prompt tokens of admitted sequences.",
                load(&s.prompt_tokens) as f64,
            ),
            (
                "tandem_llm_reused_prompt_tokens_total",
                "counter",
                "Prompt tokens taken from the prefix cache instead of computed.",
                load(&s.reused_prompt_tokens) as f64,
            ),
            ("tandem_llm_generated_tokens_total", "counter", "Tokens generated.", load(&s.generated_tokens) as f64),
            (
                "tandem_llm_cancelled_total",
                "counter",
                "Sequences dropped because their client left.",
                load(&s.cancelled) as f64,
            ),
            (
                "tandem_llm_running",
                "gauge",
                "Sequences in the running batch.",
                s.running.load(Ordering::Relaxed) as f64,
            ),
            ("tandem_llm_queued", "gauge", "Sequences waiting for a KV slot.", s.queued.load(Ordering::Relaxed) as f64),
            (
                "tandem_llm_kv_tokens_used",
                "gauge",
                "Tokens the running sequences hold in the KV pool.",
                s.kv_tokens_used.load(Ordering::Relaxed) as f64,
            ),
            ("tandem_llm_kv_tokens", "gauge", "Tokens the KV pool holds at most.", (c.slots * c.slot_tokens) as f64),
        ];
        for (name, kind, help, value) in lines {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
    }
}

impl LlmService {
    /// Whether a request's `model` names this decoder.
    pub fn is_named(&self, model: Option<&str>) -> bool {
        model == Some(self.id.as_str())
    }

    /// TEI's options an LLM embedding cannot honour, refused rather than ignored.
    pub fn check_embedding_options(&self, direction: Option<&str>, dimensions: Option<usize>) -> Result<(), ApiError> {
        if direction.is_some_and(|d| !d.eq_ignore_ascii_case("right")) {
            return Err(ApiError::invalid("`truncation_direction`: only \"Right\" is supported"));
        }
        if let Some(d) = dimensions
            && d != self.llm.config.d_model
        {
            return Err(ApiError::invalid(format!(
                "`dimensions`: this decoder gives {}-dimensional embeddings only, not {d}",
                self.llm.config.d_model
            )));
        }
        Ok(())
    }

    /// LLM embeddings: the last hidden state of each text's final token (or of
    /// `llm.embed_token`, appended), and the tokens they took. A text over a sequence's room
    /// is a 413 naming it unless `truncate` (its first tokens are kept).
    pub async fn embed(
        &self,
        s: &AppState,
        texts: &[String],
        truncate: bool,
        name: impl Fn(usize) -> String,
    ) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
        let room = self.scheduler.config().slot_tokens;
        let mut jobs = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        for (i, text) in texts.iter().enumerate() {
            let mut ids = self.encode(text)?;
            let extra = usize::from(self.embed_token.is_some());
            if ids.len() + extra > room {
                if !truncate {
                    return Err(ApiError::too_large(format!(
                        "`{}` has {} tokens, more than the {room} a decoder sequence holds here; send \"truncate\": true",
                        name(i),
                        ids.len() + extra
                    )));
                }
                ids.truncate(room - extra);
            }
            ids.extend(self.embed_token);
            if ids.is_empty() {
                return Err(ApiError::invalid(format!("`{}` is empty", name(i))));
            }
            tokens += ids.len();
            jobs.push(GroupJob { want_hidden: true, ..GroupJob::greedy(ids, 0) });
        }
        let vectors = run_group(s, self, jobs).await?.into_iter().map(|r| r.hidden).collect();
        Ok((vectors, tokens))
    }
}

/// Events of one request's jobs, tagged with the choice (or item) they belong to.
type Tagged = (usize, Event);

struct ChoiceSink {
    index: usize,
    tx: mpsc::UnboundedSender<Tagged>,
}

impl Sink for ChoiceSink {
    fn send(&mut self, event: Event) -> bool {
        self.tx.send((self.index, event)).is_ok()
    }
    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

fn service(s: &AppState) -> Result<&Arc<LlmService>, ApiError> {
    s.llm.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, "no decoder is served here (start with --llm NAME)")
    })
}

/// `stop`, `prompt` and `input` take a string or a list of strings.
fn strings(v: Option<Inputs>) -> Vec<String> {
    v.map(Inputs::into_vec).unwrap_or_default()
}

/// What chat and completion requests share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Common {
    model: Option<String>,
    pub(super) max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Inputs>,
    n: Option<usize>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    #[allow(dead_code, reason = "accepted as OpenAI does; nothing here is per user")]
    user: Option<String>,
    // Beyond OpenAI, as llama.cpp's and vLLM's servers take them.
    top_k: Option<usize>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChatRequest {
    pub(super) messages: Vec<ChatMessage>,
    max_completion_tokens: Option<usize>,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    #[serde(flatten)]
    pub(super) common: Common,
}

#[derive(Debug, Deserialize)]
pub(super) struct ChatMessage {
    role: String,
    content: Value,
    #[allow(dead_code, reason = "accepted as OpenAI does; the template does not use it")]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CompletionRequest {
    pub(super) prompt: Inputs,
    pub(super) logprobs: Option<usize>,
    echo: Option<bool>,
    #[serde(flatten)]
    pub(super) common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Chat,
    Completion,
}

/// A checked generation request.
pub(super) struct Plan {
    kind: Kind,
    model: String,
    prompts: Vec<Vec<u32>>,
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    n: usize,
    logprobs: Option<usize>,
    stream: bool,
    include_usage: bool,
    /// The photo every sequence sees (a chat message's image part).
    picture: Option<Arc<[u8]>>,
}

fn seed_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl LlmService {
    fn plan(
        &self,
        kind: Kind,
        common: Common,
        prompts: Vec<Vec<u32>>,
        max_tokens: Option<usize>,
        logprobs: Option<usize>,
    ) -> Result<Plan, ApiError> {
        let limits = PlanLimits {
            id: &self.id,
            slot_tokens: self.scheduler.config().slot_tokens,
            default_max_tokens: self.config.default_max_tokens,
        };
        limits.plan(kind, common, prompts, max_tokens, logprobs)
    }
}

/// What a generation request is checked against: the served model's id, the tokens a
/// sequence holds and the default `max_tokens`. Apart from the service so that the checks
/// run without a model (the `http_bodies` fuzz target).
pub(super) struct PlanLimits<'a> {
    pub(super) id: &'a str,
    pub(super) slot_tokens: usize,
    pub(super) default_max_tokens: usize,
}

impl PlanLimits<'_> {
    pub(super) fn plan(
        &self,
        kind: Kind,
        common: Common,
        prompts: Vec<Vec<u32>>,
        max_tokens: Option<usize>,
        logprobs: Option<usize>,
    ) -> Result<Plan, ApiError> {
        if let Some(model) = &common.model
            && model != self.id
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
                format!("model {model:?} is not served here; this server serves {:?}", self.id),
            ));
        }
        for (name, value) in
            [("presence_penalty", common.presence_penalty), ("frequency_penalty", common.frequency_penalty)]
        {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(format!("`{name}` is not supported (use repetition_penalty)")));
            }
        }
        let n = common.n.unwrap_or(1);
        if n == 0 || n > MAX_CHOICES {
            return Err(ApiError::invalid(format!("`n` must be 1 to {MAX_CHOICES}, not {n}")));
        }
        if logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return Err(ApiError::invalid(format!("at most {MAX_TOP_LOGPROBS} top logprobs per token")));
        }
        let stop = strings(common.stop);
        if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(ApiError::invalid("`stop`: up to 4 non-empty strings of at most 256 bytes"));
        }
        let slot_tokens = self.slot_tokens;
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if longest >= slot_tokens {
            return Err(ApiError::too_large(format!(
                "the prompt has {longest} tokens; at most {} fit a sequence here (llm.slot_tokens = {slot_tokens})",
                slot_tokens - 1
            )));
        }
        let room = slot_tokens - longest;
        let default = match kind {
            Kind::Chat => self.default_max_tokens,
            // OpenAI's default for completions.
            Kind::Completion => 16,
        };
        let max_tokens = max_tokens.unwrap_or(default.min(room));
        if max_tokens == 0 {
            return Err(ApiError::invalid("`max_tokens` must be at least 1"));
        }
        if max_tokens > room {
            // Not `longest + max_tokens`: a client's max_tokens may be anything up to usize::MAX.
            return Err(ApiError::invalid(format!(
                "`max_tokens` is {max_tokens}, but the prompt ({longest} tokens) leaves {room} positions of the \
                 {slot_tokens} a sequence has here (llm.slot_tokens)"
            )));
        }
        let sampling = SamplingParams {
            // OpenAI's default temperature is 1.
            temperature: common.temperature.unwrap_or(1.0),
            top_k: common.top_k.unwrap_or(0),
            top_p: common.top_p.unwrap_or(1.0),
            min_p: common.min_p.unwrap_or(0.0),
            repetition_penalty: common.repetition_penalty.unwrap_or(1.0),
            seed: common.seed.unwrap_or_else(seed_now),
        };
        if !(0.0..=2.0).contains(&sampling.temperature) {
            return Err(ApiError::invalid(format!("`temperature` must be in [0, 2], not {}", sampling.temperature)));
        }
        sampling.check().map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        Ok(Plan {
            kind,
            model: self.id.to_string(),
            prompts,
            max_tokens,
            sampling,
            stop,
            n,
            logprobs,
            stream: common.stream.unwrap_or(false),
            include_usage: common.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
            picture: None,
        })
    }
}

impl LlmService {
    fn encode(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.llm.tokenizer.encode(text).map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e:#}")))
    }

    /// Submits `jobs` together, mapping refusals to HTTP answers.
    fn submit(&self, s: &AppState, jobs: Vec<Job>) -> Result<(), ApiError> {
        self.scheduler.submit(jobs).map_err(|refused| match refused {
            Refused::Full => s.overloaded(
                ShedReason::QueueRequests,
                &format!("overloaded: {} sequences already wait for the decoder; retry later", self.config.max_queue),
            ),
            Refused::Closed => ApiError::shutting_down(),
            Refused::Invalid(e) => ApiError::invalid(e),
        })
    }

    fn token_text(&self, id: u32) -> String {
        self.llm.tokenizer.decode(&[id]).unwrap_or_default()
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(s: &AppState, req: Request) -> Response {
    match chat_inner(s, req).await {
        Ok(r) => r,
        Err(e) => e.into_openai_error(),
    }
}

async fn chat_inner(s: &AppState, req: Request) -> Result<Response, ApiError> {
    let svc = service(s)?.clone();
    let permit = s.admit()?;
    let body: ChatRequest = s.read_json(req).await?;
    let (messages, picture) = chat_messages(&body.messages)?;
    if let Some(photo) = &picture {
        if !svc.llm.sees_pictures() {
            return Err(ApiError::invalid(
                "this model has no visual adapter, so messages cannot carry images (serve with --llm-visual-adapter)",
            ));
        }
        // Decoding a large photo takes tens of milliseconds: off the async threads.
        let bytes = photo.clone();
        tokio::task::spawn_blocking(move || tandem_models::vision::decode::decode_rgb8(&bytes).map(drop))
            .await
            .map_err(|e| ApiError::backend(format!("decoding the image: {e}")))?
            .map_err(|e| ApiError::invalid(format!("the image_url part's image: {e}")))?;
    }
    let prompt = svc.llm.chat_prompt(&messages).map_err(|e| ApiError::invalid(format!("{e:#}")))?;
    let ids = svc.encode(&prompt)?;
    let (max_tokens, logprobs) = body.options()?;
    let mut plan = svc.plan(Kind::Chat, body.common, vec![ids], max_tokens, logprobs)?;
    plan.picture = picture.map(Arc::from);
    generate(s, svc, plan, permit, None).await
}

impl ChatRequest {
    /// `max_tokens` (`max_completion_tokens` first) and the top logprobs asked for.
    pub(super) fn options(&self) -> Result<(Option<usize>, Option<usize>), ApiError> {
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (true, k) => Some(k.unwrap_or(0)),
            (false, Some(_)) => return Err(ApiError::invalid("`top_logprobs` needs `logprobs: true`")),
            (false, None) => None,
        };
        Ok((self.max_completion_tokens.or(self.common.max_tokens), logprobs))
    }
}

/// The chat's messages for the template, each role and content checked, and the photo of an
/// `image_url` part (bytes from its data URL; at most one per request, in a user message).
/// The image is not a token of the prompt: a visual adapter shows it to every layer.
pub(super) fn chat_messages(body: &[ChatMessage]) -> Result<(Vec<Message>, Option<Vec<u8>>), ApiError> {
    if body.is_empty() {
        return Err(ApiError::empty("messages"));
    }
    let mut messages = Vec::with_capacity(body.len());
    let mut picture = None;
    for (i, m) in body.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant") {
            return Err(ApiError::invalid(format!("`messages[{i}].role`: unknown role {:?}", m.role)));
        }
        let role = if m.role == "developer" { "system" } else { m.role.as_str() };
        let bad = |e: String| ApiError::invalid(format!("`messages[{i}].content`: {e}"));
        let (text, image) = message_parts(&m.content).map_err(bad)?;
        if let Some(image) = image {
            if role != "user" {
                return Err(bad(format!("an image is given in a user message, not in a {role} message")));
            }
            if picture.replace(image).is_some() {
                return Err(bad("a request carries one image (the adapter sees one photo per sequence)".into()));
            }
        }
        messages.push(Message::new(role, &text));
    }
    Ok((messages, picture))
}

/// A message's text (a string, or OpenAI's list of parts) and the bytes of its image part.
fn message_parts(content: &Value) -> Result<(String, Option<Vec<u8>>), String> {
    match content {
        Value::String(s) => Ok((s.clone(), None)),
        Value::Array(parts) => {
            let mut text = String::new();
            let mut image = None;
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text").and_then(Value::as_str) {
                        Some(t) => text.push_str(t),
                        None => return Err("a text part without a `text` string".into()),
                    },
                    Some("image_url") => {
                        let url = part.pointer("/image_url/url").and_then(Value::as_str);
                        let url = url.ok_or("an image_url part without `image_url.url`")?;
                        if image.replace(data_url_bytes(url)?).is_some() {
                            return Err("a request carries one image".into());
                        }
                    }
                    kind => return Err(format!("parts are text or image_url, not {kind:?}")),
                }
            }
            Ok((text, image))
        }
        other => Err(format!("expected a string or a list of text and image_url parts, not {other}")),
    }
}

/// The bytes of a `data:image/…;base64,…` URL (the server fetches nothing from elsewhere).
fn data_url_bytes(url: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let Some(rest) = url.strip_prefix("data:") else {
        let shown: String = url.chars().take(40).collect();
        return Err(format!(
            "image_url must be a data URL (data:image/png;base64,…): the server fetches nothing, not {shown:?}"
        ));
    };
    let (header, payload) = rest.split_once(',').ok_or("a data URL without a comma")?;
    let Some(mime) = header.strip_suffix(";base64") else {
        return Err("the image's data URL must be base64 (…;base64,…)".into());
    };
    if !matches!(mime, "image/png" | "image/jpeg" | "image/jpg") {
        return Err(format!("the image must be image/png or image/jpeg, not {mime:?}"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| format!("the image's base64 does not decode: {e}"))
}

/// `POST /v1/completions`.
pub async fn completions(s: &AppState, req: Request) -> Response {
    match completions_inner(s, req).await {
        Ok(r) => r,
        Err(e) => e.into_openai_error(),
    }
}

async fn completions_inner(s: &AppState, req: Request) -> Result<Response, ApiError> {
    let svc = service(s)?.clone();
    let permit = s.admit()?;
    let body: CompletionRequest = s.read_json(req).await?;
    let texts = body.prompt.into_vec();
    s.check_count(texts.len(), "prompt")?;
    let prompts = texts.iter().map(|t| svc.encode(t)).collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ApiError::invalid(format!("`prompt[{i}]` is empty")));
    }
    let echo = body.echo.unwrap_or(false).then_some(texts);
    let max_tokens = body.common.max_tokens;
    let plan = svc.plan(Kind::Completion, body.common, prompts, max_tokens, body.logprobs)?;
    if plan.prompts.len() * plan.n > s.config.server.max_client_batch_size {
        return Err(ApiError::too_large(format!(
            "{} prompts × n = {} choices, more than server.max_client_batch_size ({})",
            plan.prompts.len(),
            plan.prompts.len() * plan.n,
            s.config.server.max_client_batch_size
        )));
    }
    generate(s, svc, plan, permit, echo).await
}

/// One choice as it is built.
#[derive(Default)]
struct Choice {
    text: String,
    tokens: Vec<(u32, TokenLogprob)>,
    finish: Option<Finish>,
    prompt_tokens: usize,
    completion_tokens: usize,
    last_token_at: Option<Instant>,
}

fn finish_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Length => "length",
        Finish::Stop | Finish::EndOfGeneration => "stop",
    }
}

/// Submits the plan's jobs and answers, streamed or whole.
async fn generate(
    s: &AppState,
    svc: Arc<LlmService>,
    plan: Plan,
    permit: OwnedSemaphorePermit,
    echo: Option<Vec<String>>,
) -> Result<Response, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut jobs = Vec::with_capacity(plan.prompts.len() * plan.n);
    for prompt in &plan.prompts {
        for _ in 0..plan.n {
            let index = jobs.len();
            let mut sampling = plan.sampling;
            // Each choice its own draw, reproducible from the request's seed.
            sampling.seed = sampling.seed.wrapping_add(index as u64);
            jobs.push(Job {
                prompt: prompt.clone(),
                max_tokens: plan.max_tokens,
                sampling,
                stop: plan.stop.clone(),
                logprobs: plan.logprobs,
                ignore_eos: false,
                want_logits: false,
                want_hidden: false,
                picture: plan.picture.clone(),
                sink: Box::new(ChoiceSink { index, tx: tx.clone() }),
            });
        }
    }
    drop(tx);
    let choices = jobs.len();
    svc.submit(s, jobs)?;
    let relay = Relay {
        svc,
        metrics: s.metrics.clone(),
        rx,
        choices: (0..choices).map(|_| Choice::default()).collect(),
        open: choices,
        started: Instant::now(),
        id: format!("{}-{:x}", if plan.kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, seed_now()),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        plan,
        echo,
        _permit: permit,
    };
    if relay.plan.stream { Ok(relay.stream()) } else { relay.collect().await }
}

/// Relays one request's events to its client, keeping its admission slot while it runs.
struct Relay {
    svc: Arc<LlmService>,
    metrics: Arc<Metrics>,
    rx: mpsc::UnboundedReceiver<Tagged>,
    choices: Vec<Choice>,
    open: usize,
    started: Instant,
    id: String,
    created: u64,
    plan: Plan,
    echo: Option<Vec<String>>,
    _permit: OwnedSemaphorePermit,
}

enum Next {
    Token { index: usize, id: u32, text: String, logprob: Option<TokenLogprob> },
    Done { index: usize },
    Failed(String),
    End,
}

impl Relay {
    async fn next(&mut self) -> Next {
        let Some((index, event)) = self.rx.recv().await else {
            return if self.open == 0 {
                Next::End
            } else {
                Next::Failed("the decoder stopped before answering".into())
            };
        };
        let choice = &mut self.choices[index];
        match event {
            Event::Token { id, text, logprob } => {
                let now = Instant::now();
                match choice.last_token_at {
                    None => self.metrics.observe_llm_first_token(now - self.started),
                    Some(at) => self.metrics.observe_llm_inter_token(now - at),
                }
                choice.last_token_at = Some(now);
                choice.text.push_str(&text);
                if let Some(lp) = &logprob {
                    choice.tokens.push((id, lp.clone()));
                }
                Next::Token { index, id, text, logprob }
            }
            Event::Done { finish, prompt_tokens, completion_tokens, .. } => {
                choice.finish = Some(finish);
                choice.prompt_tokens = prompt_tokens;
                choice.completion_tokens = completion_tokens;
                self.open -= 1;
                Next::Done { index }
            }
            Event::Failed(e) => Next::Failed(e),
        }
    }

    fn usage(&self) -> Value {
        // Each prompt counts once, whatever `n`.
        let prompt: usize = self.choices.iter().step_by(self.plan.n).map(|c| c.prompt_tokens).sum();
        let completion: usize = self.choices.iter().map(|c| c.completion_tokens).sum();
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    fn chat_logprobs(&self, tokens: &[(u32, TokenLogprob)]) -> Value {
        let entry = |id: u32, lp: f32| {
            let token = self.svc.token_text(id);
            json!({"token": token, "logprob": lp, "bytes": token.as_bytes()})
        };
        let content: Vec<Value> = tokens
            .iter()
            .map(|(id, lp)| {
                let mut e = entry(*id, lp.logprob);
                e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
                e
            })
            .collect();
        json!({ "content": content })
    }

    /// The legacy completions shape: tokens, their logprobs, the alternatives, offsets.
    fn completion_logprobs(&self, tokens: &[(u32, TokenLogprob)]) -> Value {
        let mut offset = 0;
        let (mut texts, mut lps, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, lp) in tokens {
            let text = self.svc.token_text(*id);
            offsets.push(offset);
            offset += text.len();
            texts.push(text);
            lps.push(lp.logprob);
            let top: serde_json::Map<String, Value> =
                lp.top.iter().map(|&(t, l)| (self.svc.token_text(t), json!(l))).collect();
            tops.push(Value::Object(top));
        }
        json!({"tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
    }

    async fn collect(mut self) -> Result<Response, ApiError> {
        loop {
            match self.next().await {
                Next::Failed(e) => {
                    self.metrics.observe_backend_error();
                    return Err(ApiError::backend(e));
                }
                Next::End => break,
                Next::Token { .. } | Next::Done { .. } => {
                    if self.open == 0 {
                        break;
                    }
                }
            }
        }
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let finish = c.finish.as_ref().map(finish_reason);
                let logprobs = self.plan.logprobs.is_some();
                match self.plan.kind {
                    Kind::Chat => json!({
                        "index": index,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": if logprobs { self.chat_logprobs(&c.tokens) } else { Value::Null },
                        "finish_reason": finish,
                    }),
                    Kind::Completion => {
                        let echoed = self.echo.as_ref().map(|p| p[index / self.plan.n].clone()).unwrap_or_default();
                        json!({
                            "index": index,
                            "text": echoed + &c.text,
                            "logprobs": if logprobs { self.completion_logprobs(&c.tokens) } else { Value::Null },
                            "finish_reason": finish,
                        })
                    }
                }
            })
            .collect();
        let object = if self.plan.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
        Ok(Json(json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.plan.model,
            "choices": choices,
            "usage": self.usage(),
        }))
        .into_response())
    }

    /// A chunk of the stream for `index`.
    fn chunk(&self, index: usize, delta: Value, logprobs: Value, finish: Option<&Finish>) -> String {
        let finish = finish.map(finish_reason);
        let choice = match self.plan.kind {
            Kind::Chat => json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}),
            Kind::Completion => json!({
                "index": index,
                "text": delta.get("content").cloned().unwrap_or(json!("")),
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
        };
        let object = if self.plan.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.plan.model, "choices": [choice]})
            .to_string()
    }

    /// Server-sent events: a chunk per token piece, a last chunk per choice with its finish
    /// reason, the usage when asked for, then `[DONE]`.
    fn stream(self) -> Response {
        let mut pending: VecDeque<String> = VecDeque::new();
        for index in 0..self.choices.len() {
            let first = match (self.plan.kind, &self.echo) {
                (Kind::Chat, _) => Some(json!({"role": "assistant", "content": ""})),
                (Kind::Completion, Some(p)) => Some(json!({"content": p[index / self.plan.n]})),
                (Kind::Completion, None) => None,
            };
            if let Some(delta) = first {
                pending.push_back(self.chunk(index, delta, Value::Null, None));
            }
        }
        let events =
            futures_util::stream::unfold((self, pending, false), |(mut relay, mut pending, mut ended)| async move {
                loop {
                    if let Some(data) = pending.pop_front() {
                        return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), (relay, pending, ended)));
                    }
                    if ended {
                        return None;
                    }
                    match relay.next().await {
                        Next::Token { index, id, text, logprob } => {
                            let logprobs = match &logprob {
                                None => Value::Null,
                                Some(lp) if relay.plan.kind == Kind::Chat => relay.chat_logprobs(&[(id, lp.clone())]),
                                Some(lp) => relay.completion_logprobs(&[(id, lp.clone())]),
                            };
                            if !text.is_empty() || !logprobs.is_null() {
                                pending.push_back(relay.chunk(index, json!({"content": text}), logprobs, None));
                            }
                        }
                        Next::Done { index } => {
                            let finish = relay.choices[index].finish.clone();
                            pending.push_back(relay.chunk(index, json!({}), Value::Null, finish.as_ref()));
                        }
                        Next::Failed(e) => {
                            relay.metrics.observe_backend_error();
                            let error = json!({"error": {"message": e, "type": "backend", "code": 424}});
                            pending.push_back(error.to_string());
                            pending.push_back("[DONE]".into());
                            ended = true;
                        }
                        Next::End => {
                            if relay.plan.include_usage {
                                let usage = json!({
                                    "id": relay.id, "object": "chat.completion.chunk", "created": relay.created,
                                    "model": relay.plan.model, "choices": [], "usage": relay.usage(),
                                });
                                pending.push_back(usage.to_string());
                            }
                            pending.push_back("[DONE]".into());
                            ended = true;
                        }
                    }
                }
            });
        Sse::new(events).keep_alive(KeepAlive::default()).into_response()
    }
}

/// `GET /v1/models`: the decoder, and the embedding model `/v1/embeddings` serves.
pub async fn models(s: &AppState) -> Response {
    let mut data = Vec::new();
    if let Some(svc) = &s.llm {
        data.push(json!({"id": svc.id, "object": "model", "created": svc.created, "owned_by": "tandem"}));
    }
    data.push(json!({"id": s.model.id, "object": "model", "created": 0, "owned_by": "tandem"}));
    Json(json!({"object": "list", "data": data})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GradeRequest {
    query: String,
    pub(super) items: Vec<Value>,
    beta: Option<f32>,
    labels: Option<Vec<GradeLabel>>,
    instructions: Option<String>,
    #[serde(default)]
    reason: bool,
}

/// `POST /grade`: each item's label distribution, expected grade and CumPT tier, from one
/// prefill per item with the query's prefix computed once.
pub async fn grade(s: &AppState, req: Request) -> Response {
    match grade_inner(s, req).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn grade_inner(s: &AppState, req: Request) -> Result<Value, ApiError> {
    let svc = service(s)?.clone();
    let _permit = s.admit()?;
    let body: GradeRequest = s.read_json(req).await?;
    let max_items = s.config.relevance.max_items;
    if body.items.is_empty() {
        return Err(ApiError::empty("items"));
    }
    if body.items.len() > max_items {
        return Err(ApiError::too_large(format!(
            "`items` has {} items, more than relevance.max_items ({max_items})",
            body.items.len()
        )));
    }
    let beta = body.beta.unwrap_or(svc.config.grade_beta);
    if !(beta > 0.0 && beta <= 1.0) {
        return Err(ApiError::invalid(format!("`beta` must be in (0, 1], not {beta}")));
    }
    let grader = match (body.labels, &body.instructions, &svc.grader) {
        (None, None, Some(g)) => g.clone(),
        (labels, instructions, _) => Grader::new(&svc.llm, labels.unwrap_or_else(esci_labels), instructions.as_deref())
            .map_err(|e| ApiError::invalid(format!("{e:#}")))?,
    };
    let mut prompts = Vec::with_capacity(body.items.len());
    for (i, item) in body.items.iter().enumerate() {
        let text = item_text(item).map_err(|e| ApiError::invalid(format!("`items[{i}]`: {e:#}")))?;
        let prompt = grader.prompt(&svc.llm, &body.query, &text).map_err(|e| ApiError::invalid(format!("{e:#}")))?;
        prompts.push(prompt);
    }
    let jobs = prompts.iter().map(|p| GroupJob { want_logits: true, ..GroupJob::greedy(p.clone(), 0) }).collect();
    let logits = run_group(s, &svc, jobs).await?;
    let mut items = Vec::with_capacity(prompts.len());
    for (index, l) in logits.iter().enumerate() {
        let g = grader.grade(&l.logits, beta).map_err(|e| ApiError::backend(format!("{e:#}")))?;
        let probabilities: serde_json::Map<String, Value> =
            g.probabilities.iter().map(|(label, p)| (label.clone(), json!(p))).collect();
        items.push(json!({
            "index": index,
            "probabilities": probabilities,
            "expected_grade": g.expected_grade,
            "tier": g.tier,
            "label_mass": g.label_mass,
        }));
    }
    if body.reason {
        // The rationale after the most likely label, greedily.
        let with_label: Vec<Vec<u32>> = prompts
            .iter()
            .zip(&items)
            .map(|(p, item)| {
                let best = item["probabilities"]
                    .as_object()
                    .and_then(|m| {
                        m.iter().max_by(|a, b| a.1.as_f64().unwrap_or(0.0).total_cmp(&b.1.as_f64().unwrap_or(0.0)))
                    })
                    .map(|(label, _)| label.clone())
                    .unwrap_or_default();
                let mut p = p.clone();
                p.extend(grader.token_of(&best));
                p
            })
            .collect();
        let jobs = with_label.into_iter().map(|p| GroupJob::greedy(p, REASON_TOKENS)).collect();
        let reasons = run_group(s, &svc, jobs).await?;
        for (item, r) in items.iter_mut().zip(reasons) {
            item["reason"] = json!(r.text.trim());
        }
    }
    let labels: Vec<Value> =
        grader.labels().iter().map(|l| json!({"label": l.label, "grade": l.grade, "meaning": l.meaning})).collect();
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    Ok(json!({
        "model": svc.id,
        "query": body.query,
        "beta": beta,
        "labels": labels,
        "items": items,
        "usage": {"prompt_tokens": prompt_tokens},
    }))
}

/// One job of a group run for a handler that waits for all (grading, suggestions).
struct GroupJob {
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    /// Sum the chosen tokens' log-probabilities.
    logprobs: bool,
    /// For `max_tokens` 0: the logits after the prompt.
    want_logits: bool,
    /// For `max_tokens` 0: the last hidden state after the prompt.
    want_hidden: bool,
}

impl GroupJob {
    /// Greedy, up to a blank line.
    fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        let stop = vec!["\n\n".to_string()];
        GroupJob {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop,
            logprobs: false,
            want_logits: false,
            want_hidden: false,
        }
    }
}

/// What one job of a group gave.
#[derive(Default)]
struct GroupResult {
    logits: Vec<f32>,
    hidden: Vec<f32>,
    text: String,
    /// Σ log p of the generated tokens (with `logprobs`).
    logprob: f64,
    tokens: usize,
}

/// Runs `jobs` as one group (their common prompt prefix computed once) and waits for all.
async fn run_group(s: &AppState, svc: &LlmService, jobs: Vec<GroupJob>) -> Result<Vec<GroupResult>, ApiError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let count = jobs.len();
    let jobs = jobs
        .into_iter()
        .enumerate()
        .map(|(index, j)| Job {
            prompt: j.prompt,
            max_tokens: j.max_tokens,
            sampling: j.sampling,
            stop: j.stop,
            logprobs: j.logprobs.then_some(0),
            ignore_eos: false,
            want_logits: j.want_logits,
            want_hidden: j.want_hidden,
            picture: None,
            sink: Box::new(ChoiceSink { index, tx: tx.clone() }),
        })
        .collect();
    drop(tx);
    svc.submit(s, jobs)?;
    let mut results: Vec<GroupResult> = (0..count).map(|_| GroupResult::default()).collect();
    let mut open = count;
    while open > 0 {
        match rx.recv().await {
            Some((i, Event::Token { text, logprob, .. })) => {
                let r = &mut results[i];
                r.text.push_str(&text);
                r.logprob += logprob.map_or(0.0, |l| l.logprob as f64);
                r.tokens += 1;
            }
            Some((i, Event::Done { logits, hidden, .. })) => {
                results[i].logits = logits;
                results[i].hidden = hidden;
                open -= 1;
            }
            Some((_, Event::Failed(e))) => {
                s.metrics.observe_backend_error();
                return Err(ApiError::backend(e));
            }
            None => return Err(ApiError::backend("the decoder stopped before answering")),
        }
    }
    Ok(results)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SuggestRequest {
    /// The user's recent queries, oldest first.
    queries: Option<Vec<String>>,
    /// A trigger query (what is typed now).
    query: Option<String>,
    n: Option<usize>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    /// "sample" (n candidates in one batch, ranked by their log-probability) or "list" (one
    /// greedy answer asking for a JSON list of n queries).
    mode: Option<String>,
    instructions: Option<String>,
}

/// Candidates one `/suggest` may sample.
const MAX_SUGGESTIONS: usize = 16;

/// A suggestion's key for de-duplication: lower case, no quotes, list marks, end
/// punctuation or repeated spaces.
fn normalize_query(text: &str) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let trimmed = line.trim().trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | ')' | '-' | '*'));
    let trimmed = trimmed.trim().trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | '“' | '”'));
    let trimmed = trimmed.trim_end_matches(['.', '!', '?', ',', ';']);
    trimmed.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// `POST /suggest` (AIGQ's deployment): next-query suggestions from the user's recent queries
/// or a trigger query.
pub async fn suggest(s: &AppState, req: Request) -> Response {
    match suggest_inner(s, req).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn suggest_inner(s: &AppState, req: Request) -> Result<Value, ApiError> {
    let svc = service(s)?.clone();
    let _permit = s.admit()?;
    let body: SuggestRequest = s.read_json(req).await?;
    let recent = body.queries.unwrap_or_default();
    if recent.is_empty() && body.query.as_deref().is_none_or(|q| q.trim().is_empty()) {
        return Err(ApiError::invalid("give `queries` (recent searches) or `query` (a trigger query)"));
    }
    if recent.len() > 32 {
        return Err(ApiError::too_large(format!("`queries` has {} entries; at most 32", recent.len())));
    }
    let n = body.n.unwrap_or(8);
    if n == 0 || n > MAX_SUGGESTIONS {
        return Err(ApiError::invalid(format!("`n` must be 1 to {MAX_SUGGESTIONS}, not {n}")));
    }
    let list = match body.mode.as_deref() {
        None | Some("sample") => false,
        Some("list") => true,
        Some(other) => return Err(ApiError::invalid(format!("`mode` is \"sample\" or \"list\", not {other:?}"))),
    };
    let mut user = String::new();
    if !recent.is_empty() {
        user += &format!("Recent searches, oldest first: {}\n", recent.join("; "));
    }
    if let Some(q) = &body.query {
        user += &format!("Current search: {q}\n");
    }
    user += if list { "Next searches:" } else { "Next search:" };
    let instructions = body.instructions.unwrap_or_else(|| {
        if list {
            format!(
                "You suggest the next searches a shopper is likely to make on a shopping site. Answer with a JSON \
                 list of {n} distinct search queries and nothing else."
            )
        } else {
            "You suggest the next search a shopper is likely to make on a shopping site. Answer with one search \
             query only."
                .to_string()
        }
    });
    let messages = [Message::new("system", &instructions), Message::new("user", &user)];
    let prompt = svc.llm.chat_prompt(&messages).map_err(|e| ApiError::invalid(format!("{e:#}")))?;
    let prompt = svc.encode(&prompt)?;
    let max_tokens = body.max_tokens.unwrap_or(if list { 24 * n } else { 16 });
    let room = svc.scheduler.config().slot_tokens.saturating_sub(prompt.len());
    if max_tokens == 0 || max_tokens > room {
        return Err(ApiError::invalid(format!(
            "`max_tokens` must be 1 to {room} (the prompt has {} tokens of a sequence's {})",
            prompt.len(),
            svc.scheduler.config().slot_tokens
        )));
    }
    let sampling = SamplingParams {
        temperature: body.temperature.unwrap_or(if list { 0.0 } else { 0.8 }),
        top_p: body.top_p.unwrap_or(0.95),
        seed: body.seed.unwrap_or_else(seed_now),
        ..SamplingParams::default()
    };
    sampling.check().map_err(|e| ApiError::invalid(format!("{e:#}")))?;
    let asked: Vec<String> = recent.iter().chain(&body.query).map(|q| normalize_query(q)).collect();
    if list {
        let job = GroupJob { sampling, stop: Vec::new(), ..GroupJob::greedy(prompt.clone(), max_tokens) };
        let answer = run_group(s, &svc, vec![job]).await?.remove(0).text;
        let parsed = answer
            .find('[')
            .zip(answer.rfind(']'))
            .and_then(|(a, b)| serde_json::from_str::<Vec<String>>(&answer[a..=b]).ok())
            .ok_or_else(|| ApiError::backend(format!("the model did not answer a JSON list of strings: {answer:?}")))?;
        let mut seen = std::collections::HashSet::new();
        let suggestions: Vec<Value> = parsed
            .iter()
            .filter(|q| {
                let key = normalize_query(q);
                !key.is_empty() && !asked.contains(&key) && seen.insert(key)
            })
            .map(|q| json!({"text": q.trim()}))
            .collect();
        return Ok(json!({"model": svc.id, "mode": "list", "suggestions": suggestions, "raw": answer}));
    }
    let jobs = (0..n)
        .map(|i| GroupJob {
            sampling: SamplingParams { seed: sampling.seed.wrapping_add(i as u64), ..sampling },
            stop: vec!["\n".into()],
            logprobs: true,
            ..GroupJob::greedy(prompt.clone(), max_tokens)
        })
        .collect();
    let candidates = run_group(s, &svc, jobs).await?;
    // Best log-probability per normalized query; how many samples gave it.
    let mut best: Vec<(String, String, f64, usize)> = Vec::new();
    for c in &candidates {
        let key = normalize_query(&c.text);
        if key.is_empty() || asked.contains(&key) {
            continue;
        }
        match best.iter_mut().find(|b| b.0 == key) {
            Some(b) => {
                b.3 += 1;
                if c.logprob > b.2 {
                    (b.1, b.2) = (c.text.trim().to_string(), c.logprob);
                }
            }
            None => best.push((key, c.text.trim().to_string(), c.logprob, 1)),
        }
    }
    best.sort_by(|a, b| b.2.total_cmp(&a.2));
    let suggestions: Vec<Value> = best
        .into_iter()
        .map(|(_, text, logprob, samples)| json!({"text": text, "logprob": logprob, "samples": samples}))
        .collect();
    Ok(json!({"model": svc.id, "mode": "sample", "candidates": n, "suggestions": suggestions}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `http_bodies` fuzz target: the error message added the prompt's length
    /// to the client's max_tokens, which overflowed (a panic with overflow checks on).
    #[test]
    fn a_huge_max_tokens_is_refused_without_overflow() {
        let body: CompletionRequest =
            super::super::api::parse_json(br#"{"prompt": "x", "max_tokens": 18446744073709551615}"#).unwrap();
        let limits = PlanLimits { id: "m", slot_tokens: 2048, default_max_tokens: 256 };
        let Err(e) = limits.plan(Kind::Completion, body.common, vec![vec![1; 5]], Some(usize::MAX), None) else {
            panic!("planned");
        };
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.message.contains("leaves 2043 positions of the 2048 a sequence has"), "{}", e.message);
    }

    #[test]
    fn suggestions_are_compared_normalized() {
        assert_eq!(normalize_query("  \"Trail Running  Shoes.\"\nmore"), "trail running shoes");
        assert_eq!(normalize_query("1. waterproof jacket!"), "waterproof jacket");
        assert_eq!(normalize_query("- `usb c hub`"), "usb c hub");
        assert_eq!(normalize_query("\n\n"), "");
    }
}
