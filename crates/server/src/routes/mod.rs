//! The HTTP API: the router and the middleware every request passes
//! (request ID, auth, rate limit, version header, the request log line).
//! The route table the OpenAPI document is generated from is [`openapi`];
//! JSON request bodies are read by [`body`].
//!
//! Handlers live by resource: [`sandboxes`] (lifecycle), [`exec`],
//! [`ws`] (interactive and piped sessions), [`files`], [`proxy`] (ports and
//! the authenticated reverse proxy), [`volumes`], [`snapshots`],
//! [`resources`] (secrets, templates) and [`system`] (health, metrics,
//! the `/openapi.json` handler).

pub(crate) mod body;
pub(crate) mod e2b;
mod exec;
mod files;
pub(crate) mod images;
pub(crate) mod openapi;
mod proxy;
mod publish;
mod resources;
pub(crate) mod sandboxes;
mod snapshots;
pub(crate) mod system;
pub(crate) mod volumes;
mod web_shell;
mod ws;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, on, post, MethodFilter};
use axum::Router;
use bhatti_api::{ErrorBody, VERSION_HEADER};
use bhatti_store::User;

use crate::error::{ErrorCode, ErrorReason, InternalCause, ServiceError};
use crate::ratelimit::classify;
use crate::state::{Counters, Shared};

/// JSON request bodies are capped at 1 MiB (docs/decisions.md, "API
/// contract").
pub const MAX_JSON_BODY: usize = 1 << 20;
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The methods the proxy forwards: those an OpenAPI document can name
/// (CONNECT aside); any other is 405, as the document says.
const PROXY_METHODS: MethodFilter = MethodFilter::GET
    .or(MethodFilter::HEAD)
    .or(MethodFilter::POST)
    .or(MethodFilter::PUT)
    .or(MethodFilter::DELETE)
    .or(MethodFilter::OPTIONS)
    .or(MethodFilter::PATCH)
    .or(MethodFilter::TRACE);

/// The authenticated user of a request.
pub struct Caller(pub User);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ServiceError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ServiceError> {
        parts
            .extensions
            .get::<User>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ServiceError::unauthorized("authorization required"))
    }
}

pub fn router(state: Shared) -> Router {
    // E2B's `<port>-<id>.<domain>` hosts are rewritten onto the routes
    // below before routing (e2b::host).
    Router::new()
        .fallback_service(api(state.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            e2b::host::route,
        ))
        .with_state(state)
}

fn api(state: Shared) -> Router {
    Router::new()
        .route("/health", get(system::health))
        .route("/openapi.json", get(system::openapi_handler))
        .route("/metrics", get(system::metrics))
        .route(
            "/admin/pools",
            get(system::get_pools).put(system::set_pools),
        )
        .route("/sandboxes", get(sandboxes::list).post(sandboxes::create))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get_one)
                .patch(sandboxes::patch)
                .delete(sandboxes::destroy),
        )
        .route("/sandboxes/{id}/stop", post(sandboxes::stop))
        .route("/sandboxes/{id}/start", post(sandboxes::start))
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
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
        .route("/sandboxes/{id}/stats", get(sandboxes::stats))
        .route("/sandboxes/{id}/console", get(sandboxes::console))
        .route("/ports", get(proxy::all_ports))
        .route(
            "/sandboxes/{id}/proxy/{port}",
            on(PROXY_METHODS, proxy::proxy),
        )
        .route(
            "/sandboxes/{id}/proxy/{port}/",
            on(PROXY_METHODS, proxy::proxy),
        )
        .route(
            "/sandboxes/{id}/proxy/{port}/{*rest}",
            on(PROXY_METHODS, proxy::proxy),
        )
        .route(
            "/sandboxes/{id}/publish",
            get(publish::list).post(publish::publish),
        )
        .route(
            "/sandboxes/{id}/publish/{port}",
            axum::routing::delete(publish::unpublish),
        )
        .route(
            "/sandboxes/{id}/shell-token",
            post(web_shell::mint).delete(web_shell::revoke),
        )
        .route("/_shell/assets/{file}", get(web_shell::asset))
        .route("/_shell/{id}", get(web_shell::page))
        .route("/_shell/{id}/ws", get(web_shell::ws))
        .route("/sandboxes/{id}/checkpoint", post(snapshots::checkpoint))
        .route("/sandboxes/{id}/save-image", post(images::save))
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
        .route("/images", get(images::list))
        .route("/images/pull", post(images::pull))
        .route("/images/import", post(images::import))
        .route(
            "/images/{name}",
            get(images::get_one).delete(images::delete),
        )
        .route("/tasks/{id}", get(images::task))
        .route("/volumes", get(volumes::list).post(volumes::create))
        .route(
            "/volumes/{name}",
            get(volumes::get_one).delete(volumes::delete),
        )
        .route("/volumes/{name}/resize", post(volumes::resize))
        .route("/volumes/{name}/snapshot", post(volumes::clone))
        .route(
            "/volumes/{name}/backups",
            get(volumes::backups).post(volumes::backup),
        )
        .route("/volumes/{name}/backups/restore", post(volumes::restore))
        .route(
            "/volumes/{name}/backups/{backup_id}",
            delete(volumes::delete_backup),
        )
        .nest("/e2b", e2b::router(state.clone()))
        .fallback(|| async { ServiceError::not_found("no such route") })
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

