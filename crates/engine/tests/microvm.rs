//! The microVM engine on real VMs (QEMU/TCG here; no mocks). The suite is
//! written once and instantiated per VMM driver; a driver whose prerequisites are
//! missing reports every test as skipped, with the reason, and asserts nothing.
//!
//! Needs root (network namespaces, TAP), the guest kernel and a root filesystem
//! with a guest-mode lohar: `BHATTI_GUEST_KERNEL` / `BHATTI_GUEST_ROOTFS`, or the
//! defaults in `/var/cache/bhatti/guest` (scripts/test.sh builds them).
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bhatti_engine::contract::{
    Engine, EngineError, EngineExt, ResumeSpec, SandboxSpec, Status, Thermal, VolumeAttach,
};
use bhatti_engine::microvm::{MicroVmConfig, MicroVmEngine};
use bhatti_engine::net::{NetConfig, NetManager};
use bhatti_engine::vmm::firecracker::{FirecrackerConfig, FirecrackerDriver};
use bhatti_engine::vmm::qemu::{QemuConfig, QemuDriver};
use bhatti_engine::vmm::VmmDriver;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Qemu,
    Firecracker,
}

fn artifact(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Why this driver cannot run here, if it cannot.
fn skip_reason(kind: Kind) -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, TAP devices)".into());
    }
    let kernel = artifact("BHATTI_GUEST_KERNEL", "/var/cache/bhatti/guest/vmlinux");
    let rootfs = artifact(
        "BHATTI_GUEST_ROOTFS",
        "/var/cache/bhatti/guest/rootfs-minimal.ext4",
    );
    for p in [&kernel, &rootfs] {
        if !p.is_file() {
            return Some(format!("{} missing (scripts/guest builds it)", p.display()));
        }
    }
    match kind {
        Kind::Qemu => None,
        Kind::Firecracker => match std::env::var("BHATTI_FIRECRACKER_BIN") {
            Err(_) => Some("BHATTI_FIRECRACKER_BIN is not set".into()),
            Ok(p) if !std::path::Path::new(&p).is_file() => Some(format!("{p} does not exist")),
            Ok(_) => None,
        },
    }
}

fn driver_for(kind: Kind) -> Arc<dyn VmmDriver> {
    match kind {
        Kind::Qemu => Arc::new(QemuDriver::new(QemuConfig::default()).expect("qemu driver")),
        Kind::Firecracker => Arc::new(
            FirecrackerDriver::new(FirecrackerConfig {
                binary: std::env::var("BHATTI_FIRECRACKER_BIN").expect("checked by skip_reason"),
                ..Default::default()
            })
            .expect("firecracker driver"),
        ),
    }
}

struct Env {
    engine: Arc<MicroVmEngine>,
    /// The engine's network: a scratch pool (never the host daemon's).
    net: Arc<NetManager>,
    _dir: tempfile::TempDir,
    data: PathBuf,
}

impl Env {
    fn new(kind: Kind) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("bhatti-engine-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let data = dir.path().to_path_buf();
        let driver = driver_for(kind);
        let net = Arc::new(NetManager::scratch(data.join("net")).expect("net manager"));
        let mut cfg = MicroVmConfig::new(
            data.clone(),
            artifact("BHATTI_GUEST_KERNEL", "/var/cache/bhatti/guest/vmlinux"),
            artifact(
                "BHATTI_GUEST_ROOTFS",
                "/var/cache/bhatti/guest/rootfs-minimal.ext4",
            ),
        );
        cfg.boot_timeout = Duration::from_secs(90);
        // Where the VMM has them, the suite runs with diff snapshots on, so
        // stop_start_cycles is the full → diff → diff check (docs/engine.md,
        // "Snapshots").
        cfg.diff_snapshots = driver.supports_diff_snapshots();
        let engine = Arc::new(MicroVmEngine::new(cfg, driver, net.clone()).expect("engine"));
        Env {
            engine,
            net,
            _dir: dir,
            data,
        }
    }

    /// The network manager of a "restarted daemon": the same pool and
    /// ledger (this process holds the claim through `net`).
    fn restarted_net(&self) -> Arc<NetManager> {
        Arc::new(
            NetManager::new(NetConfig {
                pool: self.net.config().pool,
                ledger_dir: Some(self.data.join("net")),
                ..NetConfig::default()
            })
            .expect("net manager"),
        )
    }

