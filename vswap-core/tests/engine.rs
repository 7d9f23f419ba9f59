//! The engine: writeout classes, tiers, eager/deferred placement, writeback,
//! evacuation through the reverse map (with a byte-array device model whose
//! every byte is checked), memcg charging, mTHP swap-in check, readahead.
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
    Backend, BackendKind, ChargePolicy, Ctx, DeviceConfig, Engine, EngineConfig, EngineHost, Error,
    Geometry, MapConfig, Move, PhysDevice, Placement, Put, StdProvider, SwapinRange,
};

const PAGE: usize = 64;
const S: Ctx = Ctx::MaySleep;

#[derive(Default)]
struct TestHost {
    zswap: Mutex<HashMap<u64, Vec<u8>>>,
    next: Mutex<u64>,
    released: Mutex<Vec<u64>>,
    /// `released_phys` calls per device slot.
    phys: Mutex<HashMap<(u8, u64), u32>>,
    charges: Mutex<HashMap<u16, i64>>,
    limit: Mutex<Option<i64>>,
}

impl EngineHost for TestHost {
    fn release_zswap(&self, h: u64) {
        assert!(
            self.zswap.lock().unwrap().remove(&h).is_some(),
            "handle {h} released twice"
        );
        self.released.lock().unwrap().push(h);
    }
    fn zswap_store(&self, _slot: u32, page: &[u8]) -> Option<u64> {
        // "Compressible" pages start with b'z'.
        (page[0] == b'z').then(|| {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            self.zswap.lock().unwrap().insert(*n, page.to_vec());
            *n
        })
    }
    fn charge(&self, id: u16, pages: u32) -> bool {
        let mut c = self.charges.lock().unwrap();
        let e = c.entry(id).or_default();
        if self
            .limit
            .lock()
            .unwrap()
            .is_some_and(|l| *e + i64::from(pages) > l)
        {
            return false;
        }
        *e += i64::from(pages);
        true
    }
    fn uncharge(&self, id: u16, pages: u32) {
        *self.charges.lock().unwrap().entry(id).or_default() -= i64::from(pages);
    }
    fn released_phys(&self, dev: u8, off: u64, len: u64) {
        let mut m = self.phys.lock().unwrap();
        for o in off..off + len {
            *m.entry((dev, o)).or_default() += 1;
        }
    }
}

impl TestHost {
    /// The `released_phys` calls so far, per device slot; cleared.
    fn take_phys(&self) -> Vec<((u8, u64), u32)> {
        let mut v: Vec<_> = self.phys.lock().unwrap().drain().collect();
        v.sort();
        v
    }
}

fn engine(p: &StdProvider, cfg: EngineConfig) -> Engine<&StdProvider, TestHost> {
    Engine::new(cfg, p, TestHost::default()).unwrap()
}

fn cfg(placement: Placement, charge: ChargePolicy) -> EngineConfig {
    EngineConfig {
        map: MapConfig {
            geometry: Geometry::tiny(4, 4096, 2),
            ..MapConfig::default()
        },
        placement,
        charge,
        page_size: PAGE as u32,
    }
}

fn device(p: &StdProvider, slots: u64) -> PhysDevice<&StdProvider> {
    PhysDevice::new(
        DeviceConfig {
            geometry: Geometry::tiny(4, slots, 2),
            discard: false,
            rotational: false,
        },
        &[],
        p,
    )
    .unwrap()
}

fn page(fill: impl Fn(usize) -> u8) -> Vec<u8> {
    (0..PAGE).map(fill).collect()
}

/// Swap a page out: alloc, one PTE reference, writeout, drop the folio.
fn swap_out(e: &Engine<&StdProvider, TestHost>, data: &[u8], memcg: Option<u16>) -> (u32, Backend) {
    let s = e.alloc(0, 0, memcg, S).unwrap();
    e.map().dup(s, 1, S).unwrap();
    let b = e.writeout(s, data, 0).unwrap();
    assert_eq!(e.cache_clear(s, 0, S).unwrap(), Put::Live);
    (s, b)
}

