//! The vector helpers the convolution kernels are written with, once per instruction set:
//! each module has the vector type `V`, its `LANES` and the same functions, so that a kernel's
//! body, written once as a macro, expands in either (`pointwise`, `depthwise`). Every helper
//! is compiled for its module's features; callers run them only on CPUs that have them.

/// Defines `row_taps`, from the module's helpers: the three taps (kx = 0, 1, 2) of input row
/// `iy` of an `h × w` plane at `x` for the strip of output columns from `c`, with padding 1
/// and stride 1 or 2: tap kx of lane l is input column s·(c + l) + kx − 1, zero outside the
/// plane. At stride 2 those are the even lanes of the 2·LANES values from 2c + kx − 1.
/// `INSIDE`: the caller knows that every value loaded lies in the row (`strip_inside`), so
/// plain loads replace the masked ones (AVX2's `vmaskmovps` costs more than a load, on Zen 1
/// several times more). Without `ORDERED`, stride 2's taps come in `evens_unordered`'s lane
/// order, for the caller to put its sums in order (`in_order`). Also defines `strip_inside`.
#[cfg(target_arch = "x86_64")]
macro_rules! row_taps {
    ($features:literal) => {
        /// Unsafe: the CPU must have the module's features; x points at an `h × w` plane.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::ops::conv) unsafe fn row_taps<const INSIDE: bool, const ORDERED: bool>(
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
            // Values read, from the plane's start: s·c − 1 + iy·w up to s·c + 1 + s·LANES
            // (exclusive). Where all lie in the plane, whole vectors are loaded and the lanes
            // outside the row zeroed (`load_and`); only a plane's first and last rows mask.
            let read_from = iy * wi + stride as isize * c - 1;
            let in_plane = read_from >= 0 && read_from + 2 + stride as isize * lanes <= h as isize * wi;
            // Value j from `first` is input column first + j, inside the row for j in
            // [−first, w − first). SAFETY (callers): only values inside the row are read (the
            // masks, or INSIDE), or inside the plane (in_plane) with the rest zeroed.
            let part = |first: isize, j: isize| {
                let at = x.wrapping_offset(iy * wi + first + j);
                let m = mask(-first - j, wi - first - j);
                unsafe {
                    match (INSIDE, in_plane) {
                        (true, _) => load(at),
                        (false, true) => load_and(at, m),
                        (false, false) => load_part(at, m),
                    }
                }
            };
            let c = stride as isize * c;
            if stride == 1 {
                for (kx, v) in v.iter_mut().enumerate() {
                    *v = part(c + kx as isize - 1, 0);
                }
            } else {
                // Taps 0 and 1 are the even and odd values of the 2·LANES from 2c − 1, tap 2
                // the even ones from 2c + 1: four loads.
                let (a, b) = (part(c - 1, 0), part(c - 1, lanes));
                let (d, e) = (part(c + 1, 0), part(c + 1, lanes));
                v = match ORDERED {
                    true => [evens(a, b), odds(a, b), evens(d, e)],
                    false => [evens_unordered(a, b), odds_unordered(a, b), evens_unordered(d, e)],
                };
            }
            v
        }

        /// Whether the taps of the strip of output columns from `c` (at stride 1 or 2) read
        /// only inside a row `w` wide: input columns s·c − 1 to s·c + s·LANES (two vectors at
        /// stride 2, one at stride 1 and its two neighbours).
        #[inline]
        pub(in crate::ops::conv) fn strip_inside(w: usize, stride: usize, c: usize) -> bool {
            stride * c >= 1 && stride * c + stride * LANES < w
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
    /// `load_part` where the whole vector at `p` may be read: a masked load is as cheap here.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) unsafe fn load_and(p: *const f32, m: Mask) -> V {
        unsafe { load_part(p, m) }
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
    /// Writes lanes `0..n` (all for n >= LANES).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) unsafe fn store_first(p: *mut f32, v: V, n: usize) {
        unsafe { _mm512_mask_storeu_ps(p, mask(0, n as isize), v) }
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
    /// The odd lanes of `a` then of `b`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn odds(a: V, b: V) -> V {
        let idx = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        _mm512_permutex2var_ps(a, idx, b)
    }
    /// `odds` in `evens_unordered`'s lane order: here in order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn odds_unordered(a: V, b: V) -> V {
        odds(a, b)
    }
    /// `evens` in the lane order `in_order` undoes: here already in order (one permute).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn evens_unordered(a: V, b: V) -> V {
        evens(a, b)
    }
    /// The lanes of a sum of `evens_unordered` vectors in column order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::conv) fn in_order(v: V) -> V {
        v
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
    /// `load_part` where the whole vector at `p` may be read: a plain load, the lanes outside
    /// `m` zeroed (NaN included). `vmaskmovps` costs several plain loads on Zen 1.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) unsafe fn load_and(p: *const f32, m: Mask) -> V {
        unsafe { _mm256_and_ps(_mm256_loadu_ps(p), _mm256_castsi256_ps(m)) }
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
    /// Writes lanes `0..n` (all for n >= LANES) in at most three plain stores of 4, 2 and 1
    /// lanes: `vmaskmovps` to memory costs tens of cycles on Zen 1.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) unsafe fn store_first(p: *mut f32, v: V, n: usize) {
        unsafe {
            if n >= LANES {
                return _mm256_storeu_ps(p, v);
            }
            let (mut at, mut rest, mut n) = (p, _mm256_castps256_ps128(v), n);
            if n >= 4 {
                _mm_storeu_ps(at, rest);
                (at, rest, n) = (at.add(4), _mm256_extractf128_ps::<1>(v), n - 4);
            }
            if n >= 2 {
                _mm_store_sd(at.cast(), _mm_castps_pd(rest));
                (at, rest, n) = (at.add(2), _mm_movehl_ps(rest, rest), n - 2);
            }
            if n == 1 {
                _mm_store_ss(at, rest);
            }
        }
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
        in_order(evens_unordered(a, b))
    }
    /// The even lanes of `a` and `b` in the order one in-lane shuffle leaves them:
    /// `[a0, a2, b0, b2, a4, a6, b4, b6]`. Sums of such vectors (lane by lane, as
    /// stride 2's taps are) are put in column order once, by `in_order`, instead of every tap
    /// (a lane-crossing permute costs two µops and more on Zen 1).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn evens_unordered(a: V, b: V) -> V {
        _mm256_shuffle_ps::<0b10_00_10_00>(a, b)
    }
    /// The odd lanes of `a` then of `b`: `[a1, a3, a5, a7, b1, b3, b5, b7]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn odds(a: V, b: V) -> V {
        in_order(odds_unordered(a, b))
    }
    /// The odd lanes in `evens_unordered`'s order: `[a1, a3, b1, b3, a5, a7, b5, b7]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn odds_unordered(a: V, b: V) -> V {
        _mm256_shuffle_ps::<0b11_01_11_01>(a, b)
    }
    /// The lanes of an `evens_unordered` vector (or of a lane-wise sum of them) in order:
    /// its 64-bit pairs reordered.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(in crate::ops::conv) fn in_order(v: V) -> V {
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
    }

    row_taps!("avx2,fma");
}
