//! The side table: swap counts above [`INLINE_COUNT_MAX`], and same-filled
//! values that fit neither inline form of the core word, live here.
//!
//! # Layout
//! Overflow is rare (a page mapped by more than 62 page tables), so the table
//! is made on demand and kept apart from the core words: a small open-addressing
//! hash table (linear probing, load at most 1/2, backward-shift deletion) of
//! *buckets*, one per cluster that has overflowed slots, keyed by cluster
//! index. A bucket points at its cluster's *count block*: one `u32` count per
//! slot of the cluster (the kernel's per-cluster extend table), so that finding
//! a slot's count is one hash probe sequence of expected length O(1) plus an
//! index, whatever the number of overflowed slots or clusters. Everything is
//! behind one slow-path lock; the lock-free fast paths never touch it.
//!
//! # Protocol
//! - A core word whose count field reads 63 ("continued") has its whole count
//!   in its cluster's block. Only holders of the lock move a count field to or
//!   from 63, and every reader of a block count holds the lock.
//! - The first time a slot's count goes above 62 (since its allocation), the
//!   slot *attaches* to its cluster's block (made, with the bucket array, if
//!   this is the cluster's first such slot) and its core word gets the
//!   [`SIDE`] flag in the same CAS that sets the field to 63. The flag stays
//!   until the slot is freed, also while the count is back inline (then the
//!   block's count for the slot is stale and ignored).
//! - A same-filled value that fits neither inline form (see [`crate::word`])
//!   is kept in its cluster's *same-value array* (one `u64` per slot, made
//!   on the cluster's first such value, kept with the bucket): the store
//!   attaches the slot (`SIDE`) if it is not attached, and the CAS that
//!   publishes the word's "in the table" marker and the write of the value
//!   happen under the lock, as does every read of a value (`lookup`, a
//!   store's compare of its expected value, the free's report).
//! - The freer of a slot with `SIDE` *detaches* it while it owns the slot
//!   (FREEING, see `map.rs`): the block's user count drops, and a block whose
//!   last user went is unlinked, as is the bucket array when no block is left.
//!   Both go back to the provider after the lock is dropped.
//!
//! Hysteresis: a count that crosses 62 back and forth keeps its slot attached,
//! so it costs no provider call after its first overflow; the block and
//! bucket array are made at most once per slot lifetime (allocation to free)
//! of the slots that overflow. Memory: the bucket array (24 B per bucket, at
//! least 16 buckets), `4 * cluster slots` bytes per cluster that has a slot
//! attached, and `8 * cluster slots` more for a cluster with a same-value
//! array; all counted in `MapStats::side_bytes`. Provider calls are never made under the lock: a caller that
//! needs memory drops the lock, allocates with its [`Ctx`] (so `Again` in a
//! no-sleep context) and tries again.
//!
//! [`INLINE_COUNT_MAX`]: crate::INLINE_COUNT_MAX
//! [`SIDE`]: crate::word

use core::ptr::NonNull;

use vswap_alloc::sync::{Mutex, MutexGuard};
use vswap_alloc::{Ctx, Provider, Result};

/// Buckets of the first bucket array.
const MIN_BUCKETS: usize = 16;
/// Alignment of every block and bucket array.
const ALIGN: usize = 8;

/// One cluster's entry. `key == 0` is an empty bucket (all zero: a zeroed
/// provider block is an array of empty buckets).
#[repr(C)]
#[derive(Clone, Copy)]
struct Bucket {
    /// Cluster index + 1.
    key: u32,
    /// Slots of the cluster attached (holding `SIDE`).
    users: u32,
    /// The cluster's count block (`n` counts); null in an empty bucket.
    counts: *mut u32,
    /// The cluster's same-filled values (`n` words), made on the first
    /// same-filled value of the cluster kept here; may be null.
    same: *mut u64,
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        key: 0,
        users: 0,
        counts: core::ptr::null_mut(),
        same: core::ptr::null_mut(),
    };
}

const _: () = assert!(core::mem::size_of::<Bucket>() == 24);
const BUCKET: usize = core::mem::size_of::<Bucket>();

