//! Placement: virtual allocation with memcg charging, eager or deferred
//! device placement (priority tiers, round robin among equals), device
//! frees, and the writeout decision (zero, same-filled, zswap, device).

use super::*;

impl<P: Provider, H: EngineHost> Engine<P, H> {
    /// Allocate `2^order` virtual slots (count 0, cached), charged to `memcg`
    /// under [`ChargePolicy::EverySlot`], with device slots under
    /// [`Placement::Eager`] (if any device has room).
    ///
    /// Errors: `BadOrder`; `BadCpu` for a CPU outside the engine's (see
    /// [`EngineConfig`]); `NoSpace` when the space is full or the charge is
    /// refused; `NoMem`/`Again`.
    pub fn alloc(&self, order: u32, cpu: u32, memcg: Option<u16>, ctx: Ctx) -> Result<u32> {
        let slot = self.map.alloc(order, cpu, ctx)?;
        self.adopt(slot, order, cpu, memcg, ctx).map(|()| slot)
    }

    /// (An addressed engine: [`MapConfig::addressed`](crate::MapConfig::addressed))
    /// take slot `slot`, which the host chose (a swap device's offset under
    /// the kernel's own swap allocator), as [`alloc`](Self::alloc) would
    /// have returned it: count 0, cached, charged and placed as `alloc`
    /// charges and places.
    ///
    /// # Errors
    /// Nothing changed on any of them: `BadConfig` (the engine is not
    /// addressed); `BadCpu`; `OutOfRange` (slot 0, `u32::MAX`, or outside
    /// the map); `WrongState` (the slot is allocated already); `NoSpace`
    /// (the charge is refused); `NoMem` / `Again` (see
    /// [`VswapMap::alloc_at`](crate::VswapMap::alloc_at)).
    pub fn alloc_at(&self, slot: u32, cpu: u32, memcg: Option<u16>, ctx: Ctx) -> Result<()> {
        self.check_cpu(cpu)?;
        self.map.alloc_at(slot, ctx)?;
        self.adopt(slot, 0, cpu, memcg, ctx)
    }

    /// A range just allocated (count 0, cached): its memcg charge and, with
    /// eager placement, its device slots. On failure the range is freed
    /// again (its cache flag cleared) and nothing is left charged.
    fn adopt(&self, slot: u32, order: u32, cpu: u32, memcg: Option<u16>, ctx: Ctx) -> Result<()> {
        let n = 1u32 << order;
        let undo = |e: Error| {
            for i in 0..n {
                let _ = self.map.cache_clear(slot + i, 0, ctx);
            }
            Err(e)
        };
        if self.cfg.charge != ChargePolicy::None {
            // First "charged to nobody", so that neither an undo below nor a
            // later free can give back a charge this range never took (a
            // reused slot would otherwise report its previous owner's id).
            if let Err(e) = self.map.set_memcg(slot, order, NO_MEMCG, ctx) {
                return undo(e);
            }
        }
        if let Some(id) = memcg.filter(|id| *id != NO_MEMCG) {
            if self.cfg.charge == ChargePolicy::EverySlot && !self.host().charge(id, n) {
                return undo(Error::NoSpace);
            }
            if let Err(e) = self.map.set_memcg(slot, order, id, ctx) {
                if self.cfg.charge == ChargePolicy::EverySlot {
                    self.host().uncharge(id, n);
                }
                return undo(e);
            }
        }
        if self.cfg.placement == Placement::Eager {
            self.place_eagerly(slot, order, cpu, ctx);
        }
        Ok(())
    }

    /// Eager placement: device slots for a fresh range, charged per slot under
    /// [`ChargePolicy::PhysicalOnly`]. Best effort: without room (or charge)
    /// the range keeps no backend and writeout places it later.
    pub(super) fn place_eagerly(&self, slot: u32, order: u32, cpu: u32, ctx: Ctx) {
        let n = 1u32 << order;
        let mut charged = 0;
        while charged < n && self.charge_phys(slot + charged).is_ok() {
            charged += 1;
        }
        if charged == n {
            if let Ok((dev, off)) = self.alloc_phys(order, cpu, slot, ctx) {
                for i in 0..n {
                    let o = off + u64::from(i);
                    if self
                        .map
                        .store(slot + i, Backend::None, Backend::Phys { dev, off: o })
                        .is_err()
                    {
                        self.free_phys(dev, o, slot + i);
                        self.uncharge_phys(slot + i);
                    }
                }
                return;
            }
        }
        for i in 0..charged {
            self.uncharge_phys(slot + i);
        }
    }

