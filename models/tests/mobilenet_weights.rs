//! The legacy torch checkpoint reader and batch-norm folding against torch, on torchvision's
//! real MobileNetV2 checkpoint and on small synthetic convolutions.
//!
//! The reference (`tests/reference/mobilenet_v2_weights.json`) is made by
//! `tests/reference/make_mobilenet_weights_reference.py` from the same file. The tests on the
//! real checkpoint fetch it through the registry (`tandem fetch mobilenetv2`) and skip, saying
//! so, only when it cannot be fetched.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tandem_models::fetch;
use tandem_models::registry::known_model;
use tandem_models::vision::batchnorm::{BATCH_NORM_EPS, BatchNorm, fold_batch_norms, fold_into_conv};
use tandem_models::vision::{MOBILENET_V2_WEIGHTS_FILE, host_tensors, load_mobilenet_v2_folded};
use tandem_runtime::graph::Weights;
use tandem_runtime::tensor::{DType, TensorData as RuntimeData};
use tandem_runtime::weights::torch::{self, StateDict, TensorValues};

#[derive(Deserialize)]
struct Reference {
    file: String,
    tensor_count: usize,
    tensors: Vec<ReferenceTensor>,
    samples: HashMap<String, Sample>,
    folded: HashMap<String, FoldedSample>,
    synthetic_folds: Vec<SyntheticFold>,
}

#[derive(Deserialize)]
struct ReferenceTensor {
    name: String,
    shape: Vec<usize>,
    dtype: String,
}

#[derive(Deserialize)]
struct Sample {
    first: Vec<f32>,
    middle_index: usize,
    middle: f32,
    sum: f64,
}

#[derive(Deserialize)]
struct FoldedSample {
    weight: Sample,
    bias: Sample,
}

#[derive(Deserialize)]
struct SyntheticFold {
    name: String,
    conv_weight: Vec<f32>,
    conv_bias: Option<Vec<f32>>,
    bn_weight: Vec<f32>,
    bn_bias: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    folded_weight: Vec<f32>,
    folded_bias: Vec<f32>,
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/mobilenet_v2_weights.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The real checkpoint, fetched once for all tests of this file; `None` (with the reason
/// printed) when it cannot be fetched, e.g. offline.
fn checkpoint() -> Option<&'static StateDict> {
    static STATE: OnceLock<Option<StateDict>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let path = match fetched_checkpoint() {
                Ok(path) => path,
                Err(e) => {
                    eprintln!("skipped: cannot fetch mobilenetv2 ({e:#})");
                    return None;
                }
            };
            Some(torch::load(&path).unwrap())
        })
        .as_ref()
}

fn fetched_checkpoint() -> anyhow::Result<PathBuf> {
    let dir = fetch::ensure(known_model("mobilenetv2")?)?;
    Ok(dir.join(MOBILENET_V2_WEIGHTS_FILE))
}

/// f32 results of the same formula computed in another precision: tandem folds in f64, torch
/// in f32, where `beta - mean * scale` loses digits to cancellation (hence the absolute part).
fn assert_close(what: &str, got: f32, expected: f32) {
    let tolerance = 1e-6 + 2e-6 * expected.abs();
    assert!((got - expected).abs() <= tolerance, "{what}: got {got}, torch {expected}");
}

fn check_sample(what: &str, values: &[f32], sample: &Sample, exact: bool) {
    let pairs = values.iter().zip(&sample.first).chain([(&values[sample.middle_index], &sample.middle)]);
    for (i, (&got, &expected)) in pairs.enumerate() {
        if exact {
            assert_eq!(got, expected, "{what} sample {i}");
        } else {
            assert_close(&format!("{what} sample {i}"), got, expected);
        }
    }
    let sum: f64 = values.iter().map(|&v| v as f64).sum();
    assert!((sum - sample.sum).abs() <= 1e-5 * sample.sum.abs().max(1.0), "{what}: sum {sum}, torch {}", sample.sum);
}

