//! The QEMU driver: `qemu-system-x86_64 -M microvm`, driven over QMP.
//!
//! - **boot**: start QEMU (inside the sandbox's network namespace when the
//!   VM has a NIC, so `-netdev tap,ifname=tap0` opens the namespace's TAP),
//!   wait for its QMP socket, check it runs. QEMU is our child (no
//!   `-daemonize`); its stdout/stderr are appended to `<dir>/qemu.log`.
//! - **pause / resume**: QMP `stop` / `cont`; **state**: `query-status`.
//! - **snapshot** (Full only): migration of the paused VM into the file
//!   `<snapshot dir>/vm.state`, with the `mapped-ram` capability when QEMU
//!   has it (QEMU ≥ 9): every RAM page has a fixed offset in the file and
//!   zero pages are never written, so the file is sparse and its size is
//!   bounded by the guest's RAM. The file is fsynced.
//! - **restore**: the same command line plus `-incoming defer -S`, then
//!   `migrate-set-capabilities` (the snapshot's `mapped-ram` setting),
//!   `migrate-incoming` from the file, wait for completion, `cont`.
//!
//! The accelerator is KVM only where `kvm_intel` or `kvm_amd` is loaded:
//! a `/dev/kvm` backed by anything else (e.g. PVM) does not run ordinary
//! guests, so `auto` picks TCG there.

mod config;
mod launch;
pub mod qmp;
mod vm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::consts::{
    ERROR_TAIL_BYTES, MIGRATE_MAX_BANDWIDTH, MIGRATE_POLL, QEMU_LOG, QEMU_PIDFILE, QEMU_STATE_FILE,
    SNAPSHOT_FORMAT_VERSION, SOCKET_POLL,
};
use super::process::{file_tail, Deadline, Phase, VmmProcess};
use super::spec::path_str;
use super::spec::Shape;
use super::{host_tsc_khz, SnapshotFiles, SnapshotKind, Vm, VmSpec, VmState, VmmDriver, VmmError};
pub use config::{Accel, QemuConfig};
use launch::{command, log_header, qemu_args, qmp_socket_path, LaunchOptions};
use qmp::Qmp;
pub use vm::QemuVm;

/// Driver name.
pub const DRIVER_NAME: &str = "qemu";

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// What every VM of a driver shares.
#[derive(Debug)]
struct Shared {
    config: QemuConfig,
    accel: Accel,
    cpu_model: String,
    version: String,
    version_tuple: (u32, u32, u32),
}

/// The QEMU [`VmmDriver`].
#[derive(Debug, Clone)]
pub struct QemuDriver {
    shared: Arc<Shared>,
}

/// `"QEMU emulator version 10.0.2 (Debian …)"` → (10, 0, 2).
fn parse_version(out: &str) -> Option<(u32, u32, u32)> {
    let line = out.lines().find(|l| l.contains("version"))?;
    let v = line.split("version").nth(1)?.split_whitespace().next()?;
    let mut it = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    });
    let major = it.next()??;
    let minor = it.next().flatten().unwrap_or(0);
    let micro = it.next().flatten().unwrap_or(0);
    Some((major, minor, micro))
}

