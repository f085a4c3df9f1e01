//! Images end to end on a real daemon: OCI images built here from local
//! trees (busybox, the host's python3), pushed with skopeo to a real
//! registry (Debian's `docker-registry`) on loopback, pulled through the
//! API, booted on QEMU; `docker save`-format tarballs (skopeo's
//! docker-archive) imported; and every kind of bad input: registry 401,
//! 404, 500 and hangs, digest mismatches, corrupt and hostile layers, empty
//! and garbage tarballs, quotas, a restart mid-pull. No traffic leaves
//! loopback. Reported as ignored without root, the guest artifacts, the
//! registry and skopeo (see build.rs), never as passed.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::registry::{gz, oci_layout, push, run, sha, tar_gz, LocalRegistry};
use common::{TestDaemon, SERIAL};
use serde_json::{json, Value};

/// A tar with one hand-written entry: what a hostile layer says (paths the
/// tar crate's builder would refuse to write).
fn raw_entry_tar(path: &str, kind: u8, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_size(data.len() as u64);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// busybox (static, from the host's busybox-static) with its applets.
fn busybox_layer(dir: &Path) -> Vec<u8> {
    let t = dir.join("busybox-tree");
    std::fs::create_dir_all(t.join("bin")).unwrap();
    std::fs::create_dir_all(t.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", t.join("bin/busybox")).unwrap();
    for applet in run(Command::new("/bin/busybox").arg("--list")).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", t.join("bin").join(applet));
        }
    }
    std::fs::write(t.join("etc/removed-later"), "lower layer\n").unwrap();
    std::fs::write(t.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    tar_gz(&t)
}

/// The host's python3 with the libraries it links (merged-/usr Debian).
fn python_layer(dir: &Path) -> Vec<u8> {
    let t = dir.join("python-tree");
    let exe = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let ver = exe.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::create_dir_all(t.join("usr/bin")).unwrap();
    std::fs::create_dir_all(t.join("usr/lib")).unwrap();
    std::fs::copy(&exe, t.join("usr/bin").join(&ver)).unwrap();
    std::os::unix::fs::symlink(&ver, t.join("usr/bin/python3")).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("/usr/lib/{ver}"))
        .arg(t.join("usr/lib")));
    for junk in [
        "test",
        "idlelib",
        "tkinter",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
    ] {
        let _ = std::fs::remove_dir_all(t.join("usr/lib").join(&ver).join(junk));
    }
    for line in run(Command::new("ldd").arg(&exe)).lines() {
        let lib = match line.split_whitespace().collect::<Vec<_>>()[..] {
            [_, "=>", p, ..] if p.starts_with('/') => p.to_string(),
            [p, ..] if p.starts_with('/') => p.to_string(),
            _ => continue,
        };
        let dst = t.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(&lib).unwrap(), &dst).unwrap();
    }
    tar_gz(&t)
}

/// Top layer: a whiteout of a lower file, the working dir owned by 1000, a
/// setuid binary.
fn extras_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, uid: u64, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(data.len() as u64);
        h.set_mtime(1);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    };
    add(
        "etc/.wh.removed-later",
        tar::EntryType::Regular,
        0o644,
        0,
        b"",
    );
    add("app/", tar::EntryType::Directory, 0o755, 1000, b"");
    add(
        "app/hello.py",
        tar::EntryType::Regular,
        0o644,
        1000,
        b"print('hello from the image')\n",
    );
    add(
        "usr/local/bin/suid-tool",
        tar::EntryType::Regular,
        0o4755,
        0,
        b"#!/bin/sh\necho hi\n",
    );
    gz(&b.into_inner().unwrap())
}

