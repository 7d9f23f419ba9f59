//! The one error type of the engine.
//!
//! Every public operation returns `Result<_, Error>`; each variant names one class
//! of failure, and the C ABI maps each to one negative errno value.

use core::fmt;

/// What went wrong. Every error leaves every entry it did not name untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The memory provider is out of memory (`-ENOMEM`).
    NoMem,
    /// The provider could not allocate without sleeping; retry where sleeping is
    /// allowed (`-EAGAIN`).
    Again,
    /// The slot space or device is full (`-ENOSPC`).
    NoSpace,
    /// An order above `log2(cluster size)` (`-EINVAL`).
    BadOrder,
    /// A range that is not naturally aligned to its order (`-EINVAL`).
    Misaligned,
    /// A slot outside the space, or the reserved slot 0; a range that holds
    /// slot 0 or does not lie wholly inside the space (`-ERANGE`).
    OutOfRange,
    /// A CPU number at or above the configured number of CPUs (`-EINVAL`).
    BadCpu,
    /// The slot is not allocated (free, or its cluster does not exist) (`-ENOENT`).
    NotAllocated,
    /// The slot's lock bit is held by someone else; or a log device's staging
    /// buffer holds a whole segment (flush first), or its GC victim is taken
    /// (`-EBUSY`).
    Busy,
    /// The operation needs the slot's lock bit, and it is not held (`-EPERM`).
    NotLocked,
    /// The slot is not in the state the operation expects: a backend other than
    /// the expected one, a cache flag already set or already clear (`-EEXIST`).
    WrongState,
    /// The swap count would pass the largest count the side table holds
    /// (`-EOVERFLOW`).
    CountOverflow,
    /// A put of more counts than the slot holds (`-EINVAL`).
    CountUnderflow,
    /// A zswap handle, same-filled value, device or offset does not fit the core
    /// word's payload bits (`-E2BIG`).
    PayloadTooWide,
    /// The configuration is out of bounds (`-EINVAL`).
    BadConfig,
    /// A locked move (writeback, relocation) lost to a concurrent free: the slot
    /// died while locked, the move was not committed, and the slot is now freed
    /// (`-ESTALE`). The caller releases the location it had prepared.
    Gone,
    /// No free cluster until the host finishes pending discards
    /// (`SlotSpace::take_discard` / `discard_done`); retry after them (`-EAGAIN`).
    DiscardPending,
    /// No such device, or the device is being removed (`-ENODEV`).
    NoDevice,
    /// A buffer whose length is not the one the operation takes: a page
    /// that is not exactly the configured page size (`-EINVAL`).
    BadLength,
}

impl Error {
    /// The negative errno value the C ABI returns for this error (Linux numbering).
    pub const fn errno(self) -> i32 {
        match self {
            Error::NoMem => -12,
            Error::Again => -11,
            Error::NoSpace => -28,
            Error::BadOrder | Error::Misaligned | Error::BadCpu | Error::BadConfig => -22,
            Error::CountUnderflow => -22,
            Error::OutOfRange => -34,
            Error::NotAllocated => -2,
            Error::Busy => -16,
            Error::NotLocked => -1,
            Error::WrongState => -17,
            Error::CountOverflow => -75,
            Error::PayloadTooWide => -7,
            Error::Gone => -116,
            Error::DiscardPending => -11,
            Error::NoDevice => -19,
            Error::BadLength => -22,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Error::NoMem => "out of memory",
            Error::Again => {
                "memory not available without sleeping; retry where sleeping is allowed"
            }
            Error::NoSpace => "no free slot",
            Error::BadOrder => "order above the cluster order",
            Error::Misaligned => "range not naturally aligned",
            Error::OutOfRange => "slot out of range",
            Error::BadCpu => "cpu number out of range",
            Error::NotAllocated => "slot not allocated",
            Error::Busy => "slot locked by someone else",
            Error::NotLocked => "slot lock not held",
            Error::WrongState => "slot not in the expected state",
            Error::CountOverflow => "swap count overflow",
            Error::CountUnderflow => "put of more counts than held",
            Error::PayloadTooWide => "payload does not fit the core word",
            Error::BadConfig => "bad configuration",
            Error::Gone => "slot was freed while locked; move not committed",
            Error::DiscardPending => "no free cluster until pending discards finish",
            Error::NoDevice => "no such device, or it is being removed",
            Error::BadLength => "buffer length is not the configured page size",
        };
        f.write_str(s)
    }
}

impl core::error::Error for Error {}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
