//! Element types and host-side tensors: what callers hand to a session and get back.
//!
//! Plain types (f32, f16, bf16, u32) store one value per element. Block-quantized types
//! (GGUF's Q8_0 … Q6_K) store values in blocks of 32 or 256, each block holding its scales
//! next to the packed integers, so a tensor's byte size is a property of its value count and
//! exists only for whole blocks: [`DType::bytes_for`] is the one place that computes it.

use crate::error::{Error, Result};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// New variants go at the end: graph files store the variant's index. The quantized ones keep
/// GGUF's names (`Q4_K`, not `Q4K`), which is how every tool and file spells them.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F32,
    F16,
    U32,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

/// How a dtype packs values: `values` values in `bytes` bytes (one value per block for the
/// plain types). The quantized layouts are ggml's (see `weights::quant` for their fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    pub values: usize,
    pub bytes: usize,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 11] = [
        DType::F32,
        DType::F16,
        DType::U32,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    pub const fn block(self) -> BlockLayout {
        let (values, bytes) = match self {
            DType::F32 | DType::U32 => (1, 4),
            DType::F16 | DType::BF16 => (1, 2),
            // f16 scale, 32 × i8
            DType::Q8_0 => (32, 2 + 32),
            // f16 scale, 32 × 4 bits
            DType::Q4_0 => (32, 2 + 16),
            // f16 scale and min, 32 × 4 bits
            DType::Q4_1 => (32, 2 + 2 + 16),
            // f16 scale, 32 high bits, 32 × 4 low bits
            DType::Q5_0 => (32, 2 + 4 + 16),
            // f16 scale and min, 12 bytes of 6-bit sub-block scales and mins, 256 × 4 bits
            DType::Q4_K => (256, 2 + 2 + 12 + 128),
            // as Q4_K plus 256 high bits
            DType::Q5_K => (256, 2 + 2 + 12 + 32 + 128),
            // 256 × 4 low bits, 256 × 2 high bits, 16 × i8 sub-block scales, f16 scale
            DType::Q6_K => (256, 128 + 64 + 16 + 2),
        };
        BlockLayout { values, bytes }
    }

    /// Bytes that `n` values take: `None` when `n` is not a whole number of blocks or the
    /// size does not fit in `usize`.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let BlockLayout { values, bytes } = self.block();
        if !n.is_multiple_of(values) {
            return None;
        }
        (n / values).checked_mul(bytes)
    }

    /// Bytes of a tensor of `shape` (row-major): `bytes_for` of its element count, or an
    /// error naming the shape when that overflows or is not whole blocks.
    pub fn bytes_for_shape(self, shape: &[usize]) -> Result<usize> {
        shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| self.bytes_for(n))
            .ok_or_else(|| Error::input(format!("a {self} tensor of shape {shape:?} is too large or not whole blocks")))
    }

    /// Whether values are stored in blocks with shared scales (not one per element).
    pub fn is_quantized(self) -> bool {
        self.block().values > 1
    }

    /// The code kernels receive in their params (`dtype` fields in WGSL and CUDA).
    pub fn code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::U32 => 2,
            DType::BF16 => 3,
            DType::Q8_0 => 4,
            DType::Q4_0 => 5,
            DType::Q4_1 => 6,
            DType::Q5_0 => 7,
            DType::Q4_K => 8,
            DType::Q5_K => 9,
            DType::Q6_K => 10,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q4_K => "q4_k",
            DType::Q5_K => "q5_k",
            DType::Q6_K => "q6_k",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Raw bytes of a block-quantized tensor. The fields are private so that every value holds
/// whole blocks of a quantized dtype, which is what lets dequantizing it never fail.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocks {
    dtype: DType,
    bytes: Vec<u8>,
}

