//! torchvision's ImageNet evaluation transform on a photo: `Resize(256)` (shorter side to 256,
//! Pillow's antialiased bilinear), `CenterCrop(224)`, `ToTensor` and `Normalize(mean, std)`.

use super::decode::{DecodeError, RgbImage, decode_rgb8};
use super::resize::resize_bilinear_window;

pub const RESIZE_SHORTER_SIDE: usize = 256;
pub const CROP_SIDE: usize = 224;
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// torchvision's `Resize(shorter)` output size: the shorter side becomes `shorter` and the
/// longer `int(shorter * long / short)`, truncated. (Python divides in floating point; the
/// integer quotient is the same, since `shorter * long` is exact and the quotient is at least
/// `1 / short` away from the next integer unless it is one.)
pub fn resized_size(width: usize, height: usize, shorter: usize) -> (usize, usize) {
    if width <= height { (shorter, shorter * height / width) } else { (shorter * width / height, shorter) }
}

/// torchvision's `CenterCrop` offset along one side: `int(round((size - crop) / 2.0))`, where
/// Python rounds halves to even (an odd margin of 117 gives 58, not 59).
pub fn center_crop_start(size: usize, crop: usize) -> usize {
    assert!(crop <= size, "a {crop} crop of {size} pixels needs padding");
    ((size - crop) as f64 / 2.0).round_ties_even() as usize
}

/// `Resize(shorter)` then `CenterCrop(crop)` on an RGB image, computing the crop's pixels only.
pub fn resize_and_center_crop(image: &RgbImage, shorter: usize, crop: usize) -> RgbImage {
    // With the shorter side at least the crop, torchvision's CenterCrop never pads.
    assert!(crop <= shorter, "crop {crop} larger than the resized shorter side {shorter}");
    let (width, height) = resized_size(image.width, image.height, shorter);
    let left = center_crop_start(width, crop);
    let top = center_crop_start(height, crop);
    resize_bilinear_window(image, width, height, left..left + crop, top..top + crop)
}

/// `ToTensor` then `Normalize(mean, std)`: a `[3, height, width]` (CHW) f32 tensor of
/// `(byte / 255 - mean) / std`, each step in f32 as torch computes it.
pub fn normalized_chw(image: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = image.width * image.height;
    let mut tensor = vec![0f32; 3 * plane];
    for (i, pixel) in image.pixels.chunks_exact(3).enumerate() {
        for channel in 0..3 {
            let unit = f32::from(pixel[channel]) / 255.0;
            tensor[channel * plane + i] = (unit - mean[channel]) / std[channel];
        }
    }
    tensor
}

/// A photo's bytes (PNG or JPEG) as MobileNetV2's input: `[3, 224, 224]` f32, CHW.
pub fn imagenet_input(bytes: &[u8]) -> Result<Vec<f32>, DecodeError> {
    let image = decode_rgb8(bytes)?;
    let crop = resize_and_center_crop(&image, RESIZE_SHORTER_SIDE, CROP_SIDE);
    Ok(normalized_chw(&crop, IMAGENET_MEAN, IMAGENET_STD))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_follows_torchvision() {
        assert_eq!(resized_size(512, 512, 256), (256, 256));
        assert_eq!(resized_size(451, 300, 256), (384, 256)); // 256 * 451 / 300 = 384.85
        assert_eq!(resized_size(300, 451, 256), (256, 384));
        assert_eq!(resized_size(1, 500, 256), (256, 128_000));
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        assert_eq!(center_crop_start(256, 224), 16);
        assert_eq!(center_crop_start(341, 224), 58); // 58.5
        assert_eq!(center_crop_start(343, 224), 60); // 59.5
        assert_eq!(center_crop_start(224, 224), 0);
    }

    #[test]
    fn normalizing_white_and_black() {
        let image = RgbImage::new(2, 1, vec![0, 0, 0, 255, 255, 255]);
        let tensor = normalized_chw(&image, IMAGENET_MEAN, IMAGENET_STD);
        assert_eq!(tensor.len(), 6);
        assert_eq!(tensor[0], (0.0 - 0.485) / 0.229);
        assert_eq!(tensor[5], (1.0 - 0.406) / 0.225);
    }
}
