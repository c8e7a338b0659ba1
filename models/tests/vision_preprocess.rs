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

/// How far the `image` crate's JPEG decoder (zune-jpeg) may land from PIL's (libjpeg-turbo), in
/// levels of a byte, per JPEG of `decode_reference.json`: the IDCT and colour conversion round
/// differently, and 4:2:0 chroma upsampling adds to it. Measured on the decoded image, then on
/// the 224x224 crop:
/// - rocket.jpg (4:4:4): 99.3% of bytes equal, 5042 off by 1, 824 by 2; crop 99.3% equal,
///   1041 off by 1, one by 2.
/// - chelsea_420.jpg (4:2:0, quality 90): 87.4% equal, max 4 (3 bytes); crop 79.5% equal,
///   27367 off by 1, 3480 by 2, 5 by 3, one by 4.
const JPEG_MAX_ABS_DIFF: [(&str, u8); 2] = [("images/rocket.jpg", 2), ("encoded/chelsea_420.jpg", 4)];

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
fn pils_decoding_of_the_jpeg_photo_resizes_and_crops_to_pils_bytes() {
    // The resize is exact on the JPEG photo too, given PIL's decoded pixels.
    let reference = reference();
    let jpeg = decode_reference().jpegs.into_iter().find(|j| j.file == "images/rocket.jpg").unwrap();
    let pil_decoded = read_rgb(&jpeg.decoded_png);
    assert_eq!(sha256_hex(&pil_decoded.pixels), jpeg.rgb_sha256);
    let image = reference.images.iter().find(|i| i.file == jpeg.file).unwrap();
    let crop = resize_and_center_crop(&pil_decoded, RESIZE_SHORTER_SIDE, CROP_SIDE);
    assert_eq!(sha256_hex(&crop.pixels), image.crop_uint8.sha256);
    assert_input_matches(&normalized_chw(&crop, IMAGENET_MEAN, IMAGENET_STD), &image.input, &jpeg.file);
}

#[test]
fn jpeg_decoding_stays_within_a_few_levels_of_pil() {
    let jpegs = decode_reference().jpegs;
    let files: Vec<&str> = jpegs.iter().map(|j| j.file.as_str()).collect();
    assert_eq!(files, JPEG_MAX_ABS_DIFF.map(|(file, _)| file));
    for (jpeg, (_, bound)) in jpegs.iter().zip(JPEG_MAX_ABS_DIFF) {
        let ours = read_rgb(&jpeg.file);
        let pil = read_rgb(&jpeg.decoded_png);
        assert_eq!(sha256_hex(&pil.pixels), jpeg.rgb_sha256, "{}", jpeg.decoded_png);
        assert!(max_abs_diff(&ours, &pil) <= bound, "{}", jpeg.file);
        // PIL's crop is the exact resize of PIL's decoding (checked above on the photo).
        let ours_crop = resize_and_center_crop(&ours, RESIZE_SHORTER_SIDE, CROP_SIDE);
        let pil_crop = resize_and_center_crop(&pil, RESIZE_SHORTER_SIDE, CROP_SIDE);
        assert!(max_abs_diff(&ours_crop, &pil_crop) <= bound, "{}", jpeg.file);
        // So each input value is within bound / 255 / std (0.07 for 4 levels) of torchvision's.
        let ours_input = normalized_chw(&ours_crop, IMAGENET_MEAN, IMAGENET_STD);
        let pil_input = normalized_chw(&pil_crop, IMAGENET_MEAN, IMAGENET_STD);
        let input_bound = f32::from(bound) / 255.0 / IMAGENET_STD[1] + 1e-5;
        for (ours, theirs) in ours_input.iter().zip(&pil_input) {
            assert!((ours - theirs).abs() <= input_bound, "{}: {ours} vs {theirs}", jpeg.file);
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
