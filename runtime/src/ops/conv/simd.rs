//! The vector helpers the convolution kernels are written with, once per instruction set:
//! each module has the vector type `V`, its `LANES` and the same functions, so that a kernel's
//! body, written once as a macro, expands in either (`pointwise`, `depthwise`). Every helper
//! is compiled for its module's features; callers run them only on CPUs that have them.

/// Defines `row_taps`, from the module's helpers: the three taps (kx = 0, 1, 2) of input row
/// `iy` of an `h × w` plane at `x` for the strip of output columns from `c`, with padding 1
/// and stride 1 or 2: tap kx of lane l is input column s·(c + l) + kx − 1, zero outside the
/// plane. At stride 2 those are the even lanes of the 2·LANES values from 2c + kx − 1.
#[cfg(target_arch = "x86_64")]
macro_rules! row_taps {
    ($features:literal) => {
        /// Unsafe: the CPU must have the module's features; x points at an `h × w` plane.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::ops::conv) unsafe fn row_taps(
            x: *const f32,
            (h, w): (usize, usize),
            stride: usize,
            iy: isize,
            c: isize,
        ) -> [V; 3] {
            let mut v = [zero(); 3];
            if !(0..h as isize).contains(&iy) {
                return v;
            }
            let (wi, lanes) = (w as isize, LANES as isize);
            for (kx, v) in v.iter_mut().enumerate() {
                let first = stride as isize * c + kx as isize - 1;
                // Value j from `at` is input column first + j, inside for j in [−first, w − first).
                let at = x.wrapping_offset(iy * wi + first);
                // SAFETY: only values inside the row are read (the masks).
                *v = unsafe {
                    let lo = load_part(at, mask(-first, wi - first));
                    if stride == 1 {
                        lo
                    } else {
                        evens(lo, load_part(at.wrapping_offset(lanes), mask(-first - lanes, wi - first - lanes)))
                    }
                };
            }
            v
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    pub(in crate::ops::conv) type V = __m512;
    pub(in crate::ops::conv) type Mask = __mmask16;
    pub(in crate::ops::conv) const LANES: usize = 16;

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn zero() -> V {
        _mm512_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn splat(v: f32) -> V {
        _mm512_set1_ps(v)
    }
    /// Lanes `lo..hi` (clipped to the vector; empty when `hi <= lo`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn mask(lo: isize, hi: isize) -> Mask {
        let bits = |n: isize| ((1u32 << n.clamp(0, LANES as isize)) - 1) as u16;
        bits(hi) & !bits(lo)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) unsafe fn load(p: *const f32) -> V {
        unsafe { _mm512_loadu_ps(p) }
    }
    /// Lanes outside `m` read nothing (no fault, whatever the address) and are zero.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) unsafe fn load_part(p: *const f32, m: Mask) -> V {
        unsafe { _mm512_maskz_loadu_ps(m, p) }
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn fma(a: V, b: V, c: V) -> V {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn add(a: V, b: V) -> V {
        _mm512_add_ps(a, b)
    }
    /// `min(max(v, lo), hi)`, NaN kept: with the bound first, `max`/`min` return the second
    /// operand, v, when it is NaN (as `elementwise::clamp`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn clamp(v: V, lo: f32, hi: f32) -> V {
        _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), v))
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) unsafe fn store(p: *mut f32, v: V) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    /// Writes only the lanes in `m`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) unsafe fn store_part(p: *mut f32, v: V, m: Mask) {
        unsafe { _mm512_mask_storeu_ps(p, m, v) }
    }
    /// Asks for the cache line at `p` (no fault, whatever the address).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn prefetch(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast())
    }
    /// The sum of the lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn sum(v: V) -> f32 {
        _mm512_reduce_add_ps(v)
    }
    /// `b`'s lanes in `m`, `a`'s elsewhere.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn merge(a: V, b: V, m: Mask) -> V {
        _mm512_mask_blend_ps(m, a, b)
    }
    /// The even lanes of `a` then of `b`: `[a0, a2, …, a14, b0, b2, …, b14]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn evens(a: V, b: V) -> V {
        let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        _mm512_permutex2var_ps(a, idx, b)
    }

    row_taps!("avx512f,avx2,fma");
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    pub(in crate::ops::conv) type V = __m256;
    pub(in crate::ops::conv) type Mask = __m256i;
    pub(in crate::ops::conv) const LANES: usize = 8;

    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn zero() -> V {
        _mm256_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn splat(v: f32) -> V {
        _mm256_set1_ps(v)
    }
    /// Lanes `lo..hi` (clipped to the vector; empty when `hi <= lo`).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn mask(lo: isize, hi: isize) -> Mask {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let (lo, hi) = (lo.clamp(-1, LANES as isize) as i32, hi.clamp(-1, LANES as isize) as i32);
        let below_hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), lane);
        let from_lo = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(lo - 1));
        _mm256_and_si256(below_hi, from_lo)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) unsafe fn load(p: *const f32) -> V {
        unsafe { _mm256_loadu_ps(p) }
    }
    /// Lanes outside `m` read nothing (no fault, whatever the address) and are zero.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) unsafe fn load_part(p: *const f32, m: Mask) -> V {
        unsafe { _mm256_maskload_ps(p, m) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::ops::conv) fn fma(a: V, b: V, c: V) -> V {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn add(a: V, b: V) -> V {
        _mm256_add_ps(a, b)
    }
    /// As the AVX-512 clamp: NaN kept.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn clamp(v: V, lo: f32, hi: f32) -> V {
        _mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), v))
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) unsafe fn store(p: *mut f32, v: V) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    /// Writes only the lanes in `m`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) unsafe fn store_part(p: *mut f32, v: V, m: Mask) {
        unsafe { _mm256_maskstore_ps(p, m, v) }
    }
    /// Asks for the cache line at `p` (no fault, whatever the address).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn prefetch(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast())
    }
    /// The sum of the lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn sum(v: V) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
    }
    /// `b`'s lanes in `m`, `a`'s elsewhere.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn merge(a: V, b: V, m: Mask) -> V {
        _mm256_blendv_ps(a, b, _mm256_castsi256_ps(m))
    }
    /// The even lanes of `a` then of `b`: `[a0, a2, a4, a6, b0, b2, b4, b6]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn evens(a: V, b: V) -> V {
        // [a0, a2, b0, b2, a4, a6, b4, b6], then its 64-bit pairs reordered.
        let mixed = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(mixed)))
    }

    row_taps!("avx2,fma");
}
