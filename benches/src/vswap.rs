//! vswap itself behind [`SwapSlots`], and a host that frees device slots on
//! a [`PhysDevice`] (the physical-backed batch free).

use vswap_alloc::{DeviceConfig, PhysDevice};
use vswap_core::{Backend, Ctx, Host, MapConfig, NoHost, StdProvider, VswapMap};

use crate::SwapSlots;

/// `vswap_core::VswapMap` over the std provider.
pub struct Vswap<H: Host = NoHost> {
    /// The map.
    pub map: VswapMap<StdProvider, H>,
}

impl Vswap<NoHost> {
    /// An empty map of 2^32 slots with default geometry.
    pub fn new() -> Self {
        Self::with_host(NoHost)
    }
}

impl Default for Vswap<NoHost> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Host> Vswap<H> {
    /// An empty map whose freed backends go to `host`.
    pub fn with_host(host: H) -> Self {
        let map = VswapMap::new(MapConfig::default(), StdProvider::new(), host)
            .expect("default map config is valid");
        Self { map }
    }
}

impl<H: Host> SwapSlots for Vswap<H> {
    const NAME: &'static str = "vswap";

    fn supports_order(order: u32) -> bool {
        order <= 9
    }

    #[inline]
    fn alloc(&self, order: u32, cpu: u32) -> Option<u64> {
        self.map.alloc(order, cpu, Ctx::NoSleep).ok().map(u64::from)
    }

    #[inline]
    fn cache_clear(&self, h: u64, n: u32, _cpu: u32) {
        // A whole large allocation (2^order slots, order > 0, naturally
        // aligned) leaves the swap cache with one ranged call, as the
        // kernel's mTHP swap-in frees the folio's slots; a single slot (and
        // anything else) with the single-slot call.
        let start = h as u32;
        if n > 1 && n.is_power_of_two() && start % n == 0 {
            let order = n.trailing_zeros();
            if self
                .map
                .cache_clear_range(start, order, 0, Ctx::NoSleep)
                .is_ok()
            {
                return;
            }
        }
        for i in 0..n {
            let _ = self.map.cache_clear(start + i, 0, Ctx::NoSleep);
        }
    }

    #[inline]
    fn dup(&self, h: u64) {
        let _ = self.map.dup(h as u32, 1, Ctx::NoSleep);
    }

    #[inline]
    fn put(&self, h: u64) -> bool {
        self.map.put(h as u32, 1) == Ok(vswap_core::Put::Freed)
    }

    #[inline]
    fn lookup(&self, h: u64) -> u64 {
        match self.map.lookup(h as u32) {
            Ok(e) => {
                u64::from(e.count) | (u64::from(e.cached) << 32) | ((e.backend.kind() as u64) << 40)
            }
            Err(_) => u64::MAX,
        }
    }

    #[inline]
    fn store(&self, h: u64, from: Backend, to: Backend) -> bool {
        self.map.store(h as u32, from, to).is_ok()
    }

    fn put_batch(&self, hs: &[u64]) {
        // Coalesce consecutive slots into runs for `put_many`.
        let mut i = 0;
        while let Some(&start) = hs.get(i) {
            let mut len = 1;
            while hs.get(i + len) == Some(&(start + len as u64)) {
                len += 1;
            }
            let _ = self.map.put_many(start as u32, len as u32);
            i += len;
        }
    }
}

/// A [`Host`] that frees released device slots on one [`PhysDevice`]
/// (device number 0): the device-side half of a physical-backed free.
pub struct DevHost {
    /// The device.
    pub dev: PhysDevice<StdProvider>,
}

impl DevHost {
    /// A solid-state device of `slots` slots for `cpus` CPUs.
    pub fn new(slots: u64, cpus: u32) -> Self {
        let dev = PhysDevice::new(DeviceConfig::new(slots, cpus), &[], StdProvider::new())
            .expect("device config is valid");
        Self { dev }
    }
}

impl Host for DevHost {
    fn release_zswap(&self, _handle: u64) {}
    fn release_phys(&self, _dev: u8, off: u64, len: u64) {
        let _ = self.dev.free(off, len, None);
    }
}
