//! The swap-table baseline: the kernel's current design (the "swap table"
//! series, Linux 6.18 and later: `mm/swap_table.h`, `mm/swapfile.c`), written
//! here from its published description, with no virtual layer.
//!
//! - The swap device is the only slot space: a page-table entry names a
//!   device slot, so every swap-out spends one, whatever the page holds (a
//!   zero page, a same-filled page or a zswap page included).
//! - Per 512-slot cluster, a table of one 8-byte atomic word per slot
//!   ([`ST_COUNT_MASK`], [`ST_CACHED`], [`ST_HAS_CACHE`] and the swap cache
//!   folio or workingset shadow in the high bits, [`ST_VALUE_SHIFT`]): the
//!   slot's whole state in one word.
//! - Writers (allocation, free, dup / put, swap cache changes) take the
//!   per-cluster spinlock and then write the word with a plain atomic store;
//!   lookups are one atomic load, no lock.
//! - Tables are made on first use of a cluster and never freed while the
//!   device lives: that stands in for the kernel's RCU-delayed freeing (a
//!   lockless reader needs nothing but the load; the kernel's
//!   `rcu_read_lock` is free of atomics, so the baseline pays nothing for
//!   it either).
//! - Allocation is the kernel's per-CPU cluster scheme: a per-CPU next-slot
//!   hint per order inside a cluster that CPU took, scanned under that
//!   cluster's lock for a naturally aligned run of null words; on refill,
//!   nonfull\[order\], then free, then (order 0) fragmented clusters, under
//!   one global list lock (the same list code as the v5 baseline,
//!   [`crate::v5`]).
//! - Zero pages: a per-device bitmap with one bit per slot set with an
//!   atomic bit operation (the kernel's `si->zeromap`). zswap and same-filled
//!   pages (the kernel no longer has a same-filled fast path: zswap takes
//!   them): one 8-byte store per slot into a side array keyed by the slot,
//!   which is what the kernel's zswap xarray costs at the minimum (its own
//!   lock and node walk are not modelled). The writeout store needs no
//!   cluster lock: the kernel does it under the folio lock.
//!
//! The backend of a slot is therefore implicit: a slot with neither the zero
//! bit nor a side entry holds its data on the device at its own offset, so
//! `Backend::None` and `Backend::Phys` are the same state here.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use spin::mutex::SpinMutex;
use vswap_core::Backend;

use crate::SwapSlots;
use crate::v5::{LIST_FRAG, LIST_FREE, Lists, NLISTS, ON_CACHED, ON_FULL, ORDERS};

/// Slots per cluster.
pub const CLUSTER: usize = 512;
const SHIFT: u32 = 9;
const NO_HINT: u64 = u64::MAX;

/// Swap count bits of a table word.
pub const ST_COUNT_MASK: u64 = 0xff;
/// A folio is in the swap cache; the value bits hold its cookie.
pub const ST_CACHED: u64 = 1 << 8;
/// A swap-in claimed the slot (the kernel's `SWAP_HAS_CACHE` set by
/// `swapcache_prepare`); cleared with the cache reference.
pub const ST_HAS_CACHE: u64 = 1 << 9;
/// Shift of the value bits: the swap cache folio's cookie, or a shadow.
pub const ST_VALUE_SHIFT: u32 = 16;
const VALUE_MASK: u64 = !((1 << ST_VALUE_SHIFT) - 1);
/// The word of a fresh allocation: count 0, a folio in the swap cache.
const INIT: u64 = ST_CACHED;

/// A word with no count, no cached folio and no swap-in claim is free.
const fn dead(w: u64) -> bool {
    w & (ST_COUNT_MASK | ST_CACHED | ST_HAS_CACHE) == 0
}

const fn with_value(w: u64, v: u64) -> u64 {
    (w & !VALUE_MASK) | (v << ST_VALUE_SHIFT)
}

