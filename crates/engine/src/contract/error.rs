//! The engine's error type.

use crate::contract::Thermal;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("sandbox {0:?} not found")]
    NotFound(String),
    #[error("sandbox {id:?} is not hot (thermal={thermal})")]
    NotHot { id: String, thermal: Thermal },
    #[error("sandbox {id:?} is {state}: {what}")]
    BadState {
        id: String,
        state: String,
        what: String,
    },
    #[error("sandbox {id:?} snapshot is corrupt: {reason} — use 'bhatti start --force' to retry or destroy and recreate (volume data is safe)")]
    RestoreFailed { id: String, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("not supported by the {engine} engine: {what}")]
    Unsupported { engine: &'static str, what: String },
    #[error("boot failed: {0}")]
    Boot(String),
    /// What the VMM driver said, kept typed: the restore breaker trips on
    /// snapshot faults only ([`EngineError::is_snapshot_fault`]).
    #[error(transparent)]
    Vmm(#[from] crate::vmm::VmmError),
    #[error("agent: {0}")]
    Agent(#[from] bhatti_agent_client::ClientError),
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    /// A Docker API call failed (its 404s become `NotFound` or `Invalid`).
    #[cfg(feature = "docker")]
    #[error("docker: {op}: {source}")]
    Docker {
        op: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// A host step (a file copy, a helper program) could not run.
    #[error("{what}: {source}")]
    Host {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A host helper program ran and failed.
    #[error("{what} failed ({status}): {stderr}")]
    HostCommand {
        what: String,
        status: std::process::ExitStatus,
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
