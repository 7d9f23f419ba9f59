//! The flash log device: a log-structured swap device for flash, written only
//! in whole erase-block segments, in sequential order, with a garbage collector
//! that relocates live data by rewriting descriptors (physical -> physical).
//!
//! # Shape
//! The device is `segments` segments of `2^seg_shift` physical slots (one
//! segment is one erase block). A physical slot's *offset* is
//! `segment << seg_shift | index`. Every physical slot has a 4-byte reverse-map
//! word (`rmap`): 0 means "no live data", anything else is the virtual slot
//! (the *owner*) whose data is there (owners are never 0: virtual slot 0 is
//! reserved). Every segment has a valid count (rmap words set), a state and a
//! seal time on a logical clock that ticks once per segment written.
//!
//! # Writing: staging and flushing
//! Pages are not given offsets when they are swapped out. The host *stages*
//! their owners in one of two streams, each a buffer of one segment:
//! - [`Stream::Host`]: pages written by the host ([`LogDevice::stage`]);
//! - [`Stream::Gc`]: pages the garbage collector relocates
//!   ([`LogDevice::gc_stage`]), so that relocated (mostly cold) data is kept
//!   apart from new (mostly hot) data.
//!
//! [`LogDevice::flush`] gives a stream's staged owners the offsets of one whole
//! segment, in staging order, and pads the rest of the segment when asked to
//! write a partial one ([`Flush::Now`]; padding counts as device bytes, not
//! host bytes). The segment written is always the first free segment at or
//! after the write head, wrapping around, so the device sees one sequential
//! stream of whole-segment writes. The returned [`Flushed`] names the segment;
//! [`LogDevice::live`] lists its `(owner, offset)` pairs. The host writes the
//! segment, commits each owner's descriptor to the new location, and then calls
//! [`LogDevice::seal`]. A staged owner can be taken back before the flush with
//! [`LogDevice::cancel`].
//!
//! # Segment states
//! ```text
//!            flush (lock)               seal (lock)
//!   FREE ------------------> OPEN --------------------> SEALED <-----------+
//!    ^                                                  |  |  ^            |
//!    |      valid == 0 (lock: reclaim, seal, gc_end)    |  |  | GC idle    | gc_abort
//!    +--------------------------------------------------+  |  | (lock)     | (lock)
//!    |                                           gc_begin  v  |            |
//!    |                                            (lock) COLLECTING -------+
//!    |                                                     | gc_end (lock)
//!    |      valid == 0 (lock: reclaim)                     v
//!    +------------------------------------------------ DRAINING
//! ```
//! - `FREE`: erased; every rmap word is 0 and the valid count is 0.
//! - `OPEN`: a flush gave out its offsets; the host is writing it. Never a GC
//!   victim (its data may not be on the device yet), never erased. (A GC
//!   segment is marked internally while open, so that the device knows when
//!   no relocation is in flight.)
//! - `SEALED`: written. A GC candidate; erased as soon as its valid count is 0.
//! - `COLLECTING`: the one current GC victim; the collector walks its rmap.
//!   Never erased, so the walk never sees a reused segment.
//! - `DRAINING`: walked; its live entries were staged again. Erased when the
//!   last relocation out of it commits (valid count 0); not a GC candidate
//!   meanwhile. When GC is idle (nothing staged in the GC stream, every GC
//!   segment sealed) a draining segment that still holds live data held
//!   entries the collector had to skip, and it is `SEALED` again.
//!
//! Every state change happens under the device lock, in the slow paths (flush,
//! seal, GC, reclaim). The lock is never held while the host runs code.
//!
//! # Invalidate: the lock-free path
//! [`LogDevice::invalidate`] (the engine releasing a physical slot) is one
//! `swap(0)` of the rmap word and, if the word held an owner, one `fetch_sub`
//! (release) of the segment's valid count. A word that was already 0 is a
//! double free: [`Error::NotAllocated`], nothing changed. Each set rmap word
//! contributes exactly one to its segment's valid count, and the word is
//! cleared before the count drops, so when the lock holder reads a valid count
//! of 0 (acquire) every word of the segment is 0 and nobody holds an offset in
//! it: the segment may be erased and its offsets handed out again.
//!
//! # Garbage collection
//! Step by step ([`LogDevice::gc_pass`] drives all steps through one closure):
//! 1. [`LogDevice::gc_begin`] picks a `SEALED` victim by the device's
//!    [`GcPolicy`] (greedy: fewest valid slots; cost-benefit: the largest
//!    `(1 - u) * age / (1 + u)`, after Rosenblum and Ousterhout's LFS) and
//!    makes it `COLLECTING`. Segments whose valid count is 0 are erased
//!    outright, with no copying. A segment that is completely valid is never
//!    a victim (cleaning it gains nothing).
//! 2. For each `(owner, offset)` of [`LogDevice::live`] on the victim, the
//!    caller takes the owner's lock in its map, checks that the owner still
//!    lives at that offset, and stages it in the GC stream with
//!    [`LogDevice::gc_stage`]. If the owner was freed meanwhile, its
//!    invalidate has happened (or will): the caller skips it. If someone else
//!    holds the owner's lock, the caller waits for it (skipping a live owner
//!    keeps its victim from draining, see `DRAINING`, and costs reserve
//!    space). When the GC
//!    stream is full, the caller flushes it and completes that segment as
//!    for any flush: copy each owner's data from its old location to the new
//!    offset, commit the descriptor, then invalidate the old offset. An owner
//!    found dead at commit time loses gracefully: the caller invalidates the
//!    *new* offset instead.
//! 3. [`LogDevice::gc_end`] makes the victim `DRAINING` (or `FREE` if nothing
//!    is left). It becomes free when the last relocation out of it commits:
//!    an old location is reused only after the move is committed.
//!    [`LogDevice::gc_abort`] instead returns the victim to `SEALED`.
//!
//! # Reserve
//! A host flush takes a free segment only while more than `reserve` are free;
//! a GC flush may use the reserve. A victim has at most `S - 1` live slots
//! (`S` = slots per segment) and only one victim is collected at a time. If
//! only the collector stages into the GC stream, each live entry once, a full
//! GC segment therefore always holds the last entries of at least one ended
//! victim, which drains once they commit: GC never consumes free segments on
//! balance, and a reserve of one segment is enough for it to proceed. The
//! host can fill `segments - reserve` segments; when every one of them is
//! completely valid, `gc_begin` finds no victim and the device is full.
//! Skipped live owners and aborted victims break the argument (their moves
//! use space without freeing a victim); as a last guard, `gc_begin` with no
//! free segment left only picks a victim that needs no GC flush.
//!
//! # What cannot be detected
//! Staging one owner twice gives it two offsets (the host's map decides which
//! one is committed; it must invalidate the other). A stale invalidate of an
//! offset that was erased and handed to a new owner clears the new owner's
//! word, as a stale put does in the map. A segment the host never seals stays
//! `OPEN` forever, and a victim never ended or aborted blocks further GC.

use core::ptr::{self, NonNull};

use crate::ext::{alloc_table, free_table};
use crate::provider::{Ctx, Provider};
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, Mutex, Ordering, ZeroInit};
use crate::{Error, Result};

/// Largest `log2` of the slots in a segment (65536 slots: a 256 MiB erase
/// block of 4 KiB pages).
pub const MAX_SEG_SHIFT: u32 = 16;
/// Largest number of physical slots of a log device (offsets are 32-bit).
pub const MAX_LOG_SLOTS: u64 = 1 << 32;
/// Largest accounting page size.
pub const MAX_PAGE_SIZE: u32 = 1 << 20;

/// How the garbage collector picks its victim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GcPolicy {
    /// The sealed segment with the fewest valid slots (oldest on a tie).
    Greedy,
    /// The sealed segment with the largest `(1 - u) * age / (1 + u)`, where
    /// `u` is its valid fraction and `age` the number of segments written
    /// since it was (Rosenblum and Ousterhout's LFS cleaner). LFS takes the
    /// age of the youngest data instead, so a segment of relocated data
    /// inherits its sources' age; measured here that raised the write
    /// amplification of uniform writes by 8-12% and gained nothing on
    /// skewed ones, so a segment's age is the time it was written.
    CostBenefit,
}

/// The shape and policy of a log device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Number of segments (erase blocks), at least `reserve + 2`.
    pub segments: u32,
    /// `log2` of the slots per segment, `1..=MAX_SEG_SHIFT`.
    pub seg_shift: u32,
    /// Bytes per slot, for the byte counters (a power of two up to
    /// [`MAX_PAGE_SIZE`]; default 4096).
    pub page_size: u32,
    /// Free segments that only GC may write into (at least 1; default 2).
    pub reserve: u32,
    /// The victim policy (default cost-benefit); see [`LogDevice::set_policy`].
    pub policy: GcPolicy,
}

