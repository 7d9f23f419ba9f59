//! Model-based test of the [`Engine`]: random sequences of valid and invalid
//! operations run against an engine with two or three small devices and
//! against a plain reference model (slots, device reverse maps, device byte
//! arrays, the host's zswap store, memcg charge totals).
//!
//! After every operation: results and errors match the model wherever the
//! engine is deterministic (among devices of equal priority only "a device of
//! the highest priority with room" is asserted), every live slot's bytes read
//! back from wherever its backend says, every device's reverse map equals the
//! model, every zswap handle is released exactly once, and memcg totals equal
//! what the model derives. Each case ends with a swapoff of the virtual layer
//! (to memory or to a direct device) or by freeing everything, and checks that
//! devices and map are empty and the provider holds only what the map and
//! devices report.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use proptest::prelude::*;
use proptest::test_runner::{Config, FailurePersistence, TestRunner};
use vswap_core::{
    Backend, CacheState, ChargePolicy, Ctx, DeviceConfig, Engine, EngineConfig, EngineHost, Entry,
    Error, Evacuated, Geometry, MapConfig, Move, NoHost, PhysDevice, Placement, Put, StdProvider,
    Stopped, SwapOps, SwapinRange, VirtMove, VswapMap, Writeback,
};

/// Bytes per page (four 64-bit words).
const PAGE: usize = 32;
/// Virtual slots.
const VSLOTS: u64 = 1024;
const CPUS: u32 = 2;
/// The memcg with a charge limit, and its limit in pages.
const LIMITED: u16 = 3;
const LIMIT: i64 = 3;
/// Handles the host returns for 'Z' pages: too wide for a core word.
const WIDE: u64 = 0x7fff_0000_0000_0000;
const S: Ctx = Ctx::MaySleep;

/// Outcomes seen, for the coverage check at the end of the run.
static SEEN: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

fn note(label: impl Into<String>) {
    *SEEN.lock().unwrap().entry(label.into()).or_default() += 1;
}

