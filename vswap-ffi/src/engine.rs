//! The engine handle: the virtual map joined to physical devices (and
//! optionally a flash log device), with every operation on virtual slots.

use core::ffi::c_void;
use core::mem::MaybeUninit;
use vswap_alloc::sync::Mutex;

use vswap_core::{
    DeviceConfig, Engine, Error, Flushed, LogDevice, Move, PhysDevice, SwapOps, SwapinRange,
    VirtMove, Writeback,
};

use crate::host::{Handle, HostOps, create_handle, destroy_handle, vswap_host_ops};
use crate::map::{MapInner, vswap_map};
use crate::slots;
use crate::types::*;
use crate::util::{Code, ctx, dev_id, guard, guard_void, out, ptr, read, write};

/// An engine: a virtual swap map, its devices and its host callbacks.
/// Opaque; created by `vswap_engine_create`, thread-safe.
pub struct vswap_engine {
    _opaque: [u8; 0],
}

/// Log flushes handed to the host and not yet committed.
pub(crate) const PENDING_FLUSHES: usize = 8;

/// One of an engine's [`PENDING_FLUSHES`] places for a log flush.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pending {
    /// Unused.
    Free,
    /// Taken by a `vswap_log_flush` in progress (the flush runs with the
    /// lock dropped: the log device takes a lock of its own, and the library
    /// never holds two).
    Reserved,
    /// Handed to the host, waiting for its commit.
    Flushed(Flushed),
}

pub(crate) struct EngineInner {
    pub(crate) engine: Engine<HostOps, HostOps>,
    /// The library's slow-path lock (kernel mode: the host's spinlock).
    pub(crate) flushes: Mutex<[Pending; PENDING_FLUSHES]>,
}

/// The engine behind a C handle.
///
/// # Safety
/// `e` is NULL or a handle from `vswap_engine_create` not yet destroyed.
pub(crate) unsafe fn eng<'a>(e: *mut vswap_engine) -> Result<&'a EngineInner, Code> {
    let h = ptr(e.cast::<Handle<EngineInner>>().cast_const())?;
    // SAFETY: a live handle (the caller's contract): its object is
    // initialised and lives until `vswap_engine_destroy`.
    Ok(unsafe { &(*h.as_ptr()).inner })
}

/// Fill `g` with the default geometry: 512-slot clusters, 2^32 slots, 64
/// CPUs.
///
/// Returns 0, or -EINVAL if `g` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_geometry_default(g: *mut vswap_geometry) -> i32 {
    guard(|| {
        let g = out(g)?;
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(g, vswap_core::Geometry::default().into()) };
        Ok(0)
    })
}

/// Fill `cfg` with the default engine configuration: default geometry,
/// deferred placement, no charging, no log device, `VSWAP_PAGE_SIZE` pages.
///
/// Returns 0, or -EINVAL if `cfg` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_engine_config_default(cfg: *mut vswap_engine_config) -> i32 {
    guard(|| {
        let cfg = out(cfg)?;
        let c = vswap_engine_config {
            geometry: vswap_core::Geometry::default().into(),
            placement: VSWAP_PLACEMENT_DEFERRED,
            charge: VSWAP_CHARGE_NONE,
            log: core::ptr::null(),
            log_dev: 0,
            page_size: VSWAP_PAGE_SIZE,
            addressed: false,
        };
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(cfg, c) };
        Ok(0)
    })
}

/// Fill `cfg` for a solid-state device of `slots` pages: 512-slot clusters,
/// 64 CPUs, no discard, not rotational, no bad slots.
///
/// Returns 0, or -EINVAL if `cfg` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_device_config_default(
    cfg: *mut vswap_device_config,
    slots: u64,
) -> i32 {
    guard(|| {
        let cfg = out(cfg)?;
        let d = DeviceConfig::new(slots, vswap_core::Geometry::default().cpus);
        let c = vswap_device_config {
            geometry: d.geometry.into(),
            discard: false,
            rotational: false,
            bad_slots: core::ptr::null(),
            nr_bad: 0,
        };
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(cfg, c) };
        Ok(0)
    })
}

/// Create an engine with no devices (and, if `cfg->log` is set, the flash
/// log device as device `cfg->log_dev`). `ops` is copied; its callbacks are
/// used until `vswap_engine_destroy` returns. All memory, the handle's
/// included, comes from `ops->alloc`.
///
/// Returns 0 and sets `*out`; -EINVAL for a NULL pointer, NULL `alloc` or
/// `free`, an unknown placement/charge/GC policy or a geometry or log
/// configuration out of bounds; -ENODEV for a log device number of 16 or
/// more; -ENOMEM when `alloc` returns NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_engine_create(
    cfg: *const vswap_engine_config,
    ops: *const vswap_host_ops,
    out_engine: *mut *mut vswap_engine,
) -> i32 {
    guard(|| {
        let dst = out(out_engine)?;
        // SAFETY: NULL or valid pointers (the caller's contract).
        let (cfg, ops) = unsafe { (read(cfg)?, read(ops)?) };
        let core_cfg = cfg.to_core()?;
        let log = if cfg.log.is_null() {
            None
        } else {
            // SAFETY: a non-NULL `log` points to a valid config (contract).
            Some((dev_id(cfg.log_dev)?, unsafe { read(cfg.log)? }.to_core()?))
        };
        let h = create_handle(ops, |host, place: &mut MaybeUninit<EngineInner>| {
            let p = place.as_mut_ptr();
            // SAFETY: `p` is the handle's fresh, aligned place for an
            // `EngineInner`; the engine (about 13.5 KiB) is built directly in
            // its field, never on this stack (a kernel stack is 16 KiB), and
            // `flushes` is written after it succeeds. On `Err` nothing was
            // built there and `create_handle` frees the block.
            let engine = unsafe {
                &mut *core::ptr::addr_of_mut!((*p).engine)
                    .cast::<MaybeUninit<Engine<HostOps, HostOps>>>()
            };
            match log {
                None => Engine::new_in(engine, core_cfg, host, host).map(|_| ()),
                Some((id, lc)) => LogDevice::new(lc, host)
                    .and_then(|dev| Engine::with_log_in(engine, core_cfg, host, host, id, dev))
                    .map(|_| ()),
            }?;
            // SAFETY: as above; the engine is now initialised.
            unsafe {
                core::ptr::addr_of_mut!((*p).flushes)
                    .write(Mutex::new([Pending::Free; PENDING_FLUSHES]));
            }
            Ok(())
        })?;
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(dst, h.as_ptr().cast::<vswap_engine>()) };
        Ok(0)
    })
}

