//! What every CLI test needs: a `bhatti` command isolated from the
//! machine's config.

use std::path::Path;
use std::process::{Command, Stdio};

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
