#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Multi-threaded stress of `VswapMap`: threads allocate (orders 0..=3), take
//! and drop counts, change cache state, lock and move data (writeback,
//! relocation, including moves that lose to a free), hand slots to each other
//! through a shared queue and free them there. At the end every slot is free,
//! no slot was ever handed out twice while live, every zswap handle and device
//! slot was released exactly once, and the memory is back to what an empty map
//! with warm per-CPU caches holds.

use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};

use vswap_alloc::StdProvider;
use vswap_core::{
    Backend, CacheState, Ctx, Entry, Error, Geometry, Host, MapConfig, MemError, NoHost, Provider,
    Put, VswapMap,
};

/// Host that tracks every resource the test gave the map.
#[derive(Default)]
struct Track {
    zswap: Mutex<HashSet<u64>>,
    phys: Mutex<HashSet<(u8, u64)>>,
    errors: Mutex<Vec<String>>,
    releases: AtomicU64,
}

impl Track {
    fn add_zswap(&self, h: u64) {
        assert!(self.zswap.lock().unwrap().insert(h));
    }
    fn add_phys(&self, dev: u8, off: u64, len: u64) {
        let mut p = self.phys.lock().unwrap();
        for o in off..off + len {
            assert!(p.insert((dev, o)));
        }
    }
    fn error(&self, e: String) {
        self.errors.lock().unwrap().push(e);
    }
}

impl Host for Track {
    fn release_zswap(&self, handle: u64) {
        self.releases.fetch_add(1, Ordering::Relaxed);
        if !self.zswap.lock().unwrap().remove(&handle) {
            self.error(format!("zswap {handle:#x} released but not held"));
        }
    }
    fn release_phys(&self, dev: u8, off: u64, len: u64) {
        self.releases.fetch_add(1, Ordering::Relaxed);
        if len == 0 {
            self.error(format!("empty phys run {dev}:{off}"));
        }
        let mut p = self.phys.lock().unwrap();
        for o in off..off + len {
            if !p.remove(&(dev, o)) {
                self.error(format!("phys {dev}:{o} released but not held"));
            }
        }
    }
}

type Map<'a> = VswapMap<&'a StdProvider, &'a Track>;

/// A slot (or an allocation kept whole) owned by one thread.
#[derive(Clone, Copy, Debug)]
enum Held {
    One {
        slot: u32,
        count: u32,
        cached: bool,
        backend: Backend,
    },
    /// Every slot: count 1, not cached, unlocked, backend `Zero` or device
    /// slots `off..off + 2^order` on `dev`.
    Group {
        start: u32,
        order: u32,
        phys: Option<(u8, u64)>,
    },
}

impl Held {
    /// Check the map agrees with what the owner knows.
    fn check(&self, map: &Map<'_>) {
        match *self {
            Held::One {
                slot,
                count,
                cached,
                backend,
            } => assert_eq!(
                map.lookup(slot),
                Ok(Entry {
                    backend,
                    count,
                    cached,
                    locked: false
                })
            ),
            Held::Group { start, order, phys } => {
                for i in 0..1u32 << order {
                    let backend = match phys {
                        Some((dev, off)) => Backend::Phys {
                            dev,
                            off: off + u64::from(i),
                        },
                        None => Backend::Zero,
                    };
                    assert_eq!(
                        map.lookup(start + i),
                        Ok(Entry {
                            backend,
                            count: 1,
                            cached: false,
                            locked: false
                        })
                    );
                }
            }
        }
    }
}

struct Shared<'a> {
    map: Map<'a>,
    track: &'a Track,
    owned: Vec<AtomicBool>,
    queue: Mutex<Vec<Held>>,
    handles: AtomicU64,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Worker<'s, 'a> {
    sh: &'s Shared<'a>,
    t: u32,
    cpu: u32,
    rng: Rng,
    held: Vec<Held>,
    next_off: u64,
    nospace: u64,
}

