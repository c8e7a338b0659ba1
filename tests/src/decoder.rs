//! A tiny random decoder with a KV cache (2 layers, grouped-query attention), run as a
//! serving loop would: one batched prefill of sequences of different lengths, then decode
//! steps of one token per sequence. Every step's logits are checked against a plain f64
//! reference that keeps its own caches, and decode steps must reuse one plan.
//!
//! The graph uses the runtime's state machinery end to end: two states per layer (k and v
//! caches, `[kv_rows, kv_width]` with `kv_rows` chosen when the state is made), `kv_write` at
//! each sequence's cursor, attention over the cache with a `[seqs, 4]` table, and a run that
//! reads back only the logits of each sequence's last position.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_runtime::backend::Backend;
use tandem_runtime::ops::attention::StepBatch;
use tandem_runtime::ops::{Activation, Attention, BinaryKind, KvWrite, MatMul, UnaryKind};
use tandem_runtime::{DType, Dim, Graph, HostTensor, Op, Outputs, Session, TensorType, ValueId};

pub const VOCAB: usize = 37;
const D: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = D / HEADS;
const KV_WIDTH: usize = KV_HEADS * HEAD_DIM;
const FFN: usize = 48;
const LAYERS: usize = 2;
const MAX_POSITIONS: usize = 64;
const EPS: f32 = 1e-5;

/// The weights, kept as f32 (what the graph gets) and read as f64 by the reference.
pub struct Weights {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Weights {
    pub fn random(seed: u64) -> Weights {
        let rng = &mut StdRng::seed_from_u64(seed);
        let mut tensors = Vec::new();
        let mut add = |name: String, shape: &[usize], scale: f32, offset: f32| {
            let n = shape.iter().product();
            let values = (0..n).map(|_| offset + rng.random_range(-scale..scale)).collect();
            tensors.push((name, shape.to_vec(), values));
        };
        add("tok_emb".into(), &[VOCAB, D], 1.0, 0.0);
        add("pos_emb".into(), &[MAX_POSITIONS, D], 0.5, 0.0);
        for l in 0..LAYERS {
            add(format!("l{l}.ln1.g"), &[D], 0.2, 1.0);
            add(format!("l{l}.ln1.b"), &[D], 0.1, 0.0);
            add(format!("l{l}.wq"), &[D, D], 0.4, 0.0);
            add(format!("l{l}.bq"), &[D], 0.1, 0.0);
            add(format!("l{l}.wk"), &[KV_WIDTH, D], 0.4, 0.0);
            add(format!("l{l}.bk"), &[KV_WIDTH], 0.1, 0.0);
            add(format!("l{l}.wv"), &[KV_WIDTH, D], 0.4, 0.0);
            add(format!("l{l}.bv"), &[KV_WIDTH], 0.1, 0.0);
            add(format!("l{l}.wo"), &[D, D], 0.3, 0.0);
            add(format!("l{l}.ln2.g"), &[D], 0.2, 1.0);
            add(format!("l{l}.ln2.b"), &[D], 0.1, 0.0);
            add(format!("l{l}.w1"), &[FFN, D], 0.3, 0.0);
            add(format!("l{l}.b1"), &[FFN], 0.1, 0.0);
            add(format!("l{l}.w2"), &[D, FFN], 0.3, 0.0);
        }
        add("lnf.g".into(), &[D], 0.2, 1.0);
        add("lnf.b".into(), &[D], 0.1, 0.0);
        Weights { tensors }
    }

    fn get(&self, name: &str) -> &[f32] {
        &self.tensors.iter().find(|t| t.0 == name).unwrap_or_else(|| panic!("no weight {name}")).2
    }

