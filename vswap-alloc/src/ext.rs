//! Optional per-cluster tables: the cache word table and the memcg id table.
//!
//! Both are allocated on first use for a cluster and freed with the cluster.
//!
//! ## memcg protocol
//! `uniform` holds `UNIFORM | id` once any slot of the cluster was given an id;
//! while every slot gets that same id, no table exists (the fast case that needs
//! no memory). The first slot given a different id builds a table of 2-byte ids
//! filled with the uniform id and publishes it with one CAS on `memcg` (null ->
//! table); a loser frees its copy. Readers look at the table pointer first, so
//! a published table (already filled) is authoritative from the moment it appears.
//!
//! States: `EMPTY (uniform=0, memcg=null)` -> `UNIFORM(id) (memcg=null)` ->
//! `TABLE (memcg=ptr)`; no transition goes back while the cluster lives.

use core::ptr::{self, NonNull};

use crate::provider::{Ctx, Provider};
use crate::sync::{
    AtomicPtr, AtomicU16, AtomicU32, AtomicU64, Ordering, ZeroInit, drop_table, init_table,
};
use crate::{Error, Result};

const UNIFORM: u32 = 1 << 16;

/// Alignment of every table block the engine asks the provider for.
pub(crate) const TABLE_ALIGN: usize = 64;

/// The optional tables of one cluster.
pub struct ClusterExt {
    cache: AtomicPtr<AtomicU64>,
    memcg: AtomicPtr<AtomicU16>,
    uniform: AtomicU32,
}

// SAFETY: all-zero is two null pointers and an EMPTY uniform word.
unsafe impl ZeroInit for ClusterExt {
    fn zeroed() -> Self {
        Self {
            cache: AtomicPtr::zeroed(),
            memcg: AtomicPtr::zeroed(),
            uniform: AtomicU32::new(0),
        }
    }
}

/// Allocate and initialise a table of `n` zeroed `T`s.
pub(crate) fn alloc_table<T: ZeroInit, P: Provider>(
    p: &P,
    n: usize,
    ctx: Ctx,
) -> Result<NonNull<T>> {
    let size = n * core::mem::size_of::<T>();
    let b = p.alloc_zeroed(size, TABLE_ALIGN.max(core::mem::align_of::<T>()), ctx)?;
    let t = b.cast::<T>();
    // SAFETY: the block is fresh, zeroed, aligned and holds `n` Ts.
    unsafe { init_table(t.as_ptr(), n) };
    Ok(t)
}

/// Free a table from [`alloc_table`].
///
/// # Safety
/// `t` came from `alloc_table(p, n, _)` and nobody uses it any more.
pub(crate) unsafe fn free_table<T, P: Provider>(p: &P, t: NonNull<T>, n: usize) {
    let size = n * core::mem::size_of::<T>();
    // SAFETY: the caller guarantees exclusive ownership of an initialised table.
    unsafe {
        drop_table(t.as_ptr(), n);
        p.free(t.cast(), size, TABLE_ALIGN.max(core::mem::align_of::<T>()));
    }
}

impl ClusterExt {
    /// Bytes of the record itself.
    pub(crate) const fn record_bytes() -> usize {
        core::mem::size_of::<Self>()
    }

    /// The cache word table, if one was made.
    pub(crate) fn cache(&self, n: usize) -> Option<&[AtomicU64]> {
        let p = self.cache.load(Ordering::Acquire);
        // SAFETY: a published table holds `n` initialised words and lives as long
        // as the cluster, which the caller's pin keeps alive.
        (!p.is_null()).then(|| unsafe { core::slice::from_raw_parts(p, n) })
    }

    /// The cache word table, made on first use. Returns the table and the bytes
    /// this call added.
    pub(crate) fn cache_or_create<P: Provider>(
        &self,
        p: &P,
        n: usize,
        ctx: Ctx,
    ) -> Result<(&[AtomicU64], usize)> {
        if let Some(t) = self.cache(n) {
            return Ok((t, 0));
        }
        let t = alloc_table::<AtomicU64, P>(p, n, ctx)?;
        let added = match self.cache.compare_exchange(
            ptr::null_mut(),
            t.as_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => n * core::mem::size_of::<AtomicU64>(),
            Err(_) => {
                // SAFETY: we lost the race; `t` was never published.
                unsafe { free_table(p, t, n) };
                0
            }
        };
        self.cache(n).map(|t| (t, added)).ok_or(Error::NoMem)
    }

    /// The memcg id of slot `off`, if one was set.
    pub(crate) fn memcg_get(&self, off: usize, n: usize) -> Option<u16> {
        let t = self.memcg.load(Ordering::Acquire);
        if !t.is_null() {
            // SAFETY: a published table holds `n` ids and lives with the cluster;
            // `off < n` is checked by the caller (`get` returns None otherwise).
            let tbl = unsafe { core::slice::from_raw_parts(t, n) };
            return tbl.get(off).map(|a| a.load(Ordering::Acquire));
        }
        let u = self.uniform.load(Ordering::Acquire);
        (u & UNIFORM != 0).then_some(u as u16)
    }

    /// Give slot `off` the memcg id `id`. Returns the bytes this call added.
    pub(crate) fn memcg_set<P: Provider>(
        &self,
        p: &P,
        off: usize,
        n: usize,
        id: u16,
        ctx: Ctx,
    ) -> Result<usize> {
        let mut added = 0;
        loop {
            let t = self.memcg.load(Ordering::Acquire);
            if !t.is_null() {
                // SAFETY: as in `memcg_get`.
                let tbl = unsafe { core::slice::from_raw_parts(t, n) };
                tbl.get(off)
                    .ok_or(Error::OutOfRange)?
                    .store(id, Ordering::Release);
                return Ok(added);
            }
            let u = self.uniform.load(Ordering::Acquire);
            if u == 0 {
                if self
                    .uniform
                    .compare_exchange(
                        0,
                        UNIFORM | u32::from(id),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    return Ok(added);
                }
                continue;
            }
            if u as u16 == id {
                return Ok(added);
            }
            // A second id: build the table filled with the uniform id.
            let tbl = alloc_table::<AtomicU16, P>(p, n, ctx)?;
            // SAFETY: fresh table of `n` initialised ids, not yet shared.
            let s = unsafe { core::slice::from_raw_parts(tbl.as_ptr(), n) };
            for a in s {
                a.store(u as u16, Ordering::Relaxed);
            }
            match self.memcg.compare_exchange(
                ptr::null_mut(),
                tbl.as_ptr(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => added += n * core::mem::size_of::<AtomicU16>(),
                // SAFETY: lost the race; our table was never published.
                Err(_) => unsafe { free_table(p, tbl, n) },
            }
        }
    }

    /// Free the record's tables (cluster teardown). Returns the bytes freed.
    ///
    /// # Safety
    /// Nobody uses the record or its tables any more.
    pub(crate) unsafe fn free_tables<P: Provider>(&self, p: &P, n: usize) -> usize {
        let mut freed = 0;
        if let Some(t) = NonNull::new(self.cache.swap(ptr::null_mut(), Ordering::AcqRel)) {
            // SAFETY: exclusive per the caller; the table has `n` words.
            unsafe { free_table(p, t, n) };
            freed += n * core::mem::size_of::<AtomicU64>();
        }
        if let Some(t) = NonNull::new(self.memcg.swap(ptr::null_mut(), Ordering::AcqRel)) {
            // SAFETY: as above; `n` ids.
            unsafe { free_table(p, t, n) };
            freed += n * core::mem::size_of::<AtomicU16>();
        }
        freed
    }
}