/// What the cluster lock protects.
struct Meta {
    /// Slots in use.
    used: u32,
    /// Slots that can be used (512, less slot 0 in cluster 0).
    cap: u32,
    /// The order the cluster serves.
    order: u32,
    /// A CPU's hint points into it (off every list).
    cached: bool,
}

#[repr(align(64))]
struct Cluster {
    lock: SpinMutex<Meta>,
    /// The swap table: one word per slot, made on first use, never freed.
    table: OnceLock<Box<[AtomicU64]>>,
    /// The zswap side array (entry per slot), made on first zswap store.
    side: OnceLock<Box<[AtomicU64]>>,
}

fn zeroed() -> Box<[AtomicU64]> {
    (0..CLUSTER).map(|_| AtomicU64::new(0)).collect()
}

#[repr(align(64))]
struct PerCpu([AtomicU64; ORDERS]);

/// The swap-table baseline: one swap device of fixed size.
pub struct SwapTable {
    clusters: Box<[Cluster]>,
    lists: SpinMutex<Lists>,
    percpu: Box<[PerCpu]>,
    /// One bit per slot: the page was all zeroes.
    zeromap: Box<[AtomicU64]>,
}

/// The first naturally aligned run of `n` null words at or after `from`.
fn scan(t: &[AtomicU64], from: usize, n: usize) -> Option<usize> {
    let mut i = from.next_multiple_of(n);
    while let Some(run) = t.get(i..i + n) {
        if run.iter().all(|w| w.load(Ordering::Relaxed) == 0) {
            return Some(i);
        }
        i += n;
    }
    None
}

