//! The engine's device table: up to [`MAX_DEVICES`] physical devices, each
//! added and removed at run time and held by every operation in flight.
//!
//! # Holds: a percpu-ref style count
//! An operation on a device (allocation, frees, reverse-map reads) and I/O
//! the host does from one of its slots hold the device ([`DevicePin`]),
//! like the kernel's `get_swap_device`: the device stays in the table (and
//! its tables in memory) until the hold is dropped. Holds are counted in
//! two places:
//! - **Fast path: striped counters.** [`HOLD_STRIPES`] stripes, each one
//!   128-byte aligned block (its own cache lines) holding one `AtomicU64`
//!   per device: bits 0..32 count the holds taken on that stripe, bit 32
//!   (`SLOW`) says the device is not in fast mode. A hold is a CAS that adds
//!   1 while `SLOW` is clear (acquire); dropping it is a `fetch_sub` of the
//!   same word (release). Two locked RMWs, as before, but on a line that
//!   only the threads of one stripe write, instead of one word per device
//!   that every CPU's operation bounced between caches. (The kernel's
//!   `percpu_ref` gets by without the lock prefix because a CPU number is
//!   exclusive with preemption off; here callers may share a stripe, so
//!   the count is a locked RMW: correctness does not depend on the stripe,
//!   only speed does.)
//! - **Slow path: the entry's state word** (below), whose `pins` field
//!   counts the holds taken while the device's stripes are `SLOW` (a
//!   removal in progress, or a stripe saturated). It is the only path while
//!   a removal runs, so a removal decides on one word.
//!
//! Which stripe: [`Devices::pin_on`] takes a number (the caller's CPU
//! number where it has one: the engine's allocations pass theirs);
//! [`Devices::pin`] has none (frees from a map's release, reverse-map
//! reads, the host's I/O holds: most callers have no CPU number) and uses
//! a per-thread value: with the `std` feature a thread-local index handed
//! out round robin on a thread's first hold, without it (a kernel, where
//! `thread_local!` does not exist) a hash of the caller's stack address
//! (each task has its own stack; it costs nothing). The hold remembers the
//! word it counted in, so dropping it on another thread or stripe is
//! correct. Under loom `pin` uses stripe 0 (a model must be deterministic)
//! and the models choose stripes through `pin_on`.
//!
//! # The entry's state word (one `AtomicU64` per table entry)
//! ```text
//!  63   48 47    40 39  37    36      35     34     33    32   31            0
//! +-------+--------+------+--------+-------+------+-----+-------+---------------+
//! | rsvd  |priority| rsvd |REMOVING|NOALLOC|ADDING|DYING|PRESENT|  slow pins    |
//! +-------+--------+------+--------+-------+------+-----+-------+---------------+
//! ```
//! States and transitions (a device's `SLOW` bits are clear from the
//! adder's clears until a removal sets them, and again once a removal that
//! gives up has cleared them; set otherwise):
//! - `EMPTY` (0, every stripe `SLOW`) -> `ADDING` by CAS: the adder owns the
//!   entry and writes the device, clears `SLOW` on every stripe (release:
//!   a fast hold that sees it clear sees the device), then stores
//!   `PRESENT | priority` (release). A removal can start only after that
//!   store, so its `SLOW` bits come after the adder's clears.
//! - `PRESENT` (fast mode): holds go to the stripes. A slow hold (a CAS
//!   adding 1 to `slow pins` while `PRESENT && !DYING`) is still possible.
//! - A removal first *claims* the entry: CAS `PRESENT, !REMOVING` ->
//!   `| REMOVING` (only one removal runs at a time; [`Devices::remove`] and
//!   [`Devices::remove_empty`] answer `Busy` while another runs,
//!   [`Devices::remove_wait`] waits for it). It then sets `SLOW` on the
//!   device's word of every stripe (`fetch_or`, acq_rel): from then on the
//!   stripes' counts can only fall (a fast hold's CAS fails on `SLOW` and
//!   the caller takes a slow hold), so "every stripe's count is 0" is a
//!   fact that stays true, and the removal decides on the state word alone.
//!   The `fetch_or`, or a later acquire load, that reads a stripe's count
//!   as 0 synchronizes with every release `fetch_sub` of that word, so the
//!   dropped holds' accesses to the device happen before the removal takes
//!   it. No pair of words has to be read in a Dekker pattern.
//! - `remove`: if a stripe counted a hold, or `slow pins != 0`, it gives
//!   up; else it CASes `slow pins == 0` -> `| DYING`.
//! - `remove_empty` must also know the device holds no data, which an
//!   allocation between its check and its removal would falsify. With the
//!   stripes at 0 it CASes `slow pins == 0` -> `| NOALLOC` (no allocation
//!   is in flight then); a hold taken while `NOALLOC` is set (a slow one:
//!   the stripes are `SLOW`) cannot allocate ([`DevicePin::alloc`] answers
//!   `NoSpace`), but frees and reads go on. It checks the device is empty,
//!   then CASes `NOALLOC, slow pins == 0` -> `| DYING`, or gives up.
//! - `remove_wait` claims with `REMOVING | DYING` in one CAS (new slow holds
//!   fail at once), sets `SLOW` (new fast holds fail too), and waits for
//!   every stripe's count and `slow pins` to reach 0.
//! - Giving up (`Busy`): clear `NOALLOC`, clear `SLOW` on every stripe (fast
//!   mode again), then clear `REMOVING` (release: the next removal's `SLOW`
//!   bits come after these clears). Holds never fail while a removal that
//!   gives up runs: they take the slow path.
//! - `DYING` (with `REMOVING`): no new hold can be taken (fast: `SLOW`;
//!   slow: `DYING`). Once none is held (`remove` and `remove_empty` set
//!   `DYING` only then; `remove_wait` waits after setting it) the remover
//!   takes the device out and stores 0 (`EMPTY`), leaving the stripes
//!   `SLOW`.
//!
//! # Performance
//! Taking and dropping a hold: one load and one CAS, then one `fetch_sub`,
//! on the caller's stripe (2 locked RMWs on a line no other stripe writes;
//! before: the same 2 on the one state word per device that all CPUs
//! shared). The table is `MAX_DEVICES` entries plus `HOLD_STRIPES * 128`
//! bytes (2 KiB) of stripes.

