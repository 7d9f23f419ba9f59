//! Cluster lifetime: the lifetime word, teardown, and the host-provided
//! reclamation of torn-down clusters' tables.
//!
//! # The lifetime word (`DirEntry::state`)
//! ```text
//!  63    48 47  44  43  42  40 39  38     37   36   35      34     33    32   31        0
//! +--------+------+----+------+----+--------+-----+----+-------+------+-----+----+----------+
//! | rsvd   | order|rsvd| list |rsvd|RETIRING|FRESH|rsvd|DISCARD|CACHED|DYING|LIVE|   refs   |
//! +--------+------+----+------+----+--------+-----+----+-------+------+-----+----+----------+
//! ```
//! `refs` counts allocated slots (reserved ones included) + 1 while a
//! per-CPU cache holds the cluster. Readers hold no reference: they are
//! read-side sections of the host's reclamation (below). `list` says which list holds a live
//! cluster: none, nonfull[order], frag[order] or full. States and transitions:
//! - `FREE` (0): not allocatable; in the free FIFO or never used (above `bump`).
//!   Only `refill`, under the list lock, makes it `LIVE | CACHED | FRESH` with
//!   refs = 1 + reserved slots. `FRESH` goes with the first allocation pin
//!   (the same CAS) or when the cluster leaves the cache; while it is set the
//!   cluster is not taken back from its cache as an emptied one.
//! - `LIVE`: tables valid. An allocation adds its slots' references with a
//!   CAS (`try_ref`) that succeeds only while `LIVE && !DYING` and the order
//!   matches, and only then claims words.
//! - `LIVE, refs == 0`: the `unref` that saw `refs` reach 0 calls
//!   `try_teardown`, which under the list lock CASes `LIVE, refs == 0` ->
//!   `DYING`. The CAS fails if an allocation added references in between
//!   (its own later `unref` tries again). No slot can be claimed then.
//! - `DYING`: nothing can be claimed. The tearer unlinks the cluster; a
//!   fixed space's cluster without optional tables then goes straight to
//!   `FREE` (or `DISCARD`, queued for the host's discard, whose
//!   `discard_done` makes it `FREE`); every other one becomes `RETIRING`.
//! - `RETIRING`: on the retire FIFO with the host's grace-period cookie,
//!   its table pointers still set. When the grace period has ended (polled
//!   at every teardown and refill, and by [`SlotSpace::poll_all`]) its
//!   tables go back to the provider (a fixed space keeps its slot table)
//!   and it becomes `FREE` (or `DISCARD`). A refill may take the oldest
//!   `RETIRING` cluster without optional tables back before that, keeping
//!   its table (see below).
//!
//! # Reclamation (the host's RCU)
//! Every access to a cluster's tables outside the allocator's own paths
//! goes through a [`Pin`]: a read-side section of the provider
//! ([`Provider::read_lock`], `rcu_read_lock` in a kernel, a thread-keyed
//! epoch in userspace) in which the lifetime word is seen `LIVE` and the
//! slot-table pointer is loaded. No atomic read-modify-write: a lookup is
//! the section, two loads in the directory record and the slot word.
//! - A teardown makes the cluster `DYING` (a CAS) before it starts the
//!   grace period ([`Provider::grace_start`]); a section that begins after
//!   that sees the cluster is not live and touches nothing. A section that
//!   began before may still read (or CAS) the tables: they stay allocated
//!   until [`Provider::grace_done`] says every such section has ended.
//! - A retired table is all zero (every slot was free: each allocated slot
//!   holds a reference), so a late CAS from an expected non-zero word fails
//!   and a late read sees a free slot. The retire FIFO is linked through the
//!   directory record, never through the table.
//! - Reuse before the grace period: a refill that takes a `RETIRING` cluster
//!   back keeps its (all-zero) slot table, so a late reader reads the new
//!   incarnation's words: the same as a reader of a freed slot whose word is
//!   claimed again in a live cluster. Clusters with optional tables are not
//!   reused this way: those could carry the last incarnation's memcg ids.
//! - Nothing sleeps inside a section. A pin that must allocate with
//!   [`Ctx::MaySleep`] (a cache or memcg table, a side-table block)
//!   leaves its section for the allocation ([`Pin::outside`]) and enters
//!   again; first, still inside, it takes a reference on the cluster
//!   (`try_ref`, which fails once the cluster is `DYING`: then the call
//!   fails with `NotAllocated` and nothing leaves the section), so the
//!   cluster is not torn down while the pin is out, and it drops the
//!   reference only after entering again: a teardown that this causes
//!   starts a grace period that waits for the new section. (A space-wide
//!   count of pins outside, the first design, was not enough: once the pin
//!   was back in a section begun after the retirement's grace period
//!   started, and the count down, a poll freed the tables the pin still
//!   showed. Found by review.)
//! - Dropping the space needs `&mut`: no section can still read it, and every
//!   table (retired or not) goes back at once.