    pub fn host_tensors(&self) -> Vec<HostTensor> {
        self.tensors.iter().map(|(_, shape, v)| HostTensor::f32(shape.clone(), v.clone()).unwrap()).collect()
    }
}

/// The decoder graph: inputs ids `[tokens]`, positions `[tokens]`, table `[seqs, 4]` and last
/// `[seqs]` (each sequence's last new row); states `l{i}.k` and `l{i}.v`; outputs `logits`
/// `[seqs, vocab]` and `hidden` `[tokens, d]` (every position, for checking that unrequested
/// outputs are left alone).
pub fn graph(weights: &Weights) -> Graph {
    let mut g = Graph::new("tiny-decoder");
    let tokens = || Dim::sym("tokens");
    let seqs = || Dim::sym("seqs");
    let ids = g.input("ids", TensorType::new(DType::U32, vec![tokens()]));
    let positions = g.input("positions", TensorType::new(DType::U32, vec![tokens()]));
    let table = g.input("table", TensorType::new(DType::U32, vec![seqs(), Dim::Fixed(4)]));
    let last = g.input("last", TensorType::new(DType::U32, vec![seqs()]));
    let mut w = std::collections::HashMap::<String, ValueId>::new();
    for (name, shape, _) in &weights.tensors {
        w.insert(name.clone(), g.weight(name, TensorType::fixed(DType::F32, shape)));
    }
    let linear = |activation| Op::MatMul(MatMul { trans_b: true, activation });
    let mut x = {
        let t = g.node1("tok", Op::Gather, &[w["tok_emb"], ids]).unwrap();
        let p = g.node1("pos", Op::Gather, &[w["pos_emb"], positions]).unwrap();
        g.node1("embed", Op::Binary(BinaryKind::Add), &[t, p]).unwrap()
    };
    let attention = Op::Attention(Attention {
        num_heads: HEADS as u32,
        num_kv_heads: KV_HEADS as u32,
        scale: 1.0 / (HEAD_DIM as f32).sqrt(),
        causal: true,
        bf16_products: false,
    });
    for l in 0..LAYERS {
        let n = |s: &str| format!("l{l}.{s}");
        let cache = || TensorType::new(DType::F32, vec![Dim::sym("kv_rows"), Dim::Fixed(KV_WIDTH as u64)]);
        let k_cache = g.state(&n("k"), cache());
        let v_cache = g.state(&n("v"), cache());
        let h = g.node1(&n("ln1"), Op::LayerNorm { eps: EPS }, &[x, w[&n("ln1.g")], w[&n("ln1.b")]]).unwrap();
        let q = g.node1(&n("q"), linear(Activation::None), &[h, w[&n("wq")], w[&n("bq")]]).unwrap();
        let k = g.node1(&n("k_new"), linear(Activation::None), &[h, w[&n("wk")], w[&n("bk")]]).unwrap();
        let v = g.node1(&n("v_new"), linear(Activation::None), &[h, w[&n("wv")], w[&n("bv")]]).unwrap();
        let k_all = g.node1(&n("k_write"), Op::KvWrite(KvWrite), &[k_cache, k, table]).unwrap();
        let v_all = g.node1(&n("v_write"), Op::KvWrite(KvWrite), &[v_cache, v, table]).unwrap();
        let a = g.node1(&n("attn"), attention.clone(), &[q, k_all, v_all, table]).unwrap();
        let o = g.node1(&n("o"), linear(Activation::None), &[a, w[&n("wo")]]).unwrap();
        x = g.node1(&n("res1"), Op::Binary(BinaryKind::Add), &[x, o]).unwrap();
        let h = g.node1(&n("ln2"), Op::LayerNorm { eps: EPS }, &[x, w[&n("ln2.g")], w[&n("ln2.b")]]).unwrap();
        let f = g.node1(&n("up"), linear(Activation::Gelu), &[h, w[&n("w1")], w[&n("b1")]]).unwrap();
        let f = g.node1(&n("down"), linear(Activation::None), &[f, w[&n("w2")]]).unwrap();
        x = g.node1(&n("res2"), Op::Binary(BinaryKind::Add), &[x, f]).unwrap();
    }
    let hidden = g.node1("hidden_copy", Op::Unary(UnaryKind::Relu), &[x]).unwrap();
    g.output(hidden, "hidden");
    let x_last = g.node1("last_rows", Op::Gather, &[x, last]).unwrap();
    let h = g.node1("lnf", Op::LayerNorm { eps: EPS }, &[x_last, w["lnf.g"], w["lnf.b"]]).unwrap();
    let logits = g.node1("lm_head", linear(Activation::None), &[h, w["tok_emb"]]).unwrap();
    g.output(logits, "logits");
    g
}

/// One layer's cached k and v rows of one sequence.
type LayerCache = (Vec<Vec<f64>>, Vec<Vec<f64>>);

/// The same decoder in f64, one sequence at a time, with caches as growing lists.
pub struct Reference<'a> {
    w: &'a Weights,
    /// Per sequence, per layer.
    caches: Vec<Vec<LayerCache>>,
}

