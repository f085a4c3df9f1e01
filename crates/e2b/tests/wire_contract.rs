//! This crate's `.proto` files against E2B's own (in `../shared/data/e2b`
//! beside the repository, or `BHATTI_E2B_PROTO_DIR`): with comments set
//! aside, the declarations (packages, imports, services, methods with their
//! streaming, messages, enums, fields with names, types and numbers) must be
//! the same token for token. Skipped, with the reason printed, when E2B's
//! files are absent: the repository never carries a copy.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

use std::path::{Path, PathBuf};

fn theirs() -> Option<PathBuf> {
    let dir = std::env::var_os("BHATTI_E2B_PROTO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/e2b/envd")
        });
    dir.join("process/process.proto").is_file().then_some(dir)
}

/// The declaration tokens of a .proto file: comments removed, punctuation
/// split off, whitespace ignored.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut cur = String::new();
        for c in code.chars() {
            if c.is_whitespace() || "{}();=<>,".contains(c) {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                if !c.is_whitespace() {
                    out.push(c.to_string());
                }
            } else {
                cur.push(c);
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

#[test]
fn protos_match_e2b() {
    let Some(dir) = theirs() else {
        eprintln!(
            "skipped: E2B's envd protos are not beside the repository \
             (../shared/data/e2b/envd, or set BHATTI_E2B_PROTO_DIR)"
        );
        return;
    };
    for f in ["process/process.proto", "filesystem/filesystem.proto"] {
        let ours =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto").join(f))
                .expect("read ours");
        let e2b = std::fs::read_to_string(dir.join(f)).expect("read E2B's");
        let (a, b) = (tokens(&ours), tokens(&e2b));
        if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
            panic!(
                "{f}: ours and E2B's differ at token {i}: ours {:?}, E2B's {:?}",
                &a[i.saturating_sub(5)..(i + 5).min(a.len())],
                &b[i.saturating_sub(5)..(i + 5).min(b.len())]
            );
        }
        assert_eq!(
            a.len(),
            b.len(),
            "{f}: one file declares more than the other"
        );
    }
}

#[test]
fn tokens_ignore_comments_and_layout() {
    assert_eq!(
        tokens("message A { // x\n  uint32 pid = 1;\n}"),
        ["message", "A", "{", "uint32", "pid", "=", "1", ";", "}"]
    );
}
