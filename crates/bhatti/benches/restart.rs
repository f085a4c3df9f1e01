//! How long a daemon takes to serve again after a SIGKILL, with ten
//! running sandboxes to re-adopt, beside the same restart with none (the
//! baseline: process start, store, network pool, listeners). The real
//! `bhatti serve` binary on the QEMU engine; "serving" is the first
//! `/health` answer on its Unix socket, and recovery (adoption included)
//! runs before the listeners open. After each restart every sandbox must
//! answer an exec, and its VMM must be the same process as before.
//!
//! Needs root and the guest artifacts; without them it says so and writes
//! nothing. `BHATTI_BENCH_N` sets the rounds (default 5).
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bhatti_benchkit::Report;

const SANDBOXES: usize = 10;

struct Daemon {
    data: tempfile::TempDir,
    home: tempfile::TempDir,
    child: Option<Child>,
    /// The benchmark's key, once made: what it created is destroyed with
    /// it even when the benchmark fails half-way.
    key: Option<String>,
}

fn bhatti(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bhatti"));
    c.env("HOME", home)
        .env_remove("BHATTI_URL")
        .env_remove("BHATTI_TOKEN")
        .env_remove("BHATTI_CONFIG")
        .env_remove("BHATTI_DATA_DIR")
        .stdin(Stdio::null());
    c
}

impl Daemon {
    fn dir(&self) -> &str {
        self.data.path().to_str().expect("utf-8 path")
    }

    fn sock(&self) -> PathBuf {
        self.data.path().join("api.sock")
    }

    /// Starts `bhatti serve` and returns the time to its first `/health`.
    fn spawn(&mut self) -> Duration {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("daemon.log"))
            .expect("log");
        let _ = std::fs::remove_file(self.sock());
        let t0 = Instant::now();
        let child = bhatti(self.home.path())
            .args(["--data-dir", self.dir(), "serve", "--listen", "127.0.0.1:0"])
            .args(["--engine", "qemu", "--config"])
            .arg(self.data.path().join("config.yaml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn bhatti serve");
        self.child = Some(child);
        loop {
            if health(&self.sock()) {
                return t0.elapsed();
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the daemon exited ({st}); see {}/daemon.log", self.dir());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "the daemon never served"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, key: &str, args: &[&str]) -> String {
        let url = format!("unix://{}", self.sock().display());
        let o = bhatti(self.home.path())
            .args(["--url", &url, "--token", key])
            .args(args)
            .output()
            .expect("run bhatti");
        assert!(
            o.status.success(),
            "bhatti {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let (Some(key), true) = (self.key.clone(), self.child.is_some()) {
            let url = format!("unix://{}", self.sock().display());
            for i in 0..SANDBOXES {
                let _ = bhatti(self.home.path())
                    .args([
                        "--url",
                        &url,
                        "--token",
                        &key,
                        "destroy",
                        &format!("r{i}"),
                        "--yes",
                    ])
                    .output();
            }
        }
        self.kill9();
        // Whatever still runs of this benchmark's sandboxes.
        for pid in vmms_under(self.data.path()) {
            // SAFETY: plain kill(2) of a VMM this benchmark's daemon started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// True once the socket answers `GET /health` with 200.
fn health(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.ends_with(b"200")
}

fn vmms_under(dir: &Path) -> Vec<i32> {
    bhatti_engine::microvm::vmm_pids(dir)
}

fn main() {
    let root = unsafe { libc::geteuid() } == 0;
    let kernel = Path::new("/var/cache/bhatti/guest/vmlinux").exists()
        || std::env::var_os("BHATTI_GUEST_KERNEL").is_some();
    if !root || !kernel {
        println!("restart: skipped (needs root and the guest artifacts, scripts/guest)");
        return;
    }
    let rounds: usize = std::env::var("BHATTI_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let data = tempfile::Builder::new()
        .prefix("bhatti-bench-restart-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    std::fs::write(
        data.path().join("config.yaml"),
        "rate_limits:\n  enabled: false\nthermal:\n  enabled: false\ndefault_memory_mb: 256\ntemplate_snapshots: false\npools: []\n",
    )
    .expect("config");
    let mut d = Daemon {
        data,
        home: tempfile::tempdir().expect("home"),
        child: None,
        key: None,
    };
    d.spawn();
    let o = bhatti(d.home.path())
        .args([
            "--json",
            "--data-dir",
            d.dir(),
            "user",
            "create",
            "--name",
            "bench",
            "--max-sandboxes",
            &SANDBOXES.to_string(),
        ])
        .output()
        .expect("user create");
    let key = serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("user json")["api_key"]
        .as_str()
        .expect("api_key")
        .to_string();
    d.key = Some(key.clone());

    let mut empty = Vec::new();
    for _ in 0..rounds {
        d.kill9();
        empty.push(d.spawn());
    }
    let names: Vec<String> = (0..SANDBOXES).map(|i| format!("r{i}")).collect();
    for n in &names {
        d.cli(&key, &["create", "--name", n]);
    }
    let mut full = Vec::new();
    for _ in 0..rounds {
        let before = vmms_under(d.data.path());
        assert_eq!(before.len(), SANDBOXES, "{before:?}");
        d.kill9();
        full.push(d.spawn());
        assert_eq!(vmms_under(d.data.path()), before, "a VMM was replaced");
        for n in &names {
            assert_eq!(d.cli(&key, &["exec", n, "echo", "up"]), "up\n", "{n}");
        }
    }
    let mut report = Report::new("restart");
    report.latency(
        &format!("SIGKILL → serving, {SANDBOXES} running sandboxes re-adopted"),
        &full,
        Some(("SIGKILL → serving, no sandboxes", &empty)),
        "QEMU (TCG) engine; the real bhatti serve; first /health on its socket",
    );
    for n in &names {
        d.cli(&key, &["destroy", n, "--yes"]);
    }
    match report.write() {
        Ok(p) => println!("report: {}", p.display()),
        Err(e) => println!("could not write the report: {e}"),
    }
}
