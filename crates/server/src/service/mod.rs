//! The service layer: the daemon's operations as functions over typed
//! inputs, shared by the native API and the E2B API so that no rule is
//! implemented twice. Handlers parse and render; they decide nothing.

pub mod backups;
pub mod error;
pub mod exec;
pub mod files;
pub mod guest_fs;
pub mod images;
pub mod metrics;
pub mod pools;
pub mod ports;
pub mod processes;
pub mod publish;
pub mod sandboxes;
pub mod secrets;
pub mod snapshots;
pub mod templates;
pub mod volumes;
pub mod watch;
pub mod web_shell;