/// `"Ok"` or the error's name.
fn tag<T>(r: &R<T>) -> String {
    match r {
        Ok(_) => "Ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

fn note_r<T>(what: &str, r: &R<T>) {
    note(format!("{what} {}", tag(r)));
}

// ---------------------------------------------------------------------------
// Host: a zswap store, memcg charges with one limited memcg
// ---------------------------------------------------------------------------

#[derive(Default)]
struct TestHost {
    zswap: Mutex<BTreeMap<u64, Vec<u8>>>,
    next: Mutex<u64>,
    charges: Mutex<BTreeMap<u16, i64>>,
    /// `released_phys` calls per device slot, ever.
    phys: Mutex<BTreeMap<(u8, u64), u64>>,
}

impl EngineHost for TestHost {
    fn released_phys(&self, dev: u8, off: u64, len: u64) {
        let mut m = self.phys.lock().unwrap();
        for o in off..off + len {
            *m.entry((dev, o)).or_default() += 1;
        }
    }
    fn release_zswap(&self, h: u64) {
        assert!(
            self.zswap.lock().unwrap().remove(&h).is_some(),
            "zswap handle {h:#x} released twice (or never stored)"
        );
    }
    fn zswap_store(&self, _slot: u32, page: &[u8]) -> Option<u64> {
        let wide = match page[0] {
            b'z' => false,
            b'Z' => true,
            _ => return None,
        };
        let mut n = self.next.lock().unwrap();
        *n += 1;
        let h = if wide { WIDE | *n } else { *n };
        self.zswap.lock().unwrap().insert(h, page.to_vec());
        Some(h)
    }
    fn charge(&self, id: u16, pages: u32) -> bool {
        let mut c = self.charges.lock().unwrap();
        let e = c.entry(id).or_default();
        if id == LIMITED && *e + i64::from(pages) > LIMIT {
            return false;
        }
        *e += i64::from(pages);
        true
    }
    fn uncharge(&self, id: u16, pages: u32) {
        *self.charges.lock().unwrap().entry(id).or_default() -= i64::from(pages);
    }
}

type Eng<'a> = Engine<&'a StdProvider, TestHost>;
type Dev<'a> = PhysDevice<&'a StdProvider>;

// ---------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------

/// A page of kind `k`: 0 zero, 1 all 0xff, 2 a small repeated word, 3 a
/// repeated word too wide for the payload, 4 compressible ('z', zswap takes
/// it), 5 'Z' (zswap takes it with a handle too wide: released at once), 6
/// random; 7 an invalid length (short, empty, or two pages' worth of one
/// repeated word, which once passed as a same-filled page).
fn make_page(k: u8, seed: u32) -> Vec<u8> {
    let words = |w: u64| w.to_ne_bytes().repeat(PAGE / 8);
    let noise = |first: u8| {
        let mut x = u64::from(seed) | 1;
        let mut p: Vec<u8> = (0..PAGE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        p[0] = first;
        p[8] = first ^ 0x55; // never one repeated word
        p
    };
    match k % 8 {
        0 => vec![0; PAGE],
        1 => vec![0xff; PAGE],
        2 => words(u64::from(seed % 200) + 1),
        3 => words(0x4000_0000_0000_0001 + u64::from(seed % 16) * 0x100),
        4 => noise(b'z'),
        5 => noise(b'Z'),
        6 => noise(1),
        _ => vec![7; [12, 0, 2 * PAGE, PAGE + 1][seed as usize % 4]],
    }
}

/// What writeout makes of a page without a device: `Some` backend kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Zero,
    Same(u64),
    Zswap,
    NeedsPhys,
}

fn classify(page: &[u8]) -> Class {
    let w: Vec<u64> = page
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect();
    let same = w.iter().all(|x| *x == w[0]);
    if same && w[0] == 0 {
        Class::Zero
    } else if same {
        Class::Same(w[0])
    } else if page[0] == b'z' {
        Class::Zswap
    } else {
        Class::NeedsPhys
    }
}

// ---------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct MSlot {
    backend: Backend,
    count: u32,
    cached: bool,
    locked: bool,
    word: u64,
    memcg: Option<u16>,
    /// The page's bytes, once written somewhere the test can read back.
    data: Option<Vec<u8>>,
    /// A writeback holds the lock and this reserved device slot.
    wb: Option<(u8, u64)>,
}

impl MSlot {
    fn live(&self) -> bool {
        self.count > 0 || self.cached
    }
    fn entry(&self) -> Entry {
        Entry {
            backend: self.backend,
            count: self.count,
            cached: self.cached,
            locked: self.locked,
        }
    }
}

#[derive(Clone, Debug)]
struct MDev {
    prio: u8,
    usable: u64,
    slots: u64,
    owners: BTreeMap<u64, u32>,
}

impl MDev {
    fn room(&self) -> bool {
        (self.owners.len() as u64) < self.usable
    }
}

type R<T> = Result<T, Error>;

/// A count per device slot.
type PerDevSlot = BTreeMap<(u8, u64), u64>;

struct Model {
    s: BTreeMap<u32, MSlot>,
    freed: BTreeSet<u32>,
    devs: BTreeMap<u8, MDev>,
    /// Device slots freed, per device slot, ever: each must have been
    /// reported to the host's `released_phys` exactly as often.
    phys_freed: BTreeMap<(u8, u64), u64>,
    vslots: u64,
    shift: u32,
    placement: Placement,
    charge: ChargePolicy,
}

impl Model {
    fn chk(&self, slot: u32) -> R<()> {
        if slot == 0 || u64::from(slot) >= self.vslots {
            Err(Error::OutOfRange)
        } else {
            Ok(())
        }
    }

    /// `lookup`: allocated slots (live or zombie).
    fn lookup(&self, slot: u32) -> R<Entry> {
        self.chk(slot)?;
        self.s
            .get(&slot)
            .map(MSlot::entry)
            .ok_or(Error::NotAllocated)
    }

    fn live(&self, slot: u32) -> R<&MSlot> {
        self.chk(slot)?;
        match self.s.get(&slot) {
            Some(e) if e.live() => Ok(e),
            _ => Err(Error::NotAllocated),
        }
    }

    /// What the charge hooks must add up to, per memcg.
    fn charges(&self) -> BTreeMap<u16, i64> {
        let mut c = BTreeMap::new();
        for e in self.s.values() {
            let Some(id) = e.memcg else { continue };
            let n = match self.charge {
                ChargePolicy::None => 0,
                ChargePolicy::EverySlot => 1,
                ChargePolicy::PhysicalOnly => {
                    i64::from(matches!(e.backend, Backend::Phys { .. })) + i64::from(e.wb.is_some())
                }
            };
            if n != 0 {
                *c.entry(id).or_default() += n;
            }
        }
        c
    }

    /// Would charging `n` pages to `memcg` be refused?
    fn refused(&self, memcg: Option<u16>, n: i64) -> bool {
        memcg == Some(LIMITED) && self.charges().get(&LIMITED).copied().unwrap_or(0) + n > LIMIT
    }

    /// Why an order-0 device allocation must fail (`alloc_phys`), if it must.
    fn phys_err(&self, cpu: u32) -> Option<Error> {
        if cpu >= CPUS {
            Some(Error::BadCpu)
        } else if self.devs.is_empty() || !self.devs.values().any(MDev::room) {
            Some(Error::NoSpace)
        } else {
            None
        }
    }

    /// An order-0 device slot the engine chose: on a device of the highest
    /// priority among those with room, and free.
    fn check_tier(&self, dev: u8, off: u64, what: &str) {
        let d = self
            .devs
            .get(&dev)
            .unwrap_or_else(|| panic!("{what}: device {dev} is not present"));
        assert!(d.room(), "{what}: device {dev} was full");
        let top = self
            .devs
            .values()
            .filter(|d| d.room())
            .map(|d| d.prio)
            .max();
        assert_eq!(
            Some(d.prio),
            top,
            "{what}: device {dev} is not of the highest priority with room"
        );
        assert!(
            off > 0 && off < d.slots && !d.owners.contains_key(&off),
            "{what}: ({dev}, {off}) was not free"
        );
    }

    fn own(&mut self, dev: u8, off: u64, slot: u32) {
        let d = self.devs.get_mut(&dev).unwrap();
        assert!(d.owners.insert(off, slot).is_none(), "({dev}, {off}) taken");
        assert!((d.owners.len() as u64) <= d.usable);
    }

    /// The device slot is freed (and reported to the host).
    fn disown(&mut self, dev: u8, off: u64, slot: u32) {
        self.unown(dev, off, slot);
        *self.phys_freed.entry((dev, off)).or_default() += 1;
    }

    /// The model forgets the owner without a free (it is owned again next).
    fn unown(&mut self, dev: u8, off: u64, slot: u32) {
        let d = self.devs.get_mut(&dev).unwrap();
        assert_eq!(d.owners.remove(&off), Some(slot), "({dev}, {off})");
    }

    /// The slot is freed: its backend's device slot goes back (its zswap
    /// handle goes back to the host, which the handle check sees).
    fn free_slot(&mut self, slot: u32) {
        let e = self.s.remove(&slot).unwrap();
        assert!(e.wb.is_none(), "slot {slot} freed with a writeback pending");
        if let Backend::Phys { dev, off } = e.backend {
            self.disown(dev, off, slot);
        }
        self.freed.insert(slot);
    }

    /// Free the slot if it is dead and unlocked.
    fn settle(&mut self, slot: u32) -> Put {
        let e = &self.s[&slot];
        if !e.live() && !e.locked {
            self.free_slot(slot);
            Put::Freed
        } else {
            Put::Live
        }
    }

    fn put(&mut self, slot: u32, n: u32) -> R<Put> {
        let c = self.live(slot)?.count;
        if c < n {
            return Err(Error::CountUnderflow);
        }
        self.s.get_mut(&slot).unwrap().count = c - n;
        Ok(self.settle(slot))
    }

    fn dup(&mut self, slot: u32, n: u32) -> R<()> {
        let c = self.live(slot)?.count;
        let c = c.checked_add(n).ok_or(Error::CountOverflow)?;
        self.s.get_mut(&slot).unwrap().count = c;
        Ok(())
    }

    fn cache_clear(&mut self, slot: u32, shadow: u64) -> R<Put> {
        if !self.live(slot)?.cached {
            return Err(Error::WrongState);
        }
        let e = self.s.get_mut(&slot).unwrap();
        e.cached = false;
        if e.count > 0 || e.locked {
            e.word = shadow;
        }
        Ok(self.settle(slot))
    }

    fn cache_add(&mut self, slot: u32, cookie: u64) -> R<()> {
        if self.live(slot)?.cached {
            return Err(Error::WrongState);
        }
        let e = self.s.get_mut(&slot).unwrap();
        e.cached = true;
        e.word = cookie;
        Ok(())
    }

    fn lock(&mut self, slot: u32) -> R<()> {
        if self.live(slot)?.locked {
            return Err(Error::Busy);
        }
        self.s.get_mut(&slot).unwrap().locked = true;
        Ok(())
    }

    fn unlock(&mut self, slot: u32) -> R<Put> {
        self.chk(slot)?;
        let e = self.s.get_mut(&slot).ok_or(Error::NotAllocated)?;
        if !e.locked {
            return Err(Error::NotLocked);
        }
        e.locked = false;
        Ok(self.settle(slot))
    }

    /// `swapin_check`, in the engine's order of lookups.
    fn swapin_check(&self, start: u32, order: u32) -> R<SwapinRange> {
        if order > self.shift {
            return Err(Error::BadOrder);
        }
        let n = 1u32 << order;
        if start % n != 0 {
            return Err(Error::Misaligned);
        }
        let first = self.lookup(start)?.backend;
        for i in 1..n {
            let b = self.lookup(start.wrapping_add(i))?.backend;
            let ok = match (first, b) {
                (Backend::Phys { dev, off }, Backend::Phys { dev: d, off: o }) => {
                    d == dev && o == off + u64::from(i)
                }
                (Backend::Zswap(_), _) => false,
                (a, b) => a.kind() == b.kind(),
            };
            if !ok {
                return Ok(SwapinRange::No);
            }
        }
        Ok(match first {
            Backend::Zswap(_) => SwapinRange::No,
            Backend::Phys { dev, off } => SwapinRange::Contiguous { dev, off },
            b => SwapinRange::Uniform(b.kind()),
        })
    }

    /// `readahead`: the owners of the aligned window around the slot's device
    /// slot, in device order, without the slot itself.
    fn readahead(&self, slot: u32, len: usize) -> R<Vec<u32>> {
        let Backend::Phys { dev, off } = self.lookup(slot)?.backend else {
            return Ok(Vec::new());
        };
        let window = (len as u64 + 1).next_power_of_two();
        let start = off & !(window - 1);
        Ok(self.devs[&dev]
            .owners
            .range(start..start + window)
            .map(|(_, o)| *o)
            .filter(|o| *o != slot)
            .take(len)
            .collect())
    }
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// Which slot an operation targets, resolved against the model when it runs.
#[derive(Clone, Copy, Debug)]
enum Sel {
    /// Any allocated slot (live or zombie).
    Any(u32),
    /// An unlocked slot in zswap.
    Zswap(u32),
    /// A slot on a device.
    Phys(u32),
    /// A slot whose backend writeout accepts (none or a device slot).
    Writable(u32),
    /// A slot that was freed.
    Freed(u32),
    /// Any number in or just past the space.
    Raw(u32),
    /// 0, the last slot, one past the end, `u32::MAX`.
    Special(u8),
    Exact(u32),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Alloc {
        order: u32,
        cpu: u32,
        memcg: Option<u16>,
    },
    /// alloc, one reference per slot, writeout of each, drop the folio.
    SwapOut {
        order: u32,
        memcg: Option<u16>,
        kind: u8,
        seed: u32,
        keep_cache: bool,
    },
    Dup {
        s: Sel,
        n: u32,
    },
    Put {
        s: Sel,
        /// 0: the whole count, 1: the count plus one, else `n - 2`.
        n: u32,
    },
    CacheClear {
        s: Sel,
        shadow: u64,
    },
    CacheAdd {
        s: Sel,
        cookie: u64,
    },
    /// Drop every count and the folio through the engine.
    Kill {
        s: Sel,
    },
    Writeout {
        s: Sel,
        kind: u8,
        seed: u32,
        cpu: u32,
    },
    Lock {
        s: Sel,
    },
    Unlock {
        s: Sel,
    },
    WbBegin {
        s: Sel,
        cpu: u32,
    },
    WbCommit {
        i: u32,
        kill: bool,
    },
    WbAbort {
        i: u32,
        kill: bool,
    },
    /// Commit or abort a writeback that already ended (a stale token).
    WbStale {
        i: u32,
        commit: bool,
    },
    /// Begin, maybe kill the slot, commit or abort.
    WbSeq {
        s: Sel,
        kill: bool,
        commit: bool,
    },
    Evacuate {
        dev: u8,
        to: Option<u8>,
        cpu: u32,
        fail_at: Option<u8>,
    },
    RemoveDevice {
        dev: u8,
    },
    AddDevice {
        dev: u8,
        prio: u8,
    },
    SwapinCheck {
        s: Sel,
        order: u32,
        align: bool,
    },
    Readahead {
        s: Sel,
        len: u8,
    },
}

fn sel(k: u8, r: u32) -> Sel {
    match k % 16 {
        0..=7 => Sel::Any(r),
        8..=9 => Sel::Writable(r),
        10 => Sel::Phys(r),
        11 => Sel::Zswap(r),
        12 => Sel::Freed(r),
        13..=14 => Sel::Raw(r),
        _ => Sel::Special(r as u8),
    }
}

fn memcg_of(x: u32) -> Option<u16> {
    match x % 5 {
        0 | 1 => None,
        2 => Some(1),
        3 => Some(2),
        _ => Some(LIMITED),
    }
}

fn make_op(t: u8, k: u8, a: u32, b: u32, c: u64) -> Op {
    let s = sel(k, a);
    let cpu = if b & 0xf000 == 0 { 2 } else { b % 2 };
    let order = match b % 16 {
        0..=7 => 0,
        8..=10 => 1,
        11..=13 => 2,
        14 => 3,
        _ => 4,
    };
    // Device numbers: 0..3 index the case's device specs, 3 an id never
    // used, 4 an id out of range.
    let dev = (c % 5) as u8;
    match t % 100 {
        0..=8 => Op::Alloc {
            order,
            cpu,
            memcg: memcg_of(a >> 8),
        },
        9..=20 => Op::SwapOut {
            order: order.min(2),
            memcg: memcg_of(a >> 8),
            kind: (b >> 8) as u8 % 7,
            seed: a,
            keep_cache: c & 0x100 != 0,
        },
        21..=25 => Op::Dup {
            s,
            n: [0, 1, 1, 2, 3, 70, u32::MAX][(b % 7) as usize],
        },
        26..=31 => Op::Put { s, n: b % 5 },
        32..=35 => Op::CacheClear {
            s,
            shadow: c % 3 * 0xabc,
        },
        36..=37 => Op::CacheAdd {
            s,
            cookie: c % 3 * 0x1234,
        },
        38..=41 => Op::Kill { s },
        42..=52 => Op::Writeout {
            s: if k % 3 == 0 { s } else { Sel::Writable(a) },
            kind: (b >> 8) as u8,
            seed: a,
            cpu,
        },
        53..=54 => Op::Lock { s },
        55..=56 => Op::Unlock { s },
        57..=61 => Op::WbBegin {
            s: if k % 4 == 0 { s } else { Sel::Zswap(a) },
            cpu,
        },
        62..=64 => Op::WbCommit {
            i: a,
            kill: b % 4 == 0,
        },
        65..=66 => Op::WbAbort {
            i: a,
            kill: b % 4 == 0,
        },
        67..=68 => Op::WbStale {
            i: a,
            commit: b % 2 == 0,
        },
        69..=72 => Op::WbSeq {
            s: Sel::Zswap(a),
            kill: b % 3 == 0,
            commit: b % 2 == 0,
        },
        73..=79 => Op::Evacuate {
            dev: dev % 3,
            // Mostly another device (onto itself is refused).
            to: match (c >> 8) % 4 {
                0 => None,
                3 => Some(((c >> 16) % 5) as u8),
                _ => Some((dev % 3 + 1 + (c >> 16) as u8 % 2) % 3),
            },
            cpu,
            fail_at: (c & 0x3000 == 0).then_some((c >> 24) as u8 % 4),
        },
        80..=83 => Op::RemoveDevice { dev },
        84..=87 => Op::AddDevice {
            dev,
            prio: (c >> 8) as u8 % 3,
        },
        88..=93 => Op::SwapinCheck {
            s: if k % 2 == 0 { Sel::Phys(a) } else { s },
            order: b % 4,
            align: b & 0x10 == 0,
        },
        _ => Op::Readahead {
            s: if k % 2 == 0 { Sel::Phys(a) } else { s },
            len: (b % 9) as u8,
        },
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(t, k, a, b, c)| make_op(t, k, a, b, c))
}

/// One device of a case.
#[derive(Clone, Debug)]
struct DevSpec {
    id: u8,
    prio: u8,
    shift: u32,
    slots: u64,
    bad: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Case {
    map_shift: u32,
    placement: Placement,
    charge: ChargePolicy,
    devs: Vec<DevSpec>,
    /// Devices present at the start (a prefix of `devs`).
    start: usize,
    /// 0: free everything; 1: swapoff to memory; 2: swapoff to a direct device.
    end: u8,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let spec = (
        0u8..3,
        2u32..=3,
        8u64..=40,
        prop::collection::vec(1u64..40, 0..3),
    );
    (
        2u32..=3,
        any::<bool>(),
        0u8..3,
        prop::collection::vec(spec, 3),
        2usize..=3,
        0u8..3,
        any::<bool>(),
    )
        .prop_map(|(map_shift, eager, charge, specs, start, end, equal)| {
            let ids = [0u8, 5, 9];
            let devs = specs
                .into_iter()
                .enumerate()
                .map(|(i, (prio, shift, slots, bad))| DevSpec {
                    id: ids[i],
                    prio: if equal { 1 } else { prio },
                    shift,
                    slots,
                    bad: bad.into_iter().filter(|b| *b < slots).collect(),
                })
                .collect();
            Case {
                map_shift,
                placement: if eager {
                    Placement::Eager
                } else {
                    Placement::Deferred
                },
                charge: [
                    ChargePolicy::None,
                    ChargePolicy::PhysicalOnly,
                    ChargePolicy::EverySlot,
                ][usize::from(charge)],
                devs,
                start,
                end,
            }
        })
}

// ---------------------------------------------------------------------------
// Runner
// ---------------------------------------------------------------------------

struct Run<'a> {
    e: Eng<'a>,
    p: &'a StdProvider,
    m: Model,
    specs: Vec<DevSpec>,
    /// Device contents, `PAGE` bytes per device slot.
    disk: BTreeMap<u8, Vec<u8>>,
    /// Pages read into memory by evacuation, by virtual slot.
    mem: BTreeMap<u32, Vec<u8>>,
    pending: Vec<Writeback>,
    /// Writebacks that ended.
    finished: Vec<Writeback>,
    removed: BTreeMap<u8, Dev<'a>>,
    last_alloc: Option<u32>,
    cookie: u64,
    step: usize,
    /// `released_phys` per device slot and the model's frees, at the last
    /// check (see `check_released`).
    released_seen: std::cell::RefCell<(PerDevSlot, PerDevSlot)>,
}

fn new_device<'a>(p: &'a StdProvider, s: &DevSpec) -> Dev<'a> {
    PhysDevice::new(
        DeviceConfig {
            geometry: Geometry::tiny(s.shift, s.slots, CPUS),
            discard: false,
            rotational: false,
        },
        &s.bad,
        p,
    )
    .unwrap()
}

