//! End-to-end tests of the `vswap` binary: a small real run over
//! userfaultfd, the log device, the simulator with a trace, and the
//! one-line error paths.

use std::process::{Command, Output};

fn vswap(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vswap"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn vswap")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "vswap failed ({:?}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

fn n(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

/// Content verified, and every backend took pages and gave them back.
fn assert_all_backends(v: &serde_json::Value) {
    assert_eq!(n(v, &["verify_failures"]), 0, "{v:#}");
    assert!(n(v, &["pages_verified"]) > 0);
    for b in ["zero", "same", "zswap", "file"] {
        assert!(n(v, &["swap_outs", b]) > 0, "no swap-out to {b}: {v:#}");
        assert!(n(v, &["swap_ins", b]) > 0, "no swap-in from {b}: {v:#}");
    }
    assert!(
        n(v, &["zswap_writebacks"]) > 0,
        "pool never wrote back: {v:#}"
    );
    assert!(n(v, &["file_bytes_written"]) > 0);
    assert!(v["compression_ratio"].as_f64().unwrap_or(0.0) > 1.2);
}

const SMALL: &[&str] = &[
    "run",
    "--size",
    "64M",
    "--budget",
    "16M",
    "--ops",
    "20000",
    "--threads",
    "2",
    "--json",
];

#[test]
fn small_run_verifies_every_page_and_uses_every_backend() {
    let v = json(&vswap(SMALL, &[]));
    assert_all_backends(&v);
    // The budget held (a batch per thread of slack).
    assert!(n(&v, &["peak_resident_bytes"]) <= (16 << 20) + 2 * 32 * 4096);
    // Every page was read back at the end.
    assert!(n(&v, &["pages_verified"]) >= 16384);
    assert!(n(&v, &["fault_latency", "count"]) > 0);
}

#[test]
fn small_run_through_the_log_device() {
    let mut a = SMALL.to_vec();
    a.extend(["--device", "log"]);
    let v = json(&vswap(&a, &[]));
    assert_all_backends(&v);
    assert!(v["log"]["write_amplification"].as_f64().unwrap_or(0.0) >= 1.0);
}

fn one_line_error(o: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(
        err.starts_with("vswap: ") && err.contains(needle),
        "{err:?}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn userfaultfd_not_permitted_is_one_line() {
    // The hidden switch makes the open fail as it does for an unprivileged
    // user when vm.unprivileged_userfaultfd is 0.
    let o = vswap(&["run"], &[("VSWAP_FORCE_UFFD_ERROR", "EPERM")]);
    one_line_error(&o, 3, "userfaultfd not permitted (EPERM)");
    let o = vswap(&["run"], &[("VSWAP_FORCE_UFFD_ERROR", "ENOSYS")]);
    one_line_error(&o, 3, "not supported");
}

#[test]
fn full_file_system_is_one_line() {
    // /dev/full fails every write with ENOSPC.
    let o = vswap(
        &[
            "run",
            "--size",
            "8M",
            "--budget",
            "2M",
            "--ops",
            "0",
            "--swap-size",
            "16M",
            "--swap-file",
            "/dev/full",
        ],
        &[],
    );
    one_line_error(&o, 1, "file system full (ENOSPC)");
}

#[test]
fn bad_arguments_are_one_line() {
    one_line_error(&vswap(&["run", "--size", "12Q"], &[]), 2, "12Q");
    one_line_error(&vswap(&["run", "--budget", "2G"], &[]), 2, "--budget");
    one_line_error(&vswap(&["run", "--device", "tape"], &[]), 2, "tape");
    one_line_error(
        &vswap(&["sim", "--trace", "/nonexistent"], &[]),
        2,
        "--trace",
    );
}

#[test]
fn sim_replays_a_trace() {
    let dir = std::env::temp_dir().join(format!("vswap-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.trace");
    let mut t = String::from("# synthetic trace\n\n");
    let mut x = 12345u64;
    for i in 0..60_000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Sweep 8192 pages, then skewed re-reads.
        let page = if i < 8192 {
            i
        } else {
            (x >> 33) % if x % 4 == 0 { 8192 } else { 1024 }
        };
        let op = if x % 10 < 3 { "w" } else { "r" };
        t.push_str(&format!("{op} {page:#x}\n"));
    }
    std::fs::write(&path, t).unwrap();
    let p = path.to_str().unwrap();
    let v = json(&vswap(
        &[
            "sim", "--trace", p, "--size", "4M", "--budget", "8M", "--json",
        ],
        &[],
    ));
    assert_eq!(n(&v, &["ops"]), 60_000);
    assert_eq!(n(&v, &["region_bytes"]), 8192 * 4096);
    assert_eq!(n(&v, &["verify_failures"]), 0);
    assert!(n(&v, &["pages_verified"]) > 0);
    let bad = dir.join("bad.trace");
    std::fs::write(&bad, "r 1\nx 2\n").unwrap();
    one_line_error(
        &vswap(&["sim", "--trace", bad.to_str().unwrap()], &[]),
        2,
        "bad.trace:2",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
