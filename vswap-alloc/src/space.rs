//! The cluster allocator: a space of slots, each a 64-bit word in a per-cluster
//! table, allocated lock-free by claiming words with a CAS from 0.
//!
//! # Layout
//! The space is cut into clusters of `2^cluster_shift` slots. A three-level
//! directory (top array in the space, middle and leaf pages made on demand and
//! kept until the space is dropped) maps a cluster index to its [`DirEntry`]: a
//! 32-byte record holding the cluster's lifetime word, a pointer to its slot
//! table (one page for 512 slots), list links and a pointer to its optional
//! tables ([`ClusterExt`]). Slot tables and optional tables exist only while the
//! cluster holds something; an empty map of 2^32 slots is the top array.
//!
//! A slot word of 0 means "free". Allocation claims free words by CAS (0 ->
//! the caller's initial word); freeing is the owner of the slot storing or
//! CAS-ing the word back to 0 and dropping the slot's reference.
//!
//! # The lifetime word (`DirEntry::state`)
//! ```text
//!  63      44 43   40 39  36  35     34     33    32   31            0
//! +----------+-------+------+------+------+-----+----+---------------+
//! | reserved | order | rsvd |LISTED|CACHED|DYING|LIVE|     refs      |
//! +----------+-------+------+------+------+-----+----+---------------+
//! ```
//! `refs` counts allocated slots + transient pins + 1 if a per-CPU cache holds
//! the cluster. States and transitions:
//! - `FREE` (0): no tables. Only the list lock moves it to `LIVE` (refill).
//! - `LIVE, refs > 0`: tables valid. A *pin* (`try_ref`) is a CAS that adds to
//!   `refs` only while `LIVE && !DYING` (and, for allocation, only if the order
//!   matches). Whoever holds a pin or owns an allocated slot may touch the tables.
//! - `LIVE, refs == 0`: the last `unref` saw `refs` reach 0 and calls
//!   `try_teardown`, which under the list lock CASes `LIVE, refs == 0` ->
//!   `DYING`. The CAS fails if anyone pinned in between (that pinner's own
//!   `unref` will try again). No slot can be allocated then: allocation needs a
//!   pin first.
//! - `DYING`: nobody can pin; the tearer unlinks the cluster, pushes the index on
//!   the free stack, stores `FREE`, and frees the tables after dropping the lock.
//!
//! Because a pin is a CAS on a word in a directory page that is never freed, a
//! lookup of any slot (allocated, free, or in a cluster being torn down) is
//! memory-safe, without RCU from the host.
//!
//! # Per-CPU caches and lists
//! Each CPU number has, per order, the index of its current cluster (holding one
//! reference and the `CACHED` flag) and a cursor hint. Allocation loads the
//! index, pins the cluster for the slots it wants, and claims words from the
//! cursor on: no lock. When the cluster is full the CPU *refills* under the list
//! lock: first from the `nonfull[order]` list, else a new cluster (tables
//! allocated with the lock dropped). A cluster that leaves a cache is not listed;
//! the first later free in it lists it (`LISTED`). Frees into a cached or listed
//! cluster take no lock. CPUs that share a number only slow each other down: the
//! cache slot is touched by loads, and by stores under the list lock.
//!
//! When no list cluster and no new index is left, allocation scans other CPUs'
//! clusters and then every live cluster of its order before returning
//! [`Error::NoSpace`].

use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use crate::ext::{ClusterExt, alloc_table, free_table};
use crate::geometry::{Geometry, MAX_ORDERS};
use crate::provider::{Ctx, Provider};
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, Mutex, Ordering, ZeroInit};
use crate::{Error, Result};

const REFS_MASK: u64 = 0xffff_ffff;
const REFS_LIMIT: u64 = 1 << 31;
const LIVE: u64 = 1 << 32;
const DYING: u64 = 1 << 33;
const CACHED: u64 = 1 << 34;
const LISTED: u64 = 1 << 35;
const ORDER_SHIFT: u32 = 40;
const ORDER_MASK: u64 = 0xf << ORDER_SHIFT;

#[inline]
const fn refs(s: u64) -> u64 {
    s & REFS_MASK
}
#[inline]
const fn order_of(s: u64) -> u32 {
    ((s & ORDER_MASK) >> ORDER_SHIFT) as u32
}

