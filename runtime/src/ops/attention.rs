//! Fused multi-head scaled dot-product attention over packed sequences, and the KV-cache
//! append that decoders pair it with.
//!
//! q `[tokens, heads·d]`, k and v `[kv_tokens, kv_heads·d]`, and a u32 `table` that says which
//! rows belong together, in one of two forms:
//! - `[seqs, 2]` (start, length): packed self-attention. k and v have the rows of q (an
//!   encoder's padding mask in a form without padding).
//! - `[seqs, 4]` (q_start, q_len, kv_start, kv_len): queries `q_start .. q_start + q_len`
//!   attend to k/v rows `kv_start .. kv_start + kv_len`, of which they are the last `q_len`
//!   positions (`past = kv_len − q_len` rows come before them). This is a decoder reading its
//!   KV cache: prefill (many queries, `past` = 0 or a cached prefix) and decode (one query per
//!   sequence, many sequences) are the same op; the cache is a flat `[rows, width]` state
//!   whose layout (one slot of rows per sequence, say) belongs to the caller.
//!
//! Head h of a token reads columns `h·d .. (h+1)·d` in place: no per-head copy is ever made.
//! Grouped-query attention: query head h reads kv head `h / (heads / kv_heads)`. With
//! `causal`, query i of a sequence sees kv rows `kv_start .. kv_start + past + i + 1`.
//! Ranges are clamped to the tensors (as on every GPU backend), so a bad table reads nothing
//! out of bounds; query rows in no sequence get zeros.
//!
//! Keys and values may be f16 under f32 queries: an f16 KV cache (half the memory, as
//! llama.cpp keeps it), rounded once when `kv_write` stores a row and widened exactly when
//! attention reads it, all arithmetic in f32.

use super::pool::segment_rows;
use super::{arity, dtype_is, float, rank_is, same_dim};
use crate::graph::{Dim, TensorType};
use crate::tensor::DType;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    pub num_heads: u32,
    /// Heads of k and v; fewer than `num_heads` for grouped-query attention.
    pub num_kv_heads: u32,
    /// Usually `1/√d`.
    pub scale: f32,
    pub causal: bool,
    /// `--precision bf16`: the CPU may round q, k, v and the softmax weights to bf16 for the
    /// two products of a whole sequence's attention (AMX tiles, f32 sums; see
    /// [`super::attention_amx`]). Other backends, decoders' cached attention and CPUs
    /// without AMX compute in f32 whatever it says.
    #[serde(default)]
    pub bf16_products: bool,
}

/// Kernel params for `attention`, mirrored in `shaders/attention.wgsl` and
/// `cuda/attention.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AttentionParams {
    pub num_seqs: u32,
    /// Rows of q (and of the output).
    pub tokens: u32,
    pub num_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub causal: u32,
    pub scale: f32,
    /// 2 or 4: the table's form.
    pub table_cols: u32,
    /// Rows of k and v.
    pub kv_tokens: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

/// The table of a query/kv pairing: `[seqs, 2]` or `[seqs, 4]` u32 (see the module doc).
pub(crate) fn check_table(table: &TensorType, allow_segments: bool) -> Result<(), String> {
    dtype_is(table, DType::U32, "table")?;
    rank_is(table, 2, "table")?;
    let ok = table.shape[1] == Dim::Fixed(4) || (allow_segments && table.shape[1] == Dim::Fixed(2));
    if !ok {
        let forms = if allow_segments { "[seqs, 2] (start, length) or " } else { "" };
        return Err(format!("table must be {forms}[seqs, 4] (q_start, q_len, kv_start, kv_len), is {table}"));
    }
    Ok(())
}

/// One sequence's rows, clamped to the tensors: its query rows, its kv rows, and how many kv
/// positions come before its first query (`past`, from the declared lengths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRows {
    pub q: Range<usize>,
    pub kv: Range<usize>,
    pub past: usize,
}

impl SeqRows {
    /// Row `s` of a 2- or 4-column table.
    pub fn of(table: &[u32], cols: usize, s: usize, tokens: usize, kv_tokens: usize) -> SeqRows {
        if cols == 2 {
            let q = segment_rows(table, s, tokens);
            return SeqRows { kv: q.clone(), q, past: 0 };
        }
        let row = &table[4 * s..4 * s + 4];
        let (q_start, q_len, kv_start, kv_len) = (row[0] as usize, row[1] as usize, row[2] as usize, row[3] as usize);
        let q = q_start.min(tokens)..q_start.saturating_add(q_len).min(tokens);
        let kv_lo = kv_start.min(kv_tokens);
        let kv = kv_lo..kv_start.saturating_add(kv_len).min(kv_tokens).max(kv_lo);
        SeqRows { q: q.start..q.end.max(q.start), kv, past: kv_len.saturating_sub(q_len) }
    }

    /// The kv rows query `i` of the sequence sees.
    pub fn visible(&self, i: usize, causal: bool) -> Range<usize> {
        let end = if causal { self.kv.start.saturating_add(self.past + i + 1).min(self.kv.end) } else { self.kv.end };
        self.kv.start..end
    }
}

