//! Exec (buffered, NDJSON-streamed, detached) and session listing, over
//! [`crate::service::exec`]; the NDJSON lines and headers are made here.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_api as api;
use futures_util::StreamExt;

use super::body::JsonBody;
use super::Caller;
use crate::error::{ErrorCode, ServiceResult};
use crate::service::exec::{self as service, Event, Outcome};
use crate::state::Shared;

fn wants_ndjson(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(api::NDJSON))
}

fn event_to_api(ev: Event) -> api::ExecEvent {
    match ev {
        Event::Stdout(d) => api::ExecEvent::Stdout {
            data: String::from_utf8_lossy(&d).into_owned(),
        },
        Event::Stderr(d) => api::ExecEvent::Stderr {
            data: String::from_utf8_lossy(&d).into_owned(),
        },
        Event::Exit(c) => api::ExecEvent::Exit { exit_code: c },
        // The words are all a 500's cause may show; the log has the rest.
        Event::Error(e) if e.code == ErrorCode::Internal => {
            tracing::warn!(error = %e.message, "exec stream failed");
            api::ExecEvent::Error {
                data: "internal error".into(),
                code: Some(ErrorCode::Internal),
                reason: None,
            }
        }
        Event::Error(e) => api::ExecEvent::Error {
            data: e.message,
            code: Some(e.code),
            reason: e.reason,
        },
    }
}

pub async fn exec(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<api::ExecRequest>,
) -> ServiceResult<Response> {
    let outcome = service::exec(&st, &user, &id, &req, wants_ndjson(&headers)).await?;
    Ok(match outcome {
        Outcome::Detached(r) => Json(api::DetachedResponse {
            pid: r.pid,
            output_file: r.output_file,
            detached: true,
        })
        .into_response(),
        Outcome::Streaming(rx) => {
            let lines = tokio_stream(rx).map(|ev| Ok::<_, std::io::Error>(line(&event_to_api(ev))));
            (
                [
                    (header::CONTENT_TYPE, api::NDJSON),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                Body::from_stream(lines),
            )
                .into_response()
        }
        Outcome::Finished { result, engine } => {
            let mut resp = Json(api::ExecResponse {
                exit_code: result.exit_code,
                stdout: result.stdout_str(),
                stderr: result.stderr_str(),
            })
            .into_response();
            let ms = engine.as_secs_f64() * 1000.0;
            if let Ok(v) = HeaderValue::from_str(&format!("engine;dur={ms:.3}")) {
                resp.headers_mut().insert(super::SERVER_TIMING, v);
            }
            resp
        }
    })
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
    let list = service::sessions(&st, &user, &id).await?;
    Ok(Json(list.into_iter().map(session_to_api).collect()))
}

pub async fn kill_session(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path((id, session)): Path<(String, String)>,
) -> ServiceResult<Json<api::StatusBody>> {
    service::kill_session(&st, &user, &id, &session).await?;
    Ok(Json(api::StatusBody {
        status: "killed".into(),
    }))
}
