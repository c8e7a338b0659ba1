//! AVX-512 kernels (F, BW, VL with FMA and F16C): 64 quants per register, two 32-value
//! blocks or a quarter of a 256-value one. The byte dot is `vpdpbusd` (AVX512-VNNI) where the
//! CPU has it, else `vpmaddubsw` + `vpmaddwd`; the i16 dot with the K types' scales is
//! `vpdpwssd` or `vpmaddwd`. Fifth bits (Q5_0, Q5_K) go in through byte masks.

use super::x86_avx2::{Block32, ZERO_BLOCK};
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
/// As [`drive`], on a CPU with AVX-512 F, BW, VL, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn run<D: Dot>(job: &Job, rows: Range<usize>) {
    // SAFETY: the caller's contract.
    unsafe { drive::<D>(job, rows) }
}

/// # Safety
/// As [`drive`], on a CPU with AVX-512 F, BW, VL, VNNI, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn run_vnni<D: Dot>(job: &Job, rows: Range<usize>) {
    // SAFETY: the caller's contract.
    unsafe { drive::<D>(job, rows) }
}

/// `acc + Σ u·s` over each 4 bytes (u unsigned, s signed; see the AVX2 twin for the range).
#[inline(always)]
unsafe fn dot_u8i8<const VNNI: bool>(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
    unsafe {
        if VNNI {
            _mm512_dpbusd_epi32(acc, u, s)
        } else {
            _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)))
        }
    }
}

/// `acc + Σ a·b` over each 2 i16.
#[inline(always)]
unsafe fn dot_i16<const VNNI: bool>(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    unsafe { if VNNI { _mm512_dpwssd_epi32(acc, a, b) } else { _mm512_add_epi32(acc, _mm512_madd_epi16(a, b)) } }
}

/// The quants of two 16-byte nibble runs (blocks at p and q): p's low then high nibbles, then
/// q's. Broadcast loads and masked operations, no cross-lane shuffle (port 5 is the one that
/// shuffles, and the one every 512-bit operation competes for).
#[inline(always)]
unsafe fn nibbles2(p: *const u8, q: *const u8) -> __m512i {
    unsafe {
        let z = _mm512_broadcast_i32x4(_mm_loadu_si128(p.cast()));
        let z = _mm512_mask_broadcast_i32x4(z, 0xff00, _mm_loadu_si128(q.cast()));
        // Lanes 1 and 3 (i16 elements 8–15 and 24–31) take the high nibbles.
        let z = _mm512_mask_srli_epi16(z, 0xff00_ff00, z, 4);
        _mm512_and_si512(z, _mm512_set1_epi8(0x0f))
    }
}

/// A 32-value block type's AVX-512 side: the unsigned quants of two blocks as one register,
/// and one activation row's dot with them.
///
/// Here the activations come offset by 128 (unsigned, `a + 128`) and the weight's quants go
/// in signed (`s = u − OFFSET`), so `vpdpbusd(a + 128, s) = Σ a·s + 128·Σ s`: the correction
/// `−128·Σ s` depends on the weight alone, is made once per block pair (one more
/// `vpdpbusd`: `−128·Σ u + 128·32·OFFSET`) and starts the sum of every activation row, which
/// leaves no per-row offset term; the activation's scales come from its table, one load.
trait Avx512Block: Block32 {
    const VNNI: bool;
    unsafe fn quants2(p0: *const u8, p1: *const u8) -> __m512i;
    /// `start + Σ (a + 128)·s` per 4 bytes.
    #[inline(always)]
    unsafe fn dot_row(start: __m512i, a_u: __m512i, s: __m512i) -> __m512i {
        unsafe { if Self::VNNI { dot_u8i8::<true>(start, a_u, s) } else { dot_u8i8::<false>(start, a_u, s) } }
    }
    /// What starts each row's sum: `−128 · Σ s` per 4 bytes.
    #[inline(always)]
    unsafe fn correction(u: __m512i) -> __m512i {
        unsafe {
            let start = _mm512_set1_epi32(512 * i32::from(Self::OFFSET));
            let minus128 = _mm512_set1_epi8(-128);
            if Self::VNNI { dot_u8i8::<true>(start, u, minus128) } else { dot_u8i8::<false>(start, u, minus128) }
        }
    }
}

