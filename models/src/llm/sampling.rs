//! How the next token is chosen: the user's parameters (checked), and per sequence a
//! [`Sampler`] that turns them, a seeded generator and the ids seen so far into the rows
//! `ops::sample` takes, so that a seed gives the same text on every run, machine and backend.

use crate::decoder::SampleRow;
use anyhow::{Result, bail};
use std::collections::BTreeSet;

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

/// One sequence's sampling state: its parameters, its generator (a key per step) and the
/// ids the repetition penalty looks at. The choice itself is made on the device by
/// `ops::sample` (greedy, or a Gumbel-max draw after the penalty, temperature, top-k, top-p
/// and min-p) from the [`SampleRow`] this gives for each step.
pub struct Sampler {
    params: SamplingParams,
    rng: SeededRng,
    /// Ids seen so far (prompt and output), for the repetition penalty only.
    seen: BTreeSet<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.check()?;
        Ok(Sampler { params, rng: SeededRng::new(params.seed), seen: BTreeSet::new() })
    }

    /// Counts `ids` as seen (the prompt, then each chosen token).
    pub fn observe(&mut self, ids: &[u32]) {
        if self.params.repetition_penalty != 1.0 {
            self.seen.extend(ids);
        }
    }

    /// The device's sampling row for the next step (each call draws a new key).
    pub fn next_row(&mut self) -> SampleRow {
        let p = self.params;
        let key = self.rng.next_u64();
        SampleRow {
            settings: [p.temperature, p.top_k as f32, p.top_p, p.min_p, p.repetition_penalty],
            seen: self.seen.iter().copied().collect(),
            key: [key as u32, (key >> 32) as u32],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, ..Default::default() }
    }

    #[test]
    fn argmax_and_top_logits_take_the_lowest_id_on_ties() {
        assert_eq!(argmax(&[0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.0]), 1);
        assert_eq!(top_logits(&[0.5, 2.0, 2.0, -1.0], 3), vec![(1, 2.0), (2, 2.0), (0, 0.5)]);
    }

    #[test]
    fn rows_carry_the_settings_a_fresh_key_per_step_and_the_seen_ids() {
        let p = SamplingParams { top_k: 40, top_p: 0.9, min_p: 0.05, repetition_penalty: 1.3, seed: 7, ..params(0.7) };
        let mut s = Sampler::new(p).unwrap();
        s.observe(&[9, 3, 9, 5]);
        let first = s.next_row();
        assert_eq!(first.settings, [0.7, 40.0, 0.9, 0.05, 1.3]);
        assert_eq!(first.seen, [3, 5, 9], "sorted and unique");
        s.observe(&[4]);
        let second = s.next_row();
        assert_eq!(second.seen, [3, 4, 5, 9]);
        assert_ne!(first.key, second.key);
        // The same seed gives the same keys; another seed others.
        let keys = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0) }).unwrap();
            (0..4).map(|_| s.next_row().key).collect::<Vec<_>>()
        };
        assert_eq!(keys(7), keys(7));
        assert_ne!(keys(7), keys(8));
        // Without a penalty nothing is kept.
        let mut plain = Sampler::new(params(1.0)).unwrap();
        plain.observe(&[1, 2]);
        assert!(plain.next_row().seen.is_empty());
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
            assert!(Sampler::new(p).is_err(), "{p:?}");
        }
    }
}
