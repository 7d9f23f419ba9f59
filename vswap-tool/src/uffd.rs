//! A minimal userfaultfd binding (x86-64 / aarch64 Linux ioctl numbers):
//! open, API handshake, register a range for missing-page faults, read
//! fault events, resolve them with `UFFDIO_COPY` / `UFFDIO_ZEROPAGE`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::ToolError;

const UFFD_API: u64 = 0xaa;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// The fault was a write.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;

const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xaa << 8) | nr
}
const fn ior(nr: u64, size: u64) -> u64 {
    (2 << 30) | (size << 16) | (0xaa << 8) | nr
}
const UFFDIO_API: u64 = iowr(0x3f, 24);
const UFFDIO_REGISTER: u64 = iowr(0x00, 32);
const UFFDIO_UNREGISTER: u64 = ior(0x01, 16);
const UFFDIO_WAKE: u64 = ior(0x02, 16);
const UFFDIO_COPY: u64 = iowr(0x03, 40);
const UFFDIO_ZEROPAGE: u64 = iowr(0x04, 32);

#[repr(C)]
#[derive(Default)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Range {
    start: u64,
    len: u64,
}
#[repr(C)]
#[derive(Default)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
#[derive(Default)]
struct Copy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
#[repr(C)]
#[derive(Default)]
struct ZeroPage {
    range: Range,
    mode: u64,
    zeropage: i64,
}

/// One `struct uffd_msg` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Msg {
    event: u8,
    _r1: u8,
    _r2: u16,
    _r3: u32,
    flags: u64,
    address: u64,
    _feat: u64,
}

/// A page fault event.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    /// Faulting address.
    pub addr: u64,
    /// `UFFD_PAGEFAULT_FLAG_*`.
    pub flags: u64,
}

/// An open userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

/// The environment variable that makes [`Uffd::open`] fail with the given
/// errno name (`EPERM`, `ENOSYS`), for tests of the error path.
pub const FORCE_ERROR_ENV: &str = "VSWAP_FORCE_UFFD_ERROR";

fn ioctl<T>(fd: &OwnedFd, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a valid, exclusively borrowed `#[repr(C)]` struct of
    // the size encoded in `req`; the kernel reads and writes only that.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Uffd {
    /// Open a userfaultfd (non-blocking), trying user-mode-only first (which
    /// unprivileged users may open), and do the API handshake.
    pub fn open() -> Result<Self, ToolError> {
        if let Ok(v) = std::env::var(FORCE_ERROR_ENV) {
            let errno = match v.as_str() {
                "ENOSYS" => libc::ENOSYS,
                _ => libc::EPERM,
            };
            return Err(ToolError::uffd(io::Error::from_raw_os_error(errno)));
        }
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let mut last = io::Error::from_raw_os_error(libc::ENOSYS);
        for f in [flags | UFFD_USER_MODE_ONLY, flags] {
            // SAFETY: the userfaultfd syscall takes one int of flags and
            // returns a new file descriptor or -1.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, f) };
            if fd >= 0 {
                // SAFETY: `fd` is a fresh descriptor that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                let mut api = Api {
                    api: UFFD_API,
                    ..Default::default()
                };
                ioctl(&fd, UFFDIO_API, &mut api).map_err(ToolError::uffd)?;
                return Ok(Self { fd });
            }
            last = io::Error::last_os_error();
            if last.raw_os_error() != Some(libc::EINVAL) {
                break;
            }
        }
        Err(ToolError::uffd(last))
    }

    /// Register `[start, start + len)` for missing-page faults.
    pub fn register(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = Register {
            range: Range { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(&self.fd, UFFDIO_REGISTER, &mut r)
    }

    /// Unregister a range.
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = Range { start, len };
        ioctl(&self.fd, UFFDIO_UNREGISTER, &mut r)
    }

    /// Wait up to `ms` milliseconds for events and read up to `out.len()`
    /// page faults into `out`; returns how many.
    pub fn read(&self, out: &mut [Fault], ms: i32) -> io::Result<usize> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r <= 0 {
            return Ok(0);
        }
        let mut msgs = [Msg::default(); 32];
        let want = out.len().min(msgs.len());
        // SAFETY: reading at most `want` whole messages into our buffer.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr().cast(),
                want * size_of::<Msg>(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        let mut k = 0;
        for m in msgs.iter().take(n as usize / size_of::<Msg>()) {
            if m.event == UFFD_EVENT_PAGEFAULT {
                if let Some(o) = out.get_mut(k) {
                    *o = Fault {
                        addr: m.address,
                        flags: m.flags,
                    };
                    k += 1;
                }
            }
        }
        Ok(k)
    }

    /// Map a copy of `src` (one page) at page-aligned `dst` and wake the
    /// faulting threads.
    pub fn copy(&self, dst: u64, src: &[u8]) -> io::Result<()> {
        let mut c = Copy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            ..Default::default()
        };
        self.retry(dst, src.len() as u64, |fd| ioctl(fd, UFFDIO_COPY, &mut c))
    }

    /// Map the zero page at `dst` and wake the faulting threads.
    pub fn zeropage(&self, dst: u64, len: u64) -> io::Result<()> {
        let mut z = ZeroPage {
            range: Range { start: dst, len },
            ..Default::default()
        };
        self.retry(dst, len, |fd| ioctl(fd, UFFDIO_ZEROPAGE, &mut z))
    }

    fn retry(
        &self,
        dst: u64,
        len: u64,
        mut f: impl FnMut(&OwnedFd) -> io::Result<()>,
    ) -> io::Result<()> {
        loop {
            match f(&self.fd) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    // Already mapped: just wake whoever waits.
                    let mut r = Range { start: dst, len };
                    return ioctl(&self.fd, UFFDIO_WAKE, &mut r);
                }
                r => return r,
            }
        }
    }
}
