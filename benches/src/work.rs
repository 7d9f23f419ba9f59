//! The timed workloads, shared by the criterion suite and the report
//! command. Each takes an iteration count and returns the time of the timed
//! part (criterion's `iter_custom` contract).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vswap_alloc::{DeviceConfig, Flush, LogConfig, LogDevice, PhysDevice};
use vswap_core::{Backend, Ctx, Engine, EngineConfig, EngineHost, StdProvider};

use crate::swaptable::SwapTable;
use crate::v5::{V5Map, V5Phys};
use crate::vswap::{DevHost, Vswap};
use crate::{Rng, SwapSlots};

/// Allocate `2^order` slots and drop their swap-cache reference (the
/// kernel's swap-out then free of a clean folio).
#[inline]
pub fn pair<T: SwapSlots>(m: &T, order: u32, cpu: u32) {
    if let Some(h) = m.alloc(order, cpu) {
        m.cache_clear(black_box(h), 1 << order, cpu);
    }
}

/// `iters` pairs on one CPU.
pub fn one_cpu<T: SwapSlots>(m: &T, order: u32, iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        pair(m, order, 0);
    }
    t.elapsed()
}

/// Two threads (CPU numbers 0 and 1), each doing `iters` pairs; wall time.
/// Throughput of 2 relative to 1 = `2 * one_cpu / two_threads`.
pub fn two_threads<T: SwapSlots>(m: &T, order: u32, iters: u64) -> Duration {
    let t = Instant::now();
    std::thread::scope(|s| {
        for cpu in 0..2 {
            s.spawn(move || {
                for _ in 0..iters {
                    pair(m, order, cpu);
                }
            });
        }
    });
    t.elapsed()
}

/// Slots per batch handed from the allocating to the freeing thread.
const PIPE_BATCH: usize = 256;

/// Two threads at once: CPU 0 allocates `iters` times and hands the slots
/// over in batches; CPU 1 frees them (the concurrent free on another CPU
/// that regressed +230% upstream). Wall time per allocation+free.
pub fn other_cpu_free<T: SwapSlots>(m: &T, order: u32, iters: u64) -> Duration {
    let n = 1u32 << order;
    let (tx, rx) = mpsc::sync_channel::<Vec<u64>>(4);
    let (back_tx, back_rx) = mpsc::channel::<Vec<u64>>();
    let t = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut done = 0;
            while done < iters {
                let k = PIPE_BATCH.min((iters - done) as usize);
                let mut v = back_rx.try_recv().unwrap_or_default();
                v.clear();
                v.extend((0..k).filter_map(|_| m.alloc(order, 0)));
                done += k as u64;
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        for v in rx.iter() {
            for &h in &v {
                m.cache_clear(h, n, 1);
            }
            let _ = back_tx.send(v);
        }
    });
    t.elapsed()
}

/// Free cost alone: `iters` slots allocated on CPU `alloc_cpu`'s thread
/// (another thread when it is not 0), freed on CPU 0, the allocator idle
/// meanwhile; only the frees are timed.
pub fn free_only<T: SwapSlots>(m: &T, alloc_cpu: u32, iters: u64) -> Duration {
    const BATCH: usize = 1024;
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let k = BATCH.min((iters - done) as usize);
        let v: Vec<u64> = if alloc_cpu == 0 {
            (0..k).filter_map(|_| m.alloc(0, 0)).collect()
        } else {
            std::thread::scope(|s| {
                s.spawn(|| (0..k).filter_map(|_| m.alloc(0, alloc_cpu)).collect())
                    .join()
                    .unwrap_or_default()
            })
        };
        let t = Instant::now();
        for &h in &v {
            m.cache_clear(h, 1, 0);
        }
        total += t.elapsed();
        done += k as u64;
    }
    total
}

/// A live slot with one count and no cached folio, for the ops workloads.
pub fn live_slot<T: SwapSlots>(m: &T) -> u64 {
    let h = m.alloc(0, 0).unwrap_or(1);
    m.dup(h);
    h
}

/// `iters` dup + put pairs on live slot `h`.
pub fn dup_put<T: SwapSlots>(m: &T, h: u64, iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        m.dup(black_box(h));
        black_box(m.put(black_box(h)));
    }
    t.elapsed()
}

