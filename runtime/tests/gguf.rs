//! The GGUF reader: a round trip through the writer, and hostile files (truncated, lying
//! counts and offsets, huge strings and arrays, unknown types, overlapping or misaligned
//! tensors, bad dims), each refused with an error naming what is wrong and with bounded
//! memory: this test binary counts the bytes allocated, which is why it is a binary of its own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tandem_runtime::weights::gguf::{self, Gguf, MetaArray, MetaValue};
use tandem_runtime::{DType, HostTensor, TensorData};

struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        // SAFETY: the caller's contract for `GlobalAlloc::alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The tests of this binary run one at a time, so that the peak is one parse's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Far more than any parse of these small files needs, far less than a lying count asks for.
const MEMORY_BOUND: usize = 256 << 10;

/// Opens `bytes` as a GGUF file, checking that the parse allocated a bounded amount.
fn open(bytes: &[u8]) -> Result<Gguf, String> {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let owned = bytes.to_vec();
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let result = Gguf::from_bytes(Path::new("hostile.gguf"), owned).map_err(|e| e.to_string());
    let peak = PEAK.load(Ordering::SeqCst) - before;
    assert!(peak < MEMORY_BOUND, "parsing allocated {peak} bytes at once ({result:?})", result = result.as_ref().err());
    result
}

fn error(bytes: &[u8]) -> String {
    match open(bytes) {
        Ok(_) => panic!("a hostile file was accepted"),
        Err(e) => e,
    }
}

fn expect_error(bytes: &[u8], parts: &[&str]) {
    let e = error(bytes);
    assert!(e.starts_with("hostile.gguf: "), "the error names the file: {e}");
    for part in parts {
        assert!(e.contains(part), "'{e}' does not mention '{part}'");
    }
}

fn q8_0_blocks(n: usize, seed: u8) -> Vec<u8> {
    (0..n * 34).map(|i| if i % 34 == 1 { 0x3c } else { (i as u8).wrapping_mul(31).wrapping_add(seed) }).collect()
}

fn tensors() -> Vec<(String, HostTensor)> {
    let q8 = TensorData::from_bytes(DType::Q8_0, &q8_0_blocks(2, 1)).unwrap();
    let q4k = TensorData::from_bytes(DType::Q4_K, &[7u8; 144]).unwrap();
    vec![
        ("a".into(), HostTensor::new(vec![2, 32], q8).unwrap()),
        ("b".into(), HostTensor::f32(vec![3], vec![1.0, -2.0, 0.5]).unwrap()),
        ("c".into(), HostTensor::new(vec![1, 256], q4k).unwrap()),
    ]
}

fn metadata() -> Vec<(String, MetaValue)> {
    vec![
        ("general.architecture".into(), MetaValue::String("llama".into())),
        ("llama.block_count".into(), MetaValue::U32(30)),
        ("u8".into(), MetaValue::U8(200)),
        ("i8".into(), MetaValue::I8(-3)),
        ("u16".into(), MetaValue::U16(65000)),
        ("i16".into(), MetaValue::I16(-30000)),
        ("i32".into(), MetaValue::I32(-7)),
        ("f32".into(), MetaValue::F32(1e-5)),
        ("bool".into(), MetaValue::Bool(true)),
        ("u64".into(), MetaValue::U64(1 << 40)),
        ("i64".into(), MetaValue::I64(-(1 << 40))),
        ("f64".into(), MetaValue::F64(0.25)),
        ("tokenizer.ggml.tokens".into(), MetaValue::Array(MetaArray::String(vec!["<s>".into(), "hé".into()]))),
        ("scores".into(), MetaValue::Array(MetaArray::F32(vec![0.5, -1.0]))),
        (
            "nested".into(),
            MetaValue::Array(MetaArray::Array(vec![MetaArray::I32(vec![1, 2]), MetaArray::Bool(vec![false])])),
        ),
    ]
}

fn good() -> Vec<u8> {
    gguf::to_bytes(&metadata(), &tensors(), gguf::DEFAULT_ALIGNMENT).unwrap()
}

/// Offset just past the first occurrence of the GGUF string `s` (length + bytes).
fn after_string(bytes: &[u8], s: &str) -> usize {
    let mut needle = (s.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(s.as_bytes());
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("'{s}' not in the file"));
    at + needle.len()
}

fn patch(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at..at + value.len()].copy_from_slice(value);
    out
}

/// Where tensor `name`'s info fields sit: (n_dims, first dim, ggml type, offset).
fn info_fields(bytes: &[u8], name: &str) -> (usize, usize, usize, usize) {
    let n_dims_at = after_string(bytes, name);
    let n = u32::from_le_bytes(bytes[n_dims_at..n_dims_at + 4].try_into().unwrap()) as usize;
    let type_at = n_dims_at + 4 + 8 * n;
    (n_dims_at, n_dims_at + 4, type_at, type_at + 4)
}

