//! `lohar spawn`: the private helper every service process starts through.
//!
//! A service's process must be in its unit's cgroup before it runs a single
//! instruction of the service's code, or a fork in that window escapes
//! `stop` (the placement race). So the manager never spawns the program
//! itself: it spawns `lohar spawn --cgroup <dir> [--user U] -- argv…`, which
//! moves itself into the cgroup, starts a new session, drops to the unit's
//! user and group, and only then `exec`s the program, keeping its pid (the
//! pid the manager watches). It also fixes `LISTEN_PID` and friends to its
//! own pid, which only the process itself can know before `exec`.

use std::ffi::CString;
use std::process::ExitCode;

/// The parsed command line of the helper.
#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    cgroup: Option<String>,
    user: Option<String>,
    group: Option<String>,
    argv0: Option<String>,
    rlimits: Vec<(String, String)>,
    umask: Option<u32>,
    argv: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut val = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match arg.as_str() {
            "--cgroup" => a.cgroup = Some(val("--cgroup")?),
            "--user" => a.user = Some(val("--user")?),
            "--group" => a.group = Some(val("--group")?),
            "--argv0" => a.argv0 = Some(val("--argv0")?),
            "--rlimit" => {
                let v = val("--rlimit")?;
                let (k, lim) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--rlimit {v:?}: expected NAME=SOFT:HARD"))?;
                a.rlimits.push((k.to_string(), lim.to_string()));
            }
            "--umask" => {
                let v = val("--umask")?;
                a.umask = Some(
                    u32::from_str_radix(&v, 8).map_err(|_| format!("--umask {v:?}: not octal"))?,
                );
            }
            "--" => {
                a.argv = it.cloned().collect();
                break;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.argv.is_empty() {
        return Err("usage: lohar spawn [--cgroup DIR] [--user U] [--group G] [--argv0 A] -- PROGRAM [ARGS…]".into());
    }
    Ok(a)
}

/// Resolves a user (name or uid) to (uid, primary gid, name, home, shell).
pub(crate) fn lookup_user(u: &str) -> Result<nix::unistd::User, String> {
    let found = match u.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(u),
    };
    match found {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(format!("no such user {u:?}")),
        Err(e) => Err(format!("looking up user {u:?}: {e}")),
    }
}

fn lookup_group(g: &str) -> Result<nix::unistd::Gid, String> {
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(gid));
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(grp)) => Ok(grp.gid),
        Ok(None) => Err(format!("no such group {g:?}")),
        Err(e) => Err(format!("looking up group {g:?}: {e}")),
    }
}

/// `NOFILE` → the resource; `infinity` for NOFILE is the kernel's
/// `nr_open`, as systemd does (RLIM_INFINITY is refused for it).
fn set_rlimit(name: &str, lim: &str) -> Result<(), String> {
    use nix::sys::resource::{setrlimit, Resource};
    let res = match name {
        "NOFILE" => Resource::RLIMIT_NOFILE,
        "NPROC" => Resource::RLIMIT_NPROC,
        "CORE" => Resource::RLIMIT_CORE,
        "MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "STACK" => Resource::RLIMIT_STACK,
        other => return Err(format!("unknown rlimit {other}")),
    };
    let side = |s: &str| -> Result<u64, String> {
        if s == "infinity" {
            if name == "NOFILE" {
                return std::fs::read_to_string("/proc/sys/fs/nr_open")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| "read /proc/sys/fs/nr_open".to_string());
            }
            return Ok(libc::RLIM_INFINITY);
        }
        s.parse()
            .map_err(|_| format!("rlimit {name}: bad value {s:?}"))
    };
    let (soft, hard) = lim.split_once(':').unwrap_or((lim, lim));
    setrlimit(res, side(soft)?, side(hard)?).map_err(|e| format!("setrlimit {name}={lim}: {e}"))
}

fn run(a: Args) -> Result<std::convert::Infallible, (u8, String)> {
    let fail = |code: u8| move |e: String| (code, e);
    for (k, v) in &a.rlimits {
        // systemd's code 205: LIMITS.
        set_rlimit(k, v).map_err(fail(205))?;
    }
    if let Some(m) = a.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    }
    if let Some(cg) = &a.cgroup {
        // "0" moves the writing process itself.
        std::fs::write(format!("{cg}/cgroup.procs"), "0")
            .map_err(|e| (1, format!("join cgroup {cg}: {e}")))?;
    }
    let pid = std::process::id().to_string();
    if std::env::var_os("LISTEN_FDS").is_some() {
        std::env::set_var("LISTEN_PID", &pid);
    }
    // A new session: the service is nobody's job-control child, and without
    // cgroups its session is what `stop` signals.
    let _ = nix::unistd::setsid();
    if let Some(u) = &a.user {
        let user = lookup_user(u).map_err(fail(217))?;
        let gid = match &a.group {
            Some(g) => lookup_group(g).map_err(fail(216))?,
            None => user.gid,
        };
        let cname = CString::new(user.name.as_str()).map_err(|e| (217, e.to_string()))?;
        nix::unistd::initgroups(&cname, gid).map_err(|e| (216, format!("initgroups: {e}")))?;
        nix::unistd::setgid(gid).map_err(|e| (216, format!("setgid: {e}")))?;
        nix::unistd::setuid(user.uid).map_err(|e| (217, format!("setuid: {e}")))?;
    } else if let Some(g) = &a.group {
        let gid = lookup_group(g).map_err(fail(216))?;
        nix::unistd::setgroups(&[gid]).map_err(|e| (216, format!("setgroups: {e}")))?;
        nix::unistd::setgid(gid).map_err(|e| (216, format!("setgid: {e}")))?;
    }
    let prog = CString::new(a.argv[0].as_str()).map_err(|e| (203, e.to_string()))?;
    let mut argv: Vec<CString> = Vec::with_capacity(a.argv.len());
    argv.push(
        CString::new(a.argv0.as_deref().unwrap_or(&a.argv[0])).map_err(|e| (203, e.to_string()))?,
    );
    for w in &a.argv[1..] {
        argv.push(CString::new(w.as_str()).map_err(|e| (203, e.to_string()))?);
    }
    match nix::unistd::execvp(&prog, &argv) {
        Ok(never) => match never {},
        // systemd's codes: 203 = EXEC.
        Err(e) => Err((203, format!("exec {}: {e}", a.argv[0]))),
    }
}

/// Entry point for `lohar spawn …` (never returns on success).
pub fn main(args: &[String]) -> ExitCode {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lohar spawn: {e}");
            return ExitCode::from(2);
        }
    };
    match run(a) {
        Ok(never) => match never {},
        Err((code, e)) => {
            eprintln!("lohar spawn: {e}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_flags_then_argv() {
        let a = parse(&s(&[
            "--cgroup",
            "/cg",
            "--user",
            "www-data",
            "--rlimit",
            "NOFILE=1024:4096",
            "--umask",
            "007",
            "--",
            "/bin/x",
            "--user",
        ]))
        .unwrap();
        assert_eq!(a.rlimits, [("NOFILE".to_string(), "1024:4096".to_string())]);
        assert_eq!(a.umask, Some(0o7));
        assert_eq!(a.cgroup.as_deref(), Some("/cg"));
        assert_eq!(a.user.as_deref(), Some("www-data"));
        assert_eq!(a.argv, ["/bin/x", "--user"]);
        assert!(parse(&s(&["--cgroup"])).is_err());
        assert!(parse(&s(&["--"])).is_err());
        assert!(parse(&s(&["--bogus", "--", "x"])).is_err());
    }
}
