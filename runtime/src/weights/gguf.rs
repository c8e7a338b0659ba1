//! A bounded reader of GGUF files (versions 2 and 3), the format llama.cpp's models ship in.
//!
//! Layout (all little-endian): `"GGUF" | version: u32 | tensor count: u64 | metadata count:
//! u64 | metadata key/values | tensor infos | padding to general.alignment | data`. A string is
//! `length: u64 | UTF-8 bytes`; a metadata value is `type: u32 | value`, arrays being `element
//! type: u32 | count: u64 | elements` (arrays may nest). A tensor info is `name | dims: u32 |
//! dims × u64 (innermost first) | ggml type: u32 | offset: u64` (from the data section start).
//!
//! The file comes from outside, so `open` checks everything before anything is used: every
//! count and length against the bytes that remain before allocating for it, nesting depth,
//! each tensor's type, dims and byte extent, alignment, and that no two tensors overlap. Each
//! error names the file and the key or tensor at fault.

use super::FileBytes;
use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor, TensorData};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml's default when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays nest this deep at most (real files nest none; recursion stays bounded).
const MAX_NESTING: usize = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, typed (a vocabulary of 150k strings stays a `Vec<String>`).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The element type's GGUF name (`string`, `i32`, ...).
    pub fn element_type(&self) -> &'static str {
        TYPE_NAMES[match self {
            MetaArray::U8(_) => 0,
            MetaArray::I8(_) => 1,
            MetaArray::U16(_) => 2,
            MetaArray::I16(_) => 3,
            MetaArray::U32(_) => 4,
            MetaArray::I32(_) => 5,
            MetaArray::F32(_) => 6,
            MetaArray::Bool(_) => 7,
            MetaArray::String(_) => 8,
            MetaArray::Array(_) => 9,
            MetaArray::U64(_) => 10,
            MetaArray::I64(_) => 11,
            MetaArray::F64(_) => 12,
        }]
    }
}

/// GGUF's value type names, indexed by type code.
const TYPE_NAMES: [&str; 13] =
    ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"];
/// Smallest encoding of one value of each type, for bounding counts before allocating
/// (a string is at least its length field, an array its type and count).
const MIN_BYTES: [u64; 13] = [1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8];

impl MetaValue {
    /// The GGUF type name (`u32`, `string`, `array`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::F32(_) => "f32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F64(_) => "f64",
        }
    }
    /// The value as an integer when it is one (any width, signed or not).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// One tensor as the file describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// GGUF's order: innermost (contiguous) dimension first, as ggml's `ne`.
    pub dims: Vec<u64>,
    /// From the start of the data section.
    pub offset: u64,
    pub bytes: usize,
}

impl TensorInfo {
    /// The shape in row-major order (outermost first): GGUF's dims reversed. A GGUF matrix
    /// with dims `[k, n]` (k contiguous) is `[n, k]` here: n rows of k values.
    pub fn shape(&self) -> Vec<usize> {
        // Each dim was checked to fit in usize on open.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A GGUF file, checked on open; tensor data is read (or mapped) from the file on demand.
pub struct Gguf {
    path: PathBuf,
    bytes: FileBytes,
    version: u32,
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
    data_start: usize,
}

impl Gguf {
    /// Opens and checks a GGUF file (memory-mapped; read into memory on wasm32).
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_parts(path, FileBytes::open(path)?)
    }

    /// A GGUF file from bytes in memory; `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::from_parts(path, FileBytes::Owned(bytes))
    }

    fn from_parts(path: &Path, bytes: FileBytes) -> Result<Self> {
        let parsed = parse(&bytes).map_err(|m| Error::file(path, m))?;
        Ok(Gguf { path: path.to_path_buf(), bytes, ..parsed })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The whole file (what its sha256 is taken of).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Metadata in the file's order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// Tensors in the file's order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    /// Offset of the data section in the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    fn key_error(&self, key: &str, message: String) -> Error {
        Error::file(&self.path, format!("metadata '{key}': {message}"))
    }

    fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key).ok_or_else(|| self.key_error(key, "missing".into()))
    }

    fn integer<T: TryFrom<i128>>(&self, key: &str, what: &str) -> Result<T> {
        let value = self.require(key)?;
        let i = value
            .as_i128()
            .ok_or_else(|| self.key_error(key, format!("is a {}, expected {what}", value.type_name())))?;
        T::try_from(i).map_err(|_| self.key_error(key, format!("{i} does not fit in {what}")))
    }

    /// An integer key (of any integer type) that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.integer(key, "a u32")
    }
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.integer(key, "a u64")
    }
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.integer(key, "an i64")
    }
    /// A float key (f32; an f64 is narrowed).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            MetaValue::F32(v) => Ok(*v),
            MetaValue::F64(v) => Ok(*v as f32),
            other => Err(self.key_error(key, format!("is a {}, expected a float", other.type_name()))),
        }
    }
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            MetaValue::Bool(v) => Ok(*v),
            other => Err(self.key_error(key, format!("is a {}, expected a bool", other.type_name()))),
        }
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            MetaValue::String(v) => Ok(v),
            other => Err(self.key_error(key, format!("is a {}, expected a string", other.type_name()))),
        }
    }
    pub fn get_array(&self, key: &str) -> Result<&MetaArray> {
        match self.require(key)? {
            MetaValue::Array(v) => Ok(v),
            other => Err(self.key_error(key, format!("is a {}, expected an array", other.type_name()))),
        }
    }
    pub fn get_string_array(&self, key: &str) -> Result<&[String]> {
        match self.get_array(key)? {
            MetaArray::String(v) => Ok(v),
            other => Err(self.key_error(key, format!("is an array of {}, expected strings", other.element_type()))),
        }
    }
    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::file(&self.path, format!("tensor '{name}' is missing")))
    }

    /// The raw bytes of a tensor (whole blocks for quantized types).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.tensor_info(name)?;
        // Extents were checked against the file on open.
        let start = self.data_start + info.offset as usize;
        Ok(&self.bytes[start..start + info.bytes])
    }

    /// A tensor as stored (quantized types as raw blocks), shape in row-major order.
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let info = self.tensor_info(name)?;
        let bad = |e: Error| Error::file(&self.path, format!("tensor '{name}': {e}"));
        let data = TensorData::from_bytes(info.dtype, self.tensor_bytes(name)?).map_err(bad)?;
        self.release(info);
        HostTensor::new(info.shape(), data).map_err(bad)
    }

    /// The file's bytes of a tensor that was copied out need not stay resident.
    fn release(&self, info: &TensorInfo) {
        let start = self.data_start + info.offset as usize;
        self.bytes.release(start..start + info.bytes);
    }

    /// A tensor dequantized to f32 (exactly as gguf-py's `quants.dequantize`).
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor> {
        let info = self.tensor_info(name)?;
        let bad = |e: Error| Error::file(&self.path, format!("tensor '{name}': {e}"));
        let mut values = vec![0f32; info.bytes / info.dtype.block().bytes * info.dtype.block().values];
        super::quant::dequantize(info.dtype, self.tensor_bytes(name)?, &mut values).map_err(bad)?;
        self.release(info);
        HostTensor::f32(info.shape(), values).map_err(bad)
    }
}

/// The dtype of a ggml type code, or an error naming the type for the ones tandem lacks.
pub fn dtype_of_ggml_type(code: u32) -> std::result::Result<DType, String> {
    Ok(match code {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        6 => DType::Q5_0,
        8 => DType::Q8_0,
        12 => DType::Q4_K,
        13 => DType::Q5_K,
        14 => DType::Q6_K,
        30 => DType::BF16,
        _ => {
            let known = [
                (7, "Q5_1"),
                (9, "Q8_1"),
                (10, "Q2_K"),
                (11, "Q3_K"),
                (15, "Q8_K"),
                (16, "IQ2_XXS"),
                (17, "IQ2_XS"),
                (18, "IQ3_XXS"),
                (19, "IQ1_S"),
                (20, "IQ4_NL"),
                (21, "IQ3_S"),
                (22, "IQ2_S"),
                (23, "IQ4_XS"),
                (24, "I8"),
                (25, "I16"),
                (26, "I32"),
                (27, "I64"),
                (28, "F64"),
                (29, "IQ1_M"),
                (34, "TQ1_0"),
                (35, "TQ2_0"),
                (39, "MXFP4"),
            ];
            return Err(match known.iter().find(|(c, _)| *c == code) {
                Some((_, name)) => format!("ggml type {code} ({name}), which tandem does not support"),
                None => format!("unknown ggml type {code}"),
            });
        }
    })
}

