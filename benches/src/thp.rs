//! A slot-level port of the kernel's mTHP swap allocator stress test
//! (`tools/mm/thp_swap_allocator_test.c`, Linux 6.12 and later), written
//! here from that program and its published description, to measure how
//! often a device allocator makes a 64 KiB folio's swap-out fall back to
//! 4 KiB slots.
//!
//! # What the kernel test does
//!
//! On a 64 MiB swap device (zram in the test's instructions) with 64 KiB
//! mTHP enabled, it maps a 60 MiB area that faults in as 64 KiB folios and,
//! with `-s`, a 4 MiB area of small (4 KiB) folios. Warm-up: write both areas
//! and `MADV_PAGEOUT` them, which fills the device (15,360 slots without
//! `-s`; with `-s` 16,384: one more than the 16,383 slots a 64 MiB device
//! has after its header). Then 100 iterations of:
//!
//! 1. 4,096 writes to random 4 KiB pages of the mTHP area (16 MiB worth;
//!    a page can be picked twice). A swapped-out page faults back in as a
//!    small folio (there is no large-folio swap-in there), which splits its
//!    folio's 16 swap entries.
//! 2. 256 `MADV_DONTNEED`s of random 64 KiB-aligned ranges of the mTHP area,
//!    each followed by a write of the range: the range's swap entries are
//!    freed and the write faults in a fresh 64 KiB folio.
//! 3. With `-s`: 256 writes to random pages of the small area.
//! 4. `MADV_PAGEOUT` of the mTHP area, then (with `-s`) of the small area.
//!
//! Each iteration prints the anon swpout fallback ratio from the 64 KiB
//! counters in `/sys/kernel/mm/transparent_hugepage/hugepages-64kB/stats/`:
//! `swpout_fallback / (swpout_fallback + swpout)`, where `swpout` counts
//! 64 KiB folios written out whole (one order-4 slot allocation) and
//! `swpout_fallback` those whose order-4 allocation failed, which reclaim
//! then splits into 16 small folios that go out with order-0 slots. The
//! expected result is 0% with or without `-s`.
//!
//! # The replay
//!
//! [`run`] replays the test against any [`PhysSlots`] device allocator, with
//! a page table instead of memory. Each page of the mTHP area is, per 64 KiB
//! range, either part of a resident 64 KiB folio or, page by page, swapped
//! out (with its device slot), resident as a small folio without a slot, or
//! (in the [`SwapIn::KeepClean`] mode) resident, clean, and still holding its
//! slot in the swap cache; small-area pages likewise without the 64 KiB
//! state. The phases are the test's, in its order. Pageout walks each area in
//! address order: a 64 KiB folio asks for an order-4 run (`swpout` on
//! success; on failure `swpout_fallback`, then its 16 pages ask for order-0
//! slots one by one), a small folio for an order-0 slot, a clean swap-cache
//! page keeps the slot it has; a page that gets no slot stays resident (the
//! device is full), as reclaim leaves it. `MADV_DONTNEED` frees a range's
//! slots in runs of consecutive slots (one [`PhysSlots::free`] per run) and
//! makes the range one resident 64 KiB folio. Slot owners are the page's
//! index + 1 (a virtual slot number). Two more counters say why folios fall
//! back: order-0 slots placed in a wholly free aligned 16-slot run
//! ([`Counters::broke`]) and frees that leave an aligned 16-slot run wholly
//! free ([`Counters::runs_freed`]), and order-0 slots that went back to the
//! page that held them last ([`Counters::own_slot`]).
//!
//! Geometry ([`Config`]): [`Config::test`] is the test's own (960 folios,
//! 1,024 small pages, 4,096 + 256 + 256 picks per iteration on a 16,384-slot
//! device). [`Config::at_use`] scales the areas instead, so that the pages
//! the test swaps out are a given share of the device's usable slots (the
//! 60 : 4 split kept with `-s`), with the per-iteration picks scaled with
//! them (4/15 of the mTHP area's pages and folios, 1/4 of the small area's
//! pages, the test's proportions): there is no filler area.
//!
//! Two CPU numbers: the test is one process, which the scheduler may move
//! between CPUs. The kernel's `MADV_PAGEOUT` walk hands folios to reclaim one
//! 2 MiB page-table range at a time and may reschedule in between, so the
//! replay picks the CPU number at random (its own generator stream) at every
//! 2 MiB of the pageout walk ([`Config::batch_pages`]); the allocator's
//! per-CPU state sees two CPUs that take turns at random. Frees carry no
//! CPU number ([`PhysSlots::free`] has none).
//!
//! Swap-in ([`SwapIn`]): in the test every touch is a write (`memset`), and
//! the kernel frees a swapped-in page's slot at a write fault (and at any
//! swap-in on a synchronous device such as zram, or when swap is more than
//! half full): [`SwapIn::Free`], the test's own behaviour. [`SwapIn::KeepClean`]
//! is the swap cache's behaviour when none of that applies: a page read back
//! keeps its slot while it stays clean, its next pageout needs no new slot,
//! and a write to it frees the slot (`Config::write_pct` of the touches
//! write, drawn from a generator stream of their own so that the pages
//! touched are the same as in the other mode; with the test's 100% it is
//! [`SwapIn::Free`] exactly).
//!
//! The test's `-a` ([`Config::aligned`]) makes the mTHP area's swap-ins
//! whole random 64 KiB ranges (256 a iteration, each written page by page);
//! the published runs of the kernel's allocator series used it
//! (`thp_swap_allocator_test -a`). [`SwapIn::Large`] is the large-folio
//! swap-in of Linux 6.13 and later on zram: a fault in a range that went out
//! whole brings the whole range back, so with it the test's random 4 KiB
//! touches free whole runs as `-a` does.
//!
//! Allocators: any [`PhysSlots`]; this module adds [`FirstFit`], a naive
//! first-fit bitmap, and [`FirstFitOldSlot`], first-fit that gives an
//! order-0 allocation the slot its owner held last when it is free (which
//! keeps a range whose pages were swapped in and out again in its run).
//!
//! # Not modelled
//!
//! Page contents and compression (only slots count); the per-CPU swap slot
//! cache of older kernels (batches of 64 order-0 slots); readahead; large
//! folio swap-in of anything but a whole 64 KiB range ([`SwapIn::Large`]);
//! reclaim that fails for reasons other than a slot (a folio referenced or
//! locked meanwhile); a 64 KiB fault that gets a small folio; shared pages
//! (each page has one mapping). The warm-up's counters are kept apart
//! ([`Run::warmup`]), as the test prints only the iterations'. `rand()` is
//! replaced by the crate's [`Rng`] (SplitMix64) with a given seed.

