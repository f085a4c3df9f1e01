//! The Docker engine against a real dockerd (no mocks).
//!
//! Built with `cfg(bhatti_docker)` when `/var/run/docker.sock` exists or
//! `DOCKER_HOST` is set (see build.rs); otherwise every test is reported as
//! ignored. With the gate on, an unreachable dockerd or a missing image is a
//! failure, never a silent pass. Needs the sandbox image
//! (`scripts/docker-image.sh --lohar <static lohar>`; `BHATTI_DOCKER_IMAGE`
//! overrides its name) and root (the sandbox directories are root-owned).
//!
//! Every test uses its own data directory, name prefix and owner numbers, so
//! they run in parallel without touching each other's containers or networks.
//! Network traffic only goes to containers on bridges the test created.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bhatti_engine::contract::{
    Engine, EngineError, EngineExt, GuestFile, SandboxSpec, Status, Thermal, VolumeAttach,
};
use bhatti_engine::docker::{DockerConfig, DockerEngine, DEFAULT_IMAGE};
use bhatti_engine::net::EgressPolicy;

struct Env {
    engine: Arc<DockerEngine>,
    dir: tempfile::TempDir,
    prefix: String,
    // Dropped last: the next test starts only after this one cleaned up.
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

/// One Docker test at a time: dockerd rewrites its network-isolation rules
/// whenever a network is created or removed, and a test creating or deleting
/// owner networks meanwhile can open a window in another test's isolation
/// check.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn image() -> String {
    std::env::var("BHATTI_DOCKER_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.into())
}

fn config(data: PathBuf, prefix: &str) -> DockerConfig {
    let mut cfg = DockerConfig::new(data);
    cfg.image = image();
    cfg.prefix = prefix.into();
    cfg
}

impl Env {
    async fn new(test: &str) -> Env {
        let serial = SERIAL.lock().await;
        let dir = tempfile::Builder::new()
            .prefix("bhatti-docker-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let prefix = format!("bhtest-{test}-{}", std::process::id());
        let engine = DockerEngine::new(config(dir.path().to_path_buf(), &prefix))
            .await
            .unwrap_or_else(|e| panic!("dockerd must be reachable for this test: {e}"));
        engine
            .docker()
            .inspect_image(&image())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "image {} missing ({e}): scripts/docker-image.sh --lohar <static lohar>",
                    image()
                )
            });
        Env {
            engine: Arc::new(engine),
            dir,
            prefix,
            _one_at_a_time: serial,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    async fn second_engine(&self) -> DockerEngine {
        DockerEngine::new(config(self.data(), &self.prefix))
            .await
            .expect("second engine")
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
    /// Whatever happened (a failed assertion included), leave no container,
    /// network or directory of this test behind: a fresh engine on the same
    /// data directory knows no sandbox, so everything labelled with it is an
    /// orphan. (A fresh client too: the test's runtime may be unwinding.)
    fn drop(&mut self) {
        let (data, prefix) = (self.data(), self.prefix.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(e) = DockerEngine::new(config(data, &prefix)).await {
                    let _ = e.cleanup_orphans(&[]).await;
                }
            });
        })
        .join();
    }
}

/// `sh -c` in the sandbox, which must succeed (takes the engine itself, so
/// `&Arc<…>` coerces).
async fn sh(e: &DockerEngine, id: &str, script: &str) -> String {
    common::sh(e, id, script).await
}

async fn container_state(e: &DockerEngine, id: &str) -> Option<String> {
    let c = e
        .docker()
        .inspect_container(&e.container_name(id), None)
        .await
        .ok()?;
    c.state?.status.map(|s| s.to_string())
}

async fn network_exists(e: &DockerEngine, name: &str) -> bool {
    e.docker().inspect_network(name, None).await.is_ok()
}

