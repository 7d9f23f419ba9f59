//! The cluster allocator: a space of slots, each an atomic word in a
//! per-cluster table, allocated lock-free by claiming words with a CAS from 0.
//! One mechanism serves the virtual slot space (tables made on demand and freed
//! when a cluster empties) and physical devices (a fixed number of clusters,
//! tables made up front, emptied clusters queued for discard); only the
//! [`Policy`] differs.
//!
//! # Layout
//! The space is cut into clusters of `2^cluster_shift` slots. A three-level
//! directory (top array in the space, middle and leaf pages made on demand and
//! kept until the space is dropped) maps a cluster index to its `DirEntry`: a
//! 64-byte record (one cache line) holding the cluster's lifetime word, a pointer to its slot
//! table (one page for 512 64-bit slots), list links and a pointer to its
//! optional tables (`ClusterExt`). An empty virtual map of 2^32 slots is the top
//! array.
//!
//! A slot word of 0 means "free". Allocation claims free words by CAS (0 -> the
//! caller's initial word); freeing is the owner of the slot setting the word
//! back to 0 and then dropping the slot's reference ([`Pin::release`], an
//! `unsafe fn`: a wrong count would let a cluster die with slots allocated).
//!
//! # The lifetime word (`DirEntry::state`)
//! ```text
//!  63    48 47  44  43  42  40 39  38     37   36   35      34     33    32   31        0
//! +--------+------+----+------+----+--------+-----+----+-------+------+-----+----+----------+
//! | rsvd   | order|rsvd| list |rsvd|RETIRING|FRESH|rsvd|DISCARD|CACHED|DYING|LIVE|   refs   |
//! +--------+------+----+------+----+--------+-----+----+-------+------+-----+----+----------+
//! ```
//! `refs` counts allocated slots (reserved ones included) + 1 while a
//! per-CPU cache holds the cluster. Readers hold no reference: they are
//! read-side sections of the host's reclamation (below). `list` says which list holds a live
//! cluster: none, nonfull[order], frag[order] or full. States and transitions:
//! - `FREE` (0): not allocatable; in the free FIFO or never used (above `bump`).
//!   Only `refill`, under the list lock, makes it `LIVE | CACHED | FRESH` with
//!   refs = 1 + reserved slots. `FRESH` goes with the first allocation pin
//!   (the same CAS) or when the cluster leaves the cache; while it is set the
//!   cluster is not taken back from its cache as an emptied one.
//! - `LIVE`: tables valid. An allocation adds its slots' references with a
//!   CAS (`try_ref`) that succeeds only while `LIVE && !DYING` and the order
//!   matches, and only then claims words.
//! - `LIVE, refs == 0`: the `unref` that saw `refs` reach 0 calls
//!   `try_teardown`, which under the list lock CASes `LIVE, refs == 0` ->
//!   `DYING`. The CAS fails if an allocation added references in between
//!   (its own later `unref` tries again). No slot can be claimed then.
//! - `DYING`: nothing can be claimed. The tearer unlinks the cluster; a
//!   fixed space's cluster without optional tables then goes straight to
//!   `FREE` (or `DISCARD`, queued for the host's discard, whose
//!   `discard_done` makes it `FREE`); every other one becomes `RETIRING`.
//! - `RETIRING`: on the retire FIFO with the host's grace-period cookie,
//!   its table pointers still set. When the grace period has ended (polled
//!   at every teardown and refill, and by [`SlotSpace::poll_all`]) its
//!   tables go back to the provider (a fixed space keeps its slot table)
//!   and it becomes `FREE` (or `DISCARD`). A refill may take the oldest
//!   `RETIRING` cluster without optional tables back before that, keeping
//!   its table (see below).
//!
//! # Reclamation (the host's RCU)
//! Every access to a cluster's tables outside the allocator's own paths
//! goes through a [`Pin`]: a read-side section of the provider
//! ([`Provider::read_lock`], `rcu_read_lock` in a kernel, a thread-keyed
//! epoch in userspace) in which the lifetime word is seen `LIVE` and the
//! slot-table pointer is loaded. No atomic read-modify-write: a lookup is
//! the section, two loads in the directory record and the slot word.
//! - A teardown makes the cluster `DYING` (a CAS) before it starts the
//!   grace period ([`Provider::grace_start`]); a section that begins after
//!   that sees the cluster is not live and touches nothing. A section that
//!   began before may still read (or CAS) the tables: they stay allocated
//!   until [`Provider::grace_done`] says every such section has ended.
//! - A retired table is all zero (every slot was free: each allocated slot
//!   holds a reference), so a late CAS from an expected non-zero word fails
//!   and a late read sees a free slot. The retire FIFO is linked through the
//!   directory record, never through the table.
//! - Reuse before the grace period: a refill that takes a `RETIRING` cluster
//!   back keeps its (all-zero) slot table, so a late reader reads the new
//!   incarnation's words: the same as a reader of a freed slot whose word is
//!   claimed again in a live cluster. Clusters with optional tables are not
//!   reused this way: those could carry the last incarnation's memcg ids.
//! - Nothing sleeps inside a section. A pin that must allocate with
//!   [`Ctx::MaySleep`] (a cache or memcg table, a side-table block)
//!   leaves its section for the allocation ([`Pin::outside`]) and enters
//!   again; first, still inside, it takes a reference on the cluster
//!   (`try_ref`, which fails once the cluster is `DYING`: then the call
//!   fails with `NotAllocated` and nothing leaves the section), so the
//!   cluster is not torn down while the pin is out, and it drops the
//!   reference only after entering again: a teardown that this causes
//!   starts a grace period that waits for the new section. (A space-wide
//!   count of pins outside, the first design, was not enough: once the pin
//!   was back in a section begun after the retirement's grace period
//!   started, and the count down, a poll freed the tables the pin still
//!   showed. Found by review.)
//! - Dropping the space needs `&mut`: no section can still read it, and every
//!   table (retired or not) goes back at once.
//!
//! # Per-CPU caches and lists
//! Each CPU number has, per order, the index of its current cluster (holding one
//! reference and the `CACHED` flag) and a cursor hint. Allocation loads the
//! index, pins the cluster for the slots it wants, and claims words from the
//! cursor on: no lock. When the cluster has no room the CPU *refills* under the
//! list lock: the kernel's order of preference, `nonfull[order]`, then a free
//! cluster (tables made with the lock dropped), then `frag[order]`. The cluster
//! it lets go of is filed as `full` or `frag[order]` by counting its words. The
//! first free into a `full`, `frag` or unlisted cluster moves it to
//! `nonfull[order]`; frees into a cached or nonfull cluster take no lock. CPUs
//! that share a number only slow each other down: the cache slot is read
//! without a lock and written only under the list lock.
//!
//! When nothing is listed or free, allocation scans every live cluster of its
//! order (on a device an order-0 allocation takes a slot from a cluster of
//! any order) and then takes back one cluster that a per-CPU cache holds and
//! that frees emptied (of any CPU number and order: its tables go, or on a
//! device it goes to the free FIFO or the discard queue; at most one per
//! allocation; a cluster just made live for a cache is not taken before its
//! first claim) and retries, before failing with [`Error::NoSpace`], or
//! [`Error::DiscardPending`] when emptied clusters are waiting for the
//! host's discard (or the cluster taken back went to the discard queue). A
//! rotational device has one cursor: every CPU number uses CPU 0's cache, so
//! slots go out in device order.
//!
//! # Full spaces (`SlotSpace::room`)
//! A full scan costs O(clusters); on a full space every failing allocation
//! would pay it. One word remembers scans that found nothing: bit `order`
//! (*announced*: a scan for that order is running or ended), bit
//! `ROOM_X + order` (*exhausted*), and a generation in the high half.
//! - An allocation that finds nothing listed or free (under the list lock)
//!   returns at once if its order is exhausted: O(1), no fallback tried.
//!   Otherwise it announces (`fetch_or`, under the list lock), noting the
//!   generation, and runs the fallbacks: fragmented clusters, the scan, the
//!   take-back of an empty cached cluster.
//! - If they all fail, it marks the order exhausted by CAS, only if the
//!   generation is unchanged and the announcement still stands.
//! - Everything that makes room clears every announcement and mark and
//!   starts a new generation (a CAS; only a load while nothing is
//!   announced or marked): a free ([`Pin::release`]), a failed claim that
//!   set words back to 0, and a refill making a free cluster live (under the
//!   list lock).
//!   Clusters that become free are found under the list lock before the
//!   exhausted check.
//!
//! No room made during a scan is lost: a free sets its word to 0 and then
//! does an RMW on its cluster's lifetime word before it reads `room`; the
//! scan announces before it does its RMW (`try_ref`, or an RMW read for the
//! take-back) on that lifetime word. If the scan's RMW comes later, it sees
//! the word at 0; if the free's RMW comes later, the free reads the
//! announcement and clears it, and the scan's marking CAS fails. So at
//! quiescence an allocation fails exactly when no fallback could serve it,
//! as before; only its cost changed: one failing scan per order between two
//! events that make room.
//!
//! # Memory after everything is freed
//! Each CPU number (one for a rotational device) keeps at most one cluster
//! per order cached, empty or not, to allocate without the list lock. After
//! every slot is freed, a virtual space holds its directory (top array, and
//! the middle and leaf pages of every cluster index ever used: 64 bytes per
//! cluster), the per-CPU array, and the tables of: cluster 0 (slot 0 is
//! reserved), the last cluster of a 2^32-slot space if it was used (slot
//! 2^32 - 1 is reserved), and at most one cluster per CPU number and order
//! that allocated (the caches' clusters). An allocation that finds no other
//! room takes cached empty clusters back, one at a time;
//! [`SlotSpace::trim`] takes them all back, leaving only the first two. (A
//! device keeps every table for its whole life.)
//!
//! # Performance notes
//! An order-0 allocation is two locked RMWs (the CAS that adds the slot's
//! reference to its cluster's `refs`, and the claim of the word); a free
//! through the map is two (the word CAS and the `release` that drops the
//! slot's reference); a lookup is none, and a dup, store or lock is one (the
//! word CAS). The read-side section costs the host's `rcu_read_lock` (in
//! userspace: a thread-local access and two plain stores, with a compiler
//! fence where the `membarrier` system call is available).

use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use crate::ext::{ClusterExt, alloc_table, free_table};
use crate::geometry::{Geometry, MAX_ORDERS};
use crate::provider::{Ctx, Provider};
use crate::slotword::SlotWord;
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, Mutex, Ordering, ZeroInit};
use crate::{Error, Result};

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
}

/// One cluster's directory record. Lives in a leaf page that is never freed
/// while the space exists.
///
/// One cache line each: every allocation and free updates its cluster's
/// lifetime word, and CPUs work in different (often consecutive)
/// clusters; two records to a line made CPUs bounce each other's line and
/// throughput fell as threads were added (measured on 16 cores: 4 threads
/// slower than 2). It costs 32 bytes per cluster (0.06 B per slot at 512
/// slots per cluster), only for clusters whose leaf page exists.
#[repr(align(64))]
pub struct DirEntry<W> {
    state: AtomicU64,
    words: AtomicPtr<W>,
    /// List links under the list lock: `prev + 1` in the low half, `next + 1` in
    /// the high half (0 = none). The free, discard and retire FIFOs use
    /// `next` only.
    links: AtomicU64,
    ext: AtomicPtr<ClusterExt>,
    /// (`RETIRING`, under the list lock) the host's grace-period cookie.
    cookie: AtomicU64,
    /// (Fixed spaces, `RETIRING`, under the list lock) the optional tables
    /// taken off the cluster at its teardown, freed when the grace period
    /// ends (the slot table stays).
    retired_ext: AtomicPtr<ClusterExt>,
}

// SAFETY: all-zero is the FREE state with null pointers and no links.
unsafe impl<W> ZeroInit for DirEntry<W> {
    fn zeroed() -> Self {
        Self {
            state: AtomicU64::new(0),
            words: AtomicPtr::zeroed(),
            links: AtomicU64::new(0),
            ext: AtomicPtr::zeroed(),
            cookie: AtomicU64::new(0),
            retired_ext: AtomicPtr::zeroed(),
        }
    }
}

impl<W> DirEntry<W> {
    /// Add `n` references if the cluster is live (and of `order`, if given).
    #[inline]
    fn try_ref(&self, n: u64, order: Option<u32>) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & (LIVE | DYING) != LIVE || refs(s) + n >= REFS_LIMIT {
                return false;
            }
            if let Some(o) = order {
                if order_of(s) != o {
                    return false;
                }
            }
            // An allocation pin is the cluster's first claim, or a later
            // one: either way it is no longer fresh (no extra RMW: the same
            // CAS).
            let next = if order.is_some() {
                (s + n) & !FRESH
            } else {
                s + n
            };
            match self
                .state
                .compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(x) => s = x,
            }
        }
    }

    /// Apply `f` to the state word until the CAS holds (under the list lock,
    /// racing only pins and unrefs, which change `refs`).
    fn update(&self, f: impl Fn(u64) -> u64) -> (u64, u64) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let new = f(s);
            match self
                .state
                .compare_exchange_weak(s, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (s, new),
                Err(x) => s = x,
            }
        }
    }

    fn next(&self) -> u32 {
        (self.links.load(Ordering::Relaxed) >> 32) as u32
    }
    fn prev(&self) -> u32 {
        self.links.load(Ordering::Relaxed) as u32
    }
    fn set_links(&self, prev: u32, next: u32) {
        self.links
            .store(u64::from(prev) | (u64::from(next) << 32), Ordering::Relaxed);
    }
}

/// One CPU's cache for one order.
struct CpuOrder {
    /// `cluster index + 1` of the current cluster; 0 = none.
    cur: AtomicU32,
    /// Slot offset where the next scan starts (a hint, masked to the
    /// cluster).
    cursor: AtomicU32,
}

#[repr(align(64))]
struct PerCpu {
    orders: [CpuOrder; MAX_ORDERS],
}

