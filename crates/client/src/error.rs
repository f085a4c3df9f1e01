//! Errors of the client library, and the recovery hints the CLI prints
//! under them.
//!
//! An [`ApiError`] is what the server said (`{"error": …}` with the HTTP
//! status); every other [`ClientError`] variant is something that went wrong
//! on the way (config, connection, decoding). Hints are chosen from the
//! server's reason and status (never its wording), so they live here, beside
//! the type, and are unit-tested: callers other than the CLI get the same
//! advice.

use std::path::PathBuf;

/// An error answer from the API: the HTTP status and the `{"error": …}`
/// text (plus the request ID of a 500, which the server log also carries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong, for programs to branch on (absent from servers
    /// older than error codes, and from bodies that are not the API's).
    pub code: Option<bhatti_api::ErrorCode>,
    /// Why, where a client can act on it (absent where the code says it
    /// all, and from older servers).
    pub reason: Option<bhatti_api::ErrorReason>,
    /// The server's words for a person.
    pub message: String,
    /// The ID the server logged a 500's cause under.
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
                reason: b.reason,
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
                    reason: None,
                    message,
                    request_id: None,
                }
            }
        }
    }

    /// A recovery hint with `<name>` standing for the sandbox.
    pub fn hint(&self) -> Option<String> {
        self.hint_for(None, Resource::Sandbox)
    }

    /// A recovery hint; `sandbox` (when the command had one) replaces the
    /// `<name>` placeholder so the hint can be pasted as is, and `resource`
    /// (what the command addressed) says where to look after a 404.
    ///
    /// Chosen from the server's reason and code, never from its words: a
    /// server older than reasons gets the hints its status allows.
    pub fn hint_for(&self, sandbox: Option<&str>, resource: Resource) -> Option<String> {
        use bhatti_api::ErrorReason as R;
        let name = sandbox.unwrap_or("<name>");
        let by_reason = match self.reason {
            Some(R::SandboxCrashed) => Some(format!("Boot it again from its disk: bhatti start {name}")),
            Some(R::RestoreFailed) => Some(format!("Retry with: bhatti start --force {name}")),
            Some(R::SandboxNotRunning) => Some(format!("Resume it first: bhatti start {name}")),
            Some(R::SandboxLost) => Some(format!(
                "The daemon could not recover it; its reason is in: bhatti inspect {name} (destroy it with: bhatti destroy {name})"
            )),
            Some(R::AlreadyExists) => Some("Pick another name".into()),
            Some(R::InUse) => Some(
                "Destroy the sandbox using it first (bhatti volume inspect <volume> shows attachments)".into(),
            ),
            Some(R::QuotaExceeded) => Some(
                "Over your quota: destroy something you no longer need (bhatti ls, bhatti snapshot list, bhatti volume list) or ask an admin to raise your limits".into(),
            ),
            Some(R::RateLimited) => Some("Slow down: too many requests, retry in a moment".into()),
            Some(R::NoSuchUser) => Some(format!(
                "Name a user the sandbox has (its /etc/passwd: bhatti exec {name} -- cat /etc/passwd), or a uid"
            )),
            Some(R::Unknown) | None => None,
        };
        if by_reason.is_some() {
            return by_reason;
        }
        let hint = match self.status {
            401 => "Check your key: bhatti setup".to_string(),
            403 => "This key may not do that: check which user it belongs to (bhatti setup)".into(),
            404 => resource.where_to_look(name),
            413 => "The file is too large (limit 100 MiB)".into(),
            429 => "Limit reached: finish or close something first, or retry in a moment".into(),
            501 => "This server's engine does not support that".into(),
            502..=504 => {
                format!("The sandbox did not answer; retry, or check it: bhatti inspect {name}")
            }
            500..=599 => match &self.request_id {
                Some(id) => {
                    format!("Server error; the daemon's log has the cause under request {id}")
                }
                None => "Server error; check the daemon's log".into(),
            },
            _ => return None,
        };
        Some(hint)
    }
}

/// What a command addressed, so that a 404's hint says where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A sandbox (most commands).
    Sandbox,
    /// A path inside a sandbox.
    File,
    /// A secret.
    Secret,
    /// A persistent volume.
    Volume,
    /// A named snapshot.
    Snapshot,
    /// A template.
    Template,
    /// An image.
    Image,
    /// A background task.
    Task,
}

