//! The HTTP API: handlers, the shared state they use, and the request accounting around
//! them.
//!
//! Every inference request goes: admission (a slot out of `max_queue_requests`, else shed at
//! once, before the body is even read) → body (bounded in bytes and time) → JSON → limits →
//! tokenization, once per text (on the blocking pool, never on a tokio worker) → the
//! batcher's queue of token ids (bounded in tokens) → one forward pass on the model thread →
//! reply.

use super::api::{self, EmbedRequest, OpenAiRequest, OpenAiResponse, Rank, RerankRequest};
use super::batcher::{EmbedBatcher, Refused};
use super::config::Config;
use super::errors::{ApiError, ErrorKind};
use super::metrics::{CLIENT_CLOSED, Gauges, Metrics, ShedReason};
use super::relevance::{Cancel, EncodeRefused, Relevance, RelevanceRequest};
use super::web::Web;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tandem_models::embed::cosine;
use tandem_models::tokenizer::TokenizedText;
use tandem_models::{Embedder, TextRole};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What `/info` and the handlers need to know about the embedding model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub id: String,
    pub dim: usize,
    pub max_tokens: usize,
    /// The graph ends in an L2 normalization.
    pub normalizes: bool,
    pub pooling: String,
    pub dtype: String,
    pub backend: String,
}

pub struct AppState {
    pub config: Config,
    pub model: ModelInfo,
    /// None when `relevance.enabled` is false.
    pub relevance: Option<Arc<Relevance>>,
    /// The in-browser demo; None when `web.enabled` is false.
    pub web: Option<Arc<Web>>,
    /// For tokenizing only; forward passes run on the batcher's thread.
    pub embedder: Arc<Embedder>,
    pub batcher: EmbedBatcher,
    pub admission: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
    /// The decoder; None unless `llm.model` is set.
    pub llm: Option<Arc<super::llm::LlmService>>,
}

type AppRef = State<Arc<AppState>>;

const ROUTES: &[&str] = &[
    "/embed",
    "/v1/embeddings",
    "/rerank",
    "/relevance",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/grade",
    "/suggest",
    "/health",
    "/info",
    "/metrics",
];

pub fn router(state: Arc<AppState>) -> anyhow::Result<axum::Router> {
    let keys = Arc::new(super::access::ApiKeys::new(&state.config.server.api_keys));
    let cors = super::access::cors(&state.config.server.cors_origins)?;
    let router = axum::Router::new()
        .route("/embed", post(embed))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/rerank", post(rerank))
        .route("/relevance", post(relevance))
        .route(
            "/v1/chat/completions",
            post(async |State(s): AppRef, req: Request| super::llm::chat_completions(&s, req).await),
        )
        .route("/v1/completions", post(async |State(s): AppRef, req: Request| super::llm::completions(&s, req).await))
        .route("/v1/models", get(async |State(s): AppRef| super::llm::models(&s).await))
        .route("/grade", post(async |State(s): AppRef, req: Request| super::llm::grade(&s, req).await))
        .route("/suggest", post(async |State(s): AppRef, req: Request| super::llm::suggest(&s, req).await))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read by the handlers (after admission) through this limit.
        .layer(DefaultBodyLimit::max(state.config.server.max_body_bytes))
        // Last line of defence: a panicking handler answers 500 and the server goes on.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(keys, super::access::authorize))
        // Outermost, so that it counts the 500 of a panic and the 401s too.
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state);
    // Around everything: a preflight is answered before it needs a key.
    Ok(match cors {
        Some(cors) => router.layer(cors),
        None => router,
    })
}

impl AppState {
    pub(super) fn overloaded(&self, reason: ShedReason, message: &str) -> ApiError {
        self.metrics.observe_shed(reason);
        let s = &self.config.server;
        let status = StatusCode::from_u16(s.overload_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        ApiError::overloaded(status, s.retry_after_secs, message)
    }

    /// A slot for one inference request, or an immediate refusal. Taken before the body is
    /// read, so a flood of large bodies is refused without buffering them.
    pub(super) fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.admission.clone().try_acquire_owned().map_err(|_| {
            self.overloaded(
                ShedReason::QueueRequests,
                &format!(
                    "overloaded: {} requests are already in progress; retry later",
                    self.config.batching.max_queue_requests
                ),
            )
        })
    }

