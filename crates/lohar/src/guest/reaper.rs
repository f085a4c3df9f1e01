//! Zombie reaper for PID 1 that never steals tokio's children.
//!
//! As PID 1, lohar inherits every orphan in the guest, and orphans that exit stay
//! zombies until PID 1 waits for them. A blanket `wait4(-1)` (what the reference
//! does) would also collect the children lohar spawned itself, which tokio waits
//! for by pid (`waitpid(pid)`): tokio would then see `ECHILD` and the exec would
//! lose its exit code. So the reaper only waits for zombies it can prove are not
//! lohar's own:
//!
//! - Every child lohar spawns goes through [`spawn_tracked`], which holds the
//!   registry lock across `fork`+`exec` and records `(pid, start time)` before
//!   releasing it. The reaper takes the same lock for a whole scan, so a child
//!   that exits instantly cannot be mistaken for an orphan in the window between
//!   spawn and registration.
//! - The reaper scans `/proc/*/stat` for processes in state `Z` whose parent is
//!   PID 1 and waits for exactly those pids that are not registered.
//! - An entry leaves the registry when its child was waited ([`untrack`]), or,
//!   for children tokio reaps on its own (a dropped `Child` goes to tokio's orphan
//!   queue), when a scan finds that pid gone or reused by another process (the
//!   start time differs). Keying on the start time also means a recycled pid can
//!   never shield a real orphan.
//!
//! The scan runs every second and on every SIGCHLD (tokio's signal driver
//! fans SIGCHLD out to every listener, its own process driver included).
//! Outside guest mode the registry is inactive and [`spawn_tracked`] costs
//! nothing.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// pid → start time (clock ticks since boot, `/proc/<pid>/stat` field 22);
/// `None` when it could not be read, which shields that pid by number alone.
type Registry = BTreeMap<i32, Option<u64>>;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static TRACKED: Mutex<Registry> = Mutex::new(BTreeMap::new());

const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Coalesces SIGCHLD bursts (many short execs) into one scan.
const MIN_SCAN_GAP: Duration = Duration::from_millis(50);

/// How many reaped orphans' exit statuses are kept for [`orphan_exit`].
const EXITS_KEPT: usize = 256;

/// Recently reaped orphans: (pid, exit code, signal). A forked daemon is an
/// orphan by the time it is a unit's main process, and its unit asks how
/// it ended (a clean `nginx -s quit` is not a crash).
static EXITS: Mutex<std::collections::VecDeque<OrphanExit>> =
    Mutex::new(std::collections::VecDeque::new());

/// (pid, exit code, signal) of one reaped orphan.
type OrphanExit = (i32, Option<i32>, Option<i32>);

/// How a reaped orphan ended: `(exit code, signal)`, taken once.
pub fn orphan_exit(pid: u32) -> Option<(Option<i32>, Option<i32>)> {
    let pid = i32::try_from(pid).ok()?;
    let mut exits = bhatti_sync::lock(&EXITS);
    let at = exits.iter().rposition(|(p, _, _)| *p == pid)?;
    exits.remove(at).map(|(_, code, sig)| (code, sig))
}

fn record_exit(st: WaitStatus) {
    let (pid, code, sig) = match st {
        WaitStatus::Exited(p, c) => (p.as_raw(), Some(c), None),
        WaitStatus::Signaled(p, s, _) => (p.as_raw(), None, Some(s as i32)),
        _ => return,
    };
    let mut exits = bhatti_sync::lock(&EXITS);
    if exits.len() == EXITS_KEPT {
        exits.pop_front();
    }
    exits.push_back((pid, code, sig));
}

fn lock() -> MutexGuard<'static, Registry> {
    bhatti_sync::lock(&TRACKED)
}

/// Spawns a child through `spawn` and registers its pid with the reaper while
/// still holding the lock the reaper scans under.
pub fn spawn_tracked(
    spawn: impl FnOnce() -> io::Result<tokio::process::Child>,
) -> io::Result<tokio::process::Child> {
    if !ACTIVE.load(Ordering::Acquire) {
        return spawn();
    }
    let mut reg = lock();
    let child = spawn()?;
    if let Some(pid) = child.id() {
        // Linux PIDs are at most 2^22.
        let Ok(pid) = i32::try_from(pid) else {
            return Ok(child);
        };
        // The child cannot have been reaped yet: nobody polled its wait.
        reg.insert(pid, read_stat(pid).map(|s| s.start_time));
    }
    Ok(child)
}

