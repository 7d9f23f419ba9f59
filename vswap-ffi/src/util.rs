//! Return codes, the panic boundary and pointer checks shared by every entry
//! point.

use core::ptr::NonNull;

use vswap_core::{Ctx, Error, Put};

use crate::types::{VSWAP_EFAULT, VSWAP_EINVAL};

/// A negative return code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Code(pub(crate) i32);

impl From<Error> for Code {
    fn from(e: Error) -> Self {
        Code(e.errno())
    }
}

/// What an entry point's body returns: the non-negative result or a code.
pub(crate) type R = Result<i32, Code>;

/// Run an entry point's body: the `Err` code or the `Ok` value becomes the C
/// return value. With `std`, a panic is caught here and returns `-EFAULT`
/// (nothing unwinds into C); without it, a panic goes to the panic handler.
#[inline]
pub(crate) fn guard(f: impl FnOnce() -> R) -> i32 {
    let run = || match f() {
        Ok(v) => v,
        Err(Code(c)) => c,
    };
    #[cfg(feature = "std")]
    {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or(-VSWAP_EFAULT)
    }
    #[cfg(not(feature = "std"))]
    {
        let _ = VSWAP_EFAULT;
        run()
    }
}

/// As [`guard`] for functions that return nothing (destroy): a panic is
/// swallowed (the handle's memory may leak).
#[inline]
pub(crate) fn guard_void(f: impl FnOnce()) {
    #[cfg(feature = "std")]
    {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    }
    #[cfg(not(feature = "std"))]
    f()
}

/// A non-null, aligned pointer, or `-EINVAL`.
#[inline]
pub(crate) fn ptr<T>(p: *const T) -> Result<NonNull<T>, Code> {
    match NonNull::new(p.cast_mut()) {
        Some(n) if p.is_aligned() => Ok(n),
        _ => Err(Code(-VSWAP_EINVAL)),
    }
}

/// A non-null, aligned output pointer, or `-EINVAL`.
#[inline]
pub(crate) fn out<T>(p: *mut T) -> Result<NonNull<T>, Code> {
    ptr(p.cast_const())
}

/// Read a `Copy` input struct.
///
/// # Safety
/// `p`, if non-null, points to a valid, initialised `T` (the C caller's
/// contract for every input pointer).
#[inline]
pub(crate) unsafe fn read<T: Copy>(p: *const T) -> Result<T, Code> {
    let p = ptr(p)?;
    // SAFETY: non-null and aligned (checked); valid and initialised by the
    // caller's contract.
    Ok(unsafe { p.as_ptr().read() })
}

/// Write an output value.
///
/// # Safety
/// `p` came from [`out`] on a pointer the C caller passed as valid for writes
/// of a `T`.
#[inline]
pub(crate) unsafe fn write<T>(p: NonNull<T>, v: T) {
    // SAFETY: non-null and aligned (checked by `out`); writable by the
    // caller's contract. `write` does not read or drop the old contents.
    unsafe { p.as_ptr().write(v) }
}

/// A C `may_sleep` flag as the engine's allocation context.
#[inline]
pub(crate) fn ctx(may_sleep: bool) -> Ctx {
    if may_sleep {
        Ctx::MaySleep
    } else {
        Ctx::NoSleep
    }
}

/// `Put` as the C return value: 0 still live, 1 freed.
#[inline]
pub(crate) fn put_code(p: Put) -> i32 {
    match p {
        Put::Live => crate::types::VSWAP_LIVE,
        Put::Freed => crate::types::VSWAP_FREED,
    }
}

/// A device number from C (`-ENODEV` when it cannot be one).
#[inline]
pub(crate) fn dev_id(dev: u32) -> Result<u8, Code> {
    u8::try_from(dev).map_err(|_| Code::from(Error::NoDevice))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{VSWAP_EFAULT, VSWAP_EINVAL};

    #[cfg(feature = "std")]
    #[test]
    fn a_panic_becomes_efault() {
        assert_eq!(guard(|| panic!("a bug")), -VSWAP_EFAULT);
        assert_eq!(guard(|| Ok(7)), 7);
        assert_eq!(guard(|| Err(Code(-VSWAP_EINVAL))), -VSWAP_EINVAL);
        guard_void(|| panic!("swallowed"));
    }

    #[test]
    fn pointers_are_checked() {
        assert_eq!(ptr::<u64>(core::ptr::null()), Err(Code(-VSWAP_EINVAL)));
        let x = [0u64; 2];
        let odd = x.as_ptr().cast::<u8>().wrapping_add(1).cast::<u64>();
        assert_eq!(ptr(odd), Err(Code(-VSWAP_EINVAL)));
        assert!(ptr(x.as_ptr()).is_ok());
        assert_eq!(dev_id(256), Err(Code::from(Error::NoDevice)));
    }
}
