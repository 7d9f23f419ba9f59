//! The swap-count side table: counts above [`INLINE_COUNT_MAX`] live here.
//!
//! A slot whose count field reads 63 ("continued") has its whole count in this
//! table. Overflow is rare (a page mapped by more than 62 page tables), so the
//! table is a chain of provider pages of `(slot, count)` pairs behind one
//! slow-path lock, made on demand and freed when empty. Only holders of the lock
//! move a count field to or from 63; the lock-free fast paths never touch a
//! continued count.
//!
//! [`INLINE_COUNT_MAX`]: crate::INLINE_COUNT_MAX

use core::ptr::NonNull;

use vswap_alloc::sync::{Mutex, MutexGuard};
use vswap_alloc::{Ctx, Error, Provider, Result};

const PAGE: usize = 4096;
const ENTRIES: usize = (PAGE - 16) / 8;

#[repr(C)]
struct SidePage {
    next: Option<NonNull<SidePage>>,
    used: u32,
    _pad: u32,
    /// `(slot, count)`; slot 0 (never a swap entry) marks an empty pair.
    pairs: [(u32, u32); ENTRIES],
}

const _: () = assert!(core::mem::size_of::<SidePage>() == PAGE);

pub(crate) struct Chain {
    first: Option<NonNull<SidePage>>,
    pages: usize,
}

// SAFETY: the pages are provider memory reached only under the side lock.
unsafe impl Send for Chain {}

/// The overflow count table.
pub(crate) struct SideTable {
    chain: Mutex<Chain>,
}

/// A page that must go back to the provider once the lock is dropped.
pub(crate) struct FreePage(Option<NonNull<SidePage>>);

impl SideTable {
    pub(crate) fn new() -> Self {
        Self {
            chain: Mutex::new(Chain {
                first: None,
                pages: 0,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Chain> {
        self.chain.lock()
    }

    /// Make a page for [`Chain::insert`] (without the lock held).
    pub(crate) fn new_page<P: Provider>(p: &P, ctx: Ctx) -> Result<NonNull<u8>> {
        Ok(p.alloc_zeroed(PAGE, 8, ctx)?)
    }

    /// Give back a page from [`Chain::remove`] or an unused one from `new_page`.
    pub(crate) fn free_page<P: Provider>(p: &P, page: FreePage) {
        if let Some(pg) = page.0 {
            // SAFETY: the page was unlinked (or never linked) and came from
            // `new_page` with this size and alignment.
            unsafe { p.free(pg.cast(), PAGE, 8) };
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        (self.chain.lock().pages * PAGE) as u64
    }

    /// Free every page (map teardown).
    pub(crate) fn clear<P: Provider>(&self, p: &P) {
        let mut c = self.chain.lock();
        let mut cur = c.first.take();
        c.pages = 0;
        drop(c);
        while let Some(pg) = cur {
            // SAFETY: the chain is unlinked; we own every page of it.
            cur = unsafe { pg.as_ref().next };
            Self::free_page(p, FreePage(Some(pg)));
        }
    }
}

impl Chain {
    fn pages(&self) -> impl Iterator<Item = NonNull<SidePage>> + '_ {
        let mut cur = self.first;
        core::iter::from_fn(move || {
            let p = cur?;
            // SAFETY: linked pages are valid while the lock (`&self`) is held.
            cur = unsafe { p.as_ref().next };
            Some(p)
        })
    }

    /// The count kept for `slot`.
    pub(crate) fn get(&self, slot: u32) -> Option<u32> {
        for p in self.pages() {
            // SAFETY: linked page, lock held.
            let pg = unsafe { p.as_ref() };
            if let Some(&(_, c)) = pg.pairs.iter().find(|(s, _)| *s == slot) {
                return Some(c);
            }
        }
        None
    }

    /// Set the count of a slot already in the table.
    pub(crate) fn update(&mut self, slot: u32, count: u32) -> bool {
        for mut p in self.pages() {
            // SAFETY: linked page; the lock (`&mut self`) gives exclusive access.
            let pg = unsafe { p.as_mut() };
            if let Some(e) = pg.pairs.iter_mut().find(|(s, _)| *s == slot) {
                e.1 = count;
                return true;
            }
        }
        false
    }

    /// Insert `slot` (not present). Needs a free pair or `spare`, a page from
    /// [`SideTable::new_page`]; returns `Err(NoMem)` when neither is there, and
    /// hands back `spare` if it was not used.
    pub(crate) fn insert(
        &mut self,
        slot: u32,
        count: u32,
        spare: &mut Option<NonNull<u8>>,
    ) -> Result<()> {
        if slot == 0 {
            return Err(Error::OutOfRange);
        }
        for mut p in self.pages() {
            // SAFETY: as in `update`.
            let pg = unsafe { p.as_mut() };
            if let Some(e) = pg.pairs.iter_mut().find(|(s, _)| *s == 0) {
                *e = (slot, count);
                pg.used += 1;
                return Ok(());
            }
        }
        let page = spare.take().ok_or(Error::NoMem)?.cast::<SidePage>();
        // SAFETY: a fresh zeroed page of PAGE bytes, aligned for SidePage, whose
        // all-zero pattern is a valid empty page.
        let pg = unsafe { &mut *page.as_ptr() };
        pg.next = self.first;
        if let Some(e) = pg.pairs.first_mut() {
            *e = (slot, count);
        }
        pg.used = 1;
        self.first = Some(page);
        self.pages += 1;
        Ok(())
    }

    /// Remove `slot`; a page left empty is unlinked and returned for freeing.
    pub(crate) fn remove(&mut self, slot: u32) -> FreePage {
        let mut prev: Option<NonNull<SidePage>> = None;
        let mut cur = self.first;
        while let Some(mut p) = cur {
            // SAFETY: as in `update`.
            let pg = unsafe { p.as_mut() };
            if let Some(e) = pg.pairs.iter_mut().find(|(s, _)| *s == slot) {
                *e = (0, 0);
                pg.used -= 1;
                if pg.used == 0 {
                    match prev {
                        // SAFETY: linked page, exclusive under the lock.
                        Some(mut pp) => unsafe { pp.as_mut().next = pg.next },
                        None => self.first = pg.next,
                    }
                    self.pages -= 1;
                    return FreePage(Some(p));
                }
                return FreePage(None);
            }
            prev = Some(p);
            cur = pg.next;
        }
        FreePage(None)
    }
}

impl FreePage {
    /// Wrap an unused page from [`SideTable::new_page`].
    pub(crate) fn from_raw(p: NonNull<u8>) -> Self {
        FreePage(Some(p.cast()))
    }
}
