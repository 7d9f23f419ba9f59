//! vswap side by side with its peers: one small trait ([`SwapSlots`]) that
//! vswap and four alternatives implement, the workloads the criterion suite
//! (`benches/`) and the report command (`src/bin/report.rs`) both time, and a
//! counting global allocator for memory figures.
//!
//! The implementations:
//! - [`vswap::Vswap`]: `vswap_core::VswapMap` (one 8-byte core word per slot,
//!   lock-free);
//! - [`v5::V5Map`]: a baseline that follows the published vswap v5 design:
//!   24-byte descriptors, 512-slot clusters each behind a spinlock, a per-CPU
//!   cluster cache, every operation (frees included) under the owning
//!   cluster's lock;
//! - [`peers::Slab`]: `sharded-slab`, a lock-free slab from crates.io;
//! - [`peers::MutexVec`]: a `Mutex<Vec>` free list over a preallocated
//!   descriptor table;
//! - [`peers::HashMapPeer`]: a spin-locked `hashbrown` map from slot to
//!   descriptor (what a quick userspace tool would write);
//! - [`swaptable::SwapTable`]: the kernel's current design (swap table, no
//!   virtual layer): one 8-byte atomic word per device slot, writers under
//!   the per-cluster lock, lockless reads, the kernel's per-CPU cluster
//!   allocation. It is a device allocator: every swap-out spends a slot.
//!
//! [`cycle`] holds the end-to-end swap cycle (swap-out, swap-in, free of one
//! page per backend) for vswap, the swap table and v5; [`thp`] a slot-level
//! port of the kernel's mTHP swap allocator stress test
//! (`thp_swap_allocator_test`) over the device allocators, with a first-fit
//! bitmap allocator ([`thp::FirstFit`]) beside them.
//!
//! Descriptor words of the peers use the same bit layout as vswap's core word
//! ([`word`]), so that every implementation stores the same information.

pub mod count;
pub mod cycle;
pub mod peers;
pub mod swaptable;
pub mod thp;
pub mod v5;
pub mod vswap;
pub mod work;

pub use vswap_core::Backend;

/// The operations the benchmarks compare. Handles are what the
/// implementation hands out (a slot number, or a slab key).
///
/// Semantics follow the kernel's life of a swap slot: [`alloc`](Self::alloc)
/// gives a slot with count 0 and a folio in the swap cache; the slot is freed
/// when its count is 0 and the cache reference is dropped.
pub trait SwapSlots: Sync {
    /// Short name used in benchmark ids and the report.
    const NAME: &'static str;
    /// Whether [`alloc`](Self::alloc) can hand out naturally aligned runs of
    /// `2^order` slots (mTHP) with consecutive handles.
    fn supports_order(order: u32) -> bool {
        order == 0
    }
    /// Allocate `2^order` slots on `cpu`: count 0, cached, no backend.
    /// `None` when full (or the order is not supported).
    fn alloc(&self, order: u32, cpu: u32) -> Option<u64>;
    /// Drop the swap-cache reference of `n` consecutive slots from `h`
    /// (`n > 1` only after an allocation of that many); frees the slots whose
    /// count is 0.
    fn cache_clear(&self, h: u64, n: u32, cpu: u32);
    /// Add one swap count.
    fn dup(&self, h: u64);
    /// Drop one swap count; `true` if the slot was freed.
    fn put(&self, h: u64) -> bool;
    /// Read the slot's descriptor word (backend, count, flags).
    fn lookup(&self, h: u64) -> u64;
    /// Replace backend `from` by `to` (the writeout transitions); `false`
    /// if the slot did not hold `from`.
    fn store(&self, h: u64, from: Backend, to: Backend) -> bool;
    /// Drop one swap count of every slot of `hs` (sorted), freeing the slots
    /// that reach 0; the batch free of process exit or `MADV_FREE`.
    fn put_batch(&self, hs: &[u64]);
}

/// The descriptor word layout the peers share with vswap's core word: the
/// backend's encoding (`Backend::encode`), the cache flag and the count.
pub mod word {
    use super::Backend;

    /// A folio is in the swap cache.
    pub const CACHED: u64 = 1 << 3;
    /// Count field shift (6 bits, as in vswap's core word).
    pub const COUNT_SHIFT: u32 = 8;
    /// One count.
    pub const COUNT_ONE: u64 = 1 << COUNT_SHIFT;
    /// Mask of the count field.
    pub const COUNT_MASK: u64 = 0x3f << COUNT_SHIFT;
    /// The bits of a word that are not the backend (flags and count).
    pub const META: u64 = ((1 << 14) - 1) & !0x7;

