//! Guests that run real software, in real VMs: Debian's own service units
//! under lohar's systemd substitute (the `services` test tier: nginx and
//! redis as installed by apt), Docker inside a sandbox (the `docker` tier),
//! and headless Chromium (the `browser` tier). Each tier is an image built
//! by scripts/guest/build-tier.sh; a suite whose tier is not built is
//! ignored with that reason.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
// a test panics to report its failure

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{TestDaemon, SERIAL};
use serde_json::json;

/// The built tier image (`$BHATTI_GUEST_CACHE/rootfs-<tier>.ext4`).
#[allow(dead_code)]
fn tier_image(tier: &str) -> PathBuf {
    let cache = std::env::var("BHATTI_GUEST_CACHE")
        .ok()
        .or(option_env!("BHATTI_GUEST_CACHE_AT_BUILD").map(str::to_string))
        .unwrap_or_else(|| "/var/cache/bhatti/guest".into());
    PathBuf::from(cache).join(format!("rootfs-{tier}.ext4"))
}

/// A QEMU daemon whose data dir has the tier installed as the quickstart
/// installs images (`images/rootfs-<tier>.ext4`); the temp dir lives as
/// long as the daemon.
#[allow(dead_code)]
async fn daemon_with_tier(tier: &str) -> (tempfile::TempDir, TestDaemon) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("bhatti-tier-{tier}-"))
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    std::os::unix::fs::symlink(
        tier_image(tier),
        dir.path().join(format!("images/rootfs-{tier}.ext4")),
    )
    .unwrap();
    let data = dir.path().to_path_buf();
    let d = TestDaemon::start("qemu", |c| {
        c.data_dir = data;
        c.thermal.tick_secs = 0.5;
    })
    .await;
    (dir, d)
}

/// A daemon with `tier` installed, a user, and a sandbox of that tier
/// with `memory_mb`: (data dir, daemon, API key, sandbox ID).
#[allow(dead_code)]
async fn sandbox_on_tier(
    tier: &str,
    memory_mb: u32,
) -> (tempfile::TempDir, TestDaemon, String, String) {
    let (dir, d) = daemon_with_tier(tier).await;
    let key = d.user(tier, Default::default());
    let sb = d
        .create(
            &key,
            json!({"name": tier, "image": tier, "memory_mb": memory_mb}),
        )
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    (dir, d, key, id)
}