#[test]
fn writeout_picks_the_cheapest_backend() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    e.add_device(0, 1, device(&p, 64)).unwrap();
    assert_eq!(swap_out(&e, &page(|_| 0), None).1, Backend::Zero);
    assert_eq!(
        swap_out(&e, &page(|_| 0xff), None).1,
        Backend::Same(u64::MAX)
    );
    assert_eq!(
        swap_out(&e, &page(|i| [1, 0, 0, 0, 0, 0, 0, 0][i % 8]), None).1,
        Backend::Same(1)
    );
    // One repeated word too wide for the inline payload: still same-filled
    // (kept in the side table), no device slot.
    let wide = page(|i| [0, 0, 0, 0, 0, 0, 0, 0x40][i % 8]);
    assert_eq!(
        swap_out(&e, &wide, None).1,
        Backend::Same(u64::from_ne_bytes([0, 0, 0, 0, 0, 0, 0, 0x40]))
    );
    assert!(matches!(
        swap_out(&e, &page(|i| if i == 0 { b'z' } else { i as u8 }), None).1,
        Backend::Zswap(_)
    ));
    let (s, b) = swap_out(&e, &page(|i| i as u8), None);
    let Backend::Phys { dev, off } = b else {
        panic!("{b:?}")
    };
    assert_eq!(e.device(dev).unwrap().owner(off).unwrap(), Some(s));
    // A re-dirtied folio is written again to the slot it already has.
    assert_eq!(e.writeout(s, &page(|i| i as u8 ^ 3), 0), Ok(b));
    let (zs, _) = swap_out(&e, &page(|_| 0), None);
    assert_eq!(
        e.writeout(zs, &page(|_| 1), 0),
        Err(Error::WrongState),
        "only from none or a device slot"
    );
    assert_eq!(e.writeout(s, &[0; 5], 0), Err(Error::BadLength));
    // The last reference frees the device slot through the reverse map.
    assert_eq!(e.put(s, 1).unwrap(), Put::Freed);
    assert_eq!(e.device(dev).unwrap().owner(off).unwrap(), None);
}

#[test]
fn tiers_fill_by_priority_and_rotate_among_equals() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    e.add_device(0, 5, device(&p, 64)).unwrap(); // low
    e.add_device(1, 9, device(&p, 64)).unwrap(); // high
    e.add_device(2, 9, device(&p, 64)).unwrap(); // high
    assert_eq!(e.add_device(2, 1, device(&p, 64)), Err(Error::WrongState));
    let mut per = [0u32; 3];
    let mut first_order = Vec::new();
    for i in 0..(2 * 63 + 10) {
        let (_, b) = swap_out(&e, &page(|j| (i + j) as u8 | 1), None);
        let Backend::Phys { dev, .. } = b else {
            panic!()
        };
        per[dev as usize] += 1;
        if i < 64 {
            first_order.push(dev);
        }
    }
    assert_eq!(
        per,
        [10, 63, 63],
        "both high devices filled before the low one"
    );
    // Equal priority: one cluster (16 slots) at a time on each.
    assert!(first_order[..15].iter().all(|&d| d == first_order[0]));
    assert!(first_order[16..31].iter().all(|&d| d != first_order[0]));
    for _ in 0..53 {
        swap_out(&e, &page(|j| j as u8 | 1), None);
    }
    let s = e.alloc(0, 0, None, S).unwrap();
    assert_eq!(
        e.writeout(s, &page(|j| j as u8 | 1), 0),
        Err(Error::NoSpace),
        "all tiers full"
    );
}

#[test]
fn eager_placement_gives_back_what_writeout_does_not_need() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Eager, ChargePolicy::None));
    e.add_device(3, 1, device(&p, 64)).unwrap();
    let s = e.alloc(2, 1, None, S).unwrap();
    for i in 0..4 {
        assert!(matches!(
            e.map().lookup(s + i).unwrap().backend,
            Backend::Phys { dev: 3, .. }
        ));
    }
    assert_eq!(e.device(3).unwrap().stats().used, 4);
    assert_eq!(e.writeout(s, &page(|_| 0), 0).unwrap(), Backend::Zero);
    let kept = e.writeout(s + 1, &page(|i| i as u8), 0).unwrap();
    assert_eq!(
        kept,
        Backend::Phys {
            dev: 3,
            off: match e.map().lookup(s + 1).unwrap().backend {
                Backend::Phys { off, .. } => off,
                _ => unreachable!(),
            }
        }
    );
    assert_eq!(
        e.device(3).unwrap().stats().used,
        3,
        "the zero page's slot went back"
    );
}

#[test]
fn writeback_moves_zswap_to_a_device_and_loses_gracefully_to_a_free() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    e.add_device(0, 1, device(&p, 64)).unwrap();
    let z = page(|i| if i == 0 { b'z' } else { 7 });
    let (s, b) = swap_out(&e, &z, None);
    let Backend::Zswap(h) = b else { panic!() };
    let w = e.writeback_begin(s, 0).unwrap();
    assert_eq!((w.slot, w.handle), (s, h));
    assert_eq!(e.writeback_begin(s, 0), Err(Error::Busy), "locked");
    e.writeback_commit(w).unwrap();
    assert_eq!(
        e.map().lookup(s).unwrap().backend,
        Backend::Phys {
            dev: w.dev,
            off: w.off
        }
    );
    assert_eq!(*e.host().released.lock().unwrap(), [h]);
    assert_eq!(e.writeback_begin(s, 0), Err(Error::WrongState));
    assert!(!e.map().lookup(s).unwrap().locked);
    // Lost to a free: the slot dies while locked; commit says Gone and the
    // new device slot goes back.
    let (s2, _) = swap_out(&e, &z, None);
    let w = e.writeback_begin(s2, 0).unwrap();
    let used = e.device(0).unwrap().stats().used;
    assert_eq!(e.put(s2, 1).unwrap(), Put::Live, "zombie until unlocked");
    assert_eq!(e.writeback_commit(w), Err(Error::Gone));
    assert_eq!(e.device(0).unwrap().stats().used, used - 1);
    assert_eq!(e.map().lookup(s2), Err(Error::NotAllocated));
    assert!(
        e.host().zswap.lock().unwrap().is_empty(),
        "both handles released"
    );
    // Abort gives the device slot back and unlocks.
    let (s3, _) = swap_out(&e, &z, None);
    let w = e.writeback_begin(s3, 0).unwrap();
    e.writeback_abort(w).unwrap();
    assert!(matches!(
        e.map().lookup(s3).unwrap(),
        vswap_core::Entry {
            backend: Backend::Zswap(_),
            locked: false,
            ..
        }
    ));
}

