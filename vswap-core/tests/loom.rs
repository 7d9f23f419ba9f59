//! loom models of the lock-free protocols of `vswap-alloc` and `vswap-core`.
//!
//! Build and run (see `.ci/loom`):
//! ```text
//! CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg vswap_loom" \
//!     cargo test -p vswap-core --features std --test loom --release
//! ```
//! Every model uses a tiny geometry (clusters of 2 or 4 slots, directory levels
//! of 2 entries), at most 3 spawned threads (loom allows 5 including main), and
//! a preemption bound (`LOOM_MAX_PREEMPTIONS` overrides the per-model default).
//!
//! Memory comes from `TestProvider` (in `tests/common`): it checks that every
//! block given back was handed out (no double free), poisons freed blocks with
//! `0xff` and keeps them until the model iteration ends, so a late access to a
//! freed table reads a poisoned loom atomic (whose object index is out of
//! range: loom panics) instead of silently reading reused memory. Released
//! backends are logged by [`TestHost`] so each model can assert "released
//! exactly once".
//!
//! Every model ends by checking that the map's own memory accounting equals
//! the provider's bytes in use, and that dropping the map returns every byte.
#![cfg(vswap_loom)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Mutex as StdMutex;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;
use vswap_core::{Backend, BatchError, Ctx, Error, Geometry, Host, MapConfig, Put, VswapMap};

mod common;
use common::{TestProvider, model};

// ---------------------------------------------------------------------------
// Test host (the provider and the model runner are in `common`)
// ---------------------------------------------------------------------------

#[derive(Default)]
struct HostLog {
    zswap: StdMutex<Vec<u64>>,
    phys: StdMutex<Vec<(u8, u64)>>,
}

/// Logs every released backend. With `mark`, also sets bit `off` of a loom
/// atomic (Release) for each released device slot `(_, off)`, so that a model
/// thread can learn "this location was released" with happens-before.
#[derive(Clone, Default)]
struct TestHost {
    log: std::sync::Arc<HostLog>,
    mark: Option<Arc<AtomicU64>>,
}

impl TestHost {
    fn zswap(&self) -> Vec<u64> {
        let mut v = self.log.zswap.lock().unwrap().clone();
        v.sort_unstable();
        v
    }
    fn phys(&self) -> Vec<(u8, u64)> {
        let mut v = self.log.phys.lock().unwrap().clone();
        v.sort_unstable();
        v
    }
    /// What a caller does with a location the engine did not take (after
    /// `Error::Gone`, or a move that never started): release it itself.
    fn caller_release_phys(&self, dev: u8, off: u64) {
        self.release_phys(dev, off, 1);
    }
}

impl Host for TestHost {
    fn release_zswap(&self, handle: u64) {
        self.log.zswap.lock().unwrap().push(handle);
    }
    fn release_phys(&self, dev: u8, off: u64, len: u64) {
        self.log
            .phys
            .lock()
            .unwrap()
            .extend((off..off + len).map(|o| (dev, o)));
        if let Some(m) = &self.mark {
            let bits = (off..off + len).fold(0u64, |b, o| b | 1 << (o % 64));
            m.fetch_or(bits, Ordering::Release);
        }
    }
}

type Map = VswapMap<TestProvider, TestHost>;

struct Fixture {
    map: Arc<Map>,
    prov: TestProvider,
    host: TestHost,
}

fn fixture(cluster_shift: u32, slots: u64, cpus: u32, mark: Option<Arc<AtomicU64>>) -> Fixture {
    let prov = TestProvider::default();
    let host = TestHost {
        mark,
        ..TestHost::default()
    };
    let cfg = MapConfig {
        geometry: Geometry::tiny(cluster_shift, slots, cpus),
        ..MapConfig::default()
    };
    let map = Arc::new(VswapMap::new(cfg, prov.clone(), host.clone()).unwrap());
    Fixture { map, prov, host }
}

impl Fixture {
    /// Allocate an order-0 slot on `cpu` with `backend`, `count` and `cached`.
    fn slot(&self, cpu: u32, backend: Backend, count: u32, cached: bool) -> u32 {
        let s = self.map.alloc(0, cpu, Ctx::MaySleep).unwrap();
        self.shape(s, backend, count, cached);
        s
    }

    /// Give a freshly allocated slot (count 0, cached) its backend and count.
    fn shape(&self, s: u32, backend: Backend, count: u32, cached: bool) {
        if backend != Backend::None {
            self.map.store(s, Backend::None, backend).unwrap();
        }
        if count > 0 {
            self.map.dup(s, count, Ctx::MaySleep).unwrap();
        }
        if !cached {
            assert_eq!(
                self.map.cache_clear(s, 0, Ctx::MaySleep).unwrap(),
                Put::Live
            );
        }
    }

    /// The map's accounting matches the provider; after dropping the map every
    /// byte is back. Call once all model threads are joined.
    fn finish(self) {
        let stats = self.map.stats();
        assert_eq!(
            stats.total_bytes(),
            self.prov.bytes(),
            "map memory accounting {stats:?} differs from provider bytes"
        );
        assert_eq!(stats.locked, 0, "a lock bit was left behind");
        drop(self.map);
        assert_eq!(self.prov.bytes(), 0, "provider bytes not returned");
    }
}

fn gone(map: &Map, s: u32) -> bool {
    map.lookup(s) == Err(Error::NotAllocated)
}

// ---------------------------------------------------------------------------
// 1. Two CPUs racing for the last free slots.
// ---------------------------------------------------------------------------

/// One cluster of 4 slots (slot 0 reserved), two of the three others taken:
/// CPU 0 (which caches the cluster) and CPU 1 (which has no cluster, finds no
/// new index and must steal) race for the last slot. Exactly one wins.
#[test]
fn m1a_last_slot_of_one_cluster() {
    model("m1a_last_slot_of_one_cluster", 4, || {
        let fx = fixture(2, 4, 2, None);
        let a = fx.map.alloc(0, 0, Ctx::MaySleep).unwrap();
        let b = fx.map.alloc(0, 0, Ctx::MaySleep).unwrap();
        assert_eq!((a, b), (1, 2));
        let m0 = fx.map.clone();
        let t0 = thread::spawn(move || m0.alloc(0, 0, Ctx::NoSleep));
        let m1 = fx.map.clone();
        let t1 = thread::spawn(move || m1.alloc(0, 1, Ctx::NoSleep));
        let r = [t0.join().unwrap(), t1.join().unwrap()];
        let won: Vec<u32> = r.iter().filter_map(|x| x.ok()).collect();
        assert_eq!(won, vec![3], "results {r:?}");
        assert!(r.contains(&Err(Error::NoSpace)), "results {r:?}");
        let e = fx.map.lookup(3).unwrap();
        assert!(e.cached && e.count == 0 && !e.locked);
        assert_eq!(fx.map.stats().live_slots, 3);
        fx.finish();
    });
}