use super::*;
use super::{dir::*, lists::*};

/// Tables to give back to the provider once the list lock is dropped: of
/// up to [`GARBAGE`] clusters whose grace period ended (or that were never
/// published).
pub(super) struct Garbage<W> {
    pub(super) words: [Option<NonNull<W>>; GARBAGE],
    pub(super) ext: [Option<NonNull<ClusterExt>>; GARBAGE],
    pub(super) n: usize,
}

impl<W> Default for Garbage<W> {
    fn default() -> Self {
        Self {
            words: [None; GARBAGE],
            ext: [None; GARBAGE],
            n: 0,
        }
    }
}

impl<W> Garbage<W> {
    pub(super) fn full(&self) -> bool {
        self.n >= GARBAGE
    }
    /// Queue one cluster's tables (callers check `full` first).
    pub(super) fn push(&mut self, words: Option<NonNull<W>>, ext: Option<NonNull<ClusterExt>>) {
        if words.is_none() && ext.is_none() {
            return;
        }
        if let (Some(w), Some(x)) = (self.words.get_mut(self.n), self.ext.get_mut(self.n)) {
            *w = words;
            *x = ext;
            self.n += 1;
        }
    }
}

/// The cache-table share of bytes freed from an extension record (a cache table
/// is `8n` bytes, a memcg table `2n`).
pub(super) fn split_ext_bytes(freed: usize, n: usize) -> (u64, u64) {
    let cache = if freed >= 8 * n { 8 * n } else { 0 };
    (cache as u64, (freed - cache) as u64)
}

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
    /// Give back the tables of every retired cluster whose grace period has
    /// ended (the space also does this whenever it tears a cluster down or
    /// looks for a free one). Returns how many clusters were finished.
    /// O(retired clusters) under the list lock, in steps.
    pub fn poll_all(&self) -> u32 {
        let mut n = 0;
        loop {
            let mut garbage = Garbage::default();
            let mut l = self.lists.lock();
            self.poll_retired(&mut l, &mut garbage);
            drop(l);
            let got = garbage.n;
            self.collect(garbage);
            n += got as u32;
            if got < GARBAGE {
                return n;
            }
        }
    }

    /// Drop `n` references of cluster `idx`; `freed` says some were slots.
    #[inline]
    pub(super) fn unref(&self, idx: u32, e: &DirEntry<W>, n: u64, freed: bool) {
        let old = e.state.fetch_sub(n, Ordering::AcqRel);
        if refs(old) == n {
            self.try_teardown(idx, e);
        } else if freed
            && old & CACHED == 0
            && list_of(old) != List::Nonfull
            && !self.policy.addressed
        {
            // (An addressed space's clusters are never listed: see
            // `addressed`.)
            self.move_nonfull(idx, e);
        } else if !freed && self.hid_file(old, n) {
            // A short-lived reference made an order-0 cluster look full to
            // its filing (`file` decides by references): its drop is the
            // free word's move to `nonfull`, and room made.
            self.move_nonfull(idx, e);
            self.room_made();
        } else if !freed && self.hid_room(old, n) {
            // A short-lived reference made a failing allocation skip this
            // cluster (see `hid_room`): its drop is room made for it.
            self.room_made();
        }
        // After the move, which is under the list lock as every scan's
        // announcement is: a failing allocation that announced before the
        // move is seen here (and its exhausted mark cleared); one that
        // announces after finds the cluster listed. A device's order 0 finds
        // a listed cluster of another order only after the marks (the
        // `listed` bitmap in `steal`), so the order matters there (loom
        // `a_free_into_another_orders_full_cluster_racing_an_order0_steal_is_never_lost`
        // fails with the room made before the move).
        if freed {
            self.room_made();
        }
    }

    /// Whether dropping `n` references from lifetime word `old` (not a
    /// free) uncovers a free word of an uncached order-0 device cluster that its
    /// filing may have taken for full: `file` files an order-0 cluster
    /// `full` when its references reach the cluster size, and a short-lived
    /// reference (a steal's `try_ref`, a failed claim's, `Pin::outside`)
    /// counts. The drop that crosses back below the size moves it to
    /// `nonfull` (also when the RMW lands while the filing holds the list
    /// lock: the move waits for the lock, then finds it filed).
    #[inline]
    pub(super) fn hid_file(&self, old: u64, n: u64) -> bool {
        let c = self.csize() as u64;
        self.own_words
            && old & CACHED == 0
            && order_of(old) == 0
            && list_of(old) != List::Nonfull
            && refs(old) >= c
            && refs(old).saturating_sub(n) < c
    }

    /// Whether dropping `n` references from lifetime word `old` (not a
    /// free) uncovers room that a failing allocation may have skipped while
    /// the references were held (found by review): `steal` skips a cached
    /// cluster whose references say every slot is taken (above `csize`),
    /// and the take-back skips a cached one holding more than its cache's
    /// hold; a transient reference (another order's claim attempt, a
    /// steal's `try_ref`, `Pin::outside`) is counted in both. The unref
    /// that crosses back is an RMW on the same word after the skipping
    /// read, so its `room_made` sees that scan's announcement.
    #[inline]
    pub(super) fn hid_room(&self, old: u64, n: u64) -> bool {
        let c = self.csize() as u64;
        let (before, after) = (refs(old), refs(old).saturating_sub(n));
        (before > c && after <= c) || (old & CACHED != 0 && after == 1)
    }

    pub(super) fn try_teardown(&self, idx: u32, e: &DirEntry<W>) {
        let mut garbage = Garbage::default();
        let mut l = self.lists.lock();
        self.teardown_locked(&mut l, idx, e, &mut garbage);
        drop(l);
        self.collect(garbage);
    }

    pub(super) fn teardown_locked(
        &self,
        l: &mut Lists,
        idx: u32,
        e: &DirEntry<W>,
        garbage: &mut Garbage<W>,
    ) {
        let s = e.state.load(Ordering::Acquire);
        if s & (LIVE | DYING | CACHED) != LIVE || refs(s) != 0 {
            return;
        }
        if e.state
            .compare_exchange(s, s | DYING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // somebody pinned it; their unref will try again
        }
        // Out of the table index before the grace period starts (`retire`):
        // a section that begins from now on cannot reach the table.
        self.unindex_table(idx);
        self.unlink(l, idx, e);
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.retire(l, idx, e, garbage);
    }

    /// A dead cluster (`DYING`, unlinked) waits for a grace period before
    /// its tables go (see "Reclamation" above); a fixed space's cluster without
    /// optional tables has nothing to free and goes back at once. Finishes
    /// the retired clusters whose grace period has ended.
    pub(super) fn retire(
        &self,
        l: &mut Lists,
        idx: u32,
        e: &DirEntry<W>,
        garbage: &mut Garbage<W>,
    ) {
        // A fixed space frees only the optional tables: swapped out here (a
        // late pin from before `DYING` may still install a record; one that
        // comes after this swap stays with the free cluster, which its next
        // incarnation keeps, and is retired with it). None: nothing waits.
        if self.policy.fixed {
            let ext = e.ext.swap(ptr::null_mut(), Ordering::AcqRel);
            if ext.is_null() {
                self.finish(l, idx, e, garbage);
                return;
            }
            e.retired_ext.store(ext, Ordering::Relaxed);
        }
        e.cookie
            .store(self.provider.grace_start(), Ordering::Relaxed);
        e.state.store(RETIRING, Ordering::Release);
        self.fifo_push(&mut l.retire, idx);
        self.poll_retired(l, garbage);
    }

    /// Finish the oldest retired clusters whose grace period has ended (as
    /// many as `garbage` holds). Under the list lock.
    pub(super) fn poll_retired(&self, l: &mut Lists, garbage: &mut Garbage<W>) {
        while !garbage.full() && l.retire.head != 0 {
            let idx = l.retire.head - 1;
            let Some(e) = self.entry(idx) else { break };
            if !self.provider.grace_done(e.cookie.load(Ordering::Relaxed)) {
                break;
            }
            if self.fifo_pop(&mut l.retire).is_none() {
                break;
            }
            self.finish(l, idx, e, garbage);
            // A cluster back in the free FIFO is room (see the `full` module).
            self.room_made();
        }
    }

    /// Take the oldest retired cluster back before its grace period ends, if
    /// it has no optional tables (those could hold the last incarnation's
    /// memcg ids; they wait). It keeps its slot table, all zero but for
    /// words hostile safe code set in free slots (counted as held by the
    /// refill, as on any cluster).
    pub(super) fn reuse_retired(&self, l: &mut Lists) -> Option<u32> {
        let idx = l.retire.head.checked_sub(1)?;
        let e = self.entry(idx)?;
        if self.policy.fixed || !e.ext.load(Ordering::Acquire).is_null() {
            return None;
        }
        self.fifo_pop(&mut l.retire)
    }

    /// A dead cluster nobody can reach any more (its grace period ended, or
    /// it was never published) goes back: its tables to `garbage` (virtual;
    /// a fixed space keeps its slot table) and its index to the free FIFO
    /// or the discard queue.
    pub(super) fn finish(
        &self,
        l: &mut Lists,
        idx: u32,
        e: &DirEntry<W>,
        garbage: &mut Garbage<W>,
    ) {
        let (words, ext) = if self.policy.fixed {
            (
                None,
                NonNull::new(e.retired_ext.swap(ptr::null_mut(), Ordering::Relaxed)),
            )
        } else {
            (
                NonNull::new(e.words.swap(ptr::null_mut(), Ordering::AcqRel)),
                NonNull::new(e.ext.swap(ptr::null_mut(), Ordering::AcqRel)),
            )
        };
        garbage.push(words, ext);
        if self.policy.fixed && self.policy.discard {
            e.state.store(DISCARD, Ordering::Release);
            self.fifo_push(&mut l.discard, idx);
            return;
        }
        e.state.store(0, Ordering::Release);
        // An addressed space takes its clusters by index (`alloc_at`), never
        // from the free FIFO.
        if !self.policy.addressed {
            self.fifo_push(&mut l.free, idx);
        }
    }

    /// Give tables back to the provider (never under the list lock).
    pub(super) fn collect(&self, g: Garbage<W>) {
        let n = self.csize();
        let count = g.n.min(GARBAGE);
        for w in g.words.iter().take(count).flatten() {
            // SAFETY: the table was unpublished from a dead cluster after its
            // grace period (or from one never published), so nobody holds a
            // reference into it.
            unsafe { free_table(&self.provider, *w, n) };
            self.mem_words
                .fetch_sub(self.table_bytes(), Ordering::Relaxed);
        }
        for &x in g.ext.iter().take(count).flatten() {
            // SAFETY: as above, the record and its tables are unreachable.
            let freed = unsafe { x.as_ref().free_tables(&self.provider, n) };
            let (cache, memcg) = split_ext_bytes(freed, n);
            self.mem_cache.fetch_sub(cache, Ordering::Relaxed);
            self.mem_memcg
                .fetch_sub(memcg + ClusterExt::record_bytes() as u64, Ordering::Relaxed);
            // SAFETY: as above.
            unsafe { free_table(&self.provider, x, 1) };
        }
    }
}
