//! The C ABI's plain data: return codes, kinds, configurations, entries and
//! statistics. Kinds are plain `uint32_t` constants (not C enums), so any
//! value a C caller passes is checked rather than undefined behaviour.

use vswap_core::{
    Backend, BackendKind, ChargePolicy, DeviceStats, Entry, Error, GcPolicy, Geometry, LogConfig,
    MapStats, Placement,
};

use crate::util::Code;

// ---- return codes ----
// Errno values (Linux numbering), positive like <errno.h>'s: functions
// return their negation (`-VSWAP_EINVAL` == `-EINVAL`), as kernel code does.

/// Success.
pub const VSWAP_OK: i32 = 0;
/// A reference drop (`vswap_put`, `vswap_cache_clear`, `vswap_unlock` ...)
/// left the slot live.
pub const VSWAP_LIVE: i32 = 0;
/// A reference drop freed the slot (its backend was released to the host).
pub const VSWAP_FREED: i32 = 1;
/// An unlock of a slot whose lock is not held.
pub const VSWAP_EPERM: i32 = 1;
/// The slot is not allocated (free, or its cluster does not exist).
pub const VSWAP_ENOENT: i32 = 2;
/// A payload (zswap handle, device or offset) does not fit the core word
/// (every same-filled value fits).
pub const VSWAP_E2BIG: i32 = 7;
/// No memory without sleeping (retry with `may_sleep`), or no free cluster
/// until the host finishes pending discards.
pub const VSWAP_EAGAIN: i32 = 11;
/// The host's `alloc` callback returned NULL in a may-sleep context.
pub const VSWAP_ENOMEM: i32 = 12;
/// A panic inside the library was caught at the boundary (a bug; std mode).
pub const VSWAP_EFAULT: i32 = 14;
/// The slot's lock is held by someone else; a device is pinned or not empty;
/// a log staging buffer is full.
pub const VSWAP_EBUSY: i32 = 16;
/// The slot is not in the state the operation expects (another backend, a
/// cache flag already set or clear); a device number already taken.
pub const VSWAP_EEXIST: i32 = 17;
/// No such device, or it is being removed.
pub const VSWAP_ENODEV: i32 = 19;
/// A NULL or misaligned pointer; an order above the cluster order; a
/// misaligned range; a put of more counts than held; a bad configuration or
/// kind; a CPU number out of range.
pub const VSWAP_EINVAL: i32 = 22;
/// The slot space or every device is full.
pub const VSWAP_ENOSPC: i32 = 28;
/// A slot outside the space, or the reserved slot 0; a range (`_range`
/// calls, `vswap_set_memcg`) that holds slot 0 or leaves the space.
pub const VSWAP_ERANGE: i32 = 34;
/// The swap count would pass the largest count the side table holds.
pub const VSWAP_EOVERFLOW: i32 = 75;
/// The operation is not supported in this configuration (see each function).
pub const VSWAP_EOPNOTSUPP: i32 = 95;
/// A locked move lost to a concurrent free: the slot died while locked,
/// nothing was committed, and the slot is now freed.
pub const VSWAP_ESTALE: i32 = 116;

// ---- kinds ----

/// Backend: not written anywhere (the data is only in the swap cache folio).
pub const VSWAP_BACKEND_NONE: u32 = 0;
/// Backend: an all-zero page.
pub const VSWAP_BACKEND_ZERO: u32 = 1;
/// Backend: one repeated 64-bit word (`value`, any 64-bit value: those with
/// two equal 32-bit halves or that fit 50 sign-extended bits are kept in the
/// core word, any other in an on-demand per-cluster table of the map, 8 B
/// each, counted in `mem_side`).
pub const VSWAP_BACKEND_SAME: u32 = 2;
/// Backend: a zswap object (`value` is the host's handle, sign-extended from
/// 50 bits).
pub const VSWAP_BACKEND_ZSWAP: u32 = 3;
/// Backend: device slot `value` (below 2^44) on device `dev`. An engine's
/// devices are `0..VSWAP_MAX_DEVICES` (a store names a device slot of a
/// device the engine holds, reserved for that slot); a standalone map's
/// host owns its locations and may use any `dev` in 0..=63 (the width of
/// the slot word's field; -E2BIG above).
pub const VSWAP_BACKEND_PHYS: u32 = 4;

