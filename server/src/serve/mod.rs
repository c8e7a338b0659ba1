//! `tandem serve`: the HTTP server (axum on tokio).
//!
//! With no configuration it serves MiniLM (fetched into the cache on first use) on the best
//! backend found, at 127.0.0.1:8080. A TOML file (`--config`) and flags change that; see
//! [`config`]. The model runs on its own thread fed by the [`batcher`]; the tokio workers
//! only parse, validate and wait. SIGTERM (or Ctrl-C) stops accepting connections, lets
//! in-flight requests finish (at most `server.drain_timeout_secs`), then exits 0.

mod access;
mod api;
mod batcher;
pub mod config;
mod errors;
/// The request bodies without a model, for the `http_bodies` fuzz target.
pub mod fuzzing;
mod listener;
mod llm;
mod metrics;
mod qe_cache;
mod relevance;
mod routes;
mod web;

use anyhow::{Context, Result};
use config::Config;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tandem_models::bert::{META_MODEL, META_NORMALIZE, META_POOLING};
use tandem_models::embed::model_id;
use tandem_models::lora::AdapterSpec;
use tandem_models::registry::{known_model, known_text_encoder};
use tandem_models::{BackendChoice, Embedder, Precision, fetch};
use tokio::sync::{Semaphore, watch};

