//! Launch planning: for one op and its operands, which kernel runs (file, element-type
//! variant, entry point), on which grid, with which params and buffers in which order.
//!
//! Pure Rust with no CUDA in it, so that the CUDA backend and the emulated conformance test
//! (tests/tests/cuda_emulated.rs, which runs the same kernel sources on the CPU) share it and
//! the emulator exercises exactly the launch configurations a GPU gets. The block sizes and
//! tile sizes below are the kernels' `#define`s; a unit test below checks that they agree
//! with the `.cu` files.

pub use crate::ops::KernelParams;
use crate::ops::attention::KvWrite;
use crate::ops::conv::GlobalPoolParams;
use crate::ops::elementwise::{ClampParams, UnaryParams, binary_params};
use crate::ops::gather::GatherParams;
use crate::ops::matmul::MatMulParams;
use crate::ops::norm::NormParams;
use crate::ops::pool::PoolParams;
use crate::ops::sample::SampleParams;
use crate::ops::softlogic::{AggregateParams, SoftLogicParams};
use crate::ops::{LoraMatMul, Op};
use crate::tensor::DType;

/// Kernel constants shared with the `.cu` files: (file stem, macro, value).
pub const KERNEL_CONSTANTS: &[(&str, &str, u32)] = &[
    ("elementwise", "ELEMENTWISE_THREADS", ELEMENTWISE_THREADS),
    ("norm", "NORM_THREADS", NORM_THREADS),
    ("norm", "NORM_WARP_COLS", NORM_WARP_COLS),
    ("gather", "GATHER_THREADS", GATHER_THREADS),
    ("pool", "POOL_THREADS", POOL_THREADS),
    ("softlogic", "SOFTLOGIC_THREADS", SOFTLOGIC_THREADS),
    ("conv", "CONV_THREADS", CONV_THREADS),
    ("matmul", "MM_BM", MM_BM),
    ("matmul", "MM_BN", MM_BN),
    ("matmul", "MM_THREADS", MM_THREADS),
    ("matmul", "MMH_THREADS", MMH_THREADS),
    ("attention", "ATT_THREADS", ATT_THREADS),
    ("attention", "ATT_BQ", ATT_BQ),
    ("attention", "ATT_MAX_D", MAX_HEAD_DIM),
    ("attention", "KV_WRITE_THREADS", KV_WRITE_THREADS),
    ("rope", "ROPE_THREADS", ROPE_THREADS),
    ("quant", "QMV_COLS", QMV_COLS),
    ("quant", "QMV_ROWS", QMV_ROWS),
    ("quant", "QMM_TM", QMM_TM),
    ("quant", "QMM_TN", QMM_TN),
    ("quant", "QUANT_THREADS", QUANT_THREADS),
    ("sample", "SAMPLE_THREADS", SAMPLE_THREADS),
];

const ELEMENTWISE_THREADS: u32 = 256;
const NORM_THREADS: u32 = 256;
const NORM_WARP_COLS: u32 = 1024;
const GATHER_THREADS: u32 = 256;
const GATHER_ROWS_PER_BLOCK: u32 = GATHER_THREADS / 32;
const POOL_THREADS: u32 = 128;
const SOFTLOGIC_THREADS: u32 = 256;
const CONV_THREADS: u32 = 256;
const MM_BM: u32 = 128;
const MM_BN: u32 = 64;
const MM_THREADS: u32 = 256;
const MMH_THREADS: u32 = 128;
const ATT_THREADS: u32 = 128;
const ATT_BQ: u32 = 16;
const KV_WRITE_THREADS: u32 = 256;
const ROPE_THREADS: u32 = 256;
/// cuda/quant.cu: matvec_stored computes QMV_COLS outputs (a warp each) for up to QMV_ROWS
/// rows of a per block; products with more rows run matmul_stored, QMM_TM x QMM_TN tiles.
const QMV_COLS: u32 = 8;
const QMV_ROWS: u32 = 8;
const QMM_TM: u32 = 32;
const QMM_TN: u32 = 64;
const QUANT_THREADS: u32 = 256;
const SAMPLE_THREADS: u32 = 256;
/// The largest attention head dim the CUDA kernel takes (its shared-memory tiles are sized
/// for it); larger heads are refused with an error.
pub const MAX_HEAD_DIM: u32 = 128;

/// Grid-stride kernels need no more blocks than this to fill any current GPU.
const MAX_STRIDE_BLOCKS: u32 = 65_535;
/// CUDA's limit on grid.y and grid.z.
const MAX_GRID_YZ: u32 = 65_535;
/// Kernels index elements with 32-bit integers.
const MAX_ELEMENTS: usize = i32::MAX as usize;

/// The element type a kernel file is compiled for (matmul and attention: f32 and f16; quant:
/// one build per stored weight dtype; every other file has one f32 build). Chosen when NVRTC
/// compiles the file, so every variant keeps the WGSL twin's entry-point names and params
/// layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    F32,
    /// f16 storage, f32 arithmetic (`-DTANDEM_F16`).
    F16,
    /// Attention's f32 queries and output over an f16 KV cache, and `kv_write` into one
    /// (`-DTANDEM_F16_KV`).
    F16Cache,
    /// The stored-weight kernels (cuda/quant.cu) for weights of this dtype (f16, bf16 or GGUF
    /// blocks), f32 activations and arithmetic (`-DTANDEM_WEIGHT=<DType::code>`).
    Weight(DType),
}

