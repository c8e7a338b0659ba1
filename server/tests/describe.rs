//! A decoder with a layer-wise visual adapter from the outside: `tandem describe` and
//! `tandem serve --llm … --llm-visual-adapter DIR` with OpenAI's `image_url` parts, on SmolLM2
//! and the seeded adapter of tests/reference/visual_adapter (whose numbers
//! models/tests/visual_adapter.rs checks against an independent implementation).
//! - `describe --exact --json`: the chat template's prompt ids and the greedy ids of the
//!   library generating with the picture; another photo, or none, gives other ids.
//! - The server: a chat whose user message carries a photo as a data URL answers with
//!   `tandem describe`'s text for that photo and prompt (both on the default CPU path), and
//!   bad images, misplaced ones or ones sent to a model without an adapter get 422 naming
//!   what is wrong.

mod common;

use base64::Engine;
use common::Server;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use tandem_models::BackendChoice;
use tandem_models::llm::{GenerateRequest, Llm, Message};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference")
}

fn adapter() -> String {
    reference().join("visual_adapter").display().to_string()
}

fn photo(name: &str) -> String {
    reference().join("images").join(name).display().to_string()
}

const PROMPT: &str = "What is this product made of?";

/// `tandem describe PHOTO` with `extra` flags, as JSON.
fn describe(photo: &str, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["describe", photo, "--model", "smollm2", "--adapter", &adapter(), "--backend", "cpu"])
        .args(["--prompt", PROMPT, "--max-tokens", "12", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
}

#[test]
fn describe_generates_what_the_library_does_with_the_picture() {
    let coffee = describe(&photo("coffee.png"), &["--exact", "--ignore-eos"]);
    let llm = Llm::open_with_adapter("smollm2", BackendChoice::Cpu, true, Some(Path::new(&adapter()))).unwrap();
    let prompt_ids = llm.tokenizer.encode(&llm.chat_prompt(&[Message::new("user", PROMPT)]).unwrap()).unwrap();
    let got_prompt: Vec<u32> =
        coffee["prompt_ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
    assert_eq!(got_prompt, prompt_ids);
    let request = GenerateRequest {
        prompt_ids: prompt_ids.clone(),
        max_tokens: 12,
        sampling: Default::default(),
        ignore_eos: true,
        top_logits: 0,
    };
    let generate = |picture: Option<&str>| {
        let mut seq = llm.new_sequence(prompt_ids.len() + 12).unwrap();
        if let Some(p) = picture {
            llm.show_picture(&mut seq, 0, &std::fs::read(p).unwrap()).unwrap();
        }
        llm.generate(&mut seq, &request, &mut |_| Ok(())).unwrap().ids
    };
    assert_eq!(ids(&coffee), generate(Some(&photo("coffee.png"))));
    assert_ne!(ids(&coffee), generate(None), "the picture changed nothing");
    let astronaut = describe(&photo("astronaut.png"), &["--exact", "--ignore-eos"]);
    assert_ne!(ids(&coffee), ids(&astronaut), "two photos, the same answer");
    println!("coffee: {:?}\nastronaut: {:?}", coffee["text"], astronaut["text"]);

    // Bad input: a missing photo, a file that is not one, a model without the adapter's base.
    let fail = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tandem")).args(args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fail(&["describe", "/nonexistent.png", "--model", "smollm2", "--adapter", &adapter()]);
    assert!(err.contains("/nonexistent.png"), "{err}");
    let not_a_photo = reference().join("visual_adapter/adapter_config.json").display().to_string();
    let err = fail(&["describe", &not_a_photo, "--model", "smollm2", "--adapter", &adapter(), "--backend", "cpu"]);
    assert!(err.starts_with("error:") && err.contains("adapter_config.json: not an image"), "{err}");
    let err = fail(&["describe", &photo("coffee.png"), "--model", "qwen2.5-coder-0.5b", "--adapter", &adapter()]);
    assert!(err.contains("made for smollm2 with sha256"), "{err}");
}

fn data_url(name: &str) -> String {
    let bytes = std::fs::read(photo(name)).unwrap();
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn chat(s: &Server, content: Value) -> common::Response {
    let body = json!({"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": 12,
                      "temperature": 0});
    s.request("POST", "/v1/chat/completions", &[("content-type", "application/json")], body.to_string().as_bytes())
}

#[test]
fn chat_completions_take_a_photo_as_an_image_url_part() {
    let s = Server::start(&[
        "--llm",
        "smollm2",
        "--llm-visual-adapter",
        &adapter(),
        "--backend",
        "cpu",
        "--no-web",
        "--no-relevance",
        "--llm-slots",
        "3",
    ]);
    let expected = describe(&photo("coffee.png"), &[]);
    let with_photo = json!([{"type": "text", "text": PROMPT},
                            {"type": "image_url", "image_url": {"url": data_url("coffee.png"), "detail": "low"}}]);
    let r = chat(&s, with_photo.clone());
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    let text = r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(text, expected["text"].as_str().unwrap(), "the server's answer is not tandem describe's");
    // The photo goes with its request only: the same prompt without it, and then with it
    // again, after another photo (prefix caching must not mix them).
    let without = chat(&s, json!(PROMPT));
    assert_eq!(without.status, 200);
    assert_ne!(without.json()["choices"][0]["message"]["content"].as_str().unwrap(), text);
    let other = json!([{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": data_url("astronaut.png")}}]);
    assert_eq!(chat(&s, other).status, 200);
    let again = chat(&s, with_photo);
    assert_eq!(again.json()["choices"][0]["message"]["content"].as_str().unwrap(), text);

    for (content, says) in [
        (json!([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]), "must be a data URL"),
        (json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}]), "does not decode"),
        (
            json!([{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lGOD"}}]),
            "image/png or image/jpeg",
        ),
        (
            json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]),
            "image_url part's image",
        ),
        (json!([{"type": "image_url"}]), "without `image_url.url`"),
        (json!([{"type": "input_audio", "input_audio": {}}]), "parts are text or image_url"),
        (
            json!([{"type": "image_url", "image_url": {"url": data_url("coffee.png")}},
                   {"type": "image_url", "image_url": {"url": data_url("coffee.png")}}]),
            "one image",
        ),
    ] {
        let r = chat(&s, content);
        assert_eq!(r.status, 422, "{says}: {}", r.text());
        assert!(r.text().contains(says), "expected {says:?} in {}", r.text());
    }
    let in_system = json!({"model": "smollm2", "max_tokens": 4, "messages": [
        {"role": "system", "content": [{"type": "image_url", "image_url": {"url": data_url("coffee.png")}}]},
        {"role": "user", "content": "hi"}]});
    let r = s.request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        in_system.to_string().as_bytes(),
    );
    assert_eq!(r.status, 422);
    assert!(r.text().contains("not in a system message"), "{}", r.text());
}
