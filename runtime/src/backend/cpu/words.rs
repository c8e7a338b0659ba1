//! A CPU buffer's storage: zeroed 4-byte words (or other plain values: a weight's panels), on
//! the heap or, for a large working buffer or weight on Linux, in a mapping of its own on huge
//! pages.
//!
//! Why huge pages: a convolution over NCHW reads one row of pixels per input channel, each
//! in its own 4 KiB page once a plane is larger than a page (56 × 56 floats are 12.5 KiB),
//! so a 1 × 1 tile over 144 channels touches 144 pages per step, more than the first-level
//! TLB holds (72 entries on Zen 4, 64 on recent Xeons). On 2 MiB pages the same tile touches
//! one or two. Measured on Zen 4 (`conv_timing … ,pair`: the same layer on heap buffers and
//! on huge pages in alternate calls): MobileNetV2's 1 × 1 layers from many channels of 56 × 56
//! or 28 × 28 maps took 0.87–0.94 of their time on AVX2 and 0.94–0.98 on AVX-512, its 112 ×
//! 112 depthwise layer 0.86–0.88; over 14 × 14 and 7 × 7 maps, where a page holds rows of
//! several channels, nothing changed. The whole model (`mobilenet_timing … --pair-huge-pages`):
//! 0.97 at batch 1, 0.91–0.94 at batch 8.
//!
//! Weights too: a decoder's decode step streams every weight from memory once (a 4-bit Qwen2.5
//! 0.5B holds 490 MB), a TLB miss per 4 KiB on ordinary pages. With its weights on huge pages
//! a decode step took 0.98 of its time (Qwen2.5 0.5B) and 0.96 (SmolLM2 135M) on Zen 4
//! (`decoder_timing … --pair-huge-pages`); MiniLM at batch 1, whose 42 MB of kept panels
//! stream from the last-level cache and memory, 0.96–1.02, no clear change.
//!
//! Linux gives huge pages to a mapping that asks (`madvise(MADV_HUGEPAGE)`, honoured unless
//! transparent huge pages are off) where a whole 2 MiB-aligned range lies inside it, so the
//! mapping starts on a 2 MiB boundary. A working buffer's length is rounded up to whole huge
//! pages, and one under [`HUGE_MIN_BYTES`] stays on the heap: rounding it up would waste more
//! than half of its memory. A weight ([`Placement::Weight`]) is not rounded up: its whole
//! 2 MiB ranges are on huge pages, its tail on ordinary ones, so a model takes no more memory.
//! Where the kernel refuses, the pages are ordinary ones.

use std::ops::{Deref, DerefMut};

/// The size of an x86-64 and aarch64 (4 KiB granule) transparent huge page.
pub const HUGE_PAGE: usize = 2 << 20;

/// Buffers from this size on are mapped on huge pages (when asked for): a mapping rounded up
/// to whole 2 MiB pages then holds at most twice the buffer. (Smaller maps gain too, alone:
/// a 1 × 1 layer from MobileNetV2's 28 × 28 × 192, 588 KiB, took 0.90 of its time on AVX2,
/// measured with every buffer on huge pages; but the whole model at batch 1 took 0.97 of its
/// time with this bar at 128 KiB, 512 KiB and 1 MiB alike: benches/README.md.)
pub const HUGE_MIN_BYTES: usize = 1 << 20;

/// Where a buffer's memory comes from (on Linux; elsewhere always the heap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    #[default]
    Heap,
    /// A working buffer: from [`HUGE_MIN_BYTES`] on, a mapping rounded up to whole huge pages.
    Working,
    /// A weight, read on every run: from one huge page on, a mapping rounded up to 4 KiB only,
    /// its whole 2 MiB ranges on huge pages.
    Weight,
}

/// Zeroed values (4-byte words unless said otherwise) that deref to `[T]`, wherever they live
/// (see the module doc).
pub struct Words<T = u32> {
    storage: Storage<T>,
}

enum Storage<T> {
    Heap(Vec<T>),
    /// `len` values at `ptr`, the start of a private anonymous mapping of `mapped` bytes.
    #[cfg(target_os = "linux")]
    Mapped {
        ptr: std::ptr::NonNull<T>,
        len: usize,
        mapped: usize,
    },
}

// SAFETY: a mapping is owned by its `Words` alone, like a Vec's memory.
unsafe impl<T: Send> Send for Words<T> {}
unsafe impl<T: Sync> Sync for Words<T> {}

impl<T: bytemuck::Zeroable + Copy> Words<T> {
    /// `len` zeroed values, where `placement` puts them (see [`Placement`]). None when the
    /// memory cannot be had.
    pub fn zeroed(len: usize, placement: Placement) -> Option<Words<T>> {
        let bytes = len.checked_mul(size_of::<T>())?;
        #[cfg(target_os = "linux")]
        match placement {
            Placement::Working if bytes >= HUGE_MIN_BYTES => {
                return map_huge(len, bytes.checked_next_multiple_of(HUGE_PAGE)?);
            }
            Placement::Weight if bytes >= HUGE_PAGE => {
                return map_huge(len, bytes.checked_next_multiple_of(SMALL_PAGE)?);
            }
            _ => {}
        }
        let _ = (placement, bytes);
        // Zeroed by the allocator: a large allocation is usually fresh pages, already zero
        // (calloc skips the pass), so the first write (a weight's upload, shared among
        // threads) is also the first touch.
        let values = bytemuck::allocation::try_zeroed_vec(len).ok()?;
        Some(Words { storage: Storage::Heap(values) })
    }
}

