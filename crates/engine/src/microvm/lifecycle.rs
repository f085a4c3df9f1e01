//! A microVM sandbox's life on the host: launching its VMM (boot or
//! restore) and waiting for its agent, its network namespace, quiescing
//! around snapshots, starting a stopped sandbox from its cold snapshot or
//! its disk, and writing the cold snapshot that stopping leaves.

use super::*;

impl MicroVmEngine {
    /// Waits for the agent while watching the VMM: a VMM that dies or a guest
    /// that never answers becomes an error carrying the console's tail.
    pub(super) async fn wait_agent(&self, vm: &dyn Vm, client: &AgentClient) -> Result<()> {
        let res = tokio::select! {
            r = client.wait_ready(self.cfg.boot_timeout) => r.map(|_| ()).map_err(|e| e.to_string()),
            exit = vm.wait_exit() => Err(format!("VMM exited during boot ({exit})")),
        };
        res.map_err(|why| {
            EngineError::Boot(format!(
                "{why}\n--- console (tail) ---\n{}\n--- vmm log (tail) ---\n{}",
                vm.console_tail(4096),
                vm.vmm_log_tail(2048)
            ))
        })
    }

    pub(super) async fn setup_net(
        &self,
        id: &str,
        owner: u16,
        mac: &str,
        egress: &EgressPolicy,
        ext: Option<std::net::Ipv4Addr>,
    ) -> Result<SandboxNet> {
        let (net, id, mac, egress) = (
            self.net.clone(),
            id.to_string(),
            mac.to_string(),
            egress.clone(),
        );
        blocking(move || Ok(net.setup_sandbox(&id, owner, &mac, &egress, ext)?)).await
    }

    pub(super) async fn teardown_net(&self, n: &SandboxNet) {
        let (net, n) = (self.net.clone(), n.clone());
        if let Err(e) = blocking(move || Ok(net.teardown_sandbox(&n)?)).await {
            tracing::warn!(error = %e, "network teardown failed");
        }
    }

    /// Boots (or restores, with `snap`) the VM of `d` and waits for its agent.
    /// Kills the VM again on failure.
    pub(super) async fn launch(
        &self,
        id: &str,
        d: &Detail,
        snap: Option<&crate::vmm::SnapshotFiles>,
    ) -> Result<Box<dyn Vm>> {
        let spec = self.vm_spec(id, d);
        let t0 = Instant::now();
        let vm = match snap {
            None => self.driver.boot(&spec).await,
            Some(s) => self.driver.restore(&spec, s).await,
        }
        .map_err(EngineError::Vmm)?;
        let client = AgentClient::new(
            Transport::Tcp {
                addr: std::net::IpAddr::V4(d.net.ext_ip),
            },
            Some(d.token.clone()),
        );
        if let Err(e) = self.wait_agent(vm.as_ref(), &client).await {
            let _ = vm.kill().await;
            return Err(e);
        }
        // In µs, as a number: the microvm benchmark reads it back as the
        // restore (or boot) plus the first exec inside a create.
        let took_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        tracing::debug!(id, restore = snap.is_some(), took_us, "agent ready");
        Ok(vm)
    }

    /// Registers a freshly booted (or resumed) sandbox as running and hot, in its
    /// first generation.
    pub(super) fn register_hot(
        &self,
        id: String,
        name: String,
        detail: Detail,
        vm: Box<dyn Vm>,
    ) -> SandboxInfo {
        let exit = vm.exit_watch();
        let sb = Sandbox {
            id,
            name,
            lifecycle: tokio::sync::Mutex::new(Some(vm)),
            fast: Mutex::new(Fast {
                state: LifeState::Running(Thermal::Hot),
                generation: 1,
                restore_failed: None,
                agent: None,
                diff_base: None,
                egress: detail.egress.clone(),
            }),
            detail,
        };
        lock(&sb.fast).agent = Some(sb.client().reusing());
        let sb = self.insert(sb);
        watch_vmm(&sb, exit);
        sb.info()
    }

