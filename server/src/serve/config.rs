//! `tandem serve` settings: defaults that need no file, a TOML file (`--config`) that
//! overrides them, and command-line flags that override both.
//!
//! ```toml
//! [server]
//! host = "127.0.0.1"
//! port = 8080
//!
//! [models.embed]
//! name = "minilm"          # minilm or multilingual-e5-small, fetched on first use
//! # path = "/models/minilm" # or a local model folder (or E5S1 file)
//! backend = "auto"         # auto | cpu | wgpu | cuda
//! precision = "f32"        # f32 | bf16 (linear layers in bf16: 1.5-1.9x on CPUs with AVX-512 BF16)
//!
//! [batching]
//! max_batch_tokens = 2048
//! max_wait_ms = 2
//!
//! [relevance]
//! logic = "product"            # product | goedel | lukasiewicz; a request may pick another
//! qe_cache_entries = 200000
//! qe_cache_bytes = 67108864
//! # qe_cache = "redis://127.0.0.1:6379"  # share QE scores between replicas (the LRU stays in front)
//! qe_cache_timeout_ms = 5      # a slower Redis answer counts as a miss
//! qe_cache_ttl_secs = 86400
//! rules = "rules.toml"         # rule plugins (tandem-plugins config), relative to this file
//!
//! [llm]                        # a decoder for /v1/chat/completions, /v1/completions, /grade
//! model = "smollm2"            # a known decoder or a GGUF file; unset: no decoder
//! slots = 8                    # sequences decoded together; the KV pool is slots × slot_tokens
//! slot_tokens = 2048
//! # visual_adapter = "adapter"  # a visual adapter folder: chat messages may carry a photo
//!
//! [web]
//! enabled = true               # the in-browser demo at /
//! # dir = "web"                # its folder; the source tree's web/ by default
//! ```
//!
//! Unknown keys are errors, so a typo never silently leaves a default in place.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub models: ModelsConfig,
    pub batching: BatchingConfig,
    pub relevance: RelevanceConfig,
    pub web: WebConfig,
    pub llm: LlmConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (printed at startup).
    pub port: u16,
    /// Connections held open at once; more wait in the kernel's backlog. The process needs
    /// a file descriptor for each (`ulimit -n`).
    pub max_connections: usize,
    /// Listen backlog: connections the kernel completes and holds until the server takes
    /// them (at the connection cap, or in a burst). Capped by `net.core.somaxconn`.
    pub backlog: u32,
    /// Largest request body read; bigger bodies get 413 without being buffered.
    pub max_body_bytes: usize,
    /// Most inputs one request may carry (TEI's `max_client_batch_size`).
    pub max_client_batch_size: usize,
    /// A client that takes longer than this to send its body gets 408.
    pub body_timeout_secs: u64,
    /// On SIGTERM, how long in-flight requests may take before the process exits anyway.
    pub drain_timeout_secs: u64,
    /// Status of shed requests: 503 (default) or 429 (what TEI answers).
    pub overload_status: u16,
    /// Retry-After on shed requests.
    pub retry_after_secs: u64,
    /// When any are set, every route but `/health` (and the demo page) needs one of these in
    /// `Authorization: Bearer KEY`. Never printed by `--print-config`.
    #[serde(skip_serializing)]
    pub api_keys: Vec<String>,
    /// Origins browsers may call the API from (CORS), `"*"` for any; empty: CORS off.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            max_connections: 4096,
            backlog: 4096,
            max_body_bytes: 2_000_000,
            max_client_batch_size: 32,
            body_timeout_secs: 10,
            drain_timeout_secs: 30,
            overload_status: 503,
            retry_after_secs: 1,
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// The text encoder behind `/embed`, `/v1/embeddings` and `/rerank`.
    pub embed: EmbedModelConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedModelConfig {
    /// A text encoder the registry knows (minilm, multilingual-e5-small); fetched into the
    /// cache on first use.
    pub name: String,
    /// A local model folder (or E5S1 file); wins over `name`.
    pub path: Option<PathBuf>,
    /// auto | cpu | wgpu | cuda.
    pub backend: String,
    /// A PEFT LoRA adapter folder applied to the model.
    pub adapter: Option<PathBuf>,
    /// Fold the adapter into the weights at load instead of running the fused LoRA op.
    pub merge_adapter: bool,
    /// f32 | bf16: the linear layers' precision (bf16 halves their memory; on a CPU with
    /// AVX-512 BF16 the products run in bf16, 1.5–1.9× as fast for MiniLM on Zen 4, its
    /// embeddings within a cosine of 0.9999 of f32's).
    pub precision: String,
}

