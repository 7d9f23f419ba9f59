//! Read-side access to one live cluster's tables: a [`Pin`] is a
//! section of the host's reclamation (see "Reclamation" in `lifetime`).

use super::dir::*;
use super::*;

/// Access to one live cluster's tables: a read-side section of the host's
/// reclamation ([`Provider::read_lock`]) that keeps the tables it saw valid
/// until the pin is dropped or released, even if the cluster is torn down
/// meanwhile (its words then read 0: every slot was free). Taking and
/// dropping one costs no atomic read-modify-write.
///
/// A pin belongs to the thread that took it (a section is per thread): it
/// is neither `Send` nor `Sync`.
///
/// ```compile_fail
/// # use core::ptr::NonNull;
/// # use vswap_alloc::{Ctx, MemError, Provider, SlotSpace};
/// # struct NoMem;
/// # unsafe impl Provider for NoMem {
/// #     fn alloc_zeroed(&self, _: usize, _: usize, _: Ctx) -> Result<NonNull<u8>, MemError> {
/// #         Err(MemError::NoMem)
/// #     }
/// #     unsafe fn free(&self, _: NonNull<u8>, _: usize, _: usize) {}
/// #     fn read_lock(&self) {}
/// #     unsafe fn read_unlock(&self) {}
/// #     fn grace_start(&self) -> u64 { 0 }
/// #     fn grace_done(&self, _: u64) -> bool { false }
/// # }
/// fn on_another_thread<T: Send>(_: T) {}
/// fn f(s: &SlotSpace<NoMem>) {
///     // would end the wrong thread's section:
///     on_another_thread(s.pin(1).unwrap());
/// }
/// ```
///
/// A pin kept for long (or leaked with `mem::forget`) holds back every
/// grace period of the provider (with `StdProvider`, process-wide): freed
/// clusters' tables then stay allocated. Keep pins short, and never sleep
/// while holding one.
pub struct Pin<'a, P: Provider, W: SlotWord = AtomicU64> {
    /// A section belongs to the thread that entered it: a pin is neither
    /// `Send` nor `Sync` (dropped on another thread it would end that
    /// thread's section).
    pub(super) _thread: core::marker::PhantomData<*const ()>,
    pub(super) space: &'a SlotSpace<P, W>,
    /// The cluster's directory record.
    pub(super) entry: &'a DirEntry<W>,
    pub(super) idx: u32,
    pub(super) words: &'a [W],
}

