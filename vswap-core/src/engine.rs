//! The engine: the virtual map joined to physical devices.
//!
//! - **Tiers**: devices with priorities; allocation tries the highest
//!   priority first and rotates among equal ones one cluster's worth at a time
//!   (a per-CPU counter, no shared write on the hot path); a clear `NoSpace`
//!   (or `DiscardPending`) when all are full.
//! - **Writeout**: an all-zero page becomes `Zero`, one repeated 64-bit word
//!   that fits becomes `Same`, else the host may take it into zswap, else it
//!   gets a device slot: at swap-out (eager placement) or at writeout
//!   (deferred placement).
//! - **Moves** through the reverse map, never through page tables: zswap
//!   writeback, relocation, evacuation of a device (swapoff) to memory or to
//!   another device. Each takes the slot's lock, checks the slot still points
//!   where the reverse map says, lets the host move the data, and commits with
//!   one CAS that also unlocks; the old location is released after that.
//! - **memcg**: charge hooks with a policy: physical slots only (vswap's), or
//!   every slot.
//! - **mTHP swap-in check** and **readahead neighbours**.
//!
//! Device slots freed by the map (a slot dies, a move commits) go back to their
//! device through the map's [`Host`], which the engine routes to the device
//! table before telling the host. Every device slot the engine frees is
//! owner-checked (freed only while the releasing virtual slot owns it in the
//! reverse map) and reported to [`EngineHost::released_phys`] exactly once,
//! whatever the path; and a device location may be stored into a slot only if
//! it is reserved for that slot ([`Host::check_phys`]).

use vswap_alloc::sync::{AtomicU32, Ordering};
use vswap_alloc::{Ctx, Error, LogDevice, PhysDevice, Provider, Result};

use crate::devices::{DevicePin, Devices, MAX_DEVICES};
use crate::host::{Host, MapOnly};
use crate::map::{MapConfig, Put, VswapMap};
use crate::word::{Backend, BackendKind, fits_payload};

/// When a page that needs a device slot gets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// At swap-out ([`Engine::alloc`]); writeout of a page that needs no
    /// device slot gives it back.
    Eager,
    /// At writeout, only for pages that need one.
    #[default]
    Deferred,
}

/// What the engine charges to a memcg through [`EngineHost::charge`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChargePolicy {
    /// Nothing.
    #[default]
    None,
    /// Only slots that hold a device slot (vswap's policy).
    PhysicalOnly,
    /// Every virtual slot, from allocation to free.
    EverySlot,
}

/// The default page size: 4 KiB.
pub const PAGE_SIZE: u32 = 4096;

/// The largest page size an engine takes (1 MiB).
pub const MAX_PAGE_SIZE: u32 = 1 << 20;

/// Engine configuration.
///
/// CPU numbers: every engine call that takes a CPU accepts `0..cpus` of the
/// map's geometry (`map.geometry.cpus`) and answers [`Error::BadCpu`] for
/// any other, before it changes anything. A device (or a direct map) with
/// fewer CPU numbers than the engine is given the engine's CPU number
/// modulo its own: CPUs that share a device CPU number share its per-CPU
/// cluster, which only makes them contend, never fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// The virtual map.
    pub map: MapConfig,
    /// Eager or deferred device slots.
    pub placement: Placement,
    /// memcg charging.
    pub charge: ChargePolicy,
    /// Bytes per page ([`PAGE_SIZE`] by default): a power of two in
    /// `8..=MAX_PAGE_SIZE`, and the log device's page size if there is one
    /// (`BadConfig` otherwise). [`Engine::writeout`] and
    /// [`Engine::log_writeout`] take pages of exactly this length.
    pub page_size: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            map: MapConfig::default(),
            placement: Placement::default(),
            charge: ChargePolicy::default(),
            page_size: PAGE_SIZE,
        }
    }
}

/// What the engine asks of its host. `release_zswap`, `released_phys`,
/// `charge` and `uncharge` may be called inside a read-side section of the
/// provider's reclamation (a kernel's `rcu_read_lock`): they must not sleep.
pub trait EngineHost: Sync {
    /// A zswap object is no longer referenced.
    fn release_zswap(&self, handle: u64);
    /// Device slots went back to their device (for the host's bookkeeping,
    /// e.g. discard batching); the engine already freed them.
    fn released_phys(&self, _dev: u8, _off: u64, _len: u64) {}
    /// Offer a page to zswap: `Some(handle)` if it was compressed and kept.
    fn zswap_store(&self, _slot: u32, _page: &[u8]) -> Option<u64> {
        None
    }
    /// Charge `pages` swap pages to memcg `id`; `false` refuses (over limit).
    fn charge(&self, _id: u16, _pages: u32) -> bool {
        true
    }
    /// Give back a charge.
    fn uncharge(&self, _id: u16, _pages: u32) {}
}

