//! The wire protocol spoken between the host (daemon, agent client) and `lohar`,
//! the guest agent.
//!
//! Every byte that crosses a sandbox boundary is a *frame*:
//! `[u32 big-endian length][u8 type][payload]`, where the length counts the type
//! byte plus the payload. The layout, the 1 MiB cap, the type numbers and the JSON
//! field names are byte-compatible with the reference implementation (bhatti v1),
//! so a host client of either implementation works with the other's agent.
//!
//! The crate is transport-agnostic: the codec works over any `std::io` stream and,
//! with the `tokio` feature, over any `AsyncRead`/`AsyncWrite`.
//!
//! - [`frame`]: the codec (encode, blocking read/write, partial-buffer parsing,
//!   RESIZE/EXIT payloads).
//! - [`r#async`]: the same codec over tokio streams.
//! - [`messages`]: the JSON payloads and the message type numbers.
//! - [`config`]: the guest configuration written by the host onto the config drive.

#![forbid(unsafe_code)]

pub mod config;
mod consts;
mod error;
pub mod frame;
pub mod messages;
mod types;

#[cfg(feature = "tokio")]
pub mod r#async;

pub use consts::*;
pub use error::ProtocolError;
pub use frame::{
    decode_exit, decode_resize, encode_exit, encode_frame, encode_resize, frame_header,
    parse_frame_header, read_frame, seal_frame, try_parse, write_frame, Frame, ParsedFrame,
    FRAME_OVERHEAD,
};
pub use types::MsgType;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ProtocolError>;
