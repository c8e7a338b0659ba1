//! `POST /relevance`: entity-based relevance (EBRM) of items to a query, then the rule
//! plugins, with explanations.
//!
//! The EBRM engine encodes through the same [`EmbedBatcher`] as `/embed`, so its QE misses share
//! forward passes with embedding requests and obey the same queue bounds. The engine is
//! synchronous, so a request runs on the blocking pool and waits there for its vectors; all
//! the rest (entity extraction, cache lookups, aggregation, rules) is CPU work that belongs
//! there anyway.
//!
//! Request: `{"query", "items": [{"id", "title", "price", "brand", "category", "attributes",
//! ...}], "logic", "explain", "rules", "all_entities", "interventions"}`. Response: the query
//! as understood (its entities), and one result per item, best final score first.

use super::batcher::{EmbedBatcher, Refused};
use super::config::RelevanceConfig;
use super::errors::ApiError;
use super::metrics::Metrics;
use super::qe_cache::{RedisStats, SharedQeCache};
use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tandem_ebrm::cli::{load_extractor, ranking_lines};
use tandem_ebrm::rules::{annotate, candidates, plugin_query};
use tandem_ebrm::{CategorySearch, Ebrm, Intervention, Item, Logic, LruQeCache, QeCache, Ranking, TextEncoder};
use tandem_models::{Embedder, TextRole};
use tandem_plugins::{Host, RuleSet, Watcher};

/// Why an encode through the batcher failed, kept typed through `anyhow` so the handler can
/// answer 503 for a full queue rather than 500.
#[derive(Debug)]
pub struct EncodeRefused(pub Refused);

impl std::fmt::Display for EncodeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Refused::Full => f.write_str("the model's queue is full"),
            Refused::Closed => f.write_str("the server is shutting down"),
        }
    }
}

impl std::error::Error for EncodeRefused {}

/// The client of a `/relevance` request went away: its blocking task stops waiting for the
/// model (dropping its queued encodes, which the batcher then skips) and skips the rules.
#[derive(Default)]
pub struct Cancel {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Cancel {
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    async fn cancelled(&self) {
        loop {
            // Created before the check, so a cancel in between is not missed.
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// What a cancelled request's work ends with (nobody reads it).
#[derive(Debug)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client went away")
    }
}

impl std::error::Error for Cancelled {}

thread_local! {
    /// The cancel flag of the `/relevance` request this blocking thread is running: the EBRM
    /// engine calls the encoder without a request context, so the encoder finds it here.
    static CURRENT: std::cell::RefCell<Option<Arc<Cancel>>> = const { std::cell::RefCell::new(None) };
}

/// A [`TextEncoder`] that queues its texts on the model thread's batcher and blocks until
/// the vectors come back. Call only from a blocking-pool thread (or any thread outside the
/// tokio workers): it blocks.
pub struct BatchedEncoder {
    batcher: EmbedBatcher,
    /// For tokenizing; forward passes run on the batcher's thread.
    embedder: Arc<Embedder>,
    runtime: tokio::runtime::Handle,
    id: String,
    max_batch_tokens: usize,
}

impl BatchedEncoder {
    pub fn new(
        batcher: EmbedBatcher,
        embedder: Arc<Embedder>,
        runtime: tokio::runtime::Handle,
        id: String,
        max_batch_tokens: usize,
    ) -> Self {
        BatchedEncoder { batcher, embedder, runtime, id, max_batch_tokens }
    }

    /// Entity texts and titles are truncated to the model's limit silently: EBRM scores what
    /// fits, as the CLI does. Each text is tokenized once, here (with the model's prompt for
    /// `role`); the batcher gets its ids. Large calls (the taxonomy at start-up) go as several
    /// jobs of at most `max_batch_tokens`, all queued before the first is awaited.
    fn encode_as(&self, texts: &[&str], role: TextRole) -> Result<Vec<Vec<f32>>> {
        let mut jobs = Vec::new();
        let (mut chunk, mut chunk_tokens) = (Vec::new(), 0);
        for text in texts {
            let tokens = self.embedder.tokenize_counted_as(text, role)?.tokens;
            if !chunk.is_empty() && chunk_tokens + tokens.len() > self.max_batch_tokens {
                jobs.push(std::mem::take(&mut chunk));
                chunk_tokens = 0;
            }
            chunk_tokens += tokens.len();
            chunk.push(tokens);
        }
        if !chunk.is_empty() {
            jobs.push(chunk);
        }
        let cancel = CURRENT.with(|c| c.borrow().clone());
        if cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(Cancelled.into());
        }
        let receivers = jobs
            .into_iter()
            .map(|job| self.batcher.submit(job).map_err(EncodeRefused))
            .collect::<Result<Vec<_>, _>>()?;
        let mut vectors = Vec::with_capacity(texts.len());
        for rx in receivers {
            // On cancel, returning drops the remaining receivers: the batcher skips their jobs.
            let reply = self.runtime.block_on(async {
                match &cancel {
                    Some(cancel) => tokio::select! {
                        reply = rx => Some(reply),
                        () = cancel.cancelled() => None,
                    },
                    None => Some(rx.await),
                }
            });
            let reply = reply.ok_or(Cancelled)?.context("the model thread stopped before answering")?;
            vectors.extend(reply.map_err(|e| anyhow::anyhow!("{}", e.message))?);
        }
        Ok(vectors)
    }
}

impl TextEncoder for BatchedEncoder {
    fn id(&self) -> &str {
        &self.id
    }

    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.encode_as(texts, TextRole::Passage)
    }