/// Placement: device slots at writeout, only for pages that need one.
pub const VSWAP_PLACEMENT_DEFERRED: u32 = 0;
/// Placement: device slots at allocation (swap-out).
pub const VSWAP_PLACEMENT_EAGER: u32 = 1;

/// Charge policy: no memcg charging.
pub const VSWAP_CHARGE_NONE: u32 = 0;
/// Charge policy: only slots that hold a device slot (vswap's policy).
pub const VSWAP_CHARGE_PHYSICAL_ONLY: u32 = 1;
/// Charge policy: every virtual slot from allocation to free.
pub const VSWAP_CHARGE_EVERY_SLOT: u32 = 2;

/// Largest device number plus one (`dev` arguments are `0..VSWAP_MAX_DEVICES`).
pub const VSWAP_MAX_DEVICES: u32 = 16;
const _: () = assert!(VSWAP_MAX_DEVICES as usize == vswap_core::MAX_DEVICES);

/// The default page size in bytes (`vswap_engine_config.page_size`).
pub const VSWAP_PAGE_SIZE: u32 = 4096;
const _: () = assert!(VSWAP_PAGE_SIZE == vswap_core::PAGE_SIZE);

/// The largest page size an engine takes (1 MiB).
pub const VSWAP_MAX_PAGE_SIZE: u32 = 1 << 20;
const _: () = assert!(VSWAP_MAX_PAGE_SIZE == vswap_core::MAX_PAGE_SIZE);

/// `vswap_alloc`'s `memcg` argument and `vswap_memcg`'s answer: no memcg.
pub const VSWAP_NO_MEMCG: u32 = 0xFFFF_FFFF;

// ---- structures ----

/// The shape of a slot space (virtual map, direct map or device).
/// `vswap_geometry_default` fills in the defaults.
///
/// A geometry is accepted exactly when every field is within the bounds
/// given below and the directory's top level needs at most 65,536 entries:
/// `ceil(slots / 2^cluster_shift) <= 2^(16 + dir_leaf_shift + dir_mid_shift)`;
/// otherwise creation fails with -EINVAL. With the default directory shifts
/// (7 and 9) that last rule holds for every `cluster_shift` and every
/// `slots` up to 2^32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct vswap_geometry {
    /// log2 of the slots per cluster, 1..=13 (default 9: 512 slots).
    pub cluster_shift: u32,
    /// Per-CPU operations accept CPU numbers `0..cpus` (1..=4096; default 64).
    pub cpus: u32,
    /// Slots in the space, 1..=2^32 (default 2^32). A virtual map rounds it
    /// up to whole clusters; a device or a direct map has exactly this many:
    /// the rest of its last cluster is never handed out, and offsets at or
    /// above `slots` are -ERANGE (bad slots there too).
    pub slots: u64,
    /// log2 of the cluster entries per directory leaf, 1..=12 (default 7).
    pub dir_leaf_shift: u32,
    /// log2 of the leaves per directory middle level, 1..=12 (default 9).
    pub dir_mid_shift: u32,
}

impl From<vswap_geometry> for Geometry {
    fn from(g: vswap_geometry) -> Self {
        Geometry {
            cluster_shift: g.cluster_shift,
            slots: g.slots,
            cpus: g.cpus,
            dir_leaf_shift: g.dir_leaf_shift,
            dir_mid_shift: g.dir_mid_shift,
        }
    }
}

impl From<Geometry> for vswap_geometry {
    fn from(g: Geometry) -> Self {
        vswap_geometry {
            cluster_shift: g.cluster_shift,
            cpus: g.cpus,
            slots: g.slots,
            dir_leaf_shift: g.dir_leaf_shift,
            dir_mid_shift: g.dir_mid_shift,
        }
    }
}

/// Configuration of a flash log device (`vswap_engine_config.log`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct vswap_log_config {
    /// Segments (erase blocks), at least `reserve + 2`.
    pub segments: u32,
    /// log2 of the slots per segment, 1..=16.
    pub seg_shift: u32,
    /// Bytes per slot for the byte counters (a power of two up to 2^20).
    pub page_size: u32,
    /// Free segments only GC may write into (at least 1).
    pub reserve: u32,
    /// `VSWAP_GC_GREEDY` or `VSWAP_GC_COST_BENEFIT`.
    pub policy: u32,
}

