//! Products by an f32 weight stored `[N, K]` (a `Linear` weight) that the CPU backend holds,
//! from panels packed once and kept beside the weight ([`WeightPanels`]).
//!
//! Why: the `gemm` crate packs the weight on every call, and [`super::few_rows`]' dot-product
//! tiles read four weight rows at a time and reduce 16 vectors per tile; both ran a 16-row
//! product (a search query, batch 1) at about half the FMA rate while MiniLM's 42 MB of
//! weights stream from the last-level cache. Packed once into panels of 16 output columns,
//! k-major (one 64-byte line per k), a product streams each panel front to back; a block of
//! 12 rows × 2 panels keeps 24 sums in registers (per k, two panel loads and 12 broadcasts
//! of a for 24 FMAs) and needs no reduction at the end. The rows are copied k-major per block
//! of K (16 rows at a time, a transpose in registers), so that the broadcasts walk one
//! pointer. Every output is one FMA chain over k in
//! order (across K blocks through c), so a row's bits do not depend on the rows beside it,
//! how many there are, how the threads split them, or the instruction set (AVX2 runs the
//! same chains in 8-wide halves).

use super::super::isa::CpuIsa;
use super::Epilogue;
use crate::backend::cpu::words::{Placement, Words};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Whether a product of `rows` rows takes the panels at `isa` (where the caller keeps them).
/// Below 4 rows a block has too few sums to hide the FMA latency, and few_rows' one-row tile
/// is faster. Above 192 rows on AVX-512 (64 on AVX2) the `gemm` crate's kernel is faster on
/// the CPUs measured, its packing of the weight then a small share of the work (a Sapphire
/// Rapids-class Xeon, `gemm_timing`: at 256 × 384 × 1536 it ran 306 GFLOP/s against 282 from
/// the panels, at 128 rows 247 against 282; capped at AVX2, 222 against 165 at 128 rows).
/// Those figures came from an early build of the panels with these limits raised for the run:
/// `gemm_timing …,kept` now takes the `gemm` crate above them, so it does not reproduce the
/// figures past the limits.
pub fn serves(isa: CpuIsa, rows: usize) -> bool {
    let most = if isa >= CpuIsa::Avx512 { 192 } else { 64 };
    (4..=most).contains(&rows) && available(isa)
}

/// Output columns per panel: one AVX-512 register of f32 (two of AVX2's).
const LANES: usize = 16;

/// Rows of a per block (the register block is `ROWS` × 2 panels: 24 sums of the 32
/// registers).
const ROWS: usize = 12;

/// Rows of a copied k-major together (a line of 16 per k: one transpose of 16 × 16), run as
/// blocks of 12 and 4.
const GROUP: usize = 16;

/// Values of K per pass: a pair of panels' lines for it (16 KiB) stay in the L1 cache while
/// the task's blocks of rows (copied, 6 KiB each) go past.
const K_BLOCK: usize = 128;

/// Lines ahead of the one in use that the kernel fetches into L1 from each panel it reads
/// (about 1 KiB: the hardware prefetcher alone left MiniLM's batch-1 products 1 to 5% slower).
const PREFETCH_LINES: usize = 16;

/// The same for AVX2's kernel, which goes through a panel's lines twice as fast (12 FMAs of 8
/// lanes a line, against 24 of 16 over two panels): 16 lines ahead were fetched too late
/// when the panels stream from memory. 64 (4 KiB) ran MiniLM 1 × 16 at 0.84 of the time of
/// 16 on a Zen 4 capped at AVX2 (48 and 96 about the same; `minilm_timing`, six alternating
/// rounds, tandem alone); on AVX-512 there, 48 instead of 16 gave 0.97, within the noise.
const PREFETCH_LINES_AVX2: usize = 64;

/// Rows of a per parallel task when a product has many (its copied rows, 48 KiB per K
/// block, stay in L2 while the panels go past).
const TASK_ROWS: usize = 96;

