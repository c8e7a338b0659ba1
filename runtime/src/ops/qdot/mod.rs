//! Matrix products with a block-quantized weight as integer dot products, the way llama.cpp
//! runs GGUF models on the CPU: the activation rows are quantized once per product to 8 bits
//! (blocks of 32 with an f32 scale and the scaled block sum for the 32-value weight types;
//! blocks of 256 with per-16 sums for the K types), and each output is a sum over blocks of
//! `weight quants · activation quants` in integers, scaled in f32. The weights stay in their
//! GGUF layout and are read once per product whatever the number of activation rows.
//!
//! This trades the activations' precision for speed: their 8-bit quantization adds a relative
//! error of about 1e-3–1e-2 of `|w|·|x|` per output, which the weights' own quantization
//! already dwarfs. [`crate::backend::cpu::CpuOptions`] turns it off for an exact f32 path.
//!
//! Kernels: portable Rust ([`scalar`], also wasm32 and aarch64), AVX2 (`vpmaddubsw`, or
//! AVX-VNNI's `vpdpbusd`) and AVX-512 BW (with VNNI where the CPU has it), picked by
//! [`CpuIsa`]. All levels compute the same integer sums; only the f32 summation order differs.
//!
//! Weight types: Q8_0, Q4_0, Q4_1, Q5_0 (32-value blocks) and Q4_K, Q5_K, Q6_K (256-value
//! super-blocks); the layouts are in [`crate::weights::quant`].

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

use super::isa::CpuIsa;
use crate::error::{Error, Result};
use crate::tensor::DType;
use rayon::prelude::*;
use std::cell::Cell;
use std::ops::Range;

/// Whether the integer path is the faster one for `rows` activation rows of a `dtype` weight
/// on `isa` (measured with `benches/src/bin/qmatmul.rs` at SmolLM2 and Qwen2.5 shapes, one
/// thread, 128 rows): always on AVX-512 (1.0–1.6× the f32 path, VNNI or not) and for the K
/// types (AVX2: 1.1–1.2×); for the 32-value types on AVX2 below 96 rows, beyond which
/// dequantizing panels for the f32 GEMM wins (the integer path is 0.7–0.9× at 128 rows).
/// Never with the portable kernels: they are the reference for the SIMD ones, and the f32
/// path, with the `gemm` crate's own SIMD, is faster (x86-64: 2–10 GFLOP/s against 4–96).
pub fn preferred(isa: CpuIsa, dtype: DType, rows: usize) -> bool {
    isa > CpuIsa::Scalar && (rows < 96 || isa >= CpuIsa::Avx512 || ActFormat::of(dtype) == ActFormat::Q8x256)
}

/// Whether [`matmul`] takes weights of this dtype.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K)
}

/// How the activations are quantized for a weight type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActFormat {
    /// Blocks of 32 i8 quants (for the AVX-512 kernels offset by 128, `q + 128` as u8: the
    /// unsigned operand of `vpdpbusd`, so that the weight's quants can be the signed one),
    /// with `[d, d·Σq]` (f32) per block, and for the AVX-512 kernels `[d0 ×8, d1 ×8]` per pair
    /// of blocks. Rows are padded to an even number of blocks (q = 0, d = 0) so that kernels
    /// may take blocks in pairs.
    Q8x32,
    /// Blocks of 256 i8 (as u8 bit patterns) with `d` (f32) and the 16 sums of each 16 quants
    /// (i16) per block.
    Q8x256,
}

impl ActFormat {
    fn of(dtype: DType) -> ActFormat {
        match dtype {
            DType::Q4_K | DType::Q5_K | DType::Q6_K => ActFormat::Q8x256,
            _ => ActFormat::Q8x32,
        }
    }
    fn block(self) -> usize {
        match self {
            ActFormat::Q8x32 => 32,
            ActFormat::Q8x256 => 256,
        }
    }
    /// Blocks stored per row of `k` values (with the padding).
    fn blocks(self, k: usize) -> usize {
        match self {
            ActFormat::Q8x32 => (k / 32).next_multiple_of(2),
            ActFormat::Q8x256 => k / 256,
        }
    }
}

