//! Building child processes: environment layering, identity, working directory.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use bhatti_protocol::messages::ErrorCode;

use crate::agent::{Agent, RunAs};
use crate::fail::Fail;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a child relates to the agent's process groups and sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leader {
    /// Own process group (one-shot exec: KILL hits the whole group).
    Group,
    /// New session (detached exec, piped sessions).
    Session,
    /// New session with the stdin tty as controlling terminal (TTY sessions).
    SessionWithTty,
}

/// A `std::process::Command` for `argv` with the agent's environment rules:
/// defaults, then config env, then the request's env.
pub fn command(
    agent: &Agent,
    argv: &[String],
    req_env: &BTreeMap<String, String>,
    cwd: &str,
    run_as: Option<&RunAs>,
    leader: Leader,
) -> std::process::Command {
    let cfg = agent.config();
    let home = run_as.map(|r| r.home.clone()).unwrap_or(cfg.home.clone());
    let mut env: BTreeMap<String, String> = [
        ("PATH", DEFAULT_PATH),
        ("TERM", "xterm-256color"),
        ("HOME", home.as_str()),
        ("LANG", "en_US.UTF-8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(f) = &cfg.env_file {
        if let Ok(text) = std::fs::read_to_string(f) {
            env.extend(crate::systemd::manager::parse_env_file(&text));
        }
    }
    env.extend(agent.env());
    env.extend(req_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut cmd = match find_in_path(&argv[0], env.get("PATH").map(String::as_str)) {
        Some(found) => {
            let mut cmd = std::process::Command::new(found);
            cmd.arg0(&argv[0]);
            cmd
        }
        None => std::process::Command::new(&argv[0]),
    };
    cmd.args(&argv[1..]);
    cmd.env_clear();
    cmd.envs(&env);
    if !cwd.is_empty() {
        cmd.current_dir(cwd);
    } else if let Some(d) = &cfg.default_cwd {
        cmd.current_dir(d);
    }
    if let Some(r) = run_as {
        if nix::unistd::geteuid().is_root() {
            // The user's supplementary groups as a login would give them
            // (`docker`, `sudo`, `fuse` …), read at every spawn so a
            // `usermod -aG` inside the sandbox counts from the next exec.
            // std sets the ids before `pre_exec` hooks and has no stable
            // way to set groups, so the hook does all three, in order.
            let groups: Vec<libc::gid_t> = supplementary_groups(r.uid, r.gid);
            let (uid, gid) = (r.uid, r.gid);
            // SAFETY: only async-signal-safe calls (setgroups, setgid,
            // setuid) between fork and exec; `groups` was allocated before
            // the fork and is only read.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                        || libc::setgid(gid) < 0
                        || libc::setuid(uid) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        } else {
            cmd.uid(r.uid).gid(r.gid);
        }
    }
    match leader {
        Leader::Group => {
            cmd.process_group(0);
        }
        Leader::Session | Leader::SessionWithTty => {
            let tty = leader == Leader::SessionWithTty;
            // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if tty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
    cmd
}

/// The file `execvp` would run for `name` under the child's `PATH`: the
/// first executable regular file of that name in an absolute `PATH`
/// directory. A program given as a path is what std can start with
/// `posix_spawn` (a vfork-style clone) where a bare name under a changed
/// `PATH` makes it fork the agent; a child that switches user forks anyway.
/// `None` (a name with a `/`, no `PATH`, a relative `PATH` entry, nothing
/// found): std searches as before, and reports the failure as before.
fn find_in_path(name: &str, path: Option<&str>) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let dirs: Vec<&str> = path?.split(':').collect();
    // An empty or relative entry means "relative to the cwd": std's search
    // handles that, and so it keeps it.
    if dirs.iter().any(|d| !d.starts_with('/')) {
        return None;
    }
    let found = dirs
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })?;
    // execvp runs a file the kernel cannot (a script without `#!`) with
    // /bin/sh; posix_spawn does not. Such files keep execvp.
    let mut head = [0u8; 4];
    let n = std::fs::File::open(&found)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .ok()?;
    let runnable = head[..n].starts_with(b"#!") || head[..n] == *b"\x7fELF";
    runnable.then_some(found)
}

/// `gid` and the groups `/etc/group` lists the user of `uid` in (by the
/// name `/etc/passwd` gives that uid).
fn supplementary_groups(uid: u32, gid: u32) -> Vec<libc::gid_t> {
    let mut out = vec![gid];
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return out;
    };
    let uid_s = uid.to_string();
    let Some(name) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2) == Some(&uid_s.as_str())).then(|| f.first().map(|n| n.to_string()))?
    }) else {
        return out;
    };
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    for l in groups.lines() {
        let f: Vec<&str> = l.split(':').collect();
        let (Some(g), Some(members)) = (f.get(2).and_then(|g| g.parse::<u32>().ok()), f.get(3))
        else {
            continue;
        };
        if members.split(',').any(|m| m.trim() == name) && !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

/// The identity for a request: the agent's configured user.
pub fn default_run_as(agent: &Agent) -> Option<RunAs> {
    agent.config().run_as.clone()
}

/// The identity a request asks for: `user` (a name or uid from the guest's
/// `/etc/passwd`, or `uid[:gid]`) or, when empty, the sandbox's. An agent
/// that is not root can only be itself.
pub fn run_as_for(agent: &Agent, user: &str) -> Result<Option<RunAs>, Fail> {
    if user.is_empty() {
        return Ok(default_run_as(agent));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    // Well-formed, but not a user of this guest: what the request names is
    // missing (404 at the API), not malformed.
    let r = RunAs::lookup(user, &passwd).ok_or_else(|| {
        Fail::new(
            bhatti_protocol::messages::ErrorCode::NoSuchUser,
            format!("no user {user:?} in the sandbox"),
        )
    })?;
    let me = nix::unistd::geteuid();
    if me.is_root() {
        return Ok(Some(r));
    }
    if r.uid == me.as_raw() {
        // Itself: nothing to switch.
        return Ok(None);
    }
    Err(Fail::new(
        ErrorCode::PermissionDenied,
        format!("cannot run as {user:?}: the agent is not root"),
    ))
}

/// Starts `cmd` under tokio. Every child lohar creates goes through here, so that
/// in guest mode the zombie reaper knows it is lohar's own and leaves its exit
/// status to tokio (see [`crate::guest::reaper`]).
pub fn spawn(cmd: std::process::Command) -> std::io::Result<tokio::process::Child> {
    crate::guest::reaper::spawn_tracked(move || tokio::process::Command::from(cmd).spawn())
}

/// Waits for a child started by [`spawn`] and tells the reaper it was collected.
pub async fn wait(child: &mut tokio::process::Child) -> std::io::Result<std::process::ExitStatus> {
    let pid = child.id();
    let status = child.wait().await;
    crate::guest::reaper::untrack(pid);
    status
}

/// Signals a whole process group; a group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: Signal) {
    if pgid <= 0 {
        return;
    }
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// Exit code as the reference reports it: the status, or 128 + signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => s.saturating_add(128),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test panics to report its failure
    use super::find_in_path;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn programs_are_found_as_execvp_would() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap().to_string();
        let put = |name: &str, body: &[u8], mode: u32| {
            let p = d.path().join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let script = put("withbang", b"#!/bin/sh\necho hi\n", 0o755);
        put("nobang", b"echo hi\n", 0o755);
        put("notexec", b"#!/bin/sh\n", 0o644);
        let path = format!("{dir}:/usr/bin:/bin");
        assert_eq!(find_in_path("withbang", Some(&path)), Some(script));
        // Left to execvp: its /bin/sh fallback for files without `#!`.
        assert_eq!(find_in_path("nobang", Some(&path)), None);
        // Not executable here: the search goes on (and finds nothing).
        assert_eq!(find_in_path("notexec", Some(&path)), None);
        // ELF binaries are found in later directories.
        let sh = find_in_path("sh", Some(&path)).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        // Paths, relative PATH entries and no PATH: std's own search.
        assert_eq!(find_in_path("./withbang", Some(&path)), None);
        assert_eq!(find_in_path("withbang", Some(&format!("bin:{dir}"))), None);
        assert_eq!(find_in_path("withbang", Some(&format!(":{dir}"))), None);
        assert_eq!(find_in_path("withbang", None), None);
    }
}