/// One k of a panel: its 16 columns' weights, one cache line.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
pub(crate) struct Line([f32; LANES]);

// SAFETY: sixteen f32s and no padding; all zero bits are a line of zeros.
unsafe impl bytemuck::Zeroable for Line {}

/// A weight `[n, k]` as `n.div_ceil(16)` panels of `k` lines: line q of panel p holds
/// `w[16p + j][q]` at j (0 past row n - 1).
pub(crate) struct Panels {
    n: usize,
    k: usize,
    lines: Words<Line>,
}

impl Panels {
    /// Packs `w` `[n, k]` into lines placed as `placement` says; `None` when the memory cannot
    /// be had (the caller then multiplies from `w` as it is).
    fn pack(w: &[f32], n: usize, k: usize, placement: Placement) -> Option<Panels> {
        let count = n.div_ceil(LANES).checked_mul(k)?;
        let mut lines: Words<Line> = Words::zeroed(count, placement)?;
        if k > 0 {
            lines.par_chunks_mut(k).enumerate().for_each(|(p, panel)| {
                for j in 0..LANES.min(n - p * LANES) {
                    let row = &w[(p * LANES + j) * k..][..k];
                    for (line, &x) in panel.iter_mut().zip(row) {
                        line.0[j] = x;
                    }
                }
            });
        }
        Some(Panels { n, k, lines })
    }

    fn panel(&self, p: usize) -> *const f32 {
        self.lines[p * self.k..].as_ptr().cast()
    }
}

/// An f32 weight's panels, packed on its first product and kept until its bytes change
/// (the CPU backend clears them on every write, as it does AMX's tiles); placed as their
/// weight is (`words.rs`), so on huge pages from 2 MiB. (MiniLM at batch 1, whose 42 MB of
/// panels stream from memory, showed no measurable change from that: benches/README.md.)
#[derive(Default)]
pub struct WeightPanels {
    panels: OnceLock<Option<Panels>>,
    placement: Placement,
}

impl std::fmt::Debug for WeightPanels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.panels.get() {
            Some(Some(p)) => write!(f, "WeightPanels({} × {})", p.n, p.k),
            _ => write!(f, "WeightPanels(none)"),
        }
    }
}

impl WeightPanels {
    /// None yet; packed into memory placed as their weight's (`placement`).
    pub fn new(placement: Placement) -> WeightPanels {
        WeightPanels { panels: OnceLock::new(), placement }
    }

    /// Forgets the panels (the weight's bytes are about to change).
    pub fn clear(&mut self) {
        self.panels.take();
    }

    /// Whether the panels are packed, and if so on huge pages (a mapping that asked for them).
    #[cfg(test)]
    pub(crate) fn packed_on_huge_pages(&self) -> Option<bool> {
        self.panels.get()?.as_ref().map(|p| p.lines.on_huge_pages())
    }

    /// The panels of `w` `[n, k]`, packed now if this is the first call; `None` when they
    /// were packed for another shape, or could not be allocated.
    pub(crate) fn get_or_pack(&self, w: &[f32], n: usize, k: usize) -> Option<&Panels> {
        let panels = self.panels.get_or_init(|| Panels::pack(&w[..n * k], n, k, self.placement)).as_ref()?;
        (panels.n == n && panels.k == k).then_some(panels)
    }
}

/// Whether [`multiply`] runs at `isa` (the active level): AVX2 or AVX-512 on x86-64.
pub fn available(isa: CpuIsa) -> bool {
    cfg!(target_arch = "x86_64") && isa >= CpuIsa::Avx2 && isa.supported()
}

/// `c = epilogue(a · wᵀ)` for a `[m, k]` and the weight w `[n, k]` of `panels`, c `[m, n]`,
/// row-major. Call only where [`available`] says so.
pub(crate) fn multiply(a: &[f32], m: usize, panels: &Panels, c: &mut [f32], epilogue: Epilogue) {
    multiply_at(CpuIsa::active(), a, m, panels, c, epilogue)
}

