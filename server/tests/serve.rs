//! Starts the real `tandem serve` binary on a free port with the real model and exercises
//! every endpoint and error path over HTTP, overload, client disconnects and SIGTERM.
//!
//! The model comes from the cache (`tandem fetch minilm`; the server fetches it on first
//! use otherwise). The HTTP client is a few lines over `TcpStream` on purpose: it can send
//! what a well-behaved client library refuses to (bad UTF-8, lying Content-Length).

use serde_json::{Value, json};
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{Response, Server, send};

impl Server {
    /// JSON body, no content-type header: what `curl -d` sends (as form data).
    fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, &[], body.to_string().as_bytes())
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Response {
    /// A TEI error: the status and a JSON body whose message contains `needle`.
    fn assert_error(&self, status: u16, error_type: &str, needle: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert!(self.header("content-type").unwrap_or("").starts_with("application/json"), "{:?}", self.headers);
        let body = self.json();
        assert_eq!(body["error_type"], error_type, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
}

fn vectors(r: &Response) -> Vec<Vec<f32>> {
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        bits = bits << 6 | ALPHABET.iter().position(|&a| a == c).expect("base64 alphabet") as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    out
}

/// A product title of `words` words (469 word pieces for 400 words, special tokens included).
fn long_text(words: usize) -> String {
    (0..words).map(|i| ["trail", "running", "shoe", "waterproof", "men", "size"][i % 6]).collect::<Vec<_>>().join(" ")
}

#[test]
fn endpoints_answer_like_tei() {
    let s = Server::start(&[]);

    // The README's check: curl -d '{"inputs":"red running shoes"}' localhost:8080/embed
    let one = vectors(&s.post("/embed", &json!({"inputs": "red running shoes"})));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].len(), 384);
    assert!((norm(&one[0]) - 1.0).abs() < 1e-4);

    // A list; the same text gives the same vector whatever it is batched with.
    let many = vectors(&s.post("/embed", &json!({"inputs": ["blue denim jacket", "red running shoes", ""]})));
    assert_eq!(many.len(), 3);
    let diff = one[0].iter().zip(&many[1]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-4, "batched and alone differ by {diff}");
    assert!(many[0] != many[1]);

    // Content-type application/json works too, and normalize: true is the default.
    let r = s.request(
        "POST",
        "/embed",
        &[("content-type", "application/json")],
        br#"{"inputs": ["red running shoes"], "normalize": true, "truncate": false}"#,
    );
    assert_eq!(vectors(&r), one);

    // OpenAI-compatible embeddings, floats and base64.
    let r = s.post("/v1/embeddings", &json!({"input": ["red running shoes", "blue denim jacket"], "model": "minilm"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "minilm");
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() >= 10);
    let r = s.post("/v1/embeddings", &json!({"input": "red running shoes", "encoding_format": "base64"}));
    let b64 = r.json()["data"][0]["embedding"].as_str().unwrap().to_string();
    let floats: Vec<f32> =
        decode_base64(&b64).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(floats, one[0]);

    // Rerank with the bi-encoder: best first, scores (1 + cos) / 2 unless raw.
    let texts = ["chocolate cake recipe", "nike men's running shoe", "running socks"];
    let r = s.post("/rerank", &json!({"query": "running shoes", "texts": texts, "return_text": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let ranks = r.json();
    let ranks = ranks.as_array().unwrap();
    assert_eq!(ranks.len(), 3);
    assert_eq!(ranks[0]["index"], 1);
    assert_eq!(ranks[0]["text"], texts[1]);
    assert_eq!(ranks[2]["index"], 0);
    let raw = s.post("/rerank", &json!({"query": "running shoes", "texts": texts, "raw_scores": true})).json();
    for (scaled, raw) in ranks.iter().zip(raw.as_array().unwrap()) {
        assert_eq!(scaled["index"], raw["index"]);
        assert!(raw.get("text").is_none());
        let (scaled, raw) = (scaled["score"].as_f64().unwrap(), raw["score"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&scaled) && (-1.0..=1.0).contains(&raw));
        assert!((scaled - (1.0 + raw) / 2.0).abs() < 1e-5);
    }

    let r = s.get("/health");
    assert_eq!((r.status, r.body.len()), (200, 0));
    let info = s.get("/info").json();
    assert_eq!(info["max_input_length"], 256);
    assert_eq!(info["dim"], 384);
    assert_eq!(info["model_type"]["embedding"]["pooling"], "mean");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["max_client_batch_size"], 32);

    let metrics = s.get("/metrics");
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    let text = metrics.text();
    for needle in [
        "tandem_requests_total{route=\"/embed\",status=\"200\"} 3",
        "tandem_request_duration_seconds_bucket{route=\"/embed\",le=\"+Inf\"} 3",
        "tandem_batch_requests_count",
        "tandem_batch_tokens_bucket",
        "tandem_queue_depth 0",
        "tandem_shed_total{reason=\"queue_requests\"} 0",
        "tandem_info{",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
}

#[test]
fn bad_requests_get_json_4xx_naming_the_field() {
    let s = Server::start(&[]);
    let post = |path: &str, body: &[u8]| s.request("POST", path, &[], body);

    post("/embed", br#"{"inputs": "#).assert_error(400, "Validation", "invalid JSON");
    post("/embed", b"not json").assert_error(400, "Validation", "invalid JSON");
    post("/embed", b"").assert_error(400, "Validation", "empty");
    post("/embed", b"{\"inputs\": \"caf\xe9\"}").assert_error(400, "Validation", "UTF-8");
    post("/embed", br#"{"inputs": 5}"#).assert_error(422, "Validation", "`inputs`: invalid type: integer `5`");
    post("/embed", br#"{"inputs": ["a", null]}"#).assert_error(422, "Validation", "`inputs[1]`");
    post("/embed", br#"{"inputs": "a", "truncate": "yes"}"#).assert_error(422, "Validation", "`truncate`");
    post("/embed", br#"{"texts": ["a"]}"#).assert_error(422, "Validation", "missing field `inputs`");
    post("/embed", br#"["a"]"#).assert_error(422, "Validation", "must be a JSON object");
    post("/embed", br#"{"inputs": []}"#).assert_error(400, "Empty", "`inputs` cannot be empty");
    let too_many = json!({"inputs": vec!["a"; 33]}).to_string();
    post("/embed", too_many.as_bytes()).assert_error(413, "Validation", "`inputs` has 33 items");
    post("/embed", br#"{"inputs": "a", "normalize": false}"#).assert_error(422, "Validation", "`normalize`");
    post("/embed", br#"{"inputs": "a", "truncation_direction": "Left"}"#).assert_error(
        422,
        "Validation",
        "`truncation_direction`",
    );
    post("/embed", br#"{"inputs": "a", "prompt_name": "query"}"#).assert_error(422, "Validation", "no named prompts");

    // Over the token limit: 413 unless truncation is asked for.
    let long = long_text(400);
    let r = post("/embed", json!({"inputs": ["short", long]}).to_string().as_bytes());
    r.assert_error(413, "Validation", "`inputs[1]` has 469 tokens, more than the model's limit of 256");
    let r = post("/embed", json!({"inputs": long}).to_string().as_bytes());
    r.assert_error(413, "Validation", "`inputs` has 469 tokens");
    let truncated = vectors(&post("/embed", json!({"inputs": [long], "truncate": true}).to_string().as_bytes()));
    assert_eq!(truncated[0].len(), 384);
    let r = post("/v1/embeddings", json!({"input": long}).to_string().as_bytes());
    assert_eq!(r.status, 413);

    // Bodies over the limit: by Content-Length (refused before reading) and chunked.
    let r = s.request("POST", "/embed", &[("content-length", "3000000")], br#"{"inputs": "#);
    r.assert_error(413, "Validation", "larger than the limit of 2000000 bytes");
    let chunk = format!("{:x}\r\n{}\r\n", 1 << 20, "a".repeat(1 << 20));
    let chunked = format!("{}{}", chunk.repeat(3), "0\r\n\r\n");
    let r = s.request("POST", "/embed", &[("transfer-encoding", "chunked")], chunked.as_bytes());
    r.assert_error(413, "Validation", "larger than the limit");

    // Routes and methods.
    s.get("/nope").assert_error(404, "NotFound", "no route for GET /nope");
    s.get("/embed").assert_error(405, "MethodNotAllowed", "/embed does not accept GET");
    post("/health", b"").assert_error(405, "MethodNotAllowed", "/health");

    // /v1/embeddings errors come in TEI's OpenAI shape.
    let r = post("/v1/embeddings", br#"{"input": []}"#);
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!({"message": "`input` cannot be empty", "code": 400, "type": "Empty"}));
    let r = post("/v1/embeddings", br#"{"input": "a", "encoding_format": "hex"}"#);
    assert_eq!((r.status, r.json()["type"].as_str()), (422, Some("Validation")));

    // Rerank validation.
    post("/rerank", br#"{"query": "a", "texts": []}"#).assert_error(400, "Empty", "`texts`");
    post("/rerank", br#"{"texts": ["a"]}"#).assert_error(422, "Validation", "missing field `query`");
    post("/rerank", json!({"query": long, "texts": ["a"]}).to_string().as_bytes()).assert_error(
        413,
        "Validation",
        "`query` has 469 tokens",
    );

    // None of that hurt the server.
    assert_eq!(vectors(&post("/embed", br#"{"inputs": "still here"}"#)).len(), 1);
    assert!(!s.log().contains("panicked"), "{}", s.log());
    let text = s.get("/metrics").text();
    assert!(text.contains("tandem_requests_total{route=\"/embed\",status=\"422\"}"), "{text}");
    assert!(text.contains("tandem_requests_total{route=\"other\",status=\"404\"} 1"), "{text}");
}

/// A rule plugin built by bindings/rules/build.sh.
fn rule_wasm(kind: &str, name: &str) -> std::path::PathBuf {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../bindings/rules/out/{kind}/{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run bindings/rules/build.sh first", path.display());
    path
}

/// `/relevance` with the real model, brand list and taxonomy, and two rule plugins: the
/// brand-conflict example and a guest that loops forever (fail-open).
#[test]
fn relevance_ranks_explains_and_applies_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    let config = format!(
        "[[plugin]]\nname = \"brand-conflict\"\npath = {:?}\n\n\
         [[plugin]]\nname = \"loop\"\npath = {:?}\nfuel = 100000\ndeadline_ms = 20\nfailure = \"open\"\n",
        rule_wasm("rules", "brand-conflict"),
        rule_wasm("hostile", "loop"),
    );
    std::fs::write(&rules, config).unwrap();
    let s = Server::start(&["--rules", rules.to_str().unwrap()]);
    let items = json!([
        {"id": "knife", "title": "Stainless steel chef knife, 8 inch"},
        {"id": "adidas", "title": "Adidas Ultraboost running shoes", "brand": "Adidas",
         "category": "Apparel & Accessories > Shoes"},
        {"id": "nike", "title": "Nike Pegasus 40 men's running shoes", "brand": "Nike",
         "category": "Apparel & Accessories > Shoes"},
    ]);
    let request = json!({"query": "nike running shoes", "items": items});
    let r = s.post("/relevance", &request);
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let entities = body["query"]["entities"].as_array().unwrap();
    assert!(entities.iter().any(|e| e["kind"] == "brand" && e["value"].as_str().unwrap().eq_ignore_ascii_case("nike")));
    assert_eq!(body["logic"], "product");
    let results = body["results"].as_array().unwrap();
    let ids: Vec<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids[0], "nike", "{body:#}");
    let by_id = |id: &str| results.iter().find(|r| r["id"] == id).unwrap();
    let (nike, adidas) = (by_id("nike"), by_id("adidas"));
    assert_eq!(nike["rank"], 1);
    assert_eq!(nike["grade"], "Exact", "{nike:#}");
    // The brand conflict: the model holds the item back and names the brand; the rule vetoes.
    assert!(adidas["score"].as_f64().unwrap() < nike["score"].as_f64().unwrap());
    let explanation = adidas["explanation"].as_array().unwrap();
    assert!(explanation.iter().any(|l| l.as_str().unwrap().contains("brand")), "{adidas:#}");
    let verdict = |item: &Value, plugin: &str| -> Value {
        item["rules"].as_array().unwrap().iter().find(|v| v["plugin"] == plugin).unwrap().clone()
    };
    assert_eq!(verdict(adidas, "brand-conflict")["verdict"], "veto", "{adidas:#}");
    assert_eq!(adidas["final_score"], 0.0);
    assert_eq!(verdict(nike, "brand-conflict")["verdict"], "keep");
    assert_eq!(nike["final_score"], nike["score"]);
    // The looping plugin fails on every item; fail-open keeps the verdict and says why.
    let looped = verdict(nike, "loop");
    assert_eq!(looped["verdict"], "keep");
    assert!(looped["error"].as_str().unwrap().len() > 3, "{looped:#}");

    // The same request again: every QE score comes from the cache.
    let again = s.post("/relevance", &request).json();
    assert_eq!(again["encoded_texts"], 0, "{again:#}");
    assert!(s.metric("tandem_qe_cache_hits_total") > 0.0);
    assert!(s.metric("tandem_qe_cache_misses_total") > 0.0);
    assert!(s.metric("tandem_rule_failures_total{plugin=\"loop\"}") >= 6.0);
    assert!(s.metric("tandem_rule_calls_total{plugin=\"brand-conflict\",outcome=\"ok\"}") >= 6.0);

    // Options: another logic, no explanations, no rules, an intervention.
    let quiet = s
        .post(
            "/relevance",
            &json!({"query": "nike running shoes", "items": items, "logic": "goedel", "explain": false, "rules": false}),
        )
        .json();
    assert_eq!(quiet["logic"], "goedel");
    let first = &quiet["results"][0];
    assert!(first.get("explanation").is_none() && first.get("rules").is_none(), "{first:#}");
    assert_eq!(first["final_score"], first["score"]);
    let forgiven = s
        .post(
            "/relevance",
            &json!({"query": "nike running shoes", "items": items, "rules": false,
                    "interventions": [{"op": "set_qe", "kind": "brand", "value": "adidas", "qe": 1.0}]}),
        )
        .json();
    let adidas_after = forgiven["results"].as_array().unwrap().iter().find(|r| r["id"] == "adidas").unwrap();
    assert!(adidas_after["score"].as_f64().unwrap() > adidas["score"].as_f64().unwrap(), "{forgiven:#}");

    // Bad requests name the field.
    let post = |body: &str| s.request("POST", "/relevance", &[], body.as_bytes());
    post(r#"{"query": " ", "items": [{"title": "a"}]}"#).assert_error(400, "Empty", "`query`");
    post(r#"{"query": "a", "items": []}"#).assert_error(400, "Empty", "`items`");
    post(r#"{"query": "a", "items": [{"title": "a"}, {"brand": "x"}]}"#).assert_error(422, "Validation", "`items[1]`");
    post(r#"{"query": "a", "items": [{"title": "a", "price": -1}]}"#).assert_error(422, "Validation", "price");
    post(r#"{"query": "a", "items": [{"title": "a"}], "logic": "fuzzy"}"#).assert_error(422, "Validation", "`logic`");
    post(r#"{"query": "a", "items": [{"title": "a"}], "top": 3}"#).assert_error(422, "Validation", "`top`");
    post(r#"{"query": "a", "items": "x"}"#).assert_error(422, "Validation", "`items`");
    let many = json!({"query": "a", "items": vec![json!({"title": "a"}); 1001]}).to_string();
    post(&many).assert_error(413, "Validation", "relevance.max_items");

    let info = s.get("/info").json();
    assert_eq!(info["relevance"]["rules"].as_array().unwrap().len(), 2, "{info:#}");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// The hostile guests of the plugin tests behind `/relevance` (hot-reload host, batch path):
/// each is stopped within its limits and fails open, the server answers every request, and a
/// healthy plugin next to them still decides.
#[test]
fn relevance_contains_hostile_rule_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    let hostile = ["host-call-loop", "aliased-output", "bad-realloc", "huge-log-lines", "batch-miscount", "log-flood"];
    let mut config = String::new();
    for name in hostile {
        config += &format!("[[plugin]]\nname = {name:?}\npath = {:?}\n\n", rule_wasm("hostile", name));
    }
    config += &format!("[[plugin]]\nname = \"brand-conflict\"\npath = {:?}\n", rule_wasm("rules", "brand-conflict"));
    std::fs::write(&rules, config).unwrap();
    let s = Server::start(&["--rules", rules.to_str().unwrap(), "--no-web"]);
    let items = json!([
        {"id": "adidas", "title": "Adidas Ultraboost running shoes", "brand": "Adidas",
         "category": "Apparel & Accessories > Shoes"},
        {"id": "nike", "title": "Nike Pegasus 40 running shoes", "brand": "Nike",
         "category": "Apparel & Accessories > Shoes"},
    ]);
    for _ in 0..3 {
        let r = s.post("/relevance", &json!({"query": "nike running shoes", "items": items, "explain": false}));
        assert_eq!(r.status, 200, "{}", r.text());
        // 7 plugins, 2 items, at most 2 × 50 ms per plugin and item when a batch fails.
        assert!(r.elapsed < Duration::from_secs(20), "took {:?}", r.elapsed);
        let body = r.json();
        for item in body["results"].as_array().unwrap() {
            let verdict = |plugin: &str| {
                item["rules"].as_array().unwrap().iter().find(|v| v["plugin"] == plugin).unwrap().clone()
            };
            for name in ["host-call-loop", "aliased-output", "bad-realloc"] {
                let v = verdict(name);
                assert_eq!(v["verdict"], "keep", "{v}");
                assert!(v["error"].is_string(), "{name} must fail: {v}");
            }
            assert!(verdict("batch-miscount")["error"].is_null(), "{item:#}");
            let expected = if item["id"] == "adidas" { "veto" } else { "keep" };
            assert_eq!(verdict("brand-conflict")["verdict"], expected, "{item:#}");
        }
    }
    assert_eq!(s.get("/health").status, 200);
    let deadlines = s.metric("tandem_rule_calls_total{plugin=\"host-call-loop\",outcome=\"deadline\"}");
    assert_eq!(deadlines, 6.0, "3 requests of 2 items, each stopped at its deadline");
}

/// Each text of a request is tokenized once: the route tokenizes it to check its length and
/// the batcher embeds those ids. `tandem_tokenized_texts_total` counts every call into the
/// encoder's tokenizer, so a second tokenization anywhere (a count, then the pipeline's own)
/// would show as twice the texts.
/// `--model multilingual-e5-small` by name: TEI's `prompt_name` picks E5's prompt ("passage"
/// when absent), and `/rerank` reads its query as a query. Skips only when the model cannot
/// be fetched.
#[test]
fn e5_is_served_by_name_with_its_prompts() {
    if let Err(e) = tandem_models::fetch::ensure(tandem_models::registry::known_model("multilingual-e5-small").unwrap())
    {
        eprintln!("skipped: multilingual-e5-small cannot be fetched: {e:#}");
        return;
    }
    let s = Server::start(&["--backend", "cpu", "--model", "multilingual-e5-small", "--no-relevance", "--no-web"]);
    assert_eq!(s.get("/info").json()["model_id"], "multilingual-e5-small");
    let embed = |body: Value| vectors(&s.post("/embed", &body)).remove(0);
    let query = embed(json!({"inputs": "无线降噪耳机", "prompt_name": "query"}));
    let passage = embed(json!({"inputs": "无线降噪耳机", "prompt_name": "passage"}));
    assert_eq!(embed(json!({"inputs": "无线降噪耳机"})), passage);
    let dot: f32 = query.iter().zip(&passage).map(|(a, b)| a * b).sum();
    assert!(dot < 0.99, "a query and a passage differ: cosine {dot}");
    s.post("/embed", &json!({"inputs": "a", "prompt_name": "title"})).assert_error(
        422,
        "Validation",
        "\"title\" is not one of this model's prompts (query, passage)",
    );
    let ranks =
        s.post("/rerank", &json!({"query": "无线降噪耳机", "texts": ["Pro 2 登山杖", "索尼 WF-1000XM5 降噪耳机"]}));
    assert_eq!(ranks.json()[0]["index"], 1, "{}", ranks.text());
}

#[test]
fn each_text_is_tokenized_once() {
    let s = Server::start(&["--no-relevance", "--no-web"]);
    let tokenized = || s.metric("tandem_tokenized_texts_total");
    let mut before = tokenized();
    let mut check = |texts: f64, what: &str| {
        let now = tokenized();
        assert_eq!(now - before, texts, "{what}");
        before = now;
    };
    let long = long_text(400);
    let r = s.post("/embed", &json!({"inputs": ["red shoes", "blue phone case", long], "truncate": true}));
    assert_eq!(vectors(&r).len(), 3);
    check(3.0, "/embed");
    let r = s.post("/v1/embeddings", &json!({"input": ["red shoes", "trail runner"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    check(2.0, "/v1/embeddings");
    let r = s.post("/rerank", &json!({"query": "red shoes", "texts": ["red running shoes", "phone case"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    check(3.0, "/rerank: the query and its texts");
    // Refused for its length after one tokenization, with the count that tokenization gave.
    let r = s.post("/embed", &json!({"inputs": ["red shoes", long]}));
    r.assert_error(413, "Validation", "`inputs[1]` has 469 tokens");
    check(2.0, "a refused /embed");
}

/// Many concurrent clients against a queue of 4: the excess is refused at once with 503
/// and Retry-After, every request gets an answer, and the server goes on serving.
#[test]
fn overload_is_shed_fast_and_the_server_keeps_serving() {
    let s = Server::start(&["--max-queue-requests", "4", "--max-batch-requests", "1", "--no-relevance"]);
    let r = s.post("/relevance", &json!({"query": "x", "items": [{"title": "y"}]}));
    r.assert_error(404, "NotFound", "relevance.enabled = false");
    let body = json!({"inputs": vec![long_text(60); 16]}).to_string();
    let addr = s.addr.clone();
    let clients: Vec<_> = (0..120)
        .map(|_| {
            let (addr, body) = (addr.clone(), body.clone());
            std::thread::spawn(move || send(&addr, "POST", "/embed", &[], body.as_bytes()))
        })
        .collect();
    let responses: Vec<Response> = clients.into_iter().map(|c| c.join().unwrap().expect("a request failed")).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let shed: Vec<&Response> = responses.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + shed.len(), responses.len(), "only 200 and 503 expected");
    assert!(ok >= 4 && shed.len() >= 50, "{ok} ok, {} shed", shed.len());
    for r in &shed {
        assert_eq!(r.header("retry-after"), Some("1"));
        r.assert_error(503, "Overloaded", "retry later");
        // Refused at once, not after waiting in a queue.
        assert!(r.elapsed < Duration::from_secs(2), "a 503 took {:?}", r.elapsed);
    }
    assert_eq!(vectors(&s.post("/embed", &json!({"inputs": "after the burst"}))).len(), 1);
    assert!(s.metric("tandem_shed_total{reason=\"queue_requests\"}") >= shed.len() as f64);
    assert_eq!(s.metric("tandem_admitted_requests"), 0.0);
}

/// A client that disconnects while its request waits in the queue costs no forward pass.
#[test]
fn client_disconnect_cancels_queued_work() {
    let s = Server::start(&["--max-batch-requests", "1"]);
    let slow = json!({"inputs": vec![long_text(60); 16]}).to_string();
    // Keep the model busy for a while.
    let addr = s.addr.clone();
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let (addr, slow) = (addr.clone(), slow.clone());
            std::thread::spawn(move || send(&addr, "POST", "/embed", &[], slow.as_bytes()).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // Queue requests and hang up before they are answered.
    for _ in 0..5 {
        let mut stream = TcpStream::connect(&s.addr).unwrap();
        let head = format!("POST /embed HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", slow.len());
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(slow.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        stream.shutdown(Shutdown::Both).unwrap();
    }
    for b in busy {
        assert_eq!(b.join().unwrap().status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.metric("tandem_cancelled_total") < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.metric("tandem_cancelled_total") >= 1.0, "{}", s.get("/metrics").text());
    assert!(s.metric("tandem_requests_total{route=\"/embed\",status=\"499\"}") >= 1.0);
}

/// SIGTERM: requests already in flight finish with 200, then the process exits 0.
#[test]
fn sigterm_drains_in_flight_requests() {
    let mut s = Server::start(&["--max-batch-requests", "1"]);
    let body = json!({"inputs": vec![long_text(60); 16]}).to_string();
    let addr = s.addr.clone();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (addr, body) = (addr.clone(), body.clone());
            std::thread::spawn(move || send(&addr, "POST", "/embed", &[], body.as_bytes()))
        })
        .collect();
    // Wait until all six are admitted, then ask the server to stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("tandem_admitted_requests") < 6.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    s.sigterm();
    for c in clients {
        let r = c.join().unwrap().expect("an in-flight request was dropped");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json().as_array().unwrap().len(), 16);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert!(s.log().contains("shutting down"), "{}", s.log());
    assert!(TcpStream::connect(&s.addr).is_err(), "still accepting after exit");
}
