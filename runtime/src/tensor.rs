//! Element types and host-side tensors: what callers hand to a session and get back.

use crate::error::{Error, Result};
use half::f16;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F32,
    F16,
    U32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
    /// The code kernels receive in their params (`dtype` fields in WGSL and CUDA).
    pub fn code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::U32 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Tensor data on the host, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    U32(Vec<u32>),
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::U32(_) => DType::U32,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::U32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            TensorData::F32(v) => bytemuck::cast_slice(v),
            TensorData::F16(v) => bytemuck::cast_slice(v),
            TensorData::U32(v) => bytemuck::cast_slice(v),
        }
    }
    /// Builds typed data from little-endian bytes (copying, so alignment never matters).
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Result<Self> {
        if !bytes.len().is_multiple_of(dtype.size()) {
            return Err(Error::Other(format!("{} bytes is not a whole number of {dtype} elements", bytes.len())));
        }
        Ok(match dtype {
            DType::F32 => TensorData::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => TensorData::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::U32 => TensorData::U32(bytemuck::pod_collect_to_vec(bytes)),
        })
    }
}

/// A tensor in host memory: shape (row-major) plus typed data.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::input(format!("shape {shape:?} holds {n} elements but {} were given", data.len())));
        }
        Ok(HostTensor { shape, data })
    }
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        Self::new(shape, TensorData::F32(data))
    }
    pub fn u32(shape: Vec<usize>, data: Vec<u32>) -> Result<Self> {
        Self::new(shape, TensorData::U32(data))
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The values as f32 (f16 widened, u32 converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::U32(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_u32(&self) -> Option<&[u32]> {
        match &self.data {
            TensorData::U32(v) => Some(v),
            _ => None,
        }
    }
}
