//! Products of a few activation rows by a weight stored `[N, K]` (a `Linear` weight):
//! `c[i, j] = Σ_p a[i, p] · w[j, p]`, straight from both layouts, with no packing.
//!
//! Why not the `gemm` crate here: it packs the weight into its own panels on every call.
//! With hundreds of rows that is a small share of the work; with the 1–32 rows of a search
//! query (batch 1) it costs as much as the product itself, and its threads split the rows,
//! which are too few to share. Rows of `a` and of `w` are both contiguous along K, so a
//! tile of 4 × 4 dot products runs with 16 vector accumulators (AVX-512; AVX2 does it in two
//! halves of 8), every load feeding 2 FMAs, and is reduced to the 16 results at the end of
//! K. Threads split the weight's rows.
//!
//! On x86-64 a weight the CPU backend holds multiplies 4 rows or more from its kept panels
//! instead ([`super::panels`], faster: no reductions, one stream per panel); this path takes
//! one to three rows, weights the caller does not keep, and wasm.

use super::super::isa::CpuIsa;
use rayon::prelude::*;
use std::ops::Range;

/// Up to this many rows of `a` take this path (above it, packing pays for itself).
pub const MAX_ROWS: usize = 32;

/// Whether [`multiply`] runs on this CPU at `isa` (the active level): AVX2 or AVX-512 on
/// x86-64; wasm32 built with simd128 (the browser package always is).
pub fn available(isa: CpuIsa) -> bool {
    cfg!(all(target_arch = "wasm32", target_feature = "simd128")) || (isa >= CpuIsa::Avx2 && isa.supported())
}

/// The product `g` with b a weight w stored `[n, k]` (`g.trans_b`): `c = g.accumulate·c +
/// g.scale · a · wᵀ`, a `[m, k]`, c `[m, n]`, row-major. Call only where [`available`] says so.
pub(super) fn multiply(g: super::Gemm, a: &[f32], w: &[f32], c: &mut [f32]) {
    let isa = CpuIsa::active();
    assert!(available(isa), "few_rows::multiply needs AVX2 or wasm simd128");
    multiply_with(best_columns(isa), g, a, w, c)
}

/// `TILE` consecutive rows, each `.1` values after the previous one, from `.0`.
type Rows = (*const f32, usize);

/// One instruction set's tile.
trait Tile {
    /// Rows of w per tile (at most 4).
    const W_ROWS: usize = TILE;
    /// The dot products of 4 rows of a with `W_ROWS` rows of w (each `k` long), that of a row
    /// i and w row j at 4i + j, fetching the rows of `prefetch` (if not null) into the cache
    /// on the way.
    ///
    /// # Safety
    /// The rows hold k values each, and the CPU has the tile's instructions.
    unsafe fn dots(a: Rows, w: Rows, k: usize, prefetch: Rows) -> [f32; 16];

    /// Rows of w per [`Tile::one_row`] call; 0 where the instruction set has none (a single
    /// row of a then takes the 4-row tile, three of whose rows are copies).
    const ONE_ROW_W_ROWS: usize = 0;
    /// The dot products of one row of a (k long) with `ONE_ROW_W_ROWS` rows of w: that of w
    /// row j at j.
    ///
    /// # Safety
    /// As `dots`.
    unsafe fn one_row(_a: *const f32, _w: Rows, _k: usize) -> [f32; 16] {
        unreachable!("no one-row tile")
    }
}

/// [`columns`] compiled for one instruction set (its tile inlined, its stores vectorised).
/// Unsafe: as `columns`, on a CPU with that instruction set.
type ColumnsFn = unsafe fn(&Pass, Range<usize>);

#[cfg(target_arch = "x86_64")]
fn best_columns(isa: CpuIsa) -> ColumnsFn {
    if isa >= CpuIsa::Avx512 { x86::columns_avx512 } else { x86::columns_avx2 }
}

