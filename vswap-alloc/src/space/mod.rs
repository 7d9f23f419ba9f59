//! The cluster allocator: a space of slots, each an atomic word in a
//! per-cluster table, allocated lock-free by claiming words with a CAS from 0.
//! One mechanism serves the virtual slot space (tables made on demand and freed
//! when a cluster empties) and physical devices (a fixed number of clusters,
//! tables made up front, emptied clusters queued for discard); only the
//! [`Policy`] differs.
//!
//! The space is built in modules, one concern each, with its protocol at its top:
//! - `dir`: the directory of cluster records (layout, lookup, walks);
//! - `lifetime`: the lifetime word, teardown and the host-provided reclamation;
//! - `pin`: read-side access to a live cluster's tables ([`Pin`]);
//! - `lists`: the nonfull / frag / full lists and the free, discard and retire FIFOs;
//! - `percpu`: per-CPU allocation, refills, stealing and take-back;
//! - `addressed`: slots the host chooses ([`Policy::addressed`]);
//! - `full`: how failing allocations on a full space stay O(1);
//! - `discard`: the host's discard of emptied device clusters;
//! - `stats`: memory, list counts and cluster states.
//!
//! # Performance notes
//! An order-0 allocation is two locked RMWs (the CAS that adds the slot's
//! reference to its cluster's `refs`, and the claim of the word); a free
//! through the map is two (the word CAS and the `release` that drops the
//! slot's reference); a lookup is none, and a dup, store or lock is one (the
//! word CAS). The read-side section costs the host's `rcu_read_lock` (in
//! userspace: a thread-local access and two plain stores, with a compiler
//! fence where the `membarrier` system call is available).
//!
//! Loads: a pin (every map call) is the section, then two dependent loads
//! (the table index's leaf pointer, then one line holding the table and
//! record pointers) before the slot word; an allocation from the per-CPU
//! cache reads its cluster's record and table the same way (see "The table
//! index" in `dir`). The cache's fast path (`alloc_cached`) is inlined into
//! the caller; refills and fallbacks are out of line (`alloc_slow`).

use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use crate::ext::{ClusterExt, alloc_table, free_table};
use crate::geometry::{Geometry, MAX_ORDERS};
use crate::provider::{Ctx, Provider};
use crate::slotword::SlotWord;
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, Mutex, Ordering, ZeroInit};
use crate::{Error, Result};

mod addressed;
#[cfg(test)]
mod addressed_tests;
mod dir;
mod discard;
mod full;
mod lifetime;
mod lists;
#[cfg(all(test, vswap_loom))]
mod loom_tests;
mod percpu;
mod pin;
mod stats;
#[cfg(test)]
mod tests;

use dir::{Mid, TEntry, TLEAF_LEN, tindex_len};
use lists::{Fifo, Lists};
use percpu::PerCpu;
pub use pin::{Pin, Section};
pub use stats::{ClusterState, ListCounts, SpaceMemory};

const REFS_MASK: u64 = 0xffff_ffff;
const REFS_LIMIT: u64 = 1 << 31;
const LIVE: u64 = 1 << 32;
const DYING: u64 = 1 << 33;
const CACHED: u64 = 1 << 34;
const DISCARD: u64 = 1 << 35;
/// Set with `LIVE | CACHED` when `refill` makes a cluster live for a CPU's
/// cache, cleared by the first allocation pin (`try_ref` with an order) and
/// when the cluster leaves the cache: a cluster that is empty only because
/// nothing was claimed from it yet is not taken back (`reclaim_cached`).
/// In the lifetime word, not in the per-CPU cursor: threads sharing a CPU
/// number store the cursor without a lock, and one of them could clear
/// another's mark for a different cluster.
const FRESH: u64 = 1 << 37;
/// Torn down and waiting for the host's grace period (the cookie is in
/// `DirEntry::cookie`) before its tables go back to the provider: on the
/// retire FIFO, not allocatable, its table pointers still set.
const RETIRING: u64 = 1 << 38;
/// Most retired clusters one call finishes (their tables are freed after the
/// list lock is dropped).
const GARBAGE: usize = 4;
const LIST_SHIFT: u32 = 40;
const LIST_MASK: u64 = 0x7 << LIST_SHIFT;
const ORDER_SHIFT: u32 = 44;
const ORDER_MASK: u64 = 0xf << ORDER_SHIFT;

/// Which list holds a live cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum List {
    None = 0,
    Nonfull = 1,
    Frag = 2,
    Full = 3,
}

