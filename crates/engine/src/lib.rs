//! The bhatti sandbox engine: everything between the server and a sandbox's
//! guest agent.
//!
//! - [`contract`]: the [`Engine`] trait the server programs against, and
//!   [`EngineExt`], the in-sandbox operations every engine shares through the
//!   agent.
//! - [`microvm`]: sandboxes as microVMs, over a [`vmm`] driver (QEMU or
//!   Firecracker), each in its own network namespace ([`net`]).
//! - [`docker`]: sandboxes as containers, for hosts without KVM.
//! - [`select`]: which engine a host should run, and why.
//!
//! The `docker` feature (default) builds the Docker engine; only the fuzz
//! crate turns it off, and then the helpers only it uses are dead code.
#![cfg_attr(not(feature = "docker"), allow(dead_code, unused_imports))]

pub mod contract;
#[cfg(feature = "docker")]
pub mod docker;
pub mod lockfile;
pub mod microvm;
pub mod net;
mod registry;
pub mod select;
pub mod vmm;

pub use contract::{Engine, EngineError, EngineExt};

pub(crate) use bhatti_sync::lock;
