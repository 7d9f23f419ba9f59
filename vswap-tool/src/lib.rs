//! `vswap`: a userspace swapper and policy simulator built on `vswap-core`.
//!
//! - [`run`]: a real swapper. An anonymous region is registered with
//!   userfaultfd; a clock evicts cold pages into the virtual swap map (zero,
//!   same-filled, an lz4 zswap pool, a swap file through a physical device or
//!   the flash log device) and a fault handler thread serves every fault
//!   with `UFFDIO_COPY` / `UFFDIO_ZEROPAGE`. Eviction stops the mutators
//!   (see [`run`] for why that makes it race-free).
//! - [`sim`]: the same engine and backends without userfaultfd, replaying a
//!   synthetic workload or a trace file.

use std::fmt;
use std::io;
use std::path::Path;

pub mod report;
pub mod run;
pub mod sim;
pub mod swapper;
pub mod uffd;
pub mod workload;

/// Everything that can stop a run, each shown as one line.
#[derive(Debug)]
pub enum ToolError {
    /// userfaultfd could not be opened.
    Uffd(io::Error),
    /// A file operation failed.
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        err: io::Error,
    },
    /// The swap device has no free slot.
    SwapFull(std::path::PathBuf),
    /// The engine refused an operation.
    Engine(&'static str, vswap_core::Error),
    /// A bad argument.
    BadArg(String),
    /// Content verification failed.
    Verify(u64),
    /// A bug.
    Internal(&'static str),
}

impl ToolError {
    pub(crate) fn uffd(e: io::Error) -> Self {
        ToolError::Uffd(e)
    }
    pub(crate) fn io(what: &'static str, path: &Path, err: io::Error) -> Self {
        ToolError::Io {
            what,
            path: path.display().to_string(),
            err,
        }
    }
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ToolError::BadArg(_) => 2,
            ToolError::Uffd(_) => 3,
            ToolError::Verify(_) => 4,
            _ => 1,
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::Uffd(e) => match e.raw_os_error() {
                Some(libc::EPERM) => write!(
                    f,
                    "userfaultfd not permitted (EPERM): run as root, grant CAP_SYS_PTRACE, or set sysctl vm.unprivileged_userfaultfd=1"
                ),
                Some(libc::ENOSYS) => write!(
                    f,
                    "userfaultfd not supported by this kernel (ENOSYS): needs CONFIG_USERFAULTFD; try `vswap sim`"
                ),
                _ => write!(f, "userfaultfd: {e}"),
            },
            ToolError::Io { what, path, err } => {
                if err.raw_os_error() == Some(libc::ENOSPC) {
                    write!(
                        f,
                        "{what} {path}: file system full (ENOSPC); use --swap-file on a larger file system or a smaller --swap-size"
                    )
                } else {
                    write!(f, "{what} {path}: {err}")
                }
            }
            ToolError::SwapFull(p) => write!(
                f,
                "swap device full ({}): raise --swap-size or --pool-limit",
                p.display()
            ),
            ToolError::Engine(what, e) => write!(f, "engine: {what}: {e:?}"),
            ToolError::BadArg(s) => write!(f, "{s}"),
            ToolError::Verify(n) => write!(f, "content verification failed on {n} page reads"),
            ToolError::Internal(s) => write!(f, "internal error: {s}"),
        }
    }
}

impl std::error::Error for ToolError {}

/// Parse a size such as `64M`, `1G`, `4096`, `512K` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_lowercase();
            let m = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => return Err(format!("bad size unit in '{s}' (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("bad size '{s}' (examples: 64M, 1G)"))
}