#[test]
fn evacuation_moves_every_page_through_the_reverse_map() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    e.add_device(0, 9, device(&p, 256)).unwrap();
    // Devices as byte arrays; the host writes pages where writeout says.
    let mut disk: HashMap<(u8, u64), Vec<u8>> = HashMap::new();
    let mut want: HashMap<u32, Vec<u8>> = HashMap::new();
    for i in 0..150u32 {
        let data = page(|j| (i as usize * 31 + j) as u8 | 1);
        let (s, b) = swap_out(&e, &data, None);
        let Backend::Phys { dev, off } = b else {
            panic!()
        };
        disk.insert((dev, off), data.clone());
        want.insert(s, data);
    }
    // Free a third of them.
    let gone: Vec<u32> = want.keys().copied().filter(|s| s % 3 == 0).collect();
    for s in gone {
        assert_eq!(e.put(s, 1).unwrap(), Put::Freed);
        want.remove(&s);
    }
    e.add_device(1, 1, device(&p, 256)).unwrap();
    assert_eq!(
        e.remove_device(0).err(),
        Some(Error::Busy),
        "still holds data"
    );
    let r = e
        .evacuate(0, Some(1), 0, |m| {
            let Move::Copy {
                from_dev,
                from,
                to_dev,
                to,
                ..
            } = m
            else {
                panic!()
            };
            let d = disk.remove(&(from_dev, from)).unwrap();
            disk.insert((to_dev, to), d);
            Ok(0)
        })
        .unwrap();
    assert_eq!(r.moved as usize, want.len());
    for (s, data) in &want {
        let Backend::Phys { dev, off } = e.map().lookup(*s).unwrap().backend else {
            panic!()
        };
        assert_eq!(dev, 1);
        assert_eq!(&disk[&(dev, off)], data, "slot {s} reads back");
        assert_eq!(e.device(1).unwrap().owner(off).unwrap(), Some(*s));
    }
    assert_eq!(e.device(0).unwrap().stats().used, 0);
    {
        let _pin = e.device(0).unwrap();
        assert_eq!(e.remove_device(0).err(), Some(Error::Busy), "pinned");
    }
    e.remove_device(0).unwrap();
    assert_eq!(e.device(0).err(), Some(Error::NoDevice));
    // Swapoff to memory: every page read into the swap cache.
    let mut cache: HashMap<u64, Vec<u8>> = HashMap::new();
    let r = e
        .evacuate(1, None, 0, |m| {
            let Move::Read { slot, dev, off } = m else {
                panic!()
            };
            cache.insert(u64::from(slot), disk.remove(&(dev, off)).unwrap());
            Ok(u64::from(slot))
        })
        .unwrap();
    assert_eq!(r.moved as usize, want.len());
    for (s, data) in &want {
        let en = e.map().lookup(*s).unwrap();
        assert_eq!(
            (en.backend, en.cached, en.locked),
            (Backend::None, true, false)
        );
        assert_eq!(e.map().cache_get(*s).unwrap().word, u64::from(*s));
        assert_eq!(&cache[&u64::from(*s)], data);
    }
    e.remove_device(1).unwrap();
}

#[test]
fn memcg_charges_follow_the_policy() {
    for policy in [ChargePolicy::PhysicalOnly, ChargePolicy::EverySlot] {
        let p = StdProvider::new();
        let e = engine(&p, cfg(Placement::Deferred, policy));
        e.add_device(0, 1, device(&p, 64)).unwrap();
        let charged = |e: &Engine<&StdProvider, TestHost>| {
            *e.host().charges.lock().unwrap().get(&7).unwrap_or(&0)
        };
        let (z, _) = swap_out(&e, &page(|_| 0), Some(7));
        let (ph, _) = swap_out(&e, &page(|i| i as u8), Some(7));
        let expect = if policy == ChargePolicy::EverySlot {
            2
        } else {
            1
        };
        assert_eq!(charged(&e), expect, "{policy:?}");
        e.put(z, 1).unwrap();
        e.put(ph, 1).unwrap();
        assert_eq!(charged(&e), 0, "{policy:?}: everything uncharged");
        // Over the limit: the charge is refused.
        *e.host().limit.lock().unwrap() = Some(0);
        let s = e.alloc(0, 0, Some(7), S);
        if policy == ChargePolicy::EverySlot {
            assert_eq!(s, Err(Error::NoSpace));
        } else {
            let s = s.unwrap();
            assert_eq!(e.writeout(s, &page(|i| i as u8), 0), Err(Error::NoSpace));
            assert_eq!(e.device(0).unwrap().stats().used, 0);
        }
    }
}

