//! The report command: a short run of the side-by-side comparison that
//! writes `benches/RESULTS.md` (medians, each peer's ratio to vswap, memory
//! per live slot, the machine and the date).
//!
//! ```text
//! cargo run --release -p vswap-benches --bin report [-- --out PATH] [--quick]
//! ```
//!
//! `--quick` takes 5 samples of ~1 ms and one batch per batch-free row: a
//! check that the command works, not figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vswap_benches::count::{Counting, live_bytes};
use vswap_benches::cycle::{self, CYCLE_DEVICE_SLOTS, PageClass, VswapCycle, v5_cycle};
use vswap_benches::peers::{Full, HashMapPeer, MutexVec, Slab, Word};
use vswap_benches::swaptable::SwapTable;
use vswap_benches::thp;
use vswap_benches::v5::{V5Map, V5Phys};
use vswap_benches::vswap::Vswap;
use vswap_benches::work::{self, LogBench};
use vswap_benches::{Rng, SwapSlots, for_each_batch_impl, for_each_impl};
use vswap_core::Ctx;

#[global_allocator]
static ALLOC: Counting = Counting;

/// Implementations in column order.
const IMPLS: [&str; 6] = [
    "vswap",
    "v5",
    "swap_table",
    "sharded_slab",
    "mutex_vec",
    "hashbrown",
];
/// Samples per timing (median taken).
const SAMPLES: usize = 21;
/// Target time of one sample (short, so that the median drops samples that
/// other processes' time slices fell into).
const SAMPLE_TIME: Duration = Duration::from_millis(5);
/// Samples of a batch free (each frees 1,000,000 slots).
const BATCH_SAMPLES: usize = 5;
/// `--quick`: a reduced run (5 samples of ~1 ms, one batch).
static QUICK: AtomicBool = AtomicBool::new(false);

fn quick() -> bool {
    QUICK.load(Ordering::Relaxed)
}
fn samples() -> usize {
    if quick() { 5 } else { SAMPLES }
}
fn sample_time() -> Duration {
    if quick() {
        Duration::from_millis(1)
    } else {
        SAMPLE_TIME
    }
}
fn batch_samples() -> usize {
    if quick() { 1 } else { BATCH_SAMPLES }
}
/// Live slots of the memory measurements.
const MEM_SLOTS: usize = 1_000_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median nanoseconds per iteration of `f(iters)`, with `iters` calibrated
/// so that one sample takes about [`SAMPLE_TIME`].
fn time(mut f: impl FnMut(u64) -> Duration) -> f64 {
    let mut iters = 1000u64;
    loop {
        let d = f(iters);
        if d >= sample_time() / 4 || iters >= 1 << 30 {
            let per = d.as_secs_f64() / iters as f64;
            iters = ((sample_time().as_secs_f64() / per.max(1e-12)) as u64).max(1);
            break;
        }
        iters *= 4;
    }
    median(
        (0..samples())
            .map(|_| f(iters).as_secs_f64() * 1e9 / iters as f64)
            .collect(),
    )
}

/// One row of the speed table: a median per implementation (None: n/a).
struct Row {
    name: String,
    note: &'static str,
    ns: [Option<f64>; IMPLS.len()],
}

impl Row {
    fn new(name: impl Into<String>, note: &'static str) -> Self {
        Self {
            name: name.into(),
            note,
            ns: [None; IMPLS.len()],
        }
    }
    fn set(&mut self, imp: &str, ns: f64) {
        if let Some(i) = IMPLS.iter().position(|x| *x == imp) {
            self.ns[i] = Some(ns);
        }
        eprintln!("{:<28} {:<13} {:>10.2} ns", self.name, imp, ns);
    }
    fn get(&self, imp: &str) -> Option<f64> {
        IMPLS
            .iter()
            .position(|x| *x == imp)
            .and_then(|i| self.ns[i])
    }
}

fn speed() -> Vec<Row> {
    let mut rows = Vec::new();
    let mut r = Row::new("floor: one locked RMW", "the machine's atomic floor");
    r.set("vswap", time(work::floor_rmw));
    rows.push(r);
    let mut r = Row::new(
        "floor: 2 threads, one RMW each",
        "wall time; equals the row above when 2 CPUs are free",
    );
    r.set("vswap", time(work::floor_rmw_two_threads));
    rows.push(r);
    let mut r = Row::new(
        "floor: read-side section (userspace epoch)",
        "enter + leave one section of the default reclamation (what every map call's Pin pays in userspace)",
    );
    r.set("vswap", time(work::floor_section));
    rows.push(r);
    for order in [0u32, 4] {
        let mut r = Row::new(format!("order{order}_one_cpu"), "alloc + free, one CPU");
        for_each_impl!(order, |name, m| {
            r.set(name, time(|i| work::one_cpu(m, order, i)))
        });
        rows.push(r);
        let mut r = Row::new(
            format!("order{order}_two_threads"),
            "wall time of 2 threads each doing a pair",
        );
        for_each_impl!(order, |name, m| {
            r.set(name, time(|i| work::two_threads(m, order, i)))
        });
        rows.push(r);
        let mut r = Row::new(
            format!("order{order}_other_cpu_free"),
            "CPU 0 allocates while CPU 1 frees: wall time per pair",
        );
        for_each_impl!(order, |name, m| {
            r.set(name, time(|i| work::other_cpu_free(m, order, i)))
        });
        rows.push(r);
    }
    let mut same = Row::new("order0_free_only/same_cpu", "free alone, allocated here");
    let mut other = Row::new(
        "order0_free_only/other_cpu",
        "free alone, allocated on another CPU",
    );
    for_each_impl!(0, |name, m| {
        same.set(name, time(|i| work::free_only(m, 0, i)));
        other.set(name, time(|i| work::free_only(m, 1, i)));
    });
    rows.push(same);
    rows.push(other);
    let mut r = Row::new("dup_put", "add and drop one swap count");
    for_each_impl!(0, |name, m| {
        let h = work::live_slot(m);
        r.set(name, time(|i| work::dup_put(m, h, i)));
    });
    rows.push(r);
    let mut r = Row::new("lookup", "read a slot's descriptor");
    for_each_impl!(0, |name, m| {
        let h = work::live_slot(m);
        r.set(name, time(|i| work::lookup(m, h, i)));
    });
    rows.push(r);
    let mut r = Row::new("writeout (per transition)", "None->Zero->Same->Phys->None");
    for_each_impl!(0, |name, m| {
        let h = work::live_slot(m);
        r.set(name, time(|i| work::writeout(m, h, i)) / 4.0);
    });
    rows.push(r);
    let mut r = Row::new(
        "batch free, zero-backed (per slot)",
        "1,000,000 slots with one count each",
    );
    for_each_batch_impl!(|name, make| {
        let v = (0..batch_samples())
            .map(|_| work::batch_zero(make, 1).as_secs_f64() * 1e9 / work::BATCH_SLOTS as f64)
            .collect();
        r.set(name, median(v));
    });
    rows.push(r);
    let mut r = Row::new(
        "batch free, physical-backed (per slot)",
        "as above, each slot holding a device slot, freed too",
    );
    for (name, f) in [
        ("vswap", work::batch_phys_vswap as fn(u64) -> Duration),
        ("v5", work::batch_phys_v5),
        ("swap_table", work::batch_phys_swap_table),
    ] {
        let v = (0..batch_samples())
            .map(|_| f(1).as_secs_f64() * 1e9 / work::BATCH_SLOTS as f64)
            .collect();
        r.set(name, median(v));
    }
    rows.push(r);
    let dev_slots = 1 << 18;
    let mut r = Row::new("device order0 alloc+free", "physical device, empty");
    let d = work::vswap_device(dev_slots);
    r.set("vswap", time(|i| work::phys_pair(&d, 0, i)));
    let d = V5Phys::new(dev_slots, 2);
    r.set("v5", time(|i| work::phys_pair(&d, 0, i)));
    let d = work::SwapTableDevice::new(dev_slots);
    r.set("swap_table", time(|i| work::phys_pair(&d, 0, i)));
    rows.push(r);
    let mut r = Row::new(
        "device order0 alloc+free, fragmented",
        "after work::fragment",
    );
    let d = work::vswap_device(dev_slots);
    work::fragment(&d, dev_slots, 7);
    r.set("vswap", time(|i| work::phys_pair(&d, 0, i)));
    let d = V5Phys::new(dev_slots, 2);
    work::fragment(&d, dev_slots, 7);
    r.set("v5", time(|i| work::phys_pair(&d, 0, i)));
    let d = work::SwapTableDevice::new(dev_slots);
    work::fragment(&d, dev_slots, 7);
    r.set("swap_table", time(|i| work::phys_pair(&d, 0, i)));
    rows.push(r);
    rows
}

/// Median ns per end-to-end cycle: `[vswap, swap_table, v5]` per class in
/// [`PageClass::ALL`] order.
fn cycles() -> Vec<(PageClass, [f64; 3])> {
    let vs = VswapCycle::new(CYCLE_DEVICE_SLOTS, false);
    let st = SwapTable::new(CYCLE_DEVICE_SLOTS, 2);
    let v5 = v5_cycle(CYCLE_DEVICE_SLOTS);
    PageClass::ALL
        .iter()
        .map(|&class| {
            let t = [
                time(|i| cycle::cycle(&vs, class, i)),
                time(|i| cycle::cycle(&st, class, i)),
                time(|i| cycle::cycle(&v5, class, i)),
            ];
            eprintln!(
                "cycle {:<12} vswap {:>8.2} ns  swap_table {:>8.2} ns  v5 {:>8.2} ns",
                class.name(),
                t[0],
                t[1],
                t[2]
            );
            (class, t)
        })
        .collect()
}

