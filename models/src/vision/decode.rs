//! Decoding PNG and JPEG photos into RGB bytes, the way `PIL.Image.open(...).convert("RGB")` sees
//! them, with bounded dimensions so that a hostile header cannot make us allocate gigabytes.

use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::{ColorType, ImageDecoder, ImageError, ImageFormat, Limits};
use std::fmt;
use std::io::{Cursor, ErrorKind};

/// Neither side may exceed this many pixels (a product photo is a few thousand at most).
pub const MAX_SIDE: u32 = 16_384;
/// Nor may the whole image: 64 Mi pixels is 192 MiB as RGB bytes.
pub const MAX_PIXELS: u64 = 64 << 20;

/// An 8-bit RGB image, rows top to bottom, pixels left to right, `[r, g, b]` each (HWC).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Self {
        assert_eq!(pixels.len(), width * height * 3, "{width}x{height} RGB image");
        Self { width, height, pixels }
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let at = (y * self.width + x) * 3;
        [self.pixels[at], self.pixels[at + 1], self.pixels[at + 2]]
    }
}

impl fmt::Debug for RgbImage {
    // The pixels would drown a failing assertion's message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RgbImage {}x{}", self.width, self.height)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes start with no image signature we know.
    NotAnImage,
    /// An image format other than PNG and JPEG, or a variant of them the decoder lacks.
    Unsupported(String),
    /// The header claims more pixels than [`MAX_SIDE`] or [`MAX_PIXELS`] allow, or the decoder
    /// would need more memory than its limit.
    TooLarge(String),
    /// The data ends before the image does.
    Truncated,
    /// Anything else the decoder rejected.
    Corrupt(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnImage => write!(f, "not an image: no PNG or JPEG signature"),
            Self::Unsupported(what) => write!(f, "unsupported image format: {what}"),
            Self::TooLarge(what) => write!(f, "image too large: {what}"),
            Self::Truncated => write!(f, "truncated image: the data ends before the pixels do"),
            Self::Corrupt(why) => write!(f, "corrupt image: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a PNG or JPEG into RGB bytes as PIL's `Image.open(...).convert("RGB")` does: grey
/// is repeated into the three channels, alpha is dropped (not composited on any background),
/// palettes are looked up and 16-bit samples keep their high byte. EXIF orientation is not
/// applied and ICC profiles are ignored, as neither PIL's `open` nor torchvision apply them.
///
/// PNGs decode to PIL's bytes exactly. JPEG decoders differ in their IDCT and chroma
/// upsampling, so a JPEG's bytes can differ from PIL's (libjpeg-turbo) by a few levels.
pub fn decode_rgb8(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let format = image::guess_format(bytes).map_err(|_| DecodeError::NotAnImage)?;
    let limits = decoder_limits();
    match format {
        ImageFormat::Png => {
            check_png_palette(bytes)?;
            read_rgb8(PngDecoder::with_limits(Cursor::new(bytes), limits).map_err(decode_error)?)
        }
        ImageFormat::Jpeg => {
            if !jpeg_has_its_end(bytes) {
                return Err(DecodeError::Truncated);
            }
            let mut decoder = JpegDecoder::new(Cursor::new(bytes)).map_err(decode_error)?;
            decoder.set_limits(limits).map_err(decode_error)?;
            read_rgb8(decoder)
        }
        other => Err(DecodeError::Unsupported(format!("{other:?}"))),
    }
}

/// Refuses a palette (PLTE chunk) that is not a whole number of RGB entries. The `png` crate
/// (0.18) accepts any PLTE of 3 to 768 bytes and then panics when it expands a palette of, say,
/// 5 bytes; PIL refuses such a file too. Only the chunks before the first IDAT are read: a PLTE
/// must come before it.
fn check_png_palette(bytes: &[u8]) -> Result<(), DecodeError> {
    const SIGNATURE_LEN: usize = 8;
    let mut at = SIGNATURE_LEN;
    while let Some(header) = bytes.get(at..at + 8) {
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        match &header[4..8] {
            b"PLTE" if !length.is_multiple_of(3) => {
                return Err(DecodeError::Corrupt(format!(
                    "PNG palette of {length} bytes, not a whole number of 3-byte RGB entries"
                )));
            }
            b"IDAT" => break,
            _ => {}
        }
        // Length, type, data and CRC; a length past the end is the decoder's to report.
        at = at.saturating_add(12).saturating_add(length);
    }
    Ok(())
}

/// Whether an end-of-image marker follows the last start-of-scan marker. zune-jpeg fills the
/// missing tail of a truncated JPEG with grey where PIL refuses it ("image file is truncated"),
/// even when only the final marker is missing. Entropy-coded data never holds a marker (a 0xFF
/// byte is stuffed with 0x00), and the last start of scan is the main image's, after any
/// thumbnail in the EXIF segment.
fn jpeg_has_its_end(bytes: &[u8]) -> bool {
    const START_OF_SCAN: [u8; 2] = [0xFF, 0xDA];
    const END_OF_IMAGE: [u8; 2] = [0xFF, 0xD9];
    let Some(last_scan) = bytes.windows(2).rposition(|m| m == START_OF_SCAN) else { return false };
    bytes[last_scan..].windows(2).any(|m| m == END_OF_IMAGE)
}

fn decoder_limits() -> Limits {
    // The size limits are checked by `read_rgb8`, whose error names the size; the header
    // alone allocates nothing. The largest output (16-bit RGBA) plus the decoder's own buffers.
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    limits
}

/// Checks the header's size before allocating the pixels, then converts them to RGB8.
fn read_rgb8(decoder: impl ImageDecoder) -> Result<RgbImage, DecodeError> {
    let (width, height) = decoder.dimensions();
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(DecodeError::TooLarge(format!(
            "{width}x{height} pixels, at most {MAX_SIDE} a side and {MAX_PIXELS} in all"
        )));
    }
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!("{width}x{height} pixels")));
    }
    let color = decoder.color_type();
    let mut buffer = vec![0u8; usize::try_from(decoder.total_bytes()).expect("bounded above")];
    decoder.read_image(&mut buffer).map_err(decode_error)?;
    let pixels = if color == ColorType::Rgb8 { buffer } else { to_rgb8(color, &buffer)? };
    Ok(RgbImage::new(width as usize, height as usize, pixels))
}

