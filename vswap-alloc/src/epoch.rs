//! Deferred reclamation for userspace hosts: a thread-keyed epoch scheme
//! with asymmetric fences (the shape of liburcu's `urcu-memb` flavour), the
//! default behind [`StdProvider`](crate::StdProvider)'s read-side sections
//! and grace periods.
//!
//! # Protocol
//! One process-wide domain: a global epoch `E` (starts at 1, only grows)
//! and a registry of per-thread records (one cache line each, never
//! freed; a record of a thread that exited is reused by the next thread).
//! A record's `active` word is 0 while its thread is outside every section,
//! otherwise the epoch its outermost section began in.
//!
//! - **Enter** (outermost section of a thread): load `E` (Acquire), store it
//!   in `active` (Relaxed), then a *light* fence. Nested sections only count.
//! - **Exit** (outermost): store 0 in `active` (Release).
//! - **Grace start**: `E.fetch_add(1)` (AcqRel); the new value `c` is the
//!   cookie.
//! - **Grace done(c)**: a *heavy* fence, then every record's `active`
//!   (Acquire): done unless some record holds a non-zero epoch below `c`.
//!
//! Why it is enough: the writer retires memory (unpublishes it, or marks it
//! dead so that readers stop at a check) and then starts the grace period.
//! A reader whose section began before that either (a) published its
//! `active` before the writer's heavy fence, so `done` sees an epoch below
//! `c` until the reader's exit store, whose Release pairs with `done`'s
//! Acquire load (everything the reader did happens before the free), or (b)
//! did not, and then its light fence comes after the writer's heavy fence
//! and its later loads see the retirement, so it never reaches the memory.
//! A reader that loaded an epoch `>= c` read the `fetch_add` (or later), whose
//! Release publishes the retirement to it. This is the store-buffer pattern
//! (writer: retire, fence, read `active`; reader: write `active`, fence,
//! read the pointer); one side always sees the other.
//!
//! Fences: with the Linux `membarrier` system call
//! (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`, registered on first use) the light
//! fence is only a compiler fence and the heavy one is the system call (a
//! full barrier on every running thread of the process): a reader pays a
//! thread-local access and two plain stores, no atomic RMW and no fence
//! instruction. Where the call is missing (another OS, an old kernel, miri,
//! loom) both are `fence(SeqCst)`.
//!
//! Keyed by *thread*, never by a CPU number: CPU numbers may be shared by
//! threads, and a per-CPU-number epoch would let one thread's exit declare
//! another thread quiescent. A section used while the thread's locals are
//! being destroyed (a guard held in another thread-local's destructor) is
//! counted in one shared word instead, which holds every grace period back
//! until it ends.
//!
//! Memory: one 64-byte record per thread that ever used a section at the same
//! time as others ([`records`]).

use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, Ordering, fence};

/// One thread's record in a [`Domain`]'s registry.
#[repr(align(64))]
pub(crate) struct Record {
    /// 0 outside every section, else the epoch the outermost one began in.
    active: AtomicU64,
    /// 1 while a thread owns the record.
    used: AtomicU32,
    /// The next record (set before the record is published, then fixed).
    next: AtomicPtr<Record>,
}

impl Record {
    /// A record owned by the caller (`used`), not yet in a registry.
    pub(crate) fn new() -> Self {
        Self {
            active: AtomicU64::new(0),
            used: AtomicU32::new(1),
            next: AtomicPtr::new(core::ptr::null_mut()),
        }
    }
}

/// A registry of records and a global epoch (see the module documentation).
pub(crate) struct Domain {
    epoch: AtomicU64,
    head: AtomicPtr<Record>,
    /// Sections that could not use a record (thread locals being destroyed).
    anonymous: AtomicU64,
    records: AtomicU64,
}