#[test]
fn round_trip_reads_every_value_type_and_tensor() {
    let g = open(&good()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.metadata(), metadata().as_slice());
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u32("u16").unwrap(), 65000, "any integer type that fits");
    assert_eq!(g.get_i64("i64").unwrap(), -(1 << 40));
    assert_eq!(g.get_f32("f64").unwrap(), 0.25);
    assert!(g.get_bool("bool").unwrap());
    assert_eq!(g.get_string_array("tokenizer.ggml.tokens").unwrap(), ["<s>", "hé"]);
    for (key, message) in [
        ("llama.context_length", "metadata 'llama.context_length': missing"),
        ("i32", "metadata 'i32': -7 does not fit in a u32"),
        ("u64", "metadata 'u64': 1099511627776 does not fit in a u32"),
        ("general.architecture", "metadata 'general.architecture': is a string, expected a u32"),
    ] {
        let e = g.get_u32(key).unwrap_err().to_string();
        assert!(e.contains(message), "{e}");
    }
    assert!(g.get_string_array("scores").unwrap_err().to_string().contains("array of f32, expected strings"));
    for (name, t) in tensors() {
        let info = g.tensor_info(&name).unwrap();
        assert_eq!(info.shape(), t.shape);
        assert_eq!(
            info.dims,
            t.shape.iter().rev().map(|&d| d as u64).collect::<Vec<_>>(),
            "GGUF lists dims innermost first"
        );
        assert_eq!(info.offset % 32, 0);
        assert_eq!(g.tensor(&name).unwrap(), t);
        assert_eq!(g.tensor_f32(&name).unwrap().to_f32(), t.to_f32());
    }
    assert!(g.tensor("d").unwrap_err().to_string().contains("tensor 'd' is missing"));
    // Version 2 has the same layout.
    let v2 = open(&patch(&good(), 4, &2u32.to_le_bytes())).unwrap();
    assert_eq!((v2.version(), v2.tensors().len()), (2, 3));
    // A non-default alignment is written, read and honoured.
    let wide = gguf::to_bytes(&metadata(), &tensors(), 256).unwrap();
    let g = open(&wide).unwrap();
    assert_eq!((g.alignment(), g.data_start() % 256), (256, 0));
    assert!(g.tensors().iter().all(|t| t.offset % 256 == 0));
    assert_eq!(g.tensor("c").unwrap(), tensors()[2].1);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = good();
    for len in 0..bytes.len() {
        let e = error(&bytes[..len]);
        assert!(
            e.contains("truncated") || e.contains("not a GGUF file") || e.contains("data section"),
            "cut at {len}: {e}"
        );
    }
}

#[test]
fn header_faults() {
    let bytes = good();
    expect_error(&patch(&bytes, 0, b"GGUG"), &["not a GGUF file (bad magic bytes)"]);
    expect_error(&patch(&bytes, 4, &1u32.to_le_bytes()), &["version 1 is not supported"]);
    expect_error(&patch(&bytes, 4, &9u32.to_le_bytes()), &["version 9 is not supported"]);
    expect_error(&patch(&bytes, 4, &3u32.to_be_bytes()), &["big-endian"]);
    expect_error(&patch(&bytes, 8, &(1u64 << 60).to_le_bytes()), &["tensor count", "declares 1152921504606846976"]);
    expect_error(&patch(&bytes, 16, &(1u64 << 60).to_le_bytes()), &["metadata count declares"]);
    // One tensor more than the file describes: the next info is read from the data section.
    assert!(error(&patch(&bytes, 8, &4u64.to_le_bytes())).contains("tensor"));
}

