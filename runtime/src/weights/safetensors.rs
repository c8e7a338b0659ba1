//! safetensors files: tandem's own weight files (beside a graph file) and Hugging Face
//! checkpoints.
//!
//! Block-quantized weights (GGUF's Q4_K and friends) have no safetensors dtype. tandem stores
//! them as `U8` with gguf-py's byte shape (`quant_shape_to_byte_shape`: the last dimension
//! replaced by its size in bytes, so each row is whole blocks) and records the dtype in the
//! file's `__metadata__` under `tandem.dtype.<tensor name>` (for example `q4_k`). Readers see
//! the logical dtype and shape; the graph that uses the weight declares the same dtype.

use super::FileBytes;
use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor, TensorData};
use std::collections::HashMap;
use std::path::Path;

/// The metadata key prefix that marks a `U8` tensor as block-quantized.
pub const QUANT_DTYPE_KEY: &str = "tandem.dtype.";

/// One tensor of a safetensors file as stored: `dtype` is the file's (`F32`, `I64`, ...) or
/// the quantized dtype's name; `shape` is logical (values, not bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: usize,
}

/// A safetensors file, checked on open (header bounds, offsets, sizes) by the safetensors
/// crate, which refuses headers over 100 MB and offsets outside the file; quantized entries
/// are checked against their byte shape on open too.
pub struct Weights {
    path: std::path::PathBuf,
    bytes: FileBytes,
    names: Vec<String>,
    /// Tensors stored as block-quantized bytes, by name.
    quantized: HashMap<String, DType>,
}

