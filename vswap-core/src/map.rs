//! The virtual swap map: slot lifecycle over the lock-free slot space.
//!
//! # Protocol
//! Every slot is one core word (see [`crate::word`]); every state change of an
//! order-0 slot is one CAS on that word, made while the slot's cluster is pinned
//! (a CAS on the cluster's lifetime word, see `vswap_alloc::SlotSpace`).
//!
//! ```text
//!              alloc                      dup / put (count > 0 or CACHED)
//!   FREE (0) ---------> LIVE (count 0, CACHED) <-------------------------+
//!      ^                  |  lock                                        |
//!      |                  v                                              |
//!      |               LOCKED ---- commit_unlock / unlock ---------------+
//!      |                  |  last count or CACHED dropped while locked
//!      |                  v
//!      |               ZOMBIE (count 0, !CACHED, LOCKED) -- unlock/commit --+
//!      |                                                                    |
//!      +---- store 0 <--- FREEING (owned by the freer) <--- last reference -+
//!                 (reads backend, memcg id;   dropped, neither locked nor held
//!                  clears the cache word;
//!                  detaches SIDE, side.rs)
//!
//!   LIVE, !CACHED --cache_store--> HELD (HOLD) --store, drop HOLD--> LIVE
//!                                   |  last count dropped while held
//!                                   v
//!                  dead, HOLD (count 0, !CACHED) --drop HOLD--> FREEING
//! ```
//! The backend a slot held is released through the [`Host`] after the word is
//! 0 (so after any lock bit is dropped), never under an internal lock. What a
//! free reports to [`Host::slot_freed`] (backend, memcg id) is read while the
//! freer owns the slot (FREEING): once the word is 0 the slot may be
//! allocated again and given another id. The cache word's lifecycle is the
//! slot's: it is cleared in FREEING, and written only while the slot is known
//! to stay the same live slot (cached, by the owner of its cache state; or
//! held by `cache_store`'s `HOLD`). Moves that
//! release an old location (writeback, relocation) are done by the lock holder
//! with [`VswapMap::commit_unlock`], which commits and unlocks in one CAS; a
//! move that finds its slot dead (a zombie) loses gracefully with
//! [`Error::Gone`].
//!
//! # Range operations (mTHP)
//! A naturally aligned range of `2^order` slots (order at most the cluster's)
//! lies in one cluster. [`put_range`](VswapMap::put_range),
//! [`cache_clear_range`](VswapMap::cache_clear_range),
//! [`lock_range`](VswapMap::lock_range), [`unlock_range`](VswapMap::unlock_range)
//! and [`swapin_range_check`](VswapMap::swapin_range_check) pin the cluster
//! once (one read-side section, no RMW), check every slot with plain loads,
//! then commit with one CAS per slot (the check decides all or nothing: a
//! failure there changes nothing; `lock_range` instead locks slot by slot and
//! undoes its own locks), and give the pin back once, together with the
//! references of the slots they freed (one `fetch_sub` when any was): at most
//! `2^order + 1` locked RMWs, where per-slot calls cost one or two per slot
//! and a section each.
//! What the caller owns over the range (its references, its cache state, its
//! locks) cannot change between the check and the commit; other threads'
//! counts and locks may, and each slot's CAS then acts as the per-slot call
//! would. Freed backends are released in coalesced runs, before the pin is
//! given back.
//!
//! # What cannot be detected
//! Page tables carry no generation: a stale put (or cache change) on a slot
//! that was freed and handed to a new owner acts on the new owner's slot.
//! Two threads changing the swap cache state of one slot at once must be
//! serialised by the host (the kernel's folio lock does this); the cache word is
//! written without ordering against other writers of the same slot.

use vswap_alloc::{Ctx, Error, Geometry, Pin, Provider, Result, SlotSpace, SpaceMemory};

use crate::host::{Host, Releaser};
use crate::side::{Garbage, Side, SideTable, Spares};
use crate::word::*;

/// Configuration of a [`VswapMap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapConfig {
    /// Shape of the virtual slot space.
    pub geometry: Geometry,
    /// The host chooses the slots: they are taken with
    /// [`VswapMap::alloc_at`] (or [`Engine::alloc_at`](crate::Engine::alloc_at)),
    /// and [`VswapMap::alloc`] fails with [`Error::BadConfig`]. For a swap
    /// device whose offsets the kernel's own swap allocator chooses: the
    /// slot is the device offset. Tables are still made on demand and go
    /// back when a cluster's last slot is freed (see
    /// [`Policy::addressed`](vswap_alloc::Policy::addressed)).
    pub addressed: bool,
}

/// Largest swap count (inline or in the side table).
pub const MAX_COUNT: u32 = u32::MAX;

/// What a reference drop did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// The slot is still live.
    Live,
    /// The slot was freed and its backend released.
    Freed,
}

/// A batch that stopped early: `done` slots were processed before `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchError {
    /// Slots processed (from the start of the batch) before the failure.
    pub done: u32,
    /// Why the next slot failed; it and every later slot are untouched.
    pub error: Error,
}

/// The cache word and flag of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheState {
    /// A folio is in the swap cache.
    pub cached: bool,
    /// The folio cookie while cached, else a workingset shadow (0: none).
    pub word: u64,
}

/// What an mTHP swap-in may do with a naturally aligned range
/// ([`VswapMap::swapin_range_check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapinCheck {
    /// Every slot is zero-filled (`Backend::Zero`, or `Backend::Same(0)`):
    /// map one zeroed large folio, no I/O.
    Zero,
    /// Every slot is on device `dev`, slot `start + i` at `off + i`: one
    /// read of the whole folio.
    Contiguous {
        /// Device.
        dev: u8,
        /// Device offset of the range's first slot.
        off: u64,
    },
    /// A slot is in the swap cache or locked (a folio, swap-in or move is
    /// under way): use the swap cache, or swap in page by page.
    InCache,
    /// The backends are not uniform (zero and non-zero mixed, zswap,
    /// same-filled, none, or device slots out of sequence): swap in page by
    /// page.
    Mixed,
}

/// Occupancy and memory of a map, derived by scanning (never counted on the
/// hot path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapStats {
    /// Allocated slots (live and zombie).
    pub live_slots: u64,
    /// Live slots by backend kind: none, zero, same, zswap, phys.
    pub by_kind: [u64; 5],
    /// Slots with the cache flag.
    pub cached: u64,
    /// Slots with the lock bit.
    pub locked: u64,
    /// Slots whose count is in the side table.
    pub overflowed: u64,
    /// Memory of the slot space, by kind.
    pub memory: SpaceMemory,
    /// Bytes of the side table: overflowed counts and same-filled values
    /// kept outside the core word.
    pub side_bytes: u64,
}

impl MapStats {
    /// All metadata bytes.
    pub fn total_bytes(&self) -> u64 {
        self.memory.total() + self.side_bytes
    }
}

/// The virtual swap map.
///
/// ```
/// use vswap_core::{Backend, Ctx, MapConfig, NoHost, Put, StdProvider, VswapMap};
/// let map = VswapMap::new(MapConfig::default(), StdProvider::new(), NoHost).unwrap();
/// let s = map.alloc(0, 0, Ctx::MaySleep).unwrap();      // count 0, cached
/// map.dup(s, 1, Ctx::MaySleep).unwrap();                // one page-table reference
/// map.store(s, Backend::None, Backend::Zero).unwrap();  // written out: all zeroes
/// assert_eq!(map.cache_clear(s, 0, Ctx::MaySleep).unwrap(), Put::Live);
/// assert_eq!(map.lookup(s).unwrap().backend, Backend::Zero);
/// assert_eq!(map.put(s, 1).unwrap(), Put::Freed);       // last reference: freed
/// ```
pub struct VswapMap<P: Provider, H: Host> {
    space: SlotSpace<P>,
    host: H,
    side: SideTable,
}

