//! bf16 products on AMX tiles (Sapphire Rapids and later): `tdpbf16ps` multiplies a 16 × 32
//! tile of bf16 activations by a 32 × 16 tile of bf16 weights into 16 × 16 f32 sums, 8,192
//! multiply-adds per instruction where `vdpbf16ps` ([`super::bf16_dot`]) does 32. The
//! activations come rounded by `bf16_dot` (the same rounding, so the same error bound); what
//! differs is only the order of the f32 sums.
//!
//! The weight `[N, K]` is repacked on every call into the layout the instruction reads (per 16
//! weight rows and 32 values of K, a 1 KiB tile whose row r holds, for each of the 16 weight
//! rows, its values 2r and 2r + 1): one pass over the weight, small beside a product of the
//! many activation rows this path is used for ([`super::bf16_dot`] keeps fewer rows). Each
//! task then runs output blocks of 32 × 32 (four accumulator tiles, two of activations, two
//! of weights: all eight tile registers), K in steps of 32, in the same order for every block,
//! so a row's sums do not depend on the other rows of the product.
//!
//! Rust has no stable AMX intrinsics; the instructions are written as inline assembly, with
//! the tile registers named in the templates (the compiler never allocates them).

use rayon::prelude::*;
use std::arch::asm;

/// Tile rows (activation rows or weight rows per tile) and bf16 values of K per tile.
const ROWS: usize = 16;
const DEPTH: usize = 32;
/// Bytes of one packed weight tile (16 rows of 64 bytes).
const TILE_BYTES: usize = ROWS * 64;

/// Activation rows and weight rows per parallel task (whole tiles).
const TASK_ROWS: usize = 128;
const TASK_COLS: usize = 128;

thread_local! {
    /// The packed weight, reused from one product to the next.
    static PACKED: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    fn all_full() -> Config {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = ROWS as u8;
        }
        Config(c)
    }
}

/// `out[r, c] = Σ_j a[r, j] · w[c, j]` for `a` `[m_tiles · 16, lda]` bf16 (rounded
/// activations, zero past k and in the rows past m), `w` `[n, k]` bf16 (little-endian bytes)
/// and `out` `[m, n]`.
///
/// # Safety
/// [`crate::ops::isa::amx_bf16`] is true (this process holds the tile state); `a` holds
/// `m.next_multiple_of(16)` rows of `lda` values, `lda` a multiple of 32 and ≥ k; `w` holds
/// 2 · n · k bytes; `out` m · n.
pub(super) unsafe fn multiply(a: &[u16], lda: usize, m: usize, k: usize, w: &[u8], n: usize, out: &mut [f32]) {
    let (m_tiles, n_tiles, k_steps) = (m.div_ceil(ROWS), n.div_ceil(ROWS), k.div_ceil(DEPTH));
    debug_assert!(lda.is_multiple_of(DEPTH) && lda >= k && a.len() >= m_tiles * ROWS * lda);
    let mut packed = PACKED.take();
    pack(w, n, k, n_tiles, k_steps, &mut packed);
    let (a_at, b_at, out_at) = (a.as_ptr() as usize, packed.as_ptr() as usize, out.as_mut_ptr() as usize);
    let task = move |(rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>)| {
        let job = Job { a: a_at as *const u16, lda, b: b_at as *const u32, k_steps, out: out_at as *mut f32, m, n };
        // SAFETY: the caller's contract; tasks write disjoint blocks of `out`.
        unsafe { job.run(rows, cols) }
    };
    let (row_tasks, col_tasks) = (m_tiles.div_ceil(TASK_ROWS / ROWS), n_tiles.div_ceil(TASK_COLS / ROWS));
    let tasks: Vec<_> = (0..row_tasks)
        .flat_map(|rt| {
            (0..col_tasks).map(move |ct| {
                let rows = rt * TASK_ROWS / ROWS..((rt + 1) * TASK_ROWS / ROWS).min(m_tiles);
                let cols = ct * TASK_COLS / ROWS..((ct + 1) * TASK_COLS / ROWS).min(n_tiles);
                (rows, cols)
            })
        })
        .collect();
    tasks.into_par_iter().for_each(task);
    PACKED.set(packed);
}

