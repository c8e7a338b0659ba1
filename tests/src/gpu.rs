//! Extra checks for GPU backends, beyond the conformance cases every backend runs:
//!
//! - [`limit_cases`]: shapes that cross the GPU kernels' internal limits (rows wider than a
//!   warp handles, many sequences, long segments, the largest head dim, full-rank
//!   broadcasts), which the small conformance shapes do not reach.
//! - the f16 builds of the GPU kernels (matmul and attention with f16 storage and f32
//!   arithmetic). Graphs cannot reach them yet (shape inference takes f32 matmul and
//!   attention only), so each case is dispatched directly on the backend with f16 operands
//!   and compared with the CPU reference run on the same numbers (the inputs rounded to f16).

use crate::{Case, Tolerance, cases, compare, run_case, tolerance};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_runtime::Op;
use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::backend::{Arg, Backend, OutArg};
use tandem_runtime::graph::Bindings;
use tandem_runtime::ops::{Activation, Attention, BinaryKind, LoraMatMul, MatMul, PoolKind};
use tandem_runtime::{DType, HostTensor, OpKind, TensorData};

fn uniform(rng: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::f32(shape.to_vec(), (0..n).map(|_| rng.random_range(lo..hi)).collect()).expect("shape matches")
}

fn segments(spans: &[(u32, u32)]) -> HostTensor {
    HostTensor::u32(vec![spans.len(), 2], spans.iter().flat_map(|&(s, l)| [s, l]).collect()).expect("shape matches")
}

