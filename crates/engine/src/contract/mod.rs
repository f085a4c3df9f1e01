//! The engine contract: the interface the server programs against.
//!
//! An engine owns the lifecycle of sandboxes (create, stop = cold snapshot,
//! start = restore, pause/resume = warm, destroy) and hands out an
//! [`AgentClient`] for a hot sandbox. Everything that happens *inside* a sandbox
//! (exec, sessions, files, ports, tunnels) goes through lohar's protocol and is
//! therefore the same for every engine: [`EngineExt`] implements it once on top
//! of [`Engine::agent`], so the microVM and Docker engines differ only in
//! lifecycle.

mod error;
mod ext;
mod types;

use std::path::Path;

use async_trait::async_trait;
use bhatti_agent_client::AgentClient;

use crate::net::EgressPolicy;

pub use error::EngineError;
pub use ext::{parse_listening_ports, EngineExt};
pub use types::*;

/// The result of an engine operation.
pub type Result<T> = std::result::Result<T, EngineError>;

/// A sandbox engine.
#[async_trait]
pub trait Engine: Send + Sync {
    /// `"qemu"`, `"firecracker"` or `"docker"`.
    fn name(&self) -> &'static str;

    /// What this engine can do, for the server to decide which routes it offers.
    fn capabilities(&self) -> Capabilities;

    /// Provisions and boots a sandbox; returns once its agent answers.
    async fn create(&self, spec: SandboxSpec) -> Result<SandboxInfo>;

    /// Takes a warm-pool sandbox that fits `spec` (whose `id` is ignored)
    /// for a create about to happen, and returns its ID: create it with
    /// that ID, or `destroy` it if the create does not happen. `None`: no
    /// pooled sandbox fits, and the create makes one as usual.
    fn reserve_pooled(&self, spec: &SandboxSpec) -> Option<String> {
        let _ = spec;
        None
    }

    /// Replaces the warm pools' shapes and sizes; ready sandboxes of a
    /// pool that shrank or went are discarded.
    fn set_pools(&self, pools: Vec<PoolSpec>) {
        let _ = pools;
    }

    /// The warm pools as they stand.
    fn pools(&self) -> Vec<PoolStatus> {
        Vec::new()
    }

    /// Kills the sandbox and releases every host resource it held.
    async fn destroy(&self, id: &str) -> Result<()>;

    /// Cold stop: memory and device state to disk, VMM gone.
    async fn stop(&self, id: &str) -> Result<()>;

    /// Restores a stopped sandbox. `force` clears the restore-failed breaker.
    /// Starting a running sandbox is a no-op (never a second VMM).
    async fn start(&self, id: &str, force: bool) -> Result<SandboxInfo>;

    /// In-memory status; never wakes anything.
    async fn status(&self, id: &str) -> Result<SandboxInfo>;

    /// Every sandbox the engine knows, in any state (in-memory; wakes
    /// nothing).
    async fn list(&self) -> Vec<SandboxInfo>;

    /// Hot → warm (vCPUs paused, process kept).
    async fn pause(&self, id: &str) -> Result<()>;

    /// Warm → hot.
    async fn resume(&self, id: &str) -> Result<()>;

    /// Whatever the thermal state, make the sandbox hot.
    async fn ensure_hot(&self, id: &str) -> Result<Wake>;

    /// The sandbox's thermal state (cold unless running); never wakes it.
    fn thermal(&self, id: &str) -> Result<Thermal>;

    /// The agent of a hot sandbox (an error otherwise). Counts as activity.
    fn agent(&self, id: &str) -> Result<AgentClient>;

    /// Named checkpoint into `dest` (memory, devices, disks, manifest), written
    /// atomically; the sandbox keeps running (it is resumed if it was hot).
    async fn checkpoint(&self, id: &str, dest: &Path) -> Result<CheckpointManifest>;

    /// The sandbox's root disk copied to `dest` (a new file; written under a
    /// temporary name and renamed), for saving as an image. A running guest
    /// is synced and paused for the copy and resumed after; the sandbox
    /// keeps running. `Unsupported` where the engine has no disk file.
    async fn save_disk(&self, id: &str, dest: &Path) -> Result<()> {
        let _ = (id, dest);
        Err(EngineError::Unsupported {
            engine: "this",
            what: "saving a sandbox's disk as an image".into(),
        })
    }

    /// `src`, a disk attached to sandbox `id` (a volume), copied to `dest`
    /// as [`Engine::save_disk`] copies the root disk: a point-in-time copy
    /// with a running guest synced and paused for it. `Unsupported` where
    /// the engine has no disk files.
    async fn copy_attached(&self, id: &str, src: &Path, dest: &Path) -> Result<()> {
        let _ = (id, src, dest);
        Err(EngineError::Unsupported {
            engine: "this",
            what: "copying an attached disk".into(),
        })
    }

    /// A new sandbox from a checkpoint directory; the source may still run.
    async fn resume_checkpoint(&self, dir: &Path, spec: ResumeSpec) -> Result<SandboxInfo>;

    /// A copy of a running sandbox (memory, processes, disks) as a new sandbox,
    /// while the source keeps running: a checkpoint resumed at once. The copy
    /// keeps the source's egress policy unless `spec` names one.
    async fn fork(&self, id: &str, spec: ResumeSpec) -> Result<SandboxInfo>;

    /// Replaces the sandbox's egress policy, at once if it is running (new
    /// connections and those the guest opened before follow it), and for
    /// every later start; [`vm_state`](Self::vm_state) carries it.
    /// `Unsupported` where the engine cannot make that change.
    async fn set_egress(&self, id: &str, policy: EgressPolicy) -> Result<()>;

    /// State to persist for recovery after a daemon restart.
    fn vm_state(&self, id: &str) -> Option<VmState>;

    /// Re-registers a sandbox from persisted state at daemon start. Running
    /// sandboxes come back cold if their snapshot is valid and current; an error
    /// says why the sandbox cannot be recovered.
    async fn recover(&self, state: VmState) -> Result<SandboxInfo>;

    /// Removes host objects of ours that belong to no known sandbox and to
    /// none in `also_keep` (sandboxes the store still lists although the
    /// engine could not recover them: their disks are kept for the operator).
    async fn cleanup_orphans(&self, also_keep: &[String]) -> Result<Vec<String>>;

    /// Looks for a sandbox whose VM or container died without the engine
    /// noticing; one found dead becomes [`Status::Crashed`]. Engines that
    /// watch their VMMs as they run (the microVM engine) need nothing here.
    async fn probe(&self, id: &str) -> Result<()> {
        let _ = id;
        Ok(())
    }

    /// The last `bytes` of what the guest printed to its console (the
    /// kernel and lohar's boot log on a microVM; the container's output on
    /// Docker). Readable in any state: it is the first thing to look at
    /// when a sandbox will not start.
    async fn console(&self, id: &str, bytes: usize) -> Result<String>;

    /// Lets go of every sandbox. With `keep_running` (honoured where
    /// [`Capabilities::survives_restart`]), VMMs and containers keep
    /// running for the next daemon to adopt; otherwise every VMM is killed
    /// (snapshots are the caller's job before this).
    async fn shutdown(&self, keep_running: bool);
}