impl Weights {
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_parts(path, FileBytes::open(path)?)
    }

    /// Weights from bytes in memory; `path` only names them in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::from_parts(path, FileBytes::Owned(bytes))
    }

    fn from_parts(path: &Path, bytes: FileBytes) -> Result<Self> {
        let bad = |m: String| Error::file(path, m);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut quantized = HashMap::new();
        for (key, value) in meta.metadata().iter().flatten() {
            let Some(name) = key.strip_prefix(QUANT_DTYPE_KEY) else { continue };
            let dtype = DType::from_name(value)
                .filter(|d| d.is_quantized())
                .ok_or_else(|| bad(format!("metadata '{key}' names '{value}', which is not a quantized dtype")))?;
            let t = st.tensor(name).map_err(|_| bad(format!("metadata '{key}' names a missing tensor")))?;
            if t.dtype() != safetensors::Dtype::U8 {
                return Err(bad(format!("quantized tensor '{name}' is stored as {:?}, not U8", t.dtype())));
            }
            logical_shape(t.shape(), dtype).map_err(|m| bad(format!("tensor '{name}': {m}")))?;
            quantized.insert(name.to_string(), dtype);
        }
        Ok(Weights { path: path.to_path_buf(), bytes, names, quantized })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn view(&self) -> safetensors::SafeTensors<'_> {
        // Checked in `from_parts`; the bytes are immutable since.
        safetensors::SafeTensors::deserialize(&self.bytes).expect("validated on open")
    }

    /// Logical shape of a tensor (values, also for quantized ones), if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let t = self.view().tensor(name).ok()?;
        match self.quantized.get(name) {
            Some(&dtype) => logical_shape(t.shape(), dtype).ok(),
            None => Some(t.shape().to_vec()),
        }
    }

    /// Every tensor, sorted by name, as stored.
    pub fn infos(&self) -> Vec<WeightInfo> {
        let st = self.view();
        self.names
            .iter()
            .filter_map(|name| {
                let t = st.tensor(name).ok()?;
                let dtype = self.quantized.get(name).map_or_else(|| format!("{:?}", t.dtype()), |d| d.name().into());
                Some(WeightInfo { name: name.clone(), dtype, shape: self.shape(name)?, bytes: t.data().len() })
            })
            .collect()
    }

    /// The block-quantized dtype a tensor is stored in, if it is one (a graph declares the
    /// weight in it, so that the kernels read the blocks as they are).
    pub fn quantized(&self, name: &str) -> Option<DType> {
        self.quantized.get(name).copied()
    }

    /// Whether the tensor is present and holds floats (f32, f16 or bf16).
    pub fn is_float(&self, name: &str) -> bool {
        use safetensors::Dtype::{BF16, F16, F32};
        !self.quantized.contains_key(name)
            && self.view().tensor(name).is_ok_and(|t| matches!(t.dtype(), F32 | F16 | BF16))
    }

    /// Reads a tensor as `dtype`: float files convert to f32, f16 or bf16; u32 reads u32; a
    /// quantized dtype reads the same quantized tensor's blocks, and f32 dequantizes one.
    pub fn tensor(&self, name: &str, dtype: DType) -> Result<HostTensor> {
        let st = self.view();
        let t = st.tensor(name).map_err(|_| Error::file(&self.path, format!("tensor '{name}' is missing")))?;
        let bad = |m: String| Error::file(&self.path, format!("tensor '{name}': {m}"));
        let raw = t.data();
        let data = if let Some(&stored) = self.quantized.get(name) {
            let shape = logical_shape(t.shape(), stored).map_err(bad)?;
            let blocks = TensorData::from_bytes(stored, raw)?;
            let blocks = HostTensor::new(shape, blocks).map_err(|e| bad(e.to_string()))?;
            return match dtype {
                d if d == stored => Ok(blocks),
                DType::F32 => HostTensor::f32(blocks.shape.clone(), blocks.to_f32()),
                _ => Err(bad(format!("holds {stored} blocks, which do not convert to {dtype}"))),
            };
        } else {
            let floats = || -> Result<Vec<f32>> {
                Ok(match t.dtype() {
                    safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec(raw),
                    safetensors::Dtype::F16 => {
                        raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                    }
                    safetensors::Dtype::BF16 => {
                        raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
                    }
                    other => return Err(bad(format!("has dtype {other:?}, expected a float type"))),
                })
            };
            match (dtype, t.dtype()) {
                (DType::F32, _) => TensorData::F32(floats()?),
                (DType::F16, safetensors::Dtype::F16) => TensorData::F16(bytemuck::pod_collect_to_vec(raw)),
                (DType::F16, _) => TensorData::F16(floats()?.into_iter().map(half::f16::from_f32).collect()),
                (DType::BF16, safetensors::Dtype::BF16) => TensorData::BF16(bytemuck::pod_collect_to_vec(raw)),
                (DType::BF16, _) => TensorData::BF16(floats()?.into_iter().map(half::bf16::from_f32).collect()),
                (DType::U32, safetensors::Dtype::U32) => TensorData::U32(bytemuck::pod_collect_to_vec(raw)),
                (_, other) => return Err(bad(format!("has dtype {other:?}, which does not convert to {dtype}"))),
            }
        };
        HostTensor::new(t.shape().to_vec(), data).map_err(|e| bad(e.to_string()))
    }

    /// Writes named tensors as a safetensors file.
    pub fn write(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
        let bytes = Self::serialize(path, tensors)?;
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
    }

    /// Weights held in memory, made from named tensors (an adapter applied at load, a test);
    /// `path` only names them in errors.
    pub fn from_tensors(path: &Path, tensors: &[(String, HostTensor)]) -> Result<Self> {
        Self::from_bytes(path, Self::serialize(path, tensors)?)
    }

    fn serialize(path: &Path, tensors: &[(String, HostTensor)]) -> Result<Vec<u8>> {
        let mut metadata = HashMap::new();
        let views = tensors
            .iter()
            .map(|(name, t)| {
                let bad = |m: String| Error::file(path, format!("tensor '{name}': {m}"));
                let (dtype, shape) = match t.dtype() {
                    DType::F32 => (safetensors::Dtype::F32, t.shape.clone()),
                    DType::F16 => (safetensors::Dtype::F16, t.shape.clone()),
                    DType::BF16 => (safetensors::Dtype::BF16, t.shape.clone()),
                    DType::U32 => (safetensors::Dtype::U32, t.shape.clone()),
                    q => {
                        metadata.insert(format!("{QUANT_DTYPE_KEY}{name}"), q.name().to_string());
                        (safetensors::Dtype::U8, byte_shape(&t.shape, q).map_err(bad)?)
                    }
                };
                let view = safetensors::tensor::TensorView::new(dtype, shape, t.data.as_bytes())
                    .map_err(|e| bad(e.to_string()))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = (!metadata.is_empty()).then_some(metadata);
        safetensors::serialize(views, metadata).map_err(|e| Error::file(path, format!("cannot serialize: {e}")))
    }
}

/// gguf-py's `quant_shape_to_byte_shape`: the last dimension in bytes (rows of whole blocks).
fn byte_shape(shape: &[usize], dtype: DType) -> Result<Vec<usize>, String> {
    let (&last, rest) = shape.split_last().ok_or_else(|| format!("a {dtype} tensor needs at least one dimension"))?;
    let row = dtype
        .bytes_for(last)
        .ok_or_else(|| format!("a row of {last} values is not a whole number of {dtype} blocks"))?;
    Ok(rest.iter().copied().chain([row]).collect())
}

/// The inverse of [`byte_shape`].
fn logical_shape(stored: &[usize], dtype: DType) -> Result<Vec<usize>, String> {
    let layout = dtype.block();
    let (&last, rest) = stored.split_last().ok_or_else(|| format!("a {dtype} tensor needs at least one dimension"))?;
    if !last.is_multiple_of(layout.bytes) {
        return Err(format!("rows of {last} bytes are not whole {dtype} blocks of {} bytes", layout.bytes));
    }
    Ok(rest.iter().copied().chain([last / layout.bytes * layout.values]).collect())
}
