//! A VMM child process: spawning it (with its output appended to a log
//! file), signalling it race-free through a pidfd, reaping it on a
//! background task, and reading the tail of its log. A VMM that an earlier
//! daemon process started is *adopted*: it is not our child, so its end is
//! seen through its pidfd turning readable, without an exit status.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, warn};

use super::consts::{EXIT_SETTLE, FAILED_LAUNCH_GRACE, MAX_TAIL_BYTES, REAP_TIMEOUT};
use super::{VmExit, VmmError};

/// A spawned (or adopted) VMM. Dropping it SIGKILLs the process if it
/// still runs, unless it was [released](VmmProcess::release); the
/// background task reaps it.
#[derive(Debug)]
pub(crate) struct VmmProcess {
    binary: String,
    pid: u32,
    /// `None` on kernels without `pidfd_open` (< 5.3): plain `kill(2)`.
    pidfd: Option<OwnedFd>,
    exit: watch::Receiver<Option<VmExit>>,
    log_path: PathBuf,
    /// Size of the log when this process started: its tail starts here.
    log_offset: u64,
    /// Set when the daemon leaves the VMM running on purpose.
    released: AtomicBool,
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: plain syscall; on success it returns a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    let fd = i32::try_from(fd).ok()?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl VmmProcess {
    /// Starts `cmd` (stdin from /dev/null, stdout and stderr appended to
    /// `log_path`, in its own process group so a terminal's Ctrl-C aimed at
    /// the daemon does not reach it). `cmd` may carry `pre_exec` hooks (e.g.
    /// entering a network namespace). Must run inside a tokio runtime.
    pub(crate) fn spawn(
        mut cmd: std::process::Command,
        binary: &str,
        log_path: &Path,
    ) -> Result<Self, VmmError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| VmmError::io(format!("open {}", log_path.display()), e))?;
        let log_offset = log
            .metadata()
            .map_err(|e| VmmError::io(format!("stat {}", log_path.display()), e))?
            .len();
        let log2 = log
            .try_clone()
            .map_err(|e| VmmError::io(format!("dup {}", log_path.display()), e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log2))
            .stderr(Stdio::from(log))
            .process_group(0);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|source| VmmError::Spawn {
            binary: binary.to_string(),
            source,
        })?;
        let Some(pid) = child.id() else {
            // Already reaped: cannot happen before the first poll.
            return Err(VmmError::Protocol(format!(
                "{binary} has no pid after spawn"
            )));
        };
        // Nothing reaps the child before the waiter task below runs, so the
        // pid still names our process here.
        let pidfd = pidfd_open(pid);
        let (tx, rx) = watch::channel(None);
        let name = binary.to_string();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(st) => VmExit {
                    code: st.code(),
                    signal: st.signal(),
                },
                Err(e) => {
                    warn!(binary = %name, pid, error = %e, "waiting for VMM process");
                    VmExit {
                        code: None,
                        signal: None,
                    }
                }
            };
            debug!(binary = %name, pid, %exit, "VMM process exited");
            let _ = tx.send(Some(exit));
        });
        Ok(VmmProcess {
            binary: binary.to_string(),
            pid,
            pidfd,
            exit: rx,
            log_path: log_path.to_path_buf(),
            log_offset,
            released: AtomicBool::new(false),
        })
    }

    /// Takes over a running VMM that is not our child (started by an
    /// earlier daemon process). Its exit is noticed through its pidfd; the
    /// exit status is not ours to read, so it is reported as unknown.
    /// Must run inside a tokio runtime.
    pub(crate) fn adopt(pid: u32, binary: &str, log_path: &Path) -> Result<Self, VmmError> {
        let pidfd = pidfd_open(pid).ok_or_else(|| {
            VmmError::io(
                format!("pidfd_open({pid}) of {binary}"),
                std::io::Error::last_os_error(),
            )
        })?;
        let watch_fd = pidfd
            .try_clone()
            .map_err(|e| VmmError::io(format!("dup pidfd of {binary}"), e))?;
        // SAFETY: `watch_fd` is an OwnedFd moved into the AsyncFd, which
        // owns it (open, the same descriptor) for its whole lifetime.
        let ready = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                watch_fd,
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(|e| VmmError::io(format!("watch pidfd of {binary}"), e.into_parts().1))?;
        let (tx, rx) = watch::channel(None);
        let name = binary.to_string();
        tokio::spawn(async move {
            // A pidfd becomes readable once its process has terminated.
            let _ = ready.readable().await;
            let exit = VmExit {
                code: None,
                signal: None,
            };
            debug!(binary = %name, pid, "adopted VMM process exited");
            let _ = tx.send(Some(exit));
        });
        let log_offset = std::fs::metadata(log_path).map(|m| m.len()).unwrap_or(0);
        Ok(VmmProcess {
            binary: binary.to_string(),
            pid,
            pidfd: Some(pidfd),
            exit: rx,
            log_path: log_path.to_path_buf(),
            log_offset,
            released: AtomicBool::new(false),
        })
    }

    /// Leaves the process running when this handle drops (a daemon that
    /// exits for an upgrade; its successor adopts the VMM).
    pub(crate) fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }

    /// Turns `Some` once the process has exited.
    pub(crate) fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit.clone()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// How it ended, if it has been reaped.
    pub(crate) fn exited(&self) -> Option<VmExit> {
        *self.exit.borrow()
    }

    /// Waits for the exit (for ever).
    pub(crate) async fn wait(&self) -> VmExit {
        wait_for_exit(self.exit.clone()).await
    }

    /// Waits for the exit at most `timeout`.
    pub(crate) async fn wait_timeout(&self, timeout: Duration) -> Option<VmExit> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    /// Sends `sig` unless the process is already reaped.
    pub(crate) fn signal(&self, sig: i32) -> Result<(), VmmError> {
        if self.exited().is_some() {
            return Ok(());
        }
        let rc = match &self.pidfd {
            // SAFETY: plain syscall on a descriptor we own.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            None => {
                let pid = libc::pid_t::try_from(self.pid)
                    .map_err(|_| VmmError::Protocol(format!("pid {} out of range", self.pid)))?;
                // SAFETY: plain syscall; the child is not reaped yet (checked
                // above), so the pid is still ours.
                i64::from(unsafe { libc::kill(pid, sig) })
            }
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        Err(VmmError::io(
            format!("signal {sig} to {} (pid {})", self.binary, self.pid),
            err,
        ))
    }

    /// SIGTERM, SIGKILL after `grace`, then waits until reaped.
    pub(crate) async fn terminate(&self, grace: Duration) -> Result<VmExit, VmmError> {
        if let Some(e) = self.exited() {
            return Ok(e);
        }
        self.signal(libc::SIGTERM)?;
        if let Some(e) = self.wait_timeout(grace).await {
            return Ok(e);
        }
        warn!(binary = %self.binary, pid = self.pid, "VMM ignored SIGTERM; sending SIGKILL");
        self.signal(libc::SIGKILL)?;
        self.wait_timeout(REAP_TIMEOUT)
            .await
            .ok_or_else(|| VmmError::Timeout {
                what: format!("reaping {} (pid {}) after SIGKILL", self.binary, self.pid),
                timeout: REAP_TIMEOUT,
            })
    }

    /// The last `bytes` bytes this process wrote to its log.
    pub(crate) fn log_tail(&self, bytes: usize) -> String {
        file_tail(&self.log_path, bytes, self.log_offset)
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if self.exited().is_none() && !self.released.load(Ordering::SeqCst) {
            if let Err(e) = self.signal(libc::SIGKILL) {
                warn!(error = %e, "killing VMM on drop");
            }
        }
    }
}