impl QemuDriver {
    /// Checks the binary (`--version`) and resolves the accelerator.
    /// Blocking (runs QEMU once); call at start-up.
    pub fn new(config: QemuConfig) -> Result<Self, VmmError> {
        let unavailable = |reason: String| VmmError::Unavailable {
            binary: config.binary.clone(),
            reason,
        };
        let out = std::process::Command::new(&config.binary)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| unavailable(e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(unavailable(format!(
                "--version: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let version_tuple = parse_version(&text)
            .ok_or_else(|| unavailable(format!("unrecognised --version output {text:?}")))?;
        let (a, b, c) = version_tuple;
        let accel = config.accel.resolve();
        let cpu_model = config.cpu_model.clone().unwrap_or_else(|| {
            match accel {
                Accel::Kvm => "host",
                _ => "max",
            }
            .to_string()
        });
        info!(binary = %config.binary, version = %format!("{a}.{b}.{c}"), ?accel, %cpu_model, "QEMU driver ready");
        Ok(QemuDriver {
            shared: Arc::new(Shared {
                accel,
                cpu_model,
                version: format!("QEMU {a}.{b}.{c}"),
                version_tuple,
                config,
            }),
        })
    }

    /// The accelerator VMs get (never `Auto`).
    pub fn accel(&self) -> Accel {
        self.shared.accel
    }

    /// [`VmmDriver::boot`] with the concrete type.
    pub async fn boot_vm(&self, spec: &VmSpec) -> Result<QemuVm, VmmError> {
        let t0 = Instant::now();
        let vm = self.launch(spec, Phase::Boot).await?;
        info!(vm = %spec.id, pid = vm.proc.pid(), ms = crate::vmm::millis(t0.elapsed()), "QEMU started");
        Ok(vm)
    }

    /// [`VmmDriver::restore`] with the concrete type.
    pub async fn restore_vm(
        &self,
        spec: &VmSpec,
        snap: &SnapshotFiles,
    ) -> Result<QemuVm, VmmError> {
        let t0 = Instant::now();
        self.check_snapshot(spec, snap)?;
        let vm = self.launch(spec, Phase::Restore).await?;
        match vm.load_snapshot(snap).await {
            Ok(()) => {
                info!(vm = %spec.id, pid = vm.proc.pid(), ms = crate::vmm::millis(t0.elapsed()), "QEMU restored");
                Ok(vm)
            }
            Err(e) => {
                let reason = match e {
                    // wait_migration's wording is snapshot-neutral.
                    VmmError::Snapshot(m) => m,
                    other => other.to_string(),
                };
                warn!(vm = %spec.id, error = %reason, "restore failed");
                Err(vm.fail(Phase::Restore, reason).await)
            }
        }
    }

    fn check_snapshot(&self, spec: &VmSpec, snap: &SnapshotFiles) -> Result<(), VmmError> {
        let bad = |m: String| Err(VmmError::InvalidSnapshot(m));
        snap.check_common(DRIVER_NAME, spec)?;
        if snap.kind != SnapshotKind::Full {
            return bad(format!(
                "{:?} snapshots are not supported by QEMU",
                snap.kind
            ));
        }
        path_str("snapshot state file", &snap.state_path())?;
        if snap.vmm_version != self.shared.version {
            warn!(snapshot = %snap.vmm_version, running = %self.shared.version,
                "restoring a snapshot written by another QEMU version (microvm is not a versioned machine type)");
        }
        Ok(())
    }

    /// The handle on a QEMU process of `spec`, its QMP session open.
    fn vm(&self, spec: &VmSpec, proc: VmmProcess, qmp: Qmp) -> QemuVm {
        QemuVm {
            id: spec.id.clone(),
            console_log: spec.console_log.clone(),
            dir: spec.dir.clone(),
            shape: Shape::of(spec),
            shared: self.shared.clone(),
            proc,
            qmp,
            op: tokio::sync::Mutex::new(()),
        }
    }

    /// Reconnects to the QMP socket of a QEMU that an earlier daemon
    /// process started (QEMU's QMP server takes a new client once the old
    /// one is gone) and checks that it answers.
    pub async fn adopt_vm(&self, spec: &VmSpec, pid: u32) -> Result<QemuVm, VmmError> {
        let sh = &self.shared;
        let qmp_path = qmp_socket_path(&spec.dir)?;
        let stream = UnixStream::connect(&qmp_path)
            .await
            .map_err(|e| VmmError::io(format!("connect {}", qmp_path.display()), e))?;
        let qmp = Qmp::handshake(stream, ms(sh.config.qmp_timeout_ms)).await?;
        let proc = VmmProcess::adopt(pid, &sh.config.binary, &spec.dir.join(QEMU_LOG))?;
        let vm = self.vm(spec, proc, qmp);
        let status = vm.raw_status().await;
        match status {
            Ok(s) => {
                info!(vm = %spec.id, pid, status = %s, "adopted a running QEMU");
                Ok(vm)
            }
            Err(e) => {
                // Not a VM we can drive: leave the decision (kill it) to
                // the caller, who knows what else to try.
                vm.release();
                Err(e)
            }
        }
    }

    async fn launch(&self, spec: &VmSpec, phase: Phase) -> Result<QemuVm, VmmError> {
        spec.validate()?;
        let sh = &self.shared;
        let qmp_path = qmp_socket_path(&spec.dir)?;
        tokio::fs::create_dir_all(&spec.dir)
            .await
            .map_err(|e| VmmError::io(format!("create {}", spec.dir.display()), e))?;
        // Never a second VMM for the same VM: a live socket means one runs.
        if qmp_path.exists() {
            if UnixStream::connect(&qmp_path).await.is_ok() {
                return Err(VmmError::InvalidSpec(format!(
                    "a VMM is already serving {}",
                    qmp_path.display()
                )));
            }
            remove_if_exists(&qmp_path)?;
        }
        remove_if_exists(&spec.dir.join(QEMU_PIDFILE))?;
        if phase == Phase::Boot {
            std::fs::File::create(&spec.console_log)
                .map_err(|e| VmmError::io(format!("create {}", spec.console_log.display()), e))?;
        }
        let tsc_khz = match host_tsc_khz() {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(error = %e, "booting without tsc_early_khz (TCG guests may hang calibrating the TSC)");
                None
            }
        };
        let opts = LaunchOptions {
            accel: sh.accel,
            cpu_model: sh.cpu_model.clone(),
            seccomp: sh.config.seccomp,
            incoming: phase == Phase::Restore,
            tsc_khz,
            extra_args: sh.config.extra_args.clone(),
        };
        let args = qemu_args(spec, &opts)?;
        let cmd = command(&sh.config.binary, &args, spec)?;
        let log = spec.dir.join(QEMU_LOG);
        log_header(&log, &sh.config.binary, &args);
        debug!(vm = %spec.id, ?args, "starting QEMU");
        let proc = VmmProcess::spawn(cmd, &sh.config.binary, &log)?;

        // Wait for the QMP socket, failing at once if QEMU exits.
        let timeout = ms(sh.config.start_timeout_ms);
        let deadline = Deadline::after(timeout);
        let qmp_timeout = ms(sh.config.qmp_timeout_ms);
        let qmp = loop {
            if proc.exited().is_some() {
                let reason = "QEMU exited".to_string();
                return Err(launch_failure(&proc, &spec.console_log, phase, reason).await);
            }
            let attempt = match UnixStream::connect(&qmp_path).await {
                Ok(stream) => Some(Qmp::handshake(stream, qmp_timeout).await),
                Err(_) => None,
            };
            match attempt {
                Some(Ok(q)) => break Ok(q),
                Some(Err(e)) => break Err(format!("QMP handshake: {e}")),
                None if deadline.passed() => {
                    break Err(format!("QMP socket did not come up within {timeout:?}"))
                }
                None => tokio::time::sleep(SOCKET_POLL).await,
            }
        };
        let qmp = match qmp {
            Ok(q) => q,
            Err(reason) => {
                return Err(launch_failure(&proc, &spec.console_log, phase, reason).await)
            }
        };
        let vm = self.vm(spec, proc, qmp);
        if phase == Phase::Boot {
            match vm.raw_status().await {
                Ok(s) if s == "running" => {}
                Ok(s) => {
                    let reason = format!("QEMU started but the VM is {s:?}");
                    return Err(vm.fail(phase, reason).await);
                }
                Err(e) => {
                    let reason = format!("query-status: {e}");
                    return Err(vm.fail(phase, reason).await);
                }
            }
        }
        Ok(vm)
    }
}

/// Stops a QEMU that failed to boot or restore and builds the error: when
/// QEMU exited by itself the reason says so (the QMP error that revealed
/// it is noise), and QEMU's last error message is appended to the reason
/// so the first line of the error already says what went wrong.
async fn launch_failure(
    proc: &VmmProcess,
    console: &Path,
    phase: Phase,
    reason: String,
) -> VmmError {
    // A QEMU that died by itself (bad kernel, unreadable stream, …) is
    // what to report, not the QMP error that revealed it.
    let mut reason = match proc.stop_failed_launch("QEMU").await {
        Some(exit) => phase.exited("QEMU", exit),
        None => reason,
    };
    let vmm_log = proc.log_tail(ERROR_TAIL_BYTES);
    if let Some(line) = last_qemu_error(&vmm_log) {
        if !reason.contains(line) {
            reason.push_str(&format!(" [QEMU: {line}]"));
        }
    }
    phase.error(reason, vmm_log, file_tail(console, ERROR_TAIL_BYTES, 0))
}

/// The last error QEMU printed (without `-msg timestamp=on`'s timestamp and
/// the program-name prefix), skipping our launch header and the message
/// about our own SIGTERM.
fn last_qemu_error(log: &str) -> Option<&str> {
    log.lines().rev().find_map(|line| {
        let mut l = line.trim();
        // "2026-11-24T21:01:40.480545Z qemu-system-x86_64: ..."
        if let Some((ts, rest)) = l.split_once(' ') {
            if ts.len() > 20 && ts.ends_with('Z') && ts.as_bytes()[0].is_ascii_digit() {
                l = rest.trim_start();
            }
        }
        if l.is_empty() || l.starts_with('#') || l.contains("terminating on signal") {
            return None;
        }
        match l.split_once(": ") {
            Some((prog, msg)) if prog.starts_with("qemu") && !msg.trim().is_empty() => {
                Some(msg.trim())
            }
            _ => Some(l),
        }
    })
}

fn remove_if_exists(p: &Path) -> Result<(), VmmError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VmmError::io(format!("remove {}", p.display()), e)),
    }
}