use std::sync::Mutex;

use bitvec::prelude::{BitVec, Lsb0};

use crate::Rng;
use crate::work::PhysSlots;

/// Slots of the test's device: 64 MiB of 4 KiB pages (slot 0 is the swap
/// header, so 16,383 are usable).
pub const DEVICE_SLOTS: u64 = 16384;
/// Pages of one mTHP folio (64 KiB).
pub const FOLIO_PAGES: usize = 16;
/// Allocation order of one mTHP folio.
pub const FOLIO_ORDER: u32 = 4;
/// Pages of the test's mTHP area (60 MiB).
pub const TEST_MTHP_PAGES: usize = 60 * 256;
/// Pages of the test's small-folio area (4 MiB, `-s`).
pub const TEST_SMALL_PAGES: usize = 4 * 256;
/// Pages per reclaim batch of `MADV_PAGEOUT` (2 MiB).
pub const BATCH_PAGES: usize = 512;

/// What a swap-in does to the page's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapIn {
    /// The slot is freed at swap-in (the test's writes; zram).
    Free,
    /// The page keeps its slot in the swap cache while it stays clean; a
    /// write frees it.
    KeepClean,
    /// Large-folio swap-in, as Linux 6.13 and later do on a synchronous
    /// device such as zram (`alloc_swap_folio` / `can_swapin_thp`): a fault
    /// in a 64 KiB range whose 16 pages are all swapped out, to 16
    /// consecutive slots starting at a slot aligned to 16, brings the whole
    /// range back as one 64 KiB folio and frees the run; any other fault
    /// brings back the one page, as in [`SwapIn::Free`]. Slots are freed at
    /// swap-in.
    Large,
}

impl SwapIn {
    /// Short name for the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Free => "freed at swap-in (the test)",
            Self::KeepClean => "kept while clean (swap cache)",
            Self::Large => "freed, 64 KiB folio swap-in (6.13+)",
        }
    }
}

/// One replay's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Device slots (slot 0 reserved by the allocators).
    pub device_slots: u64,
    /// 64 KiB folios of the mTHP area.
    pub mthp_folios: usize,
    /// Pages of the small area (0: without `-s`).
    pub small_pages: usize,
    /// Random 4 KiB touches of the mTHP area per iteration (with
    /// [`Config::aligned`], `swapins / 16` random 64 KiB ranges).
    pub swapins: usize,
    /// The test's `-a`: the mTHP area's swap-ins write whole random
    /// 64 KiB-aligned ranges instead of random 4 KiB pages.
    pub aligned: bool,
    /// Random 64 KiB `MADV_DONTNEED`s of the mTHP area per iteration.
    pub dontneeds: usize,
    /// Random 4 KiB touches of the small area per iteration.
    pub small_swapins: usize,
    /// Iterations after the warm-up.
    pub iterations: usize,
    /// What a swap-in does to the slot.
    pub swapin: SwapIn,
    /// Percent of the touches that write (the test: 100); matters only in
    /// [`SwapIn::KeepClean`].
    pub write_pct: u32,
    /// CPU numbers the process runs on (picked at random per batch).
    pub cpus: u32,
    /// Pages of one pageout batch, after which the CPU number is drawn anew.
    pub batch_pages: usize,
    /// Seed of the generators.
    pub seed: u64,
}

