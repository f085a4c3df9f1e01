//! The public listener (`public_proxy_listen`): published ports, reached
//! with no key by whoever has the URL.
//!
//! A request is routed by its `Host` and path:
//! - domain mode, `Host: <alias>.<proxy_zone>`: the alias's port, the
//!   path as sent;
//! - domain mode, `Host: <port>-<sandbox id>.<proxy_zone>`, or `Host:
//!   <api_host>`: the API itself, which authenticates as always (an API key,
//!   or for a port the sandbox's access token, see `routes::e2b::host`);
//! - otherwise (no domain, or the host is an address or `localhost`):
//!   path mode, `/<alias>/<path>` → the alias's port at `/<path>`;
//! - any other host in domain mode: 404;
//! - `/_shell/…` on any host: the web shell (the API serves it and checks
//!   its token).
//!
//! An unknown alias is 404 before any limit is charged. Then the client's
//! address and the alias each draw from a token bucket (429 with
//! `Retry-After`), bodies are capped, the sandbox is woken (concurrent
//! wakes of one sandbox wait for the one in flight: the engine serializes
//! them and the later callers find it hot), and the request is forwarded
//! by [`crate::proxy`] within a deadline.

pub(crate) mod acme;
pub(crate) mod tls;

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;

use crate::error::{ErrorCode, ErrorReason, ServiceError};
use crate::routes::e2b::host as e2b_host;
use crate::service::publish;
use crate::state::{Counters, Shared};

/// Request bodies (other than GET/HEAD) through the public listener are
/// capped at 50 MiB.
pub const MAX_PUBLIC_BODY: u64 = 50 << 20;
/// A request must have its answer's headers within this (the wake
/// included); the body then streams for as long as it takes.
const DEADLINE: Duration = Duration::from_secs(300);

#[derive(Clone)]
struct Public {
    st: Shared,
    /// The whole API, for the API host and per-port hosts.
    api: Router,
}

/// The public listener's service: `api` is the daemon's API router.
pub fn router(st: Shared, api: Router) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(Public { st, api })
}

/// The plain-HTTP listener of domain mode: ACME HTTP-01 answers, and a
/// permanent redirect to HTTPS for everything else.
pub fn http_router(acme: Option<std::sync::Arc<acme::Acme>>) -> Router {
    Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(
                move |axum::extract::Path(token): axum::extract::Path<String>| {
                    let answer = acme.as_ref().and_then(|a| a.challenge(&token));
                    async move {
                        match answer {
                            Some(key_auth) => key_auth.into_response(),
                            None => ServiceError::not_found("no such challenge").into_response(),
                        }
                    }
                },
            ),
        )
        .fallback(to_https)
}

async fn to_https(req: Request) -> Response {
    let Some(host) = host_name(&req) else {
        return ServiceError::bad_request("no Host").into_response();
    };
    let pq = req.uri().path_and_query().map_or("/", |x| x.as_str());
    let mut r = axum::http::StatusCode::MOVED_PERMANENTLY.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Where a public request goes.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The API router.
    Api,
    /// A published alias, with the path and query to send to the guest.
    Alias { alias: String, path: String },
    /// Nothing: the message says why.
    Unknown(String),
}

/// The request's host name in lower case, without a port.
fn host_name(req: &Request) -> Option<String> {
    let h = req.headers().get(header::HOST)?.to_str().ok()?;
    let name = match h.strip_prefix('[') {
        // An IPv6 literal, `[::1]:8443`.
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => h.rsplit_once(':').map_or(h, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                h
            }
        }),
    };
    Some(name.to_ascii_lowercase())
}

fn target(st: &Shared, host: Option<&str>, path_and_query: &str) -> Target {
    // The web shell (no alias has an underscore): the API serves it, and
    // it checks its own token.
    if path_and_query.starts_with("/_shell/") {
        return Target::Api;
    }
    if let (Some(d), Some(host)) = (&st.cfg.domain, host) {
        if d.api_host.as_deref() == Some(host) {
            return Target::Api;
        }
        if host
            .strip_suffix(d.proxy_zone.as_str())
            .is_some_and(|l| l.ends_with('.'))
        {
            if e2b_host::parse(host).is_some() {
                return Target::Api;
            }
            let Some(label) = d
                .zone_label(host)
                .filter(|l| crate::validate::alias(l).is_ok())
            else {
                return Target::Unknown(format!("nothing is published as {host:?}"));
            };
            return Target::Alias {
                alias: label.to_string(),
                path: path_and_query.to_string(),
            };
        }
        let is_address = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok();
        if !is_address {
            return Target::Unknown(format!("unknown host {host:?}"));
        }
    }
    path_mode(path_and_query)
}

