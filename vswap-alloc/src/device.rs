//! A physical swap device as the virtual layer uses it: a fixed-size
//! [`SlotSpace`] of 4-byte reverse-map words.
//!
//! Each device slot's word is 0 when free, or the *virtual* slot whose data it
//! holds (virtual slot 0 is never a swap entry, so 0 is unambiguous). That one
//! word is both the allocation bit and the reverse map: 4 bytes per slot, which
//! caps the virtual space at 2^32 slots. `u32::MAX` marks reserved slots, so
//! virtual slot `u32::MAX` cannot own device slots. Writeback, relocation, swapoff, GC and
//! readahead read it; nothing walks page tables.
//!
//! The allocation policy is the slot space's fixed-device policy (the kernel's
//! cluster allocator: per-CPU clusters per order, nonfull / frag / full lists,
//! free FIFO, discard queue, rotational cursor, bad slots, order-0 stealing).
//!
//! Device slot 0 is reserved (the swap header on a real device); bad slots are
//! reserved the same way and never handed out.
//!
//! # Performance
//! An order-0 allocation is the slot space's two locked RMWs (the CAS adding
//! the slot's reference to its cluster, the claim of the word). A
//! single-slot free ([`PhysDevice::free_with`] with `len == 1`) is one
//! read-side section, the owner-checked compare-and-clear (which is also its
//! check) and the occupancy update of [`Pin::release`](crate::Pin::release):
//! two more. The read-side section exists only for memory safety, and a
//! device never frees its slot tables; dropping it needs a section-free pin
//! for fixed spaces in the slot space (not done). The occupancy updates are
//! per operation, not per cached cluster (the slot space's design).

use crate::provider::{Ctx, Provider};
use crate::space::{ClusterState, ListCounts, Policy, SlotSpace, SpaceMemory};
use crate::sync::{AtomicU32, Ordering};
use crate::{Error, Geometry, Result, SlotWord};

/// Reverse-map marker of reserved (header and bad) slots.
const RESERVED: u64 = u32::MAX as u64;

/// How a device is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Size, cluster size and CPUs. `slots` is the device's size in pages.
    pub geometry: Geometry,
    /// Emptied clusters wait for the host's discard before reuse.
    pub discard: bool,
    /// One sequential cursor for all CPUs (rotational disks).
    pub rotational: bool,
}

impl DeviceConfig {
    /// A solid-state device of `slots` pages with 512-slot clusters.
    pub fn new(slots: u64, cpus: u32) -> Self {
        Self {
            geometry: Geometry {
                slots,
                cpus,
                ..Geometry::default()
            },
            discard: false,
            rotational: false,
        }
    }
}

/// Occupancy of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Slots holding data (the reverse map's set words, reserved ones excluded).
    pub used: u64,
    /// Slots that can ever be handed out: the device's size
    /// ([`PhysDevice::slots`]) less the header slot and the bad slots (the
    /// unusable tail of a last cluster past the end of the device is not
    /// counted either).
    pub usable: u64,
    /// Clusters per list.
    pub lists: ListCounts,
    /// Metadata memory.
    pub memory: SpaceMemory,
}

/// A physical device's allocator and reverse map.
///
/// ```
/// # #[cfg(feature = "std")] {
/// use vswap_alloc::{Ctx, DeviceConfig, PhysDevice, StdProvider};
/// let dev = PhysDevice::new(DeviceConfig::new(4096, 2), &[], StdProvider::new()).unwrap();
/// let off = dev.alloc(2, 0, 1000, Ctx::NoSleep).unwrap(); // 4 slots for virtual 1000..1004
/// assert_eq!(dev.owner(off + 3).unwrap(), Some(1003));
/// dev.free(off, 4, Some(1000)).unwrap();
/// assert_eq!(dev.owner(off).unwrap(), None);
/// # }
/// ```
pub struct PhysDevice<P: Provider> {
    space: SlotSpace<P, AtomicU32>,
    bad: u64,
}