/// Bytes per live slot at [`MEM_SLOTS`] live and after freeing a random half.
#[derive(Clone, Copy)]
struct Mem {
    full: f64,
    half: f64,
}

/// Measure an implementation: `make` it, allocate [`MEM_SLOTS`] order-0
/// slots on 2 CPUs (calling `extra(m, h, i)` on each), then free a random
/// half. Counts every heap byte made from `make` on.
fn mem<T: SwapSlots>(make: impl FnOnce() -> T, extra: impl Fn(&T, u64, usize)) -> Mem {
    let mut hs: Vec<u64> = Vec::with_capacity(MEM_SLOTS);
    let before = live_bytes();
    let m = make();
    for i in 0..MEM_SLOTS {
        let h = m
            .alloc(0, (i % 2) as u32)
            .expect("room for the memory test");
        extra(&m, h, i);
        hs.push(h);
    }
    let full = (live_bytes() - before) as f64 / MEM_SLOTS as f64;
    Rng(3).shuffle(&mut hs);
    for (i, &h) in hs.iter().take(MEM_SLOTS / 2).enumerate() {
        m.cache_clear(h, 1, (i % 2) as u32);
    }
    let left = MEM_SLOTS - MEM_SLOTS / 2;
    let half = (live_bytes() - before) as f64 / left as f64;
    drop(m);
    Mem { full, half }
}

/// Device memory: a device of [`MEM_SLOTS`] + 1 slots, all used, then a
/// random half freed.
fn mem_dev<D: work::PhysSlots>(make: impl FnOnce() -> D) -> Mem {
    let mut hs: Vec<u64> = Vec::with_capacity(MEM_SLOTS);
    let before = live_bytes();
    let d = make();
    for i in 0..MEM_SLOTS {
        hs.push(
            d.alloc(0, (i % 2) as u32, i as u64 + 1)
                .expect("room on the device"),
        );
    }
    let full = (live_bytes() - before) as f64 / MEM_SLOTS as f64;
    Rng(5).shuffle(&mut hs);
    for &h in hs.iter().take(MEM_SLOTS / 2) {
        d.free(h, 1);
    }
    let half = (live_bytes() - before) as f64 / (MEM_SLOTS - MEM_SLOTS / 2) as f64;
    Mem { full, half }
}

struct MemRow {
    info: &'static str,
    imp: &'static str,
    what: &'static str,
    m: Mem,
}

/// Heap bytes of an empty vswap map of 2^32 slots (default geometry), by
/// the counting allocator and by the map's provider.
fn empty_map() -> (i64, u64) {
    let before = live_bytes();
    let m = Vswap::new();
    let heap = live_bytes() - before;
    let provider = m.map.provider().bytes_in_use();
    drop(m);
    (heap, provider)
}

fn memory() -> (Vec<MemRow>, f64) {
    let mut rows = Vec::new();
    let mut push = |info, imp, what, m: Mem| {
        eprintln!(
            "{info:<26} {imp:<13} {:>7.3} B/slot, half {:>7.3}",
            m.full, m.half
        );
        rows.push(MemRow { info, imp, what, m });
    };
    let cookie = |i: usize| 0x1000 + i as u64 * 64;
    // Core word alone.
    push(
        "core word alone",
        "vswap",
        "core word",
        mem(Vswap::new, |_, _, _| {}),
    );
    // Cross-check through the provider's own accounting.
    let provider = {
        let m = Vswap::new();
        for i in 0..MEM_SLOTS {
            m.alloc(0, (i % 2) as u32).expect("room");
        }
        m.map.provider().bytes_in_use() as f64 / MEM_SLOTS as f64
    };
    push(
        "core word alone",
        "swap_table",
        "8-byte word (count + cache folio or shadow), cluster structs, zero bitmap; device sized to the live slots",
        mem(|| SwapTable::new(MEM_SLOTS as u64 + 1, 2), |_, _, _| {}),
    );
    push(
        "core word alone",
        "sharded_slab",
        "`Slab<AtomicU64>`",
        mem(Slab::<Word>::new, |_, _, _| {}),
    );
    push(
        "core word alone",
        "mutex_vec",
        "8-byte table + free list, sized to the live slots",
        mem(|| MutexVec::<Word>::new(MEM_SLOTS as u32 + 1), |_, _, _| {}),
    );
    push(
        "core word alone",
        "hashbrown",
        "`HashMap<u32, AtomicU64>`",
        mem(HashMapPeer::<Word>::new, |_, _, _| {}),
    );
    // Core + cache word + memcg.
    let vs_extra = |id: fn(usize) -> u16| {
        move |m: &Vswap, h: u64, i: usize| {
            m.map
                .cache_store(h as u32, cookie(i), Ctx::MaySleep)
                .unwrap();
            m.map.set_memcg(h as u32, 0, id(i), Ctx::MaySleep).unwrap();
        }
    };
    push(
        "core + cache + memcg",
        "vswap",
        "cache word, one memcg id per cluster (uniform)",
        mem(Vswap::new, vs_extra(|_| 7)),
    );
    push(
        "core + cache + memcg",
        "vswap",
        "cache word, a memcg id per slot (2-byte table)",
        mem(Vswap::new, vs_extra(|i| (i % 1000) as u16)),
    );
    push(
        "core + cache + memcg",
        "v5",
        "24-byte descriptor",
        mem(
            || V5Map::new(1 << 21, 2),
            |m, h, i| {
                m.cache_store(h, cookie(i));
                m.set_memcg(h, (i % 1000) as u16);
            },
        ),
    );
    push(
        "core + cache + memcg",
        "sharded_slab",
        "`Slab<{word, cache, memcg}>`",
        mem(Slab::<Full>::new, |m, h, i| {
            m.set_extra(h, cookie(i), (i % 1000) as u16)
        }),
    );
    push(
        "core + cache + memcg",
        "mutex_vec",
        "24-byte table + free list, sized to the live slots",
        mem(
            || MutexVec::<Full>::new(MEM_SLOTS as u32 + 1),
            |m, h, i| m.set_extra(h, cookie(i), (i % 1000) as u16),
        ),
    );
    push(
        "core + cache + memcg",
        "hashbrown",
        "`HashMap<u32, {word, cache, memcg}>`",
        mem(HashMapPeer::<Full>::new, |m, h, i| {
            m.set_extra(h, cookie(i), (i % 1000) as u16)
        }),
    );
    // Reverse map per used device slot.
    push(
        "reverse map (device)",
        "vswap",
        "4-byte owner per device slot",
        mem_dev(|| work::vswap_device(MEM_SLOTS as u64 + 1)),
    );
    push(
        "reverse map (device)",
        "v5",
        "8-byte owner per device slot",
        mem_dev(|| V5Phys::new(MEM_SLOTS as u64 + 1, 2)),
    );
    (rows, provider)
}

fn machine() -> String {
    let cpu = std::process::Command::new("lscpu")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("Model name:"))
                .map(|l| l.trim_start_matches("Model name:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|k| k.parse::<u64>().ok())
                })
        })
        .map_or_else(String::new, |kb| {
            format!(", {:.0} GiB", kb as f64 / (1 << 20) as f64)
        });
    format!("{cpu}, {cpus} CPUs{mem}")
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// This process's nice value (field 19 of `/proc/self/stat`).
fn nice() -> String {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')').map(|(_, r)| r.to_string())?;
            rest.split_whitespace().nth(16).map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn fmt_ns(x: Option<f64>) -> String {
    match x {
        Some(v) if v >= 1e5 => format!("{:.2} ms", v / 1e6),
        Some(v) if v >= 1e3 => format!("{:.2} us", v / 1e3),
        Some(v) => format!("{v:.2} ns"),
        None => "n/a".into(),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// Allocators of the mTHP fallback replay, in column order.
const THP_ALLOCS: [&str; 5] = [
    "vswap",
    "v5",
    "first_fit",
    "swap_table",
    "first_fit_old_slot",
];
/// Use levels of the replay: `None` is the test's own fill.
const THP_LEVELS: [Option<u32>; 4] = [None, Some(80), Some(90), Some(95)];
/// Iterations of every replay; the test's fill also runs to
/// [`THP_LONG`] while each run stays within [`THP_BUDGET`].
const THP_ITERS: usize = 100;
/// Iterations of the long runs (the test's fill).
const THP_LONG: usize = 1000;
/// Wall time a long run may take past its first [`THP_ITERS`] iterations.
const THP_BUDGET: Duration = Duration::from_secs(5);

/// How the replay's swap-ins behave: what a swap-in does to the slot, and
/// whether the mTHP area's touches are whole 64 KiB ranges (the test's
/// `-a`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ThpMode {
    swapin: thp::SwapIn,
    aligned: bool,
}

impl ThpMode {
    const fn new(swapin: thp::SwapIn, aligned: bool) -> Self {
        Self { swapin, aligned }
    }

    fn name(self) -> String {
        let touch = if self.aligned {
            "`-a`: 64 KiB ranges"
        } else {
            "4 KiB pages"
        };
        format!("{}, {touch}", self.swapin.name())
    }
}

/// The test's default: 4 KiB swap-ins that free their slot (kernels up to
/// 6.12, or any kernel without large-folio swap-in).
const THP_TEST: ThpMode = ThpMode::new(thp::SwapIn::Free, false);
/// The form the kernel's allocator series published (`-a`).
const THP_ALIGNED: ThpMode = ThpMode::new(thp::SwapIn::Free, true);
/// The test's default touches on Linux 6.13+ with zram (large swap-in).
const THP_LARGE: ThpMode = ThpMode::new(thp::SwapIn::Large, false);

/// Swap-in modes replayed at a use level (`None`: the test's fill).
fn thp_modes(level: Option<u32>) -> &'static [ThpMode] {
    const ALL: [ThpMode; 5] = [
        THP_TEST,
        ThpMode::new(thp::SwapIn::KeepClean, false),
        THP_ALIGNED,
        THP_LARGE,
        ThpMode::new(thp::SwapIn::Large, true),
    ];
    const LEVELS: [ThpMode; 3] = [
        THP_TEST,
        ThpMode::new(thp::SwapIn::KeepClean, false),
        THP_LARGE,
    ];
    if level.is_none() { &ALL } else { &LEVELS }
}

