//! Volume backups against a real S3-compatible server: moto's server mode
//! on loopback (scripts/test.sh installs it; `BHATTI_MOTO_SERVER`), a real
//! daemon on the QEMU engine, real guests writing the volumes. No mock of
//! S3: multipart uploads, reads, listing and deletion all go to moto.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
// a test panics to report its failure

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestDaemon, SERIAL};
use serde_json::{json, Value};

/// moto on a loopback port; killed on drop.
#[allow(dead_code)]
struct Moto {
    child: Child,
    addr: SocketAddr,
}

#[allow(dead_code)]
impl Moto {
    fn start_on(port: u16) -> Moto {
        Moto::start_with(port, &[])
    }

    fn start_with(port: u16, env: &[(&str, &str)]) -> Moto {
        let bin = std::env::var("BHATTI_MOTO_SERVER").expect("BHATTI_MOTO_SERVER");
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let t0 = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "moto did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, addr }
    }

    fn start() -> Moto {
        Moto::start_on(common::registry::free_port())
    }

    async fn http(&self, method: &str, path: &str, body: Vec<u8>) -> common::Resp {
        let s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        common::http_on(s, method, path, &self.addr.to_string(), None, &[], body).await
    }

    async fn make_bucket(&self, name: &str) {
        let r = self.http("PUT", &format!("/{name}"), Vec::new()).await;
        assert!(r.status < 300, "create bucket: {} {}", r.status, r.text());
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

#[allow(dead_code)]
fn backup_config(c: &mut bhatti_server::config::Config, moto: &Moto, bucket: &str) {
    c.backup = Some(bhatti_server::config::BackupConfig {
        endpoint: format!("http://{}", moto.addr),
        bucket: bucket.into(),
        region: "us-east-1".into(),
        access_key: "test".into(),
        secret_key: "test".into(),
        path_style: true,
        part_size_mb: 5,
        ..Default::default()
    });
}

#[allow(dead_code)]
/// The size of the ext4 file system in an image (`dumpe2fs -h`).
async fn ext4_bytes(path: &str) -> u64 {
    let out = tokio::process::Command::new("dumpe2fs")
        .args(["-h", path])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    field("Block count:") * field("Block size:")
}

/// A file's content inside an ext4 image, read without mounting it.
async fn debugfs_cat(image: &str, file: &str) -> String {
    let out = tokio::process::Command::new("debugfs")
        .args(["-R", &format!("cat {file}"), image])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn sha_of(path: &str) -> String {
    let out = tokio::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[allow(dead_code)]
async fn events_of(d: &TestDaemon, kind: &str) -> Vec<bhatti_store::Event> {
    tokio::time::sleep(Duration::from_millis(700)).await;
    d.store()
        .events(&bhatti_store::EventQuery::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == kind)
        .collect()
}

/// Back up while attached (the writer is synced and paused for the copy),
/// a multipart upload with the SHA-256 of the image, one backup at a time,
/// restore refused while attached, restore after detaching brings the old
/// data back; another user's backup is 404; a corrupted object is refused
/// with the volume unchanged; delete removes the object; moto killed
/// mid-upload fails the backup with no record and the next one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_s3)),
    ignore = "needs root, the guest artifacts and moto (scripts/test.sh: BHATTI_MOTO_SERVER)"
)]
async fn backup_and_restore_against_s3_vm() {
    let _serial = SERIAL.lock().await;
    let mut moto = Moto::start();
    moto.make_bucket("vols").await;
    let port = moto.addr.port();
    let d = TestDaemon::start("qemu", |c| backup_config(c, &moto, "vols")).await;
    let key = d.user("alice", Default::default());
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "v1", "size_mb": 96}))
        )
        .await,
        201
    );
    let sb = d
        .create(
            &key,
            json!({"name": "w", "persistent_volumes": [{"name": "v1", "mount": "/data"}]}),
        )
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    let (code, sum, err) = d
        .sh(&key, &id, "echo one > /data/note && head -c 25165824 /dev/urandom > /data/rand && sync && sha256sum /data/rand | cut -d' ' -f1")
        .await;
    assert_eq!(code, 0, "{err}");

    // Two at once: one backs up, the other is refused while it runs.
    let (a, b) = tokio::join!(
        d.req("POST", "/volumes/v1/backups", Some(&key), None),
        async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            d.req("POST", "/volumes/v1/backups", Some(&key), None).await
        }
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{} / {}", a.text(), b.text());
    let first = if a.status == 201 { a.json() } else { b.json() };
    assert_eq!(first["size_bytes"], 96u64 << 20, "{first}");
    assert_eq!(first["sha256"].as_str().unwrap().len(), 64, "{first}");
    let s3_key = first["s3_key"].as_str().unwrap().to_string();
    assert!(
        s3_key.starts_with(&format!(
            "volumes/{}/v1/",
            first["user_id"].as_str().unwrap()
        )),
        "{s3_key}"
    );
    assert!(s3_key.ends_with(".ext4.zst"), "{s3_key}");
    // A multipart upload: S3's ETag of such an object ends in -<parts>.
    let head = moto
        .http("HEAD", &format!("/vols/{s3_key}"), Vec::new())
        .await;
    assert_eq!(head.status, 200);
    let etag = head.header("etag").unwrap_or_default();
    assert!(
        etag.trim_matches('"').contains('-'),
        "not multipart: {etag}"
    );
    let list = d
        .req("GET", "/volumes/v1/backups", Some(&key), None)
        .await
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(events_of(&d, "volume.backup_created").await.len(), 1);

    // Restore refuses an attached volume.
    let bid = first["id"].as_str().unwrap().to_string();
    let r = d
        .req(
            "POST",
            "/volumes/v1/backups/restore",
            Some(&key),
            Some(json!({"backup_id": bid})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());

    // Change the data, detach, restore: the backup's data is back.
    assert_eq!(
        d.sh(&key, &id, "echo two > /data/note && rm /data/rand && sync")
            .await
            .0,
        0
    );
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        200
    );
    let r = d
        .req(
            "POST",
            "/volumes/v1/backups/restore",
            Some(&key),
            Some(json!({"backup_id": bid})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"status": "restored", "backup_id": bid}));
    let sb = d
        .create(
            &key,
            json!({"name": "r", "persistent_volumes": [{"name": "v1", "mount": "/data"}]}),
        )
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    let (_, out, _) = d
        .sh(
            &key,
            &id,
            "cat /data/note; sha256sum /data/rand | cut -d' ' -f1",
        )
        .await;
    assert_eq!(out, format!("one\n{sum}"), "restored data");
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        200
    );

    // A backup from before a resize: the volume keeps its grown size, its
    // file system too, and the backup's files are in it.
    let alice = d.store().user_by_api_key(&key).unwrap().id;
    assert_eq!(
        d.code(
            "POST",
            "/volumes/v1/resize",
            Some(&key),
            Some(json!({"size_mb": 128}))
        )
        .await,
        200
    );
    let restore = |who: String| {
        let bid = bid.clone();
        let d = &d;
        async move {
            d.req(
                "POST",
                "/volumes/v1/backups/restore",
                Some(&who),
                Some(json!({"backup_id": bid})),
            )
            .await
        }
    };
    let r = restore(key.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let vol = d.store().volume(&alice, "v1").unwrap();
    assert_eq!(vol.size_mb, 128);
    assert_eq!(std::fs::metadata(&vol.file_path).unwrap().len(), 128 << 20);
    let fs_bytes = ext4_bytes(&vol.file_path).await;
    assert_eq!(
        fs_bytes,
        128 << 20,
        "the file system was grown with the file"
    );
    assert_eq!(debugfs_cat(&vol.file_path, "/note").await, "one\n");

    // A deleted volume comes back from its backup, at the backup's size,
    // byte for byte.
    assert_eq!(d.code("DELETE", "/volumes/v1", Some(&key), None).await, 200);
    let r = restore(key.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let vol = d.store().volume(&alice, "v1").unwrap();
    assert_eq!(vol.size_mb, 96);
    assert_eq!(
        sha_of(&vol.file_path).await,
        first["sha256"].as_str().unwrap(),
        "the backup's image"
    );

    // Another user: not their volume, not their backup.
    let bob = d.user("bob", Default::default());
    assert_eq!(
        d.code("GET", "/volumes/v1/backups", Some(&bob), None).await,
        404
    );
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&bob),
            Some(json!({"name": "v1", "size_mb": 96}))
        )
        .await,
        201
    );
    let r = d
        .req(
            "POST",
            "/volumes/v1/backups/restore",
            Some(&bob),
            Some(json!({"backup_id": bid})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        d.code(
            "DELETE",
            &format!("/volumes/v1/backups/{bid}"),
            Some(&bob),
            None
        )
        .await,
        404
    );

    // A corrupted object: refused, and the volume is unchanged.
    let vol_path = d
        .store()
        .volume(&d.store().user_by_api_key(&key).unwrap().id, "v1")
        .unwrap()
        .file_path;
    let before = sha_of(&vol_path).await;
    let mut bytes = moto
        .http("GET", &format!("/vols/{s3_key}"), Vec::new())
        .await
        .body
        .to_vec();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    assert!(
        moto.http("PUT", &format!("/vols/{s3_key}"), bytes)
            .await
            .status
            < 300
    );
    let r = d
        .req(
            "POST",
            "/volumes/v1/backups/restore",
            Some(&key),
            Some(json!({"backup_id": bid})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains("checksum mismatch") || r.text().contains("not a valid zstd"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("the volume is unchanged"), "{}", r.text());
    assert_eq!(sha_of(&vol_path).await, before, "volume untouched");
    // Into a deleted volume: refused the same way, and the volume made
    // for it is gone again (all or nothing).
    assert_eq!(d.code("DELETE", "/volumes/v1", Some(&key), None).await, 200);
    let r = restore(key.clone()).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(d.code("GET", "/volumes/v1", Some(&key), None).await, 404);
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "v1", "size_mb": 96}))
        )
        .await,
        201
    );

    // Delete: the row and the object.
    assert_eq!(
        d.code(
            "DELETE",
            &format!("/volumes/v1/backups/{bid}"),
            Some(&key),
            None
        )
        .await,
        200
    );
    assert_eq!(
        moto.http("HEAD", &format!("/vols/{s3_key}"), Vec::new())
            .await
            .status,
        404
    );
    let list = d
        .req("GET", "/volumes/v1/backups", Some(&key), None)
        .await
        .json();
    assert_eq!(list, json!([]));

    // moto dies mid-upload: the backup fails, no record, an event; with
    // moto back, the next backup works.
    let dir = std::path::Path::new(&vol_path)
        .parent()
        .unwrap()
        .to_path_buf();
    let killer = async {
        let t0 = Instant::now();
        loop {
            let copying = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".backup-"));
            if copying || t0.elapsed() > Duration::from_secs(30) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        moto.kill();
    };
    let (r, ()) = tokio::join!(
        d.req("POST", "/volumes/v1/backups", Some(&key), None),
        killer
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("object storage"), "{}", r.text());
    let list = d
        .req("GET", "/volumes/v1/backups", Some(&key), None)
        .await
        .json();
    assert_eq!(list, json!([]), "no partial record");
    assert!(!events_of(&d, "volume.backup_failed").await.is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary copies left: {leftovers:?}");
    let moto2 = Moto::start_on(port);
    moto2.make_bucket("vols").await;
    let r = d.req("POST", "/volumes/v1/backups", Some(&key), None).await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Without a `backup:` section every backup route is 501 with a clear
/// message; a bucket that does not exist is a clear 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_s3)),
    ignore = "needs root, the guest artifacts and moto (scripts/test.sh: BHATTI_MOTO_SERVER)"
)]
async fn unconfigured_and_misconfigured_backups_say_so_vm() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("qemu", |_| {}).await;
    let key = d.user("carol", Default::default());
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "v", "size_mb": 16}))
        )
        .await,
        201
    );
    for (m, p, body) in [
        ("GET", "/volumes/v/backups", None),
        ("POST", "/volumes/v/backups", None),
        (
            "POST",
            "/volumes/v/backups/restore",
            Some(json!({"backup_id": "x"})),
        ),
        ("DELETE", "/volumes/v/backups/x", None),
    ] {
        let r = d.req(m, p, Some(&key), body).await;
        assert_eq!(r.status, 501, "{m} {p}: {}", r.text());
        assert!(
            r.text().contains("backups are not configured"),
            "{}",
            r.text()
        );
    }
    drop(d);

    let moto = Moto::start();
    let text = refused_backup(&moto, "no-such-bucket").await;
    assert!(text.contains("NoSuchBucket"), "{text}");

    // Credentials the server does not know: moto checks them once told to
    // (after INITIAL_NO_AUTH_ACTION_COUNT requests; the bucket is made
    // with the one it lets through).
    let strict = Moto::start_with(
        common::registry::free_port(),
        &[("INITIAL_NO_AUTH_ACTION_COUNT", "1")],
    );
    strict.make_bucket("locked").await;
    let text = refused_backup(&strict, "locked").await;
    assert!(text.contains("InvalidAccessKeyId"), "{text}");
}

