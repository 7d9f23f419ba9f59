//! Standalone maps: a virtual map without devices (for tools that track
//! device slots themselves), or a *direct-mode* device map (each device slot
//! carries its own core word; today's kernel model). Both are also usable as
//! the target of `vswap_swapoff_virtual`.

use vswap_core::{MapConfig, SwapOps, VswapMap};

use crate::engine::bad_slots;
use crate::host::{Handle, HostOps, create_handle, destroy_handle, vswap_host_ops};
use crate::slots;
use crate::types::*;
use crate::util::{Code, ctx, guard, guard_void, out, ptr, read, write};

/// A standalone map (virtual or direct mode). Opaque; thread-safe.
pub struct vswap_map {
    _opaque: [u8; 0],
}

pub(crate) struct MapInner {
    pub(crate) map: VswapMap<HostOps, HostOps>,
    /// The device number reported to `ops->discard`.
    pub(crate) dev: u32,
}

/// The map behind a C handle.
///
/// # Safety
/// `m` is NULL or a handle from `vswap_map_create*` not yet destroyed.
pub(crate) unsafe fn map<'a>(m: *mut vswap_map) -> Result<&'a MapInner, Code> {
    let h = ptr(m.cast::<Handle<MapInner>>().cast_const())?;
    // SAFETY: a live handle (the caller's contract): its object is
    // initialised and lives until `vswap_map_destroy`.
    Ok(unsafe { &(*h.as_ptr()).inner })
}

fn publish(dst: core::ptr::NonNull<*mut vswap_map>, h: core::ptr::NonNull<Handle<MapInner>>) {
    // SAFETY: `dst` was checked by `out`; writable by the caller's contract.
    unsafe { write(dst, h.as_ptr().cast::<vswap_map>()) };
}

/// Create a virtual map (no devices) of geometry `*geometry`. Released
/// device slots of `VSWAP_BACKEND_PHYS` backends go to `ops->released_phys`
/// for the host to free.
///
/// Returns 0 and sets `*out`; -EINVAL for a NULL pointer, NULL `alloc` or
/// `free`, or a geometry out of bounds; -ENOMEM.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_create(
    geometry: *const vswap_geometry,
    ops: *const vswap_host_ops,
    out_map: *mut *mut vswap_map,
) -> i32 {
    // SAFETY: forwarded with the caller's contract.
    unsafe { create_virtual(geometry, ops, out_map, false) }
}

/// Create an *addressed* virtual map: as `vswap_map_create`, but the host
/// chooses the slots and takes them with `vswap_map_alloc_at` (a swap
/// device under the kernel's own swap allocator: the slot is the device
/// offset); `vswap_map_alloc` returns -EINVAL. Tables are made when a
/// cluster's first slot is taken and go back when its last is freed.
///
/// Returns 0 and sets `*out`; as `vswap_map_create` otherwise.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_create_addressed(
    geometry: *const vswap_geometry,
    ops: *const vswap_host_ops,
    out_map: *mut *mut vswap_map,
) -> i32 {
    // SAFETY: forwarded with the caller's contract.
    unsafe { create_virtual(geometry, ops, out_map, true) }
}

/// `vswap_map_create` and `vswap_map_create_addressed`.
///
/// # Safety
/// As `vswap_map_create`.
unsafe fn create_virtual(
    geometry: *const vswap_geometry,
    ops: *const vswap_host_ops,
    out_map: *mut *mut vswap_map,
    addressed: bool,
) -> i32 {
    guard(|| {
        let dst = out(out_map)?;
        // SAFETY: NULL or valid pointers (the caller's contract).
        let (g, ops) = unsafe { (read(geometry)?, read(ops)?) };
        let cfg = MapConfig {
            geometry: g.into(),
            addressed,
        };
        let h = create_handle(ops, |host, place| {
            place.write(MapInner {
                map: VswapMap::new(cfg, host, host)?,
                dev: 0,
            });
            Ok(())
        })?;
        publish(dst, h);
        Ok(0)
    })
}

