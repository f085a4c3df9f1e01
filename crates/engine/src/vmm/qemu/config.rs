//! The QEMU driver's configuration (the YAML `qemu:` section) and the
//! accelerator choice, apart from the driver so that the server's config
//! parser needs nothing else of it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::super::consts::{
    DEFAULT_KILL_GRACE_MS, DEFAULT_QMP_TIMEOUT_MS, DEFAULT_RESTORE_TIMEOUT_MS,
    DEFAULT_SNAPSHOT_TIMEOUT_MS, DEFAULT_START_TIMEOUT_MS, QEMU_BINARY,
};

/// Hardware acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if `kvm_intel` or `kvm_amd` is loaded and `/dev/kvm` exists,
    /// else TCG.
    #[default]
    Auto,
    /// Hardware virtualisation; the VM fails to start without it.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// `Auto` decided for this host.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto => {
                let kvm_module = ["/sys/module/kvm_intel", "/sys/module/kvm_amd"]
                    .iter()
                    .any(|p| Path::new(p).exists());
                if kvm_module && Path::new("/dev/kvm").exists() {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            other => other,
        }
    }
}

/// Configuration of the QEMU driver (YAML `qemu:` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QemuConfig {
    /// The QEMU binary (looked up in `PATH` without a `/`).
    pub binary: String,
    /// The accelerator (`auto`: KVM where it runs ordinary guests, else TCG).
    pub accel: Accel,
    /// `-cpu` model; default `host` under KVM, `max` under TCG. Snapshots
    /// only restore under the same model.
    pub cpu_model: Option<String>,
    /// Write snapshots with the `mapped-ram` migration capability when QEMU
    /// supports it (sparse, fixed-offset memory pages).
    pub mapped_ram: bool,
    /// Run QEMU under its seccomp sandbox (`-sandbox on,...`).
    pub seccomp: bool,
    /// Extra arguments appended to every QEMU command line.
    pub extra_args: Vec<String>,
    /// Timeout of each QMP command.
    pub qmp_timeout_ms: u64,
    /// How long a starting QEMU may take to open its QMP socket.
    pub start_timeout_ms: u64,
    /// SIGTERM → SIGKILL grace on kill.
    pub kill_grace_ms: u64,
    /// How long writing a snapshot (a migration to a file) may take.
    pub snapshot_timeout_ms: u64,
    /// How long loading a snapshot may take.
    pub restore_timeout_ms: u64,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: QEMU_BINARY.to_string(),
            accel: Accel::Auto,
            cpu_model: None,
            mapped_ram: true,
            seccomp: true,
            extra_args: Vec::new(),
            qmp_timeout_ms: DEFAULT_QMP_TIMEOUT_MS,
            start_timeout_ms: DEFAULT_START_TIMEOUT_MS,
            kill_grace_ms: DEFAULT_KILL_GRACE_MS,
            snapshot_timeout_ms: DEFAULT_SNAPSHOT_TIMEOUT_MS,
            restore_timeout_ms: DEFAULT_RESTORE_TIMEOUT_MS,
        }
    }
}
