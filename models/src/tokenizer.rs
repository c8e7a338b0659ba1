//! Texts to packed token batches, with the model's own `tokenizer.json` (HF `tokenizers`).
//!
//! Matches sentence-transformers (6.2, the parity reference):
//! - truncation at the model's `max_seq_length` (sentence_bert_config.json: 256 for MiniLM),
//!   special tokens included, *not* at the 128 that MiniLM's tokenizer.json carries;
//! - no padding: the runtime packs sequences, so `tokenizer.json`'s padding is switched off;
//! - inputs are not stripped. Older sentence-transformers called `.strip()` on each text;
//!   6.2 does not, and for WordPiece it makes no difference either way (whitespace never
//!   becomes a token), which the parity inputs with surrounding whitespace check.

use anyhow::{Context, Result, anyhow, bail};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use tandem_runtime::HostTensor;
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};
use tokenizers::{Encoding, PostProcessor, Tokenizer};

/// tokenizer.json files are a few MB at most (large vocabularies included).
const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// One text, tokenized and truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedText {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl TokenizedText {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A text tokenized once for a caller that checks a limit before embedding: its ids,
/// truncated at the model's limit, and how many tokens it had before truncation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedText {
    pub tokens: TokenizedText,
    /// Tokens before truncation, special tokens included.
    pub untruncated: usize,
}

/// N texts packed back to back with no padding, the way the runtime takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedBatch {
    /// `[tokens]`: every text's ids, one after the other.
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    /// `0..len` for each text.
    pub position_ids: Vec<u32>,
    /// `[N, 2]`, flattened: (first row, length) of each text.
    pub segments: Vec<u32>,
}

impl PackedBatch {
    pub fn pack<'a>(texts: impl IntoIterator<Item = &'a TokenizedText>) -> Self {
        let mut batch = PackedBatch::default();
        for text in texts {
            let start = batch.input_ids.len() as u32;
            batch.segments.extend([start, text.len() as u32]);
            batch.input_ids.extend_from_slice(&text.ids);
            batch.token_type_ids.extend_from_slice(&text.type_ids);
            batch.position_ids.extend(0..text.len() as u32);
        }
        batch
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        self.segments.len() / 2
    }
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
    pub fn tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// The graph input of this name (`input_ids`, `token_type_ids`, `position_ids`,
    /// `segments`), if the batch has one.
    pub fn input(&self, name: &str) -> Option<HostTensor> {
        let (shape, data) = match name {
            "input_ids" => (vec![self.tokens()], &self.input_ids),
            "token_type_ids" => (vec![self.tokens()], &self.token_type_ids),
            "position_ids" => (vec![self.tokens()], &self.position_ids),
            "segments" => (vec![self.len(), 2], &self.segments),
            _ => return None,
        };
        Some(HostTensor::u32(shape, data.clone()).expect("shapes are built from the data"))
    }
}

pub const PACKED_INPUT_NAMES: &[&str] = &["input_ids", "token_type_ids", "position_ids", "segments"];

/// What a text is to the model: a search query, or one of the texts searched (a passage: what
/// embedding a collection means, and so the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TextRole {
    Query,
    #[default]
    Passage,
}

/// Graph metadata: the prompt written before a search query ("query: " for E5).
pub const META_PROMPT_QUERY: &str = "prompt_query";
/// Graph metadata: the prompt written before a searched text ("passage: " for E5).
pub const META_PROMPT_PASSAGE: &str = "prompt_passage";

/// What a model wants written before a text of each role (sentence-transformers' `prompts`):
/// E5 was trained with "query: " before search queries and "passage: " before the texts
/// searched. Most models want nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts {
    pub query: String,
    pub passage: String,
}

impl Prompts {
    pub fn of(&self, role: TextRole) -> &str {
        match role {
            TextRole::Query => &self.query,
            TextRole::Passage => &self.passage,
        }
    }

    /// The prompts a graph file's metadata names ([`Prompts::write_metadata`]); none where
    /// it names none.
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Prompts {
        let get = |key: &str| metadata.get(key).cloned().unwrap_or_default();
        Prompts { query: get(META_PROMPT_QUERY), passage: get(META_PROMPT_PASSAGE) }
    }

    /// Records the prompts in a graph's metadata, so that an exported graph embeds as its
    /// model does (only those that are not empty).
    pub fn write_metadata(&self, metadata: &mut BTreeMap<String, String>) {
        for (key, prompt) in [(META_PROMPT_QUERY, &self.query), (META_PROMPT_PASSAGE, &self.passage)] {
            if !prompt.is_empty() {
                metadata.insert(key.into(), prompt.clone());
            }
        }
    }

    /// `text` with the prompt of `role` before it (borrowed as is when there is none).
    pub fn apply<'a>(&self, role: TextRole, text: &'a str) -> Cow<'a, str> {
        match self.of(role) {
            "" => Cow::Borrowed(text),
            prompt => Cow::Owned(format!("{prompt}{text}")),
        }
    }
}

