//! The text encoder EBRM scores with: any model that turns texts into vectors.

use anyhow::{Result, bail};

/// A text encoder: the MiniLM bi-encoder of tandem-models in production, [`NgramEncoder`] in
/// tests and wherever no model is at hand.
pub trait TextEncoder {
    /// Names the model and its version: cache keys and the taxonomy embedding file use it, so
    /// two encoders with the same id must give the same vectors.
    fn id(&self) -> &str;
    /// One vector per text, in order; all of the same length.
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

impl<T: TextEncoder + ?Sized> TextEncoder for &T {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        (**self).encode(texts)
    }
}

impl<T: TextEncoder + ?Sized> TextEncoder for Box<T> {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        (**self).encode(texts)
    }
}

/// Cosine similarity; 0 when either vector is zero or the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (&x, &y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let norm = (na * nb).sqrt();
    if norm > 0.0 && norm.is_finite() { (dot / norm).clamp(-1.0, 1.0) } else { 0.0 }
}

/// Encodes `texts` and checks the encoder kept its contract (one finite vector per text, all
/// of one length), so a misbehaving model gives an error here rather than wrong scores later.
pub fn encode_checked(encoder: &dyn TextEncoder, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let out = encoder.encode(texts)?;
    if out.len() != texts.len() {
        bail!("encoder '{}' returned {} vectors for {} texts", encoder.id(), out.len(), texts.len());
    }
    let dim = out[0].len();
    if dim == 0 || out.iter().any(|v| v.len() != dim) {
        bail!("encoder '{}' returned vectors of differing or zero length", encoder.id());
    }
    if out.iter().flatten().any(|x| !x.is_finite()) {
        bail!("encoder '{}' returned a non-finite value", encoder.id());
    }
    Ok(out)
}

/// A model-free encoder: hashed character trigrams of the lowercased text (with word
/// boundaries marked), L2-normalised. Texts that share spelling get high cosine, which is
/// enough to exercise the pipeline in tests; it knows nothing of meaning.
#[derive(Debug, Clone)]
pub struct NgramEncoder {
    dim: usize,
}

impl NgramEncoder {
    pub fn new(dim: usize) -> NgramEncoder {
        NgramEncoder { dim: dim.max(1) }
    }
}

impl Default for NgramEncoder {
    fn default() -> Self {
        NgramEncoder::new(256)
    }
}

impl TextEncoder for NgramEncoder {
    fn id(&self) -> &str {
        "ngram3"
    }

    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0.0f32; self.dim];
                for word in crate::text::words(t) {
                    let chars: Vec<char> =
                        std::iter::once('^').chain(word.chars()).chain(std::iter::once('$')).collect();
                    for gram in chars.windows(3.min(chars.len())) {
                        // FNV-1a: stable across platforms and runs, unlike std's hasher.
                        let mut h: u64 = 0xcbf29ce484222325;
                        for c in gram {
                            h = (h ^ u64::from(*c)).wrapping_mul(0x100000001b3);
                        }
                        v[(h % self.dim as u64) as usize] += 1.0;
                    }
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect())
    }
}

/// A tandem-models embedding pipeline (the MiniLM bi-encoder) as a [`TextEncoder`].
pub struct ModelEncoder {
    embedder: tandem_models::Embedder,
    id: String,
}

impl ModelEncoder {
    /// `id` names the model for cache keys and calibration: the registry name ("minilm")
    /// selects the fitted MiniLM calibration.
    pub fn new(embedder: tandem_models::Embedder, id: impl Into<String>) -> ModelEncoder {
        ModelEncoder { embedder, id: id.into() }
    }

    /// Loads a sentence-transformers model folder on the given backend.
    pub fn load(
        dir: &std::path::Path,
        backend: tandem_models::BackendChoice,
        id: impl Into<String>,
    ) -> Result<ModelEncoder> {
        Ok(ModelEncoder::new(tandem_models::Embedder::load(dir, backend)?, id))
    }

    pub fn embedder(&self) -> &tandem_models::Embedder {
        &self.embedder
    }
}

impl TextEncoder for ModelEncoder {
    fn id(&self) -> &str {
        &self.id
    }
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embedder.embed(texts)
    }
}

/// A cross-encoder (a `BertForSequenceClassification` folder) as EBRM's QE model: the first
/// logit of each pair.
pub struct CrossEncoder {
    model: tandem_models::Embedder,
    id: String,
}

impl CrossEncoder {
    pub fn load(dir: &std::path::Path, backend: tandem_models::BackendChoice, id: impl Into<String>) -> Result<Self> {
        Ok(CrossEncoder { model: tandem_models::Embedder::load_cross_encoder(dir, backend)?, id: id.into() })
    }
}

impl crate::pipeline::PairScorer for CrossEncoder {
    fn id(&self) -> &str {
        &self.id
    }
    fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>> {
        Ok(self.model.score_pairs(pairs)?.into_iter().map(|logits| logits[0]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_edge_cases() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn ngram_encoder_is_deterministic_and_spelling_aware() {
        let e = NgramEncoder::default();
        let v = e.encode(&["brand: nike", "brand: nike", "brand: adidas", ""]).unwrap();
        assert_eq!(v[0], v[1]);
        assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]));
        assert!(v[3].iter().all(|&x| x == 0.0));
    }

    struct Broken;
    impl TextEncoder for Broken {
        fn id(&self) -> &str {
            "broken"
        }
        fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
            Ok(texts.iter().skip(1).map(|_| vec![f32::NAN]).collect())
        }
    }

    #[test]
    fn contract_violations_are_errors() {
        assert!(encode_checked(&Broken, &["a", "b"]).is_err());
        assert!(encode_checked(&Broken, &["a", "b", "c"]).unwrap_err().to_string().contains("vectors for 3"));
        assert!(encode_checked(&Broken, &[]).unwrap().is_empty());
    }
}
