//! tandem-runtime: the graph IR, the op set and the backends that execute it.

pub mod backend;
pub mod error;
pub mod exec;
pub mod graph;
pub mod ops;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result};
pub use exec::{Outputs, Session, State};
pub use graph::{Dim, Graph, TensorType, ValueId};
pub use ops::{Op, OpKind};
pub use tensor::{DType, HostTensor, TensorData};
