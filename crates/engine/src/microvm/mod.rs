//! The microVM engine: sandboxes as VMs, one VMM driver (QEMU or Firecracker)
//! behind the small [`VmmDriver`] trait.
//!
//! Everything that is the same for every VMM lives here: per-sandbox
//! copy-on-write disks and the config drive ([`disk`]), the sandbox's network
//! namespace ([`crate::net`]), the agent connection and boot watchdog, snapshot
//! directories with checked manifests ([`persist`]), the thermal states, named
//! checkpoints and forks, and the state persisted for recovery.
//!
//! Layout: this file holds the engine's configuration and its [`Engine`]
//! calls; `sandbox` the per-sandbox state, `lifecycle` launching, starting,
//! quiescing and the cold snapshot, `thermal` parking and waking,
//! `checkpoint` named checkpoints and forks, `recovery` re-adoption after a
//! restart, `disk` and `persist` what is on disk.
//!
//! Locking: each sandbox has a *lifecycle* lock (async) held across slow
//! transitions (boot, pause, snapshot, restore, kill) so two of them never
//! interleave, and a *fast* lock (sync, never held across an await) for the
//! state that `agent()`, `status()` and `list()` read. Lookups never wait for a
//! transition.
//!
//! Health: every VMM a sandbox runs on is watched ([`watch_vmm`]); one that
//! exits while it is still the sandbox's (no stop or destroy took it out
//! first) makes the sandbox `crashed` at once, with how it ended. `start`
//! then boots it afresh from its kept disk.
//!
//! Restarts: with a driver that can adopt ([`VmmDriver::adopt`]), a daemon
//! that stops leaves its VMMs running, and recovery hands each back to its
//! sandbox (control socket reconnected, agent reached, thermal state read).
//! A VMM that is gone leaves the sandbox cold (a current snapshot) or
//! crashed (its disk only).

mod checkpoint;
mod disk;
mod lifecycle;
mod persist;
mod pool;
mod recovery;
mod sandbox;
mod template;
mod thermal;

use thermal::{park, wake};

use recovery::watch_vmm;
use sandbox::{Detail, Fast, Sandbox};

use crate::lock;
use crate::registry::Entry as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use bhatti_agent_client::{AgentClient, Transport};
use bhatti_protocol::config::{ConfigFile, ConfigVolume, GuestConfig};
use rand::RngCore;

use crate::contract::{
    Capabilities, CheckpointManifest, Engine, EngineError, LifeState, PoolSpec, PoolStatus, Result,
    ResumeSpec, SandboxInfo, SandboxSpec, Thermal, VmState, Wake,
};
use crate::net::{EgressPolicy, NetManager, SandboxNet};
use crate::vmm::{Disk, NetAttach, SnapshotFiles, SnapshotKind, Vm, VmSpec, VmmDriver};

pub(crate) use persist::SnapshotManifest;
pub use recovery::vmm_pids;

/// Where lohar lives in every image.
const GUEST_INIT: &str = "/usr/local/bin/lohar";
/// How long a boot or restore may take to answer on the agent port.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long recovery waits for the agent of a VM it adopts.
const ADOPT_AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Cold snapshot directory inside a sandbox's directory.
const SNAPSHOT_DIR: &str = "snapshot";
/// Format of named checkpoint manifests.
const CHECKPOINT_VERSION: u32 = 1;

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct MicroVmConfig {
    /// `<data_dir>/sandboxes/<id>/` holds each sandbox's files.
    pub data_dir: PathBuf,
    /// The guest kernel every sandbox boots (uncompressed `vmlinux`).
    pub kernel: PathBuf,
    /// Base root filesystem when a spec names none.
    pub default_image: PathBuf,
    /// How long a boot or restore may take until the guest agent answers.
    pub boot_timeout: Duration,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
    /// Stop a sandbox that was woken from its cold snapshot with a Diff
    /// snapshot (only the pages written since the wake) merged onto that
    /// snapshot, where the VMM supports it (Firecracker). Off by default:
    /// diffs are allowed only where the full → diff → diff suite has passed
    /// (docs/engine.md, "Snapshots"), and on this project's CI machine no
    /// Firecracker guest boots.
    pub diff_snapshots: bool,
    /// Guests ask the per-user DNS responder on their gateway
    /// ([`crate::net::GATEWAY_IP`]) instead of public resolvers; the daemon
    /// listens there inside each sandbox's namespace.
    pub dns_internal: bool,
}

