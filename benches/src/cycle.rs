//! The end-to-end swap cycle: one page's metadata life per backend, for
//! vswap, the swap-table baseline ([`SwapTable`]) and the v5 baseline
//! ([`V5Map`]). This is the measured cost of the virtual layer's extra step.
//!
//! One cycle ([`cycle`]):
//! 1. **swap-out**: allocate a slot (count 0, folio in the swap cache), add the
//!    count of the one mapping (dup), the writeout decision, store the
//!    backend, then reclaim the folio: the cache reference becomes a
//!    workingset shadow (the kernel's `__remove_mapping`);
//! 2. **swap-in**: lookup, lock (the kernel's `SWAP_HAS_CACHE`-style claim /
//!    vswap's lock bit), add the new folio's cookie to the swap cache, put the
//!    mapping's count, unlock;
//! 3. **free**: drop the cache reference (`folio_free_swap`): the slot and its
//!    backend are freed (the device slot, the zswap entry).
//!
//! The writeout decision uses a precomputed [`PageClass`]: the benchmark
//! measures metadata, not the page scan or compression, which every design
//! pays the same. Who spends a device slot:
//! - vswap: only [`PageClass::Device`] pages (through
//!   [`Engine::alloc_phys`], freed by the engine's router when the slot
//!   dies); zero / same-filled / zswap are stored in the core word;
//! - v5: only device pages (it is a virtual design too), from its 8-byte
//!   reverse-mapped device allocator ([`V5Phys`]);
//! - swap table: every page (the slot *is* the device slot); zero pages also
//!   set the zero bit, same-filled and zswap pages store a side entry.
//!
//! The folio's own lock bit (`folio_lock`) is paid the same by every design
//! and left out; only the swap metadata's part is timed. For the swap table
//! and v5 the swap-in claim is a flag set under the cluster lock and cleared
//! with the cache reference (the 6.18 `SWAP_HAS_CACHE` life), so their
//! "unlock" touches no slot state; vswap's lock bit is cleared by its
//! `unlock` (one more CAS).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vswap_alloc::{DeviceConfig, PhysDevice};
use vswap_core::{Backend, Ctx, Engine, EngineConfig, EngineHost, Put, StdProvider};

use crate::SwapSlots;
use crate::swaptable::SwapTable;
use crate::v5::{V5Map, V5Phys};

/// What the writeout decision found in the page (precomputed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageClass {
    /// All zeroes.
    Zero,
    /// One repeated non-zero word ([`SAME_VALUE`], memhog's 0xff fill).
    Same,
    /// Compressed into zswap (handle [`ZSWAP_HANDLE`]).
    Zswap,
    /// Written to a device slot.
    Device,
}

impl PageClass {
    /// Every class, in the report's row order.
    pub const ALL: [PageClass; 4] = [
        PageClass::Zero,
        PageClass::Same,
        PageClass::Zswap,
        PageClass::Device,
    ];

    /// Row name.
    pub fn name(self) -> &'static str {
        match self {
            PageClass::Zero => "zero",
            PageClass::Same => "same-filled",
            PageClass::Zswap => "zswap",
            PageClass::Device => "device",
        }
    }
}

/// The same-filled pages' word.
pub const SAME_VALUE: u64 = u64::MAX;
/// The zswap handle the host hands out.
pub const ZSWAP_HANDLE: u64 = 0x1234_5678;
/// The swapped-in folio's cookie.
pub const FOLIO: u64 = 0x7_1234_5000;
/// The workingset shadow left at reclaim.
pub const SHADOW: u64 = 0x5a_5a5a;
/// Device slots of the vswap and v5 devices (and of the swap table) in the
/// cycle benchmarks.
pub const CYCLE_DEVICE_SLOTS: u64 = 1 << 18;

/// One page's life, per design.
pub trait Cycle: Sync {
    /// Column name.
    const NAME: &'static str;
    /// Swap-out of a page of `class` on `cpu`: the slot's handle, `None` when
    /// out of space.
    fn swap_out(&self, class: PageClass, cpu: u32) -> Option<u64>;
    /// Swap-in of the page at `h`; `false` if a step was refused.
    fn swap_in(&self, h: u64) -> bool;
    /// Drop the cache reference; `true` if the slot was freed.
    fn free(&self, h: u64) -> bool;
}

/// `iters` cycles of pages of `class` on CPU 0.
pub fn cycle<C: Cycle>(c: &C, class: PageClass, iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        if let Some(h) = c.swap_out(class, 0) {
            black_box(c.swap_in(black_box(h)));
            black_box(c.free(h));
        }
    }
    t.elapsed()
}

/// The engine host of the vswap cycle: zswap objects are the host's; it
/// counts releases only when asked (tests).
pub struct CycleHost {
    count: bool,
    /// zswap handles released (with counting on).
    pub zswap_released: AtomicU64,
}