/// `iters` lookups of live slot `h`.
pub fn lookup<T: SwapSlots>(m: &T, h: u64, iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        black_box(m.lookup(black_box(h)));
    }
    t.elapsed()
}

/// The writeout transitions of one iteration, in order (4 stores).
pub const WRITEOUT_CYCLE: [(Backend, Backend); 4] = [
    (Backend::None, Backend::Zero),
    (Backend::Zero, Backend::Same(u64::MAX)),
    (Backend::Same(u64::MAX), Backend::Phys { dev: 1, off: 4242 }),
    (Backend::Phys { dev: 1, off: 4242 }, Backend::None),
];

/// `iters` rounds of [`WRITEOUT_CYCLE`] on live slot `h` (4 transitions per
/// iteration).
pub fn writeout<T: SwapSlots>(m: &T, h: u64, iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        for (from, to) in WRITEOUT_CYCLE {
            black_box(m.store(black_box(h), from, to));
        }
    }
    t.elapsed()
}

/// Slots of one batch free.
pub const BATCH_SLOTS: usize = 1_000_000;

/// Fill `m` with `n` slots, each with one count, no cached folio and the
/// backend `backend(handle)`; returns their sorted handles.
pub fn batch_prepare<T: SwapSlots>(
    m: &T,
    n: usize,
    mut backend: impl FnMut(u64) -> Backend,
) -> Vec<u64> {
    let mut hs: Vec<u64> = (0..n).filter_map(|_| m.alloc(0, 0)).collect();
    hs.sort_unstable();
    for &h in &hs {
        m.dup(h);
        m.store(h, Backend::None, backend(h));
        m.cache_clear(h, 1, 0);
    }
    hs
}

/// Time one batch free of the prepared handles.
pub fn batch_free<T: SwapSlots>(m: &T, hs: &[u64]) -> Duration {
    let t = Instant::now();
    m.put_batch(hs);
    t.elapsed()
}

/// `iters` batch frees of [`BATCH_SLOTS`] zero-backed slots, each on a fresh
/// map from `make`; only the frees are timed.
pub fn batch_zero<T: SwapSlots>(make: impl Fn() -> T, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let m = make();
        let hs = batch_prepare(&m, BATCH_SLOTS, |_| Backend::Zero);
        total += batch_free(&m, &hs);
    }
    total
}

/// Device slots for the physical-backed batch free.
pub const BATCH_DEVICE_SLOTS: u64 = 1 << 21;

/// `iters` batch frees of [`BATCH_SLOTS`] slots backed by device slots
/// (allocated in slot order, so runs coalesce), vswap with a [`PhysDevice`]
/// freed through its host; the device-side frees are timed too.
pub fn batch_phys_vswap(iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let m = Vswap::with_host(DevHost::new(BATCH_DEVICE_SLOTS, 2));
        let hs = batch_prepare(&m, BATCH_SLOTS, |h| {
            let off = m
                .map
                .host()
                .dev
                .alloc(0, 0, h as u32, Ctx::NoSleep)
                .unwrap_or(0);
            Backend::Phys { dev: 0, off }
        });
        total += batch_free(&m, &hs);
    }
    total
}

/// [`batch_phys_vswap`] for the v5 baseline (its 8-byte reverse map).
pub fn batch_phys_v5(iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let m = V5Map::with_phys(1 << 21, 2, V5Phys::new(BATCH_DEVICE_SLOTS, 2));
        let hs = batch_prepare(&m, BATCH_SLOTS, |h| {
            let off = m.phys.as_ref().and_then(|p| p.alloc(0, 0, h)).unwrap_or(0);
            Backend::Phys { dev: 0, off }
        });
        total += batch_free(&m, &hs);
    }
    total
}

/// [`batch_phys_vswap`] for the swap-table baseline: its slots are the device
/// slots, so the batch free is the device-side free (no side state to drop).
pub fn batch_phys_swap_table(iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let m = SwapTable::new(BATCH_DEVICE_SLOTS, 2);
        let hs = batch_prepare(&m, BATCH_SLOTS, |h| Backend::Phys { dev: 0, off: h });
        total += batch_free(&m, &hs);
    }
    total
}

