//! Picking a backend at run time. `Session<B>` is generic over its backend; pipelines hold an
//! [`AnySession`] so that the backend can be chosen by a flag.

use anyhow::{Result, anyhow, bail};
use std::str::FromStr;
use tandem_runtime::backend::Backend;
use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::graph::Weights;
use tandem_runtime::{Graph, HostTensor, Session};

/// What `--backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    Cpu,
    /// wgpu on the best adapter there is, a software one (Mesa's lavapipe) included.
    Wgpu,
    /// An NVIDIA GPU through CUDA (needs the driver and NVRTC at run time).
    Cuda,
    /// CUDA when a GPU and NVRTC are there, else a real GPU through wgpu, else the CPU.
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

/// A session on whichever backend was picked.
pub enum AnySession {
    Cpu(Session<CpuBackend>),
    #[cfg(feature = "wgpu")]
    Wgpu(Session<WgpuBackend>),
    #[cfg(feature = "cuda")]
    Cuda(Session<CudaBackend>),
}

/// Calls the same method on whichever session is inside.
macro_rules! each_session {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            AnySession::Cpu($s) => $body,
            #[cfg(feature = "wgpu")]
            AnySession::Wgpu($s) => $body,
            #[cfg(feature = "cuda")]
            AnySession::Cuda($s) => $body,
        }
    };
}

fn wgpu_backend(preference: AdapterPreference) -> Result<WgpuBackend> {
    #[cfg(feature = "wgpu")]
    {
        WgpuBackend::new_with_blocking(preference).map_err(|e| anyhow!(e))
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = preference;
        bail!("this build has no wgpu backend (built without the 'wgpu' feature)")
    }
}

fn cuda_backend() -> Result<CudaBackend> {
    #[cfg(feature = "cuda")]
    {
        tandem_runtime::backend::cuda::cuda_available().map_err(|e| anyhow!(e))?;
        CudaBackend::new(0).map_err(|e| anyhow!(e))
    }
    #[cfg(not(feature = "cuda"))]
    bail!("this build has no CUDA backend (built without the 'cuda' feature)")
}

impl AnySession {
    /// Loads `graph` with the weights it declares from `weights` onto the chosen backend, and
    /// says on stderr which backend that is (and, for auto, why).
    pub fn new(choice: BackendChoice, graph: Graph, weights: &Weights) -> Result<Self> {
        let (session, why) = match choice {
            BackendChoice::Cpu => (Self::cpu(graph, weights)?, String::new()),
            BackendChoice::Wgpu => (Self::wgpu(wgpu_backend(AdapterPreference::Any)?, graph, weights)?, String::new()),
            BackendChoice::Cuda => (Self::cuda(cuda_backend()?, graph, weights)?, String::new()),
            BackendChoice::Auto => match cuda_backend() {
                Ok(cuda) => (Self::cuda(cuda, graph, weights)?, " (auto: CUDA device found)".into()),
                Err(no_cuda) => match wgpu_backend(AdapterPreference::HardwareOnly) {
                    Ok(gpu) => (Self::wgpu(gpu, graph, weights)?, format!(" (auto: no CUDA: {no_cuda})")),
                    Err(no_gpu) => {
                        (Self::cpu(graph, weights)?, format!(" (auto: no CUDA: {no_cuda}; no GPU adapter: {no_gpu})"))
                    }
                },
            },
        };
        eprintln!("backend: {}: {}{why}", session.backend_name(), session.device_description());
        Ok(session)
    }

    fn cpu(graph: Graph, weights: &Weights) -> Result<Self> {
        Ok(AnySession::Cpu(Session::from_weights_file(CpuBackend::new(), graph, weights)?))
    }

    #[cfg_attr(not(feature = "wgpu"), allow(unused_variables))]
    fn wgpu(backend: WgpuBackend, graph: Graph, weights: &Weights) -> Result<Self> {
        #[cfg(feature = "wgpu")]
        return Ok(AnySession::Wgpu(Session::from_weights_file(backend, graph, weights)?));
        #[cfg(not(feature = "wgpu"))]
        match backend {}
    }

    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn cuda(backend: CudaBackend, graph: Graph, weights: &Weights) -> Result<Self> {
        #[cfg(feature = "cuda")]
        return Ok(AnySession::Cuda(Session::from_weights_file(backend, graph, weights)?));
        #[cfg(not(feature = "cuda"))]
        match backend {}
    }

    pub fn backend_name(&self) -> &'static str {
        each_session!(self, s => s.backend().name())
    }

    pub fn device_description(&self) -> String {
        each_session!(self, s => s.backend().device_description())
    }

    pub fn graph(&self) -> &Graph {
        each_session!(self, s => s.graph())
    }

    /// Runs the graph to completion (inputs in the order of `graph().inputs`).
    pub fn run_blocking(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        each_session!(self, s => s.run_blocking(inputs).map_err(|e| anyhow!(e)))
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
    HardwareOnly,
}
#[cfg(not(feature = "wgpu"))]
enum WgpuBackend {}
#[cfg(not(feature = "cuda"))]
enum CudaBackend {}
