//! The bhatti daemon as a library: `bhatti serve` is a thin shell over
//! [`daemon::run`].
//!
//! Request path: [`listener`] (accept loop, connection timeouts) → [`routes`] (axum router + middleware: request ID, bearer
//! auth, rate limits, logging) → handlers by resource → [`state::AppState`]
//! (store + engine + activity bookkeeping) → the engine. Beside the request
//! path: the [`thermal`] manager, start-up [`recovery`], the [`events`]
//! recorder, [`secrets`] encryption, and [`config`].

#![forbid(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod engines;
pub mod error;
pub mod events;
pub mod health;
pub mod images;
pub mod listener;
pub mod ratelimit;
pub mod recovery;
pub mod routes;
pub mod secrets;
pub mod service;
pub mod state;
pub mod thermal;
pub mod ticker;
pub mod validate;

pub use config::Config;
pub use daemon::{run, start, Daemon, DaemonError};
