//! The host interface: a struct of C callbacks, and the engine's `Provider`,
//! `EngineHost` and `Host` implemented over it.
//!
//! Each handle keeps its own copy of the `vswap_host_ops` the caller passed at
//! create time (the caller's struct need not outlive the call); the provider
//! and host the engine is built with are one pointer to that copy.

use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::ptr::NonNull;

use vswap_core::{Ctx, EngineHost, Host, MemError, Provider};

use crate::util::Code;

/// The host's callbacks, given at create time and copied into the handle.
///
/// Every callback gets `ctx` as its first argument. Callbacks are never called
/// while the library holds an internal lock, but may be called from any thread
/// that calls into the library (concurrently when several do), and must not
/// call back into the same handle. Every callback but `alloc` with
/// `may_sleep` and `discard` may be called inside a read-side section of the
/// library's reclamation (kernel mode: with `rcu_read_lock` held, through the
/// `vswap_host_rcu_*` hooks): those must not sleep.
///
/// `alloc` and `free` are required; the rest may be NULL.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct vswap_host_ops {
    /// Passed to every callback.
    pub ctx: *mut c_void,
    /// Allocate `size` bytes aligned to `align` (a power of two, at most 4096
    /// unless `size` is larger), or return NULL. `may_sleep` false means the
    /// caller must not sleep (`GFP_NOWAIT`); NULL then gives `-EAGAIN` (retry
    /// where sleeping is allowed), and NULL with `may_sleep` gives `-ENOMEM`.
    /// The memory need not be zeroed (the library zeroes it). Required.
    pub alloc: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            size: usize,
            align: usize,
            may_sleep: bool,
        ) -> *mut c_void,
    >,
    /// Give back a block from `alloc`, with the same `size` and `align`.
    /// Required.
    pub free:
        Option<unsafe extern "C" fn(ctx: *mut c_void, ptr: *mut c_void, size: usize, align: usize)>,
    /// A zswap object is no longer referenced: free it. May be NULL.
    pub release_zswap: Option<unsafe extern "C" fn(ctx: *mut c_void, handle: u64)>,
    /// `len` device slots from `off` on device `dev` were released (runs are
    /// coalesced). For an engine the slots are already back in the device's
    /// allocator (this is for the host's bookkeeping, e.g. discard batching);
    /// for a standalone map the host frees them. May be NULL.
    pub released_phys: Option<unsafe extern "C" fn(ctx: *mut c_void, dev: u32, off: u64, len: u64)>,
    /// Offer a page to zswap at writeout: return true and set `*handle` if it
    /// was compressed and kept (a handle that does not fit 50 sign-extended
    /// bits is released again with `release_zswap`). May be NULL (no zswap).
    pub zswap_store: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            slot: u32,
            page: *const u8,
            len: usize,
            handle: *mut u64,
        ) -> bool,
    >,
    /// Charge `pages` swap pages to memcg `memcg`; false refuses (over limit),
    /// which fails the operation with `-ENOSPC`. May be NULL (always true).
    pub charge: Option<unsafe extern "C" fn(ctx: *mut c_void, memcg: u16, pages: u32) -> bool>,
    /// Give back a charge. May be NULL.
    pub uncharge: Option<unsafe extern "C" fn(ctx: *mut c_void, memcg: u16, pages: u32)>,
    /// Discard device slots `first .. first + len` of device `dev` (called by
    /// `vswap_device_discard` and `vswap_map_discard`, never inside an
    /// allocation). May be NULL (those functions then only mark clusters
    /// discarded).
    pub discard: Option<unsafe extern "C" fn(ctx: *mut c_void, dev: u32, first: u64, len: u64)>,
}

/// The engine's provider and host: a pointer to the handle's copy of the ops.
#[derive(Clone, Copy, Debug)]
pub struct HostOps {
    ops: NonNull<vswap_host_ops>,
}

// SAFETY: the ops copy is written once before the handle is published and
// never changed while the handle lives; the callbacks' thread safety is the C
// host's documented contract (`vswap_host_ops`).
unsafe impl Send for HostOps {}
// SAFETY: as above: shared access only reads the immutable copy.
unsafe impl Sync for HostOps {}

impl HostOps {
    /// # Safety
    /// `ops` points to a `vswap_host_ops` with non-NULL `alloc` and `free`
    /// that stays valid and unchanged for as long as any copy of the result
    /// is used.
    pub(crate) unsafe fn new(ops: NonNull<vswap_host_ops>) -> Self {
        Self { ops }
    }

