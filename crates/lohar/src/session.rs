//! Persistent sessions: TTY (a PTY) and piped (pipes, stderr merged into stdout).
//!
//! A session outlives its connections. Output goes into a 64 KiB scrollback ring
//! and, when a client is attached, to that client. Attaching sends SESSION_INFO
//! and the whole scrollback *while holding the session lock*, and the output pump
//! only forwards to the client it finds attached under that same lock, so live
//! output can never overtake or interleave with the replayed history.
//!
//! Disconnect = detach (no signal). The idle timer starts at detach and SIGKILLs
//! the group if nobody attached in time: `max_idle_sec` when the request gives
//! one, else [`DEFAULT_DETACHED_IDLE`], so an abandoned shell cannot hold its
//! slot forever. When the process exits, an attached client gets EXIT and the
//! session is removed; otherwise it is kept 30 s so its scrollback can still be
//! fetched (`init`: removed at once).
//!
//! At the session limit a new session reaps room instead of being refused: an
//! exited session first, else the running detached one that has been detached
//! longest (SIGKILL). Attached sessions and `init` (no idle timeout) are never
//! reaped; when only those are left, the new session is refused.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bhatti_protocol::messages::{ErrorCode, ExecKillRequest, ExecRequest, SessionInfo};
use bhatti_protocol::{
    decode_resize, encode_exit, Frame, MsgType, INIT_SESSION_ID, MAX_SESSIONS, SCROLLBACK_BYTES,
};
use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::agent::{unix_now, Agent, RunAs};
use crate::fail::Fail;
use crate::ring::Ring;
use crate::spawn::{command, exit_code, run_as_for, signal_group, spawn, wait, Leader};
use crate::wire::{reader_task, FrameTx, Reader};

/// How long an exited, unattached session stays listable and attachable.
const EXITED_GRACE: Duration = Duration::from_secs(30);
/// How long the pump may keep draining output after the process exited (a
/// background grandchild can hold the PTY open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// Idle timeout of a detached session whose request named none.
const DEFAULT_DETACHED_IDLE: Duration = Duration::from_secs(30 * 60);
const TTY_CHUNK: usize = 4 * 1024;
const PIPE_CHUNK: usize = 8 * 1024;

/// The sessions of one agent.
#[derive(Default)]
pub struct Registry {
    map: Mutex<BTreeMap<String, Arc<Session>>>,
    counter: AtomicU64,
}

use bhatti_sync::lock;

impl Registry {
    pub fn list(&self) -> Vec<SessionInfo> {
        let map = lock(&self.map);
        let mut v: Vec<SessionInfo> = map.values().map(|s| s.info()).collect();
        v.sort_by_key(|i| (i.created_at, session_order(&i.session_id)));
        v
    }

    /// (sessions whose process runs, sessions with a client attached)
    pub fn counts(&self) -> (i64, i64) {
        let map = lock(&self.map);
        let mut active: i64 = 0;
        let mut attached: i64 = 0;
        for s in map.values() {
            let st = lock(&s.state);
            // Both at most the map's length.
            if st.exit_code.is_none() {
                active = active.saturating_add(1);
            }
            if st.attached.is_some() {
                attached = attached.saturating_add(1);
            }
        }
        (active, attached)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.map).get(id).cloned()
    }

    fn remove(&self, s: &Arc<Session>) {
        let mut map = lock(&self.map);
        if map.get(&s.id).is_some_and(|x| Arc::ptr_eq(x, s)) {
            map.remove(&s.id);
        }
    }

    /// Makes room for one more session if the registry is full (see the module
    /// docs for who is reaped).
    fn make_room(&self) -> Result<(), Fail> {
        make_room_locked(&mut lock(&self.map))
    }

    /// Registers a new session under a fresh `s<N>` id (or `fixed_id`), enforcing
    /// the session limit.
    fn insert(
        &self,
        fixed_id: Option<&str>,
        make: impl FnOnce(String) -> Arc<Session>,
    ) -> Result<Arc<Session>, Fail> {
        let mut map = lock(&self.map);
        if fixed_id.is_some_and(|id| map.contains_key(id)) {
            return Err(Fail::new(
                ErrorCode::AlreadyExists,
                "session already exists",
            ));
        }
        // Another new session may have taken the room made before spawning.
        make_room_locked(&mut map)?;
        let id = match fixed_id {
            Some(id) => id.to_string(),
            None => format!(
                "s{}",
                self.counter
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1)
            ),
        };
        let s = make(id.clone());
        map.insert(id, s.clone());
        Ok(s)
    }
}

