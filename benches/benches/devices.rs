//! Physical devices: allocate+free on an empty device and on a fragmented
//! one (vswap's `PhysDevice`, 4-byte reverse map, vs the v5 baseline's
//! spinlocked clusters with an 8-byte reverse map, vs the swap-table
//! baseline, which is its own device and has no reverse map); flash log device GC
//! throughput (vswap only: v5 has no log device); the kernel's mTHP swap
//! allocator test replayed for 10 iterations at its own fill
//! (`vswap_benches::thp`), per device allocator and the first-fit bitmap.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use vswap_benches::thp::{self, FirstFit};
use vswap_benches::v5::V5Phys;
use vswap_benches::work::{self, LogBench, PhysSlots};

const DEV_SLOTS: u64 = 1 << 18;

fn devices(c: &mut Criterion) {
    let mut g = c.benchmark_group("phys_device");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(50);
    let d = work::vswap_device(DEV_SLOTS);
    g.bench_function("vswap/order0_alloc_free", |b| {
        b.iter_custom(|n| work::phys_pair(&d, 0, n))
    });
    let d = V5Phys::new(DEV_SLOTS, 2);
    g.bench_function("v5/order0_alloc_free", |b| {
        b.iter_custom(|n| work::phys_pair(&d, 0, n))
    });
    let d = work::SwapTableDevice::new(DEV_SLOTS);
    g.bench_function("swap_table/order0_alloc_free", |b| {
        b.iter_custom(|n| work::phys_pair(&d, 0, n))
    });
    let d = work::vswap_device(DEV_SLOTS);
    work::fragment(&d, DEV_SLOTS, 7);
    g.bench_function("vswap/order0_fragmented", |b| {
        b.iter_custom(|n| work::phys_pair(&d, 0, n))
    });
    let d = V5Phys::new(DEV_SLOTS, 2);
    work::fragment(&d, DEV_SLOTS, 7);
    g.bench_function("v5/order0_fragmented", |b| {
        b.iter_custom(|n| work::phys_pair(&d, 0, n))
    });
    let d = work::SwapTableDevice::new(DEV_SLOTS);
    work::fragment(&d, DEV_SLOTS, 7);
    g.bench_function("swap_table/order0_fragmented", |b| {
        b.iter_custom(|n| work::phys_pair(&d, 0, n))
    });
    g.finish();

    // Time per GC pass (one victim segment of 512 slots, 80% full device).
    let mut g = c.benchmark_group("log_gc");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    let mut lb = LogBench::new();
    g.bench_function("vswap/pass", |b| b.iter_custom(|n| lb.run(n).0));
    g.finish();
}

/// `n` replays of the kernel's mTHP test (10 iterations, the test's fill,
/// without `-s`), each on a fresh device from `make`.
fn thp_replays<D: PhysSlots>(make: impl Fn() -> D, n: u64) -> Duration {
    let cfg = thp::Config {
        iterations: 10,
        ..thp::Config::test(false)
    };
    let mut total = Duration::ZERO;
    for _ in 0..n {
        let d = make();
        let t = Instant::now();
        std::hint::black_box(thp::run(&d, &cfg));
        total += t.elapsed();
    }
    total
}

fn thp_test(c: &mut Criterion) {
    let mut g = c.benchmark_group("thp_swap_test");
    // vswap's replay takes ~0.4 s (its order-0 allocations at this fill
    // take the allocator's slow path): room for 10 samples.
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(5))
        .sample_size(10);
    let slots = thp::DEVICE_SLOTS;
    g.bench_function("vswap/10_iterations", |b| {
        b.iter_custom(|n| thp_replays(|| work::vswap_device(slots), n))
    });
    g.bench_function("v5/10_iterations", |b| {
        b.iter_custom(|n| thp_replays(|| V5Phys::new(slots, 2), n))
    });
    g.bench_function("first_fit/10_iterations", |b| {
        b.iter_custom(|n| thp_replays(|| FirstFit::new(slots), n))
    });
    g.bench_function("swap_table/10_iterations", |b| {
        b.iter_custom(|n| thp_replays(|| work::SwapTableDevice::new(slots), n))
    });
    g.finish();
}

criterion_group!(benches, devices, thp_test);
criterion_main!(benches);
