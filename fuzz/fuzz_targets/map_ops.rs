//! `VswapMap` operation sequences against the reference model of
//! `vswap-core/tests/model.rs` (the same model the proptest suite uses):
//! every result, every host release (in order), every slot's state,
//! `stats()` and the provider's bytes are checked as the sequence runs.
//! The operations include the ranged (mTHP) calls: `put_range`,
//! `lock_range` / `unlock_range`, `cache_clear_range` and
//! `swapin_range_check` (`Op::CacheClearRange`, `Op::SwapinCheck`, and the
//! folio sequences of `Op::RangeSeq`).
//!
//! Input: 3 header bytes (cluster shift 2..=4, slots 40..=320, CPUs 2..=4;
//! the top bit of the third: an addressed map, whose slots `alloc_at`
//! takes), then 18 bytes per operation (`make_op(t, k, a, b, c)`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports, private_interfaces, clippy::all)]
#[path = "../../vswap-core/tests/model.rs"]
mod model;

const OP_BYTES: usize = 18;
const MAX_OPS: usize = 400;

fuzz_target!(|data: &[u8]| {
    let Some((hdr, rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let shift = 2 + u32::from(hdr[0]) % 3;
    let slots = 40 + u64::from(hdr[1]) % 281;
    let cpus = 2 + u32::from(hdr[2] & 0x7f) % 3;
    let addressed = hdr[2] & 0x80 != 0;
    let ops: Vec<model::Op> = rest
        .chunks_exact(OP_BYTES)
        .take(MAX_OPS)
        .map(|c| {
            let a = u32::from_le_bytes([c[2], c[3], c[4], c[5]]);
            let b = u32::from_le_bytes([c[6], c[7], c[8], c[9]]);
            let w = u64::from_le_bytes([c[10], c[11], c[12], c[13], c[14], c[15], c[16], c[17]]);
            model::make_op(c[0], c[1], a, b, w)
        })
        .collect();
    model::run_case(shift, slots, cpus, addressed, &ops);
});
