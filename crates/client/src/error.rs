//! Errors of the client library, and the recovery hints the CLI prints
//! under them.
//!
//! An [`ApiError`] is what the server said (`{"error": …}` with the HTTP
//! status); every other [`ClientError`] variant is something that went wrong
//! on the way (config, connection, decoding). Hints are chosen from the
//! status and the server's wording, so they live here, beside the type, and
//! are unit-tested: callers other than the CLI get the same advice.

use std::path::PathBuf;

/// An error answer from the API: the HTTP status and the `{"error": …}`
/// text (plus the request ID of a 500, which the server log also carries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: u16,
    /// What went wrong, for programs to branch on (absent from servers
    /// older than error codes, and from bodies that are not the API's).
    pub code: Option<bhatti_api::ErrorCode>,
    pub message: String,
    pub request_id: Option<String>,
}

impl ApiError {
    /// Builds the error from a response status and body. A body that is not
    /// `{"error": …}` (a proxy's HTML page, an empty 502) is kept as text,
    /// trimmed and cut to a readable length.
    pub fn from_body(status: u16, body: &[u8]) -> ApiError {
        match serde_json::from_slice::<bhatti_api::ErrorBody>(body) {
            Ok(b) => ApiError {
                status,
                code: b.code,
                message: b.error,
                request_id: b.request_id,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    reason(status).to_string()
                } else {
                    let mut t: String = text.chars().take(300).collect();
                    if t.len() < text.len() {
                        t.push('…');
                    }
                    t
                };
                ApiError {
                    status,
                    code: None,
                    message,
                    request_id: None,
                }
            }
        }
    }

    /// A recovery hint with `<name>` standing for the sandbox.
    pub fn hint(&self) -> Option<String> {
        self.hint_for(None)
    }

    /// A recovery hint; `sandbox` (when the command had one) replaces the
    /// `<name>` placeholder so the hint can be pasted as is.
    pub fn hint_for(&self, sandbox: Option<&str>) -> Option<String> {
        let name = sandbox.unwrap_or("<name>");
        let m = self.message.to_ascii_lowercase();
        let has = |s: &str| m.contains(s);

        // Wording first: the same status means different things per route.
        if has("is crashed") {
            return Some(format!("Boot it again from its disk: bhatti start {name}"));
        }
        if has("restore failed")
            || has("corrupt")
            || has("cannot be woken")
            || has("force to retry")
            || has("--force")
        {
            return Some(format!("Retry with: bhatti start --force {name}"));
        }
        if has("not hot") || has("is stopped") || has("sandbox stopped") || has("not running") {
            return Some(format!("Resume it first: bhatti start {name}"));
        }
        let hint = match self.status {
            401 => "Check your key: bhatti setup".to_string(),
            403 if has("quota") || has("limit") || has("max") => {
                "Over your quota: free something up or ask an admin to raise your limits".into()
            }
            403 => "This key may not do that: check which user it belongs to (bhatti setup)".into(),
            404 if has("secret") => "List secrets: bhatti secret list".into(),
            404 if has("volume") => "List volumes: bhatti volume list".into(),
            404 if has("snapshot") => "List snapshots: bhatti snapshot list".into(),
            404 if has("template") => "Check the template ID (GET /templates)".into(),
            404 if has("image") => "Check the image name".into(),
            404 if has("no such file") || has("file") => {
                format!("Check the path: bhatti file ls {name} <dir>")
            }
            404 => "Check sandbox name: bhatti ls".into(),
            409 if has("attached") || has("in use by") => {
                "Destroy the sandbox using it first (bhatti volume inspect <volume> shows attachments)".into()
            }
            409 if has("already") || has("exists") || has("in use") => {
                "Pick another name".into()
            }
            413 => "The file is too large (limit 100 MiB)".into(),
            429 if has("rate") => "Slow down: too many requests, retry in a moment".into(),
            429 => "Quota reached: destroy something you no longer need (bhatti ls, bhatti snapshot list) or ask an admin to raise your limits".into(),
            501 => "This server's engine does not support that".into(),
            502..=504 => format!("The sandbox did not answer; retry, or check it: bhatti inspect {name}"),
            500..=599 => match &self.request_id {
                Some(id) => format!("Server error; the daemon's log has the cause under request {id}"),
                None => "Server error; check the daemon's log".into(),
            },
            _ => return None,
        };
        Some(hint)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not found",
        409 => "conflict",
        413 => "payload too large",
        429 => "too many requests",
        500 => "internal server error",
        501 => "not implemented",
        502 => "bad gateway",
        503 => "service unavailable",
        504 => "gateway timeout",
        _ => "error",
    }
}

/// Reading the client's own configuration went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid API URL {url:?}: {reason}")]
    Url { url: String, reason: String },
}

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Could not reach the daemon at all.
    #[error("connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    /// The TLS handshake with an `https://` endpoint failed (an unknown
    /// issuer, a name mismatch, a server that does not speak TLS).
    #[error("TLS with {endpoint}: {source}")]
    Tls {
        endpoint: String,
        source: std::io::Error,
    },
    /// The HTTP exchange broke (connection reset, malformed response …).
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// A request could not be built (bad header value, path …).
    #[error("request: {0}")]
    Request(String),
    /// A response body was not the JSON we expected.
    #[error("decode {what}: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// The server broke the protocol, or reported an error in-band (a
    /// WebSocket text message such as `wake sandbox: …`).
    #[error("{0}")]
    Protocol(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}

