//! Per-item cost of rule plugins, with and without fuel metering: one
//! `Plugin::check` per item (`.../fuel`), and `Plugin::check_many` on a batch
//! of items for one query (`.../fuel/batch-64`: one `check-batch` call for 64
//! items; criterion's time is per batch, its throughput per item).
//!
//! Needs the components from bindings/rules/build.sh. `always-keep` does
//! nothing, so it measures the host's overhead (lowering the input, lifting
//! the verdict, arming fuel and deadline, the instance pool); `brand-conflict`
//! is a simple real rule (normalises two brands, one host lookup);
//! `model-number` tokenises the query and the title. Throughput is reported
//! in checks per second on one thread.
//!
//! Each case is measured twice: `rule_call` in wall time, `rule_call_cpu` in
//! the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID), which is what a core
//! spends per check even on a shared, oversubscribed machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem_plugins::{Candidate, Host, Plugin, PluginSpec};

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID).
struct ThreadCpu {
    wall: WallTime,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = Duration;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> Duration {
        Duration::from_nanos(thread_cpu_ns().saturating_sub(start))
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Same unit (nanoseconds as f64) as wall time, so the same formatting.
        self.wall.formatter()
    }
}

/// Items per batch in the batched cases.
const BATCH: usize = 64;

fn bench_rules<M: Measurement>(c: &mut Criterion<M>, group_name: &str) {
    let host = Host::new().expect("host");
    let input = common::typical_input();
    let candidate = Candidate { item: input.item.clone(), model: input.model.clone() };
    let tables: tandem_plugins::config::Tables = std::sync::Arc::new(
        [("brand-aliases".to_string(), [("apple inc".to_string(), "apple".to_string())].into())].into(),
    );
    let mut group = c.benchmark_group(group_name);
    for rule in ["bench/always-keep", "rules/brand-conflict", "rules/model-number"] {
        for fuel in [true, false] {
            let mut spec = PluginSpec::new(rule, common::fixture(&format!("{rule}.wasm")));
            spec.tables = vec!["brand-aliases".into()];
            if !fuel {
                spec.limits.fuel = 0;
            }
            let plugin = Plugin::load(&host, &spec, tables.clone()).expect("load");
            let report = plugin.check(&input);
            assert!(report.error.is_none(), "{report:?}");
            let name = format!("{}/{}", rule.rsplit('/').next().unwrap(), if fuel { "fuel" } else { "no-fuel" });
            group.throughput(Throughput::Elements(1));
            group.bench_function(&name, |b| b.iter(|| plugin.check(std::hint::black_box(&input))));
            let batch = vec![candidate.clone(); BATCH];
            let reports = plugin.check_many(&input.query, &batch);
            assert!(reports.iter().all(|r| r.error.is_none()), "{reports:?}");
            group.throughput(Throughput::Elements(BATCH as u64));
            group.bench_function(format!("{name}/batch-{BATCH}"), |b| {
                b.iter(|| plugin.check_many(std::hint::black_box(&input.query), std::hint::black_box(&batch)))
            });
        }
    }
    // How the per-item cost falls with the batch size.
    let mut spec = PluginSpec::new("always-keep", common::fixture("bench/always-keep.wasm"));
    spec.limits.fuel = 0;
    let plugin = Plugin::load(&host, &spec, tables.clone()).expect("load");
    for size in [1, 8, 256] {
        let batch = vec![candidate.clone(); size];
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("always-keep/no-fuel/batch-{size}"), |b| {
            b.iter(|| plugin.check_many(std::hint::black_box(&input.query), std::hint::black_box(&batch)))
        });
    }
    group.throughput(Throughput::Elements(1));
    // The fixed cost of a call: no strings or list elements to pass in.
    let mut spec = PluginSpec::new("always-keep", common::fixture("bench/always-keep.wasm"));
    spec.limits.fuel = 0;
    let plugin = Plugin::load(&host, &spec, tables.clone()).expect("load");
    let minimal = common::minimal_input();
    group.bench_function("always-keep/no-fuel/minimal-input", |b| {
        b.iter(|| plugin.check(std::hint::black_box(&minimal)))
    });
    group.finish();
}

fn wall(c: &mut Criterion) {
    bench_rules(c, "rule_call");
}

fn cpu(c: &mut Criterion<ThreadCpu>) {
    bench_rules(c, "rule_call_cpu");
}

criterion_group! {
    name = wall_time;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = wall
}
criterion_group! {
    name = cpu_time;
    config = Criterion::default()
        .with_measurement(ThreadCpu { wall: WallTime })
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = cpu
}
criterion_main!(wall_time, cpu_time);