impl Attention {
    pub(crate) fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(inputs, 4, 4)?;
        let (q, k, v, table) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3]);
        // All f32, all f16 (the f16 kernels: f16 storage, f32 arithmetic), or f32 queries
        // over f16 keys and values (an f16 KV cache).
        let dtype = if q.dtype == DType::F16 { DType::F16 } else { DType::F32 };
        let kv_dtype = if dtype == DType::F32 && k.dtype == DType::F16 { DType::F16 } else { dtype };
        for (t, dtype, what) in [(q, dtype, "q"), (k, kv_dtype, "k"), (v, kv_dtype, "v")] {
            dtype_is(t, dtype, what)?;
            rank_is(t, 2, what)?;
        }
        check_table(table, true)?;
        if table.shape[1] == Dim::Fixed(2) {
            same_dim(
                &q.shape[0],
                &k.shape[0],
                "q and k token counts differ (a [seqs, 2] table pairs rows of q with the same rows of k)",
            )?;
        }
        same_dim(&k.shape[0], &v.shape[0], "k and v token counts differ")?;
        same_dim(&k.shape[1], &v.shape[1], "k and v widths differ")?;
        if self.num_heads == 0 || self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_heads ({}) must be a positive multiple of num_kv_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if let (Some(qw), Some(kw)) = (q.shape[1].fixed(), k.shape[1].fixed()) {
            if qw % self.num_heads as u64 != 0 {
                return Err(format!("q width {qw} is not a multiple of {} heads", self.num_heads));
            }
            let d = qw / self.num_heads as u64;
            if kw != d * self.num_kv_heads as u64 {
                return Err(format!("k width {kw} is not {} kv heads × head dim {d}", self.num_kv_heads));
            }
        } else {
            return Err("q and k widths must be fixed".into());
        }
        Ok(vec![TensorType::new(q.dtype, vec![q.shape[0].clone(), Dim::Fixed(q.shape[1].fixed().unwrap())])])
    }

    pub fn params(&self, q: &[usize], k: &[usize], table: &[usize]) -> AttentionParams {
        AttentionParams {
            num_seqs: table[0] as u32,
            tokens: q[0] as u32,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: (q[1] / self.num_heads as usize) as u32,
            causal: self.causal as u32,
            scale: self.scale,
            table_cols: table[1] as u32,
            kv_tokens: k[0] as u32,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// Lets parallel tasks write disjoint (sequence, head) blocks of one output.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only its own sequence's rows and its own head's columns.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Keys or values as the CPU reads them: f32, or f16 (an f16 KV cache).
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> KvRows<'a> {
    /// As f32: f32 rows in place, f16 ones widened (a copy).
    fn widened(self) -> std::borrow::Cow<'a, [f32]> {
        match self {
            KvRows::F32(x) => x.into(),
            KvRows::F16(x) => x.iter().map(|h| h.to_f32()).collect::<Vec<f32>>().into(),
        }
    }
}