/// Create a direct-mode map: the slots of a device of `cfg->geometry.slots`
/// pages, each carrying its own core word, the slot being its own location.
/// All tables are made now; bad slots are never handed out; with `discard`,
/// emptied clusters wait for `vswap_map_discard`. `dev` is the number passed
/// to `ops->discard`. `VSWAP_BACKEND_PHYS` cannot be stored in it.
///
/// Returns 0 and sets `*out`; as `vswap_map_create` otherwise.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_create_direct(
    cfg: *const vswap_device_config,
    dev: u32,
    ops: *const vswap_host_ops,
    out_map: *mut *mut vswap_map,
) -> i32 {
    guard(|| {
        let dst = out(out_map)?;
        // SAFETY: NULL or valid pointers (the caller's contract).
        let (cfg, ops) = unsafe { (read(cfg)?, read(ops)?) };
        // SAFETY: `bad_slots` is valid for `nr_bad` entries (contract).
        let bad = unsafe { bad_slots(&cfg) }?;
        let mc = MapConfig {
            geometry: cfg.geometry.into(),
            ..MapConfig::default()
        };
        let h = create_handle(ops, |host, place| {
            place.write(MapInner {
                map: VswapMap::direct(mc, cfg.discard, cfg.rotational, bad, host, host)?,
                dev,
            });
            Ok(())
        })?;
        publish(dst, h);
        Ok(0)
    })
}

/// Destroy a map; its tables go back through `free`. NULL is ignored. The
/// handle must not be used afterwards, nor concurrently.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_destroy(m: *mut vswap_map) {
    guard_void(|| {
        if let Ok(h) = ptr(m.cast::<Handle<MapInner>>().cast_const()) {
            // SAFETY: a live handle not used afterwards (the caller's contract).
            unsafe { destroy_handle(h) };
        }
    })
}

/// Is this a direct-mode map? Returns 1 (direct), 0 (virtual), or -EINVAL
/// for NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_is_direct(m: *mut vswap_map) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        Ok(i32::from(m.map.is_direct()))
    })
}

/// As `vswap_alloc`, without memcg or devices.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_alloc(
    m: *mut vswap_map,
    order: u32,
    cpu: u32,
    may_sleep: bool,
    slot: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::alloc(&m.map, order, cpu, may_sleep, slot)
    })
}

/// As `vswap_alloc_at`, without memcg or devices: -EINVAL unless the map
/// was made by `vswap_map_create_addressed`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_alloc_at(m: *mut vswap_map, slot: u32, may_sleep: bool) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        m.map.alloc_at(slot, ctx(may_sleep))?;
        Ok(0)
    })
}

/// As `vswap_reclaim`, for a standalone map.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_reclaim(m: *mut vswap_map) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        Ok(i32::try_from(m.map.reclaim()).unwrap_or(i32::MAX))
    })
}

/// As `vswap_dup`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_dup(
    m: *mut vswap_map,
    slot: u32,
    n: u32,
    may_sleep: bool,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::dup(&m.map, slot, n, may_sleep)
    })
}

/// As `vswap_try_get`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_try_get(
    m: *mut vswap_map,
    slot: u32,
    may_sleep: bool,
    entry: *mut vswap_entry,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::try_get(&m.map, slot, may_sleep, entry)
    })
}

/// As `vswap_put` (no charging).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_put(m: *mut vswap_map, slot: u32, n: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::put_result(m.map.put(slot, n))
    })
}

/// As `vswap_put_many`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_put_many(
    m: *mut vswap_map,
    start: u32,
    len: u32,
    done: *mut u32,
    freed: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::put_many(&m.map, start, len, slots::BatchOut::new(done, freed)?)
    })
}

/// As `vswap_put_range`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_put_range(
    m: *mut vswap_map,
    start: u32,
    order: u32,
    freed: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::put_range(&m.map, start, order, freed)
    })
}

/// As `vswap_cache_add`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_cache_add(
    m: *mut vswap_map,
    slot: u32,
    cookie: u64,
    may_sleep: bool,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::cache_add(&m.map, slot, cookie, may_sleep)
    })
}

/// As `vswap_cache_store`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_cache_store(
    m: *mut vswap_map,
    slot: u32,
    value: u64,
    may_sleep: bool,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::cache_store(&m.map, slot, value, may_sleep)
    })
}

/// As `vswap_cache_clear` (no charging).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_cache_clear(
    m: *mut vswap_map,
    slot: u32,
    shadow: u64,
    may_sleep: bool,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::put_result(m.map.cache_clear(slot, shadow, crate::util::ctx(may_sleep)))
    })
}

