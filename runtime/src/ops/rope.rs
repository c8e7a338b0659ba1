//! Rotary position embedding (RoPE) of q or k rows, in the two layouts decoders use.
//!
//! Inputs x `[tokens, heads·head_dim]`, positions u32 `[tokens]` (each token's absolute
//! position: a decoder step passes the cache cursor of its sequence plus the token's index, so
//! packed sequences each get their own offset) and inv_freq f32 `[rot_dims / 2]`. For pair i
//! of a head, θ = position · inv_freq[i] and the pair turns by θ:
//! `(a, b) → (a·cos θ − b·sin θ, a·sin θ + b·cos θ)`. The pairs are `(2i, 2i + 1)` with
//! [`RopeLayout::Interleaved`] (GPT-J, and llama as GGUF stores its q/k rows) and
//! `(i, i + rot_dims/2)` with [`RopeLayout::Half`] (GPT-NeoX, qwen2, and Hugging Face's llama).
//! Dims from `rot_dims` on pass through. The frequencies are an input so that the graph's
//! builder decides them once (the base, linear or per-frequency scaling) and every backend
//! rotates by the same f32 angles.

use super::{arity, dtype_is, float, rank_is};
use crate::graph::TensorType;
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopeLayout {
    /// Pairs `(2i, 2i + 1)`.
    Interleaved,
    /// Pairs `(i, i + rot_dims / 2)`.
    Half,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rope {
    pub head_dim: u32,
    /// Leading dims of each head that rotate (even, at most `head_dim`).
    pub rot_dims: u32,
    pub layout: RopeLayout,
}

/// Kernel params for `rope`, mirrored in `shaders/rope.wgsl` and `cuda/rope.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RopeParams {
    pub tokens: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub rot_dims: u32,
    /// 0 interleaved, 1 half.
    pub half: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

impl Rope {
    pub(crate) fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(inputs, 3, 3)?;
        let (x, positions, inv_freq) = (&inputs[0], &inputs[1], &inputs[2]);
        float(x, "x")?;
        rank_is(x, 2, "x")?;
        dtype_is(positions, DType::U32, "positions")?;
        rank_is(positions, 1, "positions")?;
        float(inv_freq, "inv_freq")?;
        rank_is(inv_freq, 1, "inv_freq")?;
        if positions.shape[0] != x.shape[0] {
            return Err(format!("positions {positions} must have one entry per row of x {x}"));
        }
        if self.head_dim == 0 || self.rot_dims > self.head_dim || !self.rot_dims.is_multiple_of(2) {
            return Err(format!(
                "rot_dims ({}) must be even and at most head_dim ({}), which must be positive",
                self.rot_dims, self.head_dim
            ));
        }
        match x.shape[1].fixed() {
            Some(w) if w % self.head_dim as u64 == 0 => {}
            _ => return Err(format!("the width of x {x} must be a fixed multiple of head_dim {}", self.head_dim)),
        }
        if inv_freq.shape[0].fixed() != Some(self.rot_dims as u64 / 2) {
            return Err(format!("inv_freq {inv_freq} must hold rot_dims / 2 = {} frequencies", self.rot_dims / 2));
        }
        Ok(vec![x.clone()])
    }

    pub fn params(&self, x: &[usize]) -> RopeParams {
        RopeParams {
            tokens: x[0] as u32,
            heads: (x[1] / self.head_dim as usize) as u32,
            head_dim: self.head_dim,
            rot_dims: self.rot_dims,
            half: (self.layout == RopeLayout::Half) as u32,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// `inv_freq[i] = 1 / base^(2i / rot_dims)` in f32, as Hugging Face's rotary embedding
/// computes it, each frequency divided by `scale` (linear RoPE scaling; 1 for none).
pub fn inv_freq(base: f32, rot_dims: usize, scale: f32) -> Vec<f32> {
    (0..rot_dims / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / rot_dims as f32) / scale).collect()
}

/// The two dims pair `i` of a head turns, in its layout.
fn pair(p: &RopeParams, i: usize) -> (usize, usize) {
    if p.half != 0 { (i, i + p.rot_dims as usize / 2) } else { (2 * i, 2 * i + 1) }
}

/// CPU reference.
pub fn cpu(p: &RopeParams, x: &[f32], positions: &[u32], inv_freq: &[f32], out: &mut [f32]) {
    out.copy_from_slice(&x[..out.len()]);
    let (heads, d) = (p.heads as usize, p.head_dim as usize);
    for (t, &pos) in positions.iter().enumerate().take(p.tokens as usize) {
        for (i, &f) in inv_freq.iter().enumerate() {
            let theta = pos as f32 * f;
            let (sin, cos) = theta.sin_cos();
            let (a, b) = pair(p, i);
            for h in 0..heads {
                let row = (t * heads + h) * d;
                let (xa, xb) = (x[row + a], x[row + b]);
                out[row + a] = xa * cos - xb * sin;
                out[row + b] = xa * sin + xb * cos;
            }
        }
    }
}