impl Domain {
    /// An empty domain at epoch 1.
    #[cfg(not(vswap_loom))]
    pub(crate) const fn new() -> Self {
        Self {
            epoch: AtomicU64::new(1),
            head: AtomicPtr::new(core::ptr::null_mut()),
            anonymous: AtomicU64::new(0),
            records: AtomicU64::new(0),
        }
    }

    /// An empty domain at epoch 1 (loom's atomics are not `const`).
    #[cfg(vswap_loom)]
    pub(crate) fn new() -> Self {
        Self {
            epoch: AtomicU64::new(1),
            head: AtomicPtr::new(core::ptr::null_mut()),
            anonymous: AtomicU64::new(0),
            records: AtomicU64::new(0),
        }
    }

    /// Take a record for the calling thread: a released one, or `fresh`
    /// (published into the registry) if none is free. Returns the record in
    /// use and whether `fresh` was consumed.
    pub(crate) fn acquire<'a>(&'a self, fresh: &'a Record) -> (&'a Record, bool) {
        let mut p = self.head.load(Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: published records are never freed while the domain is
            // in use (the std domain is a static; model domains outlive their
            // threads).
            let r = unsafe { &*p };
            if r.used
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return (r, false);
            }
            p = r.next.load(Ordering::Acquire);
        }
        let me = core::ptr::from_ref(fresh).cast_mut();
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            fresh.next.store(head, Ordering::Relaxed);
            match self
                .head
                .compare_exchange_weak(head, me, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        self.records.fetch_add(1, Ordering::Relaxed);
        (fresh, true)
    }

    /// Give a record back for reuse (its thread is leaving).
    pub(crate) fn release(&self, r: &Record) {
        r.active.store(0, Ordering::Release);
        r.used.store(0, Ordering::Release);
    }

    /// Begin the outermost section of the thread that owns `r`.
    #[inline]
    pub(crate) fn enter(&self, r: &Record) {
        let e = self.epoch.load(Ordering::Acquire);
        r.active.store(e, Ordering::Relaxed);
        light_fence();
    }

    /// End the outermost section of the thread that owns `r`.
    #[inline]
    pub(crate) fn exit(&self, r: &Record) {
        r.active.store(0, Ordering::Release);
    }

    /// Begin a section without a record (counted in a shared word).
    #[cold]
    pub(crate) fn enter_anonymous(&self) {
        self.anonymous.fetch_add(1, Ordering::SeqCst);
    }

    /// End a section begun with [`enter_anonymous`](Self::enter_anonymous).
    #[cold]
    pub(crate) fn exit_anonymous(&self) {
        self.anonymous.fetch_sub(1, Ordering::SeqCst);
    }

    /// Start a grace period; the cookie names it.
    pub(crate) fn start(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether every section that had begun when [`start`](Self::start)
    /// returned `cookie` has ended.
    pub(crate) fn done(&self, cookie: u64) -> bool {
        // A record seen holding an older epoch answers "no" without the
        // heavy fence (a system call that interrupts every running thread).
        if self.blocked(cookie) {
            return false;
        }
        if !heavy_fence() {
            return false;
        }
        // The records first, then the anonymous count: a thread whose locals
        // are destroyed with a section open counts it as anonymous *before*
        // its record's Release store of 0, so a walk that reads that 0 (with
        // Acquire) then sees the count.
        if self.blocked(cookie) {
            return false;
        }
        self.anonymous.load(Ordering::SeqCst) == 0
    }

    /// Whether some record holds a section begun before `cookie`'s epoch.
    fn blocked(&self, cookie: u64) -> bool {
        let mut p = self.head.load(Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: as in `acquire`: records are never freed.
            let r = unsafe { &*p };
            let a = r.active.load(Ordering::Acquire);
            if a != 0 && a < cookie {
                return true;
            }
            p = r.next.load(Ordering::Acquire);
        }
        false
    }

    /// Records in the registry.
    #[cfg_attr(vswap_loom, allow(dead_code))]
    pub(crate) fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }
}

