//! Fused multi-head scaled dot-product attention over packed sequences.
//!
//! q `[tokens, heads·d]`, k and v `[tokens, kv_heads·d]`, segments u32 `[seqs, 2]`. Head h of
//! token t reads columns `h·d .. (h+1)·d` in place: no per-head copy is ever made. A token
//! attends to the tokens of its own segment (the padding mask of a padded batch; the causal
//! flag further limits it to earlier tokens). Tokens in no segment get zeros.

use super::pool::{check_segments, segment_rows};
use super::{arity, float, rank_is, same_dim};
use crate::graph::{Dim, TensorType};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

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
    pub tokens: u32,
    pub num_heads: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub causal: u32,
    pub scale: f32,
    pub _pad: u32,
}

impl Attention {
    pub(crate) fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(inputs, 4, 4)?;
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        for (t, what) in [(q, "q"), (k, "k"), (v, "v")] {
            float(t, what)?;
            rank_is(t, 2, what)?;
        }
        check_segments(&inputs[3])?;
        same_dim(&q.shape[0], &k.shape[0], "q and k token counts differ")?;
        same_dim(&q.shape[0], &v.shape[0], "q and v token counts differ")?;
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

    pub fn params(&self, q: &[usize], segments: &[usize]) -> AttentionParams {
        AttentionParams {
            num_seqs: segments[0] as u32,
            tokens: q[0] as u32,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: (q[1] / self.num_heads as usize) as u32,
            causal: self.causal as u32,
            scale: self.scale,
            _pad: 0,
        }
    }
}

/// Lets parallel tasks write disjoint (segment, head) blocks of one output.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only its own segment's rows and its own head's columns.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// CPU reference: per (segment, head), S = q·kᵀ·scale and O = softmax(S)·v through `gemm`
/// on strided views.
pub fn cpu(p: &AttentionParams, q: &[f32], k: &[f32], v: &[f32], segments: &[u32], out: &mut [f32]) {
    let (heads, kv_heads, d) = (p.num_heads as usize, p.num_kv_heads as usize, p.head_dim as usize);
    let tokens = p.tokens as usize;
    let (qw, kw) = (heads * d, kv_heads * d);
    out.fill(0.0);
    if d == 0 {
        return;
    }
    let group = heads / kv_heads;
    let tasks: Vec<(usize, usize)> = (0..p.num_seqs as usize).flat_map(|s| (0..heads).map(move |h| (s, h))).collect();
    let out_ptr = OutPtr(out.as_mut_ptr());
    let run = |&(s, h): &(usize, usize)| {
        let rows = segment_rows(segments, s, tokens);
        let l = rows.len();
        if l == 0 {
            return;
        }
        let kvh = h / group;
        let mut scores = vec![0.0f32; l * l];
        // SAFETY: all views stay inside q/k/v (rows < tokens, columns < width) and the
        // output block (rows of this segment, columns of this head) belongs to this task.
        unsafe {
            gemm::gemm(
                l,
                l,
                d,
                scores.as_mut_ptr(),
                1,
                l as isize,
                false,
                q.as_ptr().add(rows.start * qw + h * d),
                1,
                qw as isize,
                k.as_ptr().add(rows.start * kw + kvh * d),
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
        for (i, row) in scores.chunks_exact_mut(l).enumerate() {
            let visible = if p.causal != 0 { i + 1 } else { l };
            let max = row[..visible].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for x in &mut row[..visible] {
                *x = (*x - max).exp();
                sum += *x;
            }
            for x in &mut row[..visible] {
                *x /= sum;
            }
            row[visible..].fill(0.0);
        }
        let out = out_ptr;
        unsafe {
            gemm::gemm(
                l,
                d,
                l,
                out.0.add(rows.start * qw + h * d),
                1,
                qw as isize,
                false,
                scores.as_ptr(),
                1,
                l as isize,
                v.as_ptr().add(rows.start * kw + kvh * d),
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
    // Parallel tasks must write disjoint rows: only when segments are ordered and apart.
    let disjoint = (1..p.num_seqs as usize)
        .all(|s| segment_rows(segments, s - 1, tokens).end <= segment_rows(segments, s, tokens).start);
    if tasks.len() > 1 && disjoint {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
}