impl<P: Provider, H: Host> VswapMap<P, H> {
    /// A new, empty map.
    pub fn new(cfg: MapConfig, provider: P, host: H) -> Result<Self> {
        Ok(Self {
            space: Self::space(cfg, provider)?,
            host,
            side: SideTable::new(cfg.geometry.cluster_slots() as usize),
        })
    }

    /// Build a new, empty map in `place` (for [`Engine::new_in`]): the map
    /// is written field by field, never whole through the stack; `host` is
    /// written last, in place, by `init_host`. On `Err` nothing was written
    /// and `init_host` was not called.
    ///
    /// # Safety
    /// `place` is valid for writes of a `Self` and aligned; `init_host`
    /// initialises the `H` it is given.
    ///
    /// [`Engine::new_in`]: crate::Engine::new_in
    pub(crate) unsafe fn init_in(
        place: *mut Self,
        cfg: MapConfig,
        provider: P,
        init_host: impl FnOnce(*mut H),
    ) -> Result<()> {
        let space = Self::space(cfg, provider)?;
        // SAFETY: `place` is valid for writes (contract); each field is
        // written once through a raw pointer, without reading the rest.
        unsafe {
            core::ptr::addr_of_mut!((*place).space).write(space);
            core::ptr::addr_of_mut!((*place).side)
                .write(SideTable::new(cfg.geometry.cluster_slots() as usize));
            init_host(core::ptr::addr_of_mut!((*place).host));
        }
        Ok(())
    }

    /// The slot space of a virtual map (addressed or not).
    fn space(cfg: MapConfig, provider: P) -> Result<SlotSpace<P>> {
        let policy = vswap_alloc::Policy {
            addressed: cfg.addressed,
            ..vswap_alloc::Policy::default()
        };
        SlotSpace::with_policy(cfg.geometry, policy, provider, RESERVED, &[])
    }

    /// A *direct-mode* device: the map's slots are the slots of a physical
    /// device of `cfg.geometry.slots` pages, each carrying a core word of its
    /// own, the location being the slot itself (the kernel's model without a
    /// virtual layer). All tables are made now; bad slots are never handed out;
    /// emptied clusters may wait for the host's discard. The backend field
    /// still tells zero, same-filled or zswap pages apart; `Phys` is
    /// meaningless here (the slot is its own location).
    pub fn direct(
        cfg: MapConfig,
        discard: bool,
        rotational: bool,
        bad: &[u64],
        provider: P,
        host: H,
    ) -> Result<Self> {
        let policy = vswap_alloc::Policy {
            fixed: true,
            discard,
            rotational,
            addressed: false,
        };
        Ok(Self {
            space: SlotSpace::with_policy(cfg.geometry, policy, provider, RESERVED, bad)?,
            host,
            side: SideTable::new(cfg.geometry.cluster_slots() as usize),
        })
    }

    /// Is this a direct-mode device map?
    pub fn is_direct(&self) -> bool {
        self.space.policy().fixed
    }

    /// (Direct mode, discard) the next emptied cluster to discard.
    pub fn take_discard(&self) -> Option<u32> {
        self.space.take_discard()
    }

    /// (Direct mode, discard) the host finished discarding cluster `c`.
    pub fn discard_done(&self, c: u32) -> Result<()> {
        self.space.discard_done(c)
    }

