//! lohar, the bhatti guest agent.
//!
//! One binary, three ways to run:
//! - **guest mode**: PID 1 of a microVM (mounts, config drive, network, reaper),
//!   serving the agent on TCP and vsock ports 1024/1025;
//! - **container mode**: the entrypoint of a Docker sandbox, serving on Unix sockets
//!   in a bind-mounted directory;
//! - **test mode** (`LOHAR_TEST=1`): Unix sockets named by `LOHAR_SOCK` and
//!   `LOHAR_FWD_SOCK`, children run as the current user; needs no root, VM or KVM.
//!
//! Whatever the mode, the [`agent`] serves the same protocol (`bhatti-protocol`):
//! one operation per control connection (or, negotiated by HELLO, one after
//! another on a kept connection), AUTH first when a token is configured.

mod admission;
pub mod agent;
mod apply;
mod conn;
pub mod container;
mod exec;
mod fail;
mod files;
mod forward;
mod fsuser;
pub mod guest;
mod pty;
pub mod ring;
mod serve;
mod session;
mod spawn;
pub mod systemd;
mod watch;
mod wire;
mod zerocopy;

pub use admission::Source;
pub use agent::{Agent, AgentConfig, RunAs};
