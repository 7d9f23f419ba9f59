//! The engine's flash log device path (an engine created with
//! `vswap_engine_config.log`): pages are staged at writeout and get device
//! offsets only when a whole segment is flushed; GC relocates live data.
//!
//! Flow: `vswap_log_writeout` stages; `vswap_log_flush` hands a segment to
//! the host, which writes every `(owner, offset)` of
//! `vswap_log_for_each_live` and then calls `vswap_log_commit`.
//!
//! zswap writeback to the log keeps the page's virtual slot:
//! `vswap_log_writeback_begin` locks the slot (in zswap) and stages it; the
//! host writes its page at the flush by decompressing the slot's zswap object
//! (`vswap_lookup` shows it; the object stays until the commit), and
//! `vswap_log_commit` stores the new offset, unlocks and releases the object.
//! Until then only `vswap_log_writeback_abort` (before the flush) or the
//! commit may end it: never `vswap_unlock` or `vswap_writeback_*` on it.

use core::ffi::c_void;

use vswap_core::{Flush, Flushed, GcPolicy};

use crate::engine::{EngineInner, Pending, bytes, eng, vswap_engine};
use crate::slots;
use crate::types::*;
use crate::util::{Code, guard, out, write};

/// A flushed log segment the host must write and then commit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vswap_log_flushed {
    /// The segment (pass it to `vswap_log_for_each_live` and
    /// `vswap_log_commit`).
    pub segment: u32,
    /// Slots that got an owner: offsets `base .. base + len`.
    pub len: u32,
    /// Padding slots at the end of the segment.
    pub padding: u32,
    /// Offset of the segment's first slot.
    pub base: u64,
}

/// The log device's counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vswap_log_stats {
    /// Bytes the host wrote (host-stream pages flushed).
    pub host_bytes: u64,
    /// Bytes written to the device (host and GC segments, padding included).
    pub device_bytes: u64,
    /// Bytes of pages relocated by GC.
    pub gc_bytes: u64,
    /// Bytes of padding.
    pub pad_bytes: u64,
    /// Segments written.
    pub segments_written: u64,
    /// GC victims collected.
    pub gc_runs: u64,
    /// Segments erased.
    pub segments_erased: u64,
    /// Slots holding live data.
    pub live_slots: u64,
    /// Free segments now.
    pub free_segments: u32,
    /// Owners staged in the host stream.
    pub staged_host: u32,
    /// Owners staged in the GC stream.
    pub staged_gc: u32,
}

/// What one GC pass did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vswap_gc_pass {
    /// The victim segment, or -1 if none was collected.
    pub victim: i64,
    /// Live entries found in the victim.
    pub live: u32,
    /// Entries staged for relocation.
    pub staged: u32,
    /// GC segments flushed during the pass.
    pub flushed: u32,
}

fn log_of(e: &EngineInner) -> Result<&vswap_core::LogDevice<crate::host::HostOps>, Code> {
    e.engine
        .log_device()
        .ok_or(Code::from(vswap_core::Error::NoDevice))
}

/// Writeout through the log device: like `vswap_writeout`, but a page that
/// needs a device slot is staged (its offset comes at the next flush).
///
/// Returns 1 if the page was staged (`*backend` untouched), 0 if it got a
/// backend without a device slot (written to `*backend`); -EINVAL for a NULL
/// pointer or a `len` other than the engine's `page_size`; -ENODEV if the engine has no log device;
/// -ERANGE; -ENOENT; -EEXIST if the slot already has a backend or is not in
/// the swap cache; -EBUSY when a whole segment is staged already (flush
/// first); -ENOSPC if the charge is refused.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_log_writeout(
    e: *mut vswap_engine,
    slot: u32,
    page: *const u8,
    len: usize,
    backend: *mut vswap_backend,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let backend = out(backend)?;
        // SAFETY: `page` is valid for `len` bytes (the caller's contract).
        let page = unsafe { bytes(page, len) }?;
        match e.engine.log_writeout(slot, page)? {
            Some(b) => {
                // SAFETY: checked by `out`; writable by the caller's contract.
                unsafe { write(backend, b.into()) };
                Ok(0)
            }
            None => Ok(1),
        }
    })
}

