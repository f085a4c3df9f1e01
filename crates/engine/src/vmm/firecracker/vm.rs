//! A running Firecracker VM: its API client, pause/resume, snapshots,
//! the balloon and teardown, behind the driver-neutral [`Vm`] trait.

use super::*;
use crate::vmm::spec::allocated_bytes;

/// One Firecracker process. Dropping it SIGKILLs Firecracker.
#[derive(Debug)]
pub struct FirecrackerVm {
    pub(super) id: String,
    pub(super) console_log: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) shape: Shape,
    pub(super) shared: Arc<Shared>,
    pub(super) proc: VmmProcess,
    pub(super) api: ApiClient,
    pub(super) layout: Layout,
    pub(super) pump: AbortOnDrop,
    /// Serialises snapshot against pause/resume.
    pub(super) op: tokio::sync::Mutex<()>,
}

pub(super) fn map_state(s: &str) -> VmState {
    match s {
        "Running" => VmState::Running,
        "Paused" => VmState::Paused,
        other => VmState::Other(other.to_string()),
    }
}

impl FirecrackerVm {
    /// The sandbox id this VM was started for.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The VM directory (Firecracker's log, and in bare mode its sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API client (for diagnostics and tests).
    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// The host side of the vsock device (`Transport::VsockUds` of
    /// `bhatti-agent-client` connects here), if the driver configures one.
    pub fn vsock_uds_path(&self) -> Option<PathBuf> {
        self.shared
            .config
            .vsock
            .then(|| self.layout.work.join(VSOCK_SOCKET))
    }

    /// Firecracker's `GET /` answer.
    pub async fn instance_info(&self) -> Result<InstanceInfo, VmmError> {
        self.call_json(&ApiRequest::instance_info()).await
    }

    /// One API call; once Firecracker has exited, the error says so.
    pub(super) async fn call(
        &self,
        req: &ApiRequest,
    ) -> Result<Option<serde_json::Value>, VmmError> {
        match self.api.send(req).await {
            Err(VmmError::Protocol(m)) => {
                match self.proc.wait_timeout(Duration::from_millis(200)).await {
                    Some(exit) => Err(VmmError::Exited(exit)),
                    None => Err(VmmError::Protocol(m)),
                }
            }
            other => other,
        }
    }

    pub(super) async fn call_json<T: for<'de> Deserialize<'de>>(
        &self,
        req: &ApiRequest,
    ) -> Result<T, VmmError> {
        super::rest::decode_response(&req.describe(), self.call(req).await?)
    }

    pub(super) async fn run_all(&self, requests: &[ApiRequest]) -> Result<(), VmmError> {
        for r in requests {
            self.call(r).await?;
        }
        Ok(())
    }

    pub(super) async fn expect_state(&self, want: &str) -> Result<(), VmmError> {
        let info = self.instance_info().await?;
        if info.state != want {
            return Err(VmmError::Protocol(format!(
                "the VM is {:?}, expected {want:?}",
                info.state
            )));
        }
        Ok(())
    }

    /// Stops a Firecracker that failed to boot or restore and builds the
    /// error with the logs attached.
    pub(super) async fn fail(&self, phase: Phase, reason: String) -> VmmError {
        let reason = match self.proc.stop_failed_launch("Firecracker").await {
            Some(exit) if reason == "Firecracker exited" || reason.contains("connect") => {
                phase.exited("Firecracker", exit)
            }
            _ => reason,
        };
        self.cleanup();
        // Give the pump a moment to drain what the guest printed last.
        tokio::time::sleep(Duration::from_millis(20)).await;
        phase.error(
            reason,
            self.proc.log_tail(ERROR_TAIL_BYTES),
            file_tail(&self.console_log, ERROR_TAIL_BYTES, 0),
        )
    }

    /// Removes the sockets and FIFO (and, jailed, the chroot).
    pub(super) fn cleanup(&self) {
        for f in [API_SOCKET, VSOCK_SOCKET, CONSOLE_FIFO] {
            let _ = jailer::remove_file_if_exists(&self.layout.work.join(f));
        }
        if let Some(j) = &self.layout.jail {
            jailer::remove_chroot(j, &self.shared.exec_file, &self.id);
            if self.proc.exited().is_some() {
                jailer::remove_cgroup(j, &self.shared.exec_file, &self.id);
            }
        }
    }

