//! lohar at the protocol level: raw frames over its Unix socket, no client crate.
//! Covers auth, limits, malformed input and the connection model.
#![allow(clippy::unwrap_used)]
// a test panics to report its failure
// Test data of known, small sizes: the casts cannot lose anything.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)]

mod common;

use std::time::Duration;

use bhatti_protocol::messages::{ExecRequest, HelloResponse};
use bhatti_protocol::r#async::{read_frame, send, send_json, write_frame};
use bhatti_protocol::{decode_exit, Frame, MsgType, MAX_CONTROL_CONNS, MAX_FRAME_LEN};
use common::{Lohar, Opts};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

async fn dial(l: &Lohar) -> UnixStream {
    UnixStream::connect(&l.sock).await.expect("connect")
}

async fn next(s: &mut UnixStream) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(10), read_frame(s))
        .await
        .expect("agent answered in time")
        .expect("well-formed frame")
}

async fn expect_error(s: &mut UnixStream, text: &str) {
    let f = next(s).await.expect("a frame");
    assert!(f.is(MsgType::Error), "expected ERROR, got 0x{:02x}", f.kind);
    assert!(
        f.text().contains(text),
        "error {:?} lacks {text:?}",
        f.text()
    );
}

async fn exec_true(s: &mut UnixStream) -> i32 {
    send_json(s, MsgType::ExecReq, &ExecRequest::new(["true"]))
        .await
        .unwrap();
    loop {
        let f = next(s).await.expect("frames until EXIT");
        if f.is(MsgType::Exit) {
            return decode_exit(&f.payload).unwrap();
        }
        assert!(!f.is(MsgType::Error), "error: {}", f.text());
    }
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn auth_missing_wrong_and_right_token() {
    let l = Lohar::start_with(Opts {
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    // Missing: a request without AUTH.
    let mut s = dial(&l).await;
    send_json(&mut s, MsgType::ExecReq, &ExecRequest::new(["true"]))
        .await
        .unwrap();
    expect_error(&mut s, "auth required").await;
    assert!(next(&mut s).await.is_none(), "closed after auth failure");
    // Wrong token (same length, one byte off).
    let mut s = dial(&l).await;
    let mut wrong = TOKEN.as_bytes().to_vec();
    wrong[31] = b'0';
    send(&mut s, MsgType::Auth, &wrong).await.unwrap();
    send_json(&mut s, MsgType::ExecReq, &ExecRequest::new(["true"]))
        .await
        .unwrap();
    expect_error(&mut s, "auth required").await;
    // Wrong length.
    let mut s = dial(&l).await;
    send(&mut s, MsgType::Auth, b"short").await.unwrap();
    expect_error(&mut s, "auth required").await;
    // Right token.
    let mut s = dial(&l).await;
    send(&mut s, MsgType::Auth, TOKEN.as_bytes()).await.unwrap();
    assert_eq!(exec_true(&mut s).await, 0);
    // The forward port checks the token too.
    let mut f = UnixStream::connect(&l.fwd).await.unwrap();
    send_json(&mut f, MsgType::FwdReq, &serde_json::json!({"port": 1}))
        .await
        .unwrap();
    expect_error(&mut f, "auth required").await;
}

#[tokio::test]
async fn auth_deadline_closes_silent_connections() {
    let l = Lohar::start_with(Opts {
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    let mut s = dial(&l).await;
    let t0 = std::time::Instant::now();
    expect_error(&mut s, "auth required").await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(4),
        "deadline fired early: {waited:?}"
    );
}

#[tokio::test]
async fn auth_frame_is_accepted_when_no_token_is_configured() {
    let l = Lohar::start();
    let mut s = dial(&l).await;
    send(&mut s, MsgType::Auth, b"anything").await.unwrap();
    assert_eq!(exec_true(&mut s).await, 0);
}

#[tokio::test]
async fn unknown_request_type_gets_an_error() {
    let l = Lohar::start();
    let mut s = dial(&l).await;
    write_frame(&mut s, 0x7e, b"").await.unwrap();
    expect_error(&mut s, "unexpected frame type 0x7e").await;
    // A known type that is not a request.
    let mut s = dial(&l).await;
    send(&mut s, MsgType::Stdout, b"x").await.unwrap();
    expect_error(&mut s, "unexpected frame type 0x02").await;
}

#[tokio::test]
async fn oversize_and_empty_frames_from_a_peer_are_rejected() {
    let l = Lohar::start();
    let mut s = dial(&l).await;
    let mut hdr = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    hdr.push(0x10);
    s.write_all(&hdr).await.unwrap();
    expect_error(&mut s, "exceeds the maximum").await;
    let mut s = dial(&l).await;
    s.write_all(&[0, 0, 0, 0]).await.unwrap();
    expect_error(&mut s, "invalid frame length 0").await;
    // The agent is still serving.
    let mut s = dial(&l).await;
    assert_eq!(exec_true(&mut s).await, 0);
}

#[tokio::test]
async fn malformed_json_and_empty_argv() {
    let l = Lohar::start();
    let mut s = dial(&l).await;
    send(&mut s, MsgType::ExecReq, b"{not json").await.unwrap();
    expect_error(&mut s, "invalid exec request").await;
    let mut s = dial(&l).await;
    send_json(&mut s, MsgType::ExecReq, &ExecRequest::default())
        .await
        .unwrap();
    expect_error(&mut s, "empty argv").await;
}

#[tokio::test]
async fn connection_limit_is_enforced_before_auth() {
    let l = Lohar::start_with(Opts {
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    // The host authenticates first (as at boot), which makes its source trusted:
    // its burst below is not held to the pre-auth budget of strangers.
    let mut s = dial(&l).await;
    send(&mut s, MsgType::Auth, TOKEN.as_bytes()).await.unwrap();
    assert_eq!(exec_true(&mut s).await, 0);
    // Fill every slot with an authenticated, open TTY-less connection that is
    // waiting for its request.
    let mut held = Vec::new();
    for _ in 0..MAX_CONTROL_CONNS {
        let mut s = dial(&l).await;
        send(&mut s, MsgType::Auth, TOKEN.as_bytes()).await.unwrap();
        held.push(s);
    }
    // Once lohar has taken every holder in (on a loaded host that can
    // lag), the next connection is refused; until then a probe may get a
    // slot, and is closed to try again.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut extra = dial(&l).await;
        match tokio::time::timeout(Duration::from_secs(1), read_frame(&mut extra)).await {
            Ok(Ok(Some(f))) => {
                assert!(f.is(MsgType::Error), "expected ERROR, got 0x{:02x}", f.kind);
                assert!(
                    f.text().contains("connection limit exceeded"),
                    "{:?}",
                    f.text()
                );
                break;
            }
            _ => assert!(
                std::time::Instant::now() < until,
                "no refusal with every slot held"
            ),
        }
    }
    drop(held);
    // Slots free up once the holders go away.
    let mut ok = false;
    for _ in 0..50 {
        let mut s = dial(&l).await;
        send(&mut s, MsgType::Auth, TOKEN.as_bytes()).await.unwrap();
        send_json(&mut s, MsgType::ExecReq, &ExecRequest::new(["true"]))
            .await
            .unwrap();
        let f = next(&mut s).await.unwrap();
        if f.is(MsgType::Exit) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "agent recovered after the connections closed");
}

#[tokio::test]
async fn one_operation_per_connection() {
    let l = Lohar::start();
    let mut s = dial(&l).await;
    assert_eq!(exec_true(&mut s).await, 0);
    // A second request on the same connection is not served: the agent closed.
    let _ = send_json(&mut s, MsgType::ExecReq, &ExecRequest::new(["true"])).await;
    assert!(next(&mut s).await.is_none());
}

#[tokio::test]
async fn hello_reports_version_and_features() {
    let l = Lohar::start();
    let mut s = dial(&l).await;
    send_json(
        &mut s,
        MsgType::Hello,
        &serde_json::json!({"version": 2, "client": "test"}),
    )
    .await
    .unwrap();
    let f = next(&mut s).await.unwrap();
    assert!(f.is(MsgType::HelloResp));
    let h: HelloResponse = f.parse_json().unwrap();
    assert_eq!(h.version, 2);
    assert!(h.agent.starts_with("lohar "));
    assert!(h.features.iter().any(|f| f == "exec.kill_on_disconnect"));
}

#[tokio::test]
async fn exec_frames_arrive_in_order_stdout_stderr_exit() {
    let l = Lohar::start();
    let mut s = dial(&l).await;
    send_json(
        &mut s,
        MsgType::ExecReq,
        &ExecRequest::new(["sh", "-c", "printf out; printf err >&2; exit 3"]),
    )
    .await
    .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = loop {
        let f = next(&mut s).await.unwrap();
        match f.msg_type() {
            Some(MsgType::Stdout) => out.extend(f.payload),
            Some(MsgType::Stderr) => err.extend(f.payload),
            Some(MsgType::Exit) => break decode_exit(&f.payload).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        (out.as_slice(), err.as_slice(), code),
        (&b"out"[..], &b"err"[..], 3)
    );
    assert!(next(&mut s).await.is_none(), "EXIT is the last frame");
}

/// Pre-auth budget numbers (lohar's admission module).
const PRE_AUTH_PER_SOURCE: usize = 4;
const PRE_AUTH_TOTAL: usize = 16;

/// Long enough for a refusal to arrive, well inside the 5 s AUTH deadline.
const LONG: Duration = Duration::from_millis(500);

/// A connection from loopback address `127.0.0.<src>` to the agent's TCP port.
async fn dial_from(src: u8, port: u16) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((std::net::Ipv4Addr::new(127, 0, 0, src), 0).into())
        .unwrap();
    sock.connect((std::net::Ipv4Addr::LOCALHOST, port).into())
        .await
        .expect("connect")
}

/// True if the agent answered "connection limit exceeded" within `wait`; false
/// if it is (silently) waiting for AUTH.
async fn refused<S: tokio::io::AsyncRead + Unpin>(s: &mut S, wait: Duration) -> bool {
    match tokio::time::timeout(wait, read_frame(s)).await {
        Err(_) => false,
        Ok(Ok(Some(f))) => {
            assert!(f.is(MsgType::Error), "unexpected 0x{:02x}", f.kind);
            assert_eq!(f.text(), "connection limit exceeded");
            true
        }
        Ok(other) => panic!("unexpected {other:?}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn silent_connections_from_other_sources_cannot_lock_the_host_out() {
    let port = free_port();
    let _agent = Lohar::start_with(Opts {
        token: Some(TOKEN.into()),
        tcp: Some(format!("127.0.0.1:{port}")),
        ..Default::default()
    });
    let host = bhatti_agent_client::AgentClient::new(
        bhatti_agent_client::Transport::TcpPorts {
            addr: std::net::Ipv4Addr::LOCALHOST.into(),
            control: port,
            forward: port,
        },
        Some(TOKEN.into()),
    );
    // The host's first contact (at boot, before guest code runs).
    host.wait_ready(Duration::from_secs(10)).await.unwrap();

    // Strangers (no token) from other addresses: 4 each are waited on ...
    let t0 = std::time::Instant::now();
    let mut held = Vec::new();
    for src in 2..(2 + (PRE_AUTH_TOTAL / PRE_AUTH_PER_SOURCE) as u8) {
        for _ in 0..PRE_AUTH_PER_SOURCE {
            held.push(dial_from(src, port).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // (Any refusal would have arrived during the pause.)
    for s in &mut held {
        assert!(
            !refused(s, Duration::from_millis(10)).await,
            "within the pre-auth budget"
        );
    }
    // ... a fifth from the same address is refused, and with the shared
    // budget full so is a newcomer.
    let mut extra = dial_from(2, port).await;
    assert!(refused(&mut extra, LONG).await, "per-source budget");
    let mut newcomer = dial_from(100, port).await;
    assert!(refused(&mut newcomer, LONG).await, "global pre-auth budget");
    // The host, which authenticated before, still gets in: several at once.
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { host.exec(["sh", "-c", "echo in"]).await })
        })
        .collect();
    for r in runs {
        assert_eq!(r.await.unwrap().unwrap().stdout_str(), "in\n");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "checked before the AUTH deadline freed the slots"
    );
    drop(held);
}

#[tokio::test]
async fn unix_peers_are_one_source_with_a_pre_auth_budget() {
    let l = Lohar::start_with(Opts {
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    // Before anyone authenticated: the source's pre-auth budget is all there is.
    let mut held = Vec::new();
    for _ in 0..PRE_AUTH_PER_SOURCE {
        held.push(dial(&l).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = dial(&l).await;
    assert!(
        refused(&mut extra, LONG).await,
        "pre-auth budget of the one source"
    );
    // A slot freed: a proper client authenticates, which makes the source trusted ...
    held.pop();
    let mut ok = false;
    for _ in 0..50 {
        let mut s = dial(&l).await;
        send(&mut s, MsgType::Auth, TOKEN.as_bytes()).await.unwrap();
        send_json(&mut s, MsgType::ExecReq, &ExecRequest::new(["true"]))
            .await
            .unwrap();
        if next(&mut s).await.is_some_and(|f| f.is(MsgType::Exit)) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "authenticated client served");
    // ... so with the pre-auth budget full again, its next connections still
    // get in (on the reserve).
    held.push(dial(&l).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = dial(&l).await;
    send(&mut s, MsgType::Auth, TOKEN.as_bytes()).await.unwrap();
    assert_eq!(exec_true(&mut s).await, 0);
}

/// Sends one request after AUTH with `token`; returns the first answer.
async fn authed(l: &Lohar, token: &str, kind: MsgType, body: &serde_json::Value) -> Option<Frame> {
    let mut s = dial(l).await;
    send(&mut s, MsgType::Auth, token.as_bytes()).await.unwrap();
    send_json(&mut s, kind, body).await.unwrap();
    next(&mut s).await
}

/// An exec after AUTH with `token`: its stdout, or the refusal's text.
async fn exec_out(l: &Lohar, token: &str, script: &str) -> Result<String, String> {
    let mut s = dial(l).await;
    send(&mut s, MsgType::Auth, token.as_bytes()).await.unwrap();
    send_json(
        &mut s,
        MsgType::ExecReq,
        &ExecRequest::new(["sh", "-c", script]),
    )
    .await
    .unwrap();
    exec_result(&mut s).await.map(|(out, _)| out)
}

#[tokio::test]
async fn applied_config_replaces_the_token_and_adds_env_and_files() {
    use base64::Engine as _;
    let l = Lohar::start_with(Opts {
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    let hello = authed(
        &l,
        TOKEN,
        MsgType::Hello,
        &serde_json::json!({"version": 2}),
    )
    .await
    .unwrap();
    let h: HelloResponse = hello.parse_json().unwrap();
    assert!(
        h.features.iter().any(|f| f == "config.apply"),
        "{:?}",
        h.features
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sub/greeting");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    // Refused as a whole when any part is bad: nothing is applied.
    let bad = authed(
        &l,
        TOKEN,
        MsgType::ApplyConfigReq,
        &serde_json::json!({"token": "new-token", "files": {"relative/path": {"content": b64(b"x")}}}),
    )
    .await
    .unwrap();
    assert!(bad.is(MsgType::Error), "relative path refused");
    assert!(bad.text().contains("absolute"), "{}", bad.text());
    let too_much = authed(
        &l,
        TOKEN,
        MsgType::ApplyConfigReq,
        &serde_json::json!({"entropy": b64(&[7u8; 513])}),
    )
    .await
    .unwrap();
    assert!(
        too_much.is(MsgType::Error) && too_much.text().contains("at most 512"),
        "{}",
        too_much.text()
    );
    assert_eq!(
        exec_out(&l, TOKEN, "echo still").await.unwrap(),
        "still\n",
        "old token still good"
    );

    let new_token = "t".repeat(64);
    let applied = authed(
        &l,
        TOKEN,
        MsgType::ApplyConfigReq,
        &serde_json::json!({
            "token": new_token,
            "env": {"CLAIMED_BY": "alice", "PATH": "/opt/x:/usr/bin:/bin"},
            "files": {file.display().to_string(): {"content": b64(b"hello\n"), "mode": "0600"}},
            "entropy": b64(&[1u8; 64]),
            "hostname": "alice-box",
        }),
    )
    .await
    .unwrap();
    assert!(applied.is(MsgType::ApplyConfigResp), "{}", applied.text());
    let r: bhatti_protocol::messages::ApplyConfigResult = applied.parse_json().unwrap();
    assert!(r.token);
    assert_eq!((r.files, r.env), (1, 2));
    // Test mode: the machine's hostname and entropy pool are the host's.
    assert!(!r.hostname && r.entropy_bytes == 0, "{r:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The old token is refused from now on; the new one works and the env
    // reaches every exec.
    let refused = exec_out(&l, TOKEN, "echo no").await.unwrap_err();
    assert!(refused.contains("auth required"), "{refused}");
    assert_eq!(
        exec_out(&l, &new_token, "echo $CLAIMED_BY $PATH")
            .await
            .unwrap(),
        "alice /opt/x:/usr/bin:/bin\n"
    );
}

/// AUTH (when `token` is set), then a HELLO asking for `features`;
/// returns the connection and the agent's answer.
async fn hello_with(
    l: &Lohar,
    token: Option<&str>,
    features: &[&str],
) -> (UnixStream, HelloResponse) {
    let mut s = dial(l).await;
    if let Some(t) = token {
        send(&mut s, MsgType::Auth, t.as_bytes()).await.unwrap();
    }
    send_json(
        &mut s,
        MsgType::Hello,
        &serde_json::json!({"version": 2, "client": "test", "features": features}),
    )
    .await
    .unwrap();
    let f = next(&mut s).await.expect("HELLO_RESP");
    assert!(f.is(MsgType::HelloResp), "got 0x{:02x}", f.kind);
    (s, f.parse_json().unwrap())
}

/// Reads an exec's frames to EXIT: its stdout and exit code, or the
/// agent's refusal (or "closed").
async fn exec_result(s: &mut UnixStream) -> Result<(String, i32), String> {
    let mut out = Vec::new();
    loop {
        let Some(f) = next(s).await else {
            return Err("closed".into());
        };
        match f.msg_type() {
            Some(MsgType::Stdout) => out.extend(f.payload),
            Some(MsgType::Exit) => {
                let code = decode_exit(&f.payload).map_err(|e| e.to_string())?;
                return Ok((String::from_utf8_lossy(&out).into_owned(), code));
            }
            Some(MsgType::Error) => return Err(f.text()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_reused_connection_carries_requests_in_turn() {
    let l = Lohar::start_with(Opts {
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    let (mut s, h) = hello_with(&l, Some(TOKEN), &["conn.reuse", "error_codes"]).await;
    assert!(
        h.features.iter().any(|f| f == "conn.reuse"),
        "{:?}",
        h.features
    );

    // Execs, one after the other, with no AUTH between them.
    for _ in 0..3 {
        assert_eq!(exec_true(&mut s).await, 0);
    }
    // A request's error ends that request, not the connection; and it is
    // coded, because this connection's own HELLO asked for codes.
    send_json(
        &mut s,
        MsgType::FileStatReq,
        &serde_json::json!({"path": "/nonexistent/x"}),
    )
    .await
    .unwrap();
    let f = next(&mut s).await.unwrap();
    assert!(f.is(MsgType::Error));
    let body: serde_json::Value = serde_json::from_slice(&f.payload).expect("a coded error");
    assert_eq!(body["code"], "not_found", "{body}");

    // stdin is fed, closed, and the exec's EXIT ends it.
    send_json(&mut s, MsgType::ExecReq, &ExecRequest::new(["cat"]))
        .await
        .unwrap();
    send(&mut s, MsgType::Stdin, b"piped").await.unwrap();
    send(&mut s, MsgType::Stdin, b"").await.unwrap();
    assert_eq!(exec_result(&mut s).await.unwrap(), ("piped".to_string(), 0));

    // STDIN and KILL frames sent after a process already ended are dropped,
    // not taken for the next request.
    send_json(&mut s, MsgType::ExecReq, &ExecRequest::new(["true"]))
        .await
        .unwrap();
    assert_eq!(exec_result(&mut s).await.unwrap().1, 0);
    send(&mut s, MsgType::Stdin, b"late").await.unwrap();
    send(&mut s, MsgType::Kill, b"").await.unwrap();
    send_json(
        &mut s,
        MsgType::ExecReq,
        &ExecRequest::new(["echo", "next"]),
    )
    .await
    .unwrap();
    assert_eq!(
        exec_result(&mut s).await.unwrap(),
        ("next\n".to_string(), 0)
    );

    // A one-shot exec's ERROR (no such command) leaves the connection open.
    send_json(
        &mut s,
        MsgType::ExecReq,
        &ExecRequest::new(["/no/such/cmd"]),
    )
    .await
    .unwrap();
    assert!(next(&mut s).await.unwrap().is(MsgType::Error));
    send_json(&mut s, MsgType::ActivityReq, &serde_json::json!({}))
        .await
        .unwrap();
    assert!(next(&mut s).await.unwrap().is(MsgType::ActivityResp));

    // A file write uses the connection up: it closes after the reply.
    let target = l.path("written");
    send_json(
        &mut s,
        MsgType::FileWriteReq,
        &serde_json::json!({"path": target.display().to_string(), "size": 2}),
    )
    .await
    .unwrap();
    send(&mut s, MsgType::Stdin, b"ok").await.unwrap();
    assert!(next(&mut s).await.unwrap().is(MsgType::FileWriteResp));
    exec_true_maybe(&mut s).await;
    assert!(closed(&mut s).await, "closed after the write");
    assert_eq!(std::fs::read(&target).unwrap(), b"ok");
}

/// The agent closed the connection (cleanly, or by a reset because our
/// last request was left unread).
async fn closed(s: &mut UnixStream) -> bool {
    let read = tokio::time::timeout(Duration::from_secs(10), read_frame(s))
        .await
        .expect("agent answered or closed in time");
    matches!(read, Ok(None) | Err(_))
}

/// Sends an exec request, ignoring a broken pipe (the agent may have closed).
async fn exec_true_maybe(s: &mut UnixStream) {
    let _ = send_json(s, MsgType::ExecReq, &ExecRequest::new(["true"])).await;
}

#[tokio::test]
async fn only_a_first_hello_asking_for_it_keeps_a_connection() {
    let l = Lohar::start();
    // A HELLO without `conn.reuse` is the connection's one request.
    let (mut s, _) = hello_with(&l, None, &["error_codes"]).await;
    exec_true_maybe(&mut s).await;
    assert!(closed(&mut s).await);
    // A HELLO asking for it after another request comes too late.
    let mut s = dial(&l).await;
    assert_eq!(exec_true(&mut s).await, 0);
    let _ = send_json(
        &mut s,
        MsgType::Hello,
        &serde_json::json!({"version": 2, "features": ["conn.reuse"]}),
    )
    .await;
    assert!(closed(&mut s).await);
}

#[tokio::test]
async fn dropping_a_reused_connection_still_kills_its_exec() {
    let l = Lohar::start();
    let (mut s, _) = hello_with(&l, None, &["conn.reuse"]).await;
    assert_eq!(exec_true(&mut s).await, 0);
    send_json(
        &mut s,
        MsgType::ExecReq,
        &ExecRequest::new(["sh", "-c", "echo $$; exec sleep 30"]),
    )
    .await
    .unwrap();
    let f = next(&mut s).await.unwrap();
    assert!(f.is(MsgType::Stdout));
    let pid: i32 = f.text().trim().parse().unwrap();
    assert!(common::alive(pid));
    drop(s);
    assert!(
        common::eventually(Duration::from_secs(10), || !common::alive(pid)).await,
        "the exec outlived its connection"
    );
}

#[tokio::test]
async fn a_replaced_token_closes_reused_connections() {
    let l = Lohar::start_with(Opts {
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    let (mut s, _) = hello_with(&l, Some(TOKEN), &["conn.reuse"]).await;
    assert_eq!(exec_true(&mut s).await, 0);
    let applied = authed(
        &l,
        TOKEN,
        MsgType::ApplyConfigReq,
        &serde_json::json!({"token": "n".repeat(64)}),
    )
    .await
    .unwrap();
    assert!(applied.is(MsgType::ApplyConfigResp), "{}", applied.text());
    // The connection authenticated with the old token carries nothing more.
    exec_true_maybe(&mut s).await;
    assert!(
        next(&mut s).await.is_none(),
        "old token's connection closed"
    );
    // The same holds for the connection that replaced the token.
    let (mut s, _) = hello_with(&l, Some(&"n".repeat(64)), &["conn.reuse"]).await;
    send_json(
        &mut s,
        MsgType::ApplyConfigReq,
        &serde_json::json!({"token": "m".repeat(64)}),
    )
    .await
    .unwrap();
    assert!(next(&mut s).await.unwrap().is(MsgType::ApplyConfigResp));
    exec_true_maybe(&mut s).await;
    assert!(closed(&mut s).await);
}
