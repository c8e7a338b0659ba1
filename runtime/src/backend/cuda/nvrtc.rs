//! A small safe layer over NVRTC (through cudarc's bindings): compile a kernel file to PTX or
//! to a cubin, with in-memory headers, and return NVRTC's log on failure.
//!
//! cudarc's own `compile_ptx` produces PTX only and unwraps in places; a cubin (SASS for one
//! real architecture) is what the backend wants, since loading it needs no JIT and works on
//! drivers older than the NVRTC that produced it. Every function here first checks that NVRTC
//! can be loaded ([`super::libs::nvrtc`]), so none of them can panic for a missing library.

use super::libs;
use cudarc::nvrtc::sys;
use std::ffi::{CStr, CString, c_char, c_int};

/// What a compilation produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// PTX text (NUL-terminated) for a virtual architecture (`compute_XY`); the driver
    /// compiles it for the device when the module is loaded.
    Ptx,
    /// A cubin for one real architecture (`sm_XY`): ready to run, and compiling it ran ptxas,
    /// which checks register and shared-memory limits and any inline PTX.
    Cubin,
}

impl ImageKind {
    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Ptx => "ptx",
            ImageKind::Cubin => "cubin",
        }
    }
    /// The `--gpu-architecture` value for compute capability `arch` (e.g. 90).
    pub fn arch_option(self, arch: u32) -> String {
        match self {
            ImageKind::Ptx => format!("--gpu-architecture=compute_{arch}"),
            ImageKind::Cubin => format!("--gpu-architecture=sm_{arch}"),
        }
    }
}

/// A compiled kernel file.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub image: Vec<u8>,
    pub kind: ImageKind,
    /// NVRTC's log (warnings; ptxas statistics when asked for with `--ptxas-options=-v`).
    pub log: String,
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32), String> {
    libs::nvrtc()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: NVRTC is loaded; the pointers are valid for the call.
    check(unsafe { sys::nvrtcVersion(&mut major, &mut minor) }, "nvrtcVersion")?;
    Ok((major, minor))
}

/// The real architectures this NVRTC can compile for, as compute capabilities (e.g. 90).
pub fn supported_archs() -> Result<Vec<u32>, String> {
    libs::nvrtc()?;
    let mut n: c_int = 0;
    // SAFETY: NVRTC is loaded; the buffer holds as many entries as NVRTC said it would write.
    unsafe {
        check(sys::nvrtcGetNumSupportedArchs(&mut n), "nvrtcGetNumSupportedArchs")?;
        let mut archs = vec![0 as c_int; n.max(0) as usize];
        check(sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()), "nvrtcGetSupportedArchs")?;
        Ok(archs.into_iter().filter_map(|a| u32::try_from(a).ok()).collect())
    }
}

/// Compiles `source` (named `name` in messages) with `headers` as (include name, text) pairs
/// it may `#include "..."`, and `options` such as `--gpu-architecture=sm_90`. The error
/// carries NVRTC's log.
pub fn compile(
    name: &str,
    source: &str,
    headers: &[(&str, &str)],
    options: &[String],
    kind: ImageKind,
) -> Result<Compiled, String> {
    libs::nvrtc()?;
    let cstr = |s: &str, what: &str| CString::new(s).map_err(|_| format!("{name}: {what} contains a NUL byte"));
    let c_source = cstr(source, "the source")?;
    let c_name = cstr(name, "the name")?;
    let c_headers = headers.iter().map(|(_, text)| cstr(text, "a header")).collect::<Result<Vec<_>, _>>()?;
    let c_includes = headers.iter().map(|(inc, _)| cstr(inc, "a header name")).collect::<Result<Vec<_>, _>>()?;
    let c_options = options.iter().map(|o| cstr(o, "an option")).collect::<Result<Vec<_>, _>>()?;
    let header_ptrs: Vec<*const c_char> = c_headers.iter().map(|c| c.as_ptr()).collect();
    let include_ptrs: Vec<*const c_char> = c_includes.iter().map(|c| c.as_ptr()).collect();
    let option_ptrs: Vec<*const c_char> = c_options.iter().map(|c| c.as_ptr()).collect();

    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NVRTC is loaded; every pointer refers to a NUL-terminated string that outlives
    // the program, and the arrays hold `len` entries.
    check(
        unsafe {
            sys::nvrtcCreateProgram(
                &mut raw,
                c_source.as_ptr(),
                c_name.as_ptr(),
                headers.len() as c_int,
                header_ptrs.as_ptr(),
                include_ptrs.as_ptr(),
            )
        },
        "nvrtcCreateProgram",
    )?;
    let program = Program(raw);
    // SAFETY: as above; the program is valid until `program` drops.
    let compiled = unsafe { sys::nvrtcCompileProgram(program.0, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
    let log = program.log();
    if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!(
            "NVRTC could not compile {name} ({}; options: {}):\n{}",
            error_string(compiled),
            options.join(" "),
            log.trim_end()
        ));
    }
    let image = program.image(kind).map_err(|e| format!("{name}: {e}"))?;
    Ok(Compiled { image, kind, log })
}

/// Owns an nvrtcProgram and destroys it on drop.
struct Program(sys::nvrtcProgram);

impl Program {
    fn log(&self) -> String {
        let mut size = 0usize;
        // SAFETY: the program is valid; the buffer has the size NVRTC asked for.
        unsafe {
            if sys::nvrtcGetProgramLogSize(self.0, &mut size) != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                return String::new();
            }
            let mut buf = vec![0u8; size];
            if sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr().cast()) != sys::nvrtcResult::NVRTC_SUCCESS {
                return String::new();
            }
            CStr::from_bytes_until_nul(&buf).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
        }
    }

    fn image(&self, kind: ImageKind) -> Result<Vec<u8>, String> {
        let mut size = 0usize;
        // SAFETY: the program compiled; the buffer has the size NVRTC reported.
        unsafe {
            let (size_fn, what) = match kind {
                ImageKind::Ptx => (sys::nvrtcGetPTXSize(self.0, &mut size), "nvrtcGetPTXSize"),
                ImageKind::Cubin => (sys::nvrtcGetCUBINSize(self.0, &mut size), "nvrtcGetCUBINSize"),
            };
            check(size_fn, what)?;
            if size == 0 {
                return Err(format!(
                    "NVRTC produced an empty {} (a cubin needs sm_XY, not compute_XY)",
                    kind.extension()
                ));
            }
            let mut buf = vec![0u8; size];
            match kind {
                ImageKind::Ptx => check(sys::nvrtcGetPTX(self.0, buf.as_mut_ptr().cast()), "nvrtcGetPTX")?,
                ImageKind::Cubin => check(sys::nvrtcGetCUBIN(self.0, buf.as_mut_ptr().cast()), "nvrtcGetCUBIN")?,
            }
            Ok(buf)
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn check(result: sys::nvrtcResult, what: &str) -> Result<(), String> {
    if result == sys::nvrtcResult::NVRTC_SUCCESS { Ok(()) } else { Err(format!("{what}: {}", error_string(result))) }
}

fn error_string(result: sys::nvrtcResult) -> String {
    // SAFETY: NVRTC is loaded (every caller checked); the returned string is static.
    let ptr = unsafe { sys::nvrtcGetErrorString(result) };
    if ptr.is_null() {
        format!("{result:?}")
    } else {
        // SAFETY: a NUL-terminated static string owned by NVRTC.
        unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
    }
}