impl EngineHost for CycleHost {
    #[inline]
    fn release_zswap(&self, _handle: u64) {
        if self.count {
            self.zswap_released.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// vswap as a host drives it: a [`vswap_core::Engine`] with one device
/// (number 0, [`CYCLE_DEVICE_SLOTS`] slots); today's per-operation pin
/// included in every map call.
pub struct VswapCycle {
    /// The engine.
    pub eng: Engine<StdProvider, CycleHost>,
}

impl VswapCycle {
    /// An engine with one device of `dev_slots`; `count` makes the host count
    /// zswap releases.
    pub fn new(dev_slots: u64, count: bool) -> Self {
        let host = CycleHost {
            count,
            zswap_released: AtomicU64::new(0),
        };
        let eng = Engine::new(EngineConfig::default(), StdProvider::new(), host)
            .expect("default engine config is valid");
        let dev = PhysDevice::new(DeviceConfig::new(dev_slots, 2), &[], StdProvider::new())
            .expect("device config is valid");
        eng.add_device(0, 0, dev).expect("device 0 is free");
        Self { eng }
    }
}

impl Default for VswapCycle {
    fn default() -> Self {
        Self::new(CYCLE_DEVICE_SLOTS, false)
    }
}

impl Cycle for VswapCycle {
    const NAME: &'static str = "vswap";

    #[inline]
    fn swap_out(&self, class: PageClass, cpu: u32) -> Option<u64> {
        let m = self.eng.map();
        let s = self.eng.alloc(0, cpu, None, Ctx::NoSleep).ok()?;
        let _ = m.dup(s, 1, Ctx::NoSleep);
        let b = match class {
            PageClass::Zero => Backend::Zero,
            PageClass::Same => Backend::Same(SAME_VALUE),
            PageClass::Zswap => Backend::Zswap(ZSWAP_HANDLE),
            PageClass::Device => match self.eng.alloc_phys(0, cpu, s, Ctx::NoSleep) {
                Ok((dev, off)) => Backend::Phys { dev, off },
                Err(_) => {
                    let _ = m.put(s, 1);
                    let _ = m.cache_clear(s, 0, Ctx::NoSleep);
                    return None;
                }
            },
        };
        if m.store(s, Backend::None, b).is_err() {
            return None;
        }
        let _ = m.cache_clear(s, SHADOW, Ctx::NoSleep);
        Some(u64::from(s))
    }

    #[inline]
    fn swap_in(&self, h: u64) -> bool {
        let m = self.eng.map();
        let s = h as u32;
        let Ok(e) = m.lookup(s) else {
            return false;
        };
        black_box(e.backend);
        if m.lock(s).is_err() {
            return false;
        }
        let ok = m.cache_add(s, FOLIO, Ctx::NoSleep).is_ok();
        let _ = m.put(s, 1);
        let _ = m.unlock(s);
        ok
    }

    #[inline]
    fn free(&self, h: u64) -> bool {
        self.eng.map().cache_clear(h as u32, 0, Ctx::NoSleep) == Ok(Put::Freed)
    }
}

/// The v5 baseline with a device of `dev_slots` for its device-backed pages.
pub fn v5_cycle(dev_slots: u64) -> V5Map {
    V5Map::with_phys(crate::V5_SLOTS, 2, V5Phys::new(dev_slots, 2))
}

impl Cycle for V5Map {
    const NAME: &'static str = "v5";

    #[inline]
    fn swap_out(&self, class: PageClass, cpu: u32) -> Option<u64> {
        let h = SwapSlots::alloc(self, 0, cpu)?;
        self.dup(h);
        let b = match class {
            PageClass::Zero => Backend::Zero,
            PageClass::Same => Backend::Same(SAME_VALUE),
            PageClass::Zswap => Backend::Zswap(ZSWAP_HANDLE),
            PageClass::Device => match self.phys.as_ref().and_then(|p| p.alloc(0, cpu, h)) {
                Some(off) => Backend::Phys { dev: 0, off },
                None => {
                    self.put(h);
                    self.cache_clear(h, 1, cpu);
                    return None;
                }
            },
        };
        if !self.store(h, Backend::None, b) {
            return None;
        }
        self.reclaim(h, SHADOW);
        Some(h)
    }

    #[inline]
    fn swap_in(&self, h: u64) -> bool {
        black_box(self.lookup(h));
        if !self.swapin_lock(h) {
            return false;
        }
        let ok = self.cache_add(h, FOLIO);
        self.put(h);
        ok
    }

    #[inline]
    fn free(&self, h: u64) -> bool {
        self.cache_clear(h, 1, 0);
        true
    }
}

impl Cycle for SwapTable {
    const NAME: &'static str = "swap_table";

    #[inline]
    fn swap_out(&self, class: PageClass, cpu: u32) -> Option<u64> {
        let h = SwapSlots::alloc(self, 0, cpu)?;
        self.dup(h);
        let b = match class {
            PageClass::Zero => Some(Backend::Zero),
            PageClass::Same => Some(Backend::Same(SAME_VALUE)),
            PageClass::Zswap => Some(Backend::Zswap(ZSWAP_HANDLE)),
            // The data goes to the slot itself: no metadata to store.
            PageClass::Device => None,
        };
        if let Some(b) = b {
            if !self.store(h, Backend::None, b) {
                return None;
            }
        }
        self.reclaim(h, SHADOW);
        Some(h)
    }

    #[inline]
    fn swap_in(&self, h: u64) -> bool {
        black_box(self.lookup(h));
        black_box(self.resolve(h));
        if !self.swapin_lock(h) {
            return false;
        }
        let ok = self.cache_add(h, FOLIO);
        self.put(h);
        ok
    }

    #[inline]
    fn free(&self, h: u64) -> bool {
        self.cache_clear(h, 1, 0);
        true
    }
}