/// CPU reference: per (sequence, head), S = q·kᵀ·scale and O = softmax(S)·v through `gemm`
/// on strided views (decoders, with a `[seqs, 4]` table: each query row on its own in a fixed
/// order, see [`fixed_order_rows_dispatch`]). With `bf16_amx` (the op's `bf16_products`, on a
/// CPU where [`super::isa::amx_bf16`] holds) a `[seqs, 2]` table's f32 heads are multiplied in
/// bf16 on AMX tiles instead ([`super::attention_amx`]).
pub fn cpu(
    p: &AttentionParams,
    q: &[f32],
    k: KvRows<'_>,
    v: KvRows<'_>,
    table: &[u32],
    out: &mut [f32],
    bf16_amx: bool,
) {
    let (heads, kv_heads, d) = (p.num_heads as usize, p.num_kv_heads as usize, p.head_dim as usize);
    let cols = p.table_cols as usize;
    let (qw, kw) = (heads * d, kv_heads * d);
    out.fill(0.0);
    if d == 0 {
        return;
    }
    if cols == 4 {
        // Kv head h's keys and values start at column h·d of each row.
        return match (k, v) {
            (KvRows::F16(k), KvRows::F16(v)) => {
                let f16c = f16c_available();
                fixed_order(p, q, table, out, |h| F16Head { k: &k[h * d..], v: &v[h * d..], stride: kw, d, f16c })
            }
            // f32 (read in place), or mixed (no graph builds it: widened).
            (k, v) => {
                let (k, v) = (k.widened(), v.widened());
                fixed_order(p, q, table, out, |h| F32Head { k: &k[h * d..], v: &v[h * d..], stride: kw, d })
            }
        };
    }
    let (k, v) = match (k, v) {
        (KvRows::F32(k), KvRows::F32(v)) => (k, v),
        // f16 keys and values of whole sequences (no decoder builds this): widened whole.
        (k, v) => return cpu(p, q, KvRows::F32(&k.widened()), KvRows::F32(&v.widened()), table, out, bf16_amx),
    };
    let group = heads / kv_heads;
    let out_ptr = OutPtr(out.as_mut_ptr());
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bf16_amx; // AMX is x86-64's
    #[cfg(target_arch = "x86_64")]
    if bf16_amx && super::isa::amx_bf16() {
        return each_sequence_head(p, table, |rows, h| {
            let out = out_ptr;
            // SAFETY: AMX is granted (just checked); `rows` are clamped to the tensors and this
            // task alone writes its sequence's rows, its head's columns.
            unsafe { super::attention_amx::head(p, rows, h, q, k, v, out.0) }
        });
    }
    each_sequence_head(p, table, |rows, h| {
        let (l, n) = (rows.q.len(), rows.kv.len());
        let kvh = h / group;
        let mut scores = vec![0.0f32; l * n];
        // SAFETY: all views stay inside q/k/v (rows < tokens or kv_tokens, columns < width)
        // and the output block (rows of this sequence, columns of this head) is this task's.
        if n > 0 {
            unsafe {
                gemm::gemm(
                    l,
                    n,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    q.as_ptr().add(rows.q.start * qw + h * d),
                    1,
                    qw as isize,
                    k.as_ptr().add(rows.kv.start * kw + kvh * d),
                    kw as isize,
                    1,
                    0.0,
                    p.scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        for (i, row) in scores.chunks_exact_mut(n.max(1)).take(l).enumerate() {
            let visible = rows.visible(i, p.causal != 0).len();
            if visible == 0 {
                row.fill(0.0);
                continue;
            }
            super::elementwise::softmax_in_place(&mut row[..visible]);
            row[visible..].fill(0.0);
        }
        if n == 0 {
            return; // every row of this sequence sees nothing: zeros, already written
        }
        let out = out_ptr;
        unsafe {
            gemm::gemm(
                l,
                d,
                n,
                out.0.add(rows.q.start * qw + h * d),
                1,
                qw as isize,
                false,
                scores.as_ptr(),
                1,
                n as isize,
                v.as_ptr().add(rows.kv.start * kw + kvh * d),
                1,
                kw as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// Runs `task(rows, h)` for every sequence with query rows and every head: in parallel when
/// the sequences' query rows are ordered and apart (each task writes only its sequence's rows
/// and its head's columns), else one after another.
fn each_sequence_head(p: &AttentionParams, table: &[u32], task: impl Fn(&SeqRows, usize) + Sync) {
    each_sequence_unit(&sequences(p, table), p.num_heads as usize, task)
}

/// Runs `task(rows, u)` for every sequence of `seqs` with query rows and every u in
/// `0..units`, as [`each_sequence_head`] (each unit writes its own columns).
fn each_sequence_unit(seqs: &[SeqRows], units: usize, task: impl Fn(&SeqRows, usize) + Sync) {
    let tasks: Vec<(usize, usize)> =
        (0..seqs.len()).filter(|&s| !seqs[s].q.is_empty()).flat_map(|s| (0..units).map(move |u| (s, u))).collect();
    let run = |&(s, u): &(usize, usize)| task(&seqs[s], u);
    let disjoint = seqs.windows(2).all(|w| w[0].q.end <= w[1].q.start);
    if tasks.len() > 1 && disjoint {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
}

/// Every row of the table.
fn sequences(p: &AttentionParams, table: &[u32]) -> Vec<SeqRows> {
    let (tokens, kv_tokens, cols) = (p.tokens as usize, p.kv_tokens as usize, p.table_cols as usize);
    (0..p.num_seqs as usize).map(|s| SeqRows::of(table, cols, s, tokens, kv_tokens)).collect()
}

/// A decoder's attention (a `[seqs, 4]` table) through [`fixed_order_rows_dispatch`], kv head
/// `h`'s keys and values read through `head(h)`: f32 in place, or an f16 cache widened exactly
/// as it is read (the same bits as an f32 cache holding the same rounded values).
fn fixed_order<H: KvHead>(
    p: &AttentionParams,
    q: &[f32],
    table: &[u32],
    out: &mut [f32],
    head: impl Fn(usize) -> H + Sync,
) {
    let (kv_heads, group) = (p.num_kv_heads as usize, (p.num_heads / p.num_kv_heads) as usize);
    // The query heads of a kv head go together, so that its keys and values are read from
    // memory once for all of them (at 2,000 tokens of context a decode step's attention was
    // half of the step, reading each kv head's rows once per query head). A prompt's query
    // rows are dealt out in blocks; where that leaves too few tasks to keep the threads busy
    // (decoding one or two sequences), a group's heads are cut into parts instead.
    let seqs = sequences(p, table);
    let row_blocks = seqs.iter().map(|rows| rows.q.len()).max().unwrap_or(0).div_ceil(ROW_BLOCK).max(1);
    let busy: usize = seqs.iter().map(|rows| rows.q.len().div_ceil(ROW_BLOCK)).sum::<usize>() * kv_heads;
    let parts = (2 * rayon::current_num_threads()).div_ceil(busy.max(1)).clamp(1, group.max(1));
    let out_ptr = OutPtr(out.as_mut_ptr());
    each_sequence_unit(&seqs, kv_heads * parts * row_blocks, |rows, unit| {
        let (kvh, part, block) = (unit / (parts * row_blocks), unit / row_blocks % parts, unit % row_blocks);
        let heads = kvh * group + part * group / parts..kvh * group + (part + 1) * group / parts;
        let first = (block * ROW_BLOCK).min(rows.q.len());
        let query_rows = first..(first + ROW_BLOCK).min(rows.q.len());
        // SAFETY: `rows` are clamped to the tensors; this task owns these rows' columns of
        // these heads.
        unsafe { fixed_order_rows_dispatch(p, rows, query_rows, heads, &head(kvh), q, out_ptr) };
    });
}

/// Query rows of a sequence per task of [`fixed_order`].
const ROW_BLOCK: usize = 16;

/// AVX2 and F16C (every AVX2 processor has both).
fn f16c_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One kv head's keys and values as the fixed-order rows read them; `js` are kv rows of the
/// tensors. Every sum runs in the order of [`fixed_order_dot`] and [`add_scaled`] (per key,
/// per output element), whatever the element type and SIMD level: several keys are only
/// worked on side by side, each in its own registers, so that one key's chain of dependent
/// additions does not wait for the last.
trait KvHead {
    /// Pushes `(q·k_j) · scale` for each j of `js` onto `out`, in order.
    fn scores(&self, q: &[f32], js: Range<usize>, scale: f32, out: &mut Vec<f32>);
    /// `dst += w_j · v_j` for each j of `js` in order (`weights[i]` is the weight of
    /// `js.start + i`), as that many [`add_scaled`] calls would.
    fn weighted_sum(&self, weights: &[f32], js: Range<usize>, dst: &mut [f32]);
}

/// Keys scored side by side by [`KvHead::scores`]: eight chains of additions in flight (four
/// left the adders waiting on their latency).
const KEYS: usize = 8;
/// Output elements kept in registers across all keys by [`KvHead::weighted_sum`] (eight
/// vectors of eight: a head of 64 in one pass).
const COLUMNS: usize = 64;

/// An f32 head, read in place: row j at `j * stride` of `k` and `v` (which start at the head's
/// first column).
struct F32Head<'a> {
    k: &'a [f32],
    v: &'a [f32],
    stride: usize,
    d: usize,
}

impl F32Head<'_> {
    #[inline(always)]
    fn key(&self, j: usize) -> &[f32] {
        &self.k[j * self.stride..][..self.d]
    }
}

impl KvHead for F32Head<'_> {
    #[inline(always)]
    fn scores(&self, q: &[f32], js: Range<usize>, scale: f32, out: &mut Vec<f32>) {
        let mut j = js.start;
        while j + KEYS <= js.end {
            let keys: [&[_]; KEYS] = std::array::from_fn(|t| self.key(j + t));
            for s in fixed_order_dots(q, keys) {
                out.push(s * scale);
            }
            j += KEYS;
        }
        for j in j..js.end {
            out.push(fixed_order_dot(q, self.key(j)) * scale);
        }
    }
    #[inline(always)]
    fn weighted_sum(&self, weights: &[f32], js: Range<usize>, dst: &mut [f32]) {
        weighted_sum(weights, js, dst, |j| &self.v[j * self.stride..][..self.d])
    }
}

/// An f16 head of a KV cache, laid out as [`F32Head`]; `f16c`: the CPU converts with F16C.
struct F16Head<'a> {
    k: &'a [f16],
    v: &'a [f16],
    stride: usize,
    d: usize,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    f16c: bool,
}

impl F16Head<'_> {
    #[inline(always)]
    fn key(&self, j: usize) -> &[f16] {
        &self.k[j * self.stride..][..self.d]
    }
    #[inline(always)]
    fn value(&self, j: usize) -> &[f16] {
        &self.v[j * self.stride..][..self.d]
    }
}

impl KvHead for F16Head<'_> {
    #[inline(always)]
    fn scores(&self, q: &[f32], js: Range<usize>, scale: f32, out: &mut Vec<f32>) {
        let mut j = js.start;
        while j + KEYS <= js.end {
            let keys: [&[_]; KEYS] = std::array::from_fn(|t| self.key(j + t));
            #[cfg(target_arch = "x86_64")]
            let sums = if self.f16c {
                // SAFETY: the CPU has AVX2 and F16C (checked when `f16c` was set).
                unsafe { f16c::fixed_order_dots(q, keys) }
            } else {
                fixed_order_dots(q, keys)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let sums = fixed_order_dots(q, keys);
            for s in sums {
                out.push(s * scale);
            }
            j += KEYS;
        }
        for j in j..js.end {
            #[cfg(target_arch = "x86_64")]
            if self.f16c {
                // SAFETY: as above.
                out.push(unsafe { f16c::fixed_order_dot(q, self.key(j)) } * scale);
                continue;
            }
            out.push(fixed_order_dot(q, self.key(j)) * scale);
        }
    }
    #[inline(always)]
    fn weighted_sum(&self, weights: &[f32], js: Range<usize>, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.f16c {
            // SAFETY: the CPU has AVX2 and F16C; every value row has dst's length.
            return unsafe { f16c::weighted_sum(weights, js, dst, |j| self.value(j)) };
        }
        weighted_sum(weights, js, dst, |j| self.value(j))
    }
}

/// A decoder's attention (a `[seqs, 4]` table: causal over its KV cache, or over a picture's
/// visual keys), each query row on its own over exactly the keys it sees, every sum in a
/// fixed order: a row's output is then the same bits whatever else the run holds (a whole
/// prompt or its last token after a cached prefix, other sequences beside it), so greedy text
/// does not depend on batching or on the prefix cache. A GEMM over the rows would pick its
/// kernel, and so its summation order, by the number of rows. Encoders (`[seqs, 2]` tables)
/// keep the GEMM: they always run whole sequences.
///
/// This call computes query rows `query_rows` of the sequence (indices within `rows.q`) for the
/// query `heads`, all of one kv head (`kv`).
///
/// # Safety
/// `rows` lie inside q, k and v as `cpu` checks them, and those query rows' columns of those
/// heads are written by this call only.
unsafe fn fixed_order_rows_dispatch(
    p: &AttentionParams,
    rows: &SeqRows,
    query_rows: Range<usize>,
    heads: Range<usize>,
    kv: &impl KvHead,
    q: &[f32],
    out: OutPtr,
) {
    // The same operations in the same order either way (Rust never fuses a multiply and an
    // add): AVX2 only makes the vectors wider.
    #[cfg(target_arch = "x86_64")]
    if f16c_available() {
        // SAFETY: the CPU has AVX2 and F16C; the rest is the caller's contract.
        return unsafe { fixed_order_rows_avx2(p, rows, query_rows, heads, kv, q, out) };
    }
    // SAFETY: the caller's contract.
    unsafe { fixed_order_rows(p, rows, query_rows, heads, kv, q, out) }
}

/// # Safety
/// As [`fixed_order_rows`], on a CPU with AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn fixed_order_rows_avx2(
    p: &AttentionParams,
    rows: &SeqRows,
    query_rows: Range<usize>,
    heads: Range<usize>,
    kv: &impl KvHead,
    q: &[f32],
    out: OutPtr,
) {
    // SAFETY: the caller's contract.
    unsafe { fixed_order_rows(p, rows, query_rows, heads, kv, q, out) }
}

/// # Safety
/// As [`fixed_order_rows_dispatch`].
#[inline(always)]
unsafe fn fixed_order_rows(
    p: &AttentionParams,
    rows: &SeqRows,
    query_rows: Range<usize>,
    heads: Range<usize>,
    kv: &impl KvHead,
    q: &[f32],
    out: OutPtr,
) {
    let (d, qw) = (p.head_dim as usize, (p.num_heads * p.head_dim) as usize);
    let mut weights: Vec<Vec<f32>> = heads.clone().map(|_| Vec::with_capacity(rows.kv.len())).collect();
    for i in query_rows {
        let q_row = |h: usize| &q[(rows.q.start + i) * qw + h * d..][..d];
        let visible = rows.visible(i, p.causal != 0);
        if visible.is_empty() {
            continue; // sees nothing: zeros, already written
        }
        // Blocks of keys that stay in L1 while every head of the group scores them (or adds
        // their values); each head's sums still run over the keys in order, so its bits do not
        // depend on the block or on the heads beside it.
        let blocks = || (visible.start..visible.end).step_by(KV_BLOCK).map(|j| j..(j + KV_BLOCK).min(visible.end));
        weights.iter_mut().for_each(Vec::clear);
        for block in blocks() {
            for (h, weights) in heads.clone().zip(&mut weights) {
                kv.scores(q_row(h), block.clone(), p.scale, weights);
            }
        }
        for weights in &mut weights {
            let max = super::elementwise::max_of(weights);
            // (Loops, not iterator adapters: a closure would not inherit the AVX2 target feature.)
            let mut sum = 0.0;
            for w in weights.iter_mut() {
                *w = (*w - max).exp();
                sum += *w;
            }
            for w in weights.iter_mut() {
                *w /= sum;
            }
        }
        for block in blocks() {
            let first = block.start - visible.start;
            for (h, weights) in heads.clone().zip(&weights) {
                // SAFETY: the caller's contract: this row and head's d outputs are ours.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add((rows.q.start + i) * qw + h * d), d) };
                kv.weighted_sum(&weights[first..first + block.len()], block.clone(), dst);
            }
        }
    }
}

/// Keys per block of [`fixed_order_rows`]: 128 of a head of 64 f16 values are 16 KiB of keys
/// and as many of values.
const KV_BLOCK: usize = 128;

/// Σ a·b in eight interleaved partial sums, then those in order: vectorizes, and depends only
/// on the length.
#[inline(always)]
fn fixed_order_dot<T: Copy + Into<f32>>(a: &[f32], b: &[T]) -> f32 {
    fixed_order_dots(a, [b])[0]
}

/// [`fixed_order_dot`] of `a` with each of `N` rows (of a's length), side by side: the same
/// operations per row in the same order, so the same bits.
#[inline(always)]
fn fixed_order_dots<T: Copy + Into<f32>, const N: usize>(a: &[f32], b: [&[T]; N]) -> [f32; N] {
    let whole = a.len() / 8 * 8;
    let mut acc = [[0.0f32; 8]; N];
    let mut tail = [0.0f32; N];
    for i in whole..a.len() {
        for n in 0..N {
            tail[n] += a[i] * b[n][i].into();
        }
    }
    for i in (0..whole).step_by(8) {
        for n in 0..N {
            for l in 0..8 {
                acc[n][l] += a[i + l] * b[n][i + l].into();
            }
        }
    }
    let mut sums = [0.0f32; N];
    for ((sum, lanes), tail) in sums.iter_mut().zip(acc).zip(tail) {
        for lane in lanes {
            *sum += lane;
        }
        *sum += tail;
    }
    sums
}

/// dst += w·v, element by element.
#[inline(always)]
fn add_scaled<T: Copy + Into<f32>>(w: f32, v: &[T], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(v) {
        *d += w * x.into();
    }
}

/// [`KvHead::weighted_sum`] over rows `value(j)`: [`COLUMNS`] outputs at a time stay in
/// registers while every row adds to them.
#[inline(always)]
fn weighted_sum<'v, T: Copy + Into<f32> + 'v>(
    weights: &[f32],
    js: Range<usize>,
    dst: &mut [f32],
    value: impl Fn(usize) -> &'v [T],
) {
    let mut c0 = 0;
    while c0 < dst.len() {
        let c1 = (c0 + COLUMNS).min(dst.len());
        let mut acc = [0.0f32; COLUMNS];
        acc[..c1 - c0].copy_from_slice(&dst[c0..c1]);
        for (&w, j) in weights.iter().zip(js.clone()) {
            add_scaled(w, &value(j)[c0..c1], &mut acc[..c1 - c0]);
        }
        dst[c0..c1].copy_from_slice(&acc[..c1 - c0]);
        c0 = c1;
    }
}

/// [`fixed_order_dot`], [`fixed_order_dots`] and [`weighted_sum`] over f16 rows with F16C's
/// conversions: the same operations in the same order, so the same bits.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use super::COLUMNS;
    use half::f16;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// # Safety
    /// The CPU has AVX2 and F16C; `a` and `b` have the same length.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub unsafe fn fixed_order_dot(a: &[f32], b: &[f16]) -> f32 {
        // SAFETY: the caller's contract.
        let [sum] = unsafe { fixed_order_dots(a, [b]) };
        sum
    }

    /// # Safety
    /// The CPU has AVX2 and F16C; every row of `b` has a's length.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub unsafe fn fixed_order_dots<const N: usize>(a: &[f32], b: [&[f16]; N]) -> [f32; N] {
        let whole = a.len() / 8 * 8;
        let mut tail = [0.0f32; N];
        for i in whole..a.len() {
            for n in 0..N {
                tail[n] += a[i] * f32::from(b[n][i]);
            }
        }
        let mut acc = [_mm256_setzero_ps(); N];
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= whole <= the length of every row.
            let x = unsafe { _mm256_loadu_ps(a.as_ptr().add(i)) };
            for n in 0..N {
                // SAFETY: as above.
                let y = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(b[n].as_ptr().add(i).cast())) };
                acc[n] = _mm256_add_ps(acc[n], _mm256_mul_ps(x, y));
            }
        }
        let mut sums = [0.0f32; N];
        for n in 0..N {
            let mut lanes = [0.0f32; 8];
            // SAFETY: room for 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[n]) };
            for l in lanes {
                sums[n] += l;
            }
            sums[n] += tail[n];
        }
        sums
    }

    /// # Safety
    /// The CPU has AVX2 and F16C; `v` and `dst` have the same length.
    #[cfg(test)]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn add_scaled(w: f32, v: &[f16], dst: &mut [f32]) {
        // SAFETY: the caller's contract.
        unsafe { weighted_sum(&[w], 0..1, dst, |_| v) }
    }

    /// [`super::weighted_sum`] with F16C: whole vectors of [`COLUMNS`] outputs in registers,
    /// then the last (fewer than 8) element by element.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; every `value(j)` has dst's length.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub unsafe fn weighted_sum<'v>(
        weights: &[f32],
        js: Range<usize>,
        dst: &mut [f32],
        value: impl Fn(usize) -> &'v [f16],
    ) {
        const VECTORS: usize = COLUMNS / 8;
        let whole = dst.len() / 8 * 8;
        let mut c0 = 0;
        while c0 < whole {
            let vectors = ((whole - c0) / 8).min(VECTORS);
            let mut acc = [_mm256_setzero_ps(); VECTORS];
            for (t, acc) in acc.iter_mut().enumerate().take(vectors) {
                // SAFETY: c0 + 8t + 8 <= whole <= dst's length.
                *acc = unsafe { _mm256_loadu_ps(dst.as_ptr().add(c0 + 8 * t)) };
            }
            for (&w, j) in weights.iter().zip(js.clone()) {
                let (wv, v) = (_mm256_set1_ps(w), value(j));
                for (t, acc) in acc.iter_mut().enumerate().take(vectors) {
                    // SAFETY: v has dst's length.
                    let y = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(c0 + 8 * t).cast())) };
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(wv, y));
                }
            }
            for (t, acc) in acc.iter().enumerate().take(vectors) {
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(c0 + 8 * t), *acc) };
            }
            c0 += 8 * vectors;
        }
        for (i, d) in dst.iter_mut().enumerate().skip(whole) {
            for (&w, j) in weights.iter().zip(js.clone()) {
                *d += w * f32::from(value(j)[i]);
            }
        }
    }
}

