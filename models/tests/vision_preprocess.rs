//! Decoding and preprocessing photos as PIL and torchvision do, against the references in
//! `tests/reference/`: `mobilenet_v2_logits.json` (made by `make_mobilenet_reference.py`: the
//! resized and cropped bytes and the normalized input of each photo) and
//! `decode_reference.json` (made by `make_decode_reference.py`: PIL's decoding of the JPEG
//! photo and of a PNG in every colour type and bit depth).

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tandem_models::vision::decode::{RgbImage, decode_rgb8};
use tandem_models::vision::preprocess::{
    CROP_SIDE, IMAGENET_MEAN, IMAGENET_STD, RESIZE_SHORTER_SIDE, imagenet_input, normalized_chw, resize_and_center_crop,
};

#[derive(Deserialize)]
struct Reference {
    images: Vec<ReferenceImage>,
}

#[derive(Deserialize)]
struct ReferenceImage {
    file: String,
    original_size_wh: [usize; 2],
    crop_uint8: Crop,
    input: Input,
}

#[derive(Deserialize)]
struct Crop {
    sha256: String,
    sum: u64,
    pixels: Vec<Pixel>,
}

#[derive(Deserialize)]
struct Pixel {
    row: usize,
    col: usize,
    rgb: [u8; 3],
}

#[derive(Deserialize)]
struct Input {
    sum: f64,
    abs_sum: f64,
    first: Vec<f32>,
    last: Vec<f32>,
}

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference")
}

