//! A hostile caller of the device free contract and of the device holds,
//! written from their documentation (`PhysDevice::free`, `free_with`;
//! `Devices` in `vswap_core::devices`): owner-checked single-slot frees,
//! all-or-nothing runs across clusters, racing double frees, holds on every
//! stripe against the three removals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use vswap_core::{
    Ctx, DeviceConfig, Devices, Error, Geometry, HOLD_STRIPES, PhysDevice, StdProvider,
};

const S: Ctx = Ctx::MaySleep;

type Dev = PhysDevice<StdProvider>;

/// A device of `slots` slots in clusters of `2^shift`, with `bad` slots.
fn dev(slots: u64, shift: u32, cpus: u32, bad: &[u64]) -> Dev {
    let cfg = DeviceConfig {
        geometry: Geometry {
            cluster_shift: shift,
            slots,
            cpus,
            ..Geometry::default()
        },
        discard: false,
        rotational: false,
    };
    PhysDevice::new(cfg, bad, StdProvider::new()).unwrap()
}

/// Every slot's owner (`None`: free or reserved).
fn owners(d: &Dev) -> Vec<Option<u32>> {
    (0..d.slots()).map(|o| d.owner(o).unwrap()).collect()
}

/// Fill the device with order-0 slots (owners from 1000), then give the
/// run `off..off + len` the owners `owner..` (`set_owner`).
fn fill_with_run(d: &Dev, off: u64, len: u64, owner: u32) {
    let mut n = 1000;
    while d.alloc(0, 0, n, S).is_ok() {
        n += 1;
    }
    for i in 0..len {
        let cur = d.owner(off + i).unwrap().expect("allocated");
        d.set_owner(off + i, cur, owner + i as u32).unwrap();
    }
}

#[test]
fn a_single_slot_free_is_its_owner_check() {
    let d = dev(64, 3, 1, &[]);
    let a = d.alloc(0, 0, 100, S).unwrap();
    let used = d.stats().used;
    // Another owner, owner 0, the reserved marker, an owner past 32 bits'
    // reach: refused, nothing changes.
    assert_eq!(d.free(a, 1, Some(101)), Err(Error::WrongState));
    assert_eq!(d.free(a, 1, Some(0)), Err(Error::WrongState));
    assert_eq!(d.free(a, 1, Some(u32::MAX)), Err(Error::WrongState));
    assert_eq!(d.owner(a), Ok(Some(100)));
    assert_eq!(d.stats().used, used);
    let mut seen = Vec::new();
    assert_eq!(d.free_with(a, 1, Some(100), |o| seen.push(o)), Ok(1));
    assert_eq!(seen, [a]);
    assert_eq!(d.stats().used, used - 1);
    // Double free: the check's error, nothing reported.
    seen.clear();
    assert_eq!(
        d.free_with(a, 1, Some(100), |o| seen.push(o)),
        Err(Error::NotAllocated)
    );
    assert_eq!(d.free(a, 1, None), Err(Error::NotAllocated));
    assert_eq!(d.free(a, 1, Some(0)), Err(Error::NotAllocated));
    assert!(seen.is_empty());
    // Handed to a new owner: the old owner's late free leaves it alone.
    let b = d.alloc(0, 0, 200, S).unwrap();
    assert_eq!(d.free(b, 1, Some(100)), Err(Error::WrongState));
    assert_eq!(d.owner(b), Ok(Some(200)));
    // Without an owner: whatever allocated value is there.
    assert_eq!(d.free(b, 1, None), Ok(1));
    assert_eq!(d.stats().used, used - 1);
}

#[test]
fn frees_refuse_offsets_and_slots_they_do_not_own() {
    let d = dev(37, 3, 1, &[5]);
    let used = d.stats().used;
    let before = owners(&d);
    for (off, len, owner) in [
        (0, 1, Some(1)),
        (0, 0, None),
        (37, 1, Some(1)),
        (36, 2, Some(1)),
        (u64::MAX, 2, None),
        (1, u64::MAX, None),
    ] {
        assert_eq!(
            d.free(off, len, owner),
            Err(Error::OutOfRange),
            "{off} {len}"
        );
    }
    // The bad slot and never-allocated ones are not allocated, whatever
    // owner is claimed (u32::MAX is the reserved marker).
    for owner in [None, Some(1), Some(u32::MAX)] {
        assert_eq!(d.free(5, 1, owner), Err(Error::NotAllocated));
        assert_eq!(d.free(4, 2, owner), Err(Error::NotAllocated));
        assert_eq!(d.free(9, 1, owner), Err(Error::NotAllocated));
    }
    // The last slot of the last (partial) cluster.
    assert_eq!(d.free(36, 1, None), Err(Error::NotAllocated));
    assert_eq!(d.free(1, 0, Some(3)), Ok(0));
    assert_eq!(owners(&d), before);
    assert_eq!(d.stats().used, used);
}

