//! The engine over the flash log device: staged writeout, zswap writeback
//! keeping the virtual slot, whole-segment flushes committed to descriptors,
//! overwrites and frees invalidating, GC relocating under the slot lock. The
//! device is a byte array; after every GC pass and at the end every live page
//! is read back byte for byte, and memcg charges (physical slots only) go back
//! to zero.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::HashMap;
use std::sync::Mutex;

use vswap_core::{
    Backend, ChargePolicy, Ctx, EngineConfig, EngineHost, Error, Geometry, MapConfig, Put,
    StdProvider, Stream,
};
use vswap_core::{Engine, Flush, GcPolicy, LogConfig, LogDevice};

const PAGE: usize = 64;
const LOG: u8 = 5;
const MEMCG: u16 = 7;

#[derive(Default)]
struct Host {
    zswap: Mutex<HashMap<u64, Vec<u8>>>,
    next: Mutex<u64>,
    /// Pages charged to `MEMCG` now.
    charged: Mutex<i64>,
}

impl EngineHost for Host {
    fn release_zswap(&self, h: u64) {
        // Panics on a second release of one handle.
        self.zswap.lock().unwrap().remove(&h).unwrap();
    }
    fn charge(&self, id: u16, pages: u32) -> bool {
        assert_eq!(id, MEMCG);
        *self.charged.lock().unwrap() += i64::from(pages);
        true
    }
    fn uncharge(&self, id: u16, pages: u32) {
        assert_eq!(id, MEMCG);
        let mut c = self.charged.lock().unwrap();
        *c -= i64::from(pages);
        assert!(*c >= 0, "uncharged more than charged");
    }
    fn zswap_store(&self, _slot: u32, page: &[u8]) -> Option<u64> {
        (page[0] == b'z').then(|| {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            self.zswap.lock().unwrap().insert(*n, page.to_vec());
            *n
        })
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Sim<'a> {
    e: Engine<&'a StdProvider, Host>,
    disk: Vec<u8>,
    live: HashMap<u32, Vec<u8>>,
    staged: Vec<u32>,
    /// Staged (or flushed, not committed) log writebacks; freed ones too.
    wb: Vec<u32>,
}

impl Sim<'_> {
    fn read(&self, off: u64) -> &[u8] {
        &self.disk[off as usize * PAGE..][..PAGE]
    }

    fn charged(&self) -> i64 {
        *self.e.host().charged.lock().unwrap()
    }

    fn flush(&mut self, mode: Flush) {
        let Some(f) = self.e.log_flush(mode).unwrap() else {
            return;
        };
        let log = self.e.log_device().unwrap();
        let mut expect = 0;
        let mut lost = Vec::new();
        for (owner, off) in log.live(f.segment()).unwrap() {
            let en = self.e.map().lookup(owner).unwrap();
            // A staged writeback is written from its zswap object (even if the
            // slot died meanwhile); a staged writeout from its folio.
            let data = match en.backend {
                Backend::Zswap(h) => {
                    assert!(en.locked && self.wb.contains(&owner));
                    let d = self.e.host().zswap.lock().unwrap()[&h].clone();
                    if let Some(l) = self.live.get(&owner) {
                        assert_eq!(l, &d);
                    }
                    d
                }
                Backend::None => {
                    assert!(!en.locked && en.cached && self.staged.contains(&owner));
                    self.live[&owner].clone()
                }
                b => panic!("staged owner {owner} has {b:?}"),
            };
            if self.live.contains_key(&owner) {
                expect += 1;
            } else {
                lost.push((owner, off));
            }
            self.disk[off as usize * PAGE..][..PAGE].copy_from_slice(&data);
        }
        let n = self.e.log_commit(&f).unwrap();
        assert_eq!(n, expect, "every live staged owner committed");
        for (owner, off) in lost {
            // Freed while staged: the commit lost (Gone), freed the zombie
            // and invalidated its offset.
            assert_eq!(log.owner(off).unwrap(), None);
            assert!(self.e.map().lookup(owner).is_err());
            self.wb.retain(|s| *s != owner);
        }
        // Written: the folios leave the swap cache; the writebacks are
        // unlocked on their new offsets.
        let segment = f.segment();
        for s in std::mem::take(&mut self.staged) {
            let en = self.e.map().lookup(s).unwrap();
            assert!(matches!(en.backend, Backend::Phys { dev: LOG, .. }));
            assert_eq!(
                self.e.map().cache_clear(s, 0, Ctx::NoSleep).unwrap(),
                Put::Live
            );
        }
        for s in std::mem::take(&mut self.wb) {
            let en = self.e.map().lookup(s).unwrap();
            assert!(!en.locked, "slot {s} still locked");
            let Backend::Phys { dev: LOG, off } = en.backend else {
                panic!("slot {s}: {:?}", en.backend);
            };
            assert_eq!(off >> 3, u64::from(segment));
        }
    }

