//! The Docker engine: each sandbox is a container whose entrypoint is lohar in
//! container mode (`lohar container`), driven through dockerd's HTTP API
//! (`bollard`; never the docker CLI).
//!
//! Per sandbox the host keeps a directory `<data_dir>/sandboxes/<id>/` (0700),
//! bind-mounted at `/run/bhatti` in the container. It holds what must not show
//! in `docker inspect`: the agent token (`token`, 0600), the environment for
//! children (`env`, escaped `KEY=VALUE` lines) and the `init` script (`init`).
//! lohar listens on `agent.sock` and `forward.sock` in it, and the host's
//! [`AgentClient`] connects there with [`Transport::Unix`].
//!
//! | Engine call | Docker |
//! |---|---|
//! | create | owner network (created on demand) + container create/start with labels `bhatti.managed`, `bhatti.id`, `bhatti.name`, `bhatti.owner`, `bhatti.data_dir`, `NanoCpus`, `Memory` (= `MemorySwap`, no swap), `PidsLimit`, `no-new-privileges`, no `NET_RAW`/`MKNOD`; waits for the agent; then writes `files` through the agent |
//! | pause / resume (warm) | `docker pause` / `docker unpause` (cgroup freezer: memory kept) |
//! | stop (cold) | `docker stop` (SIGTERM, then SIGKILL after the grace period). The container's filesystem is kept, **processes are not** (`memory_snapshots = false`) |
//! | start | `docker start` + wait for the agent (same schedule as the microVM engine) |
//! | destroy | `docker rm -f`, the sandbox directory, and the owner network once its last container is gone |
//! | checkpoint / resume_checkpoint / fork | unsupported (CRIU checkpoints need experimental dockerd + criu) |
//! | recover | finds the container by its `bhatti.id` label and maps its state (running → hot, paused → warm, exited → cold) |
//! | cleanup_orphans | removes containers labelled with this engine's data dir whose id is unknown, their directories, and empty owner networks |
//!
//! **Networking.** Each owner gets its own user-defined bridge
//! `<prefix>-owner-<n>`; Docker's isolation rules drop traffic between
//! different bridges, so owners cannot reach each other, and containers on the
//! same bridge can. Egress `public` uses that bridge (NAT to the outside);
//! egress `deny` uses a separate `internal` bridge `<prefix>-owner-<n>-internal`
//! (no route out; reaches only the owner's other `deny` sandboxes). A
//! `public` bridge gets [`DockerConfig::egress_blocked`] (link-local, cloud
//! metadata among it, and the private ranges by default) as REJECT rules:
//! one jump from Docker's `DOCKER-USER` chain, tagged
//! `bhatti-egress:<network>`, to a chain of the network's own, with DNS to
//! the host's resolvers kept open (dockerd forwards containers' queries from
//! inside their namespace); only rules with our tags are ever touched. What
//! this engine does not offer: CIDR allow-lists (`EgressPolicy::Allow` is
//! rejected), changing the egress class after create (`set_egress` between
//! `public` and `deny` is `Unsupported`), hiding the host's own services
//! from a `public` sandbox (the bridge gateway is the host), and same-owner
//! reachability across the two egress classes. `Capabilities.egress_policy`
//! is `false` for that reason.
//!
//! **Volumes.** `VolumeAttach.file` must be a *directory* on the host for this
//! engine; it is bind-mounted at `mount` (read-only if asked). As the guest
//! does with its volume mount points, the top directory of a writable volume
//! is chowned to uid/gid 1000 (unless the sandbox runs as root). ext4 images,
//! as the microVM engine uses, cannot be attached.
//!
//! **Layout.** This file holds the engine's bookkeeping and the [`Engine`]
//! calls; `network` the bridges and egress rules, `container` creating,
//! booting and inspecting containers, `recovery` re-adoption, crash
//! probes and orphan clean-up.
//!
//! **Images.** `SandboxSpec.image` names a Docker image reference (its
//! entrypoint must be `lohar container`, see `scripts/docker-image.sh`);
//! `None` is [`DockerConfig::image`]. `disk_size_mb` is ignored: overlay2 can
//! only limit size on xfs with project quotas.

mod container;
mod network;
mod recovery;

use container::{client_for, env_file};

use crate::lock;
use crate::registry::Entry as _;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bhatti_agent_client::{AgentClient, Transport};
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig,
    NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::contract::{
    Capabilities, CheckpointManifest, Engine, EngineError, LifeState, Result, ResumeSpec,
    SandboxInfo, SandboxSpec, Status, Thermal, VmState, VolumeAttach, Wake,
};
use crate::net::{EgressPolicy, Ipv4Cidr, DEFAULT_EGRESS_BLOCKED, DOCKER_TAG_PREFIX};

