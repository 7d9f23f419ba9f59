//! The engine's device table: up to [`MAX_DEVICES`] physical devices, each
//! added and removed at run time and pinned by every operation in flight.
//!
//! # Protocol (one `AtomicU64` per table entry)
//! ```text
//!  63   48 47    40 39  36   35     34     33    32   31            0
//! +-------+--------+------+-------+------+-----+-------+---------------+
//! | rsvd  |priority| rsvd |NOALLOC|ADDING|DYING|PRESENT|     pins      |
//! +-------+--------+------+-------+------+-----+-------+---------------+
//! ```
//! - `EMPTY` (0) -> `ADDING` by CAS: the adder owns the entry and writes the
//!   device, then stores `PRESENT | priority` (release).
//! - A *pin* is a CAS that adds 1 while `PRESENT && !DYING` (acquire): the
//!   device stays in place until the pin is dropped (`fetch_sub`, release).
//!   Device operations (allocation, frees, reverse-map reads) and I/O the host
//!   does from a location hold one, like the kernel's `get_swap_device`.
//! - Removal CASes `PRESENT, pins == 0` -> `DYING`, fails with `Busy` while
//!   pinned (or [`Devices::remove_wait`] sets `DYING` first, which blocks new
//!   pins, and waits for the count to drain), takes the device out, stores 0.
//! - [`Devices::remove_empty`] must also know the device holds no data, which
//!   an allocation between its check and its removal would falsify. It CASes
//!   `PRESENT, pins == 0` -> `| NOALLOC` (no allocation is in flight then);
//!   a pin taken while `NOALLOC` is set cannot allocate
//!   ([`DevicePin::alloc`] answers `NoSpace`), but frees and reads go on.
//!   It checks the device is empty, then CASes `NOALLOC, pins == 0` ->
//!   `| DYING` and takes it, or clears `NOALLOC` and answers `Busy`. Other
//!   removals refuse (`remove`) or wait for (`remove_wait`) a set `NOALLOC`,
//!   so only its setter clears it.

use vswap_alloc::sync::{AtomicU64, Ordering, UnsafeCell, spin_hint};
use vswap_alloc::{ClusterState, Ctx, DeviceStats, Error, Geometry, PhysDevice, Provider, Result};

/// Devices an engine can hold (device numbers `0..MAX_DEVICES`).
pub const MAX_DEVICES: usize = 16;

const PINS: u64 = 0xffff_ffff;
const PRESENT: u64 = 1 << 32;
const DYING: u64 = 1 << 33;
const ADDING: u64 = 1 << 34;
const NOALLOC: u64 = 1 << 35;
const PRIO_SHIFT: u32 = 40;

struct Entry<P: Provider> {
    state: AtomicU64,
    dev: UnsafeCell<Option<PhysDevice<P>>>,
}

/// The device table.
pub struct Devices<P: Provider> {
    entries: [Entry<P>; MAX_DEVICES],
}

// SAFETY: `dev` is written only by the thread that owns the entry (ADDING or
// DYING with no pins) and read only under a pin; `PhysDevice` is Sync.
unsafe impl<P: Provider> Sync for Devices<P> {}
// SAFETY: as above; the devices move with the table.
unsafe impl<P: Provider + Send> Send for Devices<P> {}

/// A pinned device: it stays in the table (and its tables in memory) until
/// the pin is dropped.
///
/// A pin exposes only what cannot break the engine's invariants: reads of
/// the reverse map and of the device's occupancy, the discard queue, and an
/// allocation that honours the removal guard. It does not hand out the
/// [`PhysDevice`] itself: freeing a device slot or changing its owner behind
/// the virtual map's back would leave a virtual slot pointing at a device
/// slot that another can be given (use
/// [`Engine::free_reserved`](crate::Engine::free_reserved) for a reservation
/// that no slot refers to).
///
/// ```compile_fail
/// # use vswap_core::{Engine, EngineConfig, EngineHost, StdProvider};
/// # struct H;
/// # impl EngineHost for H { fn release_zswap(&self, _: u64) {} }
/// # let e = Engine::new(EngineConfig::default(), StdProvider::new(), H).unwrap();
/// // A pin hands out no unchecked free (nor `set_owner`).
/// let _ = e.device(0).unwrap().free(1, 1, None);
/// ```
pub struct DevicePin<'a, P: Provider> {
    state: &'a AtomicU64,
    dev: &'a PhysDevice<P>,
    id: u8,
    /// Pinned while no removal was checking the device (`NOALLOC` clear).
    may_alloc: bool,
}

