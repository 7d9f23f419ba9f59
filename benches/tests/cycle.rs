//! The swap-table baseline and the end-to-end cycle of every design do what
//! they claim, so that a broken implementation cannot produce figures. (The
//! swap table also runs through the shared `SwapSlots` checks of
//! `impls.rs`, through `for_each_impl!` and `for_each_batch_impl!`.)
#![allow(missing_docs, clippy::unwrap_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use vswap_benches::cycle::{
    self, Cycle, FOLIO, PageClass, SAME_VALUE, SHADOW, VswapCycle, ZSWAP_HANDLE, v5_cycle,
};
use vswap_benches::swaptable::{ST_CACHED, ST_COUNT_MASK, ST_HAS_CACHE, ST_VALUE_SHIFT, SwapTable};
use vswap_benches::work::{self, PhysSlots};
use vswap_benches::{Backend, SwapSlots};

const DEV: u64 = 1 << 12;

/// Many cycles per class never leak: the device (or, for v5 and vswap, the
/// virtual space and the device) still has room afterwards.
fn no_leak<C: Cycle>(c: &C, name: &str) {
    for class in PageClass::ALL {
        for i in 0..3 * DEV {
            let h = c
                .swap_out(class, (i % 2) as u32)
                .unwrap_or_else(|| panic!("{name} {class:?}: out of space after {i} cycles"));
            assert!(c.swap_in(h), "{name} {class:?}: swap-in refused");
            assert!(c.free(h), "{name} {class:?}: not freed");
        }
        cycle::cycle(c, class, 1000);
    }
}

#[test]
fn cycles_do_not_leak() {
    no_leak(&VswapCycle::new(DEV, false), "vswap");
    no_leak(&v5_cycle(DEV), "v5");
    no_leak(&SwapTable::new(DEV, 2), "swap_table");
}

#[test]
fn vswap_cycle_states() {
    let c = VswapCycle::new(DEV, true);
    let m = c.eng.map();
    for class in PageClass::ALL {
        let h = c.swap_out(class, 0).unwrap();
        let e = m.lookup(h as u32).unwrap();
        assert_eq!(
            (e.count, e.cached, e.locked),
            (1, false, false),
            "{class:?}"
        );
        match (class, e.backend) {
            (PageClass::Zero, Backend::Zero) => {}
            (PageClass::Same, Backend::Same(v)) => assert_eq!(v, SAME_VALUE),
            (PageClass::Zswap, Backend::Zswap(z)) => assert_eq!(z, ZSWAP_HANDLE),
            (PageClass::Device, Backend::Phys { dev: 0, .. }) => {}
            (c, b) => panic!("{c:?} stored {b:?}"),
        }
        assert_eq!(m.cache_get(h as u32).unwrap().word, SHADOW);
        assert!(c.swap_in(h));
        let e2 = m.lookup(h as u32).unwrap();
        assert_eq!((e2.count, e2.cached, e2.locked), (0, true, false));
        assert_eq!(m.cache_get(h as u32).unwrap().word, FOLIO);
        assert!(c.free(h));
        assert!(m.lookup(h as u32).is_err(), "{class:?}: freed");
        if let Backend::Phys { .. } = e.backend {
            assert_eq!(
                c.eng.device(0).unwrap().stats().used,
                0,
                "device slot freed"
            );
        }
    }
    assert_eq!(c.eng.host().zswap_released.load(Ordering::Relaxed), 1);
}

#[test]
fn v5_cycle_states() {
    let c = v5_cycle(DEV);
    let p = c.phys.as_ref().unwrap();
    let h = c.swap_out(PageClass::Device, 0).unwrap();
    assert!(p.owner(1).is_some(), "a device slot for a device page");
    assert!(c.swapin_lock(h));
    assert!(!c.swapin_lock(h), "claim is exclusive");
    assert!(c.cache_add(h, FOLIO));
    assert!(!c.put(h), "cached: still live");
    assert!(c.free(h));
    assert_eq!(c.lookup(h), u64::MAX, "freed");
    assert!(p.owner(1).is_none(), "device slot freed with the slot");
    // Zero / zswap pages spend no device slot.
    let hz = c.swap_out(PageClass::Zero, 0).unwrap();
    let hs = c.swap_out(PageClass::Zswap, 0).unwrap();
    assert!(p.owner(1).is_none() && p.owner(2).is_none());
    for h in [hz, hs] {
        assert!(c.swap_in(h));
        assert!(c.free(h));
    }
}

