//! The on-disk cache of compiled kernels, so that NVRTC runs once per kernel build and
//! machine rather than at every start.
//!
//! Folder: `$TANDEM_CACHE/cuda`, else `$XDG_CACHE_HOME/tandem/cuda`, else
//! `~/.cache/tandem/cuda` (the model cache's root, as in tandem-models). One file per build,
//! named by the file stem, variant, target and NVRTC version, plus a SHA-256 over everything
//! that goes into the compilation (source, headers, options, NVRTC version): editing a
//! kernel, upgrading NVRTC or moving to another GPU architecture all miss the cache, and
//! stale entries are never read. The cache is an optimisation only: a folder that cannot be
//! created, read or written means compiling every time, never an error.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The cache folder, or None when no location is known (no HOME and no TANDEM_CACHE).
pub fn dir() -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let root = env("TANDEM_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("tandem")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("tandem")))?;
    Some(root.join("cuda"))
}

/// The file name for a build: readable fields first, then the content hash.
pub fn file_name(stem: &str, variant: &str, target: &str, nvrtc: (i32, i32), inputs: &[&str], ext: &str) -> String {
    let mut hash = Sha256::new();
    for part in inputs {
        // Length-prefixed, so that moving text between parts changes the hash.
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hash.update(format!("nvrtc {}.{}", nvrtc.0, nvrtc.1).as_bytes());
    let digest = hash.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{stem}-{variant}-{target}-nvrtc{}.{}-{hex}.{ext}", nvrtc.0, nvrtc.1)
}

pub fn read(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(name)).ok().filter(|b| !b.is_empty())
}

/// Writes atomically (a temporary file renamed into place), so that a concurrent reader sees
/// a whole file or none. Failures are ignored: see the module comment.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) {
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, dir.join(name)).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_change_with_every_input() {
        let base = file_name("matmul", "f32", "sm_90", (12, 9), &["src", "opts"], "cubin");
        assert!(base.starts_with("matmul-f32-sm_90-nvrtc12.9-") && base.ends_with(".cubin"), "{base}");
        assert_ne!(base, file_name("matmul", "f32", "sm_90", (12, 9), &["src2", "opts"], "cubin"));
        assert_ne!(base, file_name("matmul", "f32", "sm_90", (12, 8), &["src", "opts"], "cubin"));
        assert_ne!(base, file_name("matmul", "f32", "sm_90", (12, 9), &["sr", "copts"], "cubin"));
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = std::env::temp_dir().join(format!("tandem-cuda-cache-test-{}", std::process::id()));
        write(&dir, "x.cubin", b"image");
        assert_eq!(read(&dir, "x.cubin").as_deref(), Some(&b"image"[..]));
        assert_eq!(read(&dir, "missing.cubin"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