/// Read a page from where `b` says.
fn read_back(
    host: &TestHost,
    disk: &BTreeMap<u8, Vec<u8>>,
    mem: &BTreeMap<u32, Vec<u8>>,
    slot: u32,
    b: Backend,
) -> Option<Vec<u8>> {
    Some(match b {
        Backend::None => mem.get(&slot)?.clone(),
        Backend::Zero => vec![0; PAGE],
        Backend::Same(v) => v.to_ne_bytes().repeat(PAGE / 8),
        Backend::Zswap(h) => host.zswap.lock().unwrap().get(&h)?.clone(),
        Backend::Phys { dev, off } => {
            let at = off as usize * PAGE;
            disk.get(&dev)?.get(at..at + PAGE)?.to_vec()
        }
    })
}

impl<'a> Run<'a> {
    fn new(p: &'a StdProvider, case: &Case) -> Self {
        let cfg = EngineConfig {
            map: MapConfig {
                geometry: Geometry::tiny(case.map_shift, VSLOTS, CPUS),
                ..MapConfig::default()
            },
            placement: case.placement,
            charge: case.charge,
            page_size: PAGE as u32,
        };
        let e = Engine::new(cfg, p, TestHost::default()).unwrap();
        let vslots = e.map().geometry().slots();
        let mut run = Run {
            e,
            p,
            m: Model {
                s: BTreeMap::new(),
                freed: BTreeSet::new(),
                devs: BTreeMap::new(),
                phys_freed: BTreeMap::new(),
                vslots,
                shift: case.map_shift,
                placement: case.placement,
                charge: case.charge,
            },
            specs: case.devs.clone(),
            disk: BTreeMap::new(),
            mem: BTreeMap::new(),
            pending: Vec::new(),
            finished: Vec::new(),
            removed: BTreeMap::new(),
            released_seen: Default::default(),
            last_alloc: None,
            cookie: 0x10_0000,
            step: 0,
        };
        for i in 0..case.start {
            let id = run.specs[i].id;
            run.exec(Op::AddDevice {
                dev: i as u8,
                prio: 9,
            });
            assert!(run.m.devs.contains_key(&id));
        }
        run.check();
        run
    }

