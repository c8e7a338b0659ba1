//! docs/ops.md: which backend implements which op, generated from the code so that it cannot
//! drift. cpu and wgpu come from the backends themselves (the wgpu column reads the embedded
//! WGSL, so no device is needed); cuda reads `cuda/<stem>.cu` for a
//! `extern "C" __global__ void <entry>(` definition, so the table needs no CUDA toolkit.

use std::path::Path;
use tandem_runtime::OpKind;
use tandem_runtime::backend::Backend;
use tandem_runtime::backend::cpu::CpuBackend;

/// Where the generated table lives, relative to the repository root.
pub const OPS_MD: &str = "docs/ops.md";

/// Whether `source` (CUDA C) defines the kernel `entry`, allowing `__launch_bounds__(..)`
/// and line breaks between `void` and the name.
pub fn cuda_defines(source: &str, entry: &str) -> bool {
    source.match_indices("extern \"C\" __global__ void").any(|(at, decl)| {
        let mut rest = source[at + decl.len()..].trim_start();
        if let Some(bounds) = rest.strip_prefix("__launch_bounds__") {
            let Some(close) = bounds.find(')') else { return false };
            rest = bounds[close + 1..].trim_start();
        }
        rest.strip_prefix(entry).is_some_and(|after| after.trim_start().starts_with('('))
    })
}

/// Whether cuda/quant.cu defines every stored-weight kernel of the op.
fn cuda_has_stored(root: &Path, kind: OpKind) -> bool {
    let stem = tandem_runtime::ops::STORED_WEIGHT_STEM;
    let Ok(src) = std::fs::read_to_string(root.join("cuda").join(format!("{stem}.cu"))) else { return false };
    tandem_runtime::ops::STORED_WEIGHT_KERNELS
        .iter()
        .find(|(k, _)| *k == kind)
        .is_some_and(|(_, entries)| entries.iter().all(|e| cuda_defines(&src, e)))
}

fn cuda_has(root: &Path, kind: OpKind) -> bool {
    match kind.kernel() {
        None => true,
        Some((stem, entry)) => std::fs::read_to_string(root.join("cuda").join(format!("{stem}.cu")))
            .is_ok_and(|src| cuda_defines(&src, entry)),
    }
}

/// The table for the repository at `root`.
pub fn render(root: &Path) -> String {
    let mark = |yes: bool| if yes { "✅" } else { "❌" };
    let cpu = CpuBackend::new();
    let mut out = String::from(
        "# Ops × backends\n\n\
         Generated from the code by `tests/tests/ops_table.rs`; do not edit. Regenerate with\n\
         `TANDEM_BLESS=1 cargo test -p tandem-tests --test ops_table`.\n\n\
         Kernels pair up across GPU backends by file stem and entry point: `shaders/<stem>.wgsl`\n\
         and `cuda/<stem>.cu` both define `<entry>`. A view (reshape) moves no data and needs no\n\
         kernel.\n\n\
         | op | kernel (stem: entry) | cpu | wgpu | cuda |\n\
         |---|---|---|---|---|\n",
    );
    for &kind in OpKind::ALL {
        let kernel = kind.kernel().map_or("view".to_string(), |(stem, entry)| format!("`{stem}`: `{entry}`"));
        out += &format!(
            "| {} | {kernel} | {} | {} | {} |\n",
            kind.name(),
            mark(cpu.supports(kind)),
            mark(tandem_runtime::backend::wgpu::has_kernel(kind)),
            mark(cuda_has(root, kind)),
        );
    }
    let stem = tandem_runtime::ops::STORED_WEIGHT_STEM;
    out += &format!(
        "\nAn op whose weight is stored as f16, bf16 or GGUF blocks (`Op::stored_weight`) runs the\n\
         stored-weight kernels of `shaders/{stem}.wgsl` and `cuda/{stem}.cu` instead, each built once\n\
         per weight dtype (a WGSL override constant, a CUDA `-D` define) and dequantizing inside\n\
         the kernel.\n\n\
         | op | stored-weight kernels (stem: entries) | wgpu | cuda |\n\
         |---|---|---|---|\n"
    );
    for &(kind, entries) in tandem_runtime::ops::STORED_WEIGHT_KERNELS {
        let names: Vec<String> = entries.iter().map(|e| format!("`{e}`")).collect();
        out += &format!(
            "| {} | `{stem}`: {} | {} | {} |\n",
            kind.name(),
            names.join(", "),
            mark(tandem_runtime::backend::wgpu::has_stored_kernels(kind)),
            mark(cuda_has_stored(root, kind)),
        );
    }
    out += &render_dtypes(root);
    out
}

