//! Token sampling on the device: picks the next token of each sequence from its row of
//! logits, so that a decoder step reads back ids instead of `[seqs, vocab]` floats.
//!
//! Inputs: `logits` f32 `[seqs, vocab]`; `params` f32 `[seqs, 5]` = (temperature, top_k,
//! top_p, min_p, repetition_penalty) per sequence (top_k as a float, 0 = off; temperature 0 =
//! greedy); `seen` u32 `[seqs, n]` = ids already in the sequence for the repetition penalty,
//! each row sorted ascending, unique, padded at the end with 0xFFFFFFFF (n ≥ 1); `keys` u32
//! `[seqs, 2]` = the random key of this step (the caller derives it from its seed and the step
//! number, e.g. with SplitMix64). Output: u32 `[seqs]` ids.
//!
//! Per row:
//! - penalized logit `l_i = logits_i`, and if repetition_penalty ≠ 1 and i is in the row's
//!   `seen` (binary search): `l_i > 0 ? l_i / rp : l_i · rp`. NaN counts as −∞.
//! - temperature == 0: argmax of l (lowest id on ties).
//! - else `x_i = l_i / T`, `m = max x`. Threshold `lo = −∞`; min_p > 0:
//!   `lo = max(lo, m + ln(min_p))` (exactly "p_i ≥ min_p · p_max"); top_k in 1..vocab−1:
//!   `lo = max(lo, the k-th largest x)` (ties at the threshold all kept); top_p < 1: among
//!   `x ≥ lo`, with `mass(t) = Σ_{x_i ≥ t} exp(x_i − m)`, `lo` = the largest `t ≥ lo` such that
//!   `mass(t) ≥ top_p · mass(lo)` (equivalently: sort descending, keep the shortest prefix
//!   whose mass reaches top_p). Then the choice is the argmax over `{i : x_i ≥ lo}` of
//!   `x_i + g_i`, with Gumbel noise `g_i = −ln(−ln(u_i))`, `u_i ∈ (0, 1)` from a
//!   counter-based hash of `(keys[0], keys[1], i)` ([`uniform`]) — the Gumbel-max trick: an
//!   exact sample of softmax(x) restricted to the kept set, the same draw on every backend for
//!   the same key.
//!
//! Details every backend shares:
//! - Values are compared through their order-preserving u32 encoding ([`key`]; NaN encodes as
//!   −∞, and −0 sorts just below +0); argmaxes take the lowest id among equal keys.
//! - `u_i = (h_i >> 9 + 0.5) / 2²³` with `h_i` = [`hash`]: 23 bits, so that `h + 0.5` is exact
//!   in f32 and `u` never rounds to 0 or 1.
//! - ln is [`ln`], one polynomial with every step rounded on its own, so that the noise and the
//!   min-p threshold agree across backends (and keep full relative accuracy near 1, where
//!   `−ln(u)` of a `u` close to 1 needs it).
//! - Invalid settings are "off", never out of bounds: a temperature that is not a positive
//!   finite number is greedy; top_k is floored and off unless it is in 1..vocab−1; top_p is
//!   off unless it is a normal number below 1; min_p is off unless it is a normal positive
//!   number, and above 1 it counts as 1; a repetition penalty that is not a positive finite
//!   number is 1; ids in `seen` at or past vocab match nothing. top_p is also off when the
//!   largest x is not finite.
//!
//! The GPU kernels (`shaders/sample.wgsl`, `cuda/sample.cu`) run one workgroup of 256
//! invocations per row: strided loops over the vocabulary with workgroup reductions, and the
//! k-th-largest and top-p thresholds by bisection over the u32 encoding (32 reduction passes
//! each, only when that filter is on). The CPU reference here finds the same sets by selection
//! and sorting; the top-p masses differ between backends only in summation order.

use super::{arity, dtype_is, float, rank_is};
use crate::graph::{Dim, TensorType};
use crate::tensor::DType;

/// Values per row of the `params` input.
pub const SETTINGS: usize = 5;