/// Destroy an engine: every table and device goes back to the host through
/// `free` (released zswap handles and device slots are not reported). NULL is
/// ignored. The handle must not be used afterwards, nor concurrently.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_engine_destroy(e: *mut vswap_engine) {
    guard_void(|| {
        if let Ok(h) = ptr(e.cast::<Handle<EngineInner>>().cast_const()) {
            // SAFETY: a live handle not used afterwards (the caller's contract).
            unsafe { destroy_handle(h) };
        }
    })
}

/// Occupancy and memory of the engine's virtual map.
///
/// Returns 0, or -EINVAL for a NULL pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_engine_get_stats(
    e: *mut vswap_engine,
    st: *mut vswap_map_stats,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::stats(e.engine.map(), st)
    })
}

/// Give back the tables of the virtual map's torn-down clusters whose grace
/// period has ended. The engine does this by itself whenever it tears a
/// cluster down or needs a new one; a host that wants an idle engine's
/// memory back calls it now and then (a kernel: from a timer or a
/// shrinker). Never sleeps; no callback but `free`.
///
/// Returns how many clusters' tables went back (>= 0), or -EINVAL for a
/// NULL engine.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_reclaim(e: *mut vswap_engine) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        Ok(i32::try_from(e.engine.map().reclaim()).unwrap_or(i32::MAX))
    })
}

// ---------------------------------------------------------------- devices

/// Add physical device `dev` (`0..VSWAP_MAX_DEVICES`) with `priority`
/// (0..=255, higher is used first; round robin among equals). Its tables are
/// made now, from `ops->alloc`.
///
/// Returns 0; -EINVAL for a NULL pointer, a priority above 255, a geometry
/// out of bounds or `bad_slots` NULL with `nr_bad` > 0; -ENODEV for a device
/// number of `VSWAP_MAX_DEVICES` or more or the log device's; -EEXIST if
/// `dev` is taken;
/// -ENOMEM.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_device_add(
    e: *mut vswap_engine,
    dev: u32,
    priority: u32,
    cfg: *const vswap_device_config,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or valid pointers (the caller's contract).
        let (e, cfg) = unsafe { (eng(e)?, read(cfg)?) };
        let id = dev_id(dev)?;
        let prio = u8::try_from(priority).map_err(|_| Code(-VSWAP_EINVAL))?;
        // SAFETY: `bad_slots` is valid for `nr_bad` entries (contract).
        let bad = unsafe { bad_slots(&cfg) }?;
        let dc = DeviceConfig {
            geometry: cfg.geometry.into(),
            discard: cfg.discard,
            rotational: cfg.rotational,
        };
        let provider = *e.engine.map().provider();
        let d = PhysDevice::new(dc, bad, provider)?;
        e.engine.add_device(id, prio, d)?;
        Ok(0)
    })
}

/// The bad slots of a device configuration as a slice.
///
/// # Safety
/// `cfg.bad_slots` is NULL or valid for `cfg.nr_bad` reads.
pub(crate) unsafe fn bad_slots<'a>(cfg: &vswap_device_config) -> Result<&'a [u64], Code> {
    if cfg.nr_bad == 0 {
        return Ok(&[]);
    }
    if cfg.nr_bad > isize::MAX as usize / 8 {
        return Err(Code(-VSWAP_EINVAL));
    }
    let p = ptr(cfg.bad_slots)?;
    // SAFETY: non-NULL, aligned, `nr_bad` readable entries (contract), and
    // the size fits an isize (checked).
    Ok(unsafe { core::slice::from_raw_parts(p.as_ptr(), cfg.nr_bad) })
}

/// Remove an empty device (evacuate it first); its tables go back to the
/// host.
///
/// Returns 0; -EINVAL for a NULL engine; -ENODEV if there is no such
/// device; -EBUSY if it still holds data or an operation holds it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_device_remove(e: *mut vswap_engine, dev: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        drop(e.engine.remove_device(dev_id(dev)?)?);
        Ok(0)
    })
}

/// Occupancy of device `dev`.
///
/// Returns 0; -EINVAL for a NULL pointer; -ENODEV if there is no such device.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_device_get_stats(
    e: *mut vswap_engine,
    dev: u32,
    st: *mut vswap_device_stats,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let st = out(st)?;
        let s = e.engine.device(dev_id(dev)?)?.stats();
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(st, s.into()) };
        Ok(0)
    })
}

/// The reverse map: the virtual slot whose data device slot `off` of `dev`
/// holds, in `*owner` (0 if the device slot is free or reserved).
///
/// Returns 0; -EINVAL for a NULL pointer; -ENODEV; -ERANGE for an offset
/// beyond the device.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_device_owner(
    e: *mut vswap_engine,
    dev: u32,
    off: u64,
    owner: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let owner = out(owner)?;
        let o = e.engine.device(dev_id(dev)?)?.owner(off)?;
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(owner, o.unwrap_or(0)) };
        Ok(0)
    })
}

