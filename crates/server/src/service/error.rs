//! The service layer's one error: what went wrong as an [`ErrorCode`] the
//! caller acts on, and words for the person reading it. It carries no HTTP:
//! the native API maps each code to its status in one place
//! (`crate::error`), the E2B API to E2B's shapes, and callers inside the
//! daemon branch on the code, never on the words.
//!
//! The conversions from the layers below (store, engine, agent) live here,
//! so that every boundary's typed error becomes a code the same way for
//! both APIs.

use bhatti_agent_client::ClientError;
use bhatti_engine::contract::Status;
use bhatti_engine::EngineError;
use bhatti_store::{Sandbox, StoreError};

pub use bhatti_api::{ErrorCode, ErrorReason};

/// A failed operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    /// What went wrong, for programs; decides the HTTP status.
    pub code: ErrorCode,
    /// Why, where a caller can act on it (a CLI hint, a retry).
    pub reason: Option<ErrorReason>,
    /// Words for the person reading it.
    pub message: String,
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            reason: None,
            message: message.into(),
        }
    }
    /// A sandbox the engine does not hold (recovery could not adopt it):
    /// `what` cannot be done to it, and its stored reason says why.
    pub fn sandbox_lost(sb: &Sandbox, what: &str) -> ServiceError {
        let why = if sb.status_reason.is_empty() {
            "its state is unknown"
        } else {
            &sb.status_reason
        };
        ServiceError::conflict(format!("sandbox {:?} {what}: {why}", sb.name))
            .because(ErrorReason::SandboxLost)
    }
    /// The same error with a machine-readable reason.
    pub fn because(mut self, reason: ErrorReason) -> ServiceError {
        self.reason = Some(reason);
        self
    }
    pub fn bad_request(m: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::InvalidInput, m)
    }
    pub fn not_found(m: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::Conflict, m)
    }
    pub fn forbidden(m: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::Forbidden, m)
    }
    pub fn too_many(m: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::RateLimited, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::Unauthorized, m)
    }
    pub fn too_large(m: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::TooLarge, m)
    }
    pub fn unsupported(m: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::NotImplemented, m)
    }
    /// A failure whose cause stays in the log.
    pub fn internal(cause: impl std::fmt::Display) -> ServiceError {
        ServiceError::new(ErrorCode::Internal, cause.to_string())
    }
    /// Prefixes the message (e.g. `wake sandbox: …`), keeping the code.
    pub fn context(mut self, what: &str) -> ServiceError {
        self.message = format!("{what}: {}", self.message);
        self
    }
    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == code
    }
    /// A failure on the daemon's side or behind it (engine, agent, the
    /// guest's disk) rather than in the request: the codes the native API
    /// answers with a 5xx, for callers that pass those on unchanged.
    pub fn is_server_side(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::Internal
                | ErrorCode::NotImplemented
                | ErrorCode::BadGateway
                | ErrorCode::Unavailable
                | ErrorCode::GatewayTimeout
                | ErrorCode::InsufficientStorage
        )
    }
    /// A not-found said in the caller's terms (`template "x" not found`);
    /// any other error as it was.
    pub fn or_not_found(self, message: impl FnOnce() -> String) -> ServiceError {
        if self.is(ErrorCode::NotFound) {
            ServiceError::not_found(message())
        } else {
            self
        }
    }
    /// A count quota said as the 403 of per-user limits on stored objects
    /// (snapshots, volumes, images), rather than the 429 of sandbox counts
    /// (docs/server.md, "Status codes"); any other error as it was.
    pub fn quota_as_forbidden(self) -> ServiceError {
        if self.reason == Some(ErrorReason::QuotaExceeded) {
            ServiceError {
                code: ErrorCode::Forbidden,
                ..self
            }
        } else {
            self
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        match e {
            StoreError::NotFound => ServiceError::not_found("not found"),
            StoreError::Exists(m) => ServiceError::conflict(m).because(ErrorReason::AlreadyExists),
            StoreError::Conflict(m) => ServiceError::conflict(m),
            // Per-resource codes (403 vs 429) are decided by the caller
            // (docs/server.md, "Status codes"); the default is 429.
            StoreError::Quota(m) => ServiceError::too_many(m).because(ErrorReason::QuotaExceeded),
            StoreError::Invalid(m) => ServiceError::bad_request(m),
            other => ServiceError::internal(other),
        }
    }
}

impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> ServiceError {
        match e {
            EngineError::NotFound(_) => ServiceError::not_found("not found"),
            EngineError::Invalid(m) => ServiceError::bad_request(m),
            EngineError::Unsupported { .. } => ServiceError::unsupported(e.to_string()),
            EngineError::RestoreFailed { .. } => {
                ServiceError::conflict(e.to_string()).because(ErrorReason::RestoreFailed)
            }
            EngineError::BadState {
                state: Status::Crashed,
                ..
            } => ServiceError::conflict(e.to_string()).because(ErrorReason::SandboxCrashed),
            EngineError::BadState { .. } | EngineError::NotHot { .. } => {
                ServiceError::conflict(e.to_string()).because(ErrorReason::SandboxNotRunning)
            }
            EngineError::Agent(c) => ServiceError::from(c),
            other => ServiceError::internal(other),
        }
    }
}

