//! The final report: human table or JSON.

use serde::Serialize;
use std::sync::atomic::Ordering::Relaxed;

use crate::swapper::{DeviceKind, Swapper};

/// Counts per backend.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PerBackend {
    /// Zero pages.
    pub zero: u64,
    /// Same-filled pages.
    pub same: u64,
    /// zswap pool.
    pub zswap: u64,
    /// Swap file (device).
    pub file: u64,
    /// Swap-ins served from the swap cache (pages staged for the log device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_cache: Option<u64>,
    /// Descriptors with no backend (only at the end: staged pages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub none: Option<u64>,
}

/// Percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Latency {
    /// From samples in nanoseconds (sorted here).
    pub fn from_ns(mut v: Vec<u32>) -> Self {
        v.sort_unstable();
        let at = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .map_or(0.0, |&x| f64::from(x) / 1000.0)
        };
        Self {
            count: v.len() as u64,
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

/// Flash log device figures.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LogFigures {
    /// GC victim policy.
    pub gc_policy: &'static str,
    /// Device bytes per host byte.
    pub write_amplification: f64,
    /// Segments written.
    pub segments_written: u64,
    /// GC victims collected.
    pub gc_runs: u64,
    /// Bytes relocated by GC.
    pub gc_bytes: u64,
    /// Padding bytes.
    pub pad_bytes: u64,
}

/// Physical device cluster lists (fragmentation).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Clusters {
    /// Free clusters.
    pub free: u64,
    /// Partly used clusters.
    pub nonfull: u64,
    /// Fragmented clusters.
    pub frag: u64,
    /// Full clusters.
    pub full: u64,
    /// Slots in use.
    pub used_slots: u64,
    /// Usable slots.
    pub usable_slots: u64,
}

/// Everything a run or a simulation reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// "run" or "sim".
    pub mode: &'static str,
    /// Device behind the file tier.
    pub device: Option<DeviceKind>,
    /// Workload source.
    pub workload: String,
    /// Region size.
    pub region_bytes: u64,
    /// Resident budget.
    pub budget_bytes: u64,
    /// Largest resident size seen.
    pub peak_resident_bytes: u64,
    /// zswap pool limit.
    pub pool_limit_bytes: u64,
    /// Mutator threads.
    pub threads: u32,
    /// Accesses (page reads or writes) after the initial fill.
    pub ops: u64,
    /// Page accesses in all (fill, accesses, final read-back).
    pub accesses: u64,
    /// Seconds.
    pub elapsed_s: f64,
    /// Page reads whose content was checked.
    pub pages_verified: u64,
    /// Checks that failed (must be 0).
    pub verify_failures: u64,
    /// Swap-outs per backend.
    pub swap_outs: PerBackend,
    /// Swap-ins per backend.
    pub swap_ins: PerBackend,
    /// zswap objects written back to the file.
    pub zswap_writebacks: u64,
    /// Pages the pool refused as incompressible.
    pub pool_rejected_incompressible: u64,
    /// Pages the pool refused at its limit.
    pub pool_rejected_full: u64,
    /// Largest pool size.
    pub pool_peak_bytes: u64,
    /// Uncompressed / compressed bytes of every zswap store.
    pub compression_ratio: f64,
    /// Bytes written to the swap file.
    pub file_bytes_written: u64,
    /// Bytes read from the swap file.
    pub file_bytes_read: u64,
    /// Live descriptors per backend at the end.
    pub slots_at_end: PerBackend,
    /// Most live virtual slots at once.
    pub peak_live_slots: u64,
    /// Virtual map metadata bytes at that point (engine provider).
    pub map_metadata_bytes: u64,
    /// `map_metadata_bytes / peak_live_slots`.
    pub metadata_bytes_per_slot: f64,
    /// Device metadata (allocator and reverse map, or log segments).
    pub device_metadata_bytes: u64,
    /// Swap-in fault latency as the faulting thread saw it.
    pub fault_latency: Latency,
    /// First-touch faults (never-swapped pages, served as zero pages).
    pub first_touch_faults: u64,
    /// Page accesses per second (all phases).
    pub accesses_per_s: f64,
    /// Page accesses in MiB/s (4 KiB each).
    pub access_mib_per_s: f64,
    /// Page swap-ins per second.
    pub swap_ins_per_s: f64,
    /// Page swap-outs per second.
    pub swap_outs_per_s: f64,
    /// Log device figures.
    pub log: Option<LogFigures>,
    /// Physical device cluster lists.
    pub clusters: Option<Clusters>,
}

