//! Template snapshots: create by restoring a booted image instead of
//! booting it.
//!
//! A full boot under TCG takes over a second; restoring memory takes a
//! fraction of that. So for each image and shape (vCPUs, memory) the engine
//! boots one template sandbox once, waits for its services, checkpoints it
//! (memory, devices, disks, checked manifest) into
//! `<data_dir>/templates/<key>/` and destroys it. A create that fits a
//! template restores a copy of it, then makes it this sandbox through the
//! agent's APPLY_CONFIG: hostname, env, files, init, the host's clock, a
//! fresh token (the template's is refused from then on) and fresh entropy
//! credited to the kernel, so no two sandboxes share a token or RNG state.
//! The sandbox's config drive is rewritten too, so a later fresh boot (after
//! a crash) comes up as this sandbox, not as the template.
//!
//! The key is a hash of everything the memory image depends on: the image
//! and kernel files (path, size, modification time, inode), the kernel
//! command line, the VMM and its version, the shape, and the guest config
//! the template booted with. Changing any of them is a new key; templates of
//! the same image and shape under an older key are removed when the new one
//! is made. A create that does not fit (volumes, a bigger disk, another user
//! or working directory) boots as before, and so does a miss, which starts
//! the template's build in the background (one at a time).
//!
//! What is shared: every sandbox made from one template has the template's
//! guest MAC address. Each sandbox has its own network namespace and tap, so
//! the address never meets another's on a link; see docs/decisions.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bhatti_agent_client::{AgentClient, ApplyConfig, Transport};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{disk, random_hex, MicroVmEngine};
use crate::contract::{Engine, EngineError, Result, ResumeSpec, SandboxInfo, SandboxSpec};
use crate::lock;

/// Bumped when what a template holds changes meaning.
const TEMPLATE_FORMAT: u32 = 1;
/// Under `<data_dir>`.
const TEMPLATES_DIR: &str = "templates";
/// Random bytes credited to each restored guest's entropy pool.
const ENTROPY_BYTES: usize = 64;
/// How long a template's boot may take to start its services before it is
/// checkpointed anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Template state shared by the engine's creates.
#[derive(Default)]
pub(super) struct Templates {
    /// The engine itself, for background builds; set by
    /// [`MicroVmEngine::enable_templates`] (templates are off until then).
    pub(super) me: std::sync::OnceLock<Weak<MicroVmEngine>>,
    /// Keys whose build is running.
    building: Mutex<BTreeSet<String>>,
    /// The build task, awaited when the daemon stops.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The daemon is stopping: no build starts, and a running one winds
    /// down (its VM destroyed) at its next step.
    pub(super) stopping: std::sync::atomic::AtomicBool,
}

/// Which template a create would use.
pub(super) struct Fit {
    pub(super) key: String,
    /// The image and shape, without the files' identities: templates with
    /// the same origin and another key are stale.
    origin: String,
    image: PathBuf,
}

fn file_identity(p: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(p)?;
    Ok(format!(
        "{}:{}:{}.{}:{}",
        p.display(),
        md.len(),
        md.mtime(),
        md.mtime_nsec(),
        md.ino()
    ))
}

impl MicroVmEngine {
    /// Turns template snapshots on: creates that fit restore a template of
    /// their image and shape, and a miss builds one in the background.
    pub fn enable_templates(self: &Arc<Self>) {
        let _ = self.templates.me.set(Arc::downgrade(self));
    }

    pub(super) fn templates_dir(&self) -> PathBuf {
        self.cfg.data_dir.join(TEMPLATES_DIR)
    }

