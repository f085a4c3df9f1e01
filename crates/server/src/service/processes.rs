//! Processes that outlive the request that started them: the daemon keeps
//! each one's agent connection (a piped exec stream, or a terminal session)
//! and hands out a handle (`pid`) by which later requests send input,
//! resize, signal, list and re-attach. E2B's envd API is built on this:
//! its commands and PTYs are addressed by pid across many calls.
//!
//! One driver task per process owns the agent connection. It fans output
//! out to every attached subscriber (the stream that started it, and any
//! that connected later) and applies control messages in order. A process
//! holds its sandbox hot (a [`Pin`](crate::state::Pin)) while it runs, so
//! idle-pausing never cuts a command off, and leaves the table when it ends.
//!
//! The pid is the daemon's handle, unique per sandbox, not the guest's PID:
//! lohar's exec does not report one (see docs/e2b.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bhatti_agent_client::{ExecEvents, ExecInput, ShellOptions, StreamEvent, Terminal};
use bhatti_engine::EngineExt;
use bhatti_protocol::messages::ExecRequest;
use bhatti_store::Sandbox;
use tokio::sync::mpsc;

use crate::service::error::{ServiceError, ServiceResult};
use crate::state::{lock, Shared};

/// Processes one sandbox may run at once through this table.
pub const MAX_PER_SANDBOX: usize = 256;
/// Output events buffered per subscriber before the process waits for it.
const SUBSCRIBER_QUEUE: usize = 64;
/// Control messages buffered per process.
const CONTROL_QUEUE: usize = 64;
/// The first handle given out (small numbers read like a guest's init).
const FIRST_PID: u32 = 1000;

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub tag: Option<String>,
    /// `Some((rows, cols))` starts it on a terminal.
    pub pty: Option<(u16, u16)>,
    /// Keep a piped process's stdin open for input (else it reads EOF).
    pub stdin: bool,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub exit_code: i32,
    /// False when it did not exit by itself (the connection was lost).
    pub exited: bool,
    pub status: String,
    pub error: Option<String>,
}

/// One event on a subscriber's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Pty(Vec<u8>),
    End(End),
}

/// A request to a running process, applied in order by its driver.
#[derive(Debug)]
enum Control {
    Input(Vec<u8>),
    CloseStdin,
    Kill,
    Resize { rows: u16, cols: u16 },
}

/// A running process.
pub struct Proc {
    pub pid: u32,
    pub spec: Spec,
    control: mpsc::Sender<Control>,
    subscribers: tokio::sync::Mutex<Vec<mpsc::Sender<Output>>>,
}

/// How a process is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Pid(u32),
    Tag(String),
}

/// Every process started through this daemon, by sandbox.
pub struct Processes {
    by_sandbox: Mutex<HashMap<String, HashMap<u32, Arc<Proc>>>>,
    next_pid: AtomicU32,
}

/// The agent side a driver owns.
enum Io {
    Pipe(ExecEvents, ExecInput),
    Pty { session_id: String, term: Terminal },
}

impl Default for Processes {
    fn default() -> Processes {
        Processes::new()
    }
}

impl Processes {
    pub fn new() -> Processes {
        Processes {
            by_sandbox: Mutex::new(HashMap::new()),
            next_pid: AtomicU32::new(FIRST_PID),
        }
    }

