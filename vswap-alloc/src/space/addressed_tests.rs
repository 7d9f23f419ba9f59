//! Tests of addressed spaces (`alloc_at`), written from its documentation:
//! what a host that chooses its own slots can do to it.

extern crate std;
use std::collections::HashSet;
use std::vec::Vec;

use super::*;
use crate::StdProvider;

const INIT: u64 = 0x20;
const ADDRESSED: Policy = Policy {
    fixed: false,
    discard: false,
    rotational: false,
    addressed: true,
};

fn space(p: &StdProvider, shift: u32, clusters: u32) -> SlotSpace<&StdProvider> {
    SlotSpace::with_policy(
        Geometry::tiny(shift, u64::from(clusters << shift), 2),
        ADDRESSED,
        p,
        u64::MAX,
        &[],
    )
    .unwrap()
}

/// Free `slot` as the map does: its word's CAS to 0, then the release.
fn free(s: &SlotSpace<&StdProvider>, slot: u32) {
    let pin = s.pin(slot).unwrap();
    let off = (slot - pin.base()) as usize;
    assert_eq!(pin.words()[off].swap(0, Ordering::AcqRel), INIT);
    // SAFETY: the word was allocated (checked) and we zeroed it.
    unsafe { pin.release(1) };
}

fn settle(s: &SlotSpace<&StdProvider>) {
    let t = std::time::Instant::now();
    while {
        s.poll_all();
        s.memory().retiring_clusters != 0
    } {
        assert!(t.elapsed().as_secs() < 10, "grace periods never ended");
        std::thread::yield_now();
    }
}

#[test]
fn alloc_at_takes_exactly_the_slot_asked_for_once() {
    let p = StdProvider::new();
    let s = space(&p, 3, 8);
    for slot in [5u32, 6, 63, 9, 8] {
        assert_eq!(s.alloc_at(slot, INIT, Ctx::MaySleep), Ok(()));
        let pin = s.pin(slot).unwrap();
        assert_eq!(
            pin.words()[(slot - pin.base()) as usize].load(Ordering::Relaxed),
            INIT
        );
    }
    // Taken: refused, nothing changed.
    let before = s.memory();
    assert_eq!(
        s.alloc_at(6, INIT + 1, Ctx::MaySleep),
        Err(Error::WrongState)
    );
    let pin = s.pin(6).unwrap();
    assert_eq!(pin.words()[6].load(Ordering::Relaxed), INIT);
    drop(pin);
    assert_eq!(s.memory(), before);
    // Neighbours in the same cluster are still free.
    assert_eq!(s.alloc_at(7, INIT, Ctx::MaySleep), Ok(()));
    // Only the clusters touched are live.
    let live: Vec<u32> = (0..8)
        .filter(|&c| matches!(s.cluster_state(c), ClusterState::Live { .. }))
        .collect();
    assert_eq!(live, [0, 1, 7]);
    let c = s.list_counts();
    assert_eq!((c.free, c.other, c.nonfull + c.frag + c.full), (5, 3, 0));
}

