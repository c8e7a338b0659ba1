//! The CUDA kernels, run on the CPU: every .cu file is compiled by the host C++ compiler with
//! cuda/emu/cuda_emu.h (each CUDA thread an OS thread, barriers and warp shuffles emulated)
//! and driven by an emulated backend that plans every launch with the CUDA backend's own
//! planner (`launch::plan_op`). The op conformance suite then runs against the CPU reference,
//! as it does on a GPU. This checks the kernels' indexing, tiling, masking, edge tiles and
//! synchronisation on machines without a GPU; it says nothing about speed, and the tensor-core
//! fragment layout is checked only against the emulator's reading of the PTX manual.
//!
//! Needs a C++20 compiler (`c++`, `g++` or `clang++`; `$CXX` wins). Without one the tests
//! print why and pass, except in CI (`CI=true`), where they fail.

#![cfg(feature = "cuda")]

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use tandem_runtime::backend::cuda::launch::{self, Binding, Launch, Operand, Variant};
use tandem_runtime::backend::{Arg, Backend, OutArg};
use tandem_runtime::ops::{ParamsStruct, ParamsVisitor};
use tandem_runtime::{Error, HostTensor, Op, OpKind, Result, TensorData};
use tandem_tests::gpu::{check_cases, check_f16, limit_cases};
use tandem_tests::{check_backend, missing_ops, seed};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

fn find_compiler() -> std::result::Result<String, String> {
    let candidates: Vec<String> =
        std::env::var("CXX").ok().into_iter().chain(["c++", "g++", "clang++"].map(String::from)).collect();
    for c in &candidates {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(c.clone());
        }
    }
    Err(format!("no C++ compiler found (tried {})", candidates.join(", ")))
}