/// Allocate a run of `2^order` device slots reserved for the virtual slots
/// `owner .. owner + 2^order` (device slot `off + i` is owned by `owner + i`
/// in the reverse map), by device priority (for relocation or a tier move:
/// the host copies data there, then calls `vswap_relocate`; or stores it
/// with `vswap_store` / `vswap_commit_unlock`). Writes the device and first
/// offset. A reservation that is not stored is freed with
/// `vswap_device_free`.
///
/// Returns 0; -EINVAL for a NULL pointer, a bad order or a CPU outside the
/// engine's (see `vswap_engine_config`); -ERANGE for owner 0 or a run past
/// 2^32 - 2; -ENOSPC when every device is full; -EAGAIN when only pending
/// discards stand in the way; -ENOMEM/-EAGAIN from the host's allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_alloc_phys(
    e: *mut vswap_engine,
    order: u32,
    cpu: u32,
    owner: u32,
    may_sleep: bool,
    dev: *mut u32,
    off: *mut u64,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let (dev, off) = (out(dev)?, out(off)?);
        let (d, o) = e.engine.alloc_phys(order, cpu, owner, ctx(may_sleep))?;
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe {
            write(dev, u32::from(d));
            write(off, o);
        }
        Ok(0)
    })
}

/// Free `len` device slots from `off` on `dev` reserved for the virtual
/// slots `owner .. owner + len` (by `vswap_alloc_phys`) that no virtual slot
/// refers to: a relocation that was not committed. Owner-checked and all or
/// nothing: slot `off + i` must belong to virtual slot `owner + i`, and that
/// virtual slot must not have it as its backend (it goes back when the slot
/// dies or moves). The freed slots are reported to `ops->released_phys`
/// like every other release.
///
/// Returns 0; -EINVAL for a NULL engine; -ENODEV; -ERANGE for owner 0 or
/// offsets outside the device; -ENOENT if a slot is free; -EEXIST for
/// another owner, or a slot still referenced by its owner. (Contract
/// change: owner 0 used to skip the owner check; every free is now
/// owner-checked.)
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_device_free(
    e: *mut vswap_engine,
    dev: u32,
    off: u64,
    len: u64,
    owner: u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        e.engine.free_reserved(dev_id(dev)?, off, len, owner)?;
        Ok(0)
    })
}

/// Run the pending discards of device `dev` (a device added with
/// `discard`): for each emptied cluster, call `ops->discard` (if set) and
/// then make the cluster allocatable again. Call it from a context that may
/// do the I/O, never from inside another vswap call.
///
/// Returns the number of clusters discarded (>= 0); -EINVAL for a NULL
/// engine; -ENODEV.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_device_discard(e: *mut vswap_engine, dev: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let d = e.engine.device(dev_id(dev)?)?;
        let host = *e.engine.map().provider();
        let cs = u64::from(d.geometry().cluster_slots());
        let mut n = 0i32;
        while let Some(c) = d.take_discard() {
            host.discard(dev, u64::from(c) * cs, cs);
            d.discard_done(c)?;
            n = n.saturating_add(1);
        }
        Ok(n)
    })
}

// ------------------------------------------------------------------ slots

/// Allocate `2^order` naturally aligned virtual slots on `cpu` (count 0, in
/// the swap cache), with memcg id `memcg` (0..=65535, or `VSWAP_NO_MEMCG`),
/// and device slots under eager placement. Writes the first slot.
///
/// Returns 0; -EINVAL for a NULL pointer, an order above the cluster order, a
/// CPU outside the engine's (see `vswap_engine_config`) or a memcg id out of
/// range; -ENOSPC when the space is
/// full (or the memcg charge is refused); -ENOMEM (`may_sleep`) or -EAGAIN
/// (not `may_sleep`) when `alloc` returns NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_alloc(
    e: *mut vswap_engine,
    order: u32,
    cpu: u32,
    memcg: u32,
    may_sleep: bool,
    slot: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let slot = out(slot)?;
        let memcg = match memcg {
            VSWAP_NO_MEMCG => None,
            m => Some(u16::try_from(m).map_err(|_| Code(-VSWAP_EINVAL))?),
        };
        let s = e.engine.alloc(order, cpu, memcg, ctx(may_sleep))?;
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(slot, s) };
        Ok(0)
    })
}

/// (An engine created with `addressed`) take virtual slot `slot`, which the
/// host chose (a swap device's offset): as `vswap_alloc` would have returned
/// it (count 0, in the swap cache), with memcg id `memcg` (0..=65535, or
/// `VSWAP_NO_MEMCG`), and a device slot under eager placement. The cluster's
/// tables are made first if it has none (with `may_sleep`).
///
/// Returns 0; -EINVAL for a NULL engine, an engine that is not addressed, a
/// CPU outside the engine's or a memcg id out of range; -ERANGE for slot 0,
/// `UINT32_MAX` or a slot outside the space; -EEXIST if the slot is
/// allocated already; -ENOSPC if the memcg charge is refused; -ENOMEM
/// (`may_sleep`) or -EAGAIN (not `may_sleep`) when `alloc` returns NULL, and
/// -EAGAIN while the slot's cluster, emptied less than a grace period ago,
/// waits with its cache or memcg tables for that grace period (retry
/// later). Nothing is changed on an error.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_alloc_at(
    e: *mut vswap_engine,
    slot: u32,
    cpu: u32,
    memcg: u32,
    may_sleep: bool,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let memcg = match memcg {
            VSWAP_NO_MEMCG => None,
            m => Some(u16::try_from(m).map_err(|_| Code(-VSWAP_EINVAL))?),
        };
        e.engine.alloc_at(slot, cpu, memcg, ctx(may_sleep))?;
        Ok(0)
    })
}

/// Add `n` swap counts (page-table references) to a live slot.
///
/// Returns 0; -EINVAL for a NULL engine; -ERANGE for slot 0 or a slot
/// outside the space; -ENOENT if it is free; -EOVERFLOW past the largest
/// count (2^32 - 1); -ENOMEM/-EAGAIN if the count side table needs memory
/// (the first count above 62 of a cluster's slots makes the cluster's count
/// block; a slot keeps its place there until it is freed, so its count
/// crossing 62 again needs none).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_dup(
    e: *mut vswap_engine,
    slot: u32,
    n: u32,
    may_sleep: bool,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::dup(e.engine.map(), slot, n, may_sleep)
    })
}

