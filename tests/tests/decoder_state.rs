//! Graph-declared state end to end: a tiny random decoder (2 layers, GQA, KV caches as
//! states) runs a batched prefill and 20 decode steps on the CPU and on wgpu, matching an f64
//! reference at every step, with no new plan after the first decode step. Also the errors a
//! caller gets for misusing states.

use tandem_runtime::backend::cpu::CpuBackend;
use tandem_runtime::backend::wgpu::WgpuBackend;
use tandem_runtime::ops::KvWrite;
use tandem_runtime::{DType, Dim, Graph, HostTensor, Op, Outputs, Session, TensorType};
use tandem_tests::decoder::check_decoder;
use tandem_tests::seed;

const STEPS: usize = 20;
/// Logits are sums of 32 products of O(1) values after two layers: f32 rounding, reordered
/// by each backend's kernels, stays well under this.
const TOLERANCE: f64 = 2e-3;

#[test]
fn cpu_decoder_matches_the_f64_reference_at_every_step() {
    let seed = seed();
    let report = check_decoder(CpuBackend::new(), seed, STEPS, TOLERANCE)
        .unwrap_or_else(|e| panic!("seed {seed} (replay with TANDEM_TEST_SEED): {e}"));
    println!("cpu: {report:?}");
    assert_eq!(report.plans_after_first_decode, 0, "decode steps must reuse the first decode step's plan");
}

#[test]
fn wgpu_decoder_matches_the_f64_reference_at_every_step() {
    let backend = match WgpuBackend::new_blocking() {
        Ok(b) => b,
        Err(e) if std::env::var("TANDEM_ALLOW_NO_GPU_ADAPTER").is_ok_and(|v| v == "1") => {
            println!("skipping: no wgpu adapter ({e}) and TANDEM_ALLOW_NO_GPU_ADAPTER=1");
            return;
        }
        Err(e) => panic!("no wgpu adapter: {e} (install mesa-vulkan-drivers or set TANDEM_ALLOW_NO_GPU_ADAPTER=1)"),
    };
    let seed = seed();
    let report = check_decoder(backend, seed, STEPS, TOLERANCE)
        .unwrap_or_else(|e| panic!("seed {seed} (replay with TANDEM_TEST_SEED): {e}"));
    println!("wgpu: {report:?}");
    assert_eq!(report.plans_after_first_decode, 0, "decode steps must reuse the first decode step's plan");
}

/// One state written by kv_write, read back as the graph's output.
fn cache_graph() -> Graph {
    let mut g = Graph::new("cache");
    let cache = g.state("cache", TensorType::new(DType::F32, vec![Dim::sym("rows"), Dim::Fixed(2)]));
    let new = g.input("new", TensorType::new(DType::F32, vec![Dim::sym("tokens"), Dim::Fixed(2)]));
    let table = g.input("table", TensorType::new(DType::U32, vec![Dim::sym("seqs"), Dim::Fixed(4)]));
    let out = g.node1("write", Op::KvWrite(KvWrite), &[cache, new, table]).unwrap();
    g.output(out, "cache_after");
    g
}

#[test]
fn states_keep_their_contents_between_runs() {
    let session = Session::new(CpuBackend::new(), cache_graph(), &[]).unwrap();
    let mut state = session.new_state(&[("rows", 4)]).unwrap();
    assert_eq!(state.shapes(), &[vec![4, 2]]);
    assert_eq!(state.bytes(), 32);
    session.write_state_blocking(&mut state, "cache", &HostTensor::f32(vec![4, 2], vec![9.0; 8]).unwrap()).unwrap();
    let run = |state: &mut _, rows: Vec<f32>, table: [u32; 4]| {
        let n = rows.len() / 2;
        let inputs = [HostTensor::f32(vec![n, 2], rows).unwrap(), HostTensor::u32(vec![1, 4], table.to_vec()).unwrap()];
        session.run_with_blocking(&inputs, Some(state), Outputs::All).map(|mut o| o.remove(0).to_f32())
    };
    assert_eq!(run(&mut state, vec![1.0, 2.0], [0, 1, 0, 1]).unwrap(), [1.0, 2.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]);
    // The next run writes one row at kv_len 3, so past = 2: row 2. Row 1 keeps what the
    // caller put there, and row 0 what the first run wrote.
    assert_eq!(run(&mut state, vec![3.0, 4.0], [0, 1, 0, 3]).unwrap(), [1.0, 2.0, 9.0, 9.0, 3.0, 4.0, 9.0, 9.0]);
    // A table past the cache is refused before anything runs, and names the fault.
    let err = run(&mut state, vec![5.0, 6.0], [0, 1, 2, 3]).unwrap_err().to_string();
    assert!(err.contains("past the cache's 4 rows") && err.contains("'write'"), "{err}");
    // A run without the state, or with another graph's state, is refused.
    let err = session.run_blocking(&[HostTensor::f32(vec![1, 2], vec![0.0; 2]).unwrap()]).unwrap_err().to_string();
    assert!(err.contains("declares 1 states"), "{err}");
    let err = session.new_state(&[]).err().unwrap().to_string();
    assert!(err.contains("needs the size of 'rows'"), "{err}");
}