/// Start a zswap writeback to the log device, keeping the virtual slot: lock
/// the slot, check it is in zswap, charge its device slot and stage it. The
/// slot stays locked (its data readable from zswap) until `vswap_log_commit`
/// of the segment it is flushed into commits it (or `vswap_log_writeback_abort`
/// takes it back before the flush); the host writes its page at the flush
/// from the zswap object. Nothing changes on an error.
///
/// Returns 0; -EINVAL for a NULL engine; -ENODEV if the engine has no log
/// device; -ERANGE; -ENOENT; -EBUSY if the slot is locked (a staged writeback
/// of it included) or a whole segment is staged already (flush first);
/// -EEXIST if the slot is not in zswap; -ENOSPC if the charge is refused.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_log_writeback_begin(e: *mut vswap_engine, slot: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        e.engine.log_writeback_begin(slot)?;
        Ok(0)
    })
}

/// Take back a writeback staged by `vswap_log_writeback_begin` before its
/// flush: unstage it, give back its charge, unlock. Refuses, changing
/// nothing, anything else.
///
/// Returns `VSWAP_LIVE`, or `VSWAP_FREED` if the slot died while staged (the
/// unlock frees it and releases its zswap object); -EINVAL for a NULL engine;
/// -ENODEV; -ERANGE; -ENOENT; -EPERM if the slot is not locked; -EEXIST if
/// it is not a staged writeback (not in zswap, not staged, or flushed
/// already: then only `vswap_log_commit` ends it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_log_writeback_abort(e: *mut vswap_engine, slot: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        slots::put_result(e.engine.log_writeback_abort(slot))
    })
}

/// Flush the staged pages into one segment: only a full segment unless
/// `now`, which pads the rest. Writes the flushed segment; the host writes
/// its pages (`vswap_log_for_each_live`) and calls `vswap_log_commit`. At
/// most 8 flushes may wait for their commit.
///
/// Returns 1 if a segment was flushed, 0 if there was nothing to flush;
/// -EINVAL; -ENODEV; -EBUSY if 8 flushes wait for their commit; -ENOSPC if
/// no free segment is left (run `vswap_log_gc`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_log_flush(
    e: *mut vswap_engine,
    now: bool,
    flushed: *mut vswap_log_flushed,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let flushed = out(flushed)?;
        log_of(e)?;
        // Reserve a place, flush with the lock dropped (the log device
        // takes its own lock), then fill the place or free it again.
        let place = {
            let mut pending = e.flushes.lock();
            let Some((i, p)) = pending
                .iter_mut()
                .enumerate()
                .find(|(_, p)| matches!(p, Pending::Free))
            else {
                return Err(Code(-VSWAP_EBUSY));
            };
            *p = Pending::Reserved;
            i
        };
        let mode = if now { Flush::Now } else { Flush::Full };
        let r = e.engine.log_flush(mode);
        if let Some(p) = e.flushes.lock().get_mut(place) {
            *p = match r {
                Ok(Some(f)) => Pending::Flushed(f),
                _ => Pending::Free,
            };
        }
        let Some(f) = r? else {
            return Ok(0);
        };
        let c = vswap_log_flushed {
            segment: f.segment(),
            len: f.len(),
            padding: f.padding(),
            base: f.base(),
        };
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(flushed, c) };
        Ok(1)
    })
}

/// Called for each live `(owner, offset)` of a segment.
pub type vswap_log_live_fn = Option<unsafe extern "C" fn(arg: *mut c_void, owner: u32, off: u64)>;

/// Call `f(arg, owner, off)` for every live slot of log segment `segment`
/// (after a flush: the pages the host must write, in offset order).
///
/// Returns the number of calls (>= 0); -EINVAL for a NULL engine or `f`;
/// -ENODEV; -ERANGE for a segment out of range.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_log_for_each_live(
    e: *mut vswap_engine,
    segment: u32,
    f: vswap_log_live_fn,
    arg: *mut c_void,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let f = f.ok_or(Code(-VSWAP_EINVAL))?;
        let mut n = 0i32;
        for (owner, off) in log_of(e)?.live(segment)? {
            // SAFETY: the caller's callback with its own argument.
            unsafe { f(arg, owner, off) };
            n = n.saturating_add(1);
        }
        Ok(n)
    })
}

/// Take flushed segment `segment`'s place for its commit: it stays
/// `Reserved` (no flush can take it) until the commit has finished, then
/// `end_pending` frees it or puts the flush back for another try (found by
/// review: freed at once, a racing flush could take the place and a failed
/// commit then had nowhere to put its flush back).
fn take_pending(e: &EngineInner, segment: u32) -> Option<(usize, Flushed)> {
    let mut pending = e.flushes.lock();
    pending.iter_mut().enumerate().find_map(|(i, p)| match *p {
        Pending::Flushed(f) if f.segment() == segment => {
            *p = Pending::Reserved;
            Some((i, f))
        }
        _ => None,
    })
}