impl<P: Provider> PhysDevice<P> {
    /// A device with `bad` slots that are never handed out.
    pub fn new(cfg: DeviceConfig, bad: &[u64], provider: P) -> Result<Self> {
        let policy = Policy {
            fixed: true,
            discard: cfg.discard,
            rotational: cfg.rotational,
            addressed: false,
        };
        let mut space = SlotSpace::with_policy(cfg.geometry, policy, provider, RESERVED, bad)?;
        // No pins are handed out: every word in use holds a reference.
        space.own_words();
        let mut distinct = 0;
        for (i, b) in bad.iter().enumerate() {
            if *b != 0 && !bad.iter().take(i).any(|x| x == b) {
                distinct += 1;
            }
        }
        Ok(Self {
            space,
            bad: distinct,
        })
    }

    /// Slots on the device: its size in pages, `geometry().slots` as
    /// configured. When that is not a whole number of clusters, the last
    /// cluster's slots at or past it are never handed out and every offset
    /// at or above it is [`Error::OutOfRange`].
    pub fn slots(&self) -> u64 {
        self.space.geometry().slots
    }

    /// The configuration's geometry.
    pub fn geometry(&self) -> &Geometry {
        self.space.geometry()
    }

    /// Allocate `2^order` naturally aligned device slots on `cpu` for the
    /// virtual slots `owner..owner + 2^order`. Returns the first offset.
    ///
    /// The owners must lie in `1..u32::MAX` ([`Error::OutOfRange`]): 0 marks
    /// a free slot and `u32::MAX` a reserved one, so virtual slot `u32::MAX`
    /// can never have its data on a device.
    pub fn alloc(&self, order: u32, cpu: u32, owner: u32, ctx: Ctx) -> Result<u64> {
        if owner == 0 {
            return Err(Error::OutOfRange);
        }
        if order <= self.geometry().cluster_shift && u64::from(owner) + (1u64 << order) > RESERVED {
            return Err(Error::OutOfRange);
        }
        self.space
            .alloc_with(order, cpu, ctx, u64::from(owner), 1)
            .map(u64::from)
    }

    /// Free `len` slots from `off`, all in one cluster's reach or not: each
    /// must hold data, and if `owner` is given, slot `off + i` must belong to
    /// `owner + i`. All or nothing: nothing is freed if any slot fails the
    /// check (`NotAllocated` for a free or reserved slot, or `WrongState`
    /// for another owner; with several failing slots, the error of the
    /// lowest one). Returns how many slots this call freed; see
    /// [`free_with`](Self::free_with) for frees that race each other.
    pub fn free(&self, off: u64, len: u64, owner: Option<u32>) -> Result<u64> {
        self.free_with(off, len, owner, |_| {})
    }

