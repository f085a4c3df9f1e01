//! E2B's in-sandbox API (envd) as bhatti defines it: the `process.Process`
//! and `filesystem.Filesystem` Connect services, generated from this crate's
//! own `.proto` files so that E2B's SDKs talk to bhatti unmodified. The
//! server implements the service traits; this crate holds only the contract,
//! and re-exports the runtime crates the generated code is written against,
//! so that an implementation uses exactly those versions.

#![forbid(unsafe_code)]

pub use {buffa, buffa_types, connectrpc};

// Generated code is checked by its generator, not by our lints.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::arithmetic_side_effects,
    missing_docs,
    unreachable_pub
)]
pub mod proto {
    connectrpc::include_generated!();
}
