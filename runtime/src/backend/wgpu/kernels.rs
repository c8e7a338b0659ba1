//! The host side of the WGSL kernels: the embedded sources, each kernel's bind group shape,
//! and per dispatch the params bytes and the workgroup grid. Pure functions, no device.
//!
//! Binding convention (every kernel): 0 = the op's `#[repr(C)]` params as a uniform, 1..=n =
//! the op's inputs in op order (read-only storage), then its outputs (read-write storage).
//! `lora_matmul` is the exception: its second dispatch binds x, W, bias, the scratch `t` and
//! B (see [`lora_down`]).
//!
//! An op that reads a stored weight (f16, bf16, GGUF blocks: [`Op::stored_weight`]) runs one
//! of `shaders/quant.wgsl`'s kernels instead of its own, in a pipeline built for that dtype
//! (the override constant `WEIGHT`); its bindings follow the same convention.

use crate::ops::{self, Op, OpKind};
use crate::tensor::DType;

/// `shaders/<stem>.wgsl` after `shaders/common.wgsl` (the helpers every kernel may use),
/// embedded so that a binary (or a wasm module) is self-contained.
macro_rules! shader {
    ($stem:literal) => {
        (
            $stem,
            concat!(
                include_str!("../../../../shaders/common.wgsl"),
                include_str!(concat!("../../../../shaders/", $stem, ".wgsl"))
            ),
        )
    };
}

const SHADERS: &[(&str, &str)] = &[
    shader!("matmul"),
    shader!("elementwise"),
    shader!("norm"),
    shader!("attention"),
    shader!("gather"),
    shader!("pool"),
    shader!("softlogic"),
    shader!("conv"),
    shader!("rope"),
    shader!("quant"),
    shader!("sample"),
];

/// WebGPU's limit on workgroups per grid dimension.
pub(super) const MAX_GROUPS: usize = 65535;

/// The largest head dim the attention kernel holds in registers (`MAX_D4` × 4 in
/// attention.wgsl).
pub const MAX_HEAD_DIM: usize = 128;
/// Output tile side of matmul.wgsl (`TILE`).
const MATMUL_TILE: usize = 64;
/// Query tokens per attention workgroup (`BQ` in attention.wgsl).
const ATTENTION_BLOCK: usize = 64;
/// quant.wgsl's matvec_stored: outputs per workgroup (`MV_COLS`) and rows of a per workgroup
/// (`MV_ROWS`); products with more rows run matmul_stored, whose output tile is `STORED_TILE_M`
/// rows (`TM`) by `STORED_TILE_N` weight rows (`TN`).
const MATVEC_COLS: usize = 8;
const MATVEC_ROWS: usize = 8;
const STORED_TILE_M: usize = 32;
const STORED_TILE_N: usize = 64;

/// The pipeline a dispatch runs: an entry point of a shader file, for a weight dtype when it
/// is a stored-weight kernel (the value of quant.wgsl's override constant `WEIGHT`), for an
/// f16 KV cache when attention or kv_write has one (attention.wgsl's `KV_CACHE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct KernelRef {
    pub stem: &'static str,
    pub entry: &'static str,
    pub weight: Option<DType>,
    pub kv_cache: Option<DType>,
}

impl KernelRef {
    /// The op's own kernel (op_table!); only views have none.
    fn of(kind: OpKind) -> Result<KernelRef, String> {
        let (stem, entry) =
            kind.kernel().ok_or_else(|| format!("{} is a view and is never dispatched", kind.name()))?;
        Ok(KernelRef { stem, entry, weight: None, kv_cache: None })
    }

    fn stored(entry: &'static str, weight: DType) -> KernelRef {
        KernelRef { stem: ops::STORED_WEIGHT_STEM, entry, weight: Some(weight), kv_cache: None }
    }

