//! E2B's control API under `/e2b`, so that E2B's SDKs drive bhatti
//! unmodified (`E2B_API_URL=http://HOST:PORT/e2b`). Thin, like the native
//! routes: the rules are the service layer's; this module translates E2B's
//! shapes, its `{code, message}` errors, and its `X-API-Key` header (an
//! `e2b_<hex>` key is the same key as `bht_<hex>`, since the SDK refuses any
//! other prefix before it sends a request).

mod control;
mod envd;
pub mod host;
mod snapshots;
pub mod token;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::ServiceError;
use crate::state::Shared;

/// The header E2B's SDKs carry the API key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The envd version reported for every sandbox: the SDKs gate features on
/// it, and bhatti's envd API is served by the daemon, not a guest binary.
/// 0.5.7 is the newest whose features bhatti has all of (closing stdin,
/// raw uploads); 0.6.2 adds file metadata in extended attributes, which it
/// has not (docs/e2b.md).
pub const ENVD_VERSION: &str = "0.5.7";

/// The bhatti key an `X-API-Key` header names (`e2b_<hex>` read as
/// `bht_<hex>`; a `bht_` key is accepted as is).
pub fn api_key(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(API_KEY_HEADER)?.to_str().ok()?.trim();
    match v.strip_prefix("e2b_") {
        Some(hex) => Some(format!("bht_{hex}")),
        None => Some(v.to_string()),
    }
}

/// Whether a (cleaned) request path is E2B's.
pub fn is_e2b(path: &str) -> bool {
    path == "/e2b" || path.starts_with("/e2b/")
}

/// Whether a (cleaned) request path is envd's, which authenticates by the
/// sandbox's access token rather than an API key.
pub fn is_envd(path: &str) -> bool {
    path == "/e2b/envd" || path.starts_with("/e2b/envd/")
}

/// An error in E2B's shape: `{"code": <status>, "message": …}`.
pub struct E2bError(pub ServiceError);

impl From<ServiceError> for E2bError {
    fn from(e: ServiceError) -> E2bError {
        E2bError(e)
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The request log keeps the cause (the middleware reads it).
            return self.0.into_response();
        }
        (
            status,
            axum::Json(serde_json::json!({
                "code": status.as_u16(),
                "message": self.0.message,
            })),
        )
            .into_response()
    }
}

pub type E2bResult<T> = Result<T, E2bError>;

pub fn router(st: Shared) -> Router<Shared> {
    Router::new()
        .nest("/envd", envd::router(st))
        .route("/sandboxes", get(control::list_v1).post(control::create))
        .route("/v2/sandboxes", get(control::list_v2).post(control::create))
        .route("/v2/sandboxes/{id}/connect", post(control::connect))
        .route(
            "/sandboxes/{id}",
            get(control::get_one).delete(control::kill),
        )
        .route("/sandboxes/{id}/timeout", post(control::timeout))
        .route("/sandboxes/{id}/metrics", get(control::metrics))
        .route("/sandboxes/{id}/refreshes", post(control::refresh))
        .route("/sandboxes/{id}/pause", post(control::pause))
        .route("/sandboxes/{id}/resume", post(control::resume))
        .route("/sandboxes/{id}/connect", post(control::connect))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/snapshots", get(snapshots::list))
        .route("/templates/{id}", axum::routing::delete(snapshots::delete))
        .fallback(|| async { E2bError(ServiceError::not_found("no such route")) })
}
