//! The bhatti sandbox engine.
//!
//! Each sandbox is a microVM that runs inside its own Linux network
//! namespace. This crate holds the host-side machinery around those VMs;
//! for now that is [`net`], which creates, polices and removes the
//! per-sandbox network namespaces.

pub mod api;
pub mod microvm;
pub mod net;

pub use api::{Engine, EngineError, EngineExt};
pub mod vmm;