impl Worker<'_, '_> {
    fn dev(&self) -> u8 {
        self.t as u8
    }

    fn phys_block(&mut self, n: u64) -> (u8, u64) {
        let off = self.next_off;
        self.next_off += n;
        self.sh.track.add_phys(self.dev(), off, n);
        (self.dev(), off)
    }

    fn claim(&self, slot: u32) {
        assert!(
            !self.sh.owned[slot as usize].swap(true, Ordering::AcqRel),
            "slot {slot} handed out while another owner holds it"
        );
    }

    fn disown(&self, slot: u32) {
        assert!(self.sh.owned[slot as usize].swap(false, Ordering::AcqRel));
    }

    fn entry(&self, slot: u32) -> Entry {
        self.sh.map.lookup(slot).unwrap()
    }

    fn alloc(&mut self) {
        let order = match self.rng.below(8) {
            0..=4 => 0,
            5 => 1,
            6 => 2,
            _ => 3,
        }
        .min(self.sh.map.geometry().cluster_shift);
        let map = &self.sh.map;
        let start = match map.alloc(order, self.cpu, Ctx::MaySleep) {
            Ok(s) => s,
            Err(Error::NoSpace) => {
                self.nospace += 1;
                self.free_some(8);
                return;
            }
            Err(e) => panic!("alloc: {e:?}"),
        };
        let n = 1u32 << order;
        assert!(start != 0 && start % n == 0);
        for i in 0..n {
            self.claim(start + i);
        }
        for i in 0..n {
            let e = self.entry(start + i);
            assert_eq!(
                e,
                Entry {
                    backend: Backend::None,
                    count: 0,
                    cached: true,
                    locked: false
                },
                "fresh slot {}",
                start + i
            );
            assert_eq!(
                map.cache_get(start + i),
                Ok(CacheState {
                    cached: true,
                    word: 0
                }),
                "fresh slot {} has a stale cache word",
                start + i
            );
        }
        if order > 0 && self.rng.below(2) == 0 {
            // Keep it whole: one count per slot, contiguous device slots.
            let phys = (self.rng.below(2) == 0).then(|| self.phys_block(u64::from(n)));
            for i in 0..n {
                let s = start + i;
                map.dup(s, 1, Ctx::MaySleep).unwrap();
                let b = match phys {
                    Some((dev, off)) => Backend::Phys {
                        dev,
                        off: off + u64::from(i),
                    },
                    None => Backend::Zero,
                };
                map.store(s, Backend::None, b).unwrap();
                map.cache_store(s, 0xc0de, Ctx::MaySleep).unwrap();
                assert_eq!(map.cache_clear(s, 0x5ad, Ctx::MaySleep), Ok(Put::Live));
            }
            self.held.push(Held::Group { start, order, phys });
        } else {
            for i in 0..n {
                let slot = start + i;
                let mut h = Held::One {
                    slot,
                    count: 0,
                    cached: true,
                    backend: Backend::None,
                };
                if self.rng.below(3) != 0 {
                    self.writeout(&mut h);
                }
                self.held.push(h);
            }
        }
    }

    /// Give a fresh slot a count and a backend.
    fn writeout(&mut self, h: &mut Held) {
        let Held::One {
            slot,
            count,
            backend,
            ..
        } = h
        else {
            return;
        };
        let map = &self.sh.map;
        map.dup(*slot, 1, Ctx::MaySleep).unwrap();
        *count += 1;
        let b = match self.rng.below(5) {
            0 => Backend::Zero,
            1 => Backend::Same(u64::MAX),
            2 | 3 => {
                let h = self.sh.handles.fetch_add(1, Ordering::Relaxed);
                self.sh.track.add_zswap(h);
                Backend::Zswap(h)
            }
            _ => {
                let (dev, off) = self.phys_block(1);
                Backend::Phys { dev, off }
            }
        };
        map.store(*slot, *backend, b).unwrap();
        *backend = b;
    }

