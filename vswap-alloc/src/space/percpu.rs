//! Allocation: per-CPU caches, refills under the list lock, the last-resort
//! scan and the take-back of empty cached clusters.
//!
//! # Per-CPU caches and lists
//! Each CPU number has, per order, the index of its current cluster (holding one
//! reference and the `CACHED` flag) and a cursor hint. Allocation loads the
//! index, pins the cluster for the slots it wants, and claims words from the
//! cursor on: no lock. When the cluster has no room the CPU *refills* under the
//! list lock: the kernel's order of preference, `nonfull[order]`, then a free
//! cluster (tables made with the lock dropped). The cluster it lets go of is
//! filed by its fill: `full`; `nonfull[order]` if a naturally aligned free run
//! of its order is left; else `frag[order]` (so a fragmented cluster never
//! has a run of its own order, and none of order 0 is fragmented; a device's
//! order-0 cluster is filed by its references, not a scan of its words, and
//! the drop of a short-lived reference that made it look full moves it to
//! `nonfull`: `lists::file`, `lifetime::hid_file`). The first
//! free into a `full`, `frag` or unlisted cluster moves it to
//! `nonfull[order]`; frees into a cached or nonfull cluster take no lock. CPUs
//! that share a number only slow each other down: the cache slot is read
//! without a lock and written only under the list lock.
//!
//! When nothing is listed or free, allocation *steals* (`steal`): on a device,
//! an order-0 request first takes a slot from the lowest-numbered cluster of
//! any order on a frag list, then from the lowest-numbered one on a nonfull
//! list (two bitmaps under the list lock; the kernel's order-0 "steal from
//! higher orders", which also tries `frag` before `nonfull`: a fragmented
//! cluster's holes serve no request of its own order, a nonfull cluster's
//! runs do; issue 14: on the kernel's mTHP test with `-a -s` this took the
//! fallback ratio from 3.5% to 0.1%); then any request tries every
//! CPU number's cached cluster of its order (of every order for a device's
//! order 0). There is no walk over the whole space (issue 14: at 90% use and
//! on full devices it cost milliseconds): fragmented clusters of the order
//! have no run, full ones no slot. Then it takes back one cluster that a
//! per-CPU cache holds and that frees emptied (of any CPU number and order:
//! its tables go, or on a device it goes to the free FIFO or the discard
//! queue; at most one per allocation; a cluster just made live for a cache is
//! not taken before its first claim) and retries, before failing with
//! [`Error::NoSpace`], or [`Error::DiscardPending`] when emptied clusters are
//! waiting for the host's discard (or the cluster taken back went to the
//! discard queue). A rotational device has one cursor: every CPU number uses CPU 0's cache, so
//! slots go out in device order.

use super::*;
use super::{dir::*, lifetime::*, lists::*};

/// Nonfull clusters of other orders a device's order > 0 steal looks at
/// for a run, at most, per call (`steal_run`): a bound on a failing
/// allocation's cost.
pub(super) const STEAL_RUN_TRIES: u32 = 8;

/// One CPU's cache for one order.
pub(super) struct CpuOrder {
    /// `cluster index + 1` of the current cluster; 0 = none.
    pub(super) cur: AtomicU32,
    /// Slot offset where the next scan starts (a hint, masked to the
    /// cluster).
    pub(super) cursor: AtomicU32,
}

#[repr(align(64))]
pub(super) struct PerCpu {
    pub(super) orders: [CpuOrder; MAX_ORDERS],
}

// SAFETY: all-zero is "no cluster cached" with zero cursors.
unsafe impl ZeroInit for PerCpu {
    fn zeroed() -> Self {
        Self {
            orders: core::array::from_fn(|_| CpuOrder {
                cur: AtomicU32::new(0),
                cursor: AtomicU32::new(0),
            }),
        }
    }
}