/// Two clusters of 2 slots (3 usable slots), two CPUs allocating two slots
/// each from empty caches: both refill at once (one gets cluster 0, the other
/// cluster 1), then race for what is left through the per-CPU path, the
/// nonfull list and stealing. No slot is handed out twice.
///
/// `NoSpace` is not exact under races: a CPU that finds no new cluster index
/// and nothing to steal fails even though another CPU's refill is still
/// building a cluster (its slots become visible only when it is live). So the
/// race gives 2 or 3 slots; topping up afterwards must reach exactly the 3
/// usable slots and then `NoSpace` (nothing lost).
#[test]
fn m1b_last_slots_of_two_clusters() {
    model("m1b_last_slots_of_two_clusters", 3, || {
        let fx = fixture(1, 4, 2, None);
        let spawn = |cpu: u32| {
            let m = fx.map.clone();
            thread::spawn(move || [m.alloc(0, cpu, Ctx::NoSleep), m.alloc(0, cpu, Ctx::NoSleep)])
        };
        let (t0, t1) = (spawn(0), spawn(1));
        let mut r = t0.join().unwrap().to_vec();
        r.extend(t1.join().unwrap());
        assert!(
            r.iter().all(|x| matches!(x, Ok(_) | Err(Error::NoSpace))),
            "results {r:?}"
        );
        let mut won: Vec<u32> = r.iter().filter_map(|x| x.ok()).collect();
        won.sort_unstable();
        won.dedup();
        let fails = r.iter().filter(|x| x.is_err()).count();
        assert_eq!(won.len() + fails, 4, "a slot handed out twice: {r:?}");
        assert!(fails == 1 || fails == 2, "results {r:?}");
        while let Ok(s) = fx.map.alloc(0, 0, Ctx::MaySleep) {
            won.push(s);
        }
        won.sort_unstable();
        assert_eq!(won, vec![1, 2, 3], "race results {r:?}");
        assert_eq!(fx.map.stats().live_slots, 3);
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 2. dup racing the last reference drop.
// ---------------------------------------------------------------------------

/// Count 1, not cached, zswap backend: `put` (to zero: frees) against `dup`.
/// Either the dup came first (put leaves the slot live with count 1), or the
/// put freed it (dup: `NotAllocated`); the handle is released exactly once.
#[test]
fn m2a_dup_races_put_to_zero() {
    model("m2a_dup_races_put_to_zero", 4, || {
        let fx = fixture(2, 4, 1, None);
        let s = fx.slot(0, Backend::Zswap(7), 1, false);
        let m = fx.map.clone();
        let tp = thread::spawn(move || m.put(s, 1));
        let m = fx.map.clone();
        let td = thread::spawn(move || m.dup(s, 1, Ctx::NoSleep));
        let (p, d) = (tp.join().unwrap(), td.join().unwrap());
        match (p, d) {
            (Ok(Put::Freed), Err(Error::NotAllocated)) => {
                assert!(gone(&fx.map, s));
            }
            (Ok(Put::Live), Ok(())) => {
                let e = fx.map.lookup(s).unwrap();
                assert_eq!((e.count, e.cached, e.locked), (1, false, false));
                assert_eq!(e.backend, Backend::Zswap(7));
                assert!(fx.host.zswap().is_empty(), "released while live");
                assert_eq!(fx.map.put(s, 1), Ok(Put::Freed));
            }
            other => panic!("inconsistent outcome {other:?}"),
        }
        assert_eq!(fx.host.zswap(), vec![7]);
        fx.finish();
    });
}

/// Count 0, cached, zswap backend: `cache_clear` (frees) against `try_get`
/// (dup + lookup). Either try_get holds a count (the clear leaves the slot
/// live) or gets `NotAllocated`; released exactly once.
#[test]
fn m2b_try_get_races_cache_clear_free() {
    model("m2b_try_get_races_cache_clear_free", 4, || {
        let fx = fixture(2, 4, 1, None);
        let s = fx.slot(0, Backend::Zswap(7), 0, true);
        let m = fx.map.clone();
        let tc = thread::spawn(move || m.cache_clear(s, 0, Ctx::NoSleep));
        let m = fx.map.clone();
        let tg = thread::spawn(move || m.try_get(s, Ctx::NoSleep));
        let (c, g) = (tc.join().unwrap(), tg.join().unwrap());
        match (c, g) {
            (Ok(Put::Freed), Err(Error::NotAllocated)) => assert!(gone(&fx.map, s)),
            (Ok(Put::Live), Ok(e)) => {
                assert_eq!(e.count, 1);
                assert_eq!(e.backend, Backend::Zswap(7));
                let now = fx.map.lookup(s).unwrap();
                assert_eq!((now.count, now.cached), (1, false));
                assert!(fx.host.zswap().is_empty(), "released while live");
                assert_eq!(fx.map.put(s, 1), Ok(Put::Freed));
            }
            other => panic!("inconsistent outcome {other:?}"),
        }
        assert_eq!(fx.host.zswap(), vec![7]);
        fx.finish();
    });
}

/// Count 1 and cached: `put`, `cache_clear` and `dup` all at once. Whichever
/// of put / cache_clear goes last frees the slot unless the dup got in first;
/// never two frees, never a release while a count is held.
#[test]
fn m2c_put_cache_clear_dup_three_way() {
    // Three spawned threads: bound 3 takes ~9 s, bound 4 over a minute.
    model("m2c_put_cache_clear_dup_three_way", 3, || {
        let fx = fixture(2, 4, 1, None);
        let s = fx.slot(0, Backend::Zswap(7), 1, true);
        let m = fx.map.clone();
        let tp = thread::spawn(move || m.put(s, 1));
        let m = fx.map.clone();
        let tc = thread::spawn(move || m.cache_clear(s, 0, Ctx::NoSleep));
        let m = fx.map.clone();
        let td = thread::spawn(move || m.dup(s, 1, Ctx::NoSleep));
        let (p, c, d) = (
            tp.join().unwrap().unwrap(),
            tc.join().unwrap().unwrap(),
            td.join().unwrap(),
        );
        let frees = [p, c].iter().filter(|x| **x == Put::Freed).count();
        match d {
            Ok(()) => {
                assert_eq!(frees, 0);
                let e = fx.map.lookup(s).unwrap();
                assert_eq!((e.count, e.cached), (1, false));
                assert!(fx.host.zswap().is_empty());
                assert_eq!(fx.map.put(s, 1), Ok(Put::Freed));
            }
            Err(Error::NotAllocated) => {
                assert_eq!(frees, 1);
                assert!(gone(&fx.map, s));
            }
            Err(e) => panic!("dup failed with {e:?}"),
        }
        assert_eq!(fx.host.zswap(), vec![7]);
        fx.finish();
    });
}

/// Count 0, cached, with a folio cookie in the cache word: `cache_clear` with
/// a shadow against `dup`. If the dup lands first the slot survives, and the
/// cache word must then hold the shadow, not the old folio cookie (a stale
/// folio pointer read back as a shadow).
#[test]
fn m2d_cache_clear_shadow_races_dup() {
    model("m2d_cache_clear_shadow_races_dup", 4, || {
        let fx = fixture(2, 4, 1, None);
        let s = fx.slot(0, Backend::Zero, 0, true);
        fx.map.cache_store(s, 0x1000, Ctx::MaySleep).unwrap();
        let m = fx.map.clone();
        let tc = thread::spawn(move || m.cache_clear(s, 0x2000, Ctx::NoSleep));
        let m = fx.map.clone();
        let td = thread::spawn(move || m.dup(s, 1, Ctx::NoSleep));
        let (c, d) = (tc.join().unwrap(), td.join().unwrap());
        match (c, d) {
            (Ok(Put::Freed), Err(Error::NotAllocated)) => assert!(gone(&fx.map, s)),
            (Ok(Put::Live), Ok(())) => {
                let cs = fx.map.cache_get(s).unwrap();
                assert!(!cs.cached);
                assert_eq!(cs.word, 0x2000, "shadow lost, folio cookie left behind");
                assert_eq!(fx.map.put(s, 1), Ok(Put::Freed));
            }
            other => panic!("inconsistent outcome {other:?}"),
        }
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 3. zswap writeback racing the last reference drop.
// ---------------------------------------------------------------------------

/// The writer: lock the slot, "write" the zswap object to device slot (1, 5),
/// commit with `writeback`. If the slot is already gone, or the commit finds
/// it died (`Gone`), the writer releases (1, 5) itself. Returns what happened.
fn writeback_thread(m: Arc<Map>, host: TestHost, s: u32) -> Result<(), Error> {
    match m.lock(s) {
        Ok(()) => {}
        Err(e) => {
            host.caller_release_phys(1, 5);
            return Err(e);
        }
    }
    let r = m.writeback(s, 1, 5);
    if r == Err(Error::Gone) {
        host.caller_release_phys(1, 5);
    }
    r
}

fn check_writeback_outcome(fx: &Fixture, s: u32, w: Result<(), Error>, last: Put) {
    match (w, last) {
        // The free came first; the writer never got the lock.
        (Err(Error::NotAllocated), Put::Freed) => {}
        // The free landed while the writer held the lock (a zombie); the
        // commit lost and freed the zombie with its zswap backend.
        (Err(Error::Gone), Put::Live) => {}
        // The move committed; the free then released the device slot.
        (Ok(()), Put::Freed) => {}
        other => panic!("inconsistent outcome {other:?}"),
    }
    assert!(gone(&fx.map, s));
    assert_eq!(fx.host.zswap(), vec![7], "zswap handle released once");
    assert_eq!(fx.host.phys(), vec![(1, 5)], "device slot released once");
}

/// Count 1, not cached, zswap: lock + writeback against the last `put`.
#[test]
fn m3a_writeback_races_last_put() {
    model("m3a_writeback_races_last_put", 4, || {
        let fx = fixture(2, 4, 1, None);
        let s = fx.slot(0, Backend::Zswap(7), 1, false);
        let (m, h) = (fx.map.clone(), fx.host.clone());
        let tw = thread::spawn(move || writeback_thread(m, h, s));
        let m = fx.map.clone();
        let tp = thread::spawn(move || m.put(s, 1));
        let (w, p) = (tw.join().unwrap(), tp.join().unwrap().unwrap());
        check_writeback_outcome(&fx, s, w, p);
        fx.finish();
    });
}

/// Count 0, cached, zswap: lock + writeback against the `cache_clear` that
/// drops the last reference.
#[test]
fn m3b_writeback_races_last_cache_clear() {
    model("m3b_writeback_races_last_cache_clear", 4, || {
        let fx = fixture(2, 4, 1, None);
        let s = fx.slot(0, Backend::Zswap(7), 0, true);
        let (m, h) = (fx.map.clone(), fx.host.clone());
        let tw = thread::spawn(move || writeback_thread(m, h, s));
        let m = fx.map.clone();
        let tc = thread::spawn(move || m.cache_clear(s, 0, Ctx::NoSleep));
        let (w, c) = (tw.join().unwrap(), tc.join().unwrap().unwrap());
        check_writeback_outcome(&fx, s, w, c);
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 4. Relocation by the lock holder racing readers.
// ---------------------------------------------------------------------------

const OLD: Backend = Backend::Phys { dev: 0, off: 10 };
const NEW: Backend = Backend::Phys { dev: 0, off: 20 };

/// The relocator: lock, "copy" (0,10) to (0,20), relocate. `Busy` if a reader
/// holds the lock (then the relocator releases its target itself).
fn relocate_thread(m: Arc<Map>, host: TestHost, s: u32) -> bool {
    match m.lock(s) {
        Ok(()) => {
            m.relocate(s, (0, 10), (0, 20)).unwrap();
            true
        }
        Err(Error::Busy) => {
            host.caller_release_phys(0, 20);
            false
        }
        Err(e) => panic!("lock failed with {e:?}"),
    }
}

fn check_relocate_outcome(fx: &Fixture, s: u32, moved: bool) {
    let e = fx.map.lookup(s).unwrap();
    assert_eq!((e.count, e.cached, e.locked), (1, false, false));
    if moved {
        assert_eq!(e.backend, NEW);
        assert_eq!(fx.host.phys(), vec![(0, 10)]);
    } else {
        assert_eq!(e.backend, OLD);
        assert_eq!(fx.host.phys(), vec![(0, 20)]);
    }
    assert_eq!(fx.map.put(s, 1), Ok(Put::Freed));
    assert_eq!(fx.host.phys(), vec![(0, 10), (0, 20)]);
}

/// Relocation against an unlocked reader (lookup, then try_get + put). The
/// reader first learns (acquire) whether (0,10) was released: if it was, the
/// commit happened before, and its lookup must see (0,20). Every snapshot is
/// one of the two whole states, never a mix.
#[test]
fn m4a_relocate_races_lockless_reader() {
    model("m4a_relocate_races_lockless_reader", 4, || {
        let mark = Arc::new(AtomicU64::new(0));
        let fx = fixture(2, 4, 1, Some(mark.clone()));
        let s = fx.slot(0, OLD, 1, false);
        let (m, h) = (fx.map.clone(), fx.host.clone());
        let tr = thread::spawn(move || relocate_thread(m, h, s));
        let m = fx.map.clone();
        let tl = thread::spawn(move || {
            let released = mark.load(Ordering::Acquire) & (1 << 10) != 0;
            let e = m.lookup(s).unwrap();
            assert_eq!((e.count, e.cached), (1, false));
            assert!(e.backend == OLD || e.backend == NEW, "torn {e:?}");
            if released {
                assert_eq!(e.backend, NEW, "old location released before commit");
                assert!(!e.locked);
            }
            if e.backend == NEW {
                assert!(!e.locked, "new location visible while still locked");
            }
            let g = m.try_get(s, Ctx::NoSleep).unwrap();
            assert_eq!(g.count, 2);
            assert!(g.backend == OLD || g.backend == NEW, "torn {g:?}");
            assert_eq!(m.put(s, 1), Ok(Put::Live));
        });
        let moved = tr.join().unwrap();
        tl.join().unwrap();
        assert!(moved, "nobody else takes the lock here");
        check_relocate_outcome(&fx, s, moved);
        fx.finish();
    });
}

/// Relocation against a reader that starts I/O under the lock: a reader that
/// holds the lock reads a location that is not released (and stays so until
/// it unlocks); the relocator either moves before or gets `Busy`.
#[test]
fn m4b_relocate_races_locked_reader() {
    model("m4b_relocate_races_locked_reader", 4, || {
        let mark = Arc::new(AtomicU64::new(0));
        let fx = fixture(2, 4, 1, Some(mark.clone()));
        let s = fx.slot(0, OLD, 1, false);
        let (m, h) = (fx.map.clone(), fx.host.clone());
        let tr = thread::spawn(move || relocate_thread(m, h, s));
        let m = fx.map.clone();
        let tl = thread::spawn(move || match m.lock(s) {
            Ok(()) => {
                let e = m.lookup(s).unwrap();
                let Backend::Phys { off, .. } = e.backend else {
                    panic!("torn {e:?}")
                };
                assert!(e.backend == OLD || e.backend == NEW, "torn {e:?}");
                assert!(e.locked);
                // "I/O" from `off`: it must not have been released.
                assert_eq!(mark.load(Ordering::Acquire) & (1 << off), 0);
                thread::yield_now();
                assert_eq!(mark.load(Ordering::Acquire) & (1 << off), 0);
                assert_eq!(m.unlock(s), Ok(Put::Live));
                true
            }
            Err(Error::Busy) => false,
            Err(e) => panic!("lock failed with {e:?}"),
        });
        let moved = tr.join().unwrap();
        let read_locked = tl.join().unwrap();
        assert!(moved || read_locked, "somebody must get the lock");
        check_relocate_outcome(&fx, s, moved);
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 5. Lookups racing a cluster teardown and reuse.
// ---------------------------------------------------------------------------

/// Three clusters of 2 slots. Cluster 1 (slots 2, 3) is out of every per-CPU
/// cache and holds one live slot (2: count 1, zswap 2); slot 3 was freed, so it
/// is on the nonfull list. Clusters 0 and 2 are full. Then at once:
/// - A puts slot 2: the cluster empties and is torn down (tables freed);
/// - B does try_get(2) and lookup(2) on it;
/// - C allocates on CPU 2 (empty cache): it takes cluster 1 from the nonfull
///   list (stopping the teardown), or re-makes it from the free stack.
///
/// B sees `NotAllocated` or a valid entry (possibly the new owner's slot: a
/// stale reference is not detectable), never freed memory; every count B
/// took is put back. Afterwards the provider is back to the same bytes.
#[test]
fn m5_lookup_races_teardown_and_reuse() {
    // Bound 2 (~7 s): three spawned threads with the list lock and table
    // frees; bound 3 also passes but takes ~2 minutes.
    model("m5_lookup_races_teardown_and_reuse", 2, || {
        let fx = fixture(1, 6, 3, None);
        let s1 = fx.map.alloc(0, 0, Ctx::MaySleep).unwrap();
        let s2 = fx.map.alloc(0, 1, Ctx::MaySleep).unwrap();
        let s3 = fx.map.alloc(0, 1, Ctx::MaySleep).unwrap();
        let s4 = fx.map.alloc(0, 1, Ctx::MaySleep).unwrap(); // CPU 1 moves to cluster 2
        let s5 = fx.map.alloc(0, 1, Ctx::MaySleep).unwrap();
        assert_eq!([s1, s2, s3, s4, s5], [1, 2, 3, 4, 5]);
        fx.shape(s2, Backend::Zswap(2), 1, false);
        assert_eq!(fx.map.cache_clear(s3, 0, Ctx::MaySleep), Ok(Put::Freed));
        let baseline = fx.prov.bytes();

        let m = fx.map.clone();
        let ta = thread::spawn(move || m.put(2, 1));
        let m = fx.map.clone();
        let tb = thread::spawn(move || {
            let mut held = 0;
            match m.try_get(2, Ctx::NoSleep) {
                Ok(e) => {
                    assert!(e.count >= 1);
                    held += 1;
                }
                Err(Error::NotAllocated) => {}
                Err(e) => panic!("try_get: {e:?}"),
            }
            match m.lookup(2) {
                Ok(e) => assert!(e.count >= 1 || e.cached, "dead entry visible {e:?}"),
                Err(Error::NotAllocated) => {}
                Err(e) => panic!("lookup: {e:?}"),
            }
            if held > 0 {
                m.put(2, 1).unwrap();
            }
        });
        let m = fx.map.clone();
        let tc = thread::spawn(move || m.alloc(0, 2, Ctx::NoSleep));
        let pa = ta.join().unwrap().unwrap();
        tb.join().unwrap();
        let c = tc.join().unwrap().unwrap();
        assert!(c == 2 || c == 3, "allocated {c}");
        // Slot 2's zswap handle went exactly once, whoever dropped the last count.
        assert_eq!(fx.host.zswap(), vec![2]);
        let _ = pa;
        // The new slot is fresh (count 0, cached) and cluster 1 is cached by
        // CPU 2 in every outcome: same tables as before the race.
        let e = fx.map.lookup(c).unwrap();
        assert_eq!((e.count, e.cached, e.backend), (0, true, Backend::None));
        let other = if c == 2 { 3 } else { 2 };
        assert!(gone(&fx.map, other));
        assert_eq!(fx.prov.bytes(), baseline, "provider bytes off baseline");
        fx.finish();
    });
}

/// The teardown of a cluster with optional tables: cluster 1 (slots 2, 3) is
/// out of every cache; slot 3 is free, slot 2 is count 0 and cached with a
/// folio cookie (so the cluster has an extension record and a cache table).
/// A clears the cache flag (frees slot 2, tears the cluster down, freeing the
/// slot table, the record and the cache table) while B reads the slot's cache
/// state. B sees the cookie or `NotAllocated`, never freed memory; every
/// table's bytes go back.
#[test]
fn m5b_cache_get_races_teardown_with_tables() {
    model("m5b_cache_get_races_teardown_with_tables", 4, || {
        let fx = fixture(1, 6, 2, None);
        let s1 = fx.map.alloc(0, 0, Ctx::MaySleep).unwrap();
        let s2 = fx.map.alloc(0, 1, Ctx::MaySleep).unwrap();
        let s3 = fx.map.alloc(0, 1, Ctx::MaySleep).unwrap();
        let s4 = fx.map.alloc(0, 1, Ctx::MaySleep).unwrap(); // CPU 1 moves to cluster 2
        assert_eq!([s1, s2, s3, s4], [1, 2, 3, 4]);
        fx.map.cache_store(2, 0x1000, Ctx::MaySleep).unwrap();
        assert_eq!(fx.map.cache_clear(3, 0, Ctx::MaySleep), Ok(Put::Freed));
        let with_tables = fx.prov.bytes();
        let m = fx.map.clone();
        let ta = thread::spawn(move || m.cache_clear(2, 0, Ctx::NoSleep));
        let m = fx.map.clone();
        let tb = thread::spawn(move || {
            match m.cache_get(2) {
                Ok(c) => assert_eq!((c.cached, c.word), (true, 0x1000)),
                Err(Error::NotAllocated) => {}
                Err(e) => panic!("cache_get: {e:?}"),
            }
            match m.lookup(2) {
                Ok(e) => assert!(e.cached && e.count == 0, "dead entry visible {e:?}"),
                Err(Error::NotAllocated) => {}
                Err(e) => panic!("lookup: {e:?}"),
            }
        });
        assert_eq!(ta.join().unwrap(), Ok(Put::Freed));
        tb.join().unwrap();
        assert!(gone(&fx.map, 2) && gone(&fx.map, 3));
        // B's read-side section may have held the grace period back at the
        // teardown; both threads are done now.
        fx.map.reclaim();
        assert!(
            fx.prov.bytes() < with_tables,
            "cluster 1's tables not freed"
        );
        assert_eq!(fx.map.stats().memory.live_clusters, 2);
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 6. Batch put racing single puts.
// ---------------------------------------------------------------------------

/// Slots 1 and 2 with count 2 (zswap 1 and 2): `put_many(1, 2)` against
/// `put(2)` then `put(1)`. Every count is dropped once: both slots end freed,
/// the frees reported add up to 2, each handle released once.
#[test]
fn m6_put_many_races_put() {
    model("m6_put_many_races_put", 4, || {
        let fx = fixture(2, 4, 1, None);
        let a = fx.slot(0, Backend::Zswap(1), 2, false);
        let b = fx.slot(0, Backend::Zswap(2), 2, false);
        assert_eq!((a, b), (1, 2));
        let m = fx.map.clone();
        let tm = thread::spawn(move || m.put_many(1, 2));
        let m = fx.map.clone();
        let tp = thread::spawn(move || [m.put(2, 1).unwrap(), m.put(1, 1).unwrap()]);
        let freed_many: Result<u32, BatchError> = tm.join().unwrap();
        let single = tp.join().unwrap();
        let freed_single = single.iter().filter(|p| **p == Put::Freed).count() as u32;
        assert_eq!(freed_many.unwrap() + freed_single, 2, "single {single:?}");
        assert!(gone(&fx.map, 1) && gone(&fx.map, 2));
        assert_eq!(fx.host.zswap(), vec![1, 2]);
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 7. Range (mTHP) operations racing order-0 operations inside the range.
// ---------------------------------------------------------------------------

/// An order-1 range (slots 2, 3; count 1 each; zswap 2 and 3).
fn range_fixture(count3: u32) -> (Fixture, u32) {
    let fx = fixture(2, 4, 1, None);
    let s = fx.map.alloc(1, 0, Ctx::MaySleep).unwrap();
    assert_eq!(s, 2);
    fx.shape(2, Backend::Zswap(2), 1, false);
    fx.shape(3, Backend::Zswap(3), count3, false);
    (fx, s)
}

/// `put_range` against `lock(3)` + `unlock(3)`: the range put is all or
/// nothing against its check: `Busy` (both untouched) if slot 3 was locked
/// when checked; otherwise both counts are dropped, and slot 3, if its
/// count went while the other thread held its lock, is freed by that
/// thread's unlock (`Ok(1)`, unlock `Freed`) instead of by the put
/// (`Ok(2)`).
#[test]
fn m7a_put_range_races_lock() {
    model("m7a_put_range_races_lock", 4, || {
        let (fx, s) = range_fixture(1);
        let m = fx.map.clone();
        let tr = thread::spawn(move || m.put_range(s, 1));
        let m = fx.map.clone();
        let tl = thread::spawn(move || {
            let r = m.lock(3);
            let u = r.map(|()| m.unlock(3));
            (r, u)
        });
        let (pr, (l, u)) = (tr.join().unwrap(), tl.join().unwrap());
        match (pr, l, u) {
            (Ok(2), Ok(()), Ok(Ok(Put::Live))) | (Ok(2), Err(Error::NotAllocated), _) => {
                assert!(gone(&fx.map, 2) && gone(&fx.map, 3));
            }
            (Ok(1), Ok(()), Ok(Ok(Put::Freed))) => {
                assert!(gone(&fx.map, 2) && gone(&fx.map, 3));
            }
            (Err(Error::Busy), Ok(()), Ok(Ok(Put::Live))) => {
                for s in [2, 3] {
                    let e = fx.map.lookup(s).unwrap();
                    assert_eq!((e.count, e.cached, e.locked), (1, false, false));
                }
                assert!(fx.host.zswap().is_empty());
                assert_eq!(fx.map.put_range(2, 1), Ok(2));
            }
            other => panic!("put_range not all-or-nothing: {other:?}"),
        }
        assert_eq!(fx.host.zswap(), vec![2, 3]);
        fx.finish();
    });
}

/// `put_range` against `put(3)` on a slot with count 2: no conflict on the
/// lock; both counts of slot 3 are dropped exactly once, whatever the order.
#[test]
fn m7b_put_range_races_put() {
    model("m7b_put_range_races_put", 4, || {
        let (fx, s) = range_fixture(2);
        let m = fx.map.clone();
        let tr = thread::spawn(move || m.put_range(s, 1));
        let m = fx.map.clone();
        let tp = thread::spawn(move || m.put(3, 1));
        let (pr, p) = (tr.join().unwrap(), tp.join().unwrap());
        match (pr, p) {
            (Ok(2), Ok(Put::Live)) | (Ok(1), Ok(Put::Freed)) => {}
            other => panic!("inconsistent outcome {other:?}"),
        }
        assert!(gone(&fx.map, 2) && gone(&fx.map, 3));
        assert_eq!(fx.host.zswap(), vec![2, 3]);
        fx.finish();
    });
}

/// `lock_range` + `put_range`-style commit against `dup(2)`: the dup either
/// lands (slot 2 survives with count 1, `Ok(1)`) or finds the slot freed
/// (`Ok(2)`).
#[test]
fn m7c_put_range_races_dup() {
    model("m7c_put_range_races_dup", 4, || {
        let (fx, s) = range_fixture(1);
        let m = fx.map.clone();
        let tr = thread::spawn(move || m.put_range(s, 1));
        let m = fx.map.clone();
        let td = thread::spawn(move || m.dup(2, 1, Ctx::NoSleep));
        let (pr, d) = (tr.join().unwrap(), td.join().unwrap());
        match (pr, d) {
            (Ok(2), Err(Error::NotAllocated)) => {
                assert!(gone(&fx.map, 2));
                assert_eq!(fx.host.zswap(), vec![2, 3]);
            }
            (Ok(1), Ok(())) => {
                let e = fx.map.lookup(2).unwrap();
                assert_eq!((e.count, e.locked), (1, false));
                assert_eq!(fx.host.zswap(), vec![3]);
                assert_eq!(fx.map.put(2, 1), Ok(Put::Freed));
            }
            other => panic!("inconsistent outcome {other:?}"),
        }
        assert!(gone(&fx.map, 3));
        assert_eq!(fx.host.zswap(), vec![2, 3]);
        fx.finish();
    });
}

/// `lock_range` against `lock(3)`: exactly one side gets slot 3's lock; a
/// failed `lock_range` leaves slot 2 unlocked (nothing half-locked).
#[test]
fn m7d_lock_range_races_lock() {
    model("m7d_lock_range_races_lock", 4, || {
        let (fx, s) = range_fixture(1);
        let m = fx.map.clone();
        let tr = thread::spawn(move || {
            let r = m.lock_range(s, 1);
            let seen2 = m.lookup(2).unwrap().locked;
            assert_eq!(seen2, r.is_ok(), "slot 2 half-locked after {r:?}");
            if r.is_ok() {
                assert_eq!(m.unlock_range(s, 1), Ok(0));
            }
            (r, seen2)
        });
        let m = fx.map.clone();
        let tl = thread::spawn(move || {
            let r = m.lock(3);
            if r.is_ok() {
                assert_eq!(m.unlock(3), Ok(Put::Live));
            }
            r
        });
        let ((rr, _), l) = (tr.join().unwrap(), tl.join().unwrap());
        assert!(rr.is_ok() || l.is_ok(), "range {rr:?}, lock {l:?}");
        if rr.is_err() {
            assert_eq!(rr, Err(Error::Busy));
        }
        if l.is_err() {
            assert_eq!(l, Err(Error::Busy));
        }
        for s in [2, 3] {
            let e = fx.map.lookup(s).unwrap();
            assert_eq!((e.count, e.locked), (1, false));
        }
        assert_eq!(fx.map.put_range(2, 1), Ok(2));
        fx.finish();
    });
}

/// `cache_clear_range` (one pin, one CAS per slot) against `put(3)`: the
/// folio of slots 2 (count 0) and 3 (count 1, the other thread's) leaves
/// the cache with a shadow. Slot 2 is freed by the clear; slot 3 by
/// whichever drops its last reference second: `(Ok(2), Live)` or
/// `(Ok(1), Freed)`, each backend released once. A slot 3 the clear left
/// alive carries the shadow; once uncached it never shows the folio's
/// cookie.
#[test]
fn m7e_cache_clear_range_races_put() {
    model("m7e_cache_clear_range_races_put", 4, || {
        let fx = fixture(2, 4, 1, None);
        let s = fx.map.alloc(1, 0, Ctx::MaySleep).unwrap();
        assert_eq!(s, 2);
        for x in [2, 3] {
            fx.map.cache_store(x, 0xc0, Ctx::MaySleep).unwrap();
            fx.map
                .store(x, Backend::None, Backend::Zswap(u64::from(x)))
                .unwrap();
        }
        fx.map.dup(3, 1, Ctx::MaySleep).unwrap();
        let m = fx.map.clone();
        let tc = thread::spawn(move || m.cache_clear_range(s, 1, 0x5ad, Ctx::MaySleep));
        let m = fx.map.clone();
        let tp = thread::spawn(move || {
            let r = m.put(3, 1);
            // Still alive after our put: the clear has not run on slot 3
            // yet, or left its shadow there.
            let c = m.cache_get(3);
            (r, c)
        });
        let (cr, (p, c)) = (tc.join().unwrap(), tp.join().unwrap());
        match (cr, p) {
            (Ok(2), Ok(Put::Live)) => {}
            (Ok(1), Ok(Put::Freed)) => {
                assert_eq!(c, Err(Error::NotAllocated));
            }
            other => panic!("inconsistent outcome {other:?}"),
        }
        if let Ok(c) = c {
            // The shadow goes in before the flag (as for `cache_clear`): a
            // reader in between sees it still cached; an uncached slot 3
            // never shows the folio's cookie.
            assert!(c.word == 0x5ad || c.word == 0xc0 && c.cached, "{c:?}");
        }
        assert!(gone(&fx.map, 2) && gone(&fx.map, 3));
        assert_eq!(fx.host.zswap(), vec![2, 3]);
        fx.finish();
    });
}

/// `lock_range` against `lock(3)` + the last `put(2)`: when the range lock
/// fails on slot 3 it undoes its lock of slot 2, and if slot 2 died under
/// that lock the undo frees it; otherwise the put or the range's unlock
/// does. Slot 2 is freed exactly once whatever the order; slot 3 is left
/// unlocked with its count.
#[test]
fn m7f_lock_range_undo_frees_dead_slot() {
    model("m7f_lock_range_undo_frees_dead_slot", 3, || {
        let (fx, s) = range_fixture(1);
        let m = fx.map.clone();
        let tr = thread::spawn(move || {
            let r = m.lock_range(s, 1);
            let u = r.map(|()| m.unlock_range(s, 1));
            (r, u)
        });
        let m = fx.map.clone();
        let tl = thread::spawn(move || {
            let l = m.lock(3);
            let p = m.put(2, 1);
            let u = l.map(|()| m.unlock(3));
            (l, p, u)
        });
        let ((rr, ru), (l, p, lu)) = (tr.join().unwrap(), tl.join().unwrap());
        assert!(rr.is_ok() || l.is_ok(), "range {rr:?}, lock {l:?}");
        // NotAllocated: the put freed slot 2 before the range was locked.
        assert!(
            matches!(rr, Ok(()) | Err(Error::Busy | Error::NotAllocated)),
            "{rr:?}"
        );
        if rr == Err(Error::NotAllocated) {
            assert_eq!(p, Ok(Put::Freed));
        }
        assert!(matches!(l, Ok(()) | Err(Error::Busy)), "{l:?}");
        // The put always finds slot 2 live (nobody else drops its count).
        assert!(matches!(p, Ok(Put::Live | Put::Freed)), "{p:?}");
        if let Ok(u) = ru {
            // Freed by the range's unlock iff the put landed under its lock.
            assert_eq!(u, Ok(u32::from(p == Ok(Put::Live))));
        }
        if let Ok(u) = lu {
            assert_eq!(u, Ok(Put::Live));
        }
        assert!(gone(&fx.map, 2));
        let e = fx.map.lookup(3).unwrap();
        assert_eq!((e.count, e.locked), (1, false));
        assert_eq!(fx.host.zswap(), vec![2]);
        assert_eq!(fx.map.put(3, 1), Ok(Put::Freed));
        assert_eq!(fx.host.zswap(), vec![2, 3]);
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 8. Two threads sharing one CPU number.
// ---------------------------------------------------------------------------

/// Three clusters of 2 slots, one CPU number, two threads allocating at once
/// from an empty cache: both refill (one loses and gives its new cluster
/// back), and they race for the cached cluster's one usable slot. Both get a
/// slot, different ones; afterwards, with both freed, the whole capacity
/// (5 slots) can still be allocated: nothing leaked.
#[test]
fn m8_shared_cpu_number_refill() {
    model("m8_shared_cpu_number_refill", 3, || {
        let fx = fixture(1, 6, 1, None);
        let m = fx.map.clone();
        let ta = thread::spawn(move || m.alloc(0, 0, Ctx::NoSleep));
        let m = fx.map.clone();
        let tb = thread::spawn(move || m.alloc(0, 0, Ctx::NoSleep));
        let (a, b) = (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap());
        assert_ne!(a, b);
        assert!((1..6).contains(&a) && (1..6).contains(&b));
        let st = fx.map.stats();
        assert_eq!(st.live_slots, 2);
        assert_eq!(st.total_bytes(), fx.prov.bytes(), "accounting {st:?}");
        for s in [a, b] {
            assert_eq!(fx.map.cache_clear(s, 0, Ctx::MaySleep), Ok(Put::Freed));
        }
        let mut got: Vec<u32> = (0..5)
            .map(|_| fx.map.alloc(0, 0, Ctx::MaySleep).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3, 4, 5]);
        assert_eq!(fx.map.alloc(0, 0, Ctx::MaySleep), Err(Error::NoSpace));
        for s in got {
            assert_eq!(fx.map.cache_clear(s, 0, Ctx::MaySleep), Ok(Put::Freed));
        }
        fx.finish();
    });
}

/// As `m8`, with two allocations per thread (4 of the 5 usable slots): the
/// second allocations race on the shared cursor and refill again when the
/// cached cluster is full (dropping the cache's hold on the full cluster).
#[test]
fn m8b_shared_cpu_number_two_each() {
    // Bound 1 (~2 s): each thread may run two refills; bound 2 also passes
    // but takes about a minute.
    model("m8b_shared_cpu_number_two_each", 1, || {
        let fx = fixture(1, 6, 1, None);
        let spawn = || {
            let m = fx.map.clone();
            thread::spawn(move || {
                [
                    m.alloc(0, 0, Ctx::NoSleep).unwrap(),
                    m.alloc(0, 0, Ctx::NoSleep).unwrap(),
                ]
            })
        };
        let (ta, tb) = (spawn(), spawn());
        let mut got = ta.join().unwrap().to_vec();
        got.extend(tb.join().unwrap());
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 4, "a slot handed out twice: {got:?}");
        assert!(got.iter().all(|s| (1..6).contains(s)));
        let last = fx.map.alloc(0, 0, Ctx::MaySleep).unwrap();
        assert!(!got.contains(&last));
        assert_eq!(fx.map.alloc(0, 0, Ctx::MaySleep), Err(Error::NoSpace));
        got.push(last);
        for s in got {
            assert_eq!(fx.map.cache_clear(s, 0, Ctx::MaySleep), Ok(Put::Freed));
        }
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 9. Counts in the side table.
// ---------------------------------------------------------------------------

/// Count 100 (kept in the side table), not cached: `put(50)` brings it back
/// inline while `lookup` reads it. The snapshot's count is 100 or 50, never a
/// value the slot never had.
#[test]
fn m9_lookup_races_overflow_put() {
    model("m9_lookup_races_overflow_put", 4, || {
        let fx = fixture(2, 4, 1, None);
        let s = fx.slot(0, Backend::Zero, 100, false);
        let m = fx.map.clone();
        let tp = thread::spawn(move || m.put(s, 50));
        let m = fx.map.clone();
        let tl = thread::spawn(move || m.lookup(s).unwrap());
        let (p, e) = (tp.join().unwrap(), tl.join().unwrap());
        assert_eq!(p, Ok(Put::Live));
        assert!(
            e.count == 100 || e.count == 50,
            "lookup saw count {}",
            e.count
        );
        assert_eq!(fx.map.lookup(s).unwrap().count, 50);
        assert_eq!(fx.map.put(s, 50), Ok(Put::Freed));
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 10. Optional per-cluster tables made on demand.
// ---------------------------------------------------------------------------

/// Two threads give two slots of one cluster different memcg ids at once:
/// both may build the cluster's extension record (one loses and frees its
/// copy), then the uniform id is set by one and the other builds the id table
/// (filled with the uniform id). Each slot ends with its own id and the
/// accounting matches the provider.
#[test]
fn m10_memcg_ids_made_on_demand() {
    model("m10_memcg_ids_made_on_demand", 4, || {
        let fx = fixture(2, 4, 1, None);
        let a = fx.slot(0, Backend::Zero, 1, false);
        let b = fx.slot(0, Backend::Zero, 1, false);
        let m = fx.map.clone();
        let ta = thread::spawn(move || m.set_memcg(a, 0, 7, Ctx::NoSleep));
        let m = fx.map.clone();
        let tb = thread::spawn(move || m.set_memcg(b, 0, 9, Ctx::NoSleep));
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
        assert_eq!(fx.map.memcg(a), Ok(Some(7)));
        assert_eq!(fx.map.memcg(b), Ok(Some(9)));
        let st = fx.map.stats();
        assert_eq!(st.total_bytes(), fx.prov.bytes(), "accounting {st:?}");
        assert_eq!(fx.map.put(a, 1), Ok(Put::Freed));
        assert_eq!(fx.map.put(b, 1), Ok(Put::Freed));
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 11. What a free reads, and the cache word, belong to the freeing owner.
// ---------------------------------------------------------------------------

/// Records `slot_freed` (slot, memcg id) for the models of section 11.
#[derive(Clone, Default)]
struct MemcgHost {
    freed: std::sync::Arc<StdMutex<Vec<(u32, Option<u16>)>>>,
}

impl Host for MemcgHost {
    fn release_zswap(&self, _handle: u64) {}
    fn release_phys(&self, _dev: u8, _off: u64, _len: u64) {}
    const WANTS_FREED: bool = true;
    fn slot_freed(&self, slot: u32, _backend: Backend, memcg: Option<u16>) {
        self.freed.lock().unwrap().push((slot, memcg));
    }
}

/// Issue 12 item 2. One cluster of 4 slots, slots 1..=3 taken with memcg ids
/// 10, 11, 12 (an id table). The last put of slot 2 races a thread that
/// allocates (slot 2 is the only slot that can become free) and gives the
/// slot id 99. The free must report id 11, the id of the owner that freed
/// it, never the next owner's.
#[test]
fn m11a_last_put_races_realloc_and_set_memcg() {
    model("m11a_last_put_races_realloc_and_set_memcg", 4, || {
        let prov = TestProvider::default();
        let host = MemcgHost::default();
        let cfg = MapConfig {
            geometry: Geometry::tiny(2, 4, 1),
            ..MapConfig::default()
        };
        let map = Arc::new(VswapMap::new(cfg, prov.clone(), host.clone()).unwrap());
        for (i, id) in [10u16, 11, 12].into_iter().enumerate() {
            let s = map.alloc(0, 0, Ctx::MaySleep).unwrap();
            assert_eq!(s, i as u32 + 1);
            map.set_memcg(s, 0, id, Ctx::MaySleep).unwrap();
            if s == 2 {
                map.dup(s, 1, Ctx::MaySleep).unwrap();
                assert_eq!(map.cache_clear(s, 0, Ctx::MaySleep), Ok(Put::Live));
            }
        }
        let m = map.clone();
        let tp = thread::spawn(move || m.put(2, 1));
        let m = map.clone();
        let ta = thread::spawn(move || match m.alloc(0, 0, Ctx::NoSleep) {
            Ok(s) => {
                assert_eq!(s, 2);
                m.set_memcg(s, 0, 99, Ctx::NoSleep).unwrap();
                true
            }
            Err(e) => {
                assert_eq!(e, Error::NoSpace);
                false
            }
        });
        assert_eq!(tp.join().unwrap(), Ok(Put::Freed));
        let reused = ta.join().unwrap();
        assert_eq!(
            host.freed.lock().unwrap().first(),
            Some(&(2, Some(11))),
            "the free reported another owner's memcg id"
        );
        if reused {
            assert_eq!(map.memcg(2), Ok(Some(99)));
            assert_eq!(map.cache_clear(2, 0, Ctx::MaySleep), Ok(Put::Freed));
        }
        for s in [1, 3] {
            assert_eq!(map.cache_clear(s, 0, Ctx::MaySleep), Ok(Put::Freed));
        }
        let st = map.stats();
        assert_eq!(st.total_bytes(), prov.bytes(), "accounting {st:?}");
        drop(map);
        assert_eq!(prov.bytes(), 0, "provider bytes not returned");
    });
}

/// Issue 12 item 3. A slot with count 1, not cached, zswap backend, in a
/// cluster that already has a cache table: `cache_store` of a shadow races
/// the last `put`. Whatever the order, the slot ends free, its handle is
/// released once, and when it is allocated again its cache word reads 0
/// (the shadow never lands in a free slot or in the next owner's).
#[test]
fn m11b_cache_store_races_last_put() {
    model("m11b_cache_store_races_last_put", 4, || {
        let fx = fixture(2, 4, 1, None);
        let s = fx.slot(0, Backend::Zswap(7), 1, false);
        let b = fx.slot(0, Backend::Zero, 0, true);
        let c = fx.slot(0, Backend::Zero, 0, true);
        fx.map.cache_store(b, 0x1000, Ctx::MaySleep).unwrap(); // the table
        let m = fx.map.clone();
        let ts = thread::spawn(move || m.cache_store(s, 0x77, Ctx::NoSleep));
        let m = fx.map.clone();
        let tp = thread::spawn(move || m.put(s, 1));
        let (st, p) = (ts.join().unwrap(), tp.join().unwrap());
        assert!(
            matches!(
                (st, p),
                (Ok(()), Ok(Put::Freed))
                    | (Ok(()), Ok(Put::Live))
                    | (Err(Error::NotAllocated), Ok(Put::Freed))
            ),
            "outcome {st:?} {p:?}"
        );
        assert!(gone(&fx.map, s), "the slot outlived its last reference");
        assert_eq!(fx.host.zswap(), vec![7]);
        assert_eq!(fx.map.alloc(0, 0, Ctx::MaySleep), Ok(s));
        let cs = fx.map.cache_get(s).unwrap();
        assert_eq!((cs.cached, cs.word), (true, 0), "a stale cache word");
        for x in [s, b, c] {
            assert_eq!(fx.map.cache_clear(x, 0, Ctx::MaySleep), Ok(Put::Freed));
        }
        fx.finish();
    });
}

// ---------------------------------------------------------------------------
// 12. The side table's per-cluster count blocks.
// ---------------------------------------------------------------------------

/// Issue 12 item 9. Slots a (count 62) and b (count 70: attached to the
/// cluster's count block, its only user) of one cluster, neither cached: a
/// `dup` of a (which attaches a, maybe making a block and bucket array
/// without the lock) races the last `put` of b (which detaches b and frees
/// the block if it was the last user). a ends with count 63 in the table,
/// b is freed, and the accounting matches the provider throughout; when a
/// is freed too, every side-table byte goes back.
#[test]
fn m12_side_attach_races_detach() {
    model("m12_side_attach_races_detach", 4, || {
        let fx = fixture(2, 8, 1, None);
        let a = fx.slot(0, Backend::Zero, 62, false);
        let b = fx.slot(0, Backend::Zswap(9), 70, false);
        let m = fx.map.clone();
        let ta = thread::spawn(move || m.dup(a, 1, Ctx::NoSleep));
        let m = fx.map.clone();
        let tb = thread::spawn(move || m.put(b, 70));
        assert_eq!(ta.join().unwrap(), Ok(()));
        assert_eq!(tb.join().unwrap(), Ok(Put::Freed));
        assert!(gone(&fx.map, b));
        assert_eq!(fx.host.zswap(), vec![9]);
        let e = fx.map.lookup(a).unwrap();
        assert_eq!(e.count, 63);
        let st = fx.map.stats();
        assert_eq!(st.overflowed, 1);
        assert_eq!(st.total_bytes(), fx.prov.bytes(), "accounting {st:?}");
        assert_eq!(fx.map.put(a, 63), Ok(Put::Freed));
        assert_eq!(fx.map.stats().side_bytes, 0);
        fx.finish();
    });
}

/// Issue 12 item 18. A same-filled value that fits neither inline form is
/// stored (attaching the slot to the side table, value array made without
/// the lock) while the last `put` of the slot races it. Either the store
/// wins (the free then detaches the slot and gives the table back) or the
/// put frees first (the store finds the slot gone); the zswap handle the
/// store replaced is released once either way, and no side-table byte is
/// left.
#[test]
fn m13_side_same_store_races_last_put() {
    model("m13_side_same_store_races_last_put", 4, || {
        let fx = fixture(2, 4, 1, None);
        let s = fx.slot(0, Backend::Zswap(7), 1, false);
        let v = 0xdead_beef_cafe_f00d;
        let m = fx.map.clone();
        let ts = thread::spawn(move || m.store(s, Backend::Zswap(7), Backend::Same(v)));
        let m = fx.map.clone();
        let tp = thread::spawn(move || m.put(s, 1));
        let (st, p) = (ts.join().unwrap(), tp.join().unwrap());
        assert_eq!(p, Ok(Put::Freed));
        assert!(
            matches!(st, Ok(()) | Err(Error::NotAllocated)),
            "store {st:?}"
        );
        assert!(gone(&fx.map, s));
        assert_eq!(fx.host.zswap(), vec![7]);
        assert_eq!(fx.map.stats().side_bytes, 0);
        fx.finish();
    });
}
