//! The general-purpose peers: `sharded-slab`, a `Mutex<Vec>` free list and
//! a spin-locked `hashbrown` map. Each stores a descriptor `D`: [`Word`]
//! (the core word alone, 8 bytes) or [`Full`] (core word, cache word and
//! memcg id: the information of v5's descriptor).
//!
//! None of them hands out naturally aligned runs of slots, so they take part
//! in the order-0 benchmarks only.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use spin::mutex::SpinMutex;
use vswap_core::Backend;

use crate::SwapSlots;
use crate::word::{CACHED, COUNT_ONE, INIT, META, count};

/// A peer's per-slot descriptor.
pub trait Desc: Default + Send + Sync + 'static {
    /// Bytes of information per slot (for the report).
    const NAME: &'static str;
    /// The descriptor of a fresh allocation.
    fn init() -> Self;
    /// Its core word.
    fn word(&self) -> &AtomicU64;
    /// Store the cache word and memcg id (no-op for [`Word`]).
    fn set_extra(&self, _cache: u64, _memcg: u16) {}
}

/// The core word alone.
#[derive(Debug, Default)]
pub struct Word(pub AtomicU64);

impl Desc for Word {
    const NAME: &'static str = "core word";
    fn init() -> Self {
        Self(AtomicU64::new(INIT))
    }
    #[inline]
    fn word(&self) -> &AtomicU64 {
        &self.0
    }
}

/// Core word, cache word and memcg id (24 bytes with padding).
#[derive(Debug, Default)]
pub struct Full {
    /// Backend, count, flags.
    pub word: AtomicU64,
    /// Folio cookie or shadow.
    pub cache: AtomicU64,
    /// memcg id.
    pub memcg: AtomicU16,
}

impl Desc for Full {
    const NAME: &'static str = "core + cache + memcg";
    fn init() -> Self {
        Self {
            word: AtomicU64::new(INIT),
            ..Self::default()
        }
    }
    #[inline]
    fn word(&self) -> &AtomicU64 {
        &self.word
    }
    fn set_extra(&self, cache: u64, memcg: u16) {
        self.cache.store(cache, Ordering::Relaxed);
        self.memcg.store(memcg, Ordering::Relaxed);
    }
}

/// Drop the cache flag; `true` if that killed the slot.
#[inline]
fn clear_cached(w: &AtomicU64) -> bool {
    let old = w.fetch_and(!CACHED, Ordering::AcqRel);
    count(old) == 0
}

/// Drop one count; `true` if that killed the slot.
#[inline]
fn put_word(w: &AtomicU64) -> bool {
    let old = w.fetch_sub(COUNT_ONE, Ordering::AcqRel);
    count(old) == 1 && old & CACHED == 0
}

/// Replace backend `from` by `to` by CAS.
#[inline]
fn store_word(w: &AtomicU64, from: Backend, to: Backend) -> bool {
    let (from, to) = (crate::word::backend(from), crate::word::backend(to));
    let mut cur = w.load(Ordering::Acquire);
    loop {
        if cur & !META != from {
            return false;
        }
        match w.compare_exchange_weak(cur, (cur & META) | to, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(x) => cur = x,
        }
    }
}

/// `sharded-slab`: a lock-free slab (insert returns a key, remove frees it;
/// reads go through a reference-counted guard).
pub struct Slab<D: Desc> {
    /// The slab.
    pub slab: sharded_slab::Slab<D>,
}

impl<D: Desc> Slab<D> {
    /// An empty slab.
    pub fn new() -> Self {
        Self {
            slab: sharded_slab::Slab::new(),
        }
    }

    /// Store the cache word and memcg id of a live slot.
    pub fn set_extra(&self, h: u64, cache: u64, memcg: u16) {
        if let Some(e) = self.slab.get(h as usize) {
            e.set_extra(cache, memcg);
        }
    }
}

impl<D: Desc> Default for Slab<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Desc> SwapSlots for Slab<D> {
    const NAME: &'static str = "sharded_slab";

    #[inline]
    fn alloc(&self, order: u32, _cpu: u32) -> Option<u64> {
        if order != 0 {
            return None;
        }
        self.slab.insert(D::init()).map(|k| k as u64)
    }

