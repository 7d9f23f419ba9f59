//! A baseline that follows the published vswap v5 design (linux-mm, 2025):
//!
//! - a 24-byte descriptor per virtual slot ([`V5Desc`]: backend, swap cache
//!   folio or shadow, count, memcg id, flags), in per-cluster tables made
//!   on demand and dropped when the cluster empties;
//! - 512-slot clusters, each behind a spinlock that every operation on one of
//!   its slots takes (allocation, dup, put, lookup, backend changes, frees,
//!   also frees on another CPU than the allocation);
//! - a per-CPU cluster cache per order (read without a lock, like the
//!   kernel's per-CPU data under preemption disabled), free / nonfull[order]
//!   cluster lists under one list lock that is taken only when a cluster
//!   changes list (the kernel's scheme);
//! - batched frees take each owning cluster's lock once per run of slots in
//!   it (`swap_free_nr`);
//! - an 8-byte reverse map per physical slot ([`V5Phys`]), over the same
//!   cluster allocator.
//!
//! It is written to be as fast as that design allows here: clusters are
//! cache-line aligned (no false sharing between CPUs' clusters), allocation
//! scans a 512-bit bitmap, and cluster structs are one array sized for the
//! space (no directory walk). Cluster structs are never freed, which stands in
//! for the kernel's RCU-freed clusters.

use core::sync::atomic::{AtomicU32, Ordering};

use spin::mutex::SpinMutex;
use vswap_core::Backend;

use crate::SwapSlots;

/// Slots per cluster.
pub const CLUSTER: usize = 512;
const SHIFT: u32 = 9;
const WORDS: usize = CLUSTER / 64;
pub(crate) const ORDERS: usize = 10;
pub(crate) const NONE: u32 = u32::MAX;

/// The v5 descriptor: 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V5Desc {
    /// Backend tag and location (vswap's encoding, `Backend::encode`).
    pub backend: u64,
    /// Swap cache folio cookie, or a workingset shadow.
    pub cache: u64,
    /// Swap count.
    pub count: u32,
    /// memcg id.
    pub memcg: u16,
    /// Flags ([`V5_CACHED`]).
    pub flags: u16,
}

const _: () = assert!(core::mem::size_of::<V5Desc>() == 24);

/// Descriptor flag: a folio is in the swap cache.
pub const V5_CACHED: u16 = 1;
/// Descriptor flag: a swap-in claimed the slot (the `SWAP_HAS_CACHE`-style
/// claim of [`V5Map::swapin_lock`]); cleared with the cache reference.
pub const V5_LOCKED: u16 = 2;

impl V5Desc {
    fn dead(&self) -> bool {
        self.count == 0 && self.flags & (V5_CACHED | V5_LOCKED) == 0
    }
}

struct Inner<D> {
    /// Free slots.
    free: u32,
    /// Slots that can be free (512, less reserved ones).
    cap: u32,
    /// The order the cluster serves.
    order: u32,
    /// A per-CPU cache holds it (the kernel's cluster flags, read under the
    /// cluster lock so that frees need not take the list lock to know).
    cached: bool,
    /// Allocation bitmap.
    map: [u64; WORDS],
    /// Per-slot data, made when the cluster is first used.
    data: Option<Box<[D]>>,
}

impl<D> Inner<D> {
    fn is_set(&self, i: usize) -> bool {
        self.map.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 != 0)
    }

    /// The first free naturally aligned run of `2^order` slots.
    fn find(&self, order: u32) -> Option<usize> {
        if order == 0 {
            for (w, m) in self.map.iter().enumerate() {
                if *m != u64::MAX {
                    return Some(w * 64 + (!*m).trailing_zeros() as usize);
                }
            }
            return None;
        }
        let n = 1usize << order;
        if n >= 64 {
            let words = n / 64;
            return (0..WORDS)
                .step_by(words)
                .find(|&w| {
                    self.map
                        .get(w..w + words)
                        .is_some_and(|s| s.iter().all(|x| *x == 0))
                })
                .map(|w| w * 64);
        }
        let mask = (1u64 << n) - 1;
        for (w, m) in self.map.iter().enumerate() {
            if *m == u64::MAX {
                continue;
            }
            let mut b = 0;
            while b < 64 {
                if (*m >> b) & mask == 0 {
                    return Some(w * 64 + b);
                }
                b += n;
            }
        }
        None
    }

    /// Run `f` on slot `s` (this cluster's) if it is allocated, and free
    /// it if `f` says so; `true` if it was freed. Under the cluster lock.
    fn update_one(&mut self, s: u64, f: &mut impl FnMut(u64, &mut D) -> bool) -> bool
    where
        D: Default,
    {
        let off = (s as usize) & (CLUSTER - 1);
        if !self.is_set(off) {
            return false;
        }
        let Some(d) = self.data.as_mut().and_then(|d| d.get_mut(off)) else {
            return false;
        };
        if !f(s, d) {
            return false;
        }
        *d = D::default();
        if let Some(w) = self.map.get_mut(off / 64) {
            *w &= !(1 << (off % 64));
        }
        self.free += 1;
        true
    }

    fn set_run(&mut self, i: usize, n: usize) {
        for j in i..i + n {
            if let Some(w) = self.map.get_mut(j / 64) {
                *w |= 1 << (j % 64);
            }
        }
    }
}

