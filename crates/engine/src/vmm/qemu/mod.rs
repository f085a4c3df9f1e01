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

mod launch;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::consts::{
    DEFAULT_KILL_GRACE_MS, DEFAULT_QMP_TIMEOUT_MS, DEFAULT_RESTORE_TIMEOUT_MS,
    DEFAULT_SNAPSHOT_TIMEOUT_MS, DEFAULT_START_TIMEOUT_MS, ERROR_TAIL_BYTES, MIGRATE_MAX_BANDWIDTH,
    MIGRATE_POLL, QEMU_BINARY, QEMU_LOG, QEMU_PIDFILE, QEMU_STATE_FILE, SNAPSHOT_FORMAT_VERSION,
    SOCKET_POLL,
};
use super::process::{file_tail, VmmProcess};
use super::spec::path_str;
use super::spec::Shape;
use super::{host_tsc_khz, SnapshotFiles, SnapshotKind, Vm, VmSpec, VmState, VmmDriver, VmmError};
use launch::{command, log_header, qemu_args, qmp_socket_path, LaunchOptions};
use qmp::Qmp;

/// Driver name.
pub const DRIVER_NAME: &str = "qemu";

/// Hardware acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if `kvm_intel` or `kvm_amd` is loaded and `/dev/kvm` exists,
    /// else TCG.
    #[default]
    Auto,
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
    pub snapshot_timeout_ms: u64,
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

/// How long a failed launch waits for QEMU to exit by itself before it is
/// stopped (so the error can say that QEMU died, and why).
const EXIT_SETTLE: Duration = Duration::from_millis(150);

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Boot,
    Restore,
}

impl Phase {
    fn error(self, reason: String, vmm_log: String, console: String) -> VmmError {
        match self {
            Phase::Boot => VmmError::Boot {
                reason,
                vmm_log,
                console,
            },
            Phase::Restore => VmmError::Restore {
                reason,
                vmm_log,
                console,
            },
        }
    }
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