/// Repacks `w` `[n, k]` into tiles: tile (t, s) (weight rows 16t.., K values 32s..) at
/// `(t · k_steps + s) · 256` words, its word `16r + c` holding values 32s + 2r and 32s + 2r + 1
/// of weight row 16t + c (zeros past n and k). Whole tiles are gathered with AVX-512, which
/// every CPU with AMX has.
fn pack(w: &[u8], n: usize, k: usize, n_tiles: usize, k_steps: usize, packed: &mut Vec<u32>) {
    let words = TILE_BYTES / 4;
    packed.clear();
    packed.resize(n_tiles * k_steps * words, 0);
    packed.par_chunks_mut(k_steps * words).enumerate().for_each(|(t, tiles)| {
        let rows = ROWS.min(n - t * ROWS);
        // Word j of weight row c: its values 2j and 2j + 1 (the first in the low half, as
        // they sit in memory), zero past k.
        let word = |c: usize, j: usize| -> u32 {
            let at = ((t * ROWS + c) * k + 2 * j) * 2;
            if 2 * j + 1 < k {
                u32::from_le_bytes(w[at..at + 4].try_into().unwrap())
            } else if 2 * j < k {
                u32::from(u16::from_le_bytes(w[at..at + 2].try_into().unwrap()))
            } else {
                0
            }
        };
        for (s, tile) in tiles.chunks_exact_mut(words).enumerate() {
            // (The gather's offsets are i32: rows up to 15 · 2k bytes apart.)
            if rows == ROWS && (s + 1) * DEPTH <= k && 30 * k <= i32::MAX as usize {
                // SAFETY: AVX-512 (the caller's contract); 16 whole rows of 32 values at 32s.
                unsafe { gather_tile(&w[t * ROWS * 2 * k..][..ROWS * 2 * k], k, s, tile) };
                continue;
            }
            // A tile with rows or values past the weight's.
            for (r, dst) in tile.chunks_exact_mut(ROWS).enumerate() {
                for (c, dst) in dst.iter_mut().enumerate().take(rows) {
                    *dst = word(c, s * ROWS + r);
                }
            }
        }
    });
}

/// A whole tile: row r of the tile gathers word 16s + r of each of the 16 weight rows of
/// `w` (k values each).
///
/// # Safety
/// AVX-512 F; `w` holds 16 rows of k bf16 values, 32(s + 1) ≤ k and 30k ≤ i32::MAX.
#[target_feature(enable = "avx512f")]
unsafe fn gather_tile(w: &[u8], k: usize, s: usize, tile: &mut [u32]) {
    use std::arch::x86_64::*;
    debug_assert!(w.len() >= ROWS * 2 * k && (s + 1) * DEPTH <= k && tile.len() == TILE_BYTES / 4);
    // Byte offsets of the 16 rows (the caller keeps 15 · 2k within i32).
    let rows = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32((2 * k) as i32),
    );
    for r in 0..ROWS {
        // SAFETY: word 16s + r of each row: bytes 64s + 4r .. + 4 of rows 0..16, inside `w`.
        unsafe {
            let base = w.as_ptr().add(s * 2 * DEPTH + 4 * r);
            let words = _mm512_i32gather_epi32::<1>(rows, base.cast());
            _mm512_storeu_si512(tile.as_mut_ptr().add(r * ROWS).cast(), words);
        }
    }
}

/// One product's operands as the tasks read them.
struct Job {
    a: *const u16,
    lda: usize,
    b: *const u32,
    k_steps: usize,
    out: *mut f32,
    m: usize,
    n: usize,
}