#[test]
fn swap_table_word_and_lockless_lookup() {
    let t = SwapTable::new(DEV, 2);
    let h = SwapSlots::alloc(&t, 0, 0).unwrap();
    assert_ne!(h, 0, "slot 0 reserved");
    assert_eq!(t.lookup(h), ST_CACHED, "count 0, cached");
    t.dup(h);
    assert!(t.reclaim(h, SHADOW));
    assert_eq!(t.lookup(h), 1 | (SHADOW << ST_VALUE_SHIFT));
    assert!(t.swapin_lock(h));
    assert!(!t.swapin_lock(h), "claim is exclusive");
    assert!(t.cache_add(h, FOLIO));
    assert!(!t.cache_add(h, FOLIO), "already cached");
    assert!(!t.put(h), "cached: still live");
    assert_eq!(
        t.lookup(h),
        ST_CACHED | ST_HAS_CACHE | (FOLIO << ST_VALUE_SHIFT)
    );
    assert_eq!(t.lookup(h) & ST_COUNT_MASK, 0);
    t.cache_clear(h, 1, 0);
    assert_eq!(t.lookup(h), 0, "freed: null word");
    assert_eq!(t.used(), 0);
    // A lookup of a slot whose cluster was never used is refused.
    assert_eq!(t.lookup(DEV - 1), u64::MAX);
}

#[test]
fn swap_table_spends_a_device_slot_on_every_page() {
    // A device of DEV slots (one reserved) holds DEV - 1 pages, zero pages
    // and zswap pages included; vswap holds them with no device slot.
    let t = SwapTable::new(DEV, 2);
    let v = VswapCycle::new(DEV, false);
    let mut held = Vec::new();
    for i in 0..DEV + 100 {
        let class = if i % 2 == 0 {
            PageClass::Zero
        } else {
            PageClass::Zswap
        };
        assert!(v.swap_out(class, 0).is_some(), "vswap needs no device slot");
        match t.swap_out(class, 0) {
            Some(h) => held.push(h),
            None => break,
        }
    }
    assert_eq!(held.len() as u64, DEV - 1);
    let distinct: HashSet<_> = held.iter().collect();
    assert_eq!(distinct.len(), held.len());
    assert!(
        v.eng.device(0).unwrap().stats().used == 0,
        "vswap: device untouched"
    );
    // Backends are where the writeout put them and go away with the slot.
    let z = held[0];
    assert_eq!(t.resolve(z), vswap_benches::word::backend(Backend::Zero));
    assert_eq!(
        t.resolve(held[1]),
        vswap_benches::word::backend(Backend::Zswap(ZSWAP_HANDLE))
    );
    for &h in &held {
        assert!(t.put(h), "count 1, not cached: the put frees");
    }
    assert_eq!(t.used(), 0);
    assert_eq!(t.resolve(z), 0, "zero bit cleared on free");
    // Everything is usable again, at order 0 and order 4.
    let d = work::SwapTableDevice(t);
    let mut n = 0;
    while d.alloc(0, 1, 0).is_some() {
        n += 1;
    }
    assert_eq!(n, DEV - 1);
}

#[test]
fn swap_table_orders_and_two_cpus() {
    let t = SwapTable::new(1 << 14, 2);
    let mut seen = HashSet::new();
    for i in 0..200 {
        let h = SwapSlots::alloc(&t, 4, i % 2).unwrap();
        assert_eq!(h % 16, 0);
        for s in h..h + 16 {
            assert!(seen.insert(s), "slot {s} handed out twice");
        }
    }
    for &s in &seen {
        t.cache_clear(s, 1, 0);
    }
    assert_eq!(t.used(), 0);
    // Concurrent pairs and frees on the other CPU keep the count right.
    work::two_threads(&t, 0, 20_000);
    work::other_cpu_free(&t, 0, 20_000);
    work::other_cpu_free(&t, 4, 2_000);
    assert_eq!(t.used(), 0);
    let f = work::fragmentation(&work::SwapTableDevice::new(1 << 14), 1 << 14);
    assert!(f.free > 0 && f.order4 <= f.free, "{f:?}");
}

#[test]
fn swap_table_store_transitions() {
    let t = SwapTable::new(DEV, 2);
    let h = work::live_slot(&t);
    assert!(t.store(h, Backend::None, Backend::Zero));
    assert!(!t.store(h, Backend::None, Backend::Same(SAME_VALUE)));
    assert!(t.store(h, Backend::Zero, Backend::Same(SAME_VALUE)));
    assert!(!t.store(h, Backend::Zero, Backend::None));
    assert!(t.store(h, Backend::Same(SAME_VALUE), Backend::Zswap(ZSWAP_HANDLE)));
    assert!(t.store(
        h,
        Backend::Zswap(ZSWAP_HANDLE),
        Backend::Phys { dev: 0, off: h }
    ));
    assert_eq!(t.resolve(h), 0, "device data: at the slot itself");
    t.cache_clear(h, 1, 0);
    assert!(t.put(h));
    assert!(!t.store(h, Backend::None, Backend::Zero), "a free slot");
    let m = SwapTable::new(1 << 16, 2);
    work::batch_phys_swap_table(0);
    let hs = work::batch_prepare(&m, 10_000, |_| Backend::Zero);
    m.put_batch(&hs);
    assert_eq!(m.used(), 0);
    assert_eq!(m.resolve(hs[0]), 0);
}
