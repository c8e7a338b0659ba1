//! Matrix multiply with a fused epilogue, `act(a · bᵀ? + bias)`, and its LoRA form,
//! `act(x · Wᵀ + bias + scale · (x · Aᵀ) · Bᵀ)`.

use super::{arity, dtype_is, float, rank_is, same_dim, stored_weight};
use crate::error::Result;
use crate::graph::{Dim, TensorType};
use crate::tensor::DType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
#[cfg(target_arch = "x86_64")]
pub use amx::WeightTiles;
/// Elsewhere nothing is packed for AMX: an empty stand-in.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Debug, Default)]
pub struct WeightTiles;
#[cfg(not(target_arch = "x86_64"))]
impl WeightTiles {
    pub fn clear(&mut self) {}
}
pub mod bf16_dot;
mod few_rows;
// Its kernels are x86-64's; elsewhere `panels::available` is false and the packing unused.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod panels;
pub use panels::WeightPanels;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Activation {
    #[default]
    None,
    /// GELU, erf form (BERT's).
    Gelu,
    Relu,
    /// SiLU, `x · sigmoid(x)`: the gate of llama's SwiGLU feed-forward, applied as the gate's
    /// product is written (on a GPU, one launch fewer per layer at every decode step).
    Silu,
}

impl Activation {
    pub fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::Relu => 2,
            Activation::Silu => 3,
        }
    }
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Gelu => super::elementwise::gelu(x),
            Activation::Relu => x.max(0.0),
            Activation::Silu => super::elementwise::UnaryKind::Silu.apply(x),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MatMul {
    /// b is stored `[N, K]` (a PyTorch `Linear` weight) rather than `[K, N]`.
    pub trans_b: bool,
    pub activation: Activation,
}

/// Kernel params, mirrored by `shaders/matmul.wgsl` and `cuda/params.cuh`. The `lora_*`
/// fields are read by the `lora_matmul` kernel only (0 elsewhere).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
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
    /// r: the rank of the LoRA term, the inner length of `t · Bᵀ`.
    pub lora_rank: u32,
    /// PEFT's `lora_alpha / r`.
    pub lora_scale: f32,
    pub _pad: u32,
}

impl MatMul {
    /// The dtypes matmul takes: all f32; all f16 (a, b, bias and out: the f16 kernels); or f32
    /// activations with a stored weight b `[N, K]` (`trans_b`) in f16, bf16 or GGUF blocks,
    /// dequantized inside the kernel.
    pub(crate) fn infer(&self, inputs: &[TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        arity(inputs, 2, 3)?;
        let (a, b) = (&inputs[0], &inputs[1]);
        match (a.dtype, b.dtype) {
            (DType::F32, DType::F32) | (DType::F16, DType::F16) => {}
            (DType::F32, _) => {
                stored_weight(b, "b")?;
                if !self.trans_b {
                    return Err(format!("a {} weight b must be stored [N, K] (trans_b)", b.dtype));
                }
            }
            (DType::F16, _) => return Err(format!("b must be f16 like a, is {b}")),
            _ => return Err(format!("a must be f32 or f16, is {a}")),
        }
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
            dtype_is(bias, a.dtype, "bias")?;
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
            lora_rank: 0,
            lora_scale: 0.0,
            _pad: 0,
        }
    }

    /// Params of a product by a stored weight b `[N, K]` (f16, bf16, GGUF blocks): a's leading
    /// dims fold into rows, as b is shared by all of them (`m` counts every row, `batch` is 1).
    /// What [`cpu_stored`] computes and the GPU stored-weight kernels read.
    pub fn stored_params(&self, a: &[usize], b: &[usize], has_bias: bool) -> MatMulParams {
        let rows: usize = a[..a.len() - 1].iter().product();
        MatMulParams { batch: 1, m: rows as u32, stride_a: 0, ..self.params(a, b, has_bias) }
    }
}