impl<'a, P: Provider> DevicePin<'a, P> {
    /// The device number.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// [`PhysDevice::alloc`] on the device's CPU number `cpu % cpus` (`cpus`
    /// of the device's geometry: an engine with more CPUs than a device maps
    /// its CPU numbers onto the device's), unless the pin was taken while
    /// [`Devices::remove_empty`] is checking the device: then `NoSpace`.
    /// The slots are reserved for `owner..`; a virtual slot refers to one
    /// only once it is stored there (or the reservation is freed with
    /// [`Engine::free_reserved`](crate::Engine::free_reserved)).
    pub fn alloc(&self, order: u32, cpu: u32, owner: u32, ctx: Ctx) -> Result<u64> {
        if !self.may_alloc {
            return Err(Error::NoSpace);
        }
        let cpus = self.dev.geometry().cpus.max(1);
        self.dev.alloc(order, cpu % cpus, owner, ctx)
    }

    /// The device for the engine's own owner-checked frees.
    pub(crate) fn device(&self) -> &'a PhysDevice<P> {
        self.dev
    }

    /// [`PhysDevice::slots`].
    pub fn slots(&self) -> u64 {
        self.dev.slots()
    }

    /// [`PhysDevice::geometry`].
    pub fn geometry(&self) -> &Geometry {
        self.dev.geometry()
    }

    /// [`PhysDevice::owner`]: the virtual slot device slot `off` holds.
    pub fn owner(&self, off: u64) -> Result<Option<u32>> {
        self.dev.owner(off)
    }

    /// [`PhysDevice::for_each_owner`].
    pub fn for_each_owner(&self, off: u64, len: u64, f: impl FnMut(u64, u32)) {
        self.dev.for_each_owner(off, len, f)
    }

    /// [`PhysDevice::stats`].
    pub fn stats(&self) -> DeviceStats {
        self.dev.stats()
    }

    /// The state of cluster `c` of the device (for invariant checks; see
    /// [`SlotSpace::cluster_state`](vswap_alloc::SlotSpace::cluster_state)).
    pub fn cluster_state(&self, c: u32) -> ClusterState {
        self.dev.space().cluster_state(c)
    }

    /// [`PhysDevice::take_discard`].
    pub fn take_discard(&self) -> Option<u32> {
        self.dev.take_discard()
    }

    /// [`PhysDevice::discard_done`].
    pub fn discard_done(&self, c: u32) -> Result<()> {
        self.dev.discard_done(c)
    }
}

impl<P: Provider> Drop for DevicePin<'_, P> {
    fn drop(&mut self) {
        self.state.fetch_sub(1, Ordering::Release);
    }
}

