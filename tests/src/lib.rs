//! Op conformance: every op, on random inputs of awkward shapes (1, 7, 129, not only tile
//! multiples), run on a backend and compared with the CPU reference within the op's stated
//! tolerance. Backend test files call [`check_backend`]; [`cases`] covers every [`OpKind`].

pub mod decoder;
pub mod gpu;
#[cfg(feature = "cuda")]
pub mod minilm;
pub mod ops_table;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_runtime::backend::Backend;
use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::ops::{
    Activation, Attention, BinaryKind, Connective, Conv2d, KvWrite, Logic, LoraMatMul, MatMul, PoolKind, Rope,
    RopeLayout, UnaryKind,
};
use tandem_runtime::{DType, Dim, Graph, HostTensor, Op, OpKind, Outputs, Session, TensorData, TensorType};

/// How close a backend's output must be to the CPU's: |got − want| ≤ abs + rel·|want|.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub abs: f32,
    pub rel: f32,
}

impl Tolerance {
    pub const EXACT: Tolerance = Tolerance { abs: 0.0, rel: 0.0 };
    pub const fn new(abs: f32, rel: f32) -> Self {
        Tolerance { abs, rel }
    }
}

/// Stated per op: float reductions reorder sums on GPUs, so they get more room than maps.
pub fn tolerance(kind: OpKind) -> Tolerance {
    match kind {
        OpKind::MatMul | OpKind::LoraMatMul => Tolerance::new(2e-4, 1e-3),
        OpKind::Attention => Tolerance::new(1e-4, 1e-3),
        OpKind::LayerNorm | OpKind::RmsNorm => Tolerance::new(1e-4, 1e-4),
        OpKind::Softmax | OpKind::L2Normalize | OpKind::Pool => Tolerance::new(1e-5, 1e-4),
        // One rotation per pair, but sin and cos of angles up to ~2000 rad: their f32
        // results differ between math libraries by an ulp of the angle's reduction.
        OpKind::Rope => Tolerance::new(2e-5, 1e-4),
        OpKind::Unary | OpKind::Binary => Tolerance::new(1e-5, 1e-5),
        // A few roundings per element; GPUs may fuse a·b + c where the CPU rounds twice.
        OpKind::SoftLogic => Tolerance::new(1e-6, 1e-6),
        // Up to 2·entities connectives per score, and contributions are differences of
        // scores, so rounding differences add up over an item's entities.
        OpKind::Aggregate => Tolerance::new(1e-5, 1e-5),
        // At most C/groups·KH·KW = 63 products per output here, summed in the same order on
        // every backend but with FMA on GPUs, and through gemm (another order) for 1x1 on the
        // CPU: a few ulps of a sum of magnitude up to ~10.
        OpKind::Conv2d => Tolerance::new(2e-5, 1e-4),
        // Same order, f32 division: rounding of the last add and the division only.
        OpKind::GlobalAvgPool => Tolerance::new(1e-6, 1e-5),
        // Ids: every backend must choose the same token.
        OpKind::Cast | OpKind::Gather | OpKind::Reshape | OpKind::Clamp | OpKind::KvWrite | OpKind::Sample => {
            Tolerance::EXACT
        }
    }
}

pub struct Case {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<HostTensor>,
}

impl Case {
    /// A one-node graph of this op with every operand a graph input, but the operand an op
    /// writes in place, which is a graph state (filled from the case's input before the run).
    pub fn graph(&self) -> Graph {
        let mut g = Graph::new(&self.name);
        let in_place = self.op.in_place_input();
        let ids: Vec<_> = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let ty = TensorType::fixed(t.dtype(), &t.shape);
                if Some(i) == in_place { g.state(&format!("in{i}"), ty) } else { g.input(&format!("in{i}"), ty) }
            })
            .collect();
        let outs = g.node(&self.name, self.op.clone(), &ids).expect("case is well formed");
        for (i, o) in outs.into_iter().enumerate() {
            g.output(o, &format!("out{i}"));
        }
        g
    }
}

fn uniform(rng: &mut StdRng, shape: &[usize], lo: f32, hi: f32) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::f32(shape.to_vec(), (0..n).map(|_| rng.random_range(lo..hi)).collect()).unwrap()
}

/// An f32 tensor rounded to f16.
fn to_f16(t: &HostTensor) -> HostTensor {
    let halves = t.to_f32().iter().map(|&x| half::f16::from_f32(x)).collect();
    HostTensor::new(t.shape.clone(), TensorData::F16(halves)).expect("same element count")
}