impl Job {
    /// Output tiles `rows` × `cols` (in tiles of 16), in blocks of 2 × 2 tiles.
    ///
    /// # Safety
    /// As [`multiply`]; no other task writes these tiles of `out`.
    unsafe fn run(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        let config = Config::all_full();
        // SAFETY: a valid palette-1 configuration, 64-byte aligned.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        let mut t = cols.start;
        while t < cols.end {
            let two_cols = t + 1 < cols.end;
            let mut r = rows.start;
            while r < rows.end {
                // SAFETY: the caller's contract, for tiles r (r + 1) and t (t + 1).
                unsafe {
                    match (r + 1 < rows.end, two_cols) {
                        (true, true) => self.block::<2, 2>(r, t),
                        (true, false) => self.block::<2, 1>(r, t),
                        (false, true) => self.block::<1, 2>(r, t),
                        (false, false) => self.block::<1, 1>(r, t),
                    }
                }
                r += 2;
            }
            t += 2;
        }
        // SAFETY: gives the tile state back (nothing is left in the tiles that is needed).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// Row tiles r.. (`R` of them) by weight tiles t.. (`C`): accumulators tmm0 (r, t), tmm1
    /// (r, t + 1), tmm2 (r + 1, t), tmm3 (r + 1, t + 1); activations tmm4, tmm5; weights tmm6,
    /// tmm7.
    ///
    /// # Safety
    /// As [`Self::run`], with the tile configuration loaded.
    #[inline(always)]
    unsafe fn block<const R: usize, const C: usize>(&self, r: usize, t: usize) {
        let a_stride = self.lda * 2;
        let a0 = self.a.wrapping_add(r * ROWS * self.lda);
        let a1 = a0.wrapping_add(ROWS * self.lda);
        let b0 = self.b.wrapping_add(t * self.k_steps * TILE_BYTES / 4);
        let b1 = b0.wrapping_add(self.k_steps * TILE_BYTES / 4);
        // SAFETY (all the asm below): tiles are read inside `a` (row tiles < m_tiles, K steps
        // < lda / 32) and the packed weight (weight tiles < n_tiles); the caller's contract.
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for s in 0..self.k_steps {
                let (a0, a1) = (a0.wrapping_add(s * DEPTH), a1.wrapping_add(s * DEPTH));
                let (b0, b1) = (b0.wrapping_add(s * TILE_BYTES / 4), b1.wrapping_add(s * TILE_BYTES / 4));
                asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) a0, s = in(reg) a_stride, options(nostack, readonly));
                asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) b0, s = in(reg) 64usize, options(nostack, readonly));
                asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem));
                if C == 2 {
                    asm!("tileloadd tmm7, [{p} + {s}*1]", p = in(reg) b1, s = in(reg) 64usize, options(nostack, readonly));
                    asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem));
                }
                if R == 2 {
                    asm!("tileloadd tmm5, [{p} + {s}*1]", p = in(reg) a1, s = in(reg) a_stride, options(nostack, readonly));
                    asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem));
                    if C == 2 {
                        asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
                    }
                }
            }
            self.store::<0>(r, t);
            if C == 2 {
                self.store::<1>(r, t + 1);
            }
            if R == 2 {
                self.store::<2>(r + 1, t);
                if C == 2 {
                    self.store::<3>(r + 1, t + 1);
                }
            }
        }
    }

    /// Writes accumulator tile `TMM` as output tile (r, t): straight into `out` when whole,
    /// else through a buffer, only the rows below m and columns below n.
    ///
    /// # Safety
    /// As [`Self::block`].
    #[inline(always)]
    unsafe fn store<const TMM: usize>(&self, r: usize, t: usize) {
        let (row0, col0) = (r * ROWS, t * ROWS);
        let (rows, cols) = (ROWS.min(self.m - row0), ROWS.min(self.n - col0));
        let whole = rows == ROWS && cols == ROWS;
        let mut buffer = [0f32; ROWS * ROWS];
        let (dst, stride) = if whole {
            (self.out.wrapping_add(row0 * self.n + col0), self.n * 4)
        } else {
            (buffer.as_mut_ptr(), ROWS * 4)
        };
        // SAFETY: 16 rows of 16 floats at `stride` bytes: inside `out` (a whole tile) or the
        // buffer.
        unsafe {
            match TMM {
                0 => asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) dst, s = in(reg) stride, options(nostack)),
                1 => asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) dst, s = in(reg) stride, options(nostack)),
                2 => asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) dst, s = in(reg) stride, options(nostack)),
                _ => asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) dst, s = in(reg) stride, options(nostack)),
            }
        }
        if !whole {
            for i in 0..rows {
                // SAFETY: row row0 + i < m, columns col0..col0 + cols < n.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        buffer[i * ROWS..].as_ptr(),
                        self.out.add((row0 + i) * self.n + col0),
                        cols,
                    )
                };
            }
        }
    }
}
