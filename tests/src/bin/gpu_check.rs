//! tandem-gpu-check: everything the CUDA backend is checked and measured with on a GPU
//! machine, in one binary that scripts/gpu-check.sh carries to machines without a Rust
//! toolchain.
//!
//!   tandem-gpu-check pack-model SRC DST    MiniLM folder with f16 weights (half the bytes),
//!       the word-embedding rows no reference text uses zeroed (so the bundle compresses)
//!   tandem-gpu-check pack-gguf SRC DST     a GGUF's shape without its numbers: header,
//!       metadata (tokenizer, template) and tensor table kept, tensor bytes zeroed, so that a
//!       decoder's speed can be measured on a machine the real file is too large to reach
//!   tandem-gpu-check run [--backend cuda|cpu] [--quick] --out tandem.json
//!       op conformance vs the CPU (the cases every backend runs, kernel limits, f16 builds),
//!       MiniLM embeddings of the reference texts, and timings (matmul, attention, MiniLM);
//!       `--backend cpu --quick` rehearses the whole run on a machine without a GPU
//!   tandem-gpu-check report tandem.json torch.json
//!       the table: conformance, MiniLM cosines, timings next to PyTorch's
//!       (benches/gpu_compare.py writes torch.json); exits 1 when a check fails

use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;
use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::backend::cuda::{CudaBackend, cuda_available};
use tandem_runtime::backend::{Arg, Backend, OutArg};
use tandem_runtime::ops::{Activation, Attention, MatMul};
use tandem_runtime::{DType, HostTensor, Op, TensorData};
use tandem_tests::gpu::{check_cases, check_f16, limit_cases};
use tandem_tests::minilm::{self, MIN_COSINE, MiniLm};
use tandem_tests::{cases, check_backend};

type Res<T> = Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("pack-model") if args.len() == 3 => pack_model(Path::new(&args[1]), Path::new(&args[2]), &minilm::reference_path()),
        Some("pack-gguf") if args.len() == 3 => pack_gguf(Path::new(&args[1]), Path::new(&args[2])),
        Some("run") => run(&args[1..]),
        Some("report") if args.len() == 3 => report(Path::new(&args[1]), Path::new(&args[2])),
        _ => Err("usage: tandem-gpu-check pack-model SRC DST | pack-gguf SRC DST | run [--backend cuda|cpu] [--quick] --out FILE | \
                  report TANDEM_JSON TORCH_JSON"
            .into()),
    };
    if let Err(e) = result {
        eprintln!("tandem-gpu-check: {e}");
        std::process::exit(1);
    }
}

/// The small files of a sentence-transformers folder that travel with the weights.
const MODEL_FILES: &[&str] = &[
    "config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "1_Pooling/config.json",
];

/// Copies a MiniLM folder with its float weights stored as f16 (87 MB of f32 become 45 MB).
/// Both readers widen them back to f32 on load: tandem's weight loader and transformers.
/// Non-float tensors (a position_ids buffer) are left out. Half of the bytes are the word
/// embedding (30,522 rows), of which the reference texts use a few hundred: the other rows are
/// zeroed, which changes none of the checked embeddings (a row is read only for its own token)
/// and lets the compressed bundle, with the repository, fit a 64 MiB transfer. The timings
/// feed random ids to both tandem and PyTorch, for which a zero row costs the same as any.
fn pack_model(src: &Path, dst: &Path, reference_path: &Path) -> Res<()> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let reference = minilm::load_reference(reference_path)?;
    let texts: Vec<&str> = reference.inputs.iter().map(|r| r.text.as_str()).collect();
    let used: std::collections::HashSet<usize> =
        MiniLm::load(src)?.batch(&texts)?.input_ids.iter().map(|&id| id as usize).collect();
    std::fs::create_dir_all(dst.join("1_Pooling")).map_err(|e| io(dst, e))?;
    for f in MODEL_FILES {
        let from = src.join(f);
        if from.exists() {
            std::fs::copy(&from, dst.join(f)).map_err(|e| io(&from, e))?;
        }
    }
    let path = src.join("model.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut halves: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            continue;
        }
        let row = view.shape().last().copied().unwrap_or(1).max(1);
        let word_embedding = name.ends_with("word_embeddings.weight");
        let data: Vec<u8> = view
            .data()
            .chunks_exact(4)
            .enumerate()
            .flat_map(|(i, c)| {
                let keep = !word_embedding || used.contains(&(i / row));
                let x = if keep { f32::from_le_bytes([c[0], c[1], c[2], c[3]]) } else { 0.0 };
                half::f16::from_f32(x).to_le_bytes()
            })
            .collect();
        halves.push((name, view.shape().to_vec(), data));
    }
    let views = halves
        .iter()
        .map(|(n, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| format!("{n}: {e}"))
        })
        .collect::<Res<Vec<_>>>()?;
    // transformers refuses safetensors files without a "format" entry.
    let metadata = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
    let out = dst.join("model.safetensors");
    safetensors::serialize_to_file(views, metadata, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "{}: {} tensors as f16, {} word-embedding rows kept for the reference texts",
        out.display(),
        halves.len(),
        used.len()
    );
    Ok(())
}