impl Default for EmbedModelConfig {
    fn default() -> Self {
        EmbedModelConfig {
            name: "minilm".into(),
            path: None,
            backend: "auto".into(),
            adapter: None,
            merge_adapter: false,
            precision: "f32".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most tokens in one forward pass. The runtime packs sequences (no padding), so this
    /// counts real tokens. On the CPU, throughput per token stops improving at a few hundred
    /// tokens per pass; 2048 keeps one pass (which cannot be cancelled) well under a second.
    pub max_batch_tokens: usize,
    /// Most requests in one forward pass; 1 turns batching off (the bench's baseline).
    pub max_batch_requests: usize,
    /// How long the first request of a batch may wait for company when the model is idle.
    pub max_wait_ms: u64,
    /// Requests admitted at once (being validated, queued or in the forward pass); the rest
    /// are shed at once.
    pub max_queue_requests: usize,
    /// Tokens waiting in the queue; a request that would pass this is shed.
    pub max_queue_tokens: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_batch_tokens: 2048,
            max_batch_requests: 64,
            max_wait_ms: 2,
            max_queue_requests: 256,
            max_queue_tokens: 64 * 1024,
        }
    }
}

/// `/relevance`: the EBRM pipeline over the embedding model, and the rule plugins after it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelevanceConfig {
    /// false: `/relevance` answers 404 and start-up skips the brand list and the taxonomy.
    pub enabled: bool,
    /// How QE scores combine when a request does not say: product, goedel or lukasiewicz.
    pub logic: String,
    /// Most items one request may rank.
    pub max_items: usize,
    /// Query-entity scores kept, bounded by count and by estimated bytes.
    pub qe_cache_entries: usize,
    pub qe_cache_bytes: usize,
    /// A Redis URL (`redis://[:password@]host:port[/db]`): QE scores are shared with the
    /// other replicas through it, with the in-process cache above as a near cache.
    pub qe_cache: Option<String>,
    /// Longest wait for Redis, in ms; a slower or failed call counts as a miss.
    pub qe_cache_timeout_ms: u64,
    /// How long a score lives in Redis.
    pub qe_cache_ttl_secs: u64,
    /// A rule-plugin config (tandem-plugins' TOML: plugins, limits, failure policies, tables),
    /// hot-reloaded. A relative path is relative to the server's config file.
    pub rules: Option<PathBuf>,
}

impl Default for RelevanceConfig {
    fn default() -> Self {
        RelevanceConfig {
            enabled: true,
            logic: "product".into(),
            max_items: 1000,
            qe_cache_entries: 200_000,
            qe_cache_bytes: 64 << 20,
            qe_cache: None,
            qe_cache_timeout_ms: 5,
            qe_cache_ttl_secs: 24 * 3600,
            rules: None,
        }
    }
}

