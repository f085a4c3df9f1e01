//! The Docker engine's containers: creating one for a sandbox (labels,
//! limits, the bind-mounted sandbox directory), booting it and waiting for
//! its agent, and what is read back from dockerd (state, address, logs).

use super::*;

pub(super) fn client_for(d: &Detail) -> AgentClient {
    AgentClient::new(
        Transport::Unix {
            control: d.dir.join("agent.sock"),
            forward: d.dir.join("forward.sock"),
        },
        Some(d.token.clone()),
    )
}

/// The env file lohar's container mode reads (`LOHAR_ENV_FILE`).
pub(super) fn env_file(env: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\n') || k.contains('\0') {
            return Err(EngineError::Invalid(format!(
                "bad environment variable name {k:?}"
            )));
        }
        out.push_str(k);
        out.push('=');
        out.push_str(&v.replace('\\', "\\\\").replace('\n', "\\n"));
        out.push('\n');
    }
    Ok(out)
}

impl DockerEngine {
    pub(super) async fn inspect(&self, container: &str) -> Result<ContainerInspectResponse> {
        self.docker
            .inspect_container(container, None)
            .await
            .map_err(derr(container))
    }

    pub(super) async fn container_ip(&self, container: &str, network: &str) -> String {
        self.inspect(container)
            .await
            .ok()
            .and_then(|c| {
                c.network_settings?
                    .networks?
                    .get(network)?
                    .ip_address
                    .clone()
            })
            .unwrap_or_default()
    }

    /// The last lines the container printed (for boot errors).
    pub(super) async fn logs_tail(&self, container: &str) -> String {
        self.logs(container, "40", usize::MAX)
            .await
            .unwrap_or_default()
    }

