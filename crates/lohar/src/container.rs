//! Container mode: lohar as PID 1 (the entrypoint) of a Docker sandbox.
//!
//! The host bind-mounts one directory per sandbox at `LOHAR_SOCK_DIR`
//! (default `/run/bhatti`, mode 0700 root, so the sandbox user cannot look in).
//! Everything secret comes through files in it, never through the container's
//! environment (which `docker inspect` shows):
//!
//! | variable          | meaning |
//! |-------------------|---------|
//! | `LOHAR_SOCK_DIR`  | the bind-mounted directory; lohar listens on `agent.sock` and `forward.sock` in it |
//! | `LOHAR_TOKEN_FILE`| file holding the agent token (0600 root); required unless `LOHAR_NO_TOKEN=1` |
//! | `LOHAR_ENV_FILE`  | optional `KEY=VALUE` lines: environment for children (see [`parse_env_file`]) |
//! | `LOHAR_INIT_FILE` | optional file with the `init` script (run as the `init` session) |
//! | `LOHAR_INIT`      | the `init` script inline, when there is no `LOHAR_INIT_FILE` |
//! | `LOHAR_USER`      | `root`, `lohar` (uid 1000, the default), or an image's user (name, uid, `uid:gid` in `/etc/passwd`) |
//! | `LOHAR_CWD`       | an image's WorkingDir: the default cwd of execs and shells |
//!
//! The file paths may be relative; they are taken relative to `LOHAR_SOCK_DIR`.
//!
//! Unlike guest mode nothing is mounted and no network is configured (Docker
//! did both). As PID 1 of the container's PID namespace lohar still inherits
//! orphans, so the guest's [`reaper`](crate::guest::reaper) runs here too.
//! SIGTERM/SIGINT (`docker stop`) end lohar cleanly: it syncs, removes its
//! sockets and exits 0, and the kernel then kills what is left in the container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::guest::{power, reaper, READY_LINE};
use crate::{Agent, AgentConfig};

/// Default bind-mount point of the per-sandbox host directory.
pub const DEFAULT_SOCK_DIR: &str = "/run/bhatti";
/// Control socket name inside the directory.
pub const CONTROL_SOCK: &str = "agent.sock";
/// Forward socket name inside the directory.
pub const FORWARD_SOCK: &str = "forward.sock";

/// Container-mode settings, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub dir: PathBuf,
    pub token_file: Option<PathBuf>,
    pub no_token: bool,
    pub env_file: Option<PathBuf>,
    pub init_file: Option<PathBuf>,
    pub init: Option<String>,
    /// `root`, `lohar` (the default) or an image's own user.
    pub user: String,
    /// An image's WorkingDir (empty: none).
    pub cwd: String,
}

impl Settings {
    /// From a variable lookup (the process environment in production).
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Settings {
        let dir = PathBuf::from(
            get("LOHAR_SOCK_DIR")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SOCK_DIR.into()),
        );
        let path = |var: &str| {
            get(var).filter(|s| !s.is_empty()).map(|p| {
                let p = PathBuf::from(p);
                if p.is_absolute() {
                    p
                } else {
                    dir.join(p)
                }
            })
        };
        Settings {
            token_file: path("LOHAR_TOKEN_FILE"),
            no_token: get("LOHAR_NO_TOKEN").as_deref() == Some("1"),
            env_file: path("LOHAR_ENV_FILE"),
            init_file: path("LOHAR_INIT_FILE"),
            init: get("LOHAR_INIT").filter(|s| !s.is_empty()),
            user: get("LOHAR_USER").unwrap_or_default(),
            cwd: get("LOHAR_CWD").unwrap_or_default(),
            dir,
        }
    }

    /// Where the control socket is bound.
    pub(crate) fn control_sock(&self) -> PathBuf {
        self.dir.join(CONTROL_SOCK)
    }

    /// Where the forward socket is bound.
    pub(crate) fn forward_sock(&self) -> PathBuf {
        self.dir.join(FORWARD_SOCK)
    }
}

