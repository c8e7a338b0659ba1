//! Prometheus metrics in the text exposition format, written by hand: a handful of
//! counters and fixed-bucket histograms do not need a metrics framework.
//!
//! Label values come from closed sets (known routes, status codes), so the number of
//! series is bounded whatever clients send.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Seconds: from well under a CPU forward pass to the drain timeout.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const TOKEN_BUCKETS: &[f64] = &[16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// `labels` is either empty or `key="value",` pairs ending in a comma.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = self.bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() { String::new() } else { format!("{{{plain}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// What one forward pass did, for the batch histograms.
#[derive(Debug, Clone, Copy)]
pub struct BatchStats {
    pub requests: usize,
    pub inputs: usize,
    pub tokens: usize,
    pub forward: Duration,
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ShedReason {
    QueueRequests,
    QueueTokens,
}

impl ShedReason {
    fn label(self) -> &'static str {
        match self {
            ShedReason::QueueRequests => "queue_requests",
            ShedReason::QueueTokens => "queue_tokens",
        }
    }
}

/// Gauges read at scrape time from their owners.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub queue_requests: usize,
    pub queue_tokens: usize,
    pub admitted: usize,
    pub draining: bool,
    /// Texts the encoder's tokenizer has read (a counter kept by the model).
    pub tokenized_texts: u64,
    /// `/relevance`'s QE cache, when it is enabled.
    pub qe_cache: Option<tandem_ebrm::CacheStats>,
    /// Its Redis tier, when the QE cache is shared.
    pub qe_cache_redis: Option<super::qe_cache::RedisStats>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (route, status) -> count; status "499" when the client went away first.
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    shed: BTreeMap<ShedReason, u64>,
    batch_requests: Option<Histogram>,
    batch_inputs: Option<Histogram>,
    batch_tokens: Option<Histogram>,
    forward_seconds: Option<Histogram>,
    queue_wait_seconds: Option<Histogram>,
    llm_first_token_seconds: Option<Histogram>,
    llm_inter_token_seconds: Option<Histogram>,
    /// (plugin, outcome) -> calls; outcome is "ok" or the failure kind. Plugin names come
    /// from the operator's config, so the set is bounded.
    rule_calls: BTreeMap<(String, &'static str), u64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    cancelled_jobs: AtomicU64,
    backend_errors: AtomicU64,
}