/// The last `bytes` bytes (at most 1 MiB) of `path`, not before offset
/// `from`, as lossy UTF-8; empty if unreadable.
/// Waits until an exit watch turns `Some`: how the process ended, or
/// "unknown" when the reaper task is gone (the runtime is shutting down).
pub(crate) async fn wait_for_exit(mut rx: watch::Receiver<Option<VmExit>>) -> VmExit {
    let unknown = VmExit {
        code: None,
        signal: None,
    };
    match rx.wait_for(|e| e.is_some()).await.map(|e| *e) {
        Ok(e) => e.unwrap_or(unknown),
        Err(_) => rx.borrow().unwrap_or(unknown),
    }
}

/// Which launch of a VMM failed: it decides the error variant and the words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A cold boot from a kernel.
    Boot,
    /// A restore from a snapshot.
    Restore,
}

impl Phase {
    /// The error of this phase, with the VMM's and the guest's log tails.
    pub(crate) fn error(self, reason: String, vmm_log: String, console: String) -> VmmError {
        match self {
            Phase::Boot => VmmError::Boot {
                reason,
                vmm_log,
                console,
            },
            Phase::Restore => VmmError::Restore {
                reason,
                vmm_log,
                console,
            },
        }
    }

    /// "`vmm` exited during start-up (…)": the reason when the VMM died by
    /// itself, which says more than the symptom that revealed it.
    pub(crate) fn exited(self, vmm: &str, exit: VmExit) -> String {
        let during = match self {
            Phase::Boot => "start-up",
            Phase::Restore => "restore",
        };
        format!("{vmm} exited during {during} ({exit})")
    }
}

