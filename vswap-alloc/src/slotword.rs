//! The per-slot word a [`SlotSpace`](crate::SlotSpace) allocates: 64 bits for
//! core words (virtual map, direct-mode devices), 32 bits for reverse maps.

use crate::sync::{AtomicU32, AtomicU64, Ordering, ZeroInit};

/// An atomic word per slot; 0 means "free". Values are passed as `u64`; a
/// 32-bit word keeps the low 32 bits (callers only store values that fit).
pub trait SlotWord: ZeroInit + Send + Sync + 'static {
    /// Bits in the word.
    const BITS: u32;
    /// Atomic load.
    fn get(&self, o: Ordering) -> u64;
    /// Atomic store.
    fn put(&self, v: u64, o: Ordering);
    /// Compare-and-swap with `AcqRel` on success and `Acquire` on failure;
    /// `Err(current)` if the word was not `cur`.
    fn cas(&self, cur: u64, new: u64) -> Result<u64, u64>;
}

impl SlotWord for AtomicU64 {
    const BITS: u32 = 64;
    #[inline]
    fn get(&self, o: Ordering) -> u64 {
        self.load(o)
    }
    #[inline]
    fn put(&self, v: u64, o: Ordering) {
        self.store(v, o)
    }
    #[inline]
    fn cas(&self, cur: u64, new: u64) -> Result<u64, u64> {
        self.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
    }
}

impl SlotWord for AtomicU32 {
    const BITS: u32 = 32;
    #[inline]
    fn get(&self, o: Ordering) -> u64 {
        u64::from(self.load(o))
    }
    #[inline]
    fn put(&self, v: u64, o: Ordering) {
        self.store(v as u32, o)
    }
    #[inline]
    fn cas(&self, cur: u64, new: u64) -> Result<u64, u64> {
        self.compare_exchange(cur as u32, new as u32, Ordering::AcqRel, Ordering::Acquire)
            .map(u64::from)
            .map_err(u64::from)
    }
}