#[test]
fn owners_that_run_into_the_reserved_marker_or_past_32_bits_free_nothing() {
    let d = dev(64, 3, 1, &[]);
    fill_with_run(&d, 8, 2, u32::MAX - 2);
    let before = owners(&d);
    // Slot 10 would have to belong to u32::MAX (the reserved marker, which
    // no virtual slot can be): the run is refused as a whole, and so is one
    // that would run past 2^32.
    assert_eq!(d.free(8, 3, Some(u32::MAX - 2)), Err(Error::WrongState));
    assert_eq!(d.free(9, 4, Some(u32::MAX - 1)), Err(Error::WrongState));
    assert_eq!(owners(&d), before);
    assert_eq!(d.free(8, 2, Some(u32::MAX - 2)), Ok(2));
}

#[test]
fn a_run_across_clusters_with_one_bad_slot_is_left_untouched() {
    // Clusters of 8; the run 6..22 covers the end of cluster 0, all of
    // cluster 1 and the start of cluster 2.
    let (off, len, owner) = (6u64, 16u64, 500u32);
    for bad in 0..len {
        for kind in ["free", "other owner", "next owner"] {
            let d = dev(64, 3, 2, &[]);
            fill_with_run(&d, off, len, owner);
            let s = off + bad;
            let me = owner + bad as u32;
            let want = match kind {
                "free" => {
                    d.free(s, 1, Some(me)).unwrap();
                    Error::NotAllocated
                }
                "other owner" => {
                    d.set_owner(s, me, 77).unwrap();
                    Error::WrongState
                }
                _ => {
                    // Off by one: the owner a shifted run would have.
                    d.set_owner(s, me, me + 1).unwrap();
                    Error::WrongState
                }
            };
            let before = owners(&d);
            let used = d.stats().used;
            let mut seen = Vec::new();
            assert_eq!(
                d.free_with(off, len, Some(owner), |o| seen.push(o)),
                Err(want),
                "bad slot {s} ({kind})"
            );
            assert!(seen.is_empty(), "bad slot {s} ({kind}): reported {seen:?}");
            assert_eq!(owners(&d), before, "bad slot {s} ({kind})");
            assert_eq!(d.stats().used, used);
            if kind == "free" {
                // Without an owner only allocation is checked.
                assert_eq!(d.free(off, len, None), Err(Error::NotAllocated));
                assert_eq!(owners(&d), before);
            }
        }
    }
    // The errors come from the lowest failing slot.
    let d = dev(64, 3, 2, &[]);
    fill_with_run(&d, off, len, owner);
    d.set_owner(7, owner + 1, 77).unwrap();
    d.free(20, 1, Some(owner + 14)).unwrap();
    assert_eq!(d.free(off, len, Some(owner)), Err(Error::WrongState));
    let d = dev(64, 3, 2, &[]);
    fill_with_run(&d, off, len, owner);
    d.free(7, 1, Some(owner + 1)).unwrap();
    d.set_owner(20, owner + 14, 77).unwrap();
    assert_eq!(d.free(off, len, Some(owner)), Err(Error::NotAllocated));
    // A good run: everything freed, reported once each in offset order, and
    // nothing outside it.
    let d = dev(64, 3, 2, &[]);
    fill_with_run(&d, off, len, owner);
    let mut before = owners(&d);
    let used = d.stats().used;
    let mut seen = Vec::new();
    assert_eq!(
        d.free_with(off, len, Some(owner), |o| seen.push(o)),
        Ok(len)
    );
    assert_eq!(seen, (off..off + len).collect::<Vec<_>>());
    for o in off..off + len {
        before[o as usize] = None;
    }
    assert_eq!(owners(&d), before);
    assert_eq!(d.stats().used, used - len);
}