#[repr(align(64))]
struct Cluster<D> {
    lock: SpinMutex<Inner<D>>,
}

#[repr(align(64))]
struct PerCpu([AtomicU32; ORDERS]);

/// Where a cluster is (list index + 2 for a list).
pub(crate) const ON_FULL: u8 = 0;
pub(crate) const ON_CACHED: u8 = 1;
pub(crate) const LIST_FREE: usize = 0;
/// Clusters with free slots but no free aligned run of their order: only
/// order-0 allocation takes from them (the kernel's frag list).
pub(crate) const LIST_FRAG: usize = 1 + ORDERS;
pub(crate) const NLISTS: usize = 2 + ORDERS;

/// Doubly linked FIFO lists of cluster indices (the kernel's `list_head`s);
/// the swap-table baseline uses them too.
pub(crate) struct Lists {
    head: [u32; NLISTS],
    tail: [u32; NLISTS],
    next: Vec<u32>,
    prev: Vec<u32>,
    pub(crate) on: Vec<u8>,
}

impl Lists {
    /// `n` clusters, all on the free list.
    pub(crate) fn new(n: usize) -> Self {
        let mut l = Self {
            head: [NONE; NLISTS],
            tail: [NONE; NLISTS],
            next: vec![NONE; n],
            prev: vec![NONE; n],
            on: vec![ON_FULL; n],
        };
        for c in 0..n as u32 {
            l.push(LIST_FREE, c);
        }
        l
    }

    pub(crate) fn push(&mut self, l: usize, c: u32) {
        let ci = c as usize;
        let (Some(t), Some(h)) = (self.tail.get(l).copied(), self.head.get(l).copied()) else {
            return;
        };
        if let (Some(p), Some(n), Some(o)) = (
            self.prev.get_mut(ci),
            self.next.get_mut(ci),
            self.on.get_mut(ci),
        ) {
            *p = t;
            *n = NONE;
            *o = l as u8 + 2;
        }
        if t == NONE {
            debug_assert_eq!(h, NONE);
            self.head[l] = c;
        } else if let Some(n) = self.next.get_mut(t as usize) {
            *n = c;
        }
        self.tail[l] = c;
    }

    /// Unlink `c` from the list it is on; `on` becomes `to`.
    pub(crate) fn unlink(&mut self, c: u32, to: u8) {
        let ci = c as usize;
        let Some(on) = self.on.get(ci).copied() else {
            return;
        };
        if on >= 2 {
            let l = usize::from(on - 2);
            let (p, n) = (self.prev[ci], self.next[ci]);
            if p == NONE {
                self.head[l] = n;
            } else {
                self.next[p as usize] = n;
            }
            if n == NONE {
                self.tail[l] = p;
            } else {
                self.prev[n as usize] = p;
            }
        }
        self.on[ci] = to;
    }

    pub(crate) fn pop(&mut self, l: usize) -> Option<u32> {
        let c = *self.head.get(l)?;
        if c == NONE {
            return None;
        }
        self.unlink(c, ON_CACHED);
        Some(c)
    }
}

/// The v5-style cluster allocator over per-slot data `D`.
pub struct V5Space<D> {
    clusters: Box<[Cluster<D>]>,
    lists: SpinMutex<Lists>,
    percpu: Box<[PerCpu]>,
    /// Physical devices keep their tables for the device's life.
    keep_tables: bool,
}