    /// A device run of `2^order` slots reserved for virtual slots
    /// `owner..owner + 2^order` (each device slot's reverse-map owner is set),
    /// by tier. The host may then store them into those slots (or
    /// [`free_reserved`](Self::free_reserved) them).
    ///
    /// Errors: `BadCpu` for a CPU outside the engine's (see
    /// [`EngineConfig`]); `BadOrder`; `OutOfRange` for owner 0 or a run that
    /// passes `u32::MAX - 1`; `NoSpace` when every device is full;
    /// `DiscardPending`; `NoMem`/`Again`.
    pub fn alloc_phys(&self, order: u32, cpu: u32, owner: u32, ctx: Ctx) -> Result<(u8, u64)> {
        self.check_cpu(cpu)?;
        let mut err = Error::NoSpace;
        let mut ids = [0u8; MAX_DEVICES];
        let mut prios = [0u8; MAX_DEVICES];
        let mut n = 0;
        self.devices().for_each(|id, p| {
            if let (Some(i), Some(q)) = (ids.get_mut(n), prios.get_mut(n)) {
                *i = id;
                *q = p;
                n += 1;
            }
        });
        let (ids, prios) = (ids.get(..n).unwrap_or(&[]), prios.get(..n).unwrap_or(&[]));
        let rr = self.rr.get(cpu as usize % RR_CPUS).map(|r| &r.0);
        let turn = rr.map_or(0, |r| r.load(Ordering::Relaxed));
        let csize = self.map.geometry().cluster_slots();
        // Highest priority first; within a priority, rotate by the CPU's count
        // of slots handed out, one cluster's worth per device.
        let mut done = [false; MAX_DEVICES];
        while let Some(top) = prios
            .iter()
            .zip(&done)
            .filter(|(_, d)| !**d)
            .map(|(p, _)| *p)
            .max()
        {
            let group = ids.iter().zip(prios).filter(|(_, p)| **p == top).count();
            let start = (turn / csize) as usize % group.max(1);
            for k in 0..group {
                let pick = ids
                    .iter()
                    .zip(prios)
                    .filter(|(_, p)| **p == top)
                    .nth((start + k) % group);
                let Some((&id, _)) = pick else { continue };
                let Ok(d) = self.devices().pin_on(id, cpu) else {
                    continue;
                };
                match d.alloc(order, cpu, owner, ctx) {
                    Ok(off) => {
                        if let Some(r) = rr {
                            r.store(turn.wrapping_add(1 << order), Ordering::Relaxed);
                        }
                        return Ok((id, off));
                    }
                    Err(Error::DiscardPending) => err = Error::DiscardPending,
                    Err(Error::NoSpace) => {}
                    Err(e) => return Err(e),
                }
            }
            for (d, p) in done.iter_mut().zip(prios) {
                if *p == top {
                    *d = true;
                }
            }
        }
        Err(err)
    }

    /// The engine's CPU contract (see [`EngineConfig`]): `0..cpus` of the
    /// map's geometry, else `BadCpu`.
    pub(crate) fn check_cpu(&self, cpu: u32) -> Result<()> {
        if cpu >= self.map.geometry().cpus {
            return Err(Error::BadCpu);
        }
        Ok(())
    }
    pub(crate) fn charge_phys(&self, slot: u32) -> Result<()> {
        if self.cfg.charge == ChargePolicy::PhysicalOnly {
            if let Some(id) = self.memcg_of(slot) {
                if !self.host().charge(id, 1) {
                    return Err(Error::NoSpace);
                }
            }
        }
        Ok(())
    }

    /// Give back device slot `(dev, off)` reserved for `owner` that no slot
    /// refers to (a writeout, writeback or move that did not commit): freed
    /// only if `owner` still owns it, and reported to
    /// [`EngineHost::released_phys`] once, like every other release.
    pub(super) fn free_phys(&self, dev: u8, off: u64, owner: u32) {
        self.map.host().free_owned(dev, off, 1, owner);
    }

    /// Free device slots `off..off + len` of device `dev` reserved for the
    /// virtual slots `owner..owner + len` (by [`alloc_phys`](Self::alloc_phys)
    /// or [`DevicePin::alloc`]) that no virtual slot refers to: a relocation
    /// that was not committed. Owner-checked and all or nothing: device slot
    /// `off + i` must belong to `owner + i`, and virtual slot `owner + i`
    /// must not have it as its backend (that one goes back when the slot
    /// dies or moves). The freed slots are reported to
    /// [`EngineHost::released_phys`].
    ///
    /// Errors (nothing freed): `OutOfRange` for owner 0 or offsets outside
    /// the device; `NoDevice`; `NotAllocated` if a device slot is free;
    /// `WrongState` if one belongs to another owner or is still the backend
    /// of its owner.
    ///
    /// The check that no slot refers to a device slot and the free are not
    /// one step: a host storing the same reservation at the same time races
    /// with itself.
    pub fn free_reserved(&self, dev: u8, off: u64, len: u64, owner: u32) -> Result<()> {
        if owner == 0 {
            return Err(Error::OutOfRange);
        }
        let d = self.devices().pin(dev)?;
        if off == 0 || off.checked_add(len).is_none_or(|end| end > d.slots()) {
            return Err(Error::OutOfRange);
        }
        for i in 0..len {
            let Ok(v) = u32::try_from(u64::from(owner) + i) else {
                return Err(Error::OutOfRange);
            };
            let o = off.checked_add(i).ok_or(Error::OutOfRange)?;
            let here = Backend::Phys { dev, off: o };
            if self.map.lookup(v).is_ok_and(|e| e.backend == here) {
                return Err(Error::WrongState);
            }
        }
        // Exactly the slots this call freed are reported (a racing free of
        // the same reservation takes the others, and reports them itself).
        let mut runs = Runs::new(self.host(), dev);
        d.device()
            .free_with(off, len, Some(owner), |o| runs.add(o))?;
        Ok(())
    }