    fn pick(&mut self) -> Option<usize> {
        (!self.held.is_empty()).then(|| self.rng.below(self.held.len() as u64) as usize)
    }

    /// Free a held item through the API; the last step must free it.
    fn free(&mut self, h: Held) {
        let map = &self.sh.map;
        h.check(map);
        match h {
            Held::One {
                slot,
                count,
                cached,
                ..
            } => {
                self.disown(slot);
                if cached {
                    if count > 0 {
                        assert_eq!(map.cache_clear(slot, 7, Ctx::MaySleep), Ok(Put::Live));
                        assert_eq!(map.put(slot, count), Ok(Put::Freed));
                    } else {
                        assert_eq!(map.cache_clear(slot, 7, Ctx::MaySleep), Ok(Put::Freed));
                    }
                } else {
                    assert_eq!(map.put(slot, count), Ok(Put::Freed));
                }
            }
            Held::Group { start, order, .. } => {
                let n = 1u32 << order;
                for i in 0..n {
                    self.disown(start + i);
                }
                if self.rng.below(2) == 0 {
                    assert_eq!(map.put_range(start, order), Ok(n));
                } else {
                    assert_eq!(map.put_many(start, n), Ok(n));
                }
            }
        }
    }

    fn free_some(&mut self, k: usize) {
        for _ in 0..k {
            let Some(i) = self.pick() else { return };
            let h = self.held.swap_remove(i);
            self.free(h);
        }
    }

    /// Lock a slot and move its data; sometimes its last reference goes
    /// while it is locked, and the move must lose with `Gone`.
    fn lock_and_move(&mut self, i: usize) {
        let Held::One {
            slot,
            count,
            cached,
            backend,
        } = self.held[i]
        else {
            return;
        };
        let map = &self.sh.map;
        map.lock(slot).unwrap();
        assert_eq!(map.lock(slot), Err(Error::Busy));
        assert_eq!(map.store(slot, backend, Backend::Zero), Err(Error::Busy));
        let kill = self.rng.below(4) == 0;
        if kill {
            // The last references go while we hold the lock: a zombie.
            self.held.swap_remove(i);
            self.disown(slot);
            if cached {
                assert_eq!(map.cache_clear(slot, 3, Ctx::MaySleep), Ok(Put::Live));
            }
            if count > 0 {
                assert_eq!(map.put(slot, count), Ok(Put::Live));
            }
        }
        let new = match backend {
            Backend::Zswap(_) | Backend::Phys { .. } => {
                let (dev, off) = self.phys_block(1);
                Some((dev, off))
            }
            _ => None,
        };
        let r = match (backend, new) {
            (Backend::Zswap(_), Some((dev, off))) => map.writeback(slot, dev, off),
            (Backend::Phys { dev, off }, Some(to)) => map.relocate(slot, (dev, off), to),
            _ => match map.unlock(slot) {
                Ok(Put::Freed) if kill => Ok(()),
                Ok(Put::Live) if !kill => Ok(()),
                other => panic!("unlock of {slot} (kill {kill}): {other:?}"),
            },
        };
        if kill {
            if let Some((dev, off)) = new {
                assert_eq!(r, Err(Error::Gone), "move of a zombie");
                // Not committed: the caller gives the prepared slot back.
                self.sh.track.release_phys(dev, off, 1);
            }
            return;
        }
        r.unwrap();
        if let (Some((dev, off)), Held::One { backend, .. }) = (new, &mut self.held[i]) {
            *backend = Backend::Phys { dev, off };
        }
    }

