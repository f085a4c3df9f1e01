//! What every CLI test needs: a `bhatti` command isolated from the
//! machine's config.
// Each test binary includes this module and uses its own subset of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A `bhatti` command with its own HOME, no BHATTI_* variables, no sudo,
/// stdin not a terminal.
pub fn bhatti(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bhatti"));
    c.env("HOME", home)
        .env_remove("SUDO_USER")
        .env_remove("BHATTI_URL")
        .env_remove("BHATTI_TOKEN")
        .env_remove("BHATTI_CONFIG")
        .env_remove("BHATTI_DATA_DIR")
        .env_remove("BHATTI_CA_FILE")
        .env_remove("BHATTI_FORCE_STREAM")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    c
}

/// Bytes a command printed, as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The output of a command that must have succeeded; its exit, stdout and
/// stderr in the failure otherwise.
#[track_caller]
pub fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}
