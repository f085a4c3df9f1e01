//! The native API's exec: one command per request, run to its end and
//! answered whole, streamed while the request lasts, or detached (left to
//! the guest, its output in a file); and the agent's sessions, listed and
//! killed. Unlike [`crate::service::processes`] (E2B's), nothing here is
//! kept by the daemon beyond the request that started it.
//!
//! A timeout is enforced host-side by dropping the agent connection, which
//! makes lohar SIGKILL the command's process group (docs/protocol.md,
//! "Behaviour worth knowing"); a streaming caller that goes away does the
//! same.

use std::time::{Duration, Instant};

use bhatti_agent_client::{ExecResult, StreamEvent};
use bhatti_api as api;
use bhatti_engine::EngineExt;
use bhatti_protocol::messages::{DetachedInfo, ExecRequest as AgentExec, SessionInfo};
use bhatti_store::User;
use tokio::sync::mpsc;

use crate::service::error::{ErrorCode, ServiceError, ServiceResult};
use crate::state::Shared;
use crate::validate;

const DEFAULT_TIMEOUT: i64 = 300;
const MAX_TIMEOUT: i64 = 86_400;
/// A detached command only has to start; one that does not within this is
/// stuck, not busy.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Stream events waiting for a slow reader before the command waits too.
const STREAM_QUEUE: usize = 16;

/// The reference's rule: absent, ≤ 0 or over a day is the default.
fn timeout_of(t: Option<i64>) -> Duration {
    let t = t.unwrap_or(DEFAULT_TIMEOUT);
    let t = if t <= 0 || t > MAX_TIMEOUT {
        DEFAULT_TIMEOUT
    } else {
        t
    };
    Duration::from_secs(t.unsigned_abs())
}

/// One event of a streamed command. `Exit` and `Error` are the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
    /// The command could not run, or its stream broke; with the code of
    /// the reason when the agent gave one.
    Error(ServiceError),
}

/// What an exec came to.
pub enum Outcome {
    /// Started in the background; the guest owns it now.
    Detached(DetachedInfo),
    /// Running: its events until it ends or its timeout. Dropping the
    /// receiver kills it.
    Streaming(mpsc::Receiver<Event>),
    /// Ran to its end, with the time spent in the engine (the agent's
    /// round trip included), so a client can tell the API's own cost from
    /// the sandbox's.
    Finished {
        result: ExecResult,
        engine: Duration,
    },
}

