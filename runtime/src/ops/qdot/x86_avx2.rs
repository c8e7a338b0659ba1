//! AVX2 kernels (with FMA and F16C): 32 quants per register. The unsigned-by-signed byte dot
//! is AVX-VNNI's `vpdpbusd` where the CPU has it, else `vpmaddubsw` + `vpmaddwd`.
//!
//! 32-value blocks go in pairs: one F16C conversion gives both blocks' scales, multiplied
//! with the activation's `[d, d·Σq]` pairs to give each block's scale and min term at once.
//! The unsigned weight quants make offsets part of the min term (Q4_0: −8·d), and Q8_0 takes
//! the offset-binary form (q + 128) under VNNI, or the |w|·sign(a, w) form of maddubs.

use super::{ActRow, Dot, Job, Kernel, drive, k_scales_packed, read_u16, read_u32};
use crate::tensor::DType;
use std::arch::x86_64::*;
use std::ops::Range;

pub(super) fn kernel(dtype: DType, vnni: bool) -> Kernel {
    macro_rules! pick {
        ($t:ident) => {
            if vnni { run_vnni::<$t<true>> } else { run::<$t<false>> }
        };
    }
    match dtype {
        DType::Q8_0 => pick!(Q8_0),
        DType::Q4_0 => pick!(Q4_0),
        DType::Q4_1 => pick!(Q4_1),
        DType::Q5_0 => pick!(Q5_0),
        DType::Q4_K => pick!(Q4K),
        DType::Q5_K => pick!(Q5K),
        DType::Q6_K => pick!(Q6K),
        other => unreachable!("no integer kernel for {other} (qdot::supports)"),
    }
}

/// # Safety
/// As [`drive`], on a CPU with AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run<D: Dot>(job: &Job, rows: Range<usize>) {
    // SAFETY: the caller's contract.
    unsafe { drive::<D>(job, rows) }
}

/// # Safety
/// As [`drive`], on a CPU with AVX2, FMA, F16C and AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn run_vnni<D: Dot>(job: &Job, rows: Range<usize>) {
    // SAFETY: the caller's contract.
    unsafe { drive::<D>(job, rows) }
}

/// `acc + Σ u·s` over each 4 bytes (u unsigned, s signed; pairs of u·s must stay within i16
/// without VNNI, as they do for quants below 64, and for |w| ≤ 128 against |a| ≤ 127).
#[inline(always)]
unsafe fn dot_u8i8<const VNNI: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    unsafe {
        if VNNI {
            _mm256_dpbusd_avx_epi32(acc, u, s)
        } else {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
        }
    }
}

/// `acc + Σ a·b` over each 2 i16.
#[inline(always)]
unsafe fn dot_i16<const VNNI: bool>(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    unsafe { if VNNI { _mm256_dpwssd_avx_epi32(acc, a, b) } else { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) } }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
    }
}

/// The 32 quants of a block's 16 nibble bytes: low nibbles first, then the high ones (no
/// cross-lane shuffle: a broadcast load, a shift and a blend).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    unsafe {
        let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        let y = _mm256_blend_epi32(x, _mm256_srli_epi16(x, 4), 0xf0);
        _mm256_and_si256(y, _mm256_set1_epi8(0x0f))
    }
}