/// The map's host inside the engine: frees device slots in the device table,
/// then tells the engine's host.
pub struct Router<P: Provider, H: EngineHost> {
    pub(crate) devices: Devices<P>,
    charge: ChargePolicy,
    /// The flash log device, if any, and its device number.
    pub(crate) log: Option<(u8, LogDevice<P>)>,
    host: H,
}

/// The memcg id of a slot that is charged to nobody (set by
/// [`Engine::alloc`] when charging is on and no memcg is given, so that a
/// reused slot never reports its previous owner's id).
pub const NO_MEMCG: u16 = u16::MAX;

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
    fn free_owned(&self, dev: u8, off: u64, len: u64, owner: u32) -> u64 {
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
struct Runs<'h, H: EngineHost> {
    host: &'h H,
    dev: u8,
    run: Option<(u64, u64)>,
}

impl<'h, H: EngineHost> Runs<'h, H> {
    fn new(host: &'h H, dev: u8) -> Self {
        Self {
            host,
            dev,
            run: None,
        }
    }

    /// Device slot `o` was freed.
    fn add(&mut self, o: u64) {
        match &mut self.run {
            Some((s, l)) if *s + *l == o => *l += 1,
            _ => {
                self.cut();
                self.run = Some((o, 1));
            }
        }
    }

    /// Report the run so far.
    fn cut(&mut self) {
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

/// What an mTHP swap-in may do with a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapinRange {
    /// Every slot has a backend of this kind that needs no device read
    /// (none/zero/same): fill the large folio directly.
    Uniform(BackendKind),
    /// Every slot is on device `dev`, at `off + i`: one read.
    Contiguous {
        /// Device.
        dev: u8,
        /// First offset.
        off: u64,
    },
    /// Kinds differ, a slot is in zswap, or device slots are not contiguous:
    /// swap in page by page.
    No,
}

#[repr(align(64))]
struct Rr(AtomicU32);

const RR_CPUS: usize = 64;

/// The virtual swap engine. See the module documentation.
pub struct Engine<P: Provider, H: EngineHost> {
    pub(crate) map: VswapMap<P, Router<P, H>>,
    pub(crate) cfg: EngineConfig,
    rr: [Rr; RR_CPUS],
}

impl<P: Provider, H: EngineHost> Engine<P, H> {
    /// An engine with no devices.
    pub fn new(cfg: EngineConfig, provider: P, host: H) -> Result<Self> {
        Self::build(cfg, provider, host, None)
    }

    /// An engine whose device number `id` is the flash log device `log`
    /// (see [`Engine::log_writeout`]); other devices are added as usual.
    pub fn with_log(
        cfg: EngineConfig,
        provider: P,
        host: H,
        id: u8,
        log: LogDevice<P>,
    ) -> Result<Self> {
        Self::build(cfg, provider, host, Some((id, log)))
    }

    /// By value: built in place on the stack by [`build_in`](Self::build_in)
    /// (one construction path) and moved out.
    fn build(
        cfg: EngineConfig,
        provider: P,
        host: H,
        log: Option<(u8, LogDevice<P>)>,
    ) -> Result<Self> {
        let mut place = core::mem::MaybeUninit::uninit();
        Self::build_in(&mut place, cfg, provider, host, log)?;
        // SAFETY: `build_in` returned `Ok`, so it initialised every field.
        Ok(unsafe { place.assume_init() })
    }

