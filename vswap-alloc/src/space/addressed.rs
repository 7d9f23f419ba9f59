//! Addressed spaces ([`Policy::addressed`]): the host chooses each slot and
//! takes it with [`SlotSpace::alloc_at`]; the space only keeps the tables.
//!
//! A swap device under the kernel's own swap allocator is the user: the
//! kernel picks the offset, the device stores the page's descriptor in the
//! slot of that number. Tables are made when a cluster's first slot is
//! taken and go back after a grace period when its last is freed, as in a
//! virtual space; no cluster is ever cached by a CPU, listed, or put on the
//! free FIFO, and [`SlotSpace::alloc`] fails with [`Error::BadConfig`].
//!
//! # Protocol
//! The lifetime word's states are those of `lifetime`, less `CACHED`,
//! `FRESH` and the lists. `alloc_at(slot)`:
//! - **Live cluster** (no lock): `try_ref(1)` adds the slot's reference
//!   while `LIVE && !DYING` (the same CAS an allocation from a CPU's cache
//!   makes), then the slot word is claimed with a CAS from 0. Our reference
//!   keeps the table from being retired while we look at it. A word that is
//!   not 0 is taken: the reference is dropped again (`unref`, which may tear
//!   the cluster down if it held the last one) and the call fails with
//!   [`Error::WrongState`]. Two calls for one slot: one CAS wins.
//! - **Otherwise**, under the list lock, where a cluster is `LIVE`,
//!   `RETIRING` or `FREE` (teardown goes from `LIVE, refs == 0` through
//!   `DYING` to `RETIRING` or `FREE` in one locked section, so `DYING` is
//!   never seen under the lock):
//!   - `LIVE`: another call made it live meanwhile; back to the first step.
//!   - `RETIRING` without optional tables: taken off the retire FIFO
//!     (wherever it is in it) and made `LIVE` again with the table it has,
//!     before its grace period ends. Its table is all zero, so a late
//!     reader of the last incarnation reads the new one's words: the same
//!     as a reader of a freed slot that is taken again in a live cluster
//!     (the argument of `reuse_retired`).
//!   - `RETIRING` with optional tables (cache or memcg: they may hold the
//!     last incarnation's values): finished at once if its grace period has
//!     ended (tables freed), then as `FREE`; otherwise [`Error::Again`]
//!     (retry after a grace period; [`SlotSpace::poll_all`]).
//!   - `FREE`: a slot table is installed (made beforehand with the lock
//!     dropped, since making it may sleep; a call that loses the race for
//!     the cluster frees its own), the reserved words are set, and the
//!     cluster becomes `LIVE` with their references only, unlisted and
//!     entered in the table index. `bump` (the walks' end) grows past it.
//!
//! Then back to the first step: the claim itself is always the lock-free
//! one.
//!
//! A free is the map's usual one (the word's CAS to 0, then
//! [`Pin::release`]); the release of a cluster's last reference tears it
//! down at once (no cache holds it). Cluster 0 and the last cluster of a
//! 2^32-slot space keep their tables once made: their reserved words hold
//! references.