/// The dtypes each backend runs each op on. The rows are the input dtypes of the conformance
/// cases and, where `Op::infer` accepts them, the same cases with every f32 input as f16: what
/// the ops accept is decided by `infer` alone, and what each backend runs by its
/// `supports_dtypes` (the CPU, the reference, runs everything `infer` accepts).
fn render_dtypes(root: &Path) -> String {
    use std::collections::BTreeSet;
    use tandem_runtime::backend::{cuda_supports_dtypes, wgpu};
    use tandem_runtime::{DType, TensorType};
    let mark = |yes: bool| if yes { "✅" } else { "❌" };
    let mut rows = BTreeSet::new();
    for case in crate::cases(1) {
        let dtypes: Vec<DType> = case.inputs.iter().map(|t| t.dtype()).collect();
        let halves: Vec<DType> = dtypes.iter().map(|&d| if d == DType::F32 { DType::F16 } else { d }).collect();
        for signature in [dtypes, halves] {
            let types: Vec<TensorType> =
                case.inputs.iter().zip(&signature).map(|(t, &d)| TensorType::fixed(d, &t.shape)).collect();
            let Ok(outputs) = case.op.infer(&types) else { continue };
            let out: Vec<&str> = outputs.iter().map(|t| t.dtype.name()).collect();
            let ins: Vec<&str> = signature.iter().map(|d| d.name()).collect();
            let kind = case.op.kind();
            let cpu = CpuBackend::new().supports_dtypes(&case.op, &signature);
            let (gpu_kernel, cuda_kernel) = match case.op.stored_weight(&signature) {
                Some(_) => (wgpu::has_stored_kernels(kind), cuda_has_stored(root, kind)),
                None => (wgpu::has_kernel(kind), cuda_has(root, kind)),
            };
            let gpu = gpu_kernel && wgpu::supports_dtypes(&case.op, &signature);
            let cuda = cuda_kernel && cuda_supports_dtypes(&case.op, &signature);
            rows.insert((kind, ins.join(", "), out.join(", "), cpu, gpu, cuda));
        }
    }
    let mut out = String::from(
        "\n## Dtypes\n\n\
         Which input dtypes each backend runs each op on, from the conformance cases (and their\n\
         all-f16 forms where the op accepts them). Stored weights (f16, bf16, GGUF blocks) are\n\
         dequantized inside the kernel.\n\n\
         | op | inputs | outputs | cpu | wgpu | cuda |\n\
         |---|---|---|---|---|---|\n",
    );
    for (kind, ins, outs, cpu, gpu, cuda) in rows {
        out += &format!("| {} | {ins} | {outs} | {} | {} | {} |\n", kind.name(), mark(cpu), mark(gpu), mark(cuda));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::cuda_defines;

    #[test]
    fn finds_cuda_kernels_in_their_usual_spellings() {
        assert!(cuda_defines("extern \"C\" __global__ void gather(const P p)", "gather"));
        assert!(cuda_defines("extern \"C\" __global__ void __launch_bounds__(256)\n    pool (P p)", "pool"));
        assert!(!cuda_defines("extern \"C\" __global__ void pooling(P p)", "pool"));
        assert!(!cuda_defines("__device__ void pool(P p)", "pool"));
    }
}