    /// [`free`](Self::free), calling `freed(offset)` for each slot this call
    /// frees, in offset order (inside the cluster's read-side section: it
    /// must not sleep).
    ///
    /// Each slot is freed by a compare-and-clear of the value the check
    /// expects: with an `owner`, exactly `owner + i`, so when two frees of
    /// the same slots race (a host's double free), each slot is freed by one
    /// of them only, and a slot freed and handed to a new owner in between
    /// is left alone. Without an `owner` there is nothing to compare with
    /// but the value read just before: such a racing double free can free
    /// the slot's next owner. Pass the owner.
    ///
    /// How the check and the clear are done, and what a racing free sees:
    /// - One slot (`len == 1`, every order-0 free): the compare-and-clear
    ///   *is* the check. A slot that a racing free took first answers the
    ///   check's error (`NotAllocated`, or `WrongState` once it has a new
    ///   owner); `Ok(1)` otherwise.
    /// - A run inside one cluster: the check reads every slot, then the
    ///   clears run, in one read-side section. A slot a racing free takes
    ///   between the check and its clear is not counted: the return value
    ///   and the `freed` calls say which slots this call freed (all `len`
    ///   unless such a race took some).
    /// - A run over several clusters: the first cluster is checked, then
    ///   each later one (in its own section, nested in the first's), then
    ///   the first cluster's slots are cleared in the section it was checked
    ///   in, and each later cluster's in a new section; races as above (a
    ///   later cluster that a racing free emptied and tore down meanwhile
    ///   frees nothing here: still `Ok` with the count of what this call
    ///   freed, never an error once a slot was freed).
    ///
    /// `freed` runs inside the read-side section, after the slot's word is
    /// cleared and before the cluster's occupancy drops: it must not sleep
    /// and must not unwind (a panic out of it leaves the slot counted as in
    /// use, so it is never handed out again; review of 2026-12-03).
    ///
    /// # Performance
    /// A single-slot free is one read-side section, one CAS (the clear) and
    /// one RMW on the cluster's lifetime word (its occupancy, in
    /// [`Pin::release`](crate::Pin::release)): 2 locked RMWs, no other load
    /// when the owner is given. (It was two sections, a check load, then
    /// the same 2 RMWs.) A run of `n` slots over `k` clusters is `n` CASes
    /// and `k` occupancy updates (one per cluster run, however long) in
    /// `2k - 1` sections (was `2k`); the check loads are the same.
    pub fn free_with(
        &self,
        off: u64,
        len: u64,
        owner: Option<u32>,
        mut freed: impl FnMut(u64),
    ) -> Result<u64> {
        let end = off.checked_add(len).ok_or(Error::OutOfRange)?;
        if off == 0 || end > self.slots() {
            return Err(Error::OutOfRange);
        }
        if len == 0 {
            return Ok(0);
        }
        let pin = self.space.pin(off as u32)?;
        let base = u64::from(pin.base());
        if len == 1 {
            let w = pin
                .words()
                .get((off - base) as usize)
                .ok_or(Error::OutOfRange)?;
            clear_one(w, owner)?;
            pin.note_free((off - base) as u32);
            freed(off);
            // SAFETY: our CAS turned this allocated word (not 0, not
            // RESERVED) of this cluster to 0, once; counted here only.
            unsafe { pin.release(1) };
            return Ok(1);
        }
        let stop = end.min(base + pin.words().len() as u64);
        check(pin.words(), base, off, stop, off, owner)?;
        // Later clusters: checked before anything is freed, each in its own
        // section (nested in the first cluster's, which is kept for its
        // frees).
        let mut at = stop;
        while at < end {
            let p = self.space.pin(at as u32)?;
            let b = u64::from(p.base());
            let s = end.min(b + p.words().len() as u64);
            check(p.words(), b, at, s, off, owner)?;
            at = s;
        }
        let here = clear(pin.words(), base, off, stop, off, owner, &mut freed);
        // SAFETY: `here` counts the words of this cluster that `clear`
        // turned from an owner to 0 by CAS (reserved and free words
        // excluded; nobody else can set a free word of a device, whose
        // pins are never handed out), each zeroed once.
        unsafe { pin.release(here) };
        let mut total = u64::from(here);
        let mut at = stop;
        while at < end {
            // A later cluster that died since its check (a racing free of
            // the same slots emptied it): nothing of it is this call's to
            // free. Not an error: slots were freed already (found by
            // review; an `Err` here made callers think nothing was).
            let p = match self.space.pin(at as u32) {
                Ok(p) => p,
                Err(_) => {
                    let shift = self.geometry().cluster_shift;
                    at = end.min(((at >> shift) + 1) << shift);
                    continue;
                }
            };
            let b = u64::from(p.base());
            let s = end.min(b + p.words().len() as u64);
            let here = clear(p.words(), b, at, s, off, owner, &mut freed);
            // SAFETY: as above, for this cluster.
            unsafe { p.release(here) };
            total += u64::from(here);
            at = s;
        }
        Ok(total)
    }

    /// The virtual slot whose data device slot `off` holds (`None`: free or
    /// reserved).
    pub fn owner(&self, off: u64) -> Result<Option<u32>> {
        if off >= self.slots() {
            return Err(Error::OutOfRange);
        }
        let pin = match self.space.pin(off as u32) {
            Ok(p) => p,
            Err(Error::NotAllocated) => return Ok(None),
            Err(e) => return Err(e),
        };
        let w = pin
            .words()
            .get((off - u64::from(pin.base())) as usize)
            .ok_or(Error::OutOfRange)?;
        let v = w.get(Ordering::Acquire);
        Ok((v != 0 && v != RESERVED).then_some(v as u32))
    }

