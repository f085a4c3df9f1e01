//! The bhatti daemon as a library: `bhatti serve` is a thin shell over
//! [`daemon::run`].
//!
//! Request path: [`listener`] (accept loop, connection timeouts) → [`routes`] (axum router + middleware: request ID, bearer
//! auth, rate limits, logging) → handlers by resource → [`state::AppState`]
//! (store + engine + activity bookkeeping) → the engine. Beside the request
//! path: the [`thermal`] manager, start-up [`recovery`], the [`events`]
//! recorder, [`secrets`] encryption, and [`config`].
//!
//! The public surface is what a host program needs to run the daemon:
//! [`config`] and [`daemon`] (start, run, shut down). Everything else is
//! private to the crate; the test suites drive the daemon over its sockets,
//! as users do.

#![forbid(unsafe_code)]

mod backup;
pub mod config;
pub mod daemon;
mod dns;
mod engines;
mod error;
mod events;
mod health;
mod images;
mod listener;
mod proxy;
mod public;
mod ratelimit;
mod recovery;
mod routes;
mod secrets;
mod service;
mod state;
mod thermal;
mod ticker;
mod validate;

pub use config::Config;
pub use daemon::{run, start, Daemon, DaemonError};
