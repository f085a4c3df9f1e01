//! The engine's error type.

use crate::contract::{Status, Thermal};

/// Why an [`Engine`](crate::Engine) operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No sandbox (or container) with this ID is known to the engine.
    #[error("sandbox {0:?} not found")]
    NotFound(String),
    /// An in-sandbox operation needed a running guest agent, but the
    /// sandbox is warm or cold (or its agent is not connected yet); the
    /// caller can wake it and retry.
    #[error("sandbox {id:?} is not hot (thermal={thermal})")]
    NotHot {
        /// The sandbox asked for.
        id: String,
        /// Its thermal state at the time of the call.
        thermal: Thermal,
    },
    /// The operation is not possible in the sandbox's current state (e.g.
    /// pausing a stopped sandbox, waking a crashed one).
    #[error("sandbox {id:?} is {state}: {what}")]
    BadState {
        /// The sandbox asked for.
        id: String,
        /// The state it is in (stopped or crashed).
        state: Status,
        /// What could not be done, or why the sandbox is in that state.
        what: String,
    },
    /// Restoring the sandbox's snapshot failed, or failed before and the
    /// start was not forced: starts are refused until `--force`.
    #[error("sandbox {id:?} snapshot is corrupt: {reason} — use 'bhatti start --force' to retry or destroy and recreate (volume data is safe)")]
    RestoreFailed {
        /// The sandbox whose snapshot did not restore.
        id: String,
        /// The restore failure that tripped the breaker.
        reason: String,
    },
    /// The caller's input was rejected (a bad ID, size, path or spec).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The engine (or its VMM) cannot do this at all.
    #[error("not supported by the {engine} engine: {what}")]
    Unsupported {
        /// The engine's name, e.g. `"docker"`.
        engine: &'static str,
        /// The operation it cannot do.
        what: String,
    },
    /// The guest did not come up: its agent never answered or the VMM
    /// exited during boot; the text carries the console and VMM log tails.
    #[error("boot failed: {0}")]
    Boot(String),
    /// What the VMM driver said, kept typed: the restore breaker trips on
    /// snapshot faults only ([`EngineError::is_snapshot_fault`]).
    #[error(transparent)]
    Vmm(#[from] crate::vmm::VmmError),
    /// Talking to the sandbox's guest agent failed.
    #[error("agent: {0}")]
    Agent(#[from] bhatti_agent_client::ClientError),
    /// Setting up or tearing down the sandbox's network failed.
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    /// A Docker API call failed (its 404s become `NotFound` or `Invalid`).
    #[cfg(feature = "docker")]
    #[error("docker: {op}: {source}")]
    Docker {
        /// The Docker call that failed, e.g. `"connect"`.
        op: String,
        /// bollard's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// A host step (a file copy, a helper program) could not run.
    #[error("{what}: {source}")]
    Host {
        /// The step that failed.
        what: String,
        /// The I/O error it hit.
        #[source]
        source: std::io::Error,
    },
    /// A host helper program ran and failed.
    #[error("{what} failed ({status}): {stderr}")]
    HostCommand {
        /// The program and what it was for.
        what: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// The engine's own records (manifests, configs) did not (de)serialise.
    #[error("engine records: {0}")]
    Json(#[from] serde_json::Error),
    /// A blocking task the engine handed off panicked or was cancelled.
    #[error("background task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// What the engine found (on disk, in a VMM, in dockerd) disagrees with
    /// what it expects, e.g. an empty snapshot or an adopted VM in a state
    /// it cannot be in.
    #[error("{0}")]
    Inconsistent(String),
    /// Any other host I/O failure (files, sockets, directories).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl EngineError {
    /// A fault of the snapshot itself (the VMM refused or failed to load
    /// it), as opposed to the host (no space, a VMM that would not start)
    /// or the guest (an agent that did not answer in time): only these
    /// make a sandbox's start refused until `--force`.
    pub fn is_snapshot_fault(&self) -> bool {
        use crate::vmm::VmmError;
        matches!(
            self,
            EngineError::Vmm(VmmError::Restore { .. } | VmmError::InvalidSnapshot(_))
        )
    }
}
