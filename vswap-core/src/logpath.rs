//! The engine's path through the flash log device.
//!
//! Pages that need a device slot are *staged* at writeout (their virtual slot
//! keeps no backend, and its folio stays in the swap cache) and get device
//! offsets only when the host flushes a whole segment: [`Engine::log_flush`]
//! names the segment, the host writes each `(owner, offset)` of
//! [`LogDevice::live`] on it, and [`Engine::log_commit`] stores each owner's
//! new backend and seals the segment. An owner that died or changed before the
//! commit loses gracefully: its new offset is invalidated at once.
//!
//! zswap pages are written back to the log the same way, keeping their
//! virtual slot (no page table changes): [`Engine::log_writeback_begin`] locks
//! the slot and stages it; the host writes its page at the flush from the
//! zswap object (decompressing it), and the commit replaces `Zswap(h)` by the
//! new offset with the CAS that also unlocks, which releases the zswap object.
//!
//! # A staged owner's states
//! The host stream's staged list (and, after a flush, the segment's reverse
//! map until the commit) holds owners of two kinds:
//!
//! ```text
//!  writeout:   live, cached, unlocked, None --log_writeout--> staged
//!              staged --flush--> open --log_commit: store(None -> Phys)--> written
//!              staged --cancel (LogDevice::cancel, the host)--> not staged
//!
//!  writeback:  live, unlocked, Zswap(h) --log_writeback_begin (lock)--> staged
//!              staged --log_writeback_abort (unlock)--> Zswap(h), unlocked
//!              staged --flush--> open
//!              open --log_commit: commit_unlock(Zswap(h) -> Phys)--> written,
//!                                 h released
//!              staged/open --last put or cache clear--> zombie (locked)
//!              zombie --log_commit: Gone--> freed (h released once by the
//!                                 map), offset invalidated, charge returned
//!              zombie --log_writeback_abort--> freed (h released once)
//! ```
//!
//! [`Engine::log_commit`] tells the kinds apart by the slot's word alone: a
//! staged owner that is **locked with a `Zswap` backend** is a staged
//! writeback; anything else takes the writeout path. Why this is sound under
//! the host protocol below:
//! - A staged writeout's slot stays live and cached until its commit (the
//!   folio is under writeback and stays in the swap cache), so the slot cannot
//!   die and be reused meanwhile, and its backend stays `None`: the host does
//!   not write the page out again while it is staged, and nothing else stores
//!   a backend into a slot with no backend. So it never shows `Zswap`.
//! - A staged writeback holds the slot's lock from its begin until its commit
//!   or abort: no other mover (writeback, evacuation, GC, swapoff) can take
//!   the lock, [`store`](crate::VswapMap::store) refuses a locked slot,
//!   and only the lock holder commits. So its backend stays `Zswap(h)` with
//!   the very handle staged, and a slot that dies meanwhile stays a (locked)
//!   zombie, not reused, until the commit frees it. A second begin on the slot
//!   answers `Busy`, so an owner is staged at most once.
//!
//! **What the host must not do** while a writeback is staged or flushed and
//! not yet committed: unlock the slot itself ([`VswapMap::unlock`](crate::VswapMap::unlock)),
//! or end it through [`Engine::writeback_commit`]/[`Engine::writeback_abort`]
//! or [`LogDevice::cancel`] (only [`Engine::log_writeback_abort`] before the
//! flush and [`Engine::log_commit`] after it end one; anything else leaves a
//! locked slot in the list, whose commit would then steal another holder's
//! lock, and leaks the charge); run a lock-waiting path on the slot from the
//! thread that must commit it (a slot locked by a staged writeback waits for
//! the commit: swap-in reads the zswap object without the lock). For staged
//! writeouts, as before: keep the folio in the swap cache until the commit and
//! do not write the page out again. [`Engine::log_gc`] may run meanwhile: it
//! only waits for owners whose offset in the victim is still theirs, and a
//! slot in zswap has none.
//!
//! Garbage collection ([`Engine::log_gc`]) relocates live data by taking the
//! owner's lock, checking its backend still points into the victim, and, once
//! the GC stream is flushed and the host has copied the page, committing the
//! new location with the same CAS that unlocks; the old offset is invalidated
//! through the map's release path only after that commit.

use vswap_alloc::sync::spin_hint;
use vswap_alloc::{Error, Flush, Flushed, GcPass, GcStep, LogDevice, Provider, Result, Stream};

use crate::engine::{ChargePolicy, Engine, EngineHost};
use crate::map::Put;
use crate::word::Backend;

impl<P: Provider, H: EngineHost> Engine<P, H> {
    fn log(&self) -> Result<(u8, &LogDevice<P>)> {
        self.map
            .host()
            .log
            .as_ref()
            .map(|(id, l)| (*id, l))
            .ok_or(Error::NoDevice)
    }