fn reference() -> Reference {
    let path = reference_dir().join("mobilenet_v2_logits.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[derive(Deserialize)]
struct DecodeReference {
    jpegs: Vec<DecodedJpeg>,
    pngs: Vec<PngFormat>,
    thin: Vec<ThinPng>,
}

#[derive(Deserialize)]
struct ThinPng {
    file: String,
    crop_sha256: String,
}

#[derive(Deserialize)]
struct DecodedJpeg {
    file: String,
    decoded_png: String,
    rgb_sha256: String,
}

#[derive(Deserialize)]
struct PngFormat {
    file: String,
    pil_mode: String,
    rgb_hex: String,
}

fn decode_reference() -> DecodeReference {
    let path = reference_dir().join("decode_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read_rgb(file: &str) -> RgbImage {
    decode_rgb8(&std::fs::read(reference_dir().join(file)).unwrap()).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn is_jpeg(file: &str) -> bool {
    file.ends_with(".jpg") || file.ends_with(".jpeg")
}

/// How far the `image` crate's JPEG decoder (zune-jpeg) lands from PIL's (libjpeg-turbo): on
/// rocket.jpg (640x427, 4:4:4, so no chroma upsampling: the IDCT and colour conversion
/// differ), 99.3% of the decoded bytes are equal, 0.6% off by 1 and 0.1% by 2; after the
/// resize and crop, 99.3% equal, 1041 bytes off by 1 and one by 2.
const JPEG_MAX_ABS_DIFF: u8 = 2;

fn max_abs_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.pixels.iter().zip(&b.pixels).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn png_photos_resize_and_crop_to_pils_bytes() {
    let reference = reference();
    let pngs: Vec<_> = reference.images.iter().filter(|i| !is_jpeg(&i.file)).collect();
    assert_eq!(pngs.len(), 5);
    for image in pngs {
        let decoded = read_rgb(&image.file);
        assert_eq!([decoded.width, decoded.height], image.original_size_wh, "{}", image.file);
        let crop = resize_and_center_crop(&decoded, RESIZE_SHORTER_SIDE, CROP_SIDE);
        assert_eq!((crop.width, crop.height), (224, 224));
        let sum: u64 = crop.pixels.iter().map(|&v| u64::from(v)).sum();
        assert_eq!(sum, image.crop_uint8.sum, "{}", image.file);
        for p in &image.crop_uint8.pixels {
            assert_eq!(crop.pixel(p.col, p.row), p.rgb, "{} at row {} column {}", image.file, p.row, p.col);
        }
        assert_eq!(sha256_hex(&crop.pixels), image.crop_uint8.sha256, "{}", image.file);
    }
}

#[test]
fn pils_decoding_of_the_jpeg_resizes_and_crops_to_pils_bytes() {
    // The resize is exact on the JPEG photo too, given PIL's decoded pixels.
    let reference = reference();
    for jpeg in decode_reference().jpegs {
        let pil_decoded = read_rgb(&jpeg.decoded_png);
        assert_eq!(sha256_hex(&pil_decoded.pixels), jpeg.rgb_sha256, "{}", jpeg.decoded_png);
        let image = reference.images.iter().find(|i| i.file == jpeg.file).unwrap();
        let crop = resize_and_center_crop(&pil_decoded, RESIZE_SHORTER_SIDE, CROP_SIDE);
        assert_eq!(sha256_hex(&crop.pixels), image.crop_uint8.sha256, "{}", jpeg.file);
        assert_input_matches(&normalized_chw(&crop, IMAGENET_MEAN, IMAGENET_STD), &image.input, &jpeg.file);
    }
}

#[test]
fn jpeg_decoding_stays_within_two_levels_of_pil() {
    let reference = reference();
    let jpegs = decode_reference().jpegs;
    assert!(!jpegs.is_empty());
    for jpeg in jpegs {
        let ours = read_rgb(&jpeg.file);
        let pil = read_rgb(&jpeg.decoded_png);
        assert!(max_abs_diff(&ours, &pil) <= JPEG_MAX_ABS_DIFF, "{}", jpeg.file);
        let ours_crop = resize_and_center_crop(&ours, RESIZE_SHORTER_SIDE, CROP_SIDE);
        let pil_crop = resize_and_center_crop(&pil, RESIZE_SHORTER_SIDE, CROP_SIDE);
        assert!(max_abs_diff(&ours_crop, &pil_crop) <= JPEG_MAX_ABS_DIFF, "{}", jpeg.file);
        // So each input value is within 2 / 255 / std (0.035) of torchvision's.
        let image = reference.images.iter().find(|i| i.file == jpeg.file).unwrap();
        let input = normalized_chw(&ours_crop, IMAGENET_MEAN, IMAGENET_STD);
        let bound = f32::from(JPEG_MAX_ABS_DIFF) / 255.0 / 0.224 + 1e-5;
        for (ours, theirs) in input[..8].iter().zip(&image.input.first) {
            assert!((ours - theirs).abs() <= bound, "{}: {ours} vs {theirs}", jpeg.file);
        }
    }
}

fn assert_input_matches(input: &[f32], expected: &Input, file: &str) {
    assert_eq!(input.len(), 3 * 224 * 224);
    let sum: f64 = input.iter().map(|&v| f64::from(v)).sum();
    let abs_sum: f64 = input.iter().map(|&v| f64::from(v).abs()).sum();
    // The sums are over 150528 values; torch adds them in another order.
    assert!((sum - expected.sum).abs() <= 1e-5 * expected.abs_sum.max(1.0), "{file}: sum {sum} vs {}", expected.sum);
    assert!((abs_sum - expected.abs_sum).abs() <= 1e-5 * expected.abs_sum, "{file}: abs sum {abs_sum}");
    let last = &input[3 * 224 * 224 - 8..];
    for (ours, theirs) in input[..8].iter().zip(&expected.first).chain(last.iter().zip(&expected.last)) {
        assert!((ours - theirs).abs() <= 1e-5, "{file}: {ours} vs {theirs}");
    }
}

#[test]
fn png_photos_become_torchvisions_input() {
    for image in reference().images.iter().filter(|i| !is_jpeg(&i.file)) {
        let input = imagenet_input(&std::fs::read(reference_dir().join(&image.file)).unwrap()).unwrap();
        assert_input_matches(&input, &image.input, &image.file);
    }
}

#[test]
fn every_png_colour_type_converts_to_rgb_as_pil_does() {
    let pngs = decode_reference().pngs;
    assert_eq!(pngs.len(), 21);
    for png in pngs {
        let decoded = read_rgb(&png.file);
        assert_eq!((decoded.width, decoded.height), (7, 5), "{}", png.file);
        let hex: String = decoded.pixels.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, png.rgb_hex, "{} (PIL mode {})", png.file, png.pil_mode);
    }
}

#[test]
fn thin_and_single_pixel_images_resize_and_crop_to_pils_bytes() {
    // A 1x500 image becomes 256x128000 before the crop: only the crop is computed.
    let thin = decode_reference().thin;
    assert_eq!(thin.len(), 5);
    for png in thin {
        let crop = resize_and_center_crop(&read_rgb(&png.file), RESIZE_SHORTER_SIDE, CROP_SIDE);
        assert_eq!((crop.width, crop.height), (224, 224), "{}", png.file);
        assert_eq!(sha256_hex(&crop.pixels), png.crop_sha256, "{}", png.file);
    }
}
