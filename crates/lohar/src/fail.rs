//! A request's failure as the agent reports it: a [`ErrorCode`] for hosts
//! that announced `error_codes` in their HELLO (they choose their answer
//! from it), and the message in words for everyone (v1 hosts get only the
//! words, as v1 defines ERROR).

use std::fmt;

use bhatti_protocol::messages::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub code: ErrorCode,
    pub message: String,
}

impl Fail {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }

    /// An I/O failure in the guest, coded by its kind: `"<what>: <error>"`.
    pub fn io(what: impl fmt::Display, e: &std::io::Error) -> Fail {
        Fail::new(ErrorCode::of_io(e), format!("{what}: {e}"))
    }

    /// A malformed request.
    pub fn invalid(message: impl Into<String>) -> Fail {
        Fail::new(ErrorCode::InvalidInput, message)
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Failures not (yet) given a kind of their own.
impl From<String> for Fail {
    fn from(message: String) -> Fail {
        Fail::new(ErrorCode::Other, message)
    }
}

impl From<&str> for Fail {
    fn from(message: &str) -> Fail {
        Fail::new(ErrorCode::Other, message)
    }
}