    pub(super) async fn snapshot_inner(
        &self,
        dir: &Path,
        kind: SnapshotKind,
    ) -> Result<SnapshotFiles, VmmError> {
        let info = self.instance_info().await?;
        if info.state != "Paused" {
            return Err(VmmError::NotPaused {
                op: "snapshot",
                state: info.state,
            });
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| VmmError::io(format!("create {}", dir.display()), e))?;
        let mem_name = match kind {
            SnapshotKind::Full => MEM_FILE,
            SnapshotKind::Diff => DIFF_MEM_FILE,
        };
        let state = dir.join(STATE_FILE);
        let mem = dir.join(mem_name);
        for p in [&state, &mem] {
            jailer::remove_file_if_exists(p)?;
        }
        // Jailed: written inside the chroot, moved out afterwards.
        let (fc_state, fc_mem, jail_files) = match &self.layout.jail {
            Some(_) => {
                let sd = self.layout.work.join(JAIL_SNAP_DIR);
                let files = (sd.join(STATE_FILE), sd.join(mem_name));
                for p in [&files.0, &files.1] {
                    jailer::remove_file_if_exists(p)?;
                }
                (
                    format!("{JAIL_SNAP_DIR}/{STATE_FILE}"),
                    format!("{JAIL_SNAP_DIR}/{mem_name}"),
                    Some(files),
                )
            }
            None => (
                path_str("snapshot state file", &state)?.to_string(),
                path_str("snapshot memory file", &mem)?.to_string(),
                None,
            ),
        };
        let t0 = Instant::now();
        let req = snapshot_request(kind, &fc_state, &fc_mem);
        let api = self
            .api
            .clone()
            .with_timeout(ms(self.shared.config.snapshot_timeout_ms));
        if let Err(e) = api.send(&req).await {
            let _ = std::fs::remove_file(&state);
            let _ = std::fs::remove_file(&mem);
            return Err(match e {
                VmmError::Protocol(_) if self.proc.exited().is_some() => {
                    VmmError::Exited(self.proc.wait().await)
                }
                VmmError::Command { .. } | VmmError::Exited(_) => e,
                other => VmmError::Snapshot(other.to_string()),
            });
        }
        let create_ms = crate::vmm::millis(t0.elapsed());
        let want_mem = u64::from(self.shape.mem_mib) << 20;
        let (size, alloc) = {
            let (state, mem, dir) = (state.clone(), mem.clone(), dir.to_path_buf());
            tokio::task::spawn_blocking(move || -> Result<(u64, u64), VmmError> {
                if let Some((js, jm)) = jail_files {
                    move_file(&js, &state)?;
                    move_file(&jm, &mem)?;
                }
                let mut size = 0;
                let mut alloc = 0;
                for p in [&state, &mem] {
                    let f = std::fs::File::open(p)
                        .map_err(|e| VmmError::io(format!("open {}", p.display()), e))?;
                    f.sync_all()
                        .map_err(|e| VmmError::io(format!("fsync {}", p.display()), e))?;
                    let m = f
                        .metadata()
                        .map_err(|e| VmmError::io(format!("stat {}", p.display()), e))?;
                    if m.len() == 0 {
                        return Err(VmmError::Snapshot(format!("{} is empty", p.display())));
                    }
                    if p == &mem && m.len() != want_mem {
                        return Err(VmmError::Snapshot(format!(
                            "{} is {} bytes, expected {want_mem}",
                            p.display(),
                            m.len()
                        )));
                    }
                    size = m.len().saturating_add(size);
                    alloc = allocated_bytes(&m).saturating_add(alloc);
                }
                if let Ok(d) = std::fs::File::open(&dir) {
                    let _ = d.sync_all();
                }
                Ok((size, alloc))
            })
            .await
            .map_err(|e| VmmError::Snapshot(format!("fsync task: {e}")))??
        };
        info!(vm = %self.id, ?kind, create_ms, total_ms = crate::vmm::millis(t0.elapsed()),
            size, allocated = alloc, "snapshot written");
        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            state_file: PathBuf::from(STATE_FILE),
            mem_file: PathBuf::from(mem_name),
            format_version: SNAPSHOT_FORMAT_VERSION,
            driver: DRIVER_NAME.to_string(),
            vmm_version: self.shared.version.clone(),
            kind,
            size_bytes: size,
            allocated_bytes: alloc,
            vcpus: self.shape.vcpus,
            mem_mib: self.shape.mem_mib,
            extra_disks: self.shape.extra_disks,
            has_net: self.shape.has_net,
            mapped_ram: false,
        })
    }
}

/// Renames `src` to `dst`, copying (sparse-unaware) across file systems.
fn move_file(src: &Path, dst: &Path) -> Result<(), VmmError> {
    match std::fs::rename(src, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(src, dst).map_err(|e| {
                VmmError::io(format!("copy {} to {}", src.display(), dst.display()), e)
            })?;
            jailer::remove_file_if_exists(src)
        }
        Err(e) => Err(VmmError::io(
            format!("move {} to {}", src.display(), dst.display()),
            e,
        )),
    }
}

#[async_trait]
impl Vm for FirecrackerVm {
    async fn pause(&self) -> Result<(), VmmError> {
        let _op = self.op.lock().await;
        self.call(&ApiRequest::vm_state(VmRunState::Paused))
            .await
            .map(drop)
    }

    async fn resume(&self) -> Result<(), VmmError> {
        let _op = self.op.lock().await;
        self.call(&ApiRequest::vm_state(VmRunState::Resumed))
            .await
            .map(drop)
    }

    async fn state(&self) -> Result<VmState, VmmError> {
        if let Some(exit) = self.proc.exited() {
            return Ok(VmState::Exited(exit));
        }
        match self.instance_info().await {
            Ok(i) => Ok(map_state(&i.state)),
            Err(VmmError::Exited(exit)) => Ok(VmState::Exited(exit)),
            Err(e) => Err(e),
        }
    }

    async fn snapshot(&self, dir: &Path, kind: SnapshotKind) -> Result<SnapshotFiles, VmmError> {
        let _op = self.op.lock().await;
        self.snapshot_inner(dir, kind).await
    }

    async fn kill(&self) -> Result<(), VmmError> {
        self.proc
            .terminate(ms(self.shared.config.kill_grace_ms))
            .await?;
        self.pump.abort();
        self.cleanup();
        Ok(())
    }

    crate::vmm::process_vm_methods!();

    async fn set_balloon(&self, mib: u32) -> Result<(), VmmError> {
        if !self.shared.config.balloon {
            return Err(VmmError::Unsupported {
                driver: DRIVER_NAME,
                what: "a memory balloon (firecracker.balloon is off)".into(),
            });
        }
        self.call(&ApiRequest::balloon_update(mib)).await.map(drop)
    }
}