#[cfg(all(target_os = "linux", not(miri), not(vswap_loom), feature = "std"))]
mod membarrier {
    extern crate std;

    use std::sync::OnceLock;

    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    static USABLE: OnceLock<bool> = OnceLock::new();

    /// Whether the process is registered for private expedited membarrier.
    #[inline]
    pub(super) fn usable() -> bool {
        *USABLE.get_or_init(|| {
            // SAFETY: the membarrier system call takes no pointers.
            let r = unsafe {
                libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0)
            };
            r == 0
        })
    }

    /// A full memory barrier on every running thread of the process.
    pub(super) fn heavy() -> bool {
        // SAFETY: as above.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0, 0) };
        r == 0
    }
}

#[inline]
fn light_fence() {
    #[cfg(all(target_os = "linux", not(miri), not(vswap_loom), feature = "std"))]
    if membarrier::usable() {
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        return;
    }
    fence(Ordering::SeqCst);
}

/// The writer's side of the fence pairing; `false` if it could not be
/// issued (membarrier registered, readers on compiler fences, and the call
/// failed: it cannot once registered), and then no grace period may end.
#[must_use]
fn heavy_fence() -> bool {
    #[cfg(all(target_os = "linux", not(miri), not(vswap_loom), feature = "std"))]
    if membarrier::usable() {
        return membarrier::heavy();
    }
    fence(Ordering::SeqCst);
    true
}

#[cfg(all(feature = "std", not(vswap_loom)))]
mod thread {
    extern crate std;

    use core::cell::Cell;
    use std::boxed::Box;

    use super::{Domain, Record};

    pub(super) static DOMAIN: Domain = Domain::new();

    struct Local {
        rec: Cell<Option<&'static Record>>,
        nest: Cell<u64>,
    }

    impl Drop for Local {
        fn drop(&mut self) {
            // Sections still open (a guard held by a thread-local destroyed
            // later) carry on as anonymous ones: their exits find no local
            // and end them there.
            for _ in 0..self.nest.get() {
                DOMAIN.enter_anonymous();
            }
            if let Some(r) = self.rec.get() {
                DOMAIN.release(r);
            }
        }
    }

    std::thread_local! {
        static LOCAL: Local = const {
            Local {
                rec: Cell::new(None),
                nest: Cell::new(0),
            }
        };
    }

    #[inline]
    fn record(l: &Local) -> &'static Record {
        match l.rec.get() {
            Some(r) => r,
            None => register(l),
        }
    }

    /// A thread's first section: take a record.
    #[cold]
    #[inline(never)]
    fn register(l: &Local) -> &'static Record {
        let raw = Box::into_raw(Box::new(Record::new()));
        // SAFETY: `raw` is a live, leaked box: valid for the process unless
        // given back just below (only when the domain did not take it).
        let fresh: &'static Record = unsafe { &*raw };
        let (r, used) = DOMAIN.acquire(fresh);
        if !used {
            // SAFETY: `raw` came from `Box::into_raw` above and was never
            // published; `fresh` is not used again.
            drop(unsafe { Box::from_raw(raw) });
        }
        l.rec.set(Some(r));
        r
    }

    #[inline]
    pub(super) fn read_lock() {
        let ok = LOCAL.try_with(|l| {
            let n = l.nest.get();
            if n == 0 {
                DOMAIN.enter(record(l));
            }
            l.nest.set(n + 1);
        });
        if ok.is_err() {
            DOMAIN.enter_anonymous();
        }
    }

    /// # Safety
    /// Pairs with an earlier `read_lock` on this thread.
    #[inline]
    pub(super) unsafe fn read_unlock() {
        let ok = LOCAL.try_with(|l| {
            let n = l.nest.get();
            if n == 1 {
                if let Some(r) = l.rec.get() {
                    DOMAIN.exit(r);
                }
            }
            l.nest.set(n.saturating_sub(1));
        });
        if ok.is_err() {
            DOMAIN.exit_anonymous();
        }
    }
}

