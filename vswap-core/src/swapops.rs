//! One swap-ops interface over both modes.
//!
//! [`SwapOps`] is what a swap entry's owner (page tables, swap cache) does with
//! it; [`VswapMap`] implements it for virtual slots and for direct-mode device
//! slots alike. [`Swap`] routes [`SwapEntry`]s by type: type
//! [`VIRTUAL_TYPE`] is the virtual map, types `0..MAX_DEVICES` are direct
//! devices. Each allocation picks its mode at run time, so "virtual + direct",
//! "virtual only" and "direct only" are all one configuration away.

use vswap_alloc::{Ctx, Error, Provider, Result};

use crate::devices::MAX_DEVICES;
use crate::host::Host;
use crate::map::{Put, VswapMap};
use crate::word::{Backend, Entry};

/// The swap entry type of the virtual layer.
pub const VIRTUAL_TYPE: u8 = 31;

/// A swap entry as a page table holds it: a type and an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SwapEntry {
    /// [`VIRTUAL_TYPE`], or a direct device number.
    pub ty: u8,
    /// Slot within that space.
    pub off: u32,
}

/// Where an allocation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A virtual slot.
    Virtual,
    /// A slot of direct device `n`.
    Direct(u8),
}

/// The operations on a swap slot, whichever the mode.
pub trait SwapOps: Sync {
    /// Allocate `2^order` slots (count 0, cached).
    fn alloc(&self, order: u32, cpu: u32, ctx: Ctx) -> Result<u32>;
    /// Add page-table references.
    fn dup(&self, slot: u32, n: u32, ctx: Ctx) -> Result<()>;
    /// Drop page-table references.
    fn put(&self, slot: u32, n: u32) -> Result<Put>;
    /// A folio entered the swap cache.
    fn cache_add(&self, slot: u32, cookie: u64, ctx: Ctx) -> Result<()>;
    /// The folio left the swap cache.
    fn cache_clear(&self, slot: u32, shadow: u64, ctx: Ctx) -> Result<Put>;
    /// Take the slot's lock bit.
    fn lock(&self, slot: u32) -> Result<()>;
    /// Drop it.
    fn unlock(&self, slot: u32) -> Result<Put>;
    /// Record what writeout found (none -> zero, same-filled, zswap ...).
    fn store(&self, slot: u32, expected: Backend, new: Backend) -> Result<()>;
    /// A snapshot.
    fn lookup(&self, slot: u32) -> Result<Entry>;
    /// The CPU numbers [`alloc`](Self::alloc) accepts: `0..cpus()`.
    fn cpus(&self) -> u32;
}

impl<P: Provider, H: Host> SwapOps for VswapMap<P, H> {
    fn alloc(&self, order: u32, cpu: u32, ctx: Ctx) -> Result<u32> {
        VswapMap::alloc(self, order, cpu, ctx)
    }
    fn dup(&self, slot: u32, n: u32, ctx: Ctx) -> Result<()> {
        VswapMap::dup(self, slot, n, ctx)
    }
    fn put(&self, slot: u32, n: u32) -> Result<Put> {
        VswapMap::put(self, slot, n)
    }
    fn cache_add(&self, slot: u32, cookie: u64, ctx: Ctx) -> Result<()> {
        VswapMap::cache_add(self, slot, cookie, ctx)
    }
    fn cache_clear(&self, slot: u32, shadow: u64, ctx: Ctx) -> Result<Put> {
        VswapMap::cache_clear(self, slot, shadow, ctx)
    }
    fn lock(&self, slot: u32) -> Result<()> {
        VswapMap::lock(self, slot)
    }
    fn unlock(&self, slot: u32) -> Result<Put> {
        VswapMap::unlock(self, slot)
    }
    fn store(&self, slot: u32, expected: Backend, new: Backend) -> Result<()> {
        if self.is_direct() && matches!(new, Backend::Phys { .. }) {
            return Err(Error::WrongState); // a direct slot is its own location
        }
        VswapMap::store(self, slot, expected, new)
    }
    fn lookup(&self, slot: u32) -> Result<Entry> {
        VswapMap::lookup(self, slot)
    }
    fn cpus(&self) -> u32 {
        self.geometry().cpus
    }
}

