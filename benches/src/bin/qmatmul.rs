//! Times matmuls with a GGUF block-quantized weight on the CPU at the shapes of SmolLM2-135M
//! (Q4_1, Q8_0) and Qwen2.5-0.5B (Q5_0, Q4_K, Q6_K, Q8_0): the dequantize-to-f32 panel path
//! (`ops::matmul::cpu_stored` with `StoredPath::Dequantized`) against the integer-dot path
//! (`ops::qdot::matmul`) on every SIMD level this CPU has, for one activation row (decode) and
//! 128 (prefill), on 1 and 2 threads.
//!
//! Usage: qmatmul [--quick] [--m M,...] [--threads T,...] [--step]
//! `--step` times instead all the matmuls of one decode step of each model (distinct weights,
//! so read from memory as a model reads them).
//! Prints one markdown row per measurement: time per call (best of 5 rounds; on one thread the
//! thread's CPU time, so that other work on a shared machine does not count, on two the wall
//! clock), GB/s of weight bytes read and GFLOP/s (2·m·n·k). The vocabulary matrices are timed for m = 1 only (a
//! decoder multiplies only the rows whose logits it wants).

use anyhow::{Context, Result};
use std::time::Instant;
use tandem_runtime::DType;
use tandem_runtime::ops::MatMul;
use tandem_runtime::ops::isa::CpuIsa;
use tandem_runtime::ops::matmul::{StoredPath, cpu_stored};
use tandem_runtime::ops::qdot::{self, BlockMatrix};

struct Shape {
    model: &'static str,
    what: &'static str,
    dtype: DType,
    /// Weight rows (outputs) and row length (inputs).
    n: usize,
    k: usize,
}

const SHAPES: &[Shape] = &[
    Shape { model: "smollm2", what: "attn q/o 576→576", dtype: DType::Q4_1, n: 576, k: 576 },
    Shape { model: "smollm2", what: "attn k/v 576→192", dtype: DType::Q4_1, n: 192, k: 576 },
    Shape { model: "smollm2", what: "ffn gate/up 576→1536", dtype: DType::Q4_1, n: 1536, k: 576 },
    Shape { model: "smollm2", what: "ffn down 1536→576", dtype: DType::Q4_1, n: 576, k: 1536 },
    Shape { model: "smollm2", what: "logits 576→49152", dtype: DType::Q8_0, n: 49152, k: 576 },
    Shape { model: "qwen2.5", what: "attn q/o 896→896", dtype: DType::Q5_0, n: 896, k: 896 },
    Shape { model: "qwen2.5", what: "ffn gate/up 896→4864", dtype: DType::Q5_0, n: 4864, k: 896 },
    Shape { model: "qwen2.5", what: "ffn down 4864→896", dtype: DType::Q4_K, n: 896, k: 4864 },
    Shape { model: "qwen2.5", what: "ffn down 4864→896", dtype: DType::Q6_K, n: 896, k: 4864 },
    Shape { model: "qwen2.5", what: "logits 896→151936", dtype: DType::Q8_0, n: 151936, k: 896 },
];

/// Deterministic random bytes (xorshift), with each block's f16 scales set small so the
/// values are those of real weights.
fn weight(dtype: DType, n: usize, k: usize) -> Vec<u8> {
    let layout = dtype.block();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes: Vec<u8> = (0..n * k / layout.values * layout.bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let halves: &[usize] = match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => &[0],
        DType::Q4_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        _ => &[208],
    };
    let h = half::f16::from_f32(0.001).to_le_bytes();
    for block in bytes.chunks_exact_mut(layout.bytes) {
        for &at in halves {
            block[at..at + 2].copy_from_slice(&h);
        }
    }
    bytes
}

/// This thread's CPU time in seconds: time it spent running, whatever else shares the cores.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill; CLOCK_THREAD_CPUTIME_ID is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Seconds per call: the best of 5 rounds of at least `round` seconds each, by the wall clock
/// or (`cpu`: one thread only) by the thread's CPU time.
fn time(round: f64, cpu: bool, mut f: impl FnMut()) -> f64 {
    f();
    let clock = |start: Instant| if cpu { thread_cpu_seconds() } else { start.elapsed().as_secs_f64() };
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let (t0, mut calls) = (clock(start), 0u32);
        while calls == 0 || start.elapsed().as_secs_f64() < round {
            f();
            calls += 1;
        }
        best = best.min((clock(start) - t0) / f64::from(calls));
    }
    best
}

fn list(args: &[String], flag: &str, default: &[usize]) -> Result<Vec<usize>> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args
            .get(i + 1)
            .context("a list after the flag")?
            .split(',')
            .map(|s| s.parse().context("a number"))
            .collect(),
        None => Ok(default.to_vec()),
    }
}

