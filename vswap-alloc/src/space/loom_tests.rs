//! loom model of a free racing a failing allocation's full scan (see "Full
//! spaces" in the module docs). Run with
//! `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg vswap_loom" cargo test -p vswap-alloc --features std --lib --release space::loom_tests`
//! (`LOOM_MAX_PREEMPTIONS` overrides the bound of 3).

extern crate std;
use std::sync::{Arc as StdArc, Mutex as StdMutex};

use loom::sync::Arc;

use super::*;
use crate::StdProvider;

/// A full space of two 2-slot clusters (slots 1, 2, 3 taken by CPU 0).
/// One thread frees slot 2 (lock-free: its cluster is CPU 0's cached
/// one) while CPU 1 allocates, finds nothing listed or free and scans.
/// Either the scan finds slot 2, or the allocation fails and the order
/// is not left marked exhausted: the next allocation gets slot 2.
#[test]
fn a_free_racing_a_full_scan_is_never_lost() {
    let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for fixed in [false, true] {
        let seen = StdArc::new(StdMutex::new([false; 2]));
        let seen2 = seen.clone();
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(bound);
        b.check(move || {
            let policy = Policy {
                fixed,
                ..Policy::default()
            };
            let s = Arc::new(
                SlotSpace::<StdProvider, AtomicU64>::with_policy(
                    Geometry::tiny(1, 4, 2),
                    policy,
                    StdProvider::new(),
                    u64::MAX,
                    &[],
                )
                .unwrap(),
            );
            for want in 1..4 {
                assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 5), Ok(want));
            }
            let s1 = s.clone();
            let t = loom::thread::spawn(move || {
                let pin = s1.pin(2).unwrap();
                assert_eq!(pin.words()[0].swap(0, Ordering::AcqRel), 5);
                // SAFETY: slot 2 was allocated and we zeroed its word.
                unsafe { pin.release(1) };
            });
            let a = s.alloc(0, 1, Ctx::MaySleep, 5);
            t.join().unwrap();
            let mut seen = seen2.lock().unwrap();
            match a {
                Ok(x) => {
                    assert_eq!(x, 2);
                    seen[0] = true;
                }
                Err(e) => {
                    assert_eq!(e, Error::NoSpace);
                    assert_eq!(s.alloc(0, 1, Ctx::MaySleep, 5), Ok(2), "room lost");
                    seen[1] = true;
                }
            }
        });
        let seen = *seen.lock().unwrap();
        assert_eq!(seen, [true, true], "fixed {fixed}: both outcomes reached");
    }
}

/// CPU 1 needs a whole cluster (order 1) and takes back the empty
/// cluster CPU 0 caches, while CPU 0 allocates from that cluster: no
/// slot goes out twice, every slot holds its allocator's value, the
/// cluster is not torn down while CPU 0 claims in it, and everything
/// comes back at the end.
#[test]
fn taking_back_a_cached_cluster_races_its_cpu() {
    let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seen = StdArc::new(StdMutex::new([false; 2]));
    let seen2 = seen.clone();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.check(move || {
        let s = Arc::new(
            SlotSpace::new(Geometry::tiny(1, 4, 2), StdProvider::new(), u64::MAX).unwrap(),
        );
        // Slot 1 in cluster 0; cluster 1 cached by CPU 0, emptied.
        assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 5), Ok(1));
        assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 5), Ok(2));
        let free = |s: &SlotSpace<StdProvider>, slot: u32, n: u32| {
            let pin = s.pin(slot).unwrap();
            let off = (slot - pin.base()) as usize;
            for w in &pin.words()[off..off + n as usize] {
                assert_ne!(w.swap(0, Ordering::AcqRel), 0);
            }
            // SAFETY: the words were allocated (checked) and we zeroed them.
            unsafe { pin.release(n) };
        };
        free(&s, 2, 1);
        let s1 = s.clone();
        let t = loom::thread::spawn(move || s1.alloc(1, 1, Ctx::MaySleep, 6));
        let a = s.alloc(0, 0, Ctx::MaySleep, 5);
        let b = t.join().unwrap();
        let mut seen = seen2.lock().unwrap();
        match (a, b) {
            (Ok(a), Err(Error::NoSpace)) => {
                assert!(a == 2 || a == 3, "{a}");
                seen[0] = true;
            }
            (Err(Error::NoSpace), Ok(2)) => seen[1] = true,
            r => panic!("{r:?}"),
        }
        if let Ok(2) = b {
            let pin = s.pin(2).unwrap();
            assert_eq!(pin.words()[0].load(Ordering::Acquire), 6);
            assert_eq!(pin.words()[1].load(Ordering::Acquire), 6);
            drop(pin);
            free(&s, 2, 2);
        }
        if let Ok(a) = a {
            let pin = s.pin(a).unwrap();
            assert_eq!(pin.words()[(a & 1) as usize].load(Ordering::Acquire), 5);
            drop(pin);
            free(&s, a, 1);
        }
        free(&s, 1, 1);
        s.trim();
        assert_eq!(s.memory().live_clusters, 1, "only cluster 0 (slot 0)");
    });
    let seen = *seen.lock().unwrap();
    assert_eq!(seen, [true, true], "both outcomes reached");
}