/// Enter a read-side section of the process-wide domain (nests).
///
/// Memory unpublished before a grace period started stays valid until every
/// section that had begun by then has ended. Pair each call with one
/// [`read_unlock`] on the same thread.
#[cfg(all(feature = "std", not(vswap_loom)))]
#[inline]
pub fn read_lock() {
    thread::read_lock();
}

/// Leave a section begun with [`read_lock`] on this thread.
///
/// # Safety
/// Each call pairs with one earlier [`read_lock`] on the same thread that
/// no other call has paired with: an extra unlock would end a section that
/// someone else (a [`Pin`](crate::Pin), say) still relies on.
#[cfg(all(feature = "std", not(vswap_loom)))]
#[inline]
pub unsafe fn read_unlock() {
    // SAFETY: the caller pairs this with its own `read_lock`.
    unsafe { thread::read_unlock() };
}

/// Start a grace period; pass the cookie to [`grace_done`].
#[cfg(all(feature = "std", not(vswap_loom)))]
pub fn grace_start() -> u64 {
    thread::DOMAIN.start()
}

/// Whether every section that had begun when [`grace_start`] returned
/// `cookie` has ended. Costs one `membarrier` system call (or a fence) and a
/// walk over the thread records.
#[cfg(all(feature = "std", not(vswap_loom)))]
pub fn grace_done(cookie: u64) -> bool {
    thread::DOMAIN.done(cookie)
}

/// Thread records in the process-wide domain (64 bytes each, kept for the
/// life of the process and reused by later threads).
#[cfg(all(feature = "std", not(vswap_loom)))]
pub fn records() -> u64 {
    thread::DOMAIN.records()
}