impl MicroVmConfig {
    /// The defaults: a 60 s boot timeout, no extra command line, no Diff
    /// snapshots.
    pub fn new(data_dir: PathBuf, kernel: PathBuf, default_image: PathBuf) -> MicroVmConfig {
        MicroVmConfig {
            data_dir,
            kernel,
            default_image,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            extra_cmdline: String::new(),
            diff_snapshots: false,
            dns_internal: false,
        }
    }
}

/// The microVM engine.
pub struct MicroVmEngine {
    cfg: MicroVmConfig,
    driver: Arc<dyn VmmDriver>,
    net: Arc<NetManager>,
    sandboxes: crate::registry::Registry<Sandbox>,
    templates: template::Templates,
    pools: pool::Pools,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A random MAC with the locally-administered bit set and multicast clear.
fn random_mac() -> String {
    let mut b = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut b);
    b[0] = (b[0] | 0x02) & 0xfe;
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Guest block device name for the n-th disk (0 = vda).
fn vd(n: usize) -> String {
    // A guest has at most a handful of disks (root, config, volumes):
    // never past vdz.
    let n = u8::try_from(n).unwrap_or(25).min(25);
    format!("/dev/vd{}", char::from(b'a'.saturating_add(n)))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

impl MicroVmEngine {
    /// An engine booting sandboxes with `driver`, networked by `net`;
    /// checks that the kernel and default image exist and creates
    /// `<data_dir>/sandboxes`. Recovering earlier sandboxes is the caller's
    /// job ([`Engine::recover`]).
    pub fn new(
        cfg: MicroVmConfig,
        driver: Arc<dyn VmmDriver>,
        net: Arc<NetManager>,
    ) -> Result<MicroVmEngine> {
        for (what, p) in [
            ("kernel", &cfg.kernel),
            ("default image", &cfg.default_image),
        ] {
            if !p.is_file() {
                return Err(EngineError::Invalid(format!(
                    "{what} {} does not exist (build it with scripts/guest)",
                    p.display()
                )));
            }
        }
        std::fs::create_dir_all(cfg.data_dir.join("sandboxes"))?;
        Ok(MicroVmEngine {
            cfg,
            driver,
            net,
            sandboxes: Default::default(),
            templates: Default::default(),
            pools: Default::default(),
        })
    }

    /// A sandbox booted from its image (no template).
    pub(super) async fn boot(&self, id: &str, spec: SandboxSpec) -> Result<SandboxInfo> {
        let id = id.to_string();
        let (dir, mut rb) = self.new_sandbox_dir(&id).await?;
        let res = async {
            let base = spec.image.clone().unwrap_or(self.cfg.default_image.clone());
            let rootfs = dir.join("rootfs.ext4");
            let token = random_hex(16);
            let mac = random_mac();
            let cfg = self.guest_config(&id, &token, &spec);
            // Disks and network are independent: prepare them concurrently.
            let disks = async {
                disk::cow_copy(&base, &rootfs).await?;
                if spec.disk_size_mb > 0 {
                    disk::grow(&rootfs, spec.disk_size_mb).await?;
                }
                disk::build_config_drive(&cfg, &dir.join("config.ext4")).await
            };
            let network = self.setup_net(&id, spec.owner_index, &mac, &spec.egress, None);
            let (disks, network) = tokio::join!(disks, network);
            if let Ok(net) = &network {
                rb.net = Some(net.clone());
            }
            disks?;
            let net = network?;
            let detail = Detail {
                dir: dir.clone(),
                owner_index: spec.owner_index,
                cpus: spec.cpus,
                memory_mb: spec.memory_mb,
                mac,
                token,
                net,
                volumes: spec.volumes.clone(),
                egress: spec.egress.clone(),
                restore_failed: None,
                crashed: None,
            };
            let vm = self.launch(&id, &detail, None).await?;
            Ok::<_, EngineError>((detail, vm))
        }
        .await;
        match res {
            Ok((detail, vm)) => Ok(self.register_hot(id, spec.name.clone(), detail, vm)),
            Err(e) => {
                rb.run().await;
                Err(e)
            }
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Sandbox>> {
        self.sandboxes.get(id)
    }

    fn cmdline(&self) -> String {
        let mut c = format!(
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init={GUEST_INIT} quiet loglevel=1 ip={}",
            crate::net::kernel_ip_arg()
        );
        if !self.cfg.extra_cmdline.is_empty() {
            c.push(' ');
            c.push_str(&self.cfg.extra_cmdline);
        }
        c
    }

    fn vm_spec(&self, id: &str, d: &Detail) -> VmSpec {
        let mut extra = vec![Disk {
            path: d.dir.join("config.ext4"),
            read_only: true,
        }];
        extra.extend(d.volumes.iter().map(|v| Disk {
            path: v.file.clone(),
            read_only: v.read_only,
        }));
        VmSpec {
            id: id.to_string(),
            dir: d.dir.clone(),
            kernel: self.cfg.kernel.clone(),
            cmdline: self.cmdline(),
            root_disk: d.dir.join("rootfs.ext4"),
            extra_disks: extra,
            vcpus: d.cpus,
            mem_mib: d.memory_mb,
            net: Some(NetAttach {
                netns_path: d.net.netns_path(),
                tap: d.net.tap.clone(),
                mac: d.mac.clone(),
            }),
            console_log: d.dir.join("console.log"),
        }
    }

    fn insert(&self, sb: Sandbox) -> Arc<Sandbox> {
        let sb = Arc::new(sb);
        self.sandboxes.insert(sb.id.clone(), sb.clone());
        sb
    }

    fn guest_config(&self, id: &str, token: &str, spec: &SandboxSpec) -> GuestConfig {
        GuestConfig {
            sandbox_id: id.to_string(),
            hostname: if spec.name.is_empty() {
                id.to_string()
            } else {
                spec.name.clone()
            },
            token: token.to_string(),
            env: spec.env.clone(),
            files: config_files(spec),
            // vda = root, vdb = config, volumes from vdc on.
            volumes: spec
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| ConfigVolume {
                    device: vd(i.saturating_add(2)),
                    mount: v.mount.clone(),
                    fs: "ext4".into(),
                    read_only: v.read_only,
                })
                .collect(),
            init: spec.init.clone(),
            user: if spec.run_as_root {
                "root".into()
            } else if !spec.user.is_empty() {
                spec.user.clone()
            } else {
                "lohar".into()
            },
            cwd: spec.cwd.clone(),
            dns_internal: if self.cfg.dns_internal {
                crate::net::GATEWAY_IP.to_string()
            } else {
                String::new()
            },
            ..Default::default()
        }
    }
}

/// A spec's files as the guest takes them (at boot and in a claim).
fn config_files(spec: &SandboxSpec) -> std::collections::BTreeMap<String, ConfigFile> {
    let b64 = base64::engine::general_purpose::STANDARD;
    spec.files
        .iter()
        .map(|(p, f)| {
            (
                p.clone(),
                ConfigFile {
                    content: b64.encode(&f.content),
                    mode: f.mode.clone(),
                },
            )
        })
        .collect()
}

/// Turns the Diff snapshot `diff` (in `stage`) into a Full one: a copy of
/// the memory of the cold snapshot in `fin` (which must be of generation
/// `base_gen`, the one the VM was restored from) with the diff's pages
/// written over it, and the diff's device state. Returns the Full
/// description and the length of the diff chain it now carries. Blocking.
fn layer_diff(
    driver: &dyn VmmDriver,
    fin: &Path,
    stage: &Path,
    diff: SnapshotFiles,
    base_gen: u64,
) -> Result<(SnapshotFiles, u32)> {
    let base = persist::peek_snapshot(fin)?;
    if base.generation != base_gen || base.vmm.kind != SnapshotKind::Full {
        return Err(EngineError::Invalid(format!(
            "the cold snapshot changed under the running VM (generation {}, want {base_gen})",
            base.generation
        )));
    }
    let mut full = base.vmm.clone();
    full.dir = stage.to_path_buf();
    if full.mem_path() == diff.mem_path() || full.mem_path() == full.state_path() {
        return Err(EngineError::Invalid(
            "diff and base memory files would collide".into(),
        ));
    }
    std::fs::copy(base.vmm.mem_path(), full.mem_path()).map_err(|source| EngineError::Host {
        what: format!(
            "copy {} to {}",
            base.vmm.mem_path().display(),
            full.mem_path().display()
        ),
        source,
    })?;
    let merged = driver.apply_diff(&full, &diff)?;
    std::fs::remove_file(diff.mem_path()).map_err(|source| EngineError::Host {
        what: format!("remove {}", diff.mem_path().display()),
        source,
    })?;
    // The chain length comes from the manifest file: saturate, never wrap.
    Ok((merged, base.diff_chain.saturating_add(1)))
}

/// Undoes a half-done create.
struct Rollback<'a> {
    engine: &'a MicroVmEngine,
    dir: Option<PathBuf>,
    net: Option<SandboxNet>,
}

impl MicroVmEngine {
    /// Makes sandbox `id`'s directory, with the rollback that removes it
    /// (and its network, once set) should the create go no further.
    async fn new_sandbox_dir(&self, id: &str) -> Result<(PathBuf, Rollback<'_>)> {
        let dir = self.cfg.data_dir.join("sandboxes").join(id);
        tokio::fs::create_dir_all(&dir).await?;
        let rb = Rollback {
            engine: self,
            dir: Some(dir.clone()),
            net: None,
        };
        Ok((dir, rb))
    }
}

impl Rollback<'_> {
    async fn run(mut self) {
        if let Some(n) = self.net.take() {
            self.engine.teardown_net(&n).await;
        }
        if let Some(d) = self.dir.take() {
            let _ = tokio::fs::remove_dir_all(&d).await;
        }
    }
}

#[async_trait]
impl Engine for MicroVmEngine {
    fn name(&self) -> &'static str {
        self.driver.name()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            memory_snapshots: true,
            diff_snapshots: false,
            checkpoints: true,
            egress_policy: true,
            survives_restart: self.driver.supports_adopt(),
        }
    }

    async fn create(&self, spec: SandboxSpec) -> Result<SandboxInfo> {
        if spec.cpus == 0 || spec.memory_mb < 128 {
            return Err(EngineError::Invalid(
                "a sandbox needs at least 1 vCPU and 128 MB of memory".into(),
            ));
        }
        if spec.volumes.len() > 22 {
            return Err(EngineError::Invalid(
                "at most 22 volumes per sandbox".into(),
            ));
        }
        let id = crate::contract::checked_id(spec.id.as_deref(), || random_hex(8))?;
        // A warm-pool sandbox reserved under this ID (reserve_pooled).
        if let Some(Ok(info)) = self.claim_reserved(&id, &spec).await {
            return Ok(info);
        }
        let image = spec.image.clone().unwrap_or(self.cfg.default_image.clone());
        if let Some(info) = self.create_from_template(&id, &spec, &image).await {
            return Ok(info);
        }
        self.boot(&id, spec).await
    }

    fn reserve_pooled(&self, spec: &SandboxSpec) -> Option<String> {
        self.reserve(spec)
    }

    fn set_pools(&self, pools: Vec<PoolSpec>) {
        self.configure_pools(pools);
    }

    fn pools(&self) -> Vec<PoolStatus> {
        self.pool_status()
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        if self.unreserve(id).await {
            return Ok(());
        }
        let sb = self.get(id)?;
        let mut slot = sb.lifecycle.lock().await;
        if let Some(vm) = slot.take() {
            if let Err(e) = vm.kill().await {
                tracing::warn!(id, error = %e, "kill failed");
            }
        }
        self.teardown_net(&sb.detail.net).await;
        if let Err(e) = tokio::fs::remove_dir_all(&sb.detail.dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(id, error = %e, "removing the sandbox directory failed");
            }
        }
        self.sandboxes.remove(id);
        Ok(())
    }

    async fn stop(&self, id: &str) -> Result<()> {
        let sb = self.get(id)?;
        let mut slot = sb.lifecycle.lock().await;
        let Some(vm) = slot.as_ref() else {
            return Ok(()); // already cold
        };
        let was_hot = self.quiesce(&sb, vm.as_ref()).await?;
        let (generation, diff_base) = {
            let mut f = lock(&sb.fast);
            (f.generation, f.diff_base.take())
        };
        let fin = sb.snapshot_dir();
        let diffed = match diff_base {
            None => false,
            Some(base) => match self
                .write_cold_snapshot(vm.as_ref(), &fin, generation, Some(base))
                .await
            {
                Ok(()) => true,
                Err(e) => {
                    // Every snapshot resets the dirty-page log, so a Full
                    // one taken now is still complete.
                    tracing::warn!(id, error = %e, "diff snapshot failed; taking a full one");
                    false
                }
            },
        };
        let res = if diffed {
            Ok(())
        } else {
            self.write_cold_snapshot(vm.as_ref(), &fin, generation, None)
                .await
        };
        if let Err(e) = res {
            self.unquiesce(&sb, vm.as_ref(), was_hot).await;
            return Err(e);
        }
        if let Some(vm) = slot.take() {
            let _ = vm.kill().await;
        }
        let mut f = lock(&sb.fast);
        f.state = LifeState::Stopped;
        f.agent = None;
        Ok(())
    }

    async fn start(&self, id: &str, force: bool) -> Result<SandboxInfo> {
        let sb = self.get(id)?;
        let mut slot = sb.lifecycle.lock().await;
        self.start_locked(&sb, &mut slot, force).await?;
        Ok(sb.info())
    }

    async fn status(&self, id: &str) -> Result<SandboxInfo> {
        self.sandboxes.info(id)
    }

    async fn list(&self) -> Vec<SandboxInfo> {
        self.sandboxes.infos()
    }

    async fn pause(&self, id: &str) -> Result<()> {
        let sb = self.get(id)?;
        let slot = sb.lifecycle.lock().await;
        let Some(vm) = slot.as_ref() else {
            return Err(crate::registry::stopped(id, "cannot pause"));
        };
        park(&sb, vm.as_ref()).await
    }

    async fn resume(&self, id: &str) -> Result<()> {
        let sb = self.get(id)?;
        let slot = sb.lifecycle.lock().await;
        let Some(vm) = slot.as_ref() else {
            return Err(crate::registry::stopped(id, "cannot resume; start it"));
        };
        wake(&sb, vm.as_ref()).await
    }

    async fn ensure_hot(&self, id: &str) -> Result<Wake> {
        let sb = self.get(id)?;
        let t0 = Instant::now();
        crate::registry::refuse_crashed(id, lock(&sb.fast).state.crash_reason())?;
        let from = lock(&sb.fast).state.thermal();
        if from == Thermal::Hot {
            return Ok(Wake {
                from,
                took: t0.elapsed(),
            });
        }
        let mut slot = sb.lifecycle.lock().await;
        // Concurrent wakes queue on the lifecycle lock: the first wakes
        // it, and the others find it hot and report no wake of their own.
        let from = lock(&sb.fast).state.thermal();
        self.start_locked(&sb, &mut slot, false).await?;
        Ok(Wake {
            from,
            took: t0.elapsed(),
        })
    }

    fn thermal(&self, id: &str) -> Result<Thermal> {
        Ok(lock(&self.get(id)?.fast).state.thermal())
    }

    async fn console(&self, id: &str, bytes: usize) -> Result<String> {
        // The file outlives the VM process (a boot starts it afresh, a
        // restore appends), so a dead sandbox still has it; read off the
        // async threads.
        let path = self.get(id)?.detail.dir.join("console.log");
        tokio::task::spawn_blocking(move || crate::vmm::file_tail(&path, bytes, 0))
            .await
            .map_err(EngineError::from)
    }

    fn agent(&self, id: &str) -> Result<AgentClient> {
        let sb = self.get(id)?;
        let f = lock(&sb.fast);
        crate::registry::hot_agent(id, &f.state, f.agent.as_ref())
    }

    async fn checkpoint(&self, id: &str, dest: &Path) -> Result<CheckpointManifest> {
        self.write_checkpoint(id, dest).await
    }

    async fn save_disk(&self, id: &str, dest: &Path) -> Result<()> {
        self.copy_disk(id, None, dest).await
    }

    async fn copy_attached(&self, id: &str, src: &Path, dest: &Path) -> Result<()> {
        self.copy_disk(id, Some(src), dest).await
    }

    async fn resume_checkpoint(&self, dir: &Path, spec: ResumeSpec) -> Result<SandboxInfo> {
        self.boot_checkpoint(dir, spec).await
    }

    async fn fork(&self, id: &str, spec: ResumeSpec) -> Result<SandboxInfo> {
        self.fork_sandbox(id, spec).await
    }

    async fn set_egress(&self, id: &str, policy: EgressPolicy) -> Result<()> {
        let sb = self.get(id)?;
        // Not while a start builds the namespace with the old policy.
        let _slot = sb.lifecycle.lock().await;
        // The namespace survives stop/start, so a stopped sandbox is changed
        // too; one that is gone (host reboot) is rebuilt with the new policy
        // at the next start.
        if sb.detail.net.netns_path().exists() {
            let (net, n, p) = (self.net.clone(), sb.detail.net.clone(), policy.clone());
            blocking(move || Ok(net.set_egress_policy(&n, &p)?)).await?;
        }
        lock(&sb.fast).egress = policy;
        Ok(())
    }

    fn vm_state(&self, id: &str) -> Option<VmState> {
        let sb = self.get(id).ok()?;
        let f = lock(&sb.fast);
        let mut detail = sb.detail.clone();
        detail.restore_failed = f.restore_failed.clone();
        detail.crashed = f.state.crash_reason().map(str::to_string);
        detail.egress = f.egress.clone();
        Some(VmState {
            engine: self.driver.name().into(),
            id: sb.id.clone(),
            name: sb.name.clone(),
            status: f.state.status(),
            generation: f.generation,
            egress: Some(f.egress.clone()),
            detail: serde_json::to_value(&detail).ok()?,
        })
    }

    async fn recover(&self, state: VmState) -> Result<SandboxInfo> {
        self.recover_sandbox(state).await
    }

    async fn cleanup_orphans(&self, also_keep: &[String]) -> Result<Vec<String>> {
        self.sweep_orphans(also_keep).await
    }

    async fn shutdown(&self, keep_running: bool) {
        self.let_go(keep_running).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_unicast() {
        for _ in 0..100 {
            let m = random_mac();
            let first = u8::from_str_radix(&m[..2], 16).unwrap();
            assert_eq!(first & 0x03, 0x02, "{m}");
            assert_eq!(m.len(), 17);
        }
    }

    #[test]
    fn device_names() {
        assert_eq!(vd(0), "/dev/vda");
        assert_eq!(vd(2), "/dev/vdc");
    }

    #[test]
    fn ids_are_sixteen_hex() {
        let id = random_hex(8);
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
