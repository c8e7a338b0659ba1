//! The wgpu backend: every op is a WGSL compute kernel (`shaders/<stem>.wgsl`), run through
//! wgpu on Vulkan, Metal or DX12 natively and on WebGPU in the browser.
//!
//! A run is one command submission. `dispatch` only validates and records what to run (the
//! kernel, its buffers, its params); `finish` packs every dispatch's params into one uniform
//! buffer (addressed with dynamic offsets), records all dispatches into one compute pass,
//! appends copies of the outputs into one mappable staging buffer, submits once and maps
//! the staging buffer asynchronously. Recording the pass at the end is what lets all params
//! live in one buffer: its size is known only once the last op has been seen.
//!
//! The device asks for WebGPU's default limits (256 invocations and 16 KiB of workgroup
//! memory per workgroup, 65535 workgroups per dimension), raising only the buffer-size
//! limits to what the adapter offers, which model weights need. No optional features are
//! used (no f16: f16 tensors travel as packed u32 words).
//!
//! Device errors never panic: an uncaptured-error handler and a device-lost callback record
//! them, error scopes attribute them where that is cheap, and the next call returns them as
//! [`Error::Backend`].

mod kernels;

pub use kernels::{MAX_HEAD_DIM, has_kernel, has_stored_kernels};

use super::{Arg, Backend, OutArg};
use crate::error::{Error, Result};
use crate::ops::{Op, OpKind};
use crate::tensor::{DType, HostTensor, TensorData};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

fn err(message: impl Into<String>) -> Error {
    Error::backend("wgpu", message)
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The dtypes the WGSL kernels take: f32 values and u32 indexes; f16 through cast and as a KV
/// cache under f32 queries and rows (attention, and kv_write's (cache, rows, table); WebGPU's
/// shader-f16 is optional, so f16 travels as packed words); and stored weights (f16, bf16,
/// GGUF blocks) for matmul by f32 activations and for gather, dequantized inside the kernel
/// (shaders/quant.wgsl). No device needed.
pub fn supports_dtypes(op: &Op, inputs: &[DType]) -> bool {
    if op.stored_weight(inputs).is_some() {
        return has_stored_kernels(op.kind());
    }
    match op {
        Op::Cast(_) => inputs.iter().all(|d| matches!(d, DType::F32 | DType::F16 | DType::U32)),
        Op::Attention(_) => super::f32_and_u32(inputs) || inputs == [DType::F32, DType::F16, DType::F16, DType::U32],
        Op::KvWrite(_) => super::f32_and_u32(inputs) || inputs == [DType::F16, DType::F32, DType::U32],
        // A view: no kernel reads the data.
        Op::Reshape(_) => true,
        _ => super::f32_and_u32(inputs),
    }
}

/// Which adapters [`WgpuBackend::new_with`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterPreference {
    /// The best adapter there is, a CPU implementation such as Mesa's lavapipe included.
    #[default]
    Any,
    /// Only a real GPU: fails when the best adapter runs on the CPU (`--backend auto` then
    /// falls back to the CPU backend, which is faster than a software GPU).
    HardwareOnly,
}

/// A compiled kernel: its pipeline and the bind group layout it was built with.
struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    params_size: u64,
}

#[derive(Default)]
struct Kernels {
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    pipelines: HashMap<kernels::KernelRef, Arc<Kernel>>,
}

/// Errors the device reported outside any call that could return them.
#[derive(Default)]
struct DeviceErrors {
    /// Sticky: a lost device stays lost.
    lost: Option<String>,
    uncaptured: Vec<String>,
}

struct Shared {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// Alignment of dynamic uniform offsets (256 on most devices).
    uniform_align: usize,
    /// The largest buffer that can also be bound whole as storage.
    max_buffer: u64,
    kernels: Mutex<Kernels>,
    errors: Arc<Mutex<DeviceErrors>>,
}

/// The wgpu backend. Cloning is cheap and shares the device, its queue and the compiled
/// pipelines.
#[derive(Clone)]
pub struct WgpuBackend {
    shared: Arc<Shared>,
}

