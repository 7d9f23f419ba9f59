//! The flash log device against a simulated engine and a simulated flash device.
//!
//! The device is a byte array written only in whole segments; the "engine" is a
//! map `owner -> (location, expected bytes)` that follows the protocol of
//! `vswap_alloc::logdev` (stage, flush, write, commit, seal; GC relocation
//! through the reverse map, losing gracefully to frees). After every GC pass
//! and at the end, every live owner's bytes are read back from the array.
//!
//! Write amplification for a uniform and a skewed workload with both GC
//! policies:
//! ```text
//! cargo test -p vswap-alloc --features std --release --test logdev write_amplification -- --nocapture
//! ```
//! `WA_UTIL=<percent>` (default 80) and `WA_SEED=<n>` (default 42) vary the run.
#![cfg(feature = "std")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::{BTreeMap, HashMap, HashSet};

use vswap_alloc::{
    Error, Flush, Flushed, GcPolicy, GcStep, LogConfig, LogDevice, LogStats, SegState, StdProvider,
    Stream,
};

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Byte `i` of the page written with `seed`.
fn byte(seed: u64, i: usize) -> u8 {
    let x = seed
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
        .wrapping_add(i as u64 * 0x9e37_79b9);
    (x ^ (x >> 29) ^ (x >> 47)) as u8
}

const PAD: u8 = 0xa5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// Staged in the host stream; the data is in memory.
    Staged,
    /// On the device.
    Phys(u64),
}

struct Page {
    loc: Loc,
    /// The page's contents are `byte(seed, 0..page)`.
    seed: u64,
    /// Locked by GC: staged for relocation from this offset.
    gc_from: Option<u64>,
}

/// The engine side: the owners' descriptors and the flash array.
pub(crate) struct Engine {
    /// Bytes per page in the array (0: no data kept, for fast WA runs).
    page: usize,
    seg_slots: u64,
    disk: Vec<u8>,
    owners: BTreeMap<u32, Page>,
    seed: u64,
    last_seg: Option<u32>,
    rng: Rng,
    /// Percent chance, in each GC step, of a "concurrent" free first.
    pub(crate) racing_frees: u64,
    pub(crate) verify_after_gc: bool,
    gc_passes: u64,
    flushes: u64,
    lost_to_free: u64,
}

impl Engine {
    pub(crate) fn new(dev: &LogDevice<&StdProvider>, page: usize, seed: u64) -> Self {
        Engine {
            page,
            seg_slots: u64::from(dev.segment_slots()),
            disk: vec![0; dev.slots() as usize * page],
            owners: BTreeMap::new(),
            seed: 0,
            last_seg: None,
            rng: Rng(seed),
            racing_frees: 0,
            verify_after_gc: false,
            gc_passes: 0,
            flushes: 0,
            lost_to_free: 0,
        }
    }

    fn page_at(&self, off: u64) -> &[u8] {
        let p = self.page;
        &self.disk[off as usize * p..(off as usize + 1) * p]
    }

    /// Release `o`'s backend and forget it (the engine's free).
    pub(crate) fn free(&mut self, dev: &LogDevice<&StdProvider>, o: u32) {
        let Some(p) = self.owners.remove(&o) else {
            return;
        };
        match p.loc {
            Loc::Staged => dev.cancel(Stream::Host, o).unwrap(),
            Loc::Phys(off) => assert_eq!(dev.invalidate(off), Ok(o)),
        }
    }

    /// Write (or overwrite) `o`: release the old location, stage new data.
    pub(crate) fn write(&mut self, dev: &LogDevice<&StdProvider>, o: u32) {
        self.free(dev, o);
        self.seed += 1;
        self.owners.insert(
            o,
            Page {
                loc: Loc::Staged,
                seed: self.seed,
                gc_from: None,
            },
        );
        loop {
            match dev.stage(o) {
                Ok(n) => {
                    if u64::from(n) == self.seg_slots {
                        self.host_flush(dev, Flush::Full);
                    }
                    return;
                }
                Err(Error::Busy) => self.host_flush(dev, Flush::Full),
                Err(e) => panic!("stage: {e:?}"),
            }
        }
    }

    /// Flush the host stream, collecting garbage while the device is full.
    pub(crate) fn host_flush(&mut self, dev: &LogDevice<&StdProvider>, mode: Flush) {
        let mut passes = 0;
        loop {
            match dev.flush(Stream::Host, mode) {
                Ok(Some(f)) => {
                    self.write_segment(dev, &f);
                    dev.seal(f.segment()).unwrap();
                    return;
                }
                Ok(None) => return,
                Err(Error::NoSpace) => {
                    passes += 1;
                    assert!(
                        passes < 100 * u64::from(dev.segments()),
                        "GC makes no progress: {:?}",
                        dev.stats()
                    );
                    self.gc(dev);
                }
                Err(e) => panic!("flush: {e:?}"),
            }
        }
    }