    /// Move device slot `off` from virtual slot `from` to `to` (the virtual
    /// layer moved the data's owner, e.g. on swapoff of a direct slot).
    ///
    /// `to` must lie in `1..u32::MAX` ([`Error::OutOfRange`]). Free and
    /// reserved slots have no owner: `from` 0 or `u32::MAX` never matches.
    pub fn set_owner(&self, off: u64, from: u32, to: u32) -> Result<()> {
        if off >= self.slots() || to == 0 || u64::from(to) == RESERVED {
            return Err(Error::OutOfRange);
        }
        let pin = self.space.pin(off as u32)?;
        let w = pin
            .words()
            .get((off - u64::from(pin.base())) as usize)
            .ok_or(Error::OutOfRange)?;
        if from == 0 || u64::from(from) == RESERVED {
            // A CAS from these would hand out a free slot without its
            // reference, or turn a header or bad slot into data.
            let v = w.get(Ordering::Acquire);
            return Err(if v == 0 || v == RESERVED {
                Error::NotAllocated
            } else {
                Error::WrongState
            });
        }
        w.cas(u64::from(from), u64::from(to))
            .map(|_| ())
            .map_err(|v| {
                if v == 0 || v == RESERVED {
                    Error::NotAllocated
                } else {
                    Error::WrongState
                }
            })
    }

    /// Call `f(offset, owner)` for every slot holding data in `off..off + len`.
    pub fn for_each_owner(&self, off: u64, len: u64, mut f: impl FnMut(u64, u32)) {
        let end = off.saturating_add(len).min(self.slots());
        let mut at = off;
        let csize = u64::from(self.geometry().cluster_slots());
        while at < end {
            let stop = end.min((at / csize + 1) * csize);
            if let Ok(pin) = self.space.pin(at as u32) {
                let base = u64::from(pin.base());
                for s in at..stop {
                    if let Some(w) = pin.words().get((s - base) as usize) {
                        let v = w.get(Ordering::Acquire);
                        if v != 0 && v != RESERVED {
                            f(s, v as u32);
                        }
                    }
                }
            }
            at = stop;
        }
    }

    /// The next emptied cluster to discard: device slots
    /// `c * cluster_slots .. (c + 1) * cluster_slots`.
    pub fn take_discard(&self) -> Option<u32> {
        self.space.take_discard()
    }

    /// The host finished discarding cluster `c`.
    pub fn discard_done(&self, c: u32) -> Result<()> {
        self.space.discard_done(c)
    }

    /// Occupancy, lists and memory (walks the live clusters).
    pub fn stats(&self) -> DeviceStats {
        let mut used = 0;
        self.space.for_each_cluster(|pin| {
            used += pin
                .words()
                .iter()
                .filter(|w| {
                    let v = w.get(Ordering::Relaxed);
                    v != 0 && v != RESERVED
                })
                .count() as u64;
        });
        DeviceStats {
            used,
            usable: self.slots() - 1 - self.bad,
            lists: self.space.list_counts(),
            memory: self.space.memory(),
        }
    }

    /// A read-only view of the underlying slot space (for invariant
    /// checks). It hands out no pins: writing a device's words behind its
    /// back (claiming a free word, then freeing it here) would drop a
    /// cluster's references below what it holds.
    ///
    /// ```compile_fail
    /// # use vswap_alloc::{PhysDevice, Provider};
    /// fn rogue<P: Provider>(dev: &PhysDevice<P>) {
    ///     let _ = dev.space().pin(1);
    /// }
    /// ```
    pub fn space(&self) -> DeviceSpace<'_, P> {
        DeviceSpace(&self.space)
    }
}

