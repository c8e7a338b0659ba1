//! Picking a backend at run time. `Session<B>` is generic over its backend; pipelines hold an
//! [`AnySession`] so that the backend can be chosen by a flag.
//!
//! Async at the core: [`Device::open`] and [`AnySession::run`] are futures, which the browser
//! awaits (WebGPU opens its device and reads results back asynchronously). Native callers use
//! the blocking wrappers ([`AnySession::new`], [`AnySession::run_blocking`]). In the browser,
//! the blocking wrappers still work where nothing has to wait (the CPU backend), and return an
//! error pointing to the async API where something would.

use anyhow::{Result, anyhow, bail};
use std::future::Future;
use std::str::FromStr;
use tandem_runtime::backend::Backend;
use tandem_runtime::backend::cpu::{CpuBackend, CpuOptions};
use tandem_runtime::graph::Weights;
use tandem_runtime::{Graph, HostTensor, Outputs, Session, State};

/// What `--backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    Cpu,
    /// wgpu on the best adapter there is, a software one (Mesa's lavapipe) included; WebGPU
    /// in the browser.
    Wgpu,
    /// An NVIDIA GPU through CUDA (needs the driver and NVRTC at run time).
    Cuda,
    /// Natively: CUDA when a GPU and NVRTC are there, else a real GPU through wgpu, else the
    /// CPU. In the browser: WebGPU when the browser gives an adapter, else the CPU.
    #[default]
    Auto,
}

impl BackendChoice {
    pub const NAMES: &'static [&'static str] = &["cpu", "wgpu", "cuda", "auto"];
}

impl FromStr for BackendChoice {
    type Err = anyhow::Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(BackendChoice::Cpu),
            "wgpu" => Ok(BackendChoice::Wgpu),
            "cuda" => Ok(BackendChoice::Cuda),
            "auto" => Ok(BackendChoice::Auto),
            _ => bail!("unknown backend '{name}' (valid: {})", BackendChoice::NAMES.join(", ")),
        }
    }
}

/// What `--precision` asks for: the precision of a text encoder's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 weights and products: the default and the reference.
    #[default]
    F32,
    /// The linear layers' weights stored as bf16 (half the memory). On a CPU with AVX-512
    /// BF16 the products run in bf16 too (activations rounded to bf16, f32 sums; MiniLM 1.5–1.9×
    /// the f32 speed), and where it has AMX so do the attention's; elsewhere, and on GPUs, the
    /// bf16 weights are widened to f32 in the kernels, so only the memory halves.
    Bf16,
}

impl Precision {
    pub const NAMES: &'static [&'static str] = &["f32", "bf16"];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Declares the graph's linear weights in this precision (see
    /// [`Graph::store_linear_weights_as`]) and, for bf16, lets its attention multiply in bf16
    /// where the CPU has AMX ([`Graph::allow_bf16_attention`]); how many nodes and weights
    /// changed.
    pub fn apply(self, graph: &mut Graph) -> usize {
        match self {
            Precision::F32 => 0,
            Precision::Bf16 => {
                graph.store_linear_weights_as(tandem_runtime::DType::BF16) + graph.allow_bf16_attention()
            }
        }
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => bail!("unknown precision '{name}' (valid: {})", Precision::NAMES.join(", ")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs `work` to completion without an executor. Natively this blocks; the browser cannot
/// block, so there work that completes at once runs and work that would wait is an error.
pub(crate) fn wait<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        pollster::block_on(work)
    }
    #[cfg(target_arch = "wasm32")]
    {
        use std::task::{Context, Poll, Waker};
        let mut work = std::pin::pin!(work);
        match work.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(out) => out,
            Poll::Pending => bail!("this call would block the browser: use the async API (`..._async`, `run`)"),
        }
    }
}

/// An opened backend. Cloning is cheap and shares the device (a GPU's device, queue and
/// compiled kernels): every session made on one [`Device`] uses the same.
#[derive(Clone)]
enum AnyBackend {
    Cpu(CpuBackend),
    #[cfg(feature = "wgpu")]
    Wgpu(WgpuBackend),
    #[cfg(feature = "cuda")]
    Cuda(CudaBackend),
}

/// A backend opened for a [`BackendChoice`], and why it was picked.
#[derive(Clone)]
pub struct Device {
    backend: AnyBackend,
    reason: String,
}