    /// A zswap page to the log, keeping its slot. False if it is not in zswap.
    fn writeback(&mut self, s: u32) -> bool {
        loop {
            match self.e.log_writeback_begin(s) {
                Ok(()) => {
                    self.wb.push(s);
                    let en = self.e.map().lookup(s).unwrap();
                    assert!(en.locked && matches!(en.backend, Backend::Zswap(_)));
                    return true;
                }
                Err(Error::Busy) if self.e.map().lookup(s).unwrap().locked => return false,
                Err(Error::Busy) => self.flush(Flush::Full),
                Err(Error::WrongState) => {
                    assert!(!self.e.map().lookup(s).unwrap().locked);
                    return false;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    fn write(&mut self, data: Vec<u8>) {
        let s = self.e.alloc(0, 0, Some(MEMCG), Ctx::NoSleep).unwrap();
        self.e.map().dup(s, 1, Ctx::NoSleep).unwrap();
        self.live.insert(s, data.clone());
        loop {
            match self.e.log_writeout(s, &data) {
                Ok(Some(_)) => {
                    self.e.map().cache_clear(s, 0, Ctx::NoSleep).unwrap();
                    return;
                }
                Ok(None) => {
                    self.staged.push(s);
                    return;
                }
                Err(Error::Busy) => self.flush(Flush::Full),
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    fn gc(&mut self) {
        let disk = &mut self.disk;
        self.e
            .log_gc(|_, from, to| {
                let page = disk[from as usize * PAGE..][..PAGE].to_vec();
                disk[to as usize * PAGE..][..PAGE].copy_from_slice(&page);
            })
            .unwrap();
        self.check();
    }

    fn check(&self) {
        let zswap = self.e.host().zswap.lock().unwrap();
        for (s, data) in &self.live {
            let en = self.e.map().lookup(*s).unwrap();
            match en.backend {
                Backend::Zero => assert!(data.iter().all(|b| *b == 0)),
                Backend::Same(v) => assert_eq!(&v.to_ne_bytes().repeat(PAGE / 8), data),
                Backend::Zswap(h) => {
                    assert_eq!(&zswap[&h], data);
                    assert_eq!(en.locked, self.wb.contains(s));
                }
                Backend::Phys { dev, off } => {
                    assert_eq!(dev, LOG);
                    assert_eq!(self.read(off), &data[..], "slot {s} at {off}");
                    assert_eq!(self.e.log_device().unwrap().owner(off).unwrap(), Some(*s));
                }
                Backend::None => assert!(self.staged.contains(s), "slot {s} has no backend"),
            }
        }
    }
}

fn engine(p: &StdProvider, policy: GcPolicy) -> Sim<'_> {
    let mut lc = LogConfig::new(32, 3);
    lc.page_size = PAGE as u32;
    lc.policy = policy;
    let log = LogDevice::new(lc, p).unwrap();
    let cfg = EngineConfig {
        map: MapConfig {
            geometry: Geometry::tiny(4, 1024, 2),
            ..MapConfig::default()
        },
        charge: ChargePolicy::PhysicalOnly,
        page_size: PAGE as u32,
        ..Default::default()
    };
    let e = Engine::with_log(cfg, p, Host::default(), LOG, log).unwrap();
    Sim {
        e,
        disk: vec![0; 32 * 8 * PAGE],
        live: HashMap::new(),
        staged: Vec::new(),
        wb: Vec::new(),
    }
}

/// A page zswap takes (first byte `z`), distinct per `n`.
fn zpage(n: u64) -> Vec<u8> {
    (0..PAGE)
        .map(|j| {
            if j == 0 {
                b'z'
            } else {
                (n * 7 + j as u64) as u8
            }
        })
        .collect()
}

/// A page that needs a device slot.
fn rpage(n: u64) -> Vec<u8> {
    (0..PAGE).map(|j| (n * 31 + j as u64) as u8 | 1).collect()
}

/// A live slot in zswap holding `zpage(n)`.
fn zswapped(sim: &mut Sim<'_>, n: u64) -> (u32, u64) {
    sim.write(zpage(n));
    let s = *sim.live.iter().find(|(_, d)| **d == zpage(n)).unwrap().0;
    let Backend::Zswap(h) = sim.e.map().lookup(s).unwrap().backend else {
        panic!("not in zswap");
    };
    (s, h)
}

fn random_run(policy: GcPolicy, writebacks: bool) {
    let p = StdProvider::new();
    let mut sim = engine(&p, policy);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let target = 150; // of 32 * 8 = 256 device slots, 2 segments reserved
    let (mut wbs, mut wb_freed) = (0, 0);
    for step in 0..4000u64 {
        let kind = rng.below(10);
        let data: Vec<u8> = match kind {
            0 => vec![0; PAGE],
            1 | 2 if writebacks => zpage(step),
            1 => zpage(step),
            _ => rpage(step),
        };
        if sim.live.len() >= target || (rng.below(3) == 0 && !sim.live.is_empty()) {
            // Overwrite: free a random live page that is not a staged
            // writeout (its folio is under writeback).
            let keys: Vec<u32> = sim
                .live
                .keys()
                .copied()
                .filter(|s| !sim.staged.contains(s))
                .collect();
            if let Some(&s) = keys.get(rng.below(keys.len().max(1) as u64) as usize) {
                if sim.e.put(s, 1).unwrap() == Put::Live {
                    // Locked by GC (staged for relocation) or by a staged
                    // writeback: a zombie the commit frees (and loses
                    // gracefully with Gone).
                    let en = sim.e.map().lookup(s).unwrap();
                    assert!(en.locked && en.count == 0 && !en.cached);
                    if sim.wb.contains(&s) {
                        wb_freed += 1;
                    }
                }
                sim.live.remove(&s);
            }
        }
        sim.write(data);
        if writebacks && rng.below(2) == 0 {
            // Write back a random zswap page to the log.
            let z: Vec<u32> = sim
                .live
                .keys()
                .copied()
                .filter(|s| matches!(sim.e.map().lookup(*s).unwrap().backend, Backend::Zswap(_)))
                .collect();
            if let Some(&s) = z.get(rng.below(z.len().max(1) as u64) as usize) {
                if sim.writeback(s) {
                    wbs += 1;
                }
            }
        }
        while sim.e.log_device().unwrap().free_segments() < 5 {
            let before = sim.e.log_device().unwrap().stats().segments_erased;
            sim.gc();
            if sim.e.log_device().unwrap().stats().segments_erased == before {
                break;
            }
        }
    }
    sim.flush(Flush::Now);
    sim.check();
    assert!(sim.wb.is_empty() && sim.staged.is_empty());
    let st = sim.e.log_device().unwrap().stats();
    println!(
        "log path {policy:?} (writebacks {wbs}, {wb_freed} freed while staged): host {} B, \
         device {} B, WA {:.3}, gc runs {}",
        st.host_bytes,
        st.device_bytes,
        st.write_amplification().unwrap_or(0.0),
        st.gc_runs
    );
    assert!(st.write_amplification().unwrap() >= 1.0);
    if writebacks {
        assert!(
            wbs > 500 && wb_freed > 10,
            "{wbs} writebacks, {wb_freed} freed"
        );
    }
    // Every slot on the device (zombies under a GC lock included) is
    // charged once.
    let mut on_log = 0;
    sim.e.map().for_each_slot(|s| {
        if matches!(sim.e.map().lookup(s).unwrap().backend, Backend::Phys { .. }) {
            on_log += 1;
        }
    });
    assert_eq!(sim.charged(), on_log);
    // Free everything; GC passes commit (or lose) the last relocations and
    // the log empties.
    for s in sim.live.keys().copied().collect::<Vec<_>>() {
        sim.e.put(s, 1).unwrap();
    }
    sim.live.clear();
    for _ in 0..4 {
        sim.gc();
    }
    assert_eq!(sim.e.map().stats().live_slots, 0);
    assert_eq!(sim.e.log_device().unwrap().stats().live_slots, 0);
    assert!(sim.e.host().zswap.lock().unwrap().is_empty());
    assert_eq!(sim.charged(), 0);
}

#[test]
fn log_device_path_keeps_every_page() {
    for policy in [GcPolicy::Greedy, GcPolicy::CostBenefit] {
        random_run(policy, false);
    }
}

/// Staged writeouts, zswap writebacks to the log (some freed while staged),
/// overwrites and GC, at random.
#[test]
fn log_writeback_path_keeps_every_page() {
    for policy in [GcPolicy::Greedy, GcPolicy::CostBenefit] {
        random_run(policy, true);
    }
}

/// Several zswap pages (beside staged writeouts) written back to the log
/// keep their virtual slots; reads come from the log; the zswap objects are
/// released; a GC pass after freeing half of them keeps every page readable.
#[test]
fn log_writeback_commits_in_place() {
    let p = StdProvider::new();
    let mut sim = engine(&p, GcPolicy::Greedy);
    let mut zs = Vec::new();
    for n in 0..13 {
        zs.push(zswapped(&mut sim, n));
    }
    for n in 0..3 {
        sim.write(rpage(100 + n));
    }
    assert_eq!(sim.staged.len(), 3);
    assert_eq!(sim.charged(), 3);
    for &(s, h) in &zs {
        assert!(sim.writeback(s));
        // Staged: locked, still readable from zswap (lock-free lookup).
        let en = sim.e.map().lookup(s).unwrap();
        assert!(en.locked && en.backend == Backend::Zswap(h) && en.count == 1);
        // A second begin: Busy, nothing changed.
        assert_eq!(sim.e.log_writeback_begin(s), Err(Error::Busy));
    }
    // 16 staged: one whole segment was flushed on the way (the ninth met a
    // full stage buffer), the other goes now.
    sim.flush(Flush::Now);
    sim.check();
    assert_eq!(sim.charged(), 16);
    assert!(sim.e.host().zswap.lock().unwrap().is_empty());
    let log = sim.e.log_device().unwrap();
    assert_eq!(log.stats().live_slots, 16);
    assert_eq!(log.staged(Stream::Host), 0);
    for &(s, _) in &zs {
        let en = sim.e.map().lookup(s).unwrap();
        assert!(!en.locked && en.count == 1 && !en.cached);
        let Backend::Phys { dev: LOG, off } = en.backend else {
            panic!("{:?}", en.backend);
        };
        assert_eq!(log.owner(off).unwrap(), Some(s));
        assert_eq!(sim.read(off), &sim.live[&s][..]);
    }
    // Free every other one, then collect: the rest move, stay readable.
    for &(s, _) in zs.iter().step_by(2) {
        assert_eq!(sim.e.put(s, 1).unwrap(), Put::Freed);
        sim.live.remove(&s);
    }
    assert_eq!(sim.charged(), 16 - 7);
    for _ in 0..6 {
        sim.gc();
    }
    assert!(sim.e.log_device().unwrap().stats().gc_runs > 0);
    for s in sim.live.keys().copied().collect::<Vec<_>>() {
        // Freed, or a zombie under a GC lock that the next passes free.
        sim.e.put(s, 1).unwrap();
    }
    sim.live.clear();
    for _ in 0..4 {
        sim.gc();
    }
    assert_eq!(sim.charged(), 0);
    assert_eq!(sim.e.map().stats().live_slots, 0);
    assert_eq!(sim.e.log_device().unwrap().stats().live_slots, 0);
}

/// A slot freed while its writeback is staged (a zombie under the lock): the
/// host still writes it from the zswap object, the commit loses with Gone,
/// invalidates the offset, frees the slot and releases the object once.
#[test]
fn log_writeback_of_a_slot_freed_while_staged() {
    let p = StdProvider::new();
    let mut sim = engine(&p, GcPolicy::Greedy);
    let (a, ha) = zswapped(&mut sim, 1);
    let (b, _) = zswapped(&mut sim, 2);
    assert!(sim.writeback(a));
    assert!(sim.writeback(b));
    assert_eq!(sim.charged(), 2);
    // The last reference goes: a zombie, its zswap object still there.
    assert_eq!(sim.e.put(a, 1).unwrap(), Put::Live);
    sim.live.remove(&a);
    let en = sim.e.map().lookup(a).unwrap();
    assert!(en.locked && en.count == 0 && !en.cached && en.backend == Backend::Zswap(ha));
    assert!(sim.e.host().zswap.lock().unwrap().contains_key(&ha));
    // It cannot be locked or begun again meanwhile.
    assert_eq!(sim.e.log_writeback_begin(a), Err(Error::NotAllocated));
    sim.flush(Flush::Now); // checks: Gone, offset invalidated, slot freed
    assert!(!sim.e.host().zswap.lock().unwrap().contains_key(&ha));
    assert_eq!(sim.e.log_device().unwrap().stats().live_slots, 1);
    assert_eq!(sim.charged(), 1);
    sim.check();
    assert_eq!(sim.e.put(b, 1).unwrap(), Put::Freed);
    sim.live.clear();
    assert_eq!(sim.charged(), 0);
    assert!(sim.e.host().zswap.lock().unwrap().is_empty());
    assert_eq!(sim.e.log_device().unwrap().stats().live_slots, 0);
    assert_eq!(sim.e.map().stats().live_slots, 0);
}

/// Abort before the flush puts everything back; after the flush only the
/// commit ends a writeback.
#[test]
fn log_writeback_abort() {
    let p = StdProvider::new();
    let mut sim = engine(&p, GcPolicy::Greedy);
    let (a, ha) = zswapped(&mut sim, 1);
    let (b, hb) = zswapped(&mut sim, 2);
    let (c, _) = zswapped(&mut sim, 3);
    for s in [a, b, c] {
        assert!(sim.writeback(s));
    }
    assert_eq!(sim.charged(), 3);
    let staged = |sim: &Sim<'_>| sim.e.log_device().unwrap().staged(Stream::Host);
    assert_eq!(staged(&sim), 3);
    // Abort a live one: unlocked, in zswap with its handle, unstaged.
    assert_eq!(sim.e.log_writeback_abort(a), Ok(Put::Live));
    sim.wb.retain(|s| *s != a);
    let en = sim.e.map().lookup(a).unwrap();
    assert!(!en.locked && en.backend == Backend::Zswap(ha) && en.count == 1);
    assert_eq!(staged(&sim), 2);
    assert_eq!(sim.charged(), 2);
    // Twice: refused, nothing changed.
    assert_eq!(sim.e.log_writeback_abort(a), Err(Error::NotLocked));
    // Abort a zombie: the unlock frees it and releases its object once.
    assert_eq!(sim.e.put(b, 1).unwrap(), Put::Live);
    sim.live.remove(&b);
    assert_eq!(sim.e.log_writeback_abort(b), Ok(Put::Freed));
    sim.wb.retain(|s| *s != b);
    assert!(!sim.e.host().zswap.lock().unwrap().contains_key(&hb));
    assert_eq!(sim.e.log_writeback_abort(b), Err(Error::NotAllocated));
    assert_eq!(sim.charged(), 1);
    assert_eq!(staged(&sim), 1);
    // Begin again after an abort: fine.
    assert!(sim.writeback(a));
    assert_eq!(sim.charged(), 2);
    // Flushed: abort refuses (only the commit ends it), nothing changed.
    let f = sim.e.log_flush(Flush::Now).unwrap().unwrap();
    assert_eq!(sim.e.log_writeback_abort(a), Err(Error::WrongState));
    assert!(sim.e.map().lookup(a).unwrap().locked);
    assert_eq!(sim.charged(), 2);
    let log = sim.e.log_device().unwrap();
    let live: Vec<_> = log.live(f.segment()).unwrap().collect();
    for (owner, off) in live {
        let Backend::Zswap(h) = sim.e.map().lookup(owner).unwrap().backend else {
            panic!();
        };
        let d = sim.e.host().zswap.lock().unwrap()[&h].clone();
        sim.disk[off as usize * PAGE..][..PAGE].copy_from_slice(&d);
    }
    assert_eq!(sim.e.log_commit(&f).unwrap(), 2);
    sim.wb.clear();
    sim.check();
    assert_eq!(sim.charged(), 2);
    for s in [a, c] {
        assert_eq!(sim.e.put(s, 1).unwrap(), Put::Freed);
    }
    sim.live.clear();
    assert_eq!(sim.charged(), 0);
    assert!(sim.e.host().zswap.lock().unwrap().is_empty());
    assert_eq!(sim.e.log_device().unwrap().stats().live_slots, 0);
}

/// Everything that is not a zswap page, or not a staged writeback, is
/// refused and left as it was.
#[test]
fn log_writeback_wrong_states() {
    let p = StdProvider::new();
    let mut sim = engine(&p, GcPolicy::Greedy);
    let e = &sim.e;
    // Not in zswap: no backend (cached, not written out), zero, same.
    let none = e.alloc(0, 0, Some(MEMCG), Ctx::NoSleep).unwrap();
    assert_eq!(e.log_writeback_begin(none), Err(Error::WrongState));
    assert!(!e.map().lookup(none).unwrap().locked);
    assert_eq!(
        e.log_writeout(none, &[0; PAGE]).unwrap(),
        Some(Backend::Zero)
    );
    assert_eq!(e.log_writeback_begin(none), Err(Error::WrongState));
    let en = e.map().lookup(none).unwrap();
    assert!(!en.locked && en.backend == Backend::Zero);
    // Not allocated, slot 0, out of range.
    assert_eq!(e.log_writeback_begin(none + 1), Err(Error::NotAllocated));
    assert!(e.log_writeback_begin(0).is_err());
    assert!(e.log_writeback_begin(u32::MAX).is_err());
    assert!(e.log_writeback_abort(u32::MAX).is_err());
    assert_eq!(e.log_writeback_abort(none + 1), Err(Error::NotAllocated));
    assert_eq!(sim.charged(), 0);
    assert_eq!(e.log_device().unwrap().staged(Stream::Host), 0);
    // A staged writeout (no backend): begin refuses; abort refuses.
    sim.write(rpage(1));
    let w = sim.staged[0];
    let e = &sim.e;
    assert_eq!(e.log_writeback_begin(w), Err(Error::WrongState));
    assert_eq!(e.log_writeback_abort(w), Err(Error::NotLocked));
    assert_eq!(sim.charged(), 1);
    // A zswap page: not locked -> abort refuses; locked by someone else ->
    // begin is Busy, abort refuses (not staged), the lock stays.
    let (z, h) = zswapped(&mut sim, 2);
    let e = &sim.e;
    assert_eq!(e.log_writeback_abort(z), Err(Error::NotLocked));
    e.map().lock(z).unwrap();
    assert_eq!(e.log_writeback_begin(z), Err(Error::Busy));
    assert_eq!(e.log_writeback_abort(z), Err(Error::WrongState));
    assert!(e.map().lookup(z).unwrap().locked);
    e.map().unlock(z).unwrap();
    // Abort of the staged writeout's slot while someone locks it: refused
    // (not in zswap), nothing changed.
    e.map().lock(w).unwrap();
    assert_eq!(e.log_writeback_abort(w), Err(Error::WrongState));
    e.map().unlock(w).unwrap();
    assert_eq!(e.log_device().unwrap().staged(Stream::Host), 1);
    // Staged twice: Busy (the first holds the lock).
    assert!(sim.writeback(z));
    assert_eq!(sim.e.log_writeback_begin(z), Err(Error::Busy));
    assert_eq!(sim.charged(), 2);
    // A full stage buffer: Busy, the slot unlocked and uncharged again.
    for n in 0..6 {
        sim.write(rpage(10 + n));
    }
    let (y, hy) = zswapped(&mut sim, 3);
    assert_eq!(sim.e.log_device().unwrap().staged(Stream::Host), 8);
    let before = sim.charged();
    assert_eq!(sim.e.log_writeback_begin(y), Err(Error::Busy));
    let en = sim.e.map().lookup(y).unwrap();
    assert!(!en.locked && en.backend == Backend::Zswap(hy));
    assert_eq!(sim.charged(), before);
    // Commit them all; then a written-back page is not in zswap any more.
    sim.flush(Flush::Full);
    sim.check();
    assert_eq!(sim.e.log_writeback_begin(z), Err(Error::WrongState));
    assert!(!sim.e.map().lookup(z).unwrap().locked);
    assert!(!sim.e.host().zswap.lock().unwrap().contains_key(&h));
    // Free everything: charges back to zero.
    for s in sim.live.keys().copied().collect::<Vec<_>>() {
        sim.e.put(s, 1).unwrap();
    }
    sim.live.clear();
    assert_eq!(sim.charged(), 0);
    assert!(sim.e.host().zswap.lock().unwrap().is_empty());
    // No log device: both refuse.
    let plain = Engine::new(EngineConfig::default(), &p, Host::default()).unwrap();
    let s = plain.alloc(0, 0, None, Ctx::NoSleep).unwrap();
    assert_eq!(plain.log_writeback_begin(s), Err(Error::NoDevice));
    assert_eq!(plain.log_writeback_abort(s), Err(Error::NoDevice));
}
