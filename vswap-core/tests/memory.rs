#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
//! Memory per slot, measured through `StdProvider::bytes_in_use()` (every byte
//! the map holds comes from its provider), with the default geometry: 512-slot
//! clusters, 2^32 slots.
//!
//! Run with `--nocapture` to see the figures.

use vswap_alloc::StdProvider;
use vswap_core::{Ctx, Geometry, MapConfig, NoHost, Put, VswapMap};

const SLOTS: usize = if cfg!(miri) { 2_000 } else { 1_000_000 };

type Map<'a> = VswapMap<&'a StdProvider, NoHost>;

/// Allocate `SLOTS` order-0 slots, half on CPU 0 and half on CPU 1 (one
/// thread each).
fn fill(map: &Map<'_>) -> Vec<u32> {
    let mut out = Vec::with_capacity(SLOTS);
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..2u32)
            .map(|cpu| {
                sc.spawn(move || {
                    (0..SLOTS / 2)
                        .map(|_| map.alloc(0, cpu, Ctx::MaySleep).unwrap())
                        .collect::<Vec<u32>>()
                })
            })
            .collect();
        for h in hs {
            out.extend(h.join().unwrap());
        }
    });
    out
}

/// Fisher-Yates with a fixed xorshift seed.
fn shuffle(v: &mut [u32]) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn per_slot(bytes: u64, slots: usize) -> f64 {
    bytes as f64 / slots as f64
}

/// Wait until every torn-down cluster's grace period has ended and its tables
/// are back (other test threads' read-side sections delay it a little),
/// failing after 10 s.
fn settle(map: &Map<'_>) {
    let t = std::time::Instant::now();
    loop {
        map.reclaim();
        if map.stats().memory.retiring_clusters == 0 {
            return;
        }
        assert!(t.elapsed().as_secs() < 10, "grace periods never ended");
        std::thread::yield_now();
    }
}

/// Free a random half, then the rest; check the footprint and the teardown.
fn free_and_check(label: &str, p: &StdProvider, map: Map<'_>, mut slots: Vec<u32>) {
    shuffle(&mut slots);
    let half = slots.len() / 2;
    for &s in &slots[..half] {
        assert_eq!(map.cache_clear(s, 0, Ctx::MaySleep), Ok(Put::Freed));
    }
    let live = slots.len() - half;
    let bytes = p.bytes_in_use();
    assert_eq!(map.stats().live_slots, live as u64);
    println!(
        "{label}: random half freed: {bytes} B for {live} live slots = {:.2} B/live slot",
        per_slot(bytes, live)
    );
    for &s in &slots[half..] {
        assert_eq!(map.cache_clear(s, 0, Ctx::MaySleep), Ok(Put::Freed));
    }
    settle(&map);
    let st = map.stats();
    assert_eq!(st.live_slots, 0);
    assert_eq!(p.bytes_in_use(), st.total_bytes());
    let left = p.bytes_in_use();
    // What stays: the per-CPU caches' live clusters and the directory (one
    // 64-byte record and one 16-byte table-index entry per cluster ever
    // used, never freed: 0.156 B per slot).
    let bound = 64.0 * 1024.0 + 0.16 * SLOTS as f64;
    println!(
        "{label}: all freed: {left} B left ({} live clusters held by per-CPU caches and slot 0, \
         {} B directory); bound {bound:.0} B",
        st.memory.live_clusters, st.memory.directory
    );
    assert!(
        left as f64 <= bound,
        "{label}: {left} B left after freeing everything (bound {bound:.0}): {st:?}"
    );
    drop(map);
    assert_eq!(p.bytes_in_use(), 0, "{label}: map drop returns every byte");
}

#[test]
fn core_word_alone() {
    let p = StdProvider::new();
    let map = VswapMap::new(MapConfig::default(), &p, NoHost).unwrap();
    assert_eq!(*map.geometry(), Geometry::default());
    assert_eq!(map.geometry().cluster_slots(), 512);
    assert_eq!(map.geometry().slots(), 1 << 32);
    let empty = p.bytes_in_use();
    println!("empty map of 2^32 slots: {empty} B");
    let slots = fill(&map);
    let st = map.stats();
    assert_eq!(st.live_slots, SLOTS as u64);
    assert_eq!(p.bytes_in_use(), st.total_bytes());
    let bytes = p.bytes_in_use();
    let b = per_slot(bytes, SLOTS);
    println!(
        "core word alone: {bytes} B for {SLOTS} slots = {b:.3} B/slot \
         (words {} B, directory {} B, per-CPU {} B)",
        st.memory.words, st.memory.directory, st.memory.percpu
    );
    if !cfg!(miri) {
        assert!(b <= 8.2, "{b:.3} B/slot with the core word alone");
    }
    free_and_check("core word alone", &p, map, slots);
}

#[test]
fn core_word_cache_word_and_uniform_memcg() {
    let p = StdProvider::new();
    let map = VswapMap::new(MapConfig::default(), &p, NoHost).unwrap();
    let slots = fill(&map);
    for &s in &slots {
        map.cache_store(s, 0xffff_8880_0000_0000 | u64::from(s) << 12, Ctx::MaySleep)
            .unwrap();
        // One memcg per 64 Ki-slot range: every cluster is uniform.
        map.set_memcg(s, 0, (s >> 16) as u16 + 1, Ctx::MaySleep)
            .unwrap();
    }
    let st = map.stats();
    assert_eq!(p.bytes_in_use(), st.total_bytes());
    // Uniform clusters keep no memcg table, only their 24-byte record.
    assert_eq!(st.memory.memcg, st.memory.live_clusters * 24, "{st:?}");
    assert_eq!(st.memory.cache, st.memory.live_clusters * 512 * 8);
    let bytes = p.bytes_in_use();
    let b = per_slot(bytes, SLOTS);
    println!(
        "core + cache word + uniform memcg: {bytes} B for {SLOTS} slots = {b:.3} B/slot \
         (cache {} B, memcg records {} B)",
        st.memory.cache, st.memory.memcg
    );
    if !cfg!(miri) {
        assert!(b <= 16.3, "{b:.3} B/slot with core + cache + uniform memcg");
    }
    for &s in slots.iter().step_by(997) {
        assert_eq!(map.memcg(s), Ok(Some((s >> 16) as u16 + 1)));
    }
    free_and_check("core + cache + memcg", &p, map, slots);
}