#[cfg(target_arch = "wasm32")]
fn best_columns(_: CpuIsa) -> ColumnsFn {
    wasm::columns_simd128
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "wasm32")))]
fn best_columns(_: CpuIsa) -> ColumnsFn {
    unreachable!("few_rows::available is false here")
}

/// [`multiply`] with the given columns function, which the CPU must run.
fn multiply_with(columns: ColumnsFn, g: super::Gemm, a: &[f32], w: &[f32], c: &mut [f32]) {
    let super::Gemm { m, n, k, trans_b, accumulate, scale } = g;
    assert!(trans_b && a.len() >= m * k && w.len() >= n * k && c.len() >= m * n && m > 0 && n > 0);
    let whole = Pass { m, n, k: Block { start: 0, len: k, stride: k }, a, w, c: c.as_mut_ptr(), accumulate, scale };
    let whole = &whole;
    let tile_cols = n.div_ceil(SPLIT);
    let run = |cols: Range<usize>| {
        // K in blocks, so that a tile's rows of a and w stay in the L1 cache between tiles;
        // the blocks after the first add to c.
        for start in (0..k).step_by(K_BLOCK) {
            let k = Block { start, len: K_BLOCK.min(k - start), stride: k };
            let pass = Pass { k, accumulate: accumulate || start > 0, ..*whole };
            // SAFETY: the CPU runs `columns` (the caller's promise); the columns are this
            // task's only.
            unsafe { columns(&pass, cols.clone()) }
        }
    };
    let threads = rayon::current_num_threads();
    if threads == 1 || 2 * m * n * k < 1 << 20 {
        run(0..n);
    } else {
        // A few tasks per thread, each a run of whole tiles (of 3 or 4 weight rows).
        let tasks = (threads * 2).min(tile_cols);
        let per_task = (n.div_ceil(tasks)).div_ceil(SPLIT) * SPLIT;
        (0..n.div_ceil(per_task)).into_par_iter().for_each(|t| run(t * per_task..((t + 1) * per_task).min(n)));
    }
}

/// Rows of a per tile, and of w in most tiles.
const TILE: usize = 4;

/// Columns of c per parallel task are a multiple of this: whole tiles of 3 or 4 weight rows.
const SPLIT: usize = 12;

/// Values of K per pass: a tile's 8 rows of this many f32 take 16 KiB of the L1 cache.
const K_BLOCK: usize = 512;

/// Columns `start..start + len` of rows that are `stride` apart.
#[derive(Debug, Clone, Copy)]
struct Block {
    start: usize,
    len: usize,
    stride: usize,
}

/// One pass of a product over a block of K: `c = accumulate·c + scale · a · wᵀ` over the K
/// values in `k`; a holds m rows and w n rows (of `k.stride` values), c points at m×n.
struct Pass<'a> {
    m: usize,
    n: usize,
    k: Block,
    a: &'a [f32],
    w: &'a [f32],
    c: *mut f32,
    accumulate: bool,
    scale: f32,
}

// SAFETY: threads share a pass to write disjoint columns of c (`multiply_with`).
unsafe impl Sync for Pass<'_> {}

