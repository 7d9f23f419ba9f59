//! Multi-threaded stress of the [`Engine`]: threads swap pages out (every
//! writeout class: zero, same-filled, zswap, device), swap them back in and
//! check every byte, while other threads write back zswap pages they do not
//! own (stale slot numbers included: the slot may have died or been reused),
//! evacuate a device to the other device or to memory, and owners free slots
//! that are locked by those movers. Two devices of different priorities,
//! memcg charging of device slots.
//!
//! Checked: every page reads back exactly as written, wherever its backend
//! moved; every zswap object is released exactly once and none survives;
//! both devices end empty; every memcg charge is given back (and none goes
//! negative); the engine's memory returns to the provider on drop.
//!
//! This is also the engine workload that `.ci/sanitizers` runs under
//! ThreadSanitizer and AddressSanitizer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use vswap_core::{
    Backend, ChargePolicy, Ctx, DeviceConfig, Engine, EngineConfig, EngineHost, Error, Geometry,
    MapConfig, Move, PhysDevice, Placement, Put, StdProvider,
};

const PAGE: usize = 64;
const THREADS: u32 = 3;
const DEV_SLOTS: u64 = 256;
const S: Ctx = Ctx::MaySleep;

type Page = [u8; PAGE];

/// The host: a zswap pool, two byte-array devices, swap cache folios (for
/// evacuation to memory) and memcg counters.
struct Host {
    zswap: Mutex<HashMap<u64, Page>>,
    next_handle: AtomicU64,
    zswap_released: AtomicU64,
    /// Device contents; `None` = never written since allocation.
    devs: [Mutex<Vec<Option<Page>>>; 2],
    /// Folios brought in by evacuation to memory, by cookie.
    folios: Mutex<HashMap<u64, Page>>,
    next_cookie: AtomicU64,
    charges: [AtomicI64; THREADS as usize + 1],
    negative: AtomicU64,
    /// Outcomes seen: copies, reads, drops, writeback commits, writebacks
    /// lost to a free (`Gone`), aborts.
    seen: [AtomicU64; 6],
}

const COPY: usize = 0;
const READ: usize = 1;
const DROP: usize = 2;
const COMMIT: usize = 3;
const GONE: usize = 4;
const ABORT: usize = 5;

impl Host {
    fn new() -> Self {
        Self {
            zswap: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            zswap_released: AtomicU64::new(0),
            devs: [
                Mutex::new(vec![None; DEV_SLOTS as usize]),
                Mutex::new(vec![None; DEV_SLOTS as usize]),
            ],
            folios: Mutex::new(HashMap::new()),
            next_cookie: AtomicU64::new(1),
            charges: Default::default(),
            negative: AtomicU64::new(0),
            seen: Default::default(),
        }
    }
    fn saw(&self, what: usize) {
        self.seen[what].fetch_add(1, Ordering::Relaxed);
    }
    fn dev_read(&self, dev: u8, off: u64) -> Option<Page> {
        self.devs[dev as usize].lock().unwrap()[off as usize]
    }
    fn dev_write(&self, dev: u8, off: u64, p: Option<Page>) {
        self.devs[dev as usize].lock().unwrap()[off as usize] = p;
    }
}

