//! The host's memory provider.
//!
//! The engine never uses a global allocator. Every table it builds comes from a
//! [`Provider`] the host implements: zeroed blocks (a page for slot tables, small
//! blocks for directory levels and side tables), with a context flag telling
//! whether the caller may sleep. A provider that cannot satisfy a no-sleep request
//! returns [`MemError::Again`]; the engine passes that up as
//! [`Error::Again`](crate::Error::Again) so the caller can retry where it may sleep,
//! as the kernel does with `GFP_NOWAIT` followed by `GFP_KERNEL`.
//!
//! An allocation failure leaves all engine state unchanged.
//!
//! The provider also gives the engine *deferred reclamation*, the kernel's
//! RCU: [`Provider::read_lock`] / [`Provider::read_unlock`] around every
//! access to a slot table that the engine may free concurrently, and a
//! pollable grace period ([`Provider::grace_start`],
//! [`Provider::grace_done`]) before a retired table goes back through
//! [`Provider::free`]. A kernel host maps them to `rcu_read_lock`,
//! `rcu_read_unlock`, `start_poll_synchronize_rcu` and
//! `poll_state_synchronize_rcu`; [`StdProvider`] uses the thread-keyed epoch
//! scheme of `epoch` (feature `std`). Nothing the engine does inside a
//! section sleeps or calls the provider's `alloc_zeroed` with
//! [`Ctx::MaySleep`].

use core::ptr::NonNull;

use crate::Error;

/// The allocation context of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctx {
    /// The caller may sleep (`GFP_KERNEL`).
    MaySleep,
    /// The caller must not sleep (`GFP_NOWAIT`, spinlock held, preemption off).
    NoSleep,
}

/// Why a provider allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// No memory.
    NoMem,
    /// No memory without sleeping; retry with [`Ctx::MaySleep`].
    Again,
}

impl From<MemError> for Error {
    fn from(e: MemError) -> Self {
        match e {
            MemError::NoMem => Error::NoMem,
            MemError::Again => Error::Again,
        }
    }
}

/// A fallible source of zeroed memory, implemented by the host.
///
/// Sizes requested by the engine: `page_size`-byte slot tables (one core word per
/// slot of a 512-slot cluster is exactly 4 KiB), directory levels, and small
/// blocks (per-cluster extension records, per-CPU arrays, side-table pages).
///
/// # Safety
/// Implementations must return blocks that are valid for reads and writes of
/// `size` bytes, aligned to `align`, zero-filled, and not handed out again until
/// passed back to [`Provider::free`].
///
/// The reclamation methods must be a correct RCU: once
/// [`grace_done(c)`](Provider::grace_done) has returned `true` on some
/// thread, every read-side section (on any thread) that had begun when
/// [`grace_start`](Provider::grace_start) returned `c` has ended, and
/// everything done inside those sections happens before that return.
/// Sections nest, are per thread, and never end early.
pub unsafe trait Provider: Sync {
    /// Allocate a zero-filled block of `size` bytes aligned to `align`
    /// (`align` is a power of two no larger than `size` rounded up to one).
    fn alloc_zeroed(&self, size: usize, align: usize, ctx: Ctx) -> Result<NonNull<u8>, MemError>;

    /// Give a block back.
    ///
    /// # Safety
    /// `ptr` came from [`Provider::alloc_zeroed`] on this provider with the same
    /// `size` and `align`, and is not used afterwards.
    unsafe fn free(&self, ptr: NonNull<u8>, size: usize, align: usize);

    /// Enter a read-side section on this thread (`rcu_read_lock`; nests).
    /// Must not sleep or take a lock the engine could be waiting on.
    fn read_lock(&self);

    /// Leave the innermost section this thread entered (`rcu_read_unlock`).
    ///
    /// # Safety
    /// Pairs with one earlier [`read_lock`](Provider::read_lock) on the same
    /// thread that no other call has paired with.
    unsafe fn read_unlock(&self);