/// One cluster's directory record. Lives in a leaf page that is never freed
/// while the space exists.
pub struct DirEntry {
    state: AtomicU64,
    words: AtomicPtr<AtomicU64>,
    /// List links under the list lock: `prev + 1` in the low half, `next + 1` in
    /// the high half (0 = none). A free entry uses `next` for the free stack.
    links: AtomicU64,
    ext: AtomicPtr<ClusterExt>,
}

// SAFETY: all-zero is the FREE state with null pointers and no links.
unsafe impl ZeroInit for DirEntry {
    fn zeroed() -> Self {
        Self {
            state: AtomicU64::new(0),
            words: AtomicPtr::zeroed(),
            links: AtomicU64::new(0),
            ext: AtomicPtr::zeroed(),
        }
    }
}

impl DirEntry {
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
            match self
                .state
                .compare_exchange_weak(s, s + n, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
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
    /// Slot offset where the next scan starts (a hint).
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

/// State under the list lock.
struct Lists {
    nonfull: [u32; MAX_ORDERS],
    free_head: u32,
    bump: u32,
}

/// Tables to give back to the provider once the list lock is dropped.
#[derive(Default)]
struct Garbage {
    words: Option<NonNull<AtomicU64>>,
    ext: Option<NonNull<ClusterExt>>,
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
}

impl SpaceMemory {
    /// All bytes.
    pub fn total(&self) -> u64 {
        self.directory + self.percpu + self.words + self.cache + self.memcg
    }
}

type Mid = AtomicPtr<DirEntry>;

/// A space of 64-bit slot words, allocated per CPU and in naturally aligned
/// runs of `2^order` slots. See the module documentation for the protocol.
pub struct SlotSpace<P: Provider> {
    provider: P,
    geo: Geometry,
    /// `geo.slots()`, kept to avoid a division on every lookup.
    slots: u64,
    top: NonNull<AtomicPtr<Mid>>,
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
}

// SAFETY: all shared state is reached through atomics or the list lock; raw
// pointers point at provider memory owned by the space.
unsafe impl<P: Provider + Send> Send for SlotSpace<P> {}
// SAFETY: as above; `P: Provider` is `Sync`.
unsafe impl<P: Provider> Sync for SlotSpace<P> {}

/// A pinned cluster: its tables stay valid until the pin is released.
pub struct Pin<'a, P: Provider> {
    space: &'a SlotSpace<P>,
    entry: &'a DirEntry,
    idx: u32,
    words: &'a [AtomicU64],
}

impl<P: Provider> Pin<'_, P> {
    /// The cluster's index.
    pub fn cluster(&self) -> u32 {
        self.idx
    }
    /// First slot of the cluster.
    pub fn base(&self) -> u32 {
        self.idx << self.space.geo.cluster_shift
    }
    /// The cluster's slot words.
    pub fn words(&self) -> &[AtomicU64] {
        self.words
    }
    /// The cache word table, if made.
    pub fn cache_table(&self) -> Option<&[AtomicU64]> {
        self.ext().and_then(|e| e.cache(self.words.len()))
    }
    /// The cache word table, made on first use.
    pub fn cache_table_or_create(&self, ctx: Ctx) -> Result<&[AtomicU64]> {
        let e = self.ext_or_create(ctx)?;
        let (t, added) = e.cache_or_create(&self.space.provider, self.words.len(), ctx)?;
        self.space
            .mem_cache
            .fetch_add(added as u64, Ordering::Relaxed);
        Ok(t)
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
        let e = self.ext_or_create(ctx)?;
        let added = e.memcg_set(&self.space.provider, off, self.words.len(), id, ctx)?;
        self.space
            .mem_memcg
            .fetch_add(added as u64, Ordering::Relaxed);
        Ok(())
    }

    fn ext(&self) -> Option<&ClusterExt> {
        let p = self.entry.ext.load(Ordering::Acquire);
        // SAFETY: a published record lives as long as the cluster, which the pin
        // keeps alive.
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
    /// cluster whose words the caller has set back to 0.
    pub fn release(self, freed: u32) {
        let this = ManuallyDrop::new(self);
        this.space
            .unref(this.idx, this.entry, 1 + u64::from(freed), freed > 0);
    }
}

impl<P: Provider> Drop for Pin<'_, P> {
    fn drop(&mut self) {
        self.space.unref(self.idx, self.entry, 1, false);
    }
}

