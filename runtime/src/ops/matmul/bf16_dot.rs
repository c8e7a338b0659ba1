//! Products by a bf16 weight `[N, K]` computed in bf16: the activations are rounded to bf16
//! once per product (to nearest even, as PyTorch rounds them under bf16 autocast) and AVX-512
//! BF16's `vdpbf16ps` multiplies pairs of bf16 values into f32 sums: twice the products of an
//! f32 FMA per instruction, from half the bytes. This is what `--precision bf16` buys on a
//! CPU that has the instruction (Cooper Lake, Sapphire Rapids, Zen 4 and later); elsewhere a
//! bf16 weight is widened to f32 and multiplied exactly (`dequantized_panels`).
//!
//! The error it adds: each activation rounded to 8 significant bits (relative 2^-9), so an
//! output moves by about 2^-9 · |a|·|w| / √K on random-sign data; the sums stay in f32.
//!
//! Layout: dot-product form, as the weight is stored (no packing, so a product of a few rows
//! reads the weight once and nothing is prepared at load): a tile of 4 activation rows by 4
//! weight rows keeps 16 f32 vectors of partial sums over K, and one transposing reduction
//! turns them into the 16 outputs at the end. Each output's sum runs in one fixed order, so a
//! row's result does not depend on the batch it came in (as with [`crate::ops::qdot`]).

use super::super::isa::CpuIsa;
use super::Epilogue;
pub use super::WeightTiles;

