//! The service layer: the daemon's operations as functions over typed
//! inputs, shared by the native API and the E2B API so that no rule is
//! implemented twice. Handlers parse and render; they decide nothing.

pub mod error;
pub mod guest_fs;
pub mod metrics;
pub mod processes;
pub mod sandboxes;
pub mod secrets;
pub mod snapshots;
pub mod templates;
pub mod volumes;
pub mod watch;