    fn ops(&self) -> &vswap_host_ops {
        // SAFETY: valid and unchanged for our lifetime (`new`'s contract).
        unsafe { self.ops.as_ref() }
    }

    /// Allocate and zero a block through the host (`alloc_zeroed` below).
    pub(crate) fn alloc_block(
        &self,
        size: usize,
        align: usize,
        ctx: Ctx,
    ) -> Result<NonNull<u8>, MemError> {
        let ops = self.ops();
        let fail = match ctx {
            Ctx::MaySleep => MemError::NoMem,
            Ctx::NoSleep => MemError::Again,
        };
        let Some(alloc) = ops.alloc else {
            return Err(fail);
        };
        // SAFETY: the host's callback with its own context, as documented.
        let p = unsafe { alloc(ops.ctx, size, align, ctx == Ctx::MaySleep) };
        let Some(p) = NonNull::new(p.cast::<u8>()) else {
            return Err(fail);
        };
        if (p.as_ptr() as usize) % align.max(1) != 0 {
            // A misaligned block would be undefined behaviour for the tables
            // built in it: give it back and report no memory.
            // SAFETY: the block came from `alloc` with this size and alignment.
            unsafe { self.free_block(p, size, align) };
            return Err(MemError::NoMem);
        }
        // SAFETY: the host returned a block valid for `size` bytes of writes
        // (its contract); zeroing it makes it what `Provider` promises.
        unsafe { p.as_ptr().write_bytes(0, size) };
        Ok(p)
    }

    /// # Safety
    /// `p` came from [`alloc_block`](Self::alloc_block) with `size`/`align`.
    pub(crate) unsafe fn free_block(&self, p: NonNull<u8>, size: usize, align: usize) {
        let ops = self.ops();
        if let Some(free) = ops.free {
            // SAFETY: giving the host back its own block, as documented.
            unsafe { free(ops.ctx, p.as_ptr().cast(), size, align) };
        }
    }

    /// The host's `discard` callback, if any.
    pub(crate) fn discard(&self, dev: u32, first: u64, len: u64) {
        let ops = self.ops();
        if let Some(f) = ops.discard {
            // SAFETY: the host's callback with its own context.
            unsafe { f(ops.ctx, dev, first, len) };
        }
    }
}

// SAFETY: `alloc_zeroed` returns blocks from the host's allocator checked for
// alignment and zeroed, valid for `size` bytes (the host's contract), and
// `free` hands back exactly those blocks.
unsafe impl Provider for HostOps {
    fn alloc_zeroed(&self, size: usize, align: usize, ctx: Ctx) -> Result<NonNull<u8>, MemError> {
        self.alloc_block(size, align, ctx)
    }
    unsafe fn free(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: same contract as `Provider::free`.
        unsafe { self.free_block(ptr, size, align) }
    }

    #[cfg(feature = "std")]
    #[inline]
    fn read_lock(&self) {
        vswap_core::epoch::read_lock();
    }
    #[cfg(feature = "std")]
    #[inline]
    unsafe fn read_unlock(&self) {
        // SAFETY: the caller pairs it with its own `read_lock`.
        unsafe { vswap_core::epoch::read_unlock() };
    }
    #[cfg(feature = "std")]
    fn grace_start(&self) -> u64 {
        vswap_core::epoch::grace_start()
    }
    #[cfg(feature = "std")]
    fn grace_done(&self, cookie: u64) -> bool {
        vswap_core::epoch::grace_done(cookie)
    }

    #[cfg(not(feature = "std"))]
    #[inline]
    fn read_lock(&self) {
        // SAFETY: the host's hook, declared in vswap.h; takes no arguments.
        unsafe { crate::rcu::vswap_host_rcu_read_lock() };
    }
    #[cfg(not(feature = "std"))]
    #[inline]
    unsafe fn read_unlock(&self) {
        // SAFETY: as above; the caller pairs it with its own `read_lock`.
        unsafe { crate::rcu::vswap_host_rcu_read_unlock() };
    }
    #[cfg(not(feature = "std"))]
    fn grace_start(&self) -> u64 {
        // SAFETY: as above.
        unsafe { crate::rcu::vswap_host_rcu_grace_start() }
    }
    #[cfg(not(feature = "std"))]
    fn grace_done(&self, cookie: u64) -> bool {
        // SAFETY: as above.
        unsafe { crate::rcu::vswap_host_rcu_grace_done(cookie) }
    }
}

