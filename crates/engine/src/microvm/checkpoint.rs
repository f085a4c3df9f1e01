//! Named checkpoints (memory, devices and disks of a running sandbox,
//! written atomically with a checked manifest), disk copies, and new
//! sandboxes resumed from a checkpoint (restores and forks).

use std::path::Path;

use bhatti_agent_client::ApplyConfig;
use bhatti_protocol::config::GuestConfig;

use super::sandbox::Detail;
use super::{blocking, disk, persist, random_hex, MicroVmEngine, CHECKPOINT_VERSION};
use crate::contract::{
    CheckpointManifest, CheckpointVolume, Engine, EngineError, Result, ResumeSpec, SandboxInfo,
    VolumeAttach,
};
use crate::lock;
use crate::vmm::SnapshotKind;

impl MicroVmEngine {
    /// A named checkpoint of `id` into `dest` (see `Engine::checkpoint`).
    pub(super) async fn write_checkpoint(
        &self,
        id: &str,
        dest: &Path,
    ) -> Result<CheckpointManifest> {
        let sb = self.get(id)?;
        if dest.exists() {
            return Err(EngineError::Invalid(format!(
                "checkpoint {} already exists",
                dest.display()
            )));
        }
        let slot = sb.lifecycle.lock().await;
        let Some(vm) = slot.as_ref() else {
            return Err(crate::registry::stopped(
                id,
                "start it before taking a checkpoint",
            ));
        };
        let was_hot = self.quiesce(&sb, vm.as_ref()).await?;
        // The snapshot below resets the VMM's dirty-page log.
        lock(&sb.fast).diff_base = None;
        let stage = persist::staging_dir(dest)?;
        let res = async {
            let _ = tokio::fs::remove_dir_all(&stage).await;
            let files = vm
                .snapshot(&stage, SnapshotKind::Full)
                .await
                .map_err(EngineError::Vmm)?;
            // Disks are copied while the guest is paused, so they match memory.
            disk::cow_copy(
                &sb.detail.dir.join("rootfs.ext4"),
                &stage.join("rootfs.ext4"),
            )
            .await?;
            disk::cow_copy(
                &sb.detail.dir.join("config.ext4"),
                &stage.join("config.ext4"),
            )
            .await?;
            let mut vols = Vec::new();
            for (i, v) in sb.detail.volumes.iter().enumerate() {
                let file = format!("vol{i}-{}.ext4", v.name);
                disk::cow_copy(&v.file, &stage.join(&file)).await?;
                vols.push(CheckpointVolume {
                    name: v.name.clone(),
                    file,
                    mount: v.mount.clone(),
                    read_only: v.read_only,
                });
            }
            let (stage2, dest2) = (stage.clone(), dest.to_path_buf());
            let detail = sb.detail.clone();
            let egress = lock(&sb.fast).egress.clone();
            let (sid, vmm_version) = (sb.id.clone(), self.driver.version());
            let engine = self.driver.name().to_string();
            blocking(move || {
                let (files_map, checksums) = persist::inventory(&stage2)?;
                let m = CheckpointManifest {
                    format_version: CHECKPOINT_VERSION,
                    engine,
                    vmm_version,
                    created_from: sid,
                    created_at_unix: persist::now_unix(),
                    cpus: detail.cpus,
                    memory_mb: detail.memory_mb,
                    guest_mac: detail.mac.clone(),
                    agent_token: detail.token.clone(),
                    volumes: vols,
                    files: files_map,
                    checksums,
                    vmm: serde_json::to_value(&files)?,
                    egress: Some(egress),
                };
                persist::seal(&stage2, &m)?;
                persist::commit(&stage2, &dest2)?;
                Ok(m)
            })
            .await
        }
        .await;
        self.unquiesce(&sb, vm.as_ref(), was_hot).await;
        if res.is_err() {
            let _ = tokio::fs::remove_dir_all(&stage).await;
        }
        res
    }

    /// A copy of `id`'s root disk at `dest` (see `Engine::save_disk`).
    /// Sandbox `id`'s root disk, or `src` (a volume attached to it), copied
    /// to `dest` with the guest synced and paused for the copy.
    pub(super) async fn copy_disk(&self, id: &str, src: Option<&Path>, dest: &Path) -> Result<()> {
        let sb = self.get(id)?;
        let rootfs = sb.detail.dir.join("rootfs.ext4");
        let src = src.unwrap_or(&rootfs);
        let tmp = dest.with_file_name(format!(
            ".{}.tmp-{:08x}",
            dest.file_name().and_then(|n| n.to_str()).unwrap_or("disk"),
            rand::random::<u32>()
        ));
        // The lifecycle lock keeps a stop, start or thermal move out while
        // the disk is copied.
        let slot = sb.lifecycle.lock().await;
        let res = match slot.as_ref() {
            Some(vm) => {
                let was_hot = self.quiesce(&sb, vm.as_ref()).await?;
                let r = disk::cow_copy(src, &tmp).await;
                self.unquiesce(&sb, vm.as_ref(), was_hot).await;
                r
            }
            // Stopped or cold: no VMM holds the disk; it is as the guest
            // left it when it was synced and snapshotted.
            None => disk::cow_copy(src, &tmp).await,
        };
        drop(slot);
        let res = match res {
            Ok(()) => tokio::fs::rename(&tmp, dest)
                .await
                .map_err(EngineError::from),
            Err(e) => Err(e),
        };
        if res.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        res
    }

