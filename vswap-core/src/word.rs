//! The 8-byte core word: one `AtomicU64` per virtual slot.
//!
//! ```text
//!  63                                            14 13       8  7    6    5     4      3     2   0
//! +------------------------------------------------+----------+----+----+-----+------+------+-----+
//! |                 payload (50 bits)              | count (6)|SIDE|HOLD|ALLOC|LOCKED|CACHED| tag |
//! +------------------------------------------------+----------+----+----+-----+------+------+-----+
//!
//! tag 0 none      payload 0
//! tag 1 zero      payload 0
//! tag 2 same      payload = the repeated 64-bit word, sign-extended from 50 bits
//! tag 3 zswap     payload = host handle, sign-extended from 50 bits
//! tag 4 phys      payload = device (low 6 bits) | offset << 6 (44 bits)
//! tag 5 same      any other repeated 64-bit word: payload bit 0 = 0: the word
//!                 has two equal 32-bit halves `h` (repeated bytes, 16- and
//!                 32-bit patterns), payload = h << 1; bit 0 = 1: the word is
//!                 kept in the cluster's side table (`SIDE` set; see side.rs)
//! tag 6           the *freeing* marker (`ALLOC | LOCKED | 6`)
//! tag 7           slot 0's reserved marker (never visible through the API)
//! count 0..=62    inline swap count; 63 = the count lives in the side table
//! SIDE            the slot is attached to its cluster's side-table block (its
//!                 count went above 62, or it was given a same-filled value
//!                 kept in the table, since its allocation); cleared by the free
//! ```
//! A word of 0 is a free slot. A slot is *live* while `count > 0 || CACHED`.
//! An allocated slot that is not live but `LOCKED` is a *zombie*: its last
//! reference went while someone held its lock, and the unlock frees it.
//! The *freeing* marker is transient: the thread that freed a slot owns it
//! while it reads what the free reports (backend, memcg id), clears the
//! slot's cache word and detaches it from the side table (`SIDE`), then
//! stores 0.
//! `HOLD` is a short hold a `cache_store` takes on a slot that is not cached,
//! so that the slot cannot be freed while its cache word is written: a last
//! reference dropped meanwhile leaves an allocated, dead, held slot, which
//! the holder frees when it drops the hold (like a zombie's unlock).
//!
//! Sign extension keeps the all-zeroes and all-ones patterns, small values and
//! kernel direct-map pointers (top 15 bits all ones) inside 50 bits. Every
//! 64-bit value is a valid same-filled value: those that fit neither inline
//! form take 8 bytes in an on-demand per-cluster table instead of a backend.

use vswap_alloc::{Error, Result};

pub(crate) const TAG_MASK: u64 = 0x7;
pub(crate) const CACHED: u64 = 1 << 3;
pub(crate) const LOCKED: u64 = 1 << 4;
pub(crate) const ALLOC: u64 = 1 << 5;
/// A `cache_store` holds the slot (it cannot be freed until the bit goes).
pub(crate) const HOLD: u64 = 1 << 6;
/// The slot is attached to the side table (see `side.rs`) until it is freed.
pub(crate) const SIDE: u64 = 1 << 7;
pub(crate) const COUNT_SHIFT: u32 = 8;
pub(crate) const COUNT_MASK: u64 = 0x3f << COUNT_SHIFT;
/// Largest count kept inline.
pub const INLINE_COUNT_MAX: u32 = 62;
/// Count field value meaning "continued in the side table".
pub(crate) const COUNT_CONT: u64 = 63;
pub(crate) const PAYLOAD_SHIFT: u32 = 14;
/// Bits of payload.
pub const PAYLOAD_BITS: u32 = 50;
/// Bits of a physical offset.
pub const PHYS_OFFSET_BITS: u32 = 44;
/// Largest device number.
pub const MAX_DEVICE: u8 = 63;

const TAG_NONE: u64 = 0;
const TAG_ZERO: u64 = 1;
const TAG_SAME: u64 = 2;
const TAG_ZSWAP: u64 = 3;
const TAG_PHYS: u64 = 4;
const TAG_SAME_EXT: u64 = 5;
/// Payload of a tag-5 word whose value is in the side table.
const SAME_IN_TABLE: u64 = 1;
const TAG_FREEING: u64 = 6;
const TAG_RESERVED: u64 = 7;

/// Word of a freshly allocated slot: no backend, count 0, in the swap cache.
pub(crate) const INIT: u64 = ALLOC | CACHED;
/// Slot 0's permanent word.
pub(crate) const RESERVED: u64 = ALLOC | LOCKED | TAG_RESERVED;
/// Marker a freer owns the slot with while it cleans up.
pub(crate) const FREEING: u64 = ALLOC | LOCKED | TAG_FREEING;