/// Blocks in pairs, a tile of up to 8 activation rows per pair. Per row and pair: the byte
/// dot (started from the weight's correction), its conversion, the two blocks' scales
/// (weight's times the activation's from its table) and one FMA; for Q4_1 one FMA of the min
/// terms.
#[inline(always)]
unsafe fn dot32<T: Avx512Block, const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
    unsafe {
        let mut acc = [_mm512_setzero_ps(); R];
        // Block 0's scale (lane 0) in the low 8 lanes, block 1's (lane 2) in the high 8.
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
        let offset = _mm512_set1_epi8(T::OFFSET);
        for pair in 0..blocks.div_ceil(2) {
            let p0 = w.add(2 * pair * T::BYTES);
            let p1 = if 2 * pair + 1 < blocks { p0.add(T::BYTES) } else { ZERO_BLOCK.as_ptr() };
            let sc = T::scales(p0, p1);
            let d = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(sc));
            // Q4_1: [0, m0, 0, m1] against the activation's [d0, d0·Σq0, d1, d1·Σq1]: the min
            // terms land in lanes 1 and 3 of the accumulator, the rest adds 0.
            let mins = _mm512_zextps128_ps512(_mm_blend_ps(sc, _mm_setzero_ps(), 0b0101));
            let u = T::quants2(p0, p1);
            let s = _mm512_sub_epi8(u, offset);
            let c = T::correction(u);
            for r in 0..R {
                if T::MIN {
                    let meta = _mm512_zextps128_ps512(_mm_loadu_ps(rows[r].meta.add(4 * pair)));
                    acc[r] = _mm512_fmadd_ps(mins, meta, acc[r]);
                }
                let i = T::dot_row(c, _mm512_loadu_si512(rows[r].qs.add(64 * pair).cast()), s);
                let e = _mm512_mul_ps(d, _mm512_loadu_ps(rows[r].table.add(16 * pair)));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), e, acc[r]);
            }
        }
        // (Loops, not closures: see the AVX2 twin.)
        let mut out = [0.0f32; R];
        for r in 0..R {
            out[r] = _mm512_reduce_add_ps(acc[r]);
        }
        out
    }
}

macro_rules! block32 {
    ($t:ident) => {
        pub(super) struct $t<const VNNI: bool>;
        impl<const VNNI: bool> Dot for $t<VNNI> {
            const MAX_ROWS: usize = 8;
            #[inline(always)]
            unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
                unsafe { dot32::<Self, R>(w, blocks, rows) }
            }
        }
        impl<const VNNI: bool> Block32 for $t<VNNI> {
            const BYTES: usize = <super::x86_avx2::$t<VNNI> as Block32>::BYTES;
            const OFFSET: i8 = <super::x86_avx2::$t<VNNI> as Block32>::OFFSET;
            const MIN: bool = <super::x86_avx2::$t<VNNI> as Block32>::MIN;
            #[inline(always)]
            unsafe fn scales(p0: *const u8, p1: *const u8) -> __m128 {
                unsafe { <super::x86_avx2::$t<VNNI> as Block32>::scales(p0, p1) }
            }
        }
    };
}

block32!(Q4_0);
impl<const VNNI: bool> Avx512Block for Q4_0<VNNI> {
    const VNNI: bool = VNNI;
    #[inline(always)]
    unsafe fn quants2(p0: *const u8, p1: *const u8) -> __m512i {
        unsafe { nibbles2(p0.add(2), p1.add(2)) }
    }
}

block32!(Q4_1);
impl<const VNNI: bool> Avx512Block for Q4_1<VNNI> {
    const VNNI: bool = VNNI;
    #[inline(always)]
    unsafe fn quants2(p0: *const u8, p1: *const u8) -> __m512i {
        unsafe { nibbles2(p0.add(4), p1.add(4)) }
    }
}