/// 0x10 in byte j where bit j of `bits` is set.
#[inline(always)]
unsafe fn fifth_bits(bits: u32) -> __m256i {
    unsafe {
        let v = _mm256_set1_epi32(bits as i32);
        #[rustfmt::skip]
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let bytes = _mm256_shuffle_epi8(v, spread);
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

/// The 32-value block types, shared with the AVX-512 kernels: values are `d·(u − OFFSET)`
/// (+ m for Q4_1) with u the block's unsigned quants.
pub(super) trait Block32 {
    const BYTES: usize;
    const OFFSET: i8;
    /// Has a min (Q4_1): `m · d_a·Σq_a` is added per block.
    const MIN: bool = false;
    /// `[d0, m0, d1, m1]` for the blocks at p0 and p1 (m = 0 without a min).
    unsafe fn scales(p0: *const u8, p1: *const u8) -> __m128;
}

/// `[d0, 0, d1, 0]` from the f16 scales at the start of two blocks.
#[inline(always)]
pub(super) unsafe fn two_scales(p0: *const u8, p1: *const u8) -> __m128 {
    unsafe {
        let (h0, h1) = (u64::from(read_u16(p0)), u64::from(read_u16(p1)));
        _mm_cvtph_ps(_mm_cvtsi64_si128((h0 | (h1 << 32)) as i64))
    }
}

/// `[d0, d0, d1, d1] · [1, off, 1, off]`.
#[inline(always)]
unsafe fn offset_scales(p0: *const u8, p1: *const u8, off: f32) -> __m128 {
    unsafe {
        let (h0, h1) = (u64::from(read_u16(p0)), u64::from(read_u16(p1)));
        let d = _mm_cvtph_ps(_mm_cvtsi64_si128((h0 | (h0 << 16) | (h1 << 32) | (h1 << 48)) as i64));
        _mm_mul_ps(d, _mm_setr_ps(1.0, off, 1.0, off))
    }
}

/// A 32-value block type's AVX2 side. Here the activations are signed and the weight's
/// quants unsigned (`vpdpbusd(u, a)`), and the offset joins the min as a per-block term:
/// `d·d_a·Σ u·a + c·d_a·Σa` with `c = m` or `−OFFSET·d` (on AVX2 the per-block correction of
/// the AVX-512 scheme costs more than this term).
trait Avx2Block: Block32 {
    const VNNI: bool;
    unsafe fn quants(p: *const u8) -> __m256i;
    /// `[d0, c0, d1, c1]`: the factors of the activation's `d` and `d·Σq`.
    unsafe fn side_scales(p0: *const u8, p1: *const u8) -> __m128;
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, a: __m256i) -> __m256i {
        unsafe { if Self::VNNI { dot_u8i8::<true>(acc, u, a) } else { dot_u8i8::<false>(acc, u, a) } }
    }
}

/// A zero block, standing in for the missing second block of an odd count (its scales are 0,
/// so whatever its quants give is multiplied by 0).
pub(super) static ZERO_BLOCK: [u8; 64] = [0; 64];

/// Blocks in pairs, a tile of R activation rows per weight block. Per row and block: the
/// byte dot, its conversion, the block's scale (weight's times activation's) and an FMA;
/// per pair one FMA of the min terms, into the same accumulator (its low lanes 1 and 3).
#[inline(always)]
unsafe fn dot32<T: Avx2Block, const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
    unsafe {
        // An accumulator per block of the pair, for two independent FMA chains, in tiles of
        // every size alike: a row's sum must not depend on how many rows share its tile
        // (batch invariance: a decoder's greedy text is the same whatever else runs with it).
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let lane2 = _mm256_set1_epi32(2);
        for pair in 0..blocks.div_ceil(2) {
            let p0 = w.add(2 * pair * T::BYTES);
            let p1 = if 2 * pair + 1 < blocks { p0.add(T::BYTES) } else { ZERO_BLOCK.as_ptr() };
            let sc = T::side_scales(p0, p1);
            let (d0, d1) = (_mm256_broadcastss_ps(sc), _mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc), lane2));
            // [0, c0, 0, c1]: the min terms land in lanes 1 and 3, the rest adds 0.
            let mins = _mm256_zextps128_ps256(_mm_blend_ps(sc, _mm_setzero_ps(), 0b0101));
            let (w0, w1) = (T::quants(p0), T::quants(p1));
            for r in 0..R {
                let a = rows[r].qs.add(64 * pair);
                let meta = rows[r].meta.add(4 * pair);
                let i0 = T::dot(_mm256_setzero_si256(), w0, _mm256_loadu_si256(a.cast()));
                let i1 = T::dot(_mm256_setzero_si256(), w1, _mm256_loadu_si256(a.add(32).cast()));
                let s0 = _mm256_mul_ps(d0, _mm256_broadcast_ss(&*meta));
                let s1 = _mm256_mul_ps(d1, _mm256_broadcast_ss(&*meta.add(2)));
                acc[r][0] = _mm256_fmadd_ps(mins, _mm256_zextps128_ps256(_mm_loadu_ps(meta)), acc[r][0]);
                acc[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), s0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), s1, acc[r][1]);
            }
        }
        // (Loops, not closures: a closure would not inherit the target features, and the
        // intrinsics in it would become calls.)
        let mut out = [0.0f32; R];
        for r in 0..R {
            let total = _mm256_add_ps(acc[r][0], acc[r][1]);
            out[r] = hsum(total);
        }
        out
    }
}

