//! The API's calls, one `impl Client` block per resource, so each file
//! reads as the client side of one part of the API (docs/api.md). The
//! plumbing they share (requests, JSON, errors) stays in the crate root.

use super::*;

mod exec;
mod files;
mod images;
mod ports;
mod publish;
mod sandboxes;
mod secrets;
mod snapshots;
mod system;
mod templates;
mod volumes;
mod websockets;