impl<D: Copy + Default + Send> V5Space<D> {
    /// A space of `slots` (rounded up to clusters) for `cpus` CPUs. Slot 0 is
    /// reserved. With `keep_tables`, every table is made now and kept.
    pub fn new(slots: u64, cpus: u32, keep_tables: bool) -> Self {
        let n = slots.div_ceil(CLUSTER as u64) as usize;
        let clusters: Box<[Cluster<D>]> = (0..n)
            .map(|c| {
                let mut inner = Inner {
                    free: CLUSTER as u32,
                    cap: CLUSTER as u32,
                    order: 0,
                    cached: false,
                    map: [0; WORDS],
                    data: keep_tables.then(|| vec![D::default(); CLUSTER].into_boxed_slice()),
                };
                if c == 0 {
                    inner.map[0] = 1;
                    inner.free -= 1;
                    inner.cap -= 1;
                }
                Cluster {
                    lock: SpinMutex::new(inner),
                }
            })
            .collect();
        let lists = Lists::new(n);
        let percpu = (0..cpus.max(1))
            .map(|_| PerCpu(core::array::from_fn(|_| AtomicU32::new(NONE))))
            .collect();
        Self {
            clusters,
            lists: SpinMutex::new(lists),
            percpu,
            keep_tables,
        }
    }

    /// Slots in the space.
    pub fn slots(&self) -> u64 {
        (self.clusters.len() * CLUSTER) as u64
    }

    /// File cluster `c` (its CPU let go of it because it had no room for
    /// `order`), under its lock.
    fn file(&self, c: u32, g: &mut Inner<D>, order: u32) {
        g.cached = false;
        let mut l = self.lists.lock();
        if l.on.get(c as usize) != Some(&ON_CACHED) {
            return;
        }
        if g.free == 0 {
            l.unlink(c, ON_FULL);
        } else if g.free == g.cap {
            l.push(LIST_FREE, c);
            drop(l);
            if !self.keep_tables {
                g.data = None;
            }
        } else if order > 0 && g.order == order {
            l.push(LIST_FRAG, c);
        } else {
            l.push(1 + g.order as usize, c);
        }
    }

    /// Allocate `2^order` aligned slots on `cpu`; `init(i)` gives the data of
    /// the `i`-th.
    #[inline]
    pub fn alloc(&self, order: u32, cpu: u32, init: impl Fn(u32) -> D) -> Option<u32> {
        let pc = self
            .percpu
            .get(cpu as usize % self.percpu.len())?
            .0
            .get(order as usize)?;
        loop {
            let c = pc.load(Ordering::Relaxed);
            if c != NONE {
                let cl = self.clusters.get(c as usize)?;
                let mut g = cl.lock.lock();
                if g.order == order || order == 0 {
                    if let Some(i) = g.find(order) {
                        let n = 1usize << order;
                        g.set_run(i, n);
                        g.free -= n as u32;
                        if let Some(d) = g.data.as_mut().and_then(|d| d.get_mut(i..i + n)) {
                            for (j, x) in d.iter_mut().enumerate() {
                                *x = init(j as u32);
                            }
                        }
                        return Some((c << SHIFT) + i as u32);
                    }
                }
                self.file(c, &mut g, order);
                drop(g);
                pc.store(NONE, Ordering::Relaxed);
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
            {
                let cl = self.clusters.get(c as usize)?;
                let mut g = cl.lock.lock();
                if g.data.is_none() {
                    g.data = Some(vec![D::default(); CLUSTER].into_boxed_slice());
                }
                if g.free == g.cap {
                    g.order = order;
                }
                g.cached = true;
            }
            pc.store(c, Ordering::Relaxed);
        }
    }

    /// Under the owning cluster's lock, run `f` on each slot of the sorted
    /// `slots` (one lock per run of slots in one cluster); a slot for which
    /// `f` returns `true` is freed. Unallocated slots are skipped. Returns
    /// the slots freed.
    #[inline]
    pub fn update_sorted(&self, slots: &[u64], mut f: impl FnMut(u64, &mut D) -> bool) -> u32 {
        let mut freed = 0;
        let mut i = 0;
        while let Some(&first) = slots.get(i) {
            let c = first >> SHIFT;
            let Some(cl) = self.clusters.get(c as usize) else {
                return freed;
            };
            let mut g = cl.lock.lock();
            let was_full = g.free == 0;
            while let Some(&s) = slots.get(i) {
                if s >> SHIFT != c {
                    break;
                }
                i += 1;
                freed += u32::from(g.update_one(s, &mut f));
            }
            self.settle(c as u32, &mut g, was_full);
        }
        freed
    }

    /// [`update_sorted`](Self::update_sorted) for `n` consecutive slots from
    /// `start`, all in one cluster.
    #[inline]
    pub fn update_run(&self, start: u64, n: u32, mut f: impl FnMut(u64, &mut D) -> bool) -> u32 {
        let c = start >> SHIFT;
        let Some(cl) = self.clusters.get(c as usize) else {
            return 0;
        };
        let mut g = cl.lock.lock();
        let was_full = g.free == 0;
        let mut freed = 0;
        for s in start..start + u64::from(n) {
            if s >> SHIFT == c {
                freed += u32::from(g.update_one(s, &mut f));
            }
        }
        self.settle(c as u32, &mut g, freed > 0 && was_full);
        freed
    }

    /// Under slot `s`'s cluster lock, run `f` on its data; `None` if it is not
    /// allocated.
    #[inline]
    pub fn with<R>(&self, s: u64, f: impl FnOnce(&mut D) -> R) -> Option<R> {
        let cl = self.clusters.get((s >> SHIFT) as usize)?;
        let mut g = cl.lock.lock();
        let off = (s as usize) & (CLUSTER - 1);
        if !g.is_set(off) {
            return None;
        }
        g.data.as_mut().and_then(|d| d.get_mut(off)).map(f)
    }

    /// List moves after frees, under the cluster lock: a full cluster becomes
    /// nonfull, an emptied nonfull cluster goes back to the free list.
    #[inline]
    fn settle(&self, c: u32, g: &mut Inner<D>, was_full: bool) {
        let empty = g.free == g.cap;
        if g.cached || !(empty || (was_full && g.free > 0)) {
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
                drop(l);
                if !self.keep_tables {
                    g.data = None;
                }
            }
        } else if on == ON_FULL {
            l.push(1 + g.order as usize, c);
        }
    }
}