/// One replay of the kernel's mTHP swap allocator test.
struct ThpRun {
    alloc: &'static str,
    small: bool,
    level: Option<u32>,
    mode: ThpMode,
    cfg: thp::Config,
    run: thp::Run,
    secs: f64,
}

impl ThpRun {
    fn long(&self) -> bool {
        self.cfg.iterations > THP_ITERS
    }
}

fn thp_config(small: bool, level: Option<u32>, mode: ThpMode) -> thp::Config {
    let base = level.map_or_else(
        || thp::Config::test(small),
        |pct| thp::Config::at_use(pct, small),
    );
    thp::Config {
        iterations: if level.is_none() { THP_LONG } else { THP_ITERS },
        swapin: mode.swapin,
        aligned: mode.aligned,
        // The swap-cache mode: every touch reads (a write frees the slot, so
        // with the test's writes the mode is the test's own).
        write_pct: if mode.swapin == thp::SwapIn::KeepClean {
            0
        } else {
            100
        },
        ..base
    }
}

fn thp_one(alloc: &str, cfg: &thp::Config) -> (thp::Run, f64) {
    let t = Instant::now();
    // The budget starts when the first THP_ITERS iterations are done;
    // `--quick` stops every run at 10.
    let mut long_from: Option<Instant> = None;
    let more = |done: usize| {
        if quick() {
            return done < 10;
        }
        done < THP_ITERS || long_from.get_or_insert_with(Instant::now).elapsed() < THP_BUDGET
    };
    let slots = cfg.device_slots;
    let run = match alloc {
        "vswap" => thp::run_while(&work::vswap_device(slots), cfg, more),
        "v5" => thp::run_while(&V5Phys::new(slots, 2), cfg, more),
        "first_fit" => thp::run_while(&thp::FirstFit::new(slots), cfg, more),
        "first_fit_old_slot" => {
            let owners = cfg.mthp_folios * thp::FOLIO_PAGES + cfg.small_pages + 1;
            thp::run_while(&thp::FirstFitOldSlot::new(slots, owners), cfg, more)
        }
        _ => thp::run_while(&work::SwapTableDevice::new(slots), cfg, more),
    };
    (run, t.elapsed().as_secs_f64())
}

/// Every replay of the grid, on 2 threads (longest first); returns the runs
/// and the wall time.
fn thp_runs() -> (Vec<ThpRun>, f64) {
    let t = Instant::now();
    let mut jobs = Vec::new();
    for small in [false, true] {
        for level in THP_LEVELS {
            for &mode in thp_modes(level) {
                for alloc in THP_ALLOCS {
                    jobs.push((alloc, small, level, mode));
                }
            }
        }
    }
    // vswap's free-mode runs are the long ones: start them first.
    jobs.sort_by_key(|&(a, _, l, m)| (a != "vswap", m != THP_TEST, l.is_some()));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(&(alloc, small, level, mode)) =
                    jobs.get(next.fetch_add(1, Ordering::Relaxed))
                {
                    let cfg = thp_config(small, level, mode);
                    let (run, secs) = thp_one(alloc, &cfg);
                    eprintln!(
                        "thp {alloc:<10} -s {small:<5} use {:>6.2}% {:<60} {:>4} iterations: \
                         mean {:>6.2}%  last {:>6.2}%  {secs:.2} s",
                        cfg.use_pct(),
                        mode.name(),
                        run.iters.len(),
                        run.mean(run.iters.len()),
                        run.at(run.iters.len()),
                    );
                    let r = ThpRun {
                        alloc,
                        small,
                        level,
                        mode,
                        cfg,
                        run,
                        secs,
                    };
                    done.lock().unwrap().push(r);
                }
            });
        }
    });
    (done.into_inner().unwrap(), t.elapsed().as_secs_f64())
}

/// `mean (last)` over the first `n` iterations of a run; a run that stopped
/// early says where.
fn thp_cell(r: &thp::Run, n: usize) -> String {
    let k = r.iters.len().min(n);
    let stop = if k < n {
        format!(" [stopped at {k}]")
    } else {
        String::new()
    };
    format!("{:.2}% ({:.2}%){stop}", r.mean(k), r.at(k))
}