    /// The log device, if the engine has one (statistics, write amplification).
    pub fn log_device(&self) -> Option<&LogDevice<P>> {
        self.log().ok().map(|(_, l)| l)
    }

    /// Writeout through the log device: like [`Engine::writeout`], but a page
    /// that needs a device slot is staged and `Ok(None)` is returned; it gets
    /// its offset at the next [`log_flush`](Self::log_flush). `Busy` when a
    /// whole segment is staged already: flush first. `BadLength` for a page
    /// that is not exactly [`EngineConfig::page_size`](crate::EngineConfig::page_size)
    /// bytes (nothing changed).
    pub fn log_writeout(&self, slot: u32, page: &[u8]) -> Result<Option<Backend>> {
        let (_, log) = self.log()?;
        let e = self.map.lookup(slot)?;
        if e.backend != Backend::None || !e.cached {
            return Err(Error::WrongState);
        }
        match self.classify(slot, page)? {
            Some(b) => match self.map.store(slot, Backend::None, b) {
                Ok(()) => Ok(Some(b)),
                Err(err) => {
                    if let Backend::Zswap(h) = b {
                        self.host().release_zswap(h);
                    }
                    Err(err)
                }
            },
            None => {
                self.charge_phys(slot)?;
                if let Err(err) = log.stage(slot) {
                    self.uncharge_phys(slot);
                    return Err(err);
                }
                Ok(None)
            }
        }
    }

    /// Give the staged pages offsets: one whole segment, padded when `mode`
    /// is [`Flush::Now`]. The host writes every `(owner, offset)` of
    /// `log_device().live(segment)` and then calls [`log_commit`](Self::log_commit).
    pub fn log_flush(&self, mode: Flush) -> Result<Option<Flushed>> {
        let (_, log) = self.log()?;
        log.flush(vswap_alloc::Stream::Host, mode)
    }

    /// Start a zswap writeback to the log device, keeping the virtual slot:
    /// lock `slot`, check it is in zswap, charge its device slot (as
    /// [`writeback_begin`](Self::writeback_begin)) and stage it in the host
    /// stream. The slot stays locked while staged and its data stays in zswap
    /// (a lock-free lookup shows `Zswap(h)`); at the flush the host writes it
    /// from the zswap object, and [`log_commit`](Self::log_commit) commits it
    /// and unlocks (or [`log_writeback_abort`](Self::log_writeback_abort)
    /// takes it back before the flush). See the module documentation for the
    /// protocol.
    ///
    /// Errors: `NoDevice` without a log device; `Busy` if the slot is locked
    /// (by anyone, a staged writeback of it included) or a whole segment is
    /// staged already (flush first); `NotAllocated`, `OutOfRange`;
    /// `WrongState` if it is not in zswap; `NoSpace` if the charge is
    /// refused. On any error nothing changed (the lock is dropped again).
    pub fn log_writeback_begin(&self, slot: u32) -> Result<()> {
        let (_, log) = self.log()?;
        self.map.lock(slot)?;
        let r = (|| {
            let Backend::Zswap(_) = self.map.lookup(slot)?.backend else {
                return Err(Error::WrongState);
            };
            self.charge_phys(slot)?;
            if let Err(e) = log.stage(slot) {
                self.uncharge_phys(slot);
                return Err(e);
            }
            Ok(())
        })();
        if r.is_err() {
            let _ = self.map.unlock(slot);
        }
        r
    }

    /// Take back a writeback staged by
    /// [`log_writeback_begin`](Self::log_writeback_begin) before its flush:
    /// unstage it, give back its charge, unlock. `Put::Freed` if the slot
    /// died while staged (the unlock frees it and releases its zswap object).
    ///
    /// Errors (nothing changed): `NoDevice`; `NotAllocated`, `OutOfRange`;
    /// `NotLocked` if the slot is not locked; `WrongState` if it is not a
    /// staged writeback (not in zswap, or not staged: never begun, already
    /// aborted, or flushed already, when only the commit ends it).
    pub fn log_writeback_abort(&self, slot: u32) -> Result<Put> {
        let (_, log) = self.log()?;
        let e = self.map.lookup(slot)?;
        if !e.locked {
            return Err(Error::NotLocked);
        }
        if !matches!(e.backend, Backend::Zswap(_)) {
            return Err(Error::WrongState);
        }
        match log.cancel(Stream::Host, slot) {
            Ok(()) => {}
            Err(Error::NotAllocated) => return Err(Error::WrongState),
            Err(err) => return Err(err),
        }
        self.uncharge_phys(slot);
        self.map.unlock(slot)
    }