/// Two threads share CPU number 0 (allowed: only speed may suffer) on a
/// device with discard, two 2-slot clusters, nothing allocated yet but
/// cluster 0 (slot 1) cached by CPU 0. A and B allocate order 0 on CPU
/// 0: one claims slot 1, the other misses and makes cluster 1 live for
/// the cache (fresh). C needs a whole cluster on CPU 1, finds none and
/// looks for an emptied cached cluster to take back. Nothing is ever
/// freed here, so no cluster may go to the discard queue: a fresh
/// cluster must not be taken back before its first claim, whatever
/// order the sharing threads store their cursor in (the review's
/// interleaving: B's late cursor store cleared A's mark for cluster 1
/// when the mark lived in the cursor).
#[test]
fn a_fresh_cluster_on_a_shared_cpu_number_is_not_taken_back() {
    let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.check(move || {
        let policy = Policy {
            fixed: true,
            discard: true,
            rotational: false,
            addressed: false,
        };
        let s = Arc::new(
            SlotSpace::<StdProvider>::with_policy(
                Geometry::tiny(1, 4, 2),
                policy,
                StdProvider::new(),
                u64::MAX,
                &[],
            )
            .unwrap(),
        );
        let (s1, s2) = (s.clone(), s.clone());
        let ta = loom::thread::spawn(move || s1.alloc(0, 0, Ctx::NoSleep, 5));
        let tc = loom::thread::spawn(move || s2.alloc(1, 1, Ctx::NoSleep, 7));
        let b = s.alloc(0, 0, Ctx::NoSleep, 6);
        let (a, c) = (ta.join().unwrap(), tc.join().unwrap());
        for r in [a, b, c] {
            assert!(
                matches!(r, Ok(_) | Err(Error::NoSpace)),
                "{a:?} {b:?} {c:?}"
            );
        }
        assert_eq!(
            s.take_discard(),
            None,
            "nothing was freed: {a:?} {b:?} {c:?}"
        );
    });
}

/// Issue 14: failing allocations no longer scan every cluster, so a free
/// into a cluster on the full list is found through the lists only (the
/// free moves it to `nonfull`; a refill looks there before the exhausted
/// marks). A full
/// space of three 2-slot clusters (slots 1..=5 taken by CPU 0, whose cache
/// holds the last cluster; the others are on the full list). One thread
/// frees slot 2 (cluster 1: it moves to `nonfull[0]`) while CPU 1
/// allocates and finds nothing listed or free. Either it gets slot 2, or it
/// fails and the next allocation gets slot 2: the room is never lost.
#[test]
fn a_free_into_a_full_listed_cluster_racing_a_failing_allocation_is_never_lost() {
    let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for fixed in [false, true] {
        let seen = StdArc::new(StdMutex::new([false; 2]));
        let seen2 = seen.clone();
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(bound);
        b.check(move || {
            let policy = Policy {
                fixed,
                ..Policy::default()
            };
            let s = Arc::new(
                SlotSpace::<StdProvider, AtomicU64>::with_policy(
                    Geometry::tiny(1, 6, 2),
                    policy,
                    StdProvider::new(),
                    u64::MAX,
                    &[],
                )
                .unwrap(),
            );
            for want in 1..6 {
                assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 5), Ok(want));
            }
            assert!(matches!(
                s.cluster_state(1),
                ClusterState::Live { full: true, .. }
            ));
            let s1 = s.clone();
            let t = loom::thread::spawn(move || {
                let pin = s1.pin(2).unwrap();
                assert_eq!(pin.words()[0].swap(0, Ordering::AcqRel), 5);
                // SAFETY: slot 2 was allocated and we zeroed its word.
                unsafe { pin.release(1) };
            });
            let a = s.alloc(0, 1, Ctx::MaySleep, 5);
            t.join().unwrap();
            let mut seen = seen2.lock().unwrap();
            match a {
                Ok(x) => {
                    assert_eq!(x, 2);
                    seen[0] = true;
                }
                Err(e) => {
                    assert_eq!(e, Error::NoSpace);
                    assert_eq!(s.alloc(0, 1, Ctx::MaySleep, 5), Ok(2), "room lost");
                    seen[1] = true;
                }
            }
        });
        let seen = *seen.lock().unwrap();
        assert_eq!(seen, [true, true], "fixed {fixed}: both outcomes reached");
    }
}