#[cfg(all(test, not(vswap_loom)))]
mod tests {
    extern crate std;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering as O};
    use std::time::{Duration, Instant};
    use std::vec::Vec;

    use super::*;

    fn unlock() {
        // SAFETY: every test pairs each unlock with its own lock.
        unsafe { read_unlock() };
    }

    /// The process-wide domain is shared with every other test thread, so
    /// "done" is only ever *eventually* true there: wait for it (sections
    /// elsewhere are short), failing after 10 s.
    fn eventually_done(c: u64) {
        let t = Instant::now();
        while !grace_done(c) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "grace period {c} never ended"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_private_domain_waits_exactly_for_the_sections_begun_before_a_start() {
        let d = Domain::new();
        let (ra, rb) = (Record::new(), Record::new());
        let (a, used_a) = d.acquire(&ra);
        let (b, used_b) = d.acquire(&rb);
        assert!(used_a && used_b);
        assert_eq!(d.records(), 2);
        d.enter(a);
        let c = d.start();
        assert!(!d.done(c), "a's section began before the start");
        d.enter(b);
        assert!(!d.done(c));
        d.exit(a);
        assert!(d.done(c), "b's section began after the start");
        let c2 = d.start();
        assert!(!d.done(c2), "b is inside, begun before the second start");
        d.exit(b);
        assert!(d.done(c2));
        // A record given back is reused, not added.
        d.release(a);
        let rc = Record::new();
        let (again, used_c) = d.acquire(&rc);
        assert!(!used_c && core::ptr::eq(again, a));
        assert_eq!(d.records(), 2);
        // Anonymous sections hold every grace period back.
        let c3 = d.start();
        d.enter_anonymous();
        assert!(!d.done(c3));
        d.exit_anonymous();
        assert!(d.done(c3));
    }

    #[test]
    fn a_grace_period_waits_for_a_section_begun_before_it() {
        read_lock();
        let c = grace_start();
        let t = std::thread::spawn(move || grace_done(c));
        assert!(!t.join().unwrap(), "done while this thread is inside");
        assert!(!grace_done(c));
        unlock();
        eventually_done(c);
    }

    #[test]
    fn nested_sections_end_with_the_outermost() {
        read_lock();
        read_lock();
        let c = grace_start();
        unlock();
        let d = std::thread::spawn(move || grace_done(c)).join().unwrap();
        assert!(!d, "the inner exit must not end the section");
        unlock();
        eventually_done(c);
    }

    #[test]
    fn sections_of_threads_that_share_nothing_but_a_cpu_number_are_separate() {
        // Thread A is inside a section; thread B enters and leaves many
        // times: B's exits never end A's section.
        let inside = Arc::new(AtomicBool::new(false));
        let leave = Arc::new(AtomicBool::new(false));
        let (i2, l2) = (inside.clone(), leave.clone());
        let a = std::thread::spawn(move || {
            read_lock();
            i2.store(true, O::SeqCst);
            while !l2.load(O::SeqCst) {
                std::thread::yield_now();
            }
            unlock();
        });
        while !inside.load(O::SeqCst) {
            std::thread::yield_now();
        }
        let c = grace_start();
        let b = std::thread::spawn(move || {
            for _ in 0..1000 {
                read_lock();
                unlock();
            }
        });
        b.join().unwrap();
        assert!(!grace_done(c));
        leave.store(true, O::SeqCst);
        a.join().unwrap();
        eventually_done(c);
    }

    #[test]
    fn records_of_exited_threads_are_reused() {
        let spawn_round = || {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    std::thread::spawn(|| {
                        read_lock();
                        unlock();
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        };
        spawn_round();
        let after_one = records();
        for _ in 0..20 {
            spawn_round();
        }
        // Other tests run threads at the same time; the registry grows by at
        // most their concurrency, not by 80 more threads.
        assert!(records() < after_one + 40, "{} vs {after_one}", records());
    }
}

/// loom model of the epoch protocol itself: a reader that loads a pointer
/// inside its section against a writer that unpublishes it, starts a grace
/// period, polls until it ends, and then "frees" the object (marks it dead).
/// The reader must never see the object dead while inside. Run with
/// `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg vswap_loom" cargo test -p
/// vswap-alloc --features std --lib --release epoch::loom_tests`. Under
/// loom both fences are `fence(SeqCst)` (the membarrier pairing's stand-in).
#[cfg(all(test, vswap_loom))]
mod loom_tests {
    extern crate std;
    use std::boxed::Box;

    use loom::sync::Arc;

    use super::*;

    struct Obj {
        alive: AtomicU64,
    }

    fn run(readers: usize) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(move || {
            let d = Arc::new(Domain::new());
            let obj: &'static Obj = Box::leak(Box::new(Obj {
                alive: AtomicU64::new(1),
            }));
            let slot = Arc::new(AtomicPtr::new(core::ptr::from_ref(obj).cast_mut()));
            let hs: std::vec::Vec<_> = (0..readers)
                .map(|_| {
                    let (d, slot) = (d.clone(), slot.clone());
                    loom::thread::spawn(move || {
                        let fresh = Box::leak(Box::new(Record::new()));
                        let (r, _) = d.acquire(fresh);
                        d.enter(r);
                        let p = slot.load(Ordering::Acquire);
                        if !p.is_null() {
                            // SAFETY: the object is leaked (never freed); "dead"
                            // stands for freed.
                            let alive = unsafe { &*p }.alive.load(Ordering::Relaxed);
                            assert_eq!(alive, 1, "read a reclaimed object");
                        }
                        d.exit(r);
                        d.release(r);
                    })
                })
                .collect();
            slot.store(core::ptr::null_mut(), Ordering::Release);
            let c = d.start();
            while !d.done(c) {
                loom::thread::yield_now();
            }
            obj.alive.store(0, Ordering::Relaxed);
            for h in hs {
                h.join().unwrap();
            }
        });
    }

    #[test]
    fn one_reader_never_sees_a_reclaimed_object() {
        run(1);
    }

    #[test]
    fn two_readers_never_see_a_reclaimed_object() {
        run(2);
    }
}