#[test]
fn bad_arguments_are_errors_and_change_nothing() {
    let p = StdProvider::new();
    let s = space(&p, 3, 4);
    let bytes = p.bytes_in_use();
    assert_eq!(s.alloc_at(0, INIT, Ctx::MaySleep), Err(Error::OutOfRange));
    assert_eq!(s.alloc_at(32, INIT, Ctx::MaySleep), Err(Error::OutOfRange));
    assert_eq!(
        s.alloc_at(u32::MAX, INIT, Ctx::MaySleep),
        Err(Error::OutOfRange)
    );
    assert_eq!(s.alloc_at(3, 0, Ctx::MaySleep), Err(Error::BadConfig));
    // The per-CPU allocator is off.
    for order in 0..3 {
        assert_eq!(
            s.alloc(order, 0, Ctx::MaySleep, INIT),
            Err(Error::BadConfig)
        );
    }
    assert_eq!(p.bytes_in_use(), bytes);
    // Narrow words: a value wider than the word.
    let n: SlotSpace<&StdProvider, AtomicU32> =
        SlotSpace::with_policy(Geometry::tiny(3, 32, 1), ADDRESSED, &p, 1, &[]).unwrap();
    assert_eq!(
        n.alloc_at(3, 1 << 32, Ctx::MaySleep),
        Err(Error::PayloadTooWide)
    );
    assert_eq!(n.alloc_at(3, 9, Ctx::MaySleep), Ok(()));
    // Not addressed: refused; addressed and fixed together: refused.
    let v = SlotSpace::new(Geometry::tiny(3, 32, 1), &p, u64::MAX).unwrap();
    assert_eq!(v.alloc_at(3, INIT, Ctx::MaySleep), Err(Error::BadConfig));
    let both = Policy {
        fixed: true,
        ..ADDRESSED
    };
    assert!(matches!(
        SlotSpace::<_, AtomicU64>::with_policy(Geometry::tiny(3, 32, 1), both, &p, 1, &[]),
        Err(Error::BadConfig)
    ));
}

#[test]
fn out_of_memory_leaves_the_space_unchanged() {
    let p = StdProvider::new();
    let s = space(&p, 3, 4);
    s.alloc_at(1, INIT, Ctx::MaySleep).unwrap();
    let bytes = p.bytes_in_use();
    p.fail_after(Some(0));
    assert_eq!(s.alloc_at(9, INIT, Ctx::MaySleep), Err(Error::NoMem));
    // A live cluster needs no memory.
    assert_eq!(s.alloc_at(2, INIT, Ctx::MaySleep), Ok(()));
    p.fail_after(None);
    assert_eq!(p.bytes_in_use(), bytes);
    assert_eq!(s.cluster_state(1), ClusterState::Free);
    p.again_on_nosleep(true);
    assert_eq!(s.alloc_at(9, INIT, Ctx::NoSleep), Err(Error::Again));
    p.again_on_nosleep(false);
    assert_eq!(s.alloc_at(9, INIT, Ctx::NoSleep), Ok(()));
}

#[test]
fn tables_are_made_on_demand_and_go_back_with_the_last_slot() {
    let p = StdProvider::new();
    // 2^20 slots of 512-slot clusters: nothing but the directory's top
    // arrays until a slot is taken.
    let s = SlotSpace::with_policy(Geometry::tiny(9, 1 << 20, 2), ADDRESSED, &p, u64::MAX, &[])
        .unwrap();
    let empty = p.bytes_in_use();
    let n = if cfg!(miri) { 12 } else { 200 };
    let slots: Vec<u32> = (1..n).map(|i| i * 5003 % (1 << 20)).collect();
    for &x in &slots {
        s.alloc_at(x, INIT, Ctx::MaySleep).unwrap();
    }
    let m = s.memory();
    let clusters: HashSet<u32> = slots.iter().map(|x| x >> 9).collect();
    assert_eq!(m.live_clusters, clusters.len() as u64);
    assert_eq!(m.words, clusters.len() as u64 * 512 * 8);
    let full = p.bytes_in_use();
    assert!(full - empty >= clusters.len() as u64 * 512 * 8);
    for &x in &slots {
        free(&s, x);
    }
    settle(&s);
    let m = s.memory();
    assert_eq!((m.live_clusters, m.words, m.retiring_clusters), (0, 0, 0));
    // Every table went back; what stays is directory pages.
    assert_eq!(full - p.bytes_in_use(), clusters.len() as u64 * 512 * 8);
    for c in &clusters {
        assert_eq!(s.cluster_state(*c), ClusterState::Free);
    }
    // And they come back.
    for &x in &slots {
        s.alloc_at(x, INIT, Ctx::MaySleep).unwrap();
    }
    assert_eq!(s.memory().live_clusters, clusters.len() as u64);
}

