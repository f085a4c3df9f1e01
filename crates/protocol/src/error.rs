//! The protocol's error type.

use std::io;

use crate::MAX_FRAME_LEN;

/// Errors of the frame codec and payload helpers.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A frame (type byte + payload) larger than [`MAX_FRAME_LEN`], on write or on read.
    #[error("frame length {0} exceeds the maximum of {MAX_FRAME_LEN} bytes")]
    FrameTooLarge(usize),
    /// A length prefix of 0 (a frame must at least carry its type byte).
    #[error("invalid frame length 0")]
    EmptyFrame,
    /// The stream ended inside a frame (partial header or partial body).
    #[error("unexpected end of stream inside a frame")]
    UnexpectedEof,
    /// A fixed-size binary payload had the wrong length.
    #[error("invalid {what} payload: expected {expected} bytes, got {got}")]
    BadPayload {
        /// The frame type whose payload it was, e.g. `"EXIT"`.
        what: &'static str,
        /// Bytes that payload type needs.
        expected: usize,
        /// Bytes the payload had.
        got: usize,
    },
    /// A JSON payload failed to encode or decode.
    #[error("invalid JSON payload: {0}")]
    Json(#[from] serde_json::Error),
    /// The underlying transport failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl ProtocolError {
    /// True when the error means the peer went away mid-frame or the transport broke,
    /// rather than that the peer sent something malformed.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, ProtocolError::UnexpectedEof | ProtocolError::Io(_))
    }
}
