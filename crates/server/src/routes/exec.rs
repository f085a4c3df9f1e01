//! Exec (buffered, NDJSON-streamed, detached) and session listing.
//!
//! The timeout is enforced host-side by dropping the agent connection, which
//! makes lohar SIGKILL the command's process group (DECISIONS §7.1); a
//! streaming client that goes away does the same.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_agent_client::StreamEvent;
use bhatti_api as api;
use bhatti_engine::EngineExt;
use bhatti_protocol::messages::ExecRequest as AgentExec;

use super::body::JsonBody;
use super::Caller;
use crate::error::{ErrorCode, ServiceError, ServiceResult};
use crate::state::Shared;
use crate::validate;

const DEFAULT_TIMEOUT: i64 = 300;
const MAX_TIMEOUT: i64 = 86_400;
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

fn timeout_of(t: Option<i64>) -> Duration {
    let t = t.unwrap_or(DEFAULT_TIMEOUT);
    let t = if t <= 0 || t > MAX_TIMEOUT {
        DEFAULT_TIMEOUT
    } else {
        t
    };
    Duration::from_secs(t as u64)
}

fn wants_ndjson(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(api::NDJSON))
}

pub async fn exec(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<api::ExecRequest>,
) -> ServiceResult<Response> {
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
    let sb = st.sandbox(&user, &id).await?;
    st.ensure_hot(&sb).await?;
    let timeout = timeout_of(req.timeout_sec);

    if req.detach {
        let r = tokio::time::timeout(
            DETACH_TIMEOUT,
            st.engine
                .exec_detached(&sb.id, req.cmd.clone(), req.output_file.clone()),
        )
        .await
        .map_err(|_| {
            ServiceError::new(
                ErrorCode::GatewayTimeout,
                "detached exec did not start in 30 s",
            )
        })??;
        return Ok(Json(api::DetachedResponse {
            pid: r.pid,
            output_file: r.output_file,
            detached: true,
        })
        .into_response());
    }

    if wants_ndjson(&headers) {
        let mut stream = st
            .engine
            .exec_stream(&sb.id, AgentExec::new(req.cmd.clone()))
            .await
            .map_err(start_error)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
        let st2 = st.clone();
        let sid = sb.id.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                let ev = tokio::select! {
                    ev = stream.next() => ev,
                    _ = &mut deadline => {
                        let _ = tx.send(Ok(line(&api::ExecEvent::Error { data: format!("timed out after {} s", timeout.as_secs()) }))).await;
                        // Dropping the stream kills the process group.
                        break;
                    }
                    _ = tx.closed() => break,
                };
                let ev = match ev {
                    Ok(Some(StreamEvent::Stdout(d))) => api::ExecEvent::Stdout {
                        data: String::from_utf8_lossy(&d).into_owned(),
                    },
                    Ok(Some(StreamEvent::Stderr(d))) => api::ExecEvent::Stderr {
                        data: String::from_utf8_lossy(&d).into_owned(),
                    },
                    Ok(Some(StreamEvent::Exit(c))) => api::ExecEvent::Exit { exit_code: c },
                    Ok(Some(StreamEvent::Error { message, .. })) => {
                        api::ExecEvent::Error { data: message }
                    }
                    Ok(None) => break,
                    Err(e) => api::ExecEvent::Error {
                        data: e.to_string(),
                    },
                };
                let end = matches!(
                    ev,
                    api::ExecEvent::Exit { .. } | api::ExecEvent::Error { .. }
                );
                if tx.send(Ok(line(&ev))).await.is_err() {
                    break;
                }
                st2.touch(&sid);
                if end {
                    break;
                }
            }
        });
        let body = Body::from_stream(tokio_stream(rx));
        return Ok((
            [
                (header::CONTENT_TYPE, api::NDJSON),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body,
        )
            .into_response());
    }

    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        timeout,
        st.engine
            .exec_request(&sb.id, AgentExec::new(req.cmd.clone()), None),
    )
    .await
    .map_err(|_| {
        ServiceError::new(
            ErrorCode::GatewayTimeout,
            format!(
                "command timed out after {} s and was killed",
                timeout.as_secs()
            ),
        )
    })?
    .map_err(start_error)?;
    let engine_ms = started.elapsed().as_secs_f64() * 1000.0;
    st.touch(&sb.id);
    let mut resp = Json(api::ExecResponse {
        exit_code: r.exit_code,
        stdout: r.stdout_str(),
        stderr: r.stderr_str(),
    })
    .into_response();
    // The time spent in the engine (agent round trip included), so a
    // client can tell the API's own cost from the sandbox's.
    if let Ok(v) = HeaderValue::from_str(&format!("engine;dur={engine_ms:.3}")) {
        resp.headers_mut().insert(super::SERVER_TIMING, v);
    }
    Ok(resp)
}

/// A command that cannot start says why in the agent's words, with the
/// status of the reason: 404 no such program, 403 not executable.
fn start_error(e: bhatti_engine::EngineError) -> ServiceError {
    ServiceError::from(e)
}

fn line(ev: &api::ExecEvent) -> bytes::Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    v.into()
}

/// An mpsc receiver as a `Stream` (without pulling in tokio-stream).
pub fn tokio_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

pub fn session_to_api(s: bhatti_protocol::messages::SessionInfo) -> api::Session {
    api::Session {
        session_id: s.session_id,
        argv: s.argv,
        tty: s.tty,
        running: s.running,
        exit_code: s.exit_code,
        attached: s.attached,
        created_at: s.created_at,
    }
}

pub async fn sessions(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<Vec<api::Session>>> {
    let sb = st.sandbox(&user, &id).await?;
    st.ensure_hot(&sb).await?;
    let list = st.engine.session_list(&sb.id).await?;
    Ok(Json(list.into_iter().map(session_to_api).collect()))
}

pub async fn kill_session(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path((id, session)): Path<(String, String)>,
) -> ServiceResult<Json<api::StatusBody>> {
    let sb = st.sandbox(&user, &id).await?;
    st.ensure_hot(&sb).await?;
    st.engine.session_kill(&sb.id, &session).await?;
    Ok(Json(api::StatusBody {
        status: "killed".into(),
    }))
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
