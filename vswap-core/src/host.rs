//! Host callbacks: what the engine asks of the host when a slot dies or moves.
//!
//! Callbacks are never called while the engine holds an internal lock, and must
//! not re-enter the same map.

/// Receives resources the engine lets go of.
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
}

/// Coalesces released device slots into runs before calling the host.
pub(crate) struct Releaser<'a, H: Host + ?Sized> {
    host: &'a H,
    run: Option<(u8, u64, u64)>,
}

impl<'a, H: Host + ?Sized> Releaser<'a, H> {
    pub(crate) fn new(host: &'a H) -> Self {
        Self { host, run: None }
    }

    pub(crate) fn release(&mut self, b: crate::Backend) {
        match b {
            crate::Backend::Zswap(h) => self.host.release_zswap(h),
            crate::Backend::Phys { dev, off } => match &mut self.run {
                Some((d, start, len)) if *d == dev && *start + *len == off => *len += 1,
                _ => {
                    self.flush();
                    self.run = Some((dev, off, 1));
                }
            },
            _ => {}
        }
    }

    pub(crate) fn flush(&mut self) {
        if let Some((d, s, l)) = self.run.take() {
            self.host.release_phys(d, s, l);
        }
    }
}

impl<H: Host + ?Sized> Drop for Releaser<'_, H> {
    fn drop(&mut self) {
        self.flush();
    }
}