impl Config {
    /// The kernel test's own geometry, with (`small`) or without `-s`: 100
    /// iterations, swap-ins freeing their slot, 2 CPU numbers.
    pub fn test(small: bool) -> Self {
        Self {
            device_slots: DEVICE_SLOTS,
            mthp_folios: TEST_MTHP_PAGES / FOLIO_PAGES,
            small_pages: if small { TEST_SMALL_PAGES } else { 0 },
            swapins: 4096,
            aligned: false,
            dontneeds: 256,
            small_swapins: if small { 256 } else { 0 },
            iterations: 100,
            swapin: SwapIn::Free,
            write_pct: 100,
            cpus: 2,
            batch_pages: BATCH_PAGES,
            seed: 1,
        }
    }

    /// The test scaled so that its areas take `pct` percent of the device's
    /// usable slots (the 60 : 4 split with `-s`), the per-iteration picks in
    /// the test's proportions to the areas.
    pub fn at_use(pct: u32, small: bool) -> Self {
        let usable = (DEVICE_SLOTS - 1) as usize;
        let total = usable * pct as usize / 100;
        let mthp = if small { total * 15 / 16 } else { total };
        let folios = mthp / FOLIO_PAGES;
        let small_pages = if small {
            total - folios * FOLIO_PAGES
        } else {
            0
        };
        Self {
            mthp_folios: folios,
            small_pages,
            swapins: folios * FOLIO_PAGES * 4 / 15,
            dontneeds: folios * 4 / 15,
            small_swapins: small_pages / 4,
            ..Self::test(small)
        }
    }

    /// Pages the test swaps out, as a share of the usable device slots.
    pub fn use_pct(&self) -> f64 {
        let pages = self.mthp_folios * FOLIO_PAGES + self.small_pages;
        100.0 * pages as f64 / (self.device_slots - 1) as f64
    }
}

/// The counters of one iteration (or of the warm-up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// 64 KiB folios swapped out whole (the kernel's `swpout`).
    pub swpout: u64,
    /// 64 KiB folios whose order-4 allocation failed (`swpout_fallback`).
    pub fallback: u64,
    /// Order-0 slots allocated (small folios and split folios' pages).
    pub small: u64,
    /// Pages that got no slot and stayed resident.
    pub unswapped: u64,
    /// Clean swap-cache pages that went out on the slot they kept.
    pub kept: u64,
    /// Order-0 slots placed in a naturally aligned 16-slot run that was
    /// wholly free (each breaks up a run a 64 KiB folio could have had).
    pub broke: u64,
    /// Naturally aligned 16-slot runs that a free (a swap-in's or a
    /// `MADV_DONTNEED`'s) left wholly free.
    pub runs_freed: u64,
    /// Order-0 slots that went to a page that held that very slot last.
    pub own_slot: u64,
    /// 64 KiB ranges swapped in as one folio ([`SwapIn::Large`]).
    pub large_in: u64,
}

impl Counters {
    /// The test's fallback percentage (NaN when no 64 KiB folio went out).
    pub fn ratio(&self) -> f64 {
        100.0 * self.fallback as f64 / (self.fallback + self.swpout) as f64
    }
}

/// A replay's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The warm-up's pageout.
    pub warmup: Counters,
    /// One entry per iteration.
    pub iters: Vec<Counters>,
}

impl Run {
    /// Mean of the per-iteration ratios over the first `n` iterations.
    pub fn mean(&self, n: usize) -> f64 {
        let it = self.iters.get(..n).unwrap_or(&self.iters);
        it.iter().map(Counters::ratio).sum::<f64>() / it.len() as f64
    }

    /// Iteration `n`'s ratio (1-based).
    pub fn at(&self, n: usize) -> f64 {
        self.iters
            .get(n.wrapping_sub(1))
            .map_or(f64::NAN, Counters::ratio)
    }

    /// The counters of the first `n` iterations, added up.
    pub fn sum(&self, n: usize) -> Counters {
        let it = self.iters.get(..n).unwrap_or(&self.iters);
        it.iter().fold(Counters::default(), |a, c| Counters {
            swpout: a.swpout + c.swpout,
            fallback: a.fallback + c.fallback,
            small: a.small + c.small,
            unswapped: a.unswapped + c.unswapped,
            kept: a.kept + c.kept,
            broke: a.broke + c.broke,
            runs_freed: a.runs_freed + c.runs_freed,
            own_slot: a.own_slot + c.own_slot,
            large_in: a.large_in + c.large_in,
        })
    }

    /// Highest per-iteration ratio over the first `n` iterations.
    pub fn max(&self, n: usize) -> f64 {
        let it = self.iters.get(..n).unwrap_or(&self.iters);
        it.iter().map(Counters::ratio).fold(0.0, f64::max)
    }
}

