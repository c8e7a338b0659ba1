//! MobileNetV2 against torchvision on real photos: the whole path from the encoded file
//! (decode, Pillow's resize, crop, normalize) through the graph to the logits, on the CPU and
//! wgpu. The reference (`tests/reference/mobilenet_v2_logits.json`) is made by
//! `tests/reference/make_mobilenet_reference.py`; the weights are fetched through the
//! registry (the test skips, saying so, only when they cannot be fetched).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tandem_models::registry::known_model;
use tandem_models::vision::mobilenet::ImageClassifier;
use tandem_models::{BackendChoice, fetch};

#[derive(Deserialize)]
struct Reference {
    images: Vec<Image>,
}

#[derive(Deserialize)]
struct Image {
    file: String,
    top5: Vec<Top>,
    logits: Vec<f32>,
}

#[derive(Deserialize)]
struct Top {
    class: usize,
}

/// Largest logit difference allowed. The preprocessing is byte-exact for PNGs, so what is left
/// is f32 summation order over 52 convolutions; JPEG decoding differs from PIL's by a level
/// here and there (see models/src/vision/decode.rs), which moves logits a little more.
const PNG_TOLERANCE: f32 = 2e-3;
const JPEG_TOLERANCE: f32 = 0.1;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference")
}

fn weights() -> Option<PathBuf> {
    match known_model("mobilenetv2").and_then(fetch::ensure) {
        Ok(dir) => Some(dir),
        Err(e) => {
            eprintln!("skipped: cannot fetch mobilenetv2 ({e:#})");
            None
        }
    }
}

fn check(backend: BackendChoice, limit: usize) {
    let Some(dir) = weights() else { return };
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(reference_dir().join("mobilenet_v2_logits.json")).unwrap())
            .unwrap();
    assert!(reference.images.len() >= 6);
    let classifier = ImageClassifier::load(&dir, backend).unwrap();
    for image in reference.images.iter().take(limit) {
        let bytes = std::fs::read(reference_dir().join(&image.file)).unwrap();
        let logits = classifier.logits(&bytes).unwrap();
        let diff = logits.iter().zip(&image.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let top: Vec<usize> = classifier.top(&bytes, 5).unwrap().iter().map(|c| c.class).collect();
        let want: Vec<usize> = image.top5.iter().map(|t| t.class).collect();
        println!("{backend:?} {}: top-5 {top:?}, max |logit diff| {diff:.2e}", image.file);
        assert_eq!(top, want, "{}: top-5", image.file);
        let tolerance = if image.file.ends_with(".png") { PNG_TOLERANCE } else { JPEG_TOLERANCE };
        assert!(diff <= tolerance, "{}: max |logit diff| {diff:.2e} over {tolerance:.0e}", image.file);
    }
}

#[test]
fn mobilenet_v2_matches_torchvision_on_cpu() {
    check(BackendChoice::Cpu, usize::MAX);
}

/// Two photos: lavapipe runs the convolutions at a few hundred MFLOP/s.
#[test]
fn mobilenet_v2_matches_torchvision_on_wgpu() {
    check(BackendChoice::Wgpu, 2);
}

#[test]
fn bad_images_are_errors() {
    let Some(dir) = weights() else { return };
    let classifier = ImageClassifier::load(&dir, BackendChoice::Cpu).unwrap();
    for bad in [&b""[..], b"not an image", b"\x89PNG\r\n\x1a\n"] {
        assert!(classifier.top(bad, 5).is_err());
    }
}
