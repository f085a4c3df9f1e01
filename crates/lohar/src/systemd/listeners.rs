//! The two datagram sockets services talk to: sd_notify and syslog.
//!
//! Both attribute a message to a unit by its sender, never by what the
//! message says: the kernel stamps each datagram with the sender's pid
//! (`SO_PASSCRED`), and the pid's cgroup (or, without cgroups, its
//! session) names the unit. A service cannot report READY for another.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};

use super::manager::{Manager, Notify};
use super::unit::UnitName;

/// The largest datagram read (sd_notify and syslog messages are small).
const MAX_DGRAM: usize = 16 * 1024;

fn bind_dgram(path: &Path) -> std::io::Result<OwnedFd> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let _ = std::fs::remove_file(path);
    let fd = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    setsockopt(&fd, sockopt::PassCred, &true).map_err(std::io::Error::from)?;
    let addr = UnixAddr::new(path).map_err(std::io::Error::from)?;
    bind(fd.as_raw_fd(), &addr).map_err(std::io::Error::from)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(fd)
}

/// Reads one datagram and its sender's pid (blocking).
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<u32>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let msg = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let mut pid = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmCredentials(cred) = c {
                pid = u32::try_from(cred.pid()).ok();
            }
        }
    }
    Ok((msg.bytes, pid))
}

/// Binds both sockets and serves them on their own threads (each read
/// blocks; nothing else shares those threads).
pub fn start(mgr: Arc<Manager>) -> std::io::Result<()> {
    let notify = bind_dgram(&mgr.paths().notify_socket)?;
    let m = mgr.clone();
    std::thread::Builder::new()
        .name("sd-notify".into())
        .spawn(move || resilient("sd_notify", || serve_notify(&m, &notify)))?;
    if let Some(path) = mgr.paths().syslog_socket.clone() {
        let sys = bind_dgram(&path)?;
        let m = mgr.clone();
        std::thread::Builder::new()
            .name("syslog".into())
            .spawn(move || resilient("syslog", || serve_syslog(&m, &sys)))?;
    }
    Ok(())
}

/// Runs a receive loop again if a message made it panic: these threads
/// live in PID 1, and a guest process chooses what they read.
fn resilient(what: &str, serve: impl Fn()) {
    loop {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(&serve)).is_ok() {
            return;
        }
        tracing::error!("the {what} receiver panicked on a message; serving on");
    }
}

fn serve_notify(m: &Manager, fd: &OwnedFd) {
    let mut buf = vec![0u8; MAX_DGRAM];
    loop {
        let Ok((n, pid)) = recv(fd, &mut buf) else {
            continue;
        };
        let Some(pid) = pid else { continue };
        let Some(unit) = m.unit_of_pid(pid) else {
            tracing::debug!(pid, "sd_notify from a process of no unit");
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]);
        let fields = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.notify(&unit, Notify { pid, fields });
    }
}

/// `<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG` → (tag, message).
pub fn parse_syslog(raw: &str) -> (String, String) {
    let mut s = raw.trim_end_matches(['\n', '\0']);
    if let Some(rest) = s.strip_prefix('<') {
        if let Some((_, after)) = rest.split_once('>') {
            s = after;
        }
    }
    // An RFC 3164 timestamp is 15 characters: `Dec  5 00:30:00 `.
    let b = s.as_bytes();
    if b.len() > 16 && b.get(3) == Some(&b' ') && b.get(6) == Some(&b' ') && b.get(9) == Some(&b':')
    {
        // `get`, not indexing: a multi-byte character there is no timestamp.
        if let Some(rest) = s.get(16..) {
            s = rest;
        }
    }
    match s.split_once(": ") {
        Some((tag, msg)) if !tag.contains(' ') => {
            let tag = tag.split('[').next().unwrap_or(tag);
            (tag.to_string(), msg.to_string())
        }
        _ => ("syslog".to_string(), s.to_string()),
    }
}

fn serve_syslog(m: &Manager, fd: &OwnedFd) {
    let mut buf = vec![0u8; MAX_DGRAM];
    loop {
        let Ok((n, pid)) = recv(fd, &mut buf) else {
            continue;
        };
        let raw = String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned();
        let (tag, msg) = parse_syslog(&raw);
        // A unit's processes log into the unit's file; anyone else (a
        // user's shell, a cron job) into `syslog.log`, whatever tag they
        // claim, so no one can write lines into a unit's log by naming it.
        let file = match pid.and_then(|p| m.unit_of_pid(p)) {
            Some(unit) => UnitName::parse(&unit)
                .map(|u| u.log_stem().to_string())
                .unwrap_or(unit),
            None => "syslog".to_string(),
        };
        let who = match pid {
            Some(p) => format!("{tag}[{p}]"),
            None => tag.clone(),
        };
        super::log_line(&m.paths().log_dir.join(format!("{file}.log")), &who, &msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_lines_split_into_tag_and_message() {
        assert_eq!(
            parse_syslog("<30>Dec  5 00:30:00 nginx[42]: started\n"),
            ("nginx".into(), "started".into())
        );
        assert_eq!(parse_syslog("<13>redis: up"), ("redis".into(), "up".into()));
        assert_eq!(
            parse_syslog("no tag here"),
            ("syslog".into(), "no tag here".into())
        );
    }
}
