//! Data types crossing the engine boundary.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::EgressPolicy;

/// Lifecycle status as the store records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The sandbox runs (hot or warm) or is cold with a snapshot to
    /// restore; its [`Thermal`] says which.
    Running,
    /// Stopped by request: the VMM or container is gone; its disks (and,
    /// where the engine has them, a memory snapshot) are kept.
    Stopped,
    /// The VM died under the sandbox; its disk is kept and the next start
    /// boots it afresh from that disk (`SandboxInfo::reason` says how).
    Crashed,
    /// The engine could not recover the sandbox at daemon start (the store
    /// still lists it; `SandboxInfo::reason` says why).
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Crashed => "crashed",
            Status::Unknown => "unknown",
        })
    }
}

/// hot = running; warm = vCPUs paused, VMM alive; cold = snapshot on disk only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Thermal {
    /// vCPUs run and the agent answers.
    Hot,
    /// vCPUs paused, the VMM process kept: resumes in milliseconds.
    Warm,
    /// Only a snapshot on disk: waking it means restoring it.
    Cold,
}

impl fmt::Display for Thermal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Thermal::Hot => "hot",
            Thermal::Warm => "warm",
            Thermal::Cold => "cold",
        })
    }
}

/// Where a sandbox is in its life, as one value: a running sandbox has a
/// thermal state, and nothing else has one, so "stopped and hot" cannot be
/// written down. The engines keep this; [`Status`] and [`Thermal`] (what
/// the store and the API show) are derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LifeState {
    /// Running, hot, warm or cold.
    Running(Thermal),
    /// Stopped by request.
    Stopped,
    /// The VM or container died under it, and how (shown to the user; a
    /// reason is held exactly while the sandbox is crashed).
    Crashed(String),
}

impl LifeState {
    /// The store's view of this state.
    pub(crate) fn status(&self) -> Status {
        match self {
            LifeState::Running(_) => Status::Running,
            LifeState::Stopped => Status::Stopped,
            LifeState::Crashed(_) => Status::Crashed,
        }
    }

    /// A sandbox that is not running is cold: it has nothing in memory.
    pub(crate) fn thermal(&self) -> Thermal {
        match self {
            LifeState::Running(t) => *t,
            _ => Thermal::Cold,
        }
    }

    /// Why the sandbox crashed, while it is crashed.
    pub(crate) fn crash_reason(&self) -> Option<&str> {
        match self {
            LifeState::Crashed(why) => Some(why),
            _ => None,
        }
    }
}

/// A file placed into the guest at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    /// The file's bytes, written as they are.
    pub content: Vec<u8>,
    /// Octal text, e.g. `"0644"`.
    pub mode: String,
}

/// A block-device volume attached at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeAttach {
    /// The volume's name (names its copy in a checkpoint).
    pub name: String,
    /// ext4 image on the host.
    pub file: PathBuf,
    /// Mount point in the guest.
    pub mount: String,
    /// Attached (and mounted) read-only.
    pub read_only: bool,
}

/// What to create.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The ID to give the sandbox (16 lower-case hex); `None` = the engine
    /// picks one. The server picks it so that store rows (volume
    /// attachments) can be written before the sandbox boots.
    #[serde(default)]
    pub id: Option<String>,
    /// Human-readable name (also the microVM guest's hostname); not
    /// checked for uniqueness here.
    pub name: String,
    /// Owner's subnet index (1-based); decides the sandbox's network.
    pub owner_index: u16,
    /// Base root filesystem; `None` = the engine's default image.
    pub image: Option<PathBuf>,
    /// Whole vCPUs (fractions are rejected before they get here).
    pub cpus: u32,
    /// Guest memory in MiB; at least 128.
    pub memory_mb: u32,
    /// Grow the root disk to this size (0 = keep the image's size).
    pub disk_size_mb: u64,
    /// Environment variables for every exec and session in the guest.
    pub env: BTreeMap<String, String>,
    /// Files written into the guest at boot, keyed by absolute guest path.
    pub files: BTreeMap<String, GuestFile>,
    /// A shell script (`sh -c`) the agent starts once the guest is up;
    /// empty: none.
    pub init: String,
    /// Volumes attached at boot, in order.
    pub volumes: Vec<VolumeAttach>,
    /// Which outbound traffic the sandbox may send.
    pub egress: EgressPolicy,
    /// Run guest commands as root instead of uid 1000.
    pub run_as_root: bool,
    /// The image's own user when it is not root (name, uid or `uid:gid`);
    /// empty: `lohar` (uid 1000).
    #[serde(default)]
    pub user: String,
    /// Working directory for execs and shells that name none (the image's
    /// `WorkingDir`); empty: the agent's default.
    #[serde(default)]
    pub cwd: String,
}

/// What a new sandbox resumed from a checkpoint is called and who owns it.
#[derive(Debug, Clone, Default)]
pub struct ResumeSpec {
    /// As [`SandboxSpec::id`].
    pub id: Option<String>,
    /// As [`SandboxSpec::name`].
    pub name: String,
    /// As [`SandboxSpec::owner_index`]: the new sandbox gets an address in
    /// this owner's subnet.
    pub owner_index: u16,
    /// `None`: the source's policy — the forked sandbox's, or the one the
    /// checkpoint recorded (`public` for checkpoints from before policies
    /// were recorded). `Some`: this one instead.
    pub egress: Option<EgressPolicy>,
}

/// An engine's view of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// The sandbox's ID (16 lower-case hex).
    pub id: String,
    /// Its name, as created.
    pub name: String,
    /// Lifecycle status.
    pub status: Status,
    /// Hot, warm or cold (cold whenever it is not running).
    pub thermal: Thermal,
    /// The sandbox's address as seen from the host (its external address).
    pub ip: String,
    /// Whole vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Why the sandbox is `unknown` or cannot be restored, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What `ensure_hot` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// The thermal state the sandbox was in (`Hot`: nothing was done).
    pub from: Thermal,
    /// How long making it hot took.
    pub took: Duration,
}