/// Runs `script` until it exits 0 or `within` passes; the last output.
#[allow(dead_code)]
async fn until(
    d: &TestDaemon,
    key: &str,
    sb: &str,
    script: &str,
    within: Duration,
) -> (bool, String) {
    let t0 = Instant::now();
    loop {
        let (code, out, err) = d.sh(key, sb, script).await;
        if code == 0 {
            return (true, out);
        }
        if t0.elapsed() > within {
            return (false, format!("exit {code}\n{out}{err}"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[allow(dead_code)]
const BOTH_UP: &str = "systemctl is-active nginx redis-server && curl -sf -o /dev/null http://127.0.0.1/ && redis-cli ping | grep -qx PONG";

/// nginx and redis from Debian's packages, enabled by their postinst,
/// start at boot under the substitute and answer on their ports; stop,
/// start, a crash under `Restart=on-failure` (set by a drop-in), and
/// `journalctl -u` work; and both come back after a stop/start of the
/// whole sandbox (a memory snapshot) and after a cold boot from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_tier_services)),
    ignore = "needs root, the guest artifacts and the services tier (scripts/guest/build-tier.sh --tier services)"
)]
async fn apt_installed_services_run_as_units_vm() {
    let _serial = SERIAL.lock().await;
    let (dir, d) = daemon_with_tier("services").await;
    let key = d.user("svc", Default::default());
    let t0 = Instant::now();
    let img = d
        .req("GET", "/images/services", Some(&key), None)
        .await
        .json();
    assert!(
        img.get("warnings").is_none(),
        "nothing to warn about: {img}"
    );
    let sb = d
        .create(&key, json!({"name": "svc", "image": "services"}))
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    let created = t0.elapsed();
    let (ok, out) = until(&d, &key, &id, BOTH_UP, Duration::from_secs(120)).await;
    assert!(ok, "nginx and redis never answered: {out}\n{}", d.sh(&key, &id, "systemctl status nginx redis-server; ls /var/log/bhatti; tail -n 20 /var/log/bhatti/*.log").await.1);
    let timing = d.sh(&key, &id, "cat /run/bhatti/boot-timing.txt").await.1;
    eprintln!(
        "services tier: create answered after {created:?}, nginx+redis answering after {:?}; guest boot timing:\n{timing}",
        t0.elapsed()
    );
    assert!(timing.contains("units_started=2"), "{timing}");
    let units = |t: &str, k: &str| -> Option<u64> {
        t.lines().find_map(|l| {
            l.strip_prefix(&format!("{k}="))
                .and_then(|v| v.parse().ok())
        })
    };
    let ready = units(&timing, "ready_ms").expect("ready_ms");
    let up = units(&timing, "units_started_ms").expect("units_started_ms");
    eprintln!("services tier: lohar ready at {ready} ms, all units active at {up} ms after kernel start ({} ms later)", up.saturating_sub(ready));

    // Debian's units as the substitute reads them.
    let (code, out, _) = d.sh(&key, &id, "systemctl status nginx").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Active: active (running)"), "{out}");
    assert!(
        out.contains("/lib/systemd/system/nginx.service; enabled"),
        "{out}"
    );
    assert!(out.contains("CGroup: /system.slice/nginx.service"), "{out}");
    let (_, user, _) = d
        .sh(
            &key,
            &id,
            "ps -o user= -p $(systemctl show -p MainPID --value redis-server)",
        )
        .await;
    assert_eq!(user.trim(), "redis", "User=redis is honoured");

    // stop and start.
    let (code, _, err) = d.sh(&key, &id, "sudo systemctl stop nginx").await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = d
        .sh(
            &key,
            &id,
            "systemctl is-active nginx; curl -sf -o /dev/null http://127.0.0.1/",
        )
        .await;
    assert_ne!(code, 0, "nginx still answers after stop: {out}");
    assert_eq!(out.lines().next(), Some("inactive"));
    let (code, _, err) = d
        .sh(
            &key,
            &id,
            "sudo systemctl start nginx && curl -sf -o /dev/null http://127.0.0.1/",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    // A non-root user may look, not touch.
    let (code, _, err) = d.sh(&key, &id, "systemctl stop nginx").await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("Access denied"), "{err}");

    // A crash under Restart=on-failure (a drop-in of ours on Debian's unit).
    let (code, _, err) = d
        .sh(
            &key,
            &id,
            "sudo mkdir -p /etc/systemd/system/nginx.service.d && \
             printf '[Service]\\nRestart=on-failure\\nRestartSec=1\\n' | sudo tee /etc/systemd/system/nginx.service.d/restart.conf >/dev/null && \
             sudo systemctl daemon-reload && sudo systemctl restart nginx",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let before = d
        .sh(&key, &id, "systemctl show -p MainPID --value nginx")
        .await
        .1;
    let before = before.trim().to_string();
    let (code, _, err) = d.sh(&key, &id, &format!("sudo kill -9 {before}")).await;
    assert_eq!(code, 0, "{err}");
    let (ok, out) = until(
        &d,
        &key,
        &id,
        &format!("p=$(systemctl show -p MainPID --value nginx); test \"$p\" != 0 && test \"$p\" != {before} && curl -sf -o /dev/null http://127.0.0.1/ && systemctl show -p NRestarts --value nginx"),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "nginx did not come back after a crash: {out}");
    assert_eq!(out.trim(), "1");
    let (_, log, _) = d.sh(&key, &id, "journalctl -u nginx --no-pager").await;
    assert!(log.contains("Started nginx.service"), "{log}");
    assert!(log.contains("Main process exited"), "{log}");
    assert!(log.contains("restart counter is at 1"), "{log}");

    // A memory snapshot: stop and start the sandbox.
    assert_eq!(
        d.code("POST", &format!("/sandboxes/{id}/stop"), Some(&key), None)
            .await,
        200
    );
    assert_eq!(
        d.code("POST", &format!("/sandboxes/{id}/start"), Some(&key), None)
            .await,
        200
    );
    let (ok, out) = until(&d, &key, &id, BOTH_UP, Duration::from_secs(60)).await;
    assert!(ok, "after stop/start: {out}");

    // A cold boot from the kept disk: the VMM dies, `start` boots afresh,
    // and the enabled units start again.
    let pids = bhatti_engine::microvm::vmm_pids(&dir.path().join("sandboxes").join(&id));
    assert_eq!(pids.len(), 1, "{pids:?}");
    // SAFETY: plain kill(2) of the QEMU this test's daemon started.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
    let g = common::wait_status(&d, &key, &id, "crashed").await;
    assert_eq!(g["status"], "crashed", "{g}");
    assert_eq!(
        d.code("POST", &format!("/sandboxes/{id}/start"), Some(&key), None)
            .await,
        200
    );
    let (ok, out) = until(&d, &key, &id, BOTH_UP, Duration::from_secs(120)).await;
    assert!(ok, "after a cold boot: {out}");
    let (_, up, _) = d.sh(&key, &id, "cut -d' ' -f1 /proc/uptime").await;
    assert!(
        up.trim().parse::<f64>().unwrap() < 600.0,
        "a fresh kernel: {up}"
    );
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        200
    );
}

/// The `docker` tier: dockerd is a unit started by the substitute, and an
/// image built inside the sandbox (`docker build` from a local busybox
/// tarball, no registry) runs and prints its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_tier_docker)),
    ignore = "needs root, the guest artifacts and the docker tier (scripts/guest/build-tier.sh --tier docker)"
)]
async fn docker_builds_and_runs_inside_the_sandbox_vm() {
    let _serial = SERIAL.lock().await;
    let (_dir, d, key, id) = sandbox_on_tier("docker", 2048).await;
    // Built-in images are judged like pulled ones: this one ships dockerd.
    let img = d
        .req("GET", "/images/docker", Some(&key), None)
        .await
        .json();
    let warnings = img["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.len() == 1 && warnings[0].as_str().unwrap().contains("contains dockerd"),
        "{img}"
    );
    let (ok, out) = until(
        &d,
        &key,
        &id,
        "docker info --format '{{.ServerVersion}}'",
        Duration::from_secs(180),
    )
    .await;
    assert!(
        ok,
        "dockerd never answered: {out}\n{}",
        d.sh(
            &key,
            &id,
            "systemctl status docker containerd; tail -n 40 /var/log/bhatti/docker.log"
        )
        .await
        .1
    );
    // busybox from the host (busybox-static), as a root filesystem tarball.
    assert_eq!(d.sh(&key, &id, "mkdir -p /workspace/ctx").await.0, 0);
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static on the host");
    let r = d
        .raw(
            "PUT",
            &format!("/sandboxes/{id}/files?path=/workspace/ctx/busybox"),
            Some(&key),
            &[],
            busybox,
        )
        .await;
    assert!(r.status < 300, "upload: {}", r.text());
    let (code, out, err) = d
        .sh(
            &key,
            &id,
            "set -e; cd /workspace/ctx; mkdir -p root/bin; cp busybox root/bin/busybox; chmod 755 root/bin/busybox; \
             ln -s busybox root/bin/sh; ln -s busybox root/bin/echo; tar -C root -cf busybox.tar .; rm -rf root busybox; \
             printf 'FROM scratch\\nADD busybox.tar /\\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built-$((6*7)) > /built\"]\\nCMD [\"/bin/sh\", \"-c\", \"echo hello-from-docker $(cat /built)\"]\\n' > Dockerfile; \
             docker build -q -t bhatti-test:1 . >/dev/null; docker run --rm bhatti-test:1",
        )
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "hello-from-docker built-42", "{err}");
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        200
    );
}

