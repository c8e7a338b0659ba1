//! Per-sequence pooling of packed token rows.

use super::{arity, dtype_is, float, rank_is};
use crate::graph::{Dim, TensorType};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolKind {
    /// Mean over the sequence's tokens (sentence-transformers' masked mean: only real tokens
    /// exist in a packed batch).
    Mean,
    /// The first token (BERT's [CLS]).
    First,
    /// Elementwise max over the sequence's tokens.
    Max,
}

impl PoolKind {
    pub const ALL: &'static [PoolKind] = &[PoolKind::Mean, PoolKind::First, PoolKind::Max];
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// Kernel params for `pool`, mirrored in `shaders/pool.wgsl` and `cuda/pool.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PoolParams {
    pub num_seqs: u32,
    pub dim: u32,
    pub tokens: u32,
    pub kind: u32,
}

impl PoolParams {
    pub fn new(kind: PoolKind, x: &[usize], segments: &[usize]) -> Self {
        PoolParams { num_seqs: segments[0] as u32, dim: x[1] as u32, tokens: x[0] as u32, kind: kind.code() }
    }
}

pub(crate) fn infer(inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    arity(inputs, 2, 2)?;
    let (x, seg) = (&inputs[0], &inputs[1]);
    float(x, "x")?;
    rank_is(x, 2, "x")?;
    check_segments(seg)?;
    Ok(vec![TensorType::new(x.dtype, vec![seg.shape[0].clone(), x.shape[1].clone()])])
}

/// `segments` is u32 `[seqs, 2]`: (first row, row count) of each sequence.
pub(crate) fn check_segments(seg: &TensorType) -> Result<(), String> {
    dtype_is(seg, crate::tensor::DType::U32, "segments")?;
    rank_is(seg, 2, "segments")?;
    if seg.shape[1] != Dim::Fixed(2) {
        return Err(format!("segments must be [seqs, 2] (start, length), is {seg}"));
    }
    Ok(())
}

/// The rows of segment `s`, clamped to `tokens` so that a bad segment reads nothing out of
/// bounds (as on the GPU).
pub fn segment_rows(segments: &[u32], s: usize, tokens: usize) -> std::ops::Range<usize> {
    let start = (segments[2 * s] as usize).min(tokens);
    let end = start.saturating_add(segments[2 * s + 1] as usize).min(tokens);
    start..end
}

pub fn cpu(p: &PoolParams, x: &[f32], segments: &[u32], out: &mut [f32]) {
    let dim = p.dim as usize;
    if dim == 0 {
        return;
    }
    for (s, o) in out.chunks_exact_mut(dim).enumerate() {
        let rows = segment_rows(segments, s, p.tokens as usize);
        o.fill(0.0);
        if rows.is_empty() {
            continue;
        }
        let n = rows.len();
        let first = rows.start;
        match p.kind {
            0 => {
                for r in rows {
                    o.iter_mut().zip(&x[r * dim..][..dim]).for_each(|(a, &b)| *a += b);
                }
                o.iter_mut().for_each(|a| *a /= n as f32);
            }
            1 => o.copy_from_slice(&x[first * dim..][..dim]),
            _ => {
                o.copy_from_slice(&x[first * dim..][..dim]);
                for r in rows {
                    o.iter_mut().zip(&x[r * dim..][..dim]).for_each(|(a, &b)| *a = a.max(b));
                }
            }
        }
    }
}