impl Report {
    /// Fill the counters and end-state figures from the swapper.
    pub fn collect(&mut self, s: &Swapper<'_>) {
        let c = s.counters();
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        self.swap_outs = PerBackend {
            zero: g(&c.out[0]),
            same: g(&c.out[1]),
            zswap: g(&c.out[2]),
            file: g(&c.out[3]),
            ..Default::default()
        };
        self.swap_ins = PerBackend {
            zero: g(&c.inn[0]),
            same: g(&c.inn[1]),
            zswap: g(&c.inn[2]),
            file: g(&c.inn[3]),
            swap_cache: Some(g(&c.inn[4])),
            none: None,
        };
        self.zswap_writebacks = g(&c.writebacks);
        self.pool_rejected_incompressible = g(&c.rejected_incompressible);
        self.pool_rejected_full = g(&c.rejected_full);
        self.pool_peak_bytes = g(&c.pool_peak);
        let out = g(&c.pool_out);
        self.compression_ratio = if out == 0 {
            0.0
        } else {
            g(&c.pool_in) as f64 / out as f64
        };
        self.file_bytes_written = g(&c.file_written);
        self.file_bytes_read = g(&c.file_read);
        let st = s.engine().map().stats();
        self.slots_at_end = PerBackend {
            none: Some(st.by_kind[0]),
            zero: st.by_kind[1],
            same: st.by_kind[2],
            zswap: st.by_kind[3],
            file: st.by_kind[4],
            swap_cache: None,
        };
        self.device_metadata_bytes = s.device_meta_bytes();
        if self.peak_live_slots > 0 {
            self.metadata_bytes_per_slot =
                self.map_metadata_bytes as f64 / self.peak_live_slots as f64;
        }
        if let Some(l) = s.engine().log_device() {
            let ls = l.stats();
            self.log = Some(LogFigures {
                gc_policy: match l.policy() {
                    vswap_core::GcPolicy::Greedy => "greedy",
                    vswap_core::GcPolicy::CostBenefit => "cost-benefit",
                },
                write_amplification: ls.write_amplification().unwrap_or(0.0),
                segments_written: ls.segments_written,
                gc_runs: ls.gc_runs,
                gc_bytes: ls.gc_bytes,
                pad_bytes: ls.pad_bytes,
            });
        } else if let Ok(d) = s.engine().device(0) {
            let ds = d.stats();
            self.clusters = Some(Clusters {
                free: ds.lists.free,
                nonfull: ds.lists.nonfull,
                frag: ds.lists.frag,
                full: ds.lists.full,
                used_slots: ds.used,
                usable_slots: ds.usable,
            });
        }
        let t = self.elapsed_s.max(1e-9);
        self.accesses_per_s = self.accesses as f64 / t;
        self.access_mib_per_s = self.accesses_per_s * 4096.0 / (1 << 20) as f64;
        let ins = self.swap_ins;
        let outs = self.swap_outs;
        self.swap_ins_per_s =
            (ins.zero + ins.same + ins.zswap + ins.file + ins.swap_cache.unwrap_or(0)) as f64 / t;
        self.swap_outs_per_s = (outs.zero + outs.same + outs.zswap + outs.file) as f64 / t;
    }

    /// Every backend took at least one page.
    pub fn all_backends_used(&self) -> bool {
        let o = self.swap_outs;
        o.zero > 0 && o.same > 0 && o.zswap > 0 && o.file > 0 && self.zswap_writebacks > 0
    }

