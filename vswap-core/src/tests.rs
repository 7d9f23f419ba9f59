//! Unit tests of the map's lifecycle (also run under miri).

extern crate std;
use std::sync::Mutex;
use std::vec::Vec;

use vswap_alloc::StdProvider;

use crate::*;

#[derive(Default)]
struct Rec {
    zswap: Mutex<Vec<u64>>,
    phys: Mutex<Vec<(u8, u64, u64)>>,
}

impl Host for Rec {
    fn release_zswap(&self, h: u64) {
        self.zswap.lock().unwrap().push(h);
    }
    fn release_phys(&self, d: u8, o: u64, l: u64) {
        self.phys.lock().unwrap().push((d, o, l));
    }
}

fn map(p: &StdProvider) -> VswapMap<&StdProvider, Rec> {
    VswapMap::new(
        MapConfig {
            geometry: Geometry::tiny(3, 256, 2),
            ..MapConfig::default()
        },
        p,
        Rec::default(),
    )
    .unwrap()
}

const S: Ctx = Ctx::MaySleep;

#[test]
fn lifecycle_over_every_backend() {
    let p = StdProvider::new();
    let m = map(&p);
    for (i, b) in [
        Backend::Zero,
        Backend::Same(u64::MAX),
        Backend::Same(7),
        Backend::Zswap(0xffff_8880_0000_1000),
        Backend::Phys { dev: 3, off: 99 },
    ]
    .into_iter()
    .enumerate()
    {
        let s = m.alloc(0, (i % 2) as u32, S).unwrap();
        assert_eq!(
            m.lookup(s).unwrap(),
            Entry {
                backend: Backend::None,
                count: 0,
                cached: true,
                locked: false
            }
        );
        m.dup(s, 2, S).unwrap();
        m.store(s, Backend::None, b).unwrap();
        assert_eq!(m.store(s, Backend::None, b), Err(Error::WrongState));
        assert_eq!(m.cache_clear(s, 0xabc1, S).unwrap(), Put::Live);
        assert_eq!(
            m.cache_get(s).unwrap(),
            CacheState {
                cached: false,
                word: 0xabc1
            }
        );
        assert_eq!(m.put(s, 1).unwrap(), Put::Live);
        assert_eq!(m.put(s, 1).unwrap(), Put::Freed);
        assert_eq!(m.lookup(s), Err(Error::NotAllocated));
        assert_eq!(m.put(s, 1), Err(Error::NotAllocated));
    }
    assert_eq!(*m.host().zswap.lock().unwrap(), [0xffff_8880_0000_1000]);
    assert_eq!(*m.host().phys.lock().unwrap(), [(3, 99, 1)]);
    assert_eq!(
        m.stats().live_slots,
        0,
        "the reserved slot 0 is not counted"
    );
}

#[test]
fn counts_overflow_into_the_side_table_and_back() {
    let p = StdProvider::new();
    let m = map(&p);
    let s = m.alloc(0, 0, S).unwrap();
    m.dup(s, 60, S).unwrap();
    m.dup(s, 5, S).unwrap();
    assert_eq!(m.lookup(s).unwrap().count, 65);
    assert_eq!(m.stats().overflowed, 1);
    assert!(m.stats().side_bytes > 0);
    assert_eq!(m.dup(s, u32::MAX, S), Err(Error::CountOverflow));
    assert_eq!(m.put(s, 66), Err(Error::CountUnderflow));
    let held = m.stats().side_bytes;
    assert_eq!(m.put(s, 10).unwrap(), Put::Live);
    assert_eq!(m.lookup(s).unwrap().count, 55);
    assert_eq!(m.stats().overflowed, 0);
    assert_eq!(m.stats().side_bytes, held, "kept while the slot lives");
    m.dup(s, 100, S).unwrap();
    assert_eq!(m.lookup(s).unwrap().count, 155);
    m.cache_clear(s, 0, S).unwrap();
    assert_eq!(m.put(s, 155).unwrap(), Put::Freed);
    assert_eq!(m.stats().side_bytes, 0, "freed with the slot");
}

