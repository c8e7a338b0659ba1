//! The QE cache shared through a real Redis (`redis-server`, started on a free loopback port):
//! a replica answers from what another computed, and Redis faults (killed mid-load, paused,
//! a wrong password) cost speed, never answers. Skips, saying why, without redis-server.

use serde_json::{Value, json};
use std::time::Duration;

mod common;
use common::redis::Redis;
use common::{Server, send};

const PASSWORD: &str = "tandem-test";

/// A server whose QE cache is `url`, waiting up to `timeout_ms` for Redis.
fn replica(url: &str, timeout_ms: u64) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tandem.toml");
    std::fs::write(&config, format!("[relevance]\nqe_cache = {url:?}\nqe_cache_timeout_ms = {timeout_ms}\n")).unwrap();
    (Server::start(&["--config", config.to_str().unwrap(), "--no-web"]), dir)
}

/// Items with explicit categories, so only QE scores (not title categories) need the model.
fn items(brand: &str) -> Value {
    json!([
        {"id": "a", "title": format!("{brand} running shoes, blue"), "brand": brand,
         "category": "Apparel & Accessories > Shoes", "color": "blue"},
        {"id": "b", "title": "Adidas trail running shoes", "brand": "Adidas",
         "category": "Apparel & Accessories > Shoes"},
        {"id": "c", "title": format!("{brand} leather backpack"), "brand": brand,
         "category": "Luggage & Bags > Backpacks"},
    ])
}

fn relevance(addr: &str, query: &str, items: &Value) -> Value {
    let body = json!({"query": query, "items": items, "explain": false}).to_string();
    let r = send(addr, "POST", "/relevance", &[("content-type", "application/json")], body.as_bytes())
        .unwrap_or_else(|e| panic!("/relevance at {addr}: {e}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Final score by item id.
fn scores(answer: &Value) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r["final_score"].as_f64().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn metric(server: &Server, name: &str) -> f64 {
    let text = server.get("/metrics").text();
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

#[test]
fn a_replica_answers_from_scores_another_computed() {
    let Some(redis) = Redis::start(Some(PASSWORD)) else { return };
    let url = redis.url(Some(PASSWORD));
    // A generous timeout: this test is about sharing, not about a slow, shared machine.
    let (a, _ca) = replica(&url, 500);
    let (b, _cb) = replica(&url, 500);
    let query = "nike running shoes";
    // Query analysis is per replica (only QE scores are shared): B sees the query once, with
    // an item whose entities share nothing with the ones below.
    let unrelated = json!([{"id": "z", "title": "garden hose 50 ft", "category": "Home & Garden"}]);
    relevance(&b.addr, query, &unrelated);

    let first = relevance(&a.addr, query, &items("Nike"));
    assert!(first["encoded_texts"].as_u64().unwrap() > 0, "{first:#}");
    let keys = redis.command(Some(PASSWORD), &["DBSIZE"]);
    assert!(keys.starts_with(':') && keys != ":0", "A stored nothing in Redis: {keys}");

    let second = relevance(&b.addr, query, &items("Nike"));
    assert_eq!(second["encoded_texts"], 0, "B recomputed what A stored: {second:#}");
    assert_eq!(scores(&first), scores(&second));
    assert!(metric(&b, "tandem_qe_cache_redis_hits_total") > 0.0);
    assert_eq!(metric(&b, "tandem_qe_cache_redis_errors_total"), 0.0);
}

#[test]
fn redis_faults_cost_speed_never_answers() {
    let Some(mut redis) = Redis::start(Some(PASSWORD)) else { return };
    // A few ms (the default is 5; more here, for a shared, loaded test machine): a fault
    // must not make anything wait longer than that.
    let (shared, _c) = replica(&redis.url(Some(PASSWORD)), 25);
    let plain = Server::start(&["--no-web"]);
    // New queries in every phase, so that the near cache cannot hide Redis.
    let mut n = 0;
    let mut phase = |what: &str, during: &mut dyn FnMut()| {
        let brands = ["Puma", "Asics", "Reebok", "Salomon"];
        let handles: Vec<_> = brands
            .iter()
            .map(|brand| {
                n += 1;
                let addr = shared.addr.clone();
                let query = format!("{} running shoes size {n}", brand.to_lowercase());
                let items = items(brand);
                std::thread::spawn(move || (relevance(&addr, &query, &items), query, items))
            })
            .collect();
        during();
        for h in handles {
            let (answer, query, items) = h.join().unwrap_or_else(|_| panic!("{what}: a request was lost"));
            let expected = relevance(&plain.addr, &query, &items);
            // The same answer up to float rounding: the shared replica encodes these texts
            // batched with the other phase's requests and the plain server one request at a
            // time, and the CPU's matmul kernel depends on the batch's row count (a few rows
            // read the weights in place, many go through a packing GEMM).
            let (got, want) = (scores(&answer), scores(&expected));
            let same = got.len() == want.len()
                && got.iter().zip(&want).all(|((a, x), (b, y))| a == b && (x - y).abs() <= 1e-5);
            assert!(same, "{what}: {query}: {got:?} vs {want:?}");
        }
    };
    phase("healthy", &mut || {});
    let keys = redis.command(Some(PASSWORD), &["DBSIZE"]);
    assert!(keys.starts_with(':') && keys != ":0", "nothing reached Redis: {keys}");
    phase("Redis killed mid-load", &mut || {
        std::thread::sleep(Duration::from_millis(50));
        redis.kill();
    });
    redis.restart(Some(PASSWORD));
    // DEBUG SLEEP holds Redis for 2 s: every call in that time times out.
    let port = redis.port;
    let sleeper = std::thread::spawn(move || Redis::command_on(port, Some(PASSWORD), &["DEBUG", "SLEEP", "2"]));
    std::thread::sleep(Duration::from_millis(50));
    phase("Redis paused", &mut || {});
    assert_eq!(sleeper.join().unwrap(), "+OK", "DEBUG SLEEP did not run");
    redis.restart(Some("another-password"));
    phase("wrong password", &mut || {});
    assert!(metric(&shared, "tandem_qe_cache_redis_errors_total") >= 2.0);
    assert!(shared.log().contains("QE cache: Redis failed"), "{}", shared.log());
}