/// Columns `cols` of the pass's c, every row, tile by tile.
///
/// # Safety
/// The CPU runs `T`; c points at m×n values, of which this call alone writes columns `cols`.
#[inline(always)]
unsafe fn columns<T: Tile>(pass: &Pass, cols: Range<usize>) {
    let Pass { m, n, k, a, w, c, accumulate, scale } = *pass;
    // A tile reads 4 consecutive rows of a and of w. At an edge, the rows go through a
    // scratch copy in which rows past the edge repeat the last one; their results are
    // not written.
    let mut a_edge = Vec::new();
    let mut w_edge = Vec::new();
    let tile_rows = |x: &[f32], rows: usize, first: usize, count: usize, scratch: &mut Vec<f32>| -> Rows {
        if first + count <= rows {
            return (x[first * k.stride + k.start..].as_ptr(), k.stride);
        }
        scratch.clear();
        for t in 0..count {
            scratch.extend_from_slice(&x[(first + t).min(rows - 1) * k.stride + k.start..][..k.len]);
        }
        (scratch.as_ptr(), k.len)
    };
    // A single row of a (a matrix-vector product): whole groups of weight rows through the
    // one-row tile, which does a quarter of the 4-row tile's multiplications for the same
    // loads; what is left (fewer rows than a group) takes the 4-row tile below.
    let mut cols = cols;
    if m == 1 && T::ONE_ROW_W_ROWS > 0 {
        let a_row = a[k.start..].as_ptr();
        while cols.start + T::ONE_ROW_W_ROWS <= cols.end {
            let j0 = cols.start;
            let ws = (w[j0 * k.stride + k.start..].as_ptr(), k.stride);
            // SAFETY: one row of k.len values at a_row and ONE_ROW_W_ROWS at ws; the
            // caller's CPU runs `T`.
            let dots = unsafe { T::one_row(a_row, ws, k.len) };
            // SAFETY: row 0, columns j0..j0 + ONE_ROW_W_ROWS are inside c and this call's.
            let dst = unsafe { std::slice::from_raw_parts_mut(c.add(j0), T::ONE_ROW_W_ROWS) };
            for (d, v) in dst.iter_mut().zip(dots) {
                *d = if accumulate { *d + scale * v } else { scale * v };
            }
            cols.start += T::ONE_ROW_W_ROWS;
        }
    }
    for j0 in cols.clone().step_by(T::W_ROWS) {
        let ws = tile_rows(w, n, j0, T::W_ROWS, &mut w_edge);
        // The first tile of a block of weight rows fetches the next block into the cache:
        // rows of a few KiB are too short for the hardware prefetcher to catch up with.
        let next = if j0 + 2 * T::W_ROWS <= cols.end {
            (w[(j0 + T::W_ROWS) * k.stride + k.start..].as_ptr(), k.stride)
        } else {
            (std::ptr::null(), 0)
        };
        for i0 in (0..m).step_by(TILE) {
            let as_ = tile_rows(a, m, i0, TILE, &mut a_edge);
            let prefetch = if i0 == 0 { next } else { (std::ptr::null(), 0) };
            // SAFETY: 4 rows of k.len values behind `as_` and `ws`; `prefetch` is a hint;
            // the caller's CPU runs `T`.
            let dots = unsafe { T::dots(as_, ws, k.len, prefetch) };
            let width = T::W_ROWS.min(cols.end - j0);
            for di in 0..TILE.min(m - i0) {
                // SAFETY: row i0 + di, columns j0..j0 + width are inside c and this call's.
                let dst = unsafe { std::slice::from_raw_parts_mut(c.add((i0 + di) * n + j0), width) };
                for (d, v) in dst.iter_mut().zip(&dots[TILE * di..]) {
                    *d = if accumulate { *d + scale * v } else { scale * v };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::reduce16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Pass, Rows, Tile};
    use std::arch::x86_64::*;
    use std::ops::Range;

    struct Avx512;
    struct Avx2;

    impl Tile for Avx512 {
        #[inline(always)]
        unsafe fn dots(a: Rows, w: Rows, k: usize, prefetch: Rows) -> [f32; 16] {
            // SAFETY: the caller's contract.
            unsafe { tile_avx512(a, w, k, prefetch) }
        }
        const ONE_ROW_W_ROWS: usize = 16;
        #[inline(always)]
        unsafe fn one_row(a: *const f32, w: Rows, k: usize) -> [f32; 16] {
            // SAFETY: the caller's contract.
            unsafe { one_row_avx512(a, w, k) }
        }
    }

    impl Tile for Avx2 {
        const W_ROWS: usize = 3;
        #[inline(always)]
        unsafe fn dots(a: Rows, w: Rows, k: usize, prefetch: Rows) -> [f32; 16] {
            // SAFETY: the caller's contract.
            unsafe { tile_avx2(a, w, k, prefetch) }
        }
        const ONE_ROW_W_ROWS: usize = 8;
        #[inline(always)]
        unsafe fn one_row(a: *const f32, w: Rows, k: usize) -> [f32; 16] {
            // SAFETY: the caller's contract.
            unsafe { one_row_avx2(a, w, k) }
        }
    }

    /// One row of a by 16 rows of w: 16 accumulators, a step loads a once and each w row once
    /// for 16 FMAs, all of them useful. The dot with w row j lands at j.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn one_row_avx512(a: *const f32, (w, w_stride): Rows, k: usize) -> [f32; 16] {
        let mut acc = [_mm512_setzero_ps(); 16];
        let mut p = 0;
        // SAFETY (all loads): p + 16 ≤ k in the loop, and the tail's mask covers p..k only.
        while p + 16 <= k {
            let av = unsafe { _mm512_loadu_ps(a.add(p)) };
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(av, unsafe { _mm512_loadu_ps(w.add(j * w_stride + p)) }, *acc);
            }
            p += 16;
        }
        if p < k {
            let mask: __mmask16 = (1u32 << (k - p)) as u16 - 1;
            let av = unsafe { _mm512_maskz_loadu_ps(mask, a.add(p)) };
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(av, unsafe { _mm512_maskz_loadu_ps(mask, w.add(j * w_stride + p)) }, *acc);
            }
        }
        let mut lanes = [0f32; 16];
        // SAFETY: 16 f32.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), reduce16(acc)) };
        // reduce16 puts vector t at lane ORDER[t].
        std::array::from_fn(|j| lanes[ORDER[j]])
    }

    /// One row of a by 8 rows of w with 8-wide registers (the dot with w row j at j; lanes 8
    /// to 15 unused).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn one_row_avx2(a: *const f32, (w, w_stride): Rows, k: usize) -> [f32; 16] {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut p = 0;
        // SAFETY (all loads): p + 8 ≤ k in the loop, and the tail's mask covers p..k only.
        while p + 8 <= k {
            let av = unsafe { _mm256_loadu_ps(a.add(p)) };
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(av, unsafe { _mm256_loadu_ps(w.add(j * w_stride + p)) }, *acc);
            }
            p += 8;
        }
        if p < k {
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((k - p) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            let av = unsafe { _mm256_maskload_ps(a.add(p), mask) };
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(av, unsafe { _mm256_maskload_ps(w.add(j * w_stride + p), mask) }, *acc);
            }
        }
        let mut dots = [0f32; 16];
        // SAFETY: 8 f32.
        unsafe { _mm256_storeu_ps(dots.as_mut_ptr(), reduce8(acc)) };
        dots
    }

    /// # Safety
    /// As `columns`, on a CPU with AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn columns_avx512(pass: &Pass, cols: Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { super::columns::<Avx512>(pass, cols) }
    }

    /// # Safety
    /// As `columns`, on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn columns_avx2(pass: &Pass, cols: Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { super::columns::<Avx2>(pass, cols) }
    }

    /// The lane of accumulator t after `reduce16`: level 1 pairs accumulators (2p, 2p+1)
    /// into 256-bit halves, level 2 pairs those results into 128-bit quarters, levels 3 and 4
    /// reduce within quarters.
    const ORDER: [usize; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

    /// The 16 dot products of 4 rows of a with 4 rows of w (each k long), that of a row i and
    /// w row j at 4i + j: the accumulator of (i, j) is number 4j + i, and `reduce16` sends
    /// that to lane 4i + j ([`ORDER`]). Where `prefetch` is not null, the 4 rows of k values
    /// there are fetched into the cache on the way.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn tile_avx512(
        (a, a_stride): Rows,
        (w, w_stride): Rows,
        k: usize,
        (prefetch, prefetch_stride): Rows,
    ) -> [f32; 16] {
        let mut acc = [_mm512_setzero_ps(); 16];
        let mut p = 0;
        // SAFETY (all loads): p + 16 ≤ k in the loop, and the tail's mask covers p..k only.
        while p + 16 <= k {
            if !prefetch.is_null() {
                // A hint: no fault even past the end (`wrapping_add`, never dereferenced).
                for r in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(r * prefetch_stride + p) as *const i8);
                }
            }
            let av: [__m512; 4] = std::array::from_fn(|r| unsafe { _mm512_loadu_ps(a.add(r * a_stride + p)) });
            let wv: [__m512; 4] = std::array::from_fn(|r| unsafe { _mm512_loadu_ps(w.add(r * w_stride + p)) });
            for i in 0..4 {
                for j in 0..4 {
                    acc[4 * j + i] = _mm512_fmadd_ps(av[i], wv[j], acc[4 * j + i]);
                }
            }
            p += 16;
        }
        if p < k {
            let mask: __mmask16 = (1u32 << (k - p)) as u16 - 1;
            let av: [__m512; 4] =
                std::array::from_fn(|r| unsafe { _mm512_maskz_loadu_ps(mask, a.add(r * a_stride + p)) });
            let wv: [__m512; 4] =
                std::array::from_fn(|r| unsafe { _mm512_maskz_loadu_ps(mask, w.add(r * w_stride + p)) });
            for i in 0..4 {
                for j in 0..4 {
                    acc[4 * j + i] = _mm512_fmadd_ps(av[i], wv[j], acc[4 * j + i]);
                }
            }
        }
        let mut dots = [0f32; 16];
        // SAFETY: 16 f32.
        unsafe { _mm512_storeu_ps(dots.as_mut_ptr(), reduce16(acc)) };
        dots
    }

    /// 4 rows of a × 3 rows of w with 8-wide registers: 12 accumulators, the 3 w vectors of a
    /// step held while each a row is loaded once, so a step is 7 loads for 12 FMAs (AVX2 has
    /// 16 registers; a 4 × 4 tile would have to run in halves, reloading a: 6 loads for 8).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_avx2(
        (a, a_stride): Rows,
        (w, w_stride): Rows,
        k: usize,
        (prefetch, prefetch_stride): Rows,
    ) -> [f32; 16] {
        let mut acc = [_mm256_setzero_ps(); 12];
        let mut step = |av: [__m256; 4], wv: [__m256; 3]| {
            for i in 0..4 {
                for j in 0..3 {
                    acc[3 * i + j] = _mm256_fmadd_ps(av[i], wv[j], acc[3 * i + j]);
                }
            }
        };
        let mut p = 0;
        // SAFETY (all loads): p + 8 ≤ k in the loop, and the tail's mask covers p..k only.
        while p + 8 <= k {
            if !prefetch.is_null() && p % 16 == 0 {
                for r in 0..3 {
                    _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(r * prefetch_stride + p) as *const i8);
                }
            }
            let wv: [__m256; 3] = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(w.add(r * w_stride + p)) });
            let av: [__m256; 4] = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(a.add(r * a_stride + p)) });
            step(av, wv);
            p += 8;
        }
        if p < k {
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((k - p) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            let wv: [__m256; 3] = std::array::from_fn(|r| unsafe { _mm256_maskload_ps(w.add(r * w_stride + p), mask) });
            let av: [__m256; 4] = std::array::from_fn(|r| unsafe { _mm256_maskload_ps(a.add(r * a_stride + p), mask) });
            step(av, wv);
        }
        let zero = _mm256_setzero_ps();
        let mut sums = [0f32; 16];
        // SAFETY: 8 f32 each.
        unsafe {
            _mm256_storeu_ps(sums.as_mut_ptr(), reduce8(std::array::from_fn(|t| acc[t])));
            _mm256_storeu_ps(
                sums.as_mut_ptr().add(8),
                reduce8(std::array::from_fn(|t| if t < 4 { acc[8 + t] } else { zero })),
            );
        }
        // Accumulator 3i + j holds (i, j); the result wants it at 4i + j.
        let mut dots = [0f32; 16];
        for i in 0..4 {
            for j in 0..3 {
                dots[4 * i + j] = sums[3 * i + j];
            }
        }
        dots
    }

    /// Sums each of 8 vectors into lane t of the result (t: the vector's index).
    #[target_feature(enable = "avx2")]
    fn reduce8(v: [__m256; 8]) -> __m256 {
        // hadd pairs within 128-bit halves: after two levels, half h of u0 holds the partial
        // sums of v0..v3 over half h of each, and u1 those of v4..v7.
        let t: [__m256; 4] = std::array::from_fn(|p| _mm256_hadd_ps(v[2 * p], v[2 * p + 1]));
        let u0 = _mm256_hadd_ps(t[0], t[1]);
        let u1 = _mm256_hadd_ps(t[2], t[3]);
        _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(u0, u1), _mm256_permute2f128_ps::<0x31>(u0, u1))
    }

    /// Sums each of 16 vectors into one lane of the result (lane of vector t: `ORDER[t]`),
    /// in 15 shuffle-and-add steps instead of 16 full horizontal sums. Every vector's lanes are
    /// added in the same order, whatever its place (`bf16_dot` relies on it: a row's result
    /// does not depend on the tile it fell in).
    #[target_feature(enable = "avx512f")]
    pub(in crate::ops::matmul) fn reduce16(v: [__m512; 16]) -> __m512 {
        // Level 1: [X0+X2, X1+X3 | Y0+Y2, Y1+Y3] for pairs (x, y) of 128-bit quarters.
        let l1: [__m512; 8] = std::array::from_fn(|p| {
            let (x, y) = (v[2 * p], v[2 * p + 1]);
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(x, y), _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y))
        });
        // Level 2: each vector's 8 partial sums into one quarter.
        let l2: [__m512; 4] = std::array::from_fn(|p| {
            let (x, y) = (l1[2 * p], l1[2 * p + 1]);
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(x, y), _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y))
        });
        // Level 3 and 4: within quarters.
        let l3: [__m512; 2] = std::array::from_fn(|p| {
            let (x, y) = (l2[2 * p], l2[2 * p + 1]);
            _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y))
        });
        let (x, y) = (l3[0], l3[1]);
        _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(x, y), _mm512_shuffle_ps::<0b11_10_11_10>(x, y))
    }

    #[cfg(test)]
    #[test]
    fn reduce16_puts_each_sum_in_its_lane() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        // Vector t holds t + 1 in every lane: its sum is 16(t + 1).
        // SAFETY: AVX-512 checked above.
        let v: [__m512; 16] = std::array::from_fn(|t| unsafe { _mm512_set1_ps((t + 1) as f32) });
        let mut out = [0f32; 16];
        // SAFETY: AVX-512 checked above; out holds 16 f32.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), reduce16(v)) };
        for t in 0..16 {
            assert_eq!(out[ORDER[t]], 16.0 * (t + 1) as f32, "vector {t}: {out:?}");
        }
    }
}

