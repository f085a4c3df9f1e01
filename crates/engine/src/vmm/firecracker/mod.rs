//! The Firecracker driver: `firecracker --api-sock <dir>/fc.sock`, driven
//! over its REST API (HTTP/1.1 on a Unix socket, [`api`]).
//!
//! Layout, as `qemu/` is split: this file holds the driver (the work
//! directory, launching the process, the console pump), `config` its
//! settings, `requests` the API calls as pure data, `vm` a running VM,
//! `api` the REST client and bodies, `jailer` and `diff` their parts.
//!
//! - **boot**: prepare the VM directory (below), start Firecracker (inside
//!   the sandbox's network namespace when the VM has a NIC, so
//!   `host_dev_name = tap0` opens the namespace's TAP), wait for the API
//!   socket while watching for early death, then `PUT` logger, metrics,
//!   serial, boot source, machine config (`track_dirty_pages: true`, so
//!   Diff snapshots work), drives (`vda` = root, then the extra disks in
//!   order), the NIC, vsock, entropy and balloon, and `InstanceStart`
//!   ([`boot_requests`]). Firecracker's stderr (its log: the logger has no
//!   `log_path`) is appended to `<dir>/firecracker.log`; its tail is
//!   attached to boot and restore errors, whose reason carries the API's
//!   `fault_message`.
//! - **pause / resume**: `PATCH /vm {"state": "Paused" | "Resumed"}`;
//!   **state**: `GET /`.
//! - **snapshot**: `PUT /snapshot/create` (Full or Diff) into
//!   `<snapshot dir>/vm.snap` + `mem.snap` (Full) or `mem.diff` (Diff).
//!   A Full memory file is exactly the guest's RAM size; a Diff one is a
//!   sparse file of the same size holding only the pages dirtied since the
//!   previous snapshot (see [`diff`] for how the engine layers them).
//! - **restore**: a fresh Firecracker, logger/metrics/serial, then
//!   `PUT /snapshot/load` with the File memory backend, `resume_vm`,
//!   `track_dirty_pages`, the TAP in `network_overrides` and the vsock
//!   socket in `vsock_override`. Only Full snapshots are restored: apply
//!   Diffs onto their base first ([`diff::apply_diff`]).
//!
//! # Paths: relative to the VMM's working directory
//!
//! Firecracker bakes the paths of the kernel, the disks and the vsock
//! socket into `vm.snap`. So the driver gives it short *relative* names
//! (`fc.kernel`, `fc.root`, `fc.disk1`, …, `v.sock`) and runs it with the
//! VM directory as its working directory, where those names are symlinks
//! to the spec's files. A restore recreates the links for the new spec, so
//! a snapshot restores into another directory, with other disk files,
//! without Firecracker's drive paths getting in the way. In jailer mode
//! ([`jailer`]) the same names are hard links inside the chroot, whose root
//! is Firecracker's working directory.
//!
//! The guest console goes to a FIFO (`fc.console`, `PUT /serial`) that a
//! task copies into [`VmSpec::console_log`]: Firecracker writes its serial
//! output file from offset 0, so a restore would otherwise overwrite the
//! boot's console instead of appending to it.
//!
//! # Agent transport
//!
//! The driver configures a vsock device (`guest_cid` from the config, the
//! host side a Unix socket `<dir>/v.sock`, see
//! [`FirecrackerVm::vsock_uds_path`]); `bhatti-agent-client`'s hybrid vsock
//! transport (`Transport::VsockUds`) can talk to it. The engine
//! nevertheless reaches the agent over TCP on the sandbox network, as with
//! QEMU: the reference (on Firecracker 1.14) found that after a snapshot
//! restore the guest's vsock listeners never receive connections, while
//! virtio-net survives (docs/engine.md, "Reaching the agent").
//! Whether that still holds for the Firecracker this driver targets needs
//! a booting guest with an agent, which the machines this project is built
//! on cannot run (their KVM does not boot ordinary guests, docs/engine.md,
//! "The machines this project is built on"), so it has not been measured;
//! until it is, TCP stays the transport.
//!
//! # Jailer mode
//!
//! See [`jailer`]. The jailer copies the Firecracker binary into the
//! chroot, which has no shared libraries: it needs a statically linked
//! Firecracker (as the released builds are).
//!
//! # Rate limiters
//!
//! [`RateLimits`] (all off by default) become `rate_limiter` on every
//! drive (bytes/s and ops/s) and `rx_rate_limiter`/`tx_rate_limiter` on
//! the NIC, with a refill time of one second.

