//! The map's host inside the engine: device slots the map frees go back to
//! their device table (owner-checked, coalesced into runs) before the
//! engine's host hears of them.

use super::*;

/// The map's host inside the engine: frees device slots in the device table,
/// then tells the engine's host.
pub struct Router<P: Provider, H: EngineHost> {
    pub(crate) devices: Devices<P>,
    pub(super) charge: ChargePolicy,
    /// The flash log device, if any, and its device number.
    pub(crate) log: Option<(u8, LogDevice<P>)>,
    pub(super) host: H,
}

impl<P: Provider, H: EngineHost> Host for Router<P, H> {
    const WANTS_FREED: bool = true;

    /// Every free, wherever it happens (a put, a cache clear, the unlock of a
    /// slot that died locked, a lost move), gives back the slot's charge.
    fn slot_freed(&self, _slot: u32, backend: Backend, memcg: Option<u16>) {
        let Some(id) = memcg.filter(|id| *id != NO_MEMCG) else {
            return;
        };
        let charged = match self.charge {
            ChargePolicy::None => false,
            ChargePolicy::EverySlot => true,
            ChargePolicy::PhysicalOnly => matches!(backend, Backend::Phys { .. }),
        };
        if charged {
            self.host.uncharge(id, 1);
        }
    }

    fn release_zswap(&self, handle: u64) {
        self.host.release_zswap(handle);
    }

    /// The map never calls this on the router ([`Host::OWNED_RELEASE`]): a
    /// release that names no owner frees nothing and reports nothing, so
    /// that no caller can free a device slot without the owner check.
    fn release_phys(&self, _dev: u8, _off: u64, _len: u64) {}

    const OWNED_RELEASE: bool = true;

    /// Frees each device slot `off + i` only if its reverse-map owner is
    /// still `slot + i` (compare-and-clear), and reports exactly the ones
    /// freed to [`EngineHost::released_phys`] (in runs). One that fails the
    /// check (a location the engine never gave to that slot) is left alone:
    /// it belongs to someone else, or to nobody.
    fn release_phys_owned(&self, slot: u32, dev: u8, off: u64, len: u64, _: MapOnly) {
        self.free_owned(dev, off, len, slot);
    }

    /// A device slot may be stored into `slot` only if it is allocated and
    /// its reverse-map owner is `slot` (as [`Engine::alloc_phys`] and the
    /// log device's flush leave it): `NoDevice` for a device that is not
    /// there, `OutOfRange` for an offset beyond it, `NotAllocated` for a
    /// free (or reserved) device slot, `WrongState` for another slot's.
    ///
    /// The owner is a virtual slot number, with no generation (as page
    /// tables carry none): in the short window where a freed slot's device
    /// slot waits for a batch's release (`put_many`, `put_range` release at
    /// the end of each cluster) and the virtual slot has already been
    /// handed to a new owner, that new owner storing the stale location
    /// passes this check, and the release then frees the device slot under
    /// it. Only a host storing a location it was not given can get there.
    fn check_phys(&self, slot: u32, dev: u8, off: u64) -> Result<()> {
        let owner = match &self.log {
            Some((id, log)) if *id == dev => log.owner(off)?,
            _ => self.devices.pin(dev)?.owner(off)?,
        };
        match owner {
            Some(o) if o == slot => Ok(()),
            Some(_) => Err(Error::WrongState),
            None => Err(Error::NotAllocated),
        }
    }
}

impl<P: Provider, H: EngineHost> Router<P, H> {
    /// Free device slots `off..off + len` of `dev` that belong to virtual
    /// slots `owner..owner + len`, each only if it still does, and report
    /// the ones freed to the host (once each, in runs). Returns how many
    /// were freed.
    pub(super) fn free_owned(&self, dev: u8, off: u64, len: u64, owner: u32) -> u64 {
        let mut runs = Runs::new(&self.host, dev);
        let on_log = self.log.as_ref().is_some_and(|(id, _)| *id == dev);
        if !on_log {
            if let Ok(d) = self.devices.pin(dev) {
                // One owner-checked free of the whole run (the usual case);
                // it reports exactly the slots it freed (each by a
                // compare-and-clear of its expected owner). An error means
                // the check refused the run and nothing was freed: then slot
                // by slot below.
                if let Ok(n) = d.device().free_with(off, len, Some(owner), |o| runs.add(o)) {
                    return n;
                }
            }
        }
        let mut freed = 0;
        for i in 0..len {
            let (o, v) = (off.saturating_add(i), u64::from(owner) + i);
            let Ok(v) = u32::try_from(v) else { break };
            let ok = match &self.log {
                // The log device has no compare-and-clear: check, then
                // invalidate (a slot's log offset changes owner only under
                // that slot's lock, or when it is released here).
                Some((id, log)) if *id == dev => {
                    log.owner(o) == Ok(Some(v)) && log.invalidate(o).is_ok()
                }
                _ => self
                    .devices
                    .pin(dev)
                    .is_ok_and(|d| d.device().free_with(o, 1, Some(v), |_| {}) == Ok(1)),
            };
            if ok {
                freed += 1;
                runs.add(o);
            } else {
                runs.cut();
            }
        }
        freed
    }
}

/// Reports freed device slots of one device to the host in runs of
/// consecutive offsets (each slot once); the last run when dropped.
pub(super) struct Runs<'h, H: EngineHost> {
    host: &'h H,
    dev: u8,
    run: Option<(u64, u64)>,
}

impl<'h, H: EngineHost> Runs<'h, H> {
    pub(super) fn new(host: &'h H, dev: u8) -> Self {
        Self {
            host,
            dev,
            run: None,
        }
    }

    /// Device slot `o` was freed.
    pub(super) fn add(&mut self, o: u64) {
        match &mut self.run {
            Some((s, l)) if *s + *l == o => *l += 1,
            _ => {
                self.cut();
                self.run = Some((o, 1));
            }
        }
    }

    /// Report the run so far.
    pub(super) fn cut(&mut self) {
        if let Some((s, l)) = self.run.take() {
            self.host.released_phys(self.dev, s, l);
        }
    }
}

impl<H: EngineHost> Drop for Runs<'_, H> {
    fn drop(&mut self) {
        self.cut();
    }
}