#[inline]
const fn refs(s: u64) -> u64 {
    s & REFS_MASK
}
#[inline]
const fn order_of(s: u64) -> u32 {
    ((s & ORDER_MASK) >> ORDER_SHIFT) as u32
}
#[inline]
const fn list_of(s: u64) -> List {
    match (s & LIST_MASK) >> LIST_SHIFT {
        1 => List::Nonfull,
        2 => List::Frag,
        3 => List::Full,
        _ => List::None,
    }
}
#[inline]
const fn with_list(s: u64, l: List) -> u64 {
    (s & !LIST_MASK) | ((l as u64) << LIST_SHIFT)
}

/// How a space gets and gives back its clusters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// A physical device: every table is made up front and kept; a cluster
    /// that empties goes back to the free FIFO (or the discard queue).
    pub fixed: bool,
    /// (`fixed` only) emptied clusters wait for the host's discard
    /// ([`SlotSpace::take_discard`], [`SlotSpace::discard_done`]) before reuse.
    pub discard: bool,
    /// One sequential allocation cursor for all CPUs (rotational disks).
    pub rotational: bool,
    /// (Virtual only) the host chooses the slots: they are taken with
    /// [`SlotSpace::alloc_at`], never handed out by
    /// [`alloc`](SlotSpace::alloc) (which fails with [`Error::BadConfig`]).
    /// A cluster's tables are made when its first slot is taken and go back
    /// (after a grace period) when its last is freed; no per-CPU caches.
    /// For a swap device whose offsets the kernel's swap allocator chooses.
    pub addressed: bool,
}

/// A space of slot words, allocated per CPU and in naturally aligned runs of
/// `2^order` slots. See the module documentation (and its submodules) for the protocol.
pub struct SlotSpace<P: Provider, W: SlotWord = AtomicU64> {
    provider: P,
    geo: Geometry,
    policy: Policy,
    /// Slots that exist: `geo.slots()` (whole clusters) for a virtual
    /// space, `geo.slots` (the device's size) for a fixed one. Slots at or
    /// above it are out of range.
    slots: u64,
    clusters: u64,
    top: NonNull<AtomicPtr<Mid<W>>>,
    top_len: usize,
    /// The table index's top array (see "The table index" in `dir`):
    /// `tindex_len` pointers to dense leaves of slot-table pointers.
    tindex: NonNull<AtomicPtr<TEntry<W>>>,
    tindex_len: usize,
    /// (Fixed spaces; touched only under the list lock) two bitmaps, one bit
    /// per cluster on a frag list, then one per cluster on a nonfull list,
    /// then their summary bits (one per word, frag's then nonfull's):
    /// `listed_words + summary_words` plain words (see `steal`).
    listed: Option<NonNull<u64>>,
    /// Set by `PhysDevice` (`own_words`), whose words nobody else reaches:
    /// every word in use then holds a reference and every free drops it
    /// right after zeroing the word, so order-0 clusters are filed by their
    /// references (`lists::file`), a cached claim refuses a cluster whose
    /// references say it is full (`alloc_cached`), and a free's offset is
    /// the next claim's second hint (`Pin::note_free`). Not on a space built
    /// through the public constructors, whose `Pin::words` a caller may
    /// use to block free words without references (review of 2026-12-03:
    /// filing such a blocked cluster `nonfull` refilled it forever).
    own_words: bool,
    listed_words: usize,
    summary_words: usize,
    percpu: NonNull<PerCpu>,
    lists: Mutex<Lists>,
    reserved: u64,
    // Slow-path accounting (changed only when tables are made or freed).
    mem_dir: AtomicU64,
    mem_words: AtomicU64,
    mem_cache: AtomicU64,
    mem_memcg: AtomicU64,
    live: AtomicU64,
    /// Full-scan announcements (bit `order`), exhausted orders (bit
    /// `ROOM_X + order`) and the generation of frees (bits `ROOM_GEN..`):
    /// see the `full` module.
    room: AtomicU64,
    /// Clusters visited by full scans and fallbacks (tests count the work
    /// of a failing allocation).
    #[cfg(test)]
    scanned: AtomicU64,
}

// SAFETY: all shared state is reached through atomics or the list lock; raw
// pointers point at provider memory owned by the space.
unsafe impl<P: Provider + Send, W: SlotWord> Send for SlotSpace<P, W> {}
// SAFETY: as above; `P: Provider` is `Sync`.
unsafe impl<P: Provider, W: SlotWord> Sync for SlotSpace<P, W> {}