    fn spec(&self, name: &str, owner: u16) -> SandboxSpec {
        SandboxSpec {
            name: name.into(),
            owner_index: owner,
            cpus: 1,
            memory_mb: 256,
            ..Default::default()
        }
    }
}

impl Drop for Env {
    /// Whatever happened, leave no VMM, namespace or veth behind.
    fn drop(&mut self) {
        let ids: Vec<String> = std::fs::read_dir(self.data.join("sandboxes"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let needle = self.data.to_string_lossy().into_owned();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.contains("qemu-system") && cmd.contains(&needle) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for id in ids {
            for args in [
                vec!["netns".to_string(), "del".into(), format!("bhatti-{id}")],
                vec![
                    "link".into(),
                    "del".into(),
                    format!("bhv-{}", &id[..id.len().min(11)]),
                ],
            ] {
                let _ = std::process::Command::new("ip")
                    .args(&args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

/// `sh -c` in the sandbox, which must succeed (takes the engine itself, so
/// `&Arc<…>` coerces).
async fn sh(e: &MicroVmEngine, id: &str, script: &str) -> String {
    common::sh(e, id, script).await
}

async fn lifecycle(kind: Kind) {
    let env = Env::new(kind);
    let e = &env.engine;
    let info = e.create(env.spec("life", 201)).await.unwrap();
    assert_eq!((info.status, info.thermal), (Status::Running, Thermal::Hot));
    let id = info.id.clone();

    // exec: runs as uid 1000 with the default environment.
    assert_eq!(sh(e, &id, "id -u").await.trim(), "1000");
    assert_eq!(sh(e, &id, "hostname").await.trim(), "life");
    assert!(sh(e, &id, "echo $HOME").await.contains("/home/lohar"));
    let r = e
        .exec(&id, vec!["sh".into(), "-c".into(), "exit 3".into()])
        .await
        .unwrap();
    assert_eq!(r.exit_code, 3);

    common::in_sandbox(e.as_ref(), &id).await;

    // destroy releases the namespace, the veth and the files.
    let net_ns = format!("bhatti-{id}");
    e.destroy(&id).await.unwrap();
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&net_ns));
    assert!(!env.data.join("sandboxes").join(&id).exists());
    assert!(matches!(e.status(&id).await, Err(EngineError::NotFound(_))));
}

async fn create_options(kind: Kind) {
    let env = Env::new(kind);
    let e = &env.engine;
    // A volume: a small ext4 image made here.
    let vol = env.data.join("vol.ext4");
    let st = std::process::Command::new("mke2fs")
        .args(["-t", "ext4", "-q", "-F"])
        .arg(&vol)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let mut spec = env.spec("opts", 202);
    spec.cpus = 2;
    spec.memory_mb = 384;
    spec.disk_size_mb = 400;
    spec.env
        .insert("GREETING".into(), "hello from config".into());
    spec.init = "echo init-ran > /workspace/init.txt; sleep 600".into();
    spec.files.insert(
        "/home/lohar/.config/app.conf".into(),
        bhatti_engine::contract::GuestFile {
            content: b"key=value\n".to_vec(),
            mode: "0600".into(),
        },
    );
    spec.volumes.push(VolumeAttach {
        name: "data".into(),
        file: vol.clone(),
        mount: "/data".into(),
        read_only: false,
    });
    let info = e.create(spec).await.unwrap();
    let id = info.id;
    assert_eq!(sh(e, &id, "nproc").await.trim(), "2");
    let mem_kb: u64 = sh(e, &id, "awk '/MemTotal/ {print $2}' /proc/meminfo")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(
        mem_kb > 300 * 1024 && mem_kb <= 384 * 1024,
        "MemTotal {mem_kb} kB"
    );
    assert_eq!(
        sh(e, &id, "echo $GREETING").await.trim(),
        "hello from config"
    );
    assert_eq!(
        sh(e, &id, "cat /home/lohar/.config/app.conf").await,
        "key=value\n"
    );
    assert_eq!(
        sh(e, &id, "stat -c %a /home/lohar/.config/app.conf")
            .await
            .trim(),
        "600"
    );
    let df: u64 = sh(e, &id, "df -m / | awk 'NR==2 {print $2}'")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(df > 300, "root filesystem grown to {df} MB");
    sh(e, &id, "echo persisted > /data/file && sync").await;
    let sessions = e.session_list(&id).await.unwrap();
    assert!(sessions.iter().any(|s| s.session_id == "init"));
    for _ in 0..50 {
        if sh(e, &id, "cat /workspace/init.txt 2>/dev/null || true")
            .await
            .contains("init-ran")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sh(e, &id, "cat /workspace/init.txt").await.trim(),
        "init-ran"
    );
    e.destroy(&id).await.unwrap();
    // The volume outlives the sandbox.
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /file"])
        .arg(&vol)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "persisted");

    // Invalid resources are refused before anything is allocated.
    let mut bad = env.spec("bad", 202);
    bad.memory_mb = 64;
    assert!(matches!(e.create(bad).await, Err(EngineError::Invalid(_))));
}

async fn stop_start_cycles(kind: Kind) {
    let env = Env::new(kind);
    let e = &env.engine;
    let id = e.create(env.spec("cycles", 203)).await.unwrap().id;
    // A process whose pid proves memory survived, and files that accumulate.
    let pid = sh(e, &id, "sleep 100000 >/dev/null 2>&1 & echo $!")
        .await
        .trim()
        .to_string();
    for round in 1..=3 {
        sh(e, &id, &format!("echo round-{round} >> /workspace/log.txt")).await;
        e.stop(&id).await.unwrap();
        let st = e.status(&id).await.unwrap();
        assert_eq!((st.status, st.thermal), (Status::Stopped, Thermal::Cold));
        assert!(matches!(e.agent(&id), Err(EngineError::NotHot { .. })));
        // Round 1 is a full snapshot of a booted VM; later rounds are diffs
        // onto the snapshot the VM woke from, where the driver has them.
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                env.data
                    .join("sandboxes")
                    .join(&id)
                    .join("snapshot/manifest.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let diffs = if kind == Kind::Firecracker {
            round - 1
        } else {
            0
        };
        assert_eq!(
            manifest["diff_chain"], diffs,
            "snapshot kind in cycle {round}"
        );
        let st = e.start(&id, false).await.unwrap();
        assert_eq!((st.status, st.thermal), (Status::Running, Thermal::Hot));
        let log = sh(e, &id, "cat /workspace/log.txt").await;
        let want: String = (1..=round).map(|r| format!("round-{r}\n")).collect();
        assert_eq!(log, want, "data accumulates across cycle {round}");
        assert_eq!(
            sh(e, &id, &format!("kill -0 {pid} && echo alive"))
                .await
                .trim(),
            "alive",
            "process survived cycle {round}"
        );
    }
    // start on a running sandbox is a no-op, never a second VMM.
    e.start(&id, false).await.unwrap();
    let qemus = std::process::Command::new("pgrep")
        .args(["-f", &format!("sandboxes/{id}/")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&qemus.stdout).lines().count(), 1);
    e.destroy(&id).await.unwrap();
}

async fn thermal(kind: Kind) {
    let env = Env::new(kind);
    let e = &env.engine;
    let id = e.create(env.spec("thermal", 204)).await.unwrap().id;
    let before = e.activity(&id).await.unwrap();
    e.pause(&id).await.unwrap();
    assert_eq!(e.thermal(&id).unwrap(), Thermal::Warm);
    assert!(matches!(
        e.agent(&id),
        Err(EngineError::NotHot {
            thermal: Thermal::Warm,
            ..
        })
    ));
    let w = e.ensure_hot(&id).await.unwrap();
    assert_eq!(w.from, Thermal::Warm);
    assert_eq!(e.thermal(&id).unwrap(), Thermal::Hot);
    sh(e, &id, "true").await;
    let after = e.activity(&id).await.unwrap();
    assert!(after.last_activity_unix >= before.last_activity_unix);
    e.pause(&id).await.unwrap();
    e.resume(&id).await.unwrap();
    sh(e, &id, "echo warm-ok").await;
    e.stop(&id).await.unwrap();
    let w = e.ensure_hot(&id).await.unwrap();
    assert_eq!(w.from, Thermal::Cold);
    assert_eq!(sh(e, &id, "echo cold-ok").await.trim(), "cold-ok");
    e.destroy(&id).await.unwrap();
}

/// An HTTP GET from inside a guest with busybox `nc` (the static busybox's
/// `wget` crashes in glibc's resolver), giving up after 3 s.
fn http_get(ip: &str, port: u16) -> String {
    format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port} || true")
}

async fn networking(kind: Kind) {
    let env = Env::new(kind);
    let e = &env.engine;
    let a = e.create(env.spec("net-a", 205)).await.unwrap();
    let b = e.create(env.spec("net-b", 205)).await.unwrap();
    let c = e.create(env.spec("net-c", 206)).await.unwrap();
    assert_ne!(a.ip, b.ip);
    e.exec_detached(
        &b.id,
        vec![
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            "8000".into(),
            "-h".into(),
            "/workspace".into(),
        ],
        None,
    )
    .await
    .unwrap();
    sh(e, &b.id, "echo from-b > /workspace/index.html").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Same owner: reachable.
    let got = sh(e, &a.id, &http_get(&b.ip, 8000)).await;
    assert!(got.contains("from-b"), "{got}");
    // Other owner: not reachable.
    let r = e
        .exec(&c.id, vec!["sh".into(), "-c".into(), http_get(&b.ip, 8000)])
        .await
        .unwrap();
    assert!(
        !r.stdout_str().contains("from-b"),
        "cross-owner traffic must fail: {}",
        r.stdout_str()
    );
    // The network survives a snapshot/restore: the agent (host → guest) and the
    // sibling path work again.
    e.stop(&b.id).await.unwrap();
    e.start(&b.id, false).await.unwrap();
    e.exec_detached(
        &b.id,
        vec![
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            "8001".into(),
            "-h".into(),
            "/workspace".into(),
        ],
        None,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sh(e, &a.id, &http_get(&b.ip, 8001)).await;
    assert!(got.contains("from-b"), "{got}");
    for s in [a, b, c] {
        e.destroy(&s.id).await.unwrap();
    }
}

async fn checkpoint_and_fork(kind: Kind) {
    let env = Env::new(kind);
    let e = &env.engine;
    let src = e.create(env.spec("src", 207)).await.unwrap();
    sh(e, &src.id, "echo before-checkpoint > /workspace/state.txt").await;
    let pid = sh(e, &src.id, "sleep 100000 >/dev/null 2>&1 & echo $!")
        .await
        .trim()
        .to_string();
    let ck = env.data.join("checkpoints").join("c1");
    std::fs::create_dir_all(ck.parent().unwrap()).unwrap();
    let m = e.checkpoint(&src.id, &ck).await.unwrap();
    assert_eq!(m.created_from, src.id);
    // The source keeps running.
    assert_eq!(e.thermal(&src.id).unwrap(), Thermal::Hot);
    sh(e, &src.id, "echo after-checkpoint >> /workspace/state.txt").await;
    // Resume into a new sandbox while the source runs: same guest IP inside its
    // own namespace, a new external address.
    let fork = e
        .resume_checkpoint(
            &ck,
            ResumeSpec {
                name: "fork".into(),
                owner_index: 207,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(fork.id, src.id);
    assert_ne!(fork.ip, src.ip);
    // The fork was reseeded: a MAC address of its own (and fresh entropy).
    assert_ne!(
        sh(e, &fork.id, "cat /sys/class/net/eth0/address").await,
        sh(e, &src.id, "cat /sys/class/net/eth0/address").await
    );
    // ... and an agent token of its own: its config drive holds it, its
    // agent refuses the source's and takes its own.
    let (src_token, fork_token) = (drive_token(&env, &src.id), drive_token(&env, &fork.id));
    assert_ne!(src_token, fork_token);
    let fork_at = |token: &str| {
        bhatti_agent_client::AgentClient::new(
            bhatti_agent_client::Transport::Tcp {
                addr: fork.ip.parse().unwrap(),
            },
            Some(token.to_string()),
        )
    };
    assert!(matches!(
        fork_at(&src_token).exec(["true"]).await,
        Err(bhatti_agent_client::ClientError::Auth)
    ));
    assert_eq!(
        fork_at(&fork_token).exec(["true"]).await.unwrap().exit_code,
        0
    );
    assert_eq!(
        sh(e, &fork.id, "cat /workspace/state.txt").await,
        "before-checkpoint\n"
    );
    assert_eq!(
        sh(e, &fork.id, &format!("kill -0 {pid} && echo alive"))
            .await
            .trim(),
        "alive"
    );
    assert_eq!(
        sh(e, &src.id, "cat /workspace/state.txt").await,
        "before-checkpoint\nafter-checkpoint\n"
    );
    // A second checkpoint under the same name is refused.
    assert!(e.checkpoint(&src.id, &ck).await.is_err());
    // fork = checkpoint + resume in one step, the source still running.
    let f2 = e
        .fork(
            &src.id,
            ResumeSpec {
                name: "fork2".into(),
                owner_index: 207,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        sh(e, &f2.id, "cat /workspace/state.txt").await,
        "before-checkpoint\nafter-checkpoint\n"
    );
    let mut macs = std::collections::BTreeSet::new();
    for id in [&src.id, &fork.id, &f2.id] {
        macs.insert(sh(e, id, "cat /sys/class/net/eth0/address").await);
    }
    assert_eq!(
        macs.len(),
        3,
        "each fork has a MAC address of its own: {macs:?}"
    );
    let tokens: std::collections::BTreeSet<_> = [&src.id, &fork.id, &f2.id]
        .into_iter()
        .map(|id| drive_token(&env, id))
        .collect();
    assert_eq!(tokens.len(), 3, "each fork has a token of its own");
    assert!(
        !env.data.join("forks").read_dir().unwrap().any(|_| true),
        "fork scratch removed"
    );
    e.destroy(&f2.id).await.unwrap();
    e.destroy(&fork.id).await.unwrap();
    e.destroy(&src.id).await.unwrap();
}

/// The agent token in a sandbox's config drive (read with debugfs).
fn drive_token(env: &Env, id: &str) -> String {
    let drive = env.data.join("sandboxes").join(id).join("config.ext4");
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /config.json"])
        .arg(&drive)
        .output()
        .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{}: {e}", drive.display()));
    cfg["token"].as_str().unwrap().to_string()
}

/// The sandbox namespace's egress chain (the test's own sandboxes only),
/// from whichever iptables backend holds it.
fn egress_chain(id: &str) -> Vec<String> {
    let ns = bhatti_engine::net::netns_path(id).unwrap();
    let out = bhatti_engine::net::netns_egress_chain(&ns)
        .unwrap()
        .expect("the namespace has an egress chain");
    out.lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

/// What the namespace enforces: `deny` ends in a REJECT after the owner's
/// subnet only, `public` in an unconditional ACCEPT.
fn enforced(id: &str) -> &'static str {
    let chain = egress_chain(id);
    let last = chain.last().map(String::as_str).unwrap_or_default();
    if last == "-A BHATTI-EGRESS -j ACCEPT" {
        "public"
    } else if last.contains("-j REJECT") && chain.len() == 2 {
        "deny"
    } else {
        panic!("unexpected egress chain of {id}: {chain:?}")
    }
}

/// Egress policies follow the sandbox: a fork and a resumed checkpoint
/// keep the source's (`deny` stays `deny`) unless the request names one; a
/// live change applies to the namespace at once, is what `vm_state`
/// persists, survives stop/start and recovery, and is what the next
/// checkpoint records.
async fn egress_follows_forks_and_checkpoints(kind: Kind) {
    use bhatti_engine::net::EgressPolicy;
    let env = Env::new(kind);
    let e = &env.engine;
    let mut spec = env.spec("locked", 209);
    spec.egress = EgressPolicy::Deny;
    let src = e.create(spec).await.unwrap();
    assert_eq!(
        e.vm_state(&src.id).unwrap().egress,
        Some(EgressPolicy::Deny)
    );
    assert_eq!(enforced(&src.id), "deny");

    // A fork without a policy of its own keeps the source's.
    let inherit = |name: &str| ResumeSpec {
        name: name.into(),
        owner_index: 209,
        ..Default::default()
    };
    let f1 = e.fork(&src.id, inherit("fork-inherits")).await.unwrap();
    assert_eq!(e.vm_state(&f1.id).unwrap().egress, Some(EgressPolicy::Deny));
    assert_eq!(enforced(&f1.id), "deny");
    // The request's policy wins.
    let f2 = e
        .fork(
            &src.id,
            ResumeSpec {
                egress: Some(EgressPolicy::Public),
                ..inherit("fork-public")
            },
        )
        .await
        .unwrap();
    assert_eq!(
        e.vm_state(&f2.id).unwrap().egress,
        Some(EgressPolicy::Public)
    );
    assert_eq!(enforced(&f2.id), "public");
    e.destroy(&f2.id).await.unwrap();

    // A named checkpoint records the policy; resuming it uses it.
    let ck = env.data.join("checkpoints").join("locked");
    std::fs::create_dir_all(ck.parent().unwrap()).unwrap();
    let m = e.checkpoint(&src.id, &ck).await.unwrap();
    assert_eq!(m.egress, Some(EgressPolicy::Deny));
    let r = e.resume_checkpoint(&ck, inherit("resumed")).await.unwrap();
    assert_eq!(e.vm_state(&r.id).unwrap().egress, Some(EgressPolicy::Deny));
    assert_eq!(enforced(&r.id), "deny");
    e.destroy(&r.id).await.unwrap();

    // Live change: deny -> public -> deny on the running fork.
    e.set_egress(&f1.id, EgressPolicy::Public).await.unwrap();
    assert_eq!(enforced(&f1.id), "public");
    assert_eq!(
        e.vm_state(&f1.id).unwrap().egress,
        Some(EgressPolicy::Public)
    );
    e.set_egress(&f1.id, EgressPolicy::Deny).await.unwrap();
    assert_eq!(enforced(&f1.id), "deny");
    // Changed while stopped, kept across the restore.
    e.stop(&f1.id).await.unwrap();
    e.set_egress(&f1.id, EgressPolicy::Public).await.unwrap();
    e.start(&f1.id, false).await.unwrap();
    assert_eq!(enforced(&f1.id), "public");
    assert_eq!(sh(e, &f1.id, "echo up").await, "up\n");
    // And across a daemon restart: the persisted state carries it.
    e.stop(&f1.id).await.unwrap();
    let state = e.vm_state(&f1.id).unwrap();
    let state: bhatti_engine::contract::VmState =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    assert_eq!(state.egress, Some(EgressPolicy::Public));
    let e2 = MicroVmEngine::new(
        MicroVmConfig::new(
            env.data.clone(),
            artifact("BHATTI_GUEST_KERNEL", "/var/cache/bhatti/guest/vmlinux"),
            artifact(
                "BHATTI_GUEST_ROOTFS",
                "/var/cache/bhatti/guest/rootfs-minimal.ext4",
            ),
        ),
        driver_for(kind),
        env.restarted_net(),
    )
    .unwrap();
    // (A "restarted daemon": a second engine recovers the stopped fork.)
    let f1_id = f1.id.clone();
    e2.recover(state).await.unwrap();
    e2.set_egress(&f1_id, EgressPolicy::Deny).await.unwrap();
    assert_eq!(enforced(&f1_id), "deny");
    assert_eq!(
        e2.vm_state(&f1_id).unwrap().egress,
        Some(EgressPolicy::Deny)
    );
    e2.destroy(&f1_id).await.unwrap();
    e.destroy(&src.id).await.unwrap();
}

async fn corrupt_snapshot_and_recovery(kind: Kind) {
    let env = Env::new(kind);
    let e = &env.engine;
    let id = e.create(env.spec("recover", 208)).await.unwrap().id;
    sh(e, &id, "echo durable > /workspace/d.txt").await;
    e.stop(&id).await.unwrap();
    let state = e.vm_state(&id).unwrap();
    assert_eq!(state.status, Status::Stopped);

    // A restarted daemon: a second engine over the same data dir recovers it.
    let mut cfg = MicroVmConfig::new(
        env.data.clone(),
        artifact("BHATTI_GUEST_KERNEL", "/var/cache/bhatti/guest/vmlinux"),
        artifact(
            "BHATTI_GUEST_ROOTFS",
            "/var/cache/bhatti/guest/rootfs-minimal.ext4",
        ),
    );
    cfg.boot_timeout = Duration::from_secs(90);
    let e2 = MicroVmEngine::new(cfg, driver_for(kind), env.restarted_net()).unwrap();
    let rec = e2.recover(state.clone()).await.unwrap();
    assert_eq!((rec.status, rec.thermal), (Status::Stopped, Thermal::Cold));
    // Start-up cleanup removes what no known sandbox owns, and only that.
    let orphan = env.data.join("sandboxes").join("00112233aabbccdd");
    std::fs::create_dir_all(&orphan).unwrap();
    let removed = e2.cleanup_orphans(&[]).await.unwrap();
    assert!(!orphan.exists(), "orphan dir removed: {removed:?}");
    assert!(env.data.join("sandboxes").join(&id).exists());
    e2.start(&id, false).await.unwrap();
    assert_eq!(sh(&e2, &id, "cat /workspace/d.txt").await.trim(), "durable");
    // Running again (generation bumped): the old stopped state is now stale.
    let running = e2.vm_state(&id).unwrap();
    assert!(running.generation > state.generation);

    // Damage the snapshot: restore must fail with a clear error, trip the
    // breaker, and only --force retries.
    e2.stop(&id).await.unwrap();
    let snap = env.data.join("sandboxes").join(&id).join("snapshot");
    let manifest = snap.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let first = m["files"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    m["files"][&first] = serde_json::json!(1);
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let err = e2.start(&id, false).await.unwrap_err();
    assert!(matches!(err, EngineError::RestoreFailed { .. }), "{err}");
    assert!(err.to_string().contains("manifest says"));
    let err = e2.start(&id, false).await.unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    let err = e2.start(&id, true).await.unwrap_err();
    assert!(matches!(err, EngineError::RestoreFailed { .. }));
    e2.destroy(&id).await.unwrap();
}

/// Serialises the one test that cleans up host-wide orphans against the rest.
static SUITE: std::sync::RwLock<()> = std::sync::RwLock::new(());

macro_rules! suite {
    ($modname:ident, $kind:expr, $gate:meta) => {
        mod $modname {
            use super::*;

            fn run<F: std::future::Future<Output = ()>>(name: &str, f: impl FnOnce(Kind) -> F) {
                // One VM test at a time: two TCG guests plus their hosts' work
                // on a 2-core machine starve each other into timeouts.
                run_with(name, f, true)
            }

            /// `exclusive`: the test touches host-wide state (orphan clean-up
            /// removes every `bhatti-*` namespace it does not know), so no other
            /// test may have sandboxes meanwhile.
            fn run_with<F: std::future::Future<Output = ()>>(
                name: &str,
                f: impl FnOnce(Kind) -> F,
                exclusive: bool,
            ) {
                let (_shared, _exclusive) = if exclusive {
                    (None, Some(SUITE.write().unwrap_or_else(|p| p.into_inner())))
                } else {
                    (Some(SUITE.read().unwrap_or_else(|p| p.into_inner())), None)
                };
                // The build-time gate already ignores suites that cannot run; this
                // catches what only shows at run time, and fails rather than pass.
                if let Some(why) = skip_reason($kind) {
                    panic!("{name} ({:?}) cannot run here: {why}", $kind);
                }
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                // A watchdog: a hung guest fails the test instead of hanging CI.
                rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(600), f($kind))
                        .await
                        .unwrap_or_else(|_| panic!("{name} timed out"))
                });
            }

            #[test]
            #[$gate]
            fn lifecycle_vm() {
                run("lifecycle", lifecycle)
            }
            #[test]
            #[$gate]
            fn create_options_vm() {
                run("create_options", create_options)
            }
            #[test]
            #[$gate]
            fn stop_start_cycles_vm() {
                run("stop_start_cycles", stop_start_cycles)
            }
            #[test]
            #[$gate]
            fn thermal_vm() {
                run("thermal", thermal)
            }
            #[test]
            #[$gate]
            fn networking_vm() {
                run("networking", networking)
            }
            #[test]
            #[$gate]
            fn checkpoint_and_fork_vm() {
                run("checkpoint_and_fork", checkpoint_and_fork)
            }
            #[test]
            #[$gate]
            fn egress_follows_forks_and_checkpoints_vm() {
                run(
                    "egress_follows_forks_and_checkpoints",
                    egress_follows_forks_and_checkpoints,
                )
            }
            #[test]
            #[$gate]
            fn corrupt_snapshot_and_recovery_vm() {
                run(
                    "corrupt_snapshot_and_recovery",
                    corrupt_snapshot_and_recovery,
                )
            }
        }
    };
}

suite!(
    qemu,
    Kind::Qemu,
    cfg_attr(
        not(bhatti_vm_tests),
        ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
    )
);
suite!(
    firecracker,
    Kind::Firecracker,
    cfg_attr(
        not(bhatti_firecracker_guests),
        ignore = "needs BHATTI_FIRECRACKER_BIN, KVM that runs ordinary guests (kvm_intel/kvm_amd), root and the guest artifacts"
    )
);