/// GC victim policy: fewest valid slots.
pub const VSWAP_GC_GREEDY: u32 = 0;
/// GC victim policy: LFS cost-benefit.
pub const VSWAP_GC_COST_BENEFIT: u32 = 1;

impl vswap_log_config {
    pub(crate) fn to_core(self) -> Result<LogConfig, Code> {
        let policy = match self.policy {
            VSWAP_GC_GREEDY => GcPolicy::Greedy,
            VSWAP_GC_COST_BENEFIT => GcPolicy::CostBenefit,
            _ => return Err(Error::BadConfig.into()),
        };
        Ok(LogConfig {
            segments: self.segments,
            seg_shift: self.seg_shift,
            page_size: self.page_size,
            reserve: self.reserve,
            policy,
        })
    }
}

/// Engine configuration. `vswap_engine_config_default` fills in the
/// defaults (2^32 virtual slots, deferred placement, no charging, no log
/// device, 4 KiB pages).
///
/// Layout change: `page_size` was added at the end of this struct (issue
/// 12); C code built against an older vswap.h passes a shorter struct and
/// must be rebuilt. Fill the struct with `vswap_engine_config_default` and
/// then set fields, so that fields added later get their defaults.
///
/// CPU numbers: every engine call that takes a `cpu` accepts
/// `0..geometry.cpus` and returns -EINVAL for any other, before it changes
/// anything. A device (or direct map) with fewer CPUs than the engine is
/// given the engine's CPU number modulo its own: CPUs that share a device
/// CPU number share its per-CPU cluster, which only makes them contend.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct vswap_engine_config {
    /// The virtual slot space.
    pub geometry: vswap_geometry,
    /// `VSWAP_PLACEMENT_*`.
    pub placement: u32,
    /// `VSWAP_CHARGE_*`.
    pub charge: u32,
    /// A flash log device to create as device number `log_dev`, or NULL.
    /// Read only during `vswap_engine_create`.
    pub log: *const vswap_log_config,
    /// The log device's number (`0..VSWAP_MAX_DEVICES`), if `log` is set.
    pub log_dev: u32,
    /// Bytes per page (default `VSWAP_PAGE_SIZE`): a power of two from 8 to
    /// `VSWAP_MAX_PAGE_SIZE` (-EINVAL at creation otherwise).
    /// `vswap_writeout` and `vswap_log_writeout` take pages of exactly this
    /// length.
    pub page_size: u32,
    /// The host chooses the virtual slots (a swap device under the
    /// kernel's own swap allocator: the slot is the device offset): they are
    /// taken with `vswap_alloc_at`, and `vswap_alloc` returns -EINVAL.
    /// Tables are still made on demand. Default false.
    pub addressed: bool,
}

impl vswap_engine_config {
    pub(crate) fn to_core(self) -> Result<vswap_core::EngineConfig, Code> {
        let placement = match self.placement {
            VSWAP_PLACEMENT_DEFERRED => Placement::Deferred,
            VSWAP_PLACEMENT_EAGER => Placement::Eager,
            _ => return Err(Error::BadConfig.into()),
        };
        let charge = match self.charge {
            VSWAP_CHARGE_NONE => ChargePolicy::None,
            VSWAP_CHARGE_PHYSICAL_ONLY => ChargePolicy::PhysicalOnly,
            VSWAP_CHARGE_EVERY_SLOT => ChargePolicy::EverySlot,
            _ => return Err(Error::BadConfig.into()),
        };
        Ok(vswap_core::EngineConfig {
            map: vswap_core::MapConfig {
                geometry: self.geometry.into(),
                addressed: self.addressed,
            },
            placement,
            charge,
            page_size: self.page_size,
        })
    }
}

/// A physical device (`vswap_device_add`) or a direct-mode map
/// (`vswap_map_create_direct`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct vswap_device_config {
    /// Size (`slots` pages), cluster size and CPUs.
    pub geometry: vswap_geometry,
    /// Emptied clusters wait for the host's discard before reuse.
    pub discard: bool,
    /// One sequential cursor for all CPUs (rotational disks).
    pub rotational: bool,
    /// Offsets of bad slots that are never handed out (may be NULL when
    /// `nr_bad` is 0). Read only during the call.
    pub bad_slots: *const u64,
    /// Entries in `bad_slots`.
    pub nr_bad: usize,
}