/// [`multiply`] with the kernels of `isa`, which the CPU must run.
fn multiply_at(isa: CpuIsa, a: &[f32], m: usize, panels: &Panels, c: &mut [f32], epilogue: Epilogue) {
    let (n, k) = (panels.n, panels.k);
    assert!(available(isa), "panels::multiply needs AVX2 or AVX-512");
    let task_fn = x86::task_fn(isa);
    assert!(a.len() >= m * k && c.len() >= m * n && epilogue.bias.is_none_or(|b| b.len() >= n));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // No K blocks to run: every sum is empty.
        c[..m * n].fill(0.0);
        return c[..m * n].chunks_exact_mut(n).for_each(|row| epilogue.apply(row, 0));
    }
    let pairs = n.div_ceil(2 * LANES);
    // Rows in even shares of at most TASK_ROWS (whole groups), so that no task has much more
    // to do than another.
    let rows_per_task = m.div_ceil(m.div_ceil(TASK_ROWS)).next_multiple_of(GROUP);
    let row_tasks = m.div_ceil(rows_per_task);
    let threads = rayon::current_num_threads();
    // A few tasks per thread: where the rows make fewer than that, the panel pairs split too.
    let column_tasks =
        if threads == 1 || 2 * m * n * k < 1 << 20 { 1 } else { (2 * threads).div_ceil(row_tasks).min(pairs) };
    let pairs_per_task = pairs.div_ceil(column_tasks);
    let job = Job { a, k, panels, c: c.as_mut_ptr(), n, epilogue };
    let job = &job;
    let task = |t: usize| {
        let (r, s) = (t / column_tasks, t % column_tasks);
        let rows = r * rows_per_task..((r + 1) * rows_per_task).min(m);
        let cols = (s * pairs_per_task * 2 * LANES).min(n)..((s + 1) * pairs_per_task * 2 * LANES).min(n);
        // SAFETY: the CPU runs `isa` (asserted above); a holds m × k, the panels cover n
        // columns, and this task alone writes rows × cols of c (m × n).
        unsafe { task_fn(job, rows, cols) };
    };
    if row_tasks * column_tasks == 1 {
        task(0);
    } else {
        (0..row_tasks * column_tasks).into_par_iter().for_each(task);
    }
}