    fn resolve(&self, s: Sel) -> u32 {
        let m = &self.m;
        let pick = |v: Vec<u32>, r: u32| (!v.is_empty()).then(|| v[r as usize % v.len()]);
        let raw = |r: u32| (u64::from(r) % (m.vslots + 8)) as u32;
        let of = |f: &dyn Fn(&MSlot) -> bool, r: u32| {
            pick(
                m.s.iter().filter(|(_, e)| f(e)).map(|(s, _)| *s).collect(),
                r,
            )
            .unwrap_or_else(|| raw(r))
        };
        match s {
            Sel::Any(r) => of(&|_| true, r),
            Sel::Zswap(r) => of(&|e| matches!(e.backend, Backend::Zswap(_)) && !e.locked, r),
            Sel::Phys(r) => of(&|e| matches!(e.backend, Backend::Phys { .. }), r),
            Sel::Writable(r) => of(
                &|e| matches!(e.backend, Backend::None | Backend::Phys { .. }),
                r,
            ),
            Sel::Freed(r) => pick(m.freed.iter().copied().collect(), r).unwrap_or_else(|| raw(r)),
            Sel::Raw(r) => raw(r),
            Sel::Special(k) => {
                let v = m.vslots as u32;
                [0, v - 1, v, u32::MAX][usize::from(k % 4)]
            }
            Sel::Exact(x) => x,
        }
    }

    /// Device number of a device selector.
    fn dev_id(&self, d: u8) -> u8 {
        match d {
            0..=2 => self.specs[usize::from(d)].id,
            3 => 12,
            _ => 16,
        }
    }

    fn exec(&mut self, op: Op) {
        self.step += 1;
        let st = self.step;
        let what = format!("step {st}: {op:?}");
        macro_rules! same {
            ($act:expr, $exp:expr) => {{
                let act = $act;
                let exp = $exp;
                assert_eq!(act, exp, "{what}");
            }};
        }
        match op {
            Op::Alloc { order, cpu, memcg } => {
                self.last_alloc = None;
                let r = self.e.alloc(order, cpu, memcg, S);
                note_r("alloc", &r);
                let n = 1u32 << order.min(31);
                if order > self.m.shift {
                    return same!(r, Err(Error::BadOrder));
                }
                if cpu >= CPUS {
                    return same!(r, Err(Error::BadCpu));
                }
                if self.m.charge == ChargePolicy::EverySlot && self.m.refused(memcg, i64::from(n)) {
                    return same!(r, Err(Error::NoSpace));
                }
                let slot = match r {
                    Ok(s) => s,
                    Err(Error::NoSpace) => {
                        assert!(
                            self.m.s.len() as u64 + u64::from(n) > self.m.vslots / 4,
                            "{what}: virtual NoSpace with room"
                        );
                        return;
                    }
                    Err(e) => panic!("{what}: {e:?}"),
                };
                assert_eq!(slot % n, 0, "{what}: misaligned");
                for i in 0..n {
                    assert!(
                        self.m.chk(slot + i).is_ok() && !self.m.s.contains_key(&(slot + i)),
                        "{what}: slot {} handed out twice",
                        slot + i
                    );
                    self.m.freed.remove(&(slot + i));
                    self.m.s.insert(
                        slot + i,
                        MSlot {
                            backend: Backend::None,
                            count: 0,
                            cached: true,
                            locked: false,
                            word: 0,
                            memcg,
                            data: None,
                            wb: None,
                        },
                    );
                    self.mem.remove(&(slot + i));
                }
                self.last_alloc = Some(slot);
                if self.m.placement == Placement::Eager {
                    self.eager(slot, order, memcg, &what);
                }
            }
            Op::SwapOut {
                order,
                memcg,
                kind,
                seed,
                keep_cache,
            } => {
                self.exec(Op::Alloc {
                    order,
                    cpu: seed % CPUS,
                    memcg,
                });
                let Some(slot) = self.last_alloc else { return };
                for i in 0..1u32 << order {
                    let x = Sel::Exact(slot + i);
                    self.exec(Op::Dup { s: x, n: 1 });
                    self.exec(Op::Writeout {
                        s: x,
                        kind: kind.wrapping_add(i as u8 % 3),
                        seed: seed.wrapping_add(i),
                        cpu: (seed >> 1) % CPUS,
                    });
                    if !keep_cache {
                        self.exec(Op::CacheClear { s: x, shadow: 0 });
                    }
                }
            }
            Op::Dup { s, n } => {
                let slot = self.resolve(s);
                let r = self.e.map().dup(slot, n, S);
                note_r("dup", &r);
                same!(r, self.m.dup(slot, n));
                if self.m.s.get(&slot).is_some_and(|e| e.count > 62) {
                    note("count in the side table");
                }
            }
            Op::Put { s, n } => {
                let slot = self.resolve(s);
                let c = self.m.s.get(&slot).map_or(0, |e| e.count);
                let n = match n {
                    0 => c,
                    1 => c.saturating_add(1),
                    x => x - 2,
                };
                let r = self.e.put(slot, n);
                note(format!("put {r:?}"));
                same!(r, self.m.put(slot, n));
                if r == Ok(Put::Live) && self.m.s.get(&slot).is_some_and(|e| !e.live()) {
                    note("zombie");
                }
            }
            Op::CacheClear { s, shadow } => {
                let slot = self.resolve(s);
                same!(
                    self.e.cache_clear(slot, shadow, S),
                    self.m.cache_clear(slot, shadow)
                );
                if !self.m.s.contains_key(&slot) {
                    self.mem.remove(&slot);
                }
            }
            Op::CacheAdd { s, cookie } => {
                let slot = self.resolve(s);
                same!(
                    self.e.map().cache_add(slot, cookie, S),
                    self.m.cache_add(slot, cookie)
                );
            }
            Op::Kill { s } => {
                let slot = self.resolve(s);
                let x = Sel::Exact(slot);
                self.exec(Op::Put { s: x, n: 0 });
                if self.m.s.get(&slot).is_some_and(|e| e.cached) {
                    self.exec(Op::CacheClear { s: x, shadow: 0 });
                }
            }
            Op::Writeout { s, kind, seed, cpu } => {
                let slot = self.resolve(s);
                let page = make_page(kind, seed);
                let r = self.e.writeout(slot, &page, cpu);
                note(format!(
                    "writeout {}",
                    match r {
                        Ok(b) => format!("{:?}", b.kind()),
                        Err(e) => format!("{e:?}"),
                    }
                ));
                self.writeout(slot, page, cpu, r, &what);
            }
            Op::Lock { s } => {
                let slot = self.resolve(s);
                let r = self.e.map().lock(slot);
                note_r("lock", &r);
                same!(r, self.m.lock(slot));
            }
            Op::Unlock { s } => {
                let slot = self.resolve(s);
                if self.m.s.get(&slot).is_some_and(|e| e.wb.is_some()) {
                    return; // the writeback's lock, not ours
                }
                let r = self.e.map().unlock(slot);
                note(format!("unlock {r:?}"));
                same!(r, self.m.unlock(slot));
            }
            Op::WbBegin { s, cpu } => {
                let slot = self.resolve(s);
                let r = self.e.writeback_begin(slot, cpu);
                note_r("writeback begin", &r);
                self.wb_begin(slot, cpu, r, &what);
            }
            Op::WbCommit { i, kill } | Op::WbAbort { i, kill } => {
                if self.pending.is_empty() {
                    return;
                }
                let w = self.pending.remove(i as usize % self.pending.len());
                if kill {
                    self.exec(Op::Kill {
                        s: Sel::Exact(w.slot),
                    });
                }
                if matches!(op, Op::WbCommit { .. }) {
                    self.wb_commit(w, &what);
                } else {
                    self.wb_abort(w, &what);
                }
            }
            Op::WbStale { i, commit } => {
                if self.finished.is_empty() {
                    return;
                }
                let w = self.finished[i as usize % self.finished.len()];
                if self.pending.contains(&w) {
                    return; // the same writeback again: indistinguishable
                }
                // A token that ended must change nothing.
                let exp = (|| {
                    let e = self.m.lookup(w.slot)?;
                    if !e.locked {
                        return Err(Error::NotLocked);
                    }
                    if e.backend != Backend::Zswap(w.handle) {
                        return Err(Error::WrongState);
                    }
                    let d = self.m.devs.get(&w.dev).ok_or(Error::NoDevice)?;
                    if d.owners.get(&w.off) != Some(&w.slot) {
                        return Err(Error::WrongState);
                    }
                    unreachable!("only the pending writeback reserved this slot")
                })();
                let r = if commit {
                    self.e.writeback_commit(w)
                } else {
                    self.e.writeback_abort(w).map(|_| ())
                };
                note_r(
                    if commit {
                        "stale commit"
                    } else {
                        "stale abort"
                    },
                    &r,
                );
                same!(r, exp);
            }
            Op::WbSeq { s, kill, commit } => {
                let slot = self.resolve(s);
                let before = self.pending.len();
                self.exec(Op::WbBegin {
                    s: Sel::Exact(slot),
                    cpu: 0,
                });
                if self.pending.len() > before {
                    let i = before as u32;
                    self.exec(if commit {
                        Op::WbCommit { i, kill }
                    } else {
                        Op::WbAbort { i, kill }
                    });
                }
            }
            Op::Evacuate {
                dev,
                to,
                cpu,
                fail_at,
            } => {
                let dev = self.dev_id(dev);
                let to = to.map(|t| self.dev_id(t));
                self.evacuate(dev, to, cpu, fail_at.map(usize::from), &what);
            }
            Op::RemoveDevice { dev } => {
                let id = self.dev_id(dev);
                let r = self.e.remove_device(id);
                note_r("remove", &r);
                let exp = match self.m.devs.get(&id) {
                    None => Err(Error::NoDevice),
                    Some(d) if !d.owners.is_empty() => Err(Error::Busy),
                    Some(_) => Ok(()),
                };
                same!(r.as_ref().map(|_| ()).map_err(|e| *e), exp);
                if let Ok(d) = r {
                    assert_eq!(d.stats().used, 0);
                    self.m.devs.remove(&id);
                    self.removed.insert(id, d);
                }
            }
            Op::AddDevice { dev, prio } => {
                let id = self.dev_id(dev);
                let spec = self.specs[usize::from(dev) % self.specs.len()].clone();
                let (d, exp) = if usize::from(id) >= vswap_core::MAX_DEVICES {
                    (new_device(self.p, &spec), Err(Error::NoDevice))
                } else if self.m.devs.contains_key(&id) {
                    (new_device(self.p, &spec), Err(Error::WrongState))
                } else if let Some(d) = self.removed.remove(&id) {
                    (d, Ok(()))
                } else {
                    (new_device(self.p, &spec), Ok(()))
                };
                let (slots, usable) = (d.slots(), d.stats().usable);
                // Priority 9 is the initial one: the spec's.
                let prio = if prio == 9 { spec.prio } else { prio };
                let r = self.e.add_device(id, prio, d);
                note_r("add", &r);
                same!(r, exp);
                if exp.is_ok() {
                    self.m.devs.insert(
                        id,
                        MDev {
                            prio,
                            usable,
                            slots,
                            owners: BTreeMap::new(),
                        },
                    );
                    self.disk.insert(id, vec![0xee; slots as usize * PAGE]);
                }
            }
            Op::SwapinCheck { s, order, align } => {
                let mut slot = self.resolve(s);
                if align {
                    slot &= !((1u32 << order) - 1);
                }
                let r = self.e.swapin_check(slot, order);
                note(format!(
                    "swapin {}",
                    match r {
                        Ok(SwapinRange::Contiguous { .. }) => "Contiguous".into(),
                        Ok(x) => format!("{x:?}"),
                        Err(e) => format!("{e:?}"),
                    }
                ));
                same!(r, self.m.swapin_check(slot, order));
            }
            Op::Readahead { s, len } => {
                let slot = self.resolve(s);
                let mut out = vec![0u32; usize::from(len)];
                let r = self.e.readahead(slot, &mut out).map(|n| out[..n].to_vec());
                if r.as_ref().is_ok_and(|v| !v.is_empty()) {
                    note("readahead neighbours");
                }
                same!(r, self.m.readahead(slot, usize::from(len)));
            }
        }
        self.check();
    }

