//! `LogDevice` stage / flush / seal / invalidate / GC sequences with the
//! byte-array flash device and simulated engine of
//! `vswap-alloc/tests/logdev.rs`: after every step every live owner's bytes
//! are read back from the array and must be correct (`Engine::verify`, which
//! also checks the reverse map and valid counts).
//!
//! Input: 4 header bytes (segments 6..=21, segment shift 1..=3, GC policy,
//! engine seed for racing frees), then 3 bytes per operation (kind, owner).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vswap_alloc::{Flush, GcPolicy, StdProvider};

#[allow(dead_code, unused_imports, private_interfaces, clippy::all)]
#[path = "../../vswap-alloc/tests/logdev.rs"]
mod logdev;

const MAX_OPS: usize = 500;

fuzz_target!(|data: &[u8]| {
    let Some((h, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let segments = 6 + u32::from(h[0]) % 16;
    let shift = 1 + u32::from(h[1]) % 3;
    let policy = if h[2] & 1 == 0 {
        GcPolicy::Greedy
    } else {
        GcPolicy::CostBenefit
    };
    let p = StdProvider::new();
    let dev = logdev::device(&p, segments, shift, 16, policy);
    let mut e = logdev::Engine::new(&dev, 16, u64::from(h[3]));
    e.racing_frees = u64::from(h[2] >> 1) % 8;
    e.verify_after_gc = true;
    // Owners from 60% of what the host may fill (`segments - reserve`, reserve 2, less
    // an open host and an open GC segment), so GC can always make room even
    // after aborted victims (which the module documentation says break the
    // reserve argument); the suite uses 80% of a 32-segment device.
    let seg = u64::from(dev.segment_slots());
    let universe = ((u64::from(segments) - 4) * seg * 6 / 10).max(1);
    for c in rest.chunks_exact(3).take(MAX_OPS) {
        let o = 1 + (u64::from(u16::from_le_bytes([c[1], c[2]])) % universe) as u32;
        match c[0] % 20 {
            0..=11 => e.write(&dev, o),
            12..=15 => e.free(&dev, o),
            16 => e.host_flush(&dev, Flush::Now),
            17 => e.host_flush(&dev, Flush::Full),
            18 => e.gc_half_then_abort(&dev),
            _ => e.gc(&dev),
        }
        e.verify(&dev);
    }
    e.settle(&dev);
    e.verify(&dev);
    // Empty the device: everything comes back.
    for o in 1..=universe as u32 {
        e.free(&dev, o);
    }
    dev.reclaim();
    assert_eq!(dev.free_segments(), dev.segments());
    assert_eq!(dev.stats().live_slots, 0);
    drop(dev);
    assert_eq!(p.bytes_in_use(), 0);
});
