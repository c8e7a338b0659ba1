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
    fn supports(&self, op: OpKind) -> bool;

    /// A buffer of at least `bytes` bytes, contents unspecified.
    fn alloc(&self, bytes: usize) -> Result<Self::Buffer>;
    /// Uploads a tensor into a new buffer (weights).
    fn upload(&self, tensor: &HostTensor) -> Result<Self::Buffer>;

    fn begin(&self) -> Result<Self::Recording>;
    /// Writes a host tensor into `buf` before the recorded work runs (graph inputs).
    fn write(&self, rec: &mut Self::Recording, buf: &mut Self::Buffer, tensor: &HostTensor) -> Result<()>;
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