    /// What eager placement did with a fresh allocation.
    fn eager(&mut self, slot: u32, order: u32, memcg: Option<u16>, what: &str) {
        let n = 1u32 << order;
        let got = self.e.map().lookup(slot).unwrap().backend;
        let Backend::Phys { dev, off } = got else {
            note("eager: no device slot");
            assert_eq!(got, Backend::None, "{what}");
            let charge_refused =
                self.m.charge == ChargePolicy::PhysicalOnly && self.m.refused(memcg, i64::from(n));
            if order == 0 && !charge_refused {
                assert!(
                    self.m.phys_err(0).is_some(),
                    "{what}: no eager device slot although a device has room"
                );
            }
            return;
        };
        note(format!("eager: order {order} placed"));
        if order == 0 {
            self.m.check_tier(dev, off, what);
        }
        assert_eq!(off % u64::from(n), 0, "{what}: device run misaligned");
        for i in 0..n {
            let b = Backend::Phys {
                dev,
                off: off + u64::from(i),
            };
            assert_eq!(
                self.e.map().lookup(slot + i).unwrap().backend,
                b,
                "{what}: eager run"
            );
            self.m.own(dev, off + u64::from(i), slot + i);
            self.m.s.get_mut(&(slot + i)).unwrap().backend = b;
        }
    }

    fn writeout(&mut self, slot: u32, page: Vec<u8>, cpu: u32, r: R<Backend>, what: &str) {
        let exp: R<()> = (|| {
            // Exactly one page, then the engine's CPU, before anything else.
            if page.len() != PAGE {
                return Err(Error::BadLength);
            }
            if cpu >= CPUS {
                return Err(Error::BadCpu);
            }
            let cur = self.m.lookup(slot)?.backend;
            if !matches!(cur, Backend::None | Backend::Phys { .. }) {
                return Err(Error::WrongState);
            }
            let e = &self.m.s[&slot];
            let class = classify(&page);
            if class == Class::NeedsPhys {
                if let Backend::Phys { .. } = cur {
                    return Ok(()); // written again where it is
                }
                if self.m.charge == ChargePolicy::PhysicalOnly && self.m.refused(e.memcg, 1) {
                    return Err(Error::NoSpace);
                }
                if let Some(err) = self.m.phys_err(cpu) {
                    return Err(err);
                }
            }
            if !e.live() {
                return Err(Error::NotAllocated);
            }
            if e.locked {
                return Err(Error::Busy);
            }
            Ok(())
        })();
        let new = match (r, exp) {
            (Ok(b), Ok(())) => b,
            (r, exp) => {
                assert_eq!(r.map(|_| ()), exp, "{what}: writeout of slot {slot}");
                return;
            }
        };
        let cur = self.m.s[&slot].backend;
        match (classify(&page), new) {
            (Class::Zero, Backend::Zero) => {}
            (Class::Same(v), Backend::Same(w)) => assert_eq!(v, w, "{what}"),
            (Class::Zswap, Backend::Zswap(h)) => assert!(
                self.e.host().zswap.lock().unwrap().contains_key(&h),
                "{what}: handle not stored"
            ),
            (Class::NeedsPhys, Backend::Phys { dev, off }) => {
                if let Backend::Phys { .. } = cur {
                    note("writeout in place");
                    assert_eq!(new, cur, "{what}: a device slot is written in place");
                } else {
                    self.m.check_tier(dev, off, what);
                    self.m.own(dev, off, slot);
                }
                let at = off as usize * PAGE;
                self.disk.get_mut(&dev).unwrap()[at..at + PAGE].copy_from_slice(&page);
            }
            (c, b) => panic!("{what}: page {c:?} written as {b:?}"),
        }
        if let Backend::Phys { dev, off } = cur {
            if new != cur {
                self.m.disown(dev, off, slot);
            }
        }
        let e = self.m.s.get_mut(&slot).unwrap();
        e.backend = new;
        e.data = Some(page);
    }

    fn wb_begin(&mut self, slot: u32, cpu: u32, r: R<Writeback>, what: &str) {
        let exp: R<u64> = (|| {
            // The engine's CPU, before the slot is looked at.
            if cpu >= CPUS {
                return Err(Error::BadCpu);
            }
            let e = self.m.live(slot)?;
            if e.locked {
                return Err(Error::Busy);
            }
            let Backend::Zswap(h) = e.backend else {
                return Err(Error::WrongState);
            };
            if self.m.charge == ChargePolicy::PhysicalOnly && self.m.refused(e.memcg, 1) {
                return Err(Error::NoSpace);
            }
            if let Some(err) = self.m.phys_err(cpu) {
                return Err(err);
            }
            Ok(h)
        })();
        let (w, h) = match (r, exp) {
            (Ok(w), Ok(h)) => (w, h),
            (r, exp) => {
                assert_eq!(r.map(|w| w.handle), exp, "{what}: writeback_begin({slot})");
                return;
            }
        };
        assert_eq!((w.slot, w.handle), (slot, h), "{what}");
        self.m.check_tier(w.dev, w.off, what);
        self.m.own(w.dev, w.off, slot);
        let e = self.m.s.get_mut(&slot).unwrap();
        e.locked = true;
        e.wb = Some((w.dev, w.off));
        self.pending.push(w);
    }

