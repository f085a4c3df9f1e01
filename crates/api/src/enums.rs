//! The API's closed sets of words (error codes, sandbox status, engine,
//! thermal state) as enums, so the OpenAPI document lists the allowed
//! values and programs match on variants instead of strings.
//!
//! Each enum is forward-compatible: a word a newer server adds reads as the
//! enum's catch-all variant in an older client instead of failing the whole
//! response. Each compares equal to its wire word (`status == "running"`),
//! which keeps tests and scripts that think in words readable.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares a wire enum: the variants with their wire words, then the
/// catch-all after `..` (`#[serde(other)]`, also the `Default`).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $var:ident = $wire:literal, )*
            ..
            $(#[$ometa:meta])* $other:ident = $owire:literal,
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $var, )*
            $(#[$ometa])*
            #[default]
            #[serde(other, rename = $owire)]
            $other,
        }

        impl $name {
            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$var => $wire, )*
                    $name::$other => $owire,
                }
            }

            /// The variant for a wire word; the catch-all for any other.
            pub fn from_wire(word: &str) -> $name {
                match word {
                    $( $wire => $name::$var, )*
                    _ => $name::$other,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, word: &str) -> bool {
                self.as_str() == word
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, word: &&str) -> bool {
                self.as_str() == *word
            }
        }
    };
}

wire_enum! {
    /// What went wrong, for programs: clients branch on this, never on the
    /// words of `error`. Each code has one HTTP status (the server maps them in
    /// one place); a code added later reads as `unknown` to an older client.
    pub enum ErrorCode {
        /// 400: the request is malformed or a value is out of range.
        InvalidInput = "invalid_input",
        /// 401: no key, or a key that is not valid.
        Unauthorized = "unauthorized",
        /// 403: the caller may not do this (a per-user limit, a forbidden path).
        Forbidden = "forbidden",
        /// 404: nothing by that name that the caller owns.
        NotFound = "not_found",
        /// 409: the object's state refuses it (exists already, not running …).
        Conflict = "conflict",
        /// 413: a body or file over its limit.
        TooLarge = "too_large",
        /// 415: a body in a media type the route does not take.
        UnsupportedMediaType = "unsupported_media_type",
        /// 429: too many requests, or a count quota reached; retry later.
        RateLimited = "rate_limited",
        /// 500: the server failed; the log has the cause under `request_id`.
        Internal = "internal",
        /// 501: this engine or build cannot do it.
        NotImplemented = "not_implemented",
        /// 502: the sandbox's side of a proxied request failed.
        BadGateway = "bad_gateway",
        /// 503: busy right now (the agent's connection limit); retry shortly.
        Unavailable = "unavailable",
        /// 504: the sandbox did not answer a proxied request in time.
        GatewayTimeout = "gateway_timeout",
        /// 507: the sandbox's disk is full.
        InsufficientStorage = "insufficient_storage",
        ..
        /// A code this client does not know yet.
        Unknown = "unknown",
    }
}

wire_enum! {
    /// Why, more precisely than the code, for the errors a client can do
    /// something about: what to suggest to a person, or what to retry, is
    /// decided on this and never on the words of `error`. Absent where the
    /// code says it all.
    pub enum ErrorReason {
        /// 409: the sandbox's VM died; `start` boots it again from its disk.
        SandboxCrashed = "sandbox_crashed",
        /// 409: restoring the sandbox's snapshot failed; starts are refused
        /// until one is forced.
        RestoreFailed = "restore_failed",
        /// 409: the operation needs a running sandbox and this one is stopped.
        SandboxNotRunning = "sandbox_not_running",
        /// 409: the daemon could not recover the sandbox after a restart; it
        /// can only be destroyed.
        SandboxLost = "sandbox_lost",
        /// 409: the name is taken.
        AlreadyExists = "already_exists",
        /// 409: the object is in use (a volume attached to a sandbox).
        InUse = "in_use",
        /// 403 or 429: a per-user quota or limit would be exceeded.
        QuotaExceeded = "quota_exceeded",
        /// 429: a request-rate bucket is empty; retry in a moment.
        RateLimited = "rate_limited",
        /// 404: an exec named a guest user the sandbox does not have (the
        /// command never started; not a missing program).
        NoSuchUser = "no_such_user",
        ..
        /// A reason this client does not know yet.
        Unknown = "unknown",
    }
}

wire_enum! {
    /// A sandbox's status.
    pub enum SandboxStatus {
        /// Its VM or container is up (hot, warm or cold: see `thermal`).
        Running = "running",
        /// Stopped by a caller; `start` brings it back.
        Stopped = "stopped",
        /// Its VM or container died under it; `start` boots it afresh from
        /// its kept disk.
        Crashed = "crashed",
        ..
        /// Its disk is gone, or it is another engine's: only `destroy` is
        /// left. Also what an older client reads for a status it does not
        /// know.
        Unknown = "unknown",
    }
}

wire_enum! {
    /// Which engine runs a sandbox (or the daemon).
    pub enum EngineKind {
        /// MicroVMs under Firecracker.
        Firecracker = "firecracker",
        /// MicroVMs under QEMU (`microvm` machine type).
        Qemu = "qemu",
        /// Docker containers (no VM).
        Docker = "docker",
        ..
        /// An engine this client does not know (or a server too old to say).
        Unknown = "unknown",
    }
}

wire_enum! {
    /// How awake a running sandbox is.
    pub enum ThermalState {
        /// Running.
        Hot = "hot",
        /// Paused in memory; the next request resumes it in milliseconds.
        Warm = "warm",
        /// Snapshotted to disk; the next request restores it.
        Cold = "cold",
        ..
        /// A state this client does not know.
        Unknown = "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_words_fall_back() {
        for s in [
            SandboxStatus::Running,
            SandboxStatus::Stopped,
            SandboxStatus::Crashed,
            SandboxStatus::Unknown,
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<SandboxStatus>(&json).unwrap(), s);
            assert_eq!(SandboxStatus::from_wire(s.as_str()), s);
        }
        let later: ThermalState = serde_json::from_str("\"frozen\"").unwrap();
        assert_eq!(later, ThermalState::Unknown);
        assert_eq!(EngineKind::from_wire("kata"), EngineKind::Unknown);
        assert!(EngineKind::Qemu == "qemu");
        assert_eq!(ErrorCode::default(), ErrorCode::Unknown);
    }

    #[test]
    fn the_schema_lists_the_words() {
        let schema = serde_json::to_value(schemars::schema_for!(ThermalState)).unwrap();
        let text = schema.to_string();
        for w in ["hot", "warm", "cold"] {
            assert!(text.contains(&format!("\"{w}\"")), "{w} missing: {text}");
        }
    }
}