    /// Start a grace period, or join one that has started and not yet
    /// reached any section (`start_poll_synchronize_rcu`). The cookie names
    /// it for [`grace_done`](Provider::grace_done). Called under the
    /// engine's slow-path lock: must not sleep.
    fn grace_start(&self) -> u64;

    /// Whether the grace period named by `cookie` has ended
    /// (`poll_state_synchronize_rcu`). Called under the engine's slow-path
    /// lock: must not sleep.
    fn grace_done(&self, cookie: u64) -> bool;
}

// SAFETY: forwarding to a provider that upholds the contract.
unsafe impl<P: Provider + ?Sized> Provider for &P {
    fn alloc_zeroed(&self, size: usize, align: usize, ctx: Ctx) -> Result<NonNull<u8>, MemError> {
        (**self).alloc_zeroed(size, align, ctx)
    }
    unsafe fn free(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: same contract, forwarded.
        unsafe { (**self).free(ptr, size, align) }
    }
    #[inline]
    fn read_lock(&self) {
        (**self).read_lock();
    }
    #[inline]
    unsafe fn read_unlock(&self) {
        // SAFETY: same contract, forwarded.
        unsafe { (**self).read_unlock() }
    }
    fn grace_start(&self) -> u64 {
        (**self).grace_start()
    }
    fn grace_done(&self, cookie: u64) -> bool {
        (**self).grace_done(cookie)
    }
}

#[cfg(any(feature = "std", test))]
mod std_provider {
    extern crate std;

    use core::ptr::NonNull;
    use std::alloc::{Layout, alloc_zeroed, dealloc};
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

    use super::{Ctx, MemError, Provider};

    /// A provider backed by the process allocator, with exact accounting and
    /// fault injection, for userspace hosts and tests. Its read-side sections
    /// and grace periods are the process-wide thread-keyed epochs of
    /// `epoch` (feature `std`) (under loom: one reader count per provider,
    /// which loom can see).
    ///
    /// ```
    /// # #[cfg(feature = "std")] {
    /// use vswap_alloc::{Ctx, Provider, StdProvider};
    /// let p = StdProvider::new();
    /// let b = p.alloc_zeroed(4096, 4096, Ctx::MaySleep).unwrap();
    /// assert_eq!(p.bytes_in_use(), 4096);
    /// // SAFETY: `b` came from `p` with this size and alignment.
    /// unsafe { p.free(b, 4096, 4096) };
    /// assert_eq!(p.bytes_in_use(), 0);
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct StdProvider {
        bytes: AtomicU64,
        blocks: AtomicU64,
        peak: AtomicU64,
        allocs: AtomicU64,
        /// Allocations left before injected failures start; negative = never fail.
        fail_budget: AtomicI64,
        again_on_nosleep: AtomicBool,
        /// Loom builds: sections open (a grace period ends when none is).
        #[cfg(vswap_loom)]
        readers: crate::sync::AtomicU64,
    }

    impl StdProvider {
        /// A provider that never fails by itself.
        pub fn new() -> Self {
            Self {
                bytes: AtomicU64::new(0),
                blocks: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                allocs: AtomicU64::new(0),
                fail_budget: AtomicI64::new(-1),
                again_on_nosleep: AtomicBool::new(false),
                #[cfg(vswap_loom)]
                readers: crate::sync::AtomicU64::new(0),
            }
        }

        /// Bytes currently handed out.
        pub fn bytes_in_use(&self) -> u64 {
            self.bytes.load(Ordering::Relaxed)
        }

        /// Blocks currently handed out.
        pub fn blocks_in_use(&self) -> u64 {
            self.blocks.load(Ordering::Relaxed)
        }

        /// Largest `bytes_in_use` seen.
        pub fn peak_bytes(&self) -> u64 {
            self.peak.load(Ordering::Relaxed)
        }

        /// Successful allocations so far.
        pub fn total_allocs(&self) -> u64 {
            self.allocs.load(Ordering::Relaxed)
        }