#[tokio::test]
#[cfg_attr(not(bhatti_docker), ignore = "needs a running dockerd")]
async fn lifecycle() {
    let env = Env::new("life").await;
    let e = &env.engine;
    let info = e.create(env.spec("life", 301)).await.unwrap();
    assert_eq!((info.status, info.thermal), (Status::Running, Thermal::Hot));
    assert!(!info.ip.is_empty(), "container has an address: {info:?}");
    let id = info.id.clone();

    // exec: runs as uid 1000 with the default environment.
    assert_eq!(sh(e, &id, "id -u").await.trim(), "1000");
    assert!(sh(e, &id, "echo $HOME").await.contains("/home/lohar"));
    let r = e
        .exec(&id, vec!["sh".into(), "-c".into(), "exit 3".into()])
        .await
        .unwrap();
    assert_eq!(r.exit_code, 3);
    // lohar is PID 1 and reaps orphans (a double-forked child exits later).
    assert!(sh(e, &id, "tr '\\0' ' ' < /proc/1/cmdline")
        .await
        .contains("lohar container"));
    sh(e, &id, "(sleep 0.2 &) ; true").await;
    let mut zombies = String::new();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        zombies = sh(e, &id, "grep -l '^State:.*Z' /proc/[0-9]*/status || true").await;
        if zombies.trim().is_empty() {
            break;
        }
    }
    assert!(zombies.trim().is_empty(), "zombies left: {zombies}");
    // The sandbox user cannot read the token directory.
    let r = e
        .exec(&id, vec!["cat".into(), "/run/bhatti/token".into()])
        .await
        .unwrap();
    assert_ne!(r.exit_code, 0, "token readable by uid 1000");
    // The token is not in the container's environment.
    let c = e
        .docker()
        .inspect_container(&e.container_name(&id), None)
        .await
        .unwrap();
    let cenv = c.config.and_then(|c| c.env).unwrap_or_default().join("\n");
    assert!(cenv.contains("LOHAR_TOKEN_FILE"));
    let token =
        std::fs::read_to_string(env.data().join("sandboxes").join(&id).join("token")).unwrap();
    assert!(!cenv.contains(token.trim()));

    common::in_sandbox(e.as_ref(), &id).await;

    // checkpoints and forks are not offered.
    assert!(matches!(
        e.checkpoint(&id, &env.data().join("ckpt")).await,
        Err(EngineError::Unsupported { .. })
    ));

    // destroy removes the container, the directory and the owner network.
    let net = e.network_name(301, &EgressPolicy::Public);
    assert!(network_exists(e, &net).await);
    e.destroy(&id).await.unwrap();
    assert_eq!(container_state(e, &id).await, None);
    assert!(!env.data().join("sandboxes").join(&id).exists());
    assert!(!network_exists(e, &net).await, "owner network removed");
    assert!(matches!(e.status(&id).await, Err(EngineError::NotFound(_))));
}