macro_rules! block32 {
    ($t:ident) => {
        pub(super) struct $t<const VNNI: bool>;
        impl<const VNNI: bool> Dot for $t<VNNI> {
            #[inline(always)]
            unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
                unsafe { dot32::<Self, R>(w, blocks, rows) }
            }
        }
    };
}

block32!(Q4_0);
impl<const VNNI: bool> Block32 for Q4_0<VNNI> {
    const BYTES: usize = 18;
    const OFFSET: i8 = 8;
    #[inline(always)]
    unsafe fn scales(p0: *const u8, p1: *const u8) -> __m128 {
        unsafe { two_scales(p0, p1) }
    }
}
impl<const VNNI: bool> Avx2Block for Q4_0<VNNI> {
    const VNNI: bool = VNNI;
    #[inline(always)]
    unsafe fn quants(p: *const u8) -> __m256i {
        unsafe { nibbles(p.add(2)) }
    }
    #[inline(always)]
    unsafe fn side_scales(p0: *const u8, p1: *const u8) -> __m128 {
        unsafe { offset_scales(p0, p1, -8.0) }
    }
}

block32!(Q4_1);
impl<const VNNI: bool> Block32 for Q4_1<VNNI> {
    const BYTES: usize = 20;
    const OFFSET: i8 = 0;
    const MIN: bool = true;
    /// `d` and `m` sit side by side: one conversion gives `[d0, m0, d1, m1]`.
    #[inline(always)]
    unsafe fn scales(p0: *const u8, p1: *const u8) -> __m128 {
        unsafe { _mm_cvtph_ps(_mm_cvtsi64_si128((u64::from(read_u32(p0)) | (u64::from(read_u32(p1)) << 32)) as i64)) }
    }
}
impl<const VNNI: bool> Avx2Block for Q4_1<VNNI> {
    const VNNI: bool = VNNI;
    #[inline(always)]
    unsafe fn quants(p: *const u8) -> __m256i {
        unsafe { nibbles(p.add(4)) }
    }
    #[inline(always)]
    unsafe fn side_scales(p0: *const u8, p1: *const u8) -> __m128 {
        unsafe { Self::scales(p0, p1) }
    }
}

block32!(Q5_0);
impl<const VNNI: bool> Block32 for Q5_0<VNNI> {
    const BYTES: usize = 22;
    const OFFSET: i8 = 16;
    #[inline(always)]
    unsafe fn scales(p0: *const u8, p1: *const u8) -> __m128 {
        unsafe { two_scales(p0, p1) }
    }
}
impl<const VNNI: bool> Avx2Block for Q5_0<VNNI> {
    const VNNI: bool = VNNI;
    #[inline(always)]
    unsafe fn quants(p: *const u8) -> __m256i {
        unsafe { _mm256_or_si256(nibbles(p.add(6)), fifth_bits(read_u32(p.add(2)))) }
    }
    #[inline(always)]
    unsafe fn side_scales(p0: *const u8, p1: *const u8) -> __m128 {
        unsafe { offset_scales(p0, p1, -16.0) }
    }
}