/// The in-browser demo at `/` (the page, its WebAssembly package and the model files it
/// downloads).
/// A decoder served through OpenAI's `/v1/chat/completions` and `/v1/completions`, and
/// `/grade`; off unless a model is named.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// A known decoder (`smollm2`, `qwen2.5-coder-0.5b`; fetched on first use) or a GGUF file.
    pub model: Option<String>,
    /// auto | cpu | wgpu | cuda.
    pub backend: String,
    /// Sequences decoded together (KV-cache slots); more requests wait.
    pub slots: usize,
    /// Tokens one sequence holds, prompt and output (at most the model's context; 0: the
    /// model's context). The KV pool is slots × this.
    pub slot_tokens: usize,
    /// Sequences waiting for a slot; more are answered 503 + Retry-After.
    pub max_queue: usize,
    /// Prompt tokens prefilled per step beside the running decodes.
    pub prefill_tokens: usize,
    /// Tokens a chat completion may generate when the request does not say.
    pub default_max_tokens: usize,
    /// `/grade`'s default CumPT threshold β.
    pub grade_beta: f32,
    /// LLM embeddings (`/embed` and `/v1/embeddings` with `"model"` set to the decoder's id)
    /// take the last hidden state of the final token; with this set (a special token's
    /// text, one token of the vocabulary), that token is appended and its state taken.
    pub embed_token: Option<String>,
    /// A layer-wise visual adapter folder for the decoder (docs/visual-adapters.md): chat
    /// messages may then carry a photo (`image_url` parts with a data URL).
    pub visual_adapter: Option<PathBuf>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            model: None,
            backend: "auto".into(),
            slots: 8,
            slot_tokens: 2048,
            max_queue: 64,
            prefill_tokens: 256,
            default_max_tokens: 256,
            grade_beta: 0.5,
            embed_token: None,
            visual_adapter: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// false: `/` and the demo's files answer 404 like any unknown path.
    pub enabled: bool,
    /// The page's folder (index.html, app.js, pkg/); the source tree's `web/` when absent.
    /// A relative path is relative to the config file.
    pub dir: Option<PathBuf>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig { enabled: true, dir: None }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut config = Self::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text)?;
        Ok(config)
    }

    /// Paths in the file are relative to the file's folder.
    fn resolve_paths(&mut self, base: &Path) {
        if let Some(model) = &mut self.llm.model
            && model.ends_with(".gguf")
            && Path::new(model.as_str()).is_relative()
        {
            *model = base.join(&*model).display().to_string();
        }
        if let Some(rules) = &mut self.relevance.rules
            && rules.is_relative()
        {
            *rules = base.join(&*rules);
        }
        for path in [
            &mut self.models.embed.path,
            &mut self.models.embed.adapter,
            &mut self.web.dir,
            &mut self.llm.visual_adapter,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// Rejects settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<()> {
        let s = &self.server;
        let b = &self.batching;
        let positive = [
            ("server.max_connections", s.max_connections),
            ("server.backlog", s.backlog as usize),
            ("server.max_body_bytes", s.max_body_bytes),
            ("server.max_client_batch_size", s.max_client_batch_size),
            ("server.body_timeout_secs", s.body_timeout_secs as usize),
            ("batching.max_batch_tokens", b.max_batch_tokens),
            ("batching.max_batch_requests", b.max_batch_requests),
            ("batching.max_queue_requests", b.max_queue_requests),
            ("batching.max_queue_tokens", b.max_queue_tokens),
            ("relevance.max_items", self.relevance.max_items),
            ("relevance.qe_cache_entries", self.relevance.qe_cache_entries),
            ("relevance.qe_cache_bytes", self.relevance.qe_cache_bytes),
            ("relevance.qe_cache_timeout_ms", self.relevance.qe_cache_timeout_ms as usize),
            ("relevance.qe_cache_ttl_secs", self.relevance.qe_cache_ttl_secs as usize),
        ];
        let l = &self.llm;
        let positive = [
            positive.as_slice(),
            &[
                ("llm.slots", l.slots),
                ("llm.max_queue", l.max_queue),
                ("llm.prefill_tokens", l.prefill_tokens),
                ("llm.default_max_tokens", l.default_max_tokens),
            ],
        ]
        .concat();
        if !(l.grade_beta > 0.0 && l.grade_beta <= 1.0) {
            bail!("llm.grade_beta must be in (0, 1], not {}", l.grade_beta);
        }
        if l.slots > 1024 {
            bail!("llm.slots is {}; at most 1024", l.slots);
        }
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            bail!("{key} must be at least 1");
        }
        if s.overload_status != 503 && s.overload_status != 429 {
            bail!("server.overload_status must be 503 or 429, not {}", s.overload_status);
        }
        if b.max_wait_ms > 1000 {
            bail!(
                "batching.max_wait_ms is {} ms; more than 1000 ms of added latency is surely a mistake",
                b.max_wait_ms
            );
        }
        if self.models.embed.merge_adapter && self.models.embed.adapter.is_none() {
            bail!("models.embed.merge_adapter is set but models.embed.adapter is not");
        }
        if self.models.embed.path.is_none() && self.models.embed.name.is_empty() {
            bail!("models.embed needs a name or a path");
        }
        self.models.embed.precision.parse::<tandem_models::Precision>().context("models.embed.precision")?;
        let r = &self.relevance;
        if tandem_ebrm::Logic::from_name(&r.logic).is_none() {
            bail!("relevance.logic must be product, goedel or lukasiewicz, not {:?}", r.logic);
        }
        if r.max_items > tandem_ebrm::pipeline::MAX_ITEMS {
            bail!("relevance.max_items is {}; at most {}", r.max_items, tandem_ebrm::pipeline::MAX_ITEMS);
        }
        if r.rules.is_some() && !r.enabled {
            bail!("relevance.rules is set but relevance.enabled is false: the rules would never run");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_is_checked_when_read() {
        let c = Config::from_toml("[models.embed]\nprecision = \"bf16\"\n").unwrap();
        assert_eq!(c.models.embed.precision, "bf16");
        c.validate().unwrap();
        let err = Config::from_toml("[models.embed]\nprecision = \"int4\"\n").unwrap().validate().unwrap_err();
        assert!(format!("{err:#}").contains("unknown precision 'int4'"), "{err:#}");
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn overrides_and_keeps_the_rest() {
        let c = Config::from_toml(
            "[server]\nport = 9000\n[models.embed]\nbackend = \"cpu\"\n[batching]\nmax_batch_requests = 1\n",
        )
        .unwrap();
        assert_eq!(c.server.port, 9000);
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.models.embed.backend, "cpu");
        assert_eq!(c.models.embed.name, "minilm");
        assert_eq!(c.batching.max_batch_requests, 1);
        assert_eq!(c.batching.max_batch_tokens, BatchingConfig::default().max_batch_tokens);
    }

    #[test]
    fn paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tandem.toml");
        std::fs::write(&file, "[relevance]\nrules = \"rules/r.toml\"\n[models.embed]\npath = \"/abs/model\"\n")
            .unwrap();
        let c = Config::from_file(&file).unwrap();
        assert_eq!(c.relevance.rules.unwrap(), dir.path().join("rules/r.toml"));
        assert_eq!(c.models.embed.path.unwrap(), PathBuf::from("/abs/model"));
    }

    #[test]
    fn web_section() {
        assert!(Config::default().web.enabled);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tandem.toml");
        std::fs::write(&file, "[web]\nenabled = false\ndir = \"site\"\n").unwrap();
        let c = Config::from_file(&file).unwrap();
        assert!(!c.web.enabled);
        assert_eq!(c.web.dir.unwrap(), dir.path().join("site"));
        assert!(Config::from_toml("[web]\nenable = true\n").is_err());
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let err = Config::from_toml("[batching]\nmax_batch_token = 10\n").unwrap_err();
        assert!(format!("{err:#}").contains("max_batch_token"), "{err:#}");
        let err = Config::from_toml("[server]\nport = \"x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("port"), "{err:#}");

        let mut c = Config::default();
        c.batching.max_queue_requests = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batching.max_queue_requests"));
        let mut c = Config::default();
        c.server.overload_status = 500;
        assert!(c.validate().is_err());
        let c = Config::from_toml("[relevance]\nlogic = \"fuzzy\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("relevance.logic"));
        let c = Config::from_toml("[relevance]\nenabled = false\nrules = \"r.toml\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("relevance.rules"));
    }
}