mod config;
pub mod diff;
pub mod jailer;
mod requests;
pub mod rest;
#[cfg(test)]
mod schema;
mod vm;

pub use config::{FirecrackerConfig, RateLimits};
use requests::drive_link;
pub use requests::{boot_requests, restore_requests, snapshot_request};
pub use vm::FirecrackerVm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::consts::{ERROR_TAIL_BYTES, SNAPSHOT_FORMAT_VERSION, SOCKET_POLL};
use super::process::{file_tail, Deadline, Phase, VmmProcess};
use super::spec::Shape;
use super::spec::{checked_socket, path_str};
use super::{SnapshotFiles, SnapshotKind, Vm, VmSpec, VmState, VmmDriver, VmmError};
pub use diff::{apply_diff, merge_diff, MergeStats};
pub use jailer::JailerConfig;
use rest::{
    ActionType, ApiClient, ApiRequest, BackendType, Balloon, BootSource, Drive, Entropy, HugePages,
    InstanceInfo, LogLevel, Logger, MachineConfig, MemoryBackend, Metrics, NetworkInterface,
    NetworkOverride, RateLimiter, Serial, SnapshotCreate, SnapshotLoad, SnapshotType, TokenBucket,
    VmRunState, Vsock, VsockOverride,
};

/// Driver name.
pub const DRIVER_NAME: &str = "firecracker";
/// Default Firecracker binary (looked up in `PATH`).
pub const FIRECRACKER_BINARY: &str = "firecracker";

/// Names inside the VMM's working directory (the VM dir, or the jail's
/// root).
pub const API_SOCKET: &str = "fc.sock";
/// The vsock device's host-side Unix socket.
const VSOCK_SOCKET: &str = "v.sock";
const KERNEL_LINK: &str = "fc.kernel";
const CONSOLE_FIFO: &str = "fc.console";
const METRICS_FILE: &str = "fc.metrics";
/// Jail only: where snapshots are written before they move out.
const JAIL_SNAP_DIR: &str = "fc.snap";
const JAIL_STATE: &str = "vm.snap";
const JAIL_MEM: &str = "mem.snap";
/// Firecracker's stderr, appended by every launch (in the VM dir).
pub const FIRECRACKER_LOG: &str = "firecracker.log";
/// A snapshot's VM and device state file.
pub const STATE_FILE: &str = "vm.snap";
/// A Full snapshot's memory file (exactly the guest's RAM size).
pub const MEM_FILE: &str = "mem.snap";
/// A Diff snapshot's memory file (sparse, guest RAM size, only the dirtied
/// pages written).
pub const DIFF_MEM_FILE: &str = "mem.diff";
/// The guest NIC's id.
const IFACE_ID: &str = "eth0";
/// Token-bucket refill time of the rate limiters.
const REFILL_MS: u64 = 1000;

const DEFAULT_API_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_START_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_KILL_GRACE_MS: u64 = 3_000;
const DEFAULT_SNAPSHOT_TIMEOUT_MS: u64 = 120_000;
const DEFAULT_RESTORE_TIMEOUT_MS: u64 = 120_000;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Where a VM's Firecracker lives.
#[derive(Debug, Clone)]
struct Layout {
    /// Firecracker's working directory: the VM dir, or the jail root.
    work: PathBuf,
    /// The API socket as the host sees it.
    api_sock: PathBuf,
    /// `Some` in jailer mode.
    jail: Option<JailerConfig>,
}

impl Layout {
    fn new(spec: &VmSpec, shared: &Shared) -> Result<Layout, VmmError> {
        let (work, jail) = match &shared.config.jailer {
            Some(j) => (
                jailer::chroot_root(j, &shared.exec_file, &spec.id),
                Some(j.clone()),
            ),
            None => (spec.dir.clone(), None),
        };
        let api_sock = checked_socket(work.join(API_SOCKET))?;
        if shared.config.vsock {
            checked_socket(work.join(VSOCK_SOCKET))?;
        }
        path_str("VMM working directory", &work)?;
        Ok(Layout {
            work,
            api_sock,
            jail,
        })
    }
}