impl SwapTable {
    /// A device of `slots` slots (rounded up to clusters) for `cpus` CPUs.
    /// Slot 0 is reserved (a zero swap entry means "none").
    pub fn new(slots: u64, cpus: u32) -> Self {
        let n = slots.div_ceil(CLUSTER as u64).max(1) as usize;
        let clusters = (0..n)
            .map(|c| {
                let cap = CLUSTER as u32 - u32::from(c == 0);
                Cluster {
                    lock: SpinMutex::new(Meta {
                        used: 0,
                        cap,
                        order: 0,
                        cached: false,
                    }),
                    table: OnceLock::new(),
                    side: OnceLock::new(),
                }
            })
            .collect();
        let percpu = (0..cpus.max(1))
            .map(|_| PerCpu(core::array::from_fn(|_| AtomicU64::new(NO_HINT))))
            .collect();
        let zeromap = (0..(n * CLUSTER).div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Self {
            clusters,
            lists: SpinMutex::new(Lists::new(n)),
            percpu,
            zeromap,
        }
    }

    /// Slots of the device.
    pub fn slots(&self) -> u64 {
        (self.clusters.len() * CLUSTER) as u64
    }

    fn table(cl: &Cluster, c: usize) -> &[AtomicU64] {
        cl.table.get_or_init(|| {
            let t = zeroed();
            if c == 0 {
                // Slot 0 is never handed out: keep it non-null.
                if let Some(w) = t.first() {
                    w.store(ST_HAS_CACHE, Ordering::Relaxed);
                }
            }
            t
        })
    }

    /// The word of slot `h`, if its table exists.
    #[inline]
    fn word(&self, h: u64) -> Option<&AtomicU64> {
        let cl = self.clusters.get((h >> SHIFT) as usize)?;
        cl.table.get()?.get(h as usize & (CLUSTER - 1))
    }

    /// File cluster `c` (its CPU let go of it), under its lock: `no_room`
    /// when a scan for `order` found nothing (a partly used cluster of that
    /// order goes to the frag list, which only order 0 takes from), else the
    /// CPU's hint just reached the cluster's end.
    fn file(&self, c: u32, g: &mut Meta, order: u32, no_room: bool) {
        g.cached = false;
        let mut l = self.lists.lock();
        if l.on.get(c as usize) != Some(&ON_CACHED) {
            return;
        }
        if g.used == g.cap {
            l.unlink(c, ON_FULL);
        } else if g.used == 0 {
            l.push(LIST_FREE, c);
        } else if no_room && order > 0 && g.order == order {
            l.push(LIST_FRAG, c);
        } else {
            l.push(1 + g.order as usize, c);
        }
    }

    /// List moves after frees, under the cluster lock.
    fn settle(&self, c: u32, g: &Meta, was_full: bool) {
        let empty = g.used == 0;
        if g.cached || !(empty || (was_full && g.used < g.cap)) {
            return;
        }
        let mut l = self.lists.lock();
        let on = l.on.get(c as usize).copied().unwrap_or(ON_CACHED);
        if on == ON_CACHED {
            return;
        }
        if empty {
            if on != LIST_FREE as u8 + 2 {
                l.unlink(c, ON_FULL);
                l.push(LIST_FREE, c);
            }
        } else if on == ON_FULL {
            l.push(1 + g.order as usize, c);
        }
    }

    /// Free slot `h` (its word is already dead), under its cluster's lock:
    /// null the word, drop its zero bit and its zswap entry.
    #[inline]
    fn release(&self, cl: &Cluster, h: u64, w: &AtomicU64, g: &mut Meta) {
        w.store(0, Ordering::Release);
        if let Some(z) = self.zeromap.get((h / 64) as usize) {
            let bit = 1u64 << (h % 64);
            if z.load(Ordering::Relaxed) & bit != 0 {
                z.fetch_and(!bit, Ordering::Release);
            }
        }
        if let Some(s) = cl
            .side
            .get()
            .and_then(|s| s.get(h as usize & (CLUSTER - 1)))
        {
            if s.load(Ordering::Relaxed) != 0 {
                s.store(0, Ordering::Release);
            }
        }
        g.used -= 1;
    }

    /// Under the cluster lock of the sorted `hs` (one lock per run of slots
    /// in one cluster), replace each allocated word `w` by `f(w)` when that
    /// is `Some`, freeing the slots whose new word is dead. Returns
    /// `(changed, freed)`.
    #[inline]
    fn update(
        &self,
        hs: impl IntoIterator<Item = u64>,
        mut f: impl FnMut(u64) -> Option<u64>,
    ) -> (u32, u32) {
        let (mut changed, mut freed) = (0, 0);
        let mut it = hs.into_iter().peekable();
        while let Some(&first) = it.peek() {
            let c = (first >> SHIFT) as usize;
            let Some(cl) = self.clusters.get(c) else {
                break;
            };
            let Some(t) = cl.table.get() else {
                while it.next_if(|h| (h >> SHIFT) as usize == c).is_some() {}
                continue;
            };
            let mut g = cl.lock.lock();
            let was_full = g.used == g.cap;
            let before = freed;
            while let Some(h) = it.next_if(|h| (h >> SHIFT) as usize == c) {
                let Some(w) = t.get(h as usize & (CLUSTER - 1)) else {
                    continue;
                };
                let old = w.load(Ordering::Relaxed);
                if old == 0 || (c == 0 && h & (CLUSTER as u64 - 1) == 0) {
                    continue;
                }
                let Some(new) = f(old) else { continue };
                changed += 1;
                if dead(new) {
                    self.release(cl, h, w, &mut g);
                    freed += 1;
                } else {
                    w.store(new, Ordering::Release);
                }
            }
            if freed > before {
                self.settle(c as u32, &g, was_full);
            }
        }
        (changed, freed)
    }

    #[inline]
    fn update_one(&self, h: u64, f: impl FnMut(u64) -> Option<u64>) -> (bool, bool) {
        let (c, f) = self.update(core::iter::once(h), f);
        (c == 1, f == 1)
    }

    /// The swap-in claim under the cluster lock (`swapcache_prepare` setting
    /// `SWAP_HAS_CACHE`): `false` if the slot is free, claimed or cached.
    pub fn swapin_lock(&self, h: u64) -> bool {
        self.update_one(h, |w| {
            (w & (ST_CACHED | ST_HAS_CACHE) == 0).then_some(w | ST_HAS_CACHE)
        })
        .0
    }

    /// Put the swap-in's folio (`cookie`, under 48 bits) into the table word
    /// of a claimed slot, under the cluster lock (`swap_cache_add_folio`).
    pub fn cache_add(&self, h: u64, cookie: u64) -> bool {
        self.update_one(h, |w| {
            (w & ST_HAS_CACHE != 0 && w & ST_CACHED == 0)
                .then_some(with_value(w, cookie) | ST_CACHED)
        })
        .0
    }

    /// Reclaim of a written-out folio that keeps a count: the table word's
    /// folio becomes the workingset `shadow` (under 48 bits), under the
    /// cluster lock (`__swap_cache_del_folio`). `false` if not cached or
    /// without a count.
    pub fn reclaim(&self, h: u64, shadow: u64) -> bool {
        self.update_one(h, |w| {
            (w & ST_CACHED != 0 && w & ST_COUNT_MASK != 0)
                .then_some(with_value(w, shadow) & !(ST_CACHED | ST_HAS_CACHE))
        })
        .0
    }

    /// Where the data of slot `h` is, lockless (what swap-in reads besides
    /// the table word: the zero bit, then the zswap entry): the backend's
    /// encoding for zero / zswap / same-filled, 0 for "on the device at the
    /// slot's own offset".
    #[inline]
    pub fn resolve(&self, h: u64) -> u64 {
        let zero = self
            .zeromap
            .get((h / 64) as usize)
            .is_some_and(|z| z.load(Ordering::Acquire) >> (h % 64) & 1 != 0);
        if zero {
            return crate::word::backend(Backend::Zero);
        }
        self.clusters
            .get((h >> SHIFT) as usize)
            .and_then(|cl| cl.side.get())
            .and_then(|s| s.get(h as usize & (CLUSTER - 1)))
            .map_or(0, |s| s.load(Ordering::Acquire))
    }

    /// Slots in use (sum over clusters, each under its lock).
    pub fn used(&self) -> u64 {
        self.clusters
            .iter()
            .map(|c| u64::from(c.lock.lock().used))
            .sum()
    }
}

impl SwapSlots for SwapTable {
    const NAME: &'static str = "swap_table";