    pub(crate) fn gc(&mut self, dev: &LogDevice<&StdProvider>) {
        dev.gc_pass(|step| self.gc_step(dev, step)).unwrap();
        self.gc_passes += 1;
        if self.verify_after_gc {
            self.verify(dev);
        }
    }

    fn gc_step(&mut self, dev: &LogDevice<&StdProvider>, step: GcStep<'_>) -> bool {
        match step {
            GcStep::Check { owner, off } => {
                // Before we get the owner's lock, it may be freed.
                if self.rng.chance(self.racing_frees) {
                    self.free(dev, owner);
                    self.lost_to_free += 1;
                    return false;
                }
                let p = self
                    .owners
                    .get_mut(&owner)
                    .expect("the reverse map names a live owner");
                assert_eq!(p.loc, Loc::Phys(off), "owner {owner}");
                if p.gc_from.is_some() {
                    // Locked by a move already in flight.
                    return false;
                }
                p.gc_from = Some(off);
                true
            }
            GcStep::Write(f) => {
                // A free may beat the commit of any pending move.
                if self.rng.chance(self.racing_frees) {
                    let locked: Vec<u32> = self
                        .owners
                        .iter()
                        .filter(|(_, p)| p.gc_from.is_some())
                        .map(|(&o, _)| o)
                        .take(1)
                        .collect();
                    for o in locked {
                        self.free(dev, o);
                        self.lost_to_free += 1;
                    }
                }
                self.write_segment(dev, f);
                true
            }
        }
    }

    /// The host side of a flush: check the order, write the whole segment,
    /// commit every owner, invalidate what the moves left behind.
    fn write_segment(&mut self, dev: &LogDevice<&StdProvider>, f: &Flushed) {
        self.flushes += 1;
        let seg = f.segment();
        let n = dev.segments();
        assert_eq!(dev.segment(seg).unwrap().state, SegState::Open);
        assert_eq!(u64::from(f.len() + f.padding()), self.seg_slots);
        // Sequential: every segment strictly between the previous write and
        // this one (cyclically) was not free.
        if let Some(prev) = self.last_seg {
            let mut s = (prev + 1) % n;
            while s != seg {
                let st = dev.segment(s).unwrap().state;
                assert_ne!(st, SegState::Free, "segment {s} skipped: {prev} -> {seg}");
                s = (s + 1) % n;
            }
        }
        self.last_seg = Some(seg);
        let page = self.page;
        let mut buf = vec![PAD; self.seg_slots as usize * page];
        let mut stale = Vec::new();
        let mut moved = Vec::new();
        let mut seen = 0;
        for (o, to) in dev.live(seg).unwrap() {
            let i = (to - f.base()) as usize;
            assert_eq!(i, seen, "owners are packed at the start of the segment");
            seen += 1;
            let dst = &mut buf[i * page..(i + 1) * page];
            match f.stream() {
                Stream::Host => {
                    let p = self.owners.get_mut(&o).expect("staged owner is live");
                    assert_eq!(p.loc, Loc::Staged);
                    for (k, b) in dst.iter_mut().enumerate() {
                        *b = byte(p.seed, k);
                    }
                    p.loc = Loc::Phys(to);
                }
                Stream::Gc => match self.owners.get_mut(&o) {
                    Some(p) if p.gc_from.is_some() => {
                        let from = p.gc_from.take().unwrap();
                        assert_eq!(p.loc, Loc::Phys(from));
                        p.loc = Loc::Phys(to);
                        dst.copy_from_slice(
                            &self.disk[from as usize * page..(from as usize + 1) * page],
                        );
                        moved.push((o, from));
                    }
                    // Freed (or rewritten) since it was staged: lost.
                    _ => stale.push((o, to)),
                },
            }
        }
        assert_eq!(seen, f.len() as usize, "no staged owner lost");
        let base = f.base() as usize * page;
        self.disk[base..base + buf.len()].copy_from_slice(&buf);
        // Committed: the old locations go.
        for (o, from) in moved {
            assert_eq!(dev.invalidate(from), Ok(o));
        }
        for (o, to) in stale {
            assert_eq!(dev.invalidate(to), Ok(o));
        }
    }

