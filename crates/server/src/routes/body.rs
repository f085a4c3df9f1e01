//! JSON request bodies, read the same way by every route that takes one.
//!
//! A body must be `Content-Type: application/json` (415 otherwise), at most
//! [`MAX_JSON_BODY`](super::MAX_JSON_BODY) bytes (413), and a JSON object
//! (400): serde would read an array into a struct by position, so
//! `[null, null]` must not pass for `{}`. Then the type's own rules apply:
//! missing or mistyped fields and fields the type does not have are 400
//! (axum would say 422).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{ErrorCode, ServiceError};

/// A required JSON object body.
pub struct JsonBody<T>(pub T);

/// A JSON object body that may be left out: an empty body (with or
/// without a content type) is `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

async fn bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ServiceError> {
    Bytes::from_request(req, state).await.map_err(|r| {
        let code = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
            _ => ErrorCode::InvalidInput,
        };
        ServiceError::new(code, r.body_text())
    })
}

/// Parses a body that must be one JSON object.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(ServiceError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ServiceError::bad_request(format!("invalid request body: {e}")))
}

fn unsupported() -> ServiceError {
    ServiceError::new(
        ErrorCode::UnsupportedMediaType,
        "expected Content-Type: application/json",
    )
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ServiceError> {
        if !is_json(req.headers()) {
            return Err(unsupported());
        }
        let body = bytes(req, state).await?;
        parse(&body).map(JsonBody)
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ServiceError> {
        let json = is_json(req.headers());
        let body = bytes(req, state).await?;
        if body.is_empty() {
            return Ok(OptionalJsonBody(T::default()));
        }
        if !json {
            return Err(unsupported());
        }
        parse(&body).map(OptionalJsonBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: Option<u32>,
        b: Option<u32>,
    }

    #[test]
    fn only_objects_pass() {
        assert!(parse::<T>(b" {\"a\": 1}").is_ok());
        for bad in [
            &b"[null, null]"[..],
            b"[1, 2]",
            b"null",
            b"1",
            b"\"x\"",
            b"",
            b"{\"c\": 1}",
            b"{\"a\": \"1\"}",
            b"{} x",
        ] {
            let e = parse::<T>(bad).unwrap_err();
            assert_eq!(
                e.code,
                ErrorCode::InvalidInput,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
