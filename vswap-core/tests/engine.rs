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
}

fn engine(p: &StdProvider, cfg: EngineConfig) -> Engine<&StdProvider, TestHost> {
    Engine::new(cfg, p, TestHost::default()).unwrap()
}

fn cfg(placement: Placement, charge: ChargePolicy) -> EngineConfig {
    EngineConfig {
        map: MapConfig {
            geometry: Geometry::tiny(4, 4096, 2),
        },
        placement,
        charge,
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
    assert_eq!(e.writeout(s, &[0; 5], 0), Err(Error::BadConfig));
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
    assert_eq!(r, Err(Error::Busy));
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