impl LogConfig {
    /// `segments` segments of `2^seg_shift` slots, 4 KiB pages, a reserve of
    /// two segments, cost-benefit GC.
    ///
    /// ```
    /// use vswap_alloc::LogConfig;
    /// let c = LogConfig::new(64, 9);
    /// assert_eq!(c.slots(), 64 * 512);
    /// assert!(c.validate().is_ok());
    /// ```
    pub const fn new(segments: u32, seg_shift: u32) -> Self {
        Self {
            segments,
            seg_shift,
            page_size: 4096,
            reserve: 2,
            policy: GcPolicy::CostBenefit,
        }
    }

    /// Slots per segment.
    pub const fn segment_slots(&self) -> u32 {
        1 << self.seg_shift
    }

    /// Physical slots of the device.
    pub const fn slots(&self) -> u64 {
        (self.segments as u64) << self.seg_shift
    }

    /// Check every bound ([`Error::BadConfig`] otherwise).
    pub fn validate(&self) -> Result<()> {
        let ok = (1..=MAX_SEG_SHIFT).contains(&self.seg_shift)
            && self.page_size.is_power_of_two()
            && self.page_size <= MAX_PAGE_SIZE
            && self.reserve >= 1
            && u64::from(self.segments) >= u64::from(self.reserve) + 2
            && self.slots() <= MAX_LOG_SLOTS;
        if ok { Ok(()) } else { Err(Error::BadConfig) }
    }
}

/// One of the two staging buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Pages the host writes.
    Host,
    /// Pages the garbage collector relocates.
    Gc,
}

/// How much a flush writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Only a full segment of staged pages; otherwise nothing.
    Full,
    /// Whatever is staged, padding the rest of the segment.
    Now,
}

/// The state of one segment (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegState {
    /// Erased and empty.
    Free,
    /// Offsets handed out by a flush; the host is writing it.
    Open,
    /// Written; a GC candidate.
    Sealed,
    /// The current GC victim.
    Collecting,
    /// Collected; waiting for its last relocations to commit.
    Draining,
}

const FREE: u32 = 0;
const OPEN: u32 = 1;
/// `OPEN`, written from the GC stream.
const OPEN_GC: u32 = 5;
const SEALED: u32 = 2;
const COLLECTING: u32 = 3;
const DRAINING: u32 = 4;

impl SegState {
    fn decode(s: u32) -> SegState {
        match s {
            OPEN | OPEN_GC => SegState::Open,
            SEALED => SegState::Sealed,
            COLLECTING => SegState::Collecting,
            DRAINING => SegState::Draining,
            _ => SegState::Free,
        }
    }
}

/// A snapshot of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its state.
    pub state: SegState,
    /// Rmap words set (slots holding live data).
    pub valid: u32,
    /// Logical time (segments written before it) at which it was written.
    pub seal_time: u64,
}

/// A segment written by [`LogDevice::flush`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the host must write the segment, commit its owners and seal it"]
pub struct Flushed {
    seg: u32,
    base: u64,
    len: u32,
    padding: u32,
    stream: Stream,
}

impl Flushed {
    /// The segment's index (pass it to [`LogDevice::seal`]).
    pub const fn segment(&self) -> u32 {
        self.seg
    }
    /// Offset of the segment's first slot.
    pub const fn base(&self) -> u64 {
        self.base
    }
    /// Slots that got an owner: offsets `base .. base + len`, in staging order.
    pub const fn len(&self) -> u32 {
        self.len
    }
    /// Whether no slot got an owner (never true for a returned flush).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Padding slots at the end of the segment.
    pub const fn padding(&self) -> u32 {
        self.padding
    }
    /// The stream that was flushed.
    pub const fn stream(&self) -> Stream {
        self.stream
    }
}

/// The current GC victim, from [`LogDevice::gc_begin`]; give it back with
/// [`LogDevice::gc_end`] or [`LogDevice::gc_abort`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a victim must be ended or aborted, or GC stays blocked"]
pub struct Victim {
    seg: u32,
    valid: u32,
}

impl Victim {
    /// The victim segment's index (walk it with [`LogDevice::live`]).
    pub const fn segment(&self) -> u32 {
        self.seg
    }
    /// Its valid count when it was picked.
    pub const fn valid_at_pick(&self) -> u32 {
        self.valid
    }
}

/// One step of [`LogDevice::gc_pass`], handed to its closure.
#[derive(Debug)]
pub enum GcStep<'a> {
    /// `owner` lives at `off` in the victim. Take its lock, check that its
    /// backend still is `off`, and return `true` to have it staged in the GC
    /// stream (keep the lock until its move commits), or `false` to skip it
    /// because it no longer lives there (it was freed: its invalidate
    /// already happened). Wait for a lock someone else holds: see the
    /// module documentation on skipping live owners.
    Check {
        /// The owner (virtual slot) the reverse map names.
        owner: u32,
        /// Its offset in the victim.
        off: u64,
    },
    /// The GC stream was flushed into this segment. For each `(owner, to)`
    /// of [`LogDevice::live`] on it: copy the owner's data from its old
    /// location to `to`, commit its descriptor, then invalidate the old
    /// offset; or, if the owner died meanwhile, invalidate `to`. The return
    /// value is ignored; the driver seals the segment afterwards.
    Write(&'a Flushed),
}

/// What one [`LogDevice::gc_pass`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcPass {
    /// The victim segment, if one was collected.
    pub victim: Option<u32>,
    /// Live entries found in the victim.
    pub live: u32,
    /// Entries the closure claimed and the driver staged.
    pub staged: u32,
    /// GC segments flushed during the pass.
    pub flushed: u32,
}

/// The device's counters, from [`LogDevice::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes the host wrote: host-stream pages flushed, times the page size
    /// (a page cancelled before its flush was never written).
    pub host_bytes: u64,
    /// Bytes written to the device: every segment flushed, host and GC,
    /// padding included.
    pub device_bytes: u64,
    /// Bytes of relocated pages written by GC.
    pub gc_bytes: u64,
    /// Bytes of padding.
    pub pad_bytes: u64,
    /// Segments written.
    pub segments_written: u64,
    /// Victims collected (`gc_begin` calls that returned one).
    pub gc_runs: u64,
    /// Segments erased (made free again).
    pub segments_erased: u64,
    /// Free segments now.
    pub free_segments: u32,
    /// Slots holding live data now (the sum of the valid counts).
    pub live_slots: u64,
    /// Owners staged now in the host stream.
    pub staged_host: u32,
    /// Owners staged now in the GC stream.
    pub staged_gc: u32,
}

impl LogStats {
    /// Device bytes per host byte (`None` before the host wrote anything).
    pub fn write_amplification(&self) -> Option<f64> {
        (self.host_bytes != 0).then(|| self.device_bytes as f64 / self.host_bytes as f64)
    }

    /// The counters accumulated since `earlier` (gauges are this snapshot's).
    pub fn since(&self, earlier: &LogStats) -> LogStats {
        LogStats {
            host_bytes: self.host_bytes.saturating_sub(earlier.host_bytes),
            device_bytes: self.device_bytes.saturating_sub(earlier.device_bytes),
            gc_bytes: self.gc_bytes.saturating_sub(earlier.gc_bytes),
            pad_bytes: self.pad_bytes.saturating_sub(earlier.pad_bytes),
            segments_written: self
                .segments_written
                .saturating_sub(earlier.segments_written),
            gc_runs: self.gc_runs.saturating_sub(earlier.gc_runs),
            segments_erased: self.segments_erased.saturating_sub(earlier.segments_erased),
            ..*self
        }
    }
}

/// One segment's record, in provider memory.
struct SegRec {
    valid: AtomicU32,
    state: AtomicU32,
    seal: AtomicU64,
    /// The segment's rmap words; set in `new`, never changed until drop.
    rmap: AtomicPtr<AtomicU32>,
}

// SAFETY: all-zero is a FREE segment with no valid slots and no rmap table.
unsafe impl ZeroInit for SegRec {
    fn zeroed() -> Self {
        Self {
            valid: AtomicU32::new(0),
            state: AtomicU32::new(FREE),
            seal: AtomicU64::new(0),
            rmap: AtomicPtr::zeroed(),
        }
    }
}

/// State under the device lock.
struct Inner {
    policy: GcPolicy,
    /// The next segment a flush considers.
    head: u32,
    free: u32,
    /// Segments written so far.
    clock: u64,
    host_len: u32,
    gc_len: u32,
    victim: Option<u32>,
    /// GC-stream segments flushed and not sealed yet.
    gc_open: u32,
    host_pages: u64,
    gc_pages: u64,
    pad_pages: u64,
    gc_runs: u64,
    erased: u64,
}

