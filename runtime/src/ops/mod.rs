//! The op set. One module per op family: its params, its shape rules and its CPU
//! implementation, which is the reference every other backend is tested against.
//!
//! Kernels pair up by name across backends: an op's [`OpKind::kernel`] names the shader file
//! stem (`shaders/<stem>.wgsl`, `cuda/<stem>.cu`) and the entry point, and the `#[repr(C)]`
//! params struct declared here is mirrored field for field by both kernel languages.
//!
//! Sequences in a batch are *packed*: activations are `[tokens, features]` with no padding,
//! and a `segments` input `[seqs, 2]` (u32 start, length) says which rows belong to which
//! sequence. Attention and pooling read it; everything else is per token. This is the padding
//! mask in a form that computes no padded positions at all.

pub mod attention;
#[cfg(target_arch = "x86_64")]
pub(crate) mod attention_amx;
pub mod conv;
pub mod elementwise;
pub mod gather;
pub mod isa;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod qdot;
pub mod rope;
pub mod sample;
pub mod softlogic;

pub use attention::{Attention, KvWrite};
pub use conv::Conv2d;
pub use elementwise::{BinaryKind, UnaryKind};
pub use matmul::{Activation, LoraMatMul, MatMul};
pub use pool::PoolKind;
pub use rope::{Rope, RopeLayout};
pub use softlogic::{Connective, Logic};

use crate::graph::{Bindings, Dim, TensorType};
use crate::tensor::DType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `act(a · b + bias)`; inputs a `[..., M, K]`, b `[K, N]` (or `[N, K]` with `trans_b`,
    /// or batched like a), optional bias `[N]`.
    MatMul(MatMul),
    /// A linear layer with a LoRA adapter, `act(x · Wᵀ + bias + scale · (x · Aᵀ) · Bᵀ)`;
    /// inputs x `[..., K]`, W `[N, K]`, A `[r, K]`, B `[N, r]`, optional bias `[N]`.
    LoraMatMul(LoraMatMul),
    Unary(UnaryKind),
    /// Numpy-broadcasting elementwise op of two inputs.
    Binary(BinaryKind),
    /// Converts between f32 and f16, or u32 to f32.
    Cast(DType),
    /// Over the last axis; inputs x, gamma, beta.
    LayerNorm {
        eps: f32,
    },
    /// `x / sqrt(mean(x²) + eps) · gamma` over the last axis (llama's RMSNorm); inputs x,
    /// gamma.
    RmsNorm {
        eps: f32,
    },
    /// Over the last axis.
    Softmax,
    /// `x / max(‖x‖₂, eps)` over the last axis (torch's `F.normalize`).
    L2Normalize {
        eps: f32,
    },
    /// Fused multi-head scaled dot-product attention over packed sequences; inputs q, k, v and
    /// a table: `[seqs, 2]` segments (self-attention) or `[seqs, 4]` (q rows, kv rows: a
    /// decoder's KV cache). See `ops::attention`.
    Attention(Attention),
    /// Appends rows to a KV cache in place; inputs cache (a graph state), new rows, a
    /// `[seqs, 4]` table; the output is the cache after the write (the same buffer).
    KvWrite(KvWrite),
    /// Row gather (embedding lookup); inputs table `[V, D]`, ids (u32, any shape). Ids outside
    /// the table give a zero row on every backend.
    Gather,
    /// Rotary position embedding of q or k rows; inputs x, positions (u32 per row) and
    /// inv_freq (see `ops::rope`).
    Rope(Rope),
    /// Per-sequence pooling of packed rows; inputs x `[tokens, D]`, segments `[seqs, 2]`.
    Pool(PoolKind),
    /// Same data, another shape (symbolic dims resolve from the run's bindings). A view: no
    /// kernel runs.
    Reshape(Vec<Dim>),
    /// A t-norm family's AND, OR (inputs a, b: f32 truth values of one shape) or NOT (input
    /// a), elementwise; truth values clamp to [0, 1] with NaN as 0.
    SoftLogic {
        connective: Connective,
        logic: Logic,
    },
    /// EBRM's soft-logic aggregate (formula in `ops::softlogic`); inputs qe f32, mask u32 and
    /// kind u32, all `[items, entities]`, weight f32 and essential u32, both `[kinds]`;
    /// outputs score f32 `[items]` and contribution f32 `[items, entities]`.
    Aggregate {
        logic: Logic,
        /// λ: how much of the score the optional entities decide.
        optional_weight: f32,
    },
    /// Grouped 2-D convolution over NCHW with symmetric zero padding; inputs x
    /// `[N, C, H, W]`, w `[O, C/groups, KH, KW]`, optional bias `[O]`; output
    /// `[N, O, OH, OW]`, `OH = (H + 2·pad_h − KH) / stride_h + 1`.
    Conv2d(Conv2d),
    /// `min(max(x, min), max)` elementwise on f32 of any shape (ReLU6 is `Clamp { 0, 6 }`);
    /// NaN stays NaN, as in `torch.clamp`.
    Clamp {
        min: f32,
        max: f32,
    },
    /// The mean over H·W of x `[N, C, H, W]`, giving `[N, C]`.
    GlobalAvgPool,
    /// The next token of each sequence: inputs logits f32 `[seqs, vocab]`, params f32
    /// `[seqs, 5]` (temperature, top_k, top_p, min_p, repetition_penalty), seen u32
    /// `[seqs, n]` and keys u32 `[seqs, 2]`; output ids u32 `[seqs]` (see `ops::sample`).
    Sample,
}