    /// Enter one read-side section of the provider's reclamation for a
    /// batch of calls on this thread: every map call made while the
    /// [`Section`](crate::Section) lives nests inside it, so the
    /// section's cost is paid once (with `StdProvider`,
    /// each nested call then pays a thread-local counter instead of the
    /// epoch's stores; in a kernel, `rcu_read_lock` nests anyway).
    ///
    /// Keep it short: while it lives, torn-down clusters' tables are not
    /// freed.
    ///
    /// # Safety
    /// Until the [`Section`](crate::Section) is dropped, this thread passes
    /// [`Ctx::NoSleep`] to every call it makes on this map (and on anything
    /// else sharing its provider). A call given [`Ctx::MaySleep`] leaves only
    /// its own section to allocate, not the guard's, and would sleep inside
    /// it: with a host whose grace periods end when a reader sleeps (a
    /// kernel's non-preemptible RCU) torn-down tables could be freed while
    /// pins under the guard still use them.
    ///
    /// ```
    /// # #[cfg(feature = "std")] {
    /// use vswap_core::{Ctx, MapConfig, NoHost, StdProvider, VswapMap};
    /// let map = VswapMap::new(MapConfig::default(), StdProvider::new(), NoHost).unwrap();
    /// let slots: Vec<u32> = (0..8).map(|_| map.alloc(0, 0, Ctx::NoSleep).unwrap()).collect();
    /// {
    ///     // SAFETY: every call under the guard is NoSleep (lookups take no ctx).
    ///     let _g = unsafe { map.guard() };
    ///     for &s in &slots {
    ///         assert_eq!(map.lookup(s).unwrap().count, 0);
    ///     }
    /// }
    /// # }
    /// ```
    #[inline]
    pub unsafe fn guard(&self) -> crate::Section<'_, P> {
        // SAFETY: the caller's contract is this function's.
        unsafe { self.space.guard() }
    }

    /// Give back the tables of torn-down clusters whose grace period (the
    /// provider's [`grace_done`](Provider::grace_done)) has ended; returns
    /// how many clusters. The map does this by itself whenever it tears a
    /// cluster down or needs a new one, so a host calls it only to bring
    /// memory down at once, after frees, before reading
    /// [`stats`](Self::stats) (`memory.retiring_clusters` says how many still
    /// wait). Never sleeps. A map that goes idle after frees keeps the
    /// retired tables until its next teardown or refill: a host that wants
    /// that memory back calls this now and then (a kernel: from a timer or
    /// a shrinker).
    pub fn reclaim(&self) -> u32 {
        self.space.poll_all()
    }

    /// Buckets the side table's lookups have looked at so far (for the O(1)
    /// regression test).
    #[cfg(test)]
    pub(crate) fn side_probes(&self) -> u64 {
        self.side.lock().probes
    }

    /// The host callbacks.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The memory provider.
    pub fn provider(&self) -> &P {
        self.space.provider()
    }

    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        self.space.geometry()
    }

    #[inline(always)]
    fn pin(&self, slot: u32) -> Result<(Pin<'_, P>, usize)> {
        if slot == 0 {
            return Err(Error::OutOfRange);
        }
        let pin = self.space.pin(slot)?;
        let off = (slot - pin.base()) as usize;
        Ok((pin, off))
    }

    /// Check a range `start..start + 2^order`: `BadOrder` for an order above
    /// the cluster's, `Misaligned` for a start not aligned to `2^order`,
    /// `OutOfRange` for a range that contains slot 0 or does not lie wholly
    /// inside the space (the code every per-slot call gives for such a slot).
    fn range(&self, start: u32, order: u32) -> Result<u32> {
        if order > self.geometry().cluster_shift {
            return Err(Error::BadOrder);
        }
        let n = 1u32 << order;
        if start % n != 0 {
            return Err(Error::Misaligned);
        }
        // The space's own size: a direct map (a device) ends exactly at its
        // configured size, not at the end of its last cluster.
        if start == 0 || u64::from(start) + u64::from(n) > self.space.slots() {
            return Err(Error::OutOfRange);
        }
        Ok(n)
    }

    /// Check a range as [`range`](Self::range) does, and pin its cluster
    /// once: the pin, the offset of `start` in the cluster, and the range's
    /// length. `range` bounds the order by the cluster's and aligns `start`
    /// to the range's size, so a range never spans two clusters; a cluster
    /// that is not live is `NotAllocated`, as for every per-slot call.
    fn pin_range(&self, start: u32, order: u32) -> Result<(Pin<'_, P>, usize, usize)> {
        let n = self.range(start, order)? as usize;
        let (pin, base) = self.pin(start)?;
        if base + n > pin.words().len() {
            return Err(Error::OutOfRange);
        }
        Ok((pin, base, n))
    }

    /// Allocate `2^order` naturally aligned slots on `cpu`. Each has no backend,
    /// count 0, and the cache flag set (the folio is in the swap cache); the
    /// caller adds one count per page-table reference with [`dup`](Self::dup).
    /// An addressed map ([`MapConfig::addressed`]) fails with
    /// [`Error::BadConfig`]: its host takes slots with
    /// [`alloc_at`](Self::alloc_at).
    #[inline]
    pub fn alloc(&self, order: u32, cpu: u32, ctx: Ctx) -> Result<u32> {
        self.space.alloc(order, cpu, ctx, INIT)
    }

    /// (Addressed maps, [`MapConfig::addressed`]) take slot `slot`: as
    /// [`alloc`](Self::alloc) had returned it, with no backend, count 0 and
    /// the cache flag set. The cluster's tables are made first if it has
    /// none, with `ctx`.
    ///
    /// # Errors
    /// Nothing changed on any of them:
    /// - [`Error::BadConfig`]: the map is not addressed;
    /// - [`Error::OutOfRange`]: slot 0 (a zero swap entry means "none"),
    ///   `u32::MAX`, or a slot outside the map;
    /// - [`Error::WrongState`]: the slot is allocated already;
    /// - [`Error::NoMem`], [`Error::Again`] (not without sleeping, with
    ///   [`Ctx::NoSleep`]; or the slot's cluster, emptied less than a grace
    ///   period ago, waits with its cache or memcg tables for that grace
    ///   period: retry later).
    ///
    /// ```
    /// use vswap_core::{Backend, Ctx, Error, MapConfig, NoHost, Put, StdProvider, VswapMap};
    /// let cfg = MapConfig { addressed: true, ..MapConfig::default() };
    /// let map = VswapMap::new(cfg, StdProvider::new(), NoHost).unwrap();
    /// map.alloc_at(4242, Ctx::MaySleep).unwrap();         // the host chose 4242
    /// assert_eq!(map.alloc_at(4242, Ctx::MaySleep), Err(Error::WrongState));
    /// map.dup(4242, 1, Ctx::MaySleep).unwrap();
    /// map.store(4242, Backend::None, Backend::Zero).unwrap();
    /// assert_eq!(map.cache_clear(4242, 0, Ctx::MaySleep).unwrap(), Put::Live);
    /// assert_eq!(map.put(4242, 1).unwrap(), Put::Freed);
    /// assert_eq!(map.alloc(0, 0, Ctx::MaySleep), Err(Error::BadConfig));
    /// ```
    pub fn alloc_at(&self, slot: u32, ctx: Ctx) -> Result<()> {
        self.space.alloc_at(slot, INIT, ctx)
    }

    /// Is this an addressed map ([`MapConfig::addressed`])?
    pub fn is_addressed(&self) -> bool {
        self.space.policy().addressed
    }

    /// Add `n` swap counts to a live slot.
    #[inline]
    pub fn dup(&self, slot: u32, n: u32, ctx: Ctx) -> Result<()> {
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        let mut w = word.load(Ordering::Acquire);
        loop {
            if !is_live(w) {
                return Err(Error::NotAllocated);
            }
            let f = count_field(w);
            if f == COUNT_CONT || f + u64::from(n) > u64::from(INLINE_COUNT_MAX) {
                break;
            }
            match word.compare_exchange_weak(
                w,
                with_count(w, f + u64::from(n)),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(x) => w = x,
            }
        }
        self.count_slow(&pin, off, slot, i64::from(n), ctx, false)
            .map(|_| ())
    }

    /// Take one count on `slot` if it is still live (a lookup racing a free
    /// either gets a reference or `NotAllocated`), and return its state.
    pub fn try_get(&self, slot: u32, ctx: Ctx) -> Result<Entry> {
        self.dup(slot, 1, ctx)?;
        self.lookup(slot)
    }

    /// Drop `n` swap counts. When the count reaches 0 and no folio is cached,
    /// the slot is freed and its backend released (deferred to the unlock if
    /// the slot is locked, and to the end of a racing
    /// [`cache_store`](Self::cache_store) that holds it: then `Live`).
    #[inline]
    pub fn put(&self, slot: u32, n: u32) -> Result<Put> {
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        let mut w = word.load(Ordering::Acquire);
        loop {
            if !is_live(w) {
                return Err(Error::NotAllocated);
            }
            let f = count_field(w);
            if f == COUNT_CONT {
                break;
            }
            if f < u64::from(n) {
                return Err(Error::CountUnderflow);
            }
            match self.settle(&pin, off, word, w, with_count(w, f - u64::from(n))) {
                Ok(freed) => return Ok(self.finish(pin, off, freed)),
                Err(x) => w = x,
            }
        }
        self.count_slow(&pin, off, slot, -i64::from(n), Ctx::NoSleep, false)
            .map(|freed| self.finish(pin, off, freed))
    }

    /// Release what a settle freed, then the pin.
    #[inline]
    fn finish(&self, pin: Pin<'_, P>, off: usize, freed: Option<Freed>) -> Put {
        match freed {
            Some(f) => {
                Releaser::new(&self.host).release(pin.base() + off as u32, f.backend);
                self.notify_freed(&pin, off, f);
                // SAFETY: `settle` took this allocated slot's word from a
                // live value to FREEING and then 0, once (its CAS wins once).
                unsafe { pin.release(1) };
                Put::Freed
            }
            None => Put::Live,
        }
    }

    /// Tell a host that asked ([`Host::WANTS_FREED`]) that slot `off` of the
    /// pinned cluster was freed, with the backend and memcg id [`settle`]
    /// read while the freer still owned the slot (by now the slot may have
    /// been handed to a new owner with another id).
    ///
    /// [`settle`]: Self::settle
    #[inline]
    fn notify_freed(&self, pin: &Pin<'_, P>, off: usize, f: Freed) {
        if H::WANTS_FREED {
            self.host
                .slot_freed(pin.base() + off as u32, f.backend, f.memcg);
        }
    }

    /// Count changes that involve the side table, under its lock. `unlock`
    /// also clears the lock bit in the same CAS.
    fn count_slow(
        &self,
        pin: &Pin<'_, P>,
        off: usize,
        slot: u32,
        delta: i64,
        ctx: Ctx,
        unlock: bool,
    ) -> Result<Option<Freed>> {
        let _ = slot;
        let word = word(pin, off)?;
        let c = pin.cluster();
        let provider = self.space.provider();
        let mut spares = Spares::default();
        let mut garbage = Garbage::default();
        let result = loop {
            let mut side = self.side.lock();
            let w = word.load(Ordering::Acquire);
            if !is_live(w) || (unlock && w & LOCKED == 0) {
                break Err(if unlock && is_live(w) {
                    Error::NotLocked
                } else {
                    Error::NotAllocated
                });
            }
            let f = count_field(w);
            let cur = if f == COUNT_CONT {
                i64::from(side.get(c, off).unwrap_or(0))
            } else {
                f as i64
            };
            let new = cur + delta;
            if new < 0 {
                break Err(Error::CountUnderflow);
            }
            if new > i64::from(MAX_COUNT) {
                break Err(Error::CountOverflow);
            }
            let clear = if unlock { LOCKED } else { 0 };
            if new > i64::from(INLINE_COUNT_MAX) {
                // A slot not yet attached attaches now: make what that needs
                // without the lock, then try again.
                if w & SIDE == 0 {
                    if let Some(need) = side.needs(c, &spares, false) {
                        drop(side);
                        // Allocating may sleep: outside the pin's section.
                        let made = pin
                            .outside(ctx, || self.side.make(provider, need, ctx, &mut spares))
                            .and_then(|r| r);
                        match made {
                            Ok(()) => continue,
                            Err(e) => break Err(e),
                        }
                    }
                }
                let next = (with_count(w, COUNT_CONT) | SIDE) & !clear;
                if next != w
                    && word
                        .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                {
                    continue;
                }
                // Readers of the block's count hold the lock: the count is
                // written before anyone can read it.
                if w & SIDE == 0 {
                    side.attach(c, off, new as u32, &mut spares, &mut garbage);
                } else {
                    side.set(c, off, new as u32);
                }
                break Ok(None);
            }
            // The new count fits inline (an attached slot stays attached: its
            // block count is ignored while the field is inline).
            let next = with_count(w, new as u64) & !clear;
            match self.settle_in(pin, off, word, w, next, Some(&mut side), &mut garbage) {
                Ok(freed) => break Ok(freed),
                Err(_) => continue,
            }
        };
        self.side.free_spares(provider, spares);
        self.side.free_garbage(provider, garbage);
        result
    }

    /// Put one count of every slot of the naturally aligned range
    /// `start..start + 2^order` (one page-table reference of each page of a
    /// large folio), all or nothing: the range is checked first, and if any
    /// slot is not live (`NotAllocated`), locked (`Busy`), or has count 0
    /// (`CountUnderflow`), nothing changes (the first failing slot in that
    /// order of checks decides the error: every slot's liveness and lock,
    /// then every slot's count). Returns how many slots were freed; their
    /// backends are released in coalesced runs.
    ///
    /// A lock taken by another thread after the check does not stop the put:
    /// a count dropped under someone's lock is an ordinary `put`, and a slot
    /// that dies under it is freed by its unlock. A slot that racing puts
    /// took to count 0 or freed after the check (possible only if the callers
    /// together put more references than the slot had) is skipped, the
    /// others are put, and the call then returns `CountUnderflow` /
    /// `NotAllocated`.
    ///
    /// Cost: one pin (a read-side section, no RMW), one CAS per slot
    /// (`2^order`), and the freed slots' references dropped with the pin (1
    /// when any was freed): at most `2^order + 1` locked RMWs, 17 for order
    /// 4 (66 before the ranged rework and the reclamation: a lock per slot,
    /// each pinned, then the commit). A slot whose count is in the side
    /// table takes the side lock instead.
    pub fn put_range(&self, start: u32, order: u32) -> Result<u32> {
        let (pin, base, n) = self.pin_range(start, order)?;
        let words = range_words(&pin, base, n)?;
        for w in words {
            let w = w.load(Ordering::Acquire);
            if !is_live(w) {
                return Err(Error::NotAllocated);
            }
            if w & LOCKED != 0 {
                return Err(Error::Busy);
            }
        }
        if words
            .iter()
            .any(|w| count_field(w.load(Ordering::Acquire)) == 0)
        {
            return Err(Error::CountUnderflow);
        }
        let mut rel = Releaser::new(&self.host);
        let mut freed = 0;
        let mut err = None;
        for (i, word) in words.iter().enumerate() {
            let off = base + i;
            let slot = start + i as u32;
            let mut w = word.load(Ordering::Acquire);
            let r = loop {
                if !is_live(w) {
                    break Err(Error::NotAllocated);
                }
                let f = count_field(w);
                if f == COUNT_CONT {
                    break self.count_slow(&pin, off, slot, -1, Ctx::NoSleep, false);
                }
                if f == 0 {
                    break Err(Error::CountUnderflow);
                }
                match self.settle(&pin, off, word, w, with_count(w, f - 1)) {
                    Ok(x) => break Ok(x),
                    Err(x) => w = x,
                }
            };
            match r {
                Ok(Some(f)) => {
                    rel.release(slot, f.backend);
                    self.notify_freed(&pin, off, f);
                    freed += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        rel.flush();
        // SAFETY: `freed` counts the slots of this cluster whose words our
        // `settle` / `count_slow` calls took to 0, each once (a winning CAS).
        unsafe { pin.release(freed) };
        err.map_or(Ok(freed), Err)
    }

    /// Put one count of each slot in `start..start + len`, batched per cluster
    /// (the cluster is pinned once, freed backends are released in coalesced
    /// runs). Not atomic: on a failure, the slots before it have been put and
    /// none after it (see [`BatchError`]). Returns how many slots were freed.
    pub fn put_many(&self, start: u32, len: u32) -> core::result::Result<u32, BatchError> {
        let mut rel = Releaser::new(&self.host);
        let mut done = 0u32;
        let mut freed_total = 0;
        let csize = self.geometry().cluster_slots();
        while done < len {
            let slot = start.wrapping_add(done);
            let (pin, off0) = self.pin(slot).map_err(|error| BatchError { done, error })?;
            let chunk = (csize - off0 as u32).min(len - done);
            let mut freed = 0;
            let mut err = None;
            for i in 0..chunk {
                let off = off0 + i as usize;
                let Ok(word) = word(&pin, off) else {
                    err = Some(Error::OutOfRange);
                    break;
                };
                let mut w = word.load(Ordering::Acquire);
                let r = loop {
                    if !is_live(w) {
                        break Err(Error::NotAllocated);
                    }
                    let f = count_field(w);
                    if f == COUNT_CONT {
                        break self.count_slow(&pin, off, slot + i, -1, Ctx::NoSleep, false);
                    }
                    if f == 0 {
                        break Err(Error::CountUnderflow);
                    }
                    match self.settle(&pin, off, word, w, with_count(w, f - 1)) {
                        Ok(x) => break Ok(x),
                        Err(x) => w = x,
                    }
                };
                match r {
                    Ok(Some(f)) => {
                        rel.release(slot + i, f.backend);
                        self.notify_freed(&pin, off, f);
                        freed += 1;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
                done += 1;
            }
            // SAFETY: as in `put_range`: `freed` counts the words of this
            // cluster our `settle` calls took to 0, each once.
            unsafe { pin.release(freed) };
            freed_total += freed;
            if let Some(error) = err {
                return Err(BatchError { done, error });
            }
        }
        Ok(freed_total)
    }

    /// Set the cache flag (a folio entered the swap cache) and store `cookie`
    /// in the cache word. `WrongState` if the flag is already set.
    pub fn cache_add(&self, slot: u32, cookie: u64, ctx: Ctx) -> Result<()> {
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        let table = if cookie != 0 {
            Some(pin.cache_table_or_create(ctx)?)
        } else {
            pin.cache_table()
        };
        let mut w = word.load(Ordering::Acquire);
        loop {
            if !is_live(w) {
                return Err(Error::NotAllocated);
            }
            if w & CACHED != 0 {
                return Err(Error::WrongState);
            }
            match word.compare_exchange_weak(w, w | CACHED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(x) => w = x,
            }
        }
        if let Some(c) = table.and_then(|t| t.get(off)) {
            c.store(cookie, Ordering::Release);
        }
        Ok(())
    }

    /// Write the cache word of a live slot (the folio cookie after
    /// [`alloc`](Self::alloc), or a new shadow).
    ///
    /// The value only ever lands in the same live slot: while the slot is
    /// cached, the caller (who owns its swap cache state) keeps it live; a
    /// slot that is not cached is *held* for the store (one CAS to set
    /// `HOLD`, one to clear it), so that a racing last `put` cannot free it
    /// in between. If the last reference went while it was held, the slot is
    /// freed here, when the hold goes, and its cache word cleared with it.
    /// `NotAllocated` (nothing written) if the slot is not live.
    pub fn cache_store(&self, slot: u32, value: u64, ctx: Ctx) -> Result<()> {
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        if !is_live(word.load(Ordering::Acquire)) {
            return Err(Error::NotAllocated);
        }
        // The table is made (maybe sleeping) before any hold is taken.
        let table = if value != 0 {
            Some(pin.cache_table_or_create(ctx)?)
        } else {
            pin.cache_table()
        };
        let Some(c) = table.and_then(|t| t.get(off)) else {
            return Ok(()); // value 0 and no table: the word already reads 0
        };
        let mut w = word.load(Ordering::Acquire);
        let held = loop {
            if !is_live(w) {
                return Err(Error::NotAllocated);
            }
            if w & CACHED != 0 {
                break false;
            }
            if w & HOLD != 0 {
                // Another cache_store holds it for one store: wait.
                spin_hint();
                w = word.load(Ordering::Acquire);
                continue;
            }
            match word.compare_exchange_weak(w, w | HOLD, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break true,
                Err(x) => w = x,
            }
        };
        c.store(value, Ordering::Release);
        if held {
            let mut w = word.load(Ordering::Acquire);
            loop {
                match self.settle(&pin, off, word, w, w & !HOLD) {
                    Ok(freed) => {
                        self.finish(pin, off, freed);
                        break;
                    }
                    Err(x) => w = x,
                }
            }
        }
        Ok(())
    }

    /// Clear the cache flag (the folio left the swap cache), leaving `shadow`
    /// (0: none) in the cache word. Frees the slot if its count is 0.
    #[inline]
    pub fn cache_clear(&self, slot: u32, shadow: u64, ctx: Ctx) -> Result<Put> {
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        let mut w = word.load(Ordering::Acquire);
        if !is_live(w) {
            return Err(Error::NotAllocated);
        }
        if w & CACHED == 0 {
            return Err(Error::WrongState);
        }
        let mut shadow_stored = false;
        loop {
            if !is_live(w) {
                return Err(Error::NotAllocated);
            }
            if w & CACHED == 0 {
                return Err(Error::WrongState);
            }
            // If the slot outlives the clear, the shadow must be in the cache
            // word before the flag goes (checked on every try: a racing `dup`
            // can turn a clear that would free into one that does not, and
            // the old folio cookie must not be left behind as a "shadow").
            // A clear that frees needs none: `settle` zeroes the cache word.
            if !shadow_stored && (count_field(w) != 0 || w & LOCKED != 0) {
                let table = if shadow != 0 {
                    Some(pin.cache_table_or_create(ctx)?)
                } else {
                    pin.cache_table()
                };
                if let Some(c) = table.and_then(|t| t.get(off)) {
                    c.store(shadow, Ordering::Release);
                }
                shadow_stored = true;
            }
            match self.settle(&pin, off, word, w, w & !CACHED) {
                Ok(freed) => return Ok(self.finish(pin, off, freed)),
                Err(x) => w = x,
            }
        }
    }

    /// [`cache_clear`](Self::cache_clear) for every slot of the naturally
    /// aligned range `start..start + 2^order` (a large folio left the swap
    /// cache), leaving the same `shadow` (0: none) in the cache word of each
    /// slot that outlives the clear, as the kernel leaves one shadow in
    /// every entry of the folio. Frees the slots whose count is 0 (unless
    /// locked or held, as for `cache_clear`) and returns how many were
    /// freed; their backends are released in coalesced runs.
    ///
    /// All or nothing: the range is checked first, and if any slot is not
    /// live (`NotAllocated`) or not cached (`WrongState`; the first failing
    /// slot decides), nothing changes. With a non-zero `shadow` the
    /// cluster's cache word table is made (with `ctx`) before any slot is
    /// touched: `NoMem` / `Again` also leave the range unchanged. The
    /// caller owns the swap cache state of the whole range (the kernel's
    /// folio lock), so no slot can stop being live and cached between the
    /// check and the clear; if an unserialised caller clears one meanwhile
    /// (see "What cannot be detected" above), that slot is skipped, the
    /// others are cleared, and the call returns `WrongState` /
    /// `NotAllocated`. Counts and locks may change concurrently: as for
    /// `cache_clear`, a slot that a racing `dup` keeps alive gets the shadow
    /// and a slot that dies under a lock or hold is freed by its unlock.
    ///
    /// Cost: one pin (a read-side section, no RMW), one CAS per slot
    /// (`2^order`; a free adds a plain store of 0), and the freed slots'
    /// references dropped with the pin (1): `2^order + 1`, so an order-4
    /// swap-in frees its 16 slots with 16 slot RMWs and 17 in all (48 with
    /// 16 pinned `cache_clear` calls before the reclamation, 32 without
    /// pins). A slot attached to the side table takes the
    /// side lock when freed.
    pub fn cache_clear_range(&self, start: u32, order: u32, shadow: u64, ctx: Ctx) -> Result<u32> {
        let (pin, base, n) = self.pin_range(start, order)?;
        let words = range_words(&pin, base, n)?;
        for w in words {
            let w = w.load(Ordering::Acquire);
            if !is_live(w) {
                return Err(Error::NotAllocated);
            }
            if w & CACHED == 0 {
                return Err(Error::WrongState);
            }
        }
        // Made before any flag goes, so that a failure changes nothing.
        let table = if shadow != 0 {
            Some(pin.cache_table_or_create(ctx)?)
        } else {
            pin.cache_table()
        };
        let mut rel = Releaser::new(&self.host);
        let mut freed = 0;
        let mut err = None;
        for (i, word) in words.iter().enumerate() {
            let off = base + i;
            let mut w = word.load(Ordering::Acquire);
            let mut shadow_stored = false;
            let r = loop {
                if !is_live(w) {
                    break Err(Error::NotAllocated);
                }
                if w & CACHED == 0 {
                    break Err(Error::WrongState);
                }
                // As in `cache_clear`: a slot that outlives the clear gets
                // the shadow before its flag goes (checked on every try).
                if !shadow_stored && (count_field(w) != 0 || w & LOCKED != 0) {
                    // (A table made since the check is looked up again.)
                    let t = table.or_else(|| pin.cache_table());
                    if let Some(c) = t.and_then(|t| t.get(off)) {
                        c.store(shadow, Ordering::Release);
                    }
                    shadow_stored = true;
                }
                match self.settle(&pin, off, word, w, w & !CACHED) {
                    Ok(x) => break Ok(x),
                    Err(x) => w = x,
                }
            };
            match r {
                Ok(Some(f)) => {
                    rel.release(start + i as u32, f.backend);
                    self.notify_freed(&pin, off, f);
                    freed += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        rel.flush();
        // SAFETY: `freed` counts the words of this cluster our `settle`
        // calls took to 0, each once (a winning CAS to FREEING).
        unsafe { pin.release(freed) };
        err.map_or(Ok(freed), Err)
    }

    /// The mTHP swap-in check: can the naturally aligned range
    /// `start..start + 2^order` be swapped in as one large folio? Read-only:
    /// one snapshot load of each slot's word under one pin.
    ///
    /// Errors as for the other range calls (`BadOrder`, `Misaligned`,
    /// `OutOfRange`), and `NotAllocated` if any slot of the range is not
    /// live (free, or dead under a lock or hold). Otherwise, in this order:
    /// [`SwapinCheck::InCache`] if any slot is in the swap cache or locked
    /// (the kernel's `non_swapcache_batch` refusal: the folio, or a swap-in
    /// or move of the slot, is already under way); [`SwapinCheck::Zero`] if
    /// every slot is zero-filled (`Zero`, or `Same(0)`); [`SwapinCheck::Contiguous`] if every slot
    /// is on one device at consecutive offsets (`off + i` for slot
    /// `start + i`); else [`SwapinCheck::Mixed`] (zero and non-zero slots
    /// mixed, as the kernel's `swap_zeromap_batch` refuses; or any slot in
    /// zswap, same-filled with a non-zero value, without a backend, or on a
    /// device out of sequence).
    ///
    /// The answer is a snapshot: stable only while the caller keeps the
    /// slots from changing (the kernel holds the page table lock and counts
    /// on every slot; a backend moves only under the slot's lock, which the
    /// swap-in then takes with [`lock_range`](Self::lock_range)).
    ///
    /// Cost: one read-side section and `2^order` loads: no locked RMW,
    /// whatever the order (16 per-slot lookups would take 16 sections).
    pub fn swapin_range_check(&self, start: u32, order: u32) -> Result<SwapinCheck> {
        let (pin, base, n) = self.pin_range(start, order)?;
        let words = range_words(&pin, base, n)?;
        let mut busy = false;
        let mut mixed = false;
        let mut first = None;
        for (i, w) in words.iter().enumerate() {
            let w = w.load(Ordering::Acquire);
            if !is_live(w) {
                return Err(Error::NotAllocated);
            }
            busy |= w & (CACHED | LOCKED) != 0;
            // (A value kept in the side table decodes as `Same(0)`, but is
            // never 0: 0 is always inline.)
            let b = match Backend::decode(w) {
                Backend::Same(0) if !same_in_table(w) => Backend::Zero,
                b => b,
            };
            mixed |= !match (first, b) {
                (_, Backend::Zswap(_) | Backend::None | Backend::Same(_)) => false,
                (None, _) => {
                    first = Some(b);
                    true
                }
                (Some(Backend::Zero), Backend::Zero) => true,
                (Some(Backend::Phys { dev, off }), Backend::Phys { dev: d, off: o }) => {
                    d == dev && off.checked_add(i as u64) == Some(o)
                }
                _ => false,
            };
        }
        Ok(match first {
            _ if busy => SwapinCheck::InCache,
            _ if mixed => SwapinCheck::Mixed,
            Some(Backend::Phys { dev, off }) => SwapinCheck::Contiguous { dev, off },
            _ => SwapinCheck::Zero,
        })
    }

    /// The cache flag and cache word of a slot.
    pub fn cache_get(&self, slot: u32) -> Result<CacheState> {
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        let mut w = word.load(Ordering::Acquire);
        loop {
            if !is_slot(w) {
                return Err(Error::NotAllocated);
            }
            let v = pin
                .cache_table()
                .and_then(|t| t.get(off))
                .map_or(0, |c| c.load(Ordering::Acquire));
            // The flag and the cache word are two words: keep the pair only if
            // the core word did not change meanwhile (a free in between zeroes
            // the cache word, and `cached` with 0 is a state the slot never
            // had). The acquire load of `v` keeps this load after it.
            let again = word.load(Ordering::Acquire);
            if again == w {
                return Ok(CacheState {
                    cached: w & CACHED != 0,
                    word: v,
                });
            }
            w = again;
        }
    }

    /// Take the slot's lock bit. `Busy` if someone holds it.
    pub fn lock(&self, slot: u32) -> Result<()> {
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        let mut w = word.load(Ordering::Acquire);
        loop {
            if !is_live(w) {
                return Err(Error::NotAllocated);
            }
            if w & LOCKED != 0 {
                return Err(Error::Busy);
            }
            match word.compare_exchange_weak(w, w | LOCKED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(x) => w = x,
            }
        }
    }

    /// Drop the slot's lock bit; frees the slot if it died while locked.
    pub fn unlock(&self, slot: u32) -> Result<Put> {
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        let mut w = word.load(Ordering::Acquire);
        loop {
            if !is_slot(w) {
                return Err(Error::NotAllocated);
            }
            if w & LOCKED == 0 {
                return Err(Error::NotLocked);
            }
            match self.settle(&pin, off, word, w, w & !LOCKED) {
                Ok(freed) => return Ok(self.finish(pin, off, freed)),
                Err(x) => w = x,
            }
        }
    }

    /// Lock every slot of a naturally aligned range, all or nothing: the
    /// slots are locked in order, each with one CAS; at the first slot that
    /// is not live (`NotAllocated`) or is locked (`Busy`), the locks this
    /// call took are dropped again (a slot that died while this call held
    /// its lock is freed then, as by [`unlock`](Self::unlock)) and the error
    /// is returned.
    ///
    /// Cost: one read-side section and one CAS per slot: `2^order` locked
    /// RMWs (16 for order 4; 48 before the ranged rework). A failure at the
    /// `i`-th slot adds `i` CASes to undo.
    pub fn lock_range(&self, start: u32, order: u32) -> Result<()> {
        let (pin, base, n) = self.pin_range(start, order)?;
        let words = range_words(&pin, base, n)?;
        for (i, word) in words.iter().enumerate() {
            let mut w = word.load(Ordering::Acquire);
            let r = loop {
                if !is_live(w) {
                    break Err(Error::NotAllocated);
                }
                if w & LOCKED != 0 {
                    break Err(Error::Busy);
                }
                match word.compare_exchange_weak(w, w | LOCKED, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => break Ok(()),
                    Err(x) => w = x,
                }
            };
            if let Err(e) = r {
                let mut rel = Releaser::new(&self.host);
                let mut freed = 0;
                for (j, word) in words.iter().enumerate().take(i) {
                    // Our own locks: the unlock cannot fail unless another
                    // thread dropped a lock it did not hold (then it is theirs).
                    if let Ok(Some(f)) = self.unlock_word(&pin, base + j, word) {
                        rel.release(start + j as u32, f.backend);
                        self.notify_freed(&pin, base + j, f);
                        freed += 1;
                    }
                }
                rel.flush();
                // SAFETY: `freed` counts the words of this cluster our
                // `unlock_word` calls took to 0, each once.
                unsafe { pin.release(freed) };
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unlock every slot of a naturally aligned range; returns how many were
    /// freed (slots that died while locked). Checked first: `NotAllocated`
    /// or `NotLocked` (and nothing changed) if any slot of it is not
    /// allocated or not locked. If another thread drops one of these locks
    /// after the check (it does not hold it: a caller bug the map cannot
    /// prevent), that slot is skipped, the others are unlocked, and the call
    /// returns `NotLocked` / `NotAllocated`.
    ///
    /// Cost: one read-side section, one CAS per slot, and one `fetch_sub`
    /// if any slot was freed: at most `2^order + 1` locked RMWs (17 for
    /// order 4; 50 before the ranged rework: a pinned check, then a pinned
    /// unlock per slot).
    pub fn unlock_range(&self, start: u32, order: u32) -> Result<u32> {
        let (pin, base, n) = self.pin_range(start, order)?;
        let words = range_words(&pin, base, n)?;
        for w in words {
            let w = w.load(Ordering::Acquire);
            if !is_slot(w) {
                return Err(Error::NotAllocated);
            }
            if w & LOCKED == 0 {
                return Err(Error::NotLocked);
            }
        }
        let mut rel = Releaser::new(&self.host);
        let mut freed = 0;
        let mut err = None;
        for (i, word) in words.iter().enumerate() {
            match self.unlock_word(&pin, base + i, word) {
                Ok(Some(f)) => {
                    rel.release(start + i as u32, f.backend);
                    self.notify_freed(&pin, base + i, f);
                    freed += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        rel.flush();
        // SAFETY: `freed` counts the words of this cluster our `unlock_word`
        // calls took to 0, each once.
        unsafe { pin.release(freed) };
        err.map_or(Ok(freed), Err)
    }

    /// Drop the lock bit of word `word` (slot `off` of the pinned cluster):
    /// `Some` if the slot died while locked and was freed (the caller
    /// releases the backend and counts the slot in its `release`).
    fn unlock_word(&self, pin: &Pin<'_, P>, off: usize, word: &AtomicU64) -> Result<Option<Freed>> {
        let mut w = word.load(Ordering::Acquire);
        loop {
            if !is_slot(w) {
                return Err(Error::NotAllocated);
            }
            if w & LOCKED == 0 {
                return Err(Error::NotLocked);
            }
            match self.settle(pin, off, word, w, w & !LOCKED) {
                Ok(freed) => return Ok(freed),
                Err(x) => w = x,
            }
        }
    }

    /// Replace the backend of an unlocked live slot by compare-and-set from
    /// `expected` (the writeout transition `None -> Zero | Same | Zswap | Phys`,
    /// or any other). The old backend's resource, if any, is released. `Busy`
    /// if the slot is locked: a lock holder moves data with
    /// [`commit_unlock`](Self::commit_unlock) instead. A new `Phys` backend
    /// is first checked by the host ([`Host::check_phys`], after the slot's
    /// state): its error is returned and nothing changes (an engine refuses
    /// a device slot that is not reserved for `slot`). The same holds for
    /// [`commit_unlock`](Self::commit_unlock) and the moves built on it.
    /// A `Same` value that fits neither inline form is kept in a
    /// per-cluster table made without sleeping: `NoMem` / `Again` if it
    /// needs memory the provider does not give, and nothing changes (also
    /// for `commit_unlock`, whose lock is then still held).
    #[inline]
    pub fn store(&self, slot: u32, expected: Backend, new: Backend) -> Result<()> {
        self.replace(slot, expected, new, false)
    }

    /// For the holder of the slot's lock: replace the backend `expected` by
    /// `new` and drop the lock in one CAS, then release the old location.
    /// `WrongState` (lock still held) if the backend is not `expected`;
    /// `Gone` if the slot died while locked: then nothing is committed, the slot
    /// is freed with its old backend, and the caller releases `new` itself.
    pub fn commit_unlock(&self, slot: u32, expected: Backend, new: Backend) -> Result<()> {
        self.replace(slot, expected, new, true)
    }

    /// [`store`](Self::store) (`locked == false`: the slot must be unlocked)
    /// and [`commit_unlock`](Self::commit_unlock) (`locked == true`: the caller
    /// holds the lock, which the CAS drops).
    fn replace(&self, slot: u32, expected: Backend, new: Backend, locked: bool) -> Result<()> {
        let (exp, nw) = (expected.encode()?, new.encode()?);
        if same_in_table(exp) || same_in_table(nw) {
            return self.replace_side(slot, (expected, exp), (new, nw), locked);
        }
        // A new device location is checked once, after the slot's state.
        let mut check = new_location(new, exp, nw);
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        let mut w = word.load(Ordering::Acquire);
        loop {
            replace_state(w, locked)?;
            if !is_live(w) {
                // A zombie under our lock: free it (unlock) and report the
                // lost move.
                match self.settle(&pin, off, word, w, w & !LOCKED) {
                    Ok(freed) => {
                        self.finish(pin, off, freed);
                        return Err(Error::Gone);
                    }
                    Err(x) => {
                        w = x;
                        continue;
                    }
                }
            }
            if backend_bits(w) != exp {
                return Err(Error::WrongState);
            }
            if let Some((dev, off)) = check.take() {
                // May `slot` refer to this location (the engine: is it
                // allocated to `slot` on its device)? Then re-read the word.
                self.host.check_phys(slot, dev, off)?;
                w = word.load(Ordering::Acquire);
                continue;
            }
            let unlock = if locked { LOCKED } else { 0 };
            let next = ((w & !backend_bits(w)) | nw) & !unlock;
            match word.compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(x) => w = x,
            }
        }
        drop(pin);
        if exp != nw {
            Releaser::new(&self.host).release(slot, expected);
        }
        Ok(())
    }

    /// [`replace`](Self::replace) where the expected or the new backend is a
    /// same-filled value kept in the side table: the same checks and CAS,
    /// under the side lock, which every reader of a table value holds. A new
    /// table value attaches the slot (`SIDE`) and is written with the CAS;
    /// memory it needs (count block, bucket array, value array) is made with
    /// the lock dropped and without sleeping (`store` takes no context):
    /// `NoMem` / `Again` leave the slot unchanged.
    fn replace_side(
        &self,
        slot: u32,
        (expected, exp): (Backend, u64),
        (new, nw): (Backend, u64),
        locked: bool,
    ) -> Result<()> {
        let old_v = match expected {
            Backend::Same(v) if same_in_table(exp) => Some(v),
            _ => None,
        };
        let new_v = match new {
            Backend::Same(v) if same_in_table(nw) => Some(v),
            _ => None,
        };
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        let c = pin.cluster();
        let provider = self.space.provider();
        let mut spares = Spares::default();
        let mut garbage = Garbage::default();
        let mut gone = None;
        let mut check = new_location(new, exp, nw);
        let r = loop {
            let mut side = self.side.lock();
            let w = word.load(Ordering::Acquire);
            if let Err(e) = replace_state(w, locked) {
                break Err(e);
            }
            if !is_live(w) {
                // A zombie under our lock: free it (unlock), report the loss.
                let next = w & !LOCKED;
                match self.settle_in(&pin, off, word, w, next, Some(&mut side), &mut garbage) {
                    Ok(freed) => {
                        gone = Some(freed);
                        break Err(Error::Gone);
                    }
                    Err(_) => continue,
                }
            }
            if backend_bits(w) != exp || old_v.is_some_and(|v| side.get_same(c, off) != Some(v)) {
                break Err(Error::WrongState);
            }
            if let Some((dev, doff)) = check.take() {
                // As in `replace`: may `slot` refer to this device location?
                // Asked of the host with the side lock dropped; then re-read.
                drop(side);
                match self.host.check_phys(slot, dev, doff) {
                    Ok(()) => continue,
                    Err(e) => break Err(e),
                }
            }
            if new_v.is_some() {
                if let Some(need) = side.needs(c, &spares, true) {
                    drop(side);
                    match self.side.make(provider, need, Ctx::NoSleep, &mut spares) {
                        Ok(()) => continue,
                        Err(e) => break Err(e),
                    }
                }
            }
            let unlock = if locked { LOCKED } else { 0 };
            let mut next = ((w & !backend_bits(w)) | nw) & !unlock;
            if new_v.is_some() {
                next |= SIDE;
            }
            if word
                .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            if let Some(v) = new_v {
                if w & SIDE == 0 {
                    side.attach(c, off, 0, &mut spares, &mut garbage);
                }
                side.set_same(c, off, v, &mut spares);
            }
            break Ok(());
        };
        self.side.free_spares(provider, spares);
        self.side.free_garbage(provider, garbage);
        if let Some(freed) = gone {
            self.finish(pin, off, freed);
            return r;
        }
        drop(pin);
        if r.is_ok() && expected != new {
            Releaser::new(&self.host).release(slot, expected);
        }
        r
    }

    /// zswap writeback, for the lock holder: the slot's zswap object was
    /// written to device slot `(dev, off)`; commit, unlock, release the handle.
    pub fn writeback(&self, slot: u32, dev: u8, off: u64) -> Result<()> {
        let e = self.lookup(slot)?;
        match e.backend {
            Backend::Zswap(_) => self.commit_unlock(slot, e.backend, Backend::Phys { dev, off }),
            _ => Err(Error::WrongState),
        }
    }

    /// Relocation (GC, tier move), for the lock holder: the data at `from` was
    /// copied to `to`; commit, unlock, release `from`.
    pub fn relocate(&self, slot: u32, from: (u8, u64), to: (u8, u64)) -> Result<()> {
        self.commit_unlock(
            slot,
            Backend::Phys {
                dev: from.0,
                off: from.1,
            },
            Backend::Phys {
                dev: to.0,
                off: to.1,
            },
        )
    }

    /// A snapshot of a slot (stable only under its lock or a count taken with
    /// [`try_get`](Self::try_get)).
    #[inline]
    pub fn lookup(&self, slot: u32) -> Result<Entry> {
        let (pin, off) = self.pin(slot)?;
        let word = word(&pin, off)?;
        let mut w = word.load(Ordering::Acquire);
        let mut count = count_field(w) as u32;
        let mut same = None;
        if count_field(w) == COUNT_CONT || same_in_table(w) {
            // Count fields move to and from "continued", and same-filled
            // values to and from the table, only under the side lock: read
            // the word again under it, so that the word and the table are one
            // snapshot (a count read after the slot went back inline would be
            // a value the slot never had).
            let mut side = self.side.lock();
            w = word.load(Ordering::Acquire);
            count = match count_field(w) {
                COUNT_CONT => side.get(pin.cluster(), off).unwrap_or(INLINE_COUNT_MAX + 1),
                f => f as u32,
            };
            if same_in_table(w) {
                same = side.get_same(pin.cluster(), off);
            }
        }
        if !is_slot(w) {
            return Err(Error::NotAllocated);
        }
        Ok(Entry {
            backend: same.map_or(Backend::decode(w), Backend::Same),
            count,
            cached: w & CACHED != 0,
            locked: w & LOCKED != 0,
        })
    }

    /// Give every slot of a live, naturally aligned range the memcg id `id`.
    /// All or nothing: `NotAllocated` (nothing changed) if any slot is not live.
    /// A cluster whose slots all share one id keeps no table.
    pub fn set_memcg(&self, start: u32, order: u32, id: u16, ctx: Ctx) -> Result<()> {
        let n = self.range(start, order)?;
        let (pin, base) = self.pin(start)?;
        for i in 0..n {
            if !is_live(word(&pin, base + i as usize)?.load(Ordering::Acquire)) {
                return Err(Error::NotAllocated);
            }
        }
        for i in 0..n {
            pin.set_memcg(base + i as usize, id, ctx)?;
        }
        Ok(())
    }

    /// The memcg id of a slot: the id last set for it, or, while the cluster
    /// keeps no id table, the id its cluster's slots share. `None` if no slot
    /// of the cluster was ever given one. Ids are not cleared on free: an
    /// owner sets its slot's id after allocation (the engine does so in
    /// `Engine::alloc`); before that a slot reports its cluster's or the
    /// previous owner's id.
    pub fn memcg(&self, slot: u32) -> Result<Option<u16>> {
        let (pin, off) = self.pin(slot)?;
        if !is_slot(word(&pin, off)?.load(Ordering::Acquire)) {
            return Err(Error::NotAllocated);
        }
        Ok(pin.memcg(off))
    }

    /// Call `f(slot)` for every allocated slot (live or zombie), cluster by
    /// cluster; slots allocated or freed meanwhile may or may not be seen.
    /// `f` runs outside every read-side section (it may sleep: swapoff's I/O
    /// runs in it): the slots are read 64 at a time under a pin that is
    /// dropped before `f` is called.
    pub fn for_each_slot(&self, mut f: impl FnMut(u32)) {
        let csize = self.geometry().cluster_slots();
        let shift = self.geometry().cluster_shift;
        self.space.for_each_cluster_index(|c| {
            let base = c << shift;
            let mut at = 0u32;
            while at < csize {
                let mut bits = 0u64;
                {
                    let Ok(pin) = self.space.pin(base + at) else {
                        return;
                    };
                    let words = pin.words();
                    for i in at..(at + 64).min(csize) {
                        if words
                            .get(i as usize)
                            .is_some_and(|w| is_slot(w.load(Ordering::Relaxed)))
                        {
                            bits |= 1 << (i - at);
                        }
                    }
                }
                while bits != 0 {
                    let i = bits.trailing_zeros();
                    bits &= bits - 1;
                    f(base + at + i);
                }
                at += 64;
            }
        });
    }

    /// Occupancy and memory, derived by scanning every live cluster.
    pub fn stats(&self) -> MapStats {
        let mut st = MapStats::default();
        self.space.for_each_cluster(|pin| {
            for w in pin.words() {
                let w = w.load(Ordering::Relaxed);
                if !is_slot(w) {
                    continue;
                }
                st.live_slots += 1;
                let k = Backend::decode(w).kind() as usize;
                if let Some(c) = st.by_kind.get_mut(k) {
                    *c += 1;
                }
                st.cached += u64::from(w & CACHED != 0);
                st.locked += u64::from(w & LOCKED != 0);
                st.overflowed += u64::from(count_field(w) == COUNT_CONT);
            }
        });
        st.memory = self.space.memory();
        st.side_bytes = self.side.bytes();
        st
    }
}

impl<P: Provider, H: Host> VswapMap<P, H> {
    /// Move word `w` to `new` by CAS. If `new` is dead and neither locked nor
    /// held (see `HOLD`), free the slot instead: take it with the FREEING
    /// marker; while it owns the slot (nobody can allocate it, a word of
    /// FREEING is not 0), read what the free reports (the backend, and the
    /// memcg id for a host that wants [`Host::slot_freed`]), clear its cache
    /// word and detach it from the side table if it is attached (`SIDE`);
    /// then store 0. `Err(current)` if the word changed.
    ///
    /// Nothing is read after the store of 0: from then on the slot may be
    /// allocated again and given another id and cache word.
    #[inline]
    fn settle(
        &self,
        pin: &Pin<'_, P>,
        off: usize,
        word: &AtomicU64,
        w: u64,
        new: u64,
    ) -> core::result::Result<Option<Freed>, u64> {
        let mut garbage = Garbage::default();
        let r = self.settle_in(pin, off, word, w, new, None, &mut garbage);
        self.side.free_garbage(self.space.provider(), garbage);
        r
    }

    /// [`settle`](Self::settle) for a caller that may hold the side lock
    /// (`side`); side-table memory to free once the lock is dropped goes to
    /// `garbage`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn settle_in(
        &self,
        pin: &Pin<'_, P>,
        off: usize,
        word: &AtomicU64,
        w: u64,
        new: u64,
        side: Option<&mut Side>,
        garbage: &mut Garbage,
    ) -> core::result::Result<Option<Freed>, u64> {
        if is_live(new) || new & (LOCKED | HOLD) != 0 {
            word.compare_exchange(w, new, Ordering::AcqRel, Ordering::Acquire)?;
            return Ok(None);
        }
        word.compare_exchange(w, FREEING, Ordering::AcqRel, Ordering::Acquire)?;
        // Plain loads of tables the freer still owns: no atomic RMW.
        let memcg = if H::WANTS_FREED { pin.memcg(off) } else { None };
        if let Some(c) = pin.cache_table().and_then(|t| t.get(off)) {
            // Release: a `cache_get` that reads this 0 then sees FREEING (or
            // later) when it re-reads the core word, and retries.
            c.store(0, Ordering::Release);
        }
        let mut backend = Backend::decode(w);
        if w & SIDE != 0 {
            let mut own;
            let s = match side {
                Some(s) => s,
                None => {
                    own = self.side.lock();
                    &mut *own
                }
            };
            if same_in_table(w) {
                backend = Backend::Same(s.get_same(pin.cluster(), off).unwrap_or(0));
            }
            s.detach(pin.cluster(), garbage);
        }
        word.store(0, Ordering::Release);
        Ok(Some(Freed { backend, memcg }))
    }
}

impl<P: Provider, H: Host> Drop for VswapMap<P, H> {
    fn drop(&mut self) {
        self.side.clear(self.space.provider());
    }
}

use vswap_alloc::sync::{AtomicU64, Ordering, spin_hint};

/// The words of slots `base..base + n` of a pinned cluster.
#[inline]
fn range_words<'a, P: Provider>(
    pin: &'a Pin<'_, P>,
    base: usize,
    n: usize,
) -> Result<&'a [AtomicU64]> {
    pin.words().get(base..base + n).ok_or(Error::OutOfRange)
}

#[inline]
fn word<'a, P: Provider>(pin: &'a Pin<'_, P>, off: usize) -> Result<&'a AtomicU64> {
    pin.words().get(off).ok_or(Error::OutOfRange)
}

/// What a free took from its slot while it still owned it (see
/// [`VswapMap::settle`]).
#[derive(Clone, Copy, Debug)]
struct Freed {
    /// The backend the slot held (to release).
    backend: Backend,
    /// The slot's memcg id at the free (read only for hosts that want
    /// [`Host::slot_freed`]).
    memcg: Option<u16>,
}

/// The state checks [`VswapMap::replace`] and `replace_side` share: the
/// slot must be allocated (and live, unless the caller holds its lock),
/// unlocked for a store, locked for a commit.
#[inline]
fn replace_state(w: u64, locked: bool) -> Result<()> {
    if !is_slot(w) || (!locked && !is_live(w)) {
        return Err(Error::NotAllocated);
    }
    if !locked && w & LOCKED != 0 {
        return Err(Error::Busy);
    }
    if locked && w & LOCKED == 0 {
        return Err(Error::NotLocked);
    }
    Ok(())
}

/// The device location a replace must have the host check
/// ([`Host::check_phys`]): a new `Phys` backend that differs from the
/// expected one (`exp`, `nw`: the two encoded).
#[inline]
fn new_location(new: Backend, exp: u64, nw: u64) -> Option<(u8, u64)> {
    match new {
        Backend::Phys { dev, off } if exp != nw => Some((dev, off)),
        _ => None,
    }
}