/// CPU reference: one GEMM per batch entry (the `gemm` crate, or [`few_rows`] for a few rows
/// by a weight), then bias and activation in one pass. Where b is a weight `[N, K]` shared by
/// every row and the caller keeps its panels (`b_panels`: the CPU backend does for every
/// weight it holds), on AVX2 and AVX-512 products of a few to a few hundred rows multiply
/// from those panels instead ([`panels`]), each task applying the epilogue to its block.
pub fn cpu(
    p: &MatMulParams,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    b_panels: Option<&WeightPanels>,
) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    // The batch entries' rows are consecutive in a and in out: with a shared weight, one
    // product of all of them.
    let rows = m * p.batch as usize;
    let shared_weight = p.trans_b != 0 && (p.batch == 1 || p.stride_b == 0);
    let use_panels = shared_weight && panels::serves(super::isa::CpuIsa::active(), rows);
    if let Some(panels) = b_panels.filter(|_| use_panels).and_then(|kept| kept.get_or_pack(b, n, k)) {
        return panels::multiply(a, rows, panels, out, Epilogue { bias, code: p.activation });
    }
    for batch in 0..p.batch as usize {
        let a = &a[batch * p.stride_a as usize..][..m * k];
        let b = &b[batch * p.stride_b as usize..][..k * n];
        let c = &mut out[batch * m * n..][..m * n];
        gemm_into(Gemm { m, n, k, trans_b: p.trans_b != 0, accumulate: false, scale: 1.0 }, a, b, c);
        bias_and_activation(c, n, bias, p.activation);
    }
}

/// Rows of a stored weight dequantized together: the CPU holds `PANEL_ROWS × K` f32 of a
/// weight at a time (per thread), whatever its size.
const PANEL_ROWS: usize = 64;

/// How the CPU multiplies by a block-quantized weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredPath {
    /// Panels of the weight dequantized to f32 (exactly as `weights::quant` does) and
    /// multiplied in f32: the reference.
    Dequantized,
    /// The activations rounded to the weight's precision and the dot products taken in it,
    /// on the [`CpuIsa`](super::isa::CpuIsa) given, where that is faster: GGUF blocks by 8-bit
    /// activations in integers ([`super::qdot`], llama.cpp's CPU path), bf16 by bf16
    /// activations with AVX-512 BF16 ([`bf16_dot`]). Other cases take the dequantized path.
    LowPrecision(super::isa::CpuIsa),
}

/// CPU matmul with a stored weight b `[N, K]` (f16, bf16 or GGUF blocks, raw bytes), through
/// `path` for the block types [`super::qdot`] takes where it is the faster one
/// ([`super::qdot::preferred`]: many rows of a 32-value type on AVX2 go the f32 way) and for
/// bf16 where the CPU has bf16 dot products (on AMX with `b_tiles`, b's tiles kept from one
/// call to the next where the caller holds b); f16 is always dequantized.
#[allow(clippy::too_many_arguments)]
pub fn cpu_stored(
    p: &MatMulParams,
    a: &[f32],
    b_dtype: DType,
    b: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    path: StoredPath,
    b_tiles: Option<&WeightTiles>,
) -> Result<()> {
    let (m, n, k) = (p.m as usize * p.batch as usize, p.n as usize, p.k as usize);
    match path {
        StoredPath::LowPrecision(isa) if super::qdot::supports(b_dtype) && super::qdot::preferred(isa, b_dtype, m) => {
            let w = super::qdot::BlockMatrix { dtype: b_dtype, bytes: b, rows: n, cols: k };
            super::qdot::matmul(isa, w, &a[..m * k], m, &mut out[..m * n])?
        }
        StoredPath::LowPrecision(isa) if b_dtype == DType::BF16 && bf16_dot::available(isa) => {
            if b.len() < 2 * n * k || a.len() < m * k || out.len() < m * n {
                return Err(crate::error::Error::input(format!(
                    "matmul {m}×{k} by bf16 {n}×{k}: {} weight bytes, {} activations, {} outputs",
                    b.len(),
                    a.len(),
                    out.len()
                )));
            }
            // The bf16 products apply the epilogue themselves (on AMX, to each task's block
            // while it is in cache).
            bf16_dot::multiply(a, m, k, b, n, out, Epilogue { bias, code: p.activation }, b_tiles);
            return Ok(());
        }
        _ => dequantized_panels(m, n, k, a, b_dtype, b, out)?,
    }
    bias_and_activation(&mut out[..m * n], n, bias, p.activation);
    Ok(())
}

