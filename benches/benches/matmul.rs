//! Matmul alone, at MiniLM's shapes (tokens × 384 × 1536 is the FFN up-projection).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem_benches::{matmul_session, ramp};
use tandem_runtime::backend::Backend;
use tandem_runtime::backend::cpu::CpuBackend;

fn bench_backend<B: Backend>(c: &mut Criterion, name: &str, make: impl Fn() -> B, shapes: &[(usize, usize, usize)]) {
    let mut group = c.benchmark_group(format!("matmul/{name}"));
    group.sample_size(10);
    for &(m, k, n) in shapes {
        let session = matmul_session(make(), m, k, n).expect("session");
        let a = [ramp(&[m, k])];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64)); // flops
        group.bench_function(format!("{m}x{k}x{n}"), |bench| bench.iter(|| session.run_blocking(&a).unwrap()));
    }
    group.finish();
}

fn matmul(c: &mut Criterion) {
    bench_backend(c, "cpu", CpuBackend::new, &[(4096, 384, 1536), (4096, 1536, 384), (16, 384, 384)]);
    if let Ok(b) = tandem_runtime::backend::wgpu::WgpuBackend::new_blocking() {
        drop(b);
        bench_backend(
            c,
            "wgpu",
            || tandem_runtime::backend::wgpu::WgpuBackend::new_blocking().unwrap(),
            &[(128, 384, 1536), (16, 384, 384)],
        );
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);