fn layer_norm(x: &[f64], g: &[f32], b: &[f32]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + EPS as f64).sqrt();
    x.iter().zip(g.iter().zip(b)).map(|(v, (&g, &b))| (v - mean) * inv * g as f64 + b as f64).collect()
}

/// `w · x + b` for w `[out, in]`.
fn linear(x: &[f64], w: &[f32], b: Option<&[f32]>) -> Vec<f64> {
    let inputs = x.len();
    (0..w.len() / inputs)
        .map(|o| {
            let dot: f64 = w[o * inputs..][..inputs].iter().zip(x).map(|(&w, x)| w as f64 * x).sum();
            dot + b.map_or(0.0, |b| b[o] as f64)
        })
        .collect()
}

fn gelu(x: f64) -> f64 {
    // erf through its Taylor/continued-fraction-free form is not in std; Abramowitz–Stegun
    // 7.1.26 is good to 1.5e-7, far below this test's tolerance.
    let z = x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * z.abs());
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let erf = (1.0 - poly * (-z * z).exp()) * z.signum();
    0.5 * x * (1.0 + erf)
}

impl<'a> Reference<'a> {
    pub fn new(w: &'a Weights, seqs: usize) -> Self {
        Reference { w, caches: (0..seqs).map(|_| vec![(Vec::new(), Vec::new()); LAYERS]).collect() }
    }