/// Is `w` a word the API may act on (allocated, not a marker)?
#[inline]
pub(crate) const fn is_slot(w: u64) -> bool {
    w & ALLOC != 0 && (w & TAG_MASK) < TAG_FREEING
}

/// Where a slot's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Not written anywhere: the data is only in the swap cache folio.
    None,
    /// The page was all zeroes.
    Zero,
    /// The page is one repeated 64-bit word (any value).
    Same(u64),
    /// A compressed object; the host's zswap handle.
    Zswap(u64),
    /// A slot on a swap device.
    Phys {
        /// Device number, `0..=63`.
        dev: u8,
        /// Slot offset on the device, below 2^44.
        off: u64,
    },
}

impl Backend {
    /// Does the backend own a resource that must be released (zswap object or
    /// device slot)?
    pub const fn has_resource(&self) -> bool {
        matches!(self, Backend::Zswap(_) | Backend::Phys { .. })
    }

    /// Encode into the tag and payload bits of a core word. A same-filled
    /// value that fits neither inline form encodes as the "in the side table"
    /// marker (the map keeps the value itself in the slot's cluster's side
    /// table); `PayloadTooWide` only for zswap handles and device locations.
    pub fn encode(&self) -> Result<u64> {
        let (tag, payload) = match *self {
            Backend::None => (TAG_NONE, 0),
            Backend::Zero => (TAG_ZERO, 0),
            Backend::Same(v) => same_payload(v),
            Backend::Zswap(h) => (TAG_ZSWAP, fit_signed(h)?),
            Backend::Phys { dev, off } => {
                if dev > MAX_DEVICE || off >> PHYS_OFFSET_BITS != 0 {
                    return Err(Error::PayloadTooWide);
                }
                (TAG_PHYS, u64::from(dev) | (off << 6))
            }
        };
        Ok(tag | (payload << PAYLOAD_SHIFT))
    }

    /// Decode from a core word (the reserved marker decodes as `None`). A
    /// same-filled value kept in the side table is not in the word: it
    /// decodes as `Same(0)`; callers that report it read the table
    /// ([`same_in_table`]).
    pub(crate) fn decode(w: u64) -> Backend {
        let p = w >> PAYLOAD_SHIFT;
        match w & TAG_MASK {
            TAG_ZERO => Backend::Zero,
            TAG_SAME => Backend::Same(sign_extend(p)),
            TAG_SAME_EXT if p & SAME_IN_TABLE == 0 => {
                let h = (p >> 1) & 0xffff_ffff;
                Backend::Same(h | (h << 32))
            }
            TAG_SAME_EXT => Backend::Same(0),
            TAG_ZSWAP => Backend::Zswap(sign_extend(p)),
            TAG_PHYS => Backend::Phys {
                dev: (p & 0x3f) as u8,
                off: p >> 6,
            },
            _ => Backend::None,
        }
    }

    /// The kind of backend, without its payload.
    pub const fn kind(&self) -> BackendKind {
        match self {
            Backend::None => BackendKind::None,
            Backend::Zero => BackendKind::Zero,
            Backend::Same(_) => BackendKind::Same,
            Backend::Zswap(_) => BackendKind::Zswap,
            Backend::Phys { .. } => BackendKind::Phys,
        }
    }
}

/// The kind of a [`Backend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    /// [`Backend::None`].
    None,
    /// [`Backend::Zero`].
    Zero,
    /// [`Backend::Same`].
    Same,
    /// [`Backend::Zswap`].
    Zswap,
    /// [`Backend::Phys`].
    Phys,
}

/// Does `v` survive a round trip through 50 sign-extended bits?
pub const fn fits_payload(v: u64) -> bool {
    sign_extend(v & ((1 << PAYLOAD_BITS) - 1)) == v
}

/// Tag and payload of same-filled value `v`.
const fn same_payload(v: u64) -> (u64, u64) {
    if fits_payload(v) {
        (TAG_SAME, v & ((1 << PAYLOAD_BITS) - 1))
    } else if v >> 32 == v & 0xffff_ffff {
        (TAG_SAME_EXT, (v & 0xffff_ffff) << 1)
    } else {
        (TAG_SAME_EXT, SAME_IN_TABLE)
    }
}