/// A random weight `[rows, k]` stored as `dtype` (f16, bf16 or GGUF blocks): random bytes with
/// every block's f16 scales (and mins) set so that the values stay below about 1, as real
/// weights do (sums of K products then keep f32 rounding far below the tolerances).
pub fn random_weight(rng: &mut StdRng, dtype: DType, rows: usize, k: usize) -> HostTensor {
    // The largest scale that keeps |value| ≲ 1: quants times sub-block scales reach ~128 for
    // Q8_0, ~2000 for Q4_K/Q5_K (6-bit scales) and ~4000 for Q6_K (i8 scales).
    let scale = match dtype {
        DType::Q8_0 => 0.008,
        DType::Q4_K | DType::Q5_K => 0.0005,
        DType::Q6_K => 0.00025,
        _ => 0.06,
    };
    let small = |rng: &mut StdRng| half::f16::from_f32(rng.random_range(-scale..scale)).to_le_bytes();
    let data = match dtype {
        DType::F16 => {
            TensorData::F16((0..rows * k).map(|_| half::f16::from_f32(rng.random_range(-1.0..1.0))).collect())
        }
        DType::BF16 => {
            TensorData::BF16((0..rows * k).map(|_| half::bf16::from_f32(rng.random_range(-1.0..1.0))).collect())
        }
        _ => {
            let layout = dtype.block();
            let blocks = rows * k / layout.values;
            let mut bytes: Vec<u8> = (0..blocks * layout.bytes).map(|_| rng.random()).collect();
            // Where each type keeps its f16 fields (ggml's block structs).
            let halves: &[usize] = match dtype {
                DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => &[0],
                DType::Q4_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
                DType::Q6_K => &[208],
                other => panic!("no random blocks for {other}"),
            };
            for block in bytes.chunks_exact_mut(layout.bytes) {
                for &at in halves {
                    block[at..at + 2].copy_from_slice(&small(rng));
                }
            }
            TensorData::from_bytes(dtype, &bytes).unwrap()
        }
    };
    HostTensor::new(vec![rows, k], data).unwrap()
}

fn segments(spans: &[(u32, u32)]) -> HostTensor {
    HostTensor::u32(vec![spans.len(), 2], spans.iter().flat_map(|&(s, l)| [s, l]).collect()).unwrap()
}

