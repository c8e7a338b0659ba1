//! Shared helpers for the benches and their timing binaries.

use tandem_runtime::backend::Backend;
use tandem_runtime::ops::{Activation, MatMul};
use tandem_runtime::{DType, Graph, HostTensor, Op, Session, TensorType};

/// A one-node `act(a · bᵀ + bias)` session with b and bias as weights, as in a model.
pub fn matmul_session<B: Backend>(backend: B, m: usize, k: usize, n: usize) -> tandem_runtime::Result<Session<B>> {
    let mut g = Graph::new("matmul");
    let a = g.input("a", TensorType::fixed(DType::F32, &[m, k]));
    let b = g.weight("b", TensorType::fixed(DType::F32, &[n, k]));
    let bias = g.weight("bias", TensorType::fixed(DType::F32, &[n]));
    let c = g.node1("mm", Op::MatMul(MatMul { trans_b: true, activation: Activation::Gelu }), &[a, b, bias])?;
    g.output(c, "c");
    let weights = [ramp(&[n, k]), ramp(&[n])];
    Session::new(backend, g, &weights)
}

/// Deterministic non-trivial data.
pub fn ramp(shape: &[usize]) -> HostTensor {
    let len: usize = shape.iter().product();
    HostTensor::f32(shape.to_vec(), (0..len).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect()).unwrap()
}

/// The median wall time of `runs` calls of `f` (at least one), in milliseconds. Warm-up is the
/// caller's: the first call here is timed like the others.
pub fn median_ms<E>(runs: usize, f: impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    median_ms_after(runs, || {}, f)
}

/// The CPU backend with its default options, its working buffers on huge pages or not
/// (`CpuOptions::huge_pages`): the two sides of the `--pair-huge-pages` timings.
pub fn cpu_device(huge_pages: bool) -> tandem_models::session::Device {
    use tandem_runtime::backend::cpu::CpuOptions;
    tandem_models::session::Device::cpu_with(CpuOptions { huge_pages, ..CpuOptions::default() })
}

/// `a` and `b` called in turn `runs` times after a call of each to warm up, which goes first
/// alternating from pair to pair: each one's median in milliseconds, and the quartiles of the
/// per-pair ratio b / a. For A/B figures on a machine whose speed drifts by the minute: both
/// calls of a pair see the same minute.
pub fn paired<E>(
    runs: usize,
    mut a: impl FnMut() -> Result<(), E>,
    mut b: impl FnMut() -> Result<(), E>,
) -> Result<serde_json::Value, E> {
    a()?;
    b()?;
    let time = |f: &mut dyn FnMut() -> Result<(), E>| -> Result<f64, E> {
        let t = std::time::Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let (mut times_a, mut times_b) = (Vec::new(), Vec::new());
    for round in 0..runs.max(1) {
        if round % 2 == 0 {
            times_a.push(time(&mut a)?);
            times_b.push(time(&mut b)?);
        } else {
            times_b.push(time(&mut b)?);
            times_a.push(time(&mut a)?);
        }
    }
    let mut ratios: Vec<f64> = times_a.iter().zip(&times_b).map(|(a, b)| b / a).collect();
    let quantile = |sorted: &mut Vec<f64>, q: f64| {
        sorted.sort_by(f64::total_cmp);
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    };
    Ok(serde_json::json!({
        "a_ms": quantile(&mut times_a, 0.5),
        "b_ms": quantile(&mut times_b, 0.5),
        "ratio_q25": quantile(&mut ratios, 0.25),
        "ratio_median": quantile(&mut ratios, 0.5),
        "ratio_q75": quantile(&mut ratios, 0.75),
    }))
}

/// [`median_ms`] with `before` run, untimed, ahead of each call (to flush the caches, say).
pub fn median_ms_after<E>(
    runs: usize,
    mut before: impl FnMut(),
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<f64, E> {
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        before();
        let t = std::time::Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
