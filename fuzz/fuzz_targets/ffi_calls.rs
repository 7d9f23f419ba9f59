//! The C ABI of `vswap-ffi` (called through the rlib, as C would call it) fed
//! arbitrary arguments within a live engine: stale slots (freed, reused),
//! slot 0, slots past the space, bad orders, CPUs and memcg ids, unknown
//! devices, counts up to `u32::MAX`, stale writeback descriptors; writeout
//! of arbitrary pages, relocation, evacuation (host callbacks that fail,
//! answer -EBUSY, and see folios handed back), device add / remove, mTHP
//! swap-in check, readahead, host-chosen slots of an addressed engine
//! (`vswap_alloc_at`), swapoff of the virtual layer (to memory or to a
//! direct map), the flash log device path (writeout, zswap writeback kept
//! in its virtual slot: begin and abort, flush, commit, GC), and
//! a standalone direct-mode map through the `vswap_map_*` calls. The checks:
//! every return code is 0 / positive or one of the documented `-VSWAP_E*`
//! codes, nothing crashes (the library's panic boundary answering -EFAULT
//! counts as a crash: libFuzzer's panic hook aborts first), a successful
//! lookup describes a live or locked slot, and destroying the engine gives
//! every host byte back.
#![no_main]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::c_void;
use std::ptr;

use libfuzzer_sys::fuzz_target;
use vswap_ffi::*;

/// Host allocator: counts the bytes it has out.
unsafe extern "C" fn host_alloc(
    ctx: *mut c_void,
    size: usize,
    align: usize,
    _: bool,
) -> *mut c_void {
    let Ok(l) = Layout::from_size_align(size.max(1), align) else {
        return ptr::null_mut();
    };
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc_zeroed(l) };
    if !p.is_null() {
        // SAFETY: `ctx` is the `i64` byte counter the target passes.
        unsafe { *ctx.cast::<i64>() += size as i64 };
    }
    p.cast()
}

unsafe extern "C" fn host_free(ctx: *mut c_void, p: *mut c_void, size: usize, align: usize) {
    let l = Layout::from_size_align(size.max(1), align).expect("layout of a block we made");
    // SAFETY: `p` came from `host_alloc` with this size and alignment.
    unsafe { dealloc(p.cast(), l) };
    // SAFETY: as in `host_alloc`.
    unsafe { *ctx.cast::<i64>() -= size as i64 };
}

const OK_CODES: [i32; 15] = [
    VSWAP_EPERM,
    VSWAP_ENOENT,
    VSWAP_E2BIG,
    VSWAP_EAGAIN,
    VSWAP_ENOMEM,
    VSWAP_EFAULT,
    VSWAP_EBUSY,
    VSWAP_EEXIST,
    VSWAP_ENODEV,
    VSWAP_EINVAL,
    VSWAP_ENOSPC,
    VSWAP_ERANGE,
    VSWAP_EOVERFLOW,
    VSWAP_EOPNOTSUPP,
    VSWAP_ESTALE,
];

fn check(what: &str, rc: i32) -> i32 {
    assert!(
        rc >= 0 || OK_CODES.iter().any(|&c| rc == -c),
        "{what}: undocumented return code {rc}"
    );
    assert_ne!(rc, -VSWAP_EFAULT, "{what}: a panic reached the boundary");
    rc
}

/// What the evacuation / swapoff / GC callbacks do, driven by the input.
#[derive(Default)]
struct Io {
    /// Bits consumed one per call: 1 = fail (-EBUSY or -EIO by the next bit).
    script: u64,
    calls: u32,
    /// Cookies handed out for reads and not yet handed back or adopted.
    reads: Vec<(u32, u64)>,
    next_cookie: u64,
}

impl Io {
    fn fail(&mut self) -> Option<i32> {
        let bit = |n: u32| self.script >> (n % 64) & 1 == 1;
        let c = self.calls;
        self.calls += 2;
        bit(c).then(|| if bit(c + 1) { -VSWAP_EBUSY } else { -5 })
    }
}