/// Quantized activation rows, the buffers reused from one product to the next.
#[derive(Default)]
struct Scratch {
    qs: Vec<u8>,
    /// Q8x32: `[d, d·Σq]` per block; Q8x256: `d` per block.
    meta: Vec<f32>,
    /// Q8x32 for AVX-512: `[d0 ×8, d1 ×8]` per pair of blocks.
    table: Vec<f32>,
    /// Q8x256: 16 sums per block.
    bsums: Vec<i16>,
}

thread_local! {
    /// Taken for the duration of a product and put back after, so that a product started on
    /// this thread while another waits (rayon may run one inside the other) gets its own.
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// One activation row as the kernels read it (null where its format has no such part).
#[derive(Clone, Copy)]
pub(super) struct ActRow {
    pub qs: *const u8,
    pub meta: *const f32,
    /// Read by the AVX-512 kernels only.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub table: *const f32,
    pub bsums: *const i16,
}

/// A product's operands as the kernels see them: weight rows of `row_bytes` bytes (`blocks`
/// blocks each), `m` quantized activation rows, and the output `[m, ldo]` written at the
/// columns of the weight rows a kernel is given.
pub(super) struct Job<'a> {
    pub w: &'a [u8],
    pub row_bytes: usize,
    /// Weight blocks per row (32 or 256 values each).
    pub blocks: usize,
    pub m: usize,
    pub qs: &'a [u8],
    pub meta: &'a [f32],
    pub table: &'a [f32],
    pub bsums: &'a [i16],
    /// Activation row strides in `qs`, `meta`, `table`, `bsums`.
    pub qs_stride: usize,
    pub meta_stride: usize,
    pub table_stride: usize,
    pub bsums_stride: usize,
    pub out: *mut f32,
    pub ldo: usize,
}

// SAFETY: `out` is written by several threads only at disjoint columns (each kernel call
// gets its own range of weight rows); everything else is shared read-only.
unsafe impl Sync for Job<'_> {}

impl Job<'_> {
    pub fn act(&self, r: usize) -> ActRow {
        debug_assert!(r < self.m);
        // SAFETY (of the pointer arithmetic): r < m and the buffers hold m rows of each stride.
        let part = |v: &[f32], stride: usize| if v.is_empty() { std::ptr::null() } else { v[r * stride..].as_ptr() };
        ActRow {
            qs: self.qs[r * self.qs_stride..].as_ptr(),
            meta: self.meta[r * self.meta_stride..].as_ptr(),
            table: part(self.table, self.table_stride),
            bsums: if self.bsums.is_empty() { std::ptr::null() } else { self.bsums[r * self.bsums_stride..].as_ptr() },
        }
    }
    pub fn weight_row(&self, c: usize) -> *const u8 {
        self.w[c * self.row_bytes..][..self.row_bytes].as_ptr()
    }
}

/// The output rows one kernel call computes for `R` activation rows: the products of one
/// weight row with each of them.
pub(super) trait Dot {
    /// The most activation rows `dot` takes at once: 1, 2, 4 or 8 (as registers allow).
    const MAX_ROWS: usize = 4;
    /// # Safety
    /// `w` points at `blocks` whole weight blocks of the type; each row covers the padded
    /// activation blocks of its format; the CPU has the features of the kernel's level.
    unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R];
}

