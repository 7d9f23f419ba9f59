//! Slot operations shared by the engine's virtual map and standalone maps:
//! each takes the map and the C arguments, checks the pointers first (so a
//! bad pointer changes nothing), then acts.

use core::ptr::NonNull;

use vswap_core::{Error, Host, Put, SwapinCheck, VswapMap};

use crate::host::HostOps;
use crate::types::{
    VSWAP_BACKEND_PHYS, VSWAP_BACKEND_ZERO, VSWAP_SWAPIN_CONTIGUOUS, VSWAP_SWAPIN_IN_CACHE,
    VSWAP_SWAPIN_UNIFORM, vswap_backend, vswap_cache_state, vswap_entry, vswap_map_stats,
    vswap_swapin,
};
use crate::util::{Code, R, ctx, out, put_code, read, write};

pub(crate) type Map<H> = VswapMap<HostOps, H>;

pub(crate) fn alloc<H: Host>(
    m: &Map<H>,
    order: u32,
    cpu: u32,
    may_sleep: bool,
    slot: *mut u32,
) -> R {
    let slot = out(slot)?;
    let s = m.alloc(order, cpu, ctx(may_sleep))?;
    // SAFETY: checked by `out`; writable by the caller's contract.
    unsafe { write(slot, s) };
    Ok(0)
}

pub(crate) fn dup<H: Host>(m: &Map<H>, slot: u32, n: u32, may_sleep: bool) -> R {
    m.dup(slot, n, ctx(may_sleep))?;
    Ok(0)
}

pub(crate) fn try_get<H: Host>(
    m: &Map<H>,
    slot: u32,
    may_sleep: bool,
    entry: *mut vswap_entry,
) -> R {
    let entry = out(entry)?;
    let e = m.try_get(slot, ctx(may_sleep))?;
    // SAFETY: checked by `out`; writable by the caller's contract.
    unsafe { write(entry, e.into()) };
    Ok(0)
}

/// `put_many`'s outputs, written on success and on failure alike.
pub(crate) struct BatchOut {
    pub(crate) done: NonNull<u32>,
    pub(crate) freed: NonNull<u32>,
}

impl BatchOut {
    pub(crate) fn new(done: *mut u32, freed: *mut u32) -> Result<Self, Code> {
        Ok(Self {
            done: out(done)?,
            freed: out(freed)?,
        })
    }
    pub(crate) fn set(&self, done: u32, freed: u32) {
        // SAFETY: both checked by `out`; writable by the caller's contract.
        unsafe {
            write(self.done, done);
            write(self.freed, freed);
        }
    }
}

pub(crate) fn put_many<H: Host>(m: &Map<H>, start: u32, len: u32, o: BatchOut) -> R {
    match m.put_many(start, len) {
        Ok(freed) => {
            o.set(len, freed);
            Ok(0)
        }
        Err(b) => {
            // The slots before `done` were put; how many of them were freed
            // is not reported by the map, so `freed` counts only whole
            // successes.
            o.set(b.done, 0);
            Err(b.error.into())
        }
    }
}

pub(crate) fn put_range<H: Host>(m: &Map<H>, start: u32, order: u32, freed: *mut u32) -> R {
    let freed = out(freed)?;
    let n = m.put_range(start, order)?;
    // SAFETY: checked by `out`; writable by the caller's contract.
    unsafe { write(freed, n) };
    Ok(0)
}

pub(crate) fn cache_clear_range<H: Host>(
    m: &Map<H>,
    start: u32,
    order: u32,
    shadow: u64,
    may_sleep: bool,
    freed: *mut u32,
) -> R {
    let freed = out(freed)?;
    let n = m.cache_clear_range(start, order, shadow, ctx(may_sleep))?;
    // SAFETY: checked by `out`; writable by the caller's contract.
    unsafe { write(freed, n) };
    Ok(0)
}