/// Does word (or encoding) `w` say "the same-filled value is in the side
/// table"?
#[inline]
pub(crate) const fn same_in_table(w: u64) -> bool {
    w & TAG_MASK == TAG_SAME_EXT && (w >> PAYLOAD_SHIFT) & SAME_IN_TABLE != 0
}

fn fit_signed(v: u64) -> Result<u64> {
    if fits_payload(v) {
        Ok(v & ((1 << PAYLOAD_BITS) - 1))
    } else {
        Err(Error::PayloadTooWide)
    }
}

const fn sign_extend(p: u64) -> u64 {
    (((p << (64 - PAYLOAD_BITS)) as i64) >> (64 - PAYLOAD_BITS)) as u64
}

#[inline]
pub(crate) const fn count_field(w: u64) -> u64 {
    (w & COUNT_MASK) >> COUNT_SHIFT
}
#[inline]
pub(crate) const fn with_count(w: u64, c: u64) -> u64 {
    (w & !COUNT_MASK) | (c << COUNT_SHIFT)
}
#[inline]
pub(crate) const fn is_live(w: u64) -> bool {
    is_slot(w) && (w & CACHED != 0 || count_field(w) != 0)
}
#[inline]
pub(crate) const fn backend_bits(w: u64) -> u64 {
    w & (TAG_MASK | (u64::MAX << PAYLOAD_SHIFT))
}

/// A snapshot of one slot. Stable only while the caller holds the slot's lock
/// or a count it took with `try_get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Where the data is.
    pub backend: Backend,
    /// Swap count (page-table references).
    pub count: u32,
    /// A folio is in the swap cache.
    pub cached: bool,
    /// The slot's lock bit is held.
    pub locked: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        for b in [
            Backend::None,
            Backend::Zero,
            Backend::Same(0),
            Backend::Same(u64::MAX),
            Backend::Same(0x0101_0101_0101),
            Backend::Same((1 << 49) - 1),
            Backend::Same(!((1 << 49) - 1)),
            Backend::Zswap(0xffff_8880_1234_5678),
            Backend::Zswap(42),
            Backend::Phys {
                dev: 63,
                off: (1 << 44) - 1,
            },
            Backend::Phys { dev: 0, off: 0 },
        ] {
            let w = b.encode().unwrap() | ALLOC;
            assert_eq!(Backend::decode(w), b);
            assert_eq!(w & !backend_bits(w), ALLOC);
        }
    }

    /// Issue 12 item 18: every 64-bit value is a same-filled value; those
    /// with two equal halves stay inline, others encode the table marker.
    #[test]
    fn every_same_filled_value_encodes() {
        for v in [
            0x5a5a_5a5a_5a5a_5a5a,
            0x0101_0101_0101_0101,
            0x8080_8080_8080_8080,
            0xff00_ff00_ff00_ff00,
            0x1234_5678_1234_5678,
        ] {
            let w = Backend::Same(v).encode().unwrap() | ALLOC;
            assert!(!same_in_table(w), "{v:#x} inline");
            assert_eq!(Backend::decode(w), Backend::Same(v));
            assert_eq!(w & !backend_bits(w), ALLOC);
        }
        for v in [0xdead_beef_cafe_f00d, 1 << 49, 0x7fff_ffff_ffff_fffe] {
            let w = Backend::Same(v).encode().unwrap() | ALLOC;
            assert!(same_in_table(w), "{v:#x} in the table");
            assert_eq!(Backend::decode(w).kind(), BackendKind::Same);
        }
        assert!(!same_in_table(Backend::Zswap(1).encode().unwrap()));
    }

    #[test]
    fn too_wide_payloads_are_rejected() {
        assert_eq!(
            Backend::Zswap(0x7fff_0000_0000_0000).encode(),
            Err(Error::PayloadTooWide)
        );
        assert_eq!(
            Backend::Phys { dev: 64, off: 0 }.encode(),
            Err(Error::PayloadTooWide)
        );
        assert_eq!(
            Backend::Phys {
                dev: 0,
                off: 1 << 44
            }
            .encode(),
            Err(Error::PayloadTooWide)
        );
    }

    #[test]
    fn count_field_and_liveness() {
        assert!(is_live(INIT));
        assert!(!is_live(0));
        assert!(!is_live(FREEING));
        assert!(!is_slot(FREEING) && !is_slot(RESERVED) && !is_slot(0));
        assert!(is_slot(ALLOC | LOCKED));
        let w = with_count(ALLOC, 5);
        assert_eq!(count_field(w), 5);
        assert!(is_live(w));
        assert_eq!(count_field(with_count(w, COUNT_CONT)), 63);
    }
}