    /// The override constants the pipeline is built with.
    pub fn constants(&self) -> Vec<(&'static str, f64)> {
        let weight = self.weight.map(|w| ("WEIGHT", f64::from(w.code())));
        let kv_cache = self.kv_cache.map(|d| ("KV_CACHE", f64::from(d.code())));
        weight.into_iter().chain(kv_cache).collect()
    }
}

pub(super) fn source(stem: &str) -> Option<&'static str> {
    SHADERS.iter().find(|(s, _)| *s == stem).map(|(_, src)| *src)
}

/// Whether the embedded WGSL defines the op's kernel entry point (a view needs none). This
/// is what the wgpu backend reports as supported, so a missing kernel shows up in the
/// coverage test and in docs/ops.md without a device.
pub fn has_kernel(kind: OpKind) -> bool {
    match kind.kernel() {
        None => true,
        Some((stem, entry)) => source(stem).is_some_and(|src| defines_entry_point(src, entry)),
    }
}

/// Whether the embedded WGSL defines every stored-weight kernel of the op (`quant.wgsl`,
/// [`ops::STORED_WEIGHT_KERNELS`]): whether the op runs on a weight stored as f16, bf16 or
/// GGUF blocks.
pub fn has_stored_kernels(kind: OpKind) -> bool {
    ops::STORED_WEIGHT_KERNELS.iter().find(|(k, _)| *k == kind).is_some_and(|(_, entries)| {
        source(ops::STORED_WEIGHT_STEM).is_some_and(|src| entries.iter().all(|e| defines_entry_point(src, e)))
    })
}

/// A `@compute` function named `entry` (attributes may span lines).
fn defines_entry_point(src: &str, entry: &str) -> bool {
    let decl = format!("fn {entry}(");
    src.match_indices(&decl).any(|(at, _)| {
        let before = &src[..at];
        let attrs_start = before.rfind(['}', ';']).map_or(0, |i| i + 1);
        before[attrs_start..].contains("@compute")
    })
}

/// What a kernel binds: read-only inputs, read-write outputs, and the params' byte size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Signature {
    pub inputs: usize,
    pub outputs: usize,
    pub params_size: u64,
}

pub(super) fn signature(kind: OpKind) -> Signature {
    use std::mem::size_of;
    let (inputs, outputs, params) = match kind {
        // a, b, bias (bound to a when absent).
        OpKind::MatMul => (3, 1, size_of::<ops::matmul::MatMulParams>()),
        // x, W, bias (bound to x when absent), t = x · Aᵀ, B.
        OpKind::LoraMatMul => (5, 1, size_of::<ops::matmul::MatMulParams>()),
        OpKind::Unary | OpKind::Cast => (1, 1, size_of::<ops::elementwise::UnaryParams>()),
        OpKind::Binary => (2, 1, size_of::<ops::elementwise::BinaryParams>()),
        OpKind::LayerNorm => (3, 1, size_of::<ops::norm::NormParams>()),
        OpKind::RmsNorm => (2, 1, size_of::<ops::norm::NormParams>()),
        OpKind::Softmax | OpKind::L2Normalize => (1, 1, size_of::<ops::norm::NormParams>()),
        OpKind::Attention => (4, 1, size_of::<ops::attention::AttentionParams>()),
        // new rows, table; the cache (written in place).
        OpKind::KvWrite => (2, 1, size_of::<ops::attention::KvWriteParams>()),
        OpKind::Gather => (2, 1, size_of::<ops::gather::GatherParams>()),
        OpKind::Pool => (2, 1, size_of::<ops::pool::PoolParams>()),
        OpKind::Rope => (3, 1, size_of::<ops::rope::RopeParams>()),
        // a, b (bound to a for NOT).
        OpKind::SoftLogic => (2, 1, size_of::<ops::softlogic::SoftLogicParams>()),
        // qe, mask, kind, weight, essential; score, contribution.
        OpKind::Aggregate => (5, 2, size_of::<ops::softlogic::AggregateParams>()),
        // x, w, bias, residual (each bound to x when absent).
        OpKind::Conv2d => (4, 1, size_of::<ops::conv::Conv2dParams>()),
        OpKind::Clamp => (1, 1, size_of::<ops::elementwise::ClampParams>()),
        OpKind::GlobalAvgPool => (1, 1, size_of::<ops::conv::GlobalPoolParams>()),
        // logits, params, seen, keys.
        OpKind::Sample => (4, 1, size_of::<ops::sample::SampleParams>()),
        OpKind::Reshape => (0, 0, 0),
    };
    Signature { inputs, outputs, params_size: params as u64 }
}

