//! VMM drivers: the part of the engine that starts, pauses, snapshots and
//! kills one microVM process.
//!
//! # What a driver is
//!
//! A *VMM driver* ([`VmmDriver`]) knows how to turn a [`VmSpec`] (kernel,
//! command line, disks, memory, vCPUs, optional TAP in a network namespace,
//! console log) into a running virtual machine monitor process, and how to
//! bring one back from a snapshot. What it hands back is a [`Vm`]: a handle
//! on that one process with the handful of operations the engine needs
//! (pause, resume, state, snapshot, kill). The engine holds drivers as
//! `Arc<dyn VmmDriver>` and VMs as `Box<dyn Vm>`.
//!
//! Two drivers (docs/engine.md, "Engines and VMM drivers"): [`qemu`]
//! (`qemu-system-x86_64 -M microvm` over QMP, KVM or TCG) and
//! [`firecracker`] (REST over its API socket, optionally jailed).
//!
//! # Why the trait is small
//!
//! Everything that is the same for every VMM lives in the engine, not here:
//! the guest kernel and rootfs artifacts, copy-on-write disks, the config
//! drive, networking (the [`net`](crate::net) module creates the namespace
//! and `tap0` before a driver runs), the agent connection and boot watchdog,
//! snapshot manifests and atomic snapshot directories, thermal policy and
//! recovery. A driver only translates a handful of lifecycle verbs into its
//! VMM's API, so a second driver costs a few hundred lines and the engine's
//! behaviour cannot drift between them. Driver-specific knobs (QEMU's
//! accelerator, Firecracker's jailer, …) belong in the driver's own config,
//! never in the trait.
//!
//! # Contract
//!
//! - `boot` returns once the VMM runs the guest (it fails fast, with the
//!   VMM's stderr, if the VMM exits during start-up); waiting for the guest
//!   agent is the caller's job.
//! - `snapshot` needs a paused VM and leaves it paused; the caller syncs the
//!   guest and copies the disks. `restore` needs the disks exactly as they
//!   were at snapshot time and returns a *running* VM.
//! - Dropping a [`Vm`] without [`Vm::kill`] SIGKILLs its VMM process, so a
//!   leaked handle never leaks a VM, unless [`Vm::release`] was called:
//!   then the VMM outlives the daemon and the next one
//!   [adopts](VmmDriver::adopt) it.

mod consts;

/// The [`Vm`] methods that only read a driver's VMM process (`self.proc`)
/// and console file (`self.console_log`): the same in every driver, so
/// written once and expanded inside each driver's `impl Vm`.
macro_rules! process_vm_methods {
    () => {
        fn pid(&self) -> Option<u32> {
            self.proc.exited().is_none().then(|| self.proc.pid())
        }

        fn exit_watch(&self) -> tokio::sync::watch::Receiver<Option<$crate::vmm::VmExit>> {
            self.proc.exit_watch()
        }

        fn release(&self) {
            self.proc.release();
        }

        fn console_tail(&self, bytes: usize) -> String {
            $crate::vmm::process::file_tail(&self.console_log, bytes, 0)
        }

        fn vmm_log_tail(&self, bytes: usize) -> String {
            self.proc.log_tail(bytes)
        }
    };
}
pub(crate) use process_vm_methods;

mod error;
pub mod firecracker;
mod process;
pub mod qemu;
mod spec;
mod tsc;

use std::fmt;
use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use consts::{SNAPSHOT_FORMAT_VERSION, UNIX_PATH_MAX};
pub use error::VmmError;
pub(crate) use process::{file_tail, millis};
pub use spec::{Disk, NetAttach, SnapshotFiles, VmSpec};
pub use tsc::host_tsc_khz;