/// The conformance cases for every op, with inputs drawn from `seed`.
pub fn cases(seed: u64) -> Vec<Case> {
    let rng = &mut StdRng::seed_from_u64(seed);
    let mut cases = Vec::new();
    let mut add = |name: String, op: Op, inputs: Vec<HostTensor>| cases.push(Case { name, op, inputs });

    // matmul: plain, transposed, bias, activations, batched with shared and batched b.
    for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (129, 65, 33), (64, 64, 64), (3, 129, 257), (33, 384, 7)] {
        for trans_b in [false, true] {
            for (bias, activation) in [
                (false, Activation::None),
                (true, Activation::None),
                (true, Activation::Gelu),
                (false, Activation::Relu),
                (true, Activation::Silu),
            ] {
                let a = uniform(rng, &[m, k], -1.0, 1.0);
                let b = uniform(rng, &if trans_b { [n, k] } else { [k, n] }, -1.0, 1.0);
                let mut inputs = vec![a, b];
                if bias {
                    inputs.push(uniform(rng, &[n], -1.0, 1.0));
                }
                add(
                    format!("matmul_{m}x{k}x{n}_t{trans_b}_bias{bias}_{activation:?}"),
                    Op::MatMul(MatMul { trans_b, activation }),
                    inputs,
                );
            }
        }
    }
    for shared_b in [true, false] {
        let (batch, m, k, n) = (3, 7, 17, 9);
        let a = uniform(rng, &[batch, m, k], -1.0, 1.0);
        let b = if shared_b { uniform(rng, &[n, k], -1.0, 1.0) } else { uniform(rng, &[batch, n, k], -1.0, 1.0) };
        add(
            format!("matmul_batched_shared{shared_b}"),
            Op::MatMul(MatMul { trans_b: true, activation: Activation::None }),
            vec![a, b],
        );
    }
    // matmul with a stored weight (f16, bf16, GGUF blocks) [N, K], dequantized inside the
    // kernel: every M in {1, 7, 33} (GPUs: the matvec kernel up to 8 rows, tiles beyond) with
    // every N in {1, 7, 129} (past a 64-row CPU panel and a 64-wide GPU tile), K of 1 to 3
    // blocks (f16 and bf16 rows also of 67 and 130 values: not whole 8-value steps), leading
    // batch dims (folded into rows: b is shared), bias and activations on and off.
    for dtype in DType::ALL.into_iter().filter(|d| !matches!(d, DType::F32 | DType::U32)) {
        let values = dtype.block().values;
        let ks: Vec<usize> = if values == 1 { vec![1, 67, 2, 130, 3] } else { (1..=3).map(|b| b * values).collect() };
        let epilogues = [
            (false, Activation::None),
            (true, Activation::Gelu),
            (false, Activation::Relu),
            (true, Activation::None),
            (true, Activation::Relu),
            (false, Activation::Gelu),
            (true, Activation::Silu),
        ];
        let mut shapes: Vec<(Vec<usize>, usize)> = Vec::new(); // (a's shape but K, N)
        for m in [1, 7, 33] {
            for n in [1, 7, 129] {
                shapes.push((vec![m], n));
            }
        }
        shapes.extend([(vec![3, 1], 7), (vec![2, 7], 129), (vec![2, 3, 11], 33)]);
        for (i, (lead, n)) in shapes.into_iter().enumerate() {
            let k = ks[i % ks.len()];
            let (bias, activation) = epilogues[i % epilogues.len()];
            let mut inputs =
                vec![uniform(rng, &[&lead[..], &[k]].concat(), -1.0, 1.0), random_weight(rng, dtype, n, k)];
            if bias {
                inputs.push(uniform(rng, &[n], -1.0, 1.0));
            }
            add(
                format!("matmul_{dtype}_{lead:?}x{k}x{n}_bias{bias}_{activation:?}"),
                Op::MatMul(MatMul { trans_b: true, activation }),
                inputs,
            );
        }
        // gather from a stored table: rows of 3 and 2 blocks (f16, bf16: 3 and 67 values), ids
        // out of range (99, 1000).
        for (i, &(vocab, ids)) in [(7, &[0u32, 6, 2, 99, 6][..]), (30, &[29, 0, 1000, 3, 3, 17, 28])].iter().enumerate()
        {
            let dim = if i == 0 { ks[ks.len() - 1] } else { ks[1] };
            let ids = HostTensor::u32(vec![ids.len()], ids.to_vec()).unwrap();
            add(format!("gather_{dtype}_{vocab}x{dim}"), Op::Gather, vec![random_weight(rng, dtype, vocab, dim), ids]);
        }
    }
    // LoRA matmul: ranks 1 to 65 (r off the K step of the kernels too), K and r on and off
    // the 16-byte load paths, bias, activations, leading batch dims folded into rows.
    for &(lead, k, n, r) in &[
        (&[1][..], 1, 1, 1),
        (&[7], 13, 5, 3),
        (&[129], 65, 33, 16),
        (&[3], 129, 257, 64),
        (&[2, 7], 17, 9, 65),
        (&[33], 96, 40, 8),
    ] {
        for (bias, activation) in [(false, Activation::None), (true, Activation::Gelu), (true, Activation::Relu)] {
            let x = uniform(rng, &[lead, &[k]].concat(), -1.0, 1.0);
            let mut inputs = vec![
                x,
                uniform(rng, &[n, k], -1.0, 1.0),
                uniform(rng, &[r, k], -1.0, 1.0),
                uniform(rng, &[n, r], -1.0, 1.0),
            ];
            if bias {
                inputs.push(uniform(rng, &[n], -1.0, 1.0));
            }
            // PEFT's scale, lora_alpha / r, with lora_alpha = 16.
            let op = Op::LoraMatMul(LoraMatMul { scale: 16.0 / r as f32, activation });
            add(format!("lora_matmul_{lead:?}x{k}x{n}_r{r}_bias{bias}_{activation:?}"), op, inputs);
        }
    }
    // soft logic: every family and connective; truth values outside [0, 1] and a NaN clamp.
    for &logic in Logic::ALL {
        for &connective in Connective::ALL {
            for shape in [&[1][..], &[7, 129]] {
                let truth = |rng: &mut StdRng| {
                    let mut t = uniform(rng, shape, -0.25, 1.25);
                    if let TensorData::F32(v) = &mut t.data {
                        let middle = v.len() / 2;
                        v[middle] = f32::NAN;
                    }
                    t
                };
                let inputs = (0..connective.arity()).map(|_| truth(rng)).collect();
                add(
                    format!("soft_logic_{logic}_{connective:?}_{shape:?}"),
                    Op::SoftLogic { connective, logic },
                    inputs,
                );
            }
        }
    }
    // aggregate: every family, one entity up to 64, rows with no entity, kinds out of range,
    // QE and weights outside [0, 1].
    for &logic in Logic::ALL {
        for &(items, entities, kinds) in &[(1, 1, 1), (7, 5, 4), (129, 13, 6), (3, 64, 5), (2, 0, 3)] {
            let cells = items * entities;
            let mask = (0..cells).map(|i| u32::from(i % 7 != 3 && rng.random_bool(0.8))).collect();
            let kind = (0..cells).map(|_| rng.random_range(0..kinds as u32 + 1)).collect();
            let essential = (0..kinds).map(|_| u32::from(rng.random_bool(0.5))).collect();
            let inputs = vec![
                uniform(rng, &[items, entities], -0.1, 1.1),
                HostTensor::u32(vec![items, entities], mask).unwrap(),
                HostTensor::u32(vec![items, entities], kind).unwrap(),
                uniform(rng, &[kinds], 0.0, 1.2),
                HostTensor::u32(vec![kinds], essential).unwrap(),
            ];
            let op = Op::Aggregate { logic, optional_weight: rng.random_range(0.0..1.0) };
            add(format!("aggregate_{logic}_{items}x{entities}_kinds{kinds}"), op, inputs);
        }
    }
    // unary
    for &kind in UnaryKind::ALL {
        for shape in [&[1][..], &[7, 129]] {
            add(format!("unary_{kind:?}_{shape:?}"), Op::Unary(kind), vec![uniform(rng, shape, -5.0, 5.0)]);
        }
    }
    // binary with broadcasting
    let shapes: &[(&[usize], &[usize])] =
        &[(&[129], &[129]), (&[7, 129], &[129]), (&[1], &[7, 3]), (&[2, 1, 5], &[3, 1]), (&[7, 1], &[1, 129])];
    for &kind in BinaryKind::ALL {
        for &(sa, sb) in shapes {
            let a = uniform(rng, sa, -2.0, 2.0);
            // Keep divisors away from zero so the comparison measures the kernel, not 1/ε.
            let mut b = uniform(rng, sb, 0.5, 2.0);
            if let TensorData::F32(v) = &mut b.data {
                v.iter_mut().enumerate().for_each(|(i, x)| {
                    if i % 2 == 1 {
                        *x = -*x
                    }
                });
            }
            add(format!("binary_{kind:?}_{sa:?}_{sb:?}"), Op::Binary(kind), vec![a, b]);
        }
    }
    // cast
    add("cast_f32_f16".into(), Op::Cast(DType::F16), vec![uniform(rng, &[129], -70000.0, 70000.0)]);
    let h: Vec<half::f16> = (0..7).map(|_| half::f16::from_f32(rng.random_range(-100.0..100.0))).collect();
    add("cast_f16_f32".into(), Op::Cast(DType::F32), vec![HostTensor::new(vec![7], TensorData::F16(h)).unwrap()]);
    add(
        "cast_u32_f32".into(),
        Op::Cast(DType::F32),
        vec![HostTensor::u32(vec![129], (0..129).map(|_| rng.random::<u32>() >> 8).collect()).unwrap()],
    );
    // reductions over the last axis
    for shape in [&[1, 1][..], &[7, 129], &[129, 384], &[3, 1000]] {
        let d = shape[1];
        let x = uniform(rng, shape, -3.0, 3.0);
        add(
            format!("layer_norm_{shape:?}"),
            Op::LayerNorm { eps: 1e-12 },
            vec![x.clone(), uniform(rng, &[d], 0.5, 1.5), uniform(rng, &[d], -0.5, 0.5)],
        );
        add(
            format!("rms_norm_{shape:?}"),
            Op::RmsNorm { eps: 1e-6 },
            vec![uniform(rng, shape, -3.0, 3.0), uniform(rng, &[d], 0.5, 1.5)],
        );
        add(format!("softmax_{shape:?}"), Op::Softmax, vec![uniform(rng, shape, -10.0, 10.0)]);
        add(format!("l2_normalize_{shape:?}"), Op::L2Normalize { eps: 1e-12 }, vec![x]);
    }
    // attention over packed sequences: one token, awkward lengths, a gap, GQA, causal
    // (segments as (start, length), heads, kv heads, head dim, causal)
    type AttentionCase = (&'static [(u32, u32)], u32, u32, u32, bool);
    let attn: &[AttentionCase] = &[
        (&[(0, 1)], 1, 1, 1, false),
        (&[(0, 7), (7, 129)], 12, 12, 32, false),
        (&[(0, 5), (9, 3)], 4, 2, 8, true),
        (&[(0, 65), (65, 1), (66, 33)], 3, 1, 7, false),
        (&[(0, 130)], 2, 2, 64, true),
        // Not causal with GQA; a head size of three 16-lane vectors.
        (&[(0, 9), (9, 40)], 4, 4, 48, false),
        (&[(0, 33), (33, 1)], 4, 2, 16, false),
    ];
    for &(spans, heads, kv_heads, d, causal) in attn {
        let tokens = spans.iter().map(|&(s, l)| s + l).max().unwrap() as usize + 1; // +1: a row in no segment
        let (qw, kw) = ((heads * d) as usize, (kv_heads * d) as usize);
        let op = Op::Attention(Attention {
            num_heads: heads,
            num_kv_heads: kv_heads,
            scale: 1.0 / (d as f32).sqrt(),
            causal,
            bf16_products: false,
        });
        let inputs = vec![
            uniform(rng, &[tokens, qw], -2.0, 2.0),
            uniform(rng, &[tokens, kw], -2.0, 2.0),
            uniform(rng, &[tokens, kw], -1.0, 1.0),
            segments(spans),
        ];
        add(format!("attention_{spans:?}_h{heads}_kv{kv_heads}_d{d}_causal{causal}"), op, inputs);
    }
    // attention over a KV cache ([seqs, 4] tables: q_start, q_len, kv_start, kv_len): decode
    // (a query per sequence, kv lengths 1 to 130), prefill after a cached prefix, a sequence
    // with no new rows, GQA, causal and not, kv rows clamped to the cache, visual rows.
    type CacheCase = (&'static [[u32; 4]], usize, u32, u32, u32, bool);
    let cached: &[CacheCase] = &[
        (&[[0, 1, 0, 1]], 1, 1, 1, 1, true),
        (&[[0, 1, 0, 7], [1, 1, 32, 1], [2, 1, 64, 33], [3, 1, 128, 130]], 260, 4, 2, 16, true),
        (&[[0, 5, 3, 12], [5, 0, 40, 3], [5, 9, 64, 9]], 96, 6, 3, 7, true),
        (&[[0, 3, 10, 20], [3, 129, 40, 129]], 200, 2, 1, 64, false),
        (&[[0, 4, 0, 9], [4, 2, 90, 20]], 100, 3, 3, 8, true),
        // A visual adapter's attention: every query over its picture's rows (more queries
        // than rows, or fewer), a sequence without a picture (0 rows: zeros).
        (&[[0, 7, 0, 9], [7, 13, 9, 0], [20, 1, 18, 9]], 27, 9, 3, 64, false),
        (&[[0, 129, 4, 4], [129, 2, 0, 4]], 8, 2, 2, 7, false),
    ];
    for &(table, kv_tokens, heads, kv_heads, d, causal) in cached {
        let tokens = table.iter().map(|r| r[0] + r[1]).max().unwrap() as usize + 1; // +1: a row in no sequence
        let (qw, kw) = ((heads * d) as usize, (kv_heads * d) as usize);
        let op = Op::Attention(Attention {
            num_heads: heads,
            num_kv_heads: kv_heads,
            scale: 1.0 / (d as f32).sqrt(),
            causal,
            bf16_products: false,
        });
        let rows = table.len();
        let inputs = vec![
            uniform(rng, &[tokens, qw], -2.0, 2.0),
            uniform(rng, &[kv_tokens, kw], -2.0, 2.0),
            uniform(rng, &[kv_tokens, kw], -1.0, 1.0),
            HostTensor::u32(vec![rows, 4], table.iter().flatten().copied().collect()).unwrap(),
        ];
        let name = format!("attention_cache_{table:?}_kv{kv_tokens}_h{heads}_kv{kv_heads}_d{d}_causal{causal}");
        // The same over an f16 KV cache (f32 queries): a decoder's cache at half the memory.
        let mut halves = inputs.clone();
        for kv in &mut halves[1..3] {
            *kv = to_f16(kv);
        }
        add(format!("{name}_f16cache"), op.clone(), halves);
        add(name, op, inputs);
    }
    // kv_write: new rows appended at each sequence's cursor (decode, prefill after a prefix,
    // a first prefill, an empty sequence), widths 1, 7 and 129.
    let writes: &[(&[[u32; 4]], usize, usize)] = &[
        (&[[0, 1, 0, 1]], 1, 1),
        (&[[0, 1, 0, 5], [1, 1, 16, 16], [2, 1, 32, 2]], 48, 7),
        (&[[0, 7, 0, 7], [7, 0, 20, 4], [7, 3, 40, 10]], 60, 129),
    ];
    for &(table, cache_rows, width) in writes {
        let tokens = table.iter().map(|r| r[0] + r[1]).max().unwrap() as usize;
        let inputs = vec![
            uniform(rng, &[cache_rows, width], -1.0, 1.0),
            uniform(rng, &[tokens.max(1), width], -1.0, 1.0),
            HostTensor::u32(vec![table.len(), 4], table.iter().flatten().copied().collect()).unwrap(),
        ];
        let mut f16_cache = inputs.clone();
        f16_cache[0] = to_f16(&f16_cache[0]);
        add(format!("kv_write_{table:?}_rows{cache_rows}_w{width}_f16cache"), Op::KvWrite(KvWrite), f16_cache);
        add(format!("kv_write_{table:?}_rows{cache_rows}_w{width}"), Op::KvWrite(KvWrite), inputs);
    }
    // gather, with ids out of range
    for &(vocab, dim, n) in &[(1, 1, 1), (30, 7, 129), (1000, 384, 33)] {
        let ids: Vec<u32> = (0..n)
            .map(|i| if i % 11 == 5 { vocab as u32 + i as u32 } else { rng.random_range(0..vocab as u32) })
            .collect();
        add(
            format!("gather_{vocab}x{dim}_{n}"),
            Op::Gather,
            vec![uniform(rng, &[vocab, dim], -1.0, 1.0), HostTensor::u32(vec![n], ids).unwrap()],
        );
    }
    // RoPE: both layouts, all dims or a part rotating, one head or several, positions from 0
    // to ~2000 as a decoder's cursor reaches.
    for &(tokens, heads, head_dim, rot_dims, layout) in &[
        (1, 1, 2, 2, RopeLayout::Interleaved),
        (7, 3, 64, 64, RopeLayout::Half),
        (129, 2, 64, 64, RopeLayout::Interleaved),
        (5, 4, 16, 8, RopeLayout::Half),
        (9, 2, 10, 6, RopeLayout::Interleaved),
    ] {
        let positions: Vec<u32> = (0..tokens).map(|_| rng.random_range(0..2048)).collect();
        let op = Op::Rope(Rope { head_dim: head_dim as u32, rot_dims: rot_dims as u32, layout });
        let inputs = vec![
            uniform(rng, &[tokens, heads * head_dim], -2.0, 2.0),
            HostTensor::u32(vec![tokens], positions).unwrap(),
            HostTensor::f32(vec![rot_dims / 2], tandem_runtime::ops::rope::inv_freq(10000.0, rot_dims, 1.0)).unwrap(),
        ];
        add(format!("rope_{layout:?}_{tokens}x{heads}x{head_dim}_rot{rot_dims}"), op, inputs);
    }
    // pooling, with an empty segment
    for &kind in PoolKind::ALL {
        for spans in [&[(0u32, 1u32)][..], &[(0, 7), (7, 0), (7, 122)]] {
            let tokens = spans.iter().map(|&(s, l)| s + l).max().unwrap() as usize;
            add(
                format!("pool_{kind:?}_{spans:?}"),
                Op::Pool(kind),
                vec![uniform(rng, &[tokens, 129], -1.0, 1.0), segments(spans)],
            );
        }
    }
    // conv2d: (n, c, h, w, o, [kh, kw], stride, padding, groups): 1x1 (the CPU's gemm path
    // and strided/padded ones), 3x3 with padding 0 and 1, strides 1 and 2, depthwise, a
    // middle group count, channel multipliers, 1x1 and odd images, a non-square kernel.
    type ConvCase = (usize, usize, usize, usize, usize, [usize; 2], [u32; 2], [u32; 2], u32);
    let convs: &[ConvCase] = &[
        (1, 1, 1, 1, 1, [1, 1], [1, 1], [0, 0], 1),
        (2, 1, 1, 1, 3, [1, 1], [1, 1], [0, 0], 1),
        (2, 7, 5, 9, 14, [1, 1], [1, 1], [0, 0], 1),
        (1, 3, 17, 17, 5, [1, 1], [2, 2], [0, 0], 1),
        (1, 3, 5, 5, 2, [1, 1], [1, 1], [1, 1], 1),
        (2, 3, 5, 5, 4, [3, 3], [1, 1], [1, 1], 1),
        (2, 3, 17, 17, 8, [3, 3], [2, 2], [0, 0], 1),
        (1, 3, 1, 1, 2, [3, 3], [1, 1], [1, 1], 1),
        (1, 3, 9, 9, 6, [3, 3], [2, 2], [1, 1], 3),
        (2, 7, 9, 9, 7, [3, 3], [1, 1], [1, 1], 7),
        (1, 7, 17, 17, 7, [3, 3], [2, 2], [1, 1], 7),
        (2, 1, 5, 5, 1, [3, 3], [2, 2], [1, 1], 1),
        (2, 6, 9, 5, 4, [3, 3], [2, 1], [0, 1], 2),
        (1, 4, 17, 9, 6, [1, 1], [1, 1], [0, 0], 2),
        (1, 3, 9, 5, 2, [3, 1], [1, 2], [1, 0], 1),
        // Depthwise 3 × 3 (MobileNetV2's own kernel): one pixel, two columns at stride 2,
        // even and odd sizes, a row 129 wide.
        (1, 5, 1, 1, 5, [3, 3], [2, 2], [1, 1], 5),
        (1, 4, 8, 2, 4, [3, 3], [2, 2], [1, 1], 4),
        (2, 3, 2, 129, 3, [3, 3], [1, 1], [1, 1], 3),
        (1, 6, 14, 14, 6, [3, 3], [2, 2], [1, 1], 6),
        (1, 2, 7, 7, 2, [3, 3], [1, 1], [1, 1], 2),
        // A first layer (3 × 3, padding 1, few input channels) at stride 2, with an output
        // count that is not a multiple of 8 and a width past two vectors.
        (1, 3, 9, 33, 19, [3, 3], [2, 2], [1, 1], 1),
        // 1 × 1 over planes with a column or four past the last whole vector (7 × 7 = 49,
        // 1 × 129, 11 × 12 = 132).
        (1, 9, 7, 7, 11, [1, 1], [1, 1], [0, 0], 1),
        (1, 20, 1, 129, 9, [1, 1], [1, 1], [0, 0], 1),
        (2, 5, 11, 12, 13, [1, 1], [1, 1], [0, 0], 1),
    ];
    // With a residual (MobileNetV2's skip connection, added before the clamp): 1 × 1 with
    // tail columns and a batch of two (the CPU's fused epilogue), depthwise and grouped 3 × 3
    // (a pass after the kernel).
    let residuals: &[ConvCase] = &[
        (1, 9, 7, 7, 11, [1, 1], [1, 1], [0, 0], 1),
        (2, 5, 11, 12, 13, [1, 1], [1, 1], [0, 0], 1),
        (1, 20, 1, 129, 9, [1, 1], [1, 1], [0, 0], 1),
        (2, 7, 9, 9, 7, [3, 3], [1, 1], [1, 1], 7),
        (1, 6, 9, 5, 4, [3, 3], [1, 1], [1, 1], 2),
    ];
    let with_residual = convs.iter().map(|c| (c, false)).chain(residuals.iter().map(|c| (c, true)));
    for (i, (&(n, c, h, w, o, [kh, kw], stride, padding, groups), residual)) in with_residual.enumerate() {
        let bias = residual || i % 2 == 0;
        // Two cases in three clamp their output (as MobileNetV2's ReLU6 does, with bounds that
        // both bite at these values), with and without bias, on every kernel path.
        let clamp = (i % 3 > 0).then_some([-1.0, 1.0]);
        let conv = Conv2d { stride, padding, groups, clamp };
        let mut inputs =
            vec![uniform(rng, &[n, c, h, w], -1.0, 1.0), uniform(rng, &[o, c / groups as usize, kh, kw], -1.0, 1.0)];
        if bias {
            inputs.push(uniform(rng, &[o], -1.0, 1.0));
        }
        if residual {
            let p = conv.params(&[n, c, h, w], &[o, c / groups as usize, kh, kw], 2);
            inputs.push(uniform(rng, &[n, o, p.oh as usize, p.ow as usize], -1.0, 1.0));
        }
        let clamped = if clamp.is_some() { "_clamp" } else { "" };
        let added = if residual { "_residual" } else { "" };
        add(
            format!(
                "conv2d_{n}x{c}x{h}x{w}_o{o}_k{kh}x{kw}_s{stride:?}_p{padding:?}_g{groups}_bias{bias}{clamped}{added}"
            ),
            Op::Conv2d(conv),
            inputs,
        );
    }
    // clamp: ReLU6 and others, values on both sides, a NaN, inverted bounds (all max).
    for (min, max) in [(0.0, 6.0), (-1.0, 0.5), (2.0, -2.0)] {
        for shape in [&[1][..], &[2, 7, 5, 9]] {
            let mut x = uniform(rng, shape, -8.0, 8.0);
            if let TensorData::F32(v) = &mut x.data {
                let middle = v.len() / 2;
                v[middle] = f32::NAN;
            }
            add(format!("clamp_{min}_{max}_{shape:?}"), Op::Clamp { min, max }, vec![x]);
        }
    }
    // global average pooling
    // (The last is large enough for the CPU to share its planes among threads.)
    for shape in [[1, 1, 1, 1], [2, 7, 5, 5], [2, 3, 17, 9], [1, 129, 7, 7], [2, 700, 7, 7]] {
        add(format!("global_avg_pool_{shape:?}"), Op::GlobalAvgPool, vec![uniform(rng, &shape, -1.0, 1.0)]);
    }
    sample_cases(rng, &mut add);
    add("reshape".into(), Op::Reshape(vec![Dim::Fixed(129), Dim::Fixed(7)]), vec![uniform(rng, &[7, 129], -1.0, 1.0)]);
    cases
}

/// Token sampling: awkward vocabularies, one and three sequences, each filter alone and all
/// together, greedy, the repetition penalty; NaN, −∞ and tied logits; invalid settings.
/// Cases are compared exactly: a draw lands within float rounding of a boundary with a
/// probability of about 1e-6 (should a case ever flip, change its seed, not the tolerance).
fn sample_cases(rng: &mut StdRng, add: &mut impl FnMut(String, Op, Vec<HostTensor>)) {
    // (name, temperature, top_k, top_p, min_p, repetition penalty)
    let configs: &[(&str, f32, f32, f32, f32, f32)] = &[
        ("greedy", 0.0, 0.0, 1.0, 0.0, 1.0),
        ("greedy_penalty", 0.0, 0.0, 1.0, 0.0, 1.5),
        ("plain", 0.8, 0.0, 1.0, 0.0, 1.0),
        ("top_k", 1.0, 5.0, 1.0, 0.0, 1.0),
        ("top_p", 1.0, 0.0, 0.9, 0.0, 1.0),
        ("min_p", 1.0, 0.0, 1.0, 0.05, 1.0),
        ("all", 0.7, 50.0, 0.95, 0.02, 1.2),
    ];
    let n_seen = 6;
    for &vocab in &[1usize, 7, 129, 1000, 50_000] {
        for &seqs in &[1usize, 3] {
            for &(name, t, k, p, min_p, rp) in configs {
                let mut logits: Vec<f32> = (0..seqs * vocab).map(|_| rng.random_range(-8.0..8.0)).collect();
                if vocab >= 7 {
                    for r in 0..seqs {
                        let row = &mut logits[r * vocab..(r + 1) * vocab];
                        row[1] = f32::NAN;
                        row[2] = f32::NEG_INFINITY;
                        // A tie at the top: greedy takes the lower id.
                        let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) + 0.5;
                        row[vocab / 2] = top;
                        row[vocab - 1] = top;
                    }
                }
                let settings: Vec<f32> = (0..seqs).flat_map(|_| [t, k, p, min_p, rp]).collect();
                let mut seen = Vec::new();
                for _ in 0..seqs {
                    let mut ids: Vec<u32> = (0..n_seen - 2).map(|_| rng.random_range(0..vocab as u32 + 2)).collect();
                    ids.push(vocab as u32 / 2);
                    ids.sort_unstable();
                    ids.dedup();
                    ids.resize(n_seen, u32::MAX);
                    seen.extend(ids);
                }
                let keys: Vec<u32> = (0..2 * seqs).map(|_| rng.random()).collect();
                let inputs = vec![
                    HostTensor::f32(vec![seqs, vocab], logits).unwrap(),
                    HostTensor::f32(vec![seqs, 5], settings).unwrap(),
                    HostTensor::u32(vec![seqs, n_seen], seen).unwrap(),
                    HostTensor::u32(vec![seqs, 2], keys).unwrap(),
                ];
                add(format!("sample_{name}_{seqs}x{vocab}"), Op::Sample, inputs);
            }
        }
    }
    // Invalid settings are off, and unsorted or out-of-range seen ids read nothing out of bounds.
    let vocab = 129;
    let bad: [[f32; 5]; 6] = [
        [f32::NAN, 3.0, 0.5, 0.1, 2.0],
        [-1.0, 0.0, 1.0, 0.0, 1.0],
        [1.0, -4.0, 2.0, f32::NAN, f32::INFINITY],
        [1.0, 1e9, f32::NAN, 7.0, -3.0],
        [f32::INFINITY, 2.5, 0.0, -1.0, 0.0],
        [0.5, 128.9, 1e-30, 1e-45, f32::NAN],
    ];
    let seqs = bad.len();
    let logits = uniform(rng, &[seqs, vocab], -8.0, 8.0);
    let seen: Vec<u32> = (0..seqs).flat_map(|r| [u32::MAX, 5 + r as u32, 3, 1000]).collect();
    let keys: Vec<u32> = (0..2 * seqs).map(|_| rng.random()).collect();
    let inputs = vec![
        logits,
        HostTensor::f32(vec![seqs, 5], bad.concat()).unwrap(),
        HostTensor::u32(vec![seqs, 4], seen).unwrap(),
        HostTensor::u32(vec![seqs, 2], keys).unwrap(),
    ];
    add(format!("sample_invalid_settings_{seqs}x{vocab}"), Op::Sample, inputs);
}