/// The table's state, under the lock.
pub(crate) struct Side {
    /// `cap` buckets (a power of two), or none.
    buckets: Option<NonNull<Bucket>>,
    cap: usize,
    used: usize,
    /// Buckets with a same-value array.
    same_arrays: usize,
    /// Slots per cluster (counts per block).
    n: usize,
    /// Buckets looked at by `find` (for the O(1) regression test).
    #[cfg(test)]
    pub(crate) probes: u64,
}

// SAFETY: the blocks and bucket array are provider memory reached only under
// the side lock.
unsafe impl Send for Side {}

/// The overflow count table.
pub(crate) struct SideTable {
    inner: Mutex<Side>,
    /// Slots per cluster (as `Side::n`, readable without the lock).
    n: usize,
}

/// Memory a caller made without the lock, for [`Side::attach`]; what it did
/// not use goes back with [`SideTable::free_spares`].
#[derive(Default)]
pub(crate) struct Spares {
    block: Option<NonNull<u8>>,
    buckets: Option<(NonNull<u8>, usize)>,
    same: Option<NonNull<u8>>,
}

/// What [`Side::attach`] needs before it can succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// A count block of `n` counts.
    Block,
    /// A bucket array of this many buckets.
    Buckets(usize),
    /// A same-value array of `n` words.
    Same,
}

/// Memory unlinked under the lock, to free once it is dropped.
#[derive(Default)]
#[must_use]
pub(crate) struct Garbage {
    block: Option<NonNull<u32>>,
    buckets: Option<(NonNull<Bucket>, usize)>,
    same: Option<NonNull<u64>>,
}

impl SideTable {
    /// An empty table for clusters of `n` slots.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            inner: Mutex::new(Side {
                buckets: None,
                cap: 0,
                used: 0,
                same_arrays: 0,
                n,
                #[cfg(test)]
                probes: 0,
            }),
            n,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Side> {
        self.inner.lock()
    }

    /// Make what `need` asks for (without the lock held) into `spares`.
    pub(crate) fn make<P: Provider>(
        &self,
        p: &P,
        need: Need,
        ctx: Ctx,
        spares: &mut Spares,
    ) -> Result<()> {
        match need {
            Need::Block => {
                if spares.block.is_none() {
                    spares.block = Some(p.alloc_zeroed(block_bytes(self.n), ALIGN, ctx)?);
                }
            }
            Need::Buckets(cap) => {
                if let Some((b, c)) = spares.buckets.take() {
                    if c >= cap {
                        spares.buckets = Some((b, c));
                        return Ok(());
                    }
                    // SAFETY: an unused spare made by this function.
                    unsafe { p.free(b, c * BUCKET, ALIGN) };
                }
                spares.buckets = Some((p.alloc_zeroed(cap * BUCKET, ALIGN, ctx)?, cap));
            }
            Need::Same => {
                if spares.same.is_none() {
                    spares.same = Some(p.alloc_zeroed(same_bytes(self.n), ALIGN, ctx)?);
                }
            }
        }
        Ok(())
    }

    /// Give back spares nobody used.
    pub(crate) fn free_spares<P: Provider>(&self, p: &P, spares: Spares) {
        let n = self.n;
        if let Some(b) = spares.block {
            // SAFETY: made by `make` with this size and alignment, never linked.
            unsafe { p.free(b, block_bytes(n), ALIGN) };
        }
        if let Some((b, c)) = spares.buckets {
            // SAFETY: as above.
            unsafe { p.free(b, c * BUCKET, ALIGN) };
        }
        if let Some(b) = spares.same {
            // SAFETY: as above.
            unsafe { p.free(b, same_bytes(n), ALIGN) };
        }
    }

    /// Give back memory unlinked under the lock (call with the lock dropped).
    #[inline]
    pub(crate) fn free_garbage<P: Provider>(&self, p: &P, g: Garbage) {
        if g.block.is_none() && g.buckets.is_none() && g.same.is_none() {
            return;
        }
        let n = self.n;
        if let Some(b) = g.block {
            // SAFETY: unlinked under the lock; no bucket points at it any more.
            unsafe { p.free(b.cast(), block_bytes(n), ALIGN) };
        }
        if let Some((b, c)) = g.buckets {
            // SAFETY: unlinked under the lock; `c` buckets.
            unsafe { p.free(b.cast(), c * BUCKET, ALIGN) };
        }
        if let Some(b) = g.same {
            // SAFETY: unlinked under the lock with its bucket; `n` words.
            unsafe { p.free(b.cast(), same_bytes(n), ALIGN) };
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        let s = self.lock();
        let buckets = if s.buckets.is_some() {
            s.cap * BUCKET
        } else {
            0
        };
        (buckets + s.used * block_bytes(s.n) + s.same_arrays * same_bytes(s.n)) as u64
    }

    /// Free everything (map teardown).
    pub(crate) fn clear<P: Provider>(&self, p: &P) {
        let mut s = self.lock();
        let Some(arr) = s.buckets.take() else {
            return;
        };
        let (cap, n) = (s.cap, s.n);
        s.cap = 0;
        s.used = 0;
        s.same_arrays = 0;
        drop(s);
        for i in 0..cap {
            // SAFETY: the array (unlinked above, ours alone) holds `cap`
            // initialised buckets.
            let b = unsafe { *arr.as_ptr().add(i) };
            if let Some(c) = NonNull::new(b.counts) {
                // SAFETY: a linked block of `n` counts, unreachable now.
                unsafe { p.free(c.cast(), block_bytes(n), ALIGN) };
            }
            if let Some(v) = NonNull::new(b.same) {
                // SAFETY: a linked array of `n` words, unreachable now.
                unsafe { p.free(v.cast(), same_bytes(n), ALIGN) };
            }
        }
        // SAFETY: as above.
        unsafe { p.free(arr.cast(), cap * BUCKET, ALIGN) };
    }
}

