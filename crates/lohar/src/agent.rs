//! The agent: configuration, shared state, and the accept loops.
//!
//! Listeners are generic over the stream type, so the same connection handling
//! serves Unix sockets (test and container mode), TCP and vsock (guest mode).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::admission::Admission;
use crate::fsuser::FsUser;
use crate::session::Registry;

/// Identity the agent runs children as (uid/gid 1000 in a guest; `None` keeps the
/// agent's own identity, as in test mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Numeric user id children get (`setuid`).
    pub uid: u32,
    /// Numeric primary group id children get (`setgid`).
    pub gid: u32,
    /// Home directory (from `/etc/passwd`, `/` if unlisted): children's `HOME`.
    pub home: String,
}

impl RunAs {
    /// The guest's unprivileged user `lohar`.
    pub fn lohar() -> RunAs {
        RunAs {
            uid: 1000,
            gid: 1000,
            home: "/home/lohar".into(),
        }
    }

    /// An image's `User` (a name, a uid, or `uid:gid` with a name or number
    /// on either side) looked up in `passwd` (the text of the guest's
    /// `/etc/passwd`). A bare uid not in `passwd` runs with gid = uid and
    /// home `/`, as Docker does.
    pub fn lookup(spec: &str, passwd: &str) -> Option<RunAs> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() {
            return None;
        }
        let entry = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let (name, uid, gid, home) = (f.first()?, f.get(2)?, f.get(3)?, f.get(5)?);
            (*name == user || *uid == user).then(|| {
                Some((
                    uid.parse::<u32>().ok()?,
                    gid.parse::<u32>().ok()?,
                    home.to_string(),
                ))
            })?
        });
        let (uid, mut gid, home) = match entry {
            Some(e) => e,
            None => {
                let uid = user.parse::<u32>().ok()?;
                (uid, uid, "/".to_string())
            }
        };
        if let Some(g) = group {
            gid = g.parse::<u32>().ok()?;
        }
        Some(RunAs { uid, gid, home })
    }
}

/// What the agent needs to know to serve.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Per-sandbox token; when set, every connection must start with AUTH.
    pub token: Option<String>,
    /// Environment from the config drive (overrides the defaults, overridden by
    /// per-request env).
    pub env: BTreeMap<String, String>,
    /// Who children run as.
    pub run_as: Option<RunAs>,
    /// `HOME` when `run_as` is `None`.
    pub home: String,
    /// Run `sync()` after a one-shot exec, before EXIT, so files the command wrote
    /// reach the virtual disk before a snapshot. Off in test mode, where it would
    /// flush the whole host.
    pub sync_after_exec: bool,
    /// The uid/gid whose filesystem credentials file operations (read, write,
    /// stat, ls, a detached exec's output file) run with, so the sandbox's code
    /// cannot steer them anywhere it could not go itself (guest and container
    /// mode: 1000, the user children run as; `None`: the agent's own, as in test
    /// mode or for a sandbox whose code runs as root). Only used when the agent
    /// is root.
    pub file_user: Option<(u32, u32)>,
    /// Working directory for `init`.
    pub init_cwd: PathBuf,
    /// Working directory for execs and sessions that name none (an image's
    /// `WorkingDir`); `None`: the agent's own.
    pub default_cwd: Option<PathBuf>,
    /// A `KEY=VALUE` file read at every spawn and layered under the config
    /// env (guest mode: `/run/bhatti/env`, which image tiers and the boot
    /// profile write, e.g. `DISPLAY=:99`); `None`: no such layer.
    pub env_file: Option<PathBuf>,
    /// The agent is the guest's PID 1 (guest mode): an applied
    /// configuration may set the hostname, write files as root and feed the
    /// kernel's entropy pool. Off in test and container mode, where those
    /// belong to the host.
    pub system: bool,
}

impl AgentConfig {
    /// The sandbox's user and working directory as guest and container
    /// mode share them: `user` is `root`, `lohar`/empty (uid 1000), or an
    /// image's own user looked up in `/etc/passwd` (unknown: `lohar`, with
    /// a warning); `cwd` is an image's WorkingDir (made if missing, as
    /// Docker does; empty: `/workspace` for init, the agent's own for
    /// execs). Token, env and the rest keep their defaults.
    pub fn for_sandbox(user: &str, cwd: &str) -> AgentConfig {
        let run_as = match user {
            "root" => None,
            "" | "lohar" => Some(RunAs::lohar()),
            other => Some(
                std::fs::read_to_string("/etc/passwd")
                    .ok()
                    .and_then(|p| RunAs::lookup(other, &p))
                    .unwrap_or_else(|| {
                        tracing::warn!(user = %other, "unknown user; running children as lohar");
                        RunAs::lohar()
                    }),
            ),
        };
        let cwd = Some(PathBuf::from(cwd))
            .filter(|p| p.is_absolute())
            .filter(|p| p.is_dir() || std::fs::create_dir_all(p).is_ok());
        AgentConfig {
            home: run_as
                .as_ref()
                .map_or_else(|| "/root".into(), |r| r.home.clone()),
            sync_after_exec: true,
            // File operations act as the user children run as (none to
            // switch to when that is root).
            file_user: run_as.as_ref().map(|r| (r.uid, r.gid)),
            run_as,
            init_cwd: cwd.clone().unwrap_or_else(|| {
                let w = PathBuf::from("/workspace");
                if w.is_dir() {
                    w
                } else {
                    PathBuf::from("/")
                }
            }),
            default_cwd: cwd,
            ..AgentConfig::default()
        }
    }
}