impl<P: Provider, W: SlotWord> Pin<'_, P, W> {
    /// The cluster's index.
    pub fn cluster(&self) -> u32 {
        self.idx
    }
    /// First slot of the cluster.
    pub fn base(&self) -> u32 {
        self.idx << self.space.geo.cluster_shift
    }
    /// Note that the slot at `off` in the cluster was just freed (its word
    /// zeroed by the caller, not yet released): the next allocation from
    /// this cluster tries it before scanning (issue 14: on a nearly full
    /// device a refill's cluster has one free slot, which a scan from the
    /// cursor walked the cluster to find). A hint only.
    #[inline]
    pub(crate) fn note_free(&self, off: u32) {
        self.entry.cookie.store(u64::from(off), Ordering::Relaxed);
    }
    /// The cluster's slot words.
    ///
    /// Writing them cannot make the space free memory that is in use: a
    /// cluster's references drop only through [`release`](Self::release)
    /// (`unsafe`), and its tables go back only after a grace period. A word a caller sets to 0
    /// without `release` keeps its slot's reference (the cluster stays until
    /// the space is dropped), and a free word a caller sets non-zero was
    /// never handed out: it has no reference, blocks that slot, and must not
    /// be counted in a `release`. A fixed space's words are reached only
    /// through its owner ([`PhysDevice`](crate::PhysDevice) gives no pins
    /// out).
    pub fn words(&self) -> &[W] {
        self.words
    }
    /// The cache word table, if made.
    pub fn cache_table(&self) -> Option<&[AtomicU64]> {
        self.ext().and_then(|e| e.cache(self.words.len()))
    }
    /// The cache word table, made on first use (with [`Ctx::MaySleep`], the
    /// table is made outside the read-side section: see "Reclamation" in the
    /// `lifetime` module).
    pub fn cache_table_or_create(&self, ctx: Ctx) -> Result<&[AtomicU64]> {
        if let Some(t) = self.cache_table() {
            return Ok(t);
        }
        self.outside(ctx, || {
            let e = self.ext_or_create(ctx)?;
            let (t, added) = e.cache_or_create(&self.space.provider, self.words.len(), ctx)?;
            self.space
                .mem_cache
                .fetch_add(added as u64, Ordering::Relaxed);
            Ok(t)
        })?
    }
    /// The memcg id of slot `off` of this cluster, if set.
    pub fn memcg(&self, off: usize) -> Option<u16> {
        self.ext().and_then(|e| e.memcg_get(off, self.words.len()))
    }
    /// Set the memcg id of slot `off`.
    pub fn set_memcg(&self, off: usize, id: u16, ctx: Ctx) -> Result<()> {
        if off >= self.words.len() {
            return Err(Error::OutOfRange);
        }
        // Without sleeping first: setting an id that needs no new table is
        // the common case (a uniform cluster).
        let nosleep = self.ext_or_create(Ctx::NoSleep).and_then(|e| {
            e.memcg_set(
                &self.space.provider,
                off,
                self.words.len(),
                id,
                Ctx::NoSleep,
            )
        });
        let added = match nosleep {
            Err(Error::Again | Error::NoMem) if ctx == Ctx::MaySleep => {
                self.outside(ctx, || {
                    let e = self.ext_or_create(ctx)?;
                    e.memcg_set(&self.space.provider, off, self.words.len(), id, ctx)
                })??
            }
            r => r?,
        };
        self.space
            .mem_memcg
            .fetch_add(added as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Run `f`, which may allocate with `ctx`, outside the read-side section
    /// when `ctx` is [`Ctx::MaySleep`] (nothing may sleep inside a section: a
    /// kernel's `rcu_read_lock` forbids it); with [`Ctx::NoSleep`], `f` runs
    /// inside. Meanwhile the pin holds a reference on the cluster, so it is
    /// not torn down and every table this pin has shown stays valid (safe to
    /// use from `f`), also after the section is entered again: the
    /// reference is dropped inside the new section. Two locked RMWs (the
    /// reference taken and dropped), only with `MaySleep`.
    ///
    /// # Errors
    /// [`Error::NotAllocated`] (and `f` is not called) if the cluster is no
    /// longer live (its last slot was freed since the pin was taken), or
    /// [`Error::Again`] if it holds so many references that one more would
    /// not fit.
    ///
    /// The pin leaves only its own section: a caller that is inside another
    /// one (nested pins, or its own `read_lock`) must pass
    /// [`Ctx::NoSleep`].
    pub fn outside<T>(&self, ctx: Ctx, f: impl FnOnce() -> T) -> Result<T> {
        if ctx != Ctx::MaySleep {
            return Ok(f());
        }
        // Inside the section the table this pin shows cannot have been
        // replaced (a cluster gets a new table only after a grace period
        // that waits for this section), so a reference taken now holds the
        // incarnation whose table the pin shows (a reuse before the grace
        // period keeps the same table).
        if !self.entry.try_ref(1, None) {
            let s = self.entry.state.load(Ordering::Acquire);
            return Err(if s & (LIVE | DYING) == LIVE {
                Error::Again
            } else {
                Error::NotAllocated
            });
        }
        // SAFETY: pairs with this pin's own `read_lock`, taken again below
        // before the pin is used or dropped.
        unsafe { self.space.provider.read_unlock() };
        let r = f();
        self.space.provider.read_lock();
        // Inside the new section: a teardown this unref causes retires the
        // tables with a grace period that waits for this pin.
        self.space.unref(self.idx, self.entry, 1, false);
        Ok(r)
    }

    pub(super) fn ext(&self) -> Option<&ClusterExt> {
        let p = self.entry.ext.load(Ordering::Acquire);
        // SAFETY: a published record is freed only after a grace period that
        // began after it was unpublished, and this pin is a read-side section
        // that began before (or `outside` holds every retirement back).
        (!p.is_null()).then(|| unsafe { &*p })
    }

    pub(super) fn ext_or_create(&self, ctx: Ctx) -> Result<&ClusterExt> {
        if let Some(e) = self.ext() {
            return Ok(e);
        }
        let rec = alloc_table::<ClusterExt, P>(&self.space.provider, 1, ctx)?;
        match self.entry.ext.compare_exchange(
            ptr::null_mut(),
            rec.as_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.space
                    .mem_memcg
                    .fetch_add(ClusterExt::record_bytes() as u64, Ordering::Relaxed);
            }
            // SAFETY: lost the race; our record was never published.
            Err(_) => unsafe { free_table(&self.space.provider, rec, 1) },
        }
        self.ext().ok_or(Error::NoMem)
    }

    /// Drop the pin together with the references of `freed` slots of this
    /// cluster whose words the caller has set back to 0 (one atomic RMW on
    /// the cluster's lifetime word when `freed > 0`, none otherwise).
    ///
    /// A pin on its own is dropped with `drop` (safe): it only leaves its
    /// read-side section.
    ///
    /// ```compile_fail
    /// # use core::ptr::NonNull;
    /// # use vswap_alloc::{Ctx, Geometry, MemError, Provider, SlotSpace};
    /// # struct NoMem;
    /// # unsafe impl Provider for NoMem {
    /// #     fn alloc_zeroed(&self, _: usize, _: usize, _: Ctx) -> Result<NonNull<u8>, MemError> {
    /// #         Err(MemError::NoMem)
    /// #     }
    /// #     unsafe fn free(&self, _: NonNull<u8>, _: usize, _: usize) {}
    /// #     fn read_lock(&self) {}
    /// #     unsafe fn read_unlock(&self) {}
    /// #     fn grace_start(&self) -> u64 { 0 }
    /// #     fn grace_done(&self, _: u64) -> bool { false }
    /// # }
    /// # fn f(s: &SlotSpace<NoMem>) {
    /// let a = s.alloc(0, 0, Ctx::MaySleep, 1).unwrap();
    /// let other = s.pin(a).unwrap(); // reads the table below
    /// // Dropping more references than this pin's own share is not safe code
    /// // (it would let the cluster's table be freed under `other`):
    /// s.pin(a).unwrap().release(2);
    /// let _ = other.words();
    /// # }
    /// ```
    ///
    /// # Safety
    /// `freed` counts slots of this cluster that the space handed out
    /// ([`SlotSpace::alloc`], [`SlotSpace::alloc_with`]) and whose words the
    /// caller itself has turned from non-zero to 0 since, each such
    /// transition counted in exactly one `release` (so a slot whose word
    /// somebody else zeroed, or a word the caller set non-zero itself, is not
    /// counted). Counting more drops the cluster's references below what
    /// allocated slots hold: the cluster would be torn down (and its tables
    /// freed after a grace period) while slots in it are still allocated,
    /// and its reference count would underflow into its state bits.
    #[inline]
    pub unsafe fn release(self, freed: u32) {
        let this = ManuallyDrop::new(self);
        // Leave the section first: the unref may tear the cluster down and
        // poll the grace period, which cannot end while this thread is
        // inside. The unref touches only the directory record (never freed).
        // SAFETY: pairs with this pin's `read_lock`.
        unsafe { this.space.provider.read_unlock() };
        if freed > 0 {
            this.space
                .unref(this.idx, this.entry, u64::from(freed), true);
        }
    }
}

