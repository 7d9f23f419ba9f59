//! vswap and its peers side by side: order-0 and order-4 allocate+free (one
//! CPU, two threads, frees on another CPU), free cost alone, dup/put, lookup
//! and the writeout transitions. The `floor` group measures the machine's
//! atomic floor in the same run.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use vswap_benches::{for_each_impl, work};

#[repr(align(64))]
struct Line(AtomicU64);

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(50);
    g
}

/// The machine's atomic floor: one locked RMW, and the DESIGN.md sequence
/// (fetch_or + CAS + store + fetch_and).
fn floor(c: &mut Criterion) {
    let mut g = group(c, "floor");
    let (a, b) = (Line(AtomicU64::new(0)), Line(AtomicU64::new(0)));
    g.bench_function("rmw", |bn| {
        bn.iter(|| black_box(&a.0).fetch_add(1, Ordering::AcqRel))
    });
    // Two threads, one RMW each on its own line: the control for every
    // two-thread figure (equals `rmw` when two CPUs are really free).
    g.bench_function("rmw_two_threads", |bn| {
        bn.iter_custom(work::floor_rmw_two_threads)
    });
    // The per-operation pin every VswapMap call pays today (model: CAS +
    // fetch_sub), which the planned host guard removes.
    g.bench_function("read_section", |bn| bn.iter_custom(work::floor_section));
    g.bench_function("fetch_or_cas_store_fetch_and", |bn| {
        bn.iter(|| {
            black_box(&b.0).fetch_or(1, Ordering::AcqRel);
            let _ = black_box(&a.0).compare_exchange(0, 5, Ordering::AcqRel, Ordering::Acquire);
            black_box(&a.0).store(0, Ordering::Release);
            black_box(&b.0).fetch_and(!1, Ordering::AcqRel);
        })
    });
    g.finish();
}

fn alloc_free(c: &mut Criterion) {
    for order in [0u32, 4] {
        let mut g = group(c, &format!("order{order}_one_cpu"));
        for_each_impl!(order, |name, m| {
            g.bench_function(name, |b| b.iter_custom(|n| work::one_cpu(m, order, n)));
        });
        g.finish();
        // Wall time per iteration of two threads each doing one pair:
        // throughput(2) / throughput(1) = 2 * one_cpu / two_threads.
        let mut g = group(c, &format!("order{order}_two_threads"));
        for_each_impl!(order, |name, m| {
            g.bench_function(name, |b| b.iter_custom(|n| work::two_threads(m, order, n)));
        });
        g.finish();
        // CPU 0 allocates while CPU 1 frees: wall time per pair.
        let mut g = group(c, &format!("order{order}_other_cpu_free"));
        for_each_impl!(order, |name, m| {
            g.bench_function(name, |b| {
                b.iter_custom(|n| work::other_cpu_free(m, order, n))
            });
        });
        g.finish();
    }
    // Free cost alone: slots allocated on this CPU or on another one.
    let mut g = group(c, "order0_free_only");
    for_each_impl!(0, |name, m| {
        g.bench_function(format!("{name}/same_cpu"), |b| {
            b.iter_custom(|n| work::free_only(m, 0, n))
        });
        g.bench_function(format!("{name}/other_cpu"), |b| {
            b.iter_custom(|n| work::free_only(m, 1, n))
        });
    });
    g.finish();
}

fn ops(c: &mut Criterion) {
    let mut g = group(c, "dup_put");
    for_each_impl!(0, |name, m| {
        let h = work::live_slot(m);
        g.bench_function(name, |b| b.iter_custom(|n| work::dup_put(m, h, n)));
    });
    g.finish();
    let mut g = group(c, "lookup");
    for_each_impl!(0, |name, m| {
        let h = work::live_slot(m);
        g.bench_function(name, |b| b.iter_custom(|n| work::lookup(m, h, n)));
    });
    g.finish();
    // Four backend transitions per iteration (work::WRITEOUT_CYCLE).
    let mut g = group(c, "writeout_4_transitions");
    for_each_impl!(0, |name, m| {
        let h = work::live_slot(m);
        g.bench_function(name, |b| b.iter_custom(|n| work::writeout(m, h, n)));
    });
    g.finish();
}

criterion_group!(benches, floor, alloc_free, ops);
criterion_main!(benches);
