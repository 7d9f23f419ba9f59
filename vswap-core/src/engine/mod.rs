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
//!
//! Submodules, one concern each: `router` (the map's host), `place`
//! (allocation, placement, writeout), `writeback`, `evacuate`, `swapoff`,
//! `swapin`.

use vswap_alloc::sync::{AtomicU32, Ordering};
use vswap_alloc::{Ctx, Error, LogDevice, PhysDevice, Provider, Result};

use crate::devices::{DevicePin, Devices, MAX_DEVICES};
use crate::host::{Host, MapOnly};
use crate::map::{MapConfig, Put, VswapMap};
use crate::word::{Backend, BackendKind, fits_payload};

mod evacuate;
mod place;
mod router;
mod swapin;
mod swapoff;
mod writeback;

pub use evacuate::{Evacuated, Move, Stopped};
pub use router::Router;
use router::Runs;
pub use swapin::SwapinRange;
pub use swapoff::VirtMove;
pub use writeback::Writeback;

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

/// The memcg id of a slot that is charged to nobody (set by
/// [`Engine::alloc`] when charging is on and no memcg is given, so that a
/// reused slot never reports its previous owner's id).
pub const NO_MEMCG: u16 = u16::MAX;

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
}
