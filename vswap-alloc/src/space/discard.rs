//! The host's discard of emptied clusters (fixed spaces with
//! [`Policy::discard`]): an emptied cluster waits in the discard queue
//! (`DISCARD`) until the host has taken it ([`SlotSpace::take_discard`]) and
//! said it is done ([`SlotSpace::discard_done`]); only then is it free.

use super::*;

impl<P: Provider, W: SlotWord> SlotSpace<P, W> {
    /// (Discarding devices) take the next emptied cluster the host must
    /// discard: slots `c << cluster_shift .. (c + 1) << cluster_shift`. Call
    /// [`discard_done`](Self::discard_done) when the discard finished.
    pub fn take_discard(&self) -> Option<u32> {
        let mut l = self.lists.lock();
        let idx = self.fifo_pop(&mut l.discard)?;
        l.discarding += 1;
        Some(idx)
    }

    /// The host finished discarding cluster `c`; it becomes free.
    pub fn discard_done(&self, c: u32) -> Result<()> {
        let mut l = self.lists.lock();
        let e = self.entry(c).ok_or(Error::OutOfRange)?;
        let s = e.state.load(Ordering::Acquire);
        if s != DISCARD || l.discarding == 0 || e.next() != 0 || l.discard.tail == c + 1 {
            return Err(Error::WrongState);
        }
        l.discarding -= 1;
        e.state.store(0, Ordering::Release);
        self.fifo_push(&mut l.free, c);
        Ok(())
    }
}
