//! What a space holds: memory by kind, list counts, cluster states.
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

use super::percpu::*;
use super::*;

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

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
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
        let discard = u64::from(l.discard.len + l.discarding);
        let retiring = u64::from(l.retire.len);
        // An addressed space has no free FIFO: every cluster neither live
        // nor retiring is free (`live` changes under the list lock).
        let free = if self.policy.addressed {
            self.clusters - self.live.load(Ordering::Relaxed) - retiring
        } else {
            never + u64::from(l.free.len)
        };
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
