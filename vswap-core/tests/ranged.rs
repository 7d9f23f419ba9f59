#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! The ranged (mTHP) operations from their documentation alone, by a hostile
//! caller: `cache_clear_range`, `put_range`, `lock_range`, `unlock_range`
//! and `swapin_range_check` on ranges out of the space, unaligned, too
//! large, partly free, partly cached, partly locked by someone else, with
//! count 0, and with a slot freed by a racing thread. A failure that the
//! documentation calls "nothing changes" is checked against a snapshot of
//! every slot of the map.

use std::sync::Mutex;

use vswap_alloc::StdProvider;
use vswap_core::{
    Backend, CacheState, Ctx, Entry, Error, Geometry, Host, MapConfig, Put, SwapinCheck, VswapMap,
};

#[derive(Default)]
struct RecHost(Mutex<Vec<(u8, u64, u64)>>);

impl Host for RecHost {
    fn release_zswap(&self, handle: u64) {
        self.0.lock().unwrap().push((255, handle, 0));
    }
    fn release_phys(&self, dev: u8, off: u64, len: u64) {
        self.0.lock().unwrap().push((dev, off, len));
    }
}

impl RecHost {
    fn take(&self) -> Vec<(u8, u64, u64)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

type Map<'a> = VswapMap<&'a StdProvider, &'a RecHost>;

/// Clusters of 8 slots, 64 slots.
const SHIFT: u32 = 3;
const SLOTS: u32 = 64;
const S: Ctx = Ctx::MaySleep;

fn new_map<'a>(p: &'a StdProvider, h: &'a RecHost) -> Map<'a> {
    VswapMap::new(
        MapConfig {
            geometry: Geometry::tiny(SHIFT, u64::from(SLOTS), 2),
            ..MapConfig::default()
        },
        p,
        h,
    )
    .unwrap()
}

type Snap = Vec<(u32, Result<Entry, Error>, Result<CacheState, Error>)>;

/// Everything visible about every slot.
fn snap(map: &Map<'_>) -> Snap {
    (0..SLOTS + 8)
        .map(|s| (s, map.lookup(s), map.cache_get(s)))
        .collect()
}

/// An order-2 allocation (4 slots), each slot given `count` references, a
/// zswap backend `0x100 + i` and cookie `0xc0 + i`; cached unless
/// `uncache`.
fn quad(map: &Map<'_>, count: u32, uncache: bool) -> u32 {
    let s = map.alloc(2, 0, S).unwrap();
    assert_eq!(s % 4, 0);
    for i in 0..4 {
        map.cache_store(s + i, 0xc0 + u64::from(i), S).unwrap();
        if count > 0 {
            map.dup(s + i, count, S).unwrap();
        }
        map.store(s + i, Backend::None, Backend::Zswap(0x100 + u64::from(i)))
            .unwrap();
        if uncache {
            assert_eq!(map.cache_clear(s + i, 0, S), Ok(Put::Live));
        }
    }
    s
}

/// Every ranged call on a bad range gets the range's error and changes
/// nothing: order above the cluster's, unaligned start, slot 0 in the
/// range, a range past the end of the space or beyond `u32`.
#[test]
fn bad_ranges_change_nothing() {
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    let s = quad(&map, 1, false);
    let before = snap(&map);
    let cases: [(u32, u32, Error); 8] = [
        (s, SHIFT + 1, Error::BadOrder),
        (s, 31, Error::BadOrder),
        (s, u32::MAX, Error::BadOrder),
        (s + 1, 2, Error::Misaligned),
        (s + 2, 2, Error::Misaligned),
        (0, 2, Error::OutOfRange),
        (SLOTS, 0, Error::OutOfRange),
        (u32::MAX - 3, 2, Error::OutOfRange),
    ];
    for (start, order, e) in cases {
        let what = format!("({start}, {order})");
        assert_eq!(map.cache_clear_range(start, order, 7, S), Err(e), "{what}");
        assert_eq!(map.put_range(start, order), Err(e), "{what}");
        assert_eq!(map.lock_range(start, order), Err(e), "{what}");
        assert_eq!(map.unlock_range(start, order), Err(e), "{what}");
        assert_eq!(map.swapin_range_check(start, order), Err(e), "{what}");
    }
    assert_eq!(snap(&map), before);
    assert!(h.take().is_empty());
}

/// Ranges over free slots (in a live cluster or in a cluster that was
/// never made) are `NotAllocated`, nothing changed.
#[test]
fn free_ranges_are_not_allocated() {
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    let s = quad(&map, 1, false);
    // A second allocation, freed again: free slots in a live cluster.
    let free = quad(&map, 0, false);
    assert_eq!(map.cache_clear_range(free, 2, 0, S), Ok(4));
    assert_eq!(h.take().len(), 4);
    assert!(map.stats().memory.live_clusters >= 1);
    let before = snap(&map);
    // ... and a cluster that was never made (the last one).
    for start in [free, SLOTS - 8] {
        assert_eq!(
            map.cache_clear_range(start, 2, 0, S),
            Err(Error::NotAllocated)
        );
        assert_eq!(map.put_range(start, 2), Err(Error::NotAllocated));
        assert_eq!(map.lock_range(start, 2), Err(Error::NotAllocated));
        assert_eq!(map.unlock_range(start, 2), Err(Error::NotAllocated));
        assert_eq!(map.swapin_range_check(start, 2), Err(Error::NotAllocated));
    }
    // The whole cluster: live slots and free ones.
    // The whole cluster: live slots and free ones (or slot 0, which a
    // range may never hold).
    let c0 = s & !7;
    let want = if c0 == 0 {
        Error::OutOfRange
    } else {
        Error::NotAllocated
    };
    assert_eq!(map.cache_clear_range(c0, 3, 0, S), Err(want));
    assert_eq!(map.put_range(c0, 3), Err(want));
    assert_eq!(map.lock_range(c0, 3), Err(want));
    assert_eq!(map.swapin_range_check(c0, 3), Err(want));
    assert_eq!(snap(&map), before);
    assert!(h.take().is_empty());
}

/// `cache_clear_range` on a partly cached range: `WrongState`, and the
/// cached slots keep their flag and cookie; the uncached one is untouched.
#[test]
fn cache_clear_range_partly_cached() {
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    let s = quad(&map, 0, false);
    map.dup(s + 2, 1, S).unwrap();
    assert_eq!(map.cache_clear(s + 2, 0x5, S), Ok(Put::Live));
    let before = snap(&map);
    for shadow in [0, 0xdead] {
        assert_eq!(
            map.cache_clear_range(s, 2, shadow, S),
            Err(Error::WrongState)
        );
        assert_eq!(
            map.cache_clear_range(s + 2, 1, shadow, S),
            Err(Error::WrongState)
        );
    }
    assert_eq!(snap(&map), before);
    assert!(h.take().is_empty());
    // The cached half as its own order-1 range: both freed (count 0).
    assert_eq!(map.cache_clear_range(s, 1, 0x99, S), Ok(2));
    assert_eq!(h.take(), [(255, 0x100, 0), (255, 0x101, 0)]);
    for i in 0..2 {
        assert_eq!(map.lookup(s + i), Err(Error::NotAllocated));
        assert_eq!(map.cache_get(s + i), Err(Error::NotAllocated));
    }
    // A slot that outlives gets the shadow; the dead one loses the cookie.
    assert_eq!(map.cache_clear_range(s + 3, 0, 0x99, S), Ok(1));
    assert_eq!(map.put(s + 2, 1), Ok(Put::Freed));
    assert_eq!(h.take(), [(255, 0x103, 0), (255, 0x102, 0)]);
}

/// `cache_clear_range` leaves the shadow in every slot that outlives (count
/// or lock), frees the others, and its result counts the freed ones; a
/// slot that died under a lock is freed by the unlock.
#[test]
fn cache_clear_range_mixed_counts_and_locks() {
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    let s = quad(&map, 0, false);
    map.dup(s, 2, S).unwrap();
    map.lock(s + 1).unwrap();
    assert_eq!(map.cache_clear_range(s, 2, 0x5ad0, S), Ok(2));
    assert_eq!(h.take(), [(255, 0x102, 0), (255, 0x103, 0)]);
    let e = map.lookup(s).unwrap();
    assert_eq!((e.count, e.cached, e.locked), (2, false, false));
    let z = map.lookup(s + 1).unwrap();
    assert_eq!((z.count, z.cached, z.locked), (0, false, true));
    for i in 0..2 {
        assert_eq!(
            map.cache_get(s + i),
            Ok(CacheState {
                cached: false,
                word: 0x5ad0
            })
        );
    }
    // Cleared already: a second clear is WrongState, nothing changes.
    let before = snap(&map);
    assert_eq!(map.cache_clear_range(s, 1, 0, S), Err(Error::WrongState));
    assert_eq!(snap(&map), before);
    assert_eq!(map.unlock(s + 1), Ok(Put::Freed));
    assert_eq!(map.put(s, 2), Ok(Put::Freed));
    assert_eq!(h.take(), [(255, 0x101, 0), (255, 0x100, 0)]);
}

/// Device-backed slots freed by one `cache_clear_range` go back as one
/// coalesced run.
#[test]
fn cache_clear_range_coalesces_device_runs() {
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    let s = map.alloc(3, 0, S).unwrap();
    for i in 0..8 {
        let b = Backend::Phys {
            dev: 2,
            off: 500 + u64::from(i),
        };
        map.store(s + i, Backend::None, b).unwrap();
    }
    assert_eq!(map.cache_clear_range(s, 3, 0, S), Ok(8));
    assert_eq!(h.take(), [(2, 500, 8)]);
    assert_eq!(map.stats().live_slots, 0);
}

/// `lock_range` with one slot locked by someone else: `Busy`, and every
/// other slot is unlocked again (before and after the busy one); the other
/// owner's lock stays.
#[test]
fn lock_range_busy_rolls_back() {
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    let s = quad(&map, 1, true);
    for busy in 0..4 {
        map.lock(s + busy).unwrap();
        let before = snap(&map);
        assert_eq!(map.lock_range(s, 2), Err(Error::Busy));
        assert_eq!(map.put_range(s, 2), Err(Error::Busy));
        assert_eq!(map.unlock_range(s, 2), Err(Error::NotLocked));
        assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::InCache));
        assert_eq!(snap(&map), before, "busy slot {busy}");
        assert_eq!(map.unlock(s + busy), Ok(Put::Live));
    }
    map.lock_range(s, 2).unwrap();
    assert_eq!(map.lock_range(s, 2), Err(Error::Busy));
    assert_eq!(map.lock(s + 3), Err(Error::Busy));
    // Slots that die while range-locked are freed by unlock_range.
    assert_eq!(map.put(s + 1, 1), Ok(Put::Live));
    assert_eq!(map.put(s + 3, 1), Ok(Put::Live));
    assert!(h.take().is_empty());
    assert_eq!(map.unlock_range(s, 2), Ok(2));
    assert_eq!(h.take(), [(255, 0x101, 0), (255, 0x103, 0)]);
    assert_eq!(map.unlock_range(s, 1), Err(Error::NotLocked));
    assert_eq!(map.put_range(s, 1), Err(Error::NotAllocated));
    assert_eq!(map.put_range(s, 0), Ok(1));
    assert_eq!(map.put_range(s + 2, 0), Ok(1));
    assert_eq!(h.take(), [(255, 0x100, 0), (255, 0x102, 0)]);
}

