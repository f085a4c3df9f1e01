//! The Docker engine's networks: one user-defined bridge per owner and
//! egress class, created on demand and removed with its last container,
//! and the `DOCKER-USER` rules that keep a `public` bridge off link-local,
//! metadata and private ranges (see the module docs of `docker`).

use super::*;

/// The resolvers dockerd's embedded DNS (`127.0.0.11` in the container)
/// forwards to *from inside the container's namespace*: the host's, or
/// systemd-resolved's upstreams when the host lists only its loopback stub
/// (loopback resolvers are asked from the host namespace). Their port 53
/// stays open under the egress block.
pub(super) fn docker_upstream_dns() -> Vec<std::net::Ipv4Addr> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|t| crate::net::resolv_conf_nameservers(&t))
            .unwrap_or_default()
    };
    let mut v = read("/etc/resolv.conf");
    if v.iter().all(|a| a.is_loopback()) {
        v = read("/run/systemd/resolve/resolv.conf");
    }
    v.retain(|a| !a.is_loopback());
    v
}

/// The comment tag of a network's `DOCKER-USER` rules.
pub(super) fn block_tag(network: &str) -> String {
    format!("{DOCKER_TAG_PREFIX}{network}")
}

impl DockerEngine {
    /// The Docker network a sandbox of `owner` with `egress` joins.
    pub fn network_name(&self, owner: u16, egress: &EgressPolicy) -> String {
        match egress {
            EgressPolicy::Deny => format!("{}-owner-{owner}-internal", self.cfg.prefix),
            _ => format!("{}-owner-{owner}", self.cfg.prefix),
        }
    }

    /// Whether `name` is an owner network of this engine's prefix
    /// (`<prefix>-owner-<n>` or `<prefix>-owner-<n>-internal`).
    pub(super) fn is_owner_network(&self, name: &str) -> bool {
        let Some(rest) = name.strip_prefix(&format!("{}-owner-", self.cfg.prefix)) else {
            return false;
        };
        let n = rest.strip_suffix("-internal").unwrap_or(rest);
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    }

    pub(super) async fn ensure_network(
        &self,
        name: &str,
        owner: u16,
        internal: bool,
    ) -> Result<()> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(derr(name)(e)),
        }
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            internal: Some(internal),
            labels: Some(HashMap::from([
                (LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_OWNER.to_string(), owner.to_string()),
                (LABEL_DATA_DIR.to_string(), self.data_dir_label()),
            ])),
            ..Default::default()
        };
        match self.docker.create_network(req).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(derr(name)(e)),
        }
    }

    /// The Linux bridge device of a Docker network.
    pub(super) async fn bridge_of(&self, network: &str) -> Result<String> {
        let n = self
            .docker
            .inspect_network(network, None)
            .await
            .map_err(derr(network))?;
        if let Some(b) = n
            .options
            .as_ref()
            .and_then(|o| o.get("com.docker.network.bridge.name"))
        {
            return Ok(b.clone());
        }
        match n.id {
            Some(id) if id.len() >= 12 => Ok(format!("br-{}", &id[..12])),
            _ => Err(EngineError::Inconsistent(format!(
                "docker: network {network} has no id"
            ))),
        }
    }

    /// Keeps the containers of a `public` network away from the blocked
    /// networks (`DOCKER-USER` rules tagged with the network's name).
    /// Internal (`deny`) networks have no route out and need none.
    pub(super) async fn ensure_egress_block(
        &self,
        network: &str,
        egress: &EgressPolicy,
    ) -> Result<()> {
        if matches!(egress, EgressPolicy::Deny) || self.cfg.egress_blocked.is_empty() {
            return Ok(());
        }
        let bridge = self.bridge_of(network).await?;
        let (tag, blocked) = (block_tag(network), self.cfg.egress_blocked.clone());
        tokio::task::spawn_blocking(move || {
            crate::net::ensure_docker_block(&bridge, &tag, &blocked, &docker_upstream_dns())
        })
        .await??;
        Ok(())
    }

    /// Removes the `DOCKER-USER` rules of a network that is gone.
    pub(super) async fn remove_egress_block(&self, network: &str) {
        let tag = block_tag(network);
        let r = tokio::task::spawn_blocking(move || crate::net::remove_docker_block(&tag)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(network, error = %e, "removing egress rules failed"),
            Err(e) => tracing::warn!(network, error = %e, "removing egress rules failed"),
        }
    }

    /// Removes `name` if no container is attached any more. Call with `net_lock`.
    pub(super) async fn remove_network_if_empty(&self, name: &str) {
        let Ok(n) = self.docker.inspect_network(name, None).await else {
            return;
        };
        if n.containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return;
        }
        // Stopped containers are not listed as attached, but still reference
        // the network: keep it while any container names it.
        let filters = HashMap::from([("network".to_string(), vec![name.to_string()])]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        match self.docker.list_containers(Some(opts)).await {
            Ok(v) if v.is_empty() => {}
            _ => return,
        }
        if let Err(e) = self.docker.remove_network(name).await {
            if !is_status(&e, 404) {
                tracing::warn!(network = name, error = %e, "removing network failed");
                return;
            }
        }
        self.remove_egress_block(name).await;
    }
}