/// A page's state (the mTHP area's pages when their range is not a resident
/// 64 KiB folio, and every small-area page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    /// Resident, no slot.
    Resident,
    /// Swapped out to this slot.
    Out(u64),
    /// Resident, clean, keeping this slot in the swap cache.
    Cached(u64),
}

struct Sim<'a, D> {
    dev: &'a D,
    cfg: Config,
    /// Page picks.
    rng: Rng,
    /// Which touches write.
    wrng: Rng,
    /// CPU numbers.
    crng: Rng,
    cpu: u32,
    /// Per 64 KiB range of the mTHP area: a resident 64 KiB folio.
    large: Vec<bool>,
    /// mTHP area pages, then small area pages.
    pages: Vec<Page>,
    /// Device slots the pages hold.
    held: BitVec<u64, Lsb0>,
    /// Per page, the slot it held last (`u64::MAX`: none yet).
    last: Vec<u64>,
    c: Counters,
}

impl<D: PhysSlots> Sim<'_, D> {
    fn mthp_pages(&self) -> usize {
        self.cfg.mthp_folios * FOLIO_PAGES
    }

    fn owner(p: usize) -> u64 {
        p as u64 + 1
    }

    /// Allocate `2^order` slots, keeping the held-slot map.
    fn alloc(&mut self, order: u32, cpu: u32, owner: u64) -> Option<u64> {
        let off = self.dev.alloc(order, cpu, owner)?;
        let at = off as usize;
        if order == 0 {
            let run = at & !(FOLIO_PAGES - 1);
            if self
                .held
                .get(run..run + FOLIO_PAGES)
                .is_some_and(|r| r.not_any())
            {
                self.c.broke += 1;
            }
        }
        if let Some(r) = self.held.get_mut(at..at + (1 << order)) {
            r.fill(true);
        }
        Some(off)
    }

    /// Free `len` slots from `off`.
    fn free(&mut self, off: u64, len: u64) {
        self.dev.free(off, len);
        let (a, b) = (off as usize, (off + len) as usize);
        if let Some(r) = self.held.get_mut(a..b) {
            r.fill(false);
        }
        for run in (a & !(FOLIO_PAGES - 1)..b).step_by(FOLIO_PAGES) {
            if self
                .held
                .get(run..run + FOLIO_PAGES)
                .is_some_and(|r| r.not_any())
            {
                self.c.runs_freed += 1;
            }
        }
    }

    /// Free slots in runs of consecutive offsets.
    fn free_runs(&mut self, offs: impl Iterator<Item = u64>) {
        let mut run: Option<(u64, u64)> = None;
        for off in offs {
            run = match run {
                Some((s, l)) if s + l == off => Some((s, l + 1)),
                Some((s, l)) => {
                    self.free(s, l);
                    Some((off, 1))
                }
                None => Some((off, 1)),
            };
        }
        if let Some((s, l)) = run {
            self.free(s, l);
        }
    }

    /// The first slot of range `r`'s pages when all 16 are swapped out to
    /// consecutive slots from a slot aligned to 16 (a large swap-in can
    /// bring them back as one folio).
    fn whole_run(&self, r: usize) -> Option<u64> {
        let pages = self.pages.get(r * FOLIO_PAGES..(r + 1) * FOLIO_PAGES)?;
        let Some(&Page::Out(base)) = pages.first() else {
            return None;
        };
        let whole = base % FOLIO_PAGES as u64 == 0
            && pages
                .iter()
                .zip(base..)
                .all(|(pg, off)| *pg == Page::Out(off));
        whole.then_some(base)
    }

    /// A 4 KiB touch of page `p`.
    fn touch(&mut self, p: usize) {
        if p < self.mthp_pages() && self.large.get(p / FOLIO_PAGES) == Some(&true) {
            return;
        }
        if self.cfg.swapin == SwapIn::Large && p < self.mthp_pages() {
            let r = p / FOLIO_PAGES;
            if let Some(base) = self.whole_run(r) {
                self.free(base, FOLIO_PAGES as u64);
                if let Some(pages) = self.pages.get_mut(r * FOLIO_PAGES..(r + 1) * FOLIO_PAGES) {
                    pages.fill(Page::Resident);
                }
                if let Some(l) = self.large.get_mut(r) {
                    *l = true;
                }
                self.c.large_in += 1;
                return;
            }
        }
        let write = match self.cfg.swapin {
            SwapIn::Free | SwapIn::Large => true,
            SwapIn::KeepClean => self.wrng.below(100) < u64::from(self.cfg.write_pct),
        };
        let Some(pg) = self.pages.get_mut(p) else {
            return;
        };
        match *pg {
            Page::Out(off) if !write => *pg = Page::Cached(off),
            Page::Out(off) | Page::Cached(off) if write => {
                *pg = Page::Resident;
                self.free(off, 1);
            }
            _ => {}
        }
    }

    /// `MADV_DONTNEED` of range `r` of the mTHP area, then a write of it.
    fn dontneed(&mut self, r: usize) {
        if self.large.get(r) != Some(&false) {
            return;
        }
        let span = r * FOLIO_PAGES..(r + 1) * FOLIO_PAGES;
        let Some(pages) = self.pages.get_mut(span) else {
            return;
        };
        let mut offs = [0u64; FOLIO_PAGES];
        let mut n = 0;
        for pg in pages {
            if let Page::Out(off) | Page::Cached(off) = *pg {
                if let Some(o) = offs.get_mut(n) {
                    *o = off;
                    n += 1;
                }
            }
            *pg = Page::Resident;
        }
        self.free_runs(offs.iter().take(n).copied());
        if let Some(l) = self.large.get_mut(r) {
            *l = true;
        }
    }

    /// The CPU number for page `p` of the walk: drawn anew at each batch.
    fn cpu_at(&mut self, p: usize) -> u32 {
        if p % self.cfg.batch_pages.max(1) == 0 {
            self.cpu = self.crng.below(u64::from(self.cfg.cpus.max(1))) as u32;
        }
        self.cpu
    }

    /// One small page's pageout.
    fn page_out(&mut self, p: usize, cpu: u32) {
        let Some(pg) = self.pages.get(p).copied() else {
            return;
        };
        let new = match pg {
            Page::Out(_) => return,
            Page::Cached(off) => {
                self.c.kept += 1;
                Page::Out(off)
            }
            Page::Resident => match self.alloc(0, cpu, Self::owner(p)) {
                Some(off) => {
                    self.c.small += 1;
                    if let Some(l) = self.last.get_mut(p) {
                        if *l == off {
                            self.c.own_slot += 1;
                        }
                        *l = off;
                    }
                    Page::Out(off)
                }
                None => {
                    self.c.unswapped += 1;
                    return;
                }
            },
        };
        if let Some(pg) = self.pages.get_mut(p) {
            *pg = new;
        }
    }

    /// `MADV_PAGEOUT` of the mTHP area (`small == false`) or of the small
    /// area.
    fn pageout(&mut self, small: bool) {
        let (from, to) = if small {
            (self.mthp_pages(), self.pages.len())
        } else {
            (0, self.mthp_pages())
        };
        let mut p = from;
        while p < to {
            let cpu = self.cpu_at(p - from);
            let r = p / FOLIO_PAGES;
            if !small && self.large.get(r) == Some(&true) {
                if let Some(l) = self.large.get_mut(r) {
                    *l = false;
                }
                match self.alloc(FOLIO_ORDER, cpu, Self::owner(p)) {
                    Some(off) => {
                        self.c.swpout += 1;
                        let pages = self.pages.iter_mut().skip(p).take(FOLIO_PAGES);
                        let last = self.last.iter_mut().skip(p).take(FOLIO_PAGES);
                        for (i, (pg, l)) in pages.zip(last).enumerate() {
                            *pg = Page::Out(off + i as u64);
                            *l = off + i as u64;
                        }
                    }
                    None => {
                        // Split: the 16 pages go out as small folios.
                        self.c.fallback += 1;
                        for q in p..p + FOLIO_PAGES {
                            self.page_out(q, cpu);
                        }
                    }
                }
                p += FOLIO_PAGES;
                continue;
            }
            self.page_out(p, cpu);
            p += 1;
        }
    }

    fn iteration(&mut self) {
        let mthp = self.mthp_pages() as u64;
        let folios = self.cfg.mthp_folios as u64;
        if self.cfg.aligned {
            for _ in 0..self.cfg.swapins / FOLIO_PAGES {
                let r = self.rng.below(folios) as usize;
                for p in r * FOLIO_PAGES..(r + 1) * FOLIO_PAGES {
                    self.touch(p);
                }
            }
        } else {
            for _ in 0..self.cfg.swapins {
                let p = self.rng.below(mthp) as usize;
                self.touch(p);
            }
        }
        for _ in 0..self.cfg.dontneeds {
            let r = self.rng.below(folios) as usize;
            self.dontneed(r);
        }
        if self.cfg.small_pages > 0 {
            for _ in 0..self.cfg.small_swapins {
                let p = self.rng.below(self.cfg.small_pages as u64) as usize;
                self.touch(self.mthp_pages() + p);
            }
        }
        self.pageout(false);
        if self.cfg.small_pages > 0 {
            self.pageout(true);
        }
    }

    fn take(&mut self) -> Counters {
        core::mem::take(&mut self.c)
    }
}