#[derive(clap::Args)]
pub struct Args {
    /// A TOML config file; flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on; 0 picks a free one [default: 8080].
    #[arg(long)]
    port: Option<u16>,
    /// cpu, wgpu, cuda or auto [default: auto, the best backend found], for every model.
    #[arg(long)]
    backend: Option<String>,
    /// The text encoder: a known one (minilm, multilingual-e5-small; fetched on first use), a
    /// sentence-transformers folder or an E5S1 file [default: minilm].
    #[arg(long, value_name = "NAME|PATH")]
    model: Option<PathBuf>,
    /// A PEFT LoRA adapter folder applied to the model.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Fold the adapter into the weights at load instead of running the fused LoRA op.
    #[arg(long)]
    merge_adapter: bool,
    /// The text encoder's linear layers in f32 or bf16 [default: f32]; bf16 runs 1.5–1.9×
    /// as fast on CPUs with AVX-512 BF16.
    #[arg(long, value_name = "f32|bf16")]
    precision: Option<String>,
    /// Most tokens in one forward pass.
    #[arg(long)]
    max_batch_tokens: Option<usize>,
    /// Most requests in one forward pass; 1 turns batching off.
    #[arg(long)]
    max_batch_requests: Option<usize>,
    /// How long a request may wait for others to batch with, in ms.
    #[arg(long)]
    max_wait_ms: Option<u64>,
    /// Requests admitted at once; more are answered 503 at once.
    #[arg(long)]
    max_queue_requests: Option<usize>,
    /// Rule plugins for /relevance: a tandem-plugins config file (TOML), hot-reloaded.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Share /relevance's QE scores with other replicas through this Redis (redis://host:port).
    #[arg(long, value_name = "URL")]
    qe_cache: Option<String>,
    /// Do not serve /relevance (skips loading the brand list and taxonomy at start-up).
    #[arg(long)]
    no_relevance: bool,
    /// The in-browser demo's folder (index.html, app.js, pkg/) [default: the source tree's web/].
    #[arg(long, value_name = "DIR")]
    web_dir: Option<PathBuf>,
    /// Do not serve the in-browser demo at / (nor its model files).
    #[arg(long)]
    no_web: bool,
    /// An API key every route but /health requires (`Authorization: Bearer KEY`); repeat for
    /// several. TANDEM_API_KEY adds keys too (comma-separated).
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// Let browsers on this origin call the API (CORS); repeat for several, `*` for any.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// A decoder LLM to serve too (OpenAI chat/completions, /grade): a known name
    /// (smollm2, qwen2.5-coder-0.5b) or a GGUF file.
    #[arg(long, value_name = "NAME|FILE.gguf")]
    llm: Option<String>,
    /// Sequences the decoder runs at once (KV-cache slots).
    #[arg(long)]
    llm_slots: Option<usize>,
    /// Tokens each decoder sequence holds (prompt and output).
    #[arg(long)]
    llm_slot_tokens: Option<usize>,
    /// A layer-wise visual adapter folder for the decoder: chat messages may then carry a
    /// photo (OpenAI's `image_url` part with a data URL).
    #[arg(long, value_name = "DIR", requires = "llm")]
    llm_visual_adapter: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

impl Args {
    fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        // Flags win over the file.
        let (s, b, m) = (&mut c.server, &mut c.batching, &mut c.models.embed);
        if let Some(v) = &self.host {
            s.host = v.clone();
        }
        if let Some(v) = self.port {
            s.port = v;
        }
        if let Some(v) = &self.backend {
            m.backend = v.clone();
            c.llm.backend = v.clone();
        }
        if let Some(v) = &self.precision {
            m.precision = v.clone();
        }
        if let Some(v) = &self.model {
            match v.to_str() {
                Some(name) if !v.exists() && known_model(name).is_ok() => {
                    m.name = name.to_string();
                    m.path = None;
                }
                _ => m.path = Some(v.clone()),
            }
        }
        if let Some(v) = &self.adapter {
            m.adapter = Some(v.clone());
        }
        if self.merge_adapter {
            m.merge_adapter = true;
        }
        if let Some(v) = self.max_batch_tokens {
            b.max_batch_tokens = v;
        }
        if let Some(v) = self.max_batch_requests {
            b.max_batch_requests = v;
        }
        if let Some(v) = self.max_wait_ms {
            b.max_wait_ms = v;
        }
        if let Some(v) = self.max_queue_requests {
            b.max_queue_requests = v;
        }
        if let Some(v) = &self.rules {
            c.relevance.rules = Some(v.clone());
        }
        if let Some(v) = &self.qe_cache {
            c.relevance.qe_cache = Some(v.clone());
        }
        if self.no_relevance {
            c.relevance.enabled = false;
        }
        if let Some(v) = &self.web_dir {
            c.web.dir = Some(v.clone());
        }
        if self.no_web {
            c.web.enabled = false;
        }
        if let Some(v) = &self.llm {
            c.llm.model = Some(v.clone());
        }
        if let Some(v) = self.llm_slots {
            c.llm.slots = v;
        }
        if let Some(v) = self.llm_slot_tokens {
            c.llm.slot_tokens = v;
        }
        if let Some(v) = &self.llm_visual_adapter {
            c.llm.visual_adapter = Some(v.clone());
        }
        c.server.api_keys.extend(self.api_keys.iter().cloned());
        if let Ok(keys) = std::env::var(access::API_KEY_ENV) {
            c.server.api_keys.extend(keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from));
        }
        c.server.cors_origins.extend(self.cors_origins.iter().cloned());
        c.validate()?;
        // A bad origin fails here, before the model loads.
        access::cors(&c.server.cors_origins)?;
        Ok(c)
    }
}

pub fn run(args: Args) -> Result<()> {
    let config = args.config()?;
    if args.print_config {
        print!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }
    // Parsed before the (possibly long) fetch, so a typo fails at once.
    let backend: BackendChoice = config.models.embed.backend.parse().context("models.embed.backend")?;
    let precision: Precision = config.models.embed.precision.parse().context("models.embed.precision")?;
    let dir = match &config.models.embed.path {
        Some(dir) => dir.clone(),
        None => fetch::ensure(known_text_encoder(&config.models.embed.name)?)?,
    };
    let m = &config.models.embed;
    let adapter = m.adapter.clone().map(|adapter_dir| AdapterSpec::new(adapter_dir, m.merge_adapter));
    let (embedder, variant) = Embedder::load_adapted(&dir, adapter.as_ref(), backend, precision)
        .with_context(|| format!("cannot load the model in {}", dir.display()))?;
    let embedder = Arc::new(embedder);
    // The model id keys the QE cache and the taxonomy embeddings: an adapter or another
    // precision makes another model.
    let model_id = format!("{}{variant}", model_id(&dir));
    // Token counting and /relevance run on the blocking pool. The default (512) would let a
    // burst start hundreds of threads that fight for the cores the model needs; a few per core
    // leave room for /relevance requests that wait there for the model thread.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime =
        tokio::runtime::Builder::new_multi_thread().max_blocking_threads((4 * cores).max(8)).enable_all().build()?;
    runtime.block_on(serve(config, embedder, dir, model_id))
}