/// Runs a case on a backend (with its in-place operand as the state, when it has one).
pub fn run_case<B: Backend>(backend: B, case: &Case) -> tandem_runtime::Result<Vec<HostTensor>> {
    pollster::block_on(run_case_async(backend, case))
}

/// [`run_case`] for callers that await (the browser, whose WebGPU cannot be waited on).
pub async fn run_case_async<B: Backend>(backend: B, case: &Case) -> tandem_runtime::Result<Vec<HostTensor>> {
    let session = Session::new(backend, case.graph(), &[])?;
    let Some(i) = case.op.in_place_input() else { return session.run(&case.inputs).await };
    let mut state = session.new_state(&[])?;
    session.write_state(&mut state, &format!("in{i}"), &case.inputs[i]).await?;
    let inputs: Vec<HostTensor> =
        case.inputs.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, t)| t.clone()).collect();
    session.run_with(&inputs, Some(&mut state), Outputs::All).await
}

/// The largest violation of a tolerance, as (index, got, want), or None when all fit.
pub fn compare(got: &HostTensor, want: &HostTensor, tol: Tolerance) -> Result<(), String> {
    if got.shape != want.shape || got.dtype() != want.dtype() {
        return Err(format!("got {} {:?}, want {} {:?}", got.dtype(), got.shape, want.dtype(), want.shape));
    }
    let (g, w) = (got.to_f32(), want.to_f32());
    let mut worst: Option<(usize, f32, f32, f32)> = None;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let excess = (a - b).abs() - (tol.abs + tol.rel * b.abs());
        let bad = excess > 0.0 || a.is_nan() != b.is_nan();
        if bad && worst.is_none_or(|(_, _, _, e)| excess > e) {
            worst = Some((i, a, b, excess));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, a, b, _)) => {
            Err(format!("element {i}: got {a}, want {b} (tolerance abs {} rel {})", tol.abs, tol.rel))
        }
    }
}

