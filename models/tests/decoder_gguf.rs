//! SmolLM2-135M (llama: Q4_1/Q8_0) and Qwen2.5-Coder-0.5B (qwen2: Q4_K/Q5_0/Q6_K/Q8_0), each
//! built as a tandem graph from its GGUF metadata, run a batched prefill of three prompts and
//! then batched greedy decode steps with their KV caches on the CPU, and match an independent
//! numpy forward pass over gguf-py's dequantized weights (tests/reference/
//! make_decoder_reference.py → decoder_<model>.json): the same greedy tokens and the top-10
//! logits within 0.05 at every step. Token ids are given directly, so no tokenizer is
//! involved. Without a file in the cache its test says so and skips.

use std::path::Path;
use tandem_models::decoder::decoder_graph;
use tandem_models::fetch::cache_root;
use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::ops::attention::StepBatch;
use tandem_runtime::weights::Gguf;
use tandem_runtime::{Outputs, Session};

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: Vec<u32>,
    first_top: Vec<(u32, f64)>,
    greedy: Vec<u32>,
    step_tops: Vec<Vec<(u32, f64)>>,
}

/// Logits are ~20–35 after 30 layers; f32 against f64 drifts by a few thousandths.
const TOLERANCE: f64 = 0.05;

/// Checks one position's logits; returns the largest difference seen.
fn check_top(what: &str, logits: &[f32], top: &[(u32, f64)]) -> f64 {
    let mut worst = 0.0f64;
    for &(id, want) in top {
        let got = logits[id as usize] as f64;
        assert!((got - want).abs() <= TOLERANCE, "{what}: logit of token {id} is {got}, reference {want}");
        worst = worst.max((got - want).abs());
    }
    let argmax = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
    assert_eq!(argmax, top[0].0, "{what}: greedy token differs from the reference");
    worst
}

#[test]
fn smollm2_prefill_and_decode_match_the_numpy_reference() {
    check("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", (30, 9, 3, 64));
}

#[test]
fn qwen2_prefill_and_decode_match_the_numpy_reference() {
    check("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", (24, 14, 2, 64));
}

/// `shape`: layers, heads, kv heads and head dim the metadata must give.
fn check(model: &str, file_name: &str, shape: (usize, usize, usize, usize)) {
    let path = cache_root().unwrap().join("models").join(model).join(file_name);
    if !path.is_file() {
        eprintln!("skipped: {} is not in the cache (run `tandem fetch {model}`)", path.display());
        return;
    }
    let json = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/reference/decoder_{model}.json"));
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let file = Gguf::open(&path).unwrap();
    let (config, graph, weights) = decoder_graph(&file).unwrap();
    assert_eq!((config.layers, config.heads, config.kv_heads, config.head_dim), shape);
    let session = Session::new(CpuBackend::new(), graph, &weights).unwrap();
    let capacity = 64;
    let cases = &reference.cases;
    let mut state = session.new_state(&[("kv_rows", cases.len() * capacity)]).unwrap();
    let mut lengths = vec![0usize; cases.len()];
    let mut new_tokens: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt.clone()).collect();
    let mut worst = 0.0f64;
    for step in 0..=cases[0].greedy.len() {
        let mut batch = StepBatch::default();
        for (s, toks) in new_tokens.iter().enumerate() {
            batch.push(s * capacity, lengths[s], toks);
            lengths[s] += toks.len();
        }
        let inputs = batch.tensors().unwrap();
        let logits = session.run_with_blocking(&inputs, Some(&mut state), Outputs::All).unwrap().remove(0);
        assert_eq!(logits.shape, [cases.len(), config.vocab]);
        let logits = logits.to_f32();
        for (s, case) in cases.iter().enumerate() {
            let row = &logits[s * config.vocab..][..config.vocab];
            let top = if step == 0 { &case.first_top } else { &case.step_tops[step - 1] };
            worst = worst.max(check_top(&format!("prompt {s}, step {step}"), row, top));
        }
        if step < cases[0].greedy.len() {
            new_tokens = cases.iter().map(|c| vec![c.greedy[step]]).collect();
        }
    }
    println!(
        "{model}: {} prompts, prefill and {} greedy steps: same tokens, top-10 logits within {worst:.5}",
        cases.len(),
        cases[0].greedy.len()
    );
}