    #[inline]
    fn cache_clear(&self, h: u64, _n: u32, _cpu: u32) {
        let dead = self
            .slab
            .get(h as usize)
            .is_some_and(|e| clear_cached(e.word()));
        if dead {
            self.slab.remove(h as usize);
        }
    }

    #[inline]
    fn dup(&self, h: u64) {
        if let Some(e) = self.slab.get(h as usize) {
            e.word().fetch_add(COUNT_ONE, Ordering::AcqRel);
        }
    }

    #[inline]
    fn put(&self, h: u64) -> bool {
        let dead = self
            .slab
            .get(h as usize)
            .is_some_and(|e| put_word(e.word()));
        if dead {
            self.slab.remove(h as usize);
        }
        dead
    }

    #[inline]
    fn lookup(&self, h: u64) -> u64 {
        self.slab
            .get(h as usize)
            .map_or(u64::MAX, |e| e.word().load(Ordering::Acquire))
    }

    #[inline]
    fn store(&self, h: u64, from: Backend, to: Backend) -> bool {
        self.slab
            .get(h as usize)
            .is_some_and(|e| store_word(e.word(), from, to))
    }

    fn put_batch(&self, hs: &[u64]) {
        for &h in hs {
            self.put(h);
        }
    }
}

/// A `Mutex<Vec>` free list of slot numbers over a preallocated descriptor
/// table (descriptor updates are lock-free atomics; the lock guards the free
/// list only).
pub struct MutexVec<D: Desc> {
    free: Mutex<Vec<u32>>,
    table: Box<[D]>,
}

impl<D: Desc> MutexVec<D> {
    /// A table of `slots` slots (slot 0 reserved).
    pub fn new(slots: u32) -> Self {
        Self {
            free: Mutex::new((1..slots).rev().collect()),
            table: (0..slots).map(|_| D::default()).collect(),
        }
    }

    /// Store the cache word and memcg id of a live slot.
    pub fn set_extra(&self, h: u64, cache: u64, memcg: u16) {
        if let Some(d) = self.table.get(h as usize) {
            d.set_extra(cache, memcg);
        }
    }

    #[inline]
    fn release(&self, h: u64) {
        if let Ok(mut f) = self.free.lock() {
            f.push(h as u32);
        }
    }
}

impl<D: Desc> SwapSlots for MutexVec<D> {
    const NAME: &'static str = "mutex_vec";

    #[inline]
    fn alloc(&self, order: u32, _cpu: u32) -> Option<u64> {
        if order != 0 {
            return None;
        }
        let s = self.free.lock().ok()?.pop()?;
        self.table
            .get(s as usize)?
            .word()
            .store(INIT, Ordering::Release);
        Some(u64::from(s))
    }

    #[inline]
    fn cache_clear(&self, h: u64, _n: u32, _cpu: u32) {
        if self
            .table
            .get(h as usize)
            .is_some_and(|d| clear_cached(d.word()))
        {
            if let Some(d) = self.table.get(h as usize) {
                d.word().store(0, Ordering::Release);
            }
            self.release(h);
        }
    }

    #[inline]
    fn dup(&self, h: u64) {
        if let Some(d) = self.table.get(h as usize) {
            d.word().fetch_add(COUNT_ONE, Ordering::AcqRel);
        }
    }

    #[inline]
    fn put(&self, h: u64) -> bool {
        let dead = self
            .table
            .get(h as usize)
            .is_some_and(|d| put_word(d.word()));
        if dead {
            if let Some(d) = self.table.get(h as usize) {
                d.word().store(0, Ordering::Release);
            }
            self.release(h);
        }
        dead
    }

    #[inline]
    fn lookup(&self, h: u64) -> u64 {
        self.table
            .get(h as usize)
            .map_or(u64::MAX, |d| d.word().load(Ordering::Acquire))
    }

    #[inline]
    fn store(&self, h: u64, from: Backend, to: Backend) -> bool {
        self.table
            .get(h as usize)
            .is_some_and(|d| store_word(d.word(), from, to))
    }