/// Take one count on `slot` if it is still live and write its state: a
/// lookup racing a free gets either a reference or -ENOENT.
///
/// Returns 0; as `vswap_dup` otherwise.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_try_get(
    e: *mut vswap_engine,
    slot: u32,
    may_sleep: bool,
    entry: *mut vswap_entry,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::try_get(e.engine.map(), slot, may_sleep, entry)
    })
}

/// Drop `n` swap counts. When the count reaches 0 and no folio is cached the
/// slot is freed: its backend goes back (zswap handle through
/// `release_zswap`, device slots to their device, then `released_phys`) and
/// its charge is given back (deferred to the unlock if the slot is locked, or
/// to the end of a racing `vswap_cache_store`).
///
/// Returns `VSWAP_LIVE` (0) or `VSWAP_FREED` (1); -EINVAL for a NULL engine
/// or a put of more counts than held; -ERANGE; -ENOENT if the slot is free.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_put(e: *mut vswap_engine, slot: u32, n: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::put_result(e.engine.put(slot, n))
    })
}

/// Put one count of each slot in `start .. start + len`, batched per cluster.
/// Not atomic: on a failure the slots before it were put and none after it.
/// Writes `*done` (slots put) and `*freed` (slots freed; after a failure a
/// lower bound, possibly 0) in every case but a NULL pointer. Each freed slot
/// gives back its memcg charge under the engine's charge policy.
///
/// Returns 0; on the first failing slot, its code as for `vswap_put`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_put_many(
    e: *mut vswap_engine,
    start: u32,
    len: u32,
    done: *mut u32,
    freed: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let o = slots::BatchOut::new(done, freed)?;
        // Frees give back their charges through the map's free hook.
        slots::put_many(e.engine.map(), start, len, o)
    })
}

/// Put one count of every slot of the naturally aligned range
/// `start .. start + 2^order`, all or nothing (every slot is locked first).
/// Writes the number of slots freed.
///
/// Returns 0; -EINVAL for a NULL pointer, an order above the cluster order, a
/// misaligned range or a slot with count 0; -ERANGE for a range that holds
/// slot 0 or does not lie wholly inside the space; -ENOENT if a slot is
/// free; -EBUSY if a slot is locked. Freed slots give back their memcg
/// charges under the engine's charge policy.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_put_range(
    e: *mut vswap_engine,
    start: u32,
    order: u32,
    freed: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::put_range(e.engine.map(), start, order, freed)
    })
}

/// A folio entered the swap cache: set the cache flag, store `cookie` in
/// the cache word.
///
/// Returns 0; -EINVAL; -ERANGE; -ENOENT; -EEXIST if the flag is already set;
/// -ENOMEM/-EAGAIN if the cluster's cache table must be made.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_cache_add(
    e: *mut vswap_engine,
    slot: u32,
    cookie: u64,
    may_sleep: bool,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::cache_add(e.engine.map(), slot, cookie, may_sleep)
    })
}

/// Write the cache word of a live slot (the folio cookie after
/// `vswap_alloc`, or a new shadow). The value only lands in the same live
/// slot: a slot that is not cached is held for the store, so a last
/// `vswap_put` racing it returns `VSWAP_LIVE` and the slot is freed here
/// when the store is done (backend released, charge given back, cache word
/// cleared), still returning 0.
///
/// Returns 0; -EINVAL; -ERANGE; -ENOENT (nothing written) if the slot is not
/// live; -ENOMEM/-EAGAIN.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_cache_store(
    e: *mut vswap_engine,
    slot: u32,
    value: u64,
    may_sleep: bool,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::cache_store(e.engine.map(), slot, value, may_sleep)
    })
}

/// The folio left the swap cache: clear the cache flag, leaving `shadow`
/// (0: none) in the cache word. Frees the slot if its count is 0.
///
/// Returns `VSWAP_LIVE` or `VSWAP_FREED`; -EINVAL; -ERANGE; -ENOENT; -EEXIST
/// if the flag is clear; -ENOMEM/-EAGAIN.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_cache_clear(
    e: *mut vswap_engine,
    slot: u32,
    shadow: u64,
    may_sleep: bool,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::put_result(e.engine.cache_clear(slot, shadow, ctx(may_sleep)))
    })
}

/// The cache flag and cache word of a slot.
///
/// Returns 0; -EINVAL; -ERANGE; -ENOENT.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_cache_get(
    e: *mut vswap_engine,
    slot: u32,
    state: *mut vswap_cache_state,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::cache_get(e.engine.map(), slot, state)
    })
}

/// Take the slot's lock bit (swap-in, writeback, relocation).
///
/// Returns 0; -EINVAL; -ERANGE; -ENOENT; -EBUSY if someone holds it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_lock(e: *mut vswap_engine, slot: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::lock(e.engine.map(), slot)
    })
}

/// Drop the slot's lock bit; frees the slot if it died while locked.
///
/// Returns `VSWAP_LIVE` or `VSWAP_FREED`; -EINVAL; -ERANGE; -ENOENT; -EPERM
/// if the lock is not held.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_unlock(e: *mut vswap_engine, slot: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::unlock(e.engine.map(), slot)
    })
}

/// Lock every slot of the naturally aligned range `start .. start +
/// 2^order`, all or nothing.
///
/// Returns 0; -EINVAL for a NULL engine, a bad order or a misaligned range;
/// -ERANGE for a range that holds slot 0 or does not lie wholly inside the
/// space; -ENOENT; -EBUSY.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_lock_range(e: *mut vswap_engine, start: u32, order: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::lock_range(e.engine.map(), start, order)
    })
}