        /// Let `n` more allocations succeed, then fail every one with `NoMem`
        /// (`None`: never fail).
        pub fn fail_after(&self, n: Option<u32>) {
            self.fail_budget
                .store(n.map_or(-1, i64::from), Ordering::SeqCst);
        }

        /// Fail every [`Ctx::NoSleep`] allocation with `Again`.
        pub fn again_on_nosleep(&self, on: bool) {
            self.again_on_nosleep.store(on, Ordering::SeqCst);
        }
    }

    // SAFETY: blocks come from the global allocator with the requested layout,
    // zeroed, and are returned only through `free` with the same layout.
    unsafe impl Provider for StdProvider {
        fn alloc_zeroed(
            &self,
            size: usize,
            align: usize,
            ctx: Ctx,
        ) -> Result<NonNull<u8>, MemError> {
            if ctx == Ctx::NoSleep && self.again_on_nosleep.load(Ordering::Relaxed) {
                return Err(MemError::Again);
            }
            let mut budget = self.fail_budget.load(Ordering::Relaxed);
            while budget >= 0 {
                if budget == 0 {
                    return Err(MemError::NoMem);
                }
                match self.fail_budget.compare_exchange(
                    budget,
                    budget - 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(b) => budget = b,
                }
            }
            let layout =
                Layout::from_size_align(size.max(1), align.max(1)).map_err(|_| MemError::NoMem)?;
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { alloc_zeroed(layout) };
            let p = NonNull::new(p).ok_or(MemError::NoMem)?;
            let now = self.bytes.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
            self.peak.fetch_max(now, Ordering::Relaxed);
            self.blocks.fetch_add(1, Ordering::Relaxed);
            self.allocs.fetch_add(1, Ordering::Relaxed);
            Ok(p)
        }

        unsafe fn free(&self, ptr: NonNull<u8>, size: usize, align: usize) {
            // The layout was valid when the block was allocated.
            let Ok(layout) = Layout::from_size_align(size.max(1), align.max(1)) else {
                return;
            };
            // SAFETY: the caller passes a block from `alloc_zeroed` with this layout.
            unsafe { dealloc(ptr.as_ptr(), layout) };
            self.bytes.fetch_sub(size as u64, Ordering::Relaxed);
            self.blocks.fetch_sub(1, Ordering::Relaxed);
        }

        #[cfg(not(vswap_loom))]
        #[inline]
        fn read_lock(&self) {
            crate::epoch::read_lock();
        }
        #[cfg(not(vswap_loom))]
        #[inline]
        unsafe fn read_unlock(&self) {
            // SAFETY: the caller pairs it with its own `read_lock`.
            unsafe { crate::epoch::read_unlock() };
        }
        #[cfg(not(vswap_loom))]
        fn grace_start(&self) -> u64 {
            crate::epoch::grace_start()
        }
        #[cfg(not(vswap_loom))]
        fn grace_done(&self, cookie: u64) -> bool {
            crate::epoch::grace_done(cookie)
        }

        // Under loom: a reader count (an RMW per section, which loom sees);
        // a grace period has ended once no section is open, which covers
        // every section open when it started.
        // All three are RMWs on one word, so that loom (which treats SeqCst
        // as AcqRel) sees the store-buffer pattern exactly: a grace check
        // ordered before a reader's entry publishes the retirement to it.
        #[cfg(vswap_loom)]
        fn read_lock(&self) {
            self.readers.fetch_add(1, crate::sync::Ordering::AcqRel);
        }
        #[cfg(vswap_loom)]
        unsafe fn read_unlock(&self) {
            self.readers.fetch_sub(1, crate::sync::Ordering::AcqRel);
        }
        #[cfg(vswap_loom)]
        fn grace_start(&self) -> u64 {
            0
        }
        #[cfg(vswap_loom)]
        fn grace_done(&self, _cookie: u64) -> bool {
            self.readers.fetch_add(0, crate::sync::Ordering::AcqRel) == 0
        }
    }

    impl Default for StdProvider {
        fn default() -> Self {
            Self::new()
        }
    }
}

#[cfg(any(feature = "std", test))]
pub use std_provider::StdProvider;