impl EngineHost for Host {
    fn release_zswap(&self, h: u64) {
        assert!(
            self.zswap.lock().unwrap().remove(&h).is_some(),
            "zswap handle {h} released twice or never stored"
        );
        self.zswap_released.fetch_add(1, Ordering::Relaxed);
    }
    fn zswap_store(&self, _slot: u32, page: &[u8]) -> Option<u64> {
        // "Compressible" pages start with b'z'.
        (page[0] == b'z').then(|| {
            let h = self.next_handle.fetch_add(1, Ordering::Relaxed);
            self.zswap
                .lock()
                .unwrap()
                .insert(h, page.try_into().unwrap());
            h
        })
    }
    fn charge(&self, id: u16, pages: u32) -> bool {
        self.charges[id as usize].fetch_add(i64::from(pages), Ordering::Relaxed);
        true
    }
    fn uncharge(&self, id: u16, pages: u32) {
        let was = self.charges[id as usize].fetch_sub(i64::from(pages), Ordering::Relaxed);
        if was < i64::from(pages) {
            self.negative.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type Eng<'a> = Engine<&'a StdProvider, Host>;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The content of page `seed`: zero, same-filled, compressible or not,
/// decided by the seed so the reader knows what to expect.
fn content(seed: u64) -> Page {
    let mut p = [0u8; PAGE];
    match seed % 4 {
        0 => {}
        1 => {
            let w = (seed >> 2) & 0xffff_ffff | 1;
            for c in p.chunks_exact_mut(8) {
                c.copy_from_slice(&w.to_ne_bytes());
            }
        }
        k => {
            let mut r = Rng(seed | 1);
            for b in &mut p {
                *b = r.next() as u8;
            }
            // k == 2: compressible (zswap); k == 3: needs a device slot.
            p[0] = if k == 2 { b'z' } else { b'r' };
            p[1] = p[1].wrapping_add(1) | 1; // never one repeated word
        }
    }
    p
}

/// Lock `slot`, waiting out other lock holders (movers).
fn lock(e: &Eng<'_>, slot: u32) {
    loop {
        match e.map().lock(slot) {
            Ok(()) => return,
            Err(Error::Busy) => std::thread::yield_now(),
            Err(err) => panic!("lock of our own slot {slot}: {err:?}"),
        }
    }
}

/// The data of `slot` wherever its backend says (caller holds the lock, or
/// the slot has a folio in the swap cache).
fn read(e: &Eng<'_>, slot: u32) -> Page {
    let entry = e.map().lookup(slot).unwrap();
    match entry.backend {
        Backend::Zero => [0; PAGE],
        Backend::Same(w) => {
            let mut p = [0u8; PAGE];
            for c in p.chunks_exact_mut(8) {
                c.copy_from_slice(&w.to_ne_bytes());
            }
            p
        }
        Backend::Zswap(h) => *e
            .host()
            .zswap
            .lock()
            .unwrap()
            .get(&h)
            .expect("zswap handle"),
        Backend::Phys { dev, off } => e
            .host()
            .dev_read(dev, off)
            .unwrap_or_else(|| panic!("slot {slot}: device {dev}:{off} never written")),
        Backend::None => {
            let c = e.map().cache_get(slot).unwrap();
            assert!(c.cached, "slot {slot}: no backend and no folio");
            *e.host().folios.lock().unwrap().get(&c.word).expect("folio")
        }
    }
}

struct Worker<'a, 'p> {
    e: &'a Eng<'p>,
    t: u32,
    rng: Rng,
    /// Our swapped-out pages: (slot, seed).
    held: Vec<(u32, u64)>,
    /// Zswap slots anyone swapped out (stale entries are part of the test).
    published: &'a Mutex<Vec<u32>>,
    seq: u64,
    checked: u64,
}

impl Worker<'_, '_> {
    fn swap_out(&mut self) {
        let e = self.e;
        let memcg = Some(self.t as u16 + 1);
        let slot = match e.alloc(0, self.t, memcg, S) {
            Ok(s) => s,
            Err(Error::NoSpace) => return,
            Err(err) => panic!("alloc: {err:?}"),
        };
        self.seq += 1;
        let seed = (u64::from(self.t) << 40) | self.seq;
        let page = content(seed);
        e.map().dup(slot, 1, S).unwrap();
        // Like reclaim under the folio lock: write out, then with the slot
        // locked write the data (to wherever the slot is now: an evacuation
        // may already have moved the not-yet-written location) and drop the
        // folio. An evacuation to memory in between left the slot in memory
        // (no backend): write it out again.
        loop {
            match e.writeout(slot, &page, self.t) {
                Ok(Backend::Zswap(_)) => self.published.lock().unwrap().push(slot),
                Ok(_) => {}
                Err(Error::NoSpace) => {
                    // Devices full: keep nothing (the caller would keep the
                    // page resident).
                    e.map().put(slot, 1).unwrap();
                    assert_eq!(e.cache_clear(slot, 0, S).unwrap(), Put::Freed);
                    return;
                }
                // An evacuation holds the lock of our eager device slot.
                Err(Error::Busy) => {
                    std::thread::yield_now();
                    continue;
                }
                Err(err) => panic!("writeout: {err:?}"),
            }
            lock(e, slot);
            match e.map().lookup(slot).unwrap().backend {
                Backend::None => {
                    assert_eq!(e.map().unlock(slot).unwrap(), Put::Live);
                    continue;
                }
                Backend::Phys { dev, off } => e.host().dev_write(dev, off, Some(page)),
                _ => {}
            }
            assert_eq!(e.cache_clear(slot, 0, S).unwrap(), Put::Live);
            assert_eq!(e.map().unlock(slot).unwrap(), Put::Live);
            break;
        }
        self.held.push((slot, seed));
    }

    /// Swap in and free one of our pages, checking its bytes.
    fn swap_in(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let i = self.rng.below(self.held.len() as u64) as usize;
        let (slot, seed) = self.held.swap_remove(i);
        let e = self.e;
        // Read, drop our page-table reference and any folio an evacuation to
        // memory put in the swap cache, all under the slot lock (so no
        // evacuation can add one behind our back): the slot dies locked and
        // our unlock frees it.
        lock(e, slot);
        let got = read(e, slot);
        assert_eq!(
            got,
            content(seed),
            "slot {slot} (seed {seed:#x}) read back wrong"
        );
        self.checked += 1;
        assert_eq!(e.put(slot, 1).unwrap(), Put::Live, "zombie until unlocked");
        let c = e.map().cache_get(slot).unwrap();
        if c.cached {
            e.host()
                .folios
                .lock()
                .unwrap()
                .remove(&c.word)
                .expect("folio");
            assert_eq!(e.cache_clear(slot, 0, S).unwrap(), Put::Live);
        }
        assert_eq!(e.map().unlock(slot).unwrap(), Put::Freed);
    }

    /// Drop one of our pages unread, without the lock (an unmap): a mover
    /// holding the lock finds the slot dead (`Gone`) and frees it; a folio an
    /// evacuation put in the swap cache stays until reclaim (the sweep at the
    /// end).
    fn discard(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let i = self.rng.below(self.held.len() as u64) as usize;
        let (slot, _) = self.held.swap_remove(i);
        self.e.put(slot, 1).unwrap();
    }

    /// Write back some zswap slot, perhaps not ours and perhaps stale.
    fn writeback(&mut self) {
        let e = self.e;
        let slot = {
            let p = self.published.lock().unwrap();
            if p.is_empty() {
                return;
            }
            p[self.rng.below(p.len() as u64) as usize]
        };
        let w = match e.writeback_begin(slot, self.t) {
            Ok(w) => w,
            // Freed, locked by someone, no longer in zswap, devices full.
            Err(
                Error::NotAllocated
                | Error::Busy
                | Error::WrongState
                | Error::NoSpace
                | Error::DiscardPending,
            ) => return,
            Err(err) => panic!("writeback_begin: {err:?}"),
        };
        let data = *e
            .host()
            .zswap
            .lock()
            .unwrap()
            .get(&w.handle)
            .expect("locked zswap handle");
        e.host().dev_write(w.dev, w.off, Some(data));
        std::thread::yield_now(); // the write takes time: let owners run
        if self.rng.below(8) == 0 {
            e.writeback_abort(w).unwrap();
            e.host().saw(ABORT);
            return;
        }
        match e.writeback_commit(w) {
            Ok(()) => e.host().saw(COMMIT),
            Err(Error::Gone) => e.host().saw(GONE),
            Err(err) => panic!("writeback_commit: {err:?}"),
        }
    }

    /// Move everything off one device: to the other one or to memory.
    fn evacuate(&mut self) {
        let e = self.e;
        let from = self.rng.below(2) as u8;
        let to = if self.rng.below(3) == 0 {
            None
        } else {
            Some(1 - from)
        };
        let host = e.host();
        let r = e.evacuate(from, to, self.t, |mv| match mv {
            Move::Copy {
                from_dev,
                from,
                to_dev,
                to,
                ..
            } => {
                let p = host.dev_read(from_dev, from);
                host.dev_write(to_dev, to, p);
                host.saw(COPY);
                Ok(0)
            }
            Move::Read { slot, dev, off } => {
                // Still in the swap cache (its swap-out holds no lock yet):
                // the folio there has the data; the engine keeps it.
                if e.map().cache_get(slot).is_ok_and(|c| c.cached) {
                    return Ok(u64::MAX);
                }
                let p = host
                    .dev_read(dev, off)
                    .unwrap_or_else(|| panic!("evacuating {slot}: {dev}:{off} unwritten"));
                let c = host.next_cookie.fetch_add(1, Ordering::Relaxed);
                host.folios.lock().unwrap().insert(c, p);
                host.saw(READ);
                Ok(c)
            }
            Move::Drop { cookie, .. } => {
                host.saw(DROP);
                if cookie != u64::MAX {
                    host.folios
                        .lock()
                        .unwrap()
                        .remove(&cookie)
                        .expect("dropped folio");
                }
                Ok(0)
            }
        });
        match r.map_err(|s| s.error) {
            Ok(_) | Err(Error::NoSpace | Error::Busy | Error::DiscardPending) => {}
            Err(err) => panic!("evacuate: {err:?}"),
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..45 => self.swap_out(),
            45..80 => self.swap_in(),
            80..85 => self.discard(),
            85..98 => self.writeback(),
            _ => {
                if self.t == 0 {
                    self.evacuate();
                }
            }
        }
        if self.held.len() > 150 {
            self.swap_in();
        }
    }
}

fn iters() -> u32 {
    std::env::var("VSWAP_STRESS_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(miri) { 200 } else { 20_000 })
}

fn device(p: &StdProvider) -> PhysDevice<&StdProvider> {
    PhysDevice::new(
        DeviceConfig {
            geometry: Geometry::tiny(8, DEV_SLOTS, THREADS),
            discard: false,
            rotational: false,
        },
        &[],
        p,
    )
    .unwrap()
}

fn run(placement: Placement) {
    let p = StdProvider::new();
    let cfg = EngineConfig {
        map: MapConfig {
            geometry: Geometry::tiny(8, 8192, THREADS),
            ..MapConfig::default()
        },
        placement,
        charge: ChargePolicy::PhysicalOnly,
        page_size: PAGE as u32,
    };
    let e = Engine::new(cfg, &p, Host::new()).unwrap();
    e.add_device(0, 2, device(&p)).unwrap();
    e.add_device(1, 1, device(&p)).unwrap();
    let published = Mutex::new(Vec::new());
    let n = iters();
    let checked = AtomicU64::new(0);
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let (e, published, checked) = (&e, &published, &checked);
            sc.spawn(move || {
                let mut w = Worker {
                    e,
                    t,
                    rng: Rng(0x9e37_79b9_7f4a_7c15 ^ ((u64::from(t) + 1) * 0x5851_f42d)),
                    held: Vec::new(),
                    published,
                    seq: 0,
                    checked: 0,
                };
                for _ in 0..n {
                    w.step();
                }
                while !w.held.is_empty() {
                    w.swap_in();
                }
                checked.fetch_add(w.checked, Ordering::Relaxed);
            });
        }
    });
    let h = e.host();
    // Reclaim: folios left in the swap cache by evacuations of discarded
    // slots.
    let mut cached = Vec::new();
    e.map().for_each_slot(|s| cached.push(s));
    for s in cached {
        let c = e.map().cache_get(s).unwrap();
        assert!(
            c.cached,
            "slot {s} left without a folio: {:?}",
            e.map().lookup(s)
        );
        h.folios.lock().unwrap().remove(&c.word).expect("folio");
        assert_eq!(e.cache_clear(s, 0, S).unwrap(), Put::Freed);
    }
    let seen = h.seen.each_ref().map(|a| a.load(Ordering::Relaxed));
    println!(
        "{placement:?}: {} pages checked; copies, reads, drops, commits, gone, aborts: {seen:?}",
        checked.load(Ordering::Relaxed)
    );
    assert!(checked.load(Ordering::Relaxed) > 0);
    // (Drops and writebacks lost to a free depend on timing: printed only.)
    for what in [COPY, READ, COMMIT, ABORT] {
        assert!(seen[what] > 0, "outcome {what} never happened: {seen:?}");
    }
    let mut left = Vec::new();
    e.map()
        .for_each_slot(|s| left.push((s, e.map().lookup(s), e.map().cache_get(s))));
    assert_eq!(left, [], "every slot freed");
    assert_eq!(e.map().stats().live_slots, 0, "every slot freed");
    assert!(
        h.zswap.lock().unwrap().is_empty(),
        "every zswap object released"
    );
    assert!(
        h.zswap_released.load(Ordering::Relaxed) > 0,
        "zswap was used"
    );
    assert!(h.folios.lock().unwrap().is_empty(), "every folio dropped");
    for d in 0..2 {
        assert_eq!(e.device(d).unwrap().stats().used, 0, "device {d} empty");
    }
    for (id, c) in h.charges.iter().enumerate() {
        assert_eq!(c.load(Ordering::Relaxed), 0, "memcg {id} charge given back");
    }
    assert_eq!(
        h.negative.load(Ordering::Relaxed),
        0,
        "no charge went negative"
    );
    drop(e);
    assert_eq!(p.bytes_in_use(), 0, "engine drop returns every byte");
}

#[test]
fn deferred_placement() {
    run(Placement::Deferred);
}

#[test]
fn eager_placement() {
    run(Placement::Eager);
}