    /// [`Engine::new`], built directly in `place` (for example memory from
    /// the host's allocator): no engine-sized temporary on the stack. The
    /// engine is about 13.5 KiB; by value, `new` needs more than that in its
    /// own frame (and its caller another copy), too much for a 16 KiB kernel
    /// stack. On `Err` nothing was built in `place`. The engine lives in
    /// `place` until the caller drops it there (`assume_init_drop`, see
    /// [`MaybeUninit`](core::mem::MaybeUninit)); forgetting it only leaks.
    ///
    /// ```
    /// use core::mem::MaybeUninit;
    /// use vswap_core::{Ctx, Engine, EngineConfig, EngineHost, StdProvider};
    /// struct NoZswap;
    /// impl EngineHost for NoZswap {
    ///     fn release_zswap(&self, _handle: u64) {}
    /// }
    /// let mut place = Box::new(MaybeUninit::<Engine<StdProvider, NoZswap>>::uninit());
    /// let engine = Engine::new_in(&mut place, EngineConfig::default(), StdProvider::new(), NoZswap)?;
    /// let slot = engine.alloc(0, 0, None, Ctx::MaySleep)?;
    /// assert_ne!(slot, 0);
    /// // SAFETY: built by `new_in` above and not dropped before.
    /// unsafe { place.assume_init_drop() };
    /// # Ok::<(), vswap_core::Error>(())
    /// ```
    pub fn new_in(
        place: &mut core::mem::MaybeUninit<Self>,
        cfg: EngineConfig,
        provider: P,
        host: H,
    ) -> Result<&mut Self> {
        Self::build_in(place, cfg, provider, host, None)
    }

    /// [`Engine::with_log`], built directly in `place` (see
    /// [`Engine::new_in`]).
    pub fn with_log_in(
        place: &mut core::mem::MaybeUninit<Self>,
        cfg: EngineConfig,
        provider: P,
        host: H,
        id: u8,
        log: LogDevice<P>,
    ) -> Result<&mut Self> {
        Self::build_in(place, cfg, provider, host, Some((id, log)))
    }

    fn build_in(
        place: &mut core::mem::MaybeUninit<Self>,
        cfg: EngineConfig,
        provider: P,
        host: H,
        log: Option<(u8, LogDevice<P>)>,
    ) -> Result<&mut Self> {
        if log
            .as_ref()
            .is_some_and(|(id, _)| usize::from(*id) >= MAX_DEVICES)
        {
            return Err(Error::NoDevice);
        }
        if !cfg.page_size.is_power_of_two()
            || !(8..=MAX_PAGE_SIZE).contains(&cfg.page_size)
            || log
                .as_ref()
                .is_some_and(|(_, l)| l.config().page_size != cfg.page_size)
        {
            return Err(Error::BadConfig);
        }
        let p = place.as_mut_ptr();
        let charge = cfg.charge;
        // SAFETY: `p` is valid for writes of an engine and aligned (it is
        // `place`). The map (fallible, first: nothing is written on `Err`)
        // writes its own fields and lets the closure write the router's;
        // the router writes the device table entry by entry. Every field is
        // written once, through raw pointers, before `assume_init_mut`.
        unsafe {
            VswapMap::init_in(core::ptr::addr_of_mut!((*p).map), cfg.map, provider, |r| {
                Devices::init_in(core::ptr::addr_of_mut!((*r).devices));
                core::ptr::addr_of_mut!((*r).charge).write(charge);
                core::ptr::addr_of_mut!((*r).log).write(log);
                core::ptr::addr_of_mut!((*r).host).write(host);
            })?;
            core::ptr::addr_of_mut!((*p).cfg).write(cfg);
            let rr = core::ptr::addr_of_mut!((*p).rr).cast::<Rr>();
            for i in 0..RR_CPUS {
                rr.add(i).write(Rr(AtomicU32::new(0)));
            }
            Ok(place.assume_init_mut())
        }
    }

    /// The virtual map (dup, put, cache, lock, lookup ... on virtual slots).
    pub fn map(&self) -> &VswapMap<P, Router<P, H>> {
        &self.map
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.map.host().host
    }

    fn devices(&self) -> &Devices<P> {
        &self.map.host().devices
    }

    /// Add device `id` (`0..MAX_DEVICES`) with `priority`.
    pub fn add_device(&self, id: u8, priority: u8, dev: PhysDevice<P>) -> Result<()> {
        if usize::from(id) >= MAX_DEVICES
            || self.map.host().log.as_ref().is_some_and(|(l, _)| *l == id)
        {
            return Err(Error::NoDevice);
        }
        self.devices().add(id, priority, dev)
    }

    /// Pin device `id` (hold it while doing I/O from one of its slots).
    pub fn device(&self, id: u8) -> Result<DevicePin<'_, P>> {
        self.devices().pin(id)
    }

