//! Swapoff of the virtual layer: every slot's data brought back to memory
//! through the host, outside every read-side section.

use super::*;

/// One slot of a swapoff of the virtual layer, for the host to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtMove {
    /// Put the data of virtual `slot` (wherever `backend` says: a device slot
    /// to read, a zswap object to decompress, nothing for zero/same-filled or
    /// an in-memory folio) into direct slot `to` of the direct device, and make
    /// every page table and the swap cache refer to `to` instead of `slot`.
    ToDirect {
        /// The virtual slot.
        slot: u32,
        /// Its backend.
        backend: Backend,
        /// The direct slot it moves to.
        to: u32,
    },
    /// Bring the data of `slot` into memory and make every page table map
    /// the folio (a full swap-in); nothing will refer to `slot` afterwards.
    ToMemory {
        /// The virtual slot.
        slot: u32,
        /// Its backend.
        backend: Backend,
    },
}

impl<P: Provider, H: EngineHost> Engine<P, H> {
    /// Swapoff of the virtual layer itself: move every virtual slot to a slot
    /// of the direct device `to` (its count, cache flag and zero/same-filled
    /// backend carried over), or to memory when `to` is `None`; `io` moves the
    /// data and rewrites the page tables. Each virtual slot is locked for its
    /// move and freed afterwards (its backend released). Slots locked by
    /// someone else are retried on a later pass. Returns how many moved.
    ///
    /// `cpu` is the engine's (see [`EngineConfig`]: `BadCpu` outside it,
    /// before anything moves); a direct device with fewer CPU numbers gets
    /// `cpu % its cpus`. `Busy` after a pass that made no progress while
    /// slots locked by someone else were left. On every error the
    /// [`Stopped`] carries how many slots moved before it (they stay moved:
    /// freed here, living at their new place).
    pub fn swapoff_virtual(
        &self,
        to: Option<&dyn crate::swapops::SwapOps>,
        cpu: u32,
        mut io: impl FnMut(VirtMove) -> Result<()>,
    ) -> Result<u64, Stopped<u64>> {
        let mut moved = 0;
        if let Err(error) = self.check_cpu(cpu) {
            return Err(Stopped { error, done: 0 });
        }
        let cpu = to.map_or(cpu, |d| cpu % d.cpus().max(1));
        loop {
            let mut busy = 0u64;
            let mut progress = false;
            let mut failure = None;
            self.map.for_each_slot(|slot| {
                if failure.is_some() {
                    return;
                }
                match self.swapoff_one(slot, to, cpu, &mut io) {
                    Ok(true) => {
                        moved += 1;
                        progress = true;
                    }
                    Ok(false) => progress = true,
                    Err(Error::Busy) => busy += 1,
                    Err(e) => failure = Some(e),
                }
            });
            if let Some(error) = failure {
                return Err(Stopped { error, done: moved });
            }
            if busy == 0 {
                return Ok(moved);
            }
            if !progress {
                return Err(Stopped {
                    error: Error::Busy,
                    done: moved,
                });
            }
        }
    }

    /// After a mover's `lock` said `NotAllocated`: `Ok(false)` if the slot is
    /// free, `Busy` if it died under someone else's lock (a zombie, freed by
    /// that holder's unlock). Counting a zombie as progress would make a pass
    /// loop that also meets a busy slot go round for ever.
    pub(super) fn gone_or_busy(&self, slot: u32) -> Result<bool> {
        match self.map.lookup(slot) {
            Ok(e) if e.locked => Err(Error::Busy),
            _ => Ok(false),
        }
    }

    pub(super) fn swapoff_one(
        &self,
        slot: u32,
        to: Option<&dyn crate::swapops::SwapOps>,
        cpu: u32,
        io: &mut impl FnMut(VirtMove) -> Result<()>,
    ) -> Result<bool> {
        match self.map.lock(slot) {
            Ok(()) => {}
            Err(Error::NotAllocated) => return self.gone_or_busy(slot),
            Err(e) => return Err(e),
        }
        let e = match self.map.lookup(slot) {
            Ok(e) => e,
            Err(err) => {
                let _ = self.map.unlock(slot);
                return Err(err);
            }
        };
        let r = (|| {
            match to {
                Some(d) => {
                    let new = d.alloc(0, cpu, Ctx::NoSleep)?;
                    let carry = match e.backend {
                        Backend::Zero | Backend::Same(_) => e.backend,
                        _ => Backend::None,
                    };
                    let setup = (|| {
                        if e.count > 0 {
                            d.dup(new, e.count, Ctx::NoSleep)?;
                        }
                        if carry != Backend::None {
                            d.store(new, Backend::None, carry)?;
                        }
                        io(VirtMove::ToDirect {
                            slot,
                            backend: e.backend,
                            to: new,
                        })
                    })();
                    if let Err(err) = setup {
                        // Undo the direct slot: drop what we gave it.
                        if e.count > 0 {
                            let _ = d.put(new, e.count);
                        }
                        let _ = d.cache_clear(new, 0, Ctx::NoSleep);
                        return Err(err);
                    }
                    if !e.cached {
                        d.cache_clear(new, 0, Ctx::NoSleep)?;
                    }
                }
                None => io(VirtMove::ToMemory {
                    slot,
                    backend: e.backend,
                })?,
            }
            Ok(())
        })();
        if let Err(err) = r {
            let _ = self.map.unlock(slot);
            return Err(err);
        }
        // Nothing refers to the virtual slot any more: drop its references
        // (it becomes a zombie under our lock) and unlock, which frees it.
        if e.cached {
            let _ = self.map.cache_clear(slot, 0, Ctx::NoSleep);
        }
        if e.count > 0 {
            let _ = self.map.put(slot, e.count);
        }
        self.map.unlock(slot)?;
        Ok(true)
    }
}
