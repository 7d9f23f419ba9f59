//! Writeback of a zswap page to a device: begin (lock, reserve), commit
//! (one CAS that stores the device location and unlocks), abort.

use super::*;

/// A zswap writeback in progress: the slot is locked; the host decompresses
/// `handle`, writes it to `(dev, off)` and calls [`Engine::writeback_commit`]
/// (or [`Engine::writeback_abort`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Writeback {
    /// The virtual slot.
    pub slot: u32,
    /// Its zswap handle.
    pub handle: u64,
    /// Destination device.
    pub dev: u8,
    /// Destination offset.
    pub off: u64,
}

impl<P: Provider, H: EngineHost> Engine<P, H> {
    /// Start a zswap writeback of `slot`: lock it, check it is in zswap, give
    /// it a device slot.
    ///
    /// Errors (nothing changed, the slot unlocked): `BadCpu` for a CPU
    /// outside the engine's (see [`EngineConfig`]); `OutOfRange`,
    /// `NotAllocated`; `Busy` if the slot is locked; `WrongState` if it is
    /// not in zswap; `NoSpace` (every device full, or the charge refused);
    /// `DiscardPending`.
    pub fn writeback_begin(&self, slot: u32, cpu: u32) -> Result<Writeback> {
        self.check_cpu(cpu)?;
        self.map.lock(slot)?;
        let r = (|| {
            let Backend::Zswap(handle) = self.map.lookup(slot)?.backend else {
                return Err(Error::WrongState);
            };
            self.charge_phys(slot)?;
            match self.alloc_phys(0, cpu, slot, Ctx::NoSleep) {
                Ok((dev, off)) => Ok(Writeback {
                    slot,
                    handle,
                    dev,
                    off,
                }),
                Err(e) => {
                    self.uncharge_phys(slot);
                    Err(e)
                }
            }
        })();
        if r.is_err() {
            let _ = self.map.unlock(slot);
        }
        r
    }

    /// The page is on the device: commit, unlock, free the zswap object.
    /// `Gone` if the slot died meanwhile (the device slot is given back).
    /// A writeback that already ended changes nothing (see
    /// [`writeback_abort`](Self::writeback_abort)).
    pub fn writeback_commit(&self, w: Writeback) -> Result<()> {
        self.in_flight(&w)?;
        // The slot is ours (locked) until the commit: read its charge now, a
        // lost commit frees it.
        let charged = match self.cfg.charge {
            ChargePolicy::PhysicalOnly => self.memcg_of(w.slot),
            _ => None,
        };
        match self.map.commit_unlock(
            w.slot,
            Backend::Zswap(w.handle),
            Backend::Phys {
                dev: w.dev,
                off: w.off,
            },
        ) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.free_phys(w.dev, w.off, w.slot);
                if let Some(id) = charged {
                    self.host().uncharge(id, 1);
                }
                if e != Error::Gone {
                    let _ = self.map.unlock(w.slot);
                }
                Err(e)
            }
        }
    }

    /// Give up a writeback: free the device slot, unlock.
    ///
    /// A [`Writeback`] that already ended (committed, aborted or lost) is
    /// refused with `NotAllocated`, `NotLocked` or `WrongState` and changes
    /// nothing; one identical to a writeback still in flight cannot be told
    /// from it.
    pub fn writeback_abort(&self, w: Writeback) -> Result<Put> {
        self.in_flight(&w)?;
        self.free_phys(w.dev, w.off, w.slot);
        self.uncharge_phys(w.slot);
        self.map.unlock(w.slot)
    }

    /// Is `w` still in flight: its slot locked, in zswap with `w.handle`,
    /// and `(w.dev, w.off)` reserved for it? A token is `Copy`: a second
    /// commit or abort used to free the device slot its slot had moved to.
    pub(super) fn in_flight(&self, w: &Writeback) -> Result<()> {
        let e = self.map.lookup(w.slot)?;
        if !e.locked {
            return Err(Error::NotLocked);
        }
        if e.backend != Backend::Zswap(w.handle)
            || self.devices().pin(w.dev)?.owner(w.off)? != Some(w.slot)
        {
            return Err(Error::WrongState);
        }
        Ok(())
    }
}
