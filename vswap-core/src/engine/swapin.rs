//! The mTHP swap-in check and readahead neighbours.

use super::*;

/// What an mTHP swap-in may do with a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapinRange {
    /// Every slot has a backend of this kind that needs no device read
    /// (none/zero/same): fill the large folio directly.
    Uniform(BackendKind),
    /// Every slot is on device `dev`, at `off + i`: one read.
    Contiguous {
        /// Device.
        dev: u8,
        /// First offset.
        off: u64,
    },
    /// Kinds differ, a slot is in zswap, or device slots are not contiguous:
    /// swap in page by page.
    No,
}

impl<P: Provider, H: EngineHost> Engine<P, H> {
    /// Can the naturally aligned range `start..start + 2^order` be swapped in
    /// as one large folio?
    pub fn swapin_check(&self, start: u32, order: u32) -> Result<SwapinRange> {
        if order > self.map.geometry().cluster_shift {
            return Err(Error::BadOrder);
        }
        let n = 1u32 << order;
        if start % n != 0 {
            return Err(Error::Misaligned);
        }
        let first = self.map.lookup(start)?.backend;
        for i in 1..n {
            let b = self.map.lookup(start + i)?.backend;
            let ok = match (first, b) {
                (Backend::Phys { dev, off }, Backend::Phys { dev: d, off: o }) => {
                    d == dev && o == off + u64::from(i)
                }
                (Backend::Zswap(_), _) => false,
                (a, b) => a.kind() == b.kind(),
            };
            if !ok {
                return Ok(SwapinRange::No);
            }
        }
        Ok(match first {
            Backend::Zswap(_) => SwapinRange::No,
            Backend::Phys { dev, off } => SwapinRange::Contiguous { dev, off },
            b => SwapinRange::Uniform(b.kind()),
        })
    }

    /// The virtual slots whose data sits next to `slot`'s on its device (the
    /// aligned window of `out.len().next_power_of_two()` device slots around
    /// it), written to `out`; returns how many. 0 if `slot` is not on a device.
    pub fn readahead(&self, slot: u32, out: &mut [u32]) -> Result<usize> {
        let Backend::Phys { dev, off } = self.map.lookup(slot)?.backend else {
            return Ok(0);
        };
        let window = (out.len() as u64 + 1).next_power_of_two();
        let start = off & !(window - 1);
        let mut n = 0;
        self.devices()
            .pin(dev)?
            .for_each_owner(start, window, |_, owner| {
                if owner != slot {
                    if let Some(o) = out.get_mut(n) {
                        *o = owner;
                        n += 1;
                    }
                }
            });
        Ok(n)
    }
}