/// `put_range` over a slot with count 0 (cached, no reference):
/// `CountUnderflow`, nothing changes; a busy slot wins over a count of 0
/// later in the range (every slot's lock is checked before any count).
#[test]
fn put_range_count_zero() {
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    let s = quad(&map, 1, false);
    assert_eq!(map.put(s + 1, 1), Ok(Put::Live)); // count 0, still cached
    let before = snap(&map);
    assert_eq!(map.put_range(s, 2), Err(Error::CountUnderflow));
    assert_eq!(snap(&map), before);
    map.lock(s + 3).unwrap();
    assert_eq!(map.put_range(s, 2), Err(Error::Busy));
    assert_eq!(map.unlock(s + 3), Ok(Put::Live));
    assert!(h.take().is_empty());
    // Order 0 is a range of one slot.
    assert_eq!(map.put_range(s + 1, 0), Err(Error::CountUnderflow));
    assert_eq!(map.put_range(s, 0), Ok(0));
    assert_eq!(map.cache_clear_range(s, 0, 0, S), Ok(1));
    assert_eq!(h.take(), [(255, 0x100, 0)]);
}

/// `swapin_range_check`: each answer from the docs.
#[test]
fn swapin_range_check_answers() {
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    let s = map.alloc(2, 0, S).unwrap();
    for i in 0..4 {
        map.dup(s + i, 1, S).unwrap();
    }
    // Cached (the fresh allocation): InCache.
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::InCache));
    for i in 0..4 {
        map.store(s + i, Backend::None, Backend::Zero).unwrap();
    }
    assert_eq!(map.cache_clear_range(s, 2, 0, S), Ok(0));
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::Zero));
    assert_eq!(map.swapin_range_check(s + 2, 1), Ok(SwapinCheck::Zero));
    // Same(0) is a zero page too; another value is not.
    map.store(s + 1, Backend::Zero, Backend::Same(0)).unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::Zero));
    map.store(s + 1, Backend::Same(0), Backend::Same(1))
        .unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::Mixed));
    assert_eq!(map.swapin_range_check(s + 1, 0), Ok(SwapinCheck::Mixed));
    // A value kept in the side table (it decodes to the table marker).
    let wide = 0x1234_5678_9abc_def0;
    map.store(s + 1, Backend::Same(1), Backend::Same(wide))
        .unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::Mixed));
    map.store(s + 1, Backend::Same(wide), Backend::Zero)
        .unwrap();
    // Contiguous on one device.
    for i in 0..4 {
        let b = Backend::Phys {
            dev: 3,
            off: 40 + u64::from(i),
        };
        map.store(s + i, Backend::Zero, b).unwrap();
    }
    assert_eq!(
        map.swapin_range_check(s, 2),
        Ok(SwapinCheck::Contiguous { dev: 3, off: 40 })
    );
    assert_eq!(
        map.swapin_range_check(s + 2, 1),
        Ok(SwapinCheck::Contiguous { dev: 3, off: 42 })
    );
    // Out of sequence, or on another device: Mixed.
    let b = |dev, off| Backend::Phys { dev, off };
    map.store(s + 3, b(3, 43), b(3, 44)).unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::Mixed));
    map.store(s + 3, b(3, 44), b(4, 43)).unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::Mixed));
    map.store(s + 3, b(4, 43), b(3, 43)).unwrap();
    // Zero mixed with device slots, zswap, none: Mixed.
    map.store(s, b(3, 40), Backend::Zero).unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::Mixed));
    map.store(s, Backend::Zero, Backend::Zswap(9)).unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::Mixed));
    map.store(s, Backend::Zswap(9), Backend::None).unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::Mixed));
    // (Each store released the location it replaced.)
    assert_eq!(
        h.take(),
        [(3, 43, 1), (3, 44, 1), (4, 43, 1), (3, 40, 1), (255, 9, 0)]
    );
    // Locked (a swap-in under way) or cached again: InCache wins.
    map.lock(s + 2).unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::InCache));
    map.unlock(s + 2).unwrap();
    map.cache_add(s + 3, 0x77, S).unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Ok(SwapinCheck::InCache));
    // Read-only: nothing changed by any check.
    let before = snap(&map);
    for order in 0..=2 {
        let _ = map.swapin_range_check(s, order);
    }
    assert_eq!(snap(&map), before);
    // A slot freed: NotAllocated, even with a cached slot before it.
    assert_eq!(map.cache_clear(s + 3, 0, S), Ok(Put::Live));
    assert_eq!(map.put(s + 3, 1), Ok(Put::Freed));
    map.cache_add(s, 1, S).unwrap();
    assert_eq!(map.swapin_range_check(s, 2), Err(Error::NotAllocated));
    assert_eq!(map.swapin_range_check(s, 1), Ok(SwapinCheck::InCache));
}