    /// The host wrote the flushed segment: store each owner's new location,
    /// invalidate the offsets of owners that died or changed meanwhile, and
    /// seal the segment. Returns how many committed.
    ///
    /// A staged writeout whose slot someone else holds locked at this moment
    /// (a GC check or a swap-in, however briefly) is not committed either
    /// (`store` refuses a locked slot and this call does not wait): the count
    /// says how many went through, and the host checks each owner's backend
    /// afterwards and keeps the folio of any still without one (to write it
    /// out again), as `vswap-tool` does.
    ///
    /// A staged writeout (no backend) gets its offset by compare-and-set from
    /// no backend; a staged writeback (locked, in zswap: see the module
    /// documentation) by the CAS that also unlocks, which releases its zswap
    /// object, or, if the slot died under the lock, the offset is invalidated
    /// and the slot freed (`Gone`).
    pub fn log_commit(&self, f: &Flushed) -> Result<u32> {
        let (id, log) = self.log()?;
        let mut committed = 0;
        for (owner, off) in log.live(f.segment())? {
            let new = Backend::Phys { dev: id, off };
            if let Ok(e) = self.map.lookup(owner) {
                if let (true, Backend::Zswap(h)) = (e.locked, e.backend) {
                    if self.log_writeback_commit(owner, h, new) {
                        committed += 1;
                    } else {
                        let _ = log.invalidate(off);
                    }
                    continue;
                }
            }
            match self.map.store(owner, Backend::None, new) {
                Ok(()) => committed += 1,
                Err(_) => {
                    self.uncharge_phys(owner);
                    let _ = log.invalidate(off);
                }
            }
        }
        log.seal(f.segment())?;
        Ok(committed)
    }

    /// Commit one staged writeback (the caller invalidates `new`'s offset on
    /// `false`): as [`writeback_commit`](Self::writeback_commit), whose charge
    /// handling it follows.
    fn log_writeback_commit(&self, owner: u32, h: u64, new: Backend) -> bool {
        // The slot is ours (locked) until the commit: read its charge now, a
        // lost commit frees it.
        let charged = match self.cfg.charge {
            ChargePolicy::PhysicalOnly => self.memcg_of(owner),
            _ => None,
        };
        match self.map.commit_unlock(owner, Backend::Zswap(h), new) {
            Ok(()) => true,
            Err(e) => {
                if let Some(id) = charged {
                    self.host().uncharge(id, 1);
                }
                if e != Error::Gone {
                    let _ = self.map.unlock(owner);
                }
                false
            }
        }
    }

    /// One garbage-collection pass. `copy(owner, from, to)` copies the page
    /// of `owner` on the log device from offset `from` to `to`. Entries of a
    /// victim stay locked from the check until their move commits (possibly in
    /// a later pass, when the GC stream fills). Waits for a slot's lock held
    /// by someone else, so must not be called while the caller holds one.
    pub fn log_gc(&self, mut copy: impl FnMut(u32, u64, u64)) -> Result<GcPass> {
        let (id, log) = self.log()?;
        log.gc_pass(|step| match step {
            GcStep::Check { owner, off } => {
                loop {
                    match self.map.lock(owner) {
                        Ok(()) => break,
                        // The offset was released meanwhile (its owner moved,
                        // e.g. written out again to zswap, whose lock a
                        // staged log writeback may hold until its commit):
                        // nothing to wait for.
                        Err(Error::Busy) if log.owner(off) != Ok(Some(owner)) => return false,
                        Err(Error::Busy) => spin_hint(),
                        Err(_) => return false, // freed: its invalidate happened
                    }
                }
                let here = self.map.lookup(owner).map(|e| e.backend);
                if here == Ok(Backend::Phys { dev: id, off }) {
                    true
                } else {
                    let _ = self.map.unlock(owner);
                    false
                }
            }
            GcStep::Write(fl) => {
                let Ok(live) = log.live(fl.segment()) else {
                    return false;
                };
                for (owner, to) in live {
                    let from = match self.map.lookup(owner).map(|e| e.backend) {
                        Ok(Backend::Phys { dev, off }) if dev == id => off,
                        _ => {
                            let _ = log.invalidate(to);
                            let _ = self.map.unlock(owner);
                            continue;
                        }
                    };
                    copy(owner, from, to);
                    let old = Backend::Phys { dev: id, off: from };
                    match self
                        .map
                        .commit_unlock(owner, old, Backend::Phys { dev: id, off: to })
                    {
                        Ok(()) => {}
                        Err(Error::Gone) => {
                            let _ = log.invalidate(to);
                        }
                        Err(_) => {
                            let _ = log.invalidate(to);
                            let _ = self.map.unlock(owner);
                        }
                    }
                }
                true
            }
        })
    }
}