/// The ggml type code of a dtype (`None` for u32, which GGUF tensors do not use).
pub fn ggml_type_of(dtype: DType) -> Option<u32> {
    (0..=30).find(|&c| dtype_of_ggml_type(c) == Ok(dtype))
}

/// A cursor over the file that never reads past its end (the E5S1 reader uses it too).
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }
    pub(super) fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> std::result::Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "truncated: {} needs {n} bytes at offset {} but the file has {} left",
                what(),
                self.pos,
                self.left()
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }
    pub(super) fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N as u64, what)?.try_into().expect("took N bytes"))
    }
    pub(super) fn u32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }
    pub(super) fn u64(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, &|| format!("{} ({len}-byte string)", what()))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{} is not valid UTF-8", what()))
    }
    /// Checks that `count` values of at least `min_bytes` each can fit in what is left.
    pub(super) fn check_count(
        &self,
        count: u64,
        min_bytes: u64,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<(), String> {
        if count.checked_mul(min_bytes).is_none_or(|n| n > self.left()) {
            return Err(format!(
                "{} declares {count} entries, more than the {} bytes left in the file can hold (truncated or lying count)",
                what(),
                self.left()
            ));
        }
        Ok(())
    }
    fn value_type(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, String> {
        let t = self.u32(what)?;
        if t as usize >= TYPE_NAMES.len() {
            return Err(format!("{} has unknown value type {t}", what()));
        }
        Ok(t)
    }

    fn value(&mut self, t: u32, depth: usize, what: &dyn Fn() -> String) -> std::result::Result<MetaValue, String> {
        Ok(match t {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetaValue::Bool(self.bool(what)?),
            8 => MetaValue::String(self.string(what)?),
            9 => MetaValue::Array(self.meta_array(depth + 1, what)?),
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            _ => unreachable!("value_type checked the code"),
        })
    }

    fn bool(&mut self, what: &dyn Fn() -> String) -> std::result::Result<bool, String> {
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("{} is a bool of value {b}, neither 0 nor 1", what())),
        }
    }

    fn meta_array(&mut self, depth: usize, what: &dyn Fn() -> String) -> std::result::Result<MetaArray, String> {
        if depth > MAX_NESTING {
            return Err(format!("{} nests arrays more than {MAX_NESTING} deep", what()));
        }
        let t = self.value_type(what)?;
        let count = self.u64(what)?;
        self.check_count(count, MIN_BYTES[t as usize], what)?;
        let n = count as usize;
        fn fixed<const N: usize, T>(
            r: &mut Reader<'_>,
            n: usize,
            what: &dyn Fn() -> String,
            f: fn([u8; N]) -> T,
        ) -> std::result::Result<Vec<T>, String> {
            // check_count bounded n by the bytes left, so this takes them in one piece.
            let bytes = r.take((n * N) as u64, what)?;
            Ok(bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunks of N"))).collect())
        }
        let item = |i: usize| format!("{}[{i}]", what());
        Ok(match t {
            0 => MetaArray::U8(fixed(self, n, what, |b: [u8; 1]| b[0])?),
            1 => MetaArray::I8(fixed(self, n, what, |b: [u8; 1]| b[0] as i8)?),
            2 => MetaArray::U16(fixed(self, n, what, u16::from_le_bytes)?),
            3 => MetaArray::I16(fixed(self, n, what, i16::from_le_bytes)?),
            4 => MetaArray::U32(fixed(self, n, what, u32::from_le_bytes)?),
            5 => MetaArray::I32(fixed(self, n, what, i32::from_le_bytes)?),
            6 => MetaArray::F32(fixed(self, n, what, f32::from_le_bytes)?),
            7 => MetaArray::Bool((0..n).map(|i| self.bool(&|| item(i))).collect::<std::result::Result<_, _>>()?),
            8 => MetaArray::String((0..n).map(|i| self.string(&|| item(i))).collect::<std::result::Result<_, _>>()?),
            9 => MetaArray::Array(
                (0..n).map(|i| self.meta_array(depth + 1, &|| item(i))).collect::<std::result::Result<_, _>>()?,
            ),
            10 => MetaArray::U64(fixed(self, n, what, u64::from_le_bytes)?),
            11 => MetaArray::I64(fixed(self, n, what, i64::from_le_bytes)?),
            12 => MetaArray::F64(fixed(self, n, what, f64::from_le_bytes)?),
            _ => unreachable!("value_type checked the code"),
        })
    }
}