const fn block_bytes(n: usize) -> usize {
    n * core::mem::size_of::<u32>()
}

const fn same_bytes(n: usize) -> usize {
    n * core::mem::size_of::<u64>()
}

/// The bucket a key hashes to (Fibonacci hashing over `cap`, a power of two).
#[inline]
fn home(key: u32, cap: usize) -> usize {
    (key.wrapping_mul(0x9e37_79b9) as usize) & (cap - 1)
}

impl Side {
    fn arr(&self) -> Option<&[Bucket]> {
        // SAFETY: a linked array holds `cap` initialised buckets; the lock
        // (`&self`) keeps it.
        self.buckets
            .map(|a| unsafe { core::slice::from_raw_parts(a.as_ptr(), self.cap) })
    }

    fn arr_mut(&mut self) -> Option<&mut [Bucket]> {
        // SAFETY: as in `arr`; `&mut self` gives exclusive access.
        self.buckets
            .map(|a| unsafe { core::slice::from_raw_parts_mut(a.as_ptr(), self.cap) })
    }

    /// The index of cluster `c`'s bucket.
    fn find(&mut self, c: u32) -> Option<usize> {
        let key = c.wrapping_add(1);
        let cap = self.cap;
        let mut i = home(key, cap.max(1));
        let mut probes = 0;
        let found = {
            let arr = self.arr()?;
            loop {
                probes += 1;
                match arr.get(i) {
                    Some(b) if b.key == key => break Some(i),
                    Some(b) if b.key != 0 => i = (i + 1) & (cap - 1),
                    _ => break None,
                }
                if probes > cap {
                    break None;
                }
            }
        };
        #[cfg(test)]
        {
            self.probes += probes as u64;
        }
        let _ = probes;
        found
    }

    fn counts(&self, at: usize) -> Option<&[u32]> {
        let c = NonNull::new(self.arr()?.get(at)?.counts)?;
        // SAFETY: a linked block holds `n` counts; the lock keeps it.
        Some(unsafe { core::slice::from_raw_parts(c.as_ptr(), self.n) })
    }

    fn counts_mut(&mut self, at: usize) -> Option<&mut [u32]> {
        let n = self.n;
        let c = NonNull::new(self.arr_mut()?.get(at)?.counts)?;
        // SAFETY: as in `counts`; exclusive under `&mut self`.
        Some(unsafe { core::slice::from_raw_parts_mut(c.as_ptr(), n) })
    }

    /// The count kept for slot `off` of cluster `c` (`None` if the cluster
    /// has no block).
    pub(crate) fn get(&mut self, c: u32, off: usize) -> Option<u32> {
        let at = self.find(c)?;
        self.counts(at)?.get(off).copied()
    }