/// Runs `req.cmd` in the caller's sandbox `id`: detached when the request
/// says so, else streamed when `stream`, else to its end.
pub async fn exec(
    st: &Shared,
    user: &User,
    id: &str,
    req: &api::ExecRequest,
    stream: bool,
) -> ServiceResult<Outcome> {
    if req.cmd.is_empty() {
        return Err(ServiceError::bad_request("cmd required"));
    }
    if req.cmd[0].is_empty() {
        return Err(ServiceError::bad_request(
            "cmd: the program must not be empty",
        ));
    }
    for a in &req.cmd {
        validate::no_nul("cmd", a)?;
    }
    if let Some(f) = req.output_file.as_deref().filter(|f| !f.is_empty()) {
        validate::guest_path(f)?;
    }
    validate::env(&req.env)?;
    if let Some(d) = req.cwd.as_deref().filter(|d| !d.is_empty()) {
        validate::guest_path(d)?;
    }
    if let Some(u) = req.user.as_deref().filter(|u| !u.is_empty()) {
        validate::exec_user(u)?;
    }
    if req.detach && req.stdin.is_some() {
        return Err(ServiceError::bad_request(
            "stdin cannot be given to a detached command",
        ));
    }
    let agent_req = AgentExec {
        env: req.env.clone(),
        cwd: req.cwd.clone().unwrap_or_default(),
        user: req.user.clone().unwrap_or_default(),
        ..AgentExec::new(req.cmd.clone())
    };
    let stdin = req.stdin.as_deref().map(str::as_bytes);
    let sb = st.sandbox(user, id).await?;
    st.ensure_hot(&sb).await?;
    let timeout = timeout_of(req.timeout_sec);

    if req.detach {
        let r = tokio::time::timeout(
            DETACH_TIMEOUT,
            st.engine.exec_detached_request(
                &sb.id,
                AgentExec {
                    output_file: req.output_file.clone().unwrap_or_default(),
                    ..agent_req
                },
            ),
        )
        .await
        .map_err(|_| {
            ServiceError::new(
                ErrorCode::GatewayTimeout,
                "detached exec did not start in 30 s",
            )
        })??;
        return Ok(Outcome::Detached(r));
    }

    if stream {
        // A command that cannot start says why now, with the status of the
        // reason (404 no such program, 403 not executable), not in a 200.
        let mut agent = st.engine.exec_stream(&sb.id, agent_req).await?;
        if let Some(input) = stdin {
            agent.feed_stdin(input).await?;
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(relay(st.clone(), sb.id.clone(), agent, tx, timeout));
        return Ok(Outcome::Streaming(rx));
    }

    let started = Instant::now();
    let result = tokio::time::timeout(timeout, st.engine.exec_request(&sb.id, agent_req, stdin))
        .await
        .map_err(|_| {
            ServiceError::new(
                ErrorCode::GatewayTimeout,
                format!(
                    "command timed out after {} s and was killed",
                    timeout.as_secs()
                ),
            )
        })??;
    let engine = started.elapsed();
    st.touch(&sb.id);
    Ok(Outcome::Finished { result, engine })
}

/// Passes a streamed command's events on until it ends, its timeout, or
/// the receiver goes away; each event passed on is activity. Returning
/// drops the agent stream, which kills the command's process group.
async fn relay(
    st: Shared,
    sandbox_id: String,
    mut stream: bhatti_agent_client::ExecStream,
    tx: mpsc::Sender<Event>,
    timeout: Duration,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = &mut deadline => {
                let _ = tx
                    .send(Event::Error(ServiceError::new(
                        ErrorCode::GatewayTimeout,
                        format!("timed out after {} s", timeout.as_secs()),
                    )))
                    .await;
                break;
            }
            _ = tx.closed() => break,
        };
        let ev = match ev {
            Ok(Some(StreamEvent::Stdout(d))) => Event::Stdout(d),
            Ok(Some(StreamEvent::Stderr(d))) => Event::Stderr(d),
            Ok(Some(StreamEvent::Exit(c))) => Event::Exit(c),
            Ok(Some(StreamEvent::Error { code, message })) => Event::Error(ServiceError::from(
                bhatti_agent_client::ClientError::Agent { code, message },
            )),
            Ok(None) => break,
            Err(e) => Event::Error(ServiceError::from(e)),
        };
        let end = matches!(ev, Event::Exit(_) | Event::Error(_));
        if tx.send(ev).await.is_err() {
            break;
        }
        st.touch(&sandbox_id);
        if end {
            break;
        }
    }
}

/// The agent's sessions (terminals and piped sessions) in the caller's
/// sandbox `id`.
pub async fn sessions(st: &Shared, user: &User, id: &str) -> ServiceResult<Vec<SessionInfo>> {
    let sb = st.sandbox(user, id).await?;
    st.ensure_hot(&sb).await?;
    Ok(st.engine.session_list(&sb.id).await?)
}

/// Kills session `session` in the caller's sandbox `id`.
pub async fn kill_session(st: &Shared, user: &User, id: &str, session: &str) -> ServiceResult<()> {
    let sb = st.sandbox(user, id).await?;
    st.ensure_hot(&sb).await?;
    Ok(st.engine.session_kill(&sb.id, session).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_the_reference() {
        assert_eq!(timeout_of(None), Duration::from_secs(300));
        assert_eq!(timeout_of(Some(0)), Duration::from_secs(300));
        assert_eq!(timeout_of(Some(-5)), Duration::from_secs(300));
        assert_eq!(timeout_of(Some(90_000)), Duration::from_secs(300));
        assert_eq!(timeout_of(Some(5)), Duration::from_secs(5));
    }
}