impl VmmProcess {
    /// Stops a VMM whose launch failed. Returns how it ended if it exited by
    /// itself (waiting [`EXIT_SETTLE`] for that first): a VMM that dies on a
    /// bad kernel or stream is usually gone, or about to be, by the time
    /// the symptom shows up.
    pub(crate) async fn stop_failed_launch(&self, vmm: &str) -> Option<VmExit> {
        let self_exit = match self.exited() {
            Some(e) => Some(e),
            None => self.wait_timeout(EXIT_SETTLE).await,
        };
        if let Err(e) = self.terminate(FAILED_LAUNCH_GRACE).await {
            warn!(error = %e, vmm, "stopping a VMM whose launch failed");
        }
        self_exit
    }
}

/// A point a wait gives up at. A configured timeout too large for an
/// [`Instant`] (milliseconds from a config file) never expires instead of
/// overflowing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// `timeout` from now.
    pub(crate) fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now().checked_add(timeout))
    }

    /// Whether it has passed.
    pub(crate) fn passed(self) -> bool {
        self.0.is_some_and(|d| Instant::now() >= d)
    }
}

/// Milliseconds for logs and reports, saturating (a u64 of milliseconds
/// is 584 million years).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn file_tail(path: &Path, bytes: usize, from: u64) -> String {
    let bytes = bytes.min(MAX_TAIL_BYTES) as u64;
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(bytes).max(from).min(len);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity(usize::try_from(len.saturating_sub(start)).unwrap_or(0));
        f.take(bytes).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_default()
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
    fn tail() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("log");
        std::fs::write(&p, b"hello world").unwrap();
        assert_eq!(file_tail(&p, 5, 0), "world");
        assert_eq!(file_tail(&p, 100, 0), "hello world");
        assert_eq!(file_tail(&p, 100, 6), "world");
        assert_eq!(file_tail(&p, 100, 50), "");
        assert_eq!(file_tail(&tmp.path().join("none"), 5, 0), "");
    }

    #[tokio::test]
    async fn spawn_wait_terminate() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let p = VmmProcess::spawn(cmd, "sh", &log).unwrap();
        let e = p.wait().await;
        assert_eq!(e.code, Some(3));
        assert_eq!(p.log_tail(100), "out\nerr\n");

        // A second process appending to the same log sees only its output;
        // one that ignores SIGTERM is SIGKILLed after the grace.
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo second; while :; do sleep 0.05; done",
        ]);
        let p = VmmProcess::spawn(cmd, "sh", &log).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(p.exited().is_none());
        let e = p.terminate(Duration::from_millis(200)).await.unwrap();
        assert_eq!(e.signal, Some(libc::SIGKILL));
        assert_eq!(p.log_tail(100), "second\n");
        // Idempotent.
        p.terminate(Duration::from_millis(10)).await.unwrap();
        p.signal(libc::SIGTERM).unwrap();
    }

    /// A process that is not our child is watched through its pidfd, and
    /// a released handle leaves its process running.
    #[tokio::test]
    async fn adopt_watches_and_release_keeps() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        let own = VmmProcess::spawn(cmd, "sleep", &log).unwrap();
        let adopted = VmmProcess::adopt(own.pid(), "sleep", &log).unwrap();
        assert_eq!(adopted.pid(), own.pid());
        assert!(adopted.exited().is_none());
        adopted.release();
        drop(adopted);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(own.exited().is_none(), "a released handle killed its VMM");
        let again = VmmProcess::adopt(own.pid(), "sleep", &log).unwrap();
        let mut rx = again.exit_watch();
        own.signal(libc::SIGKILL).unwrap();
        own.wait().await;
        let e = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|e| e.is_some()))
            .await
            .expect("the pidfd reported the exit")
            .map(|e| *e)
            .unwrap()
            .unwrap();
        assert_eq!((e.code, e.signal), (None, None), "not ours to read");
    }

    #[tokio::test]
    async fn drop_kills() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        let p = VmmProcess::spawn(cmd, "sleep", &tmp.path().join("log")).unwrap();
        let pid = p.pid() as libc::pid_t;
        let mut rx = p.exit.clone();
        drop(p);
        let e = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|e| e.is_some()))
            .await
            .unwrap()
            .map(|e| *e)
            .unwrap()
            .unwrap();
        assert_eq!(e.signal, Some(libc::SIGKILL));
        // SAFETY: signal 0 only probes.
        assert_eq!(unsafe { libc::kill(pid, 0) }, -1);
    }
}