/// Where a slot's data is: `kind` is `VSWAP_BACKEND_*`; `value` is the
/// same-filled word, the zswap handle or the device offset; `dev` the device
/// of a `VSWAP_BACKEND_PHYS` backend (0 otherwise).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct vswap_backend {
    /// `VSWAP_BACKEND_*`.
    pub kind: u32,
    /// Device number (`VSWAP_BACKEND_PHYS` only).
    pub dev: u32,
    /// Same-filled word, zswap handle or device offset.
    pub value: u64,
}

impl vswap_backend {
    /// Decode a C backend: `-EINVAL` for an unknown kind, `-E2BIG` for a
    /// device number that does not fit.
    pub(crate) fn to_core(self) -> Result<Backend, Code> {
        Ok(match self.kind {
            VSWAP_BACKEND_NONE => Backend::None,
            VSWAP_BACKEND_ZERO => Backend::Zero,
            VSWAP_BACKEND_SAME => Backend::Same(self.value),
            VSWAP_BACKEND_ZSWAP => Backend::Zswap(self.value),
            VSWAP_BACKEND_PHYS => Backend::Phys {
                dev: u8::try_from(self.dev).map_err(|_| Code::from(Error::PayloadTooWide))?,
                off: self.value,
            },
            _ => return Err(Code(-VSWAP_EINVAL)),
        })
    }
}

impl From<Backend> for vswap_backend {
    fn from(b: Backend) -> Self {
        let (kind, dev, value) = match b {
            Backend::None => (VSWAP_BACKEND_NONE, 0, 0),
            Backend::Zero => (VSWAP_BACKEND_ZERO, 0, 0),
            Backend::Same(v) => (VSWAP_BACKEND_SAME, 0, v),
            Backend::Zswap(h) => (VSWAP_BACKEND_ZSWAP, 0, h),
            Backend::Phys { dev, off } => (VSWAP_BACKEND_PHYS, u32::from(dev), off),
        };
        vswap_backend { kind, dev, value }
    }
}

pub(crate) fn kind_code(k: BackendKind) -> u32 {
    match k {
        BackendKind::None => VSWAP_BACKEND_NONE,
        BackendKind::Zero => VSWAP_BACKEND_ZERO,
        BackendKind::Same => VSWAP_BACKEND_SAME,
        BackendKind::Zswap => VSWAP_BACKEND_ZSWAP,
        BackendKind::Phys => VSWAP_BACKEND_PHYS,
    }
}

/// A snapshot of one slot (stable only under its lock or a count taken with
/// `vswap_try_get`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct vswap_entry {
    /// Where the data is.
    pub backend: vswap_backend,
    /// Swap count (page-table references).
    pub count: u32,
    /// A folio is in the swap cache.
    pub cached: bool,
    /// The slot's lock bit is held.
    pub locked: bool,
}

impl From<Entry> for vswap_entry {
    fn from(e: Entry) -> Self {
        vswap_entry {
            backend: e.backend.into(),
            count: e.count,
            cached: e.cached,
            locked: e.locked,
        }
    }
}

/// The cache flag and cache word of a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct vswap_cache_state {
    /// A folio is in the swap cache.
    pub cached: bool,
    /// The folio cookie while cached, else a workingset shadow (0: none).
    pub word: u64,
}

/// Occupancy and memory of a map (derived by scanning).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vswap_map_stats {
    /// Allocated slots (live and zombie).
    pub live_slots: u64,
    /// Live slots by backend kind, indexed by `VSWAP_BACKEND_*`.
    pub by_kind: [u64; 5],
    /// Slots with the cache flag.
    pub cached: u64,
    /// Slots with the lock bit.
    pub locked: u64,
    /// Slots whose count is in the side table.
    pub overflowed: u64,
    /// Live clusters.
    pub live_clusters: u64,
    /// Bytes of the directory.
    pub mem_directory: u64,
    /// Bytes of the per-CPU caches.
    pub mem_percpu: u64,
    /// Bytes of the slot (core word) tables.
    pub mem_words: u64,
    /// Bytes of the cache word tables.
    pub mem_cache: u64,
    /// Bytes of the memcg id tables.
    pub mem_memcg: u64,
    /// Bytes of the side table (overflowed counts, same-filled values kept
    /// outside the core word).
    pub mem_side: u64,
    /// All metadata bytes.
    pub mem_total: u64,
}

