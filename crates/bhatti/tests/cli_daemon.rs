//! The CLI against a real `bhatti serve` subprocess (the binary under
//! test, talking over the daemon's Unix socket): sandbox lifecycle, exit
//! codes, name resolution, files, secrets, `--json`, tenant isolation, an
//! interactive shell driven through tmux (type, detach with Ctrl+\,
//! reattach and see the scrollback), and a SIGKILLed daemon that restarts
//! and accounts for every sandbox.
//!
//! The Docker suites need dockerd, the crash suite needs root and the
//! guest artifacts (QEMU engine); without them they are reported as
//! ignored (build.rs), never as passed.
#![allow(clippy::unwrap_used)]
// a test panics to report its failure
// Test data of known, small sizes: the casts cannot lose anything.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{bhatti, ok, text};

/// One daemon at a time: two TCG guests or two daemons sharing dockerd
/// starve each other on a 2-core machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `bhatti serve` child on its own data directory, plus a HOME for the
/// CLI so no config of the machine leaks in.
struct Daemon {
    data: tempfile::TempDir,
    home: tempfile::TempDir,
    engine: String,
    child: Option<Child>,
    /// Where the daemon's sd_notify messages arrive (its `NOTIFY_SOCKET`),
    /// as under a `Type=notify` unit.
    notify: std::os::unix::net::UnixDatagram,
}