    fn supports_order(order: u32) -> bool {
        order <= SHIFT
    }

    #[inline]
    fn alloc(&self, order: u32, cpu: u32) -> Option<u64> {
        if order > SHIFT {
            return None;
        }
        let n = 1usize << order;
        let pc = self
            .percpu
            .get(cpu as usize % self.percpu.len())?
            .0
            .get(order as usize)?;
        loop {
            let hint = pc.load(Ordering::Relaxed);
            if hint != NO_HINT {
                let c = (hint >> SHIFT) as u32;
                let cl = self.clusters.get(c as usize)?;
                let mut g = cl.lock.lock();
                if g.cached && (g.order == order || order == 0) {
                    let t = Self::table(cl, c as usize);
                    if let Some(i) = scan(t, hint as usize & (CLUSTER - 1), n) {
                        for w in t.get(i..i + n).unwrap_or(&[]) {
                            w.store(INIT, Ordering::Release);
                        }
                        g.used += n as u32;
                        let base = u64::from(c) << SHIFT;
                        let next = i + n;
                        if next < CLUSTER {
                            pc.store(base + next as u64, Ordering::Relaxed);
                        } else {
                            // The scan reached the cluster's end: let go of
                            // it (the kernel's per-CPU offset does not wrap).
                            self.file(c, &mut g, order, false);
                            pc.store(NO_HINT, Ordering::Relaxed);
                        }
                        return Some(base + i as u64);
                    }
                }
                if g.cached {
                    self.file(c, &mut g, order, true);
                }
                drop(g);
                pc.store(NO_HINT, Ordering::Relaxed);
            }
            // Refill: nonfull[order], then a free cluster, then (order 0)
            // a fragmented or any nonfull cluster.
            let c = {
                let mut l = self.lists.lock();
                let c = l.pop(1 + order as usize).or_else(|| l.pop(LIST_FREE));
                match c {
                    Some(c) => c,
                    None if order == 0 => (1..NLISTS).rev().find_map(|x| l.pop(x))?,
                    None => return None,
                }
            };
            let cl = self.clusters.get(c as usize)?;
            let mut g = cl.lock.lock();
            let _ = Self::table(cl, c as usize);
            if g.used == 0 {
                g.order = order;
            }
            g.cached = true;
            drop(g);
            pc.store(u64::from(c) << SHIFT, Ordering::Relaxed);
        }
    }