/// Routes swap entries to the virtual map or to direct devices.
///
/// ```
/// use vswap_core::swapops::{Mode, Swap, SwapEntry, VIRTUAL_TYPE};
/// use vswap_core::{Ctx, Geometry, MapConfig, NoHost, Put, StdProvider, VswapMap};
/// let p = StdProvider::new();
/// let virt = VswapMap::new(MapConfig::default(), &p, NoHost).unwrap();
/// let disk = MapConfig { geometry: Geometry { slots: 1 << 16, ..Geometry::default() }, ..MapConfig::default() };
/// let direct = VswapMap::direct(disk, false, false, &[], &p, NoHost).unwrap();
/// let mut swap = Swap::new();
/// swap.set_virtual(&virt);
/// swap.set_direct(0, &direct).unwrap();
/// let v = swap.alloc(Mode::Virtual, 0, 0, Ctx::NoSleep).unwrap();
/// let d = swap.alloc(Mode::Direct(0), 0, 0, Ctx::NoSleep).unwrap();
/// assert_eq!((v.ty, d.ty), (VIRTUAL_TYPE, 0));
/// assert_eq!(swap.cache_clear(d, 0, Ctx::NoSleep).unwrap(), Put::Freed);
/// ```
#[derive(Default)]
pub struct Swap<'a> {
    virt: Option<&'a dyn SwapOps>,
    direct: [Option<&'a dyn SwapOps>; MAX_DEVICES],
}

impl<'a> Swap<'a> {
    /// No spaces yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use `ops` for virtual entries.
    pub fn set_virtual(&mut self, ops: &'a dyn SwapOps) {
        self.virt = Some(ops);
    }

    /// Use `ops` for direct device `n`.
    pub fn set_direct(&mut self, n: u8, ops: &'a dyn SwapOps) -> Result<()> {
        *self.direct.get_mut(usize::from(n)).ok_or(Error::NoDevice)? = Some(ops);
        Ok(())
    }

    fn ops(&self, ty: u8) -> Result<&'a dyn SwapOps> {
        if ty == VIRTUAL_TYPE {
            return self.virt.ok_or(Error::NoDevice);
        }
        self.direct
            .get(usize::from(ty))
            .copied()
            .flatten()
            .ok_or(Error::NoDevice)
    }

    /// Allocate in the chosen mode.
    pub fn alloc(&self, mode: Mode, order: u32, cpu: u32, ctx: Ctx) -> Result<SwapEntry> {
        let ty = match mode {
            Mode::Virtual => VIRTUAL_TYPE,
            Mode::Direct(n) => n,
        };
        Ok(SwapEntry {
            ty,
            off: self.ops(ty)?.alloc(order, cpu, ctx)?,
        })
    }

    /// See [`SwapOps::dup`].
    pub fn dup(&self, e: SwapEntry, n: u32, ctx: Ctx) -> Result<()> {
        self.ops(e.ty)?.dup(e.off, n, ctx)
    }
    /// See [`SwapOps::put`].
    pub fn put(&self, e: SwapEntry, n: u32) -> Result<Put> {
        self.ops(e.ty)?.put(e.off, n)
    }
    /// See [`SwapOps::cache_add`].
    pub fn cache_add(&self, e: SwapEntry, cookie: u64, ctx: Ctx) -> Result<()> {
        self.ops(e.ty)?.cache_add(e.off, cookie, ctx)
    }
    /// See [`SwapOps::cache_clear`].
    pub fn cache_clear(&self, e: SwapEntry, shadow: u64, ctx: Ctx) -> Result<Put> {
        self.ops(e.ty)?.cache_clear(e.off, shadow, ctx)
    }
    /// See [`SwapOps::lock`].
    pub fn lock(&self, e: SwapEntry) -> Result<()> {
        self.ops(e.ty)?.lock(e.off)
    }
    /// See [`SwapOps::unlock`].
    pub fn unlock(&self, e: SwapEntry) -> Result<Put> {
        self.ops(e.ty)?.unlock(e.off)
    }
    /// See [`SwapOps::store`].
    pub fn store(&self, e: SwapEntry, expected: Backend, new: Backend) -> Result<()> {
        self.ops(e.ty)?.store(e.off, expected, new)
    }
    /// See [`SwapOps::lookup`].
    pub fn lookup(&self, e: SwapEntry) -> Result<Entry> {
        self.ops(e.ty)?.lookup(e.off)
    }
}