use vswap_alloc::sync::{AtomicU64, Ordering, UnsafeCell, spin_hint};
use vswap_alloc::{ClusterState, Ctx, DeviceStats, Error, Geometry, PhysDevice, Provider, Result};

/// Devices an engine can hold (device numbers `0..MAX_DEVICES`).
pub const MAX_DEVICES: usize = 16;

/// Stripes of the fast-path hold counts (see the module documentation).
#[cfg(not(vswap_loom))]
pub const HOLD_STRIPES: usize = 16;
/// Stripes of the fast-path hold counts (two under loom, to keep the models
/// small).
#[cfg(vswap_loom)]
pub const HOLD_STRIPES: usize = 2;

const PINS: u64 = 0xffff_ffff;
const PRESENT: u64 = 1 << 32;
const DYING: u64 = 1 << 33;
const ADDING: u64 = 1 << 34;
const NOALLOC: u64 = 1 << 35;
const REMOVING: u64 = 1 << 36;
const PRIO_SHIFT: u32 = 40;

/// In a stripe word: the count of fast holds, and the slow-mode bit.
const COUNT: u64 = 0xffff_ffff;
const SLOW: u64 = 1 << 32;

struct Entry<P: Provider> {
    state: AtomicU64,
    dev: UnsafeCell<Option<PhysDevice<P>>>,
}

/// One stripe: a fast-hold word per device, on lines of its own.
#[repr(align(128))]
struct Stripe([AtomicU64; MAX_DEVICES]);

impl Stripe {
    fn new() -> Self {
        Self(core::array::from_fn(|_| AtomicU64::new(SLOW)))
    }
}

/// The device table.
pub struct Devices<P: Provider> {
    entries: [Entry<P>; MAX_DEVICES],
    stripes: [Stripe; HOLD_STRIPES],
}

