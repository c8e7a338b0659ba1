//! SmolLM2 and Qwen2.5 end to end against two peers, from references stored in the repo
//! (tests/reference/make_decoder_parity.py → parity_<model>.json): 13 hand-written chat
//! prompts per model, rendered by the GGUF's chat template, tokenized, and continued greedily
//! for 32 tokens by transformers (fp32 weights dequantized by gguf-py) and by llama.cpp
//! (the quantized weights as they are, its own kernels). tandem must:
//! - render the same prompt text with its chat template (minijinja) as transformers (jinja2);
//! - tokenize it to llama.cpp's ids (its GGUF tokenizer);
//! - against transformers: give first-position logits within 1e-3 at transformers' top 10 and
//!   the same 32 greedy tokens on at least 12 prompts;
//! - against llama.cpp: the same first token on every prompt, the same 32 tokens on at least
//!   10, first-position logits within 0.5 at llama.cpp's top 10.
//!
//! All 13 prompts run as one batch (a batched prefill, then 31 batched decode steps), as a
//! server would. Without a GGUF file in the cache the model's test says so and skips.

use std::path::Path;
use tandem_models::fetch::cache_root;
use tandem_models::llm::sampling::argmax;
use tandem_models::llm::{Llm, Message};
use tandem_models::{BackendChoice, Device};

#[derive(serde::Deserialize)]
struct Reference {
    gguf_tokenizer: GgufTokenizer,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct GgufTokenizer {
    llama_cpp_eog_ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    system: Option<String>,
    user: String,
    rendered: String,
    prompt_ids: PromptIds,
    transformers: Run,
    llama_cpp: Run,
}

#[derive(serde::Deserialize)]
struct PromptIds {
    transformers: Vec<u32>,
    /// Present only when llama.cpp's ids differ from transformers'.
    llama_cpp: Option<Vec<u32>>,
}

#[derive(serde::Deserialize)]
struct Run {
    ids: Vec<u32>,
    first_top: Vec<(u32, f32)>,
}

const NEW_TOKENS: usize = 32;

#[test]
fn smollm2_matches_transformers_and_llama_cpp() {
    check("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn qwen2_matches_transformers_and_llama_cpp() {
    check("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
}

fn check(model: &str, file_name: &str) {
    let path = cache_root().unwrap().join("models").join(model).join(file_name);
    if !path.is_file() {
        eprintln!("skipped: {} is not in the cache (run `tandem fetch {model}`)", path.display());
        return;
    }
    let json = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/reference/parity_{model}.json"));
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let llm = Llm::load(&path, &Device::open_blocking(BackendChoice::Cpu).unwrap()).unwrap();
    let cases = &reference.cases;
    let eog: Vec<u32> = llm.tokenizer.end_of_generation().collect();
    assert_eq!(eog, reference.gguf_tokenizer.llama_cpp_eog_ids, "end-of-generation ids differ from llama.cpp's");

    // The prompt text and its ids.
    let mut prompts = Vec::new();
    for case in cases {
        let mut messages: Vec<Message> = case.system.iter().map(|s| Message::new("system", s)).collect();
        messages.push(Message::new("user", &case.user));
        let rendered = llm.chat_prompt(&messages).unwrap();
        assert_eq!(rendered, case.rendered, "{}: the chat template renders differently", case.name);
        let ids = llm.tokenizer.encode(&rendered).unwrap();
        let llama_ids = case.prompt_ids.llama_cpp.as_ref().unwrap_or(&case.prompt_ids.transformers);
        assert_eq!(&ids, llama_ids, "{}: tokenized differently from llama.cpp", case.name);
        if ids != case.prompt_ids.transformers {
            println!("{}: transformers tokenizes this prompt differently (tandem follows llama.cpp)", case.name);
        }
        prompts.push(ids);
    }

    // Greedy continuations of all prompts in one batch.
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    let mut cache = llm.new_cache(prompts.len(), longest + NEW_TOKENS).unwrap();
    let mut generated: Vec<Vec<u32>> = vec![Vec::new(); cases.len()];
    let mut first_logits: Vec<Vec<f32>> = Vec::new();
    for step in 0..NEW_TOKENS {
        let feeds: Vec<Vec<u32>> =
            if step == 0 { prompts.clone() } else { generated.iter().map(|g| vec![*g.last().unwrap()]).collect() };
        let rows = llm.feed_batch(&mut cache, &feeds).unwrap();
        for (s, logits) in rows.into_iter().enumerate() {
            generated[s].push(argmax(&logits));
            if step == 0 {
                first_logits.push(logits);
            }
        }
    }

    let mut same_as_transformers = 0;
    let mut same_as_llama = 0;
    let (mut worst_transformers, mut worst_llama) = (0.0f32, 0.0f32);
    for (s, case) in cases.iter().enumerate() {
        let logits = &first_logits[s];
        let diff = |top: &[(u32, f32)]| {
            top.iter().take(10).map(|&(id, l)| (logits[id as usize] - l).abs()).fold(0.0, f32::max)
        };
        let (dt, dl) = (diff(&case.transformers.first_top), diff(&case.llama_cpp.first_top));
        worst_transformers = worst_transformers.max(dt);
        worst_llama = worst_llama.max(dl);
        assert!(dt <= 1e-3, "{}: first-position logits differ from transformers' by {dt}", case.name);
        assert!(dl <= 0.5, "{}: first-position logits differ from llama.cpp's by {dl}", case.name);
        assert_eq!(generated[s][0], case.llama_cpp.ids[0], "{}: first token differs from llama.cpp's", case.name);
        let part = |want: &[u32]| generated[s].iter().zip(want).position(|(a, b)| a != b);
        match part(&case.transformers.ids) {
            None => same_as_transformers += 1,
            Some(at) => println!("{}: parts from transformers at token {at}", case.name),
        }
        match part(&case.llama_cpp.ids) {
            None => same_as_llama += 1,
            Some(at) => println!("{}: parts from llama.cpp at token {at}", case.name),
        }
    }
    println!(
        "{model}: {} prompts; {NEW_TOKENS} greedy tokens identical to transformers on {same_as_transformers}, \
         to llama.cpp on {same_as_llama}; first-position top-10 logits within {worst_transformers:.2e} of \
         transformers and {worst_llama:.3} of llama.cpp",
        cases.len()
    );
    assert!(same_as_transformers >= 12, "only {same_as_transformers} continuations match transformers");
    assert!(same_as_llama >= 10, "only {same_as_llama} continuations match llama.cpp");
}
