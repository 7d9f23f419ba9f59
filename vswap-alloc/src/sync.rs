//! The one place where atomics, the slow-path lock, the spin hint and
//! [`UnsafeCell`] come from.
//!
//! Normal builds use `core::sync::atomic`. Builds with
//! `RUSTFLAGS="--cfg vswap_loom"` swap in loom's atomics and `loom::sync::Mutex`
//! so that every interleaving of the lock-free protocols can be explored (loom
//! cannot see inside `spin` or a host's lock).
//!
//! # The slow-path lock: three builds
//!
//! [`Mutex`] guards the slow paths (a space's cluster lists, a map's side
//! table, a log device's segment state); its API is the same in every build
//! (`Mutex::new(value)`, infallible; [`lock`](Mutex::lock) returns a guard
//! that derefs to the value and unlocks when dropped). What it is depends on
//! the build, chosen at compile time:
//!
//! - **loom** (`--cfg vswap_loom`, any features): `loom::sync::Mutex`.
//! - **userspace** (feature `std`, with or without `host-lock`): a
//!   `spin::Mutex` taken by spinning about a microsecond and then yielding
//!   the CPU between attempts, so that a waiter does not spin out its time
//!   slice against a holder that was preempted.
//! - **kernel mode** (feature `host-lock` without `std`; vswap-ffi enables
//!   `host-lock` and is built without `std` for the kernel): the host's own
//!   lock, a kernel `spinlock_t` taken with `spin_lock_irqsave`, through
//!   three link-time hooks (direct calls, no function pointers; the same
//!   style as the `vswap_host_rcu_*` hooks):
//!   - `void vswap_host_spin_init(void *lock)`: `spin_lock_init` on
//!     [`HOST_LOCK_SIZE`] bytes aligned to [`HOST_LOCK_ALIGN`] that live
//!     inside the `Mutex` (the host checks at build time that its
//!     `spinlock_t` fits: its size depends on the kernel's configuration,
//!     lockdep makes it larger). Called once, by [`Mutex::new`].
//!   - `unsigned long vswap_host_spin_lock(void *lock)`: take it
//!     (`spin_lock_irqsave`) and return the saved interrupt flags, which
//!     the guard keeps;
//!   - `void vswap_host_spin_unlock(void *lock, unsigned long flags)`:
//!     `spin_unlock_irqrestore`.
//!
//!   So while the library holds the lock, preemption and interrupts are off
//!   on that CPU and lockdep (where the kernel has it) sees every
//!   acquisition. `irqsave` because the library may be entered with
//!   interrupts off (a host freeing slots under `xa_lock_irq`) as well as on,
//!   and a swap device may call it from a bio's completion; the locks guard
//!   slow paths only (cluster refills and teardowns, side-table changes), so
//!   saving and restoring the flags costs nothing measurable.
//!
//!   The storage is initialised by [`Mutex::new`] and then moved with the
//!   `Mutex` (Rust has no constructors in place): an unlocked `spinlock_t`
//!   holds no pointer to itself in any configuration (the lock word, debug
//!   owner fields, a lockdep map that points at a static class key and
//!   name; on PREEMPT_RT an empty waiter tree and no owner), so a bitwise
//!   move of an unlocked one is a valid lock. It cannot move while locked
//!   (the guard borrows the `Mutex`). A kernel spinlock needs no destroy:
//!   dropping the `Mutex` just drops the value.
//!
//!   All the library's locks are initialised by one `spin_lock_init` in the
//!   host, so lockdep puts them in one class; the library never holds two of
//!   them at once (every slow path takes one lock, and callbacks are never
//!   called under it), so there is no nested acquisition of that class to
//!   annotate. The kernel self-test checks both (the hooks are called, in
//!   pairs, and never nested on a CPU).
//!
//! `host-lock` is not needed by, and has no effect on, userspace builds
//! (they never reference the hooks); a `no_std` build without it (for
//! example a bare-metal target with no scheduler) keeps a plain
//! `spin::Mutex`.
//!
//! # Tables in provider memory
//!
//! loom's atomics have another size and layout than the real ones, and cannot be
//! conjured by zeroing memory. Tables that live in provider memory are therefore
//! always built through [`init_table`] and torn down through [`drop_table`]: in
//! normal builds the zeroed page already *is* a valid table of zeroed atomics and
//! both are no-ops; under loom every element is constructed and dropped.