#[test]
fn metadata_faults() {
    let bytes = good();
    // The first key's length: 2^63.
    expect_error(
        &patch(&bytes, 24, &(1u64 << 63).to_le_bytes()),
        &["truncated", "metadata key 0", "9223372036854775808"],
    );
    // A string value 2^63 long.
    let value = after_string(&bytes, "general.architecture") + 4;
    expect_error(&patch(&bytes, value, &(1u64 << 63).to_le_bytes()), &["metadata 'general.architecture'", "truncated"]);
    // An array of 2^60 strings, and of 2^60 u8 (whose bytes would be allocated in one piece).
    let array = after_string(&bytes, "tokenizer.ggml.tokens") + 4;
    expect_error(
        &patch(&bytes, array + 4, &(1u64 << 60).to_le_bytes()),
        &["metadata 'tokenizer.ggml.tokens' declares 1152921504606846976 entries"],
    );
    let huge_u8 = patch(&patch(&bytes, array, &0u32.to_le_bytes()), array + 4, &(1u64 << 60).to_le_bytes());
    expect_error(&huge_u8, &["metadata 'tokenizer.ggml.tokens' declares"]);
    // Unknown value types, at the top and inside an array.
    expect_error(
        &patch(&bytes, value - 4, &99u32.to_le_bytes()),
        &["metadata 'general.architecture' has unknown value type 99"],
    );
    expect_error(&patch(&bytes, array, &13u32.to_le_bytes()), &["unknown value type 13"]);
    // A bool that is neither 0 nor 1.
    let b = after_string(&bytes, "bool") + 4;
    expect_error(&patch(&bytes, b, &[2]), &["metadata 'bool' is a bool of value 2"]);
    // Invalid UTF-8 in a string.
    let s = after_string(&bytes, "general.architecture") + 12;
    expect_error(&patch(&bytes, s, &[0xff]), &["metadata 'general.architecture' is not valid UTF-8"]);
    // Arrays nested deeper than any real file, and repeated keys.
    let mut deep = MetaArray::U8(vec![1]);
    for _ in 0..20 {
        deep = MetaArray::Array(vec![deep]);
    }
    let nested = gguf::to_bytes(&[("deep".into(), MetaValue::Array(deep))], &[], 32).unwrap();
    expect_error(&nested, &["metadata 'deep", "nests arrays more than 8 deep"]);
    let twice = [("k".to_string(), MetaValue::U8(1)), ("k".to_string(), MetaValue::U8(2))];
    expect_error(&gguf::to_bytes(&twice, &[], 32).unwrap(), &["metadata 'k' appears twice"]);
    // An alignment that is not a power of two.
    let wide = gguf::to_bytes(&metadata(), &tensors(), 64).unwrap();
    let align = after_string(&wide, "general.alignment") + 4;
    expect_error(&patch(&wide, align, &48u32.to_le_bytes()), &["'general.alignment' must be a u32 power of two"]);
}

#[test]
fn tensor_info_faults() {
    let bytes = good();
    let (n_dims, dim, ty, offset) = info_fields(&bytes, "b");
    expect_error(&patch(&bytes, ty, &77u32.to_le_bytes()), &["tensor 'b' has unknown ggml type 77"]);
    expect_error(
        &patch(&bytes, ty, &7u32.to_le_bytes()),
        &["tensor 'b' has ggml type 7 (Q5_1), which tandem does not support"],
    );
    expect_error(&patch(&bytes, n_dims, &5u32.to_le_bytes()), &["tensor 'b' has 5 dims"]);
    expect_error(&patch(&bytes, n_dims, &0u32.to_le_bytes()), &["tensor 'b' has 0 dims"]);
    expect_error(&patch(&bytes, dim, &0u64.to_le_bytes()), &["tensor 'b' has a dimension of 0"]);
    expect_error(&patch(&bytes, dim, &(1u64 << 62).to_le_bytes()), &["tensor 'b'", "larger than the file"]);
    // Dims whose product overflows u64.
    let (_, adim, _, _) = info_fields(&bytes, "a");
    let overflow = patch(&patch(&bytes, adim, &(1u64 << 40).to_le_bytes()), adim + 8, &(1u64 << 40).to_le_bytes());
    expect_error(&overflow, &["tensor 'a'", "larger than the file"]);
    // Offsets: misaligned, overlapping another tensor, past the end, at the very top of u64.
    expect_error(
        &patch(&bytes, offset, &4u64.to_le_bytes()),
        &["tensor 'b' is at offset 4, not a multiple of the alignment 32"],
    );
    expect_error(&patch(&bytes, offset, &32u64.to_le_bytes()), &["tensors 'a' and 'b' overlap"]);
    expect_error(
        &patch(&bytes, offset, &(1u64 << 40).to_le_bytes()),
        &["tensor 'b' spans", "truncated or lying offset"],
    );
    let top = u64::MAX - 31;
    expect_error(&patch(&bytes, offset, &top.to_le_bytes()), &["tensor 'b' spans"]);
    // Rows that are not whole blocks: a Q8_0 tensor of 4 rows of 16 values (64 values in all).
    let q8 = TensorData::from_bytes(DType::Q8_0, &q8_0_blocks(2, 0)).unwrap();
    let half_rows = vec![("h".to_string(), HostTensor::new(vec![4, 16], q8).unwrap())];
    expect_error(
        &gguf::to_bytes(&[], &half_rows, 32).unwrap(),
        &["tensor 'h': its rows of 16 values are not whole q8_0 blocks"],
    );
    // The same name twice.
    let mut twice = tensors();
    twice[1].0 = "a".into();
    expect_error(&gguf::to_bytes(&[], &twice, 32).unwrap(), &["tensor 'a' appears twice"]);
}
