//! The end-to-end swap cycle (swap-out, swap-in and free of one page) per
//! backend, for vswap, the swap-table baseline (the kernel's current design:
//! a device slot for every page) and the v5 baseline. See
//! `vswap_benches::cycle` for what one cycle does in each design.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use vswap_benches::cycle::{self, CYCLE_DEVICE_SLOTS, PageClass, VswapCycle, v5_cycle};
use vswap_benches::swaptable::SwapTable;

fn cycles(c: &mut Criterion) {
    let vs = VswapCycle::new(CYCLE_DEVICE_SLOTS, false);
    let st = SwapTable::new(CYCLE_DEVICE_SLOTS, 2);
    let v5 = v5_cycle(CYCLE_DEVICE_SLOTS);
    for class in PageClass::ALL {
        let mut g = c.benchmark_group(format!("cycle_{}", class.name()));
        g.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(50);
        g.bench_function("vswap", |b| b.iter_custom(|n| cycle::cycle(&vs, class, n)));
        g.bench_function("swap_table", |b| {
            b.iter_custom(|n| cycle::cycle(&st, class, n))
        });
        g.bench_function("v5", |b| b.iter_custom(|n| cycle::cycle(&v5, class, n)));
        g.finish();
    }
}

criterion_group!(benches, cycles);
criterion_main!(benches);