    fn step(&mut self) {
        let map = &self.sh.map;
        let r = self.rng.below(100);
        match r {
            0..=29 => self.alloc(),
            30..=44 => self.free_some(1),
            45..=52 => {
                // dup / put / try_get, sometimes past the inline count.
                let Some(i) = self.pick() else { return };
                if let Held::One { slot, count, .. } = &mut self.held[i] {
                    let k = if self.rng.below(8) == 0 { 70 } else { 1 };
                    match self.rng.below(3) {
                        0 => {
                            map.dup(*slot, k, Ctx::MaySleep).unwrap();
                            *count += k;
                        }
                        1 if *count > k => {
                            assert_eq!(map.put(*slot, k), Ok(Put::Live));
                            *count -= k;
                        }
                        _ => {
                            let e = map.try_get(*slot, Ctx::MaySleep).unwrap();
                            *count += 1;
                            assert_eq!(e.count, *count);
                        }
                    }
                    assert_eq!(map.lookup(*slot).unwrap().count, *count);
                }
            }
            53..=62 => {
                // Swap cache in / out.
                let Some(i) = self.pick() else { return };
                if let Held::One {
                    slot,
                    count,
                    cached,
                    ..
                } = &mut self.held[i]
                {
                    if *cached && *count > 0 {
                        let shadow = u64::from(*slot) << 1;
                        assert_eq!(map.cache_clear(*slot, shadow, Ctx::MaySleep), Ok(Put::Live));
                        assert_eq!(
                            map.cache_get(*slot),
                            Ok(CacheState {
                                cached: false,
                                word: shadow
                            })
                        );
                        *cached = false;
                    } else if !*cached {
                        let cookie = 0xf000_0000 | u64::from(*slot);
                        map.cache_add(*slot, cookie, Ctx::MaySleep).unwrap();
                        assert_eq!(
                            map.cache_get(*slot),
                            Ok(CacheState {
                                cached: true,
                                word: cookie
                            })
                        );
                        *cached = true;
                    }
                }
            }
            63..=72 => {
                let Some(i) = self.pick() else { return };
                self.lock_and_move(i);
            }
            73..=77 => {
                let Some(i) = self.pick() else { return };
                if let Held::One { slot, .. } = self.held[i] {
                    let id = self.t as u16 + 1;
                    map.set_memcg(slot, 0, id, Ctx::MaySleep).unwrap();
                    assert_eq!(map.memcg(slot), Ok(Some(id)));
                }
            }
            78..=84 => {
                // Hand something to another thread.
                if let Some(i) = self.pick() {
                    let h = self.held.swap_remove(i);
                    self.sh.queue.lock().unwrap().push(h);
                }
            }
            85..=91 => {
                // Take something another thread handed over.
                let h = self.sh.queue.lock().unwrap().pop();
                if let Some(h) = h {
                    h.check(map);
                    if self.rng.below(2) == 0 {
                        self.free(h);
                    } else {
                        self.held.push(h);
                    }
                }
            }
            92..=98 => {
                // Read-only probes of slots we do not own (racing frees and
                // cluster teardown): must answer, never crash.
                let slots = map.geometry().slots();
                for _ in 0..4 {
                    let s = self.rng.below(slots + 8) as u32;
                    match map.lookup(s) {
                        Ok(_) | Err(Error::NotAllocated) | Err(Error::OutOfRange) => {}
                        Err(e) => panic!("lookup({s}): {e:?}"),
                    }
                    let _ = map.cache_get(s);
                    let _ = map.memcg(s);
                }
            }
            _ => {
                let st = map.stats();
                assert!(st.live_slots <= map.geometry().slots());
            }
        }
        if self.held.len() > 96 {
            self.free_some(48);
        }
    }
}

