//! Published ports through the public listener: path and domain routing,
//! the API and per-port hosts, bad input, and wake-on-request with a storm
//! of concurrent requests to one sleeping sandbox. (A scenario shared by the
//! Docker and microVM suites.)

use super::*;

/// The proxy zone the publish scenarios configure.
pub const ZONE: &str = "sb.test";
/// The API's host name on the public listener.
pub const API_HOST: &str = "api.sb.test";

/// A daemon config with a plain-HTTP public listener in domain mode.
pub fn public_config(c: &mut Config) {
    c.public_proxy_listen = Some("127.0.0.1:0".into());
    c.domain = Some(bhatti_server::config::DomainConfig {
        api_host: Some(API_HOST.into()),
        proxy_zone: ZONE.into(),
        ..Default::default()
    });
}

impl TestDaemon {
    /// The public listener's address.
    pub fn public(&self) -> std::net::SocketAddr {
        self.daemon
            .as_ref()
            .and_then(|d| d.public_addr)
            .expect("a public listener")
    }

    /// A request to the public listener with `Host: host`, no key.
    pub async fn public_get(&self, host: &str, path: &str) -> Resp {
        let s = tokio::net::TcpStream::connect(self.public())
            .await
            .expect("connect");
        http_on(s, "GET", path, host, None, &[], Vec::new()).await
    }
}

/// How the storm's sandbox is put to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sleep {
    /// `POST /stop`: memory to disk (cold).
    Stop,
    /// Idle until the thermal manager pauses it (warm); the daemon runs
    /// with a short warm timeout.
    Idle,
}

/// Counts the `thermal.wake` events of a sandbox once the recorder has
/// written what it holds.
async fn wakes(d: &TestDaemon, id: &str) -> usize {
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.store()
        .events(&bhatti_store::EventQuery {
            type_prefix: Some("thermal.wake".into()),
            sandbox_id: Some(id.into()),
            ..Default::default()
        })
        .expect("events")
        .len()
}

/// Sends an upgrade request for `host` through the public listener, waits
/// for the 101, then writes `payload` and returns what comes back.
async fn upgrade_echo(d: &TestDaemon, host: &str, payload: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut last = String::new();
    // The server in the guest starts in the background: retry until it
    // answers.
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(d.public()).await.unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await {
                Ok(Ok(1)) => head.push(byte[0]),
                _ => break,
            }
        }
        last = String::from_utf8_lossy(&head).into_owned();
        if !last.starts_with("HTTP/1.1 101") {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        s.write_all(payload).await.unwrap();
        let mut back = vec![0u8; payload.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .expect("the echo comes back")
            .unwrap();
        return String::from_utf8_lossy(&back).into_owned();
    }
    panic!("no 101 through the public listener: {last}");
}

