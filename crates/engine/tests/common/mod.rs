//! Checks shared by the engine suites: everything that happens *inside* a
//! sandbox goes through the agent ([`EngineExt`]), so it must behave the same
//! on every engine.
#![allow(dead_code)]
// Test data of known, small sizes: the casts cannot lose anything.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)]

use std::time::Duration;

use bhatti_agent_client::{ReadOptions, ShellOptions};
use bhatti_engine::contract::EngineExt;

/// `sh -c <script>` in the sandbox, which must succeed; its stdout.
pub async fn sh<E: EngineExt + ?Sized>(e: &E, id: &str, script: &str) -> String {
    let r = e
        .exec(id, vec!["sh".into(), "-c".into(), script.into()])
        .await
        .unwrap_or_else(|err| panic!("exec {script:?}: {err}"));
    assert_eq!(r.exit_code, 0, "{script:?} failed: {}", r.stderr_str());
    r.stdout_str()
}

/// A PTY shell, session detach / re-attach with replay / kill, files with
/// server-side truncation, listening ports, and a tunnel to a guest service.
pub async fn in_sandbox<E: EngineExt + ?Sized>(e: &E, id: &str) {
    let id = id.to_string();
    // shell: a real PTY.
    let (sinfo, mut t) = e
        .shell(
            &id,
            ShellOptions {
                argv: vec!["/bin/sh".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    t.write(b"tty && echo shell-''ok\n").await.unwrap();
    let mut seen = String::new();
    while !seen.contains("shell-ok") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), t.read())
            .await
            .expect("shell output")
            .unwrap()
            .expect("shell still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("/dev/pts/"));
    drop(t);

    // sessions through the engine.
    // Detach is noticed by the agent when the connection closes: poll briefly.
    let mut detached = false;
    for _ in 0..50 {
        let list = e.session_list(&id).await.unwrap();
        if list
            .iter()
            .any(|s| s.session_id == sinfo.session_id && !s.attached)
        {
            detached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(detached, "the shell session shows as detached");
    let (_, mut again) = e.shell_attach(&id, &sinfo.session_id, true).await.unwrap();
    let replay = again.read().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&replay).contains("shell-ok"));
    drop(again);
    e.session_kill(&id, &sinfo.session_id).await.unwrap();

    // files and server-side truncation.
    let mut text = String::new();
    for i in 1..=10_000 {
        text.push_str(&format!("line {i}\n"));
    }
    let mut src = text.as_bytes();
    e.file_write(
        &id,
        "/workspace/lines.txt",
        "0644",
        text.len() as u64,
        &mut src,
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let (head, _) = e
        .file_read(
            &id,
            "/workspace/lines.txt",
            ReadOptions {
                offset: 5000,
                limit: 2,
                ..Default::default()
            },
            &mut out,
        )
        .await
        .unwrap();
    assert_eq!(head.size, text.len() as i64);
    assert_eq!(out, b"line 5000\nline 5001\n");
    let st = e.file_stat(&id, "/workspace/lines.txt").await.unwrap();
    assert_eq!(st.size, text.len() as i64);
    let ls = e.file_ls(&id, "/workspace").await.unwrap();
    assert!(ls.iter().any(|f| f.name == "lines.txt"));
    assert_eq!(
        sh(e, &id, "stat -c %u /workspace/lines.txt").await.trim(),
        "1000"
    );

    // ports and a tunnel to a guest service.
    e.exec_detached(
        &id,
        vec![
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            "/workspace".into(),
        ],
        None,
    )
    .await
    .unwrap();
    let mut ports = Vec::new();
    for _ in 0..50 {
        ports = e.listening_ports(&id).await.unwrap();
        if ports.contains(&8080) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ports.contains(&8080), "ports {ports:?}");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut t = e.tunnel(&id, 8080).await.unwrap();
        t.write_all(b"GET /lines.txt HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        t.read_to_end(&mut resp).await.unwrap();
        let resp = String::from_utf8_lossy(&resp);
        assert!(
            resp.starts_with("HTTP/1.") && resp.contains("line 10000"),
            "{}",
            &resp[..resp.len().min(200)]
        );
    }
}
