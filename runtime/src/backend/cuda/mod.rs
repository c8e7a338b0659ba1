//! The CUDA backend: NVIDIA GPUs through the driver API (cudarc), with the kernels of cuda/
//! compiled by NVRTC for the device at first use and cached on disk.
//!
//! Nothing CUDA is needed to build this: libcuda and libnvrtc are loaded when a backend is
//! created. [`cuda_available`] says cheaply whether that can work here and, if not, what is
//! missing; [`CudaBackend::new`] returns the same reasons as errors. Without a GPU the
//! kernels are still checked: tests/tests/cuda_ptx.rs compiles every file for sm_80 and
//! sm_90 with NVRTC alone, and tests/tests/cuda_emulated.rs runs them on the CPU through
//! cuda/emu against the CPU reference.
//!
//! Execution: one stream per backend; work is queued asynchronously and `finish` waits for
//! it, so the executor's buffer reuse is ordered by the stream. Each op becomes one kernel
//! launch (attention adds a memset; lora_matmul is two, sharing a scratch buffer), planned
//! by [`launch::plan_op`].

pub mod cache;
pub mod kernels;
pub mod launch;
pub mod libs;
pub mod nvrtc;

use super::{Arg, Backend, OutArg};
use crate::error::{Error, Result};
use crate::ops::{Op, OpKind};
use crate::tensor::{HostTensor, TensorData};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError, LaunchConfig, PushKernelArg,
};
use launch::{Binding, KernelParams, Launch, Operand, Variant};
use nvrtc::ImageKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A launch's params as the driver reads them: it copies as many bytes as the kernel's first
/// parameter declares from this address, which starts with the `#[repr(C)]` struct
/// ([`KernelParams`]), mirrored field for field by cuda/params.cuh (checked by
/// tests/tests/cuda_kernels.rs).
#[repr(C, align(16))]
struct ParamBlock([u8; PARAM_BLOCK_BYTES]);

const PARAM_BLOCK_BYTES: usize = 256;
const _: () = {
    let mut i = 0;
    while i < KernelParams::STRUCTS.len() {
        assert!(KernelParams::STRUCTS[i].1 <= PARAM_BLOCK_BYTES, "a params struct outgrew ParamBlock");
        i += 1;
    }
};

impl ParamBlock {
    fn new(params: &KernelParams) -> Self {
        let bytes = params.as_bytes();
        let mut block = ParamBlock([0; PARAM_BLOCK_BYTES]);
        block.0[..bytes.len()].copy_from_slice(bytes);
        block
    }
}

// SAFETY: plain bytes, 16-byte aligned, holding a #[repr(C)] struct the kernel takes by value.
unsafe impl DeviceRepr for ParamBlock {}

const NAME: &str = "cuda";

fn err(message: impl Into<String>) -> Error {
    Error::backend(NAME, message)
}

/// A driver error in words: its name and CUDA's description.
fn driver_error(what: &str, e: DriverError) -> Error {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    err(format!("{what}: {name} ({text})"))
}

/// Whether the CUDA backend can start on this machine: the NVIDIA driver library loads,
/// NVRTC loads, and the driver reports at least one device. The error names what is missing.
/// Costs a driver initialisation (tens of milliseconds) the first time.
pub fn cuda_available() -> std::result::Result<(), String> {
    device_count().and_then(|n| if n == 0 { Err("the NVIDIA driver reports no CUDA device".into()) } else { Ok(()) })
}

/// Number of CUDA devices, after checking that the libraries load.
fn device_count() -> std::result::Result<usize, String> {
    // Both libraries are checked so that one message names everything that is missing.
    match (libs::driver(), libs::nvrtc()) {
        (Ok(()), Ok(())) => {}
        (Err(e), Ok(())) | (Ok(()), Err(e)) => return Err(e),
        (Err(driver), Err(nvrtc)) => return Err(format!("{driver}; and {nvrtc}")),
    }
    cudarc::driver::result::init().map_err(|e| match e.0 {
        cudarc::driver::sys::CUresult::CUDA_ERROR_NO_DEVICE => {
            "the NVIDIA driver is installed but finds no CUDA device on this machine".to_string()
        }
        _ => format!("the NVIDIA driver could not initialise CUDA: {e}"),
    })?;
    cudarc::driver::result::device::get_count()
        .map(|n| n.max(0) as usize)
        .map_err(|e| format!("the NVIDIA driver cannot count devices: {e}"))
}