/// Clear the cache flag of every slot of the naturally aligned range
/// `start .. start + 2^order` (a large folio left the swap cache), leaving
/// `shadow` (0: none) in the cache word of each slot that outlives the
/// clear; slots with count 0 are freed. Writes how many were freed to
/// `*freed`. One read-side section and one CAS per slot (at most `2^order + 1` locked RMWs).
///
/// All or nothing: every slot is checked first, and on an error nothing
/// changed (and `*freed` is not written). Returns 0; -EINVAL for a NULL
/// pointer, an order above the cluster's or a misaligned start; -ERANGE for
/// a range that holds slot 0 or does not lie wholly inside the map; -ENOENT
/// if a slot of it is not live; -EEXIST if a slot of it is not cached;
/// -ENOMEM / -EAGAIN if a non-zero `shadow` needs the cluster's cache word
/// table and the host gives no memory. (A slot whose cache state another
/// thread changes between the check and the clear, which the caller must
/// prevent, is skipped; the others are cleared and its -EEXIST / -ENOENT is
/// returned.)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_cache_clear_range(
    m: *mut vswap_map,
    start: u32,
    order: u32,
    shadow: u64,
    may_sleep: bool,
    freed: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::cache_clear_range(&m.map, start, order, shadow, may_sleep, freed)
    })
}

/// mTHP swap-in check under one pin (read-only): can the naturally aligned
/// range `start .. start + 2^order` be swapped in as one large folio?
/// Writes the answer to `*res`: `VSWAP_SWAPIN_IN_CACHE` if a slot is in the
/// swap cache or locked; `VSWAP_SWAPIN_UNIFORM` with `VSWAP_BACKEND_ZERO` if
/// every slot is a zero page; `VSWAP_SWAPIN_CONTIGUOUS` if every slot is on
/// device `dev` at `off + i`; else `VSWAP_SWAPIN_NO`.
///
/// Returns 0; -EINVAL for a NULL pointer, a bad order or a misaligned
/// start; -ERANGE as `vswap_map_cache_clear_range`; -ENOENT if a slot of
/// the range is not live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_swapin_check(
    m: *mut vswap_map,
    start: u32,
    order: u32,
    res: *mut vswap_swapin,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::swapin_check(&m.map, start, order, res)
    })
}

/// As `vswap_cache_get`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_cache_get(
    m: *mut vswap_map,
    slot: u32,
    state: *mut vswap_cache_state,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::cache_get(&m.map, slot, state)
    })
}

/// As `vswap_lock`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_lock(m: *mut vswap_map, slot: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::lock(&m.map, slot)
    })
}

/// As `vswap_unlock`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_unlock(m: *mut vswap_map, slot: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::unlock(&m.map, slot)
    })
}

/// As `vswap_lock_range`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_lock_range(m: *mut vswap_map, start: u32, order: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::lock_range(&m.map, start, order)
    })
}

/// As `vswap_unlock_range`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_unlock_range(
    m: *mut vswap_map,
    start: u32,
    order: u32,
    freed: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::unlock_range(&m.map, start, order, freed)
    })
}

/// As `vswap_store`; on a direct-mode map a `VSWAP_BACKEND_PHYS` backend is
/// refused with -EEXIST (a direct slot is its own location).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_store(
    m: *mut vswap_map,
    slot: u32,
    expected: *const vswap_backend,
    new: *const vswap_backend,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or valid pointers (the caller's contract).
        let (m, (x, n)) = unsafe { (map(m)?, slots::backends(expected, new)?) };
        SwapOps::store(&m.map, slot, x, n)?;
        Ok(0)
    })
}

/// As `vswap_commit_unlock`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_commit_unlock(
    m: *mut vswap_map,
    slot: u32,
    expected: *const vswap_backend,
    new: *const vswap_backend,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or valid pointers (the caller's contract).
        let (m, (x, n)) = unsafe { (map(m)?, slots::backends(expected, new)?) };
        if m.map.is_direct() && matches!(n, vswap_core::Backend::Phys { .. }) {
            return Err(vswap_core::Error::WrongState.into());
        }
        m.map.commit_unlock(slot, x, n)?;
        Ok(0)
    })
}

/// As `vswap_lookup`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_lookup(
    m: *mut vswap_map,
    slot: u32,
    entry: *mut vswap_entry,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::lookup(&m.map, slot, entry)
    })
}

/// As `vswap_engine_get_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_get_stats(m: *mut vswap_map, st: *mut vswap_map_stats) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        slots::stats(&m.map, st)
    })
}

/// Run the pending discards of a direct-mode map created with `discard`:
/// for each emptied cluster call `ops->discard(ctx, dev, first, len)` (if
/// set), then make the cluster allocatable again.
///
/// Returns the number of clusters discarded (>= 0), or -EINVAL for NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_map_discard(m: *mut vswap_map) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let m = unsafe { map(m) }?;
        let host = *m.map.provider();
        let cs = u64::from(m.map.geometry().cluster_slots());
        let mut n = 0i32;
        while let Some(c) = m.map.take_discard() {
            host.discard(m.dev, u64::from(c) * cs, cs);
            m.map.discard_done(c)?;
            n = n.saturating_add(1);
        }
        Ok(n)
    })
}
