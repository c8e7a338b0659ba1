//! Layer-wise gated visual adapters on SmolLM2 (docs/visual-adapters.md), against an
//! independent torch implementation of the same formula (tests/reference/
//! make_visual_adapter_reference.py → visual_adapter/: a seeded random adapter with non-zero
//! gates, grid 3 (overlapping pooling bins), rank 8, GELU, every layer; three photos × two
//! prompts; and visual_adapter_silu/: another seed, grid 2, rank 4, SiLU, layers 0, 3, 11
//! and 29). tandem must:
//! - on the exact CPU path, with all six sequences in one batch (each slot its own picture),
//!   give the reference's top-10 logits within 1e-3 after the prompt and at each of 12 greedy
//!   steps, and the reference's greedy tokens exactly, also through `Llm::generate`;
//! - with every gate 0, give the base decoder's logits bit for bit, picture or not; a slot
//!   without a picture, whatever the gates, too;
//! - refuse bad adapters with an error that names what is wrong;
//! - on wgpu, give the reference's tokens and logits within 1e-3 for a prefill and 3 steps.
//!
//! Without the GGUF or the MobileNetV2 checkpoint in the cache, a test says so and skips.

use std::path::{Path, PathBuf};
use tandem_models::fetch::cache_root;
use tandem_models::llm::visual::VisualAdapter;
use tandem_models::llm::{GenerateRequest, Llm};
use tandem_models::{BackendChoice, Device};
use tandem_runtime::HostTensor;
use tandem_runtime::backend::cpu::CpuOptions;
use tandem_runtime::graph::Weights;
use tandem_runtime::weights::torch::StateDict;

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    photo: String,
    prompt: Vec<u32>,
    first_top: Vec<(u32, f64)>,
    greedy: Vec<u32>,
    step_tops: Vec<Vec<(u32, f64)>>,
}

const TOLERANCE: f64 = 1e-3;
/// The same where the decoder keeps an f16 KV cache (wgpu): keys and values rounded to halves
/// (2⁻¹¹ relative) move logits of about 30 from the f32 reference (measured on lavapipe: 1.4e-3
/// at the prompt, 8.9e-3 at worst over the three steps after it).
#[cfg(feature = "wgpu")]
const F16_CACHE_TOLERANCE: f64 = 3e-2;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference")
}

fn adapter_dir() -> PathBuf {
    reference_dir().join("visual_adapter")
}

fn reference() -> Reference {
    reference_in(&adapter_dir())
}

fn reference_in(dir: &Path) -> Reference {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

/// The GGUF and the folded MobileNetV2 checkpoint from the cache, or None (saying so).
fn base_and_encoder() -> Option<(PathBuf, StateDict)> {
    let models = cache_root().unwrap().join("models");
    let gguf = models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let encoder = models.join("mobilenetv2");
    for path in [&gguf, &encoder.join(tandem_models::vision::MOBILENET_V2_WEIGHTS_FILE)] {
        if !path.is_file() {
            eprintln!(
                "skipped: {} is not in the cache (run `tandem fetch smollm2` and `tandem fetch mobilenetv2`)",
                path.display()
            );
            return None;
        }
    }
    Some((gguf, tandem_models::vision::load_mobilenet_v2_folded(&encoder).unwrap()))
}

fn exact_cpu() -> Device {
    Device::cpu_with(CpuOptions { quantized_activations: false, ..CpuOptions::default() })
}

fn photo(case: &Case) -> Vec<u8> {
    std::fs::read(reference_dir().join(&case.photo)).unwrap()
}

fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32
}

/// The largest difference at the reference's top ids, checked against `tolerance`.
fn check_top(what: &str, logits: &[f32], top: &[(u32, f64)], tolerance: f64) -> f64 {
    let mut worst = 0.0f64;
    for &(id, want) in top {
        let diff = (logits[id as usize] as f64 - want).abs();
        assert!(diff <= tolerance, "{what}: logit of {id} is {}, reference {want}", logits[id as usize]);
        worst = worst.max(diff);
    }
    worst
}

#[test]
fn adapter_matches_the_independent_reference_on_the_cpu() {
    let Some((gguf, encoder)) = base_and_encoder() else { return };
    check_on_the_cpu(&gguf, &encoder, &adapter_dir());
    // Another seed, grid 2, rank 4, SiLU, four of the 30 layers (`layers` in the config).
    check_on_the_cpu(&gguf, &encoder, &reference_dir().join("visual_adapter_silu"));
}