#[test]
fn racing_double_frees_free_each_slot_once_and_spare_the_next_owner() {
    let rounds = if cfg!(miri) { 5 } else { 300 };
    let d = Arc::new(dev(64, 3, 4, &[]));
    for round in 0..rounds {
        let len = [1u64, 3, 8][round % 3];
        let order = len.next_power_of_two().trailing_zeros();
        let off = d.alloc(order, 0, 100, S).unwrap();
        // Free the first `len` slots twice at once, from 3 threads; a
        // fourth allocates single slots for owner 900 meanwhile.
        let frees: Vec<_> = (0..3)
            .map(|_| {
                let d = d.clone();
                thread::spawn(move || {
                    let mut got = Vec::new();
                    let r = d.free_with(off, len, Some(100), |o| got.push(o));
                    (r, got)
                })
            })
            .collect();
        let d2 = d.clone();
        let taker = thread::spawn(move || {
            let mut mine = Vec::new();
            for _ in 0..4 {
                if let Ok(o) = d2.alloc(0, 1, 900, S) {
                    mine.push(o);
                }
            }
            mine
        });
        let mut total = 0;
        let mut all = Vec::new();
        for t in frees {
            let (r, got) = t.join().unwrap();
            match r {
                Ok(n) => assert_eq!(n, got.len() as u64),
                Err(e) => {
                    assert!(
                        matches!(e, Error::NotAllocated | Error::WrongState),
                        "{e:?}"
                    );
                    assert!(got.is_empty());
                }
            }
            total += got.len() as u64;
            all.extend(got);
        }
        all.sort_unstable();
        all.dedup();
        assert_eq!(total, len, "round {round}: each slot freed once");
        assert_eq!(all.len() as u64, len);
        for o in taker.join().unwrap() {
            assert_eq!(d.owner(o), Ok(Some(900)), "the next owner's slot kept");
            d.free(o, 1, Some(900)).unwrap();
        }
        // The rest of the allocation (order rounded up) is still there.
        for o in off + len..off + (1 << order) {
            assert_eq!(d.free(o, 1, Some(100 + (o - off) as u32)), Ok(1));
        }
    }
    assert_eq!(d.stats().used, 0);
}

/// A table with device 0 holding one allocated slot (owner 7).
fn table() -> (Devices<StdProvider>, u64) {
    let t = Devices::new();
    let d = dev(64, 3, 2, &[]);
    let off = d.alloc(0, 0, 7, S).unwrap();
    t.add(0, 3, d).unwrap();
    (t, off)
}

#[test]
fn a_hold_on_any_stripe_blocks_every_removal_without_failing_holds() {
    let (t, off) = table();
    for stripe in 0..HOLD_STRIPES as u32 + 3 {
        let held = t.pin_on(0, stripe).unwrap();
        assert_eq!(t.remove(0).err(), Some(Error::Busy));
        assert_eq!(t.remove_empty(0).err(), Some(Error::Busy));
        // The removals gave up: holds on every stripe (and the hashed one)
        // still succeed, and the device is still listed.
        for s in 0..HOLD_STRIPES as u32 {
            assert_eq!(t.pin_on(0, s).unwrap().owner(off), Ok(Some(7)));
        }
        assert_eq!(t.pin(0).unwrap().id(), 0);
        assert_eq!(t.priority(0), Some(3));
        drop(held);
    }
    // Many holds on one stripe, and on the hashed stripe.
    let holds: Vec<_> = (0..100).map(|_| t.pin_on(0, 5).unwrap()).collect();
    let h = t.pin(0).unwrap();
    assert_eq!(t.remove(0).err(), Some(Error::Busy));
    drop(holds);
    assert_eq!(t.remove(0).err(), Some(Error::Busy));
    drop(h);
    // remove_empty refuses a device holding data, then allocation works.
    assert_eq!(t.remove_empty(0).err(), Some(Error::Busy));
    assert!(t.pin(0).unwrap().alloc(0, 0, 8, S).is_ok());
    let d = t.remove(0).unwrap();
    assert_eq!(d.stats().used, 2);
    for s in 0..HOLD_STRIPES as u32 {
        assert_eq!(t.pin_on(0, s).err(), Some(Error::NoDevice));
    }
    assert_eq!(t.remove(0).err(), Some(Error::NoDevice));
    assert_eq!(t.remove_wait(0).err(), Some(Error::NoDevice));
    // Added again: fast holds again.
    t.add(0, 1, d).unwrap();
    assert_eq!(t.pin_on(0, 1).unwrap().owner(off), Ok(Some(7)));
    assert_eq!(
        t.add(0, 1, dev(64, 3, 1, &[])).err(),
        Some(Error::WrongState)
    );
}

