//! Checks the stored MobileNetV2 reference (`tests/reference/mobilenet_v2_logits.json`, made
//! by `tests/reference/make_mobilenet_reference.py`) against the photos and class names in
//! the repo, so that the parity test built on it compares against what it claims to.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tandem_models::vision::imagenet_classes;

#[derive(Deserialize)]
struct Reference {
    weights: String,
    images: Vec<ReferenceImage>,
}

#[derive(Deserialize)]
struct ReferenceImage {
    file: String,
    wheel_path: String,
    sha256: String,
    input: Input,
    top5: Vec<TopClass>,
    logits: Vec<f32>,
}

#[derive(Deserialize)]
struct Input {
    shape: Vec<usize>,
}

#[derive(Deserialize)]
struct TopClass {
    class: usize,
    name: String,
    logit: f32,
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference")
}

#[test]
fn the_logits_reference_matches_the_photos_and_class_names() {
    let path = reference_dir().join("mobilenet_v2_logits.json");
    assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20, "the reference should stay under 1 MB");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(reference.weights, tandem_models::vision::MOBILENET_V2_WEIGHTS_FILE);
    assert!(reference.images.len() >= 5);
    let classes = imagenet_classes();
    for image in &reference.images {
        let photo = std::fs::read(reference_dir().join(&image.file)).unwrap();
        assert_eq!(format!("{:x}", Sha256::digest(&photo)), image.sha256, "{}", image.file);
        assert!(
            image.wheel_path.starts_with("skimage/data/") || image.wheel_path.starts_with("sklearn/datasets/images/")
        );
        assert_eq!(image.input.shape, [3, 224, 224]);
        assert_eq!(image.logits.len(), 1000, "{}", image.file);
        // The top 5 are the 5 largest logits, best first, with torchvision's names.
        let mut order: Vec<usize> = (0..1000).collect();
        order.sort_by(|&a, &b| image.logits[b].total_cmp(&image.logits[a]));
        for (rank, top) in image.top5.iter().enumerate() {
            assert_eq!(top.name, classes[top.class], "{}", image.file);
            assert!((image.logits[top.class] - top.logit).abs() < 1e-4, "{}", image.file);
            assert!((image.logits[order[rank]] - top.logit).abs() < 1e-4, "{} rank {rank}", image.file);
        }
    }
}