#[test]
fn lock_writeback_relocate_and_zombies() {
    let p = StdProvider::new();
    let m = map(&p);
    let s = m.alloc(0, 0, S).unwrap();
    m.dup(s, 1, S).unwrap();
    m.store(s, Backend::None, Backend::Zswap(5)).unwrap();
    assert_eq!(m.writeback(s, 1, 10), Err(Error::NotLocked));
    m.lock(s).unwrap();
    assert_eq!(m.lock(s), Err(Error::Busy));
    assert_eq!(
        m.store(s, Backend::Zswap(5), Backend::Zero),
        Err(Error::Busy)
    );
    m.writeback(s, 1, 10).unwrap();
    assert_eq!(*m.host().zswap.lock().unwrap(), [5]);
    m.lock(s).unwrap();
    assert_eq!(m.relocate(s, (1, 11), (2, 20)), Err(Error::WrongState));
    m.relocate(s, (1, 10), (2, 20)).unwrap();
    assert_eq!(*m.host().phys.lock().unwrap(), [(1, 10, 1)]);
    // Dies while locked: the unlock frees it; a commit loses with Gone.
    m.lock(s).unwrap();
    m.cache_clear(s, 0, S).unwrap();
    assert_eq!(m.put(s, 1).unwrap(), Put::Live, "zombie until unlocked");
    assert_eq!(m.dup(s, 1, S), Err(Error::NotAllocated));
    assert_eq!(m.relocate(s, (2, 20), (3, 30)), Err(Error::Gone));
    assert_eq!(m.host().phys.lock().unwrap().last(), Some(&(2, 20, 1)));
    assert_eq!(m.lookup(s), Err(Error::NotAllocated));
}

#[test]
fn ranges_are_all_or_nothing() {
    let p = StdProvider::new();
    let m = map(&p);
    let s = m.alloc(2, 0, S).unwrap();
    assert_eq!(s % 4, 0);
    for i in 0..4 {
        m.dup(s + i, 1, S).unwrap();
        m.store(
            s + i,
            Backend::None,
            Backend::Phys {
                dev: 0,
                off: 100 + u64::from(i),
            },
        )
        .unwrap();
        m.cache_clear(s + i, 0, S).unwrap();
    }
    assert_eq!(m.put_range(s + 1, 2), Err(Error::Misaligned));
    assert_eq!(m.put_range(s, 9), Err(Error::BadOrder));
    m.lock(s + 2).unwrap();
    assert_eq!(m.put_range(s, 2), Err(Error::Busy));
    for i in [0, 1, 3] {
        assert!(!m.lookup(s + i).unwrap().locked, "rolled back");
    }
    m.unlock(s + 2).unwrap();
    assert_eq!(m.put_range(s, 2).unwrap(), 4);
    assert_eq!(
        *m.host().phys.lock().unwrap(),
        [(0, 100, 4)],
        "one coalesced run"
    );
}

#[test]
fn put_many_stops_at_the_first_bad_slot() {
    let p = StdProvider::new();
    let m = map(&p);
    let a: Vec<u32> = (0..6).map(|_| m.alloc(0, 0, S).unwrap()).collect();
    assert_eq!(a, [1, 2, 3, 4, 5, 6]);
    for &s in &a {
        m.dup(s, 1, S).unwrap();
        m.cache_clear(s, 0, S).unwrap();
    }
    m.put(4, 1).unwrap();
    assert_eq!(
        m.put_many(1, 6),
        Err(BatchError {
            done: 3,
            error: Error::NotAllocated
        })
    );
    assert_eq!(m.lookup(5).unwrap().count, 1);
    assert_eq!(m.put_many(5, 2), Ok(2));
}