/// Runs every case on `make()`'s backend and on the CPU; returns one line per failure. Cases
/// whose dtypes the backend declares unsupported are skipped (docs/ops.md lists them).
pub fn check_backend<B: Backend>(make: impl Fn() -> B, seed: u64) -> Vec<String> {
    let mut failures = Vec::new();
    let mut skipped = 0;
    for case in cases(seed) {
        let dtypes: Vec<DType> = case.inputs.iter().map(|t| t.dtype()).collect();
        if !make().supports_dtypes(&case.op, &dtypes) {
            skipped += 1;
            continue;
        }
        let tol = tolerance(case.op.kind());
        let want = run_case(CpuBackend::exact(), &case).expect("the CPU reference runs every case");
        match run_case(make(), &case) {
            Err(e) => failures.push(format!("{}: {e}", case.name)),
            Ok(got) => {
                for (g, w) in got.iter().zip(&want) {
                    if let Err(e) = compare(g, w, tol) {
                        failures.push(format!("{}: {e}", case.name));
                    }
                }
            }
        }
    }
    println!("{skipped} cases skipped: their dtypes are not supported by this backend");
    failures
}

/// Ops the backend lacks (for the op × backend coverage test).
pub fn missing_ops<B: Backend>(backend: &B) -> Vec<&'static str> {
    OpKind::ALL.iter().filter(|k| !backend.supports(**k)).map(|k| k.name()).collect()
}

