//! The server suite on a real daemon with the Docker engine (real dockerd,
//! real sockets, real SQLite). Reported as ignored when dockerd is not
//! available at build time (see build.rs), never as passed.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use common::{TestDaemon, SERIAL};

macro_rules! docker_test {
    ($name:ident, $scenario:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(bhatti_docker),
            ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
        )]
        async fn $name() {
            let _serial = SERIAL.lock().await;
            let d = TestDaemon::start("docker", |_| {}).await;
            $scenario(&d).await;
        }
    };
}

docker_test!(crud_lifecycle, common::lifecycle);
docker_test!(exec_buffered_streaming_detached_timeout, common::exec);
docker_test!(files_read_write_ls_stat_and_errors, common::files);
docker_test!(websocket_shell_and_piped_sessions, common::shell_ws);
docker_test!(proxy_routing, common::proxy);
docker_test!(secrets_templates_volumes_crud, common::resources);
docker_test!(tenant_isolation, common::isolation);
docker_test!(quotas_and_bad_input, common::limits_and_bad_input);
docker_test!(lifetimes_kill_and_pause, common::lifetimes);

/// Published ports on the public listener (domain and path mode), and a
/// storm of 200 requests to a paused sandbox that wakes it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn publish_and_the_public_listener() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("docker", |c| {
        common::public_config(c);
        c.thermal.enabled = true;
        c.thermal.warm_timeout_secs = 1.0;
        c.thermal.tick_secs = 0.3;
    })
    .await;
    common::publish(&d, common::Sleep::Idle).await;
}

