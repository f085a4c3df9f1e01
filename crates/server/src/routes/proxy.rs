//! Listening ports and the authenticated reverse proxy
//! `/sandboxes/:id/proxy/:port/…` (HTTP, streamed both ways, and WebSocket
//! upgrades), each request over a fresh agent tunnel to `127.0.0.1:<port>`
//! in the guest.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_api as api;
use bhatti_engine::EngineExt;
use hyper_util::rt::TokioIo;

use super::Caller;
use crate::error::{ErrorCode, ServiceError, ServiceResult};
use crate::service::ports;
use crate::state::{Counters, Shared};

const WS_IDLE: Duration = Duration::from_secs(600);
const WS_TOUCH_EVERY: Duration = Duration::from_secs(10);

pub async fn ports(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<Vec<api::Port>>> {
    let ports = ports::of_sandbox(&st, &user, &id).await?;
    Ok(Json(
        ports
            .into_iter()
            .map(|p| api::Port {
                sandbox_id: None,
                container_port: p,
                proxy_url: format!("/sandboxes/{id}/proxy/{p}/"),
            })
            .collect(),
    ))
}

/// Ports of every hot sandbox of the user; wakes nothing.
pub async fn all_ports(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ServiceResult<Json<Vec<api::Port>>> {
    let ports = ports::of_hot_sandboxes(&st, &user).await?;
    Ok(Json(
        ports
            .into_iter()
            .map(|(sid, p)| api::Port {
                proxy_url: format!("/sandboxes/{sid}/proxy/{p}/"),
                sandbox_id: Some(sid),
                container_port: p,
            })
            .collect(),
    ))
}

/// The raw (still percent-encoded) path after `/sandboxes/<id>/proxy/<port>`,
/// found by position: the ID and port were decoded once by the router, and
/// searching for their decoded text in the raw path would miss an encoded
/// ID and forward the wrong path.
fn rest_after_port(raw: &str) -> &str {
    let rest = raw.match_indices('/').nth(4).map_or("", |(i, _)| &raw[i..]);
    if rest.is_empty() {
        "/"
    } else {
        rest
    }
}

fn bad_gateway(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::new(ErrorCode::BadGateway, format!("bad gateway: {e}"))
}

pub async fn proxy(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(params): Path<Vec<(String, String)>>,
    mut req: Request,
) -> ServiceResult<Response> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let id = get("id").unwrap_or_default();
    let port: u16 = get("port")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| ServiceError::bad_request("port must be 1-65535"))?;
    let sb = st.sandbox(&user, &id).await?;
    st.ensure_hot(&sb).await?;
    Counters::inc(&st.counters.proxy_requests);

    // Path after `/proxy/<port>`, and the query, forwarded verbatim.
    let orig = req.uri().clone();
    let rest = rest_after_port(orig.path());
    let pq = match orig.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let client_ip = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let host = req
        .headers()
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static("localhost"));
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    parts.uri = pq
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
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    h.insert("x-forwarded-host", host);
    let upstream_req = hyper::Request::from_parts(parts, body);

    let tunnel = st.engine.tunnel(&sb.id, port).await.map_err(bad_gateway)?;
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
            let sid = sb.id.clone();
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

#[cfg(test)]
mod tests {
    use super::rest_after_port;

    #[test]
    fn the_forwarded_path_is_found_by_position() {
        assert_eq!(rest_after_port("/sandboxes/abc/proxy/80"), "/");
        assert_eq!(rest_after_port("/sandboxes/abc/proxy/80/"), "/");
        assert_eq!(rest_after_port("/sandboxes/abc/proxy/80/a/b"), "/a/b");
        // A percent-encoded ID (and port) still forwards the right path,
        // which stays encoded as the client sent it.
        assert_eq!(
            rest_after_port("/sandboxes/%61bc/proxy/%380/x%20y"),
            "/x%20y"
        );
        assert_eq!(rest_after_port("/sandboxes/my%2Fbox/proxy/80/p"), "/p");
    }
}
