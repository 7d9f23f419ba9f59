//! Direct mode (a device's slots carry their own core words), the swap-ops
//! dispatcher over "virtual + direct", "virtual only" and "direct only", and
//! swapoff of the virtual layer into a direct device or into memory.
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
    Backend, ChargePolicy, Ctx, DeviceConfig, Engine, EngineConfig, EngineHost, Error, Geometry,
    MapConfig, Mode, NoHost, PhysDevice, Placement, Put, StdProvider, Swap, SwapEntry, SwapOps,
    VIRTUAL_TYPE, VirtMove, VswapMap,
};

const S: Ctx = Ctx::MaySleep;

fn direct<'a>(
    p: &'a StdProvider,
    slots: u64,
    discard: bool,
    bad: &[u64],
) -> VswapMap<&'a StdProvider, NoHost> {
    VswapMap::direct(
        MapConfig {
            geometry: Geometry::tiny(3, slots, 2),
            ..MapConfig::default()
        },
        discard,
        false,
        bad,
        p,
        NoHost,
    )
    .unwrap()
}

#[test]
fn direct_only_lifecycle_bad_slots_and_discard() {
    let p = StdProvider::new();
    let d = direct(&p, 32, true, &[5, 6]);
    let bytes = p.bytes_in_use();
    let mut swap = Swap::new();
    swap.set_direct(2, &d).unwrap();
    assert_eq!(
        swap.alloc(Mode::Virtual, 0, 0, S),
        Err(Error::NoDevice),
        "direct only"
    );
    assert_eq!(swap.alloc(Mode::Direct(1), 0, 0, S), Err(Error::NoDevice));
    let mut got = Vec::new();
    while let Ok(e) = swap.alloc(Mode::Direct(2), 0, 0, S) {
        assert_eq!(e.ty, 2);
        assert!(
            ![0, 5, 6].contains(&e.off),
            "reserved slot {} handed out",
            e.off
        );
        got.push(e);
    }
    assert_eq!(got.len(), 32 - 3);
    let e = got[0];
    swap.dup(e, 2, S).unwrap();
    swap.store(e, Backend::None, Backend::Zero).unwrap();
    assert_eq!(
        swap.store(e, Backend::Zero, Backend::Phys { dev: 0, off: 1 }),
        Err(Error::WrongState)
    );
    assert_eq!(swap.cache_clear(e, 0, S).unwrap(), Put::Live);
    assert_eq!(swap.lookup(e).unwrap().backend, Backend::Zero);
    assert_eq!(swap.put(e, 2).unwrap(), Put::Freed);
    // Empty a whole cluster (slots 8..16): it waits for discard.
    for x in got.iter().filter(|x| (8..16).contains(&x.off)) {
        swap.cache_clear(*x, 0, S).unwrap();
    }
    assert_eq!(d.take_discard(), Some(1));
    d.discard_done(1).unwrap();
    assert_eq!(
        p.bytes_in_use(),
        bytes,
        "a direct device makes every table up front"
    );
}

#[test]
fn virtual_and_direct_side_by_side() {
    let p = StdProvider::new();
    let v = VswapMap::new(
        MapConfig {
            geometry: Geometry::tiny(3, 64, 2),
            ..MapConfig::default()
        },
        &p,
        NoHost,
    )
    .unwrap();
    let d = direct(&p, 64, false, &[]);
    let mut swap = Swap::new();
    swap.set_virtual(&v);
    swap.set_direct(0, &d).unwrap();
    let mut live: Vec<SwapEntry> = Vec::new();
    for i in 0..40u32 {
        let mode = if i % 3 == 0 {
            Mode::Direct(0)
        } else {
            Mode::Virtual
        };
        let e = swap.alloc(mode, 0, i % 2, S).unwrap();
        swap.dup(e, 1 + i % 4, S).unwrap();
        swap.cache_clear(e, 0, S).unwrap();
        live.push(e);
    }
    assert!(live.iter().any(|e| e.ty == VIRTUAL_TYPE) && live.iter().any(|e| e.ty == 0));
    for (i, e) in live.iter().enumerate() {
        assert_eq!(swap.lookup(*e).unwrap().count, 1 + i as u32 % 4);
    }
    for (i, e) in live.iter().enumerate() {
        assert_eq!(swap.put(*e, 1 + i as u32 % 4).unwrap(), Put::Freed);
    }
    assert_eq!(v.stats().live_slots + d.stats().live_slots, 0);
}

#[derive(Default)]
struct Host {
    zswap: Mutex<HashMap<u64, Vec<u8>>>,
}

impl EngineHost for Host {
    fn release_zswap(&self, h: u64) {
        self.zswap.lock().unwrap().remove(&h).unwrap();
    }
    fn zswap_store(&self, slot: u32, page: &[u8]) -> Option<u64> {
        (page[0] == b'z').then(|| {
            self.zswap
                .lock()
                .unwrap()
                .insert(u64::from(slot), page.to_vec());
            u64::from(slot)
        })
    }
}

