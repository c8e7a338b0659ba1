//! Backends execute ops on their device. The executor (`exec`) owns planning, buffer reuse
//! and ordering; a backend only allocates, moves bytes and runs one op at a time into a
//! recording that it submits at the end.

pub mod cpu;
#[cfg(all(feature = "cuda", not(target_arch = "wasm32")))]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::error::Result;
use crate::ops::{Op, OpKind};
use crate::tensor::{DType, HostTensor};

/// What most GPU kernels take: f32 values and u32 indexes.
pub fn f32_and_u32(dtypes: &[DType]) -> bool {
    dtypes.iter().all(|d| matches!(d, DType::F32 | DType::U32))
}

/// The dtypes the CUDA kernels take (shared by the CUDA backend and its emulated twin): f32
/// and u32 everywhere; matmul and attention also all-f16 floats (their f16 builds), attention
/// and kv_write an f16 KV cache under f32 queries and rows; cast
/// between f32, f16 and u32; and stored weights (f16, bf16, GGUF blocks) for matmul by f32
/// activations and for gather, dequantized inside the kernel (cuda/quant.cu).
pub fn cuda_supports_dtypes(op: &Op, inputs: &[DType]) -> bool {
    if op.stored_weight(inputs).is_some() {
        return true;
    }
    let halves = inputs.iter().all(|d| matches!(d, DType::F16 | DType::U32));
    match op {
        Op::MatMul(_) => f32_and_u32(inputs) || halves,
        // Also f32 queries over an f16 KV cache, and kv_write (cache, rows, table) into one.
        Op::Attention(_) => f32_and_u32(inputs) || halves || inputs == [DType::F32, DType::F16, DType::F16, DType::U32],
        Op::KvWrite(_) => f32_and_u32(inputs) || inputs == [DType::F16, DType::F32, DType::U32],
        Op::Cast(to) => {
            matches!(to, DType::F32 | DType::F16)
                && inputs.iter().all(|d| matches!(d, DType::F32 | DType::F16 | DType::U32))
        }
        // A view: no kernel reads the data.
        Op::Reshape(_) => true,
        _ => f32_and_u32(inputs),
    }
}

/// A tensor argument of one dispatch.
pub struct Arg<'a, B> {
    pub buf: &'a B,
    pub dtype: DType,
    pub shape: &'a [usize],
}

/// An output argument of one dispatch. Never the same buffer as an input of that dispatch
/// (WebGPU forbids binding one buffer read-only and read-write together).
pub struct OutArg<'a, B> {
    pub buf: &'a mut B,
    pub dtype: DType,
    pub shape: &'a [usize],
}

pub trait Backend {
    type Buffer;
    /// Work recorded between `begin` and `finish` (a command encoder on wgpu).
    type Recording;

    /// Short name: "cpu", "wgpu", "cuda".
    fn name(&self) -> &'static str;
    /// A human description of the device, for logs and `/info`.
    fn device_description(&self) -> String;
    /// Whether the backend has a kernel for the op at all.
    fn supports(&self, op: OpKind) -> bool;
    /// Whether it runs the op on inputs of these dtypes (in the op's input order; `Op::infer`
    /// has accepted them). The CPU, the reference, runs every combination `infer` accepts.
    fn supports_dtypes(&self, op: &Op, inputs: &[DType]) -> bool;

    /// A buffer of at least `bytes` bytes, contents unspecified.
    fn alloc(&self, bytes: usize) -> Result<Self::Buffer>;
    /// Uploads a tensor into a new buffer (weights).
    fn upload(&self, tensor: &HostTensor) -> Result<Self::Buffer>;

    fn begin(&self) -> Result<Self::Recording>;
    /// Writes a host tensor into `buf` from byte offset `at` (a multiple of 4) before the
    /// recorded work runs (graph inputs at 0; rows of a state).
    fn write(&self, rec: &mut Self::Recording, buf: &mut Self::Buffer, at: usize, tensor: &HostTensor) -> Result<()>;
    /// Copies `bytes` bytes of `buf` from offset `src` to offset `dst` (ranges in bounds and
    /// not overlapping, offsets multiples of 4), ordered after every run submitted before and
    /// before every run submitted after (a KV-cache prefix shared between sequences).
    fn copy_within(&self, buf: &mut Self::Buffer, src: usize, dst: usize, bytes: usize) -> Result<()>;
    /// Records one op. An op that writes an input in place ([`Op::in_place_input`], e.g.
    /// `kv_write` into a state) gets that input as its output and not among `inputs`.
    fn dispatch(
        &self,
        rec: &mut Self::Recording,
        op: &Op,
        inputs: &[Arg<'_, Self::Buffer>],
        outputs: &mut [OutArg<'_, Self::Buffer>],
    ) -> Result<()>;
    /// Runs what was recorded (one submission) and reads back `reads`.
    fn finish(
        &self,
        rec: Self::Recording,
        reads: &[Arg<'_, Self::Buffer>],
    ) -> impl std::future::Future<Output = Result<Vec<HostTensor>>>;
}
