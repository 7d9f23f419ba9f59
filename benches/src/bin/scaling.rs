//! Multi-core scaling: aggregate throughput of order-0 allocate+free with
//! 1, 2, 4, ... threads (up to the machine's CPUs or `--max-threads`), for
//! vswap and each peer, and of the hand-off workload (half the threads
//! allocate, the other half free what they are handed: frees on another CPU).
//! Each thread uses its own CPU number. Prints a markdown table (and writes it
//! to `--out PATH` if given).
//!
//! ```text
//! cargo run --release -p vswap-benches --bin scaling [-- --max-threads 16 --out scaling.md]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vswap_benches::SwapSlots;
use vswap_benches::peers::{self, Word};
use vswap_benches::v5::V5Map;
use vswap_benches::vswap::Vswap;
use vswap_benches::work::pair;

/// The peers with a descriptor of the core word's information (8 bytes).
type Slab = peers::Slab<Word>;
type MutexVec = peers::MutexVec<Word>;
type HashMapPeer = peers::HashMapPeer<Word>;

/// Length of one measurement.
const RUN: Duration = Duration::from_millis(300);
/// Measurements per point (median taken).
const REPEAT: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The control shared by one measurement's worker threads: they wait at
/// `start`, work until `stop`, and add what they did to `done`.
struct Run {
    stop: AtomicBool,
    done: AtomicU64,
    start: Barrier,
}

impl Run {
    fn new(workers: u32) -> Self {
        Self {
            stop: AtomicBool::new(false),
            done: AtomicU64::new(0),
            start: Barrier::new(workers as usize + 1),
        }
    }

    /// On the measuring thread, inside the scope: release the workers, let
    /// them run for [`RUN`], stop them. Returns when timing started.
    fn drive(&self) -> Instant {
        self.start.wait();
        let t = Instant::now();
        std::thread::sleep(RUN);
        self.stop.store(true, Ordering::Relaxed);
        t
    }

    /// After the scope (workers joined): million units per second.
    fn rate(&self, t: Instant) -> f64 {
        self.done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64() / 1e6
    }
}

/// Million allocate+free pairs per second, `threads` threads each on its own
/// CPU number, for [`RUN`].
fn pairs<T: SwapSlots>(m: &T, threads: u32) -> f64 {
    let run = Run::new(threads);
    let t = std::thread::scope(|s| {
        for cpu in 0..threads {
            let run = &run;
            s.spawn(move || {
                run.start.wait();
                let mut n = 0u64;
                while !run.stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        pair(m, 0, cpu);
                    }
                    n += 256;
                }
                run.done.fetch_add(n, Ordering::Relaxed);
            });
        }
        run.drive()
    });
    run.rate(t)
}

/// Million slots per second through `threads / 2` allocator -> freer pairs
/// of threads (each freer frees on its own CPU number what its allocator
/// handed it, in batches of 64).
fn handoff<T: SwapSlots>(m: &T, threads: u32) -> f64 {
    let pairs_n = (threads / 2).max(1);
    let run = Run::new(2 * pairs_n);
    let t = std::thread::scope(|s| {
        for p in 0..pairs_n {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u64>>(8);
            let run = &run;
            s.spawn(move || {
                run.start.wait();
                while !run.stop.load(Ordering::Relaxed) {
                    let v: Vec<u64> = (0..64).filter_map(|_| m.alloc(0, 2 * p)).collect();
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            });
            s.spawn(move || {
                run.start.wait();
                let mut n = 0u64;
                for v in rx.iter() {
                    for &h in &v {
                        m.cache_clear(h, 1, 2 * p + 1);
                    }
                    n += v.len() as u64;
                }
                run.done.fetch_add(n, Ordering::Relaxed);
            });
        }
        run.drive()
    });
    run.rate(t)
}

fn row<T: SwapSlots>(make: impl Fn() -> T, counts: &[u32], f: fn(&T, u32) -> f64) -> Vec<f64> {
    counts
        .iter()
        .map(|&n| median((0..REPEAT).map(|_| f(&make(), n)).collect()))
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut max = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let mut out = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--max-threads" => max = args.next().and_then(|v| v.parse().ok()).expect("a number"),
            "--out" => out = args.next(),
            _ => panic!("usage: scaling [--max-threads N] [--out PATH]"),
        }
    }
    let max = max.clamp(1, 64);
    let mut counts = vec![1u32];
    while counts.last().unwrap() * 2 <= max {
        counts.push(counts.last().unwrap() * 2);
    }
    if *counts.last().unwrap() != max {
        counts.push(max);
    }
    let slots = 1u64 << 24;
    let mut md = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(md, "Scaling on {cpu}, {cores} CPUs available; medians of {REPEAT} runs of {} ms; Mops/s (aggregate), and in brackets the speed-up over 1 thread.\n", RUN.as_millis()).unwrap();
    for (name, f_v, f_5, f_s, f_m, f_h) in [
        (
            "order-0 allocate+free, every thread on its own CPU number",
            pairs::<Vswap> as fn(&Vswap, u32) -> f64,
            pairs::<V5Map> as fn(&V5Map, u32) -> f64,
            pairs::<Slab> as fn(&Slab, u32) -> f64,
            pairs::<MutexVec> as fn(&MutexVec, u32) -> f64,
            pairs::<HashMapPeer> as fn(&HashMapPeer, u32) -> f64,
        ),
        (
            "hand-off: half the threads allocate, half free on another CPU number (slots/s)",
            handoff::<Vswap>,
            handoff::<V5Map>,
            handoff::<Slab>,
            handoff::<MutexVec>,
            handoff::<HashMapPeer>,
        ),
    ] {
        let is_handoff = name.starts_with("hand-off");
        let cs: Vec<u32> = if is_handoff {
            counts.iter().copied().filter(|&c| c >= 2).collect()
        } else {
            counts.clone()
        };
        writeln!(md, "**{name}**\n").unwrap();
        let head: Vec<String> = cs.iter().map(|c| format!("{c} threads")).collect();
        writeln!(md, "| impl | {} |", head.join(" | ")).unwrap();
        writeln!(md, "|---|{}", "---|".repeat(cs.len())).unwrap();
        let rows = [
            ("vswap", row(Vswap::new, &cs, f_v)),
            ("v5", row(|| V5Map::new(slots, 64), &cs, f_5)),
            ("sharded_slab", row(Slab::new, &cs, f_s)),
            ("mutex_vec", row(|| MutexVec::new(slots as u32), &cs, f_m)),
            ("hashbrown", row(HashMapPeer::new, &cs, f_h)),
        ];
        for (imp, r) in rows {
            let base = r[0];
            let cells: Vec<String> = r
                .iter()
                .map(|v| format!("{v:.1} ({:.2}x)", v / base))
                .collect();
            writeln!(md, "| {imp} | {} |", cells.join(" | ")).unwrap();
            eprintln!("{name}: {imp} done");
        }
        writeln!(md).unwrap();
    }
    print!("{md}");
    if let Some(p) = out {
        std::fs::write(p, md).expect("write the table");
    }
}