/// The kernels built for the CPU, one shared library per (file, variant), built on first use.
struct Emulator {
    compiler: String,
    dir: PathBuf,
    libs: Mutex<HashMap<(&'static str, Variant), Arc<libloading::Library>>>,
    /// The emulated kernels keep `__shared__` memory in statics: one launch at a time.
    running: Mutex<()>,
}

impl Emulator {
    fn library(&self, stem: &'static str, variant: Variant) -> Result<Arc<libloading::Library>> {
        let mut libs = self.libs.lock().unwrap();
        if let Some(lib) = libs.get(&(stem, variant)) {
            return Ok(lib.clone());
        }
        let cuda = repo().join("cuda");
        let out = self.dir.join(format!("{stem}-{}.so", variant.name()));
        let mut cmd = Command::new(&self.compiler);
        cmd.args([
            "-std=c++20",
            "-O1",
            "-ffp-contract=off",
            "-fno-strict-aliasing",
            "-fPIC",
            "-shared",
            "-pthread",
            "-w",
        ])
        .arg("-I")
        .arg(&cuda)
        .arg("-include")
        .arg(cuda.join("emu/cuda_emu.h"));
        for d in variant.defines() {
            cmd.arg(format!("-D{d}"));
        }
        cmd.args(["-x", "c++"]).arg(cuda.join(format!("{stem}.cu"))).arg("-o").arg(&out);
        let output = cmd.output().map_err(|e| Error::Other(format!("{}: {e}", self.compiler)))?;
        if !output.status.success() {
            return Err(Error::Other(format!(
                "emulated build of cuda/{stem}.cu failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        // SAFETY: a library just built from the kernels and the emulator; its initialisers
        // only set up statics.
        let lib = Arc::new(unsafe { libloading::Library::new(&out) }.map_err(|e| Error::Other(e.to_string()))?);
        libs.insert((stem, variant), lib.clone());
        Ok(lib)
    }
}

fn emulator() -> Option<Arc<Emulator>> {
    static EMU: OnceLock<std::result::Result<Arc<Emulator>, String>> = OnceLock::new();
    let made = EMU.get_or_init(|| {
        let compiler = find_compiler()?;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Arc::new(Emulator { compiler, dir, libs: Mutex::new(HashMap::new()), running: Mutex::new(()) }))
    });
    match made {
        Ok(e) => Some(e.clone()),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("CI is set and the CUDA kernels cannot be emulated: {e}")
        }
        Err(e) => {
            eprintln!("skipping the emulated CUDA kernels: {e}");
            None
        }
    }
}

/// Host memory, 16-byte aligned like a device allocation (the kernels' vector paths need it).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Chunk([u8; 16]);

struct EmuBuffer(Vec<Chunk>);

impl EmuBuffer {
    fn bytes(&self) -> &[u8] {
        // SAFETY: Chunk is 16 plain bytes.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 16) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 16) }
    }
}

#[derive(Clone)]
struct EmuBackend(Arc<Emulator>);

type Body<'a> = Box<dyn Fn() + Sync + 'a>;

extern "C" fn run_body(ctx: *mut c_void) {
    // SAFETY: ctx is the `&Body` passed to tandem_emu_launch below, alive for the launch.
    let body = unsafe { &*(ctx as *const Body<'_>) };
    body();
}

/// A call of the kernel `entry` of `lib` with params `p` and the buffer addresses `ptrs`.
fn kernel_call<'a, P: Copy + Sync + 'a>(
    lib: &'a libloading::Library,
    entry: &str,
    p: P,
    ptrs: Vec<usize>,
) -> Result<Body<'a>> {
    type V = *mut c_void;
    let name = entry.as_bytes();
    let missing = |e: libloading::Error| Error::Other(format!("emulated kernel {entry}: {e}"));
    let count = ptrs.len();
    let q = move |i: usize| ptrs[i] as V;
    // SAFETY: every kernel takes its params struct by value and then `count` pointers
    // (cuda/*.cu); launch::plan_op lists exactly those.
    unsafe {
        Ok(match count {
            2 => {
                let f = *lib.get::<extern "C" fn(P, V, V)>(name).map_err(missing)?;
                Box::new(move || f(p, q(0), q(1)))
            }
            3 => {
                let f = *lib.get::<extern "C" fn(P, V, V, V)>(name).map_err(missing)?;
                Box::new(move || f(p, q(0), q(1), q(2)))
            }
            4 => {
                let f = *lib.get::<extern "C" fn(P, V, V, V, V)>(name).map_err(missing)?;
                Box::new(move || f(p, q(0), q(1), q(2), q(3)))
            }
            5 => {
                let f = *lib.get::<extern "C" fn(P, V, V, V, V, V)>(name).map_err(missing)?;
                Box::new(move || f(p, q(0), q(1), q(2), q(3), q(4)))
            }
            6 => {
                let f = *lib.get::<extern "C" fn(P, V, V, V, V, V, V)>(name).map_err(missing)?;
                Box::new(move || f(p, q(0), q(1), q(2), q(3), q(4), q(5)))
            }
            7 => {
                let f = *lib.get::<extern "C" fn(P, V, V, V, V, V, V, V)>(name).map_err(missing)?;
                Box::new(move || f(p, q(0), q(1), q(2), q(3), q(4), q(5), q(6)))
            }
            n => return Err(Error::Other(format!("{entry}: no emulated call with {n} buffers"))),
        })
    }
}

/// Builds the call of an emulated kernel with its params struct by value.
struct KernelCall<'a> {
    lib: &'a libloading::Library,
    entry: &'a str,
    ptrs: Vec<usize>,
}

impl<'a> ParamsVisitor for KernelCall<'a> {
    type Output = Result<Body<'a>>;
    fn visit<P: ParamsStruct>(self, p: P) -> Self::Output {
        kernel_call(self.lib, self.entry, p, self.ptrs)
    }
}

impl EmuBackend {
    /// One kernel launch, as the CUDA backend's `run` does it.
    fn run(
        &self,
        launch: &Launch,
        inputs: &[Arg<'_, EmuBuffer>],
        outputs: &mut [OutArg<'_, EmuBuffer>],
        outs: &[Operand<'_>],
        scratch: &[EmuBuffer],
    ) -> Result<()> {
        if launch.zero_outputs {
            for (o, op) in outputs.iter_mut().zip(outs) {
                o.buf.bytes_mut()[..op.bytes()].fill(0);
            }
        }
        if !launch.runs_kernel() {
            return Ok(());
        }
        let ptrs: Vec<usize> = launch
            .args
            .iter()
            .map(|b| match *b {
                Binding::Input(i) => inputs[i].buf.0.as_ptr() as usize,
                Binding::Output(i) => outputs[i].buf.0.as_ptr() as usize,
                Binding::Scratch(i) => scratch[i].0.as_ptr() as usize,
                Binding::Null => 0,
            })
            .collect();
        let lib = self.0.library(launch.stem, launch.variant)?;
        let body = launch.params.visit(KernelCall { lib: &lib, entry: launch.entry, ptrs })?;
        type LaunchFn = unsafe extern "C" fn(*const u32, *const u32, extern "C" fn(*mut c_void), *mut c_void) -> i32;
        // SAFETY: the emulator's launcher, with the signature cuda_emu.h declares.
        let run = unsafe { *lib.get::<LaunchFn>(b"tandem_emu_launch").map_err(|e| Error::Other(e.to_string()))? };
        let _one_at_a_time = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the buffers outlive the launch, which joins all its threads before returning.
        let status = unsafe {
            run(launch.grid.as_ptr(), launch.block.as_ptr(), run_body, &body as *const Body<'_> as *mut c_void)
        };
        if status != 0 {
            return Err(Error::backend("cuda-emulated", format!("bad launch {:?} x {:?}", launch.grid, launch.block)));
        }
        Ok(())
    }
}

impl Backend for EmuBackend {
    type Buffer = EmuBuffer;
    type Recording = ();

    fn name(&self) -> &'static str {
        "cuda-emulated"
    }
    fn device_description(&self) -> String {
        format!("cuda/*.cu on the CPU through cuda/emu ({})", self.0.compiler)
    }
    fn supports(&self, op: OpKind) -> bool {
        op.kernel().is_none_or(|(stem, entry)| {
            tandem_runtime::backend::cuda::kernels::file(stem).is_some_and(|f| {
                tandem_runtime::backend::cuda::kernels::entry_points(f.source).iter().any(|e| e == entry)
            })
        })
    }
    fn supports_dtypes(&self, op: &Op, inputs: &[tandem_runtime::DType]) -> bool {
        tandem_runtime::backend::cuda_supports_dtypes(op, inputs)
    }
    fn alloc(&self, bytes: usize) -> Result<EmuBuffer> {
        // 0xff bytes are NaN as f32 and f16: an output element a kernel forgets to write
        // shows up in the comparison.
        Ok(EmuBuffer(vec![Chunk([0xff; 16]); bytes.div_ceil(16).max(1)]))
    }
    fn upload(&self, tensor: &HostTensor) -> Result<EmuBuffer> {
        let mut buf = self.alloc(tensor.data.as_bytes().len())?;
        self.write(&mut (), &mut buf, 0, tensor)?;
        Ok(buf)
    }
    fn begin(&self) -> Result<()> {
        Ok(())
    }
    fn write(&self, _rec: &mut (), buf: &mut EmuBuffer, at: usize, tensor: &HostTensor) -> Result<()> {
        let bytes = tensor.data.as_bytes();
        buf.bytes_mut()[at..at + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
    fn copy_within(&self, buf: &mut EmuBuffer, src: usize, dst: usize, bytes: usize) -> Result<()> {
        buf.bytes_mut().copy_within(src..src + bytes, dst);
        Ok(())
    }
    fn dispatch(
        &self,
        _rec: &mut (),
        op: &Op,
        inputs: &[Arg<'_, EmuBuffer>],
        outputs: &mut [OutArg<'_, EmuBuffer>],
    ) -> Result<()> {
        let ins: Vec<Operand<'_>> = inputs.iter().map(|a| Operand { dtype: a.dtype, shape: a.shape }).collect();
        let outs: Vec<Operand<'_>> = outputs.iter().map(|a| Operand { dtype: a.dtype, shape: a.shape }).collect();
        let planned = launch::plan_op(op, &ins, &outs).map_err(|e| Error::backend("cuda-emulated", e))?;
        let scratch = planned.scratch.iter().map(|&bytes| self.alloc(bytes)).collect::<Result<Vec<_>>>()?;
        for launch in &planned.launches {
            self.run(launch, inputs, outputs, &outs, &scratch)?;
        }
        Ok(())
    }
    async fn finish(&self, _rec: (), reads: &[Arg<'_, EmuBuffer>]) -> Result<Vec<HostTensor>> {
        reads
            .iter()
            .map(|r| {
                let n = r.dtype.bytes_for_shape(r.shape)?;
                HostTensor::new(r.shape.to_vec(), TensorData::from_bytes(r.dtype, &r.buf.bytes()[..n])?)
            })
            .collect()
    }
}

#[test]
fn every_op_matches_the_cpu_through_the_emulator() {
    let Some(emu) = emulator() else { return };
    let seed = seed();
    println!("emulated CUDA conformance, seed {seed} (replay with TANDEM_TEST_SEED={seed})");
    let backend = EmuBackend(emu);
    assert_eq!(missing_ops(&backend), Vec::<&str>::new());
    let failures = check_backend(|| backend.clone(), seed);
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(failures.is_empty(), "{} op cases differ from the CPU (seed {seed})", failures.len());
}

#[test]
fn f16_matmul_and_attention_match_the_cpu_through_the_emulator() {
    let Some(emu) = emulator() else { return };
    let seed = seed();
    println!("emulated CUDA f16 builds, seed {seed} (replay with TANDEM_TEST_SEED={seed})");
    let failures = check_f16(&EmuBackend(emu), seed);
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(failures.is_empty(), "{} f16 cases differ from the CPU (seed {seed})", failures.len());
}

#[test]
fn kernel_limits_match_the_cpu_through_the_emulator() {
    let Some(emu) = emulator() else { return };
    let seed = seed();
    println!("emulated CUDA kernel limits, seed {seed} (replay with TANDEM_TEST_SEED={seed})");
    let backend = EmuBackend(emu);
    let failures = check_cases(|| backend.clone(), &limit_cases(seed));
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(failures.is_empty(), "{} limit cases differ from the CPU (seed {seed})", failures.len());
}

#[test]
fn tiny_decoder_with_a_kv_cache_matches_the_f64_reference_through_the_emulator() {
    let Some(emu) = emulator() else { return };
    let seed = seed();
    // Few steps: every emulated CUDA thread is an OS thread.
    let report = tandem_tests::decoder::check_decoder(EmuBackend(emu), seed, 4, 2e-3)
        .unwrap_or_else(|e| panic!("seed {seed} (replay with TANDEM_TEST_SEED): {e}"));
    println!("emulated CUDA: {report:?}");
    assert_eq!(report.plans_after_first_decode, 0);
}

#[test]
fn f16_weights_reach_the_f16_kernels_through_a_graph() {
    let Some(emu) = emulator() else { return };
    let (graph, weights, x) = tandem_tests::f16_linear_graph(seed(), 7, 96, 33);
    let cpu = tandem_runtime::Session::new(tandem_runtime::backend::cpu::CpuBackend::exact(), graph.clone(), &weights);
    let want = cpu.unwrap().run_blocking(std::slice::from_ref(&x)).unwrap();
    let emulated = tandem_runtime::Session::new(EmuBackend(emu), graph, &weights);
    let got = emulated.unwrap().run_blocking(std::slice::from_ref(&x)).unwrap();
    // f16 products rounded once at the end, as the CPU reference does, but summed in
    // another order: a few f16 ulps of values up to ~5.
    tandem_tests::compare(&got[0], &want[0], tandem_tests::Tolerance::new(1e-2, 1e-2)).unwrap();
}