/// Replay the test on `dev` (a fresh device of `cfg.device_slots` slots).
pub fn run<D: PhysSlots>(dev: &D, cfg: &Config) -> Run {
    run_while(dev, cfg, |_| true)
}

/// [`run`], stopping early when `more(done)` (called before each iteration
/// after the first `done`) returns `false`: a run of `n` iterations is the
/// first `n` of a longer run with the same configuration.
pub fn run_while<D: PhysSlots>(dev: &D, cfg: &Config, mut more: impl FnMut(usize) -> bool) -> Run {
    let mut s = Sim {
        dev,
        cfg: *cfg,
        rng: Rng(cfg.seed),
        wrng: Rng(cfg.seed ^ 0x5752_4954_4553),
        crng: Rng(cfg.seed ^ 0x4350_5553),
        cpu: 0,
        large: vec![true; cfg.mthp_folios],
        pages: vec![Page::Resident; cfg.mthp_folios * FOLIO_PAGES + cfg.small_pages],
        held: BitVec::repeat(false, cfg.device_slots as usize),
        last: vec![u64::MAX; cfg.mthp_folios * FOLIO_PAGES + cfg.small_pages],
        c: Counters::default(),
    };
    // Warm-up: both areas are written (64 KiB folios in the mTHP area) and
    // paged out.
    s.pageout(false);
    if cfg.small_pages > 0 {
        s.pageout(true);
    }
    let warmup = s.take();
    let mut iters = Vec::with_capacity(cfg.iterations);
    while iters.len() < cfg.iterations && more(iters.len()) {
        s.iteration();
        iters.push(s.take());
    }
    Run { warmup, iters }
}

