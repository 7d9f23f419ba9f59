//! loom models of the deferred reclamation of slot tables (issue 13 item 1):
//! read-side sections instead of per-operation pins, retired tables freed
//! only after a grace period, and reuse of a retired table before it ends.
//!
//! Build and run (see `.ci/loom`):
//! ```text
//! CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg vswap_loom" \
//!     cargo test -p vswap-core --features std --test loom_reclaim --release
//! ```
//! Memory comes from `TestProvider` (in `tests/common`): freed blocks are
//! poisoned and kept until the iteration ends, so a reader that touched a
//! table after it went back to the provider reads a poisoned loom atomic and
//! loom panics. Its read-side sections and grace periods are a reader count
//! loom sees (`StdProvider`'s loom build): a grace period has ended once no
//! section is open.
#![cfg(vswap_loom)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use loom::sync::Arc;
use loom::thread;
use vswap_core::{Backend, Ctx, Error, Geometry, MapConfig, NoHost, Put, VswapMap};

mod common;
use common::{TestProvider, model};

type Map = VswapMap<TestProvider, NoHost>;

/// A map of 2-slot clusters on 3 CPU numbers where cluster 1 (slots 2, 3)
/// is out of every cache, slot 3 is free and slot 2 has count 1 and
/// `backend`, not cached: its last put tears cluster 1 down.
fn one_slot_cluster(backend: Backend) -> (Arc<Map>, TestProvider) {
    let prov = TestProvider::default();
    let cfg = MapConfig {
        geometry: Geometry::tiny(1, 6, 3),
        ..MapConfig::default()
    };
    let map = Arc::new(VswapMap::new(cfg, prov.clone(), NoHost).unwrap());
    let s1 = map.alloc(0, 0, Ctx::MaySleep).unwrap();
    let s2 = map.alloc(0, 1, Ctx::MaySleep).unwrap();
    let s3 = map.alloc(0, 1, Ctx::MaySleep).unwrap();
    let s4 = map.alloc(0, 1, Ctx::MaySleep).unwrap(); // CPU 1 moves to cluster 2
    assert_eq!([s1, s2, s3, s4], [1, 2, 3, 4]);
    if backend != Backend::None {
        map.store(2, Backend::None, backend).unwrap();
    }
    map.dup(2, 1, Ctx::MaySleep).unwrap();
    assert_eq!(map.cache_clear(2, 0, Ctx::MaySleep), Ok(Put::Live));
    assert_eq!(map.cache_clear(3, 0, Ctx::MaySleep), Ok(Put::Freed));
    (map, prov)
}

/// After every thread is joined: the map's accounting matches the provider,
/// every retired table comes back, and dropping the map returns every byte.
fn finish(map: Arc<Map>, prov: &TestProvider) {
    map.reclaim();
    let st = map.stats();
    assert_eq!(st.memory.retiring_clusters, 0, "{st:?}");
    assert_eq!(st.total_bytes(), prov.bytes(), "{st:?}");
    drop(map);
    assert_eq!(prov.bytes(), 0, "provider bytes not returned");
}

/// A drops slot 2's last count (cluster 1 is torn down and its table
/// retired); B, inside its own sections, CASes the same word (`dup`) and
/// reads it (`lookup`); C polls the retire queue (`reclaim`) at any moment.
/// B's CAS either comes first (then B owns a count and puts it back) or
/// fails on the dead word (`NotAllocated`); its reads see the live slot or
/// nothing; and the table goes back to the provider only after B's sections
/// ended (a late access would read poisoned memory).
#[test]
fn r1_cas_and_lookup_race_retirement_and_reclaim() {
    model("r1_cas_and_lookup_race_retirement_and_reclaim", 2, || {
        let (map, prov) = one_slot_cluster(Backend::Zero);
        let m = map.clone();
        let ta = thread::spawn(move || m.put(2, 1));
        let m = map.clone();
        let tb = thread::spawn(move || match m.dup(2, 1, Ctx::NoSleep) {
            Ok(()) => {
                let e = m.lookup(2).unwrap();
                assert!(e.count >= 1, "{e:?}");
                m.put(2, 1).unwrap();
            }
            Err(Error::NotAllocated) => {
                assert_eq!(m.lookup(2), Err(Error::NotAllocated));
            }
            Err(e) => panic!("dup: {e:?}"),
        });
        let m = map.clone();
        let tc = thread::spawn(move || m.reclaim());
        let pa = ta.join().unwrap();
        tb.join().unwrap();
        tc.join().unwrap();
        assert!(matches!(pa, Ok(Put::Freed | Put::Live)), "{pa:?}");
        assert_eq!(map.lookup(2), Err(Error::NotAllocated));
        finish(map, &prov);
    });
}

/// A drops slot 2's last count (cluster 1 retired, its grace period held
/// back while B reads); C allocates on an empty CPU and may take the
/// retired cluster back *before* the grace period ends, with the same table.
/// B sees slot 2 live (old owner), gone, or the new owner's fresh slot
/// (count 0, cached): never freed memory, never a torn word.
#[test]
fn r2_reuse_before_the_grace_period_ends() {
    model("r2_reuse_before_the_grace_period_ends", 2, || {
        let (map, prov) = one_slot_cluster(Backend::None);
        let m = map.clone();
        let ta = thread::spawn(move || m.put(2, 1));
        let m = map.clone();
        let tb = thread::spawn(move || match m.lookup(2) {
            Ok(e) => assert!(
                (e.count == 1 && !e.cached) || (e.count == 0 && e.cached),
                "torn or dead entry {e:?}"
            ),
            Err(Error::NotAllocated) => {}
            Err(e) => panic!("lookup: {e:?}"),
        });
        let m = map.clone();
        let tc = thread::spawn(move || m.alloc(0, 2, Ctx::NoSleep));
        assert_eq!(ta.join().unwrap(), Ok(Put::Freed));
        tb.join().unwrap();
        let c = tc.join().unwrap().unwrap();
        assert!(c == 2 || c == 3, "allocated {c}");
        let e = map.lookup(c).unwrap();
        assert_eq!((e.count, e.cached), (0, true));
        finish(map, &prov);
    });
}