#[tokio::test]
#[cfg_attr(not(bhatti_docker), ignore = "needs a running dockerd")]
async fn create_options() {
    let env = Env::new("opts").await;
    let e = &env.engine;
    let vol = env.data().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let ro = env.data().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("given"), "from host\n").unwrap();
    let mut spec = env.spec("opts", 302);
    spec.cpus = 2;
    spec.memory_mb = 384;
    spec.env
        .insert("GREETING".into(), "hello from config".into());
    spec.env.insert("MULTI".into(), "a\nb\\c".into());
    spec.init = "echo init-ran > /workspace/init.txt; sleep 600".into();
    spec.files.insert(
        "/home/lohar/.config/app.conf".into(),
        GuestFile {
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
    spec.volumes.push(VolumeAttach {
        name: "ro".into(),
        file: ro.clone(),
        mount: "/ro".into(),
        read_only: true,
    });
    let id = e.create(spec).await.unwrap().id;

    // Limits, as the container's cgroup shows them (v2 or v1).
    let cpu = sh(
        e,
        &id,
        "cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)",
    )
    .await;
    let q: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(q.len(), 2, "cpu limit {cpu:?}");
    assert_eq!(q[0] / q[1], 2, "cpu limit {cpu:?}");
    let mem: u64 = sh(
        e,
        &id,
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    )
    .await
    .trim()
    .parse()
    .unwrap();
    assert_eq!(mem, 384 * 1024 * 1024);

    assert_eq!(
        sh(e, &id, "echo $GREETING").await.trim(),
        "hello from config"
    );
    assert_eq!(sh(e, &id, "printf %s \"$MULTI\"").await, "a\nb\\c");
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
    // Volumes: read-write reaches the host; read-only refuses writes.
    sh(e, &id, "echo persisted > /data/file").await;
    assert_eq!(sh(e, &id, "cat /ro/given").await, "from host\n");
    let r = e
        .exec(
            &id,
            vec!["sh".into(), "-c".into(), "echo x > /ro/new".into()],
        )
        .await
        .unwrap();
    assert_ne!(r.exit_code, 0, "read-only volume accepted a write");
    // init runs as the attachable session "init".
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
    assert_eq!(
        std::fs::read_to_string(vol.join("file")).unwrap(),
        "persisted\n"
    );

    // Refused before anything is allocated.
    let mut bad = env.spec("bad", 302);
    bad.memory_mb = 64;
    assert!(matches!(e.create(bad).await, Err(EngineError::Invalid(_))));
    let mut bad = env.spec("bad", 302);
    bad.volumes.push(VolumeAttach {
        name: "img".into(),
        file: env.data().join("not-a-dir.ext4"),
        mount: "/x".into(),
        read_only: false,
    });
    assert!(matches!(e.create(bad).await, Err(EngineError::Invalid(_))));
    let mut bad = env.spec("bad", 302);
    bad.egress = EgressPolicy::Allow(vec!["192.0.2.0/24".parse().unwrap()]);
    assert!(matches!(
        e.create(bad).await,
        Err(EngineError::Unsupported { .. })
    ));
    let mut bad = env.spec("bad", 302);
    bad.image = Some("bhatti/does-not-exist:never".into());
    assert!(matches!(e.create(bad).await, Err(EngineError::Invalid(_))));
    assert!(e.list().await.is_empty());
    assert_eq!(
        std::fs::read_dir(env.data().join("sandboxes"))
            .unwrap()
            .count(),
        0,
        "failed creates leave no directory"
    );
}

#[tokio::test]
#[cfg_attr(not(bhatti_docker), ignore = "needs a running dockerd")]
async fn thermal_pause_and_wake() {
    let env = Env::new("thermal").await;
    let e = &env.engine;
    let id = e.create(env.spec("warm", 303)).await.unwrap().id;
    sh(e, &id, "echo before > /workspace/f").await;
    e.pause(&id).await.unwrap();
    assert_eq!(e.thermal(&id).unwrap(), Thermal::Warm);
    assert_eq!(container_state(e, &id).await.as_deref(), Some("paused"));
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
    assert_eq!(container_state(e, &id).await.as_deref(), Some("running"));
    assert_eq!(sh(e, &id, "cat /workspace/f").await, "before\n");
    // pause + resume keeps processes.
    e.exec_detached(&id, vec!["sleep".into(), "600".into()], None)
        .await
        .unwrap();
    e.pause(&id).await.unwrap();
    e.resume(&id).await.unwrap();
    assert!(sh(e, &id, "ps").await.contains("sleep 600"));
    e.destroy(&id).await.unwrap();
}

#[tokio::test]
#[cfg_attr(not(bhatti_docker), ignore = "needs a running dockerd")]
async fn stop_start_keeps_files_not_processes() {
    let env = Env::new("stopstart").await;
    let e = &env.engine;
    assert!(!e.capabilities().memory_snapshots);
    let id = e.create(env.spec("cold", 304)).await.unwrap().id;
    sh(e, &id, "echo kept > /workspace/f").await;
    e.exec_detached(&id, vec!["sleep".into(), "600".into()], None)
        .await
        .unwrap();
    e.pause(&id).await.unwrap(); // stop works from warm too
    e.stop(&id).await.unwrap();
    let s = e.status(&id).await.unwrap();
    assert_eq!((s.status, s.thermal), (Status::Stopped, Thermal::Cold));
    assert_eq!(container_state(e, &id).await.as_deref(), Some("exited"));
    assert!(matches!(e.agent(&id), Err(EngineError::NotHot { .. })));
    e.stop(&id).await.unwrap(); // idempotent

    let s = e.start(&id, false).await.unwrap();
    assert_eq!((s.status, s.thermal), (Status::Running, Thermal::Hot));
    assert_eq!(sh(e, &id, "cat /workspace/f").await, "kept\n");
    assert!(!sh(e, &id, "ps").await.contains("sleep 600"));
    // start on a running sandbox is a no-op.
    e.start(&id, false).await.unwrap();

    // ensure_hot from cold.
    e.stop(&id).await.unwrap();
    let w = e.ensure_hot(&id).await.unwrap();
    assert_eq!(w.from, Thermal::Cold);
    assert_eq!(sh(e, &id, "cat /workspace/f").await, "kept\n");
    e.destroy(&id).await.unwrap();
}

/// HTTP GET from inside sandbox `from` to `ip:8080`; true when it answered.
/// (busybox `nc`: the static busybox's `wget` crashes resolving names.)
async fn reaches(e: &DockerEngine, from: &str, ip: &str) -> bool {
    let script = format!("printf 'GET /hello HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080");
    let r = e
        .exec(from, vec!["sh".into(), "-c".into(), script])
        .await
        .unwrap();
    r.stdout_str().contains("hi")
}

#[tokio::test]
#[cfg_attr(not(bhatti_docker), ignore = "needs a running dockerd")]
async fn owners_are_isolated() {
    let env = Env::new("net").await;
    let e = &env.engine;
    let (a1, a2, b1) = tokio::join!(
        e.create(env.spec("a1", 305)),
        e.create(env.spec("a2", 305)),
        e.create(env.spec("b1", 306)),
    );
    let (a1, a2, b1) = (a1.unwrap(), a2.unwrap(), b1.unwrap());
    sh(
        e,
        &a1.id,
        "mkdir -p /workspace/www && echo hi > /workspace/www/hello",
    )
    .await;
    e.exec_detached(
        &a1.id,
        vec![
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            "/workspace/www".into(),
        ],
        None,
    )
    .await
    .unwrap();
    for _ in 0..50 {
        if e.listening_ports(&a1.id).await.unwrap().contains(&8080) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reaches(e, &a2.id, &a1.ip).await, "same owner reaches");
    assert!(
        !reaches(e, &b1.id, &a1.ip).await,
        "other owner must not reach"
    );

    // egress deny: an internal network of its own.
    let mut spec = env.spec("deny", 305);
    spec.egress = EgressPolicy::Deny;
    let d = e.create(spec).await.unwrap();
    let n = e
        .docker()
        .inspect_network(&e.network_name(305, &EgressPolicy::Deny), None)
        .await
        .unwrap();
    assert_eq!(n.internal, Some(true));
    assert!(!reaches(e, &d.id, &a1.ip).await);
    let nets: HashMap<_, _> = [(&a1, 305u16), (&b1, 306)]
        .iter()
        .map(|(s, o)| (s.id.clone(), e.network_name(*o, &EgressPolicy::Public)))
        .collect();
    for id in [&a1.id, &a2.id, &b1.id, &d.id] {
        e.destroy(id).await.unwrap();
    }
    for net in nets.values() {
        assert!(!network_exists(e, net).await, "{net} removed");
    }
}

#[tokio::test]
#[cfg_attr(not(bhatti_docker), ignore = "needs a running dockerd")]
async fn recovery_and_orphans() {
    let env = Env::new("recover").await;
    let e = &env.engine;
    let hot = e.create(env.spec("hot", 307)).await.unwrap().id;
    let warm = e.create(env.spec("warm", 307)).await.unwrap().id;
    let cold = e.create(env.spec("cold", 307)).await.unwrap().id;
    let orphan = e.create(env.spec("orphan", 307)).await.unwrap().id;
    sh(e, &hot, "echo survived > /workspace/f").await;
    sh(e, &cold, "echo cold-file > /workspace/f").await;
    e.pause(&warm).await.unwrap();
    e.stop(&cold).await.unwrap();
    let states: Vec<_> = [&hot, &warm, &cold]
        .iter()
        .map(|id| e.vm_state(id).expect("state"))
        .collect();
    // JSON round trip, as the store keeps it.
    let states: Vec<bhatti_engine::contract::VmState> =
        serde_json::from_str(&serde_json::to_string(&states).unwrap()).unwrap();

    // A "restarted daemon": a second engine on the same data directory.
    let e2 = env.second_engine().await;
    let mut got = Vec::new();
    for s in states {
        got.push(e2.recover(s).await.unwrap());
    }
    assert_eq!(got[0].thermal, Thermal::Hot);
    assert_eq!(got[1].thermal, Thermal::Warm);
    assert_eq!(got[2].thermal, Thermal::Cold);
    assert_eq!(sh(&e2, &hot, "cat /workspace/f").await, "survived\n");
    e2.ensure_hot(&warm).await.unwrap();
    sh(&e2, &warm, "true").await;
    e2.start(&cold, false).await.unwrap();
    assert_eq!(sh(&e2, &cold, "cat /workspace/f").await, "cold-file\n");

    // The orphan (unknown to e2) is removed; the recovered ones stay.
    let removed = e2.cleanup_orphans(&[]).await.unwrap();
    assert!(
        removed.iter().any(|r| r.contains(&orphan)),
        "removed {removed:?}"
    );
    assert_eq!(container_state(&e2, &orphan).await, None);
    assert_eq!(container_state(&e2, &hot).await.as_deref(), Some("running"));
    // A state whose container is gone cannot be recovered.
    let gone = e.vm_state(&orphan).expect("state");
    let e3 = env.second_engine().await;
    assert!(e3.recover(gone).await.is_err());
    for id in [&hot, &warm, &cold] {
        e2.destroy(id).await.unwrap();
    }
    let _ = e.destroy(&orphan).await;
}

/// An image without lohar (busybox only, imported here: Docker Hub is not
/// reachable) works as a sandbox when the engine injects a static lohar.
#[tokio::test]
#[cfg_attr(not(bhatti_docker), ignore = "needs a running dockerd")]
async fn lohar_is_injected_into_foreign_images() {
    let lohar = std::env::var_os("BHATTI_LOHAR_STATIC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/x86_64-unknown-linux-gnu/release/lohar")
        });
    assert!(
        lohar.is_file(),
        "a static lohar is needed at {} (scripts/test.sh builds it)",
        lohar.display()
    );
    let env = Env::new("inject").await;
    // A busybox-only image.
    let tree = env.data().join("plain-tree");
    for d in ["bin", "tmp", "workspace", "etc"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    for applet in ["sh", "id", "echo", "cat", "true"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
    }
    let tag = format!("bhatti-test/plain-{}:latest", std::process::id());
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | docker import - {tag} >/dev/null",
            tree.display()
        ))
        .status()
        .unwrap();
    assert!(st.success(), "docker import failed");
    let mut cfg = config(env.data().join("inj"), &format!("{}-inj", env.prefix));
    cfg.image = tag.clone();
    cfg.inject_lohar = Some(lohar);
    let e = DockerEngine::new(cfg).await.unwrap();
    let id = e.create(env.spec("foreign", 309)).await.unwrap().id;
    assert_eq!(sh(&e, &id, "id -u").await.trim(), "1000");
    let pid1 = sh(&e, &id, "cat /proc/1/cmdline").await;
    assert!(pid1.starts_with("/run/bhatti/lohar"), "{pid1:?}");
    e.destroy(&id).await.unwrap();
    let _ = e.cleanup_orphans(&[]).await;
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &tag])
        .output();
}