    /// Write out the page of a live slot whose backend is none or a device slot
    /// (eager placement, or a re-dirtied folio written again): choose its
    /// backend (zero, same-filled, zswap through the host, else a device slot,
    /// kept if it has one) and store it. Returns the backend; for `Phys` the
    /// host writes the page there.
    ///
    /// Errors (nothing changed): `BadLength` for a page that is not exactly
    /// [`EngineConfig::page_size`] bytes; `BadCpu` for a CPU outside the
    /// engine's (see [`EngineConfig`]), whether or not a device slot is
    /// needed; `OutOfRange`, `NotAllocated`; `WrongState` for any other
    /// backend; `Busy` if the slot is locked; `NoSpace` when every device is
    /// full (or the charge is refused); `DiscardPending`; `NoMem` / `Again`
    /// for a same-filled page whose value is kept in the map's per-cluster
    /// table (neither inline form fits) when that table needs memory, which
    /// is allocated without sleeping: retry, or write the page elsewhere.
    pub fn writeout(&self, slot: u32, page: &[u8], cpu: u32) -> Result<Backend> {
        self.check_page(page)?;
        self.check_cpu(cpu)?;
        let mut cur = self.map.lookup(slot)?.backend;
        if !matches!(cur, Backend::None | Backend::Phys { .. }) {
            return Err(Error::WrongState);
        }
        let class = self.classify(slot, page)?;
        loop {
            let new = match class {
                Some(b) => b,
                None => {
                    if let Backend::Phys { .. } = cur {
                        return Ok(cur); // eager slot already there
                    }
                    self.charge_phys(slot)?;
                    match self.alloc_phys(0, cpu, slot, Ctx::NoSleep) {
                        Ok((dev, off)) => Backend::Phys { dev, off },
                        Err(e) => {
                            self.uncharge_phys(slot);
                            return Err(e);
                        }
                    }
                }
            };
            match self.map.store(slot, cur, new) {
                Ok(()) => {
                    if let Backend::Phys { .. } = cur {
                        self.uncharge_phys(slot); // the eager slot went back
                    }
                    return Ok(new);
                }
                Err(e) => {
                    if let Backend::Phys { dev, off } = new {
                        if class.is_none() {
                            self.free_phys(dev, off, slot);
                            self.uncharge_phys(slot);
                        }
                    }
                    // An evacuation moved the eager device slot (or read it
                    // into memory) between the lookup and the store: write
                    // out again over what is there now.
                    if e == Error::WrongState {
                        if let Ok(now) = self.map.lookup(slot) {
                            if matches!(now.backend, Backend::None | Backend::Phys { .. })
                                && now.backend != cur
                            {
                                cur = now.backend;
                                continue;
                            }
                        }
                    }
                    if let Some(Backend::Zswap(h)) = class {
                        self.host().release_zswap(h);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// `BadLength` unless `page` is exactly one configured page.
    pub(crate) fn check_page(&self, page: &[u8]) -> Result<()> {
        if page.len() != self.cfg.page_size as usize {
            return Err(Error::BadLength);
        }
        Ok(())
    }

    /// The backend a page gets without a device slot: `Zero`, `Same` (one
    /// repeated 64-bit word, any value) or `Zswap` (if the host takes it);
    /// `None` if it needs a device slot. `BadLength` for a page that is not
    /// exactly one configured page.
    pub(crate) fn classify(&self, slot: u32, page: &[u8]) -> Result<Option<Backend>> {
        self.check_page(page)?;
        let mut words = page.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_ne_bytes(b)
        });
        let first = words.next().unwrap_or(0);
        let same = words.all(|w| w == first);
        if same && first == 0 {
            return Ok(Some(Backend::Zero));
        }
        if same {
            return Ok(Some(Backend::Same(first)));
        }
        Ok(match self.host().zswap_store(slot, page) {
            Some(h) if fits_payload(h) => Some(Backend::Zswap(h)),
            Some(h) => {
                self.host().release_zswap(h); // too wide for the word
                None
            }
            None => None,
        })
    }
    pub(crate) fn uncharge_phys(&self, slot: u32) {
        if self.cfg.charge == ChargePolicy::PhysicalOnly {
            if let Some(id) = self.memcg_of(slot) {
                self.host().uncharge(id, 1);
            }
        }
    }
}
