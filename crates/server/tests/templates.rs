//! Template snapshots on a real daemon with the QEMU engine: the first
//! create of an image boots and builds its template in the background; the
//! next ones restore it and are made their own sandbox (hostname, env,
//! files, a fresh token, fresh entropy). An image change invalidates the
//! template, and a daemon restart in the middle of a build leaves no VMM
//! behind. Reported as ignored without root and the guest artifacts.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bhatti_agent_client::{AgentClient, ClientError, Transport};
use common::{id_of, vmm_sandboxes, TestDaemon, SERIAL};
use serde_json::{json, Value};

/// Template directories with a manifest (finished builds).
fn templates(data: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(data.join("templates")) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    v.sort();
    v
}

async fn wait_for_template(data: &Path, other_than: &[PathBuf]) -> PathBuf {
    let until = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(t) = templates(data)
            .into_iter()
            .find(|t| !other_than.contains(t))
        {
            return t;
        }
        assert!(Instant::now() < until, "no template was built");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the sandbox was made from a template: lohar records the claim
/// beside its boot phases.
async fn claimed(d: &TestDaemon, key: &str, id: &str) -> bool {
    let (_, out, _) = d
        .sh(
            key,
            id,
            "grep -c config_applied_ms= /run/bhatti/boot-timing.txt || true",
        )
        .await;
    out.trim() == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn creates_restore_the_template_of_their_image_vm() {
    let _serial = SERIAL.lock().await;
    // The daemon's own copy of the image: the test changes it below.
    let images = tempfile::Builder::new()
        .prefix("bhatti-templates-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let image = images.path().join("image.ext4");
    let src = bhatti_server::Config::default().rootfs_path();
    let st = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(&src)
        .arg(&image)
        .status()
        .unwrap();
    assert!(st.success(), "copy {}", src.display());
    let img = image.clone();
    let mut d = TestDaemon::start("qemu", move |c| {
        c.template_snapshots = true;
        c.rootfs = Some(img);
    })
    .await;
    let data = d.data();
    let key = d.user("alice", Default::default());

    // A miss boots, and builds the template behind it.
    let a = id_of(&d.create(&key, json!({"name": "first"})).await);
    assert!(!claimed(&d, &key, &a).await, "the first create booted");
    let template = wait_for_template(&data, &[]).await;

    // Hits: each restored copy is its own sandbox.
    let b = d
        .create(
            &key,
            json!({"name": "bee", "env": {"WHO": "b"},
                   "files": [{"guest_path": "/home/lohar/note", "content": "bm90ZQo=", "mode": "0600"}]}),
        )
        .await;
    let c = d
        .create(&key, json!({"name": "cee", "env": {"WHO": "c"}}))
        .await;
    let (b_id, c_id) = (id_of(&b), id_of(&c));
    for (id, name, who) in [(&b_id, "bee", "b"), (&c_id, "cee", "c")] {
        assert!(claimed(&d, &key, id).await, "{name} came from the template");
        let (code, out, err) = d.sh(&key, id, "hostname; echo $WHO; id -u").await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("{name}\n{who}\n1000\n"));
    }
    let (_, note, _) = d
        .sh(
            &key,
            &b_id,
            "stat -c '%u %a' /home/lohar/note; cat /home/lohar/note",
        )
        .await;
    assert_eq!(note, "1000 600\nnote\n");
    // No two share RNG state, though both woke from one memory image.
    let rand = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
    let (_, rb, _) = d.sh(&key, &b_id, rand).await;
    let (_, rc, _) = d.sh(&key, &c_id, rand).await;
    assert_eq!(rb.len(), 64, "{rb}");
    assert_ne!(rb, rc, "urandom differs across sandboxes of one template");
    // The template's token opens none of them.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(template.join("manifest.json")).unwrap()).unwrap();
    let template_token = manifest["agent_token"].as_str().unwrap().to_string();
    for sb in [&b, &c] {
        let ip: std::net::IpAddr = sb["ip"].as_str().unwrap().parse().unwrap();
        let stale = AgentClient::new(Transport::Tcp { addr: ip }, Some(template_token.clone()));
        assert!(
            matches!(stale.exec(["true"]).await, Err(ClientError::Auth)),
            "the template token is refused"
        );
    }
    // Nor a MAC address: each took a fresh one, and is reached through it.
    let (_, mb, _) = d.sh(&key, &b_id, "cat /sys/class/net/eth0/address").await;
    let (_, mc, _) = d.sh(&key, &c_id, "cat /sys/class/net/eth0/address").await;
    let template_mac = manifest["guest_mac"].as_str().unwrap();
    assert_ne!(mb.trim(), template_mac);
    assert_ne!(mb, mc, "two sandboxes of one template share a MAC");
    // The clock is the host's, not the template's.
    let (_, guest_now, _) = d.sh(&key, &c_id, "date +%s").await;
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let skew = guest_now.trim().parse::<u64>().unwrap().abs_diff(host_now);
    assert!(skew < 120, "guest clock {guest_now} vs host {host_now}");

    // A changed image is a different template: the next create boots, and
    // the new template replaces the old one.
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&image)
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let e = id_of(&d.create(&key, json!({"name": "after-change"})).await);
    assert!(
        !claimed(&d, &key, &e).await,
        "the old template was not used"
    );
    let newer = wait_for_template(&data, std::slice::from_ref(&template)).await;
    let until = Instant::now() + Duration::from_secs(30);
    while template.exists() {
        assert!(Instant::now() < until, "the stale template was not removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let g = id_of(&d.create(&key, json!({"name": "from-newer"})).await);
    assert!(claimed(&d, &key, &g).await);

    // A restart while a template builds (another shape) leaves no VMM but
    // the sandboxes'. (Five sandboxes is the default quota.)
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{a}"), Some(&key), None)
            .await,
        200
    );
    let h = id_of(
        &d.create(&key, json!({"name": "shape", "memory_mb": 320}))
            .await,
    );
    d.restart().await;
    let mut known: Vec<String> = vec![b_id, c_id, e, g, h];
    known.sort();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let running = vmm_sandboxes(&data);
        if running.iter().all(|id| known.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < until,
            "stray VMMs after the restart: {running:?} (sandboxes {known:?}, template {})",
            newer.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And every sandbox still answers.
    for id in &known {
        let (code, _, err) = d.sh(&key, id, "true").await;
        assert_eq!(code, 0, "{id}: {err}");
    }
}
