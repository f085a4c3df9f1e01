//! Volume backups: backup and restore throughput of a 1 GiB volume, half
//! random and half zero bytes, through the daemon's API to a real S3
//! server (moto's server mode on loopback), beside the same file through
//! `zstd -3` piped into a raw multipart upload by the same client
//! (object_store, same part size) in the same run.
//!
//! Needs root, the guest artifacts (the QEMU engine makes the volume) and
//! `BHATTI_MOTO_SERVER` (scripts/test.sh's venv):
//! `cargo bench -p bhatti-server --bench backups` →
//! bench/results/backups.{json,md}. `BHATTI_BENCH_N` rounds (default 3).
//! Prints why and exits 0 if it cannot run.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a benchmark panics to report its failure; its sums are on measurements

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use bhatti_benchkit::{p50, Report};
use bhatti_store::NewUser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use object_store::{ObjectStoreExt, WriteMultipart};

const VOLUME_MB: u64 = 1024;
const PART_MB: u64 = 16;

async fn call(
    addr: std::net::SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Bytes) {
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let r = send.send_request(req).await.expect("send");
    let status = r.status().as_u16();
    (
        status,
        r.into_body().collect().await.expect("body").to_bytes(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(moto_bin) = std::env::var("BHATTI_MOTO_SERVER") else {
        println!("backups bench skipped: BHATTI_MOTO_SERVER (moto's server; scripts/test.sh makes the venv) is not set");
        return;
    };
    let n: usize = std::env::var("BHATTI_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    /// moto, killed and reaped however the bench ends.
    struct Moto(std::process::Child);
    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let moto = Moto(
        Command::new(moto_bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server"),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "moto did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The bucket (moto takes an unsigned PUT).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /bench HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut ans = String::new();
    let _ = s.read_to_string(&mut ans);
    assert!(ans.starts_with("HTTP/1.1 200"), "create bucket: {ans}");

    let backup_cfg = bhatti_server::config::BackupConfig {
        endpoint: endpoint.clone(),
        bucket: "bench".into(),
        access_key: "bench".into(),
        secret_key: "bench".into(),
        path_style: true,
        part_size_mb: PART_MB,
        ..Default::default()
    };
    let cfg2 = backup_cfg.clone();
    let Some(bench) = common::start_with("backups", "qemu", move |c| c.backup = Some(cfg2)).await
    else {
        return;
    };
    let (d, engine) = (bench.daemon, bench.engine);
    let api = d.tcp_addr;
    let (user, key) = d
        .state
        .store
        .create_user(&NewUser {
            name: "bench".into(),
            quotas: Default::default(),
        })
        .expect("user");
    let (st, b) = call(
        api,
        &key,
        "POST",
        "/volumes",
        &format!(r#"{{"name":"data","size_mb":{VOLUME_MB}}}"#),
    )
    .await;
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&b));
    let path = d.state.store.volume(&user.id, "data").unwrap().file_path;
    // Half random, half zero bytes (over the fresh file system: a backup
    // copies the file, whatever is in it).
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut rng = std::fs::File::open("/dev/urandom").unwrap();
        let mut buf = vec![0u8; 4 << 20];
        for _ in 0..(VOLUME_MB / 2 / 4) {
            rng.read_exact(&mut buf).unwrap();
            f.write_all(&buf).unwrap();
        }
        let zeros = vec![0u8; 4 << 20];
        for _ in 0..(VOLUME_MB / 2 / 4) {
            f.write_all(&zeros).unwrap();
        }
        f.sync_all().unwrap();
    }
    let bytes = (VOLUME_MB << 20) as f64;
    let mib_s = |d: Duration| bytes / (1 << 20) as f64 / d.as_secs_f64();

    // The baseline's client: the same crate, bucket and part size.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_bucket_name("bench")
        .with_region("us-east-1")
        .with_access_key_id("bench")
        .with_secret_access_key("bench")
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();

    let (mut backup, mut restore, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..n {
        // Backup through the API.
        let t = Instant::now();
        let (st, b) = call(api, &key, "POST", "/volumes/data/backups", "").await;
        backup.push(t.elapsed());
        assert_eq!(st, 201, "{}", String::from_utf8_lossy(&b));
        let rec: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let id = rec["id"].as_str().unwrap().to_string();
        // Restore it (the volume is detached).
        let t = Instant::now();
        let (st, b) = call(
            api,
            &key,
            "POST",
            "/volumes/data/backups/restore",
            &format!(r#"{{"backup_id":"{id}"}}"#),
        )
        .await;
        restore.push(t.elapsed());
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
        let (st, _) = call(
            api,
            &key,
            "DELETE",
            &format!("/volumes/data/backups/{id}"),
            "",
        )
        .await;
        assert_eq!(st, 200);

        // Baseline: `zstd -3 -c FILE` piped into a raw multipart upload.
        let t = Instant::now();
        let mut z = Command::new("zstd")
            .args(["-3", "-q", "-c", &path])
            .stdout(Stdio::piped())
            .spawn()
            .expect("zstd");
        let mut out = z.stdout.take().unwrap();
        let loc = object_store::path::Path::from(format!("baseline-{round}.zst"));
        let up = raw.put_multipart(&loc).await.unwrap();
        let mut w =
            WriteMultipart::new_with_chunk_size(up, usize::try_from(PART_MB << 20).unwrap());
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = tokio::task::block_in_place(|| out.read(&mut buf)).unwrap();
            if n == 0 {
                break;
            }
            w.wait_for_capacity(2).await.unwrap();
            w.write(&buf[..n]);
        }
        w.finish().await.unwrap();
        assert!(z.wait().unwrap().success());
        baseline.push(t.elapsed());
        raw.delete(&loc).await.unwrap();
    }

    let mut report = Report::new("backups");
    let note = format!(
        "{engine} engine; {VOLUME_MB} MiB volume (half random, half zero), {PART_MB} MiB parts, moto on loopback; {n} rounds"
    );
    report.latency(
        "backup of 1 GiB (API: copy, SHA-256, zstd -3, multipart upload)",
        &backup,
        Some(("zstd -3 | raw multipart upload", &baseline)),
        &note,
    );
    report.latency(
        "restore of 1 GiB (API: download, zstd -d, SHA-256, fsync, rename)",
        &restore,
        None,
        &note,
    );
    report.throughput(
        "backup throughput (median)",
        "MiB/s",
        mib_s(p50(&backup)),
        Some(("zstd -3 | raw upload", mib_s(p50(&baseline)))),
        &note,
    );
    report.throughput(
        "restore throughput (median)",
        "MiB/s",
        mib_s(p50(&restore)),
        Some(("zstd -3 | raw upload", mib_s(p50(&baseline)))),
        &note,
    );
    report.write().expect("report");
    let (st, _) = call(api, &key, "DELETE", "/volumes/data", "").await;
    assert_eq!(st, 200);
    d.shutdown().await;
    drop(moto);
}
