//! The swap backends behind the engine: the zswap pool (lz4), the swap file
//! (a [`PhysDevice`] or the flash [`LogDevice`]), and the swap-out / swap-in /
//! writeback paths that drive [`Engine`].
//!
//! The engine keeps every descriptor (virtual slot -> zero, same-filled,
//! zswap handle, device offset) and the device allocators and reverse maps;
//! this module only moves bytes. Calls come from one thread at a time in
//! practice (the swapper's evictor runs while the mutators, and so the fault
//! handler, are stopped), but every path is safe to call concurrently.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use vswap_core::{
    Backend, Ctx, DeviceConfig, Engine, EngineConfig, EngineHost, Error as VError, Flush, GcPolicy,
    LogConfig, LogDevice, MapConfig, PhysDevice, StdProvider, Stream,
};

use crate::ToolError;
use crate::workload::PAGE;

/// Which device takes pages that need one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A swap file through a fixed-slot physical device (cluster allocator).
    File,
    /// A swap file through the flash log device (whole-segment writes, GC).
    Log,
}

/// The log device's garbage-collection victim policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GcKind {
    /// Fewest valid slots.
    Greedy,
    /// LFS cost-benefit: `(1 - u) * age / (1 + u)`.
    CostBenefit,
}

/// Swapper configuration.
#[derive(Clone, Debug)]
pub struct SwapConfig {
    /// Device kind.
    pub device: DeviceKind,
    /// Swap file size in pages.
    pub swap_pages: u64,
    /// zswap pool limit in bytes (compressed).
    pub pool_limit: u64,
    /// The swap file (created, truncated; see `keep_file`).
    pub path: PathBuf,
    /// Keep the file after the run (else it is unlinked at once).
    pub keep_file: bool,
    /// log2 of the log device's segment size in pages.
    pub seg_shift: u32,
    /// The log device's GC policy.
    pub gc: GcKind,
}

/// Backend index in the counters: zero, same, zswap, file.
pub const BACKENDS: [&str; 4] = ["zero", "same", "zswap", "file"];

/// Event counters (relaxed atomics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Swap-outs by backend (zero, same, zswap, file/staged).
    pub out: [AtomicU64; 4],
    /// Swap-ins by backend (zero, same, zswap, file, swap cache).
    pub inn: [AtomicU64; 5],
    /// zswap objects written back to the file.
    pub writebacks: AtomicU64,
    /// Pages the pool refused: compressed over 3/4 of a page.
    pub rejected_incompressible: AtomicU64,
    /// Pages the pool refused: pool at its limit.
    pub rejected_full: AtomicU64,
    /// Bytes written to the swap file (padding and GC copies included).
    pub file_written: AtomicU64,
    /// Bytes read from the swap file.
    pub file_read: AtomicU64,
    /// Uncompressed bytes ever stored in the pool.
    pub pool_in: AtomicU64,
    /// Compressed bytes ever stored in the pool.
    pub pool_out: AtomicU64,
    /// Largest pool size seen.
    pub pool_peak: AtomicU64,
}

#[derive(Default)]
struct Pool {
    objs: HashMap<u64, Box<[u8]>>,
    next: u64,
    bytes: u64,
}

/// The engine's host: the zswap pool.
pub struct ToolHost {
    pool: Mutex<Pool>,
    limit: u64,
    /// Counters.
    pub c: Counters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EngineHost for ToolHost {
    fn release_zswap(&self, handle: u64) {
        let mut p = lock(&self.pool);
        if let Some(o) = p.objs.remove(&handle) {
            p.bytes -= o.len() as u64;
        }
    }

    fn zswap_store(&self, _slot: u32, page: &[u8]) -> Option<u64> {
        let c = lz4_flex::block::compress(page);
        if c.len() > PAGE * 3 / 4 {
            self.c.rejected_incompressible.fetch_add(1, Relaxed);
            return None;
        }
        let mut p = lock(&self.pool);
        if p.bytes + c.len() as u64 > self.limit {
            self.c.rejected_full.fetch_add(1, Relaxed);
            return None;
        }
        p.next += 1;
        let h = p.next;
        p.bytes += c.len() as u64;
        self.c.pool_peak.fetch_max(p.bytes, Relaxed);
        self.c.pool_in.fetch_add(PAGE as u64, Relaxed);
        self.c.pool_out.fetch_add(c.len() as u64, Relaxed);
        p.objs.insert(h, c.into_boxed_slice());
        Some(h)
    }
}

impl ToolHost {
    /// Compressed bytes in the pool now.
    pub fn pool_bytes(&self) -> u64 {
        lock(&self.pool).bytes
    }

