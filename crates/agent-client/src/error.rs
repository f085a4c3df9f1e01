//! The client's error type.

use bhatti_protocol::messages::ErrorCode;
use bhatti_protocol::ProtocolError;

/// Why an operation on the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not reach the agent.
    #[error("connect to agent: {0}")]
    Connect(std::io::Error),
    /// The agent rejected our token (or we sent none and it wants one).
    #[error("agent rejected authentication")]
    Auth,
    /// The agent refused the connection: it is at its connection limit.
    /// Transient; the caller may retry.
    #[error("agent busy: connection limit exceeded")]
    Busy,
    /// The caller's data source for an upload failed or ended before the
    /// declared size: the caller's fault, not the agent's.
    #[error("upload source: {0}")]
    Source(std::io::Error),
    /// The agent answered with an ERROR frame (or an error status). `code`
    /// says what kind of failure it is; `None` from agents that send text
    /// only (v1, or before this client's HELLO announced `error_codes`).
    #[error("agent error: {message}")]
    Agent {
        /// The machine-readable kind of failure, if the agent sent one.
        code: Option<ErrorCode>,
        /// The agent's human-readable explanation.
        message: String,
    },
    /// The agent sent a frame that makes no sense at this point.
    #[error("unexpected frame type 0x{0:02x} from agent")]
    UnexpectedFrame(u8),
    /// The connection ended before the operation completed.
    #[error("agent closed the connection before the operation completed")]
    Closed,
    /// `wait_ready` ran out of time.
    #[error("agent not ready after {attempts} attempts: {last}")]
    NotReady {
        /// Probes made before the overall deadline passed.
        attempts: u32,
        /// Why the last probe failed.
        last: String,
    },
    /// Firecracker's hybrid vsock handshake failed.
    #[error("vsock handshake: {0}")]
    Handshake(String),
    /// A frame could not be encoded or decoded (bad length, bad payload).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A JSON payload could not be serialised or parsed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Reading from or writing to the connection (or the caller's sink) failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// An agent's error status (`StatusResponse`) as an error.
    pub(crate) fn status(st: bhatti_protocol::messages::StatusResponse) -> ClientError {
        ClientError::Agent {
            code: st.code,
            message: st.message.unwrap_or(st.status),
        }
    }
}