/// What every VM of a driver shares.
#[derive(Debug)]
struct Shared {
    config: FirecrackerConfig,
    /// The Firecracker binary, canonical (the jailer needs a path).
    exec_file: PathBuf,
    version: String,
}

/// The Firecracker [`VmmDriver`].
#[derive(Debug, Clone)]
pub struct FirecrackerDriver {
    shared: Arc<Shared>,
}

/// `"Firecracker v1.17.0-dev\n\n…"` → `"Firecracker v1.17.0-dev"`.
fn parse_version(out: &str) -> Option<String> {
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("Firecracker v"))
        .map(str::to_string)
}

/// Runs `binary --version`; the first line of its output.
fn run_version(binary: &str) -> Result<String, VmmError> {
    let unavailable = |reason: String| VmmError::Unavailable {
        binary: binary.to_string(),
        reason,
    };
    let out = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| unavailable(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(unavailable(format!(
            "--version: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(text)
}

/// Resolves a binary name through `PATH` (a name with `/` is taken as is).
fn which(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        return std::fs::canonicalize(binary).ok();
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::canonicalize(p).ok())
    })
}

impl FirecrackerDriver {
    /// Checks the binary (`--version`; the jailer's too in jailer mode).
    /// Blocking; call at start-up.
    pub fn new(config: FirecrackerConfig) -> Result<Self, VmmError> {
        let text = run_version(&config.binary)?;
        let version = parse_version(&text).ok_or_else(|| VmmError::Unavailable {
            binary: config.binary.clone(),
            reason: format!("unrecognised --version output {text:?}"),
        })?;
        let exec_file = which(&config.binary).ok_or_else(|| VmmError::Unavailable {
            binary: config.binary.clone(),
            reason: "not found".into(),
        })?;
        if let Some(j) = &config.jailer {
            run_version(&j.binary)?;
        }
        info!(binary = %exec_file.display(), %version, jailer = config.jailer.is_some(), "Firecracker driver ready");
        Ok(FirecrackerDriver {
            shared: Arc::new(Shared {
                config,
                exec_file,
                version,
            }),
        })
    }

    /// [`VmmDriver::boot`] with the concrete type.
    pub async fn boot_vm(&self, spec: &VmSpec) -> Result<FirecrackerVm, VmmError> {
        let t0 = Instant::now();
        let vm = self.launch(spec, None).await?;
        let requests = boot_requests(spec, &self.shared.config);
        if let Err(e) = vm.run_all(&requests).await {
            return Err(vm.fail(Phase::Boot, e.to_string()).await);
        }
        if let Err(e) = vm.expect_state("Running").await {
            return Err(vm.fail(Phase::Boot, e.to_string()).await);
        }
        info!(vm = %spec.id, pid = vm.proc.pid(), ms = crate::vmm::millis(t0.elapsed()), "Firecracker started");
        Ok(vm)
    }

    /// [`VmmDriver::restore`] with the concrete type.
    pub async fn restore_vm(
        &self,
        spec: &VmSpec,
        snap: &SnapshotFiles,
    ) -> Result<FirecrackerVm, VmmError> {
        let t0 = Instant::now();
        self.check_snapshot(spec, snap)?;
        let vm = self.launch(spec, Some(snap)).await?;
        let (state, mem) = match &vm.layout.jail {
            Some(_) => (JAIL_STATE.to_string(), JAIL_MEM.to_string()),
            None => (
                path_str("snapshot state file", &snap.state_path())?.to_string(),
                path_str("snapshot memory file", &snap.mem_path())?.to_string(),
            ),
        };
        let requests = restore_requests(spec, &self.shared.config, &state, &mem);
        let res = async {
            // `restore_requests` ends with the snapshot load.
            let Some((load, prelude)) = requests.split_last() else {
                return Err(VmmError::InvalidSpec("no snapshot load request".into()));
            };
            vm.run_all(prelude).await?;
            vm.api
                .clone()
                .with_timeout(ms(self.shared.config.restore_timeout_ms))
                .send(load)
                .await?;
            vm.expect_state("Running").await
        }
        .await;
        if let Err(e) = res {
            warn!(vm = %spec.id, error = %e, "restore failed");
            return Err(vm.fail(Phase::Restore, e.to_string()).await);
        }
        info!(vm = %spec.id, pid = vm.proc.pid(), ms = crate::vmm::millis(t0.elapsed()), "Firecracker restored");
        Ok(vm)
    }

    fn check_snapshot(&self, spec: &VmSpec, snap: &SnapshotFiles) -> Result<(), VmmError> {
        let bad = |m: String| Err(VmmError::InvalidSnapshot(m));
        snap.check_common(DRIVER_NAME, spec)?;
        if snap.kind != SnapshotKind::Full {
            return bad(
                "a Diff snapshot cannot be restored by itself: apply it onto its base \
                 (firecracker::apply_diff) and restore the result"
                    .into(),
            );
        }
        let mem = snap.mem_path();
        let want = u64::from(snap.mem_mib) << 20;
        match std::fs::metadata(&mem) {
            Ok(m) if m.is_file() && m.len() == want => {}
            Ok(m) => {
                return bad(format!(
                    "{} is {} bytes, expected {want} ({} MiB)",
                    mem.display(),
                    m.len(),
                    snap.mem_mib
                ))
            }
            Err(e) => return bad(format!("{}: {e}", mem.display())),
        }
        if snap.vmm_version != self.shared.version {
            warn!(snapshot = %snap.vmm_version, running = %self.shared.version,
                "restoring a snapshot written by another Firecracker version");
        }
        Ok(())
    }

    /// Prepares the working directory, starts Firecracker (or the jailer)
    /// and waits for the API socket.
    async fn launch(
        &self,
        spec: &VmSpec,
        snap: Option<&SnapshotFiles>,
    ) -> Result<FirecrackerVm, VmmError> {
        spec.validate()?;
        let sh = &self.shared;
        let layout = Layout::new(spec, sh)?;
        let phase = if snap.is_some() {
            Phase::Restore
        } else {
            Phase::Boot
        };
        tokio::fs::create_dir_all(&spec.dir)
            .await
            .map_err(|e| VmmError::io(format!("create {}", spec.dir.display()), e))?;
        // Never a second VMM for the same VM: a live socket means one runs.
        if UnixStream::connect(&layout.api_sock).await.is_ok() {
            return Err(VmmError::InvalidSpec(format!(
                "a VMM is already serving {}",
                layout.api_sock.display()
            )));
        }
        {
            let (spec, layout, sh2) = (spec.clone(), layout.clone(), sh.clone());
            let snap = snap.cloned();
            tokio::task::spawn_blocking(move || {
                prepare_work_dir(&spec, &layout, &sh2, snap.as_ref())
            })
            .await
            .map_err(|e| VmmError::Protocol(format!("prepare task: {e}")))??;
        }
        if phase == Phase::Boot {
            std::fs::File::create(&spec.console_log)
                .map_err(|e| VmmError::io(format!("create {}", spec.console_log.display()), e))?;
        }
        let pump = start_console_pump(&layout.work.join(CONSOLE_FIFO), &spec.console_log)?;

        let (binary, args) = match &layout.jail {
            Some(j) => (
                j.binary.clone(),
                jailer::jailer_args(
                    j,
                    &sh.exec_file,
                    &spec.id,
                    spec.vcpus,
                    spec.mem_mib,
                    &format!("/{API_SOCKET}"),
                )?,
            ),
            None => (
                sh.config.binary.clone(),
                vec![
                    "--api-sock".to_string(),
                    path_str("API socket", &layout.api_sock)?.to_string(),
                    "--id".to_string(),
                    jailer::instance_id(&spec.id),
                ],
            ),
        };
        let mut cmd = std::process::Command::new(&binary);
        // Bare mode: the relative names resolve in the VM dir (the jailer
        // chdirs into its chroot itself).
        cmd.args(&args).current_dir(&spec.dir);
        if let Some(n) = &spec.net {
            crate::net::enter_netns_on_spawn(&mut cmd, &n.netns_path).map_err(|e| {
                VmmError::InvalidSpec(format!("network namespace {}: {e}", n.netns_path.display()))
            })?;
        }
        let log = spec.dir.join(FIRECRACKER_LOG);
        log_header(&log, &binary, &args);
        debug!(vm = %spec.id, %binary, ?args, "starting Firecracker");
        let proc = VmmProcess::spawn(cmd, &binary, &log)?;
        let api = ApiClient::new(&layout.api_sock, ms(sh.config.api_timeout_ms));
        let vm = FirecrackerVm {
            id: spec.id.clone(),
            console_log: spec.console_log.clone(),
            dir: spec.dir.clone(),
            shape: Shape::of(spec),
            shared: sh.clone(),
            proc,
            api,
            layout,
            pump,
            op: tokio::sync::Mutex::new(()),
        };

        // Wait for the API socket, failing at once if Firecracker exits.
        let timeout = ms(sh.config.start_timeout_ms);
        // A configured timeout too large for an `Instant` never expires.
        let deadline = Deadline::after(timeout);
        loop {
            if vm.proc.exited().is_some() {
                return Err(vm.fail(phase, "Firecracker exited".into()).await);
            }
            if UnixStream::connect(&vm.layout.api_sock).await.is_ok() {
                break;
            }
            if deadline.passed() {
                let reason = format!("API socket did not come up within {timeout:?}");
                return Err(vm.fail(phase, reason).await);
            }
            tokio::time::sleep(SOCKET_POLL).await;
        }
        Ok(vm)
    }
}

/// Creates the working directory's links (or, jailed, the chroot with its
/// hard links) and the console FIFO; removes stale sockets.
fn prepare_work_dir(
    spec: &VmSpec,
    layout: &Layout,
    sh: &Shared,
    snap: Option<&SnapshotFiles>,
) -> Result<(), VmmError> {
    let mut files: Vec<(String, PathBuf)> = vec![(KERNEL_LINK.to_string(), spec.kernel.clone())];
    files.push((drive_link(0), spec.root_disk.clone()));
    for (i, d) in spec.extra_disks.iter().enumerate() {
        files.push((drive_link(i.saturating_add(1)), d.path.clone()));
    }
    match &layout.jail {
        Some(j) => {
            let root = jailer::fresh_chroot(j, &sh.exec_file, &spec.id)?;
            if let Some(s) = snap {
                files.push((JAIL_STATE.to_string(), s.state_path()));
                files.push((JAIL_MEM.to_string(), s.mem_path()));
            }
            for (name, src) in &files {
                let dst = root.join(name);
                jailer::link_or_copy(src, &dst)?;
                jailer::chown(&dst, j.uid, j.gid)?;
            }
            let snapdir = root.join(JAIL_SNAP_DIR);
            std::fs::create_dir_all(&snapdir)
                .map_err(|e| VmmError::io(format!("create {}", snapdir.display()), e))?;
            jailer::chown(&snapdir, j.uid, j.gid)?;
        }
        None => {
            for (name, src) in &files {
                let target = std::fs::canonicalize(src)
                    .map_err(|e| VmmError::io(format!("resolve {}", src.display()), e))?;
                let link = layout.work.join(name);
                jailer::remove_file_if_exists(&link)?;
                std::os::unix::fs::symlink(&target, &link).map_err(|e| {
                    VmmError::io(
                        format!("link {} to {}", link.display(), target.display()),
                        e,
                    )
                })?;
            }
        }
    }
    for name in [API_SOCKET, VSOCK_SOCKET, CONSOLE_FIFO, METRICS_FILE] {
        jailer::remove_file_if_exists(&layout.work.join(name))?;
    }
    let fifo = layout.work.join(CONSOLE_FIFO);
    mkfifo(&fifo)?;
    if let Some(j) = &layout.jail {
        jailer::chown(&fifo, j.uid, j.gid)?;
    }
    Ok(())
}

fn mkfifo(p: &Path) -> Result<(), VmmError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| VmmError::InvalidSpec(format!("{} has a NUL byte", p.display())))?;
    // SAFETY: plain syscall with a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(VmmError::io(
            format!("mkfifo {}", p.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A task aborted when this is dropped (a plain `JoinHandle` detaches).
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies everything written to the console FIFO into the console log
/// (appending) until aborted. The FIFO is opened read-write so it never
/// sees end-of-file between Firecracker launches.
fn start_console_pump(fifo: &Path, console_log: &Path) -> Result<AbortOnDrop, VmmError> {
    let mut rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(fifo)
        .map_err(|e| VmmError::io(format!("open {}", fifo.display()), e))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(console_log)
        .map_err(|e| VmmError::io(format!("open {}", console_log.display()), e))?;
    let mut out = tokio::fs::File::from_std(out);
    let name = console_log.to_path_buf();
    Ok(AbortOnDrop(tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = out.write_all(&buf[..n]).await {
                        warn!(console = %name.display(), error = %e, "writing the guest console");
                        break;
                    }
                    let _ = out.flush().await;
                }
                Err(e) => {
                    warn!(console = %name.display(), error = %e, "reading the guest console");
                    break;
                }
            }
        }
    })))
}