/// The same on a device, where an order-0 request takes a slot from a
/// listed cluster of another order (the `listed` bitmap, looked at only
/// after the exhausted marks): CPU 0 holds slot 1 (order 0) and slots 2..=5
/// (two order-1 runs; cluster 1 is on the full list). One thread frees slot
/// 2 (cluster 1 moves to `nonfull[1]`) while CPU 1 allocates order 0.
/// Either it gets slot 2, or it fails and the next one does: the free moves
/// the cluster before it reads the scan's announcement, so the scan either
/// finds the cluster or has its exhausted mark cleared.
#[test]
fn a_free_into_another_orders_full_cluster_racing_an_order0_steal_is_never_lost() {
    let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seen = StdArc::new(StdMutex::new([false; 2]));
    let seen2 = seen.clone();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.check(move || {
        let policy = Policy {
            fixed: true,
            ..Policy::default()
        };
        let s = Arc::new(
            SlotSpace::<StdProvider, AtomicU64>::with_policy(
                Geometry::tiny(1, 6, 2),
                policy,
                StdProvider::new(),
                u64::MAX,
                &[],
            )
            .unwrap(),
        );
        assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 5), Ok(1));
        assert_eq!(s.alloc(1, 0, Ctx::MaySleep, 5), Ok(2));
        assert_eq!(s.alloc(1, 0, Ctx::MaySleep, 5), Ok(4));
        assert!(matches!(
            s.cluster_state(1),
            ClusterState::Live {
                order: 1,
                full: true,
                ..
            }
        ));
        let s1 = s.clone();
        let t = loom::thread::spawn(move || {
            let pin = s1.pin(2).unwrap();
            assert_eq!(pin.words()[0].swap(0, Ordering::AcqRel), 5);
            // SAFETY: slot 2 was allocated and we zeroed its word.
            unsafe { pin.release(1) };
        });
        let a = s.alloc(0, 1, Ctx::MaySleep, 5);
        t.join().unwrap();
        let mut seen = seen2.lock().unwrap();
        match a {
            Ok(x) => {
                assert_eq!(x, 2);
                seen[0] = true;
            }
            Err(e) => {
                assert_eq!(e, Error::NoSpace);
                assert_eq!(s.alloc(0, 1, Ctx::MaySleep, 5), Ok(2), "room lost");
                seen[1] = true;
            }
        }
    });
    let seen = *seen.lock().unwrap();
    assert_eq!(seen, [true, true], "both outcomes reached");
}

/// Issue 14: a device files an order-0 cluster it lets go of by its
/// references, not its words (`file`), so a short-lived reference (a
/// steal's or a failed claim's) can make a cluster with a free slot look
/// full to the filing. A device of three 2-slot clusters: CPU 0 holds slots
/// 2, 3 and 5; slot 4 is free in its cached cluster 2 and slot 1 in cluster
/// 0 (`nonfull`). One thread takes and drops a reference on cluster 2 while
/// CPU 0 allocates: it gets slot 4, or (the reference hiding it) moves to
/// cluster 0 for slot 1 and files cluster 2. Either way the next allocation
/// gets the other slot: the drop moves a cluster filed `full` meanwhile (or
/// being filed: it waits for the list lock) to `nonfull`.
#[test]
fn a_short_lived_reference_racing_an_order0_filing_never_loses_the_slot() {
    let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seen = StdArc::new(StdMutex::new([false; 2]));
    let seen2 = seen.clone();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.check(move || {
        let policy = Policy {
            fixed: true,
            ..Policy::default()
        };
        let mut space = SlotSpace::<StdProvider, AtomicU64>::with_policy(
            Geometry::tiny(1, 6, 2),
            policy,
            StdProvider::new(),
            u64::MAX,
            &[],
        )
        .unwrap();
        // As `PhysDevice` does: order-0 clusters filed by their references.
        space.own_words();
        let s = Arc::new(space);
        for want in 1..6 {
            assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 5), Ok(want));
        }
        for slot in [4, 1] {
            let pin = s.pin(slot).unwrap();
            let off = (slot - pin.base()) as usize;
            assert_eq!(pin.words()[off].swap(0, Ordering::AcqRel), 5);
            // SAFETY: the slot was allocated and we zeroed its word.
            unsafe { pin.release(1) };
        }
        let s1 = s.clone();
        let t = loom::thread::spawn(move || {
            let e = s1.entry(2).unwrap();
            if e.try_ref(1, None) {
                s1.unref(2, e, 1, false);
            }
        });
        let a = s.alloc(0, 0, Ctx::MaySleep, 5);
        t.join().unwrap();
        let b = s.alloc(0, 0, Ctx::MaySleep, 5);
        let mut seen = seen2.lock().unwrap();
        match a {
            Ok(4) => {
                assert_eq!(b, Ok(1), "slot 1 lost");
                seen[0] = true;
            }
            Ok(1) => {
                assert_eq!(b, Ok(4), "slot 4 lost");
                seen[1] = true;
            }
            other => panic!("allocation got {other:?}"),
        }
        assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 5), Err(Error::NoSpace));
    });
    let seen = *seen.lock().unwrap();
    assert_eq!(seen, [true, true], "both outcomes reached");
}