/// One run of a decoder graph over several sequences, packed the way its inputs take them:
/// each sequence's new tokens back to back (`ids`, with their `positions` in the sequence),
/// its `[seqs, 4]` table row (new rows, then kv rows: the cache slot from `kv_start`
/// holding what was cached before and the new tokens) and `last`, the row whose logits it
/// wants. Prefill and decode steps, and any mix of them, are built alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepBatch {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub table: Vec<u32>,
    pub last: Vec<u32>,
}

impl StepBatch {
    /// Adds a sequence whose cache slot starts at row `kv_start` and already holds `cached`
    /// rows, with `tokens` new (at least one).
    pub fn push(&mut self, kv_start: usize, cached: usize, tokens: &[u32]) {
        debug_assert!(!tokens.is_empty(), "a sequence in a step has new tokens");
        let start = self.ids.len() as u32;
        self.ids.extend_from_slice(tokens);
        self.positions.extend((cached..cached + tokens.len()).map(|p| p as u32));
        let kv_len = cached + tokens.len();
        self.table.extend([start, tokens.len() as u32, kv_start as u32, kv_len as u32]);
        self.last.push(start + tokens.len() as u32 - 1);
    }

    pub fn seqs(&self) -> usize {
        self.last.len()
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// The graph inputs `ids`, `positions`, `table`, `last`, in that order.
    pub fn tensors(&self) -> crate::error::Result<[crate::HostTensor; 4]> {
        let (n, seqs) = (self.tokens(), self.seqs());
        Ok([
            crate::HostTensor::u32(vec![n], self.ids.clone())?,
            crate::HostTensor::u32(vec![n], self.positions.clone())?,
            crate::HostTensor::u32(vec![seqs, 4], self.table.clone())?,
            crate::HostTensor::u32(vec![seqs], self.last.clone())?,
        ])
    }
}

/// Appends new key or value rows to a KV cache: row `q_start + i` of `new` goes to cache row
/// `kv_start + past + i`. Inputs: cache (a state, written in place), new `[tokens, width]`, a
/// `[seqs, 4]` table as for attention; the output is the cache after the write. Rows that
/// would land outside the sequence's kv range or the cache are not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWrite;

/// Kernel params for `kv_write`, mirrored in `shaders/attention.wgsl` and `cuda/attention.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct KvWriteParams {
    pub num_seqs: u32,
    /// Rows of `new`.
    pub tokens: u32,
    pub width: u32,
    /// Rows of the cache.
    pub kv_tokens: u32,
}

