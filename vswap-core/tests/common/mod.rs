//! Helpers shared by the loom models (`tests/loom.rs`, `tests/loom_engine.rs`):
//! a memory provider with exact accounting, double-free detection and a
//! poisoning quarantine, and the model runner with per-model preemption bounds.
//!
//! Only built with `--cfg vswap_loom` (both users are `#![cfg(vswap_loom)]`).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::alloc::Layout;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, AtomicUsize, Ordering as StdOrdering};
use std::time::Instant;

use vswap_core::{Ctx, MemError, Provider};

#[derive(Default)]
struct ProvInner {
    /// Read-side sections and grace periods: `StdProvider`'s loom build (a
    /// reader count loom sees).
    rcu: vswap_core::StdProvider,
    /// Blocks handed out: address -> (size, align).
    live: StdMutex<HashMap<usize, (usize, usize)>>,
    /// Freed blocks, poisoned, deallocated when the provider goes.
    quarantine: StdMutex<Vec<(usize, Layout)>>,
    bytes: StdAtomicU64,
}

impl Drop for ProvInner {
    fn drop(&mut self) {
        let q = std::mem::take(self.quarantine.get_mut().unwrap());
        let live = std::mem::take(self.live.get_mut().unwrap());
        let all =
            q.into_iter()
                .chain(live.into_iter().map(|(a, (s, al))| {
                    (a, Layout::from_size_align(s.max(1), al.max(1)).unwrap())
                }));
        for (addr, layout) in all {
            // SAFETY: every block came from `alloc_zeroed` with this layout and
            // is deallocated once, here.
            unsafe { std::alloc::dealloc(addr as *mut u8, layout) };
        }
    }
}

/// A provider with exact accounting, double-free detection and a poisoning
/// quarantine (see the module documentation). Its bookkeeping uses std types,
/// which loom does not see: the model's threads all run on one OS thread and no
/// loom operation happens inside its critical sections.
#[derive(Clone, Default)]
pub struct TestProvider(std::sync::Arc<ProvInner>);

impl TestProvider {
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(StdOrdering::Relaxed)
    }
}

// SAFETY: blocks come from the global allocator, zeroed, with the requested
// layout, and are never handed out again (freed blocks are quarantined).
unsafe impl Provider for TestProvider {
    fn alloc_zeroed(&self, size: usize, align: usize, _ctx: Ctx) -> Result<NonNull<u8>, MemError> {
        let layout =
            Layout::from_size_align(size.max(1), align.max(1)).map_err(|_| MemError::NoMem)?;
        // SAFETY: non-zero size.
        let p = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(MemError::NoMem)?;
        let prev = self
            .0
            .live
            .lock()
            .unwrap()
            .insert(p.as_ptr() as usize, (size, align));
        assert!(prev.is_none(), "allocator handed out a live block twice");
        self.0.bytes.fetch_add(size as u64, StdOrdering::Relaxed);
        Ok(p)
    }

    unsafe fn free(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        let addr = ptr.as_ptr() as usize;
        let rec = self.0.live.lock().unwrap().remove(&addr);
        assert_eq!(
            rec,
            Some((size, align)),
            "free of a block that is not live (double free?) or with another layout"
        );
        // SAFETY: the block is ours (checked above) and `size` bytes long.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0xff, size) };
        let layout = Layout::from_size_align(size.max(1), align.max(1)).unwrap();
        self.0.quarantine.lock().unwrap().push((addr, layout));
        self.0.bytes.fetch_sub(size as u64, StdOrdering::Relaxed);
    }

    fn read_lock(&self) {
        self.0.rcu.read_lock();
    }
    unsafe fn read_unlock(&self) {
        // SAFETY: forwarded with the caller's pairing.
        unsafe { self.0.rcu.read_unlock() };
    }
    fn grace_start(&self) -> u64 {
        self.0.rcu.grace_start()
    }
    fn grace_done(&self, cookie: u64) -> bool {
        self.0.rcu.grace_done(cookie)
    }
}

/// Run `f` under loom with `bound` preemptions (unless `LOOM_MAX_PREEMPTIONS`
/// is set), printing the iterations and time taken.
pub fn model<F>(name: &str, bound: usize, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    // Every pin is a read-side section: two RMWs on the provider's reader
    // count, each a loom branch; the final checks of a model walk the map
    // through many pins, past loom's default of 1,000 branches.
    model_with(
        name,
        bound,
        Some(Limits {
            max_branches: 5_000,
            stack_size: None,
        }),
        f,
    );
}

/// Larger limits than loom's defaults, for models whose setup and final checks
/// walk whole devices (loom counts every step as a branch), or whose values
/// are large (an `Engine` holds its device table and per-CPU counters inline,
/// and loom's atomics are bigger than the real ones).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Branches per execution (loom's default: 1,000; `LOOM_MAX_BRANCHES`
    /// overrides this).
    pub max_branches: usize,
    /// If set, the model body runs on a loom thread with a stack of this many
    /// bytes (loom's default is 32 KiB and cannot be changed for the main
    /// model thread). That thread counts against loom's limit of 5: such a
    /// model can spawn at most 3 more.
    pub stack_size: Option<usize>,
}

/// As [`model`], with larger [`Limits`].
pub fn model_with<F>(name: &str, bound: usize, limits: Option<Limits>, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(bound);
    }
    if let Some(l) = limits {
        if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
            b.max_branches = l.max_branches;
        }
    }
    let stack_words = limits
        .and_then(|l| l.stack_size)
        .map(|n| n / std::mem::size_of::<usize>());
    let t = Instant::now();
    let counter = std::sync::Arc::new(AtomicUsize::new(0));
    let c2 = counter.clone();
    let f = std::sync::Arc::new(f);
    b.check(move || {
        c2.fetch_add(1, StdOrdering::Relaxed);
        match stack_words {
            // loom's thread builder takes the size in words (it hands it to
            // its coroutine library as is).
            Some(words) => {
                let f = f.clone();
                loom::thread::Builder::new()
                    .stack_size(words)
                    .spawn(move || f())
                    .unwrap()
                    .join()
                    .unwrap();
            }
            None => f(),
        }
    });
    eprintln!(
        "loom model {name}: preemption bound {:?}, {} iterations, {:.2?}",
        b.preemption_bound,
        counter.load(StdOrdering::Relaxed),
        t.elapsed()
    );
}