/// A VMM implementation (one per engine, shared by all VMs).
#[async_trait]
pub trait VmmDriver: Send + Sync {
    /// Short name: `"qemu"`, `"firecracker"`.
    fn name(&self) -> &'static str;
    /// The VMM's own version, e.g. `"QEMU 10.0.2"`; recorded in snapshots.
    fn version(&self) -> String;
    /// Whether [`SnapshotKind::Diff`] works.
    fn supports_diff_snapshots(&self) -> bool;
    /// Applies the Diff snapshot `diff` onto the Full snapshot `base` in
    /// place, leaving `base` a Full snapshot of the diff's state. Blocking.
    fn apply_diff(
        &self,
        base: &SnapshotFiles,
        diff: &SnapshotFiles,
    ) -> Result<SnapshotFiles, VmmError> {
        let _ = (base, diff);
        Err(VmmError::Unsupported {
            driver: self.name(),
            what: "diff snapshots".into(),
        })
    }
    /// Starts a VM from scratch.
    async fn boot(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError>;
    /// Whether [`VmmDriver::adopt`] works: only then may a daemon leave its
    /// VMMs running when it stops.
    fn supports_adopt(&self) -> bool {
        false
    }
    /// Takes over the VMM `pid` that an earlier daemon process started for
    /// `spec` and left running: reconnects its control socket. The VM keeps
    /// its state (running or paused).
    async fn adopt(&self, spec: &VmSpec, pid: u32) -> Result<Box<dyn Vm>, VmmError> {
        let _ = (spec, pid);
        Err(VmmError::Unsupported {
            driver: self.name(),
            what: "adopting a running VMM".into(),
        })
    }
    /// Starts a VM from a snapshot and resumes it. `spec` must describe the
    /// same machine (memory, vCPUs, disk count and order) as at snapshot
    /// time; paths, the network namespace and the console log may differ.
    async fn restore(&self, spec: &VmSpec, snap: &SnapshotFiles) -> Result<Box<dyn Vm>, VmmError>;
}

/// One running VMM process.
#[async_trait]
pub trait Vm: Send + Sync {
    /// The VMM's process id while it has not been reaped.
    fn pid(&self) -> Option<u32>;
    /// Stops the vCPUs. Idempotent.
    async fn pause(&self) -> Result<(), VmmError>;
    /// Restarts the vCPUs. Idempotent; also valid right after a snapshot.
    async fn resume(&self) -> Result<(), VmmError>;
    /// What the VMM says the VM is doing ([`VmState::Exited`] once the
    /// process is gone).
    async fn state(&self) -> Result<VmState, VmmError>;
    /// Writes a snapshot into `dir` (created if missing; files of an older
    /// snapshot there are replaced). The VM must be paused and stays paused.
    async fn snapshot(&self, dir: &Path, kind: SnapshotKind) -> Result<SnapshotFiles, VmmError>;
    /// SIGTERM, then SIGKILL after a grace period; returns once the process
    /// is reaped. Idempotent.
    async fn kill(&self) -> Result<(), VmmError>;
    /// Waits until the VMM process has exited (for any reason).
    async fn wait_exit(&self) -> VmExit {
        process::wait_for_exit(self.exit_watch()).await
    }
    /// Turns `Some` once the VMM process has exited: the engine watches it
    /// to notice a VM that dies under a sandbox.
    fn exit_watch(&self) -> tokio::sync::watch::Receiver<Option<VmExit>>;
    /// Leaves the VMM running when this handle is dropped (the daemon stops
    /// for an upgrade; the next one adopts it).
    fn release(&self);
    /// The last `bytes` bytes of the guest console log (lossy UTF-8).
    fn console_tail(&self, bytes: usize) -> String;
    /// The last `bytes` bytes the VMM wrote to stderr since this process
    /// started (lossy UTF-8).
    fn vmm_log_tail(&self, bytes: usize) -> String;
    /// Sets the memory balloon's target size: `mib` MiB taken away from
    /// the guest (0 deflates it). Drivers without a balloon return
    /// [`VmmError::Unsupported`].
    async fn set_balloon(&self, mib: u32) -> Result<(), VmmError> {
        let _ = mib;
        Err(VmmError::Unsupported {
            driver: "current",
            what: "a memory balloon".into(),
        })
    }
}

/// What a VM is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum VmState {
    /// vCPUs run.
    Running,
    /// vCPUs stopped (paused, or finished writing a snapshot).
    Paused,
    /// Loading a snapshot.
    Restoring,
    /// The guest shut down; the VMM process is still alive.
    Shutdown,
    /// The guest or the VMM hit a fatal error (e.g. guest panic, I/O error,
    /// emulation failure); the VMM's own status name.
    Failed(String),
    /// The VMM process is gone.
    Exited(VmExit),
    /// Any other VMM-specific status.
    Other(String),
}

/// Snapshot flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// All guest memory and device state.
    Full,
    /// Only memory dirtied since the previous snapshot, on top of it.
    Diff,
}

/// How a VMM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExit {
    /// Exit status, if it exited normally.
    pub code: Option<i32>,
    /// Terminating signal, if it was killed.
    pub signal: Option<i32>,
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit status {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => write!(f, "unknown exit status"),
        }
    }
}
