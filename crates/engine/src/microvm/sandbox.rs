//! A sandbox's bookkeeping: what is persisted about it ([`Detail`]), the
//! state read without waiting for a transition ([`Fast`]), and the
//! lifecycle slot that owns its VMM.

use std::path::PathBuf;
use std::sync::Mutex;

use bhatti_agent_client::{AgentClient, Transport};
use serde::{Deserialize, Serialize};

use super::SNAPSHOT_DIR;
use crate::contract::{LifeState, SandboxInfo, VolumeAttach};
use crate::lock;
use crate::net::{EgressPolicy, SandboxNet};
use crate::vmm::Vm;

/// What is persisted about a sandbox besides its generation (VmState.detail).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Detail {
    pub(super) dir: PathBuf,
    pub(super) owner_index: u16,
    pub(super) cpus: u32,
    pub(super) memory_mb: u32,
    pub(super) mac: String,
    pub(super) token: String,
    pub(super) net: SandboxNet,
    pub(super) volumes: Vec<VolumeAttach>,
    pub(super) egress: EgressPolicy,
    #[serde(default)]
    pub(super) restore_failed: Option<String>,
    /// Why the VM died under the sandbox (it is `crashed` until started).
    #[serde(default)]
    pub(super) crashed: Option<String>,
}

pub(super) struct Fast {
    pub(super) state: LifeState,
    pub(super) generation: u64,
    pub(super) restore_failed: Option<String>,
    pub(super) agent: Option<AgentClient>,
    /// While the VMM runs from the cold snapshot of this generation and
    /// has taken no snapshot since (which would reset its dirty-page log):
    /// its next stop may write a Diff onto that snapshot.
    pub(super) diff_base: Option<u64>,
    /// The egress policy in force (changeable live; `detail.egress` is the
    /// one the sandbox was created with and is rewritten from this one by
    /// `vm_state`).
    pub(super) egress: EgressPolicy,
}

pub(super) struct Sandbox {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) detail: Detail,
    /// Held across slow transitions; owns the VMM handle.
    pub(super) lifecycle: tokio::sync::Mutex<Option<Box<dyn Vm>>>,
    pub(super) fast: Mutex<Fast>,
}

impl crate::registry::Entry for Sandbox {
    fn info(&self) -> SandboxInfo {
        let f = lock(&self.fast);
        SandboxInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            status: f.state.status(),
            thermal: f.state.thermal(),
            ip: self.detail.net.ext_ip.to_string(),
            cpus: self.detail.cpus,
            memory_mb: self.detail.memory_mb,
            reason: f
                .state
                .crash_reason()
                .map(str::to_string)
                .or_else(|| f.restore_failed.clone()),
        }
    }
}

impl Detail {
    /// A client of this sandbox's agent: over its external address, with
    /// its token.
    pub(super) fn client(&self) -> AgentClient {
        AgentClient::new(
            Transport::Tcp {
                addr: std::net::IpAddr::V4(self.net.ext_ip),
            },
            Some(self.token.clone()),
        )
    }
}

impl Sandbox {
    pub(super) fn set(&self, state: LifeState) {
        lock(&self.fast).state = state;
    }

    pub(super) fn client(&self) -> AgentClient {
        self.detail.client()
    }

    /// Closes the agent connections kept between operations. Before a
    /// pause or a snapshot: kept open, they would sit in the guest's
    /// memory (and in every guest restored from it), each holding one of
    /// its agent's slots until the agent's idle close.
    pub(super) fn close_idle_agent(&self) {
        if let Some(a) = &lock(&self.fast).agent {
            a.close_idle();
        }
    }

    pub(super) fn snapshot_dir(&self) -> PathBuf {
        self.detail.dir.join(SNAPSHOT_DIR)
    }
}
