//! Vision models for product understanding: reading torchvision checkpoints and preparing
//! their weights for a runtime graph.
//!
//! - [`torch_legacy`]: a bounded reader of the legacy (non-zip) `torch.save` format.
//! - [`batchnorm`]: folds batch norms into the convolutions before them.

pub mod batchnorm;
pub mod torch_legacy;

/// The MobileNetV2 checkpoint inside the `mobilenetv2` registry entry's folder.
pub const MOBILENET_V2_WEIGHTS_FILE: &str = "mobilenet_v2-b0353104.pth";

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
