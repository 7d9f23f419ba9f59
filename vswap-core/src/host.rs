//! Host callbacks: what the engine asks of the host when a slot dies or moves.
//!
//! Callbacks are never called while the engine holds an internal lock, and must
//! not re-enter the same map. They may be called inside a read-side section of
//! the provider's reclamation (a kernel's `rcu_read_lock`): they must not
//! sleep.

/// Receives resources the engine lets go of. Its methods may be called inside
/// a read-side section of the provider's reclamation (a kernel's
/// `rcu_read_lock`), so they must not sleep.
pub trait Host: Sync {
    /// A zswap object is no longer referenced; free it.
    fn release_zswap(&self, handle: u64);
    /// `len` consecutive slots from `off` on device `dev` are no longer
    /// referenced; free them (runs are coalesced where slots are contiguous).
    fn release_phys(&self, dev: u8, off: u64, len: u64);

    /// Whether the map calls [`slot_freed`](Self::slot_freed). A constant, so
    /// a host that does not need it pays nothing on the free path.
    const WANTS_FREED: bool = false;

    /// Slot `slot` was freed; it held `backend` (already released through
    /// the calls above) and memcg id `memcg`. The engine uncharges here.
    fn slot_freed(&self, _slot: u32, _backend: crate::Backend, _memcg: Option<u16>) {}

    /// Whether the map releases device slots through
    /// [`release_phys_owned`](Self::release_phys_owned) (runs coalesced only
    /// where both the offsets and the virtual slots that held them are
    /// consecutive) instead of [`release_phys`](Self::release_phys) (runs
    /// coalesced where the offsets are).
    const OWNED_RELEASE: bool = false;

    /// With [`OWNED_RELEASE`](Self::OWNED_RELEASE): `len` consecutive slots
    /// from `off` on device `dev`, held by the virtual slots `slot..slot +
    /// len` (`slot + i` held `off + i`), are no longer referenced. A host
    /// that frees device slots checks each one's owner here, so that a
    /// location stored into the wrong slot cannot free another slot's
    /// device slot. The default forwards to
    /// [`release_phys`](Self::release_phys).
    ///
    /// Only the map can call it: the [`MapOnly`] argument cannot be made
    /// outside this crate, so safe code holding a host (for example the
    /// engine's own, through `engine.map().host()`) cannot free a device
    /// slot that its virtual slot still points to.
    fn release_phys_owned(&self, _slot: u32, dev: u8, off: u64, len: u64, _: MapOnly) {
        self.release_phys(dev, off, len)
    }

    /// Called before the map stores `Phys { dev, off }` as the backend of
    /// `slot` ([`VswapMap::store`](crate::VswapMap::store),
    /// [`commit_unlock`](crate::VswapMap::commit_unlock) and the moves built
    /// on it): an `Err` refuses the store with that error and changes
    /// nothing. The default accepts every location: a plain map's host owns
    /// its locations and decides what they mean. The engine accepts only a
    /// device slot that is allocated and whose reverse-map owner is `slot`.
    fn check_phys(&self, _slot: u32, _dev: u8, _off: u64) -> vswap_alloc::Result<()> {
        Ok(())
    }
}

/// Proof that a [`Host`] callback comes from the map itself. Hosts receive
/// it as an argument and may ignore it; only this crate can make one, so a
/// callback that takes it cannot be called by code outside the crate:
///
/// ```compile_fail
/// # use vswap_core::{Host, NoHost};
/// // No constructor is public: this does not compile.
/// NoHost.release_phys_owned(1, 0, 0, 1, vswap_core::MapOnly(()));
/// ```
#[derive(Debug)]
pub struct MapOnly(());

impl MapOnly {
    pub(crate) const fn new() -> Self {
        Self(())
    }
}

/// A host that owns no resources (zswap handles and device slots are plain
/// numbers to it); useful for tests and for tools that track nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHost;

impl Host for NoHost {
    fn release_zswap(&self, _handle: u64) {}
    fn release_phys(&self, _dev: u8, _off: u64, _len: u64) {}
}

impl<H: Host + ?Sized> Host for &H {
    fn release_zswap(&self, handle: u64) {
        (**self).release_zswap(handle)
    }
    fn release_phys(&self, dev: u8, off: u64, len: u64) {
        (**self).release_phys(dev, off, len)
    }
    const WANTS_FREED: bool = H::WANTS_FREED;
    fn slot_freed(&self, slot: u32, backend: crate::Backend, memcg: Option<u16>) {
        (**self).slot_freed(slot, backend, memcg)
    }
    const OWNED_RELEASE: bool = H::OWNED_RELEASE;
    fn release_phys_owned(&self, slot: u32, dev: u8, off: u64, len: u64, m: MapOnly) {
        (**self).release_phys_owned(slot, dev, off, len, m)
    }
    fn check_phys(&self, slot: u32, dev: u8, off: u64) -> vswap_alloc::Result<()> {
        (**self).check_phys(slot, dev, off)
    }
}

/// Coalesces released device slots into runs before calling the host: by
/// offset alone, or (for a host with [`Host::OWNED_RELEASE`]) only where the
/// virtual slots that held them are consecutive too.
pub(crate) struct Releaser<'a, H: Host + ?Sized> {
    host: &'a H,
    /// `(dev, first offset, len, first virtual slot)`.
    run: Option<(u8, u64, u64, u32)>,
}

impl<'a, H: Host + ?Sized> Releaser<'a, H> {
    pub(crate) fn new(host: &'a H) -> Self {
        Self { host, run: None }
    }

    /// Release `b`, the backend virtual slot `slot` held.
    pub(crate) fn release(&mut self, slot: u32, b: crate::Backend) {
        match b {
            crate::Backend::Zswap(h) => self.host.release_zswap(h),
            crate::Backend::Phys { dev, off } => match &mut self.run {
                Some((d, start, len, first))
                    if *d == dev
                        && *start + *len == off
                        && (!H::OWNED_RELEASE || u64::from(*first) + *len == u64::from(slot)) =>
                {
                    *len += 1
                }
                _ => {
                    self.flush();
                    self.run = Some((dev, off, 1, slot));
                }
            },
            _ => {}
        }
    }

    pub(crate) fn flush(&mut self) {
        if let Some((d, s, l, first)) = self.run.take() {
            if H::OWNED_RELEASE {
                self.host.release_phys_owned(first, d, s, l, MapOnly::new());
            } else {
                self.host.release_phys(d, s, l);
            }
        }
    }
}

impl<H: Host + ?Sized> Drop for Releaser<'_, H> {
    fn drop(&mut self) {
        self.flush();
    }
}
