//! Times MobileNetV2's forward pass (torchvision's checkpoint, batch norms folded) on the CPU
//! for `benches/cpu_compare.py`, which gives ONNX Runtime and PyTorch the same pixels.
//! Decoding and preprocessing are left out on every side.
//!
//! Usage: mobilenet_timing MODEL_DIR PIXELS.f32 BATCH RUNS [--pair-huge-pages]
//! PIXELS.f32 holds BATCH × 3 × 224 × 224 little-endian f32 (NCHW). Prints
//! {"median_ms": .., "logits": [first image's first 5]} on stdout.
//!
//! `--serve`: after the warm-up, prints the logits line, then reads run counts from stdin, one
//! a line, and answers each with {"times_ms": [..]} of that many calls after an untimed one,
//! until stdin ends: `cpu_compare.py` alternates short blocks of ORT's calls and these, so
//! that both sides of a pair see the same few seconds of a machine whose speed drifts.
//!
//! `--pair-huge-pages`: two sessions, a without huge pages and b with them
//! (`CpuOptions::huge_pages`), called in turn (`tandem_benches::paired`); prints each one's
//! median and the quartiles of the per-pair ratio b / a.

use anyhow::{Context, Result, ensure};
use std::path::Path;
use tandem_models::session::{AnySession, BackendChoice};
use tandem_models::vision::{self, mobilenet};
use tandem_runtime::HostTensor;
use tandem_runtime::graph::Weights;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = args.get(5).map(String::as_str);
    ensure!(
        args.len() == 5 || (args.len() == 6 && matches!(flag, Some("--serve" | "--pair-huge-pages"))),
        "usage: mobilenet_timing MODEL_DIR PIXELS.f32 BATCH RUNS [--serve | --pair-huge-pages]"
    );
    let dir = Path::new(&args[1]);
    let batch: usize = args[3].parse().context("BATCH")?;
    let runs: usize = args[4].parse().context("RUNS")?;
    let bytes = std::fs::read(&args[2]).context("pixels file")?;
    let size = mobilenet::INPUT_SIZE;
    ensure!(bytes.len() == batch * 3 * size * size * 4, "pixels file: want {batch} × 3 × {size} × {size} f32");
    let pixels: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let state = vision::load_mobilenet_v2_folded(dir)?;
    let graph = mobilenet::build_graph(&state)?;
    let weights = Weights::from_tensors(&dir.join(vision::MOBILENET_V2_WEIGHTS_FILE), &vision::host_tensors(&state)?)?;
    let input = [HostTensor::f32(vec![batch, 3, size, size], pixels)?];
    if flag == Some("--pair-huge-pages") {
        let plain = AnySession::on(&tandem_benches::cpu_device(false), graph.clone(), &weights)?;
        let huge = AnySession::on(&tandem_benches::cpu_device(true), graph, &weights)?;
        let run = |session: &AnySession| session.run_blocking(&input).map(drop);
        println!("{}", tandem_benches::paired(runs, || run(&plain), || run(&huge))?);
        return Ok(());
    }
    let session = AnySession::new(BackendChoice::Cpu, graph, &weights)?;
    let first = session.run_blocking(&input)?; // warm-up: plans and buffers
    let logits = first[0].as_f32().context("no logits")?[..5].to_vec();
    if flag == Some("--serve") {
        use std::io::{BufRead, Write};
        println!("{}", serde_json::json!({ "logits": logits }));
        for line in std::io::stdin().lock().lines() {
            let runs: usize = line?.trim().parse().context("a run count per line")?;
            session.run_blocking(&input)?; // the pool's threads were asleep
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = std::time::Instant::now();
                session.run_blocking(&input)?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            println!("{}", serde_json::json!({ "times_ms": times }));
            std::io::stdout().flush()?;
        }
        return Ok(());
    }
    let median = tandem_benches::median_ms(runs, || session.run_blocking(&input).map(drop))?;
    println!("{}", serde_json::json!({ "median_ms": median, "logits": logits }));
    Ok(())
}