async fn wgpu_backend(preference: AdapterPreference) -> Result<WgpuBackend> {
    #[cfg(feature = "wgpu")]
    {
        WgpuBackend::new_with(preference).await.map_err(|e| anyhow!(e))
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = preference;
        bail!("this build has no wgpu backend (built without the 'wgpu' feature)")
    }
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
fn cuda_backend() -> Result<CudaBackend> {
    #[cfg(feature = "cuda")]
    {
        tandem_runtime::backend::cuda::cuda_available().map_err(|e| anyhow!(e))?;
        CudaBackend::new(0).map_err(|e| anyhow!(e))
    }
    #[cfg(not(feature = "cuda"))]
    bail!("this build has no CUDA backend (built without the 'cuda' feature)")
}

impl Device {
    /// Opens the backend `choice` asks for; for [`BackendChoice::Auto`], the best one there
    /// is, with the reason kept ([`Device::reason`]).
    pub async fn open(choice: BackendChoice) -> Result<Device> {
        let (backend, reason) = match choice {
            BackendChoice::Cpu => (AnyBackend::cpu(), String::new()),
            BackendChoice::Wgpu => (AnyBackend::wgpu(wgpu_backend(AdapterPreference::Any).await?), String::new()),
            BackendChoice::Cuda => (AnyBackend::cuda(cuda_backend()?), String::new()),
            BackendChoice::Auto => Self::auto().await,
        };
        Ok(Device { backend, reason })
    }

    /// The CPU backend with `options` (e.g. exact f32 products with quantized weights
    /// instead of llama.cpp's 8-bit activations).
    pub fn cpu_with(options: CpuOptions) -> Device {
        Device { backend: AnyBackend::Cpu(CpuBackend::with_options(options)), reason: String::new() }
    }

    /// `open` for callers without an executor (natively; see the module's note).
    pub fn open_blocking(choice: BackendChoice) -> Result<Device> {
        wait(Self::open(choice))
    }

    #[cfg(not(target_arch = "wasm32"))]
    async fn auto() -> (AnyBackend, String) {
        match cuda_backend() {
            Ok(cuda) => (AnyBackend::cuda(cuda), "auto: CUDA device found".into()),
            Err(no_cuda) => match wgpu_backend(AdapterPreference::HardwareOnly).await {
                Ok(gpu) => (AnyBackend::wgpu(gpu), format!("auto: no CUDA: {no_cuda}")),
                Err(no_gpu) => (AnyBackend::cpu(), format!("auto: no CUDA: {no_cuda}; no GPU adapter: {no_gpu}")),
            },
        }
    }

    /// In the browser any WebGPU adapter counts: the page cannot tell a software one from a
    /// slow GPU, and the browser picked it.
    #[cfg(target_arch = "wasm32")]
    async fn auto() -> (AnyBackend, String) {
        match wgpu_backend(AdapterPreference::Any).await {
            Ok(gpu) => (AnyBackend::wgpu(gpu), "auto: the browser offers a WebGPU adapter".into()),
            Err(no_gpu) => (AnyBackend::cpu(), format!("auto: {no_gpu}")),
        }
    }

    /// "cpu", "wgpu" or "cuda".
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            AnyBackend::Cpu(b) => b.name(),
            #[cfg(feature = "wgpu")]
            AnyBackend::Wgpu(b) => b.name(),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.name(),
        }
    }

    /// The device: the adapter or GPU and its driver, or the CPU.
    pub fn description(&self) -> String {
        match &self.backend {
            AnyBackend::Cpu(b) => b.device_description(),
            #[cfg(feature = "wgpu")]
            AnyBackend::Wgpu(b) => b.device_description(),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.device_description(),
        }
    }

    /// Why auto picked this backend (what it tried first and why that failed); empty when
    /// the backend was asked for by name.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether the backend runs `op` on inputs of these dtypes (see
    /// [`Backend::supports_dtypes`]).
    pub fn supports_dtypes(&self, op: &tandem_runtime::Op, inputs: &[tandem_runtime::DType]) -> bool {
        match &self.backend {
            AnyBackend::Cpu(b) => b.supports_dtypes(op, inputs),
            #[cfg(feature = "wgpu")]
            AnyBackend::Wgpu(b) => b.supports_dtypes(op, inputs),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => b.supports_dtypes(op, inputs),
        }
    }

    /// The CPU's options, on the CPU backend.
    pub fn cpu_options(&self) -> Option<CpuOptions> {
        match &self.backend {
            AnyBackend::Cpu(b) => Some(b.options()),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Why the GPU device was lost, once it has been (it stays lost); None on backends
    /// without a device to lose.
    pub fn lost(&self) -> Option<String> {
        match &self.backend {
            #[cfg(feature = "wgpu")]
            AnyBackend::Wgpu(b) => b.device_lost(),
            _ => None,
        }
    }
}

impl AnyBackend {
    fn cpu() -> Self {
        AnyBackend::Cpu(CpuBackend::new())
    }

    #[cfg_attr(not(feature = "wgpu"), allow(unused_variables))]
    fn wgpu(backend: WgpuBackend) -> Self {
        #[cfg(feature = "wgpu")]
        return AnyBackend::Wgpu(backend);
        #[cfg(not(feature = "wgpu"))]
        match backend {}
    }

    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn cuda(backend: CudaBackend) -> Self {
        #[cfg(feature = "cuda")]
        return AnyBackend::Cuda(backend);
        #[cfg(not(feature = "cuda"))]
        match backend {}
    }
}

/// A session on whichever backend was picked.
pub struct AnySession {
    session: Sessions,
    device: Device,
}

enum Sessions {
    Cpu(Session<CpuBackend>),
    #[cfg(feature = "wgpu")]
    Wgpu(Session<WgpuBackend>),
    #[cfg(feature = "cuda")]
    Cuda(Session<CudaBackend>),
}

/// Calls the same method on whichever session is inside.
macro_rules! each_session {
    ($self:expr, $s:ident => $body:expr) => {
        match &$self.session {
            Sessions::Cpu($s) => $body,
            #[cfg(feature = "wgpu")]
            Sessions::Wgpu($s) => $body,
            #[cfg(feature = "cuda")]
            Sessions::Cuda($s) => $body,
        }
    };
}

impl AnySession {
    /// Loads `graph` with the weights it declares from `weights` onto the chosen backend, and
    /// says on stderr which backend that is (and, for auto, why). Blocks: see
    /// [`AnySession::new_async`].
    pub fn new(choice: BackendChoice, graph: Graph, weights: &Weights) -> Result<Self> {
        wait(Self::new_async(choice, graph, weights))
    }

    /// Opens the chosen backend ([`Device::open`]) and loads the graph onto it.
    pub async fn new_async(choice: BackendChoice, graph: Graph, weights: &Weights) -> Result<Self> {
        let device = Device::open(choice).await?;
        let session = Self::on(&device, graph, weights)?;
        let why = if device.reason().is_empty() { String::new() } else { format!(" ({})", device.reason()) };
        eprintln!("backend: {}: {}{why}", device.backend_name(), device.description());
        Ok(session)
    }

    /// Loads `graph` with the weights it declares onto an opened device (uploading is
    /// synchronous on every backend, the browser's included).
    pub fn on(device: &Device, graph: Graph, weights: &Weights) -> Result<Self> {
        let session = match &device.backend {
            AnyBackend::Cpu(b) => Sessions::Cpu(Session::from_weights_file(b.clone(), graph, weights)?),
            #[cfg(feature = "wgpu")]
            AnyBackend::Wgpu(b) => Sessions::Wgpu(Session::from_weights_file(b.clone(), graph, weights)?),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => Sessions::Cuda(Session::from_weights_file(b.clone(), graph, weights)?),
        };
        Ok(AnySession { session, device: device.clone() })
    }

    /// `on` with the weights given as tensors, in `graph.weights` order (graphs built from a
    /// file the builder read, as decoders are from GGUF); each is freed once uploaded.
    pub fn on_tensors(device: &Device, graph: Graph, weights: Vec<HostTensor>) -> Result<Self> {
        let session = match &device.backend {
            AnyBackend::Cpu(b) => Sessions::Cpu(Session::new_owned(b.clone(), graph, weights)?),
            #[cfg(feature = "wgpu")]
            AnyBackend::Wgpu(b) => Sessions::Wgpu(Session::new_owned(b.clone(), graph, weights)?),
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda(b) => Sessions::Cuda(Session::new_owned(b.clone(), graph, weights)?),
        };
        Ok(AnySession { session, device: device.clone() })
    }

    pub fn backend_name(&self) -> &'static str {
        self.device.backend_name()
    }

    /// The device the session runs on: other graphs that should run beside this one (EBRM's
    /// aggregate beside its encoder) open sessions on it.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn device_description(&self) -> String {
        self.device.description()
    }

    pub fn graph(&self) -> &Graph {
        each_session!(self, s => s.graph())
    }

    /// Runs the graph to completion (inputs in the order of `graph().inputs`).
    pub async fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        each_session!(self, s => s.run(inputs).await.map_err(|e| anyhow!(e)))
    }

    /// `run` for callers without an executor.
    pub fn run_blocking(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        self.blocking(|| wait(self.run(inputs)))
    }

    /// Runs blocking `work` that runs this session (through [`wait`]) on a thread of rayon's
    /// global pool, the CPU backend's threads, when this is a CPU session (natively; a caller
    /// already on a pool thread runs it where it is), so that the run's many
    /// parallel ops start without waking a pool from outside and putting the caller to sleep
    /// each time: at a decoder step of a few milliseconds, those wake-ups cost a third of the
    /// time; and with the pool's other threads kept awake until the run ends.
    pub fn blocking<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        #[cfg(not(target_arch = "wasm32"))]
        if let Sessions::Cpu(_) = self.session
            && rayon::current_thread_index().is_none()
        {
            // The other threads of the pool stay awake for the run ([`keep_awake`]): an op
            // every few tens of microseconds (a query at batch 1) would otherwise find them
            // asleep each time, and waking them cost a quarter of MiniLM's batch-1 time.
            // Called from outside any pool, `rayon::scope` runs in rayon's global pool, the one
            // every other parallel call from outside (a weight's upload) uses too.
            let busy = std::sync::atomic::AtomicBool::new(true);
            return rayon::scope(|scope| {
                for _ in 1..rayon::current_num_threads() {
                    scope.spawn(|_| keep_awake(&busy));
                }
                let out = work();
                busy.store(false, std::sync::atomic::Ordering::Release);
                out
            });
        }
        work()
    }

    /// A state for the graph's declared states (see `Session::new_state`).
    pub fn new_state(&self, sizes: &[(&str, usize)]) -> Result<AnyState> {
        Ok(match &self.session {
            Sessions::Cpu(s) => AnyState::Cpu(s.new_state(sizes)?),
            #[cfg(feature = "wgpu")]
            Sessions::Wgpu(s) => AnyState::Wgpu(s.new_state(sizes)?),
            #[cfg(feature = "cuda")]
            Sessions::Cuda(s) => AnyState::Cuda(s.new_state(sizes)?),
        })
    }

    /// Copies rows `from..from + rows` of every state to the rows from `to` (see
    /// `Session::copy_state_rows`).
    pub fn copy_state_rows(&self, state: &mut AnyState, dim: &str, from: usize, to: usize, rows: usize) -> Result<()> {
        let result = match (&self.session, state) {
            (Sessions::Cpu(s), AnyState::Cpu(st)) => s.copy_state_rows(st, dim, from, to, rows),
            #[cfg(feature = "wgpu")]
            (Sessions::Wgpu(s), AnyState::Wgpu(st)) => s.copy_state_rows(st, dim, from, to, rows),
            #[cfg(feature = "cuda")]
            (Sessions::Cuda(s), AnyState::Cuda(st)) => s.copy_state_rows(st, dim, from, to, rows),
            #[allow(unreachable_patterns)]
            _ => bail!("the state was made by a session on another backend"),
        };
        result.map_err(|e| anyhow!(e))
    }

    /// Overwrites rows `first..` of state `name` with `tensor` (see
    /// `Session::write_state_rows`).
    pub async fn write_state_rows(
        &self,
        state: &mut AnyState,
        name: &str,
        first: usize,
        tensor: &HostTensor,
    ) -> Result<()> {
        let result = match (&self.session, state) {
            (Sessions::Cpu(s), AnyState::Cpu(st)) => s.write_state_rows(st, name, first, tensor).await,
            #[cfg(feature = "wgpu")]
            (Sessions::Wgpu(s), AnyState::Wgpu(st)) => s.write_state_rows(st, name, first, tensor).await,
            #[cfg(feature = "cuda")]
            (Sessions::Cuda(s), AnyState::Cuda(st)) => s.write_state_rows(st, name, first, tensor).await,
            #[allow(unreachable_patterns)]
            _ => bail!("the state was made by a session on another backend"),
        };
        result.map_err(|e| anyhow!(e))
    }

    /// Runs the graph with its state, reading back only `outputs` (see `Session::run_with`).
    pub async fn run_with(
        &self,
        inputs: &[HostTensor],
        state: &mut AnyState,
        outputs: Outputs<'_>,
    ) -> Result<Vec<HostTensor>> {
        let result = match (&self.session, state) {
            (Sessions::Cpu(s), AnyState::Cpu(st)) => s.run_with(inputs, Some(st), outputs).await,
            #[cfg(feature = "wgpu")]
            (Sessions::Wgpu(s), AnyState::Wgpu(st)) => s.run_with(inputs, Some(st), outputs).await,
            #[cfg(feature = "cuda")]
            (Sessions::Cuda(s), AnyState::Cuda(st)) => s.run_with(inputs, Some(st), outputs).await,
            #[allow(unreachable_patterns)]
            _ => bail!("the state was made by a session on another backend"),
        };
        result.map_err(|e| anyhow!(e))
    }

    /// `run_with` for callers without an executor.
    pub fn run_with_blocking(
        &self,
        inputs: &[HostTensor],
        state: &mut AnyState,
        outputs: Outputs<'_>,
    ) -> Result<Vec<HostTensor>> {
        self.blocking(|| wait(self.run_with(inputs, state, outputs)))
    }
}

