//! Finding the two libraries the CUDA backend loads at run time: the driver (libcuda, from
//! the NVIDIA driver install) and NVRTC (libnvrtc, CUDA's run-time compiler).
//!
//! cudarc resolves both lazily by library name and panics when one is missing, so nothing in
//! this backend touches a cudarc `sys` or `result` function before [`driver`] or [`nvrtc`]
//! has returned `Ok`.
//!
//! NVRTC need not be installed system-wide: `TANDEM_NVRTC_DIR` may name a folder holding
//! `libnvrtc.so.*` (such as the `nvidia/cuda_nvrtc/lib` folder of PyPI's
//! nvidia-cuda-nvrtc-cu12 wheel, which cuda/fetch_nvrtc.sh unpacks). The library is opened
//! from there by full path and kept open; the dynamic loader then hands cudarc that same
//! library when it asks for `libnvrtc.so.12` by name, since a loaded library answers to its
//! soname. (LD_LIBRARY_PATH works too, but must be set before the process starts.)

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming a folder that holds libnvrtc.
pub const NVRTC_DIR_ENV: &str = "TANDEM_NVRTC_DIR";

/// `Ok` when libcuda can be loaded, else why not, in words for the person at the terminal.
pub fn driver() -> Result<(), String> {
    static DRIVER: OnceLock<Result<(), String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            // SAFETY: only tries to dlopen the candidate names and closes them again.
            if unsafe { cudarc::driver::sys::is_culib_present() } {
                Ok(())
            } else {
                Err(format!(
                    "the NVIDIA driver library (libcuda.so.1) cannot be loaded: this machine has no NVIDIA \
                     driver, or it is not on the loader path (searched for {})",
                    candidates("cuda")
                ))
            }
        })
        .clone()
}

/// `Ok` when NVRTC can be loaded (from `TANDEM_NVRTC_DIR` when set), else why not.
pub fn nvrtc() -> Result<(), String> {
    static NVRTC: OnceLock<Result<(), String>> = OnceLock::new();
    NVRTC
        .get_or_init(|| {
            let preloaded = match std::env::var_os(NVRTC_DIR_ENV) {
                Some(dir) if !dir.is_empty() => Some(preload_nvrtc(Path::new(&dir))?),
                _ => None,
            };
            // SAFETY: only tries to dlopen the candidate names and closes them again.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Ok(());
            }
            Err(match preloaded {
                Some(path) => format!(
                    "NVRTC was opened from {} but is not one of the names the CUDA bindings look for ({}): \
                     use an NVRTC 12.x library, or give a CUDA 13 one the plain name libnvrtc.so (a link to it \
                     in a folder on LD_LIBRARY_PATH, set before tandem starts)",
                    path.display(),
                    candidates("nvrtc")
                ),
                None => format!(
                    "NVRTC (libnvrtc.so.12, CUDA's run-time compiler) cannot be loaded: set {NVRTC_DIR_ENV} to a \
                     folder holding it (cuda/fetch_nvrtc.sh unpacks PyPI's nvidia-cuda-nvrtc-cu12 wheel and prints \
                     the folder), or add its folder to LD_LIBRARY_PATH (searched for {})",
                    candidates("nvrtc")
                ),
            })
        })
        .clone()
}

/// Opens the NVRTC library in `dir` by full path and keeps it open for the life of the
/// process. Returns the path opened.
fn preload_nvrtc(dir: &Path) -> Result<PathBuf, String> {
    static LIB: OnceLock<libloading::Library> = OnceLock::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("{NVRTC_DIR_ENV}={}: cannot list the folder: {e}", dir.display()))?;
    // libnvrtc.so.12 (the wheel's file), libnvrtc.so.12.x.y, or a development symlink; never
    // the builtins library or the wheel's `.alt` build.
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                (n.starts_with("libnvrtc.so") || (n.starts_with("nvrtc64_") && n.ends_with(".dll")))
                    && !n.contains("builtins")
                    && !n.contains(".alt.")
            })
        })
        .collect();
    // Prefer the most specific name, which is the real file rather than a symlink chain.
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    let mut errors = Vec::new();
    for path in found {
        // SAFETY: loading NVRTC runs its initialisers, which have no preconditions.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => {
                let _ = LIB.set(lib);
                return Ok(path);
            }
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    if errors.is_empty() {
        Err(format!("{NVRTC_DIR_ENV}={}: no libnvrtc.so* in that folder", dir.display()))
    } else {
        Err(format!("{NVRTC_DIR_ENV}={}: NVRTC failed to load: {}", dir.display(), errors.join("; ")))
    }
}

/// The library names cudarc tries, for error messages (without the Windows-style names that
/// carry a pointer width, unless those are all there is).
fn candidates(lib: &str) -> String {
    let all = cudarc::get_lib_name_candidates(lib);
    let mut names: Vec<String> = all.iter().filter(|n| !n.contains("32") && !n.contains("64")).cloned().collect();
    if names.is_empty() {
        names = all;
    }
    names.dedup();
    names.join(", ")
}