/// Whether this CPU runs [`multiply`] at level `isa` (AVX-512 with the BF16 extension; a
/// `TANDEM_CPU_ISA` cap below AVX-512 turns it off).
pub fn available(isa: CpuIsa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa >= CpuIsa::Avx512 && isa.supported() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Products of at least this many activation rows run on AMX's tiles where the CPU has them
/// and Linux grants them ([`crate::ops::isa::amx_bf16`]; `super::amx`); fewer rows (a query,
/// a short batch) take `vdpbf16ps`, which reads the weight as it is stored, unless the weight
/// keeps its tiles ([`WeightTiles`]: every weight the CPU backend holds), which takes away
/// the repacking that made the tiles slower for a few rows: then every product takes them.
/// Each path sums a row's outputs in its own fixed order, so a row's bits depend on which
/// path its product takes, not otherwise on the batch.
pub const AMX_MIN_ROWS: usize = 32;

/// `out[r, c] = epilogue(Σ_j bf16(a[r, j]) · w[c, j])` for `a` `[m, k]` (f32) and `w` `[n, k]`
/// (bf16 bits, little-endian bytes), `out` `[m, n]`.
///
/// # Panics
/// When this CPU lacks AVX-512 BF16, or the slices are shorter than the shapes say: the
/// caller (`cpu_stored`) checks both.
#[allow(clippy::too_many_arguments)]
pub(crate) fn multiply(
    a: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    n: usize,
    out: &mut [f32],
    epilogue: Epilogue,
    kept: Option<&WeightTiles>,
) {
    assert!(available(CpuIsa::detected()), "bf16 dot products need AVX-512 BF16");
    assert!(a.len() >= m * k && w.len() >= 2 * n * k && out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
    } else {
        #[cfg(target_arch = "x86_64")]
        if x86::multiply(a, m, k, w, n, out, epilogue, kept) {
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = kept;
    }
    super::bias_and_activation(&mut out[..m * n], n, epilogue.bias, epilogue.code);
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{round_row, round_row_spread};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::few_rows::reduce16;
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// Activation values per `vdpbf16ps` operand (32 bf16 in a 512-bit register).
    const LANES: usize = 32;

    /// Activation rows (weight rows) a task takes at most: a task's rows of both stay in L2.
    const TASK_ROWS: usize = 64;

    /// Multiply-accumulates below this many run on the calling thread (as `qdot`'s).
    const SERIAL_MACS: usize = 1 << 16;

    thread_local! {
        /// The activations rounded to bf16, reused from one product to the next.
        static ROUNDED: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
    }

    /// The product, and whether it applied `epilogue` too (AMX does, per task).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn multiply(
        a: &[f32],
        m: usize,
        k: usize,
        w: &[u8],
        n: usize,
        out: &mut [f32],
        epilogue: super::Epilogue,
        kept: Option<&super::WeightTiles>,
    ) -> bool {
        if (m >= super::AMX_MIN_ROWS || kept.is_some()) && crate::ops::isa::amx_bf16() {
            // SAFETY: `amx_bf16` holds; the caller's slices hold m·k, n·k and m·n.
            unsafe { super::super::amx::multiply(&a[..m * k], m, k, &w[..2 * n * k], n, out, epilogue, kept) };
            return true;
        }
        // Activation rows padded with zeros to whole registers, so that the kernels read them
        // whole; the weight's last partial register is read masked.
        let stride = k.next_multiple_of(LANES);
        let mut rounded = ROUNDED.take();
        // `round_row` writes every value of its row, padding included: no need to clear.
        if rounded.len() < m * stride {
            rounded.resize(m * stride, 0);
        }
        let round = |(row, dst): (&[f32], &mut [u16])| {
            // SAFETY: `available` was checked by the caller; dst holds `stride` ≥ k values.
            unsafe { round_row(row, dst) }
        };
        if m * k >= 1 << 16 {
            a[..m * k].par_chunks(k).zip(rounded[..m * stride].par_chunks_mut(stride)).for_each(round);
        } else {
            a[..m * k].chunks(k).zip(rounded[..m * stride].chunks_mut(stride)).for_each(round);
        }
        // Addresses, so that the tasks may share them; tasks write disjoint blocks of `out`.
        let (a, w, dst) = (rounded.as_ptr() as usize, w.as_ptr() as usize, out.as_mut_ptr() as usize);
        let task = move |(rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>)| {
            // SAFETY: the rounded rows hold m × stride values, the weight n × k, `out` m × n;
            // `rows` and `cols` lie inside them, and no other task writes this block.
            unsafe { block(a as *const u16, stride, w as *const u16, k, dst as *mut f32, n, rows, cols) }
        };
        let threads = rayon::current_num_threads();
        if m * n * k < SERIAL_MACS || threads == 1 {
            task((0..m, 0..n));
        } else {
            // Enough blocks for every thread to get several; columns split finer when the
            // rows are few (batch 1), so that the weight's rows spread over the threads.
            let row_blocks = m.div_ceil(TASK_ROWS);
            let col_chunk = if row_blocks >= 4 * threads {
                TASK_ROWS
            } else {
                n.div_ceil(4 * threads / row_blocks).next_multiple_of(4).clamp(4, TASK_ROWS)
            };
            let blocks: Vec<_> = (0..row_blocks)
                .flat_map(|rb| {
                    (0..n.div_ceil(col_chunk)).map(move |cb| {
                        (rb * TASK_ROWS..((rb + 1) * TASK_ROWS).min(m), cb * col_chunk..((cb + 1) * col_chunk).min(n))
                    })
                })
                .collect();
            blocks.into_par_iter().for_each(task);
        }
        ROUNDED.set(rounded);
        false
    }

    /// Rounds the k values of `x` to bf16 (nearest even) into `dst`, zeros after them up to
    /// the next multiple of 32.
    ///
    /// # Safety
    /// The CPU has AVX-512 BF16; `dst` holds `x.len().next_multiple_of(32)` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(crate) unsafe fn round_row(x: &[f32], dst: &mut [u16]) {
        debug_assert!(dst.len() >= x.len().next_multiple_of(LANES));
        // SAFETY: the caller's contract: dst holds the row's whole groups of 32.
        unsafe { round_row_spread(x, dst.as_mut_ptr(), LANES) }
    }

    /// [`round_row`] with group g of 32 values (the last one padded with zeros) written at
    /// `dst + g · step`: `step` 32 writes a row, 512 a row of 32-value tiles.
    ///
    /// # Safety
    /// The CPU has AVX-512 BF16; `dst + g · step` holds 32 values for every group g of x.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(crate) unsafe fn round_row_spread(x: &[f32], dst: *mut u16, step: usize) {
        let k = x.len();
        let x = x.as_ptr();
        for (g, j) in (0..k).step_by(LANES).enumerate() {
            let left = k - j;
            let mask = |from: usize| -> __mmask16 {
                let n = left.saturating_sub(from).min(16);
                if n == 16 { 0xffff } else { (1u16 << n) - 1 }
            };
            // SAFETY: masked loads read only the k values (the addresses of masked-off lanes,
            // possibly past the row, are not touched); the caller's contract for dst.
            unsafe {
                let lo = _mm512_maskz_loadu_ps(mask(0), x.wrapping_add(j));
                let hi = _mm512_maskz_loadu_ps(mask(16), x.wrapping_add(j + 16));
                // The second operand becomes the low half.
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.add(g * step).cast(), v);
            }
        }
    }

    /// The outputs of activation rows `rows` by weight rows `cols`: weight rows in groups
    /// that fit L1 beside the activation row being read, each group against every tile of
    /// four activation rows.
    ///
    /// # Safety
    /// As [`tile`], for every row and column of the block.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn block(
        a: *const u16,
        lda: usize,
        w: *const u16,
        k: usize,
        out: *mut f32,
        ldo: usize,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        // About 16 KiB of weight rows per group (4 at K = 1536, 16 at K = 384).
        let group = ((16 << 10) / (2 * k)).clamp(4, 16) & !3;
        let mut c0 = cols.start;
        while c0 < cols.end {
            let c1 = (c0 + group).min(cols.end);
            let mut r0 = rows.start;
            while r0 < rows.end {
                let r = (rows.end - r0).min(4);
                let mut c = c0;
                while c < c1 {
                    let cs = (c1 - c).min(4);
                    // SAFETY: the caller's contract, for rows r0..r0+r and columns c..c+cs.
                    unsafe {
                        let (a, w, o) = (a.add(r0 * lda), w.add(c * k), out.add(r0 * ldo + c));
                        match (r, cs) {
                            (4, 4) => tile::<4, 4>(a, lda, w, k, o, ldo),
                            (4, 3) => tile::<4, 3>(a, lda, w, k, o, ldo),
                            (4, 2) => tile::<4, 2>(a, lda, w, k, o, ldo),
                            (4, _) => tile::<4, 1>(a, lda, w, k, o, ldo),
                            (3, 4) => tile::<3, 4>(a, lda, w, k, o, ldo),
                            (3, 3) => tile::<3, 3>(a, lda, w, k, o, ldo),
                            (3, 2) => tile::<3, 2>(a, lda, w, k, o, ldo),
                            (3, _) => tile::<3, 1>(a, lda, w, k, o, ldo),
                            (2, 4) => tile::<2, 4>(a, lda, w, k, o, ldo),
                            (2, 3) => tile::<2, 3>(a, lda, w, k, o, ldo),
                            (2, 2) => tile::<2, 2>(a, lda, w, k, o, ldo),
                            (2, _) => tile::<2, 1>(a, lda, w, k, o, ldo),
                            (_, 4) => tile::<1, 4>(a, lda, w, k, o, ldo),
                            (_, 3) => tile::<1, 3>(a, lda, w, k, o, ldo),
                            (_, 2) => tile::<1, 2>(a, lda, w, k, o, ldo),
                            (_, _) => tile::<1, 1>(a, lda, w, k, o, ldo),
                        }
                    }
                    c += cs;
                }
                r0 += r;
            }
            c0 = c1;
        }
    }

    /// `R` rows of outputs by `C` columns: `out[r, c] = a_r · w_c` over k.
    ///
    /// # Safety
    /// `a` points at R rows of `lda` ≥ k.next_multiple_of(32) bf16 values (zeros past k), `w` at
    /// C rows of k bf16 values, `out` at R rows of `ldo` ≥ C floats; the CPU has AVX-512 BF16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile<const R: usize, const C: usize>(
        a: *const u16,
        lda: usize,
        w: *const u16,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let whole = k / LANES;
        let step = |acc: &mut [[__m512; C]; R], wv: [__m512bh; C], j: usize| {
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: row r of a holds whole registers up to lda ≥ j + 32.
                let av: __m512bh = unsafe { std::mem::transmute(_mm512_loadu_si512(a.add(r * lda + j).cast())) };
                for (sum, &wc) in row.iter_mut().zip(&wv) {
                    *sum = _mm512_dpbf16_ps(*sum, av, wc);
                }
            }
        };
        for b in 0..whole {
            let j = b * LANES;
            // SAFETY: j + 32 ≤ k: inside each weight row.
            let wv: [__m512bh; C] =
                std::array::from_fn(|c| unsafe { std::mem::transmute(_mm512_loadu_si512(w.add(c * k + j).cast())) });
            step(&mut acc, wv, j);
        }
        let tail = k % LANES;
        if tail != 0 {
            let j = whole * LANES;
            let mask: __mmask32 = (1u32 << tail) - 1;
            // SAFETY: the masked load reads the tail's values only.
            let wv: [__m512bh; C] = std::array::from_fn(|c| unsafe {
                std::mem::transmute(_mm512_maskz_loadu_epi16(mask, w.add(c * k + j).cast()))
            });
            step(&mut acc, wv, j);
        }
        // Every tile sums its lanes in the same order (smaller ones padded with zeros), so that
        // an output does not depend on the tile it fell in: a row gives the same bits alone
        // or in any batch. `reduce16` puts accumulator 4c + r at lane 4r + c: row r's four
        // columns are quarter r.
        let zero = _mm512_setzero_ps();
        let sums = reduce16(std::array::from_fn(|i| if i % 4 < R && i / 4 < C { acc[i % 4][i / 4] } else { zero }));
        for r in 0..R {
            let row = extract_quarter(sums, r);
            // SAFETY: out row r holds C columns here.
            unsafe {
                if C == 4 {
                    _mm_storeu_ps(out.add(r * ldo), row);
                } else {
                    _mm_mask_storeu_ps(out.add(r * ldo), (1u8 << C) - 1, row);
                }
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn extract_quarter(v: __m512, q: usize) -> __m128 {
        match q {
            0 => _mm512_castps512_ps128(v),
            1 => _mm512_extractf32x4_ps::<1>(v),
            2 => _mm512_extractf32x4_ps::<2>(v),
            _ => _mm512_extractf32x4_ps::<3>(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Activation;
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Whether this CPU lacks the kernel's instructions (said on stderr).
    fn skipped() -> bool {
        let skip = !available(CpuIsa::active());
        if skip {
            eprintln!("skipped: this CPU has no AVX-512 BF16 (or TANDEM_CPU_ISA caps it off)");
        }
        skip
    }

    /// Activations in [-2, 2] `[m, k]` and a bf16 weight in [-1, 1] `[n, k]`.
    fn operands(rng: &mut StdRng, m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<half::bf16>) {
        let a = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
        let w = (0..n * k).map(|_| half::bf16::from_f32(rng.random_range(-1.0..1.0))).collect();
        (a, w)
    }

    /// The product the kernel computes, in f64: activations rounded to bf16 as it rounds them.
    fn reference(a: &[f32], m: usize, k: usize, w: &[half::bf16], n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|j| f64::from(half::bf16::from_f32(a[r * k + j]).to_f32()) * f64::from(w[c * k + j].to_f32()))
                    .sum();
            }
        }
        out
    }

    #[test]
    fn agrees_with_rounded_activations_at_awkward_shapes() {
        if skipped() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(7);
        for (m, k, n) in [
            (1, 1, 1),
            (1, 7, 5),
            (4, 32, 3),
            (4, 32, 4),
            (4, 1, 4),
            (3, 33, 3),
            (7, 33, 9),
            (4, 64, 4),
            (129, 129, 7),
            (5, 384, 130),
            (67, 1536, 70),
            // AMX_MIN_ROWS rows and more: AMX's tiles where the CPU has them (16-row tiles
            // with row, column and K tails).
            (32, 1, 1),
            (33, 7, 17),
            (48, 32, 16),
            (50, 65, 33),
            (100, 384, 129),
        ] {
            let (a, w) = operands(&mut rng, m, k, n);
            let mut out = vec![f32::NAN; m * n];
            multiply(&a, m, k, bytemuck::cast_slice(&w), n, &mut out, Epilogue::NONE, None);
            let want = reference(&a, m, k, &w, n);
            for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                // Only the f32 summation order differs from the f64 sum of the same products.
                let bound = 1e-6 * k as f64 * 2.0 + 1e-6;
                assert!((f64::from(got) - want).abs() <= bound, "{m}×{k}×{n} at {i}: {got} vs {want}");
            }
        }
    }

    /// With the weight's tiles kept (as the CPU backend keeps them), a few rows take AMX's
    /// tiles too and agree with the rounded reference; a row's bits are then those it has in
    /// any product with tiles, kept or repacked; and tiles kept for another shape are not
    /// used.
    #[test]
    fn kept_tiles_serve_a_few_rows_and_give_the_bits_of_repacked_ones() {
        if skipped() {
            return;
        }
        if !crate::ops::isa::amx_bf16() {
            eprintln!("skipped: no AMX-BF16, or Linux did not grant the tile state");
            return;
        }
        let mut rng = StdRng::seed_from_u64(17);
        let (m, k, n) = (40, 130, 35);
        let (a, w) = operands(&mut rng, m, k, n);
        let w = bytemuck::cast_slice(&w);
        let mut repacked = vec![0.0; m * n];
        multiply(&a, m, k, w, n, &mut repacked, Epilogue::NONE, None);
        let kept = WeightTiles::default();
        for rows in [1, 7, 16, 40] {
            let mut out = vec![f32::NAN; rows * n];
            multiply(&a[..rows * k], rows, k, w, n, &mut out, Epilogue::NONE, Some(&kept));
            assert_eq!(out, repacked[..rows * n], "{rows} rows with kept tiles");
        }
        // The same WeightTiles asked for another shape packs that one afresh.
        let (b, w2) = operands(&mut rng, 3, 64, 20);
        let mut out = vec![f32::NAN; 3 * 20];
        multiply(&b, 3, 64, bytemuck::cast_slice(&w2), 20, &mut out, Epilogue::NONE, Some(&kept));
        let want = reference(&b, 3, 64, &w2, 20);
        for (got, want) in out.iter().zip(&want) {
            assert!((f64::from(*got) - want).abs() <= 1e-4, "{got} vs {want}");
        }
    }

    /// A bias and GELU as the bf16 path applies them (on AMX, inside each task, while its
    /// block is in cache) give the bits of the product followed by the epilogue's own pass.
    #[test]
    fn the_epilogue_inside_equals_a_pass_after() {
        if skipped() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(13);
        for (m, k, n) in [(3, 33, 7), (40, 65, 33), (129, 70, 130), (256, 384, 150)] {
            let (a, w) = operands(&mut rng, m, k, n);
            let w = bytemuck::cast_slice(&w);
            let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut after = vec![0.0; m * n];
            multiply(&a, m, k, w, n, &mut after, Epilogue::NONE, None);
            super::super::bias_and_activation(&mut after, n, Some(&bias), Activation::Gelu.code());
            let mut inside = vec![0.0; m * n];
            multiply(&a, m, k, w, n, &mut inside, Epilogue { bias: Some(&bias), code: Activation::Gelu.code() }, None);
            assert_eq!(inside, after, "{m}×{k}×{n}");
        }
    }

    #[test]
    fn rows_come_out_the_same_whatever_the_batch() {
        if skipped() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(11);
        let (m, k, n) = (17, 200, 33);
        let (a, w) = operands(&mut rng, m, k, n);
        let w = bytemuck::cast_slice(&w);
        let mut together = vec![0.0; m * n];
        multiply(&a, m, k, w, n, &mut together, Epilogue::NONE, None);
        for row in [0, 5, 16] {
            let mut alone = vec![0.0; n];
            multiply(&a[row * k..(row + 1) * k], 1, k, w, n, &mut alone, Epilogue::NONE, None);
            assert_eq!(alone, together[row * n..(row + 1) * n], "row {row} of {m} differs alone");
        }
    }

    /// On AMX (from `AMX_MIN_ROWS` rows) each row's sums do not depend on the other rows
    /// either: a row gives the same bits in any product of at least that many rows.
    #[test]
    fn amx_rows_come_out_the_same_whatever_the_batch() {
        if skipped() {
            return;
        }
        if !crate::ops::isa::amx_bf16() {
            eprintln!("AMX: not on this CPU (or not granted): these rows took vdpbf16ps");
        }
        let mut rng = StdRng::seed_from_u64(13);
        let (m, k, n) = (70, 200, 45);
        let (a, w) = operands(&mut rng, m, k, n);
        let w = bytemuck::cast_slice(&w);
        let mut together = vec![0.0; m * n];
        multiply(&a, m, k, w, n, &mut together, Epilogue::NONE, None);
        let start = 20;
        let fewer = AMX_MIN_ROWS + 1;
        let mut part = vec![0.0; fewer * n];
        multiply(&a[start * k..(start + fewer) * k], fewer, k, w, n, &mut part, Epilogue::NONE, None);
        assert_eq!(part, together[start * n..(start + fewer) * n], "rows {start}.. differ in a smaller batch");
    }

    /// Through the CPU backend: the default path takes bf16 products (bias and activation
    /// after), the exact one widens the weight to f32.
    #[test]
    fn the_cpu_backend_multiplies_in_bf16_on_its_fast_path_only() {
        use crate::backend::cpu::CpuBackend;
        use crate::ops::matmul::{Activation, MatMul};
        use crate::{DType, Graph, HostTensor, Op, Session, TensorData, TensorType};
        let mut rng = StdRng::seed_from_u64(5);
        let (m, n, k) = (7, 129, 65);
        let (a, w) = operands(&mut rng, m, k, n);
        let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut g = Graph::new("linear");
        let x = g.input("x", TensorType::fixed(DType::F32, &[m, k]));
        let wv = g.input("w", TensorType::fixed(DType::BF16, &[n, k]));
        let bv = g.input("b", TensorType::fixed(DType::F32, &[n]));
        let linear = Op::MatMul(MatMul { trans_b: true, activation: Activation::Gelu });
        let y = g.node1("mm", linear, &[x, wv, bv]).unwrap();
        g.output(y, "y");
        let inputs = [
            HostTensor::f32(vec![m, k], a.clone()).unwrap(),
            HostTensor::new(vec![n, k], TensorData::BF16(w.clone())).unwrap(),
            HostTensor::f32(vec![n], bias.clone()).unwrap(),
        ];
        let run = |backend: CpuBackend| {
            Session::new(backend, g.clone(), &[]).unwrap().run_blocking(&inputs).unwrap().remove(0).to_f32()
        };
        let (fast, exact) = (run(CpuBackend::new()), run(CpuBackend::exact()));
        let gelu = crate::ops::elementwise::gelu;
        for r in 0..m {
            for c in 0..n {
                let (wr, ar) = (&w[c * k..][..k], &a[r * k..][..k]);
                let dot: f64 = wr.iter().zip(ar).map(|(w, &a)| f64::from(w.to_f32()) * f64::from(a)).sum();
                let abs: f64 = wr.iter().zip(ar).map(|(w, &a)| (f64::from(w.to_f32()) * f64::from(a)).abs()).sum();
                let want = gelu((dot + f64::from(bias[c])) as f32);
                let e = exact[r * n + c];
                assert!((e - want).abs() as f64 <= 1e-5 * abs + 1e-5, "exact [{r}, {c}]: {e} vs {want}");
                // bf16 activations: each off by at most 2^-9 of itself (GELU's slope is ≤ 1.13).
                let f = fast[r * n + c];
                let bound = 1.13 * (abs * 2f64.powi(-9) + 1e-5 * abs) + 1e-5;
                assert!(((f - want).abs() as f64) <= bound, "fast [{r}, {c}]: {f} vs {want} (bound {bound:e})");
            }
        }
        if available(CpuIsa::active()) {
            assert!(fast.iter().zip(&exact).any(|(f, e)| f != e), "the fast path gave the exact values");
        } else {
            assert_eq!(fast, exact, "without AVX-512 BF16 both paths widen the weight");
        }
    }

    #[test]
    fn rounds_activations_to_nearest_even() {
        if skipped() {
            return;
        }
        // One weight of 1.0 reads each activation back as the kernel rounded it.
        // (Subnormals are flushed to zero by the instruction; real activations are not subnormal.)
        let tie = 2f32.powi(-8);
        let values = [1.0f32, 1.0 + tie, 1.0 + tie + 1e-7, 1.0 + 3.0 * tie, -3.333_333_3, 65504.0, 3.0e38, -7.5e-30];
        for &x in &values {
            let mut out = [0.0f32];
            multiply(&[x], 1, 1, bytemuck::cast_slice(&[half::bf16::ONE]), 1, &mut out, Epilogue::NONE, None);
            assert_eq!(out[0].to_bits(), half::bf16::from_f32(x).to_f32().to_bits(), "{x}");
        }
    }
}