// SAFETY: all-zero is "no cluster cached" with zero cursors.
unsafe impl ZeroInit for PerCpu {
    fn zeroed() -> Self {
        Self {
            orders: core::array::from_fn(|_| CpuOrder {
                cur: AtomicU32::new(0),
                cursor: AtomicU32::new(0),
            }),
        }
    }
}

/// A FIFO of cluster indices linked through `DirEntry::links` (next only).
#[derive(Clone, Copy, Default)]
struct Fifo {
    head: u32,
    tail: u32,
    len: u32,
}

/// State under the list lock. Heads hold `index + 1`; 0 = empty.
struct Lists {
    nonfull: [u32; MAX_ORDERS],
    frag: [u32; MAX_ORDERS],
    /// Tails of the `frag` lists: fragmented clusters queue at the tail, so
    /// allocations that fall back to them try each in turn.
    frag_tail: [u32; MAX_ORDERS],
    full: u32,
    free: Fifo,
    discard: Fifo,
    /// Torn-down clusters waiting for a grace period, oldest first.
    retire: Fifo,
    /// Clusters taken from `discard` by the host and not yet done.
    discarding: u32,
    /// Clusters below `bump` have been used at least once.
    bump: u32,
    counts: [u32; 4],
}

/// Tables to give back to the provider once the list lock is dropped: of
/// up to [`GARBAGE`] clusters whose grace period ended (or that were never
/// published).
struct Garbage<W> {
    words: [Option<NonNull<W>>; GARBAGE],
    ext: [Option<NonNull<ClusterExt>>; GARBAGE],
    n: usize,
}

impl<W> Default for Garbage<W> {
    fn default() -> Self {
        Self {
            words: [None; GARBAGE],
            ext: [None; GARBAGE],
            n: 0,
        }
    }
}

impl<W> Garbage<W> {
    fn full(&self) -> bool {
        self.n >= GARBAGE
    }
    /// Queue one cluster's tables (callers check `full` first).
    fn push(&mut self, words: Option<NonNull<W>>, ext: Option<NonNull<ClusterExt>>) {
        if words.is_none() && ext.is_none() {
            return;
        }
        if let (Some(w), Some(x)) = (self.words.get_mut(self.n), self.ext.get_mut(self.n)) {
            *w = words;
            *x = ext;
            self.n += 1;
        }
    }
}

/// Memory a space holds, by kind, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceMemory {
    /// Directory: the top array, middle and leaf pages (never freed).
    pub directory: u64,
    /// Per-CPU caches.
    pub percpu: u64,
    /// Slot tables (one word per slot of each live cluster).
    pub words: u64,
    /// Cache word tables.
    pub cache: u64,
    /// memcg id tables and their per-cluster records.
    pub memcg: u64,
    /// Live clusters.
    pub live_clusters: u64,
    /// Torn-down clusters whose tables (counted in `words`, `cache` and
    /// `memcg`) wait for the host's grace period; [`SlotSpace::poll_all`]
    /// gives back those whose grace period has ended.
    pub retiring_clusters: u64,
}

impl SpaceMemory {
    /// All bytes.
    pub fn total(&self) -> u64 {
        self.directory + self.percpu + self.words + self.cache + self.memcg
    }
}

/// How many clusters each list holds (taken under the list lock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListCounts {
    /// Never used or back in the free FIFO.
    pub free: u64,
    /// On a `nonfull[order]` list.
    pub nonfull: u64,
    /// On a `frag[order]` list.
    pub frag: u64,
    /// On the full list.
    pub full: u64,
    /// Waiting for the host's discard, or being discarded.
    pub discard: u64,
    /// Torn down, waiting for the host's grace period to free its tables.
    pub retiring: u64,
    /// Held by a per-CPU cache or on no list.
    pub other: u64,
}

/// What a cluster is doing, for invariant checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Not in use (never used, or back in the free FIFO).
    Free,
    /// Emptied and waiting for (or under) the host's discard.
    Discard,
    /// Torn down, waiting for the host's grace period.
    Retiring,
    /// In use, of this order.
    Live {
        /// The order its allocations have.
        order: u32,
        /// A per-CPU cache holds it.
        cached: bool,
        /// On `nonfull[order]`.
        nonfull: bool,
        /// On `frag[order]`.
        frag: bool,
        /// On the full list.
        full: bool,
    },
}

type Mid<W> = AtomicPtr<DirEntry<W>>;

/// A space of slot words, allocated per CPU and in naturally aligned runs of
/// `2^order` slots. See the module documentation for the protocol.
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
    /// see "Full spaces" in the module docs.
    room: AtomicU64,
    /// Clusters visited by full scans and fallbacks (tests count the work
    /// of a failing allocation).
    #[cfg(test)]
    scanned: AtomicU64,
}

/// Bit of the first exhausted-order mark in `SlotSpace::room`.
const ROOM_X: u32 = 16;
/// First bit of the generation in `SlotSpace::room`.
const ROOM_GEN: u32 = 32;
/// Announcements and marks.
const ROOM_FLAGS: u64 = (1 << ROOM_GEN) - 1;

/// The fallbacks one allocation has been through.
#[derive(Default)]
struct Fallback {
    /// Fragmented clusters it may still try (each at most once).
    frag_budget: Option<u32>,
    /// `SlotSpace::room` as its announcement left it, once announced.
    scan: Option<u64>,
    /// Whether it took back an empty cached cluster already.
    reclaimed: bool,
}

// SAFETY: all shared state is reached through atomics or the list lock; raw
// pointers point at provider memory owned by the space.
unsafe impl<P: Provider + Send, W: SlotWord> Send for SlotSpace<P, W> {}
// SAFETY: as above; `P: Provider` is `Sync`.
unsafe impl<P: Provider, W: SlotWord> Sync for SlotSpace<P, W> {}

/// Access to one live cluster's tables: a read-side section of the host's
/// reclamation ([`Provider::read_lock`]) that keeps the tables it saw valid
/// until the pin is dropped or released, even if the cluster is torn down
/// meanwhile (its words then read 0: every slot was free). Taking and
/// dropping one costs no atomic read-modify-write.
///
/// A pin belongs to the thread that took it (a section is per thread): it
/// is neither `Send` nor `Sync`.
///
/// ```compile_fail
/// # use core::ptr::NonNull;
/// # use vswap_alloc::{Ctx, MemError, Provider, SlotSpace};
/// # struct NoMem;
/// # unsafe impl Provider for NoMem {
/// #     fn alloc_zeroed(&self, _: usize, _: usize, _: Ctx) -> Result<NonNull<u8>, MemError> {
/// #         Err(MemError::NoMem)
/// #     }
/// #     unsafe fn free(&self, _: NonNull<u8>, _: usize, _: usize) {}
/// #     fn read_lock(&self) {}
/// #     unsafe fn read_unlock(&self) {}
/// #     fn grace_start(&self) -> u64 { 0 }
/// #     fn grace_done(&self, _: u64) -> bool { false }
/// # }
/// fn on_another_thread<T: Send>(_: T) {}
/// fn f(s: &SlotSpace<NoMem>) {
///     // would end the wrong thread's section:
///     on_another_thread(s.pin(1).unwrap());
/// }
/// ```
///
/// A pin kept for long (or leaked with `mem::forget`) holds back every
/// grace period of the provider (with `StdProvider`, process-wide): freed
/// clusters' tables then stay allocated. Keep pins short, and never sleep
/// while holding one.
pub struct Pin<'a, P: Provider, W: SlotWord = AtomicU64> {
    /// A section belongs to the thread that entered it: a pin is neither
    /// `Send` nor `Sync` (dropped on another thread it would end that
    /// thread's section).
    _thread: core::marker::PhantomData<*const ()>,
    space: &'a SlotSpace<P, W>,
    entry: &'a DirEntry<W>,
    idx: u32,
    words: &'a [W],
}

impl<P: Provider, W: SlotWord> Pin<'_, P, W> {
    /// The cluster's index.
    pub fn cluster(&self) -> u32 {
        self.idx
    }
    /// First slot of the cluster.
    pub fn base(&self) -> u32 {
        self.idx << self.space.geo.cluster_shift
    }
    /// The cluster's slot words.
    ///
    /// Writing them cannot make the space free memory that is in use: a
    /// cluster's references drop only through [`release`](Self::release)
    /// (`unsafe`), and its tables go back only after a grace period. A word a caller sets to 0
    /// without `release` keeps its slot's reference (the cluster stays until
    /// the space is dropped), and a free word a caller sets non-zero was
    /// never handed out: it has no reference, blocks that slot, and must not
    /// be counted in a `release`. A fixed space's words are reached only
    /// through its owner ([`PhysDevice`](crate::PhysDevice) gives no pins
    /// out).
    pub fn words(&self) -> &[W] {
        self.words
    }
    /// The cache word table, if made.
    pub fn cache_table(&self) -> Option<&[AtomicU64]> {
        self.ext().and_then(|e| e.cache(self.words.len()))
    }
    /// The cache word table, made on first use (with [`Ctx::MaySleep`], the
    /// table is made outside the read-side section: see "Reclamation" in the
    /// module docs).
    pub fn cache_table_or_create(&self, ctx: Ctx) -> Result<&[AtomicU64]> {
        if let Some(t) = self.cache_table() {
            return Ok(t);
        }
        self.outside(ctx, || {
            let e = self.ext_or_create(ctx)?;
            let (t, added) = e.cache_or_create(&self.space.provider, self.words.len(), ctx)?;
            self.space
                .mem_cache
                .fetch_add(added as u64, Ordering::Relaxed);
            Ok(t)
        })?
    }
    /// The memcg id of slot `off` of this cluster, if set.
    pub fn memcg(&self, off: usize) -> Option<u16> {
        self.ext().and_then(|e| e.memcg_get(off, self.words.len()))
    }
    /// Set the memcg id of slot `off`.
    pub fn set_memcg(&self, off: usize, id: u16, ctx: Ctx) -> Result<()> {
        if off >= self.words.len() {
            return Err(Error::OutOfRange);
        }
        // Without sleeping first: setting an id that needs no new table is
        // the common case (a uniform cluster).
        let nosleep = self.ext_or_create(Ctx::NoSleep).and_then(|e| {
            e.memcg_set(
                &self.space.provider,
                off,
                self.words.len(),
                id,
                Ctx::NoSleep,
            )
        });
        let added = match nosleep {
            Err(Error::Again | Error::NoMem) if ctx == Ctx::MaySleep => {
                self.outside(ctx, || {
                    let e = self.ext_or_create(ctx)?;
                    e.memcg_set(&self.space.provider, off, self.words.len(), id, ctx)
                })??
            }
            r => r?,
        };
        self.space
            .mem_memcg
            .fetch_add(added as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Run `f`, which may allocate with `ctx`, outside the read-side section
    /// when `ctx` is [`Ctx::MaySleep`] (nothing may sleep inside a section: a
    /// kernel's `rcu_read_lock` forbids it); with [`Ctx::NoSleep`], `f` runs
    /// inside. Meanwhile the pin holds a reference on the cluster, so it is
    /// not torn down and every table this pin has shown stays valid (safe to
    /// use from `f`), also after the section is entered again: the
    /// reference is dropped inside the new section. Two locked RMWs (the
    /// reference taken and dropped), only with `MaySleep`.
    ///
    /// # Errors
    /// [`Error::NotAllocated`] (and `f` is not called) if the cluster is no
    /// longer live (its last slot was freed since the pin was taken), or
    /// [`Error::Again`] if it holds so many references that one more would
    /// not fit.
    ///
    /// The pin leaves only its own section: a caller that is inside another
    /// one (nested pins, or its own `read_lock`) must pass
    /// [`Ctx::NoSleep`].
    pub fn outside<T>(&self, ctx: Ctx, f: impl FnOnce() -> T) -> Result<T> {
        if ctx != Ctx::MaySleep {
            return Ok(f());
        }
        // Inside the section the table this pin shows cannot have been
        // replaced (a cluster gets a new table only after a grace period
        // that waits for this section), so a reference taken now holds the
        // incarnation whose table the pin shows (a reuse before the grace
        // period keeps the same table).
        if !self.entry.try_ref(1, None) {
            let s = self.entry.state.load(Ordering::Acquire);
            return Err(if s & (LIVE | DYING) == LIVE {
                Error::Again
            } else {
                Error::NotAllocated
            });
        }
        // SAFETY: pairs with this pin's own `read_lock`, taken again below
        // before the pin is used or dropped.
        unsafe { self.space.provider.read_unlock() };
        let r = f();
        self.space.provider.read_lock();
        // Inside the new section: a teardown this unref causes retires the
        // tables with a grace period that waits for this pin.
        self.space.unref(self.idx, self.entry, 1, false);
        Ok(r)
    }

    fn ext(&self) -> Option<&ClusterExt> {
        let p = self.entry.ext.load(Ordering::Acquire);
        // SAFETY: a published record is freed only after a grace period that
        // began after it was unpublished, and this pin is a read-side section
        // that began before (or `outside` holds every retirement back).
        (!p.is_null()).then(|| unsafe { &*p })
    }

    fn ext_or_create(&self, ctx: Ctx) -> Result<&ClusterExt> {
        if let Some(e) = self.ext() {
            return Ok(e);
        }
        let rec = alloc_table::<ClusterExt, P>(&self.space.provider, 1, ctx)?;
        match self.entry.ext.compare_exchange(
            ptr::null_mut(),
            rec.as_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.space
                    .mem_memcg
                    .fetch_add(ClusterExt::record_bytes() as u64, Ordering::Relaxed);
            }
            // SAFETY: lost the race; our record was never published.
            Err(_) => unsafe { free_table(&self.space.provider, rec, 1) },
        }
        self.ext().ok_or(Error::NoMem)
    }

    /// Drop the pin together with the references of `freed` slots of this
    /// cluster whose words the caller has set back to 0 (one atomic RMW on
    /// the cluster's lifetime word when `freed > 0`, none otherwise).
    ///
    /// A pin on its own is dropped with `drop` (safe): it only leaves its
    /// read-side section.
    ///
    /// ```compile_fail
    /// # use core::ptr::NonNull;
    /// # use vswap_alloc::{Ctx, Geometry, MemError, Provider, SlotSpace};
    /// # struct NoMem;
    /// # unsafe impl Provider for NoMem {
    /// #     fn alloc_zeroed(&self, _: usize, _: usize, _: Ctx) -> Result<NonNull<u8>, MemError> {
    /// #         Err(MemError::NoMem)
    /// #     }
    /// #     unsafe fn free(&self, _: NonNull<u8>, _: usize, _: usize) {}
    /// #     fn read_lock(&self) {}
    /// #     unsafe fn read_unlock(&self) {}
    /// #     fn grace_start(&self) -> u64 { 0 }
    /// #     fn grace_done(&self, _: u64) -> bool { false }
    /// # }
    /// # fn f(s: &SlotSpace<NoMem>) {
    /// let a = s.alloc(0, 0, Ctx::MaySleep, 1).unwrap();
    /// let other = s.pin(a).unwrap(); // reads the table below
    /// // Dropping more references than this pin's own share is not safe code
    /// // (it would let the cluster's table be freed under `other`):
    /// s.pin(a).unwrap().release(2);
    /// let _ = other.words();
    /// # }
    /// ```
    ///
    /// # Safety
    /// `freed` counts slots of this cluster that the space handed out
    /// ([`SlotSpace::alloc`], [`SlotSpace::alloc_with`]) and whose words the
    /// caller itself has turned from non-zero to 0 since, each such
    /// transition counted in exactly one `release` (so a slot whose word
    /// somebody else zeroed, or a word the caller set non-zero itself, is not
    /// counted). Counting more drops the cluster's references below what
    /// allocated slots hold: the cluster would be torn down (and its tables
    /// freed after a grace period) while slots in it are still allocated,
    /// and its reference count would underflow into its state bits.
    pub unsafe fn release(self, freed: u32) {
        let this = ManuallyDrop::new(self);
        // Leave the section first: the unref may tear the cluster down and
        // poll the grace period, which cannot end while this thread is
        // inside. The unref touches only the directory record (never freed).
        // SAFETY: pairs with this pin's `read_lock`.
        unsafe { this.space.provider.read_unlock() };
        if freed > 0 {
            this.space
                .unref(this.idx, this.entry, u64::from(freed), true);
        }
    }
}

