//! `vswap-alloc`: the `no_std` cluster machinery of the vswap engine.
//!
//! - [`sync`]: the atomics/lock shim that loom can swap out;
//! - [`Provider`]: the host's fallible memory source (no global allocator)
//!   and its deferred reclamation (RCU: read-side sections, grace periods);
//! - `epoch` (feature `std`): the userspace default of that reclamation, keyed by
//!   thread;
//! - [`SlotSpace`]: a lock-free, per-CPU cluster allocator of 64-bit slot words,
//!   naturally aligned for orders `0..=log2(cluster size)`, with clusters made on
//!   demand and freed when empty behind a three-level directory;
//! - [`LogDevice`]: a flash log device written in whole segments, with staging,
//!   lock-free invalidation and greedy / cost-benefit garbage collection.
//!
//! Requires 64-bit atomics (`target_has_atomic = "64"`).
#![no_std]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(not(target_has_atomic = "64"))]
compile_error!("vswap needs 64-bit atomics (target_has_atomic = \"64\")");

pub mod device;
#[cfg(any(feature = "std", test))]
pub mod epoch;
mod error;
mod ext;
mod geometry;
pub mod logdev;
mod provider;
mod slotword;
mod space;
pub mod sync;

pub use device::{DeviceConfig, DeviceSpace, DeviceStats, PhysDevice};
pub use error::{Error, Result};
pub use geometry::{Geometry, MAX_CLUSTER_SHIFT, MAX_CPUS, MAX_ORDERS, MAX_SLOTS, MAX_TOP_ENTRIES};
pub use logdev::{
    Flush, Flushed, GcPass, GcPolicy, GcStep, Live, LogConfig, LogDevice, LogStats, SegState,
    SegmentInfo, Stream, Victim,
};
#[cfg(any(feature = "std", test))]
pub use provider::StdProvider;
pub use provider::{Ctx, MemError, Provider};
pub use slotword::SlotWord;
pub use space::{ClusterState, ListCounts, Pin, Policy, Section, SlotSpace, SpaceMemory};