impl From<MapStats> for vswap_map_stats {
    fn from(s: MapStats) -> Self {
        vswap_map_stats {
            live_slots: s.live_slots,
            by_kind: s.by_kind,
            cached: s.cached,
            locked: s.locked,
            overflowed: s.overflowed,
            live_clusters: s.memory.live_clusters,
            mem_directory: s.memory.directory,
            mem_percpu: s.memory.percpu,
            mem_words: s.memory.words,
            mem_cache: s.memory.cache,
            mem_memcg: s.memory.memcg,
            mem_side: s.side_bytes,
            mem_total: s.total_bytes(),
        }
    }
}

/// Occupancy of a physical device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vswap_device_stats {
    /// Slots holding data.
    pub used: u64,
    /// Slots that can ever be handed out: the device's `slots` less the
    /// header slot and the bad slots (the unusable tail of the last cluster
    /// is not counted).
    pub usable: u64,
    /// Clusters free (never used or back in the free FIFO).
    pub clusters_free: u64,
    /// Clusters on a nonfull list.
    pub clusters_nonfull: u64,
    /// Clusters on a frag list.
    pub clusters_frag: u64,
    /// Clusters on the full list.
    pub clusters_full: u64,
    /// Clusters waiting for (or under) the host's discard.
    pub clusters_discard: u64,
    /// Clusters held by a per-CPU cache or on no list.
    pub clusters_other: u64,
    /// Metadata bytes.
    pub mem_total: u64,
}

impl From<DeviceStats> for vswap_device_stats {
    fn from(s: DeviceStats) -> Self {
        vswap_device_stats {
            used: s.used,
            usable: s.usable,
            clusters_free: s.lists.free,
            clusters_nonfull: s.lists.nonfull,
            clusters_frag: s.lists.frag,
            clusters_full: s.lists.full,
            clusters_discard: s.lists.discard,
            clusters_other: s.lists.other,
            mem_total: s.memory.total(),
        }
    }
}

/// A zswap writeback in progress (`vswap_writeback_begin`): the slot is
/// locked; the host decompresses `handle`, writes it to `(dev, off)` and
/// calls `vswap_writeback_commit` or `vswap_writeback_abort` with this
/// struct unchanged.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct vswap_writeback {
    /// The virtual slot.
    pub slot: u32,
    /// Destination device.
    pub dev: u32,
    /// The slot's zswap handle.
    pub handle: u64,
    /// Destination offset.
    pub off: u64,
}

/// Evacuation move: copy the page from `(from_dev, from)` to `(to_dev, to)`.
pub const VSWAP_MOVE_COPY: u32 = 0;
/// Evacuation move: read the page from `(from_dev, from)` into a swap cache
/// folio and return its cookie.
pub const VSWAP_MOVE_READ: u32 = 1;
/// Evacuation move: the folio read for `slot` just before (cookie in
/// `*cookie`) was not taken into the swap cache; free it.
pub const VSWAP_MOVE_DROP: u32 = 2;

/// One move of an evacuation (`vswap_evacuate`), for the host to carry out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct vswap_move {
    /// `VSWAP_MOVE_COPY`, `VSWAP_MOVE_READ` or `VSWAP_MOVE_DROP`.
    pub kind: u32,
    /// The virtual slot.
    pub slot: u32,
    /// Source device.
    pub from_dev: u32,
    /// Destination device (`VSWAP_MOVE_COPY` only).
    pub to_dev: u32,
    /// Source offset.
    pub from: u64,
    /// Destination offset (`VSWAP_MOVE_COPY` only).
    pub to: u64,
}

/// What an evacuation did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vswap_evacuated {
    /// Slots moved.
    pub moved: u64,
    /// Slots freed while being moved (nothing left to move).
    pub lost_to_free: u64,
    /// Passes over the device.
    pub passes: u32,
}

