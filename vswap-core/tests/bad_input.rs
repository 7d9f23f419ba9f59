#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! DESIGN.md section 6: every class of bad input gets its own error, and no
//! other entry changes (each test snapshots the neighbours before and after).

use std::sync::Mutex;

use vswap_alloc::StdProvider;
use vswap_core::{
    Backend, BatchError, CacheState, Ctx, Entry, Error, Geometry, Host, MapConfig, Put, VswapMap,
};

#[derive(Default)]
struct RecHost(Mutex<Vec<(u8, u64, u64)>>);

impl Host for RecHost {
    fn release_zswap(&self, handle: u64) {
        self.0.lock().unwrap().push((255, handle, 0));
    }
    fn release_phys(&self, dev: u8, off: u64, len: u64) {
        self.0.lock().unwrap().push((dev, off, len));
    }
}

impl RecHost {
    fn take(&self) -> Vec<(u8, u64, u64)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

type Map<'a> = VswapMap<&'a StdProvider, &'a RecHost>;

const SHIFT: u32 = 3;
const CS: u32 = 1 << SHIFT;

fn new_map<'a>(p: &'a StdProvider, h: &'a RecHost) -> Map<'a> {
    VswapMap::new(
        MapConfig {
            geometry: Geometry::tiny(SHIFT, 64, 2),
            ..MapConfig::default()
        },
        p,
        h,
    )
    .unwrap()
}

type Snap = Vec<(
    u32,
    Result<Entry, Error>,
    Result<CacheState, Error>,
    Result<Option<u16>, Error>,
)>;

/// Everything visible about the first `n` slots.
fn snap(map: &Map<'_>, n: u32) -> Snap {
    (0..n)
        .map(|s| (s, map.lookup(s), map.cache_get(s), map.memcg(s)))
        .collect()
}

/// A map with a few neighbours in varied states, all in cluster 0 (slots
/// 1..8) and cluster 1 (slots 8..16, an order-1 allocation cluster).
struct Fx<'a> {
    map: Map<'a>,
    host: &'a RecHost,
    /// Order-0 slots: [count 3 + zswap 0x77, count 1 + phys 2:100 + cache word,
    /// count 0 cached, count 70 (side table) + zero, locked same-filled].
    one: Vec<u32>,
    /// An order-1 pair with count 1 each, zero backend, not cached.
    pair: u32,
}

impl<'a> Fx<'a> {
    fn new(p: &'a StdProvider, host: &'a RecHost) -> Self {
        let map = new_map(p, host);
        let one: Vec<u32> = (0..5)
            .map(|_| map.alloc(0, 0, Ctx::MaySleep).unwrap())
            .collect();
        let c = Ctx::MaySleep;
        map.dup(one[0], 3, c).unwrap();
        map.store(one[0], Backend::None, Backend::Zswap(0x77))
            .unwrap();
        map.cache_clear(one[0], 0x5ad0, c).unwrap();
        map.dup(one[1], 1, c).unwrap();
        map.store(one[1], Backend::None, Backend::Phys { dev: 2, off: 100 })
            .unwrap();
        map.cache_store(one[1], 0xf011_0000, c).unwrap();
        map.set_memcg(one[1], 0, 9, c).unwrap();
        map.dup(one[3], 70, c).unwrap();
        map.store(one[3], Backend::None, Backend::Zero).unwrap();
        map.dup(one[4], 1, c).unwrap();
        map.store(one[4], Backend::None, Backend::Same(u64::MAX))
            .unwrap();
        map.lock(one[4]).unwrap();
        let pair = map.alloc(1, 1, c).unwrap();
        for s in [pair, pair + 1] {
            map.dup(s, 1, c).unwrap();
            map.store(s, Backend::None, Backend::Zero).unwrap();
            map.cache_clear(s, 0, c).unwrap();
        }
        assert!(one.iter().all(|&s| s < CS) && (CS..2 * CS).contains(&pair));
        assert!(host.take().is_empty());
        Self {
            map,
            host,
            one,
            pair,
        }
    }

