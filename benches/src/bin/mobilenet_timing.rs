//! Times MobileNetV2's forward pass (torchvision's checkpoint, batch norms folded) on the CPU
//! for `benches/cpu_compare.py`, which gives ONNX Runtime and PyTorch the same pixels.
//! Decoding and preprocessing are left out on every side.
//!
//! Usage: mobilenet_timing MODEL_DIR PIXELS.f32 BATCH RUNS
//! PIXELS.f32 holds BATCH × 3 × 224 × 224 little-endian f32 (NCHW). Prints
//! {"median_ms": .., "logits": [first image's first 5]} on stdout.

use anyhow::{Context, Result, ensure};
use std::path::Path;
use tandem_models::session::{AnySession, BackendChoice};
use tandem_models::vision::{self, mobilenet};
use tandem_runtime::HostTensor;
use tandem_runtime::graph::Weights;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ensure!(args.len() == 5, "usage: mobilenet_timing MODEL_DIR PIXELS.f32 BATCH RUNS");
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
    let session = AnySession::new(BackendChoice::Cpu, graph, &weights)?;
    let input = [HostTensor::f32(vec![batch, 3, size, size], pixels)?];
    let first = session.run_blocking(&input)?; // warm-up: plans and buffers
    let logits = first[0].as_f32().context("no logits")?[..5].to_vec();
    let median = tandem_benches::median_ms(runs, || session.run_blocking(&input).map(drop))?;
    println!("{}", serde_json::json!({ "median_ms": median, "logits": logits }));
    Ok(())
}