#[test]
fn cache_words_and_memcg() {
    let p = StdProvider::new();
    let m = map(&p);
    let s = m.alloc(1, 1, S).unwrap();
    m.cache_store(s, 0x1000, S).unwrap();
    assert_eq!(
        m.cache_get(s).unwrap(),
        CacheState {
            cached: true,
            word: 0x1000
        }
    );
    assert_eq!(m.cache_add(s, 0x2000, S), Err(Error::WrongState));
    m.dup(s, 1, S).unwrap();
    m.cache_clear(s, 0x77, S).unwrap();
    m.cache_add(s, 0x3000, S).unwrap();
    assert_eq!(
        m.cache_get(s).unwrap(),
        CacheState {
            cached: true,
            word: 0x3000
        }
    );
    assert_eq!(m.memcg(s).unwrap(), None);
    m.set_memcg(s, 1, 9, S).unwrap();
    let uniform = m.stats().memory.memcg;
    assert_eq!(m.memcg(s + 1).unwrap(), Some(9));
    m.set_memcg(s + 1, 0, 4, S).unwrap();
    assert!(m.stats().memory.memcg > uniform, "a table once ids differ");
    assert_eq!(
        (m.memcg(s).unwrap(), m.memcg(s + 1).unwrap()),
        (Some(9), Some(4))
    );
    m.cache_clear(s + 1, 0, S).unwrap();
    assert_eq!(m.memcg(s + 1), Err(Error::NotAllocated));
}

#[test]
fn map_drop_returns_all_memory() {
    let p = StdProvider::new();
    {
        let m = map(&p);
        for _ in 0..40 {
            let s = m.alloc(0, 0, S).unwrap();
            m.dup(s, 70, S).unwrap();
            m.cache_store(s, 1, S).unwrap();
            m.set_memcg(s, 0, 1, S).unwrap();
        }
    }
    assert_eq!(p.bytes_in_use(), 0);
}

/// `Engine::new_in` writes the engine field by field through raw pointers
/// (no engine-sized stack temporary): under miri this checks every field is
/// initialised once, the engine works in place, and drops cleanly; a failed
/// build leaves nothing allocated.
#[test]
fn engine_built_in_place_works_and_drops() {
    struct Z;
    impl EngineHost for Z {
        fn release_zswap(&self, _h: u64) {}
    }
    let p = StdProvider::new();
    let cfg = EngineConfig {
        map: MapConfig {
            geometry: Geometry::tiny(2, 64, 2),
            ..MapConfig::default()
        },
        page_size: 64,
        ..EngineConfig::default()
    };
    let mut place =
        std::boxed::Box::new(core::mem::MaybeUninit::<Engine<&StdProvider, Z>>::uninit());
    let e = Engine::new_in(&mut place, cfg, &p, Z).unwrap();
    let dev = PhysDevice::new(
        DeviceConfig {
            geometry: Geometry::tiny(2, 16, 2),
            discard: false,
            rotational: false,
        },
        &[],
        &p,
    )
    .unwrap();
    e.add_device(0, 1, dev).unwrap();
    let s = e.alloc(0, 1, None, Ctx::MaySleep).unwrap();
    e.map().dup(s, 1, Ctx::MaySleep).unwrap();
    let page: std::vec::Vec<u8> = (0..64u8).collect();
    assert!(matches!(
        e.writeout(s, &page, 1).unwrap(),
        Backend::Phys { dev: 0, .. }
    ));
    assert_eq!(e.cache_clear(s, 0, Ctx::MaySleep).unwrap(), Put::Live);
    assert_eq!(e.put(s, 1).unwrap(), Put::Freed);
    assert_eq!(e.device(0).unwrap().stats().used, 0);
    assert!(p.bytes_in_use() > 0);
    // SAFETY: built by `new_in` above, dropped once.
    unsafe { place.assume_init_drop() };
    assert_eq!(p.bytes_in_use(), 0);

    // A provider that fails at once: `Err`, nothing built, nothing held.
    p.fail_after(Some(0));
    let mut place =
        std::boxed::Box::new(core::mem::MaybeUninit::<Engine<&StdProvider, Z>>::uninit());
    assert!(Engine::new_in(&mut place, cfg, &p, Z).is_err());
    p.fail_after(None);
    assert_eq!(p.bytes_in_use(), 0);
}

