//! Starts lohar in test mode on Unix sockets in a temp dir (no root, VM or KVM).
#![allow(dead_code, clippy::arithmetic_side_effects)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bhatti_agent_client::{AgentClient, Transport};

pub struct Lohar {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub fwd: PathBuf,
    pub token: Option<String>,
    opts: Opts,
    child: Child,
}

#[derive(Default, Clone)]
pub struct Opts {
    pub token: Option<String>,
    pub init: Option<String>,
    /// `LOHAR_FILE_UID`/`LOHAR_FILE_GID`: the identity file operations act as.
    pub file_user: Option<(u32, u32)>,
    /// `LOHAR_TCP`: an extra control listener on this address.
    pub tcp: Option<String>,
    /// `LOHAR_SYSTEMD_ROOT`: run the systemd substitute rooted here.
    pub systemd_root: Option<PathBuf>,
}

impl Lohar {
    pub fn start() -> Lohar {
        Lohar::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Lohar {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("c.sock");
        let fwd = dir.path().join("f.sock");
        let child = spawn(dir.path(), &sock, &fwd, &opts);
        Lohar {
            dir,
            sock,
            fwd,
            token: opts.token.clone(),
            opts,
            child,
        }
    }

    /// Kills this agent and starts a new one with the same options on the
    /// same sockets (an agent restart, as a guest reboot looks to a host).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
        let _ = std::fs::remove_file(&self.fwd);
        self.child = spawn(self.dir.path(), &self.sock, &self.fwd, &self.opts);
    }

    pub fn client(&self) -> AgentClient {
        self.client_with_token(self.token.clone())
    }

    pub fn client_with_token(&self, token: Option<String>) -> AgentClient {
        AgentClient::new(
            Transport::Unix {
                control: self.sock.clone(),
                forward: self.fwd.clone(),
            },
            token,
        )
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts lohar in test mode in `dir` and waits for its sockets.
fn spawn(dir: &Path, sock: &Path, fwd: &Path, opts: &Opts) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lohar"));
    cmd.env("LOHAR_TEST", "1")
        .env("LOHAR_SOCK", sock)
        .env("LOHAR_FWD_SOCK", fwd)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(t) = &opts.token {
        cmd.env("LOHAR_TOKEN", t);
    }
    if let Some(i) = &opts.init {
        cmd.env("LOHAR_INIT", i);
    }
    if let Some((u, g)) = opts.file_user {
        cmd.env("LOHAR_FILE_UID", u.to_string())
            .env("LOHAR_FILE_GID", g.to_string());
    }
    if let Some(a) = &opts.tcp {
        cmd.env("LOHAR_TCP", a);
    }
    if let Some(r) = &opts.systemd_root {
        cmd.env("LOHAR_SYSTEMD_ROOT", r);
    }
    let child = cmd.spawn().expect("spawn lohar");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(sock.exists() && fwd.exists()) {
        assert!(
            Instant::now() < deadline,
            "lohar did not create its sockets"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

impl Drop for Lohar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Whether the tests run as root (then the agent can act as another user).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(st) => st
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