    fn encode_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.encode_as(texts, TextRole::Query)
    }
}

/// The `/relevance` pipeline: the engine, its defaults and the rule plugins.
pub struct Relevance {
    engine: Ebrm<BatchedEncoder>,
    config: RelevanceConfig,
    logic: Logic,
    rules: Option<Arc<RuleSet>>,
    /// The Redis tier of the QE cache, when configured (for its metrics).
    shared_cache: Option<Arc<SharedQeCache>>,
    /// Keeps the hot-reload thread alive.
    _watcher: Option<Watcher>,
}

impl Relevance {
    /// Builds the engine and loads everything its first request would: the brand list
    /// (fetched into the cache on first use; without it brands come from item attributes
    /// only), the taxonomy embeddings and the rule plugins. Blocks: call off the tokio workers.
    pub fn start(config: &RelevanceConfig, encoder: BatchedEncoder) -> Result<Relevance> {
        let cache_dir = tandem_models::fetch::cache_root()?;
        if let Err(e) = tandem_ebrm::vocab::fetch_brands(&cache_dir) {
            eprintln!("tandem serve: warning: cannot fetch the brand list ({e:#})");
        }
        let extractor = load_extractor(&cache_dir)?;
        let near = LruQeCache::new(config.qe_cache_entries, config.qe_cache_bytes);
        let (cache, shared_cache): (Arc<dyn QeCache>, _) = match &config.qe_cache {
            None => (Arc::new(near), None),
            Some(url) => {
                let timeout = Duration::from_millis(config.qe_cache_timeout_ms);
                let shared = Arc::new(SharedQeCache::new(near, url, timeout, config.qe_cache_ttl_secs)?);
                (shared.clone(), Some(shared))
            }
        };
        let engine =
            Ebrm::new(encoder, extractor, CategorySearch::Embedding { cache_dir: Some(cache_dir) }).with_cache(cache);
        let started = Instant::now();
        engine.prepare().context("cannot prepare the taxonomy index for /relevance")?;
        if started.elapsed() > Duration::from_secs(1) {
            eprintln!("tandem serve: taxonomy embeddings ready in {:.1?} (cached for next time)", started.elapsed());
        }
        let (rules, watcher) = match &config.rules {
            None => (None, None),
            Some(path) => {
                let plugins = tandem_plugins::Config::from_file(path)?;
                let host = Host::new().map_err(|e| anyhow::anyhow!("cannot start the plugin host: {e}"))?;
                let set = Arc::new(RuleSet::new(host, &plugins).context("cannot load the rule plugins")?);
                let watcher = set.watch(Duration::from_millis(plugins.poll_ms), |event| {
                    eprintln!("tandem serve: rules: {event:?}");
                })?;
                (Some(set), Some(watcher))
            }
        };
        let logic = Logic::from_name(&config.logic).context("relevance.logic")?;
        Ok(Relevance { engine, config: config.clone(), logic, rules, shared_cache, _watcher: watcher })
    }

    pub fn info(&self) -> Value {
        let cache = self.engine.cache_stats();
        json!({
            "logic": self.logic,
            "max_items": self.config.max_items,
            "qe_cache": {"max_entries": cache.max_entries, "max_bytes": cache.max_bytes, "shared": self.shared_cache.is_some()},
            "rules": self.rules.as_ref().map(|r| r.status()).unwrap_or_default(),
        })
    }

    pub fn cache_stats(&self) -> tandem_ebrm::CacheStats {
        self.engine.cache_stats()
    }

    pub fn redis_stats(&self) -> Option<RedisStats> {
        self.shared_cache.as_ref().map(|c| c.redis_stats())
    }

    /// Parses and checks a request body before any work, naming the field at fault.
    pub fn parse(&self, body: RelevanceRequest) -> Result<Job, ApiError> {
        check_request(body, self.config.max_items, self.logic, self.rules.is_some())
    }