/// End a commit that `take_pending` started on place `i`: free it, or (the
/// commit failed) hand the flush back to it.
fn end_pending(e: &EngineInner, i: usize, retry: Option<Flushed>) {
    if let Some(p) = e.flushes.lock().get_mut(i) {
        *p = retry.map_or(Pending::Free, Pending::Flushed);
    }
}

/// The host wrote flushed segment `segment`: store each owner's new
/// location (a staged writeback's commit also unlocks its slot and releases
/// its zswap object), drop owners that died or changed meanwhile, seal the
/// segment.
///
/// Returns the number of owners committed (>= 0); -EINVAL for a NULL
/// engine; -ENODEV; -ENOENT if `segment` is not a flushed segment waiting
/// for its commit.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_log_commit(e: *mut vswap_engine, segment: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        log_of(e)?;
        let Some((i, f)) = take_pending(e, segment) else {
            return Err(Code(-VSWAP_ENOENT));
        };
        match e.engine.log_commit(&f) {
            Ok(n) => {
                end_pending(e, i, None);
                Ok(i32::try_from(n).unwrap_or(i32::MAX))
            }
            Err(err) => {
                // Keep it for another try, in the place it had.
                end_pending(e, i, Some(f));
                Err(err.into())
            }
        }
    })
}

/// Copy the page of `owner` on the log device from offset `from` to `to`.
pub type vswap_gc_copy_fn =
    Option<unsafe extern "C" fn(arg: *mut c_void, owner: u32, from: u64, to: u64)>;

/// One garbage-collection pass of the log device: pick a victim segment,
/// lock its live owners, stage them in the GC stream, and relocate them when
/// the GC stream fills (`copy` moves each page, then the new location is
/// committed and the slot unlocked). Staged owners stay locked until then; a
/// pass that finds no victim flushes the GC stream (padding it), so a second
/// call finishes every move. Waits for slot locks held by others, so must not
/// be called while the caller holds one. Writes what the pass did.
///
/// Returns 0; -EINVAL for a NULL pointer or `copy`; -ENODEV; -ENOSPC if the
/// GC stream has no free segment.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_log_gc(
    e: *mut vswap_engine,
    copy: vswap_gc_copy_fn,
    arg: *mut c_void,
    pass: *mut vswap_gc_pass,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let pass = out(pass)?;
        let copy = copy.ok_or(Code(-VSWAP_EINVAL))?;
        log_of(e)?;
        let p = e.engine.log_gc(|owner, from, to| {
            // SAFETY: the caller's callback with its own argument.
            unsafe { copy(arg, owner, from, to) }
        })?;
        let c = vswap_gc_pass {
            victim: p.victim.map_or(-1, i64::from),
            live: p.live,
            staged: p.staged,
            flushed: p.flushed,
        };
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(pass, c) };
        Ok(0)
    })
}

/// Set the log device's GC victim policy (`VSWAP_GC_*`).
///
/// Returns 0; -EINVAL for a NULL engine or an unknown policy; -ENODEV.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_log_set_policy(e: *mut vswap_engine, policy: u32) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let p = match policy {
            VSWAP_GC_GREEDY => GcPolicy::Greedy,
            VSWAP_GC_COST_BENEFIT => GcPolicy::CostBenefit,
            _ => return Err(Code(-VSWAP_EINVAL)),
        };
        log_of(e)?.set_policy(p);
        Ok(0)
    })
}

/// The log device's counters.
///
/// Returns 0; -EINVAL for a NULL pointer; -ENODEV if the engine has no log
/// device.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vswap_log_get_stats(
    e: *mut vswap_engine,
    st: *mut vswap_log_stats,
) -> i32 {
    guard(|| {
        // SAFETY: NULL or a live handle (the caller's contract).
        let e = unsafe { eng(e) }?;
        let st = out(st)?;
        let s = log_of(e)?.stats();
        let c = vswap_log_stats {
            host_bytes: s.host_bytes,
            device_bytes: s.device_bytes,
            gc_bytes: s.gc_bytes,
            pad_bytes: s.pad_bytes,
            segments_written: s.segments_written,
            gc_runs: s.gc_runs,
            segments_erased: s.segments_erased,
            live_slots: s.live_slots,
            free_segments: s.free_segments,
            staged_host: s.staged_host,
            staged_gc: s.staged_gc,
        };
        // SAFETY: checked by `out`; writable by the caller's contract.
        unsafe { write(st, c) };
        Ok(0)
    })
}