/// With a non-zero shadow and a provider out of memory for the cache word
/// table, `cache_clear_range` fails before touching any slot.
#[test]
fn cache_clear_range_nomem_changes_nothing() {
    use core::ptr::NonNull;
    use std::sync::atomic::{AtomicBool, Ordering};
    use vswap_core::{MemError, Provider};
    struct Fail<'a>(&'a StdProvider, AtomicBool);
    // SAFETY: forwards to the std provider, or fails.
    unsafe impl Provider for Fail<'_> {
        fn alloc_zeroed(
            &self,
            size: usize,
            align: usize,
            ctx: Ctx,
        ) -> Result<NonNull<u8>, MemError> {
            if self.1.load(Ordering::Relaxed) {
                return Err(MemError::NoMem);
            }
            self.0.alloc_zeroed(size, align, ctx)
        }
        unsafe fn free(&self, p: NonNull<u8>, size: usize, align: usize) {
            // SAFETY: `p` came from `self.0` (the caller's contract).
            unsafe { self.0.free(p, size, align) }
        }
        fn read_lock(&self) {
            self.0.read_lock();
        }
        unsafe fn read_unlock(&self) {
            // SAFETY: forwarded with the caller's pairing.
            unsafe { self.0.read_unlock() };
        }
        fn grace_start(&self) -> u64 {
            self.0.grace_start()
        }
        fn grace_done(&self, cookie: u64) -> bool {
            self.0.grace_done(cookie)
        }
    }
    let sp = StdProvider::new();
    let p = Fail(&sp, AtomicBool::new(false));
    let h = RecHost::default();
    let map = VswapMap::new(
        MapConfig {
            geometry: Geometry::tiny(SHIFT, u64::from(SLOTS), 2),
            ..MapConfig::default()
        },
        &p,
        &h,
    )
    .unwrap();
    let s = map.alloc(2, 0, S).unwrap();
    for i in 0..4 {
        map.dup(s + i, 1, S).unwrap();
    }
    p.1.store(true, Ordering::Relaxed);
    let entries: Vec<_> = (0..4).map(|i| map.lookup(s + i)).collect();
    assert_eq!(map.cache_clear_range(s, 2, 0x5, S), Err(Error::NoMem));
    let after: Vec<_> = (0..4).map(|i| map.lookup(s + i)).collect();
    assert_eq!(entries, after);
    // Without a shadow no table is needed.
    assert_eq!(map.cache_clear_range(s, 2, 0, S), Ok(0));
    p.1.store(false, Ordering::Relaxed);
    assert_eq!(map.put_range(s, 2), Ok(4));
}