/// A physical device's allocator, for the device benchmarks.
pub trait PhysSlots: Sync {
    /// Name in ids and the report.
    const NAME: &'static str;
    /// Allocate `2^order` slots for virtual slots `owner..`.
    fn alloc(&self, order: u32, cpu: u32, owner: u64) -> Option<u64>;
    /// Free `len` slots from `off`.
    fn free(&self, off: u64, len: u64);
}

impl PhysSlots for PhysDevice<StdProvider> {
    const NAME: &'static str = "vswap";
    #[inline]
    fn alloc(&self, order: u32, cpu: u32, owner: u64) -> Option<u64> {
        PhysDevice::alloc(self, order, cpu, owner as u32, Ctx::NoSleep).ok()
    }
    #[inline]
    fn free(&self, off: u64, len: u64) {
        let _ = PhysDevice::free(self, off, len, None);
    }
}

impl PhysSlots for V5Phys {
    const NAME: &'static str = "v5";
    #[inline]
    fn alloc(&self, order: u32, cpu: u32, owner: u64) -> Option<u64> {
        V5Phys::alloc(self, order, cpu, owner)
    }
    #[inline]
    fn free(&self, off: u64, len: u64) {
        V5Phys::free(self, off, len)
    }
}

/// The swap table as a device for the device benchmarks: it is its own
/// device. Allocation gives a slot with a folio in the swap cache, free drops
/// that reference (no reverse map: there is no virtual owner).
pub struct SwapTableDevice(pub SwapTable);

impl SwapTableDevice {
    /// A device of `slots` slots for 2 CPUs.
    pub fn new(slots: u64) -> Self {
        Self(SwapTable::new(slots, 2))
    }
}

impl PhysSlots for SwapTableDevice {
    const NAME: &'static str = "swap_table";
    #[inline]
    fn alloc(&self, order: u32, cpu: u32, _owner: u64) -> Option<u64> {
        SwapSlots::alloc(&self.0, order, cpu)
    }
    #[inline]
    fn free(&self, off: u64, len: u64) {
        self.0.cache_clear(off, len as u32, 0)
    }
}

/// A vswap device of `slots` slots.
pub fn vswap_device(slots: u64) -> PhysDevice<StdProvider> {
    PhysDevice::new(DeviceConfig::new(slots, 2), &[], StdProvider::new())
        .expect("device config is valid")
}

/// `iters` device allocate+free pairs of `2^order` slots on CPU 0.
pub fn phys_pair<D: PhysSlots>(d: &D, order: u32, iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        if let Some(off) = d.alloc(order, 0, 4096) {
            d.free(black_box(off), 1 << order);
        }
    }
    t.elapsed()
}

/// Fragment a device: fill it to 90% with a mix of order-0 and order-4
/// allocations (half the slots each) on 2 CPUs, then free a random half of
/// the allocations. Returns the free slots afterwards.
pub fn fragment<D: PhysSlots>(d: &D, slots: u64, seed: u64) -> u64 {
    let mut rng = Rng(seed);
    let mut held: Vec<(u64, u32)> = Vec::new();
    let mut used = 0u64;
    let target = slots * 9 / 10;
    let mut i = 0u64;
    while used < target {
        // 16 order-0 allocations, then one order-4.
        let order = if i % 17 == 16 { 4 } else { 0 };
        let cpu = (i % 2) as u32;
        match d.alloc(order, cpu, 4096) {
            Some(off) => {
                held.push((off, order));
                used += 1 << order;
            }
            None if order == 4 => {}
            None => break,
        }
        i += 1;
    }
    rng.shuffle(&mut held);
    let half = held.len() / 2;
    for (off, order) in held.drain(..half) {
        d.free(off, 1 << order);
        used -= 1 << order;
    }
    slots - 1 - used
}

/// What a fragmented device still gives at order 4.
#[derive(Clone, Copy, Debug)]
pub struct Fragmentation {
    /// Free slots after [`fragment`].
    pub free: u64,
    /// Slots obtained by order-4 allocations until the first failure.
    pub order4: u64,
}

