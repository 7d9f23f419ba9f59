//! Failing allocations on a full space.
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
//! announcement and clears it, and the scan's marking CAS fails. A free
//! into a listed (uncached) cluster moves it (`full` or `frag` to `nonfull`,
//! under the list lock) before it reads `room`; a scan announces under the
//! list lock too, so either the scan's lists see the move or the free sees
//! the announcement (issue 14: scans visit the caches and the lists, not
//! every cluster). So at
//! quiescence an allocation fails exactly when no fallback could serve it,
//! as before; only its cost changed: one failing scan per order between two
//! events that make room.

use super::*;

/// Bit of the first exhausted-order mark in `SlotSpace::room`.
pub(super) const ROOM_X: u32 = 16;
/// First bit of the generation in `SlotSpace::room`.
pub(super) const ROOM_GEN: u32 = 32;
/// Announcements and marks.
pub(super) const ROOM_FLAGS: u64 = (1 << ROOM_GEN) - 1;

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
    /// Whether a full scan for `order` found no room and no slot word has
    /// been set back to 0 since (see the `full` module).
    #[inline]
    pub(super) fn exhausted(&self, order: u32) -> bool {
        self.room.load(Ordering::Acquire) & (1 << (ROOM_X + order)) != 0
    }

    /// Start a full scan for `order`: announce it (frees from now on clear
    /// the announcement) and return the word as the announcement left it.
    pub(super) fn begin_scan(&self, order: u32) -> u64 {
        self.room.fetch_or(1 << order, Ordering::AcqRel) | (1 << order)
    }

    /// A full scan for `order` announced as `seen` found nothing: mark the
    /// order exhausted if no room was made since (same generation, and the
    /// announcement still stands).
    pub(super) fn end_scan(&self, order: u32, seen: u64) {
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
    pub(super) fn room_made(&self) {
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
}