    /// Starts `spec` in the (hot) sandbox and returns it with the first
    /// subscriber's stream, attached before any output can be produced.
    pub async fn start(
        self: &Arc<Self>,
        st: &Shared,
        sb: &Sandbox,
        spec: Spec,
    ) -> ServiceResult<(Arc<Proc>, mpsc::Receiver<Output>)> {
        if spec.cmd.is_empty() {
            return Err(ServiceError::bad_request("process.cmd is required"));
        }
        if self.list(&sb.id).len() >= MAX_PER_SANDBOX {
            return Err(ServiceError::too_many(format!(
                "{MAX_PER_SANDBOX} processes already run in this sandbox"
            )));
        }
        st.ensure_hot(sb).await?;
        let argv: Vec<String> = std::iter::once(spec.cmd.clone())
            .chain(spec.args.iter().cloned())
            .collect();
        let cwd = spec.cwd.clone().unwrap_or_default();
        let io = match spec.pty {
            Some((rows, cols)) => {
                let (info, term) = st
                    .engine
                    .shell(
                        &sb.id,
                        ShellOptions {
                            argv,
                            env: spec.envs.clone(),
                            cwd,
                            rows,
                            cols,
                            max_idle_sec: 0,
                        },
                    )
                    .await?;
                Io::Pty {
                    session_id: info.session_id,
                    term,
                }
            }
            None => {
                let req = ExecRequest {
                    argv,
                    env: spec.envs.clone(),
                    cwd,
                    ..Default::default()
                };
                let (events, mut input) = st.engine.exec_stream(&sb.id, req).await?.into_split();
                if !spec.stdin {
                    input.close_stdin().await?;
                }
                Io::Pipe(events, input)
            }
        };
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (sub, sub_rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let proc = Arc::new(Proc {
            pid,
            spec,
            control,
            subscribers: tokio::sync::Mutex::new(vec![sub]),
        });
        lock(&self.by_sandbox)
            .entry(sb.id.clone())
            .or_default()
            .insert(pid, proc.clone());
        let table = self.clone();
        let pin = st.pin(&sb.id);
        let (st, sandbox_id) = (st.clone(), sb.id.clone());
        let driven = proc.clone();
        tokio::spawn(async move {
            let end = drive(&st, &sandbox_id, &driven, io, control_rx).await;
            // Out of the table first: a request that finds it gone knows it
            // ended; one that raced in gets a closed control queue.
            table.remove(&sandbox_id, driven.pid);
            driven.broadcast(Output::End(end)).await;
            drop(pin);
        });
        Ok((proc, sub_rx))
    }

    fn remove(&self, sandbox_id: &str, pid: u32) {
        let mut all = lock(&self.by_sandbox);
        if let Some(procs) = all.get_mut(sandbox_id) {
            procs.remove(&pid);
            if procs.is_empty() {
                all.remove(sandbox_id);
            }
        }
    }

    /// The sandbox's running processes, by pid.
    pub fn list(&self, sandbox_id: &str) -> Vec<Arc<Proc>> {
        let mut v: Vec<_> = lock(&self.by_sandbox)
            .get(sandbox_id)
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|p| p.pid);
        v
    }

    /// The running process a selector names.
    pub fn get(&self, sandbox_id: &str, sel: &Selector) -> ServiceResult<Arc<Proc>> {
        let all = lock(&self.by_sandbox);
        let found = all.get(sandbox_id).and_then(|procs| match sel {
            Selector::Pid(pid) => procs.get(pid).cloned(),
            Selector::Tag(tag) => procs
                .values()
                .find(|p| p.spec.tag.as_deref() == Some(tag.as_str()))
                .cloned(),
        });
        found.ok_or_else(|| match sel {
            Selector::Pid(pid) => {
                ServiceError::not_found(format!("process with pid {pid} not found"))
            }
            Selector::Tag(tag) => {
                ServiceError::not_found(format!("process with tag {tag:?} not found"))
            }
        })
    }
}

impl Proc {
    /// A new stream of this process's output from now on.
    pub async fn subscribe(&self) -> mpsc::Receiver<Output> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        self.subscribers.lock().await.push(tx);
        rx
    }

    async fn control(&self, c: Control) -> ServiceResult<()> {
        self.control
            .send(c)
            .await
            .map_err(|_| ServiceError::not_found(format!("process with pid {} ended", self.pid)))
    }

    /// Bytes to its stdin (or its terminal).
    pub async fn input(&self, data: Vec<u8>) -> ServiceResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.spec.pty.is_none() && !self.spec.stdin {
            return Err(ServiceError::bad_request(format!(
                "process with pid {} was started without stdin",
                self.pid
            )));
        }
        self.control(Control::Input(data)).await
    }

    /// EOF on a piped process's stdin.
    pub async fn close_stdin(&self) -> ServiceResult<()> {
        self.control(Control::CloseStdin).await
    }

    /// SIGKILL to its process group.
    pub async fn kill(&self) -> ServiceResult<()> {
        self.control(Control::Kill).await
    }

    /// A new terminal size (only a terminal has one).
    pub async fn resize(&self, rows: u16, cols: u16) -> ServiceResult<()> {
        if self.spec.pty.is_none() {
            return Err(ServiceError::bad_request(format!(
                "process with pid {} has no terminal",
                self.pid
            )));
        }
        if rows == 0 || cols == 0 {
            return Err(ServiceError::bad_request("pty size must be at least 1x1"));
        }
        self.control(Control::Resize { rows, cols }).await
    }

    /// One event to every subscriber still listening; a subscriber that
    /// went away is dropped, one that is slow holds the process back (as a
    /// full pipe would).
    async fn broadcast(&self, out: Output) {
        let mut subs = self.subscribers.lock().await;
        let mut live = Vec::with_capacity(subs.len());
        for s in subs.drain(..) {
            if s.send(out.clone()).await.is_ok() {
                live.push(s);
            }
        }
        *subs = live;
    }
}

