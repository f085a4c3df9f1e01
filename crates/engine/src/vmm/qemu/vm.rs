//! A running QEMU VM: its QMP session, pause/resume, migration to and from
//! a snapshot file, and teardown, behind the driver-neutral [`Vm`] trait.

use super::*;
use crate::vmm::spec::allocated_bytes;

/// One QEMU process. Dropping it SIGKILLs QEMU.
#[derive(Debug)]
pub struct QemuVm {
    pub(super) id: String,
    pub(super) console_log: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) shape: Shape,
    pub(super) shared: Arc<Shared>,
    pub(super) proc: VmmProcess,
    pub(super) qmp: Qmp,
    /// Serialises snapshot against pause/resume.
    pub(super) op: tokio::sync::Mutex<()>,
}

/// QEMU run states (`query-status`) in our terms.
pub(super) fn map_status(s: &str) -> VmState {
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
pub(super) fn is_paused_status(s: &str) -> bool {
    matches!(s, "paused" | "postmigrate" | "prelaunch" | "suspended")
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
    pub(super) async fn fail(&self, phase: Phase, reason: String) -> VmmError {
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
        let deadline = Deadline::after(timeout);
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
            if deadline.passed() {
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
        let deadline = Deadline::after(ms(self.shared.config.qmp_timeout_ms));
        loop {
            let s = self.raw_status().await?;
            if s != transient || deadline.passed() {
                return Ok(s);
            }
            tokio::time::sleep(MIGRATE_POLL).await;
        }
    }

    pub(super) async fn load_snapshot(&self, snap: &SnapshotFiles) -> Result<(), VmmError> {
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
        for f in [crate::vmm::consts::QMP_SOCKET, QEMU_PIDFILE] {
            let _ = remove_if_exists(&self.dir.join(f));
        }
        Ok(())
    }

    crate::vmm::process_vm_methods!();
}