#[test]
fn unrequested_outputs_are_not_read_back() {
    let mut g = Graph::new("two");
    let x = g.input("x", TensorType::new(DType::F32, vec![Dim::sym("n")]));
    let a = g.node1("relu", Op::Unary(tandem_runtime::ops::UnaryKind::Relu), &[x]).unwrap();
    let b = g.node1("tanh", Op::Unary(tandem_runtime::ops::UnaryKind::Tanh), &[x]).unwrap();
    g.output(a, "a");
    g.output(b, "b");
    let session = Session::new(CpuBackend::new(), g, &[]).unwrap();
    let x = [HostTensor::f32(vec![2], vec![-1.0, 2.0]).unwrap()];
    let only_b = session.run_with_blocking(&x, None, Outputs::Named(&["b"])).unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].to_f32(), [(-1.0f32).tanh(), 2.0f32.tanh()]);
    let err = session.run_with_blocking(&x, None, Outputs::Named(&["c"])).unwrap_err().to_string();
    assert!(err.contains("no output 'c'") && err.contains("a, b"), "{err}");
}

#[test]
fn states_are_validated_in_graphs() {
    // A node reading a state that another node writes in place must read the writer's output.
    let mut g = cache_graph();
    let cache = g.states[0];
    let peek = g.node1("peek", Op::Unary(tandem_runtime::ops::UnaryKind::Relu), &[cache]).unwrap();
    g.output(peek, "peek");
    let err = g.validate().unwrap_err().to_string();
    assert!(err.contains("reads state 'cache', which node 'write' writes in place"), "{err}");
    // kv_write's target must be a state.
    let mut g = Graph::new("bad");
    let cache = g.input("cache", TensorType::fixed(DType::F32, &[4, 2]));
    let new = g.input("new", TensorType::fixed(DType::F32, &[1, 2]));
    let table = g.input("table", TensorType::fixed(DType::U32, &[1, 4]));
    let out = g.node1("write", Op::KvWrite(KvWrite), &[cache, new, table]).unwrap();
    g.output(out, "o");
    let err = g.validate().unwrap_err().to_string();
    assert!(err.contains("not a graph state"), "{err}");
}

/// `copy_state_rows` on `backend`: rows land where asked, others stay, later runs see them,
/// and bad ranges are refused naming the state.
fn check_copy_state_rows<B: tandem_runtime::backend::Backend>(backend: B) {
    let session = Session::new(backend, cache_graph(), &[]).unwrap();
    let mut state = session.new_state(&[("rows", 7)]).unwrap();
    let initial: Vec<f32> = (0..14).map(|v| v as f32).collect();
    session.write_state_blocking(&mut state, "cache", &HostTensor::f32(vec![7, 2], initial).unwrap()).unwrap();
    // Rows 0..3 to 4..7 (one past the middle: an awkward, non-overlapping pair).
    session.copy_state_rows(&mut state, "rows", 0, 4, 3).unwrap();
    // A run after the copy writes row 3 and reads the whole cache back.
    let inputs = [
        HostTensor::f32(vec![1, 2], vec![-1.0, -2.0]).unwrap(),
        HostTensor::u32(vec![1, 4], vec![0, 1, 3, 1]).unwrap(),
    ];
    let after = session.run_with_blocking(&inputs, Some(&mut state), Outputs::All).unwrap().remove(0).to_f32();
    assert_eq!(after, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, -1.0, -2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    for (from, to, rows) in [(0, 5, 3), (4, 0, 5), (0, 2, 3), (usize::MAX, 0, 2)] {
        let err = session.copy_state_rows(&mut state, "rows", from, to, rows).unwrap_err().to_string();
        assert!(err.contains("state 'cache': cannot copy rows"), "{from} → {to} ×{rows}: {err}");
    }
    // States of another leading dim are not copied.
    session.copy_state_rows(&mut state, "other_rows", 0, 1, 6).unwrap();
    let unchanged = session.run_with_blocking(&inputs, Some(&mut state), Outputs::All).unwrap().remove(0).to_f32();
    assert_eq!(unchanged, after);

    // Rows 2..4 overwritten from the host; the rest stay; bad writes are refused.
    session
        .write_state_rows_blocking(&mut state, "cache", 2, &HostTensor::f32(vec![2, 2], vec![7.0; 4]).unwrap())
        .unwrap();
    let written = session.run_with_blocking(&inputs, Some(&mut state), Outputs::All).unwrap().remove(0).to_f32();
    assert_eq!(written, [0.0, 1.0, 2.0, 3.0, 7.0, 7.0, -1.0, -2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    for (first, rows, width) in [(6, 2, 2), (0, 1, 3), (usize::MAX, 1, 2)] {
        let tensor = HostTensor::f32(vec![rows, width], vec![0.0; rows * width]).unwrap();
        let err = session.write_state_rows_blocking(&mut state, "cache", first, &tensor).unwrap_err().to_string();
        assert!(err.contains("state 'cache' is f32 [7, 2]: cannot write"), "{first} ×{rows}×{width}: {err}");
    }
}

#[test]
fn cpu_state_rows_copy() {
    check_copy_state_rows(CpuBackend::new());
}

#[test]
fn wgpu_state_rows_copy() {
    match WgpuBackend::new_blocking() {
        Ok(b) => check_copy_state_rows(b),
        Err(e) if std::env::var("TANDEM_ALLOW_NO_GPU_ADAPTER").is_ok_and(|v| v == "1") => {
            println!("skipping: no wgpu adapter ({e}) and TANDEM_ALLOW_NO_GPU_ADAPTER=1");
        }
        Err(e) => panic!("no wgpu adapter: {e} (install mesa-vulkan-drivers or set TANDEM_ALLOW_NO_GPU_ADAPTER=1)"),
    }
}