#[test]
fn remove_wait_waits_for_a_hold_on_another_thread() {
    let (t, _) = table();
    let t = Arc::new(t);
    let dropped = Arc::new(AtomicBool::new(false));
    let (t2, d2) = (t.clone(), dropped.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let holder = thread::spawn(move || {
        let pin = t2.pin_on(0, 3).unwrap();
        tx.send(()).unwrap();
        thread::sleep(Duration::from_millis(if cfg!(miri) { 1 } else { 50 }));
        d2.store(true, Ordering::SeqCst);
        drop(pin);
    });
    rx.recv().unwrap();
    let dev = t.remove_wait(0).unwrap();
    assert!(dropped.load(Ordering::SeqCst), "removed under a hold");
    assert_eq!(dev.stats().used, 1);
    holder.join().unwrap();
    assert_eq!(t.pin_on(0, 3).err(), Some(Error::NoDevice));
}

/// Holders on every stripe (and hashed) hammer the device while a remover
/// removes it (all three ways) and adds it back: a successful removal never
/// overlaps a hold, and a hold fails only while a removal is running or the
/// device is out (that a removal that gives up fails none is the loom model
/// `e4d_device_hold_vs_removal`).
#[test]
fn holds_race_removals_and_re_adds() {
    let rounds = if cfg!(miri) { 20 } else { 500 };
    let (t, off) = table();
    let t = Arc::new(t);
    // In a hold, counted after taking it and before dropping it.
    let inside = Arc::new(AtomicU64::new(0));
    // Odd while a removal may succeed or the device is out.
    let phase = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Holds taken so far (the remover waits for new ones between rounds).
    let total = Arc::new(AtomicU64::new(0));
    let holders: Vec<_> = (0..3u32)
        .map(|k| {
            let (t, inside, phase, stop, total) = (
                t.clone(),
                inside.clone(),
                phase.clone(),
                stop.clone(),
                total.clone(),
            );
            thread::spawn(move || {
                let mut n = 0u64;
                let mut held = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let p0 = phase.load(Ordering::SeqCst);
                    let r = if n % 4 == 0 {
                        t.pin(0)
                    } else {
                        t.pin_on(0, k.wrapping_mul(7).wrapping_add(n as u32))
                    };
                    match r {
                        Ok(p) => {
                            inside.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(p.owner(off), Ok(Some(7)));
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(p);
                            held += 1;
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert_eq!(e, Error::NoDevice);
                            let p1 = phase.load(Ordering::SeqCst);
                            assert!(
                                p0 % 2 == 1 || p0 != p1,
                                "a hold failed while no removal could succeed"
                            );
                        }
                    }
                    n += 1;
                }
                held
            })
        })
        .collect();
    let mut removed = 0;
    for round in 0..rounds {
        let seen = total.load(Ordering::Relaxed);
        while total.load(Ordering::Relaxed) == seen {
            thread::yield_now();
        }
        phase.fetch_add(1, Ordering::SeqCst); // odd: may succeed
        let r = match round % 3 {
            0 => t.remove(0),
            1 => t.remove_empty(0),
            _ => t.remove_wait(0),
        };
        match r {
            Ok(d) => {
                assert_eq!(inside.load(Ordering::SeqCst), 0, "removed under a hold");
                assert_ne!(round % 3, 1, "remove_empty took a device holding data");
                removed += 1;
                t.add(0, 3, d).unwrap();
            }
            Err(e) => assert_eq!(e, Error::Busy),
        }
        phase.fetch_add(1, Ordering::SeqCst); // even: present, no removal
    }
    stop.store(true, Ordering::SeqCst);
    let held: u64 = holders.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(removed > 0 && held > 0, "removed {removed}, held {held}");
    // remove_empty never took the device: it holds slot `off`.
    assert_eq!(t.remove(0).unwrap().stats().used, 1);
}