/// The v5 reverse map of a physical device: 8 bytes per device slot (the
/// virtual slot that owns it), over the same spinlocked cluster allocator.
pub struct V5Phys {
    space: V5Space<u64>,
}

impl V5Phys {
    /// A device of `slots` slots for `cpus` CPUs (tables made now).
    pub fn new(slots: u64, cpus: u32) -> Self {
        Self {
            space: V5Space::new(slots, cpus, true),
        }
    }

    /// Allocate `2^order` device slots for virtual slots `owner..`.
    #[inline]
    pub fn alloc(&self, order: u32, cpu: u32, owner: u64) -> Option<u64> {
        self.space
            .alloc(order, cpu, |j| owner + u64::from(j))
            .map(u64::from)
    }

    /// Free `len` device slots from `off` (one cluster lock per cluster).
    #[inline]
    pub fn free(&self, off: u64, len: u64) {
        let mut at = off;
        let end = off + len;
        while at < end {
            let stop = end.min((at / CLUSTER as u64 + 1) * CLUSTER as u64);
            self.space.update_run(at, (stop - at) as u32, |_, _| true);
            at = stop;
        }
    }

    /// The owner of device slot `off`.
    pub fn owner(&self, off: u64) -> Option<u64> {
        self.space.with(off, |d| *d)
    }
}

/// Device slot of a `Phys` backend encoding (vswap's layout), if it is one.
fn phys_off(enc: u64) -> Option<u64> {
    (enc & 7 == 4).then_some((enc >> 14) >> 6)
}

/// Releases freed device slots in coalesced runs.
struct Runs<'a> {
    dev: Option<&'a V5Phys>,
    run: Option<(u64, u64)>,
}

impl Runs<'_> {
    fn add(&mut self, backend: u64) {
        let (Some(dev), Some(off)) = (self.dev, phys_off(backend)) else {
            return;
        };
        match &mut self.run {
            Some((s, l)) if *s + *l == off => *l += 1,
            _ => {
                if let Some((s, l)) = self.run.take() {
                    dev.free(s, l);
                }
                self.run = Some((off, 1));
            }
        }
    }
}

impl Drop for Runs<'_> {
    fn drop(&mut self) {
        if let (Some(dev), Some((s, l))) = (self.dev, self.run.take()) {
            dev.free(s, l);
        }
    }
}

/// The v5-style virtual swap map.
pub struct V5Map {
    space: V5Space<V5Desc>,
    /// The physical device that `Phys` backends are freed on, if any.
    pub phys: Option<V5Phys>,
}

impl V5Map {
    /// A map of `slots` virtual slots for `cpus` CPUs.
    pub fn new(slots: u64, cpus: u32) -> Self {
        Self {
            space: V5Space::new(slots, cpus, false),
            phys: None,
        }
    }