#[test]
fn a_cluster_emptied_inside_a_readers_section_is_taken_back_with_its_table() {
    let p = StdProvider::new();
    let s = space(&p, 3, 4);
    s.alloc_at(10, INIT, Ctx::MaySleep).unwrap();
    let table = s.pin(10).unwrap().words().as_ptr() as usize;
    // A reader's section holds the grace period open.
    // SAFETY: the section is dropped on this thread before `s`.
    let section = unsafe { s.guard() };
    free(&s, 10);
    assert_eq!(s.cluster_state(1), ClusterState::Retiring);
    let bytes = p.bytes_in_use();
    // Taken again before the grace period ended: same (all-zero) table,
    // no memory, off the retire FIFO.
    assert_eq!(s.alloc_at(12, INIT, Ctx::NoSleep), Ok(()));
    assert_eq!(s.pin(12).unwrap().words().as_ptr() as usize, table);
    assert_eq!(s.pin(12).unwrap().words()[2].load(Ordering::Relaxed), 0);
    assert_eq!(p.bytes_in_use(), bytes);
    assert_eq!(s.memory().retiring_clusters, 0);
    assert!(matches!(s.cluster_state(1), ClusterState::Live { .. }));
    drop(section);
}

#[test]
fn the_retire_fifo_loses_members_from_anywhere() {
    let p = StdProvider::new();
    let s = space(&p, 2, 8);
    // SAFETY: dropped on this thread before `s`.
    let section = unsafe { s.guard() };
    // Clusters 1..=5 retire in order; take back the middle, the head and
    // the tail, then let the rest finish.
    for c in 1..=5u32 {
        s.alloc_at(c * 4, INIT, Ctx::NoSleep).unwrap();
        free(&s, c * 4);
    }
    assert_eq!(s.memory().retiring_clusters, 5);
    for c in [3u32, 1, 5] {
        s.alloc_at(c * 4 + 1, INIT, Ctx::NoSleep).unwrap();
    }
    assert_eq!(s.memory().retiring_clusters, 2);
    drop(section);
    settle(&s);
    for c in [2u32, 4] {
        assert_eq!(s.cluster_state(c), ClusterState::Free);
    }
    for c in [1u32, 3, 5] {
        assert!(matches!(s.cluster_state(c), ClusterState::Live { .. }));
        free(&s, c * 4 + 1);
    }
    settle(&s);
    assert_eq!(s.memory().live_clusters, 0);
    assert_eq!(s.memory().words, 0);
}

#[test]
fn a_retiring_cluster_with_optional_tables_waits_for_its_grace_period() {
    let p = StdProvider::new();
    let s = space(&p, 3, 4);
    s.alloc_at(9, INIT, Ctx::MaySleep).unwrap();
    s.pin(9)
        .unwrap()
        .cache_table_or_create(Ctx::MaySleep)
        .unwrap()[1]
        .store(77, Ordering::Relaxed);
    // SAFETY: dropped on this thread before `s`.
    let section = unsafe { s.guard() };
    s.pin(9).unwrap().cache_table().unwrap()[1].store(0, Ordering::Relaxed);
    free(&s, 9);
    assert_eq!(s.alloc_at(10, INIT, Ctx::NoSleep), Err(Error::Again));
    assert_eq!(s.cluster_state(1), ClusterState::Retiring);
    drop(section);
    let t = std::time::Instant::now();
    loop {
        match s.alloc_at(10, INIT, Ctx::MaySleep) {
            Ok(()) => break,
            Err(Error::Again) => assert!(t.elapsed().as_secs() < 10),
            Err(e) => panic!("{e:?}"),
        }
        std::thread::yield_now();
    }
    // A new incarnation: fresh tables, no cache table yet.
    assert!(s.pin(10).unwrap().cache_table().is_none());
}