/// The output of weight rows `rows` for every activation row: weight rows in groups of 16
/// that share one tile of up to [`Dot::MAX_ROWS`] activation rows (which stays in L1 across
/// the group); a tile of 8, 4, 2 or 1 rows.
///
/// # Safety
/// As [`Dot::dot`]; `rows` lies within the job's weight rows.
#[inline(always)]
pub(super) unsafe fn drive<D: Dot>(job: &Job, rows: Range<usize>) {
    const GROUP: usize = 16;
    // Weights stream from memory once per product: ask for the rows PREFETCH bytes ahead so
    // that enough of them are in flight (the hardware's prefetchers stop at 4 KiB pages).
    let ahead = PREFETCH.div_ceil(job.row_bytes);
    let mut c0 = rows.start;
    while c0 < rows.end {
        let c1 = (c0 + GROUP).min(rows.end);
        let mut r0 = 0;
        while r0 < job.m {
            let left = job.m - r0;
            let tile = if D::MAX_ROWS >= 8 && left >= 8 {
                8
            } else if D::MAX_ROWS >= 4 && left >= 4 {
                4
            } else if left >= 2 {
                2
            } else {
                1
            };
            for c in c0..c1 {
                let w = job.weight_row(c);
                if r0 == 0 && c + ahead < rows.end {
                    prefetch_row(job.weight_row(c + ahead), job.row_bytes);
                }
                // SAFETY: the caller's contract; out holds m rows of ldo ≥ n columns.
                unsafe {
                    match tile {
                        1 => tile_of::<D, 1>(job, w, r0, c),
                        2 => tile_of::<D, 2>(job, w, r0, c),
                        4 => tile_of::<D, 4>(job, w, r0, c),
                        _ => tile_of::<D, 8>(job, w, r0, c),
                    }
                }
            }
            r0 += tile;
        }
        c0 = c1;
    }
}

/// Rows r0..r0+R of output column c.
///
/// # Safety
/// As [`drive`]; r0 + R ≤ m.
#[inline(always)]
unsafe fn tile_of<D: Dot, const R: usize>(job: &Job, w: *const u8, r0: usize, c: usize) {
    let mut rows = [job.act(r0); R];
    for (i, row) in rows.iter_mut().enumerate().skip(1) {
        *row = job.act(r0 + i);
    }
    // SAFETY: the caller's contract.
    let values = unsafe { D::dot::<R>(w, job.blocks, &rows) };
    for (i, v) in values.into_iter().enumerate() {
        // SAFETY: r0 + i < m, c < n ≤ ldo: inside the output; no other thread writes column c.
        unsafe { *job.out.add((r0 + i) * job.ldo + c) = v };
    }
}

/// How far ahead of the row being multiplied the weights are prefetched.
const PREFETCH: usize = 4096;

/// Prefetches the cache lines of `bytes` bytes at `p` (into L2; a no-op off x86-64).
#[inline(always)]
fn prefetch_row(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..bytes).step_by(64) {
        // SAFETY: prefetching is a hint; it never faults, whatever the address.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p.wrapping_add(line).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// Little-endian reads at any alignment (block fields sit at odd offsets).
///
/// # Safety
/// `p` points at 2 (4) readable bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn read_u16(p: *const u8) -> u16 {
    // SAFETY: the caller's contract.
    u16::from_le(unsafe { p.cast::<u16>().read_unaligned() })
}

/// # Safety
/// As [`read_u16`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn read_u32(p: *const u8) -> u32 {
    // SAFETY: the caller's contract.
    u32::from_le(unsafe { p.cast::<u32>().read_unaligned() })
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K block (12 bytes at `p`, laid out as in
/// `weights::quant`), as 8 bytes each, scale (min) s in byte s.
///
/// # Safety
/// `p` points at 12 readable bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn k_scales_packed(p: *const u8) -> (u64, u64) {
    // SAFETY: the caller's contract.
    let (w0, w1, w2) = unsafe { (read_u32(p), read_u32(p.add(4)), read_u32(p.add(8))) };
    let sc_lo = w0 & 0x3f3f_3f3f;
    let mn_lo = w1 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | ((w0 >> 2) & 0x3030_3030);
    let mn_hi = ((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 2) & 0x3030_3030);
    (u64::from(sc_lo) | (u64::from(sc_hi) << 32), u64::from(mn_lo) | (u64::from(mn_hi) << 32))
}

/// A kernel: fills the output columns of weight rows `rows`.
pub(super) type Kernel = unsafe fn(&Job, Range<usize>);

fn kernel(isa: CpuIsa, dtype: DType) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= CpuIsa::Avx512 && isa.supported() {
            return x86_avx512::kernel(dtype, isa == CpuIsa::Avx512Vnni);
        }
        if isa >= CpuIsa::Avx2 && isa.supported() {
            return x86_avx2::kernel(dtype, isa == CpuIsa::AvxVnni);
        }
    }
    let _ = isa;
    scalar::kernel(dtype)
}