/// A naive first-fit allocator: a bitmap of used slots (`bitvec`), every
/// allocation the lowest naturally aligned free run, no per-CPU state.
/// Slot 0 is reserved, as the other devices' header slot.
pub struct FirstFit {
    inner: Mutex<FirstFitInner>,
}

struct FirstFitInner {
    used: BitVec<u64, Lsb0>,
    /// Per order 0 and 4: no free run starts below this slot.
    low: [usize; 2],
}

impl FirstFit {
    /// A device of `slots` slots.
    pub fn new(slots: u64) -> Self {
        let mut used = BitVec::repeat(false, slots as usize);
        if let Some(mut b) = used.get_mut(0) {
            *b = true;
        }
        Self {
            inner: Mutex::new(FirstFitInner { used, low: [0; 2] }),
        }
    }

    /// Slots in use (the header slot included).
    pub fn used(&self) -> usize {
        self.inner.lock().map_or(0, |g| g.used.count_ones())
    }
}

impl PhysSlots for FirstFit {
    const NAME: &'static str = "first_fit";

    fn alloc(&self, order: u32, _cpu: u32, _owner: u64) -> Option<u64> {
        let n = 1usize << order;
        let mut g = self.inner.lock().ok()?;
        let k = usize::from(order > 0);
        let from = g.low.get(k).copied().unwrap_or(0) & !(n - 1);
        let found = if order == 0 {
            g.used.get(from..)?.first_zero().map(|i| from + i)
        } else {
            g.used
                .get(from..)?
                .chunks_exact(n)
                .position(|c| c.not_any())
                .map(|i| from + i * n)
        };
        let hint = found.unwrap_or(g.used.len());
        if let Some(l) = g.low.get_mut(k) {
            *l = hint;
        }
        let at = found?;
        g.used.get_mut(at..at + n)?.fill(true);
        Some(at as u64)
    }

    fn free(&self, off: u64, len: u64) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let (a, b) = (off as usize, (off + len) as usize);
        if let Some(s) = g.used.get_mut(a..b) {
            debug_assert!(s.all(), "first-fit: free of a free slot");
            s.fill(false);
        }
        for l in &mut g.low {
            *l = (*l).min(a);
        }
    }
}

impl FirstFit {
    /// Take slot `off` if it is free.
    fn take(&self, off: u64) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        match g.used.get_mut(off as usize) {
            Some(mut b) if !*b => {
                *b = true;
                true
            }
            _ => false,
        }
    }
}

/// First-fit that gives an order-0 allocation the slot its owner (virtual
/// slot) held last when that slot is free: a swapped-in page goes back into
/// its own hole, so a 64 KiB range whose pages were swapped in and out again
/// stays in its 16-slot run. The policy the outside replay found to
/// reach 0%; here to check that the replay shows the same.
pub struct FirstFitOldSlot {
    ff: FirstFit,
    /// Per owner, the slot it held last (`u64::MAX`: none).
    last: Mutex<Vec<u64>>,
}

impl FirstFitOldSlot {
    /// A device of `slots` slots for owners below `owners`.
    pub fn new(slots: u64, owners: usize) -> Self {
        Self {
            ff: FirstFit::new(slots),
            last: Mutex::new(vec![u64::MAX; owners]),
        }
    }
}

impl PhysSlots for FirstFitOldSlot {
    const NAME: &'static str = "first_fit_old_slot";

    fn alloc(&self, order: u32, cpu: u32, owner: u64) -> Option<u64> {
        let mut last = self.last.lock().ok()?;
        let old = last.get(owner as usize).copied().unwrap_or(u64::MAX);
        let off = if order == 0 && old != u64::MAX && self.ff.take(old) {
            old
        } else {
            self.ff.alloc(order, cpu, owner)?
        };
        for i in 0..1u64 << order {
            if let Some(l) = last.get_mut((owner + i) as usize) {
                *l = off + i;
            }
        }
        Some(off)
    }

