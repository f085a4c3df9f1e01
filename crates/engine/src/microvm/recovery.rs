//! Restarts and health: recovery hands every sandbox of the store back to
//! the engine (adopting a VMM that kept running while no daemon did), the
//! sweep of this daemon's leftovers, letting go at shutdown, and the
//! watcher that turns a VMM dying under its sandbox into `crashed`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::sandbox::{Detail, Fast, Sandbox};
use super::{blocking, persist, MicroVmEngine, ADOPT_AGENT_TIMEOUT, SNAPSHOT_DIR};
use crate::contract::{EngineError, LifeState, Result, SandboxInfo, Status, Thermal, VmState};
use crate::lock;
use crate::registry::Entry as _;
use crate::vmm::{VmExit, VmState as VmmState};

/// What every crashed sandbox's reason ends with.
const BOOTS_AFRESH: &str = "start boots it afresh from its disk";

impl MicroVmEngine {
    /// Hands a sandbox of the store back to the engine (see the module
    /// doc): adopted, cold, crashed, or an error (`unknown`).
    pub(super) async fn recover_sandbox(&self, state: VmState) -> Result<SandboxInfo> {
        if state.engine != self.driver.name() {
            return Err(EngineError::Invalid(format!(
                "sandbox belongs to the {} engine",
                state.engine
            )));
        }
        let detail: Detail = serde_json::from_value(state.detail.clone())
            .map_err(|e| EngineError::Invalid(format!("unreadable engine state: {e}")))?;
        if !detail.dir.join("rootfs.ext4").is_file() {
            return Err(EngineError::Invalid("root disk is missing".into()));
        }
        if detail.net.netns_path().exists() {
            let (net, n) = (self.net.clone(), detail.net.clone());
            blocking(move || Ok(net.adopt(&n)?)).await?;
            // Current rules: the namespace may have been written by an older
            // daemon, or the blocked networks changed since.
            let (net, n, p) = (self.net.clone(), detail.net.clone(), detail.egress.clone());
            if let Err(e) = blocking(move || Ok(net.reinstall_rules(&n, &p)?)).await {
                tracing::warn!(id = %state.id, error = %e, "re-installing the namespace's rules failed");
            }
        }
        // The VMM kept running while no daemon did: take it back.
        let live = vmm_pids(&detail.dir);
        if let [pid] = live[..] {
            match self.adopt(&state, &detail, pid).await {
                Ok(info) => return Ok(info),
                Err(e) => {
                    tracing::warn!(id = %state.id, pid, error = %e, "could not adopt the running VMM; stopping it");
                }
            }
        }
        // Anything else (several, or one that would not answer) holds the
        // disks with no way to drive it: stop it.
        kill_stray_vmms(&detail.dir);
        // Memory is lost either way but for a current snapshot; the disk
        // holds everything the guest synced.
        let crashed = |why: String| {
            (
                LifeState::Crashed(format!("{why}; {BOOTS_AFRESH}")),
                state.generation,
            )
        };
        let (life, generation) = if state.status == Status::Crashed {
            // Still crashed, for the reason it had.
            let why = detail.crashed.clone().unwrap_or_else(|| {
                format!("the VM had crashed before the daemon restarted; {BOOTS_AFRESH}")
            });
            (LifeState::Crashed(why), state.generation)
        } else {
            let snap_dir = detail.dir.join(SNAPSHOT_DIR);
            match blocking(move || persist::load_snapshot(&snap_dir)).await {
                Ok(m) if m.generation >= state.generation => (LifeState::Stopped, m.generation),
                Ok(m) => crashed(format!(
                    "the VM was gone when the daemon started again, and its newest snapshot (generation {}) predates its last boot (generation {})",
                    m.generation, state.generation
                )),
                Err(e) => crashed(format!(
                    "the VM was gone when the daemon started again, with no snapshot of its memory ({e})"
                )),
            }
        };
        let sb = Sandbox {
            id: state.id.clone(),
            name: state.name.clone(),
            lifecycle: tokio::sync::Mutex::new(None),
            fast: Mutex::new(Fast {
                state: life,
                generation,
                restore_failed: detail.restore_failed.clone(),
                agent: None,
                diff_base: None,
                egress: detail.egress.clone(),
            }),
            detail,
        };
        Ok(self.insert(sb).info())
    }

