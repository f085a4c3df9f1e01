//! WebSocket sessions: the interactive shell (`/ws`, TTY, auto-reattach)
//! and piped sessions (`/exec/ws`).
//!
//! While a client is attached the sandbox is pinned hot (the thermal
//! manager never pauses under a live terminal). The server pings every
//! 30 s and gives up on a client silent for 90 s.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bhatti_agent_client::{ShellOptions, Terminal};
use bhatti_api as api;
use bhatti_engine::EngineExt;
use bhatti_store::Sandbox;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::state::Shared;

const PING_EVERY: Duration = Duration::from_secs(30);
const PONG_TIMEOUT: Duration = Duration::from_secs(90);
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
const SHELL_IDLE_SEC: i64 = 3600;

/// Starts bash if the image has it, else a login sh.
fn shell_argv() -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        "if [ -x /bin/bash ]; then exec /bin/bash -li; else exec /bin/sh -l; fi".into(),
    ]
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShellQuery {
    session: Option<String>,
    #[serde(default)]
    new: Option<bool>,
}

pub(super) type Upgrade = Result<WebSocketUpgrade, WebSocketUpgradeRejection>;

/// A request that is not a WebSocket handshake gets a JSON error like
/// every other refusal (axum's is plain text), as invalid input (axum says
/// 426 or 400 for what is wrong with the handshake's headers).
pub(super) fn upgrade(ws: Upgrade) -> ServiceResult<WebSocketUpgrade> {
    ws.map_err(|r| ServiceError::bad_request(r.body_text()))
}

pub async fn shell(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    q: Result<Query<ShellQuery>, axum::extract::rejection::QueryRejection>,
    ws: Upgrade,
) -> ServiceResult<Response> {
    let ws = upgrade(ws)?;
    let Query(q) = q?;
    let sb = st.sandbox(&user, &id).await?;
    let new = q.new == Some(true);
    Ok(ws.on_upgrade(move |socket| shell_session(st, sb, q.session, new, socket)))
}

pub(super) async fn open_shell(
    st: &Shared,
    sb: &Sandbox,
    session: Option<String>,
    new: bool,
) -> Result<(String, bool, Terminal), String> {
    st.ensure_hot(sb).await.map_err(|e| e.message)?;
    if let Some(s) = session {
        let (info, term) = st
            .engine
            .shell_attach(&sb.id, &s, false)
            .await
            .map_err(|e| format!("attach error: {e}"))?;
        return Ok((info.session_id, true, term));
    }
    if !new {
        if let Ok(list) = st.engine.session_list(&sb.id).await {
            let newest = list
                .into_iter()
                .filter(|s| s.tty && s.running && !s.attached)
                .max_by_key(|s| s.created_at);
            if let Some(s) = newest {
                // if_detached: another client that grabbed it first wins.
                if let Ok((info, term)) = st.engine.shell_attach(&sb.id, &s.session_id, true).await
                {
                    return Ok((info.session_id, true, term));
                }
            }
        }
    }
    let mut env = BTreeMap::new();
    env.insert("TERM".to_string(), "xterm-256color".to_string());
    let (info, term) = st
        .engine
        .shell(
            &sb.id,
            ShellOptions {
                argv: shell_argv(),
                env,
                cwd: "/workspace".into(),
                rows: 24,
                cols: 80,
                max_idle_sec: SHELL_IDLE_SEC,
            },
        )
        .await
        .map_err(|e| format!("shell error: {e}"))?;
    Ok((info.session_id, false, term))
}

