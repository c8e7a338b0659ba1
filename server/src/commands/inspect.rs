//! `tandem inspect FILE [--json]`: what a model file holds. GGUF (version, architecture,
//! metadata, tensors), safetensors, tandem graph files and legacy torch checkpoints: each
//! tensor's dtype, shape and bytes, and totals. The format is told by the file's first bytes.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use tandem_runtime::graph::{GRAPH_MAGIC, read_graph_file};
use tandem_runtime::weights::gguf::{MetaArray, MetaValue};
use tandem_runtime::weights::{Gguf, Weights, torch};

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF, safetensors, tandem graph (.tgraph) or legacy torch (.pth) file.
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Arrays longer than this (a vocabulary, merges, scores) are shown by type and length only.
const MAX_SHOWN_ARRAY: usize = 16;

/// What a file holds, ready for either rendering.
struct Report {
    format: &'static str,
    /// Facts about the whole file (version, architecture, inputs, ...).
    summary: Vec<(String, Value)>,
    metadata: Vec<(String, Value)>,
    tensors: Vec<Tensor>,
}

struct Tensor {
    name: String,
    dtype: String,
    /// Dims as written (symbolic ones by name in graph files).
    shape: Vec<Value>,
    /// `None` for a graph value of symbolic shape.
    bytes: Option<u64>,
}

pub fn run(args: Args) -> Result<()> {
    let report = inspect(&args.file)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&report))?);
    } else {
        print!("{}", to_text(&args.file, &report));
    }
    Ok(())
}

fn inspect(path: &Path) -> Result<Report> {
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let head = &head[..n];
    if head.starts_with(b"GGUF") {
        gguf(path)
    } else if head.starts_with(GRAPH_MAGIC) {
        graph(path)
    } else if head.starts_with(&[0x80, 0x02]) || head.starts_with(b"PK\x03\x04") {
        // Pickle protocol 2 (legacy torch.save) or a zip (torch >= 1.6, refused by the reader).
        checkpoint(path)
    } else if head.len() > 8 && head[8] == b'{' {
        // safetensors: a u64 header length, then the JSON header.
        safetensors(path)
    } else {
        bail!("{}: not a GGUF, safetensors, tandem graph or legacy torch file", path.display())
    }
}

fn gguf(path: &Path) -> Result<Report> {
    let file = Gguf::open(path)?;
    let mut summary = vec![("version".into(), json!(file.version())), ("alignment".into(), json!(file.alignment()))];
    if let Ok(arch) = file.architecture() {
        summary.push(("architecture".into(), json!(arch)));
    }
    let metadata = file.metadata().iter().map(|(k, v)| (k.clone(), meta_json(v))).collect();
    let tensors = file
        .tensors()
        .iter()
        .map(|t| Tensor {
            name: t.name.clone(),
            dtype: t.dtype.name().into(),
            shape: t.shape().into_iter().map(|d| json!(d)).collect(),
            bytes: Some(t.bytes as u64),
        })
        .collect();
    Ok(Report { format: "gguf", summary, metadata, tensors })
}

fn meta_json(value: &MetaValue) -> Value {
    match value {
        MetaValue::U8(v) => json!(v),
        MetaValue::I8(v) => json!(v),
        MetaValue::U16(v) => json!(v),
        MetaValue::I16(v) => json!(v),
        MetaValue::U32(v) => json!(v),
        MetaValue::I32(v) => json!(v),
        MetaValue::F32(v) => json!(v),
        MetaValue::Bool(v) => json!(v),
        MetaValue::String(v) => json!(v),
        MetaValue::U64(v) => json!(v),
        MetaValue::I64(v) => json!(v),
        MetaValue::F64(v) => json!(v),
        MetaValue::Array(a) => array_json(a),
    }
}

/// Short arrays in full; long ones as `{"array": TYPE, "len": N}`.
fn array_json(array: &MetaArray) -> Value {
    if array.len() > MAX_SHOWN_ARRAY {
        return json!({"array": array.element_type(), "len": array.len()});
    }
    match array {
        MetaArray::U8(v) => json!(v),
        MetaArray::I8(v) => json!(v),
        MetaArray::U16(v) => json!(v),
        MetaArray::I16(v) => json!(v),
        MetaArray::U32(v) => json!(v),
        MetaArray::I32(v) => json!(v),
        MetaArray::F32(v) => json!(v),
        MetaArray::Bool(v) => json!(v),
        MetaArray::String(v) => json!(v),
        MetaArray::Array(v) => Value::Array(v.iter().map(array_json).collect()),
        MetaArray::U64(v) => json!(v),
        MetaArray::I64(v) => json!(v),
        MetaArray::F64(v) => json!(v),
    }
}

