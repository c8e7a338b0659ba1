//! Reads PyTorch's legacy (non-zip) checkpoint format, the one `torch.save` wrote before
//! torch 1.6 and the one torchvision's MobileNetV2 weights still ship in:
//!
//! 1. a pickled magic number, a pickled protocol version (1001) and a pickled `sys_info` dict;
//! 2. the main pickle: an `OrderedDict` of name → tensor, each tensor built by
//!    `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`
//!    over a storage named by a persistent id `('storage', torch.XStorage, key, location,
//!    numel[, view_metadata])`;
//! 3. a pickled list of storage keys, then for each key its element count (u64, little
//!    endian) and its raw little-endian elements.
//!
//! Only the pickle opcodes and globals such files use are implemented; anything else is an
//! error. The file comes from outside, so everything is bounded: the file size, the stack, the
//! memo, nesting, strings, declared element counts (against the file's size), and every
//! tensor's extent (against its storage). Malformed input gives an error that says what is
//! wrong, never a panic.

use crate::error::Error;
use std::collections::HashMap;
use std::fmt::Display;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

/// Inside the parser an error is its message, each caller adding where it was (`reading
/// sys_info: at byte 40 (opcode ...): ...`); the public functions turn it into the runtime's
/// error, naming the file.
type Result<T, E = String> = std::result::Result<T, E>;

macro_rules! err {
    ($($arg:tt)*) => { format!($($arg)*) };
}
macro_rules! bail {
    ($($arg:tt)*) => { return Err(format!($($arg)*)) };
}
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { bail!($($arg)*) } };
}

/// Prefixes an error message with what was being done.
trait Context<T> {
    fn context(self, what: impl Display) -> Result<T>;
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

/// What a file may make the reader do or allocate.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file_bytes: u64,
    /// Values on the pickle stack at once.
    pub max_stack: usize,
    /// Entries in the pickle memo.
    pub max_memo: usize,
    /// Nesting of containers (and of open marks); torch state dicts nest 3 deep.
    pub max_depth: usize,
    pub max_string_bytes: usize,
    pub max_dims: usize,
    /// Items copied when a shared dict or list is modified (see `Unpickler::unshare`).
    pub max_copied_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 2 << 30,
            max_stack: 1 << 16,
            max_memo: 1 << 20,
            max_depth: 32,
            max_string_bytes: 1 << 16,
            max_dims: 8,
            max_copied_items: 1 << 22,
        }
    }
}

/// One tensor of the state dict, contiguous (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: TensorValues,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorValues {
    F32(Vec<f32>),
    /// From `LongStorage`: in state dicts only batch norm's `num_batches_tracked` counters.
    I64(Vec<i64>),
}

impl TorchTensor {
    pub fn f32(&self) -> Option<&[f32]> {
        match &self.values {
            TensorValues::F32(v) => Some(v),
            TensorValues::I64(_) => None,
        }
    }
}

/// The tensors of a checkpoint, in the file's order.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    pub tensors: Vec<TorchTensor>,
}

impl StateDict {
    pub fn get(&self, name: &str) -> Option<&TorchTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The f32 tensor `name`, or an error saying it is missing or of another type.
    pub fn f32(&self, name: &str) -> crate::Result<(&[usize], &[f32])> {
        let tensor = self.get(name).ok_or_else(|| Error::Other(format!("no tensor '{name}'")))?;
        let values = tensor.f32().ok_or_else(|| Error::Other(format!("tensor '{name}' is not f32")))?;
        Ok((&tensor.shape, values))
    }
}

/// Reads the legacy checkpoint at `path` with the default limits.
pub fn load(path: &Path) -> crate::Result<StateDict> {
    load_with_limits(path, &Limits::default())
}

pub fn load_with_limits(path: &Path, limits: &Limits) -> crate::Result<StateDict> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // Reading one byte past the limit tells an over-long file (even one still growing) apart.
    let mut bytes = Vec::new();
    file.take(limits.max_file_bytes.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(Error::file(path, format!("over the limit of {} bytes for a checkpoint", limits.max_file_bytes)));
    }
    parse_checkpoint(&bytes, limits)
        .map_err(|e| Error::file(path, format!("not a readable legacy torch checkpoint: {e}")))
}

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c) as pickle's LONG1 stores it:
/// little-endian two's complement.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

/// Parses a whole legacy checkpoint held in memory (a browser's download).
pub fn parse(bytes: &[u8], limits: &Limits) -> crate::Result<StateDict> {
    parse_checkpoint(bytes, limits).map_err(Error::Other)
}

fn parse_checkpoint(bytes: &[u8], limits: &Limits) -> Result<StateDict> {
    if bytes.len() as u64 > limits.max_file_bytes {
        bail!("{} bytes is over the limit of {} for a checkpoint", bytes.len(), limits.max_file_bytes);
    }
    if bytes.starts_with(b"PK\x03\x04") {
        bail!("this is a zip-format checkpoint (torch >= 1.6); only the legacy format is supported");
    }
    let mut input = Input { bytes, pos: 0 };
    let mut storages = Storages::default();

    match read_pickle(&mut input, &mut storages, limits).context("reading the magic number")? {
        Value::BigInt(magic) if *magic == MAGIC => {}
        _ => bail!("wrong magic number: not a legacy torch checkpoint"),
    }
    match read_pickle(&mut input, &mut storages, limits).context("reading the protocol version")? {
        Value::Int(PROTOCOL_VERSION) => {}
        other => bail!("protocol version is {}, expected {PROTOCOL_VERSION}", other.describe()),
    }
    let sys_info = read_pickle(&mut input, &mut storages, limits).context("reading sys_info")?;
    check_sys_info(&sys_info)?;

    let root = read_pickle(&mut input, &mut storages, limits).context("reading the state dict pickle")?;
    let entries = state_dict_entries(&root)?;

    let keys = read_pickle(&mut input, &mut storages, limits).context("reading the storage keys")?;
    read_storage_data(&mut input, &mut storages, &keys)?;
    if input.pos != bytes.len() {
        bail!("{} unexpected bytes after the last storage", bytes.len() - input.pos);
    }

    let mut output_bytes = 0u64;
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, tensor) in entries {
        let storage = &storages.list[tensor.storage];
        let tensor_bytes = (tensor.numel()? as u64).saturating_mul(storage.kind.element_size() as u64);
        output_bytes = output_bytes.saturating_add(tensor_bytes);
        // Views of one storage may overlap; this caps what they can make us copy.
        if output_bytes > 2 * bytes.len() as u64 {
            bail!("tensor '{name}': the tensors would take more than twice the file's {} bytes", bytes.len());
        }
        let values = materialize(&tensor, storage).with_context(|| format!("tensor '{name}'"))?;
        tensors.push(TorchTensor { name, shape: tensor.shape.clone(), values });
    }
    Ok(StateDict { tensors })
}