impl<P: Provider> SlotSpace<P, AtomicU64> {
    /// A new, empty virtual space of 64-bit words. `reserved` is stored in
    /// slot 0, which is never handed out (a zero swap entry means "none").
    pub fn new(geo: Geometry, provider: P, reserved: u64) -> Result<Self> {
        Self::with_policy(geo, Policy::default(), provider, reserved, &[])
    }
}

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
    /// A new space with `policy`. `reserved` (non-zero) marks slots that are
    /// never handed out: slot 0 always, and the `bad` slots of a fixed space.
    ///
    /// A fixed space has exactly `geo.slots` slots: when that is not a whole
    /// number of clusters, the tail of the last cluster (`geo.slots ..
    /// geo.slots()`) is reserved too (never handed out, and out of range for
    /// [`pin`](Self::pin)). A bad slot at or above `geo.slots` is
    /// [`Error::OutOfRange`]. A virtual space has `geo.slots()` slots (whole
    /// clusters).
    pub fn with_policy(
        geo: Geometry,
        policy: Policy,
        provider: P,
        reserved: u64,
        bad: &[u64],
    ) -> Result<Self> {
        geo.validate()?;
        if reserved == 0
            || (W::BITS < 64 && reserved >> W::BITS != 0)
            || (!policy.fixed && (policy.discard || policy.rotational || !bad.is_empty()))
            || (policy.fixed && policy.addressed)
        {
            return Err(Error::BadConfig);
        }
        let top_len = geo.top_len();
        let top = alloc_table::<AtomicPtr<Mid<W>>, P>(&provider, top_len, Ctx::MaySleep)?;
        let tindex_len = tindex_len(geo.clusters());
        let tindex =
            match alloc_table::<AtomicPtr<TEntry<W>>, P>(&provider, tindex_len, Ctx::MaySleep) {
                Ok(t) => t,
                Err(e) => {
                    // SAFETY: `top` is ours and unused.
                    unsafe { free_table(&provider, top, top_len) };
                    return Err(e);
                }
            };
        let percpu = match alloc_table::<PerCpu, P>(&provider, geo.cpus as usize, Ctx::MaySleep) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: `top` and `tindex` are ours and unused.
                unsafe {
                    free_table(&provider, top, top_len);
                    free_table(&provider, tindex, tindex_len);
                }
                return Err(e);
            }
        };
        // A device's listed-cluster bitmaps (see `steal`); the virtual space
        // steals only from caches and has none.
        // Two bitmaps, fragmented then nonfull clusters, each with its
        // summary words after both.
        let listed_words = if policy.fixed {
            2 * geo.clusters().div_ceil(64) as usize
        } else {
            0
        };
        let summary_words = 2 * (listed_words / 2).div_ceil(64);
        let listed = if policy.fixed {
            match alloc_table::<u64, P>(&provider, listed_words + summary_words, Ctx::MaySleep) {
                Ok(b) => Some(b),
                Err(e) => {
                    // SAFETY: the arrays are ours and unused.
                    unsafe {
                        free_table(&provider, top, top_len);
                        free_table(&provider, tindex, tindex_len);
                        free_table(&provider, percpu, geo.cpus as usize);
                    }
                    return Err(e);
                }
            }
        } else {
            None
        };
        let space = Self {
            provider,
            geo,
            policy,
            slots: if policy.fixed { geo.slots } else { geo.slots() },
            clusters: geo.clusters(),
            top,
            top_len,
            tindex,
            tindex_len,
            listed,
            own_words: false,
            listed_words,
            summary_words,
            percpu,
            lists: Mutex::new(Lists {
                nonfull: [0; MAX_ORDERS],
                frag: [0; MAX_ORDERS],
                frag_tail: [0; MAX_ORDERS],
                full: 0,
                free: Fifo::default(),
                discard: Fifo::default(),
                retire: Fifo::default(),
                discarding: 0,
                bump: 0,
                counts: [0; 4],
            }),
            reserved,
            mem_dir: AtomicU64::new(
                (top_len * core::mem::size_of::<AtomicPtr<Mid<W>>>()
                    + tindex_len * core::mem::size_of::<AtomicPtr<TEntry<W>>>()
                    + (listed_words + summary_words) * core::mem::size_of::<u64>())
                    as u64,
            ),
            mem_words: AtomicU64::new(0),
            mem_cache: AtomicU64::new(0),
            mem_memcg: AtomicU64::new(0),
            live: AtomicU64::new(0),
            room: AtomicU64::new(0),
            #[cfg(test)]
            scanned: AtomicU64::new(0),
        };
        if policy.fixed {
            // Every table now (a device's size is fixed); dropping `space`
            // on failure gives back what was made.
            for idx in 0..space.clusters as u32 {
                let e = space.entry_or_create(idx, Ctx::MaySleep)?;
                space.make_words(e, Ctx::MaySleep)?;
            }
            // Slot 0, the bad slots, and the tail of the last cluster past
            // the end of the device are reserved: never handed out.
            if bad.iter().any(|&b| b >= space.slots) {
                return Err(Error::OutOfRange);
            }
            let tail = space.slots..geo.slots();
            for b in bad.iter().copied().chain(core::iter::once(0)).chain(tail) {
                let e = space
                    .entry((b >> geo.cluster_shift) as u32)
                    .ok_or(Error::NoMem)?;
                let off = (b & (u64::from(geo.cluster_slots()) - 1)) as usize;
                space
                    .words_of(e)
                    .get(off)
                    .ok_or(Error::OutOfRange)?
                    .put(reserved, Ordering::Relaxed);
            }
        }
        Ok(space)
    }

    /// The space's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Slots in the space: [`Geometry::slots()`] (whole clusters) for a
    /// virtual space, the configured `geometry().slots` for a fixed one (see
    /// [`with_policy`](Self::with_policy)). Every slot at or above it is out
    /// of range.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// The space's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The memory provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    #[inline]
    /// (For `PhysDevice`) declare that no caller reaches this space's words
    /// (no pins handed out): order-0 clusters are then filed by their
    /// references, without a scan.
    pub(crate) fn own_words(&mut self) {
        self.own_words = true;
    }

    fn csize(&self) -> usize {
        1 << self.geo.cluster_shift
    }
}