/// Swap-in check: swap in page by page (kinds differ, zswap, or device slots
/// not contiguous).
pub const VSWAP_SWAPIN_NO: u32 = 0;
/// Swap-in check: every slot has backend kind `backend_kind`, which needs no
/// device read: fill the large folio directly.
pub const VSWAP_SWAPIN_UNIFORM: u32 = 1;
/// Swap-in check: every slot is on device `dev` at `off + i`: one read.
pub const VSWAP_SWAPIN_CONTIGUOUS: u32 = 2;
/// Swap-in check (`vswap_map_swapin_check` only): a slot of the range is in
/// the swap cache or locked (a folio, swap-in or move is under way): use the
/// swap cache, or swap in page by page.
pub const VSWAP_SWAPIN_IN_CACHE: u32 = 3;

/// What an mTHP swap-in may do with a range (`vswap_swapin_check`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vswap_swapin {
    /// `VSWAP_SWAPIN_*`.
    pub kind: u32,
    /// `VSWAP_BACKEND_*` for `VSWAP_SWAPIN_UNIFORM`.
    pub backend_kind: u32,
    /// Device for `VSWAP_SWAPIN_CONTIGUOUS`.
    pub dev: u32,
    /// First device offset for `VSWAP_SWAPIN_CONTIGUOUS`.
    pub off: u64,
}

/// Swapoff of the virtual layer: move the slot to direct slot `to`.
pub const VSWAP_VIRT_TO_DIRECT: u32 = 0;
/// Swapoff of the virtual layer: bring the slot into memory.
pub const VSWAP_VIRT_TO_MEMORY: u32 = 1;

/// One slot of a swapoff of the virtual layer (`vswap_swapoff_virtual`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct vswap_virt_move {
    /// `VSWAP_VIRT_TO_DIRECT` or `VSWAP_VIRT_TO_MEMORY`.
    pub kind: u32,
    /// The virtual slot.
    pub slot: u32,
    /// The direct slot it moves to (`VSWAP_VIRT_TO_DIRECT` only).
    pub to: u32,
    /// Where its data is now.
    pub backend: vswap_backend,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_engine() {
        let pairs = [
            (Error::NoMem, VSWAP_ENOMEM),
            (Error::Again, VSWAP_EAGAIN),
            (Error::NoSpace, VSWAP_ENOSPC),
            (Error::BadOrder, VSWAP_EINVAL),
            (Error::Misaligned, VSWAP_EINVAL),
            (Error::OutOfRange, VSWAP_ERANGE),
            (Error::BadCpu, VSWAP_EINVAL),
            (Error::NotAllocated, VSWAP_ENOENT),
            (Error::Busy, VSWAP_EBUSY),
            (Error::NotLocked, VSWAP_EPERM),
            (Error::WrongState, VSWAP_EEXIST),
            (Error::CountOverflow, VSWAP_EOVERFLOW),
            (Error::CountUnderflow, VSWAP_EINVAL),
            (Error::PayloadTooWide, VSWAP_E2BIG),
            (Error::BadConfig, VSWAP_EINVAL),
            (Error::Gone, VSWAP_ESTALE),
            (Error::DiscardPending, VSWAP_EAGAIN),
            (Error::NoDevice, VSWAP_ENODEV),
        ];
        for (e, c) in pairs {
            assert_eq!(e.errno(), -c, "{e:?}");
        }
    }

    #[test]
    fn backends_round_trip() {
        for b in [
            Backend::None,
            Backend::Zero,
            Backend::Same(u64::MAX),
            Backend::Zswap(42),
            Backend::Phys { dev: 3, off: 77 },
        ] {
            assert_eq!(vswap_backend::from(b).to_core(), Ok(b));
        }
        let bad = vswap_backend {
            kind: 9,
            dev: 0,
            value: 0,
        };
        assert_eq!(bad.to_core(), Err(Code(-VSWAP_EINVAL)));
        let wide = vswap_backend {
            kind: VSWAP_BACKEND_PHYS,
            dev: 256,
            value: 0,
        };
        assert_eq!(wide.to_core(), Err(Code(-VSWAP_E2BIG)));
    }
}