/// Unlock every slot of a naturally aligned range; writes how many were
/// freed (slots that died while locked).
///
/// Returns 0; as `vswap_lock_range`, and -EPERM (nothing changed) if a slot
/// is not locked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_unlock_range(
    e: *mut vswap_engine,
    start: u32,
    order: u32,
    freed: *mut u32,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::unlock_range(e.engine.map(), start, order, freed)
    })
}

/// Replace the backend of an unlocked live slot by compare-and-set from
/// `*expected` to `*new` (the old backend's resource, if any, is released).
/// Low level: `vswap_writeout` chooses and stores a backend itself.
///
/// A `VSWAP_BACKEND_PHYS` `*new` (other than `*expected`) must be a device
/// slot reserved for this slot (`vswap_alloc_phys` with `owner` = `slot`):
/// a device the engine does not hold is -ENODEV, an offset beyond it
/// -ERANGE, a free device slot -ENOENT, another slot's -EEXIST; nothing
/// changes.
///
/// Returns 0; -EINVAL for a NULL pointer or an unknown kind; -ERANGE;
/// -ENOENT; -EBUSY if locked; -EEXIST if the backend is not `*expected`;
/// -E2BIG if a payload does not fit; the device-slot codes above;
/// -ENOMEM/-EAGAIN (nothing changed) if a same-filled value kept in the
/// map's table needs memory (allocated without sleeping).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_store(
    e: *mut vswap_engine,
    slot: u32,
    expected: *const vswap_backend,
    new: *const vswap_backend,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or valid pointers (the caller's contract).
        let (e, (x, n)) = unsafe { (eng(e)?, slots::backends(expected, new)?) };
        e.engine.map().store(slot, x, n)?;
        Ok(0)
    })
}

/// For the holder of the slot's lock: replace the backend `*expected` by
/// `*new` and unlock in one step, then release the old location.
///
/// A `VSWAP_BACKEND_PHYS` `*new` is checked as by `vswap_store` (the slot
/// stays locked when it is refused).
///
/// Returns 0; -EINVAL; -ERANGE; -ENOENT; -EPERM if the lock is not held;
/// -EEXIST (still locked) if the backend is not `*expected`; -E2BIG; -ESTALE
/// if the slot died while locked (nothing committed, the slot is freed; the
/// caller releases `*new` itself); the device-slot codes of `vswap_store`;
/// -ENOMEM/-EAGAIN (still locked, nothing changed) if a same-filled value
/// kept in the map's table needs memory (allocated without sleeping).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_commit_unlock(
    e: *mut vswap_engine,
    slot: u32,
    expected: *const vswap_backend,
    new: *const vswap_backend,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or valid pointers (the caller's contract).
        let (e, (x, n)) = unsafe { (eng(e)?, slots::backends(expected, new)?) };
        e.engine.map().commit_unlock(slot, x, n)?;
        Ok(0)
    })
}

/// A snapshot of a slot (stable only under its lock or a count).
///
/// Returns 0; -EINVAL; -ERANGE; -ENOENT.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_lookup(
    e: *mut vswap_engine,
    slot: u32,
    entry: *mut vswap_entry,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::lookup(e.engine.map(), slot, entry)
    })
}

/// Give every slot of a live, naturally aligned range memcg id `memcg`
/// (0..=65535). All or nothing.
///
/// Returns 0; -EINVAL (also for an id above 65535); -ERANGE (as
/// `vswap_lock_range`); -ENOENT; -ENOMEM/-EAGAIN.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_set_memcg(
    e: *mut vswap_engine,
    start: u32,
    order: u32,
    memcg: u32,
    may_sleep: bool,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let id = u16::try_from(memcg).map_err(|_| Code(-VSWAP_EINVAL))?;
        e.engine.map().set_memcg(start, order, id, ctx(may_sleep))?;
        Ok(0)
    })
}

/// The memcg id of a slot in `*memcg` (`VSWAP_NO_MEMCG` if none was set in
/// its cluster).
///
/// Returns 0; -EINVAL; -ERANGE; -ENOENT.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_memcg(e: *mut vswap_engine, slot: u32, memcg: *mut u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let memcg = out(memcg)?;
        let id = e.engine.map().memcg(slot)?;
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(memcg, id.map_or(VSWAP_NO_MEMCG, u32::from)) };
        Ok(0)
    })
}

/// Write out the page of a live slot whose backend is none or a device slot:
/// an all-zero page becomes `VSWAP_BACKEND_ZERO`, one repeated 64-bit word
/// `VSWAP_BACKEND_SAME`, else `ops->zswap_store` may take it
/// (`VSWAP_BACKEND_ZSWAP`), else it gets a device slot (`VSWAP_BACKEND_PHYS`:
/// the host writes the page there). Writes the chosen backend.
///
/// Returns 0; -EINVAL for a NULL pointer, a `len` other than the engine's
/// `page_size` (`vswap_engine_config`), or a CPU outside the engine's
/// (checked whether or not a device slot is needed); -ERANGE; -ENOENT;
/// -EEXIST for another backend; -EBUSY if locked; -ENOSPC when every device
/// is full (or the charge is refused); -EAGAIN when only pending discards
/// stand in the way; -ENOMEM/-EAGAIN (slot unchanged) if a same-filled word
/// kept in the map's table needs memory (allocated without sleeping).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_writeout(
    e: *mut vswap_engine,
    slot: u32,
    page: *const u8,
    len: usize,
    cpu: u32,
    backend: *mut vswap_backend,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let backend = out(backend)?;
        // SAFETY: `page` is valid for `len` bytes (the caller's contract).
        let page = unsafe { bytes(page, len) }?;
        let b = e.engine.writeout(slot, page, cpu)?;
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(backend, b.into()) };
        Ok(0)
    })
}