/// [`fragment`] a device of `slots`, then allocate order 4 until failure.
pub fn fragmentation<D: PhysSlots>(d: &D, slots: u64) -> Fragmentation {
    let free = fragment(d, slots, 7);
    let mut order4 = 0;
    while d.alloc(4, 0, 4096).is_some() {
        order4 += 16;
    }
    Fragmentation { free, order4 }
}

/// The engine host for the log benchmark: owns nothing.
pub struct LogHost;

impl EngineHost for LogHost {
    fn release_zswap(&self, _handle: u64) {}
}

/// Flash log device GC throughput: an engine whose only device is a log
/// device (64 segments of 512 slots), kept 80% full by overwrites of random
/// pages; GC passes are timed.
pub struct LogBench {
    eng: Engine<StdProvider, LogHost>,
    page: Vec<u8>,
    staged: Vec<u32>,
    settled: Vec<u32>,
    rng: Rng,
    gc_time: Duration,
    relocated: u64,
}

impl LogBench {
    /// Segments of the device.
    pub const SEGMENTS: u32 = 64;
    /// log2 of the slots per segment.
    pub const SEG_SHIFT: u32 = 9;

    /// A device filled to 80%.
    pub fn new() -> Self {
        let log = LogDevice::new(
            LogConfig::new(Self::SEGMENTS, Self::SEG_SHIFT),
            StdProvider::new(),
        )
        .expect("log config is valid");
        let eng = Engine::with_log(EngineConfig::default(), StdProvider::new(), LogHost, 0, log)
            .expect("engine config is valid");
        let mut page = vec![0u8; 4096];
        page[0] = 1; // neither zero nor same-filled: it needs a device slot
        let mut b = Self {
            eng,
            page,
            staged: Vec::new(),
            settled: Vec::new(),
            rng: Rng(11),
            gc_time: Duration::ZERO,
            relocated: 0,
        };
        let fill = (u64::from(Self::SEGMENTS) << Self::SEG_SHIFT) * 8 / 10;
        for _ in 0..fill {
            b.write_one();
        }
        b
    }

    fn gc(&mut self) {
        let t = Instant::now();
        let pass = self.eng.log_gc(|_, _, _| {});
        self.gc_time += t.elapsed();
        if let Ok(p) = pass {
            self.relocated += u64::from(p.staged);
        }
    }

    fn flush(&mut self) {
        for _ in 0..1000 {
            match self.eng.log_flush(Flush::Full) {
                Ok(Some(f)) => {
                    let _ = self.eng.log_commit(&f);
                    for s in self.staged.drain(..) {
                        let _ = self.eng.map().cache_clear(s, 0, Ctx::NoSleep);
                        self.settled.push(s);
                    }
                    return;
                }
                Ok(None) => return,
                Err(_) => self.gc(),
            }
        }
    }

    fn write_one(&mut self) {
        let Ok(s) = self.eng.alloc(0, 0, None, Ctx::NoSleep) else {
            return;
        };
        let _ = self.eng.map().dup(s, 1, Ctx::NoSleep);
        for _ in 0..3 {
            match self.eng.log_writeout(s, &self.page) {
                Ok(_) => {
                    self.staged.push(s);
                    return;
                }
                Err(_) => self.flush(),
            }
        }
    }

    /// Overwrite random pages until `passes` more GC passes ran; returns the
    /// time spent in them and the slots they relocated.
    pub fn run(&mut self, passes: u64) -> (Duration, u64) {
        let (t0, r0) = (self.gc_time, self.relocated);
        let start = self.gc_passes();
        // Bounded, in case GC stops making progress.
        for _ in 0..passes.saturating_mul(1 << 16) {
            if self.gc_passes() >= start + passes {
                break;
            }
            if !self.settled.is_empty() {
                let i = self.rng.below(self.settled.len() as u64) as usize;
                let s = self.settled.swap_remove(i);
                let _ = self.eng.map().put(s, 1);
            }
            self.write_one();
        }
        (self.gc_time - t0, self.relocated - r0)
    }

    fn gc_passes(&self) -> u64 {
        self.eng.log_device().map_or(0, |l| l.stats().gc_runs)
    }
}

impl Default for LogBench {
    fn default() -> Self {
        Self::new()
    }
}