#[test]
fn reads_the_real_checkpoint_like_torch() {
    let Some(state) = checkpoint() else { return };
    let reference = reference();
    assert_eq!(reference.file, MOBILENET_V2_WEIGHTS_FILE);
    assert_eq!(state.tensors.len(), reference.tensor_count);
    for (tensor, expected) in state.tensors.iter().zip(&reference.tensors) {
        assert_eq!((&tensor.name, &tensor.shape), (&expected.name, &expected.shape));
        let dtype = match tensor.values {
            TensorValues::F32(_) => "float32",
            TensorValues::I64(_) => "int64",
        };
        assert_eq!(dtype, expected.dtype, "{}", tensor.name);
    }
    assert_eq!(state.f32("features.0.0.weight").unwrap().0, [32, 3, 3, 3]);
    assert_eq!(state.f32("features.1.conv.0.0.weight").unwrap().0, [32, 1, 3, 3]);
    assert_eq!(state.f32("classifier.1.weight").unwrap().0, [1000, 1280]);
    assert_eq!(state.f32("classifier.1.bias").unwrap().0, [1000]);
    for (name, sample) in &reference.samples {
        // Read from the same bytes: equal to the last bit.
        check_sample(name, state.f32(name).unwrap().1, sample, true);
    }
}

#[test]
fn folds_the_real_batch_norms_like_torch() {
    let Some(state) = checkpoint() else { return };
    let folded = fold_batch_norms(state, BATCH_NORM_EPS).unwrap();
    // 52 convolutions, each with a folded weight and bias, and the classifier's two.
    assert_eq!(folded.tensors.len(), 52 * 2 + 2);
    assert!(folded.tensors.iter().all(|t| t.f32().is_some() && !t.name.contains("running_")));
    assert_eq!(folded.f32("features.0.0.bias").unwrap().0, [32]);
    assert_eq!(folded.f32("classifier.1.weight").unwrap(), state.f32("classifier.1.weight").unwrap());
    for (conv, sample) in &reference().folded {
        check_sample(
            &format!("{conv}.weight"),
            folded.f32(&format!("{conv}.weight")).unwrap().1,
            &sample.weight,
            false,
        );
        check_sample(&format!("{conv}.bias"), folded.f32(&format!("{conv}.bias")).unwrap().1, &sample.bias, false);
    }
}

#[test]
fn folding_matches_torch_on_synthetic_convolutions() {
    let reference = reference();
    assert_eq!(reference.synthetic_folds.len(), 3);
    for case in &reference.synthetic_folds {
        let bn = BatchNorm {
            weight: &case.bn_weight,
            bias: &case.bn_bias,
            running_mean: &case.running_mean,
            running_var: &case.running_var,
            eps: BATCH_NORM_EPS,
        };
        let (weight, bias) = fold_into_conv(&case.conv_weight, case.conv_bias.as_deref(), &bn).unwrap();
        assert_eq!((weight.len(), bias.len()), (case.folded_weight.len(), case.folded_bias.len()), "{}", case.name);
        for (i, (&got, &expected)) in weight.iter().zip(&case.folded_weight).enumerate() {
            assert_close(&format!("{} weight {i}", case.name), got, expected);
        }
        for (i, (&got, &expected)) in bias.iter().zip(&case.folded_bias).enumerate() {
            assert_close(&format!("{} bias {i}", case.name), got, expected);
        }
    }
}

#[test]
fn folded_weights_round_trip_through_a_safetensors_file() {
    let Some(state) = checkpoint() else { return };
    let dir = fetched_checkpoint().unwrap().parent().unwrap().to_path_buf();
    let folded = load_mobilenet_v2_folded(&dir).unwrap();
    assert_eq!(folded.tensors, fold_batch_norms(state, BATCH_NORM_EPS).unwrap().tensors);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mobilenet_v2.safetensors");
    Weights::write(&path, &host_tensors(&folded).unwrap()).unwrap();
    let weights = Weights::open(&path).unwrap();
    assert_eq!(weights.names().len(), folded.tensors.len());
    let conv = weights.tensor("features.0.0.weight", DType::F32).unwrap();
    assert_eq!(conv.shape, [32, 3, 3, 3]);
    assert_eq!(conv.data, RuntimeData::F32(folded.f32("features.0.0.weight").unwrap().1.to_vec()));
    // The i64 counters must be folded away first.
    assert!(host_tensors(state).unwrap_err().to_string().contains("num_batches_tracked' is not f32"));
}