#[test]
fn mthp_swapin_check_and_readahead() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Eager, ChargePolicy::None));
    e.add_device(0, 1, device(&p, 64)).unwrap();
    let s = e.alloc(2, 0, None, S).unwrap();
    let Backend::Phys { off, .. } = e.map().lookup(s).unwrap().backend else {
        panic!()
    };
    assert_eq!(
        e.swapin_check(s, 2).unwrap(),
        SwapinRange::Contiguous { dev: 0, off }
    );
    assert_eq!(e.swapin_check(s + 1, 2), Err(Error::Misaligned));
    let mut out = [0u32; 7];
    let n = e.readahead(s + 1, &mut out).unwrap();
    let mut got = out[..n].to_vec();
    got.sort();
    assert_eq!(got, [s, s + 2, s + 3]);
    e.writeout(s + 3, &page(|_| 0), 0).unwrap();
    assert_eq!(e.swapin_check(s, 2).unwrap(), SwapinRange::No);
    let z = e.alloc(1, 0, None, S).unwrap();
    e.writeout(z, &page(|_| 0), 0).unwrap();
    e.writeout(z + 1, &page(|_| 0), 0).unwrap();
    assert_eq!(
        e.swapin_check(z, 1).unwrap(),
        SwapinRange::Uniform(BackendKind::Zero)
    );
    assert_eq!(e.readahead(z, &mut out).unwrap(), 0, "not on a device");
}

/// Regression (found by the `ffi_calls` fuzz target): a device slot reserved
/// with `alloc_phys` for a slot that does not refer to it used to count as
/// progress on every pass, so an evacuation beside a slot locked by someone
/// else never returned. Now such a reservation is skipped without counting
/// as progress, so a pass that only meets it and the locked slot ends the
/// evacuation with `Busy`.
#[test]
fn evacuation_beside_a_reservation_and_a_locked_slot_returns() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    e.add_device(0, 2, device(&p, 64)).unwrap();
    e.add_device(1, 1, device(&p, 64)).unwrap();
    // A page on device 0, locked by someone else for the whole evacuation.
    let (locked, b) = swap_out(&e, &page(|i| i as u8 | 1), None);
    assert!(matches!(b, Backend::Phys { dev: 0, .. }));
    e.map().lock(locked).unwrap();
    // A reservation for a live slot that still has no backend.
    let owner = e.alloc(0, 0, None, S).unwrap();
    let (dev, off) = e.alloc_phys(0, 0, owner, S).unwrap();
    assert_eq!(dev, 0);
    // A page that can move.
    let (movable, _) = swap_out(&e, &page(|i| i as u8 | 3), None);
    let mut moves = 0;
    let r = e.evacuate(0, Some(1), 0, |_| {
        moves += 1;
        Ok(0)
    });
    assert_eq!(
        r.map_err(|s| (s.error, s.done.moved)),
        Err((Error::Busy, 1)),
        "Busy, with the one move that committed"
    );
    assert_eq!(moves, 1, "only the unlocked page moved");
    assert!(matches!(
        e.map().lookup(movable).unwrap().backend,
        Backend::Phys { dev: 1, .. }
    ));
    assert_eq!(e.device(0).unwrap().owner(off), Ok(Some(owner)));
    // Once the lock is gone and the reservation is stored, it completes.
    e.map().unlock(locked).unwrap();
    e.map()
        .store(owner, Backend::None, Backend::Phys { dev, off })
        .unwrap();
    let r = e.evacuate(0, Some(1), 0, |_| Ok(0)).unwrap();
    assert_eq!(r.moved, 2);
    assert_eq!(e.device(0).unwrap().stats().used, 0);
}

