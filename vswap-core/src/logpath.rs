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
//! Garbage collection ([`Engine::log_gc`]) relocates live data by taking the
//! owner's lock, checking its backend still points into the victim, and, once
//! the GC stream is flushed and the host has copied the page, committing the
//! new location with the same CAS that unlocks; the old offset is invalidated
//! through the map's release path only after that commit.

use vswap_alloc::sync::spin_hint;
use vswap_alloc::{Error, Flush, Flushed, GcPass, GcStep, LogDevice, Provider, Result};

use crate::engine::{Engine, EngineHost};
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
    /// whole segment is staged already: flush first.
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

    /// The host wrote the flushed segment: store each owner's new location
    /// (from no backend), invalidate the offsets of owners that died or
    /// changed meanwhile, and seal the segment. Returns how many committed.
    pub fn log_commit(&self, f: &Flushed) -> Result<u32> {
        let (id, log) = self.log()?;
        let mut committed = 0;
        for (owner, off) in log.live(f.segment())? {
            match self
                .map
                .store(owner, Backend::None, Backend::Phys { dev: id, off })
            {
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