/// The op table: for each op kind, its name (in graph files, errors and docs/ops.md) and the
/// kernel that implements it on the GPU backends as (file stem, entry point):
/// `shaders/<stem>.wgsl` and `cuda/<stem>.cu` both define `<entry>`; `None` for views, which
/// move no data. The kind enum, its list and both lookups derive from this one table.
macro_rules! op_table {
    ($($kind:ident => $name:literal, $kernel:expr;)*) => {
        /// The op set, without params: what the coverage tests enumerate.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OpKind {
            $($kind,)*
        }

        impl OpKind {
            pub const ALL: &'static [OpKind] = &[$(OpKind::$kind,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(OpKind::$kind => $name,)*
                }
            }

            /// The kernel that implements the op on GPU backends: (file stem, entry point).
            pub fn kernel(self) -> Option<(&'static str, &'static str)> {
                match self {
                    $(OpKind::$kind => $kernel,)*
                }
            }
        }
    };
}

op_table! {
    MatMul => "matmul", Some(("matmul", "matmul"));
    LoraMatMul => "lora_matmul", Some(("matmul", "lora_matmul"));
    Unary => "unary", Some(("elementwise", "unary"));
    Binary => "binary", Some(("elementwise", "binary"));
    // Not "cast": WGSL reserves that word, so no WGSL function can be named it.
    Cast => "cast", Some(("elementwise", "convert"));
    LayerNorm => "layer_norm", Some(("norm", "layer_norm"));
    RmsNorm => "rms_norm", Some(("norm", "rms_norm"));
    Softmax => "softmax", Some(("norm", "softmax"));
    L2Normalize => "l2_normalize", Some(("norm", "l2_normalize"));
    Attention => "attention", Some(("attention", "attention"));
    KvWrite => "kv_write", Some(("attention", "kv_write"));
    Gather => "gather", Some(("gather", "gather"));
    Pool => "pool", Some(("pool", "pool"));
    Rope => "rope", Some(("rope", "rope"));
    Reshape => "reshape", None;
    SoftLogic => "soft_logic", Some(("softlogic", "soft_logic"));
    Aggregate => "aggregate", Some(("softlogic", "aggregate"));
    Conv2d => "conv2d", Some(("conv", "conv2d"));
    // Not "clamp": a WGSL function of that name would shadow the builtin.
    Clamp => "clamp", Some(("elementwise", "clip"));
    GlobalAvgPool => "global_avg_pool", Some(("pool", "global_avg_pool"));
    Sample => "sample", Some(("sample", "sample"));
}