block32!(Q5_0);
impl<const VNNI: bool> Avx512Block for Q5_0<VNNI> {
    const VNNI: bool = VNNI;
    #[inline(always)]
    unsafe fn quants2(p0: *const u8, p1: *const u8) -> __m512i {
        unsafe {
            let q = nibbles2(p0.add(6), p1.add(6));
            let bits = u64::from(read_u32(p0.add(2))) | (u64::from(read_u32(p1.add(2))) << 32);
            _mm512_mask_add_epi8(q, bits, q, _mm512_set1_epi8(0x10))
        }
    }
}

// Q8_0 as in the AVX2 twin: `q + 128` unsigned, the stored byte signed; without VNNI the
// activation goes back to signed and the product is `|q| · sign(a, q)`.
block32!(Q8_0);
impl<const VNNI: bool> Avx512Block for Q8_0<VNNI> {
    const VNNI: bool = VNNI;
    #[inline(always)]
    unsafe fn quants2(p0: *const u8, p1: *const u8) -> __m512i {
        unsafe {
            let q = _mm512_castsi256_si512(_mm256_loadu_si256(p0.add(2).cast()));
            let q = _mm512_mask_broadcast_i64x4(q, 0xf0, _mm256_loadu_si256(p1.add(2).cast()));
            _mm512_xor_si512(q, _mm512_set1_epi8(-128))
        }
    }
    #[inline(always)]
    unsafe fn correction(u: __m512i) -> __m512i {
        unsafe {
            if VNNI {
                dot_u8i8::<true>(_mm512_set1_epi32(65536), u, _mm512_set1_epi8(-128))
            } else {
                _mm512_setzero_si512()
            }
        }
    }
    #[inline(always)]
    unsafe fn dot_row(start: __m512i, a_u: __m512i, s: __m512i) -> __m512i {
        unsafe {
            if VNNI {
                dot_u8i8::<true>(start, a_u, s)
            } else {
                // |s| · sign(a, s): AVX-512 has no vpsignb; negate a where s < 0.
                let a = _mm512_xor_si512(a_u, _mm512_set1_epi8(-128));
                let a = _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(s), _mm512_setzero_si512(), a);
                dot_u8i8::<false>(start, _mm512_abs_epi8(s), a)
            }
        }
    }
}

/// i16 lane indices `[a ×16, b ×16]` (Q4_K/Q5_K: the scales of sub-blocks a and b).
#[inline(always)]
unsafe fn halves(a: i16, b: i16) -> __m512i {
    unsafe { _mm512_inserti64x4(_mm512_set1_epi16(a), _mm256_set1_epi16(b), 1) }
}

