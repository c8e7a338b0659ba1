//! bf16 products on AMX tiles (Sapphire Rapids and later): `tdpbf16ps` multiplies a 16 × 32
//! tile of bf16 activations by a 32 × 16 tile of bf16 weights into 16 × 16 f32 sums, 8,192
//! multiply-adds per instruction where `vdpbf16ps` ([`super::bf16_dot`]) does 32. The
//! activations are rounded as `bf16_dot` rounds them (the same error bound); what differs is
//! only the order of the f32 sums.
//!
//! [`multiply`] rounds the activations straight into tiles (each 1 KiB in one piece, so that
//! a tile load reads consecutive lines) and repacks the weight `[N, K]` on every call into
//! the layout the instruction reads (per 16 weight rows and 32 values of K, a 1 KiB tile
//! whose row r holds, for each of the 16 weight rows, its values 2r and 2r + 1): one pass
//! over each, small beside a product of the many activation rows this path is used for
//! ([`super::bf16_dot`] keeps fewer rows). Each task then runs output blocks of 32 × 32 (four
//! accumulator tiles, two of activations, two of weights: all eight tile registers), K in
//! steps of 32, in the same order for every block, so a row's sums do not depend on the other
//! rows of the product; then the bias and activation on its block, while it is in cache.
//! [`Job`], [`Tiles`], [`pack`] and [`pack_columns`] also serve the encoder attention's two
//! products (`ops::attention_amx`).
//!
//! What bounds it, measured on a 2-core Sapphire Rapids VM: a tile load (`tileloadd`, 1 KiB
//! from L1) takes about 16 ns there against 5 ns for a `tdpbf16ps`, and a 2 × 2 block needs
//! one load per product, so the kernel runs at about a third of the instruction's peak
//! (1.0–1.2 TFLOP/s on two cores at MiniLM's shapes); the next row pair's activation tiles
//! are prefetched into L1 meanwhile.
//!
//! Rust has no stable AMX intrinsics; the instructions are written as inline assembly, with
//! the tile registers named in the templates (the compiler never allocates them).

use super::bf16_dot::round_row_spread;
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
    /// The rounded activations in tiles, likewise.
    static TILED: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
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

