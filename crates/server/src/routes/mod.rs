//! The HTTP API: the router, the middleware every request passes (request
//! ID, auth, rate limit, version header, the request log line) and the
//! route table the OpenAPI document is generated from.
//!
//! Handlers live by resource: [`sandboxes`] (lifecycle), [`exec`],
//! [`ws`] (interactive and piped sessions), [`files`], [`proxy`] (ports and
//! the authenticated reverse proxy), [`volumes`], [`snapshots`],
//! [`resources`] (secrets, templates) and [`system`] (health, metrics,
//! openapi).

mod exec;
mod files;
mod proxy;
mod resources;
mod sandboxes;
mod snapshots;
pub(crate) mod system;
mod volumes;
mod ws;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use bhatti_api::{ErrorBody, VERSION_HEADER};
use bhatti_store::User;

use crate::error::{ApiError, InternalCause};
use crate::ratelimit::classify;
use crate::state::{Counters, Shared};

pub use system::{api_markdown, openapi};

/// JSON request bodies are capped at 1 MiB (04-api.md §5.2).
pub const MAX_JSON_BODY: usize = 1 << 20;
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The authenticated user of a request.
pub struct Caller(pub User);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<User>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::unauthorized("authorization required"))
    }
}

/// One documented route (the OpenAPI document is built from this table, and
/// a test checks that the router serves every entry).
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub request: Option<fn(&mut schemars::SchemaGenerator) -> schemars::Schema>,
    pub response: Option<fn(&mut schemars::SchemaGenerator) -> schemars::Schema>,
    pub status: u16,
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(system::health))
        .route("/openapi.json", get(system::openapi_handler))
        .route("/metrics", get(system::metrics))
        .route("/sandboxes", get(sandboxes::list).post(sandboxes::create))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get_one)
                .patch(sandboxes::patch)
                .delete(sandboxes::destroy),
        )
        .route("/sandboxes/{id}/stop", post(sandboxes::stop))
        .route("/sandboxes/{id}/start", post(sandboxes::start))
        .route("/sandboxes/{id}/exec", post(exec::exec))
        .route("/sandboxes/{id}/sessions", get(exec::sessions))
        .route(
            "/sandboxes/{id}/sessions/{session}",
            axum::routing::delete(exec::kill_session),
        )
        .route("/sandboxes/{id}/ws", get(ws::shell))
        .route("/sandboxes/{id}/exec/ws", get(ws::piped))
        .route(
            "/sandboxes/{id}/files",
            get(files::read).put(files::write).head(files::stat),
        )
        .route("/sandboxes/{id}/ports", get(proxy::ports))
        .route("/ports", get(proxy::all_ports))
        .route("/sandboxes/{id}/proxy/{port}", any(proxy::proxy))
        .route("/sandboxes/{id}/proxy/{port}/", any(proxy::proxy))
        .route("/sandboxes/{id}/proxy/{port}/{*rest}", any(proxy::proxy))
        .route("/sandboxes/{id}/checkpoint", post(snapshots::checkpoint))
        .route("/snapshots", get(snapshots::list))
        .route(
            "/snapshots/{name}",
            get(snapshots::get_one).delete(snapshots::delete),
        )
        .route("/snapshots/{name}/resume", post(snapshots::resume))
        .route(
            "/secrets",
            get(resources::list_secrets).post(resources::set_secret),
        )
        .route(
            "/secrets/{name}",
            axum::routing::delete(resources::delete_secret),
        )
        .route(
            "/templates",
            get(resources::list_templates).post(resources::create_template),
        )
        .route(
            "/templates/{id}",
            get(resources::get_template).delete(resources::delete_template),
        )
        .route("/volumes", get(volumes::list).post(volumes::create))
        .route(
            "/volumes/{name}",
            get(volumes::get_one).delete(volumes::delete),
        )
        .route("/volumes/{name}/resize", post(volumes::resize))
        .route("/volumes/{name}/snapshot", post(volumes::clone))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware,
        ))
        .with_state(state)
}

/// `path.Clean`-style normalization, so `//health/` or `/a/../health` cannot
/// slip past the unauthenticated-route check.
pub fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// `Server-Timing` (W3C), not among the `http` crate's constants.
pub const SERVER_TIMING: axum::http::HeaderName =
    axum::http::HeaderName::from_static("server-timing");

fn bearer(req: &Request) -> Option<&str> {
    let v = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn middleware(State(st): State<Shared>, mut req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let request_id = format!("req_{}", bhatti_store::ids::random_hex(8));
    let method = req.method().clone();
    let path = clean_path(req.uri().path());
    Counters::inc(&st.counters.requests);
    let mut user_name = String::new();

    let resp = 'resp: {
        if path == "/health" {
            break 'resp next.run(req).await;
        }
        let Some(token) = bearer(&req).map(str::to_string) else {
            Counters::inc(&st.counters.auth_failures);
            break 'resp ApiError::unauthorized("authorization required").into_response();
        };
        let user = match st.lookup(|s| s.user_by_api_key(&token)) {
            Ok(u) => u,
            Err(e) if e.status == StatusCode::NOT_FOUND => {
                Counters::inc(&st.counters.auth_failures);
                let ip = req
                    .extensions()
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.ip().to_string())
                    .unwrap_or_else(|| "unix".into());
                st.events
                    .emit("", "", "auth.failed", serde_json::json!({"ip": ip}));
                break 'resp ApiError::unauthorized("invalid api key").into_response();
            }
            Err(e) => break 'resp e.into_response(),
        };
        user_name = user.name.clone();
        if !st.limiter.allow(&user.id, classify(&method, &path)) {
            Counters::inc(&st.counters.rate_limited);
            break 'resp ApiError::too_many("rate limit exceeded").into_response();
        }
        req.extensions_mut().insert(user);
        next.run(req).await
    };

    let mut resp = resp;
    let status = resp.status();
    if let Some(InternalCause(cause)) = resp.extensions_mut().remove::<InternalCause>() {
        Counters::inc(&st.counters.errors);
        tracing::error!(request_id, %method, path, error = %cause, "internal error");
        resp = (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(ErrorBody {
                error: "internal error".into(),
                request_id: Some(request_id.clone()),
            }),
        )
            .into_response();
    }
    // Proxied responses are the sandbox's own: left as they came.
    if !path.contains("/proxy/") {
        resp.headers_mut()
            .insert(VERSION_HEADER, HeaderValue::from_static(VERSION));
        if !st.cfg.min_cli.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&st.cfg.min_cli) {
                resp.headers_mut().insert("x-bhatti-min-cli", v);
            }
        }
        // `Server-Timing`: the whole time in the daemon, after whatever the
        // handler reported (e.g. `engine;dur=` on exec).
        let app = format!("app;dur={:.3}", t0.elapsed().as_secs_f64() * 1000.0);
        let timing = match resp
            .headers()
            .get(SERVER_TIMING)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {app}"),
            None => app,
        };
        if let Ok(v) = HeaderValue::from_str(&timing) {
            resp.headers_mut().insert(SERVER_TIMING, v);
        }
    }
    tracing::info!(
        request_id,
        %method,
        path,
        status = status.as_u16(),
        duration_ms = t0.elapsed().as_secs_f64() * 1000.0,
        user = user_name,
        "request"
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::clean_path;

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean_path("/health"), "/health");
        assert_eq!(clean_path("//health/"), "/health");
        assert_eq!(clean_path("/sandboxes/../health"), "/health");
        assert_eq!(clean_path("/../../x"), "/x");
        assert_eq!(clean_path(""), "/");
    }
}