    /// What the container printed, stdout and stderr interleaved: its last
    /// `lines` (`"all"`, or a count, as dockerd takes it), of which the
    /// newest `bytes` are kept as they are read, so a chatty container costs
    /// no more memory than the answer.
    pub(super) async fn logs(&self, container: &str, lines: &str, bytes: usize) -> Result<String> {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(lines)
            .build();
        let mut out: Vec<u8> = Vec::new();
        let mut s = self.docker.logs(container, Some(opts));
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.map_err(derr(container))?.into_bytes());
            if out.len() > bytes.saturating_mul(2) {
                let cut = out.len().saturating_sub(bytes);
                out.drain(..cut);
            }
        }
        let cut = out.len().saturating_sub(bytes);
        Ok(String::from_utf8_lossy(&out[cut..]).into_owned())
    }

    /// Starts the container and waits for its agent, watching for an early exit.
    pub(super) async fn boot(&self, d: &Detail) -> Result<String> {
        // Stale sockets from the previous run would make the first probes fail
        // slowly rather than quickly.
        for s in ["agent.sock", "forward.sock"] {
            let _ = tokio::fs::remove_file(d.dir.join(s)).await;
        }
        self.docker
            .start_container(&d.container, None)
            .await
            .map_err(derr(&d.container))?;
        let client = client_for(d);
        let wait_exit = async {
            let opts = bollard::query_parameters::WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            let mut s = self.docker.wait_container(&d.container, Some(opts));
            let r = s.next().await;
            format!("container exited during start ({r:?})")
        };
        let res = tokio::select! {
            r = client.wait_ready(self.cfg.boot_timeout) => r.map(|_| ()).map_err(|e| e.to_string()),
            why = wait_exit => Err(why),
        };
        if let Err(why) = res {
            return Err(EngineError::Boot(format!(
                "{why}\n--- container log (tail) ---\n{}",
                self.logs_tail(&d.container).await
            )));
        }
        Ok(self.container_ip(&d.container, &d.network).await)
    }

    pub(super) async fn remove_container(&self, container: &str) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(container, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(derr(container)(e)),
        }
    }

    pub(super) async fn create_container(
        &self,
        id: &str,
        spec: &SandboxSpec,
        d: &Detail,
    ) -> Result<()> {
        let mut binds = vec![format!("{}:{SOCK_DIR}", d.dir.display())];
        for v in &spec.volumes {
            let mut b = format!("{}:{}", v.file.display(), v.mount);
            if v.read_only {
                b.push_str(":ro");
            }
            binds.push(b);
        }
        let mut env = vec![
            format!("LOHAR_SOCK_DIR={SOCK_DIR}"),
            "LOHAR_TOKEN_FILE=token".to_string(),
            "LOHAR_ENV_FILE=env".to_string(),
            "LOHAR_INIT_FILE=init".to_string(),
        ];
        if spec.run_as_root {
            env.push("LOHAR_USER=root".into());
        } else if !spec.user.is_empty() {
            env.push(format!("LOHAR_USER={}", spec.user));
        }
        if !spec.cwd.is_empty() {
            env.push(format!("LOHAR_CWD={}", spec.cwd));
        }
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_ID.to_string(), id.to_string()),
            (LABEL_NAME.to_string(), spec.name.clone()),
            (LABEL_OWNER.to_string(), spec.owner_index.to_string()),
            (LABEL_DATA_DIR.to_string(), self.data_dir_label()),
        ]);
        // u32 MiB in bytes always fits an i64; saturating all the same.
        let mem = i64::from(spec.memory_mb).saturating_mul(1024 * 1024);
        let host = HostConfig {
            binds: Some(binds),
            network_mode: Some(d.network.clone()),
            // Docker refuses a CPU quota above the host's CPU count: a
            // sandbox that asks for more gets all of them, as a microVM's
            // vCPUs would share them.
            nano_cpus: Some(i64::from(spec.cpus.min(host_cpus())).saturating_mul(1_000_000_000)),
            memory: Some(mem),
            memory_swap: Some(mem),
            pids_limit: (self.cfg.pids_limit > 0).then_some(self.cfg.pids_limit),
            security_opt: Some(vec!["no-new-privileges".into()]),
            // lohar needs neither; without them a sandbox cannot forge packets
            // on the owner bridge or create device nodes.
            cap_drop: Some(vec!["NET_RAW".into(), "MKNOD".into()]),
            ..Default::default()
        };
        let entrypoint = match &self.cfg.inject_lohar {
            Some(lohar) => {
                let dst = d.dir.join("lohar");
                if tokio::fs::hard_link(lohar, &dst).await.is_err() {
                    tokio::fs::copy(lohar, &dst)
                        .await
                        .map_err(|source| EngineError::Host {
                            what: format!("inject lohar from {}", lohar.display()),
                            source,
                        })?;
                }
                Some(vec![format!("{SOCK_DIR}/lohar"), "container".to_string()])
            }
            None => None,
        };
        // Docker's embedded DNS answers these on the owner's network only:
        // siblings resolve as `name` and `name.sb`, other owners' never.
        let networking = (!spec.name.is_empty()).then(|| bollard::models::NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                d.network.clone(),
                bollard::models::EndpointSettings {
                    aliases: Some(vec![spec.name.clone(), format!("{}.sb", spec.name)]),
                    ..Default::default()
                },
            )])),
        });
        let body = ContainerCreateBody {
            image: Some(d.image.clone()),
            networking_config: networking,
            entrypoint,
            cmd: self.cfg.inject_lohar.as_ref().map(|_| Vec::new()),
            env: Some(env),
            labels: Some(labels),
            hostname: Some("bhatti".into()),
            host_config: Some(host),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default()
            .name(&d.container)
            .build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| match e {
                DockerError::DockerResponseServerError {
                    status_code: 404,
                    message,
                } => EngineError::Invalid(format!(
                    "image {:?} not found ({message}); build it with scripts/docker-image.sh",
                    d.image
                )),
                e => EngineError::Docker {
                    op: format!("create {}", d.container),
                    source: e,
                },
            })?;
        Ok(())
    }

    /// Writes the spec's files through the agent (as root, then chowned by lohar).
    pub(super) async fn write_files(&self, client: &AgentClient, spec: &SandboxSpec) -> Result<()> {
        for (path, f) in &spec.files {
            let mode = if f.mode.is_empty() { "0644" } else { &f.mode };
            let mut src: &[u8] = &f.content;
            client
                .file_write(path, mode, f.content.len() as u64, &mut src)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn start_locked(&self, sb: &Sandbox) -> Result<()> {
        let thermal = lock(&sb.fast).state.thermal();
        match thermal {
            Thermal::Hot => return Ok(()),
            Thermal::Warm => {
                self.docker
                    .unpause_container(&sb.detail.container)
                    .await
                    .map_err(derr(&sb.detail.container))?;
                sb.set(LifeState::Running(Thermal::Hot));
                return Ok(());
            }
            Thermal::Cold => {}
        }
        // The rules may be gone (a host reboot, a firewall reload).
        self.ensure_egress_block(&sb.detail.network, &sb.detail.egress)
            .await?;
        // The container may have been started (or paused) behind our back.
        let state = self
            .inspect(&sb.detail.container)
            .await?
            .state
            .and_then(|s| s.status);
        let ip = match state {
            Some(ContainerStateStatusEnum::RUNNING) => {
                let c = sb.client();
                c.wait_ready(self.cfg.boot_timeout).await?;
                self.container_ip(&sb.detail.container, &sb.detail.network)
                    .await
            }
            Some(ContainerStateStatusEnum::PAUSED) => {
                self.docker
                    .unpause_container(&sb.detail.container)
                    .await
                    .map_err(derr(&sb.detail.container))?;
                self.container_ip(&sb.detail.container, &sb.detail.network)
                    .await
            }
            _ => self.boot(&sb.detail).await?,
        };
        let mut f = lock(&sb.fast);
        f.state = LifeState::Running(Thermal::Hot);
        f.generation = f.generation.saturating_add(1);
        f.ip = ip;
        f.agent = Some(sb.client().reusing());
        Ok(())
    }
}
