//! Matrix multiply with a fused epilogue: `act(a · bᵀ? + bias)`.

use super::{arity, float, same_dim};
use crate::graph::{Dim, TensorType};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Activation {
    #[default]
    None,
    /// GELU, erf form (BERT's).
    Gelu,
    Relu,
}

impl Activation {
    pub fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::Relu => 2,
        }
    }
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Gelu => super::elementwise::gelu(x),
            Activation::Relu => x.max(0.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MatMul {
    /// b is stored `[N, K]` (a PyTorch `Linear` weight) rather than `[K, N]`.
    pub trans_b: bool,
    pub activation: Activation,
}

/// Kernel params, mirrored by `shaders/matmul.wgsl` and `cuda/matmul.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MatMulParams {
    /// Number of independent products (the product of a's leading dims).
    pub batch: u32,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// Elements between consecutive products in a and b (0: b is shared by all).
    pub stride_a: u32,
    pub stride_b: u32,
    pub trans_b: u32,
    /// [`Activation::code`].
    pub activation: u32,
    pub has_bias: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

impl MatMul {
    pub(crate) fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(inputs, 2, 3)?;
        let (a, b) = (&inputs[0], &inputs[1]);
        float(a, "a")?;
        float(b, "b")?;
        if a.rank() < 2 {
            return Err(format!("a must have rank ≥ 2, is {a}"));
        }
        if b.rank() != 2 && b.rank() != a.rank() {
            return Err(format!("b must have rank 2 or the rank of a ({}), is {b}", a.rank()));
        }
        let r = b.rank();
        let (bk, bn) =
            if self.trans_b { (&b.shape[r - 1], &b.shape[r - 2]) } else { (&b.shape[r - 2], &b.shape[r - 1]) };
        same_dim(&a.shape[a.rank() - 1], bk, "inner dims of a and b differ")?;
        if r > 2 {
            for (i, (da, db)) in a.shape[..r - 2].iter().zip(&b.shape[..r - 2]).enumerate() {
                same_dim(da, db, &format!("batch dim {i} of a and b differ"))?;
            }
        }
        if let Some(bias) = inputs.get(2) {
            float(bias, "bias")?;
            if bias.rank() != 1 {
                return Err(format!("bias must have rank 1, is {bias}"));
            }
            same_dim(&bias.shape[0], bn, "bias length and N differ")?;
        }
        let mut shape: Vec<Dim> = a.shape[..a.rank() - 1].to_vec();
        shape.push(bn.clone());
        Ok(vec![TensorType::new(a.dtype, shape)])
    }

    pub fn params(&self, a: &[usize], b: &[usize], has_bias: bool) -> MatMulParams {
        let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
        let n = if self.trans_b { b[b.len() - 2] } else { b[b.len() - 1] };
        let batch: usize = a[..a.len() - 2].iter().product();
        MatMulParams {
            batch: batch as u32,
            m: m as u32,
            n: n as u32,
            k: k as u32,
            stride_a: (m * k) as u32,
            stride_b: if b.len() > 2 { (k * n) as u32 } else { 0 },
            trans_b: self.trans_b as u32,
            activation: self.activation.code(),
            has_bias: has_bias as u32,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// CPU reference: one GEMM per batch entry through the `gemm` crate, bias added by starting
/// from it, activation applied afterwards.
pub fn cpu(p: &MatMulParams, a: &[f32], b: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let act = match p.activation {
        1 => Activation::Gelu,
        2 => Activation::Relu,
        _ => Activation::None,
    };
    let flops = 2 * m * n * k;
    for batch in 0..p.batch as usize {
        let a = &a[batch * p.stride_a as usize..][..m * k];
        let b = &b[batch * p.stride_b as usize..][..k * n];
        let c = &mut out[batch * m * n..][..m * n];
        if let Some(bias) = bias {
            for row in c.chunks_exact_mut(n.max(1)) {
                row.copy_from_slice(bias);
            }
        }
        if m == 0 || n == 0 {
            continue;
        }
        if k == 0 {
            if bias.is_none() {
                c.fill(0.0);
            }
        } else {
            // b[k][n] at k*n_stride... : row-major [K, N] has row stride n, column stride 1;
            // transposed storage [N, K] has row stride 1, column stride k.
            let (b_rs, b_cs) = if p.trans_b != 0 { (1, k as isize) } else { (n as isize, 1) };
            let parallelism = if flops >= 1 << 20 {
                gemm::Parallelism::Rayon(rayon::current_num_threads())
            } else {
                gemm::Parallelism::None
            };
            // SAFETY: the pointers cover m×k, k×n and m×n elements with the strides given,
            // as the slices above were cut to exactly those sizes.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    bias.is_some(),
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    b_cs,
                    b_rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
        match act {
            Activation::None => {}
            Activation::Gelu => super::elementwise::par_map_inplace(c, super::elementwise::gelu),
            Activation::Relu => super::elementwise::par_map_inplace(c, |x| x.max(0.0)),
        }
    }
}
