//! The directory: cluster index -> its record.
//!
//! # Layout
//! The space is cut into clusters of `2^cluster_shift` slots. A three-level
//! directory (top array in the space, middle and leaf pages made on demand and
//! kept until the space is dropped) maps a cluster index to its `DirEntry`: a
//! 64-byte record (one cache line) holding the cluster's lifetime word, a pointer to its slot
//! table (one page for 512 64-bit slots), list links and a pointer to its
//! optional tables (`ClusterExt`). An empty virtual map of 2^32 slots is the top
//! array (and the table index's top array, below).
//!
//! # The table index
//! The records are what the allocator's own paths use; the common access
//! path (every [`Pin`]: lookup, dup, put, store, lock, free) needs only the
//! slot table, and goes through a denser, shorter index: a top array of
//! pointers (made with the space) to leaves of [`TLEAF_LEN`] entries, each
//! a cluster's slot-table pointer and a pointer to its record (one 4 KiB
//! page per leaf, made with the directory pages of its first cluster and
//! kept until the space is dropped). A pin is then the read-side section
//! and two dependent loads (the leaf pointer, the table pointer) before the
//! slot word, where the records take three (top, middle, the record's table
//! pointer) and a lifetime-word check; the record comes in the same line.
//! Allocation finds its cached cluster's record and table the same way.
//! - The index entry of cluster `c` is non-null exactly while `c` is live
//!   (from the refill that makes it live, before any of its slots is handed
//!   out, to its teardown): `refill` publishes it (release) after the
//!   lifetime word; `teardown_locked` clears it after the `DYING` CAS and
//!   before the grace period starts. So a section that sees it non-null
//!   began before the grace period that precedes the table's freeing: the
//!   table outlives the section (see "Reclamation" in `lifetime`). A table
//!   kept through a reuse before the grace period is the same memory.
//! - The top array covers at most [`MAX_TLEAVES`] leaves (4 KiB; 2^17
//!   clusters, 2^26 slots of 512-slot clusters): refills hand out the lowest
//!   never-used cluster index first and reuse freed ones, so every cluster
//!   of a map with less than 256 GiB swapped out is in it. (An addressed
//!   space's clusters are the host's offsets: on a device larger than 2^26
//!   slots the kernel's swap allocator may use clusters beyond it from the
//!   start.) A cluster beyond it is pinned through its record (a
//!   lifetime-word check and the record's table pointer): slower, as
//!   correct.
//! - The record pointer is written once, when the cluster is first indexed
//!   (before its table, with release), and never cleared.
//! - Memory: 16 bytes per cluster (0.03 B per slot), in pages made on use.
//!
//! A slot word of 0 means "free". Allocation claims free words by CAS (0 -> the
//! caller's initial word); freeing is the owner of the slot setting the word
//! back to 0 and then dropping the slot's reference ([`Pin::release`], an
//! `unsafe fn`: a wrong count would let a cluster die with slots allocated).