    /// The template `spec` would use, if templates are on and it fits one.
    pub(super) fn fit(&self, spec: &SandboxSpec, image: &Path) -> Option<Fit> {
        self.templates.me.get()?;
        let fits = spec.volumes.is_empty()
            && spec.disk_size_mb == 0
            && !spec.run_as_root
            && (spec.user.is_empty() || spec.user == "lohar")
            && spec.cwd.is_empty();
        if !fits {
            return None;
        }
        let origin = format!(
            "format={TEMPLATE_FORMAT}\nimage={}\ncpus={}\nmemory_mb={}\n",
            image.display(),
            spec.cpus,
            spec.memory_mb
        );
        let idents = (file_identity(image), file_identity(&self.cfg.kernel));
        let (Ok(img), Ok(kernel)) = idents else {
            return None;
        };
        let material = format!(
            "{origin}image_file={img}\nkernel_file={kernel}\ncmdline={}\nvmm={} {}\ndns_internal={}\n",
            self.cmdline(),
            self.driver.name(),
            self.driver.version(),
            self.cfg.dns_internal
        );
        Some(Fit {
            key: hex::encode(Sha256::digest(material.as_bytes())),
            origin,
            image: image.to_path_buf(),
        })
    }

    /// A sandbox for `spec` from its template, `None` when there is none
    /// (or templates are off): then the caller boots, and a build starts.
    /// An unusable template is removed and `None` returned.
    pub(super) async fn create_from_template(
        &self,
        id: &str,
        spec: &SandboxSpec,
        image: &Path,
    ) -> Option<SandboxInfo> {
        let fit = self.fit(spec, image)?;
        let dir = self.templates_dir().join(&fit.key);
        if !dir.is_dir() {
            self.start_build(fit, spec);
            return None;
        }
        let t0 = Instant::now();
        let apply = self.claim(id, spec);
        let resume = ResumeSpec {
            id: Some(id.to_string()),
            name: spec.name.clone(),
            owner_index: spec.owner_index,
            egress: Some(spec.egress.clone()),
        };
        let new_cfg = self.guest_config(id, &apply.token, spec);
        match self
            .restore_checkpoint(&dir, resume, Some((apply, new_cfg)))
            .await
        {
            Ok(info) => {
                tracing::info!(id, template = %fit.key, took = ?t0.elapsed(), "created from a template snapshot");
                Some(info)
            }
            Err(e) => {
                tracing::warn!(id, template = %fit.key, "template restore failed, booting instead (the template is removed): {e}");
                let _ = tokio::fs::remove_dir_all(&dir).await;
                None
            }
        }
    }

    /// What makes a restored template this sandbox.
    pub(super) fn claim(&self, id: &str, spec: &SandboxSpec) -> ApplyConfig {
        ApplyConfig {
            hostname: if spec.name.is_empty() {
                id.to_string()
            } else {
                spec.name.clone()
            },
            env: spec.env.clone(),
            files: super::config_files(spec),
            token: random_hex(16),
            entropy: fresh_entropy(),
            init: spec.init.clone(),
            unix_time_ms: now_ms(),
            mac: super::random_mac(),
        }
    }

    /// The guest took `apply` (its token and entropy checked by
    /// [`send_claim`](Self::send_claim)): the sandbox's token is the new
    /// one, and if the guest also took the MAC address (`taken`), the
    /// namespace's neighbour entry follows and the sandbox keeps it (a later
    /// restore starts its VMM with it). An agent that could not keeps the
    /// template's, and so does the host.
    pub(super) async fn adopt_claim(
        &self,
        detail: &mut super::sandbox::Detail,
        apply: &ApplyConfig,
        taken: bool,
    ) -> Result<()> {
        detail.token = apply.token.clone();
        if !taken || apply.mac.is_empty() {
            tracing::debug!(mac = %detail.mac, "the claimed guest keeps its template's MAC address");
            return Ok(());
        }
        let (net, n, mac) = (self.net.clone(), detail.net.clone(), apply.mac.clone());
        detail.net = super::blocking(move || Ok(net.set_guest_mac(&n, &mac)?)).await?;
        detail.mac = apply.mac.clone();
        Ok(())
    }