fn thp_section(w: &mut String, runs: &[ThpRun], wall: f64) {
    let find = |alloc: &str, small: bool, level: Option<u32>, mode: ThpMode| {
        runs.iter()
            .find(|r| r.alloc == alloc && r.small == small && r.level == level && r.mode == mode)
    };
    let _ = writeln!(
        w,
        "\n## mTHP swap-out fallback: the kernel's allocator stress test (issue 14)\n"
    );
    let _ = writeln!(
        w,
        "A slot-level port of `tools/mm/thp_swap_allocator_test.c` (`benches/src/thp.rs`, \
         whose header says what is and is not modelled): a 64 MiB device (16,384 slots, slot 0 \
         the header), a 60 MiB area of 64 KiB folios and, with `-s`, a 4 MiB area of 4 KiB \
         folios; warm-up pageout of both, then per iteration 4,096 random 4 KiB swap-ins of the \
         mTHP area (each splits its folio's swap entries), 256 random 64 KiB `MADV_DONTNEED`s \
         each refaulted as a fresh 64 KiB folio, with `-s` 256 random swap-ins of the small \
         area, and `MADV_PAGEOUT` of everything. Figure: the test's anon swpout fallback ratio, \
         64 KiB folios whose order-4 allocation failed (then split and sent out as 16 order-0 \
         slots) over all 64 KiB swap-outs, per iteration; a cell is the mean over the \
         iterations and, in brackets, the last iteration's. The test expects 0% with or \
         without `-s`. Use: the test's own fill is 93.76% of the usable slots without `-s` \
         and 100.01% with it (one page more than the device holds, which stays resident); \
         the 80/90/95% rows scale both areas (60 : 4) and the per-iteration picks with them, \
         no filler area. Two CPU numbers: the process lands on CPU 0 or 1 at random at every \
         2 MiB of the pageout walk (reclaim's batches). Swap-in: \"freed\" is the test (its \
         touches write, and the kernel frees a written swapped-in page's slot, and every \
         swapped-in slot on zram), on kernels without large-folio swap-in (up to 6.12): a \
         4 KiB touch brings back one 4 KiB page; \"kept while clean\" has every touch read \
         and the page keep its slot in the swap cache, so its next pageout needs none; \
         \"64 KiB folio swap-in (6.13+)\" is the large-folio swap-in that Linux 6.13 added \
         for zram-like devices: a fault in a range that went out whole (16 consecutive slots \
         from a 16-aligned one) brings the whole range back as one 64 KiB folio and frees \
         its run, any other fault one page. Touches: the test's random 4 KiB pages, or its \
         `-a` (256 random 64 KiB ranges written whole), which is how the kernel's allocator \
         series published its runs of the test (`thp_swap_allocator_test -a`, Chris Li's \
         \"mTHP swap allocator base on swap cluster order\" v5, 2024). Allocators: \
         **vswap** (`PhysDevice`), **v5** (`V5Phys`, the v5 baseline's device), **first_fit** \
         (`thp::FirstFit`: a `bitvec` bitmap, lowest naturally aligned free run), \
         **swap_table** (the kernel-design baseline's per-CPU cluster allocator), each with \
         2 CPU numbers, and **first_fit_old_slot** (`thp::FirstFitOldSlot`: first-fit that \
         gives an order-0 allocation the slot its owner held last when that slot is free, \
         so a swapped-in page goes back into its own hole: a check of the mechanism, not a \
         peer). The 100-iteration figures are the first 100 iterations of the same \
         deterministic run (seed 1). The test's fill also runs to {THP_LONG} iterations while \
         a run stays within {} s past its first {THP_ITERS} (\"stopped at k\": the iterations \
         it got to).\n",
        THP_BUDGET.as_secs()
    );
    let _ = writeln!(
        w,
        "| -s | use | swap-in | iterations | {} |",
        THP_ALLOCS.join(" | ")
    );
    let _ = writeln!(w, "|---|---|---|---|{}", "---|".repeat(THP_ALLOCS.len()));
    for small in [false, true] {
        for level in THP_LEVELS {
            for &mode in thp_modes(level) {
                let any = find("vswap", small, level, mode);
                let use_pct = any.map_or(f64::NAN, |r| r.cfg.use_pct());
                let lens: &[usize] = if any.is_some_and(ThpRun::long) {
                    &[THP_ITERS, THP_LONG]
                } else {
                    &[THP_ITERS]
                };
                for &n in lens {
                    let cells: Vec<String> = THP_ALLOCS
                        .iter()
                        .map(|a| {
                            find(a, small, level, mode)
                                .map_or_else(|| "n/a".into(), |r| thp_cell(&r.run, n))
                        })
                        .collect();
                    let _ = writeln!(
                        w,
                        "| {} | {use_pct:.2}%{} | {} | {n} | {} |",
                        if small { "with" } else { "without" },
                        if level.is_none() { " (the test's)" } else { "" },
                        mode.name(),
                        cells.join(" | ")
                    );
                }
            }
        }
    }
    let secs = |alloc: &str| {
        runs.iter()
            .filter(|r| r.alloc == alloc)
            .map(|r| r.secs)
            .sum::<f64>()
    };
    let _ = writeln!(
        w,
        "\nReplay time: {wall:.1} s wall on 2 threads; per allocator (CPU seconds, all its \
         runs): {}.\n",
        THP_ALLOCS
            .iter()
            .map(|a| format!("{a} {:.1} s", secs(a)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Why: the counters behind the ratio, per iteration.
    let free = THP_TEST;
    let per = |alloc: &str, small: bool| {
        find(alloc, small, None, free).map(|r| {
            let n = r.run.iters.len().min(THP_ITERS);
            let c = r.run.sum(n);
            let k = n.max(1) as f64;
            (
                (c.swpout + c.fallback) as f64 / k,
                c.fallback as f64 / k,
                c.runs_freed as f64 / k,
                c.broke as f64 / k,
                c.small as f64 / k,
                c.own_slot as f64 / k,
            )
        })
    };
    let _ = writeln!(
        w,
        "Where the fallbacks come from (the test's fill, freed at swap-in, means per \
         iteration over the first {THP_ITERS}): 64 KiB swap-outs (attempts), fallbacks, \
         naturally aligned 16-slot runs that a free (a swap-in's or a DONTNEED's) left wholly \
         free, order-0 slots placed in a wholly free 16-slot run (breaking it up), order-0 \
         slots in all, and those that went back to the page that held that slot last.\n"
    );
    let _ = writeln!(
        w,
        "| allocator | -s | 64 KiB swap-outs | fallbacks | runs left wholly free | order-0 slots breaking a free run | order-0 slots | of which the page's own old slot |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
    for small in [false, true] {
        for a in THP_ALLOCS {
            if let Some((t, f, rf, b, o, own)) = per(a, small) {
                let _ = writeln!(
                    w,
                    "| {a} | {} | {t:.1} | {f:.1} | {rf:.1} | {b:.1} | {o:.0} | {own:.1} |",
                    if small { "with" } else { "without" }
                );
            }
        }
    }
    let why = |small: bool| {
        let old = find("first_fit_old_slot", small, None, free)
            .map_or(f64::NAN, |r| r.run.mean(r.run.iters.len().min(THP_ITERS)));
        per("vswap", small).map_or_else(String::new, |(t, _, rf, b, o, own)| {
            format!(
                "per iteration {rf:.1} aligned 16-slot runs come wholly free for {t:.0} \
                 64 KiB folios, and only {b:.1} of {o:.0} order-0 slots break up a free run: \
                 the order-0 slots fill holes, but a swapped-in page goes back out into some \
                 other hole than its own ({own:.1} got their old slot back), so a 64 KiB range's pages scatter over the device \
                 and its DONTNEED frees scattered slots, not a run (first-fit alike); giving \
                 a swapped-in page its old slot back when free (first_fit_old_slot: \
                 {old:.2}%), or keeping it while clean (0% above), keeps the runs whole"
            )
        })
    };
    let _ = writeln!(
        w,
        "Policy changes of issue 14 item 2, measured on this replay (test's fill, vswap) and \
         on the fragmentation figure above when they landed (2026-12-03): (1) a device's \
         order-0 steal takes a hole in the lowest-numbered *fragmented* cluster before a slot \
         of a nonfull one (the kernel's order, frag before nonfull): `-a -s` 3.46% -> 0.09% \
         over 100 iterations, other rows within 0.4 points, fragmentation 58.48% unchanged; \
         (2) a device request of order > 0 that finds no cluster of its order takes a free \
         run from a nonfull cluster of another order (at most 8 clusters a call): at each \
         failing order-4 allocation of `-a` without `-s` the only wholly free runs were in \
         order-0 clusters that frees had mostly emptied (one held 30 of its 32 runs free); \
         `-a` without `-s` over 1000 iterations 0.03% -> 0.00%, fragmentation unchanged. \
         Both together, on the device test's fragmentation table (`FRAG_UTIL=90,95 cargo \
         test -p vswap-alloc --features std --release --test device fragmentation`, mix B): \
         99.13% -> 99.30% order-4 success at 90% use, 76.15% -> 76.20% at 95%. \
         An earlier experiment (order 0 taking the lowest listed cluster before a free one) \
         made the fragmentation figure worse and was not kept.\n"
    );
    // Issue 14 targets (vswap), in each form of the test a kernel runs.
    let _ = writeln!(w, "\n### Targets (issue 14)\n");
    let _ = writeln!(
        w,
        "vswap's `PhysDevice`, in the three forms of the test that kernels run: its default \
         4 KiB touches on Linux 6.13+ with zram (large-folio swap-in), the `-a` form the \
         kernel's series published, and its default on kernels without large-folio swap-in \
         (up to 6.12); a ratio target is judged on the mean over the iterations (the highest \
         iteration is shown too).\n"
    );
    let _ = writeln!(w, "| operation | target | measured | | why (missed rows) |");
    let _ = writeln!(w, "|---|---|---|---|---|");
    let mut row = |op: String, target: &str, got: String, ok: Option<bool>, why: &str| {
        let (v, why) = match ok {
            Some(true) => ("met", ""),
            Some(false) => ("**missed**", why),
            None => ("n/a", why),
        };
        let _ = writeln!(w, "| {op} | {target} | {got} | {v} | {why} |");
    };
    let unfit = |small: bool| {
        let mean = |a: &str| {
            find(a, small, None, free)
                .map_or(f64::NAN, |r| r.run.mean(r.run.iters.len().min(THP_ITERS)))
        };
        format!(
            "no allocator that does not give a swapped-in page its old slot gets near 0% in \
             this form (v5 {:.2}%, swap_table {:.2}%, first-fit {:.2}%): about half the mTHP \
             area's pages are split at any time, each leaving a hole in its range's run that \
             only its own page can refill without breaking another range's run; {}",
            mean("v5"),
            mean("swap_table"),
            mean("first_fit"),
            why(small)
        )
    };
    let forms = [
        (THP_LARGE, "default touches, 6.13+ swap-in"),
        (THP_ALIGNED, "`-a`"),
        (THP_TEST, "default touches, 4 KiB swap-in"),
    ];
    for ((mode, form), small) in forms
        .iter()
        .flat_map(|&f| [false, true].map(move |s| (f, s)))
    {
        let lim = if small { 1.0 } else { 0.0 };
        let Some(r) = find("vswap", small, None, mode) else {
            continue;
        };
        for n in [THP_ITERS, THP_LONG] {
            let k = r.run.iters.len().min(n);
            let (mean, max) = (r.run.mean(k), r.run.max(k));
            let ok = if mean > lim {
                Some(false)
            } else if k < n {
                None
            } else {
                Some(true)
            };
            let ran = if k < n {
                format!(" (stopped at {k} of {n}: time budget)")
            } else {
                String::new()
            };
            row(
                format!(
                    "mTHP fallback, test's fill, {form}, {} -s, {n} iterations",
                    if small { "with" } else { "without" }
                ),
                if small { "<= 1%" } else { "0%" },
                format!("mean {mean:.2}%, highest {max:.2}%{ran}"),
                ok,
                &if mode == THP_TEST {
                    unfit(small)
                } else {
                    thp_gap(runs, small, mode)
                },
            );
        }
    }
    for (mode, form) in [forms[0], forms[2]] {
        for small in [false, true] {
            let (Some(v), Some(f)) = (
                find("vswap", small, Some(90), mode),
                find("first_fit", small, Some(90), mode),
            ) else {
                continue;
            };
            let (a, b) = (v.run.mean(THP_ITERS), f.run.mean(THP_ITERS));
            let got = if a == 0.0 && b == 0.0 {
                "both 0.00%".to_string()
            } else {
                format!("{a:.2}% vs first-fit {b:.2}% = {:.2}x", a / b)
            };
            row(
                format!(
                    "mTHP fallback, 90% use, {form}, {} -s, {THP_ITERS} iterations",
                    if small { "with" } else { "without" }
                ),
                "<= 0.5x first-fit's",
                got,
                Some(a == 0.0 || a <= 0.5 * b),
                "the same mechanism as at the test's fill (above): both allocators put the \
                 order-0 slots into holes, neither gives a swapped-in page its old slot back",
            );
        }
    }
}

/// Why vswap misses a target in the large-swap-in or `-a` form: the
/// counters of its run beside first-fit's.
fn thp_gap(runs: &[ThpRun], small: bool, mode: ThpMode) -> String {
    let find = |alloc: &str| {
        runs.iter()
            .find(|r| r.alloc == alloc && r.small == small && r.level.is_none() && r.mode == mode)
    };
    let (Some(v), Some(f)) = (find("vswap"), find("first_fit")) else {
        return String::new();
    };
    let n = v.run.iters.len().min(THP_ITERS);
    let (c, k) = (v.run.sum(n), n.max(1) as f64);
    let late = v.run.mean(n) > 0.0
        && v.run
            .iters
            .get(n / 2..n)
            .is_some_and(|t| t.iter().all(|c| c.fallback == 0));
    format!(
        "{:.1} fallbacks of {:.1} 64 KiB swap-outs per iteration, {:.1} order-0 slots \
         breaking a wholly free run; first-fit {:.2}%{}",
        c.fallback as f64 / k,
        (c.fallback + c.swpout) as f64 / k,
        c.broke as f64 / k,
        f.run.mean(n),
        if late {
            "; the fallbacks are all in the first half of the run"
        } else {
            ""
        }
    )
}

fn main() {
    let mut out = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().expect("--out PATH").into(),
            "--quick" => QUICK.store(true, Ordering::Relaxed),
            _ => {
                eprintln!("usage: report [--out PATH] [--quick]");
                std::process::exit(2);
            }
        }
    }
    let started = Instant::now();
    let when = date();
    let host = machine();
    let load0 = loadavg();
    let rows = speed();
    let cyc = cycles();
    let (mem_rows, provider) = memory();
    let (empty_heap, empty_provider) = empty_map();
    let frag_v = work::fragmentation(&work::vswap_device(1 << 18), 1 << 18);
    let frag_5 = work::fragmentation(&V5Phys::new(1 << 18, 2), 1 << 18);
    let mut lb = LogBench::new();
    let _ = lb.run(20);
    let (gc_t, gc_n) = lb.run(200);
    let gc_ns = gc_t.as_secs_f64() * 1e9 / gc_n.max(1) as f64;
    let (thp_runs, thp_wall) = thp_runs();

    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# vswap side by side: results\n");
    let _ = writeln!(
        w,
        "Written by `cargo run --release -p vswap-benches --bin report` (a short run: \
         median of {} samples of ~{} ms; batch frees: median of {} \
         batches{}). The full criterion suite is `cargo bench -p vswap-benches`.\n",
        samples(),
        sample_time().as_millis(),
        batch_samples(),
        if quick() {
            "; **`--quick` run: a check that the command works, not figures**"
        } else {
            ""
        }
    );
    let _ = writeln!(w, "- Machine: {host}");
    let _ = writeln!(w, "- Date: {when}");
    let _ = writeln!(
        w,
        "- Load average (1, 5, 15 min) at the start: {load0}; at the end: {}; nice {}",
        loadavg(),
        nice()
    );
    let _ = writeln!(
        w,
        "- Report run time: {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        w,
        "Implementations (all behind `vswap_benches::SwapSlots`): **vswap** (`VswapMap`, 8-byte \
         lock-free core word); **v5** (baseline after the vswap v5 design: 24-byte descriptors, \
         512-slot clusters each behind a spinlock taken by every operation including frees, \
         per-CPU cluster cache); **sharded_slab** (crates.io `sharded-slab`); **mutex_vec** \
         (`Mutex<Vec>` free list over a preallocated descriptor table); **hashbrown** \
         (spin-locked `hashbrown::HashMap` slot -> descriptor); **swap_table** (baseline \
         after the kernel's current design, no virtual layer: see below). Peers store the \
         core word alone in the speed runs; v5 always writes its 24-byte descriptor.\n"
    );
    let _ = writeln!(
        w,
        "**swap_table** (`benches/src/swaptable.rs`, written from the published design of \
         `mm/swap_table.h` / `mm/swapfile.c`, Linux 6.18+): the swap device is the only slot \
         space; per 512-slot cluster a table of one 8-byte atomic word per slot holding the \
         swap count, the cache flags and the swap-cache folio or workingset shadow; writers \
         (alloc, free, dup/put, cache changes) take the per-cluster spinlock and store the \
         word; lookups are one atomic load, no lock. Allocation is the kernel's per-CPU \
         cluster scheme (a per-CPU next-slot hint per order; nonfull / free / frag lists \
         under one global lock on refill). Tables are made on first use and never freed, \
         standing in for RCU-delayed freeing (whose reader side, `rcu_read_lock`, costs no \
         atomics and so is not modelled). Every swap-out spends a device slot, whatever the \
         page holds; a zero page also sets one bit of a per-device bitmap (an atomic bit \
         operation, as `si->zeromap`), a zswap or same-filled page stores one 8-byte side \
         entry keyed by the slot: the minimum the kernel's zswap xarray costs (its lock and \
         node walk are not modelled, which favours the baseline). Memory: the 8-byte word, \
         the cluster structs and the zero bitmap, counted below.\n"
    );
    let _ = writeln!(
        w,
        "**What the vswap figures include.** Every `VswapMap` call that touches a slot \
         table runs inside one read-side section of the host's reclamation (issue 13 item \
         1; it replaced the per-operation pin, a reference taken and dropped on the \
         cluster: two locked RMWs). These figures pay the userspace default \
         (`vswap_core::epoch`, through `StdProvider`): a thread-local access and two plain \
         stores per section, with a compiler fence where the `membarrier` system call is \
         available (it is here), timed alone in the \"read-side section\" floor row. \
         Kernel cost model: the kernel's section is `rcu_read_lock`, free of atomics, \
         modelled as 0 ns; the targets table shows, where the number of sections per \
         operation is known from the code, the figure less that many section costs, as \
         an estimate of the kernel-side figure.\n"
    );
    let _ = writeln!(
        w,
        "## Speed (median time per operation; ratio = peer / vswap, above 1 = vswap faster)\n"
    );
    let _ = writeln!(w, "| benchmark | {} | what |", IMPLS.join(" | "));
    let _ = writeln!(w, "|---|{}---|", "---|".repeat(IMPLS.len()));
    for r in &rows {
        let base = r.get("vswap");
        let cells: Vec<String> = IMPLS
            .iter()
            .map(|imp| {
                let v = r.get(imp);
                match (v, base) {
                    (Some(v), Some(b)) if *imp != "vswap" && b > 0.0 => {
                        format!("{} ({:.2}x)", fmt_ns(Some(v)), v / b)
                    }
                    _ => fmt_ns(v),
                }
            })
            .collect();
        let _ = writeln!(w, "| {} | {} | {} |", r.name, cells.join(" | "), r.note);
    }
    let _ = writeln!(
        w,
        "\nThe floor row is one `lock xadd` on this machine (DESIGN.md section 7's reference \
         machine: 2.2 ns); n/a: the peer has no naturally aligned multi-slot allocation \
         (order 4) or no physical device. Order 4: vswap drops the swap-cache reference of \
         the 16 slots with one `cache_clear_range` call (one pin, one CAS per slot); v5 \
         and the swap table clear all 16 under one cluster lock. The swap table is its own \
         device: its device rows allocate and free its own slots (no reverse map, no \
         virtual owner), and its physical-backed batch free is that device-side free.\n"
    );
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let get = |name: &str, imp: &str| find(name).and_then(|r| r.get(imp)).unwrap_or(f64::NAN);
    let ratio = |name: &str, imp: &str| get(name, imp) / get(name, "vswap");
    let floor = get("floor: one locked RMW", "vswap");
    let one = get("order0_one_cpu", "vswap");
    let scale = 2.0 * one / get("order0_two_threads", "vswap");
    let floor_scale = 2.0 * floor / get("floor: 2 threads, one RMW each", "vswap");
    let other =
        get("order0_free_only/other_cpu", "vswap") / get("order0_free_only/same_cpu", "vswap");
    let bz = get("batch free, zero-backed (per slot)", "vswap");
    let bp = get("batch free, physical-backed (per slot)", "vswap");
    let memget = |info: &str, imp: &str, what_has: &str| {
        mem_rows
            .iter()
            .find(|r| r.info == info && r.imp == imp && r.what.contains(what_has))
            .map_or(
                Mem {
                    full: f64::NAN,
                    half: f64::NAN,
                },
                |r| r.m,
            )
    };
    let core = memget("core word alone", "vswap", "");
    let v16 = memget("core + cache + memcg", "vswap", "uniform");
    let v18 = memget("core + cache + memcg", "vswap", "per slot");
    let v5m = memget("core + cache + memcg", "v5", "");
    let pin = get("floor: read-side section (userspace epoch)", "vswap");
    let inf = |ns: f64| ns / floor;
    // `ns` less `k` sections, when the run allows the estimate: a section
    // has no RMW, so one above 1 F (or an estimate below 0) says the run was
    // too noisy to subtract.
    let plausible = pin <= floor;
    let less_pins = |ns: f64, k: f64| Some(ns - k * pin).filter(|e| plausible && *e > 0.0);
    let no_estimate = format!(
        "no estimate: the read-side section measured {:.2} F, more than one RMW it does not \
         do, or more than the figure (a noisy run)",
        pin / floor
    );
    // Map calls of vswap's cycle that each take one section (from the code:
    // dup, store, cache_clear; lookup, lock, cache_add, put, unlock;
    // cache_clear). The allocation takes none.
    const CYCLE_PINS: f64 = 9.0;
    let _ = writeln!(w, "## End-to-end swap cycle (issue 13)\n");
    let _ = writeln!(
        w,
        "One page's metadata life per backend (`benches/src/cycle.rs`). Swap-out: allocate a \
         slot, dup (the one mapping's count), the writeout decision from a precomputed page \
         class (metadata only: no page scan, no compression, which every design pays alike), \
         store the backend, reclaim (the folio leaves the swap cache, a shadow stays). \
         Swap-in: lookup, lock, add the new folio to the swap cache, put the mapping's count, \
         unlock. Free: drop the cache reference; the slot and its backend are freed. vswap \
         runs through `vswap_core::Engine` with one `PhysDevice` of {CYCLE_DEVICE_SLOTS} \
         slots: a device page gets its slot from `Engine::alloc_phys` and the engine's router \
         frees it when the slot dies; zero, same-filled and zswap pages spend no device slot. \
         v5: its 24-byte descriptor under the cluster lock at every step, and a device slot \
         (8-byte reverse map) only for device pages. swap_table: a device slot for every page \
         (the slot is the data's location), plus the zero bit or the zswap side entry. The \
         folio's own lock is paid alike by every design and left out; the swap table and v5 \
         claim the slot for swap-in with a `SWAP_HAS_CACHE`-style flag under the cluster lock, \
         cleared with the cache reference (their unlock touches no slot state); vswap takes \
         and drops its lock bit. \"less sections\": vswap's figure less {CYCLE_PINS:.0} \
         read-side section costs (its map calls that take one), the kernel-side estimate.\n"
    );
    let _ = writeln!(
        w,
        "| page | vswap | vswap less sections (estimate) | swap_table | v5 | vswap / swap_table | \
         vswap / v5 | device slot spent (vswap / swap_table / v5) |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
    for (class, t) in &cyc {
        let dev = if *class == PageClass::Device {
            "yes / yes / yes"
        } else {
            "no / yes / no"
        };
        let est = less_pins(t[0], CYCLE_PINS).map_or_else(
            || "n/a (noisy run)".to_string(),
            |e| format!("{e:.1} ns ({:.1} F)", inf(e)),
        );
        let _ = writeln!(
            w,
            "| {} | {:.1} ns ({:.1} F) | {est} | {:.1} ns ({:.1} F) | {:.1} ns ({:.1} F) \
             | {:.2}x | {:.2}x | {dev} |",
            class.name(),
            t[0],
            inf(t[0]),
            t[1],
            inf(t[1]),
            t[2],
            inf(t[2]),
            t[0] / t[1],
            t[0] / t[2],
        );
    }
    let cyc_of = |c: PageClass| {
        cyc.iter()
            .find(|(k, _)| *k == c)
            .map_or([f64::NAN; 3], |(_, t)| *t)
    };

    // Issue 13 targets.
    let in_f = |ns: f64, lim: f64| -> (bool, String) {
        let x = ns / floor;
        let over = if x > lim {
            format!(
                ", over by {:.2} F ({:.0}%)",
                x - lim,
                100.0 * (x / lim - 1.0)
            )
        } else {
            String::new()
        };
        (
            x <= lim,
            format!("{x:.2} F = {ns:.2} ns (limit {lim} F{over})"),
        )
    };
    let in_r = |v: f64, base: f64, lim: f64, what: &str| -> (bool, String) {
        let r = v / base;
        let over = if r > lim {
            format!(", over by {:.0}%", 100.0 * (r / lim - 1.0))
        } else {
            String::new()
        };
        (r <= lim, format!("{r:.2}x {what} (limit {lim}x{over})"))
    };
    let pins = |k: f64, ns: f64| {
        let est = less_pins(ns, k).map_or_else(
            || no_estimate.clone(),
            |e| {
                format!(
                    "less the sections {:.2} F (kernel estimate, section = `rcu_read_lock`, no \
                     atomics)",
                    inf(e)
                )
            },
        );
        format!(
            "{k:.0} read-side section(s) x {:.2} F (floor row) = {:.2} F of the {:.2} F; {est}",
            inf(pin),
            k * inf(pin),
            inf(ns),
        )
    };
    let vs_st = |ns: f64, st: f64| {
        less_pins(ns, CYCLE_PINS).map_or_else(
            || no_estimate.clone(),
            |e| {
                format!(
                    "less the sections {e:.1} ns, {:.2}x the swap table (kernel estimate)",
                    e / st
                )
            },
        )
    };
    let _ = writeln!(w, "\n## Targets (issue 13)\n");
    let _ = writeln!(
        w,
        "F = one locked RMW measured in this run (the floor row: {floor:.2} ns). Medians of one \
         run; vswap figures include the userspace read-side section (see above). A target with two \
         conditions is met only if both are.\n"
    );
    let _ = writeln!(w, "| operation | target | measured | | why (missed rows) |");
    let _ = writeln!(w, "|---|---|---|---|---|");
    let mut t13 = |op: &str, target: &str, parts: Vec<(bool, String)>, why: String| {
        if parts.is_empty() {
            // Not measurable: `why` says why.
            let _ = writeln!(w, "| {op} | {target} | n/a | n/a | {why} |");
            return;
        }
        let ok = parts.iter().all(|(o, _)| *o);
        let got: Vec<&str> = parts.iter().map(|(_, s)| s.as_str()).collect();
        let why = if ok { String::new() } else { why };
        let _ = writeln!(
            w,
            "| {op} | {target} | {} | {} | {why} |",
            got.join("; "),
            verdict(ok)
        );
    };
    let v = get("lookup", "vswap");
    t13(
        "lookup",
        "<= 0.5 F, and <= 1.0x the swap table's lockless read",
        vec![
            in_f(v, 0.5),
            in_r(v, get("lookup", "swap_table"), 1.0, "the swap table"),
        ],
        format!(
            "no RMW; {}; then two dependent loads through the table index (its leaf, then the \
             entry holding the table pointer: item 5) before the slot word, and the decoding of \
             the word into an `Entry` (backend, count, flags); the swap table's read is one \
             load of its raw word ({:.2} F)",
            pins(1.0, v),
            inf(get("lookup", "swap_table"))
        ),
    );
    let v = get("order0_one_cpu", "vswap");
    let fo = get("order0_free_only/same_cpu", "vswap");
    t13(
        "order-0 alloc+free, one CPU",
        "<= 3 F, and <= 0.8x v5",
        vec![
            in_f(v, 3.0),
            in_r(v, get("order0_one_cpu", "v5"), 0.8, "v5"),
        ],
        format!(
            "4 locked RMWs from the code: the allocation's CAS adding the slot's reference to \
             its cluster, the claim, the free's word CAS and its `fetch_sub` of the reference \
             (item 2, occupancy off the fast path, would leave 2: not done); the free alone \
             measures {:.2} F (order0_free_only/same_cpu: a `cache_clear` in one section of \
             {:.2} F), so the allocation is about {:.2} F",
            inf(fo),
            inf(pin),
            inf(v - fo)
        ),
    );
    let v = get("dup_put", "vswap");
    t13(
        "dup+put",
        "<= 2.5 F, and <= 0.9x v5",
        vec![in_f(v, 2.5), in_r(v, get("dup_put", "v5"), 0.9, "v5")],
        format!("2 locked RMWs (one word CAS each); {}", pins(2.0, v)),
    );
    let v = get("writeout (per transition)", "vswap");
    t13(
        "store",
        "<= 1.5 F",
        vec![in_f(v, 1.5)],
        format!("1 locked RMW (the word CAS); {}", pins(1.0, v)),
    );
    let v = get("order0_other_cpu_free", "vswap");
    t13(
        "alloc on CPU 0, free on CPU 1",
        "<= 3.5 F, and <= 0.4x v5",
        vec![
            in_f(v, 3.5),
            in_r(v, get("order0_other_cpu_free", "v5"), 0.4, "v5"),
        ],
        format!(
            "wall time of a two-thread pipeline (each side: see the one-CPU rows); a free of a \
             slot allocated on the other CPU measures {:.2} F alone (order0_free_only/other_cpu); \
             two threads of independent RMWs scaled {floor_scale:.2}x in this run",
            inf(get("order0_free_only/other_cpu", "vswap"))
        ),
    );
    let v = get("order4_one_cpu", "vswap");
    t13(
        "order-4 alloc+free, shared CPU numbers",
        "<= 1.5x v5",
        vec![in_r(v, get("order4_one_cpu", "v5"), 1.5, "v5")],
        format!(
            "the free is one `cache_clear_range` call (one read-side section, 16 slot CASes \
             and one `fetch_sub` of the references: 17 locked RMWs, where 16 single-slot \
             frees of {:.1} ns each would be {:.0} ns) of the {v:.0} ns; the allocation is \
             17 more (the CAS adding 16 references, 16 claims), against v5's two lock \
             acquisitions",
            fo,
            16.0 * fo
        ),
    );
    t13(
        "order-4 alloc+free, exclusive-CPU mode",
        "<= 1.0x v5",
        Vec::new(),
        "n/a (mode not implemented)".into(),
    );
    let v = get("batch free, zero-backed (per slot)", "vswap");
    let st = get("batch free, zero-backed (per slot)", "swap_table");
    t13(
        "batch free per slot, zero",
        "<= 1.3 F",
        vec![in_f(v, 1.3)],
        format!(
            "a lock-free free takes each slot's word with a CAS (1 F per slot at least); the swap \
             table takes one cluster lock per run and stores: {:.2} F per slot",
            inf(st)
        ),
    );
    let v = get("batch free, physical-backed (per slot)", "vswap");
    let st = get("batch free, physical-backed (per slot)", "swap_table");
    t13(
        "batch free per slot, physical",
        "<= 1.6 F",
        vec![in_f(v, 1.6)],
        format!(
            "as above, plus the device-side free of each run (the zero-backed row is {:.2} F, so \
             the device side adds {:.2} F per slot); the swap table, whose slot is the device \
             slot: {:.2} F",
            inf(bz),
            inf(v - bz),
            inf(st)
        ),
    );
    let v = get("device order0 alloc+free", "vswap");
    t13(
        "device order-0 alloc+free",
        "<= 2.5 F, and <= 0.8x v5",
        vec![
            in_f(v, 2.5),
            in_r(v, get("device order0 alloc+free", "v5"), 0.8, "v5"),
        ],
        format!(
            "`PhysDevice` pair; the swap table's device pair measures {:.2} F on the same device \
             size; this report does not decompose the device path further",
            inf(get("device order0 alloc+free", "swap_table"))
        ),
    );
    // The cycle's calls that this run also times alone (vswap rows).
    let parts = get("order0_one_cpu", "vswap")
        + get("dup_put", "vswap")
        + get("writeout (per transition)", "vswap")
        + get("lookup", "vswap");
    let parts_note = |cycle_ns: f64, dev: f64| {
        let (sum, what) = if dev > 0.0 {
            (parts + dev, " + the device pair")
        } else {
            (parts, "")
        };
        let rest = if cycle_ns > sum {
            format!(
                "the other {:.0} ns are lock, cache add with the cache word, unlock and the \
                 reclaim's cache clear storing the shadow (4 more map calls; the swap table \
                 keeps folio and shadow in its one word)",
                cycle_ns - sum
            )
        } else {
            "more than the whole cycle in this run (a noisy run)".to_string()
        };
        format!(
            "; of the {cycle_ns:.0} ns, the calls this run also times alone (order-0 pair + \
             dup+put + one store + lookup{what}) sum to {sum:.0} ns; {rest}"
        )
    };
    for class in [PageClass::Zero, PageClass::Same, PageClass::Zswap] {
        let t = cyc_of(class);
        t13(
            &format!("end-to-end cycle, {}", class.name()),
            "faster than the swap table (which spends a device slot)",
            vec![(
                t[0] < t[1],
                format!(
                    "{:.1} ns vs {:.1} ns = {:.2}x ({:.1} F vs {:.1} F)",
                    t[0],
                    t[1],
                    t[0] / t[1],
                    inf(t[0]),
                    inf(t[1])
                ),
            )],
            format!(
                "read-side sections: {CYCLE_PINS:.0} map calls x {:.2} F = {:.1} F; {}{}",
                inf(pin),
                CYCLE_PINS * inf(pin),
                vs_st(t[0], t[1]),
                parts_note(t[0], 0.0)
            ),
        );
    }
    let t = cyc_of(PageClass::Device);
    t13(
        "end-to-end cycle, device-backed",
        "<= 1.2x the swap table",
        vec![in_r(t[0], t[1], 1.2, "the swap table")],
        format!(
            "vswap pays the virtual slot and the device slot (`alloc_phys` + the router's free): \
             the device cycle is {:.0} ns above vswap's zero-page cycle (the device pair alone: \
             {:.0} ns); read-side sections: {CYCLE_PINS:.0} x {:.2} F = {:.1} F; {}{}",
            t[0] - cyc_of(PageClass::Zero)[0],
            get("device order0 alloc+free", "vswap"),
            inf(pin),
            CYCLE_PINS * inf(pin),
            vs_st(t[0], t[1]),
            parts_note(t[0], get("device order0 alloc+free", "vswap"))
        ),
    );
    t13(
        "2 threads",
        ">= 1.8x one thread",
        vec![(
            scale >= 1.8,
            format!("{scale:.2}x (the RMW floor itself: {floor_scale:.2}x)"),
        )],
        format!(
            "two threads of independent RMWs scaled {floor_scale:.2}x in this run: the machine \
             was shared"
        ),
    );
    t13(
        "memory, core word alone",
        "<= 8.2 B/slot",
        vec![(core.full <= 8.2, format!("{:.3} B/slot", core.full))],
        "cluster and directory overhead above the 8-byte word (memory table)".into(),
    );
    t13(
        "memory, core + cache + uniform memcg",
        "<= 16.3 B/slot",
        vec![(v16.full <= 16.3, format!("{:.3} B/slot", v16.full))],
        "cache word and cluster overhead (memory table)".into(),
    );
    t13(
        "memory, empty 2^32 map",
        "<= 16 KiB",
        vec![(
            empty_heap <= 16 << 10,
            format!("{empty_heap} B on the heap ({empty_provider} B through the provider)"),
        )],
        "the directory's top levels and per-CPU state of an empty map".into(),
    );
    let _ = writeln!(
        w,
        "\nThe reclamation's own memory: a retired cluster's grace-period cookie and its \
         retire-FIFO link live in the cluster's directory record (inside the map bytes \
         above; tables waiting for a grace period stay counted until they go back); the \
         userspace epoch keeps one 64-byte record per thread that ever entered a section \
         ({} records in this process: {} B), reused after a thread exits.\n",
        vswap_core::epoch::records(),
        64 * vswap_core::epoch::records()
    );
    let _ = writeln!(w, "## Older targets (issue #6, DESIGN.md section 7)\n");
    let _ = writeln!(w, "| target | measured | |");
    let _ = writeln!(w, "|---|---|---|");
    let mut t = |what: &str, got: String, ok: bool| {
        let _ = writeln!(w, "| {what} | {got} | {} |", verdict(ok));
    };
    let r = ratio("order0_one_cpu", "sharded_slab");
    t(
        "order-0 alloc+free >= 2x faster than sharded-slab",
        format!("{r:.2}x"),
        r >= 2.0,
    );
    let r = ratio("order0_one_cpu", "v5");
    t(
        "order-0 alloc+free >= 1.5x faster than v5, one CPU",
        format!("{r:.2}x"),
        r >= 1.5,
    );
    let r = ratio("order0_other_cpu_free", "v5");
    t(
        "order-0 alloc+free >= 2x faster than v5, 2 threads freeing on the other CPU",
        format!("{r:.2}x"),
        r >= 2.0,
    );
    t(
        "order-0 alloc+free on one CPU <= 10 ns",
        format!("{one:.1} ns ({:.1} RMW floors)", one / floor),
        one <= 10.0,
    );
    t(
        "2 threads >= 1.8x the throughput of 1",
        format!("{scale:.2}x (the RMW floor itself: {floor_scale:.2}x)"),
        scale >= 1.8,
    );
    t(
        "free on another CPU within 1.5x of a same-CPU free",
        format!("{other:.2}x"),
        other <= 1.5,
    );
    t(
        "batch free <= 3 ns per zero-backed slot",
        format!("{bz:.2} ns ({:.2} RMW floors)", bz / floor),
        bz <= 3.0,
    );
    t(
        "batch free <= 5 ns per physical-backed slot (device free included)",
        format!("{bp:.2} ns ({:.2} RMW floors)", bp / floor),
        bp <= 5.0,
    );
    t(
        "memory, core + cache + memcg <= 3/4 of v5 (uniform memcg)",
        format!(
            "{:.2} / {:.2} B = {:.2}",
            v16.full,
            v5m.full,
            v16.full / v5m.full
        ),
        v16.full <= 0.75 * v5m.full,
    );
    t(
        "memory, core + cache + memcg <= 3/4 of v5 (memcg id per slot)",
        format!(
            "{:.2} / {:.2} B = {:.2}",
            v18.full,
            v5m.full,
            v18.full / v5m.full
        ),
        v18.full <= 0.75 * v5m.full,
    );
    t(
        "core word alone: 8 B per slot",
        format!(
            "{:.3} B (8 B word + cluster and directory overhead)",
            core.full
        ),
        core.full < 8.25,
    );
    let _ = writeln!(
        w,
        "\nWhy the speed targets are missed here: a locked read-modify-write costs {floor:.1} ns \
         on this machine. vswap's order-0 pair is four of them (allocation: take the slot's \
         reference on its cluster, claim the word; free: the word CAS and the `fetch_sub` \
         that drops the slot's reference), {:.0} ns of floor, plus two read-side sections \
         and the table-index loads; lookups of free slots stay memory-safe through the host's \
         reclamation (the v5 baseline never frees a cluster struct, standing in for the \
         kernel's RCU). Taking the occupancy count off the fast path (issue 13 item 2) would \
         leave two RMWs per pair: not done. Every lock-free free \
         of a slot is at least one (the CAS that takes the word), so the batch free cannot \
         go below {floor:.1} ns per slot without a lock amortised over many slots; the \
         physical-backed free adds the device slot's CAS. The v5 baseline's pair is two \
         uncontended spinlock acquisitions, and its batch free takes one lock per 512 slots \
         and then writes plain memory: without contention a per-cluster spinlock beats \
         per-slot atomics.",
        4.0 * floor
    );
    let wins: Vec<&str> = rows
        .iter()
        .filter(|r| matches!((r.get("v5"), r.get("vswap")), (Some(p), Some(v)) if p > v))
        .map(|r| r.name.as_str())
        .collect();
    let _ = writeln!(
        w,
        "\nRows where vswap is faster than the v5 baseline in this run: {}.",
        if wins.is_empty() {
            "none".to_string()
        } else {
            wins.join(", ")
        }
    );
    if floor_scale < 1.8 {
        let _ = writeln!(
            w,
            "\nOther processes shared the 2 CPUs during this run: two threads doing nothing but \
             independent RMWs scaled only {floor_scale:.2}x, so the two-thread rows (and the \
             2-thread scaling target) measure time slices taken by others as much as the \
             implementations, and a spinlock holder that is preempted stalls its waiter."
        );
    }
    let _ = writeln!(
        w,
        "\n## Memory per live slot (counting global allocator, every heap byte)\n"
    );
    let _ = writeln!(
        w,
        "{MEM_SLOTS} order-0 slots allocated on 2 CPUs, then a random half freed (bytes divided \
         by the slots still live). vswap through its provider's own accounting, core word \
         alone, all live: {provider:.3} B/slot. The swap table's one word also holds the swap \
         cache folio or shadow, so its \"core + cache\" is the same figure; the kernel's memcg \
         record (`swap_cgroup`, 2 B per slot) is not modelled. Empty vswap map of 2^32 slots: \
         {empty_heap} B on the heap.\n"
    );
    let _ = writeln!(
        w,
        "| information | implementation | layout | all live | after freeing a random half |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|");
    for r in &mem_rows {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.3} B | {:.3} B |",
            r.info, r.imp, r.what, r.m.full, r.m.half
        );
    }
    let _ = writeln!(w, "\n## Physical devices and the flash log\n");
    let _ = writeln!(
        w,
        "Fragmentation: a 2^18-slot device filled to 90% with order-0 and order-4 allocations \
         (half the slots each) on 2 CPUs, a random half of the allocations freed, then order-4 \
         allocations until the first failure: vswap got {} of {} free slots ({:.1}%) as order-4 \
         runs, v5 {} of {} ({:.1}%).\n",
        frag_v.order4,
        frag_v.free,
        100.0 * frag_v.order4 as f64 / frag_v.free as f64,
        frag_5.order4,
        frag_5.free,
        100.0 * frag_5.order4 as f64 / frag_5.free as f64
    );
    let _ = writeln!(
        w,
        "Flash log GC (vswap only; the v5 design has no log device): 64 segments of 512 slots \
         kept 80% full by random overwrites; 200 GC passes relocated {gc_n} slots in {:.2} ms: \
         {gc_ns:.0} ns per relocated slot ({:.2} M slots/s), descriptor rewrites and reverse-map \
         updates only (no data copied).",
        gc_t.as_secs_f64() * 1e3,
        1e3 / gc_ns
    );
    thp_section(&mut s, &thp_runs, thp_wall);
    let floor = rows
        .iter()
        .find(|r| r.name == "floor: one locked RMW")
        .and_then(|r| r.get("vswap"))
        .unwrap_or(f64::NAN);
    nearly_full_section(&mut s, floor);
    std::fs::write(&out, &s).expect("write RESULTS.md");
    print!("{s}");
    eprintln!(
        "wrote {} in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
}

/// Issue 14 item 3: order-0 allocation cost on nearly full devices and the
/// failing allocation on a full one, against the targets.
fn nearly_full_section(w: &mut String, floor: f64) {
    const OPS: usize = 20_000;
    // The steady state of the churn at 98% use: 20x the rounds.
    const OPS_LONG: usize = 400_000;
    let levels: [(u64, usize); 6] = [
        (0, OPS),
        (90, OPS),
        (95, OPS),
        (98, OPS),
        (98, OPS_LONG),
        (100, OPS),
    ];
    let q = |t: &[f64], p: f64| {
        t.get(((t.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let mut rows = Vec::new();
    let t0 = std::time::Instant::now();
    for name in ["vswap", "v5"] {
        for &(u, ops) in &levels {
            let t = if name == "vswap" {
                work::nearly_full(&work::vswap_device(work::NEARLY_FULL_SLOTS), u, ops, 11 + u)
            } else {
                work::nearly_full(&V5Phys::new(work::NEARLY_FULL_SLOTS, 2), u, ops, 11 + u)
            };
            rows.push((name, u, ops, q(&t, 0.5), q(&t, 0.99), q(&t, 1.0)));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = writeln!(
        w,
        "\n## Allocation cost on nearly full devices (issue 14)\n\n\
         A 16 GiB device ({} slots of 4 KiB, 2 CPU numbers) filled with order-0 slots, a random \
         part freed down to the use level, then {OPS} rounds of one timed order-0 allocation \
         (freed again) and one untimed churn (a random live slot freed and replaced) so that \
         the holes move (`work::nearly_full`). At 100% the timed call is the failing \
         allocation right after a free and the allocation that took that slot back: the first \
         failure after room was made. At 98% the churn also runs {OPS_LONG} rounds (its steady \
         state: the holes that the random part freed get used up, and each later free makes a \
         full cluster nonfull with one free slot). Per-call wall time from `Instant` (about \
         20-30 ns of it is the clock); {secs:.1} s for the section.\n",
        work::NEARLY_FULL_SLOTS
    );
    let _ = writeln!(
        w,
        "| allocator | use | median | p99 | max |\n|---|---|---|---|---|"
    );
    for &(name, u, ops, m, p, x) in &rows {
        let what = if u == 100 {
            "full: failing call".to_string()
        } else if ops != OPS {
            format!("{u}%, {ops} rounds")
        } else {
            format!("{u}%")
        };
        let _ = writeln!(w, "| {name} | {what} | {m:.0} ns | {p:.0} ns | {x:.0} ns |");
    }
    let get_ops = |name: &str, u: u64, ops: usize| {
        rows.iter()
            .find(|r| r.0 == name && r.1 == u && r.2 == ops)
            .map(|r| (r.0, r.1, r.3, r.4, r.5))
    };
    let get = |name: &str, u: u64| get_ops(name, u, OPS);
    let _ = writeln!(w, "\n| target | measured | |\n|---|---|---|");
    if let Some(empty) = get("vswap", 0) {
        for (u, ops) in [(90, OPS), (95, OPS), (98, OPS), (98, OPS_LONG)] {
            if let Some(r) = get_ops("vswap", u, ops) {
                let after = if ops == OPS {
                    String::new()
                } else {
                    format!(", after {ops} rounds")
                };
                let ok_m = r.2 <= 2.0 * empty.2;
                let ok_p = r.3 <= 10_000.0;
                let _ = writeln!(
                    w,
                    "| order-0 allocation at {u}% use{after}: median <= 2x the empty device's, p99 <= 10 us | median {:.0} ns = {:.2}x the empty device's {:.0} ns; p99 {:.2} us | {} |",
                    r.2,
                    r.2 / empty.2.max(1.0),
                    empty.2,
                    r.3 / 1e3,
                    if ok_m && ok_p { "met" } else { "**missed**" }
                );
            }
        }
    }
    if let Some(r) = get("vswap", 100) {
        let _ = writeln!(
            w,
            "| a failed allocation on a full 16 GiB device <= 1 us | median {:.0} ns ({:.0} F, \
             F = {floor:.2} ns in this run), p99 {:.0} ns | {} |",
            r.2,
            r.2 / floor,
            r.3,
            if r.2 <= 1000.0 { "met" } else { "**missed**" }
        );
    }
    let _ = writeln!(
        w,
        "\nWhy: refills take `nonfull[order]`, then a free cluster; a failing allocation no longer \
         walks the device (issue 14 item 3): an order-0 request steals from the lowest-numbered \
         fragmented, then nonfull, cluster (two bitmaps), any request from the CPUs' cached \
         clusters and, above order 0, from runs in at most 8 nonfull clusters of other orders; \
         a full device's failures after the first \
         are O(1) (the exhausted marks). The medians above the empty device's are refills, not scans \
         (counted on 2026-12-04 with temporary counters on this churn, 400,000 rounds after \
         the random part was freed, AMD EPYC: a claim loads 4.4 slot words on average, but \
         67% of the timed calls at 98% use and 33% at 90% take the refill path). At 98% use \
         a random free leaves a full cluster with one free slot and files it `nonfull`; a \
         refill gets such a cluster, the timed call takes its slot, the churn's free gives it \
         back and the churn's allocation takes it again through the free hint, so the CPU's \
         next allocation finds its cluster full and refills again. A refill is the list lock, \
         the unlink of the new cluster and the filing of the old one (both touch neighbours' \
         directory records), the exchange of the cache word, and first touches of the new \
         cluster's record and table, which the random churn over 16 MiB of slot words has left \
         out of cache. Before 2026-12-04 a refill started its claim at slot 0 and then tried the \
         free hint: two cold table lines, and `perf` put 74% of `alloc_slow`'s samples on the \
         first word load; a device cluster's cursor now starts at the hint (`alloc_slow` 13.6% \
         -> 5.5% of samples; three interleaved A/B runs of the churn at 98%: median 110-210 -> \
         120-141 ns, p90 260-391 -> 260-280 ns; this section's own medians vary by about a \
         third from run to run). Earlier (2026-12-03) \
         the free hint itself, the cached claim's refusal of a cluster whose references say it \
         is full, and filing by references took the 98% steady state from 2,133 ns. What is \
         left is the refill's own cost, paid on most calls at 98% use by this churn; v5's \
         refill is a spinlock and a list pop over a byte map (1 B per slot where a device word \
         is 4 B)."
    );
}