    /// Remove an empty device (`Busy` if it still holds data or is pinned;
    /// [`evacuate`](Self::evacuate) it first). Allocations on it answer
    /// `NoSpace` while the removal checks it.
    pub fn remove_device(&self, id: u8) -> Result<PhysDevice<P>> {
        self.devices().remove_empty(id)
    }

    /// Allocate `2^order` virtual slots (count 0, cached), charged to `memcg`
    /// under [`ChargePolicy::EverySlot`], with device slots under
    /// [`Placement::Eager`] (if any device has room).
    ///
    /// Errors: `BadOrder`; `BadCpu` for a CPU outside the engine's (see
    /// [`EngineConfig`]); `NoSpace` when the space is full or the charge is
    /// refused; `NoMem`/`Again`.
    pub fn alloc(&self, order: u32, cpu: u32, memcg: Option<u16>, ctx: Ctx) -> Result<u32> {
        let slot = self.map.alloc(order, cpu, ctx)?;
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
        Ok(slot)
    }

    /// Eager placement: device slots for a fresh range, charged per slot under
    /// [`ChargePolicy::PhysicalOnly`]. Best effort: without room (or charge)
    /// the range keeps no backend and writeout places it later.
    fn place_eagerly(&self, slot: u32, order: u32, cpu: u32, ctx: Ctx) {
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
    fn free_phys(&self, dev: u8, off: u64, owner: u32) {
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

    /// Drop `n` counts (a freed slot's charge goes back through the map's free
    /// hook, as for every other way a slot dies).
    pub fn put(&self, slot: u32, n: u32) -> Result<Put> {
        self.map.put(slot, n)
    }

    /// Drop the swap cache reference.
    pub fn cache_clear(&self, slot: u32, shadow: u64, ctx: Ctx) -> Result<Put> {
        self.map.cache_clear(slot, shadow, ctx)
    }

    /// The memcg id a slot is charged to, if charging is on.
    pub(crate) fn memcg_of(&self, slot: u32) -> Option<u16> {
        match self.cfg.charge {
            ChargePolicy::None => None,
            _ => self
                .map
                .memcg(slot)
                .ok()
                .flatten()
                .filter(|id| *id != NO_MEMCG),
        }
    }

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
    fn in_flight(&self, w: &Writeback) -> Result<()> {
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

    fn evacuate_passes(
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
    fn evacuate_one(
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
    fn gone_or_busy(&self, slot: u32) -> Result<bool> {
        match self.map.lookup(slot) {
            Ok(e) if e.locked => Err(Error::Busy),
            _ => Ok(false),
        }
    }

    fn swapoff_one(
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

    /// Can the naturally aligned range `start..start + 2^order` be swapped in
    /// as one large folio?
    pub fn swapin_check(&self, start: u32, order: u32) -> Result<SwapinRange> {
        if order > self.map.geometry().cluster_shift {
            return Err(Error::BadOrder);
        }
        let n = 1u32 << order;
        if start % n != 0 {
            return Err(Error::Misaligned);
        }
        let first = self.map.lookup(start)?.backend;
        for i in 1..n {
            let b = self.map.lookup(start + i)?.backend;
            let ok = match (first, b) {
                (Backend::Phys { dev, off }, Backend::Phys { dev: d, off: o }) => {
                    d == dev && o == off + u64::from(i)
                }
                (Backend::Zswap(_), _) => false,
                (a, b) => a.kind() == b.kind(),
            };
            if !ok {
                return Ok(SwapinRange::No);
            }
        }
        Ok(match first {
            Backend::Zswap(_) => SwapinRange::No,
            Backend::Phys { dev, off } => SwapinRange::Contiguous { dev, off },
            b => SwapinRange::Uniform(b.kind()),
        })
    }

    /// The virtual slots whose data sits next to `slot`'s on its device (the
    /// aligned window of `out.len().next_power_of_two()` device slots around
    /// it), written to `out`; returns how many. 0 if `slot` is not on a device.
    pub fn readahead(&self, slot: u32, out: &mut [u32]) -> Result<usize> {
        let Backend::Phys { dev, off } = self.map.lookup(slot)?.backend else {
            return Ok(0);
        };
        let window = (out.len() as u64 + 1).next_power_of_two();
        let start = off & !(window - 1);
        let mut n = 0;
        self.devices()
            .pin(dev)?
            .for_each_owner(start, window, |_, owner| {
                if owner != slot {
                    if let Some(o) = out.get_mut(n) {
                        *o = owner;
                        n += 1;
                    }
                }
            });
        Ok(n)
    }
}
