//! Kernel hardening sysctls, written at boot before any sandbox code runs.
//!
//! The guest kernel boots with upstream defaults, which trust local users more
//! than a sandbox should: the sandbox's code (uid 1000) could read the kernel
//! log and kernel pointers (handy for exploiting a kernel bug), create user
//! namespaces (the most common way to reach kernel attack surface that is
//! otherwise root-only), load unprivileged BPF, and play the classic
//! symlink/hardlink/FIFO games in world-writable sticky directories such as
//! `/tmp` against root (which lohar is). Each setting is best-effort: a file the
//! kernel does not have is logged and skipped, never fatal.
//!
//! Root inside the sandbox (a `user: root` sandbox) can change these back; they
//! protect the kernel and the agent from the unprivileged user.

use std::io::Write;
use std::path::Path;

/// One sysctl: its `/proc/sys` path and the value to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysctl {
    /// Path relative to `/proc/sys`, e.g. `kernel/dmesg_restrict`.
    pub path: &'static str,
    /// What is written to it.
    pub value: &'static str,
    /// Absent on many kernels (a distribution patch or a config option);
    /// missing is expected and logged quietly.
    pub optional: bool,
}

const fn sysctl(path: &'static str, value: &'static str) -> Sysctl {
    Sysctl {
        path,
        value,
        optional: false,
    }
}

const fn optional(path: &'static str, value: &'static str) -> Sysctl {
    Sysctl {
        path,
        value,
        optional: true,
    }
}

/// The settings for a guest; `allow_userns` (from the config drive) leaves user
/// namespaces available to the sandbox user.
pub fn settings(allow_userns: bool) -> Vec<Sysctl> {
    let mut v = vec![
        // The kernel log and kernel addresses are root's.
        sysctl("kernel/dmesg_restrict", "1"),
        sysctl("kernel/kptr_restrict", "2"),
        // Follow symlinks / create hardlinks in sticky world-writable
        // directories only when the owners match; no opening of others'
        // FIFOs and regular files there with O_CREAT.
        sysctl("fs/protected_symlinks", "1"),
        sysctl("fs/protected_hardlinks", "1"),
        sysctl("fs/protected_fifos", "1"),
        sysctl("fs/protected_regular", "2"),
        // BPF for root only (1 = cannot be turned back on until reboot).
        optional("kernel/unprivileged_bpf_disabled", "1"),
    ];
    if !allow_userns {
        // Upstream has no per-user switch: no new user namespaces at all (root
        // can raise the limit again). Debian-style kernels also have the switch.
        v.push(sysctl("user/max_user_namespaces", "0"));
        v.push(optional("kernel/unprivileged_userns_clone", "0"));
    }
    v
}

/// Writes the settings under `root` (`/proc/sys` in a guest); returns how many
/// took effect. Failures are logged.
pub fn apply_under(root: &Path, settings: &[Sysctl]) -> usize {
    let mut applied: usize = 0;
    for s in settings {
        let path = root.join(s.path);
        // Never create: a sysctl the kernel lacks is missing, not a new file.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(s.value.as_bytes()));
        match written {
            Ok(()) => applied = applied.saturating_add(1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if s.optional {
                    tracing::debug!("sysctl {}: not in this kernel", s.path);
                } else {
                    tracing::warn!("sysctl {}: not in this kernel; not hardened", s.path);
                }
            }
            Err(e) => tracing::error!("sysctl {} = {}: {e}", s.path, s.value),
        }
    }
    applied
}

/// Applies the guest's hardening to the running kernel.
pub fn apply(allow_userns: bool) {
    let settings = settings(allow_userns);
    let applied = apply_under(Path::new("/proc/sys"), &settings);
    tracing::info!(
        applied,
        of = settings.len(),
        allow_userns,
        "kernel hardening sysctls"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_namespaces_are_off_unless_allowed() {
        let off = settings(false);
        assert!(off.contains(&sysctl("user/max_user_namespaces", "0")));
        assert!(off.contains(&sysctl("kernel/dmesg_restrict", "1")));
        let on = settings(true);
        assert!(on
            .iter()
            .all(|s| !s.path.contains("userns") && !s.path.contains("user/")));
        assert!(on.contains(&sysctl("fs/protected_regular", "2")));
    }

    #[test]
    fn missing_files_are_skipped_and_present_ones_written() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("kernel")).expect("mkdir");
        std::fs::write(d.path().join("kernel/dmesg_restrict"), "0").expect("seed");
        let applied = apply_under(d.path(), &settings(false));
        assert_eq!(applied, 1);
        assert_eq!(
            std::fs::read_to_string(d.path().join("kernel/dmesg_restrict")).expect("read"),
            "1"
        );
    }
}