/// Every weight dtype the stored-weight kernels take, as their builds.
pub const WEIGHT_VARIANTS: &[Variant] = &[
    Variant::Weight(DType::F16),
    Variant::Weight(DType::BF16),
    Variant::Weight(DType::Q8_0),
    Variant::Weight(DType::Q4_0),
    Variant::Weight(DType::Q4_1),
    Variant::Weight(DType::Q5_0),
    Variant::Weight(DType::Q4_K),
    Variant::Weight(DType::Q5_K),
    Variant::Weight(DType::Q6_K),
];

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::F32 => "f32",
            Variant::F16 => "f16",
            Variant::F16Cache => "f16kv",
            Variant::Weight(d) => d.name(),
        }
    }
    /// Preprocessor definitions that select the variant.
    pub fn defines(self) -> &'static [&'static str] {
        match self {
            Variant::F32 => &[],
            Variant::F16 => &["TANDEM_F16"],
            Variant::F16Cache => &["TANDEM_F16_KV"],
            Variant::Weight(d) => match d {
                DType::F16 => &["TANDEM_WEIGHT=1"],
                DType::BF16 => &["TANDEM_WEIGHT=3"],
                DType::Q8_0 => &["TANDEM_WEIGHT=4"],
                DType::Q4_0 => &["TANDEM_WEIGHT=5"],
                DType::Q4_1 => &["TANDEM_WEIGHT=6"],
                DType::Q5_0 => &["TANDEM_WEIGHT=7"],
                DType::Q4_K => &["TANDEM_WEIGHT=8"],
                DType::Q5_K => &["TANDEM_WEIGHT=9"],
                DType::Q6_K => &["TANDEM_WEIGHT=10"],
                // Not stored weights: no build selects them (plan never asks).
                DType::F32 | DType::U32 => &["TANDEM_WEIGHT=0"],
            },
        }
    }
}

/// A buffer argument of a kernel, after the params.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Input(usize),
    Output(usize),
    /// A scratch buffer of the op ([`OpLaunches::scratch`]), alive across its launches.
    Scratch(usize),
    /// A null pointer, for an optional operand that is absent (matmul without bias); the
    /// params say the kernel never reads it.
    Null,
}

/// A tensor operand as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
}

impl Operand<'_> {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn bytes(&self) -> usize {
        self.dtype.bytes_for(self.len()).expect("operand shapes are sized when the graph is planned")
    }
}

/// What to run for one op.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub stem: &'static str,
    pub entry: &'static str,
    pub variant: Variant,
    /// (x, y, z) blocks; a zero anywhere means the output is empty and no kernel runs.
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub params: KernelParams,
    pub args: Vec<Binding>,
    /// Zero the outputs before the kernel (attention: rows in no segment are never written).
    pub zero_outputs: bool,
}

impl Launch {
    pub fn runs_kernel(&self) -> bool {
        self.grid.iter().all(|&g| g > 0)
    }
}

/// Everything one op runs, in order, and the scratch buffers its launches share.
#[derive(Debug, Clone, PartialEq)]
pub struct OpLaunches {
    /// Bytes of each scratch buffer, addressed by [`Binding::Scratch`].
    pub scratch: Vec<usize>,
    pub launches: Vec<Launch>,
}

/// Plans every launch of `op`: one for most ops, two for `lora_matmul`.
pub fn plan_op(op: &Op, inputs: &[Operand<'_>], outputs: &[Operand<'_>]) -> Result<OpLaunches, String> {
    match op {
        Op::LoraMatMul(l) => plan_lora(l, inputs, outputs),
        _ => Ok(OpLaunches { scratch: Vec::new(), launches: vec![plan(op, inputs, outputs)?] }),
    }
}

/// `t = x · Aᵀ` into a scratch by the plain matmul kernel, then `lora_matmul`, whose K loop
/// goes on over scale·t and B after x and W.
fn plan_lora(l: &LoraMatMul, inputs: &[Operand<'_>], outputs: &[Operand<'_>]) -> Result<OpLaunches, String> {
    let [x, w, lora_a, lora_b, rest @ ..] = inputs else {
        return Err("lora_matmul takes x, w, lora_a, lora_b and an optional bias".into());
    };
    let Some(out) = outputs.first() else { return Err("lora_matmul writes one output".into()) };
    if !dtypes_are(inputs, DType::F32) || out.dtype != DType::F32 {
        return Err("lora_matmul takes f32 operands on CUDA".into());
    }
    if x.shape.len() < 2 || w.shape.len() != 2 || lora_a.shape.len() != 2 || lora_b.shape.len() != 2 {
        return Err("lora_matmul takes x [..., K], w [N, K], lora_a [r, K] and lora_b [N, r]".into());
    }
    if let Some(big) = inputs.iter().chain(outputs).find(|o| o.len() > MAX_ELEMENTS) {
        return Err(format!("a tensor of shape {:?} is too large for the CUDA kernels", big.shape));
    }
    let has_bias = !rest.is_empty();
    let (down, main) = l.params(x.shape, w.shape, lora_a.shape, has_bias);
    let rows = blocks(main.m as usize, MM_BM);
    if rows > MAX_GRID_YZ {
        return Err(format!("lora_matmul with {} rows is too tall for one CUDA grid", main.m));
    }
    let grid = |n: u32| if out.is_empty() { [0, 0, 0] } else { [blocks(n as usize, MM_BN), rows, 1] };
    let launch = |entry, p: MatMulParams, args| Launch {
        stem: "matmul",
        entry,
        variant: Variant::F32,
        grid: grid(p.n),
        block: [MM_THREADS, 1, 1],
        params: KernelParams::MatMul(p),
        args,
        zero_outputs: false,
    };
    let bias = if has_bias { Binding::Input(4) } else { Binding::Null };
    Ok(OpLaunches {
        scratch: vec![DType::F32.bytes_for_shape(&[down.m as usize, down.n as usize]).map_err(|e| e.to_string())?],
        launches: vec![
            launch("matmul", down, vec![Binding::Input(0), Binding::Input(2), Binding::Null, Binding::Scratch(0)]),
            launch(
                "lora_matmul",
                main,
                vec![
                    Binding::Input(0),
                    Binding::Input(1),
                    bias,
                    Binding::Scratch(0),
                    Binding::Input(3),
                    Binding::Output(0),
                ],
            ),
        ],
    })
}