fn check_sys_info(sys_info: &Value) -> Result<()> {
    let Value::Dict(dict) = sys_info else { bail!("sys_info is {}, expected a dict", sys_info.describe()) };
    for (key, value) in &dict.items {
        match (key, value) {
            (Value::Str(k), Value::Bool(false)) if &**k == "little_endian" => {
                bail!("the file was written on a big-endian machine, which is not supported")
            }
            (Value::Str(k), Value::Int(v)) if &**k == "protocol_version" && *v != PROTOCOL_VERSION => {
                bail!("sys_info protocol_version is {v}, expected {PROTOCOL_VERSION}")
            }
            _ => {}
        }
    }
    Ok(())
}

/// The (name, tensor) pairs of the main pickle, which must be a dict of strings to tensors.
fn state_dict_entries(root: &Value) -> Result<Vec<(String, Rc<TensorRef>)>> {
    let Value::Dict(dict) = root else { bail!("the main pickle is {}, expected an OrderedDict", root.describe()) };
    let mut entries: Vec<(String, Rc<TensorRef>)> = Vec::with_capacity(dict.items.len());
    let mut seen = std::collections::HashSet::new();
    for (key, value) in &dict.items {
        let Value::Str(name) = key else { bail!("a state dict key is {}, expected a string", key.describe()) };
        let Value::Tensor(tensor) = value else { bail!("entry '{name}' is {}, expected a tensor", value.describe()) };
        if !seen.insert(name.clone()) {
            bail!("entry '{name}' appears twice");
        }
        entries.push((name.to_string(), tensor.clone()));
    }
    Ok(entries)
}

/// Reads the storage section: the keys pickle gives the order, then each storage is a u64
/// element count and the elements.
fn read_storage_data(input: &mut Input, storages: &mut Storages, keys: &Value) -> Result<()> {
    let Value::List(keys) = keys else { bail!("the storage key list is {}, expected a list", keys.describe()) };
    for key in &keys.items {
        let Value::Str(key) = key else { bail!("a storage key is {}, expected a string", key.describe()) };
        let index =
            *storages.by_key.get(&**key).ok_or_else(|| err!("storage '{key}' is listed but no tensor uses it"))?;
        let storage = &mut storages.list[index];
        ensure!(storage.data.is_none(), "storage '{key}' is listed twice");
        let count = input.u64().with_context(|| format!("storage '{key}': reading its element count"))?;
        if count != storage.numel as u64 {
            bail!("storage '{key}' holds {count} elements but its persistent id declared {}", storage.numel);
        }
        // numel * element size was checked against the file's size when the id was read.
        let raw = input.take(storage.numel * storage.kind.element_size(), || format!("storage '{key}' data"))?;
        storage.data = Some(match storage.kind {
            StorageKind::Float => {
                StorageData::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
            }
            StorageKind::Long => {
                StorageData::I64(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
            }
        });
    }
    if let Some(missing) = storages.list.iter().find(|s| s.data.is_none()) {
        bail!("storage '{}' is used by a tensor but the file holds no data for it", missing.key);
    }
    Ok(())
}

/// Copies a tensor's elements out of its storage into a contiguous row-major vector, after
/// checking that every element it addresses lies inside the storage.
fn materialize(tensor: &TensorRef, storage: &Storage) -> Result<TensorValues> {
    let numel = tensor.numel()?;
    let len = storage.numel;
    let describe = || format!("shape {:?}, strides {:?}, offset {}", tensor.shape, tensor.strides, tensor.offset);
    if numel > 0 {
        let last = tensor.shape.iter().zip(&tensor.strides).try_fold(tensor.offset, |acc, (&dim, &stride)| {
            (dim - 1).checked_mul(stride).and_then(|step| acc.checked_add(step))
        });
        match last {
            Some(last) if last < len => {}
            _ => bail!("{} reaches past the end of storage '{}' ({len} elements)", describe(), storage.key),
        }
        // Torch never saves expanded or overlapping views in a state dict; refusing them
        // also keeps a tensor from being larger than the data it comes from.
        if numel > len {
            bail!("{} has {numel} elements, more than its storage '{}' ({len})", describe(), storage.key);
        }
    }
    Ok(match storage.data.as_ref().expect("checked by read_storage_data") {
        StorageData::F32(data) => TensorValues::F32(gather(data, tensor, numel)),
        StorageData::I64(data) => TensorValues::I64(gather(data, tensor, numel)),
    })
}

/// Gathers the elements of a (checked) strided view in row-major order.
fn gather<T: Copy>(data: &[T], tensor: &TensorRef, numel: usize) -> Vec<T> {
    if numel == 0 {
        return Vec::new();
    }
    if tensor.is_contiguous() {
        return data[tensor.offset..tensor.offset + numel].to_vec();
    }
    let rank = tensor.shape.len();
    // A size-1 dimension's stride is never used to address anything but can be anything;
    // zero keeps the position arithmetic below within the checked extent.
    let strides: Vec<usize> =
        tensor.shape.iter().zip(&tensor.strides).map(|(&d, &s)| if d == 1 { 0 } else { s }).collect();
    let mut index = vec![0usize; rank];
    let mut out = Vec::with_capacity(numel);
    let mut position = tensor.offset;
    for _ in 0..numel {
        out.push(data[position]);
        // Odometer step: bump the last dimension, carrying into earlier ones.
        for d in (0..rank).rev() {
            index[d] += 1;
            position += strides[d];
            if index[d] < tensor.shape[d] {
                break;
            }
            position -= strides[d] * tensor.shape[d];
            index[d] = 0;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Storages referenced by persistent ids.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageKind {
    Float,
    Long,
}

impl StorageKind {
    fn element_size(self) -> usize {
        match self {
            StorageKind::Float => 4,
            StorageKind::Long => 8,
        }
    }
}

enum StorageData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

struct Storage {
    key: String,
    kind: StorageKind,
    numel: usize,
    data: Option<StorageData>,
}

#[derive(Default)]
struct Storages {
    list: Vec<Storage>,
    by_key: HashMap<String, usize>,
}

impl Storages {
    /// Registers (or finds again) the storage a persistent id names. Its declared size must
    /// fit in the file, so no later allocation can exceed the file's size.
    fn declare(&mut self, key: &str, kind: StorageKind, numel: usize, file_len: usize) -> Result<usize> {
        if let Some(&index) = self.by_key.get(key) {
            let known = &self.list[index];
            if known.kind != kind || known.numel != numel {
                bail!("storage '{key}' is declared twice with different types or sizes");
            }
            return Ok(index);
        }
        let bytes = numel.checked_mul(kind.element_size());
        if bytes.is_none_or(|b| b > file_len) {
            bail!("storage '{key}' declares {numel} elements, more than the whole file ({file_len} bytes) holds");
        }
        self.list.push(Storage { key: key.to_string(), kind, numel, data: None });
        self.by_key.insert(key.to_string(), self.list.len() - 1);
        Ok(self.list.len() - 1)
    }
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug)]
struct TensorRef {
    storage: usize,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl TensorRef {
    fn numel(&self) -> Result<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| err!("shape {:?} overflows", self.shape))
    }

    /// Row-major with no gaps (strides of size-1 dimensions do not matter).
    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&dim, &stride) in self.shape.iter().zip(&self.strides).rev() {
            if dim != 1 && stride != expected {
                return false;
            }
            expected *= dim;
        }
        true
    }
}