impl OpKind {
    pub fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.iter().copied().find(|k| k.name() == name)
    }
}

/// The file stem of the stored-weight kernels: `shaders/quant.wgsl` and `cuda/quant.cu` hold
/// the kernels of the ops whose weight operand is stored (f16, bf16 or GGUF blocks) and
/// dequantized inside the kernel ([`Op::stored_weight`]). Each is built once per weight dtype
/// (a WGSL pipeline-overridable constant, a CUDA `-D` define), so every build keeps these
/// entry-point names.
pub const STORED_WEIGHT_STEM: &str = "quant";

/// The stored-weight kernels of each op, in `STORED_WEIGHT_STEM`: matmul runs `matvec_stored`
/// for a few rows of activations (decoding) and `matmul_stored` (tiled) for more.
pub const STORED_WEIGHT_KERNELS: &[(OpKind, &[&str])] =
    &[(OpKind::MatMul, &["matvec_stored", "matmul_stored"]), (OpKind::Gather, &["gather_stored"])];

/// Every kernel's `#[repr(C)]` params struct, in one enum: what a backend passes as a
/// launch's first argument. WGSL (`shaders/`) and CUDA (`cuda/params.cuh`) mirror each struct
/// field for field; tests/tests/cuda_kernels.rs checks both against [`KernelParams::STRUCTS`].
macro_rules! kernel_params {
    ($($variant:ident($ty:ident),)*) => {
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub enum KernelParams {
            $($variant($ty),)*
        }

        impl KernelParams {
            /// Every params struct: (name, size in bytes).
            pub const STRUCTS: &'static [(&'static str, usize)] = &[$((stringify!($ty), std::mem::size_of::<$ty>()),)*];

            pub fn as_bytes(&self) -> &[u8] {
                match self {
                    $(KernelParams::$variant(p) => bytemuck::bytes_of(p),)*
                }
            }

            /// Hands the typed struct to `visitor` (for callers that pass it by value, such as
            /// a kernel compiled for the host).
            pub fn visit<V: ParamsVisitor>(&self, visitor: V) -> V::Output {
                match self {
                    $(KernelParams::$variant(p) => visitor.visit(*p),)*
                }
            }
        }

        $(impl From<$ty> for KernelParams {
            fn from(p: $ty) -> Self {
                KernelParams::$variant(p)
            }
        })*
    };
}

use attention::{AttentionParams, KvWriteParams};
use conv::{Conv2dParams, GlobalPoolParams};
use elementwise::{BinaryParams, ClampParams, UnaryParams};
use gather::GatherParams;
use matmul::MatMulParams;
use norm::NormParams;
use pool::PoolParams;
use rope::RopeParams;
use sample::SampleParams;
use softlogic::{AggregateParams, SoftLogicParams};

kernel_params! {
    MatMul(MatMulParams),
    Unary(UnaryParams),
    Binary(BinaryParams),
    Norm(NormParams),
    Attention(AttentionParams),
    KvWrite(KvWriteParams),
    Gather(GatherParams),
    Pool(PoolParams),
    Rope(RopeParams),
    SoftLogic(SoftLogicParams),
    Aggregate(AggregateParams),
    Conv2d(Conv2dParams),
    Clamp(ClampParams),
    GlobalPool(GlobalPoolParams),
    Sample(SampleParams),
}

/// What every kernel params struct is: plain `#[repr(C)]` data.
pub trait ParamsStruct: bytemuck::Pod + Send + Sync {}
impl<T: bytemuck::Pod + Send + Sync> ParamsStruct for T {}