/// Keeps a pool thread looking for work while a run is `busy` (so that the run's next
/// parallel op finds it awake instead of waking it), and returns once the run is over or after
/// `IDLE` without work: a keeper that runs nested under the run's own thread (which can pick it
/// up while waiting for stolen work) must not wait for the run to end.
#[cfg(not(target_arch = "wasm32"))]
fn keep_awake(busy: &std::sync::atomic::AtomicBool) {
    const IDLE: std::time::Duration = std::time::Duration::from_micros(200);
    let mut idle_since = std::time::Instant::now();
    while busy.load(std::sync::atomic::Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_since = std::time::Instant::now();
        } else if idle_since.elapsed() > IDLE {
            return;
        } else {
            std::hint::spin_loop();
        }
    }
}

/// A state ([`tandem_runtime::State`]) of an [`AnySession`], on its backend.
pub enum AnyState {
    Cpu(State<CpuBackend>),
    #[cfg(feature = "wgpu")]
    Wgpu(State<WgpuBackend>),
    #[cfg(feature = "cuda")]
    Cuda(State<CudaBackend>),
}

impl AnyState {
    /// Device bytes the state holds.
    pub fn bytes(&self) -> usize {
        match self {
            AnyState::Cpu(s) => s.bytes(),
            #[cfg(feature = "wgpu")]
            AnyState::Wgpu(s) => s.bytes(),
            #[cfg(feature = "cuda")]
            AnyState::Cuda(s) => s.bytes(),
        }
    }
}

#[cfg(feature = "cuda")]
use tandem_runtime::backend::cuda::CudaBackend;
#[cfg(feature = "wgpu")]
use tandem_runtime::backend::wgpu::{AdapterPreference, WgpuBackend};

/// Stand-ins for builds without a backend: it can never be made, so no session holds one.
#[cfg(not(feature = "wgpu"))]
#[derive(Clone, Copy)]
enum AdapterPreference {
    Any,
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    HardwareOnly,
}
#[cfg(not(feature = "wgpu"))]
#[derive(Clone)]
enum WgpuBackend {}
#[cfg(not(feature = "cuda"))]
#[derive(Clone)]
enum CudaBackend {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_device_is_named_and_has_no_reason() {
        let device = Device::open_blocking(BackendChoice::Cpu).unwrap();
        assert_eq!(device.backend_name(), "cpu");
        assert!(device.reason().is_empty());
        assert!(device.lost().is_none());
    }
}