fn check_on_the_cpu(gguf: &Path, encoder: &StateDict, dir: &Path) {
    let adapter = VisualAdapter::load(dir).unwrap();
    let llm = Llm::load_with_adapter(gguf, &exact_cpu(), Some((&adapter, encoder))).unwrap();
    let cases = reference_in(dir).cases;
    let steps = cases[0].greedy.len();
    let capacity = cases.iter().map(|c| c.prompt.len()).max().unwrap() + steps + 1;
    let mut cache = llm.new_cache(cases.len(), capacity).unwrap();
    for (slot, case) in cases.iter().enumerate() {
        llm.show_picture(&mut cache, slot, &photo(case)).unwrap();
    }
    // One batched prefill of every prompt, then the reference's greedy tokens fed back.
    let mut feeds: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt.clone()).collect();
    let mut worst = 0.0f64;
    for step in 0..=steps {
        let logits = llm.feed_batch(&mut cache, &feeds).unwrap();
        for (s, (case, row)) in cases.iter().zip(&logits).enumerate() {
            let top = if step == 0 { &case.first_top } else { &case.step_tops[step - 1] };
            worst = worst.max(check_top(&format!("{} prompt {s}, step {step}", case.photo), row, top, TOLERANCE));
            if step < steps {
                assert_eq!(argmax(row), case.greedy[step], "{} prompt {s}, step {step}: greedy token", case.photo);
            }
        }
        feeds = cases.iter().map(|c| vec![c.greedy[step.min(steps - 1)]]).collect();
    }
    println!(
        "{}: {} sequences, prefill and {steps} greedy steps: the reference's tokens, logits within {worst:.2e}",
        dir.file_name().unwrap().to_string_lossy(),
        cases.len()
    );

    // The generation loop over one sequence with its picture: the same greedy text.
    let case = &cases[1];
    let mut seq = llm.new_sequence(capacity).unwrap();
    llm.show_picture(&mut seq, 0, &photo(case)).unwrap();
    let request = GenerateRequest {
        prompt_ids: case.prompt.clone(),
        max_tokens: steps,
        sampling: Default::default(),
        ignore_eos: true,
        top_logits: 0,
    };
    let generation = llm.generate(&mut seq, &request, &mut |_| Ok(())).unwrap();
    assert_eq!(generation.ids, case.greedy);

    // The pictures matter: two photos, same prompt, other logits.
    let (a, b) = (&cases[0].first_top, &cases[2].first_top);
    assert!(a.iter().zip(b).any(|(x, y)| x.0 != y.0 || (x.1 - y.1).abs() > 0.1), "the photos change nothing");
}

/// The adapter's files with its tensors edited by `edit` (and its config by `config`), in a
/// temporary folder.
fn edited_adapter(
    edit: impl FnOnce(&mut Vec<(String, HostTensor)>),
    config: impl FnOnce(&mut serde_json::Value),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let weights = Weights::open(&adapter_dir().join("adapter.safetensors")).unwrap();
    let mut tensors: Vec<(String, HostTensor)> =
        weights.names().iter().map(|n| (n.clone(), weights.tensor(n, tandem_runtime::DType::F32).unwrap())).collect();
    edit(&mut tensors);
    Weights::write(&dir.path().join("adapter.safetensors"), &tensors).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter_dir().join("adapter_config.json")).unwrap()).unwrap();
    config(&mut json);
    std::fs::write(dir.path().join("adapter_config.json"), json.to_string()).unwrap();
    dir
}

#[test]
fn zero_gates_give_the_base_decoder_bit_for_bit() {
    let Some((gguf, encoder)) = base_and_encoder() else { return };
    let device = exact_cpu();
    let base = Llm::load(&gguf, &device).unwrap();
    let zero = edited_adapter(
        |tensors| {
            for (name, t) in tensors.iter_mut() {
                if name.ends_with(".gate") {
                    *t = HostTensor::f32(t.shape.clone(), vec![0.0; t.len()]).unwrap();
                }
            }
        },
        |_| {},
    );
    let zero = VisualAdapter::load(zero.path()).unwrap();
    let with_zero_gates = Llm::load_with_adapter(&gguf, &device, Some((&zero, &encoder))).unwrap();
    let adapter = VisualAdapter::load(&adapter_dir()).unwrap();
    let adapted = Llm::load_with_adapter(&gguf, &device, Some((&adapter, &encoder))).unwrap();
    let case = &reference().cases[0];
    let run = |llm: &Llm, picture: bool| {
        let mut seq = llm.new_sequence(64).unwrap();
        if picture {
            llm.show_picture(&mut seq, 0, &photo(case)).unwrap();
        }
        let first = llm.feed(&mut seq, &case.prompt).unwrap();
        let next = llm.feed(&mut seq, &[argmax(&first)]).unwrap();
        [first, next].concat()
    };
    let want = run(&base, false);
    let same = |got: Vec<f32>| got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same(run(&with_zero_gates, true)), "gates of 0 with a picture changed the base decoder's logits");
    assert!(same(run(&with_zero_gates, false)), "gates of 0 without a picture changed the logits");
    assert!(same(run(&adapted, false)), "a sequence without a picture changed the logits");
    assert!(!same(run(&adapted, true)), "the picture changed nothing");
}