impl EngineHost for HostOps {
    fn release_zswap(&self, handle: u64) {
        let ops = self.ops();
        if let Some(f) = ops.release_zswap {
            // SAFETY: the host's callback with its own context.
            unsafe { f(ops.ctx, handle) };
        }
    }
    fn released_phys(&self, dev: u8, off: u64, len: u64) {
        let ops = self.ops();
        if let Some(f) = ops.released_phys {
            // SAFETY: the host's callback with its own context.
            unsafe { f(ops.ctx, u32::from(dev), off, len) };
        }
    }
    fn zswap_store(&self, slot: u32, page: &[u8]) -> Option<u64> {
        let ops = self.ops();
        let f = ops.zswap_store?;
        let mut handle = 0u64;
        // SAFETY: `page` is valid for `page.len()` bytes and `handle` for a
        // write, for the whole call; the host's callback with its context.
        let kept = unsafe { f(ops.ctx, slot, page.as_ptr(), page.len(), &mut handle) };
        kept.then_some(handle)
    }
    fn charge(&self, id: u16, pages: u32) -> bool {
        let ops = self.ops();
        match ops.charge {
            // SAFETY: the host's callback with its own context.
            Some(f) => unsafe { f(ops.ctx, id, pages) },
            None => true,
        }
    }
    fn uncharge(&self, id: u16, pages: u32) {
        let ops = self.ops();
        if let Some(f) = ops.uncharge {
            // SAFETY: the host's callback with its own context.
            unsafe { f(ops.ctx, id, pages) };
        }
    }
}

impl Host for HostOps {
    fn release_zswap(&self, handle: u64) {
        EngineHost::release_zswap(self, handle)
    }
    fn release_phys(&self, dev: u8, off: u64, len: u64) {
        EngineHost::released_phys(self, dev, off, len)
    }
}

/// A handle's memory: the ops copy first, then the object built over it.
pub(crate) struct Handle<T> {
    pub(crate) ops: vswap_host_ops,
    pub(crate) inner: T,
}

/// Allocate a handle through the caller's `alloc`, copy `ops` into it, and
/// let `make` build its object in place (`make` gets a [`HostOps`] pointing
/// at that copy and the object's uninitialised place, and must initialise it
/// when it returns `Ok`). Building in place keeps a large object (the engine
/// is about 13.5 KiB) from being copied through this frame. On failure nothing
/// is left allocated. `-EINVAL` if `alloc` or `free` is NULL.
pub(crate) fn create_handle<T>(
    ops: vswap_host_ops,
    make: impl FnOnce(HostOps, &mut MaybeUninit<T>) -> Result<(), Code>,
) -> Result<NonNull<Handle<T>>, Code> {
    if ops.alloc.is_none() || ops.free.is_none() {
        return Err(Code(-crate::types::VSWAP_EINVAL));
    }
    let size = core::mem::size_of::<Handle<T>>();
    let align = core::mem::align_of::<Handle<T>>();
    // A temporary view of the caller's ops, for the handle's own allocation.
    let tmp = ops;
    // SAFETY: `tmp` lives on this stack frame for the whole use below and
    // has non-NULL alloc and free (checked).
    let boot = unsafe { HostOps::new(NonNull::from(&tmp)) };
    let raw = boot
        .alloc_block(size, align, Ctx::MaySleep)
        .map_err(|e| Code::from(vswap_core::Error::from(e)))?
        .cast::<Handle<T>>();
    // SAFETY: `raw` is a fresh block of `size` bytes aligned for
    // `Handle<T>`; writing a field through a raw pointer does not read the
    // uninitialised rest.
    unsafe { core::ptr::addr_of_mut!((*raw.as_ptr()).ops).write(ops) };
    // SAFETY: the copy just written stays in place and unchanged until
    // `destroy_handle` frees the block, after the object is dropped.
    let host = unsafe {
        HostOps::new(NonNull::new_unchecked(core::ptr::addr_of_mut!(
            (*raw.as_ptr()).ops
        )))
    };
    // SAFETY: the object's place in our fresh block, aligned for `T`;
    // `MaybeUninit<T>` has `T`'s layout and may be uninitialised.
    let place =
        unsafe { &mut *core::ptr::addr_of_mut!((*raw.as_ptr()).inner).cast::<MaybeUninit<T>>() };
    match make(host, place) {
        Ok(()) => Ok(raw),
        Err(e) => {
            // SAFETY: the block came from `alloc_block` with this layout;
            // `make` failed, so it holds no object to drop.
            unsafe { boot.free_block(raw.cast(), size, align) };
            Err(e)
        }
    }
}