    /// A new sandbox restored from the checkpoint in `dir`.
    pub(super) async fn boot_checkpoint(
        &self,
        dir: &Path,
        spec: ResumeSpec,
    ) -> Result<SandboxInfo> {
        self.restore_checkpoint(dir, spec, None).await
    }

    /// [`boot_checkpoint`](Self::boot_checkpoint), and with `claim` (a
    /// template restore) the restored guest is made the new sandbox (see
    /// `template`) before it is registered: a claim that fails is a create
    /// that failed, with nothing left behind.
    pub(super) async fn restore_checkpoint(
        &self,
        dir: &Path,
        spec: ResumeSpec,
        claim: Option<(ApplyConfig, GuestConfig)>,
    ) -> Result<SandboxInfo> {
        let (m, vmm) = self.load_checkpoint(dir).await?;
        let id = crate::contract::checked_id(spec.id.as_deref(), || random_hex(8))?;
        // The request's policy, else the one the checkpoint recorded.
        let egress = spec
            .egress
            .clone()
            .or_else(|| m.egress.clone())
            .unwrap_or_default();
        let (sdir, mut rb) = self.new_sandbox_dir(&id).await?;
        let res = async {
            let volumes = self.copy_checkpoint_disks(dir, &sdir, &m).await?;
            let net = self
                .setup_net(&id, spec.owner_index, &m.guest_mac, &egress, None)
                .await?;
            rb.net = Some(net.clone());
            let mut detail = Detail {
                dir: sdir.clone(),
                owner_index: spec.owner_index,
                cpus: m.cpus,
                memory_mb: m.memory_mb,
                mac: m.guest_mac.clone(),
                token: m.agent_token.clone(),
                net,
                volumes,
                egress: egress.clone(),
                restore_failed: None,
                crashed: None,
            };
            let vm = self.launch(&id, &detail, Some(&vmm)).await?;
            if let Some((apply, cfg)) = &claim {
                let claimed = async {
                    let mac = self
                        .apply_claim(&sdir, detail.net.ext_ip, &detail.token, apply, cfg)
                        .await?;
                    self.adopt_claim(&mut detail, apply, mac).await
                }
                .await;
                if let Err(e) = claimed {
                    let _ = vm.kill().await;
                    return Err(e);
                }
            } else if let Err(e) = self.reseed(&mut detail).await {
                let _ = vm.kill().await;
                return Err(e);
            }
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

    /// The checked manifest of the checkpoint in `dir`, and its VMM files
    /// (there), refused if another engine or format wrote it.
    pub(super) async fn load_checkpoint(
        &self,
        dir: &Path,
    ) -> Result<(CheckpointManifest, crate::vmm::SnapshotFiles)> {
        let d = dir.to_path_buf();
        let m: CheckpointManifest = blocking(move || {
            persist::load_checked(&d, |m: &CheckpointManifest| (&m.files, &m.checksums))
        })
        .await?;
        if m.format_version != CHECKPOINT_VERSION || m.engine != self.driver.name() {
            return Err(EngineError::Invalid(format!(
                "checkpoint was written by {} (format {}); this engine is {} (format {CHECKPOINT_VERSION})",
                m.engine,
                m.format_version,
                self.driver.name()
            )));
        }
        let mut vmm: crate::vmm::SnapshotFiles = serde_json::from_value(m.vmm.clone())?;
        vmm.dir = dir.to_path_buf();
        Ok((m, vmm))
    }

    /// Copies (CoW) the disks of checkpoint `dir` into sandbox directory
    /// `sdir`; returns the volumes as attached there.
    pub(super) async fn copy_checkpoint_disks(
        &self,
        dir: &Path,
        sdir: &Path,
        m: &CheckpointManifest,
    ) -> Result<Vec<VolumeAttach>> {
        disk::cow_copy(&dir.join("rootfs.ext4"), &sdir.join("rootfs.ext4")).await?;
        disk::cow_copy(&dir.join("config.ext4"), &sdir.join("config.ext4")).await?;
        let mut volumes = Vec::new();
        for v in &m.volumes {
            let file = sdir.join(&v.file);
            disk::cow_copy(&dir.join(&v.file), &file).await?;
            volumes.push(VolumeAttach {
                name: v.name.clone(),
                file,
                mount: v.mount.clone(),
                read_only: v.read_only,
            });
        }
        Ok(volumes)
    }

    /// A checkpoint of `id` resumed as a new sandbox.
    pub(super) async fn fork_sandbox(&self, id: &str, spec: ResumeSpec) -> Result<SandboxInfo> {
        let scratch = self.cfg.data_dir.join("forks");
        tokio::fs::create_dir_all(&scratch).await?;
        let dir = scratch.join(random_hex(8));
        self.checkpoint(id, &dir).await?;
        let res = self.resume_checkpoint(&dir, spec).await;
        // The restored VM has its memory loaded and its own disk copies: the
        // checkpoint is no longer needed either way.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        res
    }
}