impl Blocks {
    pub fn new(dtype: DType, bytes: Vec<u8>) -> Result<Self> {
        let layout = dtype.block();
        if !dtype.is_quantized() {
            return Err(Error::input(format!("{dtype} is not a block-quantized dtype")));
        }
        if !bytes.len().is_multiple_of(layout.bytes) {
            return Err(Error::input(format!(
                "{} bytes is not a whole number of {dtype} blocks ({} bytes each)",
                bytes.len(),
                layout.bytes
            )));
        }
        Ok(Blocks { dtype, bytes })
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Number of values the blocks hold.
    pub fn len(&self) -> usize {
        let layout = self.dtype.block();
        self.bytes.len() / layout.bytes * layout.values
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Tensor data on the host, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    U32(Vec<u32>),
    BF16(Vec<bf16>),
    /// Block-quantized values, as stored in the file (GGUF's layout).
    Blocks(Blocks),
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::U32(_) => DType::U32,
            TensorData::BF16(_) => DType::BF16,
            TensorData::Blocks(b) => b.dtype,
        }
    }
    /// Number of values (not bytes, not blocks).
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::U32(v) => v.len(),
            TensorData::BF16(v) => v.len(),
            TensorData::Blocks(b) => b.len(),
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
            TensorData::BF16(v) => bytemuck::cast_slice(v),
            TensorData::Blocks(b) => &b.bytes,
        }
    }
    /// Builds typed data from little-endian bytes (copying, so alignment never matters).
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Result<Self> {
        let unit = dtype.block().bytes;
        if !bytes.len().is_multiple_of(unit) {
            let what = if dtype.is_quantized() { "blocks" } else { "elements" };
            return Err(Error::Other(format!("{} bytes is not a whole number of {dtype} {what}", bytes.len())));
        }
        Ok(match dtype {
            DType::F32 => TensorData::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => TensorData::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::U32 => TensorData::U32(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => TensorData::BF16(bytemuck::pod_collect_to_vec(bytes)),
            _ => TensorData::Blocks(Blocks::new(dtype, bytes.to_vec())?),
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
    /// Checks that the data holds exactly the shape's values; for block-quantized data that
    /// means `dtype.bytes_for(n)` bytes (a shape that is not whole blocks is refused).
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self> {
        let dtype = data.dtype();
        let bytes = dtype.bytes_for_shape(&shape)?;
        if bytes != data.as_bytes().len() {
            let n: usize = shape.iter().product();
            return Err(Error::input(format!(
                "shape {shape:?} holds {n} {dtype} values ({bytes} bytes) but {} values ({} bytes) were given",
                data.len(),
                data.as_bytes().len()
            )));
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
    /// The values as f32: f16 and bf16 widened, u32 converted, blocks dequantized (exactly
    /// as gguf-py does, see `weights::quant`).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::U32(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            TensorData::Blocks(b) => {
                let mut out = vec![0.0; b.len()];
                crate::weights::quant::dequantize(b.dtype, &b.bytes, &mut out)
                    .expect("Blocks holds whole blocks of a quantized dtype");
                out
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_for_counts_whole_blocks_only() {
        assert_eq!(DType::F32.bytes_for(3), Some(12));
        assert_eq!(DType::BF16.bytes_for(3), Some(6));
        assert_eq!(DType::Q8_0.bytes_for(64), Some(68));
        assert_eq!(DType::Q8_0.bytes_for(33), None);
        assert_eq!(DType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(DType::Q6_K.bytes_for(256), Some(210));
        assert_eq!(DType::Q5_K.bytes_for(255), None);
        assert_eq!(DType::F32.bytes_for(usize::MAX), None);
        assert!(DType::F32.bytes_for_shape(&[usize::MAX, 2]).is_err());
        assert_eq!(DType::Q4_0.bytes_for_shape(&[2, 32]).unwrap(), 36);
        assert!(DType::Q4_1.is_quantized() && !DType::BF16.is_quantized());
    }

    #[test]
    fn codes_and_names_are_distinct_and_existing_codes_stay() {
        assert_eq!((DType::F32.code(), DType::F16.code(), DType::U32.code()), (0, 1, 2));
        for (i, a) in DType::ALL.iter().enumerate() {
            assert_eq!(DType::from_name(a.name()), Some(*a));
            for b in &DType::ALL[i + 1..] {
                assert!(a.code() != b.code() && a.name() != b.name(), "{a} and {b}");
            }
        }
    }

    #[test]
    fn host_tensor_checks_bytes_against_shape() {
        let blocks = TensorData::from_bytes(DType::Q8_0, &[0u8; 68]).unwrap();
        assert_eq!(blocks.len(), 64);
        assert!(HostTensor::new(vec![2, 32], blocks.clone()).is_ok());
        assert!(HostTensor::new(vec![64], blocks.clone()).is_ok());
        let err = HostTensor::new(vec![3, 32], blocks.clone()).unwrap_err().to_string();
        assert!(err.contains("68 bytes were given") || err.contains("(68 bytes)"), "{err}");
        assert!(HostTensor::new(vec![2, 16], blocks).is_err(), "half a block per row");
        assert!(TensorData::from_bytes(DType::Q4_K, &[0u8; 145]).is_err());
        assert!(Blocks::new(DType::F32, vec![0; 4]).is_err());
        let bf = TensorData::from_bytes(DType::BF16, &[0x80, 0x3f]).unwrap();
        assert_eq!(HostTensor::new(vec![1], bf).unwrap().to_f32(), vec![1.0]);
    }
}