// ---------------------------------------------------------------------------------------
// The pickle machine: the protocol-2 subset torch's legacy files use.

/// A pickled value. Containers are shared (`Rc`) so that memo gets are cheap, and each knows
/// its nesting depth so that depth is bounded when it is built (dropping a deeply nested
/// value would otherwise overflow the native stack).
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A LONG1 integer too wide for i64 (the magic number): its little-endian bytes.
    BigInt(Rc<[u8]>),
    Str(Rc<str>),
    Tuple(Rc<Nested<Value>>),
    List(Rc<Nested<Value>>),
    /// dict and OrderedDict alike, in insertion order.
    Dict(Rc<Nested<(Value, Value)>>),
    Global(Global),
    /// An index into `Storages::list`.
    Storage(usize),
    Tensor(Rc<TensorRef>),
}

#[derive(Debug, Clone)]
struct Nested<T> {
    items: Vec<T>,
    /// 1 + the deepest item's depth.
    depth: usize,
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(t) | Value::List(t) => t.depth,
            Value::Dict(d) => d.depth,
            _ => 0,
        }
    }

    /// For messages: the kind of value, and the value itself when it is short.
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("{b}"),
            Value::Int(i) => format!("the integer {i}"),
            Value::BigInt(_) => "a wide integer".into(),
            Value::Str(s) if s.len() <= 40 => format!("the string '{s}'"),
            Value::Str(_) => "a string".into(),
            Value::Tuple(t) => format!("a tuple of {}", t.items.len()),
            Value::List(l) => format!("a list of {}", l.items.len()),
            Value::Dict(d) => format!("a dict of {}", d.items.len()),
            Value::Global(g) => format!("the global {}", g.name()),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
        }
    }
}

/// The globals a legacy state dict refers to; no other global can be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    Storage(StorageKind),
}

const ALLOWED_GLOBALS: &[(&str, &str, Global)] = &[
    ("collections", "OrderedDict", Global::OrderedDict),
    ("torch._utils", "_rebuild_tensor_v2", Global::RebuildTensorV2),
    ("torch", "FloatStorage", Global::Storage(StorageKind::Float)),
    ("torch", "LongStorage", Global::Storage(StorageKind::Long)),
];

impl Global {
    fn name(self) -> String {
        let (module, name, _) = ALLOWED_GLOBALS.iter().find(|g| g.2 == self).expect("every Global is allowed");
        format!("{module}.{name}")
    }
}

/// The bytes of the file and a read position.
struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            bail!("truncated: {} needs {n} bytes at offset {}, the file has {left} left", what(), self.pos);
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, || what.to_string())?.try_into().expect("take returns N bytes"))
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array("a u64")?))
    }

    /// A newline-terminated ASCII line of at most `max` bytes (GLOBAL's operands).
    fn line(&mut self, max: usize) -> Result<&'a str> {
        let rest = &self.bytes[self.pos..];
        let Some(end) = rest.iter().take(max + 1).position(|&b| b == b'\n') else {
            bail!("unterminated or over-long line at offset {}", self.pos);
        };
        let line = std::str::from_utf8(&rest[..end])
            .ok()
            .filter(|s| s.is_ascii())
            .ok_or_else(|| err!("non-ASCII global name at offset {}", self.pos))?;
        self.pos += end + 1;
        Ok(line)
    }
}

