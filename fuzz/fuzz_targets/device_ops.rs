//! `PhysDevice` allocation / free / owner / discard sequences against the
//! reference model of `vswap-alloc/tests/device.rs` (the proptest suite's):
//! after every step every slot's owner, `stats().used`, list membership
//! against cluster state, the exact allocation-failure condition, discard
//! order, reserved (slot 0, bad) slots never handed out, no memory made.
//!
//! Input: 5 header bytes (cluster shift 1..=3, clusters 1..=6, CPUs 1..=3,
//! flags discard/rotational, up to 3 bad slots), then 10 bytes per operation.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports, private_interfaces, clippy::all)]
#[path = "../../vswap-alloc/tests/device.rs"]
mod device;

use device::Op;

const OP_BYTES: usize = 10;
const MAX_OPS: usize = 300;

fn op(c: &[u8]) -> Op {
    let u = u32::from_le_bytes([c[2], c[3], c[4], c[5]]);
    let v = u32::from_le_bytes([c[6], c[7], c[8], c[9]]);
    let (x, y) = (u as usize, v as usize);
    match c[0] % 51 {
        0..=11 => Op::Alloc {
            order: u % 4,
            cpu: v % 3,
        },
        12..=19 => Op::Alloc {
            order: (u % 4).min(1),
            cpu: v % 3,
        },
        20 => Op::AllocRaw {
            order: u % 6,
            cpu: v % 5,
        },
        21..=22 => Op::AllocEdge {
            order: u % 4,
            cpu: v % 3,
            which: c[1] % 4,
        },
        23..=31 => Op::FreeRun {
            pick: x,
            with_owner: c[1] & 1 == 1,
        },
        32..=37 => Op::FreeSlot { pick: x, at: y },
        38..=39 => Op::FreeWrongOwner {
            pick: x,
            delta: 1 + v % 2,
        },
        40..=41 => Op::FreeRange {
            off: u64::from(u % 40),
            len: u64::from(v % 20),
            owner: (c[1] & 1 == 1).then_some(u32::from(c[1] >> 1) % 40),
        },
        42..=43 => Op::SetOwner {
            pick: x,
            mode: c[1] % 6,
        },
        44..=46 => Op::TakeDiscard,
        _ => Op::DiscardDone {
            pick: x,
            bogus: (c[1] & 1 == 1).then_some(u32::from(c[1] >> 1) % 8),
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((h, rest)) = data.split_first_chunk::<5>() else {
        return;
    };
    let shift = 1 + u32::from(h[0]) % 3;
    let clusters = 1 + u64::from(h[1]) % 6;
    let cpus = 1 + u32::from(h[2]) % 3;
    let (discard, rotational) = (h[3] & 1 == 1, h[3] & 2 == 2);
    let nbad = usize::from(h[3] >> 2) % 4;
    let bad: Vec<u64> = (0..nbad)
        .map(|i| u64::from(h[4].rotate_left(i as u32 * 3)) % 64)
        .collect();
    let ops: Vec<Op> = rest.chunks_exact(OP_BYTES).take(MAX_OPS).map(op).collect();
    device::run_case(shift, clusters, cpus, discard, rotational, &bad, &ops);
});
