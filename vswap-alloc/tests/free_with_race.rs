//! Found by review (issue 13 item 4): a free over two clusters whose second
//! cluster is freed (a racing double free of the same reservation) between
//! the check and its clear returned an error after freeing the first
//! cluster's slots.
#![allow(clippy::unwrap_used, missing_docs)]
#![cfg(feature = "std")]
use core::cell::Cell;
use vswap_alloc::{Ctx, DeviceConfig, Geometry, PhysDevice, StdProvider};

#[test]
fn a_run_whose_later_cluster_a_racing_free_empties_reports_what_it_freed() {
    let p = StdProvider::new();
    let cfg = DeviceConfig {
        geometry: Geometry::tiny(2, 32, 1),
        discard: false,
        rotational: false,
    };
    let dev = PhysDevice::new(cfg, &[], &p).unwrap();
    let a = dev.alloc(2, 0, 100, Ctx::MaySleep).unwrap();
    let b = dev.alloc(2, 0, 104, Ctx::MaySleep).unwrap();
    // A third reservation, so that the device is not emptied by the frees.
    dev.alloc(2, 0, 200, Ctx::MaySleep).unwrap();
    assert_eq!(b, a + 4);
    let racing = Cell::new(None);
    let mut seen = Vec::new();
    let r = dev.free_with(a, 8, Some(100), |o| {
        seen.push(o);
        if racing.get().is_none() {
            // The racing free of the same reservation's second half.
            racing.set(Some(dev.free(b, 4, Some(104))));
        }
    });
    // Every slot is free; this call freed `seen.len()` of them.
    assert_eq!(r, Ok(seen.len() as u64));
}