    /// Set the count of an attached slot. `false` if it is not attached.
    pub(crate) fn set(&mut self, c: u32, off: usize, count: u32) -> bool {
        let Some(at) = self.find(c) else {
            return false;
        };
        match self.counts_mut(at).and_then(|t| t.get_mut(off)) {
            Some(x) => {
                *x = count;
                true
            }
            None => false,
        }
    }

    /// What `attach(c, ..)` would need that `spares` does not hold; with
    /// `same`, also what [`set_same`](Self::set_same) would need.
    pub(crate) fn needs(&mut self, c: u32, spares: &Spares, same: bool) -> Option<Need> {
        if let Some(at) = self.find(c) {
            let has = self
                .arr()
                .and_then(|a| a.get(at))
                .is_some_and(|b| !b.same.is_null());
            return (same && !has && spares.same.is_none()).then_some(Need::Same);
        }
        if spares.block.is_none() {
            return Some(Need::Block);
        }
        let want = self.cap_for(self.used + 1);
        let buckets = match spares.buckets {
            _ if want == self.cap && self.buckets.is_some() => None,
            Some((_, have)) if have >= want => None,
            _ => Some(Need::Buckets(want)),
        };
        buckets.or((same && spares.same.is_none()).then_some(Need::Same))
    }

    /// The same-filled value kept for slot `off` of cluster `c`.
    pub(crate) fn get_same(&mut self, c: u32, off: usize) -> Option<u64> {
        let at = self.find(c)?;
        let v = NonNull::new(self.arr()?.get(at)?.same)?;
        // SAFETY: a linked array holds `n` words; the lock keeps it.
        let t = unsafe { core::slice::from_raw_parts(v.as_ptr(), self.n) };
        t.get(off).copied()
    }

    /// Keep same-filled value `v` for attached slot `off` of cluster `c`,
    /// making the cluster's array from `spares` if it has none (call only
    /// after [`needs`](Self::needs) with `same` returned `None`). `false`
    /// (nothing changed) if that is missing.
    pub(crate) fn set_same(&mut self, c: u32, off: usize, v: u64, spares: &mut Spares) -> bool {
        let n = self.n;
        let Some(at) = self.find(c) else {
            return false;
        };
        let Some(b) = self.arr_mut().and_then(|a| a.get_mut(at)) else {
            return false;
        };
        let mut made = false;
        if b.same.is_null() {
            let Some(a) = spares.same.take() else {
                return false;
            };
            b.same = a.cast::<u64>().as_ptr();
            made = true;
        }
        let arr = b.same;
        if made {
            self.same_arrays += 1;
        }
        // SAFETY: a linked array of `n` words (zeroed when made); exclusive
        // under `&mut self`.
        let t = unsafe { core::slice::from_raw_parts_mut(arr, n) };
        match t.get_mut(off) {
            Some(x) => {
                *x = v;
                true
            }
            None => false,
        }
    }

    /// Buckets needed to hold `used` clusters at load <= 1/2.
    fn cap_for(&self, used: usize) -> usize {
        let mut cap = self.cap.max(MIN_BUCKETS);
        while used * 2 > cap {
            cap *= 2;
        }
        cap
    }

    /// Attach slot `off` of cluster `c` with `count`: the cluster's block
    /// gains a user (made from `spares` if the cluster has none; the bucket
    /// array grows from `spares` if needed). Call only after
    /// [`needs`](Self::needs) returned `None` for the same `spares`; returns
    /// `false` (nothing changed) otherwise. A replaced bucket array goes to
    /// `garbage`.
    pub(crate) fn attach(
        &mut self,
        c: u32,
        off: usize,
        count: u32,
        spares: &mut Spares,
        garbage: &mut Garbage,
    ) -> bool {
        if self.needs(c, spares, false).is_some() || off >= self.n {
            return false;
        }
        let at = match self.find(c) {
            Some(at) => at,
            None => {
                let want = self.cap_for(self.used + 1);
                if self.buckets.is_none() || want != self.cap {
                    let Some((arr, have)) = spares.buckets.take() else {
                        return false;
                    };
                    self.rehash(arr.cast(), have, garbage);
                }
                let Some(block) = spares.block.take() else {
                    return false;
                };
                let Some(at) = self.insert(c, block.cast()) else {
                    spares.block = Some(block);
                    return false;
                };
                at
            }
        };
        if let Some(b) = self.arr_mut().and_then(|a| a.get_mut(at)) {
            b.users += 1;
        }
        if let Some(x) = self.counts_mut(at).and_then(|t| t.get_mut(off)) {
            *x = count;
        }
        true
    }