/// Kernel params for `sample`, mirrored in `shaders/sample.wgsl` and `cuda/sample.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SampleParams {
    pub seqs: u32,
    pub vocab: u32,
    /// Columns of `seen`.
    pub seen: u32,
    pub _pad: u32,
}

impl SampleParams {
    /// From the shapes of logits and seen.
    pub fn new(logits: &[usize], seen: &[usize]) -> Self {
        SampleParams { seqs: logits[0] as u32, vocab: logits[1] as u32, seen: seen[1] as u32, _pad: 0 }
    }
}

pub(crate) fn infer(inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    arity(inputs, 4, 4)?;
    let (logits, params, seen, keys) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3]);
    float(logits, "logits")?;
    rank_is(logits, 2, "logits")?;
    float(params, "params")?;
    rank_is(params, 2, "params")?;
    dtype_is(seen, DType::U32, "seen")?;
    rank_is(seen, 2, "seen")?;
    dtype_is(keys, DType::U32, "keys")?;
    rank_is(keys, 2, "keys")?;
    let seqs = &logits.shape[0];
    for (t, what) in [(params, "params"), (seen, "seen"), (keys, "keys")] {
        if &t.shape[0] != seqs {
            return Err(format!("{what} {t} must have one row per row of logits {logits}"));
        }
    }
    if params.shape[1] != Dim::Fixed(SETTINGS as u64) {
        return Err(format!(
            "params {params} must hold {SETTINGS} values per sequence (temperature, top_k, top_p, min_p, \
             repetition_penalty)"
        ));
    }
    if keys.shape[1] != Dim::Fixed(2) {
        return Err(format!("keys {keys} must hold 2 words per sequence"));
    }
    if seen.shape[1] == Dim::Fixed(0) {
        return Err(format!("seen {seen} needs at least one column (pad with 0xFFFFFFFF)"));
    }
    if logits.shape[1] == Dim::Fixed(0) {
        return Err(format!("logits {logits} must have at least one column"));
    }
    Ok(vec![TensorType::new(DType::U32, vec![seqs.clone()])])
}

/// The order-preserving u32 encoding of an f32 (`a < b` ⇔ `key(a) < key(b)`, with −0 just
/// below +0); NaN encodes as −∞.
pub fn key(x: f32) -> u32 {
    let x = if x.is_nan() { f32::NEG_INFINITY } else { x };
    let b = x.to_bits();
    if b & 0x8000_0000 == 0 { b | 0x8000_0000 } else { !b }
}

/// The f32 that [`key`] encodes as `k`.
pub fn unkey(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 { k & 0x7FFF_FFFF } else { !k })
}

/// ln 2 rounded to f32.
const LN2: f32 = std::f32::consts::LN_2;

/// Natural log of a positive normal finite f32, the same steps on every backend: x = m·2^e with
/// m in [√½, √2), then `ln m = 2·atanh(s)`, `s = (m − 1)/(m + 1)`, by its series to s¹¹.
/// Accurate to a few ulps, with full relative accuracy near 1.
pub fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xFF) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut p = 1.0f32 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    p = p * s2 + 1.0;
    2.0 * s * p + e as f32 * LN2
}

/// PCG's output permutation as a hash (Jarzynski and Olano, "Hash Functions for GPU
/// Rendering").
fn pcg(v: u32) -> u32 {
    let s = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277_803_737);
    (w >> 22) ^ w
}

/// The counter-based hash of token `i` under the step's key.
pub fn hash(k0: u32, k1: u32, i: u32) -> u32 {
    pcg(pcg(pcg(k0).wrapping_add(k1)).wrapping_add(i))
}