/// A C byte buffer as a slice (`-EINVAL` for NULL or a length over
/// `isize::MAX`).
///
/// # Safety
/// `p` is NULL or valid for `len` bytes of reads for `'a`.
pub(crate) unsafe fn bytes<'a>(p: *const u8, len: usize) -> Result<&'a [u8], Code> {
    let p = ptr(p)?;
    if len > isize::MAX as usize {
        return Err(Code(-VSWAP_EINVAL));
    }
    // SAFETY: non-NULL, `len` readable bytes (contract), size fits isize.
    Ok(unsafe { core::slice::from_raw_parts(p.as_ptr(), len) })
}

/// Start a zswap writeback: lock the slot, check it is in zswap, give it a
/// device slot. Fills `*wb`; the host decompresses `wb->handle`, writes the
/// page to `(wb->dev, wb->off)` and calls `vswap_writeback_commit` (or
/// `vswap_writeback_abort`).
///
/// Returns 0; -EINVAL for a NULL pointer or a CPU outside the engine's (see
/// `vswap_engine_config`); -ERANGE; -ENOENT; -EBUSY if locked; -EEXIST if
/// not in zswap; -ENOSPC; -EAGAIN.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_writeback_begin(
    e: *mut vswap_engine,
    slot: u32,
    cpu: u32,
    wb: *mut vswap_writeback,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let wb = out(wb)?;
        let w = e.engine.writeback_begin(slot, cpu)?;
        let c = vswap_writeback {
            slot: w.slot,
            dev: u32::from(w.dev),
            handle: w.handle,
            off: w.off,
        };
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(wb, c) };
        Ok(0)
    })
}

fn writeback(w: vswap_writeback) -> Result<Writeback, Code> {
    Ok(Writeback {
        slot: w.slot,
        handle: w.handle,
        dev: dev_id(w.dev)?,
        off: w.off,
    })
}

/// The page is on the device: commit the writeback, unlock, release the zswap
/// object.
///
/// Returns 0; -EINVAL for a NULL pointer; -ENODEV; -EEXIST if the backend
/// changed; -ESTALE if the slot died meanwhile (the device slot is given
/// back and reported to `ops->released_phys`, the slot freed).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_writeback_commit(
    e: *mut vswap_engine,
    wb: *const vswap_writeback,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or valid pointers (the caller's contract).
        let (e, w) = unsafe { (eng(e)?, read(wb)?) };
        e.engine.writeback_commit(writeback(w)?)?;
        Ok(0)
    })
}

/// Give up a writeback: free the device slot (reported to
/// `ops->released_phys`), unlock.
///
/// Returns `VSWAP_LIVE` or `VSWAP_FREED` (the slot died while locked);
/// -EINVAL; -ENODEV; -EPERM if the slot is not locked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_writeback_abort(
    e: *mut vswap_engine,
    wb: *const vswap_writeback,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or valid pointers (the caller's contract).
        let (e, w) = unsafe { (eng(e)?, read(wb)?) };
        slots::put_result(e.engine.writeback_abort(writeback(w)?))
    })
}

/// Relocation (GC, tier move), for the holder of the slot's lock: the data at
/// `(from_dev, from)` was copied to `(to_dev, to)` (from `vswap_alloc_phys`);
/// commit, unlock, release `from`.
///
/// `to` must be reserved for `slot` (as `vswap_store` checks it: -ENODEV,
/// -ERANGE, -ENOENT or -EEXIST otherwise, the slot still locked).
///
/// Returns 0; -EINVAL; -ERANGE; -ENOENT; -EPERM if not locked; -EEXIST if
/// the slot is not at `from`; -E2BIG; -ESTALE if the slot died while locked
/// (free `to` with `vswap_device_free`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_relocate(
    e: *mut vswap_engine,
    slot: u32,
    from_dev: u32,
    from: u64,
    to_dev: u32,
    to: u64,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let f = (
            u8::try_from(from_dev).map_err(|_| Code(-VSWAP_E2BIG))?,
            from,
        );
        let t = (u8::try_from(to_dev).map_err(|_| Code(-VSWAP_E2BIG))?, to);
        e.engine.map().relocate(slot, f, t)?;
        Ok(0)
    })
}

/// The host's side of an evacuation: carry out `*mv` (the slot is locked
/// meanwhile). For `VSWAP_MOVE_READ`, read the page into a swap cache folio
/// and set `*cookie` to its cookie. `VSWAP_MOVE_DROP` (with `*cookie` set)
/// hands back the folio of the read just before: the slot already had one in
/// the swap cache, or died meanwhile; its return value is ignored. Return 0
/// on success, a negative errno to
/// stop the evacuation (returned by `vswap_evacuate`), or -EBUSY to leave
/// this slot for a later pass. Must not call into the same engine.
pub type vswap_move_fn =
    Option<unsafe extern "C" fn(arg: *mut c_void, mv: *const vswap_move, cookie: *mut u64) -> i32>;