// Q8_0: the unsigned form of its i8 quants is `q + 128` (xor 0x80): OFFSET 128, which as a
// wrapping i8 is −128. On AVX2 with VNNI the quants go in offset (min term −128·d); without,
// `(q + 128)·a` pairs would overflow vpmaddubsw's i16, and the product is `|q| · sign(a, q)`.
block32!(Q8_0);
impl<const VNNI: bool> Block32 for Q8_0<VNNI> {
    const BYTES: usize = 34;
    const OFFSET: i8 = -128;
    #[inline(always)]
    unsafe fn scales(p0: *const u8, p1: *const u8) -> __m128 {
        unsafe { two_scales(p0, p1) }
    }
}
impl<const VNNI: bool> Avx2Block for Q8_0<VNNI> {
    const VNNI: bool = VNNI;
    #[inline(always)]
    unsafe fn quants(p: *const u8) -> __m256i {
        unsafe {
            let q = _mm256_loadu_si256(p.add(2).cast());
            if VNNI { _mm256_xor_si256(q, _mm256_set1_epi8(-128)) } else { q }
        }
    }
    #[inline(always)]
    unsafe fn side_scales(p0: *const u8, p1: *const u8) -> __m128 {
        unsafe { offset_scales(p0, p1, if VNNI { -128.0 } else { 0.0 }) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, u: __m256i, a: __m256i) -> __m256i {
        unsafe {
            if VNNI {
                dot_u8i8::<true>(acc, u, a)
            } else {
                dot_u8i8::<false>(acc, _mm256_abs_epi8(u), _mm256_sign_epi8(a, u))
            }
        }
    }
}

/// pshufb patterns broadcasting i16 lane s of a register (in both 128-bit halves).
#[inline(always)]
unsafe fn word_broadcast(v: __m256i, s: usize) -> __m256i {
    unsafe {
        let lo = (2 * s) as i8;
        let pattern = _mm256_set1_epi16(i16::from_le_bytes([lo as u8, lo as u8 + 1]));
        _mm256_shuffle_epi8(v, pattern)
    }
}

/// Q4_K and Q5_K: `d·d_a · Σ_s sc_s·(q·a)_s − dmin·d_a · Σ_s m_s·Σa_s`, the scales applied to
/// maddubs's i16 pair sums, the mins against the activation's per-16 sums.
#[inline(always)]
unsafe fn k_dot<const VNNI: bool, const FIVE: bool, const R: usize>(
    w: *const u8,
    blocks: usize,
    rows: &[ActRow; R],
) -> [f32; R] {
    const Q4K: usize = 144;
    const Q5K: usize = 176;
    let bytes = if FIVE { Q5K } else { Q4K };
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut mins = [_mm256_setzero_ps(); R];
        let low = _mm256_set1_epi8(0x0f);
        for b in 0..blocks {
            let p = w.add(b * bytes);
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(read_u32(p) as i32));
            let (d, dmin) = (_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_movehdup_ps(dd)));
            let (sc, mn) = k_scales_packed(p.add(4));
            let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
            let mn = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
            let mn = _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn));
            let qs = p.add(if FIVE { 48 } else { 16 });
            let qh = if FIVE { _mm256_loadu_si256(p.add(16).cast()) } else { _mm256_setzero_si256() };
            let mut isum = [_mm256_setzero_si256(); R];
            for i in 0..4 {
                let q = _mm256_loadu_si256(qs.add(32 * i).cast());
                let mut lo = _mm256_and_si256(q, low);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
                if FIVE {
                    let (m0, m1) = (_mm256_set1_epi8(1 << (2 * i)), _mm256_set1_epi8((1u8 << (2 * i + 1)) as i8));
                    let fifth = _mm256_set1_epi8(0x10);
                    lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, m0), m0), fifth));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, m1), m1), fifth));
                }
                let (s_lo, s_hi) = (word_broadcast(sc, 2 * i), word_broadcast(sc, 2 * i + 1));
                for r in 0..R {
                    let a = rows[r].qs.add(256 * b + 64 * i);
                    let p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(a.cast()));
                    let p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(a.add(32).cast()));
                    isum[r] = dot_i16::<VNNI>(isum[r], p_lo, s_lo);
                    isum[r] = dot_i16::<VNNI>(isum[r], p_hi, s_hi);
                }
            }
            for r in 0..R {
                let d_a = *rows[r].meta.add(b);
                let m = _mm256_madd_epi16(mn, _mm256_loadu_si256(rows[r].bsums.add(16 * b).cast()));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * d_a), acc[r]);
                mins[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(dmin * d_a), mins[r]);
            }
        }
        let mut out = [0.0f32; R];
        for r in 0..R {
            out[r] = hsum(acc[r]) - hsum(mins[r]);
        }
        out
    }
}