/// A device buffer of bytes.
#[derive(Debug)]
pub struct CudaBuffer {
    slice: CudaSlice<u8>,
}

impl CudaBuffer {
    pub fn bytes(&self) -> usize {
        self.slice.len()
    }
}

/// Work queued on the stream between `begin` and `finish`. The stream orders everything;
/// the recording only holds the ops' scratch buffers until the queued work has run.
#[derive(Debug, Default)]
pub struct CudaRecording {
    scratch: Vec<CudaBuffer>,
}

/// How kernel files are compiled for this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    kind: ImageKind,
    /// Compute capability compiled for: the device's when NVRTC knows it (a cubin), else the
    /// newest NVRTC knows below it (PTX, compiled by the driver at load).
    arch: u32,
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    device_name: String,
    /// Compute capability, e.g. 90 for sm_90.
    arch: u32,
    target: Target,
    nvrtc_version: (i32, i32),
    driver_version: i32,
    modules: Mutex<HashMap<(&'static str, Variant), Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, Variant, &'static str), CudaFunction>>,
}

/// The CUDA backend for one device. Clones share the device, its stream and its compiled
/// kernels.
#[derive(Clone)]
pub struct CudaBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").field("device", &self.device_description()).finish()
    }
}

impl CudaBackend {
    /// Opens CUDA device `device_ordinal` (0 for the first GPU). Fails with a message naming
    /// what is missing when there is no driver, no NVRTC or no such device. Kernels are
    /// compiled later, at first use.
    pub fn new(device_ordinal: usize) -> Result<CudaBackend> {
        let count = device_count().map_err(err)?;
        if count == 0 {
            return Err(err("the NVIDIA driver reports no CUDA device"));
        }
        if device_ordinal >= count {
            return Err(err(format!("no CUDA device {device_ordinal}: this machine has {count}")));
        }
        let ctx = CudaContext::new(device_ordinal)
            .map_err(|e| driver_error(&format!("cannot open device {device_ordinal}"), e))?;
        let (major, minor) =
            ctx.compute_capability().map_err(|e| driver_error("cannot read the compute capability", e))?;
        let arch = (major.max(0) * 10 + minor.max(0)) as u32;
        let device_name = ctx.name().unwrap_or_else(|_| "unknown NVIDIA GPU".into());
        let mut driver_version = 0;
        // SAFETY: the driver library is loaded (device_count checked it) and initialised.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) };
        let nvrtc_version = nvrtc::version().map_err(err)?;
        let target = pick_target(arch, &nvrtc::supported_archs().map_err(err)?).ok_or_else(|| {
            err(format!(
                "NVRTC {}.{} cannot compile for {device_name} (sm_{arch}): use an NVRTC that supports it",
                nvrtc_version.0, nvrtc_version.1
            ))
        })?;
        let stream = ctx.default_stream();
        Ok(CudaBackend {
            inner: Arc::new(Inner {
                ctx,
                stream,
                ordinal: device_ordinal,
                device_name,
                arch,
                target,
                nvrtc_version,
                driver_version,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The device's compute capability as one number (e.g. 90 for sm_90).
    pub fn compute_capability(&self) -> u32 {
        self.inner.arch
    }

    /// Compiles (or loads from the cache) every kernel build this device can run, so that the
    /// first request does not pay for NVRTC. Returns the builds prepared.
    pub fn warm_up(&self) -> Result<usize> {
        let mut n = 0;
        for file in kernels::FILES {
            for &variant in file.variants {
                if kernels::min_arch(file.stem, variant) <= self.inner.arch {
                    self.module(file.stem, variant)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Waits for all queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.inner.stream.synchronize().map_err(|e| driver_error("synchronize", e))
    }

    /// The module of one kernel build: from memory, else the disk cache, else NVRTC.
    fn module(&self, stem: &'static str, variant: Variant) -> Result<Arc<CudaModule>> {
        let inner = &self.inner;
        // Compiling under the lock keeps two threads from compiling the same file at once.
        let mut modules = inner.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(&(stem, variant)) {
            return Ok(m.clone());
        }
        let file = kernels::file(stem).ok_or_else(|| err(format!("no kernel file cuda/{stem}.cu")))?;
        let min = kernels::min_arch(stem, variant);
        if inner.arch < min {
            return Err(err(format!(
                "the {} build of cuda/{stem}.cu needs sm_{min} or newer; {} is sm_{}",
                variant.name(),
                inner.device_name,
                inner.arch
            )));
        }
        let target = inner.target;
        let options = kernels::compile_options(variant, target.kind, target.arch);
        let mut inputs: Vec<&str> = vec![file.source];
        for (name, text) in kernels::HEADERS {
            inputs.extend([*name, *text]);
        }
        let joined = options.join(" ");
        inputs.push(&joined);
        let target_name = match target.kind {
            ImageKind::Cubin => format!("sm_{}", target.arch),
            ImageKind::Ptx => format!("compute_{}", target.arch),
        };
        let cache_dir = cache::dir();
        let cache_name =
            cache::file_name(stem, variant.name(), &target_name, inner.nvrtc_version, &inputs, target.kind.extension());

        // A cached image that the driver refuses (truncated, say) is compiled again.
        if let Some(image) = cache_dir.as_deref().and_then(|d| cache::read(d, &cache_name))
            && let Ok(module) = self.load(image, target.kind)
        {
            modules.insert((stem, variant), module.clone());
            return Ok(module);
        }
        let compiled = nvrtc::compile(&format!("cuda/{stem}.cu"), file.source, kernels::HEADERS, &options, target.kind)
            .map_err(err)?;
        if let Some(d) = cache_dir.as_deref() {
            cache::write(d, &cache_name, &compiled.image);
        }
        let module = self
            .load(compiled.image, target.kind)
            .map_err(|e| driver_error(&format!("the driver cannot load cuda/{stem}.cu ({target_name})"), e))?;
        modules.insert((stem, variant), module.clone());
        Ok(module)
    }

    fn load(&self, mut image: Vec<u8>, kind: ImageKind) -> std::result::Result<Arc<CudaModule>, DriverError> {
        if kind == ImageKind::Ptx && image.last() != Some(&0) {
            image.push(0); // the driver reads PTX as a NUL-terminated string
        }
        self.inner.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image))
    }

    fn function(&self, stem: &'static str, variant: Variant, entry: &'static str) -> Result<CudaFunction> {
        let key = (stem, variant, entry);
        if let Some(f) = self.inner.functions.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(f.clone());
        }
        let module = self.module(stem, variant)?;
        let f = module
            .load_function(entry)
            .map_err(|e| driver_error(&format!("cuda/{stem}.cu has no kernel '{entry}'"), e))?;
        self.inner.functions.lock().unwrap_or_else(|p| p.into_inner()).insert(key, f.clone());
        Ok(f)
    }

    fn run(
        &self,
        launch: &Launch,
        inputs: &[Arg<'_, CudaBuffer>],
        outputs: &mut [OutArg<'_, CudaBuffer>],
        scratch: &[CudaBuffer],
    ) -> Result<()> {
        let stream = &self.inner.stream;
        if launch.zero_outputs {
            for out in outputs.iter_mut() {
                let bytes = Operand { dtype: out.dtype, shape: out.shape }.bytes();
                if bytes > 0 {
                    let mut view = out.buf.slice.slice_mut(..bytes);
                    stream.memset_zeros(&mut view).map_err(|e| driver_error("memset", e))?;
                }
            }
        }
        if !launch.runs_kernel() {
            return Ok(());
        }
        let func = self.function(launch.stem, launch.variant, launch.entry)?;
        let null: u64 = 0;
        let mut builder = stream.launch_builder(&func);
        let params = ParamBlock::new(&launch.params);
        builder.arg(&params);
        for binding in &launch.args {
            match *binding {
                Binding::Input(i) => builder.arg(&inputs[i].buf.slice),
                Binding::Output(i) => builder.arg(&outputs[i].buf.slice),
                Binding::Scratch(i) => builder.arg(&scratch[i].slice),
                Binding::Null => builder.arg(&null),
            };
        }
        let config = LaunchConfig {
            grid_dim: (launch.grid[0], launch.grid[1], launch.grid[2]),
            block_dim: (launch.block[0], launch.block[1], launch.block[2]),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments are the params struct the kernel declares followed by its
        // buffers in order (launch::plan), and every buffer was checked to hold its operand.
        unsafe { builder.launch(config) }
            .map(|_| ())
            .map_err(|e| driver_error(&format!("launching {} ({}.cu)", launch.entry, launch.stem), e))
    }
}

/// A cubin for the device's own architecture when NVRTC supports it, else PTX for the newest
/// architecture NVRTC supports below it (the driver compiles that for the device).
fn pick_target(arch: u32, supported: &[u32]) -> Option<Target> {
    if supported.contains(&arch) {
        return Some(Target { kind: ImageKind::Cubin, arch });
    }
    supported.iter().copied().filter(|&a| a <= arch).max().map(|a| Target { kind: ImageKind::Ptx, arch: a })
}

fn check_size(what: &str, i: usize, buf: &CudaBuffer, op: Operand<'_>) -> Result<()> {
    if buf.bytes() < op.bytes() {
        return Err(err(format!(
            "{what} {i} ({} {:?}) needs {} bytes but its buffer has {}",
            op.dtype,
            op.shape,
            op.bytes(),
            buf.bytes()
        )));
    }
    Ok(())
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;
    type Recording = CudaRecording;

    fn name(&self) -> &'static str {
        NAME
    }

    fn device_description(&self) -> String {
        let i = &self.inner;
        let d = i.driver_version;
        format!(
            "{} (CUDA device {}, sm_{}), driver {}.{}, NVRTC {}.{}",
            i.device_name,
            i.ordinal,
            i.arch,
            d / 1000,
            (d % 1000) / 10,
            i.nvrtc_version.0,
            i.nvrtc_version.1
        )
    }

    fn supports(&self, op: OpKind) -> bool {
        // Every op has a kernel in cuda/, except reshape, which is a view and needs none.
        op.kernel().is_none_or(|(stem, entry)| {
            kernels::file(stem).is_some_and(|f| kernels::entry_points(f.source).iter().any(|e| e == entry))
        })
    }

    fn supports_dtypes(&self, op: &Op, inputs: &[crate::tensor::DType]) -> bool {
        super::cuda_supports_dtypes(op, inputs)
    }

    fn alloc(&self, bytes: usize) -> Result<CudaBuffer> {
        // SAFETY: the contents are unspecified by the trait's contract; nothing reads them
        // before a write or a kernel fills them.
        let slice = unsafe { self.inner.stream.alloc::<u8>(bytes.max(4)) }
            .map_err(|e| driver_error(&format!("cannot allocate {bytes} bytes"), e))?;
        Ok(CudaBuffer { slice })
    }

    fn upload(&self, tensor: &HostTensor) -> Result<CudaBuffer> {
        let mut buf = self.alloc(tensor.data.as_bytes().len())?;
        self.write(&mut CudaRecording::default(), &mut buf, 0, tensor)?;
        Ok(buf)
    }

    fn begin(&self) -> Result<CudaRecording> {
        Ok(CudaRecording::default())
    }

    fn write(&self, _rec: &mut CudaRecording, buf: &mut CudaBuffer, at: usize, tensor: &HostTensor) -> Result<()> {
        let bytes = tensor.data.as_bytes();
        if at.checked_add(bytes.len()).is_none_or(|end| end > buf.bytes()) {
            return Err(err(format!("cannot write {} bytes at {at} into a buffer of {}", bytes.len(), buf.bytes())));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        // From pageable memory the copy is staged before this returns, so `tensor` may go.
        let mut view = buf.slice.slice_mut(at..at + bytes.len());
        self.inner.stream.memcpy_htod(bytes, &mut view).map_err(|e| driver_error("copy to the device", e))
    }

    fn copy_within(&self, buf: &mut CudaBuffer, src: usize, dst: usize, bytes: usize) -> Result<()> {
        let in_bounds = src.max(dst).checked_add(bytes).is_some_and(|end| end <= buf.bytes());
        if !in_bounds || src.abs_diff(dst) < bytes {
            return Err(err(format!("copying {bytes} bytes from {src} to {dst} in a buffer of {}", buf.bytes())));
        }
        if bytes == 0 {
            return Ok(());
        }
        // Through scratch, so that no source and destination view of one allocation are
        // borrowed at once; both copies are queued on the stream in order.
        let stream = &self.inner.stream;
        let mut scratch = self.alloc(bytes)?;
        stream
            .memcpy_dtod(&buf.slice.slice(src..src + bytes), &mut scratch.slice.slice_mut(..bytes))
            .map_err(|e| driver_error("copy on the device", e))?;
        stream
            .memcpy_dtod(&scratch.slice.slice(..bytes), &mut buf.slice.slice_mut(dst..dst + bytes))
            .map_err(|e| driver_error("copy on the device", e))
    }

    fn dispatch(
        &self,
        rec: &mut CudaRecording,
        op: &Op,
        inputs: &[Arg<'_, CudaBuffer>],
        outputs: &mut [OutArg<'_, CudaBuffer>],
    ) -> Result<()> {
        let ins: Vec<Operand<'_>> = inputs.iter().map(|a| Operand { dtype: a.dtype, shape: a.shape }).collect();
        let outs: Vec<Operand<'_>> = outputs.iter().map(|a| Operand { dtype: a.dtype, shape: a.shape }).collect();
        for (i, (arg, op)) in inputs.iter().zip(&ins).enumerate() {
            check_size("input", i, arg.buf, *op)?;
        }
        for (i, (arg, op)) in outputs.iter().zip(&outs).enumerate() {
            check_size("output", i, arg.buf, *op)?;
        }
        let planned = launch::plan_op(op, &ins, &outs).map_err(err)?;
        let scratch = planned.scratch.iter().map(|&bytes| self.alloc(bytes)).collect::<Result<Vec<_>>>()?;
        for launch in &planned.launches {
            if let Some(missing) = launch.args.iter().find(|b| match **b {
                Binding::Input(i) => i >= inputs.len(),
                Binding::Output(i) => i >= outputs.len(),
                Binding::Scratch(i) => i >= scratch.len(),
                Binding::Null => false,
            }) {
                return Err(err(format!("{}: operand {missing:?} is missing", op.kind().name())));
            }
            self.run(launch, inputs, outputs, &scratch)?;
        }
        // Freed after `finish` has waited for the stream, not while a kernel may still read.
        rec.scratch.extend(scratch);
        Ok(())
    }

    async fn finish(&self, _rec: CudaRecording, reads: &[Arg<'_, CudaBuffer>]) -> Result<Vec<HostTensor>> {
        let stream = &self.inner.stream;
        let mut out = Vec::with_capacity(reads.len());
        for (i, r) in reads.iter().enumerate() {
            let op = Operand { dtype: r.dtype, shape: r.shape };
            check_size("read", i, r.buf, op)?;
            let bytes = if op.bytes() == 0 {
                Vec::new()
            } else {
                stream
                    .clone_dtoh(&r.buf.slice.slice(..op.bytes()))
                    .map_err(|e| driver_error("copy from the device", e))?
            };
            out.push((r.shape.to_vec(), r.dtype, bytes));
        }
        // Waits for every kernel and copy, and surfaces a kernel's failure (say, an illegal
        // address) here rather than at some later call.
        stream.synchronize().map_err(|e| driver_error("running the recorded work", e))?;
        self.inner.ctx.check_err().map_err(|e| driver_error("the device reported an earlier error", e))?;
        out.into_iter()
            .map(|(shape, dtype, bytes)| HostTensor::new(shape, TensorData::from_bytes(dtype, &bytes)?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_a_cubin_when_nvrtc_knows_the_device() {
        let supported = [75, 80, 86, 89, 90];
        assert_eq!(pick_target(90, &supported), Some(Target { kind: ImageKind::Cubin, arch: 90 }));
        assert_eq!(pick_target(100, &supported), Some(Target { kind: ImageKind::Ptx, arch: 90 }));
        assert_eq!(pick_target(70, &supported), None);
    }

    #[test]
    fn without_a_driver_the_error_says_what_is_missing() {
        // On a machine with a GPU this is Ok; on one without, the message must name the missing
        // piece rather than panic (cudarc panics when a library is absent and is called).
        match cuda_available() {
            Ok(()) => {}
            Err(e) => println!("cuda_available: {e}"),
        }
        match cuda_available() {
            Ok(()) => {}
            Err(e) => assert!(
                e.contains("libcuda") || e.contains("NVRTC") || e.contains("no CUDA device"),
                "unhelpful message: {e}"
            ),
        }
        if let Err(e) = CudaBackend::new(0) {
            let text = e.to_string();
            println!("CudaBackend::new(0): {text}");
            assert!(text.starts_with("cuda backend: "), "{text}");
        }
    }
}