/// PIL's conversions to RGB of the non-RGB8 layouts the `image` decoders produce (16-bit samples in
/// native byte order).
fn to_rgb8(color: ColorType, buffer: &[u8]) -> Result<Vec<u8>, DecodeError> {
    // PIL reads a 16-bit PNG sample as its most significant byte (raw modes "RGB;16B", "LA;16B").
    let high_bytes = || buffer.chunks_exact(2).map(|s| (u16::from_ne_bytes([s[0], s[1]]) >> 8) as u8);
    let grey_to_rgb = |grey: &mut dyn Iterator<Item = u8>| grey.flat_map(|v| [v, v, v]).collect();
    let pixels = match color {
        ColorType::Rgba8 => buffer.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        ColorType::L8 => grey_to_rgb(&mut buffer.iter().copied()),
        ColorType::La8 => grey_to_rgb(&mut buffer.iter().step_by(2).copied()),
        ColorType::Rgb16 => high_bytes().collect(),
        ColorType::Rgba16 => high_bytes().enumerate().filter(|(i, _)| i % 4 != 3).map(|(_, v)| v).collect(),
        ColorType::La16 => grey_to_rgb(&mut high_bytes().step_by(2)),
        // PIL opens 16-bit grey as mode "I;16", whose conversion to 8 bits clamps at 255
        // rather than scaling: anything above 255 is white.
        ColorType::L16 => {
            grey_to_rgb(&mut buffer.chunks_exact(2).map(|s| u16::from_ne_bytes([s[0], s[1]]).min(255) as u8))
        }
        other => return Err(DecodeError::Unsupported(format!("{other:?} pixels"))),
    };
    Ok(pixels)
}

fn decode_error(error: ImageError) -> DecodeError {
    match error {
        ImageError::Limits(e) => DecodeError::TooLarge(e.to_string()),
        ImageError::Unsupported(e) => DecodeError::Unsupported(e.to_string()),
        // A PNG that ends early: the reader runs out of bytes inside a chunk. (A JPEG that
        // ends early is caught before decoding, by its missing end marker.)
        ImageError::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => DecodeError::Truncated,
        other => DecodeError::Corrupt(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::jpeg_has_its_end;

    #[test]
    fn a_jpeg_ends_after_its_last_scan_not_its_thumbnails() {
        // Start of image, an EXIF segment holding a whole thumbnail JPEG, then the main scan.
        let thumbnail = [0xFF, 0xD8, 0xFF, 0xDA, 0x01, 0x02, 0xFF, 0xD9];
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x0A];
        jpeg.extend_from_slice(&thumbnail);
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0x11, 0xFF, 0x00, 0x22]);
        assert!(!jpeg_has_its_end(&jpeg), "the main scan has no end marker");
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        assert!(jpeg_has_its_end(&jpeg));
        assert!(!jpeg_has_its_end(&[0xFF, 0xD8, 0xFF, 0xD9]), "no scan at all");
    }
}