    /// Guest sync (best effort), then pause; returns whether it was hot.
    pub(super) async fn quiesce(&self, sb: &Sandbox, vm: &dyn Vm) -> Result<bool> {
        // The sync below is ordered behind the connections' ends.
        sb.close_idle_agent();
        let was_hot = lock(&sb.fast).state.thermal() == Thermal::Hot;
        if was_hot {
            let c = sb.client();
            match tokio::time::timeout(SYNC_TIMEOUT, c.exec(["sync"])).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(id = %sb.id, error = %e, "guest sync failed"),
                Err(_) => tracing::warn!(id = %sb.id, "guest sync timed out"),
            }
        }
        vm.pause().await.map_err(EngineError::Vmm)?;
        sb.set(LifeState::Running(Thermal::Warm));
        Ok(was_hot)
    }

    pub(super) async fn unquiesce(&self, sb: &Sandbox, vm: &dyn Vm, was_hot: bool) {
        if was_hot {
            match vm.resume().await {
                Ok(()) => sb.set(LifeState::Running(Thermal::Hot)),
                Err(e) => tracing::error!(id = %sb.id, error = %e, "resume after snapshot failed"),
            }
        }
    }

    pub(super) async fn start_locked(
        &self,
        sb: &Arc<Sandbox>,
        slot: &mut Option<Box<dyn Vm>>,
        force: bool,
    ) -> Result<()> {
        if slot.is_some() {
            // Already has a VMM: never spawn a second one (docs/engine.md,
            // "Lifecycle").
            let thermal = lock(&sb.fast).state.thermal();
            if let (Thermal::Warm, Some(vm)) = (thermal, slot.as_ref()) {
                wake(sb, vm.as_ref()).await?;
            }
            return Ok(());
        }
        if lock(&sb.fast).state.crash_reason().is_some() {
            return self.boot_from_disk(sb, slot).await;
        }
        {
            let mut f = lock(&sb.fast);
            if let Some(reason) = &f.restore_failed {
                if !force {
                    return Err(EngineError::RestoreFailed {
                        id: sb.id.clone(),
                        reason: reason.clone(),
                    });
                }
                f.restore_failed = None;
            }
        }
        let generation = lock(&sb.fast).generation;
        let dir = sb.snapshot_dir();
        let manifest = match blocking(move || persist::load_snapshot(&dir)).await {
            Ok(m) if m.generation >= generation => m,
            Ok(m) => {
                return Err(self.mark_failed(
                    sb,
                    format!(
                    "snapshot generation {} is older than the sandbox's generation {generation}",
                    m.generation
                ),
                ))
            }
            Err(e) => return Err(self.mark_failed(sb, e.to_string())),
        };
        self.repair_net(sb).await?;
        match self.launch(&sb.id, &sb.detail, Some(&manifest.vmm)).await {
            Ok(vm) => {
                let exit = vm.exit_watch();
                *slot = Some(vm);
                watch_vmm(sb, exit);
                let mut f = lock(&sb.fast);
                // The generation comes from a file: saturate, never wrap.
                f.generation = manifest.generation.saturating_add(1);
                f.diff_base = (self.cfg.diff_snapshots && self.driver.supports_diff_snapshots())
                    .then_some(manifest.generation);
                f.state = LifeState::Running(Thermal::Hot);
                f.agent = Some(sb.client().reusing());
                Ok(())
            }
            // The breaker is for a snapshot that cannot be restored; a host
            // or guest failure (no space, an agent that did not answer in
            // time) is reported as it is and the next start tries again.
            Err(e) if e.is_snapshot_fault() => Err(self.mark_failed(sb, e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// A crashed sandbox's start: a fresh boot from its kept disk (its
    /// memory died with the VMM), in a new generation so no older snapshot
    /// is ever restored over what the disk now holds.
    pub(super) async fn boot_from_disk(
        &self,
        sb: &Arc<Sandbox>,
        slot: &mut Option<Box<dyn Vm>>,
    ) -> Result<()> {
        self.repair_net(sb).await?;
        let vm = self.launch(&sb.id, &sb.detail, None).await?;
        let exit = vm.exit_watch();
        *slot = Some(vm);
        watch_vmm(sb, exit);
        let mut f = lock(&sb.fast);
        f.generation = f.generation.saturating_add(1);
        f.diff_base = None;
        f.restore_failed = None;
        f.state = LifeState::Running(Thermal::Hot);
        f.agent = Some(sb.client().reusing());
        tracing::info!(sandbox = sb.id, "booted afresh from its disk after a crash");
        Ok(())
    }

    /// The namespace survives stop/start; after a host reboot, or when it
    /// was deleted behind the daemon's back, it is rebuilt with the same
    /// external address. Whatever is left of it (the host veth and route,
    /// this manager's claim on the address) goes first, or the rebuild
    /// would collide with it.
    pub(super) async fn repair_net(&self, sb: &Sandbox) -> Result<()> {
        if !sb.detail.net.netns_path().exists() {
            tracing::info!(
                sandbox = sb.id,
                "the sandbox's network namespace is gone; rebuilding it"
            );
            self.teardown_net(&sb.detail.net).await;
            let egress = lock(&sb.fast).egress.clone();
            self.setup_net(
                &sb.id,
                sb.detail.owner_index,
                &sb.detail.mac,
                &egress,
                Some(sb.detail.net.ext_ip),
            )
            .await?;
        }
        Ok(())
    }

    /// Writes the cold snapshot of a paused VM into `fin` atomically (a
    /// staging directory, sealed with its manifest, renamed over). With
    /// `diff_onto`, the VMM writes only the pages dirtied since it was
    /// restored from `fin`'s snapshot of that generation, and they are
    /// merged onto a copy of that snapshot's memory: the result is a Full
    /// snapshot again, so restore never depends on a chain of files.
    pub(super) async fn write_cold_snapshot(
        &self,
        vm: &dyn Vm,
        fin: &Path,
        generation: u64,
        diff_onto: Option<u64>,
    ) -> Result<()> {
        let stage = persist::staging_dir(fin)?;
        let _ = tokio::fs::remove_dir_all(&stage).await;
        let kind = if diff_onto.is_some() {
            SnapshotKind::Diff
        } else {
            SnapshotKind::Full
        };
        let files = vm.snapshot(&stage, kind).await.map_err(EngineError::Vmm)?;
        let (fin, driver) = (fin.to_path_buf(), self.driver.clone());
        let res = blocking({
            let stage = stage.clone();
            move || {
                let (files, diff_chain) = match diff_onto {
                    None => (files, 0),
                    Some(base_gen) => layer_diff(driver.as_ref(), &fin, &stage, files, base_gen)?,
                };
                let (files_map, checksums) = persist::inventory(&stage)?;
                if files_map.values().all(|&s| s == 0) {
                    return Err(EngineError::Inconsistent("snapshot is empty".into()));
                }
                let m = SnapshotManifest {
                    format_version: persist::MANIFEST_VERSION,
                    generation,
                    created_at_unix: persist::now_unix(),
                    vmm: files,
                    files: files_map,
                    checksums,
                    diff_chain,
                };
                persist::seal(&stage, &m)?;
                persist::commit(&stage, &fin)
            }
        })
        .await;
        if res.is_err() {
            let _ = tokio::fs::remove_dir_all(&stage).await;
        }
        res
    }

    pub(super) fn mark_failed(&self, sb: &Sandbox, reason: String) -> EngineError {
        lock(&sb.fast).restore_failed = Some(reason.clone());
        EngineError::RestoreFailed {
            id: sb.id.clone(),
            reason,
        }
    }
}