    pub(super) async fn read_json<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, ApiError> {
        let limit = self.config.server.max_body_bytes;
        let too_large = || ApiError::too_large(format!("the request body is larger than the limit of {limit} bytes"));
        // A declared length over the limit is refused before reading a byte of it.
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let timeout = Duration::from_secs(self.config.server.body_timeout_secs);
        let body = match tokio::time::timeout(timeout, Bytes::from_request(req, &())).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorKind::Validation,
                    format!("the request body took longer than {timeout:?} to arrive"),
                ));
            }
            Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Ok(Err(rejection)) => {
                return Err(ApiError::malformed(format!("cannot read the request body: {}", rejection.body_text())));
            }
            Ok(Ok(body)) => body,
        };
        api::parse_json(&body)
    }

    pub(super) fn check_count(&self, n: usize, field: &str) -> Result<(), ApiError> {
        let max = self.config.server.max_client_batch_size;
        if n == 0 {
            return Err(ApiError::empty(field));
        }
        if n > max {
            return Err(ApiError::too_large(format!(
                "`{field}` has {n} items, more than the limit of {max} (server.max_client_batch_size)"
            )));
        }
        Ok(())
    }

    /// Tokenizes each text once, with the model's prompt for its role (`role` of its index),
    /// truncated at the model's limit, for [`AppState::infer`]; or 413 naming the first text
    /// over the limit when truncation was not asked for. Tokenizing is CPU work: it runs on
    /// the blocking pool, bounded by the admission slots.
    async fn tokenize(
        &self,
        texts: Vec<String>,
        role: impl Fn(usize) -> TextRole + Send + 'static,
        truncate: bool,
        name: impl Fn(usize) -> String,
    ) -> Result<Vec<TokenizedText>, ApiError> {
        let embedder = self.embedder.clone();
        let counted = tokio::task::spawn_blocking(move || {
            texts.iter().enumerate().map(|(i, t)| embedder.tokenize_counted_as(t, role(i))).collect::<Vec<_>>()
        })
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal, format!("tokenizer: {e}"))
        })?;
        let max = self.model.max_tokens;
        let mut tokenized = Vec::with_capacity(counted.len());
        for (i, text) in counted.into_iter().enumerate() {
            let text = text.map_err(|e| ApiError::invalid(format!("`{}`: {e:#}", name(i))))?;
            if !truncate && text.untruncated > max {
                return Err(ApiError::too_large(format!(
                    "`{}` has {} tokens, more than the model's limit of {max}; send \"truncate\": true to truncate it",
                    name(i),
                    text.untruncated
                )));
            }
            tokenized.push(text.tokens);
        }
        Ok(tokenized)
    }

    /// Queues the token ids for a forward pass and waits for their vectors, holding the
    /// admission slot until then. Dropping this future (the client went away) frees the slot
    /// at once and cancels the work if it has not started.
    async fn infer(&self, texts: Vec<TokenizedText>, permit: OwnedSemaphorePermit) -> Result<Vec<Vec<f32>>, ApiError> {
        let rx = self.batcher.submit(texts).map_err(|refused| match refused {
            Refused::Full => self.overloaded(
                ShedReason::QueueTokens,
                &format!(
                    "overloaded: the queue holds close to its limit of {} tokens; retry later",
                    self.config.batching.max_queue_tokens
                ),
            ),
            Refused::Closed => ApiError::shutting_down(),
        })?;
        let reply = rx.await;
        drop(permit);
        reply.map_err(|_| ApiError::backend("the model thread stopped before answering"))?
    }

    /// Options TEI has that this build does not: refused rather than silently ignored.
    fn check_unsupported(&self, truncation_direction: Option<&str>, dimensions: Option<usize>) -> Result<(), ApiError> {
        if let Some(d) = truncation_direction
            && !d.eq_ignore_ascii_case("right")
        {
            return Err(ApiError::invalid(format!("`truncation_direction`: only \"Right\" is supported, not {d:?}")));
        }
        if let Some(d) = dimensions
            && d != self.model.dim
        {
            return Err(ApiError::invalid(format!(
                "`dimensions`: this model gives {}-dimensional embeddings only, not {d}",
                self.model.dim
            )));
        }
        Ok(())
    }

    /// TEI's `prompt_name`: the role whose prompt goes before each input, for a model that
    /// has prompts (E5: "query", "passage"); none: the texts searched.
    fn prompt_role(&self, prompt_name: Option<&str>) -> Result<TextRole, ApiError> {
        let prompts = self.embedder.prompts();
        match prompt_name {
            None => Ok(TextRole::Passage),
            Some(_) if prompts.query.is_empty() && prompts.passage.is_empty() => {
                Err(ApiError::invalid("`prompt_name`: this model has no named prompts"))
            }
            Some("query") => Ok(TextRole::Query),
            Some("passage") => Ok(TextRole::Passage),
            Some(other) => Err(ApiError::invalid(format!(
                "`prompt_name`: {other:?} is not one of this model's prompts (query, passage)"
            ))),
        }
    }

    /// `/embed`'s `model`, when given, must name a served model.
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.model.id => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
                format!("model {m:?} is not served here (the encoder is {:?})", self.model.id),
            )),
            _ => Ok(()),
        }
    }

    /// A normalized graph cannot give back the unnormalized vector: refuse before any work.
    fn check_normalize(&self, normalize: bool) -> Result<(), ApiError> {
        if !normalize && self.model.normalizes {
            return Err(ApiError::invalid(
                "`normalize`: this model's pipeline ends in L2 normalization, so unnormalized embeddings are not available",
            ));
        }
        Ok(())
    }

    /// Normalizes when asked and the graph has not already.
    fn normalize(&self, vectors: &mut [Vec<f32>], normalize: bool) {
        if normalize && !self.model.normalizes {
            vectors.iter_mut().for_each(|v| l2_normalize(v));
        }
    }
}

fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

fn respond<T: serde::Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /embed` (TEI): `{"inputs": "text" | ["text", ...], "truncate", "normalize"}` →
/// `[[f32; dim], ...]`.
async fn embed(State(s): AppRef, req: Request) -> Response {
    respond(embed_inner(&s, req).await)
}

async fn embed_inner(s: &AppState, req: Request) -> Result<Vec<Vec<f32>>, ApiError> {
    let permit = s.admit()?;
    let body: EmbedRequest = s.read_json(req).await?;
    let one = body.inputs.is_one();
    let texts = body.inputs.into_vec();
    s.check_count(texts.len(), "inputs")?;
    let name = |i: usize| if one { "inputs".to_string() } else { format!("inputs[{i}]") };
    if let Some(llm) = s.llm.as_ref().filter(|l| l.is_named(body.model.as_deref())) {
        if body.prompt_name.is_some() {
            return Err(ApiError::invalid("`prompt_name`: this model has no named prompts"));
        }
        llm.check_embedding_options(body.truncation_direction.as_deref(), body.dimensions)?;
        let (mut vectors, _) = llm.embed(s, &texts, body.truncate, name).await?;
        drop(permit);
        if body.normalize {
            vectors.iter_mut().for_each(|v| l2_normalize(v));
        }
        return Ok(vectors);
    }
    s.check_model(body.model.as_deref())?;
    s.check_unsupported(body.truncation_direction.as_deref(), body.dimensions)?;
    s.check_normalize(body.normalize)?;
    let role = s.prompt_role(body.prompt_name.as_deref())?;
    let tokenized = s.tokenize(texts, move |_| role, body.truncate, name).await?;
    let mut vectors = s.infer(tokenized, permit).await?;
    s.normalize(&mut vectors, body.normalize);
    Ok(vectors)
}

/// `POST /v1/embeddings` (OpenAI, as TEI serves it); errors in TEI's OpenAI shape.
async fn openai_embeddings(State(s): AppRef, req: Request) -> Response {
    match openai_inner(&s, req).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_openai_response(),
    }
}

async fn openai_inner(s: &AppState, req: Request) -> Result<OpenAiResponse, ApiError> {
    let permit = s.admit()?;
    let body: OpenAiRequest = s.read_json(req).await?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "`encoding_format`: expected \"float\" or \"base64\", not {other:?}"
            )));
        }
    };
    let one = body.input.is_one();
    let texts = body.input.into_vec();
    s.check_count(texts.len(), "input")?;
    if let Some(llm) = s.llm.as_ref().filter(|l| l.is_named(body.model.as_deref())) {
        llm.check_embedding_options(None, body.dimensions)?;
        let name = |i: usize| if one { "input".to_string() } else { format!("input[{i}]") };
        let (mut vectors, tokens) = llm.embed(s, &texts, body.truncate, name).await?;
        drop(permit);
        vectors.iter_mut().for_each(|v| l2_normalize(v));
        return Ok(openai_list(vectors, base64, llm.id.clone(), tokens));
    }
    s.check_unsupported(None, body.dimensions)?;
    let name = |i| if one { "input".into() } else { format!("input[{i}]") };
    let tokenized = s.tokenize(texts, |_| TextRole::Passage, body.truncate, name).await?;
    let tokens: usize = tokenized.iter().map(TokenizedText::len).sum();
    let mut vectors = s.infer(tokenized, permit).await?;
    // OpenAI's embeddings are normalized.
    s.normalize(&mut vectors, true);
    Ok(openai_list(vectors, base64, body.model.unwrap_or_else(|| s.model.id.clone()), tokens))
}

/// OpenAI's embedding list.
fn openai_list(vectors: Vec<Vec<f32>>, base64: bool, model: String, tokens: usize) -> OpenAiResponse {
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| api::OpenAiEmbedding {
            object: "embedding",
            embedding: if base64 {
                api::OpenAiVector::Base64(api::base64_f32(&v))
            } else {
                api::OpenAiVector::Float(v)
            },
            index,
        })
        .collect();
    OpenAiResponse {
        object: "list",
        data,
        model,
        usage: api::OpenAiUsage { prompt_tokens: tokens, total_tokens: tokens },
    }
}

/// `POST /rerank` (TEI) with the bi-encoder: the score of a text is the cosine of its
/// embedding and the query's. `raw_scores: true` gives the cosine itself (-1..1); otherwise
/// `(1 + cosine) / 2`, the same order mapped onto 0..1. That is a rescaling, not a
/// probability: TEI's cross-encoders give a sigmoid of a logit, and no calibration data ships
/// with this model to fit one. Ranks come back best first, as TEI's do.
async fn rerank(State(s): AppRef, req: Request) -> Response {
    respond(rerank_inner(&s, req).await)
}

async fn rerank_inner(s: &AppState, req: Request) -> Result<Vec<Rank>, ApiError> {
    let permit = s.admit()?;
    let body: RerankRequest = s.read_json(req).await?;
    s.check_unsupported(body.truncation_direction.as_deref(), None)?;
    s.check_count(body.texts.len(), "texts")?;
    let returned = body.return_text.then(|| body.texts.clone());
    // The query travels with its texts: one job, one forward pass, query first.
    let mut texts = Vec::with_capacity(body.texts.len() + 1);
    texts.push(body.query);
    texts.extend(body.texts);
    let role = |i| if i == 0 { TextRole::Query } else { TextRole::Passage };
    let name = |i| if i == 0 { "query".into() } else { format!("texts[{}]", i - 1) };
    let tokenized = s.tokenize(texts, role, body.truncate, name).await?;
    let vectors = s.infer(tokenized, permit).await?;
    let (query, docs) = vectors.split_first().ok_or_else(|| ApiError::backend("the model returned no vectors"))?;
    let mut ranks: Vec<Rank> = docs
        .iter()
        .enumerate()
        .map(|(index, doc)| {
            let cos = cosine(query, doc);
            let score = if body.raw_scores { cos } else { ((1.0 + cos) / 2.0).clamp(0.0, 1.0) };
            Rank { index, text: returned.as_ref().map(|t| t[index].clone()), score }
        })
        .collect();
    ranks.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(ranks)
}

/// `POST /relevance`: entity-based relevance with explanations and rule verdicts (see
/// [`super::relevance`]). Admission and shedding as for the other inference routes; the QE
/// misses go through the same batcher.
async fn relevance(State(s): AppRef, req: Request) -> Response {
    respond(relevance_inner(&s, req).await)
}

async fn relevance_inner(s: &AppState, req: Request) -> Result<Value, ApiError> {
    let Some(engine) = s.relevance.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
            "/relevance is turned off on this server (relevance.enabled = false)",
        ));
    };
    let permit = s.admit()?;
    let body: RelevanceRequest = s.read_json(req).await?;
    let job = engine.parse(body)?;
    let metrics = s.metrics.clone();
    // Dropped with this future when the client goes away: the blocking task then stops.
    struct CancelOnDrop(Arc<Cancel>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.cancel();
        }
    }
    let cancel = CancelOnDrop(Arc::new(Cancel::default()));
    let task_cancel = cancel.0.clone();
    let outcome = tokio::task::spawn_blocking(move || engine.run(&job, &metrics, &task_cancel)).await;
    drop(permit);
    let outcome = outcome.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal, format!("relevance task: {e}"))
    })?;
    outcome.map_err(|e| match e.downcast_ref::<EncodeRefused>() {
        Some(EncodeRefused(Refused::Full)) => s.overloaded(
            ShedReason::QueueTokens,
            &format!(
                "overloaded: the queue holds close to its limit of {} tokens; retry later",
                s.config.batching.max_queue_tokens
            ),
        ),
        Some(EncodeRefused(Refused::Closed)) => ApiError::shutting_down(),
        None => {
            s.metrics.observe_backend_error();
            ApiError::backend(format!("{e:#}"))
        }
    })
}

/// `GET /health` (TEI): 200 with an empty body while serving, 503 while shutting down.
async fn health(State(s): AppRef) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        ApiError::shutting_down().into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

/// `GET /info`: TEI's fields, then tandem's own (backend, dimension, limits).
async fn info(State(s): AppRef) -> Response {
    let c = &s.config;
    let b = &c.batching;
    let m = &s.model;
    Json(json!({
        "model_id": m.id,
        "model_sha": null,
        "model_dtype": m.dtype,
        "model_type": {"embedding": {"pooling": m.pooling}},
        "max_concurrent_requests": b.max_queue_requests,
        "max_input_length": m.max_tokens,
        "max_batch_tokens": b.max_batch_tokens,
        "max_batch_requests": b.max_batch_requests,
        "max_client_batch_size": c.server.max_client_batch_size,
        "auto_truncate": false,
        "tokenization_workers": null,
        "version": env!("CARGO_PKG_VERSION"),
        "sha": null,
        "docker_label": null,
        "backend": m.backend,
        "dim": m.dim,
        "normalized": m.normalizes,
        "limits": {
            "max_connections": c.server.max_connections,
            "max_body_bytes": c.server.max_body_bytes,
            "max_wait_ms": b.max_wait_ms,
            "max_queue_requests": b.max_queue_requests,
            "max_queue_tokens": b.max_queue_tokens,
            "overload_status": c.server.overload_status,
            "retry_after_secs": c.server.retry_after_secs,
            "drain_timeout_secs": c.server.drain_timeout_secs,
        },
        "endpoints": {
            "/embed": "available",
            "/v1/embeddings": "available",
            "/rerank": "available (bi-encoder cosine)",
            "/relevance": if s.relevance.is_some() { "available (EBRM)" } else { "turned off" },
            "/v1/chat/completions": if s.llm.is_some() { "available" } else { "no decoder (--llm)" },
            "/v1/completions": if s.llm.is_some() { "available" } else { "no decoder (--llm)" },
            "/grade": if s.llm.is_some() { "available" } else { "no decoder (--llm)" },
            "/suggest": if s.llm.is_some() { "available" } else { "no decoder (--llm)" },
        },
        "llm": s.llm.as_ref().map(|l| l.info()),
        "relevance": s.relevance.as_ref().map(|r| r.info()),
        "web": s.web.as_ref().map_or_else(|| json!({"enabled": false}), |w| w.info()),
    }))
    .into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(s): AppRef) -> Response {
    let (queue_requests, queue_tokens) = s.batcher.depth();
    let gauges = Gauges {
        queue_requests,
        queue_tokens,
        admitted: s.config.batching.max_queue_requests - s.admission.available_permits(),
        draining: s.draining.load(Ordering::Relaxed),
        tokenized_texts: s.embedder.texts_tokenized(),
        qe_cache: s.relevance.as_ref().map(|r| r.cache_stats()),
        qe_cache_redis: s.relevance.as_ref().and_then(|r| r.redis_stats()),
    };
    let info =
        [("version", env!("CARGO_PKG_VERSION")), ("model", s.model.id.as_str()), ("backend", s.model.backend.as_str())];
    let mut text = s.metrics.render(gauges, &info);
    if let Some(llm) = &s.llm {
        llm.render_metrics(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Unknown API routes: the demo's files when it is on (GET and HEAD of its allow-list),
/// else 404.
async fn not_found(State(s): AppRef, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(web) = &s.web
        && let Some(response) = web.respond(&method, uri.path(), &headers).await
    {
        return response;
    }
    ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, format!("no route for {method} {}", uri.path()))
        .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::MethodNotAllowed,
        format!("{} does not accept {method}", uri.path()),
    )
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    eprintln!("tandem serve: a handler panicked: {}", what.unwrap_or("?"));
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Internal,
        "internal error (a bug: the handler panicked)",
    )
    .into_response()
}

/// Counts every request by route and status and times it. A request whose client leaves
/// first is counted with status 499 when its handler is dropped.
async fn track(State(s): AppRef, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let route = ROUTES.iter().copied().find(|r| *r == path).unwrap_or("other");
    let mut guard = Tracked { metrics: &s.metrics, route, start: Instant::now(), status: CLIENT_CLOSED };
    let response = next.run(req).await;
    guard.status = response.status().as_u16();
    response
}

struct Tracked<'a> {
    metrics: &'a Metrics,
    route: &'static str,
    start: Instant,
    status: u16,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.metrics.observe_request(self.route, self.status, self.start.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_normalize_makes_unit_vectors() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
    }
}