/// Issue 12, item 4: `store` (and `commit_unlock`, `relocate`,
/// `writeback`) took any physical location: a device never added, a free
/// device slot, another live slot's device slot. Dropping the alias then
/// freed a device slot the first slot still used, and `released_phys`
/// fired twice for it. Now each is refused with its own error and nothing
/// changes; a reservation made for the slot (`alloc_phys`) is accepted.
#[test]
fn store_refuses_a_location_the_slot_does_not_own() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    e.add_device(0, 1, device(&p, 64)).unwrap();
    let (a, b) = swap_out(&e, &page(|i| i as u8 | 1), None);
    let Backend::Phys { dev, off } = b else {
        panic!("{b:?}")
    };
    let n = e.alloc(0, 0, None, S).unwrap();
    e.map().dup(n, 1, S).unwrap();
    let snap = |s: u32| e.map().lookup(s).unwrap();
    let (sa, sn) = (snap(a), snap(n));
    let free_off = (1..64)
        .find(|o| e.device(0).unwrap().owner(*o) == Ok(None))
        .unwrap();
    let cases = [
        (
            Backend::Phys { dev: 5, off: 1 },
            Error::NoDevice,
            "never added",
        ),
        (
            Backend::Phys { dev: 0, off: 64 },
            Error::OutOfRange,
            "beyond the device",
        ),
        (
            Backend::Phys {
                dev: 0,
                off: free_off,
            },
            Error::NotAllocated,
            "a free device slot",
        ),
        (
            Backend::Phys { dev, off },
            Error::WrongState,
            "another live slot's",
        ),
    ];
    for (loc, err, what) in cases {
        assert_eq!(
            e.map().store(n, Backend::None, loc),
            Err(err),
            "store: {what}"
        );
        e.map().lock(n).unwrap();
        assert_eq!(
            e.map().commit_unlock(n, Backend::None, loc),
            Err(err),
            "commit_unlock: {what}"
        );
        e.map().unlock(n).unwrap();
        assert_eq!((snap(a), snap(n)), (sa, sn), "{what}: nothing changed");
        assert_eq!(e.device(0).unwrap().owner(off), Ok(Some(a)));
    }
    // A move onto another slot's device slot is refused the same way.
    e.map().lock(a).unwrap();
    let other = e.alloc_phys(0, 0, n, S).unwrap();
    assert_eq!(
        e.map().relocate(a, (dev, off), other),
        Err(Error::WrongState),
        "relocate onto a slot reserved for someone else"
    );
    e.map().unlock(a).unwrap();
    assert_eq!(snap(a), sa);
    // The reservation made for `n` is its to store.
    e.map()
        .store(
            n,
            Backend::None,
            Backend::Phys {
                dev: other.0,
                off: other.1,
            },
        )
        .unwrap();
    assert_eq!(e.host().take_phys(), [], "nothing released so far");
    // Each slot's death releases its own device slot, once.
    assert_eq!(e.cache_clear(n, 0, S).unwrap(), Put::Live);
    assert_eq!(e.put(n, 1).unwrap(), Put::Freed);
    assert_eq!(e.put(a, 1).unwrap(), Put::Freed);
    assert_eq!(e.host().take_phys(), [((dev, off), 1), (other, 1)]);
    assert_eq!(e.device(0).unwrap().stats().used, 0);
}

/// Issue 12, item 5: the router freed released device slots with no owner
/// check, so one host mistake freed another slot's device slot. Now a
/// release frees a device slot only while the releasing slot owns it, and a
/// release that names no owner frees nothing (the `DevicePin` no longer
/// hands out the device's `free` / `set_owner` either: see the
/// `compile_fail` example on `DevicePin`).
#[test]
fn a_release_frees_only_the_releasing_slots_device_slot() {
    use vswap_core::Host;
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    e.add_device(0, 1, device(&p, 64)).unwrap();
    let (a, b) = swap_out(&e, &page(|i| i as u8 | 1), None);
    let Backend::Phys { dev, off } = b else {
        panic!("{b:?}")
    };
    let sa = e.map().lookup(a).unwrap();
    // A release of `a`'s device slot that names no owner (the only release
    // safe code outside the crate can call on the engine's host: the owned
    // one takes a `MapOnly` token, see its `compile_fail` example) leaves
    // it alone and reports nothing. The owner check of the map's own
    // releases is `tests::owned_release_frees_only_the_named_owners_device_slots`
    // inside the crate.
    e.map().host().release_phys(dev, off, 1);
    assert_eq!(e.device(0).unwrap().owner(off), Ok(Some(a)), "still a's");
    assert_eq!(e.map().lookup(a).unwrap(), sa);
    assert_eq!(e.host().take_phys(), []);
    // `a` itself still releases its device slot once.
    assert_eq!(e.put(a, 1).unwrap(), Put::Freed);
    assert_eq!(e.host().take_phys(), [((dev, off), 1)]);
}