impl Resource {
    fn where_to_look(self, sandbox: &str) -> String {
        match self {
            Resource::Sandbox => "Check sandbox name: bhatti ls".into(),
            Resource::File => format!("Check the path: bhatti file ls {sandbox} <dir>"),
            Resource::Secret => "List secrets: bhatti secret list".into(),
            Resource::Volume => "List volumes: bhatti volume list".into(),
            Resource::Snapshot => "List snapshots: bhatti snapshot list".into(),
            Resource::Template => "List templates: bhatti template list".into(),
            Resource::Image => "List images: bhatti image list".into(),
            Resource::Task => "Check the task ID (bhatti image pull prints it)".into(),
        }
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
    /// A config file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A config file is not valid YAML of the expected shape.
    #[error("parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },
    /// The API URL is not one the client can dial.
    #[error("invalid API URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The client's configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Could not reach the daemon at all.
    #[error("connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint dialled.
        endpoint: String,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The TLS handshake with an `https://` endpoint failed (an unknown
    /// issuer, a name mismatch, a server that does not speak TLS).
    #[error("TLS with {endpoint}: {source}")]
    Tls {
        /// The endpoint dialled.
        endpoint: String,
        /// Why the handshake failed.
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
        /// What was being decoded ("sandbox", "image list" …).
        what: &'static str,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// The WebSocket handshake or a frame failed.
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// The server broke the protocol, or reported an error in-band (a
    /// WebSocket text message such as `wake sandbox: …`).
    #[error("{0}")]
    Protocol(String),
    /// Local I/O failed (reading an upload, writing a download …).
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
    pub fn hint_for(&self, sandbox: Option<&str>, resource: Resource) -> Option<String> {
        match self {
            ClientError::Api(e) => e.hint_for(sandbox, resource),
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
            reason: None,
            message: msg.into(),
            request_id: None,
        }
    }

    fn because(status: u16, reason: &str) -> ApiError {
        ApiError::from_body(
            status,
            format!(r#"{{"error":"words the hint must not depend on","reason":"{reason}"}}"#)
                .as_bytes(),
        )
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
        let d = ApiError::from_body(409, br#"{"error":"x","code":"conflict","reason":"in_use"}"#);
        assert_eq!(d.reason, Some(bhatti_api::ErrorReason::InUse));
    }

    #[test]
    fn hints_by_reason() {
        let web = |status, reason| because(status, reason).hint_for(Some("web"), Resource::Sandbox);
        assert_eq!(
            web(409, "sandbox_crashed").as_deref(),
            Some("Boot it again from its disk: bhatti start web")
        );
        assert_eq!(
            web(409, "restore_failed").as_deref(),
            Some("Retry with: bhatti start --force web")
        );
        assert_eq!(
            web(409, "sandbox_not_running").as_deref(),
            Some("Resume it first: bhatti start web")
        );
        assert!(web(409, "sandbox_lost")
            .unwrap()
            .contains("bhatti destroy web"));
        assert_eq!(
            web(409, "already_exists").as_deref(),
            Some("Pick another name")
        );
        assert!(web(409, "in_use")
            .unwrap()
            .starts_with("Destroy the sandbox using it"));
        assert!(web(403, "quota_exceeded")
            .unwrap()
            .starts_with("Over your quota"));
        assert!(web(429, "quota_exceeded")
            .unwrap()
            .starts_with("Over your quota"));
        assert!(web(429, "rate_limited").unwrap().starts_with("Slow down"));
        // A reason from a newer server falls back to the status's hint.
        assert_eq!(
            web(404, "from_the_future").as_deref(),
            Some("Check sandbox name: bhatti ls")
        );
    }

    #[test]
    fn hints_by_status_and_resource() {
        // The words are never read: a 409 without a reason has no hint,
        // whatever it says.
        assert_eq!(e(409, "sandbox \"web\" is crashed").hint(), None);
        assert_eq!(
            e(404, "not found").hint().as_deref(),
            Some("Check sandbox name: bhatti ls")
        );
        assert_eq!(
            e(404, "not found")
                .hint_for(Some("x"), Resource::Volume)
                .as_deref(),
            Some("List volumes: bhatti volume list")
        );
        assert_eq!(
            e(404, "no such file")
                .hint_for(Some("x"), Resource::File)
                .as_deref(),
            Some("Check the path: bhatti file ls x <dir>")
        );
        assert_eq!(
            e(401, "invalid api key").hint().as_deref(),
            Some("Check your key: bhatti setup")
        );
        assert!(e(429, "too many sessions")
            .hint()
            .unwrap()
            .starts_with("Limit reached"));
        assert!(ApiError {
            status: 500,
            code: Some(bhatti_api::ErrorCode::Internal),
            reason: None,
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
        assert!(c
            .hint_for(None, Resource::Sandbox)
            .unwrap()
            .contains("daemon running"));
        assert_eq!(c.status(), None);
    }
}