fn addressed(clusters: u64) -> SlotSpace<StdProvider, AtomicU64> {
    let policy = Policy {
        addressed: true,
        ..Policy::default()
    };
    SlotSpace::with_policy(
        Geometry::tiny(1, 2 * clusters, 2),
        policy,
        StdProvider::new(),
        u64::MAX,
        &[],
    )
    .unwrap()
}

fn preemptions() -> usize {
    std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Addressed spaces (`addressed`): slot 3 is the only slot taken in
/// cluster 1; one thread frees it (the cluster dies: `DYING`, then
/// `RETIRING`, then perhaps `FREE` with its table gone) while another
/// takes slot 2 of the same cluster. The take always succeeds, on the
/// live cluster, the retiring one taken back, or a new table; slot 2
/// then reads its value, slot 3 is free, and when slot 2 goes too every
/// table is given back.
#[test]
fn alloc_at_racing_the_free_of_its_clusters_last_slot() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions());
    b.check(|| {
        let s = Arc::new(addressed(2));
        let base = s.memory().words;
        s.alloc_at(3, 5, Ctx::MaySleep).unwrap();
        let s1 = s.clone();
        let t = loom::thread::spawn(move || {
            let pin = s1.pin(3).unwrap();
            assert_eq!(pin.words()[1].swap(0, Ordering::AcqRel), 5);
            // SAFETY: slot 3 was allocated and we zeroed its word.
            unsafe { pin.release(1) };
        });
        assert_eq!(s.alloc_at(2, 6, Ctx::MaySleep), Ok(()));
        t.join().unwrap();
        let pin = s.pin(2).unwrap();
        assert_eq!(pin.words()[0].load(Ordering::Relaxed), 6);
        assert_eq!(pin.words()[1].load(Ordering::Relaxed), 0);
        assert_eq!(pin.words()[0].swap(0, Ordering::AcqRel), 6);
        // SAFETY: slot 2 was allocated and we zeroed its word.
        unsafe { pin.release(1) };
        s.poll_all();
        let m = s.memory();
        assert_eq!(
            (m.live_clusters, m.retiring_clusters, m.words),
            (0, 0, base)
        );
    });
}

/// Two takes in a cluster that has no table yet (each may make one with
/// the list lock dropped): both succeed, one table is published and the
/// other given back; two takes of one slot: exactly one wins.
#[test]
fn alloc_at_racing_alloc_at() {
    for same in [false, true] {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(preemptions());
        b.check(move || {
            let s = Arc::new(addressed(2));
            let s1 = s.clone();
            let theirs = if same { 2 } else { 3 };
            let t = loom::thread::spawn(move || s1.alloc_at(theirs, 7, Ctx::MaySleep));
            let mine = s.alloc_at(2, 6, Ctx::MaySleep);
            let other = t.join().unwrap();
            let pin = s.pin(2).unwrap();
            if same {
                assert!(mine.is_ok() != other.is_ok(), "{mine:?} {other:?}");
                let lost = if mine.is_ok() { other } else { mine };
                assert_eq!(lost, Err(Error::WrongState));
                let want = if mine.is_ok() { 6 } else { 7 };
                assert_eq!(pin.words()[0].load(Ordering::Relaxed), want);
            } else {
                assert_eq!((mine, other), (Ok(()), Ok(())));
                assert_eq!(pin.words()[0].load(Ordering::Relaxed), 6);
                assert_eq!(pin.words()[1].load(Ordering::Relaxed), 7);
            }
            drop(pin);
            // One table (two 8-byte words) for cluster 1, and the loser's
            // given back: the provider holds what the same takes made one
            // after the other do.
            let m = s.memory();
            assert_eq!((m.live_clusters, m.words), (1, 16));
            let r = addressed(2);
            r.alloc_at(2, 6, Ctx::MaySleep).unwrap();
            let _ = r.alloc_at(theirs, 7, Ctx::MaySleep);
            assert_eq!(s.provider().bytes_in_use(), r.provider().bytes_in_use());
        });
    }
}
