//! API errors: one type every handler returns, rendered as
//! `{"error": …}` with the right status.
//!
//! 500s never show their cause to the client: the body carries the request
//! ID, and the cause is logged under the same ID (04-api.md §5.2).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bhatti_agent_client::ClientError;
use bhatti_api::ErrorBody;
use bhatti_engine::EngineError;
use bhatti_protocol::messages::ErrorCode;
use bhatti_store::StoreError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, m)
    }
    pub fn forbidden(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, m)
    }
    pub fn too_many(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, m)
    }
    /// A failure whose cause stays in the log.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, cause.to_string())
    }
    /// Prefixes the message (e.g. `wake sandbox: …`), keeping the status.
    pub fn context(mut self, what: &str) -> ApiError {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

/// The cause of a 500, kept for the request log line (the middleware reads it
/// from the response extensions and replaces the body).
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            let mut r = (
                self.status,
                axum::Json(ErrorBody {
                    error: "internal error".into(),
                    request_id: None,
                }),
            )
                .into_response();
            r.extensions_mut().insert(InternalCause(self.message));
            return r;
        }
        (
            self.status,
            axum::Json(ErrorBody {
                error: self.message,
                request_id: None,
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::not_found("not found"),
            StoreError::Conflict(m) => ApiError::conflict(m),
            // Per-resource statuses (403 vs 429) are decided by the caller
            // where the spec distinguishes them; the default is 429.
            StoreError::Quota(m) => ApiError::too_many(m),
            StoreError::Invalid(m) => ApiError::bad_request(m),
            other => ApiError::internal(other),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::NotFound(_) => ApiError::not_found("not found"),
            EngineError::Invalid(m) => ApiError::bad_request(m),
            EngineError::Unsupported { .. } => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, e.to_string())
            }
            EngineError::RestoreFailed { .. } | EngineError::BadState { .. } => {
                ApiError::conflict(e.to_string())
            }
            EngineError::NotHot { .. } => ApiError::conflict(e.to_string()),
            EngineError::Agent(c) => ApiError::from(c),
            other => ApiError::internal(other),
        }
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        match e {
            // The agent refused the request (bad path, command not found …):
            // said in the agent's words, with the status of the guest's
            // reason, so a well-formed request that the guest's state
            // refuses is not a 400.
            ClientError::Agent {
                code: Some(code),
                message,
            } => ApiError::new(agent_status(code), message),
            // An agent that sends words only (v1, or a guest from before
            // error codes): its words are all there is to go by.
            ClientError::Agent {
                code: None,
                message: m,
            } => {
                let lower = m.to_ascii_lowercase();
                let has = |s: &[&str]| s.iter().any(|s| lower.contains(s));
                if has(&[
                    "no such file",
                    "not found",
                    "not a directory",
                    "file name too long",
                ]) {
                    // Nothing by that name (a path through a file, or one
                    // longer than any name, names nothing either).
                    ApiError::not_found(m)
                } else if has(&["permission denied", "operation not permitted"]) {
                    ApiError::forbidden(m)
                } else if has(&["is a directory", "not a file path", "file exists"]) {
                    ApiError::conflict(m)
                } else if has(&["too large"]) {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m)
                } else {
                    ApiError::bad_request(m)
                }
            }
            // The agent is at its connection limit: try again shortly.
            ClientError::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sandbox's agent is busy (connection limit reached); retry shortly",
            ),
            // The client's own upload stopped short of its Content-Length.
            ClientError::Source(e) => {
                ApiError::bad_request(format!("request body ended early: {e}"))
            }
            other => ApiError::internal(format!("agent: {other}")),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::internal(format!("task failed: {e}"))
    }
}

/// The HTTP status for a coded agent failure: the guest's state refused a
/// well-formed request, so only a malformed one is a 400.
fn agent_status(code: ErrorCode) -> StatusCode {
    match code {
        // Nothing by that name (a path through a file, or one longer than
        // any name, names nothing either).
        ErrorCode::NotFound | ErrorCode::NotADirectory | ErrorCode::NameTooLong => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::IsADirectory | ErrorCode::AlreadyExists | ErrorCode::Busy => {
            StatusCode::CONFLICT
        }
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::InvalidInput | ErrorCode::Other => StatusCode::BAD_REQUEST,
    }
}
