//! Who may call, and what a caller that leaves costs: API keys (flag and environment, every
//! route but `/health`), CORS (off by default), and a client that disconnects during
//! `/relevance` stopping its work.

use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{Server, send};

fn post(s: &Server, path: &str, headers: &[(&str, &str)]) -> common::Response {
    s.request("POST", path, headers, json!({"inputs": "red shoes"}).to_string().as_bytes())
}

fn metric(s: &Server, name: &str) -> f64 {
    let text = s.request("GET", "/metrics", &[("authorization", "Bearer k1")], b"").text();
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

#[test]
fn api_keys_guard_every_route_but_health() {
    // The environment's keys are added to the flag's (a Path is what start_with_env takes).
    let s = Server::start_with_env(
        &["--api-key", "k1", "--no-relevance", "--no-web"],
        &[("TANDEM_API_KEY", Path::new("k2, k3"))],
    );
    assert_eq!(s.get("/health").status, 200, "load balancers probe without a key");
    for (path, method) in
        [("/embed", "POST"), ("/rerank", "POST"), ("/v1/embeddings", "POST"), ("/info", "GET"), ("/metrics", "GET")]
    {
        for headers in [&[][..], &[("authorization", "Bearer wrong")], &[("authorization", "k1")]] {
            let r = s.request(method, path, headers, b"{}");
            assert_eq!(r.status, 401, "{method} {path} {headers:?}: {}", r.text());
            assert_eq!(r.json()["error_type"], "Unauthorized");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    for key in ["k1", "k2", "k3"] {
        let r = post(&s, "/embed", &[("authorization", &format!("Bearer {key}"))]);
        assert_eq!(r.status, 200, "{key}: {}", r.text());
    }
    assert!(metric(&s, "tandem_requests_total{route=\"/embed\",status=\"401\"}") >= 3.0);

    // Keys are secrets: --print-config leaves them out.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["serve", "--api-key", "a-secret-key", "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("a-secret-key"));
}

#[test]
fn cors_is_off_unless_origins_are_listed() {
    let origin = "https://shop.example";
    let preflight = [
        ("origin", origin),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "authorization,content-type"),
    ];
    let off = Server::start(&["--no-relevance", "--no-web"]);
    let r = post(&off, "/embed", &[("origin", origin)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);

    let on = Server::start(&["--no-relevance", "--no-web", "--cors-origin", origin, "--api-key", "k1"]);
    // The preflight carries no key and must pass anyway.
    let r = on.request("OPTIONS", "/embed", &preflight, b"");
    assert!(r.status < 300, "{} {:?}", r.status, r.headers);
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    assert!(r.header("access-control-allow-headers").unwrap_or("").contains("authorization"), "{:?}", r.headers);
    let r = post(&on, "/embed", &[("origin", origin), ("authorization", "Bearer k1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    let r = post(&on, "/embed", &[("origin", "https://elsewhere.example"), ("authorization", "Bearer k1")]);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

/// A client that leaves during a long `/relevance` frees its work: the encodes it had queued
/// are dropped before they run (`tandem_cancelled_total`), instead of the blocking task
/// running the request to its end for nobody.
#[test]
fn a_client_leaving_relevance_stops_its_work() {
    // One small request per forward pass, so a large request's encodes queue up.
    let s = Server::start(&["--max-batch-requests", "1", "--max-batch-tokens", "64", "--no-web", "--api-key", "k1"]);
    let items: Vec<_> = (0..600)
        .map(|i| json!({"id": i, "title": format!("assorted product number {i} for the test shelf")}))
        .collect();
    let body = json!({"query": "nike running shoes", "items": items}).to_string();
    // With a cold cache the server embeds the taxonomy through the same batcher before it
    // listens: those batches are not this request's.
    let started_with = metric(&s, "tandem_batch_requests_count");
    let mut stream = TcpStream::connect(&s.addr).unwrap();
    let head = format!(
        "POST /relevance HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    // Leave once this request's work is under way (generous bounds: a loaded CI machine is
    // slow), counted from the batches before the request (`started_with`).
    let deadline = Instant::now() + Duration::from_secs(240);
    while metric(&s, "tandem_batch_requests_count") < started_with + 3.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(metric(&s, "tandem_batch_requests_count") >= started_with + 3.0, "the request's encodes never started");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&s, "tandem_cancelled_total") == 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(metric(&s, "tandem_cancelled_total") > 0.0, "the request's queued encodes still ran");
    // And the server serves the next request.
    let r = send(&s.addr, "POST", "/embed", &[("authorization", "Bearer k1")], br#"{"inputs": "after"}"#).unwrap();
    assert_eq!(r.status, 200);
}
