//! The HTTP API's own cost, each figure beside a baseline measured in the
//! same run on the same sandbox:
//! - buffered exec of `true` through the API (keep-alive connection) vs the
//!   agent round trip for the same exec straight through the engine — the
//!   difference is the API's overhead (auth lookup, routing, JSON, store read);
//! - `GET /health` (the bare HTTP round trip);
//! - 20 concurrent API execs vs 20 concurrent agent execs;
//! - `GET /sandboxes` with 100 sandboxes;
//! - a soak: 50 concurrent clients exec'ing for `BHATTI_BENCH_SOAK_SECS`
//!   (default 60), counting errors and checking every output.
//!
//! Engine: `BHATTI_BENCH_ENGINE` (docker by default; qemu works too). Run as
//! root with dockerd up and the image built:
//! `cargo bench -p bhatti-server --bench api` → bench/results/api.{json,md}.
//! Prints why and exits 0 if it cannot run.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use bhatti_benchkit::Report;
use bhatti_engine::EngineExt;
use bhatti_store::{NewSandbox, NewUser, SandboxStatus};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: std::net::SocketAddr) -> Sender {
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).ok();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    send
}

async fn call(send: &mut Sender, method: &str, path: &str, key: &str, body: &str) -> (u16, Bytes) {
    let (status, _, body) = call_timed(send, method, path, key, body).await;
    (status, body)
}

/// What the server reports in `Server-Timing`: the engine's part and the
/// whole time in the daemon.
struct Timing {
    engine: Duration,
    app: Duration,
}