#[cfg(not(vswap_loom))]
pub use core::sync::atomic::{AtomicPtr, AtomicU16, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(vswap_loom)]
pub use loom::sync::atomic::{AtomicPtr, AtomicU16, AtomicU32, AtomicU64, Ordering, fence};

/// Tell the processor (or loom's scheduler) that we are waiting for another thread.
#[inline]
pub fn spin_hint() {
    #[cfg(not(vswap_loom))]
    core::hint::spin_loop();
    #[cfg(vswap_loom)]
    loom::thread::yield_now();
}

/// The slow-path lock: `spin::Mutex` normally, `loom::sync::Mutex` under loom
/// (see the [module docs](self) for the three builds).
#[cfg(not(all(feature = "host-lock", not(feature = "std"), not(vswap_loom))))]
pub struct Mutex<T> {
    #[cfg(not(vswap_loom))]
    inner: spin::Mutex<T>,
    #[cfg(vswap_loom)]
    inner: loom::sync::Mutex<T>,
}

/// Guard returned by [`Mutex::lock`].
#[cfg(all(not(vswap_loom), not(all(feature = "host-lock", not(feature = "std")))))]
pub type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;
/// Guard returned by [`Mutex::lock`].
#[cfg(vswap_loom)]
pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

#[cfg(not(all(feature = "host-lock", not(feature = "std"), not(vswap_loom))))]
impl<T> Mutex<T> {
    /// A new unlocked mutex.
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(vswap_loom))]
            inner: spin::Mutex::new(value),
            #[cfg(vswap_loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    /// Take the lock, spinning while another CPU holds it. With the `std`
    /// feature (userspace) it spins a short while and then yields the CPU
    /// between attempts, so a waiter does not spin out its time slice
    /// against a holder that was preempted. Without it (a `no_std` build
    /// without `host-lock`: no OS to yield to) it spins. Kernel mode uses
    /// the host's spinlock instead (see the [module docs](self)).
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(all(not(vswap_loom), feature = "std"))]
        {
            if let Some(g) = self.inner.try_lock() {
                return g;
            }
            self.lock_contended()
        }
        #[cfg(all(not(vswap_loom), not(feature = "std")))]
        {
            // no_std without `host-lock` (kernel mode uses the host's lock).
            self.inner.lock()
        }
        #[cfg(vswap_loom)]
        {
            // A poisoned loom mutex means a model thread panicked; the model
            // has failed already, so taking the data is as good as anything.
            match self.inner.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }
        }
    }
}

