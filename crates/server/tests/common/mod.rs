//! A real daemon on real sockets for the server suites, a minimal HTTP and
//! WebSocket client, and the scenarios shared by the Docker and microVM
//! instances of the suite (everything above the engine must behave the same
//! on both).
#![allow(dead_code)]

pub mod registry;

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
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
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

// ---------------------------------------------------------------------------
// Scenarios shared by the engine instances.

/// CRUD lifecycle: auth, create (defaults, idempotency), list (labels),
/// get by name, patch, stop/start, destroy.
pub async fn lifecycle(d: &TestDaemon) {
    let h = d.req("GET", "/health", None, None).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert!(h.header("x-bhatti-version").is_some());
    let r = d.req("GET", "/sandboxes", None, None).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("authorization required"))
    );
    let r = d.req("GET", "/sandboxes", Some("bht_nope"), None).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("invalid api key"))
    );
    // `..` cannot reach an authenticated route without a key.
    let r = d.req("GET", "/health/../sandboxes", None, None).await;
    assert_ne!(r.status, 200);

    let key = d.user("alice", Quotas::default());
    let sb = d
        .create(
            &key,
            json!({"name": "web", "labels": {"app": "web", "tier": "a"}, "memory_mb": 256}),
        )
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["status"], "running");
    assert_eq!(sb["cpus"], 1);
    assert_eq!(sb["memory_mb"], 256);
    assert!(!sb["ip"].as_str().unwrap().is_empty());

    // Idempotent by name: 200 + header + the same record, nothing new booted.
    let again = d
        .req(
            "POST",
            "/sandboxes",
            Some(&key),
            Some(json!({"name": "web"})),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.header("x-bhatti-existing").as_deref(), Some("true"));
    assert_eq!(again.json()["id"], sb["id"]);

    let list = d.req("GET", "/sandboxes", Some(&key), None).await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["thermal"], "hot");
    let f = d
        .req(
            "GET",
            "/sandboxes?label=app=web&label=tier=a",
            Some(&key),
            None,
        )
        .await
        .json();
    assert_eq!(f.as_array().unwrap().len(), 1);
    let f = d
        .req("GET", "/sandboxes?label=app=db", Some(&key), None)
        .await
        .json();
    assert!(f.as_array().unwrap().is_empty());
    assert_eq!(
        d.code("GET", "/sandboxes?label=bhatti.sh/x=1", Some(&key), None)
            .await,
        400
    );

    let by_name = d.req("GET", "/sandboxes/web", Some(&key), None).await;
    assert_eq!(by_name.json()["id"], sb["id"]);

    let p = d
        .req(
            "PATCH",
            "/sandboxes/web",
            Some(&key),
            Some(json!({"name": "web2", "labels_add": {"x": "1"}, "labels_remove": ["tier"]})),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text());
    assert_eq!(p.json()["name"], "web2");
    assert_eq!(p.json()["labels"], json!({"app": "web", "x": "1"}));
    let other = d.create(&key, json!({"name": "other"})).await;
    let dup = d
        .req(
            "PATCH",
            "/sandboxes/other",
            Some(&key),
            Some(json!({"name": "web2"})),
        )
        .await;
    assert_eq!(dup.status, 409, "{}", dup.text());

    // Files survive stop/start.
    assert_eq!(
        d.sh(&key, &id, "echo persisted > /workspace/p.txt").await.0,
        0
    );
    let s = d
        .req("POST", &format!("/sandboxes/{id}/stop"), Some(&key), None)
        .await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["status"], "stopped");
    assert!(s.json()["stopped_at"].is_string());
    let g = d
        .req("GET", &format!("/sandboxes/{id}"), Some(&key), None)
        .await
        .json();
    assert_eq!(g["status"], "stopped");
    let s = d
        .req("POST", &format!("/sandboxes/{id}/start"), Some(&key), None)
        .await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["status"], "running");
    assert_eq!(
        d.sh(&key, &id, "cat /workspace/p.txt").await.1,
        "persisted\n"
    );
    // An exec on a stopped sandbox wakes it transparently.
    d.req("POST", &format!("/sandboxes/{id}/stop"), Some(&key), None)
        .await;
    assert_eq!(d.sh(&key, &id, "echo woke").await.1, "woke\n");
    assert_eq!(
        d.req("GET", &format!("/sandboxes/{id}"), Some(&key), None)
            .await
            .json()["status"],
        "running"
    );

    let del = d
        .req("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
        .await;
    assert_eq!(
        (del.status, del.json()["status"].clone()),
        (200, json!("destroyed"))
    );
    assert_eq!(
        d.code("GET", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        404
    );
    let o = other["id"].as_str().unwrap();
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{o}"), Some(&key), None)
            .await,
        200
    );
    assert!(d
        .req("GET", "/sandboxes", Some(&key), None)
        .await
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    // Metrics and the OpenAPI document need a key too.
    assert_eq!(d.code("GET", "/metrics", None, None).await, 401);
    // A tenant sees their own sandboxes, not the daemon's traffic; an
    // operator (a user named in `admin_users`) sees everything.
    let m = d.req("GET", "/metrics", Some(&key), None).await.text();
    assert!(m.contains("bhatti_sandboxes{thermal=\"hot\"}"), "{m}");
    assert!(!m.contains("bhatti_api_requests_total"), "{m}");
    let admin = d.user("admin", Quotas::default());
    let m = d.req("GET", "/metrics", Some(&admin), None).await.text();
    assert!(m.contains("bhatti_api_requests_total"), "{m}");
    let o = d.req("GET", "/openapi.json", Some(&key), None).await.json();
    assert!(o["paths"]["/sandboxes"]["post"].is_object());
}

/// Exec: buffered, exit codes, stderr, NDJSON streaming, detached, timeout
/// that kills the guest process, errors.
pub async fn exec(d: &TestDaemon) {
    let key = d.user("exec", Quotas::default());
    let sb = d.create(&key, json!({"name": "x"})).await;
    let id = sb["id"].as_str().unwrap();
    let (code, out, err) = d.sh(&key, id, "echo out; echo err >&2; exit 3").await;
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));
    assert_eq!(d.sh(&key, id, "id -u").await.1, "1000\n");

    let r = d
        .raw(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            &[("accept", "application/x-ndjson"), ("content-type", "application/json")],
            json!({"cmd": ["sh", "-c", "for i in 1 2 3; do echo line$i; done; echo e >&2; exit 7"]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-ndjson")
    );
    let events: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("bad line {l:?}")))
        .collect();
    let stdout: String = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(stdout, "line1\nline2\nline3\n");
    assert!(events
        .iter()
        .any(|e| e["type"] == "stderr" && e["data"] == "e\n"));
    assert_eq!(
        events.last().unwrap(),
        &json!({"type": "exit", "exit_code": 7})
    );

    let det = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            Some(json!({"cmd": ["sh", "-c", "sleep 1; echo later > /workspace/det.txt"], "detach": true})),
        )
        .await;
    assert_eq!(det.status, 200, "{}", det.text());
    assert_eq!(det.json()["detached"], true);
    assert!(det.json()["pid"].as_i64().unwrap() > 0);
    let mut ok = false;
    for _ in 0..60 {
        if d.sh(&key, id, "cat /workspace/det.txt 2>/dev/null || true")
            .await
            .1
            == "later\n"
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ok, "detached command never wrote its file");

    // Timeout: the request ends and the guest process group is killed.
    let t = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            Some(json!({"cmd": ["sh", "-c", "sleep 300 & sleep 301; wait"], "timeout_sec": 2})),
        )
        .await;
    assert_eq!(t.status, 504, "{}", t.text());
    let mut gone = false;
    for _ in 0..40 {
        let ps = d.sh(&key, id, "ps -o args 2>/dev/null || ps").await.1;
        if !ps.contains("sleep 30") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(gone, "timed-out command still running");

    for (body, want) in [
        (json!({}), 400),
        (json!({"cmd": []}), 400),
        (json!({"cmd": "ls"}), 400),
        (json!({"cmd": [""]}), 400),
        (json!({"cmd": ["ls"], "tiemout_sec": 5}), 400),
        (json!(["ls"]), 400),
        // Well-formed, refused by the guest: the reason's status.
        (json!({"cmd": ["/no/such/binary"]}), 404),
        (json!({"cmd": ["/etc"]}), 403),
    ] {
        let r = d
            .req(
                "POST",
                &format!("/sandboxes/{id}/exec"),
                Some(&key),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, want, "{body}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    let r = d
        .raw(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            &[("content-type", "application/json")],
            b"{nope".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);

    let s = d
        .req(
            "GET",
            &format!("/sandboxes/{id}/sessions"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(s.status, 200);
    assert!(s.json().is_array());
}

/// Files: write, read (full and truncated), ls, stat, and the error cases.
pub async fn files(d: &TestDaemon) {
    let key = d.user("files", Quotas::default());
    let sb = d.create(&key, json!({"name": "f"})).await;
    let id = sb["id"].as_str().unwrap();
    let base = format!("/sandboxes/{id}/files");
    let content: String = (1..=100).map(|i| format!("line {i}\n")).collect();
    let w = d
        .raw(
            "PUT",
            &format!("{base}?path=/workspace/dir/a.txt&mode=0600"),
            Some(&key),
            &[],
            content.clone().into_bytes(),
        )
        .await;
    assert_eq!(w.status, 200, "{}", w.text());
    let r = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace/dir/a.txt"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), content);
    assert_eq!(r.header("x-file-size"), Some(content.len().to_string()));
    let t = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace/dir/a.txt&offset=10&limit=2"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(t.text(), "line 10\nline 11\n");
    assert_eq!(t.header("x-file-size"), Some(content.len().to_string()));
    let ls = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace/dir&ls=true"),
            Some(&key),
            &[],
            vec![],
        )
        .await
        .json();
    assert_eq!(ls[0]["name"], "a.txt");
    assert_eq!(ls[0]["mode"], "0600");
    let st = d
        .raw(
            "HEAD",
            &format!("{base}?path=/workspace/dir"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(st.status, 200);
    assert_eq!(st.header("x-file-isdir").as_deref(), Some("true"));
    let st = d
        .raw(
            "HEAD",
            &format!("{base}?path=/workspace/missing"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(st.status, 404);
    // Binary content round-trips byte for byte.
    let bin: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    assert_eq!(
        d.raw(
            "PUT",
            &format!("{base}?path=/workspace/b.bin"),
            Some(&key),
            &[],
            bin.clone()
        )
        .await
        .status,
        200
    );
    assert_eq!(
        d.raw(
            "GET",
            &format!("{base}?path=/workspace/b.bin"),
            Some(&key),
            &[],
            vec![]
        )
        .await
        .body
        .to_vec(),
        bin
    );
    let (_, sum, _) = d.sh(&key, id, "wc -c < /workspace/b.bin").await;
    assert_eq!(sum.trim(), "300000");

    // Bad input: clear 4xx, nothing written.
    for (path, want) in [
        ("", 400),
        ("relative.txt", 400),
        ("/workspace/../etc/passwd", 400),
        ("/workspace/x%00y", 400),
    ] {
        let r = d
            .raw(
                "PUT",
                &format!("{base}?path={path}"),
                Some(&key),
                &[],
                b"x".to_vec(),
            )
            .await;
        assert_eq!(r.status, want, "{path}: {}", r.text());
    }
    let r = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace/nope.txt"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace/dir/a.txt&limit=-1"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 400);
    // Only the documented parameters; a directory read as a file conflicts.
    for (q, want) in [
        ("path=/workspace/dir/a.txt&lines=3", 400),
        ("path=/workspace/dir&ls=1", 400),
        ("path=/workspace/dir", 409),
    ] {
        let r = d
            .raw("GET", &format!("{base}?{q}"), Some(&key), &[], vec![])
            .await;
        assert_eq!(r.status, want, "{q}: {}", r.text());
    }
    let big = d
        .raw(
            "PUT",
            &format!("{base}?path=/workspace/big"),
            Some(&key),
            &[("content-length", "104857601")],
            vec![],
        )
        .await;
    assert_eq!(big.status, 413, "{}", big.text());
    // An upload cut short (Content-Length 10, 5 bytes, then the client
    // closes its side) is the client's error, and leaves no file.
    let short = raw_http(
        d,
        &format!(
            "PUT {base}?path=/workspace/short.txt HTTP/1.1\r\nhost: x\r\n\
             authorization: Bearer {key}\r\ncontent-length: 10\r\n\r\nhello"
        ),
    )
    .await;
    assert!(short.starts_with("HTTP/1.1 400"), "{short}");
    assert!(short.contains("ended early"), "{short}");
    let (_, ls, _) = d.sh(&key, id, "ls -a /workspace").await;
    assert!(
        !ls.contains("big") && !ls.contains("relative") && !ls.contains("short"),
        "{ls}"
    );
    // Pseudo files have no size on stat, yet have content: it is served
    // whole, with a Content-Length that matches it.
    let v = d
        .raw(
            "GET",
            &format!("{base}?path=/proc/version"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(v.status, 200, "{}", v.text());
    assert!(v.text().starts_with("Linux version"), "{}", v.text());
    assert_eq!(v.header("content-length"), Some(v.body.len().to_string()));
    // A directory is refused with a status (the guest's state: 409), not
    // an empty 200.
    let r = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
}

/// Sends `request` as written over a new TCP connection, closes the
/// sending side, and returns everything the daemon answered.
pub async fn raw_http(d: &TestDaemon, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("send");
    s.shutdown().await.expect("shutdown");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .expect("the daemon answers")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// WebSocket shell: rejected without a key, session message, I/O, resize,
/// detach and reattach with scrollback; piped sessions.
pub async fn shell_ws(d: &TestDaemon) {
    let key = d.user("shell", Quotas::default());
    let sb = d.create(&key, json!({"name": "sh"})).await;
    let id = sb["id"].as_str().unwrap();
    let path = format!("/sandboxes/{id}/ws");
    match d.ws(&path, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!(
            "unauthenticated upgrade must fail with 401, got {:?}",
            other.map(|_| ())
        ),
    }
    match d.ws(&path, Some("bht_wrong")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("wrong key must fail with 401, got {:?}", other.map(|_| ())),
    }
    let mut ws = d
        .ws(&format!("{path}?new=true"), Some(&key))
        .await
        .expect("ws");
    let sid = ws_session(&mut ws).await;
    ws.send(Message::Text(
        r#"{"type":"resize","rows":40,"cols":123}"#.into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(
        b"stty size; echo mark-$((6*7))\n".to_vec().into(),
    ))
    .await
    .unwrap();
    let seen = ws_until(&mut ws, "mark-42").await;
    assert!(seen.contains("40 123"), "resize not applied: {seen:?}");
    ws.send(Message::Binary(
        b"echo before-detach-$((1+1))\n".to_vec().into(),
    ))
    .await
    .unwrap();
    ws_until(&mut ws, "before-detach-2").await;
    drop(ws);
    // Listed as detached.
    let mut detached = false;
    for _ in 0..40 {
        let s = d
            .req(
                "GET",
                &format!("/sandboxes/{id}/sessions"),
                Some(&key),
                None,
            )
            .await
            .json();
        if s.as_array()
            .unwrap()
            .iter()
            .any(|x| x["session_id"] == sid.as_str() && x["attached"] == false)
        {
            detached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(detached, "session {sid} did not detach");
    // Auto-reattach to the newest detached session, with its scrollback.
    let mut ws = d.ws(&path, Some(&key)).await.expect("ws");
    assert_eq!(ws_session(&mut ws).await, sid);
    ws_until(&mut ws, "before-detach-2").await;
    ws.send(Message::Binary(b"exit\n".to_vec().into()))
        .await
        .unwrap();
    // The shell ends: a normal close.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1000);
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    // Piped session over /exec/ws.
    let mut ws = d
        .ws(&format!("/sandboxes/{id}/exec/ws"), Some(&key))
        .await
        .expect("ws");
    ws.send(Message::Text(
        json!({"cmd": ["sh", "-c", "read x; echo got-$x; exit 5"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    ws_session(&mut ws).await;
    ws.send(Message::Text("hello\n".into())).await.unwrap();
    let seen = ws_until(&mut ws, "\"exit\"").await;
    assert!(seen.contains("got-hello"), "{seen}");
    assert!(seen.contains(r#"{"type":"exit","exit_code":5}"#), "{seen}");
}

/// The authenticated proxy: HTTP through a tunnel with forwarded headers;
/// bad port, unknown sandbox, nothing listening.
pub async fn proxy(d: &TestDaemon) {
    let key = d.user("proxy", Quotas::default());
    let sb = d.create(&key, json!({"name": "p"})).await;
    let id = sb["id"].as_str().unwrap();
    let script = "mkdir -p /workspace/www/cgi-bin && echo hello-proxy > /workspace/www/index.html && \
        printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho \"xff=$HTTP_X_FORWARDED_FOR host=$HTTP_HOST q=$QUERY_STRING\"\\n' > /workspace/www/cgi-bin/h && \
        chmod +x /workspace/www/cgi-bin/h";
    assert_eq!(d.sh(&key, id, script).await.0, 0);
    let det = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            Some(json!({"cmd": ["busybox", "httpd", "-f", "-p", "8000", "-h", "/workspace/www"], "detach": true})),
        )
        .await;
    assert_eq!(det.status, 200, "{}", det.text());
    let mut ports = Value::Null;
    for _ in 0..40 {
        ports = d
            .req("GET", &format!("/sandboxes/{id}/ports"), Some(&key), None)
            .await
            .json();
        if ports
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["container_port"] == 8000))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let p = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["container_port"] == 8000)
        .expect("port 8000 listed");
    assert_eq!(p["proxy_url"], format!("/sandboxes/{id}/proxy/8000/"));
    let all = d.req("GET", "/ports", Some(&key), None).await.json();
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["sandbox_id"] == id && x["container_port"] == 8000));

    let r = d
        .raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/8000/"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello-proxy\n");
    let r = d
        .raw(
            "GET",
            "/sandboxes/p/proxy/8000/cgi-bin/h?a=1&b=2",
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("xff=127.0.0.1"), "{}", r.text());
    assert!(r.text().contains("host=localhost:8000"), "{}", r.text());
    assert!(r.text().contains("q=a=1&b=2"), "{}", r.text());
    // A percent-encoded name is decoded once, and the path after the port
    // is still the one forwarded (it was "/" before).
    let r = d
        .raw(
            "GET",
            "/sandboxes/%70/proxy/8000/cgi-bin/h?enc=1",
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("q=enc=1"), "{}", r.text());
    let r = d
        .raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/8000/missing"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        d.raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/0/"),
            Some(&key),
            &[],
            vec![]
        )
        .await
        .status,
        400
    );
    assert_eq!(
        d.raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/99999/"),
            Some(&key),
            &[],
            vec![]
        )
        .await
        .status,
        400
    );
    assert_eq!(
        d.raw(
            "GET",
            "/sandboxes/nosuch/proxy/8000/",
            Some(&key),
            &[],
            vec![]
        )
        .await
        .status,
        404
    );
    assert_eq!(
        d.raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/8000/"),
            None,
            &[],
            vec![]
        )
        .await
        .status,
        401
    );
    let r = d
        .raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/8001/"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
}

/// Secrets, templates and volumes CRUD, with secrets injected at create and
/// encrypted at rest.
pub async fn resources(d: &TestDaemon) {
    let key = d.user("res", Quotas::default());
    // Secrets.
    let s = d
        .req(
            "POST",
            "/secrets",
            Some(&key),
            Some(json!({"name": "API_TOKEN", "value": "s3cr3t-value"})),
        )
        .await;
    assert_eq!(s.status, 201, "{}", s.text());
    let list = d.req("GET", "/secrets", Some(&key), None).await;
    assert_eq!(list.json()[0]["name"], "API_TOKEN");
    assert!(!list.text().contains("s3cr3t"));
    assert_eq!(
        d.code("POST", "/secrets", Some(&key), Some(json!({"name": "X"})))
            .await,
        400
    );
    assert_eq!(
        d.code(
            "POST",
            "/secrets",
            Some(&key),
            Some(json!({"name": "bad name", "value": "v"}))
        )
        .await,
        400
    );
    let db = std::fs::read(d.data().join("state.db")).unwrap();
    let wal = std::fs::read(d.data().join("state.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes.windows(12).any(|w| w == b"s3cr3t-value"),
            "plaintext secret on disk"
        );
    }
    // Templates, with the secret.
    let t = d
        .req(
            "POST",
            "/templates",
            Some(&key),
            Some(json!({"name": "tpl", "cpus": 1, "memory_mb": 256, "env": {"FROM_TPL": "yes"}, "secrets": ["API_TOKEN"]})),
        )
        .await;
    assert_eq!(t.status, 201, "{}", t.text());
    let tid = t.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.req("GET", &format!("/templates/{tid}"), Some(&key), None)
            .await
            .json()["name"],
        "tpl"
    );
    assert_eq!(
        d.req("GET", "/templates", Some(&key), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        d.code(
            "POST",
            "/templates",
            Some(&key),
            Some(json!({"name": "t2", "cpus": 0.5}))
        )
        .await,
        400
    );

    // Volumes.
    let v = d
        .req(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "data", "size_mb": 64})),
        )
        .await;
    assert_eq!(v.status, 201, "{}", v.text());
    assert_eq!(v.json()["status"], "ready");
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "data", "size_mb": 64}))
        )
        .await,
        409
    );
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "z", "size_mb": 0}))
        )
        .await,
        400
    );
    assert_eq!(
        d.code(
            "POST",
            "/volumes",
            Some(&key),
            Some(json!({"name": "../x", "size_mb": 8}))
        )
        .await,
        400
    );

    let sb = d
        .create(
            &key,
            json!({"name": "with-all", "template_id": tid,
                   "persistent_volumes": [{"name": "data", "mount": "/data"}]}),
        )
        .await;
    let id = sb["id"].as_str().unwrap();
    assert_eq!(sb["template_id"], tid.as_str());
    let (_, env, _) = d.sh(&key, id, "echo $API_TOKEN $FROM_TPL").await;
    assert_eq!(env, "s3cr3t-value yes\n");
    assert_eq!(
        d.sh(&key, id, "echo vol-data > /data/f && sync && cat /data/f")
            .await
            .1,
        "vol-data\n"
    );
    let g = d.req("GET", "/volumes/data", Some(&key), None).await.json();
    assert_eq!(g["attachments"][0]["sandbox_id"], id);
    assert_eq!(g["attachments"][0]["mount"], "/data");
    // RW-exclusive: a second RW attach is refused, and nothing is left behind.
    let before = d
        .req("GET", "/sandboxes", Some(&key), None)
        .await
        .json()
        .as_array()
        .unwrap()
        .len();
    let r = d
        .req("POST", "/sandboxes", Some(&key), Some(json!({"name": "second", "persistent_volumes": [{"name": "data", "mount": "/data"}]})))
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        d.req("GET", "/sandboxes", Some(&key), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        before
    );
    assert_eq!(
        d.code("DELETE", "/volumes/data", Some(&key), None).await,
        409
    );
    assert_eq!(
        d.code(
            "POST",
            "/volumes/data/resize",
            Some(&key),
            Some(json!({"size_mb": 128}))
        )
        .await,
        409
    );
    let r = d
        .req("POST", "/sandboxes", Some(&key), Some(json!({"name": "bad-mount", "persistent_volumes": [{"name": "data", "mount": "/etc"}]})))
        .await;
    assert_eq!(r.status, 400);
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&key),
            Some(json!({"name": "nov", "persistent_volumes": [{"name": "nope", "mount": "/d"}]})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&key),
            Some(json!({"name": "nosec", "secrets": ["MISSING"]})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());

    // Data outlives the sandbox; grow and clone once detached.
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        200
    );
    let r = d
        .req(
            "POST",
            "/volumes/data/resize",
            Some(&key),
            Some(json!({"size_mb": 128})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["size_mb"], 128);
    assert_eq!(
        d.code(
            "POST",
            "/volumes/data/resize",
            Some(&key),
            Some(json!({"size_mb": 100}))
        )
        .await,
        409
    );
    let c = d
        .req(
            "POST",
            "/volumes/data/snapshot",
            Some(&key),
            Some(json!({"name": "data-copy"})),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text());
    let sb2 = d
        .create(&key, json!({"name": "reader", "persistent_volumes": [{"name": "data-copy", "mount": "/data", "read_only": true}]}))
        .await;
    let id2 = sb2["id"].as_str().unwrap();
    assert_eq!(d.sh(&key, id2, "cat /data/f").await.1, "vol-data\n");
    let (code, _, _) = d.sh(&key, id2, "echo x > /data/g").await;
    assert_ne!(code, 0, "read-only volume was writable");
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id2}"), Some(&key), None)
            .await,
        200
    );
    assert_eq!(
        d.req("GET", "/volumes", Some(&key), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    for v in ["data", "data-copy"] {
        assert_eq!(
            d.code("DELETE", &format!("/volumes/{v}"), Some(&key), None)
                .await,
            200
        );
    }
    assert_eq!(
        d.code("DELETE", "/secrets/API_TOKEN", Some(&key), None)
            .await,
        200
    );
    assert_eq!(
        d.code("DELETE", "/secrets/API_TOKEN", Some(&key), None)
            .await,
        404
    );
    assert_eq!(
        d.code("DELETE", &format!("/templates/{tid}"), Some(&key), None)
            .await,
        200
    );
    assert!(d
        .req("GET", "/secrets", Some(&key), None)
        .await
        .json()
        .as_array()
        .unwrap()
        .is_empty());
}

/// Two users: neither sees the other's sandboxes, secrets, volumes,
/// templates or snapshots on any route family (404, never 403).
pub async fn isolation(d: &TestDaemon) {
    let a = d.user("ua", Quotas::default());
    let b = d.user("ub", Quotas::default());
    let sb = d.create(&a, json!({"name": "mine"})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    d.req(
        "POST",
        "/secrets",
        Some(&a),
        Some(json!({"name": "S", "value": "v"})),
    )
    .await;
    d.req(
        "POST",
        "/volumes",
        Some(&a),
        Some(json!({"name": "va", "size_mb": 16})),
    )
    .await;
    let t = d
        .req("POST", "/templates", Some(&a), Some(json!({"name": "ta"})))
        .await
        .json();
    for target in [id.as_str(), "mine"] {
        for (m, p, body) in [
            ("GET", format!("/sandboxes/{target}"), None),
            (
                "PATCH",
                format!("/sandboxes/{target}"),
                Some(json!({"keep_hot": false})),
            ),
            (
                "POST",
                format!("/sandboxes/{target}/exec"),
                Some(json!({"cmd": ["true"]})),
            ),
            ("POST", format!("/sandboxes/{target}/stop"), None),
            ("POST", format!("/sandboxes/{target}/start"), None),
            ("GET", format!("/sandboxes/{target}/sessions"), None),
            (
                "GET",
                format!("/sandboxes/{target}/files?path=/workspace"),
                None,
            ),
            ("GET", format!("/sandboxes/{target}/ports"), None),
            ("GET", format!("/sandboxes/{target}/proxy/80/"), None),
            (
                "POST",
                format!("/sandboxes/{target}/checkpoint"),
                Some(json!({"name": "c"})),
            ),
            ("DELETE", format!("/sandboxes/{target}"), None),
        ] {
            let r = d.req(m, &p, Some(&b), body).await;
            assert_eq!(r.status, 404, "{m} {p} as another user: {}", r.text());
        }
        match d.ws(&format!("/sandboxes/{target}/ws"), Some(&b)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
            other => panic!(
                "another user's shell must be 404, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    for p in [
        "/sandboxes",
        "/secrets",
        "/volumes",
        "/templates",
        "/snapshots",
        "/ports",
    ] {
        let r = d.req("GET", p, Some(&b), None).await;
        assert_eq!(r.status, 200);
        assert!(
            r.json().as_array().unwrap().is_empty(),
            "{p} leaks: {}",
            r.text()
        );
    }
    assert_eq!(d.code("GET", "/volumes/va", Some(&b), None).await, 404);
    assert_eq!(d.code("DELETE", "/volumes/va", Some(&b), None).await, 404);
    assert_eq!(d.code("DELETE", "/secrets/S", Some(&b), None).await, 404);
    let tid = t["id"].as_str().unwrap();
    assert_eq!(
        d.code("GET", &format!("/templates/{tid}"), Some(&b), None)
            .await,
        404
    );
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&b),
            Some(json!({"name": "x", "template_id": tid})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&b),
            Some(json!({"name": "x", "secrets": ["S"]})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&b),
            Some(json!({"name": "x", "persistent_volumes": [{"name": "va", "mount": "/d"}]})),
        )
        .await;
    assert_eq!(r.status, 404);
    // Same name is fine for another user: names are per user.
    let mine_b = d.create(&b, json!({"name": "mine"})).await;
    assert_ne!(mine_b["id"], sb["id"]);
    // A's sandbox is untouched by all of this.
    assert_eq!(d.sh(&a, &id, "echo alive").await.1, "alive\n");
}

/// Quotas, caps and malformed requests: clear 4xx and nothing changes.
pub async fn limits_and_bad_input(d: &TestDaemon) {
    let q = Quotas {
        max_sandboxes: 1,
        max_cpus_per_sandbox: 2,
        max_memory_mb_per_sandbox: 512,
        ..Quotas::default()
    };
    let key = d.user("limited", q);
    for (body, want) in [
        (json!({"cpus": 4}), 403),
        (json!({"memory_mb": 1024}), 403),
        (json!({"cpus": 1.5}), 400),
        (json!({"memory_mb": 64}), 400),
        (json!({"name": "bad name"}), 400),
        (json!({"labels": {"bhatti.sh/x": "y"}}), 400),
        (
            json!({"files": [{"guest_path": "/a", "content": "!!notbase64"}]}),
            400,
        ),
        (json!({"files": [{"content": "aGk="}]}), 400),
        (json!({"image": "nope"}), 404),
        (json!({"egress": "sometimes"}), 400),
        (json!({"cpus": "two"}), 400),
        // A JSON array is not an object with fields in order.
        (json!([null, null]), 400),
        (json!({"memroy_mb": 512}), 400),
        (
            json!({"persistent_volumes": [{"name": "v", "mount": "//etc"}]}),
            400,
        ),
        (json!({"secrets": ["not-an-env-name"]}), 400),
        (json!({"cpus": 1e30}), 400),
        // Out-of-range root disks are refused before anything is built
        // (they were a 16 EiB sparse file, or a 500).
        (json!({"disk_size_mb": 17_592_186_044_416_u64}), 400),
        (json!({"disk_size_mb": 99_999_999_999_u64}), 400),
        // Within range but past the storage quota (volumes + root disks).
        (json!({"disk_size_mb": 30_000}), 429),
        // Environment bounds: one value, names, and the whole.
        (json!({"env": {"BIG": "v".repeat(65 << 10)}}), 400),
        (json!({"env": {"A=B": "x"}}), 400),
        (json!({"secrets": ["NOPE"]}), 404),
    ] {
        let r = d
            .req("POST", "/sandboxes", Some(&key), Some(body.clone()))
            .await;
        assert_eq!(r.status, want, "{body}: {}", r.text());
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = d
        .raw(
            "POST",
            "/sandboxes",
            Some(&key),
            &[("content-type", "application/json")],
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(r.status, 400);
    let huge = format!(
        "{{\"name\":\"x\",\"env\":{{\"A\":\"{}\"}}}}",
        "a".repeat(2 << 20)
    );
    let r = d
        .raw(
            "POST",
            "/sandboxes",
            Some(&key),
            &[("content-type", "application/json")],
            huge.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(d
        .req("GET", "/sandboxes", Some(&key), None)
        .await
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    assert!(d
        .store()
        .list_all_sandboxes()
        .unwrap()
        .iter()
        .all(|s| s.name != "x"));

    let files =
        json!([{"guest_path": "/workspace/hello.txt", "content": "aGVsbG8=", "mode": "0640"}]);
    let one = d.create(&key, json!({"name": "one", "env": {"GREETING": "hi there"}, "init": "echo init-ran > /tmp/init.txt", "files": files})).await;
    let id = one["id"].as_str().unwrap();
    assert_eq!(
        d.sh(&key, id, "cat /workspace/hello.txt; echo; echo $GREETING")
            .await
            .1,
        "hello\nhi there\n"
    );
    let r = d
        .req(
            "POST",
            "/sandboxes",
            Some(&key),
            Some(json!({"name": "two"})),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("sandbox limit reached (1/1)"));
    assert_eq!(d.code("GET", "/no/such/route", Some(&key), None).await, 404);
    // Secrets are capped at one environment value (64 KiB): a 900 KB one
    // was accepted and then failed every create after a minute.
    let r = d
        .req(
            "POST",
            "/secrets",
            Some(&key),
            Some(json!({"name": "HUGE", "value": "s".repeat(900_000)})),
        )
        .await;
    // A field over its limit is a 400 like any input rule (413 is for a
    // body over the cap).
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        d.code(
            "POST",
            "/secrets",
            Some(&key),
            Some(json!({"name": "OK", "value": "s".repeat(64 << 10)})),
        )
        .await,
        201
    );
    // A detached exec's output_file must be a plain absolute path.
    let r = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/exec"),
            Some(&key),
            Some(json!({"cmd": ["true"], "detach": true, "output_file": "../../etc/x"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let p = d
        .req(
            "PATCH",
            &format!("/sandboxes/{id}"),
            Some(&key),
            Some(json!({"name": "-bad"})),
        )
        .await;
    assert_eq!(p.status, 400);
}

/// Named snapshots and forks (engines with memory snapshots).
pub async fn snapshots(d: &TestDaemon) {
    let key = d.user(
        "snap",
        Quotas {
            max_snapshots: 1,
            ..Quotas::default()
        },
    );
    let sb = d.create(&key, json!({"name": "src"})).await;
    let id = sb["id"].as_str().unwrap();
    assert_eq!(
        d.sh(&key, id, "echo from-src > /workspace/s.txt").await.0,
        0
    );
    let c = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/checkpoint"),
            Some(&key),
            Some(json!({"name": "cp1"})),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text());
    assert_eq!(c.json()["source_sandbox"], id);
    assert!(c.json()["size_mb"].as_u64().is_some());
    // A second cp1 and a cp2 are over the user's snapshot limit (403); an
    // empty name is refused first (400).
    let cp = format!("/sandboxes/{id}/checkpoint");
    for (name, want) in [("cp1", 403), ("cp2", 403), ("", 400)] {
        let got = d
            .code("POST", &cp, Some(&key), Some(json!({"name": name})))
            .await;
        assert_eq!(got, want, "checkpoint {name:?}");
    }
    // The source keeps running.
    assert_eq!(
        d.sh(
            &key,
            id,
            "echo after > /workspace/s.txt; cat /workspace/s.txt"
        )
        .await
        .1,
        "after\n"
    );
    assert_eq!(
        d.req("GET", "/snapshots", Some(&key), None).await.json()[0]["name"],
        "cp1"
    );
    assert_eq!(d.code("GET", "/snapshots/cp1", Some(&key), None).await, 200);
    let r = d
        .req(
            "POST",
            "/snapshots/cp1/resume",
            Some(&key),
            Some(json!({"name": "restored"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rid = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.sh(&key, &rid, "cat /workspace/s.txt").await.1,
        "from-src\n"
    );
    assert_eq!(
        d.code("DELETE", "/snapshots/cp1", Some(&key), None).await,
        200
    );
    assert_eq!(d.code("GET", "/snapshots/cp1", Some(&key), None).await, 404);
    // Fork while the source runs.
    let f = d
        .req(
            "POST",
            "/sandboxes",
            Some(&key),
            Some(json!({"name": "forked", "from": "src"})),
        )
        .await;
    assert_eq!(f.status, 201, "{}", f.text());
    let fid = f.json()["id"].as_str().unwrap().to_string();
    assert_eq!(d.sh(&key, &fid, "cat /workspace/s.txt").await.1, "after\n");
    assert_eq!(
        d.sh(&key, &fid, "echo fork-only > /workspace/s.txt")
            .await
            .0,
        0
    );
    assert_eq!(d.sh(&key, id, "cat /workspace/s.txt").await.1, "after\n");
    for x in [id, rid.as_str(), fid.as_str()] {
        assert_eq!(
            d.code("DELETE", &format!("/sandboxes/{x}"), Some(&key), None)
                .await,
            200
        );
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sandbox lifetimes through the native API: `timeout_secs` on create,
/// `POST /sandboxes/{id}/timeout` to move or remove the end, `on_expiry`
/// kill (the sandbox is gone) or pause (stopped, its end cleared), and bad
/// values refused.
pub async fn lifetimes(d: &TestDaemon) {
    let t = d.user("ttl", Quotas::default());
    let sb = d
        .create(
            &t,
            json!({"name": "short", "timeout_secs": 2, "metadata": {"any key": "any value"}}),
        )
        .await;
    let id = sb["id"].as_str().expect("id").to_string();
    assert!(sb["expires_at"].is_string(), "{sb}");
    assert_eq!(sb["on_expiry"], "kill");
    assert_eq!(sb["metadata"]["any key"], "any value");
    let gone = async {
        for _ in 0..60 {
            if d.code("GET", &format!("/sandboxes/{id}"), Some(&t), None)
                .await
                == 404
            {
                return true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        false
    };
    assert!(gone.await, "a 2 s sandbox outlived 60 s");

    let sb = d.create(&t, json!({"name": "kept"})).await;
    let id = sb["id"].as_str().expect("id").to_string();
    assert!(sb.get("expires_at").is_none(), "no timeout, no end: {sb}");
    let r = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/timeout"),
            Some(&t),
            Some(json!({"timeout_secs": 600})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["expires_at"].is_string());
    let r = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/timeout"),
            Some(&t),
            Some(json!({"timeout_secs": 0})),
        )
        .await;
    assert!(
        r.json().get("expires_at").is_none(),
        "0 removes the end: {}",
        r.text()
    );
    for bad in [
        json!({"timeout_secs": 99_999_999_999u64}),
        json!({"on_expiry": "explode"}),
        json!({"timeout_secs": -1}),
    ] {
        let c = d
            .code(
                "POST",
                &format!("/sandboxes/{id}/timeout"),
                Some(&t),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(c, 400, "{bad}");
    }
    // pause on expiry: stopped, not destroyed, and no end left.
    let r = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/timeout"),
            Some(&t),
            Some(json!({"timeout_secs": 1, "on_expiry": "pause"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut last = Value::Null;
    for _ in 0..60 {
        last = d
            .req("GET", &format!("/sandboxes/{id}"), Some(&t), None)
            .await
            .json();
        if last["status"] == "stopped" && last.get("expires_at").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(last["status"], "stopped", "{last}");
    assert!(last.get("expires_at").is_none(), "{last}");
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&t), None)
            .await,
        200
    );
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