/// Q4_K and Q5_K, as the AVX2 twin with a pair of sub-blocks per register.
#[inline(always)]
unsafe fn k_dot<const VNNI: bool, const FIVE: bool, const R: usize>(
    w: *const u8,
    blocks: usize,
    rows: &[ActRow; R],
) -> [f32; R] {
    let bytes = if FIVE { 176 } else { 144 };
    unsafe {
        let mut acc = [_mm512_setzero_ps(); R];
        let mut mins = [_mm256_setzero_ps(); R];
        let low = _mm512_set1_epi8(0x0f);
        for b in 0..blocks {
            let p = w.add(b * bytes);
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(read_u32(p) as i32));
            let (d, dmin) = (_mm_cvtss_f32(dd), _mm_cvtss_f32(_mm_movehdup_ps(dd)));
            let (sc, mn) = k_scales_packed(p.add(4));
            let sc = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
            let mn = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
            let mn = _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn));
            let qs = p.add(if FIVE { 48 } else { 16 });
            let qh = if FIVE {
                _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(16).cast()))
            } else {
                _mm512_setzero_si512()
            };
            let mut isum = [_mm512_setzero_si512(); R];
            for i in 0..4 {
                let q = _mm256_loadu_si256(qs.add(32 * i).cast());
                let mut z =
                    _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), low);
                if FIVE {
                    let bit = _mm512_inserti64x4(
                        _mm512_set1_epi8(1 << (2 * i)),
                        _mm256_set1_epi8((1u8 << (2 * i + 1)) as i8),
                        1,
                    );
                    z = _mm512_mask_add_epi8(z, _mm512_test_epi8_mask(qh, bit), z, _mm512_set1_epi8(0x10));
                }
                let s = _mm512_permutexvar_epi16(halves(2 * i as i16, 2 * i as i16 + 1), sc);
                for r in 0..R {
                    let a = _mm512_loadu_si512(rows[r].qs.add(256 * b + 64 * i).cast());
                    isum[r] = dot_i16::<VNNI>(isum[r], _mm512_maddubs_epi16(z, a), s);
                }
            }
            for r in 0..R {
                let d_a = *rows[r].meta.add(b);
                let m = _mm256_madd_epi16(mn, _mm256_loadu_si256(rows[r].bsums.add(16 * b).cast()));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(d * d_a), acc[r]);
                mins[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(dmin * d_a), mins[r]);
            }
        }
        let mut out = [0.0f32; R];
        for r in 0..R {
            let m = mins[r];
            let m = _mm_add_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            out[r] = _mm512_reduce_add_ps(acc[r]) - _mm_cvtss_f32(_mm_hadd_ps(_mm_hadd_ps(m, m), m));
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

/// i16 lane indices `[a ×8, a+1 ×8, a+2 ×8, a+3 ×8]` (Q6_K: four sub-blocks of 16).
#[inline(always)]
unsafe fn quarters(a: i16) -> __m512i {
    unsafe {
        let lo = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(a)), _mm_set1_epi16(a + 1), 1);
        let hi = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(a + 2)), _mm_set1_epi16(a + 3), 1);
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }
}

/// Q6_K, as the AVX2 twin with two of a half's four 32-value runs per register.
pub(super) struct Q6K<const VNNI: bool>;
impl<const VNNI: bool> Dot for Q6K<VNNI> {
    #[inline(always)]
    unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            let (low, high) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
            // Shifts that bring bits 2t, 2t+1 of qh to bits 4, 5: t = 0, 1 left by 4, 2;
            // t = 2, 3 right by 0, 2.
            let (left, right) = (halves(4, 2), halves(0, 2));
            for b in 0..blocks {
                let p = w.add(210 * b);
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(read_u16(p.add(208))))));
                let all = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192).cast()));
                let scales = _mm512_castsi256_si512(all);
                let mut isum = [_mm512_setzero_si512(); R];
                for r in 0..R {
                    let offset = _mm256_madd_epi16(all, _mm256_loadu_si256(rows[r].bsums.add(16 * b).cast()));
                    isum[r] = _mm512_sub_epi32(isum[r], _mm512_zextsi256_si512(_mm256_slli_epi32(offset, 5)));
                }
                for h in 0..2 {
                    let ql = _mm512_loadu_si512(p.add(64 * h).cast());
                    let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(128 + 32 * h).cast()));
                    let q01 =
                        _mm512_or_si512(_mm512_and_si512(ql, low), _mm512_and_si512(_mm512_sllv_epi16(qh, left), high));
                    let q23 = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16(ql, 4), low),
                        _mm512_and_si512(_mm512_srlv_epi16(qh, right), high),
                    );
                    for (u, q) in [q01, q23].into_iter().enumerate() {
                        let s = _mm512_permutexvar_epi16(quarters((8 * h + 4 * u) as i16), scales);
                        for r in 0..R {
                            let a = _mm512_loadu_si512(rows[r].qs.add(256 * b + 128 * h + 64 * u).cast());
                            isum[r] = dot_i16::<VNNI>(isum[r], _mm512_maddubs_epi16(q, a), s);
                        }
                    }
                }
                for r in 0..R {
                    let d_a = *rows[r].meta.add(b);
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(d * d_a), acc[r]);
                }
            }
            let mut out = [0.0f32; R];
            for r in 0..R {
                out[r] = _mm512_reduce_add_ps(acc[r]);
            }
            out
        }
    }
}
