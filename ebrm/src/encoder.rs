//! The text encoder EBRM scores with: any model that turns texts into vectors.

use anyhow::{Result, bail};
pub use tandem_models::TextRole;

/// A text encoder: the MiniLM bi-encoder of tandem-models in production, [`NgramEncoder`] in
/// tests and wherever no model is at hand.
pub trait TextEncoder {
    /// Names the model and its version: cache keys and the taxonomy embedding file use it, so
    /// two encoders with the same id must give the same vectors.
    fn id(&self) -> &str;
    /// One vector per text, in order; all of the same length. The texts are what is searched
    /// (item texts, taxonomy paths).
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
    /// [`TextEncoder::encode`] for search queries. Models that read both alike (MiniLM) keep
    /// this default; E5 writes "query: " before a query where it writes "passage: " before
    /// the texts searched.
    fn encode_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.encode(texts)
    }
    /// The device the model runs on, if it runs on one: EBRM aggregates there too.
    fn device(&self) -> Option<&tandem_models::Device> {
        None
    }
}

impl<T: TextEncoder + ?Sized> TextEncoder for &T {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        (**self).encode(texts)
    }
    fn encode_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        (**self).encode_queries(texts)
    }
    fn device(&self) -> Option<&tandem_models::Device> {
        (**self).device()
    }
}

impl<T: TextEncoder + ?Sized> TextEncoder for Box<T> {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        (**self).encode(texts)
    }
    fn encode_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        (**self).encode_queries(texts)
    }
    fn device(&self) -> Option<&tandem_models::Device> {
        (**self).device()
    }
}

/// A model that scores (query, item text) pairs: a cross-encoder, read as the similarity
/// prior's QE model. It lives beside [`TextEncoder`] so that encoders and the pipeline do
/// not import each other.
pub trait PairScorer: Send + Sync {
    /// Names the model for cache keys.
    fn id(&self) -> &str;
    /// One raw score (a logit) per pair, in order.
    fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>>;
}

/// The texts a [`TableEncoder`] was asked for and does not hold: encode them (asynchronously,
/// as a browser must), [`TableEncoder::insert`] them and run the request again.
#[derive(Debug, Clone, PartialEq)]
pub struct MissingTexts(pub Vec<String>);

impl std::fmt::Display for MissingTexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} texts are not encoded yet", self.0.len())
    }
}

impl std::error::Error for MissingTexts {}

impl MissingTexts {
    /// The missing texts behind an error, if that is what it is.
    pub fn in_error(e: &anyhow::Error) -> Option<&MissingTexts> {
        e.chain().find_map(|c| c.downcast_ref::<MissingTexts>())
    }
}

/// An encoder that answers from vectors computed elsewhere. Where encoding cannot block (the
/// browser, where a GPU answers through the event loop), a request runs, fails with
/// [`MissingTexts`] at the first call that needs a new text, the caller encodes those texts
/// and inserts them, and the request runs again; EBRM caches nothing from a failed call, so
/// each round gets further and a request finishes in a few rounds.
pub struct TableEncoder {
    id: String,
    table: std::sync::Mutex<std::collections::HashMap<String, Vec<f32>>>,
    /// Vectors kept at most; beyond it the table is emptied (the EBRM caches keep the scores).
    capacity: usize,
}

impl TableEncoder {
    pub fn new(id: impl Into<String>, capacity: usize) -> TableEncoder {
        TableEncoder { id: id.into(), table: Default::default(), capacity: capacity.max(1) }
    }

    pub fn insert(&self, texts: Vec<String>, vectors: Vec<Vec<f32>>) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() + texts.len() > self.capacity {
            table.clear();
        }
        table.extend(texts.into_iter().zip(vectors));
    }

    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TextEncoder for TableEncoder {
    fn id(&self) -> &str {
        &self.id
    }
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<String> =
            texts.iter().filter(|t| !table.contains_key(**t)).map(|t| t.to_string()).collect();
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return Err(MissingTexts(missing).into());
        }
        Ok(texts.iter().map(|t| table[*t].clone()).collect())
    }
}

/// Encodes `texts` of `role` and checks the encoder kept its contract (one finite vector per
/// text, all of one length), so a misbehaving model gives an error here rather than wrong
/// scores later.
pub fn encode_checked(encoder: &dyn TextEncoder, texts: &[&str], role: TextRole) -> Result<Vec<Vec<f32>>> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let out = match role {
        TextRole::Query => encoder.encode_queries(texts)?,
        TextRole::Passage => encoder.encode(texts)?,
    };
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

/// A tandem-models embedding pipeline (MiniLM or multilingual E5) as a [`TextEncoder`].
pub struct ModelEncoder {
    embedder: tandem_models::Embedder,
    id: String,
}

impl ModelEncoder {
    /// `id` names the model for cache keys and calibration: a registry name ("minilm",
    /// "multilingual-e5-small") selects that model's fitted calibration.
    pub fn new(embedder: tandem_models::Embedder, id: impl Into<String>) -> ModelEncoder {
        ModelEncoder { embedder, id: id.into() }
    }

    /// Loads a sentence-transformers model folder or an E5S1 file on the given backend.
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
    fn encode_queries(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embedder.embed_queries(texts)
    }
    fn device(&self) -> Option<&tandem_models::Device> {
        Some(self.embedder.device())
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

impl PairScorer for CrossEncoder {
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
    use tandem_models::cosine;

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
        assert!(encode_checked(&Broken, &["a", "b"], TextRole::Passage).is_err());
        let err = encode_checked(&Broken, &["a", "b", "c"], TextRole::Query).unwrap_err();
        assert!(err.to_string().contains("vectors for 3"));
        assert!(encode_checked(&Broken, &[], TextRole::Passage).unwrap().is_empty());
    }
}
