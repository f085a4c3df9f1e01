//! The Docker engine's recovery: re-adopting a sandbox's container after
//! a daemon restart (its state mapped to hot, warm or cold), noticing a
//! container that died under a running sandbox, and removing containers,
//! directories and networks of this data dir that no sandbox owns.

use super::*;

impl DockerEngine {
    pub(super) async fn recover_sandbox(&self, state: VmState) -> Result<SandboxInfo> {
        if state.engine != ENGINE {
            return Err(EngineError::Invalid(format!(
                "sandbox belongs to the {} engine",
                state.engine
            )));
        }
        let mut detail: Detail = serde_json::from_value(state.detail.clone())
            .map_err(|e| EngineError::Invalid(format!("unreadable engine state: {e}")))?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_ID}={}", state.id),
                format!("{LABEL_MANAGED}=true"),
            ],
        )]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let found = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(derr(&state.id))?;
        let Some(c) = found.into_iter().next() else {
            return Err(EngineError::Invalid(format!(
                "container of sandbox {} is gone",
                state.id
            )));
        };
        if let Some(name) = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
        {
            detail.container = name;
        }
        if !detail.dir.is_dir() {
            return Err(EngineError::Invalid(format!(
                "sandbox directory {} is missing",
                detail.dir.display()
            )));
        }
        let st = self
            .inspect(&detail.container)
            .await?
            .state
            .and_then(|s| s.status);
        let life = match st {
            Some(ContainerStateStatusEnum::RUNNING) => LifeState::Running(Thermal::Hot),
            Some(ContainerStateStatusEnum::PAUSED) => LifeState::Running(Thermal::Warm),
            // It crashed before the restart and nobody started it since.
            _ if state.status == Status::Crashed => LifeState::Crashed(
                "the container had died before the daemon restarted; start runs it again".into(),
            ),
            _ => LifeState::Stopped,
        };
        let thermal = life.thermal();
        if let Err(e) = self
            .ensure_egress_block(&detail.network, &detail.egress)
            .await
        {
            tracing::warn!(id = %state.id, error = %e, "egress rules could not be restored");
        }
        let ip = self.container_ip(&detail.container, &detail.network).await;
        let sb = Sandbox {
            id: state.id.clone(),
            name: state.name.clone(),
            lifecycle: tokio::sync::Mutex::new(()),
            fast: Mutex::new(Fast {
                state: life,
                generation: state.generation,
                ip,
                agent: None,
            }),
            detail,
        };
        if thermal == Thermal::Hot {
            // A hot sandbox must answer; otherwise treat it as cold (start
            // will restart it).
            let c = sb.client();
            if c.wait_ready(Duration::from_secs(5)).await.is_ok() {
                lock(&sb.fast).agent = Some(c);
            } else {
                sb.set(LifeState::Stopped);
            }
        } else if thermal == Thermal::Warm {
            lock(&sb.fast).agent = Some(sb.client().reusing());
        }
        Ok(self.insert(sb).info())
    }

    pub(super) async fn remove_orphans(&self, also_keep: &[String]) -> Result<Vec<String>> {
        let mut keep: Vec<String> = self.sandboxes.ids();
        keep.extend(also_keep.iter().cloned());
        let mut removed = Vec::new();
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_DATA_DIR}={}", self.data_dir_label()),
            ],
        )]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let _g = self.net_lock.lock().await;
        let found = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(derr("containers"))?;
        for c in found {
            let Some(cid) = c.id.clone() else { continue };
            let sid = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ID))
                .cloned()
                .unwrap_or_default();
            if keep.contains(&sid) {
                continue;
            }
            if self.remove_container(&cid).await.is_ok() {
                removed.push(format!("container {sid}"));
            }
        }
        // Directories of sandboxes the store no longer has (off the async
        // threads: a sandbox directory can hold a large exec log).
        let root = self.cfg.data_dir.join("sandboxes");
        let dirs = tokio::task::spawn_blocking(move || {
            let mut gone = Vec::new();
            if let Ok(rd) = std::fs::read_dir(&root) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let ours = name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit());
                    if ours && !keep.contains(&name) && std::fs::remove_dir_all(e.path()).is_ok() {
                        gone.push(format!("dir {name}"));
                    }
                }
            }
            gone
        })
        .await?;
        removed.extend(dirs);
        let nfilters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_DATA_DIR}={}", self.data_dir_label()),
            ],
        )]);
        let nopts = ListNetworksOptionsBuilder::default()
            .filters(&nfilters)
            .build();
        if let Ok(nets) = self.docker.list_networks(Some(nopts)).await {
            for n in nets {
                if let Some(name) = n.name {
                    let before = self.docker.inspect_network(&name, None).await.is_ok();
                    self.remove_network_if_empty(&name).await;
                    let after = self.docker.inspect_network(&name, None).await.is_ok();
                    if before && !after {
                        removed.push(format!("network {name}"));
                    }
                }
            }
        }
        // Egress rules of this engine's networks that no longer exist (a
        // network removed while the daemon was down or by hand).
        let tags = tokio::task::spawn_blocking(crate::net::docker_block_tags).await?;
        match tags {
            Ok(tags) => {
                for tag in tags {
                    let Some(net) = tag.strip_prefix(DOCKER_TAG_PREFIX) else {
                        continue;
                    };
                    if !self.is_owner_network(net) {
                        continue;
                    }
                    match self.docker.inspect_network(net, None).await {
                        Err(e) if is_status(&e, 404) => {
                            self.remove_egress_block(net).await;
                            removed.push(format!("egress rules {net}"));
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing egress rules failed"),
        }
        Ok(removed)
    }

    /// A container that died (killed, out of memory, dockerd restarted)
    /// while the sandbox was running: the sandbox becomes `crashed`, with
    /// its exit. Skipped while a transition holds the sandbox.
    pub(super) async fn probe_container(&self, id: &str) -> Result<()> {
        let sb = self.get(id)?;
        let Ok(_l) = sb.lifecycle.try_lock() else {
            return Ok(());
        };
        if lock(&sb.fast).state.status() != Status::Running {
            return Ok(());
        }
        let st = self.inspect(&sb.detail.container).await?.state;
        let alive = matches!(
            st.as_ref().and_then(|s| s.status),
            Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED)
        );
        if alive {
            return Ok(());
        }
        let code = st.as_ref().and_then(|s| s.exit_code).unwrap_or_default();
        let oom = st.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
        let reason = format!(
            "the container stopped unexpectedly (exit code {code}{}); start runs it again",
            if oom { ", out of memory" } else { "" }
        );
        tracing::warn!(sandbox = id, reason, "sandbox crashed");
        let mut f = lock(&sb.fast);
        f.state = LifeState::Crashed(reason);
        f.agent = None;
        Ok(())
    }
}