impl Inner {
    fn len(&self, s: Stream) -> u32 {
        match s {
            Stream::Host => self.host_len,
            Stream::Gc => self.gc_len,
        }
    }
    fn len_mut(&mut self, s: Stream) -> &mut u32 {
        match s {
            Stream::Host => &mut self.host_len,
            Stream::Gc => &mut self.gc_len,
        }
    }
}

/// A flash log device. See the module documentation for the protocol.
///
/// ```
/// # #[cfg(feature = "std")] {
/// use vswap_alloc::{Flush, LogConfig, LogDevice, StdProvider, Stream};
/// let dev = LogDevice::new(LogConfig::new(8, 2), StdProvider::new()).unwrap();
/// dev.stage(7).unwrap();
/// dev.stage(9).unwrap();
/// let f = dev.flush(Stream::Host, Flush::Now).unwrap().unwrap();
/// let pairs: Vec<(u32, u64)> = dev.live(f.segment()).unwrap().collect();
/// assert_eq!(pairs, [(7, 0), (9, 1)]); // the host writes the segment here
/// dev.seal(f.segment()).unwrap();
/// assert_eq!(dev.invalidate(1), Ok(9));
/// assert_eq!(dev.stats().write_amplification(), Some(2.0)); // half padding
/// # }
/// ```
pub struct LogDevice<P: Provider> {
    provider: P,
    cfg: LogConfig,
    shift: u32,
    seg_slots: u32,
    slots: u64,
    segs: NonNull<SegRec>,
    /// Two staging buffers of `seg_slots` owners: host, then GC.
    stage: NonNull<AtomicU32>,
    inner: Mutex<Inner>,
    mem: u64,
}

// SAFETY: all shared state is reached through atomics or the device lock; the
// raw pointers point at provider memory owned by the device.
unsafe impl<P: Provider + Send> Send for LogDevice<P> {}
// SAFETY: as above; `P: Provider` is `Sync`.
unsafe impl<P: Provider> Sync for LogDevice<P> {}

/// The live `(owner, offset)` pairs of one segment, from [`LogDevice::live`].
/// A snapshot word by word: entries invalidated during the walk may or may not
/// appear.
pub struct Live<'a> {
    words: core::slice::Iter<'a, AtomicU32>,
    next: u64,
}

impl Iterator for Live<'_> {
    type Item = (u32, u64);
    fn next(&mut self) -> Option<(u32, u64)> {
        for w in self.words.by_ref() {
            let off = self.next;
            self.next += 1;
            let owner = w.load(Ordering::Acquire);
            if owner != 0 {
                return Some((owner, off));
            }
        }
        None
    }
}