fn model_info(embedder: &Embedder, dir: &std::path::Path) -> routes::ModelInfo {
    let graph = embedder.graph();
    let meta = |key: &str| graph.metadata.get(key).cloned();
    // The dtype of the linear layers' weights (bf16 under `--precision bf16`, GGUF blocks for
    // E5), else of the first weight.
    let linear_weight = graph.nodes.iter().find_map(|node| match node.op {
        tandem_runtime::Op::MatMul(_) => node.inputs.get(1).filter(|id| graph.weights.contains(id)).copied(),
        _ => None,
    });
    let dtype = linear_weight.or(graph.weights.first().copied()).map_or("float32".to_string(), |id| {
        match graph.value(id).ty.dtype.name() {
            "f32" => "float32".to_string(),
            "f16" => "float16".to_string(),
            "bf16" => "bfloat16".to_string(),
            other => other.to_string(),
        }
    });
    routes::ModelInfo {
        id: meta(META_MODEL).unwrap_or_else(|| dir.display().to_string()),
        dim: embedder.dim(),
        max_tokens: embedder.max_tokens(),
        normalizes: meta(META_NORMALIZE).as_deref() == Some("true"),
        pooling: meta(META_POOLING).unwrap_or_else(|| "mean".into()),
        dtype,
        backend: embedder.backend_name().to_string(),
    }
}

async fn serve(config: Config, embedder: Arc<Embedder>, dir: PathBuf, model_id: String) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let b = &config.batching;
    let policy = batcher::Policy {
        max_batch_tokens: b.max_batch_tokens,
        max_batch_requests: b.max_batch_requests,
        max_wait: Duration::from_millis(b.max_wait_ms),
        max_queue_tokens: b.max_queue_tokens,
    };
    let model = embedder.clone();
    // Token ids in: the routes tokenized each text once, to check its length.
    let (batcher, model_thread) =
        batcher::Batcher::start(policy, metrics.clone(), Box::new(move |texts: &[&_]| model.embed_tokenized(texts)))?;
    let model = model_info(&embedder, &dir);
    let web = config.web.enabled.then(|| {
        let web_dir = config.web.dir.clone().unwrap_or_else(|| PathBuf::from(web::DEFAULT_DIR));
        Arc::new(
            web::Web::new(web_dir, dir.clone(), model_id.clone())
                .with_visual_adapter(config.llm.visual_adapter.clone()),
        )
    });
    let relevance = if config.relevance.enabled {
        let encoder = relevance::BatchedEncoder::new(
            batcher.clone(),
            embedder.clone(),
            tokio::runtime::Handle::current(),
            model_id,
            b.max_batch_tokens,
        );
        let relevance_config = config.relevance.clone();
        let started = tokio::task::spawn_blocking(move || relevance::Relevance::start(&relevance_config, encoder));
        Some(Arc::new(started.await?.context("cannot start /relevance (relevance.enabled = false turns it off)")?))
    } else {
        None
    };
    let llm = match config.llm.model.clone() {
        None => None,
        Some(model) => {
            let llm_config = config.llm.clone();
            let started = tokio::task::spawn_blocking(move || llm::LlmService::start(&llm_config)).await?;
            let (service, thread) = started.with_context(|| format!("cannot start the decoder {model}"))?;
            eprintln!("tandem serve: decoder {}", service.describe());
            Some((service, thread))
        }
    };
    let state = Arc::new(routes::AppState {
        llm: llm.as_ref().map(|(service, _)| service.clone()),
        model,
        relevance,
        web,
        admission: Arc::new(Semaphore::new(b.max_queue_requests)),
        config: config.clone(),
        embedder,
        batcher: batcher.clone(),
        metrics,
        draining: AtomicBool::new(false),
    });

    raise_open_files(config.server.max_connections);
    let listener = listen(&config.server).await?;
    let shutdown = shutdown_signal()?;
    let (draining_tx, mut draining_rx) = watch::channel(false);
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    let on_signal = {
        let state = state.clone();
        async move {
            shutdown.await;
            state.draining.store(true, Ordering::Relaxed);
            eprintln!("tandem serve: shutting down; finishing in-flight requests");
            let _ = draining_tx.send(true);
            // Stop accepting only once the connections the kernel already accepted are taken.
            let _ = drained_rx.await;
        }
    };
    let m = &state.model;
    eprintln!(
        "tandem serve: {} ({}-d, up to {} tokens) on {}; listening on http://{}",
        m.id,
        m.dim,
        m.max_tokens,
        m.backend,
        listener.local_addr()?
    );
    if let Some(web) = &state.web {
        let addr = listener.local_addr()?;
        if !web.has_page() {
            eprintln!("tandem serve: warning: no index.html in {}; the demo at / answers 404", web.dir().display());
        } else if !web.pkg_built() {
            eprintln!(
                "tandem serve: demo page at http://{addr}/ (its WebAssembly package is not built: bash bindings/web/build.sh)"
            );
        } else {
            eprintln!("tandem serve: demo page at http://{addr}/");
        }
    }
    let listener =
        listener::CappedListener::new(listener, config.server.max_connections, draining_rx.clone(), drained_tx);
    let server = axum::serve(listener, routes::router(state.clone())?).with_graceful_shutdown(on_signal);
    let drain_timeout = Duration::from_secs(config.server.drain_timeout_secs);
    let deadline = async move {
        let _ = draining_rx.wait_for(|&d| d).await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        served = server => served.context("the server failed")?,
        () = deadline => eprintln!("tandem serve: drain timeout ({drain_timeout:?}) passed; exiting with requests in flight"),
    }
    // Every connection is closed: no handler waits on the queue any more. Let the model
    // thread finish what is left and exit.
    batcher.close();
    if let Some((service, thread)) = llm {
        service.scheduler.close();
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the decoder thread panicked"))?;
    }
    tokio::task::spawn_blocking(move || model_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the model thread panicked"))?;
    eprintln!("tandem serve: stopped");
    Ok(())
}

