//! The lists of live clusters (nonfull, frag, full) and the FIFOs of
//! dead ones (free, discard, retire), all under the list lock; clusters are
//! linked through their directory records (`DirEntry::links`), never through
//! their tables. See "Per-CPU caches and lists" in `percpu` for when a
//! cluster moves between them.

use super::*;
use super::{dir::*, lifetime::*};

/// A FIFO of cluster indices linked both ways through `DirEntry::links`
/// (the retire FIFO loses members from its middle: `fifo_remove`).
#[derive(Clone, Copy, Default)]
pub(super) struct Fifo {
    pub(super) head: u32,
    pub(super) tail: u32,
    pub(super) len: u32,
}

/// State under the list lock. Heads hold `index + 1`; 0 = empty.
pub(super) struct Lists {
    pub(super) nonfull: [u32; MAX_ORDERS],
    pub(super) frag: [u32; MAX_ORDERS],
    /// Tails of the `frag` lists: fragmented clusters queue at the tail, so
    /// allocations that fall back to them try each in turn.
    pub(super) frag_tail: [u32; MAX_ORDERS],
    pub(super) full: u32,
    pub(super) free: Fifo,
    pub(super) discard: Fifo,
    /// Torn-down clusters waiting for a grace period, oldest first.
    pub(super) retire: Fifo,
    /// Clusters taken from `discard` by the host and not yet done.
    pub(super) discarding: u32,
    /// Clusters below `bump` have been used at least once.
    pub(super) bump: u32,
    pub(super) counts: [u32; 4],
}

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
    /// Pop the head of a `nonfull` or `frag` list of `order`, turning it into a
    /// cached cluster with one more reference.
    pub(super) fn pop_listed(&self, l: &mut Lists, list: List, order: u32) -> Option<u32> {
        let head = *self.head(l, list, order)?;
        let idx = head.checked_sub(1)?;
        let e = self.entry(idx)?;
        self.unlink(l, idx, e);
        // Listed clusters are LIVE (teardown needs the lock we hold).
        e.update(|s| with_list(s, List::None) | CACHED);
        e.state.fetch_add(1, Ordering::AcqRel);
        Some(idx)
    }

    pub(super) fn head<'l>(&self, l: &'l mut Lists, list: List, order: u32) -> Option<&'l mut u32> {
        match list {
            List::Nonfull => l.nonfull.get_mut(order as usize),
            List::Frag => l.frag.get_mut(order as usize),
            List::Full => Some(&mut l.full),
            List::None => None,
        }
    }

    /// Link a live, uncached, unlisted cluster at the head of `list` (at the
    /// tail of a `frag` list).
    pub(super) fn link(&self, l: &mut Lists, idx: u32, e: &DirEntry<W>, list: List) {
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
            self.mark_listed(l, idx, List::Frag, true);
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
        if list == List::Nonfull {
            self.mark_listed(l, idx, List::Nonfull, true);
        }
    }

    /// Take a listed cluster off its list (the list field becomes none).
    pub(super) fn unlink(&self, l: &mut Lists, idx: u32, e: &DirEntry<W>) {
        let s = e.state.load(Ordering::Acquire);
        let list = list_of(s);
        if list == List::None {
            return;
        }
        if matches!(list, List::Nonfull | List::Frag) {
            self.mark_listed(l, idx, list, false);
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

    pub(super) fn fifo_pop(&self, f: &mut Fifo) -> Option<u32> {
        let idx = f.head.checked_sub(1)?;
        let e = self.entry(idx)?;
        f.head = e.next();
        match f.head.checked_sub(1).and_then(|h| self.entry(h)) {
            Some(h) => h.set_links(0, h.next()),
            None => f.tail = 0,
        }
        f.len -= 1;
        e.set_links(0, 0);
        Some(idx)
    }

    /// Take cluster `idx` out of FIFO `f` wherever it is (the FIFOs are
    /// linked both ways, as the lists are). The caller knows it is in `f`.
    pub(super) fn fifo_remove(&self, f: &mut Fifo, idx: u32) {
        let Some(e) = self.entry(idx) else { return };
        let (prev, next) = (e.prev(), e.next());
        match prev.checked_sub(1).and_then(|p| self.entry(p)) {
            Some(p) => p.set_links(p.prev(), next),
            None => f.head = next,
        }
        match next.checked_sub(1).and_then(|n| self.entry(n)) {
            Some(n) => n.set_links(prev, n.next()),
            None => f.tail = prev,
        }
        f.len -= 1;
        e.set_links(0, 0);
    }

    pub(super) fn fifo_push(&self, f: &mut Fifo, idx: u32) {
        let Some(e) = self.entry(idx) else { return };
        e.set_links(f.tail, 0);
        match f.tail.checked_sub(1).and_then(|t| self.entry(t)) {
            Some(t) => t.set_links(t.prev(), idx + 1),
            None => f.head = idx + 1,
        }
        f.tail = idx + 1;
        f.len += 1;
    }

    /// Give an index back to the front of the free FIFO (a refill that failed).
    pub(super) fn fifo_push_front(&self, l: &mut Lists, idx: u32) {
        let Some(e) = self.entry(idx) else { return };
        e.set_links(0, l.free.head);
        match l.free.head.checked_sub(1).and_then(|h| self.entry(h)) {
            Some(h) => h.set_links(idx + 1, h.next()),
            None => l.free.tail = idx + 1,
        }
        l.free.head = idx + 1;
        l.free.len += 1;
    }

    /// A per-CPU cache lets go of cluster `idx`; file it by its fill.
    pub(super) fn drop_hold(&self, l: &mut Lists, idx: u32, garbage: &mut Garbage<W>) {
        let Some(e) = self.entry(idx) else { return };
        let (_, new) = e.update(|s| (s & !(CACHED | FRESH)) - 1);
        if refs(new) == 0 {
            self.teardown_locked(l, idx, e, garbage);
            return;
        }
        self.file(l, idx, e);
    }

    /// Link a live, uncached, unlisted cluster by its fill: full; nonfull if
    /// a naturally aligned free run of its order is left (a free since its
    /// cache last failed to claim, or a cluster let go of with room); else
    /// fragmented. So a fragmented cluster never has a run of its own order
    /// (until a free moves it to `nonfull`), and an order-0 one is never
    /// fragmented.
    pub(super) fn file(&self, l: &mut Lists, idx: u32, e: &DirEntry<W>) {
        let st = e.state.load(Ordering::Acquire);
        // A device's order 0: by its references, no scan (issue 14: at 98% use in the
        // steady state this scan of 512 words was half an allocation's
        // cost). Every word in use holds a reference from before its claim
        // to after its free, so fewer references than slots means a free
        // word. As many or more means full, or a short-lived reference
        // hides a free word: that reference's drop moves the cluster to
        // `nonfull` (`unref`; under the list lock, so it waits for this
        // filing to end). `PhysDevice`'s spaces only (`own_words`): their
        // words are reached only through it, which keeps that invariant; a
        // caller of any other space may set a free word through `Pin::words`
        // without a reference, and a cluster so blocked must be filed full
        // by its words, not refilled forever.
        if self.own_words && order_of(st) == 0 {
            let list = if refs(st) < self.csize() as u64 {
                List::Nonfull
            } else {
                List::Full
            };
            self.link(l, idx, e, list);
            return;
        }
        // One pass over the words, in runs of the cluster's order.
        let run = 1usize << order_of(st);
        let (mut any_free, mut run_free) = (false, false);
        for g in self.words_of(e).chunks(run) {
            let free = g.iter().filter(|w| w.get(Ordering::Relaxed) == 0).count();
            any_free |= free > 0;
            run_free |= free == g.len();
        }
        let list = match (any_free, run_free) {
            (false, _) => List::Full,
            (true, true) => List::Nonfull,
            (true, false) => List::Frag,
        };
        self.link(l, idx, e, list);
    }

    /// File a listed, uncached cluster again by its fill (a steal found
    /// nothing in it).
    pub(super) fn refile(&self, l: &mut Lists, idx: u32, e: &DirEntry<W>) {
        let s = e.state.load(Ordering::Acquire);
        if s & (LIVE | DYING | CACHED) != LIVE || list_of(s) == List::None {
            return;
        }
        self.unlink(l, idx, e);
        self.file(l, idx, e);
    }

    /// (Fixed spaces) set or clear cluster `idx`'s bit in the bitmap of
    /// `list` (nonfull or frag, of any order) and its word's summary bit.
    /// Under the list lock (`l`). Plain words and shifts: bitvec's proxy
    /// references (`BitRef`) are rejected by Miri's Stacked Borrows model.
    pub(super) fn mark_listed(&self, l: &mut Lists, idx: u32, list: List, on: bool) {
        let Some((bits, summary)) = self.listed_bits(l, list) else {
            return;
        };
        let (w, bit) = (idx as usize / 64, 1u64 << (idx % 64));
        let Some(word) = bits.get_mut(w) else {
            return;
        };
        if on {
            *word |= bit;
        } else {
            *word &= !bit;
        }
        let any = *word != 0;
        if let Some(s) = summary.get_mut(w / 64) {
            let sb = 1u64 << (w % 64);
            if any {
                *s |= sb;
            } else {
                *s &= !sb;
            }
        }
    }

    /// (Fixed spaces) the lowest-numbered cluster on a `list` list (nonfull
    /// or frag) of any order. Under the list lock (`l`): a scan of the
    /// summary words (one per 4,096 clusters), then one word.
    pub(super) fn first_listed(&self, l: &mut Lists, list: List) -> Option<u32> {
        self.next_listed(l, list, 0)
    }

    /// (Fixed spaces) the lowest-numbered cluster at or above `from` on a
    /// `list` list (nonfull or frag) of any order. Under the list lock
    /// (`l`): the word holding `from`, then a scan of the summary words.
    pub(super) fn next_listed(&self, l: &mut Lists, list: List, from: u32) -> Option<u32> {
        let (bits, summary) = self.listed_bits(l, list)?;
        let from = from as usize;
        let w = from / 64;
        let here = *bits.get(w)? & (u64::MAX << (from % 64));
        let c = if here != 0 {
            w * 64 + here.trailing_zeros() as usize
        } else {
            // The summary bits of the words above `w`.
            let w = w + 1;
            let mut si = w / 64;
            let mut s = *summary.get(si)? & (u64::MAX << (w % 64));
            while s == 0 {
                si += 1;
                s = *summary.get(si)?;
            }
            let w = si * 64 + s.trailing_zeros() as usize;
            let word = *bits.get(w)?;
            if word == 0 {
                return None;
            }
            w * 64 + word.trailing_zeros() as usize
        };
        if c as u64 >= self.clusters {
            return None;
        }
        u32::try_from(c).ok()
    }

    /// The first free into a full, fragmented or unlisted cluster moves it to
    /// `nonfull[order]`.
    pub(super) fn move_nonfull(&self, idx: u32, e: &DirEntry<W>) {
        let mut l = self.lists.lock();
        let s = e.state.load(Ordering::Acquire);
        if s & (LIVE | DYING | CACHED) != LIVE || refs(s) == 0 || list_of(s) == List::Nonfull {
            return;
        }
        self.unlink(&mut l, idx, e);
        self.link(&mut l, idx, e, List::Nonfull);
    }
}
