//! Times tandem's CPU f32 matmul (the op's CPU kernel, as the executor calls it) at given
//! shapes, for `benches/cpu_compare.py`, which times OpenBLAS (numpy) on the same shapes.
//!
//! Usage: gemm_timing RUNS M,K,N[,t|,kept|,bf16] ...   (`t`: b stored transposed, [N, K], as
//! weights are; `kept`: the same with its panels kept from run to run, as the CPU backend keeps
//! a weight's (AVX-512); `bf16`: b stored [N, K] as bf16, multiplied as the CPU backend's default path does it,
//! in bf16 where the CPU has AVX-512 BF16, else widened to f32)
//! Prints one JSON object per shape: {"m", "k", "n", "trans_b", "kept", "bf16", "median_ms", "gflops"}.

use anyhow::{Context, Result, ensure};
use tandem_runtime::ops::isa::CpuIsa;
use tandem_runtime::ops::matmul::{MatMulParams, StoredPath, WeightPanels, WeightTiles, cpu, cpu_stored};
use tandem_runtime::tensor::DType;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ensure!(args.len() >= 3, "usage: gemm_timing RUNS M,K,N[,t|,kept|,bf16] ...");
    let runs: usize = args[1].parse().context("RUNS")?;
    for shape in &args[2..] {
        let parts: Vec<&str> = shape.split(',').collect();
        ensure!(parts.len() >= 3, "shape {shape}: want M,K,N[,t|,kept|,bf16]");
        let [m, k, n] = [0, 1, 2].map(|i| parts[i].parse::<usize>());
        let (m, k, n) = (m?, k?, n?);
        let bf16 = parts.get(3) == Some(&"bf16");
        // `kept`: b `[N, K]` with its panels kept, as the CPU backend keeps a weight's.
        let kept = parts.get(3) == Some(&"kept");
        let trans_b = bf16 || kept || parts.get(3) == Some(&"t");
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let mut c = vec![0f32; m * n];
        let p = MatMulParams {
            batch: 1,
            m: m as u32,
            n: n as u32,
            k: k as u32,
            stride_a: 0,
            stride_b: 0,
            trans_b: trans_b as u32,
            activation: 0,
            has_bias: 0,
            lora_rank: 0,
            lora_scale: 0.0,
            _pad: 0,
        };
        let b16: Vec<u8> = b.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        let path = StoredPath::LowPrecision(CpuIsa::active());
        // Kept from run to run, as the CPU backend keeps an uploaded weight's tiles.
        let tiles = WeightTiles::default();
        let panels = WeightPanels::default();
        let mut run = || -> Result<()> {
            if bf16 {
                cpu_stored(&p, &a, DType::BF16, &b16, None, &mut c, path, Some(&tiles))?;
            } else {
                cpu(&p, &a, &b, None, &mut c, kept.then_some(&panels));
            }
            Ok(())
        };
        run()?; // warm-up
        let median = tandem_benches::median_ms(runs, &mut run)?;
        let gflops = 2.0 * (m * n * k) as f64 / (median * 1e6);
        println!(
            "{}",
            serde_json::json!({ "m": m, "k": k, "n": n, "trans_b": trans_b, "kept": kept, "bf16": bf16, "median_ms": median, "gflops": gflops })
        );
    }
    Ok(())
}