/// Like [`call`], plus the server's `Server-Timing`.
async fn call_timed(
    send: &mut Sender,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> (u16, Option<Timing>, Bytes) {
    send.ready().await.expect("ready");
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
    let timing = r
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let metric = |name: &str| {
        timing
            .split(',')
            .filter_map(|m| m.trim().strip_prefix(name)?.strip_prefix(";dur="))
            .find_map(|ms| ms.parse::<f64>().ok())
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    };
    let engine = match (metric("engine"), metric("app")) {
        (Some(e), Some(a)) => Some(Timing { engine: e, app: a }),
        _ => None,
    };
    (
        status,
        engine,
        r.into_body().collect().await.expect("body").to_bytes(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BHATTI_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let soak_secs: u64 = std::env::var("BHATTI_BENCH_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let Some(bench) = common::start("api").await else {
        return;
    };
    let (d, engine) = (bench.daemon, bench.engine);
    let st = d.state.clone();
    let (user, key) = st
        .store
        .create_user(&NewUser {
            name: "bench".into(),
            quotas: bhatti_store::Quotas {
                max_sandboxes: 1000,
                ..Default::default()
            },
        })
        .expect("user");
    let mut send = connect(d.tcp_addr).await;
    let (code, body) = call(&mut send, "POST", "/sandboxes", &key, r#"{"name":"bench"}"#).await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let sb: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let id = sb["id"].as_str().expect("id").to_string();
    let exec_path = format!("/sandboxes/{id}/exec");
    let exec_body = r#"{"cmd":["true"]}"#;
    let mut report = Report::new("api");

    // Warm both paths.
    for _ in 0..20 {
        call(&mut send, "POST", &exec_path, &key, exec_body).await;
        st.engine
            .exec(&id, vec!["true".into()])
            .await
            .expect("exec");
    }
    // Interleaved samples, so both paths see the same machine state.
    let mut api = Vec::with_capacity(n);
    let mut agent = Vec::with_capacity(n);
    let mut own = Vec::with_capacity(n);
    let mut server_own = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (c, in_engine, _) = call_timed(&mut send, "POST", &exec_path, &key, exec_body).await;
        let rtt = t.elapsed();
        api.push(rtt);
        assert_eq!(c, 200);
        if let Some(t) = in_engine {
            own.push(rtt.saturating_sub(t.engine));
            server_own.push(t.app.saturating_sub(t.engine));
        }
        let t = Instant::now();
        st.engine
            .exec(&id, vec!["true".into()])
            .await
            .expect("exec");
        agent.push(t.elapsed());
    }
    report.latency(
        "API exec `true` (buffered, keep-alive)",
        &api,
        Some(("agent exec via engine", &agent)),
        &format!("{engine} engine; overhead = API p50 − agent p50"),
    );
    let p50 = |v: &[Duration]| bhatti_benchkit::Stats::from_durations(v).p50_us;
    let overhead = p50(&api) - p50(&agent);
    report.throughput(
        "API overhead, difference of the p50s",
        "µs",
        overhead,
        None,
        "noisy: two distributions of a noisy engine",
    );
    // Per request: the client's round trip minus the engine time the
    // server measured for that same request; what is left is HTTP, auth,
    // the store lookups, routing and JSON.
    if !own.is_empty() {
        report.latency(
            "API's own time per exec (round trip − Server-Timing engine time)",
            &own,
            None,
            "includes this in-process client's HTTP work; target p50 < 300 µs",
        );
        report.latency(
            "daemon's own time per exec (Server-Timing app − engine)",
            &server_own,
            None,
            "auth, store lookups, routing, JSON, inside the daemon",
        );
    }

    let health: Vec<Duration> = {
        let mut v = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            call(&mut send, "GET", "/health", &key, "").await;
            v.push(t.elapsed());
        }
        v
    };
    report.latency(
        "GET /health",
        &health,
        None,
        "bare HTTP round trip, no auth, no store",
    );

    // 20 concurrent execs.
    let mut api20 = Vec::new();
    let mut agent20 = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (addr, key, p) = (d.tcp_addr, key.clone(), exec_path.clone());
            set.spawn(async move {
                let mut s = connect(addr).await;
                call(&mut s, "POST", &p, &key, exec_body).await.0
            });
        }
        while let Some(r) = set.join_next().await {
            assert_eq!(r.expect("join"), 200);
        }
        api20.push(t.elapsed());
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (st, id) = (st.clone(), id.clone());
            set.spawn(async move {
                st.engine
                    .exec(&id, vec!["true".into()])
                    .await
                    .map(|r| r.exit_code)
            });
        }
        while let Some(r) = set.join_next().await {
            assert_eq!(r.expect("join").expect("exec"), 0);
        }
        agent20.push(t.elapsed());
    }
    report.latency(
        "20 concurrent API execs (batch)",
        &api20,
        Some(("20 concurrent agent execs", &agent20)),
        "new connection per request",
    );

    // List with 100 sandboxes (store rows; listing never touches stopped ones).
    for i in 0..99 {
        st.store
            .insert_sandbox(&NewSandbox {
                id: bhatti_store::ids::sandbox_id(),
                user_id: user.id.clone(),
                name: format!("row-{i}"),
                status: SandboxStatus::Stopped,
                engine: engine.clone(),
                ..Default::default()
            })
            .expect("row");
    }
    let mut list = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let (c, b) = call(&mut send, "GET", "/sandboxes", &key, "").await;
        list.push(t.elapsed());
        assert_eq!(c, 200);
        assert!(b.len() > 100 * 100);
    }
    report.latency(
        "GET /sandboxes (100 sandboxes)",
        &list,
        Some(("GET /health", &health)),
        "",
    );

    // Soak: 50 clients, each checking its own output.
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(soak_secs);
    let mut set = tokio::task::JoinSet::new();
    for c in 0..50 {
        let (addr, key, p, errors, done) = (
            d.tcp_addr,
            key.clone(),
            exec_path.clone(),
            errors.clone(),
            done.clone(),
        );
        set.spawn(async move {
            let mut s = connect(addr).await;
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let tag = format!("c{c}-{i}");
                let body = format!(r#"{{"cmd":["echo","{tag}"]}}"#);
                let t = Instant::now();
                let (code, b) = call(&mut s, "POST", &p, &key, &body).await;
                lat.push(t.elapsed());
                let ok = code == 200
                    && serde_json::from_slice::<serde_json::Value>(&b)
                        .map(|v| v["stdout"] == format!("{tag}\n"))
                        .unwrap_or(false);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            lat
        });
    }
    let mut soak = Vec::new();
    while let Some(r) = set.join_next().await {
        soak.extend(r.expect("join"));
    }
    let total = done.load(Ordering::Relaxed);
    report.latency(
        &format!("soak: 50 clients × {soak_secs} s, exec echo"),
        &soak,
        None,
        &format!(
            "{total} execs, {} errors or wrong outputs",
            errors.load(Ordering::Relaxed)
        ),
    );
    report.throughput(
        "soak throughput",
        "execs/s",
        total as f64 / soak_secs.max(1) as f64,
        None,
        "",
    );
    report.throughput(
        "soak errors",
        "count",
        errors.load(Ordering::Relaxed) as f64,
        None,
        "must be 0",
    );

    call(&mut send, "DELETE", &format!("/sandboxes/{id}"), &key, "").await;
    match report.write() {
        Ok(p) => println!("report: {}", p.display()),
        Err(e) => println!("could not write the report: {e}"),
    }
    d.shutdown().await;
}