    fn wb_commit(&mut self, w: Writeback, what: &str) {
        // The host's I/O: decompress into the reserved device slot.
        let data = self.e.host().zswap.lock().unwrap()[&w.handle].clone();
        let at = w.off as usize * PAGE;
        self.disk.get_mut(&w.dev).unwrap()[at..at + PAGE].copy_from_slice(&data);
        let r = self.e.writeback_commit(w);
        note_r("writeback commit", &r);
        self.finished.push(w);
        self.m.unown(w.dev, w.off, w.slot);
        let e = self.m.s.get_mut(&w.slot).unwrap();
        assert_eq!((e.locked, e.wb), (true, Some((w.dev, w.off))));
        e.wb = None;
        e.locked = false;
        if !e.live() {
            // Lost to a free: the reserved device slot goes back.
            *self.m.phys_freed.entry((w.dev, w.off)).or_default() += 1;
        }
        let e = self.m.s.get_mut(&w.slot).unwrap();
        if e.live() {
            assert_eq!(r, Ok(()), "{what}: commit");
            e.backend = Backend::Phys {
                dev: w.dev,
                off: w.off,
            };
            self.m.own(w.dev, w.off, w.slot);
        } else {
            assert_eq!(r, Err(Error::Gone), "{what}: commit of a dead slot");
            self.m.free_slot(w.slot);
        }
    }

    fn wb_abort(&mut self, w: Writeback, what: &str) {
        let r = self.e.writeback_abort(w);
        note(format!("writeback abort {r:?}"));
        self.finished.push(w);
        self.m.disown(w.dev, w.off, w.slot);
        let e = self.m.s.get_mut(&w.slot).unwrap();
        assert_eq!((e.locked, e.wb), (true, Some((w.dev, w.off))));
        e.wb = None;
        let exp = self.m.unlock(w.slot);
        assert_eq!(r, exp, "{what}: abort");
    }

    fn evacuate(&mut self, dev: u8, to: Option<u8>, cpu: u32, fail_at: Option<usize>, what: &str) {
        let mut moves: Vec<(Move, u64)> = Vec::new();
        let r = {
            let disk = &mut self.disk;
            let mem = &mut self.mem;
            let cookie = &mut self.cookie;
            self.e.evacuate(dev, to, cpu, |mv| {
                if let Move::Drop { .. } = mv {
                    // Its result is ignored; not an I/O that can fail.
                    moves.push((mv, 0));
                    return Ok(0);
                }
                let ios = moves
                    .iter()
                    .filter(|(m, _)| !matches!(m, Move::Drop { .. }))
                    .count();
                if fail_at == Some(ios) {
                    moves.push((mv, 0));
                    return Err(Error::Again);
                }
                let c = match mv {
                    Move::Copy {
                        from_dev,
                        from,
                        to_dev,
                        to,
                        ..
                    } => {
                        let (f, t) = (from as usize * PAGE, to as usize * PAGE);
                        let page = disk[&from_dev][f..f + PAGE].to_vec();
                        disk.get_mut(&to_dev).unwrap()[t..t + PAGE].copy_from_slice(&page);
                        0
                    }
                    Move::Read { slot, dev, off } => {
                        let f = off as usize * PAGE;
                        mem.insert(slot, disk[&dev][f..f + PAGE].to_vec());
                        *cookie += 1;
                        *cookie
                    }
                    Move::Drop { .. } => unreachable!(),
                };
                moves.push((mv, c));
                Ok(c)
            })
        };
        // The model's evacuation, pass by pass, in device order.
        let m = &mut self.m;
        let mut moves = moves.into_iter();
        // What it did, also when it stops with an error (`Stopped::done`).
        let mut done_m = Evacuated::default();
        let exp: R<()> = (|| {
            let done = &mut done_m;
            if to == Some(dev) {
                return Err(Error::BadConfig);
            }
            // The engine's CPU contract: checked first, also to memory.
            if cpu >= CPUS {
                return Err(Error::BadCpu);
            }
            if !m.devs.contains_key(&dev) {
                return Err(Error::NoDevice);
            }
            let mut io = 0usize;
            loop {
                done.passes += 1;
                let (mut left, mut progress) = (0, false);
                let snapshot: Vec<(u64, u32)> =
                    m.devs[&dev].owners.iter().map(|(o, s)| (*o, *s)).collect();
                for (off, owner) in snapshot {
                    let e = &m.s[&owner];
                    let here = Backend::Phys { dev, off };
                    // Locked by someone else, dead or alive: retried.
                    if e.locked {
                        left += 1;
                        continue;
                    }
                    if !e.live() || e.backend != here {
                        done.lost_to_free += 1;
                        progress = true;
                        continue;
                    }
                    match to {
                        Some(t) => {
                            let Some(td) = m.devs.get(&t) else {
                                return Err(Error::NoDevice);
                            };
                            if !td.room() {
                                return Err(Error::NoSpace);
                            }
                            let (mv, _) = moves.next().expect("a move");
                            let Move::Copy {
                                slot,
                                from_dev,
                                from,
                                to_dev,
                                to: new,
                            } = mv
                            else {
                                panic!("{what}: {mv:?}")
                            };
                            assert_eq!((slot, from_dev, from, to_dev), (owner, dev, off, t));
                            assert!(
                                new > 0 && new < td.slots && !td.owners.contains_key(&new),
                                "{what}: copy to ({t}, {new}), not free"
                            );
                            io += 1;
                            if fail_at == Some(io - 1) {
                                return Err(Error::Again);
                            }
                            m.disown(dev, off, owner);
                            m.own(t, new, owner);
                            m.s.get_mut(&owner).unwrap().backend =
                                Backend::Phys { dev: t, off: new };
                        }
                        None => {
                            let (mv, c) = moves.next().expect("a move");
                            assert_eq!(
                                mv,
                                Move::Read {
                                    slot: owner,
                                    dev,
                                    off
                                },
                                "{what}"
                            );
                            io += 1;
                            if fail_at == Some(io - 1) {
                                return Err(Error::Again);
                            }
                            m.disown(dev, off, owner);
                            let e = m.s.get_mut(&owner).unwrap();
                            if e.cached {
                                // Its folio holds the data: the one read
                                // is handed back.
                                note("evacuate to memory: folio dropped");
                                let (drop, _) = moves.next().expect("a drop");
                                assert_eq!(
                                    drop,
                                    Move::Drop {
                                        slot: owner,
                                        cookie: c
                                    },
                                    "{what}"
                                );
                            } else {
                                e.cached = true;
                                e.word = c;
                            }
                            e.backend = Backend::None;
                        }
                    }
                    done.moved += 1;
                    progress = true;
                }
                if left == 0 {
                    return Ok(());
                }
                if !progress {
                    return Err(Error::Busy);
                }
            }
        })();
        let exp = exp.map(|()| done_m).map_err(|error| Stopped {
            error,
            done: done_m,
        });
        assert_eq!(r, exp, "{what}: evacuate({dev}, {to:?})");
        let dest = if to.is_some() {
            "to device"
        } else {
            "to memory"
        };
        note(match r {
            Ok(ev) if ev.moved > 0 => format!("evacuate {dest} moved"),
            Ok(_) => "evacuate Ok".into(),
            Err(e) => format!("evacuate {:?}", e.error),
        });
        assert!(
            moves.next().is_none(),
            "{what}: moves the model did not expect"
        );
    }

    /// Free every slot through the API (pending writebacks aborted, locks
    /// dropped), checking after each step.
    fn drain(&mut self) {
        while !self.pending.is_empty() {
            self.exec(Op::WbAbort { i: 0, kill: false });
        }
        let slots: Vec<u32> = self.m.s.keys().copied().collect();
        for slot in slots {
            let x = Sel::Exact(slot);
            if self.m.s.get(&slot).is_some_and(|e| e.locked) {
                self.exec(Op::Unlock { s: x });
            }
            if self.m.s.contains_key(&slot) {
                self.exec(Op::Kill { s: x });
            }
            assert!(!self.m.s.contains_key(&slot));
        }
    }