/// Multiply-accumulates below this many (m·n·k) run on the calling thread: waking another
/// costs more than it saves. (SmolLM2's decode on two threads: 2^16 and 2^13 as good as each
/// other, 2^18 about 10% slower, 2^20 half the speed.)
const SERIAL_MACS: usize = 1 << 16;

/// A weight `[rows, cols]` stored as GGUF blocks of `dtype`: raw bytes, rows one after another.
#[derive(Debug, Clone, Copy)]
pub struct BlockMatrix<'a> {
    pub dtype: DType,
    pub bytes: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

/// `out[r, c] = Σ_j a[r, j] · W[c, j]` for `a` `[m, k]` (f32) and a weight `W` `[n, k]` stored
/// in blocks; `out` is `[m, n]`. The activations are quantized to 8 bits first (see the
/// module docs); `isa` picks the kernels (a level the CPU lacks falls back to the best it has
/// below). Rows of weights are spread over rayon's threads.
pub fn matmul(isa: CpuIsa, w: BlockMatrix<'_>, a: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
    let BlockMatrix { dtype, bytes: w, rows: n, cols: k } = w;
    if !supports(dtype) {
        return Err(Error::input(format!("the integer matmul does not take {dtype} weights")));
    }
    let row_bytes = dtype
        .bytes_for(k)
        .ok_or_else(|| Error::input(format!("a row of {k} values is not a whole number of {dtype} blocks")))?;
    if w.len() != n * row_bytes || a.len() < m * k || out.len() < m * n {
        return Err(Error::input(format!(
            "matmul {m}×{k} by {dtype} {n}×{k}: {} weight bytes (want {}), {} activations, {} outputs",
            w.len(),
            n * row_bytes,
            a.len(),
            out.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return Ok(());
    }
    let isa = CpuIsa::best_up_to(isa);
    let format = ActFormat::of(dtype);
    let mut scratch = SCRATCH.take();
    quantize(isa, format, &a[..m * k], m, k, &mut scratch);
    let blocks = k / dtype.block().values;
    let padded = format.blocks(k);
    let job = Job {
        w,
        row_bytes,
        blocks,
        m,
        qs: &scratch.qs,
        meta: &scratch.meta,
        table: &scratch.table,
        bsums: &scratch.bsums,
        qs_stride: padded * format.block(),
        meta_stride: match format {
            ActFormat::Q8x32 => 2 * padded,
            ActFormat::Q8x256 => padded,
        },
        table_stride: 8 * padded,
        bsums_stride: 16 * padded,
        out: out.as_mut_ptr(),
        ldo: n,
    };
    let run = kernel(isa, dtype);
    let threads = rayon::current_num_threads();
    if m * n * k < SERIAL_MACS || threads == 1 || n < 2 {
        // SAFETY: the kernel is for a level the CPU has (`best_up_to`), the job's buffers are
        // sized for m rows, and 0..n are the weight's rows.
        unsafe { run(&job, 0..n) };
    } else {
        // A few chunks per thread, so that a thread slowed by other work is helped out.
        let chunk = n.div_ceil(4 * threads).max(8);
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|i| {
            // SAFETY: as above; chunks are disjoint ranges of weight rows, so of output columns.
            unsafe { run(&job, i * chunk..((i + 1) * chunk).min(n)) };
        });
    }
    SCRATCH.set(scratch);
    Ok(())
}

/// Fills `s` with the m rows of `a` quantized for `format` (rows across threads when many).
fn quantize(isa: CpuIsa, format: ActFormat, a: &[f32], m: usize, k: usize, s: &mut Scratch) {
    let padded = format.blocks(k);
    let row_qs = padded * format.block();
    s.qs.clear();
    s.meta.clear();
    s.table.clear();
    s.bsums.clear();
    let parallel = m > 1 && m * k >= 1 << 16;
    match format {
        ActFormat::Q8x32 => {
            // The AVX-512 kernels take the quants offset by 128 (x86_avx512::Avx512Block);
            // the padding block holds q = 0 either way.
            let flip = if isa >= CpuIsa::Avx512 { 0x80 } else { 0 };
            s.qs.resize(m * row_qs, flip);
            s.meta.resize(m * 2 * padded, 0.0);
            let row = |((x, qs), meta): (_, &mut [f32])| quantize_row_32(isa, x, qs, meta, flip);
            if parallel {
                let rows = a.par_chunks_exact(k).zip(s.qs.par_chunks_exact_mut(row_qs));
                rows.zip(s.meta.par_chunks_exact_mut(2 * padded)).for_each(row);
            } else {
                let rows = a.chunks_exact(k).zip(s.qs.chunks_exact_mut(row_qs));
                rows.zip(s.meta.chunks_exact_mut(2 * padded)).for_each(row);
            }
            if isa >= CpuIsa::Avx512 {
                s.table.resize(m * 8 * padded, 0.0);
                for (table, meta) in s.table.chunks_exact_mut(16).zip(s.meta.chunks_exact(4)) {
                    table[..8].fill(meta[0]);
                    table[8..].fill(meta[2]);
                }
            }
        }
        ActFormat::Q8x256 => {
            s.qs.resize(m * row_qs, 0);
            s.meta.resize(m * padded, 0.0);
            s.bsums.resize(m * 16 * padded, 0);
            let row = |(((x, qs), d), bsums): (_, &mut [i16])| quantize_row_256(isa, x, qs, d, bsums);
            if parallel {
                let rows = a.par_chunks_exact(k).zip(s.qs.par_chunks_exact_mut(row_qs));
                let rows = rows.zip(s.meta.par_chunks_exact_mut(padded));
                rows.zip(s.bsums.par_chunks_exact_mut(16 * padded)).for_each(row);
            } else {
                let rows = a.chunks_exact(k).zip(s.qs.chunks_exact_mut(row_qs));
                let rows = rows.zip(s.meta.chunks_exact_mut(padded));
                rows.zip(s.bsums.chunks_exact_mut(16 * padded)).for_each(row);
            }
        }
    }
}

/// One row in Q8x32 blocks: `q = round(x · 127 / max|x|)` (ties to even) stored as the bits of
/// q xor `flip` (0x80: `q + 128`), and per block `[d, d·Σq]` in f16 precision
/// ([`block_32_meta`]). The padding block
/// (if any) is left as it is.
fn quantize_row_32(isa: CpuIsa, x: &[f32], qs: &mut [u8], meta: &mut [f32], flip: u8) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // SAFETY: AVX2 and FMA are there (`has_avx2` is only true for supported levels).
        return unsafe { x86_avx2::quantize_32(x, qs, meta, flip as i8) };
    }
    let _ = isa;
    quantize_blocks_32(x, qs, meta, flip)
}