fn safetensors(path: &Path) -> Result<Report> {
    let file = Weights::open(path)?;
    let tensors = file
        .infos()
        .into_iter()
        .map(|t| Tensor {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape.into_iter().map(|d| json!(d)).collect(),
            bytes: Some(t.bytes as u64),
        })
        .collect();
    Ok(Report { format: "safetensors", summary: vec![], metadata: vec![], tensors })
}

fn graph(path: &Path) -> Result<Report> {
    let g = read_graph_file(path)?;
    let names =
        |ids: &[tandem_runtime::ValueId]| json!(ids.iter().map(|&id| g.value(id).name.clone()).collect::<Vec<_>>());
    let summary = vec![
        ("name".into(), json!(g.name)),
        ("nodes".into(), json!(g.nodes.len())),
        ("inputs".into(), names(&g.inputs)),
        ("outputs".into(), names(&g.outputs)),
    ];
    let metadata = g.metadata.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let tensors = g
        .weights
        .iter()
        .map(|&id| {
            let ty = &g.value(id).ty;
            let shape = ty.shape.iter().map(|d| d.fixed().map_or_else(|| json!(d.to_string()), |n| json!(n))).collect();
            let bytes = ty.concrete().and_then(|s| ty.dtype.bytes_for_shape(&s).ok()).map(|b| b as u64);
            Tensor { name: g.value(id).name.clone(), dtype: ty.dtype.name().into(), shape, bytes }
        })
        .collect();
    Ok(Report { format: "tandem graph", summary, metadata, tensors })
}

fn checkpoint(path: &Path) -> Result<Report> {
    let state = torch::load(path)?;
    let tensors = state
        .tensors
        .iter()
        .map(|t| {
            let (dtype, size) = match t.values {
                torch::TensorValues::F32(_) => ("f32", 4),
                torch::TensorValues::I64(_) => ("i64", 8),
            };
            let values: usize = t.shape.iter().product();
            Tensor {
                name: t.name.clone(),
                dtype: dtype.into(),
                shape: t.shape.iter().map(|&d| json!(d)).collect(),
                bytes: Some(values as u64 * size),
            }
        })
        .collect();
    Ok(Report { format: "legacy torch checkpoint", summary: vec![], metadata: vec![], tensors })
}

fn total_bytes(report: &Report) -> u64 {
    report.tensors.iter().filter_map(|t| t.bytes).sum()
}

fn to_json(report: &Report) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("format".into(), json!(report.format));
    out.extend(report.summary.iter().cloned());
    if !report.metadata.is_empty() {
        out.insert("metadata".into(), Value::Object(report.metadata.iter().cloned().collect()));
    }
    let tensors = report
        .tensors
        .iter()
        .map(|t| json!({"name": t.name, "dtype": t.dtype, "shape": t.shape, "bytes": t.bytes}))
        .collect();
    out.insert("tensors".into(), Value::Array(tensors));
    out.insert("total".into(), json!({"tensors": report.tensors.len(), "bytes": total_bytes(report)}));
    Value::Object(out)
}

fn to_text(path: &Path, report: &Report) -> String {
    let mut out = format!("{}: {}\n", path.display(), report.format);
    for (key, value) in &report.summary {
        out += &format!("{key}: {}\n", plain(value));
    }
    if !report.metadata.is_empty() {
        out += &format!("metadata ({} keys):\n", report.metadata.len());
        for (key, value) in &report.metadata {
            out += &format!("  {key} = {}\n", plain(value));
        }
    }
    let width = report.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
    out += &format!("tensors ({}):\n", report.tensors.len());
    for t in &report.tensors {
        let shape = t.shape.iter().map(plain).collect::<Vec<_>>().join(", ");
        let bytes = t.bytes.map_or("-".to_string(), |b| b.to_string());
        out += &format!("  {:width$}  {:6}  [{shape}]  {bytes} bytes\n", t.name, t.dtype);
    }
    let total = total_bytes(report);
    out += &format!(
        "total: {} tensors, {total} bytes ({:.1} MiB)\n",
        report.tensors.len(),
        total as f64 / (1 << 20) as f64
    );
    out
}

/// Longer strings (a chat template) are cut in the text form; `--json` has them whole.
const MAX_SHOWN_CHARS: usize = 80;

/// A JSON value as text: strings without quotes and cut, abbreviated arrays as `[TYPE × N]`.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) if s.chars().count() > MAX_SHOWN_CHARS => {
            let head: String = s.chars().take(MAX_SHOWN_CHARS).collect();
            format!("{}… ({} chars)", head.replace(['\n', '\r'], " "), s.chars().count())
        }
        Value::String(s) => s.replace(['\n', '\r'], " "),
        Value::Object(o) if o.contains_key("len") => {
            format!("[{} × {}]", o.get("array").map(plain).unwrap_or_default(), o["len"])
        }
        other => other.to_string(),
    }
}