use super::*;

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
    pub(super) state: AtomicU64,
    pub(super) words: AtomicPtr<W>,
    /// List links under the list lock: `prev + 1` in the low half, `next + 1` in
    /// the high half (0 = none). The free, discard and retire FIFOs are
    /// linked both ways too (an addressed space takes a retiring cluster
    /// out of the middle of its FIFO).
    pub(super) links: AtomicU64,
    pub(super) ext: AtomicPtr<ClusterExt>,
    /// (`RETIRING`, under the list lock) the host's grace-period cookie;
    /// while `LIVE`, a hint: the offset in the cluster of a slot freed last
    /// (stored by device frees before their `unref`, so never after a
    /// teardown that the unref allows; read by allocations, masked to the
    /// cluster, so any value is harmless).
    pub(super) cookie: AtomicU64,
    /// (Fixed spaces, `RETIRING`, under the list lock) the optional tables
    /// taken off the cluster at its teardown, freed when the grace period
    /// ends (the slot table stays).
    pub(super) retired_ext: AtomicPtr<ClusterExt>,
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
    pub(super) fn try_ref(&self, n: u64, order: Option<u32>) -> bool {
        self.try_ref_below(n, order, REFS_LIMIT - 1)
    }

    /// [`DirEntry::try_ref`], and only if the references would not exceed
    /// `limit`: a cached cluster holds its cache's hold plus one reference
    /// per slot in use, being claimed or being freed (a device's free drops
    /// it right after zeroing the word), so with `limit` = slots + 1 a
    /// cluster whose slots are all taken is refused without a scan of its
    /// words (issue 14: a failing allocation scanned the 512 words of its
    /// full cached cluster first). A short-lived reference can make a
    /// cluster with room look full: the allocation then takes the slow
    /// path, whose steal reads the references again with an RMW, and the
    /// reference's drop makes room (`unref`), as for the steal's own skip.
    #[inline]
    pub(super) fn try_ref_below(&self, n: u64, order: Option<u32>, limit: u64) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & (LIVE | DYING) != LIVE || refs(s) + n > limit {
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
    pub(super) fn update(&self, f: impl Fn(u64) -> u64) -> (u64, u64) {
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

    pub(super) fn next(&self) -> u32 {
        (self.links.load(Ordering::Relaxed) >> 32) as u32
    }
    pub(super) fn prev(&self) -> u32 {
        self.links.load(Ordering::Relaxed) as u32
    }
    pub(super) fn set_links(&self, prev: u32, next: u32) {
        self.links
            .store(u64::from(prev) | (u64::from(next) << 32), Ordering::Relaxed);
    }
}

pub(super) type Mid<W> = AtomicPtr<DirEntry<W>>;

/// Clusters per leaf of the table index (one 4 KiB page of entries).
pub(super) const TLEAF_LEN: usize = 256;
/// Most leaves the table index covers (its top array is then 4 KiB).
pub(super) const MAX_TLEAVES: usize = 512;

/// One cluster's entry in the table index: its slot table while it is live
/// (null otherwise), and its directory record (set when it is first
/// indexed; records are never freed), side by side so that one line gives
/// both.
pub(super) struct TEntry<W> {
    pub(super) words: AtomicPtr<W>,
    pub(super) rec: AtomicPtr<DirEntry<W>>,
}

// SAFETY: all-zero is "not live, no record yet": two null pointers.
unsafe impl<W> ZeroInit for TEntry<W> {
    fn zeroed() -> Self {
        Self {
            words: AtomicPtr::zeroed(),
            rec: AtomicPtr::zeroed(),
        }
    }
}

/// Length of the table index's top array for a space of `clusters`.
pub(super) fn tindex_len(clusters: u64) -> usize {
    (clusters.div_ceil(TLEAF_LEN as u64) as usize).min(MAX_TLEAVES)
}

/// Where the table index puts a cluster.
pub(super) enum Indexed<'a, W> {
    /// Beyond the index: reached through the records only.
    Beyond,
    /// In the index, but its leaf was never made (no cluster of that leaf
    /// was ever live).
    NoLeaf,
    /// Its entry.
    At(&'a TEntry<W>),
}

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
    pub(super) fn top(&self) -> &[AtomicPtr<Mid<W>>] {
        // SAFETY: the top array holds `top_len` initialised pointers for the
        // space's whole life.
        unsafe { core::slice::from_raw_parts(self.top.as_ptr(), self.top_len) }
    }

    /// The bitmap of the clusters on `list`'s lists (fixed spaces; `Frag` or
    /// `Nonfull`, of any order) and its summary words, borrowed for as long
    /// as the list lock's `Lists` is.
    pub(super) fn listed_bits<'l>(
        &'l self,
        _l: &'l mut Lists,
        list: List,
    ) -> Option<(&'l mut [u64], &'l mut [u64])> {
        let kind = match list {
            List::Frag => 0,
            List::Nonfull => 1,
            List::Full | List::None => return None,
        };
        let p = self.listed?;
        // SAFETY: the space made `listed_words + summary_words` words at `p`
        // and frees them only when dropped; they are reached only through
        // this function, whose caller holds the list lock (`&mut Lists`, for
        // the lifetime of the result), so these are the only references.
        let all = unsafe {
            core::slice::from_raw_parts_mut(p.as_ptr(), self.listed_words + self.summary_words)
        };
        let (bits, summary) = all.split_at_mut_checked(self.listed_words)?;
        let (per, sper) = (self.listed_words / 2, self.summary_words / 2);
        let bits = bits.get_mut(kind * per..(kind + 1) * per)?;
        let summary = summary.get_mut(kind * sper..(kind + 1) * sper)?;
        Some((bits, summary))
    }

    pub(super) fn tindex(&self) -> &[AtomicPtr<TEntry<W>>] {
        // SAFETY: the table index's top array holds `tindex_len` initialised
        // pointers for the space's whole life.
        unsafe { core::slice::from_raw_parts(self.tindex.as_ptr(), self.tindex_len) }
    }

    /// Cluster `idx`'s entry in the table index (see "The table index").
    #[inline(always)]
    pub(super) fn indexed(&self, idx: u32) -> Indexed<'_, W> {
        let i = idx as usize;
        let Some(top) = self.tindex().get(i / TLEAF_LEN) else {
            return Indexed::Beyond;
        };
        let leaf = top.load(Ordering::Acquire);
        if leaf.is_null() {
            return Indexed::NoLeaf;
        }
        // SAFETY: a published leaf holds `TLEAF_LEN` entries and is never
        // freed while the space lives; the index is reduced modulo its length.
        Indexed::At(unsafe { &*leaf.add(i % TLEAF_LEN) })
    }

    /// Publish cluster `idx` (record `e`) and its slot table in the table
    /// index (it became live). Under the list lock.
    pub(super) fn index_table(&self, idx: u32, e: &DirEntry<W>, words: *mut W) {
        if let Indexed::At(t) = self.indexed(idx) {
            t.rec.store(ptr::from_ref(e).cast_mut(), Ordering::Relaxed);
            // Release: a reader that sees the table sees the record too.
            t.words.store(words, Ordering::Release);
        }
    }

    /// Take cluster `idx` out of the table index (it is dying): before the
    /// grace period of its retirement starts. Under the list lock.
    pub(super) fn unindex_table(&self, idx: u32) {
        if let Indexed::At(t) = self.indexed(idx) {
            t.words.store(ptr::null_mut(), Ordering::Release);
        }
    }

    /// Whether cluster `idx`'s directory pages (its record's, and its
    /// table-index leaf if it is in the index) exist.
    pub(super) fn dir_ready(&self, idx: u32) -> bool {
        self.entry(idx).is_some() && !matches!(self.indexed(idx), Indexed::NoLeaf)
    }

    /// Top, middle and leaf position of cluster `idx`. Records sit in index
    /// order within a leaf; each is a whole cache line (`DirEntry` is 64-byte
    /// aligned), so neighbouring clusters never share a lifetime word's line.
    #[inline]
    pub(super) fn split(&self, idx: u32) -> (usize, usize, usize) {
        let l = self.geo.dir_leaf_shift;
        let m = self.geo.dir_mid_shift;
        let i = idx as usize;
        (i >> (l + m), (i >> l) & ((1 << m) - 1), i & ((1 << l) - 1))
    }

    /// The directory entry of cluster `idx`, if its pages exist.
    #[inline]
    pub(super) fn entry(&self, idx: u32) -> Option<&DirEntry<W>> {
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
    pub(super) fn each_entry(&self, limit: u32, mut f: impl FnMut(u32, &DirEntry<W>) -> bool) {
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
    pub(super) fn entry_or_create(&self, idx: u32, ctx: Ctx) -> Result<&DirEntry<W>> {
        let (t, m, _) = self.split(idx);
        let slot = self.top().get(t).ok_or(Error::OutOfRange)?;
        let mid = self.install(slot, 1 << self.geo.dir_mid_shift, ctx)?;
        // SAFETY: `mid` is a published middle page; `m` is in range.
        let leaf_slot = unsafe { &*mid.add(m) };
        self.install::<DirEntry<W>>(leaf_slot, 1 << self.geo.dir_leaf_shift, ctx)?;
        if let Some(slot) = self.tindex().get(idx as usize / TLEAF_LEN) {
            self.install::<TEntry<W>>(slot, TLEAF_LEN, ctx)?;
        }
        self.entry(idx).ok_or(Error::NoMem)
    }

    pub(super) fn install<T: ZeroInit>(
        &self,
        slot: &AtomicPtr<T>,
        n: usize,
        ctx: Ctx,
    ) -> Result<*mut T> {
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

    pub(super) fn words_of(&self, e: &DirEntry<W>) -> &[W] {
        self.table(e.words.load(Ordering::Acquire))
    }

    /// The slot table at `p` (empty if null), for a caller that holds a
    /// reference on the live cluster it belongs to (or owns a fixed space's
    /// table).
    #[inline]
    pub(super) fn table(&self, p: *mut W) -> &[W] {
        if p.is_null() {
            return &[];
        }
        // SAFETY: callers hold a reference on a LIVE cluster (or own a fixed
        // space's table), whose slot table of `csize` words was published
        // before LIVE was set and is freed only after the cluster dies.
        unsafe { core::slice::from_raw_parts(p, self.csize()) }
    }

    pub(super) fn table_bytes(&self) -> u64 {
        (self.csize() * core::mem::size_of::<W>()) as u64
    }

    pub(super) fn make_words(&self, e: &DirEntry<W>, ctx: Ctx) -> Result<()> {
        if !e.words.load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        let words = alloc_table::<W, P>(&self.provider, self.csize(), ctx)?;
        self.install_words(e, words);
        Ok(())
    }

    /// Publish a fresh slot table (from `alloc_table`) as cluster `e`'s, and
    /// count it. Its caller owns the cluster's table pointer (it is null).
    pub(super) fn install_words(&self, e: &DirEntry<W>, words: NonNull<W>) {
        e.words.store(words.as_ptr(), Ordering::Release);
        self.mem_words
            .fetch_add(self.table_bytes(), Ordering::Relaxed);
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
}
