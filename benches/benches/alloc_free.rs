//! Order-0 allocate+free of the virtual swap map: one CPU, two threads, and
//! frees on another CPU than the allocation.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use vswap_core::{Ctx, MapConfig, NoHost, StdProvider, VswapMap};

type Map = VswapMap<StdProvider, NoHost>;

fn new_map() -> Map {
    VswapMap::new(MapConfig::default(), StdProvider::new(), NoHost).unwrap()
}

/// The kernel's pair: allocate at swap-out (count 0, cached), then drop the
/// swap cache reference, which frees the slot.
#[inline]
fn pair(m: &Map, cpu: u32) {
    let s = m.alloc(0, cpu, Ctx::NoSleep).unwrap();
    m.cache_clear(black_box(s), 0, Ctx::NoSleep).unwrap();
}

#[repr(align(64))]
struct Line(AtomicU64);

/// The machine's atomic floor, measured in the same run: the DESIGN.md
/// sequence (fetch_or + CAS + store + fetch_and), and one locked
/// read-modify-write. Absolute nanoseconds differ between machines; ratios to
/// these do not.
fn floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let (a, b) = (Line(AtomicU64::new(0)), Line(AtomicU64::new(0)));
    g.bench_function("rmw", |bn| {
        bn.iter(|| black_box(&a.0).fetch_add(1, Ordering::AcqRel))
    });
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

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("order0_alloc_free");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let m = new_map();
    g.bench_function("one_cpu", |b| b.iter(|| pair(&m, 0)));

    // Two threads, each on its own CPU number, each doing `iters` pairs; time
    // per iteration is wall time / iters, so throughput(2) / throughput(1) =
    // 2 * one_cpu / two_threads.
    let m = new_map();
    g.bench_function("two_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for cpu in 0..2 {
                    let m = &m;
                    s.spawn(move || {
                        for _ in 0..iters {
                            pair(m, cpu);
                        }
                    });
                }
            });
            start.elapsed()
        })
    });

    // Order-4 (mTHP) allocate + free of all 16 slots.
    let m = new_map();
    g.bench_function("order4_one_cpu", |b| {
        b.iter(|| {
            let s = m.alloc(4, 0, Ctx::NoSleep).unwrap();
            for i in 0..16 {
                m.cache_clear(s + i, 0, Ctx::NoSleep).unwrap();
            }
        })
    });
    g.finish();

    // Free cost alone: slots allocated on this thread vs on another thread
    // (another CPU), freed here. Timed part: the frees only.
    let mut g = c.benchmark_group("order0_free");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    const BATCH: usize = 1024;
    let m = new_map();
    g.bench_function("same_cpu", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = BATCH.min((iters - done) as usize);
                let v: Vec<u32> = (0..n)
                    .map(|_| m.alloc(0, 0, Ctx::NoSleep).unwrap())
                    .collect();
                let t = Instant::now();
                for &s in &v {
                    m.cache_clear(s, 0, Ctx::NoSleep).unwrap();
                }
                total += t.elapsed();
                done += n as u64;
            }
            total
        })
    });
    let m = new_map();
    g.bench_function("other_cpu", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = mpsc::sync_channel::<Vec<u32>>(2);
            let (ack_tx, ack_rx) = mpsc::channel::<()>();
            std::thread::scope(|s| {
                let m = &m;
                s.spawn(move || {
                    let mut done = 0;
                    while done < iters {
                        let n = BATCH.min((iters - done) as usize);
                        tx.send(
                            (0..n)
                                .map(|_| m.alloc(0, 1, Ctx::NoSleep).unwrap())
                                .collect(),
                        )
                        .unwrap();
                        done += n as u64;
                        // Wait until the batch is freed so the allocator is idle
                        // while the other CPU frees.
                        ack_rx.recv().unwrap();
                    }
                });
                let mut total = Duration::ZERO;
                for v in rx.iter() {
                    let t = Instant::now();
                    for &s in &v {
                        m.cache_clear(s, 0, Ctx::NoSleep).unwrap();
                    }
                    total += t.elapsed();
                    let _ = ack_tx.send(());
                }
                total
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("ops");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let m = new_map();
    let s = m.alloc(0, 0, Ctx::NoSleep).unwrap();
    g.bench_function("dup_put", |b| {
        b.iter(|| {
            m.dup(s, 1, Ctx::NoSleep).unwrap();
            m.put(s, 1).unwrap();
        })
    });
    g.bench_function("lookup", |b| {
        b.iter(|| black_box(m.lookup(black_box(s)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, floor, bench);
criterion_main!(benches);