/// Move every slot off device `dev` (swapoff) through its reverse map: to
/// device `to`, or into memory when `to` is -1. `io(arg, ...)` carries out
/// each move. Writes what was done to `*done` on every return, errors
/// included (the moves counted there committed; all zero when nothing was
/// tried), except when `done` itself is NULL.
///
/// Returns 0; -EINVAL for a NULL pointer or `io`, `to` equal to `dev`, or a
/// CPU outside the engine's (also when moving to memory); -ENODEV for an unknown
/// source or target device; -ENOSPC if the target is full; -EBUSY if slots
/// stayed locked (or `io` kept returning -EBUSY) with no progress in a pass
/// (device slots reserved by `vswap_alloc_phys` but not stored are skipped,
/// and are not progress); `io`'s own negative code when it fails.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_evacuate(
    e: *mut vswap_engine,
    dev: u32,
    to: i32,
    cpu: u32,
    io: vswap_move_fn,
    arg: *mut c_void,
    done: *mut vswap_evacuated,
) -> i32 {
    guard(|| {
        let done = out(done)?;
        let zero = vswap_evacuated {
            moved: 0,
            lost_to_free: 0,
            passes: 0,
        };
        // Nothing done yet: written first, so that every later return leaves
        // `*done` true.
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(done, zero) };
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let io = io.ok_or(Code(-VSWAP_EINVAL))?;
        let to = match to {
            -1 => None,
            t => Some(u8::try_from(t).map_err(|_| Code::from(Error::NoDevice))?),
        };
        let mut failed = None;
        let r = e.engine.evacuate(dev_id(dev)?, to, cpu, |m| {
            let mv = match m {
                Move::Copy {
                    slot,
                    from_dev,
                    from,
                    to_dev,
                    to,
                } => vswap_move {
                    kind: VSWAP_MOVE_COPY,
                    slot,
                    from_dev: u32::from(from_dev),
                    to_dev: u32::from(to_dev),
                    from,
                    to,
                },
                Move::Read { slot, dev, off } => vswap_move {
                    kind: VSWAP_MOVE_READ,
                    slot,
                    from_dev: u32::from(dev),
                    to_dev: 0,
                    from: off,
                    to: 0,
                },
                Move::Drop { slot, cookie } => {
                    let mv = vswap_move {
                        kind: VSWAP_MOVE_DROP,
                        slot,
                        from_dev: 0,
                        to_dev: 0,
                        from: 0,
                        to: 0,
                    };
                    let mut c = cookie;
                    // SAFETY: as below; the result of a drop is ignored.
                    let _ = unsafe { io(arg, &mv, &mut c) };
                    return Ok(0);
                }
            };
            let mut cookie = 0u64;
            // SAFETY: the caller's callback with its own argument; `mv` and
            // `cookie` are valid for the whole call.
            let rc = unsafe { io(arg, &mv, &mut cookie) };
            if rc >= 0 {
                Ok(cookie)
            } else if rc == -VSWAP_EBUSY {
                Err(Error::Busy)
            } else {
                failed = Some(rc);
                Err(Error::NoDevice)
            }
        });
        let (d, rc) = match r {
            Ok(d) => (d, Ok(0)),
            Err(s) => (s.done, Err(failed.map_or(Code::from(s.error), Code))),
        };
        let c = vswap_evacuated {
            moved: d.moved,
            lost_to_free: d.lost_to_free,
            passes: d.passes,
        };
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(done, c) };
        rc
    })
}

/// The host's side of a swapoff of the virtual layer: put the data of
/// `mv->slot` (wherever `mv->backend` says) into direct slot `mv->to` and
/// repoint page tables and the swap cache there (`VSWAP_VIRT_TO_DIRECT`),
/// or bring it into memory (`VSWAP_VIRT_TO_MEMORY`). Return 0, a negative
/// errno to stop (returned by `vswap_swapoff_virtual`), or -EBUSY to retry
/// the slot on a later pass. Must not call into the same engine or map.
pub type vswap_virt_move_fn =
    Option<unsafe extern "C" fn(arg: *mut c_void, mv: *const vswap_virt_move) -> i32>;

/// Swapoff of the virtual layer itself: move every virtual slot to a slot of
/// the direct-mode map `direct` (count, cache flag and zero/same-filled
/// backend carried over), or to memory when `direct` is NULL. Each virtual
/// slot is freed after its move. Writes the number moved to `*moved` on
/// every return, errors included (those slots stay moved; 0 when nothing
/// was tried), except when `moved` itself is NULL.
///
/// Returns 0; -EINVAL for a NULL engine, `io` or `moved`, or a CPU outside
/// the engine's (a direct map with fewer CPUs gets `cpu` modulo its own);
/// -ENOSPC if the
/// direct map is full; -EBUSY if slots stayed locked with no progress;
/// `io`'s own negative code when it fails.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_swapoff_virtual(
    e: *mut vswap_engine,
    direct: *mut vswap_map,
    cpu: u32,
    io: vswap_virt_move_fn,
    arg: *mut c_void,
    moved: *mut u64,
) -> i32 {
    guard(|| {
        let moved = out(moved)?;
        // Nothing moved yet: written first, so that every later return
        // leaves `*moved` true.
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(moved, 0) };
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let io = io.ok_or(Code(-VSWAP_EINVAL))?;
        let to: Option<&dyn SwapOps> = if direct.is_null() {
            None
        } else {
            // SAFETY: a non-NULL `direct` is a live map handle (contract).
            let m: &MapInner = unsafe { crate::map::map(direct) }?;
            Some(&m.map)
        };
        let mut failed = None;
        let r = e.engine.swapoff_virtual(to, cpu, |m| {
            let mv = match m {
                VirtMove::ToDirect { slot, backend, to } => vswap_virt_move {
                    kind: VSWAP_VIRT_TO_DIRECT,
                    slot,
                    to,
                    backend: backend.into(),
                },
                VirtMove::ToMemory { slot, backend } => vswap_virt_move {
                    kind: VSWAP_VIRT_TO_MEMORY,
                    slot,
                    to: 0,
                    backend: backend.into(),
                },
            };
            // SAFETY: the caller's callback with its own argument; `mv` is
            // valid for the whole call.
            let rc = unsafe { io(arg, &mv) };
            if rc >= 0 {
                Ok(())
            } else if rc == -VSWAP_EBUSY {
                Err(Error::Busy)
            } else {
                failed = Some(rc);
                Err(Error::NoDevice)
            }
        });
        let (n, rc) = match r {
            Ok(n) => (n, Ok(0)),
            Err(s) => (s.done, Err(failed.map_or(Code::from(s.error), Code))),
        };
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(moved, n) };
        rc
    })
}