/// Parses and checks the whole layout; the returned value's `path` and `bytes` are
/// placeholders that `from_parts` fills in.
fn parse(bytes: &[u8]) -> std::result::Result<Gguf, String> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.array::<4>(&|| "the magic bytes".into()).map_err(|_| "not a GGUF file (too short)".to_string())?;
    if &magic != MAGIC {
        return Err("not a GGUF file (bad magic bytes)".into());
    }
    let version = r.u32(&|| "the version".into())?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported (only 2 and 3)".into()),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err("big-endian GGUF files are not supported".into());
        }
        v => return Err(format!("GGUF version {v} is not supported (only 2 and 3)")),
    }
    let tensor_count = r.u64(&|| "the tensor count".into())?;
    let kv_count = r.u64(&|| "the metadata count".into())?;
    // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least
    // 8 (name length) + 4 (dims) + 4 (type) + 8 (offset).
    r.check_count(kv_count, 13, &|| "the header's metadata count".into())?;
    let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(kv_count as usize);
    let mut keys = HashSet::new();
    for i in 0..kv_count {
        let key = r.string(&|| format!("metadata key {i}"))?;
        let what = || format!("metadata '{key}'");
        let t = r.value_type(&what)?;
        let value = r.value(t, 0, &what)?;
        if !keys.insert(key.clone()) {
            return Err(format!("metadata '{key}' appears twice"));
        }
        metadata.push((key, value));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, v)) => {
            return Err(format!("metadata 'general.alignment' must be a u32 power of two, found {v:?}"));
        }
    };
    r.check_count(tensor_count, 24, &|| "the header's tensor count".into())?;
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::new();
    for i in 0..tensor_count {
        let name = r.string(&|| format!("the name of tensor {i}"))?;
        let what = || format!("tensor '{name}'");
        let n_dims = r.u32(&what)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor '{name}' has {n_dims} dims; GGUF tensors have 1 to {MAX_DIMS}"));
        }
        let dims = (0..n_dims).map(|_| r.u64(&what)).collect::<std::result::Result<Vec<u64>, _>>()?;
        let code = r.u32(&what)?;
        let dtype = dtype_of_ggml_type(code).map_err(|m| format!("tensor '{name}' has {m}"))?;
        let offset = r.u64(&what)?;
        if let Some(d) = dims.iter().find(|&&d| d == 0) {
            return Err(format!("tensor '{name}' has a dimension of {d} in {dims:?}"));
        }
        let count = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let size = count
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| dtype.bytes_for(n))
            .filter(|&b| b <= bytes.len())
            .ok_or_else(|| format!("tensor '{name}' with dims {dims:?} of {dtype} is larger than the file"))?;
        // Rows must be whole blocks (ggml requires it of ne[0]).
        if dtype.bytes_for(dims[0] as usize).is_none() {
            return Err(format!(
                "tensor '{name}': its rows of {} values are not whole {dtype} blocks of {}",
                dims[0],
                dtype.block().values
            ));
        }
        if !offset.is_multiple_of(alignment) {
            return Err(format!("tensor '{name}' is at offset {offset}, not a multiple of the alignment {alignment}"));
        }
        if !names.insert(name.clone()) {
            return Err(format!("tensor '{name}' appears twice"));
        }
        tensors.push(TensorInfo { name, dtype, dims, offset, bytes: size });
    }
    let data_start = (r.pos as u64).next_multiple_of(alignment);
    let data_len = (bytes.len() as u64).saturating_sub(data_start);
    for t in &tensors {
        if t.offset.checked_add(t.bytes as u64).is_none_or(|end| end > data_len) {
            return Err(format!(
                "tensor '{}' spans bytes {}..{} of the data section, which holds {data_len} (truncated or lying offset)",
                t.name,
                t.offset,
                t.offset as u128 + t.bytes as u128
            ));
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset + pair[0].bytes as u64 > pair[1].offset {
            return Err(format!("tensors '{}' and '{}' overlap in the data section", pair[0].name, pair[1].name));
        }
    }
    Ok(Gguf {
        path: PathBuf::new(),
        bytes: FileBytes::Owned(Vec::new()),
        version,
        alignment,
        metadata,
        tensors,
        data_start: data_start as usize,
    })
}

