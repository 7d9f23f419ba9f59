//! Evacuation of a device (its swapoff) or relocation: pass by pass
//! through the reverse map, each move locked, checked and committed with
//! one CAS.

use super::*;

/// One move of an evacuation, for the host to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Copy the page of `slot` from `(from_dev, from)` to `(to_dev, to)`.
    Copy {
        /// The virtual slot.
        slot: u32,
        /// Source device.
        from_dev: u8,
        /// Source offset.
        from: u64,
        /// Destination device.
        to_dev: u8,
        /// Destination offset.
        to: u64,
    },
    /// Read the page of `slot` from `(dev, off)` into a swap cache folio and
    /// return its cookie (non-zero); the slot then lives in memory.
    Read {
        /// The virtual slot.
        slot: u32,
        /// Source device.
        dev: u8,
        /// Source offset.
        off: u64,
    },
    /// The folio read by the `Read` just before (cookie `cookie`) was not
    /// taken into the swap cache: the slot already had a folio there (which
    /// holds its data), or the slot died meanwhile. The host frees it; the
    /// result of `io` for this move is ignored.
    Drop {
        /// The virtual slot.
        slot: u32,
        /// The cookie `io` returned for the `Read`.
        cookie: u64,
    },
}

/// A pass-by-pass move ([`Engine::evacuate`], [`Engine::swapoff_virtual`])
/// that stopped with an error part-way: `done` says what it did before the
/// error (every move counted there committed and stays committed; the slot
/// that failed stays where it was). Converts into its [`Error`] for `?`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped<T> {
    /// Why it stopped.
    pub error: Error,
    /// What it did before.
    pub done: T,
}

impl<T> From<Stopped<T>> for Error {
    fn from(s: Stopped<T>) -> Error {
        s.error
    }
}

/// What an evacuation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evacuated {
    /// Slots moved.
    pub moved: u64,
    /// Slots freed while being moved (nothing left to move).
    pub lost_to_free: u64,
    /// Passes over the device.
    pub passes: u32,
}

impl<P: Provider, H: EngineHost> Engine<P, H> {
    /// Move every slot off device `dev` (swapoff) through its reverse map: to
    /// device `to`, or to memory when `to` is `None`. `io` carries out each
    /// [`Move`] (returning the folio cookie for a `Read`, anything for a
    /// `Copy`); an `Err` from it leaves that slot where it was and stops.
    /// `BadConfig` if `to` is `dev` itself; `BadCpu` for a CPU outside the
    /// engine's (see [`EngineConfig`]), also when moving to memory. `Busy`
    /// after a pass that made no progress while slots locked by someone else
    /// were left (a device slot reserved by [`alloc_phys`](Self::alloc_phys)
    /// that its owner does not refer to yet is skipped, and is not
    /// progress).
    ///
    /// On every error the [`Stopped`] carries what was done before it (all
    /// zero for the argument checks above).
    pub fn evacuate(
        &self,
        dev: u8,
        to: Option<u8>,
        cpu: u32,
        io: impl FnMut(Move) -> Result<u64>,
    ) -> Result<Evacuated, Stopped<Evacuated>> {
        let mut done = Evacuated::default();
        match self.evacuate_passes(dev, to, cpu, io, &mut done) {
            Ok(()) => Ok(done),
            Err(error) => Err(Stopped { error, done }),
        }
    }