pub(crate) fn swapin_check<H: Host>(
    m: &Map<H>,
    start: u32,
    order: u32,
    res: *mut vswap_swapin,
) -> R {
    let res = out(res)?;
    let r = match m.swapin_range_check(start, order)? {
        SwapinCheck::Zero => vswap_swapin {
            kind: VSWAP_SWAPIN_UNIFORM,
            backend_kind: VSWAP_BACKEND_ZERO,
            ..Default::default()
        },
        SwapinCheck::Contiguous { dev, off } => vswap_swapin {
            kind: VSWAP_SWAPIN_CONTIGUOUS,
            backend_kind: VSWAP_BACKEND_PHYS,
            dev: u32::from(dev),
            off,
        },
        SwapinCheck::InCache => vswap_swapin {
            kind: VSWAP_SWAPIN_IN_CACHE,
            ..Default::default()
        },
        SwapinCheck::Mixed => vswap_swapin::default(),
    };
    // SAFETY: checked by `out`; writable by the caller's contract.
    unsafe { write(res, r) };
    Ok(0)
}

pub(crate) fn cache_add<H: Host>(m: &Map<H>, slot: u32, cookie: u64, may_sleep: bool) -> R {
    m.cache_add(slot, cookie, ctx(may_sleep))?;
    Ok(0)
}

pub(crate) fn cache_store<H: Host>(m: &Map<H>, slot: u32, value: u64, may_sleep: bool) -> R {
    m.cache_store(slot, value, ctx(may_sleep))?;
    Ok(0)
}

pub(crate) fn cache_get<H: Host>(m: &Map<H>, slot: u32, state: *mut vswap_cache_state) -> R {
    let state = out(state)?;
    let c = m.cache_get(slot)?;
    // SAFETY: checked by `out`; writable by the caller's contract.
    unsafe {
        write(
            state,
            vswap_cache_state {
                cached: c.cached,
                word: c.word,
            },
        )
    };
    Ok(0)
}

pub(crate) fn lock<H: Host>(m: &Map<H>, slot: u32) -> R {
    m.lock(slot)?;
    Ok(0)
}

pub(crate) fn unlock<H: Host>(m: &Map<H>, slot: u32) -> R {
    Ok(put_code(m.unlock(slot)?))
}

pub(crate) fn lock_range<H: Host>(m: &Map<H>, start: u32, order: u32) -> R {
    m.lock_range(start, order)?;
    Ok(0)
}

pub(crate) fn unlock_range<H: Host>(m: &Map<H>, start: u32, order: u32, freed: *mut u32) -> R {
    let freed = out(freed)?;
    let n = m.unlock_range(start, order)?;
    // SAFETY: checked by `out`; writable by the caller's contract.
    unsafe { write(freed, n) };
    Ok(0)
}

/// Decode a `(expected, new)` pair of C backends.
///
/// # Safety
/// Each pointer is NULL or points to a valid `vswap_backend`.
pub(crate) unsafe fn backends(
    expected: *const vswap_backend,
    new: *const vswap_backend,
) -> Result<(vswap_core::Backend, vswap_core::Backend), Code> {
    // SAFETY: the caller's contract, passed on.
    let (x, n) = unsafe { (read(expected)?, read(new)?) };
    Ok((x.to_core()?, n.to_core()?))
}

pub(crate) fn lookup<H: Host>(m: &Map<H>, slot: u32, entry: *mut vswap_entry) -> R {
    let entry = out(entry)?;
    let e = m.lookup(slot)?;
    // SAFETY: checked by `out`; writable by the caller's contract.
    unsafe { write(entry, e.into()) };
    Ok(0)
}

pub(crate) fn stats<H: Host>(m: &Map<H>, st: *mut vswap_map_stats) -> R {
    let st = out(st)?;
    let s = m.stats();
    // SAFETY: checked by `out`; writable by the caller's contract.
    unsafe { write(st, s.into()) };
    Ok(0)
}

/// `Put` or an error as a C return value.
pub(crate) fn put_result(r: Result<Put, Error>) -> R {
    Ok(put_code(r?))
}