/// Cases at the GPU kernels' internal limits (see the module comment), inputs from `seed`.
pub fn limit_cases(seed: u64) -> Vec<Case> {
    let rng = &mut StdRng::seed_from_u64(seed ^ 0x5eed_0017);
    let mut out = Vec::new();
    let mut add = |name: String, op: Op, inputs: Vec<HostTensor>| out.push(Case { name, op, inputs });
    // Rows wider than one warp's share: a whole block reduces each row.
    for shape in [[3usize, 1025], [2, 4099]] {
        let d = shape[1];
        add(
            format!("layer_norm_{shape:?}"),
            Op::LayerNorm { eps: 1e-5 },
            vec![uniform(rng, &shape, -3.0, 3.0), uniform(rng, &[d], 0.5, 1.5), uniform(rng, &[d], -0.5, 0.5)],
        );
        add(format!("softmax_{shape:?}"), Op::Softmax, vec![uniform(rng, &shape, -10.0, 10.0)]);
        add(format!("l2_normalize_{shape:?}"), Op::L2Normalize { eps: 1e-12 }, vec![uniform(rng, &shape, -3.0, 3.0)]);
    }
    // matmul: many K tiles, K not a multiple of 4 (element-wise tile loads), batched b.
    for &(batch, m, k, n, trans_b) in &[(1, 257, 1023, 130, true), (1, 130, 250, 67, false), (5, 33, 70, 65, false)] {
        let lead: &[usize] = if batch == 1 { &[] } else { &[batch] };
        let a = uniform(rng, &[lead, &[m, k]].concat(), -1.0, 1.0);
        let b = uniform(rng, &[lead, &(if trans_b { [n, k] } else { [k, n] })].concat(), -1.0, 1.0);
        add(
            format!("matmul_{batch}x{m}x{k}x{n}_t{trans_b}"),
            Op::MatMul(MatMul { trans_b, activation: Activation::Gelu }),
            vec![a, b, uniform(rng, &[n], -1.0, 1.0)],
        );
    }
    // LoRA: several row blocks, many K tiles then three r tiles (r = 48) in one K loop.
    let (rows, k, n, r) = (257, 250, 67, 48);
    add(
        format!("lora_matmul_{rows}x{k}x{n}_r{r}"),
        Op::LoraMatMul(LoraMatMul { scale: 0.5, activation: Activation::Gelu }),
        vec![
            uniform(rng, &[rows, k], -1.0, 1.0),
            uniform(rng, &[n, k], -1.0, 1.0),
            uniform(rng, &[r, k], -1.0, 1.0),
            uniform(rng, &[n, r], -1.0, 1.0),
            uniform(rng, &[n], -1.0, 1.0),
        ],
    );
    // attention: more sequences than a warp has lanes (the tile scan's per-lane chunks), a
    // segment longer than several key blocks, the largest head dim, a gap, GQA, causal.
    let many: Vec<(u32, u32)> = (0..70u32).map(|i| (i * 5, [1, 5, 3, 0, 4][i as usize % 5])).collect();
    // (segments, heads, kv heads, head dim, causal)
    type AttnCase = (Vec<(u32, u32)>, u32, u32, u32, bool);
    let attn: Vec<AttnCase> = vec![
        (many, 2, 1, 8, true),
        (vec![(3, 200), (210, 17)], 2, 2, 128, false),
        (vec![(0, 100)], 4, 2, 36, true),
        (vec![(0, 33), (33, 31)], 1, 1, 5, false),
    ];
    for (spans, heads, kv_heads, d, causal) in &attn {
        let tokens = spans.iter().map(|&(s, l)| s + l).max().unwrap_or(0) as usize + 2;
        let (qw, kw) = ((heads * d) as usize, (kv_heads * d) as usize);
        let op = Op::Attention(Attention {
            num_heads: *heads,
            num_kv_heads: *kv_heads,
            scale: 1.0 / (*d as f32).sqrt(),
            causal: *causal,
            bf16_products: false,
        });
        add(
            format!("attention_{}seqs_h{heads}_kv{kv_heads}_d{d}_causal{causal}", spans.len()),
            op,
            vec![
                uniform(rng, &[tokens, qw], -2.0, 2.0),
                uniform(rng, &[tokens, kw], -2.0, 2.0),
                uniform(rng, &[tokens, kw], -1.0, 1.0),
                segments(spans),
            ],
        );
    }
    // binary broadcasting over the full rank.
    add(
        "binary_rank8".into(),
        Op::Binary(BinaryKind::Mul),
        vec![uniform(rng, &[2, 1, 3, 1, 2, 3, 1, 5], -2.0, 2.0), uniform(rng, &[3, 1, 2, 1, 4, 1], -2.0, 2.0)],
    );
    // gather with a row length that is no multiple of 4; pooling over many sequences and
    // more columns than one block covers.
    let ids: Vec<u32> = (0..300).map(|i| if i % 17 == 3 { 5000 } else { rng.random_range(0..50) }).collect();
    add(
        "gather_50x131_300".into(),
        Op::Gather,
        vec![uniform(rng, &[50, 131], -1.0, 1.0), HostTensor::u32(vec![300], ids).expect("shape")],
    );
    // Stored weights: a matvec whose lanes pass over K many times (Qwen2.5-0.5B's FFN down
    // projection, K = 4864), tiled products over many K steps and two row tiles, a gather of
    // Qwen's 896-wide rows.
    let linear = |activation| Op::MatMul(MatMul { trans_b: true, activation });
    add(
        "matmul_q4_k_3x4864x130".into(),
        linear(Activation::Gelu),
        vec![
            uniform(rng, &[3, 4864], -1.0, 1.0),
            crate::random_weight(rng, DType::Q4_K, 130, 4864),
            uniform(rng, &[130], -1.0, 1.0),
        ],
    );
    for dtype in [DType::Q6_K, DType::Q5_0, DType::BF16] {
        add(
            format!("matmul_{dtype}_40x1024x70"),
            linear(Activation::None),
            vec![uniform(rng, &[40, 1024], -1.0, 1.0), crate::random_weight(rng, dtype, 70, 1024)],
        );
    }
    let ids: Vec<u32> = (0..300).map(|i| if i % 13 == 4 { 70 } else { rng.random_range(0..50) }).collect();
    add(
        "gather_q8_0_50x896_300".into(),
        Op::Gather,
        vec![crate::random_weight(rng, DType::Q8_0, 50, 896), HostTensor::u32(vec![300], ids).expect("shape")],
    );
    for &kind in PoolKind::ALL {
        let spans: Vec<(u32, u32)> = (0..40u32).map(|i| (i * 7, i % 8)).collect();
        add(
            format!("pool_{kind:?}_40seqs_d300"),
            Op::Pool(kind),
            vec![uniform(rng, &[290, 300], -1.0, 1.0), segments(&spans)],
        );
    }
    out
}

