//! Builds the C tests in `tests/c/` against this crate's static library with
//! `gcc -std=c11 -Wall -Wextra -Werror` (or `$CC`) and runs them, so that
//! `cargo test --workspace` covers the C ABI. `.ci/ffi` runs the same files
//! again under AddressSanitizer and valgrind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The libraries a Rust std static library needs on Linux
/// (`rustc --print native-static-libs`).
const NATIVE_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// `target/<profile>/deps/libvswap_ffi.a`: cargo builds every crate type of
/// the lib target (staticlib included) into `deps/` before it builds the
/// tests, next to this test's own executable.
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/c_tests-<hash>
    let lib = exe.parent().unwrap().join("libvswap_ffi.a");
    assert!(lib.exists(), "{} not found", lib.display());
    lib
}

fn build_and_run(name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("c-{name}"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g"])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join("tests/c").join(format!("{name}.c")))
        .arg(static_lib())
        .args(NATIVE_LIBS)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(status.success(), "compiling tests/c/{name}.c failed");
    let run = Command::new(&out).output().unwrap();
    print!("{}", String::from_utf8_lossy(&run.stdout));
    eprint!("{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        run.status.success(),
        "tests/c/{name}.c failed: {}",
        run.status
    );
}

#[test]
fn c_lifecycle() {
    build_and_run("lifecycle");
}

#[test]
fn c_bad_input() {
    build_and_run("bad_input");
}

#[test]
fn c_stress() {
    build_and_run("stress");
}
