//! Entering a network namespace: in a child process before `exec` (for the
//! VMM and for our own `ip`/`iptables` commands), or on a short-lived thread
//! (for in-process work such as sysctl writes or creating sockets).
//!
//! Namespace membership is per thread, so the calling thread (possibly a
//! tokio worker) never changes namespace itself.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::NetError;

fn open_netns(path: &Path) -> Result<File, NetError> {
    File::open(path).map_err(|e| NetError::io(format!("open {}", path.display()), e))
}

fn setns_net(file: &File) -> io::Result<()> {
    // SAFETY: plain syscall on a file descriptor we own; it only changes the
    // calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens the namespace file now and returns a hook that moves the calling
/// thread into it. Meant for `pre_exec` of `std::process::Command` or
/// `tokio::process::Command`: the hook runs in the forked child, before
/// `exec`, and only makes the async-signal-safe `setns` syscall. The
/// descriptor is close-on-exec, so the program does not inherit it.
pub fn setns_hook(
    netns_path: impl AsRef<Path>,
) -> Result<impl FnMut() -> io::Result<()> + Send + Sync + 'static, NetError> {
    let file = open_netns(netns_path.as_ref())?;
    Ok(move || setns_net(&file))
}

/// Makes `cmd` start inside the namespace at `netns_path` (e.g.
/// [`netns_path`](super::netns_path) of a sandbox); used to start the VMM so
/// that it opens `tap0` in the sandbox's namespace.
pub fn enter_netns_on_spawn(
    cmd: &mut Command,
    netns_path: impl AsRef<Path>,
) -> Result<(), NetError> {
    enter_netns_on_spawn_path(cmd, netns_path.as_ref())
}

pub(crate) fn enter_netns_on_spawn_path(cmd: &mut Command, path: &Path) -> Result<(), NetError> {
    let hook = setns_hook(path)?;
    // SAFETY: the hook only calls setns(2), which is async-signal-safe, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has joined the namespace at `netns_path`,
/// and returns its result. Sockets created by `f` stay in that namespace
/// after it returns, so this is how to bind a listener or connect "from"
/// inside a sandbox. A panic in `f` is propagated.
pub fn run_in_netns<T, F>(netns_path: impl AsRef<Path>, f: F) -> Result<T, NetError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = netns_path.as_ref();
    let file = open_netns(path)?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            setns_net(&file).map_err(|e| NetError::io(format!("setns {}", path.display()), e))?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Writes a sysctl under `/proc/sys/` (`key` like `net/ipv4/ip_forward`),
/// inside the given namespace or, with `None`, in the caller's. Skips the
/// write when the value is already set, so the host is only changed when
/// needed.
pub(crate) fn write_sysctl(netns: Option<&Path>, key: &str, value: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/{key}");
    let write = || -> Result<(), NetError> {
        let current =
            std::fs::read_to_string(&path).map_err(|e| NetError::io(format!("read {path}"), e))?;
        if current.trim() == value {
            return Ok(());
        }
        std::fs::write(&path, value).map_err(|e| NetError::io(format!("write {path}={value}"), e))
    };
    match netns {
        Some(ns) => run_in_netns(ns, write)?,
        None => write(),
    }
}