/// A device buffer (storage, copy source and destination). Its size is a multiple of 4.
#[derive(Debug)]
pub struct WgpuBuffer {
    buffer: wgpu::Buffer,
}

impl WgpuBuffer {
    pub fn size(&self) -> u64 {
        self.buffer.size()
    }
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

/// One recorded dispatch.
struct Dispatch {
    kernel: Arc<Kernel>,
    /// Inputs in binding order, then the output.
    buffers: Vec<wgpu::Buffer>,
    params_offset: u32,
    groups: [u32; 3],
}

/// What a run has recorded so far; turned into one submission by `finish`.
#[derive(Default)]
pub struct WgpuRecording {
    /// Every dispatch's params, each at a multiple of the uniform offset alignment.
    params: Vec<u8>,
    dispatches: Vec<Dispatch>,
}

/// A submitted run: where its results will be readable.
struct Submitted {
    staging: wgpu::Buffer,
    /// Each read's (offset, bytes) in `staging`.
    spans: Vec<(u64, u64)>,
    index: wgpu::SubmissionIndex,
}

/// Orders adapters: real GPUs before virtual and CPU ones.
#[cfg(not(target_arch = "wasm32"))]
fn adapter_rank(info: &wgpu::AdapterInfo) -> u8 {
    match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu | wgpu::DeviceType::Other => 2,
        wgpu::DeviceType::Cpu => 3,
    }
}

impl WgpuBackend {
    /// The best adapter available, software ones included.
    pub async fn new() -> Result<Self> {
        Self::new_with(AdapterPreference::Any).await
    }

    /// `new` for callers without an executor.
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// `new_with` for callers without an executor.
    pub fn new_with_blocking(preference: AdapterPreference) -> Result<Self> {
        pollster::block_on(Self::new_with(preference))
    }