    /// A map whose `Phys` backends live on `phys` (freed with the slot).
    pub fn with_phys(slots: u64, cpus: u32, phys: V5Phys) -> Self {
        Self {
            space: V5Space::new(slots, cpus, false),
            phys: Some(phys),
        }
    }

    fn runs(&self) -> Runs<'_> {
        Runs {
            dev: self.phys.as_ref(),
            run: None,
        }
    }

    /// Store the cache word (folio cookie) of a live slot.
    pub fn cache_store(&self, h: u64, v: u64) {
        self.space.with(h, |d| d.cache = v);
    }

    /// Set the memcg id of a live slot.
    pub fn set_memcg(&self, h: u64, id: u16) {
        self.space.with(h, |d| d.memcg = id);
    }

    /// The swap-in claim under the cluster lock (the role of the kernel's
    /// `swapcache_prepare`, which sets `SWAP_HAS_CACHE`): `false` if the slot
    /// is not allocated, already claimed or already has a cached folio.
    pub fn swapin_lock(&self, h: u64) -> bool {
        self.space
            .with(h, |d| {
                if d.flags & (V5_CACHED | V5_LOCKED) != 0 {
                    return false;
                }
                d.flags |= V5_LOCKED;
                true
            })
            .unwrap_or(false)
    }

    /// Add the swap-in's folio (`cookie`) to the swap cache of a claimed slot,
    /// under the cluster lock; `false` if the slot is not claimed or cached.
    pub fn cache_add(&self, h: u64, cookie: u64) -> bool {
        self.space
            .with(h, |d| {
                if d.flags & V5_LOCKED == 0 || d.flags & V5_CACHED != 0 {
                    return false;
                }
                d.flags |= V5_CACHED;
                d.cache = cookie;
                true
            })
            .unwrap_or(false)
    }

    /// Reclaim of a written-out folio: drop the cache reference of a slot
    /// that keeps a count, leaving the workingset `shadow` in the descriptor;
    /// `false` if it is not cached or has no count (use `cache_clear`).
    pub fn reclaim(&self, h: u64, shadow: u64) -> bool {
        self.space
            .with(h, |d| {
                if d.flags & V5_CACHED == 0 || d.count == 0 {
                    return false;
                }
                d.flags &= !(V5_CACHED | V5_LOCKED);
                d.cache = shadow;
                true
            })
            .unwrap_or(false)
    }
}

impl SwapSlots for V5Map {
    const NAME: &'static str = "v5";

    fn supports_order(order: u32) -> bool {
        order <= SHIFT
    }

    #[inline]
    fn alloc(&self, order: u32, cpu: u32) -> Option<u64> {
        self.space
            .alloc(order, cpu, |_| V5Desc {
                flags: V5_CACHED,
                ..V5Desc::default()
            })
            .map(u64::from)
    }

    #[inline]
    fn cache_clear(&self, h: u64, n: u32, _cpu: u32) {
        let mut runs = self.runs();
        self.space.update_run(h, n, |_, d| {
            d.flags &= !(V5_CACHED | V5_LOCKED);
            d.cache = 0;
            let dead = d.dead();
            if dead {
                runs.add(d.backend);
            }
            dead
        });
    }

    #[inline]
    fn dup(&self, h: u64) {
        self.space.with(h, |d| d.count += 1);
    }

    #[inline]
    fn put(&self, h: u64) -> bool {
        let mut runs = self.runs();
        self.space.update_run(h, 1, |_, d| {
            d.count = d.count.saturating_sub(1);
            let dead = d.dead();
            if dead {
                runs.add(d.backend);
            }
            dead
        }) == 1
    }

    #[inline]
    fn lookup(&self, h: u64) -> u64 {
        self.space
            .with(h, |d| {
                d.backend ^ u64::from(d.count) ^ (u64::from(d.flags) << 3)
            })
            .unwrap_or(u64::MAX)
    }

    #[inline]
    fn store(&self, h: u64, from: Backend, to: Backend) -> bool {
        let (from, to) = (crate::word::backend(from), crate::word::backend(to));
        let mut old = None;
        let ok = self
            .space
            .with(h, |d| {
                if d.backend == from {
                    d.backend = to;
                    old = Some(from);
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
        if let Some(o) = old.filter(|o| *o != to) {
            self.runs().add(o);
        }
        ok
    }

    fn put_batch(&self, hs: &[u64]) {
        let mut runs = self.runs();
        self.space.update_sorted(hs, |_, d| {
            d.count = d.count.saturating_sub(1);
            let dead = d.dead();
            if dead {
                runs.add(d.backend);
            }
            dead
        });
    }
}
