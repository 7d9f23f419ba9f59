//! Every implementation behind `SwapSlots` follows the same slot life, so
//! the benchmarks compare the same work.
#![allow(missing_docs, clippy::unwrap_used, clippy::panic)]

use std::collections::HashSet;

use vswap_benches::v5::{V5Map, V5Phys};
use vswap_benches::work::{self, PhysSlots};
use vswap_benches::{Backend, SwapSlots, for_each_batch_impl, for_each_impl};

#[test]
fn slot_life() {
    for_each_impl!(0, |name, m| {
        let a = m.alloc(0, 0).unwrap();
        let b = m.alloc(0, 1).unwrap();
        assert_ne!(a, b, "{name}");
        // dup then clear: stays live; put frees.
        m.dup(a);
        m.cache_clear(a, 1, 0);
        assert!(m.store(a, Backend::None, Backend::Zero), "{name}");
        assert!(!m.store(a, Backend::None, Backend::Zero), "{name}");
        assert!(m.put(a), "{name}: last count frees");
        // Alloc + clear frees at once; many pairs do not leak slots.
        m.cache_clear(b, 1, 0);
        for _ in 0..100_000 {
            work::pair(m, 0, 0);
        }
        let live = work::live_slot(m);
        assert_ne!(m.lookup(live), u64::MAX, "{name}");
        work::writeout(m, live, 3);
        assert!(
            m.store(live, Backend::None, Backend::Zero),
            "{name}: the cycle ends at None"
        );
        assert!(m.store(live, Backend::Zero, Backend::None), "{name}");
        assert!(!m.put(live), "{name}: still cached");
        m.dup(live);
        m.cache_clear(live, 1, 0);
        assert!(m.put(live), "{name}: last count of an uncached slot frees");
    });
}

#[test]
fn order4_is_aligned() {
    for_each_impl!(4, |name, m| {
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let h = m.alloc(4, 0).unwrap();
            assert_eq!(h % 16, 0, "{name}");
            assert!(seen.insert(h), "{name}");
        }
        for h in seen {
            m.cache_clear(h, 16, 0);
        }
        work::one_cpu(m, 4, 1000);
        work::other_cpu_free(m, 4, 1000);
    });
}

#[test]
fn batch_frees_everything() {
    for_each_batch_impl!(|name, make| {
        let m = make();
        let hs = work::batch_prepare(&m, 20_000, |_| Backend::Zero);
        assert_eq!(hs.len(), 20_000, "{name}");
        m.put_batch(&hs);
        // Everything is free again: the same number fits once more.
        let again = work::batch_prepare(&m, 20_000, |_| Backend::Zero);
        assert_eq!(again.len(), 20_000, "{name}");
    });
}

#[test]
fn v5_phys_backed_free_releases_device_slots() {
    let m = V5Map::with_phys(1 << 16, 2, V5Phys::new(1 << 16, 2));
    let hs = work::batch_prepare(&m, 10_000, |h| {
        let off = m.phys.as_ref().unwrap().alloc(0, 0, h).unwrap();
        Backend::Phys { dev: 0, off }
    });
    let p = m.phys.as_ref().unwrap();
    assert!(p.owner(1).is_some());
    m.put_batch(&hs);
    assert!(p.owner(1).is_none());
    // The whole device is usable again.
    let mut n = 0;
    while PhysSlots::alloc(p, 0, 0, 5).is_some() {
        n += 1;
    }
    assert_eq!(n, (1 << 16) - 1);
}

#[test]
fn fragmentation_runs() {
    let d = work::vswap_device(1 << 14);
    let f = work::fragmentation(&d, 1 << 14);
    assert!(f.free > 0 && f.order4 <= f.free, "{f:?}");
    let d = V5Phys::new(1 << 14, 2);
    let f = work::fragmentation(&d, 1 << 14);
    assert!(f.free > 0 && f.order4 <= f.free, "{f:?}");
}

#[test]
fn log_gc_relocates() {
    let mut b = work::LogBench::new();
    let (_, relocated) = b.run(5);
    assert!(relocated > 0);
}
