//! The public listener: how long a request to a published port of a cold
//! (stopped, memory on disk) sandbox takes to get its first byte back, the
//! wake included, beside the same sandbox's restore alone (`POST /start`)
//! measured in the same run; and a hot request through the public listener
//! beside the same request through the authenticated proxy.
//!
//! Engine: `BHATTI_BENCH_ENGINE` (qemu by default: a cold wake is a VM
//! restore). Run as root with the guest artifacts built:
//! `cargo bench -p bhatti-server --bench publish` →
//! bench/results/publish.{json,md}. `BHATTI_BENCH_N` cold cycles (default
//! 10; each stops and restores the VM twice). Prints why and exits 0 if it
//! cannot run.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a benchmark panics to report its failure; its sums are on measurements

use std::time::{Duration, Instant};

mod common;

use bhatti_benchkit::Report;
use bhatti_store::NewUser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

const ZONE: &str = "bench.test";

/// One request on a new connection; the time to the response's head
/// (its first byte), the status, and the body.
async fn get(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    key: Option<&str>,
) -> (Duration, u16, Bytes) {
    let t = Instant::now();
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).ok();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    let r = send
        .send_request(b.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("send");
    let first_byte = t.elapsed();
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    (first_byte, status, body)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BHATTI_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let Some(bench) = common::start_with("publish", "qemu", |c| {
        c.public_proxy_listen = Some("127.0.0.1:0".into());
        c.domain = Some(bhatti_server::config::DomainConfig {
            proxy_zone: ZONE.into(),
            ..Default::default()
        });
    })
    .await
    else {
        return;
    };
    let (d, engine) = (bench.daemon, bench.engine);
    let (api, public) = (d.tcp_addr, d.public_addr.expect("public listener"));
    let (_, key) = d
        .state
        .store
        .create_user(&NewUser {
            name: "bench".into(),
            quotas: Default::default(),
        })
        .expect("user");
    let json = |method: &'static str, path: String, body: &'static str| {
        let key = key.clone();
        async move {
            let s = tokio::net::TcpStream::connect(api).await.expect("connect");
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
                .body(Full::new(Bytes::from(body)))
                .expect("request");
            let r = send.send_request(req).await.expect("send");
            let status = r.status().as_u16();
            let body = r.into_body().collect().await.expect("body").to_bytes();
            assert!(
                (200..300).contains(&status),
                "{method}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            body
        }
    };
    let sb: serde_json::Value =
        serde_json::from_slice(&json("POST", "/sandboxes".into(), r#"{"name":"web"}"#).await)
            .unwrap();
    let id = sb["id"].as_str().unwrap().to_string();
    json(
        "POST",
        format!("/sandboxes/{id}/exec"),
        r#"{"cmd":["sh","-c","mkdir -p /tmp/www && echo hello > /tmp/www/index.html"]}"#,
    )
    .await;
    json(
        "POST",
        format!("/sandboxes/{id}/exec"),
        r#"{"cmd":["busybox","httpd","-f","-p","8000","-h","/tmp/www"],"detach":true}"#,
    )
    .await;
    json(
        "POST",
        format!("/sandboxes/{id}/publish"),
        r#"{"port":8000,"alias":"web"}"#,
    )
    .await;
    let host = format!("web.{ZONE}");
    // Wait for httpd, and warm both paths.
    let mut up = false;
    for _ in 0..100 {
        if get(public, "GET", "/", &host, None).await.1 == 200 {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "httpd answers through the public listener");
    let proxied = format!("/sandboxes/{id}/proxy/8000/");
    for _ in 0..20 {
        get(public, "GET", "/", &host, None).await;
        get(api, "GET", &proxied, "localhost", Some(&key)).await;
    }

    let mut report = Report::new("publish");
    // Hot: the same request, public vs authenticated, interleaved.
    let (mut hot_public, mut hot_auth) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let (t, s, b) = get(public, "GET", "/", &host, None).await;
        assert_eq!((s, &b[..]), (200, &b"hello\n"[..]));
        hot_public.push(t);
        let (t, s, _) = get(api, "GET", &proxied, "localhost", Some(&key)).await;
        assert_eq!(s, 200);
        hot_auth.push(t);
    }
    report.latency(
        "hot: public URL → first byte",
        &hot_public,
        Some(("authenticated proxy", &hot_auth)),
        &format!("{engine} engine; new connection per request; a fresh agent tunnel each"),
    );

    // Cold: stop (memory to disk), then the first byte through the public
    // URL (the wake included); beside it, stop again and restore alone.
    let (mut cold, mut restore) = (Vec::new(), Vec::new());
    for _ in 0..n {
        json("POST", format!("/sandboxes/{id}/stop"), "").await;
        let (t, s, b) = get(public, "GET", "/", &host, None).await;
        assert_eq!((s, &b[..]), (200, &b"hello\n"[..]));
        cold.push(t);
        json("POST", format!("/sandboxes/{id}/stop"), "").await;
        let t = Instant::now();
        json("POST", format!("/sandboxes/{id}/start"), "").await;
        restore.push(t.elapsed());
    }
    report.latency(
        "cold: public URL → first byte (wake included)",
        &cold,
        Some(("restore alone (POST /start)", &restore)),
        &format!("{engine} engine; the sandbox stopped (memory on disk) before each request"),
    );
    report.write().expect("report");
    // The daemon leaves sandboxes running across a shutdown: this one goes
    // first, with its VM and network, as the data directory is removed.
    json("DELETE", format!("/sandboxes/{id}"), "").await;
    d.shutdown().await;
}