pub(super) struct Q4K<const VNNI: bool>;
impl<const VNNI: bool> Dot for Q4K<VNNI> {
    #[inline(always)]
    unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
        unsafe { k_dot::<VNNI, false, R>(w, blocks, rows) }
    }
}

pub(super) struct Q5K<const VNNI: bool>;
impl<const VNNI: bool> Dot for Q5K<VNNI> {
    #[inline(always)]
    unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
        unsafe { k_dot::<VNNI, true, R>(w, blocks, rows) }
    }
}

/// Q6_K: the unsigned 6-bit quants against the activation, each 16's i16 sums times its
/// scale, less `32 · Σ_j sc_j · Σa_j` (the offset) from the activation's per-16 sums.
pub(super) struct Q6K<const VNNI: bool>;
impl<const VNNI: bool> Dot for Q6K<VNNI> {
    #[inline(always)]
    unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let (low, high) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
            for b in 0..blocks {
                let p = w.add(210 * b);
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(read_u16(p.add(208))))));
                let scales = _mm_loadu_si128(p.add(192).cast());
                let all = _mm256_cvtepi8_epi16(scales);
                let mut isum = [_mm256_setzero_si256(); R];
                for r in 0..R {
                    let offset = _mm256_madd_epi16(all, _mm256_loadu_si256(rows[r].bsums.add(16 * b).cast()));
                    isum[r] = _mm256_sub_epi32(isum[r], _mm256_slli_epi32(offset, 5));
                }
                for h in 0..2 {
                    let ql0 = _mm256_loadu_si256(p.add(64 * h).cast());
                    let ql1 = _mm256_loadu_si256(p.add(64 * h + 32).cast());
                    let qh = _mm256_loadu_si256(p.add(128 + 32 * h).cast());
                    for t in 0..4 {
                        let ql = if t % 2 == 0 { ql0 } else { ql1 };
                        let lo = if t < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
                        let hi = match t {
                            0 => _mm256_slli_epi16(qh, 4),
                            1 => _mm256_slli_epi16(qh, 2),
                            2 => qh,
                            _ => _mm256_srli_epi16(qh, 2),
                        };
                        let q = _mm256_or_si256(_mm256_and_si256(lo, low), _mm256_and_si256(hi, high));
                        // Sub-blocks j and j + 1 (16 values each): their scales in the two halves.
                        let j = (8 * h + 2 * t) as i8;
                        let pick = _mm_setr_epi8(
                            j,
                            j,
                            j,
                            j,
                            j,
                            j,
                            j,
                            j,
                            j + 1,
                            j + 1,
                            j + 1,
                            j + 1,
                            j + 1,
                            j + 1,
                            j + 1,
                            j + 1,
                        );
                        let s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
                        for r in 0..R {
                            let a = _mm256_loadu_si256(rows[r].qs.add(256 * b + 128 * h + 32 * t).cast());
                            isum[r] = dot_i16::<VNNI>(isum[r], _mm256_maddubs_epi16(q, a), s);
                        }
                    }
                }
                for r in 0..R {
                    let d_a = *rows[r].meta.add(b);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * d_a), acc[r]);
                }
            }
            let mut out = [0.0f32; R];
            for r in 0..R {
                out[r] = hsum(acc[r]);
            }
            out
        }
    }
}