    fn put_batch(&self, hs: &[u64]) {
        let mut dead = Vec::with_capacity(hs.len());
        for &h in hs {
            if let Some(d) = self.table.get(h as usize) {
                if put_word(d.word()) {
                    d.word().store(0, Ordering::Release);
                    dead.push(h as u32);
                }
            }
        }
        if let Ok(mut f) = self.free.lock() {
            f.extend_from_slice(&dead);
        }
    }
}

/// Under a lock: plain load and store (no atomic read-modify-write), as a
/// locked map would use a plain integer. `true` if the slot died.
#[inline]
fn locked_update(w: &AtomicU64, f: impl FnOnce(u64) -> u64) -> bool {
    let new = f(w.load(Ordering::Relaxed));
    w.store(new, Ordering::Relaxed);
    crate::word::dead(new)
}

struct HInner<D> {
    map: hashbrown::HashMap<u32, D>,
    free: Vec<u32>,
    next: u32,
}

/// A spin-locked `hashbrown` map from slot number to descriptor, with a free
/// list of numbers to reuse.
pub struct HashMapPeer<D: Desc> {
    inner: SpinMutex<HInner<D>>,
}

impl<D: Desc> HashMapPeer<D> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            inner: SpinMutex::new(HInner {
                map: hashbrown::HashMap::new(),
                free: Vec::new(),
                next: 0,
            }),
        }
    }

    /// Store the cache word and memcg id of a live slot.
    pub fn set_extra(&self, h: u64, cache: u64, memcg: u16) {
        if let Some(d) = self.inner.lock().map.get(&(h as u32)) {
            d.set_extra(cache, memcg);
        }
    }

    /// Under the lock: run `f` on the slot's word; remove it if `f` says it
    /// died.
    #[inline]
    fn update(&self, h: u64, f: impl FnOnce(&AtomicU64) -> bool) -> bool {
        let mut g = self.inner.lock();
        let dead = g.map.get(&(h as u32)).is_some_and(|d| f(d.word()));
        if dead {
            g.map.remove(&(h as u32));
            g.free.push(h as u32);
        }
        dead
    }
}

impl<D: Desc> Default for HashMapPeer<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Desc> SwapSlots for HashMapPeer<D> {
    const NAME: &'static str = "hashbrown";

    #[inline]
    fn alloc(&self, order: u32, _cpu: u32) -> Option<u64> {
        if order != 0 {
            return None;
        }
        let mut g = self.inner.lock();
        let s = match g.free.pop() {
            Some(s) => s,
            None => {
                g.next = g.next.checked_add(1)?;
                g.next
            }
        };
        g.map.insert(s, D::init());
        Some(u64::from(s))
    }

    #[inline]
    fn cache_clear(&self, h: u64, _n: u32, _cpu: u32) {
        self.update(h, |w| locked_update(w, |x| x & !CACHED));
    }

    #[inline]
    fn dup(&self, h: u64) {
        self.update(h, |w| {
            w.store(w.load(Ordering::Relaxed) + COUNT_ONE, Ordering::Relaxed);
            false
        });
    }

    #[inline]
    fn put(&self, h: u64) -> bool {
        self.update(h, |w| locked_update(w, |x| x - COUNT_ONE))
    }

    #[inline]
    fn lookup(&self, h: u64) -> u64 {
        self.inner
            .lock()
            .map
            .get(&(h as u32))
            .map_or(u64::MAX, |d| d.word().load(Ordering::Relaxed))
    }

    #[inline]
    fn store(&self, h: u64, from: Backend, to: Backend) -> bool {
        let g = self.inner.lock();
        g.map
            .get(&(h as u32))
            .is_some_and(|d| store_word(d.word(), from, to))
    }

    fn put_batch(&self, hs: &[u64]) {
        let mut g = self.inner.lock();
        for &h in hs {
            let dead = g
                .map
                .get(&(h as u32))
                .is_some_and(|d| locked_update(d.word(), |x| x - COUNT_ONE));
            if dead {
                g.map.remove(&(h as u32));
                g.free.push(h as u32);
            }
        }
    }
}