// SAFETY: `dev` is written only by the thread that owns the entry (ADDING,
// or DYING with no holds) and read only under a hold; `PhysDevice` is Sync.
unsafe impl<P: Provider> Sync for Devices<P> {}
// SAFETY: as above; the devices move with the table.
unsafe impl<P: Provider + Send> Send for Devices<P> {}

/// The stripe [`Devices::pin`] uses (only speed depends on it): with the
/// `std` feature, a per-thread index handed out round robin on the thread's
/// first hold (so the first `HOLD_STRIPES` threads get distinct stripes;
/// afterwards a thread-local read); without it, a Fibonacci hash of the
/// caller's stack address in 16 KiB units (one value per thread, give or
/// take a stack frame crossing a boundary; each kernel task has its own
/// stack); under loom, 0.
#[inline(always)]
fn stripe_hint() -> u32 {
    #[cfg(vswap_loom)]
    {
        0
    }
    #[cfg(all(not(vswap_loom), feature = "std"))]
    {
        thread_stripe::get()
    }
    #[cfg(all(not(vswap_loom), not(feature = "std")))]
    {
        let probe = 0u8;
        let a = core::ptr::addr_of!(probe).addr() as u64;
        // The top bits of the product: consecutive stacks spread out.
        ((a >> 14).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - HOLD_STRIPES.trailing_zeros()))
            as u32
    }
}

#[cfg(all(not(vswap_loom), feature = "std"))]
mod thread_stripe {
    extern crate std;
    use core::cell::Cell;
    use vswap_alloc::sync::{AtomicU32, Ordering};

    /// The next thread's stripe (a shared counter, touched once per thread).
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const UNSET: u32 = u32::MAX;

    std::thread_local! {
        static STRIPE: Cell<u32> = const { Cell::new(UNSET) };
    }

