//! Soft logic: t-norm families and the EBRM aggregate. They live in the runtime as the op
//! family `soft_logic` / `aggregate` (`tandem_runtime::ops::softlogic`, where the formula is
//! documented and tested), so that the same aggregate runs on the CPU, through wgpu and on
//! CUDA; this module re-exports what EBRM's callers use.

pub use tandem_runtime::ops::softlogic::{
    AggregateInputs, AggregateParams, Connective, Logic, SoftLogicParams, aggregate_cpu, clamp01, soft_logic_cpu,
};
