//! `vswap-core`: the virtual swap map.
//!
//! One 8-byte core word per virtual slot holds the backend (none, zero,
//! same-filled, zswap, physical), the inline swap count, and the cache and lock
//! flags; every order-0 state change is one CAS. Optional per-cluster tables
//! hold the swap-cache word and memcg ids; counts above 62 overflow into a side
//! table. Memory comes from a host [`Provider`]; released backends go to the
//! host through [`Host`].
//!
//! `#![no_std]`, no `alloc`, no global allocator; requires 64-bit atomics.
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

pub mod devices;
pub mod engine;
mod host;
mod logpath;
mod map;
mod side;
pub mod swapops;
pub mod word;

pub use devices::{DevicePin, Devices, HOLD_STRIPES, MAX_DEVICES};
pub use engine::{
    ChargePolicy, Engine, EngineConfig, EngineHost, Evacuated, MAX_PAGE_SIZE, Move, NO_MEMCG,
    PAGE_SIZE, Placement, Router, Stopped, SwapinRange, VirtMove, Writeback,
};
pub use host::{Host, MapOnly, NoHost};
pub use map::{BatchError, CacheState, MAX_COUNT, MapConfig, MapStats, Put, SwapinCheck, VswapMap};
pub use swapops::{Mode, Swap, SwapEntry, SwapOps, VIRTUAL_TYPE};
#[cfg(feature = "std")]
pub use vswap_alloc::StdProvider;
#[cfg(feature = "std")]
pub use vswap_alloc::epoch;
pub use vswap_alloc::{
    Ctx, DeviceConfig, DeviceStats, Error, Flush, Flushed, GcPass, GcPolicy, Geometry, LogConfig,
    LogDevice, LogStats, MemError, PhysDevice, Provider, Result, Section, SpaceMemory, Stream,
};
pub use word::{Backend, BackendKind, Entry, INLINE_COUNT_MAX};

#[cfg(test)]
mod tests;

/// The README's examples, compiled and run as doc-tests.
#[cfg(all(doctest, feature = "std"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