    /// Ranks, runs the rules and builds the response. Blocks on the model; gives up (with
    /// [`Cancelled`]) at the next wait for the model, or before the rules, once `cancel` is set.
    pub fn run(&self, job: &Job, metrics: &Metrics, cancel: &Arc<Cancel>) -> Result<Value> {
        struct Current;
        impl Drop for Current {
            fn drop(&mut self) {
                CURRENT.with(|c| c.borrow_mut().take());
            }
        }
        CURRENT.with(|c| *c.borrow_mut() = Some(cancel.clone()));
        let _current = Current;
        let ranking = self.engine.rank(&job.query, &job.items)?.with_logic(job.logic);
        if cancel.is_cancelled() {
            return Err(Cancelled.into());
        }
        let ranking = if job.interventions.is_empty() { ranking } else { ranking.intervene(&job.interventions) };
        let mut lines = ranking_lines(&ranking, job.all_entities)?;
        match self.rules.as_ref().filter(|_| job.rules) {
            // Every plugin sees all items of the request in one batch.
            Some(rules) => {
                let reports = rules.check_many(&plugin_query(&ranking), &candidates(&ranking, &job.items));
                for report in reports.iter().flatten() {
                    metrics.observe_rule(&report.plugin, report.error.as_ref().map(|e| e.kind.as_str()));
                }
                annotate(&ranking, &reports, &mut lines);
            }
            None => {
                for (scored, line) in ranking.items.iter().zip(lines.iter_mut()) {
                    line["final_score"] = json!(scored.score);
                }
            }
        }
        for line in &mut lines {
            let obj = line.as_object_mut().expect("ranking lines are objects");
            obj.remove("logic");
            if !job.explain {
                obj.remove("explanation");
                obj.remove("deciding");
            }
        }
        order_by_final_score(&mut lines);
        Ok(json!({
            "query": query_json(&ranking),
            "logic": ranking.config.logic,
            "encoded_texts": ranking.encoded_texts,
            "results": lines,
        }))
    }
}

/// A request body checked before any work, naming the field at fault: at most `max_items`
/// items, each a valid item; `logic` defaults to the server's; `rules_required` needs
/// plugins (`has_rules`). Needs no engine, so the `http_bodies` fuzz target runs it too.
pub(super) fn check_request(
    body: RelevanceRequest,
    max_items: usize,
    default_logic: Logic,
    has_rules: bool,
) -> Result<Job, ApiError> {
    if body.query.trim().is_empty() {
        return Err(ApiError::empty("query"));
    }
    if body.items.is_empty() {
        return Err(ApiError::empty("items"));
    }
    if body.items.len() > max_items {
        return Err(ApiError::too_large(format!(
            "`items` has {} items, more than the limit of {max_items} (relevance.max_items)",
            body.items.len()
        )));
    }
    let items = body
        .items
        .iter()
        .enumerate()
        .map(|(i, v)| Item::from_value(v).map_err(|e| ApiError::invalid(format!("`items[{i}]`: {e:#}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let logic = match &body.logic {
        None => default_logic,
        Some(name) => Logic::from_name(name).ok_or_else(|| {
            ApiError::invalid(format!("`logic`: expected product, goedel or lukasiewicz, not {name:?}"))
        })?,
    };
    if body.rules && !has_rules && body.rules_required {
        return Err(ApiError::invalid("`rules_required`: no rule plugins are configured (relevance.rules)"));
    }
    Ok(Job {
        query: body.query,
        items,
        logic,
        explain: body.explain,
        rules: body.rules,
        all_entities: body.all_entities,
        interventions: body.interventions,
    })
}

/// Best final score first; ties keep input order. `rank` follows the final order.
fn order_by_final_score(lines: &mut [Value]) {
    let score = |v: &Value| v["final_score"].as_f64().unwrap_or(0.0);
    lines.sort_by(|a, b| score(b).total_cmp(&score(a)).then_with(|| a["index"].as_u64().cmp(&b["index"].as_u64())));
    for (rank, line) in lines.iter_mut().enumerate() {
        line["rank"] = json!(rank + 1);
    }
}

fn query_json(ranking: &Ranking) -> Value {
    let q = &ranking.query;
    json!({"text": q.text, "entities": q.entities, "category_similarity": q.category_similarity})
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelevanceRequest {
    pub query: String,
    /// Item objects; parsed one by one so an error names the item.
    pub items: Vec<Value>,
    /// product | goedel | lukasiewicz; the server's `relevance.logic` when absent.
    #[serde(default)]
    pub logic: Option<String>,
    /// Include each item's explanation and deciding entities.
    #[serde(default = "yes")]
    pub explain: bool,
    /// Run the configured rule plugins.
    #[serde(default = "yes")]
    pub rules: bool,
    /// Fail with 422 when no rule plugins are configured, rather than rank without them.
    #[serde(default)]
    pub rules_required: bool,
    /// Every entity of every item, not only the deciding ones.
    #[serde(default)]
    pub all_entities: bool,
    /// QE overrides and dropped entities, applied before the rules, without re-encoding.
    #[serde(default)]
    pub interventions: Vec<Intervention>,
}

/// A checked request.
pub struct Job {
    pub(super) query: String,
    pub(super) items: Vec<Item>,
    pub(super) logic: Logic,
    explain: bool,
    rules: bool,
    pub(super) all_entities: bool,
    pub(super) interventions: Vec<Intervention>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_final_score_then_input_order() {
        let mut lines = vec![
            json!({"index": 0, "final_score": 0.2}),
            json!({"index": 1, "final_score": 0.9}),
            json!({"index": 2, "final_score": 0.2}),
        ];
        order_by_final_score(&mut lines);
        let order: Vec<_> = lines.iter().map(|l| (l["index"].as_u64().unwrap(), l["rank"].as_u64().unwrap())).collect();
        assert_eq!(order, vec![(1, 1), (0, 2), (2, 3)]);
    }
}