// ----------------------------------------------------------- egress rules

fn cmd(prog: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(prog)
        .args(args)
        .output()
        .expect("spawn");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ip(args: &[&str]) {
    let (ok, out) = cmd("ip", args);
    assert!(ok, "ip {}: {out}", args.join(" "));
}

/// `DOCKER-USER` rules carrying exactly this tag.
fn tagged_rules(tag: &str) -> Vec<String> {
    let (ok, out) = cmd("iptables", &["-w", "-S", "DOCKER-USER"]);
    assert!(ok, "iptables -S DOCKER-USER: {out}");
    out.lines()
        .filter(|l| {
            l.contains(&format!("--comment \"{tag}\"")) || l.contains(&format!("--comment {tag} "))
        })
        .map(str::to_string)
        .collect()
}

const DST_TABLE: &str = "26729";
const DST_METADATA: &str = "169.254.169.254";
const DST_PRIVATE: &str = "192.168.235.1";
const DST_PUBLIC_LIKE: &str = "198.18.3.1";

/// A namespace holding cloud-metadata, a private and a benchmark-range
/// address, reachable only from one Docker bridge the test created (a
/// policy-routing rule for packets arriving on that bridge, in a table of
/// the test's own); the host's routes are neither used nor changed. A TCP
/// server in it greets every connection with "dst". Removed on drop.
struct Destinations {
    ns: String,
    bridge: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    port: u16,
}

impl Destinations {
    fn new(bridge: &str) -> Destinations {
        let (_, used) = cmd("ip", &["-4", "route", "show", "table", DST_TABLE]);
        assert!(
            used.trim().is_empty() || used.contains("does not exist"),
            "routing table {DST_TABLE} is in use: {used}"
        );
        let ns = format!("bhatti-test-ddst-{}", std::process::id());
        let _ = cmd("ip", &["netns", "del", &ns]);
        ip(&["netns", "add", &ns]);
        let mut d = Destinations {
            ns: ns.clone(),
            bridge: bridge.to_string(),
            stop: Default::default(),
            port: 0,
        };
        ip(&[
            "link",
            "add",
            "bhtst-ddst0",
            "type",
            "veth",
            "peer",
            "name",
            "dst0",
            "netns",
            &ns,
        ]);
        std::fs::write("/proc/sys/net/ipv4/conf/bhtst-ddst0/rp_filter", "2").unwrap();
        ip(&["addr", "add", "198.18.3.2/32", "dev", "bhtst-ddst0"]);
        ip(&["link", "set", "bhtst-ddst0", "up"]);
        for a in [DST_METADATA, DST_PRIVATE, DST_PUBLIC_LIKE] {
            ip(&["-n", &ns, "addr", "add", &format!("{a}/32"), "dev", "dst0"]);
            ip(&[
                "route",
                "add",
                &format!("{a}/32"),
                "dev",
                "bhtst-ddst0",
                "table",
                DST_TABLE,
            ]);
        }
        ip(&["-n", &ns, "link", "set", "dst0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "198.18.3.2/32", "dev", "dst0"]);
        ip(&[
            "rule", "add", "pref", DST_TABLE, "iif", bridge, "lookup", DST_TABLE,
        ]);
        // The server's socket lives in the namespace it was created in.
        let listener = bhatti_engine::net::run_in_netns(
            std::path::Path::new("/var/run/netns").join(&ns),
            || std::net::TcpListener::bind(("0.0.0.0", 0)),
        )
        .expect("enter netns")
        .expect("bind");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = d.stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < deadline
            {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(b"dst\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        d.port = port;
        d
    }
}

impl Drop for Destinations {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = cmd(
            "ip",
            &[
                "rule",
                "del",
                "pref",
                DST_TABLE,
                "iif",
                &self.bridge,
                "lookup",
                DST_TABLE,
            ],
        );
        let _ = cmd("ip", &["netns", "del", &self.ns]);
        let _ = cmd("ip", &["link", "del", "dev", "bhtst-ddst0"]);
        let _ = cmd("ip", &["-4", "route", "flush", "table", DST_TABLE]);
    }
}

/// Whether sandbox `from` gets the destination server's greeting at `ip`.
async fn greets(e: &DockerEngine, from: &str, ip: &str, port: u16) -> bool {
    let script = format!("nc -w 3 {ip} {port} </dev/null");
    let r = e
        .exec(from, vec!["sh".into(), "-c".into(), script])
        .await
        .unwrap();
    r.stdout_str().contains("dst")
}

/// Egress `public` on Docker: the owner bridge gets a `DOCKER-USER` jump
/// (tagged with the network's name) to REJECT rules for the blocked
/// networks, so cloud
/// metadata and private ranges are unreachable while other destinations
/// are reached; siblings are unaffected; the rules go with the network, and
/// orphan clean-up removes stale rules of this engine's networks only.
/// Egress cannot switch class after create (Unsupported).
#[tokio::test]
#[cfg_attr(not(bhatti_docker), ignore = "needs a running dockerd")]
async fn public_egress_refuses_metadata_and_private_ranges() {
    let env = Env::new("egress").await;
    let e = &env.engine;
    let a = e.create(env.spec("a", 310)).await.unwrap();
    let b = e.create(env.spec("b", 310)).await.unwrap();
    let net = e.network_name(310, &EgressPolicy::Public);
    let tag = format!("bhatti-egress:{net}");
    // One tagged jump in DOCKER-USER for the owner bridge ...
    let rules = tagged_rules(&tag);
    assert_eq!(rules.len(), 1, "{rules:?}");
    let n = e.docker().inspect_network(&net, None).await.unwrap();
    let bridge = n
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
        .unwrap_or_else(|| format!("br-{}", &n.id.as_deref().unwrap()[..12]));
    assert!(
        rules[0].contains(&format!("-i {bridge} ! -o {bridge} ")),
        "{rules:?}"
    );
    // ... to a chain of the network's own: DNS to the host's resolvers that
    // lie in a blocked range (dockerd forwards to them from inside the
    // container), then a REJECT per blocked network.
    let chain = rules[0].rsplit(' ').next().unwrap().to_string();
    assert!(chain.starts_with("BHATTI-DKR-"), "{chain}");
    let (ok, body) = cmd("iptables", &["-w", "-S", &chain]);
    assert!(ok, "{body}");
    assert_eq!(body.matches("-j REJECT").count(), 5, "{body}");
    assert!(body.contains("-d 169.254.0.0/16 -j REJECT"), "{body}");
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for ns in resolv
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::Ipv4Addr>().ok())
        .filter(|a| a.is_private() || a.is_link_local())
    {
        assert!(
            body.contains(&format!("-d {ns}/32 -p udp -m udp --dport 53 -j RETURN")),
            "DNS exception for {ns}: {body}"
        );
    }

    let dst = Destinations::new(&bridge);
    assert!(
        greets(e, &a.id, DST_PUBLIC_LIKE, dst.port).await,
        "public-like address must be reachable"
    );
    assert!(
        !greets(e, &a.id, DST_METADATA, dst.port).await,
        "cloud metadata must be refused"
    );
    assert!(
        !greets(e, &a.id, DST_PRIVATE, dst.port).await,
        "private range must be refused"
    );
    // Control: without the jump the same addresses answer, so it is the
    // rules that refuse them.
    for r in &rules {
        let args: Vec<String> = r
            .trim_start_matches("-A DOCKER-USER ")
            .split_whitespace()
            .map(|w| w.trim_matches('"').to_string())
            .collect();
        let mut full = vec!["-w".to_string(), "-D".into(), "DOCKER-USER".into()];
        full.extend(args);
        let (ok, out) = cmd(
            "iptables",
            &full.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(ok, "{out}");
    }
    assert!(greets(e, &a.id, DST_METADATA, dst.port).await, "control");
    // A (re)start restores missing rules.
    e.stop(&a.id).await.unwrap();
    e.start(&a.id, false).await.unwrap();
    assert_eq!(tagged_rules(&tag).len(), 1);
    assert!(!greets(e, &a.id, DST_METADATA, dst.port).await);
    drop(dst);

    // Siblings on the bridge still reach each other (its subnet lies in
    // 172.16.0.0/12, a blocked range).
    e.exec_detached(
        &b.id,
        vec![
            "sh".into(),
            "-c".into(),
            "echo hi > /tmp/hello; httpd -f -p 8080 -h /tmp".into(),
        ],
        None,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(reaches(e, &a.id, &b.ip).await, "sibling reachable");

    // Policy changes: only a no-op is possible on Docker.
    e.set_egress(&a.id, EgressPolicy::Public).await.unwrap();
    for p in [
        EgressPolicy::Deny,
        EgressPolicy::Allow(vec!["192.0.2.0/24".parse().unwrap()]),
    ] {
        assert!(
            matches!(
                e.set_egress(&a.id, p.clone()).await,
                Err(EngineError::Unsupported { .. })
            ),
            "{p:?}"
        );
    }
    assert_eq!(
        e.vm_state(&a.id).unwrap().egress,
        Some(EgressPolicy::Public)
    );

    // The rules go with the network.
    e.destroy(&a.id).await.unwrap();
    assert_eq!(tagged_rules(&tag).len(), 1, "network still in use by b");
    e.destroy(&b.id).await.unwrap();
    assert!(!network_exists(e, &net).await);
    assert!(
        tagged_rules(&tag).is_empty(),
        "rules removed with the network"
    );
    assert!(
        !cmd("iptables", &["-w", "-S", &chain]).0,
        "chain removed with the network"
    );

    // Orphan clean-up: a stale rule of one of this engine's networks goes,
    // a rule of another prefix stays.
    let stale = format!("bhatti-egress:{}-owner-399", env.prefix);
    let other = format!("bhatti-egress:bhtest-other-{}-owner-1", std::process::id());
    for t in [&stale, &other] {
        let (ok, out) = cmd(
            "iptables",
            &[
                "-w",
                "-I",
                "DOCKER-USER",
                "1",
                "-d",
                "192.0.2.0/24",
                "-i",
                "bhtst-nobr0",
                "-m",
                "comment",
                "--comment",
                t,
                "-j",
                "REJECT",
            ],
        );
        assert!(ok, "{out}");
    }
    let removed = e.cleanup_orphans(&[]).await.unwrap();
    let stale_left = tagged_rules(&stale);
    let other_left = tagged_rules(&other);
    let _ = cmd(
        "iptables",
        &[
            "-w",
            "-D",
            "DOCKER-USER",
            "-d",
            "192.0.2.0/24",
            "-i",
            "bhtst-nobr0",
            "-m",
            "comment",
            "--comment",
            &other,
            "-j",
            "REJECT",
        ],
    );
    assert!(stale_left.is_empty(), "{removed:?}");
    assert_eq!(other_left.len(), 1, "another engine's rule was removed");
}
