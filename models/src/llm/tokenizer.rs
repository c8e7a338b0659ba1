//! A decoder's tokenizer, rebuilt from its GGUF file into a `tokenizers` tokenizer: the BPE
//! vocabulary and merges (`tokenizer.ggml.tokens`, `.merges`), the pre-tokenizer that
//! `tokenizer.ggml.pre` names, the control and user-defined tokens as added tokens (so the
//! text of a chat template's `<|im_start|>` becomes that one token), and the ids that end a
//! generation.
//!
//! Tokenization follows llama.cpp (the reference the checks use): no Unicode normalization
//! (Qwen2's tokenizer.json asks for NFC; llama.cpp does not apply it, so text that is not in
//! NFC, e.g. a decomposed "é", can tokenize differently from transformers), special tokens
//! parsed wherever they appear, BOS only when `tokenizer.ggml.add_bos_token` says so.

use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeSet;
use tandem_runtime::weights::Gguf;
use tandem_runtime::weights::gguf::{MetaArray, MetaValue};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// Texts of tokens that end a generation, whatever their type, as llama.cpp's vocabulary
/// loader lists them (turn ends, end of text, and a code model's FIM padding, repository
/// and file separators): it treats them as end-of-generation even when the metadata names
/// only one EOS id (Qwen2.5 names `<|im_end|>`; a raw completion ends with `<|endoftext|>`),
/// and the parity references hold its set for both models.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "</s>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// The regex of each pre-tokenizer type, as llama.cpp and the models' tokenizer.json split
/// text before BPE.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    // GPT-2's split, which the byte-level pre-tokenizer applies itself with `use_regex`.
    let byte_level_with_gpt2_split = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let split_then_byte_level = |pattern: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| anyhow!("pre-tokenizer '{pre}': {e}"))?;
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ])))
    };
    match pre {
        "gpt2" | "default" => Ok(byte_level_with_gpt2_split()),
        // SmolLM and StarCoder: every digit on its own, then GPT-2's split.
        "smollm" | "starcoder" | "refact" => Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level_with_gpt2_split(),
        ]))),
        "qwen2" => split_then_byte_level(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        "llama3" | "llama-v3" | "llama-bpe" => split_then_byte_level(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        other => bail!("pre-tokenizer '{other}' is not supported (gpt2, smollm, starcoder, qwen2, llama-bpe)"),
    }
}

/// A GGUF decoder's tokenizer and its special ids.
pub struct LlmTokenizer {
    tokenizer: Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    end_of_generation: BTreeSet<u32>,
    tokens: Vec<String>,
}

impl LlmTokenizer {
    pub fn from_gguf(file: &Gguf) -> Result<Self> {
        let what = || format!("{}: tokenizer", file.path().display());
        Self::build(file).with_context(what)
    }