async fn wait_task(d: &TestDaemon, key: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let r = d.req("GET", &format!("/tasks/{id}"), Some(key), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let t = r.json();
        if t["status"] != "running" {
            return t;
        }
        assert!(Instant::now() < deadline, "task {id} still running: {t}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Starts a pull and waits for its task.
async fn pull(d: &TestDaemon, key: &str, reference: &str, name: &str) -> Value {
    let r = d
        .req(
            "POST",
            "/images/pull",
            Some(key),
            Some(json!({"ref": reference, "name": name})),
        )
        .await;
    assert_eq!(r.status, 202, "pull {reference}: {}", r.text());
    let id = r.json()["task_id"].as_str().expect("task_id").to_string();
    wait_task(d, key, &id).await
}

async fn upload(d: &TestDaemon, key: &str, name: &str, body: Vec<u8>) -> common::Resp {
    d.raw(
        "POST",
        &format!("/images/import?name={name}"),
        Some(key),
        &[("content-type", "application/x-tar")],
        body,
    )
    .await
}

/// No image file, staging tree or temp blob of a failed job left behind.
fn assert_nothing_left(d: &TestDaemon) {
    let images = d.data().join("images");
    let staging: Vec<_> = std::fs::read_dir(images.join("staging"))
        .unwrap()
        .flatten()
        .collect();
    assert!(staging.is_empty(), "staging left: {staging:?}");
    let tmp: Vec<_> = std::fs::read_dir(images.join("blobs/tmp"))
        .unwrap()
        .flatten()
        .collect();
    assert!(tmp.is_empty(), "temp blobs left: {tmp:?}");
    for e in std::fs::read_dir(&images).unwrap().flatten() {
        if e.path().is_dir() && e.file_name().to_string_lossy().starts_with("usr_") {
            let files: Vec<_> = std::fs::read_dir(e.path())
                .unwrap()
                .flatten()
                .map(|f| f.file_name())
                .collect();
            assert!(
                files.iter().all(|f| !f.to_string_lossy().starts_with('.')),
                "temp files left: {files:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_registry)),
    ignore = "needs root, the guest artifacts (scripts/guest), docker-registry and skopeo"
)]
async fn pulled_and_imported_images_boot_with_their_env_and_workdir_vm() {
    let _serial = SERIAL.lock().await;
    let reg = LocalRegistry::start(false);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    oci_layout(
        &layout,
        &[
            busybox_layer(work.path()),
            python_layer(work.path()),
            extras_layer(),
        ],
        json!({"config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello-from-image"],
            "WorkingDir": "/app",
        }}),
    );
    push(&layout, &reg.addr, "team/py");

    let d = TestDaemon::start("qemu", |_| {}).await;
    let key = d.user("alice", Default::default());
    let reference = format!("{}/team/py:t", reg.addr);

    // Pull: a task with per-layer progress, then the image.
    let t = pull(&d, &key, &reference, "py").await;
    assert_eq!(t["status"], "completed", "{t}");
    let layers = t["progress"]["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 3, "{t}");
    assert!(
        layers
            .iter()
            .all(|l| l["done"] == l["size"] && l["size"].as_u64() > Some(0)),
        "{t}"
    );
    let img = d.req("GET", "/images/py", Some(&key), None).await.json();
    assert_eq!(img["source"], format!("oci:{reference}"));
    // busybox has a shell but no sudo: the image says so.
    assert_eq!(
        img["warnings"],
        json!(["the image has no sudo: the sandbox user cannot become root"]),
        "{img}"
    );
    let digest = img["oci_digest"].as_str().expect("digest").to_string();
    // The same digest again: at once, no task.
    let again = d
        .req(
            "POST",
            "/images/pull",
            Some(&key),
            Some(json!({"ref": reference, "name": "py"})),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["status"], "exists");
    assert_eq!(again.json()["digest"], digest);

    // A sandbox from it runs the image's own python3 in its WorkingDir with
    // its Env, as root (its config names no User).
    let sb = d.create(&key, json!({"name": "py1", "image": "py"})).await;
    assert_eq!(sb["image"], "py");
    let (code, out, err) = d
        .sh(&key, "py1", "python3 -c 'import os; print(os.getcwd(), os.environ[\"GREETING\"])'; python3 hello.py; id -u")
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "/app hello-from-image\nhello from the image\n0\n");
    let (_, out, _) = d
        .sh(&key, "py1", "stat -c %a /usr/local/bin/suid-tool; stat -c %u /app; test -e /etc/removed-later && echo present || echo whited-out")
        .await;
    assert_eq!(out, "4755\n1000\nwhited-out\n");
    // A file written survives stop/start.
    let (code, ..) = d.sh(&key, "py1", "echo kept > /root/note && sync").await;
    assert_eq!(code, 0);
    assert_eq!(
        d.req("POST", "/sandboxes/py1/stop", Some(&key), None)
            .await
            .status,
        200
    );
    assert_eq!(
        d.req("POST", "/sandboxes/py1/start", Some(&key), None)
            .await
            .status,
        200
    );
    let (_, out, _) = d.sh(&key, "py1", "cat /root/note").await;
    assert_eq!(out, "kept\n");

    // save-image of the changed sandbox (it keeps running); a sandbox from
    // the saved image has the change and the image's defaults.
    let r = d
        .req(
            "POST",
            "/sandboxes/py1/save-image",
            Some(&key),
            Some(json!({"name": "py-saved"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["source"],
        format!("saved:{}", sb["id"].as_str().unwrap())
    );
    let (code, out, _) = d.sh(&key, "py1", "echo still running").await;
    assert_eq!((code, out.as_str()), (0, "still running\n"));
    d.create(&key, json!({"name": "saved1", "image": "py-saved"}))
        .await;
    let (_, out, _) = d
        .sh(&key, "saved1", "cat /root/note; pwd; echo $GREETING")
        .await;
    assert_eq!(out, "kept\n/app\nhello-from-image\n");
    let r = d
        .req(
            "POST",
            "/sandboxes/py1/save-image",
            Some(&key),
            Some(json!({"name": "py-saved"})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    // A checkpoint and a fork record the real image.
    let r = d
        .req(
            "POST",
            "/sandboxes/py1/checkpoint",
            Some(&key),
            Some(json!({"name": "py-cp"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = d
        .req(
            "POST",
            "/snapshots/py-cp/resume",
            Some(&key),
            Some(json!({"name": "py-resumed"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["image"], "py");
    for sb in ["saved1", "py-resumed"] {
        assert_eq!(
            d.req("DELETE", &format!("/sandboxes/{sb}"), Some(&key), None)
                .await
                .status,
            200
        );
    }

    // The same image as a `docker save` tarball (skopeo's docker-archive).
    let archive = work.path().join("py.tar");
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker-archive:{}:team/py:t", archive.display())));
    let r = upload(&d, &key, "imported", std::fs::read(&archive).unwrap()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "imported");
    d.create(&key, json!({"name": "imp1", "image": "imported"}))
        .await;
    let (code, out, err) = d
        .sh(&key, "imp1", "python3 -c 'print(1)'; pwd; echo $GREETING")
        .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "1\n/app\nhello-from-image\n"),
        "{err}"
    );
    // Same name again: 409.
    let r = upload(&d, &key, "imported", std::fs::read(&archive).unwrap()).await;
    assert_eq!(r.status, 409, "{}", r.text());

    // Listing, another user's view, delete.
    let names: Vec<String> = d
        .req("GET", "/images", Some(&key), None)
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&"py".to_string()) && names.contains(&"imported".to_string()),
        "{names:?}"
    );
    let bob = d.user("bob", Default::default());
    assert_eq!(
        d.req("GET", "/images/py", Some(&bob), None).await.status,
        404
    );
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&bob),
            Some(json!({"name": "x", "image": "py"})),
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("bhatti image pull"), "{}", r.text());
    for sb in ["py1", "imp1"] {
        assert_eq!(
            d.req("DELETE", &format!("/sandboxes/{sb}"), Some(&key), None)
                .await
                .status,
            200
        );
    }
    let file = d
        .store()
        .image_exact(&d.store().user_by_name("alice").unwrap().id, "py")
        .unwrap()
        .file_path;
    assert_eq!(
        d.req("DELETE", "/images/py", Some(&key), None).await.status,
        200
    );
    assert!(!Path::new(&file).exists(), "image file removed");
    assert_nothing_left(&d);
}

/// What a fake registry does: answer everything with 500, accept and say
/// nothing, or serve a blob whose bytes do not match its digest.
#[derive(Clone, Copy, PartialEq)]
enum Fake {
    Error500,
    Hang,
    WrongBlob,
    /// Manifests answer; blob downloads hang (a pull in progress).
    HangBlobs,
}

async fn fake_registry(mode: Fake) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let layer = gz(&raw_entry_tar("f", b'0', b"data"));
    let config = br#"{"architecture":"amd64","os":"linux","config":{}}"#.to_vec();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(&layer), "size": layer.len()}],
    }))
    .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (layer, config, manifest) = (layer.clone(), config.clone(), manifest.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                    let head = req.starts_with("HEAD");
                    let (status, ctype, body): (&str, &str, Vec<u8>) = match mode {
                        Fake::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        Fake::Error500 => {
                            ("500 Internal Server Error", "text/plain", b"boom".to_vec())
                        }
                        _ if path == "/v2/" => ("200 OK", "application/json", b"{}".to_vec()),
                        _ if path.contains("/manifests/") => (
                            "200 OK",
                            "application/vnd.oci.image.manifest.v1+json",
                            manifest.clone(),
                        ),
                        _ if path.contains(&sha(&config)) => {
                            ("200 OK", "application/octet-stream", config.clone())
                        }
                        Fake::HangBlobs => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        _ => {
                            let mut wrong = layer.clone();
                            wrong.push(0);
                            ("200 OK", "application/octet-stream", wrong)
                        }
                    };
                    let mut resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
                        body.len()
                    );
                    if path.contains("/manifests/") && status.starts_with("200") {
                        resp.push_str(&format!("Docker-Content-Digest: {}\r\n", sha(&manifest)));
                    }
                    resp.push_str("\r\n");
                    let mut out = resp.into_bytes();
                    if !head {
                        out.extend_from_slice(&body);
                    }
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_registry)),
    ignore = "needs root, the guest artifacts (scripts/guest), docker-registry and skopeo"
)]
async fn bad_images_and_registries_get_clear_errors_and_leave_nothing() {
    let _serial = SERIAL.lock().await;
    let reg = LocalRegistry::start(false);
    let locked = LocalRegistry::start(true);
    let work = tempfile::tempdir().unwrap();
    let mut d = TestDaemon::start("qemu", |c| c.registry_timeout_secs = 2).await;
    let key = d.user("alice", Default::default());
    let code_of = |r: &common::Resp| (r.status, r.text());

    // Registry answers: 404, 401, 500, a hang, a bad reference.
    let cases = [
        (format!("{}/nothing/here:t", reg.addr), 404),
        (format!("{}/team/py:t", locked.addr), 403),
        (format!("{}/x:t", fake_registry(Fake::Error500).await), 502),
        (format!("{}/x:t", fake_registry(Fake::Hang).await), 502),
        ("Not A Reference".to_string(), 400),
    ];
    for (reference, want) in &cases {
        let r = d
            .req(
                "POST",
                "/images/pull",
                Some(&key),
                Some(json!({"ref": reference, "name": "bad"})),
            )
            .await;
        assert_eq!(r.status, *want, "{reference}: {:?}", code_of(&r));
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }

    // Content that is wrong: each pull's task fails with the reason, and no
    // image is left.
    let wrong_blob = format!("{}/x:t", fake_registry(Fake::WrongBlob).await);
    let mut bad_layers: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            {
                let g = gz(&raw_entry_tar("f", b'0', &[7u8; 200_000]));
                g[..g.len() / 2].to_vec()
            },
            "corrupt or truncated",
        ),
        (
            "dotdot",
            gz(&raw_entry_tar("a/../../escape", b'0', b"x")),
            "leaves the image root",
        ),
        (
            "absolute",
            gz(&raw_entry_tar("/abs", b'0', b"x")),
            "absolute",
        ),
        (
            "device",
            gz(&raw_entry_tar("dev/evil", b'4', b"")),
            "device nodes",
        ),
    ];
    let mut refs = vec![(wrong_blob.clone(), "digest mismatch")];
    for (name, layer, why) in bad_layers.drain(..) {
        let dir = work.path().join(name);
        oci_layout(&dir, &[layer], json!({"config": {}}));
        push(&dir, &reg.addr, name);
        refs.push((format!("{}/{name}:t", reg.addr), why));
    }
    for (reference, why) in &refs {
        let t = pull(&d, &key, reference, "bad").await;
        assert_eq!(t["status"], "failed", "{reference}: {t}");
        assert!(
            t["error"].as_str().unwrap_or("").contains(why),
            "{reference}: want {why:?} in {t}"
        );
        assert_eq!(
            d.req("GET", "/images/bad", Some(&key), None).await.status,
            404
        );
    }
    assert!(!d.data().join("escape").exists() && !Path::new("/abs").exists());
    assert_nothing_left(&d);

    // Tarballs: empty, garbage, a layout with a missing blob.
    let r = upload(&d, &key, "t1", Vec::new()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = upload(&d, &key, "t1", b"garbage, not a tar".repeat(100)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = upload(&d, &key, "../evil", b"x".to_vec()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        d.req("GET", "/images/t1", Some(&key), None).await.status,
        404
    );
    assert_nothing_left(&d);

    // Quota: no room for one more image, for pulls and imports alike.
    let full = d.user(
        "full",
        bhatti_store::Quotas {
            max_images: 0,
            ..Default::default()
        },
    );
    let r = d
        .req(
            "POST",
            "/images/pull",
            Some(&full),
            Some(json!({"ref": format!("{}/dotdot:t", reg.addr)})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(upload(&d, &full, "q", b"x".to_vec()).await.status, 403);

    // A daemon restarted in the middle of a pull: the task is failed, with
    // the reason, and no staging is left.
    let slow = format!("{}/x:t", fake_registry(Fake::HangBlobs).await);
    d.cfg.registry_timeout_secs = 600;
    d.restart().await;
    let r = d
        .req(
            "POST",
            "/images/pull",
            Some(&key),
            Some(json!({"ref": slow, "name": "slow"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["task_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.restart().await;
    let t = d
        .req("GET", &format!("/tasks/{id}"), Some(&key), None)
        .await
        .json();
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["error"].as_str().unwrap_or("").contains("restarted"),
        "{t}"
    );
    assert_eq!(
        d.req("GET", "/images/slow", Some(&key), None).await.status,
        404
    );
    // Another user's task is not there for them.
    let bob = d.user("bob", Default::default());
    assert_eq!(
        d.req("GET", &format!("/tasks/{id}"), Some(&bob), None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_registry)),
    ignore = "needs root, the guest artifacts (scripts/guest), docker-registry and skopeo"
)]
async fn pulls_are_limited_to_allowed_registries() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("qemu", |c| {
        c.allowed_registries = vec!["127.0.0.1:1".into()]
    })
    .await;
    let key = d.user("alice", Default::default());
    let r = d
        .req(
            "POST",
            "/images/pull",
            Some(&key),
            Some(json!({"ref": "python:3.12"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("docker.io"), "{}", r.text());
}

/// The `base` image as the quickstart installs it (`images/rootfs-base.ext4`
/// in the data dir) is the default: a sandbox created without an image is
/// Debian with python3, git, a C compiler and apt, and its user has sudo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_base_image)),
    ignore = "needs root, the guest artifacts and the base image (scripts/guest/build-debian-rootfs.sh)"
)]
async fn base_image_is_the_default_with_python_git_and_a_compiler_vm() {
    let _serial = SERIAL.lock().await;
    let base = std::env::var("BHATTI_GUEST_BASE_ROOTFS")
        .ok()
        .or(option_env!("BHATTI_BASE_ROOTFS_AT_BUILD").map(str::to_string))
        .expect("base image path");
    let dir = tempfile::Builder::new()
        .prefix("bhatti-base-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    std::os::unix::fs::symlink(&base, dir.path().join("images/rootfs-base.ext4")).unwrap();
    let data = dir.path().to_path_buf();
    let d = TestDaemon::start("qemu", |c| c.data_dir = data).await;
    let key = d.user("alice", Default::default());
    let sb = d.create(&key, json!({"name": "b1"})).await;
    assert_eq!(sb["image"], "base");
    let (code, out, err) = d
        .sh(
            &key,
            "b1",
            "python3 -c 'print(1)'; git --version | cut -d' ' -f1-2; cc --version >/dev/null && echo cc; \
             apt-get --version | head -1 | cut -d' ' -f1; sudo -n id -u; id -un",
        )
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["1", "git version", "cc"], "{out}");
    assert_eq!(lines[3], "apt", "{out}");
    assert_eq!(lines[4..], ["0", "lohar"], "{out}");
    // `minimal` is still there when asked for.
    let m = d
        .create(&key, json!({"name": "m1", "image": "minimal"}))
        .await;
    assert_eq!(m["image"], "minimal");
}

/// The Docker engine takes the same images: a `docker save`-format tarball
/// imported into a Docker-engine daemon becomes an image in dockerd with
/// lohar as its entrypoint, and a sandbox from it runs the image's python3
/// with its Env and WorkingDir; deleting the image removes it from dockerd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_docker, bhatti_registry)),
    ignore = "needs dockerd (scripts/start-dockerd.sh), root and skopeo"
)]
async fn imported_image_runs_on_the_docker_engine() {
    let _serial = SERIAL.lock().await;
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    oci_layout(
        &layout,
        &[
            busybox_layer(work.path()),
            python_layer(work.path()),
            extras_layer(),
        ],
        json!({"config": {"Env": ["GREETING=hello-from-image"], "WorkingDir": "/app"}}),
    );
    let archive = work.path().join("py.tar");
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker-archive:{}:team/py:t", archive.display())));

    let d = TestDaemon::start("docker", |_| {}).await;
    let key = d.user("alice", Default::default());
    let r = upload(&d, &key, "py", std::fs::read(&archive).unwrap()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let tag = d
        .store()
        .image_exact(&d.store().user_by_name("alice").unwrap().id, "py")
        .unwrap()
        .file_path;
    assert!(tag.starts_with("bhatti-image/"), "{tag}");
    d.create(&key, json!({"name": "dpy", "image": "py"})).await;
    let (code, out, err) = d
        .sh(
            &key,
            "dpy",
            "python3 -c 'import os; print(os.getcwd(), os.environ[\"GREETING\"])'; id -u",
        )
        .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "/app hello-from-image\n0\n"),
        "{err}"
    );
    assert_eq!(
        d.req("DELETE", "/sandboxes/dpy", Some(&key), None)
            .await
            .status,
        200
    );
    assert_eq!(
        d.req("DELETE", "/images/py", Some(&key), None).await.status,
        200
    );
    let gone = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "{tag} still in dockerd");
}