    fn snap(&self) -> Snap {
        snap(&self.map, 3 * CS)
    }

    /// A free slot in a live cluster.
    fn free_slot(&self) -> u32 {
        (1..CS)
            .find(|&s| self.map.lookup(s) == Err(Error::NotAllocated))
            .unwrap()
    }

    /// Run `f`, which must fail with `err`, and check nothing changed.
    #[track_caller]
    fn rejects<T: std::fmt::Debug>(
        &self,
        err: Error,
        f: impl FnOnce(&Map<'a>) -> Result<T, Error>,
    ) {
        let before = self.snap();
        let st = self.map.stats();
        let r = f(&self.map);
        assert!(
            matches!(&r, Err(e) if *e == err),
            "expected {err:?}, got {r:?}"
        );
        assert_eq!(self.snap(), before, "an error changed the map");
        let st2 = self.map.stats();
        assert_eq!(
            (
                st.live_slots,
                st.by_kind,
                st.cached,
                st.locked,
                st.overflowed
            ),
            (
                st2.live_slots,
                st2.by_kind,
                st2.cached,
                st2.locked,
                st2.overflowed
            )
        );
        assert!(self.host.take().is_empty(), "an error released something");
    }

    /// Every single-slot operation on `slot` fails with `err`.
    #[track_caller]
    fn all_single_ops_reject(&self, slot: u32, err: Error) {
        let c = Ctx::MaySleep;
        let phys = Backend::Phys { dev: 1, off: 1 };
        self.rejects(err, |m| m.dup(slot, 1, c));
        self.rejects(err, |m| m.put(slot, 1));
        self.rejects(err, |m| m.try_get(slot, c));
        self.rejects(err, |m| m.cache_add(slot, 0, c));
        self.rejects(err, |m| m.cache_add(slot, 0x1234, c));
        self.rejects(err, |m| m.cache_store(slot, 0, c));
        self.rejects(err, |m| m.cache_store(slot, 0x1234, c));
        self.rejects(err, |m| m.cache_clear(slot, 0, c));
        self.rejects(err, |m| m.cache_clear(slot, 0x99, c));
        self.rejects(err, |m| m.cache_get(slot));
        self.rejects(err, |m| m.lock(slot));
        self.rejects(err, |m| m.unlock(slot));
        self.rejects(err, |m| m.store(slot, Backend::None, Backend::Zero));
        self.rejects(err, |m| m.commit_unlock(slot, Backend::None, phys));
        self.rejects(err, |m| m.writeback(slot, 1, 1));
        self.rejects(err, |m| m.relocate(slot, (1, 1), (1, 2)));
        self.rejects(err, |m| m.lookup(slot));
        self.rejects(err, |m| m.memcg(slot));
        self.rejects(err, |m| m.set_memcg(slot, 0, 1, c));
        assert_eq!(
            self.map.put_many(slot, 1),
            Err(BatchError {
                done: 0,
                error: err
            })
        );
    }
}

#[test]
fn slot_out_of_range() {
    let (p, h) = (StdProvider::new(), RecHost::default());
    let fx = Fx::new(&p, &h);
    let end = fx.map.geometry().slots() as u32;
    for slot in [end, end + 1, u32::MAX] {
        let c = Ctx::MaySleep;
        fx.rejects(Error::OutOfRange, |m| m.dup(slot, 1, c));
        fx.rejects(Error::OutOfRange, |m| m.put(slot, 1));
        fx.rejects(Error::OutOfRange, |m| m.try_get(slot, c));
        fx.rejects(Error::OutOfRange, |m| m.cache_add(slot, 5, c));
        fx.rejects(Error::OutOfRange, |m| m.cache_store(slot, 5, c));
        fx.rejects(Error::OutOfRange, |m| m.cache_clear(slot, 5, c));
        fx.rejects(Error::OutOfRange, |m| m.cache_get(slot));
        fx.rejects(Error::OutOfRange, |m| m.lock(slot));
        fx.rejects(Error::OutOfRange, |m| m.unlock(slot));
        fx.rejects(Error::OutOfRange, |m| {
            m.store(slot, Backend::None, Backend::Zero)
        });
        fx.rejects(Error::OutOfRange, |m| {
            m.commit_unlock(slot, Backend::None, Backend::Zero)
        });
        fx.rejects(Error::OutOfRange, |m| m.writeback(slot, 0, 0));
        fx.rejects(Error::OutOfRange, |m| m.relocate(slot, (0, 0), (0, 1)));
        fx.rejects(Error::OutOfRange, |m| m.lookup(slot));
        fx.rejects(Error::OutOfRange, |m| m.memcg(slot));
        assert_eq!(
            fx.map.put_many(slot, 3),
            Err(BatchError {
                done: 0,
                error: Error::OutOfRange
            })
        );
        // An aligned range outside the space gives the per-slot calls' code.
        for order in 0..=SHIFT {
            let start = slot & !((1 << order) - 1);
            fx.rejects(Error::OutOfRange, |m| m.put_range(start, order));
            fx.rejects(Error::OutOfRange, |m| m.lock_range(start, order));
            fx.rejects(Error::OutOfRange, |m| m.unlock_range(start, order));
            fx.rejects(Error::OutOfRange, |m| m.set_memcg(start, order, 1, c));
        }
    }
    // A range that holds slot 0 (reserved): OutOfRange too, as for slot 0.
    for order in 0..=SHIFT {
        let c = Ctx::MaySleep;
        fx.rejects(Error::OutOfRange, |m| m.put_range(0, order));
        fx.rejects(Error::OutOfRange, |m| m.lock_range(0, order));
        fx.rejects(Error::OutOfRange, |m| m.unlock_range(0, order));
        fx.rejects(Error::OutOfRange, |m| m.set_memcg(0, order, 1, c));
    }
    // A batch that runs off the end stops there, after the slots before it.
    let last = end - 1;
    let s = fx.map.alloc(0, 0, Ctx::MaySleep).unwrap();
    assert!(s < end);
    let before = snap(&fx.map, CS);
    let r = fx.map.put_many(last, 2);
    assert!(
        matches!(
            r,
            Err(BatchError {
                done: 0,
                error: Error::NotAllocated
            })
        ),
        "{r:?}"
    );
    assert_eq!(snap(&fx.map, CS), before);
}

#[test]
fn slot_zero_is_reserved() {
    let (p, h) = (StdProvider::new(), RecHost::default());
    let fx = Fx::new(&p, &h);
    fx.all_single_ops_reject(0, Error::OutOfRange);
    let c = Ctx::MaySleep;
    for order in 0..=SHIFT {
        fx.rejects(Error::OutOfRange, |m| m.put_range(0, order));
        fx.rejects(Error::OutOfRange, |m| m.lock_range(0, order));
        fx.rejects(Error::OutOfRange, |m| m.unlock_range(0, order));
        fx.rejects(Error::OutOfRange, |m| m.set_memcg(0, order, 3, c));
    }
    // Slot 0 is never counted or handed out.
    assert_eq!(fx.map.stats().live_slots, 7);
    for _ in 0..40 {
        match fx.map.alloc(0, 0, c) {
            Ok(s) => assert_ne!(s, 0),
            Err(e) => assert_eq!(e, Error::NoSpace),
        }
    }
}

#[test]
fn slot_not_allocated() {
    let (p, h) = (StdProvider::new(), RecHost::default());
    let fx = Fx::new(&p, &h);
    // A free slot of a live cluster, and a slot of a cluster never made.
    let free = fx.free_slot();
    let never = fx.map.geometry().slots() as u32 - 3;
    for slot in [free, never] {
        fx.all_single_ops_reject(slot, Error::NotAllocated);
        let c = Ctx::MaySleep;
        let start = slot & !1;
        fx.rejects(Error::NotAllocated, |m| m.put_range(start, 1));
        fx.rejects(Error::NotAllocated, |m| m.lock_range(start, 1));
        fx.rejects(Error::NotAllocated, |m| m.unlock_range(start, 1));
        fx.rejects(Error::NotAllocated, |m| m.set_memcg(start, 1, 2, c));
    }
}

#[test]
fn put_or_free_of_a_free_slot() {
    let (p, h) = (StdProvider::new(), RecHost::default());
    let fx = Fx::new(&p, &h);
    let m = &fx.map;
    let c = Ctx::MaySleep;
    // Free one order-0 slot (count 1, phys) and the order-1 pair.
    let s = fx.one[1];
    assert_eq!(m.cache_clear(s, 0, c), Ok(Put::Live));
    assert_eq!(m.put(s, 1), Ok(Put::Freed));
    assert_eq!(h.take(), vec![(2, 100, 1)]);
    assert_eq!(m.put_range(fx.pair, 1), Ok(2));
    // Every second free is an error, and changes nothing.
    fx.all_single_ops_reject(s, Error::NotAllocated);
    fx.rejects(Error::NotAllocated, |m| m.put_range(fx.pair, 1));
    fx.rejects(Error::NotAllocated, |m| m.put(fx.pair + 1, 1));
    assert_eq!(
        m.put_many(fx.pair, 2),
        Err(BatchError {
            done: 0,
            error: Error::NotAllocated
        })
    );
    // A zombie (dead while locked) takes no more puts either.
    let z = fx.one[4];
    assert_eq!(m.put(z, 1), Ok(Put::Live));
    assert_eq!(m.cache_clear(z, 0, c), Ok(Put::Live));
    assert_eq!(
        m.lookup(z),
        Ok(Entry {
            backend: Backend::Same(u64::MAX),
            count: 0,
            cached: false,
            locked: true
        })
    );
    fx.rejects(Error::NotAllocated, |m| m.put(z, 1));
    fx.rejects(Error::NotAllocated, |m| m.dup(z, 1, c));
    fx.rejects(Error::NotAllocated, |m| m.cache_clear(z, 0, c));
    fx.rejects(Error::NotAllocated, |m| m.lock(z));
    assert_eq!(m.unlock(z), Ok(Put::Freed));
    fx.rejects(Error::NotAllocated, |m| m.unlock(z));
}

#[test]
fn count_overflow_and_underflow() {
    let (p, h) = (StdProvider::new(), RecHost::default());
    let fx = Fx::new(&p, &h);
    let m = &fx.map;
    let c = Ctx::MaySleep;
    let s = fx.one[0]; // count 3
    fx.rejects(Error::CountOverflow, |m| m.dup(s, u32::MAX, c));
    fx.rejects(Error::CountOverflow, |m| m.dup(s, u32::MAX - 2, c));
    let t = fx.one[3]; // count 70, in the side table
    fx.rejects(Error::CountOverflow, |m| m.dup(t, u32::MAX - 69, c));
    fx.rejects(Error::CountUnderflow, |m| m.put(s, 4));
    fx.rejects(Error::CountUnderflow, |m| m.put(t, 71));
    fx.rejects(Error::CountUnderflow, |m| m.put(fx.one[2], 1));
    // Up to the largest count and back.
    m.dup(s, u32::MAX - 3, c).unwrap();
    assert_eq!(m.lookup(s).unwrap().count, u32::MAX);
    fx.rejects(Error::CountOverflow, |m| m.dup(s, 1, c));
    fx.rejects(Error::CountOverflow, |m| m.try_get(s, c));
    assert_eq!(m.put(s, u32::MAX - 1), Ok(Put::Live));
    assert_eq!(m.lookup(s).unwrap().count, 1);
    assert_eq!(m.stats().overflowed, 1);
    assert_eq!(m.put(s, 1), Ok(Put::Freed));
    assert_eq!(h.take(), vec![(255, 0x77, 0)]);
}

#[test]
fn transitions_from_unexpected_states() {
    let (p, h) = (StdProvider::new(), RecHost::default());
    let fx = Fx::new(&p, &h);
    let m = &fx.map;
    let c = Ctx::MaySleep;
    let [zs, ph, fresh, _, locked] = fx.one[..] else {
        unreachable!()
    };
    // Cache flag already set / already clear.
    fx.rejects(Error::WrongState, |m| m.cache_add(fresh, 1, c));
    fx.rejects(Error::WrongState, |m| m.cache_clear(zs, 1, c));
    // Wrong expected backend.
    fx.rejects(Error::WrongState, |m| {
        m.store(zs, Backend::Zswap(0x78), Backend::Zero)
    });
    fx.rejects(Error::WrongState, |m| {
        m.store(ph, Backend::None, Backend::Zero)
    });
    // Locked slots: no store, no second lock; unlocked: no unlock or commit.
    fx.rejects(Error::Busy, |m| {
        m.store(locked, Backend::Same(u64::MAX), Backend::Zero)
    });
    fx.rejects(Error::Busy, |m| m.lock(locked));
    fx.rejects(Error::NotLocked, |m| m.unlock(zs));
    fx.rejects(Error::NotLocked, |m| {
        m.commit_unlock(zs, Backend::Zswap(0x77), Backend::Zero)
    });
    fx.rejects(Error::NotLocked, |m| m.writeback(zs, 1, 5));
    fx.rejects(Error::NotLocked, |m| m.relocate(ph, (2, 100), (2, 101)));
    // Locked, but the backend is not the one expected: the lock stays held.
    fx.rejects(Error::WrongState, |m| {
        m.commit_unlock(locked, Backend::Zero, Backend::Zero)
    });
    fx.rejects(Error::WrongState, |m| m.writeback(locked, 1, 5));
    m.lock(ph).unwrap();
    fx.rejects(Error::WrongState, |m| m.relocate(ph, (2, 99), (2, 101)));
    fx.rejects(Error::WrongState, |m| m.writeback(ph, 1, 5));
    m.relocate(ph, (2, 100), (2, 101)).unwrap();
    assert_eq!(h.take(), vec![(2, 100, 1)]);
    // Ranges: all or nothing.
    m.lock(fx.pair + 1).unwrap();
    fx.rejects(Error::Busy, |m| m.lock_range(fx.pair, 1));
    fx.rejects(Error::Busy, |m| m.put_range(fx.pair, 1));
    fx.rejects(Error::NotLocked, |m| m.unlock_range(fx.pair, 1));
    m.unlock(fx.pair + 1).unwrap();
    m.cache_add(fx.pair + 1, 0, c).unwrap();
    assert_eq!(m.put(fx.pair + 1, 1), Ok(Put::Live));
    // pair+1 now has count 0 (kept alive by the cache flag).
    fx.rejects(Error::CountUnderflow, |m| m.put_range(fx.pair, 1));
    let r = m.put_many(fx.pair, 2);
    assert_eq!(
        r,
        Err(BatchError {
            done: 1,
            error: Error::CountUnderflow
        })
    );
    // A move that loses to a free: Gone, and the slot is freed with its old
    // backend released.
    let z = fx.one[0];
    m.lock(z).unwrap();
    m.put(z, 3).unwrap();
    assert_eq!(m.lookup(z).unwrap().count, 0);
    assert_eq!(m.writeback(z, 1, 7), Err(Error::Gone));
    assert_eq!(h.take(), vec![(255, 0x77, 0)]);
    assert_eq!(m.lookup(z), Err(Error::NotAllocated));
}

#[test]
fn order_too_big_and_misaligned_ranges() {
    let (p, h) = (StdProvider::new(), RecHost::default());
    let fx = Fx::new(&p, &h);
    let c = Ctx::MaySleep;
    for order in [SHIFT + 1, SHIFT + 5, 31, 32, u32::MAX] {
        fx.rejects(Error::BadOrder, |m| m.alloc(order, 0, c));
        fx.rejects(Error::BadOrder, |m| m.put_range(fx.pair, order));
        fx.rejects(Error::BadOrder, |m| m.lock_range(fx.pair, order));
        fx.rejects(Error::BadOrder, |m| m.unlock_range(fx.pair, order));
        fx.rejects(Error::BadOrder, |m| m.set_memcg(fx.pair, order, 1, c));
    }
    fx.rejects(Error::BadCpu, |m| m.alloc(0, 2, c));
    fx.rejects(Error::BadCpu, |m| m.alloc(0, u32::MAX, c));
    for (start, order) in [
        (fx.pair + 1, 1),
        (fx.pair + 2, 2),
        (fx.pair + 4, SHIFT),
        (3, 2),
    ] {
        fx.rejects(Error::Misaligned, |m| m.put_range(start, order));
        fx.rejects(Error::Misaligned, |m| m.lock_range(start, order));
        fx.rejects(Error::Misaligned, |m| m.unlock_range(start, order));
        fx.rejects(Error::Misaligned, |m| m.set_memcg(start, order, 1, c));
    }
    // The aligned range works.
    assert_eq!(fx.map.put_range(fx.pair, 1), Ok(2));
}

#[test]
fn payload_too_wide() {
    let (p, h) = (StdProvider::new(), RecHost::default());
    let fx = Fx::new(&p, &h);
    let m = &fx.map;
    let fresh = fx.one[2];
    let wide = [
        Backend::Zswap(0x7fff_0000_0000_0000),
        Backend::Zswap(1 << 50),
        Backend::Phys { dev: 64, off: 0 },
        Backend::Phys {
            dev: 0,
            off: 1 << 44,
        },
    ];
    for b in wide {
        assert_eq!(b.encode(), Err(Error::PayloadTooWide));
        fx.rejects(Error::PayloadTooWide, |m| m.store(fresh, Backend::None, b));
        fx.rejects(Error::PayloadTooWide, |m| m.store(fresh, b, Backend::Zero));
        fx.rejects(Error::PayloadTooWide, |m| {
            m.commit_unlock(fx.one[4], Backend::Same(u64::MAX), b)
        });
    }
    // The edges that do fit; every same-filled value fits (those that fit
    // neither inline form in the side table).
    for b in [
        Backend::Same((1 << 49) - 1),
        Backend::Same(!((1 << 49) - 1)),
        Backend::Same(1 << 49),
        Backend::Same(0xff00_ff00_ff00_ff00),
        Backend::Same(0xdead_beef_cafe_f00d),
        Backend::Zswap(0xffff_8880_1234_5678),
        Backend::Phys {
            dev: 63,
            off: (1 << 44) - 1,
        },
    ] {
        let cur = m.lookup(fresh).unwrap().backend;
        m.store(fresh, cur, b).unwrap();
        assert_eq!(m.lookup(fresh).unwrap().backend, b);
    }
    assert_eq!(h.take(), vec![(255, 0xffff_8880_1234_5678, 0)]);
    // Device and offset too wide for a writeback or relocation target.
    m.store(
        fresh,
        Backend::Phys {
            dev: 63,
            off: (1 << 44) - 1,
        },
        Backend::Zswap(5),
    )
    .unwrap();
    assert_eq!(h.take(), vec![(63, (1 << 44) - 1, 1)]);
    m.lock(fresh).unwrap();
    fx.rejects(Error::PayloadTooWide, |m| m.writeback(fresh, 64, 0));
    fx.rejects(Error::PayloadTooWide, |m| m.writeback(fresh, 0, 1 << 44));
    m.writeback(fresh, 1, 1).unwrap();
    assert_eq!(h.take(), vec![(255, 5, 0)]);
    m.lock(fresh).unwrap();
    fx.rejects(Error::PayloadTooWide, |m| {
        m.relocate(fresh, (1, 1), (64, 0))
    });
    fx.rejects(Error::PayloadTooWide, |m| {
        m.relocate(fresh, (64, 1), (1, 2))
    });
    m.relocate(fresh, (1, 1), (1, 2)).unwrap();
    assert_eq!(h.take(), vec![(1, 1, 1)]);
}

/// Provider out of memory: `NoMem`, nothing changed (not even the provider's
/// bytes), and everything works once memory is back.
#[test]
fn provider_out_of_memory() {
    let (p, h) = (StdProvider::new(), RecHost::default());
    let fx = Fx::new(&p, &h);
    let m = &fx.map;
    let c = Ctx::MaySleep;
    let check = |f: &dyn Fn(&Map<'_>) -> Result<(), Error>| {
        let bytes = p.bytes_in_use();
        p.fail_after(Some(0));
        fx.rejects(Error::NoMem, f);
        p.fail_after(None);
        assert_eq!(p.bytes_in_use(), bytes, "a failed call kept memory");
    };
    // A slot of cluster 2 (order 0 on CPU 1: a new cluster).
    check(&|m| m.alloc(0, 1, c).map(|_| ()));
    // Side-table count block for a count above the inline bits: cluster 0
    // has one (slot one[3] overflowed, and it stays attached while it
    // lives, even with its count back inline); cluster 1 has none yet.
    let held = m.stats().side_bytes;
    assert_eq!(m.put(fx.one[3], 70), Ok(Put::Live));
    assert_eq!(m.stats().side_bytes, held);
    let q = fx.pair;
    check(&|m| m.dup(q, 70, c));
    // A same-filled value kept in the side table (store allocates without
    // sleeping): NoMem, the slot keeps its backend.
    check(&|m| m.store(q, Backend::Zero, Backend::Same(0xdead_beef_cafe_f00d)));
    // Cache table for a non-zero cache word: cluster 1 has none yet.
    check(&|m| m.cache_add(q, 0xabc, c));
    check(&|m| m.cache_store(q, 0xabc, c));
    m.cache_add(q, 0, c).unwrap();
    check(&|m| m.cache_clear(q, 0x5ad, c).map(|_| ()));
    // memcg: the per-cluster record, then the table of a second id.
    check(&|m| m.set_memcg(q, 1, 4, c));
    m.set_memcg(q, 1, 4, c).unwrap();
    check(&|m| m.set_memcg(q + 1, 0, 5, c));
    assert_eq!(m.memcg(q + 1), Ok(Some(4)));
    // Operations that need no memory still work while the provider fails.
    p.fail_after(Some(0));
    let t = m.alloc(0, 0, c).unwrap(); // room in CPU 0's cluster
    m.dup(t, 62, c).unwrap();
    m.cache_store(t, 0x99, c).unwrap(); // cluster 0 has a cache table
    assert_eq!(m.put(t, 62), Ok(Put::Live));
    // An attached slot overflows again without memory (hysteresis).
    m.dup(fx.one[3], 70, c).unwrap();
    assert_eq!(m.lookup(fx.one[3]).unwrap().count, 70);
    assert_eq!(m.put(fx.one[3], 70), Ok(Put::Live));
    p.fail_after(None);
    // Recovery: everything that failed now works.
    m.dup(q, 70, c).unwrap();
    assert_eq!(m.lookup(q).unwrap().count, 71);
    m.cache_store(q, 0xabc, c).unwrap();
    assert_eq!(m.cache_clear(q, 0x5ad, c), Ok(Put::Live));
    assert_eq!(
        m.cache_get(q),
        Ok(CacheState {
            cached: false,
            word: 0x5ad
        })
    );
    m.set_memcg(q + 1, 0, 5, c).unwrap();
    assert_eq!((m.memcg(q), m.memcg(q + 1)), (Ok(Some(4)), Ok(Some(5))));
    let n = m.alloc(0, 1, c).unwrap();
    assert!(n >= 2 * CS);
    assert_eq!(p.bytes_in_use(), m.stats().total_bytes());
}

/// A failure at any point of building a new cluster loses nothing: after
/// memory comes back, the whole space can still be allocated.
#[test]
fn out_of_memory_at_every_step_of_a_first_allocation() {
    for k in 0..8 {
        let (p, h) = (StdProvider::new(), RecHost::default());
        let m = new_map(&p, &h);
        let bytes = p.bytes_in_use();
        p.fail_after(Some(k));
        let first = m.alloc(0, 0, Ctx::MaySleep);
        p.fail_after(None);
        let mut got = Vec::new();
        match first {
            Ok(s) => got.push(s),
            Err(e) => {
                assert_eq!(e, Error::NoMem, "fail after {k}");
                assert_eq!(m.stats().live_slots, 0);
                assert!(p.bytes_in_use() >= bytes);
            }
        }
        loop {
            match m.alloc(0, (got.len() % 2) as u32, Ctx::MaySleep) {
                Ok(s) => got.push(s),
                Err(e) => {
                    assert_eq!(e, Error::NoSpace);
                    break;
                }
            }
        }
        assert_eq!(
            got.len() as u64,
            m.geometry().slots() - 1,
            "fail after {k}: a cluster was lost"
        );
        assert_eq!(p.bytes_in_use(), m.stats().total_bytes());
        drop(m);
        assert_eq!(p.bytes_in_use(), 0);
    }
}

/// No-sleep context with a provider that cannot allocate without sleeping:
/// `Again`, nothing changed; the same call where sleeping is allowed works.
#[test]
fn nosleep_asks_to_retry() {
    let (p, h) = (StdProvider::new(), RecHost::default());
    let fx = Fx::new(&p, &h);
    let m = &fx.map;
    let (ns, ms) = (Ctx::NoSleep, Ctx::MaySleep);
    // Cluster 1 has no side-table count block yet (cluster 0 has one).
    p.again_on_nosleep(true);
    let bytes = p.bytes_in_use();
    let q = fx.pair;
    fx.rejects(Error::Again, |m| m.alloc(0, 1, ns));
    fx.rejects(Error::Again, |m| m.dup(q, 70, ns));
    fx.rejects(Error::Again, |m| {
        m.store(q, Backend::Zero, Backend::Same(0xdead_beef_cafe_f00d))
    });
    fx.rejects(Error::Again, |m| m.cache_add(q, 0x1, ns));
    fx.rejects(Error::Again, |m| m.cache_store(q, 0x1, ns));
    fx.rejects(Error::Again, |m| m.set_memcg(q, 1, 3, ns));
    assert_eq!(p.bytes_in_use(), bytes);
    // Retry where sleeping is allowed.
    let s = m.alloc(0, 1, ms).unwrap();
    assert!(s >= 2 * CS);
    m.dup(q, 70, ms).unwrap();
    m.dup(fx.one[0], 60, ms).unwrap();
    m.cache_store(q, 0x1, ms).unwrap();
    m.set_memcg(q, 1, 3, ms).unwrap();
    // Now that the tables exist, no-sleep calls need no memory.
    m.cache_store(q + 1, 0x2, ns).unwrap();
    m.dup(fx.one[3], 1, ns).unwrap();
    assert_eq!(m.put(fx.one[0], 1), Ok(Put::Live));
    assert_eq!(m.lookup(fx.one[0]).unwrap().count, 62);
    p.again_on_nosleep(false);
    assert_eq!(p.bytes_in_use(), m.stats().total_bytes());
}