/// Issue 12, item 10: `released_phys` was not called for the device slots
/// freed by `writeback_abort`, by `writeback_commit` returning `Gone`, and
/// by freeing a reservation. Every release is now reported exactly once.
#[test]
fn every_device_slot_release_is_reported_once() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    e.add_device(0, 1, device(&p, 64)).unwrap();
    let zpage = page(|i| if i == 0 { b'z' } else { i as u8 });
    // writeback_abort.
    let (s, _) = swap_out(&e, &zpage, None);
    let w = e.writeback_begin(s, 0).unwrap();
    assert_eq!(e.writeback_abort(w), Ok(Put::Live));
    assert_eq!(e.host().take_phys(), [((w.dev, w.off), 1)], "abort");
    assert_eq!(e.device(0).unwrap().owner(w.off), Ok(None));
    // writeback_commit losing to a free (Gone).
    let w = e.writeback_begin(s, 0).unwrap();
    assert_eq!(e.put(s, 1).unwrap(), Put::Live, "a zombie under the lock");
    assert_eq!(e.writeback_commit(w), Err(Error::Gone));
    assert_eq!(e.host().take_phys(), [((w.dev, w.off), 1)], "Gone");
    // A reservation nobody stored, freed by its owner's host.
    let n = e.alloc(0, 0, None, S).unwrap();
    let (d, o) = e.alloc_phys(1, 0, n, S).unwrap();
    assert_eq!(e.free_reserved(d, o, 2, n + 1), Err(Error::WrongState));
    assert_eq!(e.free_reserved(d, o, 2, 0), Err(Error::OutOfRange));
    assert_eq!(e.host().take_phys(), [], "refused frees report nothing");
    e.free_reserved(d, o, 2, n).unwrap();
    assert_eq!(e.host().take_phys(), [((d, o), 1), ((d, o + 1), 1)]);
    assert_eq!(e.free_reserved(d, o, 1, n), Err(Error::NotAllocated));
    // A reservation that became the slot's backend is not the host's to free.
    let (d, o) = e.alloc_phys(0, 0, n, S).unwrap();
    e.map()
        .store(n, Backend::None, Backend::Phys { dev: d, off: o })
        .unwrap();
    assert_eq!(e.free_reserved(d, o, 1, n), Err(Error::WrongState));
    assert_eq!(e.cache_clear(n, 0, S).unwrap(), Put::Freed);
    assert_eq!(e.host().take_phys(), [((d, o), 1)], "freed with its slot");
    // An evacuation whose copy fails gives back the destination it took.
    e.add_device(1, 0, device(&p, 64)).unwrap();
    let (m, _) = swap_out(&e, &page(|i| i as u8 | 1), None);
    let r = e.evacuate(0, Some(1), 0, |_| Err(Error::Again));
    assert_eq!(r.map_err(|s| s.error), Err(Error::Again));
    let got = e.host().take_phys();
    assert_eq!(got.len(), 1, "the destination, once: {got:?}");
    assert_eq!(got[0].0.0, 1);
    assert_eq!(e.put(m, 1).unwrap(), Put::Freed);
    assert_eq!(e.device(0).unwrap().stats().used, 0);
    assert_eq!(e.device(1).unwrap().stats().used, 0);
}

/// Issue 12, item 11: an evacuation or a swapoff of the virtual layer that
/// failed part-way (3 of 4 slots moved, then an I/O error) returned only
/// the error. Now the error carries what was done.
#[test]
fn a_failed_move_reports_its_partial_progress() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    e.add_device(0, 1, device(&p, 64)).unwrap();
    e.add_device(1, 0, device(&p, 64)).unwrap();
    let slots: Vec<u32> = (0..4)
        .map(|k| swap_out(&e, &page(|i| (i + k) as u8 | 1), None).0)
        .collect();
    let mut n = 0;
    let r = e.evacuate(0, Some(1), 0, |_| {
        n += 1;
        if n == 4 { Err(Error::Again) } else { Ok(0) }
    });
    let stop = r.unwrap_err();
    assert_eq!(stop.error, Error::Again);
    assert_eq!(
        (stop.done.moved, stop.done.lost_to_free, stop.done.passes),
        (3, 0, 1)
    );
    let on1 = slots
        .iter()
        .filter(|s| {
            matches!(
                e.map().lookup(**s).unwrap().backend,
                Backend::Phys { dev: 1, .. }
            )
        })
        .count();
    assert_eq!(on1, 3, "the three moves counted committed");
    // Argument errors: nothing done.
    let r = e.evacuate(0, Some(0), 0, |_| Ok(0)).unwrap_err();
    assert_eq!((r.error, r.done), (Error::BadConfig, Default::default()));
    // The virtual layer to memory: the third slot's move fails.
    let mut n = 0;
    let r = e.swapoff_virtual(None, 0, |_| {
        n += 1;
        if n == 3 { Err(Error::Again) } else { Ok(()) }
    });
    let stop = r.unwrap_err();
    assert_eq!((stop.error, stop.done), (Error::Again, 2));
    let live = slots.iter().filter(|s| e.map().lookup(**s).is_ok()).count();
    assert_eq!(live, 2, "the two moved slots were freed");
    let r = e.swapoff_virtual(None, 0, |_| Ok(())).unwrap();
    assert_eq!(r, 2);
}