#[test]
fn threads_taking_the_same_slots_win_each_exactly_once() {
    let p = StdProvider::new();
    let s = space(&p, 3, 16);
    let wins: Vec<Vec<u32>> = std::thread::scope(|t| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                t.spawn(|| {
                    let mut won = Vec::new();
                    for round in 0..if cfg!(miri) { 6 } else { 200u32 } {
                        for x in (1..128u32).filter(|x| x % 3 == round % 3) {
                            if s.alloc_at(x, INIT, Ctx::MaySleep).is_ok() {
                                won.push(x);
                            }
                        }
                        // Free what we won in one cluster out of two, so
                        // clusters die and come back while the other
                        // thread takes slots in them.
                        won.retain(|&x| {
                            let go = (x >> 3) % 2 == round % 2;
                            if go {
                                free(&s, x);
                            }
                            !go
                        });
                    }
                    won
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<u32> = wins.concat();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "a slot won twice");
    for &x in &all {
        free(&s, x);
    }
    settle(&s);
    // Cluster 0 keeps its table: slot 0 is reserved, its word holds a
    // reference.
    let m = s.memory();
    assert_eq!((m.live_clusters, m.words), (1, 8 * 8));
    for c in 1..16 {
        assert_eq!(s.cluster_state(c), ClusterState::Free);
    }
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Take(u32),
        Free(u32),
        /// Enter (true) or leave a reader's section: clusters emptied
        /// inside one wait for it, and are taken back from the retire FIFO.
        Section(bool),
        Poll,
    }

    fn op(slots: u32) -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..slots + 2).prop_map(Op::Take),
            4 => (0..slots + 2).prop_map(Op::Free),
            1 => any::<bool>().prop_map(Op::Section),
            1 => Just(Op::Poll),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 2 } else { 256 },
            // No files: miri's isolation has no working directory.
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// `alloc_at` against a set: the same answers, every taken slot
        /// reads its value, only clusters with a taken slot (and cluster 0
        /// once used) are live, and every table goes back at the end.
        #[test]
        fn alloc_at_matches_a_set(
            ops in proptest::collection::vec(op(64), 1..if cfg!(miri) { 30 } else { 300 })
        ) {
            let p = StdProvider::new();
            let s = space(&p, 3, 8);
            let mut taken: HashSet<u32> = HashSet::new();
            let mut section = None;
            let mut used0 = false;
            for o in ops {
                match o {
                    Op::Take(x) => {
                        let ctx = if section.is_some() { Ctx::NoSleep } else { Ctx::MaySleep };
                        let want = if x == 0 || x >= 64 {
                            Err(Error::OutOfRange)
                        } else if taken.contains(&x) {
                            Err(Error::WrongState)
                        } else {
                            Ok(())
                        };
                        prop_assert_eq!(s.alloc_at(x, INIT, ctx), want, "take {}", x);
                        if want.is_ok() {
                            taken.insert(x);
                            used0 |= x < 8;
                        }
                    }
                    Op::Free(x) => {
                        if taken.remove(&x) {
                            free(&s, x);
                        } else if let Ok(pin) = s.pin(x) {
                            // A free slot of a live cluster reads 0.
                            prop_assert_eq!(
                                pin.words()[(x - pin.base()) as usize].load(Ordering::Relaxed),
                                if x == 0 { u64::MAX } else { 0 }
                            );
                        }
                    }
                    Op::Section(true) if section.is_none() => {
                        // SAFETY: dropped on this thread before `s`; calls
                        // inside pass `NoSleep`.
                        section = Some(unsafe { s.guard() });
                    }
                    Op::Section(_) => section = None,
                    Op::Poll => {
                        s.poll_all();
                    }
                }
                for &x in &taken {
                    let pin = s.pin(x).unwrap();
                    prop_assert_eq!(pin.words()[(x - pin.base()) as usize].load(Ordering::Relaxed), INIT);
                }
                for c in 0..8u32 {
                    let busy = taken.iter().any(|x| x >> 3 == c) || (c == 0 && used0);
                    let live = matches!(s.cluster_state(c), ClusterState::Live { .. });
                    prop_assert_eq!(live, busy, "cluster {}", c);
                }
            }
            drop(section);
            for x in taken.drain() {
                free(&s, x);
            }
            settle(&s);
            let m = s.memory();
            prop_assert_eq!(m.live_clusters, u64::from(used0));
            prop_assert_eq!(m.words, u64::from(used0) * 64);
        }
    }
}