    /// Swapoff of the virtual layer: to memory, or to a direct device.
    fn swapoff(&mut self, direct: bool) {
        let p2 = StdProvider::new();
        let d = direct.then(|| {
            VswapMap::direct(
                MapConfig {
                    geometry: Geometry::tiny(2, 2048, CPUS),
                    ..MapConfig::default()
                },
                false,
                false,
                &[],
                &p2,
                NoHost,
            )
            .unwrap()
        });
        loop {
            let busy = self.m.s.values().any(|e| e.locked);
            let mut seen: Vec<VirtMove> = Vec::new();
            let r = {
                let (m, disk, mem, host) = (&self.m, &self.disk, &self.mem, self.e.host());
                self.e
                    .swapoff_virtual(d.as_ref().map(|x| x as &dyn SwapOps), 0, |mv| {
                        let (slot, b) = match mv {
                            VirtMove::ToDirect { slot, backend, .. }
                            | VirtMove::ToMemory { slot, backend } => (slot, backend),
                        };
                        let e = &m.s[&slot];
                        assert_eq!(b, e.backend, "swapoff of slot {slot}");
                        if let Some(want) = &e.data {
                            assert_eq!(
                                read_back(host, disk, mem, slot, b).as_ref(),
                                Some(want),
                                "swapoff reads slot {slot}"
                            );
                        }
                        seen.push(mv);
                        Ok(())
                    })
            };
            // Every slot the host saw moved (io never fails here), also when
            // the swapoff stops with an error.
            if let Err(stop) = &r {
                assert_eq!(stop.done, seen.len() as u64, "swapoff's partial count");
            }
            let r = r.map_err(|stop| stop.error);
            let movable: BTreeSet<u32> = self
                .m
                .s
                .iter()
                .filter(|(_, e)| e.live() && !e.locked)
                .map(|(s, _)| *s)
                .collect();
            let got: BTreeSet<u32> = seen
                .iter()
                .map(|mv| match mv {
                    VirtMove::ToDirect { slot, .. } | VirtMove::ToMemory { slot, .. } => *slot,
                })
                .collect();
            assert_eq!(got.len(), seen.len(), "a slot moved twice");
            assert_eq!(got, movable, "swapoff moves every live unlocked slot");
            for mv in &seen {
                match *mv {
                    VirtMove::ToDirect { slot, to, .. } => {
                        let e = &self.m.s[&slot];
                        let d = d.as_ref().unwrap();
                        let carry = match e.backend {
                            Backend::Zero | Backend::Same(_) => e.backend,
                            _ => Backend::None,
                        };
                        assert_eq!(
                            d.lookup(to),
                            Ok(Entry {
                                backend: carry,
                                count: e.count,
                                cached: e.cached,
                                locked: false
                            }),
                            "direct slot of {slot}"
                        );
                        if e.count > 0 {
                            d.put(to, e.count).unwrap();
                        }
                        if e.cached {
                            d.cache_clear(to, 0, S).unwrap();
                        }
                        assert_eq!(d.lookup(to), Err(Error::NotAllocated));
                    }
                    VirtMove::ToMemory { slot, .. } => assert!(!direct, "{slot}"),
                }
                assert!(!direct || matches!(mv, VirtMove::ToDirect { .. }));
            }
            for s in got {
                self.m.free_slot(s);
                self.mem.remove(&s);
            }
            note(format!(
                "swapoff {} {}",
                if direct { "to direct" } else { "to memory" },
                tag(&r)
            ));
            if busy {
                assert_eq!(r, Err(Error::Busy), "swapoff with locked slots");
                self.check();
                // Let the lock holders finish, then go again.
                while !self.pending.is_empty() {
                    self.exec(Op::WbAbort { i: 0, kill: false });
                }
                let locked: Vec<u32> = self
                    .m
                    .s
                    .iter()
                    .filter(|(_, e)| e.locked)
                    .map(|(s, _)| *s)
                    .collect();
                for s in locked {
                    self.exec(Op::Unlock { s: Sel::Exact(s) });
                }
                continue;
            }
            assert_eq!(r, Ok(seen.len() as u64), "swapoff_virtual");
            break;
        }
        self.check();
        assert!(self.m.s.is_empty(), "{:?}", self.m.s);
        if let Some(d) = d {
            assert_eq!(d.stats().live_slots, 0);
        }
    }

    /// Every invariant the model can see.
    /// Every device slot freed is reported to `released_phys` exactly once,
    /// whatever the path: since the last check, each device slot was
    /// reported as often as the model freed it. The one exception is a
    /// device slot the engine took and gave back within the step (a
    /// writeout, writeback or move that failed after its allocation, which
    /// the model does not see): reported once, not freed in the model, and
    /// free now.
    fn check_released(&self) {
        let st = self.step;
        let host = self.e.host().phys.lock().unwrap().clone();
        let model = self.m.phys_freed.clone();
        let mut seen = self.released_seen.borrow_mut();
        let (h0, m0) = &*seen;
        let keys: BTreeSet<(u8, u64)> = host.keys().chain(model.keys()).copied().collect();
        for k in keys {
            let get = |m: &BTreeMap<(u8, u64), u64>| m.get(&k).copied().unwrap_or(0);
            let (dh, dm) = (get(&host) - get(h0), get(&model) - get(m0));
            if dh == dm {
                continue;
            }
            let free_now = self
                .m
                .devs
                .get(&k.0)
                .is_none_or(|d| !d.owners.contains_key(&k.1));
            assert!(
                dm == 0 && dh == 1 && free_now,
                "step {st}: device slot {k:?} freed {dm} times, reported {dh} times"
            );
        }
        *seen = (host, model);
    }

    fn check(&self) {
        let st = self.step;
        let m = &self.m;
        let map = self.e.map();
        self.check_released();
        for (&slot, e) in &m.s {
            assert_eq!(map.lookup(slot), Ok(e.entry()), "step {st}: lookup({slot})");
            assert_eq!(
                map.cache_get(slot),
                Ok(CacheState {
                    cached: e.cached,
                    word: e.word
                }),
                "step {st}: cache_get({slot})"
            );
            if let Some(id) = e.memcg {
                assert_eq!(map.memcg(slot), Ok(Some(id)), "step {st}: memcg({slot})");
            }
        }
        for &slot in &m.freed {
            assert_eq!(map.lookup(slot), Err(Error::NotAllocated), "step {st}");
        }
        let ms = map.stats();
        assert_eq!(ms.live_slots, m.s.len() as u64, "step {st}: live slots");
        assert_eq!(
            ms.locked,
            m.s.values().filter(|e| e.locked).count() as u64,
            "step {st}: locked"
        );
        // Reverse maps.
        let mut dev_bytes = 0;
        for id in 0..vswap_core::MAX_DEVICES as u8 {
            let Some(md) = m.devs.get(&id) else {
                assert!(self.e.device(id).is_err(), "step {st}: device {id} present");
                continue;
            };
            let d = self.e.device(id).unwrap();
            assert_eq!(d.slots(), md.slots);
            for off in 0..md.slots {
                assert_eq!(
                    d.owner(off),
                    Ok(md.owners.get(&off).copied()),
                    "step {st}: owner of ({id}, {off})"
                );
            }
            let ds = d.stats();
            assert_eq!(
                (ds.used, ds.usable),
                (md.owners.len() as u64, md.usable),
                "step {st}: device {id}"
            );
            dev_bytes += ds.memory.total();
        }
        for d in self.removed.values() {
            assert_eq!(d.stats().used, 0);
            dev_bytes += d.stats().memory.total();
        }
        // Every owner is a slot on that device slot, or one that reserved it.
        for (&id, md) in &m.devs {
            for (&off, &owner) in &md.owners {
                let e = &m.s[&owner];
                assert!(
                    e.backend == Backend::Phys { dev: id, off } || e.wb == Some((id, off)),
                    "step {st}: ({id}, {off}) owned by {owner}: {e:?}"
                );
            }
        }
        // Data reads back from wherever the engine says it is.
        let host = self.e.host();
        for (&slot, e) in &m.s {
            let Some(want) = &e.data else { continue };
            let b = map.lookup(slot).unwrap().backend;
            assert_eq!(
                read_back(host, &self.disk, &self.mem, slot, b).as_ref(),
                Some(want),
                "step {st}: slot {slot} reads back from {b:?}"
            );
        }
        // zswap: exactly the handles slots hold.
        let held: BTreeSet<u64> =
            m.s.values()
                .filter_map(|e| match e.backend {
                    Backend::Zswap(h) => Some(h),
                    _ => None,
                })
                .collect();
        let stored: BTreeSet<u64> = host.zswap.lock().unwrap().keys().copied().collect();
        assert_eq!(stored, held, "step {st}: zswap handles");
        // memcg.
        let mut charged = host.charges.lock().unwrap().clone();
        charged.retain(|_, v| *v != 0);
        assert_eq!(charged, m.charges(), "step {st}: memcg charges");
        // Memory: the map's and the devices' tables, nothing else.
        assert_eq!(
            self.p.bytes_in_use(),
            ms.total_bytes() + dev_bytes,
            "step {st}: provider bytes"
        );
    }
}