    fn free(&self, off: u64, len: u64) {
        self.ff.free(off, len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::v5::V5Phys;
    use crate::work::vswap_device;

    /// Fails every order-4 allocation; order 0 from a first-fit device.
    struct NoLarge(FirstFit);

    impl PhysSlots for NoLarge {
        const NAME: &'static str = "no_large";
        fn alloc(&self, order: u32, cpu: u32, owner: u64) -> Option<u64> {
            (order == 0).then(|| self.0.alloc(0, cpu, owner)).flatten()
        }
        fn free(&self, off: u64, len: u64) {
            self.0.free(off, len)
        }
    }

    fn tiny(swapin: SwapIn, small: usize) -> Config {
        Config {
            device_slots: 1 << 14,
            mthp_folios: 64,
            small_pages: small,
            swapins: 256,
            dontneeds: 16,
            small_swapins: small / 4,
            iterations: 20,
            swapin,
            write_pct: 50,
            ..Config::test(false)
        }
    }

    #[test]
    fn no_order4_is_all_fallback() {
        for small in [0, 64] {
            let cfg = tiny(SwapIn::Free, small);
            let r = run(&NoLarge(FirstFit::new(cfg.device_slots)), &cfg);
            assert_eq!(r.warmup.fallback, 64);
            assert_eq!(r.warmup.swpout, 0);
            assert_eq!(r.warmup.small, 64 * 16 + small as u64);
            for c in &r.iters {
                assert!(c.fallback > 0);
                assert_eq!(c.swpout, 0);
                assert_eq!(c.ratio(), 100.0);
            }
            assert_eq!(r.mean(20), 100.0);
        }
    }

    #[test]
    fn unlimited_space_is_no_fallback() {
        for swapin in [SwapIn::Free, SwapIn::KeepClean] {
            // 16 times the pages: every allocation finds room.
            let cfg = tiny(swapin, 64);
            let d = FirstFit::new(cfg.device_slots);
            let r = run(&d, &cfg);
            assert_eq!(r.warmup.swpout, 64);
            for c in &r.iters {
                assert_eq!(c.fallback, 0);
                assert_eq!(c.unswapped, 0);
                assert!(c.swpout > 0);
            }
            assert_eq!(r.mean(20), 0.0);
            assert_eq!(r.max(20), 0.0);
            // First-fit packs from the bottom: the small pages never land
            // in a free run above the folios, and a DONTNEED of a range
            // still in its run frees the whole run.
            let sum = r.sum(20);
            assert_eq!(sum.swpout + sum.fallback, sum.swpout);
            assert!(sum.runs_freed > 0);
            assert_eq!(
                r.sum(3).swpout,
                r.iters[..3].iter().map(|c| c.swpout).sum::<u64>()
            );
            // Every page holds exactly one slot after a pageout.
            assert_eq!(d.used(), 1 + 64 * 16 + 64);
        }
    }

    #[test]
    fn accounting_matches_the_pages() {
        // Each iteration's order-4 attempts are the ranges made resident by
        // the DONTNEEDs (distinct ranges); with no room for order 4 at all
        // they all fall back and their pages go out at order 0.
        let cfg = Config {
            swapin: SwapIn::Free,
            small_pages: 0,
            small_swapins: 0,
            ..tiny(SwapIn::Free, 0)
        };
        let d = NoLarge(FirstFit::new(cfg.device_slots));
        let r = run(&d, &cfg);
        for c in &r.iters {
            assert!(c.fallback <= cfg.dontneeds as u64);
            assert!(c.small >= c.fallback * 16);
        }
        assert_eq!(d.0.used(), 1 + 64 * 16);
    }

    #[test]
    fn large_swapin_brings_whole_ranges_back() {
        // Room for everything: every range goes out whole, so every touch
        // of a swapped-out range brings the whole range back and no page of
        // the mTHP area ever needs an order-0 slot.
        for aligned in [false, true] {
            let cfg = Config {
                aligned,
                ..tiny(SwapIn::Large, 0)
            };
            let r = run(&FirstFit::new(cfg.device_slots), &cfg);
            for c in &r.iters {
                assert!(c.large_in > 0);
                assert_eq!(c.small, 0);
                assert_eq!(c.fallback, 0);
                // Every range that came back goes out whole again.
                assert!(c.swpout >= c.large_in);
            }
        }
    }

    #[test]
    fn large_swapin_needs_an_aligned_whole_run() {
        // Order-0 slots only, packed from slot 1: a range's 16 slots are
        // consecutive but never start at a multiple of 16, so no large
        // swap-in happens and the run is exactly the 4 KiB one.
        let free = tiny(SwapIn::Free, 16);
        let large = Config {
            swapin: SwapIn::Large,
            ..free
        };
        let a = run(&NoLarge(FirstFit::new(free.device_slots)), &free);
        let b = run(&NoLarge(FirstFit::new(free.device_slots)), &large);
        assert_eq!(a, b);
        assert_eq!(b.sum(20).large_in, 0);
    }

    #[test]
    fn aligned_swapins_split_whole_ranges() {
        // `-a` without large swap-in: a touched range comes back page by
        // page, so its 16 pages go out at order 0 (room for everything, no
        // fallback): order-0 slots come in multiples of 16.
        let cfg = Config {
            aligned: true,
            ..tiny(SwapIn::Free, 0)
        };
        let r = run(&FirstFit::new(cfg.device_slots), &cfg);
        for c in &r.iters {
            assert_eq!(c.small % 16, 0);
            assert_eq!(c.fallback, 0);
            assert_eq!(c.large_in, 0);
        }
        assert!(r.sum(20).small > 0);
    }

    #[test]
    fn keep_clean_reuses_slots() {
        let cfg = Config {
            write_pct: 0,
            ..tiny(SwapIn::KeepClean, 0)
        };
        let r = run(&FirstFit::new(cfg.device_slots), &cfg);
        for c in &r.iters {
            assert!(c.kept > 0);
        }
        // With the test's 100% writes the mode is the test's own.
        let test = Config {
            iterations: 10,
            ..Config::test(true)
        };
        let free = run(&FirstFit::new(1 << 14), &test);
        let kept = run(
            &FirstFit::new(1 << 14),
            &Config {
                swapin: SwapIn::KeepClean,
                ..test
            },
        );
        assert_eq!(free, kept);
    }

    #[test]
    fn full_device_leaves_pages_resident() {
        // The test with -s asks for one slot more than the device has.
        let cfg = Config {
            iterations: 2,
            ..Config::test(true)
        };
        let d = FirstFit::new(cfg.device_slots);
        let r = run(&d, &cfg);
        assert_eq!(r.warmup.swpout, 960);
        assert_eq!(r.warmup.small, 1023);
        assert_eq!(r.warmup.unswapped, 1);
        assert_eq!(d.used() as u64, DEVICE_SLOTS);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let cfg = Config {
            iterations: 6,
            ..Config::at_use(80, true)
        };
        let a = run(&vswap_device(cfg.device_slots), &cfg);
        let b = run(&vswap_device(cfg.device_slots), &cfg);
        assert_eq!(a, b);
        let a = run(&V5Phys::new(cfg.device_slots, 2), &cfg);
        let b = run(&V5Phys::new(cfg.device_slots, 2), &cfg);
        assert_eq!(a, b);
        let other = run(
            &V5Phys::new(cfg.device_slots, 2),
            &Config { seed: 2, ..cfg },
        );
        assert_ne!(a.iters, other.iters);
        // A shorter run is the longer run's prefix.
        let short = run(
            &FirstFit::new(cfg.device_slots),
            &Config {
                iterations: 4,
                ..cfg
            },
        );
        let long = run(&FirstFit::new(cfg.device_slots), &cfg);
        assert_eq!(short.iters[..], long.iters[..4]);
        let stopped = run_while(&FirstFit::new(cfg.device_slots), &cfg, |done| done < 4);
        assert_eq!(stopped, short);
    }

    #[test]
    fn geometry() {
        let t = Config::test(false);
        assert_eq!(t.mthp_folios * FOLIO_PAGES, 15360);
        let s = Config::at_use(90, true);
        assert!((s.use_pct() - 90.0).abs() < 0.2, "{}", s.use_pct());
        assert!(s.small_pages > 0 && s.swapins > 0 && s.dontneeds > 0);
        let u = Config::at_use(80, false);
        assert_eq!(u.small_pages, 0);
        assert!((u.use_pct() - 80.0).abs() < 0.2);
    }

    #[test]
    fn old_slot_goes_back() {
        let d = FirstFitOldSlot::new(64, 64);
        assert_eq!(d.alloc(4, 0, 1), Some(16));
        d.free(18, 1);
        assert_eq!(d.alloc(0, 0, 9), Some(1));
        // Owner 3 held slot 18: it gets it back, not slot 2.
        assert_eq!(d.alloc(0, 0, 3), Some(18));
        d.free(18, 1);
        assert_eq!(d.alloc(0, 0, 4), Some(2));
        assert_eq!(d.alloc(0, 0, 3), Some(18));
    }

    #[test]
    fn first_fit_is_lowest_aligned() {
        let d = FirstFit::new(64);
        assert_eq!(d.alloc(0, 0, 1), Some(1));
        assert_eq!(d.alloc(4, 0, 1), Some(16));
        assert_eq!(d.alloc(0, 0, 1), Some(2));
        d.free(16, 1);
        assert_eq!(d.alloc(4, 0, 1), Some(32));
        assert_eq!(d.alloc(0, 0, 1), Some(3));
        assert_eq!(d.alloc(4, 0, 1), Some(48));
        assert_eq!(d.alloc(4, 0, 1), None);
        d.free(48, 16);
        assert_eq!(d.alloc(4, 0, 1), Some(48));
    }
}