    /// A guest restored from a checkpoint that is not a template (a fork,
    /// a resumed checkpoint) would share its source's RNG state, MAC
    /// address and agent token with the source and with every other restore
    /// of it: it gets fresh entropy, the clock, a MAC address and a token of
    /// its own. Its config drive (a copy of the source's) is rewritten with
    /// that token at the same time, so a guest that reboots from it still
    /// answers the host. A guest whose agent predates APPLY_CONFIG keeps all
    /// of it, with a warning.
    pub(super) async fn reseed(&self, detail: &mut super::sandbox::Detail) -> Result<()> {
        let client = detail.client();
        // The drive is read while the agent answers; it is needed only if
        // the agent can take the new token.
        let drive = detail.dir.join("config.ext4");
        let (hello, cfg) = tokio::join!(client.hello(), disk::read_config_drive(&drive));
        let hello = hello
            .map_err(|e| EngineError::Invalid(format!("reseeding the restored guest: {e}")))?;
        if !hello.is_some_and(|h| {
            h.features
                .iter()
                .any(|f| f == bhatti_agent_client::FEATURE_CONFIG_APPLY)
        }) {
            tracing::warn!(mac = %detail.mac, "the restored guest's agent cannot take APPLY_CONFIG: it keeps its source's RNG state, MAC address and token");
            return Ok(());
        }
        let apply = ApplyConfig {
            entropy: fresh_entropy(),
            unix_time_ms: now_ms(),
            mac: super::random_mac(),
            token: random_hex(16),
            ..ApplyConfig::default()
        };
        let mut cfg = cfg?;
        cfg.token = apply.token.clone();
        let taken = self
            .apply_claim(&detail.dir, detail.net.ext_ip, &detail.token, &apply, &cfg)
            .await?;
        self.adopt_claim(detail, &apply, taken).await
    }

    /// Sends the claim to a restored guest's agent (reached with the token
    /// it has: a template's, or a fork's source's) and, at the same time,
    /// writes the sandbox's own config drive.
    pub(super) async fn apply_claim(
        &self,
        dir: &Path,
        ip: std::net::Ipv4Addr,
        template_token: &str,
        apply: &ApplyConfig,
        cfg: &bhatti_protocol::config::GuestConfig,
    ) -> Result<bool> {
        tokio::try_join!(
            self.send_claim(
                Transport::Tcp {
                    addr: std::net::IpAddr::V4(ip)
                },
                template_token,
                apply
            ),
            write_claim_drive(dir, cfg)
        )
        .map(|(mac, ())| mac)
    }

    /// Sends the claim to a restored template's agent, reached with the
    /// template's token. Whether the guest took the claim's MAC address.
    pub(super) async fn send_claim(
        &self,
        to: Transport,
        template_token: &str,
        apply: &ApplyConfig,
    ) -> Result<bool> {
        let client = AgentClient::new(to, Some(template_token.to_string()));
        let r = client.apply_config(apply).await.map_err(|e| {
            EngineError::Invalid(format!("applying the sandbox's configuration: {e}"))
        })?;
        if !r.token || r.entropy_bytes == 0 {
            return Err(EngineError::Invalid(format!(
                "the guest did not take the new token and entropy ({r:?})"
            )));
        }
        Ok(r.mac)
    }

    /// Starts building `fit`'s template in the background, unless one is
    /// being built already.
    pub(super) fn start_build(&self, fit: Fit, spec: &SandboxSpec) {
        let Some(me) = self.templates.me.get().and_then(Weak::upgrade) else {
            return;
        };
        if self.templates.stopping.load(Ordering::Acquire) {
            return;
        }
        {
            // One build at a time, whatever the key: each is a full boot.
            let mut building = lock(&self.templates.building);
            if !building.is_empty() {
                return;
            }
            building.insert(fit.key.clone());
        }
        let (cpus, memory_mb, owner_index) = (spec.cpus, spec.memory_mb, spec.owner_index);
        let task = tokio::spawn(async move {
            let key = fit.key.clone();
            let t0 = Instant::now();
            match me.build_template(&fit, cpus, memory_mb, owner_index).await {
                Ok(()) => {
                    tracing::info!(template = %key, took = ?t0.elapsed(), "template snapshot built")
                }
                Err(e) => tracing::warn!(template = %key, "template snapshot not built: {e}"),
            }
            lock(&me.templates.building).remove(&key);
        });
        *lock(&self.templates.task) = Some(task);
    }

