//! The reclamation contract seen from a host (issue 13 item 1, and its
//! review): nothing the library does inside a read-side section may sleep,
//! since a kernel's `rcu_read_lock` forbids it. A provider that tracks each
//! thread's section depth fails the test when it is asked for memory with
//! `Ctx::MaySleep` inside a section, or when a callback that may sleep (the
//! swapoff's I/O) runs inside one; and every section opened is closed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use vswap_core::{
    Backend, Ctx, Engine, EngineConfig, EngineHost, MapConfig, MemError, NoHost, Provider, Put,
    StdProvider, VswapMap,
};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn depth() -> u32 {
    DEPTH.with(Cell::get)
}

#[derive(Default)]
struct Tracking {
    inner: StdProvider,
    sleeping_allocs: AtomicU64,
    sleeping_allocs_inside: AtomicU64,
}

// SAFETY: forwards every call to `StdProvider`; the depth is bookkeeping.
unsafe impl Provider for Tracking {
    fn alloc_zeroed(&self, size: usize, align: usize, ctx: Ctx) -> Result<NonNull<u8>, MemError> {
        if ctx == Ctx::MaySleep {
            self.sleeping_allocs.fetch_add(1, Ordering::Relaxed);
            if depth() > 0 {
                self.sleeping_allocs_inside.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.inner.alloc_zeroed(size, align, ctx)
    }
    unsafe fn free(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.free(ptr, size, align) }
    }
    fn read_lock(&self) {
        DEPTH.with(|d| d.set(d.get() + 1));
        self.inner.read_lock();
    }
    unsafe fn read_unlock(&self) {
        DEPTH.with(|d| {
            assert!(d.get() > 0, "read_unlock without a section");
            d.set(d.get() - 1);
        });
        // SAFETY: forwarded with the caller's pairing.
        unsafe { self.inner.read_unlock() };
    }
    fn grace_start(&self) -> u64 {
        self.inner.grace_start()
    }
    fn grace_done(&self, cookie: u64) -> bool {
        self.inner.grace_done(cookie)
    }
}

/// Every map path that may allocate with `MaySleep`: a count past the
/// inline maximum (side-table block), the first cache word of a cluster,
/// memcg ids that differ within a cluster, a same-filled value kept in the
/// side table; none allocates inside a section, and all sections close.
#[test]
fn map_allocations_that_may_sleep_happen_outside_sections() {
    let p = Tracking::default();
    let map = VswapMap::new(MapConfig::default(), &p, NoHost).unwrap();
    let a = map.alloc(0, 0, Ctx::MaySleep).unwrap();
    let b = map.alloc(0, 0, Ctx::MaySleep).unwrap();
    let before = p.sleeping_allocs.load(Ordering::Relaxed);
    map.dup(a, 100, Ctx::MaySleep).unwrap(); // past 62: a count block
    map.cache_store(b, 0x1000, Ctx::MaySleep).unwrap(); // the cache table
    map.set_memcg(a, 0, 3, Ctx::MaySleep).unwrap();
    map.set_memcg(b, 0, 4, Ctx::MaySleep).unwrap(); // a memcg table
    map.store(b, Backend::None, Backend::Same(0x0123_4567_89ab_cdef))
        .unwrap();
    assert!(
        p.sleeping_allocs.load(Ordering::Relaxed) > before,
        "the workload made no MaySleep allocation: the test checks nothing"
    );
    assert_eq!(
        p.sleeping_allocs_inside.load(Ordering::Relaxed),
        0,
        "a MaySleep allocation ran inside a read-side section"
    );
    assert_eq!(depth(), 0, "a section was left open");
    map.put(a, 100).unwrap();
    assert_eq!(map.cache_clear(a, 0, Ctx::MaySleep), Ok(Put::Freed));
    assert_eq!(map.cache_clear(b, 0, Ctx::MaySleep), Ok(Put::Freed));
    assert_eq!(depth(), 0);
}

struct Host;
impl EngineHost for Host {
    fn release_zswap(&self, _: u64) {}
}

/// Review finding M3: swapoff of the virtual layer called its I/O callback
/// (which reads pages and rewrites page tables: it sleeps) from inside the
/// cluster walk's read-side section.
#[test]
fn swapoff_io_runs_outside_every_section() {
    let p = Tracking::default();
    let e = Engine::new(EngineConfig::default(), &p, Host).unwrap();
    let slots: Vec<u32> = (0..1100)
        .map(|_| e.alloc(0, 0, None, Ctx::MaySleep).unwrap())
        .collect();
    for &s in &slots {
        e.map().dup(s, 1, Ctx::MaySleep).unwrap();
        assert_eq!(e.map().cache_clear(s, 0, Ctx::MaySleep), Ok(Put::Live));
    }
    let mut calls = 0;
    let moved = e
        .swapoff_virtual(None, 0, |_| {
            assert_eq!(depth(), 0, "swapoff's I/O inside a read-side section");
            calls += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!((moved, calls), (slots.len() as u64, slots.len()));
    assert_eq!(depth(), 0);
}

/// `VswapMap::guard` (issue 13 item 1: one section for a batch): the
/// section is entered once and held across the calls (each call nests one
/// level deeper and comes back out), the guard's end closes it, and a
/// cluster torn down under the guard keeps its tables until the guard is
/// gone (its grace period waits for this thread's section).
#[test]
fn a_guard_holds_one_section_across_many_calls() {
    let p = Tracking::default();
    let map = VswapMap::new(MapConfig::default(), &p, NoHost).unwrap();
    // Two clusters' worth of order-0 slots on CPU 1, so that freeing them all
    // tears at least one cluster down.
    let slots: Vec<u32> = (0..1024)
        .map(|_| map.alloc(0, 1, Ctx::NoSleep).unwrap())
        .collect();
    {
        // SAFETY: every call under the guard passes NoSleep (or takes none).
        let _g = unsafe { map.guard() };
        assert_eq!(depth(), 1);
        for &s in &slots {
            assert_eq!(map.lookup(s).unwrap().count, 0);
            assert_eq!(depth(), 1, "a call left its nested section open");
        }
        for &s in &slots {
            assert_eq!(map.cache_clear(s, 0, Ctx::NoSleep), Ok(Put::Freed));
        }
        assert_eq!(depth(), 1);
        map.reclaim();
        assert!(
            map.stats().memory.retiring_clusters > 0,
            "a torn-down cluster's tables went back while this thread's guard was held"
        );
    }
    assert_eq!(depth(), 0, "the guard's section was left open");
    let t = std::time::Instant::now();
    while map.stats().memory.retiring_clusters > 0 {
        map.reclaim();
        assert!(t.elapsed().as_secs() < 10, "grace periods never ended");
        std::thread::yield_now();
    }
}
