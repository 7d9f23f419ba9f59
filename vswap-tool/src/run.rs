//! `vswap run`: a real userspace swapper over userfaultfd.
//!
//! # Threads
//! - *mutators* (`threads`, default 4) own disjoint slices of the region
//!   (page `p` belongs to thread `p % threads`); they fill every page, then
//!   access pages with a hot/cold skew, checking every page they read against
//!   the content they last wrote, and finally read every page back once.
//! - the *fault handler* reads userfaultfd events and serves each missing
//!   page: a never-touched page or a zero-backend page with
//!   `UFFDIO_ZEROPAGE` (or a zero `UFFDIO_COPY` for a write), anything else
//!   by loading it from its backend and `UFFDIO_COPY`; then it drops the
//!   page's virtual slot.
//! - the *evictor* keeps the resident set under the budget with a clock:
//!   mutators set a page's referenced bit on each access, the hand clears
//!   set bits and evicts pages whose bit is clear: copy out, store through
//!   the engine, `MADV_DONTNEED` (so the next access faults). It also writes
//!   the oldest zswap objects back to the swap file when the pool passes its
//!   limit.
//!
//! # Why eviction cannot lose a write
//! **The mutators are stopped while the evictor works.** Mutators hold the
//! read side of a `RwLock` while they touch pages (a batch of accesses at a
//! time); the evictor takes the write side for the whole copy-out +
//! `MADV_DONTNEED` of a batch. So no store can land between the copy and the
//! discard. (The alternative, userfaultfd write-protection around the copy,
//! is not used.) A mutator can only fault while holding the read side, so
//! the fault handler and the evictor never work on the same page at once;
//! the handler finishes its bookkeeping before `UFFDIO_COPY` wakes the
//! faulting thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use vswap_core::{Flush, StdProvider};

use crate::ToolError;
use crate::report::{Latency, Report};
use crate::swapper::{DeviceKind, GcKind, Loaded, SwapConfig, Swapper};
use crate::uffd::{Fault, UFFD_PAGEFAULT_FLAG_WRITE, Uffd};
use crate::workload::{PAGE, Rng, Workload};

/// Options of `vswap run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Region bytes.
    pub size: u64,
    /// Resident budget bytes.
    pub budget: u64,
    /// zswap pool limit bytes.
    pub pool_limit: u64,
    /// Swap file bytes.
    pub swap_size: u64,
    /// Swap file path.
    pub swap_file: PathBuf,
    /// Keep the swap file afterwards.
    pub keep_file: bool,
    /// Device kind.
    pub device: DeviceKind,
    /// The log device's GC policy.
    pub gc: GcKind,
    /// Mutator threads.
    pub threads: u32,
    /// Accesses after the fill, all threads together.
    pub ops: u64,
    /// Percent of accesses that write.
    pub write_pct: u32,
    /// Percent of accesses that go to the hot set.
    pub hot_share: u32,
    /// The workload.
    pub workload: Workload,
    /// Show a progress bar.
    pub progress: bool,
}

const UNTOUCHED: u8 = 0;
const RESIDENT: u8 = 1;
const SWAPPED: u8 = 2;
const BATCH: u64 = 32;

struct Region(*mut u8);
// SAFETY: the region is plain memory shared by all threads; who may touch
// which page when is governed by the gate and the page ownership rules.
unsafe impl Sync for Region {}
// SAFETY: as above.
unsafe impl Send for Region {}

struct Shared<'a> {
    base: Region,
    pages: u64,
    state: Vec<AtomicU8>,
    refbit: Vec<AtomicU8>,
    slot: Vec<AtomicU32>,
    resident: AtomicU64,
    peak_resident: AtomicU64,
    live: AtomicU64,
    budget: u64,
    gate: RwLock<()>,
    workers_done: AtomicBool,
    stop: AtomicBool,
    failed: AtomicBool,
    error: Mutex<Option<ToolError>>,
    progress: AtomicU64,
    verified: AtomicU64,
    verify_fail: AtomicU64,
    first_touch: AtomicU64,
    peak_live: AtomicU64,
    meta_at_peak: AtomicU64,
    swapper: Swapper<'a>,
    map_p: &'a StdProvider,
    uffd: Uffd,
    cfg: RunConfig,
}