/// Writes a GGUF (version 3) file's bytes: tandem's own GGUF files and tests. Tensors are
/// laid out in the order given, each aligned to `alignment` (the `general.alignment` entry is
/// written when it is not the default).
pub fn to_bytes(metadata: &[(String, MetaValue)], tensors: &[(String, HostTensor)], alignment: u64) -> Result<Vec<u8>> {
    if !alignment.is_power_of_two() || alignment > u64::from(u32::MAX) {
        return Err(Error::input(format!("alignment {alignment} is not a u32 power of two")));
    }
    let mut meta: Vec<(String, MetaValue)> =
        metadata.iter().filter(|(k, _)| k != "general.alignment").cloned().collect();
    if alignment != DEFAULT_ALIGNMENT {
        meta.push(("general.alignment".into(), MetaValue::U32(alignment as u32)));
    }
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    for (key, value) in &meta {
        string(&mut out, key);
        write_value(&mut out, value);
    }
    let mut offset = 0u64;
    for (name, t) in tensors {
        let code = ggml_type_of(t.dtype())
            .ok_or_else(|| Error::input(format!("tensor '{name}': {} has no ggml type", t.dtype())))?;
        string(&mut out, name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&code.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + t.data.as_bytes().len() as u64).next_multiple_of(alignment);
    }
    for (_, t) in tensors {
        out.resize((out.len() as u64).next_multiple_of(alignment) as usize, 0);
        out.extend_from_slice(t.data.as_bytes());
    }
    Ok(out)
}

fn write_value(out: &mut Vec<u8>, value: &MetaValue) {
    let code = TYPE_NAMES.iter().position(|&n| n == value.type_name()).expect("every type is named") as u32;
    out.extend_from_slice(&code.to_le_bytes());
    match value {
        MetaValue::Array(a) => write_array(out, a),
        other => write_scalar(out, other),
    }
}

fn write_scalar(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.push(*v),
        MetaValue::I8(v) => out.push(*v as u8),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(s) => {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Array(a) => write_array(out, a),
    }
}

fn write_array(out: &mut Vec<u8>, a: &MetaArray) {
    let code = TYPE_NAMES.iter().position(|&n| n == a.element_type()).expect("every type is named") as u32;
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    fn each<T: Clone>(out: &mut Vec<u8>, v: &[T], f: fn(T) -> MetaValue) {
        v.iter().for_each(|x| write_scalar(out, &f(x.clone())));
    }
    match a {
        MetaArray::U8(v) => each(out, v, MetaValue::U8),
        MetaArray::I8(v) => each(out, v, MetaValue::I8),
        MetaArray::U16(v) => each(out, v, MetaValue::U16),
        MetaArray::I16(v) => each(out, v, MetaValue::I16),
        MetaArray::U32(v) => each(out, v, MetaValue::U32),
        MetaArray::I32(v) => each(out, v, MetaValue::I32),
        MetaArray::F32(v) => each(out, v, MetaValue::F32),
        MetaArray::Bool(v) => each(out, v, MetaValue::Bool),
        MetaArray::String(v) => each(out, v, MetaValue::String),
        MetaArray::Array(v) => each(out, v, MetaValue::Array),
        MetaArray::U64(v) => each(out, v, MetaValue::U64),
        MetaArray::I64(v) => each(out, v, MetaValue::I64),
        MetaArray::F64(v) => each(out, v, MetaValue::F64),
    }
}
