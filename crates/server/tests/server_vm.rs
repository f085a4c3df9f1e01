//! The server suite on a real daemon with the microVM engine on QEMU
//! (real VMs under TCG here): lifecycle, exec, files, shell, snapshots,
//! thermal transitions with short timeouts, and start-up recovery driven
//! through the real store and engine state. Reported as ignored without
//! root and the guest artifacts (see build.rs), never as passed.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::time::{Duration, Instant};

use common::{TestDaemon, SERIAL};
use serde_json::{json, Value};

const SKIP: &str = "needs root and the guest kernel + rootfs (scripts/guest)";

macro_rules! vm_test {
    ($name:ident, $scenario:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(bhatti_vm_tests),
            ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
        )]
        async fn $name() {
            let _serial = SERIAL.lock().await;
            let d = TestDaemon::start("qemu", |_| {}).await;
            $scenario(&d).await;
        }
    };
}

vm_test!(crud_lifecycle_vm, common::lifecycle);
vm_test!(exec_vm, common::exec);
vm_test!(files_vm, common::files);
vm_test!(websocket_shell_vm, common::shell_ws);
vm_test!(snapshots_and_fork_vm, common::snapshots);
vm_test!(egress_patch_fork_and_resume_vm, egress_scenario);

/// A resolver for the test run on loopback: every A question gets
/// 192.0.2.44 (TEST-NET-1: it proves the answer came from here).
async fn fake_upstream() -> std::net::SocketAddr {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut m = Message::response(q.metadata.id, q.metadata.op_code);
            m.metadata.response_code = ResponseCode::NoError;
            m.metadata.recursion_available = true;
            m.queries = q.queries.clone();
            if let Some(question) = q.queries.first() {
                if question.query_type() == RecordType::A {
                    m.answers.push(Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::A(A("192.0.2.44".parse().unwrap())),
                    ));
                }
            }
            let _ = sock.send_to(&m.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

/// `nslookup name` in sandbox `sb`, everything it printed.
async fn ask(d: &TestDaemon, key: &str, sb: &str, name: &str) -> String {
    let (_, out, err) = d.sh(key, sb, &format!("nslookup {name} 2>&1; true")).await;
    format!("{out}{err}")
}

/// Per-user DNS from inside real guests: siblings by `name` and
/// `name.sb`, another owner's names never to their addresses, other names
/// through the upstream; a fork and a resumed snapshot resolve like their
/// source; under egress
/// `deny` siblings still resolve but nothing is forwarded; after a daemon
/// restart the responders come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn per_user_dns_vm() {
    let _serial = SERIAL.lock().await;
    common::daemon_logs_in_test_output();
    let up = fake_upstream().await;
    let mut d = TestDaemon::start("qemu", |c| {
        c.dns_upstreams = vec![up.to_string()];
    })
    .await;
    let key = d.user("dns-a", Default::default());
    let other = d.user("dns-b", Default::default());
    d.create(&key, json!({"name": "web1"})).await;
    let web2 = d.create(&key, json!({"name": "Web2"})).await;
    let theirs = d.create(&other, json!({"name": "theirs"})).await;
    let (ip2, ip_theirs) = (
        web2["ip"].as_str().unwrap().to_string(),
        theirs["ip"].as_str().unwrap().to_string(),
    );
    let out = ask(&d, &key, "web1", "web2").await;
    assert!(out.contains(&ip2), "a sibling by name: {out}");
    let out = ask(&d, &key, "web1", "web2.sb").await;
    assert!(out.contains(&ip2), "a sibling as name.sb: {out}");
    let out = ask(&d, &key, "web1", "theirs").await;
    assert!(!out.contains(&ip_theirs), "another owner's name: {out}");
    let out = ask(&d, &key, "web1", "example.test").await;
    assert!(out.contains("192.0.2.44"), "forwarded upstream: {out}");
    let (_, resolv, _) = d.sh(&key, "web1", "cat /etc/resolv.conf").await;
    assert!(resolv.contains("nameserver 172.31.255.1"), "{resolv}");

    // A fork asks the responder of its own namespace.
    d.create(&key, json!({"name": "fork", "from": "web1"}))
        .await;
    let out = ask(&d, &key, "fork", "web2").await;
    assert!(out.contains(&ip2), "a fork resolves siblings: {out}");

    // So does a sandbox resumed from a named snapshot.
    let r = d
        .req(
            "POST",
            "/sandboxes/web1/checkpoint",
            Some(&key),
            Some(json!({"name": "web1-cp"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = d
        .req(
            "POST",
            "/snapshots/web1-cp/resume",
            Some(&key),
            Some(json!({"name": "resumed"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let out = ask(&d, &key, "resumed", "web2").await;
    assert!(
        out.contains(&ip2),
        "a resumed snapshot resolves siblings: {out}"
    );

    // Egress deny: siblings yes, the world no.
    d.create(&key, json!({"name": "locked", "egress": "deny"}))
        .await;
    let out = ask(&d, &key, "locked", "web2").await;
    assert!(out.contains(&ip2), "deny still resolves siblings: {out}");
    let out = ask(&d, &key, "locked", "example.test").await;
    assert!(!out.contains("192.0.2.44"), "deny forwards nothing: {out}");

    // A restarted daemon adopts the VMs and reopens their responders.
    d.restart().await;
    let mut out = String::new();
    for _ in 0..20 {
        out = ask(&d, &key, "web1", "web2").await;
        if out.contains(&ip2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(out.contains(&ip2), "after a restart: {out}");
}

/// Published ports on real VMs: domain and path routing through the
/// public listener, and a storm of 200 requests to a stopped (cold)
/// sandbox that restores it once and answers them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn publish_and_wake_storm_vm() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("qemu", common::public_config).await;
    common::publish(&d, common::Sleep::Stop).await;
}

/// Egress through the API on real VMs: a fork keeps its source's policy
/// (`deny` stays `deny`) unless the request names one; PATCH changes it
/// live and answers with it (bad values 400); a checkpoint records it and
/// its resume uses it; it survives a daemon restart.
async fn egress_scenario(d: &TestDaemon) {
    let key = d.user("egress", Default::default());
    let src = d
        .create(&key, json!({"name": "locked", "egress": "deny"}))
        .await;
    assert_eq!(src["egress"], "deny", "{src}");
    let path = format!("/sandboxes/{}", src["id"].as_str().unwrap());
    let fork = d
        .create(&key, json!({"name": "fork", "from": "locked"}))
        .await;
    assert_eq!(fork["egress"], "deny", "a fork of a deny sandbox: {fork}");
    let opened = d
        .create(
            &key,
            json!({"name": "fork-open", "from": "locked", "egress": ["198.51.100.0/24"]}),
        )
        .await;
    assert_eq!(opened["egress"], json!(["198.51.100.0/24"]));

    for (body, want) in [
        (json!({"egress": "public"}), json!("public")),
        (json!({"egress": ["192.0.2.0/24"]}), json!(["192.0.2.0/24"])),
        (json!({"egress": "deny"}), json!("deny")),
    ] {
        let r = d.req("PATCH", &path, Some(&key), Some(body)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["egress"], want);
        let g = d.req("GET", &path, Some(&key), None).await.json();
        assert_eq!(g["egress"], want);
    }
    for bad in [json!("sometimes"), json!(["300.0.0.0/8"])] {
        let r = d
            .req("PATCH", &path, Some(&key), Some(json!({"egress": bad})))
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }

    let c = d
        .req(
            "POST",
            &format!("{path}/checkpoint"),
            Some(&key),
            Some(json!({"name": "locked-cp"})),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text());
    let r = d
        .req(
            "POST",
            "/snapshots/locked-cp/resume",
            Some(&key),
            Some(json!({"name": "resumed"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["egress"],
        "deny",
        "resume keeps the recorded policy"
    );
    assert_eq!(d.sh(&key, "resumed", "echo up").await.1, "up\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn egress_survives_restart_vm() {
    let _serial = SERIAL.lock().await;
    let mut d = TestDaemon::start("qemu", |_| {}).await;
    let key = d.user("egress-restart", Default::default());
    let sb = d
        .create(&key, json!({"name": "kept", "egress": "deny"}))
        .await;
    let path = format!("/sandboxes/{}", sb["id"].as_str().unwrap());
    let r = d
        .req(
            "PATCH",
            &path,
            Some(&key),
            Some(json!({"egress": ["192.0.2.0/24"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.restart().await;
    let g = d.req("GET", &path, Some(&key), None).await.json();
    assert_eq!(g["egress"], json!(["192.0.2.0/24"]), "{g}");
    assert_eq!(d.sh(&key, "kept", "echo up").await.1, "up\n");
}

async fn thermal_of(d: &TestDaemon, key: &str, id: &str) -> (String, String) {
    let g = d
        .req("GET", &format!("/sandboxes/{id}"), Some(key), None)
        .await
        .json();
    let list = d.req("GET", "/sandboxes", Some(key), None).await.json();
    let t = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .map(|s| s["thermal"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    (g["status"].as_str().unwrap_or("").to_string(), t)
}

async fn wait_for(
    d: &TestDaemon,
    key: &str,
    id: &str,
    status: &str,
    thermal: &str,
    within: Duration,
) {
    let t0 = Instant::now();
    loop {
        let now = thermal_of(d, key, id).await;
        if now.0 == status && now.1 == thermal {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "sandbox {id} never reached {status}/{thermal:?}; is {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn thermal_transitions_with_short_timeouts() {
    let _ = SKIP;
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("qemu", |c| {
        c.thermal.enabled = true;
        c.thermal.warm_timeout_secs = 2.0;
        c.thermal.cold_timeout_secs = 3.0;
        c.thermal.tick_secs = 0.5;
    })
    .await;
    let key = d.user("thermal", Default::default());
    let sb = d.create(&key, json!({"name": "idle"})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    let pinned = d
        .create(&key, json!({"name": "pinned", "keep_hot": true}))
        .await;
    let pid = pinned["id"].as_str().unwrap().to_string();
    let shelled = d.create(&key, json!({"name": "shelled"})).await;
    let sid = shelled["id"].as_str().unwrap().to_string();
    assert_eq!(d.sh(&key, &id, "echo warm-me > /workspace/t").await.0, 0);
    d.detach(
        &key,
        &id,
        &["sh", "-c", "echo $$ > /workspace/pid; exec sleep 100"],
    )
    .await;
    let mut ws = d
        .ws(&format!("/sandboxes/{sid}/ws?new=true"), Some(&key))
        .await
        .expect("ws");
    common::ws_session(&mut ws).await;

    // hot → warm (paused), then warm → cold (snapshot on disk, VMM gone).
    wait_for(&d, &key, &id, "running", "warm", Duration::from_secs(60)).await;
    wait_for(&d, &key, &id, "stopped", "", Duration::from_secs(90)).await;
    // The next request wakes it, with memory intact.
    let t = Instant::now();
    let (_, out, _) = d
        .sh(
            &key,
            &id,
            "cat /workspace/t; kill -0 $(cat /workspace/pid) && echo proc-alive",
        )
        .await;
    assert_eq!(out, "warm-me\nproc-alive\n");
    eprintln!("cold wake + exec took {:?}", t.elapsed());
    let (st, th) = thermal_of(&d, &key, &id).await;
    assert_eq!((st.as_str(), th.as_str()), ("running", "hot"));

    // keep_hot and an attached shell kept their sandboxes hot all along.
    assert_eq!(
        thermal_of(&d, &key, &pid).await,
        ("running".into(), "hot".into())
    );
    assert_eq!(
        thermal_of(&d, &key, &sid).await,
        ("running".into(), "hot".into())
    );
    drop(ws);
    wait_for(&d, &key, &sid, "running", "warm", Duration::from_secs(60)).await;
    // Warm → hot on a request, too.
    assert_eq!(d.sh(&key, &sid, "echo back").await.1, "back\n");

    // Every transition left an event.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let events = d
        .store()
        .events(&bhatti_store::EventQuery {
            user_id: None,
            ..Default::default()
        })
        .unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e.sandbox_id == id)
        .map(|e| e.event_type.as_str())
        .collect();
    for k in [
        "sandbox.created",
        "thermal.pause",
        "thermal.snapshot",
        "sandbox.stopped",
        "thermal.wake",
    ] {
        assert!(kinds.contains(&k), "no {k} event in {kinds:?}");
    }
    assert!(!events
        .iter()
        .any(|e| e.sandbox_id == pid && e.event_type == "thermal.pause"));
}

/// The seed's "Daemon Recovery" list, driven through the real store and
/// the real engine state in one recovery pass: stopped with a snapshot →
/// stopped; stopped without → unknown; running at a graceful shutdown →
/// snapshotted → stopped; destroyed → gone; another engine's sandbox →
/// left alone, marked; numbers stored as floats → read fine. (Running
/// without a snapshot — a crash — is the SIGKILL test in crates/bhatti.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn recovery_after_restart() {
    let _serial = SERIAL.lock().await;
    let mut d = TestDaemon::start("qemu", |_| {}).await;
    let key = d.user("recovery", Default::default());
    let mk = |n: &'static str| json!({"name": n});
    let a = d.create(&key, mk("stopped-ok")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = d.create(&key, mk("stopped-nosnap")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let c = d.create(&key, mk("running")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let gone = d.create(&key, mk("destroyed")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for id in [&a, &b, &c] {
        assert_eq!(
            d.sh(&key, id, &format!("echo data-{id} > /workspace/d"))
                .await
                .0,
            0
        );
    }
    d.detach(
        &key,
        &c,
        &["sh", "-c", "echo $$ > /workspace/pid; exec sleep 1000"],
    )
    .await;
    for id in [&a, &b] {
        assert_eq!(
            d.code("POST", &format!("/sandboxes/{id}/stop"), Some(&key), None)
                .await,
            200
        );
    }
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{gone}"), Some(&key), None)
            .await,
        200
    );
    // A sandbox of another engine, as a daemon that used to run Docker left it.
    let owner = d.store().user_by_api_key(&key).unwrap();
    d.store()
        .insert_sandbox(&bhatti_store::NewSandbox {
            id: "00000000000000aa".into(),
            user_id: owner.id.clone(),
            name: "docker-era".into(),
            engine: "docker".into(),
            vm_state: Some(json!({"engine": "docker", "id": "00000000000000aa", "name": "docker-era", "status": "running", "generation": 1})),
            ..Default::default()
        })
        .unwrap();
    // Type coercion: A's persisted state with its integers as floats.
    let row = d.store().sandbox_by_id(&a).unwrap();
    let mut vm: Value = serde_json::from_str(row.vm_state.as_deref().unwrap()).unwrap();
    floatify(&mut vm);
    assert!(vm["generation"].is_f64());
    d.store()
        .update_runtime(
            &a,
            &bhatti_store::RuntimeUpdate {
                vm_state: Some(vm),
                ..Default::default()
            },
        )
        .unwrap();

    // A graceful shutdown leaves C running (the next daemon adopts it);
    // then B loses its snapshot.
    d.daemon.take().unwrap().shutdown().await;
    let snap = d.data().join("sandboxes").join(&b).join("snapshot");
    assert!(snap.is_dir(), "{} missing", snap.display());
    std::fs::remove_dir_all(&snap).unwrap();
    // This daemon's own shutdown (below) is the snapshotting kind.
    d.cfg.snapshot_on_shutdown = true;
    d.start_again().await;

    let get = |id: String| {
        let d = &d;
        let key = key.clone();
        async move {
            d.req("GET", &format!("/sandboxes/{id}"), Some(&key), None)
                .await
                .json()
        }
    };
    let ga = get(a.clone()).await;
    assert_eq!(ga["status"], "stopped", "{ga}");
    let gb = get(b.clone()).await;
    assert_eq!(gb["status"], "crashed", "{gb}");
    assert!(
        gb["status_reason"].as_str().unwrap().contains("snapshot"),
        "{gb}"
    );
    let gc = get(c.clone()).await;
    assert_eq!(
        (&gc["status"], &gc["thermal"]),
        (&json!("running"), &json!("hot")),
        "{gc}"
    );
    assert_eq!(
        d.code("GET", &format!("/sandboxes/{gone}"), Some(&key), None)
            .await,
        404
    );
    let ge = get("00000000000000aa".into()).await;
    assert_eq!(ge["status"], "unknown");
    assert!(
        ge["status_reason"].as_str().unwrap().contains("docker"),
        "{ge}"
    );

    // Recovered sandboxes wake on the next request with their data (C was
    // never down: its process runs on); the crashed one says why instead
    // of waking, and boots afresh from its disk on start.
    assert_eq!(
        d.sh(&key, &a, "cat /workspace/d").await.1,
        format!("data-{a}\n")
    );
    let (_, out, _) = d
        .sh(
            &key,
            &c,
            "cat /workspace/d; kill -0 $(cat /workspace/pid) && echo alive",
        )
        .await;
    assert_eq!(out, format!("data-{c}\nalive\n"));
    let r = d
        .req(
            "POST",
            &format!("/sandboxes/{b}/exec"),
            Some(&key),
            Some(json!({"cmd": ["true"]})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("crashed") && e.contains("snapshot"), "{e}");
    assert_eq!(
        d.code("POST", &format!("/sandboxes/{b}/start"), Some(&key), None)
            .await,
        200
    );
    assert_eq!(
        d.sh(&key, &b, "cat /workspace/d").await.1,
        format!("data-{b}\n"),
        "the crashed sandbox's disk came back"
    );

    // With snapshot_on_shutdown (a host about to reboot), a graceful
    // shutdown puts C to disk instead; it wakes with its process.
    d.restart().await;
    let gc = d
        .req("GET", &format!("/sandboxes/{c}"), Some(&key), None)
        .await
        .json();
    assert_eq!(gc["status"], "stopped", "{gc}");
    let (_, out, _) = d
        .sh(&key, &c, "kill -0 $(cat /workspace/pid) && echo alive")
        .await;
    assert_eq!(out, "alive\n");
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{b}"), Some(&key), None)
            .await,
        200
    );
}

/// A VM killed under its sandbox (`kill -9` of its QEMU) is noticed at
/// once: the sandbox is `crashed` with the reason within a health tick,
/// never `running`, and an event records it. Requests get 409 with the
/// reason; `start` boots it afresh from its kept disk, so a file written
/// and synced before the kill is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn killed_vmm_is_crashed_then_boots_from_disk_vm() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("qemu", |c| c.thermal.tick_secs = 0.5).await;
    let kill = |d: &TestDaemon, id: &str| {
        let pids = bhatti_engine::microvm::vmm_pids(&d.data().join("sandboxes").join(id));
        assert_eq!(pids.len(), 1, "{pids:?}");
        // SAFETY: plain kill(2) of the QEMU this test's daemon started.
        assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
    };
    let (key, id) = common::crash_and_start(&d, kill, "signal 9").await;
    let dir = d.data().join("sandboxes").join(&id);
    assert_eq!(
        bhatti_engine::microvm::vmm_pids(&dir).len(),
        1,
        "one VMM after the start"
    );
    // The console shows the boot after the crash, and is a bounded tail
    // on request.
    let con = d
        .req("GET", &format!("/sandboxes/{id}/console"), Some(&key), None)
        .await;
    assert_eq!(con.status, 200);
    let text = String::from_utf8_lossy(&con.body);
    // The kernel boots `quiet`; lohar says when it is up.
    assert!(
        text.contains("lohar: ready"),
        "a boot in the console:\n{text}"
    );
    let tail = d
        .req(
            "GET",
            &format!("/sandboxes/{id}/console?bytes=100"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(tail.status, 200);
    assert_eq!(tail.body.len(), 100);
    assert!(text.ends_with(&*String::from_utf8_lossy(&tail.body)));
    let bad = format!("/sandboxes/{id}/console?bytes=0");
    assert_eq!(d.code("GET", &bad, Some(&key), None).await, 400);

    let path = format!("/sandboxes/{id}");
    assert_eq!(d.code("DELETE", &path, Some(&key), None).await, 200);
    assert!(
        bhatti_engine::microvm::vmm_pids(&dir).is_empty(),
        "a VMM outlived destroy"
    );
}

fn floatify(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_u64() => *v = json!(n.as_u64().unwrap() as f64),
        Value::Array(a) => a.iter_mut().for_each(floatify),
        Value::Object(o) => o.values_mut().for_each(floatify),
        _ => {}
    }
}

/// Two daemons on one host, each with its own data directory (as a second
/// `bhatti serve`, or a test run beside a live daemon): they claim different
/// address pools, name their chains and veths apart, and creating,
/// destroying and restarting either one never disturbs the other's
/// sandboxes. Start-up and destroy clean-up used to remove every
/// `bhatti-<id>` namespace the cleaning daemon's store did not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn two_daemons_side_by_side_vm() {
    let _serial = SERIAL.lock().await;
    let mut a = TestDaemon::start("qemu", |_| {}).await;
    let mut b = TestDaemon::start("qemu", |_| {}).await;
    let pool = |d: &TestDaemon| {
        std::fs::read_to_string(d.data().join("net-pool"))
            .expect("net-pool")
            .trim()
            .to_string()
    };
    let (pa, pb) = (pool(&a), pool(&b));
    assert_ne!(pa, pb, "two daemons share an address pool");
    // A second daemon on a's data directory refuses to start (it would
    // take a's socket and run recovery over a's live sandboxes).
    match bhatti_server::start(a.cfg.clone()).await {
        Err(bhatti_server::daemon::DaemonError::DataDirInUse { path }) => {
            assert_eq!(path, a.data())
        }
        Err(e) => panic!("wrong refusal: {e}"),
        Ok(_) => panic!("a second daemon started on a's data directory"),
    }
    let ka = a.user("side-a", Default::default());
    let kb = b.user("side-b", Default::default());
    let id = |v: Value| v["id"].as_str().expect("id").to_string();
    let a1 = id(a.create(&ka, json!({"name": "a1"})).await);
    let b1 = id(b.create(&kb, json!({"name": "b1"})).await);
    works(&a, &ka, &a1, "a1 at first").await;
    works(&b, &kb, &b1, "b1 at first").await;

    // Create and destroy on b while a serves.
    let b2 = id(b.create(&kb, json!({"name": "b2"})).await);
    assert_eq!(
        b.code("DELETE", &format!("/sandboxes/{b2}"), Some(&kb), None)
            .await,
        200
    );
    works(&a, &ka, &a1, "a1 after b destroyed a sandbox").await;

    // Restart each (start-up clean-up runs) while the other serves.
    b.restart().await;
    works(&a, &ka, &a1, "a1 after b restarted").await;
    works(&b, &kb, &b1, "b1 after its daemon restarted").await;
    a.restart().await;
    works(&b, &kb, &b1, "b1 after a restarted").await;
    works(&a, &ka, &a1, "a1 after its daemon restarted").await;
    assert_eq!(pool(&a), pa, "a restart keeps the pool");
    assert_eq!(pool(&b), pb, "b restart keeps the pool");
}

async fn works(d: &TestDaemon, key: &str, sb: &str, what: &str) {
    let (code, out, err) = d.sh(key, sb, "echo alive").await;
    assert_eq!((code, out.trim()), (0, "alive"), "{what}: {err}");
}

/// A client that goes away 0.5 s into a create, while the VM is still
/// booting, leaves all or nothing: the create either finishes into a
/// running, usable sandbox (the daemon runs it to its end whatever the
/// connection does) or leaves no trace, never an `unknown` row; and once
/// removed, no row, quota use, sandbox directory or network is left (the
/// ledger of this daemon's networks ends empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn abandoned_create_is_all_or_nothing_vm() {
    use tokio::io::AsyncWriteExt;
    common::daemon_logs_in_test_output();
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("qemu", |_| {}).await;
    let key = d.user(
        "abandon",
        bhatti_store::Quotas {
            max_sandboxes: 1,
            ..Default::default()
        },
    );
    let body = r#"{"name":"abandoned"}"#;
    let req = format!(
        "POST /sandboxes HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    s.write_all(req.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(s);

    // Settles as running (the create finished) or as nothing.
    let deadline = Instant::now() + Duration::from_secs(120);
    let left = loop {
        let listed = d.req("GET", "/sandboxes", Some(&key), None).await.json();
        let rows = listed.as_array().cloned().unwrap_or_default();
        // (While the create runs, its row is there without a state yet.)
        if let Some(sb) = rows.first() {
            if sb["status"] == "running" {
                break Some(sb["id"].as_str().expect("id").to_string());
            }
        } else if Instant::now() > deadline - Duration::from_secs(100) {
            break None;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned create never settled: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if let Some(id) = left {
        works(&d, &key, &id, "the finished create").await;
        assert_eq!(
            d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
                .await,
            200
        );
    }
    assert_nothing_left(&d);
    // The quota is free again: a create now succeeds.
    let id = d.create(&key, json!({"name": "after"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        200
    );
}

/// A stopped sandbox whose network namespace was deleted behind the
/// daemon's back starts again: the network is rebuilt with the same
/// address (it used to answer 500 "already exists" until a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn lost_namespace_is_rebuilt_on_start_vm() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("qemu", |_| {}).await;
    let key = d.user("lost-netns", Default::default());
    let sb = d.create(&key, json!({"name": "netns"})).await;
    let id = sb["id"].as_str().expect("id").to_string();
    let ip = sb["ip"].clone();
    assert_eq!(d.sh(&key, &id, "echo kept > /workspace/k").await.0, 0);
    assert_eq!(
        d.code("POST", &format!("/sandboxes/{id}/stop"), Some(&key), None)
            .await,
        200
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "del", &format!("bhatti-{id}")])
        .output()
        .expect("ip netns del");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = d
        .req("POST", &format!("/sandboxes/{id}/start"), Some(&key), None)
        .await;
    assert_eq!(
        r.status,
        200,
        "start after the namespace was lost: {}",
        r.text()
    );
    let (code, out, _) = d.sh(&key, &id, "cat /workspace/k").await;
    assert_eq!((code, out.trim()), (0, "kept"));
    let now = d
        .req("GET", &format!("/sandboxes/{id}"), Some(&key), None)
        .await;
    assert_eq!(now.json()["ip"], ip, "the address is kept");
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        200
    );
}

/// A DELETE that lands while its sandbox is still being created (as the
/// lifetime reaper's destroy can): the create answers 409 rather than a
/// 500 from having its VM killed under it, and once both are done nothing
/// is left: no row, VMM, network or directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_vm_tests),
    ignore = "needs root and the guest kernel + rootfs (scripts/guest)"
)]
async fn delete_during_create_leaves_nothing_vm() {
    common::daemon_logs_in_test_output();
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("qemu", |_| {}).await;
    let key = d.user("racer", Default::default());
    let create = tokio::spawn(post_create(d.addr, key.clone(), "racing"));
    // The row appears before the VM is up: delete it by name then.
    let deadline = Instant::now() + Duration::from_secs(30);
    let deleted = loop {
        let code = d
            .code("DELETE", "/sandboxes/racing", Some(&key), None)
            .await;
        if code == 200 {
            break true;
        }
        assert_eq!(code, 404);
        if create.is_finished() || Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(deleted, "the create's row never appeared while it ran");
    let (status, body) = create.await.expect("create task");
    assert!(
        status == 409 || status == 201,
        "create answered {status}: {body}"
    );
    if status == 201 {
        // It finished before the DELETE reached the engine: the DELETE
        // removed the whole sandbox.
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            d.code(
                "GET",
                &format!("/sandboxes/{}", v["id"].as_str().unwrap()),
                Some(&key),
                None
            )
            .await,
            404
        );
    }
    let listed = d.req("GET", "/sandboxes", Some(&key), None).await.json();
    assert_eq!(listed, json!([]), "a row is left");
    assert_nothing_left(&d);
}

/// No network in this daemon's ledger, no sandbox directory, no VMM.
fn assert_nothing_left(d: &TestDaemon) {
    let empty = |dir: std::path::PathBuf| {
        std::fs::read_dir(dir)
            .map(|rd| rd.count() == 0)
            .unwrap_or(true)
    };
    assert!(
        empty(d.data().join("net")),
        "a network is left in the ledger"
    );
    assert!(
        empty(d.data().join("sandboxes")),
        "a sandbox directory is left"
    );
    assert!(
        bhatti_engine::microvm::vmm_pids(&d.data()).is_empty(),
        "a VMM is left"
    );
}

/// `POST /sandboxes {"name": <name>}` on a connection of its own, so it can
/// run beside the test's other requests: (status, body).
async fn post_create(addr: std::net::SocketAddr, key: String, name: &str) -> (u16, String) {
    let body = json!({ "name": name }).to_string();
    let req = format!(
        "POST /sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}