impl Shared<'_> {
    fn fail(&self, e: ToolError) {
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert(e);
        self.failed.store(true, Relaxed);
    }
    fn page_ptr(&self, p: u64) -> *mut u8 {
        self.base.0.wrapping_add((p as usize) * PAGE)
    }
}

/// Validate a configuration.
pub fn check(cfg: &RunConfig) -> Result<(), ToolError> {
    let bad = |s: &str| Err(ToolError::BadArg(s.to_string()));
    if cfg.size < 16 * PAGE as u64 || cfg.size % PAGE as u64 != 0 {
        return bad("--size must be a multiple of 4 KiB and at least 64 KiB");
    }
    if cfg.budget < 64 * PAGE as u64 * u64::from(cfg.threads) || cfg.budget >= cfg.size {
        return bad("--budget must be below --size and at least 256 KiB per thread");
    }
    if cfg.size / PAGE as u64 >= u64::from(u32::MAX) {
        return bad("--size too large (at most 2^32 pages)");
    }
    if !(1..=64).contains(&cfg.threads) {
        return bad("--threads must be 1..=64");
    }
    if cfg.swap_size < 16 << 20 {
        return bad("--swap-size must be at least 16 MiB");
    }
    if cfg.write_pct > 100 || cfg.workload.hot_pct > 100 || cfg.hot_share > 100 {
        return bad("percentages must be 0..=100");
    }
    Ok(())
}

/// Run the swapper; returns the report (with `verify_failures`, which the
/// caller turns into an error when non-zero).
pub fn run(cfg: RunConfig) -> Result<Report, ToolError> {
    check(&cfg)?;
    let uffd = Uffd::open()?;
    let pages = cfg.size / PAGE as u64;
    let map_p = StdProvider::new();
    let dev_p = StdProvider::new();
    let swapper = Swapper::new(
        &SwapConfig {
            device: cfg.device,
            swap_pages: cfg.swap_size / PAGE as u64,
            pool_limit: cfg.pool_limit,
            path: cfg.swap_file.clone(),
            keep_file: cfg.keep_file,
            seg_shift: 9,
            gc: cfg.gc,
        },
        &map_p,
        &dev_p,
    )?;
    // SAFETY: a fresh private anonymous mapping; no existing memory is
    // affected. MAP_NORESERVE: the swapper, not the kernel, bounds residency.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            cfg.size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(ToolError::BadArg(format!(
            "cannot map a {} MiB region: {}",
            cfg.size >> 20,
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: advice on our own mapping; huge pages would defeat 4 KiB
    // eviction (failure is harmless).
    unsafe { libc::madvise(base, cfg.size as usize, libc::MADV_NOHUGEPAGE) };
    let r = uffd
        .register(base as u64, cfg.size)
        .map_err(ToolError::uffd)
        .and_then(|()| go(cfg.clone(), pages, base.cast(), swapper, &map_p, uffd));
    // SAFETY: unmapping the region mapped above; every thread that used it
    // has been joined.
    unsafe { libc::munmap(base, cfg.size as usize) };
    r
}