impl ClientError {
    /// The API error inside, if the server answered.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(e) => Some(e),
            _ => None,
        }
    }

    /// HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        self.api().map(|e| e.status)
    }

    /// A recovery hint (see [`ApiError::hint_for`]); connection failures
    /// get one too.
    pub fn hint_for(&self, sandbox: Option<&str>) -> Option<String> {
        match self {
            ClientError::Api(e) => e.hint_for(sandbox),
            ClientError::Connect { .. } => Some(
                "Is the daemon running (bhatti serve / systemctl status bhatti)? Is the URL right (bhatti setup)?"
                    .into(),
            ),
            ClientError::Tls { .. } => Some(
                "Is the daemon's certificate signed by a CA this machine trusts? Give its CA with --ca-file (or BHATTI_CA_FILE)"
                    .into(),
            ),
            ClientError::Config(ConfigError::Url { .. }) => {
                Some("Set it with: bhatti setup --url http://HOST:8080".into())
            }
            _ => None,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn e(status: u16, msg: &str) -> ApiError {
        ApiError {
            status,
            code: None,
            message: msg.into(),
            request_id: None,
        }
    }

    #[test]
    fn parses_error_bodies() {
        let a = ApiError::from_body(
            500,
            br#"{"error":"internal error","request_id":"req_0123456789abcdef"}"#,
        );
        assert_eq!(a.status, 500);
        assert_eq!(a.message, "internal error");
        assert_eq!(a.request_id.as_deref(), Some("req_0123456789abcdef"));
        assert_eq!(a.to_string(), "500: internal error");

        let b = ApiError::from_body(502, b"");
        assert_eq!(b.message, "bad gateway");
        let c = ApiError::from_body(404, b"<html>nope</html>\n");
        assert_eq!(c.message, "<html>nope</html>");
    }

    #[test]
    fn hints_by_status_and_wording() {
        assert_eq!(
            e(404, "not found").hint().as_deref(),
            Some("Check sandbox name: bhatti ls")
        );
        assert_eq!(
            e(404, "sandbox \"x\" not found")
                .hint_for(Some("x"))
                .as_deref(),
            Some("Check sandbox name: bhatti ls")
        );
        assert_eq!(
            e(401, "invalid api key").hint().as_deref(),
            Some("Check your key: bhatti setup")
        );
        assert!(e(429, "rate limit exceeded")
            .hint()
            .unwrap()
            .starts_with("Slow down"));
        assert!(e(429, "sandbox limit reached (5/5)")
            .hint()
            .unwrap()
            .starts_with("Quota reached"));
        assert_eq!(
            e(500, "restore failed: snapshot manifest checksum mismatch")
                .hint_for(Some("web"))
                .as_deref(),
            Some("Retry with: bhatti start --force web")
        );
        assert_eq!(
            e(
                409,
                "wake sandbox: sandbox \"web\" is crashed: the VM stopped unexpectedly (killed by signal 9); start boots it afresh from its disk"
            )
            .hint_for(Some("web"))
            .as_deref(),
            Some("Boot it again from its disk: bhatti start web")
        );
        assert_eq!(
            e(409, "snapshot is corrupt").hint().as_deref(),
            Some("Retry with: bhatti start --force <name>")
        );
        assert_eq!(
            e(
                409,
                "sandbox \"web\" cannot be woken: restore failed earlier"
            )
            .hint_for(Some("web"))
            .as_deref(),
            Some("Retry with: bhatti start --force web")
        );
        assert_eq!(
            e(409, "sandbox \"web\" is not hot (thermal=cold)")
                .hint_for(Some("web"))
                .as_deref(),
            Some("Resume it first: bhatti start web")
        );
        assert_eq!(
            e(409, "sandbox is stopped")
                .hint_for(Some("web"))
                .as_deref(),
            Some("Resume it first: bhatti start web")
        );
        assert_eq!(
            e(404, "volume \"data\" not found").hint().as_deref(),
            Some("List volumes: bhatti volume list")
        );
        assert_eq!(
            e(409, "name \"a\" is already in use").hint().as_deref(),
            Some("Pick another name")
        );
        assert!(ApiError {
            status: 500,
            code: Some(bhatti_api::ErrorCode::Internal),
            message: "internal error".into(),
            request_id: Some("req_1".into())
        }
        .hint()
        .unwrap()
        .contains("req_1"));
        assert_eq!(e(400, "cmd required").hint(), None);
    }

    #[test]
    fn connection_errors_get_a_hint() {
        let c = ClientError::Connect {
            endpoint: "http://localhost:8080".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(c.hint_for(None).unwrap().contains("daemon running"));
        assert_eq!(c.status(), None);
    }
}