impl<T> Words<T> {
    /// Whether this buffer is a mapping that asked for huge pages.
    pub fn on_huge_pages(&self) -> bool {
        !matches!(self.storage, Storage::Heap(_))
    }
}

/// The size of an ordinary page, which a mapping's length is a multiple of.
#[cfg(target_os = "linux")]
const SMALL_PAGE: usize = 4 << 10;

/// `len` values in a new mapping of `mapped` bytes (a whole number of pages, at least the
/// values' size) that starts on a huge-page boundary.
#[cfg(target_os = "linux")]
fn map_huge<T>(len: usize, mapped: usize) -> Option<Words<T>> {
    // Reserve a huge page more than needed, then unmap what lies before the first boundary
    // and after the mapping's end: mmap itself aligns only to 4 KiB.
    let reserved = mapped.checked_add(HUGE_PAGE)?;
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    unsafe {
        let raw = libc::mmap(
            std::ptr::null_mut(),
            reserved,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if raw == libc::MAP_FAILED {
            return None;
        }
        let start = (raw as usize).next_multiple_of(HUGE_PAGE);
        let head = start - raw as usize;
        if head > 0 {
            libc::munmap(raw, head);
        }
        let tail = reserved - head - mapped;
        if tail > 0 {
            libc::munmap((start + mapped) as *mut libc::c_void, tail);
        }
        // A refusal (transparent huge pages absent or off) leaves ordinary pages: still correct.
        libc::madvise(start as *mut libc::c_void, mapped, libc::MADV_HUGEPAGE);
        // The mapping's zero bytes are `len` zeroed values (`T: Zeroable` at the caller), and
        // its start, a huge-page boundary, is aligned for any `T`.
        let ptr = std::ptr::NonNull::new(start as *mut T)?;
        Some(Words { storage: Storage::Mapped { ptr, len, mapped } })
    }
}

impl<T> Default for Words<T> {
    fn default() -> Self {
        Words { storage: Storage::Heap(Vec::new()) }
    }
}

impl<T> Deref for Words<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.storage {
            Storage::Heap(words) => words,
            // SAFETY: `len` values of a live mapping owned by this value, zeroed at creation.
            #[cfg(target_os = "linux")]
            Storage::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
        }
    }
}

impl<T> DerefMut for Words<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.storage {
            Storage::Heap(words) => words,
            // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
            #[cfg(target_os = "linux")]
            Storage::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *len) },
        }
    }
}

impl<T> Drop for Words<T> {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Storage::Mapped { ptr, mapped, .. } = self.storage {
            // SAFETY: the mapping made in `map_huge`, unmapped once.
            unsafe { libc::munmap(ptr.as_ptr().cast(), mapped) };
        }
    }
}

impl<T> std::fmt::Debug for Words<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Words({} values{})", self.len(), if self.on_huge_pages() { ", huge pages" } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_zeroed_writable_and_sized_in_every_placement() {
        let big = HUGE_PAGE / 4 + 1000;
        for (len, placement) in [
            (0, Placement::Working),
            (7, Placement::Working),
            (HUGE_MIN_BYTES / 4 - 1, Placement::Working),
            (HUGE_MIN_BYTES / 4, Placement::Working),
            (1 << 20, Placement::Working),
            (1 << 20, Placement::Heap),
            (HUGE_MIN_BYTES / 4, Placement::Weight),
            (big, Placement::Weight),
            (big, Placement::Heap),
        ] {
            let mut words = Words::<u32>::zeroed(len, placement).unwrap();
            assert_eq!(words.len(), len);
            assert!(words.iter().all(|&w| w == 0), "{len} words not zeroed");
            let expect_mapped = cfg!(target_os = "linux")
                && match placement {
                    Placement::Heap => false,
                    Placement::Working => len * 4 >= HUGE_MIN_BYTES,
                    Placement::Weight => len * 4 >= HUGE_PAGE,
                };
            assert_eq!(words.on_huge_pages(), expect_mapped, "{len} words, {placement:?}");
            for (i, w) in words.iter_mut().enumerate() {
                *w = i as u32;
            }
            assert!(words.iter().enumerate().all(|(i, &w)| w == i as u32));
            #[cfg(target_os = "linux")]
            if expect_mapped {
                assert_eq!(words.as_ptr() as usize % HUGE_PAGE, 0, "mapping not on a huge-page boundary");
                let Storage::Mapped { mapped, .. } = words.storage else { unreachable!() };
                let page = if placement == Placement::Weight { SMALL_PAGE } else { HUGE_PAGE };
                assert_eq!(mapped, (len * 4).next_multiple_of(page), "{placement:?} mapping rounded to {mapped} bytes");
            }
        }
    }

    #[test]
    fn wider_values_are_aligned_in_either_storage() {
        #[derive(Clone, Copy)]
        #[repr(C, align(64))]
        struct Line([f32; 16]);
        // SAFETY: sixteen f32s, no padding.
        unsafe impl bytemuck::Zeroable for Line {}
        for len in [3, HUGE_PAGE / 64 + 5] {
            let lines = Words::<Line>::zeroed(len, Placement::Weight).unwrap();
            assert_eq!(lines.len(), len);
            assert_eq!(lines.as_ptr() as usize % 64, 0);
            assert!(lines.iter().all(|l| l.0 == [0.0; 16]));
        }
    }

    #[test]
    fn an_impossible_size_is_refused_not_a_panic() {
        assert!(Words::<u32>::zeroed(usize::MAX / 2, Placement::Working).is_none());
        assert!(Words::<u32>::zeroed(usize::MAX / 8, Placement::Heap).is_none());
        assert!(Words::<u32>::zeroed(usize::MAX / 8, Placement::Weight).is_none());
    }
}