impl<P: Provider, W: SlotWord> Drop for Pin<'_, P, W> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: pairs with this pin's `read_lock` (`pin_cluster`).
        unsafe { self.space.provider.read_unlock() };
    }
}

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
    /// Pin the cluster that holds `slot`.
    ///
    /// Fails with [`Error::OutOfRange`] for a slot outside the space and
    /// [`Error::NotAllocated`] when the cluster is not live.
    #[inline(always)]
    pub fn pin(&self, slot: u32) -> Result<Pin<'_, P, W>> {
        if u64::from(slot) >= self.slots {
            return Err(Error::OutOfRange);
        }
        let idx = slot >> self.geo.cluster_shift;
        self.pin_cluster(idx).ok_or(Error::NotAllocated)
    }

    // Always inlined: returned through memory, the `Pin` costs two
    // store-forwarding stalls per lookup (measured: 15 ns against 9).
    #[inline(always)]
    pub(super) fn pin_cluster(&self, idx: u32) -> Option<Pin<'_, P, W>> {
        let (entry, p) = match self.indexed(idx) {
            Indexed::At(t) => {
                self.provider.read_lock();
                // Inside the section: non-null means live when loaded, and
                // the table is freed only after a grace period that starts
                // after it was cleared (see "The table index" in `dir`).
                let p = t.words.load(Ordering::Acquire);
                // Written before the table, with release; never cleared.
                (t.rec.load(Ordering::Relaxed), p)
            }
            Indexed::NoLeaf => return None,
            Indexed::Beyond => {
                let entry = self.entry(idx)?;
                self.provider.read_lock();
                // Inside the section: a table seen here is freed only after
                // a grace period that starts after this thread leaves (see
                // "Reclamation" in `lifetime`).
                let s = entry.state.load(Ordering::Acquire);
                let p = entry.words.load(Ordering::Acquire);
                let p = if s & (LIVE | DYING) == LIVE {
                    p
                } else {
                    ptr::null_mut()
                };
                (ptr::from_ref(entry).cast_mut(), p)
            }
        };
        if p.is_null() || entry.is_null() {
            // SAFETY: pairs with the `read_lock` above.
            unsafe { self.provider.read_unlock() };
            return None;
        }
        // SAFETY: a published table holds `csize` words and is freed only
        // after a grace period that began after it was unpublished; this
        // section began before that (it saw the cluster live), so the table
        // outlives the pin.
        let words = unsafe { core::slice::from_raw_parts(p.cast_const(), self.csize()) };
        Some(Pin {
            _thread: core::marker::PhantomData,
            space: self,
            // SAFETY: records are never freed while the space lives.
            entry: unsafe { &*entry },
            idx,
            words,
        })
    }
}