/// A fresh seed per run (printed by the tests so a failure can be replayed with
/// `TANDEM_TEST_SEED`).
pub fn seed() -> u64 {
    std::env::var("TANDEM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    })
}

/// A linear layer whose weight is stored in f16 reached through a graph: x (f32) is cast to
/// f16, multiplied by the f16 weight `[n, k]` (the f16 kernels), and cast back. Returns the
/// graph, its weight and an input.
pub fn f16_linear_graph(seed: u64, m: usize, k: usize, n: usize) -> (Graph, Vec<HostTensor>, HostTensor) {
    let rng = &mut StdRng::seed_from_u64(seed);
    let mut g = Graph::new("f16-linear");
    let x = g.input("x", TensorType::fixed(DType::F32, &[m, k]));
    let w = g.weight("w", TensorType::fixed(DType::F16, &[n, k]));
    let x16 = g.node1("to_f16", Op::Cast(DType::F16), &[x]).expect("well formed");
    let y16 = g
        .node1("linear", Op::MatMul(MatMul { trans_b: true, activation: Activation::None }), &[x16, w])
        .expect("well formed");
    let y = g.node1("to_f32", Op::Cast(DType::F32), &[y16]).expect("well formed");
    g.output(y, "y");
    (g, vec![random_weight(rng, DType::F16, n, k)], uniform(rng, &[m, k], -1.0, 1.0))
}