/// The launch of a stored-weight kernel (cuda/quant.cu, the build for `weight`): matmul by a
/// weight b `[N, K]` (a's leading dims folded into rows) or gather from a table `[V, D]`.
fn plan_stored(op: &Op, weight: DType, inputs: &[Operand<'_>], outputs: &[Operand<'_>]) -> Result<Launch, String> {
    let Some(out) = outputs.first() else { return Err(format!("{} writes one output", op.kind().name())) };
    if let Some(big) = inputs.iter().chain(outputs).find(|o| o.len() > MAX_ELEMENTS) {
        return Err(format!(
            "a tensor of shape {:?} is too large for the CUDA kernels (32-bit indexing: at most {MAX_ELEMENTS} elements)",
            big.shape
        ));
    }
    let mut launch = Launch {
        stem: crate::ops::STORED_WEIGHT_STEM,
        entry: "",
        variant: Variant::Weight(weight),
        grid: [1, 1, 1],
        block: [QUANT_THREADS, 1, 1],
        params: KernelParams::Unary(UnaryParams { len: 0, op: 0, to: 0, _pad: 0 }),
        args: Vec::new(),
        zero_outputs: false,
    };
    match op {
        Op::MatMul(m) => {
            let [a, b, rest @ ..] = inputs else { return Err("matmul takes a and b".into()) };
            if a.shape.len() < 2 || b.shape.len() != 2 || out.dtype != DType::F32 {
                return Err(format!("matmul by a {weight} weight takes f32 a [..., K] and b [N, K]"));
            }
            let has_bias = !rest.is_empty();
            let p = m.stored_params(a.shape, b.shape, has_bias);
            let (rows, cols) = (p.m as usize, p.n as usize);
            if rows <= QMV_ROWS as usize {
                launch.entry = "matvec_stored";
                launch.grid = [blocks(cols, QMV_COLS), blocks(rows, QMV_ROWS), 1];
            } else {
                let tiles = blocks(rows, QMM_TM);
                if tiles > MAX_GRID_YZ {
                    return Err(format!("matmul with {rows} rows is too tall for one CUDA grid"));
                }
                launch.entry = "matmul_stored";
                launch.grid = [blocks(cols, QMM_TN), tiles, 1];
            }
            launch.params = KernelParams::MatMul(p);
            let bias = if has_bias { Binding::Input(2) } else { Binding::Null };
            launch.args = vec![Binding::Input(0), Binding::Input(1), bias, Binding::Output(0)];
        }
        Op::Gather => {
            let [table, ids] = inputs else { return Err("gather takes a table and ids".into()) };
            if table.shape.len() != 2 || ids.dtype != DType::U32 || out.dtype != DType::F32 {
                return Err(format!("gather from a {weight} table takes a table [vocab, dim] and u32 ids"));
            }
            let p = GatherParams::new(table.shape, ids.shape);
            // A thread per 8 values of an output row, grid-stride.
            let units = p.num_ids as usize * (p.dim as usize).div_ceil(8);
            launch.entry = "gather_stored";
            launch.grid = [blocks(units, QUANT_THREADS).min(MAX_STRIDE_BLOCKS), 1, 1];
            launch.params = KernelParams::Gather(p);
            launch.args = vec![Binding::Input(0), Binding::Input(1), Binding::Output(0)];
        }
        _ => return Err(format!("{} has no stored-weight kernel", op.kind().name())),
    }
    if out.is_empty() {
        launch.grid = [0, 0, 0];
    }
    Ok(launch)
}

fn blocks(items: usize, per_block: u32) -> u32 {
    u32::try_from(items.div_ceil(per_block as usize)).unwrap_or(u32::MAX)
}