impl<P: Provider, W: SlotWord> Drop for SlotSpace<P, W> {
    fn drop(&mut self) {
        let n = self.csize();
        let provider = &self.provider;
        self.each_entry(u32::MAX, |_, e| {
            if let Some(w) = NonNull::new(e.words.swap(ptr::null_mut(), Ordering::AcqRel)) {
                // SAFETY: `&mut self`: nobody else can reach the table.
                unsafe { free_table(provider, w, n) };
            }
            let exts = [
                e.ext.swap(ptr::null_mut(), Ordering::AcqRel),
                e.retired_ext.swap(ptr::null_mut(), Ordering::AcqRel),
            ];
            for x in exts.into_iter().filter_map(NonNull::new) {
                // SAFETY: as above.
                unsafe {
                    x.as_ref().free_tables(provider, n);
                    free_table(provider, x, 1);
                }
            }
            true
        });
        let mid_n = 1usize << self.geo.dir_mid_shift;
        let leaf_n = 1usize << self.geo.dir_leaf_shift;
        for t in self.top() {
            let Some(mid) = NonNull::new(t.swap(ptr::null_mut(), Ordering::AcqRel)) else {
                continue;
            };
            for m in 0..mid_n {
                // SAFETY: the middle page holds `mid_n` pointers.
                let slot = unsafe { &*mid.as_ptr().add(m) };
                if let Some(leaf) = NonNull::new(slot.swap(ptr::null_mut(), Ordering::AcqRel)) {
                    // SAFETY: we own the space exclusively (`&mut self`).
                    unsafe { free_table(&self.provider, leaf, leaf_n) };
                }
            }
            // SAFETY: as above.
            unsafe { free_table(&self.provider, mid, mid_n) };
        }
        for t in self.tindex() {
            if let Some(leaf) = NonNull::new(t.swap(ptr::null_mut(), Ordering::AcqRel)) {
                // SAFETY: as above; a leaf holds `TLEAF_LEN` entries.
                unsafe { free_table(&self.provider, leaf, TLEAF_LEN) };
            }
        }
        // SAFETY: as above; the arrays were made in `new` with these lengths.
        unsafe {
            free_table(&self.provider, self.top, self.top_len);
            free_table(&self.provider, self.tindex, self.tindex_len);
            if let Some(b) = self.listed {
                free_table(&self.provider, b, self.listed_words + self.summary_words);
            }
            free_table(&self.provider, self.percpu, self.geo.cpus as usize);
        }
    }
}