impl<P: Provider, W: SlotWord> Drop for Pin<'_, P, W> {
    fn drop(&mut self) {
        // SAFETY: pairs with this pin's `read_lock` (`pin_cluster`).
        unsafe { self.space.provider.read_unlock() };
    }
}

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
        {
            return Err(Error::BadConfig);
        }
        let top_len = geo.top_len();
        let top = alloc_table::<AtomicPtr<Mid<W>>, P>(&provider, top_len, Ctx::MaySleep)?;
        let percpu = match alloc_table::<PerCpu, P>(&provider, geo.cpus as usize, Ctx::MaySleep) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: `top` is ours and unused.
                unsafe { free_table(&provider, top, top_len) };
                return Err(e);
            }
        };
        let space = Self {
            provider,
            geo,
            policy,
            slots: if policy.fixed { geo.slots } else { geo.slots() },
            clusters: geo.clusters(),
            top,
            top_len,
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
            mem_dir: AtomicU64::new((top_len * core::mem::size_of::<AtomicPtr<Mid<W>>>()) as u64),
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
    fn csize(&self) -> usize {
        1 << self.geo.cluster_shift
    }

    fn top(&self) -> &[AtomicPtr<Mid<W>>] {
        // SAFETY: the top array holds `top_len` initialised pointers for the
        // space's whole life.
        unsafe { core::slice::from_raw_parts(self.top.as_ptr(), self.top_len) }
    }

    fn percpu(&self, cpu: u32) -> Option<&PerCpu> {
        if cpu >= self.geo.cpus {
            return None;
        }
        let cpu = if self.policy.rotational { 0 } else { cpu };
        // SAFETY: `cpu < cpus`, the array has `cpus` initialised entries.
        Some(unsafe { &*self.percpu.as_ptr().add(cpu as usize) })
    }

    /// Top, middle and leaf position of cluster `idx`. Records sit in index
    /// order within a leaf; each is a whole cache line (`DirEntry` is 64-byte
    /// aligned), so neighbouring clusters never share a lifetime word's line.
    #[inline]
    fn split(&self, idx: u32) -> (usize, usize, usize) {
        let l = self.geo.dir_leaf_shift;
        let m = self.geo.dir_mid_shift;
        let i = idx as usize;
        (i >> (l + m), (i >> l) & ((1 << m) - 1), i & ((1 << l) - 1))
    }

    /// The directory entry of cluster `idx`, if its pages exist.
    #[inline]
    fn entry(&self, idx: u32) -> Option<&DirEntry<W>> {
        let (t, m, l) = self.split(idx);
        let mid = self.top().get(t)?.load(Ordering::Acquire);
        if mid.is_null() {
            return None;
        }
        // SAFETY: a published middle page holds 2^mid_shift pointers and is never
        // freed while the space lives; `m` is masked to that range.
        let leaf = unsafe { &*mid.add(m) }.load(Ordering::Acquire);
        if leaf.is_null() {
            return None;
        }
        // SAFETY: as above for the leaf page of 2^leaf_shift entries.
        Some(unsafe { &*leaf.add(l) })
    }

    /// Visit the directory entries of clusters `0..limit` whose directory
    /// pages exist, skipping absent middle and leaf pages whole (a map of 2^32
    /// slots that used a few clusters visits a few leaves, not 2^23 indices).
    /// `f` returns `false` to stop.
    fn each_entry(&self, limit: u32, mut f: impl FnMut(u32, &DirEntry<W>) -> bool) {
        let l = self.geo.dir_leaf_shift;
        let m = self.geo.dir_mid_shift;
        for (t, top) in self.top().iter().enumerate() {
            let mid = top.load(Ordering::Acquire);
            if mid.is_null() {
                continue;
            }
            for mi in 0..1usize << m {
                // SAFETY: a published middle page holds 2^mid_shift pointers and
                // lives as long as the space.
                let leaf = unsafe { &*mid.add(mi) }.load(Ordering::Acquire);
                if leaf.is_null() {
                    continue;
                }
                for pos in 0..1usize << l {
                    let idx = (((t << m) | mi) << l) | pos;
                    if idx >= limit as usize {
                        return;
                    }
                    // SAFETY: as above for the leaf page of 2^leaf_shift entries.
                    if !f(idx as u32, unsafe { &*leaf.add(pos) }) {
                        return;
                    }
                }
            }
        }
    }

    /// The directory entry of cluster `idx`, making missing directory pages.
    fn entry_or_create(&self, idx: u32, ctx: Ctx) -> Result<&DirEntry<W>> {
        let (t, m, _) = self.split(idx);
        let slot = self.top().get(t).ok_or(Error::OutOfRange)?;
        let mid = self.install(slot, 1 << self.geo.dir_mid_shift, ctx)?;
        // SAFETY: `mid` is a published middle page; `m` is in range.
        let leaf_slot = unsafe { &*mid.add(m) };
        self.install::<DirEntry<W>>(leaf_slot, 1 << self.geo.dir_leaf_shift, ctx)?;
        self.entry(idx).ok_or(Error::NoMem)
    }

    fn install<T: ZeroInit>(&self, slot: &AtomicPtr<T>, n: usize, ctx: Ctx) -> Result<*mut T> {
        let cur = slot.load(Ordering::Acquire);
        if !cur.is_null() {
            return Ok(cur);
        }
        let page = alloc_table::<T, P>(&self.provider, n, ctx)?;
        match slot.compare_exchange(
            ptr::null_mut(),
            page.as_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.mem_dir
                    .fetch_add((n * core::mem::size_of::<T>()) as u64, Ordering::Relaxed);
                Ok(page.as_ptr())
            }
            Err(other) => {
                // SAFETY: we lost the race; our page was never published.
                unsafe { free_table(&self.provider, page, n) };
                Ok(other)
            }
        }
    }

    fn words_of(&self, e: &DirEntry<W>) -> &[W] {
        let p = e.words.load(Ordering::Acquire);
        if p.is_null() {
            return &[];
        }
        // SAFETY: callers hold a reference on a LIVE cluster (or own a fixed
        // space's table), whose slot table of `csize` words was published
        // before LIVE was set and is freed only after the cluster dies.
        unsafe { core::slice::from_raw_parts(p, self.csize()) }
    }

    fn table_bytes(&self) -> u64 {
        (self.csize() * core::mem::size_of::<W>()) as u64
    }

    fn make_words(&self, e: &DirEntry<W>, ctx: Ctx) -> Result<()> {
        if !e.words.load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        let words = alloc_table::<W, P>(&self.provider, self.csize(), ctx)?;
        e.words.store(words.as_ptr(), Ordering::Release);
        self.mem_words
            .fetch_add(self.table_bytes(), Ordering::Relaxed);
        Ok(())
    }

    /// Pin the cluster that holds `slot`.
    ///
    /// Fails with [`Error::OutOfRange`] for a slot outside the space and
    /// [`Error::NotAllocated`] when the cluster is not live.
    #[inline(always)]
    pub fn pin(&self, slot: u32) -> Result<Pin<'_, P, W>> {
        if u64::from(slot) >= self.slots {
            return Err(Error::OutOfRange);
        }
        let idx = slot >> self.geo.cluster_shift;
        self.pin_cluster(idx).ok_or(Error::NotAllocated)
    }

    // Always inlined: returned through memory, the `Pin` costs two
    // store-forwarding stalls per lookup (measured: 15 ns against 9).
    #[inline(always)]
    fn pin_cluster(&self, idx: u32) -> Option<Pin<'_, P, W>> {
        let entry = self.entry(idx)?;
        self.provider.read_lock();
        // Inside the section: a table seen here is freed only after a grace
        // period that starts after this thread leaves (see "Reclamation").
        let s = entry.state.load(Ordering::Acquire);
        let p = entry.words.load(Ordering::Acquire);
        if s & (LIVE | DYING) != LIVE || p.is_null() {
            // SAFETY: pairs with the `read_lock` above.
            unsafe { self.provider.read_unlock() };
            return None;
        }
        // SAFETY: a published table holds `csize` words and is freed only
        // after a grace period that began after it was unpublished; this
        // section began before that (it saw the cluster live), so the table
        // outlives the pin.
        let words = unsafe { core::slice::from_raw_parts(p.cast_const(), self.csize()) };
        Some(Pin {
            _thread: core::marker::PhantomData,
            space: self,
            entry,
            idx,
            words,
        })
    }

    /// Allocate `2^order` naturally aligned slots on `cpu`, writing `init`
    /// (non-zero) into each slot word. Returns the first slot.
    ///
    /// [`Error::NoSpace`] can be transient while emptied clusters that had
    /// optional tables (cache or memcg) wait for the host's grace period
    /// (`memory().retiring_clusters`); clusters without them are taken back
    /// at once.
    ///
    /// ```
    /// # #[cfg(feature = "std")] {
    /// use vswap_alloc::{Ctx, Geometry, SlotSpace, StdProvider};
    /// let s = SlotSpace::new(Geometry::default(), StdProvider::new(), u64::MAX).unwrap();
    /// let a = s.alloc(0, 0, Ctx::MaySleep, 1).unwrap();
    /// assert_ne!(a, 0); // slot 0 is reserved
    /// let b = s.alloc(4, 1, Ctx::MaySleep, 1).unwrap();
    /// assert_eq!(b % 16, 0);
    /// # }
    /// ```
    #[inline]
    pub fn alloc(&self, order: u32, cpu: u32, ctx: Ctx, init: u64) -> Result<u32> {
        self.alloc_with(order, cpu, ctx, init, 0)
    }

    /// As [`alloc`](Self::alloc), writing `init + i * step` into the `i`-th slot
    /// of the run (a reverse map stores consecutive owners this way).
    pub fn alloc_with(&self, order: u32, cpu: u32, ctx: Ctx, init: u64, step: u64) -> Result<u32> {
        if order > self.geo.cluster_shift {
            return Err(Error::BadOrder);
        }
        let n = 1u64 << order;
        if init == 0 {
            return Err(Error::BadConfig);
        }
        let last = step.checked_mul(n - 1).and_then(|d| init.checked_add(d));
        if last.is_none_or(|v| W::BITS < 64 && v >> W::BITS != 0) {
            return Err(Error::PayloadTooWide);
        }
        let pc = self.percpu(cpu).ok_or(Error::BadCpu)?;
        let pc = pc.orders.get(order as usize).ok_or(Error::BadOrder)?;
        let mut fb = Fallback::default();
        loop {
            let cur = pc.cur.load(Ordering::Acquire);
            if cur != 0 {
                let idx = cur - 1;
                if let Some(e) = self.entry(idx) {
                    if e.try_ref(n, Some(order)) {
                        let hint = pc.cursor.load(Ordering::Relaxed) as usize;
                        match claim(self.words_of(e), hint, n as usize, init, step) {
                            Ok(at) => {
                                pc.cursor.store((at + n as usize) as u32, Ordering::Relaxed);
                                return Ok((idx << self.geo.cluster_shift) | at as u32);
                            }
                            // No room for this order: give the references back.
                            Err(miss) => self.missed(idx, e, n, miss),
                        }
                    }
                }
            }
            match self.refill(pc, order, cur, ctx, &mut fb) {
                Ok(()) => {}
                Err(err @ (Error::NoSpace | Error::DiscardPending)) => {
                    // Nothing listed or free: the full scan, unless the last
                    // one failed and no word was freed since (O(1) then).
                    let Some(seen) = fb.scan else {
                        return Err(err);
                    };
                    if let Some(slot) = self.steal(order, init, step) {
                        return Ok(slot);
                    }
                    // Empty clusters the per-CPU caches hold: take one back
                    // (once per call: another CPU may take it first, and a
                    // retry without bound could chase it forever).
                    if !fb.reclaimed {
                        fb.reclaimed = true;
                        match self.reclaim_cached() {
                            Some(false) => continue, // now in the free FIFO
                            Some(true) => return Err(Error::DiscardPending),
                            None => {}
                        }
                    }
                    self.end_scan(order, seen);
                    return Err(err);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a full scan for `order` found no room and no slot word has
    /// been set back to 0 since (see "Full spaces" in the module docs).
    #[inline]
    fn exhausted(&self, order: u32) -> bool {
        self.room.load(Ordering::Acquire) & (1 << (ROOM_X + order)) != 0
    }

    /// Start a full scan for `order`: announce it (frees from now on clear
    /// the announcement) and return the word as the announcement left it.
    fn begin_scan(&self, order: u32) -> u64 {
        self.room.fetch_or(1 << order, Ordering::AcqRel) | (1 << order)
    }

    /// A full scan for `order` announced as `seen` found nothing: mark the
    /// order exhausted if no room was made since (same generation, and the
    /// announcement still stands).
    fn end_scan(&self, order: u32, seen: u64) {
        let epoch = (seen >> ROOM_GEN) as u32;
        let mut cur = seen;
        loop {
            if (cur >> ROOM_GEN) as u32 != epoch || cur & (1 << order) == 0 {
                return;
            }
            match self.room.compare_exchange_weak(
                cur,
                cur | (1 << (ROOM_X + order)),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(x) => cur = x,
            }
        }
    }

    /// Room was made (slot words set back to 0, after the RMW on their
    /// cluster's lifetime word that follows; or a cluster made live): clear
    /// every announcement and mark, in a new generation. A load and, only
    /// while something is announced or marked, a CAS.
    #[inline]
    fn room_made(&self) {
        let mut m = self.room.load(Ordering::Relaxed);
        while m & ROOM_FLAGS != 0 {
            let next = ((m >> ROOM_GEN) + 1) << ROOM_GEN;
            match self
                .room
                .compare_exchange_weak(m, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(x) => m = x,
            }
        }
    }

    /// A claim of `n` slots in cluster `idx` failed: give back the
    /// references of the words it did not keep; if it rolled words back to
    /// 0, that is room made.
    fn missed(&self, idx: u32, e: &DirEntry<W>, n: u64, miss: Miss) {
        self.unref(idx, e, n - miss.kept, false);
        if miss.undone {
            self.room_made();
        }
    }

    /// Take back one empty cluster a per-CPU cache holds (only its hold is
    /// left, and the cache has allocated from it since it was installed):
    /// it leaves the cache and dies (virtual: tables freed; fixed:
    /// to the free FIFO or, with discard, the discard queue). Returns
    /// whether it went to the discard queue, or `None` if no cache held an
    /// empty cluster. Under the list lock; O(CPUs * orders).
    fn reclaim_cached(&self) -> Option<bool> {
        let mut garbage = Garbage::default();
        let mut l = self.lists.lock();
        let cpus = if self.policy.rotational {
            1
        } else {
            self.geo.cpus
        };
        let mut got = None;
        'all: for cpu in 0..cpus {
            let Some(pcpu) = self.percpu(cpu) else { break };
            let orders = self.geo.cluster_shift as usize + 1;
            for pc in pcpu.orders.iter().take(orders) {
                let cur = pc.cur.load(Ordering::Acquire);
                let Some(e) = cur.checked_sub(1).and_then(|i| self.entry(i)) else {
                    continue;
                };
                #[cfg(test)]
                self.scanned.fetch_add(1, Ordering::Relaxed);
                // An RMW, not a load: it orders this read after the scan's
                // announcement against a racing free (see `room_made`).
                let st = e.state.fetch_add(0, Ordering::AcqRel);
                if st & (LIVE | DYING | CACHED) != LIVE | CACHED || refs(st) != 1 {
                    continue;
                }
                // A fresh cluster whose first claim is yet to come is empty
                // only for that moment: it was not emptied by frees.
                if st & FRESH != 0 {
                    continue;
                }
                // The cache slot is written only under the list lock (held):
                // empty it, then drop its hold as a refill replacing it would.
                pc.cur.store(0, Ordering::Release);
                self.drop_hold(&mut l, cur - 1, &mut garbage);
                got = Some(e.state.load(Ordering::Acquire) == DISCARD);
                break 'all;
            }
        }
        drop(l);
        self.collect(garbage);
        got
    }

    /// Take back every empty cluster the per-CPU caches hold (each CPU
    /// number keeps at most one cluster per order cached, empty or not, to
    /// allocate from without the list lock). Returns how many. An
    /// allocation that finds no other room does this by itself, one cluster
    /// at a time; a host calls it to bring the memory a space holds after
    /// everything was freed down to its directory, per-CPU array and
    /// clusters holding reserved slots. O(CPUs * orders) under the list lock.
    pub fn trim(&self) -> u32 {
        let mut n = 0;
        while self.reclaim_cached().is_some() {
            n += 1;
        }
        self.poll_all();
        n
    }

    /// Give back the tables of every retired cluster whose grace period has
    /// ended (the space also does this whenever it tears a cluster down or
    /// looks for a free one). Returns how many clusters were finished.
    /// O(retired clusters) under the list lock, in steps.
    pub fn poll_all(&self) -> u32 {
        let mut n = 0;
        loop {
            let mut garbage = Garbage::default();
            let mut l = self.lists.lock();
            self.poll_retired(&mut l, &mut garbage);
            drop(l);
            let got = garbage.n;
            self.collect(garbage);
            n += got as u32;
            if got < GARBAGE {
                return n;
            }
        }
    }

    /// Last resort: every live cluster of `order` (on a device, an order-0
    /// allocation takes a slot from a cluster of any order, as the kernel's
    /// does; the virtual space keeps one order per cluster).
    fn steal(&self, order: u32, init: u64, step: u64) -> Option<u32> {
        let n = 1u64 << order;
        let bump = self.lists.lock().bump;
        let want = if order == 0 && self.policy.fixed {
            None
        } else {
            Some(order)
        };
        let mut found = None;
        self.each_entry(bump, |idx, e| {
            #[cfg(test)]
            self.scanned.fetch_add(1, Ordering::Relaxed);
            if !e.try_ref(n, want) {
                return true;
            }
            match claim(self.words_of(e), 0, n as usize, init, step) {
                Ok(at) => {
                    found = Some((idx << self.geo.cluster_shift) | at as u32);
                    false
                }
                Err(miss) => {
                    self.missed(idx, e, n, miss);
                    true
                }
            }
        });
        found
    }

    /// Give the CPU a cluster with room for `order`, replacing `seen`.
    fn refill(
        &self,
        pc: &CpuOrder,
        order: u32,
        seen: u32,
        ctx: Ctx,
        fb: &mut Fallback,
    ) -> Result<()> {
        let mut garbage = Garbage::default();
        let mut l = self.lists.lock();
        if pc.cur.load(Ordering::Relaxed) != seen {
            return Ok(()); // another thread on this CPU number refilled
        }
        if let Some(idx) = self.pop_listed(&mut l, List::Nonfull, order) {
            self.install_cache(&mut l, pc, idx, &mut garbage);
            drop(l);
            self.collect(garbage);
            return Ok(());
        }
        // Retired clusters whose grace period ended become free first (their
        // tables freed with the lock dropped).
        if l.retire.head != 0 {
            let mut done = Garbage::default();
            self.poll_retired(&mut l, &mut done);
            if done.n > 0 {
                drop(l);
                self.collect(done);
                l = self.lists.lock();
                if pc.cur.load(Ordering::Relaxed) != seen {
                    return Ok(());
                }
            }
        }
        // A retired cluster still in its grace period serves first, with the
        // table it has: no provider call, no new index (see "Reclamation":
        // reusing an all-zero table is what reusing a freed slot in a live
        // cluster already is). Otherwise a free cluster: take an index whose
        // directory pages exist (made with the lock dropped), then make its
        // slot table without the lock.
        let reused = self.reuse_retired(&mut l);
        let idx = if reused.is_some() {
            reused
        } else {
            loop {
                if let Some(idx) = self.fifo_pop(&mut l.free) {
                    break Some(idx);
                }
                if u64::from(l.bump) >= self.clusters {
                    break None;
                }
                let peek = l.bump;
                if self.entry(peek).is_some() {
                    l.bump += 1;
                    break Some(peek);
                }
                drop(l);
                self.entry_or_create(peek, ctx)?;
                l = self.lists.lock();
                if pc.cur.load(Ordering::Relaxed) != seen {
                    return Ok(());
                }
            }
        };
        let Some(idx) = idx else {
            let err = if l.discard.len + l.discarding > 0 {
                Error::DiscardPending
            } else {
                Error::NoSpace
            };
            // Nothing listed or free, and the last full scan for this order
            // found nothing with no free since: no fallback can succeed.
            if fb.scan.is_none() && self.exhausted(order) {
                return Err(err);
            }
            if fb.scan.is_none() {
                fb.scan = Some(self.begin_scan(order));
            }
            // The kernel's last resort before stealing: fragmented clusters,
            // each tried once per allocation (a failed one is filed as
            // fragmented again, so an unbounded loop would spin on it).
            let budget = fb
                .frag_budget
                .get_or_insert(l.counts.get(List::Frag as usize).copied().unwrap_or(0));
            let popped = if *budget > 0 {
                self.pop_listed(&mut l, List::Frag, order)
            } else {
                None
            };
            if let Some(idx) = popped {
                #[cfg(test)]
                self.scanned.fetch_add(1, Ordering::Relaxed);
                *budget -= 1;
                self.install_cache(&mut l, pc, idx, &mut garbage);
                drop(l);
                self.collect(garbage);
                return Ok(());
            }
            return Err(err);
        };
        let e = self.entry(idx).ok_or(Error::NoMem)?;
        if e.words.load(Ordering::Acquire).is_null() {
            drop(l);
            let made = self.make_words(e, ctx);
            l = self.lists.lock();
            if let Err(err) = made {
                self.fifo_push_front(&mut l, idx);
                return Err(err);
            }
            if pc.cur.load(Ordering::Relaxed) != seen {
                // Lost to another refill on this CPU number: give it back
                // (never published: no grace period to wait for).
                self.finish(&mut l, idx, e, &mut garbage);
                drop(l);
                self.collect(garbage);
                return Ok(());
            }
        }
        let words = self.words_of(e);
        if !self.policy.fixed {
            // Slot 0 (a zero swap entry means "none") and slot 2^32 - 1 (the
            // device reverse map's reserved marker) are never handed out.
            if idx == 0 {
                if let Some(w) = words.first() {
                    w.put(self.reserved, Ordering::Relaxed);
                }
            }
            if (u64::from(idx) + 1) << self.geo.cluster_shift > u64::from(u32::MAX) {
                if let Some(w) = words.get((u32::MAX - (idx << self.geo.cluster_shift)) as usize) {
                    w.put(self.reserved, Ordering::Relaxed);
                }
            }
        }
        // The cache's hold, plus slots that are never handed out.
        let held = 1 + words
            .iter()
            .filter(|w| w.get(Ordering::Relaxed) != 0)
            .count() as u64;
        e.state.store(
            LIVE | CACHED | FRESH | (u64::from(order) << ORDER_SHIFT) | held,
            Ordering::Release,
        );
        // A fresh cluster is room a full scan may not have seen (other CPUs
        // and, on a device, order 0 reach it only by stealing). Under the
        // list lock, as every announcement is.
        self.room_made();
        self.live.fetch_add(1, Ordering::Relaxed);
        let old = pc.cur.swap(idx + 1, Ordering::AcqRel);
        pc.cursor.store(0, Ordering::Relaxed);
        if old != 0 {
            self.drop_hold(&mut l, old - 1, &mut garbage);
        }
        drop(l);
        self.collect(garbage);
        Ok(())
    }

    fn install_cache(&self, l: &mut Lists, pc: &CpuOrder, idx: u32, garbage: &mut Garbage<W>) {
        let old = pc.cur.swap(idx + 1, Ordering::AcqRel);
        pc.cursor.store(0, Ordering::Relaxed);
        if old != 0 && old != idx + 1 {
            self.drop_hold(l, old - 1, garbage);
        }
    }

    /// Pop the head of a `nonfull` or `frag` list of `order`, turning it into a
    /// cached cluster with one more reference.
    fn pop_listed(&self, l: &mut Lists, list: List, order: u32) -> Option<u32> {
        let head = *self.head(l, list, order)?;
        let idx = head.checked_sub(1)?;
        let e = self.entry(idx)?;
        self.unlink(l, idx, e);
        // Listed clusters are LIVE (teardown needs the lock we hold).
        e.update(|s| with_list(s, List::None) | CACHED);
        e.state.fetch_add(1, Ordering::AcqRel);
        Some(idx)
    }

    fn head<'l>(&self, l: &'l mut Lists, list: List, order: u32) -> Option<&'l mut u32> {
        match list {
            List::Nonfull => l.nonfull.get_mut(order as usize),
            List::Frag => l.frag.get_mut(order as usize),
            List::Full => Some(&mut l.full),
            List::None => None,
        }
    }

    /// Link a live, uncached, unlisted cluster at the head of `list` (at the
    /// tail of a `frag` list).
    fn link(&self, l: &mut Lists, idx: u32, e: &DirEntry<W>, list: List) {
        let (_, s) = e.update(|s| with_list(s, list));
        let o = order_of(s) as usize;
        if list == List::Frag {
            let (Some(&tail), Some(&head)) = (l.frag_tail.get(o), l.frag.get(o)) else {
                return;
            };
            match tail.checked_sub(1).and_then(|t| self.entry(t)) {
                Some(t) => t.set_links(t.prev(), idx + 1),
                None if head == 0 => {
                    if let Some(h) = l.frag.get_mut(o) {
                        *h = idx + 1;
                    }
                }
                None => return,
            }
            e.set_links(tail, 0);
            if let Some(t) = l.frag_tail.get_mut(o) {
                *t = idx + 1;
            }
            if let Some(c) = l.counts.get_mut(list as usize) {
                *c += 1;
            }
            return;
        }
        let Some(head) = self.head(l, list, order_of(s)) else {
            return;
        };
        let old = *head;
        *head = idx + 1;
        e.set_links(0, old);
        if let Some(h) = old.checked_sub(1).and_then(|h| self.entry(h)) {
            h.set_links(idx + 1, h.next());
        }
        if let Some(c) = l.counts.get_mut(list as usize) {
            *c += 1;
        }
    }

    /// Take a listed cluster off its list (the list field becomes none).
    fn unlink(&self, l: &mut Lists, idx: u32, e: &DirEntry<W>) {
        let s = e.state.load(Ordering::Acquire);
        let list = list_of(s);
        if list == List::None {
            return;
        }
        let (prev, next) = (e.prev(), e.next());
        if prev == 0 {
            if let Some(h) = self.head(l, list, order_of(s)) {
                if *h == idx + 1 {
                    *h = next;
                }
            }
        } else if let Some(p) = self.entry(prev - 1) {
            p.set_links(p.prev(), next);
        }
        if let Some(nx) = next.checked_sub(1).and_then(|n| self.entry(n)) {
            nx.set_links(prev, nx.next());
        }
        if list == List::Frag {
            if let Some(t) = l.frag_tail.get_mut(order_of(s) as usize) {
                if *t == idx + 1 {
                    *t = prev;
                }
            }
        }
        e.set_links(0, 0);
        e.update(|s| with_list(s, List::None));
        if let Some(c) = l.counts.get_mut(list as usize) {
            *c -= 1;
        }
    }

    fn fifo_pop(&self, f: &mut Fifo) -> Option<u32> {
        let idx = f.head.checked_sub(1)?;
        let e = self.entry(idx)?;
        f.head = e.next();
        if f.head == 0 {
            f.tail = 0;
        }
        f.len -= 1;
        e.set_links(0, 0);
        Some(idx)
    }

    fn fifo_push(&self, f: &mut Fifo, idx: u32) {
        let Some(e) = self.entry(idx) else { return };
        e.set_links(0, 0);
        match f.tail.checked_sub(1).and_then(|t| self.entry(t)) {
            Some(t) => t.set_links(0, idx + 1),
            None => f.head = idx + 1,
        }
        f.tail = idx + 1;
        f.len += 1;
    }

    /// Give an index back to the front of the free FIFO (a refill that failed).
    fn fifo_push_front(&self, l: &mut Lists, idx: u32) {
        let Some(e) = self.entry(idx) else { return };
        e.set_links(0, l.free.head);
        if l.free.head == 0 {
            l.free.tail = idx + 1;
        }
        l.free.head = idx + 1;
        l.free.len += 1;
    }

    /// A per-CPU cache lets go of cluster `idx`; file it by its fill.
    fn drop_hold(&self, l: &mut Lists, idx: u32, garbage: &mut Garbage<W>) {
        let Some(e) = self.entry(idx) else { return };
        let (_, new) = e.update(|s| (s & !(CACHED | FRESH)) - 1);
        if refs(new) == 0 {
            self.teardown_locked(l, idx, e, garbage);
            return;
        }
        let full = self
            .words_of(e)
            .iter()
            .all(|w| w.get(Ordering::Relaxed) != 0);
        self.link(l, idx, e, if full { List::Full } else { List::Frag });
    }

    /// Drop `n` references of cluster `idx`; `freed` says some were slots.
    #[inline]
    fn unref(&self, idx: u32, e: &DirEntry<W>, n: u64, freed: bool) {
        let old = e.state.fetch_sub(n, Ordering::AcqRel);
        if freed {
            self.room_made();
        }
        if refs(old) == n {
            self.try_teardown(idx, e);
        } else if freed && old & CACHED == 0 && list_of(old) != List::Nonfull {
            self.move_nonfull(idx, e);
        }
    }

    /// The first free into a full, fragmented or unlisted cluster moves it to
    /// `nonfull[order]`.
    fn move_nonfull(&self, idx: u32, e: &DirEntry<W>) {
        let mut l = self.lists.lock();
        let s = e.state.load(Ordering::Acquire);
        if s & (LIVE | DYING | CACHED) != LIVE || refs(s) == 0 || list_of(s) == List::Nonfull {
            return;
        }
        self.unlink(&mut l, idx, e);
        self.link(&mut l, idx, e, List::Nonfull);
    }

    fn try_teardown(&self, idx: u32, e: &DirEntry<W>) {
        let mut garbage = Garbage::default();
        let mut l = self.lists.lock();
        self.teardown_locked(&mut l, idx, e, &mut garbage);
        drop(l);
        self.collect(garbage);
    }

    fn teardown_locked(&self, l: &mut Lists, idx: u32, e: &DirEntry<W>, garbage: &mut Garbage<W>) {
        let s = e.state.load(Ordering::Acquire);
        if s & (LIVE | DYING | CACHED) != LIVE || refs(s) != 0 {
            return;
        }
        if e.state
            .compare_exchange(s, s | DYING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // somebody pinned it; their unref will try again
        }
        self.unlink(l, idx, e);
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.retire(l, idx, e, garbage);
    }

    /// A dead cluster (`DYING`, unlinked) waits for a grace period before
    /// its tables go (see "Reclamation"); a fixed space's cluster without
    /// optional tables has nothing to free and goes back at once. Finishes
    /// the retired clusters whose grace period has ended.
    fn retire(&self, l: &mut Lists, idx: u32, e: &DirEntry<W>, garbage: &mut Garbage<W>) {
        // A fixed space frees only the optional tables: swapped out here (a
        // late pin from before `DYING` may still install a record; one that
        // comes after this swap stays with the free cluster, which its next
        // incarnation keeps, and is retired with it). None: nothing waits.
        if self.policy.fixed {
            let ext = e.ext.swap(ptr::null_mut(), Ordering::AcqRel);
            if ext.is_null() {
                self.finish(l, idx, e, garbage);
                return;
            }
            e.retired_ext.store(ext, Ordering::Relaxed);
        }
        e.cookie
            .store(self.provider.grace_start(), Ordering::Relaxed);
        e.state.store(RETIRING, Ordering::Release);
        self.fifo_push(&mut l.retire, idx);
        self.poll_retired(l, garbage);
    }

    /// Finish the oldest retired clusters whose grace period has ended (as
    /// many as `garbage` holds). Under the list lock.
    fn poll_retired(&self, l: &mut Lists, garbage: &mut Garbage<W>) {
        while !garbage.full() && l.retire.head != 0 {
            let idx = l.retire.head - 1;
            let Some(e) = self.entry(idx) else { break };
            if !self.provider.grace_done(e.cookie.load(Ordering::Relaxed)) {
                break;
            }
            if self.fifo_pop(&mut l.retire).is_none() {
                break;
            }
            self.finish(l, idx, e, garbage);
            // A cluster back in the free FIFO is room (see "Full spaces").
            self.room_made();
        }
    }

    /// Take the oldest retired cluster back before its grace period ends, if
    /// it has no optional tables (those could hold the last incarnation's
    /// memcg ids; they wait). It keeps its slot table, all zero but for
    /// words hostile safe code set in free slots (counted as held by the
    /// refill, as on any cluster).
    fn reuse_retired(&self, l: &mut Lists) -> Option<u32> {
        let idx = l.retire.head.checked_sub(1)?;
        let e = self.entry(idx)?;
        if self.policy.fixed || !e.ext.load(Ordering::Acquire).is_null() {
            return None;
        }
        self.fifo_pop(&mut l.retire)
    }

    /// A dead cluster nobody can reach any more (its grace period ended, or
    /// it was never published) goes back: its tables to `garbage` (virtual;
    /// a fixed space keeps its slot table) and its index to the free FIFO
    /// or the discard queue.
    fn finish(&self, l: &mut Lists, idx: u32, e: &DirEntry<W>, garbage: &mut Garbage<W>) {
        let (words, ext) = if self.policy.fixed {
            (
                None,
                NonNull::new(e.retired_ext.swap(ptr::null_mut(), Ordering::Relaxed)),
            )
        } else {
            (
                NonNull::new(e.words.swap(ptr::null_mut(), Ordering::AcqRel)),
                NonNull::new(e.ext.swap(ptr::null_mut(), Ordering::AcqRel)),
            )
        };
        garbage.push(words, ext);
        if self.policy.fixed && self.policy.discard {
            e.state.store(DISCARD, Ordering::Release);
            self.fifo_push(&mut l.discard, idx);
            return;
        }
        e.state.store(0, Ordering::Release);
        self.fifo_push(&mut l.free, idx);
    }

    /// (Discarding devices) take the next emptied cluster the host must
    /// discard: slots `c << cluster_shift .. (c + 1) << cluster_shift`. Call
    /// [`discard_done`](Self::discard_done) when the discard finished.
    pub fn take_discard(&self) -> Option<u32> {
        let mut l = self.lists.lock();
        let idx = self.fifo_pop(&mut l.discard)?;
        l.discarding += 1;
        Some(idx)
    }

    /// The host finished discarding cluster `c`; it becomes free.
    pub fn discard_done(&self, c: u32) -> Result<()> {
        let mut l = self.lists.lock();
        let e = self.entry(c).ok_or(Error::OutOfRange)?;
        let s = e.state.load(Ordering::Acquire);
        if s != DISCARD || l.discarding == 0 || e.next() != 0 || l.discard.tail == c + 1 {
            return Err(Error::WrongState);
        }
        l.discarding -= 1;
        e.state.store(0, Ordering::Release);
        self.fifo_push(&mut l.free, c);
        Ok(())
    }

    /// Give tables back to the provider (never under the list lock).
    fn collect(&self, g: Garbage<W>) {
        let n = self.csize();
        let count = g.n.min(GARBAGE);
        for w in g.words.iter().take(count).flatten() {
            // SAFETY: the table was unpublished from a dead cluster after its
            // grace period (or from one never published), so nobody holds a
            // reference into it.
            unsafe { free_table(&self.provider, *w, n) };
            self.mem_words
                .fetch_sub(self.table_bytes(), Ordering::Relaxed);
        }
        for &x in g.ext.iter().take(count).flatten() {
            // SAFETY: as above, the record and its tables are unreachable.
            let freed = unsafe { x.as_ref().free_tables(&self.provider, n) };
            let (cache, memcg) = split_ext_bytes(freed, n);
            self.mem_cache.fetch_sub(cache, Ordering::Relaxed);
            self.mem_memcg
                .fetch_sub(memcg + ClusterExt::record_bytes() as u64, Ordering::Relaxed);
            // SAFETY: as above.
            unsafe { free_table(&self.provider, x, 1) };
        }
    }

    /// Call `f(c)` for the index of every cluster that was live when looked
    /// at, outside every read-side section (`f` may sleep, and pin what it
    /// needs itself); clusters that go live or die meanwhile may or may not
    /// be seen. Skips absent directory pages whole.
    pub fn for_each_cluster_index(&self, mut f: impl FnMut(u32)) {
        let bump = self.lists.lock().bump;
        self.each_entry(bump, |idx, e| {
            if e.state.load(Ordering::Acquire) & (LIVE | DYING) == LIVE {
                f(idx);
            }
            true
        });
    }

    /// Visit every live cluster, pinned (`f` runs inside the pin's
    /// read-side section: it must not sleep).
    pub fn for_each_cluster(&self, mut f: impl FnMut(&Pin<'_, P, W>)) {
        let bump = self.lists.lock().bump;
        self.each_entry(bump, |idx, _| {
            if let Some(p) = self.pin_cluster(idx) {
                f(&p);
            }
            true
        });
    }

    /// The state of cluster `c` (for invariant checks; racy while others run).
    pub fn cluster_state(&self, c: u32) -> ClusterState {
        let Some(e) = self.entry(c) else {
            return ClusterState::Free;
        };
        let s = e.state.load(Ordering::Acquire);
        if s & DISCARD != 0 {
            return ClusterState::Discard;
        }
        if s & RETIRING != 0 {
            return ClusterState::Retiring;
        }
        if s & LIVE == 0 || s & DYING != 0 {
            return ClusterState::Free;
        }
        let list = list_of(s);
        ClusterState::Live {
            order: order_of(s),
            cached: s & CACHED != 0,
            nonfull: list == List::Nonfull,
            frag: list == List::Frag,
            full: list == List::Full,
        }
    }

    /// How many clusters each list holds.
    pub fn list_counts(&self) -> ListCounts {
        let l = self.lists.lock();
        let never = self.clusters - u64::from(l.bump);
        let [_, nonfull, frag, full] = l.counts.map(u64::from);
        let free = never + u64::from(l.free.len);
        let discard = u64::from(l.discard.len + l.discarding);
        let retiring = u64::from(l.retire.len);
        ListCounts {
            free,
            nonfull,
            frag,
            full,
            discard,
            retiring,
            other: self.clusters - free - discard - retiring - nonfull - frag - full,
        }
    }

    /// Memory held, by kind.
    pub fn memory(&self) -> SpaceMemory {
        SpaceMemory {
            directory: self.mem_dir.load(Ordering::Relaxed),
            percpu: (self.geo.cpus as usize * core::mem::size_of::<PerCpu>()) as u64,
            words: self.mem_words.load(Ordering::Relaxed),
            cache: self.mem_cache.load(Ordering::Relaxed),
            memcg: self.mem_memcg.load(Ordering::Relaxed),
            live_clusters: self.live.load(Ordering::Relaxed),
            retiring_clusters: u64::from(self.lists.lock().retire.len),
        }
    }
}

/// The cache-table share of bytes freed from an extension record (a cache table
/// is `8n` bytes, a memcg table `2n`).
fn split_ext_bytes(freed: usize, n: usize) -> (u64, u64) {
    let cache = if freed >= 8 * n { 8 * n } else { 0 };
    (cache as u64, (freed - cache) as u64)
}

/// A failed claim.
#[derive(Clone, Copy, Default)]
struct Miss {
    /// Words it had to keep allocated (whose references the caller keeps).
    kept: u64,
    /// Whether it set words it had claimed back to 0.
    undone: bool,
}

/// Claim `n` naturally aligned free words, scanning from `hint`; word `i` of
/// the run gets `init + i * step`. Returns the offset of the run, or what a
/// failed claim left behind.
#[inline]
fn claim<W: SlotWord>(
    words: &[W],
    hint: usize,
    n: usize,
    init: u64,
    step: u64,
) -> core::result::Result<usize, Miss> {
    // `len` and `n` are powers of two: masks, not divisions.
    let len = words.len();
    let mut miss = Miss::default();
    if len == 0 {
        return Err(miss);
    }
    let sh = n.trailing_zeros();
    let groups = len >> sh;
    let first = (hint & (len - 1)) >> sh;
    for g in 0..groups {
        let at = ((first + g) & (groups - 1)) << sh;
        let Some(group) = words.get(at..at + n) else {
            break;
        };
        if group.iter().any(|w| w.get(Ordering::Relaxed) != 0) {
            continue;
        }
        let mut got = 0;
        let mut v = init;
        for w in group {
            if w.cas(0, v).is_err() {
                break;
            }
            got += 1;
            v += step;
        }
        if got == n {
            return Ok(at);
        }
        // Roll back what we took. A word somebody changed after we claimed it
        // (only a caller acting on a slot it does not own can) stays allocated
        // and keeps its reference, so the accounting stays exact.
        let mut kept = 0;
        let mut v = init;
        for w in group.iter().take(got) {
            if w.cas(v, 0).is_err() {
                kept += 1;
            } else {
                miss.undone = true;
            }
            v += step;
        }
        if kept > 0 {
            miss.kept = kept; // kept < n: the refs cover them
            return Err(miss);
        }
    }
    Err(miss)
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
        // SAFETY: as above; the arrays were made in `new` with these lengths.
        unsafe {
            free_table(&self.provider, self.top, self.top_len);
            free_table(&self.provider, self.percpu, self.geo.cpus as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashSet;
    use std::vec::Vec;

    use super::*;
    use crate::StdProvider;
    use crate::geometry::MAX_CLUSTER_SHIFT;

    const INIT: u64 = 0x20;

    /// Wait until every torn-down cluster's grace period has ended and its
    /// tables are back (other test threads' read-side sections delay it a
    /// little), failing after 10 s.
    fn settle<Q: Provider, W: SlotWord>(s: &SlotSpace<Q, W>) {
        let t = std::time::Instant::now();
        loop {
            s.poll_all();
            if s.memory().retiring_clusters == 0 {
                return;
            }
            assert!(t.elapsed().as_secs() < 10, "grace periods never ended");
            std::thread::yield_now();
        }
    }

    fn free<Q: Provider>(s: &SlotSpace<Q>, slot: u32, n: u32) {
        let pin = s.pin(slot).unwrap();
        let off = (slot - pin.base()) as usize;
        for w in &pin.words()[off..off + n as usize] {
            assert_eq!(w.swap(0, Ordering::AcqRel), INIT);
        }
        // SAFETY: the `n` words were allocated (checked) and we zeroed them.
        unsafe { pin.release(n) };
    }

    #[test]
    fn alloc_is_aligned_unique_and_skips_slot_zero() {
        let p = StdProvider::new();
        let s = SlotSpace::new(Geometry::tiny(3, 64, 2), &p, u64::MAX).unwrap();
        let mut seen = HashSet::new();
        for order in [0u32, 1, 2, 3, 0, 1] {
            let a = s.alloc(order, order % 2, Ctx::MaySleep, INIT).unwrap();
            assert_ne!(a, 0);
            assert_eq!(a % (1 << order), 0);
            for i in 0..(1 << order) {
                assert!(seen.insert(a + i), "slot {} handed out twice", a + i);
            }
        }
    }

    #[test]
    fn space_fills_then_reports_nospace_and_recovers() {
        let p = StdProvider::new();
        let s = SlotSpace::new(Geometry::tiny(2, 16, 2), &p, u64::MAX).unwrap();
        let mut got = Vec::new();
        loop {
            match s.alloc(0, got.len() as u32 % 2, Ctx::MaySleep, INIT) {
                Ok(a) => got.push(a),
                Err(e) => {
                    assert_eq!(e, Error::NoSpace);
                    break;
                }
            }
        }
        assert_eq!(got.len(), 15, "16 slots minus the reserved slot 0");
        let last = got.pop().unwrap();
        free(&s, last, 1);
        assert_eq!(s.alloc(0, 1, Ctx::MaySleep, INIT).unwrap(), last);
    }

    #[test]
    fn empty_clusters_are_returned_and_reused() {
        let p = StdProvider::new();
        let s = SlotSpace::new(Geometry::tiny(2, 64, 1), &p, u64::MAX).unwrap();
        let base = p.bytes_in_use();
        let a: Vec<u32> = (0..12)
            .map(|_| s.alloc(0, 0, Ctx::MaySleep, INIT).unwrap())
            .collect();
        assert!(s.memory().live_clusters >= 3);
        for &x in &a {
            free(&s, x, 1);
        }
        settle(&s);
        // Only cluster 0 (reserved slot) and the CPU's cached cluster stay.
        assert!(s.memory().live_clusters <= 2, "{:?}", s.memory());
        let again: Vec<u32> = (0..12)
            .map(|_| s.alloc(0, 0, Ctx::MaySleep, INIT).unwrap())
            .collect();
        let max = again.iter().max().unwrap();
        assert!(*max < 20, "indices reused, not bumped forever: {again:?}");
        for &x in &again {
            free(&s, x, 1);
        }
        drop(s);
        assert_eq!(p.bytes_in_use(), 0);
        let _ = base;
    }

    #[test]
    fn bad_arguments_are_errors() {
        let p = StdProvider::new();
        let s = SlotSpace::new(Geometry::tiny(2, 16, 2), &p, u64::MAX).unwrap();
        assert_eq!(s.alloc(3, 0, Ctx::MaySleep, INIT), Err(Error::BadOrder));
        assert_eq!(s.alloc(0, 2, Ctx::MaySleep, INIT), Err(Error::BadCpu));
        assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 0), Err(Error::BadConfig));
        assert!(matches!(s.pin(16), Err(Error::OutOfRange)));
        assert!(matches!(s.pin(5), Err(Error::NotAllocated)));
        assert!(SlotSpace::new(Geometry::tiny(0, 16, 1), &p, 1).is_err());
        assert!(
            SlotSpace::new(
                Geometry {
                    slots: (1 << 32) + 1,
                    ..Geometry::default()
                },
                &p,
                1
            )
            .is_err()
        );
    }

    #[test]
    fn out_of_memory_leaves_state_unchanged() {
        let p = StdProvider::new();
        let s = SlotSpace::new(Geometry::tiny(2, 64, 1), &p, u64::MAX).unwrap();
        let bytes = p.bytes_in_use();
        p.fail_after(Some(0));
        assert_eq!(s.alloc(0, 0, Ctx::MaySleep, INIT), Err(Error::NoMem));
        assert_eq!(p.bytes_in_use(), bytes);
        p.fail_after(None);
        p.again_on_nosleep(true);
        assert_eq!(s.alloc(0, 0, Ctx::NoSleep, INIT), Err(Error::Again));
        p.again_on_nosleep(false);
        let a = s.alloc(0, 0, Ctx::NoSleep, INIT).unwrap();
        assert_eq!(a, 1);
    }

    #[test]
    fn orders_do_not_share_clusters() {
        let p = StdProvider::new();
        let s = SlotSpace::new(Geometry::tiny(3, 64, 1), &p, u64::MAX).unwrap();
        let a = s.alloc(0, 0, Ctx::MaySleep, INIT).unwrap();
        let b = s.alloc(2, 0, Ctx::MaySleep, INIT).unwrap();
        assert_ne!(a >> 3, b >> 3);
        free(&s, b, 4);
        free(&s, a, 1);
    }

    #[test]
    fn threads_never_share_a_slot() {
        let p = StdProvider::new();
        let s = SlotSpace::new(Geometry::tiny(4, 4096, 2), &p, u64::MAX).unwrap();
        let rounds = if cfg!(miri) { 50 } else { 20_000 };
        std::thread::scope(|sc| {
            for t in 0..2u32 {
                let s = &s;
                sc.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..rounds {
                        if i % 3 == 2 {
                            if let Some(x) = held.pop() {
                                free(s, x, 1);
                            }
                        } else {
                            let a = s.alloc(0, t, Ctx::MaySleep, INIT + u64::from(t)).unwrap();
                            // Our value, not the other thread's: nobody else got it.
                            let pin = s.pin(a).unwrap();
                            assert_eq!(
                                pin.words()[(a - pin.base()) as usize].swap(INIT, Ordering::AcqRel),
                                INIT + u64::from(t)
                            );
                            drop(pin);
                            held.push(a);
                        }
                        if held.len() > 200 {
                            for x in held.drain(..) {
                                free(s, x, 1);
                            }
                        }
                    }
                    for x in held {
                        free(s, x, 1);
                    }
                });
            }
        });
        assert!(s.memory().live_clusters <= 3, "{:?}", s.memory());
    }

    /// A provider that never reuses memory while it lives: freed blocks are
    /// poisoned and kept (given back when it is dropped), so a test can ask
    /// whether a table it still sees went back. Its sections and grace
    /// periods are the std epochs.
    #[derive(Default)]
    struct Quarantine {
        inner: StdProvider,
        freed: std::sync::Mutex<HashSet<usize>>,
        kept: std::sync::Mutex<Vec<Kept>>,
    }

    /// A freed block kept until the provider goes: pointer, size, align.
    struct Kept(NonNull<u8>, usize, usize);
    // SAFETY: a plain block of memory that nobody else references.
    unsafe impl Send for Kept {}

    impl Drop for Quarantine {
        fn drop(&mut self) {
            for Kept(p, size, align) in self.kept.get_mut().unwrap().drain(..) {
                // SAFETY: each block came from `inner` with this layout and
                // was given back to us exactly once.
                unsafe { self.inner.free(p, size, align) };
            }
        }
    }

    // SAFETY: blocks come from `StdProvider` and are never handed out again
    // (freed ones are kept, poisoned, and leaked).
    unsafe impl Provider for Quarantine {
        fn alloc_zeroed(
            &self,
            size: usize,
            align: usize,
            ctx: Ctx,
        ) -> core::result::Result<NonNull<u8>, crate::MemError> {
            self.inner.alloc_zeroed(size, align, ctx)
        }
        unsafe fn free(&self, ptr: NonNull<u8>, size: usize, align: usize) {
            // SAFETY: the caller gives back a block of `size` bytes it no
            // longer uses; it is poisoned and not reused while we live.
            unsafe { ptr::write_bytes(ptr.as_ptr(), 0xa5, size) };
            self.freed.lock().unwrap().insert(ptr.as_ptr() as usize);
            self.kept.lock().unwrap().push(Kept(ptr, size, align));
        }
        fn read_lock(&self) {
            self.inner.read_lock();
        }
        unsafe fn read_unlock(&self) {
            // SAFETY: forwarded with the caller's pairing.
            unsafe { self.inner.read_unlock() };
        }
        fn grace_start(&self) -> u64 {
            self.inner.grace_start()
        }
        fn grace_done(&self, c: u64) -> bool {
            self.inner.grace_done(c)
        }
    }

    /// Review of issue 13 item 1, finding M1: a pin that left its section
    /// to allocate (`Pin::outside` with `MaySleep`) came back in a *new*
    /// section, which a cluster retired during the first one does not wait
    /// for, and the next poll freed the table the pin still showed. Now the
    /// pin takes a reference before leaving, and fails with `NotAllocated`
    /// (leaving nothing) when the cluster is already dead.
    #[test]
    fn a_pin_that_leaves_its_section_keeps_its_tables() {
        let p = Quarantine::default();
        let s = SlotSpace::new(Geometry::tiny(2, 64, 2), &p, u64::MAX).unwrap();
        let _ = s.alloc(0, 0, Ctx::MaySleep, INIT).unwrap();
        let a = s.alloc(0, 1, Ctx::MaySleep, INIT).unwrap();
        assert_eq!(a >> 2, 1);
        let freed = |t: usize| p.freed.lock().unwrap().contains(&t);
        // Live cluster: `outside` holds it; the table survives the trip.
        let pin = s.pin(a).unwrap();
        let table = pin.words().as_ptr() as usize;
        let got = pin.outside(Ctx::MaySleep, || {
            // Meanwhile the last slot goes and every cache lets go: the
            // reference keeps the cluster live.
            free(&s, a, 1);
            s.trim();
            s.cluster_state(1)
        });
        assert!(matches!(got, Ok(ClusterState::Live { .. })), "{got:?}");
        // Now the cache lets it go and it dies, inside the pin's new
        // section: its grace period waits for the pin.
        assert_eq!(s.trim(), 1);
        assert_eq!(s.cluster_state(1), ClusterState::Retiring);
        assert_eq!(
            pin.outside(Ctx::MaySleep, || ()),
            Err(Error::NotAllocated),
            "a dead cluster: nothing leaves the section"
        );
        for _ in 0..100 {
            s.poll_all();
            std::thread::yield_now();
        }
        assert!(!freed(table), "the table went back while the pin shows it");
        assert_eq!(pin.words()[(a & 3) as usize].load(Ordering::Relaxed), 0);
        drop(pin);
        settle(&s);
        assert!(freed(table));
    }

    /// Issue 12 item 1: `Pin::release` is `unsafe` (a safe `release(2)` let
    /// a second pin read a freed table: see its `compile_fail` doctest).
    /// Whatever safe code writes through `Pin::words`, a cluster's
    /// references never drop below its pins, its cache hold and its
    /// allocated slots; writes only make it keep more.
    #[test]
    fn safe_code_cannot_drop_a_clusters_references_below_what_it_holds() {
        let p = StdProvider::new();
        let s = SlotSpace::new(Geometry::tiny(2, 4, 1), &p, u64::MAX).unwrap();
        let refs_now = || refs(s.entry(0).unwrap().state.load(Ordering::Acquire));
        let a = s.alloc(0, 0, Ctx::MaySleep, INIT).unwrap();
        let b = s.alloc(0, 0, Ctx::MaySleep, INIT).unwrap();
        assert_eq!((a, b), (1, 2));
        assert_eq!(refs_now(), 4, "cache hold, slot 0, a, b");
        let p1 = s.pin(a).unwrap();
        // Behind the allocator's back: zero b's word, set the free word 3.
        p1.words()[2].store(0, Ordering::Release);
        p1.words()[3].store(INIT, Ordering::Release);
        drop(s.pin(b).unwrap());
        s.for_each_cluster(|_| {});
        let c = s.alloc(0, 0, Ctx::MaySleep, INIT).unwrap();
        assert_eq!(c, 2, "b's zeroed word is handed out again");
        assert_eq!(s.alloc(0, 0, Ctx::MaySleep, INIT), Err(Error::NoSpace));
        // Held: the cache, slot 0, a, c; plus b's reference, kept (a pin
        // holds no reference: it is a read-side section).
        assert_eq!(refs_now(), 5);
        free(&s, a, 1);
        free(&s, c, 1);
        assert_eq!(refs_now(), 3, "the cache, slot 0, b's leaked reference");
        assert!(matches!(s.cluster_state(0), ClusterState::Live { .. }));
        assert_eq!(s.memory().words, 4 * 8, "the table p1 reads is still there");
        assert_eq!(p1.words()[3].load(Ordering::Acquire), INIT);
        drop(p1);
        assert_eq!(refs_now(), 3);
    }

    type Dev<'a> = SlotSpace<&'a StdProvider, AtomicU32>;

    fn dev<'a>(p: &'a StdProvider, shift: u32, slots: u64, policy: Policy, bad: &[u64]) -> Dev<'a> {
        SlotSpace::with_policy(
            Geometry::tiny(shift, slots, 2),
            policy,
            p,
            u64::from(u32::MAX),
            bad,
        )
        .unwrap()
    }

    fn dev_free(s: &Dev<'_>, slot: u32, n: u32) {
        let pin = s.pin(slot).unwrap();
        let off = (slot - pin.base()) as usize;
        for w in &pin.words()[off..off + n as usize] {
            assert_ne!(w.swap(0, Ordering::AcqRel), 0);
        }
        // SAFETY: the `n` words were allocated (checked) and we zeroed them.
        unsafe { pin.release(n) };
    }

    const FIXED: Policy = Policy {
        fixed: true,
        discard: false,
        rotational: false,
    };

    #[test]
    fn fixed_space_makes_every_table_up_front_and_keeps_them() {
        let p = StdProvider::new();
        let s = dev(&p, 2, 32, FIXED, &[]);
        let made = p.bytes_in_use();
        assert_eq!(s.memory().words, 32 * 4, "4-byte reverse-map words");
        let a = s.alloc_with(1, 0, Ctx::MaySleep, 100, 1).unwrap();
        let pin = s.pin(a).unwrap();
        let off = (a - pin.base()) as usize;
        assert_eq!(
            (
                pin.words()[off].load(Ordering::Relaxed),
                pin.words()[off + 1].load(Ordering::Relaxed)
            ),
            (100, 101)
        );
        drop(pin);
        dev_free(&s, a, 2);
        assert_eq!(
            p.bytes_in_use(),
            made,
            "no table is freed or made after creation"
        );
        assert_eq!(
            s.alloc_with(0, 0, Ctx::MaySleep, 1 << 32, 0),
            Err(Error::PayloadTooWide)
        );
        assert_eq!(
            s.alloc_with(1, 0, Ctx::MaySleep, u64::from(u32::MAX), 1),
            Err(Error::PayloadTooWide)
        );
    }

    #[test]
    fn bad_slots_are_never_handed_out() {
        let p = StdProvider::new();
        let bad = [3, 4, 9, 31];
        let s = dev(&p, 2, 32, FIXED, &bad);
        let mut got = HashSet::new();
        while let Ok(a) = s.alloc_with(0, got.len() as u32 % 2, Ctx::MaySleep, 7, 0) {
            assert!(got.insert(a));
        }
        assert_eq!(got.len(), 32 - 1 - bad.len());
        for b in bad.iter().chain(&[0]) {
            assert!(!got.contains(&(*b as u32)));
        }
        assert!(
            SlotSpace::<_, AtomicU32>::with_policy(Geometry::tiny(2, 32, 1), FIXED, &p, 9, &[32])
                .is_err()
        );
        assert!(
            SlotSpace::<_, AtomicU64>::with_policy(
                Geometry::tiny(2, 32, 1),
                Policy::default(),
                &p,
                9,
                &[3]
            )
            .is_err()
        );
    }

    #[test]
    fn emptied_clusters_wait_for_discard() {
        let p = StdProvider::new();
        let policy = Policy {
            discard: true,
            ..FIXED
        };
        let s = dev(&p, 2, 16, policy, &[]);
        let all: Vec<u32> =
            core::iter::from_fn(|| s.alloc_with(0, 0, Ctx::MaySleep, 5, 0).ok()).collect();
        assert_eq!(all.len(), 15);
        assert_eq!(s.take_discard(), None);
        // Empty cluster 1 (slots 4..8); it is not cached (the CPU moved on).
        for a in 4..8 {
            dev_free(&s, a, 1);
        }
        assert_eq!(s.cluster_state(1), ClusterState::Discard);
        assert_eq!(s.list_counts().discard, 1);
        assert_eq!(
            s.alloc_with(0, 0, Ctx::MaySleep, 5, 0),
            Err(Error::DiscardPending)
        );
        assert_eq!(s.discard_done(1), Err(Error::WrongState), "not taken yet");
        assert_eq!(s.take_discard(), Some(1));
        assert_eq!(
            s.alloc_with(0, 0, Ctx::MaySleep, 5, 0),
            Err(Error::DiscardPending),
            "still discarding"
        );
        s.discard_done(1).unwrap();
        assert_eq!(s.discard_done(1), Err(Error::WrongState));
        assert_eq!(s.cluster_state(1), ClusterState::Free);
        let a = s.alloc_with(0, 0, Ctx::MaySleep, 5, 0).unwrap();
        assert_eq!(a >> 2, 1);
    }

    #[test]
    fn rotational_devices_allocate_in_device_order() {
        let p = StdProvider::new();
        let s = dev(
            &p,
            2,
            64,
            Policy {
                rotational: true,
                ..FIXED
            },
            &[],
        );
        let got: Vec<u32> = (0..20)
            .map(|i| s.alloc_with(0, i % 2, Ctx::MaySleep, 1, 0).unwrap())
            .collect();
        assert_eq!(got, (1..21).collect::<Vec<_>>());
    }

    #[test]
    fn order0_steals_from_higher_order_clusters_on_devices_only() {
        let p = StdProvider::new();
        let s = dev(&p, 2, 16, FIXED, &[]);
        // Every cluster but 0 taken by order-2 allocations, then half freed.
        let big: Vec<u32> =
            core::iter::from_fn(|| s.alloc_with(2, 1, Ctx::MaySleep, 1, 1).ok()).collect();
        assert_eq!(big.len(), 3);
        // Cluster 0 (slot 0 reserved) went to order 2 first and failed: frag.
        let small: Vec<u32> =
            core::iter::from_fn(|| s.alloc_with(0, 0, Ctx::MaySleep, 1, 0).ok()).collect();
        assert_eq!(
            small.len(),
            3,
            "order 0 takes the 3 free slots of cluster 0: {small:?}"
        );
        dev_free(&s, big[1], 4);
        let c = s.list_counts();
        assert_eq!(
            c.free + c.nonfull + c.frag + c.full + c.discard + c.other,
            4
        );
        // The virtual space never mixes orders in a cluster.
        let v = SlotSpace::new(Geometry::tiny(2, 8, 1), &p, u64::MAX).unwrap();
        assert_eq!(v.alloc(2, 0, Ctx::MaySleep, 1).unwrap(), 4);
        assert_eq!(v.alloc(0, 0, Ctx::MaySleep, 1), Err(Error::NoSpace));
    }

    #[test]
    fn full_and_frag_clusters_are_listed_and_move_to_nonfull_on_free() {
        let p = StdProvider::new();
        let s = dev(&p, 2, 32, FIXED, &[]);
        let a: Vec<u32> = (0..7)
            .map(|_| s.alloc_with(0, 0, Ctx::MaySleep, 1, 0).unwrap())
            .collect();
        // Cluster 0 (3 slots) filled and left for cluster 1: full.
        assert!(matches!(
            s.cluster_state(0),
            ClusterState::Live {
                full: true,
                cached: false,
                ..
            }
        ));
        assert_eq!(s.list_counts().full, 1);
        dev_free(&s, a[0], 1);
        assert!(matches!(
            s.cluster_state(0),
            ClusterState::Live { nonfull: true, .. }
        ));
        assert_eq!((s.list_counts().full, s.list_counts().nonfull), (0, 1));
        // Order 1 in a fresh cluster, then split by freeing one slot of a pair:
        let b = s.alloc_with(1, 1, Ctx::MaySleep, 1, 1).unwrap();
        let b2 = s.alloc_with(1, 1, Ctx::MaySleep, 1, 1).unwrap();
        assert_eq!(b >> 2, b2 >> 2);
        dev_free(&s, b, 1);
        let _ = s.alloc_with(1, 1, Ctx::MaySleep, 1, 1).unwrap(); // moves on: b's cluster is frag
        assert!(matches!(
            s.cluster_state(b >> 2),
            ClusterState::Live { frag: true, .. }
        ));
    }

    /// Issue 12 item 7: on a full space a failing allocation scanned every
    /// cluster, every time. After one full scan that found nothing, failing
    /// allocations of that order visit no cluster until a slot is freed;
    /// one free makes the next allocation succeed.
    #[test]
    fn failing_allocations_on_a_full_space_visit_no_cluster() {
        let p = StdProvider::new();
        let scanned = |s: &Dev<'_>| s.scanned.swap(0, Ordering::Relaxed);
        for fixed in [true, false] {
            let policy = if fixed { FIXED } else { Policy::default() };
            // 64 clusters of 4 slots on 2 CPUs, every slot taken.
            let s: Dev<'_> = SlotSpace::with_policy(
                Geometry::tiny(2, 256, 2),
                policy,
                &p,
                u64::from(u32::MAX),
                &[],
            )
            .unwrap();
            let mut got = Vec::new();
            while let Ok(a) = s.alloc_with(0, got.len() as u32 % 2, Ctx::MaySleep, 7, 0) {
                got.push(a);
            }
            assert_eq!(got.len(), 255);
            // The first failure of each order scans once...
            for order in 0..=2 {
                assert_eq!(
                    s.alloc_with(order, 0, Ctx::MaySleep, 7, 0),
                    Err(Error::NoSpace)
                );
            }
            assert!(scanned(&s) >= 64, "the first failures scan");
            // ...later ones are O(1), on every CPU number and order.
            for i in 0..300u32 {
                let (order, cpu) = (i % 3, i % 2);
                assert_eq!(
                    s.alloc_with(order, cpu, Ctx::MaySleep, 7, 0),
                    Err(Error::NoSpace)
                );
            }
            assert_eq!(scanned(&s), 0, "fixed {fixed}: failures on a full space");
            // One free: the next allocation gets that slot, on either CPU.
            for (i, &a) in got.iter().enumerate().step_by(37) {
                dev_free(&s, a, 1);
                assert_eq!(s.alloc_with(0, i as u32 % 2, Ctx::MaySleep, 7, 0), Ok(a));
                assert_eq!(s.alloc_with(0, 1, Ctx::MaySleep, 7, 0), Err(Error::NoSpace));
            }
            // A whole cluster freed serves every order that fits.
            let c = got[100] >> 2;
            for a in (c << 2)..(c << 2) + 4 {
                dev_free(&s, a, 1);
            }
            let at = s.alloc_with(2, 1, Ctx::MaySleep, 7, 1).unwrap();
            assert_eq!(at, c << 2);
            assert_eq!(s.alloc_with(1, 0, Ctx::MaySleep, 7, 1), Err(Error::NoSpace));
            // Emptied again, the order-2 cluster CPU 1 caches serves order 1.
            dev_free(&s, at, 4);
            assert_eq!(s.alloc_with(1, 0, Ctx::MaySleep, 7, 1), Ok(at));
            assert_eq!(s.alloc_with(1, 0, Ctx::MaySleep, 7, 1), Ok(at + 2));
            assert_eq!(s.alloc_with(1, 1, Ctx::MaySleep, 7, 1), Err(Error::NoSpace));
            scanned(&s);
            assert_eq!(s.alloc_with(1, 1, Ctx::MaySleep, 7, 1), Err(Error::NoSpace));
            assert_eq!(scanned(&s), 0);
        }
    }

    /// Issue 12 item 8: after filling a 1024-slot space with order 0 and
    /// freeing everything, an order-9 allocation failed with `NoSpace` on
    /// every CPU: the filling CPU's cache kept the emptied cluster.
    #[test]
    fn an_emptied_space_serves_every_order_on_every_cpu() {
        let p = StdProvider::new();
        // Under miri: the same with 8-slot clusters.
        let shift = if cfg!(miri) { 3 } else { 9 };
        let geo = Geometry {
            cluster_shift: shift,
            slots: 2 << shift,
            cpus: 4,
            ..Geometry::default()
        };
        let (all, big_at) = ((2u32 << shift) - 1, 1u32 << shift);
        let (fills, bigs): (&[u32], &[u32]) = if cfg!(miri) {
            (&[0, 4], &[1])
        } else {
            (&[0, 1, 2, 3, 4], &[0, 1, 2, 3])
        };
        for &fill in fills {
            for &big in bigs {
                let s = SlotSpace::new(geo, &p, u64::MAX).unwrap();
                // CPU `fill`, or (fill == 4) every CPU in turn.
                let cpu = |i: usize| if fill == 4 { i as u32 % 4 } else { fill };
                let mut got = Vec::new();
                while let Ok(a) = s.alloc(0, cpu(got.len()), Ctx::MaySleep, INIT) {
                    got.push(a);
                }
                assert_eq!(got.len() as u32, all);
                for &a in &got {
                    free(&s, a, 1);
                }
                let a = s.alloc(shift, big, Ctx::MaySleep, INIT);
                assert_eq!(a, Ok(big_at), "fill on {fill}, order {shift} on {big}");
                free(&s, big_at, big_at);
                // And order 0 again everywhere.
                for c in 0..4 {
                    let a = s.alloc(0, c, Ctx::MaySleep, INIT).unwrap();
                    free(&s, a, 1);
                }
                drop(s);
                assert_eq!(p.bytes_in_use(), 0);
            }
        }
        // A device: the same, and with discard the emptied cluster waits
        // for the host first.
        for discard in [false, true] {
            let policy = Policy { discard, ..FIXED };
            let s: Dev<'_> =
                SlotSpace::with_policy(geo, policy, &p, u64::from(u32::MAX), &[]).unwrap();
            let got: Vec<u32> =
                core::iter::from_fn(|| s.alloc_with(0, 0, Ctx::MaySleep, 5, 0).ok()).collect();
            assert_eq!(got.len() as u32, all);
            for &a in &got {
                dev_free(&s, a, 1);
            }
            if discard {
                assert_eq!(
                    s.alloc_with(shift, 3, Ctx::MaySleep, 5, 1),
                    Err(Error::DiscardPending)
                );
                let c = s.take_discard().unwrap();
                assert_eq!(c, 1);
                s.discard_done(c).unwrap();
            }
            assert_eq!(s.alloc_with(shift, 3, Ctx::MaySleep, 5, 1), Ok(big_at));
        }
    }

    /// Issue 12 item 8: memory after everything is freed. Each CPU number
    /// keeps at most one cluster per order cached (empty or not); `trim`
    /// (and any allocation that finds no other room) takes them back, which
    /// leaves the directory, the per-CPU array and cluster 0 (slot 0).
    #[test]
    fn memory_after_freeing_everything_is_bounded_and_trim_returns_it() {
        let p = StdProvider::new();
        let geo = Geometry {
            cpus: 4,
            slots: 1 << 20,
            ..Geometry::default()
        };
        let s = SlotSpace::new(geo, &p, u64::MAX).unwrap();
        let empty = s.memory();
        let mut got = Vec::new();
        for cpu in 0..4 {
            for order in 0..4 {
                for _ in 0..(if cfg!(miri) { 40 } else { 700 }) >> order {
                    got.push((
                        s.alloc(order, cpu, Ctx::MaySleep, INIT).unwrap(),
                        1 << order,
                    ));
                }
            }
        }
        // Cache and memcg tables in a cluster other than 0.
        let a = got.iter().find(|g| g.0 >> 9 != 0).unwrap().0;
        s.pin(a)
            .unwrap()
            .cache_table_or_create(Ctx::MaySleep)
            .unwrap();
        s.pin(a).unwrap().set_memcg(0, 3, Ctx::MaySleep).unwrap();
        for &(a, n) in &got {
            free(&s, a, n);
        }
        settle(&s);
        let m = s.memory();
        assert!(
            m.live_clusters <= 1 + 4 * 4,
            "cluster 0 and one per CPU number and order: {m:?}"
        );
        assert_eq!(m.words, m.live_clusters * 4096);
        assert_eq!(s.trim(), (m.live_clusters - 1) as u32);
        settle(&s);
        let m = s.memory();
        assert_eq!(m.live_clusters, 1, "{m:?}");
        assert_eq!((m.words, m.cache, m.memcg), (4096, 0, 0));
        assert_eq!(m.percpu, empty.percpu);
        assert_eq!(p.bytes_in_use(), m.total());
        assert_eq!(s.trim(), 0);
        // Everything still works afterwards.
        let a = s.alloc(3, 2, Ctx::MaySleep, INIT).unwrap();
        free(&s, a, 8);
    }

    /// Issue 12 item 17: 2- to 8-slot clusters were refused with 2^32 slots
    /// (a stale 2^28 cluster limit) though accepted with 2^20. The one rule
    /// left is the directory's top level (at most 2^16 entries).
    #[test]
    fn every_cluster_size_works_with_the_full_32_bit_space() {
        let p = StdProvider::new();
        let shifts: &[u32] = if cfg!(miri) {
            &[1, 3, 9]
        } else {
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, MAX_CLUSTER_SHIFT]
        };
        for &shift in shifts {
            let geo = Geometry {
                cluster_shift: shift,
                slots: 1 << 32,
                cpus: 1,
                ..Geometry::default()
            };
            assert_eq!(geo.validate(), Ok(()), "cluster_shift {shift}");
            let s = SlotSpace::new(geo, &p, u64::MAX).unwrap();
            // The last cluster works (and never hands out slot 2^32 - 1).
            s.lists.lock().bump = (geo.clusters() - 1) as u32;
            let mut got = Vec::new();
            while let Ok(a) = s.alloc(0, 0, Ctx::MaySleep, INIT) {
                assert_ne!(a, u32::MAX);
                assert!(u64::from(a) >= (geo.clusters() - 1) << shift);
                got.push(a);
            }
            assert_eq!(got.len() as u64, (1u64 << shift) - 1, "shift {shift}");
            for a in got {
                free(&s, a, 1);
            }
        }
        // The boundary of the top-level rule: 2^31 two-slot clusters need
        // 2^(31 - 7 - mid) top entries.
        let g = |mid| Geometry {
            cluster_shift: 1,
            slots: 1 << 32,
            cpus: 1,
            dir_leaf_shift: 7,
            dir_mid_shift: mid,
        };
        assert_eq!(g(8).validate(), Ok(()));
        assert_eq!(g(7).validate(), Err(Error::BadConfig));
        let t = |slots| Geometry::tiny(1, slots, 1).validate();
        assert_eq!(t(1 << 19), Ok(()), "2^18 clusters, 2^16 top entries of 4");
        assert_eq!(t((1 << 19) + 1), Err(Error::BadConfig));
    }

    #[test]
    fn the_last_slot_of_a_full_size_virtual_space_is_never_handed_out() {
        let p = StdProvider::new();
        let geo = Geometry {
            cluster_shift: 4,
            slots: 1 << 32,
            cpus: 1,
            ..Geometry::default()
        };
        let s = SlotSpace::new(geo, &p, u64::MAX).unwrap();
        // Jump straight to the last cluster.
        s.lists.lock().bump = (geo.clusters() - 1) as u32;
        let mut n = 0;
        while let Ok(a) = s.alloc(0, 0, Ctx::MaySleep, INIT) {
            assert_ne!(a, u32::MAX);
            n += 1;
        }
        assert_eq!(n, 15);
    }
}