/// `out[r, c] = epilogue(Σ_j bf16(a[r, j]) · w[c, j])` for `a` `[m, k]` (f32 activations,
/// rounded here as `bf16_dot` rounds them), `w` `[n, k]` bf16 (little-endian bytes) and `out`
/// `[m, n]`; each task applies the epilogue to its block as soon as it is written. The weight
/// is packed into tiles on every call, or once into `kept` (see [`WeightTiles`]).
///
/// # Safety
/// [`crate::ops::isa::amx_bf16`] is true (this process holds the tile state); `a` holds
/// m · k values, `w` 2 · n · k bytes, `out` m · n.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn multiply(
    a: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    n: usize,
    out: &mut [f32],
    epilogue: super::Epilogue,
    kept: Option<&WeightTiles>,
) {
    let (m_tiles, n_tiles, k_steps) = (m.div_ceil(ROWS), n.div_ceil(ROWS), k.div_ceil(DEPTH));
    // The activations rounded into whole tiles, each 1 KiB in one piece (tile (i, s) at
    // (i · k_steps + s) · 512 values), so that each tile load reads consecutive lines.
    let row_tile = k_steps * TILE_BYTES / 2;
    let mut tiled = TILED.take();
    if tiled.len() < m_tiles * row_tile {
        tiled.resize(m_tiles * row_tile, 0);
    }
    let round = |(dst, rows): (&mut [u16], &[f32])| {
        let count = rows.len() / k;
        for (r, row) in rows.chunks_exact(k).enumerate() {
            // SAFETY: AVX-512 BF16 (every CPU with AMX-BF16 has it); row r's group s lands in
            // tile s's row r, inside `dst`.
            unsafe { round_row_spread(row, dst[r * DEPTH..].as_mut_ptr(), TILE_BYTES / 2) };
        }
        // The last tile's rows past m: zeros.
        for tile in dst.chunks_exact_mut(TILE_BYTES / 2) {
            tile[count * DEPTH..].fill(0);
        }
    };
    if m_tiles > 1 {
        tiled[..m_tiles * row_tile].par_chunks_mut(row_tile).zip(a.par_chunks(ROWS * k)).for_each(round);
    } else {
        round((&mut tiled[..row_tile], a));
    }
    let a = &tiled[..m_tiles * row_tile];
    let kept = kept.and_then(|kept| kept.get_or_pack(w, n, k));
    let mut repacked = Vec::new();
    if kept.is_none() {
        repacked = PACKED.take();
        pack(w, n, k, &mut repacked, true);
    }
    let packed: &[u32] = kept.unwrap_or(&repacked);
    let (a_at, b_at, out_at) = (a.as_ptr() as usize, packed.as_ptr() as usize, out.as_mut_ptr() as usize);
    let task = move |(rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>)| {
        let job = Job {
            a: a_at as *const u16,
            a_layout: ALayout::Tiled,
            b: b_at as *const u32,
            k_steps,
            out: out_at as *mut f32,
            ldo: n,
            m,
            n,
        };
        // SAFETY: the caller's contract; tasks write disjoint blocks of `out`.
        unsafe { job.run(&Tiles::configure(), rows.clone(), cols.clone()) };
        // The epilogue on the block just written, while it is in cache.
        if !epilogue.is_identity() {
            let (first, last) = (cols.start * ROWS, (cols.end * ROWS).min(n));
            for r in rows.start * ROWS..(rows.end * ROWS).min(m) {
                // SAFETY: row r < m, columns first..last < n: this task's block of `out`.
                let part =
                    unsafe { std::slice::from_raw_parts_mut((out_at as *mut f32).add(r * n + first), last - first) };
                epilogue.apply(part, first);
            }
        }
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
    if kept.is_none() {
        PACKED.set(repacked);
    }
    TILED.set(tiled);
}

/// A stored weight's tiles, packed on its first product on AMX and kept with it (the CPU
/// backend keeps one beside each buffer, cleared whenever the buffer is written): an
/// uploaded weight is then packed once, not on every product, which is what lets a few rows
/// (a query at batch 1) take the tiles too. Twice the memory of a bf16 weight while it lives.
#[derive(Debug, Default)]
pub struct WeightTiles(std::sync::OnceLock<(usize, usize, Vec<u32>)>);

impl WeightTiles {
    /// Forgets the tiles (the weight's bytes are about to change).
    pub fn clear(&mut self) {
        self.0.take();
    }

    /// The tiles of `w` `[n, k]`, packed now if this is the first call; `None` when they
    /// were packed for another shape (a buffer reused for another weight), which the caller
    /// packs afresh.
    fn get_or_pack(&self, w: &[u8], n: usize, k: usize) -> Option<&[u32]> {
        let (tn, tk, tiles) = self.0.get_or_init(|| {
            let mut tiles = Vec::new();
            pack(w, n, k, &mut tiles, true);
            (n, k, tiles)
        });
        (*tn == n && *tk == k).then_some(tiles.as_slice())
    }
}

/// This thread's tile state, configured (palette 1, all eight tiles 16 rows of 64 bytes) for
/// as long as the value lives, and given back when it drops.
pub(crate) struct Tiles(());

impl Tiles {
    /// # Safety
    /// [`crate::ops::isa::amx_bf16`] is true (this process holds the tile state).
    pub(crate) unsafe fn configure() -> Tiles {
        let config = Config::all_full();
        // SAFETY: a valid palette-1 configuration, 64-byte aligned; the caller's contract.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        Tiles(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the state was configured by `configure`; nothing left in the tiles is needed.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Tiles of [`TILE_BYTES`] in the layout [`Job`] reads a weight from, for `w` `[n, k]` bf16
/// (little-endian bytes): tile (t, s) (weight rows 16t.., K values 32s..) at
/// `(t · k_steps + s) · 256` words (see [`pack_tile_row`]), `k_steps = k.div_ceil(32)`;
/// 16 weight rows at a time over threads with `parallel` (a whole weight), else on this one
/// (an attention head's keys, inside a task of its own).
pub(crate) fn pack(w: &[u8], n: usize, k: usize, packed: &mut Vec<u32>, parallel: bool) {
    let words = k.div_ceil(DEPTH) * TILE_BYTES / 4;
    packed.clear();
    packed.resize(n.div_ceil(ROWS) * words, 0);
    let row = |(t, tiles): (usize, &mut [u32])| pack_tile_row(w, n, k, t, tiles);
    if parallel {
        packed.par_chunks_mut(words).enumerate().for_each(row);
    } else {
        packed.chunks_exact_mut(words).enumerate().for_each(row);
    }
}

/// Weight rows 16t.. of `w` `[n, k]` into `tiles` (k_steps tiles, zeroed): tile s's word
/// `16r + c` holds values 32s + 2r and 32s + 2r + 1 of weight row 16t + c (zeros past n and
/// k). Whole tiles are gathered with AVX-512, which every CPU with AMX has.
fn pack_tile_row(w: &[u8], n: usize, k: usize, t: usize, tiles: &mut [u32]) {
    let words = TILE_BYTES / 4;
    let rows = ROWS.min(n - t * ROWS);
    // Word j of weight row c: its values 2j and 2j + 1 (the first in the low half, as they
    // sit in memory), zero past k.
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
}

/// The tiles of `v` (`n` rows of `d` f32, `ldv` apart) as the weight of a product `p · v`
/// (`p` `[m, n]`), rounded to bf16: tile (u, s) (columns 16u.. of v, its rows 32s..) at
/// `(u · k_steps + s) · 256` words, `k_steps = n.div_ceil(32)`, its word `16r + c` holding
/// `v[32s + 2r, 16u + c]` (low half) and `v[32s + 2r + 1, 16u + c]`; zeros past n and d.
///
/// # Safety
/// AVX-512 F/BW/BF16; `v` points at n rows of d floats, `ldv` apart.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn pack_columns(v: *const f32, ldv: usize, n: usize, d: usize, packed: &mut Vec<u32>) {
    use std::arch::x86_64::*;
    let (k_steps, words) = (n.div_ceil(DEPTH), TILE_BYTES / 4);
    packed.clear();
    packed.resize(d.div_ceil(ROWS) * k_steps * words, 0);
    // Lane 2c takes value c of the first row, lane 2c + 1 value c of the second (the second
    // operand of `cvtne2ps` lands in the low half).
    let pairs = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
        16, 0,
    );
    for (u, tiles) in packed.chunks_exact_mut(k_steps * words).enumerate() {
        let cols = (d - u * ROWS).min(ROWS);
        let mask: __mmask16 = if cols == ROWS { 0xffff } else { (1 << cols) - 1 };
        let row = |i: usize| {
            if i < n {
                // SAFETY: row i < n, columns 16u.. below d (masked).
                unsafe { _mm512_maskz_loadu_ps(mask, v.add(i * ldv + u * ROWS)) }
            } else {
                _mm512_setzero_ps()
            }
        };
        for (pair, dst) in tiles.chunks_exact_mut(ROWS).enumerate().take(n.div_ceil(2)) {
            // Tile s = pair / 16, its row pair % 16: `chunks_exact_mut(16)` walks them in order.
            // SAFETY: 32 bf16 reinterpreted as 512 bits; dst holds 16 words.
            unsafe {
                let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(row(2 * pair + 1), row(2 * pair)));
                _mm512_storeu_si512(dst.as_mut_ptr().cast(), _mm512_permutexvar_epi16(pairs, both));
            }
        }
    }
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

/// How a product's activations `a` (bf16, whole tiles of 16 rows, zeros past K) lie.
#[derive(Clone, Copy)]
pub(crate) enum ALayout {
    /// Rows of this many values.
    Rows(usize),
    /// Tile (i, s) (rows 16i.., K values 32s..) in one piece at `(i · k_steps + s) · 512`.
    Tiled,
}

/// One product's operands as the tasks read them: `out[r, c] = Σ_j a[r, j] · b[j, c]` for
/// rows r < m and columns c < n, `a` as `a_layout` says, `b` the tiles [`pack`] or
/// [`pack_columns`] wrote (`k_steps` per 16 columns), `out` rows `ldo` floats apart.
pub(crate) struct Job {
    pub a: *const u16,
    pub a_layout: ALayout,
    pub b: *const u32,
    pub k_steps: usize,
    pub out: *mut f32,
    pub ldo: usize,
    pub m: usize,
    pub n: usize,
}

impl Job {
    /// Output tiles `rows` × `cols` (in tiles of 16), in blocks of 2 × 2 tiles, on this
    /// thread's configured `_tiles`.
    ///
    /// # Safety
    /// The operands hold the tiles read (row tiles `rows` of `a`, K steps `k_steps`, column
    /// tiles `cols` of `b`); no other task writes these tiles of `out`.
    pub(crate) unsafe fn run(&self, _tiles: &Tiles, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
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
    }

    /// Row tiles r.. (`R` of them) by weight tiles t.. (`C`): accumulators tmm0 (r, t), tmm1
    /// (r, t + 1), tmm2 (r + 1, t), tmm3 (r + 1, t + 1); activations tmm4, tmm5; weights tmm6,
    /// tmm7.
    ///
    /// # Safety
    /// As [`Self::run`], with the tile configuration loaded.
    #[inline(always)]
    unsafe fn block<const R: usize, const C: usize>(&self, r: usize, t: usize) {
        // Bytes between a tile's rows, values between row tiles and between K steps.
        let (a_stride, row_tile, k_step) = match self.a_layout {
            ALayout::Rows(lda) => (lda * 2, ROWS * lda, DEPTH),
            ALayout::Tiled => (64, self.k_steps * TILE_BYTES / 2, TILE_BYTES / 2),
        };
        let tiled = matches!(self.a_layout, ALayout::Tiled);
        let a0 = self.a.wrapping_add(r * row_tile);
        let a1 = a0.wrapping_add(row_tile);
        let b0 = self.b.wrapping_add(t * self.k_steps * TILE_BYTES / 4);
        let b1 = b0.wrapping_add(self.k_steps * TILE_BYTES / 4);
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY (all the asm below): tiles are read inside `a` (row tiles < m_tiles, K steps
        // < lda / 32) and the packed weight (weight tiles < n_tiles); the caller's contract.
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            for s in 0..self.k_steps {
                let (a0, a1) = (a0.wrapping_add(s * k_step), a1.wrapping_add(s * k_step));
                let (b0, b1) = (b0.wrapping_add(s * TILE_BYTES / 4), b1.wrapping_add(s * TILE_BYTES / 4));
                if tiled {
                    // The next row pair's tiles of this K step into L1 while this one computes:
                    // +12–14% at MiniLM's shapes on a Sapphire Rapids VM, where a tile load takes
                    // three times as long as a product (about 16 ns), so loads bound this kernel.
                    let next = a0.wrapping_add(2 * row_tile);
                    for line in 0..ROWS {
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(line * DEPTH).cast());
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(row_tile + line * DEPTH).cast());
                    }
                }
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
        if rows == ROWS && cols == ROWS {
            // SAFETY: a whole tile inside `out`.
            unsafe { store_tile::<TMM>(self.out.wrapping_add(row0 * self.ldo + col0), self.ldo * 4) };
            return;
        }
        // (Zeroed here only: a whole tile's store would pay for clearing a buffer it skips.)
        let mut buffer = [0f32; ROWS * ROWS];
        // SAFETY: 16 rows of 16 floats in the buffer.
        unsafe { store_tile::<TMM>(buffer.as_mut_ptr(), ROWS * 4) };
        for i in 0..rows {
            // SAFETY: row row0 + i < m, columns col0..col0 + cols < n.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    buffer[i * ROWS..].as_ptr(),
                    self.out.add((row0 + i) * self.ldo + col0),
                    cols,
                )
            };
        }
    }
}

/// Stores accumulator tile `TMM` (0–3) as 16 rows of 16 floats, `stride` bytes apart.
///
/// # Safety
/// The tile state is configured and `dst` holds the 16 rows.
#[inline(always)]
unsafe fn store_tile<const TMM: usize>(dst: *mut f32, stride: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        match TMM {
            0 => asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) dst, s = in(reg) stride, options(nostack)),
            1 => asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) dst, s = in(reg) stride, options(nostack)),
            2 => asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) dst, s = in(reg) stride, options(nostack)),
            _ => asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) dst, s = in(reg) stride, options(nostack)),
        }
    }
}