/// Why container mode could not start: a bad file the host wrote, or a
/// socket it cannot serve on.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A line of an env file that is not `KEY=VALUE`.
    #[error("line {line}: {reason}")]
    EnvLine {
        /// 1-based number of the offending line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A file the host named could not be read or is unusable.
    #[error("{what} {}: {reason}", path.display())]
    File {
        /// Which file it is (`token file`, `env file`, `init file`).
        what: &'static str,
        /// The path as resolved against `LOHAR_SOCK_DIR`.
        path: PathBuf,
        /// Why it cannot be used (the I/O error, or e.g. `is empty`).
        reason: String,
    },
    /// Neither a token file nor the explicit opt-out.
    #[error("LOHAR_TOKEN_FILE is not set (LOHAR_NO_TOKEN=1 to serve without a token)")]
    NoToken,
    /// A socket step (remove a stale one, listen, chmod).
    #[error("{what} {}: {source}", path.display())]
    Socket {
        /// The step that failed (`remove stale`, `listen on`, `chmod`).
        what: &'static str,
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn file_error(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> ContainerError {
    ContainerError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Parses an env file: one `KEY=VALUE` per line; blank lines and lines starting
/// with `#` are skipped. In values, `\n` stands for a newline and `\\` for a
/// backslash (so any value fits on one line); other backslashes are kept.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, ContainerError> {
    let mut env = BTreeMap::new();
    // Lines numbered from 1 (a text has fewer lines than bytes: no overflow).
    for (n, line) in (1_usize..).zip(text.lines()) {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ContainerError::EnvLine {
                line: n,
                reason: format!("no '=' in {line:?}"),
            });
        };
        if k.is_empty() || k.contains('\0') {
            return Err(ContainerError::EnvLine {
                line: n,
                reason: format!("bad variable name {k:?}"),
            });
        }
        env.insert(k.to_string(), unescape(v));
    }
    Ok(env)
}

/// The inverse of [`parse_env_file`]'s unescaping, for writers of env files.
pub fn escape_env_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut it = v.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The agent configuration for these settings, reading the token, env and init
/// files. A token file that is named but unreadable is an error: lohar never
/// serves without the token the host configured.
pub(crate) fn load(s: &Settings) -> Result<(AgentConfig, Option<String>), ContainerError> {
    let token = match &s.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| file_error("token file", p, e))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(file_error("token file", p, "is empty"));
            }
            Some(t)
        }
        None if s.no_token => None,
        None => return Err(ContainerError::NoToken),
    };
    let env = match &s.env_file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| file_error("env file", p, e))?;
            parse_env_file(&text).map_err(|e| file_error("env file", p, e))?
        }
        None => BTreeMap::new(),
    };
    let init = match &s.init_file {
        Some(p) if p.exists() => {
            Some(std::fs::read_to_string(p).map_err(|e| file_error("init file", p, e))?)
        }
        _ => s.init.clone(),
    }
    .filter(|i| !i.trim().is_empty());
    let cfg = AgentConfig {
        token,
        env,
        ..AgentConfig::for_sandbox(&s.user, &s.cwd)
    };
    Ok((cfg, init))
}

