//! The reverse proxy into a guest port, shared by the authenticated route
//! (`/sandboxes/:id/proxy/:port/…`) and the public listener
//! ([`crate::public`]): each request goes over a fresh agent tunnel to
//! `127.0.0.1:<port>` in the guest. HTTP is streamed both ways (responses
//! flush as they come, so server-sent events work); a WebSocket upgrade is
//! relayed as raw bytes once both sides have switched.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bhatti_engine::EngineExt;
use hyper_util::rt::TokioIo;

use crate::error::{ErrorCode, ServiceError, ServiceResult};
use crate::state::{Counters, Shared};

/// An upgraded connection with no bytes either way for this long is closed.
const WS_IDLE: Duration = Duration::from_secs(600);
/// How often a busy upgraded connection marks its sandbox active.
const WS_TOUCH_EVERY: Duration = Duration::from_secs(10);

/// Dial attempts while the agent says it is busy, the first pause, and
/// the longest (about 2 s in all).
const BUSY_RETRIES: usize = 10;
const BUSY_BACKOFF: Duration = Duration::from_millis(10);
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(400);

fn bad_gateway(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::new(ErrorCode::BadGateway, format!("bad gateway: {e}"))
}

/// The client's address as the listener saw it (loopback for the Unix
/// socket, which has none).
pub(crate) fn client_ip(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// Sends `req` to `port` of the (hot) sandbox `sandbox_id` with its path
/// and query replaced by `path_and_query`, and answers with the guest's
/// response. `Host` becomes `localhost:<port>`, credentials are dropped,
/// and `X-Forwarded-For/-Proto/-Host` say where the request came from
/// (`proto` is the scheme the client used).
pub async fn forward(
    st: &Shared,
    sandbox_id: &str,
    port: u16,
    mut req: Request,
    path_and_query: &str,
    proto: &'static str,
) -> ServiceResult<Response> {
    Counters::inc(&st.counters.proxy_requests);
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let client_ip = client_ip(&req);
    let host = req
        .headers()
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static("localhost"));
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    parts.uri = path_and_query
        .parse::<Uri>()
        .map_err(|e| ServiceError::bad_request(format!("bad path: {e}")))?;
    let h = &mut parts.headers;
    h.remove(header::AUTHORIZATION);
    h.insert(
        header::HOST,
        HeaderValue::from_str(&format!("localhost:{port}")).map_err(ServiceError::internal)?,
    );
    if let Ok(v) = HeaderValue::from_str(&client_ip) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    h.insert("x-forwarded-host", host);
    let upstream_req = hyper::Request::from_parts(parts, body);

    let tunnel = dial(st, sandbox_id, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tunnel))
        .await
        .map_err(bad_gateway)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "proxy connection ended");
        }
    });
    let mut resp = sender
        .send_request(upstream_req)
        .await
        .map_err(bad_gateway)?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            let st2 = st.clone();
            let sid = sandbox_id.to_string();
            tokio::spawn(async move {
                let _pin = st2.pin(&sid);
                let (Ok(up), Ok(down)) = (up.await, down.await) else {
                    return;
                };
                relay_upgraded(TokioIo::new(up), TokioIo::new(down), || st2.touch(&sid)).await;
            });
        }
    }
    let (parts, body) = resp.into_parts();
    // Streams as it arrives (SSE-friendly): hyper's body is passed through.
    Ok(Response::from_parts(parts, Body::new(body)).into_response())
}

/// A tunnel to `port`, retried while the agent's connection budget is
/// full (other clients' connections in flight: it frees up in
/// milliseconds).
async fn dial(
    st: &Shared,
    sandbox_id: &str,
    port: u16,
) -> ServiceResult<bhatti_agent_client::Tunnel> {
    let mut backoff = BUSY_BACKOFF;
    for _ in 0..BUSY_RETRIES {
        match st.engine.tunnel(sandbox_id, port).await {
            Err(bhatti_engine::EngineError::Agent(bhatti_agent_client::ClientError::Busy)) => {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(BUSY_BACKOFF_MAX);
            }
            r => return r.map_err(bad_gateway),
        }
    }
    st.engine
        .tunnel(sandbox_id, port)
        .await
        .map_err(bad_gateway)
}

/// Copies bytes both ways until either side closes or both are idle for
/// [`WS_IDLE`], calling `touch` at most every [`WS_TOUCH_EVERY`].
async fn relay_upgraded<A, B>(a: A, b: B, touch: impl Fn())
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut abuf = vec![0u8; 16 << 10];
    let mut bbuf = vec![0u8; 16 << 10];
    let mut last_touch = std::time::Instant::now();
    loop {
        let r = tokio::time::timeout(WS_IDLE, async {
            tokio::select! {
                n = ar.read(&mut abuf) => match n { Ok(0) | Err(_) => Err(()), Ok(n) => bw.write_all(&abuf[..n]).await.map_err(|_| ()) },
                n = br.read(&mut bbuf) => match n { Ok(0) | Err(_) => Err(()), Ok(n) => aw.write_all(&bbuf[..n]).await.map_err(|_| ()) },
            }
        })
        .await;
        match r {
            Ok(Ok(())) => {
                if last_touch.elapsed() >= WS_TOUCH_EVERY {
                    touch();
                    last_touch = std::time::Instant::now();
                }
            }
            _ => break,
        }
    }
    let _ = aw.shutdown().await;
    let _ = bw.shutdown().await;
}