/// Calls `probe` every 100 ms until it gives `Ok`; after `secs`, fails
/// with the last `Err` it gave.
#[track_caller]
fn poll<T>(secs: u64, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match probe() {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", text(&o.stdout), text(&o.stderr)))
}

impl Daemon {
    fn start(engine: &str) -> Daemon {
        Daemon::start_with(engine, "")
    }

    /// A daemon whose config file has `extra` (YAML keys) appended.
    fn start_with(engine: &str, extra: &str) -> Daemon {
        let data = tempfile::Builder::new()
            .prefix("bhatti-cli-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let home = tempfile::tempdir().expect("home");
        let cfg = data.path().join("config.yaml");
        std::fs::write(
            &cfg,
            format!("rate_limits:\n  enabled: false\nthermal:\n  enabled: false\ndefault_memory_mb: 256\ndrain_secs: 5\ntemplate_snapshots: false\npools: []\n{extra}"),
        )
        .expect("config");
        let notify = std::os::unix::net::UnixDatagram::bind(data.path().join("notify.sock"))
            .expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let mut d = Daemon {
            data,
            home,
            engine: engine.into(),
            child: None,
            notify,
        };
        d.spawn();
        d
    }

    fn dir(&self) -> &str {
        self.data.path().to_str().expect("utf-8 path")
    }

    fn url(&self) -> String {
        format!("unix://{}/api.sock", self.dir())
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("daemon.log"))
            .expect("log");
        let _ = std::fs::remove_file(self.data.path().join("api.sock"));
        let child = bhatti(self.home.path())
            .args(["--data-dir", self.dir(), "serve", "--listen", "127.0.0.1:0"])
            .args(["--engine", &self.engine, "--config"])
            .arg(self.data.path().join("config.yaml"))
            .env("NOTIFY_SOCKET", self.data.path().join("notify.sock"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn bhatti serve");
        self.child = Some(child);
        // Ready when the socket answers /health through the CLI's client.
        poll(120, || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("daemon exited early ({status}):\n{}", self.log());
                }
            }
            let o = bhatti(self.home.path())
                .args(["--url", &self.url(), "--token", "x", "--json", "version"])
                .output()
                .expect("version");
            let up = serde_json::from_slice::<Value>(&o.stdout)
                .map(|v| v["server"].is_string())
                .unwrap_or(false);
            if up {
                Ok(())
            } else {
                Err(format!("daemon not ready:\n{}", self.log()))
            }
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("daemon.log")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the graceful path.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The next sd_notify message from the daemon.
    fn notified(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.notify.recv(&mut buf).expect("an sd_notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Creates a user with the DB-direct command and returns its key.
    fn user(&self, name: &str) -> String {
        let o = ok(bhatti(self.home.path())
            .args([
                "--json",
                "--data-dir",
                self.dir(),
                "user",
                "create",
                "--name",
                name,
            ])
            .output()
            .expect("user create"));
        json(&o)["api_key"].as_str().expect("api_key").to_string()
    }

    fn cli(&self, key: &str) -> Command {
        let mut c = bhatti(self.home.path());
        c.args(["--url", &self.url(), "--token", key]);
        c
    }

    fn run(&self, key: &str, args: &[&str]) -> Output {
        self.cli(key).args(args).output().expect("run bhatti")
    }

    fn run_stdin(&self, key: &str, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cli(key)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bhatti");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("wait bhatti")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A graceful stop leaves sandboxes running for the next daemon;
        // there is none, so what this test's daemon left goes too.
        self.stop();
        for pid in vmms_under(self.data.path()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The Docker-habit commands against a daemon: `cp` both ways with a
/// nested directory (modes kept, an empty directory too), `run --rm`,
/// `template create/list/inspect/delete`, and `stats`.
#[test]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
fn cli_cp_run_template_and_stats() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("docker");
    let key = d.user("carol");
    ok(d.run(&key, &["create", "--name", "box"]));

    // logs: the container's output (the agent says it is ready), then a
    // detached command's output, whole and followed as it grows.
    let o = ok(d.run(&key, &["logs", "box"]));
    assert!(
        text(&o.stdout).contains("lohar: ready"),
        "{}",
        text(&o.stdout)
    );
    let o = ok(d.run(&key, &["logs", "box", "--tail", "6"]));
    assert_eq!(o.stdout.len(), 6, "{:?}", text(&o.stdout));
    let o = ok(d.run(
        &key,
        &[
            "--json",
            "exec",
            "-d",
            "box",
            "--",
            "sh",
            "-c",
            "echo one; sleep 2; echo two",
        ],
    ));
    let file = json(&o)["output_file"].as_str().unwrap().to_string();
    let mut follow = d
        .cli(&key)
        .args(["logs", "-f", "box", &file])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("two") {
            match std::io::Read::read(&mut stdout, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        seen
    });
    let seen = reader.join().unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(text(&seen), "one\ntwo\n", "-f prints what is appended");
    let o = ok(d.run(&key, &["logs", "box", &file]));
    assert_eq!(text(&o.stdout), "one\ntwo\n");
    let o = d.run(&key, &["logs", "box", "/tmp/no-such.log"]);
    assert_eq!(o.status.code(), Some(1));

    // cp: a file, then a tree, into the sandbox and back out.
    let here = tempfile::tempdir().expect("tempdir");
    let tree = here.path().join("proj");
    std::fs::create_dir_all(tree.join("src/deep")).unwrap();
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::write(tree.join("README"), "top\n").unwrap();
    std::fs::write(tree.join("src/deep/run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(
        tree.join("src/deep/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let one = here.path().join("one.txt");
    std::fs::write(&one, "single\n").unwrap();
    ok(d.run(&key, &["cp", one.to_str().unwrap(), "box:/tmp/one.txt"]));
    let o = ok(d.run(&key, &["exec", "box", "cat", "/tmp/one.txt"]));
    assert_eq!(text(&o.stdout), "single\n");
    ok(d.run(&key, &["exec", "box", "mkdir", "-p", "/tmp/in"]));
    ok(d.run(&key, &["cp", tree.to_str().unwrap(), "box:/tmp/in"]));
    let o = ok(d.run(&key, &["exec", "box", "/tmp/in/proj/src/deep/run.sh"]));
    assert_eq!(
        text(&o.stdout),
        "ran\n",
        "the tree lands inside the directory, modes kept"
    );
    ok(d.run(&key, &["exec", "box", "test", "-d", "/tmp/in/proj/empty"]));
    let back = here.path().join("back");
    ok(d.run(&key, &["cp", "box:/tmp/in/proj", back.to_str().unwrap()]));
    assert_eq!(
        std::fs::read_to_string(back.join("README")).unwrap(),
        "top\n"
    );
    let script = back.join("src/deep/run.sh");
    assert_eq!(
        std::fs::read_to_string(&script).unwrap(),
        "#!/bin/sh\necho ran\n"
    );
    assert_eq!(
        std::fs::metadata(&script).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(back.join("empty").is_dir());
    let o = d.run(&key, &["cp", "box:/no/such", back.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let o = d.run(&key, &["cp", "a", "b"]);
    assert!(
        text(&o.stderr).contains("SANDBOX:/path"),
        "{}",
        text(&o.stderr)
    );

    // run --rm: the command's output and code, and no sandbox left.
    let o = d.run(
        &key,
        &[
            "run",
            "--rm",
            "-e",
            "X=a,b",
            "minimal",
            "--",
            "sh",
            "-c",
            "echo $X; exit 4",
        ],
    );
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "a,b\n");
    let all = json(&ok(d.run(&key, &["--json", "list"])));
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(1),
        "only box is left: {all}"
    );
    let o = d.run(&key, &["run", "--rm", "no-such-image", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));

    // templates
    let t = json(&ok(d.run(
        &key,
        &[
            "--json", "template", "create", "--name", "small", "--memory", "256", "-e", "T=1,2",
        ],
    )));
    assert_eq!(t["name"], "small");
    let o = ok(d.run(&key, &["template", "list"]));
    assert!(text(&o.stdout).contains("small"), "{}", text(&o.stdout));
    let t = json(&ok(d.run(&key, &["--json", "template", "inspect", "small"])));
    assert_eq!(t["env"]["T"], "1,2");
    ok(d.run(&key, &["template", "delete", "small", "--yes"]));
    let list = json(&ok(d.run(&key, &["--json", "template", "list"])));
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");

    // stats: one reading per running sandbox, from the guest.
    let s = json(&ok(d.run(&key, &["--json", "stats"])));
    let rows = s.as_array().expect("array");
    assert_eq!(rows.len(), 1, "{s}");
    assert_eq!(rows[0]["sandbox"], "box");
    assert!(
        rows[0]["stats"]["mem_total_bytes"].as_u64().unwrap_or(0) > 0,
        "{s}"
    );
    let o = ok(d.run(&key, &["stats", "box"]));
    assert!(text(&o.stdout).contains("MEM USAGE"), "{}", text(&o.stdout));
}

/// Under a `Type=notify` unit, systemd hears READY=1 once the daemon
/// serves, and STOPPING=1 when it is told to stop.
#[test]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
fn serve_tells_systemd_it_is_ready_and_stopping() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = Daemon::start("docker");
    assert!(d.notified().lines().any(|l| l == "READY=1"));
    d.stop();
    assert!(d.notified().lines().any(|l| l == "STOPPING=1"));
}

/// A TLS terminator in front of the daemon's socket, the way a daemon sits
/// behind a reverse proxy: a private CA, a certificate for `localhost`
/// signed by it, and a listener on loopback that hands each connection's
/// plaintext to `api.sock`. Returns the port and the CA's PEM file.
fn tls_front(d: &Daemon) -> (u16, PathBuf) {
    use std::sync::Arc;
    use tokio_rustls::rustls;

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_file = d.data.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let sock = d.data.path().join("api.sock");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let sock = sock.clone();
                tokio::spawn(async move {
                    // A client that rejects the certificate ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::UnixStream::connect(&sock).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
    });
    (port, ca_file)
}

/// `https://` URLs: the CLI verifies the daemon's certificate against
/// `--ca-file` (or `BHATTI_CA_FILE`, or the `ca_file` key `setup` saves),
/// and HTTP, the streamed exec and the WebSocket exec all run over TLS. A
/// certificate from an unknown CA is refused with a hint naming
/// `--ca-file`, and nothing is sent.
#[test]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
fn cli_over_https_with_a_ca_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("docker");
    let key = d.user("tess");
    let (port, ca) = tls_front(&d);
    let url = format!("https://localhost:{port}");
    let ca = ca.to_str().unwrap();
    let https = |args: &[&str]| {
        bhatti(d.home.path())
            .args(["--url", &url, "--token", &key, "--ca-file", ca])
            .args(args)
            .output()
            .unwrap()
    };

    ok(https(&["create", "--name", "tls"]));
    let ls = json(&ok(https(&["--json", "ls"])));
    assert_eq!(ls[0]["name"], "tls", "{ls}");
    let o = ok(https(&["exec", "tls", "--", "sh", "-c", "echo over-tls"]));
    assert_eq!(text(&o.stdout), "over-tls\n");
    // stdin goes through the WebSocket exec.
    let o = bhatti(d.home.path())
        .args(["--url", &url, "--token", &key, "--ca-file", ca])
        .args(["exec", "-i", "tls", "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"12345")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(text(&o.stdout).trim(), "5", "{}", text(&o.stderr));

    // The environment names the CA file as well.
    let o = bhatti(d.home.path())
        .args(["--url", &url, "--token", &key, "--json", "ls"])
        .env("BHATTI_CA_FILE", ca)
        .output()
        .unwrap();
    assert_eq!(json(&ok(o))[0]["name"], "tls");

    // Without it the system store does not know the private CA.
    let o = bhatti(d.home.path())
        .args(["--url", &url, "--token", &key, "ls"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("TLS"), "{err}");
    assert!(err.contains("--ca-file"), "{err}");
    // exec's own failure is 125, not a remote exit code.
    let o = bhatti(d.home.path())
        .args(["--url", &url, "--token", &key, "exec", "tls", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));

    // A CA file that holds no certificate is a clear error before dialling.
    let junk = d.data.path().join("junk.pem");
    std::fs::write(&junk, "not a pem\n").unwrap();
    let o = bhatti(d.home.path())
        .args(["--url", &url, "--token", &key, "--ca-file"])
        .arg(&junk)
        .arg("ls")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("junk.pem"), "{}", text(&o.stderr));

    ok(https(&["destroy", "tls", "--yes"]));
}

/// The group socket: a member of the daemon's `socket_group` uses the API
/// without root, through a 0660 socket outside the 0700 data directory; a
/// user outside the group is refused by the kernel. The users and the
/// group are bare numeric IDs (setpriv), so the host's databases are not
/// touched.
#[test]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
fn a_group_member_uses_the_group_socket() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // An ID no group and no user of this host has.
    let taken = std::fs::read_to_string("/etc/group").unwrap()
        + &std::fs::read_to_string("/etc/passwd").unwrap();
    let mut free = (61_000..62_000u32).filter(|i| !taken.contains(&format!(":{i}:")));
    // The group, and the user (with a primary group of its own).
    let (id, user) = (free.next().unwrap(), free.next().unwrap());
    let dir = tempfile::Builder::new()
        .prefix("bhatti-group-sock-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("api.sock");
    let d = Daemon::start_with(
        "docker",
        &format!("socket_group: \"{id}\"\ngroup_socket: {}\n", sock.display()),
    );
    let key = d.user("gina");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), id);
    let data = std::fs::metadata(d.dir()).unwrap();
    assert_eq!(data.mode() & 0o777, 0o700);

    let as_user = |groups: &str, url: &str| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &user.to_string(), "--regid", &user.to_string()]);
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            c.args(["--groups", groups]);
        }
        c.arg(env!("CARGO_BIN_EXE_bhatti"))
            .args(["--url", url, "--token", &key, "--json", "ls"])
            .env_clear()
            .env("HOME", dir.path())
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    };
    let group_url = format!("unix://{}", sock.display());
    let o = ok(as_user(&id.to_string(), &group_url));
    assert_eq!(json(&o), serde_json::json!([]));
    // Out of the group: the socket's mode keeps the user out.
    let o = as_user("", &group_url);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).to_lowercase().contains("permission denied"),
        "{}",
        text(&o.stderr)
    );
    // In the group but at the data dir's socket: the directory is root's.
    let o = as_user(&id.to_string(), &d.url());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
}

/// `create --egress` and `edit --egress` reach the daemon: the policy is
/// shown by `inspect`, a change the Docker engine cannot make is an error
/// (exit 1) that names egress, one it can is acknowledged.
#[test]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
fn cli_egress_flags() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("docker");
    let key = d.user("eve");
    let locked = json(&ok(d.run(
        &key,
        &["--json", "create", "--name", "locked", "--egress", "deny"],
    )));
    assert_eq!(locked["egress"], "deny", "{locked}");
    let open = json(&ok(d.run(&key, &["--json", "create", "--name", "open"])));
    assert_eq!(open["egress"], "public", "{open}");
    let o = ok(d.run(&key, &["inspect", "locked"]));
    assert!(text(&o.stdout).contains("deny"), "{}", text(&o.stdout));
    let o = ok(d.run(&key, &["edit", "open", "--egress", "public"]));
    assert!(
        text(&o.stdout).contains("Egress: public"),
        "{}",
        text(&o.stdout)
    );
    let o = d.run(&key, &["edit", "locked", "--egress", "public"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("egress"), "{}", text(&o.stderr));
    let o = d.run(&key, &["edit", "open", "--egress", "10.0.0.0/33"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("CIDR"), "{}", text(&o.stderr));
    for name in ["locked", "open"] {
        ok(d.run(&key, &["destroy", name, "--yes"]));
    }
}

/// `bhatti image`: a local Docker image imported through `docker save`
/// (streamed to the daemon), listed, inspected and deleted; a pull from a
/// registry that is not there and an unknown task are errors (exit 1)
/// with the daemon's reason.
#[test]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
fn cli_images() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("docker");
    let key = d.user("ivy");
    let docker_image =
        std::env::var("BHATTI_DOCKER_IMAGE").unwrap_or_else(|_| "bhatti/minimal:latest".into());
    let o = ok(d.run(&key, &["image", "import", &docker_image, "--name", "mini"]));
    assert!(
        text(&o.stdout).contains("image/mini imported"),
        "{}",
        text(&o.stdout)
    );
    let list = json(&ok(d.run(&key, &["--json", "image", "list"])));
    let mine: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == "mini")
        .collect();
    assert_eq!(mine.len(), 1, "{list}");
    assert_eq!(mine[0]["source"], "import:mini");
    let o = ok(d.run(&key, &["image", "inspect", "mini"]));
    assert!(
        text(&o.stdout).contains("import:mini"),
        "{}",
        text(&o.stdout)
    );
    // The same name again: the daemon's 409, said.
    let o = d.run(&key, &["image", "import", &docker_image, "--name", "mini"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("already exists"),
        "{}",
        text(&o.stderr)
    );
    let o = d.run(&key, &["image", "pull", "127.0.0.1:1/nothing:t"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("registry"), "{}", text(&o.stderr));
    let o = d.run(&key, &["task", "get", "0123456789abcdef"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("not found"), "{}", text(&o.stderr));
    // Shared (on the server, DB-direct) with one user, then taken back.
    let jay = d.user("jay");
    let admin = |args: &[&str]| {
        ok(bhatti(d.home.path())
            .args(["--data-dir", d.dir(), "image"])
            .args(args)
            .output()
            .expect("image share"))
    };
    let has_mini = |k: &str| {
        json(&ok(d.run(k, &["--json", "image", "list"])))
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "mini")
    };
    assert!(!has_mini(&jay));
    let o = admin(&["share", "mini", "--owner", "ivy", "--user", "jay"]);
    assert!(
        text(&o.stdout).contains("shared with: jay"),
        "{}",
        text(&o.stdout)
    );
    assert!(has_mini(&jay));
    admin(&["unshare", "mini", "--owner", "ivy"]);
    assert!(!has_mini(&jay));
    ok(d.run(&key, &["image", "delete", "mini", "--yes"]));
    let o = d.run(&key, &["image", "inspect", "mini"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
fn cli_drives_a_running_daemon() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("docker");
    let alice = d.user("alice");
    let bob = d.user("bob");

    // create --json answers the sandbox; text create names it.
    let web = json(&ok(d.run(&alice, &["--json", "create", "--name", "web"])));
    assert_eq!(web["name"], "web");
    assert_eq!(web["status"], "running", "{web}");
    let id = web["id"].as_str().expect("id").to_string();
    let o = ok(d.run(
        &alice,
        &[
            "create",
            "--name",
            "db",
            "--label",
            "tier=data",
            "-e",
            "LIST=a,b",
            "-e",
            "EQ=k=v",
        ],
    ));
    assert!(text(&o.stdout).contains("db"), "{}", text(&o.stdout));

    // list: text table and JSON, the label filter.
    let o = ok(d.run(&alice, &["list"]));
    let out = text(&o.stdout);
    assert!(
        out.contains("web") && out.contains("db") && out.contains("running"),
        "{out}"
    );
    let all = json(&ok(d.run(&alice, &["--json", "list"])));
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    let data = json(&ok(
        d.run(&alice, &["--json", "list", "--label", "tier=data"])
    ));
    let names: Vec<&str> = data
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["db"]);

    // exec: stdout, stderr and the remote exit code; name or ID.
    let o = ok(d.run(&alice, &["exec", "db", "--", "sh", "-c", "echo $LIST/$EQ"]));
    assert_eq!(text(&o.stdout), "a,b/k=v\n", "create -e keeps commas");
    let o = ok(d.run(&alice, &["exec", "web", "echo", "hello"]));
    assert_eq!(text(&o.stdout), "hello\n");
    let o = d.run(&alice, &["exec", "web", "echo oops >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(text(&o.stderr), "oops\n");
    let o = ok(d.run(&alice, &["exec", &id, "--", "sh", "-c", "echo by-id"]));
    assert_eq!(text(&o.stdout), "by-id\n");
    let r = json(&ok(d.run(&alice, &["--json", "exec", "web", "echo", "j"])));
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["stdout"], "j\n");
    // Output is streamed, piped or not, and the code comes through.
    let o = d.run(&alice, &["exec", "web", "echo streamed; exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(text(&o.stdout), "streamed\n");

    // Docker's exec flags: -e (repeatable, commas kept), -w, -u, -i.
    let o = ok(d.run(
        &alice,
        &[
            "exec",
            "-e",
            "A=1,2",
            "-e",
            "B=x=y",
            "-w",
            "/tmp",
            "web",
            "--",
            "sh",
            "-c",
            "echo $A/$B/$(pwd)",
        ],
    ));
    assert_eq!(text(&o.stdout), "1,2/x=y//tmp\n");
    let o = ok(d.run(&alice, &["exec", "-u", "0", "web", "id", "-u"]));
    assert_eq!(text(&o.stdout), "0\n");
    let o = ok(d.run(&alice, &["exec", "--user", "1234:1234", "web", "id", "-u"]));
    assert_eq!(text(&o.stdout), "1234\n");
    let o = ok(d.run_stdin(&alice, &["exec", "-i", "web", "wc", "-l"], b"a\nb\nc\n"));
    assert_eq!(text(&o.stdout).trim(), "3");
    let o = ok(d.run(&alice, &["--json", "exec", "-i", "web", "cat"]));
    assert_eq!(json(&o)["stdout"], "", "no stdin piped: empty input");
    // Exit codes as Docker's: 127 no such program, 126 cannot run it,
    // 125 bhatti's own failure.
    let o = d.run(&alice, &["exec", "web", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));
    let o = d.run(&alice, &["exec", "web", "/etc"]);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o.stderr));
    let o = d.run(&alice, &["exec", "-u", "no-such-user", "web", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));

    // files: write from stdin, read back, ls, stat.
    let payload = b"line one\nline two\n";
    ok(d.run_stdin(
        &alice,
        &["file", "write", "web", "/workspace/notes.txt"],
        payload,
    ));
    let o = ok(d.run(&alice, &["file", "read", "web", "/workspace/notes.txt"]));
    assert_eq!(o.stdout, payload);
    let o = ok(d.run(&alice, &["file", "ls", "web", "/workspace"]));
    assert!(text(&o.stdout).contains("notes.txt"), "{}", text(&o.stdout));
    let st = json(&ok(d.run(
        &alice,
        &["--json", "file", "stat", "web", "/workspace/notes.txt"],
    )));
    assert_eq!(st["size"], payload.len(), "{st}");
    let o = d.run(&alice, &["file", "read", "web", "/workspace/missing"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).starts_with("Error:"), "{}", text(&o.stderr));

    // secrets: set (argument and stdin), names only in the list, injected
    // as env at create, delete.
    ok(d.run(&alice, &["secret", "set", "API_TOKEN", "s3cr3t-value"]));
    ok(d.run_stdin(&alice, &["secret", "set", "PIPED"], b"from-stdin\n"));
    let o = ok(d.run(&alice, &["secret", "list"]));
    let out = text(&o.stdout);
    assert!(out.contains("API_TOKEN") && out.contains("PIPED"), "{out}");
    assert!(!out.contains("s3cr3t-value"), "{out}");
    ok(d.run(
        &alice,
        &[
            "create",
            "--name",
            "sec",
            "--secret",
            "API_TOKEN",
            "--secret",
            "PIPED",
        ],
    ));
    let o = ok(d.run(&alice, &["exec", "sec", "echo $API_TOKEN/$PIPED"]));
    assert_eq!(text(&o.stdout), "s3cr3t-value/from-stdin\n");
    ok(d.run(&alice, &["secret", "delete", "PIPED", "--yes"]));
    let names = json(&ok(d.run(&alice, &["--json", "secret", "list"])));
    assert_eq!(names.as_array().map(Vec::len), Some(1), "{names}");

    // ps: a detached exec is not a session; sessions come from shells
    // (exercised in the tmux test), so an empty list is a clean answer.
    let ps = json(&ok(d.run(&alice, &["--json", "ps", "web"])));
    assert!(ps.is_array(), "{ps}");

    // Errors: --json puts a parseable error on stderr; tenants are apart.
    let o = d.run(&alice, &["--json", "exec", "nosuch", "true"]);
    assert_eq!(o.status.code(), Some(125), "exec's own failures are 125");
    let e: Value = serde_json::from_slice(&o.stderr).expect("JSON error");
    assert_eq!(e["status"], 404, "{e}");
    let o = d.run(&bob, &["inspect", "web"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("404"), "{}", text(&o.stderr));
    let o = d.run(&bob, &["--json", "list"]);
    assert_eq!(json(&ok(o)).as_array().map(Vec::len), Some(0));
    let o = d.run("bht_not-a-key", &["list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("401"), "{}", text(&o.stderr));

    // stop / start round trip keeps the files.
    ok(d.run(&alice, &["stop", "web"]));
    let g = json(&ok(d.run(&alice, &["--json", "inspect", "web"])));
    assert_eq!(g["status"], "stopped", "{g}");
    ok(d.run(&alice, &["start", "web"]));
    let o = ok(d.run(&alice, &["exec", "web", "cat", "/workspace/notes.txt"]));
    assert_eq!(o.stdout, payload);

    // destroy needs --yes without a terminal, then the name is gone.
    let o = d.run(&alice, &["destroy", "db"]);
    assert_eq!(o.status.code(), Some(1));
    for name in ["web", "db", "sec"] {
        ok(d.run(&alice, &["destroy", name, "--yes"]));
    }
    let all = json(&ok(d.run(&alice, &["--json", "list"])));
    assert_eq!(all.as_array().map(Vec::len), Some(0), "{all}");

    // admin (DB-direct, beside the running daemon): the event log has the
    // lifecycle just driven (the recorder writes in batches), status the
    // totals.
    let admin = |args: &[&str]| {
        let mut c = bhatti(d.home.path());
        c.args(["--json", "--data-dir", d.dir(), "admin"])
            .args(args);
        json(&ok(c.output().expect("admin")))
    };
    poll(20, || {
        let ev = admin(&["events", "--type", "sandbox.destroyed", "--user", "alice"]);
        match ev.as_array().map(Vec::len) {
            Some(3) => Ok(()),
            _ => Err(format!("destroy events: {ev}")),
        }
    });
    let n = admin(&["events", "--type", "sandbox.", "--since", "1h", "--count"]);
    assert!(n["count"].as_u64().unwrap_or(0) >= 6, "{n}");
    let st = admin(&["status"]);
    assert_eq!(st["users"], 2, "{st}");
    assert_eq!(st["sandboxes"], 0, "{st}");
    let m = admin(&["metrics", "--since", "30m"]);
    assert!(!m.as_array().expect("buckets").is_empty(), "{m}");
}

/// A private tmux server (its own socket) running `bhatti shell`.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(tag: &str) -> Tmux {
        Tmux {
            socket: format!("bhatti-test-{tag}-{}", std::process::id()),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    /// Runs `script` in a new detached window `name` of a 160x50 pane.
    fn window(&self, name: &str, script: &Path) {
        let first = !self
            .cmd()
            .args(["has-session", "-t", "t"])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let sh = format!("sh {}", script.display());
        let st = if first {
            self.cmd()
                .args([
                    "new-session",
                    "-d",
                    "-s",
                    "t",
                    "-n",
                    name,
                    "-x",
                    "160",
                    "-y",
                    "50",
                ])
                .arg(&sh)
                .status()
        } else {
            self.cmd()
                .args(["new-window", "-d", "-t", "t", "-n", name])
                .arg(&sh)
                .status()
        };
        assert!(st.map(|s| s.success()).unwrap_or(false), "tmux window");
    }

    fn capture(&self, name: &str) -> String {
        let o = self
            .cmd()
            .args(["capture-pane", "-p", "-J", "-S", "-200", "-t"])
            .arg(format!("t:{name}"))
            .output()
            .expect("capture-pane");
        text(&o.stdout)
    }

    fn keys(&self, name: &str, keys: &[&str]) {
        let st = self
            .cmd()
            .args(["send-keys", "-t"])
            .arg(format!("t:{name}"))
            .args(keys)
            .status()
            .expect("send-keys");
        assert!(st.success());
    }

    fn hex(&self, name: &str, hex: &str) {
        let st = self
            .cmd()
            .args(["send-keys", "-t"])
            .arg(format!("t:{name}"))
            .args(["-H", hex])
            .status()
            .expect("send-keys -H");
        assert!(st.success());
    }

    #[track_caller]
    fn wait_for(&self, name: &str, needle: &str) -> String {
        poll(60, || {
            let screen = self.capture(name);
            if screen.contains(needle) {
                Ok(screen)
            } else {
                Err(format!(
                    "{needle:?} never appeared in window {name}:\n{screen}"
                ))
            }
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// A script for a tmux window: the CLI command, then its exit status, then
/// a pause so the pane (and what it printed) stays to be captured.
fn shell_script(d: &Daemon, key: &str, dir: &Path, name: &str, args: &str) -> PathBuf {
    let p = dir.join(format!("{name}.sh"));
    let s = format!(
        "export HOME={home}\nunset BHATTI_URL BHATTI_TOKEN BHATTI_CONFIG\n{bin} --url {url} --token {key} {args}\necho \"CLI-EXIT-$?\"\nsleep 600\n",
        home = d.home.path().display(),
        bin = env!("CARGO_BIN_EXE_bhatti"),
        url = d.url(),
    );
    std::fs::write(&p, s).expect("script");
    p
}

#[test]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh), root and tmux"
)]
fn shell_detach_and_reattach_in_a_terminal() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start("docker");
    let key = d.user("alice");
    ok(d.run(&key, &["create", "--name", "term"]));
    let scripts = tempfile::tempdir().expect("tempdir");
    let tmux = Tmux::new("shell");

    // Attach, type a command, see its output.
    tmux.window(
        "a",
        &shell_script(&d, &key, scripts.path(), "a", "shell term"),
    );
    tmux.wait_for("a", "Ctrl+\\ detaches");
    tmux.keys("a", &["echo marker-$((6*7))", "Enter"]);
    tmux.wait_for("a", "marker-42");
    // Ctrl+C reaches the remote shell, not the CLI.
    tmux.keys("a", &["sleep 30", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux.keys("a", &["C-c"]);
    tmux.keys("a", &["echo after-interrupt", "Enter"]);
    tmux.wait_for("a", "\nafter-interrupt\n");
    // Ctrl+\ detaches: the CLI exits 0 and names the session.
    tmux.hex("a", "1c");
    let screen = tmux.wait_for("a", "CLI-EXIT-");
    assert!(screen.contains("CLI-EXIT-0"), "{screen}");
    assert!(screen.contains("Detached from session"), "{screen}");

    // The session keeps running, detached.
    let ps = json(&ok(d.run(&key, &["--json", "ps", "term"])));
    let sessions = ps.as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{ps}");
    assert_eq!(sessions[0]["running"], true, "{ps}");
    assert_eq!(sessions[0]["attached"], false, "{ps}");
    let sid = sessions[0]["session_id"].as_str().expect("id").to_string();
    let o = ok(d.run(&key, &["ps", "term"]));
    assert!(text(&o.stdout).contains(&sid), "{}", text(&o.stdout));

    // A new `bhatti shell` reattaches to it and replays the scrollback.
    tmux.window(
        "b",
        &shell_script(&d, &key, scripts.path(), "b", "shell term"),
    );
    let screen = tmux.wait_for("b", "marker-42");
    assert!(screen.contains(&sid), "{screen}");
    tmux.keys("b", &["echo second-$((2+3))", "Enter"]);
    tmux.wait_for("b", "second-5");
    // `exit` ends the shell: the CLI exits 0 and the session is gone.
    tmux.keys("b", &["exit", "Enter"]);
    let screen = tmux.wait_for("b", "CLI-EXIT-");
    assert!(screen.contains("CLI-EXIT-0"), "{screen}");
    poll(20, || {
        let ps = json(&ok(d.run(&key, &["--json", "ps", "term"])));
        let live = ps
            .as_array()
            .expect("sessions")
            .iter()
            .filter(|s| s["running"] == true)
            .count();
        if live == 0 {
            Ok(())
        } else {
            Err(format!("shell still running: {ps}"))
        }
    });
    ok(d.run(&key, &["destroy", "term", "--yes"]));
}

fn status_of(d: &Daemon, key: &str, name: &str) -> (String, String) {
    let g = json(&ok(d.run(key, &["--json", "inspect", name])));
    (
        g["status"].as_str().unwrap_or_default().to_string(),
        g["status_reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Pids of the VMMs whose command line mentions `dir` (or below).
/// Starts `sleep 1000` detached in `sandbox` and returns its guest PID.
fn detached_sleep(d: &Daemon, key: &str, sandbox: &str) -> String {
    let o = ok(d.run(key, &["exec", "--detach", sandbox, "--", "sleep", "1000"]));
    let pid = text(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(pid.parse::<u32>().is_ok(), "detach printed {pid:?}");
    pid
}

fn vmms_under(dir: &Path) -> Vec<i32> {
    bhatti_engine::microvm::vmm_pids(dir)
}

/// A daemon SIGKILLed in the middle of a 20-client exec load, then
/// restarted: every running sandbox is re-adopted (its VMM never stopped),
/// a process started before the kill still runs, every acknowledged write
/// is on disk, and every client whose exec was cut off got an error, never
/// a wrong answer. A stopped sandbox comes back cold with its files; one
/// the daemon died creating is removed or clearly marked, and its VMM is
/// gone.
#[test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
fn sigkilled_daemon_restarts_and_accounts_for_every_sandbox() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = Daemon::start("qemu");
    let key = d.user("alice");

    // cold: stopped with a snapshot → comes back stopped, data intact.
    ok(d.run(&key, &["create", "--name", "cold"]));
    ok(d.run(&key, &["exec", "cold", "echo kept > /workspace/f; sync"]));
    ok(d.run(&key, &["stop", "cold"]));
    // live: running, with a process of its own and the load below.
    ok(d.run(&key, &["create", "--name", "live"]));
    let pid = detached_sleep(&d, &key, "live");
    // woken: stopped, then started again (a later generation than its
    // snapshot) → adopted as it runs, never rolled back to the snapshot.
    ok(d.run(&key, &["create", "--name", "woken"]));
    ok(d.run(&key, &["stop", "woken"]));
    ok(d.run(&key, &["start", "woken"]));
    ok(d.run(
        &key,
        &["exec", "woken", "echo after-wake > /workspace/g; sync"],
    ));

    // 20 clients exec in a loop through the kill and the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let (url, home) = (d.url(), d.home.path().to_path_buf());
    let clients: Vec<_> = (0..20)
        .map(|c| {
            let (stop, key, url, home) = (stop.clone(), key.clone(), url.clone(), home.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut cut = 0usize;
                let mut round = 0;
                while !stop.load(Ordering::SeqCst) {
                    round += 1;
                    let tag = format!("v-{c}-{round}");
                    let o = bhatti(&home)
                        .args(["--url", &url, "--token", &key, "exec", "live", "--", "sh", "-c"])
                        .arg(format!("echo {tag} > /workspace/w-{c}-{round} && sync && cat /workspace/w-{c}-{round}"))
                        .output()
                        .expect("run the CLI");
                    match (o.status.success(), text(&o.stdout)) {
                        (true, out) if out == format!("{tag}\n") => acked.push(round),
                        (true, out) => panic!("client {c} round {round}: a wrong answer {out:?}"),
                        (false, _) => {
                            cut += 1;
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
                (c, acked, cut)
            })
        })
        .collect();

    // Let the load run, then kill the daemon with execs in flight.
    std::thread::sleep(Duration::from_secs(8));
    let before = vmms_under(&d.data.path().join("sandboxes"));
    assert_eq!(before.len(), 2, "live and woken run: {before:?}");
    d.kill9();
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    d.spawn();
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::SeqCst);
    let results: Vec<_> = clients
        .into_iter()
        .map(|h| h.join().expect("a client saw a wrong answer"))
        .collect();
    eprintln!("restart to serving after SIGKILL: {took:?}");

    // The same VMMs run: nothing was restarted, nothing was killed.
    let after = vmms_under(&d.data.path().join("sandboxes"));
    assert_eq!(after, before, "the VMMs were replaced");
    for name in ["live", "woken"] {
        let g = json(&ok(d.run(&key, &["--json", "inspect", name])));
        assert_eq!(g["status"], "running", "{g}");
    }
    let (st, why) = status_of(&d, &key, "cold");
    assert_eq!(st, "stopped", "{why}");
    let o = ok(d.run(
        &key,
        &[
            "exec",
            "live",
            "--",
            "sh",
            "-c",
            &format!("kill -0 {pid} && echo alive"),
        ],
    ));
    assert_eq!(
        text(&o.stdout),
        "alive\n",
        "the process started before the kill"
    );
    let o = ok(d.run(&key, &["exec", "woken", "cat", "/workspace/g"]));
    assert_eq!(text(&o.stdout), "after-wake\n");

    // Every acknowledged write is there; some execs were cut off, and
    // those got errors (checked in the clients).
    let mut expect = String::new();
    let (mut acked_total, mut cut_total) = (0, 0);
    for (c, acked, cut) in &results {
        acked_total += acked.len();
        cut_total += cut;
        for r in acked {
            expect.push_str(&format!("v-{c}-{r}\n"));
        }
    }
    assert!(acked_total > 0, "no exec was acknowledged");
    eprintln!("load: {acked_total} acknowledged, {cut_total} cut off");
    let script = results
        .iter()
        .flat_map(|(c, acked, _)| {
            acked
                .iter()
                .map(move |r| format!("cat /workspace/w-{c}-{r}"))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let o = ok(d.run(&key, &["exec", "live", "--", "sh", "-c", &script]));
    assert_eq!(text(&o.stdout), expect, "an acknowledged write is missing");

    let o = ok(d.run(&key, &["exec", "cold", "cat", "/workspace/f"]));
    assert_eq!(text(&o.stdout), "kept\n");
    for name in ["live", "woken", "cold"] {
        ok(d.run(&key, &["destroy", name, "--yes"]));
    }
    let all = json(&ok(d.run(&key, &["--json", "list"])));
    assert_eq!(all.as_array().map(Vec::len), Some(0), "{all}");
    d.stop();
    assert!(
        vmms_under(d.data.path()).is_empty(),
        "VMMs left after destroy"
    );
}

/// `systemctl restart bhatti` under the shipped unit: `KillMode=process`
/// means systemd sends SIGTERM to the daemon's main process only and leaves
/// the VMMs, then starts the daemon again. That is done here by hand (these
/// machines run no systemd as PID 1): a running sandbox keeps running
/// through it, with the process it had, and answers the new daemon.
#[test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
fn a_restart_as_the_shipped_unit_does_it_keeps_a_running_sandbox() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd/bhatti.service"),
    )
    .unwrap();
    assert!(
        unit.lines().any(|l| l.trim() == "KillMode=process"),
        "the unit no longer says KillMode=process; this test models that:\n{unit}"
    );

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = Daemon::start("qemu");
    let key = d.user("alice");
    ok(d.run(&key, &["create", "--name", "svc"]));
    let pid = detached_sleep(&d, &key, "svc");
    let vmms = vmms_under(&d.data.path().join("sandboxes"));
    assert_eq!(vmms.len(), 1, "{vmms:?}");

    // SIGTERM to the main process only, as KillMode=process does.
    d.stop();
    let after_stop = vmms_under(&d.data.path().join("sandboxes"));
    assert_eq!(after_stop, vmms, "the VMM did not outlive the daemon");
    d.spawn();

    let s = json(&ok(d.run(&key, &["--json", "inspect", "svc"])));
    assert_eq!(s["status"], "running", "{s}");
    let o = ok(d.run(&key, &["exec", "svc", "--", "kill", "-0", &pid]));
    assert!(o.status.success());
    assert_eq!(vmms_under(&d.data.path().join("sandboxes")), vmms);
    ok(d.run(&key, &["destroy", "svc", "--yes"]));
    d.stop();
}

/// A daemon SIGKILLed while it creates a sandbox: after the restart the
/// half-made sandbox is gone or clearly marked, and no VMM of it runs.
#[test]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
fn sigkill_during_create_leaves_nothing_running() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = Daemon::start("qemu");
    let key = d.user("alice");
    let mut half = d
        .cli(&key)
        .args(["create", "--name", "half"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("create half");
    poll(30, || {
        match vmms_under(&d.data.path().join("sandboxes")).len() {
            0 => Err("half's VMM never started".to_string()),
            _ => Ok(()),
        }
    });
    d.kill9();
    let _ = half.wait();
    d.spawn();
    let o = d.run(&key, &["--json", "inspect", "half"]);
    if o.status.success() {
        let g = json(&o);
        assert_eq!(g["status"], "unknown", "{g}");
        assert!(
            g["status_reason"]
                .as_str()
                .unwrap_or_default()
                .contains("being created"),
            "{g}"
        );
    } else {
        assert!(text(&o.stderr).contains("404"), "{}", text(&o.stderr));
    }
    poll(20, || match vmms_under(&d.data.path().join("sandboxes")) {
        left if left.is_empty() => Ok(()),
        left => Err(format!("stray VMMs after recovery: {left:?}")),
    });
    let _ = d.run(&key, &["destroy", "half", "--yes"]);
    let all = json(&ok(d.run(&key, &["--json", "list"])));
    assert_eq!(all.as_array().map(Vec::len), Some(0), "{all}");
}