/// Reaps sessions until one more fits: exited ones first (oldest first), then
/// running detached ones with an idle timeout, longest detached first.
fn make_room_locked(map: &mut BTreeMap<String, Arc<Session>>) -> Result<(), Fail> {
    while map.len() >= MAX_SESSIONS {
        let victim = map
            .values()
            .filter_map(|s| {
                let st = lock(&s.state);
                let since = st.detached_since?; // attached: never
                match st.exit_code {
                    Some(_) => Some((0, since, s.clone())),
                    None if s.max_idle.is_some() => Some((1, since, s.clone())),
                    None => None, // init: lives as long as the sandbox
                }
            })
            .min_by_key(|(rank, since, _)| (*rank, *since))
            .map(|(_, _, s)| s);
        let Some(v) = victim else {
            return Err(Fail::new(
                ErrorCode::Busy,
                format!("session limit exceeded: {MAX_SESSIONS} sessions, none of them detached"),
            ));
        };
        map.remove(&v.id);
        let running = lock(&v.state).exit_code.is_none();
        if running {
            tracing::info!(session = %v.id, "session limit reached: reaping the longest-detached session");
            signal_group(v.pgid, Signal::SIGKILL);
        }
    }
    Ok(())
}

fn session_order(id: &str) -> u64 {
    id.strip_prefix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Where keystrokes go.
enum Input {
    Pty(Arc<AsyncFd<OwnedFd>>),
    Pipe(tokio::sync::Mutex<Option<tokio::process::ChildStdin>>),
}

struct Attached {
    conn_id: u64,
    tx: FrameTx,
    /// Dropping this tells the connection's handler to stop (kicked by a new
    /// attach, or the session ended).
    _kick: oneshot::Sender<()>,
}

struct State {
    ring: Ring,
    attached: Option<Attached>,
    exit_code: Option<i32>,
    idle_timer: Option<AbortHandle>,
    /// When the last client left; `None` while attached and before the first
    /// attach (a session being created is not up for reaping).
    detached_since: Option<Instant>,
}

pub struct Session {
    id: String,
    argv: String,
    tty: bool,
    created_at: i64,
    pgid: i32,
    max_idle: Option<Duration>,
    remove_on_exit: bool,
    input: Input,
    state: Mutex<State>,
}

impl Session {
    fn info_locked(&self, st: &State) -> SessionInfo {
        SessionInfo {
            session_id: self.id.clone(),
            argv: self.argv.clone(),
            tty: self.tty,
            running: st.exit_code.is_none(),
            exit_code: st.exit_code,
            attached: st.attached.is_some(),
            created_at: self.created_at,
        }
    }

    pub fn info(&self) -> SessionInfo {
        self.info_locked(&lock(&self.state))
    }

    async fn write_input(&self, data: &[u8]) {
        match &self.input {
            Input::Pty(fd) => {
                if let Err(e) = crate::pty::write_all(fd, data).await {
                    tracing::debug!(session = %self.id, error = %e, "pty write failed");
                }
            }
            Input::Pipe(stdin) => {
                use tokio::io::AsyncWriteExt;
                let mut g = stdin.lock().await;
                if data.is_empty() {
                    *g = None; // an empty STDIN frame closes stdin
                } else if let Some(w) = g.as_mut() {
                    if w.write_all(data).await.is_err() {
                        *g = None;
                    }
                }
            }
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        if let Input::Pty(fd) = &self.input {
            let _ = crate::pty::set_winsize(fd.get_ref(), rows, cols);
        }
    }

    /// Appends output to the scrollback and hands it to the attached client.
    async fn output(self: &Arc<Self>, kind: MsgType, data: &[u8]) {
        let target = {
            let mut st = lock(&self.state);
            st.ring.write(data);
            st.attached.as_ref().map(|a| (a.conn_id, a.tx.clone()))
        };
        let Some((conn_id, tx)) = target else { return };
        if tx.try_send(kind, data) {
            return;
        }
        // The client is slow: wait a while (back-pressure on the process), then
        // give up on it rather than stall the session forever.
        let sent = tokio::time::timeout(Duration::from_secs(10), tx.send(kind, data)).await;
        if !matches!(sent, Ok(true)) {
            self.detach(conn_id);
        }
    }

    /// Detaches `conn_id` if it is still the attached client, starting the idle timer.
    fn detach(self: &Arc<Self>, conn_id: u64) {
        let mut st = lock(&self.state);
        if st.attached.as_ref().map(|a| a.conn_id) != Some(conn_id) {
            return;
        }
        st.attached = None;
        st.detached_since = Some(Instant::now());
        if let (Some(idle), None) = (self.max_idle, st.exit_code) {
            let s = self.clone();
            let h = tokio::spawn(async move {
                tokio::time::sleep(idle).await;
                let st = lock(&s.state);
                if st.attached.is_none() && st.exit_code.is_none() {
                    tracing::info!(session = %s.id, "idle timeout, killing");
                    signal_group(s.pgid, Signal::SIGKILL);
                }
            });
            if let Some(old) = st.idle_timer.replace(h.abort_handle()) {
                old.abort();
            }
        }
    }

    /// Records the exit: EXIT to the attached client and removal, or the grace period.
    fn exited(self: &Arc<Self>, agent: &Arc<Agent>, code: i32) {
        let attached = {
            let mut st = lock(&self.state);
            st.exit_code = Some(code);
            if let Some(t) = st.idle_timer.take() {
                t.abort();
            }
            st.attached.take()
        };
        if let Some(a) = attached {
            // Queue EXIT, then drop the kick handle so the handler winds down and the
            // writer flushes.
            let tx = a.tx.clone();
            let exit = encode_exit(code);
            tokio::spawn(async move {
                tx.send(MsgType::Exit, &exit).await;
                drop(a);
            });
            agent.sessions.remove(self);
        } else if self.remove_on_exit {
            agent.sessions.remove(self);
        } else {
            let (agent, s) = (agent.clone(), self.clone());
            tokio::spawn(async move {
                tokio::time::sleep(EXITED_GRACE).await;
                agent.sessions.remove(&s);
            });
        }
    }
}

/// Parameters for a new session.
struct Spec {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: String,
    tty: bool,
    rows: u16,
    cols: u16,
    max_idle: Option<Duration>,
    fixed_id: Option<&'static str>,
    remove_on_exit: bool,
    run_as: Option<RunAs>,
}

/// Spawns the process and registers the session (not yet attached).
fn spawn_session(agent: &Arc<Agent>, spec: Spec) -> Result<Arc<Session>, Fail> {
    agent.sessions.make_room()?;
    let leader = if spec.tty {
        Leader::SessionWithTty
    } else {
        Leader::Session
    };
    let mut std_cmd = command(
        agent,
        &spec.argv,
        &spec.env,
        &spec.cwd,
        spec.run_as.as_ref(),
        leader,
    );
    let (input, output, child) = if spec.tty {
        let pty = crate::pty::open(spec.rows, spec.cols).map_err(|e| Fail::io("start: pty", &e))?;
        if let Some(r) = &spec.run_as {
            // The user's shell should own its terminal, as login would arrange.
            let _ = std::os::unix::fs::fchown(&pty.slave, Some(r.uid), Some(r.gid));
        }
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| Fail::io("start", &e));
        std_cmd
            .stdin(Stdio::from(dup(&pty.slave)?))
            .stdout(Stdio::from(dup(&pty.slave)?))
            .stderr(Stdio::from(dup(&pty.slave)?));
        let child = spawn(std_cmd).map_err(|e| Fail::io("start", &e))?;
        // Drop our slave handles (the Command held copies): the master then reads
        // EIO once the child and its descendants close the terminal.
        drop(pty.slave);
        let master = Arc::new(crate::pty::async_fd(pty.master).map_err(|e| Fail::io("start", &e))?);
        (Input::Pty(master.clone()), master, child)
    } else {
        let (r, w) = std::io::pipe().map_err(|e| Fail::io("start", &e))?;
        let w2 = w.try_clone().map_err(|e| Fail::io("start", &e))?;
        std_cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::from(w))
            .stderr(Stdio::from(w2));
        let mut child = spawn(std_cmd).map_err(|e| Fail::io("start", &e))?;
        let stdin = child.stdin.take();
        let rfd: OwnedFd = r.into();
        let out = Arc::new(crate::pty::async_fd(rfd).map_err(|e| Fail::io("start", &e))?);
        (Input::Pipe(tokio::sync::Mutex::new(stdin)), out, child)
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let argv = spec.argv.join(" ");
    let registered = agent.sessions.insert(spec.fixed_id, |id| {
        Arc::new(Session {
            id,
            argv,
            tty: spec.tty,
            created_at: unix_now(),
            pgid,
            max_idle: spec.max_idle,
            remove_on_exit: spec.remove_on_exit,
            input,
            state: Mutex::new(State {
                ring: Ring::new(SCROLLBACK_BYTES),
                attached: None,
                exit_code: None,
                idle_timer: None,
                // Not reapable before its first client has come and gone.
                detached_since: None,
            }),
        })
    });
    let session = match registered {
        Ok(s) => s,
        Err(e) => {
            signal_group(pgid, Signal::SIGKILL);
            return Err(e);
        }
    };
    run_session(agent, &session, output, child, spec.tty);
    Ok(session)
}

/// Starts the output pump and the exit watcher of a session.
fn run_session(
    agent: &Arc<Agent>,
    s: &Arc<Session>,
    output: Arc<AsyncFd<OwnedFd>>,
    mut child: tokio::process::Child,
    tty: bool,
) {
    let chunk = if tty { TTY_CHUNK } else { PIPE_CHUNK };
    let pump_s = s.clone();
    let pump = tokio::spawn(async move {
        let mut buf = vec![0u8; chunk];
        loop {
            match crate::pty::read(&output, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => pump_s.output(MsgType::Stdout, &buf[..n]).await,
            }
        }
    });
    let (agent, s) = (agent.clone(), s.clone());
    tokio::spawn(async move {
        let code = match wait(&mut child).await {
            Ok(st) => exit_code(st),
            Err(_) => 1,
        };
        // Let the pump forward what the process wrote just before exiting.
        let abort = pump.abort_handle();
        if tokio::time::timeout(DRAIN_AFTER_EXIT, pump).await.is_err() {
            abort.abort();
        }
        s.exited(&agent, code);
    });
}

fn spec_from_request(agent: &Agent, er: ExecRequest) -> Result<Spec, Fail> {
    let run_as = run_as_for(agent, &er.user)?;
    Ok(Spec {
        tty: er.tty,
        rows: er.rows,
        cols: er.cols,
        // Every detached session is reaped eventually; see DEFAULT_DETACHED_IDLE.
        max_idle: Some(if er.max_idle_sec > 0 {
            Duration::from_secs(u64::try_from(er.max_idle_sec).unwrap_or(0))
        } else {
            DEFAULT_DETACHED_IDLE
        }),
        argv: er.argv,
        env: er.env,
        cwd: er.cwd,
        fixed_id: None,
        remove_on_exit: false,
        run_as,
    })
}

/// EXEC_REQ with `tty` or `session`: create, attach this connection, relay.
pub async fn create(agent: &Arc<Agent>, er: ExecRequest, rd: Reader, tx: &FrameTx) {
    let spec = match spec_from_request(agent, er) {
        Ok(s) => s,
        Err(e) => {
            tx.error(e).await;
            return;
        }
    };
    match spawn_session(agent, spec) {
        Ok(session) => attach_and_relay(agent, &session, false, rd, tx).await,
        Err(e) => {
            tx.error(e).await;
        }
    }
}

/// EXEC_REQ with `session_id`: attach to an existing session.
pub async fn attach(agent: &Arc<Agent>, er: ExecRequest, rd: Reader, tx: &FrameTx) {
    match agent.sessions.get(&er.session_id) {
        Some(session) => attach_and_relay(agent, &session, er.if_detached, rd, tx).await,
        None => {
            tx.error(Fail::new(ErrorCode::NotFound, "session not found"))
                .await;
        }
    }
}

/// Makes this connection the session's client: SESSION_INFO, the whole scrollback
/// as one STDOUT frame, then (if the process already exited) EXIT, all queued
/// under the session lock; then relays until the client's part is over.
async fn attach_and_relay(
    agent: &Arc<Agent>,
    session: &Arc<Session>,
    if_detached: bool,
    rd: Reader,
    tx: &FrameTx,
) {
    let conn_id = agent.next_conn_id();
    let (kick_tx, kick_rx) = oneshot::channel();
    enum Outcome {
        Busy,
        Finished,
        Attached,
    }
    let outcome = {
        let mut st = lock(&session.state);
        if if_detached && st.attached.is_some() {
            Outcome::Busy
        } else {
            attach_locked(session, &mut st, conn_id, kick_tx, tx)
        }
    };
    match outcome {
        Outcome::Busy => {
            tx.error(Fail::new(ErrorCode::Busy, "session is attached"))
                .await;
        }
        Outcome::Finished => agent.sessions.remove(session),
        Outcome::Attached => relay(agent, session, conn_id, rd, kick_rx).await,
    }

    fn attach_locked(
        session: &Session,
        st: &mut State,
        conn_id: u64,
        kick_tx: oneshot::Sender<()>,
        tx: &FrameTx,
    ) -> Outcome {
        if let Some(prev) = st.attached.take() {
            // The previous client is told it lost the session, then let go.
            prev.tx.try_send(MsgType::Exit, &encode_exit(0));
        }
        if let Some(t) = st.idle_timer.take() {
            t.abort();
        }
        st.detached_since = None;
        let mut info = session.info_locked(st);
        info.attached = true;
        // A fresh connection's queue has room for these three frames.
        if let Ok(p) = serde_json::to_vec(&info) {
            tx.try_send(MsgType::SessionInfo, &p);
        }
        let history = st.ring.contents();
        if !history.is_empty() {
            tx.try_send(MsgType::Stdout, &history);
        }
        match st.exit_code {
            Some(code) => {
                tx.try_send(MsgType::Exit, &encode_exit(code));
                Outcome::Finished
            }
            None => {
                st.attached = Some(Attached {
                    conn_id,
                    tx: tx.clone(),
                    _kick: kick_tx,
                });
                Outcome::Attached
            }
        }
    }
}

/// Host → session traffic until the host goes away, sends KILL, or is kicked.
async fn relay(
    agent: &Arc<Agent>,
    session: &Arc<Session>,
    conn_id: u64,
    rd: Reader,
    mut kick: oneshot::Receiver<()>,
) {
    let mut incoming = reader_task(rd);
    loop {
        tokio::select! {
            _ = &mut kick => return, // replaced by another client, or the session ended
            f = incoming.recv() => match f {
                Some(f) => {
                    if !handle_frame(agent, session, &f).await {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    session.detach(conn_id);
}

/// Returns false when the client's part is over (KILL).
async fn handle_frame(agent: &Agent, session: &Arc<Session>, f: &Frame) -> bool {
    match f.msg_type() {
        Some(MsgType::Stdin) => {
            agent.touch();
            session.write_input(&f.payload).await;
        }
        Some(MsgType::Resize) => {
            if let Ok((rows, cols)) = decode_resize(&f.payload) {
                session.resize(rows, cols);
            }
        }
        Some(MsgType::Kill) => {
            signal_group(session.pgid, Signal::SIGTERM);
            return false;
        }
        _ => {}
    }
    true
}

/// EXEC_KILL: SIGKILL to the session's group, EXIT(0) as the acknowledgement.
pub async fn kill_request(agent: &Arc<Agent>, req: &Frame, tx: &FrameTx) {
    let kr: ExecKillRequest = match req.parse_json() {
        Ok(k) => k,
        Err(e) => {
            tx.error(Fail::invalid(format!("invalid kill request: {e}")))
                .await;
            return;
        }
    };
    match agent.sessions.get(&kr.session_id) {
        Some(s) => {
            signal_group(s.pgid, Signal::SIGKILL);
            tx.exit(0).await;
        }
        None => {
            tx.error(Fail::new(ErrorCode::NotFound, "session not found"))
                .await;
        }
    }
}

/// The config drive's `init`: `sh -c <script>` as TTY session `init` in the init cwd.
pub fn start_init(agent: &Arc<Agent>, script: &str, run_as: Option<RunAs>) -> Result<(), Fail> {
    let cwd = agent.config().init_cwd.to_string_lossy().into_owned();
    let spec = Spec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        cwd,
        tty: true,
        rows: 24,
        cols: 80,
        max_idle: None,
        fixed_id: Some(INIT_SESSION_ID),
        remove_on_exit: true,
        run_as,
    };
    spawn_session(agent, spec).map(|_| ())
}