    /// This daemon's host leftovers that belong to no sandbox: networks of
    /// its ledger, sandbox directories, and their stray VMMs.
    pub(super) async fn sweep_orphans(&self, also_keep: &[String]) -> Result<Vec<String>> {
        let mut keep: Vec<String> = self.sandboxes.ids();
        keep.extend(also_keep.iter().cloned());
        keep.extend(self.pooled_ids());
        let net = self.net.clone();
        let keep2 = keep.clone();
        let mut removed = blocking(move || Ok(net.cleanup_orphans(&keep2)?)).await?;
        // Sandbox directories nobody knows about.
        let root = self.cfg.data_dir.join("sandboxes");
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit());
                if ours && !keep.contains(&name) {
                    kill_stray_vmms(&e.path());
                    if std::fs::remove_dir_all(e.path()).is_ok() {
                        removed.push(format!("dir {name}"));
                    }
                }
            }
        }
        Ok(removed)
    }

    /// The daemon stops: VMMs are released for the next daemon to adopt
    /// (`keep_running`, where the driver can adopt) or killed.
    pub(super) async fn let_go(&self, keep_running: bool) {
        // First: a template build in flight destroys its VM, which no
        // daemon would adopt.
        self.stop_templates().await;
        // Pooled sandboxes are in no store: no daemon would adopt them.
        self.stop_pools().await;
        let keep_running = keep_running && self.driver.supports_adopt();
        let all: Vec<Arc<Sandbox>> = self.sandboxes.all();
        for sb in all {
            let mut slot = sb.lifecycle.lock().await;
            if let Some(vm) = slot.take() {
                if keep_running {
                    // The next daemon adopts it (recover).
                    vm.release();
                    continue;
                }
                let _ = vm.kill().await;
            }
            sb.set(LifeState::Stopped);
        }
    }
    /// Recovery's adoption of the VMM `pid` left running for `state`: the
    /// driver reconnects its control socket, its run state gives the
    /// thermal state, and a running guest's agent must answer (a guest
    /// that does not is stopped by the caller and treated as gone).
    async fn adopt(&self, state: &VmState, detail: &Detail, pid: i32) -> Result<SandboxInfo> {
        let pid = u32::try_from(pid)
            .map_err(|_| EngineError::Inconsistent(format!("recorded pid {pid}")))?;
        let spec = self.vm_spec(&state.id, detail);
        let vm = self
            .driver
            .adopt(&spec, pid)
            .await
            .map_err(EngineError::Vmm)?;
        let thermal = match vm.state().await {
            Ok(VmmState::Running) => Thermal::Hot,
            Ok(VmmState::Paused) => Thermal::Warm,
            Ok(other) => {
                vm.release();
                return Err(EngineError::Inconsistent(format!(
                    "the adopted VM is {other:?}"
                )));
            }
            Err(e) => {
                vm.release();
                return Err(EngineError::Vmm(e));
            }
        };
        let client = detail.client();
        if thermal == Thermal::Hot {
            if let Err(e) = client.wait_ready(ADOPT_AGENT_TIMEOUT).await {
                vm.release();
                return Err(EngineError::Agent(e));
            }
        }
        let exit = vm.exit_watch();
        let sb = Sandbox {
            id: state.id.clone(),
            name: state.name.clone(),
            lifecycle: tokio::sync::Mutex::new(Some(vm)),
            fast: Mutex::new(Fast {
                state: LifeState::Running(thermal),
                generation: state.generation,
                restore_failed: detail.restore_failed.clone(),
                agent: Some(client.reusing()),
                // Its dirty-page log is not known: the next stop writes a
                // Full snapshot.
                diff_base: None,
                egress: detail.egress.clone(),
            }),
            detail: detail.clone(),
        };
        let sb = self.insert(sb);
        watch_vmm(&sb, exit);
        tracing::info!(sandbox = %state.id, pid, %thermal, "re-adopted a running sandbox");
        Ok(sb.info())
    }
}

/// Watches the VMM a sandbox now runs on. Should it exit while it is still
/// the sandbox's (no stop, destroy or shutdown took it out of the slot
/// first, under the lifecycle lock), the sandbox is marked crashed at once,
/// with how the VMM ended.
pub(super) fn watch_vmm(sb: &Arc<Sandbox>, mut exit: tokio::sync::watch::Receiver<Option<VmExit>>) {
    let weak = Arc::downgrade(sb);
    tokio::spawn(async move {
        let ended = exit.wait_for(|e| e.is_some()).await.ok().and_then(|e| *e);
        let Some(sb) = weak.upgrade() else {
            return;
        };
        let mut slot = sb.lifecycle.lock().await;
        // Still alive, or no longer the sandbox's VMM: nothing crashed.
        if slot.as_ref().is_none_or(|vm| vm.pid().is_some()) {
            return;
        }
        let how = ended.map_or_else(|| "unknown exit status".to_string(), |e| e.to_string());
        let reason = format!("the VM stopped unexpectedly ({how}); {BOOTS_AFRESH}");
        tracing::warn!(sandbox = sb.id, reason, "sandbox crashed");
        drop(slot.take());
        let mut f = lock(&sb.fast);
        f.state = LifeState::Crashed(reason);
        f.agent = None;
        f.diff_base = None;
    });
}

/// VMM processes (QEMU, Firecracker) whose command line references `dir`
/// or a path below it (a sandbox directory holds their disks and sockets),
/// in ascending order. Recovery adopts by it; tests and benchmarks find
/// the VMMs of their own data directory by it.
pub fn vmm_pids(dir: &Path) -> Vec<i32> {
    let needle = format!("{}/", dir.to_string_lossy());
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        let is_vmm = cmd.starts_with("qemu-system")
            || cmd.contains("/qemu-system")
            || cmd.contains("firecracker");
        if is_vmm && cmd.contains(&needle) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// SIGKILLs VMM processes of `dir` (left over from a daemon that died
/// without stopping them, and not adopted).
fn kill_stray_vmms(dir: &Path) {
    for pid in vmm_pids(dir) {
        tracing::warn!(pid, dir = %dir.display(), "killing a stray VMM");
        let _ = nix_kill(pid);
    }
}

fn nix_kill(pid: i32) -> std::io::Result<()> {
    // SAFETY: plain kill(2) on a pid we found in /proc.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