#[test]
fn swapoff_of_the_virtual_layer_to_direct_slots_and_to_memory() {
    for to_memory in [false, true] {
        let p = StdProvider::new();
        let cfg = EngineConfig {
            map: MapConfig {
                geometry: Geometry::tiny(3, 256, 2),
                ..MapConfig::default()
            },
            placement: Placement::Deferred,
            charge: ChargePolicy::None,
            page_size: 64,
        };
        let e = Engine::new(cfg, &p, Host::default()).unwrap();
        let dev = DeviceConfig {
            geometry: Geometry::tiny(3, 64, 2),
            discard: false,
            rotational: false,
        };
        e.add_device(0, 1, PhysDevice::new(dev, &[], &p).unwrap())
            .unwrap();
        let mut disk: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut want: HashMap<u32, (Vec<u8>, u32, bool)> = HashMap::new();
        for i in 0..60u32 {
            let page: Vec<u8> = match i % 4 {
                0 => vec![0; 64],
                1 => vec![0xff; 64],
                2 => (0..64)
                    .map(|j| if j == 0 { b'z' } else { (i + j) as u8 })
                    .collect(),
                _ => (0..64).map(|j| (i * 7 + j) as u8 | 1).collect(),
            };
            let s = e.alloc(0, i % 2, None, S).unwrap();
            let count = 1 + i % 3;
            e.map().dup(s, count, S).unwrap();
            if let Backend::Phys { off, .. } = e.writeout(s, &page, 0).unwrap() {
                disk.insert(off, page.clone());
            }
            let cached = i % 5 == 0;
            if !cached {
                e.map().cache_clear(s, 0, S).unwrap();
            }
            want.insert(s, (page, count, cached));
        }
        let target = direct(&p, 128, false, &[]);
        let mut moved_to: HashMap<u32, u32> = HashMap::new();
        let mut memory: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut direct_disk: HashMap<u32, Vec<u8>> = HashMap::new();
        let zswap = &e.host().zswap;
        let n = e
            .swapoff_virtual(
                if to_memory {
                    None
                } else {
                    Some(&target as &dyn SwapOps)
                },
                0,
                |m| {
                    let (slot, backend) = match m {
                        VirtMove::ToDirect { slot, backend, .. }
                        | VirtMove::ToMemory { slot, backend } => (slot, backend),
                    };
                    let data = match backend {
                        Backend::Zero => vec![0; 64],
                        Backend::Same(v) => v.to_ne_bytes().repeat(8),
                        Backend::Zswap(h) => zswap.lock().unwrap()[&h].clone(),
                        Backend::Phys { off, .. } => disk[&off].clone(),
                        Backend::None => panic!("every page was written out"),
                    };
                    match m {
                        VirtMove::ToDirect { to, .. } => {
                            moved_to.insert(slot, to);
                            if !matches!(backend, Backend::Zero | Backend::Same(_)) {
                                direct_disk.insert(to, data);
                            }
                        }
                        VirtMove::ToMemory { .. } => {
                            memory.insert(slot, data);
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(n, 60);
        assert_eq!(e.map().stats().live_slots, 0, "the virtual layer is empty");
        assert_eq!(
            e.device(0).unwrap().stats().used,
            0,
            "device slots released"
        );
        assert!(zswap.lock().unwrap().is_empty(), "zswap objects released");
        for (s, (page, count, cached)) in &want {
            if to_memory {
                assert_eq!(&memory[s], page);
                continue;
            }
            let d = moved_to[s];
            let en = target.lookup(d).unwrap();
            assert_eq!((en.count, en.cached), (*count, *cached), "slot {s} -> {d}");
            match en.backend {
                Backend::Zero => assert!(page.iter().all(|b| *b == 0)),
                Backend::Same(v) => assert_eq!(&v.to_ne_bytes().repeat(8), page),
                Backend::None => assert_eq!(&direct_disk[&d], page),
                b => panic!("{b:?}"),
            }
        }
    }
}

/// Issue 12, item 6, for a direct map: a device of 29 slots (not a whole
/// number of 8-slot clusters) never hands out 29..32, and a range that
/// reaches into that tail is `OutOfRange` as a whole, before any slot of it
/// is touched (the map checks ranges against the device's size, not the
/// end of its last cluster).
#[test]
fn a_direct_map_ends_at_its_size() {
    let p = StdProvider::new();
    let d = direct(&p, 29, false, &[]);
    let mut got = Vec::new();
    while let Ok(s) = d.alloc(0, 0, S) {
        got.push(s);
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (1..29).collect::<Vec<u32>>(),
        "every slot below 29, once"
    );
    for s in 24..29 {
        d.dup(s, 1, S).unwrap();
    }
    let before: Vec<_> = (24..29).map(|s| d.lookup(s).unwrap()).collect();
    assert_eq!(d.lock_range(24, 3), Err(Error::OutOfRange));
    assert_eq!(d.put_range(24, 3), Err(Error::OutOfRange));
    assert_eq!(d.set_memcg(24, 3, 7, S), Err(Error::OutOfRange));
    let after: Vec<_> = (24..29).map(|s| d.lookup(s).unwrap()).collect();
    assert_eq!(before, after, "nothing in the range changed");
    for s in 29..32 {
        assert_eq!(d.lookup(s), Err(Error::OutOfRange), "slot {s}");
    }
}
