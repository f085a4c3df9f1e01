//! The web shell, driven by a real headless Chromium (Debian's package)
//! over the DevTools protocol: the page from the daemon's public listener,
//! a command typed into the terminal, its output read back from the page,
//! a reload that reattaches the same session with its scrollback, and a
//! revoke that cuts the page off. A screenshot of the terminal is kept at
//! `target/test-artifacts/web-shell.png`.
//!
//! Also, without a browser, the token rules: a wrong, expired or revoked
//! token is refused, another user cannot mint one, and a sandbox takes at
//! most five web shells at once.
//!
//! Needs dockerd (the sandbox), Chromium, and the embedded terminal
//! (scripts/web-shell.sh); reported as ignored without them, never as
//! passed. Chromium resolves only the API host, to loopback.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{TestDaemon, SERIAL};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::Digest;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket to the web shell through the public listener, with the
/// auth message sent; returns the socket and the server's first reply.
async fn web_shell(d: &TestDaemon, id: &str, token: &str) -> (Ws, Value) {
    let tcp = tokio::net::TcpStream::connect(d.public()).await.unwrap();
    let url = format!("ws://127.0.0.1:{}/_shell/{id}/ws", d.public().port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws.send(Message::Text(
        json!({"type": "auth", "token": token}).to_string().into(),
    ))
    .await
    .unwrap();
    let first = next_text(&mut ws).await;
    (ws, first)
}

async fn next_text(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no text message: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_docker, bhatti_xterm)),
    ignore = "needs dockerd (scripts/start-dockerd.sh), root, and the web shell's terminal (scripts/web-shell.sh)"
)]
async fn web_shell_tokens_and_limits() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("docker", common::public_config).await;
    let key = d.user("ws-owner", Default::default());
    let other = d.user("ws-other", Default::default());
    let sb = d.create(&key, json!({"name": "shared"})).await;
    let id = sb["id"].as_str().unwrap().to_string();

    // Minting: the owner only; the URL names the API host on the public
    // listener, the token sits in the fragment.
    let r = d
        .req("POST", "/sandboxes/shared/shell-token", Some(&other), None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = d
        .req(
            "POST",
            &format!("/sandboxes/{id}/shell-token"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    let token = t["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    let port = d.public().port();
    assert_eq!(
        t["url"],
        format!(
            "http://{}:{port}/_shell/{id}#token={token}",
            common::API_HOST
        )
    );
    assert!(t["expires_at"].as_str().unwrap().starts_with("20"));
    assert_eq!(
        d.store()
            .sandbox_by_id(&id)
            .unwrap()
            .shell_token_hash
            .as_deref(),
        Some(hex::encode(sha2::Sha256::digest(token.as_bytes())).as_str()),
        "only the hash is stored"
    );

    // The page, with no key, and its security headers.
    let r = d.public_get("127.0.0.1", &format!("/_shell/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("'nonce-"),
        "{csp}"
    );
    assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert!(!r.text().contains("cdn."), "nothing from a CDN");
    let js = d.public_get("127.0.0.1", "/_shell/assets/xterm.js").await;
    assert_eq!(js.status, 200);
    assert!(js.body.len() > 100_000, "xterm.js is embedded");
    assert_eq!(
        d.public_get("127.0.0.1", "/_shell/assets/nope.js")
            .await
            .status,
        404
    );

    // A good token connects; wrong ones are refused alike.
    let (mut ws, hi) = web_shell(&d, &id, &token).await;
    assert_eq!(hi["type"], "connected", "{hi}");
    assert_eq!(hi["sandbox"], "shared");
    let s = next_text(&mut ws).await;
    assert_eq!(s["type"], "session", "{s}");
    for bad in ["0".repeat(64), String::new(), token[..63].to_string()] {
        let (_, r) = web_shell(&d, &id, &bad).await;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["error"], "invalid or expired shell token");
    }
    let (_, r) = web_shell(&d, "0123456789abcdef", &token).await;
    assert_eq!(
        r["error"], "invalid or expired shell token",
        "another sandbox"
    );

    // At most five at once: this one and four more, then a refusal.
    let mut more = Vec::new();
    for _ in 0..4 {
        let (ws, hi) = web_shell(&d, &id, &token).await;
        assert_eq!(hi["type"], "connected", "{hi}");
        more.push(ws);
    }
    let (_, r) = web_shell(&d, &id, &token).await;
    assert!(
        r["error"].as_str().unwrap().contains("too many sessions"),
        "{r}"
    );
    drop(more);

    // Revoking ends the live session and the token.
    let r = d
        .req(
            "DELETE",
            &format!("/sandboxes/{id}/shell-token"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the live session ends at revoke");
    let (_, r) = web_shell(&d, &id, &token).await;
    assert_eq!(r["error"], "invalid or expired shell token", "revoked");

    // An expired token is refused.
    let expired = "e".repeat(64);
    let h = hex::encode(sha2::Sha256::digest(expired.as_bytes()));
    d.store()
        .set_shell_token_hash(&id, Some((&h, "2020-01-01T00:00:00.000Z")))
        .unwrap();
    let (_, r) = web_shell(&d, &id, &expired).await;
    assert_eq!(r["error"], "invalid or expired shell token", "expired");
}

/// Chromium driven over the DevTools protocol: one browser-level
/// WebSocket, a page target attached in flat mode.
struct Browser {
    child: tokio::process::Child,
    ws: Ws,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch(resolve: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new("/usr/bin/chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--window-size=1000,600",
                "--remote-debugging-port=0",
                // Every name but the API host fails to resolve: the
                // browser talks to loopback only.
                &format!("--host-resolver-rules=MAP {resolve} 127.0.0.1, MAP * ~NOTFOUND"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if let Some(u) = l.strip_prefix("DevTools listening on ") {
                    return u.trim().to_string();
                }
            }
            panic!("chromium exited without a DevTools URL");
        })
        .await
        .expect("chromium's DevTools URL");
        // Keep draining stderr so the browser never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let hostport = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("ws://host:port/…")
            .to_string();
        let tcp = tokio::net::TcpStream::connect(hostport).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .expect("CDP");
        Browser {
            child,
            ws,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e}"),
        }
    }

    /// A command and its result, or the protocol's error.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .expect("a CDP answer")
                .unwrap()
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    async fn open(&mut self, url: &str) {
        let t = self.call("Target.createTarget", json!({"url": url})).await;
        let a = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": t["targetId"], "flatten": true}),
            )
            .await;
        self.session = a["sessionId"].as_str().unwrap().to_string();
    }

    /// `js`'s value; null while the page has no context yet (loading).
    async fn eval(&mut self, js: &str) -> Value {
        match self
            .try_call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true}),
            )
            .await
        {
            Ok(r) => r["result"]["value"].clone(),
            Err(_) => Value::Null,
        }
    }

    /// Polls `js` until it returns a string containing `want`.
    async fn wait_for(&mut self, js: &str, want: &str) -> String {
        let mut last = String::new();
        for _ in 0..120 {
            last = self.eval(js).await.as_str().unwrap_or_default().to_string();
            if last.contains(want) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let page = self
            .eval("location.href + ' | ' + document.documentElement.outerHTML.slice(0, 400)")
            .await;
        panic!("{js} never showed {want:?}; last: {last:?}; page: {page}");
    }

    async fn key(&mut self, key: &str, code: &str, vk: u32, text: &str) {
        for kind in ["keyDown", "keyUp"] {
            let mut p = json!({"type": kind, "key": key, "code": code,
                "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk});
            if kind == "keyDown" && !text.is_empty() {
                p["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p).await;
        }
    }
}

const STATUS: &str = "document.getElementById('status').textContent";
const SCREEN: &str =
    "Array.from(document.querySelectorAll('.xterm-rows > div')).map(d => d.textContent).join('\\n')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_docker, bhatti_xterm, bhatti_chromium)),
    ignore = "needs dockerd (scripts/start-dockerd.sh), root, Chromium, and the web shell's terminal (scripts/web-shell.sh)"
)]
async fn web_shell_in_a_real_browser() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("docker", common::public_config).await;
    let key = d.user("browser", Default::default());
    let sb = d.create(&key, json!({"name": "browsed"})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    let t = d
        .req("POST", "/sandboxes/browsed/shell-token", Some(&key), None)
        .await
        .json();
    let url = t["url"].as_str().unwrap().to_string();

    let mut b = Browser::launch(common::API_HOST).await;
    b.open(&url).await;
    let status = b.wait_for(STATUS, "session").await;
    assert!(status.contains("browsed"), "{status}");
    assert!(
        !b.eval("location.href")
            .await
            .as_str()
            .unwrap()
            .contains("token="),
        "the token leaves the address bar"
    );
    // Type a command; its output appears in the terminal.
    b.call("Input.insertText", json!({"text": "echo web-$((6*7))"}))
        .await;
    b.key("Enter", "Enter", 13, "\r").await;
    b.wait_for(SCREEN, "web-42").await;

    let shot = b
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("web-shell.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("web shell screenshot: {}", path.display());

    // A reload reattaches the same session, whose scrollback replays.
    let session = status.rsplit("session ").next().unwrap().to_string();
    b.call("Page.reload", json!({})).await;
    let again = b.wait_for(STATUS, "session").await;
    assert!(again.ends_with(&session), "{again} reattaches {session}");
    b.wait_for(SCREEN, "web-42").await;

    // Revoking the token cuts the page off.
    let r = d
        .req(
            "DELETE",
            &format!("/sandboxes/{id}/shell-token"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    b.wait_for(STATUS, "disconnected").await;
    let _ = b.child.kill().await;
}