/// Forgets a child whose exit status was collected.
pub fn untrack(pid: Option<u32>) {
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    if let Some(pid) = pid {
        if let Ok(pid) = i32::try_from(pid) {
            lock().remove(&pid);
        }
    }
}

/// Number of tracked children (diagnostics and tests).
pub fn tracked_count() -> usize {
    lock().len()
}

/// Turns tracking on and runs the reaper until the runtime shuts down.
/// Call before anything is spawned.
pub fn start() {
    ACTIVE.store(true, Ordering::Release);
    tokio::spawn(async {
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "reaper: no SIGCHLD listener; scanning every second only");
                None
            }
        };
        loop {
            match &mut sigchld {
                Some(s) => {
                    tokio::select! {
                        _ = s.recv() => {}
                        _ = tokio::time::sleep(SCAN_INTERVAL) => {}
                    }
                }
                None => tokio::time::sleep(SCAN_INTERVAL).await,
            }
            match tokio::task::spawn_blocking(reap_orphans).await {
                Ok(n) if n > 0 => tracing::debug!(reaped = n, "reaper: collected orphans"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reaper: scan task failed"),
            }
            tokio::time::sleep(MIN_SCAN_GAP).await;
        }
    });
}

/// One scan: waits for every zombie child of PID 1 that lohar did not spawn and
/// drops registry entries whose process is gone. Returns how many were reaped.
pub fn reap_orphans() -> usize {
    let mut reg = lock();
    let mut reaped: usize = 0;
    for (pid, start) in zombie_children_of_init() {
        if let Some(known) = reg.get(&pid) {
            if known.is_none() || *known == Some(start) {
                continue; // ours: tokio will collect it
            }
            reg.remove(&pid); // the pid was recycled; the old child is gone
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(st) => {
                reaped = reaped.saturating_add(1);
                tracing::debug!(pid, status = ?st, "reaper: reaped orphan");
                record_exit(st);
            }
            // Not our child after all (raced with its own exit handling).
            Err(nix::errno::Errno::ECHILD) => {}
            Err(e) => tracing::warn!(pid, error = %e, "reaper: waitpid failed"),
        }
    }
    reg.retain(|pid, start| match read_stat(*pid) {
        Some(st) => start.is_none() || *start == Some(st.start_time),
        None => false,
    });
    reaped
}

/// The fields of `/proc/<pid>/stat` the reaper needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Process state letter (field 3): `R`, `S`, `Z` for a zombie, …
    pub state: char,
    /// Parent's pid (field 4).
    pub ppid: i32,
    /// Start time in clock ticks since boot (field 22); with the pid, tells
    /// a recycled pid from the process first seen under it.
    pub start_time: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_stat(s: &str) -> Option<Stat> {
    let (_comm, rest) = s.rsplit_once(')')?;
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    // After state (3) and ppid (4), start time is field 22: skip fields 5..=21.
    let start_time = f.nth(17)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        start_time,
    })
}

fn read_stat(pid: i32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// (pid, start time) of every zombie whose parent is PID 1.
fn zombie_children_of_init() -> Vec<(i32, u64)> {
    let dir = match std::fs::read_dir("/proc") {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "reaper: cannot list /proc");
            return Vec::new();
        }
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let st = read_stat(pid)?;
            (st.state == 'Z' && st.ppid == 1).then_some((pid, st.start_time))
        })
        .collect()
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)] // test data of known, small sizes
mod tests {
    use super::*;

    #[test]
    fn parses_plain_stat() {
        let s = "42 (sleep) Z 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        assert_eq!(
            parse_stat(s),
            Some(Stat {
                state: 'Z',
                ppid: 1,
                start_time: 12345
            })
        );
    }

    #[test]
    fn parses_comm_with_spaces_and_parens() {
        let s = "7 (a b) (c)) S 3 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 999 1 2 3";
        let st = parse_stat(s).expect("parse");
        assert_eq!((st.state, st.ppid, st.start_time), ('S', 3, 999));
    }

    #[test]
    fn rejects_truncated_stat() {
        assert_eq!(parse_stat("1 (x) S 0 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_stat_is_readable() {
        let st = read_stat(std::process::id() as i32).expect("own stat");
        assert!(st.start_time > 0);
        assert!(matches!(st.state, 'R' | 'S'));
    }
}