fn quantize_blocks_32(x: &[f32], qs: &mut [u8], meta: &mut [f32], flip: u8) {
    for ((x, q), meta) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).zip(meta.chunks_exact_mut(2)) {
        let x: &[f32; 32] = x.try_into().unwrap();
        let q: &mut [u8; 32] = q.try_into().unwrap();
        let (amax, _) = quantize_block(x, q, flip);
        let sum: i32 = q.iter().map(|&v| i32::from((v ^ flip) as i8)).sum();
        meta.copy_from_slice(&block_32_meta(amax, sum));
    }
}

/// One row in Q8x256 blocks: as Q8x32 with a scale per 256 values, the quants stored as they
/// are (i8), and the sums of each 16.
fn quantize_row_256(isa: CpuIsa, x: &[f32], qs: &mut [u8], d: &mut [f32], bsums: &mut [i16]) {
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() {
        // SAFETY: AVX2 and FMA are there (`has_avx2` is only true for supported levels).
        return unsafe { x86_avx2::quantize_256(x, qs, d, bsums) };
    }
    let _ = isa;
    quantize_blocks_256(x, qs, d, bsums)
}

fn quantize_blocks_256(x: &[f32], qs: &mut [u8], d: &mut [f32], bsums: &mut [i16]) {
    for (((x, q), d), bsums) in
        x.chunks_exact(256).zip(qs.chunks_exact_mut(256)).zip(d.iter_mut()).zip(bsums.chunks_exact_mut(16))
    {
        let x: &[f32; 256] = x.try_into().unwrap();
        let q: &mut [u8; 256] = q.try_into().unwrap();
        *d = block_256_scale(quantize_block(x, q, 0).1);
        for (sum, q) in bsums.iter_mut().zip(q.chunks_exact(16)) {
            *sum = q.iter().map(|&v| i16::from(v as i8)).sum();
        }
    }
}