    /// The human-readable report.
    pub fn human(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("  {k:<26} {v}\n"));
        let dev = match self.device {
            Some(DeviceKind::Log) => "flash log device",
            _ => "physical device",
        };
        line(
            "region / budget",
            format!(
                "{:.0} MiB / {:.0} MiB (peak resident {:.1} MiB), {} threads, {}",
                mib(self.region_bytes),
                mib(self.budget_bytes),
                mib(self.peak_resident_bytes),
                self.threads,
                self.workload
            ),
        );
        line(
            "verification",
            format!(
                "{} page reads checked, {} failures{}",
                self.pages_verified,
                self.verify_failures,
                if self.verify_failures == 0 {
                    " (OK)"
                } else {
                    " (FAILED)"
                }
            ),
        );
        let o = self.swap_outs;
        line(
            "swap-outs",
            format!(
                "zero {}  same {}  zswap {}  file {}",
                o.zero, o.same, o.zswap, o.file
            ),
        );
        let i = self.swap_ins;
        line(
            "swap-ins",
            format!(
                "zero {}  same {}  zswap {}  file {}  swap cache {}",
                i.zero,
                i.same,
                i.zswap,
                i.file,
                i.swap_cache.unwrap_or(0)
            ),
        );
        let e = self.slots_at_end;
        line(
            "slots at end",
            format!(
                "zero {}  same {}  zswap {}  file {}  staged {}",
                e.zero,
                e.same,
                e.zswap,
                e.file,
                e.none.unwrap_or(0)
            ),
        );
        line(
            "zswap pool",
            format!(
                "ratio {:.2}x, peak {:.1} MiB of {:.0} MiB, {} written back, refused {} incompressible / {} full",
                self.compression_ratio,
                mib(self.pool_peak_bytes),
                mib(self.pool_limit_bytes),
                self.zswap_writebacks,
                self.pool_rejected_incompressible,
                self.pool_rejected_full
            ),
        );
        line(
            "swap file",
            format!(
                "{:.1} MiB written, {:.1} MiB read ({dev})",
                mib(self.file_bytes_written),
                mib(self.file_bytes_read)
            ),
        );
        if let Some(l) = self.log {
            line(
                "log device",
                format!(
                    "write amplification {:.2}, {} segments written, {} GC runs ({}), {:.1} MiB relocated",
                    l.write_amplification,
                    l.segments_written,
                    l.gc_runs,
                    l.gc_policy,
                    mib(l.gc_bytes)
                ),
            );
        }
        if let Some(c) = self.clusters {
            line(
                "device clusters",
                format!(
                    "free {}  nonfull {}  frag {}  full {} ({} of {} slots used)",
                    c.free, c.nonfull, c.frag, c.full, c.used_slots, c.usable_slots
                ),
            );
        }
        line(
            "metadata",
            format!(
                "{:.2} bytes/slot ({} B for {} live slots at peak); device {:.1} KiB",
                self.metadata_bytes_per_slot,
                self.map_metadata_bytes,
                self.peak_live_slots,
                self.device_metadata_bytes as f64 / 1024.0
            ),
        );
        let f = self.fault_latency;
        line(
            if self.mode == "sim" {
                "swap-in service time"
            } else {
                "swap-in fault latency"
            },
            format!(
                "p50 {:.1} us  p99 {:.1} us  max {:.0} us ({} faults; {} first-touch)",
                f.p50_us, f.p99_us, f.max_us, f.count, self.first_touch_faults
            ),
        );
        line(
            "throughput",
            format!(
                "{:.0} page accesses/s ({:.0} MiB/s), {:.0} swap-ins/s, {:.0} swap-outs/s; {} accesses in {:.1} s",
                self.accesses_per_s,
                self.access_mib_per_s,
                self.swap_ins_per_s,
                self.swap_outs_per_s,
                self.accesses,
                self.elapsed_s
            ),
        );
        format!("vswap {} report\n{s}", self.mode)
    }
}
