//! The native API's rendering of a [`ServiceError`]: the one place an
//! [`ErrorCode`] becomes an HTTP status, with the body
//! `{"error": …, "code": …}`.
//!
//! 500s never show their cause to the client: the body carries the request
//! ID, and the cause is logged under the same ID (docs/server.md, "Status
//! codes").

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bhatti_api::ErrorBody;

pub use crate::service::error::{ErrorCode, ErrorReason, ServiceError, ServiceResult};

/// The HTTP status of each code.
pub fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidInput | ErrorCode::Unknown => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
    }
}

impl ServiceError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        status(self.code)
    }
}

/// The cause of a 500, kept for the request log line (the middleware reads it
/// from the response extensions and replaces the body).
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        if self.code == ErrorCode::Internal {
            let mut r = (
                self.status(),
                axum::Json(ErrorBody {
                    error: "internal error".into(),
                    code: Some(ErrorCode::Internal),
                    reason: None,
                    request_id: None,
                }),
            )
                .into_response();
            r.extensions_mut().insert(InternalCause(self.message));
            return r;
        }
        (
            self.status(),
            axum::Json(ErrorBody {
                error: self.message,
                code: Some(self.code),
                reason: self.reason,
                request_id: None,
            }),
        )
            .into_response()
    }
}

impl From<axum::extract::rejection::QueryRejection> for ServiceError {
    fn from(r: axum::extract::rejection::QueryRejection) -> ServiceError {
        ServiceError::bad_request(r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_own_status_and_wire_name() {
        let codes = [
            ErrorCode::InvalidInput,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::TooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::RateLimited,
            ErrorCode::Internal,
            ErrorCode::NotImplemented,
            ErrorCode::BadGateway,
            ErrorCode::Unavailable,
            ErrorCode::GatewayTimeout,
            ErrorCode::InsufficientStorage,
        ];
        let statuses: std::collections::BTreeSet<u16> =
            codes.iter().map(|c| status(*c).as_u16()).collect();
        assert_eq!(statuses.len(), codes.len());
        for c in codes {
            let e = ServiceError::new(c, "x");
            assert_eq!(e.is_server_side(), e.status().is_server_error(), "{c}");
            let wire = serde_json::to_value(c).unwrap_or_default();
            assert_eq!(wire, serde_json::Value::from(c.as_str()));
        }
        // A code from a newer server reads as unknown, not as a failure.
        let body: ErrorBody = serde_json::from_str(r#"{"error":"x","code":"from_the_future"}"#)
            .unwrap_or(ErrorBody {
                error: String::new(),
                code: None,
                reason: None,
                request_id: None,
            });
        assert_eq!(body.code, Some(ErrorCode::Unknown));
    }
}