impl<P: Provider> Default for Devices<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Provider> Devices<P> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            entries: core::array::from_fn(|_| Entry {
                state: AtomicU64::new(0),
                dev: UnsafeCell::new(None),
            }),
        }
    }

    /// Write an empty table into `place` entry by entry (the table is
    /// about 6.5 KiB: an engine built in place keeps it off the stack).
    ///
    /// # Safety
    /// `place` is valid for writes of a `Self` and aligned.
    pub(crate) unsafe fn init_in(place: *mut Self) {
        // SAFETY: `place` is valid for writes (contract); the entries are
        // written one at a time through raw pointers.
        unsafe {
            let entries = core::ptr::addr_of_mut!((*place).entries).cast::<Entry<P>>();
            for i in 0..MAX_DEVICES {
                entries.add(i).write(Entry {
                    state: AtomicU64::new(0),
                    dev: UnsafeCell::new(None),
                });
            }
        }
    }

    fn entry(&self, id: u8) -> Result<&Entry<P>> {
        self.entries.get(usize::from(id)).ok_or(Error::NoDevice)
    }

    /// Add `dev` as device `id` with `priority` (higher is used first).
    /// `Exists`-like `WrongState` if the number is taken.
    pub fn add(&self, id: u8, priority: u8, dev: PhysDevice<P>) -> Result<()> {
        let e = self.entry(id)?;
        e.state
            .compare_exchange(0, ADDING, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| Error::WrongState)?;
        // SAFETY: ADDING makes us the only thread touching `dev` (no pins can
        // be taken until PRESENT is published below).
        e.dev.with_mut(|p| unsafe { *p = Some(dev) });
        e.state.store(
            PRESENT | (u64::from(priority) << PRIO_SHIFT),
            Ordering::Release,
        );
        Ok(())
    }

    /// Pin device `id`.
    #[inline]
    pub fn pin(&self, id: u8) -> Result<DevicePin<'_, P>> {
        let e = self.entry(id)?;
        let mut s = e.state.load(Ordering::Acquire);
        loop {
            if s & (PRESENT | DYING) != PRESENT || s & PINS == PINS {
                return Err(Error::NoDevice);
            }
            match e
                .state
                .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(x) => s = x,
            }
        }
        // SAFETY: PRESENT was published after the device was written, and it
        // cannot be taken out while our pin is counted, so the reference
        // stays valid (and unwritten) for the pin's lifetime. (loom records
        // the read while `with` runs: enough to see a pin racing an add or a
        // take.)
        match e.dev.with(|p| unsafe { &*p }) {
            Some(dev) => Ok(DevicePin {
                state: &e.state,
                dev,
                id,
                may_alloc: s & NOALLOC == 0,
            }),
            None => {
                e.state.fetch_sub(1, Ordering::Release);
                Err(Error::NoDevice)
            }
        }
    }

    /// The priority of device `id`, if present.
    pub fn priority(&self, id: u8) -> Option<u8> {
        let s = self.entry(id).ok()?.state.load(Ordering::Acquire);
        (s & (PRESENT | DYING) == PRESENT).then_some((s >> PRIO_SHIFT) as u8)
    }

    /// Remove device `id` if no operation holds it (`Busy` otherwise) and
    /// return it.
    pub fn remove(&self, id: u8) -> Result<PhysDevice<P>> {
        let e = self.entry(id)?;
        Self::mark(e, DYING)?;
        self.take(e)
    }

    /// The start of both removals: the device is present, nothing pins it
    /// and no `remove_empty` is checking it; then `bit` (`DYING` or
    /// `NOALLOC`) is set by CAS from that state, which is returned.
    fn mark(e: &Entry<P>, bit: u64) -> Result<u64> {
        let s = e.state.load(Ordering::Acquire);
        if s & (PRESENT | DYING) != PRESENT {
            return Err(Error::NoDevice);
        }
        if s & (PINS | NOALLOC) != 0 {
            return Err(Error::Busy);
        }
        e.state
            .compare_exchange(s, s | bit, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|x| {
                if x & (PRESENT | DYING) != PRESENT {
                    Error::NoDevice
                } else {
                    Error::Busy
                }
            })?;
        Ok(s)
    }

    /// Remove device `id` if it holds no data and no operation holds it
    /// (`Busy` otherwise), and return it. No slot can be allocated on it
    /// between the check and the removal (see the module documentation);
    /// meanwhile its allocations answer `NoSpace`.
    pub fn remove_empty(&self, id: u8) -> Result<PhysDevice<P>> {
        let e = self.entry(id)?;
        // No pin, so no allocation in flight; pins taken from now on cannot
        // allocate, so the device's used count can only fall.
        let s = Self::mark(e, NOALLOC)?;
        let empty = self.pin(id).is_ok_and(|d| d.stats().used == 0);
        if empty
            && e.state
                .compare_exchange(
                    s | NOALLOC,
                    s | NOALLOC | DYING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return self.take(e);
        }
        // Only we clear NOALLOC (other removals refuse or wait while it is
        // set), and the entry stays PRESENT until we do.
        e.state.fetch_and(!NOALLOC, Ordering::Release);
        Err(Error::Busy)
    }

    /// Remove device `id`, refusing new pins at once and waiting for the ones
    /// held to be dropped.
    pub fn remove_wait(&self, id: u8) -> Result<PhysDevice<P>> {
        let e = self.entry(id)?;
        let mut s = e.state.load(Ordering::Acquire);
        loop {
            if s & (PRESENT | DYING) != PRESENT {
                return Err(Error::NoDevice);
            }
            if s & NOALLOC != 0 {
                // `remove_empty` is checking the device: wait for its verdict.
                spin_hint();
                s = e.state.load(Ordering::Acquire);
                continue;
            }
            match e
                .state
                .compare_exchange_weak(s, s | DYING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(x) => s = x,
            }
        }
        while e.state.load(Ordering::Acquire) & PINS != 0 {
            spin_hint();
        }
        self.take(e)
    }

    fn take(&self, e: &Entry<P>) -> Result<PhysDevice<P>> {
        // SAFETY: DYING with no pins: nobody else can reach `dev`.
        let dev = e.dev.with_mut(|p| unsafe { (*p).take() });
        e.state.store(0, Ordering::Release);
        // A PRESENT entry always holds a device (written before PRESENT).
        dev.ok_or(Error::NoDevice)
    }

    /// Present devices by falling priority: calls `f(id, priority)`.
    pub fn for_each(&self, mut f: impl FnMut(u8, u8)) {
        for id in 0..MAX_DEVICES as u8 {
            if let Some(p) = self.priority(id) {
                f(id, p);
            }
        }
    }
}