/// The largest |x| of 32 values at `p`, and the 4 registers holding them.
#[inline(always)]
unsafe fn load_amax(p: *const f32) -> ([__m256; 4], f32) {
    unsafe {
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        let sign = _mm256_set1_ps(-0.0);
        let (a0, a1) = (_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
        let (a2, a3) = (_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
        let m = _mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        (v, _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m))))
    }
}

/// `round(v · id)` (ties to even) as 32 bytes at `q`, xor `flip`; returns the i32 lanes of
/// values 0–15 and 16–31 summed lane-wise (for block and half-block sums).
#[inline(always)]
unsafe fn store_quants(v: [__m256; 4], id: f32, flip: i8, q: *mut u8) -> (__m256i, __m256i) {
    unsafe {
        let id = _mm256_set1_ps(id);
        let mut i = [_mm256_setzero_si256(); 4];
        for j in 0..4 {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v[j], id));
            i[j] = _mm256_cvtps_epi32(r);
        }
        // packs work per 128-bit lane: bytes come out in dword order 0 4 1 5 2 6 3 7.
        let b = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // Never −128 (only a NaN input could get there): the kernels' sign tricks need ±127.
        let b = _mm256_max_epi8(b, _mm256_set1_epi8(-127));
        _mm256_storeu_si256(q.cast(), _mm256_xor_si256(b, _mm256_set1_epi8(flip)));
        (_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]))
    }
}

#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    unsafe {
        let x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let x = _mm_add_epi32(x, _mm_unpackhi_epi64(x, x));
        _mm_cvtsi128_si32(_mm_add_epi32(x, _mm_shuffle_epi32(x, 1)))
    }
}

/// `qdot::quantize_blocks_32` in AVX2: the same quants (xor `flip`) and scales.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_32(x: &[f32], qs: &mut [u8], meta: &mut [f32], flip: i8) {
    let blocks = (x.len() / 32).min(qs.len() / 32).min(meta.len() / 2);
    for b in 0..blocks {
        // SAFETY: block b lies within x, qs and meta (the bounds just above).
        unsafe {
            let (v, amax) = load_amax(x.as_ptr().add(32 * b));
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let (lo, hi) = store_quants(v, id, flip, qs.as_mut_ptr().add(32 * b));
            let sum = hsum_i32(_mm256_add_epi32(lo, hi));
            meta[2 * b..2 * b + 2].copy_from_slice(&super::block_32_meta(amax, sum));
        }
    }
}

/// `qdot::quantize_blocks_256` in AVX2: the same quants, scales and sums.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_256(x: &[f32], qs: &mut [u8], d: &mut [f32], bsums: &mut [i16]) {
    let blocks = (x.len() / 256).min(qs.len() / 256).min(d.len()).min(bsums.len() / 16);
    for b in 0..blocks {
        // SAFETY: block b lies within x, qs, d and bsums (the bounds just above).
        unsafe {
            let p = x.as_ptr().add(256 * b);
            let mut amax = 0.0f32;
            for c in 0..8 {
                amax = amax.max(load_amax(p.add(32 * c)).1);
            }
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            for c in 0..8 {
                let (v, _) = load_amax(p.add(32 * c));
                let (lo, hi) = store_quants(v, id, 0, qs.as_mut_ptr().add(256 * b + 32 * c));
                bsums[16 * b + 2 * c] = hsum_i32(lo) as i16;
                bsums[16 * b + 2 * c + 1] = hsum_i32(hi) as i16;
            }
            d[b] = super::block_256_scale(id);
        }
    }
}
