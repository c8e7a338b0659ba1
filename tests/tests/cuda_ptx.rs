//! Every CUDA kernel file, in every element-type build, compiles with NVRTC for sm_80 (A100)
//! and sm_90 (H100), both to PTX and to a cubin, with no GPU and no CUDA toolkit: only
//! libnvrtc, which CI takes from PyPI's nvidia-cuda-nvrtc-cu12 wheel (cuda/fetch_nvrtc.sh).
//! The cubin step runs ptxas, so inline PTX (mma.sync), register and shared-memory limits are
//! checked too, and its statistics are printed (`--nocapture` to see them).
//!
//! Without NVRTC the tests print why and pass, except in CI (`CI=true`), where they fail.

#![cfg(feature = "cuda")]

use tandem_runtime::backend::cuda::nvrtc::{self, ImageKind};
use tandem_runtime::backend::cuda::{kernels, libs};

const ARCHS: [u32; 2] = [80, 90];

fn nvrtc_or_skip() -> bool {
    match libs::nvrtc() {
        Ok(()) => true,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => panic!(
            "CI is set and NVRTC cannot be loaded, so the CUDA kernels are not checked: {e}\n\
             Run cuda/fetch_nvrtc.sh and export TANDEM_NVRTC_DIR as it prints."
        ),
        Err(e) => {
            eprintln!("skipping the NVRTC checks: {e}");
            false
        }
    }
}

/// Per-entry statistics from ptxas' verbose log: (entry, registers, shared bytes, spill bytes).
fn ptxas_stats(log: &str) -> Vec<(String, u32, u32, u32)> {
    let mut stats = Vec::new();
    let mut current: Option<(String, u32, u32, u32)> = None;
    let number_before = |line: &str, unit: &str| -> Option<u32> {
        let at = line.find(unit)?;
        line[..at].split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some(done) = current.take() {
                stats.push(done);
            }
            current = Some((rest.split('\'').next().unwrap_or_default().to_string(), 0, 0, 0));
        } else if let Some(cur) = current.as_mut() {
            if let Some(r) = number_before(line, " registers") {
                cur.1 = r;
                cur.2 = number_before(line, " bytes smem").unwrap_or(0);
            }
            if line.contains("spill stores") {
                cur.3 = number_before(line, " bytes spill stores").unwrap_or(0)
                    + number_before(line, " bytes spill loads").unwrap_or(0);
            }
        }
    }
    stats.extend(current);
    stats
}

#[test]
fn every_kernel_file_compiles_for_sm80_and_sm90() {
    if !nvrtc_or_skip() {
        return;
    }
    let (major, minor) = nvrtc::version().expect("NVRTC loaded");
    println!("NVRTC {major}.{minor}");
    let mut failures = Vec::new();
    let mut builds = 0;
    for file in kernels::FILES {
        assert!(!kernels::entry_points(file.source).is_empty(), "cuda/{}.cu has no entry point", file.stem);
        for &variant in file.variants {
            let entries = file.entry_points(variant);
            for arch in ARCHS {
                if kernels::min_arch(file.stem, variant) > arch {
                    continue;
                }
                for kind in [ImageKind::Ptx, ImageKind::Cubin] {
                    let mut options = kernels::compile_options(variant, kind, arch);
                    if kind == ImageKind::Cubin {
                        options.push("--ptxas-options=-v".into());
                    }
                    let name = format!("cuda/{}.cu", file.stem);
                    let what = format!("{name} [{}] {}", variant.name(), kind.arch_option(arch));
                    let compiled = match nvrtc::compile(&name, file.source, kernels::HEADERS, &options, kind) {
                        Ok(c) => c,
                        Err(e) => {
                            failures.push(e);
                            continue;
                        }
                    };
                    builds += 1;
                    for entry in &entries {
                        // PTX declares `.entry name(`; a cubin's symbol table holds the name.
                        let needle = match kind {
                            ImageKind::Ptx => format!(".entry {entry}("),
                            ImageKind::Cubin => entry.clone(),
                        };
                        if !compiled.image.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                            failures.push(format!("{what}: entry point {entry} missing from the output"));
                        }
                    }
                    if kind == ImageKind::Cubin {
                        for (entry, regs, smem, spill) in ptxas_stats(&compiled.log) {
                            println!(
                                "sm_{arch} {:<16} {:<4} {entry:<13} {regs:>3} registers {smem:>6} B smem {spill:>4} B spilled",
                                format!("{}.cu", file.stem),
                                variant.name()
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} kernel builds failed:\n{}", failures.len(), failures.join("\n\n"));
    println!("{builds} builds compiled");
}

#[test]
fn the_f16_matmul_is_refused_below_sm80() {
    if !nvrtc_or_skip() {
        return;
    }
    let file = kernels::file("matmul").expect("matmul.cu");
    let options = kernels::compile_options(tandem_runtime::backend::cuda::launch::Variant::F16, ImageKind::Ptx, 75);
    let err = nvrtc::compile("cuda/matmul.cu", file.source, kernels::HEADERS, &options, ImageKind::Ptx).unwrap_err();
    assert!(err.contains("needs sm_80"), "{err}");
}

#[test]
fn a_kernel_that_fails_to_compile_reports_nvrtcs_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let src =
        "#include \"common.cuh\"\nextern \"C\" __global__ void broken(float* x) {\n    x[0] = undeclared_thing;\n}\n";
    let options = kernels::compile_options(tandem_runtime::backend::cuda::launch::Variant::F32, ImageKind::Ptx, 80);
    let err = nvrtc::compile("cuda/broken.cu", src, kernels::HEADERS, &options, ImageKind::Ptx).unwrap_err();
    assert!(err.contains("cuda/broken.cu"), "{err}");
    assert!(err.contains("undeclared_thing"), "the message should carry NVRTC's log: {err}");
    assert!(err.contains("(3)"), "the log names the line: {err}");
}

#[test]
fn ptxas_statistics_are_parsed() {
    let log = "ptxas info    : Compiling entry function 'matmul' for 'sm_80'\n\
               ptxas info    : Function properties for matmul\n\
               ptxas         .     0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
               ptxas info    : Used 110 registers, used 1 barriers, 25600 bytes smem, 432 bytes cmem[0]\n";
    assert_eq!(ptxas_stats(log), vec![("matmul".to_string(), 110, 25600, 12)]);
}