/// CPUs this process may use (what Docker counts, or fewer under a
/// cgroup quota), at least 1.
fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// The engine's name in `VmState.engine` and errors.
pub const ENGINE: &str = "docker";
/// Where the sandbox directory is mounted in the container.
pub const SOCK_DIR: &str = "/run/bhatti";
/// The default sandbox image (built by `scripts/docker-image.sh`).
pub const DEFAULT_IMAGE: &str = "bhatti/minimal:latest";
const LABEL_MANAGED: &str = "bhatti.managed";
const LABEL_ID: &str = "bhatti.id";
const LABEL_NAME: &str = "bhatti.name";
const LABEL_OWNER: &str = "bhatti.owner";
const LABEL_DATA_DIR: &str = "bhatti.data_dir";
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE_SECS: i32 = 10;

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// `<data_dir>/sandboxes/<id>/` is each sandbox's bind-mounted directory.
    pub data_dir: PathBuf,
    /// Image when a spec names none.
    pub image: String,
    /// Prefix of container and network names (`<prefix>-<id>`,
    /// `<prefix>-owner-<n>`); tests use their own to stay apart.
    pub prefix: String,
    /// How long a start may take until the agent answers.
    pub boot_timeout: Duration,
    /// PIDs limit per container (fork-bomb guard); 0 = none.
    pub pids_limit: i64,
    /// A static lohar to inject into images that do not carry one: it is
    /// hard-linked (or copied) into the sandbox's bind-mounted directory and
    /// becomes the entrypoint (`/run/bhatti/lohar container`), so any image a
    /// host can pull works as a sandbox.
    pub inject_lohar: Option<PathBuf>,
    /// Networks a `public` sandbox may not open connections to (REJECT rules
    /// in `DOCKER-USER` for its owner bridge); default
    /// [`DEFAULT_EGRESS_BLOCKED`]. Empty: no rules at all.
    pub egress_blocked: Vec<Ipv4Cidr>,
}

impl DockerConfig {
    /// The defaults: [`DEFAULT_IMAGE`], prefix `bhatti`, a 30 s boot timeout,
    /// 4096 PIDs per container, no injected lohar and the default egress
    /// block list.
    pub fn new(data_dir: PathBuf) -> DockerConfig {
        DockerConfig {
            data_dir,
            image: DEFAULT_IMAGE.into(),
            prefix: "bhatti".into(),
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            pids_limit: 4096,
            inject_lohar: None,
            egress_blocked: DEFAULT_EGRESS_BLOCKED.to_vec(),
        }
    }
}

/// Persisted per sandbox (VmState.detail).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Detail {
    container: String,
    dir: PathBuf,
    owner_index: u16,
    cpus: u32,
    memory_mb: u32,
    image: String,
    network: String,
    token: String,
    volumes: Vec<VolumeAttach>,
    egress: EgressPolicy,
}

struct Fast {
    state: LifeState,
    generation: u64,
    ip: String,
    agent: Option<AgentClient>,
}

struct Sandbox {
    id: String,
    name: String,
    detail: Detail,
    /// Held across slow transitions so two never interleave.
    lifecycle: tokio::sync::Mutex<()>,
    fast: Mutex<Fast>,
}

impl crate::registry::Entry for Sandbox {
    fn info(&self) -> SandboxInfo {
        let f = lock(&self.fast);
        SandboxInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            status: f.state.status(),
            thermal: f.state.thermal(),
            ip: f.ip.clone(),
            cpus: self.detail.cpus,
            memory_mb: self.detail.memory_mb,
            reason: f.state.crash_reason().map(str::to_string),
        }
    }
}

impl Sandbox {
    fn set(&self, state: LifeState) {
        let mut f = lock(&self.fast);
        if state.thermal() == Thermal::Cold {
            f.agent = None;
        }
        f.state = state;
    }

