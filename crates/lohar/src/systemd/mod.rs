//! The systemd substitute: services in a sandbox without systemd.
//!
//! Debian's packages ship systemd units and call `systemctl` from their
//! maintainer scripts, and people type `systemctl start nginx` out of
//! habit. Real systemd cannot be PID 1 here (lohar is), so lohar answers
//! to those names itself (busybox-style, on `argv[0]`):
//!
//! - [`unit`]: finding and parsing unit files (search path, drop-ins,
//!   aliases, templates, masking);
//! - [`order`]: boot order from `After=`/`Before=` (Kahn's algorithm);
//! - [`install`]: enable/disable/mask, the symlinks that decide boot;
//! - [`manager`]: one actor per unit running its processes (types,
//!   restarts with backoff and a start limit, cgroups, sd_notify);
//! - [`spawn`]: `lohar spawn`, which puts a process into its unit's cgroup
//!   before it runs (no placement race) and drops privileges;
//! - [`ipc`]: the `systemctl` socket (peer credentials decide who may
//!   change state) and the `systemctl`/`journalctl` command lines;
//! - [`listeners`]: `/dev/log` (syslog into per-unit logs) and the
//!   sd_notify socket;
//! - [`tmpfiles`]: `tmpfiles.d` at boot.
//!
//! Everything is rooted at [`Paths`], so tests run the whole substitute in
//! a temporary directory as an ordinary user (no cgroups there).

pub mod install;
pub mod ipc;
pub mod listeners;
pub mod manager;
pub mod order;
pub mod spawn;
pub mod tmpfiles;
pub mod unit;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use manager::Manager;

/// The environment variable that roots the substitute somewhere other
/// than `/` (tests).
pub const ROOT_ENV: &str = "LOHAR_SYSTEMD_ROOT";

/// Where the substitute keeps and finds everything.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/` in a guest.
    pub root: PathBuf,
    /// Unit files.
    pub search: unit::SearchPath,
    /// Pid files and failure markers.
    pub run_dir: PathBuf,
    /// Per-unit logs (`<unit>.log`).
    pub log_dir: PathBuf,
    /// `system.slice`, when cgroups are in use.
    pub cgroup_root: Option<PathBuf>,
    /// The `systemctl` socket.
    pub ctl_socket: PathBuf,
    /// sd_notify's socket.
    pub notify_socket: PathBuf,
    /// The syslog socket (`/dev/log`), guest only.
    pub syslog_socket: Option<PathBuf>,
    /// The lohar binary (for `lohar spawn`).
    pub helper: PathBuf,
}

impl Paths {
    /// Everything under `root`; cgroups and `/dev/log` only when `root` is
    /// `/`.
    pub fn under(root: &Path, helper: PathBuf) -> Paths {
        let system = root == Path::new("/");
        Paths {
            root: root.to_path_buf(),
            search: unit::SearchPath::under(root),
            run_dir: root.join("run/bhatti/services"),
            log_dir: root.join("var/log/bhatti"),
            cgroup_root: system
                .then(|| PathBuf::from("/sys/fs/cgroup/system.slice"))
                .filter(|_| Path::new("/sys/fs/cgroup/cgroup.controllers").exists()),
            ctl_socket: root.join("run/bhatti/systemctl.sock"),
            notify_socket: root.join("run/systemd/notify"),
            syslog_socket: system.then(|| PathBuf::from("/dev/log")),
            helper,
        }
    }

