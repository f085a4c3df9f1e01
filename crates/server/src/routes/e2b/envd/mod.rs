//! E2B's in-sandbox API (envd), served by the daemon under `/e2b/envd`
//! (`E2B_SANDBOX_URL=http://HOST:PORT/e2b/envd`): the sandbox is named by
//! the `E2b-Sandbox-Id` header, as the SDKs send it in that mode, and the
//! caller proves it by the sandbox's `X-Access-Token` ([`super::token`]).
//! No guest binary is involved: the Connect services and `/files` are
//! translated onto the agent through the service layer.
//!
//! A sandbox that is gone (or paused, E2B's word for stopped) answers 502
//! with "… was not found", which is what the SDKs read as "not running".

mod files;
mod filesystem;
mod process;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bhatti_e2b::connectrpc::{ConnectError, RequestContext};
use bhatti_e2b::proto::filesystem::FilesystemExt;
use bhatti_e2b::proto::process::ProcessExt;
use bhatti_store::{Sandbox, SandboxStatus};

use super::E2bError;
use crate::error::{ErrorCode, ServiceError};
use crate::state::Shared;

/// The header naming the sandbox.
pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
/// The header carrying the sandbox's envd access token.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";
/// The port envd listens on in an E2B sandbox (what the SDKs address).
pub const ENVD_PORT: u16 = 49983;

pub fn router(st: Shared) -> Router<Shared> {
    let connect = bhatti_e2b::connectrpc::Router::new();
    let connect = Arc::new(process::ProcessService { st: st.clone() }).register(connect);
    let connect = Arc::new(filesystem::FilesystemService { st: st.clone() }).register(connect);
    Router::new()
        .route("/health", get(health))
        // Uploads are bounded per file as they are spooled (files.rs), not
        // by the API's JSON body limit.
        .route(
            "/files",
            get(files::download)
                .post(files::upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .fallback_service(connect.into_axum_service())
        .layer(axum::middleware::from_fn_with_state(st, authorize))
}

/// `E2B's "sandbox not running"`: the SDKs look for "was not found".
fn not_running(id: &str, why: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::BadGateway,
        format!("The sandbox {id} was not found ({why})"),
    )
}

/// Resolves and authenticates the sandbox every envd request names, and
/// hands it to the handlers as a request extension.
async fn authorize(State(st): State<Shared>, mut req: Request, next: Next) -> Response {
    let (id, token) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
        };
        (header(SANDBOX_ID_HEADER), header(ACCESS_TOKEN_HEADER))
    };
    let Some(id) = id.filter(|s| !s.is_empty()) else {
        return E2bError(ServiceError::bad_request(
            "the E2b-Sandbox-Id header is required",
        ))
        .into_response();
    };
    let sb = match sandbox_for_token(&st, &id, &token.unwrap_or_default()).await {
        Ok(sb) => sb,
        Err(e) if e.code == ErrorCode::NotFound => {
            return E2bError(not_running(&id, "it does not exist")).into_response()
        }
        Err(e) => return E2bError(e).into_response(),
    };
    if sb.status == SandboxStatus::Stopped {
        return E2bError(not_running(&id, "it is paused")).into_response();
    }
    req.extensions_mut().insert(sb);
    next.run(req).await
}

/// The sandbox `id` names, when `token` is its access token: 401 for a
/// wrong or missing token (checked before the store is asked, so an
/// unauthenticated caller learns nothing of which IDs exist), the store's
/// 404 when there is no such sandbox.
pub(super) async fn sandbox_for_token(
    st: &Shared,
    id: &str,
    token: &str,
) -> Result<Sandbox, ServiceError> {
    let ok = st
        .envd_key
        .verify(id, token)
        .map_err(|e| ServiceError::internal(format!("envd key: {e}")))?;
    if !ok {
        return Err(ServiceError::unauthorized(
            "invalid or missing X-Access-Token",
        ));
    }
    let id = id.to_string();
    st.db(move |s| s.sandbox_by_id(&id)).await
}

/// 204 while the sandbox runs (the SDKs' `is_running`).
async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The sandbox [`authorize`] resolved for this call.
fn target(ctx: &RequestContext) -> Result<Sandbox, ConnectError> {
    ctx.extensions()
        .get::<Sandbox>()
        .cloned()
        .ok_or_else(|| ConnectError::unauthenticated("no sandbox for this request"))
}

/// A service-layer error as the Connect code E2B's SDKs map to the same
/// exception the HTTP status would give.
fn connect_error(e: ServiceError) -> ConnectError {
    let m = e.message;
    match e.code {
        ErrorCode::InvalidInput | ErrorCode::TooLarge | ErrorCode::UnsupportedMediaType => {
            ConnectError::invalid_argument(m)
        }
        ErrorCode::Unauthorized => ConnectError::unauthenticated(m),
        ErrorCode::Forbidden => ConnectError::permission_denied(m),
        ErrorCode::NotFound => ConnectError::not_found(m),
        ErrorCode::Conflict => ConnectError::failed_precondition(m),
        ErrorCode::RateLimited | ErrorCode::InsufficientStorage => {
            ConnectError::resource_exhausted(m)
        }
        ErrorCode::BadGateway | ErrorCode::Unavailable => ConnectError::unavailable(m),
        ErrorCode::GatewayTimeout => ConnectError::deadline_exceeded(m),
        ErrorCode::NotImplemented => ConnectError::unimplemented(m),
        ErrorCode::Internal => {
            tracing::error!(error = %m, "envd request failed");
            ConnectError::internal("internal error")
        }
        ErrorCode::Unknown => ConnectError::unknown(m),
    }
}
