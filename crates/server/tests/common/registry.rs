//! OCI images for the image suite and benchmark: a real registry
//! (`docker-registry serve`) on a loopback port with its own storage, OCI
//! image layouts written from layer tarballs, pushed with skopeo.
#![allow(dead_code, clippy::arithmetic_side_effects)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `docker-registry serve` on a loopback port with its own storage;
/// `htpasswd`: every request needs credentials no one has (a 401 registry).
pub struct LocalRegistry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    pub fn start(htpasswd: bool) -> LocalRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth = if htpasswd {
            std::fs::write(dir.path().join("htpasswd"), "").unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            )
        } else {
            String::new()
        };
        let cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
            dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        LocalRegistry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI image layout with one image tagged `t`.
pub fn oci_layout(dir: &Path, layers: &[Vec<u8>], config: Value) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = sha(b);
        std::fs::write(blobs.join(&d[7..]), b).unwrap();
        (d, b.len())
    };
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| {
            // The uncompressed digest; gzip is all these layers use.
            let mut raw = Vec::new();
            if l.starts_with(&[0x1f, 0x8b]) {
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&l[..]), &mut raw)
                    .unwrap_or(0);
            } else {
                raw = l.clone();
            }
            sha(&raw)
        })
        .collect();
    let mut config = config;
    config["architecture"] = json!("amd64");
    config["os"] = json!("linux");
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let layer_descs: Vec<Value> = layers
        .iter()
        .map(|l| {
            let (d, s) = put(l);
            let mt = if l.starts_with(&[0x1f, 0x8b]) {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            json!({"mediaType": mt, "digest": d, "size": s})
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layer_descs,
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "t"},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

pub fn push(layout: &Path, registry: &str, repo: &str) {
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker://{registry}/{repo}:t")));
}

/// GNU tar of a directory, gzip-compressed, with numeric owners.
pub fn tar_gz(tree: &Path) -> Vec<u8> {
    let o = Command::new("tar")
        .args(["--numeric-owner", "-czf", "-", "-C"])
        .arg(tree)
        .arg(".")
        .stderr(Stdio::inherit())
        .output()
        .expect("tar");
    assert!(o.status.success());
    o.stdout
}

pub fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}