/// loom model of a free racing a failing allocation's full scan (see "Full
/// spaces" in the module docs). Run with
/// `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg vswap_loom" cargo test -p vswap-alloc --features std --lib --release space::loom_tests`
/// (`LOOM_MAX_PREEMPTIONS` overrides the bound of 3).
#[cfg(all(test, vswap_loom))]
mod loom_tests {
    extern crate std;
    use std::sync::{Arc as StdArc, Mutex as StdMutex};

    use loom::sync::Arc;

    use super::*;
    use crate::StdProvider;

    /// A full space of two 2-slot clusters (slots 1, 2, 3 taken by CPU 0).
    /// One thread frees slot 2 (lock-free: its cluster is CPU 0's cached
    /// one) while CPU 1 allocates, finds nothing listed or free and scans.
    /// Either the scan finds slot 2, or the allocation fails and the order
    /// is not left marked exhausted: the next allocation gets slot 2.
    #[test]
    fn a_free_racing_a_full_scan_is_never_lost() {
        let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        for fixed in [false, true] {
            let seen = StdArc::new(StdMutex::new([false; 2]));
            let seen2 = seen.clone();
            let mut b = loom::model::Builder::new();
            b.preemption_bound = Some(bound);
            b.check(move || {
                let policy = Policy {
                    fixed,
                    ..Policy::default()
                };
                let s = Arc::new(
                    SlotSpace::<StdProvider, AtomicU64>::with_policy(
                        Geometry::tiny(1, 4, 2),
                        policy,
                        StdProvider::new(),
                        u64::MAX,
                        &[],
                    )
                    .unwrap(),
                );
                for want in 1..4 {
                    assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 5), Ok(want));
                }
                let s1 = s.clone();
                let t = loom::thread::spawn(move || {
                    let pin = s1.pin(2).unwrap();
                    assert_eq!(pin.words()[0].swap(0, Ordering::AcqRel), 5);
                    // SAFETY: slot 2 was allocated and we zeroed its word.
                    unsafe { pin.release(1) };
                });
                let a = s.alloc(0, 1, Ctx::MaySleep, 5);
                t.join().unwrap();
                let mut seen = seen2.lock().unwrap();
                match a {
                    Ok(x) => {
                        assert_eq!(x, 2);
                        seen[0] = true;
                    }
                    Err(e) => {
                        assert_eq!(e, Error::NoSpace);
                        assert_eq!(s.alloc(0, 1, Ctx::MaySleep, 5), Ok(2), "room lost");
                        seen[1] = true;
                    }
                }
            });
            let seen = *seen.lock().unwrap();
            assert_eq!(seen, [true, true], "fixed {fixed}: both outcomes reached");
        }
    }

    /// CPU 1 needs a whole cluster (order 1) and takes back the empty
    /// cluster CPU 0 caches, while CPU 0 allocates from that cluster: no
    /// slot goes out twice, every slot holds its allocator's value, the
    /// cluster is not torn down while CPU 0 claims in it, and everything
    /// comes back at the end.
    #[test]
    fn taking_back_a_cached_cluster_races_its_cpu() {
        let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let seen = StdArc::new(StdMutex::new([false; 2]));
        let seen2 = seen.clone();
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(bound);
        b.check(move || {
            let s = Arc::new(
                SlotSpace::new(Geometry::tiny(1, 4, 2), StdProvider::new(), u64::MAX).unwrap(),
            );
            // Slot 1 in cluster 0; cluster 1 cached by CPU 0, emptied.
            assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 5), Ok(1));
            assert_eq!(s.alloc(0, 0, Ctx::MaySleep, 5), Ok(2));
            let free = |s: &SlotSpace<StdProvider>, slot: u32, n: u32| {
                let pin = s.pin(slot).unwrap();
                let off = (slot - pin.base()) as usize;
                for w in &pin.words()[off..off + n as usize] {
                    assert_ne!(w.swap(0, Ordering::AcqRel), 0);
                }
                // SAFETY: the words were allocated (checked) and we zeroed them.
                unsafe { pin.release(n) };
            };
            free(&s, 2, 1);
            let s1 = s.clone();
            let t = loom::thread::spawn(move || s1.alloc(1, 1, Ctx::MaySleep, 6));
            let a = s.alloc(0, 0, Ctx::MaySleep, 5);
            let b = t.join().unwrap();
            let mut seen = seen2.lock().unwrap();
            match (a, b) {
                (Ok(a), Err(Error::NoSpace)) => {
                    assert!(a == 2 || a == 3, "{a}");
                    seen[0] = true;
                }
                (Err(Error::NoSpace), Ok(2)) => seen[1] = true,
                r => panic!("{r:?}"),
            }
            if let Ok(2) = b {
                let pin = s.pin(2).unwrap();
                assert_eq!(pin.words()[0].load(Ordering::Acquire), 6);
                assert_eq!(pin.words()[1].load(Ordering::Acquire), 6);
                drop(pin);
                free(&s, 2, 2);
            }
            if let Ok(a) = a {
                let pin = s.pin(a).unwrap();
                assert_eq!(pin.words()[(a & 1) as usize].load(Ordering::Acquire), 5);
                drop(pin);
                free(&s, a, 1);
            }
            free(&s, 1, 1);
            s.trim();
            assert_eq!(s.memory().live_clusters, 1, "only cluster 0 (slot 0)");
        });
        let seen = *seen.lock().unwrap();
        assert_eq!(seen, [true, true], "both outcomes reached");
    }

    /// Two threads share CPU number 0 (allowed: only speed may suffer) on a
    /// device with discard, two 2-slot clusters, nothing allocated yet but
    /// cluster 0 (slot 1) cached by CPU 0. A and B allocate order 0 on CPU
    /// 0: one claims slot 1, the other misses and makes cluster 1 live for
    /// the cache (fresh). C needs a whole cluster on CPU 1, finds none and
    /// looks for an emptied cached cluster to take back. Nothing is ever
    /// freed here, so no cluster may go to the discard queue: a fresh
    /// cluster must not be taken back before its first claim, whatever
    /// order the sharing threads store their cursor in (the review's
    /// interleaving: B's late cursor store cleared A's mark for cluster 1
    /// when the mark lived in the cursor).
    #[test]
    fn a_fresh_cluster_on_a_shared_cpu_number_is_not_taken_back() {
        let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(bound);
        b.check(move || {
            let policy = Policy {
                fixed: true,
                discard: true,
                rotational: false,
            };
            let s = Arc::new(
                SlotSpace::<StdProvider>::with_policy(
                    Geometry::tiny(1, 4, 2),
                    policy,
                    StdProvider::new(),
                    u64::MAX,
                    &[],
                )
                .unwrap(),
            );
            let (s1, s2) = (s.clone(), s.clone());
            let ta = loom::thread::spawn(move || s1.alloc(0, 0, Ctx::NoSleep, 5));
            let tc = loom::thread::spawn(move || s2.alloc(1, 1, Ctx::NoSleep, 7));
            let b = s.alloc(0, 0, Ctx::NoSleep, 6);
            let (a, c) = (ta.join().unwrap(), tc.join().unwrap());
            for r in [a, b, c] {
                assert!(
                    matches!(r, Ok(_) | Err(Error::NoSpace)),
                    "{a:?} {b:?} {c:?}"
                );
            }
            assert_eq!(
                s.take_discard(),
                None,
                "nothing was freed: {a:?} {b:?} {c:?}"
            );
        });
    }
}
