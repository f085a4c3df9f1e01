//! Images, each figure beside a baseline measured in the same run:
//! - pull + convert of a ~250 MB image (two gzip layers: the `base` tree's
//!   `/usr/bin` and `/usr/share`) from a real registry on loopback, with a
//!   cold blob cache, through `bhatti-image` (download, digest checks,
//!   layer application, lohar, `mke2fs -d`) vs `skopeo copy` of the same
//!   image to a directory + `tar -xzf` of its layers + `mke2fs -d` of the
//!   tree — the same work done by the standard tools (target ≤ 1.2×);
//! - create → first exec on the microVM engine with the `base` image vs the
//!   `minimal` one.
//!
//! Run as root with the guest artifacts, the base image
//! (scripts/guest/build-debian-rootfs.sh), docker-registry and skopeo:
//! `cargo bench -p bhatti-server --bench images` → bench/results/images.{json,md}.
//! Prints why and exits 0 if it cannot run.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

#[path = "../tests/common/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bhatti_benchkit::Report;
use bhatti_engine::contract::{Engine, EngineExt, SandboxSpec};
use bhatti_engine::microvm::{MicroVmConfig, MicroVmEngine};
use bhatti_engine::net::NetManager;
use bhatti_engine::vmm::qemu::{QemuConfig, QemuDriver};
use bhatti_engine::vmm::VmmDriver;
use bhatti_image::{BlobCache, Progress, Registry};
use registry::{oci_layout, push, run, tar_gz, LocalRegistry};
use serde_json::json;

const CACHE: &str = "/var/cache/bhatti/guest";

fn base_image() -> PathBuf {
    std::env::var("BHATTI_GUEST_BASE_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(CACHE).join("rootfs-base.ext4"))
}

/// The debootstrapped tree the base image was packed from.
fn base_tree() -> Option<PathBuf> {
    std::fs::read_dir(Path::new(CACHE).join("staging"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name().is_some_and(|n| {
                    n.to_string_lossy().starts_with("debian-")
                        && !n.to_string_lossy().ends_with(".tmp")
                })
        })
}

fn lohar() -> Option<PathBuf> {
    std::env::var_os("BHATTI_LOHAR_STATIC")
        .map(PathBuf::from)
        .or_else(|| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/x86_64-unknown-linux-gnu/release/lohar");
            p.is_file().then_some(p)
        })
}

fn why_not() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root".into());
    }
    for tool in ["docker-registry", "skopeo", "mke2fs", "tar"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("needs {tool}"));
        }
    }
    if base_tree().is_none() || !base_image().is_file() {
        return Some("needs the base image (scripts/guest/build-debian-rootfs.sh)".into());
    }
    if lohar().is_none() {
        return Some("needs a static lohar (BHATTI_LOHAR_STATIC)".into());
    }
    None
}

fn layer_of(tree: &Path, sub: &str, work: &Path) -> Vec<u8> {
    let t = work.join(format!("layer-{}", sub.replace('/', "-")));
    std::fs::create_dir_all(t.join(sub).parent().unwrap()).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(tree.join(sub))
        .arg(t.join(sub)));
    let b = tar_gz(&t);
    let _ = std::fs::remove_dir_all(&t);
    b
}

/// The standard tools doing the same work: download, unpack, mke2fs.
fn baseline(reference: &str, work: &Path) {
    let dir = work.join("skopeo-dir");
    let tree = work.join("skopeo-tree");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&tree);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dir.display())));
    std::fs::create_dir_all(&tree).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        let hex = &l["digest"].as_str().unwrap()[7..];
        run(Command::new("tar")
            .args(["--numeric-owner", "-xzf"])
            .arg(dir.join(hex))
            .arg("-C")
            .arg(&tree));
    }
    let out = work.join("baseline.ext4");
    run(Command::new("mke2fs")
        .args(["-t", "ext4", "-F", "-q", "-d"])
        .arg(&tree)
        .arg(&out)
        .arg("1024M"));
    let _ = std::fs::remove_file(out);
}

