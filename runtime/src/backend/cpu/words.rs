//! A CPU buffer's storage: zeroed 4-byte words, on the heap or, for a large working buffer on
//! Linux, in a mapping of its own on huge pages.
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
//! Linux gives huge pages to a mapping that asks (`madvise(MADV_HUGEPAGE)`, honoured unless
//! transparent huge pages are off) where a whole 2 MiB-aligned range lies inside it, so the
//! mapping starts on a 2 MiB boundary and its length is rounded up to whole huge pages. A
//! buffer under [`HUGE_MIN_BYTES`] stays on the heap: rounding it up would waste more than
//! half of its memory. Where the kernel refuses, the pages are ordinary ones.

use std::ops::{Deref, DerefMut};

/// The size of an x86-64 and aarch64 (4 KiB granule) transparent huge page.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// Buffers from this size on are mapped on huge pages (when asked for): a mapping rounded up
/// to whole 2 MiB pages then holds at most twice the buffer. (Smaller maps gain too, alone:
/// a 1 × 1 layer from MobileNetV2's 28 × 28 × 192, 588 KiB, took 0.90 of its time on AVX2,
/// measured with every buffer on huge pages; but the whole model at batch 1 took 0.97 of its
/// time with this bar at 128 KiB, 512 KiB and 1 MiB alike: benches/README.md.)
pub const HUGE_MIN_BYTES: usize = 1 << 20;

/// Zeroed words that deref to `[u32]`, wherever they live (see the module doc).
pub struct Words {
    storage: Storage,
}

enum Storage {
    Heap(Vec<u32>),
    /// `len` words at `ptr`, the start of a private anonymous mapping of `mapped` bytes.
    #[cfg(target_os = "linux")]
    Mapped {
        ptr: std::ptr::NonNull<u32>,
        len: usize,
        mapped: usize,
    },
}

// SAFETY: a mapping is owned by its `Words` alone, like a Vec's memory.
unsafe impl Send for Words {}
unsafe impl Sync for Words {}

impl Words {
    /// `len` zeroed words; on huge pages when `huge` and the buffer is at least
    /// [`HUGE_MIN_BYTES`] (on Linux). None when the memory cannot be had.
    pub fn zeroed(len: usize, huge: bool) -> Option<Words> {
        #[cfg(target_os = "linux")]
        if huge && len.checked_mul(4)? >= HUGE_MIN_BYTES {
            return map_huge(len);
        }
        let _ = huge;
        let mut words = Vec::new();
        words.try_reserve_exact(len).ok()?;
        words.resize(len, 0);
        Some(Words { storage: Storage::Heap(words) })
    }

    /// Whether this buffer is a mapping that asked for huge pages.
    pub fn on_huge_pages(&self) -> bool {
        !matches!(self.storage, Storage::Heap(_))
    }
}

/// `len` words in a new mapping aligned to, and a whole number of, huge pages.
#[cfg(target_os = "linux")]
fn map_huge(len: usize) -> Option<Words> {
    let mapped = len.checked_mul(4)?.checked_next_multiple_of(HUGE_PAGE)?;
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
        let ptr = std::ptr::NonNull::new(start as *mut u32)?;
        Some(Words { storage: Storage::Mapped { ptr, len, mapped } })
    }
}

impl Default for Words {
    fn default() -> Self {
        Words { storage: Storage::Heap(Vec::new()) }
    }
}

impl Deref for Words {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        match &self.storage {
            Storage::Heap(words) => words,
            // SAFETY: `len` words of a live mapping owned by this value, zeroed at creation.
            #[cfg(target_os = "linux")]
            Storage::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
        }
    }
}

impl DerefMut for Words {
    fn deref_mut(&mut self) -> &mut [u32] {
        match &mut self.storage {
            Storage::Heap(words) => words,
            // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
            #[cfg(target_os = "linux")]
            Storage::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), *len) },
        }
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Storage::Mapped { ptr, mapped, .. } = self.storage {
            // SAFETY: the mapping made in `map_huge`, unmapped once.
            unsafe { libc::munmap(ptr.as_ptr().cast(), mapped) };
        }
    }
}

impl std::fmt::Debug for Words {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Words({} words{})", self.len(), if self.on_huge_pages() { ", huge pages" } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_zeroed_writable_and_sized_on_either_storage() {
        for (len, huge) in [
            (0, true),
            (7, true),
            (HUGE_MIN_BYTES / 4 - 1, true),
            (HUGE_MIN_BYTES / 4, true),
            (1 << 20, true),
            (1 << 20, false),
        ] {
            let mut words = Words::zeroed(len, huge).unwrap();
            assert_eq!(words.len(), len);
            assert!(words.iter().all(|&w| w == 0), "{len} words not zeroed");
            let expect_mapped = cfg!(target_os = "linux") && huge && len * 4 >= HUGE_MIN_BYTES;
            assert_eq!(words.on_huge_pages(), expect_mapped, "{len} words, huge {huge}");
            for (i, w) in words.iter_mut().enumerate() {
                *w = i as u32;
            }
            assert!(words.iter().enumerate().all(|(i, &w)| w == i as u32));
            #[cfg(target_os = "linux")]
            if expect_mapped {
                assert_eq!(words.as_ptr() as usize % HUGE_PAGE, 0, "mapping not on a huge-page boundary");
            }
        }
    }

    #[test]
    fn an_impossible_size_is_refused_not_a_panic() {
        assert!(Words::zeroed(usize::MAX / 2, true).is_none());
        assert!(Words::zeroed(usize::MAX / 8, false).is_none());
    }
}