/// Feature switches the server consults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Processes survive stop/start (memory snapshot), not just the filesystem.
    pub memory_snapshots: bool,
    /// Incremental snapshots in use.
    pub diff_snapshots: bool,
    /// Named checkpoints and forks.
    pub checkpoints: bool,
    /// Egress policies are enforced (and can change while running).
    pub egress_policy: bool,
    /// Sandboxes keep running while the daemon is down, and the next daemon
    /// adopts them: a stop for an upgrade needs no snapshot.
    pub survives_restart: bool,
}

/// `manifest.json` of a named checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointManifest {
    /// Layout version; a checkpoint of another version is refused.
    pub format_version: u32,
    /// The VMM driver that wrote it (`"qemu"`, `"firecracker"`); only the
    /// same driver resumes it.
    pub engine: String,
    /// The VMM's own version at checkpoint time.
    pub vmm_version: String,
    /// ID of the sandbox the checkpoint was taken from.
    pub created_from: String,
    /// When it was taken, in seconds since the Unix epoch.
    pub created_at_unix: u64,
    /// The source's vCPUs; a resume gets the same.
    pub cpus: u32,
    /// The source's memory in MiB; a resume gets the same.
    pub memory_mb: u32,
    /// The guest NIC's MAC address, kept so the restored guest's NIC matches.
    pub guest_mac: String,
    /// The agent token baked into the guest's memory; the resumed
    /// sandbox's agent still expects it.
    pub agent_token: String,
    /// Copies of the source's volumes, in attach order.
    pub volumes: Vec<CheckpointVolume>,
    /// Relative file name → size in bytes, checked before a restore.
    pub files: BTreeMap<String, u64>,
    /// SHA-256 of the small files (state file excluded when large).
    pub checksums: BTreeMap<String, String>,
    /// VMM-specific restore settings.
    pub vmm: serde_json::Value,
    /// The source's egress policy when the checkpoint was taken; a resume
    /// without a policy of its own gets it. Absent in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressPolicy>,
}

/// One volume copied into a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointVolume {
    /// The source volume's name.
    pub name: String,
    /// The copy's file name, relative to the checkpoint directory.
    pub file: String,
    /// Mount point in the guest.
    pub mount: String,
    /// Attached read-only.
    pub read_only: bool,
}

/// Persisted engine state of one sandbox (JSON in the store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    /// The engine that owns the sandbox (its [`Engine::name`](crate::Engine::name)).
    pub engine: String,
    /// The sandbox's ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its status when the state was taken.
    pub status: Status,
    /// Bumped at every boot or restore; a snapshot older than the current
    /// generation is stale and never restored (docs/decisions.md, "VMMs").
    pub generation: u64,
    /// The egress policy the engine enforces for the sandbox (also part of
    /// `detail`; here for callers that do not read engine internals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressPolicy>,
    /// Engine-specific recovery data (paths, network, sizes, token); only
    /// the engine that wrote it reads it.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// Checks a caller-chosen sandbox ID (it names directories and host
/// devices, so only 16 lower-case hex characters are accepted).
pub fn checked_id(
    id: Option<&str>,
    fresh: impl FnOnce() -> String,
) -> Result<String, crate::EngineError> {
    match id {
        None => Ok(fresh()),
        Some(id)
            if id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(id.to_string())
        }
        Some(id) => Err(crate::EngineError::Invalid(format!(
            "sandbox id {id:?} must be 16 lower-case hex characters"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_sandbox_has_a_thermal_state() {
        for t in [Thermal::Hot, Thermal::Warm, Thermal::Cold] {
            let s = LifeState::Running(t);
            assert_eq!((s.status(), s.thermal()), (Status::Running, t));
        }
        for (s, status) in [
            (LifeState::Stopped, Status::Stopped),
            (LifeState::Crashed("killed".into()), Status::Crashed),
        ] {
            assert_eq!((s.status(), s.thermal()), (status, Thermal::Cold));
        }
        // Only a crashed sandbox has a crash reason.
        assert_eq!(
            LifeState::Crashed("killed".into()).crash_reason(),
            Some("killed")
        );
        assert_eq!(LifeState::Running(Thermal::Hot).crash_reason(), None);
    }
}

/// One warm pool: how many sandboxes of one image and shape the engine
/// keeps booted and paused, owned by nobody, for creates to claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// The image's name as the daemon shows it (the engine goes by `image`).
    #[serde(default)]
    pub name: String,
    /// The image's root filesystem; `None` = the engine's default image.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// vCPUs of each pooled sandbox.
    pub cpus: u32,
    /// Memory of each pooled sandbox, MiB.
    pub memory_mb: u32,
    /// How many to keep ready.
    pub size: u32,
}

/// A warm pool as it stands (`/metrics`, `bhatti admin pool`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Its shape and target size.
    pub spec: PoolSpec,
    /// Sandboxes booted, paused and waiting to be claimed.
    pub ready: u32,
    /// Whether the pool's template snapshot exists (a pool fills from it).
    pub template: bool,
    /// Creates that took a pooled sandbox.
    pub hits: u64,
    /// Creates of this shape that found the pool empty.
    pub misses: u64,
    /// Pooled sandboxes made since the daemon started.
    pub refills: u64,
    /// Pooled sandboxes discarded unused (memory pressure, a smaller size,
    /// a changed image, a claim that failed).
    pub discarded: u64,
    /// Resident memory of the ready sandboxes' VMM processes, bytes.
    pub rss_bytes: u64,
}
