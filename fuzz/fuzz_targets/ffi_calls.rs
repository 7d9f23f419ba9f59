//! The C ABI of `vswap-ffi` (called through the rlib, as C would call it) fed
//! arbitrary arguments within a live engine: stale slots (freed, reused),
//! slot 0, slots past the space, bad orders, CPUs and memcg ids, unknown
//! devices, counts up to `u32::MAX`, stale writeback descriptors. The checks:
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
    cfg.placement = u32::from(inp.u8() & 1);
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

    let mut slots: Vec<u32> = Vec::new();
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
            match op % 26 {
                0..=3 => {
                    let mut s = 0;
                    let memcg = if k & 0x40 != 0 {
                        inp.u32()
                    } else {
                        VSWAP_NO_MEMCG
                    };
                    if check(
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
                _ => {
                    let mut owner = 0;
                    let dev = u32::from(k & 1) * inp.u32();
                    match a % 3 {
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
    // SAFETY: the live engine, not used afterwards.
    unsafe { vswap_engine_destroy(e) };
    assert_eq!(bytes, 0, "destroy gives every host byte back");
});
