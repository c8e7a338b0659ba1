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

use super::pool::segment_rows;
use super::{arity, dtype_is, float, rank_is, same_dim};
use crate::graph::{Dim, TensorType};
use crate::tensor::DType;
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
        // All f32, or all f16 (the f16 kernels: f16 storage, f32 arithmetic).
        let dtype = if q.dtype == DType::F16 { DType::F16 } else { DType::F32 };
        for (t, what) in [(q, "q"), (k, "k"), (v, "v")] {
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

/// CPU reference: per (sequence, head), S = q·kᵀ·scale and O = softmax(S)·v through `gemm`
/// on strided views.
pub fn cpu(p: &AttentionParams, q: &[f32], k: &[f32], v: &[f32], table: &[u32], out: &mut [f32]) {
    let (heads, kv_heads, d) = (p.num_heads as usize, p.num_kv_heads as usize, p.head_dim as usize);
    let (tokens, kv_tokens, cols) = (p.tokens as usize, p.kv_tokens as usize, p.table_cols as usize);
    let (qw, kw) = (heads * d, kv_heads * d);
    out.fill(0.0);
    if d == 0 {
        return;
    }
    let group = heads / kv_heads;
    let seqs: Vec<SeqRows> = (0..p.num_seqs as usize).map(|s| SeqRows::of(table, cols, s, tokens, kv_tokens)).collect();
    let tasks: Vec<(usize, usize)> = (0..seqs.len()).flat_map(|s| (0..heads).map(move |h| (s, h))).collect();
    let out_ptr = OutPtr(out.as_mut_ptr());
    let run = |&(s, h): &(usize, usize)| {
        let rows = &seqs[s];
        let (l, n) = (rows.q.len(), rows.kv.len());
        if l == 0 {
            return;
        }
        let kvh = h / group;
        if cols == 4 {
            // SAFETY: as below; rows of this sequence, columns of this head, are this task's.
            unsafe { fixed_order_rows_dispatch(p, rows, h, kvh, q, k, v, out_ptr) };
            return;
        }
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
    };
    // Parallel tasks must write disjoint rows: only when sequences are ordered and apart.
    let disjoint = seqs.windows(2).all(|w| w[0].q.end <= w[1].q.start);
    if tasks.len() > 1 && disjoint {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
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
/// # Safety
/// `rows` lie inside q, k and v as `cpu` checks them, and the output rows of this sequence and
/// columns of head `h` are written by this call only.
#[allow(clippy::too_many_arguments)]
unsafe fn fixed_order_rows_dispatch(
    p: &AttentionParams,
    rows: &SeqRows,
    h: usize,
    kvh: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: OutPtr,
) {
    // The same operations in the same order either way (Rust never fuses a multiply and an
    // add): AVX2 only makes the vectors wider.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2; the rest is the caller's contract.
        return unsafe { fixed_order_rows_avx2(p, rows, h, kvh, q, k, v, out) };
    }
    // SAFETY: the caller's contract.
    unsafe { fixed_order_rows(p, rows, h, kvh, q, k, v, out) }
}

/// # Safety
/// As [`fixed_order_rows`], on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn fixed_order_rows_avx2(
    p: &AttentionParams,
    rows: &SeqRows,
    h: usize,
    kvh: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: OutPtr,
) {
    // SAFETY: the caller's contract.
    unsafe { fixed_order_rows(p, rows, h, kvh, q, k, v, out) }
}

/// # Safety
/// As [`fixed_order_rows_dispatch`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn fixed_order_rows(
    p: &AttentionParams,
    rows: &SeqRows,
    h: usize,
    kvh: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: OutPtr,
) {
    let (d, qw, kw) =
        (p.head_dim as usize, (p.num_heads * p.head_dim) as usize, (p.num_kv_heads * p.head_dim) as usize);
    let mut weights = Vec::with_capacity(rows.kv.len());
    for i in 0..rows.q.len() {
        let q_row = &q[(rows.q.start + i) * qw + h * d..][..d];
        // SAFETY: the caller's contract: this row and head's d outputs are ours.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add((rows.q.start + i) * qw + h * d), d) };
        let visible = rows.visible(i, p.causal != 0);
        weights.clear();
        // (Loops, not iterator adapters: a closure would not inherit the AVX2 target feature.)
        for j in visible.clone() {
            weights.push(fixed_order_dot(q_row, &k[j * kw + kvh * d..][..d]) * p.scale);
        }
        if weights.is_empty() {
            continue; // sees nothing: zeros, already written
        }
        let max = weights.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for w in &mut weights {
            *w = (*w - max).exp();
            sum += *w;
        }
        for (w, j) in weights.iter().zip(visible) {
            let v_row = &v[j * kw + kvh * d..][..d];
            let w = w / sum;
            for c in 0..d {
                dst[c] += w * v_row[c];
            }
        }
    }
}

/// Σ a·b in eight interleaved partial sums, then those in order: vectorizes, and depends only
/// on the length.
#[inline(always)]
fn fixed_order_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut tail = 0.0;
    for (x, y) in a8.remainder().iter().zip(b8.remainder()) {
        tail += x * y;
    }
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut sum = 0.0;
    for a in acc {
        sum += a;
    }
    sum + tail
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
        float(cache, "cache")?;
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

/// CPU reference of `kv_write`.
pub fn kv_write_cpu(p: &KvWriteParams, new: &[f32], table: &[u32], cache: &mut [f32]) {
    let w = p.width as usize;
    for s in 0..p.num_seqs as usize {
        let rows = SeqRows::of(table, 4, s, p.tokens as usize, p.kv_tokens as usize);
        for (i, r) in rows.q.enumerate() {
            let dst = rows.kv.start.saturating_add(rows.past + i);
            if dst < rows.kv.end {
                cache[dst * w..][..w].copy_from_slice(&new[r * w..][..w]);
            }
        }
    }
}