/// Sibling names on Docker: Docker's DNS on the owner's network answers a
/// sandbox's name and `name.sb`; another owner's sandboxes live on another
/// network, whose names it does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn sibling_names_resolve_on_docker() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("docker", |_| {}).await;
    let a = d.user("dns-a", Default::default());
    let b = d.user("dns-b", Default::default());
    d.create(&a, serde_json::json!({"name": "a1"})).await;
    let a2 = d.create(&a, serde_json::json!({"name": "a2"})).await;
    let b1 = d.create(&b, serde_json::json!({"name": "b1"})).await;
    let ip = |v: &serde_json::Value| v["ip"].as_str().unwrap().to_string();
    let (ip_a2, ip_b1) = (ip(&a2), ip(&b1));
    assert!(!ip_a2.is_empty() && !ip_b1.is_empty());
    for name in ["a2", "a2.sb"] {
        let (_, out, err) = d.sh(&a, "a1", &format!("nslookup {name} 2>&1; true")).await;
        assert!(out.contains(&ip_a2), "{name}: {out}{err}");
    }
    // Not asked from a1: Docker's DNS would forward an unknown name to the
    // host's resolvers, off loopback. Each owner has a network of its own.
    let net = |v: &serde_json::Value| {
        d.store()
            .sandbox_by_id(v["id"].as_str().unwrap())
            .unwrap()
            .vm_state
            .unwrap_or_default()
    };
    let (na2, nb1) = (net(&a2), net(&b1));
    assert_ne!(ip_a2, ip_b1);
    assert!(
        na2.contains("\"network\"") && nb1.contains("\"network\""),
        "{na2} {nb1}"
    );
    let network = |state: &str| {
        let v: serde_json::Value = serde_json::from_str(state).unwrap();
        v["detail"]["network"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_ne!(network(&na2), network(&nb1), "owners never share a network");
}

/// The public listener's limits: past a client address's burst, 429 with
/// `Retry-After`; an unknown alias is 404 and charges nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn public_listener_limits_each_address() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("docker", |c| {
        common::public_config(c);
        c.rate_limits.enabled = true;
        c.rate_limits.public_per_ip = bhatti_server::config::Bucket {
            burst: 5.0,
            per_minute: 0.0,
        };
    })
    .await;
    let key = d.user("limited", Default::default());
    let sb = d.create(&key, serde_json::json!({"name": "lim"})).await;
    common::serve_www(&d, &key, sb["id"].as_str().unwrap(), "hello-limit").await;
    let r = d
        .req(
            "POST",
            "/sandboxes/lim/publish",
            Some(&key),
            Some(serde_json::json!({"port": 8000, "alias": "lim"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    for _ in 0..10 {
        let r = d.public_get("127.0.0.1", "/unknown-alias/").await;
        assert_eq!(r.status, 404, "unknown: 404, before any limit");
    }
    let host = format!("lim.{}", common::ZONE);
    for i in 0..5 {
        let r = d.public_get(&host, "/").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = d.public_get(&host, "/").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(r.json()["reason"], "rate_limited");
}

/// The public listener with a configured certificate: TLS with SNI for an
/// alias in the zone, the guest told the client used https, and path mode
/// over the same TLS listener; a client that does not trust the
/// certificate gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn public_listener_serves_tls() {
    let _serial = SERIAL.lock().await;
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![
        format!("*.{}", common::ZONE),
        common::API_HOST.to_string(),
    ])
    .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let d = TestDaemon::start("docker", |c| {
        common::public_config(c);
        if let Some(dom) = c.domain.as_mut() {
            dom.tls_cert = Some(cert_path.clone());
            dom.tls_key = Some(key_path.clone());
        }
    })
    .await;
    let api_key = d.user("tls", Default::default());
    let sb = d.create(&api_key, serde_json::json!({"name": "tls"})).await;
    let id = sb["id"].as_str().unwrap();
    common::serve_www(&d, &api_key, id, "hello-tls").await;
    let r = d
        .req(
            "POST",
            "/sandboxes/tls/publish",
            Some(&api_key),
            Some(serde_json::json!({"port": 8000, "alias": "secure"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let port = d.public().port();
    assert_eq!(
        r.json()["url"],
        format!("https://secure.{}:{port}", common::ZONE)
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let get = |sni: &str, host: String, path: &'static str| {
        let (connector, sni) = (connector.clone(), sni.to_string());
        let addr = d.public();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(sni).unwrap();
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            common::http_on(tls, "GET", path, &host, None, &[], vec![]).await
        }
    };
    let host = format!("secure.{}", common::ZONE);
    let r = get(&host, host.clone(), "/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "hello-tls
"
    );
    let r = get(&host, host.clone(), "/cgi-bin/h").await;
    assert!(r.text().contains("proto=https"), "{}", r.text());
    let r = get(common::API_HOST, "127.0.0.1".into(), "/secure/").await;
    assert_eq!(
        r.text(),
        "hello-tls
",
        "path mode over TLS"
    );

    // A client without the certificate in its roots refuses the server.
    let untrusting = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(d.public()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host).unwrap();
    let refused = tokio_rustls::TlsConnector::from(std::sync::Arc::new(untrusting))
        .connect(name, tcp)
        .await;
    assert!(refused.is_err(), "an unknown issuer is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn rate_limits_answer_429() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("docker", |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.read.burst = 5.0;
        c.rate_limits.read.per_minute = 1.0;
    })
    .await;
    let a = d.user("rl-a", Default::default());
    let b = d.user("rl-b", Default::default());
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(d.code("GET", "/sandboxes", Some(&a), None).await);
    }
    assert_eq!(&codes[..5], &[200; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == 429), "{codes:?}");
    let r = d.req("GET", "/sandboxes", Some(&a), None).await;
    assert_eq!(r.json()["error"], "rate limit exceeded");
    assert_eq!(
        r.json()["code"],
        "rate_limited",
        "a machine-readable code beside the words"
    );
    // Per user: another key is unaffected; /health is never limited.
    assert_eq!(d.code("GET", "/sandboxes", Some(&b), None).await, 200);
    assert_eq!(d.code("GET", "/health", None, None).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn failed_auth_is_throttled_per_address() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("docker", |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.auth_failures.burst = 4.0;
        c.rate_limits.auth_failures.per_minute = 0.0;
    })
    .await;
    let good = d.user("ok", Default::default());
    let mut codes = Vec::new();
    for i in 0..7 {
        let bad = format!("bht_{i:032x}");
        let r = d.req("GET", "/sandboxes", Some(&bad), None).await;
        let want = if r.status == 401 {
            "unauthorized"
        } else {
            "rate_limited"
        };
        assert_eq!(r.json()["code"], want, "{}", r.text());
        codes.push(r.status);
    }
    assert_eq!(codes, [401, 401, 401, 401, 429, 429, 429]);
    // Only the failures within the budget left an event row (events are
    // written in batches every 500 ms: wait for the batch, then one more).
    let q = bhatti_store::EventQuery {
        type_prefix: Some("auth.failed".into()),
        ..Default::default()
    };
    for _ in 0..100 {
        if d.store().events(&q).unwrap().len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(d.store().events(&q).unwrap().len(), 4);
    // A valid key from the same address still works.
    assert_eq!(d.code("GET", "/sandboxes", Some(&good), None).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn slow_and_idle_connections_are_closed() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("docker", |c| {
        c.header_timeout_secs = 1.0;
        c.idle_timeout_secs = 1.0;
    })
    .await;
    let key = d.user("t", Default::default());
    // Each of these is closed by the daemon on its own; the read below
    // returns only once the daemon has closed the connection.
    let closed = |prelude: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
        s.write_all(prelude.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(60), s.read_to_end(&mut out))
            .await
            .unwrap_or_else(|_| panic!("connection after {prelude:?} was never closed"))
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    };
    // Half-sent headers (slowloris), nothing at all, and a keep-alive
    // connection after its answer.
    closed("GET /sandboxes HTTP/1.1\r\nHost: x\r\n").await;
    closed("").await;
    let after = closed("GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");
    // A request that is silent for longer than the idle timeout (a buffered
    // exec) is the daemon's own wait, and is answered.
    let sb = d.create(&key, serde_json::json!({"name": "slow"})).await;
    let id = sb["id"].as_str().unwrap();
    let (code, out, _) = d.sh(&key, id, "sleep 3; echo done").await;
    assert_eq!((code, out.as_str()), (0, "done\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn restart_recovers_containers_and_keeps_the_store() {
    let _serial = SERIAL.lock().await;
    let mut d = TestDaemon::start("docker", |_| {}).await;
    let key = d.user("rec", Default::default());
    let sb = d.create(&key, serde_json::json!({"name": "keep"})).await;
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(d.sh(&key, &id, "echo kept > /workspace/k").await.0, 0);
    d.restart().await;
    let g = d
        .req("GET", &format!("/sandboxes/{id}"), Some(&key), None)
        .await;
    assert_eq!(g.status, 200);
    assert_eq!(d.sh(&key, &id, "cat /workspace/k").await.1, "kept\n");
}

/// A container killed under its sandbox (`docker kill`) makes the sandbox
/// `crashed` within a health tick, with its exit and an event; requests
/// answer 409, and `start` runs it again with its files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn killed_container_is_crashed_then_starts() {
    let _serial = SERIAL.lock().await;
    let d = TestDaemon::start("docker", |c| c.thermal.tick_secs = 0.5).await;
    let kill = |_: &TestDaemon, id: &str| {
        let ps = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter", &format!("label=bhatti.id={id}")])
            .output()
            .expect("docker ps");
        let container = String::from_utf8_lossy(&ps.stdout).trim().to_string();
        assert!(!container.is_empty(), "no container labelled {id}");
        let kill = std::process::Command::new("docker")
            .args(["kill", &container])
            .output()
            .expect("docker kill");
        assert!(
            kill.status.success(),
            "{}",
            String::from_utf8_lossy(&kill.stderr)
        );
    };
    let (key, id) = common::crash_and_start(&d, kill, "exit code").await;
    assert_eq!(
        d.code("DELETE", &format!("/sandboxes/{id}"), Some(&key), None)
            .await,
        200
    );
}

/// PATCH `egress`: the answer shows the policy in force; a value the API
/// cannot read is 400 and a change the Docker engine cannot make (public ↔
/// deny, allow-lists) is 501, with nothing else of that PATCH applied. The
/// policy is shown on create and survives a daemon restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bhatti_docker),
    ignore = "needs dockerd (scripts/start-dockerd.sh) and root"
)]
async fn egress_patch_and_bad_values() {
    use serde_json::json;
    let _serial = SERIAL.lock().await;
    let mut d = TestDaemon::start("docker", |_| {}).await;
    let key = d.user("egress", Default::default());
    let sb = d.create(&key, json!({"name": "eg"})).await;
    assert_eq!(sb["egress"], "public", "{sb}");
    let path = format!("/sandboxes/{}", sb["id"].as_str().unwrap());
    let r = d
        .req(
            "PATCH",
            &path,
            Some(&key),
            Some(json!({"egress": "public"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["egress"], "public");
    for bad in [
        json!("sometimes"),
        json!(["10.0.0.0/33"]),
        json!(["nope"]),
        json!(42),
        json!({"allow": []}),
    ] {
        let r = d
            .req(
                "PATCH",
                &path,
                Some(&key),
                Some(json!({"egress": bad, "name": "renamed"})),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    for unsupported in [json!("deny"), json!(["192.0.2.0/24"])] {
        let r = d
            .req(
                "PATCH",
                &path,
                Some(&key),
                Some(json!({"egress": unsupported, "name": "renamed"})),
            )
            .await;
        assert_eq!(r.status, 501, "{unsupported}: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("egress"));
    }
    let g = d.req("GET", &path, Some(&key), None).await.json();
    assert_eq!(g["name"], "eg", "a refused PATCH changed nothing");
    assert_eq!(g["egress"], "public");

    let dn = d
        .create(&key, json!({"name": "dn", "egress": "deny"}))
        .await;
    assert_eq!(dn["egress"], "deny");
    d.restart().await;
    let dpath = format!("/sandboxes/{}", dn["id"].as_str().unwrap());
    assert_eq!(
        d.req("GET", &dpath, Some(&key), None).await.json()["egress"],
        "deny"
    );
    let list = d.req("GET", "/sandboxes", Some(&key), None).await.json();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["egress"] == "public" || s["egress"] == "deny"));
}