impl KvWrite {
    pub(crate) fn infer(inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(inputs, 3, 3)?;
        let (cache, new, table) = (&inputs[0], &inputs[1], &inputs[2]);
        // New rows are activations (f32); the cache keeps them as f32, or as f16 (half the memory).
        if !matches!(cache.dtype, DType::F32 | DType::F16) {
            return Err(format!("cache must be f32 or f16, is {cache}"));
        }
        float(new, "new rows")?;
        rank_is(cache, 2, "cache")?;
        rank_is(new, 2, "new rows")?;
        check_table(table, false)?;
        same_dim(&cache.shape[1], &new.shape[1], "cache and new rows have different widths")?;
        Ok(vec![cache.clone()])
    }

    pub fn params(new: &[usize], cache: &[usize], table: &[usize]) -> KvWriteParams {
        KvWriteParams {
            num_seqs: table[0] as u32,
            tokens: new[0] as u32,
            width: new[1] as u32,
            kv_tokens: cache[0] as u32,
        }
    }
}

/// Checks a `kv_write` table on the host: every sequence's new rows inside `new`
/// (`tokens` rows), no more new rows than kv rows, and its kv rows inside the cache.
/// Sequences must be in order of their new rows, which must not overlap (GPU kernels find a
/// row's sequence by binary search).
pub fn check_kv_table(table: &[u32], tokens: usize, cache_rows: usize) -> Result<(), String> {
    let mut previous_end = 0u64;
    for (s, row) in table.chunks_exact(4).enumerate() {
        let [q_start, q_len, kv_start, kv_len] = [row[0], row[1], row[2], row[3]].map(|x| x as u64);
        if q_start < previous_end {
            return Err(format!("sequence {s}: new rows start at {q_start}, inside the previous sequence's rows"));
        }
        previous_end = q_start + q_len;
        if q_start + q_len > tokens as u64 {
            return Err(format!(
                "sequence {s}: new rows {q_start}..{} are past the {tokens} rows given",
                q_start + q_len
            ));
        }
        if q_len > kv_len {
            return Err(format!("sequence {s}: {q_len} new rows but a kv length of {kv_len}"));
        }
        if kv_start + kv_len > cache_rows as u64 {
            return Err(format!(
                "sequence {s}: kv rows {kv_start}..{} are past the cache's {cache_rows} rows",
                kv_start + kv_len
            ));
        }
    }
    Ok(())
}

