//! The `vswap` command: `vswap run` (a userfaultfd swapper) and `vswap sim`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vswap_tool::report::Report;
use vswap_tool::swapper::{DeviceKind, GcKind};
use vswap_tool::workload::{Mix, Workload};
use vswap_tool::{ToolError, parse_size, run, sim};

/// A userspace swapper built on the vswap virtual swap engine.
#[derive(Parser, Debug)]
#[command(name = "vswap", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Swap a real memory region through userfaultfd (no arguments needed).
    Run(RunArgs),
    /// Replay a synthetic workload or a trace through the same engine,
    /// without userfaultfd.
    Sim(SimArgs),
}

#[derive(Args, Debug)]
struct Common {
    /// Region size (K, M, G suffixes).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Resident budget.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    budget: u64,
    /// zswap pool limit (compressed bytes); default budget / 4.
    #[arg(long, value_parser = parse_size)]
    pool_limit: Option<u64>,
    /// Swap file size; default the region size.
    #[arg(long, value_parser = parse_size)]
    swap_size: Option<u64>,
    /// Swap file (new or empty; kept afterwards); default a file in the
    /// temp directory, unlinked at once.
    #[arg(long)]
    swap_file: Option<PathBuf>,
    /// The device behind the swap file.
    #[arg(long, value_enum, default_value = "file")]
    device: DeviceKind,
    /// The log device's GC victim policy.
    #[arg(long, value_enum, default_value = "cost-benefit")]
    gc: GcKind,
    /// Accesses after the initial fill.
    #[arg(long, default_value_t = 1_000_000)]
    ops: u64,
    /// Percent of accesses that write.
    #[arg(long, default_value_t = 30)]
    write_pct: u32,
    /// Percent of pages that are hot.
    #[arg(long, default_value_t = 15)]
    hot_pct: u32,
    /// Percent of accesses that go to hot pages.
    #[arg(long, default_value_t = 85)]
    hot_share: u32,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON (and no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    c: Common,
    /// Mutator threads.
    #[arg(long, default_value_t = 4)]
    threads: u32,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct SimArgs {
    #[command(flatten)]
    c: Common,
    /// A trace file to replay (see the sim module docs for the format).
    #[arg(long)]
    trace: Option<PathBuf>,
}

fn workload(c: &Common) -> Workload {
    Workload {
        seed: c.seed,
        mix: Mix::default(),
        hot_pct: c.hot_pct,
    }
}

fn swap_file(c: &Common) -> (PathBuf, bool) {
    match &c.swap_file {
        Some(p) => (p.clone(), true),
        None => (
            std::env::temp_dir().join(format!("vswap-{}.swap", std::process::id())),
            false,
        ),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line: clap's first line, without its usage block.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            eprintln!("vswap: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let (json, r) = match cli.cmd {
        Cmd::Run(a) => {
            let c = &a.c;
            let (path, keep) = swap_file(c);
            let cfg = run::RunConfig {
                size: c.size,
                budget: c.budget,
                pool_limit: c.pool_limit.unwrap_or(c.budget / 4),
                swap_size: c.swap_size.unwrap_or(c.size),
                swap_file: path,
                keep_file: keep,
                device: c.device,
                gc: c.gc,
                threads: a.threads,
                ops: c.ops,
                write_pct: c.write_pct,
                hot_share: c.hot_share,
                workload: workload(c),
                progress: !c.json && !a.quiet && std::io::stderr().is_terminal(),
            };
            (c.json, run::run(cfg))
        }
        Cmd::Sim(a) => {
            let c = &a.c;
            let (path, _) = swap_file(c);
            let trace = match &a.trace {
                Some(p) => std::fs::File::open(p)
                    .map_err(|e| ToolError::BadArg(format!("--trace {}: {e}", p.display())))
                    .and_then(|f| {
                        sim::parse_trace(std::io::BufReader::new(f), &p.display().to_string())
                    })
                    .map(Some),
                None => Ok(None),
            };
            let r = trace.and_then(|trace| {
                sim::sim(sim::SimConfig {
                    size: c.size,
                    budget: c.budget,
                    pool_limit: c.pool_limit.unwrap_or(c.budget / 4),
                    swap_size: c.swap_size,
                    swap_file: path,
                    device: c.device,
                    gc: c.gc,
                    ops: c.ops,
                    write_pct: c.write_pct,
                    hot_share: c.hot_share,
                    workload: workload(c),
                    trace,
                })
            });
            (c.json, r)
        }
    };
    match r {
        Ok(rep) => finish(&rep, json),
        Err(e) => {
            eprintln!("vswap: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn finish(rep: &Report, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(rep) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("vswap: json: {e}"),
        }
    } else {
        print!("{}", rep.human());
    }
    if rep.verify_failures > 0 {
        eprintln!("vswap: {}", ToolError::Verify(rep.verify_failures));
        return ExitCode::from(4);
    }
    ExitCode::SUCCESS
}