/// Drop a handle's object, then give its memory back through the ops copy
/// it holds.
///
/// # Safety
/// `h` came from [`create_handle`] and is not used afterwards.
pub(crate) unsafe fn destroy_handle<T>(h: NonNull<Handle<T>>) {
    // SAFETY: `h` is a live handle (contract): its ops copy is initialised.
    let ops = unsafe { core::ptr::addr_of!((*h.as_ptr()).ops).read() };
    // SAFETY: the object was initialised by `create_handle` and is dropped
    // once; it may still use the ops copy while dropping (it is in place).
    unsafe { core::ptr::drop_in_place(core::ptr::addr_of_mut!((*h.as_ptr()).inner)) };
    let tmp = ops;
    // SAFETY: `tmp` lives on this frame for the call below.
    let boot = unsafe { HostOps::new(NonNull::from(&tmp)) };
    // SAFETY: the block came from the same host allocator with this layout.
    unsafe {
        boot.free_block(
            h.cast(),
            core::mem::size_of::<Handle<T>>(),
            core::mem::align_of::<Handle<T>>(),
        )
    };
}

#[cfg(test)]
mod tests {
    use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// A host whose `alloc` hands out `base + shift` (misaligned for odd
    /// shifts) or NULL, and whose `free` records the pointer it got back.
    struct Fake {
        base: *mut u8,
        shift: AtomicUsize,
        null: AtomicBool,
        freed: AtomicUsize,
    }

    unsafe extern "C" fn fake_alloc(ctx: *mut c_void, _: usize, _: usize, _: bool) -> *mut c_void {
        // SAFETY: `ctx` is the `Fake` the test passed, alive for the test.
        let f = unsafe { &*ctx.cast::<Fake>() };
        if f.null.load(Ordering::Relaxed) {
            return core::ptr::null_mut();
        }
        f.base.wrapping_add(f.shift.load(Ordering::Relaxed)).cast()
    }

    unsafe extern "C" fn fake_free(ctx: *mut c_void, ptr: *mut c_void, _: usize, _: usize) {
        // SAFETY: `ctx` is the `Fake` the test passed, alive for the test.
        let f = unsafe { &*ctx.cast::<Fake>() };
        f.freed.store(ptr as usize, Ordering::Relaxed);
    }

    #[test]
    fn blocks_are_zeroed_checked_for_alignment_and_null() {
        let mut buf = [u64::MAX; 8];
        let f = Fake {
            base: buf.as_mut_ptr().cast(),
            shift: AtomicUsize::new(0),
            null: AtomicBool::new(false),
            freed: AtomicUsize::new(0),
        };
        let o = vswap_host_ops {
            ctx: (&f as *const Fake).cast_mut().cast(),
            alloc: Some(fake_alloc),
            free: Some(fake_free),
            release_zswap: None,
            released_phys: None,
            zswap_store: None,
            charge: None,
            uncharge: None,
            discard: None,
        };
        // SAFETY: `o` outlives `h` and has alloc and free.
        let h = unsafe { HostOps::new(NonNull::from(&o)) };
        let p = h.alloc_zeroed(32, 8, Ctx::MaySleep).unwrap();
        // SAFETY: `p` is the start of `buf`, 64 bytes long.
        let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), 32) };
        assert!(bytes.iter().all(|b| *b == 0));
        // A misaligned block is given back and reported as no memory.
        f.shift.store(1, Ordering::Relaxed);
        assert_eq!(h.alloc_zeroed(8, 8, Ctx::MaySleep), Err(MemError::NoMem));
        assert_eq!(f.freed.load(Ordering::Relaxed), f.base as usize + 1);
        // NULL: no memory, or "again" where the caller must not sleep.
        f.null.store(true, Ordering::Relaxed);
        assert_eq!(h.alloc_zeroed(8, 8, Ctx::MaySleep), Err(MemError::NoMem));
        assert_eq!(h.alloc_zeroed(8, 8, Ctx::NoSleep), Err(MemError::Again));
        // Optional callbacks left NULL have their defaults.
        assert!(EngineHost::charge(&h, 1, 1));
        assert_eq!(EngineHost::zswap_store(&h, 1, &[0; 8]), None);
        assert_eq!(buf[4], u64::MAX); // beyond the 32 zeroed bytes
    }
}
