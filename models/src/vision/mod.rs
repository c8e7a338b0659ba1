//! Vision models for product understanding: reading torchvision checkpoints and preparing
//! their weights for a runtime graph.
//!
//! - [`torch_legacy`]: a bounded reader of the legacy (non-zip) `torch.save` format.
//! - [`batchnorm`]: folds batch norms into the convolutions before them.

pub mod batchnorm;
pub mod torch_legacy;

/// The MobileNetV2 checkpoint inside the `mobilenetv2` registry entry's folder.
pub const MOBILENET_V2_WEIGHTS_FILE: &str = "mobilenet_v2-b0353104.pth";
