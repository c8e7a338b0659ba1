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
    Wgpu,
    /// A real GPU through wgpu when there is one, else the CPU.
    #[default]
    Auto,
}

impl BackendChoice {
    pub const NAMES: &'static [&'static str] = &["cpu", "wgpu", "auto"];
}

impl FromStr for BackendChoice {
    type Err = anyhow::Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(BackendChoice::Cpu),
            "wgpu" => Ok(BackendChoice::Wgpu),
            "auto" => Ok(BackendChoice::Auto),
            _ => bail!("unknown backend '{name}' (valid: {})", BackendChoice::NAMES.join(", ")),
        }
    }
}

/// A session on whichever backend was picked.
pub enum AnySession {
    Cpu(Session<CpuBackend>),
    // WGPU: add `Wgpu(Session<tandem_runtime::backend::wgpu::WgpuBackend>)` here and in the
    // matches below once the wgpu backend lands (`WgpuBackend::new_blocking()`), and pick it
    // in `AnySession::new`.
}

impl AnySession {
    /// Loads `graph` with the weights it declares from `weights` onto the chosen backend, and
    /// says on stderr which backend that is.
    pub fn new(choice: BackendChoice, graph: Graph, weights: &Weights) -> Result<Self> {
        let session = match choice {
            BackendChoice::Cpu => AnySession::Cpu(Session::from_weights_file(CpuBackend::new(), graph, weights)?),
            // WGPU: try `WgpuBackend::new_blocking()`; on failure fall back to the CPU for Auto
            // (saying why), and fail for an explicit Wgpu.
            BackendChoice::Wgpu => bail!("the wgpu backend is not available in this build yet (use --backend cpu)"),
            BackendChoice::Auto => AnySession::Cpu(Session::from_weights_file(CpuBackend::new(), graph, weights)?),
        };
        let why = match choice {
            BackendChoice::Auto => " (auto: no GPU backend available)",
            _ => "",
        };
        eprintln!("backend: {}{why}: {}", session.backend_name(), session.device_description());
        Ok(session)
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            AnySession::Cpu(s) => s.backend().name(),
        }
    }

    pub fn device_description(&self) -> String {
        match self {
            AnySession::Cpu(s) => s.backend().device_description(),
        }
    }

    pub fn graph(&self) -> &Graph {
        match self {
            AnySession::Cpu(s) => s.graph(),
        }
    }

    /// Runs the graph to completion (inputs in the order of `graph().inputs`).
    pub fn run_blocking(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        match self {
            AnySession::Cpu(s) => s.run_blocking(inputs).map_err(|e| anyhow!(e)),
        }
    }
}
