//! Batch free of 1,000,000 slots with one count each (process exit): zero-
//! backed, and physical-backed including the device-side free (the swap
//! table's slots are device slots: its batch free is the device-side free). Time per
//! iteration is one batch; divide by 1,000,000 for the per-slot cost.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use vswap_benches::{for_each_batch_impl, work};

fn batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_free_zero");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(100))
        .throughput(Throughput::Elements(work::BATCH_SLOTS as u64));
    for_each_batch_impl!(|name, make| {
        g.bench_function(name, |b| b.iter_custom(|n| work::batch_zero(make, n)));
    });
    g.finish();

    let mut g = c.benchmark_group("batch_free_phys");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(100))
        .throughput(Throughput::Elements(work::BATCH_SLOTS as u64));
    g.bench_function("vswap", |b| b.iter_custom(work::batch_phys_vswap));
    g.bench_function("v5", |b| b.iter_custom(work::batch_phys_v5));
    g.bench_function("swap_table", |b| b.iter_custom(work::batch_phys_swap_table));
    g.finish();
}

criterion_group!(benches, batch);
criterion_main!(benches);