/// One product, shared by its tasks: a (rows of k), the weight's panels, c (rows of n), and
/// the epilogue.
struct Job<'a> {
    a: &'a [f32],
    k: usize,
    panels: &'a Panels,
    c: *mut f32,
    n: usize,
    epilogue: Epilogue<'a>,
}
// SAFETY: tasks share a job to write disjoint blocks of c (`multiply_at`).
unsafe impl Sync for Job<'_> {}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CpuIsa, GROUP, Job, K_BLOCK, LANES, PREFETCH_LINES, PREFETCH_LINES_AVX2, ROWS};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Rows `rows` × columns `cols` of c (row stride n), K in blocks of [`K_BLOCK`]: for each,
    /// the rows are copied k-major in groups of 16 (one pointer for the kernel's broadcasts:
    /// a pointer per row would cost an integer add per broadcast, on the FMA ports), then each
    /// pair of panels in `cols` (its K block in the L1 cache) multiplies every group's blocks
    /// of rows (from L2). Then the task's block of c gets the epilogue while it is in L2.
    ///
    /// # Safety
    /// The CPU has AVX-512 F (`AVX512`) or AVX2 and FMA; the job's a holds the rows (k values
    /// each), its c m × n values of which this call alone writes `rows` × `cols`;
    /// `cols.start` is a multiple of 32.
    #[inline(always)]
    unsafe fn task<const AVX512: bool>(job: &Job, rows: Range<usize>, cols: Range<usize>) {
        let Job { a, k, panels, c, n, epilogue } = *job;
        thread_local! {
            static PACKED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
        }
        let groups = rows.len().div_ceil(GROUP);
        let mut packed = PACKED.take();
        packed.resize(groups * GROUP * K_BLOCK, 0.0);
        for q0 in (0..k).step_by(K_BLOCK) {
            let depth = K_BLOCK.min(k - q0);
            for (g, group) in packed.chunks_exact_mut(GROUP * K_BLOCK).enumerate() {
                let first = rows.start + g * GROUP;
                let height = GROUP.min(rows.end - first);
                let block = &a[first * k..][..(height - 1) * k + q0 + depth];
                // SAFETY: `block` holds `height` rows of k from row `first`, the group
                // GROUP × K_BLOCK values; the CPU has AVX-512 where `AVX512`.
                match AVX512 {
                    true => unsafe { pack_rows_avx512(block, k, height, q0, depth, group) },
                    false => pack_rows(block, k, height, q0, depth, group),
                }
            }
            for j0 in cols.clone().step_by(2 * LANES) {
                let width = (2 * LANES).min(cols.end - j0);
                let w = panels.panel(j0 / LANES).wrapping_add(q0 * LANES);
                for (g, group) in packed.chunks_exact(GROUP * K_BLOCK).enumerate() {
                    // A group's rows as register blocks: 12, then the rest (4 of 16).
                    let group_rows = GROUP.min(rows.end - rows.start - g * GROUP);
                    for r0 in (0..group_rows).step_by(ROWS) {
                        let (i0, height) = (rows.start + g * GROUP + r0, ROWS.min(group_rows - r0));
                        let c = c.wrapping_add(i0 * n + j0);
                        let a = group[r0..].as_ptr();
                        let block = Block { a, w, k, depth, c, n, width, add: q0 > 0 };
                        // SAFETY: `depth` lines of GROUP packed values from row r0, 1 or 2
                        // panels of k lines from line q0, and height × width outputs of c, all
                        // this call's (the caller's contract).
                        unsafe {
                            match AVX512 {
                                true => by_shape(height, width > LANES, block),
                                false => by_shape_avx2(height, width > LANES, block),
                            }
                        }
                    }
                }
            }
        }
        // The task's block of c, in L2 (a block of 16 rows × 768 columns is 48 KiB), gets the
        // epilogue row by row: long runs for the vectorised activation.
        if !epilogue.is_identity() {
            for i in rows {
                // SAFETY: row i, columns `cols`, are this task's (the caller's contract).
                let out = unsafe { std::slice::from_raw_parts_mut(c.add(i * n + cols.start), cols.len()) };
                epilogue.apply(out, cols.start);
            }
        }
        PACKED.set(packed);
    }

    /// Copies `height` (≤ 16) rows of `rows` (k apart), values q0..q0 + depth, k-major into
    /// `group`: line q (GROUP values) holds value q0 + q of each row; lines past `depth` and
    /// slots past `height` are left as they are (no kernel reads them).
    fn pack_rows(rows: &[f32], k: usize, height: usize, q0: usize, depth: usize, group: &mut [f32]) {
        for i in 0..height {
            for (q, &x) in rows[i * k + q0..][..depth].iter().enumerate() {
                group[q * GROUP + i] = x;
            }
        }
    }

    /// [`pack_rows`] 16 values of each row at a time, as a 16 × 16 transpose in registers
    /// (a scalar copy compiles to scatters, which took a seventh of a batch-1 product).
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_rows_avx512(rows: &[f32], k: usize, height: usize, q0: usize, depth: usize, group: &mut [f32]) {
        assert!(height <= GROUP && rows.len() >= (height - 1) * k + q0 + depth && group.len() >= depth * GROUP);
        for s in (0..depth).step_by(LANES) {
            let count = LANES.min(depth - s);
            let mask: __mmask16 = ((1u32 << count) - 1) as u16;
            // SAFETY (loads): row i holds values q0 + s .. q0 + s + count (asserted above).
            let v: [__m512; GROUP] = std::array::from_fn(|i| match i < height {
                true => unsafe { _mm512_maskz_loadu_ps(mask, rows.as_ptr().add(i * k + q0 + s)) },
                false => _mm512_setzero_ps(),
            });
            let t = transpose16(v);
            for (q, line) in t.iter().take(count).enumerate() {
                // SAFETY: line s + q < depth of the group (asserted above).
                unsafe { _mm512_storeu_ps(group.as_mut_ptr().add((s + q) * GROUP), *line) };
            }
        }
    }

    /// The transpose of 16 vectors of 16: lane i of result q is lane q of `v[i]`.
    #[target_feature(enable = "avx512f")]
    fn transpose16(v: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved within 128-bit lanes: a[2p] lane L holds rows 2p, 2p + 1
        // at values 4L, 4L + 1; a[2p + 1] at 4L + 2, 4L + 3.
        let mut a = [_mm512_setzero_ps(); 16];
        for p in 0..8 {
            a[2 * p] = _mm512_unpacklo_ps(v[2 * p], v[2 * p + 1]);
            a[2 * p + 1] = _mm512_unpackhi_ps(v[2 * p], v[2 * p + 1]);
        }
        // Quads: b[4g + r] lane L holds rows 4g .. 4g + 3 at value 4L + r.
        let mut b = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let pd = |x: __m512| _mm512_castps_pd(x);
            let (lo, hi) = (a[4 * g], a[4 * g + 2]);
            b[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(lo), pd(hi)));
            b[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(lo), pd(hi)));
            let (lo, hi) = (a[4 * g + 1], a[4 * g + 3]);
            b[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(lo), pd(hi)));
            b[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(lo), pd(hi)));
        }
        // Value 4L + r of all 16 rows: lane L of b[r], b[4 + r], b[8 + r], b[12 + r].
        let mut t = [_mm512_setzero_ps(); 16];
        for r in 0..4 {
            let x01 = _mm512_shuffle_f32x4::<0x44>(b[r], b[4 + r]);
            let x23 = _mm512_shuffle_f32x4::<0xEE>(b[r], b[4 + r]);
            let y01 = _mm512_shuffle_f32x4::<0x44>(b[8 + r], b[12 + r]);
            let y23 = _mm512_shuffle_f32x4::<0xEE>(b[8 + r], b[12 + r]);
            t[r] = _mm512_shuffle_f32x4::<0x88>(x01, y01);
            t[4 + r] = _mm512_shuffle_f32x4::<0xDD>(x01, y01);
            t[8 + r] = _mm512_shuffle_f32x4::<0x88>(x23, y23);
            t[12 + r] = _mm512_shuffle_f32x4::<0xDD>(x23, y23);
        }
        t
    }

    /// [`task`] compiled for one instruction set. Unsafe: as `task`, on a CPU with it.
    pub(super) type TaskFn = unsafe fn(&Job, Range<usize>, Range<usize>);

    /// The task of `isa` (AVX2 or better).
    pub(super) fn task_fn(isa: CpuIsa) -> TaskFn {
        if isa >= CpuIsa::Avx512 { task_avx512 } else { task_avx2 }
    }

    /// # Safety
    /// As [`task`], on a CPU with AVX-512 F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn task_avx512(job: &Job, rows: Range<usize>, cols: Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { task::<true>(job, rows, cols) }
    }

    /// # Safety
    /// As [`task`], on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn task_avx2(job: &Job, rows: Range<usize>, cols: Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { task::<false>(job, rows, cols) }
    }

    /// One register block's work: `depth` values of K from `a` (k-major, lines of GROUP) and
    /// `w` (the first panel's line; the second panel k lines on), into c (rows n apart, `width`
    /// columns kept), added to what c holds when `add`.
    #[derive(Clone, Copy)]
    struct Block {
        a: *const f32,
        w: *const f32,
        k: usize,
        depth: usize,
        c: *mut f32,
        n: usize,
        width: usize,
        add: bool,
    }

    /// [`kernel`] for `height` (1 to 12) rows and one or two panels.
    ///
    /// # Safety
    /// As [`kernel`].
    #[target_feature(enable = "avx512f")]
    unsafe fn by_shape(height: usize, two: bool, b: Block) {
        macro_rules! by_height {
            ($np:literal) => {
                // SAFETY: the caller's contract.
                unsafe {
                    match height {
                        1 => kernel::<1, $np>(b),
                        2 => kernel::<2, $np>(b),
                        3 => kernel::<3, $np>(b),
                        4 => kernel::<4, $np>(b),
                        5 => kernel::<5, $np>(b),
                        6 => kernel::<6, $np>(b),
                        7 => kernel::<7, $np>(b),
                        8 => kernel::<8, $np>(b),
                        9 => kernel::<9, $np>(b),
                        10 => kernel::<10, $np>(b),
                        11 => kernel::<11, $np>(b),
                        _ => kernel::<ROWS, $np>(b),
                    }
                }
            };
        }
        if two { by_height!(2) } else { by_height!(1) }
    }

    /// `MR` rows × `NP` panels of the block: `MR · NP` sums in registers, each the FMA chain
    /// over the block's K in order (continued from c's value when `add`: the same chain as
    /// without K blocks).
    ///
    /// # Safety
    /// The CPU has AVX-512 F; the rows, panel lines and outputs are there.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn kernel<const MR: usize, const NP: usize>(b: Block) {
        let Block { a, w, k, depth, c, n, width, add } = b;
        let masks: [__mmask16; NP] = std::array::from_fn(|t| {
            let left = width.saturating_sub(t * LANES).min(LANES);
            ((1u32 << left) - 1) as u16
        });
        let mut acc = [[_mm512_setzero_ps(); NP]; MR];
        if add {
            for (i, acc) in acc.iter_mut().enumerate() {
                for t in 0..NP {
                    // SAFETY: the masked columns of row i are in c.
                    acc[t] = unsafe { _mm512_maskz_loadu_ps(masks[t], c.add(i * n + t * LANES)) };
                }
            }
        }
        for q in 0..depth {
            for t in 0..NP {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((t * k + q + PREFETCH_LINES) * LANES) as *const i8);
            }
            // SAFETY: line q of each panel, 64-byte aligned.
            let b: [__m512; NP] = std::array::from_fn(|t| unsafe { _mm512_load_ps(w.add((t * k + q) * LANES)) });
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: line q holds GROUP values, of which these rows are i.
                let x = _mm512_set1_ps(unsafe { *a.add(q * GROUP + i) });
                for t in 0..NP {
                    acc[t] = _mm512_fmadd_ps(x, b[t], acc[t]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (t, &v) in acc.iter().enumerate() {
                // SAFETY: the masked columns of row i are in c.
                unsafe { _mm512_mask_storeu_ps(c.add(i * n + t * LANES), masks[t], v) };
            }
        }
    }

    /// AVX2 (16 registers of 8): a block of 12 rows × 2 panels runs as up to four calls of 6
    /// rows × 1 panel, 12 sums each. The same panels and the same FMA chains, so the same bits
    /// as AVX-512.
    ///
    /// # Safety
    /// As [`kernel_avx2`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn by_shape_avx2(height: usize, two: bool, b: Block) {
        const HALF: usize = ROWS / 2;
        for t in 0..1 + two as usize {
            let width = b.width.saturating_sub(t * LANES).min(LANES);
            for r0 in (0..height).step_by(HALF) {
                let part = Block {
                    a: b.a.wrapping_add(r0),
                    w: b.w.wrapping_add(t * b.k * LANES),
                    c: b.c.wrapping_add(r0 * b.n + t * LANES),
                    width,
                    ..b
                };
                // SAFETY: rows r0.. of the block, panel t: the caller's contract.
                unsafe {
                    match height - r0 {
                        1 => kernel_avx2::<1>(part),
                        2 => kernel_avx2::<2>(part),
                        3 => kernel_avx2::<3>(part),
                        4 => kernel_avx2::<4>(part),
                        5 => kernel_avx2::<5>(part),
                        _ => kernel_avx2::<HALF>(part),
                    }
                }
            }
        }
    }

    /// `MR` rows (at most 6) × one panel with 8-wide registers: `2 · MR` sums, each the FMA
    /// chain over the block's K in order, as [`kernel`]'s.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the rows (lines of GROUP packed values), panel lines and outputs
    /// (`width` ≤ 16 columns) are there.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kernel_avx2<const MR: usize>(b: Block) {
        let Block { a, w, depth, c, n, width, add, .. } = b;
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let masks: [__m256i; 2] =
            std::array::from_fn(|h| _mm256_cmpgt_epi32(_mm256_set1_epi32(width.saturating_sub(8 * h) as i32), lanes));
        // A whole panel's outputs take plain loads and stores: `vmaskmovps` costs several
        // of them (a masked store tens of cycles on Zen 1).
        let whole = width == 16;
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if add {
            for (i, acc) in acc.iter_mut().enumerate() {
                for h in 0..2 {
                    let at = c.wrapping_add(i * n + 8 * h);
                    // SAFETY: the masked columns of row i are in c (all 16 when whole).
                    acc[h] = unsafe { if whole { _mm256_loadu_ps(at) } else { _mm256_maskload_ps(at, masks[h]) } };
                }
            }
        }
        for q in 0..depth {
            // As `kernel`'s (on Zen 1, where the panels stream from memory at batch 1, MiniLM
            // 1 × 16 went from 6.6 to 6.3 ms at 16 lines ahead).
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((q + PREFETCH_LINES_AVX2) * LANES) as *const i8);
            // SAFETY: line q of the panel, 64-byte aligned.
            let v: [__m256; 2] = std::array::from_fn(|h| unsafe { _mm256_load_ps(w.add(q * LANES + 8 * h)) });
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: line q holds GROUP values, of which these rows are i.
                let x = _mm256_set1_ps(unsafe { *a.add(q * GROUP + i) });
                for h in 0..2 {
                    acc[h] = _mm256_fmadd_ps(x, v[h], acc[h]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (h, &v) in acc.iter().enumerate() {
                let at = c.wrapping_add(i * n + 8 * h);
                // SAFETY: the masked columns of row i are in c (all 16 when whole).
                unsafe { if whole { _mm256_storeu_ps(at, v) } else { _mm256_maskstore_ps(at, masks[h], v) } };
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::{CpuIsa, Job};
    use std::ops::Range;

    pub(super) type TaskFn = unsafe fn(&Job, Range<usize>, Range<usize>);

    pub(super) fn task_fn(_: CpuIsa) -> TaskFn {
        unreachable!("panels::available is false here")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(i: usize, salt: usize) -> f32 {
        ((i * 2_654_435_761 + salt * 97) % 2001) as f32 / 1000.0 - 1.0
    }

    /// The instruction sets this CPU runs the panels with.
    fn isas() -> Vec<CpuIsa> {
        let isas: Vec<CpuIsa> = [CpuIsa::Avx512, CpuIsa::Avx2].into_iter().filter(|&isa| available(isa)).collect();
        if isas.is_empty() {
            eprintln!("skipped: no AVX2 on this CPU");
        }
        isas
    }

    /// Against f64 dot products at shapes that leave partial blocks on every side (rows not a
    /// multiple of 6 or 12, columns not of 8, 16 or 32, K of 0, 1, odd, and across K blocks), one
    /// thread's work and split across tasks by rows and by columns; with a bias and GELU, the
    /// bits of the plain product followed by the epilogue; AVX2 and AVX-512 the same bits.
    #[test]
    fn matches_f64_dot_products_at_awkward_shapes() {
        for isa in isas() {
            check(isa);
        }
    }

    fn check(isa: CpuIsa) {
        for &(m, n, k) in &[
            (1, 1, 1),
            (5, 9, 0),
            (1, 7, 15),
            (3, 16, 16),
            (7, 129, 17),
            (8, 32, 7),
            (9, 33, 129),
            (16, 384, 384),
            (17, 130, 385),
            (32, 1536, 384),
            (129, 48, 1536),
            (200, 100, 64),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
            let w: Vec<f32> = (0..n * k).map(|i| value(i, 2)).collect();
            let bias: Vec<f32> = (0..n).map(|i| value(i, 3)).collect();
            let kept = WeightPanels::default();
            let panels = kept.get_or_pack(&w, n, k).expect("packed");
            let mut c = vec![f32::NAN; m * n];
            multiply_at(isa, &a, m, panels, &mut c, Epilogue::NONE);
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * w[j * k + p] as f64).sum();
                    let norm: f64 = (0..k).map(|p| (a[i * k + p] as f64 * w[j * k + p] as f64).abs()).sum();
                    let got = c[i * n + j] as f64;
                    // One FMA chain of k terms: the textbook bound for a sum in order, k
                    // roundings of at most eps/2 relative to the sum of magnitudes.
                    let bound = k as f64 * f32::EPSILON as f64 / 2.0 * norm + 1e-30;
                    assert!((got - dot).abs() <= bound, "{isa} {m}x{n}x{k}: c[{i},{j}] = {got}, want {dot}");
                }
            }
            let mut fused = vec![f32::NAN; m * n];
            let epilogue = Epilogue { bias: Some(&bias), code: 1 };
            multiply_at(isa, &a, m, panels, &mut fused, epilogue);
            c.chunks_exact_mut(n).for_each(|row| epilogue.apply(row, 0));
            assert_eq!(fused, c, "{isa} {m}x{n}x{k} with bias and GELU");
            if isa != CpuIsa::Avx512 && available(CpuIsa::Avx512) {
                let mut wide = vec![f32::NAN; m * n];
                multiply_at(CpuIsa::Avx512, &a, m, panels, &mut wide, epilogue);
                assert_eq!(wide, fused, "{m}x{n}x{k}: AVX2 and AVX-512 bits");
            }
        }
    }

    /// A row's outputs have the same bits alone, among a few rows and among many (split
    /// across tasks by rows): every output is one FMA chain over k in order.
    #[test]
    fn a_row_has_the_same_bits_in_any_batch() {
        for isa in isas() {
            same_bits(isa);
        }
    }

    fn same_bits(isa: CpuIsa) {
        let (n, k) = (100, 300);
        let w: Vec<f32> = (0..n * k).map(|i| value(i, 2)).collect();
        let kept = WeightPanels::default();
        let panels = kept.get_or_pack(&w, n, k).expect("packed");
        let many = 250;
        let a: Vec<f32> = (0..many * k).map(|i| value(i, 1)).collect();
        let mut all = vec![0f32; many * n];
        multiply_at(isa, &a, many, panels, &mut all, Epilogue::NONE);
        for (first, rows) in [(0, 1), (3, 5), (100, 16), (240, 10)] {
            let mut some = vec![0f32; rows * n];
            multiply_at(isa, &a[first * k..], rows, panels, &mut some, Epilogue::NONE);
            assert_eq!(some, all[first * n..][..rows * n], "{isa} rows {first}..{}", first + rows);
        }
    }

    /// Panels kept for one shape are not used for another (a buffer holding another weight).
    #[test]
    fn panels_of_another_shape_are_not_used() {
        let w = vec![1f32; 64];
        let kept = WeightPanels::default();
        assert!(kept.get_or_pack(&w, 4, 16).is_some());
        assert!(kept.get_or_pack(&w, 16, 4).is_none());
        assert!(kept.get_or_pack(&w, 4, 16).is_some());
    }
}