/// The `browser` tier: headless Chromium renders a page served inside the
/// same sandbox to a PNG (kept under target/test-artifacts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_vm_tests, bhatti_tier_browser)),
    ignore = "needs root, the guest artifacts and the browser tier (scripts/guest/build-tier.sh --tier browser)"
)]
async fn chromium_renders_a_page_to_png_vm() {
    let _serial = SERIAL.lock().await;
    let (_dir, d, key, id) = sandbox_on_tier("browser", 2048).await;
    let (code, _, err) = d
        .sh(
            &key,
            &id,
            "mkdir -p /workspace/site && cd /workspace/site && \
             printf '<html><body style=\"background:#1e90ff\"><h1 style=\"color:white\">bhatti %s</h1></body></html>' $((6*7)) > index.html && \
             (setsid python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &) && \
             for i in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:8000/ && break; sleep 0.2; done; \
             node --version",
        )
        .await;
    assert_eq!(code, 0, "{err}");
    // The guest runs no display server; --no-sandbox because Chromium's
    // sandbox wants user namespaces, which sandboxes leave off by default.
    let (code, out, err) = d
        .sh(
            &key,
            &id,
            "timeout 300 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
             --window-size=640,480 --screenshot=/workspace/shot.png http://127.0.0.1:8000/ 2>/tmp/chromium.err; \
             rc=$?; test -s /workspace/shot.png || { tail -n 20 /tmp/chromium.err; exit $rc; }; \
             head -c 8 /workspace/shot.png | od -An -tx1 | tr -d ' \\n'",
        )
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "89504e470d0a1a0a", "a PNG signature");
    let r = d
        .req(
            "GET",
            &format!("/sandboxes/{id}/files?path=/workspace/shot.png"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("browser-tier.png"), &r.body).unwrap();
    assert!(r.body.len() > 1000, "a real render, {} bytes", r.body.len());
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        200
    );
}