    fn client(&self) -> AgentClient {
        client_for(&self.detail)
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A Docker error as an engine error; 404 becomes `NotFound(what)`.
fn derr(what: &str) -> impl FnOnce(DockerError) -> EngineError + '_ {
    move |e| match e {
        DockerError::DockerResponseServerError {
            status_code: 404, ..
        } => EngineError::NotFound(what.to_string()),
        e => EngineError::Docker {
            op: what.to_string(),
            source: e,
        },
    }
}

fn is_status(e: &DockerError, code: u16) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// The Docker engine.
pub struct DockerEngine {
    cfg: DockerConfig,
    docker: Docker,
    sandboxes: crate::registry::Registry<Sandbox>,
    /// Serialises network create/remove against container attach/remove, so a
    /// network is never removed while a create is about to use it.
    net_lock: tokio::sync::Mutex<()>,
}

impl DockerEngine {
    /// Connects to dockerd (`DOCKER_HOST`, else `/var/run/docker.sock`),
    /// negotiates the API version and creates `<data_dir>/sandboxes`.
    pub async fn new(cfg: DockerConfig) -> Result<DockerEngine> {
        let docker = Docker::connect_with_defaults().map_err(|source| EngineError::Docker {
            op: "connect".into(),
            source,
        })?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| EngineError::Docker {
                op: "reach dockerd".into(),
                source,
            })?;
        let dir = cfg.data_dir.join("sandboxes");
        std::fs::create_dir_all(&dir)?;
        Ok(DockerEngine {
            cfg,
            docker,
            sandboxes: Default::default(),
            net_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The dockerd client (tests and benchmarks).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The container name of a sandbox.
    pub fn container_name(&self, id: &str) -> String {
        format!("{}-{id}", self.cfg.prefix)
    }

    fn get(&self, id: &str) -> Result<Arc<Sandbox>> {
        self.sandboxes.get(id)
    }

    fn data_dir_label(&self) -> String {
        self.cfg.data_dir.to_string_lossy().into_owned()
    }

    fn insert(&self, sb: Sandbox) -> Arc<Sandbox> {
        let sb = Arc::new(sb);
        self.sandboxes.insert(sb.id.clone(), sb.clone());
        sb
    }
}

#[async_trait]
impl Engine for DockerEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            memory_snapshots: false,
            diff_snapshots: false,
            checkpoints: false,
            egress_policy: false,
            survives_restart: true,
        }
    }

    /// Only a "change" that keeps the sandbox on its network: moving a
    /// container between the owner's bridge and its internal network would
    /// change its address under running processes, and allow-lists cannot
    /// be expressed at all.
    async fn set_egress(&self, id: &str, policy: EgressPolicy) -> Result<()> {
        let sb = self.get(id)?;
        if matches!(policy, EgressPolicy::Allow(_)) {
            return Err(EngineError::Unsupported {
                engine: ENGINE,
                what: "egress allow-lists (only public and deny)".into(),
            });
        }
        if self.network_name(sb.detail.owner_index, &policy) != sb.detail.network {
            return Err(EngineError::Unsupported {
                engine: ENGINE,
                what: "changing egress between public and deny after create (create a new sandbox)"
                    .into(),
            });
        }
        Ok(())
    }