/// The status recorded when the client disconnected before the response (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic elsewhere while holding this lock leaves counters that are still usable.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }

    pub fn observe_request(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.with(|m| {
            *m.requests.entry((route, status)).or_default() += 1;
            m.latency.entry(route).or_insert_with(|| Histogram::new(LATENCY_BUCKETS)).observe(elapsed.as_secs_f64());
        });
    }

    pub fn observe_shed(&self, reason: ShedReason) {
        self.with(|m| *m.shed.entry(reason).or_default() += 1);
    }

    pub fn observe_batch(&self, b: BatchStats) {
        self.with(|m| {
            let h =
                |slot: &mut Option<Histogram>, bounds, v| slot.get_or_insert_with(|| Histogram::new(bounds)).observe(v);
            h(&mut m.batch_requests, COUNT_BUCKETS, b.requests as f64);
            h(&mut m.batch_inputs, COUNT_BUCKETS, b.inputs as f64);
            h(&mut m.batch_tokens, TOKEN_BUCKETS, b.tokens as f64);
            h(&mut m.forward_seconds, LATENCY_BUCKETS, b.forward.as_secs_f64());
        });
    }

    pub fn observe_queue_wait(&self, waited: Duration) {
        self.with(|m| {
            m.queue_wait_seconds.get_or_insert_with(|| Histogram::new(LATENCY_BUCKETS)).observe(waited.as_secs_f64())
        });
    }

    /// A queued request whose client left before its forward pass: its work was skipped.
    /// A decoder choice's time from submission to its first token.
    pub fn observe_llm_first_token(&self, d: Duration) {
        self.with(|m| {
            m.llm_first_token_seconds.get_or_insert_with(|| Histogram::new(LATENCY_BUCKETS)).observe(d.as_secs_f64())
        })
    }

    /// Time between two tokens of one decoder choice.
    pub fn observe_llm_inter_token(&self, d: Duration) {
        self.with(|m| {
            m.llm_inter_token_seconds.get_or_insert_with(|| Histogram::new(LATENCY_BUCKETS)).observe(d.as_secs_f64())
        })
    }

    pub fn observe_cancelled(&self, n: u64) {
        self.cancelled_jobs.fetch_add(n, Ordering::Relaxed);
    }

    /// One rule-plugin call; `failure` is the error kind when the plugin failed (its failure
    /// policy's verdict applied).
    pub fn observe_rule(&self, plugin: &str, failure: Option<&'static str>) {
        self.with(|m| {
            let key = (plugin.to_string(), failure.unwrap_or("ok"));
            *m.rule_calls.entry(key).or_default() += 1;
        });
    }

    pub fn observe_backend_error(&self) {
        self.backend_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, g: Gauges, info: &[(&str, &str)]) -> String {
        let mut out = String::with_capacity(8 << 10);
        let labels: Vec<String> = info.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        header(&mut out, "tandem_info", "gauge", "Build and model information.");
        let _ = writeln!(out, "tandem_info{{{}}} 1", labels.join(","));

        self.with(|m| {
            header(
                &mut out,
                "tandem_requests_total",
                "counter",
                "HTTP requests by route and status (499: client closed first).",
            );
            for ((route, status), n) in &m.requests {
                let _ = writeln!(out, "tandem_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
            header(&mut out, "tandem_request_duration_seconds", "histogram", "HTTP request latency by route.");
            for (route, h) in &m.latency {
                h.render(&mut out, "tandem_request_duration_seconds", &format!("route=\"{route}\","));
            }
            header(&mut out, "tandem_shed_total", "counter", "Requests refused at once because the queue was full.");
            for reason in [ShedReason::QueueRequests, ShedReason::QueueTokens] {
                let n = m.shed.get(&reason).copied().unwrap_or(0);
                let _ = writeln!(out, "tandem_shed_total{{reason=\"{}\"}} {n}", reason.label());
            }
            let hists = [
                ("tandem_batch_requests", "Requests per forward pass.", &m.batch_requests, COUNT_BUCKETS),
                ("tandem_batch_inputs", "Texts per forward pass.", &m.batch_inputs, COUNT_BUCKETS),
                (
                    "tandem_batch_tokens",
                    "Tokens per forward pass (packed, no padding).",
                    &m.batch_tokens,
                    TOKEN_BUCKETS,
                ),
                ("tandem_forward_duration_seconds", "Time of one forward pass.", &m.forward_seconds, LATENCY_BUCKETS),
                (
                    "tandem_queue_wait_seconds",
                    "Time from admission to the start of the forward pass.",
                    &m.queue_wait_seconds,
                    LATENCY_BUCKETS,
                ),
                (
                    "tandem_llm_time_to_first_token_seconds",
                    "Decoder: time from submission to a choice's first token.",
                    &m.llm_first_token_seconds,
                    LATENCY_BUCKETS,
                ),
                (
                    "tandem_llm_inter_token_seconds",
                    "Decoder: time between two tokens of a choice.",
                    &m.llm_inter_token_seconds,
                    LATENCY_BUCKETS,
                ),
            ];
            for (name, help, h, bounds) in hists {
                header(&mut out, name, "histogram", help);
                h.clone().unwrap_or_else(|| Histogram::new(bounds)).render(&mut out, name, "");
            }
            header(
                &mut out,
                "tandem_rule_calls_total",
                "counter",
                "Rule-plugin calls by plugin and outcome (ok, or why the plugin failed).",
            );
            let mut failures: BTreeMap<&str, u64> = BTreeMap::new();
            for ((plugin, outcome), n) in &m.rule_calls {
                let _ =
                    writeln!(out, "tandem_rule_calls_total{{plugin=\"{}\",outcome=\"{outcome}\"}} {n}", escape(plugin));
                let f = failures.entry(plugin).or_default();
                if *outcome != "ok" {
                    *f += n;
                }
            }
            header(
                &mut out,
                "tandem_rule_failures_total",
                "counter",
                "Rule-plugin calls that failed (the plugin's failure policy decided).",
            );
            for (plugin, n) in failures {
                let _ = writeln!(out, "tandem_rule_failures_total{{plugin=\"{}\"}} {n}", escape(plugin));
            }
        });

        let counters = [
            (
                "tandem_cancelled_total",
                "Queued requests skipped because the client disconnected.",
                &self.cancelled_jobs,
            ),
            ("tandem_backend_errors_total", "Forward passes that failed.", &self.backend_errors),
        ];
        for (name, help, v) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        header(
            &mut out,
            "tandem_tokenized_texts_total",
            "counter",
            "Texts the encoder tokenized: each text of a request once, and /relevance's entity texts.",
        );
        let _ = writeln!(out, "tandem_tokenized_texts_total {}", g.tokenized_texts);
        let gauges = [
            ("tandem_queue_depth", "Requests waiting for a forward pass.", g.queue_requests),
            ("tandem_queue_tokens", "Tokens waiting for a forward pass.", g.queue_tokens),
            ("tandem_admitted_requests", "Requests admitted: validating, queued or in a forward pass.", g.admitted),
            ("tandem_draining", "1 while shutting down.", g.draining as usize),
        ];
        for (name, help, v) in gauges {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        }
        if let Some(c) = g.qe_cache {
            let series = [
                ("tandem_qe_cache_hits_total", "counter", "QE scores found in the cache.", c.hits as usize),
                ("tandem_qe_cache_misses_total", "counter", "QE scores the model had to compute.", c.misses as usize),
                (
                    "tandem_qe_cache_evictions_total",
                    "counter",
                    "QE scores evicted to stay in bounds.",
                    c.evictions as usize,
                ),
                ("tandem_qe_cache_entries", "gauge", "QE scores cached.", c.entries),
                ("tandem_qe_cache_bytes", "gauge", "Estimated bytes of the QE cache.", c.bytes),
            ];
            for (name, kind, help, v) in series {
                header(&mut out, name, kind, help);
                let _ = writeln!(out, "{name} {v}");
            }
        }
        if let Some(r) = g.qe_cache_redis {
            let series = [
                ("tandem_qe_cache_redis_hits_total", "QE scores the near cache lacked and Redis had.", r.hits),
                ("tandem_qe_cache_redis_misses_total", "QE scores neither the near cache nor Redis had.", r.misses),
                (
                    "tandem_qe_cache_redis_errors_total",
                    "Redis calls that failed or timed out (counted as misses).",
                    r.errors,
                ),
            ];
            for (name, help, v) in series {
                header(&mut out, name, "counter", help);
                let _ = writeln!(out, "{name} {v}");
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label values escape backslash, quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "route=\"/embed\",");
        assert!(out.contains("x_bucket{route=\"/embed\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{route=\"/embed\",le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{route=\"/embed\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{route=\"/embed\"} 6\n"), "{out}");
        assert!(out.contains("x_count{route=\"/embed\"} 4\n"), "{out}");
    }

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        m.observe_request("/embed", 200, Duration::from_millis(3));
        m.observe_shed(ShedReason::QueueRequests);
        m.observe_batch(BatchStats { requests: 3, inputs: 5, tokens: 40, forward: Duration::from_millis(4) });
        m.observe_rule("brand", None);
        m.observe_rule("brand", Some("fuel"));
        let qe_cache = Some(tandem_ebrm::CacheStats { hits: 7, ..Default::default() });
        let out = m.render(Gauges { queue_requests: 2, qe_cache, ..Default::default() }, &[("model", "mini\"lm")]);
        assert!(out.contains("tandem_rule_calls_total{plugin=\"brand\",outcome=\"fuel\"} 1"), "{out}");
        assert!(out.contains("tandem_rule_failures_total{plugin=\"brand\"} 1"), "{out}");
        assert!(out.contains("tandem_qe_cache_hits_total 7"), "{out}");
        assert!(out.contains("tandem_info{model=\"mini\\\"lm\"} 1"), "{out}");
        assert!(out.contains("tandem_requests_total{route=\"/embed\",status=\"200\"} 1"), "{out}");
        assert!(out.contains("tandem_shed_total{reason=\"queue_requests\"} 1"), "{out}");
        assert!(out.contains("tandem_batch_requests_bucket{le=\"4\"} 1"), "{out}");
        assert!(out.contains("tandem_queue_depth 2"), "{out}");
        // Every sample line is `name{...} value` or `name value`.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
