//! Pillow's antialiased bilinear resize (`Image.resize(size, Image.BILINEAR)`), reproduced to
//! the byte: torchvision's `Resize` calls it on PIL images, and a model's accuracy figures
//! assume its exact output.
//!
//! Pillow resamples each axis with a triangle filter whose support grows with the downscale
//! factor (so shrinking averages every input pixel instead of skipping some), weights in
//! 22-bit fixed point, horizontal pass first with the intermediate rounded to bytes.

use super::decode::RgbImage;
use std::ops::Range;

/// Fixed-point fraction bits of the weights: 32 bits less 8 for the sample and 2 of headroom
/// (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 22;

/// The taps of a run of output pixels along one axis: for each, the first input index and
/// `taps_per_output` fixed-point weights (zero past the input pixels it reads).
struct AxisTaps {
    first_input: Vec<usize>,
    taps_per_output: usize,
    weights: Vec<i32>,
}

impl AxisTaps {
    /// Pillow's coefficients for output pixels `outputs` of an `in_size` to `out_size` resize.
    /// Each output pixel's taps depend only on its own index, so a crop of the output needs
    /// only its own pixels' taps, with the bytes a full resize would give.
    fn bilinear(in_size: usize, out_size: usize, outputs: Range<usize>) -> Self {
        let scale = in_size as f64 / out_size as f64;
        // Upscaling interpolates between neighbours; downscaling widens the triangle to cover
        // every input pixel that falls within the output pixel's footprint.
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the triangle's support is 1 input pixel before scaling
        let taps_per_output = support.ceil() as usize * 2 + 1;
        // Multiplying by the reciprocal, not dividing, rounds as Pillow does.
        let inverse_scale = 1.0 / filter_scale;
        let mut first_input = Vec::with_capacity(outputs.len());
        let mut weights = vec![0; outputs.len() * taps_per_output];
        for (row, out) in weights.chunks_exact_mut(taps_per_output).zip(outputs) {
            let center = (out as f64 + 0.5) * scale;
            // `as` truncates toward zero like C's `(int)`, which is how Pillow rounds here.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let unnormalized: Vec<f64> =
                (start..end).map(|x| triangle((x as f64 - center + 0.5) * inverse_scale)).collect();
            // Summed in order, as Pillow does, so that the normalized weights round alike.
            let total: f64 = unnormalized.iter().sum();
            for (fixed, w) in row.iter_mut().zip(&unnormalized) {
                let w = if total != 0.0 { w / total } else { *w };
                *fixed = to_fixed_point(w);
            }
            first_input.push(start);
        }
        Self { first_input, taps_per_output, weights }
    }

    /// The first input index and the weights of the `nth` output of the run.
    fn taps(&self, nth: usize) -> (usize, &[i32]) {
        let at = nth * self.taps_per_output;
        (self.first_input[nth], &self.weights[at..at + self.taps_per_output])
    }

    /// The input indices the outputs read: from the first tap of the first output to the last
    /// tap of the last (weights past an edge are zero and read nothing).
    fn input_span(&self, in_size: usize) -> Range<usize> {
        let first = self.first_input.first().copied().unwrap_or(0);
        let last = self.first_input.last().map_or(0, |&s| (s + self.taps_per_output).min(in_size));
        first..last.max(first)
    }
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// A weight in fixed point, rounded half away from zero (adding ±0.5, then truncating) as
/// Pillow's `normalize_coeffs_8bpc` does.
fn to_fixed_point(weight: f64) -> i32 {
    let scaled = weight * f64::from(1u32 << PRECISION_BITS);
    (if scaled < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
}

/// A weighted sum of bytes in fixed point, rounded and clamped to a byte (Pillow's `clip8`).
fn weighted_byte(samples: impl Iterator<Item = u8>, weights: &[i32]) -> u8 {
    let rounding = 1i32 << (PRECISION_BITS - 1);
    let sum = samples.zip(weights).fold(rounding, |acc, (v, &w)| acc + i32::from(v) * w);
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `image` to `width` x `height` with Pillow's antialiased bilinear filter.
pub fn resize_bilinear(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    resize_bilinear_window(image, width, height, 0..width, 0..height)
}

/// The `columns` x `rows` window of [`resize_bilinear`]'s `width` x `height` output, computed
/// without the rest: resizing a photo's shorter side to 256 and cropping 224 needs the crop
/// only, and a very thin photo's resized long side can be millions of pixels.
pub fn resize_bilinear_window(
    image: &RgbImage,
    width: usize,
    height: usize,
    columns: Range<usize>,
    rows: Range<usize>,
) -> RgbImage {
    assert!(image.width > 0 && image.height > 0, "resizing an empty image");
    assert!(columns.end <= width && rows.end <= height, "window outside the {width}x{height} output");
    let horizontal = AxisTaps::bilinear(image.width, width, columns.clone());
    let vertical = AxisTaps::bilinear(image.height, height, rows.clone());
    // Pillow skips a pass whose size does not change; the filter is then the identity (one
    // tap of weight 1 on the pixel itself), so applying it gives the same bytes.
    let source_rows = vertical.input_span(image.height);

    // Horizontal pass over the source rows the vertical taps read, rounded to bytes.
    let out_width = columns.len();
    let mut between = Vec::with_capacity(source_rows.len() * out_width * 3);
    for y in source_rows.clone() {
        let row = &image.pixels[y * image.width * 3..(y + 1) * image.width * 3];
        for x in 0..out_width {
            let (first, weights) = horizontal.taps(x);
            let count = weights.len().min(image.width - first);
            for channel in 0..3 {
                let samples = (first..first + count).map(|i| row[i * 3 + channel]);
                between.push(weighted_byte(samples, weights));
            }
        }
    }

    // Vertical pass.
    let mut pixels = Vec::with_capacity(rows.len() * out_width * 3);
    for y in 0..rows.len() {
        let (first, weights) = vertical.taps(y);
        let first = first - source_rows.start;
        let count = weights.len().min(source_rows.len() - first);
        for x in 0..out_width * 3 {
            let samples = (first..first + count).map(|r| between[r * out_width * 3 + x]);
            pixels.push(weighted_byte(samples, weights));
        }
    }
    RgbImage::new(out_width, rows.len(), pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize) -> RgbImage {
        let pixels = (0..width * height * 3).map(|i| (i * 37 % 251) as u8).collect();
        RgbImage::new(width, height, pixels)
    }

    #[test]
    fn same_size_is_the_identity() {
        let image = gradient(7, 5);
        assert_eq!(resize_bilinear(&image, 7, 5), image);
    }

    #[test]
    fn a_window_has_the_bytes_of_the_full_resize() {
        for (w, h, out_w, out_h) in [(13, 9, 31, 5), (40, 3, 7, 11), (1, 1, 4, 3), (9, 9, 2, 2)] {
            let image = gradient(w, h);
            let full = resize_bilinear(&image, out_w, out_h);
            let (columns, rows) = (out_w / 3..out_w, 1..out_h);
            let window = resize_bilinear_window(&image, out_w, out_h, columns.clone(), rows.clone());
            for (y, row) in rows.enumerate() {
                for (x, column) in columns.clone().enumerate() {
                    assert_eq!(window.pixel(x, y), full.pixel(column, row), "{w}x{h} -> {out_w}x{out_h}");
                }
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let image = RgbImage::new(5, 3, [10u8, 200, 255].repeat(15));
        let resized = resize_bilinear(&image, 12, 2);
        assert!(resized.pixels.chunks_exact(3).all(|p| p == [10, 200, 255]));
    }
}
