//! The README's C ABI claims are tested (issue 12, item 16).
//!
//! Every errno the README's "C ABI (vswap-ffi)" section names (`-E...`) is
//! paired with the nearest function of `vswap.h` (a `vswap_*` name the
//! header declares with `(`) named before it in the same sentence (sentences end at `.` or `;` followed by white space). For each
//! pair, some statement of a C test in `tests/c/` must call that function
//! and expect that code (`-VSWAP_E...`, the plain `-E...`, or bad_input.c's
//! `EINV` for `-EINVAL`). A claim the tests do not check fails this test,
//! so a README that says a call returns a code it does not (as it once said
//! of `vswap_put_range` under a charge policy) cannot go unnoticed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

/// The README section, from its heading to the next `## ` heading.
fn c_abi_section(readme: &str) -> &str {
    let start = readme
        .find("\n## C ABI (vswap-ffi)")
        .expect("README has a C ABI section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

/// Identifier characters.
fn ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `(function, code)` pairs claimed in `text`; `is_fn` says which
/// `vswap_*` names are functions.
fn claims(text: &str, is_fn: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    for sentence in flat.split(". ").flat_map(|s| s.split("; ")) {
        let mut last_fn: Option<String> = None;
        let mut i = 0;
        let b = sentence.as_bytes();
        while i < b.len() {
            let rest = &sentence[i..];
            if rest.starts_with("vswap_") && (i == 0 || !ident(b[i - 1] as char)) {
                let n = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
                if is_fn(&rest[..n]) {
                    last_fn = Some(rest[..n].to_string());
                }
                i += n;
                continue;
            }
            if rest.starts_with("-E") && rest[2..].starts_with(|c: char| c.is_ascii_uppercase()) {
                let n = 1 + rest[1..]
                    .find(|c: char| !ident(c))
                    .unwrap_or(rest.len() - 1);
                if let Some(f) = &last_fn {
                    out.push((f.clone(), rest[1..n].to_string()));
                }
                i += n;
                continue;
            }
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Does `stmt` contain the code `code` (`EINVAL`, ...) as an expectation?
fn expects(stmt: &str, code: &str) -> bool {
    let whole = |pat: &str| {
        stmt.match_indices(pat)
            .any(|(at, _)| !stmt[at + pat.len()..].chars().next().is_some_and(ident))
    };
    whole(&format!("-VSWAP_{code}"))
        || whole(&format!("-{code}"))
        || (code == "EINVAL" && whole("EINV"))
}

#[test]
fn every_errno_the_readme_names_is_expected_by_a_c_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../README.md")).unwrap();
    let header = std::fs::read_to_string(root.join("include/vswap.h")).unwrap();
    let claimed = claims(c_abi_section(&readme), |name| {
        header.contains(&format!(" {name}("))
    });
    let mut stmts = Vec::new();
    for entry in std::fs::read_dir(root.join("tests/c")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "c") {
            let src = std::fs::read_to_string(&path).unwrap();
            stmts.extend(src.split(';').map(str::to_string));
        }
    }
    let untested: Vec<_> = claimed
        .iter()
        .filter(|(f, code)| {
            let call = format!("{f}(");
            !stmts.iter().any(|s| s.contains(&call) && expects(s, code))
        })
        .collect();
    assert!(
        untested.is_empty(),
        "README C ABI claims no C test checks (function, code): {untested:?}"
    );
    // The parser still finds the section's claims (a reworded README that
    // it no longer reads would pass vacuously).
    assert!(
        claimed.len() >= 5,
        "the C ABI section names fewer claims than it should: {claimed:?}"
    );
}

#[test]
fn the_claim_parser_pairs_each_code_with_the_function_before_it() {
    let text = "Under a charge policy, `vswap_put_range` returns `-EOPNOTSUPP` \
                (the engine has none). `vswap_a` or `vswap_b` gives `-ENOENT`; \
                `-EINVAL` alone. See `vswap_c` returning `-ESTALE`, `vswap_d`.";
    assert_eq!(
        claims(text, |f| f != "vswap_d"),
        [
            ("vswap_b".into(), "ENOENT".into()),
            ("vswap_c".into(), "ESTALE".into()),
            ("vswap_put_range".into(), "EOPNOTSUPP".into()),
        ]
    );
    assert!(expects("EXPECT(vswap_x(e), -VSWAP_EBUSY)", "EBUSY"));
    assert!(!expects("EXPECT(vswap_x(e), -VSWAP_EBUSYX)", "EBUSY"));
    assert!(expects("EXPECT(vswap_x(NULL), EINV)", "EINVAL"));
}
