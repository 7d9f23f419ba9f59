//! A hostile caller of the device free contract, written from its
//! documentation (`PhysDevice::free`, `free_with`): owner-checked
//! single-slot frees, all-or-nothing runs across clusters, racing double
//! frees.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::thread;

use vswap_core::{Ctx, DeviceConfig, Error, Geometry, PhysDevice, StdProvider};

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