/// One dispatch: its kernel, its params and its grid.
#[derive(Debug, PartialEq)]
pub(super) struct Launch {
    pub kernel: KernelRef,
    pub params: Vec<u8>,
    pub groups: [u32; 3],
}

/// `n` independent workgroups as a 2-D grid of rows of at most 65535; kernels recover the
/// flat index as `wid.y * num_workgroups.x + wid.x`.
fn grid(n: usize) -> Result<[u32; 3], String> {
    let x = n.clamp(1, MAX_GROUPS);
    let y = n.div_ceil(x);
    if y > MAX_GROUPS {
        return Err(format!("{n} workgroups exceed the {MAX_GROUPS}² grid"));
    }
    Ok([x as u32, y as u32, 1])
}

/// Workgroups of 256 invocations, one invocation per item.
fn grid_256(items: usize) -> Result<[u32; 3], String> {
    grid(items.div_ceil(256))
}

fn dim(n: usize, what: &str) -> Result<u32, String> {
    if n > MAX_GROUPS {
        return Err(format!("{what} needs {n} workgroups along one axis, more than {MAX_GROUPS}"));
    }
    Ok(n as u32)
}

fn count(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Params and grid of `op` for these inputs and output (dtypes and shapes). Kernels index
/// with u32, so every tensor must have fewer than 2³² elements.
pub(super) fn launch(op: &Op, inputs: &[(DType, &[usize])], output: (DType, &[usize])) -> Result<Launch, String> {
    let (out_dtype, out) = output;
    for shape in inputs.iter().map(|(_, s)| *s).chain([out]) {
        if count(shape) > u32::MAX as usize {
            return Err(format!("a tensor of shape {shape:?} has 2³² elements or more"));
        }
    }
    let shape = |i: usize| inputs[i].1;
    let n = count(out);
    let dtypes: Vec<DType> = inputs.iter().map(|(d, _)| *d).collect();
    if let Some(weight) = op.stored_weight(&dtypes) {
        return stored_launch(op, weight, inputs);
    }
    let mut kernel = KernelRef::of(op.kind())?;
    // An f16 KV cache: what attention reads as k and v, what kv_write writes.
    let cache_dtype = match op {
        Op::Attention(_) => inputs.get(1).map(|(d, _)| *d),
        Op::KvWrite(_) => Some(out_dtype),
        _ => None,
    };
    if cache_dtype == Some(DType::F16) {
        kernel.kv_cache = Some(DType::F16);
    }
    Ok(match op {
        Op::MatMul(m) => {
            let p = m.params(shape(0), shape(1), inputs.len() > 2);
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: matmul_groups(&p)? }
        }
        Op::LoraMatMul(l) => {
            let (_, p) = l.params(shape(0), shape(1), shape(2), inputs.len() > 4);
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: matmul_groups(&p)? }
        }
        Op::Unary(kind) => {
            let p = ops::elementwise::UnaryParams { len: n as u32, op: kind.code(), to: 0, _pad: 0 };
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(n)? }
        }
        Op::Binary(kind) => {
            let p = ops::elementwise::binary_params(*kind, shape(0), shape(1), out);
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(n)? }
        }
        Op::Cast(to) => {
            let from = inputs[0].0;
            let p = ops::elementwise::UnaryParams { len: n as u32, op: from.code(), to: to.code(), _pad: 0 };
            // One invocation per output word: f16 packs two elements in each.
            let words = if *to == DType::F16 { n.div_ceil(2) } else { n };
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(words)? }
        }
        Op::LayerNorm { eps } | Op::RmsNorm { eps } | Op::L2Normalize { eps } => {
            let p = ops::norm::NormParams::new(shape(0), *eps);
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid(p.rows as usize)? }
        }
        Op::Softmax => {
            let p = ops::norm::NormParams::new(shape(0), 0.0);
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid(p.rows as usize)? }
        }
        Op::Attention(a) => {
            let p = a.params(shape(0), shape(1), shape(3));
            if p.head_dim as usize > MAX_HEAD_DIM {
                return Err(format!("head dim {} is larger than {MAX_HEAD_DIM}", p.head_dim));
            }
            let groups = [
                dim((p.tokens as usize).div_ceil(ATTENTION_BLOCK), "attention tokens")?,
                dim(p.num_heads as usize, "heads")?,
                1,
            ];
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups }
        }
        Op::KvWrite(_) => {
            let p = ops::attention::KvWrite::params(shape(0), out, shape(1));
            // One invocation per element of the new rows.
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(count(shape(0)))? }
        }
        Op::Gather => {
            let p = ops::gather::GatherParams::new(shape(0), shape(1));
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(n)? }
        }
        Op::Rope(r) => {
            let p = r.params(shape(0));
            let per_head = (p.rot_dims / 2 + p.head_dim - p.rot_dims) as usize;
            let items = p.tokens as usize * p.heads as usize * per_head;
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(items)? }
        }
        Op::Pool(kind) => {
            let p = ops::pool::PoolParams::new(*kind, shape(0), shape(1));
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(n)? }
        }
        Op::SoftLogic { connective, logic } => {
            let p = ops::softlogic::SoftLogicParams::new(n, *logic, *connective);
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(n)? }
        }
        Op::Aggregate { logic, optional_weight } => {
            let (items, entities, kinds) = (shape(0)[0], shape(0)[1], shape(3)[0]);
            let p = ops::softlogic::AggregateParams::new(items, entities, kinds, *logic, *optional_weight);
            // One invocation per item: entities per item are few.
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(items)? }
        }
        Op::Conv2d(c) => {
            let p = c.params(shape(0), shape(1), inputs.len());
            // One invocation per output element.
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(n)? }
        }
        Op::Clamp { min, max } => {
            let p = ops::elementwise::ClampParams { len: n as u32, _pad: 0, min: *min, max: *max };
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(n)? }
        }
        Op::GlobalAvgPool => {
            let p = ops::conv::GlobalPoolParams::new(shape(0));
            // One invocation per (image, channel) plane.
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid_256(p.rows as usize)? }
        }
        Op::Sample => {
            let p = ops::sample::SampleParams::new(shape(0), shape(2));
            // One workgroup per sequence row.
            Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: grid(p.seqs as usize)? }
        }
        Op::Reshape(_) => return Err("reshape is a view and is never dispatched".into()),
    })
}