async fn shell_session(
    st: Shared,
    sb: Sandbox,
    session: Option<String>,
    new: bool,
    mut socket: WebSocket,
) {
    let (sid, reattach, term) = match open_shell(&st, &sb, session, new).await {
        Ok(x) => x,
        Err(msg) => {
            let _ = socket.send(Message::Text(msg.into())).await;
            let _ = socket.close().await;
            return;
        }
    };
    let started = std::time::Instant::now();
    let msg = serde_json::to_string(&api::WsServerMsg::Session {
        session_id: sid.clone(),
    })
    .unwrap_or_default();
    if socket.send(Message::Text(msg.into())).await.is_err() {
        return;
    }
    relay(&st, &sb, socket, term, Mode::Tty, None).await;
    st.events.emit(
        &sb.user_id,
        &sb.id,
        "shell.session",
        serde_json::json!({"session_id": sid, "reattach": reattach, "duration_s": started.elapsed().as_secs()}),
    );
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Mode {
    Tty,
    Piped,
}

/// Relays a terminal and a WebSocket until either ends, or until `stop`
/// is cancelled (a revoked web-shell token).
pub(super) async fn relay(
    st: &Shared,
    sb: &Sandbox,
    socket: WebSocket,
    term: Terminal,
    mode: Mode,
    stop: Option<tokio_util::sync::CancellationToken>,
) {
    let stop = stop.unwrap_or_default();
    let _pin = st.pin(&sb.id);
    st.counters
        .websockets_active
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mut tx, mut rx) = socket.split();
    let (mut out, mut input) = term.into_split();
    let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::channel::<Message>(4);

    // Terminal → socket.
    let st2 = st.clone();
    let id2 = sb.id.clone();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                chunk = out.read() => match chunk {
                    Ok(Some(data)) => {
                        st2.touch(&id2);
                        let m = match mode {
                            Mode::Tty => Message::Binary(data.into()),
                            Mode::Piped => Message::Text(String::from_utf8_lossy(&data).into_owned().into()),
                        };
                        if tx.send(m).await.is_err() { return; }
                    }
                    Ok(None) => {
                        if mode == Mode::Piped {
                            let code = out.exit_code().unwrap_or(-1);
                            let m = serde_json::to_string(&api::WsServerMsg::Exit { exit_code: code }).unwrap_or_default();
                            let _ = tx.send(Message::Text(m.into())).await;
                        }
                        let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "exited".into() }))).await;
                        return;
                    }
                    Err(e) => {
                        if mode == Mode::Piped {
                            let m = serde_json::to_string(&api::WsServerMsg::Error { message: e.to_string() }).unwrap_or_default();
                            let _ = tx.send(Message::Text(m.into())).await;
                        }
                        let _ = tx.send(Message::Close(Some(CloseFrame { code: 1011, reason: "agent error".into() }))).await;
                        return;
                    }
                },
                m = ctl_rx.recv() => match m {
                    Some(m) => { if tx.send(m).await.is_err() { return; } }
                    None => return,
                },
                _ = ping.tick() => {
                    if tx.send(Message::Ping(Vec::new().into())).await.is_err() { return; }
                }
            }
        }
    });

    // Socket → terminal.
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout(PONG_TIMEOUT, rx.next()) => n,
            _ = stop.cancelled() => break,
        };
        let m = match next {
            Ok(Some(Ok(m))) => m,
            _ => break,
        };
        st.touch(&sb.id);
        let r = match m {
            Message::Binary(b) => input.write(&b).await,
            Message::Text(t) => {
                if mode == Mode::Tty {
                    if let Ok(api::WsClientMsg::Resize { rows, cols }) =
                        serde_json::from_str(t.as_str())
                    {
                        input.resize(rows, cols).await
                    } else {
                        input.write(t.as_bytes()).await
                    }
                } else {
                    input.write(t.as_bytes()).await
                }
            }
            Message::Ping(p) => {
                let _ = ctl_tx.send(Message::Pong(p)).await;
                Ok(())
            }
            Message::Pong(_) => Ok(()),
            Message::Close(_) => break,
        };
        if r.is_err() || writer.is_finished() {
            break;
        }
    }
    // Dropping the writer half of the agent connection detaches the session
    // (it keeps running in the guest, ready for reattach).
    drop(input);
    drop(ctl_tx);
    writer.abort();
    let _ = writer.await;
    st.counters
        .websockets_active
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PipedQuery {
    session: Option<String>,
}

pub async fn piped(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    q: Result<Query<PipedQuery>, axum::extract::rejection::QueryRejection>,
    ws: Upgrade,
) -> ServiceResult<Response> {
    let ws = upgrade(ws)?;
    let Query(q) = q?;
    let sb = st.sandbox(&user, &id).await?;
    Ok(ws.on_upgrade(move |socket| piped_session(st, sb, q.session, socket)))
}

async fn setup_error(socket: &mut WebSocket, msg: String) {
    let body = serde_json::to_string(&api::ErrorBody {
        error: msg,
        code: None,
        reason: None,
        request_id: None,
    })
    .unwrap_or_default();
    let _ = socket.send(Message::Text(body.into())).await;
    let _ = socket.close().await;
}

async fn piped_session(st: Shared, sb: Sandbox, session: Option<String>, mut socket: WebSocket) {
    if let Err(e) = st.ensure_hot(&sb).await {
        return setup_error(&mut socket, e.message).await;
    }
    let opened = match session {
        Some(s) => st
            .engine
            .shell_attach(&sb.id, &s, false)
            .await
            .map_err(|e| e.to_string()),
        None => {
            let first = match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, socket.recv()).await {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(_) => {
                    return setup_error(
                        &mut socket,
                        "expected a text message with the command".into(),
                    )
                    .await
                }
                Err(_) => return setup_error(&mut socket, "no command within 10 s".into()).await,
            };
            let start: api::PipedStart = match serde_json::from_str(first.as_str()) {
                Ok(s) => s,
                Err(e) => {
                    return setup_error(&mut socket, format!("bad command message: {e}")).await
                }
            };
            if start.cmd.is_empty() {
                return setup_error(&mut socket, "cmd required".into()).await;
            }
            st.engine
                .piped_session(
                    &sb.id,
                    start.cmd,
                    start.env,
                    start.max_idle_sec.unwrap_or(SHELL_IDLE_SEC),
                )
                .await
                .map_err(|e| e.to_string())
        }
    };
    let (info, term) = match opened {
        Ok(x) => x,
        Err(e) => return setup_error(&mut socket, e).await,
    };
    let msg = serde_json::to_string(&api::WsServerMsg::Session {
        session_id: info.session_id.clone(),
    })
    .unwrap_or_default();
    if socket.send(Message::Text(msg.into())).await.is_err() {
        return;
    }
    relay(&st, &sb, socket, term, Mode::Piped, None).await;
    st.events.emit(
        &sb.user_id,
        &sb.id,
        "exec.piped_session",
        serde_json::json!({"session_id": info.session_id}),
    );
}