/// Binds `server.host:server.port` with a listen backlog of `server.backlog` (the kernel caps
/// it at `net.core.somaxconn`): a burst beyond the connection cap waits there instead of
/// being refused.
async fn listen(server: &config::ServerConfig) -> Result<tokio::net::TcpListener> {
    let addr = format!("{}:{}", server.host, server.port);
    let cannot = || format!("cannot listen on {addr}");
    let resolved = tokio::net::lookup_host(&addr).await.with_context(cannot)?.next();
    let resolved = resolved.with_context(|| format!("{addr} resolves to no address"))?;
    let socket = if resolved.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .with_context(cannot)?;
    socket.set_reuseaddr(true).with_context(cannot)?;
    socket.bind(resolved).with_context(cannot)?;
    socket.listen(server.backlog).with_context(cannot)
}

/// Each connection is a file descriptor: raises the soft open-files limit to the hard one,
/// and warns when even that is too low for `max_connections` (accepting then pauses until
/// connections close; nothing is lost, but bursts wait).
fn raise_open_files(max_connections: usize) {
    #[cfg(unix)]
    {
        // Descriptors the process needs besides connections: model files, plugins, stdio.
        const SPARE: u64 = 256;
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        let raised = unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
                // An unlimited hard limit is still capped by fs.nr_open (1,048,576 by default).
                limit.rlim_cur = limit.rlim_max.min(1 << 20);
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
            }
        };
        #[allow(clippy::unnecessary_cast, reason = "rlim_t is u64 on Linux, not on every unix")]
        let have = limit.rlim_cur as u64;
        if !raised || have < max_connections as u64 + SPARE {
            eprintln!(
                "tandem serve: warning: {have} open files allowed (ulimit -n) for server.max_connections = \
                 {max_connections}; bursts will wait for descriptors"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

/// Resolves on SIGTERM or Ctrl-C. Installed before serving so that a failure to install
/// is a startup error, not a server that cannot be stopped cleanly.
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