use super::*;
use super::{dir::*, lifetime::*};

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
    /// Take slot `slot` of an addressed space, writing `init` (non-zero)
    /// into its word: the slot becomes allocated, with its reference, as if
    /// [`alloc`](Self::alloc) had returned it. Makes the cluster's slot
    /// table (and directory pages) first when it has none, with `ctx`.
    ///
    /// # Errors
    /// - [`Error::BadConfig`]: not an addressed space ([`Policy::addressed`]),
    ///   or `init` is 0;
    /// - [`Error::PayloadTooWide`]: `init` does not fit the word;
    /// - [`Error::OutOfRange`]: `slot` is outside the space, or one of the
    ///   reserved slots (0 and `u32::MAX`);
    /// - [`Error::WrongState`]: the slot is already allocated;
    /// - [`Error::NoMem`] / [`Error::Again`]: the provider could not make a
    ///   table (`Again`: not without sleeping, with [`Ctx::NoSleep`]);
    ///   [`Error::Again`] also while the slot's cluster, emptied less than a
    ///   grace period ago, waits with cache or memcg tables for that grace
    ///   period to end.
    ///
    /// On every error the slot and every other slot are as they were; the
    /// only other effect an error can have is memory given back: a
    /// retiring cluster whose grace period had ended may have been finished
    /// (its tables freed, as a later poll would) before a new table could
    /// not be made.
    ///
    /// ```
    /// # #[cfg(feature = "std")] {
    /// use core::sync::atomic::AtomicU64;
    /// use vswap_alloc::{Ctx, Error, Geometry, Policy, SlotSpace, StdProvider};
    /// let policy = Policy { addressed: true, ..Policy::default() };
    /// let s: SlotSpace<_, AtomicU64> =
    ///     SlotSpace::with_policy(Geometry::default(), policy, StdProvider::new(), u64::MAX, &[])
    ///         .unwrap();
    /// s.alloc_at(12345, 7, Ctx::MaySleep).unwrap();
    /// assert_eq!(s.alloc_at(12345, 7, Ctx::MaySleep), Err(Error::WrongState));
    /// assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 1), Err(Error::BadConfig));
    /// # }
    /// ```
    pub fn alloc_at(&self, slot: u32, init: u64, ctx: Ctx) -> Result<()> {
        if !self.policy.addressed || init == 0 {
            return Err(Error::BadConfig);
        }
        if W::BITS < 64 && init >> W::BITS != 0 {
            return Err(Error::PayloadTooWide);
        }
        if slot == 0 || slot == u32::MAX || u64::from(slot) >= self.slots {
            return Err(Error::OutOfRange);
        }
        let idx = slot >> self.geo.cluster_shift;
        let off = (slot & (self.geo.cluster_slots() - 1)) as usize;
        let e = self.entry_or_create(idx, ctx)?;
        // A table made with the lock dropped, for a `FREE` cluster.
        let mut spare: Option<NonNull<W>> = None;
        let result = loop {
            if e.try_ref(1, None) {
                // Our reference keeps the cluster live: its table (published
                // before it went live) stays until the reference is dropped.
                let won = self
                    .words_of(e)
                    .get(off)
                    .is_some_and(|w| w.get(Ordering::Relaxed) == 0 && w.cas(0, init).is_ok());
                if won {
                    break Ok(());
                }
                self.unref(idx, e, 1, false);
                break Err(Error::WrongState);
            }
            match self.activate(idx, e, &mut spare) {
                Ok(true) => {}
                Ok(false) => match alloc_table::<W, P>(&self.provider, self.csize(), ctx) {
                    Ok(t) => spare = Some(t),
                    Err(err) => break Err(err),
                },
                Err(err) => break Err(err),
            }
        };
        if let Some(t) = spare {
            // SAFETY: made above and never published.
            unsafe { free_table(&self.provider, t, self.csize()) };
        }
        result
    }

    /// Make cluster `idx` live for `alloc_at`, under the list lock. Returns
    /// `Ok(true)` to retry the claim, `Ok(false)` when a `FREE` cluster
    /// needs a table and `spare` has none (make one, call again).
    fn activate(&self, idx: u32, e: &DirEntry<W>, spare: &mut Option<NonNull<W>>) -> Result<bool> {
        let mut garbage = Garbage::default();
        let mut l = self.lists.lock();
        let mut s = e.state.load(Ordering::Acquire);
        if s & LIVE != 0 {
            return Ok(true);
        }
        if s & RETIRING != 0 {
            if e.ext.load(Ordering::Acquire).is_null() {
                self.fifo_remove(&mut l.retire, idx);
                self.make_live(&mut l, idx, e);
                return Ok(true);
            }
            if !self.provider.grace_done(e.cookie.load(Ordering::Relaxed)) {
                return Err(Error::Again);
            }
            self.fifo_remove(&mut l.retire, idx);
            self.finish(&mut l, idx, e, &mut garbage);
            s = e.state.load(Ordering::Acquire);
        }
        let result = if s != 0 {
            // Only FREE (0) is left for a virtual space's cluster here.
            Err(Error::WrongState)
        } else if !e.words.load(Ordering::Acquire).is_null() {
            self.make_live(&mut l, idx, e);
            Ok(true)
        } else if let Some(t) = spare.take() {
            self.install_words(e, t);
            self.make_live(&mut l, idx, e);
            Ok(true)
        } else {
            Ok(false)
        };
        drop(l);
        self.collect(garbage);
        result
    }

    /// A `FREE` or `RETIRING` cluster with a slot table (all zero but for
    /// words hostile safe code set in free slots, counted as held, as a
    /// refill does) becomes `LIVE`, unlisted, in the table index. Under the
    /// list lock.
    fn make_live(&self, l: &mut Lists, idx: u32, e: &DirEntry<W>) {
        let held = self.reserve_words(idx, e);
        e.state.store(LIVE | held, Ordering::Release);
        self.index_table(idx, e, e.words.load(Ordering::Acquire));
        self.live.fetch_add(1, Ordering::Relaxed);
        l.bump = l.bump.max(idx + 1);
    }
}