unsafe extern "C" fn on_move(arg: *mut c_void, mv: *const vswap_move, cookie: *mut u64) -> i32 {
    // SAFETY: `arg` is the target's `Io`; `mv` and `cookie` are valid for
    // the call (the library's contract).
    let (io, mv) = unsafe { (&mut *arg.cast::<Io>(), &*mv) };
    match mv.kind {
        VSWAP_MOVE_DROP => {
            // SAFETY: as above.
            let c = unsafe { *cookie };
            let i = io.reads.iter().position(|r| *r == (mv.slot, c));
            assert!(i.is_some(), "drop of a folio never read: {mv:?} {c}");
            io.reads.swap_remove(i.unwrap_or(0));
            0
        }
        VSWAP_MOVE_COPY | VSWAP_MOVE_READ => {
            if let Some(rc) = io.fail() {
                return rc;
            }
            if mv.kind == VSWAP_MOVE_READ {
                io.next_cookie += 1;
                io.reads.push((mv.slot, io.next_cookie));
                // SAFETY: as above.
                unsafe { *cookie = io.next_cookie };
            }
            0
        }
        k => panic!("unknown move kind {k}"),
    }
}

unsafe extern "C" fn on_virt_move(arg: *mut c_void, mv: *const vswap_virt_move) -> i32 {
    // SAFETY: as in `on_move`.
    let (io, mv) = unsafe { (&mut *arg.cast::<Io>(), &*mv) };
    assert!(
        mv.kind == VSWAP_VIRT_TO_DIRECT || mv.kind == VSWAP_VIRT_TO_MEMORY,
        "unknown virtual move kind {}",
        mv.kind
    );
    io.fail().unwrap_or(0)
}

unsafe extern "C" fn on_gc_copy(arg: *mut c_void, _owner: u32, from: u64, to: u64) {
    // SAFETY: as in `on_move`.
    let io = unsafe { &mut *arg.cast::<Io>() };
    assert_ne!(from, to, "GC copy onto itself");
    io.calls += 1;
}

unsafe extern "C" fn on_live(arg: *mut c_void, _owner: u32, _off: u64) {
    // SAFETY: as in `on_move`.
    unsafe { (*arg.cast::<Io>()).calls += 1 };
}

/// A page from the input: zero, one repeated word, or bytes (length maybe
/// not a multiple of 8, or empty).
fn page(inp: &mut In<'_>) -> Vec<u8> {
    let kind = inp.u8();
    let len = match kind >> 4 {
        0 => 0,
        1 => 7,
        _ => 64,
    };
    match kind % 4 {
        0 => vec![0; len],
        1 => {
            let w = inp.u64() & 0xff_ffff;
            (0..len).map(|i| (w >> (8 * (i % 8))) as u8).collect()
        }
        _ => (0..len).map(|_| inp.u8()).collect(),
    }
}

/// `check` for calls that hand back the host callback's own code (-EIO).
fn check_io(what: &str, rc: i32) -> i32 {
    if rc == -5 { rc } else { check(what, rc) }
}

struct In<'a>(&'a [u8]);