/// Copies a GGUF with every tensor byte zeroed (all else as it was). The copy loads and runs
/// like the original, at the same speed (no kernel looks at the values), but compresses to its
/// metadata. Its outputs are meaningless: it is for timings only.
fn pack_gguf(src: &Path, dst: &Path) -> Res<()> {
    let gguf = tandem_runtime::weights::gguf::Gguf::open(src).map_err(|e| e.to_string())?;
    let mut bytes = gguf.bytes()[..gguf.data_start()].to_vec();
    bytes.resize(gguf.bytes().len(), 0);
    std::fs::write(dst, &bytes).map_err(|e| format!("{}: {e}", dst.display()))?;
    println!(
        "{}: {} tensors, {} bytes of tensor data zeroed",
        dst.display(),
        gguf.tensors().len(),
        bytes.len() - gguf.data_start()
    );
    Ok(())
}

fn run(args: &[String]) -> Res<()> {
    let mut backend = "cuda".to_string();
    let mut quick = false;
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => backend = it.next().cloned().ok_or("--backend needs a value")?,
            "--quick" => quick = true,
            "--out" => out = it.next().cloned(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let out = out.ok_or("run needs --out FILE")?;
    let result = match backend.as_str() {
        "cuda" => {
            cuda_available().map_err(|e| format!("--backend cuda: {e}"))?;
            let b = CudaBackend::new(0).map_err(|e| e.to_string())?;
            let start = Instant::now();
            let builds = b.warm_up().map_err(|e| e.to_string())?;
            eprintln!("{}: {builds} kernel builds ready in {:.2?}", b.device_description(), start.elapsed());
            let f16 = b.compute_capability() >= 80;
            run_on(b, quick, f16)?
        }
        "cpu" => run_on(CpuBackend::exact(), quick, false)?,
        other => return Err(format!("unknown backend '{other}' (cuda or cpu)")),
    };
    std::fs::write(&out, serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{out}: {e}"))?;
    eprintln!("wrote {out}");
    Ok(())
}

fn run_on<B: Backend + Clone>(backend: B, quick: bool, f16: bool) -> Res<Value> {
    let seed = tandem_tests::seed();
    eprintln!("conformance (seed {seed})...");
    let n_cases = cases(seed).len();
    let ops = check_backend(|| backend.clone(), seed);
    let limits_list = limit_cases(seed);
    let limits = check_cases(|| backend.clone(), &limits_list);
    let f16_failures = if f16 { Some(check_f16(&backend, seed)) } else { None };
    let f16_count = tandem_tests::gpu::f16_cases(seed).len();

    let minilm = minilm_parity(&backend, quick);
    let benches = benchmarks(&backend, quick, f16)?;
    Ok(json!({
        "device": backend.device_description(),
        "backend": backend.name(),
        "seed": seed,
        "conformance": {
            "ops": {"cases": n_cases, "failures": ops},
            "limits": {"cases": limits_list.len(), "failures": limits},
            "f16": f16_failures.map(|f| json!({"cases": f16_count, "failures": f})),
        },
        "minilm": minilm,
        "benches": benches,
    }))
}

/// MiniLM embeddings of the reference texts in one batch, with cosines to the reference and
/// to the CPU; `{"skipped": why}` without the model.
fn minilm_parity<B: Backend + Clone>(backend: &B, quick: bool) -> Value {
    let attempt = || -> Res<Value> {
        let dir = minilm::model_dir()?;
        let reference_path = minilm::reference_path();
        let reference = minilm::load_reference(&reference_path)?;
        let model = MiniLm::load(&dir)?;
        let texts: Vec<&str> = reference.inputs.iter().map(|r| r.text.as_str()).collect();
        let batch = model.batch(&texts)?;
        let got = model.embed(&model.session(backend.clone())?, &batch)?;
        let cpu = if quick { got.clone() } else { model.embed(&model.session(CpuBackend::new())?, &batch)? };
        let to_reference = minilm::cosines(&reference, &batch, &got)?;
        let to_cpu: Vec<f64> = got.iter().zip(&cpu).map(|(g, c)| f64::from(tandem_models::cosine(g, c))).collect();
        Ok(json!({
            "model_dir": dir.display().to_string(),
            "reference": reference_path.display().to_string(),
            "texts": texts,
            "tokens": batch.tokens(),
            "cosine_to_reference": to_reference,
            "cosine_to_cpu": to_cpu,
            "embeddings": got,
        }))
    };
    attempt().unwrap_or_else(|e| {
        eprintln!("MiniLM parity skipped: {e}");
        json!({"skipped": e})
    })
}

fn ramp(shape: &[usize], dtype: DType, seed: usize) -> HostTensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (((i + seed) * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    match dtype {
        DType::F16 => {
            HostTensor::new(shape.to_vec(), TensorData::F16(v.into_iter().map(half::f16::from_f32).collect())).unwrap()
        }
        _ => HostTensor::f32(shape.to_vec(), v).unwrap(),
    }
}

/// Milliseconds per dispatch of `op`: operands uploaded once, `iters` dispatches queued, then
/// one wait (so the time is the kernels', not the copies').
fn time_op<B: Backend>(
    backend: &B,
    op: &Op,
    inputs: &[HostTensor],
    out: (DType, Vec<usize>),
    iters: usize,
) -> Res<f64> {
    let e = |e: tandem_runtime::Error| e.to_string();
    let bufs = inputs.iter().map(|t| backend.upload(t)).collect::<Result<Vec<_>, _>>().map_err(e)?;
    let bytes = out.0.bytes_for_shape(&out.1).map_err(e)?;
    let mut out_buf = backend.alloc(bytes.max(16)).map_err(e)?;
    let mut once = |n: usize| -> Res<f64> {
        let start = Instant::now();
        let mut rec = backend.begin().map_err(e)?;
        for _ in 0..n {
            let args: Vec<Arg<'_, B::Buffer>> =
                inputs.iter().zip(&bufs).map(|(t, buf)| Arg { buf, dtype: t.dtype(), shape: &t.shape }).collect();
            let mut outs = [OutArg { buf: &mut out_buf, dtype: out.0, shape: &out.1 }];
            backend.dispatch(&mut rec, op, &args, &mut outs).map_err(e)?;
        }
        pollster::block_on(backend.finish(rec, &[])).map_err(e)?;
        Ok(start.elapsed().as_secs_f64() * 1e3 / n as f64)
    };
    once(2)?; // compile, caches, clocks
    once(iters)
}

/// The benchmark list (also what benches/gpu_compare.py times on PyTorch: it reads the specs
/// from this output, so both sides always measure the same shapes).
fn benchmarks<B: Backend + Clone>(backend: &B, quick: bool, f16: bool) -> Res<Value> {
    let iters = if quick { 2 } else { 50 };
    let matmuls: &[(usize, usize, usize)] =
        if quick { &[(128, 64, 96)] } else { &[(4096, 384, 1536), (4096, 1536, 384), (4096, 4096, 4096)] };
    let attentions: &[(usize, usize, usize, usize, bool)] = if quick {
        &[(2, 32, 2, 32, false)]
    } else {
        &[(32, 128, 12, 32, false), (8, 1024, 16, 64, false), (8, 1024, 16, 64, true)]
    };
    let dtypes: &[DType] = if f16 { &[DType::F32, DType::F16] } else { &[DType::F32] };
    let mut results = Vec::new();
    for &dtype in dtypes {
        for &(m, k, n) in matmuls {
            let op = Op::MatMul(MatMul { trans_b: true, activation: Activation::None });
            let inputs = [ramp(&[m, k], dtype, 0), ramp(&[n, k], dtype, 1)];
            eprintln!("bench matmul {dtype} {m}x{k}x{n}");
            let ms = time_op(backend, &op, &inputs, (dtype, vec![m, n]), iters)?;
            let tflops = 2.0 * (m * n * k) as f64 / (ms * 1e-3) / 1e12;
            results.push(json!({"kind": "matmul", "dtype": dtype.name(), "m": m, "k": k, "n": n,
                "name": format!("matmul {} {m}x{k}x{n}", dtype.name()), "ms": ms, "tflops": tflops}));
        }
        for &(seqs, len, heads, d, causal) in attentions {
            let tokens = seqs * len;
            let op = Op::Attention(Attention {
                num_heads: heads as u32,
                num_kv_heads: heads as u32,
                scale: 1.0 / (d as f32).sqrt(),
                causal,
                bf16_products: false,
            });
            let segments: Vec<u32> = (0..seqs).flat_map(|s| [(s * len) as u32, len as u32]).collect();
            let qkv = |i| ramp(&[tokens, heads * d], dtype, i);
            let inputs = [qkv(0), qkv(1), qkv(2), HostTensor::u32(vec![seqs, 2], segments).unwrap()];
            let name =
                format!("attention {} {seqs}x{len} h{heads} d{d}{}", dtype.name(), if causal { " causal" } else { "" });
            eprintln!("bench {name}");
            let ms = time_op(backend, &op, &inputs, (dtype, vec![tokens, heads * d]), iters)?;
            results.push(json!({"kind": "attention", "dtype": dtype.name(), "seqs": seqs, "len": len, "heads": heads,
                "d": d, "causal": causal, "name": name, "ms": ms}));
        }
    }
    // MiniLM end to end: a packed batch of 32 sequences of 128 tokens in, embeddings out.
    let model = minilm::model_dir().and_then(|d| MiniLm::load(&d));
    match model {
        Ok(model) => {
            let (seqs, len) = if quick { (4, 16) } else { (32, 128) };
            let batch = minilm::synthetic_batch(seqs, len, 7);
            let session = model.session(backend.clone())?;
            let runs = if quick { 2 } else { 30 };
            model.embed(&session, &batch)?;
            model.embed(&session, &batch)?;
            let start = Instant::now();
            for _ in 0..runs {
                model.embed(&session, &batch)?;
            }
            let ms = start.elapsed().as_secs_f64() * 1e3 / runs as f64;
            results.push(json!({"kind": "minilm", "dtype": "f32", "seqs": seqs, "len": len,
                "name": format!("MiniLM {seqs}x{len}"), "ms": ms, "seqs_per_s": seqs as f64 / (ms * 1e-3)}));
        }
        Err(e) => eprintln!("MiniLM throughput skipped: {e}"),
    }
    Ok(Value::Array(results))
}

fn read_json(path: &Path) -> Res<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn report(tandem: &Path, torch: &Path) -> Res<()> {
    let t = read_json(tandem)?;
    let p = read_json(torch).unwrap_or_else(|e| {
        eprintln!("no PyTorch results ({e}): timings without a comparison");
        json!({})
    });
    let mut ok = true;
    println!("\n== tandem CUDA check: {}", t["device"].as_str().unwrap_or("?"));
    if let Some(torch_device) = p["device"].as_str() {
        println!("   PyTorch {} on {torch_device}", p["torch"].as_str().unwrap_or("?"));
    }
    println!("\n{:<34} result", "check");
    for (key, label) in
        [("ops", "op conformance vs CPU"), ("limits", "kernel limits vs CPU"), ("f16", "f16 matmul/attention vs CPU")]
    {
        let c = &t["conformance"][key];
        if c.is_null() {
            println!("{label:<34} not run (needs sm_80+)");
            continue;
        }
        let cases = c["cases"].as_u64().unwrap_or(0);
        let failures = c["failures"].as_array().map(Vec::len).unwrap_or(0) as u64;
        ok &= failures == 0;
        println!(
            "{label:<34} {}/{cases} pass{}",
            cases - failures.min(cases),
            if failures > 0 { "  FAIL" } else { "" }
        );
        for f in c["failures"].as_array().into_iter().flatten().take(10) {
            println!("    {}", f.as_str().unwrap_or(""));
        }
    }
    let m = &t["minilm"];
    if let Some(why) = m["skipped"].as_str() {
        println!("{:<34} skipped: {why}", "MiniLM parity");
        ok = false;
    } else {
        let worst = |v: &Value| v.as_array().map(|a| a.iter().filter_map(Value::as_f64).fold(f64::INFINITY, f64::min));
        let mut line = |label: &str, w: Option<f64>| {
            if let Some(w) = w {
                let pass = w >= MIN_COSINE;
                ok &= pass;
                println!(
                    "{label:<34} worst cosine {w:.7} over {} texts  {}",
                    m["texts"].as_array().map_or(0, Vec::len),
                    if pass { "ok" } else { "FAIL" }
                );
            }
        };
        line("MiniLM vs reference JSON", worst(&m["cosine_to_reference"]));
        line("MiniLM vs tandem CPU", worst(&m["cosine_to_cpu"]));
        // PyTorch's embeddings of the same texts with the same (bundled) weights.
        if let (Some(ours), Some(theirs)) = (m["embeddings"].as_array(), p["embeddings"].as_array()) {
            let to_vec = |v: &Value| {
                v.as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).map(|x| x as f32).collect::<Vec<f32>>())
                    .unwrap_or_default()
            };
            let w = ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| f64::from(tandem_models::cosine(&to_vec(a), &to_vec(b))))
                .fold(f64::INFINITY, f64::min);
            line("MiniLM vs sentence-transformers", Some(w));
        }
    }

    println!("\n{:<40} {:>11} {:>11} {:>9}", "benchmark", "tandem ms", "torch ms", "ratio");
    let torch_ms = |name: &str| {
        p["benches"].as_array().and_then(|a| a.iter().find(|b| b["name"] == name)).and_then(|b| b["ms"].as_f64())
    };
    for b in t["benches"].as_array().into_iter().flatten() {
        let name = b["name"].as_str().unwrap_or("?");
        let ms = b["ms"].as_f64().unwrap_or(f64::NAN);
        let extra = match (b["tflops"].as_f64(), b["seqs_per_s"].as_f64()) {
            (Some(t), _) => format!("  {t:.1} TFLOP/s"),
            (_, Some(s)) => format!("  {s:.0} seq/s"),
            _ => String::new(),
        };
        match torch_ms(name) {
            // ratio > 1: tandem is slower than PyTorch by that factor
            Some(tm) => println!("{name:<40} {ms:>11.3} {tm:>11.3} {:>8.2}x{extra}", ms / tm),
            None => println!("{name:<40} {ms:>11.3} {:>11} {:>9}{extra}", "-", "-"),
        }
    }
    println!("\nratio = tandem time / PyTorch time (cuBLAS for matmul, SDPA for attention).");
    if ok { Ok(()) } else { Err("some checks failed (see above)".into()) }
}