    /// Opens a device on the best adapter that `preference` accepts and that offers
    /// WebGPU's default limits. `WGPU_BACKEND` (vulkan, metal, dx12, gl) restricts the
    /// search.
    pub async fn new_with(preference: AdapterPreference) -> Result<Self> {
        let required = wgpu::Limits::defaults();

        #[cfg(not(target_arch = "wasm32"))]
        let adapter = {
            let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
            // GL last, and only initialised when nothing else works: it rarely offers the
            // default limits, and setting it up without a display prints noise.
            let mut found = None;
            for tier in [backends - wgpu::Backends::GL, backends & wgpu::Backends::GL] {
                if tier.is_empty() {
                    continue;
                }
                let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                    backends: tier,
                    ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
                });
                let mut adapters: Vec<wgpu::Adapter> = instance
                    .enumerate_adapters(tier)
                    .await
                    .into_iter()
                    .filter(|a| required.check_limits(&a.limits()))
                    .filter(|a| {
                        preference == AdapterPreference::Any || a.get_info().device_type != wgpu::DeviceType::Cpu
                    })
                    .collect();
                adapters.sort_by_key(|a| adapter_rank(&a.get_info()));
                found = adapters.into_iter().next();
                if found.is_some() {
                    break;
                }
            }
            let what = match preference {
                AdapterPreference::Any => "adapter",
                AdapterPreference::HardwareOnly => "hardware (non-CPU) adapter",
            };
            found.ok_or_else(|| err(format!("no {what} with WebGPU's default limits was found")))?
        };
        #[cfg(target_arch = "wasm32")]
        let adapter = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            // wgpu's own message lists every native backend as "not compiled in": noise in a
            // page, where only WebGPU was ever possible.
            .map_err(|_| err("the browser gives no WebGPU adapter (WebGPU is off, unsupported, or blocked here)"))?;

        let info = adapter.get_info();
        if preference == AdapterPreference::HardwareOnly && info.device_type == wgpu::DeviceType::Cpu {
            return Err(err(format!("the adapter, {}, runs on the CPU", info.name)));
        }
        let offered = adapter.limits();
        let limits = wgpu::Limits {
            max_buffer_size: offered.max_buffer_size.max(required.max_buffer_size),
            max_storage_buffer_binding_size: offered
                .max_storage_buffer_binding_size
                .max(required.max_storage_buffer_binding_size),
            ..required
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("tandem"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                memory_hints: wgpu::MemoryHints::Performance,
                ..Default::default()
            })
            .await
            .map_err(|e| err(format!("cannot open a device on {}: {e}", info.name)))?;

        let errors = Arc::new(Mutex::new(DeviceErrors::default()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| lock(&sink).uncaptured.push(e.to_string())));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            lock(&sink).lost = Some(format!("device lost ({reason:?}): {message}"));
        });

        let max_buffer = limits.max_buffer_size.min(limits.max_storage_buffer_binding_size as u64);
        Ok(WgpuBackend {
            shared: Arc::new(Shared {
                device,
                queue,
                info,
                uniform_align: limits.min_uniform_buffer_offset_alignment as usize,
                max_buffer,
                kernels: Mutex::new(Kernels::default()),
                errors,
            }),
        })
    }

    /// The adapter the device runs on.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.shared.info
    }

    /// Why the device was lost, once it has been (a lost device stays lost: open a new
    /// backend). Every later run fails with this reason too.
    pub fn device_lost(&self) -> Option<String> {
        lock(&self.shared.errors).lost.clone()
    }

    /// Whether the adapter is a CPU implementation (lavapipe, WARP, SwiftShader).
    pub fn is_software(&self) -> bool {
        self.shared.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Returns (and clears) what the error handlers recorded since the last check.
    fn check_errors(&self) -> Result<()> {
        let mut errors = lock(&self.shared.errors);
        if let Some(lost) = &errors.lost {
            return Err(err(lost.clone()));
        }
        if errors.uncaptured.is_empty() {
            return Ok(());
        }
        Err(err(std::mem::take(&mut errors.uncaptured).join("; ")))
    }

    /// Runs `f` inside out-of-memory and validation error scopes and returns what they
    /// caught. Native wgpu reports errors synchronously, so the scopes resolve at once. In
    /// the browser they would resolve later and blocking is impossible, so there errors go
    /// to the uncaptured-error handler and the next `finish` returns them.
    fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let device = &self.shared.device;
            let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let out = f();
            let validation = pollster::block_on(validation.pop());
            let oom = pollster::block_on(oom.pop());
            if let Some(e) = validation.or(oom) {
                return Err(err(format!("{what}: {e}")));
            }
            Ok(out)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = what;
            Ok(f())
        }
    }

    /// The compiled pipeline of `kernel_ref`, which runs an op of `kind` (its bindings),
    /// compiling it (and its shader module) on first use.
    fn kernel(&self, kernel_ref: kernels::KernelRef, kind: OpKind) -> Result<Arc<Kernel>> {
        let mut cache = lock(&self.shared.kernels);
        if let Some(k) = cache.pipelines.get(&kernel_ref) {
            return Ok(k.clone());
        }
        let kernels::KernelRef { stem, entry, weight, kv_cache } = kernel_ref;
        // Stored-weight kernels are specialised for their weight's dtype (quant.wgsl, WEIGHT),
        // attention and kv_write for an f16 cache (attention.wgsl, KV_CACHE).
        let constants = kernel_ref.constants();
        let source = kernels::source(stem).ok_or_else(|| err(format!("no shader {stem}.wgsl")))?;
        let device = &self.shared.device;
        let kernels::Signature { inputs, outputs, params_size } = kernels::signature(kind);
        let what = match (weight, kv_cache) {
            (Some(w), _) => format!("compiling {stem}.wgsl, entry point {entry}, for {w} weights"),
            (None, Some(c)) => format!("compiling {stem}.wgsl, entry point {entry}, for an {c} KV cache"),
            (None, None) => format!("compiling {stem}.wgsl, entry point {entry}"),
        };
        let built = self.scoped(&what, || {
            let module = cache.modules.entry(stem).or_insert_with(|| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(stem),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                })
            });
            let buffer = |ty, dynamic, min_size| wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: dynamic,
                min_binding_size: NonZeroU64::new(min_size),
            };
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: buffer(wgpu::BufferBindingType::Uniform, true, params_size),
                count: None,
            }];
            for i in 0..inputs + outputs {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: buffer(wgpu::BufferBindingType::Storage { read_only: i < inputs }, false, 0),
                    count: None,
                });
            }
            let layout = device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &entries });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
                cache: None,
            });
            Arc::new(Kernel { pipeline, layout, params_size })
        })?;
        cache.pipelines.insert(kernel_ref, built.clone());
        Ok(built)
    }

    fn create_buffer(&self, bytes: usize, usage: wgpu::BufferUsages, mapped: bool) -> Result<wgpu::Buffer> {
        // Bindings and copies work in 4-byte words; nothing may be empty.
        let size = (bytes.max(4) as u64).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        if size > self.shared.max_buffer {
            return Err(err(format!(
                "a buffer of {bytes} bytes exceeds the device's limit of {} bytes",
                self.shared.max_buffer
            )));
        }
        self.scoped(&format!("allocating {bytes} bytes"), || {
            self.shared.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage,
                mapped_at_creation: mapped,
            })
        })
    }

    /// Appends one dispatch of an op of `kind` over `buffers` (inputs, then outputs), running
    /// the launch's kernel.
    fn record(
        &self,
        rec: &mut WgpuRecording,
        kind: OpKind,
        launch: kernels::Launch,
        buffers: Vec<wgpu::Buffer>,
    ) -> Result<()> {
        let kernel = self.kernel(launch.kernel, kind)?;
        let offset = rec.params.len().next_multiple_of(self.shared.uniform_align);
        rec.params.resize(offset, 0);
        rec.params.extend_from_slice(&launch.params);
        rec.dispatches.push(Dispatch {
            kernel,
            buffers,
            params_offset: u32::try_from(offset).map_err(|_| err("too many dispatches in one run"))?,
            groups: launch.groups,
        });
        Ok(())
    }

    /// Records copies of `reads` into one staging buffer and submits everything recorded.
    fn submit(&self, rec: WgpuRecording, reads: &[Arg<'_, WgpuBuffer>]) -> Result<Submitted> {
        let device = &self.shared.device;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("tandem run") });
        if !rec.dispatches.is_empty() {
            let params = self.create_buffer(rec.params.len(), wgpu::BufferUsages::UNIFORM, true)?;
            params
                .get_mapped_range_mut(..rec.params.len() as u64)
                .map_err(|e| err(format!("mapping the params buffer: {e}")))?
                .copy_from_slice(&rec.params);
            params.unmap();
            let bind_groups: Vec<wgpu::BindGroup> =
                rec.dispatches
                    .iter()
                    .map(|d| {
                        let mut entries = vec![wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &params,
                                offset: 0,
                                size: NonZeroU64::new(d.kernel.params_size),
                            }),
                        }];
                        entries.extend(d.buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry {
                            binding: i as u32 + 1,
                            resource: b.as_entire_binding(),
                        }));
                        device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: None,
                            layout: &d.kernel.layout,
                            entries: &entries,
                        })
                    })
                    .collect();
            // One pass for the whole run: WebGPU makes each dispatch see the writes of the
            // ones before it, so no pass breaks are needed between dependent ops.
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("tandem"), timestamp_writes: None });
            for (d, group) in rec.dispatches.iter().zip(&bind_groups) {
                pass.set_pipeline(&d.kernel.pipeline);
                pass.set_bind_group(0, group, &[d.params_offset]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        let mut spans = Vec::with_capacity(reads.len());
        let mut total = 0u64;
        for r in reads {
            let bytes = r.dtype.bytes_for_shape(r.shape)? as u64;
            spans.push((total, bytes));
            total = (total + bytes).next_multiple_of(wgpu::MAP_ALIGNMENT);
        }
        let staging =
            self.create_buffer(total as usize, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, false)?;
        for (r, &(offset, bytes)) in reads.iter().zip(&spans) {
            if bytes > 0 {
                // Copies move whole words; an odd f16 count copies one padding half too.
                let size = bytes.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
                encoder.copy_buffer_to_buffer(&r.buf.buffer, 0, &staging, offset, size);
            }
        }
        let index = self.shared.queue.submit([encoder.finish()]);
        Ok(Submitted { staging, spans, index })
    }
}