#[cfg(all(not(vswap_loom), feature = "std"))]
impl<T> Mutex<T> {
    /// Spin for about a microsecond, then yield between attempts.
    #[cold]
    fn lock_contended(&self) -> MutexGuard<'_, T> {
        extern crate std;
        const SPINS: u32 = 128;
        let mut n = 0u32;
        loop {
            if let Some(g) = self.inner.try_lock() {
                return g;
            }
            if n < SPINS {
                n += 1;
                core::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Bytes each kernel-mode [`Mutex`] keeps for the host's lock (see the
/// [module docs](self)). Generous: a `spinlock_t` is 4 bytes on a production
/// x86-64 kernel, 64-72 with lockdep (and lock statistics), under 100 on
/// PREEMPT_RT with lockdep. The host checks `sizeof(spinlock_t) <=
/// HOST_LOCK_SIZE` at build time. Defined in every build (C hosts and
/// vswap-ffi's header use it); only kernel mode reserves the bytes.
pub const HOST_LOCK_SIZE: usize = 128;
/// Alignment of that storage (`__alignof__(spinlock_t)` is at most 8).
pub const HOST_LOCK_ALIGN: usize = 8;

#[cfg(all(feature = "host-lock", not(feature = "std"), not(vswap_loom)))]
pub use host_lock::{Mutex, MutexGuard};

/// The link-time hooks of kernel mode's lock, declared in every build (a
/// declaration that nothing calls links nothing): so that vswap-ffi can
/// check its own declarations against these whatever features the build
/// unified (`cargo build --workspace --no-default-features` turns this
/// crate's `std` on through other members while vswap-ffi's is off).
pub mod host_lock_hooks {
    use core::ffi::{c_ulong, c_void};

    unsafe extern "C" {
        /// Initialise an unlocked host lock in `HOST_LOCK_SIZE` bytes at
        /// `lock`, aligned to `HOST_LOCK_ALIGN` (`spin_lock_init`).
        pub fn vswap_host_spin_init(lock: *mut c_void);
        /// Take the lock at `lock` (`spin_lock_irqsave`); return the saved
        /// interrupt flags for [`vswap_host_spin_unlock`].
        pub fn vswap_host_spin_lock(lock: *mut c_void) -> c_ulong;
        /// Release it (`spin_unlock_irqrestore(lock, flags)`), on the CPU
        /// that took it, with the flags that call returned.
        pub fn vswap_host_spin_unlock(lock: *mut c_void, flags: c_ulong);
    }
}

/// Kernel mode's slow-path lock: the host's `spinlock_t`, through the
/// link-time hooks `vswap_host_spin_*` (see the [module docs](self)).
#[cfg(all(feature = "host-lock", not(feature = "std"), not(vswap_loom)))]
pub mod host_lock {
    use core::cell::UnsafeCell;
    use core::ffi::c_ulong;
    use core::marker::PhantomData;
    use core::ops::{Deref, DerefMut};

    pub use super::host_lock_hooks::{
        vswap_host_spin_init, vswap_host_spin_lock, vswap_host_spin_unlock,
    };
    use super::{HOST_LOCK_ALIGN, HOST_LOCK_SIZE};

    /// The storage the host's lock lives in (opaque to Rust).
    #[repr(C, align(8))]
    struct Storage(UnsafeCell<[u8; HOST_LOCK_SIZE]>);

    const _: () = assert!(core::mem::align_of::<Storage>() == HOST_LOCK_ALIGN);
    const _: () = assert!(core::mem::size_of::<Storage>() == HOST_LOCK_SIZE);

    /// The slow-path lock in kernel mode: a host spinlock and the value it
    /// guards.
    pub struct Mutex<T> {
        lock: Storage,
        value: UnsafeCell<T>,
    }

    // SAFETY: the value is reached only through a guard, which exists only
    // while the host's lock is held: one thread at a time, as with any
    // mutex. `T: Send` because the value may be used (and dropped) on
    // whichever thread holds the lock or drops the `Mutex`.
    unsafe impl<T: Send> Sync for Mutex<T> {}
    // SAFETY: the host's unlocked `spinlock_t` may be used from any CPU; it
    // moves with the `Mutex` (see the module docs: no self-pointers).
    unsafe impl<T: Send> Send for Mutex<T> {}

    impl<T> Mutex<T> {
        /// A new unlocked mutex (`vswap_host_spin_init` on its storage).
        pub fn new(value: T) -> Self {
            let m = Self {
                lock: Storage(UnsafeCell::new([0; HOST_LOCK_SIZE])),
                value: UnsafeCell::new(value),
            };
            // SAFETY: the storage is HOST_LOCK_SIZE bytes aligned to
            // HOST_LOCK_ALIGN (asserted above), owned by `m` and not in use;
            // the hook initialises an unlocked lock there and keeps no
            // pointer to it, so `m` may move afterwards (see the module docs).
            unsafe { vswap_host_spin_init(m.lock.0.get().cast()) };
            m
        }

        /// Take the lock: the host's `spin_lock_irqsave` (preemption and
        /// interrupts off on this CPU until the guard drops). Must not be
        /// called with this lock already held on this thread (it would
        /// deadlock, as any spinlock).
        #[inline]
        pub fn lock(&self) -> MutexGuard<'_, T> {
            // SAFETY: the storage holds a lock that `new` initialised and
            // that is only ever used through these hooks.
            let flags = unsafe { vswap_host_spin_lock(self.lock.0.get().cast()) };
            MutexGuard {
                mutex: self,
                flags,
                _not_send: PhantomData,
            }
        }
    }

    /// Guard returned by [`Mutex::lock`]: the lock is held (with the saved
    /// interrupt flags) until it drops. Not `Send`: a spinlock is released
    /// on the CPU that took it.
    pub struct MutexGuard<'a, T> {
        mutex: &'a Mutex<T>,
        flags: c_ulong,
        _not_send: PhantomData<*mut ()>,
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        #[inline]
        fn deref(&self) -> &T {
            // SAFETY: the lock is held for the guard's lifetime: no other
            // guard (and so no other reference to the value) exists.
            unsafe { &*self.mutex.value.get() }
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        #[inline]
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as in `deref`; `&mut self` makes this the only
            // reference through this guard.
            unsafe { &mut *self.mutex.value.get() }
        }
    }

    impl<T> Drop for MutexGuard<'_, T> {
        #[inline]
        fn drop(&mut self) {
            // SAFETY: this guard holds the lock (taken in `Mutex::lock` on
            // this thread; the guard is not `Send`), and `flags` is what
            // that call returned; no reference from `deref` outlives `self`.
            unsafe { vswap_host_spin_unlock(self.mutex.lock.0.get().cast(), self.flags) };
        }
    }
}