/// A racing thread frees one slot of the range (its last reference, after
/// the folio left the cache) while another runs ranged calls on it: every
/// call returns one of its documented outcomes, every backend is released
/// exactly once, and nothing is left behind.
#[test]
fn slot_freed_mid_range_by_racing_thread() {
    let iters = if cfg!(miri) { 20 } else { 3000 };
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    for it in 0..iters {
        let s = map.alloc(2, 0, S).unwrap();
        for i in 0..4 {
            map.dup(s + i, 1, S).unwrap();
            map.store(s + i, Backend::None, Backend::Zswap(0x100 + u64::from(i)))
                .unwrap();
        }
        // Slot s + 1 has no cache reference of the range's owner: its
        // cache flag is cleared first, and its count is the racer's.
        assert_eq!(map.cache_clear(s + 1, 0, S), Ok(Put::Live));
        let (a, b) = std::thread::scope(|sc| {
            let t = sc.spawn(|| map.put(s + 1, 1));
            let r = match it % 3 {
                // Cached slots only (counts 1: none freed): the owner's
                // clear must not fail because of the racer next to it.
                0 => map.cache_clear_range(s + 2, 1, 0, S).map(|n| (n, 0)),
                // The whole range: s + 1 is not cached, WrongState whatever
                // the race, or NotAllocated once the racer freed it.
                1 => map.cache_clear_range(s, 2, 0, S).map(|n| (n, 1)),
                _ => map.swapin_range_check(s, 2).map(|c| {
                    assert_eq!(c, SwapinCheck::InCache);
                    (0, 2)
                }),
            };
            (r, t.join().unwrap())
        });
        assert_eq!(b, Ok(Put::Freed));
        match (it % 3, a) {
            (0, Ok((0, 0))) => {}
            (1, Err(Error::WrongState | Error::NotAllocated)) => {
                assert_eq!(map.cache_clear_range(s + 2, 1, 0, S), Ok(0));
            }
            (2, Ok(_) | Err(Error::NotAllocated)) => {
                assert_eq!(map.cache_clear_range(s + 2, 1, 0, S), Ok(0));
            }
            other => panic!("iteration {it}: {other:?}"),
        }
        // Put what is left; s + 2 and s + 3 may be freed already (case 0).
        for i in [0, 2, 3] {
            if map.lookup(s + i).is_ok() {
                if map.lookup(s + i).unwrap().cached {
                    let _ = map.cache_clear(s + i, 0, S);
                }
                if map.lookup(s + i).is_ok() {
                    assert_eq!(map.put(s + i, 1), Ok(Put::Freed));
                }
            }
        }
        let mut ev = h.take();
        ev.sort_unstable();
        assert_eq!(
            ev,
            [
                (255, 0x100, 0),
                (255, 0x101, 0),
                (255, 0x102, 0),
                (255, 0x103, 0)
            ],
            "iteration {it}"
        );
    }
    assert_eq!(map.stats().live_slots, 0);
}