    async fn create(&self, spec: SandboxSpec) -> Result<SandboxInfo> {
        if spec.cpus == 0 || spec.memory_mb < 128 {
            return Err(EngineError::Invalid(
                "a sandbox needs at least 1 vCPU and 128 MB of memory".into(),
            ));
        }
        if let EgressPolicy::Allow(_) = spec.egress {
            return Err(EngineError::Unsupported {
                engine: ENGINE,
                what: "egress allow-lists (only public and deny)".into(),
            });
        }
        for v in &spec.volumes {
            if !v.file.is_dir() {
                return Err(EngineError::Invalid(format!(
                    "volume {:?}: {} must be a directory on the host for the docker engine",
                    v.name,
                    v.file.display()
                )));
            }
            if !v.mount.starts_with('/') || v.mount.contains(':') {
                return Err(EngineError::Invalid(format!(
                    "volume {:?}: bad mount point {:?}",
                    v.name, v.mount
                )));
            }
        }
        if !spec.run_as_root {
            // As the guest does for its volume mounts: the sandbox user owns
            // the top of a writable volume.
            for v in spec.volumes.iter().filter(|v| !v.read_only) {
                std::os::unix::fs::chown(&v.file, Some(1000), Some(1000))?;
            }
        }
        if spec.disk_size_mb > 0 {
            tracing::debug!("docker engine ignores disk_size_mb");
        }
        let env = env_file(&spec.env)?;
        let id = crate::contract::checked_id(spec.id.as_deref(), || random_hex(8))?;
        let dir = self.cfg.data_dir.join("sandboxes").join(&id);
        let token = random_hex(16);
        let detail = Detail {
            container: self.container_name(&id),
            dir: dir.clone(),
            owner_index: spec.owner_index,
            cpus: spec.cpus,
            memory_mb: spec.memory_mb,
            image: spec
                .image
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.cfg.image.clone()),
            network: self.network_name(spec.owner_index, &spec.egress),
            token: token.clone(),
            volumes: spec.volumes.clone(),
            egress: spec.egress.clone(),
        };
        let res = async {
            // The sandbox's private directory (bind-mounted at the agent's
            // socket dir) and what lohar reads at start; synced, so off the
            // async threads.
            let (d, init) = (dir.clone(), spec.init.clone());
            let (token, env) = (token.clone(), env.clone());
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&d)?;
                bhatti_durable::write(&d.join("token"), token.as_bytes(), 0o600)?;
                bhatti_durable::write(&d.join("env"), env.as_bytes(), 0o600)?;
                if !init.is_empty() {
                    bhatti_durable::write(&d.join("init"), init.as_bytes(), 0o600)?;
                }
                Ok::<_, std::io::Error>(())
            })
            .await??;
            {
                let _g = self.net_lock.lock().await;
                self.ensure_network(
                    &detail.network,
                    spec.owner_index,
                    matches!(spec.egress, EgressPolicy::Deny),
                )
                .await?;
                self.ensure_egress_block(&detail.network, &spec.egress)
                    .await?;
                self.create_container(&id, &spec, &detail).await?;
            }
            let ip = self.boot(&detail).await?;
            self.write_files(&client_for(&detail), &spec).await?;
            Ok::<_, EngineError>(ip)
        }
        .await;
        let ip = match res {
            Ok(ip) => ip,
            Err(e) => {
                let _g = self.net_lock.lock().await;
                let _ = self.remove_container(&detail.container).await;
                self.remove_network_if_empty(&detail.network).await;
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
        };
        let sb = Sandbox {
            id: id.clone(),
            name: spec.name.clone(),
            lifecycle: tokio::sync::Mutex::new(()),
            fast: Mutex::new(Fast {
                state: LifeState::Running(Thermal::Hot),
                generation: 1,
                ip,
                agent: None,
            }),
            detail,
        };
        lock(&sb.fast).agent = Some(sb.client().reusing());
        Ok(self.insert(sb).info())
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        let sb = self.get(id)?;
        let _l = sb.lifecycle.lock().await;
        {
            let _g = self.net_lock.lock().await;
            self.remove_container(&sb.detail.container).await?;
            self.remove_network_if_empty(&sb.detail.network).await;
        }
        if let Err(e) = tokio::fs::remove_dir_all(&sb.detail.dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(id, error = %e, "removing the sandbox directory failed");
            }
        }
        sb.set(LifeState::Stopped);
        self.sandboxes.remove(id);
        Ok(())
    }

    async fn stop(&self, id: &str) -> Result<()> {
        let sb = self.get(id)?;
        let _l = sb.lifecycle.lock().await;
        let thermal = lock(&sb.fast).state.thermal();
        if thermal == Thermal::Cold {
            return Ok(());
        }
        lock(&sb.fast).agent = None;
        if thermal == Thermal::Warm {
            // A frozen container cannot handle SIGTERM.
            let _ = self.docker.unpause_container(&sb.detail.container).await;
        }
        let opts = StopContainerOptionsBuilder::default()
            .t(STOP_GRACE_SECS)
            .build();
        match self
            .docker
            .stop_container(&sb.detail.container, Some(opts))
            .await
        {
            Ok(()) => {}
            Err(e) if is_status(&e, 304) => {} // already stopped
            Err(e) => {
                if thermal == Thermal::Hot {
                    lock(&sb.fast).agent = Some(sb.client().reusing());
                }
                return Err(derr(&sb.detail.container)(e));
            }
        }
        sb.set(LifeState::Stopped);
        Ok(())
    }

    async fn start(&self, id: &str, _force: bool) -> Result<SandboxInfo> {
        let sb = self.get(id)?;
        let _l = sb.lifecycle.lock().await;
        self.start_locked(&sb).await?;
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
        let _l = sb.lifecycle.lock().await;
        match lock(&sb.fast).state.thermal() {
            Thermal::Hot => {}
            Thermal::Warm => return Ok(()),
            Thermal::Cold => return Err(crate::registry::stopped(id, "cannot pause")),
        }
        self.docker
            .pause_container(&sb.detail.container)
            .await
            .map_err(derr(&sb.detail.container))?;
        sb.set(LifeState::Running(Thermal::Warm));
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<()> {
        let sb = self.get(id)?;
        let _l = sb.lifecycle.lock().await;
        match lock(&sb.fast).state.thermal() {
            Thermal::Hot => return Ok(()),
            Thermal::Warm => {}
            Thermal::Cold => return Err(crate::registry::stopped(id, "cannot resume; start it")),
        }
        self.docker
            .unpause_container(&sb.detail.container)
            .await
            .map_err(derr(&sb.detail.container))?;
        sb.set(LifeState::Running(Thermal::Hot));
        Ok(())
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
        let _l = sb.lifecycle.lock().await;
        // Concurrent wakes queue on the lifecycle lock: the first wakes
        // it, and the others find it hot and report no wake of their own.
        let from = lock(&sb.fast).state.thermal();
        self.start_locked(&sb).await?;
        Ok(Wake {
            from,
            took: t0.elapsed(),
        })
    }

    fn thermal(&self, id: &str) -> Result<Thermal> {
        Ok(lock(&self.get(id)?.fast).state.thermal())
    }

    fn agent(&self, id: &str) -> Result<AgentClient> {
        let sb = self.get(id)?;
        let f = lock(&sb.fast);
        crate::registry::hot_agent(id, &f.state, f.agent.as_ref())
    }

    async fn checkpoint(&self, _id: &str, _dest: &Path) -> Result<CheckpointManifest> {
        Err(EngineError::Unsupported {
            engine: ENGINE,
            what: "checkpoints (processes cannot be snapshotted)".into(),
        })
    }

    async fn resume_checkpoint(&self, _dir: &Path, _spec: ResumeSpec) -> Result<SandboxInfo> {
        Err(EngineError::Unsupported {
            engine: ENGINE,
            what: "resuming checkpoints".into(),
        })
    }

    async fn fork(&self, _id: &str, _spec: ResumeSpec) -> Result<SandboxInfo> {
        Err(EngineError::Unsupported {
            engine: ENGINE,
            what: "forks (processes cannot be snapshotted)".into(),
        })
    }

    async fn console(&self, id: &str, bytes: usize) -> Result<String> {
        let sb = self.get(id)?;
        self.logs(&sb.detail.container, "all", bytes).await
    }

    /// A container that died (killed, out of memory, dockerd restarted)
    /// while the sandbox was running: the sandbox becomes `crashed`, with
    /// its exit. Skipped while a transition holds the sandbox.
    async fn probe(&self, id: &str) -> Result<()> {
        self.probe_container(id).await
    }

    fn vm_state(&self, id: &str) -> Option<VmState> {
        let sb = self.get(id).ok()?;
        let f = lock(&sb.fast);
        Some(VmState {
            engine: ENGINE.into(),
            id: sb.id.clone(),
            name: sb.name.clone(),
            status: f.state.status(),
            generation: f.generation,
            egress: Some(sb.detail.egress.clone()),
            detail: serde_json::to_value(&sb.detail).ok()?,
        })
    }

    async fn recover(&self, state: VmState) -> Result<SandboxInfo> {
        self.recover_sandbox(state).await
    }

    async fn cleanup_orphans(&self, also_keep: &[String]) -> Result<Vec<String>> {
        self.remove_orphans(also_keep).await
    }

    async fn shutdown(&self, _keep_running: bool) {
        // Containers keep running across a daemon restart (recover() finds
        // them) either way; nothing is killed here. Agents are dropped.
        let all: Vec<Arc<Sandbox>> = self.sandboxes.all();
        for sb in all {
            lock(&sb.fast).agent = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_escapes_and_rejects_bad_names() {
        let env = BTreeMap::from([
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x\ny\\z".to_string()),
        ]);
        assert_eq!(env_file(&env).unwrap(), "A=1\nB=x\\ny\\\\z\n");
        let bad = BTreeMap::from([("A=B".to_string(), String::new())]);
        assert!(env_file(&bad).is_err());
    }

    #[tokio::test]
    async fn owner_networks_and_tags() {
        let Ok(docker) = Docker::connect_with_defaults() else {
            return;
        };
        let e = DockerEngine {
            cfg: DockerConfig {
                prefix: "bhatti".into(),
                ..DockerConfig::new(PathBuf::from("/nonexistent"))
            },
            docker,
            sandboxes: Default::default(),
            net_lock: tokio::sync::Mutex::new(()),
        };
        assert!(e.is_owner_network("bhatti-owner-3"));
        assert!(e.is_owner_network("bhatti-owner-12-internal"));
        assert!(!e.is_owner_network("bhatti-x-owner-3"));
        assert!(!e.is_owner_network("bhatti-owner-owner-3"));
        assert!(!e.is_owner_network("bhatti-owner-"));
        assert_eq!(
            network::block_tag("bhatti-owner-3"),
            "bhatti-egress:bhatti-owner-3"
        );
        assert_eq!(
            e.cfg.egress_blocked,
            crate::net::DEFAULT_EGRESS_BLOCKED.to_vec()
        );
    }

    #[test]
    fn ids_are_sixteen_hex() {
        let id = random_hex(8);
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