/// The pickle opcodes this reader implements (Python's Lib/pickletools.py documents them all).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINUNICODE: u8 = b'X';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE3: u8 = 0x87;
    pub const EMPTY_LIST: u8 = b']';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
}

/// Runs one pickle (up to its STOP) and returns its value. Storages named by persistent ids
/// are recorded in `storages`, which outlives the pickle.
fn read_pickle(input: &mut Input, storages: &mut Storages, limits: &Limits) -> Result<Value> {
    let mut machine = Unpickler {
        limits,
        file_len: input.bytes.len(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copied_items: 0,
    };
    loop {
        let at = input.pos;
        let opcode = input.u8("an opcode")?;
        match machine.step(opcode, input, storages) {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => return Err(format!("at byte {at} (opcode {}): {e}", opcode_name(opcode))),
        }
    }
}

fn opcode_name(opcode: u8) -> String {
    if opcode.is_ascii_graphic() { format!("'{}'", opcode as char) } else { format!("0x{opcode:02x}") }
}

struct Unpickler<'l> {
    limits: &'l Limits,
    file_len: usize,
    stack: Vec<Value>,
    /// Stack lengths at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Items copied by `unshare` so far.
    copied_items: usize,
}

impl Unpickler<'_> {
    /// Executes one opcode; returns the pickle's value at STOP.
    fn step(&mut self, opcode: u8, input: &mut Input, storages: &mut Storages) -> Result<Option<Value>> {
        match opcode {
            op::PROTO => {
                let version = input.u8("the protocol number")?;
                ensure!(version <= 2, "pickle protocol {version} is not supported (legacy checkpoints use 2)");
            }
            op::STOP => return self.stop().map(Some),
            op::MARK => {
                ensure!(self.marks.len() < self.limits.max_depth, "more than {} nested marks", self.limits.max_depth);
                self.marks.push(self.stack.len());
            }
            op::NONE => self.push(Value::None)?,
            op::NEWTRUE => self.push(Value::Bool(true))?,
            op::NEWFALSE => self.push(Value::Bool(false))?,
            op::BININT => self.push(Value::Int(i32::from_le_bytes(input.array("BININT")?) as i64))?,
            op::BININT1 => self.push(Value::Int(input.u8("BININT1")? as i64))?,
            op::BININT2 => self.push(Value::Int(u16::from_le_bytes(input.array("BININT2")?) as i64))?,
            op::LONG1 => {
                // A length byte, then little-endian two's complement.
                let n = input.u8("LONG1's length")? as usize;
                let bytes = input.take(n, || "LONG1".into())?;
                self.push(long1_value(bytes))?;
            }
            op::BINUNICODE => {
                let len = u32::from_le_bytes(input.array("BINUNICODE's length")?) as usize;
                ensure!(len <= self.limits.max_string_bytes, "a {len}-byte string is over the limit");
                let bytes = input.take(len, || "a string".into())?;
                let text = std::str::from_utf8(bytes).map_err(|_| err!("a string is not valid UTF-8"))?;
                self.push(Value::Str(text.into()))?;
            }
            op::EMPTY_TUPLE => self.push(self.tuple(Vec::new())?)?,
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push(self.tuple(items)?)?
            }
            op::TUPLE1..=op::TUPLE3 => {
                let n = (opcode - op::TUPLE1 + 1) as usize;
                ensure!(self.above_mark().len() >= n, "TUPLE{n} needs {n} values above the last mark");
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(self.tuple(items)?)?
            }
            op::EMPTY_LIST => self.push(Value::List(Rc::new(Nested { items: Vec::new(), depth: 1 })))?,
            op::EMPTY_DICT => self.push(Value::Dict(Rc::new(Nested { items: Vec::new(), depth: 1 })))?,
            op::APPEND => {
                let value = self.pop()?;
                self.append(vec![value])?;
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                self.append(items)?;
            }
            op::SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![key, value])?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            op::BINPUT => self.put(input.u8("BINPUT's index")? as u32)?,
            op::LONG_BINPUT => self.put(u32::from_le_bytes(input.array("LONG_BINPUT's index")?))?,
            op::BINGET => self.get(input.u8("BINGET's index")? as u32)?,
            op::LONG_BINGET => self.get(u32::from_le_bytes(input.array("LONG_BINGET's index")?))?,
            op::GLOBAL => {
                let module = input.line(128)?;
                let name = input.line(128)?;
                let global = ALLOWED_GLOBALS
                    .iter()
                    .find(|(m, n, _)| *m == module && *n == name)
                    .map(|g| g.2)
                    .ok_or_else(|| err!("global '{module}.{name}' is not allowed in a state dict"))?;
                self.push(Value::Global(global))?;
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let result = self.reduce(&callable, &args)?;
                self.push(result)?;
            }
            op::BUILD => {
                // BUILD on an OrderedDict sets its attributes: torch stores `_metadata`
                // (module versions) there, which a reader of weights does not need.
                let state = self.pop()?;
                match (self.above_mark().last(), &state) {
                    (Some(Value::Dict(_)), Value::Dict(_) | Value::None) => {}
                    (target, _) => bail!(
                        "BUILD of {} with {} is not supported",
                        target.map_or("nothing".into(), Value::describe),
                        state.describe()
                    ),
                }
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                let storage = persistent_load(&pid, storages, self.file_len)?;
                self.push(Value::Storage(storage))?;
            }
            _ => bail!("unsupported pickle opcode"),
        }
        Ok(None)
    }

    fn push(&mut self, value: Value) -> Result<()> {
        ensure!(self.stack.len() < self.limits.max_stack, "more than {} values on the stack", self.limits.max_stack);
        self.stack.push(value);
        Ok(())
    }

    /// Values pushed since the last MARK: as in Python's unpickler, what lies below a mark
    /// cannot be reached until the mark is popped.
    fn above_mark(&self) -> &[Value] {
        &self.stack[self.marks.last().copied().unwrap_or(0)..]
    }

    fn pop(&mut self) -> Result<Value> {
        ensure!(!self.above_mark().is_empty(), "pop from an empty stack");
        Ok(self.stack.pop().expect("checked above"))
    }

    /// The value on top of the stack, to be modified in place (APPEND, SETITEM).
    fn top_mut(&mut self) -> Option<&mut Value> {
        if self.above_mark().is_empty() { None } else { self.stack.last_mut() }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| err!("no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn stop(&mut self) -> Result<Value> {
        ensure!(self.marks.is_empty(), "the pickle ends with {} open marks", self.marks.len());
        ensure!(self.stack.len() == 1, "the pickle ends with {} values on the stack, expected 1", self.stack.len());
        Ok(self.stack.pop().expect("checked above"))
    }

    fn check_depth(&self, depth: usize) -> Result<()> {
        ensure!(depth <= self.limits.max_depth, "values nested deeper than {}", self.limits.max_depth);
        Ok(())
    }

    fn tuple(&self, items: Vec<Value>) -> Result<Value> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        self.check_depth(depth)?;
        Ok(Value::Tuple(Rc::new(Nested { items, depth })))
    }

    /// Gives mutable access to a container that may also sit in the memo. Python would
    /// modify the shared object; here values are immutable once shared, so it is copied
    /// (copy-on-write), and the copies are counted so that a file cannot make us copy a
    /// large container over and over.
    fn unshare<'v, T: Clone>(
        copied_items: &mut usize,
        limit: usize,
        container: &'v mut Rc<Nested<T>>,
    ) -> Result<&'v mut Nested<T>> {
        if Rc::get_mut(container).is_none() {
            *copied_items += container.items.len();
            ensure!(*copied_items <= limit, "the pickle copies more than {limit} items of shared containers");
        }
        Ok(Rc::make_mut(container))
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        self.check_depth(depth)?;
        let limit = self.limits.max_copied_items;
        let mut copied = self.copied_items;
        match self.top_mut() {
            Some(Value::List(list)) => {
                let list = Self::unshare(&mut copied, limit, list)?;
                list.depth = list.depth.max(depth);
                list.items.extend(items);
                self.copied_items = copied;
                Ok(())
            }
            other => bail!("APPEND to {}, expected a list", other.map_or("nothing".into(), |v| v.describe())),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        ensure!(items.len().is_multiple_of(2), "SETITEMS with an odd number of values ({})", items.len());
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        self.check_depth(depth)?;
        let limit = self.limits.max_copied_items;
        let mut copied = self.copied_items;
        match self.top_mut() {
            Some(Value::Dict(dict)) => {
                let dict = Self::unshare(&mut copied, limit, dict)?;
                dict.depth = dict.depth.max(depth);
                let mut items = items.into_iter();
                while let (Some(key), Some(value)) = (items.next(), items.next()) {
                    dict.items.push((key, value));
                }
                self.copied_items = copied;
                Ok(())
            }
            other => bail!("SETITEM on {}, expected a dict", other.map_or("nothing".into(), |v| v.describe())),
        }
    }

    fn put(&mut self, index: u32) -> Result<()> {
        let top = self.above_mark().last().ok_or_else(|| err!("memo put with an empty stack"))?.clone();
        if !self.memo.contains_key(&index) {
            ensure!(self.memo.len() < self.limits.max_memo, "more than {} memo entries", self.limits.max_memo);
        }
        self.memo.insert(index, top);
        Ok(())
    }

    fn get(&mut self, index: u32) -> Result<()> {
        let value = self.memo.get(&index).ok_or_else(|| err!("memo entry {index} was never put"))?.clone();
        self.push(value)
    }

    /// Calls an allowed global (REDUCE).
    fn reduce(&self, callable: &Value, args: &Value) -> Result<Value> {
        let Value::Tuple(args) = args else { bail!("REDUCE arguments are {}, expected a tuple", args.describe()) };
        match callable {
            Value::Global(Global::OrderedDict) => {
                ensure!(args.items.is_empty(), "OrderedDict called with arguments");
                Ok(Value::Dict(Rc::new(Nested { items: Vec::new(), depth: 1 })))
            }
            Value::Global(Global::RebuildTensorV2) => Ok(Value::Tensor(Rc::new(self.rebuild_tensor(&args.items)?))),
            other => bail!("{} cannot be called", other.describe()),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
    /// backward_hooks[, metadata])`. The extent is checked against the storage later, once
    /// the tensor's name is known.
    fn rebuild_tensor(&self, args: &[Value]) -> Result<TensorRef> {
        ensure!(
            args.len() == 6 || (args.len() == 7 && matches!(args[6], Value::None)),
            "_rebuild_tensor_v2 takes 6 arguments (and None metadata), got {}",
            args.len()
        );
        let Value::Storage(storage) = args[0] else {
            bail!("_rebuild_tensor_v2's storage is {}, expected a persistent storage", args[0].describe())
        };
        let offset = non_negative(&args[1], "storage offset")?;
        let shape = self.int_tuple(&args[2], "size")?;
        let strides = self.int_tuple(&args[3], "stride")?;
        ensure!(shape.len() == strides.len(), "size has {} dimensions but stride has {}", shape.len(), strides.len());
        ensure!(matches!(args[4], Value::Bool(_)), "requires_grad is {}, expected a bool", args[4].describe());
        ensure!(matches!(args[5], Value::Dict(_)), "backward_hooks is {}, expected a dict", args[5].describe());
        Ok(TensorRef { storage, offset, shape, strides })
    }

    fn int_tuple(&self, value: &Value, what: &str) -> Result<Vec<usize>> {
        let Value::Tuple(tuple) = value else { bail!("{what} is {}, expected a tuple", value.describe()) };
        ensure!(tuple.items.len() <= self.limits.max_dims, "{what} has more than {} dimensions", self.limits.max_dims);
        tuple.items.iter().map(|v| non_negative(v, what)).collect()
    }
}

fn non_negative(value: &Value, what: &str) -> Result<usize> {
    match value {
        Value::Int(i) if *i >= 0 => usize::try_from(*i).map_err(|_| err!("{what} {i} is too large")),
        other => bail!("{what} is {}, expected a non-negative integer", other.describe()),
    }
}

fn long1_value(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(bytes.into());
    }
    if bytes.is_empty() {
        return Value::Int(0);
    }
    // Sign-extend from the top byte.
    let fill = if bytes[bytes.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
    let mut wide = [fill; 8];
    wide[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(wide))
}

/// Resolves a persistent id `('storage', torch.XStorage, key, location, numel[, view])`.
fn persistent_load(pid: &Value, storages: &mut Storages, file_len: usize) -> Result<usize> {
    let Value::Tuple(pid) = pid else { bail!("persistent id is {}, expected a tuple", pid.describe()) };
    let items = &pid.items;
    match items.first() {
        Some(Value::Str(tag)) if &**tag == "storage" => {}
        _ => bail!("persistent id does not start with 'storage'"),
    }
    ensure!(items.len() == 5 || items.len() == 6, "persistent id has {} fields, expected 5 or 6", items.len());
    let Value::Global(Global::Storage(kind)) = items[1] else {
        bail!("persistent id's storage type is {}, expected torch.FloatStorage or LongStorage", items[1].describe())
    };
    let Value::Str(key) = &items[2] else { bail!("persistent id's key is {}, expected a string", items[2].describe()) };
    ensure!(matches!(items[3], Value::Str(_)), "persistent id's location is {}", items[3].describe());
    let numel = non_negative(&items[4], "persistent id's element count")?;
    if let Some(view) = items.get(5) {
        // Old torch wrote (view_key, offset, size) here for views of a larger storage.
        ensure!(matches!(view, Value::None), "storage '{key}' is a view of another storage, which is not supported");
    }
    storages.declare(key, kind, numel, file_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes protocol-2 pickles opcode by opcode.
    #[derive(Clone)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn new() -> Self {
            Pickle(vec![0x80, 2])
        }
        fn op(mut self, opcode: u8) -> Self {
            self.0.push(opcode);
            self
        }
        fn int(mut self, value: i64) -> Self {
            match value {
                0..=0xff => self.0.extend([b'K', value as u8]),
                0x100..=0xffff => {
                    self.0.push(b'M');
                    self.0.extend((value as u16).to_le_bytes());
                }
                _ => {
                    self.0.push(b'J');
                    self.0.extend((value as i32).to_le_bytes());
                }
            }
            self
        }
        fn long1(mut self, bytes: &[u8]) -> Self {
            self.0.extend([0x8a, bytes.len() as u8]);
            self.0.extend(bytes);
            self
        }
        fn str(mut self, text: &str) -> Self {
            self.0.push(b'X');
            self.0.extend((text.len() as u32).to_le_bytes());
            self.0.extend(text.as_bytes());
            self
        }
        fn global(mut self, module: &str, name: &str) -> Self {
            self.0.push(b'c');
            self.0.extend(format!("{module}\n{name}\n").as_bytes());
            self
        }
        fn ints(self, values: &[i64]) -> Self {
            values.iter().fold(self.op(b'('), |p, &v| p.int(v)).op(b't')
        }
        fn stop(self) -> Vec<u8> {
            self.op(b'.').0
        }
    }

    fn header() -> Vec<u8> {
        let mut bytes = Pickle::new().long1(&MAGIC).stop();
        bytes.extend(Pickle::new().int(PROTOCOL_VERSION).stop());
        bytes.extend(
            Pickle::new()
                .op(b'}')
                .op(b'(')
                .str("protocol_version")
                .int(PROTOCOL_VERSION)
                .str("little_endian")
                .op(0x88)
                .op(b'u')
                .stop(),
        );
        bytes
    }

    /// A persistent id with its first fields given, as torch writes it (plus `None` view).
    fn storage_pid(p: Pickle, storage_type: &str, key: &str, numel: i64) -> Pickle {
        p.op(b'(').str("storage").global("torch", storage_type).str(key).str("cpu").int(numel).op(b'N').op(b't')
    }

    struct Entry<'a> {
        name: &'a str,
        storage_type: &'a str,
        key: &'a str,
        numel: i64,
        offset: i64,
        shape: &'a [i64],
        strides: &'a [i64],
    }

    /// `name -> _rebuild_tensor_v2(storage, offset, shape, strides, False, OrderedDict())`.
    fn push_entry(p: Pickle, e: &Entry) -> Pickle {
        let p = p.str(e.name).global("torch._utils", "_rebuild_tensor_v2").op(b'(');
        let p = storage_pid(p, e.storage_type, e.key, e.numel).op(b'Q');
        p.int(e.offset)
            .ints(e.shape)
            .ints(e.strides)
            .op(0x89)
            .global("collections", "OrderedDict")
            .op(b')')
            .op(b'R')
            .op(b't')
            .op(b'R')
    }

    /// A whole checkpoint: the entries, then the storages (key, element size, elements as
    /// little-endian bytes) in the given order.
    fn checkpoint(entries: &[Entry], storages: &[(&str, usize, Vec<u8>)]) -> Vec<u8> {
        let mut bytes = header();
        let main = Pickle::new().global("collections", "OrderedDict").op(b'q').op(0).op(b')').op(b'R').op(b'(');
        bytes.extend(entries.iter().fold(main, push_entry).op(b'u').stop());
        let keys = storages.iter().fold(Pickle::new().op(b']').op(b'('), |p, (key, _, _)| p.str(key));
        bytes.extend(keys.op(b'e').stop());
        for (_, element_size, data) in storages {
            bytes.extend(((data.len() / element_size) as u64).to_le_bytes());
            bytes.extend(data);
        }
        bytes
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    const WEIGHT: Entry = Entry {
        name: "conv.weight",
        storage_type: "FloatStorage",
        key: "1",
        numel: 6,
        offset: 0,
        shape: &[2, 3],
        strides: &[3, 1],
    };

    fn valid_file() -> Vec<u8> {
        let transposed = Entry { name: "conv.weight_t", shape: &[3, 2], strides: &[1, 3], ..WEIGHT };
        let counter = Entry {
            name: "bn.num_batches_tracked",
            storage_type: "LongStorage",
            key: "2",
            numel: 1,
            offset: 0,
            shape: &[],
            strides: &[],
        };
        checkpoint(
            &[WEIGHT, transposed, counter],
            &[("1", 4, f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])), ("2", 8, 7i64.to_le_bytes().to_vec())],
        )
    }

    fn error_of(bytes: &[u8]) -> String {
        format!("{:#}", parse(bytes, &Limits::default()).unwrap_err())
    }

    fn assert_error(bytes: &[u8], expected: &str) {
        let error = error_of(bytes);
        assert!(error.contains(expected), "expected '{expected}' in: {error}");
    }

    #[test]
    fn reads_tensors_views_and_counters() {
        let state = parse(&valid_file(), &Limits::default()).unwrap();
        let names: Vec<&str> = state.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["conv.weight", "conv.weight_t", "bn.num_batches_tracked"]);
        assert_eq!(state.f32("conv.weight").unwrap(), (&[2, 3][..], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][..]));
        // The transposed view is copied out in row-major order.
        assert_eq!(state.f32("conv.weight_t").unwrap(), (&[3, 2][..], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0][..]));
        let counter = state.get("bn.num_batches_tracked").unwrap();
        assert_eq!((counter.shape.as_slice(), &counter.values), (&[][..], &TensorValues::I64(vec![7])));
        assert!(state.f32("bn.num_batches_tracked").unwrap_err().to_string().contains("is not f32"));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = valid_file();
        for len in 0..file.len() {
            let error = error_of(&file[..len]);
            assert!(error.contains("truncated") || error.contains("unterminated"), "at {len}: {error}");
        }
    }

    #[test]
    fn every_single_byte_change_gives_a_result_or_an_error() {
        // Not a check of the messages: only that no corrupted byte panics or hangs.
        let file = valid_file();
        for i in 0..file.len() {
            for replacement in [0x00, 0x01, 0x7f, 0x80, 0xff, b'(', b'.', b'h'] {
                let mut bytes = file.clone();
                bytes[i] = replacement;
                let _ = parse(&bytes, &Limits::default());
            }
        }
        let mut trailing = file.clone();
        trailing.push(0);
        assert_error(&trailing, "1 unexpected bytes after the last storage");
    }

    #[test]
    fn refuses_other_files() {
        let mut bytes = header();
        bytes[4] ^= 1; // inside the magic number
        assert_error(&bytes, "wrong magic number");
        assert_error(b"PK\x03\x04rest of a zip", "zip-format checkpoint");
        assert_error(b"<html>", "unsupported pickle opcode");
        let mut wrong_version = Pickle::new().long1(&MAGIC).stop();
        wrong_version.extend(Pickle::new().int(1000).stop());
        assert_error(&wrong_version, "protocol version is the integer 1000, expected 1001");
        let mut protocol_4 = valid_file();
        protocol_4[1] = 4;
        assert_error(&protocol_4, "pickle protocol 4 is not supported");
    }

    #[test]
    fn refuses_globals_outside_the_allow_list() {
        let mut bytes = header();
        bytes.extend(Pickle::new().global("os", "system").str("echo hi").op(0x85).op(b'R').stop());
        assert_error(&bytes, "global 'os.system' is not allowed");
        let mut bytes = header();
        bytes.extend(Pickle::new().global("torch", "FloatStorage").op(b')').op(b'R').stop());
        assert_error(&bytes, "the global torch.FloatStorage cannot be called");
    }

    #[test]
    fn refuses_bad_persistent_ids() {
        let with_pid = |pid: Pickle| {
            let mut bytes = header();
            bytes.extend(pid.op(b'Q').stop());
            bytes
        };
        assert_error(&with_pid(Pickle::new().str("storage")), "persistent id is the string 'storage'");
        assert_error(&with_pid(Pickle::new().op(b'(').str("module").op(b't')), "does not start with 'storage'");
        assert_error(&with_pid(Pickle::new().op(b'(').str("storage").str("x").op(b't')), "has 2 fields");
        let not_a_storage_type =
            Pickle::new().op(b'(').str("storage").global("collections", "OrderedDict").str("k").str("cpu").int(1);
        assert_error(&with_pid(not_a_storage_type.op(b't')), "storage type is the global collections.OrderedDict");
        let negative = Pickle::new().op(b'(').str("storage").global("torch", "FloatStorage").str("k").str("cpu");
        assert_error(&with_pid(negative.int(-1).op(b't')), "element count is the integer -1");
        let view = Pickle::new().op(b'(').str("storage").global("torch", "FloatStorage").str("k").str("cpu").int(4);
        let view = view.op(b'(').str("base").int(0).int(4).op(b't').op(b't');
        assert_error(&with_pid(view), "storage 'k' is a view of another storage");
    }

    #[test]
    fn refuses_tensors_outside_their_storage() {
        let data = [("1", 4, f32_bytes(&[0.0; 6]))];
        let too_big = Entry { shape: &[3, 3], strides: &[3, 1], ..WEIGHT };
        assert_error(
            &checkpoint(&[too_big], &data),
            "tensor 'conv.weight': shape [3, 3], strides [3, 1], offset 0 reaches past the end of storage '1' (6 elements)",
        );
        let shifted = Entry { offset: 1, ..WEIGHT };
        assert_error(&checkpoint(&[shifted], &data), "reaches past the end of storage '1'");
        let expanded = Entry { shape: &[4, 3], strides: &[0, 1], ..WEIGHT };
        assert_error(&checkpoint(&[expanded], &data), "has 12 elements, more than its storage '1' (6)");
        let overflowing = Entry { shape: &[2, 3], strides: &[i32::MAX as i64, 1], ..WEIGHT };
        assert_error(&checkpoint(&[overflowing], &data), "reaches past the end");
        let mismatched = Entry { shape: &[6], strides: &[1, 1], ..WEIGHT };
        assert_error(&checkpoint(&[mismatched], &data), "size has 1 dimensions but stride has 2");
    }

    #[test]
    fn refuses_huge_or_inconsistent_counts() {
        let huge = Entry { numel: i32::MAX as i64, ..WEIGHT };
        assert_error(&checkpoint(&[huge], &[]), "storage '1' declares 2147483647 elements, more than the whole file");
        // The count before the data disagrees with the persistent id.
        let mut bytes = checkpoint(&[WEIGHT], &[("1", 4, f32_bytes(&[0.0; 6]))]);
        let count_at = bytes.len() - 24 - 8;
        bytes[count_at..count_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_error(&bytes, "storage '1' holds 18446744073709551615 elements but its persistent id declared 6");
        assert_error(&checkpoint(&[WEIGHT], &[]), "storage '1' is used by a tensor but the file holds no data for it");
        let unused = [("1", 4, f32_bytes(&[0.0; 6])), ("9", 4, f32_bytes(&[0.0]))];
        assert_error(&checkpoint(&[WEIGHT], &unused), "storage '9' is listed but no tensor uses it");
        let mut long_string = header();
        long_string.extend([0x80, 2, b'X']);
        long_string.extend(u32::MAX.to_le_bytes());
        assert_error(&long_string, "a 4294967295-byte string is over the limit");
    }

    #[test]
    fn bounds_nesting_stack_and_memo() {
        let mut marks = header();
        marks.extend(Pickle::new().0);
        marks.extend([b'('; 100]);
        assert_error(&marks, "more than 32 nested marks");

        let mut tuples = header();
        let nested = (0..100).fold(Pickle::new().op(b'N'), |p, _| p.op(0x85));
        tuples.extend(nested.stop());
        assert_error(&tuples, "values nested deeper than 32");

        let limits = Limits { max_stack: 10, max_memo: 3, ..Limits::default() };
        let mut wide = header();
        wide.extend((0..20).fold(Pickle::new(), |p, _| p.op(b'N')).stop());
        assert!(format!("{:#}", parse(&wide, &limits).unwrap_err()).contains("more than 10 values on the stack"));
        let mut memo = header();
        memo.extend((0..5).fold(Pickle::new().op(b'N'), |p, i| p.op(b'q').op(i)).stop());
        assert!(format!("{:#}", parse(&memo, &limits).unwrap_err()).contains("more than 3 memo entries"));

        let mut undefined = header();
        undefined.extend(Pickle::new().op(b'h').op(7).stop());
        assert_error(&undefined, "memo entry 7 was never put");
        let mut underflow = header();
        underflow.extend(Pickle::new().op(b'N').op(b'(').op(b'R').stop());
        assert_error(&underflow, "pop from an empty stack");
        let mut across_mark = header();
        across_mark.extend(Pickle::new().op(b'N').op(b'(').op(0x85).stop());
        assert_error(&across_mark, "TUPLE1 needs 1 values above the last mark");
    }

    #[test]
    fn repeated_copies_of_a_shared_dict_are_bounded() {
        // A dict put in the memo, then fetched and grown again and again: each SETITEM on the
        // shared copy costs a copy of the whole dict.
        let limits = Limits { max_copied_items: 1000, ..Limits::default() };
        let mut p = Pickle::new().op(b'}').op(b'q').op(0).op(b'(');
        for i in 0..100 {
            p = p.int(i).op(b'N');
        }
        p = p.op(b'u').op(b'q').op(0);
        for i in 0..100 {
            p = p.op(b'h').op(0).int(i).op(b'N').op(b's');
        }
        let mut bytes = header();
        bytes.extend(p.stop());
        let error = format!("{:#}", parse(&bytes, &limits).unwrap_err());
        assert!(error.contains("copies more than 1000 items of shared containers"), "{error}");
    }

    #[test]
    fn refuses_files_over_the_size_limit() {
        let limits = Limits { max_file_bytes: 10, ..Limits::default() };
        assert!(parse(&valid_file(), &limits).unwrap_err().to_string().contains("over the limit of 10"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.pth");
        std::fs::write(&path, valid_file()).unwrap();
        assert_eq!(load(&path).unwrap().tensors.len(), 3);
        let error = load_with_limits(&path, &limits).unwrap_err().to_string();
        assert!(error.contains("weights.pth: over the limit of 10 bytes"), "{error}");
        std::fs::write(&path, &valid_file()[..50]).unwrap();
        let error = format!("{:#}", load(&path).unwrap_err());
        assert!(
            error.contains("weights.pth: not a readable legacy torch checkpoint: ") && error.contains("truncated"),
            "{error}"
        );
    }
}