/// A model's tokenizer set up for embedding: truncating at `max_tokens`, never padding.
pub struct TextTokenizer {
    truncating: Tokenizer,
    /// The same tokenizer without truncation: splits a text once, before truncation, so its
    /// full length is known (see `tokenize_counted`).
    counting: Tokenizer,
    max_tokens: usize,
    /// Special tokens the post-processor adds to one text ([CLS] and [SEP] for BERT).
    special_tokens: usize,
    /// What goes before a text of each role (nothing, for most models).
    prompts: Prompts,
    /// Texts tokenized so far, pairs counting once: what shows (in tests and the server's
    /// metrics) that a caller tokenizes each text once.
    texts_tokenized: AtomicU64,
}

impl TextTokenizer {
    pub fn from_file(path: &Path, max_tokens: usize) -> Result<Self> {
        let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
        if len > MAX_TOKENIZER_BYTES {
            bail!("{}: {len} bytes is over the tokenizer size limit of {MAX_TOKENIZER_BYTES}", path.display());
        }
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_bytes(&bytes, max_tokens).with_context(|| path.display().to_string())
    }

    pub fn from_bytes(bytes: &[u8], max_tokens: usize) -> Result<Self> {
        let tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| anyhow!("not a valid tokenizer.json: {e}"))?;
        Self::new(tokenizer, max_tokens)
    }

    /// A tokenizer already made (built from a model file's vocabulary, as E5's is).
    pub fn new(mut tokenizer: Tokenizer, max_tokens: usize) -> Result<Self> {
        // The special tokens the post-processor adds count against the limit; the library
        // subtracts them without checking, so check first.
        let special_tokens = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
        if max_tokens <= special_tokens {
            bail!("a limit of {max_tokens} tokens leaves no room beside the {special_tokens} special tokens");
        }
        tokenizer.with_padding(None);
        let mut counting = tokenizer.clone();
        counting.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| anyhow!("{e}"))?;
        Ok(TextTokenizer {
            truncating: tokenizer,
            counting,
            max_tokens,
            special_tokens,
            prompts: Prompts::default(),
            texts_tokenized: AtomicU64::new(0),
        })
    }

    /// The tokenizer writing `prompts` before each text of their role.
    pub fn with_prompts(self, prompts: Prompts) -> Self {
        TextTokenizer { prompts, ..self }
    }

    pub fn prompts(&self) -> &Prompts {
        &self.prompts
    }

    /// The tokenizer as a `tokenizer.json` (without the truncation, which the limit sets when
    /// it is read back), for tokenizers built from a model file (E5's) that an export writes.
    pub fn to_json(&self) -> Result<String> {
        self.counting.to_string(false).map_err(|e| anyhow!("cannot write the tokenizer as JSON: {e}"))
    }

    /// Most tokens of one text (special tokens included); longer texts are truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenizes `text` once, truncated as [`TextTokenizer::tokenize`] does, and says how many
    /// tokens it had before truncation. The text is split into tokens once, without special
    /// tokens or truncation; truncation and the special tokens are then the tokenizer's own
    /// post-processing, the steps `tokenize` runs after the same split.
    pub fn tokenize_counted(&self, text: &str) -> Result<CountedText> {
        self.tokenize_counted_as(text, TextRole::Passage)
    }

    /// [`TextTokenizer::tokenize_counted`] for a text of `role`, its prompt included.
    pub fn tokenize_counted_as(&self, text: &str, role: TextRole) -> Result<CountedText> {
        self.texts_tokenized.fetch_add(1, Ordering::Relaxed);
        let text = self.prompts.apply(role, text);
        let split = self.counting.encode_fast(text.as_ref(), false).map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        let untruncated = split.len() + self.special_tokens;
        let encoding = self.truncating.post_process(split, None, true).map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        Ok(CountedText { tokens: tokenized(&encoding), untruncated })
    }

    /// Texts tokenized since the tokenizer was made (a pair counts once).
    pub fn texts_tokenized(&self) -> u64 {
        self.texts_tokenized.load(Ordering::Relaxed)
    }

    /// Tokenizes and truncates each (first, second) pair as one sequence, the way a
    /// cross-encoder reads it (`[CLS] a [SEP] b [SEP]`, token types 0 then 1, as the
    /// tokenizer's post-processor says); the longer side is cut first.
    pub fn tokenize_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<TokenizedText>> {
        self.texts_tokenized.fetch_add(pairs.len() as u64, Ordering::Relaxed);
        let inputs: Vec<tokenizers::EncodeInput> = pairs.iter().map(|&(a, b)| (a, b).into()).collect();
        let encodings = self.truncating.encode_batch_fast(inputs, true).map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        Ok(encodings.iter().map(tokenized).collect())
    }

    /// Tokenizes and truncates each text, read as passages (the texts searched).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<TokenizedText>> {
        self.tokenize_as(texts, TextRole::Passage)
    }

    /// Tokenizes and truncates each text of `role`, its prompt included.
    pub fn tokenize_as(&self, texts: &[&str], role: TextRole) -> Result<Vec<TokenizedText>> {
        self.texts_tokenized.fetch_add(texts.len() as u64, Ordering::Relaxed);
        let texts: Vec<Cow<str>> = texts.iter().map(|t| self.prompts.apply(role, t)).collect();
        let encodings = self.truncating.encode_batch_fast(texts, true).map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        Ok(encodings.iter().map(tokenized).collect())
    }
}

fn tokenized(encoding: &Encoding) -> TokenizedText {
    TokenizedText { ids: encoding.get_ids().to_vec(), type_ids: encoding.get_type_ids().to_vec() }
}
