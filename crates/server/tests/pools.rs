//! Warm pools on a real daemon with the QEMU engine: the pool fills from
//! its image's template snapshot, its sandboxes wait paused behind a
//! namespace with no way in or out, and creates take them: each claimed
//! sandbox is its caller's (hostname, env, files, secrets, a fresh token,
//! fresh entropy, a fresh MAC address), two creates never share one, and a
//! restart leaves no pooled VMM, namespace or directory behind. Reported as ignored without
//! root and the guest artifacts.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bhatti_agent_client::{AgentClient, ClientError, Transport};
use common::{id_of, vmm_sandboxes, TestDaemon, SERIAL};
use serde_json::{json, Value};

async fn pools(d: &TestDaemon, admin: &str) -> Value {
    let r = d.req("GET", "/admin/pools", Some(admin), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Waits until the (only) pool has `n` ready sandboxes.
async fn wait_ready(d: &TestDaemon, admin: &str, n: u64) -> Value {
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        let p = pools(d, admin).await;
        if p["pools"][0]["ready"].as_u64() == Some(n) {
            return p;
        }
        assert!(Instant::now() < until, "the pool did not fill: {p}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Links in sandbox `id`'s namespace (`ip -o link` names).
fn links_of(id: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", &format!("bhatti-{id}"), "-o", "link"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn creates_take_pooled_sandboxes_vm() {
    let _serial = SERIAL.lock().await;
    common::daemon_logs_in_test_output();
    let mut d = TestDaemon::start("qemu", |c| {
        c.template_snapshots = true;
        c.pools = Some(vec![bhatti_api::PoolConfig {
            image: None,
            cpus: None,
            memory_mb: None,
            size: 2,
        }]);
    })
    .await;
    let data = d.data();
    let admin = d.user("admin", Default::default());
    let key = d.user("alice", Default::default());

    // Only operators see or set pools.
    assert_eq!(d.code("GET", "/admin/pools", Some(&key), None).await, 403);
    assert_eq!(
        d.code(
            "PUT",
            "/admin/pools",
            Some(&key),
            Some(json!({"pools": [{"size": 1}]}))
        )
        .await,
        403
    );
    assert_eq!(
        d.code(
            "PUT",
            "/admin/pools",
            Some(&admin),
            Some(json!({"pools": [{"size": 33}]}))
        )
        .await,
        400
    );

    // The pool builds its template, then fills.
    let p = wait_ready(&d, &admin, 2).await;
    assert_eq!(p["enabled"], true, "{p}");
    let pool = &p["pools"][0];
    assert_eq!(pool["template"], true, "{p}");
    assert!(pool["rss_bytes"].as_u64().unwrap() > 0, "{p}");
    // Waiting sandboxes are nobody's: no row, and their namespace has
    // nothing but the tap (no veth, so no way in or out).
    // (The template's own VM may still be on its way out.)
    let until = Instant::now() + Duration::from_secs(30);
    let pooled = loop {
        let v = vmm_sandboxes(&data);
        if v.len() == 2 || Instant::now() > until {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(pooled.len(), 2, "{pooled:?}");
    for id in &pooled {
        assert!(d.store().sandbox_by_id(id).is_err(), "{id} has no row");
        let mut links = links_of(id);
        links.sort();
        assert_eq!(links, ["lo", "tap0"], "{id}");
    }
    let metrics = d.req("GET", "/metrics", Some(&admin), None).await.text();
    assert!(metrics.contains("bhatti_pool_ready{"), "{metrics}");
    let tenant = d.req("GET", "/metrics", Some(&key), None).await.text();
    assert!(!tenant.contains("bhatti_pool"), "tenants do not see pools");

    // A claim: the caller's hostname, env, files and secrets.
    assert_eq!(
        d.code(
            "POST",
            "/secrets",
            Some(&key),
            Some(json!({"name": "API_TOKEN", "value": "s3cret"}))
        )
        .await,
        201
    );
    let a = d
        .create(
            &key,
            json!({"name": "ay", "env": {"WHO": "a"}, "secrets": ["API_TOKEN"],
                   "files": [{"guest_path": "/home/lohar/note", "content": "bm90ZQo=", "mode": "0600"}]}),
        )
        .await;
    let a_id = id_of(&a);
    assert!(
        pooled.contains(&a_id),
        "{a_id} came from the pool {pooled:?}"
    );
    let (code, out, err) = d
        .sh(&key, &a_id, "hostname; echo $WHO $API_TOKEN; id -u; stat -c '%u %a' /home/lohar/note; cat /home/lohar/note")
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "ay\na s3cret\n1000\n1000 600\nnote\n");
    // Joined to the host in alice's range, now with its veth.
    assert!(links_of(&a_id).contains(&"eth0".to_string()));
    let p = pools(&d, &admin).await;
    assert_eq!(p["pools"][0]["hits"], 1, "{p}");

    // The pool's token (the template's) opens nothing.
    let templates: Vec<_> = std::fs::read_dir(data.join("templates"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    assert_eq!(templates.len(), 1, "{templates:?}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(templates[0].join("manifest.json")).unwrap())
            .unwrap();
    let pool_token = manifest["agent_token"].as_str().unwrap().to_string();
    let ip: std::net::IpAddr = a["ip"].as_str().unwrap().parse().unwrap();
    let stale = AgentClient::new(Transport::Tcp { addr: ip }, Some(pool_token));
    assert!(
        matches!(stale.exec(["true"]).await, Err(ClientError::Auth)),
        "the pool token is refused after the claim"
    );

    // Two creates at once: never the same VM.
    let (b, c) = tokio::join!(
        d.create(&key, json!({"name": "bee"})),
        d.create(&key, json!({"name": "cee"}))
    );
    let (b_id, c_id) = (id_of(&b), id_of(&c));
    assert_ne!(b_id, c_id);
    assert_ne!(b["ip"], c["ip"]);
    for (id, name) in [(&b_id, "bee"), (&c_id, "cee")] {
        let (_, out, _) = d.sh(&key, id, "hostname").await;
        assert_eq!(out, format!("{name}\n"));
    }
    let running = vmm_sandboxes(&data);
    for id in [&a_id, &b_id, &c_id] {
        assert!(running.contains(id), "{id} runs its own VMM: {running:?}");
    }
    // No two share RNG state, though all woke from one memory image.
    let rand = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
    let mut seen = Vec::new();
    for id in [&a_id, &b_id, &c_id] {
        let (_, r, _) = d.sh(&key, id, rand).await;
        assert_eq!(r.len(), 64, "{r}");
        assert!(
            !seen.contains(&r),
            "urandom differs across pooled sandboxes"
        );
        seen.push(r);
    }
    // Nor a MAC address: each took a fresh one in its claim, and is
    // reached through it.
    let template_mac = manifest["guest_mac"].as_str().unwrap().to_string();
    let mut macs = Vec::new();
    for id in [&a_id, &b_id, &c_id] {
        let (code, m, err) = d.sh(&key, id, "cat /sys/class/net/eth0/address").await;
        assert_eq!(code, 0, "{err}");
        let m = m.trim().to_string();
        assert_ne!(m, template_mac, "{id} kept the template's MAC");
        assert!(!macs.contains(&m), "two sandboxes share the MAC {m}");
        macs.push(m);
    }
    // The sandbox keeps it through a memory snapshot (stop, start).
    for verb in ["stop", "start"] {
        let path = format!("/sandboxes/{a_id}/{verb}");
        assert_eq!(d.code("POST", &path, Some(&key), None).await, 200, "{verb}");
    }
    let (code, m, err) = d.sh(&key, &a_id, "cat /sys/class/net/eth0/address").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(m.trim(), macs[0], "the MAC after stop and start");
    let p = pools(&d, &admin).await;
    let hits = p["pools"][0]["hits"].as_u64().unwrap();
    let misses = p["pools"][0]["misses"].as_u64().unwrap();
    assert_eq!(hits + misses, 3, "{p}");
    assert!(hits >= 2, "{p}");

    // An operator empties the pool: its waiting sandboxes go.
    let r = d
        .req(
            "PUT",
            "/admin/pools",
            Some(&admin),
            Some(json!({"pools": [{"size": 0}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mine = [a_id.clone(), b_id.clone(), c_id.clone()];
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let extra: Vec<String> = vmm_sandboxes(&data)
            .into_iter()
            .filter(|id| !mine.contains(id))
            .collect();
        if extra.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "pooled VMMs left: {extra:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Refilled, then a restart: the pooled sandboxes of before are gone
    // (VMM, namespace, directory); the users' run on.
    let r = d
        .req(
            "PUT",
            "/admin/pools",
            Some(&admin),
            Some(json!({"pools": [{"size": 2}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_ready(&d, &admin, 2).await;
    let before: Vec<String> = vmm_sandboxes(&data)
        .into_iter()
        .filter(|id| !mine.contains(id))
        .collect();
    assert_eq!(before.len(), 2, "{before:?}");
    d.restart().await;
    let now = vmm_sandboxes(&data);
    for id in &before {
        assert!(!now.contains(id), "pooled VMM {id} outlived its daemon");
        assert!(
            !Path::new(&format!("/run/netns/bhatti-{id}")).exists(),
            "pooled namespace {id} left"
        );
        assert!(
            !data.join("sandboxes").join(id).exists(),
            "pooled dir {id} left"
        );
    }
    for id in &mine {
        let (code, _, err) = d.sh(&key, id, "true").await;
        assert_eq!(code, 0, "{id}: {err}");
    }
    // The new daemon fills its own pool again (the config's size).
    wait_ready(&d, &admin, 2).await;
}