/// mTHP swap-in check: can the naturally aligned range `start .. start +
/// 2^order` be swapped in as one large folio? Writes the answer.
///
/// Returns 0; -EINVAL for a NULL pointer, a bad order or a misaligned start;
/// -ERANGE; -ENOENT if a slot of the range is free.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_swapin_check(
    e: *mut vswap_engine,
    start: u32,
    order: u32,
    res: *mut vswap_swapin,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let res = out(res)?;
        let r = match e.engine.swapin_check(start, order)? {
            SwapinRange::No => vswap_swapin::default(),
            SwapinRange::Uniform(k) => vswap_swapin {
                kind: VSWAP_SWAPIN_UNIFORM,
                backend_kind: kind_code(k),
                ..Default::default()
            },
            SwapinRange::Contiguous { dev, off } => vswap_swapin {
                kind: VSWAP_SWAPIN_CONTIGUOUS,
                backend_kind: VSWAP_BACKEND_PHYS,
                dev: u32::from(dev),
                off,
            },
        };
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(res, r) };
        Ok(0)
    })
}

/// Readahead neighbours: the virtual slots whose data sits next to `slot`'s
/// on its device (the aligned window of `next_pow2(len + 1)` device slots
/// around it), written to `out[0..len)`. `out` may be NULL when `len` is 0.
///
/// Returns the number written (>= 0; 0 if `slot` is not on a device);
/// -EINVAL for a NULL engine or buffer, or `len` above 2^20; -ERANGE;
/// -ENOENT; -ENODEV if its device is being removed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_readahead(
    e: *mut vswap_engine,
    slot: u32,
    out_slots: *mut u32,
    len: usize,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        if len > 1 << 20 {
            return Err(Code(-VSWAP_EINVAL));
        }
        let buf: &mut [u32] = if len == 0 {
            &mut []
        } else {
            let p = out(out_slots)?;
            // SAFETY: non-NULL, aligned, valid for `len` writes (the caller's
            // contract); `len` is small (checked). u32 has no invalid values.
            unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), len) }
        };
        let n = e.engine.readahead(slot, buf)?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    })
}

#[cfg(test)]
mod tests {
    use core::sync::atomic::{AtomicI64, Ordering};
    use std::alloc::{Layout, alloc, dealloc};

    use super::*;
    use crate::map::*;

    static BYTES: AtomicI64 = AtomicI64::new(0);

    unsafe extern "C" fn a(_: *mut c_void, size: usize, align: usize, _: bool) -> *mut c_void {
        let Ok(l) = Layout::from_size_align(size.max(1), align.max(1)) else {
            return core::ptr::null_mut();
        };
        BYTES.fetch_add(size as i64, Ordering::Relaxed);
        // SAFETY: a non-zero size.
        unsafe { alloc(l) }.cast()
    }

    unsafe extern "C" fn f(_: *mut c_void, p: *mut c_void, size: usize, align: usize) {
        BYTES.fetch_sub(size as i64, Ordering::Relaxed);
        // SAFETY: `p` came from `a` with this layout (the library's contract).
        unsafe {
            dealloc(
                p.cast(),
                Layout::from_size_align(size.max(1), align.max(1)).unwrap(),
            )
        };
    }

    /// The handle's self-referential layout (ops copy + an engine whose
    /// provider points at it) through create, use and destroy; also run
    /// under miri: `cargo +nightly miri test -p vswap-ffi --lib`.
    #[test]
    fn engine_and_map_handles_round_trip() {
        let ops = vswap_host_ops {
            ctx: core::ptr::null_mut(),
            alloc: Some(a),
            free: Some(f),
            release_zswap: None,
            released_phys: None,
            zswap_store: None,
            charge: None,
            uncharge: None,
            discard: None,
        };
        let mut cfg = core::mem::MaybeUninit::<vswap_engine_config>::uninit();
        // SAFETY: valid pointers; the handles are used only while live.
        unsafe {
            assert_eq!(vswap_engine_config_default(cfg.as_mut_ptr()), 0);
            let mut cfg = cfg.assume_init();
            cfg.geometry.slots = 1 << 12;
            cfg.geometry.cpus = 2;
            cfg.geometry.cluster_shift = 4;
            cfg.page_size = 64;
            let mut e = core::ptr::null_mut();
            assert_eq!(vswap_engine_create(&cfg, &ops, &mut e), 0);
            let mut d = core::mem::MaybeUninit::uninit();
            assert_eq!(vswap_device_config_default(d.as_mut_ptr(), 256), 0);
            let mut d = d.assume_init();
            d.geometry.cluster_shift = 4;
            d.geometry.cpus = 2;
            assert_eq!(vswap_device_add(e, 1, 1, &d), 0);
            let mut s = 0u32;
            assert_eq!(vswap_alloc(e, 0, 1, VSWAP_NO_MEMCG, true, &mut s), 0);
            let page = [0xffu8; 64];
            let mut b = vswap_backend::from(vswap_core::Backend::None);
            assert_eq!(
                vswap_writeout(e, s, page.as_ptr(), page.len(), 0, &mut b),
                0
            );
            assert_eq!(b.kind, VSWAP_BACKEND_SAME);
            let mut ph = [0x17u8; 64];
            ph[0] = 1;
            let t = {
                let mut t = 0u32;
                assert_eq!(vswap_alloc(e, 0, 0, VSWAP_NO_MEMCG, true, &mut t), 0);
                t
            };
            assert_eq!(vswap_writeout(e, t, ph.as_ptr(), ph.len(), 0, &mut b), 0);
            assert_eq!((b.kind, b.dev), (VSWAP_BACKEND_PHYS, 1));
            assert_eq!(vswap_cache_clear(e, s, 0, true), VSWAP_FREED);
            assert_eq!(vswap_cache_clear(e, t, 0, true), VSWAP_FREED);
            assert_eq!(vswap_lookup(e, s, core::ptr::null_mut()), -VSWAP_EINVAL);
            vswap_engine_destroy(e);

            let mut m = core::ptr::null_mut();
            assert_eq!(vswap_map_create_direct(&d, 3, &ops, &mut m), 0);
            assert_eq!(vswap_map_alloc(m, 0, 0, true, &mut s), 0);
            assert_eq!(vswap_map_cache_clear(m, s, 0, true), VSWAP_FREED);
            vswap_map_destroy(m);
        }
        assert_eq!(BYTES.load(Ordering::Relaxed), 0);
    }
}
