//! A real daemon on real sockets for the server suites, a minimal HTTP and
//! WebSocket client, and the scenarios shared by the Docker and microVM
//! instances of the suite (everything above the engine must behave the same
//! on both).
#![allow(dead_code)]

pub mod registry;

// The scenarios shared by the engine instances, one file each.
mod exec;
mod files;
mod isolation;
mod lifecycle;
mod lifetimes;
mod limits;
mod proxy;
mod publish;
mod resources;
mod shell;
mod snapshots;
// Not every suite runs every scenario.
#[allow(unused_imports)]
pub use {
    exec::*, files::*, isolation::*, lifecycle::*, lifetimes::*, limits::*, proxy::*, publish::*,
    resources::*, shell::*, snapshots::*,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bhatti_server::config::Config;
use bhatti_server::Daemon;
use bhatti_store::{NewUser, Quotas};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// One daemon test at a time per binary: daemons share the host's network
/// pool and Docker's owner networks.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct TestDaemon {
    pub daemon: Option<Daemon>,
    pub dir: tempfile::TempDir,
    pub cfg: Config,
    pub addr: std::net::SocketAddr,
}

pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, h: &str) -> Option<String> {
        self.headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// One HTTP/1.1 request over `io` (TCP, or TLS on top), with `Host: host`.
pub async fn http_on<S>(
    io: S,
    method: &str,
    path: &str,
    host: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Resp
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = send
        .send_request(b.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("send");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

pub fn config(engine: &str, dir: &std::path::Path) -> Config {
    let mut cfg = Config {
        engine: Some(engine.into()),
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    cfg.rate_limits.enabled = false;
    cfg.thermal.enabled = false;
    cfg.default_memory_mb = 256;
    cfg.drain_secs = 5;
    // Each template is a background boot: on by hand in the suites that
    // test them (tests/templates.rs), so the others time only their own VMs.
    cfg.template_snapshots = false;
    cfg.pools = Some(Vec::new());
    if let Ok(img) = std::env::var("BHATTI_DOCKER_IMAGE") {
        cfg.docker_image = Some(img);
    }
    cfg
}

impl TestDaemon {
    pub async fn start(engine: &str, tweak: impl FnOnce(&mut Config)) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix("bhatti-server-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let mut cfg = config(engine, dir.path());
        tweak(&mut cfg);
        let daemon = bhatti_server::start(cfg.clone())
            .await
            .unwrap_or_else(|e| panic!("daemon start: {e}"));
        let addr = daemon.tcp_addr;
        TestDaemon {
            daemon: Some(daemon),
            dir,
            cfg,
            addr,
        }
    }

    /// Graceful stop, then a new daemon on the same data directory.
    pub async fn restart(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
        self.start_again().await;
    }

    pub async fn start_again(&mut self) {
        let d = bhatti_server::start(self.cfg.clone())
            .await
            .unwrap_or_else(|e| panic!("daemon restart: {e}"));
        self.addr = d.tcp_addr;
        self.daemon = Some(d);
    }

    pub fn store(&self) -> &bhatti_store::Store {
        &self.daemon.as_ref().expect("running").state.store
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A user and its API key.
    pub fn user(&self, name: &str, quotas: Quotas) -> String {
        self.store()
            .create_user(&NewUser {
                name: name.into(),
                quotas,
            })
            .expect("create user")
            .1
    }

    pub async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(
            method,
            path,
            token,
            &[("content-type", "application/json")],
            bytes,
        )
        .await
    }

    /// Just the status code of [`TestDaemon::req`].
    pub async fn code(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> u16 {
        self.req(method, path, token, body).await.status
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        http_on(stream, method, path, "localhost", token, headers, body).await
    }

    /// Creates a sandbox, which must succeed; its JSON.
    pub async fn create(&self, token: &str, body: Value) -> Value {
        let r = self
            .req("POST", "/sandboxes", Some(token), Some(body))
            .await;
        assert_eq!(r.status, 201, "create: {}", r.text());
        r.json()
    }

    /// `sh -c` through the API; (exit code, stdout, stderr).
    pub async fn sh(&self, token: &str, sb: &str, script: &str) -> (i64, String, String) {
        let r = self
            .req(
                "POST",
                &format!("/sandboxes/{sb}/exec"),
                Some(token),
                Some(json!({"cmd": ["sh", "-c", script]})),
            )
            .await;
        assert_eq!(r.status, 200, "exec {script:?}: {}", r.text());
        let j = r.json();
        (
            j["exit_code"].as_i64().expect("exit_code"),
            j["stdout"].as_str().unwrap_or_default().to_string(),
            j["stderr"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// A detached exec, which must start.
    pub async fn detach(&self, token: &str, sb: &str, cmd: &[&str]) {
        let r = self
            .req(
                "POST",
                &format!("/sandboxes/{sb}/exec"),
                Some(token),
                Some(json!({"cmd": cmd, "detach": true})),
            )
            .await;
        assert_eq!(r.status, 200, "detach {cmd:?}: {}", r.text());
    }

    pub async fn ws(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        tokio_tungstenite::tungstenite::Error,
    > {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}{path}", self.addr),
            )
            .expect("ws request");
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        tokio_tungstenite::client_async(req, stream)
            .await
            .map(|(ws, _)| ws)
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // Destroy whatever a (possibly failed) test left, on a fresh runtime:
        // the test's own may be unwinding.
        let Some(d) = self.daemon.take() else { return };
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let st = d.state.clone();
                for info in st.engine.list().await {
                    let _ = st.engine.destroy(&info.id).await;
                }
                d.shutdown().await;
            });
        })
        .join();
    }
}

/// Honest health, on either engine: a sandbox whose VM or container
/// `kill` ends under it (given the sandbox ID) is `crashed` within a health
/// tick (the daemon must run with a short `thermal.tick_secs`), with a
/// reason naming `reason_has` and one `sandbox.crashed` event; requests
/// answer 409; `start` brings it back with a file written and synced
/// before the kill. Returns the sandbox ID (still running) for more checks.
pub async fn crash_and_start(
    d: &TestDaemon,
    kill: impl FnOnce(&TestDaemon, &str),
    reason_has: &str,
) -> (String, String) {
    let key = d.user("crash", Quotas::default());
    let id = d.create(&key, json!({"name": "victim"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (code, _, err) = d.sh(&key, &id, "echo kept > /workspace/k; sync").await;
    assert_eq!(code, 0, "{err}");
    kill(d, &id);
    let g = wait_status(d, &key, &id, "crashed").await;
    assert_eq!(g["status"], "crashed", "{g}");
    let why = g["status_reason"].as_str().unwrap_or_default();
    assert!(why.contains(reason_has), "{g}");
    let path = format!("/sandboxes/{id}");
    let r = d
        .req(
            "POST",
            &format!("{path}/exec"),
            Some(&key),
            Some(json!({"cmd": ["true"]})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("crashed"), "{}", r.text());
    assert_eq!(r.json()["reason"], "sandbox_crashed", "{}", r.text());
    // The recorder writes events in batches.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let events = d
        .store()
        .events(&bhatti_store::EventQuery::default())
        .expect("events")
        .into_iter()
        .filter(|e| e.sandbox_id == id && e.event_type == "sandbox.crashed")
        .count();
    assert_eq!(events, 1, "one sandbox.crashed event");
    assert_eq!(
        d.code("POST", &format!("{path}/start"), Some(&key), None)
            .await,
        200
    );
    let g = d.req("GET", &path, Some(&key), None).await.json();
    assert_eq!(g["status"], "running", "{g}");
    assert_eq!(d.sh(&key, &id, "cat /workspace/k").await.1, "kept\n");
    (key, id)
}

/// Polls `GET /sandboxes/{id}` until its status is `want`, for at most
/// 10 s; returns the last answer (the caller asserts on it).
pub async fn wait_status(d: &TestDaemon, key: &str, id: &str, want: &str) -> Value {
    let path = format!("/sandboxes/{id}");
    let t0 = std::time::Instant::now();
    loop {
        let g = d.req("GET", &path, Some(key), None).await.json();
        if g["status"] == want || t0.elapsed() > std::time::Duration::from_secs(10) {
            return g;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Reads WebSocket messages until the accumulated text contains `want`.
pub async fn ws_until<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, want: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut seen = String::new();
    while !seen.contains(want) {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {want:?}; saw {seen:?}"))
            .unwrap_or_else(|| panic!("socket closed waiting for {want:?}; saw {seen:?}"))
            .expect("ws message");
        match m {
            Message::Binary(b) => seen.push_str(&String::from_utf8_lossy(&b)),
            Message::Text(t) => seen.push_str(t.as_str()),
            Message::Close(_) => panic!("closed waiting for {want:?}; saw {seen:?}"),
            _ => {}
        }
    }
    seen
}

/// The first text message of a shell socket: the session ID.
pub async fn ws_session<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("session message in time")
            .expect("open")
            .expect("message");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str())
                .unwrap_or_else(|_| panic!("not a session message: {t}"));
            assert_eq!(v["type"], "session", "{t}");
            return v["session_id"].as_str().expect("session_id").to_string();
        }
    }
}

/// The daemon's warnings and errors (a 500's cause under its request ID) in
/// the test's output, shown when it fails; RUST_LOG=info adds the request
/// log.
pub fn daemon_logs_in_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// Sandbox ids of the QEMU processes running from `data`.
pub fn vmm_sandboxes(data: &std::path::Path) -> Vec<String> {
    let needle = data.join("sandboxes").display().to_string();
    let mut ids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains("qemu-system") {
            continue;
        }
        if let Some(rest) = cmd.split(&format!("{needle}/")).nth(1) {
            ids.push(rest.split('/').next().unwrap_or_default().to_string());
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// A sandbox's `id` from its JSON.
pub fn id_of(sb: &serde_json::Value) -> String {
    sb["id"].as_str().unwrap().to_string()
}