    /// Move every bucket into the zeroed array `arr` of `cap` buckets; the
    /// old array goes to `garbage`.
    fn rehash(&mut self, arr: NonNull<Bucket>, cap: usize, garbage: &mut Garbage) {
        let old = self.buckets.take().map(|a| (a, self.cap));
        // SAFETY: a fresh zeroed block of `cap` buckets (all zero is an empty
        // bucket: a zero key and a null pointer), not shared yet.
        let new = unsafe { core::slice::from_raw_parts_mut(arr.as_ptr(), cap) };
        if let Some((o, ocap)) = old {
            // SAFETY: the old array held `ocap` initialised buckets and is
            // ours under the lock.
            let olds = unsafe { core::slice::from_raw_parts(o.as_ptr(), ocap) };
            for b in olds.iter().filter(|b| b.key != 0) {
                let mut i = home(b.key, cap);
                while new.get(i).is_some_and(|x| x.key != 0) {
                    i = (i + 1) & (cap - 1);
                }
                if let Some(x) = new.get_mut(i) {
                    *x = *b;
                }
            }
            garbage.buckets = Some((o, ocap));
        }
        self.buckets = Some(arr);
        self.cap = cap;
    }

    /// Put a new bucket for cluster `c` (room checked by the caller).
    fn insert(&mut self, c: u32, counts: NonNull<u32>) -> Option<usize> {
        let key = c.wrapping_add(1);
        let cap = self.cap;
        let arr = self.arr_mut()?;
        let mut i = home(key, cap);
        for _ in 0..cap {
            let x = arr.get_mut(i)?;
            if x.key == 0 {
                *x = Bucket {
                    key,
                    users: 0,
                    counts: counts.as_ptr(),
                    same: core::ptr::null_mut(),
                };
                self.used += 1;
                return Some(i);
            }
            i = (i + 1) & (cap - 1);
        }
        None
    }

    /// Detach one slot of cluster `c` (its freer, in FREEING): the block
    /// loses a user; a block left without users is unlinked into `garbage`,
    /// and so is the bucket array when no block is left.
    pub(crate) fn detach(&mut self, c: u32, garbage: &mut Garbage) {
        let Some(at) = self.find(c) else {
            return;
        };
        let cap = self.cap;
        let Some(arr) = self.arr_mut() else {
            return;
        };
        let Some(b) = arr.get_mut(at) else {
            return;
        };
        b.users = b.users.saturating_sub(1);
        if b.users > 0 {
            return;
        }
        let counts = b.counts;
        let same = b.same;
        // Backward-shift deletion: pull later members of the probe run into
        // the hole so that every bucket stays reachable from its home.
        let mut hole = at;
        let mut i = (at + 1) & (cap - 1);
        while let Some(next) = arr.get(i).copied().filter(|x| x.key != 0) {
            let h = home(next.key, cap);
            // `next` may move to `hole` if its home is not in (hole, i].
            let dist_home = i.wrapping_sub(h) & (cap - 1);
            let dist_hole = i.wrapping_sub(hole) & (cap - 1);
            if dist_home >= dist_hole {
                if let Some(x) = arr.get_mut(hole) {
                    *x = next;
                }
                hole = i;
            }
            i = (i + 1) & (cap - 1);
        }
        if let Some(x) = arr.get_mut(hole) {
            *x = Bucket::EMPTY;
        }
        self.used -= 1;
        garbage.block = NonNull::new(counts);
        garbage.same = NonNull::new(same);
        if !same.is_null() {
            self.same_arrays -= 1;
        }
        if self.used == 0 {
            garbage.buckets = self.buckets.take().map(|a| (a, cap));
            self.cap = 0;
        }
    }
}