/// Issue 12 item 2: the free reports (and so the engine uncharges) the memcg
/// id of the owner that freed the slot, even when the slot is allocated
/// again and given another id while the free is still releasing its backend.
/// The host's `release_zswap` parks the freeing thread while the main thread
/// takes the (only free) slot and sets a new id.
#[test]
fn free_reports_the_freeing_owners_memcg_when_the_slot_is_reused() {
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicBool, Ordering as O};
    struct Parking {
        armed: AtomicBool,
        gate: Barrier,
        freed: Mutex<Vec<(u32, Option<u16>)>>,
    }
    impl Host for Parking {
        fn release_zswap(&self, _h: u64) {
            if self.armed.swap(false, O::SeqCst) {
                self.gate.wait(); // the slot's word is 0 now
                self.gate.wait(); // reallocated, new id set
            }
        }
        fn release_phys(&self, _d: u8, _o: u64, _l: u64) {}
        const WANTS_FREED: bool = true;
        fn slot_freed(&self, slot: u32, _b: Backend, memcg: Option<u16>) {
            self.freed.lock().unwrap().push((slot, memcg));
        }
    }
    let p = StdProvider::new();
    let host = Parking {
        armed: AtomicBool::new(false),
        gate: Barrier::new(2),
        freed: Mutex::new(Vec::new()),
    };
    let cfg = MapConfig {
        geometry: Geometry::tiny(2, 4, 1),
        ..MapConfig::default()
    };
    let m = VswapMap::new(cfg, &p, &host).unwrap();
    // Slots 1..=3 all taken; ids differ, so the cluster has an id table.
    let slots: Vec<u32> = (0..3).map(|_| m.alloc(0, 0, S).unwrap()).collect();
    for (i, &s) in slots.iter().enumerate() {
        m.set_memcg(s, 0, 10 + i as u16, S).unwrap();
    }
    let s = slots[1];
    m.store(s, Backend::None, Backend::Zswap(5)).unwrap();
    m.dup(s, 1, S).unwrap();
    assert_eq!(m.cache_clear(s, 0, S).unwrap(), Put::Live);
    host.armed.store(true, O::SeqCst);
    std::thread::scope(|sc| {
        let t = sc.spawn(|| m.put(s, 1));
        host.gate.wait();
        assert_eq!(m.alloc(0, 0, S), Ok(s), "the only free slot");
        m.set_memcg(s, 0, 99, S).unwrap();
        host.gate.wait();
        assert_eq!(t.join().unwrap(), Ok(Put::Freed));
    });
    assert_eq!(*host.freed.lock().unwrap(), [(s, Some(11))]);
    assert_eq!(m.memcg(s), Ok(Some(99)), "the new owner's id stays");
}

/// Issue 12 item 3: a cache word never outlives its slot. Allocate, store a
/// cookie, free, allocate the same slot again: its cache word reads "none";
/// a shadow left by `cache_clear` goes with the free too; and a fresh slot
/// of a cluster that has a cache table reads "none".
#[test]
fn cache_word_does_not_survive_into_the_next_owner() {
    let p = StdProvider::new();
    let cfg = MapConfig {
        geometry: Geometry::tiny(2, 4, 1),
        ..MapConfig::default()
    };
    let m = VswapMap::new(cfg, &p, NoHost).unwrap();
    let a = m.alloc(0, 0, S).unwrap();
    let b = m.alloc(0, 0, S).unwrap();
    let fresh = m.alloc(0, 0, S).unwrap();
    m.cache_store(a, 0xdead_0000, S).unwrap();
    assert_eq!(
        m.cache_get(fresh).unwrap(),
        CacheState {
            cached: true,
            word: 0
        },
        "a fresh slot of a cluster with a cache table"
    );
    // Free `a` through the cache clear; take it again.
    assert_eq!(m.cache_clear(a, 0, S).unwrap(), Put::Freed);
    assert_eq!(m.alloc(0, 0, S), Ok(a));
    assert_eq!(m.cache_get(a).unwrap().word, 0);
    // A shadow (count held), then the last put: gone with the slot.
    m.dup(a, 1, S).unwrap();
    m.cache_clear(a, 0x5_0000, S).unwrap();
    m.cache_store(a, 0x6_0000, S).unwrap();
    assert_eq!(m.cache_get(a).unwrap().word, 0x6_0000);
    assert_eq!(m.put(a, 1).unwrap(), Put::Freed);
    assert_eq!(m.alloc(0, 0, S), Ok(a));
    assert_eq!(
        m.cache_get(a).unwrap(),
        CacheState {
            cached: true,
            word: 0
        }
    );
    let _ = (b, fresh);
}