/// Types that have a valid "all zero" value which can be built by [`init_table`].
///
/// # Safety
/// In non-loom builds, an all-zero bit pattern must be a valid value of the type
/// equal to `zeroed()`.
pub unsafe trait ZeroInit: Sized {
    /// The value that an all-zero page represents.
    fn zeroed() -> Self;
}

// SAFETY: an all-zero u64 is 0 (plain words: bitmaps under a lock).
unsafe impl ZeroInit for u64 {
    fn zeroed() -> Self {
        0
    }
}
// SAFETY: an all-zero AtomicU64/U32/U16 is the atomic holding 0.
unsafe impl ZeroInit for AtomicU64 {
    fn zeroed() -> Self {
        AtomicU64::new(0)
    }
}
// SAFETY: as above.
unsafe impl ZeroInit for AtomicU32 {
    fn zeroed() -> Self {
        AtomicU32::new(0)
    }
}
// SAFETY: as above.
unsafe impl ZeroInit for AtomicU16 {
    fn zeroed() -> Self {
        AtomicU16::new(0)
    }
}
// SAFETY: an all-zero AtomicPtr is the null pointer.
unsafe impl<T> ZeroInit for AtomicPtr<T> {
    fn zeroed() -> Self {
        AtomicPtr::new(core::ptr::null_mut())
    }
}

/// Make `n` zeroed `T`s at `ptr` usable.
///
/// # Safety
/// `ptr` must be valid for writes of `n` `T`s, suitably aligned, and the memory
/// must be zero-filled (as every provider block is).
#[inline]
pub unsafe fn init_table<T: ZeroInit>(ptr: *mut T, n: usize) {
    #[cfg(vswap_loom)]
    for i in 0..n {
        // SAFETY: the caller guarantees `ptr..ptr+n` is valid for writes.
        unsafe { ptr.add(i).write(T::zeroed()) };
    }
    #[cfg(not(vswap_loom))]
    {
        let _ = (ptr, n);
    }
}

/// Undo [`init_table`] before the memory goes back to the provider.
///
/// # Safety
/// `ptr` must hold `n` initialised `T`s that nobody will use again.
#[inline]
pub unsafe fn drop_table<T>(ptr: *mut T, n: usize) {
    // SAFETY: the caller guarantees the elements are initialised and unused;
    // for real atomics this is a no-op, for loom it releases the model objects.
    unsafe { core::ptr::drop_in_place(core::ptr::slice_from_raw_parts_mut(ptr, n)) };
}

/// An `UnsafeCell` that loom can see: `core::cell::UnsafeCell` normally,
/// `loom::cell::UnsafeCell` under loom (which checks every access made
/// inside [`with`](Self::with) / [`with_mut`](Self::with_mut) against the
/// others for a race). Both builds use the same closure API.
#[derive(Debug)]
pub struct UnsafeCell<T> {
    #[cfg(not(vswap_loom))]
    inner: core::cell::UnsafeCell<T>,
    #[cfg(vswap_loom)]
    inner: loom::cell::UnsafeCell<T>,
}

impl<T> UnsafeCell<T> {
    /// A new cell holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(vswap_loom))]
            inner: core::cell::UnsafeCell::new(value),
            #[cfg(vswap_loom)]
            inner: loom::cell::UnsafeCell::new(value),
        }
    }

    /// Call `f` with a pointer for reading the value (loom records a read
    /// for the duration of `f`).
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        #[cfg(not(vswap_loom))]
        {
            f(self.inner.get())
        }
        #[cfg(vswap_loom)]
        {
            self.inner.with(f)
        }
    }

    /// Call `f` with a pointer for writing the value (loom records a write
    /// for the duration of `f`).
    #[inline]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(not(vswap_loom))]
        {
            f(self.inner.get())
        }
        #[cfg(vswap_loom)]
        {
            self.inner.with_mut(f)
        }
    }
}