/// For a failed `/sandboxes/{id}/…` request: the sandbox's ID or name when
/// the store no longer has it for this user.
fn destroyed_meanwhile(st: &Shared, user_id: &str, path: &str) -> Option<String> {
    let mut segs = path.strip_prefix("/sandboxes/")?.split('/');
    let raw = segs.next()?;
    if user_id.is_empty() || raw.is_empty() {
        return None;
    }
    let id = sandboxes::percent_decode(&raw.replace('+', "%2B"));
    match st.lookup(|s| s.sandbox(user_id, &id)) {
        Err(e) if e.code == ErrorCode::NotFound => Some(id),
        _ => None,
    }
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

/// A refusal in the shape of the API the path belongs to.
fn reject(path: &str, e: ServiceError) -> Response {
    if e2b::is_e2b(path) {
        e2b::E2bError(e).into_response()
    } else {
        e.into_response()
    }
}

async fn middleware(State(st): State<Shared>, mut req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let request_id = format!("req_{}", bhatti_store::ids::random_hex(8));
    let method = req.method().clone();
    let path = clean_path(req.uri().path());
    Counters::inc(&st.counters.requests);
    let mut user_name = String::new();
    let mut user_id = String::new();

    let resp =
        'resp: {
            // envd checks the sandbox's own access token (e2b::envd), the
            // web shell its own token (web_shell).
            if path == "/health" || e2b::is_envd(&path) || path.starts_with("/_shell/") {
                break 'resp next.run(req).await;
            }
            let source = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map_or_else(|| "unix".to_string(), |c| c.0.ip().to_string());
            // A host-addressed proxy request already shown the sandbox's
            // access token (e2b::host).
            if let Some(e2b::host::TokenCaller(user)) = req.extensions().get().cloned() {
                user_name = user.name.clone();
                user_id = user.id.clone();
                req.extensions_mut().insert(user);
                break 'resp next.run(req).await;
            }
            // E2B's SDKs send their key as `X-API-Key` (see `e2b`).
            let token = bearer(&req)
                .map(str::to_string)
                .or_else(|| e2b::api_key(req.headers()));
            let Some(token) = token else {
                Counters::inc(&st.counters.auth_failures);
                break 'resp reject(&path, ServiceError::unauthorized("authorization required"));
            };
            let user =
                match st.lookup(|s| s.user_by_api_key(&token)) {
                    Ok(u) => u,
                    Err(e) if e.code == ErrorCode::NotFound => {
                        Counters::inc(&st.counters.auth_failures);
                        // A source past its failure budget gets 429 and leaves no
                        // event row; a valid key from the same address (a shared
                        // NAT) still works, as the lookup above comes first.
                        if !st.auth_throttle.permits(&source) {
                            Counters::inc(&st.counters.rate_limited);
                            break 'resp reject(&path, ServiceError::too_many(
                        "too many failed authentications from this address; retry later",
                    ).because(ErrorReason::RateLimited));
                        }
                        st.auth_throttle.failed(&source);
                        st.events
                            .emit("", "", "auth.failed", serde_json::json!({"ip": source}));
                        break 'resp reject(&path, ServiceError::unauthorized("invalid api key"));
                    }
                    Err(e) => break 'resp reject(&path, e),
                };
            user_name = user.name.clone();
            user_id = user.id.clone();
            if !st.limiter.allow(&user.id, classify(&method, &path)) {
                Counters::inc(&st.counters.rate_limited);
                break 'resp reject(
                    &path,
                    ServiceError::too_many("rate limit exceeded").because(ErrorReason::RateLimited),
                );
            }
            req.extensions_mut().insert(user);
            next.run(req).await
        };

    let mut resp = resp;
    if let Some(InternalCause(cause)) = resp.extensions_mut().remove::<InternalCause>() {
        if let Some(id) = destroyed_meanwhile(&st, &user_id, &path) {
            // The request raced a DELETE of its sandbox (which removes the
            // row before the sandbox): what it addressed is gone.
            tracing::info!(request_id, %method, path, error = %cause, "sandbox destroyed during the request");
            resp = reject(
                &path,
                ServiceError::not_found(format!("sandbox {id:?} not found (destroyed)")),
            );
        } else {
            Counters::inc(&st.counters.errors);
            tracing::error!(request_id, %method, path, error = %cause, "internal error");
            resp = if e2b::is_e2b(&path) {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(serde_json::json!({
                        "code": 500,
                        "message": format!("internal error (request {request_id})"),
                    })),
                )
                    .into_response()
            } else {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(ErrorBody {
                        error: "internal error".into(),
                        code: Some(bhatti_api::ErrorCode::Internal),
                        reason: None,
                        request_id: Some(request_id.clone()),
                    }),
                )
                    .into_response()
            };
        }
    }
    let status = resp.status();
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
