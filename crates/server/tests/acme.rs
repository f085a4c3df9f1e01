//! ACME for the public listener against Pebble, Let's Encrypt's test CA
//! (Debian's package), on loopback: a TLS client asking for a published
//! alias gets a certificate issued on the spot through a real HTTP-01
//! challenge (Pebble fetches the answer from the daemon's plain-HTTP
//! listener, its names resolved to loopback by pebble-challtestsrv), that
//! chains to Pebble's root and is cached under `<data_dir>/certs`; a name
//! that is not published gets none; the plain listener redirects to HTTPS.
//!
//! Needs dockerd (the sandbox) and Pebble; reported as ignored without
//! them, never as passed.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestDaemon, SERIAL};
use serde_json::json;

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Pebble and its DNS, killed on drop.
struct Pebble {
    _procs: Vec<tokio::process::Child>,
    /// Pebble's management API (its roots).
    management: u16,
    directory: String,
    /// The CA of Pebble's own HTTPS.
    tls_ca: std::path::PathBuf,
    tls_ca_der: rustls::pki_types::CertificateDer<'static>,
}

async fn pebble(dir: &std::path::Path, http_port: u16) -> Pebble {
    // Pebble's own HTTPS needs a certificate: a CA and a leaf for loopback.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (ca_path, cert, key) = (
        dir.join("pebble-ca.pem"),
        dir.join("pebble.pem"),
        dir.join("pebble.key"),
    );
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let (acme, management, dns) = (free_port(), free_port(), free_port());
    let config = dir.join("pebble.json");
    std::fs::write(
        &config,
        json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let dns_server = tokio::process::Command::new("pebble-challtestsrv")
        .args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("pebble-challtestsrv");
    let ca_server = tokio::process::Command::new("pebble")
        .args(["-config", config.to_str().unwrap()])
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        // No random waits or refused nonces: the test is about issuance.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("pebble");
    // Both up: Pebble's directory, and the DNS (it answers on TCP too).
    for port in [acme, dns] {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Pebble {
        _procs: vec![dns_server, ca_server],
        management,
        directory: format!("https://127.0.0.1:{acme}/dir"),
        tls_ca: ca_path,
        tls_ca_der: ca_cert.der().clone(),
    }
}

fn tls_client(roots: rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Pebble's root for the certificates it issues (from its management API,
/// over its own HTTPS).
async fn issuing_root(p: &Pebble) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(p.tls_ca_der.clone()).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", p.management))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tls_client(roots).connect(name, tcp).await.unwrap();
    let r = common::http_on(tls, "GET", "/roots/0", "127.0.0.1", None, &[], vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    rustls::pki_types::CertificateDer::from_pem_slice(&r.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(bhatti_docker, bhatti_pebble)),
    ignore = "needs dockerd (scripts/start-dockerd.sh), root, and pebble (Debian's package)"
)]
async fn acme_certificates_from_pebble() {
    let _serial = SERIAL.lock().await;
    common::daemon_logs_in_test_output();
    let work = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let p = pebble(work.path(), http_port).await;
    let d = TestDaemon::start("docker", |c| {
        common::public_config(c);
        if let Some(dom) = c.domain.as_mut() {
            dom.acme_email = Some("ops@example.test".into());
            dom.acme_directory = Some(p.directory.clone());
            dom.acme_ca_file = Some(p.tls_ca.clone());
            dom.http_listen = Some(format!("127.0.0.1:{http_port}"));
        }
    })
    .await;
    let key = d.user("acme", Default::default());
    let sb = d.create(&key, json!({"name": "site"})).await;
    common::serve_www(&d, &key, sb["id"].as_str().unwrap(), "hello-acme").await;
    let r = d
        .req(
            "POST",
            "/sandboxes/site/publish",
            Some(&key),
            Some(json!({"port": 8000, "alias": "site"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let port = d.public().port();
    assert_eq!(
        r.json()["url"],
        format!("https://site.{}:{port}", common::ZONE)
    );

    // The first handshake for the alias has its certificate issued.
    let host = format!("site.{}", common::ZONE);
    let root = issuing_root(&p).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let connector = tls_client(roots);
    let get = |sni: String, path: &'static str| {
        let connector = connector.clone();
        let addr = d.public();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(sni.clone()).unwrap();
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(
                common::http_on(tls, "GET", path, &sni, None, &[], vec![]).await,
            )
        }
    };
    let r = get(host.clone(), "/")
        .await
        .expect("a certificate Pebble issued");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello-acme\n");
    let certs = d.data().join("certs");
    assert!(certs.join(format!("{host}.crt.pem")).is_file());
    assert!(certs.join("account.json").is_file());
    // Again: from the cache (no second issuance event).
    assert_eq!(get(host.clone(), "/").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let issued = d
        .store()
        .events(&bhatti_store::EventQuery {
            type_prefix: Some("tls.certificate_issued".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(issued.len(), 1, "one issuance: {issued:?}");

    // A name that is not published gets no certificate.
    let nope = get(format!("nope.{}", common::ZONE), "/").await;
    assert!(nope.is_err(), "no certificate for an unpublished name");

    // The plain listener answers challenges only, and redirects the rest.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
        .await
        .unwrap();
    let r = common::http_on(tcp, "GET", "/x?y=1", &host, None, &[], vec![]).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").as_deref(),
        Some(format!("https://{host}/x?y=1").as_str())
    );
}
