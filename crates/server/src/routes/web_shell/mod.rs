//! The web shell over [`crate::service::web_shell`]: minting and revoking
//! the token (with a key), and, with no key, the page, its terminal
//! assets, and the WebSocket that checks the token.
//!
//! The page is one static document with a fresh CSP nonce per request; the
//! terminal (xterm.js and its fit addon, from npm) is embedded at build
//! time (build.rs, `scripts/web-shell.sh`). A build without it answers 501.
//!
//! The WebSocket's first message is `{"type":"auth","token":…,
//! "session"?:…}`. The server then sends `{"type":"connected",…}`, wakes
//! the sandbox, reattaches the named session when it is still there (its
//! scrollback replays) or opens a new one, sends `{"type":"session",
//! "session_id":…}`, and relays like `/sandboxes/{id}/ws`. A refusal is
//! `{"type":"error","error":…}` and a close.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_api as api;
use serde::Deserialize;

use super::ws::{open_shell, relay, upgrade, Mode, Upgrade};
use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::service::web_shell as service;
use crate::state::Shared;

/// The auth message must arrive within this.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

const PAGE: &str = include_str!("page.html");
const XTERM_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xterm.js"));
const XTERM_CSS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xterm.css"));
const FIT_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/addon-fit.js"));

/// The terminal was embedded at build time.
const BUNDLED: bool = cfg!(bhatti_xterm);

fn not_bundled() -> ServiceError {
    ServiceError::unsupported(
        "this build has no web shell terminal: run scripts/web-shell.sh (it needs npm) and rebuild",
    )
}

pub async fn mint(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<api::ShareToken>> {
    let (sb, token) = service::mint(&st, &user, &id).await?;
    st.events.emit(
        &sb.user_id,
        &sb.id,
        "shell.token_created",
        serde_json::json!({}),
    );
    Ok(Json(api::ShareToken {
        url: service::url(&st, &sb.id, &token),
        token,
        expires_at: sb.shell_token_expires_at.unwrap_or_default(),
    }))
}

pub async fn revoke(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<StatusCode> {
    service::revoke(&st, &user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The page, with the headers that keep it out of frames, caches and
/// referrers.
pub async fn page(Path(_id): Path<String>) -> ServiceResult<Response> {
    if !BUNDLED {
        return Err(not_bundled());
    }
    let nonce = bhatti_store::ids::random_hex(16);
    let csp = format!(
        "default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; font-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    );
    let mut r = PAGE.replace("{{NONCE}}", &nonce).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(r)
}

/// The embedded terminal's files.
pub async fn asset(Path(file): Path<String>) -> ServiceResult<Response> {
    if !BUNDLED {
        return Err(not_bundled());
    }
    let (body, ctype) = match file.as_str() {
        "xterm.js" => (XTERM_JS, "text/javascript; charset=utf-8"),
        "addon-fit.js" => (FIT_JS, "text/javascript; charset=utf-8"),
        "xterm.css" => (XTERM_CSS, "text/css; charset=utf-8"),
        _ => return Err(ServiceError::not_found(format!("no asset {file:?}"))),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // The files change only with the binary.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(r)
}

/// The first client message.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientHello {
    Auth {
        token: String,
        #[serde(default)]
        session: Option<String>,
    },
}

pub async fn ws(
    State(st): State<Shared>,
    Path(id): Path<String>,
    peer: Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>,
    ws: Upgrade,
) -> ServiceResult<Response> {
    let ws = upgrade(ws)?;
    let source = peer.map_or_else(|| "unix".to_string(), |p| p.0 .0.ip().to_string());
    Ok(ws.on_upgrade(move |socket| session(st, id, source, socket)))
}

async fn refuse(mut socket: WebSocket, error: &str) {
    let m = serde_json::json!({"type": "error", "error": error}).to_string();
    let _ = socket.send(Message::Text(m.into())).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: "refused".into(),
        })))
        .await;
}

async fn session(st: Shared, id: String, source: String, mut socket: WebSocket) {
    let hello = match tokio::time::timeout(AUTH_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<ClientHello>(t.as_str()).ok(),
        _ => None,
    };
    let Some(ClientHello::Auth { token, session }) = hello else {
        return refuse(socket, "expected {\"type\":\"auth\",\"token\":…} first").await;
    };
    let (sb, live) = match service::open(&st, &id, &token, &source).await {
        Ok(x) => x,
        Err(e) => {
            if e.code == crate::error::ErrorCode::Unauthorized {
                st.events.emit(
                    "",
                    "",
                    "auth.failed",
                    serde_json::json!({"ip": source, "what": "web shell"}),
                );
            }
            return refuse(socket, &e.message).await;
        }
    };
    let hi = serde_json::json!({"type": "connected", "sandbox": sb.name, "status": sb.status.to_string()});
    if socket
        .send(Message::Text(hi.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    // A session the page had is reattached (with its scrollback) when it
    // is still there; otherwise a new one.
    let opened = match session {
        Some(s) => match open_shell(&st, &sb, Some(s), false).await {
            Ok(x) => Ok(x),
            Err(_) => open_shell(&st, &sb, None, true).await,
        },
        None => open_shell(&st, &sb, None, true).await,
    };
    let (sid, reattach, term) = match opened {
        Ok(x) => x,
        Err(msg) => return refuse(socket, &format!("sandbox unavailable: {msg}")).await,
    };
    let m = serde_json::json!({"type": "session", "session_id": sid});
    if socket
        .send(Message::Text(m.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let started = std::time::Instant::now();
    relay(
        &st,
        &sb,
        socket,
        term,
        Mode::Tty,
        Some(live.revoked.clone()),
    )
    .await;
    drop(live);
    st.events.emit(
        &sb.user_id,
        &sb.id,
        "shell.web_session",
        serde_json::json!({"session_id": sid, "reattach": reattach, "ip": source,
            "duration_s": started.elapsed().as_secs()}),
    );
}