fn go<'a>(
    cfg: RunConfig,
    pages: u64,
    base: *mut u8,
    swapper: Swapper<'a>,
    map_p: &'a StdProvider,
    uffd: Uffd,
) -> Result<Report, ToolError> {
    let sh = Shared {
        base: Region(base),
        pages,
        state: (0..pages).map(|_| AtomicU8::new(UNTOUCHED)).collect(),
        refbit: (0..pages).map(|_| AtomicU8::new(0)).collect(),
        slot: (0..pages).map(|_| AtomicU32::new(0)).collect(),
        resident: AtomicU64::new(0),
        peak_resident: AtomicU64::new(0),
        live: AtomicU64::new(0),
        budget: cfg.budget / PAGE as u64,
        gate: RwLock::new(()),
        workers_done: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        progress: AtomicU64::new(0),
        verified: AtomicU64::new(0),
        verify_fail: AtomicU64::new(0),
        first_touch: AtomicU64::new(0),
        peak_live: AtomicU64::new(0),
        meta_at_peak: AtomicU64::new(0),
        swapper,
        map_p,
        uffd,
        cfg: cfg.clone(),
    };
    let total = pages * 2 + cfg.ops;
    let bar = if cfg.progress {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent}% {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let start = Instant::now();
    let lat = std::thread::scope(|s| {
        let shr = &sh;
        let fh = s.spawn(move || fault_loop(shr));
        let ev = s.spawn(move || evict_loop(shr));
        let ws: Vec<_> = (0..cfg.threads)
            .map(|t| s.spawn(move || worker(shr, t)))
            .collect();
        while !ws.iter().all(|w| w.is_finished()) {
            if let Some(b) = &bar {
                b.set_position(shr.progress.load(Relaxed));
                b.set_message(format!(
                    "resident {} MiB, swapped {} pages",
                    (shr.resident.load(Relaxed) * PAGE as u64) >> 20,
                    shr.live.load(Relaxed)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut lat = Vec::new();
        for w in ws {
            match w.join() {
                Ok(v) => lat.extend(v),
                Err(_) => shr.fail(ToolError::Internal("a mutator thread panicked")),
            }
        }
        shr.workers_done.store(true, Relaxed);
        if ev.join().is_err() {
            shr.fail(ToolError::Internal("the evictor panicked"));
        }
        shr.stop.store(true, Relaxed);
        if fh.join().is_err() {
            shr.fail(ToolError::Internal("the fault handler panicked"));
        }
        lat
    });
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(e) = sh.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    // Staged pages still count as swapped: nothing to flush for the report.
    let mut rep = Report {
        mode: "run",
        device: Some(cfg.device),
        workload: format!(
            "mix zero/same/text/random {}/{}/{}/{}%, {}% hot pages take {}% of accesses, {}% writes",
            cfg.workload.mix.zero,
            cfg.workload.mix.same,
            cfg.workload.mix.text,
            100 - cfg.workload.mix.zero - cfg.workload.mix.same - cfg.workload.mix.text,
            cfg.workload.hot_pct,
            cfg.hot_share,
            cfg.write_pct
        ),
        region_bytes: cfg.size,
        budget_bytes: cfg.budget,
        peak_resident_bytes: sh.peak_resident.load(Relaxed) * PAGE as u64,
        pool_limit_bytes: cfg.pool_limit,
        threads: cfg.threads,
        ops: cfg.ops,
        accesses: 2 * pages + cfg.ops,
        elapsed_s: elapsed,
        pages_verified: sh.verified.load(Relaxed),
        verify_failures: sh.verify_fail.load(Relaxed),
        peak_live_slots: sh.peak_live.load(Relaxed),
        map_metadata_bytes: sh.meta_at_peak.load(Relaxed),
        fault_latency: Latency::from_ns(lat),
        first_touch_faults: sh.first_touch.load(Relaxed),
        ..Default::default()
    };
    rep.collect(&sh.swapper);
    let _ = sh.uffd.unregister(base as u64, cfg.size);
    Ok(rep)
}

fn fault_loop(sh: &Shared<'_>) {
    let mut evs = [Fault { addr: 0, flags: 0 }; 32];
    let mut buf = vec![0u8; PAGE];
    let zero = vec![0u8; PAGE];
    let base = sh.base.0 as u64;
    // Serve faults ahead of the mutators (best effort: needs privilege).
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10);
    }
    while !sh.stop.load(Relaxed) {
        let n = match sh.uffd.read(&mut evs, 20) {
            Ok(n) => n,
            Err(e) => {
                sh.fail(ToolError::uffd(e));
                return;
            }
        };
        for f in evs.iter().take(n) {
            let addr = f.addr & !(PAGE as u64 - 1);
            let p = (addr - base) / PAGE as u64;
            let write = f.flags & UFFD_PAGEFAULT_FLAG_WRITE != 0;
            let Some(st) = sh.state.get(p as usize) else {
                continue;
            };
            let loaded = match st.load(Relaxed) {
                UNTOUCHED => {
                    sh.first_touch.fetch_add(1, Relaxed);
                    Ok(Loaded::Zero)
                }
                SWAPPED => {
                    let slot = sh.slot[p as usize].load(Relaxed);
                    let r = sh.swapper.swap_in(slot, &mut buf);
                    sh.live.fetch_sub(1, Relaxed);
                    r
                }
                _ => Ok(Loaded::Zero), // a duplicate event: EEXIST wakes it
            };
            let loaded = loaded.unwrap_or_else(|e| {
                // Keep serving faults (mutators would hang otherwise);
                // the page's content check will fail too.
                sh.fail(e);
                Loaded::Zero
            });
            if st.swap(RESIDENT, Relaxed) != RESIDENT {
                let r = sh.resident.fetch_add(1, Relaxed) + 1;
                sh.peak_resident.fetch_max(r, Relaxed);
            }
            let r = match loaded {
                Loaded::Zero if !write => sh.uffd.zeropage(addr, PAGE as u64),
                Loaded::Zero => sh.uffd.copy(addr, &zero),
                Loaded::Data => sh.uffd.copy(addr, &buf),
            };
            if let Err(e) = r {
                sh.fail(ToolError::uffd(e));
            }
        }
    }
}

fn evict_loop(sh: &Shared<'_>) {
    // Mutators wait above `budget - BATCH * threads` (see `worker`): start
    // below that, so a waiting mutator always has the evictor working.
    let wait_at = sh.budget - BATCH * u64::from(sh.cfg.threads);
    let high = wait_at - (sh.budget / 32).max(1);
    let low = high - (sh.budget / 8).max(1);
    let mut hand = 0u64;
    let mut victims = Vec::new();
    let mut buf = vec![0u8; PAGE];
    while !sh.workers_done.load(Relaxed) {
        if sh.resident.load(Relaxed) <= high || sh.failed.load(Relaxed) {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let _g = sh.gate.write().unwrap_or_else(|p| p.into_inner());
        victims.clear();
        let mut scanned = 0;
        while sh.resident.load(Relaxed) > low && scanned < 3 * sh.pages {
            let p = hand as usize;
            hand = (hand + 1) % sh.pages;
            scanned += 1;
            if sh.state[p].load(Relaxed) != RESIDENT {
                continue;
            }
            if sh.refbit[p].swap(0, Relaxed) != 0 {
                continue;
            }
            // SAFETY: page `p` is resident and every mutator is stopped
            // (we hold the gate's write side), so nothing writes it now.
            unsafe { std::ptr::copy_nonoverlapping(sh.page_ptr(p as u64), buf.as_mut_ptr(), PAGE) };
            match sh.swapper.swap_out(p as u32, &buf, 0) {
                Ok(slot) => {
                    sh.slot[p].store(slot, Relaxed);
                    sh.state[p].store(SWAPPED, Relaxed);
                    sh.resident.fetch_sub(1, Relaxed);
                    sh.live.fetch_add(1, Relaxed);
                    victims.push(p as u64);
                }
                Err(e) => {
                    sh.fail(e);
                    break;
                }
            }
        }
        discard(sh, &mut victims);
        let r = sh.swapper.maintain(sh.cfg.pool_limit, 0);
        if let Err(e) = r {
            sh.fail(e);
        }
        let live = sh.live.load(Relaxed);
        if live > sh.peak_live.load(Relaxed) {
            sh.peak_live.store(live, Relaxed);
            sh.meta_at_peak.store(sh.map_p.bytes_in_use(), Relaxed);
        }
    }
    if sh.cfg.device == DeviceKind::Log {
        let _g = sh.gate.write().unwrap_or_else(|p| p.into_inner());
        let _ = sh.swapper.log_flush(Flush::Full);
    }
}

/// `MADV_DONTNEED` the evicted pages, coalescing runs.
fn discard(sh: &Shared<'_>, v: &mut [u64]) {
    v.sort_unstable();
    let mut i = 0;
    while let Some(&start) = v.get(i) {
        let mut j = i + 1;
        while v.get(j) == Some(&(start + (j - i) as u64)) {
            j += 1;
        }
        // SAFETY: discarding whole pages of our own region whose contents
        // were stored; the next access faults into the handler.
        unsafe {
            libc::madvise(
                sh.page_ptr(start).cast(),
                (j - i) * PAGE,
                libc::MADV_DONTNEED,
            )
        };
        i = j;
    }
}

fn worker(sh: &Shared<'_>, t: u32) -> Vec<u32> {
    let tn = u64::from(sh.cfg.threads);
    let t64 = u64::from(t);
    let mine = (sh.pages - t64).div_ceil(tn);
    let mut ver = vec![0u32; mine as usize];
    let mut expect = vec![0u8; PAGE];
    let mut got = vec![0u8; PAGE];
    let mut lat = Vec::new();
    let mut rng = Rng::new(sh.cfg.workload.seed ^ (t64 << 32) ^ 0x7715);
    let w = sh.cfg.workload;
    let batch_wait = || {
        while sh.resident.load(Relaxed) + BATCH * tn > sh.budget && !sh.failed.load(Relaxed) {
            std::thread::sleep(Duration::from_micros(100));
        }
    };
    // Phase 1: fill every page (version 0).
    let mut l = 0;
    while l < mine && !sh.failed.load(Relaxed) {
        batch_wait();
        let _g = sh.gate.read().unwrap_or_else(|p| p.into_inner());
        for _ in 0..BATCH {
            if l >= mine {
                break;
            }
            let p = t64 + l * tn;
            w.fill(p, 0, &mut expect);
            sh.refbit[p as usize].store(1, Relaxed);
            // SAFETY: page `p` is ours (p % threads == t) and in the region;
            // the gate's read side keeps the evictor out.
            unsafe { std::ptr::copy_nonoverlapping(expect.as_ptr(), sh.page_ptr(p), PAGE) };
            l += 1;
        }
        sh.progress.fetch_add(BATCH.min(mine), Relaxed);
    }
    let check = |p: u64, v: u32, lat: &mut Vec<u32>, got: &mut Vec<u8>, expect: &mut Vec<u8>| {
        w.fill(p, v, expect);
        sh.refbit[p as usize].store(1, Relaxed);
        let swapped = sh.state[p as usize].load(Relaxed) == SWAPPED;
        let t0 = Instant::now();
        // SAFETY: as above: our page, the evictor is held off.
        unsafe { std::ptr::read_volatile(sh.page_ptr(p)) };
        if swapped {
            lat.push(t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
        }
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(sh.page_ptr(p), got.as_mut_ptr(), PAGE) };
        sh.verified.fetch_add(1, Relaxed);
        if got != expect {
            sh.verify_fail.fetch_add(1, Relaxed);
        }
    };
    // Phase 2: skewed reads and writes.
    let my_ops = sh.cfg.ops / tn + u64::from(t64 < sh.cfg.ops % tn);
    let mut done = 0;
    while done < my_ops && !sh.failed.load(Relaxed) {
        batch_wait();
        let _g = sh.gate.read().unwrap_or_else(|p| p.into_inner());
        let n = BATCH.min(my_ops - done);
        for _ in 0..n {
            let l = w.pick(&mut rng, mine, sh.cfg.hot_share);
            let p = t64 + l * tn;
            check(p, ver[l as usize], &mut lat, &mut got, &mut expect);
            if rng.pct(sh.cfg.write_pct) {
                ver[l as usize] += 1;
                w.fill(p, ver[l as usize], &mut expect);
                // SAFETY: as above.
                unsafe { std::ptr::copy_nonoverlapping(expect.as_ptr(), sh.page_ptr(p), PAGE) };
            }
        }
        done += n;
        sh.progress.fetch_add(n, Relaxed);
    }
    // Phase 3: read every page back.
    let mut l = 0;
    while l < mine && !sh.failed.load(Relaxed) {
        batch_wait();
        let _g = sh.gate.read().unwrap_or_else(|p| p.into_inner());
        let end = (l + BATCH).min(mine);
        while l < end {
            check(
                t64 + l * tn,
                ver[l as usize],
                &mut lat,
                &mut got,
                &mut expect,
            );
            l += 1;
        }
        sh.progress.fetch_add(BATCH, Relaxed);
    }
    lat
}