/// The weight matrices one decode step of a model reads: (type, n, k, how many).
fn model_step(model: &str) -> Vec<(DType, usize, usize, usize)> {
    match model {
        // 30 layers: q, o 576×576; k, v 192×576; gate, up 1536×576; down 576×1536; logits.
        "smollm2" => vec![
            (DType::Q4_1, 576, 576, 60),
            (DType::Q4_1, 192, 576, 60),
            (DType::Q4_1, 1536, 576, 60),
            (DType::Q4_1, 576, 1536, 30),
            (DType::Q8_0, 49152, 576, 1),
        ],
        // 24 layers (Q4_K_M): q, o Q5_0; k Q5_0, v Q5_0/Q8_0; gate, up Q5_0; down Q4_K/Q6_K.
        _ => vec![
            (DType::Q5_0, 896, 896, 48),
            (DType::Q5_0, 128, 896, 36),
            (DType::Q8_0, 128, 896, 12),
            (DType::Q5_0, 4864, 896, 48),
            (DType::Q4_K, 896, 4864, 12),
            (DType::Q6_K, 896, 4864, 12),
            (DType::Q8_0, 151936, 896, 1),
        ],
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let round = if args.iter().any(|a| a == "--quick") { 0.02 } else { 0.1 };
    let ms = list(&args, "--m", &[1, 128])?;
    let threads = list(&args, "--threads", &[1, 2])?;
    let levels: Vec<CpuIsa> = CpuIsa::ALL.into_iter().filter(|l| l.supported()).collect();
    if args.iter().any(|a| a == "--step") {
        return step_table(&threads, &levels);
    }
    println!("| model | matrix | type | m | threads | path | ms/call | GB/s | GFLOP/s | vs f32 path |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
        pool.install(|| -> Result<()> {
            for s in SHAPES {
                let w = weight(s.dtype, s.n, s.k);
                for &m in &ms {
                    if m > 1 && s.n > 40000 {
                        continue;
                    }
                    let a: Vec<f32> = (0..m * s.k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
                    let mut out = vec![0.0f32; m * s.n];
                    let p = MatMul { trans_b: true, ..Default::default() }.params(&[m, s.k], &[s.n, s.k], false);
                    let mut paths = vec![("f32 panels".to_string(), None)];
                    paths.extend(levels.iter().map(|&l| (format!("int {l}"), Some(l))));
                    let mut base = 0.0;
                    for (name, path) in paths {
                        let secs = time(round, t == 1, || match path {
                            None => {
                                cpu_stored(&p, &a, s.dtype, &w, None, &mut out, StoredPath::Dequantized, None).unwrap()
                            }
                            Some(isa) => {
                                let w = BlockMatrix { dtype: s.dtype, bytes: &w, rows: s.n, cols: s.k };
                                qdot::matmul(isa, w, &a, m, &mut out).unwrap()
                            }
                        });
                        if path.is_none() {
                            base = secs;
                        }
                        println!(
                            "| {} | {} | {} | {m} | {t} | {name} | {:.3} | {:.1} | {:.1} | {:.1}× |",
                            s.model,
                            s.what,
                            s.dtype,
                            secs * 1e3,
                            w.len() as f64 / secs / 1e9,
                            2.0 * (m * s.n * s.k) as f64 / secs / 1e9,
                            base / secs,
                        );
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Every matmul of one decode step (m = 1) of SmolLM2 and Qwen2.5 with distinct weights, as a
/// model reads them: from memory, not from a cache that a repeated call keeps warm.
fn step_table(threads: &[usize], levels: &[CpuIsa]) -> Result<()> {
    println!("| model | weights MB | threads | path | ms/step | GB/s |");
    println!("|---|---|---|---|---|---|");
    for model in ["smollm2", "qwen2.5"] {
        let mats: Vec<(DType, usize, usize, Vec<u8>)> = model_step(model)
            .into_iter()
            .flat_map(|(dtype, n, k, count)| (0..count).map(move |_| (dtype, n, k)))
            .map(|(dtype, n, k)| (dtype, n, k, weight(dtype, n, k)))
            .collect();
        let bytes: usize = mats.iter().map(|m| m.3.len()).sum();
        let a: Vec<f32> = (0..4864).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut out = vec![0.0f32; 151936];
        for &t in threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
            for &l in levels.iter().filter(|l| **l > CpuIsa::Scalar) {
                let secs = pool.install(|| {
                    time(0.5, t == 1, || {
                        for (dtype, n, k, w) in &mats {
                            let w = BlockMatrix { dtype: *dtype, bytes: w, rows: *n, cols: *k };
                            qdot::matmul(l, w, &a[..*k], 1, &mut out[..*n]).unwrap();
                        }
                    })
                });
                println!(
                    "| {model} | {:.0} | {t} | int {l} | {:.2} | {:.1} |",
                    bytes as f64 / 1e6,
                    secs * 1e3,
                    bytes as f64 / secs / 1e9
                );
            }
        }
    }
    Ok(())
}