/// A daemon backing up to `bucket` on `moto` whose backup of a fresh
/// volume is refused by the server: 502, and no record; the error's text.
async fn refused_backup(moto: &Moto, bucket: &str) -> String {
    let d = TestDaemon::start("qemu", |c| backup_config(c, moto, bucket)).await;
    let key = d.user("carol", Default::default());
    let made = d
        .code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "v", "size_mb": 16})),
        )
        .await;
    assert_eq!(made, 201);
    let r = d.req("POST", "/volumes/v/backups", Some(&key), None).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let v: Value = d
        .req("GET", "/volumes/v/backups", Some(&key), None)
        .await
        .json();
    assert_eq!(v, json!([]), "no record of a refused backup");
    r.text()
}

/// A schedule (`* * * * *`, retention 1) backs the volume up at the next
/// minute and prunes older backups from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_s3)),
    ignore = "needs root, the guest artifacts and moto (scripts/test.sh: BHATTI_MOTO_SERVER)"
)]
async fn scheduled_backups_keep_the_newest_vm() {
    let _serial = SERIAL.lock().await;
    let moto = Moto::start();
    moto.make_bucket("sched").await;
    let d = TestDaemon::start("qemu", |c| {
        backup_config(c, &moto, "sched");
        if let Some(b) = c.backup.as_mut() {
            b.schedule = vec![bhatti_server::config::BackupSchedule {
                volume: "nightly".into(),
                cron: "* * * * *".into(),
                retention: Some(1),
                user: None,
            }];
        }
    })
    .await;
    let key = d.user("dave", Default::default());
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "nightly", "size_mb": 16}))
        )
        .await,
        201
    );
    let mut manual = Vec::new();
    for _ in 0..2 {
        let r = d
            .req("POST", "/volumes/nightly/backups", Some(&key), None)
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        manual.push(r.json()["s3_key"].as_str().unwrap().to_string());
    }
    // The next minute's run: one new backup, the two manual ones pruned.
    let t0 = Instant::now();
    loop {
        let list: Value = d
            .req("GET", "/volumes/nightly/backups", Some(&key), None)
            .await
            .json();
        let keys: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["s3_key"].as_str().unwrap().to_string())
            .collect();
        if keys.len() == 1 && !manual.contains(&keys[0]) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(100),
            "schedule never ran: {list}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for k in &manual {
        assert_eq!(
            moto.http("HEAD", &format!("/sched/{k}"), Vec::new())
                .await
                .status,
            404,
            "{k} pruned"
        );
    }
}