impl From<ClientError> for ServiceError {
    fn from(e: ClientError) -> ServiceError {
        match e {
            // The agent refused the request (bad path, command not found …):
            // said in the agent's words, with the code of the guest's
            // reason, so a well-formed request that the guest's state
            // refuses is not invalid input.
            ClientError::Agent {
                code: Some(code),
                message,
            } => {
                let e = ServiceError::new(agent_code(code), message);
                if code == bhatti_protocol::messages::ErrorCode::NoSuchUser {
                    e.because(ErrorReason::NoSuchUser)
                } else {
                    e
                }
            }
            // An agent that sends words only (v1, or a guest from before
            // error codes): its words are all there is to go by.
            ClientError::Agent {
                code: None,
                message,
            } => ServiceError::new(legacy_agent_code(&message), message),
            // The agent is at its connection limit: try again shortly.
            ClientError::Busy => ServiceError::new(
                ErrorCode::Unavailable,
                "the sandbox's agent is busy (connection limit reached); retry shortly",
            ),
            // The client's own upload stopped short of its Content-Length.
            ClientError::Source(e) => {
                ServiceError::bad_request(format!("request body ended early: {e}"))
            }
            other => ServiceError::internal(format!("agent: {other}")),
        }
    }
}

impl From<tokio::task::JoinError> for ServiceError {
    fn from(e: tokio::task::JoinError) -> ServiceError {
        ServiceError::internal(format!("task failed: {e}"))
    }
}

/// The code for a coded agent failure: the guest's state refused a
/// well-formed request, so only a malformed one is invalid input.
fn agent_code(code: bhatti_protocol::messages::ErrorCode) -> ErrorCode {
    use bhatti_protocol::messages::ErrorCode as Agent;
    match code {
        // Nothing by that name (a path through a file, or one longer than
        // any name, names nothing either).
        Agent::NotFound | Agent::NotADirectory | Agent::NameTooLong | Agent::NoSuchUser => {
            ErrorCode::NotFound
        }
        Agent::PermissionDenied => ErrorCode::Forbidden,
        Agent::IsADirectory | Agent::AlreadyExists | Agent::Busy => ErrorCode::Conflict,
        Agent::TooLarge => ErrorCode::TooLarge,
        Agent::NoSpace => ErrorCode::InsufficientStorage,
        Agent::InvalidInput | Agent::Other => ErrorCode::InvalidInput,
    }
}

/// The code for an agent that gives words only (v1 guests): the one place
/// that reads an agent's wording, kept for them alone.
fn legacy_agent_code(message: &str) -> ErrorCode {
    let lower = message.to_ascii_lowercase();
    let has = |s: &[&str]| s.iter().any(|s| lower.contains(s));
    if has(&[
        "no such file",
        "not found",
        "not a directory",
        "file name too long",
    ]) {
        ErrorCode::NotFound
    } else if has(&["permission denied", "operation not permitted"]) {
        ErrorCode::Forbidden
    } else if has(&["is a directory", "not a file path", "file exists"]) {
        ErrorCode::Conflict
    } else if has(&["too large"]) {
        ErrorCode::TooLarge
    } else {
        ErrorCode::InvalidInput
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bhatti_protocol::messages::ErrorCode as Agent;

    #[test]
    fn coded_agent_errors_keep_their_meaning() {
        let e = |code| {
            ServiceError::from(ClientError::Agent {
                code: Some(code),
                message: "x".into(),
            })
            .code
        };
        assert_eq!(e(Agent::NotFound), ErrorCode::NotFound);
        assert_eq!(e(Agent::NotADirectory), ErrorCode::NotFound);
        assert_eq!(e(Agent::IsADirectory), ErrorCode::Conflict);
        assert_eq!(e(Agent::NoSpace), ErrorCode::InsufficientStorage);
        assert_eq!(e(Agent::InvalidInput), ErrorCode::InvalidInput);
    }

    #[test]
    fn a_code_wins_over_the_words() {
        // A coded error whose words say "not found" is what its code says.
        let e = ServiceError::from(ClientError::Agent {
            code: Some(Agent::PermissionDenied),
            message: "no such file".into(),
        });
        assert_eq!(e.code, ErrorCode::Forbidden);
        let legacy = ServiceError::from(ClientError::Agent {
            code: None,
            message: "open /x: No such file or directory".into(),
        });
        assert_eq!(legacy.code, ErrorCode::NotFound);
    }

    #[test]
    fn store_quotas_are_429_unless_said_otherwise() {
        let q = ServiceError::from(StoreError::Quota("limit".into()));
        assert_eq!(q.code, ErrorCode::RateLimited);
        assert_eq!(q.reason, Some(ErrorReason::QuotaExceeded));
        let forbidden = q.quota_as_forbidden();
        assert_eq!(forbidden.code, ErrorCode::Forbidden);
        // The reason survives the change of status, so hints still apply.
        assert_eq!(forbidden.reason, Some(ErrorReason::QuotaExceeded));
        // A rate limit is not a quota: it stays a 429.
        let rate = ServiceError::too_many("slow down").because(ErrorReason::RateLimited);
        assert_eq!(rate.quota_as_forbidden().code, ErrorCode::RateLimited);
        // Engine states become reasons, not words to read.
        let crashed = ServiceError::from(EngineError::BadState {
            id: "a".into(),
            state: Status::Crashed,
            what: "the VM died".into(),
        });
        assert_eq!(
            (crashed.code, crashed.reason),
            (ErrorCode::Conflict, Some(ErrorReason::SandboxCrashed))
        );
        let stopped = ServiceError::from(EngineError::BadState {
            id: "a".into(),
            state: Status::Stopped,
            what: "cannot pause".into(),
        });
        assert_eq!(stopped.reason, Some(ErrorReason::SandboxNotRunning));
        let taken = ServiceError::from(StoreError::Exists("name taken".into()));
        assert_eq!(taken.reason, Some(ErrorReason::AlreadyExists));
        let nf = ServiceError::from(StoreError::NotFound).or_not_found(|| "snapshot x".into());
        assert_eq!(nf.message, "snapshot x");
    }
}