    /// Feeds `ids` to sequence `s` and returns the logits after its last token.
    pub fn feed(&mut self, s: usize, ids: &[u32]) -> Vec<f64> {
        let w = self.w;
        let mut last = Vec::new();
        for &id in ids {
            let pos = self.caches[s][0].0.len();
            let tok = &w.get("tok_emb")[id as usize * D..][..D];
            let pe = &w.get("pos_emb")[pos * D..][..D];
            let mut x: Vec<f64> = tok.iter().zip(pe).map(|(&a, &b)| a as f64 + b as f64).collect();
            for l in 0..LAYERS {
                let n = |s: &str| format!("l{l}.{s}");
                let h = layer_norm(&x, w.get(&n("ln1.g")), w.get(&n("ln1.b")));
                let q = linear(&h, w.get(&n("wq")), Some(w.get(&n("bq"))));
                let k = linear(&h, w.get(&n("wk")), Some(w.get(&n("bk"))));
                let v = linear(&h, w.get(&n("wv")), Some(w.get(&n("bv"))));
                let (ks, vs) = &mut self.caches[s][l];
                ks.push(k);
                vs.push(v);
                let mut attn = vec![0.0; D];
                for head in 0..HEADS {
                    let kvh = head / (HEADS / KV_HEADS);
                    let qh = &q[head * HEAD_DIM..][..HEAD_DIM];
                    let scores: Vec<f64> = ks
                        .iter()
                        .map(|k| {
                            let kh = &k[kvh * HEAD_DIM..][..HEAD_DIM];
                            qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f64>() / (HEAD_DIM as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = exp.iter().sum();
                    for (p, v) in exp.iter().zip(vs.iter()) {
                        for c in 0..HEAD_DIM {
                            attn[head * HEAD_DIM + c] += p / sum * v[kvh * HEAD_DIM + c];
                        }
                    }
                }
                let o = linear(&attn, w.get(&n("wo")), None);
                x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                let h = layer_norm(&x, w.get(&n("ln2.g")), w.get(&n("ln2.b")));
                let f: Vec<f64> = linear(&h, w.get(&n("w1")), Some(w.get(&n("b1")))).into_iter().map(gelu).collect();
                let f = linear(&f, w.get(&n("w2")), None);
                x.iter_mut().zip(&f).for_each(|(a, b)| *a += b);
            }
            let h = layer_norm(&x, w.get("lnf.g"), w.get("lnf.b"));
            last = linear(&h, w.get("tok_emb"), None);
        }
        last
    }
}

/// What one check found: the largest logit difference over all steps, and plans made by the
/// decode steps after the first.
#[derive(Debug)]
pub struct DecoderReport {
    pub max_abs_diff: f64,
    pub steps: usize,
    pub plans_after_first_decode: usize,
}

/// Prefill of three sequences (5, 1 and 9 tokens) in one run, then `steps` decode steps of a
/// token per sequence, each sequence in its own cache slot of `capacity` rows. Returns an
/// error naming the step and sequence whose logits differ from the f64 reference by more
/// than `tolerance` (absolute, on logits of magnitude ~1–10).
pub fn check_decoder<B: Backend>(backend: B, seed: u64, steps: usize, tolerance: f64) -> Result<DecoderReport, String> {
    let weights = Weights::random(seed);
    let session = Session::new(backend, graph(&weights), &weights.host_tensors()).map_err(|e| e.to_string())?;
    let rng = &mut StdRng::seed_from_u64(seed ^ 0x5eed);
    let prompts: Vec<Vec<u32>> =
        [5usize, 1, 9].iter().map(|&n| (0..n).map(|_| rng.random_range(0..VOCAB as u32)).collect()).collect();
    let capacity = 32;
    let mut state = session.new_state(&[("kv_rows", prompts.len() * capacity)]).map_err(|e| e.to_string())?;
    let mut reference = Reference::new(&weights, prompts.len());
    let mut lengths = vec![0usize; prompts.len()];
    let mut max_abs_diff = 0.0f64;
    let mut plans_after_first_decode = 0;
    let mut new_tokens: Vec<Vec<u32>> = prompts.clone();
    for step in 0..=steps {
        // Pack this step's new tokens: sequence s's rows follow s − 1's.
        let mut batch = StepBatch::default();
        for (s, toks) in new_tokens.iter().enumerate() {
            batch.push(s * capacity, lengths[s], toks);
            lengths[s] += toks.len();
        }
        let seqs = batch.seqs();
        let inputs = batch.tensors().unwrap();
        let plans_before = session.plans_made();
        let out = session
            .run_with_blocking(&inputs, Some(&mut state), Outputs::Named(&["logits"]))
            .map_err(|e| format!("step {step}: {e}"))?;
        if step > 1 {
            plans_after_first_decode += session.plans_made() - plans_before;
        }
        if out.len() != 1 || out[0].shape != [seqs, VOCAB] {
            return Err(format!("step {step}: expected only logits [{seqs}, {VOCAB}], got {} outputs", out.len()));
        }
        let got = out[0].to_f32();
        for (s, toks) in new_tokens.iter().enumerate() {
            let want = reference.feed(s, toks);
            for (v, (&g, &w)) in got[s * VOCAB..][..VOCAB].iter().zip(&want).enumerate() {
                let diff = (g as f64 - w).abs();
                max_abs_diff = max_abs_diff.max(diff);
                if diff > tolerance || g.is_nan() {
                    return Err(format!("step {step}, sequence {s}, logit {v}: got {g}, want {w}"));
                }
            }
        }
        // Next tokens: drawn ahead, independent of the outputs, so that every backend and the
        // reference see the same ids whatever their rounding.
        new_tokens = (0..seqs).map(|_| vec![rng.random_range(0..VOCAB as u32)]).collect();
    }
    Ok(DecoderReport { max_abs_diff, steps, plans_after_first_decode })
}
