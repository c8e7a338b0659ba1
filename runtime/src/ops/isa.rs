//! Which SIMD instruction set the CPU kernels use, picked once at run time.
//!
//! Release builds target baseline x86-64, so every vectorised CPU kernel is compiled a second
//! (third) time for AVX2 and AVX-512 and picked here from what the processor reports. The
//! environment variable `TANDEM_CPU_ISA` (`avx512`, `avx2` or `scalar`; `avx512-novnni` and
//! `avx2-novnni` leave out the VNNI dot products, `avx512-noamx` AMX's tiles, [`amx_bf16`])
//! caps the choice at a lower level, to compare paths or to work around a machine that
//! misreports its features; it cannot raise the level above what the processor has. It is
//! read once per process.

use std::sync::OnceLock;

/// The environment variable that caps [`CpuIsa::active`].
pub const CPU_ISA_ENV: &str = "TANDEM_CPU_ISA";

/// A level of SIMD support, lowest first. A CPU that has a level need not have every lower
/// one (Ice Lake has AVX-512 VNNI but not AVX-VNNI), so "the best a CPU has" is the highest
/// [`CpuIsa::supported`] level, not a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuIsa {
    /// Portable Rust, whatever the target (the only level off x86-64, wasm32 included).
    Scalar,
    /// AVX2 with FMA and F16C (Haswell and later).
    Avx2,
    /// AVX2 with AVX-VNNI's 256-bit integer dot products (Alder Lake, Sapphire Rapids, Zen 5).
    AvxVnni,
    /// AVX-512 F, BW and VL, with FMA and F16C (Skylake-SP and later, Zen 4).
    Avx512,
    /// AVX-512 with VNNI (`vpdpbusd`; Cascade Lake, Ice Lake and later, Zen 4).
    Avx512Vnni,
}

impl CpuIsa {
    pub const ALL: [CpuIsa; 5] = [CpuIsa::Scalar, CpuIsa::Avx2, CpuIsa::AvxVnni, CpuIsa::Avx512, CpuIsa::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            CpuIsa::Scalar => "scalar",
            CpuIsa::Avx2 => "avx2",
            CpuIsa::AvxVnni => "avx2+vnni",
            CpuIsa::Avx512 => "avx512",
            CpuIsa::Avx512Vnni => "avx512+vnni",
        }
    }

    /// Whether this CPU runs this level's kernels.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = || has!("avx2") && has!("fma") && has!("f16c");
            let avx512 = || avx2() && has!("avx512f") && has!("avx512bw") && has!("avx512vl");
            match self {
                CpuIsa::Scalar => true,
                CpuIsa::Avx2 => avx2(),
                CpuIsa::AvxVnni => avx2() && has!("avxvnni"),
                CpuIsa::Avx512 => avx512(),
                CpuIsa::Avx512Vnni => avx512() && has!("avx512vnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == CpuIsa::Scalar
        }
    }

    /// The best level this CPU supports, ignoring `TANDEM_CPU_ISA`.
    pub fn detected() -> CpuIsa {
        Self::best_up_to(CpuIsa::Avx512Vnni)
    }

    /// The best supported level at or below `cap`.
    pub fn best_up_to(cap: CpuIsa) -> CpuIsa {
        Self::ALL.into_iter().rev().find(|isa| *isa <= cap && isa.supported()).unwrap_or(CpuIsa::Scalar)
    }

    /// The level the CPU kernels use: [`CpuIsa::detected`], capped by `TANDEM_CPU_ISA` when it
    /// is set (an unknown value is reported once on stderr and ignored). Decided once.
    pub fn active() -> CpuIsa {
        static ACTIVE: OnceLock<CpuIsa> = OnceLock::new();
        *ACTIVE.get_or_init(|| match std::env::var(CPU_ISA_ENV) {
            Ok(value) => match Self::parse_cap(&value) {
                Some(cap) => Self::best_up_to(cap),
                None => {
                    eprintln!(
                        "tandem: ignoring {CPU_ISA_ENV}={value:?} (valid: avx512, avx512-noamx, avx512-novnni, \
                         avx2, avx2-novnni, scalar); using {}",
                        Self::detected().name()
                    );
                    Self::detected()
                }
            },
            Err(_) => Self::detected(),
        })
    }

    /// The cap a `TANDEM_CPU_ISA` value names: a family (`avx512`, `avx2`, `scalar`), within
    /// which VNNI is used where the CPU has it, or a family without VNNI (`avx512-novnni`,
    /// `avx2-novnni`: the paths of older CPUs, for comparisons).
    pub fn parse_cap(value: &str) -> Option<CpuIsa> {
        match value.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx-512" | NO_AMX => Some(CpuIsa::Avx512Vnni),
            "avx512-novnni" => Some(CpuIsa::Avx512),
            "avx2" => Some(CpuIsa::AvxVnni),
            "avx2-novnni" => Some(CpuIsa::Avx2),
            "scalar" | "none" => Some(CpuIsa::Scalar),
            _ => None,
        }
    }

    /// At least AVX2 with FMA (both AVX-512 levels included).
    pub fn has_avx2(self) -> bool {
        self >= CpuIsa::Avx2
    }
}

/// The `TANDEM_CPU_ISA` value that keeps AVX-512 but leaves AMX's tiles unused.
pub const NO_AMX: &str = "avx512-noamx";

/// Whether the bf16 products may use AMX tiles (`ops::matmul::amx`): the CPU reports AMX-TILE
/// and AMX-BF16, Linux grants this process the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`:
/// a CPU flag is not permission, and a VM may not have the state enabled), the active level
/// is AVX-512 with VNNI and `TANDEM_CPU_ISA` is not [`NO_AMX`]. Asked once per process; a
/// refusal leaves the AVX-512 BF16 path.
pub fn amx_bf16() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        let capped = std::env::var(CPU_ISA_ENV).is_ok_and(|v| v.trim().eq_ignore_ascii_case(NO_AMX));
        !capped && CpuIsa::active() >= CpuIsa::Avx512Vnni && amx_permitted()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_permitted() -> bool {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 7 exists on every CPU with AVX-512 (checked by the caller first).
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for a permission; it touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_permitted() -> bool {
    false
}

impl std::fmt::Display for CpuIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_pick_the_best_level_below_them() {
        assert_eq!(CpuIsa::parse_cap("AVX2"), Some(CpuIsa::AvxVnni));
        assert_eq!(CpuIsa::parse_cap("avx2-novnni"), Some(CpuIsa::Avx2));
        assert_eq!(CpuIsa::parse_cap("scalar"), Some(CpuIsa::Scalar));
        assert_eq!(CpuIsa::parse_cap("sse"), None);
        assert_eq!(CpuIsa::best_up_to(CpuIsa::Scalar), CpuIsa::Scalar);
        let best = CpuIsa::best_up_to(CpuIsa::AvxVnni);
        assert!(best <= CpuIsa::AvxVnni && best.supported());
        assert!(CpuIsa::detected().supported());
    }
}
