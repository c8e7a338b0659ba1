//! Bad input to the photo decoder: each is refused with an error naming the problem, and a
//! header claiming a huge image is refused before its pixels are allocated (this test binary
//! counts the bytes allocated, which is why it is a binary of its own).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tandem_models::vision::decode::{DecodeError, decode_rgb8};

struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        // SAFETY: the caller's contract for `GlobalAlloc::alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The tests of this binary run one at a time, so that the peak is one decode's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Decodes `bytes`, returning the result and the most bytes allocated at once meanwhile.
fn decode_counting(bytes: &[u8]) -> (Result<(usize, usize), DecodeError>, usize) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let result = decode_rgb8(bytes).map(|image| (image.width, image.height));
    (result, PEAK.load(Ordering::SeqCst) - before)
}

fn decode(bytes: &[u8]) -> Result<(usize, usize), DecodeError> {
    decode_counting(bytes).0
}

fn crc32(bytes: &[u8]) -> u32 {
    // PNG's CRC (ISO 3309), bit by bit: a few chunks need no table.
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut checked = kind.to_vec();
    checked.extend_from_slice(data);
    out.extend_from_slice(&crc32(&checked).to_be_bytes());
    out
}

/// A PNG signature and an 8-bit RGB IHDR claiming `width` x `height`, then an IDAT of a few
/// zlib bytes and IEND: the header is valid, the pixels are not there.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &header));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(chunk(b"IEND", &[]));
    png
}

fn reference_file(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference").join(name)).unwrap()
}

#[test]
fn empty_bytes_are_not_an_image() {
    assert_eq!(decode(&[]), Err(DecodeError::NotAnImage));
    assert!(DecodeError::NotAnImage.to_string().starts_with("not an image"));
}

#[test]
fn random_bytes_are_not_an_image() {
    // A fixed linear congruential sequence: "random" and the same on every run.
    let mut state = 0x2545_f491_u32;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect();
    assert_eq!(decode(&bytes), Err(DecodeError::NotAnImage));
}

#[test]
fn other_formats_are_unsupported() {
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
    let Err(DecodeError::Unsupported(what)) = decode(gif) else { panic!("a GIF should be unsupported") };
    assert!(what.contains("Gif"), "{what}");
    assert!(DecodeError::Unsupported(what).to_string().starts_with("unsupported image format"));
}

#[test]
fn a_truncated_png_is_truncated() {
    let png = reference_file("images/coins.png");
    for keep in [png.len() / 2, png.len() - 20, 40] {
        assert_eq!(decode(&png[..keep]), Err(DecodeError::Truncated), "first {keep} of {} bytes", png.len());
    }
    assert!(DecodeError::Truncated.to_string().starts_with("truncated image"));
}

#[test]
fn a_truncated_jpeg_is_truncated() {
    // As PIL refuses it ("image file is truncated"), even without only its final marker.
    let jpeg = reference_file("images/rocket.jpg");
    for keep in [jpeg.len() / 2, jpeg.len() - 1, 40] {
        assert_eq!(decode(&jpeg[..keep]), Err(DecodeError::Truncated), "first {keep} of {} bytes", jpeg.len());
    }
    assert_eq!(decode(&jpeg), Ok((640, 427)));
}

#[test]
fn a_png_claiming_100000_by_100000_pixels_is_refused_without_allocating_them() {
    let (result, peak) = decode_counting(&png_claiming(100_000, 100_000));
    let Err(DecodeError::TooLarge(what)) = result else { panic!("{result:?}") };
    assert!(what.contains("100000x100000"), "{what}");
    assert!(peak < 1 << 20, "{peak} bytes allocated to refuse it");
    // Within each side's limit, but over the total.
    let (result, peak) = decode_counting(&png_claiming(16_000, 16_000));
    assert!(matches!(result, Err(DecodeError::TooLarge(_))), "{result:?}");
    assert!(peak < 1 << 20, "{peak} bytes allocated to refuse it");
}

#[test]
fn a_jpeg_claiming_65000_by_65000_pixels_is_refused_without_allocating_them() {
    // rocket.jpg with the frame header's size rewritten.
    let mut jpeg = reference_file("images/rocket.jpg");
    let frame = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).expect("a baseline frame header");
    jpeg[frame + 5..frame + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    let (result, peak) = decode_counting(&jpeg);
    assert!(matches!(result, Err(DecodeError::TooLarge(_))), "{result:?}");
    assert!(peak < 8 << 20, "{peak} bytes allocated to refuse it");
}

#[test]
fn a_png_with_no_pixels_where_its_header_says_is_an_error() {
    // A valid header of a small image whose IDAT is empty of scanlines.
    let result = decode(&png_claiming(3, 2));
    assert!(matches!(result, Err(DecodeError::Truncated | DecodeError::Corrupt(_))), "{result:?}");
}

/// A 2x2 8-bit paletted PNG whose PLTE chunk holds `palette` and whose pixels all use entry 0.
fn paletted_png(palette: &[u8]) -> Vec<u8> {
    let mut header = 2u32.to_be_bytes().to_vec();
    header.extend_from_slice(&2u32.to_be_bytes());
    header.extend_from_slice(&[8, 3, 0, 0, 0]);
    // Two scanlines (filter byte 0, then two indices) in one stored deflate block, in zlib.
    let scanlines = [0u8, 0, 0, 0, 0, 0];
    let mut idat = vec![0x78, 0x01, 0x01, 6, 0, !6, 0xFF];
    idat.extend_from_slice(&scanlines);
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &scanlines {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    idat.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &header));
    png.extend(chunk(b"PLTE", palette));
    png.extend(chunk(b"IDAT", &idat));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn a_png_palette_of_partial_entries_is_corrupt_not_a_panic() {
    // The well-formed file first, so that the broken one is refused for its palette alone.
    assert_eq!(decode_rgb8(&paletted_png(&[10, 20, 30])).map(|image| image.pixels), Ok([10, 20, 30].repeat(4)));
    // Found by fuzz/run.sh: the png crate panicked on a 5-byte palette.
    for palette in [&[10u8, 20, 30, 40][..], &[10, 20, 30, 40, 50]] {
        let Err(DecodeError::Corrupt(why)) = decode(&paletted_png(palette)) else { panic!("{} bytes", palette.len()) };
        assert!(why.contains(&format!("palette of {} bytes", palette.len())), "{why}");
    }
}