fn matmul_groups(p: &ops::matmul::MatMulParams) -> Result<[u32; 3], String> {
    Ok([
        dim((p.n as usize).div_ceil(MATMUL_TILE), "matmul N")?,
        dim((p.m as usize).div_ceil(MATMUL_TILE), "matmul M")?,
        dim(p.batch as usize, "matmul batch")?,
    ])
}

/// The launch of a stored-weight kernel (quant.wgsl) for `op`, whose weight is `weight`.
fn stored_launch(op: &Op, weight: DType, inputs: &[(DType, &[usize])]) -> Result<Launch, String> {
    match op {
        Op::MatMul(m) => {
            let p = m.stored_params(inputs[0].1, inputs[1].1, inputs.len() > 2);
            let (rows, cols) = (p.m as usize, p.n as usize);
            let (entry, groups) = if rows <= MATVEC_ROWS {
                let [x, y, _] = grid(cols.div_ceil(MATVEC_COLS))?;
                ("matvec_stored", [x, y, dim(rows.div_ceil(MATVEC_ROWS), "matvec rows")?])
            } else {
                let groups =
                    [dim(cols.div_ceil(STORED_TILE_N), "matmul N")?, dim(rows.div_ceil(STORED_TILE_M), "matmul M")?, 1];
                ("matmul_stored", groups)
            };
            Ok(Launch { kernel: KernelRef::stored(entry, weight), params: bytemuck::bytes_of(&p).to_vec(), groups })
        }
        Op::Gather => {
            let p = ops::gather::GatherParams::new(inputs[0].1, inputs[1].1);
            // One invocation per 8 values of an output row.
            let units = p.num_ids as usize * (p.dim as usize).div_ceil(8);
            let groups = grid_256(units)?;
            Ok(Launch {
                kernel: KernelRef::stored("gather_stored", weight),
                params: bytemuck::bytes_of(&p).to_vec(),
                groups,
            })
        }
        _ => Err(format!("{} has no stored-weight kernel", op.kind().name())),
    }
}