    fn load(&self, h: u64, out: &mut [u8]) -> Result<(), ToolError> {
        let p = lock(&self.pool);
        let o = p
            .objs
            .get(&h)
            .ok_or(ToolError::Internal("zswap handle missing"))?;
        match lz4_flex::block::decompress_into(o, out) {
            Ok(n) if n == PAGE => Ok(()),
            _ => Err(ToolError::Internal("zswap object does not decompress")),
        }
    }
}

/// Where a swapped-in page's content came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// All zeroes (map the zero page).
    Zero,
    /// In the caller's buffer.
    Data,
}

/// The engine, its devices and backends.
pub struct Swapper<'p> {
    engine: Engine<&'p StdProvider, ToolHost>,
    dev_provider: &'p StdProvider,
    kind: DeviceKind,
    file: File,
    path: PathBuf,
    /// Log mode: pages staged for the next segment (the swap cache).
    staging: Mutex<HashMap<u32, Box<[u8]>>>,
    /// zswap objects in store order: (page, slot, handle), for writeback.
    lru: Mutex<VecDeque<(u32, u32, u64)>>,
}

const DEV: u8 = 0;

fn eng(what: &'static str) -> impl Fn(VError) -> ToolError {
    move |e| ToolError::Engine(what, e)
}

impl<'p> Swapper<'p> {
    /// Build the engine and its device; `map_p` accounts the virtual map's
    /// memory, `dev_p` the device's.
    pub fn new(
        cfg: &SwapConfig,
        map_p: &'p StdProvider,
        dev_p: &'p StdProvider,
    ) -> Result<Self, ToolError> {
        if let Ok(m) = std::fs::metadata(&cfg.path) {
            if m.is_file() && m.len() > 0 {
                return Err(ToolError::BadArg(format!(
                    "--swap-file {}: exists and is not empty; remove it or name a new file",
                    cfg.path.display()
                )));
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&cfg.path)
            .map_err(|e| ToolError::io("create swap file", &cfg.path, e))?;
        if !cfg.keep_file {
            let _ = std::fs::remove_file(&cfg.path);
        }
        let mut ecfg = EngineConfig {
            map: MapConfig::default(),
            ..Default::default()
        };
        ecfg.map.geometry.cpus = 2;
        let host = ToolHost {
            pool: Mutex::new(Pool::default()),
            limit: cfg.pool_limit,
            c: Counters::default(),
        };
        let engine = match cfg.device {
            DeviceKind::File => {
                let e = Engine::new(ecfg, map_p, host).map_err(eng("engine"))?;
                let d = PhysDevice::new(DeviceConfig::new(cfg.swap_pages, 2), &[], dev_p)
                    .map_err(eng("swap device"))?;
                e.add_device(DEV, 10, d).map_err(eng("add device"))?;
                e
            }
            DeviceKind::Log => {
                let segs = (cfg.swap_pages >> cfg.seg_shift) as u32;
                let mut lc = LogConfig::new(segs, cfg.seg_shift);
                lc.policy = match cfg.gc {
                    GcKind::Greedy => GcPolicy::Greedy,
                    GcKind::CostBenefit => GcPolicy::CostBenefit,
                };
                let l = LogDevice::new(lc, dev_p).map_err(|_| {
                    ToolError::BadArg(format!(
                        "--swap-size: a log device needs at least 4 segments of {} KiB",
                        (PAGE << cfg.seg_shift) >> 10
                    ))
                })?;
                Engine::with_log(ecfg, map_p, host, DEV, l).map_err(eng("engine"))?
            }
        };
        Ok(Self {
            engine,
            dev_provider: dev_p,
            kind: cfg.device,
            file,
            path: cfg.path.clone(),
            staging: Mutex::new(HashMap::new()),
            lru: Mutex::new(VecDeque::new()),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine<&'p StdProvider, ToolHost> {
        &self.engine
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.engine.host().c
    }

    /// Device metadata bytes (allocator, reverse map, log segments).
    pub fn device_meta_bytes(&self) -> u64 {
        self.dev_provider.bytes_in_use()
    }

    fn write(&self, buf: &[u8], off: u64) -> Result<(), ToolError> {
        self.file
            .write_all_at(buf, off * PAGE as u64)
            .map_err(|e| ToolError::io("write swap file", &self.path, e))?;
        self.counters()
            .file_written
            .fetch_add(buf.len() as u64, Relaxed);
        Ok(())
    }

    fn read(&self, buf: &mut [u8], off: u64) -> Result<(), ToolError> {
        self.file
            .read_exact_at(buf, off * PAGE as u64)
            .map_err(|e| ToolError::io("read swap file", &self.path, e))?;
        self.counters()
            .file_read
            .fetch_add(buf.len() as u64, Relaxed);
        Ok(())
    }

    /// Swap out `data` (one page of region page `page`): a new virtual slot
    /// with one reference, written to the cheapest backend. Returns the slot.
    pub fn swap_out(&self, page: u32, data: &[u8], cpu: u32) -> Result<u32, ToolError> {
        let e = &self.engine;
        let slot = e.alloc(0, cpu, None, Ctx::MaySleep).map_err(eng("alloc"))?;
        let r = self.store(page, slot, data, cpu);
        if r.is_err() {
            let _ = e.cache_clear(slot, 0, Ctx::MaySleep);
        }
        r.map(|()| slot)
    }

    fn store(&self, page: u32, slot: u32, data: &[u8], cpu: u32) -> Result<(), ToolError> {
        let e = &self.engine;
        let c = self.counters();
        let b = match self.kind {
            DeviceKind::File => {
                let b = match e.writeout(slot, data, cpu) {
                    Err(VError::NoSpace) => return Err(ToolError::SwapFull(self.path.clone())),
                    r => r.map_err(eng("writeout"))?,
                };
                if let Backend::Phys { off, .. } = b {
                    self.write(data, off)?;
                }
                Some(b)
            }
            DeviceKind::Log => loop {
                match e.log_writeout(slot, data) {
                    Err(VError::Busy) => self.log_flush(Flush::Full)?,
                    r => break r.map_err(eng("log writeout"))?,
                }
            },
        };
        e.map().dup(slot, 1, Ctx::MaySleep).map_err(eng("dup"))?;
        match b {
            Some(b) => {
                let i = match b {
                    Backend::Zero => 0,
                    Backend::Same(_) => 1,
                    Backend::Zswap(h) => {
                        lock(&self.lru).push_back((page, slot, h));
                        2
                    }
                    _ => 3,
                };
                c.out[i].fetch_add(1, Relaxed);
                e.cache_clear(slot, 0, Ctx::MaySleep)
                    .map_err(eng("cache clear"))?;
            }
            None => {
                // Staged on the log device: the page stays in our swap cache
                // until its segment is written.
                c.out[3].fetch_add(1, Relaxed);
                lock(&self.staging).insert(slot, data.into());
                let log = self.log_device()?;
                if log.staged(Stream::Host) >= log.segment_slots() {
                    self.log_flush(Flush::Full)?;
                }
            }
        }
        Ok(())
    }

    fn log_device(&self) -> Result<&LogDevice<&'p StdProvider>, ToolError> {
        self.engine
            .log_device()
            .ok_or(ToolError::Internal("no log device"))
    }

    /// Swap in virtual slot `slot` into `out` and drop its reference (the
    /// slot is freed, its backend released). A slot locked by a staged log
    /// writeback is read from its zswap object without the lock, and the
    /// writeback is taken back (or, if its segment is being written, the
    /// slot dies under the lock and the commit frees it).
    pub fn swap_in(&self, slot: u32, out: &mut [u8]) -> Result<Loaded, ToolError> {
        let e = &self.engine;
        let c = self.counters();
        let mut tries = 0;
        let (ent, i, l) = loop {
            let ent = e.map().lookup(slot).map_err(eng("lookup"))?;
            let (i, l) = match ent.backend {
                Backend::Zero => (0, Loaded::Zero),
                Backend::Same(w) => {
                    for ch in out.chunks_exact_mut(8) {
                        ch.copy_from_slice(&w.to_ne_bytes());
                    }
                    (1, Loaded::Data)
                }
                Backend::Zswap(h) => {
                    if let Err(err) = e.host().load(h, out) {
                        // Written back (and released) since the lookup:
                        // look again.
                        tries += 1;
                        if tries < 4
                            && e.map().lookup(slot).map(|x| x.backend) != Ok(Backend::Zswap(h))
                        {
                            continue;
                        }
                        return Err(err);
                    }
                    (2, Loaded::Data)
                }
                Backend::Phys { off, .. } => {
                    self.read(out, off)?;
                    (3, Loaded::Data)
                }
                Backend::None => {
                    let d = lock(&self.staging)
                        .remove(&slot)
                        .ok_or(ToolError::Internal("staged page missing"))?;
                    out.copy_from_slice(&d);
                    if let Ok(log) = self.log_device() {
                        let _ = log.cancel(Stream::Host, slot);
                    }
                    (4, Loaded::Data)
                }
            };
            break (ent, i, l);
        };
        if ent.locked && i == 2 && self.kind == DeviceKind::Log {
            // A staged writeback (refused, changing nothing, if the lock is
            // someone else's or the segment is flushed already).
            let _ = e.log_writeback_abort(slot);
        }
        c.inn[i].fetch_add(1, Relaxed);
        if ent.cached {
            e.cache_clear(slot, 0, Ctx::MaySleep)
                .map_err(eng("cache clear"))?;
        }
        e.put(slot, 1).map_err(eng("put"))?;
        Ok(l)
    }

    /// Background work: write the oldest zswap objects back to the swap file
    /// until the pool is under 90% of its limit. Every page keeps its virtual
    /// slot. In log mode a writeback is staged (its slot locked, its data
    /// still in the pool) and written with its segment: the pool shrinks when
    /// the segment is committed, so staging goes on until a segment is full
    /// (a whole segment of the oldest objects leaves the pool at once).
    pub fn maintain(&self, limit: u64, cpu: u32) -> Result<(), ToolError> {
        let e = &self.engine;
        let target = limit / 10 * 9;
        let mut buf = vec![0u8; PAGE];
        while e.host().pool_bytes() > target {
            let Some((_, slot, h)) = lock(&self.lru).pop_front() else {
                break;
            };
            if e.map().lookup(slot).map(|x| x.backend) != Ok(Backend::Zswap(h)) {
                continue; // swapped in (and maybe reused) since
            }
            match self.kind {
                DeviceKind::File => {
                    let w = match e.writeback_begin(slot, cpu) {
                        Ok(w) => w,
                        Err(VError::NoSpace) => return Err(ToolError::SwapFull(self.path.clone())),
                        Err(err) => return Err(ToolError::Engine("writeback", err)),
                    };
                    let r = e
                        .host()
                        .load(h, &mut buf)
                        .and_then(|()| self.write(&buf, w.off));
                    if let Err(err) = r {
                        let _ = e.writeback_abort(w);
                        return Err(err);
                    }
                    e.writeback_commit(w).map_err(eng("writeback commit"))?;
                    self.counters().writebacks.fetch_add(1, Relaxed);
                }
                DeviceKind::Log => {
                    let log = self.log_device()?;
                    loop {
                        match e.log_writeback_begin(slot) {
                            Ok(()) => break,
                            // A whole segment staged: write it first.
                            Err(VError::Busy)
                                if log.staged(Stream::Host) >= log.segment_slots() =>
                            {
                                self.log_flush(Flush::Full)?;
                            }
                            Err(VError::NoSpace) => {
                                return Err(ToolError::SwapFull(self.path.clone()));
                            }
                            // Locked by someone else, or changed since the
                            // lookup: leave it.
                            Err(VError::Busy | VError::WrongState | VError::NotAllocated) => {
                                break;
                            }
                            Err(err) => return Err(ToolError::Engine("log writeback", err)),
                        }
                    }
                    if log.staged(Stream::Host) >= log.segment_slots() {
                        self.log_flush(Flush::Full)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Log mode: write staged pages (a full segment, or everything with
    /// [`Flush::Now`]), collecting garbage when the device runs out of free
    /// segments.
    pub fn log_flush(&self, mode: Flush) -> Result<(), ToolError> {
        let e = &self.engine;
        let log = self.log_device()?;
        let mut tries = 0;
        loop {
            if log.free_segments() <= log.config().reserve + 1 {
                self.gc()?;
            }
            let f = match e.log_flush(mode) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(VError::NoSpace) if tries < 4 => {
                    tries += 1;
                    self.gc()?;
                    continue;
                }
                Err(VError::NoSpace) => return Err(ToolError::SwapFull(self.path.clone())),
                Err(err) => return Err(ToolError::Engine("log flush", err)),
            };
            let seg_pages = log.segment_slots() as usize;
            let mut buf = vec![0u8; seg_pages * PAGE];
            let mut owners = Vec::with_capacity(f.len() as usize);
            let mut written_back = Vec::new();
            {
                let st = lock(&self.staging);
                for (owner, off) in log.live(f.segment()).map_err(eng("log live"))? {
                    let i = (off - f.base()) as usize;
                    let Some(dst) = buf.get_mut(i * PAGE..(i + 1) * PAGE) else {
                        continue;
                    };
                    if let Some(d) = st.get(&owner) {
                        dst.copy_from_slice(d);
                    } else if let Ok(Backend::Zswap(h)) = e.map().lookup(owner).map(|x| x.backend) {
                        // A staged writeback (its slot locked: the object
                        // stays until the commit, even if the slot died).
                        e.host().load(h, dst)?;
                        written_back.push(owner);
                    }
                    owners.push(owner);
                }
            }
            self.write(&buf, f.base())?;
            e.log_commit(&f).map_err(eng("log commit"))?;
            let mut st = lock(&self.staging);
            for o in owners {
                if let Ok(ent) = e.map().lookup(o) {
                    if matches!(ent.backend, Backend::Phys { .. }) && st.remove(&o).is_some() {
                        let _ = e.cache_clear(o, 0, Ctx::MaySleep);
                    }
                }
            }
            drop(st);
            for o in written_back {
                if let Ok(Backend::Phys { .. }) = e.map().lookup(o).map(|x| x.backend) {
                    self.counters().writebacks.fetch_add(1, Relaxed);
                }
            }
            if mode == Flush::Full || log.staged(Stream::Host) == 0 {
                return Ok(());
            }
        }
    }

    fn gc(&self) -> Result<(), ToolError> {
        let log = self.log_device()?;
        let mut err = None;
        let mut buf = vec![0u8; PAGE];
        for _ in 0..8 {
            let pass = self
                .engine
                .log_gc(|_, from, to| {
                    let r = self
                        .read(&mut buf, from)
                        .and_then(|()| self.write(&buf, to));
                    if let Err(e) = r {
                        err.get_or_insert(e);
                    }
                })
                .map_err(eng("log gc"))?;
            if let Some(e) = err.take() {
                return Err(e);
            }
            if pass.victim.is_none() || log.free_segments() > log.config().reserve + 1 {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    /// A page the pool takes (compressible text, not same-filled).
    fn text(n: u32) -> Vec<u8> {
        format!("page {n:08} ")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(PAGE)
            .collect()
    }

    /// Log mode: zswap pages written back keep their slots; a swap-in of a
    /// staged writeback reads the pool without waiting for the lock and takes
    /// the writeback back; a swap-in of one whose segment is being written
    /// leaves a zombie that the commit frees.
    #[test]
    fn log_writeback_keeps_slots_and_swap_in_copes() {
        let (mp, dp) = (StdProvider::new(), StdProvider::new());
        let path = std::env::temp_dir().join(format!("vswap-swapper-test-{}", std::process::id()));
        let cfg = SwapConfig {
            device: DeviceKind::Log,
            swap_pages: 16 << 4,
            pool_limit: 1 << 20,
            path,
            keep_file: false,
            seg_shift: 4,
            gc: GcKind::Greedy,
        };
        let sw = Swapper::new(&cfg, &mp, &dp).unwrap();
        let e = sw.engine();
        let slots: Vec<u32> = (0..40)
            .map(|i| sw.swap_out(i, &text(i), 0).unwrap())
            .collect();
        for &s in &slots {
            assert!(matches!(
                e.map().lookup(s).unwrap().backend,
                Backend::Zswap(_)
            ));
        }
        // Everything over the limit: two whole segments are written, the
        // last 8 stay staged (locked, in the pool).
        sw.maintain(1, 0).unwrap();
        assert_eq!(sw.counters().writebacks.load(Relaxed), 32);
        for (i, &s) in slots.iter().enumerate() {
            let en = e.map().lookup(s).unwrap();
            if i < 32 {
                assert!(!en.locked && matches!(en.backend, Backend::Phys { .. }));
            } else {
                assert!(en.locked && matches!(en.backend, Backend::Zswap(_)));
            }
        }
        let mut buf = vec![0u8; PAGE];
        // A staged writeback: read from the pool, taken back, freed.
        assert_eq!(sw.swap_in(slots[32], &mut buf).unwrap(), Loaded::Data);
        assert_eq!(buf, text(32));
        assert!(e.map().lookup(slots[32]).is_err());
        // Flushed, not committed: the swap-in reads the pool, the slot dies
        // under the lock; the host writes the segment, the commit loses it.
        let f = e.log_flush(Flush::Now).unwrap().unwrap();
        assert_eq!(f.len(), 7);
        assert_eq!(sw.swap_in(slots[33], &mut buf).unwrap(), Loaded::Data);
        assert_eq!(buf, text(33));
        let en = e.map().lookup(slots[33]).unwrap();
        assert!(en.locked && en.count == 0);
        let log = e.log_device().unwrap();
        for (owner, off) in log.live(f.segment()).unwrap() {
            let Backend::Zswap(h) = e.map().lookup(owner).unwrap().backend else {
                panic!("not in zswap");
            };
            e.host().load(h, &mut buf).unwrap();
            sw.write(&buf, off).unwrap();
        }
        assert_eq!(e.log_commit(&f).unwrap(), 6);
        assert!(e.map().lookup(slots[33]).is_err());
        assert_eq!(e.host().pool_bytes(), 0);
        // Every other page reads back from the log, in its own slot.
        for (i, &s) in slots
            .iter()
            .enumerate()
            .filter(|(i, _)| !(32..34).contains(i))
        {
            assert_eq!(sw.swap_in(s, &mut buf).unwrap(), Loaded::Data);
            assert_eq!(buf, text(i as u32), "page {i}");
        }
        assert_eq!(e.map().stats().live_slots, 0);
        assert_eq!(log.stats().live_slots, 0);
    }
}