/// Runs `cases` on `make()`'s backend and on the CPU; one line per failure.
pub fn check_cases<B: Backend>(make: impl Fn() -> B, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let want = run_case(CpuBackend::exact(), case).expect("the CPU reference runs every case");
        match run_case(make(), case) {
            Err(e) => failures.push(format!("{}: {e}", case.name)),
            Ok(got) => {
                for (g, w) in got.iter().zip(&want) {
                    if let Err(e) = compare(g, w, tolerance(case.op.kind())) {
                        failures.push(format!("{}: {e}", case.name));
                    }
                }
            }
        }
    }
    failures
}

/// The output is rounded to f16 (relative step 2^-11), the sums are f32 in another order.
pub const F16_TOLERANCE: Tolerance = Tolerance::new(1e-3, 1.5e-3);

fn round_to_f16(t: &HostTensor) -> HostTensor {
    match &t.data {
        TensorData::F32(v) => HostTensor::f32(t.shape.clone(), v.iter().map(|&x| f16::from_f32(x).to_f32()).collect())
            .expect("same shape"),
        _ => t.clone(),
    }
}

fn to_f16(t: &HostTensor) -> HostTensor {
    match &t.data {
        TensorData::F32(v) => {
            HostTensor::new(t.shape.clone(), TensorData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()))
                .expect("same shape")
        }
        _ => t.clone(),
    }
}

/// The matmul and attention cases (conformance and limits), with f32 inputs rounded to f16.
pub fn f16_cases(seed: u64) -> Vec<Case> {
    cases(seed)
        .into_iter()
        .chain(limit_cases(seed))
        .filter(|c| matches!(c.op.kind(), OpKind::MatMul | OpKind::Attention))
        // Cases with stored weights already have their own dtype.
        .filter(|c| c.inputs.iter().all(|t| matches!(t.dtype(), DType::F32 | DType::U32)))
        .map(|c| Case {
            name: format!("{}_f16", c.name),
            op: c.op.clone(),
            inputs: c.inputs.iter().map(round_to_f16).collect(),
        })
        .collect()
}

/// Runs `case` on `backend` with its float operands stored as f16; returns the output widened
/// to f32.
pub fn run_f16<B: Backend>(backend: &B, case: &Case) -> tandem_runtime::Result<HostTensor> {
    let shapes: Vec<(DType, &[usize])> = case.inputs.iter().map(|t| (t.dtype(), t.shape.as_slice())).collect();
    let out_shape = case.op.output_shapes(&shapes, &Bindings::new()).map_err(tandem_runtime::Error::input)?.remove(0).1;
    let inputs: Vec<HostTensor> = case.inputs.iter().map(to_f16).collect();
    let bufs = inputs.iter().map(|t| backend.upload(t)).collect::<tandem_runtime::Result<Vec<_>>>()?;
    let out_len: usize = out_shape.iter().product();
    let mut out = backend.alloc((out_len * 2).max(16))?;
    let mut rec = backend.begin()?;
    {
        let args: Vec<Arg<'_, B::Buffer>> =
            inputs.iter().zip(&bufs).map(|(t, buf)| Arg { buf, dtype: t.dtype(), shape: &t.shape }).collect();
        let mut outs = [OutArg { buf: &mut out, dtype: DType::F16, shape: &out_shape }];
        backend.dispatch(&mut rec, &case.op, &args, &mut outs)?;
    }
    let read = [Arg { buf: &out, dtype: DType::F16, shape: &out_shape }];
    let got = pollster::block_on(backend.finish(rec, &read))?.remove(0);
    HostTensor::f32(got.shape.clone(), got.to_f32())
}

/// Every f16 case on `backend` against the CPU; one line per failure.
pub fn check_f16<B: Backend>(backend: &B, seed: u64) -> Vec<String> {
    let mut failures = Vec::new();
    for case in f16_cases(seed) {
        let want = run_case(CpuBackend::exact(), &case).expect("the CPU reference runs every case").remove(0);
        match run_f16(backend, &case) {
            Err(e) => failures.push(format!("{}: {e}", case.name)),
            Ok(got) => {
                if let Err(e) = compare(&got, &want, F16_TOLERANCE) {
                    failures.push(format!("{}: {e}", case.name));
                }
            }
        }
    }
    failures
}
