//! Building the engine the config asks for (or the host suits best,
//! docs/engine.md, "Engine selection"), with the reason `bhatti serve` logs.

use std::sync::Arc;
use std::time::Duration;

use bhatti_engine::docker::{DockerConfig, DockerEngine};
use bhatti_engine::microvm::{MicroVmConfig, MicroVmEngine};
use bhatti_engine::net::{NetConfig, NetManager, PoolClaim};
use bhatti_engine::select::{choose, EngineKind, HostProbe};
use bhatti_engine::vmm::firecracker::{FirecrackerConfig, FirecrackerDriver, JailerConfig};
use bhatti_engine::vmm::qemu::{QemuConfig, QemuDriver};
use bhatti_engine::Engine;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum EngineSetupError {
    #[error("{0}")]
    NoEngine(String),
    #[error("{engine} engine: {why}")]
    Unusable { engine: &'static str, why: String },
}

/// The engine and why it was picked.
pub struct Chosen {
    pub engine: Arc<dyn Engine>,
    pub kind: EngineKind,
    pub reason: String,
}

pub fn kind_name(k: EngineKind) -> &'static str {
    match k {
        EngineKind::Firecracker => "firecracker",
        EngineKind::Qemu => "qemu",
        EngineKind::Docker => "docker",
    }
}

pub async fn build(cfg: &Config) -> Result<Chosen, EngineSetupError> {
    let (kind, reason) = match cfg.engine.as_deref() {
        Some("firecracker") => (
            EngineKind::Firecracker,
            "engine: firecracker in the config".to_string(),
        ),
        Some("qemu") => (EngineKind::Qemu, "engine: qemu in the config".to_string()),
        Some("docker") => (
            EngineKind::Docker,
            "engine: docker in the config".to_string(),
        ),
        _ => {
            let probe = HostProbe::probe(&cfg.firecracker_bin, &cfg.qemu_bin);
            choose(&probe).map_err(EngineSetupError::NoEngine)?
        }
    };
    let unusable =
        |engine: &'static str| move |why: String| EngineSetupError::Unusable { engine, why };
    let engine: Arc<dyn Engine> = match kind {
        EngineKind::Docker => {
            let mut dc = DockerConfig::new(cfg.data_dir.clone());
            if let Some(i) = &cfg.docker_image {
                dc.image = i.clone();
            }
            dc.inject_lohar = cfg.lohar.clone();
            dc.egress_blocked = cfg.egress_blocked_cidrs.clone();
            if let Some(t) = cfg.boot_timeout_secs {
                dc.boot_timeout = Duration::from_secs(t);
            }
            Arc::new(
                DockerEngine::new(dc)
                    .await
                    .map_err(|e| unusable("docker")(e.to_string()))?,
            )
        }
        EngineKind::Qemu | EngineKind::Firecracker => {
            let mut mc =
                MicroVmConfig::new(cfg.data_dir.clone(), cfg.kernel_path(), cfg.rootfs_path());
            if let Some(t) = cfg.boot_timeout_secs {
                mc.boot_timeout = Duration::from_secs(t);
            }
            mc.diff_snapshots = cfg.diff_snapshots;
            mc.dns_internal = cfg.per_user_dns;
            let name = kind_name(kind);
            let driver: Arc<dyn bhatti_engine::vmm::VmmDriver> = if kind == EngineKind::Qemu {
                let qc = QemuConfig {
                    binary: cfg.qemu_bin.clone(),
                    ..QemuConfig::default()
                };
                let cfgd = tokio::task::spawn_blocking(move || QemuDriver::new(qc))
                    .await
                    .map_err(|e| unusable("qemu")(e.to_string()))?;
                Arc::new(cfgd.map_err(|e| unusable("qemu")(e.to_string()))?)
            } else {
                let mut fc = FirecrackerConfig {
                    binary: cfg.firecracker_bin.clone(),
                    ..FirecrackerConfig::default()
                };
                if let Some(j) = &cfg.firecracker_jailer {
                    fc.jailer = Some(JailerConfig {
                        binary: j.clone(),
                        uid: cfg.jail_uid.unwrap_or(10000),
                        gid: cfg.jail_gid.unwrap_or(10000),
                        chroot_base: cfg.data_dir.join("jails"),
                        ..JailerConfig::default()
                    });
                }
                let d = tokio::task::spawn_blocking(move || FirecrackerDriver::new(fc))
                    .await
                    .map_err(|e| unusable("firecracker")(e.to_string()))?;
                Arc::new(d.map_err(|e| unusable("firecracker")(e.to_string()))?)
            };
            // The pool is this daemon's alone: claimed for its life, so a
            // second daemon on the host takes another (net::scope).
            let claim = PoolClaim::for_daemon(&cfg.data_dir.join("net-pool"), cfg.sandbox_pool)
                .map_err(|e| unusable(name)(e.to_string()))?;
            let net = NetManager::claimed(
                NetConfig {
                    egress_blocked: cfg.egress_blocked_cidrs.clone(),
                    ledger_dir: Some(cfg.data_dir.join("net")),
                    ..NetConfig::default()
                },
                claim,
            )
            .map_err(|e| unusable(name)(e.to_string()))?;
            let engine = Arc::new(
                MicroVmEngine::new(mc, driver, Arc::new(net))
                    .map_err(|e| unusable(name)(e.to_string()))?,
            );
            if cfg.template_snapshots {
                engine.enable_templates();
            }
            engine
        }
    };
    Ok(Chosen {
        engine,
        kind,
        reason,
    })
}
