//! `tandem serve --llm`: OpenAI's chat and completion routes (whole and streamed), `/grade`,
//! bad requests, concurrent streams with clients that leave, and SIGTERM during a stream, on
//! the tiny synthetic decoder (no fetch); then the official `openai` Python client against
//! SmolLM2, its greedy text equal to `tandem generate`'s.

mod common;

use common::{Server, send};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tandem_models::testing::tiny_llama_gguf;
use tandem_runtime::weights::gguf;

/// The tiny decoder and a config serving it on the CPU: 2 slots of its whole context (128),
/// 2 queued sequences at most.
fn tiny_setup(dir: &Path) -> PathBuf {
    let (metadata, tensors) = tiny_llama_gguf();
    std::fs::write(dir.join("tiny.gguf"), gguf::to_bytes(&metadata, &tensors, 32).unwrap()).unwrap();
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        "[llm]\nmodel = \"tiny.gguf\"\nslots = 2\nslot_tokens = 128\nmax_queue = 2\nprefill_tokens = 16\n\n\
         [relevance]\nenabled = false\n\n[web]\nenabled = false\n",
    )
    .unwrap();
    config
}

fn start_tiny(dir: &Path) -> Server {
    let config = tiny_setup(dir);
    Server::start(&["--config", config.to_str().unwrap(), "--backend", "cpu"])
}

fn post(s: &Server, path: &str, body: &Value) -> common::Response {
    s.request("POST", path, &[("content-type", "application/json")], body.to_string().as_bytes())
}

/// A streamed request read event by event: the status and the `data:` payloads. With
/// `leave_after`, the client closes the connection after that many events.
fn stream(addr: &str, path: &str, body: &Value, leave_after: Option<usize>) -> (u16, Vec<String>) {
    let body = body.to_string();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body.as_bytes()).unwrap();
    let mut lines = BufReader::new(conn).lines();
    let status_line = lines.next().unwrap().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut events = Vec::new();
    for line in lines {
        let Ok(line) = line else { break };
        // Chunk sizes and blank separators interleave; SSE payloads start with "data:".
        if let Some(data) = line.strip_prefix("data: ") {
            events.push(data.to_string());
            if leave_after == Some(events.len()) {
                return (status, events);
            }
        }
    }
    (status, events)
}

/// The text of a stream's chunks, its finish reasons and its usage chunk.
fn stream_text(events: &[String]) -> (String, Vec<String>, Option<Value>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "the stream ends with [DONE]: {events:?}");
    let (mut text, mut finishes, mut usage) = (String::new(), Vec::new(), None);
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"));
        assert!(chunk.get("error").is_none(), "{chunk}");
        if !chunk["usage"].is_null() {
            usage = Some(chunk["usage"].clone());
        }
        for c in chunk["choices"].as_array().unwrap() {
            text += c["delta"]["content"].as_str().or(c["text"].as_str()).unwrap_or("");
            if let Some(f) = c["finish_reason"].as_str() {
                finishes.push(f.to_string());
            }
        }
    }
    (text, finishes, usage)
}