#[async_trait]
impl VmmDriver for QemuDriver {
    fn name(&self) -> &'static str {
        DRIVER_NAME
    }

    fn version(&self) -> String {
        self.shared.version.clone()
    }

    /// QEMU has no incremental memory snapshot to a file: every `migrate`
    /// writes all of guest RAM again (dirty-page tracking only lives
    /// inside one migration), and loading needs one complete stream. A
    /// "diff" would have to be built outside QEMU, which is exactly the kind
    /// of unverified layering docs/engine.md ("Snapshots") rules out.
    fn supports_diff_snapshots(&self) -> bool {
        false
    }

    async fn boot(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.boot_vm(spec).await?))
    }

    fn supports_adopt(&self) -> bool {
        true
    }

    async fn adopt(&self, spec: &VmSpec, pid: u32) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.adopt_vm(spec, pid).await?))
    }

    async fn restore(&self, spec: &VmSpec, snap: &SnapshotFiles) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.restore_vm(spec, snap).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::vm::{is_paused_status, map_status};
    use super::*;

    #[test]
    fn version() {
        assert_eq!(
            parse_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright"
            ),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 9.1.0\n"),
            Some((9, 1, 0))
        );
        assert_eq!(
            parse_version("QEMU emulator version 8.2\n"),
            Some((8, 2, 0))
        );
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn qemu_error_line() {
        let log = "2026-11-24T21:01:40.480545Z qemu-system-x86_64: Not a migration stream\n\
                   2026-11-24T21:01:40.480820Z qemu-system-x86_64: terminating on signal 15 from pid 1\n";
        assert_eq!(last_qemu_error(log), Some("Not a migration stream"));
        assert_eq!(
            last_qemu_error("qemu: invalid kernel header\n"),
            Some("invalid kernel header")
        );
        assert_eq!(last_qemu_error("# bhatti: launch ...\n"), None);
        assert_eq!(last_qemu_error(""), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(map_status("running"), VmState::Running);
        assert_eq!(map_status("postmigrate"), VmState::Paused);
        assert_eq!(map_status("inmigrate"), VmState::Restoring);
        assert_eq!(
            map_status("guest-panicked"),
            VmState::Failed("guest-panicked".into())
        );
        assert!(is_paused_status("postmigrate"));
        assert!(!is_paused_status("running"));
    }

    #[test]
    fn config_yaml_shape() {
        let c: QemuConfig =
            serde_json::from_str(r#"{"accel": "tcg", "mapped_ram": false}"#).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(!c.mapped_ram);
        assert_eq!(c.binary, "qemu-system-x86_64");
        assert_eq!(Accel::Tcg.resolve(), Accel::Tcg);
        assert_ne!(Accel::Auto.resolve(), Accel::Auto);
    }

    #[test]
    fn missing_binary() {
        let e = QemuDriver::new(QemuConfig {
            binary: "/nonexistent/qemu".into(),
            ..QemuConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, VmmError::Unavailable { .. }), "{e}");
    }
}
