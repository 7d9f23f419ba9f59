//! `vswap sim`: the swapper's engine and backends without userfaultfd.
//!
//! Pages live in a table of heap buffers instead of a userfaultfd region;
//! an access to a page that is not resident is a simulated fault served by
//! the same swap-in path as `vswap run`, and the same clock evicts through
//! the same swap-out path. One thread; every read is checked like in `run`.
//!
//! # Trace format
//! A text file, one access per line: `r <page>` or `w <page>` (a read or a
//! write of page number `<page>`, decimal or `0x` hex; `R`/`W` also work).
//! Blank lines and lines starting with `#` are ignored. The region is
//! `--size` or, if larger, the highest page + 1. A page's content is the
//! synthetic workload's for its index (its kind: zero, same-filled, text or
//! random) at a version bumped by each write, so a trace of addresses alone
//! exercises every backend.
//!
//! ```text
//! # a page read twice, then rewritten
//! r 17
//! r 0x11
//! w 17
//! ```

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use vswap_core::StdProvider;

use crate::ToolError;
use crate::report::{Latency, Report};
use crate::swapper::{DeviceKind, GcKind, Loaded, SwapConfig, Swapper};
use crate::workload::{PAGE, Rng, Workload};

/// One access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Page number.
    pub page: u64,
    /// A write.
    pub write: bool,
}

/// Parse a trace (see the module documentation).
pub fn parse_trace(r: impl BufRead, name: &str) -> Result<Vec<Access>, ToolError> {
    let mut v = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line = line.map_err(|e| ToolError::io("read trace", Path::new(name), e))?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let bad = || {
            ToolError::BadArg(format!(
                "{name}:{}: expected `r <page>` or `w <page>`, got '{t}'",
                i + 1
            ))
        };
        let mut it = t.split_whitespace();
        let write = match it.next() {
            Some("r" | "R") => false,
            Some("w" | "W") => true,
            _ => return Err(bad()),
        };
        let n = it.next().ok_or_else(bad)?;
        let page = match n.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => n.parse(),
        }
        .map_err(|_| bad())?;
        if it.next().is_some() || page >= u64::from(u32::MAX) {
            return Err(bad());
        }
        v.push(Access { page, write });
    }
    Ok(v)
}

/// Options of `vswap sim`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Region bytes (raised to cover the trace).
    pub size: u64,
    /// Resident budget bytes.
    pub budget: u64,
    /// zswap pool limit bytes.
    pub pool_limit: u64,
    /// Swap file bytes (default: the region size).
    pub swap_size: Option<u64>,
    /// Swap file path.
    pub swap_file: std::path::PathBuf,
    /// Device kind.
    pub device: DeviceKind,
    /// The log device's GC policy.
    pub gc: GcKind,
    /// Synthetic accesses (ignored with a trace).
    pub ops: u64,
    /// Percent of synthetic accesses that write.
    pub write_pct: u32,
    /// Percent of synthetic accesses to the hot set.
    pub hot_share: u32,
    /// The workload (contents, hot set).
    pub workload: Workload,
    /// Trace accesses, if replaying one.
    pub trace: Option<Vec<Access>>,
}

const OUT: u8 = 0;
const IN: u8 = 1;
const SWAPPED: u8 = 2;