/// The fallbacks one allocation has been through.
#[derive(Default)]
pub(super) struct Fallback {
    /// `SlotSpace::room` as its announcement left it, once announced.
    pub(super) scan: Option<u64>,
    /// Whether it took back an empty cached cluster already.
    pub(super) reclaimed: bool,
    /// Whether a steal stopped at its bound with clusters left unlooked at
    /// (`steal_run`): then the order is not marked exhausted.
    pub(super) truncated: bool,
}

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
    pub(super) fn percpu(&self, cpu: u32) -> Option<&PerCpu> {
        if cpu >= self.geo.cpus {
            return None;
        }
        let cpu = if self.policy.rotational { 0 } else { cpu };
        // SAFETY: `cpu < cpus`, the array has `cpus` initialised entries.
        Some(unsafe { &*self.percpu.as_ptr().add(cpu as usize) })
    }

    /// Allocate `2^order` naturally aligned slots on `cpu`, writing `init`
    /// (non-zero) into each slot word. Returns the first slot.
    ///
    /// [`Error::NoSpace`] can be transient while emptied clusters that had
    /// optional tables (cache or memcg) wait for the host's grace period
    /// (`memory().retiring_clusters`); clusters without them are taken back
    /// at once.
    ///
    /// ```
    /// # #[cfg(feature = "std")] {
    /// use vswap_alloc::{Ctx, Geometry, SlotSpace, StdProvider};
    /// let s = SlotSpace::new(Geometry::default(), StdProvider::new(), u64::MAX).unwrap();
    /// let a = s.alloc(0, 0, Ctx::MaySleep, 1).unwrap();
    /// assert_ne!(a, 0); // slot 0 is reserved
    /// let b = s.alloc(4, 1, Ctx::MaySleep, 1).unwrap();
    /// assert_eq!(b % 16, 0);
    /// # }
    /// ```
    #[inline]
    pub fn alloc(&self, order: u32, cpu: u32, ctx: Ctx, init: u64) -> Result<u32> {
        self.alloc_with(order, cpu, ctx, init, 0)
    }

    /// As [`alloc`](Self::alloc), writing `init + i * step` into the `i`-th slot
    /// of the run (a reverse map stores consecutive owners this way).
    #[inline]
    pub fn alloc_with(&self, order: u32, cpu: u32, ctx: Ctx, init: u64, step: u64) -> Result<u32> {
        if order > self.geo.cluster_shift {
            return Err(Error::BadOrder);
        }
        let n = 1u64 << order;
        if init == 0 {
            return Err(Error::BadConfig);
        }
        let last = step.checked_mul(n - 1).and_then(|d| init.checked_add(d));
        if last.is_none_or(|v| W::BITS < 64 && v >> W::BITS != 0) {
            return Err(Error::PayloadTooWide);
        }
        let pc = self.percpu(cpu).ok_or(Error::BadCpu)?;
        let pc = pc.orders.get(order as usize).ok_or(Error::BadOrder)?;
        match self.alloc_cached(pc, order, init, step) {
            Ok(slot) => Ok(slot),
            Err(cur) => self.alloc_slow(pc, order, cur, ctx, init, step),
        }
    }

    /// Claim from the CPU's cached cluster: the fast path (no lock). On
    /// failure, returns the cache slot's value it saw (the refill replaces
    /// that one).
    #[inline(always)]
    fn alloc_cached(
        &self,
        pc: &CpuOrder,
        order: u32,
        init: u64,
        step: u64,
    ) -> core::result::Result<u32, u32> {
        let n = 1u64 << order;
        let cur = pc.cur.load(Ordering::Acquire);
        let Some(idx) = cur.checked_sub(1) else {
            return Err(cur);
        };
        // The record through the table index when the cluster is in it (one
        // line gives it); then the table, once the reference is held.
        let indexed = match self.indexed(idx) {
            Indexed::At(t) => NonNull::new(t.rec.load(Ordering::Relaxed)).map(|r| (t, r)),
            _ => None,
        };
        let e = match indexed {
            // SAFETY: records are never freed while the space lives.
            Some((_, r)) => unsafe { r.as_ref() },
            None => match self.entry(idx) {
                Some(e) => e,
                None => return Err(cur),
            },
        };
        // On a `PhysDevice`'s space (`own_words`), not when every slot is
        // taken: the cache's hold plus one per slot. Not elsewhere: a
        // virtual space's free zeroes the word and drops its reference only
        // after the host released the backend, and the slot may be taken
        // again in between (the scan finds the zero word; vswap-core's
        // memcg-reuse regression test needs that).
        let limit = if self.own_words {
            self.csize() as u64 + 1
        } else {
            REFS_LIMIT - 1
        };
        if !e.try_ref_below(n, Some(order), limit) {
            return Err(cur);
        }
        // Our reference keeps the cluster live: its table (published before
        // it went live) stays until the reference is dropped.
        let words = match indexed {
            Some((t, _)) => self.table(t.words.load(Ordering::Acquire)),
            None => self.words_of(e),
        };
        let hint = pc.cursor.load(Ordering::Relaxed) as usize;
        // The cursor's word taken: a slot freed last, if the free left a
        // hint (only `PhysDevice`'s frees do), before a scan from the cursor.
        let own = self.own_words;
        let alt = || own.then(|| e.cookie.load(Ordering::Relaxed) as usize);
        match claim(words, hint, alt, n as usize, init, step) {
            Ok(at) => {
                pc.cursor.store((at + n as usize) as u32, Ordering::Relaxed);
                Ok((idx << self.geo.cluster_shift) | at as u32)
            }
            // No room for this order: give the references back.
            Err(miss) => {
                self.missed(idx, e, n, miss);
                Err(cur)
            }
        }
    }

    /// The cached cluster (seen as `cur`) had no room: refill, fall back,
    /// retry.
    #[cold]
    #[inline(never)]
    fn alloc_slow(
        &self,
        pc: &CpuOrder,
        order: u32,
        mut cur: u32,
        ctx: Ctx,
        init: u64,
        step: u64,
    ) -> Result<u32> {
        // No cluster ever reaches an addressed space's caches: every call
        // ends here.
        if self.policy.addressed {
            return Err(Error::BadConfig);
        }
        let mut fb = Fallback::default();
        loop {
            match self.refill(pc, order, cur, ctx, &mut fb) {
                Ok(()) => match self.alloc_cached(pc, order, init, step) {
                    Ok(slot) => return Ok(slot),
                    Err(seen) => cur = seen,
                },
                Err(err @ (Error::NoSpace | Error::DiscardPending)) => {
                    // Nothing listed or free: the full scan, unless the last
                    // one failed and no word was freed since (O(1) then).
                    let Some(seen) = fb.scan else {
                        return Err(err);
                    };
                    if let Some(slot) = self.steal(order, init, step, &mut fb) {
                        return Ok(slot);
                    }
                    // Empty clusters the per-CPU caches hold: take one back
                    // (once per call: another CPU may take it first, and a
                    // retry without bound could chase it forever).
                    if !fb.reclaimed {
                        fb.reclaimed = true;
                        match self.reclaim_cached() {
                            // Now in the free FIFO: try again.
                            Some(false) => match self.alloc_cached(pc, order, init, step) {
                                Ok(slot) => return Ok(slot),
                                Err(seen) => {
                                    cur = seen;
                                    continue;
                                }
                            },
                            Some(true) => return Err(Error::DiscardPending),
                            None => {}
                        }
                    }
                    // A bounded steal that left clusters unlooked at has
                    // not shown that nothing can serve the order (review of
                    // 2026-12-03): no exhausted mark, the next call looks
                    // again.
                    if !fb.truncated {
                        self.end_scan(order, seen);
                    }
                    return Err(err);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A claim of `n` slots in cluster `idx` failed: give back the
    /// references of the words it did not keep; if it rolled words back to
    /// 0, that is a free (room made, and a filed cluster moves to
    /// `nonfull`).
    pub(super) fn missed(&self, idx: u32, e: &DirEntry<W>, n: u64, miss: Miss) {
        // Words set back to 0 are a free: the cluster may have left its
        // cache and been filed full meanwhile, and only a free moves it back
        // to `nonfull` (found by review: the run rolled back was lost).
        self.unref(idx, e, n - miss.kept, miss.undone);
    }

    /// Take back one empty cluster a per-CPU cache holds (only its hold is
    /// left, and the cache has allocated from it since it was installed):
    /// it leaves the cache and dies (virtual: tables freed; fixed:
    /// to the free FIFO or, with discard, the discard queue). Returns
    /// whether it went to the discard queue, or `None` if no cache held an
    /// empty cluster. Under the list lock; O(CPUs * orders).
    pub(super) fn reclaim_cached(&self) -> Option<bool> {
        let mut garbage = Garbage::default();
        let mut l = self.lists.lock();
        let cpus = if self.policy.rotational {
            1
        } else {
            self.geo.cpus
        };
        let mut got = None;
        'all: for cpu in 0..cpus {
            let Some(pcpu) = self.percpu(cpu) else { break };
            let orders = self.geo.cluster_shift as usize + 1;
            for pc in pcpu.orders.iter().take(orders) {
                let cur = pc.cur.load(Ordering::Acquire);
                let Some(e) = cur.checked_sub(1).and_then(|i| self.entry(i)) else {
                    continue;
                };
                #[cfg(test)]
                self.scanned.fetch_add(1, Ordering::Relaxed);
                // An RMW, not a load: it orders this read after the scan's
                // announcement against a racing free (see `room_made`).
                let st = e.state.fetch_add(0, Ordering::AcqRel);
                if st & (LIVE | DYING | CACHED) != LIVE | CACHED || refs(st) != 1 {
                    continue;
                }
                // A fresh cluster whose first claim is yet to come is empty
                // only for that moment: it was not emptied by frees.
                if st & FRESH != 0 {
                    continue;
                }
                // The cache slot is written only under the list lock (held):
                // empty it, then drop its hold as a refill replacing it would.
                pc.cur.store(0, Ordering::Release);
                self.drop_hold(&mut l, cur - 1, &mut garbage);
                got = Some(e.state.load(Ordering::Acquire) == DISCARD);
                break 'all;
            }
        }
        drop(l);
        self.collect(garbage);
        got
    }

    /// Take back every empty cluster the per-CPU caches hold (each CPU
    /// number keeps at most one cluster per order cached, empty or not, to
    /// allocate from without the list lock). Returns how many. An
    /// allocation that finds no other room does this by itself, one cluster
    /// at a time; a host calls it to bring the memory a space holds after
    /// everything was freed down to its directory, per-CPU array and
    /// clusters holding reserved slots. O(CPUs * orders) under the list lock.
    pub fn trim(&self) -> u32 {
        let mut n = 0;
        while self.reclaim_cached().is_some() {
            n += 1;
        }
        self.poll_all();
        n
    }

    /// Last resort, once nothing is listed for `order` and no cluster is
    /// free (issue 14: no walk over the whole space):
    /// - on a device, for an order-0 request, the lowest-numbered cluster of
    ///   any order on a fragmented list, else on a nonfull list (the `listed`
    ///   bitmaps: as the full scan in cluster order that this replaces, it
    ///   keeps order-0 slots packed low and runs free higher up, and it
    ///   breaks no free run while a hole that no run can use is left); one
    ///   that gives nothing is filed again by its fill (full), leaving the
    ///   bitmaps;
    /// - then every CPU number's cached cluster of `order` (for a device's
    ///   order 0, of every order, order 0 first: a higher order's cluster
    ///   keeps its runs longest), lock-free as an allocation from it.
    ///
    /// The clusters that can hold a free run of `order` are the free ones,
    /// `nonfull[order]` (the refill's) and the cached ones: fragmented
    /// clusters of `order` have none (filed so when their cache found no run;
    /// the first free moves them to `nonfull`), full ones no free slot. Cost:
    /// O(CPU numbers x orders) cached clusters, plus the listed clusters
    /// found full (each leaves the bitmap until a free).
    pub(super) fn steal(&self, order: u32, init: u64, step: u64, fb: &mut Fallback) -> Option<u32> {
        let any = order == 0 && self.policy.fixed;
        if any {
            if let Some(slot) = self.steal_lowest(init, step) {
                return Some(slot);
            }
        }
        if let Some(slot) = self.steal_cached(order, any, init, step) {
            return Some(slot);
        }
        if self.policy.fixed && order > 0 {
            return self.steal_run(order, init, step, fb);
        }
        None
    }

    /// `steal` of a free run of `order` (> 0, fixed spaces) from a cluster
    /// of another order on a nonfull list, lowest-numbered first, at most
    /// [`STEAL_RUN_TRIES`] clusters a call. A cluster keeps its order: runs
    /// of other orders in it are the counterpart of order 0 stealing from
    /// higher orders' clusters. Issue 14: on the kernel's mTHP test with
    /// `-a` the only free runs left when an order-4 request failed were in
    /// order-0 clusters that frees had mostly emptied. Only the
    /// lowest-numbered [`STEAL_RUN_TRIES`] are looked at, so a run in a
    /// higher one is not found (a known limit, for a bounded cost); when
    /// more were left the call sets `fb.truncated`, and the order is not
    /// marked exhausted.
    fn steal_run(&self, order: u32, init: u64, step: u64, fb: &mut Fallback) -> Option<u32> {
        let mut from = 0;
        for tried in 0..=STEAL_RUN_TRIES {
            let idx = {
                let mut l = self.lists.lock();
                self.next_listed(&mut l, List::Nonfull, from)?
            };
            if tried == STEAL_RUN_TRIES {
                // One more nonfull cluster left: stop at the bound.
                fb.truncated = true;
                return None;
            }
            from = idx.checked_add(1)?;
            #[cfg(test)]
            self.scanned.fetch_add(1, Ordering::Relaxed);
            let Some(e) = self.entry(idx) else {
                continue;
            };
            if let Some(slot) = self.take_from(idx, e, order, None, init, step) {
                return Some(slot);
            }
        }
        None
    }

    /// `steal` of one slot from the lowest-numbered listed cluster (fixed
    /// spaces).
    fn steal_lowest(&self, init: u64, step: u64) -> Option<u32> {
        // Each listed cluster at most once per call (the count when first
        // looked at: one that a racing free refiled could come back).
        let mut tries = None;
        loop {
            let idx = {
                let mut l = self.lists.lock();
                let left = tries.get_or_insert_with(|| {
                    let c = |x: List| l.counts.get(x as usize).copied().unwrap_or(0);
                    c(List::Frag) + c(List::Nonfull)
                });
                *left = left.checked_sub(1)?;
                // Fragmented clusters first: their holes serve no request
                // of their own order, where a nonfull one's runs would.
                self.first_listed(&mut l, List::Frag)
                    .or_else(|| self.first_listed(&mut l, List::Nonfull))?
            };
            #[cfg(test)]
            self.scanned.fetch_add(1, Ordering::Relaxed);
            let e = self.entry(idx)?;
            if let Some(slot) = self.take_from(idx, e, 0, None, init, step) {
                return Some(slot);
            }
            // Nothing free there (claimed meanwhile): file it by its fill.
            let mut l = self.lists.lock();
            self.refile(&mut l, idx, e);
        }
    }

    /// Claim `2^order` slots (of a cluster of `want`, any if `None`) from
    /// cluster `idx`, scanning from its start: its references first, given
    /// back on a miss. The steals' one step.
    fn take_from(
        &self,
        idx: u32,
        e: &DirEntry<W>,
        order: u32,
        want: Option<u32>,
        init: u64,
        step: u64,
    ) -> Option<u32> {
        let n = 1u64 << order;
        if !e.try_ref(n, want) {
            return None;
        }
        match claim(self.words_of(e), 0, || None, n as usize, init, step) {
            Ok(at) => Some((idx << self.geo.cluster_shift) | at as u32),
            Err(miss) => {
                self.missed(idx, e, n, miss);
                None
            }
        }
    }

    /// `steal` from the CPUs' cached clusters: of `order`, or (`any`) of
    /// every order, the order-0 ones first.
    fn steal_cached(&self, order: u32, any: bool, init: u64, step: u64) -> Option<u32> {
        let want = if any { None } else { Some(order) };
        let cpus = if self.policy.rotational {
            1
        } else {
            self.geo.cpus
        };
        let orders = if any {
            0..self.geo.cluster_shift as usize + 1
        } else {
            order as usize..order as usize + 1
        };
        for o in orders {
            for cpu in 0..cpus {
                let Some(pc) = self.percpu(cpu).and_then(|p| p.orders.get(o)) else {
                    break;
                };
                let cur = pc.cur.load(Ordering::Acquire);
                let Some((idx, e)) = cur
                    .checked_sub(1)
                    .and_then(|i| self.entry(i).map(|e| (i, e)))
                else {
                    continue;
                };
                #[cfg(test)]
                self.scanned.fetch_add(1, Ordering::Relaxed);
                // Every slot allocated (the cache's hold is the one more
                // reference): nothing to scan. An RMW, not a load: it orders
                // this read after the scan's announcement against a racing
                // free's `fetch_sub` (see the `full` module; loom
                // `a_free_racing_a_full_scan_is_never_lost` fails with a load).
                if refs(e.state.fetch_add(0, Ordering::AcqRel)) > self.csize() as u64 {
                    continue;
                }
                if let Some(slot) = self.take_from(idx, e, order, want, init, step) {
                    return Some(slot);
                }
            }
        }
        None
    }

    /// Give the CPU a cluster with room for `order`, replacing `seen`.
    pub(super) fn refill(
        &self,
        pc: &CpuOrder,
        order: u32,
        seen: u32,
        ctx: Ctx,
        fb: &mut Fallback,
    ) -> Result<()> {
        let mut garbage = Garbage::default();
        let mut l = self.lists.lock();
        if pc.cur.load(Ordering::Relaxed) != seen {
            return Ok(()); // another thread on this CPU number refilled
        }
        if let Some(idx) = self.pop_listed(&mut l, List::Nonfull, order) {
            self.install_cache(&mut l, pc, idx, &mut garbage);
            drop(l);
            self.collect(garbage);
            return Ok(());
        }
        // Retired clusters whose grace period ended become free first (their
        // tables freed with the lock dropped).
        if l.retire.head != 0 {
            let mut done = Garbage::default();
            self.poll_retired(&mut l, &mut done);
            if done.n > 0 {
                drop(l);
                self.collect(done);
                l = self.lists.lock();
                if pc.cur.load(Ordering::Relaxed) != seen {
                    return Ok(());
                }
            }
        }
        // A retired cluster still in its grace period serves first, with the
        // table it has: no provider call, no new index (see "Reclamation" in `lifetime`:
        // reusing an all-zero table is what reusing a freed slot in a live
        // cluster already is). Otherwise a free cluster: take an index whose
        // directory pages exist (made with the lock dropped), then make its
        // slot table without the lock.
        let reused = self.reuse_retired(&mut l);
        let idx = if reused.is_some() {
            reused
        } else {
            loop {
                if let Some(idx) = self.fifo_pop(&mut l.free) {
                    break Some(idx);
                }
                if u64::from(l.bump) >= self.clusters {
                    break None;
                }
                let peek = l.bump;
                if self.dir_ready(peek) {
                    l.bump += 1;
                    break Some(peek);
                }
                drop(l);
                self.entry_or_create(peek, ctx)?;
                l = self.lists.lock();
                if pc.cur.load(Ordering::Relaxed) != seen {
                    return Ok(());
                }
            }
        };
        let Some(idx) = idx else {
            let err = if l.discard.len + l.discarding > 0 {
                Error::DiscardPending
            } else {
                Error::NoSpace
            };
            // Nothing listed or free, and the last full scan for this order
            // found nothing with no free since: no fallback can succeed.
            if fb.scan.is_none() && self.exhausted(order) {
                return Err(err);
            }
            if fb.scan.is_none() {
                fb.scan = Some(self.begin_scan(order));
            }
            // Fragmented clusters of this order cannot serve it (see
            // `steal`): the fallbacks go on outside the lock.
            return Err(err);
        };
        let e = self.entry(idx).ok_or(Error::NoMem)?;
        if e.words.load(Ordering::Acquire).is_null() {
            drop(l);
            let made = self.make_words(e, ctx);
            l = self.lists.lock();
            if let Err(err) = made {
                self.fifo_push_front(&mut l, idx);
                return Err(err);
            }
            if pc.cur.load(Ordering::Relaxed) != seen {
                // Lost to another refill on this CPU number: give it back
                // (never published: no grace period to wait for).
                self.finish(&mut l, idx, e, &mut garbage);
                drop(l);
                self.collect(garbage);
                return Ok(());
            }
        }
        // The cache's hold, plus slots that are never handed out.
        let held = 1 + self.reserve_words(idx, e);
        e.state.store(
            LIVE | CACHED | FRESH | (u64::from(order) << ORDER_SHIFT) | held,
            Ordering::Release,
        );
        // Into the table index before the cache can hand out a slot of it
        // (the `pc.cur` swap below): a pin of any handed-out slot finds it.
        self.index_table(idx, e, e.words.load(Ordering::Acquire));
        // A fresh cluster is room a full scan may not have seen (other CPUs
        // and, on a device, order 0 reach it only by stealing). Under the
        // list lock, as every announcement is.
        self.room_made();
        self.live.fetch_add(1, Ordering::Relaxed);
        let old = pc.cur.swap(idx + 1, Ordering::AcqRel);
        pc.cursor.store(0, Ordering::Relaxed);
        if old != 0 {
            self.drop_hold(&mut l, old - 1, &mut garbage);
        }
        drop(l);
        self.collect(garbage);
        Ok(())
    }

    /// A cluster about to go live: in a virtual space, set the words of
    /// slot 0 (a zero swap entry means "none") and slot 2^32 - 1 (the device
    /// reverse map's reserved marker), which are never handed out. Returns
    /// how many words are not 0 (those, and words hostile safe code set in
    /// free slots, are counted as held). Under the list lock.
    pub(super) fn reserve_words(&self, idx: u32, e: &DirEntry<W>) -> u64 {
        let words = self.words_of(e);
        if !self.policy.fixed {
            if idx == 0 {
                if let Some(w) = words.first() {
                    w.put(self.reserved, Ordering::Relaxed);
                }
            }
            if (u64::from(idx) + 1) << self.geo.cluster_shift > u64::from(u32::MAX) {
                if let Some(w) = words.get((u32::MAX - (idx << self.geo.cluster_shift)) as usize) {
                    w.put(self.reserved, Ordering::Relaxed);
                }
            }
        }
        words
            .iter()
            .filter(|w| w.get(Ordering::Relaxed) != 0)
            .count() as u64
    }

    pub(super) fn install_cache(
        &self,
        l: &mut Lists,
        pc: &CpuOrder,
        idx: u32,
        garbage: &mut Garbage<W>,
    ) {
        let old = pc.cur.swap(idx + 1, Ordering::AcqRel);
        // A listed cluster of a `PhysDevice` is there because of a free (or
        // it was let go with room): start at the slot freed last, where a
        // scan from slot 0 would load lines that are all taken first.
        let start = if self.own_words {
            self.entry(idx)
                .map_or(0, |e| e.cookie.load(Ordering::Relaxed) as u32)
        } else {
            0
        };
        pc.cursor.store(start, Ordering::Relaxed);
        if old != 0 && old != idx + 1 {
            self.drop_hold(l, old - 1, garbage);
        }
    }
}

/// A failed claim.
#[derive(Clone, Copy, Default)]
pub(super) struct Miss {
    /// Words it had to keep allocated (whose references the caller keeps).
    pub(super) kept: u64,
    /// Whether it set words it had claimed back to 0.
    pub(super) undone: bool,
}

/// Claim `n` naturally aligned free words, scanning from `hint` (for one
/// word, the word at `alt()` is tried after `hint`'s); word `i` of
/// the run gets `init + i * step`. Returns the offset of the run, or what a
/// failed claim left behind.
#[inline]
pub(super) fn claim<W: SlotWord>(
    words: &[W],
    hint: usize,
    alt: impl FnOnce() -> Option<usize>,
    n: usize,
    init: u64,
    step: u64,
) -> core::result::Result<usize, Miss> {
    // `len` and `n` are powers of two: masks, not divisions.
    let len = words.len();
    let mut miss = Miss::default();
    if len == 0 {
        return Err(miss);
    }
    // The common case first: one slot, free at the hint, then at the
    // second hint (a device's slot freed last), if any.
    let take = |at: usize| {
        let at = at & (len - 1);
        let w = words.get(at)?;
        (w.get(Ordering::Relaxed) == 0 && w.cas(0, init).is_ok()).then_some(at)
    };
    if n == 1 {
        if let Some(at) = take(hint).or_else(|| alt().and_then(take)) {
            return Ok(at);
        }
    }
    let sh = n.trailing_zeros();
    let groups = len >> sh;
    let first = (hint & (len - 1)) >> sh;
    for g in 0..groups {
        let at = ((first + g) & (groups - 1)) << sh;
        let Some(group) = words.get(at..at + n) else {
            break;
        };
        if group.iter().any(|w| w.get(Ordering::Relaxed) != 0) {
            continue;
        }
        let mut got = 0;
        let mut v = init;
        for w in group {
            if w.cas(0, v).is_err() {
                break;
            }
            got += 1;
            v += step;
        }
        if got == n {
            return Ok(at);
        }
        // Roll back what we took. A word somebody changed after we claimed it
        // (only a caller acting on a slot it does not own can) stays allocated
        // and keeps its reference, so the accounting stays exact.
        let mut kept = 0;
        let mut v = init;
        for w in group.iter().take(got) {
            if w.cas(v, 0).is_err() {
                kept += 1;
            } else {
                miss.undone = true;
            }
            v += step;
        }
        if kept > 0 {
            miss.kept = kept; // kept < n: the refs cover them
            return Err(miss);
        }
    }
    Err(miss)
}