fn stress(geo: Geometry, threads: u32, shared_cpu: bool, iters: u32) {
    let p = StdProvider::new();
    let track = Track::default();
    let map = VswapMap::new(
        MapConfig {
            geometry: geo,
            ..MapConfig::default()
        },
        &p,
        &track,
    )
    .unwrap();
    let baseline = p.bytes_in_use();
    let base_stats = map.stats();
    assert_eq!(baseline, base_stats.total_bytes());
    let slots = map.geometry().slots() as usize;
    let sh = Shared {
        map,
        track: &track,
        owned: (0..slots).map(|_| AtomicBool::new(false)).collect(),
        queue: Mutex::new(Vec::new()),
        handles: AtomicU64::new(1),
    };
    let nospace = AtomicU64::new(0);
    std::thread::scope(|sc| {
        for t in 0..threads {
            let sh = &sh;
            let nospace = &nospace;
            sc.spawn(move || {
                let mut w = Worker {
                    sh,
                    t,
                    cpu: if shared_cpu { 0 } else { t },
                    rng: Rng(0x9e37_79b9_7f4a_7c15 ^ ((u64::from(t) + 1) * 0x1234_5677)),
                    held: Vec::new(),
                    next_off: 0,
                    nospace: 0,
                };
                for _ in 0..iters {
                    w.step();
                }
                let n = w.held.len();
                w.free_some(n);
                nospace.fetch_add(w.nospace, Ordering::Relaxed);
            });
        }
    });
    // Items still in the queue: free them here.
    let mut w = Worker {
        sh: &sh,
        t: threads,
        cpu: 0,
        rng: Rng(7),
        held: std::mem::take(&mut *sh.queue.lock().unwrap()),
        next_off: 0,
        nospace: 0,
    };
    let n = w.held.len();
    w.free_some(n);
    drop(w);

    let errors = track.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "host errors: {errors:?}");
    assert!(sh.owned.iter().all(|o| !o.load(Ordering::Relaxed)));
    // Torn-down clusters' tables come back once their grace period ends
    // (every worker has left its sections by now).
    let t = std::time::Instant::now();
    while {
        sh.map.reclaim();
        sh.map.stats().memory.retiring_clusters != 0
    } {
        assert!(t.elapsed().as_secs() < 10, "grace periods never ended");
        std::thread::yield_now();
    }
    let st = sh.map.stats();
    assert_eq!(st.live_slots, 0, "{st:?}");
    assert_eq!(st.side_bytes, 0);
    assert!(
        track.zswap.lock().unwrap().is_empty(),
        "zswap handles never released"
    );
    assert!(
        track.phys.lock().unwrap().is_empty(),
        "device slots never released"
    );
    // Memory: the accounting agrees with the provider, and what is left over
    // the empty map is directory pages (kept for the map's life) and clusters
    // held by per-CPU caches (one per CPU number and order at most) and cluster
    // 0 (slot 0 is reserved for ever).
    let cpus = if shared_cpu { 1 } else { u64::from(threads) };
    let csize = u64::from(geo.cluster_slots());
    let mem = st.memory;
    assert_eq!(
        p.bytes_in_use(),
        st.total_bytes(),
        "provider vs stats: {st:?}"
    );
    assert_eq!(mem.words, mem.live_clusters * csize * 8, "{mem:?}");
    assert!(mem.live_clusters <= cpus * 4 + 1, "{mem:?}");
    let kept = (mem.directory - base_stats.memory.directory) + mem.words + mem.cache + mem.memcg;
    assert_eq!(p.bytes_in_use(), baseline + kept);
    println!(
        "{threads} threads (shared cpu: {shared_cpu}), {iters} steps each: {} releases, {} NoSpace; \
         left over the empty map: {} B ({} live clusters, {} B directory)",
        track.releases.load(Ordering::Relaxed),
        nospace.load(Ordering::Relaxed),
        kept,
        mem.live_clusters,
        mem.directory - base_stats.memory.directory,
    );
    drop(sh);
    assert_eq!(p.bytes_in_use(), 0, "map drop returns every byte");
}