/// The error a slot that fails a free's check answers: `NotAllocated` for
/// a free or reserved word, `WrongState` for another owner's.
fn refused(v: u64) -> Error {
    if v == 0 || v == RESERVED {
        Error::NotAllocated
    } else {
        Error::WrongState
    }
}

/// The word a free expects in slot `s` of a run from `off` for `owner`:
/// `owner + (s - off)`, or `None` when no owner can be that (0, reserved,
/// or past 32 bits: a 32-bit word would compare its low bits only).
#[inline]
fn expected(owner: u32, off: u64, s: u64) -> Option<u64> {
    let e = u64::from(owner) + (s - off);
    (e != 0 && e < RESERVED).then_some(e)
}

/// Free one word by compare-and-clear: of `owner`, or (no owner) of the
/// allocated value it holds. `Err` (the check's error) if there is none.
#[inline]
fn clear_one(w: &AtomicU32, owner: Option<u32>) -> Result<()> {
    match owner {
        Some(o) => match expected(o, 0, 0) {
            Some(e) => w.cas(e, 0).map(|_| ()).map_err(refused),
            None => Err(refused(w.get(Ordering::Acquire))),
        },
        None => {
            let mut v = w.get(Ordering::Acquire);
            loop {
                if v == 0 || v == RESERVED {
                    return Err(Error::NotAllocated);
                }
                match w.cas(v, 0) {
                    Ok(_) => return Ok(()),
                    Err(x) => v = x,
                }
            }
        }
    }
}

/// The check of a free for the slots `at..stop` of the cluster whose words
/// are `words` (first slot `base`), of a run from `off`.
fn check(
    words: &[AtomicU32],
    base: u64,
    at: u64,
    stop: u64,
    off: u64,
    owner: Option<u32>,
) -> Result<()> {
    for s in at..stop {
        let w = words.get((s - base) as usize).ok_or(Error::OutOfRange)?;
        let v = w.get(Ordering::Acquire);
        if v == 0 || v == RESERVED {
            return Err(Error::NotAllocated);
        }
        if let Some(o) = owner {
            if expected(o, off, s) != Some(v) {
                return Err(Error::WrongState);
            }
        }
    }
    Ok(())
}

/// The clears of a checked free for the slots `at..stop` (as in [`check`]):
/// each by compare-and-clear of the value the check expects, calling
/// `freed` for each slot cleared here. Returns how many.
fn clear(
    words: &[AtomicU32],
    base: u64,
    at: u64,
    stop: u64,
    off: u64,
    owner: Option<u32>,
    freed: &mut impl FnMut(u64),
) -> u32 {
    let mut here = 0;
    for s in at..stop {
        if let Some(w) = words.get((s - base) as usize) {
            let ok = match owner {
                Some(o) => expected(o, off, s).is_some_and(|e| w.cas(e, 0).is_ok()),
                None => {
                    let v = w.get(Ordering::Acquire);
                    v != 0 && v != RESERVED && w.cas(v, 0).is_ok()
                }
            };
            if ok {
                here += 1;
                freed(s);
            }
        }
    }
    here
}

/// A read-only view of a device's slot space, from [`PhysDevice::space`].
pub struct DeviceSpace<'a, P: Provider>(&'a SlotSpace<P, AtomicU32>);

impl<P: Provider> Clone for DeviceSpace<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P: Provider> Copy for DeviceSpace<'_, P> {}

impl<P: Provider> DeviceSpace<'_, P> {
    /// The state of cluster `c` ([`SlotSpace::cluster_state`]).
    pub fn cluster_state(&self, c: u32) -> ClusterState {
        self.0.cluster_state(c)
    }
    /// How many clusters each list holds ([`SlotSpace::list_counts`]).
    pub fn list_counts(&self) -> ListCounts {
        self.0.list_counts()
    }
    /// Memory held, by kind ([`SlotSpace::memory`]).
    pub fn memory(&self) -> SpaceMemory {
        self.0.memory()
    }
    /// The space's policy.
    pub fn policy(&self) -> &Policy {
        self.0.policy()
    }
}