impl In<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = In(data);
    let mut bytes: i64 = 0;
    let ops = vswap_host_ops {
        ctx: (&raw mut bytes).cast(),
        alloc: Some(host_alloc),
        free: Some(host_free),
        release_zswap: None,
        released_phys: None,
        zswap_store: None,
        charge: None,
        uncharge: None,
        discard: None,
    };
    // SAFETY: plain C structs, filled by the library's defaults below.
    let mut cfg: vswap_engine_config = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    assert_eq!(unsafe { vswap_engine_config_default(&mut cfg) }, 0);
    let shift = 1 + u32::from(inp.u8()) % 3;
    cfg.geometry.cluster_shift = shift;
    cfg.geometry.cpus = 2;
    cfg.geometry.slots = 64;
    cfg.geometry.dir_leaf_shift = 1;
    cfg.geometry.dir_mid_shift = 1;
    let flags = inp.u8();
    cfg.placement = u32::from(flags & 1);
    // A quarter of the inputs get an addressed engine (the host picks its
    // slots: `vswap_alloc_at`; `vswap_alloc` refused).
    cfg.addressed = flags & 0x0c == 0x0c;
    // Half the inputs get a flash log device as device 3.
    let lc = vswap_log_config {
        segments: 6 + u32::from(flags >> 4 & 3),
        seg_shift: 2,
        page_size: 4096,
        reserve: 2,
        policy: u32::from(flags >> 6 & 1),
    };
    if flags & 2 != 0 {
        cfg.log = &lc;
        cfg.log_dev = 3;
    }
    let mut e: *mut vswap_engine = ptr::null_mut();
    // SAFETY: valid pointers; `ops.ctx` outlives the engine.
    let rc = unsafe { vswap_engine_create(&cfg, &ops, &mut e) };
    assert_eq!(rc, 0);
    // SAFETY: as above.
    let mut dc: vswap_device_config = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    assert_eq!(unsafe { vswap_device_config_default(&mut dc, 32) }, 0);
    dc.geometry.cluster_shift = shift;
    dc.geometry.cpus = 2;
    dc.discard = inp.u8() & 1 == 1;
    // SAFETY: live engine, valid config.
    assert_eq!(unsafe { vswap_device_add(e, 0, 1, &dc) }, 0);

    // A standalone direct-mode map (device number 5, 32 slots), fuzzed
    // through the `vswap_map_*` calls and used as a swapoff target.
    let mut direct: *mut vswap_map = ptr::null_mut();
    // SAFETY: valid config and pointers; `ops.ctx` outlives the map.
    assert_eq!(
        unsafe { vswap_map_create_direct(&dc, 5, &ops, &mut direct) },
        0
    );
    let mut io = Io {
        script: inp.u64(),
        ..Io::default()
    };
    let io_arg: *mut c_void = (&raw mut io).cast();

    let mut slots: Vec<u32> = Vec::new();
    let mut dslots: Vec<u32> = Vec::new();
    let mut wbs: Vec<vswap_writeback> = Vec::new();
    let mut n = 0;
    while !inp.0.is_empty() && n < 300 {
        n += 1;
        let op = inp.u8();
        let k = inp.u8();
        // A slot: one handed out (maybe stale by now), or anything.
        let slot = match k % 4 {
            0..=1 if !slots.is_empty() => slots[inp.u8() as usize % slots.len()],
            2 => u32::from(inp.u8()),
            _ => inp.u32(),
        };
        let a = inp.u32();
        let small = a % 8;
        let sleep = k & 0x80 != 0;
        // SAFETY (every call below): a live engine and valid (or NULL where
        // allowed) out pointers; the arguments are what is being fuzzed.
        unsafe {
            match op % 40 {
                0..=3 => {
                    let mut s = 0;
                    let memcg = if k & 0x40 != 0 {
                        inp.u32()
                    } else {
                        VSWAP_NO_MEMCG
                    };
                    if k & 0x20 != 0 {
                        // A host-chosen slot: stale, new, or anything.
                        if check(
                            "alloc_at",
                            vswap_alloc_at(e, slot, a >> 8 & 3, memcg, sleep),
                        ) == 0
                        {
                            slots.push(slot);
                        }
                    } else if check(
                        "alloc",
                        vswap_alloc(e, small, a >> 8 & 3, memcg, sleep, &mut s),
                    ) == 0
                    {
                        slots.push(s);
                    }
                }
                4 => {
                    let cnt = if k & 0x40 != 0 { a } else { small };
                    check("dup", vswap_dup(e, slot, cnt, sleep));
                }
                5 => {
                    let mut en = std::mem::zeroed();
                    check("try_get", vswap_try_get(e, slot, sleep, &mut en));
                }
                6..=7 => {
                    let cnt = if k & 0x40 != 0 { a } else { small };
                    check("put", vswap_put(e, slot, cnt));
                }
                8 => {
                    let (mut d, mut f) = (0, 0);
                    check("put_many", vswap_put_many(e, slot, a % 70, &mut d, &mut f));
                }
                9 => {
                    let mut f = 0;
                    check("put_range", vswap_put_range(e, slot, small, &mut f));
                }
                10 => {
                    check("cache_add", vswap_cache_add(e, slot, inp.u64(), sleep));
                }
                11 => {
                    check("cache_store", vswap_cache_store(e, slot, inp.u64(), sleep));
                }
                12 => {
                    check(
                        "cache_clear",
                        vswap_cache_clear(e, slot, inp.u64() & 0xffff, sleep),
                    );
                }
                13 => {
                    let mut cs = std::mem::zeroed();
                    check("cache_get", vswap_cache_get(e, slot, &mut cs));
                }
                14 => {
                    check("lock", vswap_lock(e, slot));
                }
                15 => {
                    check("unlock", vswap_unlock(e, slot));
                }
                16 => {
                    check("lock_range", vswap_lock_range(e, slot, small));
                }
                17 => {
                    let mut f = 0;
                    check("unlock_range", vswap_unlock_range(e, slot, small, &mut f));
                }
                18 => {
                    // Backends a host may legitimately store: none, zero,
                    // same-filled, zswap (device slots only come from the
                    // engine), plus an unknown kind.
                    let mk = |kind: u32, value: u64| vswap_backend {
                        kind: kind % 6,
                        dev: 0,
                        value,
                    };
                    let exp = mk(u32::from(inp.u8()), inp.u64() % 4);
                    let new = mk(u32::from(inp.u8()) % 4, inp.u64());
                    if k & 0x40 != 0 {
                        check("commit_unlock", vswap_commit_unlock(e, slot, &exp, &new));
                    } else {
                        check("store", vswap_store(e, slot, &exp, &new));
                    }
                }
                19 => {
                    let mut en: vswap_entry = std::mem::zeroed();
                    if check("lookup", vswap_lookup(e, slot, &mut en)) == 0 {
                        assert!(
                            en.count > 0 || en.cached || en.locked,
                            "lookup of a dead slot: {en:?}"
                        );
                    }
                }
                20 => {
                    let id = if k & 0x40 != 0 { a } else { a % 4 };
                    check("set_memcg", vswap_set_memcg(e, slot, small, id, sleep));
                }
                21 => {
                    let mut m = 0;
                    check("memcg", vswap_memcg(e, slot, &mut m));
                }
                22 => {
                    let mut wb = std::mem::zeroed();
                    if check(
                        "writeback_begin",
                        vswap_writeback_begin(e, slot, a & 3, &mut wb),
                    ) == 0
                    {
                        wbs.push(wb);
                    }
                }
                23 if !wbs.is_empty() => {
                    // Possibly stale: committed or aborted already.
                    let wb = wbs[a as usize % wbs.len()];
                    if k & 0x40 != 0 {
                        check("writeback_commit", vswap_writeback_commit(e, &wb));
                    } else {
                        check("writeback_abort", vswap_writeback_abort(e, &wb));
                    }
                }
                24 => {
                    let (mut d, mut o) = (0, 0);
                    check(
                        "alloc_phys",
                        vswap_alloc_phys(e, small, a >> 8 & 3, slot, sleep, &mut d, &mut o),
                    );
                }
                25 => {
                    // zswap -> log writeback (a slot in zswap, maybe stale,
                    // maybe staged already); its commit is `log_commit`.
                    if k & 0x40 != 0 {
                        check("log_writeback_abort", vswap_log_writeback_abort(e, slot));
                    } else {
                        check("log_writeback_begin", vswap_log_writeback_begin(e, slot));
                    }
                }
                26..=27 => {
                    let pg = page(&mut inp);
                    let mut b = std::mem::zeroed();
                    if k & 0x40 != 0 {
                        check(
                            "log_writeout",
                            vswap_log_writeout(e, slot, pg.as_ptr(), pg.len(), &mut b),
                        );
                    } else {
                        check(
                            "writeout",
                            vswap_writeout(e, slot, pg.as_ptr(), pg.len(), a & 3, &mut b),
                        );
                    }
                }
                28 => {
                    let (fd, td) = (u32::from(k & 1) * 3, a >> 8 & 7);
                    check(
                        "relocate",
                        vswap_relocate(e, slot, fd, inp.u64() % 40, td, inp.u64() % 40),
                    );
                }
                29 => {
                    let mut ev = std::mem::zeroed();
                    let to = match a % 4 {
                        0 => -1,
                        1 => 0,
                        2 => 1,
                        _ => inp.u32() as i32,
                    };
                    let dev = if k & 0x40 != 0 {
                        inp.u32()
                    } else {
                        u32::from(k & 1)
                    };
                    let rc = check_io(
                        "evacuate",
                        vswap_evacuate(e, dev, to, a >> 8 & 3, Some(on_move), io_arg, &mut ev),
                    );
                    if rc == 0 {
                        assert!(ev.passes >= 1, "{ev:?}");
                    }
                    // Every folio read is adopted or handed back: forget the
                    // adopted ones (their slots own them now).
                    io.reads.clear();
                }
                30 => {
                    let mut dc2 = dc;
                    dc2.discard = k & 1 == 1;
                    if k & 0x40 != 0 {
                        check("device_remove", vswap_device_remove(e, a % 5));
                    } else {
                        check("device_add", vswap_device_add(e, a % 5, a >> 8 & 3, &dc2));
                    }
                }
                31 => {
                    if k & 0x40 != 0 {
                        let mut r = std::mem::zeroed();
                        check("swapin_check", vswap_swapin_check(e, slot, small, &mut r));
                    } else {
                        let mut out = [0u32; 8];
                        let rc = check(
                            "readahead",
                            vswap_readahead(e, slot, out.as_mut_ptr(), a as usize % 9),
                        );
                        assert!(rc <= (a % 9) as i32, "readahead wrote {rc} slots");
                    }
                }
                32 if k & 0x3f == 0 => {
                    // Rare: it empties the virtual layer.
                    let mut moved = 0;
                    let target = if k & 0x40 != 0 {
                        direct
                    } else {
                        ptr::null_mut()
                    };
                    check_io(
                        "swapoff_virtual",
                        vswap_swapoff_virtual(
                            e,
                            target,
                            a & 3,
                            Some(on_virt_move),
                            io_arg,
                            &mut moved,
                        ),
                    );
                }
                33 => {
                    let mut fl = std::mem::zeroed();
                    match a % 4 {
                        0 => check("log_flush", vswap_log_flush(e, k & 1 == 1, &mut fl)),
                        1 => check("log_commit", vswap_log_commit(e, inp.u32() % 12)),
                        2 => {
                            // Its precondition: the caller holds no slot
                            // lock (it waits for them). Unlock every locked
                            // slot first: ours, any a previous pass left
                            // staged, and staged log writebacks (host bugs
                            // the library must survive).
                            for s in 0..80 {
                                let mut en: vswap_entry = std::mem::zeroed();
                                if vswap_lookup(e, s, &mut en) == 0 && en.locked {
                                    check("unlock before gc", vswap_unlock(e, s));
                                }
                            }
                            let mut pass = std::mem::zeroed();
                            check(
                                "log_gc",
                                vswap_log_gc(e, Some(on_gc_copy), io_arg, &mut pass),
                            )
                        }
                        _ => check(
                            "log_for_each_live",
                            vswap_log_for_each_live(e, inp.u32() % 12, Some(on_live), io_arg),
                        ),
                    };
                }
                34..=37 => {
                    // The direct map: its own slots, maybe stale.
                    let ds = match k % 3 {
                        0 if !dslots.is_empty() => dslots[a as usize % dslots.len()],
                        1 => a % 40,
                        _ => inp.u32(),
                    };
                    let sel = u32::from(op % 40 - 34) + u32::from(k >> 6 & 1) * 4;
                    match sel {
                        0 => {
                            let mut s = 0;
                            let rc = check(
                                "map_alloc",
                                vswap_map_alloc(direct, small % 4, a >> 8 & 3, sleep, &mut s),
                            );
                            if rc == 0 {
                                dslots.push(s);
                            }
                            rc
                        }
                        1 => check("map_dup", vswap_map_dup(direct, ds, small, sleep)),
                        2 => check("map_put", vswap_map_put(direct, ds, small)),
                        3 => {
                            let mut en: vswap_entry = std::mem::zeroed();
                            let rc = check("map_lookup", vswap_map_lookup(direct, ds, &mut en));
                            if rc == 0 {
                                assert!(en.count > 0 || en.cached || en.locked, "{en:?}");
                            }
                            rc
                        }
                        4 => check(
                            "map_cache_add",
                            vswap_map_cache_add(direct, ds, a.into(), sleep),
                        ),
                        5 => check(
                            "map_cache_clear",
                            vswap_map_cache_clear(direct, ds, 0, sleep),
                        ),
                        6 => {
                            if k & 1 == 1 {
                                check("map_lock", vswap_map_lock(direct, ds))
                            } else {
                                check("map_unlock", vswap_map_unlock(direct, ds))
                            }
                        }
                        _ => {
                            let mut f = 0;
                            match a % 7 {
                                6 => check("map_reclaim", vswap_map_reclaim(direct)),
                                0 => check(
                                    "map_put_range",
                                    vswap_map_put_range(direct, ds, small % 3, &mut f),
                                ),
                                4 => check(
                                    "map_cache_clear_range",
                                    vswap_map_cache_clear_range(
                                        direct,
                                        ds,
                                        small % 3,
                                        u64::from(a >> 8),
                                        sleep,
                                        &mut f,
                                    ),
                                ),
                                5 => {
                                    let mut si = vswap_swapin::default();
                                    let rc = check(
                                        "map_swapin_check",
                                        vswap_map_swapin_check(direct, ds, small % 3, &mut si),
                                    );
                                    if rc == 0 {
                                        assert!(si.kind <= VSWAP_SWAPIN_IN_CACHE, "{si:?}");
                                    }
                                    rc
                                }
                                1 => {
                                    let mut d = 0;
                                    check(
                                        "map_put_many",
                                        vswap_map_put_many(direct, ds, a >> 8 & 7, &mut d, &mut f),
                                    )
                                }
                                2 => {
                                    let b = vswap_backend {
                                        kind: u32::from(k) % 6,
                                        dev: 5,
                                        value: u64::from(a >> 4),
                                    };
                                    let none = vswap_backend {
                                        kind: 0,
                                        dev: 0,
                                        value: 0,
                                    };
                                    check("map_store", vswap_map_store(direct, ds, &none, &b))
                                }
                                _ => {
                                    let mut st = std::mem::zeroed();
                                    check("map_get_stats", vswap_map_get_stats(direct, &mut st))
                                }
                            }
                        }
                    };
                }
                _ => {
                    let mut owner = 0;
                    let dev = u32::from(k & 1) * inp.u32();
                    match a % 4 {
                        3 => check("reclaim", vswap_reclaim(e)),
                        0 => check(
                            "device_owner",
                            vswap_device_owner(e, dev, inp.u64() % 40, &mut owner),
                        ),
                        1 => check("device_discard", vswap_device_discard(e, dev)),
                        _ => {
                            let mut st = std::mem::zeroed();
                            check("device_get_stats", vswap_device_get_stats(e, dev, &mut st))
                        }
                    };
                }
            }
        }
    }
    // SAFETY: the live engine and map, not used afterwards.
    unsafe {
        vswap_engine_destroy(e);
        vswap_map_destroy(direct);
    }
    assert_eq!(bytes, 0, "destroy gives every host byte back");
});