/// Steps per thread; `VSWAP_STRESS_ITERS` overrides it for a soak run.
fn iters() -> u32 {
    std::env::var("VSWAP_STRESS_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(miri) { 60 } else { 100_000 })
}

#[test]
fn threads_on_their_own_cpus() {
    stress(Geometry::tiny(3, 4096, 4), 4, false, iters());
}

#[test]
fn threads_share_cpu_zero() {
    stress(Geometry::tiny(2, 4096, 1), 4, true, iters());
}

#[test]
fn small_space_runs_full() {
    stress(Geometry::tiny(3, 320, 3), 3, false, iters());
}

#[test]
fn two_threads_default_clusters() {
    let geo = Geometry {
        cpus: 2,
        slots: if cfg!(miri) { 1 << 12 } else { 1 << 20 },
        ..Geometry::default()
    };
    stress(geo, 2, false, iters());
}

/// A provider that stops the first allocation of `size` bytes once armed,
/// until the test lets it go: it holds a refill in the window where the list
/// lock is dropped.
struct Gate {
    inner: StdProvider,
    size: usize,
    armed: AtomicBool,
    entered: Barrier,
    go: Barrier,
}

// SAFETY: every block comes from (and goes back to) `StdProvider`, which
// upholds the contract; the gate only delays the call.
unsafe impl Provider for Gate {
    fn alloc_zeroed(&self, size: usize, align: usize, ctx: Ctx) -> Result<NonNull<u8>, MemError> {
        if size == self.size && self.armed.swap(false, Ordering::SeqCst) {
            self.entered.wait();
            self.go.wait();
        }
        self.inner.alloc_zeroed(size, align, ctx)
    }
    unsafe fn free(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.free(ptr, size, align) }
    }
    fn read_lock(&self) {
        self.inner.read_lock();
    }
    unsafe fn read_unlock(&self) {
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

/// Two threads on one CPU number refill at once: the one that loses gives
/// its new cluster back, and the memory accounting stays exact (it used to
/// take the slot table's bytes off twice).
#[test]
fn refill_race_on_a_shared_cpu_keeps_exact_accounting() {
    let shift = 4;
    let csize = 1u32 << shift;
    let gate = Gate {
        inner: StdProvider::new(),
        size: csize as usize * 8,
        armed: AtomicBool::new(false),
        entered: Barrier::new(2),
        go: Barrier::new(2),
    };
    let map = VswapMap::new(
        MapConfig {
            geometry: Geometry::tiny(shift, 256, 1),
            ..MapConfig::default()
        },
        &gate,
        NoHost,
    )
    .unwrap();
    // Fill cluster 0 (slot 0 is reserved): the next allocation refills.
    let mut got: Vec<u32> = (1..csize)
        .map(|_| map.alloc(0, 0, Ctx::MaySleep).unwrap())
        .collect();
    assert!(got.iter().all(|&s| s < csize));
    gate.armed.store(true, Ordering::SeqCst);
    std::thread::scope(|sc| {
        let a = sc.spawn(|| map.alloc(0, 0, Ctx::MaySleep).unwrap());
        gate.entered.wait(); // `a` is in its refill, lock dropped
        got.push(map.alloc(0, 0, Ctx::MaySleep).unwrap()); // refills too, and wins
        gate.go.wait();
        got.push(a.join().unwrap()); // loses, gives its cluster back
    });
    let set: HashSet<u32> = got.iter().copied().collect();
    assert_eq!(set.len(), got.len(), "a slot handed out twice: {got:?}");
    let st = map.stats();
    assert_eq!(st.live_slots, u64::from(csize) + 1);
    assert_eq!(gate.inner.bytes_in_use(), st.total_bytes(), "{st:?}");
    assert_eq!(
        st.memory.words,
        (st.memory.live_clusters + st.memory.retiring_clusters) * u64::from(csize) * 8
    );
    for s in got {
        assert_eq!(map.cache_clear(s, 0, Ctx::MaySleep), Ok(Put::Freed));
    }
    let st = map.stats();
    assert_eq!(gate.inner.bytes_in_use(), st.total_bytes(), "{st:?}");
    drop(map);
    assert_eq!(gate.inner.bytes_in_use(), 0);
}