fn run_case(case: &Case, ops: &[Op]) {
    let p = StdProvider::new();
    {
        let mut run = Run::new(&p, case);
        for &op in ops {
            run.exec(op);
        }
        match case.end {
            0 => run.drain(),
            e => run.swapoff(e == 2),
        }
        run.check();
        assert!(run.pending.is_empty());
        for (id, md) in &run.m.devs {
            assert!(md.owners.is_empty());
            assert_eq!(run.e.device(*id).unwrap().stats().used, 0);
        }
        assert_eq!(run.e.map().stats().live_slots, 0);
        assert!(run.e.host().zswap.lock().unwrap().is_empty());
        // Devices come out empty; then only the map's tables remain.
        let ids: Vec<u8> = run.m.devs.keys().copied().collect();
        for id in ids {
            let d = run.e.remove_device(id).unwrap();
            drop(d);
        }
        run.removed.clear();
        assert_eq!(p.bytes_in_use(), run.e.map().stats().total_bytes());
    }
    assert_eq!(p.bytes_in_use(), 0, "engine drop returns every byte");
}

fn cases() -> u32 {
    // `PROPTEST_CASES=5000` for a soak run.
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(miri) { 2 } else { 512 })
}

/// Outcomes a default run must reach (the test's own coverage).
const MUST_SEE: &[&str] = &[
    "alloc Ok",
    "alloc NoSpace",
    "alloc BadOrder",
    "alloc BadCpu",
    "eager: order 0 placed",
    "eager: order 2 placed",
    "eager: no device slot",
    "dup CountOverflow",
    "count in the side table",
    "put Ok(Freed)",
    "put Err(CountUnderflow)",
    "zombie",
    "writeout Zero",
    "writeout Same",
    "writeout Zswap",
    "writeout Phys",
    "writeout in place",
    "writeout WrongState",
    "writeout BadLength",
    "writeout NoSpace",
    "writeout BadCpu",
    "writeout Busy",
    "writeout NotAllocated",
    "lock Busy",
    "unlock Ok(Freed)",
    "writeback begin Ok",
    "writeback begin WrongState",
    "writeback begin NoSpace",
    "writeback begin Busy",
    "writeback commit Ok",
    "writeback commit Gone",
    "writeback abort Ok(Live)",
    "writeback abort Ok(Freed)",
    "stale commit NotLocked",
    "stale abort NotLocked",
    "stale commit NotAllocated",
    "evacuate to device moved",
    "evacuate to memory moved",
    "evacuate to memory: folio dropped",
    "evacuate Busy",
    "evacuate NoSpace",
    "evacuate NoDevice",
    "evacuate Again",
    "evacuate BadConfig",
    "evacuate BadCpu",
    "remove Ok",
    "remove Busy",
    "remove NoDevice",
    "add Ok",
    "add WrongState",
    "add NoDevice",
    "swapin Contiguous",
    "swapin Uniform(Zero)",
    "swapin No",
    "swapin Misaligned",
    "swapin BadOrder",
    "readahead neighbours",
    "swapoff to memory Ok",
    "swapoff to direct Ok",
    "swapoff to memory Busy",
];

#[test]
fn engine_matches_model() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None::<Box<dyn FailurePersistence>>,
        ..Config::default()
    });
    let ops = prop::collection::vec(op_strategy(), 1..if cfg!(miri) { 20 } else { 200 });
    let r = runner.run(&(case_strategy(), ops), |(case, ops)| {
        run_case(&case, &ops);
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
    let seen = SEEN.lock().unwrap();
    if std::env::var_os("ENGINE_MODEL_OUTCOMES").is_some() {
        for (k, v) in seen.iter() {
            println!("{v:8} {k}");
        }
    }
    if cases() >= 256 {
        let missing: Vec<&str> = MUST_SEE
            .iter()
            .copied()
            .filter(|k| !seen.contains_key(*k))
            .collect();
        assert!(missing.is_empty(), "outcomes never reached: {missing:?}");
    }
}

/// A slot that died under a writeback's lock (a zombie) still owns its
/// reserved device slot until the writeback ends. Evacuation and swapoff of
/// the virtual layer must treat it like any other slot locked by someone
/// else (`Busy`, retried later), not as progress: with a second locked slot
/// beside it, counting it as progress made every pass "progress" and the
/// pass loop never ended.
#[test]
fn moves_do_not_spin_on_a_slot_that_died_locked() {
    let p = StdProvider::new();
    let cfg = EngineConfig {
        map: MapConfig {
            geometry: Geometry::tiny(2, 64, CPUS),
            ..MapConfig::default()
        },
        placement: Placement::Deferred,
        charge: ChargePolicy::None,
        page_size: PAGE as u32,
    };
    let e: Eng<'_> = Engine::new(cfg, &p, TestHost::default()).unwrap();
    let spec = DevSpec {
        id: 0,
        prio: 1,
        shift: 2,
        slots: 16,
        bad: Vec::new(),
    };
    e.add_device(0, 1, new_device(&p, &spec)).unwrap();
    let mut w = Vec::new();
    for _ in 0..2 {
        let s = e.alloc(0, 0, None, S).unwrap();
        e.map().dup(s, 1, S).unwrap();
        assert!(matches!(
            e.writeout(s, &make_page(4, s), 0),
            Ok(Backend::Zswap(_))
        ));
        e.cache_clear(s, 0, S).unwrap();
        w.push(e.writeback_begin(s, 0).unwrap());
    }
    // The first slot dies under the writeback's lock.
    assert_eq!(e.put(w[0].slot, 1), Ok(Put::Live));
    assert_eq!(
        e.evacuate(0, None, 0, |_| panic!("nothing is movable"))
            .map_err(|s| s.error),
        Err(Error::Busy)
    );
    // Onto itself: every pass would move every other slot again.
    assert_eq!(
        e.evacuate(0, Some(0), 0, |_| panic!("no move"))
            .map_err(|s| s.error),
        Err(Error::BadConfig)
    );
    assert_eq!(
        e.swapoff_virtual(None, 0, |_| panic!("nothing is movable"))
            .map_err(|s| s.error),
        Err(Error::Busy)
    );
    assert_eq!(e.writeback_commit(w[0]), Err(Error::Gone));
    e.writeback_commit(w[1]).unwrap();
    let r = e.evacuate(0, None, 0, |_| Ok(0x77)).unwrap();
    assert_eq!((r.moved, r.lost_to_free), (1, 0));
    assert_eq!(e.cache_clear(w[1].slot, 0, S), Ok(Put::Live));
    assert_eq!(e.put(w[1].slot, 1), Ok(Put::Freed));
    assert_eq!(e.device(0).unwrap().stats().used, 0);
    assert!(e.host().zswap.lock().unwrap().is_empty());
}

/// A `Writeback` is `Copy`: committing or aborting it again after it ended
/// is refused and changes nothing (it used to free the device slot the slot
/// had just moved to, and give back its charge).
#[test]
fn a_writeback_that_ended_changes_nothing() {
    let p = StdProvider::new();
    let cfg = EngineConfig {
        map: MapConfig {
            geometry: Geometry::tiny(2, 64, CPUS),
            ..MapConfig::default()
        },
        placement: Placement::Deferred,
        charge: ChargePolicy::PhysicalOnly,
        page_size: PAGE as u32,
    };
    let e: Eng<'_> = Engine::new(cfg, &p, TestHost::default()).unwrap();
    let spec = DevSpec {
        id: 0,
        prio: 1,
        shift: 2,
        slots: 16,
        bad: Vec::new(),
    };
    e.add_device(0, 1, new_device(&p, &spec)).unwrap();
    let s = e.alloc(0, 0, Some(1), S).unwrap();
    e.map().dup(s, 1, S).unwrap();
    e.writeout(s, &make_page(4, 9), 0).unwrap();
    e.cache_clear(s, 0, S).unwrap();
    let w = e.writeback_begin(s, 0).unwrap();
    e.writeback_commit(w).unwrap();
    let on_device = Backend::Phys {
        dev: w.dev,
        off: w.off,
    };
    let charged = || e.host().charges.lock().unwrap()[&1];
    assert_eq!(charged(), 1);
    assert_eq!(e.writeback_commit(w), Err(Error::NotLocked));
    assert_eq!(e.writeback_abort(w), Err(Error::NotLocked));
    // Locked by someone else (here: us, through the map), not in zswap.
    e.map().lock(s).unwrap();
    assert_eq!(e.writeback_commit(w), Err(Error::WrongState));
    assert_eq!(e.writeback_abort(w), Err(Error::WrongState));
    e.map().unlock(s).unwrap();
    assert_eq!(e.map().lookup(s).unwrap().backend, on_device);
    assert_eq!(e.device(w.dev).unwrap().owner(w.off), Ok(Some(s)));
    assert_eq!(charged(), 1);
    assert_eq!(e.put(s, 1), Ok(Put::Freed));
    assert_eq!(e.writeback_commit(w), Err(Error::NotAllocated));
    assert_eq!(e.device(w.dev).unwrap().stats().used, 0);
    assert_eq!(charged(), 0);
}