/// Publish rules and the public listener (see the module comment).
pub async fn publish(d: &TestDaemon, sleep: Sleep) {
    let key = d.user("pub", Quotas::default());
    let other = d.user("pub-other", Quotas::default());
    let sb = d.create(&key, json!({"name": "web"})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    serve_www(d, &key, &id, "hello-public").await;
    let publish = |k: &str, sb: &str, body: Value| {
        let (k, path) = (k.to_string(), format!("/sandboxes/{sb}/publish"));
        async move { d.req("POST", &path, Some(&k), Some(body)).await }
    };

    // Bad input: a clear 4xx, nothing published.
    for body in [
        json!({"port": 0}),
        json!({"port": 65536}),
        json!({"port": -1}),
        json!({"port": 8000, "alias": "Bad_Alias"}),
        json!({"port": 8000, "alias": "www"}),
        json!({"port": 8000, "alias": "-x"}),
        json!({"alias": "x"}),
    ] {
        let r = publish(&key, "web", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
    }
    let r = publish(&other, "web", json!({"port": 8000})).await;
    assert_eq!(r.status, 404, "another user's sandbox: {}", r.text());
    let r = publish(&other, &id, json!({"port": 8000})).await;
    assert_eq!(r.status, 404, "another user's sandbox by ID: {}", r.text());
    let rules = d
        .req("GET", "/sandboxes/web/publish", Some(&key), None)
        .await;
    assert_eq!(rules.json(), json!([]), "nothing published yet");

    // Publish; again is the same rule; the alias is then taken.
    let r = publish(&key, "web", json!({"port": 8000, "alias": "web-app"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rule = r.json();
    let port = d.public().port();
    let url = format!("http://web-app.{ZONE}:{port}");
    assert_eq!(rule["url"], url, "{rule}");
    assert_eq!(rule["alias"], "web-app");
    assert!(rule["id"].as_str().unwrap().starts_with("pub_"));
    let r = publish(&key, "web", json!({"port": 8000, "alias": "ignored"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-bhatti-existing").as_deref(), Some("true"));
    assert_eq!(r.json()["id"], rule["id"]);
    let theirs = d.create(&other, json!({"name": "theirs"})).await;
    let r = publish(&other, "theirs", json!({"port": 80, "alias": "web-app"})).await;
    assert_eq!(r.status, 409, "a taken alias: {}", r.text());
    assert_eq!(r.json()["reason"], "already_exists");
    let auto = publish(&other, "theirs", json!({"port": 81})).await;
    assert_eq!(auto.status, 201, "{}", auto.text());
    let auto_alias = auto.json()["alias"].as_str().unwrap().to_string();
    assert!(auto_alias.starts_with("theirs-"), "{auto_alias}");

    // URLs in get and list, and only the owner's.
    let g = d
        .req("GET", "/sandboxes/web", Some(&key), None)
        .await
        .json();
    assert_eq!(g["urls"], json!([url]));
    let l = d.req("GET", "/sandboxes", Some(&key), None).await.json();
    assert_eq!(l[0]["urls"], json!([url]));
    let l = d.req("GET", "/sandboxes", Some(&other), None).await.json();
    assert_eq!(l[0]["urls"].as_array().map(Vec::len), Some(1), "{l}");
    let r = d
        .req("GET", "/sandboxes/web/publish", Some(&other), None)
        .await;
    assert_eq!(r.status, 404);

    // Domain mode and path mode reach the same port, with no key.
    let host = format!("web-app.{ZONE}:{port}");
    let r = d.public_get(&host, "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello-public\n");
    assert!(
        r.header("x-bhatti-version").is_none(),
        "the guest's answer, as it came"
    );
    let r = d.public_get(&host, "/cgi-bin/h?a=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(t.contains("xff=127.0.0.1"), "{t}");
    assert!(t.contains("host=localhost:8000"), "{t}");
    assert!(t.contains("q=a=1"), "{t}");
    assert!(t.contains("proto=http "), "{t}");
    assert!(t.contains(&format!("fhost={host}")), "{t}");
    let r = d.public_get("127.0.0.1", "/web-app/").await;
    assert_eq!(r.text(), "hello-public\n");
    let r = d.public_get("localhost", "/web-app/cgi-bin/h?b=2").await;
    assert!(r.text().contains("q=b=2"), "{}", r.text());

    // Hosts and paths with no rule: 404, and nothing else is reachable.
    for (h, path) in [
        (format!("nope.{ZONE}"), "/"),
        (format!("a.b.{ZONE}"), "/"),
        ("elsewhere.example".to_string(), "/web-app/"),
        ("127.0.0.1".to_string(), "/nope/"),
        ("127.0.0.1".to_string(), "/"),
        ("127.0.0.1".to_string(), "/sandboxes"),
    ] {
        let r = d.public_get(&h, path).await;
        assert_eq!(r.status, 404, "{h}{path}: {}", r.text());
    }
    // A WebSocket-style upgrade is relayed: the guest's server answers 101
    // and echoes what follows, both ways through the public listener.
    let ws_server = "printf '#!/bin/sh\\nwhile IFS= read -r l; do l=${l%%\\r}; [ -z \"$l\" ] && break; done\\n\
        printf \"HTTP/1.1 101 Switching Protocols\\\\r\\\\nUpgrade: websocket\\\\r\\\\nConnection: Upgrade\\\\r\\\\n\\\\r\\\\n\"\\nexec cat\\n' \
        > /workspace/ws.sh && chmod +x /workspace/ws.sh";
    assert_eq!(d.sh(&key, &id, ws_server).await.0, 0);
    d.detach(
        &key,
        &id,
        &[
            "busybox",
            "nc",
            "-ll",
            "-p",
            "9000",
            "-e",
            "/workspace/ws.sh",
        ],
    )
    .await;
    let r = publish(&key, "web", json!({"port": 9000, "alias": "ws-app"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let echoed = upgrade_echo(d, &format!("ws-app.{ZONE}"), b"ping-through\n").await;
    assert_eq!(echoed, "ping-through\n");

    // A published port nothing listens on: 502.
    let r = d.public_get(&format!("{auto_alias}.{ZONE}"), "/").await;
    assert_eq!(r.status, 502, "{}", r.text());

    // The API host is the API (with a key), and a per-port host is the
    // authenticated proxy.
    let s = tokio::net::TcpStream::connect(d.public()).await.unwrap();
    let r = http_on(s, "GET", "/sandboxes", API_HOST, Some(&key), &[], vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = d.public_get(API_HOST, "/sandboxes").await;
    assert_eq!(r.status, 401, "{}", r.text());
    let per_port = format!("8000-{id}.{ZONE}");
    let r = d.public_get(&per_port, "/").await;
    assert_eq!(r.status, 401, "a per-port URL needs a key: {}", r.text());
    let s = tokio::net::TcpStream::connect(d.public()).await.unwrap();
    let r = http_on(s, "GET", "/", &per_port, Some(&key), &[], vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello-public\n");
    let s = tokio::net::TcpStream::connect(d.public()).await.unwrap();
    let r = http_on(s, "GET", "/", &per_port, Some(&other), &[], vec![]).await;
    assert_eq!(r.status, 404, "another user's key: {}", r.text());

    // A storm of requests to the sleeping sandbox: one wake, all served.
    match sleep {
        Sleep::Stop => {
            let r = d.req("POST", "/sandboxes/web/stop", Some(&key), None).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        Sleep::Idle => {
            let mut thermal = Value::Null;
            for _ in 0..120 {
                thermal = d
                    .req("GET", "/sandboxes/web", Some(&key), None)
                    .await
                    .json()["thermal"]
                    .clone();
                if thermal == "warm" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            assert_eq!(thermal, "warm", "the thermal manager paused it");
        }
    }
    let before = wakes(d, &id).await;
    let addr = d.public();
    let t0 = std::time::Instant::now();
    let mut storm = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let host = host.clone();
        storm.spawn(async move {
            let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            http_on(s, "GET", "/", &host, None, &[], Vec::new()).await
        });
    }
    let mut ok = 0;
    while let Some(r) = storm.join_next().await {
        let r = r.expect("request task");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "hello-public\n");
        ok += 1;
    }
    eprintln!(
        "wake storm ({sleep:?}): 200 requests answered in {:?}",
        t0.elapsed()
    );
    assert_eq!(ok, 200);
    assert_eq!(
        wakes(d, &id).await,
        before + 1,
        "200 concurrent requests woke the sandbox once"
    );

    // Unpublish: the URL is gone at once (the route cache forgets it).
    let r = d
        .req("DELETE", "/sandboxes/web/publish/8000", Some(&key), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(d.public_get(&host, "/").await.status, 404);
    let r = d
        .req("DELETE", "/sandboxes/web/publish/8000", Some(&key), None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    for bad in ["0", "65536", "x"] {
        let r = d
            .req(
                "DELETE",
                &format!("/sandboxes/web/publish/{bad}"),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    // Destroying a sandbox takes its aliases with it (and frees them).
    let tid = theirs["id"].as_str().unwrap();
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{tid}"), Some(&other), None)
            .await,
        200
    );
    assert_eq!(
        d.public_get(&format!("{auto_alias}.{ZONE}"), "/")
            .await
            .status,
        404
    );
    let r = publish(&key, "web", json!({"port": 8000, "alias": auto_alias})).await;
    assert_eq!(r.status, 201, "a freed alias: {}", r.text());
}