/// A panel of b's rows is dequantized to f32 (into a buffer each thread keeps) and multiplied
/// into its columns of `out`, panels in parallel.
fn dequantized_panels(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b_dtype: DType,
    b: &[u8],
    out: &mut [f32],
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return Ok(());
    }
    thread_local! {
        static PANEL: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    struct Out(*mut f32);
    // SAFETY: the panels write disjoint columns of `out` (see below).
    unsafe impl Sync for Out {}
    impl Out {
        fn column(&self, c: usize) -> *mut f32 {
            self.0.wrapping_add(c)
        }
    }
    let dst = Out(out[..m * n].as_mut_ptr());
    let a = &a[..m * k];
    (0..n.div_ceil(PANEL_ROWS)).into_par_iter().try_for_each(|panel| {
        let rows = panel * PANEL_ROWS..((panel + 1) * PANEL_ROWS).min(n);
        let mut w = PANEL.take();
        if w.len() < rows.len() * k {
            w.resize(rows.len() * k, 0.0);
        }
        for (r, row) in rows.clone().zip(w.chunks_exact_mut(k)) {
            crate::weights::quant::dequantize_row(b_dtype, b, r, k, row)?;
        }
        // SAFETY: a is m×k (row stride k), w holds rows.len()×k (read as its transpose: row
        // stride 1, column stride k), and the destination is columns rows.start.. of the
        // m×n out (row stride n), which no other panel writes. Panels run in parallel, so
        // each GEMM runs on its own thread.
        unsafe {
            gemm::gemm(
                m,
                rows.len(),
                k,
                dst.column(rows.start),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        PANEL.set(w);
        Ok(())
    })
}

/// One `c = accumulate·c + scale · a · b` product: a `[m, k]`, b `[k, n]` (or `[n, k]` with
/// `trans_b`), c `[m, n]`, all row-major.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_b: bool,
    /// Add to what c holds instead of overwriting it.
    pub accumulate: bool,
    pub scale: f32,
}

pub(super) fn gemm_into(g: Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    let Gemm { m, n, k, .. } = g;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !g.accumulate {
            c.fill(0.0);
        }
        return;
    }
    if g.trans_b && m <= few_rows::MAX_ROWS && few_rows::available(super::isa::CpuIsa::active()) {
        return few_rows::multiply(g, a, b, c);
    }
    // Row-major [K, N] has row stride n, column stride 1; transposed storage [N, K] has row
    // stride 1, column stride k.
    let (b_rs, b_cs) = if g.trans_b { (1, k as isize) } else { (n as isize, 1) };
    let parallelism = if 2 * m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the pointers cover m×k, k×n and m×n elements with the strides given (the
    // callers cut the slices to exactly those sizes; the asserts keep it so).
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            g.accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            g.scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The epilogue, `c ← act(c + bias)` on rows of n, in one pass: each row gets its bias and
/// its activation while it is in the L1 cache.
fn bias_and_activation(c: &mut [f32], n: usize, bias: Option<&[f32]>, code: u32) {
    let epilogue = Epilogue { bias, code };
    if n == 0 || epilogue.is_identity() {
        return;
    }
    let row = |row: &mut [f32]| epilogue.apply(row, 0);
    let rows_per_task = (super::elementwise::PAR_MIN / n).max(1);
    if c.len() < super::elementwise::PAR_MIN {
        c.chunks_exact_mut(n).for_each(row);
    } else {
        c.par_chunks_mut(rows_per_task * n).for_each(|rows| rows.chunks_exact_mut(n).for_each(row));
    }
}

/// A product's bias (`[n]`) and activation ([`Activation::code`]), applied to its outputs.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub code: u32,
}

impl Epilogue<'_> {
    /// No bias, no activation.
    #[cfg(test)]
    pub(crate) const NONE: Epilogue<'static> = Epilogue { bias: None, code: 0 };

    /// Nothing to apply.
    pub(crate) fn is_identity(&self) -> bool {
        self.bias.is_none() && self.code == 0
    }

    /// `part ← act(part + bias[first..])` for output columns `first..first + part.len()` of
    /// one row.
    pub(crate) fn apply(&self, part: &mut [f32], first: usize) {
        if let Some(bias) = self.bias {
            part.iter_mut().zip(&bias[first..]).for_each(|(x, b)| *x += b);
        }
        match self.code {
            1 => super::elementwise::map_chunk(part, super::elementwise::gelu),
            2 => super::elementwise::map_chunk(part, |x| x.max(0.0)),
            3 => super::elementwise::map_chunk(part, |x| Activation::Silu.apply(x)),
            _ => {}
        }
    }
}