#[test]
fn bad_adapters_are_refused_naming_what_is_wrong() {
    let Some((gguf, encoder)) = base_and_encoder() else { return };
    let device = Device::open_blocking(BackendChoice::Cpu).unwrap();
    let load = |dir: &Path| -> String {
        match VisualAdapter::load(dir).and_then(|a| Llm::load_with_adapter(&gguf, &device, Some((&a, &encoder)))) {
            Ok(_) => String::new(),
            Err(e) => format!("{e:#}"),
        }
    };
    let rename = |from: &'static str, to: &'static str| {
        move |t: &mut Vec<(String, HostTensor)>| {
            t.iter_mut().filter(|(n, _)| n == from).for_each(|(n, _)| *n = to.into());
        }
    };
    let cases: Vec<(tempfile::TempDir, &str)> = vec![
        (edited_adapter(|_| {}, |c| c["base_sha256"] = "00ff".into()), "has sha256"),
        (
            edited_adapter(|t| t.retain(|(n, _)| n != "layers.7.adapter.up.bias"), |_| {}),
            "'layers.7.adapter.up.bias' is missing",
        ),
        (edited_adapter(rename("visual.proj.bias", "visual.projection.bias"), |_| {}), "'visual.proj.bias' is missing"),
        (
            edited_adapter(
                |t| {
                    let i = t.iter().position(|(n, _)| n == "layers.3.adapter.down.weight").unwrap();
                    t[i].1 = HostTensor::f32(vec![8, 512], vec![0.0; 8 * 512]).unwrap();
                },
                |_| {},
            ),
            "'layers.3.adapter.down.weight' is [8, 512], but this decoder",
        ),
        (edited_adapter(|_| {}, |c| c["rank"] = 4.into()), "'layers.0.adapter.down.weight' is [8, 576]"),
        (edited_adapter(|_| {}, |c| c["rank"] = 0.into()), "rank 0"),
        (edited_adapter(|_| {}, |c| c["act"] = "swish".into()), "act 'swish'"),
        (edited_adapter(|_| {}, |c| c["layers"] = serde_json::json!([0, 30])), "layer 30 is past"),
        (
            edited_adapter(|_| {}, |c| c["layers"] = serde_json::json!([0, 1])),
            "is not part of an adapter for these layers ([0, 1])",
        ),
        (edited_adapter(|_| {}, |c| c["encoder"] = "clip".into()), "encoder 'clip'"),
    ];
    for (dir, says) in &cases {
        let err = load(dir.path());
        assert!(err.contains(says), "expected an error with {says:?}, got {err:?}");
    }
    let missing = tempfile::tempdir().unwrap();
    assert!(load(missing.path()).contains("reading adapter_config.json"));
    // A model without an adapter cannot be shown a picture.
    let base = Llm::load(&gguf, &device).unwrap();
    let mut seq = base.new_sequence(8).unwrap();
    let err = base.show_picture(&mut seq, 0, &photo(&reference().cases[0])).unwrap_err().to_string();
    assert!(err.contains("no visual adapter"), "{err}");
}

#[cfg(feature = "wgpu")]
#[test]
fn adapter_on_wgpu_matches_the_reference() {
    let Some((gguf, encoder)) = base_and_encoder() else { return };
    let device = match Device::open_blocking(BackendChoice::Wgpu) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no wgpu adapter ({e:#})");
            return;
        }
    };
    println!("wgpu on {}", device.description());
    let adapter = VisualAdapter::load(&adapter_dir()).unwrap();
    let llm = Llm::load_with_adapter(&gguf, &device, Some((&adapter, &encoder))).unwrap();
    assert_eq!(llm.kv_cache_dtype(), tandem_runtime::DType::F16, "wgpu keeps an f16 KV cache");
    let case = &reference().cases[0];
    let mut seq = llm.new_sequence(case.prompt.len() + 4).unwrap();
    llm.show_picture(&mut seq, 0, &photo(case)).unwrap();
    let mut tokens = case.prompt.clone();
    let mut worst = 0.0f64;
    for step in 0..=3 {
        let logits = llm.feed(&mut seq, &tokens).unwrap();
        let top = if step == 0 { &case.first_top } else { &case.step_tops[step - 1] };
        worst = worst.max(check_top(&format!("wgpu step {step}"), &logits, top, F16_CACHE_TOLERANCE));
        assert_eq!(argmax(&logits), case.greedy[step], "wgpu step {step}: greedy token");
        tokens = vec![case.greedy[step]];
    }
    println!(
        "wgpu (f16 KV cache): prefill and 3 greedy steps with the picture: the reference's tokens, logits within {worst:.2e}"
    );
}