    /// The daemon stops: no more builds, and a running one is waited for
    /// (it destroys its VM at its next step, so no VMM is left behind).
    pub(super) async fn stop_templates(&self) {
        self.templates.stopping.store(true, Ordering::Release);
        let task = lock(&self.templates.task).take();
        if let Some(t) = task {
            let limit = self.cfg.boot_timeout.saturating_add(SETTLE_TIMEOUT);
            if tokio::time::timeout(limit, t).await.is_err() {
                tracing::warn!("a template build did not wind down in {limit:?}");
            }
        }
    }

    fn stopping(&self) -> Result<()> {
        if self.templates.stopping.load(Ordering::Acquire) {
            return Err(EngineError::Invalid("the daemon is stopping".into()));
        }
        Ok(())
    }

    /// Boots the template, lets its services start, checkpoints it and
    /// destroys it; then removes stale templates of the same origin.
    async fn build_template(
        &self,
        fit: &Fit,
        cpus: u32,
        memory_mb: u32,
        owner_index: u16,
    ) -> Result<()> {
        let root = self.templates_dir();
        tokio::fs::create_dir_all(&root).await?;
        let id = random_hex(8);
        let spec = SandboxSpec {
            id: Some(id.clone()),
            name: "template".into(),
            owner_index,
            image: Some(fit.image.clone()),
            cpus,
            memory_mb,
            ..SandboxSpec::default()
        };
        // A plain boot: `boot` never looks for a template.
        self.boot(&id, spec).await?;
        let res = async {
            self.stopping()?;
            let client = self.agent(&id)?;
            // Units started (lohar records it), so they are up in every copy.
            let until = Instant::now()
                .checked_add(SETTLE_TIMEOUT)
                .unwrap_or_else(Instant::now);
            loop {
                let r = client
                    .exec([
                        "sh",
                        "-c",
                        "grep -q units_started_ms= /run/bhatti/boot-timing.txt",
                    ])
                    .await;
                if matches!(&r, Ok(x) if x.exit_code == 0) || Instant::now() >= until {
                    break;
                }
                self.stopping()?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let dest = root.join(&fit.key);
            self.stopping()?;
            self.write_checkpoint(&id, &dest).await?;
            tokio::fs::write(root.join(format!("{}.origin", fit.key)), &fit.origin).await?;
            Ok::<_, EngineError>(())
        }
        .await;
        if let Err(e) = self.destroy(&id).await {
            tracing::warn!(id, "template VM not destroyed: {e}");
        }
        res?;
        self.prune_templates(&fit.origin, &fit.key).await;
        Ok(())
    }

    /// Removes templates of `origin` other than `keep` (their image, kernel
    /// or VMM changed since).
    async fn prune_templates(&self, origin: &str, keep: &str) {
        let root = self.templates_dir();
        let Ok(mut rd) = tokio::fs::read_dir(&root).await else {
            return;
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".origin") else {
                continue;
            };
            if key == keep {
                continue;
            }
            if tokio::fs::read_to_string(e.path()).await.ok().as_deref() == Some(origin) {
                let _ = tokio::fs::remove_dir_all(root.join(key)).await;
                let _ = tokio::fs::remove_file(e.path()).await;
                tracing::info!(template = key, "stale template snapshot removed");
            }
        }
    }
}

/// The claimed (or reseeded) sandbox's config drive, beside the file the
/// VMM has open (a fresh boot after a crash reads this one and comes up as
/// this sandbox, not as the template or the fork's source).
pub(super) async fn write_claim_drive(
    dir: &Path,
    cfg: &bhatti_protocol::config::GuestConfig,
) -> Result<()> {
    let tmp = dir.join("config.ext4.new");
    disk::build_config_drive(cfg, &tmp).await?;
    tokio::fs::rename(&tmp, dir.join("config.ext4")).await?;
    Ok(())
}

/// Entropy for a guest's pool, base64 as APPLY_CONFIG carries it.
pub(super) fn fresh_entropy() -> String {
    let mut entropy = [0u8; ENTROPY_BYTES];
    rand::thread_rng().fill_bytes(&mut entropy);
    base64::engine::general_purpose::STANDARD.encode(entropy)
}

/// The host's clock for a guest to take, ms since the epoch.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