    #[inline]
    fn cache_clear(&self, h: u64, n: u32, _cpu: u32) {
        self.update(h..h + u64::from(n), |w| {
            (w & ST_CACHED != 0).then_some(w & !(ST_CACHED | ST_HAS_CACHE | VALUE_MASK))
        });
    }

    #[inline]
    fn dup(&self, h: u64) {
        self.update_one(h, |w| (w & ST_COUNT_MASK != ST_COUNT_MASK).then_some(w + 1));
    }

    #[inline]
    fn put(&self, h: u64) -> bool {
        self.update_one(h, |w| (w & ST_COUNT_MASK != 0).then_some(w - 1))
            .1
    }

    #[inline]
    fn lookup(&self, h: u64) -> u64 {
        self.word(h).map_or(u64::MAX, |w| w.load(Ordering::Acquire))
    }

    /// The writeout store, lockless (the kernel holds the folio lock): the
    /// zero bit (an atomic bit operation) or the zswap side entry (a store);
    /// a device backend writes nothing (the data goes to the slot itself).
    #[inline]
    fn store(&self, h: u64, from: Backend, to: Backend) -> bool {
        let Some(cl) = self.clusters.get((h >> SHIFT) as usize) else {
            return false;
        };
        if self.word(h).is_none_or(|w| dead(w.load(Ordering::Acquire))) {
            return false;
        }
        let off = h as usize & (CLUSTER - 1);
        let (Some(z), bit) = (self.zeromap.get((h / 64) as usize), 1u64 << (h % 64)) else {
            return false;
        };
        let side = cl.side.get().and_then(|s| s.get(off));
        let zero = z.load(Ordering::Acquire) & bit != 0;
        let val = side.map_or(0, |s| s.load(Ordering::Acquire));
        let ok = match from {
            Backend::None | Backend::Phys { .. } => !zero && val == 0,
            Backend::Zero => zero,
            b => !zero && val != 0 && val == crate::word::backend(b),
        };
        if !ok {
            return false;
        }
        match to {
            Backend::Zero => {
                if val != 0 {
                    if let Some(s) = side {
                        s.store(0, Ordering::Release);
                    }
                }
                if !zero {
                    z.fetch_or(bit, Ordering::Release);
                }
            }
            Backend::None | Backend::Phys { .. } => {
                if zero {
                    z.fetch_and(!bit, Ordering::Release);
                }
                if val != 0 {
                    if let Some(s) = side {
                        s.store(0, Ordering::Release);
                    }
                }
            }
            b => {
                if zero {
                    z.fetch_and(!bit, Ordering::Release);
                }
                let s = cl.side.get_or_init(zeroed);
                if let Some(s) = s.get(off) {
                    s.store(crate::word::backend(b), Ordering::Release);
                }
            }
        }
        true
    }

    fn put_batch(&self, hs: &[u64]) {
        self.update(hs.iter().copied(), |w| {
            (w & ST_COUNT_MASK != 0).then_some(w - 1)
        });
    }
}
