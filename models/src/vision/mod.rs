//! Vision models for product understanding: reading torchvision checkpoints and preparing
//! their weights for a runtime graph.
//!
//! - [`decode`]: PNG and JPEG photos as RGB bytes, as PIL opens and converts them.
//! - [`resize`] and [`preprocess`]: torchvision's ImageNet transform (Pillow's antialiased
//!   bilinear resize to the byte, center crop, normalization).
//! - [`batchnorm`]: folds batch norms into the convolutions before them.
//! - [`mobilenet`]: the MobileNetV2 graph and the image classifier around it.
//! - [`load_mobilenet_v2_folded`] (a folder), [`mobilenet_v2_folded_from_bytes`] (bytes) and
//!   [`host_tensors`]: the checkpoint as the tensors a runtime graph takes.

pub mod batchnorm;
pub mod categories;
pub mod decode;
pub mod mobilenet;
pub mod preprocess;
pub mod resize;

use anyhow::{Context, Result, anyhow};
use std::path::Path;
use tandem_runtime::HostTensor;
use tandem_runtime::tensor::TensorData;
use tandem_runtime::weights::torch::{self, StateDict, TensorValues};

pub use categories::product_category;

/// The MobileNetV2 checkpoint inside the `mobilenetv2` registry entry's folder.
pub const MOBILENET_V2_WEIGHTS_FILE: &str = "mobilenet_v2-b0353104.pth";

/// Reads the MobileNetV2 checkpoint of a fetched `mobilenetv2` folder with its batch norms
/// folded: `features.*` convolution weights (`[out, in / groups, kh, kw]`) and biases, and the
/// classifier (`classifier.1.weight` `[1000, 1280]`, `classifier.1.bias`).
pub fn load_mobilenet_v2_folded(dir: &Path) -> Result<StateDict> {
    let path = dir.join(MOBILENET_V2_WEIGHTS_FILE);
    fold_mobilenet_v2(&torch::load(&path)?, &path.display().to_string())
}

/// [`load_mobilenet_v2_folded`] from the checkpoint's bytes (a browser's download); `name`
/// names it in errors.
pub fn mobilenet_v2_folded_from_bytes(bytes: &[u8], name: &str) -> Result<StateDict> {
    let state = torch::parse(bytes, &torch::Limits::default())
        .with_context(|| format!("{name}: not a readable legacy torch checkpoint"))?;
    fold_mobilenet_v2(&state, name)
}

/// Folds the batch norms of a MobileNetV2 state dict into its convolutions; `name` names the
/// checkpoint in errors.
fn fold_mobilenet_v2(state: &StateDict, name: &str) -> Result<StateDict> {
    batchnorm::fold_batch_norms(state, batchnorm::BATCH_NORM_EPS).with_context(|| name.to_string())
}

/// The tensors of a state dict as runtime host tensors (`Weights::write` makes them a
/// safetensors file). Only f32 tensors convert: fold the batch norms first, which drops the
/// i64 `num_batches_tracked` counters.
pub fn host_tensors(state: &StateDict) -> Result<Vec<(String, HostTensor)>> {
    state
        .tensors
        .iter()
        .map(|t| {
            let TensorValues::F32(values) = &t.values else {
                return Err(anyhow!("tensor '{}' is not f32", t.name));
            };
            let tensor = HostTensor::new(t.shape.clone(), TensorData::F32(values.clone()))
                .map_err(|e| anyhow!("tensor '{}': {e}", t.name))?;
            Ok((t.name.clone(), tensor))
        })
        .collect()
}

/// The ImageNet-1k class names in the order of the classifier's 1000 outputs (torchvision's
/// `IMAGENET1K_V1` categories), one per line. Names repeat where ImageNet's do ("crane" the
/// bird and the machine).
const IMAGENET_CLASSES: &str = include_str!("imagenet_classes.txt");

pub fn imagenet_classes() -> Vec<&'static str> {
    IMAGENET_CLASSES.lines().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn there_are_1000_imagenet_classes() {
        let classes = super::imagenet_classes();
        assert_eq!(classes.len(), 1000);
        assert_eq!(
            (classes[0], classes[285], classes[967], classes[999]),
            ("tench", "Egyptian cat", "espresso", "toilet tissue")
        );
    }
}