    /// Every invariant, every byte.
    pub(crate) fn verify(&self, dev: &LogDevice<&StdProvider>) {
        let mut offs = HashSet::new();
        let mut staged = 0;
        for (&o, p) in &self.owners {
            match p.loc {
                Loc::Staged => staged += 1,
                Loc::Phys(off) => {
                    assert!(offs.insert(off), "offset {off} referenced twice");
                    assert_eq!(dev.owner(off), Ok(Some(o)), "rmap of {off}");
                    if self.page != 0 {
                        for (k, &b) in self.page_at(off).iter().enumerate() {
                            assert_eq!(b, byte(p.seed, k), "owner {o} at {off}, byte {k}");
                        }
                    }
                }
            }
        }
        assert_eq!(dev.staged(Stream::Host), staged);
        let mut set = 0;
        for seg in 0..dev.segments() {
            let info = dev.segment(seg).unwrap();
            let words = dev.live(seg).unwrap().count() as u32;
            assert_eq!(info.valid, words, "segment {seg}: {info:?}");
            if info.state == SegState::Free {
                assert_eq!(words, 0);
            }
            for (o, off) in dev.live(seg).unwrap() {
                assert_eq!(self.owners[&o].loc, Loc::Phys(off), "rmap {off} -> {o}");
            }
            set += u64::from(words);
        }
        assert_eq!(
            set,
            offs.len() as u64,
            "every set rmap word is a live owner"
        );
        assert_eq!(dev.stats().live_slots, set);
    }

    /// The step-wise GC API by hand: walk half of a victim, then abort it.
    /// What was staged still moves; the rest stays where it is.
    pub(crate) fn gc_half_then_abort(&mut self, dev: &LogDevice<&StdProvider>) {
        let Some(v) = dev.gc_begin().unwrap() else {
            return;
        };
        let live: Vec<(u32, u64)> = dev.live(v.segment()).unwrap().collect();
        for &(owner, off) in &live[..live.len() / 2] {
            if !self.gc_step(dev, GcStep::Check { owner, off }) {
                continue;
            }
            let n = dev.gc_stage(owner).unwrap();
            if u64::from(n) == self.seg_slots {
                let f = dev.flush(Stream::Gc, Flush::Full).unwrap().unwrap();
                self.write_segment(dev, &f);
                dev.seal(f.segment()).unwrap();
            }
        }
        dev.gc_abort(v).unwrap();
        self.verify(dev);
    }

    /// Flush everything and let GC drain what it holds.
    pub(crate) fn settle(&mut self, dev: &LogDevice<&StdProvider>) {
        self.host_flush(dev, Flush::Now);
        self.gc(dev);
        while dev.staged(Stream::Gc) != 0 {
            self.gc(dev);
        }
        dev.reclaim();
    }
}

pub(crate) fn device(
    p: &StdProvider,
    segments: u32,
    seg_shift: u32,
    page: u32,
    policy: GcPolicy,
) -> LogDevice<&StdProvider> {
    LogDevice::new(
        LogConfig {
            page_size: page,
            policy,
            ..LogConfig::new(segments, seg_shift)
        },
        p,
    )
    .unwrap()
}

/// Random writes, overwrites, frees, flushes and GC passes, with racing frees,
/// checking every byte after every GC pass.
fn simulate(policy: GcPolicy, seed: u64) {
    let (segments, shift, ops) = if cfg!(miri) {
        (16, 2, 200)
    } else {
        (32, 4, 20_000)
    };
    let p = StdProvider::new();
    let dev = device(&p, segments, shift, 64, policy);
    let mut e = Engine::new(&dev, 64, seed);
    e.racing_frees = 3;
    e.verify_after_gc = true;
    // Owners are drawn from a universe of 80% of the device.
    let universe = dev.slots() * 8 / 10;
    for _ in 0..ops {
        let o = 1 + e.rng.below(universe) as u32;
        match e.rng.below(100) {
            0..=79 => e.write(&dev, o),
            80..=91 => e.free(&dev, o),
            92..=94 => e.host_flush(&dev, Flush::Now),
            95 => e.gc_half_then_abort(&dev),
            _ => e.gc(&dev),
        }
    }
    e.settle(&dev);
    e.verify(&dev);
    let st = dev.stats();
    println!(
        "{policy:?} seed {seed}: {} live, {} segment writes, {} GC passes, {} victims, \
         {} moves lost to frees, write amplification {:.2}",
        e.owners.len(),
        e.flushes,
        e.gc_passes,
        st.gc_runs,
        e.lost_to_free,
        st.write_amplification().unwrap_or(0.0),
    );
    assert_eq!(st.staged_gc, 0);
    assert!(st.gc_runs > 0 && st.gc_bytes > 0, "{st:?}");
    assert!(e.lost_to_free > 0 || cfg!(miri), "frees raced some moves");
    assert_eq!(
        st.device_bytes,
        st.host_bytes + st.gc_bytes + st.pad_bytes,
        "{st:?}"
    );
    // Empty the device: everything comes back.
    let live: Vec<u32> = e.owners.keys().copied().collect();
    for o in live {
        e.free(&dev, o);
    }
    dev.reclaim();
    assert_eq!(dev.free_segments(), dev.segments());
    assert_eq!(dev.stats().live_slots, 0);
    drop(dev);
    assert_eq!(p.bytes_in_use(), 0);
}