/// Issue 12 item 9: a count that crosses the inline limit back and forth
/// costs provider calls only at its first overflow (the slot stays attached
/// to its cluster's count block until it is freed), not one alloc/free pair
/// per crossing.
#[test]
fn overflow_oscillating_around_the_inline_limit_does_not_churn_the_provider() {
    let p = StdProvider::new();
    let m = map(&p);
    let s = m.alloc(0, 0, S).unwrap();
    m.dup(s, 62, S).unwrap();
    let before = p.total_allocs();
    let rounds = if cfg!(miri) { 50 } else { 10_000 };
    for _ in 0..rounds {
        m.dup(s, 1, S).unwrap();
        assert_eq!(m.lookup(s).unwrap().count, 63);
        assert_eq!(m.put(s, 1), Ok(Put::Live));
    }
    let made = p.total_allocs() - before;
    assert!(
        made <= 2,
        "{made} provider allocations for {rounds} crossings"
    );
    assert_eq!(m.lookup(s).unwrap().count, 62);
    assert_eq!(p.bytes_in_use(), m.stats().total_bytes());
    assert_eq!(m.cache_clear(s, 0, S), Ok(Put::Live));
    assert_eq!(m.put(s, 62), Ok(Put::Freed));
    assert_eq!(m.stats().side_bytes, 0, "the block goes with the slot");
}

/// Issue 12 item 9: an operation on an overflowed count costs O(1) whatever
/// the number of overflowed slots (hash probes of the side table counted,
/// not time), and counts stay exact while clusters' blocks come and go
/// (bucket array growth, deletion with backward shifts, re-attachment).
#[test]
fn overflowed_count_operations_cost_o1_and_stay_exact() {
    let p = StdProvider::new();
    let m = VswapMap::new(
        MapConfig {
            geometry: Geometry::tiny(3, 1 << 14, 2),
            ..MapConfig::default()
        },
        &p,
        NoHost,
    )
    .unwrap();
    let n = if cfg!(miri) { 120 } else { 4000 };
    let slots: Vec<u32> = (0..n).map(|_| m.alloc(0, 0, S).unwrap()).collect();
    let mut want: Vec<u32> = Vec::new();
    for (i, &s) in slots.iter().enumerate() {
        let c = 63 + (i as u32 % 200);
        m.dup(s, c, S).unwrap();
        want.push(c);
    }
    assert_eq!(m.stats().overflowed, n as u64);
    let p0 = m.side_probes();
    for (i, &s) in slots.iter().enumerate() {
        m.dup(s, 2, S).unwrap();
        assert_eq!(m.put(s, 1), Ok(Put::Live));
        assert_eq!(m.lookup(s).unwrap().count, want[i] + 1);
        want[i] += 1;
    }
    // Three operations per slot; each looks its cluster up once or twice.
    let per_op = (m.side_probes() - p0) as f64 / (3 * n) as f64;
    assert!(
        per_op <= 4.0,
        "{per_op} probes per operation with {n} slots"
    );
    // Free every other cluster's slots (blocks deleted from the middle of
    // probe runs), then check every remaining count.
    let mut x = 12345u32;
    for (i, &s) in slots.iter().enumerate() {
        if (s >> 3) % 2 == 0 {
            assert_eq!(m.cache_clear(s, 0, S), Ok(Put::Live));
            assert_eq!(m.put(s, want[i]), Ok(Put::Freed));
            want[i] = 0;
        }
    }
    for (i, &s) in slots.iter().enumerate() {
        if want[i] > 0 {
            assert_eq!(m.lookup(s).unwrap().count, want[i], "slot {s}");
        } else {
            assert_eq!(m.lookup(s), Err(Error::NotAllocated));
        }
    }
    // Random churn: re-allocate, overflow, put back inline, free.
    for _ in 0..n {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let i = (x >> 8) as usize % n;
        let s = slots[i];
        if want[i] == 0 {
            continue;
        }
        if x & 1 == 0 {
            assert_eq!(m.put(s, want[i] - 10), Ok(Put::Live));
            want[i] = 10;
            assert_eq!(m.lookup(s).unwrap().count, 10);
            m.dup(s, 100, S).unwrap();
            want[i] = 110;
        } else {
            assert_eq!(m.cache_clear(s, 0, S), Ok(Put::Live));
            assert_eq!(m.put(s, want[i]), Ok(Put::Freed));
            want[i] = 0;
        }
    }
    for (i, &s) in slots.iter().enumerate() {
        if want[i] > 0 {
            assert_eq!(m.lookup(s).unwrap().count, want[i], "slot {s}");
        }
    }
    assert_eq!(p.bytes_in_use(), m.stats().total_bytes());
    for (i, &s) in slots.iter().enumerate() {
        if want[i] > 0 {
            assert_eq!(m.cache_clear(s, 0, S), Ok(Put::Live));
            assert_eq!(m.put(s, want[i]), Ok(Put::Freed));
        }
    }
    assert_eq!(m.stats().side_bytes, 0);
}

