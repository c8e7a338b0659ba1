//! Times a GGUF decoder (SmolLM2, Qwen2.5) on the CPU backend the way llama-bench does:
//! a prefill of P prompt tokens in one run (pp), then S greedy decode steps of one token
//! each (tg), one sequence.
//!
//! Usage: decoder_timing FILE.gguf [--prompt P] [--steps S] [--exact] [--f32-cache] [--threads T]
//!        decoder_timing FILE.gguf --pair-huge-pages [--prompt P] [--steps S] [--threads T]
//! `--exact` runs the f32 reference path instead of the integer-dot one; the KV cache is f16
//! as `tandem generate` keeps it on the CPU, or f32 with `--f32-cache` (or `--exact`). Prints tokens per
//! second for prefill and decode (the best of `--rounds` rounds, default 3) as JSON, and the
//! process's CPU time for each (all threads; rayon's waiting threads spin a little, so on two
//! threads this is an upper bound of the work).
//!
//! `--pair-huge-pages`: two sessions, one without huge pages and one with them
//! (`CpuOptions::huge_pages`), each prefilled with the prompt, then decode steps of the two in
//! alternate calls (`tandem_benches::paired`); prints each one's median step and the quartiles
//! of the per-step ratio (huge pages / heap), and the time each session took to load.

use anyhow::{Context, Result};
use std::time::Instant;
use tandem_models::decoder::{DecoderBatch, SampleRow, decoder_graph_with};
use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::weights::Gguf;
use tandem_runtime::{DType, Outputs, Session};

fn flag(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).context("a value after the flag")?.parse().context("a number"),
        None => Ok(default),
    }
}

/// The process's CPU time in seconds (all threads): on a shared machine, what the work
/// cost whatever else ran; with one thread, the time it would take on a quiet one.
fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill; CLOCK_PROCESS_CPUTIME_ID is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).context("usage: decoder_timing FILE.gguf [--prompt P] [--steps S] [--exact]")?;
    let (prompt, steps) = (flag(&args, "--prompt", 128)?, flag(&args, "--steps", 64)?);
    let rounds = flag(&args, "--rounds", 3)?;
    let threads = flag(&args, "--threads", rayon::current_num_threads())?;
    let exact = args.iter().any(|a| a == "--exact");
    let file = Gguf::open(path.as_ref())?;
    let kv_cache = if exact || args.iter().any(|a| a == "--f32-cache") { DType::F32 } else { DType::F16 };
    let (config, graph, weights) = decoder_graph_with(&file, None, kv_cache)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    // Token ids spread over the vocabulary (no tokenizer involved).
    let ids: Vec<u32> = (0..prompt).map(|i| ((i * 7919 + 13) % config.vocab) as u32).collect();
    if args.iter().any(|a| a == "--pair-huge-pages") {
        return pool.install(|| pair_huge_pages(graph, &weights, ids, steps));
    }
    let backend = if exact { CpuBackend::exact() } else { CpuBackend::new() };
    let session = Session::new(backend, graph, &weights)?;
    let (mut best_pp, mut best_tg) = (0.0f64, 0.0f64);
    let (mut cpu_pp, mut cpu_tg) = (f64::INFINITY, f64::INFINITY);
    let mut tokens = Vec::new();
    for _ in 0..rounds {
        pool.install(|| -> Result<()> {
            let mut state = session.new_state(&[("kv_rows", prompt + steps)])?;
            let run = |state: &mut _, ids: Vec<u32>, start: usize| -> Result<Vec<f32>> {
                let mut batch = DecoderBatch::default();
                batch.push(0, start, &ids, SampleRow::greedy());
                let inputs = batch.tensors()?;
                Ok(session.run_with_blocking(&inputs, Some(state), Outputs::Named(&["logits"]))?.remove(0).to_f32())
            };
            let (t, c) = (Instant::now(), process_cpu_seconds());
            let mut logits = run(&mut state, ids.clone(), 0)?;
            best_pp = best_pp.max(prompt as f64 / t.elapsed().as_secs_f64());
            cpu_pp = cpu_pp.min((process_cpu_seconds() - c) * 1e3);
            let (t, c) = (Instant::now(), process_cpu_seconds());
            tokens.clear();
            for step in 0..steps {
                let next = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
                tokens.push(next);
                logits = run(&mut state, vec![next], prompt + step)?;
            }
            best_tg = best_tg.max(steps as f64 / t.elapsed().as_secs_f64());
            cpu_tg = cpu_tg.min((process_cpu_seconds() - c) * 1e3 / steps as f64);
            Ok(())
        })?;
    }
    println!(
        "{}",
        serde_json::json!({
            "file": path, "threads": threads, "path": if exact { "exact f32" } else { "integer dot" },
            "isa": tandem_runtime::ops::isa::CpuIsa::active().name(), "kv_cache": kv_cache.to_string(),
            "prompt": prompt, "steps": steps,
            "prefill_tok_s": (best_pp * 10.0).round() / 10.0, "decode_tok_s": (best_tg * 10.0).round() / 10.0,
            "prefill_cpu_ms": (cpu_pp * 10.0).round() / 10.0, "decode_cpu_ms_per_token": (cpu_tg * 100.0).round() / 100.0,
            "first_tokens": &tokens[..tokens.len().min(8)],
        })
    );
    Ok(())
}

/// The `--pair-huge-pages` timing (see the module doc): decode steps of the same token at the
/// same positions in two sessions, alternating.
fn pair_huge_pages(
    graph: tandem_runtime::Graph,
    weights: &[tandem_runtime::HostTensor],
    ids: Vec<u32>,
    steps: usize,
) -> Result<()> {
    use tandem_runtime::backend::cpu::CpuOptions;
    let prompt = ids.len();
    let side = |huge_pages: bool| -> Result<_> {
        let backend = CpuBackend::with_options(CpuOptions { huge_pages, ..CpuOptions::default() });
        let session = Session::new(backend, graph.clone(), weights)?;
        // Room for the prompt, the two warm-up steps and every timed one.
        let state = session.new_state(&[("kv_rows", prompt + steps + 2)])?;
        Ok((session, state, 0))
    };
    let step = |(session, state, at): &mut (Session<CpuBackend>, _, usize), ids: &[u32]| -> Result<()> {
        let mut batch = DecoderBatch::default();
        batch.push(0, *at, ids, SampleRow::greedy());
        session.run_with_blocking(&batch.tensors()?, Some(state), Outputs::Named(&["logits"]))?;
        *at += ids.len();
        Ok(())
    };
    let loaded_in_ms = |huge_pages: bool| -> Result<_> {
        let t = Instant::now();
        let side = side(huge_pages)?;
        Ok((side, t.elapsed().as_secs_f64() * 1e3))
    };
    let ((mut heap, heap_load_ms), (mut huge, huge_load_ms)) = (loaded_in_ms(false)?, loaded_in_ms(true)?);
    step(&mut heap, &ids)?;
    step(&mut huge, &ids)?;
    let token = [ids[0]];
    let mut figures = tandem_benches::paired(steps, || step(&mut heap, &token), || step(&mut huge, &token))?;
    // Loading (the weights copied into the backend's buffers) once each, heap side first.
    figures["load_ms"] = serde_json::json!({ "heap": heap_load_ms.round(), "huge_pages": huge_load_ms.round() });
    println!("{figures}");
    Ok(())
}