/// Issue 12, item 14: `writeout` checked its CPU against the device's
/// CPUs, not the engine's (engine cpus 4: cpu 10 accepted when the device
/// had more; device cpus 2: cpu 3 refused after `alloc` accepted it), and
/// `evacuate` to memory ignored it. One contract now: every call checks
/// the engine's CPUs (`BadCpu`), and a device with fewer maps the number.
#[test]
fn one_cpu_contract_for_the_whole_engine() {
    let p = StdProvider::new();
    let mut c = cfg(Placement::Deferred, ChargePolicy::None);
    c.map.geometry = Geometry::tiny(4, 4096, 4);
    let e = engine(&p, c);
    // Device 0 has 2 CPU numbers (the engine 4), device 1 has 64.
    e.add_device(0, 1, device(&p, 64)).unwrap();
    let d64 = PhysDevice::new(DeviceConfig::new(64, 64), &[], &p).unwrap();
    e.add_device(1, 0, d64).unwrap();
    let s = e.alloc(0, 3, None, S).unwrap();
    e.map().dup(s, 1, S).unwrap();
    let data = page(|i| i as u8 | 1);
    assert_eq!(e.writeout(s, &data, 10), Err(Error::BadCpu), "cpu 10 of 4");
    assert_eq!(e.map().lookup(s).unwrap().backend, Backend::None);
    let b = e.writeout(s, &data, 3).unwrap();
    assert!(
        matches!(b, Backend::Phys { dev: 0, .. }),
        "{b:?}: cpu 3 maps onto 2 CPUs"
    );
    // Also when no device slot is needed.
    let z = e.alloc(0, 0, None, S).unwrap();
    assert_eq!(e.writeout(z, &page(|_| 0), 4), Err(Error::BadCpu));
    assert_eq!(e.alloc(0, 4, None, S), Err(Error::BadCpu));
    assert_eq!(e.alloc_phys(0, 4, z, S), Err(Error::BadCpu));
    let (zs, _) = swap_out(&e, &page(|i| if i == 0 { b'z' } else { i as u8 }), None);
    assert_eq!(e.writeback_begin(zs, 4).err(), Some(Error::BadCpu));
    assert!(!e.map().lookup(zs).unwrap().locked);
    let w = e.writeback_begin(zs, 3).unwrap();
    e.writeback_commit(w).unwrap();
    let r = e
        .evacuate(0, None, 4, |_| panic!("nothing moves"))
        .unwrap_err();
    assert_eq!((r.error, r.done.moved), (Error::BadCpu, 0), "to memory too");
    let r = e
        .swapoff_virtual(None, 4, |_| panic!("nothing moves"))
        .unwrap_err();
    assert_eq!((r.error, r.done), (Error::BadCpu, 0));
    // Evacuating device 1 onto device 0 on cpu 3 works.
    e.evacuate(1, Some(0), 3, |_| Ok(0)).unwrap();
}

/// Issue 12, item 15: `writeout` took any multiple of 8 bytes as a page
/// (a 12 KiB page got one device slot) and refused 4097 bytes with
/// `BadConfig`. The page size is configuration; any other length is
/// `BadLength` and changes nothing.
#[test]
fn writeout_takes_exactly_one_configured_page() {
    let p = StdProvider::new();
    let mut c = cfg(Placement::Deferred, ChargePolicy::None);
    c.page_size = vswap_core::PAGE_SIZE;
    let e = engine(&p, c);
    e.add_device(0, 1, device(&p, 64)).unwrap();
    let s = e.alloc(0, 0, None, S).unwrap();
    for len in [0, 8, 4088, 4095, 4097, 4104, 8192, 12288] {
        let buf: Vec<u8> = (0..len).map(|i| i as u8 | 1).collect();
        assert_eq!(e.writeout(s, &buf, 0), Err(Error::BadLength), "{len} bytes");
        assert_eq!(e.map().lookup(s).unwrap().backend, Backend::None);
    }
    assert_eq!(e.device(0).unwrap().stats().used, 0);
    let buf: Vec<u8> = (0..4096).map(|i| i as u8 | 1).collect();
    assert!(matches!(e.writeout(s, &buf, 0), Ok(Backend::Phys { .. })));
    for bad in [0, 4, 12, 48, 4097, 2 << 20] {
        let mut c = cfg(Placement::Deferred, ChargePolicy::None);
        c.page_size = bad;
        assert!(
            matches!(
                Engine::new(c, &p, TestHost::default()),
                Err(Error::BadConfig)
            ),
            "page size {bad}"
        );
    }
}

/// Issue 12 item 18: a page of any one repeated 64-bit word is written out
/// as same-filled (no zswap object, no device slot), and reads back whole:
/// repeated bytes 0x5a, 0x01, 0x80, a word with unequal halves, all ones.
#[test]
fn writeout_stores_every_repeated_word_as_same_filled() {
    let p = StdProvider::new();
    let e = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    e.add_device(0, 1, device(&p, 64)).unwrap();
    let mut slots = Vec::new();
    for v in [
        0x5a5a_5a5a_5a5a_5a5au64,
        0x0101_0101_0101_0101,
        0x8080_8080_8080_8080,
        0xdead_beef_cafe_f00d,
        u64::MAX,
    ] {
        let bytes = v.to_ne_bytes();
        let (s, b) = swap_out(&e, &page(|i| bytes[i % 8]), None);
        assert_eq!(b, Backend::Same(v), "{v:#x}");
        assert_eq!(e.map().lookup(s).unwrap().backend, Backend::Same(v));
        slots.push(s);
    }
    assert_eq!(e.device(0).unwrap().stats().used, 0, "no device slot");
    let st = e.map().stats();
    assert_eq!(st.by_kind[2], 5, "five same-filled slots");
    assert!(st.side_bytes > 0, "the table of the wide value is counted");
    for s in slots {
        assert_eq!(e.put(s, 1), Ok(Put::Freed));
    }
    assert_eq!(e.map().stats().side_bytes, 0);
}