/// Issue 12 item 18: every repeated 64-bit word is a same-filled backend.
/// Store / lookup round trips (inline forms and the side table), moves
/// between table values checked against the value, the freed backend
/// reported whole, and the table's memory counted and given back.
#[test]
fn same_filled_values_of_every_width_round_trip() {
    struct Freed(Mutex<Vec<Backend>>);
    impl Host for Freed {
        fn release_zswap(&self, _h: u64) {}
        fn release_phys(&self, _d: u8, _o: u64, _l: u64) {}
        const WANTS_FREED: bool = true;
        fn slot_freed(&self, _slot: u32, b: Backend, _memcg: Option<u16>) {
            self.0.lock().unwrap().push(b);
        }
    }
    let p = StdProvider::new();
    let host = Freed(Mutex::new(Vec::new()));
    let m = VswapMap::new(
        MapConfig {
            geometry: Geometry::tiny(3, 256, 2),
            ..MapConfig::default()
        },
        &p,
        &host,
    )
    .unwrap();
    let values = [
        0x5a5a_5a5a_5a5a_5a5a,
        0x0101_0101_0101_0101,
        0x8080_8080_8080_8080,
        0xdead_beef_cafe_f00d,
        u64::MAX,
        0,
        1 << 49,
    ];
    let mut slots = Vec::new();
    for v in values {
        let s = m.alloc(0, 0, S).unwrap();
        m.dup(s, 1, S).unwrap();
        m.store(s, Backend::None, Backend::Same(v)).unwrap();
        assert_eq!(m.lookup(s).unwrap().backend, Backend::Same(v), "{v:#x}");
        slots.push(s);
    }
    assert!(
        m.stats().side_bytes > 0,
        "the table values' memory is counted"
    );
    assert_eq!(m.stats().by_kind[2], values.len() as u64);
    assert_eq!(p.bytes_in_use(), m.stats().total_bytes());
    // A table value is compared whole: a wrong expected value is refused.
    let s = slots[3];
    assert_eq!(
        m.store(s, Backend::Same(0xdead_beef_cafe_f00e), Backend::Zero),
        Err(Error::WrongState)
    );
    assert_eq!(
        m.store(
            s,
            Backend::Same(0xdead_beef_cafe_f00d),
            Backend::Same(7 << 60)
        ),
        Ok(())
    );
    assert_eq!(m.lookup(s).unwrap().backend, Backend::Same(7 << 60));
    // Under the lock, commit from a table value to an inline one and back.
    m.lock(s).unwrap();
    m.commit_unlock(
        s,
        Backend::Same(7 << 60),
        Backend::Same(0x0101_0101_0101_0101),
    )
    .unwrap();
    m.lock(s).unwrap();
    m.commit_unlock(
        s,
        Backend::Same(0x0101_0101_0101_0101),
        Backend::Same(9 << 58),
    )
    .unwrap();
    assert_eq!(m.lookup(s).unwrap().backend, Backend::Same(9 << 58));
    // Frees report the whole value.
    for &x in &slots {
        assert_eq!(m.cache_clear(x, 0, S), Ok(Put::Live));
        assert_eq!(m.put(x, 1), Ok(Put::Freed));
    }
    let mut want: Vec<Backend> = values.iter().map(|&v| Backend::Same(v)).collect();
    want[3] = Backend::Same(9 << 58);
    assert_eq!(*host.0.lock().unwrap(), want);
    assert_eq!(m.stats().side_bytes, 0, "the table goes with its last slot");
    assert_eq!(p.bytes_in_use(), m.stats().total_bytes());
}

