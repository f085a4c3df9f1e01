//! Creates one microVM sandbox, runs a command in it, prints the result, and
//! destroys it. Used by `scripts/quickstart.sh` until the daemon and CLI land.
//!
//! `sandbox [--keep] [--] <command…>` (root; guest artifacts from scripts/guest).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bhatti_engine::contract::{Engine, EngineExt, SandboxSpec};
use bhatti_engine::microvm::{MicroVmConfig, MicroVmEngine};
use bhatti_engine::net::NetManager;
use bhatti_engine::vmm::qemu::{QemuConfig, QemuDriver};

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let keep = args.first().map(|a| a == "--keep").unwrap_or(false);
    if keep {
        args.remove(0);
    }
    if args.first().map(|a| a == "--").unwrap_or(false) {
        args.remove(0);
    }
    if args.is_empty() {
        args = vec![
            "sh".into(),
            "-c".into(),
            "uname -a; id; cat /proc/cpuinfo | grep -m1 'model name'".into(),
        ];
    }
    let data = env_path("BHATTI_DATA_DIR", "/var/lib/bhatti");
    // A pool of its own, so it never clashes with a daemon on this host.
    let net = Arc::new(NetManager::scratch(data.join("net-example"))?);
    let cfg = MicroVmConfig::new(
        data,
        env_path("BHATTI_GUEST_KERNEL", "/var/cache/bhatti/guest/vmlinux"),
        env_path(
            "BHATTI_GUEST_ROOTFS",
            "/var/cache/bhatti/guest/rootfs-minimal.ext4",
        ),
    );
    let driver = Arc::new(QemuDriver::new(QemuConfig::default())?);
    let engine = MicroVmEngine::new(cfg, driver, net)?;
    let t = Instant::now();
    let info = engine
        .create(SandboxSpec {
            name: "quickstart".into(),
            owner_index: 1,
            cpus: 1,
            memory_mb: 512,
            ..Default::default()
        })
        .await?;
    println!(
        "sandbox {} is {} at {} (created in {} ms)",
        info.id,
        info.status,
        info.ip,
        t.elapsed().as_millis()
    );
    let t = Instant::now();
    let r = engine.exec(&info.id, args.clone()).await?;
    println!(
        "$ {}   (exit {}, {} ms)",
        args.join(" "),
        r.exit_code,
        t.elapsed().as_millis()
    );
    print!("{}", r.stdout_str());
    eprint!("{}", r.stderr_str());
    if !keep {
        engine.destroy(&info.id).await?;
        println!("sandbox {} destroyed", info.id);
    }
    std::process::exit(r.exit_code);
}