fn addressed(charge: ChargePolicy) -> EngineConfig {
    let mut c = cfg(Placement::Deferred, charge);
    c.map.addressed = true;
    c
}

/// An addressed engine (a swap device under the kernel's own swap
/// allocator): the host picks every slot; each class of page goes to its
/// backend; every free gives its backend back once; the tables go too.
#[test]
fn an_addressed_engine_stores_at_the_slots_its_host_chooses() {
    let p = StdProvider::new();
    let e = engine(&p, addressed(ChargePolicy::None));
    e.add_device(0, 1, device(&p, 64)).unwrap();
    assert_eq!(e.alloc(0, 0, None, S), Err(Error::BadConfig));
    let pages = [
        page(|_| 0),
        page(|_| 0xff),
        page(|i| b"zz-compressible"[i % 15]),
        page(|i| (i * 37 + 11) as u8),
    ];
    let slots: Vec<u32> = (1..=40u32).map(|i| i * 97 % 4093 + 1).collect();
    let mut want = HashMap::new();
    for (i, &s) in slots.iter().enumerate() {
        e.alloc_at(s, (i % 2) as u32, None, S).unwrap();
        assert_eq!(e.alloc_at(s, 0, None, S), Err(Error::WrongState));
        e.map().dup(s, 1, S).unwrap();
        let b = e.writeout(s, &pages[i % 4], 0).unwrap();
        assert_eq!(e.cache_clear(s, 0, S).unwrap(), Put::Live);
        let kind = match b {
            Backend::Zero => 0,
            Backend::Same(v) => {
                assert_eq!(v, u64::MAX);
                1
            }
            Backend::Zswap(_) => 2,
            Backend::Phys { .. } => 3,
            other => panic!("{other:?}"),
        };
        assert_eq!(kind, i % 4, "slot {s}: {b:?}");
        want.insert(s, b);
    }
    for (&s, &b) in &want {
        assert_eq!(e.map().lookup(s).unwrap().backend, b);
    }
    // The slots in between were never taken.
    assert_eq!(
        e.map().lookup(slots[0] + 1).map(|_| ()),
        Err(Error::NotAllocated)
    );
    for &s in &slots {
        assert_eq!(e.put(s, 1).unwrap(), Put::Freed);
        assert_eq!(e.map().lookup(s).map(|_| ()), Err(Error::NotAllocated));
    }
    assert!(
        e.host().zswap.lock().unwrap().is_empty(),
        "a zswap object kept"
    );
    let phys = e.host().take_phys();
    assert_eq!(phys.len(), 10);
    assert!(phys.iter().all(|(_, n)| *n == 1), "{phys:?}");
    e.map().reclaim();
    let st = e.map().stats();
    assert_eq!(st.live_slots, 0);
    // Only cluster 0 (slot 0 reserved) may keep its table.
    assert!(st.memory.live_clusters <= 1, "{st:?}");
}

/// A host that picks slots has the same failure contract as `alloc`:
/// nothing taken, nothing charged.
#[test]
fn alloc_at_failures_leave_the_slot_free_and_nothing_charged() {
    let p = StdProvider::new();
    let e = engine(&p, addressed(ChargePolicy::EverySlot));
    *e.host().limit.lock().unwrap() = Some(1);
    e.alloc_at(10, 0, Some(5), S).unwrap();
    assert_eq!(e.alloc_at(11, 0, Some(5), S), Err(Error::NoSpace));
    assert_eq!(e.map().lookup(11).map(|_| ()), Err(Error::NotAllocated));
    assert_eq!(e.host().charges.lock().unwrap()[&5], 1);
    assert_eq!(e.alloc_at(12, 2, Some(5), S), Err(Error::BadCpu));
    assert_eq!(e.alloc_at(0, 0, None, S), Err(Error::OutOfRange));
    assert_eq!(e.alloc_at(4096, 0, None, S), Err(Error::OutOfRange));
    assert_eq!(e.map().lookup(12).map(|_| ()), Err(Error::NotAllocated));
    *e.host().limit.lock().unwrap() = None;
    e.alloc_at(11, 0, Some(5), S).unwrap();
    assert_eq!(e.map().memcg(11), Ok(Some(5)));
    assert_eq!(e.host().charges.lock().unwrap()[&5], 2);
    // Freed: uncharged.
    for s in [10, 11] {
        assert_eq!(e.cache_clear(s, 0, S).unwrap(), Put::Freed);
    }
    assert_eq!(e.host().charges.lock().unwrap()[&5], 0);
    // A virtual engine refuses host-chosen slots.
    let v = engine(&p, cfg(Placement::Deferred, ChargePolicy::None));
    assert_eq!(v.alloc_at(10, 0, None, S), Err(Error::BadConfig));
}