/// Appends a launch header (time and command line) to the VMM log.
fn log_header(log: &Path, binary: &str, args: &[String]) {
    use std::io::Write;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let line = format!(
        "# bhatti: launch at unix {now}: {binary} {}\n",
        args.join(" ")
    );
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
}

#[async_trait]
impl VmmDriver for FirecrackerDriver {
    fn name(&self) -> &'static str {
        DRIVER_NAME
    }

    fn version(&self) -> String {
        self.shared.version.clone()
    }

    /// Firecracker tracks dirty pages (`track_dirty_pages`, set on every
    /// boot and restore) and writes only those into a Diff snapshot.
    fn supports_diff_snapshots(&self) -> bool {
        true
    }

    fn apply_diff(
        &self,
        base: &SnapshotFiles,
        diff: &SnapshotFiles,
    ) -> Result<SnapshotFiles, VmmError> {
        diff::apply_diff(base, diff)
    }

    async fn boot(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.boot_vm(spec).await?))
    }

    async fn restore(&self, spec: &VmSpec, snap: &SnapshotFiles) -> Result<Box<dyn Vm>, VmmError> {
        Ok(Box::new(self.restore_vm(spec, snap).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::{Disk, NetAttach};

    pub(super) fn spec(net: bool, disks: usize) -> VmSpec {
        VmSpec {
            id: "0123456789abcdef".into(),
            dir: "/run/bhatti/vm/x".into(),
            kernel: "/k/vmlinux".into(),
            cmdline: "console=ttyS0 reboot=k panic=1".into(),
            root_disk: "/d/root.ext4".into(),
            extra_disks: (0..disks)
                .map(|i| Disk {
                    path: format!("/d/disk{i}.ext4").into(),
                    read_only: i == 0,
                })
                .collect(),
            vcpus: 2,
            mem_mib: 256,
            net: net.then(|| NetAttach {
                netns_path: "/var/run/netns/bhatti-x".into(),
                tap: "tap0".into(),
                mac: "02:aa:bb:cc:dd:ee".into(),
            }),
            console_log: "/run/bhatti/vm/x/console.log".into(),
        }
    }

    #[test]
    fn boot_sequence() {
        let r = boot_requests(&spec(true, 2), &FirecrackerConfig::default());
        let paths: Vec<String> = r.iter().map(ApiRequest::describe).collect();
        assert_eq!(
            paths,
            [
                "PUT /logger",
                "PUT /metrics",
                "PUT /serial",
                "PUT /boot-source",
                "PUT /machine-config",
                "PUT /drives/root",
                "PUT /drives/disk1",
                "PUT /drives/disk2",
                "PUT /network-interfaces/eth0",
                "PUT /vsock",
                "PUT /entropy",
                "PUT /balloon",
                "PUT /actions",
            ]
        );
        let body = |p: &str| {
            r.iter()
                .find(|x| x.describe() == p)
                .unwrap()
                .body
                .clone()
                .unwrap()
        };
        assert_eq!(body("PUT /machine-config")["track_dirty_pages"], true);
        assert_eq!(body("PUT /drives/root")["is_root_device"], true);
        assert_eq!(body("PUT /drives/root")["path_on_host"], "fc.root");
        assert_eq!(body("PUT /drives/disk1")["is_read_only"], true);
        assert_eq!(body("PUT /drives/disk2")["is_read_only"], false);
        assert_eq!(
            body("PUT /network-interfaces/eth0")["host_dev_name"],
            "tap0"
        );
        assert!(body("PUT /network-interfaces/eth0")
            .get("rx_rate_limiter")
            .is_none());
        assert_eq!(body("PUT /actions")["action_type"], "InstanceStart");

        // Rate limits on: every drive and both NIC directions.
        let c = FirecrackerConfig {
            rate_limits: RateLimits {
                net_bandwidth_bytes: Some(12_500_000),
                net_burst_bytes: Some(10_000_000),
                disk_bandwidth_bytes: Some(100_000_000),
                disk_iops: Some(10_000),
            },
            ..FirecrackerConfig::default()
        };
        let r = boot_requests(&spec(true, 1), &c);
        let body = |p: &str| {
            r.iter()
                .find(|x| x.describe() == p)
                .unwrap()
                .body
                .clone()
                .unwrap()
        };
        assert_eq!(
            body("PUT /drives/disk1")["rate_limiter"],
            serde_json::json!({"bandwidth": {"size": 100_000_000u64, "refill_time": 1000},
                "ops": {"size": 10_000, "refill_time": 1000}})
        );
        assert_eq!(
            body("PUT /network-interfaces/eth0")["tx_rate_limiter"]["bandwidth"]["one_time_burst"],
            10_000_000
        );

        // Everything optional off.
        let c = FirecrackerConfig {
            balloon: false,
            vsock: false,
            entropy: false,
            ..FirecrackerConfig::default()
        };
        let r = boot_requests(&spec(false, 0), &c);
        assert_eq!(r.len(), 7);
    }

    #[test]
    fn restore_sequence() {
        let r = restore_requests(
            &spec(true, 0),
            &FirecrackerConfig::default(),
            "/s/vm.snap",
            "/s/mem.snap",
        );
        let load = r.last().unwrap();
        assert_eq!(load.describe(), "PUT /snapshot/load");
        assert_eq!(
            load.body.clone().unwrap(),
            serde_json::json!({
                "snapshot_path": "/s/vm.snap",
                "mem_backend": {"backend_type": "File", "backend_path": "/s/mem.snap"},
                "track_dirty_pages": true,
                "resume_vm": true,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
                "vsock_override": {"uds_path": "v.sock"},
            })
        );
        assert!(r.iter().all(|x| !x.describe().contains("drives")));
    }

    #[test]
    fn versions_and_config() {
        assert_eq!(
            parse_version(
                "Firecracker v1.17.0-dev\n\n2026-11-24T21:23:34 [anonymous-instance:main] exiting"
            ),
            Some("Firecracker v1.17.0-dev".into())
        );
        assert_eq!(parse_version("garbage"), None);
        let c: FirecrackerConfig = serde_json::from_str(
            r#"{"binary": "/opt/fc/firecracker", "rate_limits": {"disk_iops": 500},
                "jailer": {"uid": 123, "gid": 456, "chroot_base": "/j"}}"#,
        )
        .unwrap();
        assert_eq!(c.rate_limits.disk_iops, Some(500));
        assert!(c.rate_limits.net().is_none());
        let j = c.jailer.unwrap();
        assert_eq!((j.uid, j.gid, j.binary.as_str()), (123, 456, "jailer"));
        assert!(c.balloon && c.vsock && c.entropy);
        let e = FirecrackerDriver::new(FirecrackerConfig {
            binary: "/nonexistent/firecracker".into(),
            ..FirecrackerConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, VmmError::Unavailable { .. }), "{e}");
    }

    #[test]
    fn socket_path_limit() {
        let ok = PathBuf::from(format!("/{}", "d".repeat(98)));
        assert_eq!(
            checked_socket(ok.join(API_SOCKET))
                .unwrap()
                .as_os_str()
                .len(),
            107
        );
        let long = PathBuf::from(format!("/{}", "d".repeat(99)));
        let e = checked_socket(long.join(API_SOCKET)).unwrap_err();
        assert!(
            matches!(e, VmmError::SocketPathTooLong { len: 108, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("shorter"));
    }

    #[test]
    fn states() {
        assert_eq!(vm::map_state("Running"), VmState::Running);
        assert_eq!(vm::map_state("Paused"), VmState::Paused);
        assert_eq!(
            vm::map_state("Not started"),
            VmState::Other("Not started".into())
        );
    }

    #[tokio::test]
    async fn console_pump_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fc.console");
        let log = tmp.path().join("console.log");
        std::fs::write(&log, b"boot\n").unwrap();
        mkfifo(&fifo).unwrap();
        let pump = start_console_pump(&fifo, &log).unwrap();
        // A writer that opens the FIFO like Firecracker does.
        {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
                .unwrap();
            w.write_all(b"restored\n").unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read(&log).unwrap() != b"boot\nrestored\n" {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                std::fs::read_to_string(&log)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pump.abort();
    }
}
