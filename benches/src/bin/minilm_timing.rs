//! Times MiniLM's forward pass on given token ids, for `benches/ort_compare.py`, which feeds
//! ONNX Runtime the very same ids. Tokenization is left out on both sides.
//!
//! Usage: minilm_timing MODEL_DIR BATCH.json RUNS [BACKEND [PRECISION]] [--pair-huge-pages]
//! (PRECISION: f32 | bf16). BATCH.json is a list of token-id lists. Prints
//! {"median_ms": .., "tokens": ..} on stdout.
//!
//! `--pair-huge-pages` (the CPU backend): two sessions, a without huge pages and b with them
//! (`CpuOptions::huge_pages`), called in turn (`tandem_benches::paired`); prints each one's
//! median and the quartiles of the per-pair ratio b / a.
//!
//! `--pair-outside-pool` (the CPU backend): one session run in turn a from this thread, so that
//! every parallel op hands its work to the pool from outside and waits (how the embedder's
//! blocking calls ran until they went through `AnySession::blocking`; the pool's threads may
//! still be awake from the b call before), and b through `run_blocking` (on the pool, its
//! other threads kept awake); prints the same figures.

use anyhow::{Context, Result};
use tandem_models::session::{AnySession, BackendChoice, Precision};
use tandem_models::tokenizer::{PackedBatch, TokenizedText};

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    let flag = args.last().filter(|a| a.starts_with("--")).cloned();
    args.truncate(args.len() - flag.is_some() as usize);
    anyhow::ensure!(
        args.len() >= 4 && matches!(flag.as_deref(), None | Some("--pair-huge-pages" | "--pair-outside-pool")),
        "usage: minilm_timing MODEL_DIR BATCH.json RUNS [cpu|wgpu [f32|bf16]] [--pair-huge-pages|--pair-outside-pool]"
    );
    let pair = flag.as_deref() == Some("--pair-huge-pages");
    let mut model = tandem_models::bert::load_dir(args[1].as_ref())?;
    let precision: Precision = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or_default();
    precision.apply(&mut model.graph);
    let batch: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(&args[2]).context("batch file")?)?;
    let runs: usize = args[3].parse().context("RUNS")?;
    let backend: BackendChoice = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(BackendChoice::Cpu);
    let texts: Vec<TokenizedText> =
        batch.into_iter().map(|ids| TokenizedText { type_ids: vec![0; ids.len()], ids }).collect();
    let packed = PackedBatch::pack(&texts);
    if pair {
        anyhow::ensure!(backend == BackendChoice::Cpu, "--pair-huge-pages times the CPU backend");
        let plain = AnySession::on(&tandem_benches::cpu_device(false), model.graph.clone(), &model.weights)?;
        let huge = AnySession::on(&tandem_benches::cpu_device(true), model.graph, &model.weights)?;
        let inputs: Vec<_> =
            plain.graph().inputs.iter().map(|&id| packed.input(&plain.graph().value(id).name).unwrap()).collect();
        let run = |session: &AnySession| session.run_blocking(&inputs).map(drop);
        println!("{}", tandem_benches::paired(runs, || run(&plain), || run(&huge))?);
        return Ok(());
    }
    let session = AnySession::new(backend, model.graph, &model.weights)?;
    let inputs: Vec<_> =
        session.graph().inputs.iter().map(|&id| packed.input(&session.graph().value(id).name).unwrap()).collect();
    if flag.as_deref() == Some("--pair-outside-pool") {
        anyhow::ensure!(backend == BackendChoice::Cpu, "--pair-outside-pool times the CPU backend");
        let outside = || pollster::block_on(session.run(&inputs)).map(drop);
        println!("{}", tandem_benches::paired(runs, outside, || session.run_blocking(&inputs).map(drop))?);
        return Ok(());
    }
    session.run_blocking(&inputs)?; // warm-up: plans, buffers, pipelines
    let median = tandem_benches::median_ms(runs, || session.run_blocking(&inputs).map(drop))?;
    println!("{}", serde_json::json!({ "median_ms": median, "tokens": packed.tokens() }));
    Ok(())
}