/// Run the simulation.
pub fn sim(cfg: SimConfig) -> Result<Report, ToolError> {
    let mut pages = cfg.size / PAGE as u64;
    if let Some(t) = &cfg.trace {
        pages = pages.max(t.iter().map(|a| a.page + 1).max().unwrap_or(0));
    }
    let budget = cfg.budget / PAGE as u64;
    if budget < 16 || pages == 0 {
        return Err(ToolError::BadArg("--budget must be at least 64 KiB".into()));
    }
    let map_p = StdProvider::new();
    let dev_p = StdProvider::new();
    let sw = Swapper::new(
        &SwapConfig {
            device: cfg.device,
            swap_pages: cfg.swap_size.map_or(pages, |b| b / PAGE as u64),
            pool_limit: cfg.pool_limit,
            path: cfg.swap_file.clone(),
            keep_file: false,
            seg_shift: 9,
            gc: cfg.gc,
        },
        &map_p,
        &dev_p,
    )?;
    let n = pages as usize;
    let mut state = vec![OUT; n];
    let mut refbit = vec![false; n];
    let mut slot = vec![0u32; n];
    let mut ver = vec![0u32; n];
    let mut mem: Vec<Option<Box<[u8]>>> = (0..n).map(|_| None).collect();
    let mut resident = 0u64;
    let (mut peak_res, mut live, mut peak_live, mut meta) = (0u64, 0u64, 0u64, 0u64);
    let mut hand = 0usize;
    let mut lat = Vec::new();
    let (mut verified, mut failures, mut first) = (0u64, 0u64, 0u64);
    let mut expect = vec![0u8; PAGE];
    let w = cfg.workload;
    let mut rng = Rng::new(w.seed ^ 0x51);
    let total = cfg.trace.as_ref().map_or(cfg.ops, |t| t.len() as u64);
    let start = Instant::now();
    for i in 0..total {
        let a = match &cfg.trace {
            Some(t) => t[i as usize],
            None => Access {
                page: w.pick(&mut rng, pages, cfg.hot_share),
                write: rng.pct(cfg.write_pct),
            },
        };
        let p = a.page as usize;
        if state[p] != IN {
            let mut b = vec![0u8; PAGE].into_boxed_slice();
            if state[p] == SWAPPED {
                let t0 = Instant::now();
                if sw.swap_in(slot[p], &mut b)? == Loaded::Zero {
                    b.fill(0);
                }
                lat.push(t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
                live -= 1;
                // Read back: check it.
                w.fill(a.page, ver[p], &mut expect);
                verified += 1;
                failures += u64::from(*b != *expect);
            } else {
                first += 1;
                w.fill(a.page, 0, &mut b);
            }
            mem[p] = Some(b);
            state[p] = IN;
            resident += 1;
            peak_res = peak_res.max(resident);
            if resident > budget {
                let low = budget - budget / 8;
                while resident > low {
                    let v = hand;
                    hand = (hand + 1) % n;
                    if state[v] != IN || v == p {
                        continue;
                    }
                    if std::mem::take(&mut refbit[v]) {
                        continue;
                    }
                    let Some(data) = mem[v].take() else { continue };
                    slot[v] = sw.swap_out(v as u32, &data, 0)?;
                    state[v] = SWAPPED;
                    resident -= 1;
                    live += 1;
                }
                sw.maintain(cfg.pool_limit, 0)?;
                if live > peak_live {
                    peak_live = live;
                    meta = map_p.bytes_in_use();
                }
            }
        }
        refbit[p] = true;
        if a.write {
            ver[p] += 1;
            if let Some(b) = mem[p].as_mut() {
                w.fill(a.page, ver[p], b);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut rep = Report {
        mode: "sim",
        device: Some(cfg.device),
        workload: if cfg.trace.is_some() {
            format!("trace of {total} accesses over {pages} pages")
        } else {
            format!(
                "synthetic, {}% hot pages take {}% of accesses, {}% writes",
                w.hot_pct, cfg.hot_share, cfg.write_pct
            )
        },
        region_bytes: pages * PAGE as u64,
        budget_bytes: cfg.budget,
        peak_resident_bytes: peak_res * PAGE as u64,
        pool_limit_bytes: cfg.pool_limit,
        threads: 1,
        ops: total,
        accesses: total,
        elapsed_s: elapsed,
        pages_verified: verified,
        verify_failures: failures,
        peak_live_slots: peak_live,
        map_metadata_bytes: meta,
        fault_latency: Latency::from_ns(lat),
        first_touch_faults: first,
        ..Default::default()
    };
    rep.collect(&sw);
    Ok(rep)
}