#[test]
fn completions_chat_and_grading_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_tiny(dir.path());
    let models = s.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "tiny", "{models}");

    // Greedy, whole: the same text as `tandem generate --raw`.
    let request = json!({"model": "tiny", "prompt": "ab", "max_tokens": 20, "temperature": 0});
    let whole = post(&s, "/v1/completions", &request).json();
    let text = whole["choices"][0]["text"].as_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["generate", "--model", dir.path().join("tiny.gguf").to_str().unwrap(), "--backend", "cpu"])
        .args(["--raw", "--max-tokens", "20", "--json", "ab"])
        .output()
        .unwrap();
    let generated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(text, generated["text"].as_str().unwrap(), "{whole}");
    let finish = if generated["finish"] == "eog" { "stop" } else { "length" };
    assert_eq!(whole["choices"][0]["finish_reason"], finish);
    assert_eq!(whole["usage"]["prompt_tokens"], 2);

    // Streamed: the same text in pieces, a finish reason, the usage, then [DONE].
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, events) = stream(&s.addr, "/v1/completions", &streamed, None);
    assert_eq!(status, 200);
    let (pieces, finishes, usage) = stream_text(&events);
    assert_eq!(pieces, text);
    assert_eq!(finishes, [finish]);
    assert_eq!(usage.unwrap()["completion_tokens"], whole["usage"]["completion_tokens"]);

    // Chat through the file's template, streamed and whole alike.
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "temperature": 0});
    let whole_chat = post(&s, "/v1/chat/completions", &chat).json();
    assert_eq!(whole_chat["object"], "chat.completion");
    assert_eq!(whole_chat["choices"][0]["message"]["role"], "assistant");
    let mut streamed_chat = chat.clone();
    streamed_chat["stream"] = json!(true);
    let (_, events) = stream(&s.addr, "/v1/chat/completions", &streamed_chat, None);
    assert_eq!(stream_text(&events).0, whole_chat["choices"][0]["message"]["content"].as_str().unwrap());

    // n choices, sampled: reproducible by seed; logprobs per token.
    let sampled = json!({"prompt": "abc", "max_tokens": 10, "n": 3, "temperature": 1.0, "seed": 7, "logprobs": 2});
    let a = post(&s, "/v1/completions", &sampled).json();
    let b = post(&s, "/v1/completions", &sampled).json();
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    assert_eq!(a["choices"], b["choices"], "the same seed gives the same choices");
    for c in a["choices"].as_array().unwrap() {
        let lps = c["logprobs"]["token_logprobs"].as_array().unwrap();
        assert!(!lps.is_empty() && lps.iter().all(|l| l.as_f64().unwrap() <= 0.0), "{c}");
        assert!(c["logprobs"]["top_logprobs"][0].as_object().unwrap().len() <= 2);
    }

    // A stop string cuts the text before it.
    let long = post(&s, "/v1/completions", &json!({"prompt": "xy", "max_tokens": 30, "temperature": 0})).json();
    let long_text = long["choices"][0]["text"].as_str().unwrap();
    if let Some((at, _)) = long_text.char_indices().nth(4) {
        let stop: String = long_text[at..].chars().take(2).collect();
        let cut = long_text.find(&stop).unwrap();
        let body = json!({"prompt": "xy", "max_tokens": 30, "temperature": 0, "stop": [stop]});
        let stopped = post(&s, "/v1/completions", &body).json();
        assert_eq!(stopped["choices"][0]["text"], long_text[..cut], "{stopped}");
        assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    }

    // Bad requests: OpenAI's error shape, naming what is wrong.
    let bad = |body: Value, status: u16, needle: &str| {
        let r = post(&s, "/v1/completions", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(needle), "{body}: {message}");
    };
    bad(json!({"prompt": "a", "n": 0}), 422, "`n` must be 1 to 16");
    bad(json!({"prompt": "a", "max_tokens": 500}), 422, "positions");
    bad(json!({"prompt": "a", "model": "gpt-4"}), 404, "not served here");
    bad(json!({"prompt": "a", "temprature": 1}), 422, "unknown field `temprature`");
    bad(json!({"prompt": "a".repeat(300)}), 413, "at most 127 fit");
    bad(json!({"prompt": "a", "temperature": 3}), 422, "temperature");
    bad(json!({"prompt": "a", "presence_penalty": 0.5}), 422, "presence_penalty");

    // Grading: label probabilities, expected grade and the CumPT tier, consistent.
    let grade = json!({
        "query": "red mug",
        "items": ["red mug", "tea", {"title": "blue mug", "color": "blue"}],
        "instructions": "Label: E S C I",
        "beta": 0.7,
    });
    let r = post(&s, "/grade", &grade);
    assert_eq!(r.status, 200, "{}", r.text());
    let graded = r.json();
    let grades = [("E", 3.0), ("S", 2.0), ("C", 1.0), ("I", 0.0)];
    for item in graded["items"].as_array().unwrap() {
        let p = |label: &str| item["probabilities"][label].as_f64().unwrap();
        let total: f64 = grades.iter().map(|(l, _)| p(l)).sum();
        assert!((total - 1.0).abs() < 1e-4, "{item}");
        let expected: f64 = grades.iter().map(|(l, g)| p(l) * g).sum();
        assert!((item["expected_grade"].as_f64().unwrap() - expected).abs() < 1e-4, "{item}");
        let mut cumulative = 0.0;
        let tier = grades.iter().find(|(l, _)| {
            cumulative += p(l);
            cumulative >= 0.7 - 1e-6
        });
        assert_eq!(item["tier"], tier.unwrap().0, "{item}");
        let mass = item["label_mass"].as_f64().unwrap();
        assert!(mass > 0.0 && mass <= 1.0, "{item}");
    }
    // `tandem grade` gives the same numbers from the command line.
    let items = dir.path().join("items.jsonl");
    std::fs::write(&items, "\"red mug\"\n\"tea\"\n{\"title\": \"blue mug\", \"color\": \"blue\", \"id\": 9}\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["grade", "--model", dir.path().join("tiny.gguf").to_str().unwrap(), "--backend", "cpu"])
        .args(["--query", "red mug", "--items", items.to_str().unwrap(), "--beta", "0.7", "--instructions"])
        .arg("Label: E S C I")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["id"], 9);
    for (cli, http) in lines.iter().zip(graded["items"].as_array().unwrap()) {
        assert_eq!(cli["tier"], http["tier"]);
        for (label, _) in grades {
            let (a, b) =
                (cli["probabilities"][label].as_f64().unwrap(), http["probabilities"][label].as_f64().unwrap());
            assert!((a - b).abs() < 1e-5, "{label}: {a} from the CLI, {b} from /grade");
        }
    }
    let r = post(&s, "/grade", &json!({"query": "q", "items": [], "instructions": "x"}));
    assert!(r.status == 400 && r.text().contains("`items` cannot be empty"), "{}", r.text());
    let r = post(&s, "/grade", &json!({"query": "q", "items": [3], "instructions": "x"}));
    assert!(r.status == 422 && r.text().contains("items[0]"), "{}", r.text());
    // A photo for a model served without a visual adapter.
    let photo = json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]);
    let r = post(&s, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": photo}]}));
    assert!(r.status == 422 && r.text().contains("no visual adapter"), "{}", r.text());

    // Suggestions: n samples in one batch, de-duplicated, best sequence log-probability first.
    let suggest = json!({"queries": ["mug", "tea"], "n": 6, "max_tokens": 6, "seed": 2, "instructions": "Next:"});
    let r = post(&s, "/suggest", &suggest);
    assert_eq!(r.status, 200, "{}", r.text());
    let suggested = r.json();
    let list = suggested["suggestions"].as_array().unwrap();
    assert!(!list.is_empty() && list.len() <= 6, "{suggested}");
    let logprobs: Vec<f64> = list.iter().map(|x| x["logprob"].as_f64().unwrap()).collect();
    assert!(logprobs.windows(2).all(|w| w[0] >= w[1]) && logprobs.iter().all(|&l| l <= 0.0), "{suggested}");
    let samples: u64 = list.iter().map(|x| x["samples"].as_u64().unwrap()).sum();
    assert!(samples <= 6);
    assert_eq!(post(&s, "/suggest", &suggest).json()["suggestions"], suggested["suggestions"], "seeded");
    for (body, needle) in [
        (json!({"n": 2}), "give `queries`"),
        (json!({"query": "mug", "n": 0}), "`n` must be 1 to 16"),
        (json!({"query": "mug", "mode": "poem"}), "`mode`"),
    ] {
        let r = post(&s, "/suggest", &body);
        assert!(r.status == 422 && r.text().contains(needle), "{body}: {}", r.text());
    }
    // The tiny model answers bytes, not a JSON list: said so, with what it answered.
    let r =
        post(&s, "/suggest", &json!({"query": "mug", "mode": "list", "n": 2, "instructions": "L", "max_tokens": 8}));
    assert!(r.status == 424 && r.text().contains("did not answer a JSON list"), "{}", r.text());

    // LLM embeddings: the decoder's last hidden state, through the encoders' routes.
    let r = post(&s, "/v1/embeddings", &json!({"model": "tiny", "input": ["red mug", "tea"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json();
    assert_eq!(listed["model"], "tiny");
    let vectors: Vec<Vec<f64>> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect();
    assert_eq!(vectors.len(), 2);
    for v in &vectors {
        assert_eq!(v.len(), 16, "the tiny decoder's width");
        assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4, "OpenAI's embeddings are normalized");
    }
    assert_ne!(vectors[0], vectors[1]);
    let raw = post(&s, "/embed", &json!({"model": "tiny", "inputs": "red mug", "normalize": false})).json();
    let raw: Vec<f64> = raw[0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    for (a, b) in raw.iter().zip(&vectors[0]) {
        assert!((a / norm - b).abs() < 1e-5, "the same state, unnormalized");
    }
    let r = post(&s, "/embed", &json!({"model": "tiny", "inputs": "x".repeat(200)}));
    assert!(r.status == 413 && r.text().contains("truncate"), "{}", r.text());
    let r = post(&s, "/embed", &json!({"model": "nope", "inputs": "x"}));
    assert!(r.status == 404 && r.text().contains("not served here"), "{}", r.text());

    // The metrics saw it: tokens, the shared prefix of the grading items, TTFT.
    let metrics = s.get("/metrics").text();
    let value = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap()
    };
    assert!(value("tandem_llm_generated_tokens_total") > 50.0, "{metrics}");
    assert!(value("tandem_llm_reused_prompt_tokens_total") > 20.0, "{metrics}");
    assert!(value("tandem_llm_time_to_first_token_seconds_count") >= 5.0, "{metrics}");
}

#[test]
fn concurrent_streams_with_clients_that_leave_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_tiny(dir.path());
    let body = json!({"prompt": "ab", "max_tokens": 100, "temperature": 0.9, "stream": true, "seed": 1});
    let clients: Vec<_> = (0..10)
        .map(|i| {
            let (addr, body) = (s.addr.clone(), body.clone());
            // Every third client leaves after its second event.
            let leave = (i % 3 == 0).then_some(2);
            std::thread::spawn(move || (leave, stream(&addr, "/v1/completions", &body, leave)))
        })
        .collect();
    let (mut complete, mut shed) = (0, 0);
    for c in clients {
        let (leave, (status, events)) = c.join().unwrap();
        match status {
            200 if leave.is_none() => {
                let (_, finishes, _) = stream_text(&events);
                assert_eq!(finishes.len(), 1, "one finish reason: {events:?}");
                complete += 1;
            }
            200 => {}
            // A full queue is answered at once (with Retry-After), never dropped.
            503 => shed += 1,
            other => panic!("status {other}"),
        }
    }
    println!("{complete} streams complete, {shed} shed");
    assert!(complete > 0);

    // SIGTERM during a stream: the stream still ends with [DONE], then the server exits 0.
    let addr = s.addr.clone();
    let body = json!({"prompt": "a", "max_tokens": 120, "temperature": 1.0, "seed": 3, "stream": true});
    let streaming = std::thread::spawn(move || stream(&addr, "/v1/completions", &body, None));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.get("/metrics").text().contains("tandem_llm_running 1") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (status, events) = streaming.join().unwrap();
    assert_eq!(status, 200);
    stream_text(&events);
    let mut s = s;
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = s.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}\n{}", s.log());
    assert!(send(&s.addr, "GET", "/health", &[], b"").is_err(), "still accepting after exit");
}

/// The Python with the official `openai` client: `TANDEM_OPENAI_PYTHON`, else the venv
/// `scripts/test.sh` makes.
fn openai_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("TANDEM_OPENAI_PYTHON").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv-openai/bin/python")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| Command::new(p).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success()))
}

#[test]
fn the_official_openai_client_against_smollm2() {
    let Some(python) = openai_python() else {
        println!("skipping: no Python with the openai package (scripts/test.sh makes target/venv-openai)");
        return;
    };
    let s = Server::start(&["--llm", "smollm2", "--backend", "cpu", "--no-web", "--no-relevance", "--llm-slots", "4"]);
    let question = "Name three things to pack for a beach holiday.";
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["generate", "--model", "smollm2", "--backend", "cpu", "--max-tokens", "24", "--json", question])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generated: Value = serde_json::from_slice(&out.stdout).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let run = Command::new(python)
        .arg(script)
        .args([format!("http://{}/v1", s.addr), question.to_string(), generated["text"].as_str().unwrap().to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(run.status.success(), "{stdout}\n{}\n{}", String::from_utf8_lossy(&run.stderr), s.log());
}