    #[inline(always)]
    pub(super) fn get() -> u32 {
        STRIPE
            .try_with(|s| match s.get() {
                UNSET => {
                    let v = NEXT.fetch_add(1, Ordering::Relaxed) & (UNSET >> 1);
                    s.set(v);
                    v
                }
                v => v,
            })
            // The thread's locals are being torn down: any stripe will do.
            .unwrap_or(0)
    }
}

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
    /// The word this hold is counted in: a stripe's, or the entry's state.
    count: &'a AtomicU64,
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
        self.count.fetch_sub(1, Ordering::Release);
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
            stripes: core::array::from_fn(|_| Stripe::new()),
        }
    }

    /// Write an empty table into `place` entry by entry (the table is
    /// about 8.5 KiB: an engine built in place keeps it off the stack).
    ///
    /// # Safety
    /// `place` is valid for writes of a `Self` and aligned.
    pub(crate) unsafe fn init_in(place: *mut Self) {
        // SAFETY: `place` is valid for writes (contract); the entries and
        // the stripes are written one at a time through raw pointers.
        unsafe {
            let entries = core::ptr::addr_of_mut!((*place).entries).cast::<Entry<P>>();
            for i in 0..MAX_DEVICES {
                entries.add(i).write(Entry {
                    state: AtomicU64::new(0),
                    dev: UnsafeCell::new(None),
                });
            }
            let stripes = core::ptr::addr_of_mut!((*place).stripes).cast::<Stripe>();
            for i in 0..HOLD_STRIPES {
                stripes.add(i).write(Stripe::new());
            }
        }
    }

    fn entry(&self, id: u8) -> Result<&Entry<P>> {
        self.entries.get(usize::from(id)).ok_or(Error::NoDevice)
    }

    /// Device `id`'s word on every stripe.
    fn words(&self, id: u8) -> impl Iterator<Item = &AtomicU64> {
        self.stripes
            .iter()
            .filter_map(move |s| s.0.get(usize::from(id)))
    }

    /// Add `dev` as device `id` with `priority` (higher is used first).
    /// `Exists`-like `WrongState` if the number is taken.
    pub fn add(&self, id: u8, priority: u8, dev: PhysDevice<P>) -> Result<()> {
        let e = self.entry(id)?;
        e.state
            .compare_exchange(0, ADDING, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| Error::WrongState)?;
        // SAFETY: ADDING makes us the only thread touching `dev` (no hold
        // can be taken: the stripes are SLOW and the entry is not PRESENT).
        e.dev.with_mut(|p| unsafe { *p = Some(dev) });
        // Fast mode, then PRESENT: no removal can start before the store,
        // so none sets SLOW before these clears.
        for w in self.words(id) {
            w.fetch_and(!SLOW, Ordering::Release);
        }
        e.state.store(
            PRESENT | (u64::from(priority) << PRIO_SHIFT),
            Ordering::Release,
        );
        Ok(())
    }

    /// Hold device `id`, counted on the calling thread's stripe (see the
    /// module documentation).
    #[inline]
    pub fn pin(&self, id: u8) -> Result<DevicePin<'_, P>> {
        self.pin_on(id, stripe_hint())
    }

    /// Hold device `id`, counted on stripe `stripe % HOLD_STRIPES`: pass
    /// the caller's CPU number where it has one. Any number is correct;
    /// callers that share one only slow each other down.
    #[inline]
    pub fn pin_on(&self, id: u8, stripe: u32) -> Result<DevicePin<'_, P>> {
        let e = self.entry(id)?;
        let w = self
            .stripes
            .get(stripe as usize % HOLD_STRIPES)
            .and_then(|s| s.0.get(usize::from(id)))
            .ok_or(Error::NoDevice)?;
        let mut c = w.load(Ordering::Relaxed);
        while c & SLOW == 0 && c & COUNT != COUNT {
            match w.compare_exchange_weak(c, c + 1, Ordering::Acquire, Ordering::Relaxed) {
                // Fast mode: no removal has passed its SLOW step, so none
                // set NOALLOC (module documentation).
                Ok(_) => return Self::hold(e, w, id, true),
                Err(x) => c = x,
            }
        }
        self.pin_slow(e, id)
    }

    /// A hold counted in the entry's state word (a removal in progress, or
    /// a saturated stripe).
    #[cold]
    fn pin_slow<'a>(&'a self, e: &'a Entry<P>, id: u8) -> Result<DevicePin<'a, P>> {
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
        Self::hold(e, &e.state, id, s & NOALLOC == 0)
    }

    /// The pin for a hold just counted in `count`.
    #[inline(always)]
    fn hold<'a>(
        e: &'a Entry<P>,
        count: &'a AtomicU64,
        id: u8,
        may_alloc: bool,
    ) -> Result<DevicePin<'a, P>> {
        // SAFETY: the device was written before the count was put in a mode
        // that admits holds (the stripes' SLOW cleared, or PRESENT
        // published: both release, read by our acquire RMW), and it cannot
        // be taken out while our hold is counted, so the reference stays
        // valid (and unwritten) for the pin's lifetime. (loom records the
        // read while `with` runs: enough to see a hold racing an add or a
        // take.)
        match e.dev.with(|p| unsafe { &*p }) {
            Some(dev) => Ok(DevicePin {
                count,
                dev,
                id,
                may_alloc,
            }),
            None => {
                count.fetch_sub(1, Ordering::Release);
                Err(Error::NoDevice)
            }
        }
    }

    /// The priority of device `id`, if present.
    pub fn priority(&self, id: u8) -> Option<u8> {
        let s = self.entry(id).ok()?.state.load(Ordering::Acquire);
        (s & (PRESENT | DYING) == PRESENT).then_some((s >> PRIO_SHIFT) as u8)
    }

    /// Remove device `id` if no operation holds it (`Busy` otherwise, also
    /// while another removal of it runs) and return it.
    pub fn remove(&self, id: u8) -> Result<PhysDevice<P>> {
        let e = self.entry(id)?;
        Self::claim(e)?;
        if self.slow_mode(id) {
            return Err(self.give_up(e, id));
        }
        Self::set_if_unpinned(e, DYING).map_err(|_| self.give_up(e, id))?;
        self.take(e)
    }

    /// The start of `remove` and `remove_empty`: the device is present and
    /// no other removal runs; then `REMOVING` is set by CAS.
    fn claim(e: &Entry<P>) -> Result<()> {
        let mut s = e.state.load(Ordering::Acquire);
        loop {
            if s & (PRESENT | DYING) != PRESENT {
                return Err(Error::NoDevice);
            }
            if s & REMOVING != 0 {
                return Err(Error::Busy);
            }
            // Retried when only slow holds changed the word.
            match e.state.compare_exchange_weak(
                s,
                s | REMOVING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(x) => s = x,
            }
        }
    }

    /// Put device `id` in slow mode (`SLOW` on every stripe). Returns
    /// whether a stripe counted a hold then (its count can only fall now).
    fn slow_mode(&self, id: u8) -> bool {
        let mut held = false;
        for w in self.words(id) {
            held |= w.fetch_or(SLOW, Ordering::AcqRel) & COUNT != 0;
        }
        held
    }

    /// Whether every stripe's count of device `id` is 0 (slow mode).
    fn fast_drained(&self, id: u8) -> bool {
        self.words(id)
            .all(|w| w.load(Ordering::Acquire) & COUNT == 0)
    }

    /// Set `bit` by CAS while no slow hold is counted (the claimer's
    /// entry: only slow holds change the word meanwhile); `Err` if one is.
    fn set_if_unpinned(e: &Entry<P>, bit: u64) -> core::result::Result<(), ()> {
        let mut s = e.state.load(Ordering::Acquire);
        loop {
            if s & PINS != 0 {
                return Err(());
            }
            match e
                .state
                .compare_exchange_weak(s, s | bit, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(x) => s = x,
            }
        }
    }

    /// A claimed removal that fails: `NOALLOC` cleared, fast mode again,
    /// then `REMOVING` cleared (after the stripes: the next removal's
    /// `SLOW` bits must come after these clears). Returns `Busy`.
    #[cold]
    fn give_up(&self, e: &Entry<P>, id: u8) -> Error {
        e.state.fetch_and(!NOALLOC, Ordering::Release);
        for w in self.words(id) {
            w.fetch_and(!SLOW, Ordering::Release);
        }
        e.state.fetch_and(!REMOVING, Ordering::Release);
        Error::Busy
    }

    /// Remove device `id` if it holds no data and no operation holds it
    /// (`Busy` otherwise, also while another removal of it runs), and
    /// return it. No slot can be allocated on it between the check and the
    /// removal (see the module documentation); meanwhile its allocations
    /// answer `NoSpace`.
    pub fn remove_empty(&self, id: u8) -> Result<PhysDevice<P>> {
        let e = self.entry(id)?;
        Self::claim(e)?;
        // No hold, so no allocation in flight; holds taken from now on are
        // slow ones that see NOALLOC and cannot allocate, so the device's
        // used count can only fall.
        if self.slow_mode(id) || Self::set_if_unpinned(e, NOALLOC).is_err() {
            return Err(self.give_up(e, id));
        }
        let empty = self.pin_slow(e, id).is_ok_and(|d| d.stats().used == 0);
        if empty && Self::set_if_unpinned(e, DYING).is_ok() {
            return self.take(e);
        }
        Err(self.give_up(e, id))
    }

    /// Remove device `id`, refusing new holds at once and waiting for the
    /// ones held to be dropped (and for another removal of it to end).
    pub fn remove_wait(&self, id: u8) -> Result<PhysDevice<P>> {
        let e = self.entry(id)?;
        let mut s = e.state.load(Ordering::Acquire);
        loop {
            if s & (PRESENT | DYING) != PRESENT {
                return Err(Error::NoDevice);
            }
            if s & REMOVING != 0 {
                // Another removal runs: wait for its verdict.
                spin_hint();
                s = e.state.load(Ordering::Acquire);
                continue;
            }
            match e.state.compare_exchange_weak(
                s,
                s | REMOVING | DYING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(x) => s = x,
            }
        }
        self.slow_mode(id);
        while !self.fast_drained(id) || e.state.load(Ordering::Acquire) & PINS != 0 {
            spin_hint();
        }
        self.take(e)
    }

    fn take(&self, e: &Entry<P>) -> Result<PhysDevice<P>> {
        // SAFETY: DYING, every stripe SLOW and no hold counted anywhere:
        // nobody else can reach `dev`.
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
