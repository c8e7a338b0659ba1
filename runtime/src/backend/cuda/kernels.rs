//! The CUDA kernel sources (cuda/*.cu and their headers), embedded in the binary so that a
//! deployed program needs no source tree, and the options NVRTC compiles them with.

use super::launch::{Variant, WEIGHT_VARIANTS};
use super::nvrtc::ImageKind;

/// One kernel file: cuda/<stem>.cu.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    pub stem: &'static str,
    pub source: &'static str,
    /// The element-type builds this file has (see [`Variant`]).
    pub variants: &'static [Variant],
    /// Entry points only the f32 build defines (their ops take f32 operands only).
    pub f32_only: &'static [&'static str],
}

impl KernelFile {
    /// The entry points the `variant` build of this file defines.
    pub fn entry_points(&self, variant: Variant) -> Vec<String> {
        let mut names = entry_points(self.source);
        if variant != Variant::F32 {
            names.retain(|n| !self.f32_only.contains(&n.as_str()));
        }
        names
    }
}

/// Headers the kernel files include, by the name they include them with.
pub const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../../cuda/common.cuh")),
    ("params.cuh", include_str!("../../../../cuda/params.cuh")),
];

const F32: &[Variant] = &[Variant::F32];
const BOTH: &[Variant] = &[Variant::F32, Variant::F16];
/// Attention also reads (and kv_write writes) an f16 KV cache under f32 queries.
const ATTENTION: &[Variant] = &[Variant::F32, Variant::F16, Variant::F16Cache];

/// Every kernel file, one per WGSL file of the same stem.
pub const FILES: &[KernelFile] = &[
    KernelFile {
        stem: "attention",
        source: include_str!("../../../../cuda/attention.cu"),
        variants: ATTENTION,
        f32_only: &[],
    },
    KernelFile {
        stem: "elementwise",
        source: include_str!("../../../../cuda/elementwise.cu"),
        variants: F32,
        f32_only: &[],
    },
    KernelFile { stem: "gather", source: include_str!("../../../../cuda/gather.cu"), variants: F32, f32_only: &[] },
    KernelFile {
        stem: "matmul",
        source: include_str!("../../../../cuda/matmul.cu"),
        variants: BOTH,
        f32_only: &["lora_matmul"],
    },
    KernelFile { stem: "norm", source: include_str!("../../../../cuda/norm.cu"), variants: F32, f32_only: &[] },
    KernelFile { stem: "pool", source: include_str!("../../../../cuda/pool.cu"), variants: F32, f32_only: &[] },
    KernelFile { stem: "rope", source: include_str!("../../../../cuda/rope.cu"), variants: F32, f32_only: &[] },
    KernelFile {
        stem: "softlogic",
        source: include_str!("../../../../cuda/softlogic.cu"),
        variants: F32,
        f32_only: &[],
    },
    KernelFile { stem: "conv", source: include_str!("../../../../cuda/conv.cu"), variants: F32, f32_only: &[] },
    // The stored-weight kernels: one build per weight dtype, no f32 build.
    KernelFile {
        stem: "quant",
        source: include_str!("../../../../cuda/quant.cu"),
        variants: WEIGHT_VARIANTS,
        f32_only: &[],
    },
    KernelFile { stem: "sample", source: include_str!("../../../../cuda/sample.cu"), variants: F32, f32_only: &[] },
];

pub fn file(stem: &str) -> Option<&'static KernelFile> {
    FILES.iter().find(|f| f.stem == stem)
}

/// Smallest compute capability each variant needs: the f16 matmul uses mma.sync m16n8k16.
pub fn min_arch(stem: &str, variant: Variant) -> u32 {
    if stem == "matmul" && variant == Variant::F16 { 80 } else { 50 }
}

/// NVRTC options for one build. No fast-math: the kernels must agree with the CPU reference
/// within the conformance tolerances (IEEE division and square root, exact expf).
pub fn compile_options(variant: Variant, kind: ImageKind, arch: u32) -> Vec<String> {
    let mut options = vec![kind.arch_option(arch), "--std=c++17".to_string(), "--generate-line-info".to_string()];
    options.extend(variant.defines().iter().map(|d| format!("--define-macro={d}")));
    options
}

/// The `extern "C" __global__` entry points of a CUDA source, in order of appearance.
pub fn entry_points(source: &str) -> Vec<String> {
    const MARK: &str = "extern \"C\" __global__";
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(MARK) {
        rest = &rest[at + MARK.len()..];
        // `void`, maybe `__launch_bounds__(...)`, then the name and its parameter list.
        let Some(open) = rest.find('(') else { break };
        let mut head = rest[..open].trim();
        if head.ends_with("__launch_bounds__") {
            // the '(' found was the launch bounds': the name follows their ')'
            let Some(close) = rest[open..].find(')') else { break };
            let after = &rest[open + close + 1..];
            let Some(open2) = after.find('(') else { break };
            head = after[..open2].trim();
        }
        if let Some(name) =
            head.split_whitespace().last().filter(|n| n.chars().all(|c| c.is_alphanumeric() || c == '_'))
        {
            names.push(name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::OpKind;

    #[test]
    fn every_op_kernel_is_an_entry_point_of_its_file() {
        for kind in OpKind::ALL {
            let Some((stem, entry)) = kind.kernel() else { continue };
            let file = file(stem).unwrap_or_else(|| panic!("no cuda/{stem}.cu for op {}", kind.name()));
            assert!(entry_points(file.source).iter().any(|e| e == entry), "cuda/{stem}.cu has no entry point {entry}");
        }
    }

    #[test]
    fn entry_points_are_found_with_and_without_launch_bounds() {
        let src = "extern \"C\" __global__ void a(int x) {}\nextern \"C\" __global__ void __launch_bounds__(256)\n    b_2(const P p) {}";
        assert_eq!(entry_points(src), ["a", "b_2"]);
    }
}
