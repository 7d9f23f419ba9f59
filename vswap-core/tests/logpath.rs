//! The engine over the flash log device: staged writeout, whole-segment
//! flushes committed to descriptors, overwrites and frees invalidating, GC
//! relocating under the slot lock. The device is a byte array; after every GC
//! pass and at the end every live page is read back byte for byte.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::HashMap;
use std::sync::Mutex;

use vswap_core::{
    Backend, Ctx, EngineConfig, EngineHost, Error, Geometry, MapConfig, Put, StdProvider,
};
use vswap_core::{Engine, Flush, GcPolicy, LogConfig, LogDevice};

const PAGE: usize = 64;
const LOG: u8 = 5;

#[derive(Default)]
struct Host {
    zswap: Mutex<HashMap<u64, Vec<u8>>>,
    next: Mutex<u64>,
}

impl EngineHost for Host {
    fn release_zswap(&self, h: u64) {
        self.zswap.lock().unwrap().remove(&h).unwrap();
    }
    fn zswap_store(&self, _slot: u32, page: &[u8]) -> Option<u64> {
        (page[0] == b'z').then(|| {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            self.zswap.lock().unwrap().insert(*n, page.to_vec());
            *n
        })
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Sim<'a> {
    e: Engine<&'a StdProvider, Host>,
    disk: Vec<u8>,
    live: HashMap<u32, Vec<u8>>,
    staged: Vec<u32>,
}

impl Sim<'_> {
    fn read(&self, off: u64) -> &[u8] {
        &self.disk[off as usize * PAGE..][..PAGE]
    }

    fn flush(&mut self, mode: Flush) {
        let Some(f) = self.e.log_flush(mode).unwrap() else {
            return;
        };
        let log = self.e.log_device().unwrap();
        for (owner, off) in log.live(f.segment()).unwrap() {
            let data = self.live[&owner].clone();
            self.disk[off as usize * PAGE..][..PAGE].copy_from_slice(&data);
        }
        let n = self.e.log_commit(&f).unwrap();
        assert_eq!(n, f.len(), "every staged owner was still waiting");
        // Written: the folios leave the swap cache.
        for s in std::mem::take(&mut self.staged) {
            assert!(matches!(
                self.e.map().lookup(s).unwrap().backend,
                Backend::Phys { dev: LOG, .. }
            ));
            assert_eq!(
                self.e.map().cache_clear(s, 0, Ctx::NoSleep).unwrap(),
                Put::Live
            );
        }
    }

    fn write(&mut self, data: Vec<u8>) {
        let s = self.e.alloc(0, 0, None, Ctx::NoSleep).unwrap();
        self.e.map().dup(s, 1, Ctx::NoSleep).unwrap();
        self.live.insert(s, data.clone());
        loop {
            match self.e.log_writeout(s, &data) {
                Ok(Some(_)) => {
                    self.e.map().cache_clear(s, 0, Ctx::NoSleep).unwrap();
                    return;
                }
                Ok(None) => {
                    self.staged.push(s);
                    return;
                }
                Err(Error::Busy) => self.flush(Flush::Full),
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    fn gc(&mut self) {
        let disk = &mut self.disk;
        self.e
            .log_gc(|_, from, to| {
                let page = disk[from as usize * PAGE..][..PAGE].to_vec();
                disk[to as usize * PAGE..][..PAGE].copy_from_slice(&page);
            })
            .unwrap();
        self.check();
    }

    fn check(&self) {
        let zswap = self.e.host().zswap.lock().unwrap();
        for (s, data) in &self.live {
            let en = self.e.map().lookup(*s).unwrap();
            match en.backend {
                Backend::Zero => assert!(data.iter().all(|b| *b == 0)),
                Backend::Same(v) => assert_eq!(&v.to_ne_bytes().repeat(PAGE / 8), data),
                Backend::Zswap(h) => assert_eq!(&zswap[&h], data),
                Backend::Phys { dev, off } => {
                    assert_eq!(dev, LOG);
                    assert_eq!(self.read(off), &data[..], "slot {s} at {off}");
                    assert_eq!(self.e.log_device().unwrap().owner(off).unwrap(), Some(*s));
                }
                Backend::None => assert!(self.staged.contains(s), "slot {s} has no backend"),
            }
        }
    }
}

#[test]
fn log_device_path_keeps_every_page() {
    for policy in [GcPolicy::Greedy, GcPolicy::CostBenefit] {
        let p = StdProvider::new();
        let mut lc = LogConfig::new(32, 3);
        lc.page_size = PAGE as u32;
        lc.policy = policy;
        let log = LogDevice::new(lc, &p).unwrap();
        let cfg = EngineConfig {
            map: MapConfig {
                geometry: Geometry::tiny(4, 1024, 2),
            },
            ..Default::default()
        };
        let e = Engine::with_log(cfg, &p, Host::default(), LOG, log).unwrap();
        let mut sim = Sim {
            e,
            disk: vec![0; 32 * 8 * PAGE],
            live: HashMap::new(),
            staged: Vec::new(),
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let target = 150; // of 32 * 8 = 256 device slots, 2 segments reserved
        for step in 0..4000u64 {
            let kind = rng.below(10);
            let data: Vec<u8> = match kind {
                0 => vec![0; PAGE],
                1 => (0..PAGE)
                    .map(|j| {
                        if j == 0 {
                            b'z'
                        } else {
                            (step + j as u64) as u8
                        }
                    })
                    .collect(),
                _ => (0..PAGE)
                    .map(|j| (step * 31 + j as u64) as u8 | 1)
                    .collect(),
            };
            if sim.live.len() >= target || (rng.below(3) == 0 && !sim.live.is_empty()) {
                // Overwrite: free a random live, written page.
                let keys: Vec<u32> = sim
                    .live
                    .keys()
                    .copied()
                    .filter(|s| !sim.staged.contains(s))
                    .collect();
                if let Some(&s) = keys.get(rng.below(keys.len().max(1) as u64) as usize) {
                    if sim.e.put(s, 1).unwrap() == Put::Live {
                        // Locked by GC (staged for relocation): a zombie the
                        // GC commit frees (and loses gracefully with Gone).
                        let en = sim.e.map().lookup(s).unwrap();
                        assert!(en.locked && en.count == 0 && !en.cached);
                    }
                    sim.live.remove(&s);
                }
            }
            sim.write(data);
            while sim.e.log_device().unwrap().free_segments() < 5 {
                let before = sim.e.log_device().unwrap().stats().segments_erased;
                sim.gc();
                if sim.e.log_device().unwrap().stats().segments_erased == before {
                    break;
                }
            }
        }
        sim.flush(Flush::Now);
        sim.check();
        let st = sim.e.log_device().unwrap().stats();
        println!(
            "log path {policy:?}: host {} B, device {} B, WA {:.3}, gc runs {}",
            st.host_bytes,
            st.device_bytes,
            st.write_amplification().unwrap_or(0.0),
            st.gc_runs
        );
        assert!(st.write_amplification().unwrap() >= 1.0);
        // Free everything; GC passes commit (or lose) the last relocations and
        // the log empties.
        for s in sim.live.keys().copied().collect::<Vec<_>>() {
            sim.e.put(s, 1).unwrap();
        }
        sim.live.clear();
        for _ in 0..4 {
            sim.gc();
        }
        assert_eq!(sim.e.map().stats().live_slots, 0);
        assert_eq!(sim.e.log_device().unwrap().stats().live_slots, 0);
        assert!(sim.e.host().zswap.lock().unwrap().is_empty());
    }
}
