//! E2B's default addressing, `Host: <port>-<sandboxID>.<domain>`, on the
//! daemon's own listener: what the SDKs' `get_host(port)` returns and
//! their envd client uses without `E2B_SANDBOX_URL`.
//!
//! - port 49983 (envd's) is envd: the request goes on to `/e2b/envd` with
//!   the sandbox named, and envd checks its access token as always;
//! - any other port is the sandbox's port through the authenticated
//!   reverse proxy (`/sandboxes/{id}/proxy/{port}/…`): the caller shows
//!   the sandbox's access token (`X-Access-Token`) or an API key.
//!
//! The rewrite happens before routing, so both land on the one
//! implementation of each.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::envd::{ACCESS_TOKEN_HEADER, ENVD_PORT, SANDBOX_ID_HEADER};
use super::E2bError;
use crate::error::ServiceError;
use crate::state::Shared;

/// A request addressed by host: the sandbox and the port in it.
#[derive(Debug, PartialEq, Eq)]
pub struct HostTarget {
    pub port: u16,
    pub sandbox_id: String,
}

/// The caller a host-addressed proxy request was authenticated as (by the
/// sandbox's access token), for the API middleware to take as it is.
#[derive(Debug, Clone)]
pub struct TokenCaller(pub bhatti_store::User);

/// `8000-0123456789abcdef.any.domain[:port]` → port 8000 of that sandbox.
/// Only a sandbox-ID-shaped label matches (16 lowercase hex digits), so an
/// ordinary host name never does.
pub fn parse(host: &str) -> Option<HostTarget> {
    let label = host.split('.').next()?;
    if !host.contains('.') {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let id_ok = id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    id_ok.then(|| HostTarget {
        port,
        sandbox_id: id.to_string(),
    })
}

fn rewrite(req: &mut Request, prefix: &str) -> Result<(), ServiceError> {
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = format!("{prefix}{pq}")
        .parse::<Uri>()
        .map_err(|e| ServiceError::bad_request(format!("bad path: {e}")))?;
    Ok(())
}

/// The layer in front of the router.
pub async fn route(State(st): State<Shared>, mut req: Request, next: Next) -> Response {
    let target = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(parse);
    let Some(t) = target else {
        return next.run(req).await;
    };
    let r = if t.port == ENVD_PORT {
        if let Ok(v) = HeaderValue::from_str(&t.sandbox_id) {
            req.headers_mut().insert(SANDBOX_ID_HEADER, v);
        }
        rewrite(&mut req, "/e2b/envd")
    } else {
        let token = req
            .headers()
            .get(ACCESS_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match token_caller(&st, token, &t.sandbox_id).await {
            Ok(Some(user)) => {
                req.extensions_mut().insert(TokenCaller(user));
            }
            Ok(None) => {}
            Err(e) => return E2bError(e).into_response(),
        }
        rewrite(
            &mut req,
            &format!("/sandboxes/{}/proxy/{}", t.sandbox_id, t.port),
        )
    };
    if let Err(e) = r {
        return E2bError(e).into_response();
    }
    next.run(req).await
}

/// The sandbox owner, when the request carries the sandbox's valid access
/// token; `None` without one (the API key is checked next, as for any
/// request); an error for a wrong one.
async fn token_caller(
    st: &Shared,
    token: Option<String>,
    sandbox_id: &str,
) -> Result<Option<bhatti_store::User>, ServiceError> {
    let Some(token) = token else {
        return Ok(None);
    };
    let sb = super::envd::sandbox_for_token(st, sandbox_id, &token).await?;
    let uid = sb.user_id.clone();
    Ok(Some(st.db(move |s| s.user(&uid)).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sandbox_shaped_hosts_match() {
        assert_eq!(
            parse("8000-0123456789abcdef.e2b.app"),
            Some(HostTarget {
                port: 8000,
                sandbox_id: "0123456789abcdef".into()
            })
        );
        assert_eq!(
            parse("49983-0123456789abcdef.localhost:8080").map(|t| t.port),
            Some(49983)
        );
        assert_eq!(parse("localhost:8080"), None);
        assert_eq!(parse("api.example.com"), None);
        assert_eq!(parse("8000-0123456789ABCDEF.e2b.app"), None);
        assert_eq!(parse("8000-0123.e2b.app"), None);
        assert_eq!(parse("0-0123456789abcdef.e2b.app"), None);
        assert_eq!(parse("8000-0123456789abcdef"), None);
    }
}
