//! Sizes of a slot space: cluster size, number of slots, CPUs, directory shape.

use crate::{Error, Result};

/// Largest supported `log2(cluster size)` (8192-slot clusters, the kernel's
/// `HPAGE_PMD_NR` with 64 KiB pages).
pub const MAX_CLUSTER_SHIFT: u32 = 13;
/// Number of orders a per-CPU cache keeps a cluster for (orders `0..=MAX_CLUSTER_SHIFT`).
pub const MAX_ORDERS: usize = MAX_CLUSTER_SHIFT as usize + 1;
/// Largest slot space: slots are 32-bit (the reverse map stores them in 4 bytes),
/// so a space holds at most 2^32 slots, 16 TiB of 4 KiB pages.
pub const MAX_SLOTS: u64 = 1 << 32;
/// Largest number of CPUs.
pub const MAX_CPUS: u32 = 4096;
/// Largest number of entries of the directory's top level (an array made
/// with the space: 8 bytes each, 512 KiB at most).
pub const MAX_TOP_ENTRIES: u64 = 1 << 16;

/// The shape of a slot space.
///
/// # Bounds
/// [`validate`](Self::validate) (and so every constructor) accepts a
/// geometry exactly when
/// - `1 <= cluster_shift <= 13` ([`MAX_CLUSTER_SHIFT`]),
/// - `1 <= slots <= 2^32` ([`MAX_SLOTS`]),
/// - `1 <= cpus <= 4096` ([`MAX_CPUS`]),
/// - `1 <= dir_leaf_shift <= 12` and `1 <= dir_mid_shift <= 12`,
/// - the directory's top level has at most 2^16 entries
///   ([`MAX_TOP_ENTRIES`]):
///   `ceil(slots / 2^cluster_shift) <= 2^(16 + dir_leaf_shift + dir_mid_shift)`,
///
/// and fails with [`Error::BadConfig`] otherwise. With the default directory
/// shifts (7 and 9) the last rule holds for every `slots` and
/// `cluster_shift` above, so any cluster size from 2 to 8192 slots works with
/// up to 2^32 slots. (Cluster indices are `u32` everywhere, stored as
/// `index + 1`; at most 2^31 clusters exist, with 2-slot clusters.)
///
/// ```
/// use vswap_alloc::Geometry;
/// let g = Geometry::default();
/// assert_eq!(g.cluster_slots(), 512);
/// assert_eq!(g.slots(), 1 << 32);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// `log2` of the slots in a cluster (default 9: 512 slots).
    pub cluster_shift: u32,
    /// Slots in the space, at most [`MAX_SLOTS`]. A virtual space rounds it
    /// up to whole clusters ([`slots()`](Self::slots)); a device (a fixed
    /// space) has exactly this many, the rest of its last cluster is never
    /// handed out.
    pub slots: u64,
    /// CPU numbers accepted by per-CPU operations are `0..cpus`.
    pub cpus: u32,
    /// `log2` of the cluster records in one directory leaf (default 7: 128
    /// records of 64 bytes, one cache line each: an 8 KiB leaf).
    pub dir_leaf_shift: u32,
    /// `log2` of the leaf pointers in one directory middle level (default 9:
    /// 512 pointers of 8 bytes, one 4 KiB page).
    pub dir_mid_shift: u32,
}

impl Default for Geometry {
    fn default() -> Self {
        Self {
            cluster_shift: 9,
            slots: MAX_SLOTS,
            cpus: 64,
            dir_leaf_shift: 7,
            dir_mid_shift: 9,
        }
    }
}

impl Geometry {
    /// A small geometry for models and tests: `cluster_slots` per cluster,
    /// `slots` in all, `cpus` CPUs, and two-entry directory levels.
    pub fn tiny(cluster_shift: u32, slots: u64, cpus: u32) -> Self {
        Self {
            cluster_shift,
            slots,
            cpus,
            dir_leaf_shift: 1,
            dir_mid_shift: 1,
        }
    }

    /// Slots per cluster.
    pub const fn cluster_slots(&self) -> u32 {
        1 << self.cluster_shift
    }

    /// `slots` rounded up to whole clusters.
    pub fn slots(&self) -> u64 {
        self.clusters() << self.cluster_shift
    }

    /// Clusters in the space.
    pub fn clusters(&self) -> u64 {
        let c = 1u64 << self.cluster_shift.min(MAX_CLUSTER_SHIFT);
        self.slots.div_ceil(c)
    }

    /// Entries in the directory's top level.
    pub(crate) fn top_len(&self) -> usize {
        let per_top = 1u64 << (self.dir_leaf_shift + self.dir_mid_shift).min(24);
        self.clusters().div_ceil(per_top) as usize
    }

    /// Check every bound (listed in the type's documentation):
    /// [`Error::BadConfig`] if one fails.
    pub fn validate(&self) -> Result<()> {
        let ok = (1..=MAX_CLUSTER_SHIFT).contains(&self.cluster_shift)
            && self.slots >= 1
            && self.slots <= MAX_SLOTS
            && (1..=MAX_CPUS).contains(&self.cpus)
            && (1..=12).contains(&self.dir_leaf_shift)
            && (1..=12).contains(&self.dir_mid_shift)
            && self.slots() <= MAX_SLOTS
            && self.top_len() as u64 <= MAX_TOP_ENTRIES;
        if ok { Ok(()) } else { Err(Error::BadConfig) }
    }
}
