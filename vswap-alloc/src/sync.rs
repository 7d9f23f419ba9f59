//! The one place where atomics, the slow-path lock, the spin hint and
//! [`UnsafeCell`] come from.
//!
//! Normal builds use `core::sync::atomic` and the `spin` crate. Builds with
//! `RUSTFLAGS="--cfg vswap_loom"` swap in loom's atomics and `loom::sync::Mutex`
//! so that every interleaving of the lock-free protocols can be explored (loom
//! cannot see inside `spin`).
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

/// The slow-path lock: `spin::Mutex` normally, `loom::sync::Mutex` under loom.
pub struct Mutex<T> {
    #[cfg(not(vswap_loom))]
    inner: spin::Mutex<T>,
    #[cfg(vswap_loom)]
    inner: loom::sync::Mutex<T>,
}

/// Guard returned by [`Mutex::lock`].
#[cfg(not(vswap_loom))]
pub type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;
/// Guard returned by [`Mutex::lock`].
#[cfg(vswap_loom)]
pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

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
    /// against a holder that was preempted. Without it (kernel mode, no OS
    /// to yield to) it spins.
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

/// Types that have a valid "all zero" value which can be built by [`init_table`].
///
/// # Safety
/// In non-loom builds, an all-zero bit pattern must be a valid value of the type
/// equal to `zeroed()`.
pub unsafe trait ZeroInit: Sized {
    /// The value that an all-zero page represents.
    fn zeroed() -> Self;
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