/// The machine's atomic floor: one locked read-modify-write.
pub fn floor_rmw(iters: u64) -> Duration {
    #[repr(align(64))]
    struct Line(AtomicU64);
    let a = Line(AtomicU64::new(0));
    let t = Instant::now();
    for _ in 0..iters {
        black_box(&a.0).fetch_add(1, Ordering::AcqRel);
    }
    t.elapsed()
}

/// One read-side section of the userspace default reclamation
/// (`vswap_core::epoch`, what `StdProvider` gives every `Pin`): enter and
/// leave, nothing inside. The kernel's section is `rcu_read_lock` /
/// `rcu_read_unlock` (no atomics), modelled as 0 ns.
pub fn floor_section(iters: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        vswap_core::epoch::read_lock();
        // SAFETY: pairs with the `read_lock` just above, on this thread.
        unsafe { vswap_core::epoch::read_unlock() };
        black_box(());
    }
    t.elapsed()
}

/// The floor on two threads at once, each on its own cache line: wall time
/// per iteration equals [`floor_rmw`]'s when the machine really gives two
/// CPUs, and doubles when other processes take one (the control for every
/// two-thread figure of the same run).
pub fn floor_rmw_two_threads(iters: u64) -> Duration {
    #[repr(align(64))]
    struct Line(AtomicU64);
    let lines = [Line(AtomicU64::new(0)), Line(AtomicU64::new(0))];
    let t = Instant::now();
    std::thread::scope(|s| {
        for l in &lines {
            s.spawn(move || {
                for _ in 0..iters {
                    black_box(&l.0).fetch_add(1, Ordering::AcqRel);
                }
            });
        }
    });
    t.elapsed()
}

/// Slots of the nearly-full device runs (16 GiB of 4 KiB pages, the
/// outside measurement's size).
pub const NEARLY_FULL_SLOTS: u64 = 4 << 20;

/// Per-call latencies (ns, sorted) on a device of `slots` held at `use_pct`
/// percent used (issue 14 item 3): filled with order-0 slots on 2 CPU
/// numbers, a random part freed down to `use_pct`, then `ops` rounds of one
/// timed order-0 allocation (freed again) and one untimed churn (a random
/// live slot freed and replaced), so the holes move. At `use_pct` 100 the
/// timed call is instead the failing allocation right after a free and the
/// allocation that took that slot back (the first failure after room was
/// made: the expensive one while failures rescanned the device).
pub fn nearly_full<D: PhysSlots>(d: &D, use_pct: u64, ops: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng(seed);
    let mut live: Vec<u64> = Vec::new();
    while let Some(o) = d.alloc(0, live.len() as u32 % 2, 1 + live.len() as u64 % 1000) {
        live.push(o);
    }
    let keep = live.len() as u64 * use_pct / 100;
    while live.len() as u64 > keep {
        let i = (rng.next_u64() % live.len() as u64) as usize;
        d.free(live.swap_remove(i), 1);
    }
    let mut t = Vec::with_capacity(ops);
    for i in 0..ops {
        let cpu = i as u32 % 2;
        if live.is_empty() {
            let a = Instant::now();
            let o = d.alloc(0, cpu, 7);
            t.push(a.elapsed().as_nanos() as f64);
            if let Some(o) = o {
                d.free(o, 1);
            }
            continue;
        }
        let j = (rng.next_u64() % live.len() as u64) as usize;
        if use_pct >= 100 {
            d.free(live[j], 1);
            match d.alloc(0, cpu, 7) {
                Some(o) => live[j] = o,
                None => {
                    live.swap_remove(j);
                }
            }
            let a = Instant::now();
            let r = d.alloc(0, cpu, 7);
            t.push(a.elapsed().as_nanos() as f64);
            if let Some(o) = r {
                live.push(o);
            }
            continue;
        }
        let a = Instant::now();
        let o = d.alloc(0, cpu, 7);
        t.push(a.elapsed().as_nanos() as f64);
        if let Some(o) = o {
            d.free(o, 1);
        }
        d.free(live[j], 1);
        if let Some(o) = d.alloc(0, cpu, 9) {
            live[j] = o;
        } else {
            live.swap_remove(j);
        }
    }
    t.sort_by(f64::total_cmp);
    t
}