/// The first dispatch of `lora_matmul`: `t = x · Aᵀ` by the plain matmul kernel, into a
/// scratch of `[rows, r]` f32 (its element count is the second value).
pub(super) fn lora_down(l: &ops::LoraMatMul, inputs: &[(DType, &[usize])]) -> Result<(Launch, usize), String> {
    let (p, _) = l.params(inputs[0].1, inputs[1].1, inputs[2].1, inputs.len() > 4);
    let kernel = KernelRef::of(OpKind::MatMul)?;
    Ok((
        Launch { kernel, params: bytemuck::bytes_of(&p).to_vec(), groups: matmul_groups(&p)? },
        p.m as usize * p.n as usize,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Activation, Logic, LoraMatMul, MatMul, UnaryKind};

    #[test]
    fn every_shader_defines_its_entry_points() {
        for &kind in OpKind::ALL {
            assert!(has_kernel(kind), "{} has no WGSL entry point", kind.name());
        }
        for &(kind, _) in ops::STORED_WEIGHT_KERNELS {
            assert!(has_stored_kernels(kind), "{} lacks a stored-weight kernel in quant.wgsl", kind.name());
        }
        assert!(!defines_entry_point("fn erf(x: f32) -> f32 {}", "erf"));
        assert!(defines_entry_point("}\n@compute @workgroup_size(8)\nfn go(\n", "go"));
    }

    /// The value of `const NAME: u32 = <n>u;` in a shader.
    fn wgsl_const(stem: &str, name: &str) -> usize {
        let src = source(stem).unwrap();
        let decl = format!("const {name}: u32 = ");
        let at = src.find(&decl).unwrap_or_else(|| panic!("{stem}.wgsl declares no {name}")) + decl.len();
        src[at..].split('u').next().unwrap().parse().unwrap()
    }

    #[test]
    fn host_constants_match_the_shaders() {
        assert_eq!(wgsl_const("matmul", "TILE"), MATMUL_TILE);
        assert_eq!(wgsl_const("attention", "BQ"), ATTENTION_BLOCK);
        assert_eq!(wgsl_const("attention", "MAX_D4") * 4, MAX_HEAD_DIM);
        assert_eq!(wgsl_const("attention", "WG_WRITE"), 256, "grid_256 assumes 256 invocations in kv_write");
        assert_eq!(wgsl_const("quant", "MV_COLS"), MATVEC_COLS);
        assert_eq!(wgsl_const("quant", "MV_ROWS"), MATVEC_ROWS);
        assert_eq!(wgsl_const("quant", "TM"), STORED_TILE_M);
        assert_eq!(wgsl_const("quant", "TN"), STORED_TILE_N);
        for stem in ["elementwise", "gather", "pool", "softlogic", "conv", "rope", "quant", "sample"] {
            assert_eq!(wgsl_const(stem, "WG"), 256, "grid_256 assumes 256 invocations in {stem}.wgsl");
        }
    }

    #[test]
    fn large_grids_fold_into_two_dimensions() {
        assert_eq!(grid(1).unwrap(), [1, 1, 1]);
        assert_eq!(grid(65535).unwrap(), [65535, 1, 1]);
        assert_eq!(grid(65536).unwrap(), [65535, 2, 1]);
        assert_eq!(grid(0).unwrap(), [1, 0, 1]);
        assert!(grid(65535 * 65535 + 1).is_err());
    }

    #[test]
    fn launches_match_the_kernels_tiling() {
        let mm = Op::MatMul(MatMul { trans_b: true, activation: Activation::Gelu });
        let l = launch(&mm, &[(DType::F32, &[2, 129, 384]), (DType::F32, &[1536, 384])], (DType::F32, &[2, 129, 1536]))
            .unwrap();
        assert_eq!(l.groups, [24, 3, 2]);
        assert_eq!(l.params.len() as u64, signature(OpKind::MatMul).params_size);
        let u = launch(&Op::Unary(UnaryKind::Relu), &[(DType::F32, &[257])], (DType::F32, &[257])).unwrap();
        assert_eq!(u.groups, [2, 1, 1]);
        let c = launch(&Op::Cast(DType::F16), &[(DType::F32, &[513])], (DType::F16, &[513])).unwrap();
        assert_eq!(c.groups, [2, 1, 1], "513 halves are 257 words");
        // An f16 KV cache picks attention.wgsl's f16 build, for attention and kv_write alike.
        let attention = Op::Attention(ops::Attention {
            num_heads: 2,
            num_kv_heads: 1,
            scale: 0.5,
            causal: true,
            bf16_products: false,
        });
        let (q, kv, table): (&[usize], &[usize], &[usize]) = (&[3, 14], &[10, 7], &[1, 4]);
        for cache in [DType::F32, DType::F16] {
            let want = (cache == DType::F16).then_some(DType::F16);
            let ins = [(DType::F32, q), (cache, kv), (cache, kv), (DType::U32, table)];
            assert_eq!(launch(&attention, &ins, (DType::F32, q)).unwrap().kernel.kv_cache, want);
            let write = launch(&Op::KvWrite(ops::KvWrite), &[(DType::F32, &[3, 7]), (DType::U32, table)], (cache, kv));
            assert_eq!(write.unwrap().kernel.kv_cache, want);
        }
    }

    #[test]
    fn stored_weights_pick_the_quant_kernels() {
        let mm = Op::MatMul(MatMul { trans_b: true, activation: Activation::None });
        // Decoding: a row (batch dims fold into rows), 8 outputs per workgroup.
        let l = launch(&mm, &[(DType::F32, &[1, 1, 576]), (DType::Q8_0, &[49152, 576])], (DType::F32, &[1, 1, 49152]))
            .unwrap();
        assert_eq!(
            l.kernel,
            KernelRef { stem: "quant", entry: "matvec_stored", weight: Some(DType::Q8_0), kv_cache: None }
        );
        assert_eq!(l.groups, [6144, 1, 1]);
        // Past 65535 workgroups, x and y fold.
        let l = launch(&mm, &[(DType::F32, &[8, 256]), (DType::Q4_K, &[600_000, 256])], (DType::F32, &[8, 600_000]))
            .unwrap();
        assert_eq!((l.kernel.entry, l.groups), ("matvec_stored", [65535, 2, 1]));
        // Prefill: 32 x 64 tiles over all rows.
        let ins: [(DType, &[usize]); 3] = [(DType::F32, &[3, 11, 96]), (DType::F16, &[129, 96]), (DType::F32, &[129])];
        let l = launch(&mm, &ins, (DType::F32, &[3, 11, 129])).unwrap();
        assert_eq!((l.kernel.entry, l.kernel.weight, l.groups), ("matmul_stored", Some(DType::F16), [3, 2, 1]));
        let p: ops::matmul::MatMulParams = bytemuck::pod_read_unaligned(&l.params);
        assert_eq!((p.batch, p.m, p.n, p.k, p.has_bias), (1, 33, 129, 96, 1));
        // Gather: an invocation per 8 values of a row.
        let g =
            launch(&Op::Gather, &[(DType::Q6_K, &[100, 512]), (DType::U32, &[7])], (DType::F32, &[7, 512])).unwrap();
        assert_eq!((g.kernel.entry, g.kernel.weight, g.groups), ("gather_stored", Some(DType::Q6_K), [2, 1, 1]));
        assert_eq!(g.params.len() as u64, signature(OpKind::Gather).params_size);
        // f32 operands keep the op's own kernel.
        let f = launch(&Op::Gather, &[(DType::F32, &[100, 512]), (DType::U32, &[7])], (DType::F32, &[7, 512])).unwrap();
        assert_eq!(f.kernel, KernelRef { stem: "gather", entry: "gather", weight: None, kv_cache: None });
    }

    #[test]
    fn image_ops_launch_an_invocation_per_output() {
        use crate::ops::Conv2d;
        let dw = Op::Conv2d(Conv2d { stride: [2, 2], padding: [1, 1], groups: 32, clamp: None });
        let ins: [(DType, &[usize]); 2] = [(DType::F32, &[2, 32, 112, 112]), (DType::F32, &[32, 1, 3, 3])];
        let l = launch(&dw, &ins, (DType::F32, &[2, 32, 56, 56])).unwrap();
        assert_eq!((l.groups, l.params.len() as u64), ([784, 1, 1], signature(OpKind::Conv2d).params_size));
        let big = launch(&dw, &[(DType::F32, &[64, 32, 224, 224]), ins[1]], (DType::F32, &[64, 32, 112, 112])).unwrap();
        assert_eq!(big.groups, [65535, 2, 1], "more than 65535 workgroups fold into rows");
        let gap = launch(&Op::GlobalAvgPool, &[(DType::F32, &[3, 1280, 7, 7])], (DType::F32, &[3, 1280])).unwrap();
        assert_eq!((gap.groups, gap.params.len() as u64), ([15, 1, 1], signature(OpKind::GlobalAvgPool).params_size));
        let clip = launch(&Op::Clamp { min: 0.0, max: 6.0 }, &[(DType::F32, &[257])], (DType::F32, &[257])).unwrap();
        assert_eq!((clip.groups, clip.params.len() as u64), ([2, 1, 1], signature(OpKind::Clamp).params_size));
    }

    #[test]
    fn lora_runs_the_down_projection_then_the_fused_product() {
        let lora = LoraMatMul { scale: 0.5, activation: Activation::None };
        let ins: [(DType, &[usize]); 4] =
            [(DType::F32, &[3, 50, 96]), (DType::F32, &[130, 96]), (DType::F32, &[16, 96]), (DType::F32, &[130, 16])];
        let (down, t_len) = lora_down(&lora, &ins).unwrap();
        assert_eq!((down.groups, t_len), ([1, 3, 1], 150 * 16), "rows fold: W is shared");
        let main = launch(&Op::LoraMatMul(lora), &ins, (DType::F32, &[3, 50, 130])).unwrap();
        assert_eq!(main.groups, [3, 3, 1]);
        let sig = signature(OpKind::LoraMatMul);
        assert_eq!((sig.inputs, sig.outputs, sig.params_size), (5, 1, main.params.len() as u64));
        let agg = signature(OpKind::Aggregate);
        assert_eq!((agg.inputs, agg.outputs), (5, 2));
        let op = Op::Aggregate { logic: Logic::Goedel, optional_weight: 0.1 };
        let cells: &[usize] = &[300, 4];
        let l = launch(
            &op,
            &[(DType::F32, cells), (DType::U32, cells), (DType::U32, cells), (DType::F32, &[3]), (DType::U32, &[3])],
            (DType::F32, &[300]),
        )
        .unwrap();
        assert_eq!((l.groups, l.params.len() as u64), ([2, 1, 1], agg.params_size), "an invocation per item");
    }
}