impl Default for AgentConfig {
    fn default() -> AgentConfig {
        AgentConfig {
            token: None,
            env: BTreeMap::new(),
            run_as: None,
            home: std::env::var("HOME").unwrap_or_else(|_| "/".into()),
            sync_after_exec: false,
            file_user: None,
            init_cwd: PathBuf::from("/workspace"),
            default_cwd: None,
            env_file: None,
            system: false,
        }
    }
}

/// Transport-independent stream the agent serves on.
pub use crate::wire::AgentStream;

/// Shared state of one agent instance.
pub struct Agent {
    pub(crate) config: AgentConfig,
    pub(crate) sessions: Registry,
    last_activity: AtomicI64,
    pub(crate) admission: Admission,
    /// Refused connections being drained before close (see conn.rs).
    pub(crate) lingering: AtomicUsize,
    fs_user: FsUser,
    conn_ids: AtomicU64,
    /// A host announced `error_codes` in its HELLO: connections from then on
    /// send coded ERROR payloads. A v1 host never says so and keeps text.
    coded_errors: AtomicBool,
    /// What an APPLY_CONFIG set after boot (see [`crate::apply`]).
    applied: std::sync::RwLock<Applied>,
    /// Bumped whenever an APPLY_CONFIG replaces the token: a reused
    /// connection authenticated under an older token closes instead of
    /// carrying another request (see `conn::serve`).
    token_epoch: AtomicU64,
}

/// Configuration applied after boot, over [`AgentConfig`]'s.
#[derive(Debug, Default)]
struct Applied {
    /// Replaces the boot token; the boot token is refused from then on.
    token: Option<String>,
    /// Layered over the boot configuration's env.
    env: BTreeMap<String, String>,
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Agent {
    /// Whether ERROR payloads are coded (see `coded_errors`).
    pub(crate) fn coded_errors(&self) -> bool {
        self.coded_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn set_coded_errors(&self) {
        self.coded_errors.store(true, Ordering::Relaxed);
    }

    /// An agent serving with `config`, no sessions yet; hand clones of it to
    /// the accept loops (`run_unix`, `run_tcp`).
    pub fn new(config: AgentConfig) -> Arc<Agent> {
        let fs_user = FsUser::resolve(config.file_user);
        Arc::new(Agent {
            config,
            sessions: Registry::default(),
            last_activity: AtomicI64::new(unix_now()),
            admission: Admission::default(),
            lingering: AtomicUsize::new(0),
            fs_user,
            conn_ids: AtomicU64::new(1),
            coded_errors: AtomicBool::new(false),
            applied: std::sync::RwLock::new(Applied::default()),
            token_epoch: AtomicU64::new(0),
        })
    }

    pub(crate) fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The token connections must present now: an applied one, else the
    /// boot configuration's.
    pub(crate) fn token(&self) -> Option<String> {
        let applied = self
            .applied
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        applied.token.clone().or_else(|| self.config.token.clone())
    }

    /// The environment every exec gets: the boot configuration's, then
    /// what was applied since.
    pub(crate) fn env(&self) -> BTreeMap<String, String> {
        let applied = self
            .applied
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut env = self.config.env.clone();
        env.extend(applied.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// Records an applied configuration's env and token.
    pub(crate) fn apply(&self, env: &BTreeMap<String, String>, token: Option<String>) {
        let mut applied = self
            .applied
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        applied
            .env
            .extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if token.is_some() {
            applied.token = token;
            self.token_epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Which token connections authenticated under: it changes whenever an
    /// APPLY_CONFIG replaces the token.
    pub(crate) fn token_epoch(&self) -> u64 {
        self.token_epoch.load(Ordering::Acquire)
    }

    /// Whose filesystem credentials file operations use.
    pub(crate) fn fs_user(&self) -> FsUser {
        self.fs_user
    }

    pub(crate) fn touch(&self) {
        self.last_activity.store(unix_now(), Ordering::Relaxed);
    }

    pub(crate) fn last_activity(&self) -> i64 {
        self.last_activity.load(Ordering::Relaxed)
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts the config drive's `init` script as the attachable TTY session `init`.
    pub fn start_init(self: &Arc<Self>, script: &str, run_as: Option<RunAs>) {
        if let Err(e) = crate::session::start_init(self, script, run_as) {
            tracing::error!(error = %e, "init session failed to start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RunAs;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\napp:x:999:998::/srv/app:/bin/false\n";

    #[test]
    fn image_users_resolve_by_name_uid_and_group() {
        let r = |s| RunAs::lookup(s, PASSWD);
        assert_eq!(
            r("app"),
            Some(RunAs {
                uid: 999,
                gid: 998,
                home: "/srv/app".into()
            })
        );
        assert_eq!(
            r("1000"),
            Some(RunAs {
                uid: 1000,
                gid: 1000,
                home: "/home/node".into()
            })
        );
        assert_eq!(
            r("app:5"),
            Some(RunAs {
                uid: 999,
                gid: 5,
                home: "/srv/app".into()
            })
        );
        // A uid the image does not list: Docker's rule, gid = uid, home /.
        assert_eq!(
            r("4242"),
            Some(RunAs {
                uid: 4242,
                gid: 4242,
                home: "/".into()
            })
        );
        assert_eq!(r("nobody-here"), None);
        assert_eq!(r(""), None);
        assert_eq!(r("app:staff"), None, "group names are not looked up");
    }
}