    /// The paths for this process: `$LOHAR_SYSTEMD_ROOT` or `/`.
    pub fn from_env() -> Paths {
        let root = std::env::var_os(ROOT_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        let helper =
            std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/local/bin/lohar"));
        Paths::under(&root, helper)
    }

    /// A `RuntimeDirectory=`-style base (`/run`, `/var/lib` …) under the root.
    pub fn dir(&self, base: &str) -> PathBuf {
        self.root.join(base.trim_start_matches('/'))
    }
}

/// A log file past this size is moved to `<name>.log.1` (replacing the
/// previous one) before the next write, so a chatty or hostile writer
/// cannot fill the guest's disk through the manager.
pub const LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Opens a unit log for appending (never through a symlink), rotated once
/// past [`LOG_MAX_BYTES`]. Created `0644`: the sandbox's one user runs
/// `journalctl -u nginx` without sudo, and has passwordless sudo anyway,
/// so a tighter mode would protect nothing and break the habit.
pub fn open_log(file: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::metadata(file).is_ok_and(|m| m.len() > LOG_MAX_BYTES) {
        let mut old = file.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(file, old);
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
}

/// Appends one timestamped line to a log file (best effort). Line breaks
/// inside `msg` become spaces, so one message is one line and no writer
/// can forge another's.
pub fn log_line(file: &Path, who: &str, msg: &str) {
    let one_line = |s: &str| -> String {
        s.chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect()
    };
    let line = format!(
        "{} {}: {}\n",
        timestamp(std::time::SystemTime::now()),
        one_line(who),
        one_line(msg)
    );
    if let Ok(mut f) = open_log(file) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// `2026-12-05T00:30:00Z`: UTC, so the guest needs no time zone data.
// The days fit an i64 many times over (seconds / 86400 of a u64), and the
// civil-date arithmetic below stays within a few million of them.
#[allow(clippy::arithmetic_side_effects)]
pub fn timestamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Starts the substitute inside PID 1 (or test mode): the `systemctl`
/// socket, the notify and syslog receivers, `tmpfiles.d`, then the enabled
/// units in dependency order (in the background: the agent serves
/// meanwhile).
pub async fn start(paths: Paths) -> Arc<Manager> {
    tmpfiles::apply_all(&paths.root);
    let mgr = Manager::new(paths);
    if let Err(e) = ipc::serve(mgr.clone()).await {
        tracing::error!("systemctl socket: {e}");
    }
    if let Err(e) = listeners::start(mgr.clone()) {
        tracing::error!("notify/syslog sockets: {e}");
    }
    let boot = mgr.clone();
    tokio::spawn(async move {
        let n = start_enabled(&boot).await;
        // When the boot's units were all started (what "boot → services
        // up" is measured by), beside lohar's other boot phases.
        let line = match crate::guest::uptime_ms() {
            Some(ms) => format!("units_started_ms={ms}\nunits_started={n}\n"),
            None => format!("units_started_ms=unknown\nunits_started={n}\n"),
        };
        let timing = boot.paths().root.join("run/bhatti/boot-timing.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&timing)
        {
            let _ = f.write_all(line.as_bytes());
        }
    });
    mgr
}

/// Starts the units enabled for boot, group by group; returns how many
/// started.
pub async fn start_enabled(mgr: &Arc<Manager>) -> usize {
    let names = install::enabled_at_boot(mgr.search());
    let mut order = BTreeMap::new();
    for n in names {
        let canon = mgr.canonical(&n).unwrap_or(n.clone());
        match unit::load(mgr.search(), &canon).and_then(|l| unit::Service::from_loaded(&l, "/root"))
        {
            Ok(s) => {
                order.insert(canon, (s.after, s.before));
            }
            Err(unit::UnitError::Masked(_)) => {}
            Err(e) => {
                tracing::warn!(unit = %canon, "not started at boot: {e}");
                mgr.log(&canon, &format!("Failed to load: {e}"));
                mgr.record_load_error(&canon, &e);
            }
        }
    }
    let plan = order::plan(&order);
    for cycle in &plan.cycles {
        let text = format!(
            "ordering cycle {}: started without ordering after the other units",
            cycle.join(" → ")
        );
        for u in cycle {
            tracing::warn!(unit = %u, "{text}");
            mgr.log(u, &text);
            mgr.record_note(u, text.clone());
        }
    }
    let mut groups = plan.groups;
    if !plan.cyclic.is_empty() {
        groups.push(plan.cyclic);
    }
    let mut started: usize = 0;
    for g in groups {
        let mut set = tokio::task::JoinSet::new();
        for u in g {
            let m = mgr.clone();
            set.spawn(async move {
                let r = m.start(&u).await;
                if let Err(e) = &r {
                    tracing::warn!(unit = %u, "boot start failed: {e}");
                }
                r.is_ok()
            });
        }
        while let Some(ok) = set.join_next().await {
            if ok.unwrap_or(false) {
                started = started.saturating_add(1);
            }
        }
    }
    started
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_430_600);
        assert_eq!(timestamp(t), "2026-12-05T00:30:00Z");
        assert_eq!(timestamp(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