    pub(super) fn evacuate_passes(
        &self,
        dev: u8,
        to: Option<u8>,
        cpu: u32,
        mut io: impl FnMut(Move) -> Result<u64>,
        done: &mut Evacuated,
    ) -> Result<()> {
        if to == Some(dev) {
            // Every pass would move every slot again (for ever, beside a
            // busy one).
            return Err(Error::BadConfig);
        }
        self.check_cpu(cpu)?;
        let slots = self.devices().pin(dev)?.slots();
        loop {
            done.passes += 1;
            let mut left = 0u64;
            let mut progress = false;
            let mut failure = None;
            let mut batch = [(0u64, 0u32); 64];
            let mut at = 0;
            while at < slots && failure.is_none() {
                let mut n = 0;
                let next = (at + batch.len() as u64).min(slots);
                self.devices()
                    .pin(dev)?
                    .for_each_owner(at, next - at, |off, owner| {
                        if let Some(b) = batch.get_mut(n) {
                            *b = (off, owner);
                            n += 1;
                        }
                    });
                at = next;
                for &(off, owner) in batch.get(..n).unwrap_or(&[]) {
                    match self.evacuate_one(dev, off, owner, to, cpu, &mut io) {
                        Ok(true) => {
                            done.moved += 1;
                            progress = true;
                        }
                        Ok(false) => {
                            // Freed or moved meanwhile: its device slot goes
                            // back. If it is still reserved for `owner` (a
                            // free still releasing it, or an `alloc_phys`
                            // the host has not stored), that is not
                            // progress: counted as such, an orphaned
                            // reservation beside a slot that stays locked
                            // made the pass loop spin for ever.
                            done.lost_to_free += 1;
                            let reserved = self
                                .devices()
                                .pin(dev)
                                .is_ok_and(|d| d.owner(off) == Ok(Some(owner)));
                            if !reserved {
                                progress = true;
                            }
                        }
                        Err(Error::Busy) => left += 1,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if left == 0 {
                return Ok(());
            }
            if !progress {
                return Err(Error::Busy);
            }
        }
    }

    /// Move one slot; `Ok(false)` if it was freed (or moved) meanwhile.
    pub(super) fn evacuate_one(
        &self,
        dev: u8,
        off: u64,
        owner: u32,
        to: Option<u8>,
        cpu: u32,
        io: &mut impl FnMut(Move) -> Result<u64>,
    ) -> Result<bool> {
        match self.map.lock(owner) {
            Ok(()) => {}
            Err(Error::NotAllocated) => return self.gone_or_busy(owner),
            Err(e) => return Err(e),
        }
        let here = Backend::Phys { dev, off };
        let unlock = |r| {
            let _ = self.map.unlock(owner);
            r
        };
        match self.map.lookup(owner) {
            Ok(e) if e.backend == here => {}
            Ok(_) => return unlock(Ok(false)),
            Err(e) => return unlock(Err(e)),
        }
        match to {
            Some(t) => {
                let d = match self.devices().pin(t) {
                    Ok(d) => d,
                    Err(e) => return unlock(Err(e)),
                };
                let new = match d.alloc(0, cpu, owner, Ctx::NoSleep) {
                    Ok(o) => o,
                    Err(e) => return unlock(Err(e)),
                };
                let mv = Move::Copy {
                    slot: owner,
                    from_dev: dev,
                    from: off,
                    to_dev: t,
                    to: new,
                };
                if let Err(e) = io(mv) {
                    drop(d);
                    self.free_phys(t, new, owner);
                    return unlock(Err(e));
                }
                drop(d);
                match self
                    .map
                    .commit_unlock(owner, here, Backend::Phys { dev: t, off: new })
                {
                    Ok(()) => Ok(true),
                    Err(Error::Gone) => {
                        self.free_phys(t, new, owner);
                        Ok(false)
                    }
                    Err(e) => {
                        self.free_phys(t, new, owner);
                        unlock(Err(e))
                    }
                }
            }
            None => {
                let cookie = match io(Move::Read {
                    slot: owner,
                    dev,
                    off,
                }) {
                    Ok(c) => c,
                    Err(e) => return unlock(Err(e)),
                };
                let added = self.map.cache_add(owner, cookie, Ctx::NoSleep);
                if added.is_err() {
                    // The host's folio is not the slot's: give it back.
                    let _ = io(Move::Drop {
                        slot: owner,
                        cookie,
                    });
                }
                match added {
                    // A folio already in the swap cache holds the data.
                    Ok(()) | Err(Error::WrongState) => {}
                    // The last reference went while we held the lock (a
                    // zombie): the unlock frees it, as a lost commit would.
                    Err(Error::NotAllocated) => return unlock(Ok(false)),
                    Err(e) => return unlock(Err(e)),
                }
                let charged = self.memcg_of(owner);
                match self.map.commit_unlock(owner, here, Backend::None) {
                    Ok(()) => {
                        // The device slot went back: so does its charge.
                        if let Some(id) = charged {
                            if self.cfg.charge == ChargePolicy::PhysicalOnly {
                                self.host().uncharge(id, 1);
                            }
                        }
                        Ok(true)
                    }
                    Err(Error::Gone) => Ok(false),
                    Err(e) => unlock(Err(e)),
                }
            }
        }
    }
}