    fn build(file: &Gguf) -> Result<Self> {
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            bail!("tokenizer model '{model}' is not supported (gpt2: byte-level BPE)");
        }
        let tokens = file.get_string_array("tokenizer.ggml.tokens")?.to_vec();
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            bail!("tokenizer.ggml.tokens has {} entries", tokens.len());
        }
        let merges = file
            .get_string_array("tokenizer.ggml.merges")?
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| anyhow!("merge '{m}' is not two tokens separated by a space"))
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<i32> = match file.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(MetaValue::Array(MetaArray::I32(t))) if t.len() == tokens.len() => t.clone(),
            Some(other) => {
                bail!("tokenizer.ggml.token_type is not {} i32 values (it is a {})", tokens.len(), other.type_name())
            }
        };
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        if vocab.len() != tokens.len() {
            bail!("tokenizer.ggml.tokens has duplicate entries");
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("the BPE vocabulary and merges do not fit together: {e}"))?;
        let pre = match file.get("tokenizer.ggml.pre") {
            Some(_) => file.get_str("tokenizer.ggml.pre")?,
            None => "default",
        };
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|&(_, &t)| t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED)
            .map(|(text, &t)| AddedToken::from(text.clone(), t == TOKEN_CONTROL).normalized(false))
            .collect();
        tokenizer.add_special_tokens(&added);

        let id = |key: &str| -> Result<Option<u32>> {
            if file.get(key).is_none() {
                return Ok(None);
            }
            let id = file.get_u32(key)?;
            if id as usize >= tokens.len() {
                bail!("{key} is {id}, past the vocabulary of {}", tokens.len());
            }
            Ok(Some(id))
        };
        let (bos, eos) = (id("tokenizer.ggml.bos_token_id")?, id("tokenizer.ggml.eos_token_id")?);
        let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
            Some(_) => file.get_bool("tokenizer.ggml.add_bos_token")?,
            None => bos.is_some(),
        };
        if add_bos && bos.is_none() {
            bail!("tokenizer.ggml.add_bos_token is set but the file names no BOS token");
        }
        let mut end_of_generation: BTreeSet<u32> =
            [eos, id("tokenizer.ggml.eot_token_id")?, id("tokenizer.ggml.eom_token_id")?]
                .into_iter()
                .flatten()
                .collect();
        for (i, text) in tokens.iter().enumerate() {
            if END_OF_GENERATION_TEXTS.contains(&text.as_str()) {
                end_of_generation.insert(i as u32);
            }
        }
        if end_of_generation.is_empty() {
            bail!("the file names no end-of-generation token (tokenizer.ggml.eos_token_id)");
        }
        Ok(LlmTokenizer { tokenizer, bos, eos, add_bos, end_of_generation, tokens })
    }

    /// `text` as ids, special tokens parsed wherever they appear, with BOS first when the
    /// file asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| anyhow!("tokenizing: {e}"))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| anyhow!("detokenizing: {e}"))
    }

    /// A decoder of generated ids into text pieces as they complete (a character split over
    /// two tokens comes out with the second).
    pub fn stream(&self) -> TextStream<'_> {
        TextStream { tokenizer: self, ids: Vec::new() }
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    pub fn end_of_generation(&self) -> impl Iterator<Item = u32> + '_ {
        self.end_of_generation.iter().copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The token's text as the vocabulary stores it (byte-level: a space is `Ġ`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn bos_text(&self) -> &str {
        self.bos.and_then(|id| self.token_text(id)).unwrap_or("")
    }

    pub fn eos_text(&self) -> &str {
        self.eos.and_then(|id| self.token_text(id)).unwrap_or("")
    }
}

/// Generated ids to text, piece by piece ([`LlmTokenizer::stream`]).
pub struct TextStream<'a> {
    tokenizer: &'a LlmTokenizer,
    /// Ids since the last complete piece.
    ids: Vec<u32>,
}

/// A UTF-8 character is at most 4 bytes, so this many ids without one completing are
/// invalid bytes, given out as U+FFFD rather than held forever.
const MAX_PENDING_IDS: usize = 4;

impl TextStream<'_> {
    /// Adds `id`; returns the text it completes (empty while a character is incomplete).
    ///
    /// Only the ids since the last complete piece are decoded, so a long generation stays
    /// linear: byte-level BPE text is the concatenation of its tokens' bytes, so a window
    /// that starts at a character boundary decodes to exactly its part of the text.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        // A trailing U+FFFD is a character still missing its last bytes.
        if text.ends_with('\u{FFFD}') && self.ids.len() < MAX_PENDING_IDS {
            return Ok(String::new());
        }
        self.ids.clear();
        Ok(text)
    }

    /// The text of ids still held (an incomplete character at the end of a generation, as
    /// U+FFFD), emptying the stream.
    pub fn finish(&mut self) -> Result<String> {
        if self.ids.is_empty() {
            return Ok(String::new());
        }
        let text = self.tokenizer.decode(&self.ids)?;
        self.ids.clear();
        Ok(text)
    }
}