fn dtypes_are(ops: &[Operand<'_>], want: DType) -> bool {
    ops.iter().all(|o| o.dtype == want)
}

/// Plans the single launch of `op` on `inputs` -> `outputs` (shapes already checked by the
/// executor's shape inference); ops of several launches go through [`plan_op`]. The error
/// says what the CUDA kernels cannot do.
pub fn plan(op: &Op, inputs: &[Operand<'_>], outputs: &[Operand<'_>]) -> Result<Launch, String> {
    let dtypes: Vec<DType> = inputs.iter().map(|o| o.dtype).collect();
    if let Some(weight) = op.stored_weight(&dtypes) {
        return plan_stored(op, weight, inputs, outputs);
    }
    let kind = op.kind();
    let (stem, entry) = kind.kernel().ok_or_else(|| format!("{} is a view and is never dispatched", kind.name()))?;
    let (Some(out), Some(first)) = (outputs.first(), inputs.first()) else {
        return Err(format!("{} needs at least one input and one output", kind.name()));
    };
    if let Some(big) = inputs.iter().chain(outputs).find(|o| o.len() > MAX_ELEMENTS) {
        return Err(format!(
            "a tensor of shape {:?} is too large for the CUDA kernels (32-bit indexing: at most {MAX_ELEMENTS} elements)",
            big.shape
        ));
    }
    let all_f32 = |what: &str| -> Result<(), String> {
        if dtypes_are(inputs, DType::F32) && dtypes_are(outputs, DType::F32) {
            Ok(())
        } else {
            Err(format!("{what} takes f32 operands on CUDA"))
        }
    };
    let mut launch = Launch {
        stem,
        entry,
        variant: Variant::F32,
        grid: [1, 1, 1],
        block: [ELEMENTWISE_THREADS, 1, 1],
        params: KernelParams::Unary(UnaryParams { len: 0, op: 0, to: 0, _pad: 0 }),
        args: vec![Binding::Input(0), Binding::Output(0)],
        zero_outputs: false,
    };
    let stride_grid = |len: usize| [blocks(len.div_ceil(4), ELEMENTWISE_THREADS).min(MAX_STRIDE_BLOCKS), 1, 1];
    match op {
        Op::MatMul(m) => {
            let has_bias = inputs.len() > 2;
            let operands: Vec<Operand<'_>> = inputs.iter().chain(outputs).copied().collect();
            launch.variant = if dtypes_are(&operands, DType::F32) {
                Variant::F32
            } else if dtypes_are(&operands, DType::F16) {
                Variant::F16
            } else {
                return Err("matmul takes all-f32 or all-f16 operands on CUDA".into());
            };
            let (Some(a), Some(b)) = (inputs.first(), inputs.get(1)) else {
                return Err("matmul takes a and b".into());
            };
            if a.shape.len() < 2 || b.shape.len() < 2 {
                return Err("matmul operands must have rank 2 or more".into());
            }
            let p = m.params(a.shape, b.shape, has_bias);
            let rows = blocks(p.m as usize, MM_BM);
            if rows > MAX_GRID_YZ {
                return Err(format!("matmul with {} rows is too tall for one CUDA grid", p.m));
            }
            launch.grid = [blocks(p.n as usize, MM_BN), rows, p.batch.min(MAX_GRID_YZ)];
            launch.block = [if launch.variant == Variant::F16 { MMH_THREADS } else { MM_THREADS }, 1, 1];
            launch.params = KernelParams::MatMul(p);
            let bias = if has_bias { Binding::Input(2) } else { Binding::Null };
            launch.args = vec![Binding::Input(0), Binding::Input(1), bias, Binding::Output(0)];
        }
        Op::Unary(kind) => {
            all_f32("unary")?;
            let len = out.len();
            launch.grid = stride_grid(len);
            launch.params = KernelParams::Unary(UnaryParams { len: len as u32, op: kind.code(), to: 0, _pad: 0 });
        }
        Op::Binary(kind) => {
            all_f32("binary")?;
            let (Some(a), Some(b)) = (inputs.first(), inputs.get(1)) else {
                return Err("binary takes two inputs".into());
            };
            if out.shape.len() > crate::ops::elementwise::MAX_RANK {
                return Err(format!("binary broadcasts over at most {} axes", crate::ops::elementwise::MAX_RANK));
            }
            launch.grid = stride_grid(out.len());
            launch.params = KernelParams::Binary(binary_params(*kind, a.shape, b.shape, out.shape));
            launch.args = vec![Binding::Input(0), Binding::Input(1), Binding::Output(0)];
        }
        Op::Cast(to) => {
            let from = first.dtype;
            let allowed =
                matches!((from, *to), (DType::F32, DType::F16) | (DType::F16, DType::F32) | (DType::U32, DType::F32))
                    || from == *to;
            if !allowed || out.dtype != *to {
                return Err(format!("cannot cast {from} to {to}"));
            }
            let len = out.len();
            launch.grid = stride_grid(len);
            launch.params =
                KernelParams::Unary(UnaryParams { len: len as u32, op: from.code(), to: to.code(), _pad: 0 });
        }
        Op::LayerNorm { eps } | Op::RmsNorm { eps } | Op::L2Normalize { eps } => {
            all_f32(kind.name())?;
            let p = NormParams::new(first.shape, *eps);
            launch.grid = [norm_blocks(&p), 1, 1];
            launch.block = [NORM_THREADS, 1, 1];
            launch.params = KernelParams::Norm(p);
            // The default args bind the first input and the output.
            launch.args = (0..inputs.len()).map(Binding::Input).chain([Binding::Output(0)]).collect();
        }
        Op::Softmax => {
            all_f32("softmax")?;
            let p = NormParams::new(first.shape, 0.0);
            launch.grid = [norm_blocks(&p), 1, 1];
            launch.block = [NORM_THREADS, 1, 1];
            launch.params = KernelParams::Norm(p);
        }
        Op::Attention(a) => {
            let (Some(q), Some(segments)) = (inputs.first(), inputs.get(3)) else {
                return Err("attention takes q, k, v and segments".into());
            };
            let floats: Vec<Operand<'_>> = inputs[..3].iter().chain(outputs).copied().collect();
            let f32_queries = [q].into_iter().chain(outputs).all(|o| o.dtype == DType::F32);
            launch.variant = if dtypes_are(&floats, DType::F32) {
                Variant::F32
            } else if dtypes_are(&floats, DType::F16) {
                Variant::F16
            } else if f32_queries && dtypes_are(&inputs[1..3], DType::F16) {
                Variant::F16Cache
            } else {
                return Err("attention takes all-f32 or all-f16 q, k, v, or f32 q over f16 k and v, on CUDA".into());
            };
            if segments.dtype != DType::U32
                || segments.shape.len() != 2
                || !matches!(segments.shape[1], 2 | 4)
                || q.shape.len() != 2
                || inputs[1].shape.len() != 2
            {
                return Err("attention takes q [tokens, width], k and v [kv_tokens, width] and a u32 table \
                            [seqs, 2] or [seqs, 4]"
                    .into());
            }
            let p = a.params(q.shape, inputs[1].shape, segments.shape);
            if p.head_dim > MAX_HEAD_DIM {
                return Err(format!(
                    "attention head dim {} is larger than the CUDA kernel's {MAX_HEAD_DIM}",
                    p.head_dim
                ));
            }
            if p.num_heads > MAX_GRID_YZ {
                return Err(format!("attention with {} heads is more than one CUDA grid holds", p.num_heads));
            }
            // Tiles of 16 query rows: non-overlapping segments have at most tokens/16 + seqs of
            // them; blocks stride on when segments overlap.
            let tiles = (p.tokens as usize).div_ceil(ATT_BQ as usize) + p.num_seqs as usize;
            let tiles = if p.tokens == 0 || p.num_seqs == 0 || p.head_dim == 0 { 0 } else { tiles };
            launch.grid = [u32::try_from(tiles).unwrap_or(u32::MAX).min(1 << 20), p.num_heads, 1];
            launch.block = [ATT_THREADS, 1, 1];
            launch.params = KernelParams::Attention(p);
            launch.args =
                vec![Binding::Input(0), Binding::Input(1), Binding::Input(2), Binding::Input(3), Binding::Output(0)];
            launch.zero_outputs = true;
        }
        Op::KvWrite(_) => {
            // The cache is the output (written in place); inputs are the new rows and table.
            let (Some(rows), Some(table)) = (inputs.first(), inputs.get(1)) else {
                return Err("kv_write takes new rows and a table, and writes the cache".into());
            };
            if rows.dtype != DType::F32
                || !matches!(out.dtype, DType::F32 | DType::F16)
                || table.dtype != DType::U32
                || table.shape.len() != 2
            {
                return Err("kv_write takes f32 rows, a u32 table [seqs, 4] and an f32 or f16 cache on CUDA".into());
            }
            if out.dtype == DType::F16 {
                launch.variant = Variant::F16Cache;
            }
            let p = KvWrite::params(rows.shape, out.shape, table.shape);
            launch.grid = [p.num_seqs.min(MAX_STRIDE_BLOCKS), 1, 1];
            launch.block = [KV_WRITE_THREADS, 1, 1];
            launch.params = KernelParams::KvWrite(p);
            launch.args = vec![Binding::Input(0), Binding::Input(1), Binding::Output(0)];
        }
        Op::Gather => {
            let (Some(table), Some(ids)) = (inputs.first(), inputs.get(1)) else {
                return Err("gather takes a table and ids".into());
            };
            if table.dtype != DType::F32 || ids.dtype != DType::U32 || out.dtype != DType::F32 || table.shape.len() != 2
            {
                return Err("gather takes an f32 table [vocab, dim] and u32 ids on CUDA".into());
            }
            let p = GatherParams::new(table.shape, ids.shape);
            let grid = if p.dim == 0 { 0 } else { blocks(p.num_ids as usize, GATHER_ROWS_PER_BLOCK) };
            launch.grid = [grid.min(MAX_STRIDE_BLOCKS), 1, 1];
            launch.block = [GATHER_THREADS, 1, 1];
            launch.params = KernelParams::Gather(p);
            launch.args = vec![Binding::Input(0), Binding::Input(1), Binding::Output(0)];
        }
        Op::Rope(r) => {
            let [x, positions, inv_freq] = inputs else {
                return Err("rope takes x, positions and inv_freq".into());
            };
            let floats = [x, inv_freq].into_iter().chain(outputs).all(|o| o.dtype == DType::F32);
            if !floats || positions.dtype != DType::U32 || x.shape.len() != 2 {
                return Err("rope takes f32 x [tokens, width], u32 positions and f32 inv_freq on CUDA".into());
            }
            let p = r.params(x.shape);
            let items = p.tokens as usize * p.heads as usize * (p.rot_dims / 2 + p.head_dim - p.rot_dims) as usize;
            launch.grid = [blocks(items, ROPE_THREADS).min(MAX_STRIDE_BLOCKS), 1, 1];
            launch.block = [ROPE_THREADS, 1, 1];
            launch.params = KernelParams::Rope(p);
            launch.args = vec![Binding::Input(0), Binding::Input(1), Binding::Input(2), Binding::Output(0)];
        }
        Op::Pool(kind) => {
            let (Some(x), Some(segments)) = (inputs.first(), inputs.get(1)) else {
                return Err("pool takes x and segments".into());
            };
            if x.dtype != DType::F32 || segments.dtype != DType::U32 || out.dtype != DType::F32 || x.shape.len() != 2 {
                return Err("pool takes f32 x [tokens, dim] and u32 segments on CUDA".into());
            }
            let p = PoolParams::new(*kind, x.shape, segments.shape);
            let cols = blocks(p.dim as usize, POOL_THREADS);
            if cols > MAX_GRID_YZ {
                return Err(format!("pool over {} columns is more than one CUDA grid holds", p.dim));
            }
            launch.grid = [p.num_seqs.min(MAX_GRID_YZ), cols, 1];
            launch.block = [POOL_THREADS, 1, 1];
            launch.params = KernelParams::Pool(p);
            launch.args = vec![Binding::Input(0), Binding::Input(1), Binding::Output(0)];
        }
        Op::LoraMatMul(_) => return Err("lora_matmul runs as two launches: plan it with plan_op".into()),
        Op::SoftLogic { connective, logic } => {
            all_f32("soft_logic")?;
            let len = out.len();
            launch.grid = [blocks(len, SOFTLOGIC_THREADS).min(MAX_STRIDE_BLOCKS), 1, 1];
            launch.block = [SOFTLOGIC_THREADS, 1, 1];
            launch.params = KernelParams::SoftLogic(SoftLogicParams::new(len, *logic, *connective));
            let b = if inputs.len() > 1 { Binding::Input(1) } else { Binding::Null };
            launch.args = vec![Binding::Input(0), b, Binding::Output(0)];
        }
        Op::Aggregate { logic, optional_weight } => {
            let [qe, mask, kind, weight, essential] = inputs else {
                return Err("aggregate takes qe, mask, kind, weight and essential".into());
            };
            let floats = [qe, weight].into_iter().chain(outputs).all(|o| o.dtype == DType::F32);
            let words = [mask, kind, essential].into_iter().all(|o| o.dtype == DType::U32);
            if !floats || !words || qe.shape.len() != 2 || weight.shape.len() != 1 || outputs.len() != 2 {
                return Err("aggregate takes f32 qe [items, entities], u32 mask and kind, f32 weight [kinds], u32 \
                            essential and writes f32 score and contribution on CUDA"
                    .into());
            }
            let p = AggregateParams::new(qe.shape[0], qe.shape[1], weight.shape[0], *logic, *optional_weight);
            launch.grid = [blocks(p.items as usize, SOFTLOGIC_THREADS).min(MAX_STRIDE_BLOCKS), 1, 1];
            launch.block = [SOFTLOGIC_THREADS, 1, 1];
            launch.params = KernelParams::Aggregate(p);
            launch.args = (0..5).map(Binding::Input).chain([Binding::Output(0), Binding::Output(1)]).collect();
        }
        Op::Conv2d(c) => {
            all_f32("conv2d")?;
            let (Some(x), Some(w)) = (inputs.first(), inputs.get(1)) else {
                return Err("conv2d takes x, w, an optional bias and an optional residual".into());
            };
            if x.shape.len() != 4 || w.shape.len() != 4 {
                return Err("conv2d takes x [N, C, H, W] and w [O, C/groups, KH, KW]".into());
            }
            let p = c.params(x.shape, w.shape, inputs.len());
            if p.groups == 0 || p.len() != out.len() {
                return Err(format!("conv2d params {p:?} do not give the output shape {:?}", out.shape));
            }
            launch.grid = [blocks(p.len(), CONV_THREADS).min(MAX_STRIDE_BLOCKS), 1, 1];
            launch.block = [CONV_THREADS, 1, 1];
            launch.params = KernelParams::Conv2d(p);
            let optional = |i: usize| if inputs.len() > i { Binding::Input(i) } else { Binding::Null };
            launch.args = vec![Binding::Input(0), Binding::Input(1), optional(2), optional(3), Binding::Output(0)];
        }
        Op::Clamp { min, max } => {
            all_f32("clamp")?;
            let len = out.len();
            launch.grid = stride_grid(len);
            launch.params = KernelParams::Clamp(ClampParams { len: len as u32, _pad: 0, min: *min, max: *max });
        }
        Op::GlobalAvgPool => {
            all_f32("global_avg_pool")?;
            if first.shape.len() != 4 {
                return Err("global_avg_pool takes x [N, C, H, W]".into());
            }
            let p = GlobalPoolParams::new(first.shape);
            launch.grid = [blocks(p.rows as usize, POOL_THREADS).min(MAX_STRIDE_BLOCKS), 1, 1];
            launch.block = [POOL_THREADS, 1, 1];
            launch.params = KernelParams::GlobalPool(p);
        }
        Op::Sample => {
            let [logits, params, seen, keys] = inputs else {
                return Err("sample takes logits, params, seen and keys".into());
            };
            let floats = logits.dtype == DType::F32 && params.dtype == DType::F32;
            let words = seen.dtype == DType::U32 && keys.dtype == DType::U32 && out.dtype == DType::U32;
            if !floats || !words || logits.shape.len() != 2 || seen.shape.len() != 2 {
                return Err("sample takes f32 logits [seqs, vocab] and params [seqs, 5], u32 seen [seqs, n] and keys \
                            [seqs, 2], and writes u32 ids on CUDA"
                    .into());
            }
            let p = SampleParams::new(logits.shape, seen.shape);
            // A block per sequence row (grid-stride over rows past the grid's limit).
            launch.grid = [p.seqs.min(MAX_STRIDE_BLOCKS), 1, 1];
            launch.block = [SAMPLE_THREADS, 1, 1];
            launch.params = KernelParams::Sample(p);
            launch.args = (0..4).map(Binding::Input).chain([Binding::Output(0)]).collect();
        }
        Op::Reshape(_) => return Err("reshape is a view and is never dispatched".into()),
    }
    if out.is_empty() {
        launch.grid = [0, 0, 0];
        launch.zero_outputs = false;
    }
    Ok(launch)
}

/// Blocks for a norm kernel: a warp per row up to NORM_WARP_COLS columns (8 rows a block),
/// else a block per row (cuda/norm.cu, norm_team).
fn norm_blocks(p: &NormParams) -> u32 {
    if p.cols == 0 {
        return 0;
    }
    let rows_per_block = if p.cols <= NORM_WARP_COLS { NORM_THREADS / 32 } else { 1 };
    blocks(p.rows as usize, rows_per_block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Activation, Attention, Connective, Logic, LoraMatMul, MatMul};

    fn operand(dtype: DType, shape: &[usize]) -> Operand<'_> {
        Operand { dtype, shape }
    }

    #[test]
    fn constants_agree_with_the_kernel_files() {
        for &(stem, name, value) in KERNEL_CONSTANTS {
            let source = crate::backend::cuda::kernels::file(stem).expect("kernel file").source;
            let defined: Vec<&str> = source
                .lines()
                .filter_map(|l| l.trim().strip_prefix("#define ")?.strip_prefix(name))
                .filter(|rest| rest.starts_with(char::is_whitespace))
                .filter_map(|rest| rest.split_whitespace().next())
                .collect();
            assert_eq!(defined, [value.to_string()], "cuda/{stem}.cu: #define {name} must be {value} (launch.rs)");
        }
    }

    #[test]
    fn matmul_picks_the_variant_from_the_operands() {
        let op = Op::MatMul(MatMul { trans_b: true, activation: Activation::Gelu });
        for (dtype, variant, threads) in
            [(DType::F32, Variant::F32, MM_THREADS), (DType::F16, Variant::F16, MMH_THREADS)]
        {
            let (a, b, c) = ([300, 384], [1536, 384], [300, 1536]);
            let l = plan(&op, &[operand(dtype, &a), operand(dtype, &b)], &[operand(dtype, &c)]).unwrap();
            assert_eq!(l.variant, variant);
            assert_eq!(l.grid, [24, 3, 1]);
            assert_eq!(l.block, [threads, 1, 1]);
            assert_eq!(l.args, vec![Binding::Input(0), Binding::Input(1), Binding::Null, Binding::Output(0)]);
        }
        let mixed =
            plan(&op, &[operand(DType::F16, &[2, 2]), operand(DType::F32, &[2, 2])], &[operand(DType::F32, &[2, 2])]);
        assert!(mixed.unwrap_err().contains("all-f32 or all-f16"));
    }

    #[test]
    fn stored_weights_run_the_quant_build_of_their_dtype() {
        let op = Op::MatMul(MatMul { trans_b: true, activation: Activation::None });
        // Decoding: a warp per output, 8 per block; batch dims fold into rows.
        let (a, b, y) = ([2, 1, 576], [49152, 576], [2, 1, 49152]);
        let ins = [operand(DType::F32, &a), operand(DType::Q4_1, &b)];
        let l = plan(&op, &ins, &[operand(DType::F32, &y)]).unwrap();
        assert_eq!((l.stem, l.entry, l.variant), ("quant", "matvec_stored", Variant::Weight(DType::Q4_1)));
        assert_eq!((l.grid, l.block), ([6144, 1, 1], [QUANT_THREADS, 1, 1]));
        assert_eq!(l.args, [Binding::Input(0), Binding::Input(1), Binding::Null, Binding::Output(0)]);
        let KernelParams::MatMul(p) = l.params else { panic!("matmul params") };
        assert_eq!((p.batch, p.m, p.n, p.k), (1, 2, 49152, 576));
        // Prefill: 32 x 64 tiles, with a bias.
        let (a, b, bias, y) = ([33, 512], [129, 512], [129], [33, 129]);
        let ins = [operand(DType::F32, &a), operand(DType::Q6_K, &b), operand(DType::F32, &bias)];
        let l = plan(&op, &ins, &[operand(DType::F32, &y)]).unwrap();
        assert_eq!((l.entry, l.variant, l.grid), ("matmul_stored", Variant::Weight(DType::Q6_K), [3, 2, 1]));
        assert_eq!(l.args[2], Binding::Input(2));
        // Gather: a thread per 8 values of a row.
        let (table, ids, out) = ([100, 896], [300], [300, 896]);
        let l =
            plan(&Op::Gather, &[operand(DType::Q8_0, &table), operand(DType::U32, &ids)], &[operand(DType::F32, &out)])
                .unwrap();
        assert_eq!((l.entry, l.variant, l.grid), ("gather_stored", Variant::Weight(DType::Q8_0), [132, 1, 1]));
        // Each build's define is its dtype's code.
        for v in WEIGHT_VARIANTS {
            let Variant::Weight(d) = *v else { panic!("{v:?}") };
            assert_eq!(v.defines(), [format!("TANDEM_WEIGHT={}", d.code())]);
            assert_eq!(v.name(), d.name());
        }
    }

    #[test]
    fn attention_zeroes_its_output_and_refuses_wide_heads() {
        let op =
            Op::Attention(Attention { num_heads: 2, num_kv_heads: 1, scale: 0.1, causal: false, bf16_products: false });
        let seg = [3, 2];
        let l = plan(
            &op,
            &[
                operand(DType::F32, &[40, 128]),
                operand(DType::F32, &[40, 64]),
                operand(DType::F32, &[40, 64]),
                operand(DType::U32, &seg),
            ],
            &[operand(DType::F32, &[40, 128])],
        )
        .unwrap();
        assert!(l.zero_outputs);
        assert_eq!(l.grid, [3 + 3, 2, 1]);
        let wide =
            Op::Attention(Attention { num_heads: 1, num_kv_heads: 1, scale: 0.1, causal: false, bf16_products: false });
        let q = [4, 256];
        let err = plan(
            &wide,
            &[operand(DType::F32, &q), operand(DType::F32, &q), operand(DType::F32, &q), operand(DType::U32, &seg)],
            &[operand(DType::F32, &q)],
        )
        .unwrap_err();
        assert!(err.contains("head dim 256"), "{err}");
    }

    #[test]
    fn lora_matmul_is_two_launches_through_a_scratch() {
        let op = Op::LoraMatMul(LoraMatMul { scale: 2.0, activation: Activation::Relu });
        let (x, w, a, b, y) = ([2, 150, 96], [70, 96], [8, 96], [70, 8], [2, 150, 70]);
        let ins = [operand(DType::F32, &x), operand(DType::F32, &w), operand(DType::F32, &a), operand(DType::F32, &b)];
        let planned = plan_op(&op, &ins, &[operand(DType::F32, &y)]).unwrap();
        assert_eq!(planned.scratch, [300 * 8 * 4], "t = x · Aᵀ, rows folded");
        let [down, main] = &planned.launches[..] else { panic!("two launches") };
        assert_eq!((down.entry, down.grid), ("matmul", [1, 3, 1]));
        assert_eq!(down.args, [Binding::Input(0), Binding::Input(2), Binding::Null, Binding::Scratch(0)]);
        assert_eq!((main.entry, main.grid), ("lora_matmul", [2, 3, 1]));
        let KernelParams::MatMul(p) = main.params else { panic!("matmul params") };
        assert_eq!((p.m, p.n, p.k, p.lora_rank, p.lora_scale, p.activation), (300, 70, 96, 8, 2.0, 2));
        assert!(plan(&op, &ins, &[operand(DType::F32, &y)]).unwrap_err().contains("plan_op"));
        let f16 = [operand(DType::F16, &x), ins[1], ins[2], ins[3]];
        assert!(plan_op(&op, &f16, &[operand(DType::F32, &y)]).unwrap_err().contains("f32"));
    }

    #[test]
    fn soft_logic_ops_launch_a_thread_per_element_or_item() {
        let not = Op::SoftLogic { connective: Connective::Not, logic: Logic::Goedel };
        let l = plan(&not, &[operand(DType::F32, &[7, 129])], &[operand(DType::F32, &[7, 129])]).unwrap();
        assert_eq!((l.grid, l.args[1]), ([4, 1, 1], Binding::Null));
        let agg = Op::Aggregate { logic: Logic::Product, optional_weight: 0.2 };
        let (cells, kinds) = ([300, 5], [4]);
        let ins = [
            operand(DType::F32, &cells),
            operand(DType::U32, &cells),
            operand(DType::U32, &cells),
            operand(DType::F32, &kinds),
            operand(DType::U32, &kinds),
        ];
        let l = plan(&agg, &ins, &[operand(DType::F32, &[300]), operand(DType::F32, &cells)]).unwrap();
        assert_eq!(l.grid, [2, 1, 1]);
        assert_eq!(l.args.len(), 7);
        let mut bad = ins;
        bad[1] = operand(DType::F32, &cells);
        assert!(plan(&agg, &bad, &[operand(DType::F32, &[300]), operand(DType::F32, &cells)]).is_err());
    }

    #[test]
    fn image_ops_launch_a_thread_per_output_or_plane() {
        use crate::ops::Conv2d;
        let dw = Op::Conv2d(Conv2d { stride: [1, 1], padding: [1, 1], groups: 7, clamp: None });
        let (x, w, y) = ([2, 7, 9, 9], [7, 1, 3, 3], [2, 7, 9, 9]);
        let l = plan(&dw, &[operand(DType::F32, &x), operand(DType::F32, &w)], &[operand(DType::F32, &y)]).unwrap();
        assert_eq!((l.entry, l.grid, l.args[2]), ("conv2d", [5, 1, 1], Binding::Null));
        let bias = [7];
        let ins = [operand(DType::F32, &x), operand(DType::F32, &w), operand(DType::F32, &bias)];
        let l = plan(&dw, &ins, &[operand(DType::F32, &y)]).unwrap();
        assert_eq!(
            l.args,
            [Binding::Input(0), Binding::Input(1), Binding::Input(2), Binding::Null, Binding::Output(0)]
        );
        let KernelParams::Conv2d(p) = l.params else { panic!("conv2d params") };
        assert_eq!((p.oh, p.ow, p.groups, p.has_bias, p.has_residual), (9, 9, 7, 1, 0));
        let with_residual = [ins[0], ins[1], ins[2], operand(DType::F32, &y)];
        let l = plan(&dw, &with_residual, &[operand(DType::F32, &y)]).unwrap();
        assert_eq!(l.args[3], Binding::Input(3));
        let KernelParams::Conv2d(p) = l.params else { panic!("conv2d params") };
        assert_eq!(p.has_residual, 1);
        let gap =
            plan(&Op::GlobalAvgPool, &[operand(DType::F32, &[3, 1280, 7, 7])], &[operand(DType::F32, &[3, 1280])])
                .unwrap();
        assert_eq!((gap.entry, gap.grid, gap.block), ("global_avg_pool", [30, 1, 1], [POOL_THREADS, 1, 1]));
        let clip = Op::Clamp { min: 0.0, max: 6.0 };
        let l = plan(&clip, &[operand(DType::F32, &[7, 129])], &[operand(DType::F32, &[7, 129])]).unwrap();
        assert_eq!((l.entry, l.grid), ("clip", [1, 1, 1]));
        assert!(plan(&clip, &[operand(DType::F16, &[7])], &[operand(DType::F16, &[7])]).is_err());
    }

    #[test]
    fn empty_outputs_run_no_kernel() {
        let l = plan(&Op::Softmax, &[operand(DType::F32, &[0, 5])], &[operand(DType::F32, &[0, 5])]).unwrap();
        assert!(!l.runs_kernel());
        let l = plan(&Op::Softmax, &[operand(DType::F32, &[9, 2048])], &[operand(DType::F32, &[9, 2048])]).unwrap();
        assert_eq!(l.grid, [9, 1, 1], "a block per row beyond 1024 columns");
        let l = plan(&Op::Softmax, &[operand(DType::F32, &[9, 384])], &[operand(DType::F32, &[9, 384])]).unwrap();
        assert_eq!(l.grid, [2, 1, 1], "8 rows a block up to 1024 columns");
    }
}