/// `/<alias>/<rest>?q` → the alias and `/<rest>?q`.
fn path_mode(path_and_query: &str) -> Target {
    let Some(rest) = path_and_query.strip_prefix('/') else {
        return Target::Unknown("no alias in the path (/<alias>/…)".into());
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (alias, after) = rest.split_at(end);
    if alias.is_empty() || crate::validate::alias(alias).is_err() {
        return Target::Unknown(format!(
            "nothing is published as {alias:?} (the path is /<alias>/…)"
        ));
    }
    let path = if after.starts_with('/') {
        after.to_string()
    } else {
        format!("/{after}")
    };
    Target::Alias {
        alias: alias.to_string(),
        path,
    }
}

async fn handle(State(p): State<Public>, req: Request) -> Response {
    let host = host_name(&req);
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |x| x.as_str())
        .to_string();
    match target(&p.st, host.as_deref(), &pq) {
        Target::Api => match p.api.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        Target::Unknown(why) => ServiceError::not_found(why).into_response(),
        Target::Alias { alias, path } => match serve(&p.st, &alias, &path, req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        },
    }
}

async fn serve(
    st: &Shared,
    alias: &str,
    path: &str,
    req: Request,
) -> Result<Response, ServiceError> {
    let route = publish::route(st, alias).await?;
    let ip = crate::proxy::client_ip(&req);
    if !st.public_limiter.allow(&ip, alias) {
        Counters::inc(&st.counters.rate_limited);
        let mut r = ServiceError::too_many("rate limit exceeded")
            .because(ErrorReason::RateLimited)
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(r);
    }
    let req = cap_body(req)?;
    let sid = route.sandbox_id.clone();
    let sb = match st.lookup(|s| s.sandbox_by_id(&sid)) {
        Ok(sb) => sb,
        Err(e) if e.is(ErrorCode::NotFound) => {
            st.routes.forget(alias);
            return Err(ServiceError::not_found(format!(
                "nothing is published as {alias:?}"
            )));
        }
        Err(e) => return Err(e),
    };
    let proto = if st.cfg.domain.as_ref().is_some_and(|d| d.tls()) {
        "https"
    } else {
        "http"
    };
    let work = async {
        if let Err(e) = st.ensure_hot(&sb).await {
            st.routes.forget(alias);
            tracing::info!(alias, sandbox = sb.id, error = %e.message, "public request: wake failed");
            return Err(ServiceError::new(
                ErrorCode::BadGateway,
                format!("sandbox unavailable: {}", e.message),
            ));
        }
        crate::proxy::forward(st, &sb.id, route.port, req, path, proto).await
    };
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            if e.code == ErrorCode::BadGateway {
                st.events.emit(
                    &sb.user_id,
                    &sb.id,
                    "proxy.error",
                    serde_json::json!({"alias": alias, "port": route.port, "error": e.message}),
                );
            }
            Err(e)
        }
        Err(_) => Err(ServiceError::new(
            ErrorCode::GatewayTimeout,
            format!("the sandbox did not answer within {}s", DEADLINE.as_secs()),
        )),
    }
}

/// Refuses a declared body over [`MAX_PUBLIC_BODY`] at once, and cuts off
/// one that grows past it while streaming.
fn cap_body(req: Request) -> Result<Request, ServiceError> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Ok(req);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_PUBLIC_BODY) {
        return Err(ServiceError::too_large(format!(
            "request body over {} MiB",
            MAX_PUBLIC_BODY >> 20
        )));
    }
    let limit = usize::try_from(MAX_PUBLIC_BODY).unwrap_or(usize::MAX);
    Ok(req.map(|b| Body::new(http_body_util::Limited::new(b, limit))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_mode_takes_the_first_segment() {
        assert_eq!(
            path_mode("/my-app/a/b?q=1"),
            Target::Alias {
                alias: "my-app".into(),
                path: "/a/b?q=1".into()
            }
        );
        assert_eq!(
            path_mode("/my-app"),
            Target::Alias {
                alias: "my-app".into(),
                path: "/".into()
            }
        );
        assert_eq!(
            path_mode("/my-app?x=1"),
            Target::Alias {
                alias: "my-app".into(),
                path: "/?x=1".into()
            }
        );
        assert!(matches!(path_mode("/"), Target::Unknown(_)));
        assert!(matches!(path_mode("/Bad_Alias/x"), Target::Unknown(_)));
    }

    #[test]
    fn host_names_lose_their_port() {
        let req = |h: &str| {
            Request::builder()
                .header(header::HOST, h)
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(
            host_name(&req("A.Sb.Example.com:8443")).as_deref(),
            Some("a.sb.example.com")
        );
        assert_eq!(
            host_name(&req("example.com")).as_deref(),
            Some("example.com")
        );
        assert_eq!(host_name(&req("[::1]:80")).as_deref(), Some("::1"));
        assert_eq!(
            host_name(&req("127.0.0.1:80")).as_deref(),
            Some("127.0.0.1")
        );
    }

    #[test]
    fn oversized_bodies_are_refused_before_reading() {
        let r = Request::builder()
            .method(Method::POST)
            .header(header::CONTENT_LENGTH, (MAX_PUBLIC_BODY + 1).to_string())
            .body(Body::empty())
            .unwrap();
        let e = cap_body(r).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
    }
}