/// Binds a Unix socket, replacing a stale one, readable only by root.
fn bind(path: &Path) -> Result<tokio::net::UnixListener, ContainerError> {
    let socket = |what| {
        move |source| ContainerError::Socket {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket("remove stale")(e)),
    }
    let l = tokio::net::UnixListener::bind(path).map_err(socket("listen on"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(socket("chmod"))?;
    Ok(l)
}

/// Runs container mode until SIGTERM/SIGINT.
pub fn run() -> ExitCode {
    if let Err(e) = std::env::set_current_dir("/") {
        eprintln!("lohar: chdir /: {e}");
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let settings = Settings::from_lookup(|k| std::env::var(k).ok());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lohar: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(serve(settings));
    // Blocking tasks (a PTY reader, say) must not keep PID 1 alive.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match res {
        Ok(sig) => {
            eprintln!("lohar: {sig}: exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lohar: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(s: Settings) -> Result<&'static str, ContainerError> {
    // Handlers first: PID 1 ignores signals it has no handler for.
    let shutdown = power::shutdown_signal();
    tokio::pin!(shutdown);
    if std::process::id() == 1 {
        reaper::start();
    }
    let (cfg, init) = load(&s)?;
    let init_run_as = cfg.run_as.clone();
    let agent = Agent::new(cfg);
    let (ctl_path, fwd_path) = (s.control_sock(), s.forward_sock());
    let ctl = bind(&ctl_path)?;
    let fwd = bind(&fwd_path)?;
    tokio::spawn(agent.clone().run_unix(fwd, true));
    tokio::spawn(agent.clone().run_unix(ctl, false));
    println!("{READY_LINE}");
    if let Some(init) = init {
        agent.start_init(&init, init_run_as);
    }
    let sig = shutdown.await;
    nix::unistd::sync();
    let _ = std::fs::remove_file(&ctl_path);
    let _ = std::fs::remove_file(&fwd_path);
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunAs;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn settings_defaults_and_relative_paths() {
        let s = Settings::from_lookup(lookup(&[("LOHAR_TOKEN_FILE", "token")]));
        assert_eq!(s.dir, PathBuf::from("/run/bhatti"));
        assert_eq!(s.token_file, Some(PathBuf::from("/run/bhatti/token")));
        assert_eq!(s.control_sock(), PathBuf::from("/run/bhatti/agent.sock"));
        assert_eq!(s.forward_sock(), PathBuf::from("/run/bhatti/forward.sock"));
        assert_eq!(s.user, "");
        let s = Settings::from_lookup(lookup(&[
            ("LOHAR_SOCK_DIR", "/x"),
            ("LOHAR_ENV_FILE", "/abs/env"),
            ("LOHAR_USER", "root"),
        ]));
        assert_eq!(s.env_file, Some(PathBuf::from("/abs/env")));
        assert_eq!(s.token_file, None);
        assert_eq!(s.user, "root");
    }

    #[test]
    fn env_file_round_trip() {
        let text = format!(
            "# comment\nA=1\n\nB=x=y\nC={}\n",
            escape_env_value("two\nlines \\n end\\")
        );
        let env = parse_env_file(&text).unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["C"], "two\nlines \\n end\\");
        assert!(parse_env_file("novalue\n").is_err());
        assert!(parse_env_file("=v\n").is_err());
    }

    #[test]
    fn load_requires_a_token_unless_told() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_string_lossy().into_owned();
        let s = Settings::from_lookup(lookup(&[("LOHAR_SOCK_DIR", &d)]));
        assert!(matches!(load(&s), Err(ContainerError::NoToken)));
        let s = Settings::from_lookup(lookup(&[
            ("LOHAR_SOCK_DIR", &d),
            ("LOHAR_TOKEN_FILE", "token"),
        ]));
        assert!(matches!(
            load(&s),
            Err(ContainerError::File {
                what: "token file",
                ..
            })
        ));
        std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        std::fs::write(dir.path().join("env"), "K=v\n").unwrap();
        std::fs::write(dir.path().join("init"), "echo hi").unwrap();
        let s = Settings::from_lookup(lookup(&[
            ("LOHAR_SOCK_DIR", &d),
            ("LOHAR_TOKEN_FILE", "token"),
            ("LOHAR_ENV_FILE", "env"),
            ("LOHAR_INIT_FILE", "init"),
        ]));
        let (cfg, init) = load(&s).unwrap();
        assert_eq!(cfg.token.as_deref(), Some("s3cret"));
        assert_eq!(cfg.env["K"], "v");
        assert_eq!(cfg.run_as, Some(RunAs::lohar()));
        assert!(cfg.sync_after_exec);
        assert_eq!(cfg.file_user, Some((1000, 1000)));
        assert_eq!(init.as_deref(), Some("echo hi"));
        let s = Settings::from_lookup(lookup(&[("LOHAR_SOCK_DIR", &d), ("LOHAR_NO_TOKEN", "1")]));
        assert_eq!(load(&s).unwrap().0.token, None);
    }
}