/// Issue 12, item 5: the router frees a released device slot only while the
/// releasing virtual slot owns it (compare-and-clear), and reports only the
/// ones it freed. The owned release takes a `MapOnly` token, so only the
/// map (this crate) can call it; this test plays a map that names the
/// wrong owners.
#[test]
fn owned_release_frees_only_the_named_owners_device_slots() {
    #[derive(Default)]
    struct H {
        phys: Mutex<Vec<(u8, u64, u64)>>,
    }
    impl EngineHost for H {
        fn release_zswap(&self, _h: u64) {}
        fn released_phys(&self, d: u8, o: u64, l: u64) {
            self.phys.lock().unwrap().push((d, o, l));
        }
    }
    let p = StdProvider::new();
    let cfg = EngineConfig {
        map: MapConfig {
            geometry: Geometry::tiny(2, 64, 2),
            ..MapConfig::default()
        },
        page_size: 64,
        ..EngineConfig::default()
    };
    let e = Engine::new(cfg, &p, H::default()).unwrap();
    let dev = PhysDevice::new(
        DeviceConfig {
            geometry: Geometry::tiny(2, 16, 2),
            discard: false,
            rotational: false,
        },
        &[],
        &p,
    )
    .unwrap();
    e.add_device(0, 1, dev).unwrap();
    let page: Vec<u8> = (0..64u8).collect();
    let mut out = Vec::new();
    for _ in 0..2 {
        let s = e.alloc(0, 0, None, Ctx::MaySleep).unwrap();
        e.map().dup(s, 1, Ctx::MaySleep).unwrap();
        let Backend::Phys { dev, off } = e.writeout(s, &page, 0).unwrap() else {
            panic!("a random page takes a device slot")
        };
        out.push((s, dev, off));
    }
    let [(a, dev, off), (b, _, off_b)] = [out[0], out[1]];
    let router = e.map().host();
    // In the name of another slot: nothing freed, nothing reported.
    router.release_phys_owned(a + 7, dev, off, 1, MapOnly::new());
    assert_eq!(e.device(0).unwrap().owner(off), Ok(Some(a)));
    assert!(e.host().phys.lock().unwrap().is_empty());
    // A run naming `b` for both `b`'s slot and the next one: only where the
    // owner matches is anything freed (and reported, once).
    router.release_phys_owned(b, dev, off_b, 2, MapOnly::new());
    assert_eq!(e.device(0).unwrap().owner(off_b), Ok(None));
    assert_eq!(*e.host().phys.lock().unwrap(), [(dev, off_b, 1)]);
    assert_eq!(e.device(0).unwrap().owner(off), Ok(Some(a)), "a's kept");
    e.host().phys.lock().unwrap().clear();
    // `a` still releases its own device slot, once, when it dies.
    assert_eq!(e.cache_clear(a, 0, Ctx::MaySleep).unwrap(), Put::Live);
    assert_eq!(e.put(a, 1).unwrap(), Put::Freed);
    assert_eq!(*e.host().phys.lock().unwrap(), [(dev, off, 1)]);
}