/// A linear layer with a LoRA adapter, fused (PEFT's formula):
/// `y = act(x · Wᵀ + bias + scale · (x · Aᵀ) · Bᵀ)`. Inputs x `[..., K]` (rank ≥ 2; the
/// leading dims are rows that share the weights), W `[N, K]`, A `[r, K]`, B `[N, r]`, optional
/// bias `[N]`; output `[..., N]`. `scale` is `lora_alpha / r`.
///
/// GPU backends run it as two dispatches: `t = x · Aᵀ` into a scratch `[rows, r]` with the
/// plain matmul kernel, then `lora_matmul`, the matmul kernel whose K loop goes on over the r
/// columns of `scale · t` against B after the K columns of x against W, so the low-rank term
/// lands in the same accumulators and shares the tiling and the epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct LoraMatMul {
    pub scale: f32,
    pub activation: Activation,
}

impl LoraMatMul {
    pub(crate) fn infer(&self, inputs: &[TensorType]) -> std::result::Result<Vec<TensorType>, String> {
        arity(inputs, 4, 5)?;
        let [x, w, a, b, ..] = inputs else { return Err("takes x, w, lora_a, lora_b and an optional bias".into()) };
        for (t, what) in [(x, "x"), (w, "w"), (a, "lora_a"), (b, "lora_b")] {
            float(t, what)?;
        }
        if x.rank() < 2 {
            return Err(format!("x must have rank ≥ 2, is {x}"));
        }
        rank_is(w, 2, "w")?;
        rank_is(a, 2, "lora_a")?;
        rank_is(b, 2, "lora_b")?;
        let k = &x.shape[x.rank() - 1];
        let (n, r) = (&w.shape[0], &a.shape[0]);
        same_dim(&w.shape[1], k, "w [N, K] and x [..., K] differ in K")?;
        same_dim(&a.shape[1], k, "lora_a [r, K] and x [..., K] differ in K")?;
        same_dim(&b.shape[0], n, "lora_b [N, r] and w [N, K] differ in N")?;
        same_dim(&b.shape[1], r, "lora_b [N, r] and lora_a [r, K] differ in r")?;
        if let Some(bias) = inputs.get(4) {
            float(bias, "bias")?;
            rank_is(bias, 1, "bias")?;
            same_dim(&bias.shape[0], n, "bias length and N differ")?;
        }
        let mut shape: Vec<Dim> = x.shape[..x.rank() - 1].to_vec();
        shape.push(n.clone());
        Ok(vec![TensorType::new(x.dtype, shape)])
    }

    /// Params of the two products, from the shapes of x, W and A: (`t = x · Aᵀ`, the main
    /// product with the LoRA term). x's leading dims fold into rows, as W is shared.
    pub fn params(&self, x: &[usize], w: &[usize], lora_a: &[usize], has_bias: bool) -> (MatMulParams, MatMulParams) {
        let k = x[x.len() - 1];
        let rows: usize = x[..x.len() - 1].iter().product();
        let (n, r) = (w[0], lora_a[0]);
        let product = |n: usize| MatMulParams {
            batch: 1,
            m: rows as u32,
            n: n as u32,
            k: k as u32,
            stride_a: 0,
            stride_b: 0,
            trans_b: 1,
            activation: 0,
            has_bias: 0,
            lora_rank: 0,
            lora_scale: 0.0,
            _pad: 0,
        };
        let down = product(r);
        let main = MatMulParams {
            activation: self.activation.code(),
            has_bias: has_bias as u32,
            lora_rank: r as u32,
            lora_scale: self.scale,
            ..product(n)
        };
        (down, main)
    }
}

/// CPU reference of [`LoraMatMul`]: `t = x · Aᵀ`, then `y = x · Wᵀ`, then
/// `y += scale · t · Bᵀ`, three GEMMs, then the bias and the activation. `p` is the main product's params
/// ([`LoraMatMul::params`]).
pub fn lora_cpu(
    p: &MatMulParams,
    x: &[f32],
    w: &[f32],
    lora_a: &[f32],
    lora_b: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (rows, n, k, r) = (p.m as usize, p.n as usize, p.k as usize, p.lora_rank as usize);
    let (x, out) = (&x[..rows * k], &mut out[..rows * n]);
    let mut t = vec![0.0f32; rows * r];
    gemm_into(Gemm { m: rows, n: r, k, trans_b: true, accumulate: false, scale: 1.0 }, x, lora_a, &mut t);
    gemm_into(Gemm { m: rows, n, k, trans_b: true, accumulate: false, scale: 1.0 }, x, w, out);
    gemm_into(Gemm { m: rows, n, k: r, trans_b: true, accumulate: true, scale: p.lora_scale }, &t, lora_b, out);
    bias_and_activation(out, n, bias, p.activation);
}