impl<P: Provider> SlotSpace<P> {
    /// A new, empty space. `reserved` is stored in slot 0, which is never
    /// handed out (a zero swap entry means "none").
    pub fn new(geo: Geometry, provider: P, reserved: u64) -> Result<Self> {
        geo.validate()?;
        if reserved == 0 {
            return Err(Error::BadConfig);
        }
        let top_len = geo.top_len();
        let top = alloc_table::<AtomicPtr<Mid>, P>(&provider, top_len, Ctx::MaySleep)?;
        let percpu = match alloc_table::<PerCpu, P>(&provider, geo.cpus as usize, Ctx::MaySleep) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: `top` is ours and unused.
                unsafe { free_table(&provider, top, top_len) };
                return Err(e);
            }
        };
        Ok(Self {
            provider,
            geo,
            slots: geo.slots(),
            top,
            top_len,
            percpu,
            lists: Mutex::new(Lists {
                nonfull: [0; MAX_ORDERS],
                free_head: 0,
                bump: 0,
            }),
            reserved,
            mem_dir: AtomicU64::new((top_len * core::mem::size_of::<AtomicPtr<Mid>>()) as u64),
            mem_words: AtomicU64::new(0),
            mem_cache: AtomicU64::new(0),
            mem_memcg: AtomicU64::new(0),
            live: AtomicU64::new(0),
        })
    }

    /// The space's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The memory provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    #[inline]
    fn csize(&self) -> usize {
        1 << self.geo.cluster_shift
    }

    fn top(&self) -> &[AtomicPtr<Mid>] {
        // SAFETY: the top array holds `top_len` initialised pointers for the
        // space's whole life.
        unsafe { core::slice::from_raw_parts(self.top.as_ptr(), self.top_len) }
    }

    fn percpu(&self, cpu: u32) -> Option<&PerCpu> {
        if cpu >= self.geo.cpus {
            return None;
        }
        // SAFETY: `cpu < cpus`, the array has `cpus` initialised entries.
        Some(unsafe { &*self.percpu.as_ptr().add(cpu as usize) })
    }

    /// Top, middle and leaf position of cluster `idx`. Within a leaf, even
    /// indices fill the first half and odd ones the second, so that clusters
    /// made one after the other (usually for different CPUs) do not share the
    /// cache line of their lifetime words.
    #[inline]
    fn split(&self, idx: u32) -> (usize, usize, usize) {
        let l = self.geo.dir_leaf_shift;
        let m = self.geo.dir_mid_shift;
        let i = idx as usize;
        let in_leaf = i & ((1 << l) - 1);
        let spread = ((in_leaf & 1) << (l - 1)) | (in_leaf >> 1);
        (i >> (l + m), (i >> l) & ((1 << m) - 1), spread)
    }

    /// The directory entry of cluster `idx`, if its pages exist.
    #[inline]
    fn entry(&self, idx: u32) -> Option<&DirEntry> {
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

    /// The directory entry of cluster `idx`, making missing directory pages.
    fn entry_or_create(&self, idx: u32, ctx: Ctx) -> Result<&DirEntry> {
        let (t, m, _) = self.split(idx);
        let slot = self.top().get(t).ok_or(Error::OutOfRange)?;
        let mid = self.install(slot, 1 << self.geo.dir_mid_shift, ctx)?;
        // SAFETY: `mid` is a published middle page; `m` is in range.
        let leaf_slot = unsafe { &*mid.add(m) };
        self.install::<DirEntry>(leaf_slot, 1 << self.geo.dir_leaf_shift, ctx)?;
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

    fn words_of(&self, e: &DirEntry) -> &[AtomicU64] {
        let p = e.words.load(Ordering::Acquire);
        // SAFETY: callers hold a reference on a LIVE cluster, whose slot table of
        // `csize` words was published before LIVE was set and is freed only after
        // the cluster dies.
        unsafe { core::slice::from_raw_parts(p, self.csize()) }
    }

    /// Pin the cluster that holds `slot`.
    ///
    /// Fails with [`Error::OutOfRange`] for a slot outside the space and
    /// [`Error::NotAllocated`] when the cluster holds no tables.
    #[inline]
    pub fn pin(&self, slot: u32) -> Result<Pin<'_, P>> {
        if u64::from(slot) >= self.slots {
            return Err(Error::OutOfRange);
        }
        let idx = slot >> self.geo.cluster_shift;
        self.pin_cluster(idx).ok_or(Error::NotAllocated)
    }

    fn pin_cluster(&self, idx: u32) -> Option<Pin<'_, P>> {
        let entry = self.entry(idx)?;
        if !entry.try_ref(1, None) {
            return None;
        }
        Some(Pin {
            space: self,
            entry,
            idx,
            words: self.words_of(entry),
        })
    }

    /// Allocate `2^order` naturally aligned slots on `cpu`, writing `init`
    /// (non-zero) into each slot word. Returns the first slot.
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
    pub fn alloc(&self, order: u32, cpu: u32, ctx: Ctx, init: u64) -> Result<u32> {
        if order > self.geo.cluster_shift {
            return Err(Error::BadOrder);
        }
        if init == 0 {
            return Err(Error::BadConfig);
        }
        let pc = self.percpu(cpu).ok_or(Error::BadCpu)?;
        let pc = pc.orders.get(order as usize).ok_or(Error::BadOrder)?;
        let n = 1u64 << order;
        loop {
            let cur = pc.cur.load(Ordering::Acquire);
            if cur != 0 {
                let idx = cur - 1;
                if let Some(e) = self.entry(idx) {
                    if e.try_ref(n, Some(order)) {
                        let hint = pc.cursor.load(Ordering::Relaxed) as usize;
                        match claim(self.words_of(e), hint, n as usize, init) {
                            Ok(at) => {
                                pc.cursor.store((at + n as usize) as u32, Ordering::Relaxed);
                                return Ok((idx << self.geo.cluster_shift) | at as u32);
                            }
                            // Full (for this order): give the references back.
                            Err(kept) => self.unref(idx, e, n - kept, false),
                        }
                    }
                }
            }
            match self.refill(pc, order, cur, ctx) {
                Ok(()) => {}
                Err(Error::NoSpace) => return self.steal(order, init),
                Err(e) => return Err(e),
            }
        }
    }

    /// Last resort before `NoSpace`: every live cluster of `order`.
    fn steal(&self, order: u32, init: u64) -> Result<u32> {
        let n = 1u64 << order;
        let bump = self.lists.lock().bump;
        for idx in 0..bump {
            let Some(e) = self.entry(idx) else { continue };
            if !e.try_ref(n, Some(order)) {
                continue;
            }
            match claim(self.words_of(e), 0, n as usize, init) {
                Ok(at) => return Ok((idx << self.geo.cluster_shift) | at as u32),
                Err(kept) => self.unref(idx, e, n - kept, false),
            }
        }
        Err(Error::NoSpace)
    }

    /// Give the CPU a cluster with room for `order`, replacing `seen`.
    fn refill(&self, pc: &CpuOrder, order: u32, seen: u32, ctx: Ctx) -> Result<()> {
        let mut garbage = Garbage::default();
        let mut l = self.lists.lock();
        if pc.cur.load(Ordering::Relaxed) != seen {
            return Ok(()); // another thread on this CPU number refilled
        }
        if let Some(idx) = self.pop_nonfull(&mut l, order) {
            self.install_cache(&mut l, pc, idx, &mut garbage);
            drop(l);
            self.collect(garbage);
            return Ok(());
        }
        // A new cluster: take an index whose directory pages exist (made with
        // the lock dropped), then make its slot table without the lock.
        let idx = loop {
            if l.free_head != 0 {
                let idx = l.free_head - 1;
                let e = self.entry(idx).ok_or(Error::NoMem)?;
                l.free_head = e.next();
                e.set_links(0, 0);
                break idx;
            }
            if u64::from(l.bump) >= self.geo.clusters() {
                return Err(Error::NoSpace);
            }
            let peek = l.bump;
            if self.entry(peek).is_some() {
                l.bump += 1;
                break peek;
            }
            drop(l);
            self.entry_or_create(peek, ctx)?;
            l = self.lists.lock();
            if pc.cur.load(Ordering::Relaxed) != seen {
                return Ok(());
            }
        };
        drop(l);
        let made = self.make_tables(idx, ctx);
        let mut l = self.lists.lock();
        let e = match made {
            Ok(e) => e,
            Err(err) => {
                self.push_free(&mut l, idx);
                return Err(err);
            }
        };
        if pc.cur.load(Ordering::Relaxed) != seen {
            // Lost to another refill on this CPU number: give the index back.
            // (`collect` frees the table and takes its bytes off `mem_words`.)
            garbage.words = NonNull::new(e.words.swap(ptr::null_mut(), Ordering::AcqRel));
            self.push_free(&mut l, idx);
            drop(l);
            self.collect(garbage);
            return Ok(());
        }
        let mut refs = 1; // the cache's hold
        if idx == 0 {
            if let Some(w) = self.words_of(e).first() {
                w.store(self.reserved, Ordering::Relaxed);
                refs += 1; // slot 0 is allocated forever
            }
        }
        e.state.store(
            LIVE | CACHED | (u64::from(order) << ORDER_SHIFT) | refs,
            Ordering::Release,
        );
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

    fn make_tables(&self, idx: u32, ctx: Ctx) -> Result<&DirEntry> {
        let e = self.entry(idx).ok_or(Error::NoMem)?;
        let words = alloc_table::<AtomicU64, P>(&self.provider, self.csize(), ctx)?;
        e.words.store(words.as_ptr(), Ordering::Release);
        self.mem_words
            .fetch_add((self.csize() * 8) as u64, Ordering::Relaxed);
        Ok(e)
    }

    fn install_cache(&self, l: &mut Lists, pc: &CpuOrder, idx: u32, garbage: &mut Garbage) {
        let old = pc.cur.swap(idx + 1, Ordering::AcqRel);
        pc.cursor.store(0, Ordering::Relaxed);
        if old != 0 && old != idx + 1 {
            self.drop_hold(l, old - 1, garbage);
        }
    }

    /// Pop the head of `nonfull[order]`, turning its `LISTED` into `CACHED` + 1 ref.
    fn pop_nonfull(&self, l: &mut Lists, order: u32) -> Option<u32> {
        let head = *l.nonfull.get(order as usize)?;
        if head == 0 {
            return None;
        }
        let idx = head - 1;
        let e = self.entry(idx)?;
        self.unlink(l, idx, e, order);
        let mut s = e.state.load(Ordering::Acquire);
        loop {
            // Listed clusters are LIVE with slots (teardown needs the lock we hold).
            let new = (s & !LISTED) | CACHED;
            match e
                .state
                .compare_exchange_weak(s, new + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(idx),
                Err(x) => s = x,
            }
        }
    }

    fn unlink(&self, l: &mut Lists, idx: u32, e: &DirEntry, order: u32) {
        let (prev, next) = (e.prev(), e.next());
        if prev == 0 {
            if let Some(h) = l.nonfull.get_mut(order as usize) {
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
        e.set_links(0, 0);
    }

    fn push_free(&self, l: &mut Lists, idx: u32) {
        if let Some(e) = self.entry(idx) {
            e.set_links(0, l.free_head);
            l.free_head = idx + 1;
        }
    }

    /// A per-CPU cache lets go of cluster `idx`.
    fn drop_hold(&self, l: &mut Lists, idx: u32, garbage: &mut Garbage) {
        let Some(e) = self.entry(idx) else { return };
        let mut s = e.state.load(Ordering::Acquire);
        loop {
            let new = (s & !CACHED) - 1;
            match e
                .state
                .compare_exchange_weak(s, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if refs(new) == 0 {
                        self.teardown_locked(l, idx, e, garbage);
                    }
                    return;
                }
                Err(x) => s = x,
            }
        }
    }

    /// Drop `n` references of cluster `idx`; `freed` says some were slots.
    #[inline]
    fn unref(&self, idx: u32, e: &DirEntry, n: u64, freed: bool) {
        let old = e.state.fetch_sub(n, Ordering::AcqRel);
        if refs(old) == n {
            self.try_teardown(idx, e);
        } else if freed && old & (CACHED | LISTED) == 0 {
            self.list_nonfull(idx, e);
        }
    }

    fn list_nonfull(&self, idx: u32, e: &DirEntry) {
        let mut l = self.lists.lock();
        let mut s = e.state.load(Ordering::Acquire);
        loop {
            if s & (LIVE | DYING | CACHED | LISTED) != LIVE || refs(s) == 0 {
                return;
            }
            match e
                .state
                .compare_exchange_weak(s, s | LISTED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(x) => s = x,
            }
        }
        // The order field is 4 bits and every order fits MAX_ORDERS.
        let Some(head) = l.nonfull.get_mut(order_of(s) as usize) else {
            return;
        };
        e.set_links(0, *head);
        if let Some(h) = head.checked_sub(1).and_then(|h| self.entry(h)) {
            h.set_links(idx + 1, h.next());
        }
        *head = idx + 1;
    }

    fn try_teardown(&self, idx: u32, e: &DirEntry) {
        let mut garbage = Garbage::default();
        let mut l = self.lists.lock();
        self.teardown_locked(&mut l, idx, e, &mut garbage);
        drop(l);
        self.collect(garbage);
    }

    fn teardown_locked(&self, l: &mut Lists, idx: u32, e: &DirEntry, garbage: &mut Garbage) {
        let s = e.state.load(Ordering::Acquire);
        if s & (LIVE | DYING | CACHED) != LIVE || refs(s) != 0 {
            return;
        }
        if e.state
            .compare_exchange(
                s,
                DYING | (s & (LISTED | ORDER_MASK)),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return; // somebody pinned it; their unref will try again
        }
        if s & LISTED != 0 {
            self.unlink(l, idx, e, order_of(s));
        }
        garbage.words = NonNull::new(e.words.swap(ptr::null_mut(), Ordering::AcqRel));
        garbage.ext = NonNull::new(e.ext.swap(ptr::null_mut(), Ordering::AcqRel));
        self.push_free(l, idx);
        e.state.store(0, Ordering::Release);
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    /// Give tables back to the provider (never under the list lock).
    fn collect(&self, g: Garbage) {
        let n = self.csize();
        if let Some(w) = g.words {
            // SAFETY: the table was unpublished from a dead (or never published)
            // cluster, so nobody holds a reference into it.
            unsafe { free_table(&self.provider, w, n) };
            self.mem_words.fetch_sub((n * 8) as u64, Ordering::Relaxed);
        }
        if let Some(x) = g.ext {
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

    /// Visit every live cluster, pinned.
    pub fn for_each_cluster(&self, mut f: impl FnMut(&Pin<'_, P>)) {
        let bump = self.lists.lock().bump;
        for idx in 0..bump {
            if let Some(p) = self.pin_cluster(idx) {
                f(&p);
            }
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
        }
    }
}

/// The cache-table share of bytes freed from an extension record (a cache table
/// is `8n` bytes, a memcg table `2n`).
fn split_ext_bytes(freed: usize, n: usize) -> (u64, u64) {
    let cache = if freed >= 8 * n { 8 * n } else { 0 };
    (cache as u64, (freed - cache) as u64)
}

/// Claim `n` naturally aligned free words, scanning from `hint`. Returns the
/// offset of the run, or `Err(kept)`: the number of words a failed claim had to
/// keep allocated (and whose references the caller must keep).
#[inline]
fn claim(
    words: &[AtomicU64],
    hint: usize,
    n: usize,
    init: u64,
) -> core::result::Result<usize, u64> {
    // `len` and `n` are powers of two: masks, not divisions.
    let len = words.len();
    let groups = len >> n.trailing_zeros();
    let first = (hint & (len - 1)) >> n.trailing_zeros();
    for g in 0..groups {
        let at = ((first + g) & (groups - 1)) << n.trailing_zeros();
        let Some(group) = words.get(at..at + n) else {
            break;
        };
        if group.iter().any(|w| w.load(Ordering::Relaxed) != 0) {
            continue;
        }
        let mut got = 0;
        for w in group {
            if w.compare_exchange(0, init, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                break;
            }
            got += 1;
        }
        if got == n {
            return Ok(at);
        }
        // Roll back what we took. A word somebody changed after we claimed it
        // (only a caller acting on a slot it does not own can) stays allocated
        // and keeps its reference, so the accounting stays exact.
        let mut kept = 0;
        for w in group.iter().take(got) {
            if w.compare_exchange(init, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                kept += 1;
            }
        }
        if kept > 0 {
            return Err(kept); // kept < n: the refs cover them
        }
    }
    Err(0)
}

impl<P: Provider> Drop for SlotSpace<P> {
    fn drop(&mut self) {
        let bump = self.lists.lock().bump;
        for idx in 0..bump {
            if let Some(e) = self.entry(idx) {
                let g = Garbage {
                    words: NonNull::new(e.words.swap(ptr::null_mut(), Ordering::AcqRel)),
                    ext: NonNull::new(e.ext.swap(ptr::null_mut(), Ordering::AcqRel)),
                };
                self.collect(g);
            }
        }
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

    const INIT: u64 = 0x20;

    fn free(s: &SlotSpace<&StdProvider>, slot: u32, n: u32) {
        let pin = s.pin(slot).unwrap();
        let off = (slot - pin.base()) as usize;
        for w in &pin.words()[off..off + n as usize] {
            assert_eq!(w.swap(0, Ordering::AcqRel), INIT);
        }
        pin.release(n);
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
}