/// Runs one process to its end: output out, control in. Reading and
/// writing are two futures polled together, never a `select!` over a read,
/// because a frame read cut off halfway would desynchronise the connection.
async fn drive(
    st: &Shared,
    sandbox_id: &str,
    proc: &Proc,
    io: Io,
    mut control: mpsc::Receiver<Control>,
) -> End {
    let lost = |why: String| End {
        exit_code: -1,
        exited: false,
        status: "error".into(),
        error: Some(why),
    };
    match io {
        Io::Pipe(mut events, mut input) => {
            let output = async {
                loop {
                    let out = match events.next().await {
                        Ok(Some(StreamEvent::Stdout(d))) => Output::Stdout(d),
                        Ok(Some(StreamEvent::Stderr(d))) => Output::Stderr(d),
                        Ok(Some(StreamEvent::Exit(code))) => return exited(code),
                        Ok(Some(StreamEvent::Error { message, .. })) => return lost(message),
                        Ok(None) => return lost("the agent closed the stream".into()),
                        Err(e) => return lost(format!("agent: {e}")),
                    };
                    proc.broadcast(out).await;
                    st.touch(sandbox_id);
                }
            };
            let controls = async {
                while let Some(c) = control.recv().await {
                    let r = match c {
                        Control::Input(d) => input.write_stdin(&d).await,
                        Control::CloseStdin => input.close_stdin().await,
                        Control::Kill => input.kill().await,
                        Control::Resize { .. } => Ok(()),
                    };
                    if let Err(e) = r {
                        tracing::debug!(pid = proc.pid, error = %e, "process control not delivered");
                    }
                }
                std::future::pending::<End>().await
            };
            tokio::select! {
                end = output => end,
                end = controls => end,
            }
        }
        Io::Pty { session_id, term } => {
            let (mut rd, mut wr) = term.into_split();
            let output = async {
                loop {
                    match rd.read().await {
                        Ok(Some(d)) => proc.broadcast(Output::Pty(d)).await,
                        Ok(None) => {
                            return match rd.exit_code() {
                                Some(code) => exited(code),
                                None => lost("the agent closed the terminal".into()),
                            }
                        }
                        Err(e) => return lost(format!("agent: {e}")),
                    }
                    st.touch(sandbox_id);
                }
            };
            let controls = async {
                while let Some(c) = control.recv().await {
                    let r = match c {
                        Control::Input(d) => wr.write(&d).await.map_err(ServiceError::from),
                        // A terminal takes Ctrl+D for EOF.
                        Control::CloseStdin => wr.write(&[4]).await.map_err(ServiceError::from),
                        // The session's whole group, SIGKILL (the terminal's
                        // own kill is SIGTERM, which an interactive shell
                        // ignores).
                        Control::Kill => st
                            .engine
                            .session_kill(sandbox_id, &session_id)
                            .await
                            .map_err(ServiceError::from),
                        Control::Resize { rows, cols } => {
                            wr.resize(rows, cols).await.map_err(ServiceError::from)
                        }
                    };
                    if let Err(e) = r {
                        tracing::debug!(pid = proc.pid, error = %e.message, "process control not delivered");
                    }
                }
                std::future::pending::<End>().await
            };
            tokio::select! {
                end = output => end,
                end = controls => end,
            }
        }
    }
}

fn exited(code: i32) -> End {
    End {
        exit_code: code,
        exited: true,
        // A shell reports death by signal N as 128 + N.
        status: match code.checked_sub(128) {
            Some(signal) if signal > 0 => format!("signal: {signal}"),
            _ => format!("exit status {code}"),
        },
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_like_envds() {
        assert_eq!(exited(0).status, "exit status 0");
        assert_eq!(exited(3).status, "exit status 3");
        assert_eq!(exited(137).status, "signal: 9");
        assert!(exited(137).exited);
    }

    #[test]
    fn an_unknown_selector_is_not_found() {
        let t = Processes::new();
        let e = t.get("sb", &Selector::Pid(7)).err().map(|e| e.code);
        assert_eq!(e, Some(crate::service::error::ErrorCode::NotFound));
        let e = t
            .get("sb", &Selector::Tag("x".into()))
            .err()
            .map(|e| e.code);
        assert_eq!(e, Some(crate::service::error::ErrorCode::NotFound));
        assert!(t.list("sb").is_empty());
    }
}