/// The browser's tile: wasm SIMD128 (4 lanes; 8 accumulators, as V8 maps them onto 16
/// registers), in two halves of 4 rows of a × 2 rows of w. wasm has no prefetch.
#[cfg(target_arch = "wasm32")]
mod wasm {
    use super::{Pass, Rows, Tile};
    use std::arch::wasm32::*;
    use std::ops::Range;

    struct Simd128;

    impl Tile for Simd128 {
        #[inline(always)]
        unsafe fn dots(a: Rows, w: Rows, k: usize, prefetch: Rows) -> [f32; 16] {
            // SAFETY: the caller's contract.
            unsafe { tile_simd128(a, w, k, prefetch) }
        }
    }

    /// # Safety
    /// As `columns`.
    #[target_feature(enable = "simd128")]
    pub(super) unsafe fn columns_simd128(pass: &Pass, cols: Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { super::columns::<Simd128>(pass, cols) }
    }

    #[inline]
    #[target_feature(enable = "simd128")]
    unsafe fn tile_simd128((a, a_stride): Rows, (w, w_stride): Rows, k: usize, _: Rows) -> [f32; 16] {
        let mut dots = [0f32; 16];
        let load = |p: *const f32| unsafe { v128_load(p as *const v128) };
        for half in 0..2 {
            let w = w.wrapping_add(2 * half * w_stride);
            let mut acc = [f32x4_splat(0.0); 8];
            let mut p = 0;
            // SAFETY (all loads): p + 4 ≤ k; v128_load reads unaligned.
            while p + 4 <= k {
                let av: [v128; 4] = std::array::from_fn(|r| load(a.wrapping_add(r * a_stride + p)));
                let wv: [v128; 2] = std::array::from_fn(|r| load(w.wrapping_add(r * w_stride + p)));
                for i in 0..4 {
                    for j in 0..2 {
                        acc[2 * i + j] = f32x4_add(acc[2 * i + j], f32x4_mul(av[i], wv[j]));
                    }
                }
                p += 4;
            }
            for i in 0..4 {
                for j in 0..2 {
                    let v = acc[2 * i + j];
                    let mut sum = (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v))
                        + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v));
                    for q in p..k {
                        // SAFETY: q < k.
                        sum += unsafe { *a.add(i * a_stride + q) * *w.add(j * w_stride + q) };
                    }
                    dots[4 * i + 2 * half + j] = sum;
                }
            }
        }
        dots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64 dot products, at shapes that leave partial tiles on every side (rows and
    /// weight rows not a multiple of 4, K not a multiple of 16, K below 16), serial and split
    /// across threads, overwriting and accumulating.
    #[test]
    fn matches_f64_dot_products_at_awkward_shapes() {
        for isa in [CpuIsa::Avx512, CpuIsa::Avx2] {
            if isa.supported() {
                check(best_columns(isa));
            } else {
                eprintln!("skipped: this CPU has no {isa}");
            }
        }
    }

    fn check(columns: ColumnsFn) {
        let value = |i: usize, salt: usize| ((i * 2_654_435_761 + salt * 97) % 2001) as f32 / 1000.0 - 1.0;
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 7, 15),
            (3, 5, 16),
            (7, 129, 17),
            (17, 130, 384),
            (32, 129, 385),
            (4, 1536, 384),
            (5, 9, 1100),
            (16, 64, 1536),
            // One row: groups of 16 (8) weight rows and what is left, K with and without a
            // tail, across threads.
            (1, 16, 16),
            (1, 37, 129),
            (1, 129, 7),
            (1, 1000, 1280),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
            let w: Vec<f32> = (0..n * k).map(|i| value(i, 2)).collect();
            let c0: Vec<f32> = (0..m * n).map(|i| value(i, 3)).collect();
            for (accumulate, scale) in [(false, 1.0f32), (true, 0.5)] {
                let mut c = c0.clone();
                multiply_with(
                    columns,
                    super::super::Gemm { m, n, k, trans_b: true, accumulate, scale },
                    &a,
                    &w,
                    &mut c,
                );
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * w[j * k + p] as f64).sum();
                        let norm: f64 = (0..k).map(|p| (a[i * k + p] as f64 * w[j * k + p] as f64).abs()).sum();
                        let want = scale as f64 * dot + if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-6 * (norm + 1.0),
                            "{m}x{n}x{k} accumulate {accumulate}: c[{i},{j}] = {got}, want {want}"
                        );
                    }
                }
            }
        }
    }
}