async fn pull_convert(reference: &str, work: &Path, lohar: &Path) {
    let cache_dir = work.join("blobs");
    let _ = std::fs::remove_dir_all(&cache_dir);
    let cache = BlobCache::open(&cache_dir).unwrap();
    let reg = Registry::new(Vec::new(), Duration::from_secs(60));
    let progress = Progress::default();
    let pulled = reg
        .pull(reference, None, &cache, &progress)
        .await
        .expect("pull");
    let (staging, out, lohar) = (
        work.join("staging"),
        work.join("image.ext4"),
        lohar.to_path_buf(),
    );
    tokio::task::spawn_blocking(move || {
        bhatti_image::rootfs::build(&pulled.layers, &cache, &staging, &lohar, &out, None)
            .expect("convert");
        let _ = std::fs::remove_file(out);
    })
    .await
    .unwrap();
}

async fn create_and_exec(engine: &MicroVmEngine, image: Option<PathBuf>, i: usize) -> Duration {
    let t0 = Instant::now();
    let info = engine
        .create(SandboxSpec {
            name: format!("bench-{i}"),
            // The engine bench's owner network, far from the first users'.
            owner_index: 250,
            image,
            cpus: 1,
            memory_mb: 512,
            ..Default::default()
        })
        .await
        .expect("create");
    let out = engine
        .exec(&info.id, vec!["true".to_string()])
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 0);
    let took = t0.elapsed();
    engine.destroy(&info.id).await.expect("destroy");
    took
}

fn main() {
    if let Some(why) = why_not() {
        println!("images bench skipped: {why}");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut report = Report::new("images");
        let work = tempfile::Builder::new()
            .prefix("bhatti-bench-images-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let tree = base_tree().unwrap();
        let lohar = lohar().unwrap();

        // A ~250 MB image from the base tree, pushed to a loopback registry.
        let reg = LocalRegistry::start(false);
        let layout = work.path().join("layout");
        let layers = vec![
            layer_of(&tree, "usr/bin", work.path()),
            layer_of(&tree, "usr/share", work.path()),
        ];
        let compressed: usize = layers.iter().map(Vec::len).sum();
        oci_layout(
            &layout,
            &layers,
            json!({"config": {"Env": ["PATH=/usr/bin:/bin"]}}),
        );
        drop(layers);
        push(&layout, &reg.addr, "bench/big");
        let reference = format!("{}/bench/big:t", reg.addr);

        let iters: usize = std::env::var("BHATTI_BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let t = Instant::now();
            baseline(&reference, work.path());
            theirs.push(t.elapsed());
            let t = Instant::now();
            pull_convert(&reference, work.path(), &lohar).await;
            ours.push(t.elapsed());
        }
        report.latency(
            "image pull + convert (~250 MB, cold cache)",
            &ours,
            Some(("skopeo copy + tar -x + mke2fs -d", &theirs)),
            &format!(
                "{} MB of gzip layers; same registry, same run",
                compressed >> 20
            ),
        );

        // Create → first exec: base vs minimal, on QEMU.
        let data = work.path().join("engine");
        let kernel =
            std::env::var("BHATTI_GUEST_KERNEL").unwrap_or_else(|_| format!("{CACHE}/vmlinux"));
        let minimal = std::env::var("BHATTI_GUEST_ROOTFS")
            .unwrap_or_else(|_| format!("{CACHE}/rootfs-minimal.ext4"));
        let engine = QemuDriver::new(QemuConfig::default())
            .map_err(|e| e.to_string())
            .and_then(|q| {
                let driver: Arc<dyn VmmDriver> = Arc::new(q);
                // A scratch pool: never the host daemon's.
                let net =
                    Arc::new(NetManager::scratch(data.join("net")).map_err(|e| e.to_string())?);
                MicroVmEngine::new(
                    MicroVmConfig::new(data, kernel.into(), minimal.into()),
                    driver,
                    net,
                )
                .map_err(|e| e.to_string())
            });
        match engine {
            Ok(engine) => {
                let (mut b, mut m) = (Vec::new(), Vec::new());
                for i in 0..iters.max(3) {
                    m.push(create_and_exec(&engine, None, 2 * i).await);
                    b.push(create_and_exec(&engine, Some(base_image()), 2 * i + 1).await);
                }
                report.latency(
                    "create → first exec, base image",
                    &b,
                    Some(("create → first exec, minimal", &m)),
                    "QEMU under TCG; the disk is a reflink/sparse copy of the image",
                );
                engine.shutdown(false).await;
            }
            Err(e) => println!("create → first exec skipped: {e}"),
        }
        report.write().expect("write report");
    });
}