/// `u_i` in (0, 1): 23 bits of the hash, `(h + 0.5) / 2²³` (exact in f32).
pub fn uniform(k0: u32, k1: u32, i: u32) -> f32 {
    ((hash(k0, k1, i) >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// The Gumbel noise `−ln(−ln(u_i))` of token `i`.
pub fn gumbel(k0: u32, k1: u32, i: u32) -> f32 {
    -ln(-ln(uniform(k0, k1, i)))
}

/// One row's settings after the rules for invalid values (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// None: greedy.
    pub temperature: Option<f32>,
    /// 0: off; else in 1..vocab.
    pub top_k: u32,
    /// 1: off; else a normal number in (0, 1).
    pub top_p: f32,
    /// 0: off; else a normal number in (0, 1].
    pub min_p: f32,
    /// 1: off.
    pub penalty: f32,
}

impl Settings {
    pub fn new(row: &[f32], vocab: u32) -> Self {
        let (t, k, p, mp, rp) = (row[0], row[1], row[2], row[3], row[4]);
        let temperature = (t.is_finite() && t > 0.0).then_some(t);
        let top_k = if k >= 1.0 && k < vocab as f32 { (k as u32).min(vocab - 1) } else { 0 };
        let top_p = if (f32::MIN_POSITIVE..1.0).contains(&p) { p } else { 1.0 };
        let min_p = if mp >= f32::MIN_POSITIVE { mp.min(1.0) } else { 0.0 };
        let penalty = if rp.is_finite() && rp > 0.0 { rp } else { 1.0 };
        Settings { temperature, top_k, top_p, min_p, penalty }
    }
}

/// Whether `id` is in a sorted row of `seen` (n ≥ 1): a lower bound by steps of halving
/// powers of two, the same steps as the kernels' (whose trip count then depends on n only),
/// so that even an unsorted row reads the same entries on every backend.
pub fn is_seen(seen: &[u32], id: u32) -> bool {
    let n = seen.len();
    if n == 0 {
        return false;
    }
    let mut pos = 0usize;
    let mut step = 1usize << (usize::BITS - 1 - n.leading_zeros());
    while step > 0 {
        if pos + step <= n && seen[pos + step - 1] < id {
            pos += step;
        }
        step >>= 1;
    }
    pos < n && seen[pos] == id
}

/// The penalized logit of token `i`.
fn penalized(l: f32, s: &Settings, seen: &[u32], i: u32) -> f32 {
    if s.penalty != 1.0 && is_seen(seen, i) { if l > 0.0 { l / s.penalty } else { l * s.penalty } } else { l }
}

/// The lowest id with the largest key among `(key, id)` pairs (given in id order).
fn argmax_key(items: impl Iterator<Item = (u32, u32)>) -> u32 {
    let mut best: Option<(u32, u32)> = None;
    for (k, i) in items {
        if best.is_none_or(|(bk, _)| k > bk) {
            best = Some((k, i));
        }
    }
    best.map_or(0, |(_, i)| i)
}

/// One row: the chosen id.
pub fn sample_row(logits: &[f32], settings: &[f32], seen: &[u32], keys: [u32; 2]) -> u32 {
    let vocab = logits.len() as u32;
    let s = Settings::new(settings, vocab);
    let l = |i: u32| penalized(logits[i as usize], &s, seen, i);
    let Some(t) = s.temperature else {
        return argmax_key((0..vocab).map(|i| (key(l(i)), i)));
    };
    let x: Vec<f32> = (0..vocab)
        .map(|i| {
            let x = l(i) / t;
            if x.is_nan() { f32::NEG_INFINITY } else { x }
        })
        .collect();
    let max_key = x.iter().map(|&v| key(v)).max().unwrap_or(0);
    let m = unkey(max_key);
    let mut lo = key(f32::NEG_INFINITY);
    if s.min_p > 0.0 {
        lo = lo.max(key(m + ln(s.min_p)));
    }
    if s.top_k > 0 {
        let mut keys: Vec<u32> = x.iter().map(|&v| key(v)).collect();
        let k = s.top_k as usize;
        let (_, kth, _) = keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        lo = lo.max(*kth);
    }
    if s.top_p < 1.0 && m.is_finite() {
        let mut kept: Vec<(u32, f32)> = x.iter().map(|&v| (key(v), v)).filter(|&(k, _)| k >= lo).collect();
        kept.sort_unstable_by_key(|&(k, _)| std::cmp::Reverse(k));
        let mass: Vec<f32> = kept.iter().map(|&(_, v)| (v - m).exp()).collect();
        let total: f64 = mass.iter().map(|&e| e as f64).sum();
        let target = s.top_p as f64 * total;
        let mut cumulative = 0.0f64;
        for (&(k, _), &e) in kept.iter().zip(&mass) {
            cumulative += e as f64;
            if cumulative >= target {
                lo = lo.max(k);
                break;
            }
        }
    }
    argmax_key(
        (0..vocab).filter(|&i| key(x[i as usize]) >= lo).map(|i| (key(x[i as usize] + gumbel(keys[0], keys[1], i)), i)),
    )
}

/// CPU reference.
pub fn cpu(p: &SampleParams, logits: &[f32], params: &[f32], seen: &[u32], keys: &[u32], out: &mut [u32]) {
    let (v, n) = (p.vocab as usize, p.seen as usize);
    for (r, o) in out.iter_mut().enumerate().take(p.seqs as usize) {
        *o = sample_row(
            &logits[r * v..(r + 1) * v],
            &params[r * SETTINGS..(r + 1) * SETTINGS],
            &seen[r * n..(r + 1) * n],
            [keys[2 * r], keys[2 * r + 1]],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_preserve_order() {
        let xs = [f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(key(w[0]) < key(w[1]), "{} {}", w[0], w[1]);
        }
        assert_eq!(key(f32::NAN), key(f32::NEG_INFINITY));
        for x in xs {
            assert_eq!(unkey(key(x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn ln_is_accurate() {
        for x in [1e-30f32, 1.1920929e-7, 0.3, 0.70710677, 0.999_999_9, 1.0, 1.000_000_1, 1.5, 2.0, 1e30] {
            let want = (x as f64).ln();
            let got = ln(x) as f64;
            assert!((got - want).abs() <= 4e-7 * want.abs().max(1e-7), "ln({x}) = {got}, want {want}");
        }
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn uniforms_stay_inside_the_interval() {
        for i in 0..10_000 {
            let u = uniform(3, 9, i);
            assert!(u > 0.0 && u < 1.0);
            assert!(gumbel(3, 9, i).is_finite());
        }
        assert_eq!(((u32::MAX >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0), 1.0 - 0.5 / 8_388_608.0);
    }

    /// Draws over many keys: (frequency of each id).
    fn frequencies(logits: &[f32], settings: [f32; 5], seen: &[u32], draws: u32) -> Vec<f64> {
        let mut counts = vec![0u32; logits.len()];
        for step in 0..draws {
            let k = [step.wrapping_mul(0x9E37_79B9), step ^ 0x5bd1_e995];
            counts[sample_row(logits, &settings, seen, k) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn softmax(x: &[f32]) -> Vec<f64> {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
        let total: f64 = e.iter().sum();
        e.iter().map(|v| v / total).collect()
    }

    #[test]
    fn draws_reproduce_the_softmax() {
        let logits = [1.0f32, 0.0, 2.5, -1.0, 0.5, 2.0];
        let n = 60_000;
        for t in [1.0f32, 0.5, 2.0] {
            let x: Vec<f32> = logits.iter().map(|l| l / t).collect();
            let want = softmax(&x);
            let got = frequencies(&logits, [t, 0.0, 1.0, 0.0, 1.0], &[u32::MAX], n);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // Five standard deviations of a binomial share.
                let sd = (w * (1.0 - w) / n as f64).sqrt();
                assert!((g - w).abs() < 5.0 * sd + 1e-4, "T {t}, id {i}: drawn {g}, softmax {w}");
            }
        }
    }

    /// The ids drawn at least once, and their frequencies against the softmax over them.
    fn check_kept(logits: &[f32], settings: [f32; 5], want_kept: &[u32]) {
        let n = 40_000;
        let got = frequencies(logits, settings, &[u32::MAX], n);
        let kept: Vec<u32> = (0..logits.len() as u32).filter(|&i| got[i as usize] > 0.0).collect();
        assert_eq!(kept, want_kept, "settings {settings:?}");
        let x: Vec<f32> = want_kept.iter().map(|&i| logits[i as usize] / settings[0]).collect();
        for (&i, w) in want_kept.iter().zip(softmax(&x)) {
            let sd = (w * (1.0 - w) / n as f64).sqrt();
            let g = got[i as usize];
            assert!((g - w).abs() < 5.0 * sd + 1e-4, "settings {settings:?}, id {i}: drawn {g}, want {w}");
        }
    }

    #[test]
    fn top_k_top_p_and_min_p_keep_the_sets_of_the_spec() {
        // Probabilities at T = 1 ≈ 0.636, 0.234, 0.086, 0.032, 0.012.
        let logits = [4.0f32, 3.0, 2.0, 1.0, 0.0];
        check_kept(&logits, [1.0, 2.0, 1.0, 0.0, 1.0], &[0, 1]);
        check_kept(&logits, [1.0, 4.0, 1.0, 0.0, 1.0], &[0, 1, 2, 3]);
        // top-p: the shortest prefix whose mass reaches p.
        check_kept(&logits, [1.0, 0.0, 0.8, 0.0, 1.0], &[0, 1]);
        check_kept(&logits, [1.0, 0.0, 0.88, 0.0, 1.0], &[0, 1, 2]);
        check_kept(&logits, [1.0, 0.0, 0.5, 0.0, 1.0], &[0]);
        // min-p: p_i / p_max = e^−i = 1, 0.368, 0.135, 0.0498, 0.018.
        check_kept(&logits, [1.0, 0.0, 1.0, 0.1, 1.0], &[0, 1, 2]);
        check_kept(&logits, [1.0, 0.0, 1.0, 0.05, 1.0], &[0, 1, 2]);
        check_kept(&logits, [1.0, 0.0, 1.0, 0.045, 1.0], &[0, 1, 2, 3]);
        // Combined: top-k 4, then top-p 0.9 of the mass of those four (0.94 of the whole).
        check_kept(&logits, [1.0, 4.0, 0.9, 0.0, 1.0], &[0, 1, 2]);
        // Ties at the k-th value are all kept.
        check_kept(&[1.0, 3.0, 1.0, 0.0], [1.0, 2.0, 1.0, 0.0, 1.0], &[0, 1, 2]);
        check_kept(&logits, [1.0, 0.0, 1.0, 0.0, 1.0], &[0, 1, 2, 3, 4]);
    }

    #[test]
    fn greedy_takes_the_lowest_id_of_the_largest_penalized_logit() {
        let row = [0.5f32, 2.0, 2.0, -1.0, f32::NAN];
        assert_eq!(sample_row(&row, &[0.0, 0.0, 1.0, 0.0, 1.0], &[u32::MAX], [1, 2]), 1);
        // 2.0 / 2 = 1.0 < 2.0 for id 1 seen: id 2 wins.
        assert_eq!(sample_row(&row, &[0.0, 0.0, 1.0, 0.0, 2.0], &[1, u32::MAX], [1, 2]), 2);
        // A negative logit is multiplied: −1 · 0.5 = −0.5 beats nothing here, but ranks.
        assert_eq!(sample_row(&[-1.0, -0.6], &[0.0, 0.0, 1.0, 0.0, 0.5], &[0, 7], [0, 0]), 0);
        assert_eq!(sample_row(&[f32::NAN, f32::NAN], &[0.0, 0.0, 1.0, 0.0, 1.0], &[0], [0, 0]), 0);
        assert_eq!(sample_row(&[f32::NAN, f32::NEG_INFINITY], &[1.0, 0.0, 0.5, 0.5, 1.0], &[0], [0, 0]), 0);
    }

    #[test]
    fn the_same_key_gives_the_same_draw() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.05).collect();
        let s = [1.0, 0.0, 1.0, 0.0, 1.0];
        let a: Vec<u32> = (0..50).map(|k| sample_row(&logits, &s, &[u32::MAX], [k, 1])).collect();
        let b: Vec<u32> = (0..50).map(|k| sample_row(&logits, &s, &[u32::MAX], [k, 1])).collect();
        let c: Vec<u32> = (0..50).map(|k| sample_row(&logits, &s, &[u32::MAX], [k, 2])).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
