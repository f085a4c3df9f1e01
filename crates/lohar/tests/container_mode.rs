//! `lohar container` outside Docker: the token, env and init come from files in
//! the socket directory, the sockets are 0600, SIGTERM ends it cleanly with exit
//! status 0 and removes the sockets, and a missing token file is fatal.
//! (`LOHAR_USER=root` keeps children as the current user, so no root is needed.)
#![allow(clippy::unwrap_used)]
// a test panics to report its failure
// Test data of known, small sizes: the casts cannot lose anything.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bhatti_agent_client::{AgentClient, Transport};

fn spawn(dir: &Path, extra: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lohar"));
    cmd.arg("container")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LOHAR_SOCK_DIR", dir)
        .env("LOHAR_USER", "root")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn lohar container")
}

fn wait_for(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn client(dir: &Path, token: Option<&str>) -> AgentClient {
    AgentClient::new(
        Transport::Unix {
            control: dir.join("agent.sock"),
            forward: dir.join("forward.sock"),
        },
        token.map(String::from),
    )
}

#[tokio::test]
async fn serves_with_token_env_and_init_from_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("token"), "t0ken\n").unwrap();
    std::fs::write(dir.join("env"), "GREETING=hi there\nMULTI=a\\nb\n").unwrap();
    let marker = dir.join("init-ran");
    std::fs::write(dir.join("init"), format!("echo yes > {}", marker.display())).unwrap();
    let mut child = spawn(
        dir,
        &[
            ("LOHAR_TOKEN_FILE", "token"),
            ("LOHAR_ENV_FILE", "env"),
            ("LOHAR_INIT_FILE", "init"),
        ],
    );
    wait_for(&dir.join("forward.sock"));
    wait_for(&dir.join("agent.sock"));
    for s in ["agent.sock", "forward.sock"] {
        let mode = std::fs::metadata(dir.join(s)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{s}");
    }

    let c = client(dir, Some("t0ken"));
    c.wait_ready(Duration::from_secs(10)).await.unwrap();
    let r = c
        .exec(["sh", "-c", "printf '%s|%s' \"$GREETING\" \"$MULTI\""])
        .await
        .unwrap();
    assert_eq!(r.stdout_str(), "hi there|a\nb");
    assert!(client(dir, Some("wrong")).exec(["true"]).await.is_err());
    assert!(client(dir, None).exec(["true"]).await.is_err());
    wait_for(&marker);

    // SIGTERM: clean exit, sockets gone.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "lohar ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    assert!(!dir.join("agent.sock").exists());
    assert!(!dir.join("forward.sock").exists());
}

#[test]
fn refuses_to_serve_without_its_token() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = spawn(tmp.path(), &[("LOHAR_TOKEN_FILE", "missing")]);
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!tmp.path().join("agent.sock").exists());
    let mut child = spawn(tmp.path(), &[]);
    assert!(!child.wait().unwrap().success(), "no LOHAR_TOKEN_FILE");
}
