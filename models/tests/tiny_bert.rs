//! The BERT builder, tokenizer, embed pipeline and export on a tiny synthetic model: these
//! run everywhere, with or without the real model.

use std::path::Path;
use tandem_models::testing::{TINY_HIDDEN, TINY_MAX_SEQ_LENGTH, write_tiny_bert};
use tandem_models::{BackendChoice, Embedder, bert, export};

fn tiny(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), prefix).unwrap();
    dir
}

fn error_of<T>(result: anyhow::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

const TEXTS: &[&str] =
    &["red running shoes", "the blue phone case for a 32gb phone for the red shoes", "", "Red   SHOES", "zebra"];

#[test]
fn embeds_unit_vectors_with_the_graph_the_builder_emits() {
    let dir = tiny("");
    let model = bert::load_dir(dir.path()).unwrap();
    let graph = &model.graph;
    let input_names: Vec<&str> = graph.inputs.iter().map(|&i| graph.value(i).name.as_str()).collect();
    assert_eq!(input_names, ["input_ids", "token_type_ids", "position_ids", "segments"]);
    assert_eq!(graph.value(graph.outputs[0]).name, "embeddings");
    assert_eq!(graph.metadata["max_seq_length"], TINY_MAX_SEQ_LENGTH.to_string());
    assert_eq!(graph.metadata["pooling"], "mean");
    assert_eq!(graph.metadata["normalize"], "true");

    let embedder = Embedder::load(dir.path(), BackendChoice::Cpu).unwrap();
    assert_eq!(
        (embedder.dim(), embedder.max_tokens(), embedder.backend_name()),
        (TINY_HIDDEN, TINY_MAX_SEQ_LENGTH, "cpu")
    );
    let got = embedder.embed_with_counts(TEXTS).unwrap();
    let tokens: Vec<usize> = got.iter().map(|e| e.tokens).collect();
    // [CLS] red running shoe ##s [SEP]; the long one is truncated to 12; "" is [CLS] [SEP].
    assert_eq!(tokens, [6, 12, 2, 5, 3]);
    // Tokenized once with the count before truncation, as the server does: the same ids the
    // pipeline embeds, so the same vectors.
    let before = embedder.texts_tokenized();
    let counted: Vec<_> = TEXTS.iter().map(|t| embedder.tokenize_counted(t).unwrap()).collect();
    assert_eq!(embedder.texts_tokenized() - before, TEXTS.len() as u64);
    let untruncated: Vec<usize> = counted.iter().map(|c| c.untruncated).collect();
    assert_eq!(untruncated, [6, 16, 2, 5, 3]);
    let lengths: Vec<usize> = counted.iter().map(|c| c.tokens.len()).collect();
    assert_eq!(lengths, tokens);
    let refs: Vec<_> = counted.iter().map(|c| &c.tokens).collect();
    let before = embedder.texts_tokenized();
    for (from_ids, e) in embedder.embed_tokenized(&refs).unwrap().iter().zip(&got) {
        assert!(from_ids.iter().zip(&e.vector).all(|(a, b)| (a - b).abs() < 1e-6));
    }
    assert_eq!(embedder.texts_tokenized(), before, "embedding token ids tokenizes nothing");
    for e in &got {
        let norm: f32 = e.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    // Lowercasing and whitespace are the tokenizer's business: same tokens, same vector (up
    // to the rounding of a different batch shape).
    let alone = &embedder.embed(&["red shoes"]).unwrap()[0];
    assert!(got[3].vector.iter().zip(alone).all(|(a, b)| (a - b).abs() < 1e-6));
    assert!(embedder.embed(&[]).unwrap().is_empty());
}

#[test]
fn packing_is_invisible_to_each_text() {
    let dir = tiny("");
    let embedder = Embedder::load(dir.path(), BackendChoice::Cpu).unwrap();
    let batched = embedder.embed(TEXTS).unwrap();
    for (text, in_batch) in TEXTS.iter().zip(&batched) {
        let alone = &embedder.embed(&[text]).unwrap()[0];
        let diff = alone.iter().zip(in_batch).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "{text:?}: {diff}");
    }
}

#[test]
fn accepts_weights_with_a_bert_prefix() {
    let (plain, prefixed) = (tiny(""), tiny("bert."));
    let a = Embedder::load(plain.path(), BackendChoice::Cpu).unwrap().embed(TEXTS).unwrap();
    let b = Embedder::load(prefixed.path(), BackendChoice::Cpu).unwrap().embed(TEXTS).unwrap();
    assert_eq!(a, b);
}

#[test]
fn an_exported_graph_gives_the_same_numbers_without_the_builder() {
    let dir = tiny("");
    let out = tempfile::tempdir().unwrap();
    let graph_path = out.path().join("tiny.tgraph");
    let exported = export::export(dir.path(), &graph_path).unwrap();
    assert_eq!(exported.weights, out.path().join("tiny.safetensors"));
    assert_eq!(exported.tokenizer, out.path().join("tiny.tokenizer.json"));
    // The model folder is gone: only the three exported files remain.
    drop(dir);
    let from_file = Embedder::from_graph_file(&graph_path, BackendChoice::Cpu).unwrap();
    let rebuilt = tiny("");
    let from_builder = Embedder::load(rebuilt.path(), BackendChoice::Cpu).unwrap();
    assert_eq!(from_file.embed(TEXTS).unwrap(), from_builder.embed(TEXTS).unwrap());
    assert_eq!(from_file.max_tokens(), TINY_MAX_SEQ_LENGTH);
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn a_config_that_disagrees_with_the_weights_names_file_and_tensor() {
    let dir = tiny("");
    edit(&dir.path().join("config.json"), "\"hidden_size\": 8", "\"hidden_size\": 16");
    let err = error_of(bert::load_dir(dir.path()));
    assert!(err.contains("config.json disagrees with"), "{err}");
    assert!(err.contains("model.safetensors: tensor 'embeddings.word_embeddings.weight' is [16, 8]"), "{err}");
    assert!(err.contains("implies [16, 16]"), "{err}");

    let dir = tiny("");
    edit(&dir.path().join("config.json"), "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    let err = error_of(bert::load_dir(dir.path()));
    assert!(err.contains("tensor 'encoder.layer.2.attention.self.query.weight' is missing"), "{err}");
}

#[test]
fn unsupported_heads_and_bad_configs_are_clear_errors() {
    let dir = tiny("");
    edit(&dir.path().join("1_Pooling/config.json"), "pooling_mode_mean_tokens", "pooling_mode_mean_sqrt_len_tokens");
    assert!(error_of(bert::load_dir(dir.path())).contains("pooling mode 'mean_sqrt_len' is not supported"));

    let dir = tiny("");
    edit(&dir.path().join("modules.json"), "models.Normalize", "models.Dense");
    assert!(
        error_of(bert::load_dir(dir.path())).contains("module 'sentence_transformers.models.Dense' is not supported")
    );

    let dir = tiny("");
    edit(&dir.path().join("config.json"), "\"hidden_act\": \"gelu\"", "\"hidden_act\": \"swish\"");
    assert!(error_of(bert::load_dir(dir.path())).contains("hidden_act 'swish' is not supported"));

    let dir = tiny("");
    edit(&dir.path().join("config.json"), "\"num_attention_heads\": 2", "\"num_attention_heads\": 3");
    assert!(error_of(bert::load_dir(dir.path())).contains("hidden_size 8 is not a multiple of num_attention_heads 3"));

    let dir = tiny("");
    edit(&dir.path().join("config.json"), "\"vocab_size\"", "\"vocab_count\"");
    let err = error_of(bert::load_dir(dir.path()));
    assert!(err.contains("config.json: missing field `vocab_size`"), "{err}");

    let err = error_of(bert::load_dir(&dir.path().join("nope")));
    assert!(err.ends_with("nope: no such model directory"), "{err}");
}

#[test]
fn pooling_modes_map_to_ops() {
    for (config, pooling) in [
        (r#"{"pooling_mode": "cls"}"#, "cls"),
        (r#"{"pooling_mode": ["max"]}"#, "max"),
        (r#"{"pooling_mode": "cls", "pooling_mode_mean_tokens": true}"#, "cls"),
        (r#"{"pooling_mode_cls_token": false, "pooling_mode_max_tokens": true}"#, "max"),
    ] {
        let dir = tiny("");
        std::fs::write(dir.path().join("1_Pooling/config.json"), config).unwrap();
        assert_eq!(bert::load_dir(dir.path()).unwrap().graph.metadata["pooling"], pooling, "{config}");
    }
}
