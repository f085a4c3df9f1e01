//! [`VmmError`]: everything that can go wrong in a VMM driver.

use std::path::PathBuf;
use std::time::Duration;

use super::VmExit;

/// Errors of the VMM drivers. Boot and restore failures carry the tail of
/// the VMM's stderr and of the guest console, which is usually all an
/// operator needs to see why.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The [`VmSpec`](super::VmSpec) cannot work (missing file, bad sizes, …).
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    /// A Unix socket path that does not fit `sun_path`.
    #[error(
        "socket path {} is {len} bytes, the limit is {max}: use a shorter VM directory",
        path.display()
    )]
    SocketPathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The longest path `sun_path` holds, in bytes.
        max: usize,
    },
    /// The VMM binary is missing or unusable.
    #[error("VMM {binary} is not usable: {reason}")]
    Unavailable {
        /// The binary, as configured.
        binary: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The VMM process could not be started at all.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary that was run.
        binary: String,
        /// Why the spawn failed.
        #[source]
        source: std::io::Error,
    },
    /// Booting failed (the VMM exited during start-up, its control socket
    /// never came up, …).
    #[error("boot failed: {reason}{}", tails(.vmm_log, .console))]
    Boot {
        /// What went wrong.
        reason: String,
        /// The tail of the VMM's stderr.
        vmm_log: String,
        /// The tail of the guest console.
        console: String,
    },
    /// Restoring a snapshot failed (corrupt or incompatible state, VMM
    /// exit, timeout). The engine's restore circuit breaker keys on this.
    #[error("restore failed: {reason}{}", tails(.vmm_log, .console))]
    Restore {
        /// What went wrong.
        reason: String,
        /// The tail of the VMM's stderr.
        vmm_log: String,
        /// The tail of the guest console.
        console: String,
    },
    /// The snapshot description or files are unusable; nothing was started.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
    /// Writing a snapshot failed; the VM is still there (paused).
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    /// An operation that needs a paused VM.
    #[error("the VM must be paused to {op} (it is {state})")]
    NotPaused {
        /// The operation, e.g. `"snapshot"`.
        op: &'static str,
        /// The state the VM was in instead.
        state: String,
    },
    /// The VMM answered a command with an error.
    #[error("{command}: {class}: {desc}")]
    Command {
        /// The command sent: a QMP command name or a Firecracker request
        /// such as `"PUT /drives/root"`.
        command: String,
        /// The error class: QMP's `class`, or `"HTTP <status>"`.
        class: String,
        /// The VMM's description of the error.
        desc: String,
    },
    /// The VMM did not answer in time.
    #[error("{what} timed out after {timeout:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// The control connection broke or spoke nonsense.
    #[error("VMM control protocol: {0}")]
    Protocol(String),
    /// The VMM process is gone.
    #[error("the VMM process has exited ({0})")]
    Exited(VmExit),
    /// Something this driver does not do.
    #[error("the {driver} driver does not support {what}")]
    Unsupported {
        /// The driver's name.
        driver: &'static str,
        /// The operation it does not do.
        what: String,
    },
    /// The host TSC frequency could not be determined or was given wrongly.
    #[error("host TSC frequency: {0}")]
    Tsc(String),
    /// A file-system or syscall failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, usually naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl VmmError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        VmmError::Io {
            context: context.into(),
            source,
        }
    }
}

fn tails(vmm_log: &str, console: &str) -> String {
    let mut s = String::new();
    for (name, text) in [("VMM stderr", vmm_log), ("console", console)] {
        let text = text.trim_end();
        if !text.is_empty() {
            s.push_str(&format!("\n--- {name} (tail) ---\n{text}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_error_shows_tails() {
        let e = VmmError::Boot {
            reason: "QEMU exited (exit status 1)".into(),
            vmm_log: "qemu: could not open disk\n".into(),
            console: String::new(),
        };
        let s = e.to_string();
        assert!(s.starts_with("boot failed: QEMU exited (exit status 1)"));
        assert!(s.contains("--- VMM stderr (tail) ---\nqemu: could not open disk"));
        assert!(!s.contains("console"));
    }
}