#[test]
fn gc_preserves_every_byte_greedy() {
    for seed in [1, 2] {
        simulate(GcPolicy::Greedy, seed);
    }
}

#[test]
fn gc_preserves_every_byte_cost_benefit() {
    for seed in [3, 4] {
        simulate(GcPolicy::CostBenefit, seed);
    }
}

#[derive(Clone, Copy, Debug)]
enum Workload {
    Uniform,
    /// 90% of writes to 10% of the owners.
    Skewed,
}

/// Steady-state write amplification: fill the device to `util` percent with
/// owners, overwrite `warm` times the owner count, then measure over `runs`
/// times the owner count.
fn write_amplification(policy: GcPolicy, w: Workload, util: u64) -> (LogStats, Engine) {
    let (segments, shift, warm, runs) = if cfg!(miri) {
        (16, 2, 1, 1)
    } else {
        (128, 6, 4, 8)
    };
    let p = StdProvider::new();
    let dev = device(&p, segments, shift, 4096, policy);
    let mut e = Engine::new(
        &dev,
        0,
        std::env::var("WA_SEED").map_or(42, |s| s.parse().unwrap()),
    );
    let owners = dev.slots() * util / 100;
    let hot = (owners / 10).max(1);
    for o in 1..=owners {
        e.write(&dev, o as u32);
    }
    let pick = |rng: &mut Rng| -> u32 {
        1 + match w {
            Workload::Uniform => rng.below(owners),
            Workload::Skewed if rng.chance(90) => rng.below(hot),
            Workload::Skewed => hot + rng.below(owners - hot),
        } as u32
    };
    for _ in 0..warm * owners {
        let o = pick(&mut e.rng);
        e.write(&dev, o);
    }
    let start = dev.stats();
    e.gc_passes = 0;
    for _ in 0..runs * owners {
        let o = pick(&mut e.rng);
        e.write(&dev, o);
    }
    let st = dev.stats().since(&start);
    e.verify(&dev);
    (st, e)
}

#[test]
fn write_amplification_uniform_and_skewed() {
    let util: u64 = std::env::var("WA_UTIL").map_or(80, |s| s.parse().unwrap());
    let mut wa = HashMap::new();
    for w in [Workload::Uniform, Workload::Skewed] {
        for policy in [GcPolicy::Greedy, GcPolicy::CostBenefit] {
            let (st, e) = write_amplification(policy, w, util);
            let x = st.write_amplification().unwrap();
            println!(
                "log device, {util}% full, {w:?} writes, {policy:?} GC: write amplification {x:.3} \
                 (host {} MiB, device {} MiB, GC {} MiB, padding {} KiB; {} victims in {} GC passes)",
                st.host_bytes >> 20,
                st.device_bytes >> 20,
                st.gc_bytes >> 20,
                st.pad_bytes >> 10,
                st.gc_runs,
                e.gc_passes,
            );
            assert!(x >= 1.0, "{st:?}");
            assert_eq!(st.device_bytes, st.host_bytes + st.gc_bytes + st.pad_bytes);
            wa.insert((format!("{w:?}"), format!("{policy:?}")), x);
        }
    }
    let g = |w: &str, p: &str| wa[&(w.to_string(), p.to_string())];
    if !cfg!(miri) {
        // Measured (seeds 1, 7, 42; 70, 80 and 90% full): on uniform writes
        // cost-benefit is within 2% of greedy; on skewed writes it is 29-32%
        // below greedy.
        assert!(g("Uniform", "CostBenefit") < g("Uniform", "Greedy") * 1.1);
        assert!(g("Skewed", "CostBenefit") < g("Skewed", "Greedy") * 0.8);
    }
}