    /// The word of a fresh allocation: count 0, cached, no backend.
    pub const INIT: u64 = CACHED;

    /// Backend bits of a backend (0 for a backend vswap's word cannot hold).
    pub fn backend(b: Backend) -> u64 {
        b.encode().unwrap_or(0)
    }

    /// Count of a word.
    pub const fn count(w: u64) -> u64 {
        (w & COUNT_MASK) >> COUNT_SHIFT
    }

    /// Is a word (count 0, not cached) dead?
    pub const fn dead(w: u64) -> bool {
        count(w) == 0 && w & CACHED == 0
    }
}

/// SplitMix64: a small deterministic generator.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Shuffle `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Virtual slots of the v5 baseline's space in the timing benchmarks.
pub const V5_SLOTS: u64 = 1 << 22;
/// Slots of the swap-table baseline's device in the timing benchmarks.
pub const SWAP_TABLE_SLOTS: u64 = 1 << 22;
/// Slots of the `Mutex<Vec>` peer's table in the timing benchmarks.
pub const MUTEX_VEC_SLOTS: u32 = 1 << 22;

/// Expand `$body` once per implementation that supports `$order`, with
/// `$name` the implementation's name and `$m` a reference to a fresh
/// instance (order: vswap, v5, sharded_slab, mutex_vec, hashbrown,
/// swap_table; peers store the core word alone, v5 its 24-byte descriptor,
/// the swap table its 8-byte word).
#[macro_export]
macro_rules! for_each_impl {
    ($order:expr, |$name:ident, $m:ident| $body:block) => {{
        {
            type T = $crate::vswap::Vswap;
            if <T as $crate::SwapSlots>::supports_order($order) {
                let $name = <T as $crate::SwapSlots>::NAME;
                let $m = &<T>::new();
                $body
            }
        }
        {
            type T = $crate::v5::V5Map;
            if <T as $crate::SwapSlots>::supports_order($order) {
                let $name = <T as $crate::SwapSlots>::NAME;
                let $m = &<T>::new($crate::V5_SLOTS, 2);
                $body
            }
        }
        {
            type T = $crate::peers::Slab<$crate::peers::Word>;
            if <T as $crate::SwapSlots>::supports_order($order) {
                let $name = <T as $crate::SwapSlots>::NAME;
                let $m = &<T>::new();
                $body
            }
        }
        {
            type T = $crate::peers::MutexVec<$crate::peers::Word>;
            if <T as $crate::SwapSlots>::supports_order($order) {
                let $name = <T as $crate::SwapSlots>::NAME;
                let $m = &<T>::new($crate::MUTEX_VEC_SLOTS);
                $body
            }
        }
        {
            type T = $crate::peers::HashMapPeer<$crate::peers::Word>;
            if <T as $crate::SwapSlots>::supports_order($order) {
                let $name = <T as $crate::SwapSlots>::NAME;
                let $m = &<T>::new();
                $body
            }
        }
        {
            type T = $crate::swaptable::SwapTable;
            if <T as $crate::SwapSlots>::supports_order($order) {
                let $name = <T as $crate::SwapSlots>::NAME;
                let $m = &<T>::new($crate::SWAP_TABLE_SLOTS, 2);
                $body
            }
        }
    }};
}

/// Expand `$body` once per implementation with `$make` a closure making a
/// fresh instance sized for the batch free ([`work::BATCH_SLOTS`]).
#[macro_export]
macro_rules! for_each_batch_impl {
    (|$name:ident, $make:ident| $body:block) => {{
        {
            let $name = "vswap";
            let $make = || $crate::vswap::Vswap::new();
            $body
        }
        {
            let $name = "v5";
            let $make = || $crate::v5::V5Map::new(1 << 21, 2);
            $body
        }
        {
            let $name = "sharded_slab";
            let $make = || $crate::peers::Slab::<$crate::peers::Word>::new();
            $body
        }
        {
            let $name = "mutex_vec";
            let $make = || {
                $crate::peers::MutexVec::<$crate::peers::Word>::new(
                    $crate::work::BATCH_SLOTS as u32 + 1,
                )
            };
            $body
        }
        {
            let $name = "hashbrown";
            let $make = || $crate::peers::HashMapPeer::<$crate::peers::Word>::new();
            $body
        }
        {
            let $name = "swap_table";
            let $make = || $crate::swaptable::SwapTable::new(1 << 21, 2);
            $body
        }
    }};
}