/// `q = round(x · 127 / max|x|)` (ties to even; 0 for an all-zero block), stored as the bits
/// of q (i8) xor `flip`; returns `(max|x|, 127 / max|x|)`. The inverse scale is computed as
/// llama.cpp's x86 kernels compute it (not as `1 / (max / 127)`, which rounds differently),
/// so that the quants are the ones llama.cpp makes. The AVX2 twins (`x86_avx2::quantize_32`,
/// `quantize_256`) do the same f32 operations, so every level gets the same quants.
#[inline(always)]
fn quantize_block<const N: usize>(x: &[f32; N], q: &mut [u8; N], flip: u8) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        // |v · id| ≤ 127 (+ an ulp), so the cast never saturates beyond ±127.
        *q = ((v * id).round_ties_even() as i32 as i8 as u8) ^ flip;
    }
    (amax, id)
}

/// A 32-block's `[d, d·Σq]`: d as llama.cpp keeps it (`block_q8_0`/`block_q8_1`: in f16,
/// `d = max|x| / 127`), so that products with the weights round as llama.cpp's do; the sum
/// term from that rounded d, exactly (an 11-bit d times a sum of at most 12 bits fits f32),
/// since the kernels also use it to take out the offsets of quants (q + 128 and the like),
/// which must cancel exactly.
#[inline(always)]
pub(super) fn block_32_meta(amax: f32, sum: i32) -> [f32; 2] {
    let d = half::f16::from_f32(amax / 127.0).to_f32();
    [d, d * sum as f32]
}

/// A 256-block's scale as llama.cpp keeps it (`block_q8_K`: f32, the inverse of the inverse
/// scale).
#[inline(always)]
pub(super) fn block_256_scale(id: f32) -> f32 {
    if id > 0.0 { 1.0 / id } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every level quantizes to the same quants (bytes, less the AVX-512 offset), scales and
    /// sums (ties to even included).
    #[test]
    fn every_level_quantizes_alike() {
        let k = 512;
        let mut x: Vec<f32> = (0..3 * k).map(|i| (((i * 7919) % 2001) as f32 - 1000.0) / 37.0).collect();
        // A block whose values land on exact halves of the step (127 · 0.5 / 127 ...).
        for (j, v) in x[..32].iter_mut().enumerate() {
            *v = (j as f32 - 16.0) + 0.5;
        }
        x[40] = 16.5;
        x[k..k + 64].fill(0.0);
        for format in [ActFormat::Q8x32, ActFormat::Q8x256] {
            let mut want = Scratch::default();
            quantize(CpuIsa::Scalar, format, &x, 3, k, &mut want);
            for isa in CpuIsa::ALL.into_iter().filter(|l| l.supported()) {
                let mut got = Scratch::default();
                quantize(isa, format, &x, 3, k, &mut got);
                let flip = if isa >= CpuIsa::Avx512 && format == ActFormat::Q8x32 { 0x80 } else { 0 };
                let unflipped: Vec<u8> = got.qs.iter().map(|q| q ^ flip).collect();
                assert_eq!(unflipped, want.qs, "{format:?} on {isa}");
                assert_eq!(got.meta, want.meta, "{format:?} on {isa}");
                assert_eq!(got.bsums, want.bsums, "{format:?} on {isa}");
                if isa >= CpuIsa::Avx512 && format == ActFormat::Q8x32 {
                    assert_eq!(got.table.len(), 3 * 8 * format.blocks(k));
                    assert_eq!((got.table[0], got.table[8], got.table[16]), (got.meta[0], got.meta[2], got.meta[4]));
                }
            }
        }
    }
}