/// Receives a [`KernelParams`] struct by its type.
pub trait ParamsVisitor {
    type Output;
    fn visit<P: ParamsStruct>(self, params: P) -> Self::Output;
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::MatMul(_) => OpKind::MatMul,
            Op::LoraMatMul(_) => OpKind::LoraMatMul,
            Op::Unary(_) => OpKind::Unary,
            Op::Binary(_) => OpKind::Binary,
            Op::Cast(_) => OpKind::Cast,
            Op::LayerNorm { .. } => OpKind::LayerNorm,
            Op::RmsNorm { .. } => OpKind::RmsNorm,
            Op::Softmax => OpKind::Softmax,
            Op::L2Normalize { .. } => OpKind::L2Normalize,
            Op::Attention(_) => OpKind::Attention,
            Op::KvWrite(_) => OpKind::KvWrite,
            Op::Gather => OpKind::Gather,
            Op::Pool(_) => OpKind::Pool,
            Op::Rope(_) => OpKind::Rope,
            Op::Reshape(_) => OpKind::Reshape,
            Op::SoftLogic { .. } => OpKind::SoftLogic,
            Op::Aggregate { .. } => OpKind::Aggregate,
            Op::Conv2d(_) => OpKind::Conv2d,
            Op::Clamp { .. } => OpKind::Clamp,
            Op::GlobalAvgPool => OpKind::GlobalAvgPool,
            Op::Sample => OpKind::Sample,
        }
    }

    /// Output types from input types, symbolic dims included. The error says which input and
    /// which rule is violated.
    pub fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        match self {
            Op::MatMul(m) => m.infer(inputs),
            Op::LoraMatMul(l) => l.infer(inputs),
            Op::SoftLogic { connective, .. } => softlogic::infer_soft_logic(*connective, inputs),
            Op::Aggregate { .. } => softlogic::infer_aggregate(inputs),
            Op::Conv2d(c) => c.infer(inputs),
            Op::Clamp { min, max } => {
                arity(inputs, 1, 1)?;
                float(&inputs[0], "input")?;
                if min.is_nan() || max.is_nan() {
                    return Err(format!("clamp bounds must be numbers, are {min} and {max}"));
                }
                Ok(vec![inputs[0].clone()])
            }
            Op::GlobalAvgPool => conv::infer_global_avg_pool(inputs),
            Op::Sample => sample::infer(inputs),
            Op::Unary(_) => {
                arity(inputs, 1, 1)?;
                float(&inputs[0], "input")?;
                Ok(vec![inputs[0].clone()])
            }
            Op::Binary(_) => elementwise::infer_binary(inputs),
            Op::Cast(to) => elementwise::infer_cast(inputs, *to),
            Op::LayerNorm { .. } => norm::infer_layer_norm(inputs),
            Op::RmsNorm { .. } => norm::infer_rms_norm(inputs),
            Op::Softmax | Op::L2Normalize { .. } => {
                arity(inputs, 1, 1)?;
                float(&inputs[0], "input")?;
                if inputs[0].rank() == 0 {
                    return Err("input must have at least one axis".into());
                }
                Ok(vec![inputs[0].clone()])
            }
            Op::Attention(a) => a.infer(inputs),
            Op::KvWrite(_) => KvWrite::infer(inputs),
            Op::Gather => gather::infer(inputs),
            Op::Pool(_) => pool::infer(inputs),
            Op::Rope(r) => r.infer(inputs),
            Op::Reshape(shape) => {
                arity(inputs, 1, 1)?;
                let from = &inputs[0];
                if let (Some(a), Some(b)) = (from.concrete(), TensorType::new(from.dtype, shape.clone()).concrete())
                    && a.iter().product::<usize>() != b.iter().product::<usize>()
                {
                    return Err(format!("cannot reshape {a:?} to {b:?}: element counts differ"));
                }
                Ok(vec![TensorType::new(from.dtype, shape.clone())])
            }
        }
    }

    /// The dtype of the weight the op dequantizes inside its kernel, when it reads one: matmul
    /// of f32 activations by b stored as f16, bf16 or GGUF blocks, or gather from such a table.
    /// GPU backends run these through the stored-weight kernels ([`STORED_WEIGHT_KERNELS`]).
    pub fn stored_weight(&self, inputs: &[DType]) -> Option<DType> {
        let stored = |d: DType| d.is_quantized() || matches!(d, DType::F16 | DType::BF16);
        match (self, inputs) {
            (Op::MatMul(_), [DType::F32, b, ..]) if stored(*b) => Some(*b),
            (Op::Gather, [table, DType::U32]) if stored(*table) => Some(*table),
            _ => None,
        }
    }

    /// The input that the op writes in place, when it has one: that input must be a graph
    /// state, its output 0 is the same buffer after the write, and backends receive it as the
    /// output (never also as an input).
    pub fn in_place_input(&self) -> Option<usize> {
        match self {
            Op::KvWrite(_) => Some(0),
            _ => None,
        }
    }

    /// Concrete output shapes for concrete input shapes; symbolic dims in op params (reshape)
    /// resolve from `bindings`.
    pub fn output_shapes(
        &self,
        inputs: &[(DType, &[usize])],
        bindings: &Bindings,
    ) -> Result<Vec<(DType, Vec<usize>)>, String> {
        let types: Vec<TensorType> = inputs.iter().map(|(d, s)| TensorType::fixed(*d, s)).collect();
        let op = match self {
            Op::Reshape(shape) => {
                let resolved = shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => Ok(Dim::Fixed(*n)),
                        Dim::Sym(s) => bindings
                            .get(s)
                            .map(|&n| Dim::from(n))
                            .ok_or_else(|| format!("reshape dim '{s}' is not bound by any input")),
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Op::Reshape(resolved)
            }
            other => other.clone(),
        };
        let out = op.infer(&types)?;
        out.into_iter()
            .map(|t| {
                let shape = t.concrete().ok_or_else(|| format!("output shape {t} is not concrete"))?;
                Ok((t.dtype, shape))
            })
            .collect()
    }
}