impl<P: Provider> LogDevice<P> {
    /// A new device with every segment free. Its tables come from `provider`:
    /// one segment table, one rmap table per segment, and the two staging
    /// buffers. On failure everything allocated so far is given back.
    pub fn new(cfg: LogConfig, provider: P) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.segments as usize;
        let s = cfg.segment_slots() as usize;
        let segs = alloc_table::<SegRec, P>(&provider, n, Ctx::MaySleep)?;
        let stage = match alloc_table::<AtomicU32, P>(&provider, 2 * s, Ctx::MaySleep) {
            Ok(t) => t,
            Err(e) => {
                // SAFETY: `segs` is ours, unused, and has no rmap tables yet.
                unsafe { free_table(&provider, segs, n) };
                return Err(e);
            }
        };
        let dev = Self {
            provider,
            cfg,
            shift: cfg.seg_shift,
            seg_slots: cfg.segment_slots(),
            slots: cfg.slots(),
            segs,
            stage,
            inner: Mutex::new(Inner {
                policy: cfg.policy,
                head: 0,
                free: cfg.segments,
                clock: 0,
                host_len: 0,
                gc_len: 0,
                victim: None,
                gc_open: 0,
                host_pages: 0,
                gc_pages: 0,
                pad_pages: 0,
                gc_runs: 0,
                erased: 0,
            }),
            mem: (n * core::mem::size_of::<SegRec>()
                + (2 + n) * s * core::mem::size_of::<AtomicU32>()) as u64,
        };
        for rec in dev.segs() {
            // On failure `dev` is dropped, which frees the tables made so far
            // (a null rmap pointer is skipped).
            let t = alloc_table::<AtomicU32, P>(&dev.provider, s, Ctx::MaySleep)?;
            rec.rmap.store(t.as_ptr(), Ordering::Release);
        }
        Ok(dev)
    }

    /// The configuration (its `policy` is the initial one).
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// The memory provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// Bytes of provider memory the device holds (segment records, rmap,
    /// staging buffers): 4 bytes per physical slot plus
    /// `24 * segments + 8 * segment_slots`.
    pub fn memory_bytes(&self) -> u64 {
        self.mem
    }

    /// Number of segments.
    pub fn segments(&self) -> u32 {
        self.cfg.segments
    }

    /// Slots per segment.
    pub fn segment_slots(&self) -> u32 {
        self.seg_slots
    }

    /// Physical slots.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// The GC victim policy now.
    pub fn policy(&self) -> GcPolicy {
        self.inner.lock().policy
    }

    /// Change the GC victim policy (takes effect at the next `gc_begin`).
    pub fn set_policy(&self, policy: GcPolicy) {
        self.inner.lock().policy = policy;
    }

    fn segs(&self) -> &[SegRec] {
        // SAFETY: the table holds `segments` initialised records for the
        // device's whole life.
        unsafe { core::slice::from_raw_parts(self.segs.as_ptr(), self.cfg.segments as usize) }
    }

    fn seg(&self, seg: u32) -> Option<&SegRec> {
        self.segs().get(seg as usize)
    }

    fn rmap(&self, rec: &SegRec) -> &[AtomicU32] {
        let p = rec.rmap.load(Ordering::Acquire);
        if p.is_null() {
            return &[];
        }
        // SAFETY: a set rmap pointer is a table of `seg_slots` initialised
        // words that lives until the device is dropped.
        unsafe { core::slice::from_raw_parts(p, self.seg_slots as usize) }
    }

    fn stage_buf(&self, s: Stream) -> &[AtomicU32] {
        let n = self.seg_slots as usize;
        let at = match s {
            Stream::Host => 0,
            Stream::Gc => n,
        };
        // SAFETY: the staging table holds `2 * seg_slots` initialised words
        // for the device's whole life; `at + n` is within it.
        unsafe { core::slice::from_raw_parts(self.stage.as_ptr().add(at), n) }
    }

    /// The segment record and rmap word of `off`.
    fn locate(&self, off: u64) -> Result<(&SegRec, &AtomicU32)> {
        if off >= self.slots {
            return Err(Error::OutOfRange);
        }
        let rec = self
            .seg((off >> self.shift) as u32)
            .ok_or(Error::OutOfRange)?;
        let i = (off & (u64::from(self.seg_slots) - 1)) as usize;
        let w = self.rmap(rec).get(i).ok_or(Error::OutOfRange)?;
        Ok((rec, w))
    }

    /// Release physical slot `off` (the engine freed or moved its owner):
    /// clears its reverse-map word and drops its segment's valid count.
    /// Lock-free. Returns the owner the slot held.
    ///
    /// Errors: [`Error::OutOfRange`] for an offset outside the device,
    /// [`Error::NotAllocated`] for a slot holding no live data (a double
    /// free); neither changes anything.
    pub fn invalidate(&self, off: u64) -> Result<u32> {
        let (rec, word) = self.locate(off)?;
        // Swapping 0 into a word that holds 0 changes nothing.
        let owner = word.swap(0, Ordering::AcqRel);
        if owner == 0 {
            return Err(Error::NotAllocated);
        }
        rec.valid.fetch_sub(1, Ordering::Release);
        Ok(owner)
    }

    /// The owner whose data is at `off` (`None`: no live data).
    pub fn owner(&self, off: u64) -> Result<Option<u32>> {
        let (_, w) = self.locate(off)?;
        let o = w.load(Ordering::Acquire);
        Ok((o != 0).then_some(o))
    }

    /// A snapshot of segment `seg`.
    pub fn segment(&self, seg: u32) -> Result<SegmentInfo> {
        let rec = self.seg(seg).ok_or(Error::OutOfRange)?;
        Ok(SegmentInfo {
            state: SegState::decode(rec.state.load(Ordering::Acquire)),
            valid: rec.valid.load(Ordering::Acquire),
            seal_time: rec.seal.load(Ordering::Relaxed),
        })
    }

    /// The live `(owner, offset)` pairs of segment `seg`, in offset order.
    pub fn live(&self, seg: u32) -> Result<Live<'_>> {
        let rec = self.seg(seg).ok_or(Error::OutOfRange)?;
        Ok(Live {
            words: self.rmap(rec).iter(),
            next: u64::from(seg) << self.shift,
        })
    }

    /// Owners staged now in stream `s`.
    pub fn staged(&self, s: Stream) -> u32 {
        self.inner.lock().len(s)
    }

    /// Free segments now (segments whose data all died but that no slow path
    /// has erased yet are not counted; see [`reclaim`](Self::reclaim)).
    pub fn free_segments(&self) -> u32 {
        self.inner.lock().free
    }

    fn stage_in(&self, s: Stream, owner: u32) -> Result<u32> {
        if owner == 0 {
            return Err(Error::OutOfRange);
        }
        let mut g = self.inner.lock();
        let len = g.len(s);
        let slot = self.stage_buf(s).get(len as usize).ok_or(Error::Busy)?;
        slot.store(owner, Ordering::Relaxed);
        *g.len_mut(s) = len + 1;
        Ok(len + 1)
    }

    /// Stage `owner` (a virtual slot, not 0) for writing: it gets an offset at
    /// the next flush of the host stream. Returns the number staged; when it
    /// reaches [`segment_slots`](Self::segment_slots), flush.
    ///
    /// Errors: [`Error::OutOfRange`] for owner 0; [`Error::Busy`] when a whole
    /// segment is staged already (flush first).
    pub fn stage(&self, owner: u32) -> Result<u32> {
        self.stage_in(Stream::Host, owner)
    }

    /// Stage `owner` in the GC stream (a relocation); as [`stage`](Self::stage).
    pub fn gc_stage(&self, owner: u32) -> Result<u32> {
        self.stage_in(Stream::Gc, owner)
    }

    /// Take a staged `owner` out of stream `s` before its flush (its slot was
    /// freed). Later owners keep their order.
    ///
    /// Errors: [`Error::OutOfRange`] for owner 0, [`Error::NotAllocated`] if
    /// it is not staged there.
    pub fn cancel(&self, s: Stream, owner: u32) -> Result<()> {
        if owner == 0 {
            return Err(Error::OutOfRange);
        }
        let mut g = self.inner.lock();
        let len = g.len(s) as usize;
        let buf = self.stage_buf(s).get(..len).unwrap_or(&[]);
        let pos = buf
            .iter()
            .position(|w| w.load(Ordering::Relaxed) == owner)
            .ok_or(Error::NotAllocated)?;
        for pair in buf.get(pos..).unwrap_or(&[]).windows(2) {
            if let [a, b] = pair {
                a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        *g.len_mut(s) -= 1;
        Ok(())
    }

    /// Erase `rec` if it is sealed or draining and holds no live data. Lock
    /// held.
    fn try_erase(&self, g: &mut Inner, rec: &SegRec) -> bool {
        let st = rec.state.load(Ordering::Relaxed);
        if (st == SEALED || st == DRAINING) && rec.valid.load(Ordering::Acquire) == 0 {
            rec.seal.store(0, Ordering::Relaxed);
            rec.state.store(FREE, Ordering::Release);
            g.free += 1;
            g.erased += 1;
            return true;
        }
        false
    }

    fn reclaim_locked(&self, g: &mut Inner) -> u32 {
        // With no relocation staged or in flight, every move out of a
        // draining victim has committed: what is still live there was skipped
        // (its owner was locked by someone else), and the victim is an
        // ordinary sealed segment again.
        let idle = g.gc_len == 0 && g.gc_open == 0;
        let mut n = 0;
        for rec in self.segs() {
            if self.try_erase(g, rec) {
                n += 1;
            } else if idle && rec.state.load(Ordering::Relaxed) == DRAINING {
                rec.state.store(SEALED, Ordering::Release);
            }
        }
        n
    }

    /// Erase every sealed or draining segment whose data all died. The slow
    /// paths do this themselves when they need space; returns the number
    /// erased.
    pub fn reclaim(&self) -> u32 {
        let mut g = self.inner.lock();
        self.reclaim_locked(&mut g)
    }

    /// Write one segment from stream `s`: its staged owners get the offsets
    /// `base .. base + len` in staging order, the rest of the segment is
    /// padding. `Ok(None)` when nothing is staged, or with [`Flush::Full`]
    /// when less than a segment is. The segment is the first free one at or
    /// after the write head (wrapping), and is `OPEN` until
    /// [`seal`](Self::seal).
    ///
    /// Errors: [`Error::NoSpace`] when no free segment is left (for the host
    /// stream: when no more than `reserve` are; run GC). Nothing changes then.
    pub fn flush(&self, s: Stream, mode: Flush) -> Result<Option<Flushed>> {
        let mut g = self.inner.lock();
        let len = g.len(s);
        if len == 0 || (mode == Flush::Full && len < self.seg_slots) {
            return Ok(None);
        }
        let need = match s {
            Stream::Host => self.cfg.reserve + 1,
            Stream::Gc => 1,
        };
        if g.free < need {
            self.reclaim_locked(&mut g);
            if g.free < need {
                return Err(Error::NoSpace);
            }
        }
        let n = self.cfg.segments;
        let (seg, rec) = (0..n)
            .map(|i| (g.head + i) % n)
            .find_map(|seg| {
                self.seg(seg)
                    .filter(|r| r.state.load(Ordering::Relaxed) == FREE)
                    .map(|r| (seg, r))
            })
            .ok_or(Error::NoSpace)?;
        let rmap = self.rmap(rec);
        for (dst, src) in rmap.iter().zip(self.stage_buf(s).iter().take(len as usize)) {
            dst.store(src.load(Ordering::Relaxed), Ordering::Release);
        }
        rec.valid.store(len, Ordering::Release);
        rec.seal.store(g.clock, Ordering::Relaxed);
        rec.state.store(
            match s {
                Stream::Host => OPEN,
                Stream::Gc => OPEN_GC,
            },
            Ordering::Release,
        );
        g.head = (seg + 1) % n;
        g.free -= 1;
        g.clock += 1;
        *g.len_mut(s) = 0;
        let padding = self.seg_slots - len;
        g.pad_pages += u64::from(padding);
        match s {
            Stream::Host => g.host_pages += u64::from(len),
            Stream::Gc => {
                g.gc_pages += u64::from(len);
                g.gc_open += 1;
            }
        }
        Ok(Some(Flushed {
            seg,
            base: u64::from(seg) << self.shift,
            len,
            padding,
            stream: s,
        }))
    }

    /// The host finished writing flushed segment `seg` (and committed its
    /// owners): it becomes `SEALED`, a GC candidate; erased at once if every
    /// slot of it was invalidated already.
    ///
    /// Errors: [`Error::OutOfRange`], or [`Error::WrongState`] if the segment
    /// is not `OPEN`.
    pub fn seal(&self, seg: u32) -> Result<()> {
        let rec = self.seg(seg).ok_or(Error::OutOfRange)?;
        let mut g = self.inner.lock();
        match rec.state.load(Ordering::Relaxed) {
            OPEN => {}
            OPEN_GC => g.gc_open -= 1,
            _ => return Err(Error::WrongState),
        }
        rec.state.store(SEALED, Ordering::Release);
        self.try_erase(&mut g, rec);
        Ok(())
    }

    /// Pick a GC victim by the current policy and make it `COLLECTING`;
    /// segments with no live data are erased on the way. `Ok(None)` when no
    /// sealed segment has a free slot to gain (or, with no free segment left,
    /// none fits in the GC stream without a flush).
    ///
    /// Errors: [`Error::Busy`] while another victim is being collected.
    pub fn gc_begin(&self) -> Result<Option<Victim>> {
        let mut g = self.inner.lock();
        if g.victim.is_some() {
            return Err(Error::Busy);
        }
        self.reclaim_locked(&mut g);
        let s = u64::from(self.seg_slots);
        let clock = g.clock;
        // With no free segment left, only a victim whose entries fit in the
        // GC stream without a flush can be collected.
        let most = if g.free == 0 {
            s.saturating_sub(u64::from(g.gc_len) + 1)
        } else {
            s - 1
        };
        // (segment, valid, seal time, score numerator, score denominator)
        let mut best: Option<(u32, u32, u64, u128, u128)> = None;
        for (seg, rec) in (0u32..).zip(self.segs()) {
            if rec.state.load(Ordering::Relaxed) != SEALED {
                continue;
            }
            let v = rec.valid.load(Ordering::Acquire);
            if u64::from(v) > most {
                continue;
            }
            let seal = rec.seal.load(Ordering::Relaxed);
            // Cost-benefit: (1-u)*age/(1+u) = (S-v)*age/(S+v), compared exactly.
            let age = u128::from(clock.saturating_sub(seal)) + 1;
            let num = u128::from(s - u64::from(v)) * age;
            let den = u128::from(s + u64::from(v));
            let better = match (g.policy, best) {
                (_, None) => true,
                (GcPolicy::Greedy, Some((_, bv, bs, _, _))) => v < bv || (v == bv && seal < bs),
                (GcPolicy::CostBenefit, Some((_, _, _, bn, bd))) => num * bd > bn * den,
            };
            if better {
                best = Some((seg, v, seal, num, den));
            }
        }
        let Some((seg, valid, _, _, _)) = best else {
            return Ok(None);
        };
        let Some(rec) = self.seg(seg) else {
            return Ok(None);
        };
        rec.state.store(COLLECTING, Ordering::Release);
        g.victim = Some(seg);
        g.gc_runs += 1;
        Ok(Some(Victim { seg, valid }))
    }

    fn take_victim(&self, g: &mut Inner, v: &Victim) -> Result<&SegRec> {
        let rec = self.seg(v.seg).ok_or(Error::OutOfRange)?;
        if g.victim != Some(v.seg) || rec.state.load(Ordering::Relaxed) != COLLECTING {
            return Err(Error::WrongState);
        }
        g.victim = None;
        Ok(rec)
    }

    /// The victim was walked and every live entry staged again: it becomes
    /// `DRAINING`, and free once the last move out of it commits (at once if
    /// none is left).
    ///
    /// Errors: [`Error::WrongState`] if `v` is not the current victim.
    pub fn gc_end(&self, v: Victim) -> Result<()> {
        let mut g = self.inner.lock();
        let rec = self.take_victim(&mut g, &v)?;
        rec.state.store(DRAINING, Ordering::Release);
        self.try_erase(&mut g, rec);
        Ok(())
    }

    /// Give up on the victim: it is `SEALED` again (entries already staged
    /// still move; their commits invalidate their old offsets as usual, and
    /// use reserve space until the victim is collected again).
    ///
    /// Errors: [`Error::WrongState`] if `v` is not the current victim.
    pub fn gc_abort(&self, v: Victim) -> Result<()> {
        let mut g = self.inner.lock();
        let rec = self.take_victim(&mut g, &v)?;
        rec.state.store(SEALED, Ordering::Release);
        self.try_erase(&mut g, rec);
        Ok(())
    }

    /// Flush the GC stream (`mode`), hand the segment to `f`, seal it.
    fn gc_flush_with<F: FnMut(GcStep<'_>) -> bool>(&self, mode: Flush, f: &mut F) -> Result<bool> {
        match self.flush(Stream::Gc, mode)? {
            Some(fl) => {
                f(GcStep::Write(&fl));
                self.seal(fl.seg)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// One whole GC pass, for hosts that relocate synchronously (and tests):
    /// pick a victim, ask `f` to [`Check`](GcStep::Check) each live entry,
    /// stage the claimed ones, and whenever the GC stream fills, flush it and
    /// ask `f` to [`Write`](GcStep::Write) the segment, then seal it. Entries
    /// left staged wait for the next GC flush; when there is no victim to
    /// pick, the pass flushes them (padded) instead, so that every draining
    /// victim can become free.
    ///
    /// Errors: those of [`gc_begin`](Self::gc_begin) and
    /// [`flush`](Self::flush) ([`Error::NoSpace`]: no free segment left for
    /// GC to write into). On an error the victim is aborted; entries `f`
    /// claimed but the pass did not stage are the caller's to unlock.
    pub fn gc_pass<F: FnMut(GcStep<'_>) -> bool>(&self, mut f: F) -> Result<GcPass> {
        let mut pass = GcPass::default();
        let Some(v) = self.gc_begin()? else {
            pass.flushed += u32::from(self.gc_flush_with(Flush::Now, &mut f)?);
            self.reclaim();
            return Ok(pass);
        };
        pass.victim = Some(v.seg);
        let r = self.gc_walk(&v, &mut f, &mut pass);
        match r {
            Ok(()) => self.gc_end(v)?,
            Err(e) => {
                // The victim is ours; aborting it cannot fail.
                let _ = self.gc_abort(v);
                return Err(e);
            }
        }
        Ok(pass)
    }

    fn gc_walk<F: FnMut(GcStep<'_>) -> bool>(
        &self,
        v: &Victim,
        f: &mut F,
        pass: &mut GcPass,
    ) -> Result<()> {
        for (owner, off) in self.live(v.seg)? {
            pass.live += 1;
            if !f(GcStep::Check { owner, off }) {
                continue;
            }
            loop {
                match self.gc_stage(owner) {
                    Ok(n) => {
                        pass.staged += 1;
                        if n == self.seg_slots {
                            pass.flushed += u32::from(self.gc_flush_with(Flush::Full, f)?);
                        }
                        break;
                    }
                    // Full (staged by someone else): flush and try again.
                    Err(Error::Busy) => {
                        if !self.gc_flush_with(Flush::Full, f)? {
                            return Err(Error::Busy);
                        }
                        pass.flushed += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> LogStats {
        let g = self.inner.lock();
        let page = u64::from(self.cfg.page_size);
        let live_slots = self
            .segs()
            .iter()
            .map(|r| u64::from(r.valid.load(Ordering::Relaxed)))
            .sum();
        LogStats {
            host_bytes: g.host_pages * page,
            device_bytes: g.clock * u64::from(self.seg_slots) * page,
            gc_bytes: g.gc_pages * page,
            pad_bytes: g.pad_pages * page,
            segments_written: g.clock,
            gc_runs: g.gc_runs,
            segments_erased: g.erased,
            free_segments: g.free,
            live_slots,
            staged_host: g.host_len,
            staged_gc: g.gc_len,
        }
    }

    /// Device bytes written per host byte so far (`None` before any host
    /// page was flushed).
    pub fn write_amplification(&self) -> Option<f64> {
        self.stats().write_amplification()
    }
}

impl<P: Provider> Drop for LogDevice<P> {
    fn drop(&mut self) {
        let s = self.seg_slots as usize;
        for rec in self.segs() {
            if let Some(t) = NonNull::new(rec.rmap.swap(ptr::null_mut(), Ordering::AcqRel)) {
                // SAFETY: the table was made in `new` with `s` words; we own
                // the device exclusively (`&mut self`).
                unsafe { free_table(&self.provider, t, s) };
            }
        }
        // SAFETY: as above; both tables were made in `new` with these lengths.
        unsafe {
            free_table(&self.provider, self.stage, 2 * s);
            free_table(&self.provider, self.segs, self.cfg.segments as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashMap;
    use std::vec::Vec;

    use super::*;
    use crate::StdProvider;

    fn cfg(segments: u32, seg_shift: u32) -> LogConfig {
        LogConfig {
            page_size: 64,
            ..LogConfig::new(segments, seg_shift)
        }
    }

    /// Stage `owners` in the host stream, flush them (padded) and seal.
    /// Returns the segment written.
    fn write(dev: &LogDevice<&StdProvider>, owners: &[u32]) -> u32 {
        for &o in owners {
            dev.stage(o).unwrap();
        }
        let f = dev.flush(Stream::Host, Flush::Now).unwrap().unwrap();
        dev.seal(f.segment()).unwrap();
        f.segment()
    }

    fn state(dev: &LogDevice<&StdProvider>, seg: u32) -> SegState {
        dev.segment(seg).unwrap().state
    }

    #[test]
    fn config_bounds() {
        assert!(LogConfig::new(4, 1).validate().is_ok());
        assert!(LogConfig::new(4, MAX_SEG_SHIFT).validate().is_ok());
        let bad = [
            LogConfig::new(4, 0),
            LogConfig::new(4, MAX_SEG_SHIFT + 1),
            LogConfig::new(3, 2), // reserve 2 needs 4 segments
            LogConfig {
                reserve: 0,
                ..LogConfig::new(4, 2)
            },
            LogConfig {
                page_size: 0,
                ..LogConfig::new(4, 2)
            },
            LogConfig {
                page_size: 96,
                ..LogConfig::new(4, 2)
            },
            LogConfig {
                page_size: MAX_PAGE_SIZE * 2,
                ..LogConfig::new(4, 2)
            },
            LogConfig::new(1 << 17, MAX_SEG_SHIFT), // 2^33 slots
        ];
        let p = StdProvider::new();
        for c in bad {
            assert_eq!(c.validate(), Err(Error::BadConfig), "{c:?}");
            assert!(matches!(LogDevice::new(c, &p), Err(Error::BadConfig)));
        }
        assert_eq!(p.bytes_in_use(), 0);
        assert_eq!(LogConfig::new(1 << 16, MAX_SEG_SHIFT).validate(), Ok(()));
    }

    #[test]
    fn memory_comes_from_the_provider_and_goes_back() {
        let p = StdProvider::new();
        let dev = LogDevice::new(cfg(6, 3), &p).unwrap();
        assert_eq!(dev.memory_bytes(), p.bytes_in_use());
        assert_eq!(dev.memory_bytes(), 6 * 24 + (2 + 6) * 8 * 4);
        drop(dev);
        assert_eq!(p.bytes_in_use(), 0);
        // Every allocation of `new` failing in turn leaks nothing.
        for k in 0..8 {
            p.fail_after(Some(k));
            assert!(matches!(LogDevice::new(cfg(6, 3), &p), Err(Error::NoMem)));
            assert_eq!(p.bytes_in_use(), 0, "failure after {k} allocations");
        }
        p.fail_after(Some(8));
        assert!(LogDevice::new(cfg(6, 3), &p).is_ok());
        assert_eq!(p.bytes_in_use(), 0);
    }

    #[test]
    fn stage_flush_seal() {
        let p = StdProvider::new();
        let dev = LogDevice::new(cfg(4, 2), &p).unwrap();
        assert_eq!(dev.stage(10), Ok(1));
        assert_eq!(dev.stage(11), Ok(2));
        assert_eq!(dev.stage(12), Ok(3));
        assert_eq!(dev.staged(Stream::Host), 3);
        // Less than a segment: a full flush writes nothing.
        assert_eq!(dev.flush(Stream::Host, Flush::Full), Ok(None));
        assert_eq!(dev.flush(Stream::Gc, Flush::Now), Ok(None));
        assert_eq!(dev.write_amplification(), None);
        let f = dev.flush(Stream::Host, Flush::Now).unwrap().unwrap();
        assert_eq!((f.segment(), f.base(), f.len(), f.padding()), (0, 0, 3, 1));
        assert_eq!(f.stream(), Stream::Host);
        assert!(!f.is_empty());
        assert_eq!(dev.staged(Stream::Host), 0);
        let pairs: Vec<_> = dev.live(0).unwrap().collect();
        assert_eq!(pairs, [(10, 0), (11, 1), (12, 2)]);
        assert_eq!(dev.owner(1), Ok(Some(11)));
        assert_eq!(dev.owner(3), Ok(None));
        let info = dev.segment(0).unwrap();
        assert_eq!((info.state, info.valid), (SegState::Open, 3));
        dev.seal(0).unwrap();
        assert_eq!(state(&dev, 0), SegState::Sealed);
        // A full segment is flushed by a full flush.
        for o in 20..24 {
            dev.stage(o).unwrap();
        }
        assert_eq!(dev.stage(99), Err(Error::Busy));
        let g = dev.flush(Stream::Host, Flush::Full).unwrap().unwrap();
        assert_eq!((g.segment(), g.base(), g.len(), g.padding()), (1, 4, 4, 0));
        let st = dev.stats();
        assert_eq!(st.host_bytes, 7 * 64);
        assert_eq!(st.device_bytes, 8 * 64);
        assert_eq!(st.pad_bytes, 64);
        assert_eq!(st.segments_written, 2);
        assert_eq!(st.live_slots, 7);
        assert_eq!(st.free_segments, 2);
        assert_eq!(dev.write_amplification(), Some(8.0 / 7.0));
    }

    #[test]
    fn stage_and_cancel_errors() {
        let p = StdProvider::new();
        let dev = LogDevice::new(cfg(4, 2), &p).unwrap();
        assert_eq!(dev.stage(0), Err(Error::OutOfRange));
        assert_eq!(dev.gc_stage(0), Err(Error::OutOfRange));
        assert_eq!(dev.cancel(Stream::Host, 0), Err(Error::OutOfRange));
        assert_eq!(dev.cancel(Stream::Host, 5), Err(Error::NotAllocated));
        for o in [5, 6, 7] {
            dev.stage(o).unwrap();
        }
        // Staged in the host stream, not the GC stream.
        assert_eq!(dev.cancel(Stream::Gc, 6), Err(Error::NotAllocated));
        assert_eq!(dev.cancel(Stream::Host, 6), Ok(()));
        assert_eq!(dev.cancel(Stream::Host, 6), Err(Error::NotAllocated));
        assert_eq!(dev.staged(Stream::Host), 2);
        let f = dev.flush(Stream::Host, Flush::Now).unwrap().unwrap();
        let pairs: Vec<_> = dev.live(f.segment()).unwrap().collect();
        assert_eq!(pairs, [(5, 0), (7, 1)], "order kept, no hole");
        assert_eq!(f.padding(), 2);
        // Cancelling the last and the only entry.
        dev.gc_stage(8).unwrap();
        dev.gc_stage(9).unwrap();
        dev.cancel(Stream::Gc, 9).unwrap();
        dev.cancel(Stream::Gc, 8).unwrap();
        assert_eq!(dev.flush(Stream::Gc, Flush::Now), Ok(None));
        assert_eq!(
            dev.stats().host_bytes,
            2 * 64,
            "cancelled pages are not written"
        );
    }

    #[test]
    fn invalidate_and_double_free() {
        let p = StdProvider::new();
        let dev = LogDevice::new(cfg(4, 2), &p).unwrap();
        write(&dev, &[1, 2, 3, 4]);
        assert_eq!(dev.invalidate(16), Err(Error::OutOfRange));
        assert_eq!(dev.invalidate(u64::MAX), Err(Error::OutOfRange));
        assert_eq!(dev.owner(16), Err(Error::OutOfRange));
        // A slot in a free segment holds nothing.
        assert_eq!(dev.invalidate(5), Err(Error::NotAllocated));
        assert_eq!(dev.invalidate(2), Ok(3));
        assert_eq!(dev.segment(0).unwrap().valid, 3);
        // Double free: an error, nothing changes.
        assert_eq!(dev.invalidate(2), Err(Error::NotAllocated));
        assert_eq!(dev.segment(0).unwrap().valid, 3);
        assert_eq!(dev.owner(3), Ok(Some(4)));
        for off in [0, 1, 3] {
            dev.invalidate(off).unwrap();
        }
        // All dead: erased by the next slow path.
        assert_eq!(dev.free_segments(), 3);
        assert_eq!(state(&dev, 0), SegState::Sealed);
        assert_eq!(dev.reclaim(), 1);
        assert_eq!(state(&dev, 0), SegState::Free);
        assert_eq!(dev.free_segments(), 4);
        assert_eq!(dev.stats().segments_erased, 1);
        assert_eq!(dev.invalidate(0), Err(Error::NotAllocated));
    }

    #[test]
    fn seal_errors_and_dead_open_segments() {
        let p = StdProvider::new();
        let dev = LogDevice::new(cfg(4, 2), &p).unwrap();
        assert_eq!(dev.seal(0), Err(Error::WrongState));
        assert_eq!(dev.seal(4), Err(Error::OutOfRange));
        assert!(matches!(dev.segment(4), Err(Error::OutOfRange)));
        assert!(dev.live(4).is_err());
        dev.stage(1).unwrap();
        let f = dev.flush(Stream::Host, Flush::Now).unwrap().unwrap();
        // The host's commit lost (the owner died): it invalidates the new slot.
        dev.invalidate(f.base()).unwrap();
        // An open segment is never erased...
        assert_eq!(dev.reclaim(), 0);
        assert_eq!(state(&dev, 0), SegState::Open);
        // ...until it is sealed.
        dev.seal(0).unwrap();
        assert_eq!(state(&dev, 0), SegState::Free);
        assert_eq!(dev.seal(0), Err(Error::WrongState));
    }

    #[test]
    fn flushes_are_sequential_and_wrap_through_free_segments() {
        let p = StdProvider::new();
        let dev = LogDevice::new(
            LogConfig {
                reserve: 1,
                ..cfg(5, 1)
            },
            &p,
        )
        .unwrap();
        let mut order = Vec::new();
        for i in 0..4u32 {
            order.push(write(&dev, &[2 * i + 1, 2 * i + 2]));
        }
        assert_eq!(order, [0, 1, 2, 3]);
        // Only the reserve is left for the host: no space.
        dev.stage(100).unwrap();
        assert_eq!(dev.flush(Stream::Host, Flush::Now), Err(Error::NoSpace));
        assert_eq!(
            dev.staged(Stream::Host),
            1,
            "a failed flush keeps the stage"
        );
        // Free segments 1 and 3 (kill their data): the head (at 4) wraps.
        for off in [2, 3, 6, 7] {
            dev.invalidate(off).unwrap();
        }
        let a = dev.flush(Stream::Host, Flush::Now).unwrap().unwrap();
        dev.seal(a.segment()).unwrap();
        let b = write(&dev, &[101]);
        // Segment 0 is not free: skipped.
        assert_eq!((a.segment(), b), (4, 1));
        assert_eq!(dev.flush(Stream::Host, Flush::Now), Ok(None));
        dev.stage(103).unwrap();
        assert_eq!(dev.flush(Stream::Host, Flush::Now), Err(Error::NoSpace));
        // GC may take the last (reserve) segment, the next one in order.
        dev.gc_stage(104).unwrap();
        let g = dev.flush(Stream::Gc, Flush::Now).unwrap().unwrap();
        assert_eq!(g.segment(), 3);
        assert_eq!(dev.free_segments(), 0);
        dev.gc_stage(105).unwrap();
        assert_eq!(dev.flush(Stream::Gc, Flush::Now), Err(Error::NoSpace));
    }

    #[test]
    fn greedy_picks_fewest_valid_and_never_a_full_segment() {
        let p = StdProvider::new();
        let dev = LogDevice::new(
            LogConfig {
                policy: GcPolicy::Greedy,
                ..cfg(6, 2)
            },
            &p,
        )
        .unwrap();
        assert_eq!(dev.gc_begin(), Ok(None));
        write(&dev, &[1, 2, 3, 4]); // seg 0: 2 valid after the kills below
        write(&dev, &[5, 6, 7, 8]); // seg 1: 1 valid
        write(&dev, &[9, 10, 11, 12]); // seg 2: full
        for off in [0, 1, 4, 5, 6] {
            dev.invalidate(off).unwrap();
        }
        let v = dev.gc_begin().unwrap().unwrap();
        assert_eq!((v.segment(), v.valid_at_pick()), (1, 1));
        assert_eq!(state(&dev, 1), SegState::Collecting);
        assert_eq!(dev.gc_begin(), Err(Error::Busy));
        // A victim that is not the current one.
        assert_eq!(
            dev.gc_end(Victim { seg: 0, valid: 0 }),
            Err(Error::WrongState)
        );
        assert_eq!(
            dev.gc_abort(Victim { seg: 9, valid: 0 }),
            Err(Error::OutOfRange)
        );
        dev.gc_abort(v).unwrap();
        assert_eq!(state(&dev, 1), SegState::Sealed);
        let v = dev.gc_begin().unwrap().unwrap();
        assert_eq!(v.segment(), 1);
        let live: Vec<_> = dev.live(1).unwrap().collect();
        assert_eq!(live, [(8, 7)]);
        dev.gc_stage(8).unwrap();
        dev.gc_end(v).unwrap();
        assert_eq!(state(&dev, 1), SegState::Draining);
        // Draining: not picked again; segment 0 is next.
        let w = dev.gc_begin().unwrap().unwrap();
        assert_eq!(w.segment(), 0);
        dev.gc_abort(w).unwrap();
        // The move commits: new offset written, old one invalidated.
        let f = dev.flush(Stream::Gc, Flush::Now).unwrap().unwrap();
        assert_eq!(
            dev.live(f.segment()).unwrap().collect::<Vec<_>>(),
            [(8, f.base())]
        );
        dev.seal(f.segment()).unwrap();
        assert_eq!(
            state(&dev, 1),
            SegState::Draining,
            "old location kept until commit"
        );
        dev.invalidate(7).unwrap();
        assert_eq!(dev.reclaim(), 1);
        assert_eq!(state(&dev, 1), SegState::Free);
        assert_eq!(dev.stats().gc_runs, 3);
        // Only full segments left (and the half-full GC one): the GC segment.
        for off in [2, 3] {
            dev.invalidate(off).unwrap();
        }
        let v = dev.gc_begin().unwrap().unwrap();
        assert_eq!(
            v.segment(),
            f.segment(),
            "segment 2 is full, never a victim"
        );
        dev.gc_end(v).unwrap();
    }

    #[test]
    fn gc_end_of_an_emptied_victim_erases_it() {
        let p = StdProvider::new();
        let dev = LogDevice::new(cfg(4, 2), &p).unwrap();
        write(&dev, &[1, 2, 3]);
        let v = dev.gc_begin().unwrap().unwrap();
        // Every owner freed during the walk: nothing to move.
        for off in 0..3 {
            dev.invalidate(off).unwrap();
        }
        assert_eq!(dev.reclaim(), 0, "a victim being walked is never erased");
        dev.gc_end(v).unwrap();
        assert_eq!(state(&dev, 0), SegState::Free);
        write(&dev, &[4]);
        let v = dev.gc_begin().unwrap().unwrap();
        dev.invalidate(4).unwrap();
        dev.gc_abort(v).unwrap();
        assert_eq!(state(&dev, 1), SegState::Free);
    }

    #[test]
    fn a_victim_with_skipped_entries_is_sealed_again_when_gc_is_idle() {
        let p = StdProvider::new();
        let dev = LogDevice::new(cfg(4, 2), &p).unwrap();
        write(&dev, &[1, 2, 3]);
        let v = dev.gc_begin().unwrap().unwrap();
        // Owner 1 moves; owners 2 and 3 are locked by someone else: skipped.
        dev.gc_stage(1).unwrap();
        dev.gc_end(v).unwrap();
        assert_eq!(state(&dev, 0), SegState::Draining);
        dev.reclaim();
        assert_eq!(state(&dev, 0), SegState::Draining, "a move is staged");
        let f = dev.flush(Stream::Gc, Flush::Now).unwrap().unwrap();
        dev.reclaim();
        assert_eq!(state(&dev, 0), SegState::Draining, "a move is in flight");
        // The move commits, then the GC segment is sealed.
        assert_eq!(dev.invalidate(0), Ok(1));
        dev.seal(f.segment()).unwrap();
        assert_eq!(dev.reclaim(), 0);
        let info = dev.segment(0).unwrap();
        assert_eq!((info.state, info.valid), (SegState::Sealed, 2));
        // A candidate again, and emptied as usual.
        dev.invalidate(1).unwrap();
        dev.set_policy(GcPolicy::Greedy);
        let v = dev.gc_begin().unwrap().unwrap();
        assert_eq!(v.segment(), 0);
        dev.gc_stage(3).unwrap();
        dev.gc_end(v).unwrap();
        let f = dev.flush(Stream::Gc, Flush::Now).unwrap().unwrap();
        dev.invalidate(2).unwrap();
        dev.seal(f.segment()).unwrap();
        assert_eq!(dev.reclaim(), 1);
        assert_eq!(state(&dev, 0), SegState::Free);
    }

    #[test]
    fn with_no_free_segment_only_a_victim_that_needs_no_flush_is_picked() {
        let p = StdProvider::new();
        let dev = LogDevice::new(
            LogConfig {
                reserve: 1,
                policy: GcPolicy::Greedy,
                ..cfg(4, 2)
            },
            &p,
        )
        .unwrap();
        write(&dev, &[1, 2, 3, 4]); // segment 0, full
        write(&dev, &[5, 6]); // segment 1
        write(&dev, &[7, 8]); // segment 2
        dev.gc_stage(50).unwrap();
        let f = dev.flush(Stream::Gc, Flush::Now).unwrap().unwrap();
        dev.seal(f.segment()).unwrap(); // segment 3: 1 valid
        assert_eq!(dev.free_segments(), 0);
        for o in [60, 61] {
            dev.gc_stage(o).unwrap();
        }
        // Two staged, two places left in the GC stream, no free segment: only
        // a victim with at most one live entry can be collected without a
        // flush. Segments 1 and 2 hold 2; segment 3 holds 1.
        let v = dev.gc_begin().unwrap().unwrap();
        assert_eq!((v.segment(), v.valid_at_pick()), (3, 1));
        dev.gc_abort(v).unwrap();
        dev.gc_stage(62).unwrap();
        assert_eq!(dev.gc_begin(), Ok(None), "one place left: nothing fits");
        // Segment 3 dies: erased, and with a free segment the emptiest older
        // victim can be collected again.
        dev.invalidate(f.base()).unwrap();
        let v = dev.gc_begin().unwrap().unwrap();
        assert_eq!((v.segment(), v.valid_at_pick()), (1, 2));
        assert_eq!(dev.free_segments(), 1);
        dev.gc_abort(v).unwrap();
    }

    #[test]
    fn cost_benefit_prefers_old_cold_segments() {
        let p = StdProvider::new();
        let dev = LogDevice::new(cfg(16, 2), &p).unwrap();
        // seg 0: old, 2 of 4 valid. Then 8 segments of churn; seg 9: young,
        // 1 of 4 valid.
        write(&dev, &[1, 2, 3, 4]);
        dev.invalidate(0).unwrap();
        dev.invalidate(1).unwrap();
        for i in 0..8u32 {
            write(&dev, &[100 + i]);
        }
        write(&dev, &[5, 6, 7, 8]);
        for off in [36, 37, 38] {
            dev.invalidate(off).unwrap();
        }
        // Clock 10. Segments 1..=9 hold 1 valid slot of 4 each (seal times
        // 1..=9); segment 0 holds 2 (seal time 0).
        // Greedy: fewest valid; the oldest of the tie is segment 1.
        dev.set_policy(GcPolicy::Greedy);
        assert_eq!(dev.policy(), GcPolicy::Greedy);
        let v = dev.gc_begin().unwrap().unwrap();
        assert_eq!((v.segment(), v.valid_at_pick()), (1, 1));
        dev.gc_abort(v).unwrap();
        // Cost-benefit, (S-v)*age/(S+v) with age = clock - seal + 1:
        // segment 0: 2*11/6 = 3.67; segment 1: 3*10/5 = 6. Segment 1.
        dev.set_policy(GcPolicy::CostBenefit);
        let v = dev.gc_begin().unwrap().unwrap();
        assert_eq!(v.segment(), 1);
        dev.gc_abort(v).unwrap();
        // One more dead slot in segment 0: 3*11/5 = 6.6 beats 6.
        dev.invalidate(2).unwrap();
        let v = dev.gc_begin().unwrap().unwrap();
        assert_eq!(v.segment(), 0);
        dev.gc_abort(v).unwrap();
        // Greedy: all tie at 1 valid; the oldest, segment 0.
        dev.set_policy(GcPolicy::Greedy);
        let v = dev.gc_begin().unwrap().unwrap();
        assert_eq!(v.segment(), 0);
        dev.gc_abort(v).unwrap();
    }

    #[test]
    fn gc_pass_relocates_and_frees_victims() {
        let p = StdProvider::new();
        let dev = LogDevice::new(
            LogConfig {
                reserve: 1,
                policy: GcPolicy::Greedy,
                ..cfg(5, 2)
            },
            &p,
        )
        .unwrap();
        // owner -> offset: the "map".
        let mut map: HashMap<u32, u64> = HashMap::new();
        let mut next = 1u32;
        for _ in 0..4 {
            let owners: Vec<u32> = (next..next + 4).collect();
            next += 4;
            let seg = write(&dev, &owners);
            for (o, off) in dev.live(seg).unwrap() {
                map.insert(o, off);
            }
        }
        // Kill 3 of 4 in segments 0..=2: 3 live entries to move.
        for seg in 0..3u64 {
            for i in 0..3 {
                let o = dev.invalidate(seg * 4 + i).unwrap();
                map.remove(&o);
            }
        }
        assert_eq!(dev.free_segments(), 1);
        let mut moved = 0;
        for _ in 0..4 {
            let r = dev.gc_pass(|step| match step {
                GcStep::Check { owner, off } => map.get(&owner) == Some(&off),
                GcStep::Write(f) => {
                    for (o, to) in dev.live(f.segment()).unwrap() {
                        let from = map.insert(o, to).unwrap();
                        assert_eq!(dev.invalidate(from), Ok(o));
                        moved += 1;
                    }
                    true
                }
            });
            r.unwrap();
        }
        assert_eq!(moved, 3);
        dev.reclaim();
        assert_eq!(dev.free_segments(), 3);
        for (&o, &off) in &map {
            assert_eq!(dev.owner(off), Ok(Some(o)));
        }
        assert_eq!(dev.stats().live_slots, map.len() as u64);
        let st = dev.stats();
        assert_eq!(st.gc_bytes, 3 * 64);
        assert_eq!(st.pad_bytes, 64);
    }

    #[test]
    fn stats_since() {
        let a = LogStats {
            host_bytes: 10,
            device_bytes: 30,
            free_segments: 5,
            ..LogStats::default()
        };
        let b = LogStats {
            host_bytes: 20,
            device_bytes: 50,
            free_segments: 2,
            ..LogStats::default()
        };
        let d = b.since(&a);
        assert_eq!((d.host_bytes, d.device_bytes, d.free_segments), (10, 20, 2));
        assert_eq!(d.write_amplification(), Some(2.0));
        assert_eq!(LogStats::default().write_amplification(), None);
    }

    /// Invalidations on two threads race flushes, seals and GC on a third:
    /// every valid count ends equal to its segment's rmap words set.
    #[test]
    fn invalidate_races_the_slow_paths() {
        let p = StdProvider::new();
        let dev = LogDevice::new(
            LogConfig {
                reserve: 1,
                ..cfg(8, 2)
            },
            &p,
        )
        .unwrap();
        let rounds = if cfg!(miri) { 6 } else { 2000 };
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let rx = std::sync::Mutex::new(rx);
        std::thread::scope(|s| {
            for _ in 0..2 {
                let (dev, rx) = (&dev, &rx);
                s.spawn(move || {
                    loop {
                        let off = rx.lock().unwrap().recv();
                        let Ok(off) = off else { break };
                        // Each offset is sent once: exactly one owner to clear.
                        assert!(dev.invalidate(off).is_ok());
                        assert_eq!(dev.invalidate(off), Err(Error::NotAllocated));
                    }
                });
            }
            let mut owner = 1u32;
            for _ in 0..rounds {
                for _ in 0..3 {
                    dev.stage(owner).unwrap();
                    owner += 1;
                }
                let f = loop {
                    match dev.flush(Stream::Host, Flush::Now) {
                        Ok(Some(f)) => break f,
                        Err(Error::NoSpace) => {
                            dev.reclaim();
                            std::thread::yield_now();
                        }
                        r => panic!("{r:?}"),
                    }
                };
                dev.seal(f.segment()).unwrap();
                for (_, off) in dev.live(f.segment()).unwrap() {
                    tx.send(off).unwrap();
                }
                if let Ok(Some(v)) = dev.gc_begin() {
                    // Everything dies by itself: nothing to move.
                    dev.gc_end(v).unwrap();
                }
            }
            drop(tx);
        });
        dev.reclaim();
        for seg in 0..8 {
            let info = dev.segment(seg).unwrap();
            assert_eq!(info.valid as usize, dev.live(seg).unwrap().count());
            assert_eq!(info.valid, 0);
            assert_eq!(info.state, SegState::Free);
        }
        assert_eq!(dev.free_segments(), 8);
    }
}

/// loom model of the lock-free invalidate racing the erase and reuse of its
/// segment. Run with
/// `CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg vswap_loom" cargo test -p vswap-alloc --lib --release logdev::loom_tests`.
#[cfg(all(test, vswap_loom))]
mod loom_tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::StdProvider;

    #[test]
    fn invalidate_races_erase_and_reuse() {
        loom::model(|| {
            let dev = loom::sync::Arc::new(
                LogDevice::new(
                    LogConfig {
                        reserve: 1,
                        ..LogConfig::new(3, 1)
                    },
                    StdProvider::new(),
                )
                .unwrap(),
            );
            let write = |owners: &[u32]| {
                for &o in owners {
                    dev.stage(o).unwrap();
                }
                let f = dev.flush(Stream::Host, Flush::Now).unwrap().unwrap();
                dev.seal(f.segment()).unwrap();
            };
            write(&[1, 2]); // segment 0
            write(&[3, 4]); // segment 1, full
            dev.invalidate(1).unwrap(); // owner 2 freed
            let v = dev.gc_begin().unwrap().unwrap();
            assert_eq!(v.segment(), 0);
            dev.gc_stage(1).unwrap();
            dev.gc_end(v).unwrap();
            let f = dev.flush(Stream::Gc, Flush::Now).unwrap().unwrap();
            assert_eq!(f.segment(), 2);
            dev.seal(2).unwrap();
            // Owner 1's move commits on another CPU: its old slot is released
            // while this CPU waits for a segment to reuse.
            let d = dev.clone();
            let t = loom::thread::spawn(move || assert_eq!(d.invalidate(0), Ok(1)));
            dev.gc_stage(9).unwrap();
            let f = loop {
                match dev.flush(Stream::Gc, Flush::Now) {
                    Ok(Some(f)) => break f,
                    Err(Error::NoSpace) => crate::sync::spin_hint(),
                    r => panic!("{r:?}"),
                }
            };
            t.join().unwrap();
            assert_eq!(f.segment(), 0);
            let live: Vec<_> = dev.live(0).unwrap().collect();
            assert_eq!(live, [(9, 0)]);
            assert_eq!(dev.segment(0).unwrap().valid, 1);
            assert_eq!(dev.invalidate(0), Ok(9));
        });
    }
}