/// A read-side section held across many operations ([`SlotSpace::guard`]):
/// while it lives, every [`Pin`] this thread takes nests inside it, so the
/// host's section is entered and left once for the whole batch (with the
/// userspace default, a nested pin is a thread-local counter, not the
/// epoch's stores). Belongs to the thread that took it (neither `Send` nor
/// `Sync`).
///
/// Nothing may sleep while it is held: pass [`Ctx::NoSleep`] to every call
/// made under it (a [`Pin`] that allocates with [`Ctx::MaySleep`] leaves
/// only its own section, not this one), and keep it short: it holds back
/// the grace periods that free torn-down clusters' tables (with
/// `StdProvider`, process-wide).
///
/// ```compile_fail
/// # use core::ptr::NonNull;
/// # use vswap_alloc::{Ctx, MemError, Provider, SlotSpace};
/// # struct NoMem;
/// # unsafe impl Provider for NoMem {
/// #     fn alloc_zeroed(&self, _: usize, _: usize, _: Ctx) -> Result<NonNull<u8>, MemError> {
/// #         Err(MemError::NoMem)
/// #     }
/// #     unsafe fn free(&self, _: NonNull<u8>, _: usize, _: usize) {}
/// #     fn read_lock(&self) {}
/// #     unsafe fn read_unlock(&self) {}
/// #     fn grace_start(&self) -> u64 { 0 }
/// #     fn grace_done(&self, _: u64) -> bool { false }
/// # }
/// fn on_another_thread<T: Send>(_: T) {}
/// fn f(s: &SlotSpace<NoMem>) {
///     // would end the wrong thread's section:
///     // SAFETY: (no call is made under the guard)
///     on_another_thread(unsafe { s.guard() });
/// }
/// ```
#[must_use = "the section ends when the guard is dropped"]
pub struct Section<'a, P: Provider> {
    _thread: core::marker::PhantomData<*const ()>,
    provider: &'a P,
}

impl<P: Provider> Drop for Section<'_, P> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: pairs with the `read_lock` of `SlotSpace::guard`, on this
        // thread (a `Section` cannot move to another one).
        unsafe { self.provider.read_unlock() };
    }
}

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
    /// Enter a read-side section that spans many operations (see
    /// [`Section`]). Costs one section; pins taken under it cost the nesting
    /// only.
    ///
    /// # Safety
    /// Until the [`Section`] is dropped, this thread passes
    /// [`Ctx::NoSleep`] to every call it makes on any space or map that
    /// shares this provider. A call given [`Ctx::MaySleep`] leaves only its
    /// own section to allocate, not this one, and would sleep inside it:
    /// with a host whose grace periods end when a reader sleeps (a kernel's
    /// non-preemptible RCU) torn-down tables could then be freed while pins
    /// taken under the guard still use them. (Found by review: as a safe
    /// function this was a use-after-free reachable from safe code in
    /// kernel mode.)
    #[inline]
    pub unsafe fn guard(&self) -> Section<'_, P> {
        self.provider.read_lock();
        Section {
            _thread: core::marker::PhantomData,
            provider: &self.provider,
        }
    }
}