/// An element of a KV cache: f32, or f16 (rounded to nearest when a row is stored).
pub trait CacheElement: Copy {
    fn store(row: &[f32], into: &mut [Self]);
}

impl CacheElement for f32 {
    fn store(row: &[f32], into: &mut [f32]) {
        into.copy_from_slice(row);
    }
}

impl CacheElement for f16 {
    fn store(row: &[f32], into: &mut [f16]) {
        into.convert_from_f32_slice(row);
    }
}

/// CPU reference of `kv_write`.
pub fn kv_write_cpu<T: CacheElement>(p: &KvWriteParams, new: &[f32], table: &[u32], cache: &mut [T]) {
    let w = p.width as usize;
    for s in 0..p.num_seqs as usize {
        let rows = SeqRows::of(table, 4, s, p.tokens as usize, p.kv_tokens as usize);
        for (i, r) in rows.q.enumerate() {
            let dst = rows.kv.start.saturating_add(rows.past + i);
            if dst < rows.kv.end {
                T::store(&new[r * w..][..w], &mut cache[dst * w..][..w]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The F16C kernels give the portable ones' bits (the f16 cache's results must not depend
    /// on the CPU), at lengths that leave tails.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16c_sums_match_the_portable_ones_bit_for_bit() {
        if !f16c_available() {
            println!("skipped: this CPU has no AVX2 and F16C");
            return;
        }
        for n in [1, 7, 8, 64, 129] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
            let b: Vec<f16> = (0..n).map(|i| f16::from_f32(((i * 53 % 31) as f32 - 15.0) / 3.0)).collect();
            // SAFETY: AVX2 and F16C checked above; equal lengths.
            let fast = unsafe { f16c::fixed_order_dot(&a, &b) };
            assert_eq!(fast.to_bits(), fixed_order_dot(&a, &b).to_bits(), "dot of {n}");
            let (mut x, mut y) = (a.clone(), a.clone());
            // SAFETY: as above.
            unsafe { f16c::add_scaled(0.37, &b, &mut x) };
            add_scaled(0.37, &b, &mut y);
            assert_eq!(bits(&x), bits(&y));
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// The order every decoder score is summed in, written out plainly: eight partial sums
    /// over the whole vectors, the leftover elements in a sum of their own, then the eight in
    /// order and the leftovers last.
    fn reference_dot(a: &[f32], b: &[f32]) -> f32 {
        let whole = a.len() / 8 * 8;
        let mut lanes = [0.0f32; 8];
        for i in 0..whole {
            lanes[i % 8] += a[i] * b[i];
        }
        let tail = (whole..a.len()).fold(0.0f32, |t, i| t + a[i] * b[i]);
        lanes.iter().fold(0.0f32, |s, &l| s + l) + tail
    }

    /// Scoring keys side by side and summing values with the outputs in registers give the
    /// bits of one key at a time (`reference_dot`, then each row added in turn), for f32 and f16
    /// heads, with and without F16C, at head sizes that leave tails of the vectors and of the
    /// register block, and key counts around the side-by-side group.
    #[test]
    fn grouped_scores_and_sums_match_one_key_at_a_time() {
        let f16c = f16c_available();
        for d in [1, 7, 8, 33, 64, 129] {
            let keys = 11;
            let stride = d + 3; // rows of a wider cache: the head starts inside each row
            let k: Vec<f32> = (0..keys * stride).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
            let v: Vec<f32> = (0..keys * stride).map(|i| ((i * 53 % 31) as f32 - 15.0) / 3.0).collect();
            let (k16, v16): (Vec<f16>, Vec<f16>) =
                (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
            let q: Vec<f32> = (0..d).map(|i| ((i * 29 % 17) as f32 - 8.0) / 5.0).collect();
            let weights: Vec<f32> = (0..keys).map(|j| 1.0 / (j as f32 + 1.7)).collect();
            let start: Vec<f32> = (0..d).map(|i| i as f32 / 9.0).collect();
            for js in [0..0, 2..3, 1..5, 0..keys, 3..keys] {
                let ws = &weights[..js.len()];
                let check = |name: &str, head: &dyn Fn(&mut Vec<f32>, &mut [f32]), key: &dyn Fn(usize) -> Vec<f32>| {
                    let want_scores: Vec<f32> = js.clone().map(|j| reference_dot(&q, &key(j)) * 0.125).collect();
                    let mut want_sum = start.clone();
                    for (&w, j) in ws.iter().zip(js.clone()) {
                        let row: Vec<f32> = (0..d)
                            .map(|c| {
                                if name.starts_with("f16") {
                                    f32::from(v16[j * stride + 1 + c])
                                } else {
                                    v[j * stride + 1 + c]
                                }
                            })
                            .collect();
                        for (d, x) in want_sum.iter_mut().zip(&row) {
                            *d += w * x;
                        }
                    }
                    let (mut scores, mut sum) = (Vec::new(), start.clone());
                    head(&mut scores, &mut sum);
                    assert_eq!(bits(&scores), bits(&want_scores), "{name} scores, d {d}, keys {js:?}");
                    assert_eq!(bits(&sum), bits(&want_sum), "{name} sums, d {d}, keys {js:?}");
                };
                let f32_head = F32Head { k: &k[1..], v: &v[1..], stride, d };
                check(
                    "f32",
                    &|s, dst| {
                        f32_head.scores(&q, js.clone(), 0.125, s);
                        f32_head.weighted_sum(ws, js.clone(), dst);
                    },
                    &|j| k[j * stride + 1..][..d].to_vec(),
                );
                for use_f16c in [false, f16c] {
                    let head = F16Head { k: &k16[1..], v: &v16[1..], stride, d, f16c: use_f16c };
                    check(
                        if use_f16c { "f16 (F16C)" } else { "f16" },
                        &|s, dst| {
                            head.scores(&q, js.clone(), 0.125, s);
                            head.weighted_sum(ws, js.clone(), dst);
                        },
                        &|j| k16[j * stride + 1..][..d].iter().map(|&x| f32::from(x)).collect(),
                    );
                }
            }
        }
    }
}