/// Two threads run `put_range` on the same range with two references per
/// slot: both succeed, and all four slots are freed exactly once in all.
#[test]
fn concurrent_put_ranges_free_once() {
    let iters = if cfg!(miri) { 10 } else { 2000 };
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    for _ in 0..iters {
        let s = quad(&map, 2, true);
        let (a, b) = std::thread::scope(|sc| {
            let t = sc.spawn(|| map.put_range(s, 2));
            let r = map.put_range(s, 2);
            (r, t.join().unwrap())
        });
        // A put_range finding the other's slot busy is impossible (neither
        // locks); each frees the slots whose last count it dropped.
        assert_eq!(a.unwrap() + b.unwrap(), 4);
        assert_eq!(h.take().len(), 4);
    }
    assert_eq!(map.stats().live_slots, 0);
}

/// A racing thread drops the last reference of a slot inside the range
/// while `put_range` / `unlock_range` run on it: whoever drops it last
/// frees it; the totals are exact.
#[test]
fn last_reference_races_ranged_put_and_unlock() {
    let iters = if cfg!(miri) { 10 } else { 2000 };
    let p = StdProvider::new();
    let h = RecHost::default();
    let map = new_map(&p, &h);
    for it in 0..iters {
        let s = quad(&map, 1, true);
        if it % 2 == 0 {
            // Slot s + 1: one reference for the range, one for the racer.
            map.dup(s + 1, 1, S).unwrap();
            let (a, b) = std::thread::scope(|sc| {
                let t = sc.spawn(|| map.put(s + 1, 1));
                let r = map.put_range(s, 2);
                (r, t.join().unwrap())
            });
            match (a, b) {
                (Ok(4), Ok(Put::Live)) | (Ok(3), Ok(Put::Freed)) => {}
                other => panic!("iteration {it}: {other:?}"),
            }
        } else {
            map.lock_range(s, 2).unwrap();
            let (a, b) = std::thread::scope(|sc| {
                let t = sc.spawn(|| map.put(s + 1, 1));
                let r = map.unlock_range(s, 2);
                (r, t.join().unwrap())
            });
            match (a, b) {
                // The put landed under the lock: the unlock freed the zombie.
                (Ok(1), Ok(Put::Live)) | (Ok(0), Ok(Put::Freed)) => {}
                other => panic!("iteration {it}: {other:?}"),
            }
            for i in [0, 2, 3] {
                assert_eq!(map.put(s + i, 1), Ok(Put::Freed));
            }
        }
        let mut ev = h.take();
        ev.sort_unstable();
        assert_eq!(
            ev,
            [
                (255, 0x100, 0),
                (255, 0x101, 0),
                (255, 0x102, 0),
                (255, 0x103, 0)
            ],
            "iteration {it}"
        );
    }
    assert_eq!(map.stats().live_slots, 0);
}