/// A one-shot channel whose receiver is a future: how a `map_async` callback hands its
/// result to `finish` without blocking (required in the browser).
struct Oneshot<T>(Arc<Mutex<(Option<T>, Option<Waker>)>>);

fn oneshot<T>() -> (impl FnOnce(T), Oneshot<T>) {
    let slot = Arc::new(Mutex::new((None, None::<Waker>)));
    let tx = slot.clone();
    let send = move |value| {
        let mut s = lock(&tx);
        s.0 = Some(value);
        if let Some(w) = s.1.take() {
            w.wake();
        }
    };
    (send, Oneshot(slot))
}

impl<T> Future for Oneshot<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = lock(&self.0);
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Backend for WgpuBackend {
    type Buffer = WgpuBuffer;
    type Recording = WgpuRecording;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn device_description(&self) -> String {
        let i = &self.shared.info;
        // Browsers may name neither the adapter nor its driver.
        let name = if i.name.is_empty() { "an unnamed adapter" } else { i.name.as_str() };
        let driver = [i.driver.as_str(), i.driver_info.as_str()].join(" ");
        match driver.trim() {
            "" => format!("{name} ({:?}, {:?})", i.device_type, i.backend),
            driver => format!("{name} ({:?}, {:?}, driver {driver})", i.device_type, i.backend),
        }
    }

    fn supports(&self, op: OpKind) -> bool {
        has_kernel(op)
    }

    fn supports_dtypes(&self, op: &Op, inputs: &[DType]) -> bool {
        supports_dtypes(op, inputs)
    }

    fn alloc(&self, bytes: usize) -> Result<WgpuBuffer> {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        Ok(WgpuBuffer { buffer: self.create_buffer(bytes, usage, false)? })
    }

    fn upload(&self, tensor: &HostTensor) -> Result<WgpuBuffer> {
        // Mapped at creation: the bytes go straight into the buffer, no staging copy.
        let bytes = tensor.data.as_bytes();
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let buffer = self.create_buffer(bytes.len(), usage, true)?;
        buffer
            .get_mapped_range_mut(..bytes.len() as u64)
            .map_err(|e| err(format!("mapping a weight buffer: {e}")))?
            .copy_from_slice(bytes);
        buffer.unmap();
        Ok(WgpuBuffer { buffer })
    }

    fn begin(&self) -> Result<WgpuRecording> {
        self.check_errors()?;
        Ok(WgpuRecording::default())
    }

    fn write(&self, _rec: &mut WgpuRecording, buf: &mut WgpuBuffer, at: usize, tensor: &HostTensor) -> Result<()> {
        let bytes = tensor.data.as_bytes();
        let end = (at as u64).checked_add(bytes.len().next_multiple_of(4) as u64);
        if !(at as u64).is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT) || end.is_none_or(|end| end > buf.size()) {
            return Err(err(format!("writing {} bytes at {at} into a buffer of {}", bytes.len(), buf.size())));
        }
        // Queue writes land before the run's single submission. They move whole words, so
        // an odd number of f16 values gets a padding half.
        if bytes.len().is_multiple_of(4) {
            self.shared.queue.write_buffer(&buf.buffer, at as u64, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.shared.queue.write_buffer(&buf.buffer, at as u64, &padded);
        }
        Ok(())
    }

    fn copy_within(&self, buf: &mut WgpuBuffer, src: usize, dst: usize, bytes: usize) -> Result<()> {
        let (src, dst, n) = (src as u64, dst as u64, bytes as u64);
        let aligned = [src, dst, n].iter().all(|v| v % wgpu::COPY_BUFFER_ALIGNMENT == 0);
        if !aligned || src.max(dst).checked_add(n).is_none_or(|end| end > buf.size()) || src.abs_diff(dst) < n {
            return Err(err(format!("copying {bytes} bytes from {src} to {dst} in a buffer of {}", buf.size())));
        }
        if n == 0 {
            return Ok(());
        }
        self.check_errors()?;
        // WebGPU copies never read and write one buffer: go through a scratch buffer. The
        // queue orders this submission between the runs before and after it.
        let scratch = self.create_buffer(bytes, wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST, false)?;
        let device = &self.shared.device;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("tandem copy") });
        encoder.copy_buffer_to_buffer(&buf.buffer, src, &scratch, 0, n);
        encoder.copy_buffer_to_buffer(&scratch, 0, &buf.buffer, dst, n);
        self.shared.queue.submit([encoder.finish()]);
        self.check_errors()
    }

    fn dispatch(
        &self,
        rec: &mut WgpuRecording,
        op: &Op,
        inputs: &[Arg<'_, WgpuBuffer>],
        outputs: &mut [OutArg<'_, WgpuBuffer>],
    ) -> Result<()> {
        if outputs.iter().all(|o| o.shape.iter().product::<usize>() == 0) {
            return Ok(()); // nothing to compute, and nothing to bind
        }
        let kind = op.kind();
        let named = |e: String| err(format!("{}: {e}", kind.name()));
        let wanted = kernels::signature(kind);
        // lora_matmul binds its scratch in place of A: the op takes at most as many inputs.
        let required = if kind == OpKind::LoraMatMul { 4 } else { 1 };
        if !(required..=wanted.inputs).contains(&inputs.len()) || outputs.len() != wanted.outputs {
            return Err(named(format!(
                "{} inputs and {} outputs given, the kernel binds up to {} and {}",
                inputs.len(),
                outputs.len(),
                wanted.inputs,
                wanted.outputs
            )));
        }
        let shapes: Vec<(DType, &[usize])> = inputs.iter().map(|a| (a.dtype, a.shape)).collect();
        let launch = kernels::launch(op, &shapes, (outputs[0].dtype, outputs[0].shape)).map_err(named)?;
        let mut buffers: Vec<wgpu::Buffer> = inputs.iter().map(|a| a.buf.buffer.clone()).collect();
        if let Op::LoraMatMul(l) = op {
            // First t = x · Aᵀ into a scratch, then the main product reads it as its LoRA
            // operand. The recorded dispatch holds the scratch until the run is submitted.
            let (down, t_len) = kernels::lora_down(l, &shapes).map_err(named)?;
            let t = self.alloc(DType::F32.bytes_for_shape(&[t_len])?)?.buffer;
            let (x, w, a, b) = (&buffers[0], &buffers[1], &buffers[2], &buffers[3]);
            self.record(rec, OpKind::MatMul, down, vec![x.clone(), a.clone(), x.clone(), t.clone()])?;
            let bias = buffers.get(4).unwrap_or(x).clone();
            buffers = vec![x.clone(), w.clone(), bias, t, b.clone()];
        }
        // Absent optional inputs (matmul's bias, NOT's b) get the first input, bound
        // read-only twice (allowed) and never read.
        while buffers.len() < wanted.inputs {
            buffers.push(inputs[0].buf.buffer.clone());
        }
        buffers.extend(outputs.iter().map(|o| o.buf.buffer.clone()));
        self.record(rec, kind, launch, buffers)
    }

    async fn finish(&self, rec: WgpuRecording, reads: &[Arg<'_, WgpuBuffer>]) -> Result<Vec<HostTensor>> {
        self.check_errors()?;
        let Submitted { staging, spans, index } =
            self.scoped("running the recorded work", || self.submit(rec, reads))??;
        let (send, mapped) = oneshot();
        staging.slice(..).map_async(wgpu::MapMode::Read, send);
        // Native: block until the submission has run, which also fires the map callback. In
        // the browser the callback fires from the event loop and `mapped` wakes us.
        #[cfg(not(target_arch = "wasm32"))]
        self.shared
            .device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
            .map_err(|e| err(format!("waiting for the device: {e}")))?;
        #[cfg(target_arch = "wasm32")]
        let _ = index;
        mapped.await.map_err(|e| err(format!("reading results back: {e}")))?;
        self.check_errors()?;

        let view = staging.get_mapped_range(..).map_err(|e| err(format!("reading results back: {e}")))?;
        let out = reads
            .iter()
            .zip(&spans)
            .map(|(r, &(offset, bytes))| {
                let data = TensorData::from_bytes(r.dtype, &view[offset as usize..(offset + bytes) as usize])?;
                HostTensor::new(r.shape.to_vec(), data)
            })
            .collect();
        drop(view);
        staging.unmap();
        out
    }
}