    pub fn config(&self) -> &QemuConfig {
        &self.shared.config
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
        let deadline = Instant::now() + timeout;
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
                None if Instant::now() >= deadline => {
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
    // A QEMU that dies by itself (bad kernel, unreadable stream, …) is
    // usually already gone, or about to be, when the QMP error shows up.
    let self_exit = match proc.exited() {
        Some(e) => Some(e),
        None => proc.wait_timeout(EXIT_SETTLE).await,
    };
    if let Err(e) = proc.terminate(Duration::from_millis(500)).await {
        warn!(error = %e, "stopping a failed QEMU");
    }
    let mut reason = match self_exit {
        Some(e) => {
            let during = match phase {
                Phase::Boot => "start-up",
                Phase::Restore => "restore",
            };
            format!("QEMU exited during {during} ({e})")
        }
        _ => reason,
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

/// One QEMU process. Dropping it SIGKILLs QEMU.
#[derive(Debug)]
pub struct QemuVm {
    id: String,
    console_log: PathBuf,
    dir: PathBuf,
    shape: Shape,
    shared: Arc<Shared>,
    proc: VmmProcess,
    qmp: Qmp,
    /// Serialises snapshot against pause/resume.
    op: tokio::sync::Mutex<()>,
}

/// QEMU run states (`query-status`) in our terms.
fn map_status(s: &str) -> VmState {
    match s {
        "running" => VmState::Running,
        "paused" | "postmigrate" | "prelaunch" | "finish-migrate" | "save-vm" | "suspended"
        | "debug" => VmState::Paused,
        "inmigrate" | "restore-vm" => VmState::Restoring,
        "shutdown" => VmState::Shutdown,
        "internal-error" | "io-error" | "guest-panicked" | "watchdog" => {
            VmState::Failed(s.to_string())
        }
        other => VmState::Other(other.to_string()),
    }
}

/// Run states in which the vCPUs are stopped and a snapshot may be taken.
fn is_paused_status(s: &str) -> bool {
    matches!(s, "paused" | "postmigrate" | "prelaunch" | "suspended")
}

fn allocated_bytes(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks() * 512
}

impl QemuVm {
    /// The raw QMP session (for diagnostics and tests).
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// The sandbox id this VM was started for.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// QEMU's own run state name (`running`, `paused`, `postmigrate`, …).
    pub async fn raw_status(&self) -> Result<String, VmmError> {
        let v = self.cmd("query-status", None).await?;
        v["status"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| VmmError::Protocol(format!("query-status returned {v}")))
    }

    /// A QMP command; once the connection broke because QEMU exited, the
    /// error says so.
    async fn cmd(&self, command: &str, args: Option<Value>) -> Result<Value, VmmError> {
        match self.qmp.execute(command, args).await {
            Err(VmmError::Protocol(m)) if self.qmp.closed().is_some() => {
                match self.proc.wait_timeout(Duration::from_millis(500)).await {
                    Some(exit) => Err(VmmError::Exited(exit)),
                    None => Err(VmmError::Protocol(m)),
                }
            }
            other => other,
        }
    }

    /// Kills QEMU and turns `reason` into a boot or restore error with the
    /// logs attached.
    async fn fail(&self, phase: Phase, reason: String) -> VmmError {
        launch_failure(&self.proc, &self.console_log, phase, reason).await
    }

    /// Sets `mapped-ram`; returns whether it is on. `require`: an error if
    /// it cannot be set as asked (restore must match the file's format).
    async fn set_mapped_ram(&self, want: bool, require: bool) -> Result<bool, VmmError> {
        let caps = json!({"capabilities": [{"capability": "mapped-ram", "state": want}]});
        match self.cmd("migrate-set-capabilities", Some(caps)).await {
            Ok(_) => Ok(want),
            // QEMU < 9 has no mapped-ram: off is then the only format.
            Err(VmmError::Command { desc, .. }) if !want || !require => {
                if want {
                    warn!(vm = %self.id, error = %desc, "mapped-ram unavailable; snapshots are written as a plain stream");
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The `migrate` / `migrate-incoming` target for a file.
    fn file_target(&self, path: &Path) -> Result<Value, VmmError> {
        let p = path_str("snapshot state file", path)?;
        if self.shared.version_tuple >= (9, 0, 0) {
            // The `channels` form takes the path verbatim.
            Ok(json!({"channels": [{"channel-type": "main",
                "addr": {"transport": "file", "filename": p, "offset": 0}}]}))
        } else if p.contains(',') {
            Err(VmmError::InvalidSpec(format!(
                "snapshot path {p:?} must not contain a comma with QEMU < 9"
            )))
        } else {
            Ok(json!({"uri": format!("file:{p}")}))
        }
    }

    /// Polls `query-migrate` until it completes; `Err(reason)` on failure,
    /// timeout or QEMU exit.
    async fn wait_migration(&self, what: &str, timeout: Duration) -> Result<Value, VmmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.proc.exited() {
                return Err(VmmError::Exited(exit));
            }
            let v = self.cmd("query-migrate", None).await?;
            match v["status"].as_str().unwrap_or("none") {
                "completed" => return Ok(v),
                "failed" | "cancelled" => {
                    let desc = v["error-desc"].as_str().unwrap_or("no error description");
                    return Err(VmmError::Snapshot(format!("{what}: {desc}")));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout {
                    what: what.to_string(),
                    timeout,
                });
            }
            tokio::time::sleep(MIGRATE_POLL).await;
        }
    }

    /// Waits until QEMU leaves the transient states around a migration.
    async fn settle_status(&self, transient: &str) -> Result<String, VmmError> {
        let deadline = Instant::now() + ms(self.shared.config.qmp_timeout_ms);
        loop {
            let s = self.raw_status().await?;
            if s != transient || Instant::now() >= deadline {
                return Ok(s);
            }
            tokio::time::sleep(MIGRATE_POLL).await;
        }
    }

    async fn load_snapshot(&self, snap: &SnapshotFiles) -> Result<(), VmmError> {
        let state = snap.state_path();
        self.set_mapped_ram(snap.mapped_ram, true).await?;
        let mut args = self.file_target(&state)?;
        if self.shared.version_tuple >= (9, 1, 0) {
            // Stay alive on a bad stream so the error can be read over QMP.
            args["exit-on-error"] = json!(false);
        }
        self.cmd("migrate-incoming", Some(args)).await?;
        let what = format!("loading {}", state.display());
        self.wait_migration(&what, ms(self.shared.config.restore_timeout_ms))
            .await?;
        let s = self.settle_status("inmigrate").await?;
        if !is_paused_status(&s) && s != "running" {
            return Err(VmmError::Protocol(format!(
                "after loading the snapshot the VM is {s:?}"
            )));
        }
        self.cmd("cont", None).await?;
        let s = self.raw_status().await?;
        if s != "running" {
            return Err(VmmError::Protocol(format!("after cont the VM is {s:?}")));
        }
        Ok(())
    }

    async fn snapshot_full(&self, dir: &Path) -> Result<SnapshotFiles, VmmError> {
        let status = self.raw_status().await?;
        if !is_paused_status(&status) {
            return Err(VmmError::NotPaused {
                op: "snapshot",
                state: status,
            });
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| VmmError::io(format!("create {}", dir.display()), e))?;
        let state = dir.join(QEMU_STATE_FILE);
        remove_if_exists(&state)?;
        let target = self.file_target(&state)?;
        let mapped_ram = self
            .set_mapped_ram(self.shared.config.mapped_ram, false)
            .await?;
        self.cmd(
            "migrate-set-parameters",
            Some(json!({"max-bandwidth": MIGRATE_MAX_BANDWIDTH})),
        )
        .await?;

        let t0 = Instant::now();
        self.cmd("migrate", Some(target)).await?;
        let what = format!("writing {}", state.display());
        let timeout = ms(self.shared.config.snapshot_timeout_ms);
        if let Err(e) = self.wait_migration(&what, timeout).await {
            if matches!(e, VmmError::Timeout { .. }) {
                let _ = self.cmd("migrate_cancel", None).await;
            }
            let _ = std::fs::remove_file(&state);
            return Err(match e {
                VmmError::Snapshot(_) | VmmError::Exited(_) => e,
                other => VmmError::Snapshot(other.to_string()),
            });
        }
        // QEMU marks the migration completed just before it switches the
        // run state to postmigrate; wait for that so a `cont` right after
        // cannot race it.
        self.settle_status("finish-migrate").await?;
        let migrate_ms = crate::vmm::millis(t0.elapsed());

        let (size, alloc) = {
            let state = state.clone();
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || -> Result<(u64, u64), VmmError> {
                let f = std::fs::File::open(&state)
                    .map_err(|e| VmmError::io(format!("open {}", state.display()), e))?;
                f.sync_all()
                    .map_err(|e| VmmError::io(format!("fsync {}", state.display()), e))?;
                let m = f
                    .metadata()
                    .map_err(|e| VmmError::io(format!("stat {}", state.display()), e))?;
                if let Ok(d) = std::fs::File::open(&dir) {
                    let _ = d.sync_all();
                }
                Ok((m.len(), allocated_bytes(&m)))
            })
            .await
            .map_err(|e| VmmError::Snapshot(format!("fsync task: {e}")))??
        };
        if size == 0 {
            return Err(VmmError::Snapshot(format!("{} is empty", state.display())));
        }
        info!(vm = %self.id, migrate_ms, total_ms = crate::vmm::millis(t0.elapsed()),
            size, allocated = alloc, mapped_ram, "snapshot written");
        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            state_file: PathBuf::from(QEMU_STATE_FILE),
            mem_file: PathBuf::from(QEMU_STATE_FILE),
            format_version: SNAPSHOT_FORMAT_VERSION,
            driver: DRIVER_NAME.to_string(),
            vmm_version: self.shared.version.clone(),
            kind: SnapshotKind::Full,
            size_bytes: size,
            allocated_bytes: alloc,
            vcpus: self.shape.vcpus,
            mem_mib: self.shape.mem_mib,
            extra_disks: self.shape.extra_disks,
            has_net: self.shape.has_net,
            mapped_ram,
        })
    }
}

#[async_trait]
impl Vm for QemuVm {
    fn pid(&self) -> Option<u32> {
        self.proc.exited().is_none().then(|| self.proc.pid())
    }

    async fn pause(&self) -> Result<(), VmmError> {
        let _op = self.op.lock().await;
        self.cmd("stop", None).await.map(drop)
    }

    async fn resume(&self) -> Result<(), VmmError> {
        let _op = self.op.lock().await;
        self.cmd("cont", None).await.map(drop)
    }

    async fn state(&self) -> Result<VmState, VmmError> {
        if let Some(exit) = self.proc.exited() {
            return Ok(VmState::Exited(exit));
        }
        match self.raw_status().await {
            Ok(s) => Ok(map_status(&s)),
            Err(VmmError::Exited(exit)) => Ok(VmState::Exited(exit)),
            Err(e) => Err(e),
        }
    }

    async fn snapshot(&self, dir: &Path, kind: SnapshotKind) -> Result<SnapshotFiles, VmmError> {
        if kind != SnapshotKind::Full {
            return Err(VmmError::Unsupported {
                driver: DRIVER_NAME,
                what: "diff snapshots".into(),
            });
        }
        let _op = self.op.lock().await;
        self.snapshot_full(dir).await
    }

    async fn kill(&self) -> Result<(), VmmError> {
        self.proc
            .terminate(ms(self.shared.config.kill_grace_ms))
            .await?;
        // QEMU leaves its socket behind when killed.
        for f in [super::consts::QMP_SOCKET, QEMU_PIDFILE] {
            let _ = remove_if_exists(&self.dir.join(f));
        }
        Ok(())
    }

    crate::vmm::process_vm_methods!();
}

#[cfg(test)]
mod tests {
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
