//! Choosing the next token from a row of logits: greedy, or sampled after a repetition
//! penalty, temperature, top-k, top-p and min-p, in transformers' order, from a seeded
//! generator so that a seed gives the same text on every run and machine.

use anyhow::{Result, bail};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy (the largest logit; the lowest id on a tie).
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one's probability (0: none).
    pub min_p: f32,
    /// CTRL's penalty on tokens already in the prompt or output: a positive logit is divided
    /// by it, a negative one multiplied (1: none).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!("temperature must be a number ≥ 0 (0 is greedy), not {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top-p must be in (0, 1], not {}", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            bail!("min-p must be in [0, 1], not {}", self.min_p);
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            bail!("repetition penalty must be a number > 0 (1 is none), not {}", self.repetition_penalty);
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// SplitMix64: tiny, and its output for a seed is fixed forever (unlike `rand`'s StdRng,
/// whose algorithm may change between versions).
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The id of the largest logit (the lowest id among equals; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best as u32
}

/// The k largest `(id, logit)`, largest first (ties: lower id first).
pub fn top_logits(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let k = k.min(ids.len());
    if k == 0 {
        return Vec::new();
    }
    ids.select_nth_unstable_by(k - 1, by_logit);
    ids.truncate(k);
    ids.sort_by(by_logit);
    ids.into_iter().map(|i| (i, logits[i as usize])).collect()
}

/// Picks tokens for one sequence: its parameters, its generator, and the ids the
/// repetition penalty looks at.
pub struct Sampler {
    params: SamplingParams,
    rng: SeededRng,
    /// Ids seen so far (prompt and output), for the repetition penalty.
    seen: Vec<bool>,
    /// Scratch: candidate (id, logit) pairs.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams, vocab: usize) -> Result<Self> {
        params.check()?;
        let seen = if params.repetition_penalty != 1.0 { vec![false; vocab] } else { Vec::new() };
        Ok(Sampler { params, rng: SeededRng::new(params.seed), seen, candidates: Vec::new() })
    }

    /// Counts `ids` as seen (the prompt, then each chosen token).
    pub fn observe(&mut self, ids: &[u32]) {
        for &id in ids {
            if let Some(s) = self.seen.get_mut(id as usize) {
                *s = true;
            }
        }
    }

    /// The next token from `logits` (which it may modify).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = self.params;
        if p.repetition_penalty != 1.0 {
            for (x, _) in logits.iter_mut().zip(&self.seen).filter(|(_, s)| **s) {
                *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
            }
        }
        let id = if p.is_greedy() { argmax(logits) } else { self.draw(logits) };
        self.observe(&[id]);
        id
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().filter(|(_, x)| !x.is_nan()).map(|(i, &x)| (i as u32, x / p.temperature)));
        if c.is_empty() {
            return 0;
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_by(by_logit);
        // Softmax in f64 over the survivors, stored back as probabilities.
        let max = c[0].1 as f64;
        let mut total = 0.0f64;
        let mut probs: Vec<f64> = c.iter().map(|&(_, x)| ((x as f64) - max).exp()).collect();
        probs.iter().for_each(|q| total += q);
        probs.iter_mut().for_each(|q| *q /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, q) in probs.iter().enumerate() {
                cumulative += q;
                if cumulative >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (i, q) in probs[..keep].iter().enumerate() {
            if u < *q {
                return c[i].0;
            }
            u -= q;
        }
        c[keep - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, ..Default::default() }
    }

    #[test]
    fn greedy_takes_the_largest_logit_and_the_lowest_id_on_ties() {
        let mut s = Sampler::new(params(0.0), 4).unwrap();
        assert_eq!(s.sample(&mut [0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.0]), 1);
        assert_eq!(top_logits(&[0.5, 2.0, 2.0, -1.0], 3), vec![(1, 2.0), (2, 2.0), (0, 0.5)]);
    }

    #[test]
    fn a_seed_gives_the_same_draws_and_another_seed_others() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0) }, 50).unwrap();
            (0..40).map(|_| s.sample(&mut logits.clone())).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn draws_follow_the_softmax() {
        // Two tokens with logits ln 3 and 0: probabilities 3/4 and 1/4.
        let mut s = Sampler::new(SamplingParams { seed: 1, ..params(1.0) }, 2).unwrap();
        let n = 20_000;
        let first = (0..n).filter(|_| s.sample(&mut [3f32.ln(), 0.0]) == 0).count();
        let share = first as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "token 0 drawn {share} of the time, expected 0.75");
    }

    #[test]
    fn top_k_top_p_and_min_p_cut_the_tail() {
        let logits = [4.0f32, 3.0, 2.0, 1.0, 0.0];
        let drawn = |p: SamplingParams| {
            let mut s = Sampler::new(p, 5).unwrap();
            let mut ids: Vec<u32> = (0..3000).map(|_| s.sample(&mut logits.clone())).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        assert_eq!(drawn(SamplingParams { top_k: 2, ..params(1.0) }), [0, 1]);
        // Probabilities ≈ 0.64, 0.24, 0.09, 0.03, 0.01: top-p 0.8 keeps the first two.
        assert_eq!(drawn(SamplingParams { top_p: 0.8, ..params(1.0) }), [0, 1]);
        // min-p 0.1: tokens below 0.064 go (the last two).
        assert_eq!(drawn(SamplingParams { min_p: 0.1, ..params(1.0) }), [0, 1, 2]);
        assert_eq!(drawn(params(1.0)), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn the_repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..params(0.0) }, 3).unwrap();
        s.observe(&[0]);
        // 3.0 / 2 = 1.5 < 2.0: the seen token loses.
        assert_eq!(s.sample(&mut [3.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn bad_parameters_are_errors() {
        for p in [
            params(-1.0),
            params(f32::NAN),
            SamplingParams { top_p: 0.0, ..params(1.0) },
            SamplingParams { min_p: 1.5, ..params(1.0) },
            SamplingParams { repetition_penalty: 0.0, ..params(1.0) },
        ] {
            assert!(Sampler::new(p, 3).is_err(), "{p:?}");
        }
    }
}