pub(crate) fn arity(inputs: &[TensorType], min: usize, max: usize) -> Result<(), String> {
    if inputs.len() < min || inputs.len() > max {
        let want = if min == max { format!("{min}") } else { format!("{min} to {max}") };
        return Err(format!("takes {want} inputs, got {}", inputs.len()));
    }
    Ok(())
}

pub(crate) fn float(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype != DType::F32 {
        return Err(format!("{what} must be f32, is {t}"));
    }
    Ok(())
}

/// A weight stored in a type other than f32, which f32 activations read through dequantization
/// inside the kernel: f16, bf16 or GGUF blocks, `[rows, K]` with every row whole blocks.
pub(crate) fn stored_weight(t: &TensorType, what: &str) -> Result<(), String> {
    if !(t.dtype.is_quantized() || matches!(t.dtype, DType::F16 | DType::BF16)) {
        return Err(format!("{what} must be f32, f16, bf16 or a block-quantized type, is {t}"));
    }
    rank_is(t, 2, what)?;
    let values = t.dtype.block().values as u64;
    match t.shape[1].fixed() {
        Some(k) if k % values == 0 => Ok(()),
        Some(k) => Err(format!("{what}: rows of {k} values are not whole {} blocks of {values}", t.dtype)),
        None => Err(format!("{what}: a {} weight needs a fixed row length", t.dtype)),
    }
}

pub(crate) fn dtype_is(t: &TensorType, dtype: DType, what: &str) -> Result<(), String> {
    if t.dtype != dtype {
        return Err(format!("{what} must be {dtype}, is {t}"));
    }
    Ok(())
}

pub(crate) fn rank_is(t: &TensorType, rank: usize, what: &str) -> Result<(), String> {
    if t.rank() != rank {
        return Err(format!("{what} must have rank {rank}, is {t}"));
    }
    Ok(())
}

/// Two dims that must be the same size.
pub(crate) fn same_dim(a: &Dim, b: &Dim, what: &str) -> Result<(), String> {
    if a != b {
        return Err(format!("{what}: {a} vs {b}"));
    }
    Ok(())
}

/// The row count and row length of a tensor reduced over its last axis.
pub fn rows_cols(shape: &[usize]) -> (usize, usize) {
    let cols = shape.last().copied().unwrap_or(1);
    let rows = shape.iter().product::<usize>().checked_div(cols).unwrap_or(0);
    (rows, cols)
}
